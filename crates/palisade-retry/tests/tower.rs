//! `RetryLayer` and `RetryService` over a hand-written tower service.

use std::future::{Future, Ready, ready};
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

/// Answers every call with a retryable response that holds a `Live` guard (think of a response
/// whose body holds its connection); its readiness fails from the second `poll_ready` on,
/// shared by clones: the dependency went away after the first attempt.
#[derive(Clone, Default)]
struct GoesAway {
    readies: Arc<AtomicU32>,
    calls: Arc<AtomicU32>,
    live: Arc<AtomicU32>,
}

impl Service<()> for GoesAway {
    type Response = (u16, Live);
    type Error = &'static str;
    type Future = Ready<Result<(u16, Live), &'static str>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.readies.fetch_add(1, Ordering::SeqCst) == 0 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err("pool closed"))
        }
    }

    fn call(&mut self, (): ()) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.live.fetch_add(1, Ordering::SeqCst);
        ready(Ok((503, Live(self.live.clone()))))
    }
}

/// Before a retry the inner service must be ready again; if its readiness fails, that error is
/// the call's outcome (the service can't take the attempt, as a direct caller would see), not
/// the retryable response before it, which was dropped when the backoff began so it holds
/// nothing (no connection) while the loop sleeps.
#[tokio::test(start_paused = true)]
async fn a_readiness_error_before_a_retry_is_the_calls_outcome() {
    let inner = GoesAway::default();
    let mut svc = RetryLayer::new(quick(3))
        .when(|o: &Result<(u16, Live), &'static str>| match o {
            Ok((503, _)) => Decision::Retry,
            _ => Decision::DontRetry,
        })
        .layer(inner.clone());
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let mut fut = std::pin::pin!(svc.call(()));
    // The first attempt got its 503 and the loop sleeps: the response is already gone.
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    assert!(first.is_pending());
    assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        inner.live.load(Ordering::SeqCst),
        0,
        "the 503 was held during the backoff"
    );
    assert_eq!(fut.await.err(), Some("pool closed"));
    assert_eq!(
        inner.calls.load(Ordering::SeqCst),
        1,
        "no attempt on an unready service"
    );
    assert_eq!(inner.readies.load(Ordering::SeqCst), 2);
}

/// Hangs on its first call, answers on the next; its error type can stand for a timeout.
#[derive(Clone, Default)]
struct HangsOnce {
    calls: Arc<AtomicU32>,
    live: Arc<AtomicU32>,
    /// How many earlier calls' futures were still alive as each call started.
    live_at_call: Arc<Mutex<Vec<u32>>>,
}

struct Live(Arc<AtomicU32>);
impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Service<&'static str> for HangsOnce {
    type Response = &'static str;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<&'static str, std::io::Error>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: &'static str) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let earlier = self.live.fetch_add(1, Ordering::SeqCst);
        self.live_at_call.lock().unwrap().push(earlier);
        let live = Live(self.live.clone());
        Box::pin(async move {
            let _live = live;
            if n == 0 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok(req)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_cancels_the_slow_call_and_retries() {
    let inner = HangsOnce::default();
    let mut svc = RetryLayer::new(quick(3))
        .attempt_timeout(Duration::from_secs(2))
        .layer(inner.clone());
    let start = tokio::time::Instant::now();
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    assert_eq!(svc.call("ping").await.unwrap(), "ping");
    assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        inner.live.load(Ordering::SeqCst),
        0,
        "the timed-out call was not dropped"
    );
    assert_eq!(
        *inner.live_at_call.lock().unwrap(),
        [0, 0],
        "the timed-out call was still alive when the retry started"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(2010));

    // When every attempt times out, the caller gets the timeout as the service's error.
    let always = HangsOnce::default();
    let mut svc = RetryService::new(HangsForever(always.clone()), quick(2))
        .attempt_timeout(Duration::from_millis(500));
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let err = svc.call("ping").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(always.calls.load(Ordering::SeqCst), 2);
}

/// Never answers.
#[derive(Clone)]
struct HangsForever(HangsOnce);

impl Service<&'static str> for HangsForever {
    type Response = &'static str;
    type Error = std::io::Error;
    type Future = std::future::Pending<Result<&'static str, std::io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: &'static str) -> Self::Future {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        std::future::pending()
    }
}

#[test]
fn a_zero_delay_yields_between_calls() {
    use std::future::Future;
    use std::task::Waker;

    let inner = Flaky::new(2);
    let zero = RetryPolicy::builder()
        .backoff(Backoff::constant(Duration::ZERO))
        .max_attempts(3)
        .build()
        .unwrap();
    let mut svc = RetryLayer::new(zero).layer(inner.clone());
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = std::pin::pin!(svc.call("x".to_string()));
    for call in 1..=2 {
        assert!(
            fut.as_mut().poll(&mut cx).is_pending(),
            "no yield after call {call}"
        );
        assert_eq!(inner.calls.load(Ordering::SeqCst), call);
    }
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok("x".to_string())));
}

#[test]
fn the_tower_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    let mut svc = RetryLayer::new(quick(2))
        .attempt_timeout(Duration::from_secs(1))
        .layer(HangsOnce::default());
    assert_send_sync(&svc);
    let fut = svc.call("x");
    // The inner future is `Send` but not `Sync` (a boxed `dyn Future + Send`): only `Send`.
    fn assert_send<T: Send>(_: &T) {}
    assert_send(&fut);
    let layer = RetryLayer::new(quick(2));
    assert_send_sync(&layer);
}
