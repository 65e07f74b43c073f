//! [`retry_blocking`]: the same retry loop for synchronous code.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::{Clock, FastClock, Instant};

use crate::budget::RetryBudget;
use crate::classify::{Classify, OnRetry, RetryOnError};
use crate::decide;
use crate::policy::RetryPolicy;

/// Retries the blocking operation `op` in the calling thread, sleeping between attempts; the
/// synchronous twin of [`retry`](crate::retry()). Finish the builder with
/// [`call`](RetryBlocking::call).
///
/// It blocks the thread while it sleeps: don't call it from an async task (use
/// [`retry`](crate::retry()) there, or wrap it in `tokio::task::spawn_blocking`).
///
/// ```
/// use palisade_retry::{Backoff, RetryPolicy, retry_blocking};
/// use std::time::Duration;
///
/// let policy = RetryPolicy::builder()
///     .backoff(Backoff::constant(Duration::from_millis(1)))
///     .max_attempts(4)
///     .build()?;
/// let mut calls = 0;
/// let outcome: Result<&str, &str> = retry_blocking(|| {
///     calls += 1;
///     if calls < 3 { Err("busy") } else { Ok("done") }
/// })
/// .with(policy)
/// .call();
/// assert_eq!(outcome, Ok("done"));
/// assert_eq!(calls, 3);
/// # Ok::<(), palisade_retry::ConfigError>(())
/// ```
pub fn retry_blocking<F, T, E>(op: F) -> RetryBlocking<F, RetryOnError, (), FastClock, fn(Duration)>
where
    F: FnMut() -> Result<T, E>,
{
    RetryBlocking {
        op,
        policy: RetryPolicy::default(),
        classify: RetryOnError,
        on_retry: (),
        budget: None,
        clock: FastClock::new(),
        sleep: std::thread::sleep,
    }
}

/// A blocking retry being configured; [`call`](RetryBlocking::call) runs it.
#[must_use = "nothing is attempted until `call`"]
pub struct RetryBlocking<F, C, H, K, S> {
    op: F,
    policy: RetryPolicy,
    classify: C,
    on_retry: H,
    budget: Option<Arc<dyn RetryBudget>>,
    clock: K,
    sleep: S,
}

impl<F, T, E, C, H, K, S> RetryBlocking<F, C, H, K, S>
where
    F: FnMut() -> Result<T, E>,
    C: Classify<T, E>,
    H: OnRetry<T, E>,
    K: Clock,
    S: FnMut(Duration),
{
    /// The policy: backoff, attempts, deadline (default [`RetryPolicy::default`]).
    pub fn with(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The classifier (default: retry every error, return every success).
    pub fn when<C2: Classify<T, E>>(self, classify: C2) -> RetryBlocking<F, C2, H, K, S> {
        RetryBlocking {
            op: self.op,
            policy: self.policy,
            classify,
            on_retry: self.on_retry,
            budget: self.budget,
            clock: self.clock,
            sleep: self.sleep,
        }
    }

    /// A hook called before each retry.
    pub fn on_retry<H2: OnRetry<T, E>>(self, on_retry: H2) -> RetryBlocking<F, C, H2, K, S> {
        RetryBlocking {
            op: self.op,
            policy: self.policy,
            classify: self.classify,
            on_retry,
            budget: self.budget,
            clock: self.clock,
            sleep: self.sleep,
        }
    }

    /// A retry budget shared with other operations.
    pub fn budget(mut self, budget: Arc<dyn RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The clock that measures the policy's `max_elapsed` (default [`FastClock`]).
    pub fn clock<K2: Clock>(self, clock: K2) -> RetryBlocking<F, C, H, K2, S> {
        RetryBlocking {
            op: self.op,
            policy: self.policy,
            classify: self.classify,
            on_retry: self.on_retry,
            budget: self.budget,
            clock,
            sleep: self.sleep,
        }
    }

    /// How to wait between attempts (default [`std::thread::sleep`]). A test passes a closure
    /// that advances a `ManualClock` (given to [`clock`](RetryBlocking::clock)) instead.
    pub fn sleep_with<S2: FnMut(Duration)>(self, sleep: S2) -> RetryBlocking<F, C, H, K, S2> {
        RetryBlocking {
            op: self.op,
            policy: self.policy,
            classify: self.classify,
            on_retry: self.on_retry,
            budget: self.budget,
            clock: self.clock,
            sleep,
        }
    }

    /// Runs the operation, retrying as configured, and returns its last outcome.
    pub fn call(mut self) -> Result<T, E> {
        let mut schedule = self.policy.schedule();
        let started: Option<Instant> = self.policy.max_elapsed().map(|_| self.clock.now());
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
        loop {
            schedule.start_attempt();
            let outcome = (self.op)();
            let clock = &self.clock;
            let delay = decide::next_delay(
                &outcome,
                false,
                &self.classify,
                &mut self.on_retry,
                self.budget.as_deref(),
                &mut schedule,
                &self.policy,
                || started.map_or(Duration::ZERO, |s| clock.elapsed(s)),
            );
            match delay {
                None => return outcome,
                Some(mut delay) => {
                    drop(outcome);
                    // The budget and the hook ran since the delay was cut to the deadline: cut
                    // it again, so that the sleep ends by the deadline (the async loops sleep
                    // until the deadline itself, not for a delay measured before the hook).
                    if let (Some(started), Some(max)) = (started, self.policy.max_elapsed()) {
                        delay = delay.min(max.saturating_sub(self.clock.elapsed(started)));
                    }
                    if !delay.is_zero() {
                        (self.sleep)(delay);
                    }
                }
            }
        }
    }
}

impl<F, C, H, K: fmt::Debug, S> fmt::Debug for RetryBlocking<F, C, H, K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBlocking")
            .field("policy", &self.policy)
            .field("budget", &self.budget)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}
