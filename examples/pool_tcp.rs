//! A connection pool for a line-protocol TCP backend, set up the way a production service
//! would: bounded size and waits, connections renewed before the backend or a proxy cuts them,
//! idle ones checked in the background, leaks reported, requests with a deadline that cannot
//! leave a half-read connection behind, and a graceful close.
//!
//! ```text
//! cargo run --example pool_tcp --features pool
//! ```
//!
//! It starts its own tiny backend on 127.0.0.1 (any free port), so it runs anywhere. Point
//! `LineManager` at your own server to use it for real; the protocol here is one request line,
//! one reply line (think memcached's text protocol, SMTP, a Redis-like RESP subset).
//!
//! The pool reports what it does (connections created, discarded and why, connect failures,
//! suspected leaks) as `tracing` events with target `palisade_pool`; install a subscriber
//! (`tracing-subscriber`) to see them.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use palisade::pool::{CheckoutTest, Error, Manager, Pool, Pooled};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One connection to the backend: a buffered TCP stream speaking one line per request and per
/// reply.
#[derive(Debug)]
struct LineConn {
    stream: BufReader<TcpStream>,
}

impl LineConn {
    /// Sends one request line and reads its reply line. The caller checks the line first (see
    /// `check_line`): a line break in it would send the backend a second request.
    ///
    /// Not cancel-safe on its own: dropped after the write and before the whole reply is read,
    /// it leaves the reply on the wire for the next request to read as its own. The caller
    /// taints the pooled connection around it (see `call`), so such a connection is closed,
    /// never reused.
    async fn request(&mut self, line: &str) -> io::Result<String> {
        self.stream
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await?;
        let mut reply = String::new();
        if self.stream.read_line(&mut reply).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backend closed the connection",
            ));
        }
        reply.truncate(reply.trim_end().len());
        Ok(reply)
    }
}

/// How the pool makes and checks connections to one backend address.
#[derive(Debug)]
struct LineManager {
    addr: SocketAddr,
}

impl Manager for LineManager {
    type Connection = LineConn;
    type Error = io::Error;

    /// Runs on a task of its own, bounded by `connect_timeout`: a backend that accepts nothing
    /// costs the pool a timeout, never a stuck caller.
    async fn connect(&self) -> io::Result<LineConn> {
        let stream = TcpStream::connect(self.addr).await?;
        // Request/response on small messages: don't let Nagle hold back the request line.
        stream.set_nodelay(true)?;
        Ok(LineConn {
            stream: BufReader::new(stream),
        })
    }

    /// A real round trip, bounded by `validation_timeout`: run on connections idle longer than
    /// `test_on_checkout` says, and by the keepalive pass on connections idle for `keepalive`.
    async fn validate(&self, conn: &mut LineConn) -> io::Result<()> {
        match conn.request("PING").await?.as_str() {
            "PONG" => Ok(()),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("PING answered with {other:?}"),
            )),
        }
    }

    // `recycle` keeps its default (do nothing): this protocol has no per-connection state.
    // A database would roll back an open transaction here, or reset session variables.

    /// The cheap check made when a connection comes back and before it goes out: an idle
    /// connection has nothing to read, so end of stream (the server closed it), stray bytes or
    /// an error mean it is beyond use. `try_read` makes no syscall unless the runtime has
    /// already seen the socket turn readable, so this costs next to nothing.
    fn is_broken(&self, conn: &mut LineConn) -> bool {
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

/// Why a call failed, as the caller (an HTTP handler, say) must tell them apart.
#[derive(Debug)]
enum CallError {
    /// The backend is down or refusing: answer 503 at once, and let a circuit breaker stop
    /// sending work for a while. Retrying right away only adds load.
    BackendDown(String),
    /// Every connection was busy for the whole `acquire_timeout`: we are overloaded (shed
    /// load: 503/429 with Retry-After), the pool is too small, or connections leak (see the
    /// leak-detection warnings).
    Overloaded(String),
    /// The pool is closed: we are shutting down.
    ShuttingDown,
    /// The request cannot be sent as one line (it holds a line break). Nothing was sent.
    Invalid(String),
    /// No reply within `REQUEST_TIMEOUT`. The backend may have run the request; the connection
    /// was closed, since its reply may still arrive.
    Timeout(Duration),
    /// The request itself failed on a good connection.
    Io(io::Error),
}

/// The deadline of one request on a connection: the write of the request and the read of its
/// reply. A backend that never answers costs the caller this long, and its connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Refuses a request that is not exactly one line: with a `\n` (or a `\r`) in it, the backend
/// would read the rest as a second request, and its extra reply would be read by the
/// connection's next user as the answer to theirs.
fn check_line(request: &str) -> Result<(), CallError> {
    if request.contains(['\r', '\n']) {
        return Err(CallError::Invalid(format!(
            "request {request:?} holds a line break"
        )));
    }
    Ok(())
}

/// One request through the pool.
async fn call(pool: &Pool<LineManager>, request: &str) -> Result<String, CallError> {
    // Before a connection is taken, let alone a byte written.
    check_line(request)?;
    let mut conn = match pool.get().await {
        Ok(conn) => conn,
        // The error carries the last connect error and the pool's metrics at the deadline:
        // the log line a 3 a.m. page needs.
        Err(e @ Error::Unavailable { .. }) => return Err(CallError::BackendDown(e.to_string())),
        Err(e @ Error::Exhausted { .. }) => return Err(CallError::Overloaded(e.to_string())),
        Err(Error::Closed) => return Err(CallError::ShuttingDown),
        // `Error` is non-exhaustive: treat anything new as the backend failing.
        Err(e) => return Err(CallError::BackendDown(e.to_string())),
    };
    // From the write of the request until its whole reply is read, the connection's state is
    // unknown: if this future is dropped in between (a client hung up, a timeout fired), or
    // the request fails or times out, the tainted connection is closed instead of going back
    // to the pool.
    Pooled::taint(&mut conn);
    let reply = match tokio::time::timeout(REQUEST_TIMEOUT, conn.request(request)).await {
        Ok(reply) => reply.map_err(CallError::Io)?,
        // Still tainted: the late reply would be read as the next request's.
        Err(_) => return Err(CallError::Timeout(REQUEST_TIMEOUT)),
    };
    Pooled::untaint(&mut conn);
    Ok(reply)
    // `conn` goes back to the pool here: no I/O, never blocks, straight to the longest waiter.
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = start_backend().await?;

    let pool = Pool::builder(LineManager { addr })
        // At most this many connections, idle, in use and being opened together. Size it to
        // what the backend accepts from this instance, not to the number of callers: callers
        // beyond it wait in a fair FIFO line.
        .max_size(16)
        // Connections kept open when idle, so the first requests after a quiet spell do not
        // pay for a connect. Exempt from `idle_timeout`.
        .min_idle(2)
        // The one deadline over a whole `get()` (waiting, connecting, validating). A call takes
        // up to this plus `REQUEST_TIMEOUT`: keep the sum below your caller's own deadline (an
        // HTTP handler's, say), so it still has time to answer "unavailable".
        .acquire_timeout(Duration::from_secs(2))
        // One connect attempt; failed attempts are retried on `connect_backoff` while callers
        // wait.
        .connect_timeout(Duration::from_secs(1))
        // One `validate` or `recycle`.
        .validation_timeout(Duration::from_millis(500))
        // Renew connections before the backend, a NAT or a load balancer cuts them (set it
        // below the shortest such limit), and so they follow DNS and failover changes...
        .max_lifetime(Some(Duration::from_secs(30 * 60)))
        // ...each after a lifetime drawn from [27 min, 30 min], so connections opened together
        // (at warm-up, after an outage) do not all expire, and reconnect, together.
        .max_lifetime_jitter(0.1)
        // Close connections unused this long, down to `min_idle`: give back what a burst
        // opened.
        .idle_timeout(Some(Duration::from_secs(10 * 60)))
        // The maintenance pass validates connections idle this long, finding the ones a
        // firewall dropped silently before a caller gets one.
        .keepalive(Some(Duration::from_secs(60)))
        // Validate at checkout only connections idle for 500 ms or more (HikariCP's rule): a
        // connection used a moment ago is almost surely fine, and skipping the round trip
        // keeps the hot path fast.
        .test_on_checkout(CheckoutTest::IdleFor(Duration::from_millis(500)))
        // A spike of callers opens connections two at a time, never a storm against a
        // backend that is already slow.
        .max_concurrent_connects(2)
        // A connection held longer than this is reported (a warning naming the `get()` call
        // site): the cure for "the pool is exhausted and nobody knows why".
        .leak_detection(Some(Duration::from_secs(30)))
        .build()?;

    // The maintenance pass (lifetimes, idle timeouts, keepalive checks, leak reports, refill
    // to min_idle), every 5 s until the pool is closed or dropped.
    tokio::spawn(pool.maintenance(Duration::from_secs(5)));

    // Open `min_idle` connections before taking traffic (a readiness probe would wait for
    // this), failing fast if the backend is down.
    pool.warm_up().await?;
    println!("warmed up: {}", pool.metrics());

    // Concurrent requests: 50 callers share at most 16 connections.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..50 {
        let pool = pool.clone();
        calls.spawn(async move { call(&pool, &format!("hello {i}")).await });
    }
    let mut ok = 0;
    while let Some(result) = calls.join_next().await {
        match result? {
            Ok(_reply) => ok += 1,
            Err(CallError::BackendDown(e)) => eprintln!("backend down: {e}"),
            Err(CallError::Overloaded(e)) => eprintln!("overloaded: {e}"),
            Err(CallError::ShuttingDown) => eprintln!("shutting down"),
            Err(CallError::Invalid(e)) => eprintln!("refused: {e}"),
            Err(CallError::Timeout(after)) => eprintln!("no reply within {after:?}"),
            Err(CallError::Io(e)) => eprintln!("request failed: {e}"),
        }
    }
    println!("{ok} of 50 calls answered");
    println!(
        "one more: {}",
        call(&pool, "bye").await.map_err(|e| format!("{e:?}"))?
    );

    let metrics = pool.metrics();
    println!(
        "pool: {metrics}; created {}, connect failures {}, timeouts {}, leaks {}",
        metrics.created, metrics.connect_failures, metrics.timeouts, metrics.leaks
    );

    // Shutdown: refuse new `get()`s, close idle connections, and give the checked-out ones
    // until the deadline to come back (a shutdown coordinator's cleanup hook calls this).
    match pool.close(Duration::from_secs(5)).await {
        Ok(()) => println!("pool closed"),
        Err(e) => eprintln!("{e}"),
    }
    Ok(())
}

/// The toy backend: answers `PING` with `PONG` and any other line with the line in capitals.
async fn start_backend() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = match line.as_str() {
                        "PING" => "PONG".to_owned(),
                        other => other.to_uppercase(),
                    };
                    if write
                        .write_all(format!("{reply}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}
