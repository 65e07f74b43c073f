//! palisade-lock's `Mutex` beside parking_lot's, std's and tracing-mutex's.
//!
//! Every lock guards a `u64` and is built once, outside the measurement; one iteration takes the
//! lock(s), increments through the guard(s) and unlocks, on one thread (no contention).
//!
//! - `lock/uncontended`: one lock, increment, unlock.
//! - `lock/nested`: lock `A`, then `B` while `A` is held, increment both, unlock `B` then `A`:
//!   the acquisition a lock-order detector has to check against the held set.
//!
//! The implementations:
//!
//! - `palisade` or `palisade/detect`: `palisade_lock::Mutex`, named after whether lock-order
//!   detection is compiled into this build (`palisade_lock::detect::is_enabled()`): `palisade`
//!   with `--features lock` (release builds compile detection out), `palisade/detect` with
//!   `--features lock-detect-release`, so the two runs land side by side in one group. The two
//!   locks of `lock/nested` have classes of their own (`named`), so holding both is a valid
//!   order, validated once and then served from the thread's chain cache.
//! - `parking_lot`: `parking_lot::Mutex`, the raw lock palisade wraps, the target with detection
//!   off.
//! - `std`: `std::sync::Mutex` (poisoning checked by `unwrap`).
//! - `tracing-mutex`: `tracing_mutex::stdsync::tracing::Mutex`, std's mutex with lock-order
//!   tracking in every build, the target with detection on. (`tracing_mutex::stdsync::Mutex` is
//!   that type only with debug assertions and plain `std::sync::Mutex` in release builds.)

use std::hint::black_box;
use std::ops::DerefMut;

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use palisade::lock::{Mutex, detect};
use parking_lot::Mutex as ParkingLotMutex;
use tracing_mutex::stdsync::tracing::Mutex as TracingMutex;

/// palisade's function name in every group: whether this build checks the lock order.
const PALISADE: &str = if detect::is_enabled() {
    "palisade/detect"
} else {
    "palisade"
};

fn uncontended(c: &mut Criterion) {
    let mut group = c.benchmark_group("lock/uncontended");

    let palisade = Mutex::new(0u64);
    group.bench_function(PALISADE, |b| b.iter(|| *black_box(&palisade).lock() += 1));

    let parking_lot = ParkingLotMutex::new(0u64);
    group.bench_function("parking_lot", |b| {
        b.iter(|| *black_box(&parking_lot).lock() += 1)
    });

    let std = std::sync::Mutex::new(0u64);
    group.bench_function("std", |b| b.iter(|| *black_box(&std).lock().unwrap() += 1));

    let tracing = TracingMutex::new(0u64);
    group.bench_function("tracing-mutex", |b| {
        b.iter(|| *black_box(&tracing).lock().unwrap() += 1)
    });

    group.finish();
}

/// Benches `lock/nested` for one implementation: `lock` takes a lock and returns its guard (a
/// closure, so every implementation's `lock` is inlined as in the other group).
fn nested<'a, M, G>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    a: &'a M,
    b: &'a M,
    lock: impl Fn(&'a M) -> G,
) where
    G: DerefMut<Target = u64>,
{
    group.bench_function(name, |bencher| {
        bencher.iter(|| {
            let mut outer = lock(black_box(a));
            let mut inner = lock(black_box(b));
            *outer += 1;
            *inner += 1;
            // Unlocked in reverse order, `inner` first.
        })
    });
}

fn nested_pair(c: &mut Criterion) {
    let mut group = c.benchmark_group("lock/nested");

    let (a, b) = (
        Mutex::named("bench/nested/a", 0u64),
        Mutex::named("bench/nested/b", 0u64),
    );
    nested(&mut group, PALISADE, &a, &b, |m| m.lock());
    assert_eq!(a.into_inner(), b.into_inner());
    if detect::is_enabled() {
        assert_eq!(
            detect::stats().reports,
            0,
            "a valid order is never reported"
        );
    }

    let (a, b) = (ParkingLotMutex::new(0u64), ParkingLotMutex::new(0u64));
    nested(&mut group, "parking_lot", &a, &b, |m| m.lock());

    let (a, b) = (std::sync::Mutex::new(0u64), std::sync::Mutex::new(0u64));
    nested(&mut group, "std", &a, &b, |m| m.lock().unwrap());

    let (a, b) = (TracingMutex::new(0u64), TracingMutex::new(0u64));
    nested(&mut group, "tracing-mutex", &a, &b, |m| m.lock().unwrap());

    group.finish();
}

criterion_group!(benches, uncontended, nested_pair);
criterion_main!(benches);
