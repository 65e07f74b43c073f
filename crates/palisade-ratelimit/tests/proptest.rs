//! Property tests against a reference GCRA written here, in exact u128 arithmetic:
//!
//! - **no under-admission**: the limiter admits exactly when the reference admits, through any
//!   sequence of checks, peeks, refunds and quota changes;
//! - **no over-admission**: in every window `[a, b]` between two quota changes, the cells
//!   admitted minus the cells refunded in it are at most `burst + (b − a)/T`.
//!
//! And a multi-quota limiter admits exactly when every quota's reference admits, and a refusal
//! by one quota leaves every quota untouched; a sliding window never counts more than its limit
//! in a window (beyond what refunds read in that window gave back), late clock readings
//! included.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade_core::{Clock, Instant, ManualClock};
use palisade_ratelimit::{MultiGcra, Quota, RateLimiter, SlidingWindow};
use proptest::prelude::*;

/// The reference: a TAT in ns, with every step written straight from the definition.
#[derive(Debug, Clone, Copy)]
struct Reference {
    tat: u128,
    interval: u128,
    burst: u128,
}

impl Reference {
    fn new(q: Quota) -> Reference {
        Reference {
            tat: 0,
            interval: q.interval().as_nanos(),
            burst: u128::from(q.burst_size()),
        }
    }

    fn tau(&self) -> u128 {
        self.interval * self.burst
    }

    /// Cells `n` fit at `now` iff `max(tat, now) + n·T − now ≤ τ`.
    fn fits(&self, now: u128, n: u32) -> bool {
        self.tat.max(now) + u128::from(n) * self.interval - now <= self.tau()
    }

    fn take(&mut self, now: u128, n: u32) {
        self.tat = self.tat.max(now) + u128::from(n) * self.interval;
    }

    /// Nothing comes back while the TAT is more than τ ahead (a reservation or a quota
    /// change's debt is pending).
    /// Takes `n` now or reserves them; returns where the TAT was left and the wait.
    fn reserve(&mut self, now: u128, n: u32) -> (u128, u128) {
        self.take(now, n);
        (self.tat, (self.tat - now).saturating_sub(self.tau()))
    }

    /// A reservation that left the TAT at `end` is given back: exactly if nothing came after
    /// it, else like a refund.
    fn undo(&mut self, now: u128, n: u32, end: u128) {
        if self.tat == end && self.tat > now {
            self.tat = (end - u128::from(n) * self.interval).max(now);
        } else {
            self.refund(now, n);
        }
    }

    fn refund(&mut self, now: u128, n: u32) {
        if self.tat > now && self.tat - now <= self.tau() {
            self.tat = self
                .tat
                .saturating_sub(u128::from(n) * self.interval)
                .max(now);
        }
    }

    /// The used part, `(tat − now)/T` cells, carried to the new interval, rounded up.
    fn set(&mut self, now: u128, q: Quota) {
        let to = Reference::new(q);
        if self.tat > now {
            self.tat = now + ((self.tat - now) * to.interval).div_ceil(self.interval);
        }
        self.interval = to.interval;
        self.burst = to.burst;
    }
}

#[derive(Debug, Clone)]
enum Op {
    Check(u32),
    Peek(u32),
    Refund(u32),
    Set(Quota),
}

/// Intervals of 1 µs to 50 ms, in odd nanoseconds too.
fn quota() -> impl Strategy<Value = Quota> {
    (1_000u64..=50_000_000, 1u32..=8)
        .prop_map(|(ns, burst)| Quota::with_interval(Duration::from_nanos(ns)).burst(burst))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u32..=4).prop_map(Op::Check),
        1 => (0u32..=4).prop_map(Op::Peek),
        2 => (1u32..=4).prop_map(Op::Refund),
        1 => quota().prop_map(Op::Set),
    ]
}

/// How far the clock moves before an operation.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// 0 to 60 ms in ns: many land inside one interval, some skip several.
    Nanos(u64),
    /// To the refusal's `retry_after` for one cell, plus −1, 0 or +1 ns: the exact boundary.
    Boundary(i8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u64..=60_000_000).prop_map(Step::Nanos),
        1 => (-1i8..=1).prop_map(Step::Boundary),
    ]
}

fn steps() -> impl Strategy<Value = Vec<(Step, Op)>> {
    prop::collection::vec((step(), op()), 1..200)
}

fn advance<A: palisade_ratelimit::Algorithm>(
    limiter: &RateLimiter<A, ManualClock>,
    clock: &ManualClock,
    step: Step,
) -> u128 {
    let ns = match step {
        Step::Nanos(ns) => ns,
        Step::Boundary(delta) => match limiter.peek().retry_after() {
            Some(wait) => (wait.as_nanos() as u64).saturating_add_signed(i64::from(delta)),
            None => 0,
        },
    };
    clock.advance(Duration::from_nanos(ns));
    u128::from(ns)
}

/// An admission (+n) or refund (−n) at a time, for the window check.
#[derive(Debug, Clone, Copy)]
struct Event {
    at: u128,
    cells: i128,
}

/// Every window `[a, b]` (closed: every event at `a` and at `b` is in it) holds at most
/// `burst + (b − a)/T` net cells. `events` must be sorted by time.
fn assert_windows(events: &[Event], q: Quota) -> Result<(), TestCaseError> {
    let interval = q.interval().as_nanos() as i128;
    let tau = interval * i128::from(q.burst_size());
    for (i, first) in events.iter().enumerate() {
        if i > 0 && events[i - 1].at == first.at {
            continue; // every window starts with all the events of its first instant
        }
        let mut net = 0;
        for (j, last) in events.iter().enumerate().skip(i) {
            net += last.cells;
            let group_ends = events.get(j + 1).is_none_or(|next| next.at != last.at);
            if group_ends {
                let span = (last.at - first.at) as i128;
                prop_assert!(
                    net * interval <= tau + span,
                    "{net} cells in {span}ns with burst {} every {interval}ns",
                    q.burst_size()
                );
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Wait {
    Check(u32),
    Refund(u32),
    /// Reserve `n` cells (a waiter arrives).
    Reserve(u32),
    /// The oldest pending waiter gives up (its reservation is dropped).
    CancelOldest,
    /// The newest pending waiter gives up.
    CancelNewest,
    /// The oldest pending waiter's moment comes: it uses its cells.
    Serve,
}

fn wait_op() -> impl Strategy<Value = Wait> {
    prop_oneof![
        4 => (0u32..=3).prop_map(Wait::Check),
        1 => (1u32..=3).prop_map(Wait::Refund),
        3 => (1u32..=3).prop_map(Wait::Reserve),
        1 => Just(Wait::CancelOldest),
        1 => Just(Wait::CancelNewest),
        2 => Just(Wait::Serve),
    ]
}

/// A clock set by hand to any reading, earlier ones included: a late reading, as a thread
/// preempted between reading the clock and stepping the limiter has.
#[derive(Debug, Clone, Default)]
struct SetClock(Arc<AtomicU64>);

impl Clock for SetClock {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

/// What the sliding-window property does at a reading.
#[derive(Debug, Clone, Copy)]
enum WindowOp {
    /// Checks for this many cells.
    Check(u32),
    /// Gives this many back.
    Refund(u32),
}

/// A reading for the sliding-window property: the clock moves on, or a reading comes late.
#[derive(Debug, Clone, Copy)]
enum Reading {
    /// The clock moves on by this many ns (up to three windows).
    Later(u64),
    /// A reading this many ns (up to two windows) behind the latest one.
    Late(u64),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn waiters_cancelled_in_any_order_never_cause_over_admission(
        q in quota(),
        steps in prop::collection::vec((step(), wait_op()), 1..200),
    ) {
        let clock = ManualClock::new();
        let limiter = RateLimiter::builder(q).clock(clock.clone()).build().unwrap();
        let mut reference = Reference::new(q);
        let mut now: u128 = 0;
        let mut events = Vec::new();
        // Pending waiters: (reservation, cells, the TAT it left, its moment).
        let mut pending = std::collections::VecDeque::new();
        for (step, op) in steps {
            now += advance(&limiter, &clock, step);
            match op {
                Wait::Check(n) => {
                    let expected = u128::from(n) <= reference.burst && reference.fits(now, n);
                    let admitted = limiter.check_n(n).is_ok_and(|d| d.is_allowed());
                    prop_assert_eq!(admitted, expected);
                    if admitted {
                        reference.take(now, n);
                        events.push(Event { at: now, cells: i128::from(n) });
                    }
                }
                Wait::Refund(n) => {
                    limiter.refund(n);
                    reference.refund(now, n);
                    events.push(Event { at: now, cells: -i128::from(n) });
                }
                Wait::Reserve(n) => match limiter.reserve_n(n, Duration::MAX) {
                    Ok(reservation) => {
                        let (end, wait) = reference.reserve(now, n);
                        prop_assert_eq!(reservation.wait().as_nanos(), wait);
                        pending.push_back((reservation, n, end, now + wait));
                    }
                    Err(_) => prop_assert!(u128::from(n) > reference.burst),
                },
                Wait::CancelOldest | Wait::CancelNewest => {
                    let waiter = if matches!(op, Wait::CancelOldest) {
                        pending.pop_front()
                    } else {
                        pending.pop_back()
                    };
                    if let Some((reservation, n, end, at)) = waiter {
                        drop(reservation);
                        reference.undo(now, n, end);
                        if at <= now {
                            // Its moment had come: its cells were taken then, and giving them
                            // back now is a refund.
                            events.push(Event { at, cells: i128::from(n) });
                            events.push(Event { at: now, cells: -i128::from(n) });
                        }
                    }
                }
                Wait::Serve => {
                    if let Some((reservation, n, _, at)) = pending.pop_front() {
                        reservation.commit();
                        events.push(Event { at, cells: i128::from(n) });
                    }
                }
            }
            prop_assert_eq!(limiter.peek_n(0).unwrap().reset_after().as_nanos(), reference.tat.saturating_sub(now));
        }
        for (reservation, n, _, at) in pending {
            reservation.commit();
            events.push(Event { at, cells: i128::from(n) });
        }
        events.sort_by_key(|e| e.at);
        assert_windows(&events, q)?;
    }

    #[test]
    fn gcra_admits_exactly_what_the_reference_admits_and_never_over_admits(
        initial in quota(),
        steps in steps(),
    ) {
        let clock = ManualClock::new();
        let limiter = RateLimiter::builder(initial).clock(clock.clone()).build().unwrap();
        let mut reference = Reference::new(initial);
        let mut current = initial;
        let mut now: u128 = 0;
        let mut events = Vec::new();
        for (step, op) in steps {
            now += advance(&limiter, &clock, step);
            match op {
                Op::Check(n) => {
                    let expected = reference.fits(now, n);
                    match limiter.check_n(n) {
                        Ok(decision) => {
                            prop_assert_eq!(decision.is_allowed(), expected, "check_n({}) at {}", n, now);
                            if expected {
                                reference.take(now, n);
                                events.push(Event { at: now, cells: i128::from(n) });
                            } else {
                                // A refusal says exactly when the same request would fit.
                                let wait = decision.retry_after().unwrap().as_nanos();
                                prop_assert!(reference.fits(now + wait, n));
                                prop_assert!(!reference.fits(now + wait - 1, n));
                            }
                        }
                        Err(_) => prop_assert!(u128::from(n) > reference.burst),
                    }
                }
                Op::Peek(n) => {
                    if let Ok(decision) = limiter.peek_n(n) {
                        prop_assert_eq!(decision.is_allowed(), reference.fits(now, n));
                    }
                }
                Op::Refund(n) => {
                    limiter.refund(n);
                    reference.refund(now, n);
                    events.push(Event { at: now, cells: -i128::from(n) });
                }
                Op::Set(q) => {
                    limiter.set_quota(q).unwrap();
                    reference.set(now, q);
                    assert_windows(&events, current)?;
                    events.clear();
                    current = q;
                }
            }
            // The remaining count agrees with the reference's.
            let remaining = (reference.tau() - (reference.tat.max(now) - now).min(reference.tau())) / reference.interval;
            prop_assert_eq!(u128::from(limiter.peek_n(0).unwrap().remaining()), remaining);
        }
        assert_windows(&events, current)?;
    }

    #[test]
    fn multi_quota_admits_only_what_every_quota_admits_and_a_refusal_takes_nothing(
        a in quota(),
        b in quota(),
        steps in prop::collection::vec((step(), 0u32..=4), 1..200),
    ) {
        let clock = ManualClock::new();
        let limiter = RateLimiter::builder(MultiGcra::new([a, b])).clock(clock.clone()).build().unwrap();
        let mut refs = [Reference::new(a), Reference::new(b)];
        let mut now: u128 = 0;
        for (step, n) in steps {
            now += advance(&limiter, &clock, step);
            let fits = refs.iter().all(|r| u128::from(n) <= r.burst && r.fits(now, n));
            match limiter.check_n(n) {
                Ok(decision) => {
                    prop_assert_eq!(decision.is_allowed(), fits);
                    if fits {
                        refs.iter_mut().for_each(|r| r.take(now, n));
                    }
                }
                Err(_) => prop_assert!(refs.iter().any(|r| u128::from(n) > r.burst)),
            }
        }
        // Nothing a refusal did shows later: the next decision still matches.
        let fits = refs.iter().all(|r| r.fits(now, 1));
        prop_assert_eq!(limiter.peek().is_allowed(), fits);
    }

    #[test]
    fn a_sliding_window_counts_at_most_its_limit_in_a_window_late_readings_included(
        limit in 1u32..=8,
        window_ms in 1u64..=50,
        readings in prop::collection::vec(
            (
                prop_oneof![
                    3 => (0u64..=3_000).prop_map(Reading::Later),
                    1 => (0u64..=2_000).prop_map(Reading::Late),
                ],
                prop_oneof![
                    3 => (0u32..=3).prop_map(WindowOp::Check),
                    1 => (1u32..=3).prop_map(WindowOp::Refund),
                ],
            ),
            1..200,
        ),
    ) {
        // Readings in thousandths of a window, so both kinds span whole windows.
        let window = window_ms * 1_000_000;
        let clock = SetClock::default();
        let limiter = RateLimiter::builder(SlidingWindow::new(limit, Duration::from_nanos(window)))
            .clock(clock.clone())
            .build()
            .unwrap();
        let mut latest = 0u64;
        // The newest window the state holds: a late reading counts in it, never before it.
        let mut stored = 0u64;
        let mut counted = std::collections::BTreeMap::<u64, u32>::new();
        // What refunds read in each window could have given back in it, at most.
        let mut refundable = std::collections::BTreeMap::<u64, u32>::new();
        for (reading, op) in readings {
            let now = match reading {
                Reading::Later(thousandths) => {
                    latest += thousandths * window / 1_000;
                    latest
                }
                Reading::Late(thousandths) => latest.saturating_sub(thousandths * window / 1_000),
            };
            clock.0.store(now, Ordering::Relaxed);
            let n = match op {
                WindowOp::Refund(n) => {
                    limiter.refund(n);
                    // A refund gives back only in its reading's own window.
                    *refundable.entry(now / window).or_default() += n;
                    continue;
                }
                WindowOp::Check(n) => n.min(limit),
            };
            let Ok(decision) = limiter.check_n(n) else {
                continue;
            };
            // Every admission stores its window, one of no cells too.
            if decision.is_allowed() {
                stored = stored.max(now / window);
            }
            if decision.is_allowed() && n > 0 {
                let cells = counted.entry(stored).or_default();
                *cells += n;
                let back = refundable.get(&stored).copied().unwrap_or(0);
                prop_assert!(
                    *cells <= limit + back,
                    "{cells} cells counted in window {stored} with a limit of {limit} and at most \
                     {back} given back in it"
                );
            }
        }
    }
}
