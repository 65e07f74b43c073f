//! palisade-reconnect beside a raw `TcpStream` and tower's `Reconnect`.
//!
//! Everything runs on one current-thread runtime (I/O and time drivers on), created once per
//! group; every connection is made before it is measured, so no connect is timed.
//!
//! - `reconnect/stream_4k`: the steady-state cost of the stream wrapper on real I/O. A client
//!   writes a 4 KiB message over loopback TCP and reads the 4 KiB echo back, over and over, to
//!   an echo server that is a task of the same runtime (`TCP_NODELAY` on both ends, so Nagle
//!   never holds a segment). `palisade` is a `ReconnectingStream<TcpStream>` with the default
//!   policy and no idle timeout, `tokio/tcp-stream` the raw `TcpStream`. The throughput counts
//!   the bytes through the client stream per round trip (4 KiB out, 4 KiB back). A round trip
//!   rather than a one-way stream: it drives both `poll_write` and `poll_read` of the wrapper
//!   once per message each (a writer draining into a server would measure only the write path,
//!   and mostly how fast the kernel's socket buffer fills), and each iteration is the same
//!   amount of work, with nothing queued from one iteration to the next.
//! - `reconnect/service_call`: the per-request cost of the tower service around a connection:
//!   `ServiceExt::ready` and `call` on a connected service, both futures awaited (each is
//!   ready on its first poll, polled with a no-op waker inside the runtime's context). The
//!   made service is [`Unit`], whose `poll_ready` and `call` are ready at once: what is left is
//!   the reconnecting layer. `palisade` is `palisade_reconnect::Reconnect` (connected by its
//!   background task before measuring), `tower/reconnect` is `tower::reconnect::Reconnect`
//!   (connected by a first `ready()`).

mod support;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade::reconnect::ReconnectingStream;
use support::poll_once;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tower::{Service, ServiceExt};

/// The message size of `reconnect/stream_4k`.
const MSG: usize = 4096;

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .unwrap()
}

/// An echo server on an ephemeral loopback port, as tasks of the current runtime: every
/// connection gets its bytes back.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if socket.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A client connection with `TCP_NODELAY`.
async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `iters` round trips of a 4 KiB message on `stream`: the time they took.
fn round_trips<S>(rt: &Runtime, stream: &mut S, iters: u64) -> Duration
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    rt.block_on(async {
        let out = [0xa5u8; MSG];
        let mut back = [0u8; MSG];
        let start = Instant::now();
        for _ in 0..iters {
            let stream = black_box(&mut *stream);
            stream.write_all(&out).await.unwrap();
            stream.read_exact(&mut back).await.unwrap();
        }
        let elapsed = start.elapsed();
        assert_eq!(back, out);
        elapsed
    })
}

fn stream_4k(c: &mut Criterion) {
    let rt = current_thread();
    let addr = rt.block_on(echo_server());
    let mut group = c.benchmark_group("reconnect/stream_4k");
    group.throughput(Throughput::Bytes(2 * MSG as u64));

    let mut stream = ReconnectingStream::builder(move || connect(addr))
        .build()
        .unwrap();
    rt.block_on(stream.connect()).unwrap();
    group.bench_function("palisade", |b| {
        b.iter_custom(|iters| round_trips(&rt, &mut stream, iters))
    });
    assert_eq!(stream.generation(), 1, "the connection never dropped");
    drop(stream);

    let mut stream = rt.block_on(connect(addr)).unwrap();
    group.bench_function("tokio/tcp-stream", |b| {
        b.iter_custom(|iters| round_trips(&rt, &mut stream, iters))
    });

    group.finish();
}

/// The made service: ready at once, answers at once.
#[derive(Debug, Clone, Copy)]
struct Unit;

impl Service<()> for Unit {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        ready(Ok(()))
    }
}

/// The `MakeService` of both: a [`Unit`] per connection, made at once.
#[derive(Debug, Clone, Copy)]
struct MakeUnit;

impl Service<()> for MakeUnit {
    type Response = Unit;
    type Error = Infallible;
    type Future = Ready<Result<Unit, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        ready(Ok(Unit))
    }
}

/// One request: `ready()` then `call()`, both awaited.
macro_rules! one_call {
    ($svc:expr) => {
        poll_once(async {
            let svc = black_box(&mut $svc);
            svc.ready().await.unwrap().call(()).await.unwrap()
        })
    };
}

fn service_call(c: &mut Criterion) {
    let rt = current_thread();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("reconnect/service_call");

    let mut svc = palisade::reconnect::Reconnect::new(MakeUnit, ());
    rt.block_on(svc.connected()).unwrap();
    one_call!(svc);
    group.bench_function("palisade", |b| b.iter(|| one_call!(svc)));

    let mut svc = tower::reconnect::Reconnect::new(MakeUnit, ());
    one_call!(svc);
    group.bench_function("tower/reconnect", |b| b.iter(|| one_call!(svc)));

    group.finish();
}

criterion_group!(benches, stream_4k, service_call);
criterion_main!(benches);
