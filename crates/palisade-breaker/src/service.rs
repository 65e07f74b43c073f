//! [`CircuitBreakerService`]: a tower service behind a circuit breaker.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use palisade_core::{Clock, FastClock};
use tower_service::Service;

use crate::breaker::CircuitBreaker;
use crate::classify::{Classify, ErrorsAreFailures};
use crate::future::{BoxError, ResponseFuture};

/// A service whose calls go through a shared [`CircuitBreaker`]. Built by
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// `poll_ready` is the inner service's: the breaker decides per call, in `call`, so a
/// rejection never makes the service itself unusable. A rejected call's future resolves at
/// once to a boxed [`Rejected`](crate::Rejected) (downcast the `BoxError` to read
/// `retry_after`) without calling the inner service; an admitted call's outcome is classified
/// and recorded when its future completes, and a dropped future records nothing and frees a
/// half-open probe slot.
pub struct CircuitBreakerService<S, K = ErrorsAreFailures, C: Clock = FastClock> {
    inner: S,
    breaker: Arc<CircuitBreaker<C>>,
    classify: K,
}

impl<S, K, C: Clock> CircuitBreakerService<S, K, C> {
    /// Wraps `inner` with `breaker`, classifying results with `classify`.
    pub const fn new(inner: S, breaker: Arc<CircuitBreaker<C>>, classify: K) -> Self {
        CircuitBreakerService {
            inner,
            breaker,
            classify,
        }
    }

    /// The shared breaker.
    pub fn breaker(&self) -> &Arc<CircuitBreaker<C>> {
        &self.breaker
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K: Clone, C: Clock> Clone for CircuitBreakerService<S, K, C> {
    fn clone(&self) -> Self {
        CircuitBreakerService {
            inner: self.inner.clone(),
            breaker: Arc::clone(&self.breaker),
            classify: self.classify.clone(),
        }
    }
}

impl<S: fmt::Debug, K, C: Clock> fmt::Debug for CircuitBreakerService<S, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerService")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, Req, K, C> Service<Req> for CircuitBreakerService<S, K, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: Classify<S::Response, S::Error> + Clone,
    C: Clock,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, K, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.breaker.try_acquire_owned() {
            Ok(permit) => {
                ResponseFuture::admitted(self.inner.call(req), permit, self.classify.clone())
            }
            Err(rejected) => ResponseFuture::rejected(rejected),
        }
    }
}
