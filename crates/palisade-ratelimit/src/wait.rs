//! Waiting for capacity: `until_ready` and friends, on tokio timers.
//!
//! A waiter does not poll. It *reserves* its cells: for GCRA the reservation is the same
//! compare-exchange as a check, moving the TAT past its cells even when they are not free yet,
//! and the waiter sleeps exactly until the moment its cells fit. Reservations are ordered by
//! that compare-exchange, so waiters are served first come, first served (and a plain
//! `check` cannot take capacity promised to a waiter). A waiter dropped before its moment
//! gives its cells back, so it consumes nothing, unless later waiters have already reserved
//! behind it: their moments were computed after its cells, and handing its cells out again
//! would admit them twice, so its slot then goes unused. A sliding window or a multi-quota
//! cannot promise future capacity: their waiters sleep until the predicted moment and check
//! again, which is not FIFO.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash, RandomState};
use std::time::Duration;

use palisade_core::Clock;

use crate::algorithm::Algorithm;
use crate::decision::{Decision, Outcome};
use crate::error::{InsufficientCapacity, WaitError};
use crate::keyed::KeyedRateLimiter;
use crate::limiter::RateLimiter;

impl<A: Algorithm, C: Clock> RateLimiter<A, C> {
    /// Waits until one cell is granted, in first-come, first-served order among waiters.
    ///
    /// Cancel-safe: dropping the future before it completes never over-admits, and the waiters
    /// behind it keep their places. It gives the cell back (consumes nothing) when no later
    /// waiter has reserved behind it; when one has, the dropped waiter's slot goes unused, since
    /// the later moments were computed after it and handing the cell out again would admit two
    /// requests in one slot.
    pub async fn until_ready(&self) {
        // One cell always fits a valid limiter, and the wait is unbounded.
        let _ = self.until_ready_within(1, Duration::MAX).await;
    }

    /// Waits until `n` cells are granted (see [`until_ready`](RateLimiter::until_ready)).
    /// Errors at once if `n` exceeds the capacity.
    pub async fn until_n_ready(&self, n: u32) -> Result<(), InsufficientCapacity> {
        match self.until_ready_within(n, Duration::MAX).await {
            Err(WaitError::InsufficientCapacity(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Waits until `n` cells are granted if that takes at most `max_wait` (plus jitter);
    /// otherwise returns [`WaitError::TooLong`] at once, having consumed nothing.
    pub async fn until_ready_within(&self, n: u32, max_wait: Duration) -> Result<(), WaitError> {
        wait(
            max_wait,
            self.jitter(),
            |max| self.reserve(n, max),
            |end| self.undo(n, end),
            || self.now(),
        )
        .await
    }
}

impl<K, A, C, S> KeyedRateLimiter<K, A, C, S>
where
    K: Hash + Eq,
    A: Algorithm,
    C: Clock,
    S: BuildHasher,
{
    /// Waits until `n` cells of `key`'s limit are granted, first come, first served among that
    /// key's waiters. Cancel-safe: a dropped waiter gives its cells back. Errors at once if `n`
    /// exceeds the capacity, or with [`WaitError::KeysFull`] if the key is new and the table
    /// refuses new keys.
    pub async fn until_key_ready<Q>(&self, key: &Q, n: u32) -> Result<(), WaitError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.until_key_ready_within(key, n, Duration::MAX).await
    }

    /// [`until_key_ready`](KeyedRateLimiter::until_key_ready), giving up at once with
    /// [`WaitError::TooLong`] (consuming nothing) if the wait would exceed `max_wait`.
    pub async fn until_key_ready_within<Q>(
        &self,
        key: &Q,
        n: u32,
        max_wait: Duration,
    ) -> Result<(), WaitError>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        wait(
            max_wait,
            self.jitter(),
            |max| self.reserve(key, n, max),
            |end| self.undo(key, n, end),
            || self.now(),
        )
        .await
    }
}

/// Reserve, then sleep until the reserved moment with a refund armed for cancellation.
pub(crate) async fn wait(
    max_wait: Duration,
    jitter: Duration,
    reserve: impl Fn(Duration) -> Result<(Decision, u64), InsufficientCapacity>,
    undo: impl Fn(u64),
    now: impl Fn() -> u64,
) -> Result<(), WaitError> {
    let start = now();
    loop {
        let spent = Duration::from_nanos(now().saturating_sub(start));
        let budget = max_wait.saturating_sub(spent);
        let (decision, end) = reserve(budget)?;
        let wait = Duration::from_nanos(decision.retry_after);
        match decision.outcome {
            Outcome::Allowed if wait.is_zero() => return Ok(()),
            Outcome::Allowed => {
                let guard = RefundOnDrop(Some(|| undo(end)));
                tokio::time::sleep(wait + random_up_to(jitter)).await;
                guard.disarm();
                return Ok(());
            }
            Outcome::KeysFull => return Err(WaitError::KeysFull { retry_after: wait }),
            Outcome::Limited if wait > budget => return Err(WaitError::TooLong { wait }),
            // Capacity that cannot be reserved ahead (a sliding window, several quotas): sleep
            // until the predicted moment, jittered like any waiter, then try again.
            Outcome::Limited => tokio::time::sleep(wait + random_up_to(jitter)).await,
        }
    }
}

/// Gives the reserved cells back unless disarmed: a waiter dropped mid-sleep consumes nothing
/// unless a later waiter reserved behind it (then its slot goes unused, see `until_ready`).
pub(crate) struct RefundOnDrop<F: FnOnce()>(pub(crate) Option<F>);

impl<F: FnOnce()> RefundOnDrop<F> {
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl<F: FnOnce()> Drop for RefundOnDrop<F> {
    fn drop(&mut self) {
        if let Some(refund) = self.0.take() {
            refund();
        }
    }
}

/// Uniform in `[0, max]`. Spreads waiters; not for anything that needs unpredictability.
pub(crate) fn random_up_to(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    // A std atomic on purpose: jitter is not part of any protocol a loom model checks.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let x = RandomState::new().hash_one(n);
    let span = max.as_nanos().min(u128::from(u64::MAX)) + 1;
    Duration::from_nanos(((u128::from(x) * span) >> 64) as u64)
}
