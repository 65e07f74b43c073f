//! Lock levels as types: an acquisition out of the declared order does not compile.
//!
//! Declare the levels once, in the order locks must be taken:
//!
//! ```
//! palisade_lock::lock_levels! {
//!     /// Service configuration: taken first.
//!     pub Config,
//!     /// The accounts table.
//!     pub Accounts,
//!     /// The audit log: taken last.
//!     pub Audit,
//! }
//! ```
//!
//! A lock of level `L` is `ordered::Mutex<L, T>` (or `RwLock`, or the async [`AsyncMutex`] and
//! [`AsyncRwLock`]). Locking it takes a context [`Ctx<A>`] at a level `A` before `L` (the proof
//! that the thread holds nothing at a level after `A`), and hands back the guard with a context
//! at level `L`, from which only later levels can be locked:
//!
//! ```
//! # palisade_lock::lock_levels! { pub Config, pub Accounts, pub Audit }
//! use palisade_lock::ordered::{Ctx, Mutex};
//!
//! static CONFIG: Mutex<Config, u32> = Mutex::new(3);
//! static AUDIT: Mutex<Audit, Vec<String>> = Mutex::new(Vec::new());
//!
//! let mut ctx = Ctx::root();
//! let (limit, mut ctx) = CONFIG.lock(&mut ctx);
//! let (mut log, _ctx) = AUDIT.lock(&mut ctx); // Audit is after Config: fine
//! log.push(format!("limit is {}", *limit));
//! ```
//!
//! The other way round is a compile error naming both levels:
//!
//! ```compile_fail,E0277
//! # palisade_lock::lock_levels! { pub Config, pub Accounts, pub Audit }
//! # use palisade_lock::ordered::{Ctx, Mutex};
//! # static CONFIG: Mutex<Config, u32> = Mutex::new(3);
//! # static AUDIT: Mutex<Audit, Vec<String>> = Mutex::new(Vec::new());
//! let mut ctx = Ctx::root();
//! let (_log, mut ctx) = AUDIT.lock(&mut ctx);
//! let (_limit, _) = CONFIG.lock(&mut ctx); // error: `Config` cannot be locked while holding `Audit`
//! ```
//!
//! A guard and the context it came with both borrow the context they were made from, for as
//! long as either lives, so an earlier context cannot be reused to lock a level in between while
//! a later lock is held. Levels form a chain per `lock_levels!`; for a DAG, write
//! `impl LockAfter<A> for B {}` for each extra edge yourself (the compiler then trusts it).
//!
//! # What it does not catch, and the runtime check that does
//!
//! The types see one holder's contexts; two things they cannot see break the proof:
//!
//! - **A second [`Ctx::root`]** made while a guard is held can lock any level.
//! - **A context moved to another thread or task.** Contexts are `Send`, so that an async task
//!   can hold one across `.await` (the task carries its guards along). But a context moved into
//!   a scoped thread, or sent over a channel, proves nothing about the locks its new holder took
//!   from its own root: that holder can lock an earlier level after a later one it holds.
//!
//! Make one root at the top of each thread or task, pass `&mut ctx` down, and keep every
//! context with the thread or task whose root it came from. Ordered locks are also ordinary
//! palisade locks whose [class](crate::Class) is their level, so with detection compiled in, the
//! runtime detector checks them too: an order between a leveled lock and a plain one, or either
//! misuse above taking two levels backwards, is reported like any other inversion, once the
//! process has also taken the two levels in their right order (the detector learns orders by
//! running them; it does not read the declaration).
//!
// Without the `tokio` feature the async locks are not in these docs: link to the published ones.
#![cfg_attr(
    not(feature = "tokio"),
    doc = "[`AsyncMutex`]: https://docs.rs/palisade-lock/latest/palisade_lock/ordered/struct.AsyncMutex.html"
)]
#![cfg_attr(
    not(feature = "tokio"),
    doc = "[`AsyncRwLock`]: https://docs.rs/palisade-lock/latest/palisade_lock/ordered/struct.AsyncRwLock.html"
)]

use std::fmt;
use std::marker::PhantomData;
#[cfg(not(palisade_loom))]
use std::time::Duration;

#[cfg(not(palisade_loom))]
use crate::LockTimeout;

/// A lock level: a type naming a place in the lock order. Declare levels with
/// [`lock_levels!`](crate::lock_levels).
pub trait Level: 'static {
    /// The level's name, which is also the class name of its locks for the runtime detector.
    const NAME: &'static str;
}

/// `Self` may be locked while a lock of level `A` is held. [`lock_levels!`](crate::lock_levels)
/// implements it for every pair in declaration order.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be locked while holding `{A}`: lock levels are taken in the order `lock_levels!` declares them",
    label = "this lock's level is not after `{A}`",
    note = "take the `{Self}` lock first, or declare `{Self}` after `{A}` in `lock_levels!` (one lock per level at a time)"
)]
pub trait LockAfter<A: Level>: Level {}

/// The level of a context that holds no leveled lock: every level can be locked from it.
#[derive(Debug)]
pub enum Unlocked {}

impl Level for Unlocked {
    const NAME: &'static str = "Unlocked";
}

/// A level no context ever has. `lock_levels!` orders every level after it so that each level
/// has at least two `LockAfter` impls: with a single one (the first level's `Unlocked`), rustc
/// would infer the context's level from it and report a type mismatch instead of the message
/// that names both levels.
#[doc(hidden)]
#[derive(Debug)]
pub enum __Nowhere {}

impl Level for __Nowhere {
    const NAME: &'static str = "__Nowhere";
}

/// Proof, at compile time, that the code holding it holds no leveled lock after level `L`.
///
/// Zero-sized; `Send` and `Sync`, so it can be held across `.await`. Keep it with the thread or
/// task whose [root](Ctx::root) it came from: moved to another one, it proves nothing about the
/// locks that one holds (see [what the levels do not catch][escapes]).
///
/// [escapes]: crate::ordered#what-it-does-not-catch-and-the-runtime-check-that-does
pub struct Ctx<'a, L: Level> {
    _level: PhantomData<fn() -> L>,
    _borrow: PhantomData<&'a mut ()>,
}

impl Ctx<'static, Unlocked> {
    /// The context of code that holds no leveled lock. Make one at the top of each thread or
    /// task and pass `&mut ctx` down; making another while a leveled guard is held, or moving a
    /// context to another thread or task, defeats the compile-time check (the runtime detector
    /// still sees the order).
    #[must_use]
    pub fn root() -> Self {
        Ctx {
            _level: PhantomData,
            _borrow: PhantomData,
        }
    }
}

impl<L: Level> Ctx<'_, L> {
    /// A context at the same level, borrowing this one: pass it to a function that locks
    /// further, and keep this one afterwards.
    pub fn reborrow(&mut self) -> Ctx<'_, L> {
        Ctx {
            _level: PhantomData,
            _borrow: PhantomData,
        }
    }

    fn next<'b, M: Level>() -> Ctx<'b, M> {
        Ctx {
            _level: PhantomData,
            _borrow: PhantomData,
        }
    }
}

impl<L: Level> fmt::Debug for Ctx<'_, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ctx<{}>", L::NAME)
    }
}

/// Declares lock levels, in the order locks must be taken.
///
/// Each name becomes an uninhabited type implementing [`Level`](crate::ordered::Level), locked
/// after every level declared before it (and after [`Unlocked`](crate::ordered::Unlocked)).
/// Attributes and doc comments go before each name.
///
/// ```
/// palisade_lock::lock_levels! {
///     /// Taken first.
///     pub Sessions,
///     pub(crate) Users,
///     Cache,
/// }
/// fn first<L: palisade_lock::ordered::LockAfter<Sessions>>() {}
/// first::<Users>();
/// first::<Cache>();
/// ```
#[macro_export]
macro_rules! lock_levels {
    ($($(#[$meta:meta])* $vis:vis $name:ident),+ $(,)?) => {
        $(
            $(#[$meta])*
            #[derive(::core::fmt::Debug)]
            $vis enum $name {}

            impl $crate::ordered::Level for $name {
                const NAME: &'static str =
                    ::core::concat!(::core::module_path!(), "::", ::core::stringify!($name));
            }

            impl $crate::ordered::LockAfter<$crate::ordered::Unlocked> for $name {}
            impl $crate::ordered::LockAfter<$crate::ordered::__Nowhere> for $name {}
        )+
        $crate::__lock_after_pairs!($($name),+);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __lock_after_pairs {
    ($first:ident $(, $rest:ident)*) => {
        $(impl $crate::ordered::LockAfter<$first> for $rest {})*
        $crate::__lock_after_pairs!($($rest),*);
    };
    () => {};
}

/// A [`Mutex`](crate::Mutex) at lock level `L`.
pub struct Mutex<L: Level, T> {
    inner: crate::Mutex<T>,
    _level: PhantomData<fn() -> L>,
}

impl<L: Level, T> Mutex<L, T> {
    loom_const_fn! {
        /// A mutex at level `L`; its class for the runtime detector is the level.
        #[must_use]
        pub fn new(value: T) -> Self {
            Self { inner: crate::Mutex::named(L::NAME, value), _level: PhantomData }
        }
    }

    /// Locks it from a context at a level before `L`; returns the guard and a context at `L`.
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn lock<'a, A: Level>(
        &'a self,
        _ctx: &'a mut Ctx<'_, A>,
    ) -> (crate::MutexGuard<'a, T>, Ctx<'a, L>)
    where
        L: LockAfter<A>,
    {
        (self.inner.lock(), Ctx::<A>::next())
    }

    /// [`lock`](Self::lock) if the mutex is free now.
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn try_lock<'a, A: Level>(
        &'a self,
        _ctx: &'a mut Ctx<'_, A>,
    ) -> Option<(crate::MutexGuard<'a, T>, Ctx<'a, L>)>
    where
        L: LockAfter<A>,
    {
        Some((self.inner.try_lock()?, Ctx::<A>::next()))
    }

    /// [`lock`](Self::lock), waiting at most `timeout`.
    #[cfg(not(palisade_loom))]
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn try_lock_for<'a, A: Level>(
        &'a self,
        _ctx: &'a mut Ctx<'_, A>,
        timeout: Duration,
    ) -> Result<(crate::MutexGuard<'a, T>, Ctx<'a, L>), LockTimeout>
    where
        L: LockAfter<A>,
    {
        Ok((self.inner.try_lock_for(timeout)?, Ctx::<A>::next()))
    }

    /// The lock's class: its level's name.
    pub fn class(&self) -> crate::Class {
        self.inner.class()
    }

    /// The protected value, through `&mut self`.
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }

    /// The protected value, consuming the mutex.
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<L: Level, T> fmt::Debug for Mutex<L, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ordered::Mutex")
            .field("level", &L::NAME)
            .finish_non_exhaustive()
    }
}

/// An [`RwLock`](crate::RwLock) at lock level `L`.
pub struct RwLock<L: Level, T> {
    inner: crate::RwLock<T>,
    _level: PhantomData<fn() -> L>,
}

impl<L: Level, T> RwLock<L, T> {
    loom_const_fn! {
        /// A lock at level `L`; its class for the runtime detector is the level.
        #[must_use]
        pub fn new(value: T) -> Self {
            Self { inner: crate::RwLock::named(L::NAME, value), _level: PhantomData }
        }
    }

    /// Shared access from a context at a level before `L`.
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn read<'a, A: Level>(
        &'a self,
        _ctx: &'a mut Ctx<'_, A>,
    ) -> (crate::RwLockReadGuard<'a, T>, Ctx<'a, L>)
    where
        L: LockAfter<A>,
    {
        (self.inner.read(), Ctx::<A>::next())
    }

    /// Exclusive access from a context at a level before `L`.
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn write<'a, A: Level>(
        &'a self,
        _ctx: &'a mut Ctx<'_, A>,
    ) -> (crate::RwLockWriteGuard<'a, T>, Ctx<'a, L>)
    where
        L: LockAfter<A>,
    {
        (self.inner.write(), Ctx::<A>::next())
    }

    /// [`read`](Self::read) if the lock is available now.
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn try_read<'a, A: Level>(
        &'a self,
        _ctx: &'a mut Ctx<'_, A>,
    ) -> Option<(crate::RwLockReadGuard<'a, T>, Ctx<'a, L>)>
    where
        L: LockAfter<A>,
    {
        Some((self.inner.try_read()?, Ctx::<A>::next()))
    }

    /// [`write`](Self::write) if the lock is available now.
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn try_write<'a, A: Level>(
        &'a self,
        _ctx: &'a mut Ctx<'_, A>,
    ) -> Option<(crate::RwLockWriteGuard<'a, T>, Ctx<'a, L>)>
    where
        L: LockAfter<A>,
    {
        Some((self.inner.try_write()?, Ctx::<A>::next()))
    }

    /// [`read`](Self::read), waiting at most `timeout`.
    #[cfg(not(palisade_loom))]
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn try_read_for<'a, A: Level>(
        &'a self,
        _ctx: &'a mut Ctx<'_, A>,
        timeout: Duration,
    ) -> Result<(crate::RwLockReadGuard<'a, T>, Ctx<'a, L>), LockTimeout>
    where
        L: LockAfter<A>,
    {
        Ok((self.inner.try_read_for(timeout)?, Ctx::<A>::next()))
    }

    /// [`write`](Self::write), waiting at most `timeout`.
    #[cfg(not(palisade_loom))]
    #[cfg_attr(palisade_detect, track_caller)]
    pub fn try_write_for<'a, A: Level>(
        &'a self,
        _ctx: &'a mut Ctx<'_, A>,
        timeout: Duration,
    ) -> Result<(crate::RwLockWriteGuard<'a, T>, Ctx<'a, L>), LockTimeout>
    where
        L: LockAfter<A>,
    {
        Ok((self.inner.try_write_for(timeout)?, Ctx::<A>::next()))
    }

    /// The lock's class: its level's name.
    pub fn class(&self) -> crate::Class {
        self.inner.class()
    }

    /// The protected value, through `&mut self`.
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }

    /// The protected value, consuming the lock.
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<L: Level, T> fmt::Debug for RwLock<L, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ordered::RwLock")
            .field("level", &L::NAME)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "tokio")]
pub use self::asynchronous::{AsyncMutex, AsyncRwLock};

#[cfg(feature = "tokio")]
mod asynchronous {
    use std::fmt;
    use std::future::Future;
    use std::marker::PhantomData;
    use std::time::Duration;

    use super::{Ctx, Level, LockAfter};
    use crate::LockTimeout;
    use crate::tokio as tk;

    /// A tokio [`Mutex`](crate::tokio::Mutex) at lock level `L`: the context survives `.await`.
    pub struct AsyncMutex<L: Level, T> {
        inner: tk::Mutex<T>,
        _level: PhantomData<fn() -> L>,
    }

    impl<L: Level, T> AsyncMutex<L, T> {
        /// An async mutex at level `L`.
        #[must_use]
        pub const fn new(value: T) -> Self {
            Self {
                inner: tk::Mutex::named(L::NAME, value),
                _level: PhantomData,
            }
        }

        /// Locks it from a context at a level before `L`. Cancel-safe: dropping the future
        /// gives up the place in the queue and holds nothing.
        #[cfg_attr(palisade_detect, track_caller)]
        pub fn lock<'a, A: Level>(
            &'a self,
            _ctx: &'a mut Ctx<'_, A>,
        ) -> impl Future<Output = (tk::MutexGuard<'a, T>, Ctx<'a, L>)> + 'a
        where
            L: LockAfter<A>,
        {
            let lock = self.inner.lock();
            async move { (lock.await, Ctx::<A>::next()) }
        }

        /// [`lock`](Self::lock) if the mutex is free now.
        #[cfg_attr(palisade_detect, track_caller)]
        pub fn try_lock<'a, A: Level>(
            &'a self,
            _ctx: &'a mut Ctx<'_, A>,
        ) -> Option<(tk::MutexGuard<'a, T>, Ctx<'a, L>)>
        where
            L: LockAfter<A>,
        {
            Some((self.inner.try_lock()?, Ctx::<A>::next()))
        }

        /// The protected value, consuming the mutex.
        pub fn into_inner(self) -> T {
            self.inner.into_inner()
        }

        /// [`lock`](Self::lock), waiting at most `timeout` (tokio time).
        #[cfg_attr(palisade_detect, track_caller)]
        pub fn try_lock_for<'a, A: Level>(
            &'a self,
            _ctx: &'a mut Ctx<'_, A>,
            timeout: Duration,
        ) -> impl Future<Output = Result<(tk::MutexGuard<'a, T>, Ctx<'a, L>), LockTimeout>> + 'a
        where
            L: LockAfter<A>,
        {
            let lock = self.inner.try_lock_for(timeout);
            async move { Ok((lock.await?, Ctx::<A>::next())) }
        }

        /// The lock's class: its level's name.
        pub fn class(&self) -> crate::Class {
            self.inner.class()
        }

        /// The protected value, through `&mut self`.
        pub fn get_mut(&mut self) -> &mut T {
            self.inner.get_mut()
        }
    }

    impl<L: Level, T> fmt::Debug for AsyncMutex<L, T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ordered::AsyncMutex")
                .field("level", &L::NAME)
                .finish_non_exhaustive()
        }
    }

    /// A tokio [`RwLock`](crate::tokio::RwLock) at lock level `L`.
    pub struct AsyncRwLock<L: Level, T> {
        inner: tk::RwLock<T>,
        _level: PhantomData<fn() -> L>,
    }

    impl<L: Level, T> AsyncRwLock<L, T> {
        /// An async reader-writer lock at level `L`.
        #[must_use]
        pub const fn new(value: T) -> Self {
            Self {
                inner: tk::RwLock::named(L::NAME, value),
                _level: PhantomData,
            }
        }

        /// Shared access from a context at a level before `L`. Cancel-safe.
        #[cfg_attr(palisade_detect, track_caller)]
        pub fn read<'a, A: Level>(
            &'a self,
            _ctx: &'a mut Ctx<'_, A>,
        ) -> impl Future<Output = (tk::RwLockReadGuard<'a, T>, Ctx<'a, L>)> + 'a
        where
            L: LockAfter<A>,
        {
            let read = self.inner.read();
            async move { (read.await, Ctx::<A>::next()) }
        }

        /// Exclusive access from a context at a level before `L`. Cancel-safe.
        #[cfg_attr(palisade_detect, track_caller)]
        pub fn write<'a, A: Level>(
            &'a self,
            _ctx: &'a mut Ctx<'_, A>,
        ) -> impl Future<Output = (tk::RwLockWriteGuard<'a, T>, Ctx<'a, L>)> + 'a
        where
            L: LockAfter<A>,
        {
            let write = self.inner.write();
            async move { (write.await, Ctx::<A>::next()) }
        }

        /// [`read`](Self::read), waiting at most `timeout` (tokio time). Cancel-safe.
        #[cfg_attr(palisade_detect, track_caller)]
        pub fn try_read_for<'a, A: Level>(
            &'a self,
            _ctx: &'a mut Ctx<'_, A>,
            timeout: Duration,
        ) -> impl Future<Output = Result<(tk::RwLockReadGuard<'a, T>, Ctx<'a, L>), LockTimeout>> + 'a
        where
            L: LockAfter<A>,
        {
            let read = self.inner.try_read_for(timeout);
            async move { Ok((read.await?, Ctx::<A>::next())) }
        }

        /// [`write`](Self::write), waiting at most `timeout` (tokio time). Cancel-safe.
        #[cfg_attr(palisade_detect, track_caller)]
        pub fn try_write_for<'a, A: Level>(
            &'a self,
            _ctx: &'a mut Ctx<'_, A>,
            timeout: Duration,
        ) -> impl Future<Output = Result<(tk::RwLockWriteGuard<'a, T>, Ctx<'a, L>), LockTimeout>> + 'a
        where
            L: LockAfter<A>,
        {
            let write = self.inner.try_write_for(timeout);
            async move { Ok((write.await?, Ctx::<A>::next())) }
        }

        /// The protected value, consuming the lock.
        pub fn into_inner(self) -> T {
            self.inner.into_inner()
        }

        /// The lock's class: its level's name.
        pub fn class(&self) -> crate::Class {
            self.inner.class()
        }

        /// The protected value, through `&mut self`.
        pub fn get_mut(&mut self) -> &mut T {
            self.inner.get_mut()
        }
    }

    impl<L: Level, T> fmt::Debug for AsyncRwLock<L, T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ordered::AsyncRwLock")
                .field("level", &L::NAME)
                .finish_non_exhaustive()
        }
    }
}
