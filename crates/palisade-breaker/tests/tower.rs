//! `CircuitBreakerLayer`: one breaker shared by every service and clone, typed rejections,
//! response classification, and cancel-safety of the response future.

use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_breaker::{BoxError, CircuitBreaker, CircuitBreakerLayer, Outcome, Rejected, State};
use palisade_core::TokioClock;
use tower_layer::Layer;
use tower_service::Service;

/// Answers each request with its own value as the status; counts calls.
#[derive(Clone)]
struct Echo {
    calls: Arc<AtomicUsize>,
}

impl Service<u16> for Echo {
    type Response = u16;
    type Error = std::io::Error;
    type Future = Ready<Result<u16, std::io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, status: u16) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        ready(if status == 0 {
            Err(std::io::Error::other("connection reset"))
        } else {
            Ok(status)
        })
    }
}

/// Never answers.
#[derive(Clone)]
struct Hang;

impl Service<()> for Hang {
    type Response = ();
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<(), std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        Box::pin(std::future::pending())
    }
}

fn breaker() -> Arc<CircuitBreaker<TokioClock>> {
    Arc::new(
        CircuitBreaker::builder()
            .no_failure_rate()
            .consecutive_failures(2)
            .open_duration(Duration::from_secs(10))
            .half_open_probes(1)
            .half_open_success_ratio(1.0)
            .clock(TokioClock::new())
            .build()
            .unwrap(),
    )
}

async fn call<S: Service<R, Error = BoxError>, R>(
    svc: &mut S,
    req: R,
) -> Result<S::Response, BoxError> {
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
}

#[tokio::test(start_paused = true)]
async fn every_service_and_clone_of_a_layer_shares_one_breaker() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CircuitBreakerLayer::new(breaker());
    let mut a = layer.layer(Echo {
        calls: calls.clone(),
    });
    let mut b = a.clone();
    let mut c = layer.layer(Echo {
        calls: calls.clone(),
    });

    assert_eq!(call(&mut a, 200).await.unwrap(), 200);
    assert!(call(&mut a, 0).await.is_err());
    assert!(call(&mut b, 0).await.is_err()); // the second failure in a row, through a clone
    assert_eq!(layer.breaker().state(), State::Open);

    let err = call(&mut c, 200).await.unwrap_err();
    let rejected = err.downcast_ref::<Rejected>().expect("a typed rejection");
    assert_eq!(rejected.state(), State::Open);
    assert_eq!(rejected.retry_after(), Some(Duration::from_secs(10)));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the rejected request never reached the service"
    );

    // Inner errors come through boxed, as themselves.
    layer.breaker().reset();
    let err = call(&mut c, 0).await.unwrap_err();
    assert!(err.downcast_ref::<std::io::Error>().is_some());
}

#[tokio::test(start_paused = true)]
async fn responses_are_classified() {
    let layer =
        CircuitBreakerLayer::new(breaker()).classify(|r: &Result<u16, std::io::Error>| match r {
            Ok(s) if *s >= 500 => Outcome::Failure,
            Ok(s) if *s >= 400 => Outcome::Ignored,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        });
    let mut svc = layer.layer(Echo {
        calls: Arc::default(),
    });
    assert_eq!(call(&mut svc, 503).await.unwrap(), 503);
    assert_eq!(call(&mut svc, 404).await.unwrap(), 404);
    assert_eq!(layer.breaker().state(), State::Closed);
    assert_eq!(call(&mut svc, 500).await.unwrap(), 500);
    assert_eq!(
        layer.breaker().state(),
        State::Open,
        "two 5xx in a row, the 404 ignored"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_response_future_frees_the_probe_slot() {
    let b = breaker();
    b.force_open();
    b.reset();
    b.try_acquire().unwrap().failure();
    b.try_acquire().unwrap().failure();
    tokio::time::sleep(Duration::from_secs(10)).await;

    let mut svc = CircuitBreakerLayer::new(b.clone()).layer(Hang);
    let probe = tokio::time::timeout(Duration::from_secs(1), call(&mut svc, ())).await;
    assert!(probe.is_err(), "the probe hung and was cancelled");
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.metrics().probes_admitted, 0);
    assert!(
        b.try_acquire().is_ok(),
        "the slot is free for the next probe"
    );
    assert_eq!(
        Arc::strong_count(&b),
        2,
        "the service holds one reference, nothing leaked"
    );
}
