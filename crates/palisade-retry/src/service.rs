//! [`RetryService`]: the tower service that retries.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use crate::budget::RetryBudget;
use crate::classify::{Classify, OnRetry, RetryOnError};
use crate::future::ResponseFuture;
use crate::layer::{AttemptTimeout, AttemptTimeoutFor, NoAttemptTimeout};
use crate::policy::RetryPolicy;

/// A tower service that retries the calls of `S` by a [`RetryPolicy`]; usually made by
/// [`RetryLayer`](crate::RetryLayer).
///
/// `poll_ready` is the inner service's. Each call moves the readied inner service into its
/// future (leaving a clone behind) and polls it ready again before each retry. The error type is
/// the inner service's: the retry adds no failure mode, it returns the last real outcome. A
/// readiness error before a retry is that outcome (the service can't take the attempt); the
/// retried outcome before it was dropped when the backoff began, so it held nothing (a response
/// body, a connection) through the sleep.
#[derive(Clone, Debug)]
pub struct RetryService<S, C = RetryOnError, H = (), T = NoAttemptTimeout> {
    inner: S,
    policy: RetryPolicy,
    classify: C,
    on_retry: H,
    budget: Option<Arc<dyn RetryBudget>>,
    timeout: T,
}

impl<S> RetryService<S> {
    /// Retries every error of `inner` by `policy`.
    pub const fn new(inner: S, policy: RetryPolicy) -> RetryService<S> {
        RetryService {
            inner,
            policy,
            classify: RetryOnError,
            on_retry: (),
            budget: None,
            timeout: NoAttemptTimeout,
        }
    }
}

impl<S, C, H, T> RetryService<S, C, H, T> {
    pub(crate) fn from_parts(
        inner: S,
        policy: RetryPolicy,
        classify: C,
        on_retry: H,
        budget: Option<Arc<dyn RetryBudget>>,
        timeout: T,
    ) -> Self {
        RetryService {
            inner,
            policy,
            classify,
            on_retry,
            budget,
            timeout,
        }
    }

    /// Cancels an attempt that runs longer than `timeout` and counts it as a retryable failure
    /// (see [`RetryLayer::attempt_timeout`](crate::RetryLayer::attempt_timeout)).
    pub fn attempt_timeout(self, timeout: Duration) -> RetryService<S, C, H, AttemptTimeout> {
        RetryService {
            inner: self.inner,
            policy: self.policy,
            classify: self.classify,
            on_retry: self.on_retry,
            budget: self.budget,
            timeout: AttemptTimeout(timeout),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the wrapper and returns the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req, C, H, T> Service<Req> for RetryService<S, C, H, T>
where
    S: Service<Req> + Clone,
    Req: Clone,
    C: Classify<S::Response, S::Error> + Clone,
    H: OnRetry<S::Response, S::Error> + Clone,
    T: AttemptTimeoutFor<S::Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, C, H>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let replacement = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, replacement);
        ResponseFuture::new(
            service,
            request,
            self.policy,
            self.classify.clone(),
            self.on_retry.clone(),
            self.budget.clone(),
            self.timeout.attempt_timeout(),
        )
    }
}
