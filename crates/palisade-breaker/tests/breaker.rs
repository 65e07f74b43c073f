//! The breaker's behaviour over its public API, driven by a manual clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_breaker::{
    CircuitBreaker, CircuitBreakerBuilder, ConfigError, OpenDuration, Outcome, Reason, Rejected,
    SlidingWindow, State, Transition,
};
use palisade_core::{Instant, ManualClock};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A consecutive-failures breaker on a manual clock: open 10 s fixed, 2 of 3 probes close.
fn consecutive(n: u32) -> (CircuitBreaker<ManualClock>, ManualClock) {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(n)
        .open_duration(secs(10))
        .half_open_probes(3)
        .half_open_success_ratio(0.6)
        .clock(clock.clone())
        .build()
        .unwrap();
    (b, clock)
}

fn fail(b: &CircuitBreaker<ManualClock>, n: usize) {
    for _ in 0..n {
        b.try_acquire().expect("admitted").failure();
    }
}

fn succeed(b: &CircuitBreaker<ManualClock>, n: usize) {
    for _ in 0..n {
        b.try_acquire().expect("admitted").success();
    }
}

fn rejected(b: &CircuitBreaker<ManualClock>) -> Rejected {
    b.try_acquire().expect_err("rejected")
}

fn recorder() -> (
    Arc<Mutex<Vec<Transition>>>,
    impl Fn(&Transition) + Send + Sync + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    (seen, move |t: &Transition| {
        sink.lock().unwrap().push(t.clone())
    })
}

#[test]
fn the_defaults_are_valid_and_documented() {
    let b = CircuitBreaker::default();
    assert_eq!(b.state(), State::Closed);
    let m = b.metrics();
    assert_eq!((m.window.calls, m.rejections), (0, 0));
    let d = OpenDuration::default();
    assert_eq!(
        d,
        OpenDuration::exponential(secs(5), secs(60)).jitter(0.1),
        "README's knob table says 5 s doubling to 60 s, ±10 %"
    );
}

#[test]
fn builders_name_the_field_and_the_range() {
    fn err(b: CircuitBreakerBuilder) -> String {
        b.build().unwrap_err().to_string()
    }
    let b = CircuitBreaker::builder;
    assert_eq!(
        err(b().failure_rate(0.0)),
        "failure_rate must be a percentage in (0, 100], got 0.0"
    );
    assert_eq!(
        err(b().failure_rate(f64::NAN)),
        "failure_rate must be a percentage in (0, 100], got NaN"
    );
    assert_eq!(
        err(b().slow_calls(Duration::ZERO, 50.0)),
        "slow_calls threshold must be greater than zero and at most 24h, got 0ns"
    );
    assert_eq!(
        err(b().slow_calls(secs(1), 101.0)),
        "slow_calls percent must be a percentage in (0, 100], got 101.0"
    );
    assert_eq!(
        err(b().consecutive_failures(0)),
        "consecutive_failures must be at least 1, got 0"
    );
    assert_eq!(
        err(b().minimum_calls(0)),
        "minimum_calls must be at least 1, got 0"
    );
    assert_eq!(
        err(b().minimum_calls(101)),
        "minimum_calls must be in [1, 100] (the count window's size), got 101"
    );
    assert_eq!(
        err(b().window(SlidingWindow::count(0))),
        "window calls must be in [1, 1073741824], got 0"
    );
    assert_eq!(
        err(b().window(SlidingWindow::count(100).buckets(7))),
        "window buckets must be a divisor of the window's 100 calls in [1, 100], got 7"
    );
    assert_eq!(
        err(b().window(SlidingWindow::time(Duration::from_micros(10)))),
        "window span must be between 1ms and 24h, got 10µs"
    );
    assert_eq!(
        err(b().window(SlidingWindow::time(secs(10)).buckets(1001))),
        "window buckets must be in [1, 1000] for a 10s window (buckets of at most 10 minutes), got 1001"
    );
    assert_eq!(
        err(b().open_duration(OpenDuration::exponential(secs(10), secs(5)))),
        "open_duration max must be at least the initial duration 10s, got 5s"
    );
    assert_eq!(
        err(b().open_duration(OpenDuration::exponential(secs(1), secs(5)).multiplier(0.5))),
        "open_duration multiplier must be a finite number in [1.0, 100.0], got 0.5"
    );
    assert_eq!(
        err(b().open_duration(OpenDuration::fixed(secs(1)).jitter(0.6))),
        "open_duration jitter must be a fraction in [0.0, 0.5], got 0.6"
    );
    assert_eq!(
        err(b().open_duration(Duration::ZERO)),
        "open_duration initial must be greater than zero and at most 24h, got 0ns"
    );
    assert_eq!(
        err(b().half_open_probes(0)),
        "half_open_probes must be in [1, 1000], got 0"
    );
    assert_eq!(
        err(b().half_open_success_ratio(0.0)),
        "half_open_success_ratio must be a fraction in (0.0, 1.0], got 0.0"
    );
    assert_eq!(
        err(b().half_open_max_wait(secs(90_000))),
        "half_open_max_wait must be greater than zero and at most 24h, got 90000s"
    );
    assert_eq!(
        err(b().window(SlidingWindow::time(secs(3600)).buckets(5))),
        "window buckets must be in [6, 1000] for a 3600s window (buckets of at most 10 minutes), got 5"
    );
    assert!(err(b().no_failure_rate()).starts_with(
        "failure_rate must be set, or replaced by slow_calls or consecutive_failures"
    ),);
    assert!(matches!(
        b().half_open_probes(2000).build(),
        Err(ConfigError::OutOfRange {
            field: "half_open_probes",
            ..
        })
    ));
    // A count window's default bucket count divides it.
    for calls in [1, 7, 13, 25, 100, 1000] {
        assert!(
            b().minimum_calls(1)
                .window(SlidingWindow::count(calls))
                .build()
                .is_ok(),
            "{calls}"
        );
    }
}

#[test]
fn consecutive_failures_trip_and_a_success_starts_the_count_over() {
    let (b, _clock) = consecutive(3);
    fail(&b, 2);
    succeed(&b, 1);
    fail(&b, 2);
    assert_eq!(b.state(), State::Closed, "the success broke the run");
    fail(&b, 1);
    assert_eq!(b.state(), State::Open);
    let r = rejected(&b);
    assert_eq!(r.state(), State::Open);
    assert_eq!(r.retry_after(), Some(secs(10)));
}

#[test]
fn ignored_outcomes_count_as_nothing() {
    let (b, _clock) = consecutive(2);
    fail(&b, 1);
    b.try_acquire().unwrap().ignore();
    drop(b.try_acquire().unwrap());
    fail(&b, 1);
    assert_eq!(
        b.state(),
        State::Open,
        "ignore and drop neither broke the run nor counted"
    );
}

fn rate_breaker(window: SlidingWindow, min: u32) -> (CircuitBreaker<ManualClock>, ManualClock) {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .failure_rate(50.0)
        .minimum_calls(min)
        .window(window)
        .open_duration(secs(10))
        .clock(clock.clone())
        .build()
        .unwrap();
    (b, clock)
}

#[test]
fn the_failure_rate_needs_the_minimum_calls() {
    let (b, _clock) = rate_breaker(SlidingWindow::count(10), 4);
    fail(&b, 3);
    assert_eq!(
        b.state(),
        State::Closed,
        "3 failures of 3 calls, but 4 calls are needed"
    );
    fail(&b, 1);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn the_failure_rate_trips_at_the_threshold_not_below() {
    let (b, _clock) = rate_breaker(SlidingWindow::count(10), 10);
    succeed(&b, 5);
    fail(&b, 4);
    assert_eq!(b.metrics().failure_rate, Some(4.0 * 100.0 / 9.0));
    assert_eq!(b.state(), State::Closed);
    fail(&b, 1); // 5 of 10: 50 %
    assert_eq!(b.state(), State::Open);
}

#[test]
fn a_count_window_forgets_calls_a_bucket_at_a_time() {
    // 10 calls in 5 buckets of 2: the window holds the last 10 to 11 calls.
    let (b, _clock) = rate_breaker(SlidingWindow::count(10).buckets(5), 10);
    fail(&b, 4);
    succeed(&b, 6);
    assert_eq!(b.metrics().window.calls, 10);
    succeed(&b, 1);
    assert_eq!(b.metrics().window.calls, 11, "a new bucket is being filled");
    succeed(&b, 1);
    let w = b.metrics().window;
    assert_eq!(
        (w.calls, w.failures),
        (10, 2),
        "the oldest bucket (2 failures) rolled out"
    );
    succeed(&b, 2);
    assert_eq!(b.metrics().window.failures, 0);
}

#[test]
fn an_exact_count_window_holds_exactly_the_last_n_calls() {
    let (b, _clock) = rate_breaker(SlidingWindow::count(4).buckets(4), 4);
    fail(&b, 1);
    succeed(&b, 3);
    assert_eq!(b.metrics().window.failures, 1);
    succeed(&b, 1);
    let w = b.metrics().window;
    assert_eq!((w.calls, w.failures), (4, 0));
}

#[test]
fn a_time_window_forgets_calls_older_than_its_span() {
    let (b, clock) = rate_breaker(SlidingWindow::time(secs(10)).buckets(10), 5);
    fail(&b, 2);
    clock.advance(secs(5));
    succeed(&b, 2);
    assert_eq!(b.metrics().window.calls, 4);
    clock.advance(secs(5)); // the first calls' bucket is 10 s old: still in (span + current bucket)
    assert_eq!(b.metrics().window.calls, 4);
    clock.advance(secs(1));
    let w = b.metrics().window;
    assert_eq!(
        (w.calls, w.failures),
        (2, 0),
        "the failures are older than 11 s"
    );
    clock.advance(secs(60));
    assert_eq!(b.metrics().window.calls, 0, "an idle window empties");
    fail(&b, 5);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn the_slow_call_rate_trips_on_slow_successes() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .no_failure_rate()
        .slow_calls(ms(500), 50.0)
        .minimum_calls(4)
        .clock(clock.clone())
        .build()
        .unwrap();
    for slow in [true, false, true] {
        let p = b.try_acquire().unwrap();
        // Slower than the threshold is slow; the threshold itself is not.
        clock.advance(if slow { ms(501) } else { ms(500) });
        p.success();
    }
    let m = b.metrics();
    assert_eq!((m.window.timed_calls, m.window.slow_calls), (3, 2));
    assert_eq!(b.state(), State::Closed, "below the minimum calls");
    let p = b.try_acquire().unwrap();
    p.success(); // fast: 2 of 4 slow, 50 %
    assert_eq!(b.state(), State::Open);
}

#[test]
fn open_rejects_then_half_open_admits_exactly_the_probes() {
    let (b, clock) = consecutive(1);
    fail(&b, 1);
    clock.advance(secs(4));
    let r = rejected(&b);
    assert_eq!((r.state(), r.retry_after()), (State::Open, Some(secs(6))));
    clock.advance(secs(6));
    let probes: Vec<_> = (0..3).map(|_| b.try_acquire().expect("a probe")).collect();
    assert!(probes.iter().all(|p| p.is_probe()));
    assert_eq!(b.state(), State::HalfOpen);
    let r = rejected(&b);
    assert_eq!((r.state(), r.retry_after()), (State::HalfOpen, None));
    assert_eq!(b.metrics().probes_admitted, 3);
    assert_eq!(b.metrics().rejections, 2);
    drop(probes);
}

#[test]
fn a_success_ratio_closes_and_failures_reopen() {
    let (b, clock) = consecutive(1);
    fail(&b, 1);
    clock.advance(secs(10));
    let mut probes: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
    probes.pop().unwrap().failure();
    probes.pop().unwrap().success();
    assert_eq!(b.state(), State::HalfOpen, "1 of the 2 required successes");
    probes.pop().unwrap().success();
    assert_eq!(
        b.state(),
        State::Closed,
        "2 of 3 succeeded: the ratio 0.6 is met"
    );

    fail(&b, 1);
    clock.advance(secs(10));
    let mut probes: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
    probes.pop().unwrap().failure();
    assert_eq!(b.state(), State::HalfOpen);
    probes.pop().unwrap().failure();
    assert_eq!(
        b.state(),
        State::Open,
        "2 failures of 3: 2 successes are out of reach"
    );
    probes.pop().unwrap().success(); // a late result of the lost round changes nothing
    assert_eq!(b.state(), State::Open);
}

#[test]
fn a_dropped_or_ignored_probe_frees_its_slot() {
    let (b, clock) = consecutive(1);
    fail(&b, 1);
    clock.advance(secs(10));
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    let p3 = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    drop(p1);
    let p4 = b.try_acquire().expect("the dropped probe's slot");
    p2.ignore();
    let p5 = b.try_acquire().expect("the ignored probe's slot");
    assert!(b.try_acquire().is_err());
    p3.success();
    p4.success();
    assert_eq!(
        b.state(),
        State::Closed,
        "dropped and ignored probes counted as neither"
    );
    drop(p5);
}

#[test]
fn dropping_every_probe_never_leaves_the_breaker_stuck() {
    let (b, clock) = consecutive(1);
    fail(&b, 1);
    clock.advance(secs(10));
    for _ in 0..100 {
        let probes: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
        drop(probes);
    }
    assert_eq!(b.state(), State::HalfOpen);
    succeed(&b, 2);
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn a_late_probe_from_an_old_round_cannot_close_a_new_one() {
    let (b, clock) = consecutive(1); // 3 probes, 2 successes close
    fail(&b, 1);
    clock.advance(secs(10));
    let old = b.try_acquire().unwrap();
    b.try_acquire().unwrap().failure();
    b.try_acquire().unwrap().failure(); // the round is lost: open again
    assert_eq!(b.state(), State::Open);
    clock.advance(secs(20));
    let new = b.try_acquire().unwrap();
    assert_eq!(b.state(), State::HalfOpen, "a new round");
    old.success();
    assert_eq!(
        b.metrics().probes_admitted,
        1,
        "the old probe neither took nor freed a slot"
    );
    new.success();
    assert_eq!(
        b.state(),
        State::HalfOpen,
        "one success in this round: the old one would have made it two and closed it"
    );
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn a_permit_from_before_a_transition_records_nothing() {
    let (b, _clock) = consecutive(2);
    let stale = b.try_acquire().unwrap();
    b.reset();
    fail(&b, 1);
    stale.failure();
    assert_eq!(
        b.state(),
        State::Closed,
        "the stale failure was not the second in a row"
    );
}

#[test]
fn the_open_duration_grows_on_reopening_and_starts_over_on_closing() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(1)
        .open_duration(OpenDuration::exponential(secs(1), secs(5)).multiplier(2.0))
        .half_open_probes(1)
        .half_open_success_ratio(1.0)
        .clock(clock.clone())
        .build()
        .unwrap();
    fail(&b, 1);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let after = rejected(&b).retry_after().unwrap();
        seen.push(after);
        clock.advance(after);
        b.try_acquire().unwrap().failure();
    }
    assert_eq!(seen, [secs(1), secs(2), secs(4), secs(5)]);
    clock.advance(secs(5));
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), State::Closed);
    fail(&b, 1);
    assert_eq!(rejected(&b).retry_after(), Some(secs(1)));
}

#[test]
fn jitter_spreads_open_durations_within_bounds() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let clock = ManualClock::new();
        let b = CircuitBreaker::builder()
            .no_failure_rate()
            .consecutive_failures(1)
            .open_duration(OpenDuration::fixed(secs(10)).jitter(0.2))
            .seed(seed)
            .clock(clock)
            .build()
            .unwrap();
        fail(&b, 1);
        let d = rejected(&b).retry_after().unwrap();
        assert!(
            d >= secs(8) && d <= secs(10),
            "{d:?}: never above the max, at most 20 % below"
        );
        seen.insert(d.as_millis() / 100);
    }
    assert!(
        seen.len() >= 15,
        "durations spread over the range: {seen:?}"
    );
}

#[test]
fn a_hung_round_reopens_after_the_max_wait() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(1)
        .open_duration(secs(10))
        .half_open_probes(1)
        .half_open_max_wait(secs(30))
        .clock(clock.clone())
        .build()
        .unwrap();
    fail(&b, 1);
    clock.advance(secs(10));
    let hung = b.try_acquire().unwrap();
    clock.advance(secs(29));
    assert_eq!(rejected(&b).state(), State::HalfOpen);
    clock.advance(secs(1));
    let r = rejected(&b);
    assert_eq!(
        r.state(),
        State::Open,
        "the round timed out and the breaker re-opened"
    );
    hung.success();
    assert_eq!(b.state(), State::Open);
}

#[test]
fn the_round_timeout_runs_from_when_the_round_filled() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(1)
        .open_duration(secs(10))
        .half_open_probes(2)
        .half_open_success_ratio(1.0)
        .half_open_max_wait(secs(1))
        .clock(clock.clone())
        .build()
        .unwrap();
    fail(&b, 1);
    clock.advance(secs(10));
    b.try_acquire().unwrap().success();
    clock.advance(secs(5)); // the round is 5 s old, but not full
    let late = b.try_acquire().unwrap();
    clock.advance(ms(999));
    assert_eq!(
        rejected(&b).state(),
        State::HalfOpen,
        "full for 999 ms only"
    );
    late.success();
    assert_eq!(b.state(), State::Closed, "the last probe was not cut off");
}

#[test]
fn a_round_that_timed_out_unnoticed_reopened_at_its_deadline() {
    // The round fills at 5 s and times out at 15 s; re-opened then for 5 s, it is ready for
    // probes again at 20 s. Nobody calls until 110 s: that call is a probe of a new round, not
    // rejected for another open duration counted from 110 s.
    let clock = ManualClock::new();
    let (seen, listener) = recorder();
    let b = CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(1)
        .open_duration(secs(5))
        .half_open_probes(1)
        .half_open_max_wait(secs(10))
        .clock(clock.clone())
        .on_transition(listener)
        .build()
        .unwrap();
    fail(&b, 1);
    clock.advance(secs(5));
    let hung = b.try_acquire().unwrap();
    clock.advance(secs(105));
    let next = b.try_acquire();
    assert!(
        next.as_ref().is_ok_and(|p| p.is_probe()),
        "rejected {:?} 90 s after the timed-out round's open period ended",
        next.as_ref().err()
    );
    drop(hung);
    let seen_now = seen.lock().unwrap().clone();
    let seen = seen_now;
    let timed_out = &seen[seen.len() - 2];
    assert_eq!(
        (
            timed_out.to,
            timed_out.reason,
            timed_out.at,
            timed_out.open_for
        ),
        (
            State::Open,
            Reason::ProbesTimedOut,
            Instant::from_nanos(15_000_000_000),
            Some(secs(5))
        ),
        "the round re-opened at its deadline"
    );
    assert_eq!(
        (seen[seen.len() - 1].to, seen[seen.len() - 1].reason),
        (State::HalfOpen, Reason::OpenElapsed)
    );

    // The new round (filled at 110 s) hangs too and times out at 120 s; noticed at 122 s,
    // its open period has 3 s left, not 5.
    clock.advance(secs(12));
    let r = rejected(&b);
    assert_eq!((r.state(), r.retry_after()), (State::Open, Some(secs(3))));
    drop(next);
}

#[test]
fn the_success_ratio_is_counted_in_whole_probes() {
    // 0.28 x 25 = 7 exactly, though 7.000000000000001 in floating point.
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(1)
        .open_duration(secs(1))
        .half_open_probes(25)
        .half_open_success_ratio(0.28)
        .clock(clock.clone())
        .build()
        .unwrap();
    fail(&b, 1);
    clock.advance(secs(1));
    let probes: Vec<_> = (0..7).map(|_| b.try_acquire().unwrap()).collect();
    probes.into_iter().for_each(|p| p.success());
    assert_eq!(b.state(), State::Closed, "7 of 25 is the ratio");
}

/// A half-open breaker after one failure, with `probes` probes and `ratio` to close.
fn half_open_with(probes: u32, ratio: f64) -> CircuitBreaker<ManualClock> {
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(1)
        .open_duration(secs(1))
        .half_open_probes(probes)
        .half_open_success_ratio(ratio)
        .clock(clock.clone())
        .build()
        .unwrap();
    fail(&b, 1);
    clock.advance(secs(1));
    b
}

#[test]
fn the_success_ratio_needs_ceil_of_ratio_times_probes() {
    // (probes, ratio, successes that close). 2/3 was rounded to 0.666667 first, which asked
    // 3 of 3 (and 5 of 6); 0.3333334 was rounded to 0.333333, which asked 1 of 3.
    for (probes, ratio, needed) in [
        (3, 2.0 / 3.0, 2),
        (6, 2.0 / 3.0, 4),
        (3, 0.333_333_4, 2),
        (3, 1.0 / 3.0, 1),
        (25, 0.28, 7),
        (10, 0.3, 3),
        (7, 1.0, 7),
    ] {
        let b = half_open_with(probes, ratio);
        let permits: Vec<_> = (0..probes).map(|_| b.try_acquire().unwrap()).collect();
        let mut permits = permits.into_iter();
        for _ in 0..needed - 1 {
            permits.next().unwrap().success();
        }
        assert_eq!(b.state(), State::HalfOpen, "{ratio} of {probes}: one short");
        permits.next().unwrap().success();
        assert_eq!(
            b.state(),
            State::Closed,
            "{ratio} of {probes}: {needed} close"
        );

        // And it re-opens as soon as that many successes are out of reach, not before.
        let b = half_open_with(probes, ratio);
        let permits: Vec<_> = (0..probes).map(|_| b.try_acquire().unwrap()).collect();
        let mut permits = permits.into_iter();
        for _ in 0..probes - needed {
            permits.next().unwrap().failure();
        }
        assert_eq!(
            b.state(),
            State::HalfOpen,
            "{ratio} of {probes}: still in reach"
        );
        if let Some(permit) = permits.next().filter(|_| needed > 0) {
            permit.failure();
            assert_eq!(b.state(), State::Open, "{ratio} of {probes}: out of reach");
        }
    }
}

#[test]
fn a_call_of_exactly_the_slow_threshold_is_not_slow() {
    for (took, slow) in [(secs(2), false), (secs(2) + Duration::from_nanos(1), true)] {
        let clock = ManualClock::new();
        let b = CircuitBreaker::builder()
            .no_failure_rate()
            .slow_calls(secs(2), 100.0)
            .minimum_calls(1)
            .window(SlidingWindow::count(1))
            .clock(clock.clone())
            .build()
            .unwrap();
        let permit = b.try_acquire().unwrap();
        clock.advance(took);
        permit.success();
        let expected = if slow { State::Open } else { State::Closed };
        assert_eq!(
            b.state(),
            expected,
            "a call of {took:?} against a 2 s threshold"
        );
        assert_eq!(b.metrics().window.slow_calls, u64::from(slow));
    }
}

#[test]
fn a_time_window_bucket_is_at_most_ten_minutes_to_the_nanosecond() {
    let window = |span: Duration, buckets: u32| {
        CircuitBreaker::builder()
            .window(SlidingWindow::time(span).buckets(buckets))
            .build()
            .map(drop)
            .map_err(|e| e.to_string())
    };
    assert_eq!(window(secs(600), 1), Ok(()));
    let wider = window(Duration::from_millis(600_001), 1).unwrap_err();
    assert!(
        wider.contains("window buckets") && wider.contains("[2, "),
        "{wider}"
    );
    assert_eq!(window(Duration::from_millis(600_001), 2), Ok(()));
}

#[test]
fn transitions_carry_a_growing_generation() {
    let (seen, listener) = recorder();
    let clock = ManualClock::new();
    let b = CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(1)
        .open_duration(secs(1))
        .half_open_probes(1)
        .on_transition(listener)
        .clock(clock.clone())
        .build()
        .unwrap();
    fail(&b, 1);
    clock.advance(secs(1));
    b.try_acquire().unwrap().failure();
    b.reset();
    let generations: Vec<u32> = seen.lock().unwrap().iter().map(|t| t.generation).collect();
    assert_eq!(generations, [1, 2, 3, 4]);
}

#[test]
fn manual_states() {
    let (b, clock) = consecutive(1);
    b.force_open();
    let r = rejected(&b);
    assert_eq!((r.state(), r.retry_after()), (State::ForcedOpen, None));
    clock.advance(secs(3600));
    assert_eq!(
        rejected(&b).state(),
        State::ForcedOpen,
        "forced open stays open"
    );

    b.disable();
    fail(&b, 10);
    assert_eq!(b.state(), State::Disabled);
    assert_eq!(
        b.metrics().window.consecutive_failures,
        0,
        "disabled records nothing"
    );

    b.metrics_only();
    fail(&b, 10);
    assert_eq!(b.state(), State::MetricsOnly, "metrics-only never trips");
    assert_eq!(
        b.metrics().window.consecutive_failures,
        10,
        "but it records"
    );

    b.reset();
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.metrics().window.consecutive_failures, 0);
    fail(&b, 1);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn metrics_only_records_the_window() {
    let (b, _clock) = rate_breaker(SlidingWindow::count(10), 2);
    b.metrics_only();
    fail(&b, 3);
    succeed(&b, 1);
    let m = b.metrics();
    assert_eq!(
        (m.state, m.window.calls, m.window.failures),
        (State::MetricsOnly, 4, 3)
    );
    assert_eq!(m.failure_rate, Some(75.0));
}

#[test]
fn every_transition_is_reported_once_with_its_reason_and_counts() {
    let clock = ManualClock::new();
    let (seen, listener) = recorder();
    let b = CircuitBreaker::builder()
        .failure_rate(50.0)
        .minimum_calls(4)
        .window(SlidingWindow::count(4))
        .open_duration(secs(10))
        .half_open_probes(2)
        .half_open_success_ratio(1.0)
        .name("db")
        .on_transition(listener)
        .clock(clock.clone())
        .build()
        .unwrap();
    succeed(&b, 2);
    fail(&b, 2);
    clock.advance(secs(10));
    succeed(&b, 2);
    b.force_open();
    let seen = seen.lock().unwrap();
    let summary: Vec<_> = seen.iter().map(|t| (t.from, t.to, t.reason)).collect();
    assert_eq!(
        summary,
        [
            (State::Closed, State::Open, Reason::FailureRate),
            (State::Open, State::HalfOpen, Reason::OpenElapsed),
            (State::HalfOpen, State::Closed, Reason::ProbesSucceeded),
            (State::Closed, State::ForcedOpen, Reason::Manual),
        ]
    );
    assert_eq!((seen[0].window.calls, seen[0].window.failures), (4, 2));
    assert_eq!(seen[0].open_for, Some(secs(10)));
    assert_eq!(seen[0].at, Instant::ZERO);
    assert_eq!(seen[0].name.as_deref(), Some("db"));
    assert_eq!((seen[2].window.calls, seen[2].window.failures), (2, 0));
    assert_eq!(seen[1].at, Instant::from_nanos(secs(10).as_nanos() as u64));
}

#[test]
fn listeners_run_outside_the_lock_and_may_call_back() {
    let b: Arc<Mutex<Option<Arc<CircuitBreaker<ManualClock>>>>> = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&b);
    let states = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&states);
    let breaker = Arc::new(
        CircuitBreaker::builder()
            .no_failure_rate()
            .consecutive_failures(1)
            .clock(ManualClock::new())
            .on_transition(move |t| {
                let b = slot.lock().unwrap().clone().unwrap();
                // Reading the state and the metrics, and even a transition, from a listener:
                // this deadlocks if listeners run under the transition lock (gobreaker #37).
                sink.lock().unwrap().push((b.state(), b.metrics().state));
                if t.to == State::Open {
                    b.reset();
                }
            })
            .build()
            .unwrap(),
    );
    *b.lock().unwrap() = Some(Arc::clone(&breaker));
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Closed, "the listener reset it");
    assert_eq!(
        *states.lock().unwrap(),
        [(State::Open, State::Open), (State::Closed, State::Closed)]
    );
    b.lock().unwrap().take();
}

#[test]
fn outcome_record_matches_the_shortcuts() {
    let (b, _clock) = consecutive(2);
    b.try_acquire().unwrap().record(Outcome::Failure);
    b.try_acquire().unwrap().record(Outcome::Ignored);
    b.try_acquire().unwrap().record(Outcome::Failure);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn owned_permits_record_and_release_like_borrowed_ones() {
    let clock = ManualClock::new();
    let b = Arc::new(
        CircuitBreaker::builder()
            .no_failure_rate()
            .consecutive_failures(1)
            .open_duration(secs(1))
            .half_open_probes(1)
            .half_open_success_ratio(1.0)
            .clock(clock.clone())
            .build()
            .unwrap(),
    );
    b.try_acquire_owned().unwrap().failure();
    clock.advance(secs(1));
    let probe = b.try_acquire_owned().unwrap();
    assert!(probe.is_probe());
    assert!(b.try_acquire_owned().is_err());
    let moved = std::thread::spawn(move || drop(probe));
    moved.join().unwrap();
    let probe = b.try_acquire_owned().expect("the slot came back");
    assert_eq!(Arc::strong_count(&b), 2);
    probe.success();
    assert_eq!(Arc::strong_count(&b), 1, "recording gives the Arc back");
    assert_eq!(b.state(), State::Closed);
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<CircuitBreaker>();
    send_sync::<CircuitBreaker<ManualClock>>();
    send_sync::<palisade_breaker::Permit<'static>>();
    send_sync::<palisade_breaker::OwnedPermit>();
    send_sync::<Rejected>();
    send_sync::<palisade_breaker::CallError<std::io::Error>>();
    send_sync::<palisade_breaker::KeyedBreakers<String>>();
    send_sync::<palisade_breaker::Metrics>();
    send_sync::<Transition>();
    send_sync::<CircuitBreakerBuilder>();
}

/// Records every event's level, target and message.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(tracing::Level, String, String)>>>);

/// Finds the `message` field of an event.
struct Message<'a>(&'a mut String);

impl tracing::field::Visit for Message<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for Recorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut message = String::new();
        event.record(&mut Message(&mut message));
        let meta = event.metadata();
        self.0
            .lock()
            .unwrap()
            .push((*meta.level(), meta.target().to_string(), message));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Each transition emits one `tracing` event, target `palisade_breaker`: `warn` when the
/// breaker opens (tripped or forced), `info` for every other transition.
#[test]
fn transitions_log_warn_when_opening_and_info_otherwise() {
    let (b, clock) = consecutive(1);
    let recorder = Recorder::default();
    tracing::subscriber::with_default(recorder.clone(), || {
        b.try_acquire().unwrap().failure(); // closed → open
        clock.advance(secs(10));
        for _ in 0..3 {
            b.try_acquire().unwrap().success(); // open → half-open, then → closed
        }
        b.force_open(); // closed → forced open
        b.reset(); // forced open → closed
    });
    let events = recorder.0.lock().unwrap().clone();
    let levels: Vec<_> = events.iter().map(|(level, _, _)| *level).collect();
    use tracing::Level;
    assert_eq!(
        levels,
        [
            Level::WARN,
            Level::INFO,
            Level::INFO,
            Level::WARN,
            Level::INFO
        ],
        "{events:?}"
    );
    for (level, target, message) in &events {
        assert_eq!(target, "palisade_breaker");
        let expected = if *level == Level::WARN {
            "circuit breaker opened"
        } else {
            "circuit breaker state changed"
        };
        assert_eq!(message, expected);
    }
}
