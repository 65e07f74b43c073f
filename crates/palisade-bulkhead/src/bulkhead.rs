//! [`Bulkhead`]: a concurrency limit with a bounded, disciplined wait queue.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use palisade_core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use palisade_core::sync::{Arc, Mutex};
use palisade_core::{Clock, FastClock};

use crate::adaptive::{LimitAlgorithm, Outcome, Sample};
use crate::config::{BulkheadBuilder, Discipline, MAX_CONCURRENT, Settings};
use crate::error::{ConfigError, Reason, Rejected};
use crate::queue::{Queue, Status, Ticket};

const TARGET: &str = "palisade_bulkhead";

/// Bit 0 of the state word: someone waits in the queue. While it is set, permits go to waiters
/// (under the queue lock) and never to a caller passing by, which keeps the queue fair.
///
/// The protocol rests on one invariant: **while the bit is set, the word shows no free permit**
/// (`available(word) <= 0`). It is set (under the lock, by `enqueue`) only when no permit is
/// free, and while it is set every path that gives permits back hands them to waiters under the
/// lock before any could show in the word: `release_locked` adds a permit to the word only to
/// pay off a debt (up to zero free), and `set_limit` grants new permits to waiters before it adds
/// the rest (a debt they pay off, or what is left once the last waiter cleared the bit). Two
/// things follow: `try_take`, the lock-free fast path, needs only the count (a passer-by finds
/// nothing to take while anyone waits, at no cost to the uncontended path), and while the bit is
/// set only holders of the queue lock change the word (`try_take` finds nothing, `release` takes
/// the lock), so under the lock it can be read and then changed without a compare-and-swap.
const WAITERS: u64 = 1;
/// One permit in the state word: the permits free now are the word shifted right by one, as a
/// signed number (negative after the limit was lowered below what is in flight).
const ONE: u64 = 2;

#[inline]
fn available(word: u64) -> i64 {
    (word as i64) >> 1
}

/// A concurrency limit: at most `max_concurrent` permits are out at once; callers beyond that
/// wait in a bounded queue (or are refused at once), each for at most `max_wait`.
///
/// Cloning is cheap and every clone shares one limit. See the [crate docs](crate) for an
/// example, the knobs and the guarantees.
///
/// The fast path is one compare-and-swap to acquire and one to release, with no lock; the queue
/// is a short `parking_lot` critical section entered only when no permit is free.
pub struct Bulkhead<C: Clock = FastClock> {
    inner: Arc<Inner<C>>,
}

/// Keeps a value on cache lines of its own (128 bytes: two lines, for the adjacent-line
/// prefetcher), so writes to its neighbours (the `Arc`'s counts, rejection counters, the queue
/// lock) don't slow down the threads that only want it.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

pub(crate) struct Inner<C> {
    /// Free permits (signed, shifted left by one) and the [`WAITERS`] bit.
    word: Padded<AtomicU64>,
    /// The limit in force (changed under the queue lock).
    limit: AtomicU32,
    /// Waiters, mirrored from the queue for lock-free reads.
    queued: AtomicUsize,
    waiters: Mutex<Waiters>,
    settings: Settings,
    clock: C,
    rejected_full: AtomicU64,
    rejected_queue_full: AtomicU64,
    rejected_timed_out: AtomicU64,
    /// The limit algorithm of an adaptive bulkhead; finished permits feed it samples.
    adaptive: Option<Mutex<Box<dyn LimitAlgorithm>>>,
}

struct Waiters {
    queue: Queue,
    /// The last time the queue was empty (CoDel), on the bulkhead's clock.
    last_empty: u64,
}

/// A snapshot of a bulkhead's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Permits out now (can exceed `limit` for a while after the limit was lowered).
    pub in_flight: u32,
    /// Callers waiting in the queue now.
    pub queued: usize,
    /// The concurrency limit in force.
    pub limit: u32,
    /// Acquires refused at once because every permit was in use.
    pub rejected_full: u64,
    /// Acquires refused because the queue was full.
    pub rejected_queue_full: u64,
    /// Waiters that gave up after their deadline.
    pub rejected_timed_out: u64,
}

impl Bulkhead<FastClock> {
    /// A bulkhead of `max_concurrent` permits with the default knobs (a FIFO queue as long as
    /// the limit, no wait deadline).
    pub fn new(max_concurrent: u32) -> Result<Bulkhead<FastClock>, ConfigError> {
        Bulkhead::builder(max_concurrent).build()
    }

    /// A builder for a bulkhead of `max_concurrent` permits.
    pub fn builder(max_concurrent: u32) -> BulkheadBuilder<FastClock> {
        BulkheadBuilder::new(max_concurrent)
    }

    /// A builder for an **adaptive** bulkhead: its limit starts at the algorithm's initial
    /// limit and from then on follows the algorithm, fed one [`Sample`] by every permit that is
    /// released (its latency from acquire to release, the permits in flight as it is released,
    /// its own included, and whether it was marked [`Outcome::Dropped`]). The other knobs are
    /// the same as for [`builder`](Bulkhead::builder); `max_queued` defaults to the initial
    /// limit.
    ///
    /// ```
    /// use palisade_bulkhead::{Bulkhead, Gradient2, Outcome};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let algorithm = Gradient2::builder().min_limit(4).max_limit(200).build()?;
    /// let bulkhead = Bulkhead::adaptive(algorithm).max_queued(50).build()?;
    ///
    /// let permit = bulkhead.acquire().await?;
    /// let answer: Result<(), std::io::Error> = Ok(()); // call the dependency here
    /// match answer {
    ///     // Dropping the permit reports its latency as a success.
    ///     Ok(()) => drop(permit),
    ///     // Timeouts and "too busy" answers are the overload signal.
    ///     Err(e) if e.kind() == std::io::ErrorKind::TimedOut => permit.release_as(Outcome::Dropped),
    ///     // Errors that say nothing about capacity are left out.
    ///     Err(_) => permit.release_as(Outcome::Ignored),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn adaptive(algorithm: impl LimitAlgorithm) -> BulkheadBuilder<FastClock> {
        BulkheadBuilder::adaptive(Box::new(algorithm))
    }
}

impl<C: Clock> Clone for Bulkhead<C> {
    fn clone(&self) -> Self {
        Bulkhead {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<C: Clock> fmt::Debug for Bulkhead<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("metrics", &self.metrics())
            .field("max_queued", &self.inner.settings.max_queued)
            .field("max_wait", &self.inner.settings.max_wait)
            .field("discipline", &self.inner.settings.discipline)
            .finish()
    }
}

impl<C: Clock> Bulkhead<C> {
    pub(crate) fn from_settings(
        settings: Settings,
        clock: C,
        adaptive: Option<Box<dyn LimitAlgorithm>>,
    ) -> Bulkhead<C> {
        let limit = settings.max_concurrent;
        let now = clock.now().as_nanos();
        Bulkhead {
            inner: Arc::new(Inner {
                word: Padded(AtomicU64::new(u64::from(limit) * ONE)),
                limit: AtomicU32::new(limit),
                queued: AtomicUsize::new(0),
                waiters: Mutex::new(Waiters {
                    queue: Queue::default(),
                    last_empty: now,
                }),
                settings,
                clock,
                rejected_full: AtomicU64::new(0),
                rejected_queue_full: AtomicU64::new(0),
                rejected_timed_out: AtomicU64::new(0),
                adaptive: adaptive.map(Mutex::new),
            }),
        }
    }

    /// Takes a permit if one is free now and nobody is queued for it; never waits.
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_, C>, Rejected> {
        if self.inner.try_take() {
            Ok(Permit::new(&self.inner))
        } else {
            Err(self.inner.reject(Reason::Full))
        }
    }

    /// [`try_acquire`](Bulkhead::try_acquire), returning a permit that owns a handle to the
    /// bulkhead (`'static`, so it can travel with a response or into a spawned task).
    #[inline]
    pub fn try_acquire_owned(&self) -> Result<OwnedPermit<C>, Rejected> {
        self.try_acquire().map(Permit::into_owned)
    }

    /// Waits for a permit in the queue, by the bulkhead's discipline, at most `max_wait`.
    ///
    /// **Cancel-safe**: dropping the future at any point gives up its place in the queue, and
    /// a permit handed to it in the meantime goes on to the next waiter; nothing leaks.
    pub fn acquire(&self) -> Acquire<'_, C> {
        Acquire {
            inner: &self.inner,
            waiter: Waiter::Idle,
        }
    }

    /// [`try_acquire_owned`](Bulkhead::try_acquire_owned) for work that has not begun: the
    /// permit is [reserved](OwnedPermit::reserved) (no clock read, no sample unless begun).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    #[inline]
    pub(crate) fn try_reserve_owned(&self) -> Result<OwnedPermit<C>, Rejected> {
        if self.inner.try_take() {
            Ok(OwnedPermit::reserved(&self.inner))
        } else {
            Err(self.inner.reject(Reason::Full))
        }
    }

    /// [`acquire`](Bulkhead::acquire), returning an [`OwnedPermit`].
    pub async fn acquire_owned(&self) -> Result<OwnedPermit<C>, Rejected> {
        self.acquire().await.map(Permit::into_owned)
    }

    /// Changes the concurrency limit while permits are out and callers wait. Raising it hands
    /// the new permits to waiters first; lowering it takes permits back as they are released
    /// (nothing in flight is interrupted, and nobody is admitted until in-flight is below the
    /// new limit).
    ///
    /// On an [adaptive](Bulkhead::adaptive) bulkhead the algorithm owns the limit: this sets it
    /// until the next sample moves it again.
    pub fn set_max_concurrent(&self, max_concurrent: u32) -> Result<(), ConfigError> {
        if !(1..=MAX_CONCURRENT).contains(&max_concurrent) {
            return Err(ConfigError::out_of_range(
                "max_concurrent",
                format!("in 1..={MAX_CONCURRENT}"),
                max_concurrent,
            ));
        }
        self.inner.set_limit(max_concurrent, false);
        Ok(())
    }

    /// Whether the limit follows a [`LimitAlgorithm`] (built with
    /// [`adaptive`](Bulkhead::adaptive)).
    pub fn is_adaptive(&self) -> bool {
        self.inner.adaptive.is_some()
    }

    /// The concurrency limit in force.
    pub fn max_concurrent(&self) -> u32 {
        self.inner.limit.load(Ordering::Relaxed)
    }

    /// A snapshot of the counters (each read on its own: under concurrent use they may be
    /// mutually a little stale).
    pub fn metrics(&self) -> Metrics {
        let inner = &*self.inner;
        let limit = inner.limit.load(Ordering::Relaxed);
        let free = available(inner.word.load(Ordering::Relaxed));
        Metrics {
            in_flight: u32::try_from((i64::from(limit) - free).max(0)).unwrap_or(u32::MAX),
            queued: inner.queued.load(Ordering::Relaxed),
            limit,
            rejected_full: inner.rejected_full.load(Ordering::Relaxed),
            rejected_queue_full: inner.rejected_queue_full.load(Ordering::Relaxed),
            rejected_timed_out: inner.rejected_timed_out.load(Ordering::Relaxed),
        }
    }

    /// The clock the bulkhead reads.
    pub fn clock(&self) -> &C {
        &self.inner.clock
    }

    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn inner(&self) -> &Arc<Inner<C>> {
        &self.inner
    }
}

impl<C: Clock> Inner<C> {
    /// One free permit, if there is one. While anyone waits, none is free: every permit
    /// released or added then goes straight to a waiter, under the lock, so a passer-by can't
    /// take one a waiter is owed. (This is why the [`WAITERS`] bit needn't be tested here: the
    /// word shows no free permit while it is set.)
    #[inline]
    fn try_take(&self) -> bool {
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            if available(word) <= 0 {
                return false;
            }
            match self.word.compare_exchange_weak(
                word,
                word.wrapping_sub(ONE),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => word = actual,
            }
        }
    }

    /// Gives one permit back: to the next waiter if any, else to the pool.
    #[inline]
    fn release(&self) {
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            if word & WAITERS != 0 {
                return self.release_to_waiter();
            }
            match self.word.compare_exchange_weak(
                word,
                word.wrapping_add(ONE),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => word = actual,
            }
        }
    }

    /// [`release`](Inner::release) when someone waits: under the queue lock.
    #[cold]
    #[inline(never)]
    fn release_to_waiter(&self) {
        let waker = self.release_locked(&mut self.waiters.lock());
        // Woken after the lock is released, so it doesn't wake into a held lock.
        wake(waker);
    }

    /// Gives one permit back with the queue lock held; returns the waker of the waiter it went
    /// to, for the caller to wake once the lock is released.
    #[must_use = "the waiter handed the permit must be woken"]
    fn release_locked(&self, waiters: &mut Waiters) -> Option<Waker> {
        loop {
            let word = self.word.load(Ordering::Acquire);
            if word & WAITERS == 0 || available(word) < 0 {
                // Nobody waits, or the limit was lowered and this permit pays off the debt.
                // (Without waiters, passers-by may change the word: compare-and-swap.)
                if self
                    .word
                    .compare_exchange(
                        word,
                        word.wrapping_add(ONE),
                        Ordering::Release,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    return None;
                }
                continue;
            }
            // Waiters and no debt: the permit goes straight to one of them. (With the bit set,
            // only lock holders change the word.)
            if let Some(waker) = self.grant(waiters) {
                return waker;
            }
        }
    }

    /// Hands a permit to the next waiter by the discipline and returns its waker (to wake
    /// once the lock is released). Returns `None`, having cleared the [`WAITERS`] bit, if
    /// nobody waits.
    fn grant(&self, waiters: &mut Waiters) -> Option<Option<Waker>> {
        let newest = self.settings.discipline == Discipline::Lifo;
        let granted = waiters.queue.grant_end_deferred(newest);
        self.after_leave(waiters);
        granted
    }

    /// Bookkeeping after a waiter left the queue: the mirror count, CoDel's last-empty time, and
    /// the [`WAITERS`] bit once nobody waits.
    fn after_leave(&self, waiters: &mut Waiters) {
        let len = waiters.queue.len();
        self.queued.store(len, Ordering::Relaxed);
        if len == 0 {
            self.word.fetch_and(!WAITERS, Ordering::Release);
            if matches!(self.settings.discipline, Discipline::CoDel { .. }) {
                waiters.last_empty = self.clock.now().as_nanos();
            }
        }
    }

    /// Takes a permit or joins the queue, under the lock. `Ok(None)`: a permit was taken.
    fn enqueue(
        &self,
        cx: &mut Context<'_>,
    ) -> Result<Option<(Ticket, Option<Duration>)>, Rejected> {
        let mut waiters = self.waiters.lock();
        loop {
            let word = self.word.load(Ordering::Acquire);
            if word & WAITERS == 0 && available(word) > 0 {
                if self
                    .word
                    .compare_exchange(
                        word,
                        word.wrapping_sub(ONE),
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
                {
                    return Ok(None);
                }
                continue;
            }
            let max_queued = self.settings.max_queued;
            if max_queued == 0 || self.settings.max_wait == Some(Duration::ZERO) {
                drop(waiters);
                return Err(self.reject(Reason::Full));
            }
            if waiters.queue.len() >= max_queued {
                drop(waiters);
                return Err(self.reject(Reason::QueueFull));
            }
            if word & WAITERS == 0
                && self
                    .word
                    .compare_exchange(word, word | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            break;
        }
        let wait = self.wait_budget(&mut waiters);
        let ticket = waiters.queue.push(Some(cx.waker().clone()));
        self.queued.store(waiters.queue.len(), Ordering::Relaxed);
        Ok(Some((ticket, wait)))
    }

    /// How long a caller joining the queue now may wait.
    fn wait_budget(&self, waiters: &mut Waiters) -> Option<Duration> {
        let Discipline::CoDel { target, interval } = self.settings.discipline else {
            return self.settings.max_wait;
        };
        let now = self.clock.now().as_nanos();
        if waiters.queue.is_empty() {
            waiters.last_empty = now;
        }
        let standing = now.saturating_sub(waiters.last_empty)
            > u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
        let codel = if standing { target } else { interval };
        Some(self.settings.max_wait.map_or(codel, |max| max.min(codel)))
    }

    /// What a permit taken now records for the limit algorithm (nothing, and no clock read,
    /// without one).
    #[inline]
    fn start(&self) -> Start {
        if self.adaptive.is_none() {
            return Start::default();
        }
        Start::new(self.clock.now().as_nanos())
    }

    /// Releases a permit, then feeds its sample to the limit algorithm, if any.
    #[inline]
    fn finish(&self, start: Start) {
        if let Some(algorithm) = &self.adaptive {
            return self.adapt(algorithm, start);
        }
        self.release();
    }

    /// Releases a permit of an adaptive bulkhead and feeds its sample to the algorithm.
    #[inline(never)]
    fn adapt(&self, algorithm: &Mutex<Box<dyn LimitAlgorithm>>, start: Start) {
        // In flight as the work ends, its own permit included.
        let limit = self.limit.load(Ordering::Relaxed);
        let in_flight = i64::from(limit) - available(self.word.load(Ordering::Relaxed));
        let in_flight = u32::try_from(in_flight.max(1)).unwrap_or(u32::MAX);
        self.release();
        let dropped = match start.outcome() {
            Outcome::Success => false,
            Outcome::Dropped => true,
            Outcome::Ignored => return,
        };
        let rtt = Duration::from_nanos(self.clock.now().as_nanos().saturating_sub(start.at()));
        // The algorithm's lock is held while the limit is set, so limits are applied in the
        // order the algorithm produced them.
        let mut algorithm = algorithm.lock();
        let limit = algorithm.update(Sample::new(rtt, in_flight, dropped));
        // An answer outside the algorithm's bounds is brought back into them (min/max, not
        // `clamp`: a custom algorithm whose bounds changed since the build must not panic here),
        // and never outside what the bulkhead can count.
        let (min, max) = algorithm.bounds();
        let limit = limit.min(max).max(min).clamp(1, MAX_CONCURRENT);
        if limit != self.limit.load(Ordering::Relaxed) {
            self.set_limit(limit, true);
        }
    }

    fn set_limit(&self, limit: u32, adaptive: bool) {
        let mut waiters = self.waiters.lock();
        let old = self.limit.swap(limit, Ordering::Relaxed);
        let delta = i64::from(limit) - i64::from(old);
        // New permits go to waiters first, handed over before any shows in the word: a permit
        // added while the WAITERS bit is set would be free for a passer-by's `try_take`, which
        // reads only the count, and could go to it instead of a waiter (or, taken between a
        // read here and the grant, put one more than the limit in flight).
        let mut wakers = Vec::new();
        let mut granted = 0;
        let word = self.word.load(Ordering::Acquire);
        if delta > 0 && word & WAITERS != 0 {
            // With the bit set and the lock held, nobody else changes the word (see WAITERS),
            // so it shows no free permit, perhaps a debt; the waiters can have the new permits
            // that pay no debt.
            debug_assert!(available(word) <= 0, "a free permit while someone waits");
            let owed = (available(word) + delta).min(delta);
            while granted < owed {
                // `None`: the queue is empty now (its last waiter cleared the bit).
                let Some(waker) = self.grant(&mut waiters) else {
                    break;
                };
                wakers.extend(waker);
                granted += 1;
            }
        }
        // The rest goes to the word: the debt the new permits pay off, a lowered limit's new
        // debt, or the permits left over once the queue emptied (its last waiter cleared the bit
        // first), so the word shows a free permit only with the bit clear. Two's complement:
        // adding a negative number shifted by one subtracts it.
        let rest = delta - granted;
        if rest != 0 {
            self.word
                .fetch_add((rest as u64).wrapping_mul(ONE), Ordering::AcqRel);
        }
        drop(waiters);
        wakers.into_iter().for_each(Waker::wake);
        if adaptive {
            tracing::debug!(target: TARGET, from = old, to = limit, "adaptive bulkhead limit changed");
        } else {
            tracing::info!(target: TARGET, from = old, to = limit, "bulkhead limit changed");
        }
    }

    #[cold]
    fn reject(&self, reason: Reason) -> Rejected {
        let counter = match reason {
            Reason::Full => &self.rejected_full,
            Reason::QueueFull => &self.rejected_queue_full,
            Reason::TimedOut => &self.rejected_timed_out,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let limit = self.limit.load(Ordering::Relaxed);
        tracing::debug!(target: TARGET, reason = reason.as_str(), limit, "bulkhead refused");
        Rejected { reason, limit }
    }

    /// A queued waiter leaves (dropped, or its deadline passed). Returns whether it had been
    /// granted a permit, which it now holds.
    fn leave(&self, ticket: Ticket) -> Option<Status> {
        let mut waiters = self.waiters.lock();
        let status = waiters.queue.remove(ticket);
        if matches!(status, Some(Status::Waiting(_))) {
            self.after_leave(&mut waiters);
        }
        status
    }
}

/// What a permit carries for an adaptive bulkhead's limit algorithm, in one word so a permit
/// stays two words: when it was taken (nanoseconds on the bulkhead's clock, low 62 bits) and
/// how its work ended (top 2 bits). Zero (and never read) without an algorithm.
#[derive(Debug, Clone, Copy, Default)]
struct Start(u64);

impl Start {
    const SHIFT: u32 = 62;
    const AT: u64 = (1 << Start::SHIFT) - 1;
    /// A permit whose work has not begun: it reports [`Outcome::Ignored`], and no time.
    const RESERVED: Start = Start(2 << Start::SHIFT);

    #[inline]
    fn new(at: u64) -> Start {
        // 2^62 ns is 146 years of uptime.
        Start(at.min(Start::AT))
    }

    fn at(self) -> u64 {
        self.0 & Start::AT
    }

    fn outcome(self) -> Outcome {
        match self.0 >> Start::SHIFT {
            0 => Outcome::Success,
            1 => Outcome::Dropped,
            _ => Outcome::Ignored,
        }
    }

    #[inline]
    fn set_outcome(&mut self, outcome: Outcome) {
        let bits: u64 = match outcome {
            Outcome::Success => 0,
            Outcome::Dropped => 1,
            Outcome::Ignored => 2,
        };
        self.0 = (self.0 & Start::AT) | (bits << Start::SHIFT);
    }
}

#[inline]
fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// A permit from a [`Bulkhead`]: the holder is one of the `max_concurrent`. Dropping it
/// releases it (to the next waiter, if any); on an adaptive bulkhead, dropping it reports the
/// work as a success, and [`release_as`](Permit::release_as) reports another [`Outcome`].
#[must_use = "the permit is released as soon as it is dropped"]
pub struct Permit<'a, C: Clock = FastClock> {
    inner: &'a Arc<Inner<C>>,
    start: Start,
}

impl<'a, C: Clock> Permit<'a, C> {
    #[inline]
    fn new(inner: &'a Arc<Inner<C>>) -> Permit<'a, C> {
        Permit {
            inner,
            start: inner.start(),
        }
    }

    /// The same permit, owning a handle to the bulkhead so it is `'static`.
    pub fn into_owned(self) -> OwnedPermit<C> {
        let owned = OwnedPermit {
            inner: Arc::clone(self.inner),
            start: self.start,
        };
        std::mem::forget(self);
        owned
    }

    /// Releases the permit, reporting how its work ended to an adaptive bulkhead's limit
    /// algorithm ([`Outcome::Dropped`] for a timeout or an overload answer,
    /// [`Outcome::Ignored`] to leave it out). Without an algorithm this is a plain drop.
    #[inline]
    pub fn release_as(mut self, outcome: Outcome) {
        self.start.set_outcome(outcome);
    }
}

impl<C: Clock> Drop for Permit<'_, C> {
    #[inline]
    fn drop(&mut self) {
        self.inner.finish(self.start);
    }
}

impl<C: Clock> fmt::Debug for Permit<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

/// A [`Permit`] that owns a handle to its bulkhead: move it into a spawned task or a response
/// body, and the work it guards ends when it is dropped, wherever that is.
#[must_use = "the permit is released as soon as it is dropped"]
pub struct OwnedPermit<C: Clock = FastClock> {
    inner: Arc<Inner<C>>,
    start: Start,
}

impl<C: Clock> OwnedPermit<C> {
    /// A permit the caller has just taken from `inner` (by [`Waiter::poll_acquire`] or
    /// `try_take`) for work that has not begun: it reads no clock, and releasing it reports
    /// nothing to an adaptive bulkhead's algorithm, unless [`begin`](OwnedPermit::begin)
    /// starts the work. A tower service holds one between `poll_ready` and `call`.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    #[inline]
    pub(crate) fn reserved(inner: &Arc<Inner<C>>) -> OwnedPermit<C> {
        OwnedPermit {
            inner: Arc::clone(inner),
            start: Start::RESERVED,
        }
    }

    /// Starts the work the permit guards: its sample's RTT counts from now (the one clock read,
    /// on an adaptive bulkhead only), and it reports `outcome` unless that is changed later.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    #[inline]
    pub(crate) fn begin(&mut self, outcome: Outcome) {
        self.start = self.inner.start();
        self.start.set_outcome(outcome);
    }

    /// Releases the permit, reporting how its work ended to an adaptive bulkhead's limit
    /// algorithm (see [`Permit::release_as`]).
    #[inline]
    pub fn release_as(mut self, outcome: Outcome) {
        self.start.set_outcome(outcome);
    }

    /// Sets the outcome reported when the permit is dropped later.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn set_outcome(&mut self, outcome: Outcome) {
        self.start.set_outcome(outcome);
    }
}

impl<C: Clock> Drop for OwnedPermit<C> {
    #[inline]
    fn drop(&mut self) {
        self.inner.finish(self.start);
    }
}

impl<C: Clock> fmt::Debug for OwnedPermit<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedPermit").finish_non_exhaustive()
    }
}

/// The future of [`Bulkhead::acquire`].
#[must_use = "futures do nothing unless polled"]
pub struct Acquire<'a, C: Clock = FastClock> {
    inner: &'a Arc<Inner<C>>,
    waiter: Waiter,
}

impl<C: Clock> fmt::Debug for Acquire<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("waiter", &self.waiter)
            .finish()
    }
}

impl<'a, C: Clock> Future for Acquire<'a, C> {
    type Output = Result<Permit<'a, C>, Rejected>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let inner = this.inner;
        this.waiter
            .poll_acquire(inner, cx)
            .map_ok(|()| Permit::new(inner))
    }
}

impl<C: Clock> Drop for Acquire<'_, C> {
    fn drop(&mut self) {
        self.waiter.cancel(self.inner);
    }
}

/// One caller's progress towards a permit, polled with its bulkhead: the state of an
/// [`Acquire`] future, and of a tower service waiting in `poll_ready`. The owner must call
/// [`cancel`](Waiter::cancel) when it gives up (both owners do on drop).
#[derive(Default)]
pub(crate) enum Waiter {
    #[default]
    Idle,
    Queued {
        ticket: Ticket,
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
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
    /// Takes a permit (`Ready(Ok)`: the caller now holds one it must release), is refused,
    /// or waits in the queue. Back to idle once ready.
    pub(crate) fn poll_acquire<C: Clock>(
        &mut self,
        inner: &Inner<C>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Rejected>> {
        let Waiter::Queued { ticket, deadline } = self else {
            if inner.try_take() {
                return Poll::Ready(Ok(()));
            }
            return match inner.enqueue(cx) {
                Ok(None) => Poll::Ready(Ok(())),
                Ok(Some((ticket, None))) => {
                    *self = Waiter::Queued {
                        ticket,
                        deadline: None,
                    };
                    Poll::Pending
                }
                Ok(Some((ticket, Some(wait)))) => {
                    // Queued before the timer is made: outside a runtime with time, tokio's
                    // `sleep` panics, and the owner's `cancel` must still find the ticket and
                    // leave the queue (else a ghost waiter takes the next permit for good).
                    *self = Waiter::Queued {
                        ticket,
                        deadline: None,
                    };
                    let sleep = Box::pin(tokio::time::sleep(wait));
                    if let Waiter::Queued { deadline, .. } = self {
                        *deadline = Some(sleep);
                    }
                    // Once more, so the deadline timer registers.
                    self.poll_acquire(inner, cx)
                }
                Err(rejected) => Poll::Ready(Err(rejected)),
            };
        };
        let ticket = *ticket;
        {
            let mut waiters = inner.waiters.lock();
            match waiters.queue.status_mut(ticket) {
                Some(Status::Waiting(waker)) => {
                    if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *waker = Some(cx.waker().clone());
                    }
                }
                Some(Status::Granted) => {
                    waiters.queue.remove(ticket);
                    drop(waiters);
                    *self = Waiter::Idle;
                    return Poll::Ready(Ok(()));
                }
                None => unreachable!("a queued waiter's ticket is live until it leaves"),
            }
        }
        let Some(deadline) = deadline else {
            return Poll::Pending;
        };
        std::task::ready!(deadline.as_mut().poll(cx));
        *self = Waiter::Idle;
        match inner.leave(ticket) {
            // Granted just before the deadline: keep it.
            Some(Status::Granted) => Poll::Ready(Ok(())),
            _ => Poll::Ready(Err(inner.reject(Reason::TimedOut))),
        }
    }

    /// Gives up: leaves the queue, passing on a permit handed over in the meantime.
    pub(crate) fn cancel<C: Clock>(&mut self, inner: &Inner<C>) {
        if let Waiter::Queued { ticket, .. } = std::mem::take(self) {
            let mut waiters = inner.waiters.lock();
            let waker = match waiters.queue.remove(ticket) {
                Some(Status::Waiting(_)) => {
                    inner.after_leave(&mut waiters);
                    None
                }
                // Handed a permit it will never use: pass it on.
                Some(Status::Granted) => inner.release_locked(&mut waiters),
                None => None,
            };
            drop(waiters);
            wake(waker);
        }
    }
}
