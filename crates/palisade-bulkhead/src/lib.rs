#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
// The docs link the tower layer and service throughout; without the `tower` feature they do
// not exist, and rustdoc would report every such link as broken.
#![cfg_attr(not(feature = "tower"), allow(rustdoc::broken_intra_doc_links))]

mod adaptive;
mod bulkhead;
mod config;
mod error;
#[cfg(feature = "tower")]
mod future;
#[cfg(feature = "tower")]
mod layer;
mod partition;
mod queue;
#[cfg(feature = "tower")]
mod service;

pub use crate::adaptive::{
    Aimd, AimdBuilder, Gradient2, Gradient2Builder, LimitAlgorithm, Outcome, Sample, Vegas,
    VegasBuilder,
};
pub use crate::bulkhead::{Acquire, Bulkhead, Metrics, OwnedPermit, Permit};
pub use crate::config::{BulkheadBuilder, Discipline, MAX_CONCURRENT, MAX_QUEUED, MAX_WAIT};
pub use crate::error::{ConfigError, Reason, Rejected};
#[cfg(feature = "tower")]
pub use crate::future::{BoxError, ResponseFuture};
#[cfg(feature = "tower")]
pub use crate::layer::{BulkheadLayer, Mode};
pub use crate::partition::{
    MAX_PARTITIONS, OwnedPartitionPermit, Partition, PartitionAcquire, PartitionAcquireOwned,
    PartitionId, PartitionMetrics, PartitionPermit, PartitionedBulkhead,
    PartitionedBulkheadBuilder,
};
#[cfg(feature = "tower")]
pub use crate::partition::{PartitionedLayer, PartitionedResponseFuture, PartitionedService};
#[cfg(feature = "tower")]
pub use crate::service::{BulkheadService, OnResponse, ReleaseOnResponse};
