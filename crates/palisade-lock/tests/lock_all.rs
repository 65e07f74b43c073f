//! `lock_all`: any set of locks, any argument order, no deadlock.

use std::sync::{Arc, Barrier, Mutex as StdMutex, Once};
use std::thread;
use std::time::Duration;

use palisade_lock::detect::{self, Mode, Report};
use palisade_lock::{Mutex, Read, RwLock, lock_all, lock_all_for};

fn reports() -> &'static StdMutex<Vec<Report>> {
    static REPORTS: StdMutex<Vec<Report>> = StdMutex::new(Vec::new());
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        detect::set_mode(Mode::callback(|r| REPORTS.lock().unwrap().push(r.clone())))
    });
    &REPORTS
}

fn reports_about(class: &str) -> usize {
    let needle = format!("`{class}`");
    reports()
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.to_string().contains(&needle))
        .count()
}

#[test]
fn opposite_argument_orders_from_two_threads_never_deadlock() {
    reports();
    let a = Arc::new(Mutex::named("transfer", 1_000_i64));
    let b = Arc::new(Mutex::named("transfer", 1_000_i64));
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let (a, b) = (a.clone(), b.clone());
            thread::spawn(move || {
                for _ in 0..2_000 {
                    if t == 0 {
                        let (mut x, mut y) = lock_all((&*a, &*b));
                        *x -= 1;
                        *y += 1;
                    } else {
                        let (mut y, mut x) = lock_all((&*b, &*a));
                        *y -= 1;
                        *x += 1;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // One at a time: holding both `transfer` locks outside lock_all is what the detector flags.
    let x = *a.lock();
    let y = *b.lock();
    assert_eq!((x, y), (1_000, 1_000));
    // Two locks of one class taken together through lock_all: nothing to report.
    assert_eq!(reports_about("transfer"), 0);
}

#[test]
fn lock_all_never_blocks_holding_part_of_the_set() {
    reports();
    // Another thread holds `b` and waits for `a`: lock_all((a, b)) must not hold `a` while
    // waiting for `b`, or both threads would wait forever.
    let a = Arc::new(Mutex::named("partial-a", 0));
    let b = Arc::new(Mutex::named("partial-b", 0));
    let start = Arc::new(Barrier::new(2));
    let other = {
        let (a, b, start) = (a.clone(), b.clone(), start.clone());
        thread::spawn(move || {
            for _ in 0..500 {
                let mut gb = b.lock();
                start.wait();
                let mut ga = a.lock(); // b then a
                *ga += 1;
                *gb += 1;
                drop((ga, gb));
                start.wait();
            }
        })
    };
    for _ in 0..500 {
        start.wait(); // `b` is held by the other thread now
        let (mut ga, mut gb) = lock_all((&*a, &*b));
        *ga += 1;
        *gb += 1;
        drop((ga, gb));
        start.wait();
    }
    other.join().unwrap();
    assert_eq!((*a.lock(), *b.lock()), (1_000, 1_000));
}

#[test]
fn guards_come_back_in_argument_order_for_tuples_arrays_and_vecs() {
    let x = Mutex::new(1);
    let y = RwLock::new(2);
    let z = RwLock::new(3);
    let (gx, mut gy, gz) = lock_all((&x, &y, Read(&z)));
    *gy += *gx + *gz;
    drop((gx, gy, gz));
    assert_eq!(*y.read(), 6);

    let accounts: Vec<Mutex<u32>> = (0..5).map(Mutex::new).collect();
    let picked = [&accounts[3], &accounts[0], &accounts[4]];
    let guards = lock_all(picked);
    assert_eq!(guards.iter().map(|g| **g).collect::<Vec<_>>(), [3, 0, 4]);
    drop(guards);
    let all: Vec<&Mutex<u32>> = accounts.iter().rev().collect();
    let mut guards = lock_all(all);
    for g in &mut guards {
        **g += 10;
    }
    assert_eq!(
        guards.iter().map(|g| **g).collect::<Vec<_>>(),
        [14, 13, 12, 11, 10]
    );
    drop(guards);
    assert!(lock_all(Vec::<&Mutex<u32>>::new()).is_empty());
}

#[test]
#[should_panic(expected = "lock_all: the same lock is given twice (positions 0 and 2)")]
fn the_same_lock_twice_is_refused() {
    let a = Mutex::new(());
    let b = Mutex::new(());
    let _ = lock_all((&a, &b, &a));
}

#[test]
fn lock_all_for_gives_up_holding_nothing_and_names_the_busy_lock() {
    reports();
    let a = Arc::new(Mutex::named("deadline-a", ()));
    let b = Arc::new(Mutex::named("deadline-b", ()));
    let held = Arc::new(Barrier::new(2));
    let release = Arc::new(Barrier::new(2));
    let holder = {
        let (b, held, release) = (b.clone(), held.clone(), release.clone());
        thread::spawn(move || {
            let _g = b.lock();
            held.wait();
            release.wait();
        })
    };
    held.wait();
    let err = lock_all_for((&*a, &*b), Duration::from_millis(5)).unwrap_err();
    assert_eq!(err.class().to_string(), "`deadline-b`");
    assert!(
        a.try_lock().is_some(),
        "the free lock of the set was released"
    );
    release.wait();
    holder.join().unwrap();
    let (_a, _b) = lock_all_for((&*a, &*b), Duration::from_secs(5)).expect("both free now");
}

#[test]
fn the_set_is_ordered_after_the_locks_already_held() {
    reports();
    if !detect::is_enabled() {
        return;
    }
    let outer = Mutex::named("set-outer", ());
    let a = Mutex::named("set-a", ());
    let b = Mutex::named("set-b", ());
    {
        let _o = outer.lock();
        let _set = lock_all((&a, &b));
    }
    assert_eq!(reports_about("set-outer"), 0);
    let _b = b.lock();
    let _o = outer.lock(); // b then outer, but outer -> b was recorded by lock_all
    assert_eq!(reports_about("set-outer"), 1);
}

#[test]
fn a_lock_held_through_lock_all_names_the_lock_all_site_in_timeouts() {
    reports();
    let a = Mutex::named("holder-a", ());
    let b = Mutex::named("holder-b", ());
    let (_ga, _gb) = lock_all((&a, &b));
    let line = line!() - 1;
    thread::scope(|s| {
        s.spawn(|| {
            let err = b.try_lock_for(Duration::from_millis(1)).unwrap_err();
            if detect::is_enabled() {
                let at = err.held_at().expect("the holder is known");
                assert_eq!((at.file(), at.line()), (file!(), line));
            }
        });
    });
}

#[test]
fn an_unrepresentable_deadline_means_no_deadline() {
    let a = Mutex::new(1);
    let b = Mutex::new(2);
    let (ga, gb) = lock_all_for((&a, &b), Duration::MAX).expect("both free");
    assert_eq!(*ga + *gb, 3);
}
