//! [`ShutdownLayer`]: counts in-flight requests and refuses new ones once draining.

use tower_layer::Layer;

use crate::coordinator::Shutdown;
use crate::service::ShutdownService;

/// A tower layer that counts every request in flight for the draining phase and, from the
/// [`Draining`](crate::Phase::Draining) phase on, refuses new requests with a
/// [`Draining`](crate::Draining) error (boxed), without calling the inner service.
///
/// Every service it builds shares the coordinator's one counter, so clones and per-connection
/// copies of a stack are all waited for. A request is counted from `call` until its response
/// future completes or is dropped; a streaming body that outlives it is not counted (the server's
/// own graceful shutdown, a tracked task, waits for connections).
///
/// With axum, put [`HandleErrorLayer`](https://docs.rs/axum/latest/axum/error_handling/struct.HandleErrorLayer.html)
/// outside it and answer [`Draining`](crate::Draining) with `503` and `Connection: close`
/// (`examples/axum_graceful.rs` shows it).
#[derive(Debug, Clone)]
pub struct ShutdownLayer {
    shutdown: Shutdown,
}

impl ShutdownLayer {
    /// A layer counting requests for `shutdown`'s coordinator.
    pub const fn new(shutdown: Shutdown) -> ShutdownLayer {
        ShutdownLayer { shutdown }
    }
}

impl<S> Layer<S> for ShutdownLayer {
    type Service = ShutdownService<S>;

    fn layer(&self, inner: S) -> ShutdownService<S> {
        ShutdownService::new(inner, self.shutdown.clone())
    }
}
