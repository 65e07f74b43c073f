//! [`RetryPolicy`]: a backoff plus the conditions that stop retrying.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::backoff::{Backoff, BackoffBuilder, Cursor, MAX_DELAY_LIMIT};
use crate::classify::Decision;
use crate::error::ConfigError;
use crate::rng::Rng;

/// The longest `max_elapsed` a builder accepts.
pub const MAX_ELAPSED_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// When to retry and how long to wait: a [`Backoff`] schedule, a cap on attempts, an optional
/// deadline over the whole operation, and how to treat `Retry-After` hints.
///
/// It holds no state (each retried operation gets its own schedule) and is `Copy`: pass it by
/// value to as many retries, services and tasks as you like.
///
/// ```
/// use palisade_retry::{Backoff, Jitter, RetryPolicy};
/// use std::time::Duration;
///
/// let policy = RetryPolicy::builder()
///     .backoff(
///         Backoff::exponential(Duration::from_millis(50))
///             .max_delay(Duration::from_secs(2))
///             .jitter(Jitter::Equal),
///     )
///     .max_attempts(5)
///     .max_elapsed(Duration::from_secs(10))
///     .build()?;
/// assert_eq!(policy.max_attempts(), 5);
///
/// let bad = RetryPolicy::builder().max_attempts(0).build();
/// assert_eq!(
///     bad.unwrap_err().to_string(),
///     "max_attempts must be at least 1 (the first attempt counts), got 0"
/// );
/// # Ok::<(), palisade_retry::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    backoff: Backoff,
    max_attempts: u32,
    max_elapsed: Option<Duration>,
    retry_after_beyond_max_delay: bool,
    seed: Option<u64>,
}

/// Builder of a [`RetryPolicy`]; [`build`](RetryPolicyBuilder::build) validates every knob.
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct RetryPolicyBuilder {
    backoff: BackoffBuilder,
    max_attempts: u32,
    max_elapsed: Option<Duration>,
    retry_after_beyond_max_delay: bool,
    seed: Option<u64>,
}

impl RetryPolicy {
    /// A builder with the defaults: exponential backoff from 100 ms (× 2, full jitter, capped at
    /// 30 s), 3 attempts in all, no deadline.
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder {
            backoff: Backoff::exponential(Duration::from_millis(100)),
            max_attempts: 3,
            max_elapsed: None,
            retry_after_beyond_max_delay: false,
            seed: None,
        }
    }

    /// The AWS SDKs' standard mode: 3 attempts, full jitter over `1 s × 2ⁿ` capped at 20 s.
    pub fn aws_standard() -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff::aws_standard(),
            max_attempts: 3,
            max_elapsed: None,
            retry_after_beyond_max_delay: false,
            seed: None,
        }
    }

    /// gRPC's connection backoff (1 s, × 1.6 up to 120 s, ± 20 %) with no attempt limit: it
    /// retries until it succeeds, the classifier says stop, or the future is dropped. Add a
    /// deadline with [`RetryPolicyBuilder::max_elapsed`] through `RetryPolicyBuilder::from`.
    pub fn grpc_connection() -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff::grpc_connection(),
            max_attempts: u32::MAX,
            max_elapsed: None,
            retry_after_beyond_max_delay: false,
            seed: None,
        }
    }

    /// The backoff schedule.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The deadline over the whole operation, if any.
    pub fn max_elapsed(&self) -> Option<Duration> {
        self.max_elapsed
    }

    /// A fresh schedule for one operation.
    pub(crate) fn schedule(&self) -> Schedule {
        Schedule {
            attempts: 0,
            attempt_timer_armed: false,
            slow: None,
        }
    }
}

impl RetryPolicy {
    /// [`RetryPolicy::default`] as a constant: no validation at run time.
    pub(crate) const DEFAULT: RetryPolicy = RetryPolicy {
        backoff: Backoff::DEFAULT,
        max_attempts: 3,
        max_elapsed: None,
        retry_after_beyond_max_delay: false,
        seed: None,
    };
}

impl Default for RetryPolicy {
    /// The builder's defaults: exponential backoff from 100 ms (× 2, full jitter, capped at
    /// 30 s), 3 attempts in all, no deadline.
    fn default() -> RetryPolicy {
        RetryPolicy::DEFAULT
    }
}

impl RetryPolicyBuilder {
    /// The backoff schedule: a [`Backoff`] or an unbuilt [`BackoffBuilder`] (validated by
    /// [`build`](RetryPolicyBuilder::build)).
    pub fn backoff(mut self, backoff: impl Into<BackoffBuilder>) -> Self {
        self.backoff = backoff.into();
        self
    }

    /// Attempts in all, the first included, at least 1 (default 3). `1` means no retry.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// A deadline over the whole operation, counted from the first attempt, in `(0, 7 days]`
    /// (default: none). No sleep runs past it: the last one is cut short so that the final
    /// attempt starts at the deadline, and a `Retry-After` hint that would end past it gives up
    /// at once. An attempt already running is not cut short by it: use an attempt timeout for that.
    pub fn max_elapsed(mut self, max_elapsed: Duration) -> Self {
        self.max_elapsed = Some(max_elapsed);
        self
    }

    /// Whether a [`Decision::RetryAfter`] hint longer than the backoff's `max_delay` is honored
    /// as is, up to 24 h (default `false`: it is capped at `max_delay`). Either way it never runs
    /// past `max_elapsed`; without one, a server that answers `Retry-After: 86400` keeps the
    /// caller waiting a day, so pair this with a deadline.
    pub fn honor_retry_after_beyond_max_delay(mut self, honor: bool) -> Self {
        self.retry_after_beyond_max_delay = honor;
        self
    }

    /// A fixed seed for the jitter: every operation retried with this policy then sleeps the
    /// same schedule. For tests and simulations; leave unset in production so that clients that
    /// fail together spread out.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks every knob (the backoff's too) and builds the policy.
    pub fn build(self) -> Result<RetryPolicy, ConfigError> {
        let backoff = self.backoff.build()?;
        if self.max_attempts == 0 {
            return Err(ConfigError::out_of_range(
                "max_attempts",
                "at least 1 (the first attempt counts)",
                self.max_attempts,
            ));
        }
        if let Some(max_elapsed) = self.max_elapsed
            && (max_elapsed.is_zero() || max_elapsed > MAX_ELAPSED_LIMIT)
        {
            return Err(ConfigError::out_of_range(
                "max_elapsed",
                "greater than zero and at most 7 days",
                max_elapsed,
            ));
        }
        Ok(RetryPolicy {
            backoff,
            max_attempts: self.max_attempts,
            max_elapsed: self.max_elapsed,
            retry_after_beyond_max_delay: self.retry_after_beyond_max_delay,
            seed: self.seed,
        })
    }
}

impl From<RetryPolicy> for RetryPolicyBuilder {
    fn from(p: RetryPolicy) -> RetryPolicyBuilder {
        RetryPolicyBuilder {
            backoff: p.backoff.into(),
            max_attempts: p.max_attempts,
            max_elapsed: p.max_elapsed,
            retry_after_beyond_max_delay: p.retry_after_beyond_max_delay,
            seed: p.seed,
        }
    }
}

/// Why a retry loop stopped with a retryable outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GiveUp {
    Attempts,
    Deadline,
    Budget,
}

impl GiveUp {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GiveUp::Attempts => "max_attempts reached",
            GiveUp::Deadline => "max_elapsed reached",
            GiveUp::Budget => "retry budget exhausted",
        }
    }
}

/// The per-operation state every retry loop (async, blocking, tower) shares.
#[derive(Debug)]
pub(crate) struct Schedule {
    attempts: u32,
    /// Whether the timer runs for the current attempt's timeout.
    attempt_timer_armed: bool,
    /// Made on first need (a retry or an attempt timeout): an operation that succeeds at once
    /// neither seeds a generator nor carries a timer, and drops one `None`.
    slow: Option<Box<Slow>>,
}

impl Drop for Schedule {
    /// Keeps the success path's drop to one inlined check: the slow state's drop is out of line.
    #[inline]
    fn drop(&mut self) {
        if let Some(slow) = self.slow.take() {
            drop_slow(slow);
        }
    }
}

#[cold]
#[inline(never)]
fn drop_slow(slow: Box<Slow>) {
    drop(slow);
}

#[derive(Debug, Default)]
struct Slow {
    cursor: Option<Cursor>,
    /// One timer for both the attempt timeout and the backoff sleep (async loops only).
    timer: Option<Pin<Box<Sleep>>>,
}

impl Schedule {
    /// Counts an attempt that is starting; returns its number, from 1.
    pub(crate) fn start_attempt(&mut self) -> u32 {
        self.attempts = self.attempts.saturating_add(1);
        self.attempt_timer_armed = false;
        self.attempts
    }

    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// For an attempt that returned `Pending`: starts its timeout on the first call (so an
    /// attempt that finishes at once costs no timer) and polls it. `Ready`: it timed out.
    pub(crate) fn poll_attempt_timeout(
        &mut self,
        timeout: Duration,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if !self.attempt_timer_armed {
            self.arm(after(timeout));
            self.attempt_timer_armed = true;
        }
        self.poll_timer(cx)
    }

    /// Arms the timer for the sleep before the next attempt. A sleep that the deadline cut short
    /// ends exactly at the deadline, not at a re-read `now + delay`.
    pub(crate) fn arm_backoff(
        &mut self,
        delay: Duration,
        started: Option<Instant>,
        policy: &RetryPolicy,
    ) {
        let mut wake = after(delay);
        if let (Some(started), Some(max)) = (started, policy.max_elapsed) {
            wake = wake.min(started + max);
        }
        self.arm(wake);
    }

    /// Points the timer (made on first use) at `deadline`.
    fn arm(&mut self, deadline: Instant) {
        let slow = self.slow.get_or_insert_default();
        match &mut slow.timer {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => slow.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Polls the timer; ready at once if none was ever armed.
    pub(crate) fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.slow.as_mut().and_then(|slow| slow.timer.as_mut()) {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }

    /// After a retryable outcome: the delay before the next attempt, or why to stop.
    /// `elapsed` is the time since the first attempt started; it is only read when the policy
    /// has a deadline.
    pub(crate) fn next_delay(
        &mut self,
        policy: &RetryPolicy,
        decision: Decision,
        elapsed: impl FnOnce() -> Duration,
    ) -> Result<Duration, GiveUp> {
        if self.attempts >= policy.max_attempts {
            return Err(GiveUp::Attempts);
        }
        let cursor = self
            .slow
            .get_or_insert_default()
            .cursor
            .get_or_insert_with(|| {
                let rng = match policy.seed {
                    Some(seed) => Rng::seeded(seed),
                    None => Rng::from_entropy(),
                };
                Cursor::new(&policy.backoff, rng)
            });
        // The schedule advances on every retry, hinted or not, so growth follows the attempt count.
        let scheduled = cursor.next(&policy.backoff);
        let (delay, hinted) = match decision {
            Decision::RetryAfter(hint) if policy.retry_after_beyond_max_delay => {
                (hint.min(MAX_DELAY_LIMIT), true)
            }
            Decision::RetryAfter(hint) => (hint.min(policy.backoff.max_delay()), true),
            _ => (scheduled, false),
        };
        let Some(max_elapsed) = policy.max_elapsed else {
            return Ok(delay);
        };
        let remaining = max_elapsed.saturating_sub(elapsed());
        if remaining.is_zero() || (hinted && delay > remaining) {
            return Err(GiveUp::Deadline);
        }
        Ok(delay.min(remaining))
    }
}

/// The tokio instant `delay` from now; about 30 years from now if that overflows (a huge
/// `Retry-After` hint honored beyond `max_delay`, a huge attempt timeout).
fn after(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay)
        .or_else(|| now.checked_add(Duration::from_secs(30 * 365 * 86_400)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Jitter;

    fn fixed(ms: u64) -> RetryPolicyBuilder {
        RetryPolicy::builder().backoff(
            Backoff::exponential(Duration::from_millis(ms))
                .jitter(Jitter::None)
                .max_delay(Duration::from_secs(10)),
        )
    }

    #[test]
    fn attempts_are_capped() {
        let policy = fixed(100).max_attempts(3).build().unwrap();
        let mut s = policy.schedule();
        let zero = || Duration::ZERO;
        assert_eq!(s.start_attempt(), 1);
        assert_eq!(
            s.next_delay(&policy, Decision::Retry, zero),
            Ok(Duration::from_millis(100))
        );
        assert_eq!(s.start_attempt(), 2);
        assert_eq!(
            s.next_delay(&policy, Decision::Retry, zero),
            Ok(Duration::from_millis(200))
        );
        assert_eq!(s.start_attempt(), 3);
        assert_eq!(
            s.next_delay(&policy, Decision::Retry, zero),
            Err(GiveUp::Attempts)
        );
    }

    #[test]
    fn the_deadline_cuts_the_last_sleep_and_refuses_long_hints() {
        let policy = fixed(400)
            .max_attempts(10)
            .max_elapsed(Duration::from_secs(1))
            .build()
            .unwrap();
        let mut s = policy.schedule();
        s.start_attempt();
        // 500 ms gone: the 400 ms delay fits in the 500 ms left.
        let at = |ms| move || Duration::from_millis(ms);
        assert_eq!(
            s.next_delay(&policy, Decision::Retry, at(500)),
            Ok(Duration::from_millis(400))
        );
        s.start_attempt();
        // 900 ms gone: the 800 ms delay is cut to the 100 ms left.
        assert_eq!(
            s.next_delay(&policy, Decision::Retry, at(900)),
            Ok(Duration::from_millis(100))
        );
        s.start_attempt();
        assert_eq!(
            s.next_delay(&policy, Decision::Retry, at(1000)),
            Err(GiveUp::Deadline)
        );
        // A server that asks for 300 ms when 200 ms are left is not retried early.
        let mut s = policy.schedule();
        s.start_attempt();
        let hint = Decision::RetryAfter(Duration::from_millis(300));
        assert_eq!(s.next_delay(&policy, hint, at(800)), Err(GiveUp::Deadline));
        assert_eq!(
            s.next_delay(&policy, hint, at(600)),
            Ok(Duration::from_millis(300))
        );
    }

    #[test]
    fn hints_override_the_backoff_and_are_capped_unless_told_otherwise() {
        let capped = fixed(100).max_attempts(5).build().unwrap();
        let hint = Decision::RetryAfter(Duration::from_secs(60));
        let mut s = capped.schedule();
        s.start_attempt();
        assert_eq!(
            s.next_delay(&capped, hint, || Duration::ZERO),
            Ok(Duration::from_secs(10))
        );
        let honored = RetryPolicyBuilder::from(capped)
            .honor_retry_after_beyond_max_delay(true)
            .build()
            .unwrap();
        let mut s = honored.schedule();
        s.start_attempt();
        assert_eq!(
            s.next_delay(&honored, hint, || Duration::ZERO),
            Ok(Duration::from_secs(60))
        );
        // The schedule still advanced: the next unhinted delay is the second one.
        s.start_attempt();
        assert_eq!(
            s.next_delay(&honored, Decision::Retry, || Duration::ZERO),
            Ok(Duration::from_millis(200))
        );
    }

    #[test]
    fn builder_validates_and_presets_are_valid() {
        let err = |b: RetryPolicyBuilder| b.build().unwrap_err().to_string();
        assert_eq!(
            err(RetryPolicy::builder().max_elapsed(Duration::ZERO)),
            "max_elapsed must be greater than zero and at most 7 days, got 0ns"
        );
        assert!(
            err(RetryPolicy::builder().backoff(Backoff::exponential(Duration::ZERO)))
                .starts_with("initial delay")
        );
        for preset in [
            RetryPolicy::aws_standard(),
            RetryPolicy::grpc_connection(),
            RetryPolicy::default(),
        ] {
            assert_eq!(RetryPolicyBuilder::from(preset).build(), Ok(preset));
        }
        assert_eq!(RetryPolicy::aws_standard().max_attempts(), 3);
        assert_eq!(RetryPolicy::builder().build(), Ok(RetryPolicy::default()));
    }
}
