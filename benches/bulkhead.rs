//! palisade-bulkhead beside tokio's `Semaphore`, tower's `ConcurrencyLimit` and
//! tower-resilience-bulkhead.
//!
//! Futures are polled once with a no-op waker (every one here completes on its first poll) and
//! tower services after one `poll_ready`, inside a current-thread runtime's context for
//! everyone, except in `bulkhead/contended`, which runs tasks on a two-thread runtime.
//!
//! - `bulkhead/acquire_release`: one acquire and one release of an uncontended limit of 8 with
//!   every permit free. `palisade` is `try_acquire` and `tokio/semaphore` is tokio's
//!   `Semaphore::try_acquire`: both the synchronous path with no future and no queue, so that
//!   pair is the like-for-like comparison. `palisade/acquire` and `tokio/semaphore/acquire` are
//!   the async `acquire()` of each, polled once (the future's set-up, one poll and its drop on
//!   top of the same atomic work).
//! - `bulkhead/tower`: one request through a concurrency-limiting tower service over an
//!   always-ready service whose response is a `std::future::Ready`: `poll_ready`, `call`, one
//!   poll of the response. `direct` is that inner service alone, the floor everyone's overhead
//!   sits on. `palisade` is `BulkheadLayer` in wait mode (`poll_ready` takes the permit, the
//!   response future releases it), `palisade/shed` its load-shed mode (`poll_ready` tries once).
//!   `tower/concurrency-limit` is tower's `ConcurrencyLimit` (permit in `poll_ready`, released
//!   with the response future). `tower-resilience-bulkhead/backpressure` is its backpressure
//!   mode (permit in `poll_ready`: the counterpart of palisade's wait mode),
//!   `tower-resilience-bulkhead` its default mode (`call` waits for a permit inside its boxed
//!   response future) and `tower-resilience-bulkhead/reject-when-full` its zero-wait mode (the
//!   counterpart of `palisade/shed`). All limits are 8.
//! - `bulkhead/contended`: 64 tasks on a two-worker multi-thread runtime share a limit of 8;
//!   each takes a permit (`acquire().await`, or `ready().await` then `call` for the tower
//!   services), yields once while holding it (wakes itself and returns `Pending`, so it goes
//!   to the back of its worker's run queue), and releases it, over and over. With 8 holders
//!   yielded at any time the other tasks queue, so the waiting path (enqueue, hand-over to the
//!   next waiter, wake-up) is what is measured. The time is from releasing the 64 spawned tasks
//!   until the last finished, per acquire/release (the tasks' spawning is not timed; the yield
//!   and the scheduling are the same for everyone). Cross-thread wake-ups dominate, so on a
//!   small VM whole runs of samples can shift severalfold for any implementation: compare
//!   this group across several runs, not within one. `palisade` is `Bulkhead::acquire` (queue
//!   of up to 64), `tokio/semaphore` `Semaphore::acquire`; `palisade/tower`,
//!   `tower/concurrency-limit` and `tower-resilience-bulkhead/backpressure` are the tower
//!   services as in `bulkhead/tower`, one clone per task.

mod support;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::bulkhead::{Bulkhead, BulkheadLayer};
use support::poll_once;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;
use tower_layer::Layer;
use tower_service::Service;

/// The concurrency limit of every bulkhead, semaphore and service here.
const LIMIT: u32 = 8;

/// Tasks in `bulkhead/contended`.
const TASKS: u64 = 64;

/// An always-ready service answering at once: the inner service of the tower benches.
#[derive(Debug, Clone, Copy)]
struct Noop;

impl Service<()> for Noop {
    type Response = ();
    type Error = Infallible;
    type Future = Ready<Result<(), Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, _req: ()) -> Self::Future {
        ready(Ok(()))
    }
}

/// One request the way tower's contract asks: `poll_ready`, then `call`, then one poll of the
/// response future.
fn ready_call<S: Service<Req>, Req>(service: &mut S, req: Req) -> Result<S::Response, S::Error> {
    match service.poll_ready(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => poll_once(service.call(req)),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => panic!("the benchmarked service was not ready"),
    }
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn acquire_release(c: &mut Criterion) {
    let rt = current_thread();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("bulkhead/acquire_release");

    // `black_box` on the bulkhead and the semaphore, for every implementation: in a real
    // program the limit is not known to the optimizer.
    let bulkhead = Bulkhead::new(LIMIT).unwrap();
    group.bench_function("palisade", |b| {
        b.iter(|| drop(black_box(&bulkhead).try_acquire().unwrap()))
    });
    group.bench_function("palisade/acquire", |b| {
        b.iter(|| drop(poll_once(black_box(&bulkhead).acquire()).unwrap()))
    });

    let semaphore = Semaphore::new(LIMIT as usize);
    group.bench_function("tokio/semaphore", |b| {
        b.iter(|| drop(black_box(&semaphore).try_acquire().unwrap()))
    });
    group.bench_function("tokio/semaphore/acquire", |b| {
        b.iter(|| drop(poll_once(black_box(&semaphore).acquire()).unwrap()))
    });

    group.finish();
}

fn tower(c: &mut Criterion) {
    let rt = current_thread();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("bulkhead/tower");

    let mut service = Noop;
    group.bench_function("direct", |b| {
        b.iter(|| ready_call(&mut service, ()).unwrap())
    });

    let mut service = BulkheadLayer::new(Bulkhead::new(LIMIT).unwrap()).layer(Noop);
    group.bench_function("palisade", |b| {
        b.iter(|| ready_call(&mut service, ()).unwrap())
    });

    let mut service = BulkheadLayer::new(Bulkhead::new(LIMIT).unwrap())
        .shed()
        .layer(Noop);
    group.bench_function("palisade/shed", |b| {
        b.iter(|| ready_call(&mut service, ()).unwrap())
    });

    let mut service = tower::limit::ConcurrencyLimitLayer::new(LIMIT as usize).layer(Noop);
    group.bench_function("tower/concurrency-limit", |b| {
        b.iter(|| ready_call(&mut service, ()).unwrap())
    });

    let mut service = tower_resilience_bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(LIMIT as usize)
        .build()
        .unwrap()
        .layer(Noop);
    group.bench_function("tower-resilience-bulkhead", |b| {
        b.iter(|| ready_call(&mut service, ()).unwrap())
    });

    let mut service = tower_resilience_bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(LIMIT as usize)
        .backpressure()
        .build()
        .unwrap()
        .layer(Noop);
    group.bench_function("tower-resilience-bulkhead/backpressure", |b| {
        b.iter(|| ready_call(&mut service, ()).unwrap())
    });

    let mut service = tower_resilience_bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(LIMIT as usize)
        .reject_when_full()
        .build()
        .unwrap()
        .layer(Noop);
    group.bench_function("tower-resilience-bulkhead/reject-when-full", |b| {
        b.iter(|| ready_call(&mut service, ()).unwrap())
    });

    group.finish();
}

/// Returns `Pending` once, having woken its own task: the task goes to the back of its
/// worker's run queue. (tokio's `yield_now` defers the wake-up until the worker has nothing
/// else to run and checks its drivers, which makes the timings depend on how often that
/// happens rather than on the primitive measured.)
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

/// One contended round through a tower service: a permit from `ready`, held across a yield in
/// the response future, released when it completes.
async fn tower_rounds<S>(mut service: S, rounds: u64)
where
    S: Service<(), Response = ()>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..rounds {
        let response = service.ready().await.unwrap().call(());
        yield_once().await;
        response.await.unwrap();
    }
}

fn contended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("bulkhead/contended");

    // A queue long enough for every task, so nobody is refused.
    let bulkhead = Bulkhead::builder(LIMIT)
        .max_queued(TASKS as usize)
        .build()
        .unwrap();
    group.bench_function("palisade", |b| {
        b.iter_custom(|iters| {
            support::run_tasks(&rt, TASKS, iters, |rounds| {
                let bulkhead = bulkhead.clone();
                async move {
                    for _ in 0..rounds {
                        let permit = black_box(&bulkhead).acquire().await.unwrap();
                        yield_once().await;
                        drop(permit);
                    }
                }
            })
        })
    });

    let semaphore = Arc::new(Semaphore::new(LIMIT as usize));
    group.bench_function("tokio/semaphore", |b| {
        b.iter_custom(|iters| {
            support::run_tasks(&rt, TASKS, iters, |rounds| {
                let semaphore = semaphore.clone();
                async move {
                    for _ in 0..rounds {
                        let permit = black_box(&semaphore).acquire().await.unwrap();
                        yield_once().await;
                        drop(permit);
                    }
                }
            })
        })
    });

    let service = BulkheadLayer::new(bulkhead.clone()).layer(Noop);
    group.bench_function("palisade/tower", |b| {
        b.iter_custom(|iters| {
            support::run_tasks(&rt, TASKS, iters, |rounds| {
                tower_rounds(service.clone(), rounds)
            })
        })
    });

    let service = tower::limit::ConcurrencyLimitLayer::new(LIMIT as usize).layer(Noop);
    group.bench_function("tower/concurrency-limit", |b| {
        b.iter_custom(|iters| {
            support::run_tasks(&rt, TASKS, iters, |rounds| {
                tower_rounds(service.clone(), rounds)
            })
        })
    });

    let service = tower_resilience_bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(LIMIT as usize)
        .backpressure()
        .build()
        .unwrap()
        .layer(Noop);
    group.bench_function("tower-resilience-bulkhead/backpressure", |b| {
        b.iter_custom(|iters| {
            support::run_tasks(&rt, TASKS, iters, |rounds| {
                tower_rounds(service.clone(), rounds)
            })
        })
    });

    group.finish();
}

criterion_group!(benches, acquire_release, tower, contended);
criterion_main!(benches);
