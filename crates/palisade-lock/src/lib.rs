#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

#[macro_use]
mod macros;

mod acquire;
mod class;
#[cfg(feature = "deadlock-detection")]
pub mod deadlock;
pub mod detect;
mod error;
mod graph;
mod multi;
mod mutex;
pub mod ordered;
mod rwlock;
#[cfg(feature = "tokio")]
pub mod tokio;

pub use class::Class;
pub use error::LockTimeout;
#[cfg(not(palisade_loom))]
pub use multi::lock_all_for;
pub use multi::{LockSet, Lockable, Read, lock_all};
pub use mutex::{Mutex, MutexGuard};
pub use palisade_core::ConfigError;
pub use rwlock::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The order graph on its own, for the loom models (not a stable API).
#[doc(hidden)]
pub mod __model {
    pub use crate::graph::{Added, EdgeInfo, Graph};
}
