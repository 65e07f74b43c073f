//! Tracked tasks in nested scopes: spawn, track, stop bottom-up, abort at the deadline.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use palisade_core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use palisade_core::sync::{Arc, Mutex};
use tokio::task::{AbortHandle, JoinHandle};

use crate::counter::{Counter, Refuse};
use crate::error::Refused;
use crate::event::Event;
use crate::state::State;

/// Below this many abort handles a scope does not bother dropping finished ones.
const MIN_COMPACT: usize = 64;

/// A named group of tracked tasks, nested under another scope (the root is the coordinator's).
///
/// When draining, a scope is stopped only after every scope nested in it has drained: a
/// subsystem finishes before its parent. Its tasks learn it is their turn from
/// [`stopped`](Scope::stopped) (or react earlier to
/// [`Shutdown::requested`](crate::Shutdown::requested)); the drain waits until they have all
/// returned. A task spawned into a scope is either tracked and awaited, or refused with its
/// future handed back ([`Refused`]) once the scope has finished draining; it is never lost.
///
/// Cloning is cheap and shares the scope.
#[derive(Clone)]
pub struct Scope {
    pub(crate) inner: Arc<ScopeInner>,
}

pub(crate) struct ScopeInner {
    pub(crate) name: std::sync::Arc<str>,
    pub(crate) state: Arc<State>,
    pub(crate) tasks: Counter,
    stopping: AtomicBool,
    stop_event: Event,
    children: Mutex<Children>,
    aborts: Mutex<Aborts>,
    /// Futures tracked without spawning ([`Scope::track`]); spawned tasks are counted in
    /// [`Aborts`], under the lock their registration takes anyway.
    tracked: AtomicU64,
    panicked: AtomicU64,
}

#[derive(Default)]
struct Children {
    scopes: Vec<Arc<ScopeInner>>,
    /// Draining has taken the list: new child scopes are born drained.
    closed: bool,
    /// Totals of pruned child scopes (finished, and no handle left), kept for the report.
    pruned_spawned: u64,
    pruned_panicked: u64,
    /// Prune finished children when the list reaches this length (amortized O(1) per child).
    prune_at: usize,
}

#[derive(Default)]
struct Aborts {
    handles: Vec<AbortHandle>,
    compact_at: usize,
    spawned: u64,
    /// [`ScopeInner::abort_all`] has run: a task registered afterwards (its spawn raced the
    /// abort) is aborted at once.
    aborting: bool,
}

impl ScopeInner {
    pub(crate) fn new(name: std::sync::Arc<str>, state: Arc<State>) -> ScopeInner {
        ScopeInner {
            name,
            state,
            tasks: Counter::new(Refuse::WhenSealed),
            stopping: AtomicBool::new(false),
            stop_event: Event::new(),
            children: Mutex::new(Children {
                prune_at: MIN_COMPACT,
                ..Children::default()
            }),
            aborts: Mutex::new(Aborts {
                handles: Vec::new(),
                compact_at: MIN_COMPACT,
                spawned: 0,
                aborting: false,
            }),
            tracked: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
        }
    }

    /// Tells this scope's tasks it is their turn ([`Scope::stopped`] completes).
    pub(crate) fn stop(&self) {
        if !self.stopping.swap(true, Ordering::AcqRel) {
            self.stop_event.notify_all();
        }
    }

    /// Stops this scope and every scope below it, and refuses new tasks in all of them.
    pub(crate) fn stop_and_seal_all(&self) {
        for child in self.take_children() {
            child.stop_and_seal_all();
        }
        self.stop();
        self.tasks.seal();
    }

    /// Closes the child list and returns the children to drain first.
    pub(crate) fn take_children(&self) -> Vec<Arc<ScopeInner>> {
        let mut children = self.children.lock();
        children.closed = true;
        children.scopes.clone()
    }

    /// Drains this scope: children first (concurrently), then this scope's own tasks, then
    /// seals it so nothing can join it afterwards.
    ///
    /// (`this` rather than `self`: loom's `Arc` cannot be a method receiver.)
    pub(crate) fn drain(this: Arc<ScopeInner>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let children = this.take_children();
            futures_util::future::join_all(children.into_iter().map(ScopeInner::drain)).await;
            this.stop();
            this.tasks.close();
            loop {
                this.tasks.drained().await;
                if this.tasks.seal_if_empty() {
                    break;
                }
            }
        })
    }

    /// Tracked tasks still running here and below.
    pub(crate) fn running(&self) -> usize {
        let children = self.children.lock().scopes.clone();
        self.tasks.count() + children.iter().map(|child| child.running()).sum::<usize>()
    }

    /// Waits until no tracked task runs here or below (the counters only fall once sealed).
    pub(crate) async fn idle(this: Arc<ScopeInner>) {
        let children = this.children.lock().scopes.clone();
        for child in children {
            Box::pin(ScopeInner::idle(child)).await;
        }
        this.tasks.close();
        this.tasks.drained().await;
    }

    /// Aborts every unfinished task here and below; returns how many were aborted.
    pub(crate) fn abort_all(&self) -> usize {
        let children = self.children.lock().scopes.clone();
        let mut aborted = children.iter().map(|child| child.abort_all()).sum();
        let mut aborts = self.aborts.lock();
        aborts.aborting = true;
        for handle in &aborts.handles {
            if !handle.is_finished() {
                handle.abort();
                aborted += 1;
            }
        }
        aborted
    }

    fn register(&self, handle: AbortHandle) {
        let mut aborts = self.aborts.lock();
        aborts.spawned += 1;
        if aborts.aborting {
            handle.abort();
        }
        if aborts.handles.len() >= aborts.compact_at {
            aborts.handles.retain(|handle| !handle.is_finished());
            aborts.compact_at = (aborts.handles.len() * 2).max(MIN_COMPACT);
        }
        aborts.handles.push(handle);
    }

    /// A report line for this scope and each below it, depth first.
    pub(crate) fn report(&self, out: &mut Vec<crate::report::ScopeReport>) {
        let children = self.children.lock();
        out.push(crate::report::ScopeReport {
            name: self.name.to_string(),
            spawned: self.spawned() + children.pruned_spawned,
            panicked: self.panicked.load(Ordering::Relaxed) + children.pruned_panicked,
            still_running: self.tasks.count(),
        });
        let scopes = children.scopes.clone();
        drop(children);
        for child in scopes {
            child.report(out);
        }
    }

    /// Whether `this` (held only by its parent's list, whose lock the caller holds) is
    /// finished: no handle, no task, and the same for every scope nested in it. Nothing can
    /// reach such a subtree any more, so it can be pruned whole.
    fn is_finished(this: &Arc<ScopeInner>) -> bool {
        Arc::strong_count(this) == 1
            && this.tasks.count() == 0
            && this
                .children
                .lock()
                .scopes
                .iter()
                .all(ScopeInner::is_finished)
    }

    /// Tasks tracked, and tasks panicked, here and in every scope nested in it (pruned or not).
    fn totals(&self) -> (u64, u64) {
        let children = self.children.lock();
        let mut totals = (
            self.spawned() + children.pruned_spawned,
            self.panicked.load(Ordering::Relaxed) + children.pruned_panicked,
        );
        for child in &children.scopes {
            let (spawned, panicked) = child.totals();
            totals.0 += spawned;
            totals.1 += panicked;
        }
        totals
    }

    /// Tasks and futures tracked here over the scope's life.
    fn spawned(&self) -> u64 {
        self.tracked.load(Ordering::Relaxed) + self.aborts.lock().spawned
    }

    /// Counts `future` in (not in the report's totals: the caller does that), or refuses it.
    #[inline]
    fn enter<F>(this: &Arc<ScopeInner>, future: F) -> Result<Tracked<F>, Refused<F>> {
        if !this.tasks.enter() {
            return Err(Refused::new(future, this.name.clone()));
        }
        Ok(Tracked {
            future,
            token: Some(Token {
                scope: this.clone(),
            }),
        })
    }

    pub(crate) fn track<F: Future>(
        this: &Arc<ScopeInner>,
        future: F,
    ) -> Result<Tracked<F>, Refused<F>> {
        let tracked = ScopeInner::enter(this, future)?;
        this.tracked.fetch_add(1, Ordering::Relaxed);
        Ok(tracked)
    }

    #[inline]
    pub(crate) fn spawn<F>(
        this: &Arc<ScopeInner>,
        future: F,
    ) -> Result<JoinHandle<F::Output>, Refused<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let tracked = ScopeInner::enter(this, future)?;
        let handle = tokio::spawn(tracked);
        this.register(handle.abort_handle());
        Ok(handle)
    }

    fn record_panic(&self, payload: &(dyn Any + Send)) {
        self.panicked.fetch_add(1, Ordering::Relaxed);
        let message = panic_message(payload);
        let task = tokio::task::try_id().map(|id| id.to_string());
        tracing::error!(target: "palisade_shutdown", scope = %self.name, task = task.as_deref().unwrap_or("-"), panic = %message, "tracked task panicked");
        self.state.task_panicked(crate::report::TaskPanic {
            scope: self.name.to_string(),
            task,
            message,
        });
    }
}

/// The text of a panic payload (`&str` or `String`), or a placeholder.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&'static str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "<non-string panic payload>".to_owned()
    }
}

impl Scope {
    pub(crate) fn from_inner(inner: Arc<ScopeInner>) -> Scope {
        Scope { inner }
    }

    /// The scope's path: `root`, `root/ingest`, `root/ingest/parser`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// A scope nested in this one, drained before it. Created after this scope began draining,
    /// it is born drained and refuses tasks.
    ///
    /// Nested scopes are cheap: finished scopes with no handle left (and none left on any scope
    /// nested in them, nor a task) are pruned with everything nested in them (their counts are
    /// kept for the report) as their parent creates more children, amortized O(1) each.
    pub fn scope(&self, name: &str) -> Scope {
        let child = Arc::new(ScopeInner::new(
            format!("{}/{}", self.inner.name, name).into(),
            self.inner.state.clone(),
        ));
        let mut children = self.inner.children.lock();
        if children.closed {
            drop(children);
            // Born drained, and so is anything nested in it later.
            child.stop_and_seal_all();
            return Scope { inner: child };
        }
        if children.scopes.len() >= children.prune_at {
            let mut pruned = (0, 0);
            children.scopes.retain(|scope| {
                // A finished scope's own nested scopes go with it: checked and counted whole.
                let finished = ScopeInner::is_finished(scope);
                if finished {
                    let (spawned, panicked) = scope.totals();
                    pruned.0 += spawned;
                    pruned.1 += panicked;
                }
                !finished
            });
            children.pruned_spawned += pruned.0;
            children.pruned_panicked += pruned.1;
            children.prune_at = (children.scopes.len() * 2).max(MIN_COMPACT);
        }
        children.scopes.push(child.clone());
        Scope { inner: child }
    }

    /// Wraps `future` so the scope tracks it (counted while it lives, its panics reported),
    /// without spawning it: for `JoinSet`, `spawn_local` or a future you poll yourself. A
    /// tracked future cannot be aborted at the deadline; a spawned one can.
    ///
    /// # Errors
    ///
    /// [`Refused`], with the future, once the scope has finished draining.
    pub fn track<F: Future>(&self, future: F) -> Result<Tracked<F>, Refused<F>> {
        ScopeInner::track(&self.inner, future)
    }

    /// Spawns `future` on the current tokio runtime as a tracked task: the draining phase
    /// waits for it, a panic in it is reported, and it is aborted if it still runs at the
    /// deadline. The [`JoinHandle`] is tokio's own.
    ///
    /// For the deadline, the scope keeps each task's `AbortHandle`, which keeps the finished
    /// task's allocation (the size of its future) alive until the scope drops finished handles
    /// in a batch as more tasks are spawned. Like a `Vec` that does not shrink, a scope holds at
    /// most about twice its peak of tasks running at once (and at least 64).
    ///
    /// # Errors
    ///
    /// [`Refused`], with the future unpolled, once the scope has finished draining, or once
    /// the drain timed out or the shutdown was escalated (every scope is then sealed at once).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn spawn<F>(&self, future: F) -> Result<JoinHandle<F::Output>, Refused<F>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        ScopeInner::spawn(&self.inner, future)
    }

    /// Drains this scope on its own, as the draining phase does: scopes nested in it first
    /// (concurrently), then this scope is told to stop and its tasks are waited for; once they
    /// have all returned it is sealed and refuses new tasks. For restarting one subsystem
    /// without shutting the service down. A task tracked before the seal is waited for; one
    /// tracked after it is refused: none slips through.
    ///
    /// Cancel-safe: dropping the future stops waiting, and a later drain (or the coordinator's)
    /// picks up where it left off; nothing is sealed. Where it was dropped decides what stays
    /// done: a nested scope made after the first poll is born drained, this scope is told to
    /// stop only once its nested scopes have drained, and a stop is never undone.
    pub fn drain(&self) -> impl Future<Output = ()> + Send + 'static {
        ScopeInner::drain(self.inner.clone())
    }

    /// Completes when this scope is told to stop: during draining, once every scope nested in
    /// it has drained (immediately if that already happened). Cancel-safe.
    pub fn stopped(&self) -> Stopped {
        Stopped {
            scope: self.inner.clone(),
            slot: None,
        }
    }

    /// Whether this scope has been told to stop. One atomic load.
    pub fn is_stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Acquire)
    }

    /// Tracked tasks running in this scope (not counting nested scopes). For an instant it may
    /// also count a task that is being refused.
    pub fn running(&self) -> usize {
        self.inner.tasks.count()
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("name", &self.inner.name)
            .field("running", &self.inner.tasks.count())
            .field("stopping", &self.is_stopping())
            .finish()
    }
}

/// Future of [`Scope::stopped`]. Cancel-safe: dropping it gives its waker slot back.
pub struct Stopped {
    scope: Arc<ScopeInner>,
    slot: Option<usize>,
}

impl Future for Stopped {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let scope = &this.scope;
        scope.stop_event.poll_until(cx, &mut this.slot, || {
            scope.stopping.load(Ordering::Acquire)
        })
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.scope.stop_event.release(&mut self.slot);
    }
}

impl fmt::Debug for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stopped")
            .field("scope", &self.scope.name)
            .finish()
    }
}

/// Counts a tracked future out of its scope when dropped (finished, aborted or panicked).
struct Token {
    scope: Arc<ScopeInner>,
}

impl Drop for Token {
    fn drop(&mut self) {
        self.scope.tasks.exit();
    }
}

pin_project_lite::pin_project! {
    /// A future tracked by a [`Scope`] ([`Scope::track`]): counted until it completes or is
    /// dropped, its panic reported (then resumed, so the executor sees it as usual).
    pub struct Tracked<F> {
        #[pin]
        future: F,
        token: Option<Token>,
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let future = this.future;
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => {
                // Counted out on completion, even if the caller keeps the finished future.
                this.token.take();
                Poll::Ready(output)
            }
            Err(payload) => {
                if let Some(token) = this.token {
                    token.scope.record_panic(&*payload);
                }
                resume_unwind(payload)
            }
        }
    }
}

impl<F> fmt::Debug for Tracked<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracked")
            .field("scope", &self.token.as_ref().map(|token| &token.scope.name))
            .finish_non_exhaustive()
    }
}
