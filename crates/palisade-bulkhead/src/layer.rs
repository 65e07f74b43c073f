//! [`BulkheadLayer`]: puts a shared [`Bulkhead`] in front of a tower service.

use palisade_core::{Clock, FastClock};
use tower_layer::Layer;

use crate::adaptive::Outcome;
use crate::bulkhead::Bulkhead;
use crate::service::{BulkheadService, ReleaseOnResponse};

/// What the service does when every permit is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `poll_ready` waits in the bulkhead's queue (bounded by `max_queued` and `max_wait`); a
    /// caller the queue refuses gets the [`Rejected`](crate::Rejected) from `call`.
    Wait,
    /// Load shedding: `poll_ready` never waits; with no permit free, `call` fails at once with
    /// [`Rejected`](crate::Rejected) ([`Reason::Full`](crate::Reason::Full)).
    Shed,
}

/// Applies a [`Bulkhead`] to every service it builds. All of them share the one bulkhead, so a
/// stack cloned per connection still enforces one limit.
///
/// ```
/// use palisade_bulkhead::{Bulkhead, BulkheadLayer};
/// use tower_layer::Layer;
///
/// # let inner = ();
/// let bulkhead = Bulkhead::builder(64).max_queued(128).build()?;
/// let layer = BulkheadLayer::new(bulkhead.clone());
/// let service = layer.layer(inner);
/// assert_eq!(service.bulkhead().max_concurrent(), 64);
/// # Ok::<(), palisade_bulkhead::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BulkheadLayer<C: Clock = FastClock, R = ReleaseOnResponse> {
    bulkhead: Bulkhead<C>,
    mode: Mode,
    errors: Outcome,
    release: R,
}

impl<C: Clock> BulkheadLayer<C> {
    /// Services that wait for a permit in `poll_ready` ([`Mode::Wait`]) and release it when the
    /// response future completes.
    pub fn new(bulkhead: Bulkhead<C>) -> Self {
        BulkheadLayer {
            bulkhead,
            mode: Mode::Wait,
            errors: Outcome::Dropped,
            release: ReleaseOnResponse,
        }
    }
}

impl<C: Clock, R> BulkheadLayer<C, R> {
    /// Load-shedding services: never wait, refuse at once when every permit is in use.
    pub fn shed(mut self) -> Self {
        self.mode = Mode::Shed;
        self
    }

    /// What an error from the inner service, or a response future dropped before it completed
    /// (an outer timeout, a caller gone), reports to an [adaptive](Bulkhead::adaptive)
    /// bulkhead's limit algorithm. The default, [`Outcome::Dropped`], reads them as overload;
    /// [`Outcome::Ignored`] leaves them out (for errors that say nothing about capacity).
    /// Responses report [`Outcome::Success`]; to classify a response (a 503, say), take its
    /// permit with [`release_with`](BulkheadLayer::release_with) and call
    /// [`OwnedPermit::release_as`](crate::OwnedPermit::release_as).
    pub fn errors_as(mut self, outcome: Outcome) -> Self {
        self.errors = outcome;
        self
    }

    /// Hands the permit to `release` with the response instead of releasing it when the
    /// response future completes: for a streaming body, move the permit into the body so the
    /// work counts until the body ends. `release` is any
    /// `Fn(Response, OwnedPermit) -> Response + Clone`.
    pub fn release_with<R2>(self, release: R2) -> BulkheadLayer<C, R2> {
        BulkheadLayer {
            bulkhead: self.bulkhead,
            mode: self.mode,
            errors: self.errors,
            release,
        }
    }

    /// The shared bulkhead.
    pub fn bulkhead(&self) -> &Bulkhead<C> {
        &self.bulkhead
    }
}

impl<S, C: Clock, R: Clone> Layer<S> for BulkheadLayer<C, R> {
    type Service = BulkheadService<S, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService::new(
            inner,
            self.bulkhead.clone(),
            self.mode,
            self.release.clone(),
        )
        .with_errors_as(self.errors)
    }
}
