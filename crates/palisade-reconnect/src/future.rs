//! [`ResponseFuture`]: the response of a [`Reconnect`](crate::Reconnect), with connection-loss
//! errors made typed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use crate::error::{BoxError, ConnectionLost};
use crate::service::Classifier;
use crate::state::Cause;

pin_project_lite::pin_project! {
    /// The response future of [`Reconnect`](crate::Reconnect): the connection's own future,
    /// whose error becomes a [`ConnectionLost`] when the classifier says the connection is gone.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Inner<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    #[derive(Debug)]
    enum Inner<F> {
        Call {
            #[pin]
            future: F,
            generation: u64,
            classifier: Classifier,
        },
        Failed {
            error: Option<BoxError>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(future: F, generation: u64, classifier: Classifier) -> ResponseFuture<F> {
        ResponseFuture {
            inner: Inner::Call {
                future,
                generation,
                classifier,
            },
        }
    }

    pub(crate) fn failed(error: BoxError) -> ResponseFuture<F> {
        ResponseFuture {
            inner: Inner::Failed { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::Call {
                future,
                generation,
                classifier,
            } => match ready!(future.poll(cx)) {
                Ok(response) => Poll::Ready(Ok(response)),
                Err(e) => Poll::Ready(Err(classify(e.into(), *generation, *classifier))),
            },
            InnerProj::Failed { error } => Poll::Ready(Err(take_error(error))),
        }
    }
}

/// The error of a failed future, out of line so the success path inlines.
#[cold]
#[inline(never)]
fn take_error(error: &mut Option<BoxError>) -> BoxError {
    error
        .take()
        .unwrap_or_else(|| "ResponseFuture polled after completion".into())
}

/// The error path, out of line so the success path inlines.
#[cold]
#[inline(never)]
fn classify(e: BoxError, generation: u64, classifier: Classifier) -> BoxError {
    if !classifier(&*e) || e.is::<ConnectionLost>() {
        return e;
    }
    ConnectionLost {
        generation,
        cause: Cause::Lost(Arc::from(e)),
    }
    .into()
}
