//! Cleanup hooks: registered futures run, one at a time, in the cleanup phase.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::time::Duration;

use crate::coordinator::Shutdown;
use crate::error::ConfigError;
use crate::report::Outcome;

/// What a cleanup hook's future may return: `()`, or a `Result` whose error is reported.
pub trait HookResult {
    /// `Err` with the error's text if the hook failed.
    fn into_hook_result(self) -> Result<(), String>;
}

impl HookResult for () {
    fn into_hook_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Display> HookResult for Result<(), E> {
    fn into_hook_result(self) -> Result<(), String> {
        self.map_err(|error| error.to_string())
    }
}

/// Identifies a registered hook, to order another one [`after`](HookBuilder::after) it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HookId {
    pub(crate) coordinator: u64,
    pub(crate) index: usize,
}

/// A boxed hook whose output (or panic) is already its report outcome.
pub(crate) type HookFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

pub(crate) struct Hook {
    pub(crate) name: String,
    /// It was started (a hook registered too late never is, and is reported skipped).
    pub(crate) ran: bool,
    pub(crate) timeout: Duration,
    pub(crate) after: Vec<usize>,
    pub(crate) future: Option<HookFuture>,
}

/// Every hook registered, in registration order; a hook's future is taken when it runs.
#[derive(Default)]
pub(crate) struct Hooks {
    pub(crate) list: Vec<Hook>,
    /// The cleanup phase is over: later hooks are refused (logged, reported as skipped).
    pub(crate) closed: bool,
}

impl Hooks {
    /// The next hook to run: the latest-registered one whose `after` hooks have all run.
    /// Edges only point at earlier hooks, so the order always exists.
    pub(crate) fn next(&mut self) -> Option<(String, Duration, HookFuture)> {
        let ready = (0..self.list.len()).rev().find(|&index| {
            self.list[index].future.is_some()
                && self.list[index]
                    .after
                    .iter()
                    .all(|&dependency| self.list[dependency].ran)
        })?;
        let hook = &mut self.list[ready];
        let future = hook.future.take()?;
        hook.ran = true;
        Some((hook.name.clone(), hook.timeout, future))
    }

    /// Hooks that never ran: their names, and their futures taken out to be dropped by the
    /// caller once the lock is released (see [`drop_unrun`]).
    pub(crate) fn unrun(&mut self) -> Vec<(String, Option<HookFuture>)> {
        self.list
            .iter_mut()
            .filter(|hook| !hook.ran)
            .map(|hook| {
                hook.ran = true;
                (hook.name.clone(), hook.future.take())
            })
            .collect()
    }
}

/// Drops the futures of hooks that will never run, each in place, with no lock held, so that
/// every destructor has run when `run()` returns (`main` often exits the process right after:
/// a hook owning a log guard or a writer must have flushed). A destructor that panics (a
/// blocking client owning a runtime, dropped in async context) is caught and logged: it cannot
/// take `run()` down, nor keep the other hooks from being dropped. One that registers a hook
/// finds the hooks' lock free.
pub(crate) fn drop_unrun<'a>(unrun: impl IntoIterator<Item = (&'a str, HookFuture)>) {
    for (name, future) in unrun {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(move || drop(future))) {
            let message = crate::scope::panic_message(&*panic);
            tracing::warn!(target: "palisade_shutdown", hook = %name, panic = %message, "a cleanup hook that never ran panicked when dropped");
        }
    }
}

/// Registers a cleanup hook with its own timeout or ordering; from
/// [`Shutdown::cleanup`](crate::Shutdown::cleanup).
#[must_use = "a hook is registered only by `register`"]
pub struct HookBuilder<'a> {
    pub(crate) shutdown: &'a Shutdown,
    pub(crate) name: String,
    pub(crate) timeout: Option<Duration>,
    pub(crate) after: Vec<HookId>,
}

impl HookBuilder<'_> {
    /// This hook's timeout, instead of the coordinator's
    /// [`hook_timeout`](crate::CoordinatorBuilder::hook_timeout). Checked by `register`:
    /// 1 ms up to the overall deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs this hook only after `hook` has finished, although it was registered later (hooks
    /// otherwise run in reverse order of registration). Call it once per hook to wait for.
    pub fn after(mut self, hook: HookId) -> Self {
        self.after.push(hook);
        self
    }

    /// Registers `hook`; it runs in the cleanup phase (never before). A hook registered after
    /// the cleanup phase has ended never runs: it is dropped, with a warning.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the timeout is outside 1 ms ..= the deadline, or an `after` id
    /// does not name a hook of this coordinator.
    pub fn register<F>(self, hook: F) -> Result<HookId, ConfigError>
    where
        F: Future + Send + 'static,
        F::Output: HookResult,
    {
        self.shutdown
            .register_hook(self.name, self.timeout, self.after, hook)
    }
}

impl fmt::Debug for HookBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookBuilder")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

/// Boxes a hook, turning its output (and a panic while polling it) into its outcome.
pub(crate) fn boxed<F>(hook: F) -> HookFuture
where
    F: Future + Send + 'static,
    F::Output: HookResult,
{
    let mut hook = Box::pin(hook);
    Box::pin(std::future::poll_fn(move |cx| {
        match catch_unwind(AssertUnwindSafe(|| hook.as_mut().poll(cx))) {
            Ok(poll) => poll.map(|output| match output.into_hook_result() {
                Ok(()) => Outcome::Completed,
                Err(error) => Outcome::Failed(error),
            }),
            Err(payload) => {
                std::task::Poll::Ready(Outcome::Panicked(crate::scope::panic_message(&*payload)))
            }
        }
    }))
}
