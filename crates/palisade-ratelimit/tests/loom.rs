//! Concurrency models of the limiters' protocols (see docs/testing.md for how they run):
//! racing checks never over-admit, a quota change racing checks neither loses a check nor
//! computes one with the wrong quota, a cancelled reservation consumes nothing, a keyed
//! eviction racing a check neither loses nor double-counts a key's state, two keyed quota
//! changes at once leave every shard on the same quota, and evicting the key closest to full
//! waits out a check on that key's shard.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use palisade_core::ManualClock;
use palisade_core::sync::{assert_explored, model, thread};
use palisade_ratelimit::{KeyedRateLimiter, Quota, RateLimiter, WhenFull};

fn limiter(clock: &ManualClock, quota: Quota) -> Arc<RateLimiter<Quota, ManualClock>> {
    Arc::new(
        RateLimiter::builder(quota)
            .clock(clock.clone())
            .build()
            .unwrap(),
    )
}

/// Cells free now (a peek for no cells reports what is left).
fn remaining(limiter: &RateLimiter<Quota, ManualClock>) -> u32 {
    limiter.peek_n(0).unwrap().remaining()
}

#[test]
fn racing_checks_admit_exactly_the_burst() {
    assert_explored(model(|| {
        let clock = ManualClock::new();
        let limiter = limiter(&clock, Quota::per_second(3));
        let other = Arc::clone(&limiter);
        // One thread takes two cells at once, two others one each: three fit, not four.
        let pair = thread::spawn(move || u32::from(other.check_n(2).unwrap().is_allowed()) * 2);
        let other = Arc::clone(&limiter);
        let single = thread::spawn(move || u32::from(other.check().is_allowed()));
        let here = u32::from(limiter.check().is_allowed());
        let admitted = here + pair.join().unwrap() + single.join().unwrap();
        // Three cells if the pair came before both singles ran out the burst, else two (the
        // pair found only one free): never four, and whatever was not taken is still there.
        assert!(
            admitted == 3 || admitted == 2,
            "admitted {admitted} of a burst of 3"
        );
        assert_eq!(admitted + remaining(&limiter), 3);
    }));
}

#[test]
fn a_quota_change_racing_checks_keeps_accounting_and_never_mixes_quotas() {
    assert_explored(model(|| {
        let clock = ManualClock::new();
        // 1 cell per second, burst 2 → 1 cell per 2 s, burst 2. Two checks at time 0 fit under
        // either quota in any order with the change (the used second carries over as two),
        // but a check computed with the old quota on a TAT kept under the new one would be
        // refused (3 s ahead > τ = 2 s).
        let limiter = limiter(&clock, Quota::per_second(1).burst(2));
        let other = Arc::clone(&limiter);
        let changer = thread::spawn(move || {
            other
                .set_quota(Quota::with_interval(Duration::from_secs(2)).burst(2))
                .unwrap();
        });
        assert!(limiter.check().is_allowed());
        assert!(limiter.check().is_allowed());
        changer.join().unwrap();
        assert_eq!(remaining(&limiter), 0);
        assert_eq!(limiter.peek().retry_after(), Some(Duration::from_secs(2)));
    }));
}

#[test]
fn a_cancelled_reservation_consumes_nothing() {
    assert_explored(model(|| {
        let clock = ManualClock::new();
        let limiter = limiter(&clock, Quota::per_second(2));
        assert!(limiter.check().is_allowed());
        let other = Arc::clone(&limiter);
        // A waiter reserves a cell (the last free one, or the next one if the check won) and
        // is cancelled; the check races it.
        let waiter = thread::spawn(move || {
            drop(other.reserve_n(1, Duration::MAX).unwrap());
        });
        let admitted = limiter.check().is_allowed();
        waiter.join().unwrap();
        // Whatever the order, the state is as if the waiter had never come.
        let expected = if admitted { 0 } else { 1 };
        assert_eq!(remaining(&limiter), expected);
        if !admitted {
            // Refused only because the waiter held the last cell at that moment.
            assert!(limiter.check().is_allowed());
        }
    }));
}

#[test]
fn keyed_eviction_racing_a_check_never_loses_or_double_counts_a_key() {
    assert_explored(model(|| {
        let clock = ManualClock::new();
        let limiter = Arc::new(
            KeyedRateLimiter::builder(Quota::per_second(1))
                .max_keys(1)
                .shards(1)
                .clock(clock.clone())
                .build()
                .unwrap(),
        );
        assert!(limiter.check("a").is_allowed());
        // "a" is fully replenished again: a new key may evict it, losing nothing.
        clock.advance(Duration::from_secs(1));
        let other = Arc::clone(&limiter);
        let b = thread::spawn(move || other.check("b"));
        let a = limiter.check("a");
        let b = b.join().unwrap();
        // Either "a" was checked first (so it owes a cell and "b" finds the table full), or
        // "b" evicted it first (so "a" is the new key that finds the table full).
        assert!(a.is_allowed() != b.is_allowed(), "a: {a:?}, b: {b:?}");
        let refused = if a.is_allowed() { b } else { a };
        assert!(refused.is_keys_full());
        assert_eq!(limiter.len(), 1);
        // The admitted key's cell stays spent: its state was neither lost nor doubled.
        let winner = if a.is_allowed() { "a" } else { "b" };
        assert!(!limiter.check(winner).is_allowed());
    }));
}

#[test]
fn two_first_checks_of_one_key_share_one_state() {
    assert_explored(model(|| {
        let clock = ManualClock::new();
        let limiter = Arc::new(
            KeyedRateLimiter::builder(Quota::per_second(1))
                .shards(1)
                .clock(clock.clone())
                .build()
                .unwrap(),
        );
        let other = Arc::clone(&limiter);
        let first = thread::spawn(move || other.check(&7u64).is_allowed());
        let here = limiter.check(&7u64).is_allowed();
        let there = first.join().unwrap();
        assert!(
            here != there,
            "burst 1: one of the two first checks gets the cell"
        );
        assert_eq!(limiter.len(), 1);
    }));
}

#[test]
fn two_quota_changes_at_once_leave_every_key_on_the_same_quota() {
    assert_explored(model(|| {
        let limiter = Arc::new(
            KeyedRateLimiter::builder(Quota::per_second(1))
                .shards(2)
                .clock(ManualClock::new())
                .build()
                .unwrap(),
        );
        let other = Arc::clone(&limiter);
        let large = thread::spawn(move || other.set_quota(Quota::per_second(100)).unwrap());
        limiter.set_quota(Quota::per_second(2)).unwrap();
        large.join().unwrap();
        // Burst 100 takes 100 cells at once, burst 2 refuses them: the same answer for every
        // key (32 keys cover both shards), the one of the quota `algorithm()` reports.
        let on_large = limiter.algorithm() == Quota::per_second(100);
        for key in 0..32u64 {
            assert_eq!(limiter.check_n(&key, 100).is_ok(), on_large, "key {key}");
        }
    }));
}

/// Puts `u64` key `k` in shard `k` (shards are picked by bits 40 and up of the hash).
#[derive(Debug, Clone, Copy, Default)]
struct ShardByValue;

impl BuildHasher for ShardByValue {
    type Hasher = ByValue;
    fn build_hasher(&self) -> ByValue {
        ByValue(0)
    }
}

#[derive(Debug)]
struct ByValue(u64);

impl Hasher for ByValue {
    fn finish(&self) -> u64 {
        (self.0 << 40) | self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8) | u64::from(byte);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[test]
fn evicting_the_key_closest_to_full_waits_out_a_check_on_its_shard() {
    assert_explored(model(|| {
        let limiter = Arc::new(
            KeyedRateLimiter::builder(Quota::per_hour(1))
                .max_keys(1)
                .shards(2)
                .when_full(WhenFull::EvictClosestToFull)
                .hasher(ShardByValue)
                .clock(ManualClock::new())
                .build()
                .unwrap(),
        );
        assert!(limiter.check(&0u64).is_allowed());
        // A check of key 0 holds shard 0's read lock while key 1, new in the empty shard 1,
        // needs key 0's slot: the policy evicts, it never refuses a new key.
        let other = Arc::clone(&limiter);
        let hot = thread::spawn(move || other.check(&0u64));
        let new = limiter.check(&1u64);
        let hot = hot.join().unwrap();
        assert!(new.is_allowed(), "{new:?}");
        assert!(!hot.is_keys_full(), "{hot:?}");
        assert_eq!(limiter.len(), 1);
    }));
}
