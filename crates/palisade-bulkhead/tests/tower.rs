//! `BulkheadLayer` and `BulkheadService`: one limit across every service a layer builds, wait
//! and shed modes, rejections as `BoxError`s, when the permit is released, and drops.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use palisade_bulkhead::{
    Aimd, BoxError, Bulkhead, BulkheadLayer, BulkheadService, LimitAlgorithm, Outcome, OwnedPermit,
    Reason, Rejected, Sample,
};
use palisade_core::TokioClock;
use tokio::sync::oneshot;
use tower_layer::Layer;
use tower_service::Service;

/// Always ready; counts calls; answers when the test sends the answer.
#[derive(Clone, Default)]
struct Slow {
    calls: Arc<AtomicUsize>,
}

type Reply = oneshot::Sender<Result<u32, BoxError>>;

impl Service<Reply> for Slow {
    type Response = u32;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, reply: Reply) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        // The test answers through the sender it gets back.
        let _ = reply.send(Err(Box::new(Handle(std::sync::Mutex::new(Some(tx))))));
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err("dropped".into())) })
    }
}

/// Hands the test the sender that answers a call.
#[derive(Debug)]
struct Handle(std::sync::Mutex<Option<Reply>>);

impl std::fmt::Display for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("handle")
    }
}

impl std::error::Error for Handle {}

/// Calls `svc` (ready already) and returns the response future and the sender answering it.
fn start<S>(svc: &mut S) -> (S::Future, Reply)
where
    S: Service<Reply>,
{
    let (tx, mut rx) = oneshot::channel();
    let fut = svc.call(tx);
    let reply = match rx.try_recv() {
        Ok(Err(handle)) => handle
            .downcast::<Handle>()
            .unwrap()
            .0
            .lock()
            .unwrap()
            .take()
            .unwrap(),
        _ => panic!("the inner service was not called"),
    };
    (fut, reply)
}

fn ready<S: Service<R>, R>(svc: &mut S) -> Poll<Result<(), S::Error>> {
    svc.poll_ready(&mut Context::from_waker(Waker::noop()))
}

fn rejected(err: BoxError) -> Rejected {
    *err.downcast::<Rejected>().expect("a Rejected")
}

fn in_flight(b: &Bulkhead) -> u32 {
    b.metrics().in_flight
}

#[tokio::test]
async fn every_service_of_a_layer_shares_one_limit_and_holds_it_until_the_response() {
    let bulkhead = Bulkhead::builder(1).max_queued(4).build().unwrap();
    let layer = BulkheadLayer::new(bulkhead.clone());
    let inner = Slow::default();
    let mut a = layer.layer(inner.clone());
    let mut b = layer.layer(inner.clone()).clone();
    assert!(matches!(ready(&mut a), Poll::Ready(Ok(()))));
    assert!(ready(&mut b).is_pending(), "one permit for both services");
    let (response, reply) = start(&mut a);
    assert_eq!(
        in_flight(&bulkhead),
        1,
        "held while the response is pending"
    );
    reply.send(Ok(7)).unwrap();
    assert_eq!(response.await.unwrap(), 7);
    assert_eq!(in_flight(&bulkhead), 1, "handed to the waiting service");
    poll_fn(|cx| b.poll_ready(cx)).await.unwrap();
    let (response, reply) = start(&mut b);
    reply.send(Err("boom".into())).unwrap();
    assert_eq!(response.await.unwrap_err().to_string(), "boom");
    assert_eq!(in_flight(&bulkhead), 0, "released on an error too");
    assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_caller_is_ready_and_its_call_fails_without_reaching_the_inner_service() {
    let bulkhead = Bulkhead::builder(1).max_queued(1).build().unwrap();
    let layer = BulkheadLayer::new(bulkhead.clone());
    let inner = Slow::default();
    let mut holder = layer.layer(inner.clone());
    let mut queued = layer.layer(inner.clone());
    let mut refused = layer.layer(inner.clone());
    assert!(ready(&mut holder).is_ready());
    assert!(ready(&mut queued).is_pending());
    assert!(matches!(ready(&mut refused), Poll::Ready(Ok(()))));
    let (tx, _rx) = oneshot::channel();
    let err = rejected(refused.call(tx).await.unwrap_err());
    assert_eq!((err.reason(), err.limit()), (Reason::QueueFull, 1));
    assert_eq!(inner.calls.load(Ordering::SeqCst), 0);
    // After the refusal the service tries again on its next poll_ready.
    assert!(ready(&mut refused).is_ready());
}

#[tokio::test]
async fn shed_mode_never_waits() {
    let bulkhead = Bulkhead::builder(1).max_queued(8).build().unwrap();
    let layer = BulkheadLayer::new(bulkhead.clone()).shed();
    let inner = Slow::default();
    let mut holder = layer.layer(inner.clone());
    let mut shed = layer.layer(inner.clone());
    assert!(ready(&mut holder).is_ready());
    assert!(matches!(ready(&mut shed), Poll::Ready(Ok(()))));
    let (tx, _rx) = oneshot::channel();
    let err = rejected(shed.call(tx).await.unwrap_err());
    assert_eq!(err.reason(), Reason::Full);
    assert_eq!(bulkhead.metrics().queued, 0);
    assert_eq!(inner.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_service_dropped_while_queued_or_holding_a_permit_leaks_nothing() {
    let bulkhead = Bulkhead::builder(1).max_queued(4).build().unwrap();
    let layer = BulkheadLayer::new(bulkhead.clone());
    let mut holder = layer.layer(Slow::default());
    let mut waiting = layer.layer(Slow::default());
    assert!(ready(&mut holder).is_ready());
    assert!(ready(&mut waiting).is_pending());
    assert_eq!(bulkhead.metrics().queued, 1);
    drop(waiting);
    assert_eq!(bulkhead.metrics().queued, 0);
    drop(holder);
    assert_eq!(in_flight(&bulkhead), 0);
    // into_inner gives both back as well.
    let mut holder = layer.layer(Slow::default());
    assert!(ready(&mut holder).is_ready());
    let _inner: Slow = holder.into_inner();
    assert_eq!(in_flight(&bulkhead), 0);
    // A response future dropped before it completes releases its permit.
    let mut svc = layer.layer(Slow::default());
    assert!(ready(&mut svc).is_ready());
    let (response, _reply) = start(&mut svc);
    assert_eq!(in_flight(&bulkhead), 1);
    drop(response);
    assert_eq!(in_flight(&bulkhead), 0);
}

#[tokio::test]
async fn release_with_moves_the_permit_into_the_response() {
    /// A response that keeps the permit, as a streaming body would.
    struct Streaming {
        _permit: Option<OwnedPermit>,
    }
    #[derive(Clone)]
    struct Body;
    impl Service<()> for Body {
        type Response = Streaming;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Streaming, BoxError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, (): ()) -> Self::Future {
            std::future::ready(Ok(Streaming { _permit: None }))
        }
    }
    let bulkhead = Bulkhead::new(1).unwrap();
    let layer = BulkheadLayer::new(bulkhead.clone()).release_with(
        |mut response: Streaming, permit: OwnedPermit| {
            response._permit = Some(permit);
            response
        },
    );
    let mut svc: BulkheadService<Body, _, _> = layer.layer(Body);
    poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let body = svc.call(()).await.unwrap();
    assert_eq!(in_flight(&bulkhead), 1, "the body still holds the permit");
    drop(body);
    assert_eq!(in_flight(&bulkhead), 0);
}

/// An adaptive bulkhead whose AIMD cuts 10 to 5 on the first drop.
fn adaptive() -> Bulkhead {
    let aimd = Aimd::builder()
        .initial_limit(10)
        .backoff_ratio(0.5)
        .build()
        .unwrap();
    Bulkhead::adaptive(aimd).build().unwrap()
}

/// Calls once through a fresh service of `layer` and answers with `answer`, or drops the
/// response future unanswered if `answer` is `None`.
async fn one_call<R>(
    layer: &BulkheadLayer<palisade_core::FastClock, R>,
    answer: Option<Result<u32, BoxError>>,
) where
    R: Clone + palisade_bulkhead::OnResponse<u32, palisade_core::FastClock>,
{
    let mut svc = layer.layer(Slow::default());
    poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let (response, reply) = start(&mut svc);
    match answer {
        Some(answer) => {
            reply.send(answer).unwrap();
            let _ = response.await;
        }
        None => drop(response),
    }
}

#[tokio::test]
async fn errors_and_dropped_responses_tell_an_adaptive_bulkhead_of_overload() {
    for (answer, errors_as, limit) in [
        (Some(Ok(1)), Outcome::Dropped, 10),
        (Some(Err("timed out".into())), Outcome::Dropped, 5),
        (None, Outcome::Dropped, 5),
        (Some(Err("not found".into())), Outcome::Ignored, 10),
        (None, Outcome::Ignored, 10),
    ] {
        let bulkhead = adaptive();
        let layer = BulkheadLayer::new(bulkhead.clone()).errors_as(errors_as);
        one_call(&layer, answer).await;
        assert_eq!(bulkhead.max_concurrent(), limit, "errors as {errors_as:?}");
        assert_eq!(in_flight(&bulkhead), 0);
    }
    // The setting survives cloning a service.
    let bulkhead = adaptive();
    let layer = BulkheadLayer::new(bulkhead.clone()).errors_as(Outcome::Ignored);
    let mut svc = layer.layer(Slow::default()).clone();
    poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    let (response, reply) = start(&mut svc);
    reply.send(Err("not found".into())).unwrap();
    let _ = response.await;
    assert_eq!(bulkhead.max_concurrent(), 10);
}

#[tokio::test]
async fn release_with_can_classify_a_response() {
    let bulkhead = adaptive();
    // A 503 (here: 503u32) is overload although the call succeeded.
    let layer =
        BulkheadLayer::new(bulkhead.clone()).release_with(|status: u32, permit: OwnedPermit| {
            if status == 503 {
                permit.release_as(Outcome::Dropped);
            }
            status
        });
    one_call(&layer, Some(Ok(200))).await;
    assert_eq!(bulkhead.max_concurrent(), 10);
    one_call(&layer, Some(Ok(503))).await;
    assert_eq!(bulkhead.max_concurrent(), 5);
    assert_eq!(in_flight(&bulkhead), 0);
}

/// A limit algorithm that keeps 10 and records every sample it is fed.
#[derive(Debug, Clone, Default)]
struct Recorder(Arc<std::sync::Mutex<Vec<Sample>>>);

impl Recorder {
    fn take(&self) -> Vec<Sample> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl LimitAlgorithm for Recorder {
    fn initial_limit(&self) -> u32 {
        10
    }
    fn update(&mut self, sample: Sample) -> u32 {
        self.0.lock().unwrap().push(sample);
        10
    }
    fn bounds(&self) -> (u32, u32) {
        (10, 10)
    }
}

/// Ready or failing readiness, as told; answers at once.
#[derive(Clone)]
struct Readiness(bool);

impl Service<()> for Readiness {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(if self.0 { Ok(()) } else { Err("broken".into()) })
    }

    fn call(&mut self, (): ()) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

/// README, Adaptive limits: in tower, a *response* reports a success or `errors_as`, and the
/// service docs say a caller that went away without a request gives no sample. A permit taken
/// by `poll_ready` that no `call` used (the service dropped after readiness, in either mode, or
/// after its inner `poll_ready` failed) reports nothing, however long it was held; before, it
/// reported a success timed by the idle hold, which cuts AIMD past its timeout and reads as
/// queueing to Vegas and Gradient2.
#[tokio::test(start_paused = true)]
async fn a_permit_no_call_used_reports_no_sample() {
    let recorder = Recorder::default();
    let bulkhead = Bulkhead::adaptive(recorder.clone())
        .clock(TokioClock::new())
        .build()
        .unwrap();
    for (layer, inner_ready) in [
        (BulkheadLayer::new(bulkhead.clone()), true),
        (BulkheadLayer::new(bulkhead.clone()).shed(), true),
        (BulkheadLayer::new(bulkhead.clone()), false),
    ] {
        let mut svc = layer.layer(Readiness(inner_ready));
        let ready = poll_fn(|cx| svc.poll_ready(cx)).await;
        assert_eq!(ready.is_ok(), inner_ready);
        assert_eq!(bulkhead.metrics().in_flight, 1, "readiness holds a permit");
        tokio::time::sleep(Duration::from_secs(6)).await;
        drop(svc);
        assert_eq!(bulkhead.metrics().in_flight, 0);
        assert_eq!(recorder.take(), [], "no request was sent, yet a sample was");
    }
}

/// README, Adaptive limits: a sample's latency is the work's, and in tower the work is the
/// request: a call's RTT counts from `call` to its response (or to the response future's
/// drop), not from the `poll_ready` that reserved the permit, however long the caller waited
/// in between (a balancer keeping ready endpoints, a buffer's worker).
#[tokio::test(start_paused = true)]
async fn a_calls_sample_is_timed_from_the_call() {
    let recorder = Recorder::default();
    let bulkhead = Bulkhead::adaptive(recorder.clone())
        .clock(TokioClock::new())
        .build()
        .unwrap();
    for (answer, dropped) in [(Some(Ok(1)), false), (None, true)] {
        let mut svc = BulkheadLayer::new(bulkhead.clone()).layer(Slow::default());
        poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        let (response, reply) = start(&mut svc);
        tokio::time::sleep(Duration::from_millis(20)).await;
        match answer {
            Some(answer) => {
                reply.send(answer).unwrap();
                response.await.unwrap();
            }
            None => drop(response),
        }
        assert_eq!(
            recorder.take(),
            [Sample::new(Duration::from_millis(20), 1, dropped)]
        );
    }
}

#[test]
fn services_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    let layer = BulkheadLayer::new(Bulkhead::new(1).unwrap());
    let mut svc = layer.layer(Slow::default());
    send_sync(&layer);
    send_sync(&svc);
    let _ = ready(&mut svc);
    let (tx, _rx) = oneshot::channel();
    let fut = pin!(svc.call(tx));
    fn send<T: Send>(_: &T) {}
    send(&fut);
}

/// Audit: on a runtime without the time driver, a service waiting with `max_wait` panics in
/// `poll_ready` (tokio's timer; documented). The panicking task must leave the queue: a ghost
/// waiter would take the next permit released and keep it for good.
#[test]
fn a_task_that_panics_making_its_deadline_leaves_the_queue() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bulkhead = Bulkhead::builder(1)
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    let layer = BulkheadLayer::new(bulkhead.clone());
    let mut holder = layer.layer(Slow::default());
    assert!(ready(&mut holder).is_ready());
    let mut waiting = layer.layer(Slow::default());
    let task = runtime.spawn(async move { poll_fn(|cx| waiting.poll_ready(cx)).await.is_ok() });
    assert!(runtime.block_on(task).unwrap_err().is_panic());
    assert_eq!(
        bulkhead.metrics().queued,
        0,
        "the panicked waiter left the queue"
    );
    drop(holder);
    assert_eq!(in_flight(&bulkhead), 0, "the permit came back");
    assert!(bulkhead.try_acquire().is_ok());
}
