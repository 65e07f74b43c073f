//! Adaptive concurrency limits: algorithms that move a bulkhead's limit from what finished work
//! reports, in the manner of Netflix's `concurrency-limits`.
//!
//! Each finished piece of work yields a [`Sample`] (its round-trip time, the permits in flight
//! as it ended, and whether it failed from overload); a [`LimitAlgorithm`] turns the stream
//! of samples into a limit that always stays within its `[min_limit, max_limit]`. The algorithms
//! are pure logic: no clock reads, no I/O, no randomness, so the same samples give the same
//! limits.
//!
//! | algorithm | signal | pick it when |
//! |---|---|---|
//! | [`Aimd`] | drops and timeouts only | latency says little (mixed request sizes) and the downstream reports overload clearly: rejections, timeouts |
//! | [`Vegas`] | queueing delay over the lowest RTT seen | latency is steady for a given load: it finds the knee where a queue starts to form and keeps a small one |
//! | [`Gradient2`] | short RTT against a long-term average | latency drifts over time: it reacts to RTT rising above its recent norm, not above an all-time minimum |
//!
//! All three
//! - grow only while the application uses the limit: a sample whose `in_flight` is below half
//!   the limit never raises it, so an idle or lightly used bulkhead does not drift upward;
//! - treat a dropped sample as overload and cut the limit multiplicatively;
//! - handle any input without panicking: a zero RTT counts as one nanosecond, `Duration::MAX`
//!   as a very long RTT, and any `in_flight` is accepted.

use std::fmt;
use std::time::Duration;

use crate::MAX_CONCURRENT;
use crate::error::ConfigError;

/// One measurement of a finished piece of work guarded by a permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sample {
    /// How long the work took (acquire to release).
    pub rtt: Duration,
    /// Permits in flight as the work ended (its own included). An adaptive bulkhead reads it
    /// as the permit is released: work that kept the limit busy reports a busy bulkhead.
    pub in_flight: u32,
    /// The work failed in a way that signals overload (timeout, downstream rejection).
    pub dropped: bool,
}

impl Sample {
    /// A sample of work that took `rtt`, ended with `in_flight` permits in use (its own
    /// included), and failed from overload if `dropped`.
    pub const fn new(rtt: Duration, in_flight: u32, dropped: bool) -> Sample {
        Sample {
            rtt,
            in_flight,
            dropped,
        }
    }
}

/// How the work a permit guarded ended, as an adaptive bulkhead's limit algorithm should see
/// it. Dropping a permit reports [`Success`](Outcome::Success); `release_as` reports the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Outcome {
    /// The work finished: its latency is a measurement of the dependency (the default).
    #[default]
    Success,
    /// The work failed in a way that signals overload (a timeout, a 503, a rejection
    /// downstream): the algorithms cut the limit.
    Dropped,
    /// The outcome says nothing about capacity (a validation error answered at once, a caller
    /// that went away): no sample.
    Ignored,
}

/// An algorithm that adjusts a concurrency limit from samples.
pub trait LimitAlgorithm: Send + fmt::Debug + 'static {
    /// The limit to start with (within the algorithm's [min, max]).
    fn initial_limit(&self) -> u32;

    /// Feeds one sample and returns the new limit, within [min, max]. The bulkhead clamps an
    /// answer outside them to the bounds [`bounds`](LimitAlgorithm::bounds) reports.
    fn update(&mut self, sample: Sample) -> u32;

    /// The bounds [min, max] this algorithm keeps the limit in, within `1..=2^30−1` and
    /// `min <= max` (checked when the bulkhead is built). Read after every update, to clamp it.
    fn bounds(&self) -> (u32, u32);
}

impl<A: LimitAlgorithm + ?Sized> LimitAlgorithm for Box<A> {
    fn initial_limit(&self) -> u32 {
        (**self).initial_limit()
    }

    fn update(&mut self, sample: Sample) -> u32 {
        (**self).update(sample)
    }

    fn bounds(&self) -> (u32, u32) {
        (**self).bounds()
    }
}

// ---------------------------------------------------------------------------------------------
// Shared parts
// ---------------------------------------------------------------------------------------------

/// The `min_limit`, `max_limit` and `initial_limit` setters of a builder with a `bounds` field.
macro_rules! bounds_knobs {
    () => {
        /// The lowest limit (default 1, allowed `1..=2^30−1`).
        pub fn min_limit(mut self, min_limit: u32) -> Self {
            self.bounds.min = min_limit;
            self
        }

        /// The highest limit (default 1000, allowed `min_limit..=2^30−1`).
        pub fn max_limit(mut self, max_limit: u32) -> Self {
            self.bounds.max = max_limit;
            self
        }

        /// The limit to start with (default 20, allowed `min_limit..=max_limit`).
        pub fn initial_limit(mut self, initial_limit: u32) -> Self {
            self.bounds.initial = initial_limit;
            self
        }
    };
}

/// `min_limit`, `max_limit` and `initial_limit`, shared by the three builders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bounds {
    min: u32,
    max: u32,
    initial: u32,
}

impl Bounds {
    const DEFAULT: Bounds = Bounds {
        min: 1,
        max: 1000,
        initial: 20,
    };

    fn validate(self) -> Result<Bounds, ConfigError> {
        if !(1..=MAX_CONCURRENT).contains(&self.min) {
            return Err(ConfigError::out_of_range(
                "min_limit",
                format!("in 1..={MAX_CONCURRENT}"),
                self.min,
            ));
        }
        if !(self.min..=MAX_CONCURRENT).contains(&self.max) {
            return Err(ConfigError::out_of_range(
                "max_limit",
                format!(
                    "in min_limit..={MAX_CONCURRENT} ({}..={MAX_CONCURRENT})",
                    self.min
                ),
                self.max,
            ));
        }
        if !(self.min..=self.max).contains(&self.initial) {
            return Err(ConfigError::out_of_range(
                "initial_limit",
                format!("in min_limit..=max_limit ({}..={})", self.min, self.max),
                self.initial,
            ));
        }
        Ok(self)
    }

    fn clamp(self, limit: f64) -> f64 {
        if limit.is_nan() {
            return f64::from(self.min);
        }
        limit.clamp(f64::from(self.min), f64::from(self.max))
    }

    /// The limit as reported: rounded to the nearest whole permit, within [min, max].
    fn report(self, limit: f64) -> u32 {
        // `as` saturates (and maps NaN to 0); the clamp restores the bounds.
        (limit.round() as u32).clamp(self.min, self.max)
    }
}

/// Validates a `backoff_ratio`: a multiplicative decrease in [0.5, 1.0).
fn validate_backoff(ratio: f64) -> Result<f64, ConfigError> {
    if (0.5..1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(ConfigError::out_of_range(
            "backoff_ratio",
            "in [0.5, 1.0)",
            ratio,
        ))
    }
}

/// An RTT in nanoseconds as `f64`, at least 1 ns (so ratios never divide by zero).
fn nanos(rtt: Duration) -> f64 {
    (rtt.as_nanos() as f64).max(1.0)
}

/// Nanoseconds back to a `Duration`: whole nanoseconds, saturating at `Duration::MAX`.
fn duration(ns: f64) -> Duration {
    if ns < u64::MAX as f64 {
        // `as` rounds toward zero and maps NaN to 0.
        Duration::from_nanos(ns as u64)
    } else {
        Duration::try_from_secs_f64(ns / 1e9).unwrap_or(Duration::MAX)
    }
}

/// `log10(limit)`, at least 1: the scale of Vegas' thresholds and steps.
fn log10_at_least_one(limit: f64) -> f64 {
    limit.log10().max(1.0)
}

/// `limit` as a whole number of samples, rounded up (the length of one window).
fn window(limit: f64) -> u64 {
    limit.ceil().max(1.0) as u64
}

/// Whether `in_flight` leaves more than half of `limit` unused: the application is not using
/// the limit, so samples say nothing about whether a higher one would be safe.
fn app_limited(in_flight: u32, limit: f64) -> bool {
    2.0 * f64::from(in_flight) < limit
}

// ---------------------------------------------------------------------------------------------
// AIMD
// ---------------------------------------------------------------------------------------------

/// Additive increase, multiplicative decrease: the limit grows by one permit per window of
/// successes and shrinks by `backoff_ratio` on overload.
///
/// - **Increase** (classic per-RTT increase): every successful sample whose `in_flight` is at
///   least half the limit counts as one acknowledgement; a limit's worth of them (one "round
///   trip" of the whole window) raises the limit by 1. Samples with less in flight are
///   app-limited and count for nothing, so a lightly used limit never grows.
/// - **Slow start** (on by default): until the first overload, every counted success raises the
///   limit by 1, which doubles it per window, as TCP's slow start.
/// - **Decrease**: a dropped sample, or one slower than `timeout`, multiplies the limit by
///   `backoff_ratio` (rounding down) and ends slow start. At most one decrease per window:
///   after a decrease, further overload signals are ignored for the next `limit` samples (the
///   limit after the decrease; every sample counts, whatever its outcome),
///   because the work that completes right after a decrease mostly started before it (TCP's
///   fast recovery reacts once per round trip for the same reason). Without this, a burst of
///   timeouts from work in flight together would multiply the limit down to the floor.
///
/// | knob | default | allowed |
/// |---|---|---|
/// | `min_limit` | 1 | `1..=2^30−1` |
/// | `max_limit` | 1000 | `min_limit..=2^30−1` |
/// | `initial_limit` | 20 | `min_limit..=max_limit` |
/// | `backoff_ratio` | 0.9 | `[0.5, 1.0)` |
/// | `timeout` | 5 s | more than 0 |
/// | `slow_start` | true | |
#[derive(Debug, Clone)]
pub struct Aimd {
    bounds: Bounds,
    backoff_ratio: f64,
    timeout: Duration,
    limit: u32,
    slow_start: bool,
    /// Counted successes towards the next +1 (congestion avoidance).
    acked: u32,
    /// Samples left, after a decrease, during which overload does not decrease again.
    cooldown: u32,
}

/// Builds an [`Aimd`]; [`build`](AimdBuilder::build) validates every knob.
#[derive(Debug, Clone)]
#[must_use]
pub struct AimdBuilder {
    bounds: Bounds,
    backoff_ratio: f64,
    timeout: Duration,
    slow_start: bool,
}

impl Default for AimdBuilder {
    fn default() -> Self {
        AimdBuilder {
            bounds: Bounds::DEFAULT,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(5),
            slow_start: true,
        }
    }
}

impl AimdBuilder {
    bounds_knobs!();

    /// The factor the limit is multiplied by on overload (default 0.9, allowed `[0.5, 1.0)`).
    pub fn backoff_ratio(mut self, backoff_ratio: f64) -> Self {
        self.backoff_ratio = backoff_ratio;
        self
    }

    /// A sample slower than this counts as overload, as a drop does (default 5 s, allowed more
    /// than zero).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether to double the limit per window until the first overload (default true).
    pub fn slow_start(mut self, slow_start: bool) -> Self {
        self.slow_start = slow_start;
        self
    }

    /// Validates every knob and builds the algorithm.
    pub fn build(self) -> Result<Aimd, ConfigError> {
        let bounds = self.bounds.validate()?;
        let backoff_ratio = validate_backoff(self.backoff_ratio)?;
        if self.timeout.is_zero() {
            return Err(ConfigError::out_of_range(
                "timeout",
                "more than 0",
                self.timeout,
            ));
        }
        Ok(Aimd {
            bounds,
            backoff_ratio,
            timeout: self.timeout,
            limit: bounds.initial,
            slow_start: self.slow_start,
            acked: 0,
            cooldown: 0,
        })
    }
}

impl Aimd {
    /// A builder with the defaults (see the table on [`Aimd`]).
    pub fn builder() -> AimdBuilder {
        AimdBuilder::default()
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Whether the limit still doubles per window (no overload seen yet).
    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }
}

impl Default for Aimd {
    /// [`Aimd::builder`] with every default.
    fn default() -> Self {
        let b = AimdBuilder::default();
        Aimd {
            bounds: b.bounds,
            backoff_ratio: b.backoff_ratio,
            timeout: b.timeout,
            limit: b.bounds.initial,
            slow_start: b.slow_start,
            acked: 0,
            cooldown: 0,
        }
    }
}

impl LimitAlgorithm for Aimd {
    fn initial_limit(&self) -> u32 {
        self.bounds.initial
    }

    fn update(&mut self, sample: Sample) -> u32 {
        // Checked before counting this sample down, so that a cut ignores the next `limit`
        // samples, not `limit - 1`.
        let cooling = self.cooldown > 0;
        self.cooldown = self.cooldown.saturating_sub(1);
        if sample.dropped || sample.rtt > self.timeout {
            self.slow_start = false;
            self.acked = 0;
            if !cooling {
                // Rounding down makes every decrease remove at least one permit.
                let reduced = (f64::from(self.limit) * self.backoff_ratio) as u32;
                self.limit = reduced.clamp(self.bounds.min, self.bounds.max);
                self.cooldown = self.limit;
            }
        } else if !app_limited(sample.in_flight, f64::from(self.limit)) {
            if self.slow_start {
                self.limit = self.limit.saturating_add(1);
            } else {
                self.acked = self.acked.saturating_add(1);
                if self.acked >= self.limit {
                    self.acked = 0;
                    self.limit = self.limit.saturating_add(1);
                }
            }
        }
        self.limit = self.limit.clamp(self.bounds.min, self.bounds.max);
        self.limit
    }

    fn bounds(&self) -> (u32, u32) {
        (self.bounds.min, self.bounds.max)
    }
}

// ---------------------------------------------------------------------------------------------
// Vegas
// ---------------------------------------------------------------------------------------------

/// TCP Vegas, as Netflix's `VegasLimit`: estimates the queue the limit builds up from how far
/// the RTT is above the lowest RTT seen (`rtt_noload`; dropped samples don't count: a failure
/// can answer fast), and keeps that queue small.
///
/// For each sample, `queue = limit × (1 − rtt_noload / rtt)`. With `l = max(1, log10(limit))`:
/// `alpha = alpha × l`, `beta = beta × l`, `threshold = l`.
///
/// - **Slow start** (on by default): while `queue <= threshold`, each sample that is not
///   app-limited raises the limit by 1 (doubling it per window); it ends at the first drop or
///   the first sample with `queue > threshold`.
/// - **Then**, per window of `limit` samples (each sample moves the limit by `l / limit`):
///   up by `l` while `queue < alpha`, down by `l` while `queue > beta`, unchanged between.
///   App-limited samples (`in_flight` below half the limit) never raise it.
/// - **Drops**: multiply the limit by `backoff_ratio`, at most once per window (see [`Aimd`]).
/// - **Re-probing the base RTT**: the lowest RTT only ever falls, so after the downstream gets
///   slower for good, every RTT would look like queueing and the limit would sink. Every
///   `probe_multiplier × limit` samples Vegas re-measures `rtt_noload` as the lowest RTT over
///   the next two windows. Unlike Envoy's gradient controller, which drops the limit to a floor
///   while it re-measures (the bursts of 503s of envoyproxy/envoy#8337), Vegas keeps serving:
///   it lowers the limit only by the standing queue it estimates (capped at `beta × l` and at a
///   quarter of the limit), just enough for that queue to drain so the re-measured RTT is a
///   no-load one, and restores the pre-probe limit when the probe ends unless a drop arrived
///   during it (its last sample included). Keeping the full limit instead would re-measure the
///   queue into `rtt_noload` and let the limit creep up by as much as `beta × l` at every
///   probe. If drops arrived since the previous probe, the estimated queue is not to be
///   trusted (a limit that started above the overload point never saw an unloaded RTT), and
///   the probe lowers the limit by a quarter.
///
/// | knob | default | allowed |
/// |---|---|---|
/// | `min_limit` | 1 | `1..=2^30−1` |
/// | `max_limit` | 1000 | `min_limit..=2^30−1` |
/// | `initial_limit` | 20 | `min_limit..=max_limit` |
/// | `alpha` | 3.0 | `[1.0, 100.0]` |
/// | `beta` | 6.0 | `[alpha, 100.0]` |
/// | `probe_multiplier` | 30 | `1..=100000` |
/// | `backoff_ratio` | 0.9 | `[0.5, 1.0)` |
/// | `slow_start` | true | |
#[derive(Debug, Clone)]
pub struct Vegas {
    bounds: Bounds,
    alpha: f64,
    beta: f64,
    probe_multiplier: u32,
    backoff_ratio: f64,
    limit: f64,
    /// The lowest RTT seen (ns), `None` before the first sample.
    rtt_noload: Option<f64>,
    slow_start: bool,
    /// Samples since the last probe ended.
    since_probe: u64,
    /// A drop arrived since the last probe ended.
    dropped_since_probe: bool,
    probe: Option<Probe>,
    /// Samples left during which a drop does not decrease again.
    cooldown: u64,
}

/// A re-measurement of `rtt_noload` in progress.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// Samples left in the measurement.
    remaining: u64,
    /// The lowest RTT (ns) seen in it so far.
    min_rtt: f64,
    /// The limit before the probe, restored at its end.
    restore: f64,
    /// A drop arrived during the probe: keep the (lowered) limit at its end.
    dropped: bool,
}

/// Builds a [`Vegas`]; [`build`](VegasBuilder::build) validates every knob.
#[derive(Debug, Clone)]
#[must_use]
pub struct VegasBuilder {
    bounds: Bounds,
    alpha: f64,
    beta: f64,
    probe_multiplier: u32,
    backoff_ratio: f64,
    slow_start: bool,
}

impl Default for VegasBuilder {
    fn default() -> Self {
        VegasBuilder {
            bounds: Bounds::DEFAULT,
            alpha: 3.0,
            beta: 6.0,
            probe_multiplier: 30,
            backoff_ratio: 0.9,
            slow_start: true,
        }
    }
}

impl VegasBuilder {
    bounds_knobs!();

    /// Below `alpha × log10(limit)` queued requests the limit grows (default 3.0, allowed
    /// `[1.0, 100.0]`).
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// Above `beta × log10(limit)` queued requests the limit shrinks (default 6.0, allowed
    /// `[alpha, 100.0]`).
    pub fn beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// Re-measure the no-load RTT every `probe_multiplier × limit` samples (default 30,
    /// allowed `1..=100000`).
    pub fn probe_multiplier(mut self, probe_multiplier: u32) -> Self {
        self.probe_multiplier = probe_multiplier;
        self
    }

    /// The factor the limit is multiplied by on a drop (default 0.9, allowed `[0.5, 1.0)`).
    pub fn backoff_ratio(mut self, backoff_ratio: f64) -> Self {
        self.backoff_ratio = backoff_ratio;
        self
    }

    /// Whether to double the limit per window until a queue forms or a drop arrives (default
    /// true).
    pub fn slow_start(mut self, slow_start: bool) -> Self {
        self.slow_start = slow_start;
        self
    }

    /// Validates every knob and builds the algorithm.
    pub fn build(self) -> Result<Vegas, ConfigError> {
        let bounds = self.bounds.validate()?;
        if !(1.0..=100.0).contains(&self.alpha) {
            return Err(ConfigError::out_of_range(
                "alpha",
                "in [1.0, 100.0]",
                self.alpha,
            ));
        }
        if !(self.alpha..=100.0).contains(&self.beta) {
            return Err(ConfigError::out_of_range(
                "beta",
                format!("in [alpha, 100.0] ([{:?}, 100.0])", self.alpha),
                self.beta,
            ));
        }
        if !(1..=100_000).contains(&self.probe_multiplier) {
            return Err(ConfigError::out_of_range(
                "probe_multiplier",
                "in 1..=100000",
                self.probe_multiplier,
            ));
        }
        let backoff_ratio = validate_backoff(self.backoff_ratio)?;
        Ok(Vegas::from_parts(
            bounds,
            self.alpha,
            self.beta,
            self.probe_multiplier,
            backoff_ratio,
            self.slow_start,
        ))
    }
}

impl Vegas {
    /// A builder with the defaults (see the table on [`Vegas`]).
    pub fn builder() -> VegasBuilder {
        VegasBuilder::default()
    }

    fn from_parts(
        bounds: Bounds,
        alpha: f64,
        beta: f64,
        probe_multiplier: u32,
        backoff_ratio: f64,
        slow_start: bool,
    ) -> Vegas {
        Vegas {
            bounds,
            alpha,
            beta,
            probe_multiplier,
            backoff_ratio,
            limit: f64::from(bounds.initial),
            rtt_noload: None,
            slow_start,
            since_probe: 0,
            dropped_since_probe: false,
            probe: None,
            cooldown: 0,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.bounds.report(self.limit)
    }

    /// The lowest RTT seen since the last re-measurement (`None` before the first sample).
    pub fn rtt_noload(&self) -> Option<Duration> {
        self.rtt_noload.map(duration)
    }

    /// Whether the no-load RTT is being re-measured right now.
    pub fn is_probing(&self) -> bool {
        self.probe.is_some()
    }

    /// Whether the limit still doubles per window (no queue or drop seen yet).
    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }

    /// A dropped sample; `probing` if it counted towards a probe (which then noted it),
    /// `cooling` if it arrived within the window after the last cut.
    fn on_drop(&mut self, probing: bool, cooling: bool) {
        self.slow_start = false;
        if !probing {
            self.dropped_since_probe = true;
        }
        if !cooling {
            self.limit = self.bounds.clamp(self.limit * self.backoff_ratio);
            self.cooldown = window(self.limit);
        }
    }

    /// Counts one sample towards the probe; returns whether one is in progress (this sample
    /// started, continued or ended it). A `dropped` sample in it, its last one included, keeps
    /// the lowered limit at its end.
    fn advance_probe(&mut self, rtt: f64, noload: f64, dropped: bool) -> bool {
        if let Some(probe) = &mut self.probe {
            probe.dropped |= dropped;
            if !dropped {
                probe.min_rtt = probe.min_rtt.min(rtt);
            }
            probe.remaining = probe.remaining.saturating_sub(1);
            if probe.remaining == 0 {
                let probe = *probe;
                self.probe = None;
                self.since_probe = 0;
                if probe.min_rtt.is_finite() {
                    self.rtt_noload = Some(probe.min_rtt);
                }
                if !probe.dropped {
                    self.limit = self.bounds.clamp(self.limit.max(probe.restore));
                }
            }
            return true;
        }
        self.since_probe = self.since_probe.saturating_add(1);
        let due = (u64::from(self.probe_multiplier)).saturating_mul(window(self.limit));
        if self.since_probe < due {
            return false;
        }
        // Lower the limit by the standing queue this sample shows, so that it drains and the
        // RTTs of the next two windows show no queue; never by more than beta × l or a quarter.
        // Drops since the last probe contradict a small estimated queue: rtt_noload was
        // never seen unloaded (say, the limit started above the overload point), so lower by
        // the full quarter to find a lower RTT.
        let quarter = self.limit / 4.0;
        let drain = if self.dropped_since_probe || dropped {
            quarter
        } else {
            let queue = self.limit * (1.0 - noload / rtt);
            let beta = self.beta * log10_at_least_one(self.limit);
            queue.min(beta).min(quarter).max(0.0)
        };
        self.dropped_since_probe = false;
        let restore = self.limit;
        self.limit = self.bounds.clamp(self.limit - drain);
        self.probe = Some(Probe {
            remaining: 2 * window(self.limit),
            min_rtt: f64::INFINITY,
            restore,
            dropped,
        });
        true
    }
}

impl Default for Vegas {
    /// [`Vegas::builder`] with every default.
    fn default() -> Self {
        let b = VegasBuilder::default();
        Vegas::from_parts(
            b.bounds,
            b.alpha,
            b.beta,
            b.probe_multiplier,
            b.backoff_ratio,
            b.slow_start,
        )
    }
}

impl LimitAlgorithm for Vegas {
    fn initial_limit(&self) -> u32 {
        self.bounds.initial
    }

    fn update(&mut self, sample: Sample) -> u32 {
        let rtt = nanos(sample.rtt);
        // Checked before counting this sample down, so that a cut ignores the next `limit`
        // samples, not `limit - 1`.
        let cooling = self.cooldown > 0;
        self.cooldown = self.cooldown.saturating_sub(1);
        let noload = match self.rtt_noload {
            Some(noload) if noload <= rtt || sample.dropped => noload,
            // A failure's RTT (a refused connect answers in microseconds) says nothing about
            // the path's no-load RTT: kept out of `rtt_noload`, as out of a probe's minimum.
            _ if sample.dropped => rtt,
            _ => {
                self.rtt_noload = Some(rtt);
                rtt
            }
        };
        let probing = self.advance_probe(rtt, noload, sample.dropped);
        if sample.dropped {
            self.on_drop(probing, cooling);
        } else if !probing {
            let queue = self.limit * (1.0 - noload / rtt);
            let l = log10_at_least_one(self.limit);
            let grow = !app_limited(sample.in_flight, self.limit);
            if self.slow_start && queue > l {
                self.slow_start = false;
            }
            if self.slow_start {
                if grow {
                    self.limit += 1.0;
                }
            } else if queue > self.beta * l {
                self.limit -= l / self.limit;
            } else if queue < self.alpha * l && grow {
                self.limit += l / self.limit;
            }
            self.limit = self.bounds.clamp(self.limit);
        }
        self.bounds.report(self.limit)
    }

    fn bounds(&self) -> (u32, u32) {
        (self.bounds.min, self.bounds.max)
    }
}

// ---------------------------------------------------------------------------------------------
// Gradient2
// ---------------------------------------------------------------------------------------------

/// Netflix's `Gradient2Limit`: compares each sample's RTT with a long-term average and lets
/// the limit grow while the RTT stays within `rtt_tolerance` of that average.
///
/// - `long_rtt` is the mean of the first samples (up to 10), then an exponential moving average
///   over `long_window` samples (weight `2 / (long_window + 1)`). If `long_rtt / rtt > 2`, it
///   is also multiplied by 0.95, so an average that lagged behind a latency drop catches up in
///   tens of samples instead of hundreds.
/// - `gradient = clamp(rtt_tolerance × long_rtt / rtt, 0.5, 1.0)`; a dropped sample counts
///   as the steepest gradient, 0.5 (with no `queue_size`, see below), and does not feed the
///   average (its RTT measured a failure).
///   After a drop cuts the limit, further drops are ignored for the next `limit` samples,
///   `limit` as it was before the cut (the work in flight at the cut reports the same
///   overload; cutting once per window keeps a burst of timeouts from collapsing the limit to
///   its minimum).
/// - `new = limit × gradient + queue_size`, then smoothed:
///   `limit = limit × (1 − smoothing) + new × smoothing`, applied once per window: each sample
///   applies `1 / limit` of that change (so about `limit` samples, one round trip of the work
///   in flight, apply it once), and a drop applies it whole, at most once per window. Netflix's
///   `Gradient2Limit` applies a whole step per sample, which grows the limit by about
///   `queue_size × smoothing × limit` per window: it overshoots and saws through the timeout
///   point under a steady load.
/// - A drop gets no `queue_size` headroom: `new = limit × 0.5`, so it cuts the limit by
///   `smoothing / 2` of itself (10% by default), multiplicatively, however small the limit.
///   It never raises the limit, and drops that keep coming take it down to `min_limit`. (With
///   the headroom, a limit below `2 × queue_size` would rise on a drop.)
/// - App-limited samples (`in_flight` below half the limit) may lower the limit, never raise
///   it. The limit is kept as `f64` and reported rounded, within `[min_limit, max_limit]`.
///
/// There is no slow start: at a gradient of 1 the limit grows by `queue_size × smoothing`
/// per window.
///
/// | knob | default | allowed |
/// |---|---|---|
/// | `min_limit` | 1 | `1..=2^30−1` |
/// | `max_limit` | 1000 | `min_limit..=2^30−1` |
/// | `initial_limit` | 20 | `min_limit..=max_limit` |
/// | `long_window` | 600 | `1..=100000` |
/// | `rtt_tolerance` | 1.5 | `[1.0, 10.0]` |
/// | `queue_size` | 4 | `0..=10000` |
/// | `smoothing` | 0.2 | `(0.0, 1.0]` |
#[derive(Debug, Clone)]
pub struct Gradient2 {
    bounds: Bounds,
    long_window: u32,
    rtt_tolerance: f64,
    queue_size: f64,
    smoothing: f64,
    limit: f64,
    /// Long-term RTT (ns); meaningless while `samples == 0`.
    long_rtt: f64,
    /// RTT samples fed to `long_rtt` (saturating).
    samples: u64,
    /// Samples left before a drop may cut the limit again.
    cooldown: u32,
}

/// Builds a [`Gradient2`]; [`build`](Gradient2Builder::build) validates every knob.
#[derive(Debug, Clone)]
#[must_use]
pub struct Gradient2Builder {
    bounds: Bounds,
    long_window: u32,
    rtt_tolerance: f64,
    queue_size: u32,
    smoothing: f64,
}

impl Default for Gradient2Builder {
    fn default() -> Self {
        Gradient2Builder {
            bounds: Bounds::DEFAULT,
            long_window: 600,
            rtt_tolerance: 1.5,
            queue_size: 4,
            smoothing: 0.2,
        }
    }
}

impl Gradient2Builder {
    bounds_knobs!();

    /// How many samples the long-term RTT averages over (default 600, allowed `1..=100000`).
    pub fn long_window(mut self, long_window: u32) -> Self {
        self.long_window = long_window;
        self
    }

    /// How far above the long-term RTT a sample may be before the limit shrinks (default 1.5,
    /// allowed `[1.0, 10.0]`).
    pub fn rtt_tolerance(mut self, rtt_tolerance: f64) -> Self {
        self.rtt_tolerance = rtt_tolerance;
        self
    }

    /// The headroom added on top of `limit × gradient` (default 4, allowed `0..=10000`); not
    /// on a dropped sample, which always cuts the limit.
    pub fn queue_size(mut self, queue_size: u32) -> Self {
        self.queue_size = queue_size;
        self
    }

    /// How much of each new estimate enters the limit (default 0.2, allowed `(0.0, 1.0]`).
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = smoothing;
        self
    }

    /// Validates every knob and builds the algorithm.
    pub fn build(self) -> Result<Gradient2, ConfigError> {
        let bounds = self.bounds.validate()?;
        if !(1..=100_000).contains(&self.long_window) {
            return Err(ConfigError::out_of_range(
                "long_window",
                "in 1..=100000",
                self.long_window,
            ));
        }
        if !(1.0..=10.0).contains(&self.rtt_tolerance) {
            return Err(ConfigError::out_of_range(
                "rtt_tolerance",
                "in [1.0, 10.0]",
                self.rtt_tolerance,
            ));
        }
        if self.queue_size > 10_000 {
            return Err(ConfigError::out_of_range(
                "queue_size",
                "in 0..=10000",
                self.queue_size,
            ));
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return Err(ConfigError::out_of_range(
                "smoothing",
                "in (0.0, 1.0]",
                self.smoothing,
            ));
        }
        Ok(Gradient2::from_builder(Gradient2Builder { bounds, ..self }))
    }
}

impl Gradient2 {
    /// Samples averaged plainly before the moving average takes over.
    const WARMUP: u64 = 10;

    /// A builder with the defaults (see the table on [`Gradient2`]).
    pub fn builder() -> Gradient2Builder {
        Gradient2Builder::default()
    }

    fn from_builder(b: Gradient2Builder) -> Gradient2 {
        Gradient2 {
            bounds: b.bounds,
            long_window: b.long_window,
            rtt_tolerance: b.rtt_tolerance,
            queue_size: f64::from(b.queue_size),
            smoothing: b.smoothing,
            limit: f64::from(b.bounds.initial),
            long_rtt: 0.0,
            samples: 0,
            cooldown: 0,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.bounds.report(self.limit)
    }

    /// The long-term RTT (`None` before the first sample that was not dropped).
    pub fn long_rtt(&self) -> Option<Duration> {
        (self.samples > 0).then(|| duration(self.long_rtt))
    }

    fn track(&mut self, short: f64) {
        self.samples = self.samples.saturating_add(1);
        let warmup = Self::WARMUP.min(u64::from(self.long_window));
        if self.samples <= warmup {
            self.long_rtt += (short - self.long_rtt) / self.samples as f64;
        } else {
            let weight = 2.0 / (f64::from(self.long_window) + 1.0);
            self.long_rtt = self.long_rtt * (1.0 - weight) + short * weight;
        }
        if self.long_rtt / short > 2.0 {
            self.long_rtt *= 0.95;
        }
    }
}

impl Default for Gradient2 {
    /// [`Gradient2::builder`] with every default.
    fn default() -> Self {
        Gradient2::from_builder(Gradient2Builder::default())
    }
}

impl LimitAlgorithm for Gradient2 {
    fn initial_limit(&self) -> u32 {
        self.bounds.initial
    }

    fn update(&mut self, sample: Sample) -> u32 {
        // Checked before counting this sample down, so that a cut ignores the next `limit`
        // samples, not `limit - 1`.
        let cooling = self.cooldown > 0;
        self.cooldown = self.cooldown.saturating_sub(1);
        let estimate = if sample.dropped {
            if cooling {
                // The work that was in flight at the last cut reports the same overload.
                return self.bounds.report(self.limit);
            }
            self.cooldown = self.bounds.report(self.limit);
            // The steepest gradient, without the `queue_size` headroom: a drop is overload,
            // so the limit is cut by `smoothing / 2` of itself. (With the headroom, a limit
            // below `2 × queue_size` would rise on a drop, and sustained overload would hold
            // it at `2 × queue_size` instead of taking it down to `min_limit`.)
            self.limit * 0.5
        } else {
            let short = nanos(sample.rtt);
            self.track(short);
            let gradient = (self.rtt_tolerance * self.long_rtt / short).clamp(0.5, 1.0);
            self.limit * gradient + self.queue_size
        };
        // One step of the smoothed formula per window of samples (about `limit` of them):
        // a sample moves the limit by its share of the step; a drop, once per window, by all of
        // it. (A whole step per sample grows the limit by ~`queue_size × smoothing × limit` per
        // window, which overshoots and then saws through the timeout point.)
        let step = (estimate - self.limit) * self.smoothing;
        let next = if sample.dropped {
            self.limit + step
        } else {
            self.limit + step / self.limit.max(1.0)
        };
        if next <= self.limit || !app_limited(sample.in_flight, self.limit) {
            self.limit = self.bounds.clamp(next);
        }
        self.bounds.report(self.limit)
    }

    fn bounds(&self) -> (u32, u32) {
        (self.bounds.min, self.bounds.max)
    }
}
