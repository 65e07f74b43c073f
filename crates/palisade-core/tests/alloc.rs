//! No clock allocates on `now()` (counted by a thread-local counting allocator, which this test
//! binary alone installs).

use palisade_core::{Clock, FastClock, ManualClock};

fn allocations(f: impl FnOnce()) -> u64 {
    // A thread's first parking_lot lock allocates its list of held locks when parking_lot's
    // `deadlock_detection` is on (palisade-lock's `deadlock-detection` feature turns it on in
    // `--all-features` builds): take one before counting, so only `f`'s own allocations count.
    drop(palisade_core::sync::Mutex::new(()).lock());
    allocation_counter::measure(f).count_total
}

/// Reads `clock` a thousand times, its clones too, and the instants' arithmetic.
fn reads(clock: &impl Clock) {
    let start = clock.now();
    for _ in 0..1_000 {
        let copy = clock.clone();
        std::hint::black_box(copy.now().saturating_duration_since(start));
    }
}

#[test]
fn the_counter_sees_allocations() {
    assert_eq!(
        allocations(|| drop(std::hint::black_box(Box::new(7u64)))),
        1
    );
}

#[test]
fn fast_and_manual_clocks_read_without_allocating() {
    let fast = FastClock::new();
    fast.now(); // the process-wide calibration, once, outside the count
    assert_eq!(allocations(|| reads(&fast)), 0, "FastClock allocated");
    let manual = ManualClock::new();
    assert_eq!(allocations(|| reads(&manual)), 0, "ManualClock allocated");
}

/// Inside a runtime (paused or not) and outside one.
#[cfg(feature = "tokio")]
#[test]
fn the_tokio_clock_reads_without_allocating() {
    let clock = palisade_core::TokioClock::new();
    clock.now(); // the OS clock's first read, outside the count
    assert_eq!(allocations(|| reads(&clock)), 0, "outside a runtime");
    for paused in [false, true] {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_time().start_paused(paused);
        let rt = builder.build().unwrap();
        let _guard = rt.enter();
        clock.now();
        assert_eq!(
            allocations(|| reads(&clock)),
            0,
            "in a runtime (paused: {paused})"
        );
    }
}
