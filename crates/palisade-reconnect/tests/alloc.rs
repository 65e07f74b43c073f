//! Memory held by the shared state of a `Reconnect` and by a waiting `ReconnectingStream`,
//! counted by a thread-local counting allocator (allocation-counter, which this test binary
//! alone installs).

use std::future::{Ready, poll_fn, ready};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use palisade_reconnect::{Reconnect, ReconnectingStream};
use tokio::io::{AsyncRead, DuplexStream, ReadBuf};
use tower_service::Service;

/// A connection whose `poll_ready` stays pending while `saturated` (a concurrency limit, a full
/// HTTP/2 stream budget).
#[derive(Clone)]
struct Conn(Arc<AtomicBool>);

impl Service<u32> for Conn {
    type Response = ();
    type Error = io::Error;
    type Future = Ready<io::Result<()>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.0.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: u32) -> Self::Future {
        ready(Ok(()))
    }
}

#[derive(Clone)]
struct Maker(Arc<AtomicBool>);

impl Service<()> for Maker {
    type Response = Conn;
    type Error = io::Error;
    type Future = Ready<io::Result<Conn>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: ()) -> Self::Future {
        ready(Ok(Conn(self.0.clone())))
    }
}

#[test]
fn the_counter_sees_allocations() {
    let info = allocation_counter::measure(|| drop(std::hint::black_box(Box::new(7u64))));
    assert_eq!(info.count_total, 1);
}

/// README: "No leaks". A clone per request (tower's usual pattern) whose `poll_ready` meets a
/// saturated connection registers to be woken at the next change of connection; each dropped
/// clone left its slot behind until that change, so while the connection stayed up the slots
/// grew without bound (16 bytes per request). A dropped clone's slot is now reused.
#[tokio::test(start_paused = true)]
async fn dropped_clones_pending_on_a_live_connection_do_not_pile_up() {
    let saturated = Arc::new(AtomicBool::new(false));
    let mut svc = Reconnect::builder(Maker(saturated.clone()), ())
        .build()
        .unwrap();
    svc.connected().await.unwrap();
    poll_fn(|cx| Service::<u32>::poll_ready(&mut svc, cx))
        .await
        .unwrap();
    saturated.store(true, Ordering::SeqCst);
    let churn = |requests: usize| {
        for _ in 0..requests {
            let mut clone = svc.clone();
            let mut cx = Context::from_waker(Waker::noop());
            assert!(Service::<u32>::poll_ready(&mut clone, &mut cx).is_pending());
        }
    };
    churn(1_000); // allocations that stay, whatever the number of requests
    let info = allocation_counter::measure(|| churn(100_000));
    assert!(
        info.bytes_current < 1024,
        "{} bytes retained after 100,000 dropped clones ({info:?})",
        info.bytes_current
    );
}

/// A waker of its own task: no two are `will_wake` of each other.
struct Task;

impl Wake for Task {
    fn wake(self: Arc<Self>) {}
}

/// A stream waiting for a connection keeps the waker of each kind of operation's latest poll.
/// It kept every distinct waker that polled it until the next wake, so a read polled with a new
/// waker each time (re-created in a `select!` loop, or moved between tasks) while a connect
/// hung grew that list, and held every task, by one waker per poll.
#[tokio::test(start_paused = true)]
async fn a_read_polled_by_ever_new_wakers_while_waiting_to_connect_holds_one() {
    let mut stream = ReconnectingStream::builder(std::future::pending::<io::Result<DuplexStream>>)
        .build()
        .unwrap();
    let mut churn = |polls: usize| {
        for _ in 0..polls {
            let waker = Waker::from(Arc::new(Task));
            let mut cx = Context::from_waker(&waker);
            let mut buf = [0u8; 4];
            let mut buf = ReadBuf::new(&mut buf);
            assert!(
                Pin::new(&mut stream)
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            );
        }
    };
    churn(1_000); // the attempt in flight and its timer, allocated once
    let info = allocation_counter::measure(|| churn(100_000));
    assert!(
        info.bytes_current < 1024,
        "{} bytes retained after 100,000 polls ({info:?})",
        info.bytes_current
    );
}
