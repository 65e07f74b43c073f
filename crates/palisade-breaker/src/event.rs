//! States, transitions and the metrics snapshot.

use std::fmt;
use std::time::Duration;

use palisade_core::Instant;

/// The state of a [`CircuitBreaker`](crate::CircuitBreaker).
///
/// ```text
///            failure rate, slow-call rate or consecutive failures (with minimum calls)
///   Closed ─────────────────────────────────────────────────────────────────► Open
///     ▲                                                                      │  ▲
///     │ enough probes succeeded                          open duration over │  │ too many probes
///     │                                                                      ▼  │ failed, or the
///     └───────────────────────────────────────────────────────────────── HalfOpen  round timed out
///
///   force_open() → ForcedOpen   disable() → Disabled   metrics_only() → MetricsOnly   reset() → Closed
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Calls flow; outcomes are recorded and the trip rules checked.
    Closed,
    /// Calls are rejected until the open duration is over.
    Open,
    /// A bounded number of probe calls decide between closing and re-opening.
    HalfOpen,
    /// Calls are rejected until [`reset`](crate::CircuitBreaker::reset) (set by
    /// [`force_open`](crate::CircuitBreaker::force_open)).
    ForcedOpen,
    /// Every call is admitted and nothing is recorded (set by
    /// [`disable`](crate::CircuitBreaker::disable)).
    Disabled,
    /// Every call is admitted; outcomes are recorded for [`metrics`](crate::CircuitBreaker::metrics)
    /// but never trip the breaker (set by [`metrics_only`](crate::CircuitBreaker::metrics_only)).
    MetricsOnly,
}

impl State {
    /// The state's name in lowercase, as `tracing` events and `Display` show it.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
            State::ForcedOpen => "forced-open",
            State::Disabled => "disabled",
            State::MetricsOnly => "metrics-only",
        }
    }

    /// Whether calls are admitted in this state without limit (closed, disabled, metrics-only).
    pub const fn admits_all(self) -> bool {
        matches!(self, State::Closed | State::Disabled | State::MetricsOnly)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The window's failure rate reached the threshold (with at least the minimum calls).
    FailureRate,
    /// The window's slow-call rate reached the threshold (with at least the minimum calls).
    SlowCallRate,
    /// The configured number of consecutive failures was reached.
    ConsecutiveFailures,
    /// The open duration is over: the breaker admits probes.
    OpenElapsed,
    /// Enough half-open probes succeeded.
    ProbesSucceeded,
    /// So many half-open probes failed that the success ratio can't be reached.
    ProbesFailed,
    /// The half-open round had every probe slot taken for `half_open_max_wait` without a
    /// decision.
    ProbesTimedOut,
    /// A manual call: `reset`, `force_open`, `disable` or `metrics_only`.
    Manual,
}

impl Reason {
    /// The reason in words, as `tracing` events show it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::FailureRate => "failure rate",
            Reason::SlowCallRate => "slow-call rate",
            Reason::ConsecutiveFailures => "consecutive failures",
            Reason::OpenElapsed => "open duration elapsed",
            Reason::ProbesSucceeded => "probes succeeded",
            Reason::ProbesFailed => "probes failed",
            Reason::ProbesTimedOut => "probes timed out",
            Reason::Manual => "manual",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts behind a decision: the sliding window's totals when the breaker trips from closed
/// state, the probe round's when it leaves half-open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowSnapshot {
    /// Calls recorded (ignored outcomes excluded).
    pub calls: u64,
    /// Of those, failures.
    pub failures: u64,
    /// Calls recorded while a slow-call rule is set (counted beside `calls`; 0 without the rule).
    pub timed_calls: u64,
    /// Of those, calls slower than the slow-call threshold.
    pub slow_calls: u64,
    /// Consecutive failures at the time (closed state only).
    pub consecutive_failures: u32,
}

impl WindowSnapshot {
    /// Failures as a percentage of calls, `None` with no calls.
    pub fn failure_rate(&self) -> Option<f64> {
        percent(self.failures, self.calls)
    }

    /// Slow calls as a percentage of timed calls, `None` with none.
    pub fn slow_call_rate(&self) -> Option<f64> {
        percent(self.slow_calls, self.timed_calls)
    }
}

fn percent(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 * 100.0 / whole as f64)
}

/// One state change, handed to the `on_transition` listener and logged through `tracing`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Transition {
    /// The breaker's generation after the change: it grows by one with every transition.
    /// Listeners of transitions that race are called in no particular order; this orders them.
    pub generation: u32,
    /// The breaker's name, if it has one.
    pub name: Option<std::sync::Arc<str>>,
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// Why.
    pub reason: Reason,
    /// The counts that decided it (see [`WindowSnapshot`]).
    pub window: WindowSnapshot,
    /// When, on the breaker's clock. A round that timed out (`Reason::ProbesTimedOut`)
    /// re-opened at its deadline, which is the instant given, even if a later call noticed it.
    pub at: Instant,
    /// For a transition to [`State::Open`]: how long it stays open.
    pub open_for: Option<Duration>,
}

/// A point-in-time view of a breaker for dashboards and tests
/// ([`CircuitBreaker::metrics`](crate::CircuitBreaker::metrics)).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Metrics {
    /// The current state.
    pub state: State,
    /// The sliding window's totals (zero for a breaker with no rate rule).
    pub window: WindowSnapshot,
    /// Failures as a percentage of the window's calls, `None` with no calls.
    pub failure_rate: Option<f64>,
    /// Slow calls as a percentage of the window's timed calls, `None` with none.
    pub slow_call_rate: Option<f64>,
    /// Calls rejected since the breaker was built.
    pub rejections: u64,
    /// Half-open probes admitted in the current round (0 outside half-open).
    pub probes_admitted: u32,
}
