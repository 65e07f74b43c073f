//! What happened during a shutdown: the report [`Coordinator::run`](crate::Coordinator::run) returns.

use std::fmt;
use std::time::Duration;

use crate::phase::Phase;
use crate::signal::Signal;

/// What started the shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trigger {
    /// A process signal.
    Signal(Signal),
    /// [`Shutdown::trigger`](crate::Shutdown::trigger).
    Requested,
    /// A tracked task panicked under [`PanicPolicy::Shutdown`](crate::PanicPolicy::Shutdown).
    TaskPanicked {
        /// The scope of the task that panicked.
        scope: String,
    },
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Signal(signal) => write!(f, "signal {signal}"),
            Trigger::Requested => f.write_str("requested"),
            Trigger::TaskPanicked { scope } => write!(f, "a task in `{scope}` panicked"),
        }
    }
}

/// How a phase or a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// It finished within its time.
    Completed,
    /// Its timeout (or the overall deadline) ran out first.
    TimedOut,
    /// It never ran: the deadline had passed or the shutdown was escalated.
    Skipped,
    /// An escalation cut it short.
    Interrupted,
    /// A hook returned an error (its text).
    Failed(String),
    /// A hook panicked (the panic message).
    Panicked(String),
}

impl Outcome {
    /// Whether it finished well ([`Outcome::Completed`]).
    pub fn is_completed(&self) -> bool {
        *self == Outcome::Completed
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Completed => f.write_str("completed"),
            Outcome::TimedOut => f.write_str("timed out"),
            Outcome::Skipped => f.write_str("skipped"),
            Outcome::Interrupted => f.write_str("interrupted"),
            Outcome::Failed(error) => write!(f, "failed: {error}"),
            Outcome::Panicked(message) => write!(f, "panicked: {message}"),
        }
    }
}

/// One phase of the sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseReport {
    /// Which phase.
    pub phase: Phase,
    /// When it began, counted from the trigger.
    pub started_after: Duration,
    /// How long it took.
    pub took: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

/// One cleanup hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookReport {
    /// The name it was registered with.
    pub name: String,
    /// How long it ran (zero if skipped).
    pub took: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

/// One scope of tracked tasks (the root first, then nested scopes depth first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeReport {
    /// The scope's path (`root`, `root/ingest`).
    pub name: String,
    /// Tasks tracked in it over its life.
    pub spawned: u64,
    /// Tasks in it that panicked.
    pub panicked: u64,
    /// Tasks still running when the report was made (aborted ones stuck in blocking code).
    pub still_running: usize,
}

/// A tracked task that panicked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPanic {
    /// The scope it ran in.
    pub scope: String,
    /// Its tokio task id, when it ran as a tokio task.
    pub task: Option<String>,
    /// The panic message.
    pub message: String,
}

/// What a shutdown did: the trigger, each phase and hook with its time and outcome, the tasks
/// aborted and the requests abandoned. `Display` prints it as a short table for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// What started it.
    pub trigger: Trigger,
    /// The signal (or `None` for [`Shutdown::escalate`](crate::Shutdown::escalate)) that
    /// escalated it, if one did.
    pub escalated: Option<Option<Signal>>,
    /// The phases that ran, in order.
    pub phases: Vec<PhaseReport>,
    /// The cleanup hooks, in the order they ran (skipped ones last).
    pub hooks: Vec<HookReport>,
    /// Every scope of tracked tasks.
    pub scopes: Vec<ScopeReport>,
    /// Tracked tasks aborted at the deadline (or on escalation).
    pub aborted: usize,
    /// Requests still in flight through the [`ShutdownLayer`](crate::ShutdownLayer) when the
    /// sequence ended (they run in connection tasks the coordinator does not own).
    pub requests_abandoned: usize,
    /// Tracked tasks that panicked, before or during the shutdown, oldest first: the latest 64,
    /// so a long-lived service whose handlers panic now and then keeps bounded memory. Each
    /// scope's [`panicked`](ScopeReport::panicked) counts every panic, and each one was logged
    /// as it happened.
    pub panics: Vec<TaskPanic>,
    /// From the trigger to the end of the sequence.
    pub total: Duration,
}

impl ShutdownReport {
    /// Whether everything finished in time: no phase or hook timed out, failed or was skipped,
    /// nothing was aborted or abandoned, no task panicked, no escalation.
    pub fn is_clean(&self) -> bool {
        self.escalated.is_none()
            && self.phases.iter().all(|phase| phase.outcome.is_completed())
            && self.hooks.iter().all(|hook| hook.outcome.is_completed())
            && self.aborted == 0
            && self.requests_abandoned == 0
            && self.panics.is_empty()
            && self.scopes.iter().all(|scope| scope.still_running == 0)
    }

    /// The exit status for `main` after this shutdown: 0 when it was
    /// [clean](ShutdownReport::is_clean), `128 + signal` when a signal escalated it (143 for a
    /// second `SIGTERM`, 130 for a second Ctrl-C: what a shell and a supervisor read as "ended by
    /// that signal"), and 1 otherwise (an escalation by
    /// [`Shutdown::escalate`](crate::Shutdown::escalate), a timeout, a failed hook, an abort).
    ///
    /// ```
    /// # use palisade_shutdown::ShutdownReport;
    /// fn exit(report: &ShutdownReport) -> std::process::ExitCode {
    ///     std::process::ExitCode::from(report.exit_code())
    /// }
    /// ```
    pub fn exit_code(&self) -> u8 {
        match self.escalated {
            _ if self.is_clean() => 0,
            Some(Some(signal)) => signal.exit_code(),
            _ => 1,
        }
    }

    /// The report of `phase`, if it ran.
    pub fn phase(&self, phase: Phase) -> Option<&PhaseReport> {
        self.phases.iter().find(|report| report.phase == phase)
    }

    /// The report of the hook registered as `name`.
    pub fn hook(&self, name: &str) -> Option<&HookReport> {
        self.hooks.iter().find(|report| report.name == name)
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shutdown ({}) took {}",
            self.trigger,
            Seconds(self.total)
        )?;
        if let Some(signal) = &self.escalated {
            match signal {
                Some(signal) => write!(f, ", escalated by {signal}")?,
                None => f.write_str(", escalated")?,
            }
        }
        writeln!(f, "{}", if self.is_clean() { ", clean" } else { "" })?;
        for phase in &self.phases {
            writeln!(
                f,
                "  phase {:<24} at {:>8}, took {:>8}  {}",
                phase.phase.as_str(),
                Seconds(phase.started_after),
                Seconds(phase.took),
                phase.outcome
            )?;
        }
        for hook in &self.hooks {
            writeln!(
                f,
                "  hook  {:<24}              took {:>8}  {}",
                hook.name,
                Seconds(hook.took),
                hook.outcome
            )?;
        }
        for scope in &self.scopes {
            writeln!(
                f,
                "  tasks {:<24} spawned {}, panicked {}, still running {}",
                scope.name, scope.spawned, scope.panicked, scope.still_running
            )?;
        }
        write!(
            f,
            "  aborted {}, requests abandoned {}",
            self.aborted, self.requests_abandoned
        )
    }
}

/// A duration printed as seconds with millisecond precision (`2.000 s`), so columns align.
struct Seconds(Duration);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{:.3} s", self.0.as_secs_f64()))
    }
}
