//! Property: any sequence of acquires, releases, cancelled waits and limit changes keeps the
//! permits out within the limit, serves waiters in order, and ends with nothing in flight.
//! The same for a partitioned bulkhead, whose admissions must also match the partition rules
//! and whose partitions below their minimum are never passed over.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use palisade_bulkhead::{
    Acquire, Bulkhead, Discipline, Partition, PartitionAcquire, PartitionPermit,
    PartitionedBulkhead, Permit, Reason,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    TryAcquire,
    Release(usize),
    Cancel(usize),
    SetLimit(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Acquire),
        1 => Just(Op::TryAcquire),
        3 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => (1u32..=5).prop_map(Op::SetLimit),
    ]
}

fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn permits_stay_within_the_limit_and_nothing_leaks(
        limit in 1u32..=4,
        max_queued in 0usize..=4,
        lifo in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let discipline = if lifo { Discipline::Lifo } else { Discipline::Fifo };
        let b = Bulkhead::builder(limit)
            .max_queued(max_queued)
            .discipline(discipline)
            .build()
            .unwrap();
        let mut limit = limit as usize;
        let mut held: Vec<Permit<'_>> = Vec::new();
        // Queued waiters, oldest first.
        let mut waiting: Vec<Pin<Box<Acquire<'_>>>> = Vec::new();
        for op in ops {
            let before = held.len();
            match op {
                Op::Acquire => {
                    let mut f = Box::pin(b.acquire());
                    match poll(&mut f) {
                        Poll::Ready(Ok(p)) => {
                            prop_assert!(waiting.is_empty(), "a newcomer jumped the queue");
                            held.push(p);
                        }
                        Poll::Ready(Err(r)) => {
                            prop_assert!(held.len() >= limit || !waiting.is_empty());
                            let expected = if max_queued == 0 { Reason::Full } else { Reason::QueueFull };
                            prop_assert_eq!(r.reason(), expected);
                            prop_assert_eq!(waiting.len(), max_queued);
                        }
                        Poll::Pending => waiting.push(f),
                    }
                }
                Op::TryAcquire => match b.try_acquire() {
                    Ok(p) => {
                        prop_assert!(waiting.is_empty());
                        held.push(p);
                    }
                    Err(r) => prop_assert_eq!(r.reason(), Reason::Full),
                },
                Op::Release(i) => {
                    if !held.is_empty() {
                        drop(held.swap_remove(i % held.len()));
                    }
                }
                Op::Cancel(i) => {
                    if !waiting.is_empty() {
                        drop(waiting.remove(i % waiting.len()));
                    }
                }
                Op::SetLimit(n) => {
                    b.set_max_concurrent(n).unwrap();
                    limit = n as usize;
                }
            }
            // Every waiter polls: the ones handed a permit take it, in discipline order.
            let mut served = Vec::new();
            for (i, f) in waiting.iter_mut().enumerate() {
                match poll(f) {
                    Poll::Ready(Ok(p)) => {
                        held.push(p);
                        served.push(i);
                    }
                    Poll::Ready(Err(r)) => prop_assert!(false, "a queued waiter was refused: {r}"),
                    Poll::Pending => {}
                }
            }
            let n = waiting.len();
            let expected: Vec<usize> = if lifo {
                (n - served.len()..n).collect()
            } else {
                (0..served.len()).collect()
            };
            prop_assert_eq!(&served, &expected, "served out of order");
            for i in served.into_iter().rev() {
                drop(waiting.remove(i));
            }
            // The counts are exact, and nobody got in over the limit.
            let m = b.metrics();
            prop_assert_eq!(m.in_flight as usize, held.len());
            prop_assert_eq!(m.queued, waiting.len());
            if held.len() > before {
                prop_assert!(held.len() <= limit, "{} in flight, limit {}", held.len(), limit);
            }
            // Nobody waits while a permit is free.
            if !waiting.is_empty() {
                prop_assert!(held.len() >= limit);
            }
        }
        drop(waiting);
        drop(held);
        let m = b.metrics();
        prop_assert_eq!((m.in_flight, m.queued), (0, 0));
        let all: Vec<_> = std::iter::from_fn(|| b.try_acquire().ok()).take(limit + 1).collect();
        prop_assert_eq!(all.len(), limit);
    }
}

#[derive(Debug, Clone)]
enum PartitionOp {
    Acquire(usize),
    TryAcquire(usize),
    Release(usize),
    Cancel(usize),
    /// Releases a permit, then drops a waiter before anyone polls: possibly one that was just
    /// handed the permit, which must pass it on.
    ReleaseThenCancel(usize, usize),
    SetTotal(u32),
}

fn partition_op() -> impl Strategy<Value = PartitionOp> {
    prop_oneof![
        4 => any::<usize>().prop_map(PartitionOp::Acquire),
        1 => any::<usize>().prop_map(PartitionOp::TryAcquire),
        3 => any::<usize>().prop_map(PartitionOp::Release),
        1 => any::<usize>().prop_map(PartitionOp::Cancel),
        1 => (any::<usize>(), any::<usize>())
            .prop_map(|(r, c)| PartitionOp::ReleaseThenCancel(r, c)),
        1 => (1u32..=6).prop_map(PartitionOp::SetTotal),
    ]
}

/// A total and 2 or 3 partitions `(min, max)` that build: the minimums fit in the total and
/// each max lies in `max(min, 1)..=total`.
fn layout() -> impl Strategy<Value = (u32, Vec<(u32, Option<u32>)>)> {
    (
        1u32..=5,
        proptest::collection::vec((0u32..=2, proptest::option::of(1u32..=5)), 2..=3),
    )
        .prop_map(|(total, raw)| {
            let mut budget = total;
            let parts = raw
                .into_iter()
                .map(|(min, max)| {
                    let min = min.min(budget);
                    budget -= min;
                    (min, max.map(|m| m.clamp(min.max(1), total)))
                })
                .collect();
            (total, parts)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn partitions_keep_total_caps_and_minimums_and_nothing_leaks(
        (total, parts) in layout(),
        max_queued in 0usize..=3,
        lifo in any::<bool>(),
        ops in proptest::collection::vec(partition_op(), 1..60),
    ) {
        let discipline = if lifo { Discipline::Lifo } else { Discipline::Fifo };
        let mut builder = PartitionedBulkhead::builder(total)
            .max_queued(max_queued)
            .discipline(discipline);
        for (i, &(min, max)) in parts.iter().enumerate() {
            builder = match max {
                Some(max) => builder.partition_with_max(format!("p{i}"), min, max),
                None => builder.partition(format!("p{i}"), min),
            };
        }
        let b = builder.build().unwrap();
        let handles: Vec<Partition> = b.partitions().collect();
        let n = handles.len();
        let mins: Vec<u32> = parts.iter().map(|p| p.0).collect();
        let sum_min: u32 = mins.iter().sum();
        let mut limit = total;
        let cap = |p: usize, limit: u32| parts[p].1.unwrap_or(u32::MAX).min(limit) as usize;
        let mut held: Vec<(usize, PartitionPermit<'_>)> = Vec::new();
        // Queued waiters in arrival order, with their partition.
        let mut waiting: Vec<(usize, Pin<Box<PartitionAcquire<'_>>>)> = Vec::new();
        let in_p = |held: &[(usize, PartitionPermit<'_>)], p: usize| {
            held.iter().filter(|(q, _)| *q == p).count()
        };
        let queued_p = |waiting: &[(usize, Pin<Box<PartitionAcquire<'_>>>)], p: usize| {
            waiting.iter().filter(|(q, _)| *q == p).count()
        };
        let starving = |held: &[(usize, PartitionPermit<'_>)],
                        waiting: &[(usize, Pin<Box<PartitionAcquire<'_>>>)],
                        p: usize| {
            in_p(held, p) < mins[p] as usize && queued_p(waiting, p) > 0
        };
        // The admission rule, from the model.
        let admits = |held: &[(usize, PartitionPermit<'_>)],
                      waiting: &[(usize, Pin<Box<PartitionAcquire<'_>>>)],
                      p: usize,
                      limit: u32| {
            held.len() < limit as usize
                && in_p(held, p) < cap(p, limit)
                && queued_p(waiting, p) == 0
                && (in_p(held, p) < mins[p] as usize
                    || !(0..n).any(|q| starving(held, waiting, q)))
        };
        for op in ops {
            match op {
                PartitionOp::Acquire(i) => {
                    let p = i % n;
                    let admitted = admits(&held, &waiting, p, limit);
                    let queued = queued_p(&waiting, p);
                    let mut f = Box::pin(handles[p].acquire());
                    match poll(&mut f) {
                        Poll::Ready(Ok(permit)) => {
                            prop_assert!(admitted, "p{p} admitted against the rules");
                            held.push((p, permit));
                        }
                        Poll::Ready(Err(r)) => {
                            prop_assert!(!admitted, "p{p} refused though admitted: {r}");
                            if max_queued == 0 {
                                prop_assert_eq!(r.reason(), Reason::Full);
                            } else {
                                prop_assert_eq!(r.reason(), Reason::QueueFull);
                                prop_assert_eq!(queued, max_queued);
                            }
                        }
                        Poll::Pending => {
                            prop_assert!(!admitted, "p{p} queued though admitted");
                            prop_assert!(queued < max_queued);
                            waiting.push((p, f));
                        }
                    }
                }
                PartitionOp::TryAcquire(i) => {
                    let p = i % n;
                    let admitted = admits(&held, &waiting, p, limit);
                    match handles[p].try_acquire() {
                        Ok(permit) => {
                            prop_assert!(admitted, "p{p} admitted against the rules");
                            held.push((p, permit));
                        }
                        Err(r) => {
                            prop_assert!(!admitted, "p{p} refused though admitted");
                            prop_assert_eq!(r.reason(), Reason::Full);
                            prop_assert_eq!(r.limit() as usize, cap(p, limit));
                        }
                    }
                }
                PartitionOp::Release(i) => {
                    if !held.is_empty() {
                        drop(held.swap_remove(i % held.len()));
                    }
                }
                PartitionOp::Cancel(i) => {
                    if !waiting.is_empty() {
                        drop(waiting.remove(i % waiting.len()));
                    }
                }
                PartitionOp::ReleaseThenCancel(r, c) => {
                    if !held.is_empty() {
                        drop(held.swap_remove(r % held.len()));
                    }
                    if !waiting.is_empty() {
                        drop(waiting.remove(c % waiting.len()));
                    }
                }
                PartitionOp::SetTotal(t) => {
                    let result = b.set_total(t);
                    if t >= sum_min {
                        prop_assert!(result.is_ok());
                        limit = t;
                    } else {
                        prop_assert_eq!(result.unwrap_err().field(), "total");
                    }
                }
            }
            // The counts before this operation's grants.
            let base: Vec<usize> = (0..n).map(|p| in_p(&held, p)).collect();
            // Every waiter polls; the ones handed a permit take it.
            let mut served: Vec<usize> = Vec::new();
            let mut granted = vec![0usize; n];
            for (i, (p, f)) in waiting.iter_mut().enumerate() {
                match poll(f) {
                    Poll::Ready(Ok(permit)) => {
                        held.push((*p, permit));
                        granted[*p] += 1;
                        served.push(i);
                    }
                    Poll::Ready(Err(r)) => prop_assert!(false, "a queued waiter was refused: {r}"),
                    Poll::Pending => {}
                }
            }
            // Within a partition, by the discipline: the oldest (or newest) waiters first.
            for p in 0..n {
                let mine: Vec<usize> = (0..waiting.len()).filter(|&i| waiting[i].0 == p).collect();
                let got: Vec<usize> =
                    served.iter().copied().filter(|&i| waiting[i].0 == p).collect();
                let expected: Vec<usize> = if lifo {
                    mine[mine.len() - got.len()..].to_vec()
                } else {
                    mine[..got.len()].to_vec()
                };
                prop_assert_eq!(got, expected, "p{} served out of order", p);
            }
            for i in served.into_iter().rev() {
                drop(waiting.remove(i));
            }
            // The counts are exact.
            let m = b.metrics();
            prop_assert_eq!(m.in_flight as usize, held.len());
            prop_assert_eq!(m.queued, waiting.len());
            prop_assert_eq!(m.limit, limit);
            for (p, h) in handles.iter().enumerate() {
                let pm = h.metrics();
                prop_assert_eq!(pm.in_flight as usize, in_p(&held, p));
                prop_assert_eq!(pm.queued, queued_p(&waiting, p));
            }
            // Grants stay within the total and the caps.
            if granted.iter().any(|&g| g > 0) {
                prop_assert!(
                    held.len() <= limit as usize,
                    "{} in flight, total {}", held.len(), limit
                );
            }
            for p in 0..n {
                if let Some(max) = parts[p].1 {
                    prop_assert!(in_p(&held, p) <= max as usize);
                }
                if granted[p] > 0 {
                    prop_assert!(in_p(&held, p) <= cap(p, limit));
                }
            }
            // Settled: nobody waits who could be served, so a partition below its minimum only
            // waits while the total is full.
            for p in 0..n {
                if queued_p(&waiting, p) > 0 {
                    prop_assert!(
                        held.len() >= limit as usize || in_p(&held, p) >= cap(p, limit),
                        "p{} waits with room for it", p
                    );
                }
            }
            // Never passed over: while a partition below its minimum still waits, no permit of
            // this operation went to a partition at or above its own minimum.
            if (0..n).any(|p| starving(&held, &waiting, p)) {
                for q in 0..n {
                    let at_or_above = (base[q] + granted[q])
                        .saturating_sub(base[q].max(mins[q] as usize));
                    prop_assert_eq!(
                        at_or_above, 0,
                        "p{} took a permit at or above its minimum while one below its own waits",
                        q
                    );
                }
            }
        }
        drop(waiting);
        drop(held);
        let m = b.metrics();
        prop_assert_eq!((m.in_flight, m.queued), (0, 0));
        for h in &handles {
            prop_assert_eq!(h.metrics().in_flight, 0);
        }
        // Every permit is back: greedily, the partitions take min(total, Σ caps).
        let mut all = Vec::new();
        for h in &handles {
            all.extend(std::iter::from_fn(|| h.try_acquire().ok()).take(limit as usize + 1));
        }
        let reachable: usize = (0..n).map(|p| cap(p, limit)).sum::<usize>().min(limit as usize);
        prop_assert_eq!(all.len(), reachable);
    }
}
