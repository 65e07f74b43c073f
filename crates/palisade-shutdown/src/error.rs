//! Errors: invalid configuration, a refused spawn, and a request refused while draining.

use std::fmt;

pub use palisade_core::ConfigError;

/// A task or future was refused because its scope has finished draining (or was sealed early,
/// when the drain timed out or the shutdown was escalated): nothing would wait for it. The
/// future is handed back, unpolled, by [`into_inner`](Refused::into_inner).
///
/// It is an error (`Send + Sync` whenever the future is `Send`, even if the future is not `Sync`),
/// so `scope.spawn(server)?` works in a function returning `Box<dyn Error + Send + Sync>`.
pub struct Refused<F> {
    /// Behind a (never contended) mutex only so that `Refused` is `Sync` for any `Send` future.
    pub(crate) future: std::sync::Mutex<F>,
    pub(crate) scope: std::sync::Arc<str>,
}

impl<F> Refused<F> {
    pub(crate) fn new(future: F, scope: std::sync::Arc<str>) -> Refused<F> {
        Refused {
            future: std::sync::Mutex::new(future),
            scope,
        }
    }

    /// The future that was not spawned, never polled.
    pub fn into_inner(self) -> F {
        self.future
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The name of the scope that refused it (`root`, `root/ingest`, ...).
    pub fn scope(&self) -> &str {
        &self.scope
    }
}

impl<F> fmt::Debug for Refused<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refused")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl<F> fmt::Display for Refused<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scope `{}` has finished draining and accepts no new tasks",
            self.scope
        )
    }
}

impl<F> std::error::Error for Refused<F> {}

/// A request refused by the [`ShutdownLayer`](crate::ShutdownLayer) because the service is
/// draining. Downcast the tower `BoxError` to it and answer 503 with `Connection: close`, so
/// the client retries on another instance.
///
/// With an HTTP/1 server wired to [`Shutdown::stop_accepting`](crate::Shutdown::stop_accepting),
/// few requests meet it: by the draining phase the listener is closed and idle keep-alive
/// connections are gone. It is the safety net for the rest: HTTP/2 streams on open
/// connections, servers not wired to the phase, and gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Draining;

impl fmt::Display for Draining {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the service is shutting down and accepts no new requests")
    }
}

impl std::error::Error for Draining {}
