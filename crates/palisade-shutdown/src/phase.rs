//! The phases of a shutdown, in order.

use std::fmt;

/// Where the shutdown sequence is. Phases only move forward, in this order; each is observable
/// through [`Shutdown::phase`](crate::Shutdown::phase) (one atomic load) and
/// [`Shutdown::wait_for`](crate::Shutdown::wait_for), and logged when entered.
///
/// ```text
/// Running ─trigger─▶ NotReady ─delay─▶ StopAccepting ─▶ Draining ─▶ Cleanup ─▶ Aborting ─▶ Done
///                    readiness off     listeners stop    requests     hooks,     stragglers
///                    (LB catches up)                     and tasks    reverse    aborted at
///                                                        finish       order      the deadline
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Phase {
    /// No shutdown requested: ready, accepting, serving.
    Running = 0,
    /// Shutdown was triggered. Readiness is off so load balancers stop routing here, but
    /// everything keeps serving for the configured readiness delay.
    NotReady = 1,
    /// Listeners stop accepting new connections; the phase waits until every registered
    /// [`Listener`](crate::Listener) has been told (its future completed) or dropped.
    StopAccepting = 2,
    /// New requests through the [`ShutdownLayer`](crate::ShutdownLayer) are refused; in-flight
    /// requests, then tracked tasks (innermost scopes first), are waited for.
    Draining = 3,
    /// Cleanup hooks run, in reverse order of registration (or as declared with
    /// [`HookBuilder::after`](crate::HookBuilder::after)), each under its own timeout.
    Cleanup = 4,
    /// Whatever is still running may finish until the overall deadline; then tracked tasks
    /// are aborted.
    Aborting = 5,
    /// The sequence is over; [`Coordinator::run`](crate::Coordinator::run) has its report.
    Done = 6,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 7] = [
        Phase::Running,
        Phase::NotReady,
        Phase::StopAccepting,
        Phase::Draining,
        Phase::Cleanup,
        Phase::Aborting,
        Phase::Done,
    ];

    /// A short lowercase name for logs and metric labels (`not_ready`, `draining`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::NotReady => "not_ready",
            Phase::StopAccepting => "stop_accepting",
            Phase::Draining => "draining",
            Phase::Cleanup => "cleanup",
            Phase::Aborting => "aborting",
            Phase::Done => "done",
        }
    }

    pub(crate) const fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Running,
            1 => Phase::NotReady,
            2 => Phase::StopAccepting,
            3 => Phase::Draining,
            4 => Phase::Cleanup,
            5 => Phase::Aborting,
            _ => Phase::Done,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Phase;

    #[test]
    fn phases_round_trip_through_their_number_in_order() {
        for (index, phase) in Phase::ALL.into_iter().enumerate() {
            assert_eq!(Phase::from_u8(phase as u8), phase);
            assert_eq!(phase as usize, index);
        }
        assert!(Phase::ALL.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
