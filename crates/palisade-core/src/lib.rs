#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
// The docs link `TokioClock` throughout; without the `tokio` feature it does not exist, and
// rustdoc would report every such link as broken.
#![cfg_attr(not(feature = "tokio"), allow(rustdoc::broken_intra_doc_links))]

pub mod clock;
mod error;
mod instant;
pub mod sync;

#[cfg(feature = "tokio")]
pub use clock::TokioClock;
pub use clock::{Clock, FastClock, ManualClock};
pub use error::ConfigError;
pub use instant::Instant;
