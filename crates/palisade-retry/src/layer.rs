//! [`RetryLayer`]: retry for tower stacks.

use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::budget::RetryBudget;
use crate::classify::RetryOnError;
use crate::error::AttemptTimedOut;
use crate::policy::RetryPolicy;
use crate::service::RetryService;

/// Wraps a tower service in [`RetryService`]: failed calls are retried by the policy.
///
/// Requests must be `Clone` (each attempt sends a clone; the original is kept until the call
/// ends) and so must the inner service (each call takes the readied service and leaves a clone
/// in its place, as tower's own `Retry` does). Every service this layer builds shares its
/// [`budget`](RetryLayer::budget), so cloned stacks draw on one budget.
///
/// [`attempt_timeout`](RetryLayer::attempt_timeout) cancels an attempt that runs too long and
/// counts it as a retryable failure; it needs `S::Error: From<AttemptTimedOut>` (true of
/// `BoxError` and `std::io::Error`), which the compiler checks when the service is used.
///
/// ```
/// use palisade_retry::{Decision, RetryLayer, RetryPolicy, TpsBudget};
/// use std::sync::Arc;
/// use tower_layer::Layer;
///
/// # fn make<S: Clone>(inner: S) -> Result<(), Box<dyn std::error::Error>> {
/// let budget = Arc::new(TpsBudget::builder().build()?);
/// let layer = RetryLayer::new(RetryPolicy::aws_standard())
///     .when(|outcome: &Result<u16, std::io::Error>| match outcome {
///         Ok(503) | Err(_) => Decision::Retry,
///         Ok(_) => Decision::DontRetry,
///     })
///     .budget(budget);
/// let service = layer.layer(inner);
/// # let _ = service; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RetryLayer<C = RetryOnError, H = (), T = NoAttemptTimeout> {
    policy: RetryPolicy,
    classify: C,
    on_retry: H,
    budget: Option<Arc<dyn RetryBudget>>,
    timeout: T,
}

impl RetryLayer {
    /// A layer that retries every error by `policy`.
    pub const fn new(policy: RetryPolicy) -> RetryLayer {
        RetryLayer {
            policy,
            classify: RetryOnError,
            on_retry: (),
            budget: None,
            timeout: NoAttemptTimeout,
        }
    }
}

impl<C, H, T> RetryLayer<C, H, T> {
    /// The classifier (default: retry every error, return every response). It is cloned into
    /// each service.
    pub fn when<C2>(self, classify: C2) -> RetryLayer<C2, H, T> {
        RetryLayer {
            policy: self.policy,
            classify,
            on_retry: self.on_retry,
            budget: self.budget,
            timeout: self.timeout,
        }
    }

    /// A hook called before each retry; cloned into each call's future.
    pub fn on_retry<H2>(self, on_retry: H2) -> RetryLayer<C, H2, T> {
        RetryLayer {
            policy: self.policy,
            classify: self.classify,
            on_retry,
            budget: self.budget,
            timeout: self.timeout,
        }
    }

    /// Cancels an attempt that runs longer than `timeout` (dropping its future) and counts it as
    /// a retryable failure, whatever the classifier would say (it is not asked); if it was the
    /// last attempt, the caller gets `Err(S::Error::from(AttemptTimedOut(timeout)))`. For a
    /// timeout the classifier decides on, wrap the inner service in a timeout layer instead:
    /// its error is then an ordinary outcome.
    pub fn attempt_timeout(self, timeout: Duration) -> RetryLayer<C, H, AttemptTimeout> {
        RetryLayer {
            policy: self.policy,
            classify: self.classify,
            on_retry: self.on_retry,
            budget: self.budget,
            timeout: AttemptTimeout(timeout),
        }
    }

    /// A retry budget shared by every service this layer builds (and anything else holding the
    /// `Arc`).
    pub fn budget(mut self, budget: Arc<dyn RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }
}

impl<S, C: Clone, H: Clone, T: Clone> Layer<S> for RetryLayer<C, H, T> {
    type Service = RetryService<S, C, H, T>;

    fn layer(&self, inner: S) -> RetryService<S, C, H, T> {
        RetryService::from_parts(
            inner,
            self.policy,
            self.classify.clone(),
            self.on_retry.clone(),
            self.budget.clone(),
            self.timeout.clone(),
        )
    }
}

/// Whether a tower retry times out its attempts, for errors of type `E`: implemented by
/// [`NoAttemptTimeout`] for every error type and by [`AttemptTimeout`] for errors that can
/// stand for a timeout (`E: From<AttemptTimedOut>`).
pub trait AttemptTimeoutFor<E> {
    /// The timeout, and how to turn it into an `E`.
    #[allow(clippy::type_complexity)] // spelled out: a public signature should not hide it
    fn attempt_timeout(&self) -> Option<(Duration, fn(AttemptTimedOut) -> E)>;
}

/// No per-attempt timeout (the default of [`RetryLayer`] and [`RetryService`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoAttemptTimeout;

/// A per-attempt timeout, set by [`RetryLayer::attempt_timeout`] or
/// [`RetryService::attempt_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTimeout(pub(crate) Duration);

impl<E> AttemptTimeoutFor<E> for NoAttemptTimeout {
    fn attempt_timeout(&self) -> Option<(Duration, fn(AttemptTimedOut) -> E)> {
        None
    }
}

impl<E: From<AttemptTimedOut>> AttemptTimeoutFor<E> for AttemptTimeout {
    fn attempt_timeout(&self) -> Option<(Duration, fn(AttemptTimedOut) -> E)> {
        Some((self.0, E::from))
    }
}
