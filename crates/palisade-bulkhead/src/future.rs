//! [`ResponseFuture`]: the inner service's future, holding the request's permit.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use palisade_core::Clock;
use pin_project_lite::pin_project;

use crate::adaptive::Outcome;
use crate::bulkhead::OwnedPermit;
use crate::error::Rejected;
use crate::service::OnResponse;

/// The error type of the bulkhead service: the inner service's error, or a [`Rejected`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// The response future of [`BulkheadService`](crate::BulkheadService): the inner future
    /// with the request's permit, or a rejection that resolves at once.
    #[project = Projection]
    pub struct ResponseFuture<F, C: Clock, R> {
        #[pin]
        state: State<F, C, R>,
    }
}

pin_project! {
    #[project = StateProjection]
    enum State<F, C: Clock, R> {
        Called {
            #[pin]
            future: F,
            permit: Option<OwnedPermit<C>>,
            release: R,
        },
        Refused {
            rejected: Option<Rejected>,
        },
    }
}

impl<F, C: Clock, R> ResponseFuture<F, C, R> {
    pub(crate) fn called(future: F, permit: OwnedPermit<C>, release: R) -> Self {
        ResponseFuture {
            state: State::Called {
                future,
                permit: Some(permit),
                release,
            },
        }
    }

    pub(crate) fn refused(rejected: Rejected) -> Self {
        ResponseFuture {
            state: State::Refused {
                rejected: Some(rejected),
            },
        }
    }
}

impl<F, C: Clock, R> fmt::Debug for ResponseFuture<F, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Called { permit, .. } if permit.is_some() => "running",
            State::Called { .. } => "done",
            State::Refused { .. } => "refused",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, E, T, C, R> Future for ResponseFuture<F, C, R>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Clock,
    R: OnResponse<T, C>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProjection::Called {
                future,
                permit,
                release,
            } => {
                let output = std::task::ready!(future.poll(cx));
                let mut permit = permit
                    .take()
                    .expect("`ResponseFuture` polled after it completed");
                Poll::Ready(match output {
                    Ok(response) => {
                        permit.set_outcome(Outcome::Success);
                        Ok(release.on_response(response, permit))
                    }
                    // The permit already carries the service's outcome for errors.
                    Err(error) => {
                        drop(permit);
                        Err(error.into())
                    }
                })
            }
            StateProjection::Refused { rejected } => Poll::Ready(Err(Box::new(
                rejected
                    .take()
                    .expect("`ResponseFuture` polled after it completed"),
            ))),
        }
    }
}
