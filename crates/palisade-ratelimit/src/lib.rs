#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
// The docs link the tower layer and service throughout; without the `tower` feature they do
// not exist, and rustdoc would report every such link as broken.
#![cfg_attr(not(feature = "tower"), allow(rustdoc::broken_intra_doc_links))]

mod algorithm;
mod decision;
mod error;
mod gcra;
mod keyed;
mod limiter;
mod multi;
mod quota;
mod sliding;
mod table;
#[cfg(feature = "tokio")]
mod wait;

pub use algorithm::Algorithm;
pub use decision::Decision;
pub use error::{ConfigError, InsufficientCapacity, RateLimited, WaitError};
pub use keyed::{
    DEFAULT_MAX_KEYS, KeyedMetrics, KeyedRateLimiter, KeyedRateLimiterBuilder, WhenFull,
};
pub use limiter::{RateLimiter, RateLimiterBuilder, Reservation};
pub use multi::{MAX_QUOTAS, MultiGcra};
pub use quota::{MAX_REPLENISH, Quota};
pub use sliding::{MAX_WINDOW_LIMIT, SlidingWindow};
#[cfg(feature = "tower")]
mod future;
#[cfg(feature = "tower")]
mod layer;
#[cfg(feature = "tower")]
mod service;

#[cfg(feature = "tower")]
pub use future::{BoxError, ResponseFuture};
#[cfg(feature = "tower")]
pub use layer::{Mode, RateLimitLayer, Unkeyed};
#[cfg(feature = "tower")]
pub use service::RateLimit;
