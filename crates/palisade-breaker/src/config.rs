//! The builder and its validated configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::{Clock, FastClock};

use crate::breaker::CircuitBreaker;
use crate::error::ConfigError;
use crate::event::Transition;
use crate::window::nanos;

/// The longest duration any knob accepts (open durations, windows, thresholds, waits).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// The most calls a count window may hold.
pub const MAX_WINDOW_CALLS: u32 = 1 << 30;
/// The most buckets a window may have.
pub const MAX_BUCKETS: u32 = 1000;
/// The widest bucket of a time window: a bucket must count fewer than 2^31 calls (3.5 million a
/// second for 10 minutes).
const MAX_BUCKET_WIDTH: Duration = Duration::from_secs(600);
/// The most probes a half-open round may admit.
pub const MAX_PROBES: u32 = 1000;

/// The sliding window the failure-rate and slow-call-rate rules read.
///
/// A window is a ring of buckets. It always covers the whole configured size plus the bucket
/// being filled: a count window of `N` calls in `K` buckets holds the latest `N` to `N + N/K`
/// calls (exactly the last `N` just after a bucket rolls over), a time window of span `S` in `K`
/// buckets holds the calls of the last `S` to `S + S/K`. Until `N` calls (or `S`) have passed,
/// it holds everything since the breaker last closed. More buckets track the
/// edge more closely; recording stays one atomic add either way, and rolling to a new bucket
/// takes a short lock once per bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindow {
    pub(crate) kind: WindowKind,
    pub(crate) buckets: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowKind {
    Count(u32),
    Time(Duration),
}

impl SlidingWindow {
    /// The last `calls` calls (`1..=2^30`). Default buckets: the largest divisor of `calls` up
    /// to 10.
    pub const fn count(calls: u32) -> SlidingWindow {
        SlidingWindow {
            kind: WindowKind::Count(calls),
            buckets: None,
        }
    }

    /// The calls of the last `span` (1 ms to 24 h). Default buckets: 10, or as many as keep
    /// each bucket at most 10 minutes wide.
    pub const fn time(span: Duration) -> SlidingWindow {
        SlidingWindow {
            kind: WindowKind::Time(span),
            buckets: None,
        }
    }

    /// Splits the window into `buckets` buckets (`1..=1000`; for a count window, a divisor of
    /// its size; for a time window, at most 10 minutes each). `count(n).buckets(n)` tracks the
    /// last `n` calls to within one call, at the price of the bucket lock on every call.
    pub const fn buckets(self, buckets: u32) -> SlidingWindow {
        SlidingWindow {
            buckets: Some(buckets),
            ..self
        }
    }
}

impl Default for SlidingWindow {
    /// The last 100 calls in 10 buckets.
    fn default() -> SlidingWindow {
        SlidingWindow::count(100)
    }
}

/// How long the breaker stays open before it admits probes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenDuration {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
    pub(crate) multiplier: f64,
    pub(crate) jitter: f64,
}

impl OpenDuration {
    /// Always `duration`.
    pub const fn fixed(duration: Duration) -> OpenDuration {
        OpenDuration {
            initial: duration,
            max: duration,
            multiplier: 1.0,
            jitter: 0.0,
        }
    }

    /// `initial` on the first opening, multiplied (by 2 unless changed) each time the breaker
    /// re-opens from half-open without having closed, up to `max`. Closing starts over.
    pub const fn exponential(initial: Duration, max: Duration) -> OpenDuration {
        OpenDuration {
            initial,
            max,
            multiplier: 2.0,
            jitter: 0.0,
        }
    }

    /// The growth factor per re-opening, `[1, 100]`.
    pub const fn multiplier(self, multiplier: f64) -> OpenDuration {
        OpenDuration { multiplier, ..self }
    }

    /// Spreads each duration uniformly over `±jitter` of itself (`[0, 0.5]`: a breaker should
    /// stay open at least half its duration), never above `max`, so that a fleet of clients
    /// that tripped together probes at different times.
    pub const fn jitter(self, jitter: f64) -> OpenDuration {
        OpenDuration { jitter, ..self }
    }

    /// The duration before jitter after `reopens` re-openings in a row.
    pub(crate) fn base(&self, reopens: u32) -> Duration {
        let scaled = self.initial.as_secs_f64() * self.multiplier.powi(reopens.min(1024) as i32);
        if scaled >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(scaled)
        }
    }

    /// The jittered duration after `reopens` re-openings, `unit` uniform in `[0, 1)`.
    pub(crate) fn pick(&self, reopens: u32, unit: f64) -> Duration {
        let base = self.base(reopens);
        if self.jitter == 0.0 {
            return base;
        }
        let factor = 1.0 + self.jitter * (2.0 * unit - 1.0);
        Duration::from_secs_f64(base.as_secs_f64() * factor).min(self.max)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_duration("open_duration initial", self.initial)?;
        check_duration("open_duration max", self.max)?;
        if self.max < self.initial {
            return Err(ConfigError::out_of_range(
                "open_duration max",
                format!("at least the initial duration {:?}", self.initial),
                self.max,
            ));
        }
        if !(1.0..=100.0).contains(&self.multiplier) {
            return Err(ConfigError::out_of_range(
                "open_duration multiplier",
                "a finite number in [1.0, 100.0]",
                self.multiplier,
            ));
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            return Err(ConfigError::out_of_range(
                "open_duration jitter",
                "a fraction in [0.0, 0.5]",
                self.jitter,
            ));
        }
        Ok(())
    }
}

impl Default for OpenDuration {
    /// 5 s, doubling on each re-opening up to 60 s, ±10 % jitter.
    fn default() -> OpenDuration {
        OpenDuration::exponential(Duration::from_secs(5), Duration::from_secs(60)).jitter(0.1)
    }
}

pub(crate) type Listener = Arc<dyn Fn(&Transition) + Send + Sync>;

/// The validated rules a breaker runs by (everything but the clock and the listener).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rules {
    /// Failure-rate threshold in parts per million of calls.
    pub(crate) failure_ppm: Option<u64>,
    /// Slow-call threshold and rate (parts per million).
    pub(crate) slow: Option<(Duration, u64)>,
    pub(crate) consecutive: Option<u32>,
    pub(crate) minimum_calls: u64,
    pub(crate) window: SlidingWindow,
    pub(crate) open_duration: OpenDuration,
    pub(crate) probes: u32,
    /// Successes that close a half-open round.
    pub(crate) probes_required: u32,
    pub(crate) half_open_max_wait: Option<Duration>,
    pub(crate) seed: Option<u64>,
}

impl Rules {
    pub(crate) fn has_window(&self) -> bool {
        self.failure_ppm.is_some() || self.slow.is_some()
    }
}

/// Builder of a [`CircuitBreaker`]; [`build`](CircuitBreakerBuilder::build) validates every
/// knob and names the one at fault.
///
/// ```
/// use palisade_breaker::{CircuitBreaker, OpenDuration, SlidingWindow};
/// use std::time::Duration;
///
/// let breaker = CircuitBreaker::builder()
///     .failure_rate(50.0)
///     .slow_calls(Duration::from_secs(2), 80.0)
///     .minimum_calls(20)
///     .window(SlidingWindow::time(Duration::from_secs(30)))
///     .open_duration(OpenDuration::exponential(Duration::from_secs(5), Duration::from_secs(120)))
///     .half_open_probes(5)
///     .half_open_success_ratio(0.6)
///     .build()?;
/// # let _ = breaker;
///
/// let bad = CircuitBreaker::builder().failure_rate(120.0).build();
/// assert_eq!(
///     bad.unwrap_err().to_string(),
///     "failure_rate must be a percentage in (0, 100], got 120.0"
/// );
/// # Ok::<(), palisade_breaker::ConfigError>(())
/// ```
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Clone)]
pub struct CircuitBreakerBuilder<C = FastClock> {
    pub(crate) settings: Settings,
    pub(crate) clock: C,
}

/// Every knob but the clock, so that [`clock`](CircuitBreakerBuilder::clock) can swap the clock
/// type and keep the rest.
#[derive(Clone)]
pub(crate) struct Settings {
    failure_rate: Option<f64>,
    slow: Option<(Duration, f64)>,
    consecutive: Option<u32>,
    minimum_calls: u32,
    window: SlidingWindow,
    open_duration: OpenDuration,
    probes: u32,
    success_ratio: f64,
    half_open_max_wait: Option<Duration>,
    seed: Option<u64>,
    pub(crate) name: Option<Arc<str>>,
    pub(crate) listener: Option<Listener>,
}

impl<C: fmt::Debug> fmt::Debug for CircuitBreakerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        f.debug_struct("CircuitBreakerBuilder")
            .field("failure_rate", &s.failure_rate)
            .field("slow", &s.slow)
            .field("consecutive", &s.consecutive)
            .field("minimum_calls", &s.minimum_calls)
            .field("window", &s.window)
            .field("open_duration", &s.open_duration)
            .field("probes", &s.probes)
            .field("success_ratio", &s.success_ratio)
            .field("half_open_max_wait", &s.half_open_max_wait)
            .field("clock", &self.clock)
            .field("name", &s.name)
            .field("listener", &s.listener.as_ref().map(|_| "Fn(&Transition)"))
            .finish()
    }
}

impl Default for CircuitBreakerBuilder<FastClock> {
    fn default() -> Self {
        CircuitBreakerBuilder {
            settings: Settings {
                failure_rate: Some(50.0),
                slow: None,
                consecutive: None,
                minimum_calls: 20,
                window: SlidingWindow::default(),
                open_duration: OpenDuration::default(),
                probes: 5,
                success_ratio: 0.6,
                half_open_max_wait: None,
                seed: None,
                name: None,
                listener: None,
            },
            clock: FastClock::new(),
        }
    }
}

impl<C: Clock> CircuitBreakerBuilder<C> {
    /// Trip when failures reach `percent` of the window's calls, `(0, 100]`. Default 50.
    pub fn failure_rate(mut self, percent: f64) -> Self {
        self.settings.failure_rate = Some(percent);
        self
    }

    /// No failure-rate rule (trip on slow calls or consecutive failures only).
    pub fn no_failure_rate(mut self) -> Self {
        self.settings.failure_rate = None;
        self
    }

    /// Trip when calls slower than `threshold` (up to 24 h) reach `percent` of the window's
    /// calls, `(0, 100]`. A slow probe counts as a failed probe. Default: no slow-call rule (and
    /// then no clock read per call unless the window is time-based).
    pub fn slow_calls(mut self, threshold: Duration, percent: f64) -> Self {
        self.settings.slow = Some((threshold, percent));
        self
    }

    /// Trip after `failures` failures in a row (`>= 1`), whatever the window says. A breaker
    /// with only this rule ([`no_failure_rate`](Self::no_failure_rate), no slow calls) keeps no
    /// window at all: its closed path is one atomic load per call and one write per failure.
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.settings.consecutive = Some(failures);
        self
    }

    /// The rate rules need at least this many calls in the window (`>= 1`, at most the size of a
    /// count window). Default 20.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.settings.minimum_calls = calls;
        self
    }

    /// The window the rate rules read. Default: the last 100 calls in 10 buckets.
    pub fn window(mut self, window: SlidingWindow) -> Self {
        self.settings.window = window;
        self
    }

    /// How long to stay open. Default: 5 s doubling to 60 s, ±10 % jitter.
    pub fn open_duration(mut self, duration: impl Into<OpenDuration>) -> Self {
        self.settings.open_duration = duration.into();
        self
    }

    /// Probes admitted per half-open round, `1..=1000`. Default 5.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.settings.probes = probes;
        self
    }

    /// The fraction of a round's probes that must succeed to close, `(0, 1]`: the round closes
    /// as soon as `ceil(ratio × probes)` probes have succeeded (the product taken to within a
    /// billionth, past floating-point noise) and re-opens as soon as that is out of reach.
    /// Default 0.6 (3 of 5).
    pub fn half_open_success_ratio(mut self, ratio: f64) -> Self {
        self.settings.success_ratio = ratio;
        self
    }

    /// Re-open if a half-open round has had every probe slot taken for `wait` (up to 24 h)
    /// without a decision: a probe that hangs without being dropped can't hold the breaker in
    /// half-open. The wait starts when the last slot is taken, so a probe admitted late in a
    /// round gets the whole of it. The next call notices the timeout, and the open duration
    /// runs from the deadline. Default: no limit (dropped probes free their slot anyway).
    pub fn half_open_max_wait(mut self, wait: Duration) -> Self {
        self.settings.half_open_max_wait = Some(wait);
        self
    }

    /// Seeds the open-duration jitter, for reproducible tests. Default: a different seed per
    /// breaker.
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = Some(seed);
        self
    }

    /// A name carried by every [`Transition`] and `tracing` event.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.settings.name = Some(name.into());
        self
    }

    /// Calls `listener` after every state change, outside any lock, on the thread that made
    /// the change. It may call back into the breaker.
    pub fn on_transition<F>(mut self, listener: F) -> Self
    where
        F: Fn(&Transition) + Send + Sync + 'static,
    {
        self.settings.listener = Some(Arc::new(listener));
        self
    }

    /// The clock every time-dependent decision reads (default [`FastClock`]); use
    /// `TokioClock` under tokio's paused time, or `ManualClock` in pure-logic tests.
    pub fn clock<C2: Clock>(self, clock: C2) -> CircuitBreakerBuilder<C2> {
        CircuitBreakerBuilder {
            settings: self.settings,
            clock,
        }
    }

    pub(crate) fn rules(&self) -> Result<Rules, ConfigError> {
        let failure_ppm = self
            .settings
            .failure_rate
            .map(|p| check_percent("failure_rate", p))
            .transpose()?;
        let slow = match self.settings.slow {
            Some((threshold, p)) => {
                check_duration("slow_calls threshold", threshold)?;
                Some((threshold, check_percent("slow_calls percent", p)?))
            }
            None => None,
        };
        if self.settings.consecutive == Some(0) {
            return Err(ConfigError::out_of_range(
                "consecutive_failures",
                "at least 1",
                0,
            ));
        }
        if failure_ppm.is_none() && slow.is_none() && self.settings.consecutive.is_none() {
            return Err(ConfigError::OutOfRange {
                field: "failure_rate",
                allowed: "set, or replaced by slow_calls or consecutive_failures (a breaker needs a rule to trip)"
                    .into(),
                got: "none".into(),
            });
        }
        let window = self.settings.window;
        let buckets = match window.kind {
            WindowKind::Count(calls) => {
                if !(1..=MAX_WINDOW_CALLS).contains(&calls) {
                    return Err(ConfigError::out_of_range(
                        "window calls",
                        format!("in [1, {MAX_WINDOW_CALLS}]"),
                        calls,
                    ));
                }
                let buckets = window
                    .buckets
                    .unwrap_or_else(|| (1..=10).rev().find(|k| calls % k == 0).unwrap_or(1));
                if buckets == 0 || buckets > MAX_BUCKETS.min(calls) || calls % buckets != 0 {
                    return Err(ConfigError::out_of_range(
                        "window buckets",
                        format!(
                            "a divisor of the window's {calls} calls in [1, {}]",
                            MAX_BUCKETS.min(calls)
                        ),
                        buckets,
                    ));
                }
                if self.settings.minimum_calls > calls {
                    return Err(ConfigError::out_of_range(
                        "minimum_calls",
                        format!("in [1, {calls}] (the count window's size)"),
                        self.settings.minimum_calls,
                    ));
                }
                buckets
            }
            WindowKind::Time(span) => {
                if span < Duration::from_millis(1) || span > MAX_DURATION {
                    return Err(ConfigError::out_of_range(
                        "window span",
                        "between 1ms and 24h",
                        span,
                    ));
                }
                let min_buckets = nanos(span).div_ceil(nanos(MAX_BUCKET_WIDTH)).max(1) as u32;
                let buckets = window.buckets.unwrap_or(10.max(min_buckets));
                if !(min_buckets..=MAX_BUCKETS).contains(&buckets) {
                    return Err(ConfigError::out_of_range(
                        "window buckets",
                        format!(
                            "in [{min_buckets}, {MAX_BUCKETS}] for a {span:?} window (buckets of at most 10 minutes)"
                        ),
                        buckets,
                    ));
                }
                buckets
            }
        };
        if self.settings.minimum_calls == 0 {
            return Err(ConfigError::out_of_range("minimum_calls", "at least 1", 0));
        }
        self.settings.open_duration.validate()?;
        if !(1..=MAX_PROBES).contains(&self.settings.probes) {
            return Err(ConfigError::out_of_range(
                "half_open_probes",
                format!("in [1, {MAX_PROBES}]"),
                self.settings.probes,
            ));
        }
        if !(self.settings.success_ratio > 0.0 && self.settings.success_ratio <= 1.0) {
            return Err(ConfigError::out_of_range(
                "half_open_success_ratio",
                "a fraction in (0.0, 1.0]",
                self.settings.success_ratio,
            ));
        }
        if let Some(wait) = self.settings.half_open_max_wait {
            check_duration("half_open_max_wait", wait)?;
        }
        // ceil(ratio x probes), ignoring floating-point noise under a billionth: 0.28 x 25 is
        // 7.000000000000001 and needs 7, 2/3 x 3 needs 2, 0.3333334 x 3 needs 2. (Rounding the
        // ratio to parts per million first turned 2/3 into 0.666667 and asked 3 of 3.)
        let exact = self.settings.success_ratio * f64::from(self.settings.probes);
        let probes_required = ((exact - 1e-9).ceil() as u32).clamp(1, self.settings.probes);
        Ok(Rules {
            failure_ppm,
            slow,
            consecutive: self.settings.consecutive,
            minimum_calls: u64::from(self.settings.minimum_calls),
            window: SlidingWindow {
                kind: window.kind,
                buckets: Some(buckets),
            },
            open_duration: self.settings.open_duration,
            probes: self.settings.probes,
            probes_required,
            half_open_max_wait: self.settings.half_open_max_wait,
            seed: self.settings.seed,
        })
    }

    /// Validates every knob and builds the breaker.
    pub fn build(self) -> Result<CircuitBreaker<C>, ConfigError> {
        let rules = self.rules()?;
        Ok(CircuitBreaker::from_parts(
            rules,
            self.clock,
            self.settings.name,
            self.settings.listener,
        ))
    }
}

impl From<Duration> for OpenDuration {
    fn from(d: Duration) -> OpenDuration {
        OpenDuration::fixed(d)
    }
}

fn check_percent(field: &'static str, percent: f64) -> Result<u64, ConfigError> {
    if percent > 0.0 && percent <= 100.0 {
        Ok((percent * 10_000.0).round().max(1.0) as u64)
    } else {
        Err(ConfigError::out_of_range(
            field,
            "a percentage in (0, 100]",
            percent,
        ))
    }
}

fn check_duration(field: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() || d > MAX_DURATION {
        Err(ConfigError::out_of_range(
            field,
            "greater than zero and at most 24h",
            d,
        ))
    } else {
        Ok(())
    }
}
