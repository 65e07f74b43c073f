//! The client side of a line-protocol TCP service, built the way a client library is (think a
//! small Redis client): a pool of request/response connections, every request retried under a
//! shared budget but only when that is safe, and a subscription channel that survives server
//! restarts and resumes where it left off.
//!
//! ```text
//! cargo run --example tcp_client --features pool,reconnect,retry
//! ```
//!
//! The pieces, each meant to be copied:
//!
//! - `LineManager` and `Conn`: a `palisade::pool::Pool` of connections, opened with
//!   `TCP_NODELAY`, checked when they come back and before they go out (`is_broken`: the server
//!   closed it), validated with `PING` after 500 ms idle, and *tainted* from the request's first
//!   byte to its reply's last, so a request cancelled half-way never leaves a half-read
//!   connection in the pool.
//! - `Client`: each request runs in `palisade::retry::retry`, with a shared `TpsBudget` (when the
//!   server struggles, retries add at most about 20 % to the load, plus 10 a second) and a
//!   classifier that retries only what is safe (see `RequestError::is_safe_to_retry`; `GET` and
//!   `SET` are idempotent, `INCR` is not):
//!
//!   | failure | sent? | retried |
//!   |---|---|---|
//!   | no connection (connect refused, server down) | no | always |
//!   | the connection failed before the request's first byte was written | no | always |
//!   | written, then the connection failed or the reply was late | maybe | if idempotent |
//!   | the server answered `ERR ...` (an application error) | yes | never: same answer |
//!   | a line break in a key or value, a space in a key | no | never: same answer |
//!   | every connection busy, or the client closing | no | never: adds load, or fails |
//!
//! - `subscription` and `run_subscription`: a `palisade::reconnect::ReconnectingStream` whose
//!   on-connect hook subscribes again on every new connection, asking for the events after the
//!   last one it saw, so none is lost or seen twice across a restart. Its `ConnectionState`
//!   watch channel is printed by `watch_state`.
//!
//! The example starts its own server on 127.0.0.1 (a free port), then runs a short script:
//! requests succeed; an application error is not retried, and a request the protocol cannot
//! carry is refused before it is sent; replies lost after the server did the work are retried
//! for `GET` but not for `INCR`; the server stops and comes back on the same port while a
//! request is retried through the outage and the subscription reconnects and resumes. It
//! prints what happens and exits 0 in well under a second. The protocol, one line each way:
//!
//! ```text
//! PING -> PONG        GET key -> VALUE v | NIL      SET key value -> OK       INCR key -> VALUE n
//! SUBSCRIBE keyspace AFTER -> SUBSCRIBED keyspace, then `MESSAGE seq event` for each event after
//! AFTER (missed ones first), and `PING` every 10 s as a heartbeat. Errors: `ERR message`.
//! ```

use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use palisade::pool::{CheckoutTest, CloseTimeout, Manager, Metrics, Pool, Pooled};
use palisade::reconnect::{
    Closed, ConfigError, ConnectionLost, ConnectionState, ReconnectingStream,
};
use palisade::retry::{Backoff, Decision, Jitter, RetryEvent, RetryPolicy, TpsBudget, retry};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// The pool's error type for this manager.
type PoolError = palisade::pool::Error<io::Error>;

/// An event of the subscription channel: its sequence number (from 1) and its text.
type Event = (u64, String);

// ---------------------------------------------------------------------------------------------
// Request/response connections: the pool.
// ---------------------------------------------------------------------------------------------

/// One request/response connection: a buffered TCP stream, one line per request and per reply.
#[derive(Debug)]
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    /// Sends one request line and reads its reply line, telling a failure before anything was
    /// sent (`RequestError::NotSent`) from one after (`RequestError::Interrupted`).
    ///
    /// Not cancel-safe on its own: dropped after the write and before the whole reply is read,
    /// it leaves the reply on the wire for the next request to read as its own. The caller
    /// taints the pooled connection around it (see `Client::attempt`), so such a connection
    /// is closed, never reused.
    async fn exchange(&mut self, line: &str) -> Result<String, RequestError> {
        let request = format!("{line}\n");
        let bytes = request.as_bytes();
        let socket = self.stream.get_mut();
        // A `write` call that fails has sent nothing (the kernel takes the bytes it reports,
        // or none): the server has not seen this request, and it is safe to send it again.
        let sent = socket.write(bytes).await.map_err(RequestError::NotSent)?;
        if sent == 0 {
            return Err(RequestError::NotSent(io::ErrorKind::WriteZero.into()));
        }
        // From here on the server may have the request, or part of it.
        socket
            .write_all(&bytes[sent..])
            .await
            .map_err(RequestError::Interrupted)?;
        let mut reply = String::new();
        match self.stream.read_line(&mut reply).await {
            Ok(0) => Err(RequestError::Interrupted(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection before replying",
            ))),
            Ok(_) => {
                reply.truncate(reply.trim_end().len());
                Ok(reply)
            }
            Err(e) => Err(RequestError::Interrupted(e)),
        }
    }
}

/// How the pool makes and checks connections to one server.
#[derive(Debug)]
struct LineManager {
    addr: SocketAddr,
}

impl Manager for LineManager {
    type Connection = Conn;
    type Error = io::Error;

    /// Runs on a task of its own, bounded by `connect_timeout`.
    async fn connect(&self) -> io::Result<Conn> {
        let stream = TcpStream::connect(self.addr).await?;
        // Small requests and replies: don't let Nagle's algorithm hold a request back.
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(stream),
        })
    }

    /// A round trip, bounded by `validation_timeout`, for connections idle longer than
    /// `test_on_checkout` says: after a quiet spell the server (or a NAT on the way) may have
    /// dropped them without a word.
    async fn validate(&self, conn: &mut Conn) -> io::Result<()> {
        match conn.exchange("PING").await {
            Ok(reply) if reply == "PONG" => Ok(()),
            Ok(other) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("PING answered with {other:?}"),
            )),
            Err(e) => Err(io::Error::other(e)),
        }
    }

    // `recycle` keeps its default (do nothing): this protocol has no per-connection state. A
    // database client would roll back an open transaction there; a Redis client would undo a
    // `SELECT` or `CLIENT SETNAME`.

    /// The cheap check made when a connection comes back and before it goes out. An idle
    /// connection has nothing to read, so end of stream (the server closed it, as it does when
    /// it restarts), stray bytes or an error mean it is beyond use. `try_read` makes no syscall
    /// unless the runtime has seen the socket turn readable.
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

// ---------------------------------------------------------------------------------------------
// Requests: the client, its errors and what is safe to retry.
// ---------------------------------------------------------------------------------------------

/// Why a request failed, as far as the client can tell: above all, whether the server may have
/// executed it.
#[derive(Debug)]
enum RequestError {
    /// No connection within `acquire_timeout`, because connects fail: the server is down or
    /// refusing. Nothing was sent.
    Unavailable(PoolError),
    /// Every connection stayed busy for `acquire_timeout`: the client is overloaded (or
    /// connections leak). Nothing was sent, but retrying would only add load.
    Exhausted(PoolError),
    /// The client is closed.
    Closed,
    /// The connection failed before the request's first byte was written. Nothing was sent.
    NotSent(io::Error),
    /// The connection failed, or the reply did not come in time, after the request was
    /// written: the server may have executed it.
    Interrupted(io::Error),
    /// The server answered `ERR ...`: it would answer the same again.
    Server(String),
    /// A key or value the line protocol cannot carry (see `check_key`). Nothing was sent.
    Invalid(String),
    /// A reply this client does not understand.
    Protocol(String),
}

impl RequestError {
    /// Whether sending the request again is safe: always when it was never sent, and when it
    /// may have been executed only if executing it twice does what executing it once does.
    /// Never for application errors (the answer would be the same), overload (retries add
    /// load) or a closed client.
    fn is_safe_to_retry(&self, idempotent: bool) -> bool {
        match self {
            RequestError::Unavailable(_) | RequestError::NotSent(_) => true,
            RequestError::Interrupted(_) => idempotent,
            RequestError::Exhausted(_)
            | RequestError::Closed
            | RequestError::Server(_)
            | RequestError::Invalid(_)
            | RequestError::Protocol(_) => false,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Unavailable(e) => write!(f, "server unavailable, not sent: {e}"),
            RequestError::Exhausted(e) => write!(f, "client overloaded, not sent: {e}"),
            RequestError::Closed => f.write_str("the client is closed"),
            RequestError::NotSent(e) => write!(f, "connection failed, not sent: {e}"),
            RequestError::Interrupted(e) => {
                write!(f, "connection failed after sending, outcome unknown: {e}")
            }
            RequestError::Server(message) => write!(f, "server error: {message}"),
            RequestError::Invalid(message) => write!(f, "invalid request, not sent: {message}"),
            RequestError::Protocol(reply) => write!(f, "unexpected reply {reply:?}"),
        }
    }
}

impl Error for RequestError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            RequestError::Unavailable(e) | RequestError::Exhausted(e) => Some(e),
            RequestError::NotSent(e) | RequestError::Interrupted(e) => Some(e),
            _ => None,
        }
    }
}

/// A client of the key-value server: cheap to clone, every clone shares one pool, one retry
/// budget and one retry counter.
#[derive(Debug, Clone)]
struct Client {
    pool: Pool<LineManager>,
    policy: RetryPolicy,
    budget: Arc<TpsBudget>,
    /// The deadline of one exchange (write the request, read its reply).
    request_timeout: Duration,
    /// Retries made, to export as a metric (or, as here, to wait on).
    retries: Arc<watch::Sender<u64>>,
}

impl Client {
    /// Connects a client to `addr`: opens the pool's first connections, failing fast if the
    /// server is down.
    async fn connect(addr: SocketAddr) -> Result<Client, Box<dyn Error>> {
        let pool = Pool::builder(LineManager { addr })
            // Size it to what the server accepts from this instance; callers beyond it queue.
            .max_size(8)
            .min_idle(2)
            // The one deadline over a `get()`. Short, so that a request made while the server
            // is down fails over to the retry loop, whose backoff, deadline and budget decide
            // what comes next. (Also short so the demo is: a service might use a second.)
            .acquire_timeout(Duration::from_millis(300))
            .connect_timeout(Duration::from_millis(500))
            .validation_timeout(Duration::from_millis(250))
            .test_on_checkout(CheckoutTest::IdleFor(Duration::from_millis(500)))
            // Connects while the server is down: 25 ms, doubling, up to 150 ms, +/- 20 %.
            .connect_backoff(
                Backoff::exponential(Duration::from_millis(25))
                    .max_delay(Duration::from_millis(150))
                    .jitter(Jitter::Proportional(0.2))
                    .build()?,
            )
            .build()?;
        // Lifetimes, idle timeouts and refills to `min_idle`, until the pool is closed.
        tokio::spawn(pool.maintenance(Duration::from_secs(5)));
        pool.warm_up().await?;
        let policy = RetryPolicy::builder()
            .backoff(
                Backoff::exponential(Duration::from_millis(20))
                    .max_delay(Duration::from_millis(500))
                    .jitter(Jitter::Full),
            )
            .max_attempts(5)
            // No request keeps its caller longer than this, retries included.
            .max_elapsed(Duration::from_secs(3))
            .build()?;
        Ok(Client {
            pool,
            policy,
            // Finagle's defaults: retries add at most 20 % to the requests of the last 10 s,
            // plus 10 retries a second. Shared by every request of every clone.
            budget: Arc::new(TpsBudget::builder().build()?),
            request_timeout: Duration::from_secs(1),
            retries: Arc::new(watch::Sender::new(0)),
        })
    }

    /// `GET key`: the value, if the key is set. Idempotent.
    async fn get(&self, key: &str) -> Result<Option<String>, RequestError> {
        check_key(key)?;
        let reply = self.request(format!("GET {key}"), true).await?;
        match reply.split_once(' ') {
            Some(("VALUE", value)) => Ok(Some(value.to_owned())),
            _ if reply == "NIL" => Ok(None),
            _ => Err(RequestError::Protocol(reply)),
        }
    }

    /// `SET key value`. Idempotent: setting the same value twice leaves what setting it once
    /// does.
    async fn set(&self, key: &str, value: &str) -> Result<(), RequestError> {
        check_key(key)?;
        check_value(value)?;
        match self.request(format!("SET {key} {value}"), true).await? {
            reply if reply == "OK" => Ok(()),
            reply => Err(RequestError::Protocol(reply)),
        }
    }

    /// `INCR key`: the new value. *Not* idempotent: sent twice, it counts twice.
    async fn incr(&self, key: &str) -> Result<i64, RequestError> {
        check_key(key)?;
        let reply = self.request(format!("INCR {key}"), false).await?;
        reply
            .strip_prefix("VALUE ")
            .and_then(|n| n.parse().ok())
            .ok_or(RequestError::Protocol(reply))
    }

    /// Retries made so far: a `watch` channel, to export as a metric or to wait on.
    fn retries(&self) -> watch::Receiver<u64> {
        self.retries.subscribe()
    }

    /// The pool's metrics.
    fn metrics(&self) -> Metrics {
        self.pool.metrics()
    }

    /// Whole retries the budget would allow right now.
    fn retry_budget(&self) -> u64 {
        self.budget.available()
    }

    /// Closes the pool: new requests fail with `Closed`; requests in flight get `timeout`.
    async fn close(&self, timeout: Duration) -> Result<(), CloseTimeout> {
        self.pool.close(timeout).await
    }

    /// Sends `line`, retrying what is safe to retry (`idempotent` says whether a request that
    /// may have been executed can be sent again).
    ///
    /// Cancel-safe: dropping the future drops the attempt in flight, whose connection is
    /// tainted and therefore closed, and starts no other.
    async fn request(&self, line: String, idempotent: bool) -> Result<String, RequestError> {
        retry(|| self.attempt(&line))
            .with(&self.policy)
            .when(|outcome: &Result<String, RequestError>| match outcome {
                Err(e) if e.is_safe_to_retry(idempotent) => Decision::Retry,
                _ => Decision::DontRetry,
            })
            .budget(self.budget.clone())
            .on_retry(|event: &RetryEvent<'_, String, RequestError>| {
                // A real client would log this with `tracing` and count it in its metrics.
                if let Err(e) = event.outcome {
                    println!(
                        "   [retry] {line}: attempt {} failed ({e}); retrying in {} ms",
                        event.attempt,
                        event.delay.as_millis()
                    );
                }
                self.retries.send_modify(|n| *n += 1);
            })
            .await
    }

    /// One attempt: a connection from the pool, one exchange under `request_timeout`.
    async fn attempt(&self, line: &str) -> Result<String, RequestError> {
        let mut conn = self.pool.get().await.map_err(|e| match e {
            e @ PoolError::Unavailable { .. } => RequestError::Unavailable(e),
            PoolError::Closed => RequestError::Closed,
            // `Exhausted`, and whatever a later version adds (the enum is non-exhaustive).
            e => RequestError::Exhausted(e),
        })?;
        // From the request's first byte to its reply's last, the connection's state is
        // unknown: if this future is dropped in between (the caller's own timeout, a
        // `select!`), or the exchange fails, the tainted connection is closed instead of going
        // back to the pool with a reply still on its way.
        Pooled::taint(&mut conn);
        let reply = match tokio::time::timeout(self.request_timeout, conn.exchange(line)).await {
            Ok(reply) => reply?,
            // Whether the request left or not, it may have: count it as sent.
            Err(_) => {
                return Err(RequestError::Interrupted(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no reply within {:?}", self.request_timeout),
                )));
            }
        };
        Pooled::untaint(&mut conn);
        // An application error came on a healthy connection: it goes back to the pool.
        match reply.strip_prefix("ERR ") {
            Some(message) => Err(RequestError::Server(message.to_owned())),
            None => Ok(reply),
        }
    }
}

/// Refuses a key the protocol cannot carry, before anything is sent: a line break would end the
/// request early and make the rest a second request (whose extra reply the connection's next
/// user would read as theirs), and a space would make the server read part of the key as the
/// value. An empty key would be read as a missing one.
fn check_key(key: &str) -> Result<(), RequestError> {
    if key.is_empty() || key.contains([' ', '\r', '\n']) {
        return Err(RequestError::Invalid(format!(
            "key {key:?} is empty or holds a space or a line break"
        )));
    }
    Ok(())
}

/// Refuses a value holding a line break, for the reason `check_key` gives. Spaces are fine: the
/// value is the rest of the line.
fn check_value(value: &str) -> Result<(), RequestError> {
    if value.contains(['\r', '\n']) {
        return Err(RequestError::Invalid(format!(
            "value {value:?} holds a line break"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The subscription: one long-lived, reconnecting connection the server pushes events on.
// ---------------------------------------------------------------------------------------------

/// The subscription's stream: a `ReconnectingStream` whose every new connection subscribes
/// to `channel` again, asking for the events after the last one seen (`last_seen`, kept up to
/// date by `run_subscription`), so that it resumes where it left off. Not connected yet: the
/// first read connects.
fn subscription(
    addr: SocketAddr,
    channel: &'static str,
    last_seen: Arc<AtomicU64>,
) -> Result<ReconnectingStream<TcpStream>, ConfigError> {
    ReconnectingStream::builder(move || TcpStream::connect(addr))
        // A subscription should be back soon after the server: 50 ms, doubling, up to 2 s,
        // +/- 20 % (the default is gRPC's 1 s to 120 s, made for not hammering a big fleet).
        .backoff(
            Backoff::exponential(Duration::from_millis(50))
                .max_delay(Duration::from_secs(2))
                .jitter(Jitter::Proportional(0.2))
                .build()?,
        )
        .connect_timeout(Duration::from_secs(2))
        // The server sends a heartbeat every 10 s: 30 s of silence means the connection is
        // dead even though no FIN or RST arrived (a NAT forgot it, the server host froze).
        .idle_timeout(Duration::from_secs(30))
        .on_connect(move |conn: TcpStream| {
            let after = last_seen.load(Ordering::Acquire);
            subscribe(conn, channel, after)
        })
        .build()
}

/// The subscription handshake, run on every new connection before anyone reads from it.
async fn subscribe(mut conn: TcpStream, channel: &str, after: u64) -> io::Result<TcpStream> {
    conn.write_all(format!("SUBSCRIBE {channel} {after}\n").as_bytes())
        .await?;
    let reply = read_line_unbuffered(&mut conn).await?;
    if reply != format!("SUBSCRIBED {channel}") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("SUBSCRIBE answered with {reply:?}"),
        ));
    }
    Ok(conn)
}

/// Reads one line a byte at a time. The events the server pushes right after the handshake
/// reply may arrive in the same segment: a buffered reader here would swallow them, and they
/// would be lost with its buffer when the hook returns the bare connection.
async fn read_line_unbuffered(conn: &mut TcpStream) -> io::Result<String> {
    let mut line = Vec::new();
    loop {
        match conn.read_u8().await? {
            b'\n' => break,
            _ if line.len() >= 1024 => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            byte => line.push(byte),
        }
    }
    String::from_utf8(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads the subscription until `stop` fires or `events`' receiver is dropped: forwards each
/// event once, in order, with its sequence number, to `events`, and carries on across lost
/// connections (the next read reconnects and the hook resubscribes).
///
/// `events` is bounded: while its receiver lags, this stops reading, the server's buffer fills,
/// and a server that cuts a lagging subscriber (this one does) is resumed from `last_seen` on
/// the next connection. Memory stays bounded on both sides.
async fn run_subscription(
    stream: ReconnectingStream<TcpStream>,
    last_seen: Arc<AtomicU64>,
    events: mpsc::Sender<Event>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut lines = BufReader::new(stream).lines();
    loop {
        let next = tokio::select! {
            // `next_line` is cancel-safe: a line half-read when `stop` fires is not lost.
            next = lines.next_line() => next,
            _ = &mut stop => break,
        };
        match next {
            // The heartbeat: its only job is to keep the idle timeout from firing.
            Ok(Some(line)) if line == "PING" => {}
            Ok(Some(line)) => {
                let Some((seq, event)) = parse_message(&line) else {
                    println!("   [sub] unexpected push {line:?}");
                    continue;
                };
                // Replays start after the last event seen, but one may also have arrived
                // live between the reconnect and the replay: keep each event once.
                if seq > last_seen.load(Ordering::Acquire) {
                    last_seen.store(seq, Ordering::Release);
                    let sent = tokio::select! {
                        sent = events.send((seq, event.to_owned())) => sent.is_ok(),
                        _ = &mut stop => false,
                    };
                    // Nobody listens any more (or we were told to stop): stop reading.
                    if !sent {
                        break;
                    }
                }
            }
            // Closed by its owner.
            Ok(None) => return,
            Err(e) if is_closed(&e) => {
                println!("   [sub] closed for good: {e}");
                return;
            }
            Err(e) if is_lost(&e) => {
                println!(
                    "   [sub] {e}; resubscribing after #{}",
                    last_seen.load(Ordering::Acquire)
                );
                // A partial line from the lost connection must not prefix the new one's first.
                lines = lines.into_inner().lines();
            }
            Err(e) => println!("   [sub] bad push: {e}"),
        }
    }
    // Close explicitly, so the state watchers see `Closed` (dropping only ends the channel).
    lines.get_mut().get_mut().close();
}

/// `MESSAGE <seq> <event>` as its parts.
fn parse_message(line: &str) -> Option<(u64, &str)> {
    let (seq, event) = line.strip_prefix("MESSAGE ")?.split_once(' ')?;
    Some((seq.parse().ok()?, event))
}

/// The connection went down under the read; the next one reconnects.
fn is_lost(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<ConnectionLost>())
}

/// The stream gave up for good (its policy's `max_attempts`) or was closed.
fn is_closed(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Closed>())
}

/// Prints every state change of the subscription's connection. A `watch` channel keeps only
/// the latest state, so a slow watcher may skip steps; what it prints is always current.
async fn watch_state(mut state: watch::Receiver<ConnectionState>) {
    while state.changed().await.is_ok() {
        let line = match &*state.borrow_and_update() {
            ConnectionState::Connecting { attempt } => format!("connecting (attempt {attempt})"),
            ConnectionState::Connected { generation, .. } => {
                format!("connected (connection #{generation})")
            }
            ConnectionState::Disconnected {
                cause,
                next_attempt_at,
                ..
            } => format!(
                "disconnected: {cause}; next attempt in {} ms",
                next_attempt_at
                    .saturating_duration_since(tokio::time::Instant::now())
                    .as_millis()
            ),
            ConnectionState::Closed(reason) => format!("closed: {reason}"),
            other => other.name().to_owned(),
        };
        println!("   [state] {line}");
    }
}

// ---------------------------------------------------------------------------------------------
// The script.
// ---------------------------------------------------------------------------------------------

/// Runs the script against the embedded server, printing what happens; exits 0.
#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let mut server = Server::start().await?;
    let addr = server.addr;
    println!("server listening on {addr}");

    let client = Client::connect(addr).await?;
    println!("pool warmed up: {}", client.metrics());

    let last_seen = Arc::new(AtomicU64::new(0));
    let stream = subscription(addr, "keyspace", Arc::clone(&last_seen))?;
    let mut state = stream.state();
    let watcher = tokio::spawn(watch_state(stream.state()));
    // Bounded: a consumer that falls behind slows the subscription down (see
    // `run_subscription`) instead of growing a queue without limit.
    let (events_tx, mut events) = mpsc::channel(64);
    let (stop, stop_rx) = oneshot::channel();
    let reader = tokio::spawn(run_subscription(stream, last_seen, events_tx, stop_rx));
    // Connected means subscribed: the hook runs before the connection is published.
    state.wait_for(ConnectionState::is_connected).await?;
    println!();

    println!("1. Requests through the pool; the subscription sees the writes");
    client.set("greeting", "hello").await?;
    println!("   SET greeting hello -> OK");
    expect_event(&mut events, "set greeting hello").await?;
    println!("   GET greeting -> {:?}", client.get("greeting").await?);
    println!("   INCR visits -> {}", client.incr("visits").await?);
    expect_event(&mut events, "incr visits 1").await?;
    println!();

    println!("2. An application error is not retried; an invalid request is not sent");
    match client.incr("greeting").await {
        Err(e @ RequestError::Server(_)) => {
            println!("   INCR greeting -> {e} (no retry: the answer would be the same)");
        }
        other => return Err(format!("expected a server error, got {other:?}").into()),
    }
    // A value with a line break would make the server run a second command ("INCR visits")
    // and leave its reply on the connection for the next request: refused, nothing sent.
    match client.set("greeting", "v\nINCR visits").await {
        Err(e @ RequestError::Invalid(_)) => println!("   SET greeting ... -> {e}"),
        other => return Err(format!("expected an invalid request, got {other:?}").into()),
    }
    println!();

    println!("3. Replies lost after the server did the work (it cuts the connection)");
    server.store.cut_next("GET");
    println!(
        "   GET greeting -> {:?} (idempotent: retried)",
        client.get("greeting").await?
    );
    server.store.cut_next("INCR");
    match client.incr("visits").await {
        Err(e @ RequestError::Interrupted(_)) => {
            println!("   INCR visits -> {e}");
            println!("   (not idempotent: not retried; the subscription says it was applied:)");
        }
        other => return Err(format!("expected an interrupted INCR, got {other:?}").into()),
    }
    expect_event(&mut events, "incr visits 2").await?;
    println!();

    println!("4. The server restarts while a request is being made");
    server.stop().await;
    // Wait until the subscription has seen its connection close. The pool's idle connections
    // were closed at the same moment, so by now they are almost surely seen closed too, and
    // `is_broken` discards them at checkout. One handed out anyway fails after sending, and
    // the `SET` below, being idempotent, is retried all the same.
    state.wait_for(|s| !s.is_connected()).await?;
    println!("   server stopped; the subscription noticed");
    let mut retries = client.retries();
    let request = client.set("greeting", "bye");
    tokio::pin!(request);
    // Bring the server back as soon as the request has failed once and is waiting to retry:
    // an event, not a guess at how long the outage should be.
    tokio::select! {
        result = &mut request => {
            return Err(format!("expected a failure with the server down: {result:?}").into());
        }
        changed = retries.changed() => changed?,
    }
    server.restart().await?;
    println!("   server back on {addr}");
    request.await?;
    println!("   SET greeting bye -> OK");
    // The event is delivered live if the subscription is back before the SET ran, replayed
    // when it resubscribes otherwise: once either way.
    state
        .wait_for(
            |s| matches!(s, ConnectionState::Connected { generation, .. } if *generation >= 2),
        )
        .await?;
    expect_event(&mut events, "set greeting bye").await?;
    println!(
        "   GET greeting -> {:?}, INCR visits -> {}",
        client.get("greeting").await?,
        client.incr("visits").await?
    );
    expect_event(&mut events, "incr visits 3").await?;
    println!();

    println!("5. Shutdown");
    let _ = stop.send(());
    reader.await?;
    watcher.await?;
    client.close(Duration::from_secs(1)).await?;
    let metrics = client.metrics();
    println!(
        "   pool: created {} connections, {} connect failures; {metrics}",
        metrics.created, metrics.connect_failures
    );
    println!(
        "   retries: {}; the budget would allow {} more now",
        *client.retries().borrow(),
        client.retry_budget()
    );
    server.stop().await;
    println!("done in {:.0?}", started.elapsed());
    Ok(())
}

/// Waits for the subscription's next event and checks it is `expected`. It is an event, not a
/// sleep; the 5 s bound only makes a broken run fail instead of hang.
async fn expect_event(
    events: &mut mpsc::Receiver<Event>,
    expected: &str,
) -> Result<(), Box<dyn Error>> {
    let (seq, event) = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .map_err(|_| format!("no {expected:?} event within 5 s"))?
        .ok_or("the subscription ended")?;
    println!("   [sub] #{seq} {event}");
    if event != expected {
        return Err(format!("expected the event {expected:?}, got {event:?}").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The embedded server, only so that the example runs on its own.
// ---------------------------------------------------------------------------------------------

/// Locks a std mutex of the server, ignoring poisoning (a panicked handler left valid data).
fn lock<T>(mutex: &StdMutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the server keeps across restarts (think Redis with its append-only file): the data,
/// and every event of the `keyspace` channel, numbered from 1, for subscribers that resume.
#[derive(Debug)]
struct Store {
    data: StdMutex<HashMap<String, String>>,
    history: StdMutex<Vec<String>>,
    live: broadcast::Sender<Event>,
    /// A verb whose next request is executed, then answered by cutting the connection: a crash
    /// or a network cut after the server did the work and before the client heard of it.
    cut: StdMutex<Option<&'static str>>,
}

impl Store {
    /// An empty store.
    fn new() -> Store {
        Store {
            data: StdMutex::new(HashMap::new()),
            history: StdMutex::new(Vec::new()),
            live: broadcast::Sender::new(64),
            cut: StdMutex::new(None),
        }
    }

    /// Records an event and sends it to the live subscribers, under one lock so that sequence
    /// numbers and delivery order agree.
    fn publish(&self, event: String) {
        let mut history = lock(&self.history);
        history.push(event.clone());
        let _ = self.live.send((history.len() as u64, event));
    }

    /// `SET`: stores the value and publishes `set key value`.
    fn set(&self, key: &str, value: &str) {
        lock(&self.data).insert(key.to_owned(), value.to_owned());
        self.publish(format!("set {key} {value}"));
    }

    /// `INCR`: adds one (to 0 if unset) and publishes `incr key n`; an error if the value is
    /// not an integer.
    fn incr(&self, key: &str) -> Result<i64, &'static str> {
        let n = {
            let mut data = lock(&self.data);
            let value = data.entry(key.to_owned()).or_insert_with(|| "0".to_owned());
            let n = value
                .parse::<i64>()
                .map_err(|_| "value is not an integer")?
                + 1;
            *value = n.to_string();
            n
        };
        self.publish(format!("incr {key} {n}"));
        Ok(n)
    }

    /// The events after `after`, and the live feed of those that follow them.
    fn subscribe(&self, after: u64) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let history = lock(&self.history);
        let live = self.live.subscribe();
        let missed = (after as usize..history.len())
            .map(|i| (i as u64 + 1, history[i].clone()))
            .collect();
        (missed, live)
    }

    /// Makes the next `verb` request execute, then cut its connection without a reply.
    fn cut_next(&self, verb: &'static str) {
        *lock(&self.cut) = Some(verb);
    }

    /// Whether this `verb` request is the one to cut (and if so, forgets it).
    fn take_cut(&self, verb: &str) -> bool {
        let mut cut = lock(&self.cut);
        let hit = *cut == Some(verb);
        if hit {
            *cut = None;
        }
        hit
    }
}

/// The server: its address, its store, and while it runs, its task and the signal that stops
/// it.
#[derive(Debug)]
struct Server {
    addr: SocketAddr,
    store: Arc<Store>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Server {
    /// Starts on a free port of 127.0.0.1.
    async fn start() -> io::Result<Server> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let mut server = Server {
            addr: listener.local_addr()?,
            store: Arc::new(Store::new()),
            running: None,
        };
        server.run(listener);
        Ok(server)
    }

    /// Serves `listener` on a task of its own.
    fn run(&mut self, listener: TcpListener) {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, Arc::clone(&self.store), stopped));
        self.running = Some((stop, task));
    }

    /// Stops: closes the listener and every connection, and returns once they are closed.
    async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// Starts again on the same port, with the same store. (tokio sets `SO_REUSEADDR` on
    /// listeners, so the port is free at once despite the connections just closed.)
    async fn restart(&mut self) -> io::Result<()> {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await?;
        self.run(listener);
        Ok(())
    }
}

/// Accepts connections until `stop` fires, then closes the listener and every connection.
async fn serve(listener: TcpListener, store: Arc<Store>, mut stop: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    connections.spawn(handle(socket, Arc::clone(&store)));
                }
                Err(e) => eprintln!("   [server] accept failed: {e}"),
            },
            _ = &mut stop => break,
        }
        // Reap the connections that ended, so the set does not grow forever.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    // Aborts every connection's task and waits for it: its socket is closed when this returns.
    connections.shutdown().await;
}

/// One connection: requests until the client hangs up, or a subscription.
async fn handle(socket: TcpStream, store: Arc<Store>) {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.splitn(3, ' ').collect();
        let reply = match words[..] {
            ["PING"] => "PONG".to_owned(),
            ["GET", key] => match lock(&store.data).get(key) {
                Some(value) => format!("VALUE {value}"),
                None => "NIL".to_owned(),
            },
            ["SET", key, value] => {
                store.set(key, value);
                "OK".to_owned()
            }
            ["INCR", key] => match store.incr(key) {
                Ok(n) => format!("VALUE {n}"),
                Err(message) => format!("ERR {message}"),
            },
            ["SUBSCRIBE", "keyspace", after] => {
                let after = after.parse().unwrap_or(0);
                return push_events(lines.into_inner(), write, &store, after).await;
            }
            _ => "ERR unknown command".to_owned(),
        };
        if store.take_cut(words[0]) {
            return;
        }
        if write
            .write_all(format!("{reply}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A subscribed connection: the missed events, then the live ones, and a heartbeat.
async fn push_events(
    read: BufReader<OwnedReadHalf>,
    mut write: OwnedWriteHalf,
    store: &Store,
    after: u64,
) {
    /// How often an idle subscription gets a `PING`.
    const HEARTBEAT: Duration = Duration::from_secs(10);
    let (missed, mut live) = store.subscribe(after);
    let mut out = String::from("SUBSCRIBED keyspace\n");
    for (seq, event) in missed {
        out.push_str(&format!("MESSAGE {seq} {event}\n"));
    }
    if write.write_all(out.as_bytes()).await.is_err() {
        return;
    }
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let mut input = read.lines();
    loop {
        let push = tokio::select! {
            event = live.recv() => match event {
                Ok((seq, event)) => format!("MESSAGE {seq} {event}\n"),
                // Fell behind the feed: cut it; it resumes from its last event.
                Err(_) => return,
            },
            _ = heartbeat.tick() => "PING\n".to_owned(),
            line = input.next_line() => match line {
                Ok(Some(_)) => continue,
                _ => return, // the client hung up
            },
        };
        if write.write_all(push.as_bytes()).await.is_err() {
            return;
        }
    }
}
