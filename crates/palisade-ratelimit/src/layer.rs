//! [`RateLimitLayer`]: a shared rate limit for tower stacks.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use crate::service::RateLimit;

/// What the service does with a request over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Fail it at once with a [`RateLimited`](crate::RateLimited) error carrying `retry_after`
    /// (answer 429). Servers usually want this. The default.
    Reject,
    /// Hold it until its cells are free, in first-come, first-served order: `poll_ready` waits
    /// for an unkeyed limiter, the response future for a keyed one (the key is in the request).
    /// A request that would wait longer than `max_wait` is rejected at once instead.
    Backpressure {
        /// The longest a request may wait; `Duration::MAX` for no bound.
        max_wait: Duration,
    },
}

/// Applies a rate limit to every service it wraps. The limiter sits in an `Arc` that every
/// service built by the layer, and every clone of those services, shares: a cloned stack
/// enforces one limit, not one per clone.
///
/// ```
/// use std::sync::Arc;
/// use palisade_ratelimit::{KeyedRateLimiter, Quota, RateLimitLayer, RateLimiter};
///
/// // One limit for all traffic, waiting when over it (client side):
/// let shared = Arc::new(RateLimiter::new(Quota::per_second(100))?);
/// let client = RateLimitLayer::new(shared).backpressure();
///
/// // One limit per client, rejecting when over it (server side):
/// let per_client = Arc::new(KeyedRateLimiter::<u32>::new(Quota::per_second(10).burst(20))?);
/// let server = RateLimitLayer::keyed(per_client, |req: &(u32, &str)| req.0);
/// # let _ = (client, server);
/// # Ok::<(), palisade_ratelimit::ConfigError>(())
/// ```
pub struct RateLimitLayer<L, F = Unkeyed> {
    limiter: Arc<L>,
    key: F,
    mode: Mode,
}

/// The key "extractor" of an unkeyed layer: every request shares one limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unkeyed;

impl<L> RateLimitLayer<L, Unkeyed> {
    /// One limit for every request, from a [`RateLimiter`](crate::RateLimiter). Reject mode.
    pub const fn new(limiter: Arc<L>) -> Self {
        RateLimitLayer {
            limiter,
            key: Unkeyed,
            mode: Mode::Reject,
        }
    }
}

impl<L, F> RateLimitLayer<L, F> {
    /// One limit per key, from a [`KeyedRateLimiter`](crate::KeyedRateLimiter); `key` reads
    /// the key from the request (a client address, a header). Reject mode.
    pub const fn keyed(limiter: Arc<L>, key: F) -> Self {
        RateLimitLayer {
            limiter,
            key,
            mode: Mode::Reject,
        }
    }

    /// Reject requests over the limit (the default).
    #[must_use]
    pub fn reject(mut self) -> Self {
        self.mode = Mode::Reject;
        self
    }

    /// Hold requests over the limit until they fit, however long.
    #[must_use]
    pub fn backpressure(mut self) -> Self {
        self.mode = Mode::Backpressure {
            max_wait: Duration::MAX,
        };
        self
    }

    /// Hold requests over the limit until they fit, rejecting at once those that would wait
    /// longer than `max_wait`.
    #[must_use]
    pub fn backpressure_within(mut self, max_wait: Duration) -> Self {
        self.mode = Mode::Backpressure { max_wait };
        self
    }

    /// The mode.
    pub const fn mode(&self) -> Mode {
        self.mode
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &Arc<L> {
        &self.limiter
    }
}

impl<S, L, F: Clone> Layer<S> for RateLimitLayer<L, F> {
    type Service = RateLimit<S, L, F>;

    fn layer(&self, inner: S) -> RateLimit<S, L, F> {
        RateLimit::new(
            inner,
            Arc::clone(&self.limiter),
            self.key.clone(),
            self.mode,
        )
    }
}

impl<L, F: Clone> Clone for RateLimitLayer<L, F> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            limiter: Arc::clone(&self.limiter),
            key: self.key.clone(),
            mode: self.mode,
        }
    }
}

impl<L: fmt::Debug, F> fmt::Debug for RateLimitLayer<L, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.limiter)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}
