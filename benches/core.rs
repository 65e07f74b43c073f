//! `core/now`: one clock read, palisade's clocks beside `std::time::Instant` and quanta.
//!
//! The default clock (`palisade`, i.e. `FastClock`) must cost no more than `quanta::Clock::now`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use palisade::{Clock, FastClock, ManualClock, TokioClock};

fn now(c: &mut Criterion) {
    let mut group = c.benchmark_group("core/now");

    let fast = FastClock::new();
    group.bench_function("palisade", |b| b.iter(|| black_box(&fast).now()));

    let quanta = quanta::Clock::new();
    group.bench_function("quanta", |b| b.iter(|| black_box(&quanta).now()));
    // The floor: the bare counter read, before scaling to nanoseconds.
    group.bench_function("quanta/raw", |b| b.iter(|| black_box(&quanta).raw()));

    group.bench_function("std", |b| b.iter(std::time::Instant::now));

    // Outside a runtime tokio's clock is the OS clock (plus a check for a paused test clock,
    // since `test-util` is on in this workspace's dev-dependencies).
    let tokio = TokioClock::new();
    group.bench_function("palisade/tokio-clock", |b| {
        b.iter(|| black_box(&tokio).now())
    });

    let manual = ManualClock::new();
    group.bench_function("palisade/manual-clock", |b| {
        b.iter(|| black_box(&manual).now())
    });

    group.finish();
}

criterion_group!(benches, now);
criterion_main!(benches);
