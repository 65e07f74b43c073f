//! The sliding window: cumulative packed counters and a ring of bucket-start snapshots.
//!
//! # The protocol
//!
//! Two cumulative words count every outcome ever recorded, each as one integer `calls + (x << 32)`
//! that only ever grows (wrapping): `failures` adds `1` per call plus `1 << 32` per failure, and
//! `slow` (only with a slow-call rule) adds `1` per call plus `1 << 32` per slow call. One
//! `fetch_add` records an outcome in a word, so each word changes only by whole outcomes.
//!
//! A window is the difference between a word's value now and its value at the start of the
//! window's oldest bucket: `now - start`, computed with wrapping arithmetic, decodes to the
//! calls and failures between two points of the word's history, a real run of consecutive
//! outcomes, as long as the window holds fewer than 2^32 calls. A rate computed from it is a
//! rate the dependency really had over those calls: no torn read can trip the breaker.
//!
//! The start values are snapshots of the cumulative words taken when a bucket begins, kept in a
//! ring under a lock that only bucket rolls (once per bucket) and resets take. A recorder loads
//! the published start *before* its `fetch_add`, so by read-write coherence its own value comes
//! after the snapshot in the word's modification order and the difference is never negative.
//! Under concurrency a bucket boundary falls wherever the rolling thread's snapshot lands, so a
//! bucket can take in the few calls that were in flight while it rolled.

use std::collections::VecDeque;
use std::time::Duration;

use palisade_core::Instant;
use palisade_core::sync::Mutex;
use palisade_core::sync::atomic::{AtomicU64, Ordering};

use crate::config::{SlidingWindow, WindowKind};
use crate::event::WindowSnapshot;

const ONE_CALL: u64 = 1;
const ONE_MARK: u64 = 1 << 32;

/// Aligns its content to 128 bytes (two 64-byte lines: x86's adjacent-line prefetcher pairs
/// them), so that the words written on every call share no line with read-mostly state.
#[repr(align(128))]
#[derive(Debug)]
pub(crate) struct CacheLine<T>(pub(crate) T);

#[derive(Debug)]
struct Cumulative {
    failures: AtomicU64,
    slow: AtomicU64,
}

/// The counts of one recorded window: `(calls, marked)` per word.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) timed_calls: u64,
    pub(crate) slow: u64,
}

impl Totals {
    pub(crate) fn snapshot(self, consecutive_failures: u32) -> WindowSnapshot {
        WindowSnapshot {
            calls: self.calls,
            failures: self.failures,
            timed_calls: self.timed_calls,
            slow_calls: self.slow,
            consecutive_failures,
        }
    }
}

fn split(diff: u64) -> (u64, u64) {
    (diff & 0xffff_ffff, diff >> 32)
}

#[derive(Debug)]
struct Ring {
    /// Snapshots `(failures, slow)` of the cumulative words at the start of each live bucket,
    /// oldest first; the last one is the bucket being filled.
    starts: VecDeque<(u64, u64)>,
    /// Time windows: the bucket number (`now / width`) of the bucket being filled.
    epoch: u64,
}

#[derive(Debug)]
pub(crate) struct Window {
    hot: CacheLine<Cumulative>,
    start_failures: AtomicU64,
    start_slow: AtomicU64,
    /// Count windows: the low 32 bits of `failures` (the call count) at which the bucket being
    /// filled is full. Time windows: the instant (nanoseconds) the next bucket begins.
    next_roll: AtomicU64,
    ring: Mutex<Ring>,
    kind: Kind,
    track_slow: bool,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Count { per_bucket: u64, buckets: usize },
    Time { width: u64, buckets: usize },
}

impl Window {
    pub(crate) fn new(config: SlidingWindow, track_slow: bool, now: Instant) -> Window {
        let buckets = config.buckets.unwrap_or(1).max(1);
        let kind = match config.kind {
            WindowKind::Count(calls) => Kind::Count {
                per_bucket: u64::from(calls / buckets),
                buckets: buckets as usize,
            },
            WindowKind::Time(span) => Kind::Time {
                width: (nanos(span) / u64::from(buckets)).max(1),
                buckets: buckets as usize,
            },
        };
        let window = Window {
            hot: CacheLine(Cumulative {
                failures: AtomicU64::new(0),
                slow: AtomicU64::new(0),
            }),
            start_failures: AtomicU64::new(0),
            start_slow: AtomicU64::new(0),
            next_roll: AtomicU64::new(0),
            ring: Mutex::new(Ring {
                starts: VecDeque::with_capacity(buckets as usize + 2),
                epoch: 0,
            }),
            kind,
            track_slow,
        };
        window.reset(now);
        window
    }

    /// Whether recording needs the current time (time windows roll by it).
    pub(crate) fn needs_time(&self) -> bool {
        matches!(self.kind, Kind::Time { .. })
    }

    /// Empties the window: it starts over from the current values of the cumulative words.
    pub(crate) fn reset(&self, now: Instant) {
        let mut ring = self.ring.lock();
        let failures = self.hot.0.failures.load(Ordering::Acquire);
        let slow = self.hot.0.slow.load(Ordering::Acquire);
        ring.starts.clear();
        ring.starts.push_back((failures, slow));
        match self.kind {
            Kind::Count { per_bucket, .. } => {
                self.next_roll.store(
                    failures.wrapping_add(per_bucket) & 0xffff_ffff,
                    Ordering::Release,
                );
            }
            Kind::Time { width, .. } => {
                ring.epoch = now.as_nanos() / width;
                self.next_roll
                    .store((ring.epoch + 1).saturating_mul(width), Ordering::Release);
            }
        }
        self.publish(&ring);
    }

    fn publish(&self, ring: &Ring) {
        let (failures, slow) = *ring
            .starts
            .front()
            .expect("the ring always holds the current bucket");
        self.start_failures.store(failures, Ordering::Release);
        self.start_slow.store(slow, Ordering::Release);
    }

    /// Records one outcome and returns the window's totals including it.
    #[inline]
    pub(crate) fn record(&self, failed: bool, slow: bool, now: Instant) -> Totals {
        self.roll_if_due(now);
        // Load the start before adding: the add then comes after the snapshot (see the module
        // docs), so `now - start` covers a real run of outcomes.
        let start = self.start_failures.load(Ordering::Acquire);
        let delta = ONE_CALL + if failed { ONE_MARK } else { 0 };
        let cumulative = self
            .hot
            .0
            .failures
            .fetch_add(delta, Ordering::AcqRel)
            .wrapping_add(delta);
        let (calls, failures) = split(cumulative.wrapping_sub(start));
        let (timed_calls, slow_calls) = if self.track_slow {
            let start = self.start_slow.load(Ordering::Acquire);
            let delta = ONE_CALL + if slow { ONE_MARK } else { 0 };
            let cumulative = self
                .hot
                .0
                .slow
                .fetch_add(delta, Ordering::AcqRel)
                .wrapping_add(delta);
            split(cumulative.wrapping_sub(start))
        } else {
            (0, 0)
        };
        if let Kind::Count { .. } = self.kind {
            let due = self.next_roll.load(Ordering::Acquire) as u32;
            if (cumulative as u32).wrapping_sub(due) as i32 >= 0 {
                self.roll_count();
            }
        }
        Totals {
            calls,
            failures,
            timed_calls,
            slow: slow_calls,
        }
    }

    /// Time windows: moves to the bucket `now` falls in, if the current one is over.
    #[inline]
    fn roll_if_due(&self, now: Instant) {
        if let Kind::Time { .. } = self.kind
            && now.as_nanos() >= self.next_roll.load(Ordering::Acquire)
        {
            self.roll_time(now);
        }
    }

    #[cold]
    fn roll_count(&self) {
        let Kind::Count {
            per_bucket,
            buckets,
        } = self.kind
        else {
            return;
        };
        // Wait for a concurrent roll rather than skip: it may have snapshotted the words before
        // this call's add, and then this call must roll the next bucket itself.
        let mut ring = self.ring.lock();
        let failures = self.hot.0.failures.load(Ordering::Acquire);
        let due = self.next_roll.load(Ordering::Acquire) as u32;
        if ((failures as u32).wrapping_sub(due) as i32) < 0 {
            return; // rolled already
        }
        let slow = self.hot.0.slow.load(Ordering::Acquire);
        ring.starts.push_back((failures, slow));
        while ring.starts.len() > buckets + 1 {
            ring.starts.pop_front();
        }
        self.next_roll.store(
            failures.wrapping_add(per_bucket) & 0xffff_ffff,
            Ordering::Release,
        );
        self.publish(&ring);
    }

    #[cold]
    fn roll_time(&self, now: Instant) {
        let Kind::Time { width, buckets } = self.kind else {
            return;
        };
        // Wait for a concurrent roll: recording into a window that still holds an expired
        // bucket would count calls older than the span.
        let mut ring = self.ring.lock();
        let epoch = now.as_nanos() / width;
        if epoch <= ring.epoch {
            return;
        }
        let failures = self.hot.0.failures.load(Ordering::Acquire);
        let slow = self.hot.0.slow.load(Ordering::Acquire);
        // Buckets skipped while nothing was recorded are empty: they start where the new one does.
        // Drop the oldest before each push: the ring never grows past its capacity, so a roll
        // over an idle gap allocates nothing either.
        let fresh = (epoch - ring.epoch).min(buckets as u64 + 1);
        for _ in 0..fresh {
            if ring.starts.len() > buckets {
                ring.starts.pop_front();
            }
            ring.starts.push_back((failures, slow));
        }
        // The packed words hold a window's calls in 32 bits: past 2^31 in the finished buckets,
        // drop the oldest ones (a window that busy loses nothing by starting later).
        let mut calls: u64 = ring
            .starts
            .iter()
            .zip(ring.starts.iter().skip(1))
            .map(|(older, newer)| split(newer.0.wrapping_sub(older.0)).0)
            .sum();
        while calls >= 1 << 31 && ring.starts.len() > 1 {
            let (oldest, next) = (ring.starts[0].0, ring.starts[1].0);
            calls -= split(next.wrapping_sub(oldest)).0;
            ring.starts.pop_front();
        }
        ring.epoch = epoch;
        self.next_roll
            .store((epoch + 1).saturating_mul(width), Ordering::Release);
        self.publish(&ring);
    }

    /// The window's totals now, without recording anything.
    pub(crate) fn totals(&self, now: Instant) -> Totals {
        self.roll_if_due(now);
        let start = self.start_failures.load(Ordering::Acquire);
        let (calls, failures) = split(
            self.hot
                .0
                .failures
                .load(Ordering::Acquire)
                .wrapping_sub(start),
        );
        let (timed_calls, slow) = if self.track_slow {
            let start = self.start_slow.load(Ordering::Acquire);
            split(self.hot.0.slow.load(Ordering::Acquire).wrapping_sub(start))
        } else {
            (0, 0)
        };
        Totals {
            calls,
            failures,
            timed_calls,
            slow,
        }
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
