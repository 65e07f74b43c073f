//! The sliding-window counter: "at most `limit` per `window`", as API quotas are written.
//!
//! Each window keeps a count; a request at offset `e` into the current window sees an
//! estimate of the last `window` of traffic, `prev·(W − e)/W + curr`, and is admitted when the
//! estimate plus its cells stays within the limit (Cloudflare's approximation: the previous
//! window's requests are assumed evenly spread). The state is one word: the window index
//! (24 bits, wrapping), the previous count and the current count (20 bits each).

use std::time::Duration;

use palisade_core::sync::atomic::{AtomicU64, Ordering};

use crate::algorithm::private::{Core, Op};
use crate::algorithm::{Algorithm, update_word};
use crate::decision::{Decision, Outcome};
use crate::error::{ConfigError, InsufficientCapacity};

const COUNT_BITS: u32 = 20;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const INDEX_BITS: u32 = 24;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

/// The shortest window: 1 ms, so the 24-bit window index wraps only after 4.6 hours.
const MIN_WINDOW: u64 = 1_000_000;

/// The largest `limit` a [`SlidingWindow`] accepts: 2²⁰ − 1.
pub const MAX_WINDOW_LIMIT: u32 = COUNT_MASK as u32;

/// At most `limit` cells per `window`, estimated over a window that slides (not one that
/// resets on the minute). Build with [`SlidingWindow::new`].
///
/// Runtime changes ([`RateLimiter::set_algorithm`](crate::RateLimiter::set_algorithm)) may
/// change the limit and keep the counts; a direct limiter keeps its window length, a keyed one
/// folds each key's estimate into the new window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindow {
    pub(crate) limit: u32,
    pub(crate) window: u64,
}

impl SlidingWindow {
    /// At most `limit` cells in any `window` (checked when a limiter is built: `limit` in
    /// `1..=`[`MAX_WINDOW_LIMIT`], `window` from 1 ms to 52 days).
    ///
    /// The state keeps the window index in 24 bits: a limiter (or key) left untouched for a
    /// whole multiple of 2²⁴ windows (4.6 hours of 1 ms windows, 194 days of 1 s windows), or
    /// for up to two windows or one second (whichever is longer) less, sees its old counts again
    /// until that multiple has passed and for up to two windows after. That only ever makes it
    /// stricter, never looser. (The second is the room a reading has to be late: one taken
    /// before another thread stored a later window is seen at that window, not as two windows
    /// old.)
    pub const fn new(limit: u32, window: Duration) -> SlidingWindow {
        let ns = window.as_nanos();
        let window = if ns > u64::MAX as u128 {
            u64::MAX
        } else {
            ns as u64
        };
        SlidingWindow { limit, window }
    }

    /// The most cells admitted per window.
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// The window length.
    pub const fn window(&self) -> Duration {
        Duration::from_nanos(self.window)
    }
}

/// How far a state's window may be ahead of a reading for the reading to count as late (read
/// before another thread stored a later window, or on a core whose counter trails) rather than as
/// a state left alone for nearly 2²⁴ windows: two windows, or as many as fit in a second.
const LATE_READING_NS: u64 = 1_000_000_000;

/// A word seen at a reading: the window it falls in, the offset into it, the counts with those
/// of windows that ended rolled, and the reading itself (moved up to the state's window if it was
/// late).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct View {
    index: u64,
    offset: u64,
    now: u64,
    prev: u64,
    curr: u64,
}

#[inline]
fn view(word: u64, window: u64, now: u64) -> View {
    let index = now / window;
    let offset = now - index * window;
    let stored = word >> (2 * COUNT_BITS);
    let prev = (word >> COUNT_BITS) & COUNT_MASK;
    let curr = word & COUNT_MASK;
    match index.wrapping_sub(stored) & INDEX_MASK {
        0 => View {
            index,
            offset,
            now,
            prev,
            curr,
        },
        1 => View {
            index,
            offset,
            now,
            prev: curr,
            curr: 0,
        },
        behind => {
            // The state's window is `ahead` windows after the reading's (mod 2²⁴).
            let ahead = INDEX_MASK + 1 - behind;
            if ahead <= 2 || ahead.saturating_mul(window) <= LATE_READING_NS {
                view_late(window, index + ahead, prev, curr)
            } else {
                // Two or more windows old: forgotten.
                View {
                    index,
                    offset,
                    now,
                    prev: 0,
                    curr: 0,
                }
            }
        }
    }
}

/// [`view`] of a late reading: the state's window (`index`) began after the reading was
/// taken, and the reading is seen at that window's start with its counts. Seen as it stands,
/// the counts would look two windows old: a step would admit against none and write the old
/// window back over the newer counts.
#[cold]
#[inline(never)]
fn view_late(window: u64, index: u64, prev: u64, curr: u64) -> View {
    View {
        index,
        offset: 0,
        now: index * window,
        prev,
        curr,
    }
}

fn pack(index: u64, prev: u64, curr: u64) -> u64 {
    ((index & INDEX_MASK) << (2 * COUNT_BITS)) | (prev << COUNT_BITS) | curr
}

/// One step on `word` with `limit`: the decision and the new word if it changes.
#[inline]
fn step(limit: u64, window: u64, word: u64, now: u64, n: u32, op: Op) -> (Decision, Option<u64>) {
    let View {
        index,
        offset,
        now,
        prev,
        curr,
    } = view(word, window, now);
    let n = u64::from(n);
    let w = u128::from(window);
    // Everything in "cells × window" units, so the estimate needs no rounding.
    let used = u128::from(prev) * u128::from(window - offset) + u128::from(curr) * w;
    let cap = u128::from(limit) * w;
    let fits = used + u128::from(n) * w <= cap;
    let reset = |curr: u64| {
        if curr > 0 {
            (index + 2) * window - now
        } else if prev > 0 {
            (index + 1) * window - now
        } else {
            0
        }
    };
    if fits && op != Op::Peek {
        let curr = curr + n;
        let slack = ((cap - used - u128::from(n) * w) / w) as u64;
        let decision = Decision {
            outcome: Outcome::Allowed,
            slack,
            per_cell: 1,
            capacity: limit,
            reset_after: reset(curr),
            retry_after: 0,
        };
        return (decision, Some(pack(index, prev, curr)));
    }
    let slack = (cap.saturating_sub(used) / w) as u64;
    if fits {
        let decision = Decision {
            outcome: Outcome::Allowed,
            slack: slack - n,
            per_cell: 1,
            capacity: limit,
            reset_after: reset(curr + n),
            retry_after: 0,
        };
        return (decision, None);
    }
    // When would it fit? Within this window once enough of `prev` has slid out, or else in the
    // next one, where `curr` becomes the previous count.
    let wait = if curr + n <= limit {
        let room = u128::from(limit - curr - n) * w;
        // prev · (W − e') ≤ room  ⇔  e' ≥ W − ⌊room / prev⌋   (prev > 0, or it would fit)
        let slide = (room / u128::from(prev)).min(w) as u64;
        (window - slide).saturating_sub(offset)
    } else {
        let room = u128::from(limit.saturating_sub(n)) * w;
        let slide = (room / u128::from(curr.max(1))).min(w) as u64;
        (window - offset) + (window - slide)
    };
    let decision = Decision {
        outcome: Outcome::Limited,
        slack,
        per_cell: 1,
        capacity: limit,
        reset_after: reset(curr),
        retry_after: wait,
    };
    (decision, None)
}

/// Gives back up to `n` cells of the current window's count. Cells counted in an earlier
/// window are not given back: a refund doesn't say which window its cells were taken in, and
/// taking them off the wrong count would let one window admit more than the limit.
fn refund(window: u64, word: u64, now: u64, n: u32) -> Option<u64> {
    let seen = view(word, window, now);
    if seen.now != now {
        // A late reading, moved up to a newer window: the cells were taken at or before the
        // reading, never in that window, so its count is not theirs to give back.
        return None;
    }
    let View {
        index, prev, curr, ..
    } = seen;
    let back = u64::from(n).min(curr);
    (back > 0).then(|| pack(index, prev, curr - back))
}

/// Whether cells whose take left the window forgotten at `end` (two windows after the one they
/// were counted in) were counted in the current window: only those can be given back exactly.
fn taken_this_window(window: u64, now: u64, end: u64) -> bool {
    (end / window).checked_sub(2) == Some(now / window)
}

fn idle_at(window: u64, word: u64, now: u64) -> u64 {
    let View {
        index, prev, curr, ..
    } = view(word, window, now);
    if curr > 0 {
        (index + 2) * window
    } else if prev > 0 {
        (index + 1) * window
    } else {
        0
    }
}

impl SlidingWindow {
    fn check_count(&self, n: u32) -> Result<(), InsufficientCapacity> {
        if n > self.limit {
            return Err(InsufficientCapacity {
                requested: n,
                capacity: self.limit,
            });
        }
        Ok(())
    }
}

fn run(state: &AtomicU64, limit: u64, window: u64, now: u64, n: u32, op: Op) -> Decision {
    let updated: Result<Decision, std::convert::Infallible> =
        update_word(state, |word| Ok(step(limit, window, word, now, n, op)));
    match updated {
        Ok(decision) => decision,
    }
}

impl Algorithm for SlidingWindow {}

impl Core for SlidingWindow {
    type State = AtomicU64;
    type Direct = SlidingDirect;

    fn validated(self) -> Result<SlidingWindow, ConfigError> {
        if self.limit == 0 || self.limit > MAX_WINDOW_LIMIT {
            return Err(ConfigError::out_of_range(
                "limit",
                format!("in 1..={MAX_WINDOW_LIMIT}"),
                self.limit,
            ));
        }
        if !(MIN_WINDOW..=crate::gcra::MAX_TAU).contains(&self.window) {
            return Err(ConfigError::out_of_range(
                "window",
                format!("from 1ms to {:?}", crate::quota::MAX_REPLENISH),
                self.window(),
            ));
        }
        Ok(self)
    }

    fn capacity(&self) -> u32 {
        self.limit
    }

    /// Nothing counted, in `now`'s window. (The empty word names window 0, which the 24-bit
    /// index puts up to a second ahead of a reading just before a multiple of 2²⁴ windows: a
    /// new key then looked like one whose state a later reading had stored, and every cell it
    /// took until that window ended counted in that one window.)
    fn new_state(&self, now: u64) -> AtomicU64 {
        AtomicU64::new(pack(now / self.window, 0, 0))
    }

    fn empty_state() -> AtomicU64 {
        AtomicU64::new(0)
    }

    #[inline]
    fn step(
        &self,
        state: &AtomicU64,
        now: u64,
        n: u32,
        op: Op,
    ) -> Result<Decision, InsufficientCapacity> {
        self.check_count(n)?;
        Ok(run(state, u64::from(self.limit), self.window, now, n, op))
    }

    fn refund(&self, state: &AtomicU64, now: u64, n: u32) {
        let _ = state.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
            refund(self.window, w, now, n)
        });
    }

    fn undo(&self, state: &AtomicU64, now: u64, n: u32, end: u64) {
        if taken_this_window(self.window, now, end) {
            self.refund(state, now, n);
        }
    }

    fn idle_at(&self, state: &AtomicU64, now: u64) -> u64 {
        idle_at(self.window, state.load(Ordering::Relaxed), now)
    }

    fn can_become(&self, _to: &SlidingWindow) -> Result<(), ConfigError> {
        Ok(())
    }

    fn rebase(&self, state: &mut AtomicU64, to: &SlidingWindow, now: u64) {
        if to.window == self.window {
            return;
        }
        let word = state.load(Ordering::Relaxed);
        let View {
            offset,
            now,
            prev,
            curr,
            ..
        } = view(word, self.window, now);
        let used = u128::from(prev) * u128::from(self.window - offset)
            + u128::from(curr) * u128::from(self.window);
        let carried = used
            .div_ceil(u128::from(self.window))
            .min(u128::from(COUNT_MASK)) as u64;
        state.store(pack(now / to.window, 0, carried), Ordering::Relaxed);
    }

    fn direct(self) -> SlidingDirect {
        SlidingDirect {
            word: AtomicU64::new(0),
            limit: AtomicU64::new(u64::from(self.limit)),
            window: self.window,
        }
    }

    fn direct_config(direct: &SlidingDirect) -> SlidingWindow {
        SlidingWindow {
            limit: direct.limit.load(Ordering::Relaxed) as u32,
            window: direct.window,
        }
    }

    #[inline]
    fn direct_step(
        direct: &SlidingDirect,
        now: u64,
        n: u32,
        op: Op,
    ) -> Result<Decision, InsufficientCapacity> {
        let limit = direct.limit.load(Ordering::Relaxed);
        if u64::from(n) > limit {
            return Err(InsufficientCapacity {
                requested: n,
                capacity: limit as u32,
            });
        }
        Ok(run(&direct.word, limit, direct.window, now, n, op))
    }

    fn direct_refund(direct: &SlidingDirect, now: u64, n: u32) {
        let window = direct.window;
        let _ = direct
            .word
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                refund(window, w, now, n)
            });
    }

    fn direct_undo(direct: &SlidingDirect, now: u64, n: u32, end: u64) {
        if taken_this_window(direct.window, now, end) {
            Self::direct_refund(direct, now, n);
        }
    }

    fn direct_set(direct: &SlidingDirect, to: SlidingWindow, _now: u64) -> Result<(), ConfigError> {
        if to.window != direct.window {
            return Err(ConfigError::out_of_range(
                "window",
                format!(
                    "the window the limiter was built with ({:?}): only the limit changes at runtime",
                    Duration::from_nanos(direct.window)
                ),
                to.window(),
            ));
        }
        direct.limit.store(u64::from(to.limit), Ordering::Relaxed);
        Ok(())
    }
}

/// A direct sliding-window limiter's state: the packed counts and the limit, which can change
/// while checks run (each check reads one limit; the counts do not depend on it).
#[derive(Debug)]
pub struct SlidingDirect {
    word: AtomicU64,
    limit: AtomicU64,
    window: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 1_000;

    fn check(word: &mut u64, limit: u64, now: u64, n: u32) -> Decision {
        let (d, new) = step(limit, W, *word, now, n, Op::Check);
        if let Some(new) = new {
            *word = new;
        }
        d
    }

    #[test]
    fn the_previous_window_slides_out_and_retry_after_is_exact() {
        let mut word = 0;
        for _ in 0..10 {
            assert!(check(&mut word, 10, 500, 1).is_allowed());
        }
        let d = check(&mut word, 10, 999, 1);
        assert!(!d.is_allowed());
        // Next window, offset e: estimate = 10·(1000 − e)/1000; one more fits once it is ≤ 9,
        // i.e. at e = 100 → 1100 − 999 = 101 ns from now.
        assert_eq!(d.retry_after(), Some(Duration::from_nanos(101)));
        assert!(!check(&mut word, 10, 1_099, 1).is_allowed());
        assert!(check(&mut word, 10, 1_100, 1).is_allowed());
        // Two windows later everything has slid out.
        let d = check(&mut word, 10, 3_000, 10);
        assert!(d.is_allowed());
        assert_eq!(d.remaining(), 0);
    }

    #[test]
    fn a_reading_late_by_two_windows_or_a_second_is_seen_at_the_states_window() {
        // (window, how many windows behind the state a reading may be and count as late)
        for (window, late) in [(1_000_000_000, 2), (1_000_000, 1_000)] {
            // Three cells counted in a window past a wrap of the 24-bit index.
            let base = 5 * (1 << 24) + 100;
            let word = pack(base, 0, 3);
            for behind in [1, late, late + 1] {
                let now = (base - behind) * window + window / 2;
                let seen = view(word, window, now);
                if behind <= late {
                    let at_start = View {
                        index: base,
                        offset: 0,
                        now: base * window,
                        prev: 0,
                        curr: 3,
                    };
                    assert_eq!(seen, at_start, "{behind} windows of {window} ns behind");
                } else {
                    // Further behind is a state left alone for nearly 2^24 windows: forgotten.
                    let (index, prev, curr) = (base - behind, 0, 0);
                    assert_eq!((seen.index, seen.prev, seen.curr), (index, prev, curr));
                }
            }
        }
    }

    #[test]
    fn retry_within_the_window_is_exact() {
        let mut word = 0;
        for _ in 0..4 {
            assert!(check(&mut word, 4, 0, 1).is_allowed());
        }
        // Window 1 at offset 0: estimate 4; need prev·(W − e) ≤ (4 − 0 − 2)·W → e ≥ 500.
        let d = check(&mut word, 4, 1_000, 2);
        assert_eq!(d.retry_after(), Some(Duration::from_nanos(500)));
        assert!(!check(&mut word, 4, 1_499, 2).is_allowed());
        assert!(check(&mut word, 4, 1_500, 2).is_allowed());
    }
}
