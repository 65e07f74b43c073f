//! [`ShutdownService`]: the service [`ShutdownLayer`](crate::ShutdownLayer) builds.

use std::task::{Context, Poll};

use tower_service::Service;

use crate::coordinator::Shutdown;
use crate::future::{BoxError, ResponseFuture};

/// Counts requests in flight and refuses new ones once the coordinator is draining; see
/// [`ShutdownLayer`](crate::ShutdownLayer).
#[derive(Debug, Clone)]
pub struct ShutdownService<S> {
    inner: S,
    shutdown: Shutdown,
}

impl<S> ShutdownService<S> {
    /// Wraps `inner`, counting its requests for `shutdown`'s coordinator.
    pub const fn new(inner: S, shutdown: Shutdown) -> ShutdownService<S> {
        ShutdownService { inner, shutdown }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Request> Service<Request> for ShutdownService<S>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> ResponseFuture<S::Future> {
        match self.shutdown.begin_request() {
            Some(in_flight) => ResponseFuture::called(self.inner.call(request), in_flight),
            None => ResponseFuture::refused(),
        }
    }
}
