//! Behaviour of the three clocks over the public API.

use std::time::Duration;

use palisade_core::{Clock, FastClock, Instant, ManualClock};

// ---------------------------------------------------------------- FastClock

#[test]
fn fast_clock_never_goes_backwards_on_a_thread_and_threads_agree() {
    let clock = FastClock::new();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let mut last = clock.now();
                for _ in 0..200_000 {
                    let now = clock.now();
                    assert!(now >= last, "FastClock went back from {last:?} to {now:?}");
                    last = now;
                }
                last
            })
        })
        .collect();
    for t in threads {
        // A read here, after the other thread's last read (join orders them), is not earlier.
        let their_last = t.join().unwrap();
        let ours = clock.now();
        assert!(
            ours >= their_last,
            "{ours:?} read after {their_last:?} on another thread"
        );
    }
}

/// FastClock measures the same elapsed time as the OS monotonic clock.
///
/// Each FastClock read is bracketed by two `std::time::Instant` reads, so a preemption between
/// reads only widens the window the FastClock reading must fall into; it cannot fail the test.
/// No waiting: the loop only measures how long its own work took.
#[test]
fn fast_clock_runs_at_the_os_clock_rate() {
    let clock = FastClock::new();
    let before_start = std::time::Instant::now();
    let start = clock.now();
    let after_start = std::time::Instant::now();

    // Work until at least 20 ms have gone by on the OS clock.
    let mut spins = 0_u64;
    while before_start.elapsed() < Duration::from_millis(20) {
        spins = std::hint::black_box(spins + 1);
    }

    let before_end = std::time::Instant::now();
    let end = clock.now();
    let after_end = std::time::Instant::now();

    let measured = end - start;
    let shortest = before_end - after_start;
    let longest = after_end - before_start;
    // quanta calibrates the counter to within ~10 ns against the OS clock; 0.5 % + 5 us is a wide
    // margin for calibration error, and still catches a clock in the wrong unit or rate.
    let slack = longest / 200 + Duration::from_micros(5);
    assert!(
        measured + slack >= shortest && measured <= longest + slack,
        "FastClock measured {measured:?}; the OS clock says between {shortest:?} and {longest:?}"
    );
}

#[test]
fn fast_clocks_share_one_origin() {
    let a = FastClock::new();
    let first = a.now();
    let b = FastClock::default();
    let second = b.now();
    let third = a.now();
    assert!(first <= second && second <= third);
    // Since the origin is the first calibration in this process, no read is near u64::MAX.
    assert!(third < Instant::ZERO + Duration::from_secs(86_400));
}

// ---------------------------------------------------------------- TokioClock

#[cfg(feature = "tokio")]
mod tokio_clock {
    use std::time::Duration;

    use palisade_core::{Clock, Instant, TokioClock};

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_advance_exactly() {
        let clock = TokioClock::new();
        assert_eq!(clock.now(), Instant::ZERO);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now(), Instant::ZERO + Duration::from_millis(1500));
        tokio::time::advance(Duration::from_nanos(1)).await;
        assert_eq!(clock.now().as_nanos(), 1_500_000_001);
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_sees_the_auto_advance_of_a_paused_sleep() {
        let clock = TokioClock::new();
        let start = clock.now();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(clock.elapsed(start), Duration::from_secs(3600));
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_clones_share_an_origin_and_new_clocks_start_at_zero() {
        let clock = TokioClock::new();
        tokio::time::advance(Duration::from_secs(5)).await;
        let clone = clock;
        assert_eq!(clone.now(), Instant::ZERO + Duration::from_secs(5));
        let fresh = TokioClock::default();
        assert_eq!(fresh.now(), Instant::ZERO);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(clock.now() - fresh.now(), Duration::from_secs(5));
    }

    /// What `TokioClock`'s docs say about reads outside its runtime: `spawn_blocking` threads see
    /// the paused clock, while a read with no runtime context (a `std::thread`, or this thread
    /// after `block_on` returned) reads the OS clock, far behind the paused runtime's time.
    #[test]
    fn tokio_clock_outside_its_paused_runtime_reads_the_os_clock() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let hour = Duration::from_secs(3600);
        let (clock, blocking) = runtime.block_on(async {
            let clock = TokioClock::new();
            tokio::time::advance(hour).await;
            let blocking = tokio::task::spawn_blocking(move || clock.now())
                .await
                .unwrap();
            (clock, blocking)
        });
        assert_eq!(blocking, Instant::ZERO + hour);
        assert_eq!(
            runtime.block_on(async { clock.now() }),
            Instant::ZERO + hour
        );
        // No wall-clock wait: the OS clock has moved by the test's own run time, far below an hour.
        assert!(clock.now() < Instant::ZERO + hour);
        let elsewhere = std::thread::spawn(move || clock.now()).join().unwrap();
        assert!(elsewhere < Instant::ZERO + hour);
    }
}

// ---------------------------------------------------------------- ManualClock

#[test]
fn manual_clock_moves_only_when_told() {
    let clock = ManualClock::new();
    let primitive = clock.clone();
    assert_eq!(primitive.now(), Instant::ZERO);
    assert_eq!(primitive.now(), Instant::ZERO);
    assert_eq!(
        clock.advance(Duration::from_millis(10)),
        Instant::ZERO + Duration::from_millis(10)
    );
    assert_eq!(primitive.now(), Instant::ZERO + Duration::from_millis(10));
    assert_eq!(primitive.elapsed(Instant::ZERO), Duration::from_millis(10));
}

#[test]
fn manual_clock_advance_to_only_moves_forward() {
    let clock = ManualClock::starting_at(Instant::from_nanos(100));
    assert_eq!(
        clock.advance_to(Instant::from_nanos(50)),
        Instant::from_nanos(100)
    );
    assert_eq!(clock.now(), Instant::from_nanos(100));
    assert_eq!(
        clock.advance_to(Instant::from_nanos(250)),
        Instant::from_nanos(250)
    );
    assert_eq!(clock.now(), Instant::from_nanos(250));
}

#[test]
fn manual_clock_saturates_at_max_instead_of_wrapping() {
    let clock = ManualClock::starting_at(Instant::MAX - Duration::from_nanos(5));
    assert_eq!(clock.advance(Duration::from_secs(1)), Instant::MAX);
    assert_eq!(clock.advance(Duration::MAX), Instant::MAX);
    assert_eq!(clock.now(), Instant::MAX);
}

#[test]
fn debug_output_names_the_clock_and_its_time() {
    let clock = ManualClock::starting_at(Instant::ZERO + Duration::from_millis(1500));
    assert_eq!(format!("{clock:?}"), "ManualClock { now: Instant(1.5s) }");
    assert!(format!("{:?}", FastClock::new()).starts_with("FastClock { now: Instant("));
    #[cfg(feature = "tokio")]
    assert!(format!("{:?}", palisade_core::TokioClock::new()).starts_with("TokioClock"));
}

// ---------------------------------------------------------------- the trait

/// Primitives are generic over `C: Clock`; a user-defined clock must plug in.
#[test]
fn a_custom_clock_plugs_in_and_gets_elapsed_for_free() {
    #[derive(Clone, Debug)]
    struct Fixed(Instant);
    impl Clock for Fixed {
        fn now(&self) -> Instant {
            self.0
        }
    }

    fn age<C: Clock>(clock: &C, since: Instant) -> Duration {
        clock.elapsed(since)
    }

    let clock = Fixed(Instant::from_nanos(2_000));
    assert_eq!(
        age(&clock, Instant::from_nanos(500)),
        Duration::from_nanos(1_500)
    );
    assert_eq!(age(&clock, Instant::from_nanos(9_000)), Duration::ZERO);
}

/// Every public type crosses threads: primitives store clocks in `Arc`s shared by tasks.
#[test]
fn public_types_are_send_sync_and_static() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Instant>();
    assert_send_sync::<FastClock>();
    #[cfg(feature = "tokio")]
    assert_send_sync::<palisade_core::TokioClock>();
    assert_send_sync::<ManualClock>();
    assert_send_sync::<palisade_core::sync::Mutex<u64>>();
    assert_send_sync::<palisade_core::sync::RwLock<u64>>();
    // Every clock is `Clone`; the two without shared state are `Copy`.
    fn assert_clone<T: Clone>() {}
    fn assert_copy<T: Copy>() {}
    assert_clone::<ManualClock>();
    assert_copy::<FastClock>();
    #[cfg(feature = "tokio")]
    assert_copy::<palisade_core::TokioClock>();
    assert_copy::<Instant>();
}
