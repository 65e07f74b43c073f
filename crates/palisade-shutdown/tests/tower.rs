//! The tower layer: requests counted in flight, refused once draining, waited for by the drain.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_shutdown::{Coordinator, Draining, Outcome, Phase, ShutdownLayer};
use tower_layer::Layer;
use tower_service::Service;

/// Answers after `delay`, counting the calls it got.
#[derive(Clone)]
struct Slow {
    delay: Duration,
    calls: Arc<AtomicUsize>,
}

impl Service<u32> for Slow {
    type Response = u32;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<u32, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(request)
        })
    }
}

fn slow(delay: Duration) -> (Slow, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    (
        Slow {
            delay,
            calls: calls.clone(),
        },
        calls,
    )
}

#[tokio::test(start_paused = true)]
async fn the_drain_waits_for_requests_in_flight_and_new_ones_are_refused_without_calling_inner() {
    let coordinator = Coordinator::builder()
        .signals([])
        .readiness_delay(Duration::from_secs(1))
        .build()
        .unwrap();
    let shutdown = coordinator.handle();
    let (inner, calls) = slow(Duration::from_secs(4));
    let layer = shutdown.layer();
    let mut service = layer.layer(inner.clone());
    // Another copy of the stack (another connection) shares the one counter.
    let mut other = ShutdownLayer::new(shutdown.clone()).layer(inner);

    let in_flight = tokio::spawn(service.call(7));
    tokio::task::yield_now().await;
    assert_eq!(shutdown.metrics().requests_in_flight, 1);
    let run = tokio::spawn(coordinator.run());
    shutdown.trigger();
    // Not ready, but still serving through the readiness delay.
    let during_delay = tokio::spawn(other.call(8));
    tokio::task::yield_now().await;
    assert_eq!(shutdown.metrics().requests_in_flight, 2);
    shutdown.wait_for(Phase::Draining).await;
    let refused = other.call(9).await.unwrap_err();
    assert!(refused.downcast_ref::<Draining>().is_some(), "{refused}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a refused request never reaches inner"
    );

    assert_eq!(in_flight.await.unwrap().unwrap(), 7);
    assert_eq!(during_delay.await.unwrap().unwrap(), 8);
    let report = run.await.unwrap();
    // The second request began at the trigger and took 4 s: the drain (from 1 s) took 3 s.
    let drain = report.phase(Phase::Draining).unwrap();
    assert_eq!(
        (drain.outcome.clone(), drain.took),
        (Outcome::Completed, Duration::from_secs(3))
    );
    assert_eq!(report.requests_abandoned, 0);
    assert_eq!(shutdown.metrics().requests_in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_request_is_counted_out_and_an_overrun_is_reported_abandoned() {
    let coordinator = Coordinator::builder()
        .signals([])
        .drain_timeout(Duration::from_secs(2))
        .deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    let shutdown = coordinator.handle();
    let (inner, _) = slow(Duration::from_secs(3600));
    let mut service = shutdown.layer().layer(inner);
    let cancelled = service.call(1);
    assert_eq!(shutdown.metrics().requests_in_flight, 1);
    drop(cancelled);
    assert_eq!(
        shutdown.metrics().requests_in_flight,
        0,
        "a dropped future counts out"
    );

    let stuck = tokio::spawn(service.call(2));
    tokio::task::yield_now().await;
    shutdown.trigger();
    let report = coordinator.run().await;
    assert_eq!(
        report.phase(Phase::Draining).unwrap().outcome,
        Outcome::TimedOut
    );
    assert_eq!(report.requests_abandoned, 1);
    assert_eq!(report.total, Duration::from_secs(5));
    stuck.abort();
    assert!(stuck.await.unwrap_err().is_cancelled());
    assert_eq!(shutdown.metrics().requests_in_flight, 0);
}

#[test]
fn the_service_keeps_tower_conventions() {
    let coordinator = Coordinator::builder().signals([]).build().unwrap();
    let (inner, _) = slow(Duration::ZERO);
    let mut service = coordinator.handle().layer().layer(inner);
    assert_eq!(service.get_ref().delay, Duration::ZERO);
    service.get_mut().delay = Duration::from_secs(1);
    assert_eq!(service.into_inner().delay, Duration::from_secs(1));
}
