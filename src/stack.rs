//! [`Stack`]: palisade's tower layers composed in the recommended order, whatever order you add
//! them in.
//!
//! A hand-written `tower::ServiceBuilder` applies layers in the order they are written, outermost
//! first, and nothing stops a retry from ending up outside the rate limit (so every retry spends a
//! client's quota) or a bulkhead from ending up inside the retry (so one request holds a slot per
//! attempt, and retries multiply concurrency). A `Stack` has one slot per pattern, each filled by
//! a method that takes that pattern's layer, and always nests them the same way:
//!
//! ```text
//!   request
//!     │  shutdown            refuses new requests once draining; counts the ones in flight
//!     │  rate_limit          per request (per client, keyed): retries don't spend the quota
//!     │  bulkhead            per request: one slot across all of its retries
//!     │  retry               attempts, with a budget shared by every caller
//!     │  rate_limit_attempts per attempt: the upstream's quota, retries included
//!     │  breaker             per attempt: sees only what reached the upstream
//!     │  timeout             per attempt, inside the breaker so that it counts timeouts
//!     ▼  your service (a pool, a reconnecting connection, a client)
//! ```
//!
//! `docs/layer-order.md` gives the reason for each step and what breaks when two are swapped.
//! Empty slots cost nothing: they are [`Identity`] layers.
//!
//! ```
//! # #[cfg(all(feature = "retry", feature = "breaker", feature = "ratelimit", feature = "bulkhead"))]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use palisade::Stack;
//! use palisade::breaker::{CircuitBreaker, CircuitBreakerLayer};
//! use palisade::bulkhead::{Bulkhead, BulkheadLayer};
//! use palisade::ratelimit::{Quota, RateLimitLayer, RateLimiter};
//! use palisade::retry::{RetryLayer, RetryPolicy, TpsBudget};
//! use tower_layer::Layer;
//!
//! let stack = Stack::new()
//!     // The order of these calls does not matter.
//!     .breaker(CircuitBreakerLayer::new(Arc::new(CircuitBreaker::builder().build()?)))
//!     .retry(RetryLayer::new(RetryPolicy::aws_standard()).budget(Arc::new(TpsBudget::builder().build()?)))
//!     .bulkhead(BulkheadLayer::new(Bulkhead::builder(64).build()?))
//!     .rate_limit(RateLimitLayer::new(Arc::new(RateLimiter::new(Quota::per_second(500))?)));
//! // Wrap the service that calls your upstream (here a stand-in that echoes).
//! let service = stack.layer(tower::service_fn(|req: u32| async move {
//!     Ok::<u32, std::io::Error>(req)
//! }));
//! # let _ = service;
//! # Ok(())
//! # }
//! # #[cfg(not(all(feature = "retry", feature = "breaker", feature = "ratelimit", feature = "bulkhead")))]
//! # fn main() {}
//! ```

use std::fmt;

pub use tower_layer::{Identity, Layer};

/// palisade's tower layers, one slot per pattern, always composed in the recommended order (see
/// the [module docs](self)). Build it with [`Stack::new`] and the slot methods; apply it with
/// [`Layer::layer`] or `ServiceBuilder::layer`.
///
/// Each type parameter is a slot's layer, [`Identity`] while the slot is empty:
/// `Sd` shutdown, `Rl` rate limit, `Bh` bulkhead, `Rt` retry, `Al` rate limit per attempt, `Cb`
/// breaker, `To` timeout per attempt.
#[derive(Clone)]
#[must_use = "a Stack does nothing until it wraps a service with `layer`"]
pub struct Stack<
    Sd = Identity,
    Rl = Identity,
    Bh = Identity,
    Rt = Identity,
    Al = Identity,
    Cb = Identity,
    To = Identity,
> {
    shutdown: Sd,
    rate_limit: Rl,
    bulkhead: Bh,
    retry: Rt,
    rate_limit_attempts: Al,
    breaker: Cb,
    timeout: To,
}

impl Stack {
    /// An empty stack: every slot is [`Identity`], so it wraps a service in nothing.
    pub const fn new() -> Stack {
        Stack {
            shutdown: Identity::new(),
            rate_limit: Identity::new(),
            bulkhead: Identity::new(),
            retry: Identity::new(),
            rate_limit_attempts: Identity::new(),
            breaker: Identity::new(),
            timeout: Identity::new(),
        }
    }
}

impl Default for Stack {
    fn default() -> Stack {
        Stack::new()
    }
}

impl<Sd, Rl, Bh, Rt, Al, Cb, To> Stack<Sd, Rl, Bh, Rt, Al, Cb, To> {
    /// The outermost slot: refuses new requests once the shutdown drains, and counts the ones in
    /// flight so the drain waits for them.
    #[cfg(feature = "shutdown")]
    pub fn shutdown(
        self,
        layer: palisade_shutdown::ShutdownLayer,
    ) -> Stack<palisade_shutdown::ShutdownLayer, Rl, Bh, Rt, Al, Cb, To> {
        Stack {
            shutdown: layer,
            rate_limit: self.rate_limit,
            bulkhead: self.bulkhead,
            retry: self.retry,
            rate_limit_attempts: self.rate_limit_attempts,
            breaker: self.breaker,
            timeout: self.timeout,
        }
    }

    /// The rate limit per request, outside the retry: a client's quota is spent once per request,
    /// however many attempts it takes, and a rejected request costs nothing further in.
    #[cfg(feature = "ratelimit")]
    pub fn rate_limit<L, F>(
        self,
        layer: palisade_ratelimit::RateLimitLayer<L, F>,
    ) -> Stack<Sd, palisade_ratelimit::RateLimitLayer<L, F>, Bh, Rt, Al, Cb, To> {
        Stack {
            shutdown: self.shutdown,
            rate_limit: layer,
            bulkhead: self.bulkhead,
            retry: self.retry,
            rate_limit_attempts: self.rate_limit_attempts,
            breaker: self.breaker,
            timeout: self.timeout,
        }
    }

    /// The bulkhead, outside the retry: a request holds one slot across all of its attempts, so
    /// retries never raise the concurrency past the limit.
    #[cfg(feature = "bulkhead")]
    pub fn bulkhead<C: palisade_core::Clock, R>(
        self,
        layer: palisade_bulkhead::BulkheadLayer<C, R>,
    ) -> Stack<Sd, Rl, palisade_bulkhead::BulkheadLayer<C, R>, Rt, Al, Cb, To> {
        Stack {
            shutdown: self.shutdown,
            rate_limit: self.rate_limit,
            bulkhead: layer,
            retry: self.retry,
            rate_limit_attempts: self.rate_limit_attempts,
            breaker: self.breaker,
            timeout: self.timeout,
        }
    }

    /// The retry: every layer inside it sees each attempt. Give it a budget
    /// ([`RetryLayer::budget`](palisade_retry::RetryLayer::budget)) so that an outage can't turn
    /// into a retry storm.
    #[cfg(feature = "retry")]
    pub fn retry<C, H, T>(
        self,
        layer: palisade_retry::RetryLayer<C, H, T>,
    ) -> Stack<Sd, Rl, Bh, palisade_retry::RetryLayer<C, H, T>, Al, Cb, To> {
        Stack {
            shutdown: self.shutdown,
            rate_limit: self.rate_limit,
            bulkhead: self.bulkhead,
            retry: layer,
            rate_limit_attempts: self.rate_limit_attempts,
            breaker: self.breaker,
            timeout: self.timeout,
        }
    }

    /// A rate limit per attempt, inside the retry: the upstream's quota, which counts retries
    /// too. Outside the breaker, so its rejections never count as the upstream's failures.
    #[cfg(feature = "ratelimit")]
    pub fn rate_limit_attempts<L, F>(
        self,
        layer: palisade_ratelimit::RateLimitLayer<L, F>,
    ) -> Stack<Sd, Rl, Bh, Rt, palisade_ratelimit::RateLimitLayer<L, F>, Cb, To> {
        Stack {
            shutdown: self.shutdown,
            rate_limit: self.rate_limit,
            bulkhead: self.bulkhead,
            retry: self.retry,
            rate_limit_attempts: layer,
            breaker: self.breaker,
            timeout: self.timeout,
        }
    }

    /// The circuit breaker, inside everything but the per-attempt timeout: it judges the
    /// upstream by every attempt that reached it, and while open, fails attempts at once (the
    /// retry then decides whether to wait and try again).
    #[cfg(feature = "breaker")]
    pub fn breaker<K, C: palisade_core::Clock>(
        self,
        layer: palisade_breaker::CircuitBreakerLayer<K, C>,
    ) -> Stack<Sd, Rl, Bh, Rt, Al, palisade_breaker::CircuitBreakerLayer<K, C>, To> {
        Stack {
            shutdown: self.shutdown,
            rate_limit: self.rate_limit,
            bulkhead: self.bulkhead,
            retry: self.retry,
            rate_limit_attempts: self.rate_limit_attempts,
            breaker: layer,
            timeout: self.timeout,
        }
    }

    /// The time limit of each attempt, innermost: inside the breaker, so that a timed-out
    /// attempt counts as the upstream's failure (an attempt cut from outside the breaker is
    /// dropped, and the breaker records nothing), and inside the retry, so that each attempt
    /// gets the full time. Any timeout layer fits, e.g. tower's
    /// `tower::timeout::TimeoutLayer`; classify its error as retryable and as a failure.
    pub fn timeout<L>(self, layer: L) -> Stack<Sd, Rl, Bh, Rt, Al, Cb, L> {
        Stack {
            shutdown: self.shutdown,
            rate_limit: self.rate_limit,
            bulkhead: self.bulkhead,
            retry: self.retry,
            rate_limit_attempts: self.rate_limit_attempts,
            breaker: self.breaker,
            timeout: layer,
        }
    }
}

impl<S, Sd, Rl, Bh, Rt, Al, Cb, To> Layer<S> for Stack<Sd, Rl, Bh, Rt, Al, Cb, To>
where
    To: Layer<S>,
    Cb: Layer<To::Service>,
    Al: Layer<Cb::Service>,
    Rt: Layer<Al::Service>,
    Bh: Layer<Rt::Service>,
    Rl: Layer<Bh::Service>,
    Sd: Layer<Rl::Service>,
{
    type Service = Sd::Service;

    fn layer(&self, inner: S) -> Sd::Service {
        let inner = self.timeout.layer(inner);
        let inner = self.breaker.layer(inner);
        let inner = self.rate_limit_attempts.layer(inner);
        let inner = self.retry.layer(inner);
        let inner = self.bulkhead.layer(inner);
        let inner = self.rate_limit.layer(inner);
        self.shutdown.layer(inner)
    }
}

impl<Sd, Rl, Bh, Rt, Al, Cb, To> fmt::Debug for Stack<Sd, Rl, Bh, Rt, Al, Cb, To> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// A slot's layer type, without its (long) generic arguments.
        fn slot<T>() -> &'static str {
            let name = std::any::type_name::<T>();
            let name = name.split('<').next().unwrap_or(name);
            name.rsplit("::").next().unwrap_or(name)
        }
        f.debug_struct("Stack")
            .field("shutdown", &slot::<Sd>())
            .field("rate_limit", &slot::<Rl>())
            .field("bulkhead", &slot::<Bh>())
            .field("retry", &slot::<Rt>())
            .field("rate_limit_attempts", &slot::<Al>())
            .field("breaker", &slot::<Cb>())
            .field("timeout", &slot::<To>())
            .finish()
    }
}
