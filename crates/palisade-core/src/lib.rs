#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod clock;
mod error;
mod instant;
pub mod sync;

#[cfg(feature = "tokio")]
pub use clock::TokioClock;
pub use clock::{Clock, FastClock, ManualClock};
pub use error::ConfigError;
pub use instant::Instant;
