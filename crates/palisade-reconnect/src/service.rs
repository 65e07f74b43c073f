//! [`Reconnect`]: a tower service over a `MakeService`, connected by one background task shared
//! by every clone.

use std::error::Error as StdError;
use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::pin;
use std::sync::Arc as StdArc;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::sync::Arc;
use tokio::sync::watch;
use tokio::time::Instant;
use tower_service::Service;

use crate::config::{
    ConfigError, MIN_DURATION, Policy, PolicyBuilder, check_duration, policy_setters,
};
use crate::error::{BoxError, Closed, NotConnected};
use crate::future::ResponseFuture;
use crate::schedule::Schedule;
use crate::shared::{Event, Phase, Shared, Task, WaitSlot};
use crate::state::{Cause, CloseReason, ConnectionState};

/// A boxed future, as the background task and hooks are stored.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'static>>;

type Hook<S> = StdArc<dyn Fn(S) -> BoxFuture<Result<S, BoxError>> + Send + Sync>;
type Probe<S> = StdArc<dyn Fn(S) -> BoxFuture<Result<(), BoxError>> + Send + Sync>;

/// Decides whether a response error means the connection is gone.
pub type Classifier = fn(&(dyn StdError + 'static)) -> bool;

/// What `poll_ready` does while there is no connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhileDisconnected {
    /// Stay pending until a connection is up (or closed): callers queue behind the reconnect,
    /// bounded by their own timeouts. The default.
    #[default]
    Wait,
    /// Fail at once with [`NotConnected`]: the request was not sent, so a balancer or a retry
    /// can route it elsewhere.
    FailFast,
}

/// The default [`Classifier`]: the error, or one of its sources, is an `io::Error` of a kind
/// that means the connection is gone (reset, aborted, broken pipe, unexpected end of file,
/// not connected), or a [`ConnectionLost`](crate::ConnectionLost) from a reconnecting layer
/// below.
pub fn is_connection_error(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<crate::ConnectionLost>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<crate::ConnectionLost>())
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::NotConnected
            )
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Runs the background task: `tokio::spawn`, or the caller's spawner.
#[derive(Clone, Default)]
enum Spawner {
    #[default]
    Tokio,
    Custom(StdArc<dyn Fn(BoxFuture<()>) + Send + Sync>),
}

impl fmt::Debug for Spawner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Spawner::Tokio => "tokio::spawn",
            Spawner::Custom(_) => "custom",
        })
    }
}

impl Spawner {
    /// Starts `task`, or hands it back when there is no runtime to run it on.
    fn spawn(&self, task: Task) -> Result<(), Task> {
        match self {
            Spawner::Tokio => match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    drop(handle.spawn(task));
                    Ok(())
                }
                Err(_) => Err(task),
            },
            Spawner::Custom(spawn) => {
                spawn(task);
                Ok(())
            }
        }
    }
}

/// The knobs of a [`Reconnect`] that don't depend on the service type: validated, cheap to
/// clone. A [`ReconnectLayer`](crate::ReconnectLayer) carries these.
#[derive(Debug, Clone)]
pub struct Settings {
    pub(crate) policy: Policy,
    pub(crate) while_disconnected: WhileDisconnected,
    pub(crate) classifier: Classifier,
    spawner: Spawner,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            policy: Policy::default(),
            while_disconnected: WhileDisconnected::Wait,
            classifier: is_connection_error,
            spawner: Spawner::Tokio,
        }
    }
}

/// A tower [`Service`] over connections made by a `MakeService` (a `Service<Target>` whose
/// response is a service, as hyper's connection builders, tonic's endpoints or your own
/// connect function behind `service_fn`), reconnected by [`Policy`].
///
/// - **One connection, shared by every clone.** A background task makes the connections; each
///   clone uses a clone of the current one (so the made service must be `Clone`, as hyper's
///   HTTP/2 `SendRequest` and tonic's `Channel` are; for one that is not, put tower's `Buffer`
///   in front of it). However many clones wait, each generation is connected once.
/// - **Reconnects by policy**: gRPC's backoff by default, a deadline per attempt, the backoff
///   reset only after a connection stays up `stable_after`, optionally a limit on attempts.
/// - **While disconnected** `poll_ready` waits or fails fast with [`NotConnected`]
///   ([`WhileDisconnected`]).
/// - **A dead connection is replaced** when its service's `poll_ready` fails (the tower
///   contract for a service that can serve no more; hyper and tonic do it once the connection
///   is closed) or its heartbeat fails. No request is lost to it: a request is sent only after
///   `poll_ready` returned `Ok`.
/// - **Requests in flight on a connection that dies** fail with
///   [`ConnectionLost`](crate::ConnectionLost) when their error says the connection is gone
///   (the [`Classifier`], by default [`is_connection_error`]): a typed error the caller can retry
///   if the request is idempotent. Other errors pass through boxed.
/// - **Closes** with [`close`](Reconnect::close), when the policy gives up, or when the last
///   clone is dropped; `poll_ready` then fails with [`Closed`].
///
/// [`state`](Reconnect::state) watches the [`ConnectionState`].
pub struct Reconnect<S> {
    shared: Arc<Shared<S>>,
    /// This clone's copy of the connection, with its generation.
    conn: Option<(u64, S)>,
    wait: WaitSlot,
    /// A copy of `settings.classifier`, read on every call.
    classifier: Classifier,
    settings: StdArc<Settings>,
}

impl<S> fmt::Debug for Reconnect<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconnect")
            .field("state", &self.shared.reporter.current().name())
            .field("generation", &self.conn.as_ref().map(|(g, _)| *g))
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<S: Clone> Clone for Reconnect<S> {
    /// Another handle on the same connection (no new connect).
    fn clone(&self) -> Reconnect<S> {
        self.shared.add_handle();
        Reconnect {
            shared: Arc::clone(&self.shared),
            conn: self.conn.clone(),
            wait: WaitSlot::default(),
            classifier: self.classifier,
            settings: StdArc::clone(&self.settings),
        }
    }
}

impl<S> Drop for Reconnect<S> {
    fn drop(&mut self) {
        self.shared.forget(&mut self.wait);
        self.shared.drop_handle();
    }
}

impl<S> Reconnect<S>
where
    S: Clone + Send + 'static,
{
    /// A builder over `make_service`, which is called with `target` for every connection.
    pub fn builder<M, Target>(make_service: M, target: Target) -> ReconnectBuilder<M, Target, S>
    where
        M: Service<Target, Response = S> + Send + 'static,
        M::Future: Send + 'static,
        M::Error: Into<BoxError>,
        Target: Clone + Send + 'static,
    {
        ReconnectBuilder {
            make_service,
            target,
            policy: PolicyBuilder::default(),
            settings: Settings::default(),
            hook: None,
            heartbeat: None,
        }
    }

    /// With the defaults: gRPC's backoff, 20 s per attempt, `poll_ready` waits while
    /// disconnected.
    pub fn new<M, Target>(make_service: M, target: Target) -> Reconnect<S>
    where
        M: Service<Target, Response = S> + Send + 'static,
        M::Future: Send + 'static,
        M::Error: Into<BoxError>,
        Target: Clone + Send + 'static,
    {
        Reconnect::with_settings(make_service, target, Settings::default(), None, None)
    }

    pub(crate) fn with_settings<M, Target>(
        make_service: M,
        target: Target,
        settings: Settings,
        hook: Option<Hook<S>>,
        heartbeat: Option<Heartbeat<S>>,
    ) -> Reconnect<S>
    where
        M: Service<Target, Response = S> + Send + 'static,
        M::Future: Send + 'static,
        M::Error: Into<BoxError>,
        Target: Clone + Send + 'static,
    {
        let shared = Arc::new(Shared::new());
        let driver = Driver {
            shared: Arc::clone(&shared),
            make_service,
            target,
            schedule: Schedule::new(settings.policy.clone()),
            hook,
            heartbeat,
        };
        // The guard is made now, not when the task first runs: a task dropped before its first
        // poll (a runtime shutting down, a spawner that drops it) still closes the state.
        let guard = StopGuard(Arc::clone(&shared));
        shared.install_task(Box::pin(async move {
            let _guard = guard;
            driver.run().await;
        }));
        Reconnect {
            shared,
            conn: None,
            wait: WaitSlot::default(),
            classifier: settings.classifier,
            settings: StdArc::new(settings),
        }
    }
}

impl<S> Reconnect<S> {
    /// The connection state: a `watch` receiver of the latest [`ConnectionState`].
    ///
    /// A `watch` channel keeps only the latest value. The receiver is woken when the state
    /// changes, and `changed()` completes once for any number of changes since it last looked,
    /// so it can skip states passed through in between: when a connect completes at once, the
    /// task publishes `Connecting` and then `Connected` in one poll, and a watcher sees only
    /// `Connected`. For every transition, in order, subscribe to the `tracing` events: each
    /// published state is one event, target `palisade_reconnect` (`connecting` at `DEBUG`,
    /// `connected` at `INFO`, `disconnected` and `closed` at `WARN`). The crate has no other
    /// per-transition hook.
    ///
    /// Changes are published from the background task, except `Closed` in two cases, where it
    /// is published outside the task, on a thread that must not hold a `borrow()` of this
    /// channel at that moment (it would wait for itself; see the README's guarantees):
    ///
    /// - `close()` or the last clone's drop on a service whose task was never spawned (no
    ///   `poll_ready` or [`connected`](Reconnect::connected) yet): `Closed` is published
    ///   before it returns;
    /// - the task dropped unfinished from outside (its runtime dropped or shut down, or a
    ///   spawner that drops it): by the thread that drops it.
    ///
    /// Once the task has been spawned, `close()` and the last clone's drop only ask it to
    /// stop: they return with the state unchanged (still `Idle` if the task has not run yet),
    /// and the task publishes `Closed` when it next runs. `poll_ready`, `call` and
    /// `connected` fail with [`Closed`] from the moment `close()` returns either way.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.shared.reporter.subscribe()
    }

    /// Waits until a connection is up (starting the background task if nothing has yet), or
    /// fails with [`Closed`]. For a service in [`WhileDisconnected::FailFast`] mode that should
    /// not fail its first requests. Cancel-safe: it only watches.
    pub async fn connected(&self) -> Result<(), Closed> {
        self.start().map_err(|_| Closed {
            reason: CloseReason::TaskStopped,
        })?;
        if let Some(reason) = Shared::closed_reason(&self.shared.core.lock()) {
            return Err(Closed { reason });
        }
        let mut state = self.state();
        let state = state
            .wait_for(|s| s.is_connected() || s.is_closed())
            .await
            .map_err(|_| Closed {
                reason: CloseReason::TaskStopped,
            })?;
        match &*state {
            ConnectionState::Closed(reason) => Err(Closed {
                reason: reason.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Replaces the current connection (if one is up) as if it had failed: for a caller that
    /// knows better than `poll_ready` (a protocol-level error, a failover signal).
    pub fn reconnect(&self) {
        let generation = match &self.shared.core.lock().phase {
            Phase::Up { generation, .. } => *generation,
            _ => return,
        };
        self.shared.report_lost(generation, Cause::Requested);
    }

    /// Closes for every clone: stops the background task (an attempt in flight is dropped) and
    /// drops the shared connection; from the moment it returns, `poll_ready` (and
    /// [`connected`](Reconnect::connected)) on every clone fails with [`Closed`], also before
    /// the task has run and published `Closed`, and so does `call`, also on a clone whose
    /// `poll_ready` returned `Ok` before the close: no `call` made after `close()` returned
    /// sends anything. A `call` racing with `close()` on another thread is either sent, as if
    /// it came first (its request may still be written after `close()` returns), or fails with
    /// [`Closed`] (see [`call`](Reconnect#method.call)). Requests already sent
    /// complete on the clones' copies of the connection, and each clone drops its copy at its
    /// next `call` or `poll_ready` (or when it is dropped).
    pub fn close(&self) {
        self.shared.request_close();
    }

    /// Starts the background task if it has not started; an error when there is no runtime.
    fn start(&self) -> Result<(), BoxError> {
        let task = Shared::take_task(&mut self.shared.core.lock());
        match task {
            None => Ok(()),
            Some(task) => self.settings.spawner.spawn(task).map_err(|task| {
                self.shared.put_back_task(task);
                BoxError::from(
                    "no tokio runtime to run the reconnect task: use the service inside a \
                     runtime, or pass a spawner to `spawn_with`",
                )
            }),
        }
    }

    /// The slow path of `poll_ready`: take the current connection, or wait, or fail.
    #[cold]
    fn poll_shared(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>
    where
        S: Clone,
    {
        self.start()?;
        let mut core = self.shared.core.lock();
        // Before the phase: after `close()` the phase may still be `Up` until the task runs,
        // but its connection is no longer current, and handing it out would fail the fast path
        // again (`poll_ready` would loop).
        if let Some(reason) = Shared::closed_reason(&core) {
            return Poll::Ready(Err(Closed { reason }.into()));
        }
        match &core.phase {
            Phase::Up {
                generation,
                service,
            } => {
                self.conn = Some((*generation, service.clone()));
                Poll::Ready(Ok(()))
            }
            phase => match self.settings.while_disconnected {
                WhileDisconnected::FailFast => {
                    let (cause, next_attempt_at) = match phase {
                        Phase::Pending {
                            cause,
                            next_attempt_at,
                        } => (cause.clone(), *next_attempt_at),
                        Phase::Lost { cause, .. } => (Some(cause.clone()), None),
                        _ => (None, None),
                    };
                    Poll::Ready(Err(NotConnected {
                        cause,
                        next_attempt_at,
                    }
                    .into()))
                }
                WhileDisconnected::Wait => {
                    Shared::wait(&mut core, &mut self.wait, cx.waker());
                    Poll::Pending
                }
            },
        }
    }
}

impl<S> Reconnect<S> {
    /// `call` after closing: drops this clone's copy of the connection (un-readied, as after
    /// any call) and returns the [`Closed`] that `poll_ready` returns, sending nothing.
    ///
    /// The error, not the future: with the future built here, out of line, the sending path
    /// built its future in a stack slot too and copied it out, and `call` took 20 ns instead
    /// of 12 ns in `reconnect/service_call`.
    #[cold]
    #[inline(never)]
    fn closed_error(&mut self) -> BoxError {
        let conn = self.conn.take();
        let reason = Shared::closed_reason(&self.shared.core.lock()).unwrap_or(CloseReason::Closed);
        drop(conn); // the user's service, dropped outside the lock
        Closed { reason }.into()
    }

    /// The connection's own `poll_ready` is pending: also wait for a change of connection, so
    /// a replacement (a heartbeat, `reconnect()`, another clone's report) wakes this clone.
    #[cold]
    fn pending_on<E>(&mut self, generation: u64, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        let mut core = self.shared.core.lock();
        if self.shared.is_current(generation) {
            Shared::wait(&mut core, &mut self.wait, cx.waker());
            Poll::Pending
        } else {
            // Replaced meanwhile: poll again (the next poll takes the new connection).
            drop(core);
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl<S, Request> Service<Request> for Reconnect<S>
where
    S: Service<Request> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            if let Some((generation, service)) = &mut self.conn {
                let generation = *generation;
                if self.shared.is_current(generation) {
                    match service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => return Poll::Ready(Ok(())),
                        Poll::Pending => return self.pending_on(generation, cx),
                        Poll::Ready(Err(e)) => {
                            let cause = Cause::Lost(StdArc::from(e.into()));
                            self.shared.report_lost(generation, cause);
                        }
                    }
                }
                self.conn = None;
            }
            std::task::ready!(self.poll_shared(cx))?;
        }
    }

    /// Sends `request` on the connection `poll_ready` readied, unless the service is closed:
    /// once [`close`](Reconnect::close) has returned (on any clone), `call` sends nothing, even
    /// after a `poll_ready` that returned `Ok` before the close. It fails with the [`Closed`]
    /// that `poll_ready` would return, and drops this clone's copy of the connection (with any
    /// capacity its `poll_ready` reserved); the next `poll_ready` fails with [`Closed`] too.
    ///
    /// A `call` concurrent with `close()` on another thread, ordered with it by nothing, has one
    /// of two outcomes: it checked before `close()` set the closing flag, and its request is
    /// sent as if the call came first (it may be written after `close()` has returned); or it
    /// fails with [`Closed`] and sends nothing. A `call` ordered after `close()` returned (the same thread, or any
    /// synchronization: a join, a channel, a lock) always fails.
    #[inline]
    fn call(&mut self, request: Request) -> Self::Future {
        if self.shared.is_closing() {
            return ResponseFuture::failed(self.closed_error());
        }
        match &mut self.conn {
            Some((generation, service)) => {
                ResponseFuture::new(service.call(request), *generation, self.classifier)
            }
            None => ResponseFuture::failed(
                NotConnected {
                    cause: None,
                    next_attempt_at: None,
                }
                .into(),
            ),
        }
    }
}

/// The optional heartbeat: while connected, `probe` a copy of the service `interval` after
/// connecting and then `interval` after each probe answered.
pub(crate) struct Heartbeat<S> {
    interval: Duration,
    timeout: Duration,
    probe: Probe<S>,
}

impl<S> Clone for Heartbeat<S> {
    fn clone(&self) -> Heartbeat<S> {
        Heartbeat {
            interval: self.interval,
            timeout: self.timeout,
            probe: StdArc::clone(&self.probe),
        }
    }
}

/// The background task: makes every connection, waits for it to fail, backs off.
struct Driver<M, Target, S> {
    shared: Arc<Shared<S>>,
    make_service: M,
    target: Target,
    schedule: Schedule,
    hook: Option<Hook<S>>,
    heartbeat: Option<Heartbeat<S>>,
}

/// Closes the shared state if the driver stops without doing so (a panic, a runtime shutdown).
struct StopGuard<S>(Arc<Shared<S>>);

impl<S> Drop for StopGuard<S> {
    fn drop(&mut self) {
        let closing = self.0.core.lock().closing;
        self.0.close(if closing {
            CloseReason::Closed
        } else {
            CloseReason::TaskStopped
        });
    }
}

impl<M, Target, S> Driver<M, Target, S>
where
    M: Service<Target, Response = S> + Send + 'static,
    M::Future: Send + 'static,
    M::Error: Into<BoxError>,
    Target: Clone + Send + 'static,
    S: Clone + Send + 'static,
{
    async fn run(mut self) {
        let reason = self.connect_loop().await;
        self.shared.close(reason);
    }

    /// Waits for closing or `fut`, whichever comes first.
    async fn unless_closing<F: Future>(shared: &Shared<S>, fut: F) -> Option<F::Output> {
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            if shared.poll_closing(cx).is_ready() {
                return Poll::Ready(None);
            }
            fut.as_mut().poll(cx).map(Some)
        })
        .await
    }

    /// One attempt: the maker's readiness, the connect, the hook.
    async fn attempt(&mut self) -> Result<S, BoxError> {
        poll_fn(|cx| self.make_service.poll_ready(cx))
            .await
            .map_err(Into::into)?;
        let service = self
            .make_service
            .call(self.target.clone())
            .await
            .map_err(Into::into)?;
        match &self.hook {
            Some(hook) => hook(service).await,
            None => Ok(service),
        }
    }

    async fn connect_loop(&mut self) -> CloseReason {
        let shared = Arc::clone(&self.shared);
        let mut generation = 0u64;
        let mut next_at: Option<Instant> = None;
        let mut last_cause: Option<Cause> = None;
        // The last attempt failed. If the next is due at once (a zero backoff), the loop yields
        // before it, so a connector that fails without pending costs one attempt per poll of
        // this task instead of a loop that never gives the runtime back.
        let mut failed = false;
        loop {
            let yield_first = std::mem::take(&mut failed);
            if let Some(at) = next_at.take()
                && at > Instant::now()
            {
                if Self::unless_closing(&shared, tokio::time::sleep_until(at))
                    .await
                    .is_none()
                {
                    return CloseReason::Closed;
                }
            } else if yield_first {
                tokio::task::yield_now().await;
            }
            if shared.core.lock().closing {
                return CloseReason::Closed;
            }
            let start = Instant::now();
            let attempt = self.schedule.begin(start);
            shared.set(
                Phase::Pending {
                    cause: last_cause.clone(),
                    next_attempt_at: None,
                },
                ConnectionState::Connecting {
                    attempt: attempt.number,
                },
            );
            let connect = tokio::time::timeout_at(attempt.deadline, self.attempt());
            let cause = match Self::unless_closing(&shared, connect).await {
                None => return CloseReason::Closed,
                Some(Ok(Ok(service))) => {
                    let now = Instant::now();
                    generation += 1;
                    self.schedule.connected(now);
                    shared.set(
                        Phase::Up {
                            generation,
                            service: service.clone(),
                        },
                        ConnectionState::Connected {
                            since: now,
                            generation,
                        },
                    );
                    let lost = self.until_lost(generation, service).await;
                    let Some(cause) = lost else {
                        return CloseReason::Closed;
                    };
                    match self.schedule.lost(Instant::now()) {
                        Ok(at) => {
                            self.disconnected(cause.clone(), at);
                            last_cause = Some(cause);
                            next_at = Some(at);
                            continue;
                        }
                        Err(gave_up) => {
                            return CloseReason::GaveUp {
                                attempts: gave_up.attempts,
                                last: cause,
                            };
                        }
                    }
                }
                Some(Ok(Err(e))) => Cause::ConnectFailed(StdArc::from(e)),
                Some(Err(_elapsed)) => {
                    Cause::ConnectTimedOut(attempt.deadline.saturating_duration_since(start))
                }
            };
            match self.schedule.failed(Instant::now()) {
                Ok(at) => {
                    self.disconnected(cause.clone(), at);
                    last_cause = Some(cause);
                    next_at = Some(at);
                    failed = true;
                }
                Err(gave_up) => {
                    return CloseReason::GaveUp {
                        attempts: gave_up.attempts,
                        last: cause,
                    };
                }
            }
        }
    }

    fn disconnected(&self, cause: Cause, at: Instant) {
        self.shared.set(
            Phase::Pending {
                cause: Some(cause.clone()),
                next_attempt_at: Some(at),
            },
            ConnectionState::Disconnected {
                cause,
                next_attempt_at: at,
                attempts: self.schedule.attempts(),
            },
        );
    }

    /// Waits until connection `generation` is reported lost or its heartbeat fails (the
    /// cause), or closing (`None`).
    async fn until_lost(&mut self, generation: u64, service: S) -> Option<Cause> {
        let shared = &*self.shared;
        let Some(heartbeat) = self.heartbeat.clone() else {
            return match poll_fn(|cx| shared.poll_event(generation, cx)).await {
                Event::Lost(cause) => Some(cause),
                Event::Closing => None,
            };
        };
        loop {
            let (probe, service) = (StdArc::clone(&heartbeat.probe), service.clone());
            let (interval, timeout) = (heartbeat.interval, heartbeat.timeout);
            let beat = async move {
                tokio::time::sleep(interval).await;
                match tokio::time::timeout(timeout, probe(service)).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(Cause::Heartbeat(StdArc::from(e))),
                    Err(_) => Some(Cause::Heartbeat(StdArc::new(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {timeout:?}"),
                    )))),
                }
            };
            let mut beat = pin!(beat);
            let event = poll_fn(|cx| match shared.poll_event(generation, cx) {
                Poll::Ready(event) => Poll::Ready(Err(event)),
                Poll::Pending => beat.as_mut().poll(cx).map(Ok),
            })
            .await;
            match event {
                Err(Event::Lost(cause)) => return Some(cause),
                Err(Event::Closing) => return None,
                Ok(None) => continue,
                Ok(Some(cause)) => {
                    // Only if nothing replaced the connection meanwhile.
                    shared.report_lost(generation, cause.clone());
                    return Some(cause);
                }
            }
        }
    }
}

/// Builds a [`Reconnect`]: the policy, what `poll_ready` does while disconnected, the
/// on-connect hook, the heartbeat, the error classifier and the spawner.
#[must_use = "a builder does nothing until `build` is called"]
pub struct ReconnectBuilder<M, Target, S> {
    make_service: M,
    target: Target,
    policy: PolicyBuilder,
    settings: Settings,
    hook: Option<Hook<S>>,
    heartbeat: Option<(Duration, Duration, Probe<S>)>,
}

impl<M, Target: fmt::Debug, S> fmt::Debug for ReconnectBuilder<M, Target, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconnectBuilder")
            .field("target", &self.target)
            .field("policy", &self.policy)
            .field("settings", &self.settings)
            .field("on_connect", &self.hook.is_some())
            .field("heartbeat", &self.heartbeat.as_ref().map(|h| (h.0, h.1)))
            .finish_non_exhaustive()
    }
}

impl<M, Target, S> ReconnectBuilder<M, Target, S>
where
    M: Service<Target, Response = S> + Send + 'static,
    M::Future: Send + 'static,
    M::Error: Into<BoxError>,
    Target: Clone + Send + 'static,
    S: Clone + Send + 'static,
{
    policy_setters!();

    /// What `poll_ready` does while there is no connection (default:
    /// [`WhileDisconnected::Wait`]).
    pub fn while_disconnected(mut self, mode: WhileDisconnected) -> Self {
        self.settings.while_disconnected = mode;
        self
    }

    /// Which response errors mean the connection is gone and become
    /// [`ConnectionLost`](crate::ConnectionLost) (default: [`is_connection_error`]). For hyper,
    /// add `e.downcast_ref::<hyper::Error>().is_some_and(|e| e.is_closed() || e.is_canceled())`.
    pub fn connection_error(mut self, classifier: Classifier) -> Self {
        self.settings.classifier = classifier;
        self
    }

    /// Runs `hook` on every new connection before any clone uses it (authenticate, warm up);
    /// an error fails the attempt, retried by the policy. Its time counts against the
    /// attempt's deadline.
    pub fn on_connect<H, Fut, E>(mut self, hook: H) -> Self
    where
        H: Fn(S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.hook = Some(StdArc::new(move |service| {
            let fut = hook(service);
            Box::pin(async move { fut.await.map_err(Into::into) })
        }));
        self
    }

    /// While connected, calls `probe` with a copy of the service: first `interval` after the
    /// connection came up, then `interval` after the previous probe answered. `interval` runs
    /// from the end of one probe to the start of the next, so probes start every `interval`
    /// plus the probe's own time (at most `interval + timeout`), not at a fixed rate. An
    /// error, or no answer within `timeout`, declares the connection dead and reconnects. Both
    /// in `[1ms, 24h]`. For a connection that can die silently (no `poll_ready` error until a
    /// request times out).
    pub fn heartbeat<P, Fut, E>(mut self, interval: Duration, timeout: Duration, probe: P) -> Self
    where
        P: Fn(S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let probe: Probe<S> = StdArc::new(move |service| {
            let fut = probe(service);
            Box::pin(async move { fut.await.map_err(Into::into) })
        });
        self.heartbeat = Some((interval, timeout, probe));
        self
    }

    /// Runs the background task with `spawn` instead of `tokio::spawn` (another runtime, a
    /// named task, a test harness).
    pub fn spawn_with(mut self, spawn: impl Fn(BoxFuture<()>) + Send + Sync + 'static) -> Self {
        self.settings.spawner = Spawner::Custom(StdArc::new(spawn));
        self
    }

    /// Validates every knob. The service connects at its first use (or
    /// [`connected`](Reconnect::connected)).
    pub fn build(self) -> Result<Reconnect<S>, ConfigError> {
        let mut settings = self.settings;
        settings.policy = self.policy.build()?;
        let heartbeat = match self.heartbeat {
            None => None,
            Some((interval, timeout, probe)) => {
                check_duration("heartbeat interval", interval, MIN_DURATION)?;
                check_duration("heartbeat timeout", timeout, MIN_DURATION)?;
                Some(Heartbeat {
                    interval,
                    timeout,
                    probe,
                })
            }
        };
        Ok(Reconnect::with_settings(
            self.make_service,
            self.target,
            settings,
            self.hook,
            heartbeat,
        ))
    }
}

impl Settings {
    /// A builder of settings for a [`ReconnectLayer`](crate::ReconnectLayer).
    pub fn builder() -> SettingsBuilder {
        SettingsBuilder {
            policy: PolicyBuilder::default(),
            settings: Settings::default(),
        }
    }
}

/// Builds [`Settings`]: the service knobs that don't depend on the service type.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct SettingsBuilder {
    policy: PolicyBuilder,
    settings: Settings,
}

impl SettingsBuilder {
    policy_setters!();

    /// See [`ReconnectBuilder::while_disconnected`].
    pub fn while_disconnected(mut self, mode: WhileDisconnected) -> Self {
        self.settings.while_disconnected = mode;
        self
    }

    /// See [`ReconnectBuilder::connection_error`].
    pub fn connection_error(mut self, classifier: Classifier) -> Self {
        self.settings.classifier = classifier;
        self
    }

    /// See [`ReconnectBuilder::spawn_with`].
    pub fn spawn_with(mut self, spawn: impl Fn(BoxFuture<()>) + Send + Sync + 'static) -> Self {
        self.settings.spawner = Spawner::Custom(StdArc::new(spawn));
        self
    }

    /// Validates every knob.
    pub fn build(self) -> Result<Settings, ConfigError> {
        let mut settings = self.settings;
        settings.policy = self.policy.build()?;
        Ok(settings)
    }
}
