//! Property: any sequence of acquires, releases, cancelled waits and limit changes keeps the
//! permits out within the limit, serves waiters in order, and ends with nothing in flight.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use palisade_bulkhead::{Acquire, Bulkhead, Discipline, Permit, Reason};
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
