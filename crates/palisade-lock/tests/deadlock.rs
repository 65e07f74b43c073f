//! parking_lot's deadlock detection, reported through `palisade_lock::deadlock`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex as StdMutex, MutexGuard as StdMutexGuard, PoisonError};
use std::thread::{self, ThreadId};
use std::time::Duration;

use palisade_lock::Mutex;
use palisade_lock::deadlock::{self, Deadlock, Watchdog};
use palisade_lock::detect::{self, Mode};

/// How long a test waits for the watchdog to report a deadlock that has formed: an upper bound
/// on an event, not an amount of time the test relies on.
const REPORTED_WITHIN: Duration = Duration::from_secs(30);

/// parking_lot's detector is one per process and reports each deadlock once, to whichever check
/// finds it first: the tests that make deadlocks run one at a time.
fn serial() -> StdMutexGuard<'static, ()> {
    static SERIAL: StdMutex<()> = StdMutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Thread ids in a canonical order, to compare sets of them.
fn sorted(ids: impl IntoIterator<Item = ThreadId>) -> Vec<ThreadId> {
    let mut ids: Vec<_> = ids.into_iter().collect();
    ids.sort_by_key(|id| format!("{id:?}"));
    ids
}

/// The thread ids of a deadlock, sorted.
fn ids_of(deadlock: &Deadlock) -> Vec<ThreadId> {
    sorted(deadlock.threads.iter().map(|t| t.thread_id))
}

/// Waits for the report of the deadlock of exactly these threads (others, of earlier tests
/// that failed, are skipped).
fn wait_for(rx: &mpsc::Receiver<Deadlock>, ids: &[ThreadId]) -> Deadlock {
    let want = sorted(ids.iter().copied());
    loop {
        let found = rx
            .recv_timeout(REPORTED_WITHIN)
            .expect("the watchdog reports the deadlock");
        if ids_of(&found) == want {
            return found;
        }
    }
}

/// Two threads that really deadlock: each holds one lock and waits for the other. They stay
/// blocked until the test process exits.
fn real_deadlock(name_a: &'static str, name_b: &'static str) -> [ThreadId; 2] {
    // The order detector would report this first (and panic by default); this test is about
    // the deadlock itself.
    detect::set_mode(Mode::callback(|_| {}));
    let a = Arc::new(Mutex::named(name_a, ()));
    let b = Arc::new(Mutex::named(name_b, ()));
    let both = Arc::new(Barrier::new(2));
    let spawn = |first: Arc<Mutex<()>>, second: Arc<Mutex<()>>, both: Arc<Barrier>| {
        thread::spawn(move || {
            let _one = first.lock();
            both.wait();
            let _two = second.lock();
        })
    };
    let t1 = spawn(a.clone(), b.clone(), both.clone());
    let t2 = spawn(b, a, both);
    [t1.thread().id(), t2.thread().id()]
}

#[test]
fn a_real_deadlock_is_found_with_both_threads_and_the_watchdog_reports_it() {
    let _serial = serial();
    let (tx, rx) = mpsc::channel();
    let watchdog = deadlock::spawn_watchdog(Duration::from_millis(10), move |d| {
        let _ = tx.send(d.clone());
    })
    .unwrap();
    let ids = real_deadlock("real-a", "real-b");
    // Waits for the event (the deadlock forming), not for an amount of time.
    let found = wait_for(&rx, &ids);
    drop(watchdog);
    assert!(
        found
            .to_string()
            .starts_with("deadlock: 2 threads wait on each other")
    );
    // parking_lot reports each deadlock once.
    assert!(deadlock::check().is_empty());
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Watchdog>();
    send_sync::<Deadlock>();
    send_sync::<deadlock::DeadlockedThread>();
}

#[test]
fn a_zero_interval_is_refused_with_the_field_named() {
    let err = deadlock::spawn_watchdog(Duration::ZERO, |_| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        "interval must be greater than zero, got 0ns"
    );
}

#[test]
fn a_panicking_callback_does_not_stop_the_watchdog() {
    let _serial = serial();
    let (tx, rx) = mpsc::channel();
    let panicked = AtomicBool::new(false);
    let watchdog = deadlock::spawn_watchdog(Duration::from_millis(10), move |d| {
        if !panicked.swap(true, Ordering::Relaxed) {
            panic!("the callback fails on the first deadlock");
        }
        let _ = tx.send(d.clone());
    })
    .unwrap();
    // Two deadlocks: whichever the callback panics on, the other still reaches it (in the
    // same check or a later one).
    let first = real_deadlock("panic-a", "panic-b");
    let second = real_deadlock("panic-c", "panic-d");
    let found = rx
        .recv_timeout(REPORTED_WITHIN)
        .expect("the watchdog outlives its callback's panic");
    let ids = ids_of(&found);
    assert!(ids == sorted(first) || ids == sorted(second), "{found}");
    drop(watchdog);
}

#[test]
fn the_watchdog_can_be_dropped_from_its_own_callback() {
    let _serial = serial();
    let (tx, rx) = mpsc::channel();
    let slot: Arc<StdMutex<Option<Watchdog>>> = Arc::new(StdMutex::new(None));
    let in_callback = Arc::clone(&slot);
    let watchdog = deadlock::spawn_watchdog(Duration::from_millis(10), move |d| {
        // Stop after the first report: the callback drops the watchdog it runs on.
        let watchdog = in_callback
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(watchdog);
        let _ = tx.send(d.clone());
    })
    .unwrap();
    *slot.lock().unwrap() = Some(watchdog);
    let ids = real_deadlock("stop-a", "stop-b");
    wait_for(&rx, &ids);
    assert!(slot.lock().unwrap().is_none());
}

#[test]
fn a_thread_blocked_on_a_lock_it_holds_is_reported_as_one_thread() {
    let _serial = serial();
    let (tx, rx) = mpsc::channel();
    let watchdog = deadlock::spawn_watchdog(Duration::from_millis(10), move |d| {
        let _ = tx.send(d.clone());
    })
    .unwrap();
    // Recursive locking: the order detector reports it first (to a callback that ignores it),
    // then the thread hangs on itself.
    detect::set_mode(Mode::callback(|_| {}));
    let lock = Arc::new(Mutex::named("self-deadlock", ()));
    let id = thread::spawn(move || {
        let _one = lock.lock();
        let _two = lock.lock();
    })
    .thread()
    .id();
    let found = wait_for(&rx, &[id]);
    drop(watchdog);
    let text = found.to_string();
    assert!(
        text.starts_with("deadlock: a thread waits for a lock it holds itself"),
        "{text}"
    );
}
