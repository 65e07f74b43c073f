//! The blocking retry loop, with time driven by a `ManualClock` through `sleep_with`.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::{Clock, ManualClock};
use palisade_retry::{
    Backoff, Decision, Jitter, RetryEvent, RetryPolicy, TpsBudget, retry_blocking,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn sleeps_the_schedule_between_attempts_and_returns_the_last_error() {
    let clock = ManualClock::new();
    let times = RefCell::new(Vec::new());
    let policy = RetryPolicy::builder()
        .backoff(Backoff::linear(ms(100), ms(100)).jitter(Jitter::None))
        .max_attempts(4)
        .build()
        .unwrap();
    let outcome: Result<(), usize> = retry_blocking(|| {
        times.borrow_mut().push(clock.now().as_duration());
        Err(times.borrow().len())
    })
    .with(policy)
    .clock(clock.clone())
    .sleep_with(|d| {
        clock.advance(d);
    })
    .call();
    assert_eq!(outcome, Err(4), "the fourth (last) error is returned");
    assert_eq!(*times.borrow(), [0, 100, 300, 600].map(ms));
}

/// Retries every 300 ms until 1 s has gone by (the attempt cap is out of reach).
fn every_300ms_for_a_second() -> RetryPolicy {
    RetryPolicy::builder()
        .backoff(Backoff::constant(ms(300)))
        .max_attempts(100)
        .max_elapsed(Duration::from_secs(1))
        .build()
        .unwrap()
}

#[test]
fn the_deadline_bounds_the_blocking_loop_too() {
    let clock = ManualClock::new();
    let mut calls = 0;
    let policy = every_300ms_for_a_second();
    let outcome: Result<(), ()> = retry_blocking(|| {
        calls += 1;
        Err(())
    })
    .with(policy)
    .clock(clock.clone())
    .sleep_with(|d| {
        clock.advance(d);
    })
    .call();
    assert_eq!(outcome, Err(()));
    // Attempts at 0, 300, 600, 900 and, after a sleep cut to 100 ms, at 1000.
    assert_eq!(calls, 5);
    assert_eq!(clock.now().as_duration(), Duration::from_secs(1));
}

#[test]
fn classifier_hook_and_budget_apply_as_in_the_async_loop() {
    let clock = ManualClock::new();
    let budget = Arc::new(
        TpsBudget::builder()
            .min_per_sec(1)
            .ttl(Duration::from_secs(1))
            .clock(clock.clone())
            .build()
            .unwrap(),
    );
    let mut hooked = Vec::new();
    let mut calls = 0;
    let outcome: Result<u16, ()> = retry_blocking(|| {
        calls += 1;
        Ok(503)
    })
    .with(
        RetryPolicy::builder()
            .backoff(Backoff::constant(ms(1)))
            .max_attempts(10)
            .build()
            .unwrap(),
    )
    .when(|o: &Result<u16, ()>| {
        if o == &Ok(503) {
            Decision::Retry
        } else {
            Decision::DontRetry
        }
    })
    .on_retry(|e: &RetryEvent<'_, u16, ()>| hooked.push((e.attempt, e.delay)))
    .budget(budget)
    .sleep_with(|d| {
        clock.advance(d);
    })
    .call();
    assert_eq!(outcome, Ok(503));
    // The 1 s budget floor allows one retry; the budget stops the second.
    assert_eq!(calls, 2);
    assert_eq!(hooked, [(1, ms(1))]);
}

/// The blocking loop cuts its last sleep to the deadline as the async loops do, even when the
/// hook (or the budget) takes time between the decision and the sleep: the sleep ends at the
/// deadline, so a hook that returns before the deadline cannot start an attempt after it. (A
/// hook that itself runs past the deadline leaves a zero sleep, in every loop alike.)
#[test]
fn a_slow_hook_does_not_push_the_last_sleep_past_the_deadline() {
    let clock = ManualClock::new();
    let starts = RefCell::new(Vec::new());
    let policy = every_300ms_for_a_second();
    let outcome: Result<(), ()> = retry_blocking(|| {
        starts.borrow_mut().push(clock.now().as_duration());
        Err(())
    })
    .with(policy)
    .clock(clock.clone())
    // A hook that takes 50 ms (a synchronous log or metrics call).
    .on_retry(|_: &RetryEvent<'_, (), ()>| {
        clock.advance(ms(50));
    })
    .sleep_with(|d| {
        clock.advance(d);
    })
    .call();
    assert_eq!(outcome, Err(()));
    // 0; hook to 50, sleep to 350; hook to 400, sleep to 700; hook to 750, the 300 ms sleep
    // (cut to 300 ms when decided at 700) must end at the deadline, 1000.
    assert_eq!(*starts.borrow(), [0, 350, 700, 1000].map(ms));
    assert_eq!(clock.now().as_duration(), Duration::from_secs(1));
}
