//! [`PoolService`]: a tower service over a pool of connections that are services themselves.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use palisade_core::{Clock, FastClock};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::error::{Error, NotReady};
use crate::manager::Manager;
use crate::pool::Pool;
use crate::pooled::Pooled;

/// The error type of [`PoolService`]: a pool [`Error`] (no connection in time, closed), a
/// [`NotReady`] (`call` without a successful `poll_ready`) or the connection's own error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type Checkout<M, C> =
    Pin<Box<dyn Future<Output = Result<Pooled<M, C>, Error<<M as Manager>::Error>>> + Send>>;

/// A tower [`Service`] that sends each request on a connection checked out of a [`Pool`], when
/// the connections are services themselves: hyper's `SendRequest`, a per-connection RPC
/// client, a tower stack bound to one socket.
///
/// - `poll_ready` checks a connection out (waiting in the pool's fair line, within its
///   `acquire_timeout`) and then waits for that connection's own readiness: backpressure
///   reaches the caller through the standard tower contract.
/// - `call` sends the request on it; the connection is **tainted** until the response future
///   completes with `Ok`. A response future that is dropped (a client gone, a timeout) or ends
///   in an error closes the connection instead of returning it. On `Ok` it goes back to the
///   pool, even if the response's body still streams on the connection: the connection's own
///   `poll_ready` must then wait for the body to end (hyper's `SendRequest` does), since the
///   next checkout waits only for that.
/// - `call` without a successful `poll_ready` first (never readied, a second `call` after one
///   `poll_ready`, after `poll_ready` failed, or while it is pending on the connection's own
///   readiness) does not panic: its response future fails at once with [`NotReady`], nothing
///   is sent, and no connection is checked out, created or closed for it (one still getting
///   ready stays held for the next `poll_ready`).
/// - Clones share the pool; each clone holds at most one connection between `poll_ready` and
///   `call` (dropping a ready service returns it).
///
/// ```
/// use std::convert::Infallible;
/// use std::future::{Ready, ready};
/// use std::task::{Context, Poll};
/// use palisade_pool::{Manager, Pool, PoolService};
/// use tower_service::Service;
///
/// /// A "connection" that is a service: it echoes requests.
/// struct Echo;
/// impl Service<String> for Echo {
///     type Response = String;
///     type Error = Infallible;
///     type Future = Ready<Result<String, Infallible>>;
///     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
///         Poll::Ready(Ok(()))
///     }
///     fn call(&mut self, req: String) -> Self::Future {
///         ready(Ok(req))
///     }
/// }
///
/// struct Connector;
/// impl Manager for Connector {
///     type Connection = Echo;
///     type Error = std::io::Error;
///     async fn connect(&self) -> std::io::Result<Echo> {
///         Ok(Echo)
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_pool::BoxError> {
/// let pool = Pool::builder(Connector).max_size(4).build()?;
/// let mut service = PoolService::new(pool.clone());
/// std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
/// assert_eq!(service.call("hello".to_owned()).await?, "hello");
/// assert_eq!(pool.metrics().idle, 1); // back in the pool
/// # Ok(())
/// # }
/// ```
pub struct PoolService<M: Manager, C: Clock = FastClock> {
    pool: Pool<M, C>,
    checkout: Option<Checkout<M, C>>,
    /// The connection checked out for the next `call`, ready or not yet.
    ready: Option<Pooled<M, C>>,
    /// Whether `poll_ready` last returned `Ready(Ok(()))`: `call` sends only then (the
    /// connection's own readiness may still be pending while it is held).
    readied: bool,
}

impl<M: Manager, C: Clock> PoolService<M, C> {
    /// A service over `pool`.
    pub fn new(pool: Pool<M, C>) -> Self {
        PoolService {
            pool,
            checkout: None,
            ready: None,
            readied: false,
        }
    }

    /// The pool.
    pub fn get_ref(&self) -> &Pool<M, C> {
        &self.pool
    }

    /// The pool.
    pub fn into_inner(self) -> Pool<M, C> {
        self.pool
    }
}

impl<M: Manager, C: Clock> Clone for PoolService<M, C> {
    fn clone(&self) -> Self {
        PoolService::new(self.pool.clone())
    }
}

impl<M: Manager, C: Clock> fmt::Debug for PoolService<M, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolService")
            .field("pool", &self.pool)
            .field("holding", &self.ready.is_some())
            .finish()
    }
}

impl<M, C, Req> Service<Req> for PoolService<M, C>
where
    M: Manager,
    C: Clock,
    M::Connection: Service<Req>,
    <M::Connection as Service<Req>>::Error: Into<BoxError>,
{
    type Response = <M::Connection as Service<Req>>::Response;
    type Error = BoxError;
    type Future = ResponseFuture<<M::Connection as Service<Req>>::Future, M, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.readied = false;
        loop {
            if let Some(conn) = self.ready.as_mut() {
                return match ready!(conn.poll_ready(cx)) {
                    Ok(()) => {
                        self.readied = true;
                        Poll::Ready(Ok(()))
                    }
                    Err(e) => {
                        // A connection that can't get ready is broken: close it.
                        if let Some(conn) = self.ready.take() {
                            Pooled::discard(conn);
                        }
                        Poll::Ready(Err(e.into()))
                    }
                };
            }
            let checkout = self.checkout.get_or_insert_with(|| {
                let pool = self.pool.clone();
                Box::pin(async move { pool.get().await })
            });
            let result = ready!(checkout.as_mut().poll(cx));
            self.checkout = None;
            self.ready = Some(result?);
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Bad use of the tower contract (no `Ready(Ok(()))` from `poll_ready` since the last
        // call): an error, never a panic, and the pool untouched: a connection still getting
        // ready stays held for the next `poll_ready`. (Built here, not in a function of its
        // own, so the sending path builds its future in place.)
        if !std::mem::take(&mut self.readied) {
            return ResponseFuture {
                inner: Inner::NotReady,
            };
        }
        let Some(mut conn) = self.ready.take() else {
            return ResponseFuture {
                inner: Inner::NotReady,
            };
        };
        Pooled::taint(&mut conn);
        let future = conn.call(req);
        ResponseFuture {
            inner: Inner::Call {
                future,
                conn: Some(conn),
            },
        }
    }
}

pin_project! {
    /// The response future of [`PoolService`]: the connection's future, holding the
    /// connection (tainted) until it completes. For a `call` without a successful
    /// `poll_ready` it fails at once with [`NotReady`].
    pub struct ResponseFuture<F, M: Manager, C: Clock> {
        #[pin]
        inner: Inner<F, M, C>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<F, M: Manager, C: Clock> {
        Call {
            #[pin]
            future: F,
            conn: Option<Pooled<M, C>>,
        },
        NotReady,
    }
}

impl<F, M: Manager, C: Clock> fmt::Debug for ResponseFuture<F, M, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, T, E, M, C> Future for ResponseFuture<F, M, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    M: Manager,
    C: Clock,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            InnerProj::Call { future, conn } => {
                let result = ready!(future.poll(cx));
                if let Some(mut conn) = conn.take() {
                    if result.is_ok() {
                        Pooled::untaint(&mut conn);
                    }
                    drop(conn); // back to the pool, or closed if the exchange failed
                }
                Poll::Ready(result.map_err(Into::into))
            }
            InnerProj::NotReady => Poll::Ready(Err(not_ready())),
        }
    }
}

/// The error of a `call` without a successful `poll_ready`, out of line so the normal path
/// inlines.
#[cold]
#[inline(never)]
fn not_ready() -> BoxError {
    Box::new(NotReady)
}
