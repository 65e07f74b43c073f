//! The coordinator's builder and its validated configuration.

use std::time::Duration;

use crate::coordinator::Coordinator;
use crate::error::ConfigError;
use crate::signal::Signal;

/// The longest overall deadline a builder accepts: one day.
pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest [`abort_grace`](CoordinatorBuilder::abort_grace) a builder accepts.
pub const MAX_ABORT_GRACE: Duration = Duration::from_secs(60);

/// What a second shutdown signal (or [`Shutdown::escalate`](crate::Shutdown::escalate)) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Escalation {
    /// Abort at once: the current phase is cut short, remaining hooks are skipped, tracked
    /// tasks are aborted, and [`Coordinator::run`] returns its report (marked escalated) after
    /// at most [`abort_grace`](CoordinatorBuilder::abort_grace). The default.
    Abort,
    /// Log the signal and call `std::process::exit(code)` from the coordinator straight away:
    /// nothing else runs, not even destructors. For operators who press Ctrl-C twice and mean it.
    Exit(i32),
}

/// What a panicking tracked task does besides being reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PanicPolicy {
    /// Log it (`error`) and list it in the report. The default.
    Report,
    /// Also trigger shutdown, as a crashed subsystem usually leaves the service half-alive.
    Shutdown,
}

/// The validated knobs of a [`Coordinator`].
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) signals: Vec<Signal>,
    pub(crate) escalation: Escalation,
    pub(crate) readiness_delay: Duration,
    pub(crate) stop_accepting_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) hook_timeout: Duration,
    pub(crate) deadline: Duration,
    pub(crate) abort_grace: Duration,
    pub(crate) panic_policy: PanicPolicy,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            signals: vec![Signal::Interrupt, Signal::Terminate],
            escalation: Escalation::Abort,
            readiness_delay: Duration::ZERO,
            stop_accepting_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(20),
            hook_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
            abort_grace: Duration::from_secs(1),
            panic_policy: PanicPolicy::Report,
        }
    }
}

/// Builds a [`Coordinator`]; every knob is checked by [`build`](CoordinatorBuilder::build).
///
/// | knob | default | allowed |
/// |---|---|---|
/// | [`signals`](Self::signals) | Ctrl-C/SIGINT and SIGTERM | any set, empty for none |
/// | [`escalation`](Self::escalation) | [`Escalation::Abort`] | abort, or exit with a code |
/// | [`readiness_delay`](Self::readiness_delay) | 0 | 0 ..= `deadline` |
/// | [`stop_accepting_timeout`](Self::stop_accepting_timeout) | 5 s | 0 ..= `deadline` |
/// | [`drain_timeout`](Self::drain_timeout) | 20 s | 0 ..= `deadline` |
/// | [`hook_timeout`](Self::hook_timeout) | 5 s | 1 ms ..= `deadline` |
/// | [`deadline`](Self::deadline) | 30 s | 1 ms ..= 24 h |
/// | [`abort_grace`](Self::abort_grace) | 1 s | 0 ..= 60 s |
/// | [`on_panic`](Self::on_panic) | [`PanicPolicy::Report`] | report, or also shut down |
///
/// A phase timeout left at its default is cut to the deadline (a 5 s deadline gives a 5 s drain
/// timeout, not an error); one set explicitly above the deadline is an error.
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct CoordinatorBuilder {
    config: Config,
    /// Phase timeouts set explicitly (validated against the deadline, not cut to it).
    explicit: Explicit,
}

#[derive(Debug, Clone, Copy, Default)]
struct Explicit {
    stop_accepting_timeout: bool,
    drain_timeout: bool,
    hook_timeout: bool,
}

impl CoordinatorBuilder {
    /// The signals that trigger shutdown (the first) and escalate it (the second). Replaces
    /// the default set; pass an empty list for a coordinator triggered only programmatically
    /// (tests, or a host that handles signals itself).
    pub fn signals(mut self, signals: impl IntoIterator<Item = Signal>) -> Self {
        self.config.signals.clear();
        for signal in signals {
            // Twice the same signal would count one delivery twice (and escalate at once).
            if !self.config.signals.contains(&signal) {
                self.config.signals.push(signal);
            }
        }
        self
    }

    /// What a second signal does. Default [`Escalation::Abort`].
    pub fn escalation(mut self, escalation: Escalation) -> Self {
        self.config.escalation = escalation;
        self
    }

    /// How long readiness stays off, while the service keeps serving, before listeners stop
    /// accepting: the time load balancers (Kubernetes endpoints, kube-proxy, an ingress) need
    /// to stop sending new traffic. Default 0; 5 to 10 s on Kubernetes.
    pub fn readiness_delay(mut self, delay: Duration) -> Self {
        self.config.readiness_delay = delay;
        self
    }

    /// How long the stop-accepting phase waits for registered listeners to stop. Default 5 s.
    pub fn stop_accepting_timeout(mut self, timeout: Duration) -> Self {
        self.config.stop_accepting_timeout = timeout;
        self.explicit.stop_accepting_timeout = true;
        self
    }

    /// How long the draining phase waits for in-flight requests and tracked tasks. Default 20 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self.explicit.drain_timeout = true;
        self
    }

    /// The timeout of a cleanup hook that sets none of its own. Default 5 s.
    pub fn hook_timeout(mut self, timeout: Duration) -> Self {
        self.config.hook_timeout = timeout;
        self.explicit.hook_timeout = true;
        self
    }

    /// The overall deadline, from the trigger to the abort of whatever still runs. Every phase
    /// gets at most what is left of it. Default 30 s, Kubernetes' default grace period: set it
    /// a little below `terminationGracePeriodSeconds` so the report gets written before SIGKILL.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.config.deadline = deadline;
        self
    }

    /// After aborting tasks, how long to wait for them to be dropped (their destructors give back
    /// connections and permits) before `run` returns anyway. A task stuck in blocking code
    /// cannot be aborted; the report counts it as still running. Default 1 s.
    pub fn abort_grace(mut self, grace: Duration) -> Self {
        self.config.abort_grace = grace;
        self
    }

    /// What a panicking tracked task does besides being reported. Default [`PanicPolicy::Report`].
    pub fn on_panic(mut self, policy: PanicPolicy) -> Self {
        self.config.panic_policy = policy;
        self
    }

    /// Validates the knobs and builds the coordinator. Inside a tokio runtime the signal
    /// handlers are installed here, on a task of their own, so a signal acts the moment it
    /// arrives (readiness off, the deadline running) even before [`Coordinator::run`] is
    /// polled; outside one, `run` installs them. The first signal triggers, the second
    /// escalates, a third (or any once `run` has returned) exits with `128 + signal`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first knob out of its range.
    pub fn build(self) -> Result<Coordinator, ConfigError> {
        let mut config = self.config;
        if config.deadline < Duration::from_millis(1) || config.deadline > MAX_DEADLINE {
            return Err(ConfigError::out_of_range(
                "deadline",
                "in 1ms..=24h",
                config.deadline,
            ));
        }
        let deadline = config.deadline;
        for (explicit, value) in [
            (
                self.explicit.stop_accepting_timeout,
                &mut config.stop_accepting_timeout,
            ),
            (self.explicit.drain_timeout, &mut config.drain_timeout),
            (self.explicit.hook_timeout, &mut config.hook_timeout),
        ] {
            if !explicit {
                *value = (*value).min(deadline);
            }
        }
        let within_deadline = format!("in 0s..=deadline ({:?})", config.deadline);
        for (field, value) in [
            ("readiness_delay", config.readiness_delay),
            ("stop_accepting_timeout", config.stop_accepting_timeout),
            ("drain_timeout", config.drain_timeout),
        ] {
            if value > config.deadline {
                return Err(ConfigError::out_of_range(
                    field,
                    within_deadline.clone(),
                    value,
                ));
            }
        }
        validate_hook_timeout("hook_timeout", config.hook_timeout, config.deadline)?;
        if config.abort_grace > MAX_ABORT_GRACE {
            return Err(ConfigError::out_of_range(
                "abort_grace",
                "in 0s..=60s",
                config.abort_grace,
            ));
        }
        Ok(Coordinator::from_config(config))
    }
}

/// A hook timeout must let the hook run (at least 1 ms) and fit in the deadline.
pub(crate) fn validate_hook_timeout(
    field: &'static str,
    timeout: Duration,
    deadline: Duration,
) -> Result<(), ConfigError> {
    if timeout < Duration::from_millis(1) || timeout > deadline {
        return Err(ConfigError::out_of_range(
            field,
            format!("in 1ms..=deadline ({deadline:?})"),
            timeout,
        ));
    }
    Ok(())
}
