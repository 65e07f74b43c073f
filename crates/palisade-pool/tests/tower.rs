//! `PoolService`: requests on pooled connections that are services, with readiness from the
//! pool, taint for the exchange, and pool errors the caller can downcast.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::TokioClock;
use palisade_pool::{CheckoutTest, Discard, Error, Manager, NotReady, Pool, PoolService};
use tower_service::Service;

/// A connection that answers each request after `delay`, or fails requests equal to "fail".
struct Conn {
    id: usize,
    delay: Duration,
}

impl Service<&'static str> for Conn {
    type Response = (usize, &'static str);
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<(usize, &'static str)>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: &'static str) -> Self::Future {
        let (id, delay) = (self.id, self.delay);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            if req == "fail" {
                return Err(std::io::Error::other("the exchange failed"));
            }
            Ok((id, req))
        })
    }
}

#[derive(Clone, Default)]
struct Connector {
    made: Arc<AtomicUsize>,
}

impl Manager for Connector {
    type Connection = Conn;
    type Error = std::io::Error;

    async fn connect(&self) -> std::io::Result<Conn> {
        Ok(Conn {
            id: self.made.fetch_add(1, Ordering::SeqCst),
            delay: Duration::from_millis(100),
        })
    }
}

fn pool(max: usize) -> Pool<Connector, TokioClock> {
    Pool::builder(Connector::default())
        .max_size(max)
        .acquire_timeout(Duration::from_secs(1))
        .test_on_checkout(CheckoutTest::Never)
        .clock(TokioClock::new())
        .build()
        .unwrap()
}

async fn ready(
    service: &mut PoolService<Connector, TokioClock>,
) -> Result<(), palisade_pool::BoxError> {
    poll_fn(|cx| Service::<&'static str>::poll_ready(service, cx)).await
}

#[tokio::test(start_paused = true)]
async fn a_completed_exchange_returns_the_connection() {
    let pool = pool(2);
    let mut service = PoolService::new(pool.clone());
    ready(&mut service).await.unwrap();
    assert_eq!(
        pool.metrics().in_use,
        1,
        "poll_ready holds the connection for call"
    );
    assert_eq!(service.call("a").await.unwrap(), (0, "a"));
    ready(&mut service).await.unwrap();
    assert_eq!(
        service.call("b").await.unwrap(),
        (0, "b"),
        "the same connection, reused"
    );
    let m = pool.metrics();
    assert_eq!((m.idle, m.in_use, m.created), (1, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_or_failed_exchange_closes_the_connection() {
    let pool = pool(2);
    let mut service = PoolService::new(pool.clone());
    ready(&mut service).await.unwrap();
    let response = service.call("abandoned");
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(response); // e.g. the client went away mid-exchange
    ready(&mut service).await.unwrap();
    let error = service.call("fail").await.unwrap_err();
    assert_eq!(error.to_string(), "the exchange failed");
    let m = pool.metrics();
    assert_eq!((m.size, m.discarded(Discard::Tainted)), (0, 2));
    ready(&mut service).await.unwrap();
    assert_eq!(service.call("c").await.unwrap().0, 2, "a fresh connection");
}

#[tokio::test(start_paused = true)]
async fn readiness_waits_for_the_pool_and_its_timeout_is_a_pool_error() {
    let pool = pool(1);
    let mut first = PoolService::new(pool.clone());
    let mut second = first.clone();
    ready(&mut first).await.unwrap();
    let mut waiting = Box::pin(ready(&mut second));
    assert!(
        futures_pending(&mut waiting).await,
        "the only connection is held by `first`"
    );
    let response = first.call("x");
    let (served, readied) = tokio::join!(response, waiting);
    assert_eq!(served.unwrap(), (0, "x"));
    readied.unwrap();
    // `second` now holds the connection: a third service times out with a pool error.
    let mut third = PoolService::new(pool.clone());
    let error = ready(&mut third).await.unwrap_err();
    let error = error
        .downcast_ref::<Error<std::io::Error>>()
        .expect("a pool error");
    assert!(matches!(error, Error::Exhausted { .. }), "{error}");
    drop(second); // a ready service dropped gives its connection back
    assert_eq!(pool.metrics().idle, 1);
}

async fn futures_pending<F: Future + Unpin>(f: &mut F) -> bool {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx).is_pending())).await
}

#[tokio::test(start_paused = true)]
async fn the_service_and_its_future_are_send() {
    fn send<T: Send>(_: &T) {}
    let mut service = PoolService::new(pool(1));
    send(&service);
    ready(&mut service).await.unwrap();
    let response = service.call("x");
    send(&response);
    assert_eq!(response.await.unwrap(), (0, "x"));
}

#[tokio::test(start_paused = true)]
async fn call_without_poll_ready_is_an_error_not_a_panic() {
    let pool = pool(1);
    let mut service = PoolService::new(pool.clone());
    // Never readied: an error at once, and the pool untouched.
    let error = service.call("x").await.unwrap_err();
    assert!(error.is::<NotReady>(), "{error}");
    assert_eq!(
        error.to_string(),
        "PoolService::call without a successful poll_ready first: the request was not sent"
    );
    let m = pool.metrics();
    assert_eq!((m.size, m.in_use, m.created), (0, 0, 0), "{m}");
    // After an exchange the connection is back in the pool: a second call without a new
    // poll_ready neither sends on it nor checks it out.
    ready(&mut service).await.unwrap();
    assert_eq!(service.call("a").await.unwrap(), (0, "a"));
    let error = service.call("b").await.unwrap_err();
    assert!(error.downcast_ref::<NotReady>().is_some(), "{error}");
    let m = pool.metrics();
    assert_eq!((m.idle, m.in_use, m.created), (1, 0, 1), "{m}");
    assert_eq!(m.discarded_total(), 0, "{m}");
    // The service still works afterwards.
    ready(&mut service).await.unwrap();
    assert_eq!(service.call("c").await.unwrap(), (0, "c"));
}

/// A connection whose own readiness comes only once `open` is set; counts requests sent on it.
struct Gate {
    open: Arc<std::sync::atomic::AtomicBool>,
    sent: Arc<AtomicUsize>,
}

impl Service<&'static str> for Gate {
    type Response = &'static str;
    type Error = std::io::Error;
    type Future = std::future::Ready<std::io::Result<&'static str>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.open.load(Ordering::SeqCst) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, req: &'static str) -> Self::Future {
        self.sent.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(req))
    }
}

#[derive(Clone, Default)]
struct GateConnector {
    open: Arc<std::sync::atomic::AtomicBool>,
    sent: Arc<AtomicUsize>,
}

impl Manager for GateConnector {
    type Connection = Gate;
    type Error = std::io::Error;

    async fn connect(&self) -> std::io::Result<Gate> {
        Ok(Gate {
            open: self.open.clone(),
            sent: self.sent.clone(),
        })
    }
}

/// `poll_ready` checked a connection out but is pending on the connection's own readiness: a
/// `call` then is one without a successful `poll_ready`, so nothing is sent on the connection
/// (which never said it was ready); it stays held, and is used once it gets ready.
#[tokio::test(start_paused = true)]
async fn call_while_the_connection_is_not_ready_sends_nothing_and_keeps_it() {
    let connector = GateConnector::default();
    let pool = Pool::builder(connector.clone())
        .max_size(1)
        .test_on_checkout(CheckoutTest::Never)
        .clock(TokioClock::new())
        .build()
        .unwrap();
    let mut service = PoolService::new(pool.clone());
    let mut cx = Context::from_waker(std::task::Waker::noop());
    while pool.metrics().in_use == 0 {
        assert!(Service::<&'static str>::poll_ready(&mut service, &mut cx).is_pending());
        tokio::task::yield_now().await;
    }
    assert!(Service::<&'static str>::poll_ready(&mut service, &mut cx).is_pending());
    let err = service.call("early").await.unwrap_err();
    assert!(err.is::<NotReady>(), "{err}");
    assert_eq!(
        connector.sent.load(Ordering::SeqCst),
        0,
        "sent on a connection not ready"
    );
    let m = pool.metrics();
    assert_eq!((m.in_use, m.created, m.discarded_total()), (1, 1, 0), "{m}");
    connector.open.store(true, Ordering::SeqCst);
    poll_fn(|cx| Service::<&'static str>::poll_ready(&mut service, cx))
        .await
        .unwrap();
    assert_eq!(service.call("on time").await.unwrap(), "on time");
    assert_eq!(connector.sent.load(Ordering::SeqCst), 1);
    assert_eq!(pool.metrics().idle, 1);
}
