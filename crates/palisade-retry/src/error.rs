//! Errors: invalid configuration, and the timeout of one attempt.

use std::time::Duration;

pub use palisade_core::ConfigError;

/// One attempt ran longer than the per-attempt timeout and was cancelled.
///
/// The retry loop counts it as a retryable failure. If it is the last attempt, the caller gets
/// it back converted into the operation's error type, which is why
/// [`Retry::attempt_timeout`](crate::Retry::attempt_timeout) needs `E: From<AttemptTimedOut>`
/// (implemented for `std::io::Error` and, through `std::error::Error`, for boxed errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("retry attempt timed out after {0:?}")]
pub struct AttemptTimedOut(pub Duration);

impl From<AttemptTimedOut> for std::io::Error {
    fn from(e: AttemptTimedOut) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::TimedOut, e)
    }
}

/// A per-attempt timeout and how to turn it into an attempt's outcome.
pub(crate) type TimeoutSpec<O> = Option<(Duration, fn(AttemptTimedOut) -> O)>;
