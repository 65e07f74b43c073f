//! The response future of [`ShutdownService`](crate::ShutdownService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::coordinator::RequestGuard;
use crate::error::Draining;

/// The error type of the tower service: the inner error, or [`Draining`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project_lite::pin_project! {
    /// Response future of [`ShutdownService`](crate::ShutdownService): the inner future, counted
    /// in flight until it completes or is dropped; or a [`Draining`] refusal.
    pub struct ResponseFuture<F> {
        #[pin]
        future: Option<F>,
        in_flight: Option<RequestGuard>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(future: F, in_flight: RequestGuard) -> ResponseFuture<F> {
        ResponseFuture {
            future: Some(future),
            in_flight: Some(in_flight),
        }
    }

    pub(crate) fn refused() -> ResponseFuture<F> {
        ResponseFuture {
            future: None,
            in_flight: None,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(future) = this.future.as_pin_mut() else {
            return Poll::Ready(Err(Box::new(Draining)));
        };
        let output = std::task::ready!(future.poll(cx));
        // Counted out as soon as the response exists, not when the future is dropped later.
        this.in_flight.take();
        Poll::Ready(output.map_err(Into::into))
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("refused", &self.future.is_none())
            .field("in_flight", &self.in_flight.is_some())
            .finish()
    }
}
