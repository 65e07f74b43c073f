//! An in-flight counter with a "drained" notification and refusal once closed or sealed.
//!
//! One atomic word: `count << 2 | SEALED | CLOSED`. Entering adds one *before* looking at the
//! flags, so every enter that was not refused is ordered before the `fetch_or` that closes or
//! seals (all read-modify-writes of one atomic are totally ordered) and the drain waiter counts
//! it. A refused enter takes its one back through [`Counter::exit`], which notifies if it was the
//! last, so a transient increment never strands the waiter.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use palisade_core::sync::atomic::{AtomicUsize, Ordering};

use crate::event::Event;

/// Draining has begun: [`Counter::drained`] can complete. Refuses enters for counters built
/// with [`Refuse::WhenClosed`].
const CLOSED: usize = 0b01;
/// Draining is over: every later enter is refused.
const SEALED: usize = 0b10;
const ONE: usize = 0b100;

/// When a counter starts refusing new entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refuse {
    /// From [`Counter::close`] on (requests: none admitted once draining starts).
    WhenClosed,
    /// Only once [`Counter::seal`]ed (tasks: work spawned while draining is still tracked).
    WhenSealed,
}

#[derive(Debug)]
pub(crate) struct Counter {
    state: AtomicUsize,
    refuse: usize,
    drained: Event,
}

impl Counter {
    pub(crate) fn new(refuse: Refuse) -> Counter {
        Counter {
            state: AtomicUsize::new(0),
            refuse: match refuse {
                Refuse::WhenClosed => CLOSED | SEALED,
                Refuse::WhenSealed => SEALED,
            },
            drained: Event::new(),
        }
    }

    /// Counts one in, or refuses (`false`). Every `true` must be matched by one [`exit`](Self::exit).
    #[inline]
    pub(crate) fn enter(&self) -> bool {
        let previous = self.state.fetch_add(ONE, Ordering::AcqRel);
        if previous & self.refuse == 0 {
            true
        } else {
            self.exit();
            false
        }
    }

    /// Counts one out; the last one out after [`close`](Self::close) wakes the drain waiter.
    #[inline]
    pub(crate) fn exit(&self) {
        let previous = self.state.fetch_sub(ONE, Ordering::AcqRel);
        if previous & !(CLOSED | SEALED) == ONE && previous & CLOSED != 0 {
            self.drained.notify_all();
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.state.load(Ordering::Acquire) / ONE
    }

    pub(crate) fn close(&self) {
        let previous = self.state.fetch_or(CLOSED, Ordering::AcqRel);
        if previous & !(CLOSED | SEALED) == 0 {
            self.drained.notify_all();
        }
    }

    /// Refuses every later enter. Closes too, so a drain wait can complete.
    pub(crate) fn seal(&self) {
        let previous = self.state.fetch_or(CLOSED | SEALED, Ordering::AcqRel);
        if previous & !(CLOSED | SEALED) == 0 {
            self.drained.notify_all();
        }
    }

    /// Seals the counter if it is closed and empty: afterwards nothing can enter, so it stays
    /// empty. `false` if something is (or just got) in.
    pub(crate) fn seal_if_empty(&self) -> bool {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & SEALED != 0 && state / ONE == 0 {
                return true;
            }
            if state / ONE != 0 {
                return false;
            }
            match self.state.compare_exchange_weak(
                state,
                state | CLOSED | SEALED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => state = actual,
            }
        }
    }

    /// Completes once the counter is closed and empty (immediately if it already is).
    pub(crate) fn drained(&self) -> Drained<'_> {
        Drained {
            counter: self,
            slot: None,
        }
    }

    fn is_drained(&self) -> bool {
        let state = self.state.load(Ordering::Acquire);
        state & CLOSED != 0 && state / ONE == 0
    }
}

/// Future of [`Counter::drained`]. Cancel-safe: dropping it gives its waker slot back.
#[derive(Debug)]
pub(crate) struct Drained<'a> {
    counter: &'a Counter,
    slot: Option<usize>,
}

impl Future for Drained<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let counter = this.counter;
        counter
            .drained
            .poll_until(cx, &mut this.slot, || counter.is_drained())
    }
}

impl Drop for Drained<'_> {
    fn drop(&mut self) {
        self.counter.drained.release(&mut self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::{Counter, Refuse};

    #[test]
    fn requests_are_refused_from_close_and_tasks_only_once_sealed() {
        let requests = Counter::new(Refuse::WhenClosed);
        let tasks = Counter::new(Refuse::WhenSealed);
        assert!(requests.enter() && tasks.enter());
        requests.close();
        tasks.close();
        assert!(!requests.enter(), "a closed request counter admits nothing");
        assert!(
            tasks.enter(),
            "a task spawned while draining is still tracked"
        );
        assert_eq!((requests.count(), tasks.count()), (1, 2));
        assert!(
            !tasks.seal_if_empty(),
            "sealing waits for the tracked tasks"
        );
        tasks.exit();
        tasks.exit();
        assert!(tasks.seal_if_empty());
        assert!(!tasks.enter(), "a sealed counter admits nothing");
        assert_eq!(tasks.count(), 0, "a refused enter leaves no trace");
        requests.exit();
        assert_eq!(requests.count(), 0);
    }
}
