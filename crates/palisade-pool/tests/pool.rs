//! The pool's behaviour under paused tokio time: fair hand-off, MRU reuse, deadlines and their
//! classified errors, cancel safety, discards, lifetimes, checks, maintenance and close.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use palisade_pool::{CheckoutTest, Discard, Error, Failure, Pool, Pooled};
use support::{Backend, BackendError, builder, settle};

const MS: Duration = Duration::from_millis(1);

fn ids<M: palisade_pool::Manager<Connection = support::Conn>, C: palisade_core::Clock>(
    conns: &[Pooled<M, C>],
) -> Vec<usize> {
    conns.iter().map(|c| c.id).collect()
}

#[tokio::test(start_paused = true)]
async fn a_returned_connection_goes_to_the_longest_waiter_not_a_newcomer() {
    let backend = Backend::default();
    let pool = builder(&backend).max_size(1).build().unwrap();
    let held = pool.get().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for n in 0..3 {
        let (pool, tx) = (pool.clone(), tx.clone());
        tokio::spawn(async move {
            let conn = pool.get().await.unwrap();
            tx.send(n).unwrap();
            tokio::time::sleep(10 * MS).await;
            drop(conn);
        });
        settle().await;
    }
    assert_eq!(pool.metrics().waiters, 3);
    drop(held);
    // A newcomer arriving right after the return waits behind the three.
    let newcomer = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|_| ()) }
    });
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(rx.recv().await.unwrap());
    }
    assert_eq!(order, [0, 1, 2]);
    newcomer.await.unwrap().unwrap();
    assert_eq!(backend.connects(), 1, "one connection served everyone");
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_reused_most_recently_used_first() {
    let backend = Backend::default();
    let pool = builder(&backend).max_size(3).build().unwrap();
    let conns = vec![
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
    ];
    assert_eq!(ids(&conns), [0, 1, 2]);
    // Returned in the order 2, 0, 1: the last one back (1) is the first out.
    let mut conns: Vec<Option<_>> = conns.into_iter().map(Some).collect();
    for i in [2, 0, 1] {
        conns[i] = None;
    }
    assert_eq!(pool.get().await.unwrap().id, 1);
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    assert_eq!((a.id, b.id), (1, 0));
    drop((a, b));
    assert_eq!(backend.connects(), 3);
}

#[tokio::test(start_paused = true)]
async fn exhausted_pool_fails_at_the_acquire_deadline_with_its_metrics() {
    let backend = Backend::default();
    let pool = builder(&backend)
        .max_size(2)
        .acquire_timeout(Duration::from_millis(250))
        .build()
        .unwrap();
    let _a = pool.get().await.unwrap();
    let _b = pool.get().await.unwrap();
    let start = tokio::time::Instant::now();
    let error = pool.get().await.expect_err("no connection is free");
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    let Error::Exhausted { waited, metrics } = &error else {
        panic!("expected Exhausted, got {error}");
    };
    assert_eq!(*waited, Duration::from_millis(250));
    assert_eq!((metrics.size, metrics.in_use, metrics.idle), (2, 2, 0));
    assert_eq!(
        metrics.waiters, 1,
        "the caller was still in line at its deadline"
    );
    assert!(
        error.to_string().contains("all connections are in use"),
        "{error}"
    );
    assert!(error.to_string().contains("size 2/2"), "{error}");
    let after = pool.metrics();
    assert_eq!((after.waiters, after.timeouts), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn backend_down_fails_by_the_deadline_with_the_connect_error_and_backs_off() {
    let backend = Backend::default();
    backend.set(&backend.0.down, true);
    let pool = builder(&backend)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    let error = pool.get().await.expect_err("the backend is down");
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert!(matches!(error, Error::Unavailable { .. }), "{error}");
    assert!(matches!(
        error.last_error(),
        Some(Failure::Connect(BackendError::Refused))
    ));
    assert!(error.to_string().contains("connection refused"), "{error}");
    // 100 ms doubling (± 20 %) over 5 s: about 6 attempts by the one connect task, not a storm.
    let attempts = backend.attempts();
    assert!((4..=8).contains(&attempts), "{attempts} attempts in 5 s");
    let times = backend.0.attempt_times.lock().clone();
    for pair in times.windows(2).skip(1) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(80), "{times:?}");
    }
    // Back up: the next get connects (after at most one more backoff pause).
    backend.set(&backend.0.down, false);
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.id, 0);
    drop(conn);
    assert_eq!(pool.metrics().connect_failures, attempts as u64);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_leaks_nothing_and_the_next_one_is_served() {
    let backend = Backend::default();
    let pool = builder(&backend).max_size(1).build().unwrap();
    let held = pool.get().await.unwrap();
    let first = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id) }
    });
    settle().await;
    let second = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id) }
    });
    settle().await;
    assert_eq!(pool.metrics().waiters, 2);
    first.abort();
    settle().await;
    assert_eq!(pool.metrics().waiters, 1);
    drop(held);
    assert_eq!(second.await.unwrap().unwrap(), 0);
    let m = pool.metrics();
    assert_eq!((m.size, m.idle, m.in_use, m.waiters), (1, 1, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_connection_handed_to_a_waiter_that_is_dropped_before_it_looks_goes_on() {
    let backend = Backend::default();
    let pool = builder(&backend).max_size(1).build().unwrap();
    let held = pool.get().await.unwrap();
    let mut first = Box::pin(pool.get());
    assert!(futures_poll(&mut first).is_none());
    let second = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id) }
    });
    settle().await;
    drop(held); // handed to `first`, which never polls again
    drop(first);
    assert_eq!(second.await.unwrap().unwrap(), 0);
    assert_eq!(backend.connects(), 1);
}

/// Polls a future once with a no-op waker.
fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(f).poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_connect_started_by_a_dropped_get_finishes_into_the_idle_set() {
    let backend = Backend::default();
    backend.connect_delay(Duration::from_millis(100));
    let pool = builder(&backend).build().unwrap();
    let get = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id) }
    });
    tokio::time::sleep(10 * MS).await;
    assert_eq!(pool.metrics().connecting, 1);
    get.abort();
    tokio::time::sleep(200 * MS).await;
    let m = pool.metrics();
    assert_eq!((m.size, m.idle, m.connecting, m.created), (1, 1, 0, 1));
    assert_eq!(
        pool.get().await.unwrap().id,
        0,
        "the idle connection is used"
    );
}

#[tokio::test(start_paused = true)]
async fn a_get_dropped_midway_through_validation_discards_that_connection() {
    let backend = Backend::default();
    let pool = builder(&backend)
        .test_on_checkout(CheckoutTest::Always)
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    backend.set(&backend.0.validate_hangs, true);
    let get = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id) }
    });
    tokio::time::sleep(10 * MS).await;
    assert_eq!(pool.metrics().in_use, 1, "checked out for validation");
    get.abort();
    settle().await;
    let m = pool.metrics();
    assert_eq!(
        (m.size, m.in_use, m.discarded(Discard::Cancelled)),
        (0, 0, 1)
    );
    assert_eq!(backend.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn tainted_broken_and_panicking_returns_are_discarded_and_replaced_for_waiters() {
    let backend = Backend::default();
    let pool = builder(&backend).max_size(1).build().unwrap();
    let mut conn = pool.get().await.unwrap();
    Pooled::taint(&mut conn);
    assert!(Pooled::is_tainted(&conn));
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|c| c.id) }
    });
    settle().await;
    drop(conn);
    assert_eq!(
        waiter.await.unwrap().unwrap(),
        1,
        "a new connection replaced it"
    );

    let mut conn = pool.get().await.unwrap();
    Pooled::taint(&mut conn);
    Pooled::untaint(&mut conn);
    drop(conn);
    assert_eq!(pool.get().await.unwrap().id, 1, "untainted: reused");

    let conn = pool.get().await.unwrap();
    backend.break_conn(conn.id);
    drop(conn);
    assert_eq!(pool.metrics().size, 0);

    let pool2 = pool.clone();
    let panicked = tokio::spawn(async move {
        let _conn = pool2.get().await.unwrap();
        panic!("the request handler panicked");
    });
    assert!(panicked.await.is_err());
    let m = pool.metrics();
    assert_eq!(m.discarded(Discard::Tainted), 2);
    assert_eq!(m.discarded(Discard::Broken), 1);
    assert_eq!((m.size, backend.live()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn discard_and_detach_free_the_slot() {
    let backend = Backend::default();
    let pool = builder(&backend).max_size(1).build().unwrap();
    Pooled::discard(pool.get().await.unwrap());
    assert_eq!((pool.metrics().size, backend.live()), (0, 0));
    let conn = Pooled::detach(pool.get().await.unwrap());
    assert_eq!(conn.id, 1);
    let m = pool.metrics();
    assert_eq!((m.size, m.discarded(Discard::Detached)), (0, 1));
    // The slot is free even though the detached connection lives on.
    assert_eq!(pool.get().await.unwrap().id, 2);
    assert_eq!(backend.live(), 2);
}

#[tokio::test(start_paused = true)]
async fn lifetimes_are_jittered_and_expired_connections_are_never_handed_out() {
    let backend = Backend::default();
    let pool = builder(&backend)
        .max_size(20)
        .max_lifetime(Some(Duration::from_secs(100)))
        .max_lifetime_jitter(0.2)
        .idle_timeout(None)
        .build()
        .unwrap();
    let mut conns = Vec::new();
    for _ in 0..20 {
        conns.push(pool.get().await.unwrap());
    }
    drop(conns);
    // Lifetimes lie in [80 s, 100 s]: none expires before 80 s, all by 100 s, spread between.
    tokio::time::sleep(Duration::from_millis(79_999)).await;
    pool.maintain().await;
    assert_eq!(pool.metrics().idle, 20);
    let mut remaining = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        pool.maintain().await;
        remaining.push(pool.metrics().idle);
    }
    assert_eq!(*remaining.last().unwrap(), 0);
    let distinct_steps = remaining.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        distinct_steps >= 5,
        "expiries spread over the window: {remaining:?}"
    );
    assert_eq!(pool.metrics().discarded(Discard::Expired), 20);

    // An expired connection met at checkout is discarded, not handed out.
    let fresh = pool.get().await.unwrap();
    let id = fresh.id;
    drop(fresh);
    tokio::time::sleep(Duration::from_secs(101)).await;
    assert_ne!(pool.get().await.unwrap().id, id);
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_reaps_down_to_min_idle() {
    let backend = Backend::default();
    let pool = builder(&backend)
        .max_size(5)
        .min_idle(2)
        .idle_timeout(Some(Duration::from_secs(60)))
        .build()
        .unwrap();
    pool.warm_up().await.unwrap();
    assert_eq!(pool.metrics().idle, 2);
    let conns: Vec<_> = futures_collect(&pool, 5).await;
    drop(conns);
    assert_eq!(pool.metrics().idle, 5);
    tokio::time::sleep(Duration::from_secs(61)).await;
    pool.maintain().await;
    let m = pool.metrics();
    assert_eq!((m.idle, m.discarded(Discard::IdleTimeout)), (2, 3));
    assert_eq!(backend.live(), 2);
}

async fn futures_collect(
    pool: &Pool<Backend, palisade_core::TokioClock>,
    n: usize,
) -> Vec<Pooled<Backend, palisade_core::TokioClock>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(pool.get().await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn checkout_validation_follows_the_policy_and_bad_connections_are_skipped() {
    let backend = Backend::default();
    let pool = builder(&backend)
        .max_size(2)
        .test_on_checkout(CheckoutTest::IdleFor(Duration::from_millis(500)))
        .build()
        .unwrap();
    let conns = futures_collect(&pool, 2).await;
    drop(conns);
    // Fresh connections and recently used ones skip validation (recycle runs for used ones).
    drop(pool.get().await.unwrap());
    assert_eq!((backend.validations(), backend.recycles()), (0, 1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(pool.get().await.unwrap());
    assert_eq!(backend.validations(), 1);
    // Both idle connections now fail validation: both are skipped and a new one is made.
    tokio::time::sleep(Duration::from_secs(1)).await;
    backend.set(&backend.0.validate_fails, true);
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.id, 2, "never a connection that failed its check");
    assert_eq!(pool.metrics().discarded(Discard::Invalid), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_validation_is_cut_by_validation_timeout() {
    let backend = Backend::default();
    let pool = builder(&backend)
        .test_on_checkout(CheckoutTest::Always)
        .validation_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    backend.set(&backend.0.validate_hangs, true);
    let start = tokio::time::Instant::now();
    let error = pool.get().await.expect_err("every validation hangs");
    // Each connection costs one 200 ms validation; the deadline ends it with the last failure.
    assert!(start.elapsed() <= Duration::from_secs(30));
    assert!(
        matches!(error.last_error(), Some(Failure::ValidateTimeout(_)))
            || matches!(error, Error::Exhausted { .. }),
        "{error}"
    );
    assert!(pool.metrics().discarded(Discard::Invalid) >= 2);
    // A replacement connect may be in flight: it holds a slot but no connection yet.
    let m = pool.metrics();
    assert_eq!(m.size - m.connecting, backend.live() as usize, "{m}");
}

#[tokio::test(start_paused = true)]
async fn recycle_runs_before_reuse_and_a_failed_recycle_discards() {
    let backend = Backend::default();
    let pool = builder(&backend).build().unwrap();
    drop(pool.get().await.unwrap());
    assert_eq!(backend.recycles(), 0, "a fresh connection needs no recycle");
    drop(pool.get().await.unwrap());
    assert_eq!(backend.recycles(), 1);
    backend.set(&backend.0.recycle_fails, true);
    assert_eq!(pool.get().await.unwrap().id, 1);
    assert_eq!(pool.metrics().discarded(Discard::Invalid), 1);
}

/// Connections numbered from 0 whose `recycle` takes `recycle_ms` (0: ready at once).
#[derive(Debug, Clone, Default)]
struct SlowRecycle {
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    recycle_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl palisade_pool::Manager for SlowRecycle {
    type Connection = usize;
    type Error = std::io::Error;

    async fn connect(&self) -> std::io::Result<usize> {
        Ok(self.next.fetch_add(1, Ordering::SeqCst))
    }

    async fn recycle(&self, _conn: &mut usize) -> std::io::Result<()> {
        let ms = self.recycle_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Ok(())
    }
}

/// The checkout of an idle connection finishes at once when its `recycle` is ready at once;
/// a `recycle` that is not is awaited under `validation_timeout`, and a `get()` dropped
/// meanwhile discards that connection.
#[tokio::test(start_paused = true)]
async fn a_recycle_not_ready_at_once_is_awaited_within_its_timeout_and_cancel_safe() {
    let manager = SlowRecycle::default();
    let pool = Pool::builder(manager.clone())
        .clock(palisade_core::TokioClock::new())
        .test_on_checkout(CheckoutTest::Never)
        .validation_timeout(100 * MS)
        .max_size(1)
        .build()
        .unwrap();
    drop(pool.get().await.unwrap()); // used once: the next checkout recycles
    assert_eq!(*pool.get().await.unwrap(), 0, "recycled at once");

    manager.recycle_ms.store(10, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    let conn = pool.get().await.unwrap();
    assert_eq!((*conn, start.elapsed()), (0, 10 * MS), "awaited");
    drop(conn);

    let mut get = Box::pin(pool.get());
    assert!(futures_poll(&mut get).is_none(), "recycling");
    assert_eq!(pool.metrics().in_use, 1);
    drop(get);
    let m = pool.metrics();
    assert_eq!((m.size, m.discarded(Discard::Cancelled)), (0, 1), "{m}");

    drop(pool.get().await.unwrap()); // connection 1, used once
    manager.recycle_ms.store(1_000, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    let conn = pool.get().await.unwrap();
    // Cut at 100 ms and discarded; the caller goes on to a new connection (fresh: no recycle).
    assert_eq!((*conn, start.elapsed()), (2, 100 * MS));
    let m = pool.metrics();
    assert_eq!((m.size, m.discarded(Discard::Invalid)), (1, 1), "{m}");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_connect_is_cut_by_connect_timeout() {
    let backend = Backend::default();
    backend.set(&backend.0.hang_connect, true);
    let pool = builder(&backend)
        .connect_timeout(Duration::from_millis(300))
        .acquire_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let error = pool.get().await.err().unwrap();
    assert!(
        matches!(error.last_error(), Some(Failure::ConnectTimeout(d)) if *d == Duration::from_millis(300)),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn connects_in_flight_never_exceed_max_concurrent_connects() {
    let backend = Backend::default();
    backend.connect_delay(Duration::from_millis(100));
    let pool = builder(&backend)
        .max_size(10)
        .max_concurrent_connects(3)
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let conn = pool.get().await.unwrap();
                tokio::time::sleep(Duration::from_secs(10)).await;
                drop(conn);
            })
        })
        .collect();
    for _ in 0..5 {
        settle().await;
        assert!(pool.metrics().connecting <= 3);
        tokio::time::sleep(50 * MS).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(backend.connects(), 10);
}

#[tokio::test(start_paused = true)]
async fn a_spike_with_a_slow_connect_opens_only_the_connections_it_needs() {
    // HikariCP's spike test: 50 callers at once, each holding a connection 5 ms, with a 50 ms
    // connect. Connections come back long before new ones would be ready, so the pool serves
    // the spike with the connects it started first.
    let backend = Backend::default();
    backend.connect_delay(Duration::from_millis(50));
    let pool = builder(&backend).max_size(50).build().unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let conn = pool.get().await.unwrap();
                tokio::time::sleep(5 * MS).await;
                drop(conn);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let created = pool.metrics().created;
    assert!(
        created <= 4,
        "{created} connections for a spike two could serve"
    );
}

#[tokio::test(start_paused = true)]
async fn warm_up_fills_min_idle_and_a_discard_is_refilled() {
    let backend = Backend::default();
    let pool = builder(&backend).max_size(4).min_idle(3).build().unwrap();
    pool.warm_up().await.unwrap();
    assert_eq!(pool.metrics().idle, 3);
    Pooled::discard(pool.get().await.unwrap());
    settle().await;
    assert_eq!(pool.metrics().idle, 3, "refilled to min_idle");
    assert_eq!(backend.connects(), 4);
}

#[tokio::test(start_paused = true)]
async fn keepalive_finds_dead_idle_connections() {
    let backend = Backend::default();
    let pool = builder(&backend)
        .max_size(3)
        .keepalive(Some(Duration::from_secs(30)))
        .build()
        .unwrap();
    drop(futures_collect(&pool, 3).await);
    tokio::time::sleep(Duration::from_secs(31)).await;
    pool.maintain().await;
    assert_eq!(backend.validations(), 3);
    assert_eq!(pool.metrics().idle, 3);
    tokio::time::sleep(Duration::from_secs(31)).await;
    backend.set(&backend.0.validate_fails, true);
    pool.maintain().await;
    let m = pool.metrics();
    assert_eq!((m.idle, m.size, m.discarded(Discard::Invalid)), (0, 0, 3));
}

#[tokio::test(start_paused = true)]
async fn leaks_are_reported_once_with_the_checkout_site() {
    let backend = Backend::default();
    let pool = builder(&backend)
        .leak_detection(Some(Duration::from_secs(10)))
        .build()
        .unwrap();
    let line = line!() + 1;
    let leaked = pool.get().await.unwrap();
    assert_eq!(Pooled::checked_out_at(&leaked).line(), line);
    tokio::time::sleep(Duration::from_secs(5)).await;
    pool.maintain().await;
    assert_eq!(pool.metrics().leaks, 0);
    tokio::time::sleep(Duration::from_secs(6)).await;
    pool.maintain().await;
    pool.maintain().await;
    assert_eq!(pool.metrics().leaks, 1, "reported once");
    drop(leaked);
    assert_eq!(pool.metrics().idle, 1, "a late return is still a return");
}

#[tokio::test(start_paused = true)]
async fn close_fails_waiters_drops_idle_and_waits_for_checked_out_connections() {
    let backend = Backend::default();
    let pool = builder(&backend).max_size(2).build().unwrap();
    let idle = pool.get().await.unwrap();
    let held = pool.get().await.unwrap();
    drop(idle);
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|_| ()) }
    });
    let _ = pool.get().await.unwrap(); // takes and returns the idle one
    settle().await;
    let closer = tokio::spawn({
        let pool = pool.clone();
        async move { pool.close(Duration::from_secs(5)).await }
    });
    settle().await;
    assert!(pool.is_closed());
    assert!(matches!(waiter.await.unwrap(), Ok(()) | Err(Error::Closed)));
    assert!(matches!(pool.get().await, Err(Error::Closed)));
    assert_eq!(backend.live(), 1, "idle connection closed at once");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !closer.is_finished(),
        "waits for the checked-out connection"
    );
    drop(held);
    closer.await.unwrap().unwrap();
    assert_eq!(backend.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn close_reports_connections_still_out_at_its_deadline() {
    let backend = Backend::default();
    let pool = builder(&backend).build().unwrap();
    let held = pool.get().await.unwrap();
    let error = pool.close(Duration::from_secs(2)).await.unwrap_err();
    assert_eq!(error.outstanding, 1);
    assert_eq!(error.waited, Duration::from_secs(2));
    drop(held);
    assert_eq!(backend.live(), 0, "returned after close: closed");
    pool.close(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn close_with_an_unbounded_timeout_waits_instead_of_panicking() {
    let backend = Backend::default();
    let pool = builder(&backend).build().unwrap();
    let held = pool.get().await.unwrap();
    let closer = tokio::spawn({
        let pool = pool.clone();
        async move { pool.close(Duration::MAX).await }
    });
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!closer.is_finished());
    drop(held);
    closer.await.unwrap().unwrap();
}

#[test]
fn every_knob_is_validated_with_the_field_and_range_in_the_message() {
    let backend = Backend::default();
    let cases: Vec<(Result<_, _>, &str)> = vec![
        (
            builder(&backend).max_size(0).build().map(drop),
            "max_size must be in 1..=65536, got 0",
        ),
        (
            builder(&backend).min_idle(11).build().map(drop),
            "min_idle must be at most max_size (10), got 11",
        ),
        (
            builder(&backend)
                .acquire_timeout(Duration::ZERO)
                .build()
                .map(drop),
            "acquire_timeout must be in 1ms..=30days",
        ),
        (
            builder(&backend)
                .connect_timeout(Duration::from_secs(u64::MAX))
                .build()
                .map(drop),
            "connect_timeout must be in 1ms..=30days",
        ),
        (
            builder(&backend)
                .validation_timeout(Duration::ZERO)
                .build()
                .map(drop),
            "validation_timeout",
        ),
        (
            builder(&backend)
                .max_lifetime(Some(Duration::ZERO))
                .build()
                .map(drop),
            "max_lifetime",
        ),
        (
            builder(&backend).max_lifetime_jitter(0.9).build().map(drop),
            "max_lifetime_jitter must be in 0.0..=0.5, got 0.9",
        ),
        (
            builder(&backend)
                .max_lifetime_jitter(f64::NAN)
                .build()
                .map(drop),
            "max_lifetime_jitter",
        ),
        (
            builder(&backend)
                .idle_timeout(Some(Duration::ZERO))
                .build()
                .map(drop),
            "idle_timeout",
        ),
        (
            builder(&backend)
                .keepalive(Some(Duration::ZERO))
                .build()
                .map(drop),
            "keepalive",
        ),
        (
            builder(&backend)
                .leak_detection(Some(Duration::ZERO))
                .build()
                .map(drop),
            "leak_detection",
        ),
        (
            builder(&backend)
                .max_concurrent_connects(0)
                .build()
                .map(drop),
            "max_concurrent_connects must be in 1..=65536, got 0",
        ),
        (
            builder(&backend)
                .test_on_checkout(CheckoutTest::IdleFor(Duration::MAX))
                .build()
                .map(drop),
            "test_on_checkout",
        ),
    ];
    for (result, message) in cases {
        let error = result.expect_err(message);
        assert!(
            error.to_string().starts_with(message),
            "{error} vs {message}"
        );
    }
    assert!(
        builder(&backend)
            .max_lifetime(None)
            .idle_timeout(None)
            .build()
            .is_ok()
    );
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<Pool<Backend>>();
    send_sync::<palisade_pool::Pooled<Backend>>();
    send_sync::<Error<BackendError>>();
    send_sync::<palisade_pool::Metrics>();
    send_sync::<palisade_pool::CloseTimeout>();
    let pool = Pool::builder(Backend::default()).build().unwrap();
    send(&pool.get());
    send(&pool.close(Duration::from_secs(1)));
    send(&pool.warm_up());
    send(&pool.maintain());
    let _ = Ordering::SeqCst;
}
