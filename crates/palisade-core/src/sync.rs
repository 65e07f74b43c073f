//! Synchronization primitives that become [loom](https://docs.rs/loom)'s under `--cfg palisade_loom`.
//!
//! Every palisade crate takes its `Arc`, atomics, locks and threads from here, never from `std`
//! or `parking_lot` directly. In a normal build these are the real types (`std`'s `Arc` and
//! atomics, `parking_lot`'s locks, `std::thread`). Built with
//! `RUSTFLAGS="--cfg palisade_loom"` they are loom's, so a loom model written with [`model`]
//! explores every interleaving of the crate's real code, not of a copy of it.
//!
//! The cfg is `palisade_loom`, not the customary `loom`: `RUSTFLAGS` reach every dependency, and
//! under `--cfg loom` tokio compiles out `tokio::net` (crossbeam and oneshot renamed their cfg
//! for the same reason). Any crate that links `palisade_core` sees the same types, so one crate's
//! loom model also checks the other crates' types it uses.
//!
//! # The shared subset
//!
//! Code that must build both ways uses only what both sides offer:
//!
//! - [`Arc`]: `new`, `clone`, `strong_count`, `ptr_eq`, `try_unwrap`, `get_mut` (no `Weak`: loom has none).
//! - [`atomic`]: `new` (not `const` under loom, so no atomics in `static`s), `load`, `store`,
//!   `swap`, `compare_exchange(_weak)`, `fetch_*`, `fetch_update`, `into_inner`; no `get_mut`.
//! - [`Mutex`] and [`RwLock`] with `parking_lot`'s signatures (no poisoning, `lock()` returns the
//!   guard): `new` (not `const` under loom), `lock`, `try_lock`, `read`, `write`, `try_read`,
//!   `try_write`, `get_mut`, `into_inner`, `Default`, `From<T>`; `Mutex<T: ?Sized>`.
//! - [`thread`]: `spawn`, `yield_now`, `JoinHandle::join`; [`hint::spin_loop`].
//!
//! # Example
//!
//! ```
//! use palisade_core::sync::atomic::{AtomicUsize, Ordering};
//! use palisade_core::sync::{Arc, model, thread};
//!
//! // The body of a `#[test]` in `crates/<crate>/tests/loom.rs`:
//! let executions = model(|| {
//!     let hits = Arc::new(AtomicUsize::new(0));
//!     let other = thread::spawn({
//!         let hits = hits.clone();
//!         move || hits.fetch_add(1, Ordering::Relaxed)
//!     });
//!     hits.fetch_add(1, Ordering::Relaxed);
//!     other.join().unwrap();
//!     assert_eq!(hits.load(Ordering::Relaxed), 2); // no increment is ever lost
//! });
//! assert!(executions >= 1);
//! ```

#[cfg(palisade_loom)]
pub use loom::sync::Arc;
#[cfg(not(palisade_loom))]
pub use std::sync::Arc;

#[cfg(palisade_loom)]
pub use self::loom_locks::{Mutex, RwLock};
#[cfg(palisade_loom)]
pub use loom::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};
#[cfg(not(palisade_loom))]
pub use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Atomic types: `std::sync::atomic`, or loom's under `palisade_loom`.
pub mod atomic {
    #[cfg(palisade_loom)]
    pub use loom::sync::atomic::{
        AtomicBool, AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicIsize, AtomicPtr, AtomicU8,
        AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
    };
    #[cfg(not(palisade_loom))]
    pub use std::sync::atomic::{
        AtomicBool, AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicIsize, AtomicPtr, AtomicU8,
        AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
    };
}

/// Threads: `std::thread`, or loom's under `palisade_loom`.
pub mod thread {
    #[cfg(palisade_loom)]
    pub use loom::thread::{JoinHandle, spawn, yield_now};
    #[cfg(not(palisade_loom))]
    pub use std::thread::{JoinHandle, spawn, yield_now};
}

/// Spin-loop hint: `std::hint`, or loom's under `palisade_loom` (where it yields to other threads).
pub mod hint {
    #[cfg(palisade_loom)]
    pub use loom::hint::spin_loop;
    #[cfg(not(palisade_loom))]
    pub use std::hint::spin_loop;
}

/// Runs a concurrency model: exhaustively under loom, once otherwise. Returns how many
/// executions ran.
///
/// With `--cfg palisade_loom`, `f` runs under [`loom::model`](https://docs.rs/loom/latest/loom/fn.model.html),
/// once per interleaving of the threads it spawns through [`thread`], so an assertion in it holds
/// for every schedule loom explores. Loom reads its usual environment variables
/// (`LOOM_MAX_PREEMPTIONS`, `LOOM_MAX_BRANCHES`, `LOOM_LOG`, `LOOM_LOCATION`, ...); when
/// `LOOM_MAX_PREEMPTIONS` is unset the bound is 3, so a model never runs away.
///
/// Without the cfg, `f` runs once on real threads, so every model is also an ordinary test and a
/// loom test file can never pass as an empty binary.
///
/// The count lets a model check that it really explored something: under loom a model with
/// two racing threads runs more than once. Under loom it also prints
/// `palisade_loom: model explored N executions` to stderr, which the test command counts.
pub fn model<F>(f: F) -> usize
where
    F: Fn() + Sync + Send + 'static,
{
    run_model(|env| env.unwrap_or(DEFAULT_PREEMPTION_BOUND), f)
}

/// The preemption bound of [`model`] when `LOOM_MAX_PREEMPTIONS` is unset.
const DEFAULT_PREEMPTION_BOUND: usize = 3;

/// [`model`] with at most `max_preemptions` preemptions per execution, whatever
/// `LOOM_MAX_PREEMPTIONS` says (it can lower the bound, not raise it).
///
/// For a model whose protocol takes many steps (a background task, several locks per
/// operation), each extra preemption multiplies the executions; 2 still finds most
/// interleaving bugs (loom's own guidance), in a fraction of the time.
pub fn model_with_preemptions<F>(max_preemptions: usize, f: F) -> usize
where
    F: Fn() + Sync + Send + 'static,
{
    run_model(
        move |env| env.map_or(max_preemptions, |env| env.min(max_preemptions)),
        f,
    )
}

/// Runs `f` under loom with the bound `bound` computes from `LOOM_MAX_PREEMPTIONS`, or once.
fn run_model<F>(bound: impl FnOnce(Option<usize>) -> usize, f: F) -> usize
where
    F: Fn() + Sync + Send + 'static,
{
    #[cfg(palisade_loom)]
    {
        use std::sync::atomic::{AtomicUsize, Ordering};

        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(bound(builder.preemption_bound));
        // A std atomic, outside loom's view: counting executions must not add interleavings.
        let executions = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&executions);
        builder.check(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            f();
        });
        let executions = executions.load(Ordering::Relaxed);
        // The test command counts these lines: a loom run that prints none checked no model.
        eprintln!("palisade_loom: model explored {executions} executions");
        executions
    }
    #[cfg(not(palisade_loom))]
    {
        let _ = bound;
        f();
        1
    }
}

/// Checks that a model ran as it should: more than one execution under loom (a model with
/// racing threads that explored one interleaving checked nothing), exactly one otherwise.
///
/// `assert_explored(model(|| ...))` is the first line of every loom test body.
#[track_caller]
pub fn assert_explored(executions: usize) {
    if cfg!(palisade_loom) {
        assert!(
            executions > 1,
            "loom explored only {executions} execution(s)"
        );
    } else {
        assert_eq!(executions, 1, "without loom a model runs once");
    }
}

/// Runs a future to completion on the current thread: loom's `block_on` under
/// `--cfg palisade_loom` (parking the loom thread, so loom sees every wake-up), a parking
/// executor otherwise. For the async operations of a loom model, one per model thread.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    #[cfg(palisade_loom)]
    {
        loom::future::block_on(f)
    }
    #[cfg(not(palisade_loom))]
    {
        use std::task::{Context, Poll, Wake, Waker};

        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(out) = f.as_mut().poll(&mut Context::from_waker(&waker)) {
                return out;
            }
            std::thread::park();
        }
    }
}

#[cfg(palisade_loom)]
mod loom_locks {
    //! loom's locks behind `parking_lot`'s signatures: no poisoning, `lock()` returns the guard.

    use std::fmt;
    use std::sync::PoisonError;

    use loom::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

    /// A mutual-exclusion lock with `parking_lot`'s API over `loom::sync::Mutex`.
    pub struct Mutex<T: ?Sized>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        /// A new unlocked mutex holding `value`.
        pub fn new(value: T) -> Mutex<T> {
            Mutex(loom::sync::Mutex::new(value))
        }

        /// Consumes the mutex and returns the value.
        pub fn into_inner(self) -> T {
            self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
        }
    }

    impl<T: ?Sized> Mutex<T> {
        /// Blocks until the lock is held.
        pub fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// Takes the lock if it is free.
        pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock().ok()
        }

        /// The value, through a unique borrow: no locking needed.
        pub fn get_mut(&mut self) -> &mut T {
            self.0.get_mut().unwrap_or_else(PoisonError::into_inner)
        }
    }

    impl<T: ?Sized + Default> Default for Mutex<T> {
        fn default() -> Mutex<T> {
            Mutex(loom::sync::Mutex::default())
        }
    }

    impl<T> From<T> for Mutex<T> {
        fn from(value: T) -> Mutex<T> {
            Mutex::new(value)
        }
    }

    impl<T: ?Sized> fmt::Debug for Mutex<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Mutex").finish_non_exhaustive()
        }
    }

    /// A reader-writer lock with `parking_lot`'s API over `loom::sync::RwLock`.
    pub struct RwLock<T>(loom::sync::RwLock<T>);

    impl<T> RwLock<T> {
        /// A new unlocked lock holding `value`.
        pub fn new(value: T) -> RwLock<T> {
            RwLock(loom::sync::RwLock::new(value))
        }

        /// Blocks until shared access is held.
        pub fn read(&self) -> RwLockReadGuard<'_, T> {
            self.0.read().unwrap_or_else(PoisonError::into_inner)
        }

        /// Blocks until exclusive access is held.
        pub fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0.write().unwrap_or_else(PoisonError::into_inner)
        }

        /// Takes shared access if no writer holds the lock.
        pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
            self.0.try_read().ok()
        }

        /// Takes exclusive access if the lock is free.
        pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
            self.0.try_write().ok()
        }

        /// The value, through a unique borrow: no locking needed.
        pub fn get_mut(&mut self) -> &mut T {
            self.0.get_mut().unwrap_or_else(PoisonError::into_inner)
        }

        /// Consumes the lock and returns the value.
        pub fn into_inner(self) -> T {
            self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
        }
    }

    impl<T: Default> Default for RwLock<T> {
        fn default() -> RwLock<T> {
            RwLock::new(T::default())
        }
    }

    impl<T> From<T> for RwLock<T> {
        fn from(value: T) -> RwLock<T> {
            RwLock::new(value)
        }
    }

    impl<T> fmt::Debug for RwLock<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RwLock").finish_non_exhaustive()
        }
    }
}
