//! [`Pool`]: checkout with fair hand-off, connect tasks, warm-up, maintenance and close.

use std::fmt;
use std::future::{Future, poll_fn};
use std::hash::{BuildHasher, RandomState};
use std::panic::{AssertUnwindSafe, Location};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use palisade_core::sync::{Arc, Mutex};
use palisade_core::{Clock, FastClock, Instant};
use tokio::sync::Notify;

use crate::config::{CheckoutTest, Config, PoolBuilder};
use crate::error::{CloseTimeout, Error, Failure};
use crate::manager::Manager;
use crate::metrics::{Discard, Metrics};
use crate::pooled::Pooled;
use crate::state::{
    AfterFailure, Checkout, Closed, Dropped, Limits, Live, Poll as Slot, State, Ticket,
};

/// An async connection pool.
///
/// Cheap to clone: clones share one pool. See the [crate docs](crate) for the knobs and
/// guarantees.
pub struct Pool<M: Manager, C: Clock = FastClock> {
    pub(crate) shared: Arc<Shared<M, C>>,
}

impl<M: Manager, C: Clock> Clone for Pool<M, C> {
    fn clone(&self) -> Self {
        Pool {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M: Manager, C: Clock> fmt::Debug for Pool<M, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("metrics", &self.metrics())
            .finish_non_exhaustive()
    }
}

/// What every handle, guard and background task of one pool shares.
pub(crate) struct Shared<M: Manager, C> {
    pub(crate) manager: M,
    pub(crate) config: Config,
    pub(crate) clock: C,
    pub(crate) state: Mutex<State<M::Connection, M::Error>>,
    /// Notified when a connect ends and when a connection leaves the pool: what `warm_up` and
    /// `close` wait on.
    changed: Notify,
    /// `max_lifetime` and the window below it each connection's lifetime ends in.
    lifetime: Option<(Duration, Duration)>,
    /// `test_on_checkout` in nanoseconds: validate a connection known good no more recently
    /// than this (`Some(0)`: always; `None`: never).
    validate_after: Option<u64>,
}

impl<M: Manager> Pool<M, FastClock> {
    /// A builder with the defaults (see [`PoolBuilder`] for every knob).
    pub fn builder(manager: M) -> PoolBuilder<M, FastClock> {
        PoolBuilder::new(manager)
    }
}

impl<M: Manager, C: Clock> Pool<M, C> {
    pub(crate) fn from_parts(manager: M, clock: C, config: Config) -> Pool<M, C> {
        let limits = Limits {
            max_size: config.max_size,
            min_idle: config.min_idle,
            max_connecting: config.max_concurrent_connects,
            idle_timeout: config.idle_timeout.map(nanos),
        };
        // A lifetime is `max_lifetime - u`, `u` uniform in [0, max_lifetime × jitter].
        let lifetime = config
            .max_lifetime
            .map(|max| (max, max.mul_f64(config.max_lifetime_jitter)));
        let validate_after = match config.test_on_checkout {
            CheckoutTest::Never => None,
            CheckoutTest::Always => Some(0),
            CheckoutTest::IdleFor(d) => Some(nanos(d)),
        };
        let pool = Pool {
            shared: Arc::new(Shared {
                manager,
                config,
                clock,
                state: Mutex::new(State::new(limits)),
                changed: Notify::new(),
                lifetime,
                validate_after,
            }),
        };
        let connects = pool.shared.state.lock().reserve_connects();
        Shared::spawn_connects(&pool.shared, connects);
        pool
    }

    /// Checks out a connection: the most recently used idle one that passes its checks, or a
    /// place in line for the next one returned or connected, all within `acquire_timeout`.
    ///
    /// # Fairness
    ///
    /// Callers are served in arrival order: a connection that comes back goes straight to the
    /// longest waiter, never to a newcomer, and new connections are opened only for callers
    /// no connect in flight will serve (HikariCP's rule), at most `max_concurrent_connects` at
    /// once.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future at any point loses nothing: a place in line is given up, a
    /// connection handed to it meanwhile goes on to the next waiter, a connect it started
    /// finishes on its own task and serves the next waiter or the idle set, and a connection
    /// dropped halfway through `recycle` or `validate` is discarded (its state is unknown) and
    /// its slot freed.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] or [`Error::Exhausted`] at the deadline, with the pool's
    /// metrics; [`Error::Closed`] once [`close`](Pool::close) was called.
    ///
    /// Waiting uses tokio's timer: poll it inside a tokio runtime with time enabled.
    #[track_caller]
    pub fn get(&self) -> impl Future<Output = Result<Pooled<M, C>, Error<M::Error>>> + Send + '_ {
        let site = Location::caller();
        Shared::get(&self.shared, site)
    }

    /// Connects until `min_idle` connections are open (at most `max_concurrent_connects` at a
    /// time), or `acquire_timeout` passes. Cancel-safe: connects already started finish into
    /// the idle set.
    pub async fn warm_up(&self) -> Result<(), Error<M::Error>> {
        let shared = &self.shared;
        let started = shared.clock.now();
        let deadline = tokio::time::Instant::now() + shared.config.acquire_timeout;
        loop {
            let mut changed = pin!(shared.changed.notified());
            changed.as_mut().enable();
            let (open, connects) = {
                let mut state = shared.state.lock();
                if state.is_closed() {
                    return Err(Error::Closed);
                }
                (
                    state.size() - state.metrics().connecting,
                    state.reserve_connects(),
                )
            };
            Shared::spawn_connects(shared, connects);
            if open >= shared.config.min_idle {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(shared.timeout_error(started, None));
            }
        }
    }

    /// One maintenance pass: closes idle connections past their lifetime or idle timeout,
    /// validates those idle longer than `keepalive` (putting back the good ones), reports
    /// checkouts held longer than `leak_detection`, and refills to `min_idle`. Cancel-safe:
    /// the one connection it holds for a check at a time is discarded if it is dropped.
    pub async fn maintain(&self) {
        let shared = &self.shared;
        let now = shared.clock.now();
        let mut dropped = Dropped::new();
        let (leaks, connects) = {
            let mut state = shared.state.lock();
            state.reap(now, &mut dropped);
            let leaks = match shared.config.leak_detection {
                Some(threshold) => state.suspected_leaks(now, nanos(threshold)),
                None => Vec::new(),
            };
            (leaks, state.reserve_connects())
        };
        Shared::dropped(shared, dropped, "maintenance");
        for out in leaks {
            tracing::warn!(
                target: "palisade_pool",
                checked_out_at = %out.site,
                held = ?now.saturating_duration_since(out.since),
                "connection checked out longer than the leak-detection threshold: possible leak"
            );
        }
        Shared::spawn_connects(shared, connects);
        let Some(after) = shared.config.keepalive else {
            return;
        };
        let mut guard = Checking {
            shared,
            live: None,
            keepalive: true,
        };
        // One connection at a time: the others stay available to callers meanwhile. Stale as
        // of the pass's start, so a pass checks each connection at most once and ends even when
        // its checks take longer, all told, than `keepalive` (the first checked would be stale
        // again by the last).
        let started = shared.clock.now();
        loop {
            let live = {
                let mut state = shared.state.lock();
                if state.is_closed() {
                    return;
                }
                state.take_for_keepalive(started, nanos(after))
            };
            let Some(live) = live else {
                return;
            };
            let timeout = shared.config.validation_timeout;
            let live = guard.live.insert(live);
            // A connection back from a use is recycled first, as at checkout: it may be left
            // mid-transaction, and its check would fail where `recycle` repairs it.
            let mut result = Some(Ok(()));
            if live.used {
                let limit = tokio::time::Instant::now() + timeout;
                result = bounded(shared.manager.recycle(&mut live.conn), || limit).await;
                live.used = !matches!(result, Some(Ok(())));
            }
            if matches!(result, Some(Ok(()))) {
                let limit = tokio::time::Instant::now() + timeout;
                result = bounded(shared.manager.validate(&mut live.conn), || limit).await;
            }
            let live = guard.live.take().expect("the connection checked");
            let live_fresh = live.fresh();
            let now = shared.clock.now();
            match result {
                Some(Ok(())) => {
                    let mut dropped = Dropped::new();
                    let waker = shared.state.lock().checked(live, now, &mut dropped);
                    Shared::dropped(shared, dropped, "keepalive");
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                }
                failed => {
                    let failure = match failed {
                        Some(Err(e)) => Failure::Validate(e),
                        _ => Failure::ValidateTimeout(shared.config.validation_timeout),
                    };
                    tracing::debug!(target: "palisade_pool", %failure, "keepalive check failed");
                    Shared::discard_out(
                        shared,
                        Some(live.conn),
                        Discard::Invalid,
                        true,
                        Some((failure, live_fresh)),
                    );
                }
            }
        }
    }

    /// Runs [`maintain`](Pool::maintain) every `interval` (at least 1 ms) until the pool is
    /// closed or every other handle to it is dropped. Spawn it: `tokio::spawn(pool.maintenance(interval))`.
    pub fn maintenance(&self, interval: Duration) -> impl Future<Output = ()> + Send + 'static {
        let pool = self.clone();
        let interval = interval.max(crate::config::MIN_DURATION);
        async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if pool.shared.state.lock().is_closed() || Arc::strong_count(&pool.shared) == 1 {
                    return;
                }
                pool.maintain().await;
            }
        }
    }

    /// Closes the pool: `get()` and `warm_up()` fail with [`Error::Closed`] from now on
    /// (waiters included; a `get()` that was already handed a connection may still return it,
    /// and `close` waits for that connection like any other checked-out one), idle connections
    /// are closed at once, and each checked-out connection is closed when it comes back. Waits
    /// up to `timeout` for them all to come back. Calling it again waits again. Made for a
    /// `palisade-shutdown` cleanup hook.
    ///
    /// Cancel-safe: the pool stays closed; only the wait is abandoned.
    pub async fn close(&self, timeout: Duration) -> Result<(), CloseTimeout> {
        let shared = &self.shared;
        let started = tokio::time::Instant::now();
        // `Duration::MAX` means "wait as long as it takes": clamp instead of overflowing.
        let deadline = started
            .checked_add(timeout)
            .unwrap_or_else(|| started + crate::config::MAX_DURATION * 12);
        let mut wake = Vec::new();
        let mut dropped = Dropped::new();
        let first = shared.state.lock().close(&mut wake, &mut dropped);
        if first {
            tracing::info!(target: "palisade_pool", "pool closing");
            // A `warm_up()` waiting for a connect ends now, with `Error::Closed`.
            shared.changed.notify_waiters();
        }
        wake.into_iter().for_each(std::task::Waker::wake);
        Shared::dropped(shared, dropped, "close");
        loop {
            let mut changed = pin!(shared.changed.notified());
            changed.as_mut().enable();
            let outstanding = shared.state.lock().outstanding();
            if outstanding == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let outstanding = shared.state.lock().outstanding();
                if outstanding == 0 {
                    return Ok(());
                }
                return Err(CloseTimeout {
                    outstanding,
                    waited: started.elapsed(),
                });
            }
        }
    }

    /// Whether [`close`](Pool::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.state.lock().is_closed()
    }

    /// A snapshot of the pool's gauges and counters.
    pub fn metrics(&self) -> Metrics {
        self.shared.state.lock().metrics()
    }

    /// The manager.
    pub fn manager(&self) -> &M {
        &self.shared.manager
    }
}

/// `fut`, polled once without a timer (the common case is ready at once), then bounded by the
/// instant `limit` gives. `None` if it ran out of time.
async fn bounded<F: Future>(
    fut: F,
    limit: impl FnOnce() -> tokio::time::Instant,
) -> Option<F::Output> {
    let mut fut = pin!(fut);
    if let Poll::Ready(out) = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        return Some(out);
    }
    tokio::time::timeout_at(limit(), fut).await.ok()
}

/// Runs `fut`, catching a panic in its `poll` as `Err` with the panic's message: a connect that
/// panics is a failed attempt on the backoff schedule, not a task that dies and is restarted at
/// once by the waiter it wakes.
async fn caught<F: Future>(fut: F) -> Result<F::Output, String> {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        // Unwind safety: after a panic the future is dropped, never polled again, and the pool's
        // state is not touched inside `connect`.
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(&*payload))),
        }
    })
    .await
}

/// The message of a panic payload (`panic!` with a literal or a format string), or a
/// placeholder for any other payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A connection out of the idle set for a check; discarded if the holder is dropped midway
/// (its state is unknown).
struct Checking<'a, M: Manager, C: Clock> {
    shared: &'a Arc<Shared<M, C>>,
    /// The connection being checked.
    live: Option<Live<M::Connection>>,
    /// A keepalive check (counted as `checking`), not a checkout.
    keepalive: bool,
}

impl<M: Manager, C: Clock> Drop for Checking<'_, M, C> {
    #[inline]
    fn drop(&mut self) {
        // The common case, a checkout whose checks passed: nothing to discard.
        if let Some(live) = self.live.take() {
            Shared::discard_out(
                self.shared,
                Some(live.conn),
                Discard::Cancelled,
                self.keepalive,
                None,
            );
        }
    }
}

/// A place in line, given up if dropped.
struct InLine<'a, M: Manager, C: Clock> {
    shared: &'a Arc<Shared<M, C>>,
    ticket: Option<Ticket>,
}

impl<M: Manager, C: Clock> InLine<'_, M, C> {
    /// Leaves the line; a connection delivered meanwhile is kept if `keep`, else passed on.
    fn leave(&mut self, keep: bool) -> Option<Live<M::Connection>> {
        let ticket = self.ticket.take()?;
        let now = self.shared.clock.now();
        let mut dropped = Dropped::new();
        let (kept, waker) = self
            .shared
            .state
            .lock()
            .leave(ticket, keep, now, &mut dropped);
        Shared::dropped(self.shared, dropped, "leave");
        if let Some(waker) = waker {
            waker.wake();
        }
        kept
    }
}

impl<M: Manager, C: Clock> Drop for InLine<'_, M, C> {
    fn drop(&mut self) {
        self.leave(false);
    }
}

/// How waiting in line ended.
enum Waited<T> {
    Served(Live<T>),
    Closed,
    /// With the pool as it was at the deadline, this waiter still in line.
    TimedOut(Metrics),
}

/// Where [`Shared::get_slow`] picks up.
enum Resume<'a, M: Manager, C: Clock> {
    /// A connection taken that needs a validation (and a recycle first, if `recycle`).
    Check {
        check: Checking<'a, M, C>,
        recycle: bool,
    },
    /// The connection taken was discarded: try again, at the head of the line.
    Retry,
}

/// The checks a connection needs before it goes out.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// None: out it goes.
    Go,
    /// `recycle` only (it was used before).
    Recycle,
    /// `validate`, after a `recycle` if `recycle`.
    Check { recycle: bool },
    /// `is_broken` said so: discard it.
    Broken,
}

/// The failure of a check step that ended with `result` (`None`: it overran `timeout`).
#[inline]
fn step_failure<E>(result: Option<Result<(), E>>, timeout: Duration) -> Option<Failure<E>> {
    match result {
        Some(Ok(())) => None,
        Some(Err(e)) => Some(Failure::Validate(e)),
        None => Some(Failure::ValidateTimeout(timeout)),
    }
}

impl<M: Manager, C: Clock> Shared<M, C> {
    /// `get()`. The common cases run straight through, with nothing boxed: a connection, idle
    /// or handed over after a wait in line, whose only check is a `recycle` that is ready at
    /// once (or none); an idle one is out on the first poll, with no timer. The rest (a
    /// validation, a step still pending after its first poll, a failed check) goes on in
    /// [`get_slow`](Shared::get_slow), boxed so that the common cases' future stays small.
    async fn get(
        this: &Arc<Self>,
        site: &'static Location<'static>,
    ) -> Result<Pooled<M, C>, Error<M::Error>> {
        // One clock reading per checkout: expiry, idle reaping and the checkout test use it.
        let start = this.clock.now();
        let mut dropped = Dropped::new();
        let step = this.state.lock().checkout(start, None, false, &mut dropped);
        Shared::dropped(this, dropped, "checkout");
        let mut deadline = None;
        let live = match step {
            Ok(Checkout::Idle(live)) => live,
            Err(Closed) => return Err(Error::Closed),
            // Waiting is the common case of a busy pool: not boxed either.
            Ok(Checkout::Wait { ticket, connects }) => {
                Shared::wait_served(this, ticket, connects, start, &mut deadline).await?
            }
        };
        let mut check = Checking {
            shared: this,
            live: Some(live),
            keepalive: false,
        };
        match this.plan(&mut check, start) {
            Plan::Go => {}
            Plan::Recycle => {
                let timeout = this.config.validation_timeout;
                let live = check.live.as_mut().expect("a connection to check");
                live.used = false;
                let result = {
                    let mut fut = pin!(this.manager.recycle(&mut live.conn));
                    match poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
                        Poll::Ready(result) => Some(result),
                        Poll::Pending => {
                            let limit = this.step_limit(start, &mut deadline, timeout);
                            Box::pin(tokio::time::timeout_at(limit, fut)).await.ok()
                        }
                    }
                };
                if let Some(failure) = step_failure(result, timeout) {
                    if let Some(timeout) =
                        Shared::step_failed(this, &mut check, start, deadline, failure)
                    {
                        return Err(timeout);
                    }
                    let resume = Resume::Retry;
                    return Box::pin(Shared::get_slow(this, site, start, deadline, resume)).await;
                }
            }
            Plan::Check { recycle } => {
                let resume = Resume::Check { check, recycle };
                return Box::pin(Shared::get_slow(this, site, start, deadline, resume)).await;
            }
            Plan::Broken => {
                Shared::discard_broken(this, &mut check);
                let resume = Resume::Retry;
                return Box::pin(Shared::get_slow(this, site, start, deadline, resume)).await;
            }
        }
        let live = check.live.take().expect("a checked connection");
        Ok(Pooled::new(Arc::clone(this), live, site))
    }

    /// The rest of a `get()` that [`get`](Shared::get) could not finish at once: `resume` says
    /// where it left off.
    async fn get_slow<'a>(
        this: &'a Arc<Self>,
        site: &'static Location<'static>,
        start: Instant,
        mut deadline: Option<tokio::time::Instant>,
        resume: Resume<'a, M, C>,
    ) -> Result<Pooled<M, C>, Error<M::Error>> {
        // After a failed check the caller keeps its place at the head of the line.
        let (mut front, mut now) = match resume {
            Resume::Retry => (true, this.clock.now()),
            _ => (false, start),
        };
        let mut resume = Some(resume);
        loop {
            let (mut check, plan) = match resume.take() {
                Some(Resume::Check { check, recycle }) => (check, Plan::Check { recycle }),
                Some(Resume::Retry) | None => {
                    let mut dropped = Dropped::new();
                    let step = this.state.lock().checkout(now, None, front, &mut dropped);
                    Shared::dropped(this, dropped, "checkout");
                    let live = match step {
                        Err(Closed) => return Err(Error::Closed),
                        Ok(Checkout::Idle(live)) => live,
                        Ok(Checkout::Wait { ticket, connects }) => {
                            Shared::wait_served(this, ticket, connects, start, &mut deadline)
                                .await?
                        }
                    };
                    Shared::planned(this, live, now)
                }
            };
            let verdict = match plan {
                Plan::Go => Ok(()),
                Plan::Broken => {
                    Shared::discard_broken(this, &mut check);
                    Err(None)
                }
                Plan::Recycle => {
                    Shared::steps(this, &mut check, start, true, false, &mut deadline).await
                }
                Plan::Check { recycle } => {
                    Shared::steps(this, &mut check, start, recycle, true, &mut deadline).await
                }
            };
            match verdict {
                Ok(()) => {
                    let live = check.live.take().expect("a checked connection");
                    return Ok(Pooled::new(Arc::clone(this), live, site));
                }
                Err(Some(timeout)) => return Err(timeout),
                Err(None) => {
                    front = true;
                    now = this.clock.now();
                }
            }
        }
    }

    /// A connection just taken for a checkout, in its guard, and the checks it needs.
    fn planned(
        this: &Arc<Self>,
        live: Live<M::Connection>,
        now: Instant,
    ) -> (Checking<'_, M, C>, Plan) {
        let mut check = Checking {
            shared: this,
            live: Some(live),
            keepalive: false,
        };
        let plan = this.plan(&mut check, now);
        (check, plan)
    }

    /// The checks the connection in `check` needs before it goes out; `now` is the checkout's
    /// clock reading (one read per checkout).
    #[inline]
    fn plan(&self, check: &mut Checking<'_, M, C>, now: Instant) -> Plan {
        let live = check.live.as_mut().expect("a connection to check");
        if self.manager.is_broken(&mut live.conn) {
            return Plan::Broken;
        }
        // Nanoseconds since it was last known good, against the policy's threshold.
        let validate = self
            .validate_after
            .is_some_and(|after| now.as_nanos().saturating_sub(live.checked.as_nanos()) >= after);
        match (live.used, validate) {
            (false, false) => Plan::Go,
            (true, false) => Plan::Recycle,
            (recycle, true) => Plan::Check { recycle },
        }
    }

    /// Waits in line with `ticket` (starting the `connects` reserved for it) until served, the
    /// pool closes or the deadline passes.
    async fn wait_served(
        this: &Arc<Self>,
        ticket: Ticket,
        connects: usize,
        start: Instant,
        deadline: &mut Option<tokio::time::Instant>,
    ) -> Result<Live<M::Connection>, Error<M::Error>> {
        // The place in line is guarded from here on.
        let mut line = InLine {
            shared: this,
            ticket: Some(ticket),
        };
        Shared::spawn_connects(this, connects);
        let until = *deadline.get_or_insert_with(|| this.deadline(start));
        match Shared::wait(this, &mut line, until).await {
            Waited::Served(live) => Ok(live),
            Waited::Closed => Err(Error::Closed),
            Waited::TimedOut(metrics) => Err(this.timeout_error(start, Some(metrics))),
        }
    }

    /// The tokio instant at which a `get()` that started at `start` (on the pool's clock) must
    /// end.
    fn deadline(&self, start: Instant) -> tokio::time::Instant {
        let spent = self.clock.elapsed(start);
        tokio::time::Instant::now() + self.config.acquire_timeout.saturating_sub(spent)
    }

    async fn wait(
        this: &Arc<Self>,
        line: &mut InLine<'_, M, C>,
        until: tokio::time::Instant,
    ) -> Waited<M::Connection> {
        let mut sleep = pin!(tokio::time::sleep_until(until));
        poll_fn(|cx| {
            let Some(ticket) = line.ticket else {
                return Poll::Ready(Waited::Closed);
            };
            let polled = this.state.lock().poll_waiter(ticket, cx.waker());
            match polled {
                Slot::Delivered(live) => {
                    line.ticket = None;
                    return Poll::Ready(Waited::Served(live));
                }
                Slot::Closed => {
                    line.ticket = None;
                    return Poll::Ready(Waited::Closed);
                }
                Slot::Waiting(connects) => Shared::spawn_connects(this, connects),
            }
            if sleep.as_mut().poll(cx).is_ready() {
                let metrics = this.state.lock().metrics();
                // Served just at the deadline: keep it.
                return Poll::Ready(match line.leave(true) {
                    Some(live) => Waited::Served(live),
                    None => Waited::TimedOut(metrics),
                });
            }
            Poll::Pending
        })
        .await
    }

    /// Runs the checks of a connection about to go out: `recycle` and then `validate`, each
    /// if asked. `Ok` to hand it out; `Err(None)` if it was discarded (try again); `Err(Some)`
    /// if the deadline passed meanwhile.
    async fn steps(
        this: &Arc<Self>,
        check: &mut Checking<'_, M, C>,
        start: Instant,
        recycle: bool,
        validate: bool,
        deadline: &mut Option<tokio::time::Instant>,
    ) -> Result<(), Option<Error<M::Error>>> {
        let timeout = this.config.validation_timeout;
        if recycle {
            let live = check.live.as_mut().expect("a connection to check");
            live.used = false;
            let fut = this.manager.recycle(&mut live.conn);
            let result = bounded(fut, || this.step_limit(start, deadline, timeout)).await;
            if let Some(failure) = step_failure(result, timeout) {
                return Err(Shared::step_failed(this, check, start, *deadline, failure));
            }
        }
        if validate {
            let live = check.live.as_mut().expect("a connection to check");
            let fut = this.manager.validate(&mut live.conn);
            let result = bounded(fut, || this.step_limit(start, deadline, timeout)).await;
            if let Some(failure) = step_failure(result, timeout) {
                return Err(Shared::step_failed(this, check, start, *deadline, failure));
            }
        }
        let fresh = check.live.as_ref().is_some_and(|live| !live.reused);
        if fresh && (recycle || validate) {
            // A new connection passed its first check: the backend works.
            this.state.lock().proven();
        }
        Ok(())
    }

    /// A check failed: the connection is discarded. `Some(timeout)` if the caller's deadline,
    /// not the connection, cut the step short; `None` to try again.
    #[cold]
    #[inline(never)]
    fn step_failed(
        this: &Arc<Self>,
        check: &mut Checking<'_, M, C>,
        start: Instant,
        deadline: Option<tokio::time::Instant>,
        failure: Failure<M::Error>,
    ) -> Option<Error<M::Error>> {
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            // The caller's deadline, not the connection, cut the step short: its state is
            // unknown, so it is closed, but nothing is held against the backend.
            Shared::discard_checked(this, check, Discard::Cancelled, None);
            return Some(this.timeout_error(start, None));
        }
        tracing::debug!(target: "palisade_pool", %failure, "connection failed its checkout check");
        Shared::discard_checked(this, check, Discard::Invalid, Some(failure));
        None
    }

    fn step_limit(
        &self,
        start: Instant,
        deadline: &mut Option<tokio::time::Instant>,
        timeout: Duration,
    ) -> tokio::time::Instant {
        let overall = *deadline.get_or_insert_with(|| self.deadline(start));
        overall.min(tokio::time::Instant::now() + timeout)
    }

    /// `is_broken` rejected the connection about to go out: it is discarded. One straight from
    /// its connect says the backend is failing (recorded as [`Failure::Broken`], and the next
    /// connect backs off); one that sat idle or was used may only be stale, and leaves the last
    /// error and the backoff alone.
    #[cold]
    #[inline(never)]
    fn discard_broken(this: &Arc<Self>, check: &mut Checking<'_, M, C>) {
        let fresh = check.live.as_ref().is_some_and(Live::fresh);
        let failure = fresh.then_some(Failure::Broken);
        Shared::discard_checked(this, check, Discard::Broken, failure);
    }

    fn discard_checked(
        this: &Arc<Self>,
        check: &mut Checking<'_, M, C>,
        reason: Discard,
        failure: Option<Failure<M::Error>>,
    ) {
        let Some(live) = check.live.take() else {
            return;
        };
        let fresh = live.fresh();
        Shared::discard_out(
            this,
            Some(live.conn),
            reason,
            false,
            failure.map(|f| (f, fresh)),
        );
    }

    /// The error for a `get()` that started at `start` and ran out of time.
    pub(crate) fn timeout_error(
        &self,
        start: Instant,
        at_deadline: Option<Metrics>,
    ) -> Error<M::Error> {
        // Timeouts happen at the deadline: the caller waited `acquire_timeout`.
        let _ = start;
        let waited = self.config.acquire_timeout;
        let mut state = self.state.lock();
        state.timed_out();
        let mut metrics = Box::new(at_deadline.unwrap_or_else(|| state.metrics()));
        metrics.timeouts = state.counters.timeouts;
        let error = match (&state.last_error, state.failures() > 0) {
            (Some(last_error), true) => Error::Unavailable {
                waited,
                last_error: std::sync::Arc::clone(last_error),
                metrics,
            },
            _ => Error::Exhausted { waited, metrics },
        };
        drop(state);
        tracing::debug!(target: "palisade_pool", %error, "get timed out");
        error
    }

    /// Closes a checked-out (or keepalive-checked) connection, then frees its slot (in that
    /// order: the backend never sees more than `max_size` connections) and starts the connects
    /// waiters need. `None` for a connection the caller took away (detach).
    #[cold]
    #[inline(never)]
    pub(crate) fn discard_out(
        this: &Arc<Self>,
        conn: Option<M::Connection>,
        reason: Discard,
        from_check: bool,
        failure: Option<(Failure<M::Error>, bool)>,
    ) {
        drop(conn);
        tracing::debug!(target: "palisade_pool", reason = reason.as_str(), "connection discarded");
        let failed = failure.as_ref().is_some_and(|(_, fresh)| *fresh);
        let (connects, unproven) = {
            let mut state = this.state.lock();
            if let Some((failure, fresh)) = failure {
                state.record_error(failure, fresh);
            }
            (state.discard_out(reason, from_check), state.unproven())
        };
        if failed {
            this.back_off(unproven);
        }
        this.changed.notify_waiters();
        Shared::spawn_connects(this, connects);
    }

    /// After the `unproven`-th failure since a connection last proved the backend works, no
    /// connect attempt starts before the backoff schedule's (jittered) pause for it.
    fn back_off(&self, unproven: u32) {
        let nth = unproven.clamp(1, 32) as usize - 1;
        let pause = self
            .config
            .connect_backoff
            .delays()
            .nth(nth)
            .unwrap_or_default();
        let at = self.clock.now().saturating_add(pause);
        self.state.lock().back_off_until(at);
    }

    /// Closes connections a state transition discarded (their reasons are counted already),
    /// then frees their slots.
    #[inline]
    pub(crate) fn dropped(this: &Arc<Self>, dropped: Dropped<M::Connection>, during: &'static str) {
        if !dropped.is_empty() {
            Shared::dropped_slow(this, dropped, during);
        }
    }

    #[cold]
    #[inline(never)]
    fn dropped_slow(this: &Arc<Self>, dropped: Dropped<M::Connection>, during: &'static str) {
        let n = dropped.len();
        drop(dropped);
        tracing::debug!(target: "palisade_pool", count = n, during, "connections discarded");
        let connects = this.state.lock().release(n);
        this.changed.notify_waiters();
        Shared::spawn_connects(this, connects);
    }

    /// Starts `n` connect tasks whose slots the state has reserved. With no runtime here (a
    /// guard dropped after shutdown, a pool built outside one), each slot-owning future is
    /// dropped unpolled and releases its slot, waking the longest waiter, which starts the
    /// connect from its own runtime: every one of the `n` slots ends up connecting or free.
    pub(crate) fn spawn_connects(this: &Arc<Self>, n: usize) {
        for _ in 0..n {
            this.config.spawner.spawn(connect(Arc::clone(this)));
        }
    }

    fn lifetime_end(&self, created: Instant) -> Instant {
        match self.lifetime {
            None => Instant::MAX,
            Some((max, span)) => created.saturating_add(max.saturating_sub(uniform_up_to(span))),
        }
    }
}

/// Uniform in `[0, span]`, drawn from std's randomly keyed hasher: a new key per call, as
/// spreading lifetimes apart needs, without a generator to keep or seed.
fn uniform_up_to(span: Duration) -> Duration {
    let random = RandomState::new().hash_one(());
    let pick = (u128::from(random) * (u128::from(nanos(span)) + 1)) >> 64;
    Duration::from_nanos(pick as u64)
}

/// One connect task: attempts until it connects, the need goes away, or the pool closes.
/// Attempts follow the pool-wide backoff: after a failure, no attempt (of any task) starts
/// before the pause the backoff schedule gives for the failures so far.
fn connect<M: Manager, C: Clock>(shared: Arc<Shared<M, C>>) -> impl Future<Output = ()> + Send {
    // Created here, outside the async body, so that even a task dropped before its first poll
    // (a runtime shutting down) gives its slot back.
    let slot = Reserved {
        shared,
        armed: true,
    };
    async move {
        let mut slot = slot;
        connect_loop(&mut slot).await;
    }
}

/// A connect's reserved slot: released (and the longest waiter woken to start another
/// connect) if the connect task is dropped or panics before it settles the slot itself.
struct Reserved<M: Manager, C: Clock> {
    shared: Arc<Shared<M, C>>,
    armed: bool,
}

impl<M: Manager, C: Clock> Drop for Reserved<M, C> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let waker = self.shared.state.lock().connect_abandoned();
        self.shared.changed.notify_waiters();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

async fn connect_loop<M: Manager, C: Clock>(slot: &mut Reserved<M, C>) {
    let shared = Arc::clone(&slot.shared);
    let mut retrying = false;
    loop {
        let pause = {
            let state = shared.state.lock();
            state
                .retry_at()
                .saturating_duration_since(shared.clock.now())
        };
        if !pause.is_zero() || retrying {
            if pause.is_zero() {
                // A backoff with no pause still gives the runtime a turn between attempts: a
                // connect that fails without ever returning `Pending` would otherwise keep
                // this task, and its worker, busy forever.
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(pause).await;
            }
            if shared.state.lock().still_needed() == AfterFailure::GiveUp {
                slot.armed = false;
                shared.changed.notify_waiters();
                return;
            }
        }
        let timeout = shared.config.connect_timeout;
        // `connect()` is called inside `caught` too: a panic building the future is caught like
        // one polling it.
        let result = bounded(caught(async { shared.manager.connect().await }), || {
            tokio::time::Instant::now() + timeout
        })
        .await;
        let failure = match result {
            Some(Ok(Ok(conn))) => {
                let now = shared.clock.now();
                let live = Live {
                    conn,
                    created: now,
                    expires: shared.lifetime_end(now),
                    used: false,
                    reused: false,
                    idled: false,
                    since: now,
                    checked: now,
                };
                let mut dropped = Dropped::new();
                let (waker, connects) = shared.state.lock().connected(live, &mut dropped);
                slot.armed = false;
                tracing::debug!(target: "palisade_pool", "connection created");
                Shared::dropped(&shared, dropped, "connect");
                if let Some(waker) = waker {
                    waker.wake();
                }
                Shared::spawn_connects(&shared, connects);
                shared.changed.notify_waiters();
                return;
            }
            Some(Ok(Err(e))) => Failure::Connect(e),
            Some(Err(message)) => Failure::ConnectPanicked(message),
            None => Failure::ConnectTimeout(timeout),
        };
        tracing::warn!(target: "palisade_pool", %failure, "connect failed");
        let (after, unproven) = {
            let mut state = shared.state.lock();
            let after = state.connect_failed(failure);
            if after == AfterFailure::GiveUp {
                slot.armed = false;
            }
            (after, state.unproven())
        };
        // The pause for the `unproven`-th failure in a row, jittered.
        shared.back_off(unproven);
        shared.changed.notify_waiters();
        if after == AfterFailure::GiveUp {
            return;
        }
        retrying = true;
    }
}
