//! `palisade::Stack` nests the layers in the recommended order whatever order they are added
//! in: each test pins one step of that order by behaviour (what the upstream sees), and would
//! fail with the two layers swapped.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use palisade::Stack;
use palisade::breaker::{
    CircuitBreaker, CircuitBreakerLayer, Rejected as BreakerOpen, SlidingWindow,
};
use palisade::bulkhead::{Bulkhead, BulkheadLayer, Rejected as BulkheadFull};
use palisade::ratelimit::{Quota, RateLimitLayer, RateLimited, RateLimiter};
use palisade::retry::{Backoff, RetryLayer, RetryPolicy};
use tower::{BoxError, Service, ServiceExt, service_fn};
use tower_layer::Layer;

/// An upstream that fails every call after `delay`, counting calls and the most in flight.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<AtomicU32>,
    in_flight: Arc<AtomicU32>,
    max_in_flight: Arc<AtomicU32>,
}

impl Upstream {
    fn service(
        &self,
        delay: Duration,
    ) -> impl Service<u32, Response = u32, Error = io::Error, Future: Send> + Clone + Send + 'static
    {
        let up = self.clone();
        service_fn(move |_: u32| {
            let up = up.clone();
            async move {
                up.calls.fetch_add(1, Ordering::SeqCst);
                let now = up.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                up.max_in_flight.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                up.in_flight.fetch_sub(1, Ordering::SeqCst);
                Err::<u32, _>(io::Error::from(io::ErrorKind::ConnectionReset))
            }
        })
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Three attempts, 100 ms apart.
fn retry3() -> RetryLayer {
    let policy = RetryPolicy::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .build()
        .unwrap();
    RetryLayer::new(policy)
}

/// One request per hour: the first is admitted, the next rejected.
fn one_per_hour() -> RateLimitLayer<RateLimiter> {
    RateLimitLayer::new(Arc::new(RateLimiter::new(Quota::per_hour(1)).unwrap()))
}

/// A breaker that opens after three failed calls in a row, for a minute.
fn opens_after_three_failures() -> CircuitBreaker {
    CircuitBreaker::builder()
        .window(SlidingWindow::count(3))
        .minimum_calls(3)
        .failure_rate(100.0)
        .open_duration(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_request_spends_the_rate_limit_once_however_many_attempts_it_takes() {
    for rate_limit_first in [true, false] {
        let upstream = Upstream::default();
        let stack = if rate_limit_first {
            Stack::new().rate_limit(one_per_hour()).retry(retry3())
        } else {
            Stack::new().retry(retry3()).rate_limit(one_per_hour())
        };
        let mut svc = stack.layer(upstream.service(Duration::ZERO));
        let first = svc.ready().await.unwrap().call(1).await.unwrap_err();
        assert!(first.is::<io::Error>(), "{first}");
        assert_eq!(
            upstream.calls(),
            3,
            "all three attempts went through the limit"
        );
        let second = svc.ready().await.unwrap().call(2).await.unwrap_err();
        assert!(second.is::<RateLimited>(), "{second}");
        assert_eq!(upstream.calls(), 3);
    }
}

#[tokio::test(start_paused = true)]
async fn the_attempt_rate_limit_counts_every_attempt() {
    let upstream = Upstream::default();
    let mut svc = Stack::new()
        .rate_limit_attempts(one_per_hour())
        .retry(retry3())
        .layer(upstream.service(Duration::ZERO));
    let e: BoxError = svc.ready().await.unwrap().call(1).await.unwrap_err();
    // The first attempt reached the upstream; the two retries were refused by its quota.
    assert_eq!(upstream.calls(), 1, "{e}");
    assert!(e.is::<RateLimited>(), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_request_holds_one_bulkhead_slot_across_its_retries() {
    let upstream = Upstream::default();
    let bulkhead = Bulkhead::builder(1).build().unwrap();
    let svc = Stack::new()
        .retry(retry3())
        .bulkhead(BulkheadLayer::new(bulkhead).shed())
        .layer(upstream.service(Duration::from_millis(10)));
    let first = tokio::spawn(svc.clone().oneshot(1));
    // Mid-way through the first request's retries (in its backoff, between attempts).
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(upstream.calls(), 1);
    let second = svc.clone().oneshot(2).await.unwrap_err();
    assert!(second.is::<BulkheadFull>(), "{second}");
    first.await.unwrap().unwrap_err();
    assert_eq!(upstream.calls(), 3, "only the first request's attempts");
    assert_eq!(upstream.max_in_flight.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_counts_attempts_not_requests() {
    let upstream = Upstream::default();
    let breaker = opens_after_three_failures();
    let mut svc = Stack::new()
        .breaker(CircuitBreakerLayer::new(Arc::new(breaker)))
        .retry(retry3())
        .layer(upstream.service(Duration::ZERO));
    // One request, three failed attempts: enough for the breaker's window of three.
    svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(upstream.calls(), 3);
    let e = svc.ready().await.unwrap().call(2).await.unwrap_err();
    assert!(e.is::<BreakerOpen>(), "{e}");
    assert_eq!(upstream.calls(), 3, "the open breaker let nothing through");
}

#[tokio::test(start_paused = true)]
async fn the_breaker_counts_timed_out_attempts() {
    let hangs = service_fn(|_: u32| std::future::pending::<Result<u32, io::Error>>());
    let breaker = opens_after_three_failures();
    let breaker = Arc::new(breaker);
    let mut svc = Stack::new()
        .retry(retry3())
        .timeout(tower::timeout::TimeoutLayer::new(Duration::from_millis(50)))
        .breaker(CircuitBreakerLayer::new(breaker.clone()))
        .layer(hangs);
    let e = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(e.is::<tower::timeout::error::Elapsed>(), "{e}");
    // Three attempts timed out inside the breaker: three failures, and it opened.
    let e = svc.ready().await.unwrap().call(2).await.unwrap_err();
    assert!(e.is::<BreakerOpen>(), "{e}");
}

#[test]
fn the_order_of_the_calls_does_not_change_the_type() {
    fn same_type<T>(_: &T, _: &T) {}
    let a = Stack::new().retry(retry3()).rate_limit(one_per_hour());
    let b = Stack::new().rate_limit(one_per_hour()).retry(retry3());
    same_type(&a, &b);
    let debug = format!("{a:?}");
    assert!(debug.contains("rate_limit: \"RateLimitLayer\""), "{debug}");
    assert!(debug.contains("bulkhead: \"Identity\""), "{debug}");
}
