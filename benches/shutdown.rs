//! palisade-shutdown beside tokio-util's `CancellationToken` and `TaskTracker`.
//!
//! Every coordinator is built with `.signals([])` outside any runtime, so no signal handler is
//! installed and nothing but the measured work runs.
//!
//! - `shutdown/check`: is shutdown under way, asked of a handle nobody has triggered: the check a
//!   server makes per request or a worker per loop iteration. `palisade` is
//!   `Shutdown::is_shutting_down` (one atomic load), `tokio-util/cancellation-token`
//!   `CancellationToken::is_cancelled` (which takes the token's mutex in tokio-util 0.7).
//! - `shutdown/check_2_threads`: the same check on two threads at once sharing one handle or
//!   token (the time until both finished, per pair of checks): many workers polling one token.
//! - `shutdown/spawn`: one tracked task, spawned and awaited, on a current-thread runtime: tasks
//!   of an empty `async {}` are spawned in batches of 64, then their `JoinHandle`s are awaited in
//!   order, all inside one `block_on`; the time is per task (spawn, run, join). `palisade` is
//!   `Shutdown::spawn` (tracked in the root scope, its abort handle registered for the
//!   deadline), `palisade/track` is `tokio::spawn(shutdown.track(..))` (tracked, not abortable
//!   at the deadline: the same bookkeeping minus the abort-handle registry),
//!   `tokio-util/task-tracker` is `TaskTracker::spawn`, and `tokio/spawn` is an untracked
//!   `tokio::spawn`, the floor everyone's overhead sits on. Each batch finishes before the next
//!   starts, so the root scope's registry of abort handles is compacted to empty every 64
//!   spawns: it stays bounded across iterations, at an amortized cost that is part of the
//!   measurement.

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::shutdown::{Coordinator, Shutdown};
use support::contended;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Tasks spawned before any is awaited in `shutdown/spawn`.
const BATCH: u64 = 64;

/// A handle on a coordinator with no signal handlers, built outside any runtime.
fn shutdown() -> Shutdown {
    Coordinator::builder().signals([]).build().unwrap().handle()
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("shutdown/check");

    // `black_box` on the handle and the token, for everyone: in a real program whether shutdown
    // began is not known to the optimizer, and the load must not be hoisted out of the loop.
    let shutdown = shutdown();
    group.bench_function("palisade", |b| {
        b.iter(|| black_box(&shutdown).is_shutting_down())
    });

    let token = CancellationToken::new();
    group.bench_function("tokio-util/cancellation-token", |b| {
        b.iter(|| black_box(&token).is_cancelled())
    });

    group.finish();
}

fn check_2_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("shutdown/check_2_threads");

    let shutdown = Arc::new(shutdown());
    group.bench_function("palisade", |b| {
        b.iter_custom(|iters| {
            contended(iters, &shutdown, |shutdown| {
                black_box(black_box(shutdown).is_shutting_down());
            })
        })
    });

    let token = Arc::new(CancellationToken::new());
    group.bench_function("tokio-util/cancellation-token", |b| {
        b.iter_custom(|iters| {
            contended(iters, &token, |token| {
                black_box(black_box(token).is_cancelled());
            })
        })
    });

    group.finish();
}

/// Spawns at least `iters` tasks with `spawn`, [`BATCH`] at a time, awaiting each batch before
/// the next, all inside one `block_on` on `rt`; returns the time for `iters` tasks.
fn spawn_batches<S, T>(rt: &Runtime, iters: u64, spawn: S) -> Duration
where
    S: Fn() -> JoinHandle<T>,
    T: Send + 'static,
{
    let batches = iters.div_ceil(BATCH).max(1);
    let elapsed = rt.block_on(async {
        let mut handles = Vec::with_capacity(BATCH as usize);
        let start = Instant::now();
        for _ in 0..batches {
            handles.extend((0..BATCH).map(|_| spawn()));
            for handle in handles.drain(..) {
                black_box(handle.await.unwrap());
            }
        }
        start.elapsed()
    });
    elapsed.mul_f64(iters as f64 / (batches * BATCH) as f64)
}

/// The task every implementation spawns.
async fn task() {}

fn spawn(c: &mut Criterion) {
    let rt = current_thread();
    let mut group = c.benchmark_group("shutdown/spawn");

    let shutdown = shutdown();
    group.bench_function("palisade", |b| {
        b.iter_custom(|iters| {
            spawn_batches(&rt, iters, || black_box(&shutdown).spawn(task()).unwrap())
        })
    });
    group.bench_function("palisade/track", |b| {
        b.iter_custom(|iters| {
            spawn_batches(&rt, iters, || {
                tokio::spawn(black_box(&shutdown).track(task()).unwrap())
            })
        })
    });
    assert_eq!(shutdown.running_tasks(), 0, "every tracked task finished");

    let tracker = TaskTracker::new();
    group.bench_function("tokio-util/task-tracker", |b| {
        b.iter_custom(|iters| spawn_batches(&rt, iters, || black_box(&tracker).spawn(task())))
    });
    assert!(tracker.is_empty(), "every tracked task finished");

    group.bench_function("tokio/spawn", |b| {
        b.iter_custom(|iters| spawn_batches(&rt, iters, || tokio::spawn(task())))
    });

    group.finish();
}

criterion_group!(benches, check, check_2_threads, spawn);
criterion_main!(benches);
