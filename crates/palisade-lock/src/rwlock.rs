//! [`RwLock`]: parking_lot's reader-writer lock with a lock class, order checks and timeouts.

use std::fmt;
use std::panic::Location;
#[cfg(not(palisade_loom))]
use std::time::Duration;

use palisade_core::sync;

use crate::class::{Class, Meta};
use crate::detect::Held;
#[cfg(not(palisade_loom))]
use crate::error::LockTimeout;

/// A reader-writer lock (parking_lot's, fair: a queued writer holds back new readers) that
/// knows its [`Class`], checks every acquisition against the lock order when detection is
/// compiled in, and can wait with a timeout.
///
/// Reads are ordered like writes. With a fair lock a read waits behind a queued writer, so
/// "thread 1 reads `A` then `B`, thread 2 reads `B` then `A`" deadlocks as soon as writers
/// queue on both, and a second read of a lock this thread already reads hangs the same way:
/// the detector reports both.
///
/// ```
/// use palisade_lock::RwLock;
///
/// let routes = RwLock::new(vec!["/health"]);
/// assert_eq!(routes.read().len(), 1);
/// routes.write().push("/ready");
/// assert_eq!(*routes.read(), ["/health", "/ready"]);
/// ```
pub struct RwLock<T> {
    meta: Meta,
    raw: sync::RwLock<T>,
}

impl<T> RwLock<T> {
    loom_const_fn! {
        /// A lock whose class is this call site: every lock built here shares it.
        #[track_caller]
        #[must_use]
        pub fn new(value: T) -> Self {
            Self { meta: Meta::new(Class::Declared(Location::caller())), raw: sync::RwLock::new(value) }
        }
    }

    loom_const_fn! {
        /// A lock of the class `name`, shared by every lock built with that name anywhere.
        #[must_use]
        pub fn named(name: &'static str, value: T) -> Self {
            Self { meta: Meta::new(Class::Named(name)), raw: sync::RwLock::new(value) }
        }
    }

    /// The protected value, consuming the lock.
    pub fn into_inner(self) -> T {
        self.raw.into_inner()
    }

    /// Shared access, blocking while a writer holds the lock or waits for it. Checked against
    /// the lock order before blocking, like [`Mutex::lock`](crate::Mutex::lock).
    #[cfg_attr(palisade_detect, track_caller)]
    #[inline]
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        let (raw, held) = self
            .meta
            .take(addr!(self), true, Location::caller(), || self.raw.read());
        RwLockReadGuard { raw, _held: held }
    }

    /// Exclusive access, blocking until no one else holds the lock. Checked against the lock
    /// order before blocking.
    #[cfg_attr(palisade_detect, track_caller)]
    #[inline]
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        let (raw, held) = self
            .meta
            .take(addr!(self), false, Location::caller(), || self.raw.write());
        RwLockWriteGuard { raw, _held: held }
    }

    /// Shared access if available now, without blocking (and without an order check).
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
        let (raw, held) =
            self.meta
                .try_take(addr!(self), true, Location::caller(), self.raw.try_read())?;
        Some(RwLockReadGuard { raw, _held: held })
    }

    /// Exclusive access if available now, without blocking (and without an order check).
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
        let (raw, held) =
            self.meta
                .try_take(addr!(self), false, Location::caller(), self.raw.try_write())?;
        Some(RwLockWriteGuard { raw, _held: held })
    }

    /// Shared access, waiting at most `timeout`.
    #[cfg(not(palisade_loom))]
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn try_read_for(&self, timeout: Duration) -> Result<RwLockReadGuard<'_, T>, LockTimeout> {
        let (raw, held) =
            self.meta
                .take_for(addr!(self), true, Location::caller(), timeout, |t| {
                    self.raw.try_read_for(t)
                })?;
        Ok(RwLockReadGuard { raw, _held: held })
    }

    /// Exclusive access, waiting at most `timeout`.
    #[cfg(not(palisade_loom))]
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn try_write_for(&self, timeout: Duration) -> Result<RwLockWriteGuard<'_, T>, LockTimeout> {
        let (raw, held) =
            self.meta
                .take_for(addr!(self), false, Location::caller(), timeout, |t| {
                    self.raw.try_write_for(t)
                })?;
        Ok(RwLockWriteGuard { raw, _held: held })
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

    pub(crate) fn raw(&self) -> &sync::RwLock<T> {
        &self.raw
    }
}

impl<T: Default> Default for RwLock<T> {
    #[track_caller]
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> From<T> for RwLock<T> {
    #[track_caller]
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl<T> fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLock")
            .field("class", &self.meta.class())
            .finish_non_exhaustive()
    }
}

/// Shared access to the value of a read-locked [`RwLock`]; unlocks when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RwLockReadGuard<'a, T> {
    raw: sync::RwLockReadGuard<'a, T>,
    _held: Held,
}

/// Exclusive access to the value of a write-locked [`RwLock`]; unlocks when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RwLockWriteGuard<'a, T> {
    raw: sync::RwLockWriteGuard<'a, T>,
    _held: Held,
}

impl<'a, T> RwLockReadGuard<'a, T> {
    pub(crate) fn from_parts(raw: sync::RwLockReadGuard<'a, T>, held: Held) -> Self {
        Self { raw, _held: held }
    }
}

impl<'a, T> RwLockWriteGuard<'a, T> {
    pub(crate) fn from_parts(raw: sync::RwLockWriteGuard<'a, T>, held: Held) -> Self {
        Self { raw, _held: held }
    }
}

guard_access!(RwLockReadGuard, []);
guard_access!(RwLockWriteGuard, [], mut);
