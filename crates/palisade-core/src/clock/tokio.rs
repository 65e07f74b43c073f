//! [`TokioClock`]: follows tokio's clock, so paused-time tests drive it.

use crate::{Clock, Instant};

/// A clock that reads [`tokio::time::Instant::now`], so tokio's test clock drives it.
///
/// Under `#[tokio::test(start_paused = true)]` (or after `tokio::time::pause()`) time stands still
/// until `tokio::time::advance` moves it or the runtime auto-advances to the next timer, and a
/// primitive built with a `TokioClock` sees exactly that time: a test of "the breaker half-opens
/// after 30 s" runs in microseconds and never flakes. Outside a paused runtime it reads the OS
/// monotonic clock, like `std::time::Instant` (use [`FastClock`](crate::FastClock) in production).
///
/// Its origin is tokio's time when it was created; clones share it. Create it inside the runtime
/// whose clock it should follow: a paused runtime's clock may stand earlier than that origin, and
/// the clock then reads [`Instant::ZERO`] until tokio's time passes it.
///
/// Read it inside that runtime too (its tasks and its `spawn_blocking` threads). A read with no
/// runtime context (a `std::thread`, or the same thread after `block_on` has returned) gets the
/// OS clock, not the paused one: after a paused test advanced an hour, such a read comes out
/// near [`Instant::ZERO`], an hour behind. Monotonicity holds among reads of the same tokio
/// clock only.
///
/// Needs the `tokio` feature (on by default). Pausing needs tokio's `test-util` feature in your
/// dev-dependencies.
///
/// ```
/// use palisade_core::{Clock, TokioClock};
/// use std::time::Duration;
///
/// #[tokio::main(flavor = "current_thread", start_paused = true)]
/// async fn main() {
///     let clock = TokioClock::new();
///     let start = clock.now();
///     tokio::time::sleep(Duration::from_secs(3600)).await; // returns at once: time is paused
///     assert_eq!(clock.elapsed(start), Duration::from_secs(3600));
/// }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose origin is tokio's current time.
    #[must_use]
    pub fn new() -> TokioClock {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> TokioClock {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    #[inline]
    fn now(&self) -> Instant {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.origin);
        Instant::ZERO + elapsed
    }
}
