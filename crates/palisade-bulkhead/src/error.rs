//! Errors: invalid configuration and a refused acquire.

use std::fmt;

pub use palisade_core::ConfigError;

/// Why a bulkhead refused to admit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Every permit was in use and the caller would not wait (`try_acquire`, load-shed mode,
    /// or `max_queued` of 0).
    Full,
    /// Every permit was in use and the wait queue held `max_queued` waiters.
    QueueFull,
    /// The caller waited in the queue for `max_wait` (or a shorter CoDel deadline) without
    /// getting a permit.
    TimedOut,
}

impl Reason {
    /// A short lowercase name for logs and metric labels: `full`, `queue_full`, `timed_out`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Full => "full",
            Reason::QueueFull => "queue_full",
            Reason::TimedOut => "timed_out",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bulkhead refused to admit: why, and the limit in force then.
///
/// A small `Copy` value; as the tower service's error it is boxed, so downcast the `BoxError`
/// to `Rejected` to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub(crate) reason: Reason,
    pub(crate) limit: u32,
}

impl Rejected {
    /// Why it was refused.
    pub const fn reason(&self) -> Reason {
        self.reason
    }

    /// The concurrency limit in force when it was refused.
    pub const fn limit(&self) -> u32 {
        self.limit
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            Reason::Full => write!(f, "bulkhead full: all {} permits in use", self.limit),
            Reason::QueueFull => write!(
                f,
                "bulkhead full: all {} permits in use and the wait queue is full",
                self.limit
            ),
            Reason::TimedOut => write!(
                f,
                "bulkhead full: waited too long for one of {} permits",
                self.limit
            ),
        }
    }
}

impl std::error::Error for Rejected {}
