//! The error of the timed acquisitions.

use std::error::Error;
use std::fmt;
use std::panic::Location;
use std::time::Duration;

use crate::Class;

/// A timed acquisition (`try_lock_for`, `try_read_for`, `try_write_for`, `lock_all_for`) gave up.
///
/// Names the lock's class and, when detection is compiled in, the site that took the lock last
/// (its holder while it is held), which is usually the first thing to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockTimeout {
    class: Class,
    waited: Duration,
    held_at: Option<&'static Location<'static>>,
}

impl LockTimeout {
    #[cfg_attr(palisade_loom, allow(dead_code))]
    pub(crate) fn new(
        class: Class,
        waited: Duration,
        held_at: Option<&'static Location<'static>>,
    ) -> Self {
        Self {
            class,
            waited,
            held_at,
        }
    }

    /// The class of the lock that could not be taken.
    pub fn class(&self) -> Class {
        self.class
    }

    /// How long the acquisition waited.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Where the lock was taken by its holder, when known (detection compiled in).
    pub fn held_at(&self) -> Option<&'static Location<'static>> {
        self.held_at
    }
}

impl fmt::Display for LockTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}",
            self.waited, self.class
        )?;
        match self.held_at {
            Some(site) => write!(f, ", held by the code that took it at {site}"),
            None => Ok(()),
        }
    }
}

impl Error for LockTimeout {}
