//! [`RateLimiter`]: one limit shared by everything that checks it.

use std::fmt;
use std::time::Duration;

use palisade_core::{Clock, FastClock};

use crate::algorithm::Algorithm;
use crate::algorithm::private::Op;
use crate::decision::Decision;
use crate::error::{ConfigError, InsufficientCapacity, WaitError};
use crate::gcra::MAX_NOW;
use crate::quota::Quota;

/// A rate limiter for one stream of requests: lock-free for a [`Quota`] (one atomic word) and a
/// [`SlidingWindow`](crate::SlidingWindow), one short lock for a
/// [`MultiGcra`](crate::MultiGcra).
///
/// ```
/// use palisade_ratelimit::{Quota, RateLimiter};
///
/// let limiter = RateLimiter::new(Quota::per_second(2))?;
/// assert!(limiter.check().is_allowed());
/// assert!(limiter.check().is_allowed());
/// let refused = limiter.check();
/// assert!(!refused.is_allowed());
/// assert!(refused.retry_after().unwrap() <= std::time::Duration::from_millis(500));
/// # Ok::<(), palisade_ratelimit::ConfigError>(())
/// ```
///
/// Share it by reference or in an `Arc`; every method takes `&self`. Checks read the clock once
/// and allocate nothing.
pub struct RateLimiter<A: Algorithm = Quota, C: Clock = FastClock> {
    direct: A::Direct,
    clock: C,
    base: u64,
    jitter: Duration,
}

impl RateLimiter<Quota, FastClock> {
    /// A limiter for `quota` on the fast clock; see [`builder`](RateLimiter::builder) for the
    /// other knobs.
    pub fn new(quota: Quota) -> Result<RateLimiter<Quota, FastClock>, ConfigError> {
        RateLimiter::builder(quota).build()
    }
}

impl<A: Algorithm> RateLimiter<A, FastClock> {
    /// A builder for a limiter running `algorithm`: a [`Quota`],
    /// [`MultiGcra`](crate::MultiGcra) or [`SlidingWindow`](crate::SlidingWindow).
    pub fn builder(algorithm: A) -> RateLimiterBuilder<A, FastClock> {
        RateLimiterBuilder {
            algorithm,
            clock: FastClock::new(),
            jitter: Duration::ZERO,
        }
    }
}

/// Builds a [`RateLimiter`]; [`build`](RateLimiterBuilder::build) validates every knob.
///
/// | knob | default | allowed |
/// |---|---|---|
/// | algorithm | (required) | a valid [`Quota`], [`MultiGcra`](crate::MultiGcra) or [`SlidingWindow`](crate::SlidingWindow) |
/// | [`clock`](RateLimiterBuilder::clock) | [`FastClock`] | any [`Clock`] |
/// | [`wait_jitter`](RateLimiterBuilder::wait_jitter) | 0 | up to 1 hour |
#[derive(Debug, Clone)]
pub struct RateLimiterBuilder<A, C> {
    algorithm: A,
    clock: C,
    jitter: Duration,
}

impl<A: Algorithm, C: Clock> RateLimiterBuilder<A, C> {
    /// The clock every decision reads: `TokioClock` to follow tokio's (paused) time,
    /// `ManualClock` for tests.
    pub fn clock<C2: Clock>(self, clock: C2) -> RateLimiterBuilder<A, C2> {
        RateLimiterBuilder {
            algorithm: self.algorithm,
            clock,
            jitter: self.jitter,
        }
    }

    /// Up to this much extra random delay for each waiter of `until_ready` that had to wait,
    /// so waiters released together do not all hit the next service at once. Jitter only
    /// delays: it never admits earlier and so never over-admits.
    pub fn wait_jitter(mut self, jitter: Duration) -> RateLimiterBuilder<A, C> {
        self.jitter = jitter;
        self
    }

    /// The limiter, or the first knob out of range.
    pub fn build(self) -> Result<RateLimiter<A, C>, ConfigError> {
        let clock = self.clock;
        let algorithm = self.algorithm.validated()?;
        check_jitter(self.jitter)?;
        Ok(RateLimiter {
            direct: algorithm.direct(),
            base: clock.now().as_nanos(),
            clock,
            jitter: self.jitter,
        })
    }
}

pub(crate) fn check_jitter(jitter: Duration) -> Result<(), ConfigError> {
    if jitter > Duration::from_secs(3600) {
        return Err(ConfigError::out_of_range(
            "wait_jitter",
            "at most 1h",
            jitter,
        ));
    }
    Ok(())
}

/// Nanoseconds since `base`, saturating at 0 (a reading behind `base`, from a core whose
/// counter trails) and at [`MAX_NOW`] (18 years).
///
/// Both ends are one predicted branch to a cold path, not selects: a select puts two more
/// instructions between the clock and the compare-exchange on every check (the branch measured
/// about 0.5 ns faster on the direct check, in interleaved runs). A reading behind `base` wraps
/// past [`MAX_NOW`] and takes the cold path, unless it is at least 2⁶⁴ − 2⁵⁹ ns behind (no
/// clock that keeps [`Clock`]'s contract is); the result is at most [`MAX_NOW`] either way.
#[inline]
pub(crate) fn since(clock: &impl Clock, base: u64) -> u64 {
    let now = clock.now().as_nanos();
    let t = now.wrapping_sub(base);
    if t > MAX_NOW {
        std::hint::cold_path();
        return if now < base { 0 } else { MAX_NOW };
    }
    t
}

impl<A: Algorithm, C: Clock> RateLimiter<A, C> {
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        since(&self.clock, self.base)
    }

    /// Takes one cell if it is free now.
    #[inline]
    pub fn check(&self) -> Decision {
        match A::direct_step(&self.direct, self.now(), 1, Op::Check) {
            Ok(decision) => decision,
            // Every valid algorithm has a capacity of at least one cell.
            Err(_) => unreachable_capacity(),
        }
    }

    /// Takes `n` cells if they are all free now (all or nothing). `n = 0` takes nothing and
    /// reports the current numbers (it is refused only while waiters hold reservations beyond
    /// the burst). An `n` larger than the capacity is an error: no wait would make it fit.
    #[inline]
    pub fn check_n(&self, n: u32) -> Result<Decision, InsufficientCapacity> {
        A::direct_step(&self.direct, self.now(), n, Op::Check)
    }

    /// What [`check`](RateLimiter::check) would say now, without taking anything.
    pub fn peek(&self) -> Decision {
        self.peek_n(1).unwrap_or_else(|_| unreachable_capacity())
    }

    /// What [`check_n`](RateLimiter::check_n) would say now, without taking anything.
    pub fn peek_n(&self, n: u32) -> Result<Decision, InsufficientCapacity> {
        A::direct_step(&self.direct, self.now(), n, Op::Peek)
    }

    /// Gives back `n` cells taken earlier, e.g. when the work they paid for was cancelled
    /// before it touched the protected resource. A refund never raises capacity above full,
    /// but it cannot tell whose cells come back: refund only cells an *allowed* check of yours
    /// took. Refunding after a refused check gives back cells other callers spent, and they are
    /// admitted again (the quota holds net of refunds). A sliding window gives back only
    /// from the current window's count, so refund cells in the window they were taken in.
    /// While waiters hold reservations
    /// (or a quota change left the limiter owing more than a burst) a refund gives nothing
    /// back: the capacity would be handed out again at the moment a waiter uses its cells.
    pub fn refund(&self, n: u32) {
        A::direct_refund(&self.direct, self.now(), n);
    }

    /// Switches to `algorithm` while checks run, keeping the accounting: capacity used stays
    /// used (for GCRA, `(tat − now)/T` cells are carried over to the new interval, rounded up).
    /// Errors if `algorithm` is invalid or cannot replace the current one (a sliding window's
    /// length, a multi-quota's number of quotas); the limiter is then unchanged.
    pub fn set_algorithm(&self, algorithm: A) -> Result<(), ConfigError> {
        let algorithm = algorithm.validated()?;
        A::direct_config(&self.direct).can_become(&algorithm)?;
        A::direct_set(&self.direct, algorithm, self.now())
    }

    /// The algorithm (quota) in force.
    pub fn algorithm(&self) -> A {
        A::direct_config(&self.direct)
    }

    /// The clock decisions read.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn jitter(&self) -> Duration {
        self.jitter
    }

    /// Takes `n` cells now, or reserves the first moment they fit if that is within
    /// `max_wait`: the synchronous core of [`until_ready`](RateLimiter::until_ready), for
    /// callers with their own timers. Reservations are served in the order they are made, and
    /// a plain [`check`](RateLimiter::check) cannot take capacity already reserved.
    ///
    /// The [`Reservation`] says how long to wait. Dropping it gives the cells back (so a
    /// caller that gives up consumes nothing) unless later reservations are queued behind it
    /// (see [`until_ready`](RateLimiter::until_ready)), or the quota changed since (it then
    /// gives back what a [`refund`](RateLimiter::refund) would); [`commit`](Reservation::commit)
    /// keeps them.
    /// A sliding window cannot promise future capacity: for it a reservation that would have
    /// to wait is [`WaitError::TooLong`] with the predicted wait.
    pub fn reserve_n(
        &self,
        n: u32,
        max_wait: Duration,
    ) -> Result<Reservation<'_, A, C>, WaitError> {
        let (decision, end) = self.reserve(n, max_wait)?;
        let wait = Duration::from_nanos(decision.retry_after);
        if !decision.is_allowed() {
            return Err(WaitError::TooLong { wait });
        }
        Ok(Reservation {
            limiter: self,
            n,
            end,
            wait,
            armed: true,
        })
    }

    /// Takes `n` cells now or reserves the first moment they fit, if that is within
    /// `max_wait`. Returns the decision whose raw `retry_after` is the wait.
    pub(crate) fn reserve(
        &self,
        n: u32,
        max_wait: Duration,
    ) -> Result<(Decision, u64), InsufficientCapacity> {
        let max_wait = u64::try_from(max_wait.as_nanos()).unwrap_or(u64::MAX);
        let now = self.now();
        let decision = A::direct_step(&self.direct, now, n, Op::Reserve { max_wait })?;
        // For GCRA, where the reservation left the TAT (its `reset_after` counts from now).
        Ok((decision, now + decision.reset_after))
    }

    /// Gives back a reservation of `n` cells that left the state at `end`.
    pub(crate) fn undo(&self, n: u32, end: u64) {
        A::direct_undo(&self.direct, self.now(), n, end);
    }
}

impl<C: Clock> RateLimiter<Quota, C> {
    /// Switches to `quota` while checks run, keeping the accounting (see
    /// [`set_algorithm`](RateLimiter::set_algorithm)).
    pub fn set_quota(&self, quota: Quota) -> Result<(), ConfigError> {
        self.set_algorithm(quota)
    }

    /// The quota in force.
    pub fn quota(&self) -> Quota {
        self.algorithm()
    }
}

#[cold]
pub(crate) fn unreachable_capacity() -> Decision {
    unreachable!("a validated algorithm always has room for one cell")
}

impl<A: Algorithm, C: Clock> fmt::Debug for RateLimiter<A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("algorithm", &self.algorithm())
            .field("peek", &self.peek())
            .field("clock", &self.clock)
            .finish()
    }
}

/// Cells reserved by [`RateLimiter::reserve_n`]: usable after [`wait`](Reservation::wait),
/// given back if dropped before [`commit`](Reservation::commit).
#[must_use = "dropping a reservation gives its cells back"]
pub struct Reservation<'a, A: Algorithm = Quota, C: Clock = FastClock> {
    limiter: &'a RateLimiter<A, C>,
    n: u32,
    end: u64,
    wait: Duration,
    armed: bool,
}

impl<A: Algorithm, C: Clock> Reservation<'_, A, C> {
    /// How long after the reservation was made its cells fit (zero if at once).
    pub const fn wait(&self) -> Duration {
        self.wait
    }

    /// The cells reserved.
    pub const fn cells(&self) -> u32 {
        self.n
    }

    /// Keeps the cells: the work they pay for is going ahead.
    pub fn commit(mut self) {
        self.armed = false;
    }
}

impl<A: Algorithm, C: Clock> Drop for Reservation<'_, A, C> {
    fn drop(&mut self) {
        if self.armed {
            self.limiter.undo(self.n, self.end);
        }
    }
}

impl<A: Algorithm, C: Clock> fmt::Debug for Reservation<'_, A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("cells", &self.n)
            .field("wait", &self.wait)
            .field("armed", &self.armed)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use palisade_core::Instant;

    use super::*;

    /// A clock frozen at one reading.
    #[derive(Clone, Debug)]
    struct At(u64);

    impl Clock for At {
        fn now(&self) -> Instant {
            Instant::from_nanos(self.0)
        }
    }

    #[test]
    fn since_counts_from_the_base_and_saturates_at_both_ends() {
        let base = 1_000;
        assert_eq!(since(&At(1_500), base), 500);
        assert_eq!(since(&At(base), base), 0);
        // A reading behind the base (another core's counter) is the base, never a wrap.
        assert_eq!(since(&At(999), base), 0);
        assert_eq!(since(&At(0), base), 0);
        assert_eq!(since(&At(base + MAX_NOW), base), MAX_NOW);
        assert_eq!(since(&At(base + MAX_NOW + 1), base), MAX_NOW);
        assert_eq!(since(&At(u64::MAX), base), MAX_NOW);
        assert_eq!(since(&At(u64::MAX), 0), MAX_NOW);
        // Outside any clock's contract (566 years back), still within the limiter's range.
        assert!(since(&At(0), u64::MAX) <= MAX_NOW);
    }
}
