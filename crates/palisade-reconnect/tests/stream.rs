//! `ReconnectingStream` under paused time, over in-memory duplex pipes: the exact backoff
//! schedule, the stable-connection rule, failures reported once, idle timeout, hooks,
//! cancel-safety, close, and the spread of many clients' attempts.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_reconnect::{
    Backoff, Cause, CloseReason, Closed, ConnectionLost, ConnectionState, Jitter, Policy,
    ReconnectingStream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

mod events;

/// A backend the test controls: up or down, hanging or not; it hands out duplex pipes and keeps
/// the server ends.
#[derive(Clone, Default)]
struct Backend(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    down: bool,
    hang: bool,
    attempts: Vec<Instant>,
    servers: Vec<DuplexStream>,
}

impl Backend {
    fn connector(
        &self,
    ) -> impl FnMut() -> std::pin::Pin<
        Box<dyn std::future::Future<Output = io::Result<DuplexStream>> + Send>,
    > + Send
    + 'static {
        let backend = self.clone();
        move || {
            let backend = backend.clone();
            Box::pin(async move {
                let hang = {
                    let mut b = backend.0.lock().unwrap();
                    b.attempts.push(Instant::now());
                    if b.down {
                        return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
                    }
                    b.hang
                };
                if hang {
                    std::future::pending::<()>().await;
                }
                let (client, server) = duplex(64 * 1024);
                backend.0.lock().unwrap().servers.push(server);
                Ok(client)
            })
        }
    }

    fn set_down(&self, down: bool) {
        self.0.lock().unwrap().down = down;
    }

    fn attempts(&self) -> Vec<Instant> {
        self.0.lock().unwrap().attempts.clone()
    }

    /// The server end of connection `n` (from 1).
    fn server(&self, n: usize) -> DuplexStream {
        let mut b = self.0.lock().unwrap();
        assert!(b.servers.len() >= n, "connection {n} was not made");
        std::mem::replace(&mut b.servers[n - 1], duplex(1).0)
    }

    /// Kills connection `n`: its server end is dropped (the client reads end of file).
    fn kill(&self, n: usize) {
        drop(self.server(n));
    }

    /// A stream on this backend whose every connect waits for a permit of the returned gate.
    fn gated_stream(&self) -> (ReconnectingStream<DuplexStream>, Arc<Notify>) {
        let gate = Arc::new(Notify::new());
        let mut inner = self.connector();
        let g = gate.clone();
        let stream = ReconnectingStream::builder(move || {
            let g = g.clone();
            let fut = inner();
            async move {
                g.notified().await;
                fut.await
            }
        })
        .build()
        .unwrap();
        (stream, gate)
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// gRPC's numbers without jitter, so the schedule is exact.
fn exact_backoff() -> Backoff {
    Backoff::exponential(Duration::from_secs(1))
        .multiplier(1.6)
        .max_delay(Duration::from_secs(120))
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

fn lost(e: &io::Error) -> &ConnectionLost {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<ConnectionLost>())
        .unwrap_or_else(|| panic!("not a ConnectionLost: {e:?}"))
}

fn close_reason(e: &io::Error) -> CloseReason {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<Closed>())
        .unwrap_or_else(|| panic!("not Closed: {e:?}"))
        .reason()
        .clone()
}

/// The latest published state, read at points where the test knows what it must be.
struct Recorder {
    rx: watch::Receiver<ConnectionState>,
}

impl Recorder {
    fn now(&mut self) -> ConnectionState {
        self.rx.borrow_and_update().clone()
    }
}

#[tokio::test(start_paused = true)]
async fn the_backoff_schedule_is_grpcs_exactly_and_gives_up_after_max_attempts() {
    let backend = Backend::default();
    backend.set_down(true);
    let mut stream = ReconnectingStream::builder(backend.connector())
        .backoff(exact_backoff())
        .max_attempts(7)
        .build()
        .unwrap();
    let t0 = Instant::now();
    let e = stream.connect().await.unwrap_err();
    match close_reason(&e) {
        CloseReason::GaveUp { attempts, last } => {
            assert_eq!(attempts, 7);
            assert!(matches!(last, Cause::ConnectFailed(_)), "{last:?}");
        }
        other => panic!("{other:?}"),
    }
    let offsets: Vec<f64> = backend
        .attempts()
        .iter()
        .map(|t| (*t - t0).as_secs_f64())
        .collect();
    // Attempt starts are spaced by 1, 1.6, 2.56, 4.096, 6.5536, 10.48576 s.
    let expected = [0.0, 1.0, 2.6, 5.16, 9.256, 15.8096, 26.29536];
    assert_eq!(offsets.len(), expected.len(), "{offsets:?}");
    for (got, want) in offsets.iter().zip(expected) {
        assert!((got - want).abs() <= 0.001, "{offsets:?}");
    }
    assert!(stream.state().borrow().is_closed());
    // Closed for good: later operations fail at once, no more attempts.
    let e = stream.write(b"x").await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotConnected);
    assert_eq!(backend.attempts().len(), 7);
}

#[tokio::test(start_paused = true)]
async fn a_flapping_connection_backs_off_and_a_stable_one_starts_over() {
    let backend = Backend::default();
    let mut stream = ReconnectingStream::builder(backend.connector())
        .backoff(exact_backoff())
        .stable_after(secs(5.0))
        .build()
        .unwrap();
    let mut states = Recorder { rx: stream.state() };
    let t0 = Instant::now();
    stream.connect().await.unwrap();
    assert!(matches!(
        states.now(),
        ConnectionState::Connected { generation: 1, .. }
    ));

    // Connection 1 dies after 0.5 s: a flap. The read reports it.
    tokio::time::sleep(secs(0.5)).await;
    backend.kill(1);
    let mut buf = [0u8; 8];
    let e = stream.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    assert!(matches!(lost(&e).cause(), Cause::Eof));
    assert_eq!(lost(&e).generation(), 1);
    match states.now() {
        ConnectionState::Disconnected {
            next_attempt_at,
            attempts,
            cause: Cause::Eof,
        } => {
            // Not at once: attempt 2 waits for the backoff from attempt 1's start.
            assert_eq!(next_attempt_at - t0, secs(1.0));
            assert_eq!(attempts, 1);
        }
        other => panic!("{other:?}"),
    }

    // The next use reconnects at t0 + 1 s; connection 2 dies after 0.5 s: attempt 3 at
    // t0 + 1 + 1.6 s.
    stream.connect().await.unwrap();
    tokio::time::sleep(secs(0.5)).await;
    backend.kill(2);
    stream.read(&mut buf).await.unwrap_err();
    stream.connect().await.unwrap();
    assert!(matches!(
        states.now(),
        ConnectionState::Connected { generation: 3, .. }
    ));

    // Connection 3 stays up 6 s (> stable_after): the backoff starts over, the next attempt is
    // immediate and is attempt 1 again.
    tokio::time::sleep(secs(6.0)).await;
    backend.kill(3);
    stream.read(&mut buf).await.unwrap_err();
    let lost_at = Instant::now();
    match states.now() {
        ConnectionState::Disconnected {
            next_attempt_at,
            attempts,
            ..
        } => {
            assert_eq!(next_attempt_at, lost_at);
            assert_eq!(attempts, 0);
        }
        other => panic!("{other:?}"),
    }
    stream.connect().await.unwrap();
    let offsets: Vec<Duration> = backend.attempts().iter().map(|t| *t - t0).collect();
    let expected = [0.0, 1.0, 2.6, 2.6 + 6.0 + 0.0].map(secs);
    for (got, want) in offsets.iter().zip(expected) {
        assert!(
            got.abs_diff(want) <= Duration::from_millis(1),
            "{offsets:?}"
        );
    }
    assert_eq!(stream.generation(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_reported_to_one_operation_and_the_next_uses_the_new_connection() {
    let backend = Backend::default();
    let mut stream = ReconnectingStream::builder(backend.connector())
        .stable_after(Duration::ZERO)
        .build()
        .unwrap();
    stream.write_all(b"one").await.unwrap();
    let mut server1 = backend.server(1);
    let mut got = [0u8; 3];
    server1.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"one");

    // The server goes away: the next write fails with the pipe's own error kind.
    drop(server1);
    let e = stream.write_all(b"two").await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    match lost(&e).cause() {
        Cause::Lost(inner) => {
            let inner = inner.downcast_ref::<io::Error>().unwrap();
            assert_eq!(inner.kind(), io::ErrorKind::BrokenPipe);
        }
        other => panic!("{other:?}"),
    }
    assert!(!stream.is_connected());

    // The next write reconnects (the backoff was reset: stable_after is zero) and lands on
    // connection 2, only there, once.
    stream.write_all(b"three").await.unwrap();
    assert_eq!(stream.generation(), 2);
    let mut server2 = backend.server(2);
    let mut got = [0u8; 5];
    server2.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"three");
    server2.write_all(b"reply").await.unwrap();
    let mut reply = [0u8; 5];
    stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"reply");
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_declared_dead_after_idle_timeout_of_waiting() {
    let backend = Backend::default();
    let mut stream = ReconnectingStream::builder(backend.connector())
        .idle_timeout(secs(30.0))
        .build()
        .unwrap();
    stream.connect().await.unwrap();
    let mut server = backend.server(1);

    // Nobody reads for a minute: that is not idleness.
    tokio::time::sleep(secs(60.0)).await;
    // Data every 20 s keeps it alive.
    let feeder = tokio::spawn(async move {
        for _ in 0..3 {
            tokio::time::sleep(secs(20.0)).await;
            server.write_all(b"hb").await.unwrap();
        }
        server
    });
    let mut buf = [0u8; 2];
    for _ in 0..3 {
        stream.read_exact(&mut buf).await.unwrap();
    }
    let _server = feeder.await.unwrap();
    // Then silence: the read waiting for it fails after exactly 30 s.
    let start = Instant::now();
    let e = stream.read(&mut buf).await.unwrap_err();
    assert_eq!(Instant::now() - start, secs(30.0));
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    assert!(matches!(lost(&e).cause(), Cause::Idle(d) if *d == secs(30.0)));
    assert!(!stream.is_connected());
}

#[tokio::test(start_paused = true)]
async fn a_write_restarts_the_idle_clock_and_a_cancelled_read_does_not_stop_it() {
    let backend = Backend::default();
    let mut stream = ReconnectingStream::builder(backend.connector())
        .idle_timeout(secs(10.0))
        .build()
        .unwrap();
    stream.connect().await.unwrap();
    let _server1 = backend.server(1);
    let mut buf = [0u8; 4];
    // A read starts waiting and is dropped; nobody reads for 20 s; then a request is written.
    assert!(
        tokio::time::timeout(Duration::ZERO, stream.read(&mut buf))
            .await
            .is_err()
    );
    tokio::time::sleep(secs(20.0)).await;
    stream.write_all(b"req\n").await.unwrap();
    // The write started a new wait: the reply gets the full 10 s.
    let start = Instant::now();
    let e = stream.read(&mut buf).await.unwrap_err();
    assert_eq!(Instant::now() - start, secs(10.0));
    assert!(matches!(lost(&e).cause(), Cause::Idle(_)));

    // On the next connection, a read dropped while waiting keeps the clock running (one clock
    // for a select! loop that re-creates its read): with no write in between, a read 20 s
    // later finds it ran out and fails at once.
    stream.connect().await.unwrap();
    let _server2 = backend.server(2);
    assert!(
        tokio::time::timeout(Duration::ZERO, stream.read(&mut buf))
            .await
            .is_err()
    );
    tokio::time::sleep(secs(4.0)).await;
    // Re-created after 4 s, it waits the remaining 6 s only.
    let start = Instant::now();
    let e = stream.read(&mut buf).await.unwrap_err();
    assert_eq!(Instant::now() - start, secs(6.0));
    assert!(matches!(lost(&e).cause(), Cause::Idle(_)));
}

#[tokio::test(start_paused = true)]
async fn the_on_connect_hook_runs_on_every_connection_and_its_failure_is_a_failed_attempt() {
    let backend = Backend::default();
    let calls = Arc::new(Mutex::new(0u32));
    let hook_calls = calls.clone();
    let mut stream = ReconnectingStream::builder(backend.connector())
        .backoff(exact_backoff())
        .stable_after(Duration::ZERO)
        .on_connect(move |mut conn: DuplexStream| {
            let calls = hook_calls.clone();
            async move {
                let n = {
                    let mut c = calls.lock().unwrap();
                    *c += 1;
                    *c
                };
                if n == 2 {
                    return Err(io::Error::other("auth rejected"));
                }
                conn.write_all(b"AUTH\n").await?;
                Ok::<_, io::Error>(conn)
            }
        })
        .build()
        .unwrap();
    stream.connect().await.unwrap();
    let mut auth = [0u8; 5];
    backend.server(1).read_exact(&mut auth).await.unwrap();
    assert_eq!(&auth, b"AUTH\n");

    backend.kill(1);
    let mut buf = [0u8; 1];
    stream.read(&mut buf).await.unwrap_err();
    let t = Instant::now();
    let mut states = stream.state();
    // Attempt 1 connects but the hook rejects it; attempt 2, 1 s later, authenticates.
    stream.connect().await.unwrap();
    assert_eq!(Instant::now() - t, secs(1.0));
    assert_eq!(*calls.lock().unwrap(), 3);
    assert_eq!(stream.generation(), 2);
    assert!(states.borrow_and_update().is_connected());
    let mut server = backend.server(3);
    server.read_exact(&mut auth).await.unwrap();
    assert_eq!(&auth, b"AUTH\n");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_connect_is_cut_at_the_later_of_connect_timeout_and_the_next_attempt() {
    let backend = Backend::default();
    backend.0.lock().unwrap().hang = true;
    let mut stream = ReconnectingStream::builder(backend.connector())
        .backoff(exact_backoff())
        .connect_timeout(secs(2.0))
        .max_attempts(5)
        .build()
        .unwrap();
    let t0 = Instant::now();
    let e = stream.connect().await.unwrap_err();
    let CloseReason::GaveUp { last, .. } = close_reason(&e) else {
        panic!("{e:?}")
    };
    // Attempt 5 started at 1 + 1.6 + 2.56 + 4.096 (each attempt given max(2 s, its backoff)
    // and the next started when it was cut) and was given 6.5536 s.
    assert!(matches!(last, Cause::ConnectTimedOut(d) if d.abs_diff(secs(6.5536)) < secs(0.001)));
    let offsets: Vec<f64> = backend
        .attempts()
        .iter()
        .map(|t| (*t - t0).as_secs_f64())
        .collect();
    let expected = [0.0, 2.0, 4.0, 6.56, 10.656];
    for (got, want) in offsets.iter().zip(expected) {
        assert!((got - want).abs() <= 0.002, "{offsets:?}");
    }
    assert!(((Instant::now() - t0).as_secs_f64() - 17.2096).abs() < 0.003);
}

#[tokio::test(start_paused = true)]
async fn a_read_cancelled_during_reconnect_loses_nothing_and_restarts_nothing() {
    let backend = Backend::default();
    let gate = Arc::new(Notify::new());
    let connects = Arc::new(Mutex::new(0u32));
    let (g, c) = (gate.clone(), connects.clone());
    let mut inner = backend.connector();
    let mut stream = ReconnectingStream::builder(move || {
        *c.lock().unwrap() += 1;
        let g = g.clone();
        let fut = inner();
        async move {
            g.notified().await;
            fut.await
        }
    })
    .build()
    .unwrap();
    // The read waits on the gated connect; cancel it after 1 s.
    let mut buf = [0u8; 4];
    let cancelled = tokio::time::timeout(secs(1.0), stream.read(&mut buf)).await;
    assert!(cancelled.is_err());
    assert_eq!(*connects.lock().unwrap(), 1);
    assert!(matches!(
        &*stream.state().borrow(),
        ConnectionState::Connecting { attempt: 1 }
    ));
    // The connect in flight belongs to the stream: the next read resumes it, no new attempt.
    gate.notify_one();
    let reader = stream.read_exact(&mut buf);
    let (read, ()) = tokio::join!(reader, async {
        tokio::task::yield_now().await;
        backend.server(1).write_all(b"data").await.unwrap();
    });
    read.unwrap();
    assert_eq!(&buf, b"data");
    assert_eq!(*connects.lock().unwrap(), 1);
    assert_eq!(stream.generation(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_read_cancelled_during_backoff_keeps_the_schedule() {
    let backend = Backend::default();
    backend.set_down(true);
    let mut stream = ReconnectingStream::builder(backend.connector())
        .backoff(exact_backoff())
        .build()
        .unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 1];
    // Cancelled 0.5 s into the 1 s backoff after attempt 1.
    assert!(
        tokio::time::timeout(secs(0.5), stream.read(&mut buf))
            .await
            .is_err()
    );
    assert_eq!(backend.attempts().len(), 1);
    backend.set_down(false);
    stream.connect().await.unwrap();
    // Attempt 2 came at t0 + 1 s, as scheduled: neither earlier nor restarted.
    let attempts = backend.attempts();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[1] - t0, secs(1.0));
}

#[tokio::test(start_paused = true)]
async fn shutdown_half_closes_reads_the_reply_then_closes_for_good() {
    let backend = Backend::default();
    let mut stream = ReconnectingStream::builder(backend.connector())
        .build()
        .unwrap();
    stream.write_all(b"bye").await.unwrap();
    stream.shutdown().await.unwrap();
    // Writes are over, at once; the peer saw the data, then end of file.
    let e = stream.write(b"x").await.unwrap_err();
    assert!(matches!(close_reason(&e), CloseReason::Closed));
    let mut server = backend.server(1);
    let mut all = Vec::new();
    server.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, b"bye");
    // The peer's reply still arrives (a half-close protocol), then its end of file closes the
    // stream for good: a clean end of file, not a lost connection, and no reconnect.
    server.write_all(b"ciao").await.unwrap();
    drop(server);
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"ciao");
    assert!(matches!(
        &*stream.state().borrow(),
        ConnectionState::Closed(CloseReason::Closed)
    ));
    let mut buf = [0u8; 4];
    assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    assert_eq!(backend.attempts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn after_a_split_a_loss_seen_by_the_reader_fails_the_parked_writer_once() {
    let backend = Backend::default();
    let stream = ReconnectingStream::builder(
        // Tiny pipes, so a large write parks on the full buffer.
        {
            let backend = backend.clone();
            move || {
                let backend = backend.clone();
                async move {
                    backend.0.lock().unwrap().attempts.push(Instant::now());
                    let (client, server) = duplex(16);
                    backend.0.lock().unwrap().servers.push(server);
                    Ok::<_, io::Error>(client)
                }
            }
        },
    )
    .stable_after(Duration::ZERO)
    .build()
    .unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write = tokio::spawn(async move {
        let first = writer.write_all(&[7u8; 64]).await;
        // The next message goes to the new connection, whole.
        writer.write_all(b"next").await.unwrap();
        (first, writer)
    });
    let mut buf = [0u8; 4];
    // The writer fills the 16-byte pipe and parks; the server dies; the reader sees it.
    tokio::task::yield_now().await;
    backend.kill(1);
    let e = reader.read(&mut buf).await.unwrap_err();
    assert!(matches!(lost(&e).cause(), Cause::Eof));
    // Paused time: if the writer is not told, it blocks on the new connection and this fails.
    let (first, _writer) = tokio::time::timeout(secs(60.0), write)
        .await
        .expect("the parked writer was told, not left writing to the new connection")
        .unwrap();
    let e = first.unwrap_err();
    assert_eq!(
        lost(&e).generation(),
        1,
        "the writer is told, not torn across connections"
    );
    let mut server2 = backend.server(2);
    let mut got = [0u8; 4];
    server2.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"next");
}

/// README, guarantees: "a failure is reported to exactly one operation". One task, no split: a
/// read dropped by a `timeout` (or a `select!`) while it waited left its waker parked; the
/// write that then met the dead connection got the error, and the first read on the new
/// connection got it a second time (generation 1's loss), so a caller that re-sends on
/// `ConnectionLost` sent twice.
#[tokio::test(start_paused = true)]
async fn a_read_a_timeout_dropped_is_not_told_again_of_the_loss_a_write_saw() {
    let backend = Backend::default();
    let mut stream = ReconnectingStream::builder(backend.connector())
        .stable_after(Duration::ZERO)
        .build()
        .unwrap();
    stream.connect().await.unwrap();
    let mut reply = [0u8; 4];
    let waited = tokio::time::timeout(secs(1.0), stream.read(&mut reply)).await;
    assert!(waited.is_err(), "nothing to read on connection 1");
    backend.kill(1);
    let e = stream.write_all(b"ping").await.unwrap_err();
    assert_eq!(lost(&e).generation(), 1, "reported once, to the write");
    stream.write_all(b"ping").await.unwrap(); // re-sent on connection 2
    let mut server2 = backend.server(2);
    server2.write_all(b"pong").await.unwrap();
    let read = stream.read_exact(&mut reply).await;
    assert!(
        read.is_ok(),
        "the read on connection 2 was told of connection 1's loss again: {:?}",
        read.map_err(|e| lost(&e).clone())
    );
    assert_eq!(&reply, b"pong");
    assert_eq!(backend.attempts().len(), 2);
}

/// README, guarantees: "a failure is reported to exactly one operation". `reconnect()` takes
/// `&mut self`, so no operation is in flight, yet after a read dropped by a `timeout` the first
/// read on the new connection failed with `ConnectionLost(Requested)`: a loss reported to no
/// operation that lived through it.
#[tokio::test(start_paused = true)]
async fn reconnect_reports_no_error_to_a_read_a_timeout_dropped() {
    let backend = Backend::default();
    let mut stream = ReconnectingStream::builder(backend.connector())
        .build()
        .unwrap();
    stream.connect().await.unwrap();
    let mut got = [0u8; 4];
    let waited = tokio::time::timeout(secs(1.0), stream.read(&mut got)).await;
    assert!(waited.is_err(), "nothing to read on connection 1");
    stream.reconnect();
    stream.connect().await.unwrap();
    backend.server(2).write_all(b"data").await.unwrap();
    let read = stream.read_exact(&mut got).await;
    assert!(
        read.is_ok(),
        "the read on connection 2 failed with {:?}",
        read.map_err(|e| lost(&e).clone())
    );
    assert_eq!(&got, b"data");
}

/// README, guarantees: "a failure is reported to exactly one operation". The stream is not
/// split but moves between tasks (a worker hands it on): a read dropped by a `timeout` in one
/// task leaves that task's waker parked, so the loss the next task's write sees is owed to the
/// read direction; the next read, from the task that saw the loss, is not the one that waited
/// and must not get it again.
#[tokio::test(start_paused = true)]
async fn a_loss_owed_to_a_dropped_read_of_another_task_is_not_reported_to_a_new_read() {
    let backend = Backend::default();
    let mut stream = ReconnectingStream::builder(backend.connector())
        .stable_after(Duration::ZERO)
        .build()
        .unwrap();
    stream.connect().await.unwrap();
    let mut stream = tokio::spawn(async move {
        let mut buf = [0u8; 4];
        let waited = tokio::time::timeout(secs(1.0), stream.read(&mut buf)).await;
        assert!(waited.is_err(), "nothing to read on connection 1");
        stream
    })
    .await
    .unwrap();
    backend.kill(1);
    let e = stream.write_all(b"ping").await.unwrap_err();
    assert_eq!(lost(&e).generation(), 1, "reported once, to the write");
    stream.write_all(b"ping").await.unwrap();
    backend.server(2).write_all(b"pong").await.unwrap();
    let mut reply = [0u8; 4];
    let read = stream.read_exact(&mut reply).await;
    assert!(
        read.is_ok(),
        "the read on connection 2 was told of connection 1's loss again: {:?}",
        read.map_err(|e| lost(&e).clone())
    );
    assert_eq!(&reply, b"pong");
}

/// The other half of the split rule: a reader waiting in its own task for a reply when the
/// writer meets the dead connection is woken and told (the reply is not coming), instead of
/// waiting on the new connection for a reply to a request it never carried.
#[tokio::test(start_paused = true)]
async fn after_a_split_a_loss_seen_by_the_writer_fails_the_parked_reader_once() {
    let backend = Backend::default();
    let stream = ReconnectingStream::builder(backend.connector())
        .stable_after(Duration::ZERO)
        .build()
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    writer.write_all(b"req1").await.unwrap();
    let read = tokio::spawn(async move {
        let mut reply = [0u8; 4];
        let first = reader.read_exact(&mut reply).await.map(drop);
        // The next read is on the new connection.
        reader.read_exact(&mut reply).await.unwrap();
        (first, reply)
    });
    tokio::task::yield_now().await; // the reader parks on connection 1
    backend.kill(1);
    let e = writer.write_all(b"req2").await.unwrap_err();
    assert_eq!(lost(&e).generation(), 1);
    writer.write_all(b"req2").await.unwrap(); // on connection 2
    let mut server2 = backend.server(2);
    server2.write_all(b"rep2").await.unwrap();
    let (first, reply) = tokio::time::timeout(secs(60.0), read)
        .await
        .expect("the parked reader was told, not left waiting on the new connection")
        .unwrap();
    let e = first.unwrap_err();
    assert_eq!(lost(&e).generation(), 1);
    assert_eq!(&reply, b"rep2");
}

/// `close()` and `reconnect()` take `&mut self`, but a caller can share the stream behind a
/// lock of its own and poll it from several tasks: a read parked there is woken (its waker
/// went with the connection) and ends, with end of file after `close()`, with no error for a
/// loss after `reconnect()` (it goes on reading the new connection).
#[tokio::test(start_paused = true)]
async fn close_and_reconnect_wake_a_read_parked_behind_the_callers_lock() {
    use std::task::Poll;
    use tokio::io::{AsyncRead, ReadBuf};
    let backend = Backend::default();
    let stream = ReconnectingStream::builder(backend.connector())
        .stable_after(Duration::ZERO)
        .build()
        .unwrap();
    let shared = Arc::new(Mutex::new(stream));
    let read = |shared: Arc<Mutex<ReconnectingStream<DuplexStream>>>| async move {
        let mut buf = [0u8; 4];
        let n = std::future::poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut buf);
            let mut stream = shared.lock().unwrap();
            match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                Poll::Ready(r) => Poll::Ready(r.map(|()| rb.filled().len())),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        (n, buf)
    };
    let reader = tokio::spawn(read(shared.clone()));
    tokio::task::yield_now().await; // connected; the read parks on connection 1
    assert_eq!(backend.attempts().len(), 1);
    shared.lock().unwrap().reconnect();
    tokio::task::yield_now().await; // woken: it reconnects and parks on connection 2
    assert_eq!(backend.attempts().len(), 2, "the parked read was woken");
    let mut server2 = backend.server(2);
    server2.write_all(b"data").await.unwrap();
    let (n, buf) = tokio::time::timeout(secs(60.0), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.unwrap(), 4, "no error for the loss reconnect() asked for");
    assert_eq!(&buf, b"data");

    let reader = tokio::spawn(read(shared.clone()));
    tokio::task::yield_now().await; // parks on connection 2
    shared.lock().unwrap().close();
    let (n, _) = tokio::time::timeout(secs(60.0), reader)
        .await
        .expect("the parked read was woken by close()")
        .unwrap();
    assert_eq!(n.unwrap(), 0, "end of file after close()");
}

#[tokio::test(start_paused = true)]
async fn reconnect_replaces_the_connection_on_request() {
    let backend = Backend::default();
    let mut stream = ReconnectingStream::builder(backend.connector())
        .build()
        .unwrap();
    stream.connect().await.unwrap();
    stream.reconnect();
    assert!(matches!(
        &*stream.state().borrow(),
        ConnectionState::Disconnected {
            cause: Cause::Requested,
            ..
        }
    ));
    stream.write_all(b"x").await.unwrap();
    assert_eq!(stream.generation(), 2);
    let mut server1 = backend.server(1);
    let mut buf = Vec::new();
    assert_eq!(server1.read_to_end(&mut buf).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_stream_publishes_closed_and_closes_the_connection() {
    let backend = Backend::default();
    let mut stream = ReconnectingStream::builder(backend.connector())
        .build()
        .unwrap();
    stream.connect().await.unwrap();
    let mut state = stream.state();
    drop(stream);
    // The last state is `Closed(Closed)`, then the channel ends.
    assert!(matches!(
        &*state.borrow_and_update(),
        ConnectionState::Closed(CloseReason::Closed)
    ));
    assert!(state.changed().await.is_err());
    let mut server1 = backend.server(1);
    let mut buf = Vec::new();
    assert_eq!(server1.read_to_end(&mut buf).await.unwrap(), 0);
}

/// `state()`'s doc: a `watch` receiver holds only the latest state. A connect that completes
/// at once publishes `Connecting` then `Connected` in one poll: the receiver is told of one
/// change and sees `Connected`; the `tracing` events have both.
#[tokio::test(start_paused = true)]
async fn a_state_receiver_sees_the_latest_state_and_the_tracing_events_every_change() {
    let events = events::record();
    let backend = Backend::default();
    let mut stream = ReconnectingStream::builder(backend.connector())
        .build()
        .unwrap();
    let mut rx = stream.state();
    stream.connect().await.unwrap();
    assert!(rx.has_changed().unwrap());
    assert!(matches!(
        &*rx.borrow_and_update(),
        ConnectionState::Connected { generation: 1, .. }
    ));
    assert!(!rx.has_changed().unwrap(), "`Connecting` was overwritten");
    assert_eq!(events.names(), ["connecting", "connected"]);
}

/// The state diagram: giving up goes to `Closed(GaveUp)` straight from `Connecting` (the last
/// failed attempt) or from `Connected` (a flap), never through `Disconnected`; `close()` goes
/// straight from `Connecting` (or `Connected`) to `Closed`.
#[tokio::test(start_paused = true)]
async fn closed_is_reached_from_connecting_and_connected_without_disconnected() {
    let events = events::record();

    // The last attempt fails: Connecting -> Closed(GaveUp).
    let backend = Backend::default();
    backend.set_down(true);
    let mut stream = ReconnectingStream::builder(backend.connector())
        .max_attempts(2)
        .build()
        .unwrap();
    let e = stream.connect().await.unwrap_err();
    assert!(matches!(
        close_reason(&e),
        CloseReason::GaveUp { attempts: 2, .. }
    ));
    assert_eq!(
        events.names(),
        ["connecting", "disconnected", "connecting", "closed"]
    );
    drop(stream);

    // A connection lost before `stable_after`, the last attempt allowed: Connected ->
    // Closed(GaveUp).
    let backend = Backend::default();
    let mut stream = ReconnectingStream::builder(backend.connector())
        .max_attempts(1)
        .build()
        .unwrap();
    stream.connect().await.unwrap();
    backend.kill(1);
    let mut buf = [0u8; 4];
    let e = stream.read(&mut buf).await.unwrap_err();
    assert!(matches!(lost(&e).cause(), Cause::Eof));
    assert!(matches!(
        &*stream.state().borrow(),
        ConnectionState::Closed(CloseReason::GaveUp {
            attempts: 1,
            last: Cause::Eof
        })
    ));
    assert_eq!(events.names()[4..], ["connecting", "connected", "closed"]);
    drop(stream);

    // `close()` while an attempt hangs: Connecting -> Closed(Closed).
    let backend = Backend::default();
    backend.0.lock().unwrap().hang = true;
    let mut stream = ReconnectingStream::builder(backend.connector())
        .build()
        .unwrap();
    assert!(
        tokio::time::timeout(secs(1.0), stream.connect())
            .await
            .is_err()
    );
    stream.close();
    assert!(matches!(
        &*stream.state().borrow(),
        ConnectionState::Closed(CloseReason::Closed)
    ));
    assert_eq!(events.names()[7..], ["connecting", "closed"]);
}

#[tokio::test(start_paused = true)]
async fn many_clients_spread_their_attempts_over_the_jitter_window() {
    const CLIENTS: usize = 100;
    let backend = Backend::default();
    backend.set_down(true);
    let policy = Policy::builder().max_attempts(4).build().unwrap();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let backends: Vec<Backend> = (0..CLIENTS).map(|_| Backend::default()).collect();
    for b in &backends {
        b.set_down(true);
        let mut stream = ReconnectingStream::builder(b.connector())
            .policy(policy.clone())
            .build()
            .unwrap();
        tasks.push(tokio::spawn(async move { stream.connect().await }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_err());
    }
    // Every client: attempt 2 in [0.8, 1.2] s after attempt 1, attempt 3 in [1.28, 1.92] s
    // after attempt 2 (gRPC's ± 20 %).
    let mut second = Vec::new();
    for b in &backends {
        let a = b.attempts();
        assert_eq!(a.len(), 4);
        assert_eq!(a[0], t0);
        let d1 = (a[1] - a[0]).as_secs_f64();
        let d2 = (a[2] - a[1]).as_secs_f64();
        assert!((0.8..=1.201).contains(&d1), "{d1}");
        assert!((1.28..=1.921).contains(&d2), "{d2}");
        second.push(d1);
    }
    // ... and they are spread over that window, not bunched: no 50 ms slice of the 400 ms
    // window holds more than a quarter of the clients, and the extremes are 300 ms apart.
    second.sort_by(f64::total_cmp);
    assert!(second[CLIENTS - 1] - second[0] > 0.3, "{second:?}");
    for slice in 0..8 {
        let lo = 0.8 + 0.05 * slice as f64;
        let n = second
            .iter()
            .filter(|d| (lo..lo + 0.05).contains(*d))
            .count();
        assert!(
            n <= CLIENTS / 4,
            "{n} clients in [{lo}, {}): {second:?}",
            lo + 0.05
        );
    }
    drop(backend);
}

// Regressions of the stream's fourth review (each failed before its fix).

type Reader = tokio::io::ReadHalf<ReconnectingStream<DuplexStream>>;

/// Reads four bytes on a task of its own.
fn read_four(mut reader: Reader) -> tokio::task::JoinHandle<io::Result<[u8; 4]>> {
    tokio::spawn(async move {
        let mut buf = [0u8; 4];
        reader.read_exact(&mut buf).await.map(|_| buf)
    })
}

type LossThenReply = tokio::task::JoinHandle<(io::Result<()>, io::Result<[u8; 4]>)>;
type Writer = tokio::io::WriteHalf<ReconnectingStream<DuplexStream>>;

/// A stream on `backend` with [`exact_backoff`] (a flap: the next attempt 1 s after a loss),
/// split. The writer has sent `req1` on connection 1, which then died; on a task of its own the
/// reader makes one read (which is to see the connection lost), then reads four bytes.
async fn split_then_lost(backend: &Backend) -> (LossThenReply, Writer) {
    let stream = ReconnectingStream::builder(backend.connector())
        .backoff(exact_backoff())
        .build()
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    writer.write_all(b"req1").await.unwrap();
    let read = tokio::spawn(async move {
        let mut buf = [0u8; 4];
        let first = reader.read(&mut buf).await.map(drop);
        let second = reader.read_exact(&mut buf).await.map(|_| buf);
        (first, second)
    });
    backend.kill(1);
    (read, writer)
}

/// Connection 2 replies `rep2`, and the reader of [`split_then_lost`] finishes `within`: it
/// saw the end of file, then the reply on the new connection.
async fn reply_on_the_second_connection(
    backend: &Backend,
    read: LossThenReply,
    within: Duration,
    why: &str,
) {
    backend.server(2).write_all(b"rep2").await.unwrap();
    let (first, second) = tokio::time::timeout(within, read)
        .await
        .expect(why)
        .unwrap();
    assert!(matches!(lost(&first.unwrap_err()).cause(), Cause::Eof));
    assert_eq!(&second.unwrap(), b"rep2");
}

/// Wakers lost across a reconnect after a split. The backoff timer (a `Sleep`) and the attempt
/// in flight each keep the waker of their last poll only. Both halves wait out the backoff
/// after a loss: the writer polled the timer last, was woken, reconnected and wrote; the reader,
/// waiting on the same timer, was never woken, and never read the reply on the new connection.
#[tokio::test(start_paused = true)]
async fn after_a_split_both_halves_waiting_out_the_backoff_are_woken() {
    let backend = Backend::default();
    let (read, mut writer) = split_then_lost(&backend).await;
    tokio::task::yield_now().await; // the reader sees the end of file, then waits to reconnect
    writer.write_all(b"req2").await.unwrap(); // waits for the same attempt, on connection 2
    assert_eq!(backend.attempts().len(), 2);
    reply_on_the_second_connection(
        &backend,
        read,
        secs(60.0),
        "the reader waiting out the backoff was never woken",
    )
    .await;
}

/// The same with the attempt in flight: the reader's read started the connect, the writer's
/// write polled it last; only the writer was woken when it completed.
#[tokio::test(start_paused = true)]
async fn after_a_split_both_halves_waiting_on_one_connect_are_woken() {
    let backend = Backend::default();
    let (stream, gate) = backend.gated_stream();
    let (reader, mut writer) = tokio::io::split(stream);
    let read = read_four(reader);
    tokio::task::yield_now().await; // the reader starts the attempt and waits on it
    let (written, ()) = tokio::join!(writer.write_all(b"req1"), async {
        tokio::task::yield_now().await; // the writer waits on the same attempt
        gate.notify_one();
    });
    written.unwrap();
    backend.server(1).write_all(b"rep1").await.unwrap();
    let got = tokio::time::timeout(secs(60.0), read)
        .await
        .expect("the reader waiting on the connect was never woken")
        .unwrap();
    assert_eq!(&got.unwrap(), b"rep1");
}

/// A read polled behind a lock of the caller's, waiting on a connect that hangs: `close()`
/// dropped the attempt without waking it (it woke at the dead attempt's 20 s deadline), and
/// `reconnect()` abandoned the attempt, so the next one, due 1 s after the first, started only
/// at that deadline too.
#[tokio::test(start_paused = true)]
async fn close_and_reconnect_wake_a_read_waiting_on_a_connect_behind_the_callers_lock() {
    use std::task::Poll;
    use tokio::io::{AsyncRead, ReadBuf};
    type Shared = Arc<Mutex<ReconnectingStream<DuplexStream>>>;
    let read = |shared: Shared| async move {
        let mut buf = [0u8; 4];
        let n = std::future::poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut buf);
            let mut stream = shared.lock().unwrap();
            match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                Poll::Ready(r) => Poll::Ready(r.map(|()| rb.filled().len())),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        (n, buf)
    };

    let backend = Backend::default();
    backend.0.lock().unwrap().hang = true;
    let stream = ReconnectingStream::builder(backend.connector())
        .build()
        .unwrap();
    let shared = Arc::new(Mutex::new(stream));
    let reader = tokio::spawn(read(shared.clone()));
    tokio::task::yield_now().await; // the read waits on the hanging attempt
    shared.lock().unwrap().close();
    let (n, _) = tokio::time::timeout(secs(1.0), reader)
        .await
        .expect("the read waiting on the attempt was woken by close()")
        .unwrap();
    assert_eq!(n.unwrap(), 0, "end of file after close()");

    let backend = Backend::default();
    backend.0.lock().unwrap().hang = true;
    let stream = ReconnectingStream::builder(backend.connector())
        .backoff(exact_backoff())
        .build()
        .unwrap();
    let shared = Arc::new(Mutex::new(stream));
    let t0 = Instant::now();
    let reader = tokio::spawn(read(shared.clone()));
    tokio::task::yield_now().await; // the read waits on the hanging attempt
    shared.lock().unwrap().reconnect();
    backend.0.lock().unwrap().hang = false;
    tokio::time::sleep(secs(1.5)).await;
    let attempts = backend.attempts();
    assert_eq!(attempts.len(), 2, "attempt 2 is due 1 s after attempt 1");
    assert_eq!(attempts[1] - t0, secs(1.0));
    backend.server(1).write_all(b"data").await.unwrap(); // attempt 1 hung: no pipe
    let (n, buf) = tokio::time::timeout(secs(60.0), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.unwrap(), 4);
    assert_eq!(&buf, b"data");
}

/// A connector of buffered connections: writes land in a 64-byte `BufWriter` over a 16-byte
/// pipe, so a flush (or a shutdown, which flushes) of more than 16 bytes waits for the peer.
fn buffered(
    backend: &Backend,
) -> impl FnMut() -> std::future::Ready<io::Result<tokio::io::BufWriter<DuplexStream>>> + Send + 'static
{
    let backend = backend.clone();
    move || {
        let mut b = backend.0.lock().unwrap();
        b.attempts.push(Instant::now());
        let (client, server) = duplex(16);
        b.servers.push(server);
        std::future::ready(Ok(tokio::io::BufWriter::with_capacity(64, client)))
    }
}

/// A flush waiting for the peer in the writer's task when the reader sees the loss: it was
/// woken and owed the error, but with no connection up it returned `Ok` first, so the caller
/// took 32 bytes that never left for flushed (and the next write, on the new connection, got
/// the error instead).
#[tokio::test(start_paused = true)]
async fn after_a_split_a_flush_waiting_when_the_reader_sees_the_loss_fails() {
    let backend = Backend::default();
    let stream = ReconnectingStream::builder(buffered(&backend))
        .build()
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    writer.write_all(&[7u8; 48]).await.unwrap(); // buffered
    let mut server = backend.server(1);
    let flush = tokio::spawn(async move {
        let flushed = writer.flush().await;
        let next = writer.write_all(b"next").await;
        (flushed, next)
    });
    tokio::task::yield_now().await; // 16 bytes fill the pipe; the flush waits
    server.shutdown().await.unwrap(); // the peer closes its side
    let mut buf = [0u8; 4];
    let e = reader.read(&mut buf).await.unwrap_err();
    assert!(matches!(lost(&e).cause(), Cause::Eof));
    let (flushed, next) = tokio::time::timeout(secs(60.0), flush)
        .await
        .unwrap()
        .unwrap();
    let e = flushed.expect_err("the flush reported 32 bytes lost with connection 1 as flushed");
    assert_eq!(lost(&e).generation(), 1);
    next.expect("the next write, on connection 2, is not told again");
}

/// The same for a shutdown waiting to flush: it was not parked, so the loss the reader saw did
/// not wake it, and it waited forever on the connection that was dropped.
#[tokio::test(start_paused = true)]
async fn after_a_split_a_shutdown_waiting_when_the_reader_sees_the_loss_fails() {
    let backend = Backend::default();
    let stream = ReconnectingStream::builder(buffered(&backend))
        .build()
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    writer.write_all(&[7u8; 48]).await.unwrap(); // buffered
    let mut server = backend.server(1);
    let shutdown = tokio::spawn(async move { writer.shutdown().await });
    tokio::task::yield_now().await; // 16 bytes fill the pipe; the shutdown waits to flush
    server.shutdown().await.unwrap(); // the peer closes its side
    let mut buf = [0u8; 4];
    let e = reader.read(&mut buf).await.unwrap_err();
    assert!(matches!(lost(&e).cause(), Cause::Eof));
    let shut = tokio::time::timeout(secs(60.0), shutdown)
        .await
        .expect("the shutdown waiting on the dropped connection was never woken")
        .unwrap();
    let e = shut.expect_err("the shutdown cannot have flushed: its connection was lost");
    assert_eq!(lost(&e).generation(), 1);
}

/// A connection whose shutdown fails (a TLS `close_notify` that cannot be sent).
struct ShutdownFails(DuplexStream);

impl tokio::io::AsyncRead for ShutdownFails {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ShutdownFails {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
    }
}

/// A shutdown that fails drops the connection: a reader waiting for the reply in another task
/// was not woken (its waker went with the connection) and waited forever. It is told now, as
/// for any loss the other half sees, and the stream is closed, as after any shutdown.
#[tokio::test(start_paused = true)]
async fn after_a_split_a_failed_shutdown_tells_the_waiting_reader() {
    let backend = Backend::default();
    let stream = ReconnectingStream::builder({
        let backend = backend.clone();
        move || {
            let (client, server) = duplex(64);
            backend.0.lock().unwrap().servers.push(server);
            std::future::ready(Ok::<_, io::Error>(ShutdownFails(client)))
        }
    })
    .build()
    .unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    writer.write_all(b"req").await.unwrap();
    let _server = backend.server(1);
    let read = tokio::spawn(async move {
        let mut buf = [0u8; 4];
        reader.read(&mut buf).await
    });
    tokio::task::yield_now().await; // the reader waits for the reply
    let e = writer.shutdown().await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    assert_eq!(lost(&e).generation(), 1);
    let read = tokio::time::timeout(secs(60.0), read)
        .await
        .expect("the waiting reader was never woken")
        .unwrap();
    assert_eq!(lost(&read.unwrap_err()).generation(), 1);
    let e = writer.write_all(b"x").await.unwrap_err();
    assert!(matches!(close_reason(&e), CloseReason::Closed));
}

/// `idle_timeout`: the clock "restarts when data arrives or the stream writes (a request starts
/// a new wait for its reply)". A flush, or a write of nothing, restarted it too: a loop that
/// flushes now and then kept a silent connection from ever timing out.
#[tokio::test(start_paused = true)]
async fn a_flush_or_an_empty_write_does_not_restart_the_idle_clock() {
    let backend = Backend::default();
    let mut stream = ReconnectingStream::builder(backend.connector())
        .idle_timeout(secs(10.0))
        .build()
        .unwrap();
    stream.connect().await.unwrap();
    let _server = backend.server(1);
    let mut buf = [0u8; 4];
    assert!(
        tokio::time::timeout(Duration::ZERO, stream.read(&mut buf))
            .await
            .is_err()
    );
    let start = Instant::now();
    tokio::time::sleep(secs(6.0)).await;
    stream.flush().await.unwrap();
    assert_eq!(stream.write(&[]).await.unwrap(), 0);
    let e = stream.read(&mut buf).await.unwrap_err();
    assert!(matches!(lost(&e).cause(), Cause::Idle(_)));
    assert_eq!(Instant::now() - start, secs(10.0), "the clock ran on");
}

// The fan-out waker, one guard per path: each test fails if the backoff timer or the attempt is
// polled with the caller's waker, or if connecting does not wake the other waiting half.

/// The last task to poll the backoff timer stops polling: after a split, the reader waits out
/// the backoff after a loss, and the writer polls the timer after it (so a `Sleep` polled with
/// the writer's own waker would keep only the writer's), then its write is dropped by a
/// `timeout`. The reader must still be woken when the backoff ends, make the attempt and read
/// the reply on the new connection.
#[tokio::test(start_paused = true)]
async fn a_half_waiting_out_the_backoff_is_woken_after_the_other_polled_the_timer_and_left() {
    let backend = Backend::default();
    let (read, mut writer) = split_then_lost(&backend).await;
    tokio::task::yield_now().await; // the reader sees the end of file, then waits out 1 s
    // The writer polls the backoff timer last, then gives up its write.
    let gave_up = tokio::time::timeout(secs(0.01), writer.write_all(b"x")).await;
    assert!(gave_up.is_err());
    tokio::time::sleep(secs(1.5)).await;
    assert_eq!(
        backend.attempts().len(),
        2,
        "the reader made attempt 2 at 1 s"
    );
    reply_on_the_second_connection(
        &backend,
        read,
        secs(60.0),
        "the reader waiting out the backoff was never woken",
    )
    .await;
}

/// The same with the attempt in flight: the reader's read starts the connect, the writer's
/// write polls it after it (so an attempt polled with the writer's own waker would keep only
/// the writer's) and is dropped by a `timeout`. When the attempt completes, the reader must be
/// woken at once, not at the attempt's 20 s deadline.
#[tokio::test(start_paused = true)]
async fn a_half_waiting_on_the_attempt_is_woken_when_it_completes_after_the_other_left() {
    let backend = Backend::default();
    let (stream, gate) = backend.gated_stream();
    let (reader, mut writer) = tokio::io::split(stream);
    let read = read_four(reader);
    tokio::task::yield_now().await; // the reader starts the attempt and waits on it
    // The writer polls the attempt last, then gives up its write.
    let gave_up = tokio::time::timeout(secs(0.01), writer.write_all(b"req1")).await;
    assert!(gave_up.is_err());
    gate.notify_one(); // the attempt completes
    tokio::time::sleep(secs(0.1)).await;
    backend.server(1).write_all(b"rep1").await.unwrap();
    let got = tokio::time::timeout(secs(1.0), read)
        .await
        .expect("the reader was woken only at the attempt's deadline")
        .unwrap();
    assert_eq!(&got.unwrap(), b"rep1");
}

/// When the connection comes up, every half waiting for it proceeds, not only the one whose
/// poll made it. The writer polls at the end of the backoff before the runtime has fired the
/// timer the reader waits on (timers fire when the runtime parks): it makes the attempt, which
/// connects at once, and drops the timer, which then never wakes the reader.
#[tokio::test(start_paused = true)]
async fn a_half_waiting_out_the_backoff_proceeds_when_the_other_connects_before_the_timer_fires() {
    let backend = Backend::default();
    let (read, mut writer) = split_then_lost(&backend).await;
    tokio::task::yield_now().await; // the reader sees the end of file, then waits out 1 s
    // The clock reaches the end of the backoff and the writer writes in the same poll, before
    // the runtime parks (`advance` yields) and fires the reader's timer.
    let ((), written) = tokio::join!(tokio::time::advance(secs(1.0)), writer.write_all(b"req2"));
    written.unwrap();
    assert_eq!(
        backend.attempts().len(),
        2,
        "the writer made attempt 2 at 1 s"
    );
    reply_on_the_second_connection(
        &backend,
        read,
        secs(1.0),
        "the reader was not woken when the writer connected",
    )
    .await;
}

#[test]
fn the_stream_is_send() {
    fn send<T: Send>() {}
    send::<ReconnectingStream<tokio::net::TcpStream>>();
    send::<ReconnectingStream<DuplexStream>>();
    send::<ConnectionState>();
    send::<ConnectionLost>();
}
