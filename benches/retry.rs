//! palisade-retry beside backon, tokio-retry, tower-resilience-retry and tower's `TpsBudget`.
//!
//! - `retry/success`: the overhead of wrapping a call that succeeds at once. Futures are polled
//!   once with a no-op waker (every implementation completes on its first poll), so no executor
//!   cost hides the difference. `direct` is the bare call.
//! - `retry/one_retry`: a call that fails once, retried after a zero delay, run on a
//!   current-thread runtime (`block_on` is the same fixed cost for everyone).
//! - `retry/budget` and `retry/budget_2_threads`: one `deposit` plus one `withdraw` on a shared
//!   budget, the cost a retried request pays; on one thread, then on two threads at once (the
//!   time until both finished, per pair of operations).

mod support;

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::retry::{Backoff, RetryBudget, RetryLayer, RetryPolicy, TpsBudget, retry};
use support::{contended, poll_once};
use tower::retry::budget::Budget as _;
use tower_layer::Layer;
use tower_service::Service;

#[derive(Debug, Clone, Copy)]
struct Fail;

async fn work(x: u64) -> Result<u64, Fail> {
    Ok(black_box(x) + 1)
}

fn zero_delay_policy() -> RetryPolicy {
    RetryPolicy::builder()
        .backoff(Backoff::constant(Duration::ZERO))
        .max_attempts(3)
        .build()
        .unwrap()
}

fn success(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("retry/success");

    group.bench_function("direct", |b| b.iter(|| poll_once(work(1))));

    let policy = zero_delay_policy();
    group.bench_function("palisade", |b| {
        b.iter(|| poll_once(retry(|| work(1)).with(&policy)))
    });

    group.bench_function("backon", |b| {
        use backon::{ConstantBuilder, Retryable};
        let backoff = ConstantBuilder::default()
            .with_delay(Duration::ZERO)
            .with_max_times(2);
        b.iter(|| poll_once((|| work(1)).retry(backoff)))
    });

    group.bench_function("tokio-retry", |b| {
        use tokio_retry::strategy::FixedInterval;
        b.iter(|| {
            poll_once(tokio_retry::Retry::start(
                FixedInterval::from_millis(0).take(2),
                || work(1),
            ))
        })
    });

    let mut palisade_tower = RetryLayer::new(policy).layer(tower::service_fn(work));
    group.bench_function("palisade/tower", |b| {
        b.iter(|| poll_once(palisade_tower.call(1)))
    });

    let mut resilience = tower_resilience_retry::RetryLayer::<u64, u64, Fail>::builder()
        .max_attempts(3)
        .fixed_backoff(Duration::ZERO)
        .build()
        .layer(tower::service_fn(work));
    group.bench_function("tower-resilience-retry", |b| {
        b.iter(|| poll_once(resilience.call(1)))
    });

    group.finish();
}

/// Fails every other call, so each benchmarked operation is one failure and one success.
fn flaky(counter: &AtomicU32) -> impl Future<Output = Result<u64, Fail>> + use<> {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    async move {
        if n.is_multiple_of(2) {
            Err(Fail)
        } else {
            Ok(u64::from(n))
        }
    }
}

fn one_retry(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("retry/one_retry");
    let counter = AtomicU32::new(0);

    group.bench_function("direct", |b| {
        b.iter(|| {
            rt.block_on(async {
                match flaky(&counter).await {
                    Err(_) => flaky(&counter).await,
                    ok => ok,
                }
            })
        })
    });

    let policy = zero_delay_policy();
    group.bench_function("palisade", |b| {
        b.iter(|| rt.block_on(retry(|| flaky(&counter)).with(&policy)))
    });

    group.bench_function("backon", |b| {
        use backon::{ConstantBuilder, Retryable};
        let backoff = ConstantBuilder::default()
            .with_delay(Duration::ZERO)
            .with_max_times(2);
        b.iter(|| rt.block_on((|| flaky(&counter)).retry(backoff)))
    });

    group.bench_function("tokio-retry", |b| {
        use tokio_retry::strategy::FixedInterval;
        b.iter(|| {
            rt.block_on(tokio_retry::Retry::start(
                FixedInterval::from_millis(0).take(2),
                || flaky(&counter),
            ))
        })
    });

    let counter = Arc::new(AtomicU32::new(0));
    let service = {
        let counter = counter.clone();
        tower::service_fn(move |_: u64| flaky(&counter))
    };
    let mut palisade_tower = RetryLayer::new(policy).layer(service.clone());
    group.bench_function("palisade/tower", |b| {
        b.iter(|| rt.block_on(palisade_tower.call(1)))
    });
    let mut resilience = tower_resilience_retry::RetryLayer::<u64, u64, Fail>::builder()
        .max_attempts(3)
        .fixed_backoff(Duration::ZERO)
        .build()
        .layer(service);
    group.bench_function("tower-resilience-retry", |b| {
        b.iter(|| rt.block_on(resilience.call(1)))
    });
    group.finish();
}

/// Both budgets configured alike: ttl 10 s, 10 retries/s floor, one retry per deposit, so every
/// withdrawal in the loop succeeds.
fn budgets() -> (TpsBudget, tower::retry::budget::TpsBudget) {
    let palisade = TpsBudget::builder()
        .ttl(Duration::from_secs(10))
        .min_per_sec(10)
        .retry_ratio(1.0)
        .build()
        .unwrap();
    let tower = tower::retry::budget::TpsBudget::new(Duration::from_secs(10), 10, 1.0);
    (palisade, tower)
}

fn budget(c: &mut Criterion) {
    let (palisade, tower) = budgets();
    let mut group = c.benchmark_group("retry/budget");
    group.bench_function("palisade", |b| {
        b.iter(|| {
            palisade.deposit();
            black_box(palisade.withdraw())
        })
    });
    group.bench_function("tower", |b| {
        b.iter(|| {
            tower.deposit();
            black_box(tower.withdraw())
        })
    });
    group.finish();

    // The same pair while a second thread does the same on the same budget.
    let mut group = c.benchmark_group("retry/budget_2_threads");
    let (palisade, tower) = budgets();
    let (palisade, tower) = (Arc::new(palisade), Arc::new(tower));
    group.bench_function("palisade", |b| {
        b.iter_custom(|iters| {
            contended(iters, &palisade, |p: &TpsBudget| {
                p.deposit();
                black_box(p.withdraw());
            })
        })
    });
    group.bench_function("tower", |b| {
        b.iter_custom(|iters| {
            contended(iters, &tower, |t: &tower::retry::budget::TpsBudget| {
                t.deposit();
                black_box(t.withdraw());
            })
        })
    });
    group.finish();
}

criterion_group!(benches, success, one_retry, budget);
criterion_main!(benches);
