#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
// The docs link the tower layer and service throughout; without the `tower` feature they do
// not exist, and rustdoc would report every such link as broken.
#![cfg_attr(not(feature = "tower"), allow(rustdoc::broken_intra_doc_links))]

mod config;
mod error;
#[cfg(feature = "tower")]
mod future;
#[cfg(feature = "tower")]
mod layer;
mod schedule;
#[cfg(feature = "tower")]
mod service;
#[cfg(feature = "tower")]
mod shared;
mod state;
mod stream;

pub use crate::config::{ConfigError, MAX_DURATION, MIN_DURATION, Policy, PolicyBuilder};
pub use crate::error::{BoxError, Closed, ConnectionLost, NotConnected};
#[cfg(feature = "tower")]
pub use crate::future::ResponseFuture;
#[cfg(feature = "tower")]
pub use crate::layer::ReconnectLayer;
#[cfg(feature = "tower")]
pub use crate::service::{
    BoxFuture, Classifier, Reconnect, ReconnectBuilder, Settings, SettingsBuilder,
    WhileDisconnected, is_connection_error,
};
pub use crate::state::{Cause, CloseReason, ConnectionState, SharedError};
pub use crate::stream::{ReconnectingStream, StreamBuilder};
/// The backoff schedules, from palisade-retry.
pub use palisade_retry::{Backoff, Jitter};
