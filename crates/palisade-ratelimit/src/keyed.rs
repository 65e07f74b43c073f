//! [`KeyedRateLimiter`]: one limit per key (client IP, API key, tenant) in bounded memory.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::time::Duration;

use palisade_core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use palisade_core::sync::{Mutex, RwLock, thread};
use palisade_core::{Clock, FastClock};

use crate::algorithm::Algorithm;
use crate::algorithm::private::Op;
use crate::decision::{Decision, Outcome};
use crate::error::{ConfigError, InsufficientCapacity};
use crate::limiter::{check_jitter, since, unreachable_capacity};
use crate::quota::Quota;
use crate::table::Slots;

const TARGET: &str = "palisade_ratelimit";
const MAX_SHARDS: usize = 1 << 12;
/// The default cap on keys.
pub const DEFAULT_MAX_KEYS: usize = 1 << 20;

/// What a full [`KeyedRateLimiter`] does with a new key once no tracked key is fully
/// replenished (keys that are are evicted first: forgetting them loses nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhenFull {
    /// Refuse the new key's requests ([`Decision::is_keys_full`]) until some key is fully
    /// replenished; `retry_after` is the earliest moment one can be (a lower bound: a key used
    /// since the table last looked may take longer). Never hands out capacity a key still
    /// owes. The default.
    #[default]
    RejectNewKeys,
    /// Evict the key in the new key's shard that is closest to fully replenished (for GCRA,
    /// the one with the earliest theoretical arrival time: the least recently used relative
    /// to its debt), with a `warn` event. That key starts over with full capacity if it comes
    /// back, so it can get up to one extra burst: availability over exactness. Cells its
    /// waiters reserved ahead (`until_key_ready`, a keyed backpressure service) are not taken
    /// back: those waiters still go ahead at their moments, on top of the fresh burst, so a key
    /// evicted with waiters queued gets that much more again.
    EvictClosestToFull,
}

/// A rate limiter per key, in bounded memory: a sharded table (one `RwLock` and hash table per
/// shard) of one algorithm state per key beside the key's 64-bit hash, 16 bytes a slot for a
/// [`Quota`] whatever the key type. The key itself is not stored.
///
/// ```
/// use palisade_ratelimit::{KeyedRateLimiter, Quota};
///
/// let limiter = KeyedRateLimiter::builder(Quota::per_second(1)).max_keys(10_000).build()?;
/// assert!(limiter.check("alice").is_allowed());
/// assert!(!limiter.check("alice").is_allowed());
/// assert!(limiter.check("bob").is_allowed());
/// # Ok::<(), palisade_ratelimit::ConfigError>(())
/// ```
///
/// A check hashes its key once (the hash picks the shard and the slot, and is what the table
/// stores for the key), takes the shard's read lock and steps the key's state lock-free; only a
/// key's first check takes the write lock.
///
/// **Keys are told apart by their whole 64-bit hash.** Two keys with the same hash are one key
/// to the limiter: together they get what one key gets, a [`refund`](KeyedRateLimiter::refund)
/// or [`remove`](KeyedRateLimiter::remove) of one acts on the other, and
/// [`len`](KeyedRateLimiter::len) counts them once. With the default hasher (SipHash under a
/// random key) the chance that some two of `n` keys tracked at once collide is under
/// `n² / 2⁶⁵` (3 × 10⁻⁸ for a million keys), and a client cannot aim for it; over a long run,
/// about `(new keys × keys tracked) / 2⁶⁴`. With a
/// [`hasher`](KeyedRateLimiterBuilder::hasher) of a fixed seed, a client can aim for it.
///
/// The number of keys never exceeds [`max_keys`](KeyedRateLimiterBuilder::max_keys). When the
/// table is full, a new key first sweeps its shard (and, without waiting, the others) for keys
/// that are fully replenished and drops them; a sweep is skipped while no key of that shard can
/// be replenished yet, and for 100 ms after a sweep that freed under 1/64 of the shard, so a
/// shard costs at most one pass per 100 ms beyond the passes that pay for themselves. If
/// nothing can go, [`WhenFull`] decides. No background task is needed;
/// [`evict_idle`](KeyedRateLimiter::evict_idle) sweeps every shard on demand.
pub struct KeyedRateLimiter<K, A: Algorithm = Quota, C: Clock = FastClock, S = RandomState> {
    shards: Box<[Shard<A>]>,
    hasher: S,
    clock: C,
    base: u64,
    keys: AtomicUsize,
    max_keys: usize,
    when_full: WhenFull,
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    jitter: Duration,
    evicted_idle: AtomicU64,
    sweeps: AtomicU64,
    evicted_owing: AtomicU64,
    rejected_keys: AtomicU64,
    /// Held across a whole [`set_algorithm`](KeyedRateLimiter::set_algorithm): one change walks
    /// every shard before the next starts, so two changes at once leave every shard on the same
    /// algorithm (the one applied last).
    writer: Mutex<()>,
    /// Keys are hashed, never stored (see [Guarantees](crate#guarantees)): the limiter is
    /// `Send` and `Sync` whatever the key type.
    _key: std::marker::PhantomData<fn(&K)>,
}

/// A shard on its own cache lines, so checks on different shards do not share one.
#[repr(align(128))]
struct Shard<A: Algorithm> {
    table: RwLock<Table<A>>,
    /// No key of this shard is fully replenished before this time (a lower bound: checks only
    /// push it later; inserts and refunds lower it).
    next_idle: AtomicU64,
    /// A full table does not sweep this shard before this time: set after a sweep that freed
    /// few keys, so a table whose keys replenish one at a time pays one pass over the shard per
    /// [`SWEEP_COOLDOWN`], not one per new key.
    next_sweep: AtomicU64,
}

/// How long a shard waits after a sweep that freed fewer than 1/[`PRODUCTIVE`] of its keys
/// before a full table sweeps it again.
const SWEEP_COOLDOWN: Duration = Duration::from_millis(100);

/// A sweep that frees at least 1/`PRODUCTIVE` of the shard's keys has paid for itself (at most
/// `PRODUCTIVE` keys visited per key freed); the next one may run as soon as a key is idle.
const PRODUCTIVE: usize = 64;

impl<A: Algorithm> Shard<A> {
    /// The earliest time a full table's sweep of this shard may free a key.
    fn sweepable_at(&self) -> u64 {
        self.next_idle
            .load(Ordering::Relaxed)
            .max(self.next_sweep.load(Ordering::Relaxed))
    }
}

/// What a shard's lock guards. Aligned so it starts on the cache lines after the lock word:
/// every check writes the lock word, and only inserts and sweeps write the table's header, so a
/// check on another core reads the header and the algorithm from a line it still holds instead
/// of fetching them again from the core that took the lock last.
#[repr(align(128))]
struct Table<A: Algorithm> {
    algorithm: A,
    entries: Slots<A::State>,
}

/// Counters of a [`KeyedRateLimiter`]'s key table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyedMetrics {
    /// Keys tracked now.
    pub keys: usize,
    /// The cap on keys.
    pub max_keys: usize,
    /// Keys dropped because they were fully replenished (nothing lost).
    pub evicted_idle: u64,
    /// Keys dropped by [`WhenFull::EvictClosestToFull`] while they still owed capacity.
    pub evicted_owing: u64,
    /// Requests of new keys refused by [`WhenFull::RejectNewKeys`].
    pub rejected_new_keys: u64,
    /// Passes over a shard looking for replenished keys (by a full table, or
    /// [`evict_idle`](KeyedRateLimiter::evict_idle)).
    pub sweeps: u64,
}

impl<K: Hash + Eq, A: Algorithm> KeyedRateLimiter<K, A, FastClock, RandomState> {
    /// A builder for a keyed limiter running `algorithm` for each key.
    pub fn builder(algorithm: A) -> KeyedRateLimiterBuilder<K, A, FastClock, RandomState> {
        KeyedRateLimiterBuilder {
            algorithm,
            clock: FastClock::new(),
            hasher: RandomState::new(),
            max_keys: DEFAULT_MAX_KEYS,
            when_full: WhenFull::default(),
            shards: None,
            jitter: Duration::ZERO,
            _key: std::marker::PhantomData,
        }
    }
}

impl<K: Hash + Eq> KeyedRateLimiter<K, Quota, FastClock, RandomState> {
    /// A keyed limiter giving each key `quota`, with the default knobs.
    pub fn new(quota: Quota) -> Result<Self, ConfigError> {
        KeyedRateLimiter::builder(quota).build()
    }
}

/// Builds a [`KeyedRateLimiter`]; [`build`](KeyedRateLimiterBuilder::build) validates every
/// knob.
///
/// | knob | default | allowed |
/// |---|---|---|
/// | algorithm | (required) | a valid [`Quota`], [`MultiGcra`](crate::MultiGcra) or [`SlidingWindow`](crate::SlidingWindow) |
/// | [`max_keys`](KeyedRateLimiterBuilder::max_keys) | 2²⁰ (1,048,576) | at least 1 |
/// | [`when_full`](KeyedRateLimiterBuilder::when_full) | [`WhenFull::RejectNewKeys`] | either policy |
/// | [`shards`](KeyedRateLimiterBuilder::shards) | 4 × available cores, rounded up to a power of two | a power of two up to 4096 |
/// | [`clock`](KeyedRateLimiterBuilder::clock) | [`FastClock`] | any [`Clock`] |
/// | [`hasher`](KeyedRateLimiterBuilder::hasher) | `RandomState` (SipHash under random keys: safe for client-chosen keys) | any `BuildHasher` giving distinct keys distinct, well-mixed 64-bit hashes: its hash is the key's identity |
/// | [`wait_jitter`](KeyedRateLimiterBuilder::wait_jitter) | 0 | up to 1 hour |
pub struct KeyedRateLimiterBuilder<K, A, C, S> {
    algorithm: A,
    clock: C,
    hasher: S,
    max_keys: usize,
    when_full: WhenFull,
    shards: Option<usize>,
    jitter: Duration,
    _key: std::marker::PhantomData<fn(K)>,
}

impl<K, A: fmt::Debug, C: fmt::Debug, S> fmt::Debug for KeyedRateLimiterBuilder<K, A, C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimiterBuilder")
            .field("algorithm", &self.algorithm)
            .field("clock", &self.clock)
            .field("max_keys", &self.max_keys)
            .field("when_full", &self.when_full)
            .field("shards", &self.shards)
            .field("wait_jitter", &self.jitter)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq, A: Algorithm, C: Clock, S: BuildHasher> KeyedRateLimiterBuilder<K, A, C, S> {
    /// The most keys tracked at once (a hard cap).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// What a full table does with new keys.
    pub fn when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }

    /// The number of shards (a power of two up to 4096).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// The clock every decision reads.
    pub fn clock<C2: Clock>(self, clock: C2) -> KeyedRateLimiterBuilder<K, A, C2, S> {
        KeyedRateLimiterBuilder {
            algorithm: self.algorithm,
            clock,
            hasher: self.hasher,
            max_keys: self.max_keys,
            when_full: self.when_full,
            shards: self.shards,
            jitter: self.jitter,
            _key: std::marker::PhantomData,
        }
    }

    /// The key hasher. Its 64-bit hash is the key's identity in the table (two keys with one
    /// hash share one limit), so it must give distinct keys distinct, well-mixed 64-bit hashes:
    /// not an identity hash, nor one whose output is 32 bits wide. When clients choose the
    /// keys, keep one with a random seed, like the default: with a fixed seed, or a hash that
    /// is easy to invert, a client can make its key share a victim's limit and spend it.
    pub fn hasher<S2: BuildHasher>(self, hasher: S2) -> KeyedRateLimiterBuilder<K, A, C, S2> {
        KeyedRateLimiterBuilder {
            algorithm: self.algorithm,
            clock: self.clock,
            hasher,
            max_keys: self.max_keys,
            when_full: self.when_full,
            shards: self.shards,
            jitter: self.jitter,
            _key: std::marker::PhantomData,
        }
    }

    /// Extra random delay, up to this much, for each waiter of
    /// [`until_key_ready`](KeyedRateLimiter::until_key_ready) that had to wait.
    pub fn wait_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// The limiter, or the first knob out of range.
    pub fn build(self) -> Result<KeyedRateLimiter<K, A, C, S>, ConfigError> {
        let algorithm = self.algorithm.validated()?;
        if self.max_keys == 0 {
            return Err(ConfigError::out_of_range("max_keys", "at least 1", 0));
        }
        let shards = match self.shards {
            Some(n) if n == 0 || n > MAX_SHARDS || !n.is_power_of_two() => {
                return Err(ConfigError::out_of_range(
                    "shards",
                    format!("a power of two from 1 to {MAX_SHARDS}"),
                    n,
                ));
            }
            Some(n) => n,
            None => {
                let cores = std::thread::available_parallelism().map_or(1, usize::from);
                (cores * 4).next_power_of_two().min(MAX_SHARDS)
            }
        };
        check_jitter(self.jitter)?;
        let shards = (0..shards)
            .map(|_| Shard {
                table: RwLock::new(Table {
                    algorithm: algorithm.clone(),
                    entries: Slots::new(A::empty_state),
                }),
                next_idle: AtomicU64::new(0),
                next_sweep: AtomicU64::new(0),
            })
            .collect();
        Ok(KeyedRateLimiter {
            shards,
            hasher: self.hasher,
            base: self.clock.now().as_nanos(),
            clock: self.clock,
            keys: AtomicUsize::new(0),
            max_keys: self.max_keys,
            when_full: self.when_full,
            jitter: self.jitter,
            evicted_idle: AtomicU64::new(0),
            sweeps: AtomicU64::new(0),
            evicted_owing: AtomicU64::new(0),
            rejected_keys: AtomicU64::new(0),
            writer: Mutex::new(()),
            _key: std::marker::PhantomData,
        })
    }
}

impl<K, A, C, S> KeyedRateLimiter<K, A, C, S>
where
    K: Hash + Eq,
    A: Algorithm,
    C: Clock,
    S: BuildHasher,
{
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        since(&self.clock, self.base)
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Shard<A> {
        // Bits 40.. pick the shard: the table indexes its slots by the low bits, so the slot
        // index is independent of the shard.
        &self.shards[(hash >> 40) as usize & (self.shards.len() - 1)]
    }

    /// Takes one cell from `key`'s limit if it is free now.
    #[inline]
    pub fn check<Q>(&self, key: &Q) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.run(key, 1, Op::Check)
            .unwrap_or_else(|_| unreachable_capacity())
    }

    /// Takes `n` cells from `key`'s limit if they are all free now.
    #[inline]
    pub fn check_n<Q>(&self, key: &Q, n: u32) -> Result<Decision, InsufficientCapacity>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.run(key, n, Op::Check)
    }

    /// What [`check_n`](KeyedRateLimiter::check_n) would say now, changing nothing (an unknown
    /// key is not added).
    pub fn peek_n<Q>(&self, key: &Q, n: u32) -> Result<Decision, InsufficientCapacity>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.run(key, n, Op::Peek)
    }

    /// Gives back `n` cells `key` took earlier (never above full capacity). Refund only cells
    /// an allowed check of yours took: the limiter cannot tell whose cells come back. A key no
    /// longer tracked has nothing to give back to.
    pub fn refund<Q>(&self, key: &Q, n: u32)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        let table = shard.table.read();
        if let Some(state) = table.entries.find(hash) {
            let now = self.now();
            table.algorithm.refund(state, now, n);
            shard
                .next_idle
                .fetch_min(table.algorithm.idle_at(state, now), Ordering::Relaxed);
        }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn reserve<Q>(
        &self,
        key: &Q,
        n: u32,
        max_wait: Duration,
    ) -> Result<(Decision, u64), InsufficientCapacity>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let max_wait = u64::try_from(max_wait.as_nanos()).unwrap_or(u64::MAX);
        let (decision, now) = self.run_at(key, n, Op::Reserve { max_wait })?;
        Ok((decision, now + decision.reset_after))
    }

    /// Gives back a reservation of `n` of `key`'s cells that left its state at `end`.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn undo<Q>(&self, key: &Q, n: u32, end: u64)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        let table = shard.table.read();
        if let Some(state) = table.entries.find(hash) {
            let now = self.now();
            table.algorithm.undo(state, now, n, end);
            shard
                .next_idle
                .fetch_min(table.algorithm.idle_at(state, now), Ordering::Relaxed);
        }
    }

    #[inline(always)]
    fn run<Q>(&self, key: &Q, n: u32, op: Op) -> Result<Decision, InsufficientCapacity>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.run_at(key, n, op).map(|(decision, _)| decision)
    }

    /// One step on `key`'s state, with the time it was taken at.
    ///
    /// Always inlined: returned from a call, the decision goes through memory in 8-byte stores
    /// that the caller reads back 16 bytes at a time, which the CPU cannot forward (a stall of
    /// a few nanoseconds on every check).
    #[inline(always)]
    fn run_at<Q>(&self, key: &Q, n: u32, op: Op) -> Result<(Decision, u64), InsufficientCapacity>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        let now = self.now();
        {
            let table = shard.table.read();
            if let Some(state) = table.entries.find(hash) {
                return table.algorithm.step(state, now, n, op).map(|d| (d, now));
            }
            if op == Op::Peek {
                if self.when_full == WhenFull::RejectNewKeys && self.len() >= self.max_keys {
                    // What the first check would get if no sweep can free a slot now.
                    let next_idle = self.next_idle();
                    if next_idle > now {
                        return Ok((keys_full(table.algorithm.capacity(), next_idle - now), now));
                    }
                }
                return table
                    .algorithm
                    .step(&table.algorithm.new_state(now), now, n, op)
                    .map(|d| (d, now));
            }
        }
        self.insert(shard, hash, now, n, op).map(|d| (d, now))
    }

    #[cold]
    fn insert(
        &self,
        shard: &Shard<A>,
        hash: u64,
        now: u64,
        n: u32,
        op: Op,
    ) -> Result<Decision, InsufficientCapacity> {
        let mut table = shard.table.write();
        if let Some(state) = table.entries.find(hash) {
            return table.algorithm.step(state, now, n, op);
        }
        let state = table.algorithm.new_state(now);
        // Refuse an impossible request before it takes a slot.
        table.algorithm.step(&state, now, n, Op::Peek)?;
        let owed = if self.take_slot() {
            0
        } else if let Some(owed) = self.make_room(shard, &mut table, now) {
            owed
        } else {
            self.rejected_keys.fetch_add(1, Ordering::Relaxed);
            // The earliest moment any shard's sweep could free a slot (each shard's bound is a
            // lower bound: keys used since it was computed may take longer).
            let wait = self.next_idle().saturating_sub(now);
            let refused = keys_full(table.algorithm.capacity(), wait);
            // With the lock released, like the eviction warning: the subscriber may check this
            // limiter.
            drop(table);
            tracing::debug!(target: TARGET, keys = self.max_keys, "keyed rate limiter full: refused a new key");
            return Ok(refused);
        };
        let decision = table.algorithm.step(&state, now, n, op)?;
        shard
            .next_idle
            .fetch_min(table.algorithm.idle_at(&state, now), Ordering::Relaxed);
        table.entries.insert(hash, state);
        drop(table);
        if owed > 0 {
            // Once the slot is the new key's and the lock is released: a subscriber that
            // panics (or checks this limiter) can then leave no slot counted without its key.
            tracing::warn!(
                target: TARGET,
                owed_ns = owed,
                max_keys = self.max_keys,
                "keyed rate limiter full: evicted the key closest to full capacity; it may get an extra burst"
            );
        }
        Ok(decision)
    }

    /// The earliest moment a full table's sweep of any shard could free a key (a lower bound).
    fn next_idle(&self) -> u64 {
        self.shards
            .iter()
            .map(Shard::sweepable_at)
            .min()
            .unwrap_or(u64::MAX)
    }

    fn take_slot(&self) -> bool {
        self.keys
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_keys).then_some(n + 1)
            })
            .is_ok()
    }

    /// Frees a slot for a new key in `own` (whose write lock the caller holds): sweeps it and,
    /// without blocking, the other shards; then applies the [`WhenFull`] policy. Returns
    /// `None` if the caller owns no slot, else what the key evicted for it still owed (0 if
    /// none was, or it owed nothing).
    fn make_room(&self, own: &Shard<A>, table: &mut Table<A>, now: u64) -> Option<u64> {
        if self.sweep(own, table, now) > 0 && self.take_slot() {
            return Some(0);
        }
        for other in self.shards.iter().filter(|s| !std::ptr::eq(*s, own)) {
            if other.sweepable_at() > now {
                continue;
            }
            // Never block on a second shard while holding one: try, and skip it if busy.
            if let Some(mut other_table) = other.table.try_write()
                && self.sweep(other, &mut other_table, now) > 0
                && self.take_slot()
            {
                return Some(0);
            }
        }
        match self.when_full {
            WhenFull::RejectNewKeys => None,
            WhenFull::EvictClosestToFull => Some(self.evict_closest(own, table, now)),
        }
    }

    /// Drops the keys of one shard that are fully replenished; returns how many.
    fn sweep(&self, shard: &Shard<A>, table: &mut Table<A>, now: u64) -> usize {
        if shard.sweepable_at() > now {
            return 0;
        }
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        let before = table.entries.len();
        let mut next_idle = u64::MAX;
        let algorithm = &table.algorithm;
        table.entries.retain(|state| {
            let idle_at = algorithm.idle_at(state, now);
            let keep = idle_at > now;
            if keep {
                next_idle = next_idle.min(idle_at);
            }
            keep
        });
        shard.next_idle.store(next_idle, Ordering::Relaxed);
        let removed = before - table.entries.len();
        let next_sweep = if removed * PRODUCTIVE >= before {
            0
        } else {
            now.saturating_add(SWEEP_COOLDOWN.as_nanos() as u64)
        };
        shard.next_sweep.store(next_sweep, Ordering::Relaxed);
        if removed > 0 {
            self.keys.fetch_sub(removed, Ordering::Relaxed);
            self.evicted_idle
                .fetch_add(removed as u64, Ordering::Relaxed);
        }
        removed
    }

    /// Evicts the key of `own` closest to full capacity (or, if `own` is empty, of the first
    /// other shard free to lock), keeping its slot for the caller; returns what it still owed.
    /// Always makes room: the table is full, so some shard holds a key (or a slot frees up
    /// meanwhile).
    fn evict_closest(&self, own: &Shard<A>, table: &mut Table<A>, now: u64) -> u64 {
        if let Some(owed) = evict_min(table, now) {
            return self.owed(owed);
        }
        // The keys are in other shards. Their locks are only tried: this thread holds `own`'s,
        // and blocking on another's could deadlock with a thread doing the same the other way.
        // A shard is held only briefly (by a check, or by an insert that evicts from its own
        // shard or is passing over the others like this one, holding an empty shard), so
        // passes over them end with a key evicted, or with a slot freed by a removal.
        loop {
            for other in self.shards.iter().filter(|s| !std::ptr::eq(*s, own)) {
                if let Some(mut other_table) = other.table.try_write()
                    && let Some(owed) = evict_min(&mut other_table, now)
                {
                    return self.owed(owed);
                }
            }
            if self.take_slot() {
                return 0;
            }
            thread::yield_now();
        }
    }

    /// Counts an eviction of a key that still owed `owed`; returns `owed`. (The caller warns
    /// of it once the new key holds the slot and no lock is held.)
    fn owed(&self, owed: u64) -> u64 {
        if owed == 0 {
            // Replenished after all (its shard's sweep was cooling down): nothing lost.
            self.evicted_idle.fetch_add(1, Ordering::Relaxed);
        } else {
            self.evicted_owing.fetch_add(1, Ordering::Relaxed);
        }
        owed
    }

    /// Drops every key that is fully replenished, in every shard (the work a full table does
    /// on its own, done now). Returns how many keys were dropped.
    pub fn evict_idle(&self) -> usize {
        let now = self.now();
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut table = shard.table.write();
            shard.next_idle.store(0, Ordering::Relaxed);
            shard.next_sweep.store(0, Ordering::Relaxed);
            removed += self.sweep(shard, &mut table, now);
        }
        removed
    }

    /// Stops tracking `key`. Returns whether it was tracked. Its next check starts at full
    /// capacity.
    pub fn remove<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        let mut table = self.shard(hash).table.write();
        let removed = table.entries.remove(hash);
        if removed {
            self.keys.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Switches every key to `algorithm`, keeping each key's accounting (see
    /// [`RateLimiter::set_algorithm`](crate::RateLimiter::set_algorithm)). Each shard switches
    /// under its write lock, so every key switches atomically; keys of different shards switch
    /// one shard after another. Changes are serialized: two at once leave every key on the one
    /// applied last. Costs one pass over the keys.
    pub fn set_algorithm(&self, algorithm: A) -> Result<(), ConfigError> {
        let algorithm = algorithm.validated()?;
        let _writer = self.writer.lock();
        self.shards[0]
            .table
            .read()
            .algorithm
            .can_become(&algorithm)?;
        let now = self.now();
        for shard in self.shards.iter() {
            let mut table = shard.table.write();
            let table = &mut *table;
            for state in table.entries.states_mut() {
                table.algorithm.rebase(state, &algorithm, now);
            }
            table.algorithm = algorithm.clone();
            shard.next_idle.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The algorithm in force.
    pub fn algorithm(&self) -> A {
        self.shards[0].table.read().algorithm.clone()
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.keys.load(Ordering::Relaxed)
    }

    /// `true` when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key table's counters.
    pub fn metrics(&self) -> KeyedMetrics {
        KeyedMetrics {
            keys: self.len(),
            max_keys: self.max_keys,
            evicted_idle: self.evicted_idle.load(Ordering::Relaxed),
            evicted_owing: self.evicted_owing.load(Ordering::Relaxed),
            rejected_new_keys: self.rejected_keys.load(Ordering::Relaxed),
            sweeps: self.sweeps.load(Ordering::Relaxed),
        }
    }

    /// The clock decisions read.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn jitter(&self) -> Duration {
        self.jitter
    }
}

impl<K: Hash + Eq, C: Clock, S: BuildHasher> KeyedRateLimiter<K, Quota, C, S> {
    /// Switches every key to `quota` (see [`set_algorithm`](KeyedRateLimiter::set_algorithm)).
    pub fn set_quota(&self, quota: Quota) -> Result<(), ConfigError> {
        self.set_algorithm(quota)
    }
}

/// Removes the key closest to full capacity; returns how much it still owed (ns or counts).
fn evict_min<A: Algorithm>(table: &mut Table<A>, now: u64) -> Option<u64> {
    let Table { algorithm, entries } = table;
    let idle_at = entries.remove_min_by_key(|state| algorithm.idle_at(state, now))?;
    Some(idle_at.saturating_sub(now))
}

fn keys_full(capacity: u32, wait: u64) -> Decision {
    Decision {
        outcome: Outcome::KeysFull,
        slack: 0,
        per_cell: 1,
        capacity: u64::from(capacity),
        reset_after: wait,
        retry_after: wait,
    }
}

impl<K, A: Algorithm, C: Clock, S> fmt::Debug for KeyedRateLimiter<K, A, C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimiter")
            .field("keys", &self.keys.load(Ordering::Relaxed))
            .field("max_keys", &self.max_keys)
            .field("when_full", &self.when_full)
            .field("shards", &self.shards.len())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}
