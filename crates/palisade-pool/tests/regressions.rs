//! Regression tests for the bugs a review of the first version found, each of which failed
//! before its fix: slots lost with a runtime, a pool that never reconnected after an outage,
//! keepalive and `min_idle` opening or churning connections, keepalive holding back idle
//! connections or defeating `idle_timeout`, waiters stranded by a guard dropped off-runtime,
//! validation failures causing a connect storm, and the caller's deadline counted against a
//! healthy connection.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_core::TokioClock;
use palisade_pool::{CheckoutTest, Discard, Error, Manager, Pool, Pooled};
use support::{Backend, builder, settle};

const S: Duration = Duration::from_secs(1);

/// Bug 1 (fixed): A connect task dropped by runtime shutdown never releases its slot (no drop guard in
/// `connect`): the pool is dead in the next runtime.
#[test]
fn a_connect_dropped_with_its_runtime_gives_its_slot_back() {
    let backend = Backend::default();
    backend.connect_delay(Duration::from_millis(100));
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let rt1 = rt();
    let pool = rt1.block_on(async {
        let pool = builder(&backend)
            .max_size(4)
            .max_concurrent_connects(1)
            .acquire_timeout(Duration::from_millis(10))
            .build()
            .unwrap();
        assert!(pool.get().await.is_err());
        pool
    });
    drop(rt1); // the connect task is dropped mid-connect
    let rt2 = rt();
    rt2.block_on(async {
        let before = pool.metrics();
        assert_eq!((before.size, before.connecting), (0, 0), "{before}");
        let mut ok = false;
        for _ in 0..5 {
            if pool.get().await.is_ok() {
                ok = true;
                break;
            }
            // Each connect takes 100 ms, longer than a get's 10 ms deadline.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let m = pool.metrics();
        eprintln!("r1 after 5 gets: {m}, backend live {}", backend.live());
        assert!(ok, "no get ever succeeds: {m}");
    });
}

/// Bug 2 (fixed): After an outage, a low-traffic caller never gets a connection again: each new connect task
/// sleeps the (max) backoff first, finds the caller gone, and gives up without an attempt.
#[tokio::test(start_paused = true)]
async fn sporadic_callers_reconnect_after_an_outage() {
    let backend = Backend::default();
    let pool = builder(&backend).acquire_timeout(2 * S).build().unwrap();
    backend.set(&backend.0.down, true);
    for _ in 0..10 {
        assert!(pool.get().await.is_err());
    }
    backend.set(&backend.0.down, false);
    let attempts = backend.attempts();
    let mut results = Vec::new();
    for _ in 0..10 {
        tokio::time::sleep(60 * S).await;
        results.push(pool.get().await.map(|_| ()).map_err(|e| e.to_string()));
    }
    eprintln!(
        "r2 attempts during outage {attempts}, after recovery {}: {:?}",
        backend.attempts() - attempts,
        results.last()
    );
    assert!(
        results.iter().any(Result::is_ok),
        "backend up for 10 minutes, no get succeeded"
    );
}

/// Bug 3 (fixed): A keepalive pass takes the idle connections out, then `reserve_connects` (same lock)
/// refills `min_idle` as if they were gone.
#[tokio::test(start_paused = true)]
async fn keepalive_with_min_idle_opens_no_extra_connections() {
    let backend = Backend::default();
    let pool = builder(&backend)
        .max_size(10)
        .min_idle(2)
        .keepalive(Some(30 * S))
        .build()
        .unwrap();
    pool.warm_up().await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(31 * S).await;
        pool.maintain().await;
        settle().await;
    }
    let m = pool.metrics();
    eprintln!("r3 {m}, created {}", m.created);
    assert_eq!(m.created, 2, "keepalive opened connections: {m}");
}

/// Bug 4 (fixed): `min_idle` counts idle connections for refills but total size for idle reaping: with
/// connections in use, every idle_timeout closes min_idle connections and reopens them.
#[tokio::test(start_paused = true)]
async fn idle_timeout_and_min_idle_do_not_churn_while_connections_are_in_use() {
    let backend = Backend::default();
    let pool = builder(&backend)
        .max_size(10)
        .min_idle(2)
        .idle_timeout(Some(60 * S))
        .build()
        .unwrap();
    pool.warm_up().await.unwrap();
    let _a = pool.get().await.unwrap();
    let _b = pool.get().await.unwrap();
    pool.maintain().await;
    settle().await;
    let created = pool.metrics().created;
    for _ in 0..5 {
        tokio::time::sleep(61 * S).await;
        pool.maintain().await;
        settle().await;
    }
    let m = pool.metrics();
    eprintln!("r4 {m}, created {} (was {created})", m.created);
    assert_eq!(m.created, created, "{m}");
}

/// Bug 5 (fixed): Keepalive checks run one at a time while every connection taken sits out of the pool:
/// one dead connection (validate hangs until validation_timeout) withholds all the good ones.
#[derive(Debug, Default)]
struct Flaky {
    next: AtomicUsize,
    dead: parking_lot::Mutex<HashSet<usize>>,
}

#[derive(Debug, Clone)]
struct FlakyM(Arc<Flaky>);

impl Manager for FlakyM {
    type Connection = usize;
    type Error = std::io::Error;
    async fn connect(&self) -> std::io::Result<usize> {
        Ok(self.0.next.fetch_add(1, Ordering::SeqCst))
    }
    async fn validate(&self, conn: &mut usize) -> std::io::Result<()> {
        if self.0.dead.lock().contains(conn) {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_keepalive_check_withholds_only_its_own_connection() {
    let m = Arc::new(Flaky::default());
    let pool = Pool::builder(FlakyM(Arc::clone(&m)))
        .clock(TokioClock::new())
        .test_on_checkout(CheckoutTest::Never)
        .max_size(3)
        .keepalive(Some(30 * S))
        .acquire_timeout(S)
        .build()
        .unwrap();
    let conns = vec![
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
    ];
    drop(conns); // idle: 0, 1, 2 (2 most recently used)
    m.dead.lock().insert(2);
    tokio::time::sleep(31 * S).await;
    let maint = tokio::spawn({
        let pool = pool.clone();
        async move { pool.maintain().await }
    });
    settle().await;
    let r = pool.get().await;
    eprintln!(
        "r5 {:?} {}",
        r.as_ref().map(|c| **c).map_err(ToString::to_string),
        pool.metrics()
    );
    assert!(
        r.is_ok(),
        "two good connections were held back by one hanging check"
    );
    drop(r);
    maint.await.unwrap();
}

/// Bug 6 (fixed): A guard dropped on a thread without a runtime: its replacement connect is abandoned and the
/// waiter already in line is never served, although the slot is free.
#[tokio::test(start_paused = true)]
async fn a_tainted_guard_dropped_off_runtime_still_gets_the_waiter_served() {
    let backend = Backend::default();
    let pool = builder(&backend)
        .max_size(1)
        .acquire_timeout(5 * S)
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id).map_err(|e| e.to_string()) }
    });
    settle().await;
    Pooled::taint(&mut conn);
    std::thread::spawn(move || drop(conn)).join().unwrap();
    let r = waiter.await.unwrap();
    eprintln!("r6 {r:?}");
    assert!(r.is_ok());
}

/// Bug 7 (fixed): Connections that connect fine but fail validation: `failures` resets on every connect, so
/// `get()` reconnects with no backoff at all (a storm) and times out as "Exhausted / all in use".
#[tokio::test(start_paused = true)]
async fn failing_validation_is_paced_and_reported_as_unavailable() {
    let backend = Backend::default();
    backend.connect_delay(Duration::from_millis(1));
    backend.set(&backend.0.validate_fails, true);
    let pool = builder(&backend)
        .test_on_checkout(CheckoutTest::Always)
        .acquire_timeout(S)
        .build()
        .unwrap();
    let e = pool.get().await.err().unwrap();
    eprintln!("r7 {} connects in 1 s; error: {e}", backend.connects());
    assert!(matches!(e, Error::Unavailable { .. }), "{e}");
    assert!(
        backend.connects() < 20,
        "{} connects in 1 s",
        backend.connects()
    );
}

/// Bug 8 (fixed): Keepalive refreshes `since`, which is also the idle-timeout clock: with keepalive <
/// idle_timeout, idle connections are never reaped and the pool never shrinks.
#[tokio::test(start_paused = true)]
async fn keepalive_does_not_prevent_idle_timeout() {
    let backend = Backend::default();
    let pool = builder(&backend)
        .max_size(5)
        .keepalive(Some(30 * S))
        .idle_timeout(Some(60 * S))
        .build()
        .unwrap();
    let mut v = Vec::new();
    for _ in 0..5 {
        v.push(pool.get().await.unwrap());
    }
    drop(v);
    for _ in 0..60 {
        tokio::time::sleep(10 * S).await;
        pool.maintain().await;
    }
    let m = pool.metrics();
    eprintln!("r8 after 10 idle minutes: {m}");
    assert_eq!(m.idle, 0, "{m}");
    let _ = Discard::IdleTimeout;
}

/// Bug 9 (fixed): `maintenance(Duration::ZERO)` panics (tokio::time::interval).
#[tokio::test(start_paused = true)]
async fn maintenance_with_a_zero_interval_does_not_panic() {
    let backend = Backend::default();
    let pool = builder(&backend).build().unwrap();
    let t = tokio::spawn(pool.maintenance(Duration::ZERO));
    tokio::time::sleep(S).await;
    pool.close(S).await.unwrap();
    let r = t.await;
    eprintln!("r9 {r:?}");
    assert!(r.is_ok());
}

/// Bug 10 (fixed): A healthy connection handed to a waiter near its deadline is destroyed when the caller's
/// deadline (not validation_timeout) cuts its recycle; last_error says "validation timed out after 5s".
#[derive(Debug, Clone, Default)]
struct SlowRecycle(Arc<AtomicUsize>);

impl Manager for SlowRecycle {
    type Connection = usize;
    type Error = std::io::Error;
    async fn connect(&self) -> std::io::Result<usize> {
        Ok(self.0.fetch_add(1, Ordering::SeqCst))
    }
    async fn recycle(&self, _conn: &mut usize) -> std::io::Result<()> {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_cutting_recycle_is_not_a_backend_failure() {
    let m = SlowRecycle::default();
    let pool = Pool::builder(m.clone())
        .clock(TokioClock::new())
        .test_on_checkout(CheckoutTest::Never)
        .max_size(1)
        .acquire_timeout(S)
        .build()
        .unwrap();
    drop(pool.get().await.unwrap()); // used once: the next checkout recycles
    let held = pool.get().await.unwrap();
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| *c).map_err(|e| e.to_string()) }
    });
    tokio::time::sleep(Duration::from_millis(995)).await;
    drop(held);
    let r = waiter.await.unwrap();
    let metrics = pool.metrics();
    eprintln!("r10 {r:?}; {metrics}");
    assert_eq!(metrics.discarded(Discard::Invalid), 0, "{metrics}");
}
