//! Fault tests over real sockets: a line-echo server on 127.0.0.1 (ephemeral port) that each
//! test starts, kills (listener and every accepted socket closed) and restarts on the same
//! port, and a [`Manager`] of plain tokio `TcpStream`s to it.
//!
//! Real sockets mean real time (tokio's paused clock cannot drive the kernel), so every
//! timeout here is tens to hundreds of milliseconds, and nothing relies on a sleep for its
//! outcome: the tests wait on conditions, each bounded by [`PATIENCE`].

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use palisade_pool::{CheckoutTest, Discard, Error, Failure, Manager, Pool};
use palisade_retry::Backoff;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Barrier, oneshot};
use tokio::task::{JoinHandle, JoinSet};

/// How long anything that should happen promptly may take on a loaded machine. Only a
/// failing test ever waits this long.
const PATIENCE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// The backend: a line-echo server that greets each connection with its generation.
// ---------------------------------------------------------------------------------------

/// A running echo server. Each connection is greeted with `hello <generation>\n`, then every
/// line it sends is echoed back. Dropping it stops the server too; [`kill`](Server::kill)
/// waits until every socket is closed.
struct Server {
    addr: SocketAddr,
    /// Connections this server accepted.
    accepted: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// A server on an ephemeral loopback port.
    async fn start(generation: u64) -> Server {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind an ephemeral loopback port");
        Server::serve(listener, generation)
    }

    /// A server on `addr`, which a killed server used: retried while the port is still busy.
    async fn restart(addr: SocketAddr, generation: u64) -> Server {
        let started = Instant::now();
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return Server::serve(listener, generation),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && started.elapsed() < PATIENCE => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("rebinding {addr} failed: {e}"),
            }
        }
    }

    fn serve(listener: TcpListener, generation: u64) -> Server {
        let addr = listener.local_addr().expect("listener address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(
            listener,
            generation,
            Arc::clone(&accepted),
            stopped,
        ));
        Server {
            addr,
            accepted,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Kills the server: closes the listener (connects are refused from now on) and every
    /// connection it accepted, and returns once all of them are closed.
    async fn kill(mut self) {
        drop(self.stop.take());
        let task = self.task.take().expect("a running server");
        within(PATIENCE, task).await.expect("the server task ends");
    }
}

async fn accept_loop(
    listener: TcpListener,
    generation: u64,
    accepted: Arc<AtomicUsize>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            next = listener.accept() => {
                if let Ok((stream, _)) = next {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(echo(stream, generation));
                }
            }
        }
    }
    drop(listener);
    // Aborts every connection task and waits for them: their sockets are closed on return.
    connections.shutdown().await;
}

async fn echo(stream: TcpStream, generation: u64) {
    let (read, mut write) = stream.into_split();
    let hello = format!("hello {generation}\n");
    if write.write_all(hello.as_bytes()).await.is_err() {
        return;
    }
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The client: a Manager of TcpStreams to the echo server.
// ---------------------------------------------------------------------------------------

/// One pooled connection: a buffered stream, the id the manager gave it (in connect order) and
/// the generation of the server that greeted it.
#[derive(Debug)]
struct Conn {
    id: u64,
    generation: u64,
    stream: BufReader<TcpStream>,
}

impl Conn {
    /// Sends `message` and checks that it comes back.
    async fn round_trip(&mut self, message: &str) -> io::Result<()> {
        let line = format!("{message}\n");
        self.stream.get_mut().write_all(line.as_bytes()).await?;
        let mut reply = String::new();
        if self.stream.read_line(&mut reply).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if reply != line {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("sent {line:?}, got {reply:?}"),
            ));
        }
        Ok(())
    }
}

/// Connections to one echo server.
#[derive(Debug)]
struct Echo {
    addr: SocketAddr,
    /// Paid before each connect: a slow backend (a TLS handshake, a far region).
    connect_delay: Duration,
    /// `connect` never completes (a backend that accepts nothing and refuses nothing).
    hang: bool,
    /// Connect attempts started.
    attempts: AtomicUsize,
    next_id: AtomicU64,
}

impl Echo {
    fn new(addr: SocketAddr) -> Echo {
        Echo {
            addr,
            connect_delay: Duration::ZERO,
            hang: false,
            attempts: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
        }
    }

    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }
}

impl Manager for Echo {
    type Connection = Conn;
    type Error = io::Error;

    async fn connect(&self) -> io::Result<Conn> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if !self.connect_delay.is_zero() {
            tokio::time::sleep(self.connect_delay).await;
        }
        if self.hang {
            std::future::pending::<()>().await;
        }
        let stream = TcpStream::connect(self.addr).await?;
        // While the server is down its port is free, and a loopback connect to a free port in
        // the ephemeral range can, rarely, pick that very port as its own and connect to
        // itself (TCP simultaneous open). That is a refusal, not a backend.
        if stream.local_addr()? == stream.peer_addr()? {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "connected to itself: the server is down",
            ));
        }
        stream.set_nodelay(true)?;
        let mut stream = BufReader::new(stream);
        let mut hello = String::new();
        stream.read_line(&mut hello).await?;
        let generation = hello
            .strip_prefix("hello ")
            .and_then(|g| g.trim_end().parse().ok())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("greeting {hello:?}"))
            })?;
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        Ok(Conn {
            id,
            generation,
            stream,
        })
    }

    async fn validate(&self, conn: &mut Conn) -> io::Result<()> {
        conn.round_trip("ping").await
    }

    /// An idle connection has nothing to read: end of stream (the server closed it), stray
    /// bytes or an error all mean it is beyond use. `try_read` makes no syscall unless the
    /// reactor has seen the socket become readable, so this costs next to nothing.
    fn is_broken(&self, conn: &mut Conn) -> bool {
        if !conn.stream.buffer().is_empty() {
            return true;
        }
        let mut byte = [0u8; 1];
        !matches!(
            conn.stream.get_ref().try_read(&mut byte),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        )
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------

/// `fut`, or a panic naming what hung after `limit`: the proof that nothing waits forever.
async fn within<F: Future>(limit: Duration, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("hung: still pending after {limit:?}"),
    }
}

/// Waits until `condition` holds, checking every few milliseconds, for at most [`PATIENCE`].
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < PATIENCE,
            "waited {PATIENCE:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A short, fixed retry pause, so a test sees several connect attempts within its deadline.
fn quick_backoff() -> Backoff {
    Backoff::constant(Duration::from_millis(20))
        .build()
        .expect("a valid backoff")
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

/// The backend dies (listener and every open socket): `get()` ends at its deadline, not
/// later and never hanging, with `Unavailable` carrying the connect error (connection
/// refused) and the pool's metrics; the stale idle connections are discarded on the way.
#[tokio::test]
async fn dead_backend_fails_get_by_its_deadline_with_the_connect_error() {
    const ACQUIRE: Duration = Duration::from_millis(500);
    let server = Server::start(1).await;
    let pool = Pool::builder(Echo::new(server.addr))
        .max_size(4)
        .acquire_timeout(ACQUIRE)
        .connect_timeout(Duration::from_millis(200))
        .validation_timeout(Duration::from_millis(200))
        .test_on_checkout(CheckoutTest::Always)
        .connect_backoff(quick_backoff())
        .build()
        .expect("a valid pool");

    // Two connections, used and returned: the pool holds them idle.
    {
        let mut a = pool.get().await.expect("the backend is up");
        let mut b = pool.get().await.expect("the backend is up");
        a.round_trip("a").await.expect("echo");
        b.round_trip("b").await.expect("echo");
    }
    assert_eq!(pool.metrics().idle, 2);

    server.kill().await;

    let started = Instant::now();
    let result = within(ACQUIRE + PATIENCE, pool.get()).await;
    let elapsed = started.elapsed();
    let error = result.expect_err("no connection from a dead backend");
    assert!(
        elapsed >= ACQUIRE,
        "get() gave up after {elapsed:?}, before its deadline of {ACQUIRE:?}: {error}"
    );
    assert!(
        elapsed < ACQUIRE + Duration::from_secs(1),
        "get() overran its deadline of {ACQUIRE:?}: ended after {elapsed:?}"
    );

    let Error::Unavailable {
        waited, metrics, ..
    } = &error
    else {
        panic!("expected Unavailable (connects were failing), got {error:?}");
    };
    assert!(*waited >= ACQUIRE, "waited {waited:?}");
    match error.last_error() {
        Some(Failure::Connect(e)) => assert_eq!(
            e.kind(),
            io::ErrorKind::ConnectionRefused,
            "the last error is the connect's: {e}"
        ),
        other => panic!("expected the last error to be a refused connect, got {other:?}"),
    }

    // The metrics at the deadline: the two stale connections are gone (caught broken by the
    // EOF check or invalid by the round trip), none is idle or in use, nobody but the caller
    // waits (the snapshot may be taken just before it leaves the line), and all that remains
    // is the connect still retrying, if any.
    assert_eq!(metrics.max_size, 4);
    assert_eq!(metrics.idle, 0, "{metrics}");
    assert_eq!(metrics.in_use, 0, "{metrics}");
    assert!(metrics.waiters <= 1, "{metrics}");
    assert_eq!(metrics.size, metrics.connecting, "{metrics}");
    assert!(metrics.connecting <= 2, "{metrics}");
    assert_eq!(metrics.created, 2);
    assert!(metrics.connect_failures >= 1, "{metrics:?}");
    assert_eq!(
        metrics.discarded(Discard::Broken) + metrics.discarded(Discard::Invalid),
        2,
        "{metrics}"
    );
    assert_eq!(pool.metrics().timeouts, 1);
    // And the message a log line shows names all of it.
    let message = error.to_string();
    for part in [
        "the backend is failing",
        "connect failed",
        "refused",
        "size ",
        "idle 0",
        "in use 0",
        "connecting ",
        "waiters ",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }

    // Once nobody waits, the connect gives up and its slot is freed: nothing leaks.
    eventually("the connect to give up", || pool.metrics().size == 0).await;
}

/// The backend restarts on the same port: the connections to the old server are discarded,
/// never handed out (each connection knows the generation of the server that greeted it, and
/// every one handed out makes a round trip), and a pool whose connects were failing recovers.
#[tokio::test]
async fn restarted_backend_recovers_and_stale_connections_are_never_handed_out() {
    const SIZE: usize = 4;
    let server = Server::start(1).await;
    let addr = server.addr;
    let pool = Pool::builder(Echo::new(addr))
        .max_size(SIZE)
        .acquire_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(200))
        .validation_timeout(Duration::from_millis(200))
        .test_on_checkout(CheckoutTest::Always)
        .connect_backoff(quick_backoff())
        .build()
        .expect("a valid pool");

    // Fill the pool: SIZE connections to generation 1, all idle.
    let first: Vec<_> = {
        let mut held = Vec::new();
        for _ in 0..SIZE {
            held.push(pool.get().await.expect("the backend is up"));
        }
        held.iter().map(|c| (c.id, c.generation)).collect()
    };
    assert!(first.iter().all(|&(_, generation)| generation == 1));
    assert_eq!(pool.metrics().idle, SIZE);

    // Kill and restart at once: the idle connections all point at a dead server.
    server.kill().await;
    let server = Server::restart(addr, 2).await;

    // SIZE callers at once, each holding its connection until all have one: every connection
    // handed out is new, to generation 2, and works.
    let mut callers = JoinSet::new();
    let all_in = Arc::new(Barrier::new(SIZE));
    for i in 0..SIZE {
        let pool = pool.clone();
        let all_in = Arc::clone(&all_in);
        callers.spawn(async move {
            let mut conn = pool.get().await.expect("the restarted backend serves");
            let (id, generation) = (conn.id, conn.generation);
            let works = conn.round_trip(&format!("caller {i}")).await;
            all_in.wait().await;
            (id, generation, works)
        });
    }
    let served = within(PATIENCE, callers.join_all()).await;
    for (id, generation, works) in &served {
        assert_eq!(*generation, 2, "connection {id} is stale");
        assert!(
            *id >= SIZE as u64,
            "connection {id} is one of the first {SIZE}"
        );
        works.as_ref().expect("a connection handed out works");
    }
    let metrics = pool.metrics();
    assert_eq!(
        metrics.discarded(Discard::Broken) + metrics.discarded(Discard::Invalid),
        SIZE as u64,
        "every stale connection is discarded: {metrics}"
    );
    assert_eq!(metrics.created, 2 * SIZE as u64, "{metrics:?}");
    assert_eq!(server.accepted(), SIZE);

    // A second outage, long enough for connects to fail, then the backend comes back: the
    // pool recovers (its connect retries on the backoff schedule).
    server.kill().await;
    let error = within(PATIENCE, pool.get())
        .await
        .expect_err("no connection from a dead backend");
    assert!(
        matches!(error.last_error(), Some(Failure::Connect(_))),
        "{error}"
    );
    let server = Server::restart(addr, 3).await;
    let mut conn = within(PATIENCE, pool.get())
        .await
        .expect("the pool recovers once the backend is back");
    assert_eq!(conn.generation, 3);
    conn.round_trip("back").await.expect("echo");
    assert_eq!(server.accepted(), 1);
}

/// HikariCP's spike test: 50 callers at once against a backend whose connects take 50 ms,
/// each holding its connection briefly. All are served, and the pool opens only a few
/// connections, paced by `max_concurrent_connects`, although `max_size` would allow 50.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spike_of_50_gets_opens_few_connections() {
    const CALLERS: usize = 50;
    const CONNECT_DELAY: Duration = Duration::from_millis(50);
    const MAX_CONNECTING: usize = 2;
    let server = Server::start(1).await;
    let manager = Echo {
        connect_delay: CONNECT_DELAY,
        ..Echo::new(server.addr)
    };
    let pool = Pool::builder(manager)
        .max_size(CALLERS)
        .max_concurrent_connects(MAX_CONNECTING)
        .acquire_timeout(PATIENCE)
        .build()
        .expect("a valid pool");

    let started = Instant::now();
    let mut callers = JoinSet::new();
    for i in 0..CALLERS {
        let pool = pool.clone();
        callers.spawn(async move {
            let mut conn = pool.get().await?;
            conn.round_trip(&format!("caller {i}"))
                .await
                .expect("a round trip");
            // Hold it a little longer, as a short query would.
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok::<u64, Error<io::Error>>(conn.id)
        });
    }
    let results = within(PATIENCE, callers.join_all()).await;
    let metrics = pool.metrics();
    let elapsed = started.elapsed();

    eprintln!(
        "spike: {CALLERS} callers served in {elapsed:?} by {} connections",
        metrics.created
    );
    let served = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(served, CALLERS, "every caller is served: {results:?}");

    // Pacing: at most MAX_CONNECTING connects are in flight at once and each takes at least
    // CONNECT_DELAY, so by `elapsed` at most MAX_CONNECTING × ⌊elapsed / CONNECT_DELAY⌋ can
    // have completed, however the load is spread.
    let rounds = (elapsed.as_millis() / CONNECT_DELAY.as_millis()) as u64;
    let paced = MAX_CONNECTING as u64 * rounds;
    assert!(
        metrics.created <= paced,
        "created {} connections in {elapsed:?}, more than {MAX_CONNECTING} per {CONNECT_DELAY:?}",
        metrics.created
    );
    // Few: the 50 holds take ~1-2 ms each, so a handful of connections serves them all within
    // a few connect rounds. A pool opening one connection per caller would reach 50 (its
    // max_size); 16 is a third of that and leaves room for a slow, loaded machine (8 rounds).
    assert!(
        (1..=16).contains(&metrics.created),
        "the spike opened {} connections: {metrics}",
        metrics.created
    );
    // Nothing hidden: every connect attempt succeeded and reached the server.
    eventually("the connects to finish", || pool.metrics().connecting == 0).await;
    let metrics = pool.metrics();
    assert_eq!(metrics.connect_failures, 0);
    assert_eq!(pool.manager().attempts() as u64, metrics.created);
    assert_eq!(server.accepted() as u64, metrics.created);
    assert_eq!(metrics.waiters, 0);
}

/// A connect that never completes is cut by `connect_timeout`, and `get()` reports it as
/// `Failure::ConnectTimeout` at its deadline; no slot leaks once the caller is gone.
#[tokio::test]
async fn hanging_connect_is_cut_by_connect_timeout() {
    const CONNECT_TIMEOUT: Duration = Duration::from_millis(50);
    const ACQUIRE: Duration = Duration::from_millis(300);
    let server = Server::start(1).await;
    let manager = Echo {
        hang: true,
        ..Echo::new(server.addr)
    };
    let pool = Pool::builder(manager)
        .acquire_timeout(ACQUIRE)
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_backoff(quick_backoff())
        .build()
        .expect("a valid pool");

    let started = Instant::now();
    let error = within(PATIENCE, pool.get())
        .await
        .expect_err("a connect that hangs yields nothing");
    let elapsed = started.elapsed();
    assert!(elapsed >= ACQUIRE, "gave up after {elapsed:?}");
    assert!(
        elapsed < ACQUIRE + Duration::from_secs(1),
        "ended after {elapsed:?}"
    );
    match error.last_error() {
        Some(Failure::ConnectTimeout(after)) => assert_eq!(*after, CONNECT_TIMEOUT),
        other => panic!("expected a connect timeout, got {other:?} ({error})"),
    }
    assert!(
        error.to_string().contains("connect timed out after 50ms"),
        "{error}"
    );
    // 300 ms of 50 ms attempts with 20 ms pauses: several attempts, each cut.
    let metrics = error.metrics().expect("metrics at the deadline");
    assert!(metrics.connect_failures >= 2, "{metrics:?}");
    assert_eq!(metrics.created, 0);
    assert!(pool.manager().attempts() >= 2);
    assert_eq!(server.accepted(), 0);
    eventually("the connect to give up", || pool.metrics().size == 0).await;
}

/// The same, with a real socket: a listener whose accept queue is full. The kernel drops the
/// SYN of any further connect (it neither completes nor is refused), so only
/// `connect_timeout` ends it.
#[tokio::test]
async fn connect_to_a_full_backlog_is_cut_by_connect_timeout() {
    const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
    const ACQUIRE: Duration = Duration::from_millis(300);
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind((Ipv4Addr::LOCALHOST, 0).into())
        .expect("bind an ephemeral loopback port");
    // Never accepted: the queue holds backlog + 1 connections, then SYNs are dropped.
    let listener = socket.listen(1).expect("listen");
    let addr = listener.local_addr().expect("listener address");
    let mut fillers = Vec::new();
    loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(e)) => panic!("filling the accept queue: {e}"),
            Err(_) => break,
        }
        assert!(
            fillers.len() < 64,
            "the accept queue of {addr} never filled"
        );
    }

    let pool = Pool::builder(Echo::new(addr))
        .acquire_timeout(ACQUIRE)
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_backoff(quick_backoff())
        .build()
        .expect("a valid pool");
    let started = Instant::now();
    let error = within(PATIENCE, pool.get())
        .await
        .expect_err("a connect to a full accept queue yields nothing");
    let elapsed = started.elapsed();
    assert!(elapsed >= ACQUIRE, "gave up after {elapsed:?}");
    assert!(
        elapsed < ACQUIRE + Duration::from_secs(1),
        "ended after {elapsed:?}"
    );
    match error.last_error() {
        Some(Failure::ConnectTimeout(after)) => assert_eq!(*after, CONNECT_TIMEOUT),
        other => panic!("expected a connect timeout, got {other:?} ({error})"),
    }
    assert!(matches!(error, Error::Unavailable { .. }), "{error}");
    eventually("the connect to give up", || pool.metrics().size == 0).await;
    drop((fillers, listener));
}

/// A burst of callers who each need a connection of their own at the same time (here: they
/// hold theirs until all have one). `max_concurrent_connects` paces the connects but must not
/// cap the pool: while callers wait that no connect in flight will serve, and the pool is
/// below `max_size`, it keeps connecting, two at a time, until all are served.
#[tokio::test]
async fn burst_of_waiters_grows_the_pool_past_max_concurrent_connects() {
    const CALLERS: usize = 8;
    let server = Server::start(1).await;
    let manager = Echo {
        connect_delay: Duration::from_millis(20),
        ..Echo::new(server.addr)
    };
    let pool = Pool::builder(manager)
        .max_size(CALLERS)
        .max_concurrent_connects(2)
        .acquire_timeout(Duration::from_millis(1000))
        .build()
        .expect("a valid pool");

    let all_in = Arc::new(Barrier::new(CALLERS));
    let mut callers = JoinSet::new();
    for _ in 0..CALLERS {
        let pool = pool.clone();
        let all_in = Arc::clone(&all_in);
        callers.spawn(async move {
            let conn = pool.get().await;
            // Everyone, served or not, meets here; the served hold their connection till then.
            all_in.wait().await;
            conn.map(|c| c.id).map_err(|e| e.to_string())
        });
    }
    let results = within(PATIENCE, callers.join_all()).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {CALLERS} callers were not served although max_size is {CALLERS} and the \
         backend connects in 20 ms; created {}: {failed:#?}",
        failed.len(),
        pool.metrics().created,
    );
    assert_eq!(pool.metrics().created, CALLERS as u64);
}

/// After an outage the backend has been back for longer than the connect backoff's pause, and
/// requests are sparse (one every so often, each with a short `acquire_timeout`). The pause
/// is between failed attempts: it has passed, so the next `get()` connects at once.
///
/// A pool whose connect task pauses a full backoff step before its first attempt, however long
/// ago the last failure was, and gives up unattempted once its caller has left, fails this:
/// sparse callers never see a connect attempt, and it never recovers.
#[tokio::test]
async fn backend_back_after_an_outage_serves_sparse_requests() {
    const PAUSE: Duration = Duration::from_millis(300);
    const ACQUIRE: Duration = Duration::from_millis(150);
    let server = Server::start(1).await;
    let addr = server.addr;
    server.kill().await;
    let pool = Pool::builder(Echo::new(addr))
        .acquire_timeout(ACQUIRE)
        .connect_backoff(Backoff::constant(PAUSE).build().expect("a valid backoff"))
        .build()
        .expect("a valid pool");

    // The outage: one request fails (one refused connect), then the connect gives up.
    let error = within(PATIENCE, pool.get())
        .await
        .expect_err("the backend is down");
    assert!(
        matches!(error.last_error(), Some(Failure::Connect(_))),
        "{error}"
    );
    eventually("the connect to give up", || pool.metrics().size == 0).await;

    // The backend is back, and stays up for longer than the pause.
    let server = Server::restart(addr, 2).await;
    tokio::time::sleep(PAUSE).await;

    // Sparse requests: each waits out its own deadline alone.
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let outcome = within(PATIENCE, pool.get()).await.map(|c| c.generation);
        let ok = outcome.is_ok();
        outcomes.push(outcome.map_err(|e| e.to_string()));
        if ok {
            break;
        }
        eventually("the connect to give up", || pool.metrics().size == 0).await;
    }
    assert!(
        matches!(outcomes.first(), Some(Ok(2))),
        "the backend has been up for {PAUSE:?}, yet: {outcomes:#?}; the server accepted {} \
         connections, the manager attempted {}",
        server.accepted(),
        pool.manager().attempts(),
    );
}
