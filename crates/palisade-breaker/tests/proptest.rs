//! The breaker against a small sequential reference model: random configurations, then random
//! sequences of admissions, outcomes, dropped permits, clock advances and manual transitions.
//! After every step the breaker's decision, state, metrics and emitted transitions must match
//! the model's.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_breaker::{
    CircuitBreaker, OpenDuration, Outcome, OwnedPermit, Reason, SlidingWindow, State, Transition,
};
use palisade_core::ManualClock;
use proptest::prelude::*;

const SLOW_MS: u64 = 100;

#[derive(Debug, Clone)]
struct Config {
    count: Option<(u32, u32)>, // (calls, buckets)
    time: Option<(u64, u32)>,  // (span ms, buckets)
    failure_pct: Option<f64>,
    slow_pct: Option<f64>,
    consecutive: Option<u32>,
    minimum: u32,
    probes: u32,
    ratio: f64,
    max_wait_ms: Option<u64>,
    exponential: bool,
}

fn config() -> impl Strategy<Value = Config> {
    let window = prop_oneof![
        (1_u32..=12).prop_flat_map(|n| {
            let divisors: Vec<u32> = (1..=n).filter(|k| n % k == 0).collect();
            (Just(n), proptest::sample::select(divisors)).prop_map(|(n, k)| (Some((n, k)), None))
        }),
        (1_u64..=5, 1_u32..=5).prop_map(|(s, k)| (None, Some((s * 1000, k)))),
    ];
    (
        window,
        proptest::option::of(prop_oneof![Just(25.0), Just(50.0), Just(100.0), Just(33.3)]),
        proptest::option::of(prop_oneof![Just(50.0), Just(100.0)]),
        proptest::option::of(1_u32..=4),
        1_u32..=12,
        1_u32..=4,
        prop_oneof![Just(0.5), Just(1.0), Just(0.3)],
        proptest::option::of(prop_oneof![Just(100_u64), Just(500), Just(2000)]),
        any::<bool>(),
    )
        .prop_filter("a breaker needs a rule", |c| {
            c.1.is_some() || c.2.is_some() || c.3.is_some()
        })
        .prop_map(
            |(
                (count, time),
                failure_pct,
                slow_pct,
                consecutive,
                minimum,
                probes,
                ratio,
                wait,
                exponential,
            )| {
                let minimum = match count {
                    Some((n, _)) => minimum.min(n),
                    None => minimum,
                };
                Config {
                    count,
                    time,
                    failure_pct,
                    slow_pct,
                    consecutive,
                    minimum,
                    probes,
                    ratio,
                    max_wait_ms: wait,
                    exponential,
                }
            },
        )
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Finish(usize, Outcome),
    Drop(usize),
    AdvanceMs(u64),
    Reset,
    ForceOpen,
    Disable,
    MetricsOnly,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => Just(Op::Acquire),
        8 => (any::<usize>(), prop_oneof![
            3 => Just(Outcome::Failure),
            3 => Just(Outcome::Success),
            1 => Just(Outcome::Ignored),
        ]).prop_map(|(i, o)| Op::Finish(i, o)),
        2 => any::<usize>().prop_map(Op::Drop),
        5 => prop_oneof![0_u64..=150, 0_u64..=3000, Just(1000)].prop_map(Op::AdvanceMs),
        // Manual states last until a reset: keep them rare, or they crowd out the rest.
        1 => prop_oneof![
            3 => Just(Op::Reset),
            1 => Just(Op::ForceOpen),
            1 => Just(Op::Disable),
            1 => Just(Op::MetricsOnly),
        ],
    ]
}

fn build(
    c: &Config,
    clock: &ManualClock,
    events: Arc<Mutex<Vec<(State, State, Reason)>>>,
) -> CircuitBreaker<ManualClock> {
    let mut b = CircuitBreaker::builder().minimum_calls(c.minimum);
    b = match c.failure_pct {
        Some(p) => b.failure_rate(p),
        None => b.no_failure_rate(),
    };
    if let Some(p) = c.slow_pct {
        b = b.slow_calls(Duration::from_millis(SLOW_MS), p);
    }
    if let Some(n) = c.consecutive {
        b = b.consecutive_failures(n);
    }
    b = b.window(match (c.count, c.time) {
        (Some((n, k)), _) => SlidingWindow::count(n).buckets(k),
        (_, Some((ms, k))) => SlidingWindow::time(Duration::from_millis(ms)).buckets(k),
        _ => unreachable!(),
    });
    b = b.open_duration(if c.exponential {
        OpenDuration::exponential(Duration::from_secs(1), Duration::from_secs(8))
    } else {
        OpenDuration::fixed(Duration::from_secs(2))
    });
    if let Some(ms) = c.max_wait_ms {
        b = b.half_open_max_wait(Duration::from_millis(ms));
    }
    b.half_open_probes(c.probes)
        .half_open_success_ratio(c.ratio)
        .on_transition(move |t: &Transition| events.lock().unwrap().push((t.from, t.to, t.reason)))
        .clock(clock.clone())
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The reference model: plain sequential code, written from the documented behaviour.

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    calls: u64,
    failures: u64,
    timed: u64,
    slow: u64,
}

#[derive(Debug)]
struct ModelWindow {
    count: Option<(u64, usize)>, // (calls per bucket, buckets)
    time: Option<(u64, usize)>,  // (bucket width ns, buckets)
    buckets: VecDeque<Bucket>,
    epoch: u64,
    track_slow: bool,
}

impl ModelWindow {
    fn reset(&mut self, now: u64) {
        self.buckets = VecDeque::from([Bucket::default()]);
        if let Some((width, _)) = self.time {
            self.epoch = now / width;
        }
    }

    fn roll_time(&mut self, now: u64) {
        if let Some((width, k)) = self.time {
            let epoch = now / width;
            if epoch > self.epoch {
                for _ in 0..(epoch - self.epoch).min(k as u64 + 1) {
                    self.buckets.push_back(Bucket::default());
                }
                while self.buckets.len() > k + 1 {
                    self.buckets.pop_front();
                }
                self.epoch = epoch;
            }
        }
    }

    fn sum(&self) -> Bucket {
        self.buckets.iter().fold(Bucket::default(), |a, b| Bucket {
            calls: a.calls + b.calls,
            failures: a.failures + b.failures,
            timed: a.timed + b.timed,
            slow: a.slow + b.slow,
        })
    }

    fn record(&mut self, failed: bool, slow: bool, now: u64) -> Bucket {
        self.roll_time(now);
        let last = self.buckets.back_mut().unwrap();
        last.calls += 1;
        last.failures += u64::from(failed);
        if self.track_slow {
            last.timed += 1;
            last.slow += u64::from(slow);
        }
        let full = self.count.is_some_and(|(per, _)| last.calls == per);
        let totals = self.sum();
        if full {
            let k = self.count.unwrap().1;
            self.buckets.push_back(Bucket::default());
            while self.buckets.len() > k + 1 {
                self.buckets.pop_front();
            }
        }
        totals
    }

    fn totals(&mut self, now: u64) -> Bucket {
        self.roll_time(now);
        self.sum()
    }
}

#[derive(Debug, Clone, Copy)]
struct MPermit {
    generation: u32,
    state: State,
    start: u64,
}

struct Model {
    c: Config,
    now: u64,
    state: State,
    generation: u32,
    deadline: u64,
    round_generation: u32,
    admitted: u32,
    succeeded: u32,
    failed: u32,
    reopens: u32,
    consecutive: u32,
    rejections: u64,
    window: Option<ModelWindow>,
    events: Vec<(State, State, Reason)>,
}

const S: u64 = 1_000_000_000;

fn ppm(pct: f64) -> u64 {
    (pct * 10_000.0).round() as u64
}

impl Model {
    fn new(c: &Config) -> Model {
        let has_window = c.failure_pct.is_some() || c.slow_pct.is_some();
        let mut window = has_window.then(|| ModelWindow {
            count: c.count.map(|(n, k)| (u64::from(n / k), k as usize)),
            time: c
                .time
                .map(|(ms, k)| (ms * 1_000_000 / u64::from(k), k as usize)),
            buckets: VecDeque::new(),
            epoch: 0,
            track_slow: c.slow_pct.is_some(),
        });
        if let Some(w) = &mut window {
            w.reset(0);
        }
        Model {
            c: c.clone(),
            now: 0,
            state: State::Closed,
            generation: 0,
            deadline: u64::MAX,
            round_generation: 0,
            admitted: 0,
            succeeded: 0,
            failed: 0,
            reopens: 0,
            consecutive: 0,
            rejections: 0,
            window,
            events: Vec::new(),
        }
    }

    fn required(&self) -> u32 {
        // The ratios used here (0.3, 0.5, 1.0) in tenths: whole successes, rounded up.
        let tenths = (self.c.ratio * 10.0).round() as u32;
        (tenths * self.c.probes)
            .div_ceil(10)
            .clamp(1, self.c.probes)
    }

    fn go(&mut self, to: State, reason: Reason) {
        let from = self.state;
        self.generation = self.generation.wrapping_add(1);
        match to {
            State::Open => {
                self.reopens = if from == State::HalfOpen {
                    self.reopens + 1
                } else {
                    0
                };
                let d = if self.c.exponential {
                    (S << self.reopens.min(3)).min(8 * S)
                } else {
                    2 * S
                };
                // A timed-out round re-opened at its deadline (no later than now).
                let since = if reason == Reason::ProbesTimedOut {
                    self.deadline
                } else {
                    self.now
                };
                self.deadline = since + d;
            }
            State::HalfOpen => {
                self.round_generation = self.generation;
                (self.admitted, self.succeeded, self.failed) = (0, 0, 0);
                self.deadline = u64::MAX;
            }
            State::Closed | State::MetricsOnly => {
                self.reopens = 0;
                self.consecutive = 0;
                let now = self.now;
                if let Some(w) = &mut self.window {
                    w.reset(now);
                }
            }
            _ => {}
        }
        self.state = to;
        self.events.push((from, to, reason));
    }

    /// `Ok(permit)` or `Err((state, retry_after))`.
    fn acquire(&mut self) -> Result<MPermit, (State, Option<Duration>)> {
        loop {
            let permit = MPermit {
                generation: self.generation,
                state: self.state,
                start: self.now,
            };
            match self.state {
                State::Closed | State::Disabled | State::MetricsOnly => return Ok(permit),
                State::ForcedOpen => {
                    self.rejections += 1;
                    return Err((State::ForcedOpen, None));
                }
                State::Open => {
                    if self.now < self.deadline {
                        self.rejections += 1;
                        return Err((
                            State::Open,
                            Some(Duration::from_nanos(self.deadline - self.now)),
                        ));
                    }
                    self.go(State::HalfOpen, Reason::OpenElapsed);
                }
                State::HalfOpen => {
                    if self.admitted < self.c.probes {
                        self.admitted += 1;
                        if self.admitted == self.c.probes
                            && let Some(ms) = self.c.max_wait_ms
                        {
                            self.deadline = self.now + ms * 1_000_000; // the round is full
                        }
                        return Ok(permit);
                    }
                    if self.c.max_wait_ms.is_some() && self.now >= self.deadline {
                        self.go(State::Open, Reason::ProbesTimedOut);
                    } else {
                        self.rejections += 1;
                        return Err((State::HalfOpen, None));
                    }
                }
                _ => unreachable!(),
            }
        }
    }

    fn slow(&self, p: MPermit) -> bool {
        self.c.slow_pct.is_some() && self.now - p.start > SLOW_MS * 1_000_000
    }

    fn finish(&mut self, p: MPermit, outcome: Option<Outcome>) {
        match p.state {
            State::Closed | State::MetricsOnly => {
                let failed = match outcome {
                    Some(Outcome::Success) => false,
                    Some(Outcome::Failure) => true,
                    _ => return,
                };
                if (self.generation, self.state) != (p.generation, p.state) {
                    return;
                }
                if self.c.consecutive.is_some() {
                    self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                }
                let (slow, now) = (self.slow(p), self.now);
                let t = match &mut self.window {
                    Some(w) => w.record(failed, slow, now),
                    None => Bucket::default(),
                };
                if p.state != State::Closed {
                    return;
                }
                let c = &self.c;
                let reason = if c.consecutive.is_some_and(|n| self.consecutive >= n) {
                    Some(Reason::ConsecutiveFailures)
                } else if c.failure_pct.is_some_and(|pct| {
                    t.calls >= u64::from(c.minimum) && t.failures * 1_000_000 >= ppm(pct) * t.calls
                }) {
                    Some(Reason::FailureRate)
                } else if c.slow_pct.is_some_and(|pct| {
                    t.timed >= u64::from(c.minimum) && t.slow * 1_000_000 >= ppm(pct) * t.timed
                }) {
                    Some(Reason::SlowCallRate)
                } else {
                    None
                };
                if let Some(reason) = reason {
                    self.go(State::Open, reason);
                }
            }
            State::HalfOpen => {
                if p.generation != self.round_generation {
                    return;
                }
                let failed = match outcome {
                    Some(Outcome::Failure) => true,
                    Some(Outcome::Success) => self.slow(p),
                    _ => {
                        self.admitted -= 1;
                        return;
                    }
                };
                if failed {
                    self.failed += 1;
                } else {
                    self.succeeded += 1;
                }
                if (self.state, self.generation) != (State::HalfOpen, p.generation) {
                    return;
                }
                if self.succeeded >= self.required() {
                    self.go(State::Closed, Reason::ProbesSucceeded);
                } else if self.failed > self.c.probes - self.required() {
                    self.go(State::Open, Reason::ProbesFailed);
                }
            }
            _ => {}
        }
    }

    fn metrics(&mut self) -> (State, Bucket, u32, u64, u32) {
        let now = self.now;
        let window = match &mut self.window {
            Some(w) => w.totals(now),
            None => Bucket::default(),
        };
        let probes = if self.state == State::HalfOpen && self.round_generation == self.generation {
            self.admitted
        } else {
            0
        };
        (
            self.state,
            window,
            self.consecutive,
            self.rejections,
            probes,
        )
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn the_breaker_matches_the_model(c in config(), ops in proptest::collection::vec(op(), 1..200)) {
        let clock = ManualClock::new();
        let events = Arc::new(Mutex::new(Vec::new()));
        let breaker = Arc::new(build(&c, &clock, Arc::clone(&events)));
        let mut model = Model::new(&c);
        let mut held: Vec<(OwnedPermit<ManualClock>, MPermit)> = Vec::new();

        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Acquire => {
                    let real = breaker.try_acquire_owned();
                    let expected = model.acquire();
                    match (real, expected) {
                        (Ok(p), Ok(m)) => {
                            prop_assert_eq!(p.is_probe(), m.state == State::HalfOpen, "step {}", step);
                            held.push((p, m));
                        }
                        (Err(r), Err((state, after))) => {
                            prop_assert_eq!((r.state(), r.retry_after()), (state, after), "step {}", step);
                        }
                        (real, expected) => prop_assert!(
                            false,
                            "step {}: breaker {:?}, model {:?}", step, real.map(|_| "admitted"), expected
                        ),
                    }
                }
                Op::Finish(i, outcome) if !held.is_empty() => {
                    let (p, m) = held.remove(i % held.len());
                    p.record(outcome);
                    model.finish(m, Some(outcome));
                }
                Op::Drop(i) if !held.is_empty() => {
                    let (p, m) = held.remove(i % held.len());
                    drop(p);
                    model.finish(m, None);
                }
                Op::Finish(..) | Op::Drop(_) => {}
                Op::AdvanceMs(ms) => {
                    clock.advance(Duration::from_millis(ms));
                    model.now += ms * 1_000_000;
                }
                Op::Reset => { breaker.reset(); model.go(State::Closed, Reason::Manual); }
                Op::ForceOpen => { breaker.force_open(); model.go(State::ForcedOpen, Reason::Manual); }
                Op::Disable => { breaker.disable(); model.go(State::Disabled, Reason::Manual); }
                Op::MetricsOnly => { breaker.metrics_only(); model.go(State::MetricsOnly, Reason::Manual); }
            }
            let m = breaker.metrics();
            let (state, window, consecutive, rejections, probes) = model.metrics();
            prop_assert_eq!(m.state, state, "step {}", step);
            prop_assert_eq!(
                (m.window.calls, m.window.failures, m.window.timed_calls, m.window.slow_calls),
                (window.calls, window.failures, window.timed, window.slow),
                "window at step {}", step
            );
            prop_assert_eq!(m.window.consecutive_failures, consecutive, "step {}", step);
            prop_assert_eq!(m.rejections, rejections, "step {}", step);
            prop_assert_eq!(m.probes_admitted, probes, "step {}", step);
            prop_assert_eq!(&*events.lock().unwrap(), &model.events, "transitions at step {}", step);
        }
    }
}
