//! GCRA, the generic cell rate algorithm: one theoretical arrival time (TAT) per limiter or key.
//!
//! A request for `n` cells at `now` fits when `max(tat, now) + n·T − now ≤ τ`, where `T` is the
//! interval and `τ = burst·T`; taking them moves `tat` to `max(tat, now) + n·T`. That is a token
//! bucket of `burst` tokens refilled one per `T`, kept in one number: `tat − now` is how much of
//! the bucket is used, in time.

use std::cmp;

use palisade_core::sync::Mutex;
use palisade_core::sync::atomic::{AtomicU64, Ordering};

use crate::algorithm::Algorithm;
use crate::algorithm::private::{Core, Op};
use crate::decision::{Decision, Outcome};
use crate::error::{ConfigError, InsufficientCapacity};
use crate::quota::Quota;

/// Largest `τ` (`burst × interval`) in ns: 2⁵², about 52 days.
pub(crate) const MAX_TAU: u64 = 1 << 52;
/// Bits of the state word that hold the TAT (ns since the limiter's creation); the four above
/// them hold a direct limiter's quota generation.
const TAT_BITS: u32 = 60;
const TAT_MASK: u64 = (1 << TAT_BITS) - 1;
/// Quota generations a direct limiter cycles through (see [`GcraDirect`]).
const GENERATIONS: usize = 16;
/// Limiter time stops here (2⁵⁹ ns, 18 years after creation), so a TAT after any check still
/// fits its 60 bits. Reservations are refused beyond the 60 bits.
pub(crate) const MAX_NOW: u64 = 1 << 59;

/// `T` and `τ` in ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Params {
    pub(crate) interval: u64,
    pub(crate) tau: u64,
}

impl Params {
    pub(crate) fn of(q: &Quota) -> Params {
        Params {
            interval: q.interval_ns,
            tau: q.interval_ns * u64::from(q.burst),
        }
    }

    pub(crate) fn burst(self) -> u32 {
        (self.tau / self.interval) as u32
    }

    /// `n·T`, or the error when `n` cells could never fit.
    #[inline]
    pub(crate) fn cost(self, n: u32) -> Result<u64, InsufficientCapacity> {
        let cost = u64::from(n).wrapping_mul(self.interval);
        // n ≤ u32::MAX and interval ≤ 2^52, so the product fits in u128; test in u64 only
        // when it cannot have wrapped (n·T ≤ τ ≤ 2^52 is all that passes anyway).
        if u128::from(n) * u128::from(self.interval) > u128::from(self.tau) {
            return Err(InsufficientCapacity {
                requested: n,
                capacity: self.burst(),
            });
        }
        Ok(cost)
    }
}

/// One GCRA step: the decision and the TAT the state moves to if the step takes the cells
/// (see [`takes`]).
#[inline]
pub(crate) fn step(p: Params, tat: u64, now: u64, cost: u64, op: Op) -> (Decision, u64) {
    let start = cmp::max(tat, now);
    let new_tat = start + cost;
    let ahead = new_tat - now;
    let allowed = |slack: u64, wait: u64| Decision {
        outcome: Outcome::Allowed,
        slack,
        per_cell: p.interval,
        capacity: p.tau,
        reset_after: ahead,
        retry_after: wait,
    };
    let limited = |wait: u64| Decision {
        outcome: Outcome::Limited,
        slack: p.tau.saturating_sub(start - now),
        per_cell: p.interval,
        capacity: p.tau,
        reset_after: start - now,
        retry_after: wait,
    };
    let decision = match op {
        Op::Check | Op::Peek if ahead <= p.tau => allowed(p.tau - ahead, 0),
        Op::Check | Op::Peek => limited(ahead - p.tau),
        Op::Reserve { max_wait } => {
            let wait = ahead.saturating_sub(p.tau);
            if wait <= max_wait && new_tat <= TAT_MASK {
                allowed(p.tau.saturating_sub(ahead), wait)
            } else {
                limited(wait)
            }
        }
    };
    (decision, new_tat)
}

/// Whether a step that decided `decision` takes the cells: every allowed check or reservation
/// does, a peek never.
#[inline]
pub(crate) fn takes(decision: &Decision, op: Op) -> bool {
    decision.is_allowed() && op != Op::Peek
}

/// Steps the TAT in the low [`TAT_BITS`] of `state` (the bits above are kept) until the
/// compare-exchange lands or the step takes nothing. `params` names the quota a word is kept
/// under.
///
/// Written out rather than through [`update_word`](crate::algorithm::update_word)'s closure:
/// the compiler then keeps the new word in a register on the way to the compare-exchange.
#[inline(always)]
fn run(
    state: &AtomicU64,
    now: u64,
    n: u32,
    op: Op,
    params: impl Fn(u64) -> Params,
) -> Result<Decision, InsufficientCapacity> {
    // Acquire: a direct limiter's step reads the quota slot its word names.
    let mut word = state.load(Ordering::Acquire);
    loop {
        let p = params(word);
        let (decision, tat) = step(p, word & TAT_MASK, now, p.cost(n)?, op);
        if !takes(&decision, op) {
            return Ok(decision);
        }
        let new = (word & !TAT_MASK) | tat;
        match state.compare_exchange_weak(word, new, Ordering::Relaxed, Ordering::Acquire) {
            Ok(_) => return Ok(decision),
            Err(actual) => word = actual,
        }
    }
}

/// The TAT after `cost` ns of capacity come back, or `None` if nothing changes.
///
/// Nothing comes back while a waiter's reservation is pending: only a reservation puts the TAT
/// more than `τ` ahead of now (or a quota change that left a debt), and capacity given back then
/// would be handed out again at the very moment the waiter uses its cells.
#[inline]
pub(crate) fn refund(p: Params, tat: u64, now: u64, cost: u64) -> Option<u64> {
    (tat > now && tat - now <= p.tau).then(|| cmp::max(tat - cost.min(tat), now))
}

/// The TAT after a reservation that moved it to `end` is given back: exactly, if nothing was
/// taken after it; otherwise as a [`refund`], since later reservations were placed behind it.
#[inline]
pub(crate) fn undo(p: Params, tat: u64, now: u64, cost: u64, end: u64) -> Option<u64> {
    if tat == end && tat > now {
        Some(cmp::max(end - cost.min(end), now))
    } else {
        refund(p, tat, now, cost)
    }
}

/// `tat` (kept under `from`) re-expressed under `to`: the used part of the bucket,
/// `(tat − now) / T` cells, stays used. Rounds up, so a change never hands out capacity.
pub(crate) fn rebase(tat: u64, from: Params, to: Params, now: u64) -> u64 {
    if tat <= now {
        return tat;
    }
    let used = u128::from(tat - now) * u128::from(to.interval);
    let ahead = used.div_ceil(u128::from(from.interval));
    let ahead = u64::try_from(ahead).unwrap_or(u64::MAX);
    cmp::min(now.saturating_add(ahead), TAT_MASK)
}

/// A [`Quota`] runs as GCRA.
impl Algorithm for Quota {}

impl Core for Quota {
    type State = AtomicU64;
    type Direct = GcraDirect;

    fn validated(self) -> Result<Quota, ConfigError> {
        self.validate()
    }

    fn capacity(&self) -> u32 {
        self.burst
    }

    fn new_state(&self, _now: u64) -> AtomicU64 {
        AtomicU64::new(0)
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
        let p = Params::of(self);
        run(state, now, n, op, |_| p)
    }

    fn refund(&self, state: &AtomicU64, now: u64, n: u32) {
        let p = Params::of(self);
        let cost = u64::from(n).saturating_mul(p.interval);
        let _ = state.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
            refund(p, tat, now, cost)
        });
    }

    fn undo(&self, state: &AtomicU64, now: u64, n: u32, end: u64) {
        let p = Params::of(self);
        let cost = u64::from(n).saturating_mul(p.interval);
        let _ = state.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
            undo(p, tat, now, cost, end)
        });
    }

    fn idle_at(&self, state: &AtomicU64, _now: u64) -> u64 {
        state.load(Ordering::Relaxed)
    }

    fn can_become(&self, _to: &Quota) -> Result<(), ConfigError> {
        Ok(())
    }

    fn rebase(&self, state: &mut AtomicU64, to: &Quota, now: u64) {
        let tat = state.load(Ordering::Relaxed);
        state.store(
            rebase(tat, Params::of(self), Params::of(to), now),
            Ordering::Relaxed,
        );
    }

    fn direct(self) -> GcraDirect {
        GcraDirect::new(self)
    }

    fn direct_config(direct: &GcraDirect) -> Quota {
        direct.quota()
    }

    #[inline]
    fn direct_step(
        direct: &GcraDirect,
        now: u64,
        n: u32,
        op: Op,
    ) -> Result<Decision, InsufficientCapacity> {
        direct.step(now, n, op)
    }

    fn direct_refund(direct: &GcraDirect, now: u64, n: u32) {
        direct.give_back(now, n, None);
    }

    fn direct_undo(direct: &GcraDirect, now: u64, n: u32, end: u64) {
        direct.give_back(now, n, Some(end));
    }

    fn direct_set(direct: &GcraDirect, to: Quota, now: u64) -> Result<(), ConfigError> {
        direct.set(to, now);
        Ok(())
    }
}

/// A direct GCRA limiter's state: one word holding the TAT (low 60 bits) and the generation of
/// the quota it is kept under (high 4 bits), and the quotas of the last 16 generations.
///
/// A check loads the word, reads its generation's quota, and compare-exchanges the word. A quota
/// change writes the next generation's slot, then compare-exchanges the word to that generation
/// with the TAT re-expressed under the new quota. A check therefore always computes with the
/// quota its TAT is kept under: its compare-exchange fails if the word changed generation after
/// it was loaded. (A slot is rewritten only 16 changes later, so a check would have to be
/// stalled across 16 quota changes, and find the same TAT after them, to mix two quotas.)
///
/// The newest quota is also kept in `interval` and `tau`, each tagged with its generation in the
/// same high 4 bits as the word. A check loads them after the word (so they are at least as new
/// as the change that gave the word its generation, which wrote them first), again on every
/// retry, and uses them when both tags match the word's generation; the slot is read only when
/// they don't (while a change is under way). Their addresses don't depend on the word, so the
/// CPU loads them alongside it; reading the slot the word names would put a load that waits for
/// the word before every compare-exchange. The same 16-change caveat holds: a check stalled
/// across 16 changes could read the pair of a later generation with the same tag, and its
/// compare-exchange then lands only if it finds the same word.
#[derive(Debug)]
pub struct GcraDirect {
    word: AtomicU64,
    /// The newest generation's `T`, tagged with that generation.
    interval: AtomicU64,
    /// The newest generation's `τ`, tagged with that generation.
    tau: AtomicU64,
    slots: [Slot; GENERATIONS],
    /// Serialises quota changes (checks never take it).
    writer: Mutex<()>,
}

#[derive(Debug)]
struct Slot {
    interval: AtomicU64,
    tau: AtomicU64,
}

impl GcraDirect {
    fn new(quota: Quota) -> GcraDirect {
        let slots = std::array::from_fn(|_| Slot {
            interval: AtomicU64::new(quota.interval_ns),
            tau: AtomicU64::new(0),
        });
        let p = Params::of(&quota);
        let direct = GcraDirect {
            word: AtomicU64::new(0),
            interval: AtomicU64::new(p.interval),
            tau: AtomicU64::new(p.tau),
            slots,
            writer: Mutex::new(()),
        };
        direct.slots[0].tau.store(p.tau, Ordering::Relaxed);
        direct
    }

    /// The quota `word` is kept under: the newest quota's tagged `T` and `τ` when both tags name
    /// the word's generation, else the generation's slot. `word` must have been loaded with
    /// `Acquire` before this call.
    #[inline]
    fn params_tagged(&self, word: u64) -> Params {
        let interval = self.interval.load(Ordering::Relaxed);
        let tau = self.tau.load(Ordering::Relaxed);
        if ((word ^ interval) | (word ^ tau)) >> TAT_BITS == 0 {
            Params {
                interval: interval & TAT_MASK,
                tau: tau & TAT_MASK,
            }
        } else {
            self.params(word)
        }
    }

    #[inline]
    fn params(&self, word: u64) -> Params {
        let slot = &self.slots[(word >> TAT_BITS) as usize];
        Params {
            interval: slot.interval.load(Ordering::Relaxed),
            tau: slot.tau.load(Ordering::Relaxed),
        }
    }

    fn quota(&self) -> Quota {
        let p = self.params(self.word.load(Ordering::Acquire));
        Quota::with_interval(std::time::Duration::from_nanos(p.interval)).burst(p.burst())
    }

    #[inline]
    fn step(&self, now: u64, n: u32, op: Op) -> Result<Decision, InsufficientCapacity> {
        // The pair and the slot of the generation a word names were written before the word
        // named it, and `run` loads the word with `Acquire`.
        run(&self.word, now, n, op, |word| self.params_tagged(word))
    }

    /// A refund, or with `end` the undoing of a reservation that ended there.
    fn give_back(&self, now: u64, n: u32, end: Option<u64>) {
        let _ = self
            .word
            .fetch_update(Ordering::Relaxed, Ordering::Acquire, |word| {
                let p = self.params(word);
                let cost = u64::from(n).saturating_mul(p.interval);
                let tat = word & TAT_MASK;
                match end {
                    Some(end) => undo(p, tat, now, cost, end),
                    None => refund(p, tat, now, cost),
                }
                .map(|tat| (word & !TAT_MASK) | tat)
            });
    }

    fn set(&self, quota: Quota, now: u64) {
        let _writer = self.writer.lock();
        let word = self.word.load(Ordering::Acquire);
        let generation = (word >> TAT_BITS) as usize;
        let next = (generation + 1) % GENERATIONS;
        let to = Params::of(&quota);
        self.slots[next]
            .interval
            .store(to.interval, Ordering::Relaxed);
        self.slots[next].tau.store(to.tau, Ordering::Relaxed);
        let tag = (next as u64) << TAT_BITS;
        self.interval.store(tag | to.interval, Ordering::Relaxed);
        self.tau.store(tag | to.tau, Ordering::Relaxed);
        let from = self.params(word);
        // Release: a check that loads the new generation sees its slot.
        let _ = self
            .word
            .fetch_update(Ordering::Release, Ordering::Relaxed, |word| {
                let tat = rebase(word & TAT_MASK, from, to, now);
                Some(((next as u64) << TAT_BITS) | tat)
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest quota there is: one cell per 2⁵² ns, burst 1.
    const LONGEST: Params = Params {
        interval: MAX_TAU,
        tau: MAX_TAU,
    };

    #[test]
    fn a_reservation_that_would_leave_the_tats_60_bits_is_refused_and_takes_nothing() {
        let reserve = Op::Reserve { max_wait: u64::MAX };
        // The last reservation that still fits the 60 bits is taken...
        let tat = TAT_MASK - MAX_TAU;
        let (decision, new_tat) = step(LONGEST, tat, 0, MAX_TAU, reserve);
        assert!(takes(&decision, reserve));
        assert_eq!(new_tat, TAT_MASK);
        // ...and the next one is refused, so the bits above (a direct limiter's generation)
        // are never written into.
        let (decision, _) = step(LONGEST, TAT_MASK, 0, MAX_TAU, reserve);
        assert!(!decision.is_allowed());
        assert!(!takes(&decision, reserve));
    }

    #[test]
    fn a_refused_reservation_on_a_direct_limiter_keeps_its_generation() {
        let direct = GcraDirect::new(
            Quota::with_interval(std::time::Duration::from_nanos(MAX_TAU)).burst(1),
        );
        // One quota change, so the word's generation bits are not all zero.
        direct.set(
            Quota::with_interval(std::time::Duration::from_nanos(MAX_TAU)).burst(1),
            0,
        );
        let generation = direct.word.load(Ordering::Relaxed) >> TAT_BITS;
        assert_eq!(generation, 1);
        let reserve = Op::Reserve { max_wait: u64::MAX };
        let mut taken = 0u64;
        while direct.step(0, 1, reserve).unwrap().is_allowed() {
            taken += 1;
            assert!(taken <= 1 << (TAT_BITS - 52), "reservations never stopped");
        }
        // The 60 bits hold at most 2⁶⁰ − 1 ns, 255 steps of 2⁵².
        assert_eq!(taken, (1 << (TAT_BITS - 52)) - 1);
        assert_eq!(direct.word.load(Ordering::Relaxed) >> TAT_BITS, generation);
    }
}
