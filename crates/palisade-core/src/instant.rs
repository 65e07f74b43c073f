//! [`Instant`]: a point on a [`Clock`](crate::Clock)'s monotonic timeline.

use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::time::Duration;

/// A point in time read from a [`Clock`](crate::Clock): whole nanoseconds since that clock's origin.
///
/// It is one `u64` (it fits in an `AtomicU64`, which is how the palisade primitives store it) and
/// covers 584 years from the origin. An `Instant` is only meaningful next to other instants of
/// the same clock and its clones: each clock type has its own origin (see [`Clock`](crate::Clock)).
///
/// Arithmetic never panics. The operators saturate at [`Instant::ZERO`] and [`Instant::MAX`]
/// (`instant - later` is a zero [`Duration`], as for [`std::time::Instant`] since Rust 1.60); the
/// `checked_*` methods say when a result would not fit.
///
/// ```
/// use palisade_core::Instant;
/// use std::time::Duration;
///
/// let t = Instant::from_nanos(1_500);
/// assert_eq!(t + Duration::from_micros(1), Instant::from_nanos(2_500));
/// assert_eq!(t - Instant::from_nanos(500), Duration::from_nanos(1_000));
/// assert_eq!(Instant::ZERO - t, Duration::ZERO); // saturates instead of panicking
/// assert_eq!(t.checked_duration_since(Instant::from_nanos(2_000)), None);
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The clock's origin.
    pub const ZERO: Instant = Instant(0);

    /// The latest representable instant, `u64::MAX` nanoseconds after the origin.
    pub const MAX: Instant = Instant(u64::MAX);

    /// The instant `nanos` nanoseconds after the clock's origin.
    #[inline]
    #[must_use]
    pub const fn from_nanos(nanos: u64) -> Instant {
        Instant(nanos)
    }

    /// Nanoseconds since the clock's origin: the raw value, for storing in an atomic.
    #[inline]
    #[must_use]
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time since the clock's origin as a [`Duration`].
    #[inline]
    #[must_use]
    pub const fn as_duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// The time elapsed from `earlier` to `self`, or zero if `earlier` is later than `self`.
    #[inline]
    #[must_use]
    pub const fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// The time elapsed from `earlier` to `self`, or `None` if `earlier` is later than `self`.
    #[inline]
    #[must_use]
    pub const fn checked_duration_since(self, earlier: Instant) -> Option<Duration> {
        match self.0.checked_sub(earlier.0) {
            Some(nanos) => Some(Duration::from_nanos(nanos)),
            None => None,
        }
    }

    /// `self + duration`, or `None` if the result would be later than [`Instant::MAX`].
    #[inline]
    #[must_use]
    pub const fn checked_add(self, duration: Duration) -> Option<Instant> {
        match nanos_of(duration) {
            Some(d) => match self.0.checked_add(d) {
                Some(nanos) => Some(Instant(nanos)),
                None => None,
            },
            None => None,
        }
    }

    /// `self - duration`, or `None` if the result would be earlier than [`Instant::ZERO`].
    #[inline]
    #[must_use]
    pub const fn checked_sub(self, duration: Duration) -> Option<Instant> {
        match nanos_of(duration) {
            Some(d) => match self.0.checked_sub(d) {
                Some(nanos) => Some(Instant(nanos)),
                None => None,
            },
            None => None,
        }
    }

    /// `self + duration`, clamped to [`Instant::MAX`].
    #[inline]
    #[must_use]
    pub const fn saturating_add(self, duration: Duration) -> Instant {
        match self.checked_add(duration) {
            Some(t) => t,
            None => Instant::MAX,
        }
    }

    /// `self - duration`, clamped to [`Instant::ZERO`].
    #[inline]
    #[must_use]
    pub const fn saturating_sub(self, duration: Duration) -> Instant {
        match self.checked_sub(duration) {
            Some(t) => t,
            None => Instant::ZERO,
        }
    }
}

/// A duration as whole nanoseconds, or `None` if it exceeds `u64::MAX` nanoseconds.
#[inline]
const fn nanos_of(duration: Duration) -> Option<u64> {
    let nanos = duration.as_nanos();
    if nanos > u64::MAX as u128 {
        None
    } else {
        Some(nanos as u64)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    /// Saturating: see [`Instant::saturating_add`].
    #[inline]
    fn add(self, rhs: Duration) -> Instant {
        self.saturating_add(rhs)
    }
}

impl AddAssign<Duration> for Instant {
    #[inline]
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;

    /// Saturating: see [`Instant::saturating_sub`].
    #[inline]
    fn sub(self, rhs: Duration) -> Instant {
        self.saturating_sub(rhs)
    }
}

impl SubAssign<Duration> for Instant {
    #[inline]
    fn sub_assign(&mut self, rhs: Duration) {
        *self = *self - rhs;
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;

    /// Saturating: see [`Instant::saturating_duration_since`].
    #[inline]
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

impl fmt::Debug for Instant {
    /// Shows the time since the clock's origin: `Instant(1.5s)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instant({:?})", self.as_duration())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_offset_from_the_origin() {
        assert_eq!(
            format!("{:?}", Instant::from_nanos(1_500_000_000)),
            "Instant(1.5s)"
        );
    }

    #[test]
    fn durations_beyond_u64_nanos_saturate() {
        let huge = Duration::MAX;
        assert_eq!(Instant::ZERO.checked_add(huge), None);
        assert_eq!(Instant::ZERO + huge, Instant::MAX);
        assert_eq!(Instant::MAX.checked_sub(huge), None);
        assert_eq!(Instant::MAX - huge, Instant::ZERO);
        let exact = Duration::from_nanos(u64::MAX);
        assert_eq!(Instant::ZERO.checked_add(exact), Some(Instant::MAX));
        assert_eq!(Instant::MAX.checked_sub(exact), Some(Instant::ZERO));
    }

    #[test]
    fn assign_operators_match_the_binary_ones() {
        let mut t = Instant::from_nanos(10);
        t += Duration::from_nanos(5);
        assert_eq!(t, Instant::from_nanos(15));
        t -= Duration::from_nanos(20);
        assert_eq!(t, Instant::ZERO);
    }
}
