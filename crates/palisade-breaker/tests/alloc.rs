//! Rejecting and admitting allocate nothing (counted by a thread-local counting allocator,
//! which this test binary alone installs).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use palisade_breaker::{CircuitBreaker, SlidingWindow, State};
use palisade_core::ManualClock;

fn allocations(f: impl FnOnce()) -> u64 {
    // A thread's first parking_lot lock allocates its list of held locks when parking_lot's
    // `deadlock_detection` is on (palisade-lock's `deadlock-detection` feature turns it on in
    // `--all-features` builds): take one before counting, so only `f`'s own allocations count.
    drop(palisade_core::sync::Mutex::new(()).lock());
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
fn the_closed_and_open_paths_allocate_nothing() {
    let clock = ManualClock::new();
    let windowed = CircuitBreaker::builder()
        .minimum_calls(10)
        .window(SlidingWindow::count(10))
        .slow_calls(Duration::from_secs(1), 50.0)
        .open_duration(Duration::from_secs(3600))
        .clock(clock.clone())
        .build()
        .unwrap();
    let timed = CircuitBreaker::builder()
        .window(SlidingWindow::time(Duration::from_secs(10)))
        .clock(clock.clone())
        .build()
        .unwrap();
    let consecutive = CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(3)
        .clock(clock.clone())
        .build()
        .unwrap();

    for b in [&windowed, &timed, &consecutive] {
        // Closed: admission, success, and bucket rolls (30 calls roll a count window 3 times
        // over; the clock moves a time window through its buckets).
        let n = allocations(|| {
            for i in 0..30 {
                b.try_acquire().unwrap().success();
                if i % 3 == 0 {
                    clock.advance(Duration::from_secs(1));
                }
            }
        });
        assert_eq!(n, 0, "closed calls allocated");
    }
    for b in [&windowed, &consecutive] {
        // Tripping: the transition, its event and the tracing call.
        let n = allocations(|| {
            while b.state() == State::Closed {
                b.try_acquire().unwrap().failure();
            }
        });
        assert_eq!(n, 0, "tripping allocated");
        assert_eq!(b.state(), State::Open);
        let n = allocations(|| {
            for _ in 0..100 {
                let r = b.try_acquire().unwrap_err();
                assert!(r.retry_after().is_some());
                std::hint::black_box(r);
            }
        });
        assert_eq!(n, 0, "open rejections allocated");
    }
    windowed.force_open();
    let n = allocations(|| {
        std::hint::black_box(windowed.try_acquire().unwrap_err());
    });
    assert_eq!(n, 0, "a forced-open rejection allocated");
}

#[test]
fn call_allocates_nothing_admitted_or_rejected() {
    let b = CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(1)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    let n = allocations(|| {
        let fut = pin!(b.call(async { Ok::<_, ()>(1) }));
        assert!(matches!(fut.poll(&mut cx), Poll::Ready(Ok(1))));
        let fut = pin!(b.call(async { Err::<(), _>(()) }));
        assert!(matches!(fut.poll(&mut cx), Poll::Ready(Err(_))));
        let fut = pin!(b.call(async { Ok::<_, ()>(1) }));
        assert!(matches!(fut.poll(&mut cx), Poll::Ready(Err(e)) if e.rejected().is_some()));
    });
    assert_eq!(n, 0);
}

#[test]
fn a_time_window_rolling_over_an_idle_gap_allocates_nothing() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .window(SlidingWindow::time(Duration::from_secs(10)))
        .clock(clock.clone())
        .build()
        .unwrap();
    // Fill the ring: one call per bucket for more than the whole span.
    for _ in 0..12 {
        b.try_acquire().unwrap().success();
        clock.advance(Duration::from_secs(1));
    }
    let n = allocations(|| {
        clock.advance(Duration::from_secs(3)); // skip two buckets
        b.try_acquire().unwrap().success();
    });
    assert_eq!(n, 0, "a bucket roll after an idle gap allocated");
}

/// Half-open rejections allocate nothing: a full probe round's, and the one that notices the
/// round timed out (it takes the control lock and reopens the breaker).
#[test]
fn half_open_rejections_allocate_nothing() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(1))
        .half_open_probes(2)
        .half_open_max_wait(Duration::from_secs(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    b.try_acquire().unwrap().failure();
    clock.advance(Duration::from_secs(1));
    let probes: Vec<_> = (0..2).map(|_| b.try_acquire().unwrap()).collect();
    let n = allocations(|| {
        for _ in 0..100 {
            let r = b.try_acquire().unwrap_err();
            assert_eq!(r.state(), State::HalfOpen);
        }
    });
    assert_eq!(n, 0, "half-open rejections allocated");
    clock.advance(Duration::from_secs(10));
    let n = allocations(|| {
        let r = b.try_acquire().unwrap_err();
        assert_eq!(r.state(), State::Open, "the round timed out");
    });
    assert_eq!(n, 0, "the timed-out round's rejection allocated");
    drop(probes);
}
