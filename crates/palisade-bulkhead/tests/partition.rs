//! `PartitionedBulkhead` over its public API: validation, the guaranteed minimum, borrowing up
//! to a cap, hard reservation through caps, the total, queue order within a partition,
//! cancel-safety, wait deadlines (on tokio's paused clock), total changes, metrics, the tower
//! layer in both modes, and Send + Sync.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use palisade_bulkhead::{
    ConfigError, Discipline, OwnedPartitionPermit, Partition, PartitionAcquire,
    PartitionAcquireOwned, PartitionId, PartitionMetrics, PartitionPermit, PartitionedBulkhead,
    PartitionedBulkheadBuilder, Reason, Rejected,
};
use palisade_core::TokioClock;

/// A waker that counts its wake-ups.
#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn count_waker() -> (Arc<Count>, Waker) {
    let count = Arc::new(Count::default());
    (Arc::clone(&count), Waker::from(count))
}

fn woken(count: &Count) -> usize {
    count.0.load(Ordering::SeqCst)
}

fn poll<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

fn poll_with<F: Future>(fut: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(waker))
}

fn err<T>(r: Result<T, Rejected>) -> Rejected {
    match r {
        Ok(_) => panic!("expected a rejection"),
        Err(rejected) => rejected,
    }
}

/// `(in_flight, queued)` of a partition.
fn counts(p: &Partition) -> (u32, usize) {
    let m = p.metrics();
    (m.in_flight, m.queued)
}

/// `(in_flight, queued, limit)` of the whole bulkhead.
fn totals<C: palisade_core::Clock>(b: &PartitionedBulkhead<C>) -> (u32, usize, u32) {
    let m = b.metrics();
    (m.in_flight, m.queued, m.limit)
}

fn two(total: u32, a: (u32, u32), b: (u32, u32)) -> (PartitionedBulkhead, Partition, Partition) {
    let bulkhead = PartitionedBulkhead::builder(total)
        .partition_with_max("a", a.0, a.1)
        .partition_with_max("b", b.0, b.1)
        .max_queued(8)
        .build()
        .unwrap();
    let pa = bulkhead.partition("a").unwrap();
    let pb = bulkhead.partition("b").unwrap();
    (bulkhead, pa, pb)
}

/// The message of a failed build, asserting the field it names.
fn message(builder: PartitionedBulkheadBuilder, field: &str) -> String {
    let err: ConfigError = builder.build().unwrap_err();
    assert_eq!(err.field(), field, "{err}");
    err.to_string()
}

#[test]
fn builder_validates_every_knob() {
    let one = |total| PartitionedBulkhead::builder(total).partition("a", 0);
    assert_eq!(
        message(one(0), "total"),
        "total must be in 1..=1073741823, got 0"
    );
    message(one(1 << 30), "total");
    assert!(one((1 << 30) - 1).build().is_ok());
    assert_eq!(
        message(PartitionedBulkhead::builder(4), "partition"),
        "partition must be declared between 1 and 1024 times, got 0"
    );
    let many = (0..1025).fold(PartitionedBulkhead::builder(4), |b, i| {
        b.partition(i.to_string(), 0)
    });
    message(many, "partition");
    let most = (0..1024).fold(PartitionedBulkhead::builder(4), |b, i| {
        b.partition(i.to_string(), 0)
    });
    assert_eq!(most.build().unwrap().partitions().len(), 1024);
    assert_eq!(
        message(
            PartitionedBulkhead::builder(4).partition("", 0),
            "partition"
        ),
        "partition must be a non-empty name, got \"\""
    );
    assert_eq!(
        message(one(4).partition("b", 0).partition("a", 1), "partition"),
        "partition must be a name no other partition has, got \"a\""
    );
    assert_eq!(
        message(one(4).partition_with_max("b", 0, 5), "max"),
        "max must be in 1..=4 (the total) for partition \"b\", got 5"
    );
    message(one(4).partition_with_max("b", 0, 0), "max");
    assert_eq!(
        message(one(4).partition_with_max("b", 3, 2), "min"),
        "min must be at most its max (2) for partition \"b\", got 3"
    );
    message(one(4).partition("b", 5), "min");
    assert_eq!(
        message(one(4).partition("b", 3).partition("c", 2), "min"),
        "min must be such that the minimums of all partitions sum to at most the total (4), got 5"
    );
    assert!(one(4).partition("b", 2).partition("c", 2).build().is_ok());
    assert_eq!(
        message(one(4).max_queued((1 << 30) + 1), "max_queued"),
        "max_queued must be in 0..=1073741824, got 1073741825"
    );
    assert!(one(4).max_queued(1 << 30).build().is_ok());
    assert_eq!(
        message(one(4).max_wait(Duration::from_secs(86_401)), "max_wait"),
        "max_wait must be at most 24 h, got 86401s"
    );
    assert!(one(4).max_wait(Duration::ZERO).build().is_ok());
    for (target, interval) in [(0, 100), (200, 100), (5, 86_400_001)] {
        let codel = Discipline::CoDel {
            target: Duration::from_millis(target),
            interval: Duration::from_millis(interval),
        };
        let text = message(one(4).discipline(codel), "discipline");
        assert!(text.contains("CoDel"), "{text}");
    }
    assert!(one(4).discipline(Discipline::codel()).build().is_ok());
    // At runtime: the total stays at least the sum of the minimums.
    let b = one(8).partition("b", 3).partition("c", 2).build().unwrap();
    let e = b.set_total(4).unwrap_err();
    assert_eq!(e.field(), "total");
    assert_eq!(
        e.to_string(),
        "total must be in 5..=1073741823 (at least the sum of the minimums), got 4"
    );
    assert_eq!(b.set_total(1 << 30).unwrap_err().field(), "total");
    assert_eq!(b.total(), 8);
    let zero_min = one(8).build().unwrap();
    assert_eq!(zero_min.set_total(0).unwrap_err().field(), "total");
    assert!(zero_min.set_total(1).is_ok());
}

#[test]
fn handles_by_name_by_id_and_in_declaration_order() {
    let b = PartitionedBulkhead::builder(6)
        .partition("gold", 3)
        .partition_with_max("silver", 1, 2)
        .partition("bronze", 0)
        .build()
        .unwrap();
    let names: Vec<String> = b.partitions().map(|p| p.name().to_owned()).collect();
    assert_eq!(names, ["gold", "silver", "bronze"]);
    let silver = b.partition("silver").unwrap();
    assert_eq!(silver.id().index(), 1);
    let by_id = b.partition_by_id(silver.id()).unwrap();
    assert_eq!(by_id.name(), "silver");
    assert!(b.partition("tin").is_none());
    let other = PartitionedBulkhead::builder(9)
        .partition("x", 0)
        .partition("y", 0)
        .partition("z", 0)
        .partition("w", 0)
        .build()
        .unwrap();
    let foreign: PartitionId = other.partition("w").unwrap().id();
    assert!(b.partition_by_id(foreign).is_none());
    let m: PartitionMetrics = silver.metrics();
    assert_eq!((&*m.name, m.min, m.max), ("silver", 1, 2));
    assert_eq!((m.in_flight, m.queued), (0, 0));
    // Defaults: max is the total.
    assert_eq!(b.partition("gold").unwrap().metrics().max, 6);
    // A permit knows its partition; a handle knows its bulkhead.
    let p = silver.try_acquire().unwrap();
    assert_eq!(p.partition_id(), silver.id());
    assert_eq!(silver.bulkhead().metrics().in_flight, 1);
    let debug = format!("{b:?} {silver:?} {p:?}");
    assert!(
        debug.contains("\"silver\"") && debug.contains("PartitionPermit"),
        "{debug}"
    );
}

#[test]
fn a_partition_below_its_minimum_gets_the_next_release_anywhere() {
    // a borrows the whole total; then both a and b (min 2) queue, a first.
    let (bulkhead, a, b) = two(4, (1, 4), (2, 4));
    let mut held: Vec<_> = (0..4).map(|_| a.try_acquire().unwrap()).collect();
    assert_eq!(err(b.try_acquire()).reason(), Reason::Full);
    let (a_count, a_waker) = count_waker();
    let (b_count, b_waker) = count_waker();
    let mut a1 = pin!(a.acquire());
    let mut b1 = pin!(b.acquire());
    let mut b2 = pin!(b.acquire());
    assert!(poll_with(a1.as_mut(), &a_waker).is_pending());
    assert!(poll_with(b1.as_mut(), &b_waker).is_pending());
    assert!(poll_with(b2.as_mut(), &b_waker).is_pending());
    // b starves (below its minimum, callers waiting); a's newcomers are refused too.
    assert_eq!(counts(&b), (0, 2));
    assert_eq!(err(a.try_acquire()).reason(), Reason::Full);
    // The release of one of a's permits goes to b, not to a's older waiter.
    held.pop();
    assert_eq!((woken(&a_count), woken(&b_count)), (0, 1));
    let pb1 = match poll_with(b1.as_mut(), &b_waker) {
        Poll::Ready(Ok(p)) => p,
        other => panic!("b's waiter was not served: {other:?}"),
    };
    assert!(poll_with(a1.as_mut(), &a_waker).is_pending());
    // b is still below its minimum (1 of 2): the next release is b's too.
    held.pop();
    assert_eq!(woken(&b_count), 2);
    let pb2 = match poll_with(b2.as_mut(), &b_waker) {
        Poll::Ready(Ok(p)) => p,
        other => panic!("b's second waiter was not served: {other:?}"),
    };
    assert!(poll_with(a1.as_mut(), &a_waker).is_pending());
    assert_eq!((counts(&a), counts(&b)), ((2, 1), (2, 0)));
    // b has its minimum: the next release is a's.
    held.pop();
    assert_eq!(woken(&a_count), 1);
    let pa1 = match poll(a1.as_mut()) {
        Poll::Ready(Ok(p)) => p,
        other => panic!("a's waiter was not served: {other:?}"),
    };
    assert_eq!(totals(&bulkhead), (4, 0, 4));
    drop((held, pa1, pb1, pb2));
    assert_eq!(totals(&bulkhead), (0, 0, 4));
}

#[test]
fn a_partition_below_its_minimum_comes_before_a_less_loaded_borrower() {
    // vip holds 1 of its minimum 2; bulk (no minimum) holds nothing; x borrows the rest.
    let b = PartitionedBulkhead::builder(3)
        .partition("x", 0)
        .partition("bulk", 0)
        .partition("vip", 2)
        .build()
        .unwrap();
    let [x, bulk, vip] = ["x", "bulk", "vip"].map(|n| b.partition(n).unwrap());
    let v = vip.try_acquire().unwrap();
    let mut borrowed: Vec<_> = (0..2).map(|_| x.try_acquire().unwrap()).collect();
    let mut wait_bulk = pin!(bulk.acquire());
    let mut wait_vip = pin!(vip.acquire());
    assert!(poll(wait_bulk.as_mut()).is_pending());
    assert!(poll(wait_vip.as_mut()).is_pending());
    // bulk is less loaded (0 held) but at its minimum; vip is below its own: vip first.
    borrowed.pop();
    let v2 = match poll(wait_vip.as_mut()) {
        Poll::Ready(Ok(p)) => p,
        other => panic!("vip was passed over: {other:?}"),
    };
    assert!(poll(wait_bulk.as_mut()).is_pending());
    drop((v, v2, borrowed));
    assert!(matches!(poll(wait_bulk.as_mut()), Poll::Ready(Ok(_))));
    assert_eq!(totals(&b), (0, 0, 3));
}

#[test]
fn a_partition_borrows_idle_capacity_up_to_its_max() {
    let (bulkhead, a, b) = two(10, (2, 4), (2, 10));
    let held_a: Vec<_> = (0..4).map(|_| a.try_acquire().unwrap()).collect();
    let refused = err(a.try_acquire());
    assert_eq!((refused.reason(), refused.limit()), (Reason::Full, 4));
    assert_eq!(a.metrics().rejected_full, 1);
    // b (min 2, no cap) borrows everything else.
    let held_b: Vec<_> = (0..6).map(|_| b.try_acquire().unwrap()).collect();
    let refused = err(b.try_acquire());
    assert_eq!((refused.reason(), refused.limit()), (Reason::Full, 10));
    assert_eq!(totals(&bulkhead), (10, 0, 10));
    drop(held_a);
    // a's capacity is idle again: b borrows it up to the total.
    let more_b: Vec<_> = (0..4).map(|_| b.try_acquire().unwrap()).collect();
    assert_eq!(counts(&b), (10, 0));
    // a is below its minimum but the total is full: a's callers wait for the next release.
    assert_eq!(err(a.try_acquire()).reason(), Reason::Full);
    let mut wait_a = pin!(a.acquire());
    assert!(poll(wait_a.as_mut()).is_pending());
    drop(more_b);
    assert!(matches!(poll(wait_a.as_mut()), Poll::Ready(Ok(_))));
    drop(held_b);
    assert_eq!(totals(&bulkhead), (0, 0, 10));
}

#[test]
fn caps_make_the_minimum_a_hard_reservation() {
    // Σ other caps = 4 <= 10 − 6: interactive's 6 are always free at once.
    let b = PartitionedBulkhead::builder(10)
        .partition("interactive", 6)
        .partition_with_max("batch", 2, 3)
        .partition_with_max("reports", 0, 1)
        .build()
        .unwrap();
    let [interactive, batch, reports] =
        ["interactive", "batch", "reports"].map(|n| b.partition(n).unwrap());
    let busy: Vec<_> = (0..3)
        .map(|_| batch.try_acquire().unwrap())
        .chain(Some(reports.try_acquire().unwrap()))
        .collect();
    assert_eq!(err(batch.try_acquire()).limit(), 3);
    let mine: Vec<_> = (0..6).map(|_| interactive.try_acquire().unwrap()).collect();
    assert_eq!(err(interactive.try_acquire()).reason(), Reason::Full);
    drop((busy, mine));
    // Without the caps the minimum is a priority, not a reservation: a borrower can fill the
    // total, and interactive waits for the next release.
    let open = PartitionedBulkhead::builder(10)
        .partition("interactive", 6)
        .partition("batch", 2)
        .build()
        .unwrap();
    let (interactive, batch) = (
        open.partition("interactive").unwrap(),
        open.partition("batch").unwrap(),
    );
    let mut all: Vec<_> = (0..10).map(|_| batch.try_acquire().unwrap()).collect();
    assert_eq!(err(interactive.try_acquire()).reason(), Reason::Full);
    let mut wait = pin!(interactive.acquire());
    assert!(poll(wait.as_mut()).is_pending());
    all.pop();
    assert!(matches!(poll(wait.as_mut()), Poll::Ready(Ok(_))));
}

#[test]
fn the_total_is_never_exceeded() {
    let b = PartitionedBulkhead::builder(5)
        .partition("a", 1)
        .partition("b", 1)
        .partition("c", 0)
        .max_queued(0)
        .build()
        .unwrap();
    let parts: Vec<_> = b.partitions().collect();
    let mut held = Vec::new();
    for round in 0..30 {
        let p = &parts[round % 3];
        if let Ok(permit) = p.try_acquire() {
            held.push(permit);
        }
        assert!(b.metrics().in_flight <= 5);
        assert_eq!(b.metrics().in_flight as usize, held.len());
        if round % 7 == 6 {
            drop(held.remove(round % held.len()));
        }
    }
    assert_eq!(held.len(), 5);
    // With max_queued 0, acquire never waits.
    let refused = err(futures_now(parts[2].acquire()));
    assert_eq!(refused.reason(), Reason::Full);
    assert_eq!(refused.to_string(), "bulkhead full: all 5 permits in use");
    let in_parts: u32 = parts.iter().map(|p| p.metrics().in_flight).sum();
    assert_eq!(in_parts, 5);
    let m = b.metrics();
    let rejected: u64 = parts.iter().map(|p| p.metrics().rejected_full).sum();
    assert_eq!(m.rejected_full, rejected);
}

/// Polls a future once; it must be ready.
fn futures_now<F: Future>(fut: F) -> F::Output {
    match poll(pin!(fut)) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the future was not ready"),
    }
}

/// Queues three waiters of `p` and returns the order they are served in as permits are
/// released one by one.
fn served_order(discipline: Discipline) -> Vec<usize> {
    let b = PartitionedBulkhead::builder(1)
        .partition("a", 0)
        .partition("b", 1)
        .max_queued(8)
        .discipline(discipline)
        .build()
        .unwrap();
    let a = b.partition("a").unwrap();
    let held = b.partition("b").unwrap().try_acquire_owned().unwrap();
    let mut waiters: Vec<_> = (0..3).map(|_| Box::pin(a.acquire())).collect();
    for w in &mut waiters {
        assert!(poll(w.as_mut()).is_pending());
    }
    // The release goes to a waiter, not to a newcomer.
    drop(held);
    assert_eq!(err(a.try_acquire()).reason(), Reason::Full);
    let mut order = Vec::new();
    while order.len() < 3 {
        let mut served = Vec::new();
        let mut permits = Vec::new();
        for (i, waiter) in waiters.iter_mut().enumerate() {
            if !order.contains(&i)
                && let Poll::Ready(permit) = poll(waiter.as_mut())
            {
                permits.push(permit.unwrap());
                served.push(i);
            }
        }
        assert_eq!(served.len(), 1, "one permit, one waiter served");
        order.extend(served);
        drop(permits);
    }
    assert_eq!(b.metrics().in_flight, 0);
    order
}

#[test]
fn within_a_partition_waiters_are_served_in_discipline_order() {
    assert_eq!(served_order(Discipline::Fifo), [0, 1, 2]);
    assert_eq!(served_order(Discipline::Lifo), [2, 1, 0]);
}

#[test]
fn a_full_queue_refuses_per_partition() {
    let b = PartitionedBulkhead::builder(1)
        .partition("a", 0)
        .partition("b", 0)
        .max_queued(1)
        .build()
        .unwrap();
    let (a, pb) = (b.partition("a").unwrap(), b.partition("b").unwrap());
    let _held = a.try_acquire().unwrap();
    let mut queued = pin!(a.acquire());
    assert!(poll(queued.as_mut()).is_pending());
    let refused = err(futures_now(a.acquire()));
    assert_eq!(refused.reason(), Reason::QueueFull);
    assert_eq!(a.metrics().rejected_queue_full, 1);
    // b's queue is its own.
    let mut other = pin!(pb.acquire());
    assert!(poll(other.as_mut()).is_pending());
    assert_eq!(totals(&b), (1, 2, 1));
    // The default max_queued is the partition's max.
    let d = PartitionedBulkhead::builder(2)
        .partition_with_max("a", 0, 1)
        .build()
        .unwrap();
    let a = d.partition("a").unwrap();
    let _h = a.try_acquire().unwrap();
    let mut q = pin!(a.acquire());
    assert!(poll(q.as_mut()).is_pending());
    assert_eq!(err(futures_now(a.acquire())).reason(), Reason::QueueFull);
}

#[test]
fn a_waiter_dropped_while_queued_leaves_nothing_behind() {
    let (bulkhead, a, b) = two(2, (1, 2), (1, 2));
    let held: Vec<_> = (0..2).map(|_| a.try_acquire().unwrap()).collect();
    {
        let mut wait = pin!(b.acquire());
        assert!(poll(wait.as_mut()).is_pending());
        assert_eq!(counts(&b), (0, 1));
    }
    assert_eq!(counts(&b), (0, 0));
    // Its starving b no longer holds a back.
    drop(held);
    assert_eq!(totals(&bulkhead), (0, 0, 2));
    let again: Vec<_> = (0..2).map(|_| a.try_acquire().unwrap()).collect();
    assert_eq!(again.len(), 2);
}

#[test]
fn a_waiter_dropped_after_it_was_granted_passes_the_permit_on() {
    let (bulkhead, a, b) = two(1, (0, 1), (1, 1));
    let held = a.try_acquire().unwrap();
    let mut first = Box::pin(b.acquire_owned());
    let mut second = pin!(a.acquire());
    assert!(poll(first.as_mut()).is_pending());
    assert!(poll(second.as_mut()).is_pending());
    drop(held);
    // Granted to b (below its minimum) but never polled: dropping it passes the permit on.
    assert_eq!(counts(&b), (1, 0));
    drop(first);
    assert_eq!(counts(&b), (0, 0));
    let permit = match poll(second.as_mut()) {
        Poll::Ready(Ok(p)) => p,
        other => panic!("the permit was not passed on: {other:?}"),
    };
    assert_eq!(totals(&bulkhead), (1, 0, 1));
    drop(permit);
    // And with nobody left to pass it to, it comes back to the pool.
    let held = a.try_acquire().unwrap();
    let mut lone = Box::pin(a.acquire());
    assert!(poll(lone.as_mut()).is_pending());
    drop(held);
    drop(lone);
    assert_eq!(totals(&bulkhead), (0, 0, 1));
    assert!(b.try_acquire().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gives_up_after_max_wait() {
    let b = PartitionedBulkhead::builder(1)
        .partition("a", 0)
        .partition("b", 0)
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    let (a, pb) = (b.partition("a").unwrap(), b.partition("b").unwrap());
    let held = pb.try_acquire_owned().unwrap();
    let start = tokio::time::Instant::now();
    let refused = a.acquire().await.unwrap_err();
    assert_eq!((refused.reason(), refused.limit()), (Reason::TimedOut, 1));
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    assert_eq!(a.metrics().rejected_timed_out, 1);
    assert_eq!(b.metrics().rejected_timed_out, 1);
    assert_eq!(totals(&b), (1, 0, 1));
    // A permit released before the deadline is taken.
    let releaser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
    });
    let start = tokio::time::Instant::now();
    let permit = a.acquire_owned().await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(20));
    releaser.await.unwrap();
    drop(permit);
    assert_eq!(totals(&b), (0, 0, 1));
    // A zero wait never queues.
    let never = PartitionedBulkhead::builder(1)
        .partition("a", 0)
        .max_wait(Duration::ZERO)
        .build()
        .unwrap();
    let a = never.partition("a").unwrap();
    let _held = a.try_acquire().unwrap();
    assert_eq!(a.acquire().await.unwrap_err().reason(), Reason::Full);
}

#[tokio::test(start_paused = true)]
async fn codel_sheds_fast_once_a_partitions_queue_stands() {
    let b = PartitionedBulkhead::builder(1)
        .partition("a", 0)
        .partition("b", 0)
        .max_queued(100)
        .discipline(Discipline::codel())
        .clock(TokioClock::new())
        .build()
        .unwrap();
    let a = b.partition("a").unwrap();
    let _held = a.try_acquire().unwrap();
    let spawn_waiter = |p: &Partition<TokioClock>| {
        let p = p.clone();
        tokio::spawn(async move { p.acquire().await.map(drop) })
    };
    let first = spawn_waiter(&a);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let late = spawn_waiter(&a);
    tokio::time::sleep(Duration::from_millis(60)).await;
    // a's queue has stood for 120 ms: a newcomer gets the 5 ms target.
    let start = tokio::time::Instant::now();
    assert_eq!(a.acquire().await.unwrap_err().reason(), Reason::TimedOut);
    assert_eq!(start.elapsed(), Duration::from_millis(5));
    // b's queue is its own and was empty: the whole interval.
    let start = tokio::time::Instant::now();
    let pb = b.partition("b").unwrap();
    assert_eq!(pb.acquire().await.unwrap_err().reason(), Reason::TimedOut);
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert!(first.await.unwrap().is_err() && late.await.unwrap().is_err());
    assert_eq!(b.metrics().rejected_timed_out, 4);
}

#[test]
fn raising_the_total_serves_waiters_and_lowering_it_drains_first() {
    // Without a max, a partition may borrow up to the total in force.
    let bulkhead = PartitionedBulkhead::builder(2)
        .partition("a", 1)
        .partition("b", 1)
        .build()
        .unwrap();
    let (a, b) = (
        bulkhead.partition("a").unwrap(),
        bulkhead.partition("b").unwrap(),
    );
    assert_eq!(a.metrics().max, 2);
    let held_a: Vec<_> = (0..2).map(|_| a.try_acquire().unwrap()).collect();
    let mut wa = pin!(a.acquire());
    let mut wb = pin!(b.acquire());
    let (count, waker) = count_waker();
    assert!(
        wa.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    assert!(
        wb.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    // One more permit: b (below its minimum) first, a's waiter still waits.
    bulkhead.set_total(3).unwrap();
    assert_eq!(woken(&count), 1);
    let pb = match poll(wb.as_mut()) {
        Poll::Ready(Ok(p)) => p,
        other => panic!("raising the total did not serve b: {other:?}"),
    };
    assert!(poll(wa.as_mut()).is_pending());
    bulkhead.set_total(4).unwrap();
    let pa = match poll(wa.as_mut()) {
        Poll::Ready(Ok(p)) => p,
        other => panic!("raising the total did not serve a: {other:?}"),
    };
    assert_eq!(totals(&bulkhead), (4, 0, 4));
    assert_eq!(a.metrics().max, 4);
    // Lowering below what is in flight interrupts nothing and admits nobody until below.
    bulkhead.set_total(2).unwrap();
    assert_eq!(totals(&bulkhead), (4, 0, 2));
    assert_eq!(err(b.try_acquire()).limit(), 2);
    drop((pa, pb));
    assert_eq!(err(b.try_acquire()).reason(), Reason::Full);
    drop(held_a);
    assert_eq!(totals(&bulkhead), (0, 0, 2));
    let two_now: Vec<_> = (0..2).map(|_| b.try_acquire().unwrap()).collect();
    assert_eq!(err(a.try_acquire()).reason(), Reason::Full);
    drop(two_now);
}

#[test]
fn permits_are_owned_and_travel() {
    let (bulkhead, a, _) = two(2, (0, 2), (0, 2));
    let owned: OwnedPartitionPermit = a.try_acquire().unwrap().into_owned();
    let spawned = a.try_acquire_owned().unwrap();
    assert_eq!(owned.partition_id(), a.id());
    std::thread::spawn(move || drop((owned, spawned)))
        .join()
        .unwrap();
    assert_eq!(totals(&bulkhead), (0, 0, 2));
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<PartitionedBulkhead>();
    send_sync::<PartitionedBulkheadBuilder>();
    send_sync::<Partition>();
    send_sync::<PartitionId>();
    send_sync::<PartitionMetrics>();
    send_sync::<PartitionPermit<'static>>();
    send_sync::<OwnedPartitionPermit>();
    send_sync::<PartitionAcquire<'static>>();
    send_sync::<PartitionAcquireOwned>();
    send_sync::<PartitionedBulkhead<TokioClock>>();
}

#[cfg(feature = "tower")]
mod tower {
    use super::*;
    use palisade_bulkhead::{BoxError, PartitionedLayer, PartitionedService};
    use tokio::sync::oneshot;
    use tower_layer::Layer;
    use tower_service::Service;

    /// A request for a partition; answered when the test sends on `answer`'s sender.
    struct Req {
        id: PartitionId,
        answer: oneshot::Receiver<u32>,
    }

    /// Always ready; counts calls.
    #[derive(Clone, Debug, Default)]
    struct Inner {
        calls: Arc<AtomicUsize>,
    }

    impl Service<Req> for Inner {
        type Response = u32;
        type Error = BoxError;
        type Future = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Req) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { req.answer.await.map_err(|_| "dropped".into()) })
        }
    }

    fn req(id: PartitionId) -> (Req, oneshot::Sender<u32>) {
        let (tx, rx) = oneshot::channel();
        (Req { id, answer: rx }, tx)
    }

    type Svc = PartitionedService<Inner, fn(&Req) -> PartitionId>;

    fn setup(shed: bool) -> (PartitionedBulkhead, Svc, Arc<AtomicUsize>, PartitionId) {
        let bulkhead = PartitionedBulkhead::builder(1)
            .partition("a", 0)
            .partition("b", 1)
            .max_queued(4)
            .build()
            .unwrap();
        let picker: fn(&Req) -> PartitionId = |r| r.id;
        let mut layer = PartitionedLayer::new(bulkhead.clone(), picker);
        if shed {
            layer = layer.shed();
        }
        let inner = Inner::default();
        let calls = Arc::clone(&inner.calls);
        let mut svc = layer.layer(inner);
        assert!(matches!(
            svc.poll_ready(&mut Context::from_waker(Waker::noop())),
            Poll::Ready(Ok(()))
        ));
        let a = bulkhead.partition("a").unwrap().id();
        (bulkhead, svc, calls, a)
    }

    fn rejected(out: Poll<Result<u32, BoxError>>) -> Rejected {
        match out {
            Poll::Ready(Err(e)) => *e.downcast::<Rejected>().expect("a Rejected"),
            other => panic!("expected a rejection, got {:?}", other.map(|r| r.ok())),
        }
    }

    #[test]
    fn shed_mode_refuses_at_once_with_a_rejected() {
        let (bulkhead, mut svc, calls, a) = setup(true);
        let (r1, tx1) = req(a);
        let mut f1 = pin!(svc.call(r1));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let (r2, _tx2) = req(a);
        let refused = rejected(poll(pin!(svc.call(r2))));
        assert_eq!((refused.reason(), refused.limit()), (Reason::Full, 1));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a refused call never reaches the inner"
        );
        // The permit is held until the response completes.
        assert!(poll(f1.as_mut()).is_pending());
        assert_eq!(totals(&bulkhead), (1, 0, 1));
        tx1.send(7).unwrap();
        assert!(matches!(poll(f1.as_mut()), Poll::Ready(Ok(7))));
        assert_eq!(totals(&bulkhead), (0, 0, 1));
        // An id from another bulkhead names no partition here.
        let other = PartitionedBulkhead::builder(1)
            .partition("x", 0)
            .partition("y", 0)
            .partition("z", 0)
            .build()
            .unwrap();
        let (r, _tx) = req(other.partition("z").unwrap().id());
        let refused = rejected(poll(pin!(svc.call(r))));
        assert_eq!((refused.reason(), refused.limit()), (Reason::Full, 0));
    }

    #[test]
    fn wait_mode_waits_in_the_response_future_and_holds_the_permit() {
        let (bulkhead, mut svc, calls, a) = setup(false);
        let (r1, tx1) = req(a);
        let mut f1 = pin!(svc.call(r1));
        let (r2, tx2) = req(a);
        let mut f2 = pin!(svc.call(r2));
        // Queued in `call`, before the future is polled; the inner is not called yet.
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(totals(&bulkhead), (1, 1, 1));
        let (count, waker) = count_waker();
        assert!(
            f2.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        assert!(format!("{f2:?}").contains("waiting for a permit"));
        tx1.send(1).unwrap();
        assert!(matches!(poll(f1.as_mut()), Poll::Ready(Ok(1))));
        assert_eq!(woken(&count), 1, "the release woke the waiting response");
        // Granted: the inner service is called, the permit held meanwhile.
        assert!(poll(f2.as_mut()).is_pending());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(totals(&bulkhead), (1, 0, 1));
        tx2.send(2).unwrap();
        assert!(matches!(poll(f2.as_mut()), Poll::Ready(Ok(2))));
        assert_eq!(totals(&bulkhead), (0, 0, 1));
    }

    #[test]
    fn a_response_future_dropped_while_waiting_leaves_and_passes_on() {
        let (bulkhead, mut svc, calls, a) = setup(false);
        let (r1, tx1) = req(a);
        let mut f1 = pin!(svc.call(r1));
        // Dropped unpolled, while queued: it leaves the queue.
        let (r2, _tx2) = req(a);
        drop(svc.call(r2));
        assert_eq!(totals(&bulkhead), (1, 0, 1));
        // Dropped after it was granted, before it noticed: the permit goes to the next.
        let (r3, _tx3) = req(a);
        let f3 = svc.call(r3);
        let (r4, tx4) = req(a);
        let mut f4 = Box::pin(svc.call(r4));
        assert!(poll(f4.as_mut()).is_pending());
        tx1.send(1).unwrap();
        assert!(matches!(poll(f1.as_mut()), Poll::Ready(Ok(1))));
        assert_eq!(
            totals(&bulkhead),
            (1, 1, 1),
            "f3 holds the permit, f4 waits"
        );
        drop(f3);
        assert!(poll(f4.as_mut()).is_pending());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "f3's request never reached the inner"
        );
        assert_eq!(totals(&bulkhead), (1, 0, 1));
        // Dropped while its inner call runs: the permit is released.
        drop(tx4);
        drop(f4);
        assert_eq!(totals(&bulkhead), (0, 0, 1));
        // The next call runs at once, the one after queues.
        let (r5, _tx5) = req(a);
        let _f5 = svc.call(r5);
        let (r6, _tx6) = req(a);
        let _f6 = svc.call(r6);
        let m = bulkhead.partition("a").unwrap().metrics();
        assert_eq!((m.in_flight, m.queued), (1, 1));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    /// Like tower's `ConcurrencyLimit`: `poll_ready` reserves one of the shared slots for the
    /// next `call` (a clone starts without one), and the response gives it back.
    #[derive(Debug)]
    struct Reserving {
        free: Arc<AtomicUsize>,
        reserved: bool,
        calls: Arc<AtomicUsize>,
    }

    impl Clone for Reserving {
        fn clone(&self) -> Self {
            Reserving {
                free: Arc::clone(&self.free),
                reserved: false,
                calls: Arc::clone(&self.calls),
            }
        }
    }

    impl Service<Req> for Reserving {
        type Response = u32;
        type Error = BoxError;
        type Future = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            if !self.reserved {
                // Nothing wakes a waiter here: the tests poll by hand.
                let taken = self
                    .free
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                if taken.is_err() {
                    return Poll::Pending;
                }
                self.reserved = true;
            }
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Req) -> Self::Future {
            assert!(self.reserved, "`call` without a ready `poll_ready`");
            self.reserved = false;
            self.calls.fetch_add(1, Ordering::SeqCst);
            let free = Arc::clone(&self.free);
            Box::pin(async move {
                let answer = req.answer.await.map_err(|_| "dropped".into());
                free.fetch_add(1, Ordering::SeqCst);
                answer
            })
        }
    }

    /// README, Partitions: `PartitionedLayer` "waits for the permit in the response future".
    /// The request it then sends goes to the inner service `poll_ready` readied, so what that
    /// readiness reserved is the request's own: over an inner service with one slot, a queued
    /// request runs once granted, instead of waiting, holding the partition permit, for the
    /// slot its idle parent service reserved. The next `poll_ready` readies the parent again.
    #[test]
    fn a_queued_request_calls_the_inner_service_poll_ready_readied() {
        let bulkhead = PartitionedBulkhead::builder(1)
            .partition("a", 0)
            .build()
            .unwrap();
        let a = bulkhead.partition("a").unwrap();
        let inner = Reserving {
            free: Arc::new(AtomicUsize::new(1)),
            reserved: false,
            calls: Arc::new(AtomicUsize::new(0)),
        };
        let (free, calls) = (Arc::clone(&inner.free), Arc::clone(&inner.calls));
        let mut svc = PartitionedLayer::new(bulkhead.clone(), |r: &Req| r.id).layer(inner);
        let cx = &mut Context::from_waker(Waker::noop());

        // Another holder (a batch job, another service) has the only permit.
        let held = a.try_acquire_owned().unwrap();
        assert!(matches!(svc.poll_ready(cx), Poll::Ready(Ok(()))));
        assert_eq!(
            free.load(Ordering::SeqCst),
            0,
            "readiness reserved the slot"
        );
        let (r1, tx1) = req(a.id());
        let mut f1 = pin!(svc.call(r1));
        assert!(f1.as_mut().poll(cx).is_pending());
        assert_eq!(
            (totals(&bulkhead), calls.load(Ordering::SeqCst)),
            ((1, 1, 1), 0)
        );

        // Granted: the request is sent at once, on the slot `poll_ready` reserved.
        drop(held);
        assert!(f1.as_mut().poll(cx).is_pending(), "waiting for its answer");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the granted request was sent"
        );
        assert_eq!(totals(&bulkhead), (1, 0, 1));
        tx1.send(7).unwrap();
        assert!(matches!(f1.as_mut().poll(cx), Poll::Ready(Ok(7))));
        assert_eq!(
            (totals(&bulkhead), free.load(Ordering::SeqCst)),
            ((0, 0, 1), 1)
        );

        // The service readies again (its inner is a fresh clone) and the next request runs.
        assert!(matches!(svc.poll_ready(cx), Poll::Ready(Ok(()))));
        let (r2, tx2) = req(a.id());
        let mut f2 = pin!(svc.call(r2));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tx2.send(8).unwrap();
        assert!(matches!(f2.as_mut().poll(cx), Poll::Ready(Ok(8))));
        assert_eq!(
            (totals(&bulkhead), free.load(Ordering::SeqCst)),
            ((0, 0, 1), 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wait_mode_times_out_with_max_wait() {
        let bulkhead = PartitionedBulkhead::builder(1)
            .partition("a", 0)
            .max_wait(Duration::from_millis(30))
            .max_queued(1)
            .build()
            .unwrap();
        let a = bulkhead.partition("a").unwrap().id();
        let mut svc =
            PartitionedLayer::new(bulkhead.clone(), |r: &Req| r.id).layer(Inner::default());
        let (r1, _tx1) = req(a);
        let _f1 = svc.call(r1);
        let (r2, _tx2) = req(a);
        let f2 = svc.call(r2);
        let (r3, _tx3) = req(a);
        let refused = svc
            .call(r3)
            .await
            .unwrap_err()
            .downcast::<Rejected>()
            .unwrap();
        assert_eq!(refused.reason(), Reason::QueueFull);
        let start = tokio::time::Instant::now();
        let refused = f2.await.unwrap_err().downcast::<Rejected>().unwrap();
        assert_eq!(refused.reason(), Reason::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_millis(30));
        assert_eq!(totals(&bulkhead), (1, 0, 1));
    }

    #[test]
    fn layer_services_and_futures_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<PartitionedLayer<fn(&Req) -> PartitionId>>();
        send_sync::<Svc>();
        send::<<Svc as Service<Req>>::Future>();
        let (bulkhead, svc, ..) = setup(false);
        assert!(format!("{svc:?}").contains("PartitionedService"));
        assert_eq!(svc.bulkhead().total(), bulkhead.total());
        let _inner: Inner = svc.into_inner();
    }
}
