//! [`RateLimit`]: a tower service behind a shared rate limit.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::Clock;
use tower_service::Service;

use crate::algorithm::Algorithm;
use crate::decision::Decision;
use crate::error::{RateLimited, WaitError};
use crate::future::{BoxError, ResponseFuture};
use crate::keyed::KeyedRateLimiter;
use crate::layer::{Mode, Unkeyed};
use crate::limiter::RateLimiter;
use crate::wait::{RefundOnDrop, random_up_to};

/// A service behind a rate limit shared by every clone. Built by
/// [`RateLimitLayer`](crate::RateLimitLayer).
///
/// - **Reject mode**: `poll_ready` is the inner service's; `call` checks the limit and, over
///   it, returns a future that fails at once with a [`RateLimited`] (downcast the `BoxError`
///   to read `retry_after`) without calling the inner service.
/// - **Backpressure mode, unkeyed**: `poll_ready` reserves the next cell and is pending until
///   its moment (first come, first served among waiting services), then polls the inner
///   service; `call` spends the reserved cell. A service dropped while waiting or holding a
///   reserved cell gives it back. A request that would wait longer than `max_wait` is refused
///   in `poll_ready`, which is then ready at once without polling the inner service: the
///   refusal holds no capacity and answers the next `call` however late it comes (a ready
///   service stays ready until it is called), with `retry_after` as of `poll_ready`; the
///   `poll_ready` after that call decides anew.
/// - **Backpressure mode, keyed**: the key is in the request, so `call` reserves the key's
///   next cell and the response future waits for it, then drives a clone of the inner service
///   to readiness and calls it. The readiness `poll_ready` got for that request is given up
///   (the service goes on with a fresh clone, for the next `poll_ready`), so an inner service
///   whose readiness holds capacity (a concurrency limit) can serve the waiting clone. The wait counts
///   from `call`, not from the future's first poll. Until the inner call is made, the cell goes
///   back if the future is dropped or the clone fails readiness (over a sliding window or
///   several quotas, which reserve nothing ahead, only until the wait ends: the cell then taken
///   is spent, as a plain check's).
pub struct RateLimit<S, L, F = Unkeyed> {
    inner: S,
    limiter: Arc<L>,
    key: F,
    mode: Mode,
    ready: Ready,
}

/// Unkeyed backpressure: where this service stands with its next cell. Allocation-free per
/// request: the limiter handle is taken once per service and the timer is boxed once and reset.
#[derive(Default)]
struct Ready {
    state: State,
    /// The limiter, to give a reserved cell back; set by the first reservation.
    undo: Option<Arc<dyn UndoCell>>,
    /// The timer for the reserved moment, reset for each wait.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When a wait that reserved nothing (a sliding window, several quotas) began, on the
    /// limiter's clock, plus one (0: no such wait under way): its retries together wait at
    /// most `max_wait`.
    retrying_since: u64,
}

#[derive(Default)]
enum State {
    #[default]
    Idle,
    /// Sleeping until the reserved moment, holding the reservation's end (`None` when nothing
    /// could be reserved and the service should try again when the timer fires).
    Sleeping(Option<u64>),
    /// A reserved cell whose moment has come, for the next `call`.
    Granted(u64),
    Refused(RateLimited),
}

/// A limiter that can give back one reserved cell (type-erased, so a service's [`Ready`]
/// gives back on drop whatever its limiter's type).
trait UndoCell: Send + Sync {
    fn undo_cell(&self, end: u64);
}

impl<A: Algorithm, C: Clock> UndoCell for RateLimiter<A, C> {
    fn undo_cell(&self, end: u64) {
        self.undo(1, end);
    }
}

impl Ready {
    /// Back to `Idle`, giving back a cell reserved and not spent.
    fn release(&mut self) {
        self.retrying_since = 0;
        if let State::Sleeping(Some(end)) | State::Granted(end) = std::mem::take(&mut self.state)
            && let Some(undo) = &self.undo
        {
            undo.undo_cell(end);
        }
    }

    /// Sleeps `wait` from now on the (reused) timer.
    fn sleep(&mut self, wait: Duration, end: Option<u64>) {
        let deadline = tokio::time::Instant::now() + wait;
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.state = State::Sleeping(end);
    }
}

impl Drop for Ready {
    fn drop(&mut self) {
        self.release();
    }
}

impl<S, L, F> RateLimit<S, L, F> {
    /// Wraps `inner` with `limiter`, reading keys with `key`.
    pub const fn new(inner: S, limiter: Arc<L>, key: F, mode: Mode) -> Self {
        RateLimit {
            inner,
            limiter,
            key,
            mode,
            ready: Ready {
                state: State::Idle,
                undo: None,
                sleep: None,
                retrying_since: 0,
            },
        }
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &Arc<L> {
        &self.limiter
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service (a reserved cell is given back).
    pub fn into_inner(self) -> S {
        let RateLimit { inner, .. } = self;
        inner
    }
}

/// A clone shares the limiter and starts without a reserved cell.
impl<S: Clone, L, F: Clone> Clone for RateLimit<S, L, F> {
    fn clone(&self) -> Self {
        RateLimit::new(
            self.inner.clone(),
            Arc::clone(&self.limiter),
            self.key.clone(),
            self.mode,
        )
    }
}

impl<S: fmt::Debug, L: fmt::Debug, F> fmt::Debug for RateLimit<S, L, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ready = match self.ready.state {
            State::Idle => "idle",
            State::Sleeping(_) => "waiting",
            State::Granted(_) => "granted",
            State::Refused(_) => "refused",
        };
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .field("mode", &self.mode)
            .field("ready", &ready)
            .finish_non_exhaustive()
    }
}

fn rejection(decision: &Decision) -> RateLimited {
    RateLimited {
        retry_after: decision.retry_after().unwrap_or_default(),
        limit: decision.limit(),
        keys_full: decision.is_keys_full(),
    }
}

fn wait_rejection(error: WaitError, limit: u32) -> RateLimited {
    let (retry_after, keys_full) = match error {
        WaitError::TooLong { wait } => (wait, false),
        WaitError::KeysFull { retry_after } => (retry_after, true),
        WaitError::InsufficientCapacity(_) => (Duration::MAX, false),
    };
    RateLimited {
        retry_after,
        limit,
        keys_full,
    }
}

impl<S, Req, A, C> Service<Req> for RateLimit<S, RateLimiter<A, C>, Unkeyed>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    A: Algorithm,
    C: Clock,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if let Mode::Backpressure { max_wait } = self.mode {
            // (One exit from the loop and the test after it: a `return` from the `Refused` arm
            // cost the backpressure row 3 to 4 ns.)
            let refused = loop {
                match self.ready.state {
                    State::Granted(_) => break false,
                    State::Refused(_) => break true,
                    State::Idle => self.reserve(max_wait),
                    State::Sleeping(end) => {
                        if let Some(sleep) = &mut self.ready.sleep {
                            std::task::ready!(sleep.as_mut().poll(cx));
                        }
                        self.ready.state = end.map_or(State::Idle, State::Granted);
                    }
                }
            };
            if refused {
                // `call` refuses without the inner service: don't wait for its readiness (or
                // make it reserve anything) for a request it will never see.
                return Poll::Ready(Ok(()));
            }
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match std::mem::take(&mut self.ready.state) {
            // The reserved cell is spent.
            State::Granted(_) => return ResponseFuture::called(self.inner.call(req)),
            State::Refused(rejected) => return ResponseFuture::refused(rejected),
            // Reject mode, or `call` without a finished `poll_ready`: give back what is
            // reserved and decide now.
            waiting @ State::Sleeping(_) => {
                self.ready.state = waiting;
                self.ready.release();
            }
            State::Idle => {}
        }
        let decision = self.limiter.check();
        if decision.is_allowed() {
            ResponseFuture::called(self.inner.call(req))
        } else {
            ResponseFuture::refused(rejection(&decision))
        }
    }
}

impl<S, A: Algorithm, C: Clock> RateLimit<S, RateLimiter<A, C>, Unkeyed> {
    /// Takes or reserves the next cell for the coming `call`.
    fn reserve(&mut self, max_wait: Duration) {
        let limiter = &self.limiter;
        let ready = &mut self.ready;
        let max_wait = if ready.retrying_since == 0 {
            max_wait
        } else {
            budget_left(limiter, max_wait, ready.retrying_since - 1)
        };
        match limiter.reserve(1, max_wait) {
            Ok((d, end)) if d.is_allowed() => {
                // Held by `ready` from here: dropped at any point, it gives the cell back.
                if ready.undo.is_none() {
                    ready.undo = Some(Arc::clone(limiter) as Arc<dyn UndoCell>);
                }
                if d.retry_after == 0 {
                    ready.state = State::Granted(end);
                } else {
                    let wait = Duration::from_nanos(d.retry_after) + random_up_to(limiter.jitter());
                    ready.sleep(wait, Some(end));
                }
            }
            Ok((d, _)) if d.retry_after().is_some_and(|w| w <= max_wait) => {
                // Nothing reserved (a sliding window, several quotas): wait for the predicted
                // moment and try again from `Idle`, with what is left of `max_wait`.
                if ready.retrying_since == 0 {
                    ready.retrying_since = limiter.now().saturating_add(1);
                }
                let wait = Duration::from_nanos(d.retry_after) + random_up_to(limiter.jitter());
                ready.sleep(wait, None);
                return;
            }
            Ok((d, _)) => ready.state = State::Refused(rejection(&d)),
            Err(e) => {
                ready.state = State::Refused(wait_rejection(e.into(), limiter.peek().limit()));
            }
        }
        ready.retrying_since = 0;
    }
}

/// What is left of `max_wait` for a wait that began at `since` (the limiter's time). Out of
/// line: it reads the clock, and only a retry needs it.
#[cold]
#[inline(never)]
fn budget_left<A: Algorithm, C: Clock>(
    limiter: &RateLimiter<A, C>,
    max_wait: Duration,
    since: u64,
) -> Duration {
    let spent = limiter.now().saturating_sub(since);
    max_wait.saturating_sub(Duration::from_nanos(spent))
}

impl<S, Req, K, Q, A, C, H, F> Service<Req> for RateLimit<S, KeyedRateLimiter<K, A, C, H>, F>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    S::Response: 'static,
    Req: Send + 'static,
    F: Fn(&Req) -> Q,
    Q: Borrow<K>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    A: Algorithm,
    C: Clock,
    H: BuildHasher + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = (self.key)(&req);
        let max_wait = match self.mode {
            Mode::Reject => {
                let decision = self.limiter.check(key.borrow());
                return if decision.is_allowed() {
                    ResponseFuture::called(self.inner.call(req))
                } else {
                    ResponseFuture::refused(rejection(&decision))
                };
            }
            Mode::Backpressure { max_wait } => max_wait,
        };
        let (decision, end) = match self.limiter.reserve(key.borrow(), 1, max_wait) {
            Ok(reserved) => reserved,
            Err(e) => return ResponseFuture::refused(wait_rejection(e.into(), 0)),
        };
        if decision.is_allowed() && decision.retry_after == 0 {
            return ResponseFuture::called(self.inner.call(req));
        }
        if decision.is_keys_full() {
            // A table full of keys that owe capacity: refuse rather than wait on a guess.
            return ResponseFuture::refused(rejection(&decision));
        }
        let budget = decision.retry_after().filter(|w| *w <= max_wait);
        if !decision.is_allowed() && budget.is_none() {
            return ResponseFuture::refused(rejection(&decision));
        }
        // Wait in the response future, on a clone. The wait counts from the reservation, made
        // here, not from the future's first poll.
        let wait = Duration::from_nanos(decision.retry_after);
        let limiter = Arc::clone(&self.limiter);
        // The service's and the key's `Clone` are the caller's code: if one panics, the cell
        // reserved above (if any) goes back.
        let reserved = RefundOnDrop(
            decision
                .is_allowed()
                .then_some(|| limiter.undo(key.borrow(), 1, end)),
        );
        let inner = self.inner.clone();
        // The readiness `poll_ready` got for this request (a concurrency permit, a buffer
        // slot) is given up, not kept for a next request that may never come: kept, it could
        // be the very capacity the clone waits for, and a caller awaiting this response before
        // its next request would wait forever. A fresh clone takes the readied service's place,
        // for the next `poll_ready` to ready.
        self.inner = inner.clone();
        let key: K = key.borrow().clone();
        reserved.disarm();
        if decision.is_allowed() {
            let deadline = tokio::time::Instant::now() + wait + random_up_to(limiter.jitter());
            // Armed before the future exists, so dropping it even unpolled gives the cell back.
            let cell = RefundOnDrop(Some(move || limiter.undo(&key, 1, end)));
            return ResponseFuture::waiting(Box::pin(async move {
                tokio::time::sleep_until(deadline).await;
                call_when_ready(inner, req, cell).await
            }));
        }
        // Nothing could be reserved (a sliding window): wait for the predicted moment, then
        // queue properly.
        let deadline = tokio::time::Instant::now() + wait;
        ResponseFuture::waiting(Box::pin(async move {
            tokio::time::sleep_until(deadline).await;
            let limit = limiter.algorithm().capacity();
            limiter
                .until_key_ready_within(&key, 1, max_wait.saturating_sub(wait))
                .await
                .map_err(|e| wait_rejection(e, limit))?;
            // The cell is spent from here, as a plain check's: given back after a drop, the
            // refund could land in a later window and take a cell off that window's count (a
            // sliding window gives back from the window the refund reads in).
            call_when_ready(inner, req, RefundOnDrop::<fn()>(None)).await
        }))
    }
}

/// Drives `inner` to readiness and calls it. `cell` is the request's cell: it goes back if the
/// request is never sent (the future dropped while `inner` is not ready, or `inner` failing
/// readiness), and is spent once the call is made.
async fn call_when_ready<S, Req, F>(
    mut inner: S,
    req: Req,
    cell: RefundOnDrop<F>,
) -> Result<S::Response, BoxError>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    F: FnOnce(),
{
    std::future::poll_fn(|cx| inner.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    let response = inner.call(req);
    cell.disarm();
    response.await.map_err(Into::into)
}
