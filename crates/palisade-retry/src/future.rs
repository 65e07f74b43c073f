//! [`ResponseFuture`]: the future of one call through [`RetryService`](crate::RetryService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use crate::budget::RetryBudget;
use crate::classify::{Classify, OnRetry};
use crate::decide;
use crate::error::{AttemptTimedOut, TimeoutSpec};
use crate::policy::{RetryPolicy, Schedule};

pin_project! {
    /// The response future of [`RetryService`](crate::RetryService).
    ///
    /// Dropping it cancels the attempt in flight and starts no other.
    pub struct ResponseFuture<S, Req, C, H>
    where
        S: Service<Req>,
    {
        service: S,
        request: Req,
        policy: RetryPolicy,
        classify: C,
        on_retry: H,
        budget: Option<Arc<dyn RetryBudget>>,
        attempt_timeout: TimeoutSpec<S::Error>,
        schedule: Schedule,
        started: Option<Instant>,
        #[pin]
        state: State<S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Fut> {
        Calling { #[pin] fut: Fut },
        Sleeping,
        Readying,
    }
}

impl<S, Req, C, H> ResponseFuture<S, Req, C, H>
where
    S: Service<Req>,
    Req: Clone,
{
    pub(crate) fn new(
        mut service: S,
        request: Req,
        policy: RetryPolicy,
        classify: C,
        on_retry: H,
        budget: Option<Arc<dyn RetryBudget>>,
        attempt_timeout: TimeoutSpec<S::Error>,
    ) -> Self {
        let mut schedule = policy.schedule();
        schedule.start_attempt();
        let started = policy.max_elapsed().map(|_| Instant::now());
        if let Some(budget) = &budget {
            budget.deposit();
        }
        let fut = service.call(request.clone());
        ResponseFuture {
            service,
            request,
            policy,
            classify,
            on_retry,
            budget,
            attempt_timeout,
            schedule,
            started,
            state: State::Calling { fut },
        }
    }
}

impl<S, Req, C, H> Future for ResponseFuture<S, Req, C, H>
where
    S: Service<Req>,
    Req: Clone,
    C: Classify<S::Response, S::Error>,
    H: OnRetry<S::Response, S::Error>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { fut } => {
                    let (outcome, timed_out) = match fut.poll(cx) {
                        Poll::Ready(outcome) => (outcome, false),
                        Poll::Pending => match *this.attempt_timeout {
                            Some((timeout, timed_out)) => {
                                // The timer starts at the call's first `Pending` (inside the
                                // runtime), so a call that is ready at once costs no timer.
                                ready!(this.schedule.poll_attempt_timeout(timeout, cx));
                                // Cancel the attempt: drop its future now.
                                this.state.set(State::Readying);
                                (Err(timed_out(AttemptTimedOut(timeout))), true)
                            }
                            None => return Poll::Pending,
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
                        this.policy,
                        || started.map_or(Duration::ZERO, |s| s.elapsed()),
                    );
                    match delay {
                        None => return Poll::Ready(outcome),
                        Some(delay) if delay.is_zero() => {
                            // No timer, but a yield: see `Retry`.
                            this.state.set(State::Readying);
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        Some(delay) => {
                            this.schedule.arm_backoff(delay, started, this.policy);
                            this.state.set(State::Sleeping);
                        }
                    }
                }
                StateProj::Sleeping => {
                    ready!(this.schedule.poll_timer(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    // A readiness error ends the call: the service can't take the retry.
                    ready!(this.service.poll_ready(cx))?;
                    this.schedule.start_attempt();
                    let fut = this.service.call(this.request.clone());
                    this.state.set(State::Calling { fut });
                }
            }
        }
    }
}

impl<S, Req, C, H> fmt::Debug for ResponseFuture<S, Req, C, H>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("policy", &self.policy)
            .field("attempts", &self.schedule.attempts())
            .finish_non_exhaustive()
    }
}
