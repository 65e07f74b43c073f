//! [`CircuitBreaker`]: the state machine, admission and recording.
//!
//! # Layout of the shared state
//!
//! - `state`: one word, `generation << 32 | tag`. Admission in closed state is this one load.
//!   Every transition bumps the generation, so a permit knows which period admitted it.
//! - `open_until`: the instant the open duration ends (written before the open state is
//!   published; read only after seeing it).
//! - `round_deadline`: with `half_open_max_wait`, the instant a full half-open round times out,
//!   stored by the caller that takes the last slot *before* its compare-and-swap, so whoever sees
//!   the round full sees this deadline or a later one (`u64::MAX` until the round fills). Written
//!   only under `control`, by the transition to half-open and by a caller that has seen, under
//!   the lock, the state still half-open in its round and the round one slot short of full: so
//!   never by a caller whose round is over. A timeout is confirmed against it under the lock
//!   (the round may have been refilled), and the re-opened period runs from it.
//! - `round`: the half-open probe round, `generation << 32 | failed << 20 | succeeded << 10 |
//!   admitted`, changed by compare-and-swap only while its generation is the state's.
//! - `window`: the sliding window (see `window.rs`), absent when no rate rule is set.
//! - `control`: a lock taken by transitions, and by a half-open caller about to take a round's
//!   last slot when `half_open_max_wait` is set (see `round_deadline`). Under it a transition
//!   checks that the state is still the one it saw, writes `open_until`/`round`/the window, then
//!   publishes the new state with a release store. Exactly one caller wins each transition; it
//!   emits the event after releasing the lock.

use std::fmt;
use std::future::IntoFuture;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::sync::Mutex;
use palisade_core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use palisade_core::{Clock, FastClock, Instant};

use crate::classify::{Classify, ErrorsAreFailures, Outcome};
use crate::config::{CircuitBreakerBuilder, Listener, Rules};
use crate::error::{CallError, Rejected};
use crate::event::{Metrics, Reason, State, Transition, WindowSnapshot};
use crate::window::{Totals, Window, nanos};

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const FORCED_OPEN: u64 = 3;
const DISABLED: u64 = 4;
const METRICS_ONLY: u64 = 5;

const fn pack(generation: u32, tag: u64) -> u64 {
    ((generation as u64) << 32) | tag
}

const fn tag(word: u64) -> u64 {
    word & 0xff
}

const fn generation(word: u64) -> u32 {
    (word >> 32) as u32
}

fn state_of(tag: u64) -> State {
    match tag {
        CLOSED => State::Closed,
        OPEN => State::Open,
        HALF_OPEN => State::HalfOpen,
        FORCED_OPEN => State::ForcedOpen,
        DISABLED => State::Disabled,
        _ => State::MetricsOnly,
    }
}

const ROUND_FIELD: u64 = 0x3ff;
const ONE_SUCCESS: u64 = 1 << 10;
const ONE_FAILURE: u64 = 1 << 20;

const fn round_generation(round: u64) -> u32 {
    (round >> 32) as u32
}

const fn round_counts(round: u64) -> (u32, u32, u32) {
    (
        (round & ROUND_FIELD) as u32,
        ((round >> 10) & ROUND_FIELD) as u32,
        ((round >> 20) & ROUND_FIELD) as u32,
    )
}

/// What admitted a call, carried by its permit: the state word (tag and generation) at
/// admission, and the start instant when a slow-call rule needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    word: u64,
    start: Instant,
}

enum Probe {
    Taken,
    Full,
    Stale,
}

/// Transition bookkeeping, behind the control lock.
#[derive(Debug)]
struct Control {
    /// Re-openings from half-open since the breaker last closed (grows the open duration).
    reopens: u32,
    /// SplitMix64 state for the open-duration jitter.
    rng: u64,
}

impl Control {
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn entropy() -> u64 {
    // A std atomic on purpose: seeding is not part of any protocol a loom model checks.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::hash::RandomState::new().hash_one(n)
}

/// A circuit breaker: stops calls to a failing dependency, then probes it and lets calls
/// through again once it has recovered.
///
/// Share one breaker per dependency between every task that calls it (in an `Arc`, or through
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer), or [`KeyedBreakers`](crate::KeyedBreakers)
/// for one per host). Admission in closed state is one atomic load; recording an outcome is one
/// atomic add per tracked rate (a consecutive-failures-only breaker keeps no window: one add per
/// failure, and a success writes only to end a run of failures); nothing on those paths
/// allocates, and only a bucket roll, once per bucket, takes a lock.
///
/// ```
/// use palisade_breaker::{CallError, CircuitBreaker, State};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let breaker = CircuitBreaker::builder()
///     .no_failure_rate()
///     .consecutive_failures(3)
///     .build()?;
///
/// for _ in 0..3 {
///     let r = breaker.call(async { Err::<(), _>("connection refused") }).await;
///     assert!(matches!(r, Err(CallError::Inner(_))));
/// }
/// // Open: the next call is rejected without being run.
/// let r = breaker.call(async { Ok::<_, &str>("never runs") }).await;
/// let rejected = r.unwrap_err().rejected().expect("rejected");
/// assert_eq!(rejected.state(), State::Open);
/// assert!(rejected.retry_after().is_some());
/// # Ok(())
/// # }
/// ```
pub struct CircuitBreaker<C: Clock = FastClock> {
    state: AtomicU64,
    open_until: AtomicU64,
    round_deadline: AtomicU64,
    round: AtomicU64,
    consecutive: AtomicU32,
    rejections: AtomicU64,
    window: Option<Window>,
    control: Mutex<Control>,
    rules: Rules,
    /// A slow-call rule is set: admission reads the clock.
    needs_start: bool,
    /// Recording needs the time: a slow-call rule or a time window.
    needs_now: bool,
    clock: C,
    name: Option<Arc<str>>,
    listener: Option<Listener>,
}

impl CircuitBreaker<FastClock> {
    /// A builder with the defaults: trip at a 50 % failure rate over the last 100 calls (at
    /// least 20), open for 5 s doubling to 60 s (±10 %), close when 3 of 5 probes succeed.
    pub fn builder() -> CircuitBreakerBuilder<FastClock> {
        CircuitBreakerBuilder::default()
    }
}

impl Default for CircuitBreaker<FastClock> {
    /// A breaker with the [`builder`](CircuitBreaker::builder)'s defaults.
    fn default() -> Self {
        CircuitBreaker::builder()
            .build()
            .expect("the default configuration is valid")
    }
}

impl<C: Clock> fmt::Debug for CircuitBreaker<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .field("rules", &self.rules)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl<C: Clock> CircuitBreaker<C> {
    pub(crate) fn from_parts(
        rules: Rules,
        clock: C,
        name: Option<Arc<str>>,
        listener: Option<Listener>,
    ) -> CircuitBreaker<C> {
        let now = clock.now();
        let window = rules
            .has_window()
            .then(|| Window::new(rules.window, rules.slow.is_some(), now));
        let needs_start = rules.slow.is_some();
        let needs_now = needs_start || window.as_ref().is_some_and(Window::needs_time);
        CircuitBreaker {
            state: AtomicU64::new(pack(0, CLOSED)),
            open_until: AtomicU64::new(u64::MAX),
            round_deadline: AtomicU64::new(u64::MAX),
            round: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            rejections: AtomicU64::new(0),
            window,
            control: Mutex::new(Control {
                reopens: 0,
                rng: rules.seed.unwrap_or_else(entropy),
            }),
            rules,
            needs_start,
            needs_now,
            clock,
            name,
            listener,
        }
    }

    /// The current state. An open breaker whose open duration is over still reports
    /// [`State::Open`] until a call arrives and moves it to half-open.
    pub fn state(&self) -> State {
        state_of(tag(self.state.load(Ordering::Acquire)))
    }

    /// Whether a breaker nobody holds can be forgotten without cutting an open period short or
    /// losing a call in flight: closed, half-open (no probe is out: nobody holds a permit), or
    /// open past its open duration. A forgotten key comes back closed, so after an idle spell
    /// its calls are not limited to probes. Manual states are kept.
    pub(crate) fn forgettable(&self) -> bool {
        let word = self.state.load(Ordering::Acquire);
        match tag(word) {
            CLOSED | HALF_OPEN => true,
            OPEN => self.clock.now().as_nanos() >= self.open_until.load(Ordering::Acquire),
            _ => false,
        }
    }

    /// The breaker's name, if it was given one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The breaker's clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Asks to make one call: a [`Permit`] to record its outcome with, or a [`Rejected`] that
    /// says why not and when to try again.
    ///
    /// Dropping the permit without recording counts as neither success nor failure; in
    /// half-open state it frees the probe slot for another caller.
    ///
    /// ```
    /// use palisade_breaker::CircuitBreaker;
    ///
    /// let breaker = CircuitBreaker::default();
    /// match breaker.try_acquire() {
    ///     Ok(permit) => {
    ///         let ok = std::fs::metadata("/").is_ok(); // any work, sync or async
    ///         if ok { permit.success() } else { permit.failure() }
    ///     }
    ///     Err(rejected) => eprintln!("not now: {rejected}"),
    /// }
    /// ```
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_, C>, Rejected> {
        let ticket = self.admit()?;
        Ok(Permit {
            breaker: self,
            ticket,
        })
    }

    /// [`try_acquire`](Self::try_acquire) for a breaker in an `Arc`: the permit owns a
    /// reference and can move into a spawned task or a response future.
    #[inline]
    pub fn try_acquire_owned(self: &Arc<Self>) -> Result<OwnedPermit<C>, Rejected> {
        let ticket = self.admit()?;
        Ok(OwnedPermit {
            breaker: Arc::clone(self),
            ticket: Some(ticket),
        })
    }

    /// Runs `fut` if the breaker admits it and records its outcome: `Ok` as a success, `Err`
    /// as a failure. A rejected call returns [`CallError::Rejected`] without polling `fut`.
    ///
    /// Cancel-safe: dropping the returned future before it completes records nothing and, for
    /// a half-open probe, frees the slot, so a cancelled probe can't hold the breaker in
    /// half-open.
    pub async fn call<F, T, E>(&self, fut: F) -> Result<T, CallError<E>>
    where
        F: IntoFuture<Output = Result<T, E>>,
    {
        self.call_with(ErrorsAreFailures, fut).await
    }

    /// [`call`](Self::call) with a classifier that maps the result, an error *or* a response
    /// value, to a success, a failure, or an ignored outcome.
    pub async fn call_with<K, F, T, E>(&self, classify: K, fut: F) -> Result<T, CallError<E>>
    where
        K: Classify<T, E>,
        F: IntoFuture<Output = Result<T, E>>,
    {
        let permit = self.try_acquire()?;
        let result = fut.await;
        permit.record(classify.classify(&result));
        result.map_err(CallError::Inner)
    }

    /// Moves to [`State::Closed`] with an empty window, whatever the state. Permits admitted
    /// before record nothing (an outcome recorded at the very moment of the reset may still land
    /// in the new window).
    pub fn reset(&self) {
        self.manual(CLOSED);
    }

    /// Moves to [`State::ForcedOpen`]: every call is rejected until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.manual(FORCED_OPEN);
    }

    /// Moves to [`State::Disabled`]: every call is admitted and nothing is recorded until
    /// [`reset`](Self::reset).
    pub fn disable(&self) {
        self.manual(DISABLED);
    }

    /// Moves to [`State::MetricsOnly`] with an empty window: every call is admitted and
    /// recorded, and nothing trips, until [`reset`](Self::reset).
    pub fn metrics_only(&self) {
        self.manual(METRICS_ONLY);
    }

    /// A snapshot for dashboards and tests: state, window totals and rates, rejections.
    pub fn metrics(&self) -> Metrics {
        let word = self.state.load(Ordering::Acquire);
        let window = self.snapshot(self.clock.now());
        let round = self.round.load(Ordering::Acquire);
        let probes_admitted =
            if tag(word) == HALF_OPEN && round_generation(round) == generation(word) {
                round_counts(round).0
            } else {
                0
            };
        Metrics {
            state: state_of(tag(word)),
            window,
            failure_rate: window.failure_rate(),
            slow_call_rate: window.slow_call_rate(),
            rejections: self.rejections.load(Ordering::Relaxed),
            probes_admitted,
        }
    }

    fn snapshot(&self, now: Instant) -> WindowSnapshot {
        let totals = match &self.window {
            Some(window) => window.totals(now),
            None => Totals::default(),
        };
        totals.snapshot(self.consecutive.load(Ordering::Relaxed))
    }

    fn manual(&self, to: u64) {
        loop {
            let word = self.state.load(Ordering::Acquire);
            if self.transition(word, to, Reason::Manual, None) {
                return;
            }
        }
    }

    #[inline]
    fn start_time(&self) -> Instant {
        if self.needs_start {
            self.clock.now()
        } else {
            Instant::ZERO
        }
    }

    #[inline]
    fn admit(&self) -> Result<Ticket, Rejected> {
        let word = self.state.load(Ordering::Acquire);
        if tag(word) == CLOSED {
            return Ok(Ticket {
                word,
                start: self.start_time(),
            });
        }
        self.admit_slow(word)
    }

    #[cold]
    fn admit_slow(&self, mut word: u64) -> Result<Ticket, Rejected> {
        loop {
            match tag(word) {
                CLOSED | DISABLED | METRICS_ONLY => {
                    return Ok(Ticket {
                        word,
                        start: self.start_time(),
                    });
                }
                OPEN => {
                    let now = self.clock.now().as_nanos();
                    let until = self.open_until.load(Ordering::Acquire);
                    if now < until {
                        return Err(
                            self.reject(State::Open, Some(Duration::from_nanos(until - now)))
                        );
                    }
                    self.transition(word, HALF_OPEN, Reason::OpenElapsed, None);
                }
                HALF_OPEN => match self.take_probe(generation(word)) {
                    Probe::Taken => {
                        return Ok(Ticket {
                            word,
                            start: self.start_time(),
                        });
                    }
                    Probe::Full => {
                        if self.rules.half_open_max_wait.is_some()
                            && self.clock.now().as_nanos()
                                >= self.round_deadline.load(Ordering::Acquire)
                        {
                            let round = self.round_snapshot(generation(word));
                            self.transition(word, OPEN, Reason::ProbesTimedOut, round);
                        } else {
                            return Err(self.reject(State::HalfOpen, None));
                        }
                    }
                    Probe::Stale => {
                        // A newer round: its transition holds the control lock from writing the
                        // round until it has published the state, so take the lock once rather
                        // than spin on a state word that may not show it yet.
                        drop(self.control.lock());
                    }
                },
                _ => return Err(self.reject(State::ForcedOpen, None)),
            }
            word = self.state.load(Ordering::Acquire);
        }
    }

    fn reject(&self, state: State, retry_after: Option<Duration>) -> Rejected {
        self.rejections.fetch_add(1, Ordering::Relaxed);
        Rejected { state, retry_after }
    }

    fn take_probe(&self, generation: u32) -> Probe {
        let mut round = self.round.load(Ordering::Acquire);
        let mut control = None;
        loop {
            if round_generation(round) != generation {
                return Probe::Stale;
            }
            let admitted = round_counts(round).0;
            if admitted >= self.rules.probes {
                return Probe::Full;
            }
            if admitted + 1 == self.rules.probes
                && let Some(wait) = self.rules.half_open_max_wait
            {
                // This call may fill the round. Its deadline is written under the control lock,
                // and only once the round is seen again under it: transitions hold the lock, so
                // the round can't be replaced between that look and the write (without it, a
                // caller from a lost round could stall before writing, then overwrite a newer
                // round's deadline), and no other caller can fill it meanwhile.
                if control.is_none() {
                    control = Some(self.control.lock());
                    // The round word keeps its generation until the next round replaces it,
                    // also after its round is over (closed, failed or timed out): under the
                    // lock, check that the state is still this round's, or a caller that read
                    // it before a re-opening would take (and time) a slot of a finished round.
                    if self.state.load(Ordering::Acquire) != pack(generation, HALF_OPEN) {
                        return Probe::Stale;
                    }
                    round = self.round.load(Ordering::Acquire);
                    continue;
                }
                // Written before the compare-and-swap, so that whoever sees the round full also
                // sees this deadline (or a later round's).
                let until = self.clock.now().as_nanos().saturating_add(nanos(wait));
                self.round_deadline.store(until, Ordering::Release);
            }
            match self.round.compare_exchange_weak(
                round,
                round + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Probe::Taken,
                Err(current) => round = current,
            }
        }
    }

    fn round_snapshot(&self, generation: u32) -> Option<WindowSnapshot> {
        let round = self.round.load(Ordering::Acquire);
        (round_generation(round) == generation).then(|| {
            let (_, succeeded, failed) = round_counts(round);
            WindowSnapshot {
                calls: u64::from(succeeded + failed),
                failures: u64::from(failed),
                ..WindowSnapshot::default()
            }
        })
    }

    /// Records a permit's outcome.
    #[inline]
    pub(crate) fn settle(&self, ticket: Ticket, outcome: Outcome) {
        match tag(ticket.word) {
            CLOSED | METRICS_ONLY => self.record_closed(ticket, outcome),
            HALF_OPEN => self.record_probe(ticket, outcome),
            _ => {}
        }
    }

    /// A permit was dropped without an outcome.
    #[inline]
    pub(crate) fn release(&self, ticket: Ticket) {
        if tag(ticket.word) == HALF_OPEN {
            self.finish_probe(generation(ticket.word), None);
        }
    }

    fn is_slow(&self, ticket: Ticket, now: Instant) -> bool {
        match self.rules.slow {
            Some((threshold, _)) => now.saturating_duration_since(ticket.start) > threshold,
            None => false,
        }
    }

    #[inline]
    fn record_closed(&self, ticket: Ticket, outcome: Outcome) {
        let failed = match outcome {
            Outcome::Success => false,
            Outcome::Failure => true,
            Outcome::Ignored => return,
        };
        let now = if self.needs_now {
            self.clock.now()
        } else {
            Instant::ZERO
        };
        // A permit from before a transition records nothing: its outcome belongs to a period
        // that is over.
        if self.state.load(Ordering::Acquire) != ticket.word {
            return;
        }
        let consecutive = match self.rules.consecutive {
            Some(_) if failed => self
                .consecutive
                .fetch_add(1, Ordering::AcqRel)
                .wrapping_add(1),
            Some(_) => {
                // Read before writing: a run of successes leaves the line shared, unwritten.
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
                0
            }
            None => 0,
        };
        let totals = match &self.window {
            Some(window) => window.record(failed, self.is_slow(ticket, now), now),
            None => Totals::default(),
        };
        if tag(ticket.word) == CLOSED
            && let Some(reason) = self.tripped(consecutive, totals)
        {
            self.transition(
                ticket.word,
                OPEN,
                reason,
                Some(totals.snapshot(consecutive)),
            );
        }
    }

    #[inline]
    fn tripped(&self, consecutive: u32, t: Totals) -> Option<Reason> {
        let rules = &self.rules;
        if rules.consecutive.is_some_and(|limit| consecutive >= limit) {
            return Some(Reason::ConsecutiveFailures);
        }
        if let Some(ppm) = rules.failure_ppm
            && t.calls >= rules.minimum_calls
            && t.failures * 1_000_000 >= ppm * t.calls
        {
            return Some(Reason::FailureRate);
        }
        if let Some((_, ppm)) = rules.slow
            && t.timed_calls >= rules.minimum_calls
            && t.slow * 1_000_000 >= ppm * t.timed_calls
        {
            return Some(Reason::SlowCallRate);
        }
        None
    }

    fn record_probe(&self, ticket: Ticket, outcome: Outcome) {
        let failed = match outcome {
            Outcome::Ignored => return self.finish_probe(generation(ticket.word), None),
            Outcome::Failure => true,
            Outcome::Success => self.rules.slow.is_some() && self.is_slow(ticket, self.clock.now()),
        };
        self.finish_probe(generation(ticket.word), Some(failed));
    }

    /// Settles one probe of round `generation`: `None` frees its slot, `Some(failed)` counts it.
    fn finish_probe(&self, generation: u32, failed: Option<bool>) {
        let mut round = self.round.load(Ordering::Acquire);
        let next = loop {
            if round_generation(round) != generation {
                return; // a later round: this probe's result means nothing to it
            }
            let next = match failed {
                // Never below zero, even for a permit 2^32 generations old that matches again.
                None if round_counts(round).0 == 0 => return,
                None => round - 1,
                Some(false) => round + ONE_SUCCESS,
                Some(true) => round + ONE_FAILURE,
            };
            match self
                .round
                .compare_exchange_weak(round, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break next,
                Err(current) => round = current,
            }
        };
        if failed.is_none() {
            return;
        }
        let (_, succeeded, failures) = round_counts(next);
        let word = pack(generation, HALF_OPEN);
        let snapshot = Some(WindowSnapshot {
            calls: u64::from(succeeded + failures),
            failures: u64::from(failures),
            ..WindowSnapshot::default()
        });
        if succeeded >= self.rules.probes_required {
            self.transition(word, CLOSED, Reason::ProbesSucceeded, snapshot);
        } else if failures > self.rules.probes - self.rules.probes_required {
            self.transition(word, OPEN, Reason::ProbesFailed, snapshot);
        }
    }

    /// Moves from the state word `from` to `to`, if the state is still `from`. Returns whether
    /// this call made the change (and so emitted the event).
    fn transition(
        &self,
        from: u64,
        to: u64,
        reason: Reason,
        window: Option<WindowSnapshot>,
    ) -> bool {
        let event = {
            let mut control = self.control.lock();
            if self.state.load(Ordering::Acquire) != from {
                return false;
            }
            let now = self.clock.now();
            // A timeout seen outside the lock may be out of date: the round may have been
            // refilled since (a probe dropped, its slot taken again), with a later deadline.
            // The deadline is written under this lock, so this look is the round's own.
            if reason == Reason::ProbesTimedOut
                && self.round_deadline.load(Ordering::Relaxed) > now.as_nanos()
            {
                return false;
            }
            let next = generation(from).wrapping_add(1);
            let window = window.unwrap_or_else(|| self.snapshot(now));
            let mut open_for = None;
            let mut at = now;
            match to {
                OPEN => {
                    if tag(from) == HALF_OPEN {
                        control.reopens = control.reopens.saturating_add(1);
                    } else {
                        control.reopens = 0;
                    }
                    let unit = if self.rules.open_duration.jitter > 0.0 {
                        control.next_unit()
                    } else {
                        0.5
                    };
                    let duration = self.rules.open_duration.pick(control.reopens, unit);
                    // A round that timed out re-opened at its deadline, not when a caller came
                    // to notice: its open period runs from there, so that a call arriving long
                    // after is a probe of the next round, not rejected for a whole new period.
                    // (The state is still `from` under the lock: the deadline is this round's.)
                    let since = if reason == Reason::ProbesTimedOut {
                        self.round_deadline.load(Ordering::Relaxed) // at most `now`: see above
                    } else {
                        now.as_nanos()
                    };
                    self.open_until
                        .store(since.saturating_add(nanos(duration)), Ordering::Relaxed);
                    open_for = Some(duration);
                    at = Instant::from_nanos(since);
                }
                HALF_OPEN => {
                    self.round_deadline.store(u64::MAX, Ordering::Relaxed);
                    self.round.store(pack(next, 0), Ordering::Relaxed);
                }
                CLOSED | METRICS_ONLY => {
                    control.reopens = 0;
                    self.consecutive.store(0, Ordering::Relaxed);
                    if let Some(w) = &self.window {
                        w.reset(now);
                    }
                }
                _ => {}
            }
            self.state.store(pack(next, to), Ordering::Release);
            Transition {
                generation: next,
                name: self.name.clone(),
                from: state_of(tag(from)),
                to: state_of(to),
                reason,
                window,
                at,
                open_for,
            }
        };
        self.emit(&event);
        true
    }

    fn emit(&self, t: &Transition) {
        let name = self.name.as_deref().unwrap_or("");
        if matches!(t.to, State::Open | State::ForcedOpen) {
            tracing::warn!(
                target: "palisade_breaker",
                breaker = name,
                from = %t.from,
                to = %t.to,
                reason = %t.reason,
                calls = t.window.calls,
                failures = t.window.failures,
                slow_calls = t.window.slow_calls,
                consecutive_failures = t.window.consecutive_failures,
                open_for = ?t.open_for,
                "circuit breaker opened",
            );
        } else {
            tracing::info!(
                target: "palisade_breaker",
                breaker = name,
                from = %t.from,
                to = %t.to,
                reason = %t.reason,
                calls = t.window.calls,
                failures = t.window.failures,
                "circuit breaker state changed",
            );
        }
        if let Some(listener) = &self.listener {
            listener(t);
        }
    }
}

/// Permission for one call, borrowed from the breaker
/// ([`CircuitBreaker::try_acquire`]). Consume it with [`success`](Permit::success),
/// [`failure`](Permit::failure), [`ignore`](Permit::ignore) or [`record`](Permit::record).
///
/// Dropping it unconsumed (an early return, a panic, a cancelled future) records nothing; a
/// half-open probe's slot is freed for the next caller. A permit admitted before a state change
/// records nothing after it: a late result from an old half-open round can't close a new one.
#[must_use = "record the call's outcome with success(), failure() or ignore()"]
pub struct Permit<'a, C: Clock = FastClock> {
    breaker: &'a CircuitBreaker<C>,
    ticket: Ticket,
}

impl<C: Clock> Permit<'_, C> {
    /// The call succeeded (it still counts as slow if it took longer than the threshold).
    #[inline]
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// The call failed.
    #[inline]
    pub fn failure(self) {
        self.record(Outcome::Failure);
    }

    /// The call says nothing about the dependency's health: recorded as neither.
    #[inline]
    pub fn ignore(self) {
        self.record(Outcome::Ignored);
    }

    /// Records `outcome`.
    #[inline]
    pub fn record(self, outcome: Outcome) {
        let (breaker, ticket) = (self.breaker, self.ticket);
        std::mem::forget(self);
        breaker.settle(ticket, outcome);
    }

    /// Whether this permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        tag(self.ticket.word) == HALF_OPEN
    }
}

impl<C: Clock> Drop for Permit<'_, C> {
    fn drop(&mut self) {
        self.breaker.release(self.ticket);
    }
}

impl<C: Clock> fmt::Debug for Permit<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("state", &state_of(tag(self.ticket.word)))
            .field("generation", &generation(self.ticket.word))
            .finish()
    }
}

/// A [`Permit`] that owns an `Arc` of its breaker ([`CircuitBreaker::try_acquire_owned`]), for
/// a call that outlives the borrow: a spawned task, a tower response future.
#[must_use = "record the call's outcome with success(), failure() or ignore()"]
pub struct OwnedPermit<C: Clock = FastClock> {
    breaker: Arc<CircuitBreaker<C>>,
    /// `None` once recorded.
    ticket: Option<Ticket>,
}

impl<C: Clock> OwnedPermit<C> {
    /// The call succeeded.
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// The call failed.
    pub fn failure(self) {
        self.record(Outcome::Failure);
    }

    /// The call says nothing about the dependency's health: recorded as neither.
    pub fn ignore(self) {
        self.record(Outcome::Ignored);
    }

    /// Records `outcome`.
    pub fn record(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.settle(ticket, outcome);
        }
    }

    /// Whether this permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.ticket.is_some_and(|t| tag(t.word) == HALF_OPEN)
    }

    /// The breaker this permit belongs to.
    pub fn breaker(&self) -> &Arc<CircuitBreaker<C>> {
        &self.breaker
    }
}

impl<C: Clock> Drop for OwnedPermit<C> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.release(ticket);
        }
    }
}

impl<C: Clock> fmt::Debug for OwnedPermit<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedPermit")
            .field("state", &self.ticket.map(|t| state_of(tag(t.word))))
            .field("generation", &self.ticket.map(|t| generation(t.word)))
            .finish()
    }
}
