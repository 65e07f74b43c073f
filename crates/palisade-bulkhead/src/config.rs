//! The builder, its validated configuration, and the queue disciplines.

use std::fmt;
use std::time::Duration;

use palisade_core::{Clock, FastClock};

use crate::adaptive::LimitAlgorithm;
use crate::bulkhead::Bulkhead;
use crate::error::ConfigError;

/// The highest concurrency limit: 2^30 − 1 permits.
pub const MAX_CONCURRENT: u32 = (1 << 30) - 1;
/// The longest wait queue: 2^30 waiters.
pub const MAX_QUEUED: usize = 1 << 30;
/// The longest `max_wait`, and the longest CoDel interval: one day.
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Which waiter gets a permit that frees up, and when a waiter is turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Discipline {
    /// First come, first served (the default): the longest waiter gets the next permit.
    #[default]
    Fifo,
    /// Newest first: the latest waiter gets the next permit. Under overload the oldest waiters
    /// are the ones whose callers have most likely given up; serving the newest keeps the
    /// latency of the requests that are served low, and `max_wait` sheds the old ones.
    Lifo,
    /// First come, first served, with CoDel's controlled delay: while the queue has not been
    /// empty for a whole `interval`, a new waiter waits at most `target` (a standing queue
    /// means overload: shed fast); otherwise at most `interval` (a burst: let it drain). Both
    /// bounded by `max_wait`. Facebook's and Netflix's server queues use this shape.
    CoDel {
        /// How long a waiter may wait while the queue is standing (e.g. 5 ms).
        target: Duration,
        /// How long the queue may stay non-empty before it counts as standing, and how long a
        /// waiter may wait otherwise (e.g. 100 ms).
        interval: Duration,
    },
}

impl Discipline {
    /// CoDel with the classic 5 ms target and 100 ms interval.
    pub const fn codel() -> Discipline {
        Discipline::CoDel {
            target: Duration::from_millis(5),
            interval: Duration::from_millis(100),
        }
    }
}

/// Checks the knobs of waiting, shared by [`BulkheadBuilder`] and the partitioned builder.
pub(crate) fn validate_waiting(
    max_queued: usize,
    max_wait: Option<Duration>,
    discipline: Discipline,
) -> Result<(), ConfigError> {
    if max_queued > MAX_QUEUED {
        return Err(ConfigError::out_of_range(
            "max_queued",
            format!("in 0..={MAX_QUEUED}"),
            max_queued,
        ));
    }
    if let Some(wait) = max_wait
        && wait > MAX_WAIT
    {
        return Err(ConfigError::out_of_range("max_wait", "at most 24 h", wait));
    }
    if let Discipline::CoDel { target, interval } = discipline {
        if target < Duration::from_millis(1) || target > interval {
            return Err(ConfigError::out_of_range(
                "discipline",
                "a CoDel target of at least 1 ms and at most the interval",
                target,
            ));
        }
        if interval > MAX_WAIT {
            return Err(ConfigError::out_of_range(
                "discipline",
                "a CoDel interval of at most 24 h",
                interval,
            ));
        }
    }
    Ok(())
}

/// The validated configuration, shared by the bulkhead.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) max_concurrent: u32,
    pub(crate) max_queued: usize,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) discipline: Discipline,
}

/// Builds a [`Bulkhead`]; every knob is validated by [`build`](BulkheadBuilder::build).
///
/// | knob | default | allowed |
/// |---|---|---|
/// | `max_concurrent` (the argument of [`Bulkhead::builder`]) | — | `1..=2^30−1` |
/// | [`max_queued`](BulkheadBuilder::max_queued) | `max_concurrent` | `0..=2^30` (0: never wait) |
/// | [`max_wait`](BulkheadBuilder::max_wait) | none (wait for a permit as long as it takes) | `0..=24 h` (0: never wait) |
/// | [`discipline`](BulkheadBuilder::discipline) | [`Discipline::Fifo`] | CoDel: `1 ms <= target <= interval <= 24 h` |
/// | [`clock`](BulkheadBuilder::clock) | [`FastClock`] | any [`Clock`] |
///
/// An [adaptive](Bulkhead::adaptive) bulkhead starts at its algorithm's initial limit instead of
/// `max_concurrent`, and its algorithm's bounds must lie in `1..=2^30−1`.
pub struct BulkheadBuilder<C: Clock = FastClock> {
    settings: Settings,
    max_queued_set: bool,
    clock: C,
    algorithm: Option<Box<dyn LimitAlgorithm>>,
}

impl<C: Clock> fmt::Debug for BulkheadBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadBuilder")
            .field("settings", &self.settings)
            .field("clock", &self.clock)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl BulkheadBuilder<FastClock> {
    pub(crate) fn new(max_concurrent: u32) -> BulkheadBuilder<FastClock> {
        BulkheadBuilder {
            settings: Settings {
                max_concurrent,
                max_queued: 0,
                max_wait: None,
                discipline: Discipline::Fifo,
            },
            max_queued_set: false,
            clock: FastClock::new(),
            algorithm: None,
        }
    }

    pub(crate) fn adaptive(algorithm: Box<dyn LimitAlgorithm>) -> BulkheadBuilder<FastClock> {
        BulkheadBuilder {
            algorithm: Some(algorithm),
            ..BulkheadBuilder::new(0)
        }
    }
}

impl<C: Clock> BulkheadBuilder<C> {
    /// How many callers may wait for a permit at once; more are refused with
    /// [`Reason::QueueFull`](crate::Reason::QueueFull). 0 refuses at once with
    /// [`Reason::Full`](crate::Reason::Full) when every permit is in use.
    pub fn max_queued(mut self, max_queued: usize) -> Self {
        self.settings.max_queued = max_queued;
        self.max_queued_set = true;
        self
    }

    /// How long a caller may wait in the queue; then it is refused with
    /// [`Reason::TimedOut`](crate::Reason::TimedOut). Waiting with a deadline needs a tokio
    /// runtime with the time driver.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.settings.max_wait = Some(max_wait);
        self
    }

    /// Who gets a permit that frees up (see [`Discipline`]).
    pub fn discipline(mut self, discipline: Discipline) -> Self {
        self.settings.discipline = discipline;
        self
    }

    /// The clock CoDel and an adaptive bulkhead read (latency of each permit): `TokioClock`
    /// to follow tokio's (paused) time in tests.
    pub fn clock<C2: Clock>(self, clock: C2) -> BulkheadBuilder<C2> {
        BulkheadBuilder {
            settings: self.settings,
            max_queued_set: self.max_queued_set,
            clock,
            algorithm: self.algorithm,
        }
    }

    /// Validates every knob and builds the bulkhead.
    pub fn build(mut self) -> Result<Bulkhead<C>, ConfigError> {
        let s = &mut self.settings;
        if let Some(algorithm) = &self.algorithm {
            let (min, max) = algorithm.bounds();
            if min < 1 || max > MAX_CONCURRENT || min > max {
                return Err(ConfigError::out_of_range(
                    "algorithm bounds",
                    format!("within 1..={MAX_CONCURRENT}, min <= max"),
                    (min, max),
                ));
            }
            s.max_concurrent = algorithm.initial_limit();
            if !(min..=max).contains(&s.max_concurrent) {
                return Err(ConfigError::out_of_range(
                    "algorithm initial_limit",
                    format!("within its bounds ({min}..={max})"),
                    s.max_concurrent,
                ));
            }
        }
        if !(1..=MAX_CONCURRENT).contains(&s.max_concurrent) {
            return Err(ConfigError::out_of_range(
                "max_concurrent",
                format!("in 1..={MAX_CONCURRENT}"),
                s.max_concurrent,
            ));
        }
        if !self.max_queued_set {
            s.max_queued = s.max_concurrent as usize;
        }
        validate_waiting(s.max_queued, s.max_wait, s.discipline)?;
        Ok(Bulkhead::from_settings(
            self.settings,
            self.clock,
            self.algorithm,
        ))
    }
}
