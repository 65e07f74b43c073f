//! Concurrency models of the retry budgets (see docs/testing.md for how they run).

use std::time::Duration;

use palisade_core::sync::{Arc, model, thread};
use palisade_core::{Instant, ManualClock};
use palisade_retry::{RetryBudget, RetryThrottle, TpsBudget};

fn explored(executions: usize) {
    if cfg!(palisade_loom) {
        assert!(
            executions > 1,
            "loom explored only {executions} execution(s)"
        );
    } else {
        assert_eq!(executions, 1);
    }
}

/// A budget with no floor where each request earns one whole retry.
fn one_per_request(clock: &ManualClock) -> TpsBudget<ManualClock> {
    TpsBudget::builder()
        .min_per_sec(0)
        .retry_ratio(1.0)
        .ttl(Duration::from_secs(10))
        .clock(clock.clone())
        .build()
        .unwrap()
}

/// Runs `withdraw` on a new thread; the handle yields whether it was granted.
fn withdraw_on_thread(budget: &Arc<TpsBudget<ManualClock>>) -> thread::JoinHandle<bool> {
    let budget = budget.clone();
    thread::spawn(move || budget.withdraw())
}

#[test]
fn racing_withdrawals_never_overdraw() {
    explored(model(|| {
        let clock = ManualClock::new();
        let budget = Arc::new(one_per_request(&clock));
        budget.deposit(); // exactly one retry earned
        let other = withdraw_on_thread(&budget);
        let mine = budget.withdraw();
        let theirs = other.join().unwrap();
        assert!(
            mine ^ theirs,
            "one retry earned, granted mine={mine} theirs={theirs}"
        );
        assert_eq!(budget.available(), 0);
    }));
}

#[test]
fn a_deposit_racing_a_withdrawal_is_never_lost() {
    explored(model(|| {
        let clock = ManualClock::new();
        let budget = Arc::new(one_per_request(&clock));
        budget.deposit();
        let depositor = thread::spawn({
            let budget = budget.clone();
            move || budget.deposit()
        });
        // One retry was earned before the race, so this withdrawal always succeeds.
        assert!(budget.withdraw());
        depositor.join().unwrap();
        assert_eq!(budget.available(), 1);
    }));
}

#[test]
fn expired_credit_is_never_spent_by_racing_withdrawals() {
    explored(model(|| {
        let clock = ManualClock::new();
        let budget = Arc::new(one_per_request(&clock));
        budget.deposit(); // earned at t = 0 ...
        clock.advance_to(Instant::ZERO + Duration::from_secs(11)); // ... expired by t = 11 s
        let other = withdraw_on_thread(&budget);
        let mine = budget.withdraw();
        let theirs = other.join().unwrap();
        assert!(
            !mine && !theirs,
            "expired credit spent: mine={mine} theirs={theirs}"
        );
        assert_eq!(budget.available(), 0);
    }));
}

#[test]
fn expiry_racing_a_fresh_deposit_keeps_the_deposit() {
    explored(model(|| {
        let clock = ManualClock::new();
        let budget = Arc::new(one_per_request(&clock));
        budget.deposit();
        clock.advance_to(Instant::ZERO + Duration::from_secs(11));
        // The withdrawal sweeps the expired slot while a fresh deposit lands in the window.
        let other = withdraw_on_thread(&budget);
        budget.deposit();
        let granted = u64::from(other.join().unwrap());
        assert_eq!(
            budget.available(),
            1 - granted,
            "the fresh deposit was lost"
        );
    }));
}

#[test]
fn throttle_counts_every_failure_and_success() {
    explored(model(|| {
        let throttle = Arc::new(RetryThrottle::new(4.0, 1.0).unwrap());
        let failer = thread::spawn({
            let throttle = throttle.clone();
            move || {
                throttle.record(true);
                throttle.record(true);
            }
        });
        throttle.record(false); // capped at the maximum if it lands first
        failer.join().unwrap();
        let tokens = throttle.tokens();
        // Success first: 4 (capped) - 2 = 2. Success between or after the failures: 4 - 1 - 1 + 1 = 3,
        // or 4 - 1 + 1 - 1 = 3.
        assert!(tokens == 2.0 || tokens == 3.0, "tokens {tokens}");
        assert_eq!(throttle.withdraw(), tokens > 2.0);
    }));
}
