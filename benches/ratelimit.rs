//! palisade-ratelimit beside governor, tower's `RateLimit` and tower-resilience-ratelimiter.
//!
//! Every limiter allows 1,000,000,000 cells per second (burst 1,000,000,000 where there is a
//! burst): one cell per nanosecond, more than any check here can take, so every check is allowed
//! (each benchmark asserts it) and the allowed path is what is measured. Each check reads its
//! limiter's default clock once: palisade's `FastClock` and governor's `QuantaClock` are both
//! quanta's calibrated counter; tower and tower-resilience read tokio's `Instant::now`.
//!
//! - `ratelimit/direct`: one check of one limiter (GCRA on one atomic word for both palisade
//!   and governor's `RateLimiter::direct`).
//! - `ratelimit/direct_coarse`: the same check with the clock read taken out, both limiters on
//!   a coarse clock that an upkeep thread stores every millisecond (governor's opt-in
//!   `QuantaUpkeepClock`; for palisade a `Clock` of this file reading quanta's `recent()` the
//!   same way). Not a configuration to recommend (a coarse clock makes any GCRA inexact: see
//!   the crate README's performance section); it measures each library's own work, which the
//!   counter read hides in `ratelimit/direct`.
//! - `ratelimit/keyed_1k`, `ratelimit/keyed_1m` and `ratelimit/keyed_900k`: one check of a keyed
//!   limiter holding 1,000, 1,000,000 or 900,000 `u64` keys, inserted before timing, cycling
//!   through them in order. (With 4 × cores shards, a million keys fill each shard's table to
//!   about half its slots and 900,000 to 0.86 of them, near the 7/8 at which it grows: the
//!   shortest and about the longest probe runs of its growth cycle.)
//!   palisade's `KeyedRateLimiter` with `max_keys` the number of keys, governor's default keyed
//!   limiter (`RateLimiter::keyed`, a `DashMap`); both hash with std's `RandomState` and have
//!   4 × cores shards.
//! - `ratelimit/contended`: the direct check on two threads at once sharing one limiter (the
//!   time until both finished, per pair of checks); `ratelimit/contended_keyed`: the same on
//!   one key of a keyed limiter.
//! - `ratelimit/tower`: one request through a rate-limiting tower service over a ready no-op
//!   service: `poll_ready`, `call`, one poll of the response, inside a current-thread
//!   runtime's context for everyone. `palisade` is `RateLimitLayer` over a shared
//!   `RateLimiter` in its default reject mode (`call` checks), `palisade/backpressure` the same
//!   in backpressure mode (`poll_ready` takes the cell). `tower/rate-limit` is tower's
//!   `RateLimit`, backpressure only: a fixed window counted in the service itself, not shared
//!   between clones. `tower-resilience-ratelimiter` is its default fixed window behind a
//!   mutex in its default mode (`call` takes a permit, in a boxed response future), and
//!   `tower-resilience-ratelimiter/backpressure` its backpressure mode.

mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use palisade::ratelimit::{KeyedRateLimiter, Quota, RateLimitLayer, RateLimiter};
use palisade::{Clock, Instant};
use support::{contended, poll_once};
use tower_layer::Layer;
use tower_service::Service;

/// Cells per second for every limiter: one per nanosecond.
const RATE: u32 = 1_000_000_000;

fn quota() -> Quota {
    Quota::per_second(RATE)
}

fn governor_quota() -> governor::Quota {
    governor::Quota::per_second(NonZeroU32::new(RATE).unwrap())
}

type GovernorKeyed = governor::DefaultKeyedRateLimiter<u64>;

fn direct(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit/direct");

    // `black_box` on the limiter, for every implementation: in a real program its quota is not
    // known to the optimizer.
    let limiter = RateLimiter::new(quota()).unwrap();
    group.bench_function("palisade", |b| {
        b.iter(|| assert!(black_box(&limiter).check().is_allowed()))
    });

    let governor = governor::RateLimiter::direct(governor_quota());
    group.bench_function("governor", |b| {
        b.iter(|| assert!(black_box(&governor).check().is_ok()))
    });

    group.finish();
}

/// The coarse clock of `ratelimit/direct_coarse` for palisade, read the way governor's
/// `QuantaUpkeepClock` reads its own: quanta's `recent()` (an atomic load of the time an upkeep
/// thread last stored), as nanoseconds since the clock's creation. Any `Clock` plugs in the same
/// way; this one is the bench's, not the crate's (see the module docs).
#[derive(Clone, Debug)]
struct RecentClock {
    clock: quanta::Clock,
    origin: quanta::Instant,
}

impl RecentClock {
    fn new() -> RecentClock {
        let clock = quanta::Clock::new();
        let origin = clock.recent();
        RecentClock { clock, origin }
    }
}

impl Clock for RecentClock {
    #[inline]
    fn now(&self) -> Instant {
        let since = self.clock.recent().saturating_duration_since(self.origin);
        Instant::from_nanos(since.as_nanos() as u64)
    }
}

/// How often the upkeep thread behind both coarse clocks stores the time.
const UPKEEP: Duration = Duration::from_millis(1);

/// The direct check with the clock read taken out: both limiters on a coarse clock, so what is
/// left is each library's own work (the compare-and-swap and the arithmetic around it).
fn direct_coarse(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit/direct_coarse");

    // Each library's quanta (palisade's 0.13, governor's 0.12) has its own upkeep thread: each
    // runs only while its own limiter is measured.
    let upkeep = quanta::Upkeep::new(UPKEEP).start().unwrap();
    let limiter = RateLimiter::builder(quota())
        .clock(RecentClock::new())
        .build()
        .unwrap();
    group.bench_function("palisade", |b| {
        b.iter(|| assert!(black_box(&limiter).check().is_allowed()))
    });
    drop((limiter, upkeep));

    let clock = governor::clock::QuantaUpkeepClock::from_interval(UPKEEP).unwrap();
    let governor = governor::RateLimiter::direct_with_clock(governor_quota(), clock);
    group.bench_function("governor", |b| {
        b.iter(|| assert!(black_box(&governor).check().is_ok()))
    });

    group.finish();
}

/// A palisade keyed limiter holding keys `0..keys`.
fn palisade_keyed(keys: u64) -> KeyedRateLimiter<u64> {
    let limiter = KeyedRateLimiter::builder(quota())
        .max_keys(keys as usize)
        .build()
        .unwrap();
    for key in 0..keys {
        assert!(limiter.check(&key).is_allowed());
    }
    assert_eq!(limiter.len(), keys as usize);
    limiter
}

/// governor's default keyed limiter holding keys `0..keys`.
fn governor_keyed(keys: u64) -> GovernorKeyed {
    let limiter = governor::RateLimiter::keyed(governor_quota());
    for key in 0..keys {
        limiter.check_key(&key).unwrap();
    }
    assert_eq!(limiter.len(), keys as usize);
    limiter
}

/// The next key of the cycle through `0..keys`.
#[inline]
fn next_key(key: &mut u64, keys: u64) -> u64 {
    *key += 1;
    if *key == keys {
        *key = 0;
    }
    *key
}

/// One keyed workload: each limiter is built, measured and dropped before the next is built,
/// so only one table of keys is in memory at a time.
fn keyed(group: &mut BenchmarkGroup<'_, WallTime>, keys: u64) {
    let limiter = palisade_keyed(keys);
    let mut key = 0;
    group.bench_function("palisade", |b| {
        b.iter(|| {
            let key = next_key(&mut key, keys);
            assert!(black_box(&limiter).check(&key).is_allowed());
        })
    });
    drop(limiter);

    let limiter = governor_keyed(keys);
    let mut key = 0;
    group.bench_function("governor", |b| {
        b.iter(|| {
            let key = next_key(&mut key, keys);
            assert!(black_box(&limiter).check_key(&key).is_ok());
        })
    });
}

fn keyed_1k(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit/keyed_1k");
    keyed(&mut group, 1_000);
    group.finish();
}

fn keyed_1m(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit/keyed_1m");
    keyed(&mut group, 1_000_000);
    group.finish();
}

/// 900,000 keys fill each shard's table to 0.86 of its slots (a million fill half of the next
/// size): near the 7/8 at which palisade's table grows, where its probe runs are longest.
fn keyed_900k(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit/keyed_900k");
    keyed(&mut group, 900_000);
    group.finish();
}

fn contended_direct(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit/contended");

    let limiter = Arc::new(RateLimiter::new(quota()).unwrap());
    group.bench_function("palisade", |b| {
        b.iter_custom(|iters| {
            contended(iters, &limiter, |limiter| {
                assert!(black_box(limiter).check().is_allowed());
            })
        })
    });

    let governor = Arc::new(governor::RateLimiter::direct(governor_quota()));
    group.bench_function("governor", |b| {
        b.iter_custom(|iters| {
            contended(iters, &governor, |governor| {
                assert!(black_box(governor).check().is_ok());
            })
        })
    });

    group.finish();
}

/// The one key both threads of `ratelimit/contended_keyed` check.
const HOT_KEY: u64 = 7;

fn contended_keyed(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit/contended_keyed");

    let limiter = Arc::new(palisade_keyed(1_000));
    group.bench_function("palisade", |b| {
        b.iter_custom(|iters| {
            contended(iters, &limiter, |limiter| {
                assert!(black_box(limiter).check(&HOT_KEY).is_allowed());
            })
        })
    });

    let governor = Arc::new(governor_keyed(1_000));
    group.bench_function("governor", |b| {
        b.iter_custom(|iters| {
            contended(iters, &governor, |governor| {
                assert!(black_box(governor).check_key(&HOT_KEY).is_ok());
            })
        })
    });

    group.finish();
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

/// The ready no-op inner service of the tower benches.
async fn respond(_req: ()) -> Result<(), Infallible> {
    Ok(())
}

fn tower(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut group = c.benchmark_group("ratelimit/tower");

    // Reject mode (the default): `call` checks the limiter.
    let limiter = Arc::new(RateLimiter::new(quota()).unwrap());
    let mut service = RateLimitLayer::new(limiter).layer(tower::service_fn(respond));
    group.bench_function("palisade", |b| {
        b.iter(|| ready_call(&mut service, ()).unwrap())
    });

    // Backpressure mode: `poll_ready` takes the cell, as tower's `RateLimit` does.
    let limiter = Arc::new(RateLimiter::new(quota()).unwrap());
    let mut service = RateLimitLayer::new(limiter)
        .backpressure()
        .layer(tower::service_fn(respond));
    group.bench_function("palisade/backpressure", |b| {
        b.iter(|| ready_call(&mut service, ()).unwrap())
    });

    let mut service = tower::limit::RateLimitLayer::new(u64::from(RATE), Duration::from_secs(1))
        .layer(tower::service_fn(respond));
    group.bench_function("tower/rate-limit", |b| {
        b.iter(|| ready_call(&mut service, ()).unwrap())
    });

    // Its default fixed window, in its default mode: `call` takes a permit (waiting up to its
    // 100 ms timeout for one, which never happens here).
    let mut service = tower_resilience_ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(RATE as usize)
        .refresh_period(Duration::from_secs(1))
        .build()
        .unwrap()
        .layer(tower::service_fn(respond));
    group.bench_function("tower-resilience-ratelimiter", |b| {
        b.iter(|| ready_call(&mut service, ()).unwrap())
    });

    let mut service = tower_resilience_ratelimiter::RateLimiterLayer::builder()
        .limit_for_period(RATE as usize)
        .refresh_period(Duration::from_secs(1))
        .backpressure()
        .build()
        .unwrap()
        .layer(tower::service_fn(respond));
    group.bench_function("tower-resilience-ratelimiter/backpressure", |b| {
        b.iter(|| ready_call(&mut service, ()).unwrap())
    });

    group.finish();
}

criterion_group!(
    benches,
    direct,
    direct_coarse,
    keyed_1k,
    keyed_1m,
    keyed_900k,
    contended_direct,
    contended_keyed,
    tower
);
criterion_main!(benches);
