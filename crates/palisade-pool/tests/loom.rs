//! Concurrency models of the pool's protocol (see docs/testing.md for how they run): live
//! connections never exceed `max_size` while connections are checked out, returned, tainted
//! and replaced from several threads; a `get()` dropped at any point leaks neither a slot nor a
//! place in line; a return racing a newcomer and a waiter hands the connection to exactly one
//! of them at a time.
//!
//! Connect tasks run inline through `spawn_with` (the real connect path, on the spawning
//! thread), and each thread enters a tokio runtime only so that a waiter can create its
//! deadline timer; the timer never fires (loom has no time).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::Duration;

use palisade_core::ManualClock;
use palisade_core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use palisade_core::sync::{Arc, assert_explored, block_on, model, thread};
use palisade_pool::{CheckoutTest, Manager, Pool, Pooled};

/// A backend that counts live connections and fails the model if they ever exceed `max`.
#[derive(Debug, Clone)]
struct Counted {
    live: Arc<AtomicUsize>,
    made: Arc<AtomicUsize>,
    max: usize,
}

#[derive(Debug)]
struct Conn {
    id: usize,
    in_use: AtomicBool,
    live: Arc<AtomicUsize>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Manager for Counted {
    type Connection = Conn;
    type Error = std::io::Error;

    async fn connect(&self) -> std::io::Result<Conn> {
        let live = self.live.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(
            live <= self.max,
            "{live} live connections, max_size {}",
            self.max
        );
        Ok(Conn {
            id: self.made.fetch_add(1, Ordering::SeqCst),
            in_use: AtomicBool::new(false),
            live: Arc::clone(&self.live),
        })
    }
}

fn pool(max: usize) -> (Pool<Counted, ManualClock>, Counted) {
    let backend = Counted {
        live: Arc::new(AtomicUsize::new(0)),
        made: Arc::new(AtomicUsize::new(0)),
        max,
    };
    let pool = Pool::builder(backend.clone())
        .max_size(max)
        .max_concurrent_connects(max)
        .test_on_checkout(CheckoutTest::Never)
        .acquire_timeout(Duration::from_secs(3600))
        .clock(ManualClock::new())
        .spawn_with(block_on)
        .build()
        .unwrap();
    (pool, backend)
}

fn runtime() -> Arc<tokio::runtime::Runtime> {
    Arc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap(),
    )
}

/// Checks a connection out, proves no one else holds it, and returns (or taints) it.
fn use_once(pool: &Pool<Counted, ManualClock>, taint: bool) {
    let mut conn = block_on(pool.get()).expect("served within the deadline");
    assert!(
        !conn.in_use.swap(true, Ordering::SeqCst),
        "connection {} handed to two callers",
        conn.id
    );
    conn.in_use.store(false, Ordering::SeqCst);
    if taint {
        Pooled::taint(&mut conn);
    }
}

fn settled(pool: &Pool<Counted, ManualClock>, backend: &Counted) {
    let m = pool.metrics();
    assert_eq!((m.in_use, m.waiters, m.connecting), (0, 0, 0), "{m}");
    assert_eq!(m.size, m.idle, "{m}");
    assert_eq!(backend.live.load(Ordering::SeqCst), m.size, "{m}");
}

#[test]
fn live_connections_never_exceed_max_size() {
    assert_explored(model(|| {
        let rt = runtime();
        let _enter = rt.enter();
        let (pool, backend) = pool(1);
        let other = thread::spawn({
            let (pool, rt) = (pool.clone(), Arc::clone(&rt));
            move || {
                let _enter = rt.enter();
                use_once(&pool, true);
            }
        });
        use_once(&pool, false);
        other.join().unwrap();
        settled(&pool, &backend);
    }));
}

#[test]
fn a_get_dropped_at_any_point_leaks_nothing() {
    assert_explored(model(|| {
        let rt = runtime();
        let _enter = rt.enter();
        let (pool, backend) = pool(1);
        let held = block_on(pool.get()).unwrap();
        let other = thread::spawn({
            let (pool, rt) = (pool.clone(), Arc::clone(&rt));
            move || {
                let _enter = rt.enter();
                // Polled once (in line, or served if the return came first), then dropped.
                let mut get = pin!(pool.get());
                let _ = get.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            }
        });
        drop(held);
        other.join().unwrap();
        settled(&pool, &backend);
        assert_eq!(pool.metrics().size, 1);
        // The connection is idle, not stranded with the dropped waiter.
        use_once(&pool, false);
        assert_eq!(backend.made.load(Ordering::SeqCst), 1);
    }));
}

#[test]
fn a_return_racing_a_waiter_and_a_newcomer_serves_each_once() {
    assert_explored(model(|| {
        let rt = runtime();
        let _enter = rt.enter();
        let (pool, backend) = pool(1);
        let held = block_on(pool.get()).unwrap();
        let waiter = thread::spawn({
            let (pool, rt) = (pool.clone(), Arc::clone(&rt));
            move || {
                let _enter = rt.enter();
                use_once(&pool, false);
            }
        });
        let returner = thread::spawn(move || drop(held));
        use_once(&pool, false);
        waiter.join().unwrap();
        returner.join().unwrap();
        settled(&pool, &backend);
        assert_eq!(
            backend.made.load(Ordering::SeqCst),
            1,
            "one connection served all"
        );
    }));
}

#[test]
fn a_taint_racing_a_waiter_replaces_the_connection_once() {
    assert_explored(model(|| {
        let rt = runtime();
        let _enter = rt.enter();
        let (pool, backend) = pool(1);
        let mut held = block_on(pool.get()).unwrap();
        Pooled::taint(&mut held);
        let waiter = thread::spawn({
            let (pool, rt) = (pool.clone(), Arc::clone(&rt));
            move || {
                let _enter = rt.enter();
                use_once(&pool, false);
            }
        });
        drop(held);
        waiter.join().unwrap();
        settled(&pool, &backend);
        assert_eq!(backend.made.load(Ordering::SeqCst), 2);
    }));
}
