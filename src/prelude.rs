//! The names most services use, for one glob import: `use palisade::prelude::*;`.
//!
//! Only the types you name when you build and wire the patterns: the clocks, each pattern's main
//! type and builder inputs, its tower layer, and [`Stack`]. Error types and the
//! names that would clash with std, tokio or tower (`Error`, `Mutex`, `State`, `Metrics`) stay
//! in their crates: reach them as `palisade::<pattern>::Name`.

#[cfg(feature = "tokio")]
pub use crate::TokioClock;
pub use crate::{Clock, FastClock, Instant, ManualClock, Stack};

#[cfg(feature = "breaker")]
pub use crate::breaker::{CircuitBreaker, CircuitBreakerLayer, KeyedBreakers};
#[cfg(feature = "bulkhead")]
pub use crate::bulkhead::{Bulkhead, BulkheadLayer, Discipline};
#[cfg(feature = "lock")]
pub use crate::lock::lock_all;
#[cfg(feature = "pool")]
pub use crate::pool::{Manager, Pool, Pooled};
#[cfg(feature = "ratelimit")]
pub use crate::ratelimit::{KeyedRateLimiter, Quota, RateLimitLayer, RateLimiter, SlidingWindow};
#[cfg(feature = "reconnect")]
pub use crate::reconnect::{ConnectionState, Reconnect, ReconnectLayer, ReconnectingStream};
#[cfg(feature = "retry")]
pub use crate::retry::{Backoff, Jitter, RetryLayer, RetryPolicy, TpsBudget, retry};
#[cfg(feature = "shutdown")]
pub use crate::shutdown::{Coordinator, Shutdown, ShutdownLayer};
