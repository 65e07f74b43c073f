//! The tower layer: reject and backpressure modes, one limit across clones, keyed limits, and
//! cells given back when a waiting service or future is dropped.

use std::future::{Future, Ready, poll_fn, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use palisade_core::TokioClock;
use palisade_ratelimit::{
    Algorithm, BoxError, KeyedRateLimiter, MultiGcra, Quota, RateLimit, RateLimitLayer,
    RateLimited, RateLimiter, SlidingWindow,
};
use tower_layer::Layer;
use tower_service::Service;

/// Always ready; counts calls; echoes the request.
#[derive(Clone, Default)]
struct Echo(Arc<AtomicUsize>);

impl<R> Service<R> for Echo {
    type Response = R;
    type Error = BoxError;
    type Future = Ready<Result<R, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        ready(Ok(req))
    }
}

fn limiter(quota: Quota) -> Arc<RateLimiter<Quota, TokioClock>> {
    Arc::new(
        RateLimiter::builder(quota)
            .clock(TokioClock::new())
            .build()
            .unwrap(),
    )
}

async fn call<S: Service<R, Error = BoxError>, R>(
    svc: &mut S,
    req: R,
) -> Result<S::Response, BoxError> {
    poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
}

fn rate_limited(err: &BoxError) -> RateLimited {
    *err.downcast_ref::<RateLimited>()
        .expect("a RateLimited rejection")
}

#[tokio::test(start_paused = true)]
async fn reject_mode_fails_fast_with_retry_after_and_never_calls_inner() {
    let calls = Echo::default();
    let mut svc = RateLimitLayer::new(limiter(Quota::per_second(2))).layer(calls.clone());
    assert_eq!(call(&mut svc, 1).await.unwrap(), 1);
    assert_eq!(call(&mut svc, 2).await.unwrap(), 2);
    let err = call(&mut svc, 3).await.unwrap_err();
    let rejected = rate_limited(&err);
    assert_eq!(rejected.retry_after(), Duration::from_millis(500));
    assert_eq!(rejected.limit(), 2);
    assert!(!rejected.keys_full());
    assert_eq!(calls.0.load(Ordering::SeqCst), 2);
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(call(&mut svc, 4).await.unwrap(), 4);
}

#[tokio::test(start_paused = true)]
async fn every_service_a_layer_builds_and_every_clone_share_one_limit() {
    let layer = RateLimitLayer::new(limiter(Quota::per_second(3)));
    let mut a = layer.layer(Echo::default());
    let mut b = layer.clone().layer(Echo::default());
    let mut c = a.clone();
    let mut admitted = 0;
    for svc in [&mut a, &mut b, &mut c] {
        for _ in 0..3 {
            admitted += usize::from(call(svc, ()).await.is_ok());
        }
    }
    assert_eq!(admitted, 3);
}

#[tokio::test(start_paused = true)]
async fn backpressure_waits_in_poll_ready_first_come_first_served() {
    let shared = limiter(Quota::per_second(10).burst(1));
    let layer = RateLimitLayer::new(Arc::clone(&shared)).backpressure();
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    for i in 0..5u32 {
        let mut svc = layer.layer(Echo::default());
        let order = Arc::clone(&order);
        tasks.push(tokio::spawn(async move {
            call(&mut svc, i).await.unwrap();
            order.lock().unwrap().push((i, start.elapsed()));
        }));
        // Let each task reserve before the next starts, so arrival order is defined.
        tokio::task::yield_now().await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    let expected: Vec<_> = (0..5u32)
        .map(|i| (i, Duration::from_millis(100 * u64::from(i))))
        .collect();
    assert_eq!(order, expected);
}

#[tokio::test(start_paused = true)]
async fn a_service_dropped_while_waiting_or_holding_a_cell_gives_it_back() {
    let shared = limiter(Quota::per_second(1));
    let layer = RateLimitLayer::new(Arc::clone(&shared)).backpressure();
    // Take the only cell, then make a second service reserve the next one and wait.
    let mut first = layer.layer(Echo::default());
    call(&mut first, ()).await.unwrap();
    let mut waiting = layer.layer(Echo::default());
    let pending =
        poll_fn(|cx| Poll::Ready(Service::<()>::poll_ready(&mut waiting, cx).is_pending())).await;
    assert!(pending, "the second service waits for the next cell");
    assert!(shared.peek().retry_after().unwrap() >= Duration::from_secs(1));
    drop(waiting);
    // Its reservation is gone: the next cell is free again in one interval, not two.
    assert_eq!(shared.peek().retry_after(), Some(Duration::from_secs(1)));

    // A service that got its cell in poll_ready but is dropped before call gives it back.
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut ready_one = layer.layer(Echo::default());
    assert!(
        poll_fn(|cx| Poll::Ready(Service::<()>::poll_ready(&mut ready_one, cx).is_ready())).await
    );
    assert!(!shared.peek().is_allowed());
    drop(ready_one);
    assert!(shared.peek().is_allowed());
}

#[tokio::test(start_paused = true)]
async fn backpressure_within_rejects_at_once_what_would_wait_too_long() {
    let shared = limiter(Quota::per_second(1));
    let mut svc = RateLimitLayer::new(Arc::clone(&shared))
        .backpressure_within(Duration::from_millis(500))
        .layer(Echo::default());
    call(&mut svc, ()).await.unwrap();
    let start = tokio::time::Instant::now();
    let err = call(&mut svc, ()).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(rate_limited(&err).retry_after(), Duration::from_secs(1));
    // Nothing was consumed by the refused request.
    assert_eq!(shared.peek().retry_after(), Some(Duration::from_secs(1)));
}

fn keyed(quota: Quota) -> Arc<KeyedRateLimiter<u32, Quota, TokioClock>> {
    Arc::new(
        KeyedRateLimiter::builder(quota)
            .clock(TokioClock::new())
            .build()
            .unwrap(),
    )
}

#[tokio::test(start_paused = true)]
async fn keyed_reject_limits_each_key_on_its_own() {
    let calls = Echo::default();
    let layer = RateLimitLayer::keyed(keyed(Quota::per_second(1)), |req: &(u32, &str)| req.0);
    let mut svc = layer.layer(calls.clone());
    assert!(call(&mut svc, (1, "a")).await.is_ok());
    assert!(call(&mut svc, (2, "b")).await.is_ok());
    let err = call(&mut svc, (1, "c")).await.unwrap_err();
    assert_eq!(rate_limited(&err).retry_after(), Duration::from_secs(1));
    assert_eq!(calls.0.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn keyed_backpressure_waits_in_the_response_future_and_gives_back_when_dropped() {
    let shared = keyed(Quota::per_second(2).burst(1));
    let calls = Echo::default();
    let mut svc = RateLimitLayer::keyed(Arc::clone(&shared), |req: &u32| *req)
        .backpressure()
        .layer(calls.clone());
    let start = tokio::time::Instant::now();
    call(&mut svc, 7).await.unwrap();
    call(&mut svc, 7).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    assert_eq!(calls.0.load(Ordering::SeqCst), 2);

    // Reserve the next cell in a future, then drop it before its moment.
    poll_fn(|cx| Service::<u32>::poll_ready(&mut svc, cx))
        .await
        .unwrap();
    let waiting = svc.call(7);
    assert_eq!(
        shared.peek_n(&7, 1).unwrap().retry_after(),
        Some(Duration::from_millis(1_000))
    );
    drop(waiting);
    assert_eq!(
        shared.peek_n(&7, 1).unwrap().retry_after(),
        Some(Duration::from_millis(500))
    );
    assert_eq!(
        calls.0.load(Ordering::SeqCst),
        2,
        "the dropped request never reached the service"
    );
}

#[test]
fn services_and_futures_are_send_and_sync_where_the_inner_ones_are() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    type Direct = RateLimit<Echo, RateLimiter>;
    send_sync::<Direct>();
    send_sync::<RateLimitLayer<RateLimiter>>();
    send::<<Direct as Service<u8>>::Future>();
    type Keyed = RateLimit<Echo, KeyedRateLimiter<u32>, fn(&u32) -> u32>;
    send_sync::<Keyed>();
    send::<<Keyed as Service<u32>>::Future>();
}

#[tokio::test(start_paused = true)]
async fn keyed_backpressure_refuses_a_new_key_of_a_full_table_instead_of_waiting() {
    let shared = Arc::new(
        KeyedRateLimiter::builder(Quota::per_second(1))
            .max_keys(1)
            .clock(TokioClock::new())
            .build()
            .unwrap(),
    );
    let mut svc = RateLimitLayer::keyed(shared, |req: &u32| *req)
        .backpressure()
        .layer(Echo::default());
    call(&mut svc, 1).await.unwrap();
    let start = tokio::time::Instant::now();
    let err = call(&mut svc, 2).await.unwrap_err();
    assert!(rate_limited(&err).keys_full());
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(rate_limited(&err).retry_after() <= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn call_before_the_reserved_moment_gives_the_reservation_back_and_decides_now() {
    let shared = limiter(Quota::per_second(1));
    let layer = RateLimitLayer::new(Arc::clone(&shared)).backpressure();
    let mut first = layer.layer(Echo::default());
    call(&mut first, ()).await.unwrap();
    let echo = Echo::default();
    let mut eager = layer.layer(echo.clone());
    let pending =
        poll_fn(|cx| Poll::Ready(Service::<()>::poll_ready(&mut eager, cx).is_pending())).await;
    assert!(pending);
    // `call` while still sleeping: the reserved cell goes back and the request is checked now,
    // which refuses it (the only cell comes back in one second).
    let err = eager.call(()).await.unwrap_err();
    assert_eq!(rate_limited(&err).retry_after(), Duration::from_secs(1));
    assert_eq!(echo.0.load(Ordering::SeqCst), 0);
    assert_eq!(shared.peek().retry_after(), Some(Duration::from_secs(1)));
    // The same service waits again on its reused timer, and gets the cell at its moment.
    let start = tokio::time::Instant::now();
    call(&mut eager, ()).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(echo.0.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn into_inner_gives_a_reserved_cell_back() {
    let shared = limiter(Quota::per_second(1));
    let mut svc = RateLimitLayer::new(Arc::clone(&shared))
        .backpressure()
        .layer(Echo::default());
    assert!(poll_fn(|cx| Poll::Ready(Service::<()>::poll_ready(&mut svc, cx).is_ready())).await);
    assert!(!shared.peek().is_allowed());
    let _inner: Echo = svc.into_inner();
    assert!(shared.peek().is_allowed());
}

/// A request the limiter refused is refused at once, even while the inner service is not
/// ready: `poll_ready` doesn't wait on (or reserve anything in) a service the request will never
/// reach.
#[tokio::test(start_paused = true)]
async fn backpressure_refuses_at_once_while_the_inner_service_is_not_ready() {
    let shared = limiter(Quota::per_second(1));
    assert!(shared.check().is_allowed()); // the next cell is 1 s away
    let inner = Gated::default().clone(); // pending until `open`
    let mut svc = RateLimitLayer::new(Arc::clone(&shared))
        .backpressure_within(Duration::from_millis(500))
        .layer(inner.clone());
    assert!(
        poll_once(&mut poll_fn(|cx| Service::<u32>::poll_ready(&mut svc, cx))).is_ready(),
        "a refused request waited for the inner service's readiness"
    );
    let err = svc.call(1_u32).await.unwrap_err();
    assert_eq!(rate_limited(&err).retry_after(), Duration::from_secs(1));
    assert_eq!(inner.calls.load(Ordering::SeqCst), 0);
    // Once a cell is due, the wait for the inner service is back in `poll_ready`.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(poll_once(&mut poll_fn(|cx| Service::<u32>::poll_ready(&mut svc, cx))).is_pending());
    inner.open.store(true, Ordering::SeqCst);
    assert_eq!(call(&mut svc, 7).await.unwrap(), 7);
    assert!(!shared.peek().is_allowed());
}

/// The README's recipe for refusing before the inner readiness: backpressure with no wait takes
/// the cell in `poll_ready` (so a request within the limit waits for the inner service holding
/// it) and refuses one over the limit there, without polling the inner service.
#[tokio::test(start_paused = true)]
async fn backpressure_with_no_wait_refuses_before_the_inner_readiness() {
    let shared = limiter(Quota::per_second(1));
    let inner = Gated::default().clone(); // pending until `open`
    let layer = RateLimitLayer::new(Arc::clone(&shared)).backpressure_within(Duration::ZERO);
    let mut within = layer.layer(inner.clone());
    assert!(
        poll_once(&mut poll_fn(|cx| Service::<u32>::poll_ready(
            &mut within,
            cx
        )))
        .is_pending()
    );
    assert!(
        !shared.peek().is_allowed(),
        "the cell is taken in poll_ready"
    );
    let mut over = layer.layer(inner.clone());
    assert!(poll_once(&mut poll_fn(|cx| Service::<u32>::poll_ready(&mut over, cx))).is_ready());
    let err = over.call(2_u32).await.unwrap_err();
    assert_eq!(rate_limited(&err).retry_after(), Duration::from_secs(1));
    inner.open.store(true, Ordering::SeqCst);
    assert_eq!(call(&mut within, 1_u32).await.unwrap(), 1);
    assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
}

/// An unkeyed refusal is decided in `poll_ready` and, as tower's readiness contract requires
/// (a ready service stays ready until it is called), answers the next `call`, however late it
/// comes and whatever changed meanwhile. It holds no capacity while it waits for that call, and
/// it answers that one call only: the `poll_ready` after it decides anew.
#[tokio::test(start_paused = true)]
async fn an_unkeyed_refusal_holds_nothing_and_answers_only_the_next_call() {
    let shared = limiter(Quota::per_second(1));
    let echo = Echo::default();
    let layer =
        RateLimitLayer::new(Arc::clone(&shared)).backpressure_within(Duration::from_millis(500));
    let mut refused = layer.layer(echo.clone());
    assert!(shared.check().is_allowed()); // the next cell is 1 s away: over max_wait
    let mut cx = Context::from_waker(Waker::noop());
    assert!(Service::<u32>::poll_ready(&mut refused, &mut cx).is_ready());
    // The refusal took nothing: the cell is another service's at its moment.
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut other = layer.layer(echo.clone());
    assert_eq!(call(&mut other, 1).await.unwrap(), 1);
    // Polled again, long after and under a larger quota, it stays ready, and its next call gets
    // the refusal decided in the first `poll_ready`.
    tokio::time::advance(Duration::from_secs(10)).await;
    shared.set_quota(Quota::per_second(100)).unwrap();
    assert!(Service::<u32>::poll_ready(&mut refused, &mut cx).is_ready());
    rate_limited(&refused.call(2).await.unwrap_err());
    // Only that call: the next readiness decides under the new quota.
    assert_eq!(call(&mut refused, 3).await.unwrap(), 3);
    assert_eq!(echo.0.load(Ordering::SeqCst), 2);
}

/// Counts calls and echoes the request. The service a test builds is always ready; its clones
/// (keyed backpressure drives one per waiting request) only once `open` is set, and until then
/// they are pending, or fail readiness if built with [`Gated::failing`].
#[derive(Default)]
struct Gated {
    open: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    fails: bool,
    is_clone: bool,
}

impl Gated {
    fn failing() -> Self {
        Gated {
            fails: true,
            ..Gated::default()
        }
    }
}

impl Clone for Gated {
    fn clone(&self) -> Self {
        Gated {
            open: Arc::clone(&self.open),
            calls: Arc::clone(&self.calls),
            fails: self.fails,
            is_clone: true,
        }
    }
}

impl<R> Service<R> for Gated {
    type Response = R;
    type Error = BoxError;
    type Future = Ready<Result<R, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if !self.is_clone || self.open.load(Ordering::SeqCst) {
            Poll::Ready(Ok(()))
        } else if self.fails {
            Poll::Ready(Err("the clone is broken".into()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        ready(Ok(req))
    }
}

/// Polls `future` once, outside any task.
fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    std::pin::Pin::new(future).poll(&mut Context::from_waker(Waker::noop()))
}

/// The README's cancel-safety promise for the keyed response future ("can be dropped at any
/// point; a dropped waiter consumes nothing"): dropped after its moment but before the inner
/// clone is ready (so before the inner call is made), it gives the cell back.
#[tokio::test(start_paused = true)]
async fn keyed_backpressure_future_dropped_while_the_inner_clone_is_not_ready_gives_back() {
    let shared = keyed(Quota::per_second(1));
    let inner = Gated::default();
    let calls = Arc::clone(&inner.calls);
    let mut svc = RateLimitLayer::keyed(Arc::clone(&shared), |req: &u32| *req)
        .backpressure()
        .layer(inner);
    call(&mut svc, 7).await.unwrap();
    poll_fn(|cx| Service::<u32>::poll_ready(&mut svc, cx))
        .await
        .unwrap();
    let mut waiting = svc.call(7); // reserves the next cell, one second from now
    assert!(poll_once(&mut waiting).is_pending());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(
        poll_once(&mut waiting).is_pending(),
        "the moment has come, but the inner clone is not ready"
    );
    assert!(
        !shared.peek_n(&7, 1).unwrap().is_allowed(),
        "the future holds the cell"
    );
    drop(waiting);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the dropped request never reached the service"
    );
    assert!(
        shared.peek_n(&7, 1).unwrap().is_allowed(),
        "the dropped future gave its cell back"
    );
}

/// The same promise when the inner clone fails readiness: the request is never sent, so its
/// cell goes back and the caller gets the inner service's error.
#[tokio::test(start_paused = true)]
async fn keyed_backpressure_gives_the_cell_back_when_the_inner_clone_fails_readiness() {
    let shared = keyed(Quota::per_second(1));
    let inner = Gated::failing();
    let calls = Arc::clone(&inner.calls);
    let mut svc = RateLimitLayer::keyed(Arc::clone(&shared), |req: &u32| *req)
        .backpressure()
        .layer(inner);
    call(&mut svc, 7).await.unwrap();
    let err = call(&mut svc, 7).await.unwrap_err();
    assert!(err.downcast_ref::<RateLimited>().is_none(), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(shared.peek_n(&7, 1).unwrap().is_allowed());
}

/// A keyed sliding window's response future takes its cell only once the wait ends (a sliding
/// window reserves nothing ahead), and from then on the cell is spent, as a plain check's:
/// given back after a drop, the refund could land windows later and take a cell off that
/// window's count. Here the future takes its cell, two windows pass, another request takes the
/// new window's cell, and the dropped future must not give that one back.
#[tokio::test(start_paused = true)]
async fn keyed_sliding_window_future_dropped_after_taking_its_cell_gives_back_nothing() {
    let shared = Arc::new(
        KeyedRateLimiter::builder(SlidingWindow::new(1, Duration::from_secs(1)))
            .clock(TokioClock::new())
            .build()
            .unwrap(),
    );
    let mut svc = RateLimitLayer::keyed(Arc::clone(&shared), |req: &u32| *req)
        .backpressure_within(Duration::from_secs(10))
        .layer(Gated::default());
    call(&mut svc, 7).await.unwrap();
    let wait = shared.peek_n(&7, 1).unwrap().retry_after().unwrap();
    poll_fn(|cx| Service::<u32>::poll_ready(&mut svc, cx))
        .await
        .unwrap();
    let mut waiting = svc.call(7);
    assert!(poll_once(&mut waiting).is_pending());
    tokio::time::advance(wait).await;
    assert!(poll_once(&mut waiting).is_pending());
    assert!(
        !shared.peek_n(&7, 1).unwrap().is_allowed(),
        "the future took the cell"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(shared.check(&7).is_allowed(), "this window's cell");
    drop(waiting);
    assert!(
        !shared.check(&7).is_allowed(),
        "two cells in one window with a limit of 1"
    );
}

/// The README's "sleeps exactly until its moment": a keyed response future first polled at
/// (or after) the moment its cell was reserved for goes ahead at once instead of sleeping the
/// whole wait again and leaving the reserved slot unused.
#[tokio::test(start_paused = true)]
async fn keyed_backpressure_waits_from_the_reservation_not_from_the_first_poll() {
    let shared = keyed(Quota::per_second(1));
    let mut svc = RateLimitLayer::keyed(Arc::clone(&shared), |req: &u32| *req)
        .backpressure()
        .layer(Echo::default());
    call(&mut svc, 7).await.unwrap();
    poll_fn(|cx| Service::<u32>::poll_ready(&mut svc, cx))
        .await
        .unwrap();
    let waiting = svc.call(7); // its moment is one second from now
    tokio::time::advance(Duration::from_secs(1)).await;
    let start = tokio::time::Instant::now();
    assert_eq!(waiting.await.unwrap(), 7);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

/// The unkeyed mode keeps the same two promises: a cell granted in `poll_ready` while the inner
/// service is not ready goes back when the service is dropped, and a `poll_ready` resumed after
/// the reserved moment doesn't wait again.
#[tokio::test(start_paused = true)]
async fn unkeyed_backpressure_waits_from_the_reservation_and_gives_back_a_cell_never_used() {
    let shared = limiter(Quota::per_second(1));
    let layer = RateLimitLayer::new(Arc::clone(&shared)).backpressure();
    let mut first = layer.layer(Echo::default());
    call(&mut first, ()).await.unwrap();
    let gated = Gated::default();
    let mut svc = layer.layer(gated.clone()); // a clone: not ready until opened
    let mut cx = Context::from_waker(Waker::noop());
    assert!(Service::<()>::poll_ready(&mut svc, &mut cx).is_pending());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(Service::<()>::poll_ready(&mut svc, &mut cx).is_pending());
    assert!(
        !shared.peek().is_allowed(),
        "the service holds its granted cell"
    );
    drop(svc);
    assert!(shared.peek().is_allowed());

    let mut svc = layer.layer(gated.clone());
    call(&mut first, ()).await.unwrap(); // the cell it gave back
    assert!(Service::<()>::poll_ready(&mut svc, &mut cx).is_pending());
    tokio::time::advance(Duration::from_secs(1)).await;
    gated.open.store(true, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    call(&mut svc, ()).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(gated.calls.load(Ordering::SeqCst), 1);
}

/// The README's "a request that would wait longer than `max_wait` is rejected at once", for
/// the algorithms that can't reserve a future cell (a sliding window, several quotas): the
/// unkeyed `poll_ready` sleeps until the predicted moment and tries again, and each try gets
/// only what is left of `max_wait`, not all of it. Here a plain `check` takes the cell at every
/// predicted moment; the service still gives up within `max_wait`, and its `call` fails with a
/// `RateLimited` saying when the next cell comes.
#[tokio::test(start_paused = true)]
async fn unkeyed_backpressure_that_cannot_reserve_ahead_gives_up_within_max_wait() {
    async fn outrun_at_every_moment<A: Algorithm>(algorithm: A) {
        let max_wait = Duration::from_secs(3);
        let shared = Arc::new(
            RateLimiter::builder(algorithm)
                .clock(TokioClock::new())
                .build()
                .unwrap(),
        );
        let echo = Echo::default();
        let mut svc = RateLimitLayer::new(Arc::clone(&shared))
            .backpressure_within(max_wait)
            .layer(echo.clone());
        assert!(shared.check().is_allowed());
        let start = tokio::time::Instant::now();
        let mut cx = Context::from_waker(Waker::noop());
        // Bounded, so the test ends (and fails) when `poll_ready` never does.
        for _ in 0..10 {
            if let Poll::Ready(ready) = Service::<u32>::poll_ready(&mut svc, &mut cx) {
                ready.unwrap();
                break;
            }
            let moment = shared
                .peek()
                .retry_after()
                .expect("the service waits for a cell");
            tokio::time::advance(moment).await;
            assert!(
                shared.check().is_allowed(),
                "a plain check takes the cell first"
            );
        }
        let elapsed = start.elapsed();
        assert!(
            elapsed <= max_wait,
            "poll_ready (max_wait {max_wait:?}) still waiting after {elapsed:?}"
        );
        let err = svc.call(1).await.unwrap_err();
        let next = shared.peek().retry_after().unwrap();
        assert!(
            elapsed + next > max_wait,
            "it gave up while a cell was in reach"
        );
        assert_eq!(rate_limited(&err).retry_after(), next);
        assert_eq!(echo.0.load(Ordering::SeqCst), 0);
    }
    outrun_at_every_moment(SlidingWindow::new(1, Duration::from_secs(1))).await;
    outrun_at_every_moment(MultiGcra::new([
        Quota::per_second(1),
        Quota::per_minute(60).burst(60),
    ]))
    .await;
}

/// One permit shared by every clone, taken in `poll_ready` and held until `call` (then by the
/// response, which is done at once) or until the service holding it is dropped: what tower's
/// `ConcurrencyLimit::new(svc, 1)` (or a `Buffer` of one) does with readiness.
#[derive(Default)]
struct OnePermit {
    /// Whether the permit is taken, and who waits for it.
    shared: Arc<std::sync::Mutex<(bool, Vec<Waker>)>>,
    holds: bool,
}

impl Clone for OnePermit {
    fn clone(&self) -> Self {
        OnePermit {
            shared: Arc::clone(&self.shared),
            holds: false,
        }
    }
}

impl OnePermit {
    fn release(&mut self) {
        if std::mem::take(&mut self.holds) {
            let mut shared = self.shared.lock().unwrap();
            shared.0 = false;
            shared.1.drain(..).for_each(Waker::wake);
        }
    }
}

impl Drop for OnePermit {
    fn drop(&mut self) {
        self.release();
    }
}

impl<R> Service<R> for OnePermit {
    type Response = R;
    type Error = BoxError;
    type Future = Ready<Result<R, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.holds {
            return Poll::Ready(Ok(()));
        }
        let mut shared = self.shared.lock().unwrap();
        if shared.0 {
            shared.1.push(cx.waker().clone());
            return Poll::Pending;
        }
        shared.0 = true;
        self.holds = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        assert!(self.holds, "call without readiness");
        // The response is done at once: the permit comes back with it.
        self.release();
        ready(Ok(req))
    }
}

/// Keyed backpressure over an inner service whose readiness holds capacity (a concurrency
/// limit of one): a caller sending one request at a time (`ready().await?.call(req).await`)
/// gets its response when its key's cell comes. The service `poll_ready` readied is not
/// called for a request that has to wait; if it kept the permit, the waiting request's clone
/// could never become ready, and the caller, awaiting that response before its next request,
/// waited forever.
#[tokio::test(start_paused = true)]
async fn keyed_backpressure_over_an_inner_concurrency_limit_of_one_does_not_deadlock() {
    let shared = keyed(Quota::per_second(1));
    let mut svc = RateLimitLayer::keyed(Arc::clone(&shared), |req: &u32| *req)
        .backpressure()
        .layer(OnePermit::default());
    call(&mut svc, 7).await.unwrap();
    let start = tokio::time::Instant::now();
    let second = tokio::time::timeout(Duration::from_secs(60), call(&mut svc, 7)).await;
    assert_eq!(
        second
            .expect("the waiting request never got the inner service's permit")
            .unwrap(),
        7
    );
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // And the service is usable again (its next `poll_ready` takes the permit).
    call(&mut svc, 8).await.unwrap();
}

/// Echo whose `Clone` panics once `panics` is set: the caller's code, run while a cell is
/// reserved.
#[derive(Default)]
struct PanicsOnClone {
    echo: Echo,
    panics: Arc<AtomicBool>,
}

impl Clone for PanicsOnClone {
    fn clone(&self) -> Self {
        assert!(!self.panics.load(Ordering::SeqCst), "clone panicked");
        PanicsOnClone {
            echo: self.echo.clone(),
            panics: Arc::clone(&self.panics),
        }
    }
}

impl<R> Service<R> for PanicsOnClone {
    type Response = R;
    type Error = BoxError;
    type Future = Ready<Result<R, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Service::<R>::poll_ready(&mut self.echo, cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.echo.call(req)
    }
}

/// A request that must wait reserves its cell in `call`, then clones the inner service: a
/// `Clone` that panics there gives the cell back, as a dropped response future does.
#[tokio::test(start_paused = true)]
async fn keyed_backpressure_gives_the_cell_back_when_cloning_the_service_panics() {
    let shared = Arc::new(
        KeyedRateLimiter::builder(Quota::per_second(1))
            .clock(TokioClock::new())
            .build()
            .unwrap(),
    );
    let inner = PanicsOnClone::default();
    let panics = Arc::clone(&inner.panics);
    let mut svc = RateLimitLayer::keyed(Arc::clone(&shared), |req: &u32| *req)
        .backpressure()
        .layer(inner);
    call(&mut svc, 1).await.unwrap();
    let before = shared.peek_n(&1, 1).unwrap().retry_after();
    poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    panics.store(true, Ordering::SeqCst);
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(svc.call(1))));
    assert!(unwound.is_err(), "the clone panicked");
    assert_eq!(
        shared.peek_n(&1, 1).unwrap().retry_after(),
        before,
        "the reserved cell went back"
    );
}
