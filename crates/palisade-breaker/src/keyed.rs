//! [`KeyedBreakers`]: one breaker per key (host, tenant, endpoint), bounded.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;
use std::time::Duration;

use palisade_core::sync::RwLock;
use palisade_core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use palisade_core::{Clock, FastClock};

use crate::breaker::CircuitBreaker;
use crate::config::{CircuitBreakerBuilder, Listener, MAX_DURATION, Rules};
use crate::error::{ConfigError, KeysExhausted};
use crate::event::Transition;
use crate::window::nanos;

type KeyedListener<K> = Arc<dyn Fn(&K, &Transition) + Send + Sync>;

struct Entry<C: Clock> {
    breaker: Arc<CircuitBreaker<C>>,
    /// Nanoseconds on the breakers' clock of the last `get`, refreshed at most every 1/8 of
    /// the idle timeout so that hot keys don't write a shared line on every call.
    last_used: AtomicU64,
}

struct Shard<K, C: Clock> {
    map: HashMap<K, Entry<C>>,
    last_sweep: u64,
}

/// One [`CircuitBreaker`] per key, created on first use from a template, with a hard cap on
/// the number of keys.
///
/// Memory stays bounded whatever keys callers invent: at most `max_keys` breakers exist. A key
/// is evicted only when it has been unused for at least `idle_timeout` (up to 1/8 more), is held
/// by nobody (no permit, no `Arc` outside the set), and its breaker holds nothing a future call
/// needs: it is closed or half-open, or open with its open duration over (the next call would
/// probe anyway). So eviction never cuts an open period short or loses a call in flight, and
/// keys that tripped and were abandoned don't pin their places. Manual states (forced open,
/// disabled, metrics-only) are kept until [`remove`](KeyedBreakers::remove)d. Idle keys are
/// swept on insert, a shard at a time at most once per idle timeout (no background task), and
/// on demand with [`evict_idle`](KeyedBreakers::evict_idle).
/// When the set is full and nothing can be evicted, a new key gets [`KeysExhausted`] (the
/// documented policy: the caller decides whether to fail the call or run it unprotected).
///
/// ```
/// use palisade_breaker::{CircuitBreaker, KeyedBreakers};
/// use std::time::Duration;
///
/// let breakers = KeyedBreakers::<String>::builder(CircuitBreaker::builder().consecutive_failures(5))
///     .max_keys(1_000)
///     .idle_timeout(Duration::from_secs(300))
///     .build()?;
/// let api = breakers.get("api.example.com")?;
/// assert!(api.try_acquire().is_ok());
/// assert_eq!(breakers.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct KeyedBreakers<K, C: Clock = FastClock> {
    shards: Box<[RwLock<Shard<K, C>>]>,
    hasher: RandomState,
    template: CircuitBreakerBuilder<C>,
    rules: Rules,
    listener: Option<KeyedListener<K>>,
    max_keys: usize,
    idle: u64,
    len: AtomicUsize,
}

/// Builder of [`KeyedBreakers`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct KeyedBreakersBuilder<K, C: Clock = FastClock> {
    template: CircuitBreakerBuilder<C>,
    listener: Option<KeyedListener<K>>,
    max_keys: usize,
    idle_timeout: Duration,
    shards: usize,
}

impl<K, C: Clock> fmt::Debug for KeyedBreakersBuilder<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakersBuilder")
            .field("template", &self.template)
            .field("max_keys", &self.max_keys)
            .field("idle_timeout", &self.idle_timeout)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

impl<K, C: Clock> KeyedBreakersBuilder<K, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// The most keys held at once, `>= 1`. Default 10 000.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// How long a closed, unheld breaker must go unused before it may be evicted (up to 24 h).
    /// Default 10 minutes.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// The number of independently locked shards, `1..=1024`. Default 16.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// Calls `listener` with the key on every transition of any key's breaker (after the
    /// template's own listener, if it has one), outside any lock.
    pub fn on_transition<F>(mut self, listener: F) -> Self
    where
        F: Fn(&K, &Transition) + Send + Sync + 'static,
    {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Validates every knob (the template's too) and builds the set.
    pub fn build(self) -> Result<KeyedBreakers<K, C>, ConfigError> {
        let rules = self.template.rules()?;
        if self.max_keys == 0 {
            return Err(ConfigError::out_of_range("max_keys", "at least 1", 0));
        }
        if self.idle_timeout.is_zero() || self.idle_timeout > MAX_DURATION {
            return Err(ConfigError::out_of_range(
                "idle_timeout",
                "greater than zero and at most 24h",
                self.idle_timeout,
            ));
        }
        if !(1..=1024).contains(&self.shards) {
            return Err(ConfigError::out_of_range(
                "shards",
                "in [1, 1024]",
                self.shards,
            ));
        }
        let shards = (0..self.shards)
            .map(|_| {
                RwLock::new(Shard {
                    map: HashMap::new(),
                    last_sweep: 0,
                })
            })
            .collect();
        Ok(KeyedBreakers {
            shards,
            hasher: RandomState::new(),
            template: self.template,
            rules,
            listener: self.listener,
            max_keys: self.max_keys,
            idle: nanos(self.idle_timeout),
            len: AtomicUsize::new(0),
        })
    }
}

impl<K, C> KeyedBreakers<K, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Clock,
{
    /// A builder whose breakers are built from `template` (validated by `build`).
    pub fn builder(template: CircuitBreakerBuilder<C>) -> KeyedBreakersBuilder<K, C> {
        KeyedBreakersBuilder {
            template,
            listener: None,
            max_keys: 10_000,
            idle_timeout: Duration::from_secs(600),
            shards: 16,
        }
    }

    /// The breaker for `key`, created on first use. Fails only when the set holds `max_keys`
    /// keys and none can be evicted.
    pub fn get<Q>(&self, key: &Q) -> Result<Arc<CircuitBreaker<C>>, KeysExhausted>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let index = self.shard_of(key);
        let now = self.template.clock.now().as_nanos();
        if let Some(entry) = self.shards[index].read().map.get(key) {
            self.touch(entry, now);
            return Ok(Arc::clone(&entry.breaker));
        }
        self.insert(index, key, now)
    }

    /// The breaker for `key` if it exists, without creating one.
    pub fn peek<Q>(&self, key: &Q) -> Option<Arc<CircuitBreaker<C>>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let index = self.shard_of(key);
        self.shards[index]
            .read()
            .map
            .get(key)
            .map(|e| Arc::clone(&e.breaker))
    }

    /// Removes `key`'s breaker whatever its state; `true` if it existed. Holders of its `Arc`
    /// keep using it; the next `get` starts a fresh one.
    pub fn remove<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let index = self.shard_of(key);
        let removed = self.shards[index].write().map.remove(key).is_some();
        if removed {
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
        removed
    }

    /// The number of keys held.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cap on keys.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Evicts every evictable key now (see the type's docs); returns how
    /// many went.
    pub fn evict_idle(&self) -> usize {
        let now = self.template.clock.now().as_nanos();
        (0..self.shards.len())
            .map(|i| self.sweep(&mut self.shards[i].write(), now))
            .sum()
    }

    fn shard_of<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        (self.hasher.hash_one(key) % self.shards.len() as u64) as usize
    }

    fn touch(&self, entry: &Entry<C>, now: u64) {
        let last = entry.last_used.load(Ordering::Relaxed);
        if now.saturating_sub(last) > self.idle / 8 {
            entry.last_used.store(now, Ordering::Relaxed);
        }
    }

    fn evictable(&self, entry: &Entry<C>, now: u64) -> bool {
        // `last_used` may lag the last use by up to `idle / 8` (see `touch`): wait that much
        // longer, so that a key is never evicted before it has been idle for the whole timeout.
        Arc::strong_count(&entry.breaker) == 1
            && entry.breaker.forgettable()
            && now.saturating_sub(entry.last_used.load(Ordering::Relaxed))
                >= self.idle.saturating_add(self.idle / 8)
    }

    fn sweep(&self, shard: &mut Shard<K, C>, now: u64) -> usize {
        shard.last_sweep = now;
        let before = shard.map.len();
        shard.map.retain(|_, e| !self.evictable(e, now));
        let evicted = before - shard.map.len();
        if evicted > 0 {
            self.len.fetch_sub(evicted, Ordering::AcqRel);
        }
        evicted
    }

    /// Takes one of the `max_keys` places, `false` if they are all taken.
    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_keys).then_some(n + 1)
            })
            .is_ok()
    }

    #[cold]
    fn insert<Q>(
        &self,
        index: usize,
        key: &Q,
        now: u64,
    ) -> Result<Arc<CircuitBreaker<C>>, KeysExhausted>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        for attempt in 0..2 {
            {
                let mut shard = self.shards[index].write();
                if let Some(entry) = shard.map.get(key) {
                    return Ok(Arc::clone(&entry.breaker));
                }
                if now.saturating_sub(shard.last_sweep) >= self.idle
                    || (attempt == 0 && self.len() >= self.max_keys)
                {
                    self.sweep(&mut shard, now);
                }
                if self.reserve() {
                    // The key's own code runs from here (`Clone`, `Hash`, `Eq`): if it panics,
                    // the guard gives the place back, or every such panic would leak one.
                    let place = Place(&self.len);
                    let key = key.to_owned();
                    let breaker = Arc::new(self.build_breaker(&key));
                    shard.map.insert(
                        key,
                        Entry {
                            breaker: Arc::clone(&breaker),
                            last_used: AtomicU64::new(now),
                        },
                    );
                    std::mem::forget(place);
                    return Ok(breaker);
                }
            }
            if attempt == 0 {
                // Full, and nothing to evict here: sweep the other shards, one lock at a time.
                let freed: usize = (0..self.shards.len())
                    .filter(|&i| i != index)
                    .map(|i| self.sweep(&mut self.shards[i].write(), now))
                    .sum();
                if freed == 0 {
                    break;
                }
            }
        }
        tracing::warn!(
            target: "palisade_breaker",
            max_keys = self.max_keys,
            "keyed circuit breakers full: new key rejected"
        );
        Err(KeysExhausted {
            max_keys: self.max_keys,
        })
    }

    fn build_breaker(&self, key: &K) -> CircuitBreaker<C> {
        let listener: Option<Listener> = match (&self.template.settings.listener, &self.listener) {
            (None, None) => None,
            (own, keyed) => {
                let (own, keyed, key) = (own.clone(), keyed.clone(), key.clone());
                Some(Arc::new(move |t: &Transition| {
                    if let Some(own) = &own {
                        own(t);
                    }
                    if let Some(keyed) = &keyed {
                        keyed(&key, t);
                    }
                }))
            }
        };
        CircuitBreaker::from_parts(
            self.rules,
            self.template.clock.clone(),
            self.template.settings.name.clone(),
            listener,
        )
    }
}

/// One of the `max_keys` places, taken by `reserve`: given back on drop unless forgotten once
/// its key is in the map.
struct Place<'a>(&'a AtomicUsize);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<K, C: Clock> fmt::Debug for KeyedBreakers<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakers")
            .field("len", &self.len.load(Ordering::Relaxed))
            .field("max_keys", &self.max_keys)
            .field("idle_timeout", &Duration::from_nanos(self.idle))
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}
