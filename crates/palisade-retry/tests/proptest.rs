//! Properties of every schedule: bounds of each jitter mode, the cap, determinism, attempt
//! limits and the deadline.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use palisade_core::ManualClock;
use palisade_retry::{Backoff, BackoffBuilder, Jitter, RetryPolicy, retry, retry_blocking};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Constant,
    Linear(u64),
    Exponential(f64),
}

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::None),
        Just(Jitter::Full),
        Just(Jitter::Equal),
        Just(Jitter::Decorrelated),
        (0.0_f64..=1.0).prop_map(Jitter::Proportional),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Constant),
        (0_u64..5_000_000_000).prop_map(Kind::Linear),
        (1.0_f64..=100.0).prop_map(Kind::Exponential),
    ]
}

/// A valid backoff: initial in (0, 10 s], max_delay in [initial, 24 h].
fn backoff() -> impl Strategy<Value = (Backoff, Kind)> {
    (
        kind(),
        1_u64..10_000_000_000,
        0_u64..86_400_000_000_000,
        jitter(),
    )
        .prop_map(|(kind, initial, extra, jitter)| {
            let initial = Duration::from_nanos(initial);
            let max = (initial + Duration::from_nanos(extra)).min(Duration::from_secs(86_400));
            let builder: BackoffBuilder = match kind {
                Kind::Constant => Backoff::constant(initial),
                Kind::Linear(step) => Backoff::linear(initial, Duration::from_nanos(step)),
                Kind::Exponential(m) => Backoff::exponential(initial).multiplier(m),
            };
            (builder.max_delay(max).jitter(jitter).build().unwrap(), kind)
        })
}

/// The schedule's un-jittered delay for retry `n` (from 1), computed independently.
fn reference_base(b: &Backoff, kind: Kind, n: u32) -> f64 {
    let initial = b.initial().as_nanos() as f64;
    let raw = match kind {
        Kind::Constant => initial,
        Kind::Linear(step) => initial + step as f64 * f64::from(n - 1),
        Kind::Exponential(m) => initial * m.powi(n as i32 - 1),
    };
    let cap = b.max_delay().as_nanos() as f64;
    match b.jitter() {
        // The center is capped so that the whole ± spread fits under the cap.
        Jitter::Proportional(r) => raw.min(cap / (1.0 + r)),
        _ => raw.min(cap),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_delay_respects_its_jitter_bounds_and_the_cap((b, kind) in backoff(), seed: u64) {
        let cap = b.max_delay();
        let mut previous = b.initial();
        for (i, d) in b.delays_seeded(seed).take(40).enumerate() {
            let n = i as u32 + 1;
            prop_assert!(d <= cap, "retry {n}: {d:?} above the cap {cap:?}");
            let base = reference_base(&b, kind, n);
            let ns = d.as_nanos() as f64;
            // 1 ns of slack for float rounding in the reference.
            let (low, high) = match b.jitter() {
                Jitter::None => (base, base),
                Jitter::Full => (0.0, base),
                Jitter::Equal => (base / 2.0, base),
                Jitter::Decorrelated => {
                    let low = b.initial().min(cap).as_nanos() as f64;
                    (low, (previous.as_nanos() as f64 * 3.0).max(low).min(cap.as_nanos() as f64))
                }
                Jitter::Proportional(r) => {
                    (base * (1.0 - r), (base * (1.0 + r)).min(cap.as_nanos() as f64))
                }
                _ => unreachable!("no other jitter mode exists"),
            };
            let slack = 1.0 + high * 1e-12;
            prop_assert!(
                ns >= low - slack && ns <= high + slack,
                "retry {n}: {ns} ns outside [{low}, {high}] for {:?}", b.jitter()
            );
            previous = d;
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule((b, _) in backoff(), seed: u64) {
        let a: Vec<_> = b.delays_seeded(seed).take(20).collect();
        let again: Vec<_> = b.delays_seeded(seed).take(20).collect();
        prop_assert_eq!(a, again);
    }

    #[test]
    fn attempts_never_exceed_the_maximum(max_attempts in 1_u32..50, succeed_at in 1_u32..80) {
        let clock = ManualClock::new();
        let policy = RetryPolicy::builder()
            .backoff(Backoff::exponential(Duration::from_millis(1)))
            .max_attempts(max_attempts)
            .build()
            .unwrap();
        let mut calls = 0;
        let outcome: Result<u32, u32> = retry_blocking(|| {
            calls += 1;
            if calls >= succeed_at { Ok(calls) } else { Err(calls) }
        })
        .with(policy)
        .clock(clock.clone())
        .sleep_with(|d| { clock.advance(d); })
        .call();
        prop_assert_eq!(calls, succeed_at.min(max_attempts));
        prop_assert_eq!(outcome.is_ok(), succeed_at <= max_attempts);
    }

    /// Under tokio's paused clock, attempts take time too, and still no attempt starts after the
    /// deadline and no sleep ends past it.
    #[test]
    fn no_attempt_starts_after_the_deadline(
        (b, _) in backoff(),
        deadline_ms in 1_u64..120_000,
        attempt_ms in 0_u64..5_000,
        seed: u64,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let deadline = Duration::from_millis(deadline_ms);
        let policy = RetryPolicy::builder()
            .backoff(b)
            .max_attempts(1_000)
            .max_elapsed(deadline)
            .seed(seed)
            .build()
            .unwrap();
        let (latest_start, total) = rt.block_on(async {
            let start = tokio::time::Instant::now();
            let latest = AtomicU32::new(0);
            let _: Result<(), ()> = retry(|| async {
                latest.store(start.elapsed().as_millis() as u32, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(attempt_ms)).await;
                Err(())
            })
            .with(policy)
            .await;
            (Duration::from_millis(latest.load(Ordering::Relaxed).into()), start.elapsed())
        });
        prop_assert!(latest_start <= deadline, "an attempt started at {latest_start:?}");
        // The operation ends with the attempt that started last.
        prop_assert!(total <= deadline + Duration::from_millis(attempt_ms));
    }
}
