//! [`Decision`]: what a check says, without allocating.

use std::fmt;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Outcome {
    Allowed,
    Limited,
    /// A keyed limiter had no room for a new key (see [`WhenFull`](crate::WhenFull)).
    KeysFull,
}

/// The answer to a check: whether the cells were granted, and the numbers a caller puts in
/// `RateLimit-*` and `Retry-After` headers.
///
/// A small `Copy` value (48 bytes). The counts are derived lazily, so a caller that only asks
/// [`is_allowed`](Decision::is_allowed) pays for no division.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub(crate) outcome: Outcome,
    /// Capacity left after this decision, in `per_cell` units.
    pub(crate) slack: u64,
    /// Units per cell: the GCRA interval in ns, or 1 for a sliding window's counts.
    pub(crate) per_cell: u64,
    /// Whole capacity in `per_cell` units (GCRA's tau, a window's limit).
    pub(crate) capacity: u64,
    pub(crate) reset_after: u64,
    pub(crate) retry_after: u64,
}

impl Decision {
    /// `true` if the cells were granted (or, from [`peek`](crate::RateLimiter::peek), would be).
    #[inline]
    pub const fn is_allowed(&self) -> bool {
        matches!(self.outcome, Outcome::Allowed)
    }

    /// `true` if a keyed limiter refused because its key table was full and its policy keeps
    /// the keys it has (see [`WhenFull::RejectNewKeys`](crate::WhenFull::RejectNewKeys)).
    #[inline]
    pub const fn is_keys_full(&self) -> bool {
        matches!(self.outcome, Outcome::KeysFull)
    }

    /// Cells that could still be taken right now, after this decision.
    pub const fn remaining(&self) -> u32 {
        let cells = self.slack / self.per_cell;
        if cells > u32::MAX as u64 {
            u32::MAX
        } else {
            cells as u32
        }
    }

    /// The limiter's capacity: the burst of a GCRA quota (the smallest one of a multi-quota),
    /// the limit of a sliding window.
    pub const fn limit(&self) -> u32 {
        let cells = self.capacity / self.per_cell;
        if cells > u32::MAX as u64 {
            u32::MAX
        } else {
            cells as u32
        }
    }

    /// How long until the limiter is back to full capacity if nothing else is taken.
    pub const fn reset_after(&self) -> Duration {
        Duration::from_nanos(self.reset_after)
    }

    /// For a refusal, how long until the same request would be granted (if no one else takes
    /// the capacity first); `None` when it was allowed. For a refusal of a new key by a full
    /// keyed limiter, the earliest moment some key can be fully replenished and so evicted (a
    /// lower bound: a key used since the table last looked may take longer).
    #[inline]
    pub const fn retry_after(&self) -> Option<Duration> {
        match self.outcome {
            Outcome::Allowed => None,
            _ => Some(Duration::from_nanos(self.retry_after)),
        }
    }
}

impl fmt::Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decision")
            .field("outcome", &self.outcome)
            .field("remaining", &self.remaining())
            .field("limit", &self.limit())
            .field("reset_after", &self.reset_after())
            .field("retry_after", &self.retry_after())
            .finish()
    }
}
