//! [`ResponseFuture`]: the rate-limited service's response.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::error::RateLimited;

/// The error type of the tower service: the inner service's error or a [`RateLimited`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) type Waiting<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

pin_project! {
    /// The response of [`RateLimit`](crate::RateLimit): the inner service's, a
    /// [`RateLimited`] rejection, or (keyed backpressure) a wait for the key's cell followed by
    /// the inner call. Dropping it before the inner call is made gives the cell back (over a
    /// sliding window or several quotas, only while it still waits for the cell).
    pub struct ResponseFuture<F, R> {
        #[pin]
        state: State<F, R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, R> {
        Called { #[pin] future: F },
        Refused { error: Option<RateLimited> },
        Waiting { future: Waiting<R> },
    }
}

impl<F, R> ResponseFuture<F, R> {
    pub(crate) fn called(future: F) -> Self {
        ResponseFuture {
            state: State::Called { future },
        }
    }

    pub(crate) fn refused(error: RateLimited) -> Self {
        ResponseFuture {
            state: State::Refused { error: Some(error) },
        }
    }

    pub(crate) fn waiting(future: Waiting<R>) -> Self {
        ResponseFuture {
            state: State::Waiting { future },
        }
    }
}

impl<F, R, E> Future for ResponseFuture<F, R>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future } => {
                Poll::Ready(ready!(future.poll(cx)).map_err(Into::into))
            }
            StateProj::Refused { error } => match error.take() {
                Some(error) => Poll::Ready(Err(error.into())),
                None => Poll::Pending,
            },
            StateProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, R> fmt::Debug for ResponseFuture<F, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { .. } => "called",
            State::Refused { .. } => "refused",
            State::Waiting { .. } => "waiting",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
