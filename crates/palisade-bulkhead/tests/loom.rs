//! Concurrency models of the bulkhead's protocol (see docs/testing.md for how they run): never
//! more than the limit in flight, a waiter cancelled while queued neither leaks nor steals a
//! permit (FIFO, LIFO and CoDel), and a limit change racing acquires and releases keeps the
//! count exact, also when an adaptive bulkhead's own releases change it; raising the limit while
//! a waiter is queued gives the new permit to the waiter, never to a racing `try_acquire` or a
//! newcomer's `acquire`; for a partitioned bulkhead, a release racing queued and cancelled
//! waiters of two partitions never exceeds the total and leaks nothing, and neither does a total
//! change racing a release.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use palisade_bulkhead::{Aimd, Bulkhead, Discipline, Outcome, Partition, PartitionedBulkhead};
use palisade_core::ManualClock;
use palisade_core::sync::atomic::{AtomicUsize, Ordering};
use palisade_core::sync::{Arc, assert_explored, block_on, model, thread};

fn bulkhead(limit: u32) -> Bulkhead<ManualClock> {
    Bulkhead::builder(limit)
        .max_queued(4)
        .clock(ManualClock::new())
        .build()
        .unwrap()
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
    assert_explored(model(|| {
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
    assert_explored(model(|| {
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
    assert_explored(model(|| {
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

/// Raising the limit while a waiter is queued races passers-by: the new permit is the waiter's.
/// One permit held, one waiter queued, the limit raised from 1 to 2 on one thread while the main
/// thread calls `try_acquire` and then polls a newcomer's `acquire` once (its fast path is the
/// same lock-free take). In every order the passer-by is refused, the newcomer queues behind the
/// waiter, the waiter is granted, and so never more than 2 are out. (Publishing the new permit
/// before handing it to the waiter let a passer-by take it: either 3 out, or the waiter left
/// queued behind it.)
#[test]
fn raising_the_limit_serves_the_queued_waiter_before_a_racing_try_acquire() {
    assert_explored(model(|| {
        let b = bulkhead(1);
        let held = b.try_acquire_owned().unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        let mut waiter = pin!(b.acquire());
        assert!(waiter.as_mut().poll(&mut cx).is_pending(), "queued");
        let changer = {
            let b = b.clone();
            thread::spawn(move || b.set_max_concurrent(2).unwrap())
        };
        let passer_by = b.try_acquire();
        let mut newcomer = Box::pin(b.acquire());
        let newcomer_got = match newcomer.as_mut().poll(&mut cx) {
            Poll::Ready(result) => Some(result.expect("the queue has room")),
            Poll::Pending => None,
        };
        changer.join().unwrap();
        let granted = match waiter.as_mut().poll(&mut cx) {
            Poll::Ready(result) => Some(result.expect("no deadline")),
            Poll::Pending => None,
        };
        let out = 1
            + usize::from(passer_by.is_ok())
            + usize::from(newcomer_got.is_some())
            + usize::from(granted.is_some());
        assert!(out <= 2, "{out} permits out with a limit of 2");
        assert!(
            passer_by.is_err(),
            "a passer-by took the queued waiter's permit"
        );
        assert!(
            newcomer_got.is_none(),
            "a newcomer took the queued waiter's permit"
        );
        assert!(granted.is_some(), "the queued waiter was skipped");
        assert_eq!(b.metrics().in_flight, 2);
        // The newcomer queued behind the waiter; it gives up, and everything goes back.
        drop(newcomer);
        drop((held, granted, passer_by));
        let m = b.metrics();
        assert_eq!((m.in_flight, m.queued, m.limit), (0, 0, 2));
        let free: Vec<_> = std::iter::from_fn(|| b.try_acquire().ok())
            .take(3)
            .collect();
        assert_eq!(free.len(), 2);
    }));
}

/// An adaptive bulkhead changes its limit from inside `release`: a drop cuts it from 2 to 1
/// while another thread acquires (waiting if need be) and releases, and the main thread takes
/// and releases one if it can. Whatever the order, nothing is left out and exactly the limit the
/// algorithm ends on is free.
#[test]
fn an_adaptive_limit_change_inside_release_keeps_the_count_exact() {
    assert_explored(model(|| {
        let aimd = Aimd::builder()
            .min_limit(1)
            .max_limit(4)
            .initial_limit(2)
            .backoff_ratio(0.5)
            .build()
            .unwrap();
        let b = Bulkhead::adaptive(aimd)
            .max_queued(4)
            .clock(ManualClock::new())
            .build()
            .unwrap();
        let dropper = {
            let b = b.clone();
            thread::spawn(move || {
                let permit = block_on(b.acquire()).expect("the queue has room");
                permit.release_as(Outcome::Dropped);
            })
        };
        let worker = {
            let b = b.clone();
            thread::spawn(move || {
                let running = AtomicUsize::new(0);
                guarded(&b, &running, 4);
            })
        };
        // Released before joining: with the limit cut to 1, a permit kept here would make the
        // worker wait for it forever.
        drop(b.try_acquire());
        dropper.join().unwrap();
        worker.join().unwrap();
        let limit = b.max_concurrent();
        assert!((1..=4).contains(&limit), "limit {limit}");
        assert_eq!(b.metrics().in_flight, 0);
        let free: Vec<_> = std::iter::from_fn(|| b.try_acquire().ok())
            .take(5)
            .collect();
        assert_eq!(free.len(), limit as usize);
    }));
}

/// The race of [`a_waiter_cancelled_while_queued_neither_leaks_nor_steals_a_permit`] under
/// another discipline: one permit held, a waiter that queues and gives up, a real waiter, and
/// the release, in every order. With `runtime`, each thread runs in its context (needed for
/// wait deadlines).
fn cancelled_waiter_model(b: Bulkhead<ManualClock>, runtime: Option<tokio::runtime::Handle>) {
    let held = b.try_acquire_owned().unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let canceller = {
        let (b, runtime) = (b.clone(), runtime.clone());
        thread::spawn(move || {
            let _context = enter(runtime.as_ref());
            let mut acquire = pin!(b.acquire());
            let polled = acquire
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()));
            matches!(polled, Poll::Ready(Ok(_)))
        })
    };
    let waiter = {
        let (b, running) = (b.clone(), Arc::clone(&running));
        thread::spawn(move || {
            let _context = enter(runtime.as_ref());
            guarded(&b, &running, 1);
        })
    };
    drop(held);
    canceller.join().unwrap();
    waiter.join().unwrap();
    let m = b.metrics();
    assert_eq!((m.in_flight, m.queued), (0, 0));
    assert!(b.try_acquire().is_ok());
}

#[test]
fn lifo_never_exceeds_the_limit_and_a_cancelled_waiter_leaks_nothing() {
    assert_explored(model(|| {
        let b = Bulkhead::builder(1)
            .max_queued(4)
            .discipline(Discipline::Lifo)
            .clock(ManualClock::new())
            .build()
            .unwrap();
        cancelled_waiter_model(b, None);
    }));
}

/// Enters `runtime`'s context on a spawned thread. Under loom there is nothing to do: loom's
/// threads are coroutines on the model's OS thread, which entered it already (and entering per
/// loom thread would drop tokio's context guards out of order).
fn enter(runtime: Option<&tokio::runtime::Handle>) -> Option<tokio::runtime::EnterGuard<'_>> {
    if cfg!(palisade_loom) {
        None
    } else {
        runtime.map(tokio::runtime::Handle::enter)
    }
}

#[test]
fn codel_never_exceeds_the_limit_and_a_cancelled_waiter_leaks_nothing() {
    assert_explored(model(|| {
        // CoDel gives every waiter a deadline, whose timer needs a tokio runtime to exist;
        // nothing drives it, so no deadline passes and the model stays deterministic.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _context = runtime.enter();
        let b = Bulkhead::builder(1)
            .max_queued(4)
            .discipline(Discipline::codel())
            .clock(ManualClock::new())
            .build()
            .unwrap();
        cancelled_waiter_model(b, Some(runtime.handle().clone()));
    }));
}

/// Two partitions of one total permit: `a` guaranteed it, `b` borrowing.
fn partitioned() -> (
    PartitionedBulkhead<ManualClock>,
    Partition<ManualClock>,
    Partition<ManualClock>,
) {
    let b = PartitionedBulkhead::builder(1)
        .partition("a", 1)
        .partition("b", 0)
        .max_queued(2)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let (pa, pb) = (b.partition("a").unwrap(), b.partition("b").unwrap());
    (b, pa, pb)
}

/// Acquires from `p` (waiting if need be), checks the permits out over all partitions against
/// `total` while holding the permit, and releases.
fn guarded_partition(p: &Partition<ManualClock>, running: &AtomicUsize, total: usize) {
    let permit = block_on(p.acquire()).expect("the queue has room");
    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
    assert!(now <= total, "{now} in flight with a total of {total}");
    running.fetch_sub(1, Ordering::SeqCst);
    drop(permit);
}

#[test]
fn partitions_a_release_racing_queued_and_cancelled_waiters_never_exceeds_the_total() {
    assert_explored(model(|| {
        let (bulkhead, a, b) = partitioned();
        let running = Arc::new(AtomicUsize::new(0));
        // b borrows the one permit; it goes back while a waits and another b gives up.
        let held = b.try_acquire_owned().unwrap();
        running.fetch_add(1, Ordering::SeqCst);
        let canceller = {
            let b = b.clone();
            thread::spawn(move || {
                let mut acquire = pin!(b.acquire());
                let _ = acquire
                    .as_mut()
                    .poll(&mut Context::from_waker(Waker::noop()));
            })
        };
        let waiter = {
            let (a, running) = (a.clone(), Arc::clone(&running));
            thread::spawn(move || guarded_partition(&a, &running, 1))
        };
        running.fetch_sub(1, Ordering::SeqCst);
        drop(held);
        canceller.join().unwrap();
        waiter.join().unwrap();
        let m = bulkhead.metrics();
        assert_eq!((m.in_flight, m.queued), (0, 0));
        assert_eq!((a.metrics().in_flight, b.metrics().in_flight), (0, 0));
        assert!(b.try_acquire().is_ok(), "the permit came back");
    }));
}

#[test]
fn partitions_a_total_change_racing_a_release_keeps_the_count_exact() {
    assert_explored(model(|| {
        let (bulkhead, a, b) = partitioned();
        let held = b.try_acquire_owned().unwrap();
        let changer = {
            let bulkhead = bulkhead.clone();
            thread::spawn(move || bulkhead.set_total(2).unwrap())
        };
        let worker = {
            let a = a.clone();
            thread::spawn(move || {
                let running = AtomicUsize::new(0);
                guarded_partition(&a, &running, 2);
            })
        };
        drop(held);
        changer.join().unwrap();
        worker.join().unwrap();
        let m = bulkhead.metrics();
        assert_eq!((m.in_flight, m.queued, m.limit), (0, 0, 2));
        // Both permits are free again.
        let both = (a.try_acquire(), b.try_acquire());
        assert!(both.0.is_ok() && both.1.is_ok());
    }));
}
