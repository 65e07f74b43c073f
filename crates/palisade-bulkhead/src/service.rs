//! [`BulkheadService`]: a tower service behind a shared [`Bulkhead`].

use std::fmt;
use std::task::{Context, Poll};

use palisade_core::{Clock, FastClock};
use tower_service::Service;

use crate::adaptive::Outcome;
use crate::bulkhead::{Bulkhead, OwnedPermit, Waiter};
use crate::error::{Reason, Rejected};
use crate::future::{BoxError, ResponseFuture};
use crate::layer::Mode;

/// What becomes of a request's permit when its response arrives.
///
/// The default, [`ReleaseOnResponse`], releases it then. Any
/// `Fn(Response, OwnedPermit<C>) -> Response + Clone` can take it instead and move it into the
/// response (a streaming body), so the work counts until the body is done.
pub trait OnResponse<Response, C: Clock> {
    /// Takes the permit of the request that produced `response`.
    fn on_response(&self, response: Response, permit: OwnedPermit<C>) -> Response;
}

/// Releases the permit when the response future completes (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReleaseOnResponse;

impl<Response, C: Clock> OnResponse<Response, C> for ReleaseOnResponse {
    #[inline]
    fn on_response(&self, response: Response, permit: OwnedPermit<C>) -> Response {
        drop(permit);
        response
    }
}

impl<Response, C: Clock, F> OnResponse<Response, C> for F
where
    F: Fn(Response, OwnedPermit<C>) -> Response,
{
    fn on_response(&self, response: Response, permit: OwnedPermit<C>) -> Response {
        self(response, permit)
    }
}

/// A service behind a bulkhead shared by every clone. Built by
/// [`BulkheadLayer`](crate::BulkheadLayer).
///
/// - **Wait mode**: `poll_ready` takes a permit, waiting in the bulkhead's queue if none is
///   free, then polls the inner service. A caller the queue refuses (full, or waited
///   `max_wait`) is ready at once, and its `call` fails with [`Rejected`] without reaching the
///   inner service, so callers see the rejection instead of a dead service.
/// - **Shed mode**: `poll_ready` never waits; with no permit free, `call` fails with
///   [`Rejected`] ([`Reason::Full`]).
///
/// The permit is held from `poll_ready` until the response future completes (or by the
/// layer's `release_with` function). A service dropped while waiting leaves the queue; one
/// dropped holding a permit releases it. Clones start without a permit.
///
/// On an [adaptive](Bulkhead::adaptive) bulkhead, a response reports
/// [`Outcome::Success`] with its latency (from `call` to the response), and an error or a
/// response future dropped before it completed (an outer timeout, a caller gone) reports the
/// layer's [`errors_as`](crate::BulkheadLayer::errors_as) outcome, [`Outcome::Dropped`] by
/// default. A permit that no `call` used (the service dropped after `poll_ready`, or the
/// inner service's `poll_ready` failed) reports nothing: no request was sent.
pub struct BulkheadService<S, C: Clock = FastClock, R = ReleaseOnResponse> {
    inner: S,
    mode: Mode,
    errors: Outcome,
    release: R,
    slot: Slot<C>,
}

/// The service's standing with its bulkhead; leaving the queue on drop.
struct Slot<C: Clock> {
    bulkhead: Bulkhead<C>,
    waiter: Waiter,
    ready: Ready<C>,
}

enum Ready<C: Clock> {
    Idle,
    /// A permit for the next `call` (released if the service is dropped first).
    Permit(OwnedPermit<C>),
    /// Refused: the next `call` fails with this.
    Refused(Rejected),
}

impl<C: Clock> Drop for Slot<C> {
    fn drop(&mut self) {
        self.waiter.cancel(self.bulkhead.inner());
    }
}

impl<S, C: Clock, R> BulkheadService<S, C, R> {
    /// Wraps `inner` with `bulkhead`; errors and cancelled responses report
    /// [`Outcome::Dropped`] (see [`with_errors_as`](BulkheadService::with_errors_as)).
    pub fn new(inner: S, bulkhead: Bulkhead<C>, mode: Mode, release: R) -> Self {
        BulkheadService {
            inner,
            mode,
            errors: Outcome::Dropped,
            release,
            slot: Slot {
                bulkhead,
                waiter: Waiter::Idle,
                ready: Ready::Idle,
            },
        }
    }

    /// What an error, or a response future dropped before it completed, reports to an
    /// adaptive bulkhead's limit algorithm.
    pub fn with_errors_as(mut self, outcome: Outcome) -> Self {
        self.errors = outcome;
        self
    }

    /// The shared bulkhead.
    pub fn bulkhead(&self) -> &Bulkhead<C> {
        &self.slot.bulkhead
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service (a held permit is released, a queued wait given up).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// A clone shares the bulkhead and starts without a permit.
impl<S: Clone, C: Clock, R: Clone> Clone for BulkheadService<S, C, R> {
    fn clone(&self) -> Self {
        BulkheadService::new(
            self.inner.clone(),
            self.slot.bulkhead.clone(),
            self.mode,
            self.release.clone(),
        )
        .with_errors_as(self.errors)
    }
}

impl<S: fmt::Debug, C: Clock, R> fmt::Debug for BulkheadService<S, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ready = match self.slot.ready {
            Ready::Idle => "idle",
            Ready::Permit(_) => "permit",
            Ready::Refused(_) => "refused",
        };
        f.debug_struct("BulkheadService")
            .field("inner", &self.inner)
            .field("bulkhead", &self.slot.bulkhead)
            .field("mode", &self.mode)
            .field("waiter", &self.slot.waiter)
            .field("ready", &ready)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, R> Service<Req> for BulkheadService<S, C, R>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Clock,
    R: OnResponse<S::Response, C> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let slot = &mut self.slot;
        if let Ready::Idle = slot.ready {
            let outcome = match self.mode {
                Mode::Wait => {
                    let inner = slot.bulkhead.inner();
                    std::task::ready!(slot.waiter.poll_acquire(inner, cx))
                        .map(|()| OwnedPermit::reserved(inner))
                }
                Mode::Shed => slot.bulkhead.try_reserve_owned(),
            };
            // Reserved for the next `call`, which begins its work: a permit never called with
            // (the service dropped, the inner `poll_ready` failed) reports no sample.
            slot.ready = match outcome {
                Ok(permit) => Ready::Permit(permit),
                Err(rejected) => Ready::Refused(rejected),
            };
        }
        match slot.ready {
            Ready::Refused(_) => Poll::Ready(Ok(())),
            _ => self.inner.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match std::mem::replace(&mut self.slot.ready, Ready::Idle) {
            Ready::Permit(mut permit) => {
                // The work begins: the sample's RTT counts from here, not from readiness, and
                // until the response arrives the permit would report a cancellation.
                permit.begin(self.errors);
                ResponseFuture::called(self.inner.call(req), permit, self.release.clone())
            }
            Ready::Refused(rejected) => ResponseFuture::refused(rejected),
            Ready::Idle => {
                // `call` without a ready `poll_ready`: tower's contract is broken; refuse
                // rather than exceed the limit.
                let limit = self.slot.bulkhead.max_concurrent();
                ResponseFuture::refused(Rejected {
                    reason: Reason::Full,
                    limit,
                })
            }
        }
    }
}
