//! Regressions, one per bug the review of palisade-reconnect found (each failed before its fix):
//! a clone parked in the old connection's `poll_ready` missed the new generation; a `state()`
//! borrow held across `reconnect()` deadlocked with the task's publish; a task dropped before its
//! first poll left callers waiting; dropped waiting clones kept their wakers until the next state
//! change. One finding (a second `call` after one `poll_ready`) became the documented contract.
//! A later audit found that a zero backoff with a connector failing without pending made the
//! stream's poll and the service's task retry in a loop that never returned to the runtime; its
//! other finding, waiter slots piling up while a connection stays up, is tested in `alloc.rs`.
//! A third audit found a `state()` borrow held on a thread that publishes (a stream's drop,
//! `close()` or `reconnect()`; a never-started service's `close()` or last drop) deadlocking on
//! the channel's own lock: tokio's documented rule, now stated in the README; the service's side
//! that is safe is pinned below.
//! A fourth audit, of the stream, found lost wakers after a split (a half waiting out the backoff
//! or on the attempt that the other half polled last; a read waiting on an attempt that
//! `close()` or `reconnect()` dropped), a flush or shutdown reporting success (or hanging) for
//! data lost with the connection, a failed shutdown leaving the reader waiting, and a flush
//! restarting the idle clock: those regressions are in `stream.rs`, beside its helpers.

use std::future::{Ready, poll_fn, ready};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_reconnect::{Backoff, ConnectionState, NotConnected, Reconnect, ReconnectingStream};
use tower_service::Service;

#[derive(Default)]
struct Gate {
    id: usize,
    /// poll_ready stays Pending (saturated: e.g. a concurrency limit full of hung requests).
    saturated: AtomicBool,
    calls: AtomicUsize,
}

#[derive(Clone)]
struct Conn(Arc<Gate>);

impl Service<u32> for Conn {
    type Response = usize;
    type Error = io::Error;
    type Future = Ready<io::Result<usize>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.0.saturated.load(Ordering::SeqCst) {
            return Poll::Pending; // (would be woken when a slot frees, which never happens)
        }
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: u32) -> Self::Future {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        ready(Ok(self.0.id))
    }
}

#[derive(Clone, Default)]
struct Maker(Arc<std::sync::Mutex<Vec<Arc<Gate>>>>);
impl Service<()> for Maker {
    type Response = Conn;
    type Error = io::Error;
    type Future = Ready<io::Result<Conn>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: ()) -> Self::Future {
        let mut v = self.0.lock().unwrap();
        let g = Arc::new(Gate {
            id: v.len() + 1,
            ..Gate::default()
        });
        v.push(g.clone());
        ready(Ok(Conn(g)))
    }
}

/// A clone parked in the old connection's `poll_ready` is never told that `reconnect()` (or a
/// heartbeat) replaced it: it waits forever although generation 2 is up and ready.
#[tokio::test(start_paused = true)]
async fn a_clone_pending_in_the_old_connections_poll_ready_moves_to_the_new_generation() {
    let maker = Maker::default();
    let mut a = Reconnect::builder(maker.clone(), ()).build().unwrap();
    let b = a.clone();
    a.connected().await.unwrap();
    poll_fn(|cx| Service::<u32>::poll_ready(&mut a, cx))
        .await
        .unwrap();
    maker.0.lock().unwrap()[0]
        .saturated
        .store(true, Ordering::SeqCst);
    let waiter = tokio::spawn(async move {
        poll_fn(|cx| Service::<u32>::poll_ready(&mut a, cx))
            .await
            .unwrap();
        a.call(1).await.unwrap()
    });
    tokio::task::yield_now().await;
    b.reconnect(); // the owner knows better: replace the saturated connection
    let mut st = b.state();
    st.wait_for(|s| matches!(s, ConnectionState::Connected { generation: 2, .. }))
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(3600), waiter).await;
    assert!(
        r.is_ok(),
        "clone still parked on generation 1 an hour after generation 2 came up"
    );
}

/// The reviewer's finding was that a second `call` after one `poll_ready` reached the inner
/// service. That is now the documented contract (tower's: one `poll_ready` per `call`, and the
/// connection's service decides what a call without it does): tracking readiness per call cost
/// a store and a dependent load on every request, 8 % of the layer's overhead. What stays: a
/// `call` on a handle that has no connection at all is refused with `NotConnected`, never sent
/// and never a panic.
#[tokio::test]
async fn call_without_a_connection_is_refused_and_a_second_call_goes_to_the_connection() {
    let maker = Maker::default();
    let mut a = Reconnect::builder(maker.clone(), ()).build().unwrap();
    let refused = a.call(0).await.unwrap_err();
    assert!(refused.is::<NotConnected>(), "{refused}");
    assert!(maker.0.lock().unwrap().is_empty(), "no connection was made");
    poll_fn(|cx| Service::<u32>::poll_ready(&mut a, cx))
        .await
        .unwrap();
    a.call(1).await.unwrap();
    a.call(2).await.unwrap();
    let calls = maker.0.lock().unwrap()[0].calls.load(Ordering::SeqCst);
    assert_eq!(calls, 2, "both calls reached the connection's service");
}

/// Lock-order inversion: the driver publishes on the watch channel while holding the core
/// mutex; a user holding a `borrow()` of `state()` who calls into the service takes them in the
/// other order.
#[test]
fn holding_a_state_borrow_while_calling_reconnect_does_not_deadlock() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let maker = Maker::default();
            let a: Reconnect<Conn> = Reconnect::builder(maker.clone(), ())
                .stable_after(Duration::ZERO)
                .build()
                .unwrap();
            let b = a.clone();
            a.connected().await.unwrap();
            let rx = a.state();
            let seen = rx.borrow(); // e.g. `if rx.borrow().is_connected() { ... }`
            if seen.is_connected() {
                b.reconnect(); // another clone (or the heartbeat) reports the loss: the driver runs
                std::thread::sleep(Duration::from_millis(300));
                a.reconnect(); // blocks on the core mutex held by the driver, which waits for `seen`
            }
            drop(seen);
        });
        done_tx.send(()).unwrap();
    });
    assert!(
        done_rx.recv_timeout(Duration::from_secs(5)).is_ok(),
        "deadlocked"
    );
}

/// README: "A service publishes from its background task", so a borrow held on the thread that
/// closes it only delays the task. The audit that followed the one above found the other case
/// deadlocking: a thread that publishes while it holds a borrow of the same channel waits for its
/// own read lock (tokio's lock is not reentrant). That happens wherever the crate publishes from
/// the caller's thread (every change of a stream; a service's `Closed` before its task started,
/// or when its runtime is dropped); it cannot be detected or deferred without changing what
/// `state()` returns or making `close()` asynchronous, so the README states the rule. This pins
/// the side that is promised: `close()`, `reconnect()` and dropping every clone of a started
/// service, each with a borrow held on the calling thread.
#[test]
fn holding_a_state_borrow_while_closing_a_started_service_does_not_deadlock() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let maker = Maker::default();
            let a: Reconnect<Conn> = Reconnect::builder(maker, ()).build().unwrap();
            let b = a.clone();
            a.connected().await.unwrap();
            let mut rx = a.state();
            let seen = rx.borrow();
            if seen.is_connected() {
                a.reconnect();
                a.close();
                drop(a);
                drop(b); // the last clone: the task stops and publishes `Closed`, after `seen`
            }
            drop(seen);
            rx.wait_for(ConnectionState::is_closed).await.unwrap();
        });
        done_tx.send(()).unwrap();
    });
    assert!(
        done_rx.recv_timeout(Duration::from_secs(5)).is_ok(),
        "deadlocked"
    );
}

/// README: "If the task panics, or its runtime shuts down, the service closes with
/// `CloseReason::TaskStopped` instead of leaving callers waiting." Not if the runtime shuts
/// down before the task's first poll: the `StopGuard` is created inside `run()`.
#[test]
fn a_runtime_dropped_before_the_task_ran_closes_instead_of_leaving_callers_waiting() {
    let maker = Maker::default();
    let mut a = Reconnect::builder(maker, ()).build().unwrap();
    let rt1 = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt1.block_on(async {
        // First use: spawns the driver, which has not run yet when this returns Pending.
        let mut once = false;
        poll_fn(|cx| {
            if once {
                return Poll::Ready(());
            }
            once = true;
            assert!(Service::<u32>::poll_ready(&mut a, cx).is_pending());
            Poll::Ready(())
        })
        .await;
    });
    drop(rt1); // the driver is dropped without ever being polled
    let rt2 = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt2.block_on(async {
        println!("state: {:?}", *a.state().borrow());
        let r = tokio::time::timeout(Duration::from_secs(2), a.connected()).await;
        assert!(
            r.is_ok(),
            "connected() hangs; state stays {:?}",
            *a.state().borrow()
        );
    });
}

#[tokio::test(start_paused = true)]
async fn dropped_waiting_clones_release_their_wakers() {
    struct Count;
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {}
    }
    #[derive(Clone)]
    struct Down;
    impl Service<()> for Down {
        type Response = Conn;
        type Error = io::Error;
        type Future = Ready<io::Result<Conn>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: ()) -> Self::Future {
            ready(Err(io::ErrorKind::ConnectionRefused.into()))
        }
    }
    let svc = Reconnect::builder(Down, ()).build().unwrap();
    let _ = tokio::time::timeout(Duration::from_millis(1), svc.connected()).await; // start it
    svc.state()
        .wait_for(|s| matches!(s, ConnectionState::Disconnected { .. }))
        .await
        .unwrap(); // backoff 1 s
    let w = Arc::new(Count);
    let waker = std::task::Waker::from(w.clone());
    for _ in 0..10_000 {
        let mut c = svc.clone();
        assert!(Service::<u32>::poll_ready(&mut c, &mut Context::from_waker(&waker)).is_pending());
        drop(c);
    }
    assert!(
        Arc::strong_count(&w) < 100,
        "{} wakers retained by dropped clones",
        Arc::strong_count(&w)
    );
}

/// A connector that fails at once (no `Pending`) until another task of the runtime has run: it
/// spawns that task at its first attempt. After `GIVE_UP` attempts it succeeds anyway, so that a
/// loop that never yields ends, and the test fails on the attempt count instead of hanging.
#[derive(Clone, Default)]
struct UntilOthersRun {
    attempts: Arc<AtomicUsize>,
    other_ran: Arc<AtomicBool>,
}

impl UntilOthersRun {
    const GIVE_UP: usize = 10_000;

    fn attempt(&self) -> io::Result<()> {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        if n == 1 {
            let other_ran = self.other_ran.clone();
            tokio::spawn(async move { other_ran.store(true, Ordering::SeqCst) });
        }
        if self.other_ran.load(Ordering::SeqCst) || n >= Self::GIVE_UP {
            Ok(())
        } else {
            Err(io::ErrorKind::ConnectionRefused.into())
        }
    }
}

impl Service<()> for UntilOthersRun {
    type Response = Conn;
    type Error = io::Error;
    type Future = Ready<io::Result<Conn>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: ()) -> Self::Future {
        ready(self.attempt().map(|()| Conn(Arc::default())))
    }
}

fn zero_backoff() -> Backoff {
    Backoff::constant(Duration::ZERO).build().unwrap()
}

/// README: "The next operation connects, staying pending through failed attempts and backoff"
/// (and a zero backoff does not spin). With a zero backoff and a connector that fails without
/// pending, the stream retried inside one poll and never returned to the runtime: on a
/// current-thread runtime no other task, timeout or wake-up could run. Now it makes one attempt
/// per poll.
#[tokio::test(start_paused = true)]
async fn a_zero_backoff_stream_yields_to_the_runtime_between_attempts() {
    let connector = UntilOthersRun::default();
    let mut stream = ReconnectingStream::builder({
        let connector = connector.clone();
        move || ready(connector.attempt().map(|()| tokio::io::duplex(64).0))
    })
    .backoff(zero_backoff())
    .build()
    .unwrap();
    stream.connect().await.unwrap();
    let attempts = connector.attempts.load(Ordering::SeqCst);
    assert_eq!(
        attempts, 2,
        "{attempts} attempts before the other task ran (one fails, the poll yields, one succeeds)"
    );
}

/// README: "A zero backoff does not spin", for the service's background task: with a zero
/// backoff and a connector that fails without pending, it retried in a loop that never
/// returned to the runtime. Now it yields between attempts.
#[tokio::test(start_paused = true)]
async fn a_zero_backoff_service_task_yields_to_the_runtime_between_attempts() {
    let maker = UntilOthersRun::default();
    let svc = Reconnect::builder(maker.clone(), ())
        .backoff(zero_backoff())
        .build()
        .unwrap();
    svc.connected().await.unwrap();
    let attempts = maker.attempts.load(Ordering::SeqCst);
    assert_eq!(
        attempts, 2,
        "{attempts} attempts before the other task ran (one fails, the task yields, one succeeds)"
    );
}
