//! Checks allocate nothing, admitted or refused (counted by a thread-local counting allocator,
//! which this test binary alone installs).

use std::time::Duration;

use palisade_core::ManualClock;
use palisade_ratelimit::{KeyedRateLimiter, MultiGcra, Quota, RateLimiter, SlidingWindow};

fn allocations(f: impl FnOnce()) -> u64 {
    allocation_counter::measure(f).count_total
}

#[test]
fn the_counter_sees_allocations() {
    assert_eq!(
        allocations(|| drop(std::hint::black_box(Box::new(7u64)))),
        1
    );
}

#[test]
fn check_check_n_peek_and_refund_allocate_nothing() {
    let clock = ManualClock::new();
    let l = RateLimiter::builder(Quota::per_second(100))
        .clock(clock.clone())
        .build()
        .unwrap();
    let n = allocations(|| {
        for i in 0..1_000u32 {
            std::hint::black_box(l.check());
            std::hint::black_box(l.check_n(i % 5).unwrap());
            std::hint::black_box(l.check_n(101).unwrap_err());
            std::hint::black_box(l.peek());
            std::hint::black_box(l.peek_n(3).unwrap());
            if i % 7 == 0 {
                l.refund(2);
            }
            if i % 50 == 0 {
                clock.advance(Duration::from_millis(300));
            }
        }
    });
    assert_eq!(n, 0);
    // Both paths ran: some admitted, some refused.
    assert!(!l.check().is_allowed());
    clock.advance(Duration::from_secs(1));
    assert!(l.check().is_allowed());
}

#[test]
fn the_default_clock_limiter_allocates_nothing_per_check() {
    let l = RateLimiter::new(Quota::per_second(10)).unwrap();
    let n = allocations(|| {
        for _ in 0..100 {
            std::hint::black_box(l.check());
            std::hint::black_box(l.peek());
            l.refund(1);
        }
    });
    assert_eq!(n, 0);
}

#[test]
fn sliding_window_and_multi_quota_checks_allocate_nothing() {
    let clock = ManualClock::new();
    let window = RateLimiter::builder(SlidingWindow::new(10, Duration::from_secs(1)))
        .clock(clock.clone())
        .build()
        .unwrap();
    let multi = RateLimiter::builder(MultiGcra::new([
        Quota::per_second(10),
        Quota::per_minute(100),
    ]))
    .clock(clock.clone())
    .build()
    .unwrap();
    let n = allocations(|| {
        for i in 0..300 {
            std::hint::black_box(window.check());
            std::hint::black_box(window.peek());
            std::hint::black_box(multi.check());
            std::hint::black_box(multi.check_n(2).unwrap());
            std::hint::black_box(multi.peek());
            if i % 10 == 0 {
                window.refund(1);
                multi.refund(1);
                clock.advance(Duration::from_millis(250));
            }
        }
    });
    assert_eq!(n, 0);
}

#[test]
fn keyed_check_on_an_existing_key_allocates_nothing() {
    let clock = ManualClock::new();
    let l = KeyedRateLimiter::<String, _, _>::builder(Quota::per_second(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    let keys: Vec<String> = (0..64).map(|i| format!("client-{i}")).collect();
    for k in &keys {
        assert!(l.check(k.as_str()).is_allowed());
    }
    let n = allocations(|| {
        for round in 0..20 {
            for k in &keys {
                std::hint::black_box(l.check(k.as_str()));
                std::hint::black_box(l.check_n(k.as_str(), 2).unwrap());
                std::hint::black_box(l.peek_n(k.as_str(), 1).unwrap());
                l.refund(k.as_str(), 1);
            }
            if round % 4 == 0 {
                clock.advance(Duration::from_millis(150));
            }
        }
    });
    assert_eq!(n, 0);
    assert_eq!(l.len(), 64);
    // The refused path ran too.
    assert!(!l.check_n(keys[0].as_str(), 10).unwrap().is_allowed());
}
