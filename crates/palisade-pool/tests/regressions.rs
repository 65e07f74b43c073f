//! Regression tests for the bugs a review of the first version found, each of which failed
//! before its fix: slots lost with a runtime, a pool that never reconnected after an outage,
//! keepalive and `min_idle` opening or churning connections, keepalive holding back idle
//! connections or defeating `idle_timeout`, waiters stranded by a guard dropped off-runtime,
//! validation failures causing a connect storm, and the caller's deadline counted against a
//! healthy connection; then those of a later audit: a long `max_lifetime` that panicked
//! `build()`, slots kept by a pool built outside a runtime, a backoff after failed checks that
//! never grew, a connect loop that never yielded with a zero backoff, a panicking connect
//! retried at once, a keepalive pass that never ended, and keepalive checking a used connection
//! before recycling it; then those of an audit of fairness, backoff, close and checks: new
//! connections rejected by `is_broken` reconnected with no backoff, a panicking `is_broken` on
//! return kept the slot, and `close()` left a waiting `warm_up()` waiting; and one its review
//! found: a stale idle connection failing a check backed off a healthy backend.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_core::TokioClock;
use palisade_pool::{CheckoutTest, Discard, Error, Failure, Manager, Pool, Pooled};
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

/// Bug 11 (fixed): `build()` panicked when `max_lifetime × max_lifetime_jitter` was over 24 hours
/// (any `max_lifetime` over 10 days with the default jitter): the lifetime window was drawn
/// through a palisade-retry `Backoff`, whose delays stop at 24 hours, and its error was
/// `expect`ed.
#[tokio::test(start_paused = true)]
async fn a_thirty_day_lifetime_builds_and_spreads_expiries_over_its_window() {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let backend = Backend::default();
    let pool = builder(&backend)
        .max_size(20)
        .max_lifetime(Some(30 * DAY))
        .max_lifetime_jitter(0.5)
        .idle_timeout(None)
        .build()
        .expect("30 days with half of it as jitter is in range");
    let conns: Vec<_> = {
        let mut conns = Vec::new();
        for _ in 0..20 {
            conns.push(pool.get().await.unwrap());
        }
        conns
    };
    drop(conns);
    // Lifetimes lie in [15 days, 30 days]: none ends before the window, all by its end.
    tokio::time::sleep(15 * DAY - S).await;
    pool.maintain().await;
    assert_eq!(pool.metrics().idle, 20);
    let mut remaining = Vec::new();
    for _ in 0..15 {
        tokio::time::sleep(DAY).await;
        pool.maintain().await;
        remaining.push(pool.metrics().idle);
    }
    assert_eq!(remaining.last(), Some(&0), "{remaining:?}");
    let steps = remaining.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(steps >= 5, "expiries spread over the window: {remaining:?}");
}

/// Bug 12 (fixed): A pool built outside a runtime with `min_idle` ≥ 2 kept all but one of the
/// slots it reserved for its first connects: the first spawn failed, and `spawn_connects`
/// returned without releasing the others, so the pool was smaller for good and a second
/// `get()` timed out as `Exhausted` with a slot free.
#[test]
fn a_pool_built_outside_a_runtime_loses_no_slots() {
    let backend = Backend::default();
    let pool = builder(&backend)
        .max_size(3)
        .min_idle(3)
        .acquire_timeout(S)
        .build()
        .unwrap();
    let m = pool.metrics();
    assert_eq!((m.size, m.connecting), (0, 0), "{m}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let a = pool.get().await.unwrap();
        let b = pool.get().await.unwrap();
        let c = pool.get().await.unwrap();
        assert_eq!(pool.metrics().in_use, 3);
        drop((a, b, c));
    });
}

/// Bug 13 (fixed): The backoff after failed checks of fresh connections never grew: every
/// successful connect reset the failure count, so a backend that accepts connections and fails
/// every check was probed at the schedule's first step (about 100 ms) forever, about 600
/// connects a minute where the schedule (100 ms doubling to 10 s, ± 20 %) allows about 13.
/// The count now survives a connect until a connection proves the backend works.
#[tokio::test(start_paused = true)]
async fn failed_checks_of_fresh_connections_back_off_on_a_growing_schedule() {
    let backend = Backend::default();
    backend.connect_delay(Duration::from_millis(1));
    backend.set(&backend.0.validate_fails, true);
    let pool = builder(&backend)
        .test_on_checkout(CheckoutTest::Always)
        .acquire_timeout(S)
        .build()
        .unwrap();
    for _ in 0..60 {
        assert!(matches!(
            pool.get().await.expect_err("every check fails"),
            Error::Unavailable { .. }
        ));
    }
    let connects = backend.connects();
    assert!((8..=20).contains(&connects), "{connects} connects in 60 s");
    let times = backend.0.attempt_times.lock().clone();
    // At the schedule's cap by now: ± 20 % fitted under 10 s is 6.7 to 10 s between attempts.
    let last_gap = times[times.len() - 1] - times[times.len() - 2];
    assert!(last_gap >= Duration::from_secs(6), "{times:?}");

    // The backend recovers: a new connection that passes its check proves it (kept out here,
    // so it does not also come back after a use), and the next failure backs off from the
    // schedule's first step again: about four connects in a second, not one.
    tokio::time::sleep(Duration::from_secs(12)).await;
    backend.set(&backend.0.validate_fails, false);
    let held = pool.get().await.unwrap();
    backend.set(&backend.0.validate_fails, true);
    let before = backend.connects();
    assert!(pool.get().await.is_err());
    let connects = backend.connects() - before;
    assert!(
        connects >= 3,
        "{connects} connects in 1 s after the backend proved itself"
    );
    drop(held);
}

/// A connector that refuses until another task has run (or 10,000 attempts, so a broken pool
/// ends the test instead of hanging it); the first attempt queues that task.
#[derive(Debug, Default)]
struct RefusesUntilOthersRun {
    attempts: AtomicUsize,
    other_ran: Arc<std::sync::atomic::AtomicBool>,
}

impl Manager for RefusesUntilOthersRun {
    type Connection = ();
    type Error = std::io::Error;
    async fn connect(&self) -> std::io::Result<()> {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            let other_ran = Arc::clone(&self.other_ran);
            tokio::spawn(async move { other_ran.store(true, Ordering::SeqCst) });
        }
        if self.other_ran.load(Ordering::SeqCst) || n >= 10_000 {
            return Ok(());
        }
        Err(std::io::ErrorKind::ConnectionRefused.into())
    }
}

/// Bug 14 (fixed): With a connect backoff of no pause (`Backoff::constant(Duration::ZERO)`,
/// accepted) and a connect that fails without returning `Pending`, the connect task retried
/// without ever yielding: on a current-thread runtime no other task ran, not even the caller's
/// timeout, and on a multi-thread one it kept a worker busy.
#[tokio::test(start_paused = true)]
async fn a_connect_backoff_with_no_pause_still_lets_other_tasks_run() {
    let pool = Pool::builder(RefusesUntilOthersRun::default())
        .connect_backoff(
            palisade_pool::Backoff::constant(Duration::ZERO)
                .build()
                .unwrap(),
        )
        .acquire_timeout(S)
        .clock(TokioClock::new())
        .build()
        .unwrap();
    pool.get().await.expect("the second attempt connects");
    assert_eq!(
        pool.manager().attempts.load(Ordering::SeqCst),
        2,
        "one refused attempt, a turn for the other task, then a connect"
    );
}

/// Connect attempts a `get()` that needs a new connection makes against a refusing backend
/// in one second: about four (100, 200, 400 ms pauses) right after the backend proved itself,
/// one or two if the backoff still stands at a later step of its schedule.
async fn attempts_in_a_second_after(pool: &Pool<Backend, TokioClock>, backend: &Backend) -> usize {
    backend.set(&backend.0.down, true);
    let before = backend.attempts();
    let started = tokio::time::Instant::now();
    let timeout = tokio::time::timeout(S, pool.get()).await;
    assert!(!matches!(timeout, Ok(Ok(_))), "the backend is down");
    assert!(started.elapsed() <= S);
    backend.attempts() - before
}

/// Bug 13, the other ways a backend proves itself: a connection that comes back after a use,
/// with no check on the way out, resets the backoff; so does one that passes a keepalive check
/// without ever being checked out.
#[tokio::test(start_paused = true)]
async fn a_connection_back_from_a_use_or_through_keepalive_resets_the_backoff() {
    for proof in ["a return after a use", "a keepalive check"] {
        let backend = Backend::default();
        let pool = builder(&backend)
            .max_size(2)
            .min_idle(1)
            .keepalive(Some(Duration::from_secs(30)))
            .idle_timeout(None)
            .acquire_timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        // Down for 20 s: the warm-up connect backs off to the schedule's 10 s steps.
        backend.set(&backend.0.down, true);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(backend.attempts() >= 6, "{}", backend.attempts());
        backend.set(&backend.0.down, false);
        pool.warm_up().await.unwrap();
        let held = match proof {
            "a return after a use" => {
                drop(pool.get().await.unwrap());
                pool.get().await.unwrap()
            }
            _ => {
                tokio::time::sleep(Duration::from_secs(31)).await;
                pool.maintain().await;
                assert_eq!(backend.validations(), 1, "the keepalive check ran");
                pool.get().await.unwrap()
            }
        };
        let attempts = attempts_in_a_second_after(&pool, &backend).await;
        assert!(attempts >= 3, "after {proof}: {attempts} attempts in 1 s");
        drop(held);
    }
}

/// A connector whose `connect` panics (a bug in it, say), for its first 1,000 attempts (so that
/// a pool that retries at once ends the test instead of hanging it: paused time never moves
/// while tasks are busy).
#[derive(Debug, Default)]
struct PanicsOnConnect {
    attempts: AtomicUsize,
}

impl Manager for PanicsOnConnect {
    type Connection = ();
    type Error = std::io::Error;
    async fn connect(&self) -> std::io::Result<()> {
        if self.attempts.fetch_add(1, Ordering::SeqCst) < 1_000 {
            panic!("the connector has a bug");
        }
        Ok(())
    }
}

/// Bug 15 (fixed): A `connect` that panics freed its slot and woke the waiter, which started
/// the next connect at once: no backoff, so a caller waiting one second saw thousands of
/// panicking connects. A panic is now a failed attempt (`Failure::ConnectPanicked`) on the
/// backoff schedule, and the caller's error says what happened.
#[tokio::test(start_paused = true)]
async fn a_panicking_connect_is_a_failure_on_the_backoff_schedule() {
    let pool = Pool::builder(PanicsOnConnect::default())
        .acquire_timeout(S)
        .clock(TokioClock::new())
        .build()
        .unwrap();
    let error = pool.get().await.expect_err("every connect panics");
    let attempts = pool.manager().attempts.load(Ordering::SeqCst);
    // 100 ms doubling (± 20 %) within 1 s: about four attempts.
    assert!((2..=6).contains(&attempts), "{attempts} connects in 1 s");
    assert!(matches!(error, Error::Unavailable { .. }), "{error}");
    assert!(
        matches!(error.last_error(), Some(Failure::ConnectPanicked(message)) if message == "the connector has a bug"),
        "{error}"
    );
    // Its connect task gives up after its pause, once nobody needs it: nothing is kept.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let m = pool.metrics();
    assert_eq!((m.size, m.connecting), (0, 0), "{m}");
    assert_eq!(m.connect_failures, attempts as u64);
}

/// A connector whose `connect` builds its future only after panicking, for its first 1,000
/// attempts (`.expect` on a config value, say): the panic comes from the call, not a poll.
#[derive(Debug, Default)]
struct PanicsBuildingConnect {
    attempts: AtomicUsize,
}

impl Manager for PanicsBuildingConnect {
    type Connection = ();
    type Error = std::io::Error;
    #[allow(clippy::manual_async_fn)]
    fn connect(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        if self.attempts.fetch_add(1, Ordering::SeqCst) < 1_000 {
            panic!("the connector has a bug");
        }
        async { Ok(()) }
    }
}

/// Bug 16 (fixed): Bug 15's catch covered a panic while polling the connect future, not one
/// while `connect()` built it: that killed the connect task, which was restarted at once.
#[tokio::test(start_paused = true)]
async fn a_connect_that_panics_building_its_future_is_on_the_backoff_schedule_too() {
    let pool = Pool::builder(PanicsBuildingConnect::default())
        .acquire_timeout(S)
        .clock(TokioClock::new())
        .build()
        .unwrap();
    let error = pool.get().await.expect_err("every connect panics");
    let attempts = pool.manager().attempts.load(Ordering::SeqCst);
    assert!((2..=6).contains(&attempts), "{attempts} connects in 1 s");
    assert!(
        matches!(error.last_error(), Some(Failure::ConnectPanicked(_))),
        "{error}"
    );
}

/// A connector whose `validate` takes 600 ms.
#[derive(Debug, Default)]
struct SlowValidate {
    validations: AtomicUsize,
}

impl Manager for SlowValidate {
    type Connection = ();
    type Error = std::io::Error;
    async fn connect(&self) -> std::io::Result<()> {
        Ok(())
    }
    async fn validate(&self, _: &mut ()) -> std::io::Result<()> {
        self.validations.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(600)).await;
        Ok(())
    }
}

/// Bug 17 (fixed): A keepalive pass took whichever idle connection was stale *now*: when its
/// checks took longer, all told, than `keepalive` (3 idle connections, 600 ms checks, a 1 s
/// keepalive), the first was stale again by the last, and `maintain()` never returned (and
/// `maintenance()` stopped reaping, reporting leaks and refilling).
#[tokio::test(start_paused = true)]
async fn a_keepalive_pass_checks_each_connection_once_and_ends() {
    let pool = Pool::builder(SlowValidate::default())
        .max_size(3)
        .keepalive(Some(S))
        .test_on_checkout(CheckoutTest::Never)
        .idle_timeout(None)
        .clock(TokioClock::new())
        .build()
        .unwrap();
    let conns = [
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
    ];
    drop(conns);
    tokio::time::sleep(2 * S).await;
    let pass = tokio::time::timeout(Duration::from_secs(600), pool.maintain()).await;
    let checks = pool.manager().validations.load(Ordering::SeqCst);
    assert!(pass.is_ok(), "maintain() ran {checks} checks in 600 s");
    assert_eq!(checks, 3);
    assert_eq!(pool.metrics().idle, 3);
}

/// Bug 18 (fixed): Keepalive validated a connection back from a use before `recycle` ran (which
/// checkout runs first): one left mid-transaction failed its check and was discarded where a
/// recycle would have repaired it. It is now recycled, then validated, and goes out with no
/// second recycle.
#[tokio::test(start_paused = true)]
async fn keepalive_recycles_a_used_connection_before_checking_it() {
    let backend = Backend::default();
    let pool = builder(&backend)
        .max_size(1)
        .keepalive(Some(Duration::from_secs(30)))
        .idle_timeout(None)
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    tokio::time::sleep(Duration::from_secs(31)).await;
    pool.maintain().await;
    assert_eq!((backend.recycles(), backend.validations()), (1, 1));
    assert_eq!(pool.metrics().idle, 1, "kept");
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.id, 0);
    assert_eq!(backend.recycles(), 1, "recycled once, by keepalive");

    // A recycle that fails discards the connection without validating it.
    drop(conn);
    backend.set(&backend.0.recycle_fails, true);
    tokio::time::sleep(Duration::from_secs(31)).await;
    pool.maintain().await;
    assert_eq!((backend.recycles(), backend.validations()), (2, 1));
    assert_eq!(pool.metrics().discarded(Discard::Invalid), 1);
}

/// A connector whose connections connect fine (in 1 ms) and are broken at once (the server
/// closes each one as it accepts it, say): `is_broken` says so of every one.
#[derive(Debug, Default)]
struct BrokenOnArrival {
    connects: AtomicUsize,
}

impl Manager for BrokenOnArrival {
    type Connection = ();
    type Error = std::io::Error;
    async fn connect(&self) -> std::io::Result<()> {
        self.connects.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(())
    }
    fn is_broken(&self, _: &mut ()) -> bool {
        true
    }
}

/// Bug 19 (fixed): A new connection that `is_broken` rejected at checkout was discarded with no
/// failure recorded: its replacement connected at once, so a backend whose connections arrive
/// broken saw a connect per millisecond (1,000 in a one-second `get()`), and the `get()` failed
/// as `Exhausted` ("all connections are in use", with none in use). It now counts as a failed
/// check of a fresh connection (`Failure::Broken`): paced by the connect backoff, reported as
/// `Unavailable`.
#[tokio::test(start_paused = true)]
async fn new_connections_broken_at_checkout_are_paced_and_reported_as_unavailable() {
    let pool = Pool::builder(BrokenOnArrival::default())
        .clock(TokioClock::new())
        .acquire_timeout(S)
        .build()
        .unwrap();
    let error = pool.get().await.expect_err("every connection is broken");
    let connects = pool.manager().connects.load(Ordering::SeqCst);
    // 100 ms doubling (± 20 %) within 1 s: about five connects.
    assert!((2..=7).contains(&connects), "{connects} connects in 1 s");
    assert!(matches!(error, Error::Unavailable { .. }), "{error}");
    assert!(
        matches!(error.last_error(), Some(Failure::Broken)),
        "{error}"
    );
    // Every connection made was discarded; its connect task gives up once nobody needs it.
    tokio::time::sleep(20 * S).await;
    let m = pool.metrics();
    assert_eq!(
        (m.size, m.discarded(Discard::Broken)),
        (0, connects as u64),
        "{m}"
    );
}

/// Bug 19's other side: a used connection that `is_broken` rejects at checkout is only stale
/// (a server restart, say): its replacement connects at once.
#[tokio::test(start_paused = true)]
async fn a_used_connection_broken_at_checkout_is_replaced_at_once() {
    let backend = Backend::default();
    let pool = builder(&backend).max_size(1).build().unwrap();
    drop(pool.get().await.unwrap());
    backend.break_conn(0);
    let started = tokio::time::Instant::now();
    let conn = pool.get().await.unwrap();
    assert_eq!((conn.id, started.elapsed()), (1, Duration::ZERO));
    assert_eq!(pool.metrics().discarded(Discard::Broken), 1);
}

/// A connector whose `is_broken` panics while `panics` is set.
#[derive(Debug, Default)]
struct PanicsInIsBroken {
    panics: std::sync::atomic::AtomicBool,
}

impl Manager for PanicsInIsBroken {
    type Connection = ();
    type Error = std::io::Error;
    async fn connect(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn is_broken(&self, _: &mut ()) -> bool {
        if self.panics.load(Ordering::SeqCst) {
            panic!("is_broken has a bug");
        }
        false
    }
}

/// Bug 20 (fixed): An `is_broken` that panicked while a guard was dropped (not during another
/// panic) unwound out of `Pooled::drop` after the connection had left the guard: it was closed,
/// but its slot was never freed, so the pool was one connection smaller for good (`in_use`
/// stuck at 1, with `max_size(1)` every later `get()` timed out as `Exhausted`, and `close()`
/// waited for it in vain). The connection is now discarded (`Discard::Cancelled`, as for a
/// check that panics at checkout), its slot freed, and the panic goes on.
#[tokio::test(start_paused = true)]
async fn a_panicking_is_broken_on_return_frees_the_slot() {
    let pool = Pool::builder(PanicsInIsBroken::default())
        .clock(TokioClock::new())
        .max_size(1)
        .acquire_timeout(S)
        .build()
        .unwrap();
    let task = tokio::spawn({
        let pool = pool.clone();
        async move {
            let conn = pool.get().await.unwrap();
            pool.manager().panics.store(true, Ordering::SeqCst);
            drop(conn);
        }
    });
    assert!(task.await.unwrap_err().is_panic(), "the panic goes on");
    pool.manager().panics.store(false, Ordering::SeqCst);
    let m = pool.metrics();
    assert_eq!(
        (m.size, m.in_use, m.discarded(Discard::Cancelled)),
        (0, 0, 1),
        "{m}"
    );
    drop(pool.get().await.expect("the slot is free"));
    pool.close(S).await.expect("nothing is left out");
}

/// Bug 21 (fixed): `close()` woke the waiting `get()`s but not a waiting `warm_up()`, which
/// went on waiting for a connect to end: against a down backend, until the connect task's
/// backoff pause ended (up to `connect_backoff`'s cap, 10 s by default), or `connect_timeout`.
#[tokio::test(start_paused = true)]
async fn close_ends_a_waiting_warm_up_at_once() {
    let backend = Backend::default();
    backend.set(&backend.0.down, true);
    let pool = builder(&backend)
        .min_idle(1)
        .acquire_timeout(120 * S)
        .build()
        .unwrap();
    let warm_up = tokio::spawn({
        let pool = pool.clone();
        async move { pool.warm_up().await }
    });
    // Down for a minute: the connect task now pauses about 10 s between attempts.
    tokio::time::sleep(60 * S).await;
    pool.close(S).await.unwrap();
    settle().await;
    assert!(warm_up.is_finished(), "warm_up() still waits after close()");
    assert!(matches!(warm_up.await.unwrap(), Err(Error::Closed)));
}

/// Bug 22 (fixed): Bug 19's fix, as first written, took any never-used connection rejected at
/// checkout for a sign of a failing backend, and so did a failed checkout validation (found by
/// the review of that fix): a pool warmed up to `min_idle` whose idle connections the server
/// had closed (its own idle timeout) backed off a healthy backend one step per stale
/// connection, and the `get()` failed as `Unavailable`. A connection that sat idle only says it
/// went stale; its replacement connects at once.
#[tokio::test(start_paused = true)]
async fn stale_idle_connections_rejected_at_checkout_do_not_back_off_a_healthy_backend() {
    for test in [CheckoutTest::default(), CheckoutTest::Never] {
        let backend = Backend::default();
        let pool = builder(&backend)
            .min_idle(8)
            .max_size(8)
            .test_on_checkout(test)
            .acquire_timeout(S)
            .build()
            .unwrap();
        pool.warm_up().await.unwrap();
        assert_eq!(pool.metrics().idle, 8);
        // Five minutes later the server has closed every idle connection: `is_broken` sees it,
        // or, with checkout tests on, their validation fails (a new connection, straight from
        // its connect, is not validated).
        tokio::time::sleep(300 * S).await;
        match test {
            CheckoutTest::Never => (0..8).for_each(|id| backend.break_conn(id)),
            _ => backend.set(&backend.0.validate_fails, true),
        }
        let started = tokio::time::Instant::now();
        let conn = pool.get().await.unwrap_or_else(|e| panic!("{test:?}: {e}"));
        assert_eq!(
            (conn.id, started.elapsed()),
            (8, Duration::ZERO),
            "{test:?}: the first new connection, at once"
        );
        let m = pool.metrics();
        let reason = match test {
            CheckoutTest::Never => Discard::Broken,
            _ => Discard::Invalid,
        };
        assert_eq!(m.discarded(reason), 8, "{test:?}: {m}");
    }
}

/// The keepalive side of bug 22: idle connections that fail their keepalive check only went
/// stale; the `min_idle` refill connects at once, with no backoff.
#[tokio::test(start_paused = true)]
async fn stale_idle_connections_failing_keepalive_do_not_back_off_the_refill() {
    let backend = Backend::default();
    let pool = builder(&backend)
        .min_idle(2)
        .max_size(2)
        .keepalive(Some(60 * S))
        .build()
        .unwrap();
    pool.warm_up().await.unwrap();
    tokio::time::sleep(300 * S).await;
    // The server closed both: their keepalive validation fails.
    backend.set(&backend.0.validate_fails, true);
    pool.maintain().await;
    settle().await;
    let m = pool.metrics();
    assert_eq!(m.discarded(Discard::Invalid), 2, "{m}");
    assert_eq!(
        (backend.connects(), m.idle),
        (4, 2),
        "both replaced at once: {m}"
    );
}
