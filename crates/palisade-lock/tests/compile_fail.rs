//! Lock levels at compile time: every out-of-order acquisition in `tests/ui` must fail to compile,
//! for the reason its `.stderr` records (the `LockAfter` diagnostic naming both levels, or a
//! borrow error on the context), and the declared order must compile and run. `tests/ui/deadlock`:
//! a watchdog dropped as soon as it is made is a `must_use` error.
//!
//! Regenerate the expected output with `TRYBUILD=overwrite`, then read it.

#[test]
fn out_of_order_acquisitions_do_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    if cfg!(feature = "tokio") {
        t.compile_fail("tests/ui/tokio/*.rs");
    }
    if cfg!(feature = "deadlock-detection") {
        t.compile_fail("tests/ui/deadlock/*.rs");
    }
    t.pass("tests/ui/pass/*.rs");
}
