//! [`Mutex`]: parking_lot's mutex with a lock class, order checks and timeouts.

use std::fmt;
use std::panic::Location;
#[cfg(not(palisade_loom))]
use std::time::Duration;

use palisade_core::sync;

use crate::class::{Class, Meta};
use crate::detect::Held;
#[cfg(not(palisade_loom))]
use crate::error::LockTimeout;

/// A mutual-exclusion lock (parking_lot's) that knows its [`Class`], checks every acquisition
/// against the lock order when detection is compiled in, and can wait with a timeout.
///
/// With detection compiled out it is a parking_lot `Mutex` plus the class (for timeout errors):
/// the same size of critical path, no poisoning, a `const` constructor for `static`s.
///
/// ```
/// use palisade_lock::Mutex;
///
/// static CONFIG: Mutex<Vec<String>> = Mutex::named("config", Vec::new());
///
/// CONFIG.lock().push("listen=127.0.0.1:8080".into());
/// assert_eq!(CONFIG.lock().len(), 1);
/// ```
pub struct Mutex<T: ?Sized> {
    meta: Meta,
    raw: sync::Mutex<T>,
}

impl<T> Mutex<T> {
    loom_const_fn! {
        /// A mutex whose class is this call site: every mutex built here shares it.
        #[track_caller]
        #[must_use]
        pub fn new(value: T) -> Self {
            Self { meta: Meta::new(Class::Declared(Location::caller())), raw: sync::Mutex::new(value) }
        }
    }

    loom_const_fn! {
        /// A mutex of the class `name`, shared by every lock built with that name anywhere.
        #[must_use]
        pub fn named(name: &'static str, value: T) -> Self {
            Self { meta: Meta::new(Class::Named(name)), raw: sync::Mutex::new(value) }
        }
    }

    /// The protected value, consuming the mutex.
    pub fn into_inner(self) -> T {
        self.raw.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Takes the lock, blocking the thread until it is free.
    ///
    /// With detection on, the acquisition is checked *before* blocking: taking this lock in an
    /// order that contradicts one seen before, or while already holding it, is reported (by
    /// default as a panic naming both sites).
    #[cfg_attr(palisade_detect, track_caller)]
    #[inline]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        let (raw, held) = self
            .meta
            .take(addr!(self), false, Location::caller(), || self.raw.lock());
        MutexGuard { raw, _held: held }
    }

    /// Takes the lock if it is free, without blocking (so without an order check: a failed
    /// `try_lock` cannot deadlock). Locks taken while holding the guard are ordered after it.
    #[cfg_attr(palisade_detect, track_caller)]
    #[inline]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        let (raw, held) =
            self.meta
                .try_take(addr!(self), false, Location::caller(), self.raw.try_lock())?;
        Some(MutexGuard { raw, _held: held })
    }

    /// Takes the lock, waiting at most `timeout`; the error names the class and, with detection
    /// on, where the holder took it. Checked against the lock order like [`lock`](Self::lock).
    #[cfg(not(palisade_loom))]
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn try_lock_for(&self, timeout: Duration) -> Result<MutexGuard<'_, T>, LockTimeout> {
        let (raw, held) =
            self.meta
                .take_for(addr!(self), false, Location::caller(), timeout, |t| {
                    self.raw.try_lock_for(t)
                })?;
        Ok(MutexGuard { raw, _held: held })
    }

    /// The protected value, through `&mut self` (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.raw.get_mut()
    }

    /// The lock's class.
    pub fn class(&self) -> Class {
        self.meta.class()
    }

    pub(crate) fn meta(&self) -> &Meta {
        &self.meta
    }

    pub(crate) fn raw(&self) -> &sync::Mutex<T> {
        &self.raw
    }
}

impl<T: Default> Default for Mutex<T> {
    #[track_caller]
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> From<T> for Mutex<T> {
    #[track_caller]
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl<T: ?Sized> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex")
            .field("class", &self.meta.class())
            .finish_non_exhaustive()
    }
}

/// Access to the value of a locked [`Mutex`]; unlocks when dropped.
#[must_use = "the mutex unlocks as soon as the guard is dropped"]
pub struct MutexGuard<'a, T: ?Sized> {
    raw: sync::MutexGuard<'a, T>,
    // Dropped after `raw`: pops the lock from this thread's held stack.
    _held: Held,
}

impl<'a, T: ?Sized> MutexGuard<'a, T> {
    pub(crate) fn from_parts(raw: sync::MutexGuard<'a, T>, held: Held) -> Self {
        Self { raw, _held: held }
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

guard_access!(MutexGuard, [?Sized+], mut);
