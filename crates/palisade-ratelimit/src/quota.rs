//! [`Quota`]: a rate and a burst, the token-bucket view of a GCRA limit.

use std::time::Duration;

use crate::error::ConfigError;

/// The longest a full burst may take to replenish (`burst × interval`): 2⁵² ns, about 52 days.
pub const MAX_REPLENISH: Duration = Duration::from_nanos(crate::gcra::MAX_TAU);

/// A rate limit in token-bucket terms: one cell is replenished every
/// [`interval`](Quota::interval), and up to [`burst`](Quota::burst) cells can be taken at once
/// by a caller that has been quiet long enough.
///
/// The constructors name the rate; the burst defaults to the number of cells per period, so
/// `Quota::per_second(100)` admits 100 cells at once after a quiet second and then one every
/// 10 ms. Change it with [`burst`](Quota::burst):
///
/// ```
/// use palisade_ratelimit::Quota;
/// use std::time::Duration;
///
/// let q = Quota::per_minute(60).burst(10);
/// assert_eq!(q.interval(), Duration::from_secs(1));
/// assert_eq!(q.burst_size(), 10);
/// ```
///
/// A quota is checked when a limiter is built ([`Quota::validate`]): a zero rate, a zero burst or
/// a burst that takes longer than [`MAX_REPLENISH`] to refill is a [`ConfigError`], never a
/// panic. The interval is kept in whole nanoseconds, so `per_second(3)` replenishes a cell
/// every 333,333,333 ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    pub(crate) interval_ns: u64,
    pub(crate) burst: u32,
}

impl Quota {
    /// `n` cells per second, burst `n`.
    pub const fn per_second(n: u32) -> Quota {
        Quota::per_period(n, 1_000_000_000)
    }

    /// `n` cells per minute, burst `n`.
    pub const fn per_minute(n: u32) -> Quota {
        Quota::per_period(n, 60_000_000_000)
    }

    /// `n` cells per hour, burst `n`.
    pub const fn per_hour(n: u32) -> Quota {
        Quota::per_period(n, 3_600_000_000_000)
    }

    /// `n` cells per day, burst `n`.
    pub const fn per_day(n: u32) -> Quota {
        Quota::per_period(n, 86_400_000_000_000)
    }

    const fn per_period(n: u32, period_ns: u64) -> Quota {
        // Rounded up: the rate is never faster than asked.
        // More than one cell per nanosecond leaves a zero interval, which `validate` refuses.
        let interval_ns = if n == 0 || n as u64 > period_ns {
            0
        } else {
            period_ns.div_ceil(n as u64)
        };
        Quota {
            interval_ns,
            burst: n,
        }
    }

    /// One cell every `interval`, burst 1 (set it with [`burst`](Quota::burst)).
    pub const fn with_interval(interval: Duration) -> Quota {
        let ns = interval.as_nanos();
        let interval_ns = if ns > u64::MAX as u128 {
            u64::MAX
        } else {
            ns as u64
        };
        Quota {
            interval_ns,
            burst: 1,
        }
    }

    /// The same rate with up to `burst` cells at once.
    #[must_use]
    pub const fn burst(self, burst: u32) -> Quota {
        Quota { burst, ..self }
    }

    /// Time to replenish one cell.
    pub const fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    /// The most cells one caller can take at once.
    pub const fn burst_size(&self) -> u32 {
        self.burst
    }

    /// Time for an empty bucket to fill again: `burst × interval`.
    pub const fn replenish_all(&self) -> Duration {
        Duration::from_nanos(self.interval_ns.saturating_mul(self.burst as u64))
    }

    /// Checks the quota: rate at least one cell per period, interval at least 1 ns, burst at
    /// least 1 and a full replenish within [`MAX_REPLENISH`].
    pub fn validate(self) -> Result<Quota, ConfigError> {
        if self.interval_ns == 0 && self.burst == 0 {
            return Err(ConfigError::out_of_range(
                "rate",
                "at least 1 cell per period",
                0,
            ));
        }
        if self.interval_ns == 0 {
            return Err(ConfigError::out_of_range(
                "interval",
                "at least 1ns (at most 1e9 cells per second)",
                self.interval(),
            ));
        }
        if self.interval_ns > crate::gcra::MAX_TAU {
            return Err(ConfigError::out_of_range(
                "interval",
                format!("at most {MAX_REPLENISH:?}"),
                self.interval(),
            ));
        }
        if self.burst == 0 {
            return Err(ConfigError::out_of_range("burst", "at least 1", 0));
        }
        if (self.interval_ns as u128) * (self.burst as u128) > crate::gcra::MAX_TAU as u128 {
            return Err(ConfigError::out_of_range(
                "burst",
                format!(
                    "at most {MAX_REPLENISH:?} / interval (burst × interval is the replenish time)"
                ),
                self.burst,
            ));
        }
        Ok(self)
    }
}
