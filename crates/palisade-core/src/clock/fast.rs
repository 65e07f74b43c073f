//! [`FastClock`]: the default clock, a calibrated CPU counter.

use std::fmt;
use std::sync::OnceLock;

use crate::{Clock, Instant};

/// The process-wide calibrated counter and the raw reading that is the origin of every `FastClock`.
struct Calibrated {
    clock: quanta::Clock,
    origin: u64,
}

static CALIBRATED: OnceLock<Calibrated> = OnceLock::new();

/// The default clock: monotonic nanoseconds from the CPU's invariant time-stamp counter.
///
/// On x86-64 with an invariant TSC (and on aarch64, with the generic timer) `now` is one counter
/// read plus a multiply and a shift: it is [`quanta`](https://docs.rs/quanta)'s calibrated counter,
/// as fast as `quanta::Clock::now` and about 2.4x faster than [`std::time::Instant::now`] on our
/// machines (see `docs/benchmarks.md`). Where the CPU has no
/// usable counter, it reads the OS monotonic clock instead, at `std::time::Instant` speed.
///
/// The counter is calibrated against the OS monotonic clock once per process, by the first
/// [`FastClock::new`] (quanta busy-waits for at most 200 ms, usually a few); later calls are free.
/// Call `FastClock::new()` at start-up if that first-call latency matters. All `FastClock`s share
/// one origin (that first call), so their instants are comparable with each other.
///
/// `FastClock` is `Copy` and one pointer wide. Reads are monotonic on each thread; across threads
/// one may trail another it synchronized with by a few nanoseconds (see [`Clock`]'s contract).
///
/// ```
/// use palisade_core::{Clock, FastClock};
///
/// let clock = FastClock::new();
/// let start = clock.now();
/// let later = clock.now();
/// assert!(later >= start);
/// ```
#[derive(Clone, Copy)]
pub struct FastClock {
    calibrated: &'static Calibrated,
}

impl FastClock {
    /// The process-wide fast clock, calibrated on first use.
    #[must_use]
    pub fn new() -> FastClock {
        let calibrated = CALIBRATED.get_or_init(|| {
            let clock = quanta::Clock::new();
            let origin = clock.raw();
            Calibrated { clock, origin }
        });
        FastClock { calibrated }
    }
}

impl Default for FastClock {
    fn default() -> FastClock {
        FastClock::new()
    }
}

impl Clock for FastClock {
    #[inline]
    fn now(&self) -> Instant {
        let Calibrated { clock, origin } = self.calibrated;
        // `delta_as_nanos` is the counter's offset from the origin scaled to nanoseconds; it is
        // zero, never negative, if another core's counter reads a hair behind the origin.
        Instant::from_nanos(clock.delta_as_nanos(*origin, clock.raw()))
    }
}

impl fmt::Debug for FastClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastClock")
            .field("now", &self.now())
            .finish()
    }
}
