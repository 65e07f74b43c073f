//! Concurrency models of the retry budgets (see docs/testing.md for how they run).

use std::time::Duration;

use palisade_core::sync::{Arc, assert_explored, model, thread};
use palisade_core::{Instant, ManualClock};
use palisade_retry::{RetryBudget, RetryThrottle, TpsBudget};

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
    assert_explored(model(|| {
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
    assert_explored(model(|| {
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
    assert_explored(model(|| {
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

/// The expired deposit and the fresh one share a slot (ticks 0 and 10 of 1 s slots both map to
/// slot 0), so the withdrawal's sweep and the deposit's own retiring race on one word.
#[test]
fn expiry_racing_a_fresh_deposit_in_the_same_slot_keeps_the_deposit() {
    assert_explored(model(|| {
        let clock = ManualClock::new();
        let budget = Arc::new(one_per_request(&clock));
        budget.deposit(); // tick 0, slot 0
        clock.advance_to(Instant::ZERO + Duration::from_secs(10)); // tick 10, slot 0 again
        let other = withdraw_on_thread(&budget);
        budget.deposit();
        let granted = u64::from(other.join().unwrap());
        assert_eq!(
            budget.available(),
            1 - granted,
            "the fresh deposit was lost"
        );
        clock.advance(Duration::from_secs(20));
        assert_eq!(budget.available(), 0, "an amount leaked or expired twice");
    }));
}

/// A budget with 100 ms slots, one retry per deposit and `min_per_sec` retries of reserve.
fn small(clock: &ManualClock, min_per_sec: u32) -> TpsBudget<ManualClock> {
    TpsBudget::builder()
        .min_per_sec(min_per_sec)
        .retry_ratio(1.0)
        .ttl(Duration::from_secs(1))
        .clock(clock.clone())
        .build()
        .unwrap()
}

/// Time moves while deposits and withdrawals are in flight; once everything has expired,
/// exactly the reserve is left, and no more was granted than reserve + deposits.
#[test]
fn the_clock_moving_under_racing_operations_neither_leaks_nor_double_expires() {
    assert_explored(model(|| {
        let clock = ManualClock::starting_at(Instant::ZERO + Duration::from_millis(950));
        let budget = Arc::new(small(&clock, 1)); // reserve: 1 retry
        budget.deposit(); // tick 9
        let depositor = thread::spawn({
            let budget = budget.clone();
            move || {
                budget.deposit();
                u32::from(budget.withdraw())
            }
        });
        let mover = thread::spawn({
            let (budget, clock) = (budget.clone(), clock.clone());
            move || {
                clock.advance(Duration::from_secs(1)); // tick 19: slot 9 again, tick 9 expired
                u32::from(budget.withdraw())
            }
        });
        let mine = u32::from(budget.withdraw());
        let granted = mine + depositor.join().unwrap() + mover.join().unwrap();
        assert!(granted <= 3, "granted {granted} > reserve 1 + 2 deposits");
        clock.advance(Duration::from_secs(3));
        assert_eq!(
            budget.available(),
            1,
            "after every expiry only the reserve is left"
        );
    }));
}

/// A depositor whose clock read is a whole window stale must not retire the live slot a newer
/// caller wrote, which would give a live withdrawal back early.
#[test]
fn a_stale_deposit_never_gives_back_a_live_withdrawal() {
    assert_explored(model(|| {
        let clock = ManualClock::starting_at(Instant::ZERO + Duration::from_millis(950)); // tick 9
        let budget = Arc::new(small(&clock, 1)); // reserve: 1 retry
        let stale = thread::spawn({
            let budget = budget.clone();
            move || budget.deposit()
        });
        clock.advance(Duration::from_secs(1)); // tick 19: same slot as tick 9
        let granted = u64::from(budget.withdraw());
        stale.join().unwrap();
        // Live: reserve 1, minus the withdrawal at tick 19, plus at most the one deposit.
        let available = budget.available();
        assert!(
            available <= 2 - granted,
            "available {available}: a withdrawal came back early"
        );
        clock.advance(Duration::from_secs(3));
        assert_eq!(budget.available(), 1);
    }));
}

/// Two callers retire the same expired slot while a third withdraws from the reserve. The
/// withdrawal may be refused while the retiring is in flight (the balance drops first, so
/// expired credit can't be spent: see `TpsBudget`), but once the race is over the reserve is
/// whole and grants it.
#[test]
fn racing_sweepers_never_lose_the_reserve() {
    assert_explored(model(|| {
        let clock = ManualClock::new();
        let budget = Arc::new(small(&clock, 1)); // reserve: 1 retry
        budget.deposit(); // tick 0, slot 0
        clock.advance(Duration::from_secs(1)); // tick 10: the deposit expired
        let sweepers: Vec<_> = (0..2)
            .map(|_| {
                let budget = budget.clone();
                thread::spawn(move || budget.available())
            })
            .collect();
        let granted = budget.withdraw();
        for sweeper in sweepers {
            assert!(sweeper.join().unwrap() <= 1, "expired credit counted");
        }
        if !granted {
            assert!(
                budget.withdraw(),
                "the reserve was lost, not just hidden for a moment"
            );
        }
        assert!(!budget.withdraw(), "more than the reserve was granted");
    }));
}

#[test]
fn throttle_counts_every_failure_and_success() {
    assert_explored(model(|| {
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
