//! [`RetryLayer`]: retry for tower stacks.

use std::sync::Arc;

use tower_layer::Layer;

use crate::budget::RetryBudget;
use crate::classify::RetryOnError;
use crate::policy::RetryPolicy;
use crate::service::RetryService;

/// Wraps a tower service in [`RetryService`]: failed calls are retried by the policy.
///
/// Requests must be `Clone` (each attempt sends a clone; the original is kept until the call
/// ends) and so must the inner service (each call takes the readied service and leaves a clone
/// in its place, as tower's own `Retry` does). Every service this layer builds shares its
/// [`budget`](RetryLayer::budget), so cloned stacks draw on one budget.
///
/// For a per-attempt timeout, put tower's `TimeoutLayer` *inside* the retry layer and classify
/// its `Elapsed` error as retryable.
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
pub struct RetryLayer<C = RetryOnError, H = ()> {
    policy: RetryPolicy,
    classify: C,
    on_retry: H,
    budget: Option<Arc<dyn RetryBudget>>,
}

impl RetryLayer {
    /// A layer that retries every error by `policy`.
    pub const fn new(policy: RetryPolicy) -> RetryLayer {
        RetryLayer {
            policy,
            classify: RetryOnError,
            on_retry: (),
            budget: None,
        }
    }
}

impl<C, H> RetryLayer<C, H> {
    /// The classifier (default: retry every error, return every response). It is cloned into
    /// each service.
    pub fn when<C2>(self, classify: C2) -> RetryLayer<C2, H> {
        RetryLayer {
            policy: self.policy,
            classify,
            on_retry: self.on_retry,
            budget: self.budget,
        }
    }

    /// A hook called before each retry; cloned into each call's future.
    pub fn on_retry<H2>(self, on_retry: H2) -> RetryLayer<C, H2> {
        RetryLayer {
            policy: self.policy,
            classify: self.classify,
            on_retry,
            budget: self.budget,
        }
    }

    /// A retry budget shared by every service this layer builds (and anything else holding the
    /// `Arc`).
    pub fn budget(mut self, budget: Arc<dyn RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }
}

impl<S, C: Clone, H: Clone> Layer<S> for RetryLayer<C, H> {
    type Service = RetryService<S, C, H>;

    fn layer(&self, inner: S) -> RetryService<S, C, H> {
        RetryService::from_parts(
            inner,
            self.policy,
            self.classify.clone(),
            self.on_retry.clone(),
            self.budget.clone(),
        )
    }
}
