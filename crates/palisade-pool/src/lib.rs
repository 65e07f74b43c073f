#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod config;
mod error;
mod manager;
mod metrics;
mod pool;
mod pooled;
#[cfg(feature = "tower")]
mod service;
mod state;

pub use crate::config::{
    BoxFuture, CheckoutTest, MAX_DURATION, MAX_LIFETIME_JITTER, MAX_SIZE, MIN_DURATION, PoolBuilder,
};
#[cfg(feature = "tower")]
pub use crate::error::NotReady;
pub use crate::error::{CloseTimeout, ConfigError, Error, Failure};
pub use crate::manager::Manager;
pub use crate::metrics::{Discard, Metrics};
pub use crate::pool::Pool;
pub use crate::pooled::Pooled;
#[cfg(feature = "tower")]
pub use crate::service::{BoxError, PoolService, ResponseFuture};
/// The backoff schedules of [`connect_backoff`](PoolBuilder::connect_backoff), from
/// palisade-retry.
pub use palisade_retry::{Backoff, Jitter};
