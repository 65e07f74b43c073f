//! [`lock_all`]: take any set of locks without deadlocking, whatever order they are named in.

use std::panic::Location;
#[cfg(not(palisade_loom))]
use std::time::{Duration, Instant};

use palisade_core::sync::thread;

use crate::class::Meta;
use crate::detect::{self, Held};
#[cfg(not(palisade_loom))]
use crate::error::LockTimeout;
use crate::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub(crate) mod sealed {
    use palisade_core::sync;

    use crate::class::Meta;
    use crate::detect::Held;

    /// What `lock_all` needs of a lock. Sealed: public in a private module.
    #[allow(unreachable_pub, private_interfaces)]
    pub trait RawLockable<'a> {
        type Raw;
        type Guard;
        fn meta(&self) -> &'a Meta;
        fn addr(&self) -> usize;
        fn read(&self) -> bool;
        fn block(&self) -> Self::Raw;
        fn try_now(&self) -> Option<Self::Raw>;
        #[cfg(not(palisade_loom))]
        fn try_for(&self, timeout: std::time::Duration) -> Option<Self::Raw>;
        fn guard(raw: Self::Raw, held: Held) -> Self::Guard;
    }

    #[allow(private_interfaces)]
    impl<'a, T> RawLockable<'a> for &'a crate::Mutex<T> {
        type Raw = sync::MutexGuard<'a, T>;
        type Guard = crate::MutexGuard<'a, T>;
        fn meta(&self) -> &'a Meta {
            crate::Mutex::meta(self)
        }
        fn addr(&self) -> usize {
            addr!(*self)
        }
        fn read(&self) -> bool {
            false
        }
        fn block(&self) -> Self::Raw {
            self.raw().lock()
        }
        fn try_now(&self) -> Option<Self::Raw> {
            self.raw().try_lock()
        }
        #[cfg(not(palisade_loom))]
        fn try_for(&self, timeout: std::time::Duration) -> Option<Self::Raw> {
            self.raw().try_lock_for(timeout)
        }
        fn guard(raw: Self::Raw, held: Held) -> Self::Guard {
            crate::MutexGuard::from_parts(raw, held)
        }
    }

    #[allow(private_interfaces)]
    impl<'a, T> RawLockable<'a> for &'a crate::RwLock<T> {
        type Raw = sync::RwLockWriteGuard<'a, T>;
        type Guard = crate::RwLockWriteGuard<'a, T>;
        fn meta(&self) -> &'a Meta {
            crate::RwLock::meta(self)
        }
        fn addr(&self) -> usize {
            addr!(*self)
        }
        fn read(&self) -> bool {
            false
        }
        fn block(&self) -> Self::Raw {
            self.raw().write()
        }
        fn try_now(&self) -> Option<Self::Raw> {
            self.raw().try_write()
        }
        #[cfg(not(palisade_loom))]
        fn try_for(&self, timeout: std::time::Duration) -> Option<Self::Raw> {
            self.raw().try_write_for(timeout)
        }
        fn guard(raw: Self::Raw, held: Held) -> Self::Guard {
            crate::RwLockWriteGuard::from_parts(raw, held)
        }
    }

    #[allow(private_interfaces)]
    impl<'a, T> RawLockable<'a> for super::Read<'a, T> {
        type Raw = sync::RwLockReadGuard<'a, T>;
        type Guard = crate::RwLockReadGuard<'a, T>;
        fn meta(&self) -> &'a Meta {
            crate::RwLock::meta(self.0)
        }
        fn addr(&self) -> usize {
            addr!(self.0)
        }
        fn read(&self) -> bool {
            true
        }
        fn block(&self) -> Self::Raw {
            self.0.raw().read()
        }
        fn try_now(&self) -> Option<Self::Raw> {
            self.0.raw().try_read()
        }
        #[cfg(not(palisade_loom))]
        fn try_for(&self, timeout: std::time::Duration) -> Option<Self::Raw> {
            self.0.raw().try_read_for(timeout)
        }
        fn guard(raw: Self::Raw, held: Held) -> Self::Guard {
            crate::RwLockReadGuard::from_parts(raw, held)
        }
    }
}

use sealed::RawLockable;

/// A lock [`lock_all`] can take: `&Mutex<T>` (giving a [`MutexGuard`]), `&RwLock<T>` (write
/// access, a [`RwLockWriteGuard`]) or [`Read`]`(&RwLock<T>)` (shared access, a
/// [`RwLockReadGuard`]). Sealed.
pub trait Lockable<'a>: RawLockable<'a> {}

impl<'a, T> Lockable<'a> for &'a Mutex<T> {}
impl<'a, T> Lockable<'a> for &'a RwLock<T> {}
impl<'a, T> Lockable<'a> for Read<'a, T> {}

/// Shared access to an [`RwLock`] inside a [`lock_all`] set (a bare `&RwLock` means write access).
#[derive(Debug)]
pub struct Read<'a, T>(pub &'a RwLock<T>);

// Keep the guard types in the docs' links.
const _: Option<(
    MutexGuard<'_, ()>,
    RwLockReadGuard<'_, ()>,
    RwLockWriteGuard<'_, ()>,
)> = None;

/// A set of locks [`lock_all`] takes together: a tuple of up to eight [`Lockable`]s (guards come
/// back in the same tuple positions), or an array or `Vec` of one kind of lock.
pub trait LockSet<'a> {
    /// The guards, in the positions the locks were given in.
    type Guards;

    #[doc(hidden)]
    fn take(
        self,
        timeout: Timeout,
        site: &'static Location<'static>,
    ) -> Result<Self::Guards, TakeError>;
}

/// How long `take` may block on each lock (an absolute deadline), or forever.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Timeout {
    #[cfg(not(palisade_loom))]
    deadline: Option<(Instant, Duration)>,
}

/// Why `take` failed; only a timeout (never under loom, which has no timed waits).
#[doc(hidden)]
#[derive(Debug)]
pub struct TakeError {
    #[cfg(not(palisade_loom))]
    timeout: LockTimeout,
}

impl Timeout {
    const NEVER: Timeout = Timeout {
        #[cfg(not(palisade_loom))]
        deadline: None,
    };
}

/// Blocks on one lock of the set: until it is free, or until the deadline. After the first
/// round (`retry`), a passed deadline fails at once even if this lock is free, so a set whose
/// members keep turning busy in turn cannot keep the caller past its deadline.
fn block<'a, L: RawLockable<'a>>(
    lock: &L,
    timeout: Timeout,
    retry: bool,
) -> Result<L::Raw, TakeError> {
    #[cfg(not(palisade_loom))]
    if let Some((deadline, total)) = timeout.deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let raw = if retry && left.is_zero() {
            None
        } else {
            lock.try_for(left)
        };
        return raw.ok_or_else(|| TakeError {
            timeout: LockTimeout::new(lock.meta().class(), total, lock.meta().holder()),
        });
    }
    let _ = (timeout, retry);
    Ok(lock.block())
}

/// The positions of the locks in address order: the one global order every `lock_all` uses.
#[track_caller]
fn address_order<const N: usize>(addrs: [usize; N]) -> [usize; N] {
    let mut order: [usize; N] = std::array::from_fn(|i| i);
    order.sort_unstable_by_key(|&i| addrs[i]);
    for pair in order.windows(2) {
        assert!(
            addrs[pair[0]] != addrs[pair[1]],
            "lock_all: the same lock is given twice (positions {} and {}); it would wait for itself",
            pair[0].min(pair[1]),
            pair[0].max(pair[1])
        );
    }
    order
}

fn check_group(metas: &[(&Meta, usize, bool)], site: &'static Location<'static>) {
    detect::acquire_group(metas, site);
}

macro_rules! tuple_set {
    ($n:literal: $($idx:tt $L:ident $r:ident),+) => {
        impl<'a, $($L: Lockable<'a>),+> LockSet<'a> for ($($L,)+) {
            type Guards = ($($L::Guard,)+);

            fn take(self, timeout: Timeout, site: &'static Location<'static>) -> Result<Self::Guards, TakeError> {
                let addrs: [usize; $n] = [$(self.$idx.addr()),+];
                let order = address_order(addrs);
                let metas = [$((self.$idx.meta(), addrs[$idx], self.$idx.read())),+];
                let sorted: [(&Meta, usize, bool); $n] = std::array::from_fn(|i| metas[order[i]]);
                // Checked (and pushed on the held stack) before blocking on anything; the
                // tokens pop them again if the wait times out.
                check_group(&sorted, site);
                let helds = ($(Held::for_lock(addrs[$idx]),)+);
                let mut first = order[0];
                let mut retry = false;
                loop {
                    let mut raws = ($(None::<$L::Raw>,)+);
                    match first {
                        $($idx => raws.$idx = Some(block(&self.$idx, timeout, retry)?),)+
                        _ => {}
                    }
                    let mut blocker = None;
                    for &i in &order {
                        if i == first {
                            continue;
                        }
                        let got = match i {
                            $($idx => { raws.$idx = self.$idx.try_now(); raws.$idx.is_some() })+
                            _ => true,
                        };
                        if !got {
                            blocker = Some(i);
                            break;
                        }
                    }
                    match blocker {
                        // Release everything, then wait on the lock that was busy: this thread
                        // never blocks while holding part of the set.
                        Some(i) => {
                            drop(raws);
                            first = i;
                            retry = true;
                            thread::yield_now();
                        }
                        None => {
                            if let ($(Some($r),)+) = raws {
                                $(detect::set_holder(self.$idx.meta(), site);)+
                                return Ok(($($L::guard($r, helds.$idx),)+));
                            }
                        }
                    }
                }
            }
        }
    };
}

tuple_set!(1: 0 A a);
tuple_set!(2: 0 A a, 1 B b);
tuple_set!(3: 0 A a, 1 B b, 2 C c);
tuple_set!(4: 0 A a, 1 B b, 2 C c, 3 D d);
tuple_set!(5: 0 A a, 1 B b, 2 C c, 3 D d, 4 E e);
tuple_set!(6: 0 A a, 1 B b, 2 C c, 3 D d, 4 E e, 5 F f);
tuple_set!(7: 0 A a, 1 B b, 2 C c, 3 D d, 4 E e, 5 F f, 6 G g);
tuple_set!(8: 0 A a, 1 B b, 2 C c, 3 D d, 4 E e, 5 F f, 6 G g, 7 H h);

fn take_many<'a, L: Lockable<'a>>(
    locks: &[L],
    timeout: Timeout,
    site: &'static Location<'static>,
) -> Result<Vec<L::Guard>, TakeError> {
    let mut order: Vec<usize> = (0..locks.len()).collect();
    order.sort_unstable_by_key(|&i| locks[i].addr());
    for pair in order.windows(2) {
        assert!(
            locks[pair[0]].addr() != locks[pair[1]].addr(),
            "lock_all: the same lock is given twice (positions {} and {}); it would wait for itself",
            pair[0].min(pair[1]),
            pair[0].max(pair[1])
        );
    }
    let sorted: Vec<_> = order
        .iter()
        .map(|&i| (locks[i].meta(), locks[i].addr(), locks[i].read()))
        .collect();
    check_group(&sorted, site);
    let mut helds: Vec<Option<Held>> = locks
        .iter()
        .map(|l| Some(Held::for_lock(l.addr())))
        .collect();
    let Some(&lowest) = order.first() else {
        return Ok(Vec::new());
    };
    let mut first = lowest;
    let mut retry = false;
    loop {
        let mut raws: Vec<Option<L::Raw>> = locks.iter().map(|_| None).collect();
        raws[first] = Some(block(&locks[first], timeout, retry)?);
        let blocker = order.iter().copied().filter(|&i| i != first).find(|&i| {
            raws[i] = locks[i].try_now();
            raws[i].is_none()
        });
        match blocker {
            Some(i) => {
                drop(raws);
                first = i;
                retry = true;
                thread::yield_now();
            }
            None => {
                for lock in locks {
                    detect::set_holder(lock.meta(), site);
                }
                return Ok(raws
                    .into_iter()
                    .zip(&mut helds)
                    .filter_map(|(raw, held)| Some(L::guard(raw?, held.take()?)))
                    .collect());
            }
        }
    }
}

impl<'a, L: Lockable<'a>> LockSet<'a> for Vec<L> {
    type Guards = Vec<L::Guard>;

    fn take(
        self,
        timeout: Timeout,
        site: &'static Location<'static>,
    ) -> Result<Self::Guards, TakeError> {
        take_many(&self, timeout, site)
    }
}

impl<'a, L: Lockable<'a>, const N: usize> LockSet<'a> for [L; N] {
    type Guards = [L::Guard; N];

    fn take(
        self,
        timeout: Timeout,
        site: &'static Location<'static>,
    ) -> Result<Self::Guards, TakeError> {
        let guards = take_many(&self, timeout, site)?;
        // `take_many` returns one guard per lock, so the conversion always succeeds; were it to
        // fail, the guards (and the locks) would be released and the set taken again.
        match <[L::Guard; N]>::try_from(guards) {
            Ok(guards) => Ok(guards),
            Err(_) => self.take(timeout, site),
        }
    }
}

/// Takes every lock of `set` without risking a deadlock over them, whatever order the locks are
/// given in and whatever other threads hold. Locks this thread already holds are not part of
/// the set: it blocks while holding those, as any acquisition does, so call it holding none
/// (the detector reports a held lock whose order the set inverts).
///
/// The locks are taken in one global order (by address), and the thread never blocks while
/// holding part of the set: it blocks on one lock, *tries* the rest, and if one is busy it
/// releases everything, then blocks on the busy one and starts over (the algorithm of C++'s
/// `std::lock`). So two threads calling `lock_all((&a, &b))` and `lock_all((&b, &a))` never
/// deadlock, nor does a `lock_all` against a thread that holds `b` and waits for `a`.
///
/// The guards come back in the positions of the locks. With detection on, the set is checked
/// against the locks this thread already holds (which are ordered before every lock of the
/// set), not among itself: locks of one class (two accounts) are safe to take together here.
///
/// ```
/// use palisade_lock::{Mutex, lock_all};
///
/// let from = Mutex::named("account", 100);
/// let to = Mutex::named("account", 0);
///
/// // Another thread may transfer the other way at the same time: no deadlock either way.
/// let (mut a, mut b) = lock_all((&from, &to));
/// *a -= 30;
/// *b += 30;
/// assert_eq!((*a, *b), (70, 30));
/// ```
///
/// # Panics
///
/// If the same lock is given twice: the thread would wait for itself.
#[track_caller]
pub fn lock_all<'a, S: LockSet<'a>>(set: S) -> S::Guards {
    match set.take(Timeout::NEVER, Location::caller()) {
        Ok(guards) => guards,
        // Only a deadline makes `take` fail, and there is none.
        Err(_) => unreachable!("lock_all waits without a deadline"),
    }
}

/// [`lock_all`] with a deadline: gives up with a [`LockTimeout`] naming the lock it was waiting
/// for once `timeout` has passed, holding none of the set.
///
/// # Panics
///
/// If the same lock is given twice.
#[cfg(not(palisade_loom))]
#[track_caller]
pub fn lock_all_for<'a, S: LockSet<'a>>(
    set: S,
    timeout: Duration,
) -> Result<S::Guards, LockTimeout> {
    let timeout = Timeout {
        deadline: Instant::now().checked_add(timeout).map(|at| (at, timeout)),
    };
    set.take(timeout, Location::caller()).map_err(|e| e.timeout)
}
