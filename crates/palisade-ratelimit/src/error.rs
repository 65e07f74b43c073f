//! Errors: invalid configuration, requests that can never fit, and the tower rejection.

use std::time::Duration;

pub use palisade_core::ConfigError;

/// A request for more cells than the limiter can ever grant at once (more than its burst, or
/// for a sliding window, more than its limit). Waiting would never help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("requested {requested} cells but the limiter's capacity is {capacity}: split the request")]
pub struct InsufficientCapacity {
    pub(crate) requested: u32,
    pub(crate) capacity: u32,
}

impl InsufficientCapacity {
    /// The cells that were asked for.
    pub const fn requested(&self) -> u32 {
        self.requested
    }

    /// The most cells the limiter can grant in one request.
    pub const fn capacity(&self) -> u32 {
        self.capacity
    }
}

/// Why a wait for capacity ended without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The request is larger than the limiter's capacity: no wait would ever admit it.
    #[error(transparent)]
    InsufficientCapacity(#[from] InsufficientCapacity),
    /// The cells would only be free after `wait`, longer than the caller allowed. Nothing was
    /// consumed.
    #[error("the limiter would admit this request only after {wait:?}, longer than allowed")]
    TooLong {
        /// How long the request would have had to wait (its place behind every earlier waiter).
        wait: Duration,
    },
    /// A keyed limiter is full of keys that still owe capacity and its policy rejects new keys.
    #[error(
        "the keyed limiter is full and evicts no key that still owes capacity (a key's place may free up in {retry_after:?})"
    )]
    KeysFull {
        /// The earliest moment a sweep could free a key's place, from now (a lower bound: keys
        /// used meanwhile may take longer), the same as a refused check's `retry_after`.
        retry_after: Duration,
    },
}

/// The error the tower [`RateLimit`](crate::RateLimit) service returns (as a `BoxError`) when
/// it rejects a request: downcast to it to answer `429 Too Many Requests` with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited: retry after {retry_after:?}")]
pub struct RateLimited {
    pub(crate) retry_after: Duration,
    pub(crate) limit: u32,
    pub(crate) keys_full: bool,
}

impl RateLimited {
    /// How long until the request would be admitted (the `Retry-After` value).
    pub const fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The limiter's capacity (the `RateLimit-Limit` value).
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// `true` when a keyed limiter rejected a new key because its key table was full, rather
    /// than because the key was over its rate.
    pub const fn keys_full(&self) -> bool {
        self.keys_full
    }
}
