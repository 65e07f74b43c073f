//! Real deadlocks, found after the fact by parking_lot's `deadlock_detection` and reported
//! through `tracing`.
//!
//! The order detector finds deadlocks that *could* happen; this finds those that *did*: threads
//! blocked on each other's parking_lot locks (palisade's sync locks are parking_lot's), with a
//! backtrace of each. It needs the `deadlock-detection` feature, which turns parking_lot's
//! feature on for the whole build and makes every parking_lot lock do some bookkeeping, so it is
//! meant for debug and staging builds. It sees no async locks (a task waiting on tokio's lock is
//! not a blocked thread).

use std::any::Any;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use palisade_core::ConfigError;

/// One thread of a deadlock cycle.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadlockedThread {
    /// The blocked thread.
    pub thread_id: ThreadId,
    /// Where it is blocked.
    pub backtrace: String,
}

/// A set of threads waiting on each other (or one thread waiting for a lock it holds itself).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Deadlock {
    /// The threads of the cycle.
    pub threads: Vec<DeadlockedThread>,
}

impl fmt::Display for Deadlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.threads.len() {
            1 => f.write_str("deadlock: a thread waits for a lock it holds itself")?,
            n => write!(f, "deadlock: {n} threads wait on each other")?,
        }
        for t in &self.threads {
            write!(
                f,
                "\n  thread {:?} is blocked at:\n{}",
                t.thread_id, t.backtrace
            )?;
        }
        Ok(())
    }
}

/// The deadlocks that formed since the last call anywhere in the process, a [`Watchdog`]'s
/// included (parking_lot reports each one once).
pub fn check() -> Vec<Deadlock> {
    parking_lot::deadlock::check_deadlock()
        .into_iter()
        .map(|cycle| Deadlock {
            threads: cycle
                .iter()
                .map(|t| DeadlockedThread {
                    thread_id: t.thread_id(),
                    backtrace: format!("{:?}", t.backtrace()),
                })
                .collect(),
        })
        .collect()
}

/// A thread that calls [`check`] every interval and reports each deadlock as a `tracing` error
/// (target `palisade_lock`).
///
/// Stops when dropped, so keep it for as long as it should watch. Dropping it waits for a check
/// in progress and its callbacks to finish. A callback may drop it too: the thread then ends
/// after the check in progress, whose remaining deadlocks are still logged and still reach the
/// callback (parking_lot reports each deadlock once, so skipping them would lose them).
#[derive(Debug)]
#[must_use = "the watchdog stops as soon as it is dropped: keep it for as long as it should watch"]
pub struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Starts a [`Watchdog`] checking every `interval` (1 s to 10 s is typical: a check costs a scan
/// of the waiting threads). `on_deadlock` runs on the watchdog's thread for each deadlock after it
/// is logged. If it panics, the panic is logged too and the watchdog goes on with the next
/// deadlock; if it blocks (on a lock a deadlocked thread holds, say), the watchdog blocks with it.
///
/// # Errors
///
/// A zero `interval`, or the thread could not be spawned.
pub fn spawn_watchdog(
    interval: Duration,
    on_deadlock: impl Fn(&Deadlock) + Send + 'static,
) -> Result<Watchdog, ConfigError> {
    if interval.is_zero() {
        return Err(ConfigError::out_of_range(
            "interval",
            "greater than zero",
            interval,
        ));
    }
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("palisade-deadlock-watchdog".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                for deadlock in check() {
                    tracing::error!(target: "palisade_lock", threads = deadlock.threads.len(), "{deadlock}");
                    // parking_lot reports each deadlock once: a panic that ended this thread
                    // would lose the rest of this check's deadlocks and every later one.
                    let call = panic::catch_unwind(AssertUnwindSafe(|| on_deadlock(&deadlock)));
                    if let Err(payload) = call {
                        tracing::error!(
                            target: "palisade_lock",
                            panic = panic_message(payload.as_ref()),
                            "the deadlock watchdog's callback panicked; the watchdog goes on"
                        );
                    }
                }
            }
        })
        .map_err(|e| ConfigError::out_of_range("watchdog thread", "spawnable", e.to_string()))?;
    Ok(Watchdog {
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// The message of a panic payload, when it has one.
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Closing the channel ends the loop at its next wait.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // Dropped by its own callback: the thread cannot join itself, and ends on its own
            // after the check in progress (the channel is closed).
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}
