//! A line-protocol TCP client that survives server restarts: `ReconnectingStream` with an
//! on-connect handshake, an idle timeout, a state watcher, per-request deadlines, and one resend
//! of idempotent requests after a lost connection.
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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A client of a line protocol: one request line, one reply line.
struct LineClient {
    stream: BufReader<ReconnectingStream<TcpStream>>,
    request_timeout: Duration,
}

impl LineClient {
    fn new(addr: SocketAddr, name: &'static str) -> Result<LineClient, Box<dyn std::error::Error>> {
        let stream = ReconnectingStream::builder(move || TcpStream::connect(addr))
            // Fail an attempt that takes longer than 5 s (the backoff is gRPC's: 1 s, x1.6,
            // up to 120 s, +/- 20 %).
            .connect_timeout(Duration::from_secs(5))
            // The server sends a line at least every 20 s; silence for 60 s means it is gone.
            .idle_timeout(Duration::from_secs(60))
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

    /// Sends an idempotent request. If the connection dies under it, sends it once more on the
    /// next connection: the server may have seen the first copy, which is fine only because
    /// the request is idempotent.
    async fn idempotent(&mut self, request: &str) -> io::Result<String> {
        match self.exchange(request).await {
            Err(e) if is_lost(&e) => {
                eprintln!("  [client] {e}; sending {request:?} again on a new connection");
                self.exchange(request).await
            }
            other => other,
        }
    }

    /// One request and its reply, under the request deadline. A request cut by the deadline
    /// leaves a reply in flight that would be read as the next request's answer, so the
    /// connection is replaced.
    async fn exchange(&mut self, request: &str) -> io::Result<String> {
        let exchange = async {
            let stream = self.stream.get_mut();
            stream.write_all(format!("{request}\n").as_bytes()).await?;
            stream.flush().await?;
            let mut reply = String::new();
            if self.stream.read_line(&mut reply).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Ok(reply.trim_end().to_owned())
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                self.stream.get_mut().reconnect();
                Err(io::Error::new(io::ErrorKind::TimedOut, "no reply in time"))
            }
        }
    }
}

/// The connection went down under the operation (as opposed to a protocol error).
fn is_lost(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<ConnectionLost>())
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
