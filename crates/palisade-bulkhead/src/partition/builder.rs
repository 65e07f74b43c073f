//! [`PartitionedBulkheadBuilder`]: the partitions and knobs of a [`PartitionedBulkhead`],
//! validated.

use std::collections::HashSet;
use std::time::Duration;

use palisade_core::{Clock, FastClock};

use super::PartitionedBulkhead;
use crate::config::{Discipline, MAX_CONCURRENT, validate_waiting};
use crate::error::ConfigError;

/// The most partitions one [`PartitionedBulkhead`] may have: 1024.
pub const MAX_PARTITIONS: usize = 1024;

/// The `max` of a partition declared without one: capped by the total in force only.
pub(super) const UNCAPPED: u32 = u32::MAX;

/// One declared partition, validated by [`PartitionedBulkheadBuilder::build`].
#[derive(Debug, Clone)]
pub(super) struct Spec {
    pub(super) name: String,
    pub(super) min: u32,
    /// `None`: the total.
    pub(super) max: Option<u32>,
}

/// The validated configuration of a [`PartitionedBulkhead`].
#[derive(Debug)]
pub(super) struct Config {
    pub(super) total: u32,
    /// `(name, min, max, max_queued)` of each partition, in declaration order; `max` is
    /// [`UNCAPPED`] for a partition declared without one.
    pub(super) parts: Vec<(String, u32, u32, usize)>,
    pub(super) max_wait: Option<Duration>,
    pub(super) discipline: Discipline,
}

/// Builds a [`PartitionedBulkhead`]; every knob is validated by
/// [`build`](PartitionedBulkheadBuilder::build), whose error names the knob and its allowed
/// range.
///
/// | knob | default | allowed |
/// |---|---|---|
/// | `total` (the argument of [`PartitionedBulkhead::builder`]) | — | `1..=2^30−1`, at least the sum of the minimums; changeable at runtime with [`set_total`](PartitionedBulkhead::set_total) |
/// | [`partition(name, min)`](PartitionedBulkheadBuilder::partition) | — | `1..=1024` partitions; unique non-empty names; `min <= total`, the minimums summing to at most `total` |
/// | [`partition_with_max(name, min, max)`](PartitionedBulkheadBuilder::partition_with_max) | no `max`: capped by the total in force | `min <= max`, `1 <= max <= total` |
/// | [`max_queued`](PartitionedBulkheadBuilder::max_queued) (per partition) | the partition's `max` (or `total`) | `0..=2^30` (0: never wait) |
/// | [`max_wait`](PartitionedBulkheadBuilder::max_wait) | none (wait as long as it takes) | `0..=24 h` (0: never wait) |
/// | [`discipline`](PartitionedBulkheadBuilder::discipline) (within each partition) | [`Discipline::Fifo`] | CoDel: `1 ms <= target <= interval <= 24 h` |
/// | [`clock`](PartitionedBulkheadBuilder::clock) | [`FastClock`] | any [`Clock`] (CoDel reads it) |
#[derive(Debug)]
pub struct PartitionedBulkheadBuilder<C: Clock = FastClock> {
    total: u32,
    parts: Vec<Spec>,
    max_queued: Option<usize>,
    max_wait: Option<Duration>,
    discipline: Discipline,
    clock: C,
}

impl PartitionedBulkheadBuilder<FastClock> {
    pub(super) fn new(total: u32) -> PartitionedBulkheadBuilder<FastClock> {
        PartitionedBulkheadBuilder {
            total,
            parts: Vec::new(),
            max_queued: None,
            max_wait: None,
            discipline: Discipline::Fifo,
            clock: FastClock::new(),
        }
    }
}

impl<C: Clock> PartitionedBulkheadBuilder<C> {
    /// Declares a partition named `name` with a guaranteed minimum of `min` permits, which may
    /// borrow idle capacity up to the whole total (the total in force: it follows
    /// [`set_total`](PartitionedBulkhead::set_total)). Partitions are numbered in the order they
    /// are declared (their [`PartitionId`](crate::PartitionId)), which also breaks ties when
    /// permits are handed out.
    pub fn partition(mut self, name: impl Into<String>, min: u32) -> Self {
        self.parts.push(Spec {
            name: name.into(),
            min,
            max: None,
        });
        self
    }

    /// Declares a partition with a guaranteed minimum of `min` permits and a cap of `max`: it
    /// never holds more than `max`, even when the rest of the total is idle. Caps are what
    /// turn a minimum into a hard reservation (see [`PartitionedBulkhead`]).
    pub fn partition_with_max(mut self, name: impl Into<String>, min: u32, max: u32) -> Self {
        self.parts.push(Spec {
            name: name.into(),
            min,
            max: Some(max),
        });
        self
    }

    /// How many callers may wait in **each** partition's queue; more are refused with
    /// [`Reason::QueueFull`](crate::Reason::QueueFull). 0 refuses at once with
    /// [`Reason::Full`](crate::Reason::Full). Defaults to each partition's `max` (the total,
    /// as built, for a partition declared without one).
    pub fn max_queued(mut self, max_queued: usize) -> Self {
        self.max_queued = Some(max_queued);
        self
    }

    /// How long a caller may wait in its partition's queue; then it is refused with
    /// [`Reason::TimedOut`](crate::Reason::TimedOut). Waiting with a deadline needs a tokio
    /// runtime with the time driver.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// Who, within a partition, gets a permit handed to that partition (see [`Discipline`];
    /// which partition gets it is decided by the minimums and caps, not by the discipline).
    pub fn discipline(mut self, discipline: Discipline) -> Self {
        self.discipline = discipline;
        self
    }

    /// The clock CoDel reads: `TokioClock` to follow tokio's (paused) time in tests.
    pub fn clock<C2: Clock>(self, clock: C2) -> PartitionedBulkheadBuilder<C2> {
        PartitionedBulkheadBuilder {
            total: self.total,
            parts: self.parts,
            max_queued: self.max_queued,
            max_wait: self.max_wait,
            discipline: self.discipline,
            clock,
        }
    }

    /// Validates every knob and builds the bulkhead.
    pub fn build(self) -> Result<PartitionedBulkhead<C>, ConfigError> {
        let config = self.validate()?;
        Ok(PartitionedBulkhead::from_config(config, self.clock))
    }

    fn validate(&self) -> Result<Config, ConfigError> {
        let total = self.total;
        if !(1..=MAX_CONCURRENT).contains(&total) {
            return Err(ConfigError::out_of_range(
                "total",
                format!("in 1..={MAX_CONCURRENT}"),
                total,
            ));
        }
        if !(1..=MAX_PARTITIONS).contains(&self.parts.len()) {
            return Err(ConfigError::out_of_range(
                "partition",
                format!("declared between 1 and {MAX_PARTITIONS} times"),
                self.parts.len(),
            ));
        }
        validate_waiting(self.max_queued.unwrap_or(0), self.max_wait, self.discipline)?;
        let mut names = HashSet::with_capacity(self.parts.len());
        let mut parts = Vec::with_capacity(self.parts.len());
        let mut sum_min = 0u64;
        for Spec { name, min, max } in &self.parts {
            if name.is_empty() {
                return Err(ConfigError::out_of_range(
                    "partition",
                    "a non-empty name",
                    name,
                ));
            }
            if !names.insert(name.as_str()) {
                return Err(ConfigError::out_of_range(
                    "partition",
                    "a name no other partition has",
                    name,
                ));
            }
            if let Some(max) = *max
                && !(1..=total).contains(&max)
            {
                return Err(ConfigError::out_of_range(
                    "max",
                    format!("in 1..={total} (the total) for partition {name:?}"),
                    max,
                ));
            }
            if *min > max.unwrap_or(total) {
                let allowed = match max {
                    Some(max) => format!("at most its max ({max}) for partition {name:?}"),
                    None => format!("at most the total ({total}) for partition {name:?}"),
                };
                return Err(ConfigError::out_of_range("min", allowed, min));
            }
            sum_min += u64::from(*min);
            let max_queued = self.max_queued.unwrap_or(max.unwrap_or(total) as usize);
            parts.push((name.clone(), *min, max.unwrap_or(UNCAPPED), max_queued));
        }
        if sum_min > u64::from(total) {
            return Err(ConfigError::out_of_range(
                "min",
                format!(
                    "such that the minimums of all partitions sum to at most the total ({total})"
                ),
                sum_min,
            ));
        }
        Ok(Config {
            total,
            parts,
            max_wait: self.max_wait,
            discipline: self.discipline,
        })
    }
}
