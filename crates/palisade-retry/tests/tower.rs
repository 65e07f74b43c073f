//! `RetryLayer` and `RetryService` over a hand-written tower service.

use std::future::{Ready, ready};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_retry::{Backoff, Decision, RetryLayer, RetryPolicy, RetryService, TpsBudget};
use tower_layer::Layer;
use tower_service::Service;

/// Fails its first `failures` calls (shared across clones), then echoes the request. Counts
/// `poll_ready` calls so a test can see readiness is checked before every attempt.
#[derive(Clone)]
struct Flaky {
    calls: Arc<AtomicU32>,
    readies: Arc<AtomicU32>,
    failures: u32,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Flaky {
    fn new(failures: u32) -> Flaky {
        Flaky {
            calls: Arc::default(),
            readies: Arc::default(),
            failures,
            seen: Arc::default(),
        }
    }
}

impl Service<String> for Flaky {
    type Response = String;
    type Error = &'static str;
    type Future = Ready<Result<String, &'static str>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.readies.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: String) -> Self::Future {
        self.seen.lock().unwrap().push(req.clone());
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        ready(if n < self.failures {
            Err("unavailable")
        } else {
            Ok(req)
        })
    }
}

async fn call<S: Service<String>>(svc: &mut S, req: &str) -> Result<S::Response, S::Error> {
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req.to_string()).await
}

fn quick(attempts: u32) -> RetryPolicy {
    RetryPolicy::builder()
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .max_attempts(attempts)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn retries_a_cloned_request_until_it_succeeds() {
    let inner = Flaky::new(2);
    let mut svc = RetryLayer::new(quick(5)).layer(inner.clone());
    assert_eq!(call(&mut svc, "hello").await, Ok("hello".to_string()));
    assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
    assert_eq!(*inner.seen.lock().unwrap(), ["hello", "hello", "hello"]);
    // One poll_ready by the caller, then one before each of the two retries.
    assert_eq!(inner.readies.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn gives_up_with_the_inner_error() {
    let inner = Flaky::new(10);
    let mut svc = RetryService::new(inner.clone(), quick(3));
    assert_eq!(call(&mut svc, "x").await, Err("unavailable"));
    assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
    assert_eq!(svc.get_ref().failures, 10);
}

#[tokio::test(start_paused = true)]
async fn classifies_responses_and_errors() {
    let inner = Flaky::new(0);
    let mut svc = RetryLayer::new(quick(4))
        .when(|o: &Result<String, &'static str>| match o {
            Ok(body) if body == "busy" => Decision::Retry,
            _ => Decision::DontRetry,
        })
        .layer(inner.clone());
    assert_eq!(call(&mut svc, "busy").await, Ok("busy".to_string()));
    assert_eq!(inner.calls.load(Ordering::SeqCst), 4);
    assert_eq!(call(&mut svc, "fine").await, Ok("fine".to_string()));
    assert_eq!(inner.calls.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn services_built_by_one_layer_share_its_budget() {
    // A floor of one retry for the window, no ratio: one retry for everyone.
    let budget = Arc::new(
        TpsBudget::builder()
            .min_per_sec(1)
            .ttl(Duration::from_secs(1))
            .retry_ratio(0.0)
            .build()
            .unwrap(),
    );
    let layer = RetryLayer::new(quick(5)).budget(budget);
    let inner = Flaky::new(100);
    let mut a = layer.layer(inner.clone());
    let mut b = layer.layer(inner.clone());
    assert_eq!(call(&mut a, "a").await, Err("unavailable"));
    assert_eq!(
        inner.calls.load(Ordering::SeqCst),
        2,
        "a: first attempt and the one retry"
    );
    assert_eq!(call(&mut b, "b").await, Err("unavailable"));
    assert_eq!(inner.calls.load(Ordering::SeqCst), 3, "b: no retry left");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_response_future_mid_backoff_stops_retrying() {
    let inner = Flaky::new(100);
    let mut svc = RetryService::new(
        inner.clone(),
        RetryPolicy::builder()
            .backoff(Backoff::constant(Duration::from_secs(1)))
            .max_attempts(5)
            .build()
            .unwrap(),
    );
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let fut = svc.call("x".to_string());
    let timeout = tokio::time::timeout(Duration::from_millis(500), fut).await;
    assert!(timeout.is_err(), "still backing off");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
}
