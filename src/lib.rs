#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

#[cfg(feature = "tokio")]
pub use palisade_core::TokioClock;
pub use palisade_core::clock;
pub use palisade_core::{Clock, FastClock, Instant, ManualClock};

pub mod prelude;
pub mod stack;
pub use stack::Stack;

#[cfg(feature = "breaker")]
pub use palisade_breaker as breaker;
#[cfg(feature = "bulkhead")]
pub use palisade_bulkhead as bulkhead;
#[cfg(feature = "lock")]
pub use palisade_lock as lock;
#[cfg(feature = "pool")]
pub use palisade_pool as pool;
#[cfg(feature = "ratelimit")]
pub use palisade_ratelimit as ratelimit;
#[cfg(feature = "reconnect")]
pub use palisade_reconnect as reconnect;
#[cfg(feature = "retry")]
pub use palisade_retry as retry;
#[cfg(feature = "shutdown")]
pub use palisade_shutdown as shutdown;
