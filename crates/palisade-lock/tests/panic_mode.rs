//! The default mode: a panic at the offending acquisition, before it blocks (a log event when
//! the thread is already unwinding).
#![cfg(debug_assertions)]

use std::panic::{AssertUnwindSafe, catch_unwind};

use palisade_lock::Mutex;
use palisade_lock::detect;

#[test]
fn an_inversion_panics_with_the_report_and_the_thread_holds_nothing_after() {
    let a = Mutex::named("panic-a", 0);
    let b = Mutex::named("panic-b", 0);
    {
        let _a = a.lock();
        let _b = b.lock();
    }
    let before = detect::stats().reports;
    let caught = catch_unwind(AssertUnwindSafe(|| {
        let _b = b.lock();
        let _a = a.lock();
    }));
    let message = caught
        .unwrap_err()
        .downcast::<String>()
        .expect("a formatted message");
    assert!(
        message.contains("lock order inversion between `panic-b` and `panic-a`"),
        "{message}"
    );
    assert!(detect::stats().reports > before);
    // The panic unwound the `b` guard, and `a` was never taken: both are free, and nothing is
    // left on this thread's held stack (a stale entry would report recursion here).
    assert!(a.try_lock().is_some());
    // In this mode a report would panic here.
    *b.lock() += 1;
    *a.lock() += 1;
}

#[test]
fn one_acquisition_that_inverts_two_orders_panics_with_both_reports() {
    let x = Mutex::named("both-x", ());
    let y = Mutex::named("both-y", ());
    let z = Mutex::named("both-z", ());
    // z before x, and z before y.
    {
        let _z = z.lock();
        let _x = x.lock();
    }
    {
        let _z = z.lock();
        let _y = y.lock();
    }
    let before = detect::stats().reports;
    // Holding x and y, taking z inverts both orders at once: each pair is reported once, so
    // the panic must carry both (a report left behind by the first panic is never made).
    let caught = catch_unwind(AssertUnwindSafe(|| {
        let _x = x.lock();
        let _y = y.lock();
        let _z = z.lock();
    }));
    let message = caught
        .unwrap_err()
        .downcast::<String>()
        .expect("a formatted message");
    for held in ["both-x", "both-y"] {
        assert!(
            message.contains(&format!(
                "lock order inversion between `{held}` and `both-z`"
            )),
            "no report for `{held}`: {message}"
        );
    }
    assert!(detect::stats().reports >= before + 2);
}

#[test]
fn a_report_while_unwinding_is_logged_instead_of_aborting_the_process() {
    let a = Mutex::named("unwind-a", ());
    let b = Mutex::named("unwind-b", ());
    {
        let _a = a.lock();
        let _b = b.lock();
    }
    /// Cleanup that takes the two locks in the inverted order, run while a panic unwinds.
    struct Cleanup<'a>(&'a Mutex<()>, &'a Mutex<()>);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _b = self.1.lock();
            let _a = self.0.lock(); // reported; a second panic here would abort the process
        }
    }
    let before = detect::stats().reports;
    let caught = catch_unwind(AssertUnwindSafe(|| {
        let _cleanup = Cleanup(&a, &b);
        panic!("the first panic");
    }));
    let message = caught
        .unwrap_err()
        .downcast::<&str>()
        .expect("the first panic's message");
    assert_eq!(*message, "the first panic");
    assert!(detect::stats().reports > before, "reported, as a log event");
}
