//! parking_lot's deadlock detection, reported through `palisade_lock::deadlock`.

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use palisade_lock::detect::{self, Mode};
use palisade_lock::{Mutex, deadlock};

/// Two threads that really deadlock: each holds one lock and waits for the other. They stay
/// blocked until the test process exits.
fn real_deadlock(name_a: &'static str, name_b: &'static str) -> [thread::ThreadId; 2] {
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
    let (tx, rx) = mpsc::channel();
    let watchdog = deadlock::spawn_watchdog(Duration::from_millis(10), move |d| {
        let _ = tx.send(d.clone());
    })
    .unwrap();
    let ids = real_deadlock("real-a", "real-b");
    // Waits for the event (the deadlock forming), not for an amount of time.
    let found = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the watchdog reports the deadlock");
    drop(watchdog);
    let mut threads: Vec<_> = found.threads.iter().map(|t| t.thread_id).collect();
    threads.sort_by_key(|id| format!("{id:?}"));
    let mut want = ids.to_vec();
    want.sort_by_key(|id| format!("{id:?}"));
    assert_eq!(threads, want);
    assert!(
        found
            .to_string()
            .starts_with("deadlock: 2 threads wait on each other")
    );
    // parking_lot reports each deadlock once.
    assert!(deadlock::check().is_empty());
}

#[test]
fn a_zero_interval_is_refused_with_the_field_named() {
    let err = deadlock::spawn_watchdog(Duration::ZERO, |_| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        "interval must be greater than zero, got 0ns"
    );
}
