#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
// The docs link the tower layer and service throughout; without the `tower` feature they do
// not exist, and rustdoc would report every such link as broken.
#![cfg_attr(not(feature = "tower"), allow(rustdoc::broken_intra_doc_links))]

mod config;
mod coordinator;
mod counter;
mod error;
mod event;
#[cfg(feature = "tower")]
mod future;
mod hooks;
#[cfg(feature = "tower")]
mod layer;
mod phase;
mod report;
mod scope;
#[cfg(feature = "tower")]
mod service;
mod signal;
mod state;

pub use crate::config::{
    CoordinatorBuilder, Escalation, MAX_ABORT_GRACE, MAX_DEADLINE, PanicPolicy,
};
pub use crate::coordinator::{Coordinator, Listener, Metrics, RequestGuard, Shutdown, WaitFor};
pub use crate::error::{ConfigError, Draining, Refused};
#[cfg(feature = "tower")]
pub use crate::future::{BoxError, ResponseFuture};
pub use crate::hooks::{HookBuilder, HookId, HookResult};
#[cfg(feature = "tower")]
pub use crate::layer::ShutdownLayer;
pub use crate::phase::Phase;
pub use crate::report::{
    HookReport, Outcome, PhaseReport, ScopeReport, ShutdownReport, TaskPanic, Trigger,
};
pub use crate::scope::{Scope, Stopped, Tracked};
#[cfg(feature = "tower")]
pub use crate::service::ShutdownService;
pub use crate::signal::Signal;
