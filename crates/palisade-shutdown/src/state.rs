//! The state every handle shares: the phase word, the trigger, escalation and panics.

use std::collections::VecDeque;
use std::fmt;
use std::task::{Context, Poll};

use palisade_core::sync::Mutex;
use palisade_core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use crate::config::PanicPolicy;
use crate::event::Event;
use crate::phase::Phase;
use crate::report::{TaskPanic, Trigger};
use crate::signal::Signal;

/// How many task panics the report keeps in full: a long-lived service whose handlers panic now
/// and then must not grow without bound. Each scope's `panicked` still counts every one.
pub(crate) const PANICS_KEPT: usize = 64;

pub(crate) struct State {
    phase: AtomicU8,
    escalated: AtomicBool,
    /// The signal that escalated, if a signal did.
    escalated_by: Mutex<Option<Signal>>,
    /// Woken on every phase change and on escalation; waiters re-check their own condition.
    event: Event,
    trigger: Mutex<Option<(Trigger, tokio::time::Instant)>>,
    /// The latest [`PANICS_KEPT`] panics of tracked tasks (each scope counts all of them).
    panics: Mutex<VecDeque<TaskPanic>>,
    panic_policy: PanicPolicy,
    /// The coordinator is gone (dropped unrun, or its `run` dropped or finished): nothing will
    /// carry out a shutdown any more, so a signal exits the process at once.
    abandoned: AtomicBool,
}

impl State {
    pub(crate) fn new(panic_policy: PanicPolicy) -> State {
        State {
            phase: AtomicU8::new(Phase::Running as u8),
            escalated: AtomicBool::new(false),
            escalated_by: Mutex::new(None),
            event: Event::new(),
            trigger: Mutex::new(None),
            panics: Mutex::new(VecDeque::new()),
            panic_policy,
            abandoned: AtomicBool::new(false),
        }
    }

    #[inline]
    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    #[inline]
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.phase.load(Ordering::Acquire) != Phase::Running as u8
    }

    /// Starts the shutdown (phase `NotReady`) if it has not started; `true` if this call did.
    pub(crate) fn trigger(&self, trigger: Trigger) -> bool {
        {
            let mut slot = self.trigger.lock();
            if slot.is_some() {
                return false;
            }
            *slot = Some((trigger.clone(), tokio::time::Instant::now()));
            // Under the lock, and never backwards: the sequence may already be further on.
            self.phase
                .fetch_max(Phase::NotReady as u8, Ordering::AcqRel);
        }
        tracing::info!(target: "palisade_shutdown", %trigger, phase = "not_ready", "shutdown triggered");
        self.event.notify_all();
        true
    }

    pub(crate) fn triggered(&self) -> Option<(Trigger, tokio::time::Instant)> {
        self.trigger.lock().clone()
    }

    /// Moves to `phase` (only ever forward).
    pub(crate) fn enter(&self, phase: Phase) {
        let previous = self.phase.fetch_max(phase as u8, Ordering::AcqRel);
        if previous < phase as u8 {
            tracing::info!(target: "palisade_shutdown", phase = phase.as_str(), "shutdown phase");
            self.event.notify_all();
        }
    }

    /// Marks the coordinator gone (see `abandoned`).
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    /// Escalates; `true` if this call was the first. Only the first escalation says what
    /// escalated (a signal, or `None` for [`Shutdown::escalate`](crate::Shutdown::escalate)):
    /// a signal arriving after an `escalate()` did not escalate anything.
    pub(crate) fn escalate(&self, by: Option<Signal>) -> bool {
        let first = {
            // The flag and the cause change together, so whoever sees the flag sees its cause.
            let mut slot = self.escalated_by.lock();
            let first = !self.escalated.swap(true, Ordering::AcqRel);
            if first {
                *slot = by;
            }
            first
        };
        if first {
            self.event.notify_all();
        }
        first
    }

    pub(crate) fn escalated_by(&self) -> Option<Signal> {
        *self.escalated_by.lock()
    }

    pub(crate) fn is_escalated(&self) -> bool {
        self.escalated.load(Ordering::Acquire)
    }

    /// Polls a wait for `ready` on this state's event.
    pub(crate) fn poll_until(
        &self,
        cx: &mut Context<'_>,
        slot: &mut Option<usize>,
        ready: impl Fn(&State) -> bool,
    ) -> Poll<()> {
        self.event.poll_until(cx, slot, || ready(self))
    }

    pub(crate) fn release(&self, slot: &mut Option<usize>) {
        self.event.release(slot);
    }

    pub(crate) fn task_panicked(&self, panic: TaskPanic) {
        let scope = panic.scope.clone();
        {
            let mut panics = self.panics.lock();
            if panics.len() == PANICS_KEPT {
                panics.pop_front();
            }
            panics.push_back(panic);
        }
        if self.panic_policy == PanicPolicy::Shutdown {
            self.trigger(Trigger::TaskPanicked { scope });
        }
    }

    pub(crate) fn panics(&self) -> Vec<TaskPanic> {
        self.panics.lock().iter().cloned().collect()
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("phase", &self.phase())
            .field("escalated", &self.is_escalated())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::State;
    use crate::config::PanicPolicy;
    use crate::signal::Signal;

    /// `escalate()` first, then a signal (a supervisor's second SIGTERM): the report must say
    /// the shutdown was escalated by `escalate()`, not by the later signal (which would turn the
    /// exit code into 143).
    #[test]
    fn the_first_escalation_says_what_escalated() {
        let state = State::new(PanicPolicy::Report);
        assert!(state.escalate(None));
        assert!(!state.escalate(Some(Signal::Terminate)));
        assert_eq!(state.escalated_by(), None);

        let state = State::new(PanicPolicy::Report);
        assert!(state.escalate(Some(Signal::Interrupt)));
        assert!(!state.escalate(Some(Signal::Terminate)));
        assert_eq!(state.escalated_by(), Some(Signal::Interrupt));
    }
}
