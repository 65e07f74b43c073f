//! [`ManualClock`]: time that moves only when a test moves it.

use std::fmt;
use std::time::Duration;

use crate::sync::Arc;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::{Clock, Instant};

/// A clock that moves only when you [`advance`](ManualClock::advance) it; clones share its time.
///
/// For pure-logic unit tests, proptest and loom models, where there is no runtime to pause: build
/// the primitive with a clone, keep one, and move time exactly where the test needs it. It is
/// built on [`crate::sync`], so under the `palisade_loom` cfg loom explores its races too.
///
/// Time never goes backwards: [`advance_to`](ManualClock::advance_to) an earlier instant is a
/// no-op, and advancing past [`Instant::MAX`] stops there.
///
/// ```
/// use palisade_core::{Clock, Instant, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let seen_by_the_primitive = clock.clone();
/// assert_eq!(seen_by_the_primitive.now(), Instant::ZERO);
///
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(seen_by_the_primitive.now().as_duration(), Duration::from_millis(1500));
///
/// clock.advance_to(Instant::ZERO); // never backwards
/// assert_eq!(seen_by_the_primitive.now().as_duration(), Duration::from_millis(1500));
/// ```
#[derive(Clone)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at [`Instant::ZERO`].
    #[must_use]
    pub fn new() -> ManualClock {
        ManualClock::starting_at(Instant::ZERO)
    }

    /// A clock at `start`.
    #[must_use]
    pub fn starting_at(start: Instant) -> ManualClock {
        ManualClock {
            nanos: Arc::new(AtomicU64::new(start.as_nanos())),
        }
    }

    /// Moves time forward by `by` (clamped at [`Instant::MAX`]) and returns the new time.
    ///
    /// Concurrent advances add up: two threads advancing by 1 s each move the clock by 2 s.
    pub fn advance(&self, by: Duration) -> Instant {
        let by = Instant::ZERO.saturating_add(by).as_nanos();
        let step = |nanos: u64| Some(nanos.saturating_add(by));
        // Release: whatever the advancing thread wrote before is visible to a reader that sees
        // the new time. The closure never returns `None`, so the update always succeeds.
        let previous = match self
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, step)
        {
            Ok(previous) | Err(previous) => previous,
        };
        Instant::from_nanos(previous.saturating_add(by))
    }

    /// Moves time forward to `to` if that is later than now, and returns the time after the call.
    pub fn advance_to(&self, to: Instant) -> Instant {
        let previous = self.nanos.fetch_max(to.as_nanos(), Ordering::AcqRel);
        Instant::from_nanos(previous.max(to.as_nanos()))
    }
}

impl Default for ManualClock {
    fn default() -> ManualClock {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> Instant {
        Instant::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}
