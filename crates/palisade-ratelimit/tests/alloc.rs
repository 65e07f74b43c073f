//! Checks allocate nothing, admitted or refused (counted by a thread-local counting allocator,
//! which this test binary alone installs).

use std::time::Duration;

use palisade_core::ManualClock;
use palisade_ratelimit::{KeyedRateLimiter, MultiGcra, Quota, RateLimiter, SlidingWindow};

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

/// The unkeyed tower service in backpressure mode spends nothing on the heap per request (the
/// reserved cell is a number, the limiter handle is taken once per service).
#[cfg(feature = "tower")]
#[test]
fn backpressure_service_allocates_nothing_per_request() {
    use std::future::{Future, Ready, ready};
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use palisade_ratelimit::RateLimitLayer;
    use tower_layer::Layer;
    use tower_service::Service;

    struct Echo;
    impl Service<u32> for Echo {
        type Response = u32;
        type Error = std::convert::Infallible;
        type Future = Ready<Result<u32, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: u32) -> Self::Future {
            ready(Ok(req))
        }
    }

    let clock = ManualClock::new();
    let limiter = Arc::new(
        RateLimiter::builder(Quota::per_second(1_000).burst(1_000))
            .clock(clock.clone())
            .build()
            .unwrap(),
    );
    let mut svc = RateLimitLayer::new(Arc::clone(&limiter))
        .backpressure()
        .layer(Echo);
    let mut cx = Context::from_waker(Waker::noop());
    let mut one = |i: u32| {
        assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        let response = pin!(svc.call(i));
        match response.poll(&mut cx) {
            Poll::Ready(Ok(echoed)) => assert_eq!(echoed, i),
            other => panic!("expected the echo, got {:?}", other.map(|r| r.is_ok())),
        }
    };
    one(0); // the first reservation takes the service's limiter handle
    let n = allocations(|| {
        for i in 1..500 {
            one(i);
        }
    });
    assert_eq!(n, 0);
    // Every request took a cell: a check now would leave 1000 - 500 - 1.
    assert_eq!(limiter.peek().remaining(), 499);
}
