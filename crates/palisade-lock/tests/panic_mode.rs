//! The default mode: a panic at the offending acquisition, before it blocks.
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
    assert_eq!(detect::stats().reports, 1);
    // The panic unwound the `b` guard, and `a` was never taken: both are free, and nothing is
    // left on this thread's held stack (a stale entry would report recursion here).
    assert!(a.try_lock().is_some());
    *b.lock() += 1;
    *a.lock() += 1;
    assert_eq!(detect::stats().reports, 1);
}
