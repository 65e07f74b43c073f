//! [`CircuitBreakerLayer`]: the breaker as tower middleware.

use std::fmt;
use std::sync::Arc;

use palisade_core::{Clock, FastClock};
use tower_layer::Layer;

use crate::breaker::CircuitBreaker;
use crate::classify::ErrorsAreFailures;
use crate::service::CircuitBreakerService;

/// Wraps services in a [`CircuitBreakerService`] that shares **one** breaker: every service
/// this layer builds, and every clone of them, counts into and is stopped by the same breaker.
///
/// ```
/// use palisade_breaker::{CircuitBreaker, CircuitBreakerLayer, Outcome};
/// use std::sync::Arc;
/// use tower_layer::Layer;
///
/// struct Response { status: u16 }
///
/// let breaker = Arc::new(CircuitBreaker::builder().name("billing").build()?);
/// let layer = CircuitBreakerLayer::new(breaker.clone())
///     .classify(|r: &Result<Response, std::io::Error>| match r {
///         Ok(resp) if resp.status >= 500 => Outcome::Failure,
///         Ok(_) => Outcome::Success,
///         Err(_) => Outcome::Failure,
///     });
/// # let inner = tower_service_fn();
/// let service = layer.layer(inner);
/// # let _ = service;
/// # fn tower_service_fn() -> impl Clone { () }
/// # Ok::<(), palisade_breaker::ConfigError>(())
/// ```
pub struct CircuitBreakerLayer<K = ErrorsAreFailures, C: Clock = FastClock> {
    breaker: Arc<CircuitBreaker<C>>,
    classify: K,
}

impl<C: Clock> CircuitBreakerLayer<ErrorsAreFailures, C> {
    /// A layer around `breaker` that counts `Ok` as success and `Err` as failure.
    pub const fn new(breaker: Arc<CircuitBreaker<C>>) -> Self {
        CircuitBreakerLayer {
            breaker,
            classify: ErrorsAreFailures,
        }
    }
}

impl<K, C: Clock> CircuitBreakerLayer<K, C> {
    /// Classifies each result with `classify` (any `Fn(&Result<Response, Error>) -> Outcome +
    /// Clone`): a 503 response can be a failure, a 404 error ignored.
    pub fn classify<K2>(self, classify: K2) -> CircuitBreakerLayer<K2, C> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classify,
        }
    }

    /// The shared breaker.
    pub fn breaker(&self) -> &Arc<CircuitBreaker<C>> {
        &self.breaker
    }
}

impl<K: Clone, C: Clock> Clone for CircuitBreakerLayer<K, C> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            breaker: Arc::clone(&self.breaker),
            classify: self.classify.clone(),
        }
    }
}

impl<K, C: Clock> fmt::Debug for CircuitBreakerLayer<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, K: Clone, C: Clock> Layer<S> for CircuitBreakerLayer<K, C> {
    type Service = CircuitBreakerService<S, K, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService::new(inner, Arc::clone(&self.breaker), self.classify.clone())
    }
}
