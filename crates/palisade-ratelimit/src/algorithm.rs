//! The algorithms a limiter can run, behind one sealed trait.

use std::fmt;

use palisade_core::sync::atomic::{AtomicU64, Ordering};

use crate::decision::Decision;
use crate::error::{ConfigError, InsufficientCapacity};

/// A rate-limiting algorithm: [`Quota`](crate::Quota) (GCRA, the default),
/// [`MultiGcra`](crate::MultiGcra) (several quotas checked as one) or
/// [`SlidingWindow`](crate::SlidingWindow) ("N per window").
///
/// Both [`RateLimiter`](crate::RateLimiter) and [`KeyedRateLimiter`](crate::KeyedRateLimiter)
/// run any of them. The trait is sealed: its methods are the crate's internals.
pub trait Algorithm: private::Core {}

pub(crate) mod private {
    use super::*;

    /// What a step does with the state.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Op {
        /// Take the cells if they fit now.
        Check,
        /// Say whether they would fit, change nothing.
        Peek,
        /// Take the cells now or (GCRA only) reserve the first moment they fit, if that is
        /// within `max_wait` ns: a place in line. The wait is in the decision's `retry_after`
        /// field. Algorithms that cannot promise future capacity take the cells only if they
        /// fit now, and otherwise refuse with the predicted wait.
        Reserve { max_wait: u64 },
    }

    /// The internals of [`Algorithm`]. Times are nanoseconds since the limiter's creation.
    pub trait Core: Clone + Send + Sync + fmt::Debug + 'static {
        /// One key's state in a keyed limiter.
        type State: Send + Sync + fmt::Debug;
        /// A direct limiter's state and configuration, changeable while checks run.
        type Direct: Send + Sync + fmt::Debug;

        fn validated(self) -> Result<Self, ConfigError>;
        fn capacity(&self) -> u32;
        /// A new key's state at `now`: full capacity, nothing counted.
        fn new_state(&self, now: u64) -> Self::State;
        /// The unused state of an empty slot of a keyed table: as cheap as a zero word (no
        /// allocation).
        fn empty_state() -> Self::State;
        fn step(
            &self,
            state: &Self::State,
            now: u64,
            n: u32,
            op: Op,
        ) -> Result<Decision, InsufficientCapacity>;
        fn refund(&self, state: &Self::State, now: u64, n: u32);
        /// Gives back a reservation of `n` cells that left the state at `end`.
        fn undo(&self, state: &Self::State, now: u64, n: u32, end: u64) {
            let _ = end;
            self.refund(state, now, n);
        }
        /// The first moment the state is back to full capacity: from then on, forgetting the
        /// key loses nothing.
        fn idle_at(&self, state: &Self::State, now: u64) -> u64;
        /// Re-express `state` (kept under `self`) under `to`, keeping what has been used.
        fn rebase(&self, state: &mut Self::State, to: &Self, now: u64);
        /// Whether a limiter running `self` may switch to `to` at runtime.
        fn can_become(&self, to: &Self) -> Result<(), ConfigError>;

        fn direct(self) -> Self::Direct;
        fn direct_config(direct: &Self::Direct) -> Self;
        fn direct_step(
            direct: &Self::Direct,
            now: u64,
            n: u32,
            op: Op,
        ) -> Result<Decision, InsufficientCapacity>;
        fn direct_refund(direct: &Self::Direct, now: u64, n: u32);
        fn direct_undo(direct: &Self::Direct, now: u64, n: u32, end: u64) {
            let _ = end;
            Self::direct_refund(direct, now, n);
        }
        fn direct_set(direct: &Self::Direct, to: Self, now: u64) -> Result<(), ConfigError>;
    }
}

/// Steps a one-word state until its compare-exchange lands or the step writes nothing.
///
/// `step` maps the word it is given to a decision and, if the state changes, the new word.
/// Loads are `Acquire`, so a step sees whatever was written before the word it is given. (GCRA
/// has its own copy of this loop, `gcra::run`, written out for speed.)
#[inline]
pub(crate) fn update_word<E>(
    state: &AtomicU64,
    mut step: impl FnMut(u64) -> Result<(Decision, Option<u64>), E>,
) -> Result<Decision, E> {
    let mut word = state.load(Ordering::Acquire);
    loop {
        match step(word)? {
            (decision, Some(new)) => {
                match state.compare_exchange_weak(word, new, Ordering::Relaxed, Ordering::Acquire) {
                    Ok(_) => return Ok(decision),
                    Err(actual) => word = actual,
                }
            }
            (decision, None) => return Ok(decision),
        }
    }
}
