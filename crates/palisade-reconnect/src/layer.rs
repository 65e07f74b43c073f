//! [`ReconnectLayer`]: builds a [`Reconnect`] over a `MakeService`.

use tower_layer::Layer;
use tower_service::Service;

use crate::error::BoxError;
use crate::service::{Reconnect, Settings};

/// A tower [`Layer`] that wraps a `MakeService` in a [`Reconnect`] connecting to `target`.
///
/// Each service it builds has its own connection and background task; clones of that service
/// share them. (Unlike palisade's other layers, two services built by one layer don't share
/// state: each wraps its own `MakeService`.) Hooks and heartbeats depend on the service type:
/// set them with [`Reconnect::builder`].
#[derive(Debug, Clone)]
pub struct ReconnectLayer<Target> {
    target: Target,
    settings: Settings,
}

impl<Target> ReconnectLayer<Target> {
    /// With the default [`Settings`] (gRPC backoff, `poll_ready` waits while disconnected).
    pub fn new(target: Target) -> ReconnectLayer<Target> {
        ReconnectLayer::with_settings(target, Settings::default())
    }

    /// With the given settings.
    pub fn with_settings(target: Target, settings: Settings) -> ReconnectLayer<Target> {
        ReconnectLayer { target, settings }
    }
}

impl<M, Target, S> Layer<M> for ReconnectLayer<Target>
where
    M: Service<Target, Response = S> + Send + 'static,
    M::Future: Send + 'static,
    M::Error: Into<BoxError>,
    Target: Clone + Send + 'static,
    S: Clone + Send + 'static,
{
    type Service = Reconnect<S>;

    fn layer(&self, make_service: M) -> Reconnect<S> {
        Reconnect::with_settings(
            make_service,
            self.target.clone(),
            self.settings.clone(),
            None,
            None,
        )
    }
}
