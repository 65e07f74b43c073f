//! The budgets' arithmetic over time, against a reference model.

use std::time::Duration;

use palisade_core::ManualClock;
use palisade_retry::{RetryBudget, RetryThrottle, TpsBudget};
use proptest::prelude::*;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn the_floor_allows_min_per_sec_times_ttl_with_no_traffic() {
    let budget = TpsBudget::builder()
        .min_per_sec(3)
        .ttl(secs(2))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    assert_eq!(budget.available(), 6);
    for _ in 0..6 {
        assert!(budget.withdraw());
    }
    assert!(!budget.withdraw());
}

#[test]
fn deposits_and_withdrawals_expire_after_the_ttl() {
    let clock = ManualClock::new();
    let budget = TpsBudget::builder()
        .min_per_sec(0)
        .retry_ratio(0.5)
        .ttl(secs(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    for _ in 0..10 {
        budget.deposit();
    }
    assert_eq!(budget.available(), 5);
    assert!(budget.withdraw());
    assert!(budget.withdraw());
    assert_eq!(budget.available(), 3);
    clock.advance(secs(9)); // still inside the window
    assert_eq!(budget.available(), 3);
    clock.advance(secs(1)); // the deposits and the withdrawals expire together
    assert_eq!(budget.available(), 0);
    assert!(!budget.withdraw());
}

#[test]
fn withdrawals_are_given_back_when_they_expire() {
    let clock = ManualClock::new();
    let budget = TpsBudget::builder()
        .min_per_sec(1)
        .ttl(secs(1))
        .clock(clock.clone())
        .build()
        .unwrap();
    assert!(budget.withdraw());
    assert!(
        !budget.withdraw(),
        "the floor of 1 retry per 1 s window is spent"
    );
    clock.advance(secs(1));
    assert!(budget.withdraw(), "the spent retry came back after the ttl");
}

#[test]
fn a_budget_idle_for_ages_forgets_old_traffic() {
    let clock = ManualClock::new();
    let budget = TpsBudget::builder()
        .min_per_sec(0)
        .retry_ratio(1.0)
        .clock(clock.clone())
        .build()
        .unwrap();
    budget.deposit();
    // A year later (2^25 slots of 1 s): the deposit is long gone.
    clock.advance(secs(1 << 25));
    assert_eq!(budget.available(), 0);
    budget.deposit();
    assert_eq!(budget.available(), 1);
}

/// A withdrawal that a saturated slot can't record is refused rather than charged for good:
/// everything comes back after the ttl.
#[test]
fn a_saturated_slot_refuses_rather_than_leaks() {
    let clock = ManualClock::new();
    let budget = TpsBudget::builder()
        .min_per_sec(1_000_000)
        .ttl(secs(3))
        .retry_ratio(0.0)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut granted = 0_u64;
    while budget.withdraw() {
        granted += 1;
    }
    // One slot holds 2^31 - 1 thousandths of a retry: the rest of the reserve is refused.
    assert_eq!(granted, 2_147_483);
    assert_eq!(budget.available(), 3_000_000 - granted);
    clock.advance(secs(3));
    assert_eq!(
        budget.available(),
        3_000_000,
        "withdrawals were lost instead of expiring"
    );
}

#[test]
fn builders_name_the_bad_knob() {
    let err = |b: palisade_retry::TpsBudgetBuilder| b.build().unwrap_err().to_string();
    assert_eq!(
        err(TpsBudget::builder().ttl(Duration::from_millis(500))),
        "ttl must be between 1s and 60s, got 500ms"
    );
    assert_eq!(
        err(TpsBudget::builder().retry_ratio(-0.1)),
        "retry_ratio must be 0 or a finite number in [0.001, 10.0], got -0.1"
    );
    assert_eq!(
        err(TpsBudget::builder().min_per_sec(2_000_000)),
        "min_per_sec must be at most 1000000, got 2000000"
    );
    assert_eq!(
        RetryThrottle::new(0.0, 0.1).unwrap_err().to_string(),
        "max_tokens must be a number in [0.001, 1000], got 0.0"
    );
    assert_eq!(
        RetryThrottle::new(10.0, f64::INFINITY)
            .unwrap_err()
            .to_string(),
        "token_ratio must be a number in [0.001, 1000], got inf"
    );
    // Under a thousandth rounds to no tokens at all: a throttle that never allows a retry.
    assert_eq!(
        RetryThrottle::new(0.0004, 1.0).unwrap_err().to_string(),
        "max_tokens must be a number in [0.001, 1000], got 0.0004"
    );
    assert_eq!(
        RetryThrottle::new(1.0, 0.0004).unwrap_err().to_string(),
        "token_ratio must be a number in [0.001, 1000], got 0.0004"
    );
    // The smallest throttle works: full, it allows retries; a failure empties it, a success
    // refills it.
    let smallest = RetryThrottle::new(0.001, 0.001).unwrap();
    assert!(smallest.withdraw());
    smallest.record(true);
    assert!(!smallest.withdraw());
    smallest.record(false);
    assert!(smallest.withdraw());
}

#[test]
fn throttle_follows_the_grpc_rules() {
    let t = RetryThrottle::new(10.0, 0.1).unwrap();
    assert_eq!(t.tokens(), 10.0);
    for _ in 0..4 {
        t.record(true);
    }
    assert!(t.withdraw(), "6 tokens > 5");
    t.record(true);
    assert!(!t.withdraw(), "5 tokens is not more than half");
    t.record(false);
    assert_eq!(t.tokens(), 5.1);
    assert!(t.withdraw());
    for _ in 0..100 {
        t.record(true);
    }
    assert_eq!(t.tokens(), 0.0, "never below zero");
    for _ in 0..1000 {
        t.record(false);
    }
    assert_eq!(t.tokens(), 10.0, "never above the maximum");
}

#[derive(Debug, Clone)]
enum Op {
    Deposit,
    Withdraw,
    Advance(u64), // milliseconds
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            4 => Just(Op::Deposit),
            3 => Just(Op::Withdraw),
            1 => (0_u64..4_000).prop_map(Op::Advance),
        ],
        0..200,
    )
}

proptest! {
    /// Single-threaded, the budget is exactly the model: a reserve plus every amount recorded
    /// in the last ten slots of ttl/10.
    #[test]
    fn tps_budget_matches_a_sliding_window_model(
        ops in ops(),
        min_per_sec in 0_u32..5,
        ratio_thousandths in 0_i64..1500,
        ttl_secs in 1_u64..20,
        // Start anywhere, including just before the 32-bit slot stamps wrap.
        start_slots in prop_oneof![Just(0_u64), 0_u64..1_000_000, ((1_u64 << 32) - 400)..((1 << 32) + 10)],
    ) {
        let ttl = secs(ttl_secs.min(60));
        let slot_ms = ttl.as_millis() as u64 / 10;
        let clock = ManualClock::starting_at(
            palisade_core::Instant::ZERO + Duration::from_millis(start_slots * slot_ms),
        );
        let ratio = ratio_thousandths as f64 / 1000.0;
        let budget = TpsBudget::builder()
            .min_per_sec(min_per_sec)
            .retry_ratio(ratio)
            .ttl(ttl)
            .clock(clock.clone())
            .build()
            .unwrap();
        let reserve = i64::from(min_per_sec) * ttl_secs as i64 * 1000;
        let mut now_ms = start_slots * slot_ms;
        let mut events: Vec<(u64, i64)> = Vec::new(); // (slot, units)
        let live = |events: &Vec<(u64, i64)>, now_ms: u64| -> i64 {
            let tick = now_ms / slot_ms;
            reserve + events.iter().filter(|(t, _)| t + 10 > tick).map(|(_, a)| a).sum::<i64>()
        };
        for op in ops {
            match op {
                Op::Deposit => {
                    budget.deposit();
                    events.push((now_ms / slot_ms, ratio_thousandths));
                }
                Op::Withdraw => {
                    let expected = live(&events, now_ms) >= 1000;
                    prop_assert_eq!(budget.withdraw(), expected);
                    if expected {
                        events.push((now_ms / slot_ms, -1000));
                    }
                }
                Op::Advance(ms) => {
                    now_ms += ms;
                    clock.advance(Duration::from_millis(ms));
                }
            }
            prop_assert_eq!(budget.available() as i64, live(&events, now_ms).max(0) / 1000);
        }
    }
}

/// A positive `retry_ratio` under the budget's precision (a thousandth of a retry) used to be
/// accepted and rounded to zero: a budget that never earned a retry however many requests it
/// saw. It is refused instead, naming the field and the range, as `RetryThrottle::new` does.
#[test]
fn a_positive_ratio_below_the_precision_is_refused_not_rounded_to_nothing() {
    let built = TpsBudget::builder()
        .min_per_sec(0)
        .retry_ratio(0.0004) // one retry per 2,500 requests, asked for
        .clock(ManualClock::new())
        .build();
    match built {
        Err(e) => assert_eq!(
            e.to_string(),
            "retry_ratio must be 0 or a finite number in [0.001, 10.0], got 0.0004"
        ),
        Ok(budget) => {
            for _ in 0..25_000 {
                budget.deposit();
            }
            panic!(
                "accepted, and 25,000 requests earned {} retries (asked for 10)",
                budget.available()
            );
        }
    }
    // The bounds themselves, and zero (no retries earned, only the floor), are still accepted.
    for ratio in [0.0, 0.001, 10.0] {
        assert!(TpsBudget::builder().retry_ratio(ratio).build().is_ok());
    }
}
