//! `KeyedBreakers`: per-key breakers under a hard cap, evicting only what is safe to forget.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_breaker::{CircuitBreaker, KeyedBreakers, KeysExhausted, State};
use palisade_core::ManualClock;

fn keyed(max: usize, clock: &ManualClock) -> KeyedBreakers<String, ManualClock> {
    KeyedBreakers::builder(
        CircuitBreaker::builder()
            .no_failure_rate()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(3600))
            .clock(clock.clone()),
    )
    .max_keys(max)
    .idle_timeout(Duration::from_secs(60))
    .shards(4)
    .build()
    .unwrap()
}

#[test]
fn one_breaker_per_key() {
    let clock = ManualClock::new();
    let k = keyed(10, &clock);
    let a = k.get("a").unwrap();
    assert!(Arc::ptr_eq(&a, &k.get("a").unwrap()));
    a.try_acquire().unwrap().failure();
    assert_eq!(k.get("a").unwrap().state(), State::Open);
    assert_eq!(
        k.get("b").unwrap().state(),
        State::Closed,
        "keys are independent"
    );
    assert_eq!(k.len(), 2);
    assert!(k.peek("c").is_none());
    assert_eq!(k.len(), 2, "peek creates nothing");
}

#[test]
fn a_full_set_rejects_new_keys_until_some_are_idle() {
    let clock = ManualClock::new();
    let k = keyed(3, &clock);
    for key in ["a", "b", "c"] {
        k.get(key).unwrap();
    }
    assert_eq!(k.get("d").unwrap_err(), KeysExhausted { max_keys: 3 });
    assert_eq!(
        KeysExhausted { max_keys: 3 }.to_string(),
        "keyed circuit breakers are full: 3 keys, none idle enough to evict"
    );
    clock.advance(Duration::from_secs(67));
    assert!(
        k.get("d").is_err(),
        "idle for the timeout, but not its 1/8 margin yet"
    );
    clock.advance(Duration::from_millis(500));
    assert!(k.get("d").is_ok(), "idle keys made room");
    assert!(k.len() <= 3, "never above the cap");
    k.evict_idle(); // the sweep on insert may have stopped at one shard: take the rest
    assert_eq!(k.len(), 1, "only the fresh key is left");
    for key in ["e", "f"] {
        k.get(key).unwrap();
    }
    assert!(k.get("g").is_err(), "full again, nothing idle");
    assert_eq!(k.len(), 3);
}

#[test]
fn open_held_and_recently_used_breakers_are_never_evicted() {
    let clock = ManualClock::new();
    let k = keyed(3, &clock);
    k.get("open").unwrap().try_acquire().unwrap().failure();
    let held = k.get("held").unwrap();
    let permit = k.get("permit").unwrap().try_acquire_owned().unwrap();
    clock.advance(Duration::from_secs(120));
    assert!(
        k.get("new").is_err(),
        "open, held by an Arc, holding a permit: nothing to evict"
    );
    assert_eq!(k.evict_idle(), 0);

    permit.success();
    assert_eq!(k.evict_idle(), 1, "the permit is gone: its key goes");
    drop(held);
    k.get("fresh").unwrap(); // takes the freed place; "held" is now evictable too
    assert_eq!(k.evict_idle(), 1);
    assert!(
        k.peek("open").is_some(),
        "an open breaker is never forgotten"
    );
    assert_eq!(k.len(), 2);
}

#[test]
fn hot_keys_stay_and_remove_forgets() {
    let clock = ManualClock::new();
    let k = keyed(2, &clock);
    for _ in 0..10 {
        k.get("hot").unwrap();
        k.get("cold").unwrap();
        clock.advance(Duration::from_secs(20));
        k.get("hot").unwrap();
        clock.advance(Duration::from_secs(20));
    }
    assert_eq!(k.evict_idle(), 0, "both used within the timeout");
    clock.advance(Duration::from_secs(10));
    k.get("hot").unwrap(); // "cold" was last used 30 s ago
    clock.advance(Duration::from_secs(38));
    assert_eq!(k.evict_idle(), 1);
    assert!(k.peek("hot").is_some() && k.peek("cold").is_none());
    assert!(k.remove("hot"));
    assert!(!k.remove("hot"));
    assert!(k.is_empty());
}

#[test]
fn abandoned_open_keys_go_once_their_open_duration_is_over() {
    let clock = ManualClock::new();
    let k = keyed(2, &clock); // open for an hour
    for key in ["a", "b"] {
        k.get(key).unwrap().try_acquire().unwrap().failure();
    }
    clock.advance(Duration::from_secs(1800));
    assert!(
        k.get("c").is_err(),
        "idle, but still open: the hour isn't over"
    );
    clock.advance(Duration::from_secs(1800));
    assert!(
        k.get("c").is_ok(),
        "open duration over: the next call would only have probed"
    );
    k.get("d").unwrap().force_open();
    clock.advance(Duration::from_secs(7200));
    assert_eq!(
        k.evict_idle(),
        1,
        "\"c\" goes; a forced-open key stays until removed"
    );
    assert!(k.peek("d").is_some());
}

#[test]
fn a_key_is_never_evicted_before_the_whole_timeout() {
    let clock = ManualClock::new();
    let k = keyed(10, &clock);
    k.get("a").unwrap();
    clock.advance(Duration::from_secs(5));
    k.get("a").unwrap(); // too soon after the last refresh to be written down
    clock.advance(Duration::from_secs(59));
    assert_eq!(k.evict_idle(), 0, "idle 59 s since its last use: it stays");
    clock.advance(Duration::from_secs(4));
    assert_eq!(k.evict_idle(), 1);
}

#[test]
fn the_keyed_listener_hears_the_key() {
    let clock = ManualClock::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let k = KeyedBreakers::<String, _>::builder(
        CircuitBreaker::builder()
            .no_failure_rate()
            .consecutive_failures(1)
            .clock(clock),
    )
    .on_transition(move |key, t| sink.lock().unwrap().push((key.clone(), t.to)))
    .build()
    .unwrap();
    k.get("db-1").unwrap().try_acquire().unwrap().failure();
    assert_eq!(*seen.lock().unwrap(), [("db-1".to_string(), State::Open)]);
}

#[test]
fn the_builder_validates() {
    let b = || KeyedBreakers::<u32>::builder(CircuitBreaker::builder());
    assert_eq!(
        b().max_keys(0).build().unwrap_err().to_string(),
        "max_keys must be at least 1, got 0"
    );
    assert_eq!(
        b().idle_timeout(Duration::ZERO)
            .build()
            .unwrap_err()
            .to_string(),
        "idle_timeout must be greater than zero and at most 24h, got 0ns"
    );
    assert_eq!(
        b().shards(0).build().unwrap_err().to_string(),
        "shards must be in [1, 1024], got 0"
    );
    let bad_template = KeyedBreakers::<u32>::builder(CircuitBreaker::builder().half_open_probes(0));
    assert_eq!(
        bad_template.build().unwrap_err().to_string(),
        "half_open_probes must be in [1, 1000], got 0"
    );
}

#[test]
fn concurrent_gets_of_one_key_share_one_breaker_and_respect_the_cap() {
    let clock = ManualClock::new();
    let k = Arc::new(keyed(50, &clock));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let k = Arc::clone(&k);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for i in 0..100 {
                    if let Ok(b) = k.get(&format!("key-{}", (i * 7 + t) % 80)) {
                        got.push(b);
                    }
                }
                (k.get("shared").ok(), got.len())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(k.len() <= 50);
    let shared: Vec<_> = results.iter().filter_map(|(s, _)| s.clone()).collect();
    for s in &shared {
        assert!(Arc::ptr_eq(s, &shared[0]));
    }
}

#[test]
fn a_key_whose_clone_panics_takes_no_place() {
    // A key type whose `Clone` panics (a bug, an allocation limit): `get` unwinds, and must
    // leave the set's count of keys as it was, or each such panic leaks one of the places.
    #[derive(Debug, PartialEq, Eq, Hash)]
    struct Key(u32, bool);
    impl Clone for Key {
        fn clone(&self) -> Key {
            assert!(!self.1, "clone of a poisoned key");
            Key(self.0, false)
        }
    }
    let clock = ManualClock::new();
    let k = KeyedBreakers::<Key, ManualClock>::builder(
        CircuitBreaker::builder()
            .no_failure_rate()
            .consecutive_failures(1)
            .clock(clock.clone()),
    )
    .max_keys(1)
    .build()
    .unwrap();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = k.get(&Key(1, true));
    }));
    assert!(panicked.is_err());
    assert_eq!(k.len(), 0, "no key was inserted");
    assert!(k.get(&Key(2, false)).is_ok(), "the one place is free");
}
