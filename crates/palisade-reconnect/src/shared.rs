//! The state every clone of a [`Reconnect`](crate::Reconnect) shares with its background task:
//! the current connection and its generation, the waiting clones, and the task's wake-up.
//!
//! One task (the driver) makes every connection; clones only read the current one, report it
//! dead, or wait. So there is exactly one connect per generation however many clones wait,
//! and every waiter is woken with the result (a connection, or closed).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use palisade_core::sync::Mutex;
use palisade_core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use tokio::time::Instant;

use crate::state::{Cause, CloseReason, ConnectionState, Reporter};

/// The background task, built but not started (it starts at the first use).
pub(crate) type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Where the shared connection is.
#[derive(Debug)]
pub(crate) enum Phase<S> {
    /// Not started, or an attempt is being made or waited for.
    Pending {
        /// Why the last attempt failed or the last connection went down.
        cause: Option<Cause>,
        /// When the next attempt is due; none while one is in flight.
        next_attempt_at: Option<Instant>,
    },
    /// Connection `generation` is up.
    Up { generation: u64, service: S },
    /// Connection `generation` was reported dead; the driver has not seen it yet.
    Lost { generation: u64, cause: Cause },
    /// Closed for good.
    Closed(CloseReason),
}

#[derive(Debug)]
pub(crate) struct Core<S> {
    pub(crate) phase: Phase<S>,
    /// The driver, until the first use starts it.
    task: Option<TaskSlot>,
    /// Set by `close()` or the last handle's drop; the driver stops at its next step.
    pub(crate) closing: bool,
    driver: Option<Waker>,
    /// One slot per waiting clone, held until the next drain or the clone's drop.
    waiters: Vec<Waker>,
    /// Slots of `waiters` freed by dropped clones, reused before `waiters` grows: without them
    /// a clone per request, pending on a saturated connection that stays up, would grow
    /// `waiters` by one slot per request until the next change of connection.
    free: Vec<usize>,
    /// Bumped whenever `waiters` is drained, so a clone knows whether its slot is still there.
    epoch: u64,
}

/// The unstarted driver (a wrapper only for `Debug`).
pub(crate) struct TaskSlot(pub(crate) Task);

impl std::fmt::Debug for TaskSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskSlot")
    }
}

/// What the driver is woken for.
#[derive(Debug)]
pub(crate) enum Event {
    /// The connection it made was reported dead.
    Lost(Cause),
    /// Close: stop at once.
    Closing,
}

#[derive(Debug)]
pub(crate) struct Shared<S> {
    pub(crate) core: Mutex<Core<S>>,
    /// Held while a change is made and published: taken before `core`, released after the
    /// publish, so states reach the channel in order without the core lock held.
    publishing: Mutex<()>,
    /// The generation that is up, 0 when none: the clones' lock-free check of their copy.
    current: AtomicU64,
    /// `Core::closing`, for the clones' lock-free check in `call`: set (`Release`) under the
    /// core lock beside it, so before `close()` returns, and never cleared.
    closing: AtomicBool,
    /// Live `Reconnect` handles; the last one's drop closes.
    handles: AtomicUsize,
    pub(crate) reporter: Reporter,
}

/// Where a clone waits: its waker's slot in `Core::waiters` in a given epoch. A slot belongs to
/// one clone from `wait` until the next drain (a new epoch) or the clone's `forget`, which
/// hands it to the next clone that waits.
#[derive(Debug, Default)]
pub(crate) struct WaitSlot(Option<(u64, usize)>);

impl<S> Shared<S> {
    /// Without its driver yet: [`install_task`](Shared::install_task) adds it.
    pub(crate) fn new() -> Shared<S> {
        Shared {
            core: Mutex::new(Core {
                phase: Phase::Pending {
                    cause: None,
                    next_attempt_at: None,
                },
                task: None,
                closing: false,
                driver: None,
                waiters: Vec::new(),
                free: Vec::new(),
                epoch: 0,
            }),
            publishing: Mutex::new(()),
            current: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            handles: AtomicUsize::new(1),
            reporter: Reporter::new(),
        }
    }

    /// Adds the driver, which holds an `Arc` of this state (so it is made after it).
    pub(crate) fn install_task(&self, task: Task) {
        self.core.lock().task = Some(TaskSlot(task));
    }

    /// Whether connection `generation` is still the one up.
    #[inline]
    pub(crate) fn is_current(&self, generation: u64) -> bool {
        self.current.load(Ordering::Acquire) == generation
    }

    /// Whether `close()`, the last handle's drop or the driver's stop has closed the service:
    /// a clone's `call` then sends nothing.
    #[inline]
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Takes the unstarted driver, if this is the first use.
    pub(crate) fn take_task(core: &mut Core<S>) -> Option<Task> {
        core.task.take().map(|slot| slot.0)
    }

    /// Puts the driver back: it could not be started now.
    pub(crate) fn put_back_task(&self, task: Task) {
        let rejected = {
            let mut core = self.core.lock();
            if core.task.is_none() && !core.closing {
                core.task = Some(TaskSlot(task));
                None
            } else {
                Some(task)
            }
        };
        // Closed meanwhile: dropping the task runs its guard, which closes the state.
        drop(rejected);
    }

    /// Registers `waker` to be woken at the next change; `slot` remembers where.
    pub(crate) fn wait(core: &mut Core<S>, slot: &mut WaitSlot, waker: &Waker) {
        match slot.0 {
            Some((epoch, index)) if epoch == core.epoch => {
                if !core.waiters[index].will_wake(waker) {
                    core.waiters[index] = waker.clone();
                }
            }
            _ => {
                let index = match core.free.pop() {
                    Some(index) => {
                        core.waiters[index] = waker.clone();
                        index
                    }
                    None => {
                        core.waiters.push(waker.clone());
                        core.waiters.len() - 1
                    }
                };
                slot.0 = Some((core.epoch, index));
            }
        }
    }

    /// Wakes every waiting clone (after unlocking).
    fn drain_waiters(core: &mut Core<S>) -> Vec<Waker> {
        core.epoch += 1;
        core.free.clear();
        std::mem::take(&mut core.waiters)
    }

    /// Connection `generation` failed under a clone: wakes the driver to replace it. Later
    /// reports of the same generation (other clones, other requests) change nothing.
    pub(crate) fn report_lost(&self, generation: u64, cause: Cause) {
        let (driver, waiters, old) = {
            let mut core = self.core.lock();
            match core.phase {
                Phase::Up { generation: g, .. } if g == generation => {}
                _ => return,
            }
            self.current.store(0, Ordering::Release);
            let old = std::mem::replace(&mut core.phase, Phase::Lost { generation, cause });
            // Clones waiting in the old connection's own `poll_ready` registered here too:
            // wake them so they move on (to wait for the next generation, or fail fast).
            (core.driver.take(), Self::drain_waiters(&mut core), old)
        };
        drop(old); // the user's service, dropped outside the lock
        if let Some(driver) = driver {
            driver.wake();
        }
        waiters.into_iter().for_each(Waker::wake);
    }

    /// Forgets a dropped clone's waker (so a task that is gone is not kept alive until the
    /// next state change) and frees its slot for the next clone that waits. Only a slot of the
    /// current epoch is freed: an older one was drained with its epoch.
    pub(crate) fn forget(&self, slot: &mut WaitSlot) {
        if let Some((epoch, index)) = slot.0.take() {
            let mut core = self.core.lock();
            if core.epoch == epoch {
                core.waiters[index] = Waker::noop().clone();
                core.free.push(index);
            }
        }
    }

    /// The driver waits for its connection `generation` to be lost, or for closing.
    pub(crate) fn poll_event(&self, generation: u64, cx: &mut Context<'_>) -> Poll<Event> {
        let mut core = self.core.lock();
        if core.closing {
            return Poll::Ready(Event::Closing);
        }
        if let Phase::Lost {
            generation: g,
            cause,
        } = &core.phase
            && *g == generation
        {
            return Poll::Ready(Event::Lost(cause.clone()));
        }
        if !core
            .driver
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            core.driver = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// The driver waits for closing only (during an attempt or a backoff).
    pub(crate) fn poll_closing(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut core = self.core.lock();
        if core.closing {
            return Poll::Ready(());
        }
        if !core
            .driver
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            core.driver = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Sets the phase, then publishes the state and wakes the waiting clones.
    ///
    /// The state is published after the core lock is released, so a caller holding a
    /// `state().borrow()` while it calls into a clone cannot deadlock with the task; the
    /// publish lock keeps the published order the order of the changes.
    pub(crate) fn set(&self, phase: Phase<S>, state: ConnectionState) {
        let _publishing = self.publishing.lock();
        let (waiters, old) = {
            let mut core = self.core.lock();
            if matches!(core.phase, Phase::Closed(_)) {
                return;
            }
            let generation = match &phase {
                Phase::Up { generation, .. } => *generation,
                _ => 0,
            };
            let old = std::mem::replace(&mut core.phase, phase);
            self.current.store(generation, Ordering::Release);
            (Self::drain_waiters(&mut core), old)
        };
        drop(old);
        self.reporter.publish(state);
        waiters.into_iter().for_each(Waker::wake);
    }

    /// Closed for good (the driver's last act, or a close before it was spawned). Before it was
    /// spawned (or from a runtime dropping it) this publishes from the caller's thread: the
    /// README's rule on `state()` borrows covers it.
    pub(crate) fn close(&self, reason: CloseReason) {
        // The unstarted task is dropped last, with no lock held: its guard closes again (a
        // no-op by then).
        let task = {
            let _publishing = self.publishing.lock();
            let (waiters, task, old) = {
                let mut core = self.core.lock();
                core.closing = true;
                self.closing.store(true, Ordering::Release);
                let task = Self::take_task(&mut core);
                if matches!(core.phase, Phase::Closed(_)) {
                    (None, task, None)
                } else {
                    let old = std::mem::replace(&mut core.phase, Phase::Closed(reason.clone()));
                    self.current.store(0, Ordering::Release);
                    (Some(Self::drain_waiters(&mut core)), task, Some(old))
                }
            };
            drop(old);
            if let Some(waiters) = waiters {
                self.reporter.publish(ConnectionState::Closed(reason));
                waiters.into_iter().for_each(Waker::wake);
            }
            task
        };
        drop(task);
    }

    /// Asks the driver to close (it publishes `Closed` when it stops); closes at once only when
    /// the driver was never spawned (`task` still here): a driver spawned but not yet run
    /// publishes `Closed` at its first poll. The clones stop using the connection at once, not
    /// when the driver gets to run: their copies stop being current, `poll_shared` sees
    /// `closing`, and `call` sees the `closing` flag (so a clone readied before sends nothing
    /// either).
    pub(crate) fn request_close(&self) {
        let (driver, unstarted) = {
            let mut core = self.core.lock();
            core.closing = true;
            self.closing.store(true, Ordering::Release);
            self.current.store(0, Ordering::Release);
            (core.driver.take(), core.task.is_some())
        };
        if unstarted {
            self.close(CloseReason::Closed);
        }
        if let Some(driver) = driver {
            driver.wake();
        }
    }

    /// Why a clone may use no connection from now on: closed, or closing (`close()` or the last
    /// handle's drop, before the driver has stopped and published `Closed`).
    pub(crate) fn closed_reason(core: &Core<S>) -> Option<CloseReason> {
        match &core.phase {
            Phase::Closed(reason) => Some(reason.clone()),
            _ if core.closing => Some(CloseReason::Closed),
            _ => None,
        }
    }

    pub(crate) fn add_handle(&self) {
        self.handles.fetch_add(1, Ordering::Relaxed);
    }

    /// A handle dropped; the last one closes.
    pub(crate) fn drop_handle(&self) {
        if self.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.request_close();
        }
    }
}
