//! The decision after each attempt, shared by the async, blocking and tower retry loops.

use std::time::Duration;

use crate::budget::RetryBudget;
use crate::classify::{Classify, Decision, OnRetry, RetryEvent};
use crate::policy::{GiveUp, RetryPolicy, Schedule};

/// Classifies `outcome` and, if it is worth retrying and every stop condition and the budget
/// allow it, calls the hook and returns the delay before the next attempt. `None`: hand the
/// outcome to the caller. A `timed_out` attempt is retryable whatever the classifier says.
#[inline]
#[allow(clippy::too_many_arguments)] // one internal call shape for three loops
pub(crate) fn next_delay<T, E>(
    outcome: &Result<T, E>,
    timed_out: bool,
    classify: &impl Classify<T, E>,
    on_retry: &mut impl OnRetry<T, E>,
    budget: Option<&dyn RetryBudget>,
    schedule: &mut Schedule,
    policy: &RetryPolicy,
    elapsed: impl FnOnce() -> Duration,
) -> Option<Duration> {
    let decision = if timed_out {
        Decision::Retry
    } else {
        classify.classify(outcome)
    };
    if let Some(budget) = budget {
        budget.record(decision.is_retry());
    }
    if !decision.is_retry() {
        return None;
    }
    retry_delay(
        outcome, decision, on_retry, budget, schedule, policy, elapsed,
    )
}

/// The retry path of [`next_delay`], kept out of line so the success path stays small.
#[cold]
#[inline(never)]
fn retry_delay<T, E>(
    outcome: &Result<T, E>,
    decision: Decision,
    on_retry: &mut impl OnRetry<T, E>,
    budget: Option<&dyn RetryBudget>,
    schedule: &mut Schedule,
    policy: &RetryPolicy,
    elapsed: impl FnOnce() -> Duration,
) -> Option<Duration> {
    let attempt = schedule.attempts();
    let delay = match schedule.next_delay(policy, decision, elapsed) {
        Ok(delay) => delay,
        Err(reason) => return give_up(attempt, reason, outcome.is_err()),
    };
    if let Some(budget) = budget
        && !budget.withdraw()
    {
        return give_up(attempt, GiveUp::Budget, outcome.is_err());
    }
    on_retry.on_retry(&RetryEvent {
        attempt,
        outcome,
        delay,
    });
    tracing::debug!(target: "palisade_retry", attempt, ?delay, is_error = outcome.is_err(), "retrying");
    Some(delay)
}

fn give_up(attempts: u32, reason: GiveUp, is_error: bool) -> Option<Duration> {
    tracing::warn!(
        target: "palisade_retry",
        attempts,
        reason = reason.as_str(),
        is_error,
        "giving up: returning the last outcome"
    );
    None
}
