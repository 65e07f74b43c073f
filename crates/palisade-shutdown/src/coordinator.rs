//! The coordinator, the cheap [`Shutdown`] handle, and the phase sequence.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::sync::{Arc, Mutex};
use tokio::time::{Instant, timeout_at};

use crate::config::{Config, CoordinatorBuilder, Escalation, validate_hook_timeout};
use crate::counter::{Counter, Refuse};
use crate::error::{ConfigError, Refused};
use crate::hooks::{Hook, HookBuilder, HookId, HookResult, Hooks, boxed, drop_unrun};
use crate::phase::Phase;
use crate::report::{HookReport, Outcome, PhaseReport, ShutdownReport, Trigger};
use crate::scope::{Scope, ScopeInner, Tracked};
use crate::signal::{self, Signal};
use crate::state::State;

/// Runs the graceful-shutdown sequence: waits for a trigger, walks the phases under their
/// timeouts and the overall deadline, and returns a [`ShutdownReport`].
///
/// Build it once at start-up, hand [`Shutdown`] handles ([`handle`](Coordinator::handle)) to
/// everything that serves or spawns, and await [`run`](Coordinator::run) at the end of `main`.
///
/// ```
/// use std::time::Duration;
/// use palisade_shutdown::{Coordinator, Phase};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let coordinator = Coordinator::builder()
///     .readiness_delay(Duration::from_millis(10))
///     .deadline(Duration::from_secs(5))
///     .build()?;
/// let shutdown = coordinator.handle();
///
/// // A worker that stops when its scope is told to.
/// let root = shutdown.root();
/// let worker = root.clone();
/// root.spawn(async move { worker.stopped().await })?;
/// shutdown.on_cleanup("flush", async { /* flush buffers */ });
///
/// shutdown.trigger(); // in a service: SIGTERM or Ctrl-C
/// let report = coordinator.run().await;
/// assert!(report.is_clean(), "{report}");
/// assert_eq!(shutdown.phase(), Phase::Done);
/// # Ok(()) }
/// ```
pub struct Coordinator {
    inner: Arc<Inner>,
    /// Whether the signal handlers still have to be installed (built outside a runtime).
    listen: bool,
}

/// A cheap, cloneable handle on a [`Coordinator`]: check and await the shutdown, trigger it,
/// spawn tracked tasks, register cleanup hooks and build the tower layer.
#[derive(Clone)]
pub struct Shutdown {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Tells this coordinator's [`HookId`]s from another's.
    id: u64,
    pub(crate) state: Arc<State>,
    pub(crate) config: Config,
    pub(crate) requests: Counter,
    listeners: Counter,
    root: Arc<ScopeInner>,
    hooks: Mutex<Hooks>,
}

/// Aborts the task when dropped (a hook timed out, or the sequence was abandoned).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Aborts hook tasks and waits until the runtime has dropped their futures (a hook's log guard
/// has flushed, its connection is closed), as `run()` does for aborted tracked tasks.
async fn hooks_dropped(tasks: &mut [AbortOnDrop<Outcome>]) {
    for task in tasks.iter_mut() {
        task.0.abort();
    }
    for task in tasks.iter_mut() {
        let _ = (&mut task.0).await;
    }
}

/// A process-unique coordinator id. A plain std atomic: it numbers coordinators, it is not part
/// of any protocol a loom model checks.
fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A cheap snapshot for dashboards and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// The current phase.
    pub phase: Phase,
    /// Requests in flight through the [`ShutdownLayer`](crate::ShutdownLayer).
    pub requests_in_flight: usize,
    /// Tracked tasks in the root scope (nested scopes count their own).
    pub root_tasks: usize,
    /// Registered listeners that have not stopped accepting yet.
    pub listeners: usize,
}

impl Coordinator {
    /// A builder with the defaults (see [`CoordinatorBuilder`] for the table).
    pub fn builder() -> CoordinatorBuilder {
        CoordinatorBuilder::default()
    }

    pub(crate) fn from_config(config: Config) -> Coordinator {
        let state = Arc::new(State::new(config.panic_policy));
        let root = Arc::new(ScopeInner::new("root".into(), state.clone()));
        let in_runtime = tokio::runtime::Handle::try_current().is_ok();
        if in_runtime {
            signal::listen(state.clone(), &config.signals, config.escalation);
        }
        Coordinator {
            inner: Arc::new(Inner {
                id: next_id(),
                state,
                config,
                requests: Counter::new(Refuse::WhenClosed),
                listeners: Counter::new(Refuse::WhenClosed),
                root,
                hooks: Mutex::new(Hooks::default()),
            }),
            listen: !in_runtime,
        }
    }

    /// A handle to share with servers, tasks and layers.
    pub fn handle(&self) -> Shutdown {
        Shutdown {
            inner: self.inner.clone(),
        }
    }

    /// Waits for the first trigger (a signal, [`Shutdown::trigger`], or a panic under
    /// [`PanicPolicy::Shutdown`](crate::PanicPolicy::Shutdown)), runs every phase, and returns
    /// the report. While it runs, a second signal (or [`Shutdown::escalate`]) escalates as
    /// configured.
    ///
    /// It returns by the deadline plus [`abort_grace`](CoordinatorBuilder::abort_grace). It must
    /// be polled by a tokio runtime with timers and (for signals) I/O enabled.
    ///
    /// Cancel-safety: dropping this future abandons the sequence where it is (tasks keep
    /// running, hooks not yet run never run); it is meant to be awaited to the end.
    pub async fn run(self) -> ShutdownReport {
        let inner = self.inner.clone();
        if self.listen {
            signal::listen(
                inner.state.clone(),
                &inner.config.signals,
                inner.config.escalation,
            );
        }
        WaitFor::new(inner.state.clone(), Phase::NotReady).await;
        let (trigger, triggered_at) = inner
            .state
            .triggered()
            .unwrap_or((Trigger::Requested, Instant::now()));
        let deadline = triggered_at + inner.config.deadline;
        let mut progress = Progress {
            triggered_at,
            phases: Vec::new(),
            hooks: Vec::new(),
            aborted: 0,
            phase_started: None,
            hook_started: None,
            abort_started: false,
            hook_tasks: Vec::new(),
        };
        let (escalated, finished) = {
            let sequence = inner.sequence(deadline, &mut progress);
            tokio::pin!(sequence);
            tokio::select! {
                biased;
                () = &mut sequence => (None, true),
                () = Escalated::new(inner.state.clone()) => {
                    (Some(inner.state.escalated_by()), false)
                }
            }
        };
        // The sequence may finish in the poll an escalation arrived in (or one came before
        // `run`), and the biased select then never looks: it still counts.
        let escalated = escalated.or_else(|| {
            inner
                .state
                .is_escalated()
                .then(|| inner.state.escalated_by())
        });
        if let Some(by) = escalated {
            inner.escalated(by, &mut progress, finished).await;
        }
        inner.finish(trigger, escalated, progress)
    }
}

impl Drop for Coordinator {
    /// A coordinator dropped unrun, or with its `run` dropped midway, leaves its signal
    /// handlers nothing to trigger: from then on they exit the process on the first signal.
    fn drop(&mut self) {
        self.inner.state.abandon();
    }
}

impl fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coordinator")
            .field("phase", &self.inner.state.phase())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The report as the sequence builds it; a phase or hook cut short stays `Interrupted`.
struct Progress {
    triggered_at: Instant,
    phases: Vec<PhaseReport>,
    hooks: Vec<HookReport>,
    aborted: usize,
    /// When the phase (and the hook) now running began, to time them if escalation cuts them.
    phase_started: Option<Instant>,
    hook_started: Option<Instant>,
    /// Tasks were aborted already: an escalation has nothing more to do.
    abort_started: bool,
    /// Hook tasks aborted (timed out) or running when an escalation cut the sequence: their
    /// futures are dropped by the runtime, not here, and `run()` waits for that (within the
    /// grace) before it returns, as it does for aborted tracked tasks.
    hook_tasks: Vec<AbortOnDrop<Outcome>>,
}

impl Progress {
    fn begin(&mut self, phase: Phase) -> Instant {
        let now = Instant::now();
        self.phases.push(PhaseReport {
            phase,
            started_after: now.saturating_duration_since(self.triggered_at),
            took: Duration::ZERO,
            outcome: Outcome::Interrupted,
        });
        self.phase_started = Some(now);
        now
    }

    fn end(&mut self, started: Instant, outcome: Outcome) {
        if let Some(last) = self.phases.last_mut() {
            last.took = started.elapsed();
            last.outcome = outcome;
        }
        self.phase_started = None;
    }

    /// Times the phase and hook an escalation cut short (they stay `Interrupted`).
    fn interrupt(&mut self) {
        if let (Some(started), Some(last)) = (self.phase_started.take(), self.phases.last_mut()) {
            last.took = started.elapsed();
        }
        if let (Some(started), Some(last)) = (self.hook_started.take(), self.hooks.last_mut()) {
            last.took = started.elapsed();
        }
    }
}

impl Inner {
    /// Runs `work` as `phase`, cut at `timeout` (if any) or the deadline. `true` if it completed.
    async fn phase(
        &self,
        progress: &mut Progress,
        phase: Phase,
        timeout: Option<Duration>,
        deadline: Instant,
        work: impl Future<Output = ()>,
    ) -> bool {
        self.state.enter(phase);
        let started = progress.begin(phase);
        let limit = timeout.map_or(deadline, |timeout| (started + timeout).min(deadline));
        let completed = timeout_at(limit, work).await.is_ok();
        let outcome = if completed {
            Outcome::Completed
        } else {
            tracing::warn!(target: "palisade_shutdown", phase = phase.as_str(), "shutdown phase timed out");
            Outcome::TimedOut
        };
        progress.end(started, outcome);
        completed
    }

    async fn sequence(&self, deadline: Instant, progress: &mut Progress) {
        let config = &self.config;
        let delay = config.readiness_delay;
        self.phase(progress, Phase::NotReady, None, deadline, async {
            tokio::time::sleep(delay).await;
        })
        .await;

        self.listeners.close();
        let listeners = self.listeners.drained();
        self.phase(
            progress,
            Phase::StopAccepting,
            Some(config.stop_accepting_timeout),
            deadline,
            listeners,
        )
        .await;

        self.requests.close();
        let drained = self
            .phase(
                progress,
                Phase::Draining,
                Some(config.drain_timeout),
                deadline,
                async {
                    self.requests.drained().await;
                    ScopeInner::drain(self.root.clone()).await;
                },
            )
            .await;
        if !drained {
            // Tell every scope to stop and refuse new tasks; stragglers get until the deadline.
            self.root.stop_and_seal_all();
        }

        self.state.enter(Phase::Cleanup);
        let started = progress.begin(Phase::Cleanup);
        let mut cut = false;
        loop {
            let Some((name, timeout, hook)) = self.hooks.lock().next() else {
                break;
            };
            let hook_started = Instant::now();
            if hook_started >= deadline {
                cut = true;
                drop_unrun([(name.as_str(), hook)]);
                progress.hooks.push(HookReport {
                    name,
                    took: Duration::ZERO,
                    outcome: Outcome::Skipped,
                });
                continue;
            }
            progress.hooks.push(HookReport {
                name: name.clone(),
                took: Duration::ZERO,
                outcome: Outcome::Interrupted,
            });
            progress.hook_started = Some(hook_started);
            let limit = (hook_started + timeout).min(deadline);
            // On a task of its own: a hook that blocks, or panics when dropped, cannot stall
            // or take down the coordinator. Aborted on timeout, or if `run` is dropped.
            // Kept in `progress` while it runs, so that an escalation cutting the sequence can
            // still wait for its future to be dropped.
            let index = progress.hook_tasks.len();
            progress.hook_tasks.push(AbortOnDrop(tokio::spawn(hook)));
            let task = &mut progress.hook_tasks[index];
            let outcome = match timeout_at(limit, &mut task.0).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(error)) if error.is_panic() => {
                    Outcome::Panicked(crate::scope::panic_message(&*error.into_panic()))
                }
                Ok(Err(_)) => Outcome::Interrupted,
                Err(_) => Outcome::TimedOut,
            };
            if outcome == Outcome::TimedOut {
                // Aborted now; its future is dropped on the runtime, waited for below.
                task.0.abort();
            } else {
                // Finished: its future is gone already.
                progress.hook_tasks.pop();
            }
            match &outcome {
                Outcome::Completed => {
                    tracing::debug!(target: "palisade_shutdown", hook = %name, "cleanup hook completed");
                }
                outcome => {
                    tracing::warn!(target: "palisade_shutdown", hook = %name, %outcome, "cleanup hook did not complete");
                }
            }
            if let Some(last) = progress.hooks.last_mut() {
                last.took = hook_started.elapsed();
                last.outcome = outcome;
            }
            progress.hook_started = None;
        }
        self.hooks.lock().closed = true;
        progress.end(
            started,
            if cut {
                Outcome::TimedOut
            } else {
                Outcome::Completed
            },
        );

        let everything_stopped = async {
            self.requests.drained().await;
            ScopeInner::idle(self.root.clone()).await;
        };
        if !self
            .phase(
                progress,
                Phase::Aborting,
                None,
                deadline,
                everything_stopped,
            )
            .await
        {
            self.abort(progress).await;
        } else {
            // Before the deadline: the hooks that timed out get the grace to be dropped.
            let _ = tokio::time::timeout(
                self.config.abort_grace,
                hooks_dropped(&mut progress.hook_tasks),
            )
            .await;
        }
    }

    /// Stops and seals everything, aborts the tracked tasks, and waits up to the grace period
    /// for them to be dropped.
    async fn abort(&self, progress: &mut Progress) {
        progress.abort_started = true;
        self.root.stop_and_seal_all();
        self.listeners.seal();
        self.requests.seal();
        let aborted = self.root.abort_all();
        progress.aborted += aborted;
        if aborted > 0 {
            tracing::warn!(target: "palisade_shutdown", aborted, "aborted tracked tasks still running at the deadline");
        }
        let mut hook_tasks = std::mem::take(&mut progress.hook_tasks);
        let _ = tokio::time::timeout(self.config.abort_grace, async {
            ScopeInner::idle(self.root.clone()).await;
            hooks_dropped(&mut hook_tasks).await;
        })
        .await;
    }

    /// Carries out an escalation: exits, or aborts what is left of the sequence (nothing if it
    /// had `finished`: the report is only marked escalated).
    async fn escalated(&self, by: Option<Signal>, progress: &mut Progress, finished: bool) {
        let by_text = by.map_or("escalate()", Signal::as_str);
        if let Escalation::Exit(code) = self.config.escalation {
            tracing::error!(target: "palisade_shutdown", by = by_text, code, "shutdown escalated: exiting now");
            std::process::exit(code);
        }
        if finished {
            tracing::warn!(target: "palisade_shutdown", by = by_text, "shutdown escalated as it finished: nothing left to abort");
            return;
        }
        tracing::warn!(target: "palisade_shutdown", by = by_text, "shutdown escalated: aborting now");
        progress.interrupt();
        if progress.abort_started {
            // The sequence was already aborting (in its grace period): that is all there is.
            return;
        }
        let started = match progress.phases.last() {
            // Escalated while the Aborting phase waited for everything to stop: it aborts now,
            // in that phase, which the report lists once.
            Some(last) if last.phase == Phase::Aborting => {
                progress.triggered_at + last.started_after
            }
            _ => {
                self.state.enter(Phase::Aborting);
                progress.begin(Phase::Aborting)
            }
        };
        self.abort(progress).await;
        progress.end(started, Outcome::Interrupted);
    }

    fn finish(
        &self,
        trigger: Trigger,
        escalated: Option<Option<Signal>>,
        mut progress: Progress,
    ) -> ShutdownReport {
        let mut unrun = {
            let mut hooks = self.hooks.lock();
            hooks.closed = true;
            hooks.unrun()
        };
        drop_unrun(
            unrun
                .iter_mut()
                .filter_map(|(name, future)| Some((name.as_str(), future.take()?))),
        );
        progress
            .hooks
            .extend(unrun.into_iter().map(|(name, _)| HookReport {
                name,
                took: Duration::ZERO,
                outcome: Outcome::Skipped,
            }));
        self.state.enter(Phase::Done);
        let mut scopes = Vec::new();
        self.root.report(&mut scopes);
        let report = ShutdownReport {
            trigger,
            escalated,
            phases: progress.phases,
            hooks: progress.hooks,
            scopes,
            aborted: progress.aborted,
            requests_abandoned: self.requests.count(),
            panics: self.state.panics(),
            total: progress.triggered_at.elapsed(),
        };
        if report.is_clean() {
            tracing::info!(target: "palisade_shutdown", total = ?report.total, "shutdown complete");
        } else {
            tracing::warn!(target: "palisade_shutdown", total = ?report.total, aborted = report.aborted, "shutdown complete, not clean");
        }
        report
    }
}

impl Shutdown {
    /// Whether shutdown has been triggered (any phase after [`Phase::Running`]). One atomic
    /// load, lock-free: cheap enough for every request or loop iteration.
    #[inline]
    pub fn is_shutting_down(&self) -> bool {
        self.inner.state.is_shutting_down()
    }

    /// Whether a readiness probe should pass: `false` from the trigger on, so load balancers
    /// stop routing here while the service still serves through the readiness delay.
    #[inline]
    pub fn is_ready(&self) -> bool {
        !self.is_shutting_down()
    }

    /// Whether the shutdown was escalated (a second signal, or [`escalate`](Self::escalate)):
    /// phases after it are skipped, not run. One atomic load.
    pub fn is_escalated(&self) -> bool {
        self.inner.state.is_escalated()
    }

    /// The current phase. One atomic load.
    #[inline]
    pub fn phase(&self) -> Phase {
        self.inner.state.phase()
    }

    /// Starts the shutdown, as a signal would. Returns `true` if this call started it, `false`
    /// if it had already been triggered.
    pub fn trigger(&self) -> bool {
        self.inner.state.trigger(Trigger::Requested)
    }

    /// Escalates the shutdown as a second signal would (see [`Escalation`]), triggering it
    /// first if nothing has.
    pub fn escalate(&self) {
        self.inner.state.trigger(Trigger::Requested);
        self.inner.state.escalate(None);
    }

    /// Completes once the sequence reaches `phase` (immediately if it has). Cancel-safe, and
    /// `'static`, so it can be handed to a server or spawned.
    pub fn wait_for(&self, phase: Phase) -> WaitFor {
        WaitFor::new(self.inner.state.clone(), phase)
    }

    /// Completes once shutdown is triggered: [`wait_for`](Self::wait_for)`(Phase::NotReady)`.
    pub fn requested(&self) -> WaitFor {
        self.wait_for(Phase::NotReady)
    }

    /// Completes when listeners should stop accepting, after the readiness delay: what to pass
    /// to `axum::serve(..).with_graceful_shutdown(..)` or hyper's graceful shutdown. To have the
    /// stop-accepting phase wait for a listener, use [`listener`](Self::listener) instead.
    pub fn stop_accepting(&self) -> WaitFor {
        self.wait_for(Phase::StopAccepting)
    }

    /// Registers a listener the stop-accepting phase waits for: it stays registered until
    /// [`Listener::stop_accepting`] completes (or the `Listener` is dropped). With
    /// `with_graceful_shutdown`, that is the moment the server is told, a moment before its
    /// accept loop has closed the socket. Registered after
    /// that phase began, it is not counted and its future completes at once.
    pub fn listener(&self, name: &str) -> Listener {
        Listener {
            counted: self.inner.listeners.enter(),
            name: name.into(),
            inner: self.inner.clone(),
        }
    }

    /// The root scope of tracked tasks.
    pub fn root(&self) -> Scope {
        Scope::from_inner(self.inner.root.clone())
    }

    /// A scope nested in the root (see [`Scope::scope`]).
    pub fn scope(&self, name: &str) -> Scope {
        self.root().scope(name)
    }

    /// Spawns a tracked task in the root scope (see [`Scope::spawn`]).
    ///
    /// # Errors
    ///
    /// [`Refused`], with the future, once the root scope has finished draining.
    pub fn spawn<F>(&self, future: F) -> Result<tokio::task::JoinHandle<F::Output>, Refused<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        ScopeInner::spawn(&self.inner.root, future)
    }

    /// Tracks a future in the root scope without spawning it (see [`Scope::track`]).
    ///
    /// # Errors
    ///
    /// [`Refused`], with the future, once the root scope has finished draining.
    pub fn track<F: Future>(&self, future: F) -> Result<Tracked<F>, Refused<F>> {
        ScopeInner::track(&self.inner.root, future)
    }

    /// Registers a cleanup hook with the default timeout: `hook` runs in the cleanup phase,
    /// after hooks registered later have run (reverse order, like destructors). Its output may
    /// be `()` or a `Result`, whose error is reported. For a timeout of its own or an explicit
    /// order, use [`cleanup`](Self::cleanup).
    pub fn on_cleanup<F>(&self, name: &str, hook: F) -> HookId
    where
        F: Future + Send + 'static,
        F::Output: HookResult,
    {
        let timeout = self.inner.config.hook_timeout;
        self.push_hook(name.to_owned(), timeout, Vec::new(), hook)
    }

    /// Starts registering a cleanup hook with a timeout or order of its own.
    pub fn cleanup(&self, name: &str) -> HookBuilder<'_> {
        HookBuilder {
            shutdown: self,
            name: name.to_owned(),
            timeout: None,
            after: Vec::new(),
        }
    }

    pub(crate) fn register_hook<F>(
        &self,
        name: String,
        timeout: Option<Duration>,
        after: Vec<HookId>,
        hook: F,
    ) -> Result<HookId, ConfigError>
    where
        F: Future + Send + 'static,
        F::Output: HookResult,
    {
        let timeout = match timeout {
            Some(timeout) => {
                validate_hook_timeout("timeout", timeout, self.inner.config.deadline)?;
                timeout
            }
            None => self.inner.config.hook_timeout,
        };
        let registered = self.inner.hooks.lock().list.len();
        if let Some(unknown) = after
            .iter()
            .find(|id| id.coordinator != self.inner.id || id.index >= registered)
        {
            return Err(ConfigError::out_of_range(
                "after",
                "a hook registered earlier on this coordinator",
                unknown,
            ));
        }
        let after = after.into_iter().map(|id| id.index).collect();
        Ok(self.push_hook(name, timeout, after, hook))
    }

    fn push_hook<F>(&self, name: String, timeout: Duration, after: Vec<usize>, hook: F) -> HookId
    where
        F: Future + Send + 'static,
        F::Output: HookResult,
    {
        let mut hooks = self.inner.hooks.lock();
        // A hook registered too late is dropped at the end of this function, and warned of,
        // after the lock is released: its destructor, or the subscriber, may register a hook.
        let late = hooks.closed;
        // (Not `then(|| boxed(hook))`: the closure would own the hook and drop it right here.)
        let future = if late { None } else { Some(boxed(hook)) };
        let warned = late.then(|| name.clone());
        hooks.list.push(Hook {
            name,
            ran: false,
            timeout,
            after,
            future,
        });
        let id = HookId {
            coordinator: self.inner.id,
            index: hooks.list.len() - 1,
        };
        drop(hooks);
        if let Some(name) = warned {
            tracing::warn!(target: "palisade_shutdown", hook = %name, "cleanup hook registered after the cleanup phase; it will not run");
        }
        id
    }

    /// Counts one request in flight for the draining phase, as the
    /// [`ShutdownLayer`](crate::ShutdownLayer) does, for servers without tower (a TCP protocol,
    /// a queue consumer): hold the guard while the request is handled. `None` from the
    /// [`Draining`](Phase::Draining) phase on: refuse the request (the drain has started and
    /// will not wait for it). Every request is either counted before the drain looks, or
    /// refused: never neither.
    pub fn begin_request(&self) -> Option<RequestGuard> {
        self.inner.requests.enter().then(|| RequestGuard {
            inner: self.inner.clone(),
        })
    }

    /// A snapshot of the phase and the counts.
    pub fn metrics(&self) -> Metrics {
        Metrics {
            phase: self.phase(),
            requests_in_flight: self.inner.requests.count(),
            root_tasks: self.inner.root.tasks.count(),
            listeners: self.inner.listeners.count(),
        }
    }

    /// The [`ShutdownLayer`](crate::ShutdownLayer) that counts this coordinator's requests.
    #[cfg(feature = "tower")]
    pub fn layer(&self) -> crate::ShutdownLayer {
        crate::ShutdownLayer::new(self.clone())
    }

    /// Tracked tasks running here and in every nested scope.
    pub fn running_tasks(&self) -> usize {
        self.inner.root.running()
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("metrics", &self.metrics())
            .finish()
    }
}

/// One request counted in flight; from [`Shutdown::begin_request`]. Dropping it counts the
/// request out (the last one out during the drain wakes it).
pub struct RequestGuard {
    inner: Arc<Inner>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.inner.requests.exit();
    }
}

impl fmt::Debug for RequestGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestGuard")
            .field("in_flight", &self.inner.requests.count())
            .finish()
    }
}

/// A listener the stop-accepting phase waits for; from [`Shutdown::listener`].
pub struct Listener {
    inner: Arc<Inner>,
    name: String,
    counted: bool,
}

impl Listener {
    /// Completes when the listener should stop accepting, and then counts it as stopped: hand
    /// it to `with_graceful_shutdown`, which stops accepting as soon as it completes.
    /// Cancel-safe: dropping it also counts the listener as stopped.
    pub fn stop_accepting(self) -> impl Future<Output = ()> + Send + 'static {
        let wait = WaitFor::new(self.inner.state.clone(), Phase::StopAccepting);
        async move {
            wait.await;
            tracing::debug!(target: "palisade_shutdown", listener = %self.name, "listener stopped accepting");
            drop(self);
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.counted {
            self.inner.listeners.exit();
        }
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("name", &self.name)
            .field("counted", &self.counted)
            .finish()
    }
}

/// Completes once the shutdown reaches a phase; from [`Shutdown::wait_for`]. Cancel-safe:
/// dropping it gives its waker slot back.
pub struct WaitFor {
    state: Arc<State>,
    phase: Phase,
    slot: Option<usize>,
}

impl WaitFor {
    fn new(state: Arc<State>, phase: Phase) -> WaitFor {
        WaitFor {
            state,
            phase,
            slot: None,
        }
    }
}

impl Future for WaitFor {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let phase = this.phase;
        this.state
            .poll_until(cx, &mut this.slot, |state| state.phase() >= phase)
    }
}

impl Drop for WaitFor {
    fn drop(&mut self) {
        self.state.release(&mut self.slot);
    }
}

impl fmt::Debug for WaitFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitFor")
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

/// Completes once the shutdown is escalated.
struct Escalated {
    state: Arc<State>,
    slot: Option<usize>,
}

impl Escalated {
    fn new(state: Arc<State>) -> Escalated {
        Escalated { state, slot: None }
    }
}

impl Future for Escalated {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.state
            .poll_until(cx, &mut this.slot, State::is_escalated)
    }
}

impl Drop for Escalated {
    fn drop(&mut self) {
        self.state.release(&mut self.slot);
    }
}
