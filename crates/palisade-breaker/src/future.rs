//! [`ResponseFuture`]: the future of a call through [`CircuitBreakerService`](crate::CircuitBreakerService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use palisade_core::{Clock, FastClock};

use crate::breaker::OwnedPermit;
use crate::classify::{Classify, ErrorsAreFailures};
use crate::error::Rejected;

/// The boxed error of a tower service: `Send + Sync`, downcastable.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project_lite::pin_project! {
    /// Resolves to the inner service's response, or to a boxed [`Rejected`]; records the
    /// outcome in the breaker when the inner future completes.
    pub struct ResponseFuture<F, K = ErrorsAreFailures, C: Clock = FastClock> {
        #[pin]
        inner: Option<F>,
        permit: Option<OwnedPermit<C>>,
        classify: Option<K>,
        rejected: Option<Rejected>,
    }
}

impl<F, K, C: Clock> ResponseFuture<F, K, C> {
    pub(crate) fn admitted(inner: F, permit: OwnedPermit<C>, classify: K) -> Self {
        ResponseFuture {
            inner: Some(inner),
            permit: Some(permit),
            classify: Some(classify),
            rejected: None,
        }
    }

    pub(crate) fn rejected(rejected: Rejected) -> Self {
        ResponseFuture {
            inner: None,
            permit: None,
            classify: None,
            rejected: Some(rejected),
        }
    }
}

impl<F, K, C: Clock> fmt::Debug for ResponseFuture<F, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("admitted", &self.inner.is_some())
            .field("rejected", &self.rejected)
            .finish_non_exhaustive()
    }
}

impl<F, T, E, K, C> Future for ResponseFuture<F, K, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    K: Classify<T, E>,
    C: Clock,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            let rejected = this
                .rejected
                .take()
                .expect("ResponseFuture polled after completion");
            return Poll::Ready(Err(Box::new(rejected)));
        };
        let result = ready!(inner.poll(cx));
        this.inner.set(None);
        if let (Some(permit), Some(classify)) = (this.permit.take(), this.classify.take()) {
            permit.record(classify.classify(&result));
        }
        Poll::Ready(result.map_err(Into::into))
    }
}
