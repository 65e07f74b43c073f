//! Backoff schedules: constant, linear and exponential growth, five jitter modes, cap after jitter.

use std::time::Duration;

use crate::error::ConfigError;
use crate::rng::{Rng, nanos};

/// The longest `max_delay` a builder accepts.
pub const MAX_DELAY_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// The largest multiplier an exponential backoff accepts.
pub const MAX_MULTIPLIER: f64 = 100.0;

/// How the delay before each retry is randomized, so that clients that failed together do not
/// retry together.
///
/// Let `base` be the schedule's delay for this retry (already capped, see
/// [`Backoff::base_delay`]). The modes are those of AWS's "Exponential Backoff and Jitter", plus
/// the ± ratio of gRPC's connection backoff. Whatever the mode, the result is capped at
/// `max_delay` **after** jitter, so no delay ever exceeds it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Jitter {
    /// `base`, exactly. Predictable, and every client that failed together retries together.
    None,
    /// Uniform in `[0, base]`. The AWS recommendation: the least total work under contention.
    Full,
    /// Uniform in `[base / 2, base]`: never retries immediately.
    Equal,
    /// Uniform in `[initial, 3 × previous delay]`, capped: AWS's "decorrelated jitter". It replaces
    /// the schedule's growth: only `initial` and `max_delay` apply.
    Decorrelated,
    /// Uniform in `[base × (1 − r), base × (1 + r)]`; `r` in `[0, 1]`. Here `base` is capped at
    /// `max_delay / (1 + r)`, so the whole spread fits under `max_delay`: at the cap, clients
    /// stay spread over `[cap × (1 − r), cap × (1 + r)]` instead of piling up at `max_delay`.
    /// gRPC uses `Proportional(0.2)` (see [`Backoff::grpc_connection`]).
    Proportional(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Growth {
    Constant,
    Linear { step: Duration },
    Exponential { multiplier: f64 },
}

/// A validated backoff schedule: the delay before each retry.
///
/// Build one with [`Backoff::constant`], [`Backoff::linear`] or [`Backoff::exponential`], or take a
/// preset ([`Backoff::grpc_connection`], [`Backoff::aws_standard`]). [`Backoff::delays`] gives the
/// schedule as an endless iterator; a [`RetryPolicy`](crate::RetryPolicy) adds the stop conditions.
///
/// ```
/// use palisade_retry::{Backoff, Jitter};
/// use std::time::Duration;
///
/// let backoff = Backoff::exponential(Duration::from_millis(100))
///     .multiplier(2.0)
///     .max_delay(Duration::from_millis(500))
///     .jitter(Jitter::None)
///     .build()?;
/// let delays: Vec<_> = backoff.delays().take(5).collect();
/// assert_eq!(delays, [100, 200, 400, 500, 500].map(Duration::from_millis));
///
/// // With jitter, a seed makes the schedule reproducible, and the cap still holds.
/// let jittered = Backoff::exponential(Duration::from_millis(100))
///     .max_delay(Duration::from_secs(1))
///     .jitter(Jitter::Full)
///     .build()?;
/// let a: Vec<_> = jittered.delays_seeded(42).take(10).collect();
/// assert_eq!(a, jittered.delays_seeded(42).take(10).collect::<Vec<_>>());
/// assert!(a.iter().all(|d| *d <= Duration::from_secs(1)));
/// # Ok::<(), palisade_retry::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    growth: Growth,
    initial: Duration,
    max_delay: Duration,
    jitter: Jitter,
}

/// An unvalidated [`Backoff`]; [`build`](BackoffBuilder::build) checks every knob.
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct BackoffBuilder {
    growth: Growth,
    initial: Duration,
    max_delay: Option<Duration>,
    jitter: Jitter,
}

impl Backoff {
    /// The same `delay` before every retry. `max_delay` defaults to `delay`; jitter to none.
    pub fn constant(delay: Duration) -> BackoffBuilder {
        BackoffBuilder::new(Growth::Constant, delay)
    }

    /// `initial`, then `initial + step`, `initial + 2 × step`, ... capped at `max_delay`
    /// (default 30 s, or `initial` if larger). Jitter defaults to none.
    pub fn linear(initial: Duration, step: Duration) -> BackoffBuilder {
        BackoffBuilder::new(Growth::Linear { step }, initial)
    }

    /// `initial`, then `initial × multiplier`, `initial × multiplier²`, ... capped at `max_delay`.
    /// Defaults: multiplier 2.0, `max_delay` 30 s (or `initial`, if larger), full jitter.
    pub fn exponential(initial: Duration) -> BackoffBuilder {
        BackoffBuilder {
            jitter: Jitter::Full,
            ..BackoffBuilder::new(Growth::Exponential { multiplier: 2.0 }, initial)
        }
    }

    /// What `Backoff::exponential(Duration::from_millis(100)).build()` gives, as a constant.
    pub(crate) const DEFAULT: Backoff = Backoff {
        growth: Growth::Exponential { multiplier: 2.0 },
        initial: Duration::from_millis(100),
        max_delay: Duration::from_secs(30),
        jitter: Jitter::Full,
    };

    /// gRPC's connection backoff: 1 s, × 1.6, ± 20 % jitter, the growth capped at 120 s.
    ///
    /// As in gRPC's spec, the jitter applies after the growth's cap: once the schedule reaches
    /// 120 s, delays are uniform in `[96 s, 144 s]`, so `max_delay` is 144 s (with the jitter of
    /// [`Jitter::Proportional`], a base capped at `max_delay / 1.2`). A cap applied after the
    /// jitter instead would put about half of all clients at exactly the cap, in lockstep. One
    /// difference from the spec: the first delay is jittered too (gRPC waits exactly 1 s, so
    /// clients that failed together retry together once).
    pub fn grpc_connection() -> Backoff {
        Backoff {
            growth: Growth::Exponential { multiplier: 1.6 },
            initial: Duration::from_secs(1),
            max_delay: Duration::from_secs(144),
            jitter: Jitter::Proportional(0.2),
        }
    }

    /// The AWS SDKs' standard mode: full jitter over `1 s × 2ⁿ`, capped at 20 s.
    pub fn aws_standard() -> Backoff {
        Backoff {
            growth: Growth::Exponential { multiplier: 2.0 },
            initial: Duration::from_secs(1),
            max_delay: Duration::from_secs(20),
            jitter: Jitter::Full,
        }
    }

    /// The schedule, seeded differently each call so that clients spread out.
    pub fn delays(&self) -> Delays {
        Delays::new(*self, Rng::from_entropy())
    }

    /// The schedule with a fixed seed: the same seed gives the same delays. For tests and
    /// reproducible simulations; in production, use [`delays`](Backoff::delays).
    pub fn delays_seeded(&self, seed: u64) -> Delays {
        Delays::new(*self, Rng::seeded(seed))
    }

    /// The delay before retry number `retry` (1 for the first retry) before jitter, capped at
    /// `max_delay` (at `max_delay / (1 + r)` for [`Jitter::Proportional`]`(r)`, so that the
    /// jittered delay fits under `max_delay`).
    pub fn base_delay(&self, retry: u32) -> Duration {
        let cap = match self.jitter {
            Jitter::Proportional(ratio) => self.max_delay.div_f64(1.0 + ratio),
            _ => self.max_delay,
        };
        let n = retry.saturating_sub(1);
        let uncapped = match self.growth {
            Growth::Constant => self.initial,
            Growth::Linear { step } => self.initial.saturating_add(step.saturating_mul(n)),
            Growth::Exponential { multiplier } => {
                let scaled =
                    nanos(self.initial) as f64 * multiplier.powi(n.min(i32::MAX as u32) as i32);
                if scaled.is_finite() && scaled < nanos(cap) as f64 {
                    Duration::from_nanos(scaled as u64)
                } else {
                    cap
                }
            }
        };
        uncapped.min(cap)
    }

    /// The first delay of the schedule, before jitter.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// No delay of the schedule exceeds this.
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// The jitter mode.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }
}

impl BackoffBuilder {
    fn new(growth: Growth, initial: Duration) -> BackoffBuilder {
        BackoffBuilder {
            growth,
            initial,
            max_delay: None,
            jitter: Jitter::None,
        }
    }

    /// The growth factor of an exponential backoff, in `[1.0, 100.0]` (default 2.0). Ignored by
    /// constant and linear schedules.
    pub fn multiplier(mut self, multiplier: f64) -> BackoffBuilder {
        if let Growth::Exponential { multiplier: m } = &mut self.growth {
            *m = multiplier;
        }
        self
    }

    /// The cap on every delay, applied after jitter; at least the initial delay and at most 24 h.
    pub fn max_delay(mut self, max_delay: Duration) -> BackoffBuilder {
        self.max_delay = Some(max_delay);
        self
    }

    /// The jitter mode (see [`Jitter`]).
    pub fn jitter(mut self, jitter: Jitter) -> BackoffBuilder {
        self.jitter = jitter;
        self
    }

    /// Checks every knob and returns the schedule, or an error naming the field and its range.
    pub fn build(self) -> Result<Backoff, ConfigError> {
        // Checked first: an unset `max_delay` defaults to the initial delay, and the error must
        // name the knob the caller set.
        if self.initial > MAX_DELAY_LIMIT {
            return Err(ConfigError::out_of_range(
                "initial delay",
                "at most 24h",
                self.initial,
            ));
        }
        let max_delay = self.max_delay.unwrap_or(match self.growth {
            Growth::Constant => self.initial,
            _ => Duration::from_secs(30).max(self.initial),
        });
        if max_delay > MAX_DELAY_LIMIT {
            return Err(ConfigError::out_of_range(
                "max_delay",
                "at most 24h",
                max_delay,
            ));
        }
        if self.initial > max_delay {
            return Err(ConfigError::out_of_range(
                "initial delay",
                format!("at most max_delay ({max_delay:?})"),
                self.initial,
            ));
        }
        if let Growth::Exponential { multiplier } = self.growth {
            if self.initial.is_zero() {
                return Err(ConfigError::out_of_range(
                    "initial delay",
                    "greater than zero for an exponential backoff",
                    self.initial,
                ));
            }
            if !(multiplier.is_finite() && (1.0..=MAX_MULTIPLIER).contains(&multiplier)) {
                return Err(ConfigError::out_of_range(
                    "multiplier",
                    "a finite number in [1.0, 100.0]",
                    multiplier,
                ));
            }
        }
        if let Jitter::Proportional(ratio) = self.jitter
            && !(ratio.is_finite() && (0.0..=1.0).contains(&ratio))
        {
            return Err(ConfigError::out_of_range(
                "jitter ratio",
                "a finite number in [0.0, 1.0]",
                ratio,
            ));
        }
        Ok(Backoff {
            growth: self.growth,
            initial: self.initial,
            max_delay,
            jitter: self.jitter,
        })
    }
}

impl From<Backoff> for BackoffBuilder {
    fn from(b: Backoff) -> BackoffBuilder {
        BackoffBuilder {
            growth: b.growth,
            initial: b.initial,
            max_delay: Some(b.max_delay),
            jitter: b.jitter,
        }
    }
}

/// The delays of a [`Backoff`], one per retry, without end; every one is at most `max_delay`.
///
/// Take as many as you need; a [`RetryPolicy`](crate::RetryPolicy) stops by attempts and elapsed
/// time.
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    cursor: Cursor,
}

impl Delays {
    fn new(backoff: Backoff, rng: Rng) -> Delays {
        Delays {
            cursor: Cursor::new(&backoff, rng),
            backoff,
        }
    }

    /// How many delays this iterator has given.
    pub fn retries(&self) -> u32 {
        self.cursor.retry
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.cursor.next(&self.backoff))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

/// A position in a backoff schedule, without the schedule: what a retry loop keeps per operation
/// (the policy holds the [`Backoff`]).
#[derive(Debug, Clone)]
pub(crate) struct Cursor {
    retry: u32,
    previous: Duration,
    rng: Rng,
}

impl Cursor {
    pub(crate) fn new(backoff: &Backoff, rng: Rng) -> Cursor {
        Cursor {
            retry: 0,
            previous: backoff.initial,
            rng,
        }
    }

    /// The delay before the next retry.
    pub(crate) fn next(&mut self, b: &Backoff) -> Duration {
        self.retry = self.retry.saturating_add(1);
        let base = b.base_delay(self.retry);
        let jittered = match b.jitter {
            Jitter::None => base,
            Jitter::Full => self.rng.up_to(base),
            Jitter::Equal => base / 2 + self.rng.up_to(base - base / 2),
            Jitter::Decorrelated => {
                let high = self.previous.saturating_mul(3);
                self.rng.between(b.initial, high)
            }
            Jitter::Proportional(ratio) => {
                let low = base.mul_f64(1.0 - ratio);
                let high = scale_saturating(base, 1.0 + ratio);
                self.rng.between(low, high)
            }
        };
        let delay = jittered.min(b.max_delay);
        self.previous = delay;
        delay
    }
}

/// `d × factor` for `factor >= 0`, saturating instead of panicking on overflow.
fn scale_saturating(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn constant_and_linear_schedules() {
        let constant = Backoff::constant(ms(50)).build().unwrap();
        assert_eq!(
            constant.delays().take(3).collect::<Vec<_>>(),
            [ms(50), ms(50), ms(50)]
        );
        let linear = Backoff::linear(ms(100), ms(50))
            .max_delay(ms(220))
            .build()
            .unwrap();
        assert_eq!(
            linear.delays().take(5).collect::<Vec<_>>(),
            [ms(100), ms(150), ms(200), ms(220), ms(220)]
        );
    }

    #[test]
    fn exponential_grows_and_caps_without_overflow() {
        let b = Backoff::exponential(ms(1))
            .multiplier(10.0)
            .max_delay(MAX_DELAY_LIMIT)
            .jitter(Jitter::None)
            .build()
            .unwrap();
        assert_eq!(b.base_delay(1), ms(1));
        assert_eq!(b.base_delay(4), ms(1000));
        assert_eq!(b.base_delay(u32::MAX), MAX_DELAY_LIMIT);
        let mut d = b.delays();
        assert_eq!(d.nth(1_000), Some(MAX_DELAY_LIMIT));
    }

    #[test]
    fn presets_match_their_specs() {
        let grpc = Backoff::grpc_connection();
        assert_eq!(grpc.base_delay(1), Duration::from_secs(1));
        assert_eq!(grpc.base_delay(2), ms(1600));
        assert_eq!(grpc.base_delay(3), ms(2560));
        assert_eq!(grpc.base_delay(100), Duration::from_secs(120));
        assert_eq!(grpc.max_delay(), Duration::from_secs(144));
        assert_eq!(grpc.jitter(), Jitter::Proportional(0.2));
        // At the cap, gRPC's spread: uniform in [96 s, 144 s], not a pile at the cap.
        let at_cap: Vec<Duration> = grpc.delays_seeded(7).skip(20).take(1_000).collect();
        assert!(at_cap.iter().all(|d| (96..=144).contains(&d.as_secs())));
        let exactly_max = at_cap.iter().filter(|d| **d == grpc.max_delay()).count();
        assert!(exactly_max <= 1, "{exactly_max} delays at exactly the cap");
        let below_120 = at_cap.iter().filter(|d| d.as_secs() < 120).count();
        assert!(
            (400..=600).contains(&below_120),
            "{below_120} of 1000 below 120 s"
        );
        let first = grpc.delays().next().unwrap();
        assert!(first >= ms(800) && first <= ms(1200), "{first:?}");

        let aws = Backoff::aws_standard();
        assert_eq!(aws.base_delay(1), Duration::from_secs(1));
        assert_eq!(aws.base_delay(5), Duration::from_secs(16));
        assert_eq!(aws.base_delay(6), Duration::from_secs(20));
        assert_eq!(aws.jitter(), Jitter::Full);
        // The presets are valid by the builder's rules, and the default is what it says.
        assert_eq!(BackoffBuilder::from(grpc).build(), Ok(grpc));
        assert_eq!(BackoffBuilder::from(aws).build(), Ok(aws));
        assert_eq!(Backoff::exponential(ms(100)).build(), Ok(Backoff::DEFAULT));
    }

    #[test]
    fn builder_rejects_every_bad_knob_by_name() {
        let msg = |r: Result<Backoff, ConfigError>| r.unwrap_err().to_string();
        assert_eq!(
            msg(Backoff::exponential(ms(10)).multiplier(0.5).build()),
            "multiplier must be a finite number in [1.0, 100.0], got 0.5"
        );
        assert!(
            msg(Backoff::exponential(ms(10)).multiplier(f64::NAN).build())
                .starts_with("multiplier")
        );
        assert_eq!(
            msg(Backoff::exponential(Duration::ZERO).build()),
            "initial delay must be greater than zero for an exponential backoff, got 0ns"
        );
        assert_eq!(
            msg(Backoff::constant(ms(10)).max_delay(ms(5)).build()),
            "initial delay must be at most max_delay (5ms), got 10ms"
        );
        assert_eq!(
            msg(Backoff::constant(ms(10))
                .max_delay(MAX_DELAY_LIMIT * 2)
                .build()),
            "max_delay must be at most 24h, got 172800s"
        );
        assert_eq!(
            msg(Backoff::constant(ms(10))
                .jitter(Jitter::Proportional(1.5))
                .build()),
            "jitter ratio must be a finite number in [0.0, 1.0], got 1.5"
        );
        // The zero-delay constant backoff is legal: retry at once.
        assert!(Backoff::constant(Duration::ZERO).build().is_ok());
    }

    /// An initial delay over 24 h is the knob to change, not a `max_delay` the caller never set
    /// (it defaulted to the initial delay).
    #[test]
    fn an_oversized_initial_delay_is_named_as_such() {
        let day_and_a_bit = MAX_DELAY_LIMIT + ms(1);
        for builder in [
            Backoff::constant(day_and_a_bit),
            Backoff::linear(day_and_a_bit, ms(10)),
            Backoff::exponential(day_and_a_bit),
        ] {
            assert_eq!(
                builder.build().unwrap_err().to_string(),
                "initial delay must be at most 24h, got 86400.001s"
            );
        }
    }
}
