//! Deciding, per outcome, whether to retry: [`Classify`] and [`Decision`].

use std::time::Duration;

/// What to do with the outcome of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The outcome is final: hand it to the caller (a success, or an error retrying can't fix).
    DontRetry,
    /// A transient failure: retry after the backoff's next delay.
    Retry,
    /// A transient failure with a hint from the other side (`Retry-After`, gRPC pushback): retry
    /// after this delay instead of the backoff's. It is capped at the policy's `max_delay` unless
    /// the policy says [`honor_retry_after_beyond_max_delay`](crate::RetryPolicyBuilder::honor_retry_after_beyond_max_delay).
    RetryAfter(Duration),
}

impl Decision {
    /// Whether this decision asks for another attempt.
    pub fn is_retry(&self) -> bool {
        !matches!(self, Decision::DontRetry)
    }
}

/// Classifies the outcome of an attempt: errors *and* successful values, so an HTTP 503 or 429
/// response can be retried while a 404 error is not.
///
/// Any `Fn(&Result<T, E>) -> Decision` closure is a classifier:
///
/// ```
/// use palisade_retry::{Classify, Decision};
/// use std::time::Duration;
///
/// struct Response { status: u16, retry_after: Option<Duration> }
///
/// let classify = |outcome: &Result<Response, std::io::Error>| match outcome {
///     Ok(r) if r.status == 429 || r.status == 503 => match r.retry_after {
///         Some(hint) => Decision::RetryAfter(hint),
///         None => Decision::Retry,
///     },
///     Ok(_) => Decision::DontRetry,
///     Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Decision::Retry,
///     Err(_) => Decision::DontRetry,
/// };
/// let busy = Ok(Response { status: 503, retry_after: Some(Duration::from_secs(2)) });
/// assert_eq!(classify.classify(&busy), Decision::RetryAfter(Duration::from_secs(2)));
/// ```
pub trait Classify<T, E> {
    /// The decision for `outcome`.
    fn classify(&self, outcome: &Result<T, E>) -> Decision;
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Decision,
{
    #[inline]
    fn classify(&self, outcome: &Result<T, E>) -> Decision {
        self(outcome)
    }
}

/// The default classifier: retry every error, return every success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOnError;

impl<T, E> Classify<T, E> for RetryOnError {
    #[inline]
    fn classify(&self, outcome: &Result<T, E>) -> Decision {
        match outcome {
            Ok(_) => Decision::DontRetry,
            Err(_) => Decision::Retry,
        }
    }
}

/// What the [`OnRetry`] hook sees before each retry.
#[derive(Debug)]
#[non_exhaustive]
pub struct RetryEvent<'a, T, E> {
    /// The attempt that just failed, counting from 1.
    pub attempt: u32,
    /// Its outcome: an error, or a success value classified as retryable.
    pub outcome: &'a Result<T, E>,
    /// How long the retry loop sleeps before the next attempt.
    pub delay: Duration,
}

/// A hook called before each retry (not before the first attempt, not on giving up).
///
/// Any `FnMut(&RetryEvent<'_, T, E>)` closure is a hook; `()` is the hook that does nothing.
pub trait OnRetry<T, E> {
    /// Called once per retry, after the delay is chosen and before the sleep.
    fn on_retry(&mut self, event: &RetryEvent<'_, T, E>);
}

impl<T, E, F> OnRetry<T, E> for F
where
    F: FnMut(&RetryEvent<'_, T, E>),
{
    #[inline]
    fn on_retry(&mut self, event: &RetryEvent<'_, T, E>) {
        self(event)
    }
}

impl<T, E> OnRetry<T, E> for () {
    #[inline]
    fn on_retry(&mut self, _: &RetryEvent<'_, T, E>) {}
}
