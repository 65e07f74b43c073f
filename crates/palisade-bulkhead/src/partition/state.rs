//! The state every admission decision of a partitioned bulkhead reads: the total and each
//! partition's count and queue, kept together because one decision depends on all of them.
//! Pure bookkeeping, no atomics and no clock: the caller holds the lock.

use std::task::Waker;

use crate::queue::{Queue, Status, Ticket};

/// All partitions' counts and queues (behind the bulkhead's one mutex).
#[derive(Debug)]
pub(super) struct State {
    /// The total limit in force.
    pub(super) total: u32,
    /// Permits out, over all partitions (can exceed `total` after it was lowered).
    pub(super) in_flight: u32,
    /// Waiters, over all partitions.
    pub(super) queued: usize,
    /// How many partitions are *starving*: below their minimum with someone queued.
    starving: usize,
    pub(super) parts: Box<[Part]>,
}

/// One partition's share of the [`State`].
#[derive(Debug)]
pub(super) struct Part {
    pub(super) min: u32,
    pub(super) max: u32,
    pub(super) in_flight: u32,
    pub(super) queue: Queue,
    /// The last time the queue was empty (CoDel), on the bulkhead's clock.
    pub(super) last_empty: u64,
    /// Below its minimum with someone queued (counted in [`State::starving`]).
    starving: bool,
}

impl State {
    /// `limits`: each partition's `(min, max)`, in declaration order.
    pub(super) fn new(total: u32, limits: impl IntoIterator<Item = (u32, u32)>, now: u64) -> State {
        State {
            total,
            in_flight: 0,
            queued: 0,
            starving: 0,
            parts: limits
                .into_iter()
                .map(|(min, max)| Part {
                    min,
                    max,
                    in_flight: 0,
                    queue: Queue::default(),
                    last_empty: now,
                    starving: false,
                })
                .collect(),
        }
    }

    /// Whether a caller of partition `p` arriving now gets a permit at once: the total has
    /// room, `p` is under its cap, nobody of `p` is queued (no barging past its own waiters),
    /// and `p` is under its minimum or no partition under its minimum is waiting.
    #[inline]
    pub(super) fn admits(&self, p: usize) -> bool {
        let part = &self.parts[p];
        self.in_flight < self.total
            && part.in_flight < part.max
            && part.queue.is_empty()
            && (part.in_flight < part.min || self.starving == 0)
    }

    /// The most `p` may hold now: its cap, or the total if that is lower.
    pub(super) fn cap(&self, p: usize) -> u32 {
        self.parts[p].max.min(self.total)
    }

    /// A caller of `p` takes a permit (after [`admits`](State::admits) said yes).
    pub(super) fn take(&mut self, p: usize) {
        self.in_flight += 1;
        self.parts[p].in_flight += 1;
        self.refresh(p);
    }

    /// A permit of `p` comes back (the caller dispatches next).
    pub(super) fn put_back(&mut self, p: usize) {
        debug_assert!(self.parts[p].in_flight > 0, "a permit came back twice");
        self.in_flight -= 1;
        self.parts[p].in_flight -= 1;
        self.refresh(p);
    }

    /// A caller of `p` joins its queue at the newest end.
    pub(super) fn push(&mut self, p: usize, waker: Option<Waker>) -> Ticket {
        let ticket = self.parts[p].queue.push(waker);
        self.queued += 1;
        self.refresh(p);
        ticket
    }

    /// A waiter of `p` leaves, returning its last status (`Granted`: it holds a permit, already
    /// counted in flight; `None`: it had left already).
    pub(super) fn remove(&mut self, p: usize, ticket: Ticket) -> Option<Status> {
        let status = self.parts[p].queue.remove(ticket);
        if matches!(status, Some(Status::Waiting(_))) {
            self.queued -= 1;
            self.refresh(p);
        }
        status
    }

    /// Hands a permit to the next waiter of `p` (the newest if `newest`, else the oldest) and
    /// returns its waker, to be woken once the lock is released. `p` must have a waiter.
    pub(super) fn grant(&mut self, p: usize, newest: bool) -> Option<Waker> {
        let waker = self.parts[p]
            .queue
            .grant_end_deferred(newest)
            .expect("a partition picked for a grant has a waiter");
        self.queued -= 1;
        self.in_flight += 1;
        self.parts[p].in_flight += 1;
        self.refresh(p);
        waker
    }

    /// The partition whose waiter gets the next permit, if the total has room and some waiter
    /// may take one: first the partitions below their minimum (lowest `in_flight / min` first),
    /// then those below their cap (lowest `in_flight / max(min, 1)` first); ties go to the
    /// partition declared first.
    pub(super) fn next(&self) -> Option<usize> {
        if self.in_flight >= self.total || self.queued == 0 {
            return None;
        }
        // (index, below its minimum, in flight, the ratio's denominator)
        let mut best: Option<(usize, bool, u32, u32)> = None;
        for (i, part) in self.parts.iter().enumerate() {
            if part.queue.is_empty() || part.in_flight >= part.max {
                continue;
            }
            let below = part.in_flight < part.min;
            // Below its minimum, `min >= 1`; so this is the ratio's denominator in both tiers.
            let denom = part.min.max(1);
            let better = match best {
                None => true,
                Some((_, best_below, best_in, best_denom)) if below == best_below => {
                    // in / denom < best_in / best_denom, without division.
                    u64::from(part.in_flight) * u64::from(best_denom)
                        < u64::from(best_in) * u64::from(denom)
                }
                Some((_, best_below, ..)) => below && !best_below,
            };
            if better {
                best = Some((i, below, part.in_flight, denom));
            }
        }
        best.map(|(i, ..)| i)
    }

    /// Whether every permit that can be handed out has been: no waiter may take one while the
    /// total has room, and a partition below its minimum only waits while the total is full.
    /// Holds whenever the lock is released (checked in debug builds).
    pub(super) fn settled(&self) -> bool {
        let queued: usize = self.parts.iter().map(|p| p.queue.len()).sum();
        let in_flight: u64 = self.parts.iter().map(|p| u64::from(p.in_flight)).sum();
        let starving = self.parts.iter().filter(|p| p.starving).count();
        self.next().is_none()
            && queued == self.queued
            && in_flight == u64::from(self.in_flight)
            && starving == self.starving
            && (self.starving == 0 || self.in_flight >= self.total)
    }

    /// Recomputes whether `p` is starving after its count or queue changed.
    #[inline]
    fn refresh(&mut self, p: usize) {
        let part = &mut self.parts[p];
        let starving = part.in_flight < part.min && !part.queue.is_empty();
        if starving != part.starving {
            part.starving = starving;
            if starving {
                self.starving += 1;
            } else {
                self.starving -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes permits for `p` while it is admitted, up to `n`.
    fn fill(s: &mut State, p: usize, n: u32) {
        for _ in 0..n {
            assert!(s.admits(p), "partition {p} refused");
            s.take(p);
        }
    }

    #[test]
    fn admission_needs_room_in_the_total_and_under_the_cap() {
        let mut s = State::new(4, [(1, 4), (1, 2)], 0);
        fill(&mut s, 1, 2);
        assert!(!s.admits(1), "at its cap");
        fill(&mut s, 0, 2);
        assert!(!s.admits(0), "the total is full");
        assert_eq!((s.cap(0), s.cap(1)), (4, 2));
        s.total = 1;
        assert_eq!(s.cap(0), 1);
        assert!(s.settled());
    }

    #[test]
    fn a_partition_below_its_minimum_comes_first() {
        // a: min 1, b: min 2, total 3; a borrows everything.
        let mut s = State::new(3, [(1, 3), (2, 3)], 0);
        fill(&mut s, 0, 3);
        let a = s.push(0, None);
        let b = s.push(1, None);
        assert_eq!(s.starving, 1);
        assert!(!s.admits(0), "a has waiters and b starves");
        assert!(s.settled());
        // The release goes to b, below its minimum, not to a's older waiter.
        s.put_back(0);
        assert_eq!(s.next(), Some(1));
        assert!(s.grant(1, false).is_none());
        assert!(matches!(s.remove(1, b), Some(Status::Granted)));
        assert_eq!(s.starving, 0);
        assert!(s.settled());
        // Next: b is at 1 of 2, still below; a's waiter waits for the one after.
        let b2 = s.push(1, None);
        s.put_back(0);
        assert_eq!(s.next(), Some(1));
        s.grant(1, false);
        assert!(matches!(s.remove(1, b2), Some(Status::Granted)));
        s.put_back(0);
        assert_eq!(s.next(), Some(0));
        s.grant(0, false);
        assert!(matches!(s.remove(0, a), Some(Status::Granted)));
        assert_eq!((s.in_flight, s.queued), (3, 0));
        assert!(s.settled());
    }

    #[test]
    fn ties_go_by_ratio_then_declaration_order() {
        // Three starving partitions: min 4 holding 1 (1/4), min 2 holding 1 (1/2), min 4
        // holding 1 (1/4, declared later).
        let mut s = State::new(3, [(4, 9), (2, 9), (4, 9)], 0);
        for p in 0..3 {
            fill(&mut s, p, 1);
            s.push(p, None);
        }
        s.total = 4;
        assert_eq!(s.next(), Some(0));
        s.grant(0, false);
        assert_eq!(s.next(), None, "the total is full");
        s.total = 6;
        // Now 2/4, 1/2, 1/4: the last one is the least served.
        assert_eq!(s.next(), Some(2));
        s.grant(2, false);
        // 2/4, 1/2, 2/4 (no waiter): equal ratios, the first declared wins.
        s.push(0, None);
        assert_eq!(s.next(), Some(0));
        // Above their minimums, the ratio is over max(min, 1): min 0 counts as 1.
        let mut s = State::new(10, [(2, 9), (0, 9)], 0);
        fill(&mut s, 0, 3);
        fill(&mut s, 1, 1);
        s.total = 4;
        s.push(0, None);
        s.push(1, None);
        s.total = 5;
        // 3/2 against 1/1.
        assert_eq!(s.next(), Some(1));
    }

    #[test]
    fn a_partition_at_its_cap_is_skipped() {
        let mut s = State::new(3, [(0, 1), (0, 3)], 0);
        fill(&mut s, 0, 1);
        s.push(0, None);
        assert_eq!(s.next(), None, "at its cap, with room in the total");
        assert!(s.settled());
        s.push(1, None);
        assert_eq!(s.next(), Some(1));
    }
}
