//! Concurrency models of palisade-core.
//!
//! `cargo test -p palisade-core --test loom` runs each model once on real threads;
//! `RUSTFLAGS="--cfg palisade_loom" cargo test --release -p palisade-core --test loom` runs them
//! under loom, across every interleaving within the preemption bound.

use std::time::Duration;

use palisade_core::sync::atomic::{AtomicUsize, Ordering};
use palisade_core::sync::{Arc, Mutex, RwLock, assert_explored, model, thread};
use palisade_core::{Clock, Instant, ManualClock};

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn manual_clock_concurrent_advances_add_up_and_never_go_backwards() {
    assert_explored(model(|| {
        let clock = ManualClock::new();
        let advancer = thread::spawn({
            let clock = clock.clone();
            move || {
                let first = clock.advance(SECOND);
                let second = clock.advance(2 * SECOND);
                // What `advance` returns is the time right after this thread's own step.
                assert!(first >= Instant::ZERO + SECOND);
                assert!(second >= first + 2 * SECOND);
            }
        });
        let reader = thread::spawn({
            let clock = clock.clone();
            move || {
                let mut last = Instant::ZERO;
                for _ in 0..3 {
                    let now = clock.now();
                    assert!(now >= last, "the clock went back from {last:?} to {now:?}");
                    last = now;
                }
            }
        });
        let mine = clock.advance(4 * SECOND);
        assert!(mine >= Instant::ZERO + 4 * SECOND);
        advancer.join().unwrap();
        reader.join().unwrap();
        // No advance is lost, whatever the interleaving of the compare-and-swap loops.
        assert_eq!(clock.now(), Instant::ZERO + 7 * SECOND);
    }));
}

#[test]
fn manual_clock_advance_to_races_advance_and_only_moves_forward() {
    assert_explored(model(|| {
        let clock = ManualClock::starting_at(Instant::ZERO + SECOND);
        let jumper = thread::spawn({
            let clock = clock.clone();
            move || clock.advance_to(Instant::ZERO + 5 * SECOND)
        });
        let stepped = clock.advance(2 * SECOND);
        let jumped = jumper.join().unwrap();
        assert!(jumped >= Instant::ZERO + 5 * SECOND);
        let end = clock.now();
        // Either the step came first (1 + 2 = 3, then up to 5) or the jump did (5, then + 2 = 7).
        if stepped == Instant::ZERO + 3 * SECOND {
            assert_eq!(end, Instant::ZERO + 5 * SECOND);
        } else {
            assert_eq!(stepped, Instant::ZERO + 7 * SECOND);
            assert_eq!(end, Instant::ZERO + 7 * SECOND);
        }
        // Moving "to" the past never moves the clock back.
        assert_eq!(clock.advance_to(Instant::ZERO), end);
        assert_eq!(clock.now(), end);
    }));
}

/// A read-modify-write with a yield in the middle: only mutual exclusion keeps it from losing
/// an update, so a lock that failed to exclude would fail this model.
fn increment_slowly(value: &mut u32) {
    let read = *value;
    thread::yield_now();
    *value = read + 1;
}

#[test]
fn shim_mutex_and_rwlock_exclude_each_other() {
    assert_explored(model(|| {
        let state = Arc::new((Mutex::new(0_u32), RwLock::new(0_u32)));
        let other = thread::spawn({
            let state = state.clone();
            move || {
                increment_slowly(&mut state.0.lock());
                increment_slowly(&mut state.1.write());
            }
        });
        increment_slowly(&mut state.0.lock());
        {
            let read = state.1.read();
            assert!(*read <= 1);
        }
        increment_slowly(&mut state.1.write());
        other.join().unwrap();
        assert_eq!(*state.0.lock(), 2);
        assert_eq!(*state.1.read(), 2);
    }));
}

/// `advance` publishes what the advancing thread wrote before it: a reader that sees the new
/// time sees the write (Release on advance, Acquire on `now`).
#[test]
fn manual_clock_advance_publishes_earlier_writes() {
    assert_explored(model(|| {
        let clock = ManualClock::new();
        let data = Arc::new(AtomicUsize::new(0));
        // The reader is the spawned thread: loom explores it running before, between and after
        // the writes. (With the roles swapped, loom explores a single schedule.)
        let reader = thread::spawn({
            let (clock, data) = (clock.clone(), data.clone());
            move || {
                if clock.now() == Instant::ZERO + SECOND {
                    let seen = data.load(Ordering::Relaxed);
                    assert_eq!(seen, 42, "saw the new time but not the write before it");
                }
            }
        });
        data.store(42, Ordering::Relaxed);
        clock.advance(SECOND);
        reader.join().unwrap();
    }));
}

/// Every item of the documented shared subset, used once, so the loom build checks that both
/// sides of the shim offer it.
#[test]
fn the_shared_subset_exists_on_both_sides() {
    use palisade_core::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, fence};
    use palisade_core::sync::hint;
    use palisade_core::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

    #[derive(Default)]
    struct WithDefaults {
        mutex: Mutex<u32>,
        rwlock: RwLock<u32>,
    }

    assert_explored(model(|| {
        let mut arc = Arc::new(5_u32);
        assert_eq!(Arc::get_mut(&mut arc).map(|v| *v), Some(5));
        let clone = Arc::clone(&arc);
        assert!(Arc::ptr_eq(&arc, &clone));
        assert_eq!(Arc::strong_count(&arc), 2);
        drop(clone);
        assert_eq!(Arc::try_unwrap(arc).ok(), Some(5));

        let mut defaults = WithDefaults::default();
        *defaults.mutex.get_mut() += 1;
        *defaults.rwlock.get_mut() += 1;
        assert_eq!(defaults.mutex.try_lock().map(|g| *g), Some(1));
        assert_eq!(defaults.rwlock.try_read().map(|g| *g), Some(1));
        assert_eq!(defaults.rwlock.try_write().map(|g| *g), Some(1));
        assert_eq!(Mutex::from(7_u8).into_inner(), 7);
        assert_eq!(RwLock::from(8_u8).into_inner(), 8);
        // The guard types are named the same on both sides (palisade-lock stores them).
        let guard: MutexGuard<'_, u32> = defaults.mutex.lock();
        assert_eq!(*guard, 1);
        drop(guard);
        let read: RwLockReadGuard<'_, u32> = defaults.rwlock.read();
        assert_eq!(*read, 1);
        drop(read);
        let mut write: RwLockWriteGuard<'_, u32> = defaults.rwlock.write();
        *write += 1;
        drop(write);

        let word = AtomicU64::new(1);
        assert_eq!(
            word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v * 10)),
            Ok(1)
        );
        assert_eq!(
            word.compare_exchange(10, 11, Ordering::AcqRel, Ordering::Acquire),
            Ok(10)
        );
        assert_eq!(word.fetch_max(20, Ordering::AcqRel), 11);
        assert_eq!(word.swap(3, Ordering::AcqRel), 20);
        // The rest of what the crates call: a weak CAS may fail spuriously, so it loops.
        while word
            .compare_exchange_weak(3, 9, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {}
        assert_eq!(word.fetch_sub(1, Ordering::AcqRel), 9);
        assert_eq!(word.fetch_min(5, Ordering::AcqRel), 8);
        assert_eq!(word.fetch_and(4, Ordering::AcqRel), 5);
        assert_eq!(word.into_inner(), 4);
        assert_eq!(AtomicI64::new(-1).fetch_add(1, Ordering::Relaxed), -1);
        assert!(!AtomicBool::new(false).fetch_or(false, Ordering::Relaxed));
        fence(Ordering::SeqCst);
        hint::spin_loop();
        thread::yield_now();
        // A second thread, so that loom has more than one execution to explore.
        let flag = Arc::new(AtomicBool::new(false));
        let other: thread::JoinHandle<()> = thread::spawn({
            let flag = flag.clone();
            move || flag.store(true, Ordering::Release)
        });
        let _ = flag.load(Ordering::Acquire);
        other.join().unwrap();
        assert!(flag.load(Ordering::Acquire));
    }));
}

#[test]
fn shim_atomics_lose_no_update() {
    assert_explored(model(|| {
        let hits = Arc::new(AtomicUsize::new(0));
        let other = thread::spawn({
            let hits = hits.clone();
            move || {
                hits.fetch_add(1, Ordering::Relaxed);
            }
        });
        hits.fetch_add(1, Ordering::Relaxed);
        other.join().unwrap();
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }));
}

/// `tokio::net` must survive the loom cfg: that is why the cfg is `palisade_loom`, not `loom`.
#[test]
fn tokio_net_is_there_under_the_loom_cfg() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    });
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);
}
