//! Errors: invalid configuration, and the timeout of one attempt.

use std::time::Duration;

/// A builder was given a value outside its allowed range.
///
/// The message names the field, the allowed range and the value given, e.g.
/// `multiplier must be a finite number in [1.0, 100.0], got 0.5`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `field` must lie in `allowed`; it was `got`.
    #[error("{field} must be {allowed}, got {got}")]
    OutOfRange {
        /// The builder method (and so the field) at fault.
        field: &'static str,
        /// The allowed values, in words.
        allowed: String,
        /// The value that was given.
        got: String,
    },
}

impl ConfigError {
    pub(crate) fn out_of_range(
        field: &'static str,
        allowed: impl Into<String>,
        got: impl std::fmt::Debug,
    ) -> ConfigError {
        ConfigError::OutOfRange {
            field,
            allowed: allowed.into(),
            got: format!("{got:?}"),
        }
    }
}

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
