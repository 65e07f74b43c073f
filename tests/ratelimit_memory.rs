//! Memory per key: palisade's `KeyedRateLimiter` beside governor's default keyed limiter (a
//! `DashMap` state store on its default clock), both tracking the same 100,000 `u64` keys, and
//! then the same 100,000 `String` keys (palisade stores a key's hash, not the key).
//!
//! Bytes are counted by a thread-local counting allocator (allocation-counter, which this test
//! binary alone installs), so the numbers are exact. To make them the same on every run and
//! every machine, both limiters hash with SipHash under fixed keys (std's `RandomState` draws
//! its keys per process, which moves keys between shards) and have 8 shards (the default of
//! both, 4 × cores, on a 2-core machine); everything else is each library's default.
//!
//! Run with `cargo test --test ratelimit_memory -- --nocapture` to see the numbers.

use std::hash::{BuildHasherDefault, DefaultHasher};
use std::num::NonZeroU32;

use allocation_counter::AllocationInfo;
use governor::state::keyed::DashMapStateStore;
use palisade::ratelimit::{KeyedRateLimiter, Quota};

const KEYS: u64 = 100_000;
const SHARDS: usize = 8;
const RATE: u32 = 1_000;

type FixedHasher = BuildHasherDefault<DefaultHasher>;

/// What a keyed limiter allocated: while being built, and while its keys went in.
#[derive(Debug)]
struct Footprint {
    built: AllocationInfo,
    inserted: AllocationInfo,
}

impl Footprint {
    /// Bytes still held per key, the limiter's fixed part (its shards) included.
    fn held_per_key(&self) -> f64 {
        (self.built.bytes_current + self.inserted.bytes_current) as f64 / KEYS as f64
    }

    /// Bytes the inserts still hold per key (the table alone).
    fn table_per_key(&self) -> f64 {
        self.inserted.bytes_current as f64 / KEYS as f64
    }

    /// Bytes the inserts allocated per key, counting the tables given up as they grew.
    fn allocated_per_key(&self) -> f64 {
        self.inserted.bytes_total as f64 / KEYS as f64
    }

    /// The most bytes held at once during the inserts, per key (old and new table while one
    /// grows).
    fn peak_per_key(&self) -> f64 {
        self.inserted.bytes_max as f64 / KEYS as f64
    }
}

/// Builds a limiter and checks keys `0..KEYS` once each, counting both steps; the limiter is
/// dropped only after counting.
fn footprint<L>(build: impl FnOnce() -> L, check: impl Fn(&L, u64)) -> Footprint {
    let mut limiter = None;
    let built = allocation_counter::measure(|| limiter = Some(build()));
    let limiter = limiter.unwrap();
    let inserted = allocation_counter::measure(|| {
        for key in 0..KEYS {
            check(&limiter, key);
        }
    });
    drop(limiter);
    Footprint { built, inserted }
}

fn palisade_keyed() -> KeyedRateLimiter<u64, Quota, palisade::FastClock, FixedHasher> {
    KeyedRateLimiter::builder(Quota::per_second(RATE))
        .hasher(FixedHasher::default())
        .shards(SHARDS)
        .build()
        .unwrap()
}

type GovernorKeyed =
    governor::RateLimiter<u64, DashMapStateStore<u64, FixedHasher>, governor::clock::DefaultClock>;

fn governor_keyed() -> GovernorKeyed {
    let state = DashMapStateStore::with_hasher_and_shard_amount(FixedHasher::default(), SHARDS);
    governor::RateLimiter::new(
        governor::Quota::per_second(NonZeroU32::new(RATE).unwrap()),
        state,
        governor::clock::DefaultClock::default(),
    )
}

fn palisade_footprint() -> Footprint {
    footprint(palisade_keyed, |limiter, key| {
        assert!(limiter.check(&key).is_allowed());
    })
}

fn governor_footprint() -> Footprint {
    footprint(governor_keyed, |limiter, key| {
        limiter.check_key(&key).unwrap();
    })
}

fn report(name: &str, f: &Footprint) {
    println!(
        "{name:>8}: {:6.2} B/key held ({:6.2} table + {} B fixed), {:6.2} B/key allocated, \
         {:6.2} B/key peak, {} allocations",
        f.held_per_key(),
        f.table_per_key(),
        f.built.bytes_current,
        f.allocated_per_key(),
        f.peak_per_key(),
        f.built.count_total + f.inserted.count_total,
    );
}

/// Allocations made once, before counting: the clocks calibrate once per process, and with
/// parking_lot's `deadlock_detection` on (palisade-lock's `deadlock-detection` feature, which the
/// `--all-features` test build turns on) a thread's first lock allocates its list of held locks.
fn warm_up() {
    let palisade = palisade_keyed();
    assert!(palisade.check(&u64::MAX).is_allowed());
    let governor = governor_keyed();
    assert!(governor.check_key(&u64::MAX).is_ok());
}

#[test]
fn palisade_holds_no_more_per_key_than_governor() {
    warm_up();

    let palisade = palisade_footprint();
    let governor = governor_footprint();
    println!("{KEYS} u64 keys, {SHARDS} shards:");
    report("palisade", &palisade);
    report("governor", &governor);

    for (name, f) in [("palisade", &palisade), ("governor", &governor)] {
        assert!(f.inserted.bytes_current > 0, "{name} held nothing per key");
    }
    assert!(
        palisade.table_per_key() <= governor.table_per_key(),
        "palisade's table holds {:.2} B/key, governor's {:.2}",
        palisade.table_per_key(),
        governor.table_per_key()
    );
    // The fixed part is per shard, not per key: a lock word and the table it guards on cache
    // lines of their own (so checks on two cores don't pass the table's header back and forth
    // with the lock), 384 bytes a shard against governor's 128.
    assert!(
        palisade.built.bytes_current <= (SHARDS * FIXED_PER_SHARD) as i64,
        "palisade's fixed part is {} B for {SHARDS} shards, more than {FIXED_PER_SHARD} B a shard",
        palisade.built.bytes_current
    );
}

/// The most a palisade shard may hold before its first key.
const FIXED_PER_SHARD: usize = 384;

#[test]
fn the_counts_are_deterministic() {
    warm_up();
    let (a, b) = (palisade_footprint(), palisade_footprint());
    assert_eq!((a.built, a.inserted), (b.built, b.inserted));
    let (a, b) = (governor_footprint(), governor_footprint());
    assert_eq!((a.built, a.inserted), (b.built, b.inserted));
}

#[test]
fn dropping_a_limiter_frees_every_key() {
    warm_up();
    let info = allocation_counter::measure(|| {
        let limiter = palisade_keyed();
        for key in 0..KEYS {
            assert!(limiter.check(&key).is_allowed());
        }
    });
    assert_eq!(info.bytes_current, 0, "palisade leaked");
    let info = allocation_counter::measure(|| {
        let limiter = governor_keyed();
        for key in 0..KEYS {
            limiter.check_key(&key).unwrap();
        }
    });
    assert_eq!(info.bytes_current, 0, "governor leaked");
}

/// A client name of 13 bytes, as an API key or a tenant id would be.
fn name(key: u64) -> String {
    format!("client-{key:06}")
}

#[test]
fn with_string_keys_palisade_holds_less_per_key_than_governor() {
    warm_up();
    // The names exist before counting, as the requests' keys would: what is counted is what
    // each limiter keeps of them.
    let names: Vec<String> = (0..KEYS).map(name).collect();
    let palisade = footprint(
        || {
            KeyedRateLimiter::<String>::builder(Quota::per_second(RATE))
                .hasher(FixedHasher::default())
                .shards(SHARDS)
                .build()
                .unwrap()
        },
        |limiter, key| assert!(limiter.check(names[key as usize].as_str()).is_allowed()),
    );
    let governor = footprint(
        || {
            let state = DashMapStateStore::<String, FixedHasher>::with_hasher_and_shard_amount(
                FixedHasher::default(),
                SHARDS,
            );
            let limiter: governor::RateLimiter<String, _, governor::clock::DefaultClock> =
                governor::RateLimiter::new(
                    governor::Quota::per_second(NonZeroU32::new(RATE).unwrap()),
                    state,
                    governor::clock::DefaultClock::default(),
                );
            limiter
        },
        |limiter, key| limiter.check_key(&names[key as usize]).unwrap(),
    );
    println!("{KEYS} String keys of 13 bytes, {SHARDS} shards:");
    report("palisade", &palisade);
    report("governor", &governor);
    assert!(
        palisade.table_per_key() < governor.table_per_key(),
        "palisade's table holds {:.2} B/key, governor's {:.2}",
        palisade.table_per_key(),
        governor.table_per_key()
    );
    // palisade keeps nothing per key beyond its slots: one allocation per growth of a shard,
    // none per key.
    assert!(
        palisade.inserted.count_total < KEYS / 100,
        "{} allocations for {KEYS} keys",
        palisade.inserted.count_total
    );
}
