#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
// The docs link the tower layer and service throughout; without the `tower` feature they do
// not exist, and rustdoc would report every such link as broken.
#![cfg_attr(not(feature = "tower"), allow(rustdoc::broken_intra_doc_links))]

mod breaker;
mod classify;
mod config;
mod error;
mod event;
#[cfg(feature = "tower")]
mod future;
mod keyed;
#[cfg(feature = "tower")]
mod layer;
#[cfg(feature = "tower")]
mod service;
mod window;

pub use breaker::{CircuitBreaker, OwnedPermit, Permit};
pub use classify::{Classify, ErrorsAreFailures, Outcome};
pub use config::{
    CircuitBreakerBuilder, MAX_BUCKETS, MAX_DURATION, MAX_PROBES, MAX_WINDOW_CALLS, OpenDuration,
    SlidingWindow,
};
pub use error::{CallError, ConfigError, KeysExhausted, Rejected};
pub use event::{Metrics, Reason, State, Transition, WindowSnapshot};
#[cfg(feature = "tower")]
pub use future::{BoxError, ResponseFuture};
pub use keyed::{KeyedBreakers, KeyedBreakersBuilder};
#[cfg(feature = "tower")]
pub use layer::CircuitBreakerLayer;
#[cfg(feature = "tower")]
pub use service::CircuitBreakerService;
