//! Concurrency models of the shared connect (see docs/testing.md for how they run): however
//! many clones wait or report the connection dead at once, the background task connects once
//! per generation, and every waiter is woken with that generation's connection, also a waiter
//! in a slot that a dropped clone freed; and once `close()` has returned, no clone's
//! `poll_ready` passes and no clone's `call` sends (even one readied before the close),
//! whether or not the task has run since.
//!
//! The task runs on a thread of its own through `spawn_with`, and only that thread enters a
//! tokio runtime, so that the attempt's deadline timer can be created; it never fires (loom
//! has no time), and the zero backoff never sleeps. The test's own bookkeeping (connect counts,
//! kill switches, the task's join handle) uses std types on purpose: only the crate's protocol
//! is explored. Even so a model takes about 40 loom steps per thread (three threads: two clones
//! and the task), so the models run with at most 2 preemptions: with 3, the first explores
//! 600,000 executions and the second runs for more than ten minutes. (Loom runs its threads on one OS thread,
//! so tokio's thread-local context is shared: one `enter` at a time keeps its guards nested.)

use std::future::{Future, Ready, poll_fn, ready};
use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use palisade_core::sync::{assert_explored, block_on, model_with_preemptions, thread};
use palisade_reconnect::{Backoff, Closed, Reconnect};
use tower_service::Service;

fn runtime() -> Arc<tokio::runtime::Runtime> {
    Arc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap(),
    )
}

/// Counts connects; each connection's service answers its generation and can be killed, or
/// saturated (its `poll_ready` stays pending, and never wakes).
#[derive(Clone)]
struct Maker {
    connects: Arc<AtomicU64>,
    kill_switches: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    saturations: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

#[derive(Clone)]
struct Conn {
    id: u64,
    dead: Arc<AtomicBool>,
    saturated: Arc<AtomicBool>,
}

impl Service<()> for Maker {
    type Response = Conn;
    type Error = io::Error;
    type Future = Ready<io::Result<Conn>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        let id = self.connects.fetch_add(1, Ordering::SeqCst) + 1;
        let dead = Arc::new(AtomicBool::new(false));
        let saturated = Arc::new(AtomicBool::new(false));
        self.kill_switches.lock().unwrap().push(dead.clone());
        self.saturations.lock().unwrap().push(saturated.clone());
        ready(Ok(Conn {
            id,
            dead,
            saturated,
        }))
    }
}

impl Service<()> for Conn {
    type Response = u64;
    type Error = io::Error;
    type Future = Ready<io::Result<u64>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.dead.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::Error::other("closed")));
        }
        if self.saturated.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        ready(Ok(self.id))
    }
}

type Task = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

type Driver = Arc<Mutex<Option<thread::JoinHandle<()>>>>;

/// A service whose background task runs on a thread of its own (joined by `finish`).
fn service(rt: &Arc<tokio::runtime::Runtime>) -> (Reconnect<Conn>, Maker, Driver) {
    let maker = Maker {
        connects: Arc::new(AtomicU64::new(0)),
        kill_switches: Arc::new(Mutex::new(Vec::new())),
        saturations: Arc::new(Mutex::new(Vec::new())),
    };
    let driver = Arc::new(Mutex::new(None));
    let (rt2, slot) = (rt.clone(), driver.clone());
    let svc = Reconnect::builder(maker.clone(), ())
        .backoff(Backoff::constant(Duration::ZERO).build().unwrap())
        .spawn_with(move |task: Task| {
            let rt = rt2.clone();
            let handle = thread::spawn(move || {
                let _enter = rt.enter();
                block_on(task);
            });
            *slot.lock().unwrap() = Some(handle);
        })
        .build()
        .unwrap();
    (svc, maker, driver)
}

/// Waits until ready and makes one call: the generation that served it.
fn use_once(svc: &mut Reconnect<Conn>) -> u64 {
    block_on(async {
        poll_fn(|cx| svc.poll_ready(cx)).await.expect("ready");
        svc.call(()).await.expect("served")
    })
}

/// Drops the last handles and joins the task, which must stop.
fn finish(svcs: Vec<Reconnect<Conn>>, driver: &Driver) {
    drop(svcs);
    let handle = driver.lock().unwrap().take().expect("the task was started");
    handle.join().unwrap();
}

#[test]
fn clones_waiting_for_the_first_connection_share_one_connect() {
    assert_explored(model_with_preemptions(2, || {
        let rt = runtime();
        let (mut svc, maker, driver) = service(&rt);
        // Two clones wait for the first connection: one on a thread, one here.
        let other = {
            let mut svc = svc.clone();
            thread::spawn(move || {
                let id = use_once(&mut svc);
                (id, svc)
            })
        };
        assert_eq!(use_once(&mut svc), 1, "served by generation 1");
        let (id, other) = other.join().unwrap();
        assert_eq!(id, 1, "every waiter is served by generation 1");
        let svcs = vec![svc, other];
        assert_eq!(maker.connects.load(Ordering::SeqCst), 1, "one connect");
        finish(svcs, &driver);
    }));
}

#[test]
fn clones_reporting_one_death_at_once_cause_one_reconnect() {
    assert_explored(model_with_preemptions(2, || {
        let rt = runtime();
        let (mut svc, maker, driver) = service(&rt);
        assert_eq!(use_once(&mut svc), 1);
        // Both clones hold a copy of connection 1; it dies under them.
        let a = svc.clone();
        let b = svc.clone();
        maker.kill_switches.lock().unwrap()[0].store(true, Ordering::SeqCst);
        // One clone on a thread, one here, both find it dead and reconnect.
        let other = thread::spawn(move || {
            let mut a = a;
            let id = use_once(&mut a);
            (id, a)
        });
        let mut b = b;
        assert_eq!(use_once(&mut b), 2, "served by generation 2");
        let (id, a) = other.join().unwrap();
        assert_eq!(id, 2, "every clone is served by generation 2");
        let svcs = vec![svc, a, b];
        assert_eq!(maker.connects.load(Ordering::SeqCst), 2, "one reconnect");
        finish(svcs, &driver);
    }));
}

#[test]
fn a_clone_waiting_in_a_slot_a_dropped_clone_freed_is_woken() {
    assert_explored(model_with_preemptions(2, || {
        let rt = runtime();
        let (mut svc, maker, driver) = service(&rt);
        assert_eq!(use_once(&mut svc), 1);
        // Connection 1 is saturated: clones that poll it wait for a change of connection.
        maker.saturations.lock().unwrap()[0].store(true, Ordering::SeqCst);
        let (a, c) = (svc.clone(), svc.clone());
        // On a thread: a clone registers and is dropped (freeing its slot), then another
        // replaces the connection.
        let other = thread::spawn(move || {
            let mut a = a;
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(a.poll_ready(&mut cx).is_pending());
            drop(a);
            c.reconnect();
            c
        });
        // Here a clone waits, in a new slot or the freed one, until the replacement is up.
        let mut b = svc.clone();
        assert_eq!(use_once(&mut b), 2, "woken and served by generation 2");
        let c = other.join().unwrap();
        assert_eq!(maker.connects.load(Ordering::SeqCst), 2, "one reconnect");
        finish(vec![svc, b, c], &driver);
    }));
}

#[test]
fn once_close_returns_no_clone_passes_poll_ready() {
    assert_explored(model_with_preemptions(2, || {
        let rt = runtime();
        let (mut svc, _maker, driver) = service(&rt);
        assert_eq!(use_once(&mut svc), 1);
        // A clone holding a copy of connection 1 polls while another thread closes: ready or
        // closed, whichever comes first; once `close()` has returned, closed, whether or not
        // the task has run since.
        let mut b = svc.clone();
        let closer = thread::spawn(move || {
            svc.close();
            svc
        });
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match b.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => assert!(e.is::<Closed>(), "{e}"),
            Poll::Pending => panic!("pending on a connection that is up"),
        }
        let svc = closer.join().unwrap();
        match b.poll_ready(&mut cx) {
            Poll::Ready(Err(e)) => assert!(e.is::<Closed>(), "{e}"),
            other => panic!("poll_ready after close() returned: {other:?}"),
        }
        finish(vec![svc, b], &driver);
    }));
}

#[test]
fn a_call_readied_before_close_is_sent_before_it_or_not_at_all() {
    assert_explored(model_with_preemptions(2, || {
        let rt = runtime();
        let (mut svc, _maker, driver) = service(&rt);
        assert_eq!(use_once(&mut svc), 1);
        // Two clones readied on connection 1 before the close: one calls while another thread
        // closes (sent, or closed without sending), the other once `close()` has returned
        // (closed, whether or not the task has run since).
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let (mut b, mut c) = (svc.clone(), svc.clone());
        assert!(matches!(b.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        assert!(matches!(c.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        let closer = thread::spawn(move || {
            svc.close();
            svc
        });
        match block_on(b.call(())) {
            Ok(id) => assert_eq!(id, 1),
            Err(e) => assert!(e.is::<Closed>(), "{e}"),
        }
        let svc = closer.join().unwrap();
        match block_on(c.call(())) {
            Err(e) => assert!(e.is::<Closed>(), "{e}"),
            Ok(id) => panic!("a request was sent after close() returned: {id}"),
        }
        finish(vec![svc, b, c], &driver);
    }));
}
