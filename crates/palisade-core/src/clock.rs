//! The [`Clock`] trait and its three implementations.
//!
//! | clock | reads | use it for |
//! |---|---|---|
//! | [`FastClock`] (default) | the CPU's invariant time-stamp counter, scaled to nanoseconds (OS monotonic clock where there is none) | production |
//! | [`TokioClock`] | tokio's clock, which `tokio::time::pause` and `advance` drive | async tests with `#[tokio::test(start_paused = true)]` |
//! | [`ManualClock`] | a shared counter you advance by hand | pure-logic, proptest and loom tests |

use std::fmt;
use std::time::Duration;

use crate::Instant;

mod fast;
mod manual;
#[cfg(feature = "tokio")]
mod tokio;

pub use self::fast::FastClock;
pub use self::manual::ManualClock;
#[cfg(feature = "tokio")]
pub use self::tokio::TokioClock;

/// A monotonic source of [`Instant`]s, injected into every time-dependent palisade primitive.
///
/// Reading the clock is on the hot path of a rate limiter or a circuit breaker, so implementations
/// are cheap to call and cheap to clone (a clone reads the same timeline: clones of a
/// [`ManualClock`] all see one `advance`). An [`Instant`] counts nanoseconds from the clock's
/// origin, so instants are comparable only with instants of the same clock and its clones:
///
/// - [`FastClock`]: one origin for the whole process, so all `FastClock`s agree;
/// - [`TokioClock`]: the moment that `TokioClock` was created (clones share it);
/// - [`ManualClock`]: the value it was created with (clones share it).
///
/// # Contract
///
/// On one thread, `now` never returns an instant earlier than one it returned before, for the
/// same clock and its clones. Across threads, `ManualClock` and `TokioClock` keep that too
/// (a read that happens after another, by any synchronization, is not earlier), while
/// `FastClock` may trail by a few nanoseconds: an unfenced counter read can execute before the
/// load that synchronized with the other thread, and cores' counters agree only to within a
/// few nanoseconds. `TokioClock` keeps it only among reads that see the same tokio clock: a
/// read outside any runtime (a `std::thread`, or after `block_on` returns) reads the OS clock,
/// which can stand far behind a paused runtime's advanced time (see [`TokioClock`]). Every
/// consumer therefore uses saturating arithmetic on instants, so a clock that steps back yields
/// a zero duration, never a panic or a wrapped value.
///
/// # Example: a custom clock
///
/// ```
/// use palisade_core::{Clock, Instant};
///
/// /// A clock that always reads the same instant: handy for a unit test of pure logic.
/// #[derive(Clone, Debug)]
/// struct Frozen(Instant);
///
/// impl Clock for Frozen {
///     fn now(&self) -> Instant {
///         self.0
///     }
/// }
///
/// let clock = Frozen(Instant::from_nanos(42));
/// assert_eq!(clock.now().as_nanos(), 42);
/// assert_eq!(clock.elapsed(Instant::ZERO).as_nanos(), 42);
/// ```
pub trait Clock: Clone + Send + Sync + fmt::Debug + 'static {
    /// The current instant on this clock's timeline.
    fn now(&self) -> Instant;

    /// Time elapsed since `earlier` on this clock, or zero if `earlier` is in the future.
    #[inline]
    fn elapsed(&self, earlier: Instant) -> Duration {
        self.now().saturating_duration_since(earlier)
    }
}
