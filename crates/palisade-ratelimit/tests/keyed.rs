//! `KeyedRateLimiter` over its public API, on a manual clock: independent keys, the hard cap on
//! keys and what a full table does (idle keys first, then `WhenFull`), `evict_idle`, `remove`,
//! runtime quota changes, borrowed lookups, and a clock past the limiter's 18 years.
//!
//! Which shard a key lands in depends on the hasher. Tests that depend on it either use one
//! shard or the `ByValue` hasher below, which puts key `s << 40 | i` in shard `s`.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use palisade_core::ManualClock;
use palisade_ratelimit::{ConfigError, Decision, KeyedMetrics, KeyedRateLimiter, Quota, WhenFull};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn field(err: &ConfigError) -> &'static str {
    match err {
        ConfigError::OutOfRange { field, .. } => field,
        other => panic!("unexpected error {other:?}"),
    }
}

fn allowed(d: Decision) -> Decision {
    assert!(d.is_allowed(), "expected an admission, got {d:?}");
    assert!(!d.is_keys_full());
    d
}

fn refused(d: Decision) -> Decision {
    assert!(!d.is_allowed(), "expected a refusal, got {d:?}");
    assert!(
        !d.is_keys_full(),
        "an over-rate refusal is not keys-full: {d:?}"
    );
    d
}

fn keys_full(d: Decision) -> Decision {
    assert!(
        !d.is_allowed() && d.is_keys_full(),
        "expected keys-full, got {d:?}"
    );
    d
}

/// Hashes a `u64` key to itself, so the test picks the shard (bits 40.. of the hash).
#[derive(Clone, Copy, Debug, Default)]
struct ByValue;

struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl BuildHasher for ByValue {
    type Hasher = Identity;
    fn build_hasher(&self) -> Identity {
        Identity(0)
    }
}

fn in_shard(shard: u64, i: u64) -> u64 {
    (shard << 40) | i
}

/// One shard, `max_keys` keys, `policy`, 10 cells a second (one every 100 ms).
fn one_shard(
    max_keys: usize,
    policy: WhenFull,
) -> (KeyedRateLimiter<String, Quota, ManualClock>, ManualClock) {
    let clock = ManualClock::new();
    let l = KeyedRateLimiter::builder(Quota::per_second(10))
        .max_keys(max_keys)
        .when_full(policy)
        .shards(1)
        .clock(clock.clone())
        .build()
        .unwrap();
    (l, clock)
}

fn by_value(
    shards: usize,
    max_keys: usize,
    policy: WhenFull,
) -> (
    KeyedRateLimiter<u64, Quota, ManualClock, ByValue>,
    ManualClock,
) {
    let clock = ManualClock::new();
    let l = KeyedRateLimiter::builder(Quota::per_second(10))
        .max_keys(max_keys)
        .when_full(policy)
        .shards(shards)
        .hasher(ByValue)
        .clock(clock.clone())
        .build()
        .unwrap();
    (l, clock)
}

fn metrics<K: std::hash::Hash + Eq, S: BuildHasher>(
    l: &KeyedRateLimiter<K, Quota, ManualClock, S>,
) -> KeyedMetrics {
    l.metrics()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn keys_are_limited_independently() {
    let clock = ManualClock::new();
    let l = KeyedRateLimiter::builder(Quota::per_second(2))
        .clock(clock.clone())
        .build()
        .unwrap();
    assert_eq!(allowed(l.check("alice")).remaining(), 1);
    assert_eq!(allowed(l.check("alice")).remaining(), 0);
    let d = refused(l.check("alice"));
    assert_eq!((d.retry_after(), d.limit()), (Some(ms(500)), 2));
    assert_eq!(allowed(l.check("bob")).remaining(), 1);
    assert_eq!(allowed(l.check_n("carol", 2).unwrap()).remaining(), 0);
    refused(l.check("carol"));
    allowed(l.check("bob"));
    refused(l.check("bob"));
    assert_eq!(l.len(), 3);
    clock.advance(ms(500));
    allowed(l.check("alice"));
    refused(l.check("alice"));
}

#[test]
fn the_default_constructor_and_metrics() {
    let l = KeyedRateLimiter::<String>::new(Quota::per_second(1)).unwrap();
    assert!(l.is_empty());
    allowed(l.check("a"));
    let m = l.metrics();
    assert_eq!(m.keys, 1);
    assert_eq!(m.max_keys, palisade_ratelimit::DEFAULT_MAX_KEYS);
    assert_eq!(
        (m.evicted_idle, m.evicted_owing, m.rejected_new_keys),
        (0, 0, 0)
    );
    assert!(!format!("{l:?}").is_empty());
}

#[test]
fn builder_validation() {
    let b = || KeyedRateLimiter::<u64>::builder(Quota::per_second(1));
    assert_eq!(field(&b().max_keys(0).build().unwrap_err()), "max_keys");
    for shards in [0, 3, 6, 8_192] {
        let err = b().shards(shards).build().unwrap_err();
        assert_eq!(field(&err), "shards", "{shards}");
        assert!(err.to_string().contains("power of two"), "{err}");
    }
    assert!(b().shards(1).build().is_ok());
    assert!(b().shards(4_096).build().is_ok());
    assert_eq!(
        field(
            &b().wait_jitter(Duration::from_secs(7_200))
                .build()
                .unwrap_err()
        ),
        "wait_jitter"
    );
    assert_eq!(
        field(
            &KeyedRateLimiter::<u64>::builder(Quota::per_second(0))
                .build()
                .unwrap_err()
        ),
        "rate"
    );
}

#[test]
fn max_keys_is_a_hard_cap_when_rejecting_new_keys() {
    let clock = ManualClock::new();
    let l = KeyedRateLimiter::builder(Quota::per_second(10))
        .max_keys(3)
        .clock(clock)
        .build()
        .unwrap();
    let mut admitted = 0;
    for key in 0..100u64 {
        let d = l.check(&key);
        if d.is_allowed() {
            admitted += 1;
        } else {
            keys_full(d);
        }
        assert!(l.len() <= 3, "{} keys", l.len());
    }
    assert_eq!(admitted, 3);
    assert_eq!(l.len(), 3);
    let m = l.metrics();
    assert_eq!((m.keys, m.max_keys, m.rejected_new_keys), (3, 3, 97));
}

#[test]
fn max_keys_is_a_hard_cap_when_evicting() {
    let clock = ManualClock::new();
    let l = KeyedRateLimiter::builder(Quota::per_second(10))
        .max_keys(3)
        .when_full(WhenFull::EvictClosestToFull)
        .clock(clock)
        .build()
        .unwrap();
    for key in 0..100u64 {
        allowed(l.check(&key));
        assert!(l.len() <= 3, "{} keys", l.len());
    }
    let m = l.metrics();
    assert_eq!((m.keys, m.evicted_owing, m.rejected_new_keys), (3, 97, 0));
}

#[test]
fn max_keys_holds_under_threads() {
    for policy in [WhenFull::RejectNewKeys, WhenFull::EvictClosestToFull] {
        let clock = ManualClock::new();
        let l = Arc::new(
            KeyedRateLimiter::builder(Quota::per_second(10))
                .max_keys(16)
                .shards(4)
                .when_full(policy)
                .clock(clock.clone())
                .build()
                .unwrap(),
        );
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let l = Arc::clone(&l);
                let clock = clock.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000u64 {
                        let _ = l.check(&(t * 1_000_000 + i % 300));
                        assert!(l.len() <= 16, "{} keys", l.len());
                        if i % 100 == 0 {
                            clock.advance(ms(30));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(l.len() <= 16);
        assert_eq!(l.metrics().keys, l.len());
        // Once every key is replenished, the table empties completely.
        clock.advance(Duration::from_secs(2));
        l.evict_idle();
        assert_eq!(l.len(), 0, "{policy:?}");
    }
}

#[test]
fn a_full_table_evicts_fully_replenished_keys_first() {
    for policy in [WhenFull::RejectNewKeys, WhenFull::EvictClosestToFull] {
        let (l, clock) = one_shard(2, policy);
        allowed(l.check("a")); // replenished at 100 ms
        clock.advance(ms(50));
        allowed(l.check("b")); // replenished at 150 ms
        clock.advance(ms(50));
        // t = 100 ms: "a" is full again and can go; "b" still owes.
        assert_eq!(allowed(l.check("c")).remaining(), 9);
        let m = l.metrics();
        assert_eq!(
            (m.keys, m.evicted_idle, m.evicted_owing),
            (2, 1, 0),
            "{policy:?}"
        );
        // "b" kept its accounting: 0.5 cell is still owed.
        assert_eq!(allowed(l.check("b")).remaining(), 8);
    }
}

#[test]
fn reject_new_keys_refuses_with_keys_full_until_a_key_is_replenished() {
    let (l, clock) = one_shard(2, WhenFull::RejectNewKeys);
    allowed(l.check("a")); // replenished at 100 ms
    allowed(l.check_n("b", 3).unwrap()); // replenished at 300 ms
    let d = keys_full(l.check("c"));
    assert_eq!(d.retry_after(), Some(ms(100)));
    assert_eq!(d.remaining(), 0);
    assert_eq!(d.limit(), 10);
    assert_eq!(l.len(), 2);
    assert_eq!(l.metrics().rejected_new_keys, 1);
    // An impossible request is still the capacity error, and is not counted.
    assert!(l.check_n("c", 11).is_err());
    assert_eq!(l.metrics().rejected_new_keys, 1);
    clock.advance(ms(99));
    assert_eq!(keys_full(l.check("c")).retry_after(), Some(ms(1)));
    assert_eq!(l.metrics().rejected_new_keys, 2);
    clock.advance(ms(1));
    allowed(l.check("c"));
    assert_eq!(l.len(), 2);
    assert_eq!(l.metrics().evicted_idle, 1);
    // "a" was the one dropped: it comes back as a new key and finds the table full again.
    assert_eq!(keys_full(l.check("a")).retry_after(), Some(ms(100)));
}

#[test]
fn a_refused_new_keys_retry_after_is_never_late_and_exact_once_the_table_looked() {
    let (l, clock) = one_shard(1, WhenFull::RejectNewKeys);
    allowed(l.check("a")); // "a" replenished at 100 ms
    assert_eq!(keys_full(l.check("b")).retry_after(), Some(ms(100)));
    // "a" keeps using its limit: now it is replenished only at 500 ms. The table doesn't scan
    // on every refusal (that would let a flood of new keys cost a scan each), so the hint is
    // a lower bound: never later than the truth.
    allowed(l.check_n("a", 4).unwrap());
    let retry = keys_full(l.check("b")).retry_after().unwrap();
    assert!(retry <= ms(500), "{retry:?}");
    clock.advance(retry);
    // Retrying at the hint makes the table look: the next hint is exact.
    let exact = keys_full(l.check("b")).retry_after().unwrap();
    assert_eq!(retry + exact, ms(500));
    clock.advance(exact);
    allowed(l.check("b"));
}

#[test]
fn a_new_key_in_an_empty_shard_is_told_when_a_key_elsewhere_is_replenished() {
    let (l, clock) = by_value(2, 1, WhenFull::RejectNewKeys);
    let (a, b) = (in_shard(0, 1), in_shard(1, 1));
    allowed(l.check(&a)); // replenished at 100 ms
    let d = keys_full(l.check(&b));
    assert_eq!(d.retry_after(), Some(ms(100)), "{d:?}");
    clock.advance(ms(100));
    // The new key's sweep reaches the other shard and drops the idle key there.
    allowed(l.check(&b));
    assert_eq!(l.len(), 1);
    assert_eq!(metrics(&l).evicted_idle, 1);
}

#[test]
fn a_new_key_sweeps_idle_keys_of_other_shards() {
    let (l, clock) = by_value(4, 2, WhenFull::RejectNewKeys);
    allowed(l.check(&in_shard(1, 1)));
    allowed(l.check(&in_shard(2, 1)));
    clock.advance(ms(100));
    allowed(l.check(&in_shard(3, 1)));
    allowed(l.check(&in_shard(0, 1)));
    let m = metrics(&l);
    assert_eq!((m.keys, m.evicted_idle, m.evicted_owing), (2, 2, 0));
}

#[test]
fn evict_closest_to_full_evicts_the_key_owing_least() {
    let (l, _clock) = one_shard(2, WhenFull::EvictClosestToFull);
    allowed(l.check_n("a", 3).unwrap()); // owes 300 ms
    allowed(l.check("b")); // owes 100 ms
    // Nothing is idle: "b" is closest to full and goes.
    assert_eq!(allowed(l.check("c")).remaining(), 9);
    let m = l.metrics();
    assert_eq!((m.keys, m.evicted_idle, m.evicted_owing), (2, 0, 1));
    // "a" kept its accounting (7 left before this check).
    assert_eq!(allowed(l.check("a")).remaining(), 6);
    // "b" starts over with a full burst (the documented extra burst), evicting "c" (owing
    // 100 ms against "a"'s 400 ms).
    assert_eq!(allowed(l.check("b")).remaining(), 9);
    assert_eq!(l.metrics().evicted_owing, 2);
    assert_eq!(allowed(l.check("a")).remaining(), 5);
    assert_eq!(l.len(), 2);
}

#[test]
fn evict_closest_to_full_reaches_other_shards_when_its_own_is_empty() {
    let (l, _clock) = by_value(2, 1, WhenFull::EvictClosestToFull);
    let (a, b) = (in_shard(0, 7), in_shard(1, 7));
    allowed(l.check_n(&a, 5).unwrap());
    assert_eq!(allowed(l.check(&b)).remaining(), 9);
    let m = metrics(&l);
    assert_eq!((m.keys, m.evicted_owing), (1, 1));
    // "a" was evicted: it starts over.
    assert_eq!(allowed(l.check(&a)).remaining(), 9);
    assert_eq!(metrics(&l).evicted_owing, 2);
}

#[test]
fn an_existing_key_is_never_refused_for_capacity_reasons() {
    for policy in [WhenFull::RejectNewKeys, WhenFull::EvictClosestToFull] {
        let (l, clock) = one_shard(2, policy);
        allowed(l.check_n("a", 10).unwrap());
        allowed(l.check_n("b", 10).unwrap());
        if policy == WhenFull::RejectNewKeys {
            keys_full(l.check("c"));
        }
        let before = l.metrics();
        for _ in 0..50 {
            // Over its rate: an ordinary refusal, never keys-full.
            assert_eq!(refused(l.check("a")).retry_after(), Some(ms(100)));
            refused(l.check("b"));
            clock.advance(ms(100));
            allowed(l.check("a"));
            allowed(l.check("b"));
        }
        // No existing key's check touched the table.
        assert_eq!(l.metrics(), before, "{policy:?}");
    }
}

#[test]
fn evict_idle_drops_exactly_the_replenished_keys() {
    let (l, clock) = one_shard(100, WhenFull::RejectNewKeys);
    allowed(l.check("a")); // replenished at 100 ms
    allowed(l.check_n("b", 5).unwrap()); // at 500 ms
    allowed(l.check_n("c", 10).unwrap()); // at 1 s
    assert_eq!(l.evict_idle(), 0);
    clock.advance(ms(100));
    assert_eq!(l.evict_idle(), 1);
    assert_eq!(l.len(), 2);
    assert_eq!(l.metrics().evicted_idle, 1);
    // "b" was kept with its accounting.
    assert_eq!(allowed(l.check("b")).remaining(), 5);
    // t = 1 s: "b" (replenished at 600 ms) and "c" (at 1 s) both go.
    clock.advance(ms(900));
    assert_eq!(l.evict_idle(), 2);
    assert_eq!(l.len(), 0);
    assert!(l.is_empty());
    assert_eq!(l.metrics().evicted_idle, 3);
}

#[test]
fn remove_forgets_a_key() {
    let (l, _clock) = one_shard(10, WhenFull::RejectNewKeys);
    allowed(l.check_n("a", 10).unwrap());
    allowed(l.check("b"));
    refused(l.check("a"));
    assert!(l.remove("a"));
    assert!(!l.remove("a"));
    assert!(!l.remove("never"));
    assert_eq!(l.len(), 1);
    assert_eq!(allowed(l.check("a")).remaining(), 9);
    assert_eq!(l.len(), 2);
    // remove frees a slot in a full table.
    let (l, _clock) = one_shard(1, WhenFull::RejectNewKeys);
    allowed(l.check("a"));
    keys_full(l.check("b"));
    assert!(l.remove("a"));
    allowed(l.check("b"));
}

#[test]
fn set_quota_keeps_each_keys_accounting() {
    let (l, clock) = one_shard(10, WhenFull::RejectNewKeys);
    // per_second(10) from one_shard; start from 100/s instead.
    l.set_quota(Quota::per_second(100)).unwrap();
    l.check_n("a", 30).unwrap();
    allowed(l.check("b"));
    l.set_quota(Quota::per_second(50)).unwrap();
    assert_eq!(l.algorithm(), Quota::per_second(50));
    assert_eq!(l.len(), 2);
    // "a": 30 used of the new 50, one cell every 20 ms.
    assert_eq!(allowed(l.check_n("a", 20).unwrap()).remaining(), 0);
    assert_eq!(refused(l.check("a")).retry_after(), Some(ms(20)));
    // "b": 1 used.
    assert_eq!(allowed(l.check_n("b", 49).unwrap()).remaining(), 0);
    // A new key gets the new quota.
    assert_eq!(allowed(l.check("c")).limit(), 50);
    clock.advance(ms(20));
    allowed(l.check("a"));
    // Invalid changes are errors and change nothing.
    assert_eq!(
        field(&l.set_quota(Quota::per_second(0)).unwrap_err()),
        "rate"
    );
    assert_eq!(l.algorithm(), Quota::per_second(50));
}

#[test]
fn borrowed_lookups_on_string_keys() {
    let clock = ManualClock::new();
    let l: KeyedRateLimiter<String, Quota, ManualClock> =
        KeyedRateLimiter::builder(Quota::per_second(3))
            .clock(clock.clone())
            .build()
            .unwrap();
    let owned = String::from("alice");
    allowed(l.check("alice"));
    allowed(l.check(&owned));
    assert_eq!(allowed(l.peek_n("alice", 1).unwrap()).remaining(), 0);
    allowed(l.check_n(owned.as_str(), 1).unwrap());
    refused(l.check("alice"));
    l.refund("alice", 2);
    assert_eq!(allowed(l.check_n("alice", 2).unwrap()).remaining(), 0);
    assert_eq!(l.len(), 1);
    assert!(l.remove("alice"));
    assert!(l.is_empty());
}

#[test]
fn peek_and_impossible_requests_never_add_a_key() {
    let (l, _clock) = one_shard(1, WhenFull::RejectNewKeys);
    assert_eq!(allowed(l.peek_n("a", 10).unwrap()).remaining(), 0);
    assert!(l.peek_n("a", 11).is_err());
    let err = l.check_n("a", 11).unwrap_err();
    assert_eq!((err.requested(), err.capacity()), (11, 10));
    assert!(l.is_empty());
    allowed(l.check("b"));
    // Peeking an unknown key in a full table tells what a fresh key would get.
    assert!(l.peek_n("a", 1).unwrap().is_allowed());
    assert_eq!(l.len(), 1);
    // A refund to an unknown key does nothing.
    l.refund("a", 5);
    assert_eq!(l.len(), 1);
}

#[test]
fn keyed_refund_never_raises_a_key_above_full() {
    let (l, _clock) = one_shard(10, WhenFull::RejectNewKeys);
    allowed(l.check_n("a", 4).unwrap());
    l.refund("a", 100);
    assert_eq!(allowed(l.check_n("a", 10).unwrap()).remaining(), 0);
    refused(l.check("a"));
}

#[test]
fn a_key_keeps_its_limit_after_the_clock_runs_past_18_years() {
    // 40 years would not fit a key's 60 bits of TAT: the limiter's time stops at 18.
    let (l, clock) = one_shard(10, WhenFull::RejectNewKeys);
    assert_eq!(allowed(l.check_n("a", 10).unwrap()).remaining(), 0);
    clock.advance(Duration::from_secs(40 * 365 * 86_400));
    // Long past the cells' replenishment: full again, then limited, and still limited a second
    // later (time has stopped).
    assert_eq!(allowed(l.check_n("a", 10).unwrap()).remaining(), 0);
    refused(l.check("a"));
    clock.advance(Duration::from_secs(1));
    refused(l.check("a"));
}

/// A full table of 1,000 keys that replenish one per millisecond, with a new key every
/// millisecond: the worst case for sweeps (each would free one key). Returns the limiter after
/// the second thousand keys, with how many of them were admitted.
fn staggered(policy: WhenFull) -> (KeyedRateLimiter<u64, Quota, ManualClock>, usize) {
    let clock = ManualClock::new();
    let l = KeyedRateLimiter::builder(Quota::per_second(1))
        .max_keys(1_000)
        .when_full(policy)
        .shards(1)
        .clock(clock.clone())
        .build()
        .unwrap();
    for key in 0..1_000 {
        allowed(l.check(&key));
        clock.advance(ms(1));
    }
    let mut admitted = 0;
    for key in 1_000..2_000 {
        let d = l.check(&key);
        if d.is_allowed() {
            admitted += 1;
        } else {
            assert!(d.is_keys_full(), "{d:?}");
            let wait = d.retry_after().unwrap();
            assert!(
                wait <= ms(100),
                "a replenished key frees up within 100 ms: {wait:?}"
            );
        }
        clock.advance(ms(1));
    }
    (l, admitted)
}

#[test]
fn keys_replenishing_one_at_a_time_cost_a_sweep_per_100_ms_not_per_new_key() {
    let (l, admitted) = staggered(WhenFull::RejectNewKeys);
    let m = l.metrics();
    // The first sweep frees one key and cools the shard down for 100 ms; by then 100 keys are
    // replenished, so every later sweep frees a hundred at once.
    assert!(m.sweeps <= 15, "{m:?}");
    assert!(admitted >= 880, "{admitted} admitted, {m:?}");
    assert_eq!(m.rejected_new_keys, 1_000 - admitted as u64);
    assert_eq!(m.evicted_idle, admitted as u64);
    assert_eq!(m.keys, 1_000);
}

#[test]
fn evicting_closest_to_full_during_a_cool_down_takes_a_replenished_key_first() {
    let (l, admitted) = staggered(WhenFull::EvictClosestToFull);
    let m = l.metrics();
    assert_eq!(admitted, 1_000);
    // Every key made room for was replenished: nothing owed was lost, and no warning.
    assert_eq!((m.evicted_owing, m.evicted_idle), (0, 1_000), "{m:?}");
    assert_eq!(m.keys, 1_000);
}

/// A tracing subscriber that panics on every `warn` event, as a test's "no warnings" guard
/// does.
struct PanicOnWarn;

impl tracing::Subscriber for PanicOnWarn {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            panic!("a warning");
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// The eviction's `warn` event runs the subscriber's code: one that panics must leave the key
/// count true to the table. It ran with the evicted key gone and the new key not yet in its
/// place: the count kept a slot no key held, and with no key left to evict, the next new key
/// spun forever holding its shard's write lock (every check of that shard blocked behind it).
#[test]
fn a_subscriber_panicking_on_the_eviction_warning_leaves_the_key_count_true() {
    let clock = ManualClock::new();
    let l = Arc::new(
        KeyedRateLimiter::<u64, _, _>::builder(Quota::per_second(1))
            .clock(clock.clone())
            .max_keys(1)
            .shards(1)
            .when_full(WhenFull::EvictClosestToFull)
            .build()
            .unwrap(),
    );
    allowed(l.check(&1));
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tracing::subscriber::with_default(PanicOnWarn, || l.check(&2))
    }));
    assert!(panicked.is_err(), "evicting key 1, which owes, warns");
    assert_eq!(l.len(), 1, "key 2 took key 1's slot");
    assert!(
        !l.peek_n(&2, 1).unwrap().is_allowed(),
        "key 2 is in the table, its cell taken"
    );
    // Bounded, so the test fails (its thread left spinning) instead of hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    let l2 = Arc::clone(&l);
    std::thread::spawn(move || tx.send(l2.check(&3).is_allowed()));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)),
        Ok(true),
        "a new key evicts key 2"
    );
    assert_eq!(l.len(), 1);
    assert_eq!(l.metrics().evicted_owing, 2);
}

/// Every key hashes to `self.0`.
#[derive(Clone, Copy)]
struct Constant(u64);

struct ConstantHasher(u64);

impl Hasher for ConstantHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {}
}
impl BuildHasher for Constant {
    type Hasher = ConstantHasher;
    fn build_hasher(&self) -> ConstantHasher {
        ConstantHasher(self.0)
    }
}

/// Keys are told apart by their whole 64-bit hash (see the README's guarantees): two keys with
/// the same hash are one key: one burst between them, a refund or remove of one acts on the
/// other, and `len` counts them once, whatever the hash (its ends included).
#[test]
fn keys_with_one_hash_are_one_key() {
    for hash in [0u64, 42, u64::MAX] {
        let l = KeyedRateLimiter::<String, _, _, _>::builder(Quota::per_second(1).burst(2))
            .clock(ManualClock::new())
            .hasher(Constant(hash))
            .shards(1)
            .build()
            .unwrap();
        assert!(l.check("a").is_allowed());
        assert!(l.check("b").is_allowed());
        assert!(
            !l.check("a").is_allowed(),
            "hash {hash}: a and b share one burst of 2"
        );
        assert_eq!(l.len(), 1, "hash {hash}: counted once");
        l.refund("b", 1);
        assert!(
            l.check("a").is_allowed(),
            "hash {hash}: b's refund went to a"
        );
        assert!(l.remove("b"));
        assert!(!l.remove("a"), "hash {hash}: removing b removed a");
        assert!(l.is_empty());
    }
}
