//! The errors a caller sees: a connection lost under an operation, no connection right now,
//! and closed for good.

use std::error::Error as StdError;
use std::io;

use tokio::time::Instant;

use crate::state::{Cause, CloseReason};

/// A boxed error: what the tower service returns, and what a connector's error becomes.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// An operation failed because its connection went down.
///
/// The stream returns it inside an [`io::Error`] of the underlying error's kind
/// ([`UnexpectedEof`](io::ErrorKind::UnexpectedEof) for end of file,
/// [`TimedOut`](io::ErrorKind::TimedOut) for the idle timeout), and its next operation uses a
/// new connection. The service returns it boxed when a response fails with an error its
/// classifier calls a lost connection; the connection itself is replaced when its `poll_ready`
/// fails, its heartbeat fails or `reconnect()` is called (see `Reconnect`). Whether to resend
/// is the caller's call: the peer
/// may have received the request before the connection went down, so resend only what is
/// idempotent.
///
/// ```
/// use palisade_reconnect::ConnectionLost;
///
/// fn lost_connection(e: &std::io::Error) -> Option<&ConnectionLost> {
///     e.get_ref()?.downcast_ref::<ConnectionLost>()
/// }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("{cause} (connection {generation})")]
pub struct ConnectionLost {
    pub(crate) generation: u64,
    pub(crate) cause: Cause,
}

impl ConnectionLost {
    /// Which connection went down (1 for the first; see `ConnectionState::Connected`).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Why it went down.
    pub fn cause(&self) -> &Cause {
        &self.cause
    }

    pub(crate) fn into_io(self) -> io::Error {
        let kind = match &self.cause {
            Cause::Eof => io::ErrorKind::UnexpectedEof,
            Cause::Idle(_) => io::ErrorKind::TimedOut,
            Cause::Requested => io::ErrorKind::ConnectionAborted,
            cause => cause
                .error()
                .and_then(|e| e.downcast_ref::<io::Error>())
                .map_or(io::ErrorKind::ConnectionReset, io::Error::kind),
        };
        io::Error::new(kind, self)
    }
}

/// No connection now, and the service fails fast while disconnected
/// (`WhileDisconnected::FailFast`): the request was not sent, so it is always safe to send it
/// elsewhere or later.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not connected{}", match (.cause, .next_attempt_at) {
    (Some(cause), Some(_)) => format!(": {cause}; reconnecting"),
    (Some(cause), None) => format!(": {cause}"),
    (None, _) => String::from(" yet"),
})]
pub struct NotConnected {
    pub(crate) cause: Option<Cause>,
    pub(crate) next_attempt_at: Option<Instant>,
}

impl NotConnected {
    /// Why the last attempt failed or the last connection went down (none before the first).
    pub fn cause(&self) -> Option<&Cause> {
        self.cause.as_ref()
    }

    /// When the next attempt is due (none while one is in flight).
    pub fn next_attempt_at(&self) -> Option<Instant> {
        self.next_attempt_at
    }
}

/// Closed for good: the policy gave up, or the owner closed it. Every later operation fails
/// with this error (a stream closed by its owner reads end of file; a stream's `flush` and
/// `shutdown`, with nothing left to send, return `Ok`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("connection closed: {reason}")]
pub struct Closed {
    pub(crate) reason: CloseReason,
}

impl Closed {
    /// Why it closed.
    pub fn reason(&self) -> &CloseReason {
        &self.reason
    }

    pub(crate) fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::NotConnected, self)
    }
}

/// A connector's error as an [`io::Error`]: itself if it is one, else wrapped.
pub(crate) fn into_io(error: BoxError) -> io::Error {
    match error.downcast::<io::Error>() {
        Ok(io) => *io,
        Err(other) => io::Error::other(other),
    }
}
