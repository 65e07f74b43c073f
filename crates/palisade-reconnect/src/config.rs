//! The reconnect policy shared by the stream and the tower service: backoff, connect timeout,
//! the stable-connection rule and the attempt limit.

use std::time::Duration;

pub use palisade_core::ConfigError;
use palisade_retry::Backoff;

/// The shortest duration a knob accepts (where zero is not allowed).
pub const MIN_DURATION: Duration = Duration::from_millis(1);

/// The longest duration any knob accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// How a connection is (re)established: the validated knobs common to
/// [`ReconnectingStream`](crate::ReconnectingStream) and
/// [`Reconnect`](crate::Reconnect).
///
/// The defaults are gRPC's connection backoff: attempts spaced by
/// [`Backoff::grpc_connection`] (1 s, × 1.6 up to 120 s, ± 20 % jitter: 96–144 s at the cap),
/// each attempt allowed
/// at least 20 s, attempts forever. Where gRPC resets the backoff as soon as a connection is
/// established, a `Policy` resets it only once the connection has stayed up for `stable_after`
/// (5 s), so a server that accepts and drops at once is retried with growing delays, not in a
/// tight loop.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub(crate) backoff: Backoff,
    pub(crate) connect_timeout: Duration,
    pub(crate) stable_after: Duration,
    pub(crate) max_attempts: Option<u32>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            backoff: Backoff::grpc_connection(),
            connect_timeout: Duration::from_secs(20),
            stable_after: Duration::from_secs(5),
            max_attempts: None,
        }
    }
}

impl Policy {
    /// A builder starting from the defaults.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder::default()
    }

    /// The spacing of attempts.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The least time an attempt is given (it gets more when the backoff's next delay is longer).
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// How long a connection must stay up for the backoff to start over.
    pub fn stable_after(&self) -> Duration {
        self.stable_after
    }

    /// The attempts allowed since the last stable connection, or `None` for no limit.
    pub fn max_attempts(&self) -> Option<u32> {
        self.max_attempts
    }
}

/// An unvalidated [`Policy`]: [`build`](PolicyBuilder::build) checks every knob.
#[derive(Debug, Clone, PartialEq, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PolicyBuilder {
    policy: Policy,
}

impl From<Policy> for PolicyBuilder {
    fn from(policy: Policy) -> PolicyBuilder {
        PolicyBuilder { policy }
    }
}

impl PolicyBuilder {
    /// The spacing of attempts (default: [`Backoff::grpc_connection`]). A [`Backoff`] is
    /// validated when it is built.
    pub fn backoff(mut self, backoff: Backoff) -> PolicyBuilder {
        self.policy.backoff = backoff;
        self
    }

    /// The least time a connect attempt is given, in `[1ms, 24h]` (default 20 s, gRPC's minimum
    /// connect timeout). As in gRPC, an attempt's deadline is the later of this and the time
    /// the next attempt is due, so a slow connect is never abandoned only to be started again.
    pub fn connect_timeout(mut self, timeout: Duration) -> PolicyBuilder {
        self.policy.connect_timeout = timeout;
        self
    }

    /// How long a connection must stay up before its loss starts the backoff over, in
    /// `[0, 24h]` (default 5 s). A connection lost sooner counts as a failed attempt: the next
    /// one waits for the backoff's next delay. Zero is gRPC's rule (reset on every connect).
    pub fn stable_after(mut self, stable_after: Duration) -> PolicyBuilder {
        self.policy.stable_after = stable_after;
        self
    }

    /// Give up after `attempts` attempts in a row without a stable connection (at least 1;
    /// default: never give up). A connection lost before `stable_after` counts as a failed attempt.
    pub fn max_attempts(mut self, attempts: u32) -> PolicyBuilder {
        self.policy.max_attempts = Some(attempts);
        self
    }

    /// Never give up (the default).
    pub fn retry_forever(mut self) -> PolicyBuilder {
        self.policy.max_attempts = None;
        self
    }

    /// Checks every knob.
    pub fn build(self) -> Result<Policy, ConfigError> {
        let p = self.policy;
        check_duration("connect_timeout", p.connect_timeout, MIN_DURATION)?;
        check_duration("stable_after", p.stable_after, Duration::ZERO)?;
        if p.max_attempts == Some(0) {
            return Err(ConfigError::out_of_range(
                "max_attempts",
                "at least 1 (or retry_forever)",
                0u32,
            ));
        }
        Ok(p)
    }
}

/// `Ok` if `value` is in `[min, MAX_DURATION]`, else an error naming `field` and the range.
pub(crate) fn check_duration(
    field: &'static str,
    value: Duration,
    min: Duration,
) -> Result<(), ConfigError> {
    if value < min || value > MAX_DURATION {
        let allowed = if min.is_zero() {
            "in [0, 24h]"
        } else {
            "in [1ms, 24h]"
        };
        return Err(ConfigError::out_of_range(field, allowed, value));
    }
    Ok(())
}

/// The policy setters of a builder that holds a `policy: PolicyBuilder`, written once.
macro_rules! policy_setters {
    () => {
        /// The whole policy at once, replacing any policy knob set before.
        pub fn policy(mut self, policy: $crate::Policy) -> Self {
            self.policy = policy.into();
            self
        }

        /// See [`PolicyBuilder::backoff`](crate::PolicyBuilder::backoff).
        pub fn backoff(mut self, backoff: palisade_retry::Backoff) -> Self {
            self.policy = self.policy.backoff(backoff);
            self
        }

        /// See [`PolicyBuilder::connect_timeout`](crate::PolicyBuilder::connect_timeout).
        pub fn connect_timeout(mut self, timeout: std::time::Duration) -> Self {
            self.policy = self.policy.connect_timeout(timeout);
            self
        }

        /// See [`PolicyBuilder::stable_after`](crate::PolicyBuilder::stable_after).
        pub fn stable_after(mut self, stable_after: std::time::Duration) -> Self {
            self.policy = self.policy.stable_after(stable_after);
            self
        }

        /// See [`PolicyBuilder::max_attempts`](crate::PolicyBuilder::max_attempts).
        pub fn max_attempts(mut self, attempts: u32) -> Self {
            self.policy = self.policy.max_attempts(attempts);
            self
        }
    };
}
pub(crate) use policy_setters;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_grpc_with_a_stability_window() {
        let p = Policy::builder().build().unwrap();
        assert_eq!(p.backoff(), &Backoff::grpc_connection());
        assert_eq!(p.connect_timeout(), Duration::from_secs(20));
        assert_eq!(p.stable_after(), Duration::from_secs(5));
        assert_eq!(p.max_attempts(), None);
    }

    #[test]
    fn every_knob_is_validated_and_named() {
        let e = Policy::builder()
            .connect_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "connect_timeout");
        assert!(e.to_string().contains("[1ms, 24h]"), "{e}");
        let e = Policy::builder()
            .stable_after(MAX_DURATION + Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "stable_after");
        let e = Policy::builder().max_attempts(0).build().unwrap_err();
        assert_eq!(e.field(), "max_attempts");
        assert!(
            Policy::builder()
                .stable_after(Duration::ZERO)
                .build()
                .is_ok()
        );
        assert_eq!(
            Policy::builder()
                .max_attempts(3)
                .retry_forever()
                .build()
                .unwrap()
                .max_attempts(),
            None
        );
    }
}
