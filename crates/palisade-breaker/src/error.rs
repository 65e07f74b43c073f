//! Errors: invalid configuration, a rejected call, and a keyed set that is full.

use std::fmt;
use std::time::Duration;

use crate::State;

pub use palisade_core::ConfigError;

/// The breaker refused a call: it is open, forced open, or half-open with every probe slot
/// taken.
///
/// A small `Copy` value: rejecting allocates nothing. [`retry_after`](Rejected::retry_after)
/// says when the breaker will next admit a probe, when it knows: an open breaker knows its
/// deadline; a forced-open breaker, or a half-open one waiting for its probes, does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub(crate) state: State,
    pub(crate) retry_after: Option<Duration>,
}

impl Rejected {
    /// The state that rejected the call: [`State::Open`], [`State::ForcedOpen`] or
    /// [`State::HalfOpen`].
    pub const fn state(&self) -> State {
        self.state
    }

    /// How long until the breaker admits a probe, if it knows: `Some` for an open breaker (the
    /// rest of its open duration), `None` when forced open or while the half-open probes run.
    pub const fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.state, self.retry_after) {
            (State::HalfOpen, _) => {
                f.write_str("circuit breaker is half-open and every probe slot is taken")
            }
            (state, Some(after)) => write!(
                f,
                "circuit breaker is {state}; a probe is allowed in {after:?}"
            ),
            (state, None) => write!(f, "circuit breaker is {state}"),
        }
    }
}

impl std::error::Error for Rejected {}

/// The error of [`CircuitBreaker::call`](crate::CircuitBreaker::call): the breaker rejected the
/// call without running it, or the call ran and failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError<E> {
    /// The breaker refused the call; the future was dropped without being polled.
    Rejected(Rejected),
    /// The call ran and returned this error (whatever the classifier made of it).
    Inner(E),
}

impl<E> CallError<E> {
    /// The call's own error, if it ran.
    pub fn into_inner(self) -> Option<E> {
        match self {
            CallError::Inner(e) => Some(e),
            CallError::Rejected(_) => None,
        }
    }

    /// The rejection, if the breaker refused the call.
    pub fn rejected(&self) -> Option<Rejected> {
        match self {
            CallError::Rejected(r) => Some(*r),
            CallError::Inner(_) => None,
        }
    }

    /// Applies `f` to the call's own error.
    pub fn map_inner<F, E2>(self, f: F) -> CallError<E2>
    where
        F: FnOnce(E) -> E2,
    {
        match self {
            CallError::Inner(e) => CallError::Inner(f(e)),
            CallError::Rejected(r) => CallError::Rejected(r),
        }
    }
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Rejected(r) => r.fmt(f),
            CallError::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Rejected(_) => None,
            CallError::Inner(e) => Some(e),
        }
    }
}

impl<E> From<Rejected> for CallError<E> {
    fn from(r: Rejected) -> CallError<E> {
        CallError::Rejected(r)
    }
}

/// A [`KeyedBreakers`](crate::KeyedBreakers) set holds its maximum number of keys and none of
/// them can be evicted: each is recently used, held (a permit, an `Arc`), open within its open
/// duration, or in a manual state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("keyed circuit breakers are full: {max_keys} keys, none idle enough to evict")]
pub struct KeysExhausted {
    /// The configured cap on keys.
    pub max_keys: usize,
}
