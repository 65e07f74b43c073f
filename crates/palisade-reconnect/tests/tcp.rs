//! Real sockets on 127.0.0.1 (ephemeral ports): a `ReconnectingStream` and a `Reconnect` service
//! against servers that are killed and restarted on the same port, a connect that hangs on a full
//! accept queue, and a read cancelled while the stream reconnects.
//!
//! Nothing here waits on the wall clock for something to happen: the tests await channels, the
//! sockets themselves, or `yield_now` in bounded loops. Tests that need time to pass run on
//! tokio's paused clock. Every await that only a bug could leave hanging sits under [`guard`], a
//! generous real-time limit that turns a hang into a failure instead of a stuck test run.
//!
//! The connection state is recorded by [`StateLog`], which sees *every* published state, not
//! only the latest one a `watch::Receiver` would show when next polled (see its docs).

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use palisade_reconnect::{
    Backoff, Cause, CloseReason, Closed, ConnectionLost, ConnectionState, ReconnectingStream,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The real-time limit on an await that only a bug would leave pending. It never elapses in a
/// passing run (everything it guards completes in microseconds on loopback).
const GUARD: Duration = Duration::from_secs(10);

/// `fut`, or a panic naming `what` if it has not finished within [`GUARD`] of real time.
///
/// Not for tests on the paused clock (there the limit would elapse at once).
async fn guard<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(out) => out,
        Err(_) => panic!("hung: {what}"),
    }
}

/// Polls `fut` exactly once and drops it: a `select!` or a `timeout(Duration::ZERO, ..)` that
/// gives up on an operation after its first poll.
async fn poll_once_then_drop<F: Future>(fut: F) -> Poll<F::Output> {
    let mut fut = pin!(fut);
    poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

/// A policy with no real waiting in it: attempts back to back, the backoff reset by every
/// connection (`stable_after = 0`, gRPC's own rule).
fn no_wait_backoff() -> Backoff {
    Backoff::constant(Duration::ZERO).build().unwrap()
}

/// Every state a connection publishes, in order, with the (tokio) instant it was published.
///
/// A `watch::Receiver` keeps only the latest value: a collector task that awaits `changed()`
/// misses a state replaced before it runs, and some transitions always come in pairs within one
/// poll (a connect timeout publishes `Disconnected` and, since the next attempt is already due,
/// `Connecting` at once). So the log does not run as a task: its receiver's `changed()` future
/// is polled *inside its own waker*. `watch::Sender::send_replace` stores the value, releases
/// its lock, then wakes the receivers synchronously on the publishing thread; our waker polls
/// the future there and then, which reads the value just published and registers for the next
/// one before `publish` returns. The stream publishes under `&mut self` and the service under
/// its state mutex, so the wakes are serialized and the log is exact, on any runtime flavour.
struct StateLog {
    entries: Arc<Mutex<Vec<(Instant, ConnectionState)>>>,
    start: Instant,
    _watcher: Arc<Watcher>,
}

struct Watcher {
    future: Mutex<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Wake for Watcher {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let waker = Waker::from(Arc::clone(self));
        let mut future = self.future.lock().unwrap();
        let _ = future.as_mut().poll(&mut Context::from_waker(&waker));
    }
}

impl StateLog {
    /// Starts recording with the receiver's current value (subscribe before anything runs).
    fn new(mut rx: watch::Receiver<ConnectionState>) -> StateLog {
        let start = Instant::now();
        let first = rx.borrow_and_update().clone();
        let entries = Arc::new(Mutex::new(vec![(start, first)]));
        let log = Arc::clone(&entries);
        let future = async move {
            while rx.changed().await.is_ok() {
                let state = rx.borrow_and_update().clone();
                log.lock().unwrap().push((Instant::now(), state));
            }
        };
        let watcher = Arc::new(Watcher {
            future: Mutex::new(Box::pin(future)),
        });
        watcher.wake_by_ref(); // the first poll registers for the first change
        StateLog {
            entries,
            start,
            _watcher: watcher,
        }
    }

    /// The states so far, each as [`describe`] writes it.
    fn names(&self) -> Vec<String> {
        self.entries
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| describe(s))
            .collect()
    }

    /// The states so far with the time since the log started.
    fn timed(&self) -> Vec<(Duration, String)> {
        self.entries
            .lock()
            .unwrap()
            .iter()
            .map(|(at, s)| (at.duration_since(self.start), describe(s)))
            .collect()
    }

    fn last(&self) -> ConnectionState {
        self.entries.lock().unwrap().last().unwrap().1.clone()
    }
}

/// A state in a line: its name, the attempt or generation, the cause's kind.
fn describe(state: &ConnectionState) -> String {
    match state {
        ConnectionState::Idle => "idle".into(),
        ConnectionState::Connecting { attempt } => format!("connecting {attempt}"),
        ConnectionState::Connected { generation, .. } => format!("connected {generation}"),
        ConnectionState::Disconnected {
            cause, attempts, ..
        } => format!("disconnected {} attempts={attempts}", cause_kind(cause)),
        ConnectionState::Closed(CloseReason::GaveUp { attempts, last }) => {
            format!(
                "closed gave-up attempts={attempts} last={}",
                cause_kind(last)
            )
        }
        ConnectionState::Closed(reason) => format!("closed {reason}"),
        other => format!("{other:?}"),
    }
}

fn cause_kind(cause: &Cause) -> String {
    match cause {
        Cause::ConnectFailed(_) => "connect-failed".into(),
        Cause::ConnectTimedOut(d) => format!("timed-out {d:?}"),
        Cause::Lost(_) => "lost".into(),
        Cause::Eof => "eof".into(),
        Cause::Idle(d) => format!("idle {d:?}"),
        Cause::Heartbeat(_) => "heartbeat".into(),
        Cause::Requested => "requested".into(),
        other => format!("{other:?}"),
    }
}

/// The [`ConnectionLost`] an operation's error carries, or a panic showing the error.
fn connection_lost(e: &io::Error) -> &ConnectionLost {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<ConnectionLost>())
        .unwrap_or_else(|| panic!("expected a ConnectionLost, got {e:?}"))
}

/// What a server saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Its `n`th connection (from 1) was accepted.
    Accepted(usize),
    /// Connection `n` sent these bytes (echo mode) or this line (line mode, without `\n`).
    Data(usize, Vec<u8>),
}

#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "tower"), allow(dead_code))] // `Lines` and `Silent` serve the service tests
enum Mode {
    /// Echoes every byte back.
    Echo,
    /// Answers each line `l` with `"{tag}/{n} {l}\n"` (`n`: the connection's number), except
    /// the line `hang`, which it never answers.
    Lines(&'static str),
    /// Accepts and holds each connection, never reading or writing.
    Silent,
}

/// A server task: one listener, every connection in a `JoinSet` of the same task, so that
/// [`kill`](Server::kill) drops the listener *and* every accepted socket before it returns.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    seen: mpsc::UnboundedReceiver<Seen>,
    accepts: Arc<AtomicUsize>,
}

impl Server {
    /// On an ephemeral port.
    async fn start(mode: Mode) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Server::on(listener, mode)
    }

    /// On `port`, which a killed server held: tokio's listeners set `SO_REUSEADDR` on unix, so
    /// the old connections' `TIME_WAIT`/`FIN_WAIT2` sockets don't block the bind; if the bind
    /// still fails it is retried after a yield, a bounded number of times.
    async fn restart(port: u16, mode: Mode) -> Server {
        let mut last = None;
        for _ in 0..1_000 {
            match TcpListener::bind(("127.0.0.1", port)).await {
                Ok(listener) => return Server::on(listener, mode),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    last = Some(e);
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("bind 127.0.0.1:{port}: {e}"),
            }
        }
        panic!("port {port} stayed in use: {last:?}");
    }

    fn on(listener: TcpListener, mode: Mode) -> Server {
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = oneshot::channel();
        let (tx, seen) = mpsc::unbounded_channel();
        let accepts = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepts);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        let (socket, _) = accepted.unwrap();
                        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                        let _ = tx.send(Seen::Accepted(n));
                        conns.spawn(serve(socket, n, mode, tx.clone()));
                    }
                    // Reap finished connections so the set does not grow.
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            drop(listener);
            // Aborts every connection's task and waits until each is dropped (its socket
            // closed).
            conns.shutdown().await;
        });
        Server {
            addr,
            stop: Some(stop),
            task,
            seen,
            accepts,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// Stops the server and returns once its listener and every accepted socket are closed.
    async fn kill(mut self) -> mpsc::UnboundedReceiver<Seen> {
        let _ = self.stop.take().unwrap().send(());
        guard("killing the server", &mut self.task).await.unwrap();
        self.seen
    }

    /// The next thing the server saw.
    async fn next_seen(&mut self) -> Seen {
        guard("the server's next event", self.seen.recv())
            .await
            .unwrap()
    }
}

async fn serve(socket: TcpStream, n: usize, mode: Mode, seen: mpsc::UnboundedSender<Seen>) {
    match mode {
        Mode::Echo => {
            let mut socket = socket;
            let mut buf = vec![0; 64 * 1024];
            loop {
                let read = match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => read,
                };
                let _ = seen.send(Seen::Data(n, buf[..read].to_vec()));
                if socket.write_all(&buf[..read]).await.is_err() {
                    return;
                }
            }
        }
        Mode::Lines(tag) => {
            let mut socket = BufReader::new(socket);
            let mut line = String::new();
            loop {
                line.clear();
                match socket.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let line = line.trim_end_matches('\n');
                let _ = seen.send(Seen::Data(n, line.as_bytes().to_vec()));
                if line == "hang" {
                    continue;
                }
                let reply = format!("{tag}/{n} {line}\n");
                if socket.get_mut().write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
        Mode::Silent => {
            let _socket = socket;
            std::future::pending::<()>().await;
        }
    }
}

/// A `ReconnectingStream` over `TcpStream::connect(addr)` that counts its connect calls.
fn tcp_stream(
    addr: SocketAddr,
    connects: &Arc<AtomicUsize>,
) -> palisade_reconnect::StreamBuilder<TcpStream> {
    let connects = Arc::clone(connects);
    ReconnectingStream::builder(move || {
        connects.fetch_add(1, Ordering::SeqCst);
        TcpStream::connect(addr)
    })
}

/// An address nothing listens on (a port just released): connects to it are refused.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Writes `msg` and reads back as many bytes from an echo server.
async fn echo_round_trip(stream: &mut ReconnectingStream<TcpStream>, msg: &[u8]) -> Vec<u8> {
    stream.write_all(msg).await.unwrap();
    let mut back = vec![0; msg.len()];
    stream.read_exact(&mut back).await.unwrap();
    back
}

// ---------------------------------------------------------------------------------------------
// ReconnectingStream
// ---------------------------------------------------------------------------------------------

/// Catches: a stream that hides a lost connection (reconnects and retries under the read
/// instead of failing it), a lost connection reported without a `ConnectionLost` or with the
/// wrong generation, a backoff not reset after a stable connection (`connecting 2` instead of
/// `connecting 1`), a generation not counted, a state skipped or published twice, a connect
/// started before the stream is used again, and bytes resent on the new connection.
#[tokio::test]
async fn a_killed_and_restarted_server_is_reported_then_reconnected() {
    let mut server = Server::start(Mode::Echo).await;
    let port = server.port();
    let connects = Arc::new(AtomicUsize::new(0));
    let mut stream = tcp_stream(server.addr, &connects)
        .backoff(no_wait_backoff())
        .stable_after(Duration::ZERO)
        .build()
        .unwrap();
    let log = StateLog::new(stream.state());
    assert_eq!(
        log.names(),
        ["idle"],
        "a stream connects at first use, not before"
    );

    let back = guard("first round trip", echo_round_trip(&mut stream, b"one\n")).await;
    assert_eq!(back, b"one\n");
    assert_eq!(stream.generation(), 1);
    assert_eq!(server.next_seen().await, Seen::Accepted(1));
    assert_eq!(server.next_seen().await, Seen::Data(1, b"one\n".to_vec()));

    // Kill: the listener and the accepted socket are closed when `kill` returns.
    let mut seen = server.kill().await;
    let mut buf = [0u8; 16];
    let e = guard("the read after the kill", stream.read(&mut buf))
        .await
        .expect_err("a read on a connection whose server died must fail, not hang or reconnect");
    let lost = connection_lost(&e);
    assert!(
        matches!(lost.cause(), Cause::Eof | Cause::Lost(_)),
        "cause: {:?}",
        lost.cause()
    );
    assert_eq!(lost.generation(), 1);
    assert!(!stream.is_connected());
    assert_eq!(
        connects.load(Ordering::SeqCst),
        1,
        "no connect before the next use"
    );

    // Restart on the same port; the next use reconnects at once (the backoff was reset).
    let mut server = Server::restart(port, Mode::Echo).await;
    let back = guard(
        "round trip on the new server",
        echo_round_trip(&mut stream, b"two\n"),
    )
    .await;
    assert_eq!(
        back, b"two\n",
        "only what was written on the new connection comes back"
    );
    assert_eq!(stream.generation(), 2);
    assert_eq!(connects.load(Ordering::SeqCst), 2);
    assert_eq!(server.next_seen().await, Seen::Accepted(1));
    assert_eq!(server.next_seen().await, Seen::Data(1, b"two\n".to_vec()));
    assert_eq!(server.accepts(), 1);
    assert!(seen.try_recv().is_err(), "the old server saw nothing more");

    let names = log.names();
    let cause = match &names[3] {
        n if n == "disconnected eof attempts=0" => "eof",
        n if n == "disconnected lost attempts=0" => "lost",
        other => panic!("expected a disconnect by eof or error, got {other}: {names:?}"),
    };
    assert_eq!(
        names,
        [
            "idle".to_string(),
            "connecting 1".into(),
            "connected 1".into(),
            format!("disconnected {cause} attempts=0"),
            "connecting 1".into(),
            "connected 2".into(),
        ]
    );
    drop(server.kill().await);
}

/// Linux drops a SYN while the listener's accept queue is full (`backlog + 1` connections
/// waiting), and the client just retransmits it: the connect neither completes nor fails.
/// Checked on this kernel with `listen(1)`: two connects complete, the third hangs.
///
/// Catches: no deadline on an attempt (the test's `timeout` elapses with only `connecting 1`
/// logged), a deadline other than 20 s (gRPC's minimum connect timeout, the default) or
/// measured from the wrong instant, a timeout reported as another cause, and no new attempt
/// after a timed-out one.
#[tokio::test(start_paused = true)]
async fn a_connect_that_hangs_is_cut_by_the_connect_timeout() {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the accept queue with blocking connects (nothing accepts them). The limit only
    // matters if the kernel behaves differently: they complete at once here.
    let _fillers: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect_timeout(&addr, GUARD).unwrap())
        .collect();

    let connects = Arc::new(AtomicUsize::new(0));
    let mut stream = tcp_stream(addr, &connects).build().unwrap(); // the default policy
    let log = StateLog::new(stream.state());
    let start = Instant::now();

    // On the paused clock, time jumps to the next timer whenever the runtime is idle: the
    // 20 s deadline passes at once, and so do the 30 s of this timeout (the second attempt,
    // started at 20 s, has until 40 s).
    let connected = tokio::time::timeout(Duration::from_secs(30), stream.connect()).await;
    assert!(connected.is_err(), "no connect can complete: {connected:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(30));
    assert_eq!(
        log.timed(),
        [
            (Duration::ZERO, "idle".to_string()),
            (Duration::ZERO, "connecting 1".into()),
            (
                Duration::from_secs(20),
                "disconnected timed-out 20s attempts=1".into()
            ),
            (Duration::from_secs(20), "connecting 2".into()),
        ]
    );
    assert_eq!(connects.load(Ordering::SeqCst), 2);
    match &log.entries.lock().unwrap()[2].1 {
        ConnectionState::Disconnected {
            cause: Cause::ConnectTimedOut(d),
            next_attempt_at,
            ..
        } => {
            assert_eq!(*d, Duration::from_secs(20));
            // gRPC spaces attempt starts by the backoff (1 s ± 20 % first): that start is long
            // past, so the next attempt was due at once.
            assert!(*next_attempt_at <= start + Duration::from_secs(20));
        }
        other => panic!("{other:?}"),
    }
    drop(listener);
}

/// Catches: state of the attempt kept in the cancelled operation rather than the stream
/// (a panic on the missing timer or future, a stream left pending forever because nothing
/// re-polls the attempt, or attempts started twice), and bytes lost or duplicated around the
/// cancellation.
#[tokio::test]
async fn a_read_cancelled_during_reconnect_leaves_the_stream_usable() {
    let addr = closed_port().await;
    let connects = Arc::new(AtomicUsize::new(0));
    let mut stream = tcp_stream(addr, &connects)
        .backoff(no_wait_backoff())
        .stable_after(Duration::ZERO)
        .build()
        .unwrap();
    let log = StateLog::new(stream.state());

    // The server is down: the read starts an attempt and is dropped after its first poll.
    let mut buf = [0u8; 16];
    let polled = poll_once_then_drop(stream.read(&mut buf)).await;
    assert!(polled.is_pending(), "nothing to read: {polled:?}");
    assert!(
        matches!(log.last(), ConnectionState::Connecting { .. }),
        "the read was cancelled with an attempt in flight: {:?}",
        log.names()
    );
    assert!(!stream.is_connected());

    // Up again: the stream carries on from the attempt it kept (which was refused) and
    // connects on the next use.
    let mut server = Server::restart(addr.port(), Mode::Echo).await;
    let back = guard(
        "round trip after the cancel",
        echo_round_trip(&mut stream, b"ping\n"),
    )
    .await;
    assert_eq!(back, b"ping\n");
    assert_eq!(stream.generation(), 1, "the first connection made");
    assert_eq!(server.next_seen().await, Seen::Accepted(1));
    assert_eq!(server.next_seen().await, Seen::Data(1, b"ping\n".to_vec()));
    // A second round trip: nothing left over from the first or from the cancelled read.
    let back = guard("second round trip", echo_round_trip(&mut stream, b"pong\n")).await;
    assert_eq!(back, b"pong\n");
    assert_eq!(server.next_seen().await, Seen::Data(1, b"pong\n".to_vec()));
    assert_eq!(server.accepts(), 1);

    // Attempts numbered 1..=n, each a single connect call, every failed one refused, then up.
    let names = log.names();
    let n = connects.load(Ordering::SeqCst);
    assert!(
        n >= 2,
        "the attempt in flight at the cancel was refused: {names:?}"
    );
    let mut expected = vec!["idle".to_string()];
    for attempt in 1..n {
        expected.push(format!("connecting {attempt}"));
        expected.push(format!("disconnected connect-failed attempts={attempt}"));
    }
    expected.push(format!("connecting {n}"));
    expected.push("connected 1".into());
    assert_eq!(names, expected);
    drop(server.kill().await);
}

/// A closed stream: the policy's `max_attempts` against a refusing port, on real sockets.
///
/// Catches: a stream that retries forever past `max_attempts`, or fails with something other
/// than `Closed` (the operation must not hang, and the reason must say why).
#[tokio::test]
async fn a_stream_gives_up_after_max_attempts_on_a_refusing_port() {
    let addr = closed_port().await;
    let connects = Arc::new(AtomicUsize::new(0));
    let mut stream = tcp_stream(addr, &connects)
        .backoff(no_wait_backoff())
        .max_attempts(3)
        .build()
        .unwrap();
    let log = StateLog::new(stream.state());
    let e = guard("the write that gives up", stream.write_all(b"x"))
        .await
        .unwrap_err();
    let closed = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Closed>())
        .unwrap_or_else(|| panic!("expected Closed, got {e:?}"));
    assert!(
        matches!(
            closed.reason(),
            CloseReason::GaveUp {
                attempts: 3,
                last: Cause::ConnectFailed(_)
            }
        ),
        "{:?}",
        closed.reason()
    );
    assert_eq!(connects.load(Ordering::SeqCst), 3);
    assert_eq!(
        log.names(),
        [
            "idle",
            "connecting 1",
            "disconnected connect-failed attempts=1",
            "connecting 2",
            "disconnected connect-failed attempts=2",
            "connecting 3",
            "closed gave-up attempts=3 last=connect-failed",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// The tower service
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "tower")]
mod service {
    use super::*;

    use palisade_reconnect::{BoxError, Reconnect};
    use tokio::io::BufStream;
    use tokio::sync::Mutex as AsyncMutex;
    use tower_service::Service;

    type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

    /// A tiny line-protocol client: one request line, one reply line, over a shared socket.
    /// Once an exchange fails, the connection is dead and `poll_ready` says so (the tower
    /// contract `Reconnect` relies on to replace it).
    #[derive(Clone)]
    struct LineClient {
        io: Arc<AsyncMutex<BufStream<TcpStream>>>,
        dead: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Service<String> for LineClient {
        type Response = String;
        type Error = io::Error;
        type Future = BoxFuture<io::Result<String>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.dead.load(Ordering::SeqCst) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the connection is dead",
                )));
            }
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, line: String) -> Self::Future {
            let (io, dead) = (Arc::clone(&self.io), Arc::clone(&self.dead));
            Box::pin(async move {
                let mut io = io.lock().await;
                let result = async {
                    io.write_all(format!("{line}\n").as_bytes()).await?;
                    io.flush().await?;
                    let mut reply = String::new();
                    if io.read_line(&mut reply).await? == 0 {
                        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
                    }
                    reply.pop();
                    Ok(reply)
                }
                .await;
                if result.is_err() {
                    dead.store(true, Ordering::SeqCst);
                }
                result
            })
        }
    }

    /// The `MakeService`: connects a `TcpStream` to the target and wraps it in a [`LineClient`].
    #[derive(Clone, Default)]
    struct Connector {
        connects: Arc<AtomicUsize>,
    }

    impl Service<SocketAddr> for Connector {
        type Response = LineClient;
        type Error = io::Error;
        type Future = BoxFuture<io::Result<LineClient>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, addr: SocketAddr) -> Self::Future {
            self.connects.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let socket = TcpStream::connect(addr).await?;
                Ok(LineClient {
                    io: Arc::new(AsyncMutex::new(BufStream::new(socket))),
                    dead: Arc::default(),
                })
            })
        }
    }

    async fn ready(svc: &mut Reconnect<LineClient>) -> Result<(), BoxError> {
        poll_fn(|cx| svc.poll_ready(cx)).await
    }

    async fn request(svc: &mut Reconnect<LineClient>, line: &str) -> Result<String, BoxError> {
        ready(svc).await?;
        svc.call(line.to_string()).await
    }

    fn service(addr: SocketAddr, connector: &Connector) -> Reconnect<LineClient> {
        Reconnect::builder(connector.clone(), addr)
            .backoff(no_wait_backoff())
            .stable_after(Duration::ZERO)
            .build()
            .unwrap()
    }

    /// Catches: a request in flight on a dying connection that hangs or fails untyped (not a
    /// `ConnectionLost` of generation 1), a dead connection not replaced once its `poll_ready`
    /// fails, a reconnect per clone instead of one per generation (the new server counts its
    /// accepts, and each reply names the connection that carried it), and a state sequence
    /// with a missing, extra or misnumbered step.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_service_reports_a_killed_server_and_clones_share_one_new_connection() {
        let mut server = Server::start(Mode::Lines("s1")).await;
        let port = server.port();
        let connector = Connector::default();
        let mut svc = service(server.addr, &connector);
        let log = StateLog::new(svc.state());

        let reply = guard("first call", request(&mut svc, "a")).await.unwrap();
        assert_eq!(reply, "s1/1 a");
        assert_eq!(server.next_seen().await, Seen::Accepted(1));
        assert_eq!(server.next_seen().await, Seen::Data(1, b"a".to_vec()));
        let mut clones = [svc.clone(), svc.clone()];

        // A request the server reads and never answers is in flight when the server dies.
        guard("ready before hang", ready(&mut svc)).await.unwrap();
        let in_flight = tokio::spawn(svc.call("hang".to_string()));
        assert_eq!(server.next_seen().await, Seen::Data(1, b"hang".to_vec()));
        let mut seen = server.kill().await;
        let e = guard("the call in flight", in_flight)
            .await
            .unwrap()
            .expect_err("the server died under the request");
        let lost = e
            .downcast_ref::<ConnectionLost>()
            .unwrap_or_else(|| panic!("expected a ConnectionLost, got {e:?}"));
        assert_eq!(lost.generation(), 1);
        assert!(matches!(lost.cause(), Cause::Lost(_)), "{:?}", lost.cause());

        // Back on the same port; three clones call at once and share one new connection.
        let server = Server::restart(port, Mode::Lines("s2")).await;
        let [c1, c2] = &mut clones;
        let (r0, r1, r2) = guard("three calls after the restart", async {
            tokio::join!(
                request(&mut svc, "x0"),
                request(c1, "x1"),
                request(c2, "x2")
            )
        })
        .await;
        assert_eq!(r0.unwrap(), "s2/1 x0");
        assert_eq!(r1.unwrap(), "s2/1 x1");
        assert_eq!(r2.unwrap(), "s2/1 x2");
        assert_eq!(server.accepts(), 1, "one connection for every clone");
        assert_eq!(connector.connects.load(Ordering::SeqCst), 2);
        assert!(seen.try_recv().is_err(), "the old server saw nothing more");

        assert_eq!(
            log.names(),
            [
                "idle",
                "connecting 1",
                "connected 1",
                "disconnected lost attempts=0",
                "connecting 1",
                "connected 2",
            ]
        );
        match &log.entries.lock().unwrap()[3].1 {
            ConnectionState::Disconnected {
                cause: Cause::Lost(e),
                ..
            } => {
                let e = e.downcast_ref::<io::Error>().expect("the poll_ready error");
                assert_eq!(e.kind(), io::ErrorKind::NotConnected);
            }
            other => panic!("{other:?}"),
        }
        drop(server.kill().await);
    }

    /// While the server is down, `poll_ready` (in the default `Wait` mode) stays pending and
    /// the background task keeps trying; once the server is back the waiting caller proceeds
    /// on generation 2, without being polled again by the test.
    ///
    /// Catches: `poll_ready` failing or returning `Ok` on a dead connection while down, a
    /// waiter never woken when the connection comes back, attempts not numbered from 1 after
    /// the reset, and a connect failure reported as another cause.
    #[tokio::test]
    async fn the_service_waits_while_the_server_is_down() {
        let server = Server::start(Mode::Lines("s1")).await;
        let port = server.port();
        let connector = Connector::default();
        let mut svc = service(server.addr, &connector);
        let log = StateLog::new(svc.state());
        assert_eq!(
            guard("first call", request(&mut svc, "a")).await.unwrap(),
            "s1/1 a"
        );

        drop(server.kill().await);
        let e = guard("call on the dead connection", request(&mut svc, "b"))
            .await
            .unwrap_err();
        assert!(e.is::<ConnectionLost>(), "{e:?}");

        // Now `poll_ready` reports the connection dead and waits for a new one.
        let mut waiting = Box::pin(request(&mut svc, "c"));
        assert!(poll_once_then_drop(waiting.as_mut()).await.is_pending());
        // Let the background task fail at least once against the closed port.
        for _ in 0..10_000 {
            if log
                .names()
                .iter()
                .any(|n| n.starts_with("disconnected connect-failed"))
            {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            log.names()
                .iter()
                .any(|n| n.starts_with("disconnected connect-failed")),
            "{:?}",
            log.names()
        );
        assert!(poll_once_then_drop(waiting.as_mut()).await.is_pending());

        let server = Server::restart(port, Mode::Lines("s2")).await;
        let reply = guard("the waiting call", waiting).await.unwrap();
        assert_eq!(reply, "s2/1 c");
        assert_eq!(server.accepts(), 1);

        let names = log.names();
        assert_eq!(
            names[..4],
            [
                "idle",
                "connecting 1",
                "connected 1",
                "disconnected lost attempts=0"
            ]
        );
        assert_eq!(names.last().unwrap(), "connected 2");
        let retries = &names[4..names.len() - 1];
        assert!(retries.len() >= 3 && retries.len() % 2 == 1, "{names:?}");
        for (i, pair) in retries.chunks(2).enumerate() {
            assert_eq!(pair[0], format!("connecting {}", i + 1), "{names:?}");
            if let Some(failed) = pair.get(1) {
                assert_eq!(
                    *failed,
                    format!("disconnected connect-failed attempts={}", i + 1),
                    "{names:?}"
                );
            }
        }
        drop(server.kill().await);
    }

    /// The service's attempt deadline (its driver's `timeout_at`, not the stream's timer) over a
    /// real socket: the server accepts but never sends the greeting the on-connect hook waits
    /// for. Two attempts, each cut after 20 s of paused time, then the service gives up.
    ///
    /// Catches: a hook not bounded by the attempt's deadline (the service would wait forever),
    /// a wrong budget or cause, `max_attempts` not honoured, and waiting callers not released
    /// with `Closed` when the service gives up.
    #[tokio::test(start_paused = true)]
    async fn the_service_cuts_an_on_connect_hook_waiting_for_a_greeting() {
        let server = Server::start(Mode::Silent).await;
        let connector = Connector::default();
        let mut svc = Reconnect::builder(connector.clone(), server.addr)
            .max_attempts(2)
            .on_connect(|client: LineClient| async move {
                let mut greeting = String::new();
                client.io.lock().await.read_line(&mut greeting).await?;
                Ok::<_, io::Error>(client)
            })
            .build()
            .unwrap();
        let log = StateLog::new(svc.state());
        let start = Instant::now();

        let e = ready(&mut svc).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(40));
        let closed = e
            .downcast_ref::<Closed>()
            .unwrap_or_else(|| panic!("expected Closed, got {e:?}"));
        assert!(
            matches!(
                closed.reason(),
                CloseReason::GaveUp { attempts: 2, last: Cause::ConnectTimedOut(d) }
                    if *d == Duration::from_secs(20)
            ),
            "{:?}",
            closed.reason()
        );
        assert_eq!(connector.connects.load(Ordering::SeqCst), 2);
        assert_eq!(
            log.timed(),
            [
                (Duration::ZERO, "idle".to_string()),
                (Duration::ZERO, "connecting 1".into()),
                (
                    Duration::from_secs(20),
                    "disconnected timed-out 20s attempts=1".into()
                ),
                (Duration::from_secs(20), "connecting 2".into()),
                (
                    Duration::from_secs(40),
                    "closed gave-up attempts=2 last=timed-out 20s".into()
                ),
            ]
        );
        drop(server);
    }
}
