//! Concurrency models of the bulkhead's protocol (see docs/testing.md for how they run): never
//! more than the limit in flight, a waiter cancelled while queued neither leaks nor steals a
//! permit, and a limit change racing acquires and releases keeps the count exact.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use palisade_bulkhead::Bulkhead;
use palisade_core::ManualClock;
use palisade_core::sync::atomic::{AtomicUsize, Ordering};
use palisade_core::sync::{Arc, model, thread};

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

fn bulkhead(limit: u32) -> Bulkhead<ManualClock> {
    Bulkhead::builder(limit)
        .max_queued(4)
        .clock(ManualClock::new())
        .build()
        .unwrap()
}

#[cfg(palisade_loom)]
fn block_on<F: Future>(f: F) -> F::Output {
    loom::future::block_on(f)
}

#[cfg(not(palisade_loom))]
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut Context::from_waker(&waker)) {
            return out;
        }
        std::thread::park();
    }
}

/// Acquires (waiting if need be), checks the in-flight count against `limit` while holding the
/// permit, and releases.
fn guarded(b: &Bulkhead<ManualClock>, running: &AtomicUsize, limit: usize) {
    let permit = block_on(b.acquire()).expect("the queue has room");
    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
    assert!(now <= limit, "{now} in flight with a limit of {limit}");
    running.fetch_sub(1, Ordering::SeqCst);
    drop(permit);
}

#[test]
fn never_more_than_the_limit_in_flight() {
    explored(model(|| {
        let b = bulkhead(1);
        let running = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (b, running) = (b.clone(), Arc::clone(&running));
                thread::spawn(move || guarded(&b, &running, 1))
            })
            .collect();
        guarded(&b, &running, 1);
        for t in threads {
            t.join().unwrap();
        }
        let m = b.metrics();
        assert_eq!((m.in_flight, m.queued), (0, 0));
    }));
}

#[test]
fn a_waiter_cancelled_while_queued_neither_leaks_nor_steals_a_permit() {
    explored(model(|| {
        let b = bulkhead(1);
        let held = b.try_acquire_owned().unwrap();
        let other = b.clone();
        // Queues (or, if the release came first, takes the permit), then gives up.
        let canceller = thread::spawn(move || {
            let mut acquire = pin!(other.acquire());
            let polled = acquire
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()));
            matches!(polled, Poll::Ready(Ok(_)))
        });
        let b2 = b.clone();
        let waiter = thread::spawn(move || block_on(b2.acquire()).map(drop).is_ok());
        drop(held);
        canceller.join().unwrap();
        assert!(waiter.join().unwrap(), "the real waiter gets a permit");
        let m = b.metrics();
        assert_eq!((m.in_flight, m.queued), (0, 0));
        assert!(b.try_acquire().is_ok());
    }));
}

#[test]
fn a_limit_change_racing_acquires_and_releases_keeps_the_count_exact() {
    explored(model(|| {
        let b = bulkhead(1);
        let changer = {
            let b = b.clone();
            thread::spawn(move || b.set_max_concurrent(2).unwrap())
        };
        let worker = {
            let b = b.clone();
            thread::spawn(move || {
                let running = AtomicUsize::new(0);
                guarded(&b, &running, 2);
            })
        };
        let mine = b.try_acquire_owned();
        changer.join().unwrap();
        worker.join().unwrap();
        // Whatever the order, the permits out and the permits free add up to the new limit.
        let held = usize::from(mine.is_ok());
        assert_eq!(b.metrics().in_flight as usize, held);
        let extra: Vec<_> = std::iter::from_fn(|| b.try_acquire().ok())
            .take(3)
            .collect();
        assert_eq!(extra.len() + held, 2);
    }));
}
