//! palisade-pool beside deadpool's managed pool and bb8.
//!
//! Every pool gets the same manager, [`Noop`]: its connection is a `u64`, connecting is ready at
//! once, validating and recycling do nothing, and nothing is ever broken. What is measured is
//! the pools' own bookkeeping. Each pool is pre-warmed to its full size (every connection
//! checked out at once, then all returned) before it is measured, so no connect is timed. Apart
//! from `max_size` and the acquire timeouts named below, every pool has its defaults (palisade:
//! `FastClock`, `test_on_checkout = IdleFor(500 ms)`, `recycle` before each reuse, 30 s
//! `acquire_timeout`; deadpool: FIFO, no timeouts; bb8: FIFO, `test_on_check_out`, 30 s
//! `connection_timeout`).
//!
//! - `pool/uncontended`: one `get()` and the drop of the connection it returns, on a pool of 16
//!   with every connection idle: the steady-state checkout and return. The future is polled once
//!   with a no-op waker inside a current-thread runtime's context (it completes on its first
//!   poll for everyone). `deadpool` has deadpool's default of no wait timeout;
//!   `deadpool/timeout` the 30 s one the other pools always carry (a `tokio::time::timeout`
//!   around each `get()`).
//! - `pool/contended`: 64 tasks on a two-worker multi-thread runtime share a pool of 16; each
//!   does `get()` and drops the connection at once, over and over. Two tasks run at a time, so
//!   the connections never run out: this is the checkout and return of two threads hammering
//!   one pool. The time is from releasing the spawned tasks until the last finished, per
//!   get and drop (the spawning is not timed). Acquire timeouts are 30 s for everyone here.
//! - After the criterion groups, `pool/wait` (not a criterion group): 1,000 tasks on the same
//!   two-worker runtime share 50 connections; each does `get()`, a short hold (it yields
//!   [`HOLD_YIELDS`] times, each time going to the back of its worker's run queue) and the
//!   drop, over and over. The wait of every `get()` that starts in a window of [`WAIT_WINDOW`]
//!   opened once all 1,000 tasks are in play (plus [`WAIT_SETTLE`]) is timed with
//!   `std::time::Instant`. Each pool gets [`WAIT_WINDOWS`] windows, the pools taking turns,
//!   and the table on stderr shows the median over them of each percentile (a few ms of the
//!   VM's threads being descheduled lands in some window's tail, for any pool; the p99 range
//!   shows the spread). With every task queuing for a connection, a fair (FIFO) pool gives
//!   each `get()` about the same wait, (1,000 − 50) / 50 holds, and an unfair one short waits
//!   to most and long ones to the unlucky. Acquire timeouts are 30 s, so nobody times out.
//!   Without `--bench` (`cargo test --benches`) it records one 10 ms window, as a smoke test;
//!   a criterion filter that matches no part of `pool/wait` skips it (and so do `--list` and
//!   `--profile-time`).

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use support::poll_once;
use tokio::runtime::Runtime;

/// Connections in the pools of `pool/uncontended` and `pool/contended`.
const SIZE: usize = 16;

/// Tasks in `pool/contended`.
const TASKS: u64 = 64;

/// The acquire timeout where one is set: long enough that nobody times out.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Tasks in `pool/wait`.
const WAIT_TASKS: usize = 1_000;

/// Connections in the pools of `pool/wait`.
const WAIT_SIZE: usize = 50;

/// How long `pool/wait` runs with every task in play before it records.
const WAIT_SETTLE: Duration = Duration::from_millis(20);

/// How long each window of `pool/wait` records.
const WAIT_WINDOW: Duration = Duration::from_millis(100);

/// Windows of `pool/wait` per pool; the table shows the median of each percentile over them.
const WAIT_WINDOWS: usize = 7;

/// Yields while holding a connection in `pool/wait`.
const HOLD_YIELDS: usize = 3;

/// The manager of every pool: a connection is a number, and nothing ever fails or waits.
#[derive(Debug, Default)]
struct Noop {
    next: AtomicU64,
}

impl Noop {
    fn connection(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

impl palisade::pool::Manager for Noop {
    type Connection = u64;
    type Error = Infallible;

    async fn connect(&self) -> Result<u64, Infallible> {
        Ok(self.connection())
    }
}

impl deadpool::managed::Manager for Noop {
    type Type = u64;
    type Error = Infallible;

    async fn create(&self) -> Result<u64, Infallible> {
        Ok(self.connection())
    }

    async fn recycle(
        &self,
        _conn: &mut u64,
        _metrics: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Infallible> {
        Ok(())
    }
}

impl bb8::ManageConnection for Noop {
    type Connection = u64;
    type Error = Infallible;

    async fn connect(&self) -> Result<u64, Infallible> {
        Ok(self.connection())
    }

    async fn is_valid(&self, _conn: &mut u64) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _conn: &mut u64) -> bool {
        false
    }
}

type Palisade = palisade::pool::Pool<Noop>;
type Deadpool = deadpool::managed::Pool<Noop>;
type Bb8 = bb8::Pool<Noop>;

/// A palisade pool of `size` with the defaults otherwise (its acquire timeout is 30 s).
fn palisade_pool(size: usize) -> Palisade {
    palisade::pool::Pool::builder(Noop::default())
        .max_size(size)
        .build()
        .unwrap()
}

/// A deadpool pool of `size`, with a 30 s wait timeout if `timeout`.
fn deadpool_pool(size: usize, timeout: bool) -> Deadpool {
    let builder = deadpool::managed::Pool::builder(Noop::default()).max_size(size);
    let builder = if timeout {
        builder
            .wait_timeout(Some(ACQUIRE_TIMEOUT))
            .runtime(deadpool::Runtime::Tokio1)
    } else {
        builder
    };
    builder.build().unwrap()
}

/// A bb8 pool of `size`, with its default 30 s connection timeout (spelled out). Call it inside
/// the runtime: bb8 spawns its reaper there.
fn bb8_pool(rt: &Runtime, size: usize) -> Bb8 {
    let builder = bb8::Pool::builder()
        .max_size(u32::try_from(size).unwrap())
        .connection_timeout(ACQUIRE_TIMEOUT);
    rt.block_on(builder.build(Noop::default())).unwrap()
}

/// Checks out `size` connections at once (connecting those that do not exist yet) and returns
/// them all: the pool is full and every connection idle.
macro_rules! warm_up {
    ($rt:expr, $pool:expr, $size:expr) => {
        $rt.block_on(async {
            let mut held = Vec::with_capacity($size);
            for _ in 0..$size {
                held.push($pool.get().await.unwrap());
            }
        })
    };
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn multi_thread() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap()
}

fn uncontended(c: &mut Criterion) {
    let rt = current_thread();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("pool/uncontended");

    // `black_box` on every pool: in a real program the pool is not known to the optimizer.
    let pool = palisade_pool(SIZE);
    warm_up!(rt, pool, SIZE);
    group.bench_function("palisade", |b| {
        b.iter(|| drop(poll_once(black_box(&pool).get()).unwrap()))
    });

    let pool = deadpool_pool(SIZE, false);
    warm_up!(rt, pool, SIZE);
    group.bench_function("deadpool", |b| {
        b.iter(|| drop(poll_once(black_box(&pool).get()).unwrap()))
    });

    let pool = deadpool_pool(SIZE, true);
    warm_up!(rt, pool, SIZE);
    group.bench_function("deadpool/timeout", |b| {
        b.iter(|| drop(poll_once(black_box(&pool).get()).unwrap()))
    });

    let pool = bb8_pool(&rt, SIZE);
    warm_up!(rt, pool, SIZE);
    group.bench_function("bb8", |b| {
        b.iter(|| drop(poll_once(black_box(&pool).get()).unwrap()))
    });

    group.finish();
}

fn contended(c: &mut Criterion) {
    let rt = multi_thread();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("pool/contended");

    let pool = palisade_pool(SIZE);
    warm_up!(rt, pool, SIZE);
    group.bench_function("palisade", |b| {
        b.iter_custom(|iters| {
            support::run_tasks(&rt, TASKS, iters, |rounds| {
                let pool = pool.clone();
                async move {
                    for _ in 0..rounds {
                        drop(black_box(&pool).get().await.unwrap());
                    }
                }
            })
        })
    });

    let pool = deadpool_pool(SIZE, true);
    warm_up!(rt, pool, SIZE);
    group.bench_function("deadpool", |b| {
        b.iter_custom(|iters| {
            support::run_tasks(&rt, TASKS, iters, |rounds| {
                let pool = pool.clone();
                async move {
                    for _ in 0..rounds {
                        drop(black_box(&pool).get().await.unwrap());
                    }
                }
            })
        })
    });

    let pool = bb8_pool(&rt, SIZE);
    warm_up!(rt, pool, SIZE);
    group.bench_function("bb8", |b| {
        b.iter_custom(|iters| {
            support::run_tasks(&rt, TASKS, iters, |rounds| {
                let pool = pool.clone();
                async move {
                    for _ in 0..rounds {
                        drop(black_box(&pool).get().await.unwrap());
                    }
                }
            })
        })
    });

    group.finish();
}

/// Returns `Pending` once, having woken its own task: the task goes to the back of its
/// worker's run queue. (tokio's `yield_now` defers the wake-up until the worker has nothing
/// else to run and checks its drivers, which makes the timings depend on how often that
/// happens rather than on the pool measured.)
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// What the `pool/wait` tasks share with the thread that runs them.
#[derive(Debug, Default)]
struct WaitRun {
    /// Tasks that have started (and so are in the pool's line, or hold a connection, or are
    /// about to return one).
    started: AtomicUsize,
    /// Set once every task has started and the line has settled: waits are recorded from here.
    recording: AtomicBool,
    /// Set at the end of the window: every task stops after its current round.
    stop: AtomicBool,
}

/// Runs [`WAIT_TASKS`] tasks `task(run)` on `rt` and returns the waits they recorded, in
/// nanoseconds, sorted: those of the `get()` calls that started in the `window` that opens
/// `settle` after the last task started.
///
/// Recording only while every task is in play keeps the spawning out: the tasks are spawned
/// from outside the runtime, so the workers take them from the global queue a few at a time,
/// and a run in which fewer are active would show shorter lines.
fn waits<F, Fut>(rt: &Runtime, settle: Duration, window: Duration, task: F) -> Vec<u64>
where
    F: Fn(Arc<WaitRun>) -> Fut,
    Fut: Future<Output = Vec<u64>> + Send + 'static,
{
    let run = Arc::new(WaitRun::default());
    let handles: Vec<_> = (0..WAIT_TASKS)
        .map(|_| rt.spawn(task(run.clone())))
        .collect();
    while run.started.load(Ordering::Relaxed) < WAIT_TASKS {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(settle);
    run.recording.store(true, Ordering::Relaxed);
    std::thread::sleep(window);
    run.stop.store(true, Ordering::Relaxed);
    let mut all = rt.block_on(async {
        let mut all = Vec::new();
        for handle in handles {
            all.extend(handle.await.unwrap());
        }
        all
    });
    all.sort_unstable();
    all
}

/// A `pool/wait` task: rounds of a timed `get()`, a hold of [`HOLD_YIELDS`] yields and the drop,
/// until told to stop.
macro_rules! wait_task {
    ($pool:expr) => {{
        let pool = $pool.clone();
        move |run: Arc<WaitRun>| {
            let pool = pool.clone();
            async move {
                run.started.fetch_add(1, Ordering::Relaxed);
                let mut waits = Vec::new();
                while !run.stop.load(Ordering::Relaxed) {
                    let recording = run.recording.load(Ordering::Relaxed);
                    let start = Instant::now();
                    let conn = pool.get().await.unwrap();
                    if recording {
                        waits.push(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
                    }
                    for _ in 0..HOLD_YIELDS {
                        yield_once().await;
                    }
                    drop(conn);
                }
                waits
            }
        }
    }};
}

/// The `q` quantile of sorted `waits`, in microseconds.
fn quantile_us(waits: &[u64], q: f64) -> f64 {
    let rank = ((q * waits.len() as f64).ceil() as usize).clamp(1, waits.len());
    waits[rank - 1] as f64 / 1_000.0
}

/// Whether the command line's filter (criterion's positional argument, if any) selects
/// `pool/wait`: no filter, or one that is a substring of the name or contains it.
fn wait_selected(args: &[String]) -> bool {
    /// Criterion's options that take a value (the value is not a filter).
    const WITH_VALUE: &[&str] = &[
        "--color",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--format",
        "--profile-time",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--plotting-backend",
        "--output-format",
    ];
    if args
        .iter()
        .any(|a| a == "--list" || a.starts_with("--profile-time"))
    {
        return false;
    }
    let mut filter = None;
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        if WITH_VALUE.contains(&arg.as_str()) {
            rest.next();
        } else if !arg.starts_with('-') {
            filter = Some(arg.as_str());
        }
    }
    filter.is_none_or(|f| "pool/wait".contains(f) || f.contains("pool/wait"))
}

/// One window's waits, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Window {
    gets: usize,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Window {
    fn new(waits: &[u64]) -> Window {
        Window {
            gets: waits.len(),
            p50: quantile_us(waits, 0.5),
            p99: quantile_us(waits, 0.99),
            p999: quantile_us(waits, 0.999),
            max: quantile_us(waits, 1.0),
        }
    }
}

/// The median of `values` (an odd number of them, or the upper middle).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The `pool/wait` table: each pool's wait per `get()` under 1,000 tasks on 50 connections.
fn wait_report() {
    let args: Vec<String> = std::env::args().collect();
    if !wait_selected(&args) {
        return;
    }
    // One short window without `--bench` (`cargo test --benches`): a smoke test.
    let (windows, settle, window) = if args.iter().any(|a| a == "--bench") {
        (WAIT_WINDOWS, WAIT_SETTLE, WAIT_WINDOW)
    } else {
        (1, Duration::ZERO, Duration::from_millis(10))
    };
    let rt = multi_thread();
    let _guard = rt.enter();

    let palisade = palisade_pool(WAIT_SIZE);
    warm_up!(rt, palisade, WAIT_SIZE);
    let deadpool = deadpool_pool(WAIT_SIZE, true);
    warm_up!(rt, deadpool, WAIT_SIZE);
    let bb8 = bb8_pool(&rt, WAIT_SIZE);
    warm_up!(rt, bb8, WAIT_SIZE);

    // Windows of the three pools in turn, so that a slow spell of the machine does not land
    // on one pool's windows only.
    let mut rows: [(&str, Vec<Window>); 3] = [
        ("palisade", Vec::new()),
        ("deadpool", Vec::new()),
        ("bb8", Vec::new()),
    ];
    for _ in 0..windows {
        let recorded = waits(&rt, settle, window, wait_task!(palisade));
        rows[0].1.push(Window::new(&recorded));
        let recorded = waits(&rt, settle, window, wait_task!(deadpool));
        rows[1].1.push(Window::new(&recorded));
        let recorded = waits(&rt, settle, window, wait_task!(bb8));
        rows[2].1.push(Window::new(&recorded));
    }

    eprintln!();
    eprintln!(
        "pool/wait: {WAIT_TASKS} tasks on {WAIT_SIZE} connections, 2 workers, hold = \
         {HOLD_YIELDS} yields; wait per get() in µs, median of {windows} windows of {window:?} \
         (p99 range: lowest and highest window)"
    );
    eprintln!(
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9}  {:>19}",
        "pool", "gets", "p50", "p99", "p99.9", "max", "p99 range"
    );
    for (name, windows) in &rows {
        let stat = |f: fn(&Window) -> f64| median(windows.iter().map(f).collect());
        let p99 = windows.iter().map(|w| w.p99);
        let (low, high) = (
            p99.clone().fold(f64::MAX, f64::min),
            p99.fold(0.0, f64::max),
        );
        eprintln!(
            "{:<10} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1}  {:>9.1}..{:<9.1}",
            name,
            windows.iter().map(|w| w.gets).sum::<usize>(),
            stat(|w| w.p50),
            stat(|w| w.p99),
            stat(|w| w.p999),
            stat(|w| w.max),
            low,
            high,
        );
    }
}

criterion_group!(benches, uncontended, contended);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    wait_report();
}
