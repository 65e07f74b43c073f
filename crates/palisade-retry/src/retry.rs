//! [`retry`]: retry an async operation; the returned [`Retry`] is both builder and future.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::budget::RetryBudget;
use crate::classify::{Classify, OnRetry, RetryOnError};
use crate::decide;
use crate::error::{AttemptTimedOut, TimeoutSpec};
use crate::policy::{RetryPolicy, Schedule};

/// Retries the async operation `op` until it succeeds, its outcome is classified as final, or
/// the policy, deadline or budget says stop; returns the last outcome.
///
/// The returned [`Retry`] is a builder until it is awaited: set the policy with
/// [`with`](Retry::with), the classifier with [`when`](Retry::when), a shared
/// [`budget`](Retry::budget), an [`on_retry`](Retry::on_retry) hook and an
/// [`attempt_timeout`](Retry::attempt_timeout). Without them it retries every error with
/// [`RetryPolicy::default`] (3 attempts, exponential backoff from 100 ms with full jitter).
///
/// Sleeps, timeouts and the deadline follow tokio's clock, so a test under
/// `#[tokio::test(start_paused = true)]` runs a whole schedule instantly. A zero delay takes no
/// timer: the loop yields to the scheduler once and tries again.
///
/// # Cancel safety
///
/// Dropping the future at any point stops retrying: the attempt in flight is dropped (cancelled),
/// and no further attempt starts. A budget withdrawal already made for a retry that was waiting
/// is not refunded, which errs on the side of fewer retries.
///
/// ```
/// use palisade_retry::{Backoff, Decision, Jitter, RetryPolicy, retry};
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let policy = RetryPolicy::builder()
///     .backoff(Backoff::exponential(Duration::from_millis(10)).jitter(Jitter::Full))
///     .max_attempts(5)
///     .build()?;
///
/// let calls = AtomicU32::new(0);
/// let answer = retry(|| async {
///     // Fails twice, then works.
///     match calls.fetch_add(1, Ordering::Relaxed) {
///         0 | 1 => Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
///         _ => Ok(42),
///     }
/// })
/// .with(policy)
/// .when(|outcome: &Result<i32, std::io::Error>| match outcome {
///     Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Decision::Retry,
///     _ => Decision::DontRetry,
/// })
/// .await?;
/// assert_eq!(answer, 42);
/// assert_eq!(calls.load(Ordering::Relaxed), 3);
/// # Ok(())
/// # }
/// ```
pub fn retry<F, Fut, T, E>(op: F) -> Retry<F, Fut, RetryOnError, (), &'static RetryPolicy>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    static DEFAULT: RetryPolicy = RetryPolicy::DEFAULT;
    Retry {
        op,
        schedule: DEFAULT.schedule(),
        policy: &DEFAULT,
        classify: RetryOnError,
        on_retry: (),
        budget: None,
        attempt_timeout: None,
        started: None,
        state: State::Start,
    }
}

pin_project! {
    /// A retried async operation: a builder until awaited, then the future of its final outcome.
    ///
    /// Made by [`retry`]; see there for an example and for cancel safety.
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct Retry<F, Fut, C, H, P>
    where
        Fut: Future,
    {
        op: F,
        policy: P,
        classify: C,
        on_retry: H,
        budget: Option<Arc<dyn RetryBudget>>,
        attempt_timeout: TimeoutSpec<Fut::Output>,
        schedule: Schedule,
        started: Option<Instant>,
        #[pin]
        state: State<Fut>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Fut> {
        Start,
        Running { #[pin] fut: Fut },
        Sleeping,
        Yielding,
    }
}

impl<F, Fut, T, E, C, H, P> Retry<F, Fut, C, H, P>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    P: Borrow<RetryPolicy>,
{
    /// The policy: backoff, attempts, deadline (default [`RetryPolicy::default`]). Pass it by
    /// value or, to share one policy among many calls without copying it, by reference.
    pub fn with<P2: Borrow<RetryPolicy>>(self, policy: P2) -> Retry<F, Fut, C, H, P2> {
        Retry {
            op: self.op,
            schedule: policy.borrow().schedule(),
            policy,
            classify: self.classify,
            on_retry: self.on_retry,
            budget: self.budget,
            attempt_timeout: self.attempt_timeout,
            started: self.started,
            state: self.state,
        }
    }

    /// The classifier that decides, per outcome, whether to retry (default: retry every error,
    /// return every success). Any `Fn(&Result<T, E>) -> Decision` works.
    pub fn when<C2: Classify<T, E>>(self, classify: C2) -> Retry<F, Fut, C2, H, P> {
        Retry {
            op: self.op,
            policy: self.policy,
            classify,
            on_retry: self.on_retry,
            budget: self.budget,
            attempt_timeout: self.attempt_timeout,
            schedule: self.schedule,
            started: self.started,
            state: self.state,
        }
    }

    /// A hook called before each retry with the attempt number, its outcome and the delay chosen.
    /// Any `FnMut(&RetryEvent<'_, T, E>)` works.
    pub fn on_retry<H2: OnRetry<T, E>>(self, on_retry: H2) -> Retry<F, Fut, C, H2, P> {
        Retry {
            op: self.op,
            policy: self.policy,
            classify: self.classify,
            on_retry,
            budget: self.budget,
            attempt_timeout: self.attempt_timeout,
            schedule: self.schedule,
            started: self.started,
            state: self.state,
        }
    }

    /// A retry budget shared with every other operation that holds a clone of the `Arc`. When it
    /// refuses a retry, the loop returns the last real outcome.
    pub fn budget(mut self, budget: Arc<dyn RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Cancels an attempt that runs longer than `timeout` and counts it as a retryable failure,
    /// whatever the classifier would say of the error; if it was the last attempt, the caller
    /// gets `Err(E::from(AttemptTimedOut(timeout)))`. The timer starts when the attempt first
    /// returns `Pending` (an attempt that finishes at once costs no timer) and has tokio's
    /// timer resolution (1 ms): a zero timeout cancels an attempt still pending at the next tick.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self
    where
        E: From<AttemptTimedOut>,
    {
        self.attempt_timeout = Some((timeout, timed_out::<T, E>));
        self
    }
}

fn timed_out<T, E: From<AttemptTimedOut>>(elapsed: AttemptTimedOut) -> Result<T, E> {
    Err(E::from(elapsed))
}

/// What the first attempt of an operation with a deadline or a budget does before it starts.
#[cold]
fn first_attempt(
    policy: &RetryPolicy,
    started: &mut Option<Instant>,
    budget: Option<&dyn RetryBudget>,
) {
    if policy.max_elapsed().is_some() {
        *started = Some(Instant::now());
    }
    if let Some(budget) = budget {
        budget.deposit();
    }
}

impl<F, Fut, T, E, C, H, P> Future for Retry<F, Fut, C, H, P>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
    H: OnRetry<T, E>,
    P: Borrow<RetryPolicy>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, E>> {
        let mut this = self.project();
        let policy: &RetryPolicy = (*this.policy).borrow();
        loop {
            let (outcome, timed_out) = match this.state.as_mut().project() {
                StateProj::Start => {
                    if this.schedule.start_attempt() == 1
                        && (policy.max_elapsed().is_some() || this.budget.is_some())
                    {
                        first_attempt(policy, this.started, this.budget.as_deref());
                    }
                    let fut = (this.op)();
                    this.state.set(State::Running { fut });
                    continue;
                }
                StateProj::Sleeping => {
                    ready!(this.schedule.poll_timer(cx));
                    this.state.set(State::Start);
                    continue;
                }
                StateProj::Yielding => {
                    this.state.set(State::Start);
                    continue;
                }
                StateProj::Running { fut } => match fut.poll(cx) {
                    Poll::Ready(outcome) => (outcome, false),
                    Poll::Pending => match *this.attempt_timeout {
                        Some((timeout, timed_out)) => {
                            ready!(this.schedule.poll_attempt_timeout(timeout, cx));
                            // Cancel the attempt now, whatever comes next.
                            this.state.set(State::Start);
                            (timed_out(AttemptTimedOut(timeout)), true)
                        }
                        _ => return Poll::Pending,
                    },
                },
            };
            let started = *this.started;
            let delay = decide::next_delay(
                &outcome,
                timed_out,
                this.classify,
                this.on_retry,
                this.budget.as_deref(),
                this.schedule,
                policy,
                || started.map_or(Duration::ZERO, |s| s.elapsed()),
            );
            // Retrying: drop the finished attempt's future before waiting. (On return it goes
            // with `self`.)
            if delay.is_some() {
                this.state.set(State::Start);
            }
            match delay {
                None => return Poll::Ready(outcome),
                Some(delay) if delay.is_zero() => {
                    // No timer for a zero delay, but a yield: a loop of attempts that fail at
                    // once must not hold the worker thread.
                    this.state.set(State::Yielding);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Some(delay) => {
                    this.schedule.arm_backoff(delay, started, policy);
                    this.state.set(State::Sleeping);
                }
            }
        }
    }
}

impl<F, Fut, C, H, P> fmt::Debug for Retry<F, Fut, C, H, P>
where
    Fut: Future,
    P: Borrow<RetryPolicy>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("policy", self.policy.borrow())
            .field("attempts", &self.schedule.attempts())
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}
