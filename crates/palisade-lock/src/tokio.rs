//! tokio's async [`Mutex`] and [`RwLock`] with a lock class, order checks and timeouts.
//!
//! The checks are those of the sync locks, made per *task*: a guard held across an `.await`
//! stays on its task's held stack wherever the task resumes, and a sync lock taken inside the
//! task is ordered after the async locks it holds. Every waiting method is cancel-safe: dropping
//! the future gives up its place in tokio's queue and leaves nothing held (the order checked at
//! its first poll stays recorded: the code did try that order).

use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::time::Duration;

use crate::class::{Class, Meta};
use crate::detect::tasks;
use crate::error::LockTimeout;

/// An async mutex (tokio's, FIFO) that knows its [`Class`] and is checked against the lock
/// order when detection is compiled in.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use palisade_lock::tokio::Mutex;
///
/// let sessions = Mutex::named("sessions", Vec::<u64>::new());
/// sessions.lock().await.push(7);
/// assert_eq!(*sessions.lock().await, [7]);
/// # }
/// ```
pub struct Mutex<T: ?Sized> {
    meta: Meta,
    raw: tokio::sync::Mutex<T>,
}

impl<T> Mutex<T> {
    /// A mutex whose class is this call site.
    #[track_caller]
    #[must_use]
    pub const fn new(value: T) -> Self {
        Self {
            meta: Meta::new(Class::Declared(Location::caller())),
            raw: tokio::sync::Mutex::const_new(value),
        }
    }

    /// A mutex of the class `name`.
    #[must_use]
    pub const fn named(name: &'static str, value: T) -> Self {
        Self {
            meta: Meta::new(Class::Named(name)),
            raw: tokio::sync::Mutex::const_new(value),
        }
    }

    /// The protected value, consuming the mutex.
    pub fn into_inner(self) -> T {
        self.raw.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Takes the lock, waiting in FIFO order. Checked against the lock order before waiting.
    /// Cancel-safe.
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn lock(&self) -> impl Future<Output = MutexGuard<'_, T>> + '_ {
        let site = Location::caller();
        async move {
            let (raw, held) = self
                .meta
                .take_async(addr!(self), false, site, self.raw.lock())
                .await;
            MutexGuard { raw, _held: held }
        }
    }

    /// Takes the lock if it is free now.
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        let (raw, held) = self.meta.try_take_async(
            addr!(self),
            false,
            Location::caller(),
            self.raw.try_lock().ok(),
        )?;
        Some(MutexGuard { raw, _held: held })
    }

    /// Takes the lock, waiting at most `timeout` (tokio time, so paused test clocks drive it).
    /// Cancel-safe.
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn try_lock_for(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<MutexGuard<'_, T>, LockTimeout>> + '_ {
        let site = Location::caller();
        async move {
            let (raw, held) = self
                .meta
                .take_async_for(addr!(self), false, site, timeout, self.raw.lock())
                .await?;
            Ok(MutexGuard { raw, _held: held })
        }
    }

    /// The protected value, through `&mut self`.
    pub fn get_mut(&mut self) -> &mut T {
        self.raw.get_mut()
    }

    /// The lock's class.
    pub fn class(&self) -> Class {
        self.meta.class()
    }
}

impl<T: ?Sized> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("tokio::Mutex")
            .field("class", &self.meta.class())
            .finish_non_exhaustive()
    }
}

/// Access to the value of a locked async [`Mutex`]; `Send`, so it can be held across `.await`.
#[must_use = "the mutex unlocks as soon as the guard is dropped"]
pub struct MutexGuard<'a, T: ?Sized> {
    raw: tokio::sync::MutexGuard<'a, T>,
    _held: tasks::TaskHeld,
}

/// An async reader-writer lock (tokio's, fair) that knows its [`Class`] and is checked against
/// the lock order when detection is compiled in. Reads are ordered like writes: a read waits
/// behind a queued writer.
pub struct RwLock<T> {
    meta: Meta,
    raw: tokio::sync::RwLock<T>,
}

impl<T> RwLock<T> {
    /// A lock whose class is this call site.
    #[track_caller]
    #[must_use]
    pub const fn new(value: T) -> Self {
        Self {
            meta: Meta::new(Class::Declared(Location::caller())),
            raw: tokio::sync::RwLock::const_new(value),
        }
    }

    /// A lock of the class `name`.
    #[must_use]
    pub const fn named(name: &'static str, value: T) -> Self {
        Self {
            meta: Meta::new(Class::Named(name)),
            raw: tokio::sync::RwLock::const_new(value),
        }
    }

    /// Shared access, waiting behind writers. Cancel-safe.
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn read(&self) -> impl Future<Output = RwLockReadGuard<'_, T>> + '_ {
        let site = Location::caller();
        async move {
            let (raw, held) = self
                .meta
                .take_async(addr!(self), true, site, self.raw.read())
                .await;
            RwLockReadGuard { raw, _held: held }
        }
    }

    /// Exclusive access. Cancel-safe.
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn write(&self) -> impl Future<Output = RwLockWriteGuard<'_, T>> + '_ {
        let site = Location::caller();
        async move {
            let (raw, held) = self
                .meta
                .take_async(addr!(self), false, site, self.raw.write())
                .await;
            RwLockWriteGuard { raw, _held: held }
        }
    }

    /// Shared access if available now.
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
        let (raw, held) = self.meta.try_take_async(
            addr!(self),
            true,
            Location::caller(),
            self.raw.try_read().ok(),
        )?;
        Some(RwLockReadGuard { raw, _held: held })
    }

    /// Exclusive access if available now.
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
        let (raw, held) = self.meta.try_take_async(
            addr!(self),
            false,
            Location::caller(),
            self.raw.try_write().ok(),
        )?;
        Some(RwLockWriteGuard { raw, _held: held })
    }

    /// Shared access, waiting at most `timeout`. Cancel-safe.
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn try_read_for(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<RwLockReadGuard<'_, T>, LockTimeout>> + '_ {
        let site = Location::caller();
        async move {
            let (raw, held) = self
                .meta
                .take_async_for(addr!(self), true, site, timeout, self.raw.read())
                .await?;
            Ok(RwLockReadGuard { raw, _held: held })
        }
    }

    /// Exclusive access, waiting at most `timeout`. Cancel-safe.
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn try_write_for(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<RwLockWriteGuard<'_, T>, LockTimeout>> + '_ {
        let site = Location::caller();
        async move {
            let (raw, held) = self
                .meta
                .take_async_for(addr!(self), false, site, timeout, self.raw.write())
                .await?;
            Ok(RwLockWriteGuard { raw, _held: held })
        }
    }

    /// The protected value, through `&mut self`.
    pub fn get_mut(&mut self) -> &mut T {
        self.raw.get_mut()
    }

    /// The protected value, consuming the lock.
    pub fn into_inner(self) -> T {
        self.raw.into_inner()
    }

    /// The lock's class.
    pub fn class(&self) -> Class {
        self.meta.class()
    }
}

impl<T> fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("tokio::RwLock")
            .field("class", &self.meta.class())
            .finish_non_exhaustive()
    }
}

/// Shared access to the value of a read-locked async [`RwLock`].
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RwLockReadGuard<'a, T> {
    raw: tokio::sync::RwLockReadGuard<'a, T>,
    _held: tasks::TaskHeld,
}

/// Exclusive access to the value of a write-locked async [`RwLock`].
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RwLockWriteGuard<'a, T> {
    raw: tokio::sync::RwLockWriteGuard<'a, T>,
    _held: tasks::TaskHeld,
}

guard_access!(MutexGuard, [?Sized+], mut);
guard_access!(RwLockReadGuard, []);
guard_access!(RwLockWriteGuard, [], mut);
