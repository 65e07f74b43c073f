//! The attempt schedule, without I/O: gRPC's connection-backoff algorithm plus the
//! stable-connection rule and the attempt limit. The stream and the service drive it with the
//! instants at which things happen; this module decides when the next attempt starts and how
//! long an attempt may take.
//!
//! gRPC's algorithm (connection-backoff.md) spaces attempt *starts*: attempt `k` starts at `s`,
//! the next may start at `s + delay(k)` (a jittered delay), and attempt `k` may run until the
//! later of that time and `s + MIN_CONNECT_TIMEOUT`. A failure that arrives after the next start
//! is due is followed by the next attempt at once.

use palisade_retry::Delays;
use tokio::time::Instant;

use crate::config::Policy;

/// What an attempt may do: its number and its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// From 1, counted since the last stable connection.
    pub(crate) number: u32,
    /// When the attempt is cut.
    pub(crate) deadline: Instant,
}

/// Where a connection stands in its backoff sequence.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    policy: Policy,
    delays: Delays,
    /// Attempts since the last stable connection (the sequence's length so far).
    attempts: u32,
    /// When the attempt after the current one may start.
    next_at: Option<Instant>,
    /// When the current connection was established.
    connected_at: Option<Instant>,
}

/// The sequence is over: `max_attempts` attempts failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GaveUp {
    pub(crate) attempts: u32,
}

impl Schedule {
    pub(crate) fn new(policy: Policy) -> Schedule {
        Schedule::with_delays(policy.backoff.delays(), policy)
    }

    /// A schedule whose jitter comes from `seed`: the same seed, the same delays.
    #[cfg(test)]
    pub(crate) fn seeded(policy: Policy, seed: u64) -> Schedule {
        Schedule::with_delays(policy.backoff.delays_seeded(seed), policy)
    }

    fn with_delays(delays: Delays, policy: Policy) -> Schedule {
        Schedule {
            policy,
            delays,
            attempts: 0,
            next_at: None,
            connected_at: None,
        }
    }

    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Attempts since the last stable connection.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// When the next attempt may start: now for a fresh sequence.
    pub(crate) fn next_attempt_at(&self, now: Instant) -> Instant {
        self.next_at.map_or(now, |at| at.max(now))
    }

    /// An attempt starts at `now`.
    pub(crate) fn begin(&mut self, now: Instant) -> Attempt {
        self.attempts = self.attempts.saturating_add(1);
        let delay = self
            .delays
            .next()
            .unwrap_or(self.policy.backoff.max_delay());
        let next_at = now + delay;
        self.next_at = Some(next_at);
        self.connected_at = None;
        Attempt {
            number: self.attempts,
            deadline: next_at.max(now + self.policy.connect_timeout),
        }
    }

    /// The attempt succeeded at `now`.
    pub(crate) fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The attempt failed at `now`: when the next one starts, or `GaveUp`.
    pub(crate) fn failed(&mut self, now: Instant) -> Result<Instant, GaveUp> {
        self.connected_at = None;
        if self
            .policy
            .max_attempts
            .is_some_and(|max| self.attempts >= max)
        {
            return Err(GaveUp {
                attempts: self.attempts,
            });
        }
        Ok(self.next_attempt_at(now))
    }

    /// The connection was lost at `now`. After a stable connection the sequence starts over and
    /// the next attempt is now; a connection lost sooner is a failed attempt.
    pub(crate) fn lost(&mut self, now: Instant) -> Result<Instant, GaveUp> {
        let stable = self
            .connected_at
            .is_some_and(|since| now.saturating_duration_since(since) >= self.policy.stable_after);
        if stable {
            self.reset();
            return Ok(now);
        }
        self.failed(now)
    }

    /// Starts the sequence over (the first attempt is immediate, the backoff from its start).
    fn reset(&mut self) {
        self.attempts = 0;
        self.next_at = None;
        self.connected_at = None;
        self.delays = self.policy.backoff.delays();
    }

    /// The time an attempt starting at `now` would be given, for reports.
    #[cfg(test)]
    pub(crate) fn budget(&self, attempt: &Attempt, start: Instant) -> std::time::Duration {
        attempt.deadline.saturating_duration_since(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_retry::{Backoff, Jitter};
    use std::time::Duration;

    fn s(n: f64) -> Duration {
        Duration::from_secs_f64(n)
    }

    fn exact_grpc() -> Policy {
        let backoff = Backoff::exponential(Duration::from_secs(1))
            .multiplier(1.6)
            .max_delay(Duration::from_secs(120))
            .jitter(Jitter::None)
            .build()
            .unwrap();
        Policy::builder().backoff(backoff).build().unwrap()
    }

    #[test]
    fn attempts_are_spaced_from_their_starts_and_given_at_least_the_connect_timeout() {
        let t0 = Instant::now();
        let mut sched = Schedule::new(exact_grpc());
        let a = sched.begin(t0);
        assert_eq!(a.number, 1);
        // At least 20 s even though the next attempt is due in 1 s.
        assert_eq!(sched.budget(&a, t0), s(20.0));
        // Refused at once: the next starts 1 s after the first started.
        assert_eq!(sched.failed(t0 + s(0.1)).unwrap(), t0 + s(1.0));
        // A failure that arrives after the next start was due: next attempt at once.
        let t1 = t0 + s(1.0);
        sched.begin(t1);
        assert_eq!(sched.failed(t1 + s(5.0)).unwrap(), t1 + s(5.0));
    }

    /// gRPC's spec jitters after the growth's cap: at the cap, clients keep spreading over
    /// [96 s, 144 s] (a cap after the jitter would put about half of them at exactly the cap).
    #[test]
    fn the_default_policy_keeps_spreading_attempts_at_the_cap() {
        // 1.6¹⁴ s is past the 120 s cap: the 15th delay of each client is at the cap.
        let late: Vec<Duration> = (0..200)
            .map(|seed| {
                let mut sched = Schedule::seeded(Policy::default(), seed);
                let mut t = Instant::now();
                let mut delay = Duration::ZERO;
                for _ in 0..15 {
                    sched.begin(t);
                    let next = sched.failed(t).unwrap();
                    delay = next - t;
                    t = next;
                }
                delay
            })
            .collect();
        assert!(
            late.iter().all(|d| (s(96.0)..=s(144.0)).contains(d)),
            "{late:?}"
        );
        let distinct: std::collections::BTreeSet<_> = late.iter().collect();
        assert!(
            distinct.len() >= 195,
            "only {} distinct delays",
            distinct.len()
        );
        let above_120 = late.iter().filter(|d| **d > s(120.0)).count();
        assert!(
            (60..=140).contains(&above_120),
            "{above_120} of 200 above 120 s"
        );
    }

    #[test]
    fn the_deadline_grows_with_the_backoff_past_the_connect_timeout() {
        let mut sched = Schedule::new(exact_grpc());
        let mut t = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..12 {
            let a = sched.begin(t);
            let next = sched.failed(t).unwrap();
            delays.push((next - t, a.deadline - t));
            t = next;
        }
        let mut expect = 1.0f64;
        for (delay, budget) in delays {
            let want = s(expect.min(120.0));
            assert!(
                delay.abs_diff(want) < Duration::from_micros(1),
                "{delay:?} {want:?}"
            );
            assert_eq!(budget, delay.max(s(20.0)));
            expect *= 1.6;
        }
    }

    #[test]
    fn a_stable_connection_resets_and_a_flap_does_not() {
        let policy = exact_grpc();
        let mut sched = Schedule::new(policy);
        let t0 = Instant::now();
        sched.begin(t0);
        let t1 = sched.failed(t0).unwrap();
        sched.begin(t1); // attempt 2, next due at t1 + 1.6 s
        sched.connected(t1);
        // Lost after 1 s (< 5 s): a failed attempt, the next waits for the backoff.
        assert_eq!(sched.lost(t1 + s(1.0)).unwrap(), t1 + s(1.6));
        assert_eq!(sched.attempts(), 2);
        let t2 = t1 + s(1.6);
        let a = sched.begin(t2);
        assert_eq!(a.number, 3);
        sched.connected(t2);
        // Lost after 5 s: the sequence starts over, at once.
        assert_eq!(sched.lost(t2 + s(5.0)).unwrap(), t2 + s(5.0));
        assert_eq!(sched.attempts(), 0);
        let t3 = t2 + s(5.0);
        assert_eq!(sched.begin(t3).number, 1);
        assert_eq!(sched.failed(t3).unwrap(), t3 + s(1.0));
    }

    #[test]
    fn gives_up_after_max_attempts_counting_flaps() {
        let policy = Policy::builder()
            .backoff(exact_grpc().backoff)
            .max_attempts(3)
            .build()
            .unwrap();
        let mut sched = Schedule::new(policy);
        let t = Instant::now();
        sched.begin(t);
        assert!(sched.failed(t).is_ok());
        sched.begin(t);
        sched.connected(t);
        assert!(sched.lost(t + s(1.0)).is_ok()); // a flap: attempt 2 failed
        sched.begin(t);
        assert_eq!(sched.failed(t), Err(GaveUp { attempts: 3 }));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let policy = Policy::default();
        for seed in 0..50 {
            let mut sched = Schedule::seeded(policy.clone(), seed);
            let t = Instant::now();
            sched.begin(t);
            let d = sched.failed(t).unwrap() - t;
            assert!((s(0.8)..=s(1.2)).contains(&d), "{d:?}");
        }
    }

    #[derive(Debug, Clone)]
    enum Outcome {
        /// The attempt fails after this many ms (cut at its deadline).
        Fail(u64),
        /// It connects after `.0` ms and the connection is lost `.1` ms later.
        Flap(u64, u64),
    }

    fn outcome() -> impl proptest::strategy::Strategy<Value = Outcome> {
        use proptest::prelude::*;
        prop_oneof![
            (0u64..60_000).prop_map(Outcome::Fail),
            (0u64..30_000, 0u64..12_000).prop_map(|(c, l)| Outcome::Flap(c, l)),
        ]
    }

    proptest::proptest! {
        /// Whatever happens, every attempt is given at least the connect timeout and at least
        /// until the next is due; the next starts no earlier than the failure and, unless the
        /// failure came late, one jittered delay (gRPC's ± 20 % of the base delay for its
        /// number) after the previous start; the count resets exactly after a connection
        /// that lasted `stable_after`, and the schedule gives up exactly at `max_attempts`.
        #[test]
        fn the_schedule_keeps_its_rules(
            outcomes in proptest::collection::vec(outcome(), 1..40),
            seed in proptest::prelude::any::<u64>(),
            max in 1u32..12,
        ) {
            let policy = Policy::builder().max_attempts(max).build().unwrap();
            let backoff = *policy.backoff();
            let mut sched = Schedule::seeded(policy, seed);
            let mut now = Instant::now();
            let mut count = 0u32;
            for outcome in outcomes {
                let start = sched.next_attempt_at(now);
                proptest::prop_assert!(start >= now);
                let attempt = sched.begin(start);
                count += 1;
                proptest::prop_assert_eq!(attempt.number, count);
                proptest::prop_assert!(attempt.deadline >= start + Duration::from_secs(20));
                let base = backoff.base_delay(count);
                let (low, high) = (base.mul_f64(0.8), base.mul_f64(1.2).min(backoff.max_delay()));
                let (end, result) = match outcome {
                    Outcome::Fail(ms) => {
                        let end = (start + Duration::from_millis(ms)).min(attempt.deadline);
                        (end, sched.failed(end))
                    }
                    Outcome::Flap(c, l) => {
                        let up = (start + Duration::from_millis(c)).min(attempt.deadline);
                        sched.connected(up);
                        let end = up + Duration::from_millis(l);
                        let result = sched.lost(end);
                        if l >= 5_000 {
                            proptest::prop_assert_eq!(result, Ok(end));
                            proptest::prop_assert_eq!(sched.attempts(), 0);
                            count = 0;
                            now = end;
                            continue;
                        }
                        (end, result)
                    }
                };
                match result {
                    Err(GaveUp { attempts }) => {
                        proptest::prop_assert_eq!(attempts, max);
                        proptest::prop_assert_eq!(count, max);
                        return Ok(());
                    }
                    Ok(next) => {
                        proptest::prop_assert!(count < max);
                        proptest::prop_assert!(next >= end);
                        if next > end {
                            let gap = next - start;
                            proptest::prop_assert!(
                                gap >= low && gap <= high + Duration::from_nanos(1),
                                "attempt {} waited {:?}, allowed [{:?}, {:?}]", count, gap, low, high
                            );
                        }
                        proptest::prop_assert!(attempt.deadline >= next || next == end);
                        now = end;
                    }
                }
            }
        }
    }
}
