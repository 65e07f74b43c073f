//! [`PartitionedLayer`] and [`PartitionedService`]: each request takes a permit from the
//! partition a picker names.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use palisade_core::sync::Arc;
use palisade_core::{Clock, FastClock};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{
    OwnedPartitionPermit, PartitionAcquireOwned, PartitionId, PartitionedBulkhead, TARGET,
};
use crate::error::{Reason, Rejected};
use crate::future::BoxError;
use crate::layer::Mode;

/// Applies a [`PartitionedBulkhead`] to every service it builds: each request takes a permit
/// from the partition `picker` names for it. All the services share the one bulkhead.
///
/// ```
/// use palisade_bulkhead::{PartitionedBulkhead, PartitionedLayer};
/// use tower_layer::Layer;
///
/// # let inner = ();
/// let bulkhead = PartitionedBulkhead::builder(64)
///     .partition("interactive", 48)
///     .partition_with_max("batch", 8, 16)
///     .build()?;
/// let interactive = bulkhead.partition("interactive").unwrap().id();
/// let batch = bulkhead.partition("batch").unwrap().id();
/// // Requests are paths here; anything the picker can read works.
/// let layer = PartitionedLayer::new(bulkhead, move |path: &&str| {
///     if path.starts_with("/batch/") { batch } else { interactive }
/// });
/// let service = layer.layer(inner);
/// # let _ = service;
/// # Ok::<(), palisade_bulkhead::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct PartitionedLayer<F, C: Clock = FastClock> {
    bulkhead: PartitionedBulkhead<C>,
    picker: F,
    mode: Mode,
}

impl<F, C: Clock> PartitionedLayer<F, C> {
    /// Services that wait for their request's permit ([`Mode::Wait`]): in the response future
    /// when none is free at `call`. `picker` is any `Fn(&Request) -> PartitionId + Clone`.
    pub const fn new(bulkhead: PartitionedBulkhead<C>, picker: F) -> Self {
        PartitionedLayer {
            bulkhead,
            picker,
            mode: Mode::Wait,
        }
    }

    /// Load-shedding services ([`Mode::Shed`]): a request whose partition is not admitted at
    /// once fails with [`Rejected`] ([`Reason::Full`]).
    pub fn shed(mut self) -> Self {
        self.mode = Mode::Shed;
        self
    }

    /// The shared bulkhead.
    pub fn bulkhead(&self) -> &PartitionedBulkhead<C> {
        &self.bulkhead
    }
}

impl<F, C: Clock> fmt::Debug for PartitionedLayer<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionedLayer")
            .field("bulkhead", &self.bulkhead)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<S, F: Clone, C: Clock> Layer<S> for PartitionedLayer<F, C> {
    type Service = PartitionedService<S, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        PartitionedService::new(inner, self.bulkhead.clone(), self.picker.clone(), self.mode)
    }
}

/// A service behind a [`PartitionedBulkhead`] shared by every clone; `picker` names each
/// request's partition. Built by [`PartitionedLayer`].
///
/// The partition is known only from the request, so `poll_ready` is the inner service's, and
/// the permit is taken in `call`:
///
/// - **Shed mode**: if the partition is admitted at once, the inner service is called;
///   otherwise the response future fails with [`Rejected`] ([`Reason::Full`]).
/// - **Wait mode**: if the partition is admitted at once, the inner service is called now;
///   otherwise the request joins the partition's queue in `call` (so the queue keeps the order
///   of calls), and the response future waits for the permit, then calls the inner service.
///   That is the instance `poll_ready` readied, moved into the future (whatever its readiness
///   reserved is this request's); a clone takes its place, so the next `poll_ready` readies the
///   clone (tower's convention). A request the queue refuses (full, or waited `max_wait`) fails
///   with [`Rejected`].
///
/// The permit is held until the response future completes. Dropping the response future at
/// any point leaves the queue or releases the permit (a permit granted while nobody polled is
/// passed on). Errors are [`BoxError`]s; downcast to [`Rejected`] for the reason. A picker that
/// returns an id this bulkhead did not give out is refused with [`Reason::Full`] and a limit
/// of 0.
pub struct PartitionedService<S, F, C: Clock = FastClock> {
    inner: S,
    bulkhead: PartitionedBulkhead<C>,
    picker: F,
    mode: Mode,
}

impl<S, F, C: Clock> PartitionedService<S, F, C> {
    /// Wraps `inner` with `bulkhead`, naming each request's partition with `picker`.
    pub const fn new(inner: S, bulkhead: PartitionedBulkhead<C>, picker: F, mode: Mode) -> Self {
        PartitionedService {
            inner,
            bulkhead,
            picker,
            mode,
        }
    }

    /// The shared bulkhead.
    pub fn bulkhead(&self) -> &PartitionedBulkhead<C> {
        &self.bulkhead
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

impl<S: Clone, F: Clone, C: Clock> Clone for PartitionedService<S, F, C> {
    fn clone(&self) -> Self {
        PartitionedService::new(
            self.inner.clone(),
            self.bulkhead.clone(),
            self.picker.clone(),
            self.mode,
        )
    }
}

impl<S: fmt::Debug, F, C: Clock> fmt::Debug for PartitionedService<S, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionedService")
            .field("inner", &self.inner)
            .field("bulkhead", &self.bulkhead)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<S, F, Req, C> Service<Req> for PartitionedService<S, F, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    F: Fn(&Req) -> PartitionId,
    C: Clock,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = PartitionedResponseFuture<S::Future, S, Req, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let id = (self.picker)(&request);
        let shared = &self.bulkhead.shared;
        if id.index() >= shared.parts.len() {
            tracing::debug!(
                target: TARGET,
                partition = id.index(),
                "partitioned bulkhead refused: no such partition"
            );
            return PartitionedResponseFuture::refused(Rejected {
                reason: Reason::Full,
                limit: 0,
            });
        }
        let index = id.0;
        let permit = match self.mode {
            Mode::Shed => shared
                .try_take(index as usize)
                .map(|()| OwnedPartitionPermit {
                    shared: Arc::clone(shared),
                    index,
                }),
            Mode::Wait => match PartitionAcquireOwned::start(shared, index) {
                Ok(Ok(acquire)) => {
                    // The request goes to the instance `poll_ready` readied (whatever it
                    // reserved, such as a `ConcurrencyLimit` slot, is this request's); a clone
                    // takes its place for the next `poll_ready` (tower's convention).
                    let clone = self.inner.clone();
                    return PartitionedResponseFuture {
                        state: State::Waiting {
                            acquire,
                            permit: None,
                            service: std::mem::replace(&mut self.inner, clone),
                            request: Some(request),
                        },
                    };
                }
                Ok(Err(permit)) => Ok(permit),
                Err(rejected) => Err(rejected),
            },
        };
        match permit {
            Ok(permit) => PartitionedResponseFuture {
                state: State::Called {
                    future: self.inner.call(request),
                    permit: Some(permit),
                },
            },
            Err(rejected) => PartitionedResponseFuture::refused(rejected),
        }
    }
}

pin_project! {
    /// The response future of [`PartitionedService`]: waiting for the request's permit and
    /// then for the inner service (wait mode), the inner future holding the permit, or a
    /// rejection that resolves at once.
    pub struct PartitionedResponseFuture<F, S, Req, C: Clock> {
        #[pin]
        state: State<F, S, Req, C>,
    }
}

pin_project! {
    #[project = StateProjection]
    enum State<F, S, Req, C: Clock> {
        /// Queued for a permit; then calling the inner service `poll_ready` readied (polled
        /// once more, as tower allows).
        Waiting {
            acquire: PartitionAcquireOwned<C>,
            permit: Option<OwnedPartitionPermit<C>>,
            service: S,
            request: Option<Req>,
        },
        Called {
            #[pin]
            future: F,
            permit: Option<OwnedPartitionPermit<C>>,
        },
        /// `None` once the future completed.
        Refused {
            rejected: Option<Rejected>,
        },
    }
}

impl<F, S, Req, C: Clock> PartitionedResponseFuture<F, S, Req, C> {
    fn refused(rejected: Rejected) -> Self {
        PartitionedResponseFuture {
            state: State::Refused {
                rejected: Some(rejected),
            },
        }
    }
}

impl<F, S, Req, C: Clock> fmt::Debug for PartitionedResponseFuture<F, S, Req, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { permit: None, .. } => "waiting for a permit",
            State::Waiting { .. } => "waiting for the service",
            State::Called {
                permit: Some(_), ..
            } => "running",
            State::Called { .. } => "done",
            State::Refused { rejected: Some(_) } => "refused",
            State::Refused { .. } => "done",
        };
        f.debug_struct("PartitionedResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, S, Req, C, T, E> Future for PartitionedResponseFuture<F, S, Req, C>
where
    F: Future<Output = Result<T, E>>,
    S: Service<Req, Response = T, Error = E, Future = F>,
    E: Into<BoxError>,
    C: Clock,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProjection::Waiting {
                    acquire,
                    permit,
                    service,
                    request,
                } => {
                    if permit.is_none() {
                        match std::task::ready!(Pin::new(acquire).poll(cx)) {
                            Ok(granted) => *permit = Some(granted),
                            Err(rejected) => {
                                state.set(State::Refused { rejected: None });
                                return Poll::Ready(Err(Box::new(rejected)));
                            }
                        }
                    }
                    if let Err(error) = std::task::ready!(service.poll_ready(cx)) {
                        // Releases the permit.
                        state.set(State::Refused { rejected: None });
                        return Poll::Ready(Err(error.into()));
                    }
                    let request = request
                        .take()
                        .expect("`PartitionedResponseFuture` polled after it completed");
                    let future = service.call(request);
                    let permit = permit.take();
                    state.set(State::Called { future, permit });
                }
                StateProjection::Called { future, permit } => {
                    let output = std::task::ready!(future.poll(cx));
                    drop(permit.take());
                    return Poll::Ready(output.map_err(Into::into));
                }
                StateProjection::Refused { rejected } => {
                    let rejected = rejected
                        .take()
                        .expect("`PartitionedResponseFuture` polled after it completed");
                    return Poll::Ready(Err(Box::new(rejected)));
                }
            }
        }
    }
}
