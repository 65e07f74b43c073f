//! A line-protocol TCP client that survives server restarts: `ReconnectingStream` with an
//! on-connect handshake, TCP keepalive, a state watcher, per-request deadlines, and one resend
//! of idempotent requests after a lost connection (or a reply that did not come in time).
//!
//! ```text
//! cargo run --example reconnect_tcp --features reconnect                  # embedded server, restarted mid-run
//! cargo run --example reconnect_tcp --features reconnect -- 10.0.0.5:7000 # your own line server
//! ```
//!
//! Copy `LineClient` and `watch_state` into a service; the embedded server exists only so the
//! example runs on its own.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use palisade::reconnect::{ConnectionLost, ConnectionState, ReconnectingStream};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A client of a line protocol: one request line, one reply line.
struct LineClient {
    stream: BufReader<ReconnectingStream<TcpStream>>,
    request_timeout: Duration,
}

impl LineClient {
    fn new(addr: SocketAddr, name: &'static str) -> Result<LineClient, Box<dyn std::error::Error>> {
        let stream = ReconnectingStream::builder(move || connect(addr))
            // Fail an attempt that takes longer than 5 s (the backoff is gRPC's: 1 s, x1.6,
            // up to 120 s, +/- 20 %).
            .connect_timeout(Duration::from_secs(5))
            // No `idle_timeout`: it counts only while a read waits, and here a read waits only
            // for a reply, which the request deadline already bounds. It is for streams the
            // server pushes on, with a heartbeat (see `examples/tcp_client.rs`). A connection
            // that dies while idle is found by TCP keepalive (see `connect`), or by the next
            // request's deadline.
            // Every new connection introduces itself before any request uses it.
            .on_connect(move |mut conn: TcpStream| async move {
                conn.write_all(format!("HELLO {name}\n").as_bytes()).await?;
                // The server sends nothing else before a request, so this short-lived buffer
                // cannot swallow bytes meant for the client's own reader.
                let mut greeting = String::new();
                BufReader::new(&mut conn).read_line(&mut greeting).await?;
                if !greeting.starts_with("WELCOME") {
                    return Err(io::Error::other(format!("bad greeting {greeting:?}")));
                }
                Ok(conn)
            })
            .build()?;
        Ok(LineClient {
            stream: BufReader::new(stream),
            request_timeout: Duration::from_secs(10),
        })
    }

    /// The connection state, to log or export.
    fn state(&self) -> watch::Receiver<ConnectionState> {
        self.stream.get_ref().state()
    }

    /// Sends an idempotent request. If the connection dies under it, or its reply does not come
    /// in time (and the connection is replaced), sends it once more on the next connection: the
    /// server may have seen the first copy, which is fine only because the request is
    /// idempotent.
    async fn idempotent(&mut self, request: &str) -> io::Result<String> {
        match self.exchange(request).await {
            Err(e) if is_lost(&e) || is_replaced(&e) => {
                eprintln!("  [client] {e}; sending {request:?} again on a new connection");
                self.exchange(request).await
            }
            other => other,
        }
    }

    /// One request and its reply, under the request deadline.
    ///
    /// A request cut by the deadline after any of it was written leaves half a request, or a
    /// reply in flight that would be read as the next request's answer, so the connection is
    /// replaced (a `NoReply` error). One cut before its first byte was written (the stream was
    /// still connecting) leaves nothing behind: the connect in flight goes on for the next
    /// request, keeping its place in the backoff.
    async fn exchange(&mut self, request: &str) -> io::Result<String> {
        // Before anything is written: a line break would make the rest a second request,
        // whose reply the next request would read as its own.
        if request.contains(['\r', '\n']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("request {request:?} holds a line break; not sent"),
            ));
        }
        let line = format!("{request}\n");
        let mut written = 0;
        let exchange = async {
            let stream = self.stream.get_mut();
            // `write` rather than `write_all`, to know whether any byte left.
            while written < line.len() {
                match stream.write(&line.as_bytes()[written..]).await? {
                    0 => return Err(io::ErrorKind::WriteZero.into()),
                    n => written += n,
                }
            }
            stream.flush().await?;
            let mut reply = String::new();
            if self.stream.read_line(&mut reply).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Ok(reply.trim_end().to_owned())
        };
        let outcome = tokio::time::timeout(self.request_timeout, exchange).await;
        match outcome {
            Ok(result) => result,
            Err(_) if written == 0 => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("not connected within {:?}; not sent", self.request_timeout),
            )),
            Err(_) => {
                self.stream.get_mut().reconnect();
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    NoReply(self.request_timeout),
                ))
            }
        }
    }
}

/// Connects with TCP keepalive on, so that a connection that dies silently while idle (the
/// server host lost power, a NAT forgot it) fails the next request at once, with a lost
/// connection (sent again if idempotent), instead of costing it the request deadline. The
/// probe timing is the OS's (on Linux: probes after 2 h idle, 9 probes 75 s apart; see
/// `sysctl net.ipv4.tcp_keepalive_time`); the `socket2` crate sets it per socket.
async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_keepalive(true)?;
    // One small line each way: don't let Nagle's algorithm hold a request back.
    socket.set_nodelay(true)?;
    socket.connect(addr).await
}

/// A request was written and its reply did not come within the deadline: the server may have
/// executed it. The connection was replaced, since its reply may still arrive.
#[derive(Debug)]
struct NoReply(Duration);

impl std::fmt::Display for NoReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no reply within {:?}; the connection was replaced",
            self.0
        )
    }
}

impl std::error::Error for NoReply {}

/// The connection went down under the operation (as opposed to a protocol error).
fn is_lost(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<ConnectionLost>())
}

/// The request was written, its reply was late, and the connection was replaced.
fn is_replaced(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<NoReply>())
}

/// Logs every state the watcher sees. A `watch` channel keeps only the latest state, so a slow
/// watcher may skip steps; the state it prints is always current.
async fn watch_state(mut state: watch::Receiver<ConnectionState>) {
    while state.changed().await.is_ok() {
        let line = match &*state.borrow_and_update() {
            ConnectionState::Connected { generation, .. } => format!("connected (#{generation})"),
            ConnectionState::Disconnected {
                cause,
                next_attempt_at,
                attempts,
            } => format!(
                "disconnected after {attempts} attempt(s): {cause}; retrying in {:?}",
                next_attempt_at.saturating_duration_since(tokio::time::Instant::now())
            ),
            ConnectionState::Closed(reason) => format!("closed: {reason}"),
            other => other.name().to_owned(),
        };
        eprintln!("  [state] {line}");
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let external = std::env::args().nth(1);
    let (addr, mut server) = match &external {
        Some(addr) => (addr.parse()?, None),
        None => {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            (addr, Some(tokio::spawn(serve(listener))))
        }
    };
    let mut client = LineClient::new(addr, "example")?;
    let watcher = tokio::spawn(watch_state(client.state()));

    for i in 1..=6 {
        if i == 4
            && let Some(running) = server.take()
        {
            eprintln!("  [server] restarting (down for 1.5 s)");
            running.abort();
            let _ = running.await;
            server = Some(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                match TcpListener::bind(addr).await {
                    Ok(listener) => serve(listener).await,
                    Err(e) => eprintln!("  [server] cannot rebind {addr}: {e}"),
                }
            }));
        }
        let reply = client.idempotent(&format!("GET key{i}")).await?;
        println!("GET key{i} -> {reply}");
    }
    // Dropping the client closes its connection and ends the watch channel, so the watcher
    // prints what is left and stops.
    drop(client);
    watcher.await?;
    if let Some(server) = server {
        server.abort();
    }
    Ok(())
}

/// The embedded server: greets `HELLO` with `WELCOME`, answers `GET k` with `VALUE k`. Aborting
/// it closes every connection (they live in its `JoinSet`).
async fn serve(listener: TcpListener) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        connections.spawn(async move {
            let (read, mut write) = socket.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = match line.split_once(' ') {
                    Some(("HELLO", name)) => format!("WELCOME {name}\n"),
                    Some(("GET", key)) => format!("VALUE {key}\n"),
                    _ => "ERROR unknown command\n".to_owned(),
                };
                if write.write_all(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}
