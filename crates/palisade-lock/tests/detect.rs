//! The runtime detector through the public API (debug builds, where it is compiled in).
//!
//! Every test uses lock classes of its own (the order graph is global to the process), and one
//! callback mode collects the reports of the whole binary; each test looks at its own classes.
#![cfg(debug_assertions)]

use std::sync::{Arc, Barrier, Mutex as StdMutex, Once};
use std::thread;
use std::time::Duration;

use palisade_lock::detect::{self, Mode, Report, ReportKind};
use palisade_lock::{Mutex, RwLock};

fn reports() -> &'static StdMutex<Vec<Report>> {
    static REPORTS: StdMutex<Vec<Report>> = StdMutex::new(Vec::new());
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        detect::set_mode(Mode::callback(|r| REPORTS.lock().unwrap().push(r.clone())))
    });
    &REPORTS
}

/// Reports whose text names `class` (a backquoted class name).
fn reports_about(class: &str) -> Vec<Report> {
    let needle = format!("`{class}`");
    reports()
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.to_string().contains(&needle))
        .cloned()
        .collect()
}

#[test]
fn detection_is_compiled_into_debug_builds() {
    assert!(detect::is_enabled());
}

#[test]
fn abba_across_two_threads_is_reported_at_the_second_order_without_a_deadlock() {
    reports();
    let a = Arc::new(Mutex::named("abba-a", 0));
    let b = Arc::new(Mutex::named("abba-b", 0));
    let (a1, b1) = (a.clone(), b.clone());
    thread::spawn(move || {
        let _a = a1.lock();
        let _b = b1.lock();
    })
    .join()
    .unwrap();
    assert!(
        reports_about("abba-a").is_empty(),
        "one order alone is fine"
    );
    // The first thread is gone: nothing can deadlock now, yet B -> A is the bug.
    let (a2, b2) = (a.clone(), b.clone());
    thread::spawn(move || {
        let _b = b2.lock();
        let _a = a2.lock();
    })
    .join()
    .unwrap();
    let found = reports_about("abba-a");
    assert_eq!(found.len(), 1, "{found:#?}");
    let r = &found[0];
    assert_eq!(r.kind, ReportKind::OrderInversion);
    assert_eq!(r.acquiring.to_string(), "`abba-a`");
    assert_eq!(r.holding.to_string(), "`abba-b`");
    assert_eq!(r.acquiring_at.file(), file!());
    assert_eq!(r.holding_at.map(|s| s.file()), Some(file!()));
    assert_eq!(r.earlier.len(), 1);
    let hop = &r.earlier[0];
    assert_eq!(
        (hop.from.to_string(), hop.to.to_string()),
        ("`abba-a`".into(), "`abba-b`".into())
    );
    assert!(hop.from_site.is_some() && hop.to_site.is_some());
    assert_ne!(hop.to_site.map(|s| s.line()), Some(r.acquiring_at.line()));

    // Reported once per pair: running the bad path again is quiet.
    let _b = b.lock();
    let _a = a.lock();
    assert_eq!(reports_about("abba-a").len(), 1);
}

#[test]
fn a_cycle_through_three_classes_names_every_earlier_order() {
    reports();
    let a = Mutex::named("tri-a", ());
    let b = Mutex::named("tri-b", ());
    let c = Mutex::named("tri-c", ());
    {
        let _a = a.lock();
        let _b = b.lock();
    }
    {
        let _b = b.lock();
        let _c = c.lock();
    }
    {
        let _c = c.lock();
        let _a = a.lock();
    }
    let found = reports_about("tri-a");
    assert_eq!(found.len(), 1, "{found:#?}");
    let hops: Vec<_> = found[0]
        .earlier
        .iter()
        .map(|h| format!("{}->{}", h.from, h.to))
        .collect();
    assert_eq!(hops, ["`tri-a`->`tri-b`", "`tri-b`->`tri-c`"]);
}

#[test]
fn classes_by_declaration_site_cover_every_instance() {
    reports();
    fn make(v: u32) -> Mutex<u32> {
        Mutex::new(v) // one class for every mutex built here
    }
    let first = make(1);
    let second = make(2);
    let _f = first.lock();
    let _s = second.lock();
    let found: Vec<_> = reports()
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.kind == ReportKind::SameClass && r.acquiring == first.class())
        .cloned()
        .collect();
    assert_eq!(found.len(), 1, "two instances of one class held at once");
    assert!(
        found[0].to_string().contains("lock_all"),
        "the report says what to do"
    );
}

#[test]
fn recursive_locking_is_reported_before_it_hangs() {
    reports();
    let m = Mutex::named("recursive-mutex", 0);
    let _g = m.lock();
    // The report comes before the wait; the timed wait then gives up instead of hanging.
    let again = m.try_lock_for(Duration::from_millis(1));
    assert!(again.is_err());
    let found = reports_about("recursive-mutex");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kind, ReportKind::Recursive);
    // try_lock cannot hang: not reported.
    assert!(m.try_lock().is_none());
    assert_eq!(reports_about("recursive-mutex").len(), 1);
}

#[test]
fn a_second_read_of_a_fair_rwlock_is_reported() {
    reports();
    let l = RwLock::named("recursive-read", 1);
    let _r1 = l.read();
    let _r2 = l.read();
    let found = reports_about("recursive-read");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kind, ReportKind::RecursiveRead);
}

#[test]
fn reads_are_ordered_like_writes() {
    reports();
    let a = RwLock::named("rw-a", ());
    let b = RwLock::named("rw-b", ());
    {
        let _a = a.read();
        let _b = b.read();
    }
    let _b = b.write();
    let _a = a.read();
    assert_eq!(reports_about("rw-a").len(), 1);
}

#[test]
fn try_lock_records_no_order_into_the_lock_it_takes() {
    reports();
    let a = Mutex::named("try-a", ());
    let b = Mutex::named("try-b", ());
    {
        let _a = a.lock();
        let _b = b.try_lock().expect("free");
    }
    {
        let _b = b.lock();
        let _a = a.lock();
    }
    assert!(
        reports_about("try-a").is_empty(),
        "a try_lock cannot wait, so it cannot deadlock"
    );
    // But locks taken while a try-locked guard is held are ordered after it.
    let c = Mutex::named("try-c", ());
    {
        let _b = b.try_lock().expect("free");
        let _c = c.lock();
    }
    let _c = c.lock();
    let _b = b.lock();
    assert_eq!(reports_about("try-c").len(), 1);
}

#[test]
fn releasing_out_of_order_keeps_the_held_set_exact() {
    reports();
    let a = Mutex::named("ooo-a", ());
    let b = Mutex::named("ooo-b", ());
    let c = Mutex::named("ooo-c", ());
    let ga = a.lock();
    let gb = b.try_lock().expect("free"); // no a -> b: a try_lock cannot wait
    drop(ga);
    let gc = c.lock(); // held: b, c — so b -> c, and no a -> c (a stale `a` would add it)
    drop(gc);
    drop(gb);
    {
        let _c = c.lock();
        let _a = a.lock();
    }
    assert!(
        reports_about("ooo-a").is_empty(),
        "a was released before c was taken"
    );
    let _c = c.lock();
    let _b = b.lock();
    assert_eq!(reports_about("ooo-b").len(), 1);
}

#[test]
fn the_steady_state_takes_no_global_lock_and_adds_nothing() {
    reports();
    let a = Mutex::named("steady-a", 0);
    let b = Mutex::named("steady-b", 0);
    for _ in 0..3 {
        let mut ga = a.lock();
        let mut gb = b.lock();
        *ga += 1;
        *gb += 1;
    }
    let before = detect::stats();
    for _ in 0..100 {
        let _a = a.lock();
        let _b = b.lock();
    }
    assert_eq!(detect::stats().edges, before.edges);
    assert_eq!(*a.lock(), 3);
}

#[test]
fn a_timeout_names_the_class_and_where_the_holder_took_it() {
    reports();
    let m = Arc::new(Mutex::named("timeout-held", ()));
    let taken = Arc::new(Barrier::new(2));
    let done = Arc::new(Barrier::new(2));
    let holder = {
        let (m, taken, done) = (m.clone(), taken.clone(), done.clone());
        thread::spawn(move || {
            let _g = m.lock();
            let line = line!() - 1;
            taken.wait();
            done.wait();
            line
        })
    };
    taken.wait();
    let err = m.try_lock_for(Duration::from_millis(5)).unwrap_err();
    done.wait();
    let line = holder.join().unwrap();
    assert_eq!(err.class().to_string(), "`timeout-held`");
    let at = err.held_at().expect("detection knows the holder");
    assert_eq!((at.file(), at.line()), (file!(), line));
    assert!(
        err.to_string().contains("held by the code that took it at"),
        "{err}"
    );
    // Nothing stays on this thread's held stack after the failed wait.
    let _g = m.lock();
    assert!(reports_about("timeout-held").is_empty());
}

#[test]
fn a_report_reads_as_a_diagnosis() {
    reports();
    let a = Mutex::named("display-a", ());
    let b = Mutex::named("display-b", ());
    {
        let _a = a.lock();
        let _b = b.lock();
    }
    let _b = b.lock();
    let _a = a.lock();
    let text = reports_about("display-a")[0].to_string();
    assert!(
        text.starts_with(
            "potential deadlock: lock order inversion between `display-b` and `display-a`"
        ),
        "{text}"
    );
    assert!(text.contains("this thread holds `display-b`"), "{text}");
    assert!(
        text.contains("but earlier `display-b` was taken at"),
        "{text}"
    );
}

#[test]
fn a_recursion_report_does_not_cache_away_the_other_orders() {
    reports();
    // Mode::callback carries on after a report: the chain of that acquisition gets cached, so
    // every order it stands for must have been checked too.
    let a = Mutex::named("rec-cache-a", ());
    let r = RwLock::named("rec-cache-r", ());
    {
        let _a = a.lock();
        let _r1 = r.try_read().expect("free");
        let _r2 = r.read(); // recursive read, reported; a -> r must still be recorded
    }
    assert_eq!(reports_about("rec-cache-r").len(), 1);
    let _w = r.write();
    let _a = a.lock(); // r -> a: inverts a -> r
    let found = reports_about("rec-cache-a");
    assert!(
        found.iter().any(|r| r.kind == ReportKind::OrderInversion),
        "{found:#?}"
    );
}

#[test]
fn a_recursion_report_does_not_cache_away_a_second_lock_of_the_class() {
    reports();
    // The chain of a recursive read (holding `x`, take `x`) is also the chain of holding one
    // lock of class `x` and taking another: caching it after the recursion hid the second.
    let r1 = RwLock::named("rec-same-class", 0);
    let r2 = RwLock::named("rec-same-class", 0);
    thread::spawn(move || {
        let _a = r1.read();
        drop(r1.read()); // reported: RecursiveRead
        let _b = r2.read(); // two locks of one class held at once
    })
    .join()
    .unwrap();
    let kinds: Vec<ReportKind> = reports_about("rec-same-class")
        .iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds, [ReportKind::RecursiveRead, ReportKind::SameClass]);
}

#[test]
fn a_longer_cycle_through_an_order_already_reported_is_found() {
    reports();
    let a = Mutex::named("long-a", ());
    let b = Mutex::named("long-b", ());
    let c = Mutex::named("long-c", ());
    for (first, second) in [(&a, &b), (&b, &a), (&a, &c), (&c, &b)] {
        let _x = first.lock();
        let _y = second.lock();
    }
    // b -> a (reported), then a -> c and c -> b close b -> a -> c -> b: three threads deadlock.
    let found = reports_about("long-c");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].holding.to_string(), "`long-c`");
    assert_eq!(found[0].acquiring.to_string(), "`long-b`");
}
