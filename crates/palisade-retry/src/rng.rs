//! A tiny seedable random number generator for jitter.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64 (Steele, Lea and Flood, 2014): one `u64` of state, passes BigCrush, and is plenty
/// for spreading retries apart. Not for anything that needs unpredictability.
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    pub(crate) const fn seeded(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// A generator seeded differently on every call: a process-wide counter mixed with the
    /// standard library's per-process random hash keys. No clock read: the first `FastClock` of
    /// a process calibrates for up to milliseconds, which must not happen inside a `poll`.
    pub(crate) fn from_entropy() -> Rng {
        // A std atomic on purpose: seeding is not part of any protocol a loom model checks.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(GOLDEN_GAMMA, Ordering::Relaxed);
        let keyed = std::hash::RandomState::new().hash_one(n);
        Rng::seeded(mix(n ^ keyed))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix(self.state)
    }

    /// Uniform in `[0, bound]` nanoseconds (inclusive), by the multiply-shift method.
    pub(crate) fn up_to(&mut self, bound: Duration) -> Duration {
        let bound = nanos(bound);
        if bound == 0 {
            return Duration::ZERO;
        }
        let span = u128::from(bound) + 1;
        let pick = (u128::from(self.next_u64()) * span) >> 64;
        Duration::from_nanos(pick as u64)
    }

    /// Uniform in `[low, high]` (inclusive); `low` if the range is empty.
    pub(crate) fn between(&mut self, low: Duration, high: Duration) -> Duration {
        if high <= low {
            return low;
        }
        low + self.up_to(high - low)
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A duration in whole nanoseconds, saturating at `u64::MAX`.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_different_seeds_differ() {
        let a: Vec<u64> = {
            let mut r = Rng::seeded(7);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::seeded(7);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = Rng::seeded(8);
            (0..8).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn up_to_stays_in_range_and_covers_it() {
        let mut r = Rng::seeded(1);
        let bound = Duration::from_nanos(9);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let d = r.up_to(bound);
            assert!(d <= bound);
            seen[d.as_nanos() as usize] = true;
        }
        assert!(
            seen.iter().all(|s| *s),
            "every value in [0, 9] appears: {seen:?}"
        );
        assert_eq!(r.up_to(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            r.between(Duration::from_secs(2), Duration::from_secs(1)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn entropy_seeds_differ_between_calls() {
        assert_ne!(
            Rng::from_entropy().next_u64(),
            Rng::from_entropy().next_u64()
        );
    }
}
