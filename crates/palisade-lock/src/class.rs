//! Lock classes and the per-lock metadata every palisade lock carries.

use std::fmt;
use std::panic::Location;

/// The class of a lock: the unit the detector orders, as Linux's lockdep does.
///
/// Every lock constructed at the same source location shares a class (`Mutex::new` records its
/// caller), so the thousand `Account` locks built by one constructor are one node in the order
/// graph, and an order seen between any two instances teaches the detector about all of them.
/// `Mutex::named` gives an explicit class instead: locks with the same name share it wherever
/// they are built, and lock levels (see [`ordered`](crate::ordered)) name their class after the level.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Class {
    /// Locks constructed at this source location.
    Declared(&'static Location<'static>),
    /// Locks constructed with this explicit name.
    Named(&'static str),
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Class::Declared(site) => write!(f, "the lock declared at {site}"),
            Class::Named(name) => write!(f, "`{name}`"),
        }
    }
}

impl fmt::Debug for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Class::Declared(site) => f
                .debug_tuple("Declared")
                .field(&format_args!("{site}"))
                .finish(),
            Class::Named(name) => f.debug_tuple("Named").field(name).finish(),
        }
    }
}

/// What a palisade lock carries besides the raw lock: its class, and with detection on, the
/// class's id in the order graph (assigned on first use) and the site of its latest acquisition.
pub(crate) struct Meta {
    class: Class,
    /// Class id in the detector, 0 until first use. A cache of a registry lookup, so plain `std`
    /// atomics (never a loom object: detection is compiled out of loom builds).
    #[cfg(palisade_detect)]
    pub(crate) id: std::sync::atomic::AtomicU32,
    /// Address of the `Location` of the latest acquisition, for timeout errors; 0 if none.
    #[cfg(palisade_detect)]
    pub(crate) holder: std::sync::atomic::AtomicUsize,
}

impl Meta {
    pub(crate) const fn new(class: Class) -> Self {
        Self {
            class,
            #[cfg(palisade_detect)]
            id: std::sync::atomic::AtomicU32::new(0),
            #[cfg(palisade_detect)]
            holder: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub(crate) const fn class(&self) -> Class {
        self.class
    }

    /// Where the lock was taken last (by its current holder while it is held), when detection
    /// is compiled in and the site is known.
    #[cfg_attr(palisade_loom, allow(dead_code))]
    pub(crate) fn holder(&self) -> Option<&'static Location<'static>> {
        #[cfg(palisade_detect)]
        {
            crate::detect::holder_site(self)
        }
        #[cfg(not(palisade_detect))]
        {
            None
        }
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.class, f)
    }
}
