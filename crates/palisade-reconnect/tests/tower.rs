//! The tower service under paused time over a scripted `MakeService`: one connect per
//! generation across clones, replacement of dead connections, typed errors, both
//! while-disconnected modes, giving up, closing, a panicking connector, heartbeats, hooks and
//! the layer.

use std::future::{Future, Ready, poll_fn, ready};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_reconnect::{
    Backoff, BoxError, Cause, CloseReason, Closed, ConnectionLost, ConnectionState, Jitter,
    NotConnected, Reconnect, ReconnectLayer, Settings, WhileDisconnected,
};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

mod events;

/// The backend behind the `MakeService`: up or down, and every connection it made.
#[derive(Clone, Default)]
struct Backend(Arc<BackendInner>);

#[derive(Default)]
struct BackendInner {
    down: AtomicBool,
    panic: AtomicBool,
    connects: AtomicUsize,
    conns: Mutex<Vec<Arc<ConnState>>>,
}

#[derive(Default)]
struct ConnState {
    id: u64,
    dead: AtomicBool,
    /// Dead without telling `poll_ready` (only requests and heartbeats notice).
    silent: AtomicBool,
    /// Requests that reached this connection (counted in `call`, before the future runs).
    calls: AtomicUsize,
}

impl Backend {
    fn maker(&self) -> Maker {
        Maker(self.clone())
    }
    fn connects(&self) -> usize {
        self.0.connects.load(Ordering::SeqCst)
    }
    fn conn(&self, id: u64) -> Arc<ConnState> {
        self.0.conns.lock().unwrap()[id as usize - 1].clone()
    }
    fn set_down(&self, down: bool) {
        self.0.down.store(down, Ordering::SeqCst);
    }
}

struct Maker(Backend);

impl Service<&'static str> for Maker {
    type Response = Conn;
    type Error = io::Error;
    type Future = Ready<io::Result<Conn>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: &'static str) -> Self::Future {
        assert_eq!(target, "db:5432");
        let b = &self.0.0;
        b.connects.fetch_add(1, Ordering::SeqCst);
        if b.panic.load(Ordering::SeqCst) {
            panic!("the connector panicked");
        }
        if b.down.load(Ordering::SeqCst) {
            return ready(Err(io::Error::from(io::ErrorKind::ConnectionRefused)));
        }
        let mut conns = b.conns.lock().unwrap();
        let state = Arc::new(ConnState {
            id: conns.len() as u64 + 1,
            ..ConnState::default()
        });
        conns.push(state.clone());
        ready(Ok(Conn(state)))
    }
}

/// A connection as a service: answers its id; fails once dead.
#[derive(Clone)]
struct Conn(Arc<ConnState>);

impl Service<u32> for Conn {
    type Response = u64;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<u64>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.0.dead.load(Ordering::SeqCst) && !self.0.silent.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::Error::other("connection closed")));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u32) -> Self::Future {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let state = self.0.clone();
        Box::pin(async move {
            if request == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad request"));
            }
            // Request 2 takes a second, so a test can kill the connection under it.
            if request == 2 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if state.dead.load(Ordering::SeqCst) {
                return Err(io::Error::from(io::ErrorKind::ConnectionReset));
            }
            Ok(state.id)
        })
    }
}

fn exact_backoff() -> Backoff {
    Backoff::exponential(Duration::from_secs(1))
        .multiplier(1.6)
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

async fn ready_svc(svc: &mut Reconnect<Conn>) -> Result<(), BoxError> {
    poll_fn(|cx| Service::<u32>::poll_ready(svc, cx)).await
}

async fn call(svc: &mut Reconnect<Conn>, request: u32) -> Result<u64, BoxError> {
    ready_svc(svc).await?;
    svc.call(request).await
}

fn builder(backend: &Backend) -> palisade_reconnect::ReconnectBuilder<Maker, &'static str, Conn> {
    Reconnect::builder(backend.maker(), "db:5432").backoff(exact_backoff())
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_connect_per_generation() {
    let backend = Backend::default();
    let svc = builder(&backend).build().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(
            async move { call(&mut svc, 1).await.unwrap() },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 1);
    }
    assert_eq!(backend.connects(), 1);

    // Connection 1 dies: ten clones notice at once, one reconnect serves them all.
    backend.conn(1).dead.store(true, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(
            async move { call(&mut svc, 1).await.unwrap() },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 2);
    }
    assert_eq!(backend.connects(), 2);
    assert!(matches!(
        &*svc.state().borrow(),
        ConnectionState::Connected { generation: 2, .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_request_in_flight_on_a_dying_connection_fails_typed_and_others_pass_through() {
    let backend = Backend::default();
    let mut svc = builder(&backend).build().unwrap();
    ready_svc(&mut svc).await.unwrap();
    let in_flight = svc.call(2);
    let killer = {
        let backend = backend.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            backend.conn(1).dead.store(true, Ordering::SeqCst);
        }
    };
    let (result, ()) = tokio::join!(in_flight, killer);
    let e = result.unwrap_err();
    let lost = e.downcast_ref::<ConnectionLost>().expect("typed");
    assert_eq!(lost.generation(), 1);
    assert!(matches!(lost.cause(), Cause::Lost(_)));
    // An application error is not a lost connection: it passes through as it was.
    let mut other = svc.clone();
    let e = call(&mut other, 0).await.unwrap_err();
    assert_eq!(
        e.downcast_ref::<io::Error>().unwrap().kind(),
        io::ErrorKind::InvalidInput
    );
    // And the next request goes to a new connection.
    assert_eq!(call(&mut svc, 1).await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_rejects_while_disconnected_without_sending() {
    let backend = Backend::default();
    backend.set_down(true);
    let mut svc = builder(&backend)
        .while_disconnected(WhileDisconnected::FailFast)
        .build()
        .unwrap();
    // The first use starts the connect; it is refused.
    let e = ready_svc(&mut svc).await.unwrap_err();
    assert!(e.downcast_ref::<NotConnected>().is_some(), "{e}");
    tokio::task::yield_now().await;
    let e = ready_svc(&mut svc).await.unwrap_err();
    let not = e.downcast_ref::<NotConnected>().unwrap();
    assert!(
        matches!(not.cause(), Some(Cause::ConnectFailed(_))),
        "{not:?}"
    );
    assert!(not.next_attempt_at().is_some());
    assert!(e.to_string().contains("connection refused"), "{e}");
    // `call` with no connection is refused too, never sent.
    assert!(svc.call(1).await.unwrap_err().is::<NotConnected>());
    backend.set_down(false);
    svc.connected().await.unwrap();
    assert_eq!(call(&mut svc, 1).await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn wait_mode_holds_callers_until_the_backend_returns() {
    let backend = Backend::default();
    backend.set_down(true);
    let mut svc = builder(&backend).build().unwrap();
    let t0 = Instant::now();
    let waiter = {
        let mut svc = svc.clone();
        tokio::spawn(async move { call(&mut svc, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!waiter.is_finished());
    assert_eq!(backend.connects(), 2); // at 0 and 1 s; the third is due at 2.6 s
    backend.set_down(false);
    assert_eq!(waiter.await.unwrap().unwrap(), 1);
    assert_eq!(Instant::now() - t0, Duration::from_millis(2600));
    assert_eq!(call(&mut svc, 1).await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_poll_ready_dropped_loses_nothing() {
    let backend = Backend::default();
    backend.set_down(true);
    let mut svc = builder(&backend).build().unwrap();
    for _ in 0..3 {
        let r = tokio::time::timeout(Duration::from_millis(300), ready_svc(&mut svc)).await;
        assert!(r.is_err());
    }
    backend.set_down(false);
    assert_eq!(call(&mut svc, 1).await.unwrap(), 1);
    assert_eq!(backend.connects(), 2);
}

#[tokio::test(start_paused = true)]
async fn it_gives_up_after_max_attempts() {
    let backend = Backend::default();
    backend.set_down(true);
    let mut svc = builder(&backend).max_attempts(3).build().unwrap();
    let e = ready_svc(&mut svc).await.unwrap_err();
    let closed = e.downcast_ref::<Closed>().expect("closed");
    assert!(
        matches!(
            closed.reason(),
            CloseReason::GaveUp {
                attempts: 3,
                last: Cause::ConnectFailed(_)
            }
        ),
        "{closed:?}"
    );
    assert_eq!(backend.connects(), 3);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(backend.connects(), 3);
    assert!(svc.connected().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn close_stops_every_clone_and_the_task() {
    let backend = Backend::default();
    let mut a = builder(&backend).build().unwrap();
    let mut b = a.clone();
    assert_eq!(call(&mut a, 1).await.unwrap(), 1);
    a.close();
    tokio::task::yield_now().await;
    let e = ready_svc(&mut b).await.unwrap_err();
    assert!(matches!(
        e.downcast_ref::<Closed>().unwrap().reason(),
        CloseReason::Closed
    ));
    assert!(matches!(
        &*a.state().borrow(),
        ConnectionState::Closed(CloseReason::Closed)
    ));
    backend.conn(1).dead.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(backend.connects(), 1);
}

/// `Reconnect::close`'s doc: "`poll_ready` then fails with `Closed`". It only asked the
/// background task to stop, so until that task ran, a clone holding a copy of the connection
/// passed `poll_ready` and its request went out after `close()` (and `connected()` said Ok).
#[tokio::test(start_paused = true)]
async fn poll_ready_fails_at_once_after_close_without_waiting_for_the_task() {
    let backend = Backend::default();
    let mut a = builder(&backend).build().unwrap();
    let mut b = a.clone();
    assert_eq!(call(&mut a, 1).await.unwrap(), 1);
    assert_eq!(call(&mut b, 1).await.unwrap(), 1); // b holds a copy of connection 1
    a.close();
    // No yield: the task has not run since close().
    for svc in [&mut b, &mut a] {
        let e = ready_svc(svc).await.unwrap_err();
        let closed = e.downcast_ref::<Closed>().expect("Closed");
        assert!(matches!(closed.reason(), CloseReason::Closed), "{closed:?}");
    }
    let mut c = b.clone();
    assert!(
        ready_svc(&mut c).await.is_err(),
        "a clone made after close()"
    );
    let e = b.connected().await.unwrap_err();
    assert!(matches!(e.reason(), CloseReason::Closed), "{e:?}");
    tokio::task::yield_now().await;
    assert!(matches!(
        &*a.state().borrow(),
        ConnectionState::Closed(CloseReason::Closed)
    ));
    assert_eq!(backend.connects(), 1);
}

/// The README: "From the moment `close()` returns, `poll_ready` fails with `Closed` on every
/// clone ...: no request is sent after it." A clone whose `poll_ready` returned `Ok` before
/// `close()` still sent its request when `call` came after it (`call` used its copy of the
/// connection without looking at the closing state).
#[tokio::test(start_paused = true)]
async fn a_call_readied_before_close_sends_nothing_after_close() {
    let backend = Backend::default();
    let mut a = builder(&backend).build().unwrap();
    let mut b = a.clone();
    assert_eq!(call(&mut a, 1).await.unwrap(), 1);
    let conn = backend.conn(1);
    assert_eq!(conn.calls.load(Ordering::SeqCst), 1);
    // Both clones readied on connection 1, then one closes (no yield: the task has not run).
    ready_svc(&mut a).await.unwrap();
    ready_svc(&mut b).await.unwrap();
    let copies = Arc::strong_count(&conn);
    a.close();
    for svc in [&mut a, &mut b] {
        let result = svc.call(1).await;
        let e = result.expect_err("a request was sent after close() returned");
        let closed = e
            .downcast_ref::<Closed>()
            .expect("Closed, as poll_ready says");
        assert!(matches!(closed.reason(), CloseReason::Closed), "{closed:?}");
    }
    assert_eq!(
        conn.calls.load(Ordering::SeqCst),
        1,
        "a request reached the connection after close() returned"
    );
    // Each clone released its readied copy, and is un-ready: poll_ready fails with Closed.
    assert_eq!(
        Arc::strong_count(&conn),
        copies - 2,
        "the readied copies are dropped"
    );
    for svc in [&mut a, &mut b] {
        let e = ready_svc(svc).await.unwrap_err();
        assert!(e.is::<Closed>(), "{e}");
        let e = svc.call(1).await.unwrap_err();
        assert!(e.is::<Closed>(), "{e}");
    }
    // Once the task has run and closed: the reason is the published one, nothing was sent,
    // and no copy of the connection is left but the backend's own.
    tokio::task::yield_now().await;
    assert!(matches!(
        &*a.state().borrow(),
        ConnectionState::Closed(CloseReason::Closed)
    ));
    assert_eq!(conn.calls.load(Ordering::SeqCst), 1);
    assert_eq!(Arc::strong_count(&conn), 2, "the backend's and this test's");
    assert_eq!(backend.connects(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_clone_stops_the_task_and_releases_the_connection() {
    let backend = Backend::default();
    let mut svc = builder(&backend).build().unwrap();
    let state = svc.state();
    assert_eq!(call(&mut svc, 1).await.unwrap(), 1);
    let conn = backend.conn(1);
    let clone = svc.clone();
    drop(svc);
    tokio::task::yield_now().await;
    assert!(state.borrow().is_connected(), "a clone is still alive");
    drop(clone);
    tokio::task::yield_now().await;
    assert!(matches!(
        &*state.borrow(),
        ConnectionState::Closed(CloseReason::Closed)
    ));
    // The backend, the maker and every copy of the connection are gone.
    tokio::task::yield_now().await;
    assert_eq!(
        Arc::strong_count(&conn),
        2,
        "the test's and the backend's copies only"
    );
    assert_eq!(Arc::strong_count(&backend.0), 1, "the maker was dropped");
}

#[tokio::test(start_paused = true)]
async fn a_service_never_used_leaks_nothing() {
    let backend = Backend::default();
    let svc = builder(&backend).build().unwrap();
    let clone = svc.clone();
    drop(svc);
    drop(clone);
    assert_eq!(
        Arc::strong_count(&backend.0),
        1,
        "the unstarted task was dropped"
    );
    assert_eq!(backend.connects(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_connector_closes_with_task_stopped_instead_of_hanging() {
    let backend = Backend::default();
    backend.0.panic.store(true, Ordering::SeqCst);
    let mut svc = builder(&backend).build().unwrap();
    let e = ready_svc(&mut svc).await.unwrap_err();
    assert!(matches!(
        e.downcast_ref::<Closed>().unwrap().reason(),
        CloseReason::TaskStopped
    ));
}

#[tokio::test(start_paused = true)]
async fn a_silent_death_is_caught_by_the_heartbeat() {
    let backend = Backend::default();
    let probes = Arc::new(AtomicU64::new(0));
    let counted = probes.clone();
    let mut svc = builder(&backend)
        .heartbeat(
            Duration::from_secs(10),
            Duration::from_secs(1),
            move |mut conn: Conn| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move { conn.call(1).await.map(drop) }
            },
        )
        .build()
        .unwrap();
    assert_eq!(call(&mut svc, 1).await.unwrap(), 1);
    let conn = backend.conn(1);
    conn.silent.store(true, Ordering::SeqCst);
    conn.dead.store(true, Ordering::SeqCst);
    // poll_ready can't tell; the heartbeat at 10 s does.
    let t0 = Instant::now();
    let mut state = svc.state();
    state
        .wait_for(|s| matches!(s, ConnectionState::Connected { generation: 2, .. }))
        .await
        .unwrap();
    assert_eq!(Instant::now() - t0, Duration::from_secs(10));
    assert_eq!(probes.load(Ordering::SeqCst), 1);
    assert_eq!(call(&mut svc, 1).await.unwrap(), 2);
}

/// `heartbeat`'s doc: the next probe starts `interval` after the previous one answered, not
/// every `interval` (the period is `interval` plus the probe's time). A probe that takes 3 s
/// with a 10 s interval starts at 10 s, 23 s, 36 s after connecting (not 10, 20, 30, 40).
#[tokio::test(start_paused = true)]
async fn heartbeat_probes_start_an_interval_after_the_previous_probe_answered() {
    let backend = Backend::default();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let seen = starts.clone();
    let svc = builder(&backend)
        .heartbeat(
            Duration::from_secs(10),
            Duration::from_secs(5),
            move |_conn: Conn| {
                seen.lock().unwrap().push(Instant::now());
                async {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Ok::<_, io::Error>(())
                }
            },
        )
        .build()
        .unwrap();
    let t0 = Instant::now();
    svc.connected().await.unwrap();
    assert_eq!(Instant::now(), t0, "the connector answers at once");
    tokio::time::sleep(Duration::from_secs(45)).await;
    let offsets: Vec<Duration> = starts.lock().unwrap().iter().map(|t| *t - t0).collect();
    assert_eq!(
        offsets,
        [10, 23, 36].map(Duration::from_secs),
        "probe starts"
    );
    assert!(matches!(
        &*svc.state().borrow(),
        ConnectionState::Connected { generation: 1, .. }
    ));
    assert_eq!(backend.connects(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_on_connect_hook_runs_before_any_clone_sees_the_connection() {
    let backend = Backend::default();
    let hooked = Arc::new(Mutex::new(Vec::new()));
    let seen = hooked.clone();
    let mut svc = builder(&backend)
        .on_connect(move |conn: Conn| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(conn.0.id);
                if conn.0.id == 2 {
                    return Err(io::Error::other("auth failed"));
                }
                Ok::<_, io::Error>(conn)
            }
        })
        .stable_after(Duration::ZERO)
        .build()
        .unwrap();
    assert_eq!(call(&mut svc, 1).await.unwrap(), 1);
    backend.conn(1).dead.store(true, Ordering::SeqCst);
    // Connection 2 fails its hook (never used); connection 3 serves, after the 1 s backoff.
    assert_eq!(call(&mut svc, 1).await.unwrap(), 3);
    assert_eq!(*hooked.lock().unwrap(), [1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn the_layer_builds_a_reconnecting_service() {
    let backend = Backend::default();
    let settings = Settings::builder()
        .backoff(exact_backoff())
        .while_disconnected(WhileDisconnected::Wait)
        .build()
        .unwrap();
    let layer = ReconnectLayer::with_settings("db:5432", settings);
    let mut svc: Reconnect<Conn> = layer.layer(backend.maker());
    assert_eq!(call(&mut svc, 1).await.unwrap(), 1);
    backend.conn(1).dead.store(true, Ordering::SeqCst);
    assert_eq!(call(&mut svc, 1).await.unwrap(), 2);
    let e = Settings::builder()
        .connect_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "connect_timeout");
}

#[tokio::test(start_paused = true)]
async fn reconnect_on_request_replaces_the_connection() {
    let backend = Backend::default();
    let mut svc = builder(&backend).build().unwrap();
    assert_eq!(call(&mut svc, 1).await.unwrap(), 1);
    svc.reconnect();
    assert_eq!(call(&mut svc, 1).await.unwrap(), 2);
}

/// `state()`'s doc: a `watch` receiver holds only the latest state. The task publishes
/// `Connecting` and `Connected` in one poll when the connect completes at once, so a watcher
/// never sees `Connecting`; the `tracing` events (one per change) have every state.
#[tokio::test(start_paused = true)]
async fn a_state_watcher_sees_the_latest_state_and_the_tracing_events_every_change() {
    let events = events::record();
    let backend = Backend::default();
    let svc = builder(&backend).build().unwrap();
    let mut rx = svc.state();
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while rx.changed().await.is_ok() {
            let name = rx.borrow_and_update().name();
            seen.push(name);
            if name == "closed" {
                break;
            }
        }
        seen
    });
    svc.connected().await.unwrap();
    svc.close();
    assert_eq!(watcher.await.unwrap(), ["connected", "closed"]);
    assert_eq!(events.names(), ["connecting", "connected", "closed"]);
}

/// `state()`'s doc on who publishes `Closed`: `close()` on a service whose task was never
/// spawned publishes it before returning; once a `poll_ready` has spawned the task, `close()`
/// returns with the state unchanged (`Idle`, though `poll_ready` fails with `Closed` at once)
/// and the task publishes `Closed` when it runs.
#[tokio::test(start_paused = true)]
async fn close_publishes_closed_itself_only_when_the_task_was_never_spawned() {
    let backend = Backend::default();

    // Never used: `Closed` is published by `close()` itself.
    let unused = builder(&backend).build().unwrap();
    let state = unused.state();
    unused.close();
    assert!(matches!(
        &*state.borrow(),
        ConnectionState::Closed(CloseReason::Closed)
    ));

    // Spawned by `poll_ready` (pending: the task has not run), then closed.
    let mut svc = builder(&backend).build().unwrap();
    let mut state = svc.state();
    let first = poll_fn(|cx| Poll::Ready(Service::<u32>::poll_ready(&mut svc, cx))).await;
    assert!(first.is_pending(), "the task has not connected yet");
    svc.close();
    assert!(
        matches!(&*state.borrow_and_update(), ConnectionState::Idle),
        "close() published nothing: the spawned task will"
    );
    let e = ready_svc(&mut svc).await.unwrap_err();
    assert!(e.is::<Closed>(), "{e}");
    // The task runs (no time passes) and publishes `Closed` without an attempt.
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(1), state.changed())
        .await
        .expect("the task published")
        .unwrap();
    assert_eq!(Instant::now(), t0);
    assert!(matches!(
        &*state.borrow_and_update(),
        ConnectionState::Closed(CloseReason::Closed)
    ));
    assert_eq!(backend.connects(), 0);
}

/// The state diagram: giving up goes to `Closed(GaveUp)` straight from `Connecting` (the last
/// failed attempt) or from `Connected` (a flap), never through `Disconnected`; `close()` goes
/// straight from `Connected` (or `Connecting`) to `Closed`.
#[tokio::test(start_paused = true)]
async fn closed_is_reached_from_connecting_and_connected_without_disconnected() {
    let events = events::record();

    // The last attempt fails: Connecting -> Closed(GaveUp).
    let backend = Backend::default();
    backend.set_down(true);
    let mut svc = builder(&backend).max_attempts(2).build().unwrap();
    assert!(ready_svc(&mut svc).await.is_err());
    assert!(matches!(
        &*svc.state().borrow(),
        ConnectionState::Closed(CloseReason::GaveUp { attempts: 2, .. })
    ));
    assert_eq!(
        events.names(),
        ["connecting", "disconnected", "connecting", "closed"]
    );
    drop(svc);

    // A connection lost before `stable_after`, the last attempt allowed: Connected ->
    // Closed(GaveUp).
    let backend = Backend::default();
    let mut svc = builder(&backend).max_attempts(1).build().unwrap();
    assert_eq!(call(&mut svc, 1).await.unwrap(), 1);
    backend.conn(1).dead.store(true, Ordering::SeqCst);
    let e = ready_svc(&mut svc).await.unwrap_err();
    assert!(
        matches!(
            e.downcast_ref::<Closed>().expect("Closed").reason(),
            CloseReason::GaveUp {
                attempts: 1,
                last: Cause::Lost(_)
            }
        ),
        "{e:?}"
    );
    assert_eq!(events.names()[4..], ["connecting", "connected", "closed"]);
    drop(svc);
}

#[test]
fn the_default_classifier_sees_lost_connections_inside_io_errors() {
    use palisade_reconnect::is_connection_error;
    let reset = io::Error::from(io::ErrorKind::ConnectionReset);
    assert!(is_connection_error(&reset));
    assert!(!is_connection_error(&io::Error::from(
        io::ErrorKind::InvalidInput
    )));
    // A reconnecting stream's own error (an idle timeout: kind TimedOut) under a service.
    let nested = io::Error::new(io::ErrorKind::TimedOut, lost_error());
    assert!(is_connection_error(&nested));
}

/// A `ConnectionLost`, as a stream below a service would return it.
fn lost_error() -> ConnectionLost {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let mut stream = palisade_reconnect::ReconnectingStream::builder(|| async {
            let (client, server) = tokio::io::duplex(16);
            drop(server);
            Ok::<_, io::Error>(client)
        })
        .build()
        .unwrap();
        let mut buf = [0u8; 1];
        let e = tokio::io::AsyncReadExt::read(&mut stream, &mut buf)
            .await
            .unwrap_err();
        e.into_inner()
            .unwrap()
            .downcast::<ConnectionLost>()
            .map(|b| *b)
            .unwrap()
    })
}

#[test]
fn heartbeat_knobs_are_validated() {
    let backend = Backend::default();
    let e = builder(&backend)
        .heartbeat(Duration::ZERO, Duration::from_secs(1), |_c: Conn| async {
            Ok::<_, io::Error>(())
        })
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "heartbeat interval");
}

#[test]
fn outside_a_runtime_poll_ready_fails_with_a_clear_error() {
    let backend = Backend::default();
    let mut svc = builder(&backend).build().unwrap();
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let Poll::Ready(Err(e)) = Service::<u32>::poll_ready(&mut svc, &mut cx) else {
        panic!("expected an error");
    };
    assert!(e.to_string().contains("no tokio runtime"), "{e}");
}

#[test]
fn public_types_are_send_and_sync() {
    fn both<T: Send + Sync>() {}
    both::<Reconnect<Conn>>();
    both::<ConnectionLost>();
    both::<NotConnected>();
    both::<Closed>();
    both::<ReconnectLayer<&'static str>>();
}
