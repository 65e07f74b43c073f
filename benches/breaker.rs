//! palisade-breaker beside failsafe and tower-resilience-circuitbreaker.
//!
//! - `breaker/closed_call`: one successful call through a closed breaker. `palisade` is the
//!   default breaker (50 % failure rate over the last 100 calls) on the synchronous path,
//!   `try_acquire` then `success`; `palisade/consecutive` trips on 5 failures in a row only and
//!   keeps no window. `failsafe` is its default `Config` (success rate over 30 s, or 5
//!   consecutive failures), `failsafe/consecutive` its consecutive-failures policy alone, both
//!   through the synchronous `call`. `palisade/call` is `CircuitBreaker::call` on an async block
//!   and `palisade/tower` the default breaker as a tower layer; tower-resilience-circuitbreaker
//!   only has a tower service, so those two are its counterparts. Futures are polled once with a
//!   no-op waker (all of them complete on their first poll), tower services after one
//!   `poll_ready`, inside a current-thread runtime's context for everyone.
//! - `breaker/closed_call_2_threads`: the synchronous closed call on two threads at once sharing
//!   one breaker (the time until both finished, per pair of calls).
//! - `breaker/open_reject`: a call rejected by an open breaker, tripped by failures with a 1 h
//!   open duration, so the rejection is the real open-state path: it reads the clock and compares
//!   it with the deadline (palisade also computes `retry_after`). palisade's `force_open` is a
//!   different state, with no deadline, so it isn't used here.

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use failsafe::{CircuitBreaker as _, FailurePolicy as _, backoff, failure_policy};
use palisade::breaker::{CircuitBreaker, CircuitBreakerLayer, State};
use support::{contended, poll_once};
use tower_layer::Layer;
use tower_service::Service;

/// One request the way tower's contract asks: `poll_ready`, then `call`, then (here) one poll
/// of the response future.
fn ready_call<S: Service<Req>, Req>(service: &mut S, req: Req) -> Result<S::Response, S::Error> {
    match service.poll_ready(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => poll_once(service.call(req)),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => panic!("the benchmarked service was not ready"),
    }
}

#[derive(Debug, Clone, Copy)]
struct Fail;

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fail")
    }
}

impl std::error::Error for Fail {}

/// The trivial inner service of the tower benches: fails when asked to, so the open group can
/// trip the breaker with it.
async fn respond(fail: bool) -> Result<(), Fail> {
    if black_box(fail) { Err(Fail) } else { Ok(()) }
}

/// The default breaker: a 50 % failure rate over the last 100 calls, in 10 buckets.
fn windowed() -> CircuitBreaker {
    CircuitBreaker::builder().build().unwrap()
}

/// Five failures in a row, no window.
fn consecutive() -> CircuitBreaker {
    CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(5)
        .build()
        .unwrap()
}

/// failsafe's consecutive-failures policy with the threshold and backoff of the consecutive
/// half of its default `Config`.
fn failsafe_consecutive() -> impl failsafe::CircuitBreaker + Send + Sync + 'static {
    let backoff = backoff::equal_jittered(Duration::from_secs(10), Duration::from_secs(300));
    failsafe::Config::new()
        .failure_policy(failure_policy::consecutive_failures(5, backoff))
        .build()
}

fn closed_call(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("breaker/closed_call");

    // `black_box` on the breaker, for every implementation: in a real program its configuration
    // is not known to the optimizer.
    let breaker = windowed();
    group.bench_function("palisade", |b| {
        b.iter(|| {
            let permit = black_box(&breaker).try_acquire().unwrap();
            permit.success();
        })
    });

    let breaker = consecutive();
    group.bench_function("palisade/consecutive", |b| {
        b.iter(|| {
            let permit = black_box(&breaker).try_acquire().unwrap();
            permit.success();
        })
    });

    let breaker = windowed();
    group.bench_function("palisade/call", |b| {
        b.iter(|| poll_once(black_box(&breaker).call(async { Ok::<_, Fail>(()) })))
    });

    let mut service =
        CircuitBreakerLayer::new(Arc::new(windowed())).layer(tower::service_fn(respond));
    group.bench_function("palisade/tower", |b| {
        b.iter(|| ready_call(&mut service, false))
    });

    let failsafe = failsafe::Config::new().build();
    group.bench_function("failsafe", |b| {
        b.iter(|| black_box(&failsafe).call(|| Ok::<_, Fail>(())))
    });

    let failsafe = failsafe_consecutive();
    group.bench_function("failsafe/consecutive", |b| {
        b.iter(|| black_box(&failsafe).call(|| Ok::<_, Fail>(())))
    });

    let mut resilience = tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .build()
        .unwrap()
        .layer(tower::service_fn(respond));
    group.bench_function("tower-resilience-circuitbreaker", |b| {
        b.iter(|| ready_call(&mut resilience, false))
    });

    group.finish();
}

fn closed_call_2_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker/closed_call_2_threads");

    let breaker = Arc::new(windowed());
    group.bench_function("palisade", |b| {
        b.iter_custom(|iters| {
            contended(iters, &breaker, |breaker| {
                black_box(breaker).try_acquire().unwrap().success();
            })
        })
    });

    let breaker = Arc::new(consecutive());
    group.bench_function("palisade/consecutive", |b| {
        b.iter_custom(|iters| {
            contended(iters, &breaker, |breaker| {
                black_box(breaker).try_acquire().unwrap().success();
            })
        })
    });

    let failsafe = Arc::new(failsafe::Config::new().build());
    group.bench_function("failsafe", |b| {
        b.iter_custom(|iters| {
            contended(iters, &failsafe, |failsafe| {
                black_box(black_box(failsafe).call(|| Ok::<_, Fail>(()))).unwrap();
            })
        })
    });

    let failsafe = Arc::new(failsafe_consecutive());
    group.bench_function("failsafe/consecutive", |b| {
        b.iter_custom(|iters| {
            contended(iters, &failsafe, |failsafe| {
                black_box(black_box(failsafe).call(|| Ok::<_, Fail>(()))).unwrap();
            })
        })
    });

    group.finish();
}

/// Long enough that no breaker leaves the open state during a run.
const OPEN_FOR: Duration = Duration::from_secs(3600);

/// Records failures until `breaker` trips (100 for the default window, 5 for consecutive).
fn trip(breaker: &CircuitBreaker) {
    for _ in 0..1000 {
        if breaker.state() == State::Open {
            return;
        }
        breaker.try_acquire().unwrap().failure();
    }
    panic!("the breaker did not trip");
}

fn open_reject(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("breaker/open_reject");

    let breaker = CircuitBreaker::builder()
        .open_duration(OPEN_FOR)
        .build()
        .unwrap();
    trip(&breaker);
    group.bench_function("palisade", |b| {
        b.iter(|| black_box(&breaker).try_acquire().unwrap_err())
    });
    // The same breaker through `call`: the async block is never polled.
    group.bench_function("palisade/call", |b| {
        b.iter(|| {
            poll_once(black_box(&breaker).call(async { Ok::<_, Fail>(()) }))
                .unwrap_err()
                .rejected()
                .unwrap()
        })
    });

    let breaker = CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(5)
        .open_duration(OPEN_FOR)
        .build()
        .unwrap();
    trip(&breaker);
    group.bench_function("palisade/consecutive", |b| {
        b.iter(|| black_box(&breaker).try_acquire().unwrap_err())
    });

    // Through tower the rejection becomes the service's `BoxError`, which boxes it.
    let breaker = CircuitBreaker::builder()
        .open_duration(OPEN_FOR)
        .build()
        .unwrap();
    trip(&breaker);
    let mut service = CircuitBreakerLayer::new(Arc::new(breaker)).layer(tower::service_fn(respond));
    group.bench_function("palisade/tower", |b| {
        b.iter(|| ready_call(&mut service, false).unwrap_err())
    });

    // failsafe's default policy (success rate over 30 s, or 5 consecutive failures) with a 1 h
    // backoff instead of its 10-300 s jittered one; the rejection path doesn't read the policy.
    let failsafe = failsafe::Config::new()
        .failure_policy(
            failure_policy::success_rate_over_time_window(
                0.8,
                5,
                Duration::from_secs(30),
                backoff::constant(OPEN_FOR),
            )
            .or_else(failure_policy::consecutive_failures(
                5,
                backoff::constant(OPEN_FOR),
            )),
        )
        .build();
    for _ in 0..5 {
        let _ = failsafe.call(|| Err::<(), _>(Fail));
    }
    assert!(!failsafe.is_call_permitted(), "failsafe did not trip");
    group.bench_function("failsafe", |b| {
        b.iter(|| black_box(&failsafe).call(|| Ok::<_, Fail>(())).unwrap_err())
    });

    // Its default sliding-window model: trips once the 100-call window is full of failures.
    let mut resilience = tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .wait_duration_in_open(OPEN_FOR)
        .build()
        .unwrap()
        .layer(tower::service_fn(respond));
    for _ in 0..1000 {
        if resilience.is_open() {
            break;
        }
        let _ = ready_call(&mut resilience, true);
    }
    assert!(resilience.is_open(), "tower-resilience did not trip");
    group.bench_function("tower-resilience-circuitbreaker", |b| {
        b.iter(|| ready_call(&mut resilience, false).unwrap_err())
    });

    group.finish();
}

criterion_group!(benches, closed_call, closed_call_2_threads, open_reject);
criterion_main!(benches);
