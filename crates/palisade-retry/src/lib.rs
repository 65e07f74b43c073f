#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod backoff;
mod blocking;
mod budget;
mod classify;
mod decide;
mod error;
#[cfg(feature = "tower")]
mod future;
#[cfg(feature = "tower")]
mod layer;
mod policy;
mod retry;
mod rng;
#[cfg(feature = "tower")]
mod service;

pub use backoff::{Backoff, BackoffBuilder, Delays, Jitter, MAX_DELAY_LIMIT, MAX_MULTIPLIER};
pub use blocking::{RetryBlocking, retry_blocking};
pub use budget::{RetryBudget, RetryThrottle, TpsBudget, TpsBudgetBuilder};
pub use classify::{Classify, Decision, OnRetry, RetryEvent, RetryOnError};
pub use error::{AttemptTimedOut, ConfigError};
#[cfg(feature = "tower")]
pub use future::ResponseFuture;
#[cfg(feature = "tower")]
pub use layer::{AttemptTimeout, AttemptTimeoutFor, NoAttemptTimeout, RetryLayer};
pub use policy::{MAX_ELAPSED_LIMIT, RetryPolicy, RetryPolicyBuilder};
pub use retry::{Retry, retry};
#[cfg(feature = "tower")]
pub use service::RetryService;
