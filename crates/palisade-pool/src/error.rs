//! The errors of `get()`, `close()` and `PoolService::call`.

use std::sync::Arc;
use std::time::Duration;

pub use palisade_core::ConfigError;

use crate::metrics::Metrics;

/// Why `get()` returned no connection.
///
/// Timeouts are classified: [`Unavailable`](Error::Unavailable) when connects were failing (the
/// backend is down or refusing; it carries the last connect or validation error), and
/// [`Exhausted`](Error::Exhausted) when every connection was in use (the pool is too small, or
/// connections leak). Both carry the pool's [`Metrics`] at the deadline, which is what a 3 a.m.
/// log line needs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error<E: std::error::Error + 'static> {
    /// The deadline passed while the backend was failing.
    #[error(
        "no connection within {waited:?}: the backend is failing: {last_error}; pool: {metrics}"
    )]
    Unavailable {
        /// How long `get()` waited.
        waited: Duration,
        /// The last connect (or validation) failure.
        #[source]
        last_error: Arc<Failure<E>>,
        /// The pool at the deadline (boxed: it keeps `Result<Pooled, Error>` small).
        metrics: Box<Metrics>,
    },
    /// The deadline passed with every connection in use.
    #[error("no connection within {waited:?}: all connections are in use; pool: {metrics}")]
    Exhausted {
        /// How long `get()` waited.
        waited: Duration,
        /// The pool at the deadline (boxed: it keeps `Result<Pooled, Error>` small).
        metrics: Box<Metrics>,
    },
    /// The pool was closed.
    #[error("the pool is closed")]
    Closed,
}

impl<E: std::error::Error + 'static> Error<E> {
    /// Whether `get()` ran out of time (either timeout kind).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Exhausted { .. })
    }

    /// The last connect or validation failure, for [`Unavailable`](Error::Unavailable).
    pub fn last_error(&self) -> Option<&Failure<E>> {
        match self {
            Error::Unavailable { last_error, .. } => Some(last_error),
            _ => None,
        }
    }

    /// The pool at the deadline, for the timeout kinds.
    pub fn metrics(&self) -> Option<&Metrics> {
        match self {
            Error::Unavailable { metrics, .. } | Error::Exhausted { metrics, .. } => Some(metrics),
            Error::Closed => None,
        }
    }
}

/// `close()` ran out of time with connections still checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pool closed with {outstanding} connection(s) still checked out after {waited:?}")]
#[non_exhaustive]
pub struct CloseTimeout {
    /// Connections not returned by the deadline (each is dropped when its guard is).
    pub outstanding: usize,
    /// How long `close()` waited.
    pub waited: Duration,
}

/// [`PoolService::call`](crate::PoolService) without a successful `poll_ready` first: the
/// service held no connection for the request, so it was not sent.
///
/// The tower contract asks for `poll_ready` to return `Ready(Ok(()))` before each `call`. A call
/// without one (never readied, a second call after one `poll_ready`, a call after `poll_ready`
/// failed, or one while `poll_ready` is pending on the connection's own readiness) gets this
/// error from its response future at once instead of a panic, and nothing is sent. No
/// connection is checked out, created or closed for it. As the service's error it is boxed:
/// downcast the [`BoxError`](crate::BoxError) to `NotReady` to tell it apart.
#[cfg(feature = "tower")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("PoolService::call without a successful poll_ready first: the request was not sent")]
#[non_exhaustive]
pub struct NotReady;

/// A connect or validation step that failed, as [`Error::Unavailable`] reports the last one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Failure<E> {
    /// `connect` returned an error.
    #[error("connect failed: {0}")]
    Connect(#[source] E),
    /// `connect` overran `connect_timeout`.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// `connect` panicked, with this message. The panic is caught and counted as a failed
    /// attempt, so the next one follows the connect backoff like any other.
    #[error("connect panicked: {0}")]
    ConnectPanicked(String),
    /// `validate` or `recycle` returned an error.
    #[error("validation failed: {0}")]
    Validate(#[source] E),
    /// `validate` or `recycle` overran `validation_timeout`.
    #[error("validation timed out after {0:?}")]
    ValidateTimeout(Duration),
    /// [`Manager::is_broken`](crate::Manager::is_broken) said a new connection, on its way from
    /// its connect to its first caller, was broken. Like such a connection failing `validate`,
    /// it counts as a failure of the backend: the next connect follows the connect backoff. (A
    /// connection found broken after sitting idle or after a use is only stale, and is not
    /// reported.)
    #[error("is_broken rejected the connection before checkout")]
    Broken,
}

impl<E> Failure<E> {
    /// The manager's error, if the step returned one (not for timeouts or panics).
    pub fn error(&self) -> Option<&E> {
        match self {
            Failure::Connect(e) | Failure::Validate(e) => Some(e),
            Failure::ConnectTimeout(_)
            | Failure::ConnectPanicked(_)
            | Failure::ValidateTimeout(_)
            | Failure::Broken => None,
        }
    }
}
