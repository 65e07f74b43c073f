//! [`PartitionedBulkhead`]: named shares of one total, each with a guaranteed minimum, borrowing
//! capacity the others leave idle.

mod builder;
#[cfg(feature = "tower")]
mod service;
mod state;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use palisade_core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use palisade_core::sync::{Arc, Mutex};
use palisade_core::{Clock, FastClock};

use self::state::State;
use crate::bulkhead::Metrics;
use crate::config::{Discipline, MAX_CONCURRENT};
use crate::error::{ConfigError, Reason, Rejected};
use crate::queue::{Status, Ticket};

pub use self::builder::{MAX_PARTITIONS, PartitionedBulkheadBuilder};
#[cfg(feature = "tower")]
pub use self::service::{PartitionedLayer, PartitionedResponseFuture, PartitionedService};

const TARGET: &str = "palisade_bulkhead";

/// One concurrency limit, `total`, shared by named partitions: each partition is guaranteed a
/// minimum share, may borrow what the others leave idle up to its own cap, and gets its
/// minimum back first when it needs it.
///
/// Use it where one dependency serves several kinds of traffic and one kind must not starve
/// the others: interactive requests and batch jobs, tenants, priorities. A plain
/// [`Bulkhead`](crate::Bulkhead) per kind wastes what an idle kind leaves unused; one shared
/// bulkhead lets a burst of one kind take every permit.
///
/// ```
/// use palisade_bulkhead::{PartitionedBulkhead, Reason};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // 10 permits: interactive is guaranteed 6; batch is guaranteed 2 and never holds more than 4.
/// let bulkhead = PartitionedBulkhead::builder(10)
///     .partition("interactive", 6)
///     .partition_with_max("batch", 2, 4)
///     .build()?;
/// let interactive = bulkhead.partition("interactive").expect("declared above");
/// let batch = bulkhead.partition("batch").expect("declared above");
///
/// // While interactive is idle, batch borrows up to its cap.
/// let jobs: Vec<_> = (0..4).map(|_| batch.try_acquire()).collect::<Result<_, _>>()?;
/// assert_eq!(batch.try_acquire().unwrap_err().reason(), Reason::Full);
/// // Interactive still has its 6 at once: batch's cap keeps them free.
/// let request = interactive.acquire().await?;
/// assert_eq!(bulkhead.metrics().in_flight, 5);
/// # drop((jobs, request));
/// # Ok(())
/// # }
/// ```
///
/// # Admission
///
/// A caller of partition `p` gets a permit at once iff all of these hold:
///
/// - fewer than `total` permits are out, over all partitions;
/// - `p` holds fewer than its `max`;
/// - nobody of `p` is queued (nobody barges past its own partition's waiters);
/// - `p` holds fewer than its `min`, or no partition below its own `min` has anyone queued
///   (partitions below their minimum are first in line).
///
/// Otherwise [`try_acquire`](Partition::try_acquire) is refused with
/// [`Reason::Full`](crate::Reason::Full) and [`acquire`](Partition::acquire) queues in `p`'s
/// queue (bounded by `max_queued`, for at most `max_wait`).
///
/// Each permit released (or added by [`set_total`](PartitionedBulkhead::set_total), or given
/// back by a waiter that was cancelled after it was granted one) is handed straight to a
/// waiter, while the total has room: first to a partition below its minimum (the one with the
/// lowest `in_flight / min`), else to one below its cap (the lowest `in_flight / max(min, 1)`);
/// ties go to the partition declared first. Within the partition, the
/// [discipline](PartitionedBulkheadBuilder::discipline) picks the waiter (oldest for FIFO and
/// CoDel, newest for LIFO).
///
/// # Guarantees
///
/// - **The total is hard**: never more than `total` permits out over all partitions, and never
///   more than `max` in one partition. The one exception is
///   [`set_total`](PartitionedBulkhead::set_total) lowering the total:
///   it takes no permit back, so until enough come back more than the new total can be out
///   (and admission waits for that).
/// - **Minimums come first**: while a partition below its minimum has a caller waiting, every
///   permit released anywhere goes to a partition below its minimum, never to one at or above
///   its own. So a partition below its minimum waits only for the next releases, never for
///   the others' borrowed work to finish: if it is the only partition below its minimum, it
///   gets the very next permit released anywhere.
/// - **Hard reservation through caps**: if `Σ_{j≠i} max_j ≤ total − min_i` (the others' caps
///   leave `min_i` permits over), partition `i`'s minimum is always free at once: while `i`
///   holds fewer than `min_i`, its `try_acquire` succeeds. (The caps are checked against the
///   total in force; right after the total was lowered, work admitted under the old total can
///   hold the reservation until it finishes.)
/// - **Borrowing**: while the others are idle, a partition gets up to `min(max, total)`.
/// - **Cancel-safe**: dropping an acquire future while it waits leaves the queue; one dropped
///   after it was granted a permit passes the permit on; nothing leaks.
///
/// # One lock
///
/// Every decision reads every partition at once (is anyone below their minimum waiting? who
/// is least served?), so all counts and queues live behind one short
/// `parking_lot` critical section, and acquire and release each take it once. There is no
/// lock-free fast path as in [`Bulkhead`](crate::Bulkhead): a single atomic word cannot say
/// both "the total has room" and "no partition below its minimum waits" without the race that
/// would let a borrower take a permit a starved partition is owed. Wakers are woken after the
/// lock is released. Counters are mirrored in atomics, so [`metrics`](PartitionedBulkhead::metrics)
/// takes no lock.
///
/// Cloning is cheap (an `Arc`), and every clone and every [`Partition`] handle shares the one
/// state.
pub struct PartitionedBulkhead<C: Clock = FastClock> {
    shared: Arc<Shared<C>>,
}

/// A handle to one partition of a [`PartitionedBulkhead`]: acquire permits from its share.
/// Cheap to clone (an `Arc` and an index).
pub struct Partition<C: Clock = FastClock> {
    shared: Arc<Shared<C>>,
    index: u32,
}

/// The number of a partition within its [`PartitionedBulkhead`], in declaration order: a
/// `Copy` name for tower pickers ([`PartitionedLayer`]) and maps. It only means something to
/// the bulkhead that gave it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId(u32);

impl PartitionId {
    /// The partition's position in declaration order, from 0.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// A snapshot of one partition's counters, from [`Partition::metrics`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionMetrics {
    /// The partition's name.
    pub name: std::sync::Arc<str>,
    /// Permits the partition holds now.
    pub in_flight: u32,
    /// Callers waiting in the partition's queue now.
    pub queued: usize,
    /// The guaranteed minimum.
    pub min: u32,
    /// The cap in force: the partition's `max`, or the total if that is lower (a partition
    /// declared without a `max` is capped by the total alone).
    pub max: u32,
    /// Acquires refused at once (the partition at its cap, or the total full).
    pub rejected_full: u64,
    /// Acquires refused because the partition's queue was full.
    pub rejected_queue_full: u64,
    /// Waiters that gave up after their deadline.
    pub rejected_timed_out: u64,
}

struct Shared<C> {
    state: Mutex<State>,
    parts: Box<[Info]>,
    /// The minimums' sum: the lowest total [`PartitionedBulkhead::set_total`] accepts.
    sum_min: u32,
    /// Mirrors of the state, for lock-free metrics.
    total: AtomicU32,
    in_flight: AtomicU32,
    queued: AtomicUsize,
    max_wait: Option<Duration>,
    discipline: Discipline,
    clock: C,
}

/// What a partition is (fixed at build) and its counters.
struct Info {
    /// Immutable after build, so `std`'s `Arc` (there is nothing for loom to model).
    name: std::sync::Arc<str>,
    min: u32,
    /// [`builder::UNCAPPED`] for a partition declared without a `max`.
    max: u32,
    max_queued: usize,
    in_flight: AtomicU32,
    queued: AtomicUsize,
    rejected_full: AtomicU64,
    rejected_queue_full: AtomicU64,
    rejected_timed_out: AtomicU64,
}

/// Wakers collected under the lock, woken after it is released. One inline: the common case
/// (one permit released, one waiter granted) allocates nothing.
#[derive(Default)]
struct Wakers {
    first: Option<Waker>,
    rest: Vec<Waker>,
}

impl Wakers {
    fn add(&mut self, waker: Option<Waker>) {
        let Some(waker) = waker else { return };
        if self.first.is_none() {
            self.first = Some(waker);
        } else {
            self.rest.push(waker);
        }
    }

    fn wake(self) {
        if let Some(waker) = self.first {
            waker.wake();
        }
        self.rest.into_iter().for_each(Waker::wake);
    }
}

/// How [`Shared::start`] went.
enum Start {
    /// A permit was taken; the caller holds it.
    Taken,
    /// Queued, with this much time to wait (`None`: no deadline).
    Queued(Ticket, Option<Duration>),
    Refused(Rejected),
}

impl PartitionedBulkhead<FastClock> {
    /// A builder for a bulkhead of `total` permits; declare its partitions with
    /// [`partition`](PartitionedBulkheadBuilder::partition).
    pub fn builder(total: u32) -> PartitionedBulkheadBuilder<FastClock> {
        PartitionedBulkheadBuilder::new(total)
    }
}

impl<C: Clock> Clone for PartitionedBulkhead<C> {
    fn clone(&self) -> Self {
        PartitionedBulkhead {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C: Clock> fmt::Debug for PartitionedBulkhead<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.shared.parts.iter().map(|i| &*i.name).collect();
        f.debug_struct("PartitionedBulkhead")
            .field("metrics", &self.metrics())
            .field("partitions", &names)
            .field("max_wait", &self.shared.max_wait)
            .field("discipline", &self.shared.discipline)
            .finish()
    }
}

impl<C: Clock> PartitionedBulkhead<C> {
    fn from_config(config: builder::Config, clock: C) -> PartitionedBulkhead<C> {
        let now = clock.now().as_nanos();
        let state = State::new(
            config.total,
            config.parts.iter().map(|&(_, min, max, _)| (min, max)),
            now,
        );
        let sum_min = config.parts.iter().map(|p| p.1).sum();
        let parts = config
            .parts
            .into_iter()
            .map(|(name, min, max, max_queued)| Info {
                name: name.into(),
                min,
                max,
                max_queued,
                in_flight: AtomicU32::new(0),
                queued: AtomicUsize::new(0),
                rejected_full: AtomicU64::new(0),
                rejected_queue_full: AtomicU64::new(0),
                rejected_timed_out: AtomicU64::new(0),
            })
            .collect();
        PartitionedBulkhead {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                parts,
                sum_min,
                total: AtomicU32::new(config.total),
                in_flight: AtomicU32::new(0),
                queued: AtomicUsize::new(0),
                max_wait: config.max_wait,
                discipline: config.discipline,
                clock,
            }),
        }
    }

    /// The partition named `name`, if one was declared (a linear search: look handles up once
    /// and keep them).
    pub fn partition(&self, name: &str) -> Option<Partition<C>> {
        let index = self.shared.parts.iter().position(|i| &*i.name == name)?;
        Some(self.handle(index))
    }

    /// The partition numbered `id`, if this bulkhead has one.
    pub fn partition_by_id(&self, id: PartitionId) -> Option<Partition<C>> {
        (id.index() < self.shared.parts.len()).then(|| self.handle(id.index()))
    }

    /// Every partition, in declaration order.
    pub fn partitions(&self) -> impl ExactSizeIterator<Item = Partition<C>> + '_ {
        (0..self.shared.parts.len()).map(|index| self.handle(index))
    }

    fn handle(&self, index: usize) -> Partition<C> {
        Partition {
            shared: Arc::clone(&self.shared),
            // At most MAX_PARTITIONS.
            index: index as u32,
        }
    }

    /// The total limit in force.
    pub fn total(&self) -> u32 {
        self.shared.total.load(Ordering::Relaxed)
    }

    /// Changes the total while permits are out and callers wait. Raising it hands the new
    /// permits to waiters first (by the same rules as a release); lowering it interrupts
    /// nothing and admits nobody until fewer than the new total are in flight.
    ///
    /// The total must stay in `1..=2^30−1` and at least the sum of the partitions' minimums.
    /// A partition's `max` above the new total is capped by the total; a partition declared
    /// without a `max` may borrow up to the new total.
    pub fn set_total(&self, total: u32) -> Result<(), ConfigError> {
        let shared = &*self.shared;
        let lowest = shared.sum_min.max(1);
        if !(lowest..=MAX_CONCURRENT).contains(&total) {
            return Err(ConfigError::out_of_range(
                "total",
                format!("in {lowest}..={MAX_CONCURRENT} (at least the sum of the minimums)"),
                total,
            ));
        }
        let mut wakers = Wakers::default();
        let old = {
            let mut state = shared.state.lock();
            let old = std::mem::replace(&mut state.total, total);
            shared.total.store(total, Ordering::Relaxed);
            shared.dispatch(&mut state, &mut wakers);
            shared.settled(&state);
            old
        };
        wakers.wake();
        tracing::info!(
            target: TARGET,
            from = old,
            to = total,
            "partitioned bulkhead total changed"
        );
        Ok(())
    }

    /// A snapshot of the whole bulkhead's counters, summed over the partitions (each read on
    /// its own, without the lock: under concurrent use they may be mutually a little stale).
    /// `limit` is the total.
    pub fn metrics(&self) -> Metrics {
        let shared = &*self.shared;
        let sum = |f: fn(&Info) -> &AtomicU64| {
            shared
                .parts
                .iter()
                .map(|i| f(i).load(Ordering::Relaxed))
                .sum()
        };
        Metrics {
            in_flight: shared.in_flight.load(Ordering::Relaxed),
            queued: shared.queued.load(Ordering::Relaxed),
            limit: shared.total.load(Ordering::Relaxed),
            rejected_full: sum(|i| &i.rejected_full),
            rejected_queue_full: sum(|i| &i.rejected_queue_full),
            rejected_timed_out: sum(|i| &i.rejected_timed_out),
        }
    }

    /// The clock the bulkhead reads.
    pub fn clock(&self) -> &C {
        &self.shared.clock
    }
}

impl<C: Clock> Clone for Partition<C> {
    fn clone(&self) -> Self {
        Partition {
            shared: Arc::clone(&self.shared),
            index: self.index,
        }
    }
}

impl<C: Clock> fmt::Debug for Partition<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Partition")
            .field("id", &self.id())
            .field("metrics", &self.metrics())
            .finish()
    }
}

impl<C: Clock> Partition<C> {
    /// The partition's name.
    pub fn name(&self) -> &str {
        &self.info().name
    }

    /// The partition's number, for tower pickers.
    pub fn id(&self) -> PartitionId {
        PartitionId(self.index)
    }

    /// The bulkhead the partition belongs to.
    pub fn bulkhead(&self) -> PartitionedBulkhead<C> {
        PartitionedBulkhead {
            shared: Arc::clone(&self.shared),
        }
    }

    fn info(&self) -> &Info {
        &self.shared.parts[self.index as usize]
    }

    /// Takes a permit if the partition is admitted now (see [`PartitionedBulkhead`]); never
    /// waits. Refused with [`Reason::Full`](crate::Reason::Full).
    pub fn try_acquire(&self) -> Result<PartitionPermit<'_, C>, Rejected> {
        self.shared.try_take(self.index as usize)?;
        Ok(PartitionPermit {
            shared: &self.shared,
            index: self.index,
        })
    }

    /// [`try_acquire`](Partition::try_acquire), returning a permit that owns a handle to the
    /// bulkhead (`'static`, so it can travel with a response or into a spawned task).
    pub fn try_acquire_owned(&self) -> Result<OwnedPartitionPermit<C>, Rejected> {
        self.try_acquire().map(PartitionPermit::into_owned)
    }

    /// Waits for a permit in the partition's queue, at most `max_wait`.
    ///
    /// **Cancel-safe**: dropping the future at any point gives up its place in the queue, and
    /// a permit handed to it in the meantime goes on to the next waiter; nothing leaks.
    pub fn acquire(&self) -> PartitionAcquire<'_, C> {
        PartitionAcquire {
            shared: &self.shared,
            index: self.index,
            waiter: Waiter::Idle,
        }
    }

    /// [`acquire`](Partition::acquire), as a `'static` future returning an
    /// [`OwnedPartitionPermit`].
    pub fn acquire_owned(&self) -> PartitionAcquireOwned<C> {
        PartitionAcquireOwned {
            shared: Arc::clone(&self.shared),
            index: self.index,
            waiter: Waiter::Idle,
        }
    }

    /// A snapshot of the partition's counters (read without the lock).
    pub fn metrics(&self) -> PartitionMetrics {
        let info = self.info();
        PartitionMetrics {
            name: std::sync::Arc::clone(&info.name),
            in_flight: info.in_flight.load(Ordering::Relaxed),
            queued: info.queued.load(Ordering::Relaxed),
            min: info.min,
            max: self.shared.cap(self.index as usize),
            rejected_full: info.rejected_full.load(Ordering::Relaxed),
            rejected_queue_full: info.rejected_queue_full.load(Ordering::Relaxed),
            rejected_timed_out: info.rejected_timed_out.load(Ordering::Relaxed),
        }
    }
}

impl<C: Clock> Shared<C> {
    /// Takes a permit for `p` if it is admitted now.
    fn try_take(&self, p: usize) -> Result<(), Rejected> {
        let mut state = self.state.lock();
        if state.admits(p) {
            state.take(p);
            self.mirror(&state, p);
            return Ok(());
        }
        let limit = state.cap(p);
        drop(state);
        Err(self.reject(p, Reason::Full, limit))
    }

    /// Takes a permit for `p` or joins its queue (with `waker`, if one is known yet).
    fn start(&self, p: usize, waker: Option<&Waker>) -> Start {
        let mut state = self.state.lock();
        if state.admits(p) {
            state.take(p);
            self.mirror(&state, p);
            return Start::Taken;
        }
        let info = &self.parts[p];
        let reason = if info.max_queued == 0 || self.max_wait == Some(Duration::ZERO) {
            Some(Reason::Full)
        } else if state.parts[p].queue.len() >= info.max_queued {
            Some(Reason::QueueFull)
        } else {
            None
        };
        if let Some(reason) = reason {
            let limit = state.cap(p);
            drop(state);
            return Start::Refused(self.reject(p, reason, limit));
        }
        let wait = self.wait_budget(&mut state, p);
        let ticket = state.push(p, waker.cloned());
        self.mirror(&state, p);
        self.settled(&state);
        Start::Queued(ticket, wait)
    }

    /// How long a caller joining `p`'s queue now may wait (the bulkhead's CoDel rule, per
    /// partition).
    fn wait_budget(&self, state: &mut State, p: usize) -> Option<Duration> {
        let Discipline::CoDel { target, interval } = self.discipline else {
            return self.max_wait;
        };
        let now = self.clock.now().as_nanos();
        let part = &mut state.parts[p];
        if part.queue.is_empty() {
            part.last_empty = now;
        }
        let standing = now.saturating_sub(part.last_empty)
            > u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
        let codel = if standing { target } else { interval };
        Some(self.max_wait.map_or(codel, |max| max.min(codel)))
    }

    /// A permit of `p` comes back: handed on by the dispatch rules.
    fn release(&self, p: usize) {
        let mut wakers = Wakers::default();
        {
            let mut state = self.state.lock();
            state.put_back(p);
            self.mirror(&state, p);
            self.dispatch(&mut state, &mut wakers);
            self.settled(&state);
        }
        wakers.wake();
    }

    /// Hands permits to waiters while the total has room and some waiter may take one.
    fn dispatch(&self, state: &mut State, wakers: &mut Wakers) {
        let newest = self.discipline == Discipline::Lifo;
        while let Some(p) = state.next() {
            wakers.add(state.grant(p, newest));
            self.after_leave(state, p);
        }
    }

    /// Bookkeeping after a waiter of `p` left its queue: CoDel's last-empty time, the mirrors.
    fn after_leave(&self, state: &mut State, p: usize) {
        let part = &mut state.parts[p];
        if part.queue.is_empty() && matches!(self.discipline, Discipline::CoDel { .. }) {
            part.last_empty = self.clock.now().as_nanos();
        }
        self.mirror(state, p);
    }

    /// Whether `ticket`'s waiter was granted a permit (it then holds it and has left the
    /// queue); otherwise remembers `waker` for the grant.
    fn poll_granted(&self, p: usize, ticket: Ticket, waker: &Waker) -> bool {
        let mut state = self.state.lock();
        match state.parts[p].queue.status_mut(ticket) {
            Some(Status::Waiting(slot)) => {
                if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *slot = Some(waker.clone());
                }
                false
            }
            Some(Status::Granted) => {
                state.remove(p, ticket);
                true
            }
            None => unreachable!("a queued waiter's ticket is live until it leaves"),
        }
    }

    /// A waiter of `p` leaves at its deadline. Returns its last status (`Granted`: it holds a
    /// permit).
    fn leave(&self, p: usize, ticket: Ticket) -> Option<Status> {
        let mut state = self.state.lock();
        let status = state.remove(p, ticket);
        if matches!(status, Some(Status::Waiting(_))) {
            self.after_leave(&mut state, p);
        }
        self.settled(&state);
        status
    }

    /// A waiter of `p` gives up: leaves the queue, passing on a permit granted in the meantime.
    fn cancel(&self, p: usize, ticket: Ticket) {
        let mut wakers = Wakers::default();
        {
            let mut state = self.state.lock();
            match state.remove(p, ticket) {
                Some(Status::Waiting(_)) => self.after_leave(&mut state, p),
                Some(Status::Granted) => {
                    state.put_back(p);
                    self.mirror(&state, p);
                    self.dispatch(&mut state, &mut wakers);
                }
                None => {}
            }
            self.settled(&state);
        }
        wakers.wake();
    }

    /// Copies `p`'s and the totals' counts to the atomics `metrics` reads.
    fn mirror(&self, state: &State, p: usize) {
        let info = &self.parts[p];
        let part = &state.parts[p];
        info.in_flight.store(part.in_flight, Ordering::Relaxed);
        info.queued.store(part.queue.len(), Ordering::Relaxed);
        self.in_flight.store(state.in_flight, Ordering::Relaxed);
        self.queued.store(state.queued, Ordering::Relaxed);
    }

    /// Checks, in debug builds, that nothing is left to hand out when the lock is released.
    #[inline]
    fn settled(&self, state: &State) {
        debug_assert!(state.settled(), "partition state not settled: {state:?}");
    }

    #[cold]
    fn reject(&self, p: usize, reason: Reason, limit: u32) -> Rejected {
        let info = &self.parts[p];
        let counter = match reason {
            Reason::Full => &info.rejected_full,
            Reason::QueueFull => &info.rejected_queue_full,
            Reason::TimedOut => &info.rejected_timed_out,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            target: TARGET,
            partition = &*info.name,
            reason = reason.as_str(),
            limit,
            "partitioned bulkhead refused"
        );
        Rejected { reason, limit }
    }

    /// The most `p` may hold now, read without the lock (for a rejection after a wait).
    fn cap(&self, p: usize) -> u32 {
        self.parts[p].max.min(self.total.load(Ordering::Relaxed))
    }
}

/// One caller's progress towards a partition's permit: the state of the acquire futures and of
/// the tower response future. The owner calls [`cancel`](Waiter::cancel) when it gives up.
#[derive(Default)]
enum Waiter {
    #[default]
    Idle,
    Queued {
        ticket: Ticket,
        /// When the wait ends, if it has a deadline; the timer is made on the first poll.
        until: Option<tokio::time::Instant>,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    },
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Waiter::Idle => "idle",
            Waiter::Queued { .. } => "queued",
        })
    }
}

impl Waiter {
    fn queued(ticket: Ticket, wait: Option<Duration>) -> Waiter {
        Waiter::Queued {
            ticket,
            until: wait.map(|wait| tokio::time::Instant::now() + wait),
            sleep: None,
        }
    }

    /// Takes a permit of partition `p` (`Ready(Ok)`: the caller now holds one it must
    /// release), is refused, or waits in the queue. Back to idle once ready.
    fn poll_acquire<C: Clock>(
        &mut self,
        shared: &Shared<C>,
        p: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Rejected>> {
        let fresh = matches!(self, Waiter::Idle);
        if fresh {
            match shared.start(p, Some(cx.waker())) {
                Start::Taken => return Poll::Ready(Ok(())),
                Start::Refused(rejected) => return Poll::Ready(Err(rejected)),
                Start::Queued(ticket, wait) => *self = Waiter::queued(ticket, wait),
            }
        }
        let Waiter::Queued {
            ticket,
            until,
            sleep,
        } = self
        else {
            unreachable!("set just above")
        };
        let ticket = *ticket;
        // A waiter that just queued has registered its waker and cannot be granted yet.
        if !fresh && shared.poll_granted(p, ticket, cx.waker()) {
            *self = Waiter::Idle;
            return Poll::Ready(Ok(()));
        }
        let Some(until) = *until else {
            return Poll::Pending;
        };
        let sleep = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        std::task::ready!(sleep.as_mut().poll(cx));
        *self = Waiter::Idle;
        match shared.leave(p, ticket) {
            // Granted just before the deadline: keep it.
            Some(Status::Granted) => Poll::Ready(Ok(())),
            _ => Poll::Ready(Err(shared.reject(p, Reason::TimedOut, shared.cap(p)))),
        }
    }

    /// Gives up: leaves the queue, passing on a permit granted in the meantime.
    fn cancel<C: Clock>(&mut self, shared: &Shared<C>, p: usize) {
        if let Waiter::Queued { ticket, .. } = std::mem::take(self) {
            shared.cancel(p, ticket);
        }
    }
}

/// The future of [`Partition::acquire`].
#[must_use = "futures do nothing unless polled"]
pub struct PartitionAcquire<'a, C: Clock = FastClock> {
    shared: &'a Arc<Shared<C>>,
    index: u32,
    waiter: Waiter,
}

impl<C: Clock> fmt::Debug for PartitionAcquire<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionAcquire")
            .field("partition", &PartitionId(self.index))
            .field("waiter", &self.waiter)
            .finish()
    }
}

impl<'a, C: Clock> Future for PartitionAcquire<'a, C> {
    type Output = Result<PartitionPermit<'a, C>, Rejected>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let (shared, index) = (this.shared, this.index);
        this.waiter
            .poll_acquire(shared, index as usize, cx)
            .map_ok(|()| PartitionPermit { shared, index })
    }
}

impl<C: Clock> Drop for PartitionAcquire<'_, C> {
    fn drop(&mut self) {
        self.waiter.cancel(self.shared, self.index as usize);
    }
}

/// The future of [`Partition::acquire_owned`]: `'static`, with the same cancel-safety as
/// [`PartitionAcquire`].
#[must_use = "futures do nothing unless polled"]
pub struct PartitionAcquireOwned<C: Clock = FastClock> {
    shared: Arc<Shared<C>>,
    index: u32,
    waiter: Waiter,
}

impl<C: Clock> PartitionAcquireOwned<C> {
    /// Takes a permit or joins the queue now, without a waker yet (the tower service queues
    /// in `call`, so the queue keeps the order of calls). `Err`: refused; `Ok(Err(permit))`:
    /// taken at once.
    #[cfg(feature = "tower")]
    fn start(
        shared: &Arc<Shared<C>>,
        index: u32,
    ) -> Result<Result<Self, OwnedPartitionPermit<C>>, Rejected> {
        match shared.start(index as usize, None) {
            Start::Taken => Ok(Err(OwnedPartitionPermit {
                shared: Arc::clone(shared),
                index,
            })),
            Start::Queued(ticket, wait) => Ok(Ok(PartitionAcquireOwned {
                shared: Arc::clone(shared),
                index,
                waiter: Waiter::queued(ticket, wait),
            })),
            Start::Refused(rejected) => Err(rejected),
        }
    }
}

impl<C: Clock> fmt::Debug for PartitionAcquireOwned<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionAcquireOwned")
            .field("partition", &PartitionId(self.index))
            .field("waiter", &self.waiter)
            .finish()
    }
}

impl<C: Clock> Future for PartitionAcquireOwned<C> {
    type Output = Result<OwnedPartitionPermit<C>, Rejected>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let index = this.index;
        this.waiter
            .poll_acquire(&this.shared, index as usize, cx)
            .map_ok(|()| OwnedPartitionPermit {
                shared: Arc::clone(&this.shared),
                index,
            })
    }
}

impl<C: Clock> Drop for PartitionAcquireOwned<C> {
    fn drop(&mut self) {
        self.waiter.cancel(&self.shared, self.index as usize);
    }
}

/// A permit from a [`Partition`]: the holder is one of the total and one of its partition's
/// share. Dropping it releases it (to a waiter, by the dispatch rules of
/// [`PartitionedBulkhead`]).
#[must_use = "the permit is released as soon as it is dropped"]
pub struct PartitionPermit<'a, C: Clock = FastClock> {
    shared: &'a Arc<Shared<C>>,
    index: u32,
}

impl<C: Clock> PartitionPermit<'_, C> {
    /// The same permit, owning a handle to the bulkhead so it is `'static`.
    pub fn into_owned(self) -> OwnedPartitionPermit<C> {
        let owned = OwnedPartitionPermit {
            shared: Arc::clone(self.shared),
            index: self.index,
        };
        std::mem::forget(self);
        owned
    }

    /// The partition the permit belongs to.
    pub fn partition_id(&self) -> PartitionId {
        PartitionId(self.index)
    }
}

impl<C: Clock> Drop for PartitionPermit<'_, C> {
    fn drop(&mut self) {
        self.shared.release(self.index as usize);
    }
}

impl<C: Clock> fmt::Debug for PartitionPermit<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionPermit")
            .field("partition", &PartitionId(self.index))
            .finish()
    }
}

/// A [`PartitionPermit`] that owns a handle to its bulkhead: move it into a spawned task or a
/// response body, and the work it guards ends when it is dropped, wherever that is.
#[must_use = "the permit is released as soon as it is dropped"]
pub struct OwnedPartitionPermit<C: Clock = FastClock> {
    shared: Arc<Shared<C>>,
    index: u32,
}

impl<C: Clock> OwnedPartitionPermit<C> {
    /// The partition the permit belongs to.
    pub fn partition_id(&self) -> PartitionId {
        PartitionId(self.index)
    }
}

impl<C: Clock> Drop for OwnedPartitionPermit<C> {
    fn drop(&mut self) {
        self.shared.release(self.index as usize);
    }
}

impl<C: Clock> fmt::Debug for OwnedPartitionPermit<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedPartitionPermit")
            .field("partition", &PartitionId(self.index))
            .finish()
    }
}
