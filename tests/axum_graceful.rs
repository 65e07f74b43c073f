//! The `axum_graceful` example as a process: each test starts the example binary, talks raw
//! HTTP/1.1 to it over TCP, shuts it down with real signals (`kill -TERM`) and checks what a
//! load balancer and a supervisor would see: readiness turning off, in-flight requests
//! completing, new requests refused once draining, the exit code and the time it took.
//!
//! `cargo test --all-targets` builds the example beside this test; when it is missing or older
//! than its sources (`cargo test --test axum_graceful` builds no example), the first test
//! builds it with `$CARGO build --example axum_graceful`.
#![cfg(unix)]

mod support;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// How long anything that should happen at once may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(10);

/// SIGTERM, readiness off, the listener closes, the slow request in flight completes, the
/// process exits 0 well within its deadline.
#[test]
fn sigterm_drains_in_flight_requests_and_exits_cleanly() {
    const READINESS_DELAY: Duration = Duration::from_millis(500);
    const DEADLINE: Duration = Duration::from_millis(5000);
    let mut server = Server::start(&[
        "--port",
        "0",
        "--readiness-delay-ms",
        "500",
        "--deadline-ms",
        "5000",
    ]);
    let addr = server.addr;
    assert_eq!(get(addr, "/ready").map(|r| r.status).ok(), Some(200));
    assert_eq!(get(addr, "/live").map(|r| r.status).ok(), Some(200));
    assert_eq!(get(addr, "/").map(|r| r.status).ok(), Some(200));

    // A request in flight when the signal arrives, still running once draining begins: the
    // handler prints a line once it runs.
    let slow = thread::spawn(move || get(addr, "/slow?ms=2000"));
    server.wait_for_line("slow request: started");

    let signalled = Instant::now();
    server.signal("-TERM");

    // Readiness turns off at once, while the service still serves for the readiness delay.
    eventually("/ready to answer 503", || {
        get(addr, "/ready").is_ok_and(|response| response.status == 503)
    });
    for path in ["/", "/live"] {
        let response = get(addr, path);
        // The listener stops no earlier than READINESS_DELAY after the signal: a request
        // answered before then was served while not ready. (Later, it may have been refused.)
        if signalled.elapsed() < READINESS_DELAY {
            assert_eq!(
                response.as_ref().map(|response| response.status).ok(),
                Some(200),
                "{path} is still served during the readiness delay: {response:?}"
            );
        }
    }

    // Once draining, a new request is refused: the listener has stopped accepting (connection
    // refused, or reset if it was still queued), or the shutdown layer answers 503.
    server.wait_for_line("phase: draining");
    let refused = get(addr, "/");
    eprintln!("request while draining: {refused:?}");
    match refused {
        Ok(response) => {
            assert_eq!(
                response.status, 503,
                "a request made while draining must be refused: {response:?}"
            );
            assert!(
                response
                    .head
                    .to_ascii_lowercase()
                    .contains("connection: close"),
                "a refusal closes the connection: {response:?}"
            );
        }
        Err(error) => assert!(
            matches!(
                error.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
            "a request made while draining must be refused, not left hanging: {error}"
        ),
    }

    // The request in flight completes.
    let response = slow
        .join()
        .expect("the slow request's thread")
        .expect("the slow request completes during the shutdown");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, "slept 2000 ms\n");

    let status = server.wait_exit(DEADLINE + PATIENCE);
    let took = signalled.elapsed();
    let output = server.output();
    assert_eq!(
        status.code(),
        Some(0),
        "a clean shutdown exits 0:\n{output}"
    );
    assert!(
        took < DEADLINE + Duration::from_secs(2),
        "exited {took:?} after SIGTERM, deadline {DEADLINE:?}:\n{output}"
    );
    assert!(
        output.contains("(signal SIGTERM)") && output.contains(", clean"),
        "the report says clean:\n{output}"
    );
    // The steps in order: the slow request and the worker finish while draining, the hooks
    // run after them (metrics first, the database last), and the report comes at the end.
    server.assert_in_order(&[
        "phase: not_ready",
        "phase: draining",
        "slow request: done",
        "worker: stopped",
        "phase: cleanup",
        "flush-metrics: ",
        "close-database: connections closed",
        "phase: done",
        "shutdown (signal SIGTERM)",
    ]);
    eprintln!("graceful shutdown: exited {took:?} after SIGTERM");
}

/// A second SIGTERM while draining escalates: the process exits at once with 143 (128 +
/// SIGTERM), although a request is still in flight and the deadline is far.
#[test]
fn a_second_sigterm_escalates_and_exits_143() {
    const DEADLINE: Duration = Duration::from_secs(20);
    let mut server = Server::start(&[
        "--port",
        "0",
        "--readiness-delay-ms",
        "300",
        "--deadline-ms",
        "20000",
    ]);
    let addr = server.addr;
    let slow = thread::spawn(move || get(addr, "/slow?ms=60000"));
    server.wait_for_line("slow request: started");

    server.signal("-TERM");
    server.wait_for_line("phase: draining");
    let escalated = Instant::now();
    server.signal("-TERM");

    let status = server.wait_exit(DEADLINE);
    let took = escalated.elapsed();
    let output = server.output();
    assert_eq!(
        status.code(),
        Some(143),
        "a shutdown escalated by SIGTERM exits 128 + 15:\n{output}"
    );
    // The abort grace is 1 s; the slow request would take a minute, the deadline 20 s.
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after the second SIGTERM:\n{output}"
    );
    assert!(
        output.contains("escalated by SIGTERM"),
        "the report names the escalation:\n{output}"
    );
    assert!(
        !output.contains("slow request: done") && !output.contains("phase: cleanup"),
        "nothing more ran after the escalation:\n{output}"
    );
    // The request in flight was cut off with the process: no response, certainly not a 200.
    if let Ok(Ok(response)) = slow.join() {
        assert_ne!(response.status, 200, "{response:?}");
    }
    eprintln!("escalation: exited {took:?} after the second SIGTERM");
}

/// A request longer than the drain timeout is cut at the request time limit (90 % of the drain
/// timeout) and answered 503, so the drain sees it end and the cleanup hooks run after it, never
/// under it; the shutdown stays clean. `/slow` beyond its cap is refused with 400.
#[test]
fn a_request_longer_than_the_drain_is_cut_before_the_hooks_run() {
    const DEADLINE: Duration = Duration::from_millis(5000);
    let mut server = Server::start(&[
        "--port",
        "0",
        "--readiness-delay-ms",
        "300",
        "--drain-timeout-ms",
        "2000",
        "--deadline-ms",
        "5000",
    ]);
    let addr = server.addr;
    let capped = get(addr, "/slow?ms=60001").expect("/slow beyond the cap answers");
    assert_eq!(capped.status, 400, "{capped:?}");

    // 4 s, twice the drain timeout: the time limit (1.8 s) cuts it.
    let started = Instant::now();
    let slow = thread::spawn(move || get(addr, "/slow?ms=4000"));
    server.wait_for_line("slow request: started");
    server.signal("-TERM");

    let response = slow
        .join()
        .expect("the slow request's thread")
        .expect("the slow request is answered");
    let took = started.elapsed();
    assert_eq!(response.status, 503, "{response:?}");
    assert!(
        took < Duration::from_secs(5),
        "cut after {took:?}, not at the 1.8 s time limit"
    );

    let status = server.wait_exit(DEADLINE + PATIENCE);
    let output = server.output();
    assert_eq!(
        status.code(),
        Some(0),
        "a clean shutdown exits 0:\n{output}"
    );
    assert!(
        output.contains(", clean") && !output.contains("slow request: done"),
        "the drain saw the request end (cut, not completed); the report says clean:\n{output}"
    );
    // The request ended during the drain, before the hooks closed what it used.
    server.assert_in_order(&[
        "slow request: started",
        "phase: draining",
        "request: cut at the time limit",
        "phase: cleanup",
        "flush-metrics: ",
        "close-database: connections closed",
        "phase: done",
    ]);
}

/// The example binary, running; killed when dropped, so a failing test leaves nothing behind.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// The child's stdout, one line at a time, from a reader thread.
    lines: Receiver<String>,
    /// Every line received so far.
    seen: Vec<String>,
}

impl Server {
    /// Starts the example with `args` and waits until it prints where it listens.
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(example_binary())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the axum_graceful example");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Keep reading after the test hung up, so the child never blocks on a full pipe.
                let _ = sender.send(line);
            }
        });
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[axum_graceful stderr] {line}");
            }
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
            seen: Vec::new(),
        };
        let line = server.wait_for_line("listening on ");
        server.addr = line
            .trim_start_matches("listening on ")
            .split_whitespace()
            .next()
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        server
    }

    /// Sends a signal (`-TERM`) with `kill(1)`.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed: {status}");
    }

    /// The first line starting with `prefix`, seen already or printed within [`PATIENCE`].
    fn wait_for_line(&mut self, prefix: &str) -> String {
        if let Some(line) = self.seen.iter().find(|line| line.starts_with(prefix)) {
            return line.clone();
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line {prefix:?} within {PATIENCE:?}:\n{}", self.output())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("stdout closed before {prefix:?}:\n{}", self.output())
                }
            }
        }
    }

    /// Waits up to `timeout` for the process to exit, then collects the rest of its stdout.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "still running {timeout:?} later:\n{}",
                self.output()
            );
            thread::sleep(Duration::from_millis(10));
        };
        // The pipe closes with the process; the reader thread then hangs up.
        while let Ok(line) = self.lines.recv_timeout(PATIENCE) {
            self.seen.push(line);
        }
        status
    }

    /// Everything printed so far.
    fn output(&self) -> String {
        self.seen.join("\n")
    }

    /// Lines starting with each of `prefixes` appear in this order.
    fn assert_in_order(&self, prefixes: &[&str]) {
        let mut from = 0;
        for prefix in prefixes {
            match self.seen[from..]
                .iter()
                .position(|line| line.starts_with(prefix))
            {
                Some(at) => from += at + 1,
                None => panic!(
                    "no {prefix:?} after line {from} (expected in order: {prefixes:?}):\n{}",
                    self.output()
                ),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response, as far as the tests care.
#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: String,
}

/// `GET path` on a fresh connection (`Connection: close`), read to the end.
fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, PATIENCE)?;
    // Long enough for the slowest request here (60 s) to be cut by the process exiting first.
    stream.set_read_timeout(Some(Duration::from_secs(90)))?;
    stream.set_write_timeout(Some(PATIENCE))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let incomplete = || {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("closed without a complete response: {text:?}"),
        )
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(incomplete)?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(incomplete)?;
    Ok(Response {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// Polls `check` every 10 ms until it holds, for at most [`PATIENCE`].
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// The example's binary, built first if missing or out of date (see `support`).
fn example_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| support::example_binary("axum_graceful", "shutdown", &["core", "shutdown"]))
}
