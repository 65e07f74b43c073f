//! Harness pieces shared by the bench files (`mod support;` in each). A bench file uses some of
//! them, hence the `dead_code` allowances.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Polls `fut` once with a no-op waker; every future benchmarked this way is ready at once.
#[allow(dead_code)]
pub(crate) fn poll_once<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the benchmarked future was not ready on its first poll"),
    }
}

/// Times two threads, started together, each running `op` `iters` times on the same shared
/// value: the time per pair of operations under contention.
#[allow(dead_code)]
pub(crate) fn contended<B: Send + Sync + 'static>(
    iters: u64,
    shared: &Arc<B>,
    op: fn(&B),
) -> Duration {
    let start_line = Arc::new(Barrier::new(2));
    let other = {
        let (shared, start_line) = (shared.clone(), start_line.clone());
        std::thread::spawn(move || {
            start_line.wait();
            for _ in 0..iters {
                op(&shared);
            }
        })
    };
    start_line.wait();
    let start = Instant::now();
    for _ in 0..iters {
        op(shared);
    }
    other.join().unwrap();
    start.elapsed()
}

/// Runs `tasks` tasks on `rt`, each `task(n)` with `n` rounds, enough that all of them together
/// do at least `iters`; returns the time for `iters` rounds. The tasks are spawned behind a
/// closed gate; the clock starts as it opens and stops when the last one finished.
#[allow(dead_code)]
pub(crate) fn run_tasks<F, Fut>(
    rt: &tokio::runtime::Runtime,
    tasks: u64,
    iters: u64,
    task: F,
) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let rounds = iters.div_ceil(tasks).max(1);
    let elapsed = rt.block_on(async {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let gate = gate.clone();
                let work = task(rounds);
                tokio::spawn(async move {
                    gate.acquire().await.unwrap().forget();
                    work.await;
                })
            })
            .collect();
        let start = Instant::now();
        gate.add_permits(tasks as usize);
        for handle in handles {
            handle.await.unwrap();
        }
        start.elapsed()
    });
    elapsed.mul_f64(iters as f64 / (rounds * tasks) as f64)
}
