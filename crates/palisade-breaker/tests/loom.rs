//! Concurrency models of the breaker's protocols (see docs/testing.md for how they run):
//! half-open admits exactly the permitted probes, each transition fires once, dropped probes
//! never wedge half-open, late probes can't decide a new round, and the lock-free window
//! never reports counts no run of outcomes had.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_breaker::{
    CircuitBreaker, CircuitBreakerBuilder, Reason, SlidingWindow, State, Transition,
};
use palisade_core::ManualClock;
use palisade_core::sync::{assert_explored, model, thread};

/// Counts transitions by kind; a std atomic on purpose (outside the protocol under test).
#[derive(Default)]
struct Events {
    opened: AtomicUsize,
    half_opened: AtomicUsize,
    closed: AtomicUsize,
    windows: std::sync::Mutex<Vec<Transition>>,
}

fn breaker(
    clock: &ManualClock,
    probes: u32,
    ratio: f64,
    events: &Arc<Events>,
) -> Arc<CircuitBreaker<ManualClock>> {
    let events = Arc::clone(events);
    let b: CircuitBreakerBuilder<ManualClock> = CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(1))
        .half_open_probes(probes)
        .half_open_success_ratio(ratio)
        .clock(clock.clone());
    Arc::new(
        b.on_transition(move |t| {
            match t.to {
                State::Open => &events.opened,
                State::HalfOpen => &events.half_opened,
                _ => &events.closed,
            }
            .fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap(),
    )
}

/// Trips `b` and lets its open duration pass: the next call finds it ready for probes.
fn open_and_elapsed(b: &CircuitBreaker<ManualClock>, clock: &ManualClock) {
    b.try_acquire().unwrap().failure();
    clock.advance(Duration::from_secs(1));
}

#[test]
fn half_open_admits_exactly_the_permitted_probes() {
    assert_explored(model(|| {
        let clock = ManualClock::new();
        let events = Arc::new(Events::default());
        let b = breaker(&clock, 1, 1.0, &events);
        open_and_elapsed(&b, &clock);
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let b = Arc::clone(&b);
                thread::spawn(move || b.try_acquire_owned().ok())
            })
            .collect();
        let mine = b.try_acquire_owned().ok();
        let mut probes: Vec<_> = racers
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect();
        probes.extend(mine);
        assert_eq!(
            probes.len(),
            1,
            "one probe permitted, {} admitted",
            probes.len()
        );
        assert_eq!(
            events.half_opened.load(Ordering::SeqCst),
            1,
            "open -> half-open fired once"
        );
        assert_eq!(b.state(), State::HalfOpen);
        probes.pop().unwrap().success();
        assert_eq!(b.state(), State::Closed);
    }));
}

#[test]
fn a_trip_fires_its_event_exactly_once() {
    assert_explored(model(|| {
        let clock = ManualClock::new();
        let events = Arc::new(Events::default());
        let b = breaker(&clock, 1, 1.0, &events);
        let p1 = b.try_acquire_owned().unwrap();
        let p2 = b.try_acquire_owned().unwrap();
        let other = thread::spawn(move || p1.failure());
        p2.failure();
        other.join().unwrap();
        assert_eq!(b.state(), State::Open);
        assert_eq!(
            events.opened.load(Ordering::SeqCst),
            1,
            "two tripping failures, one transition"
        );
    }));
}

#[test]
fn a_dropped_probe_never_leaves_the_breaker_stuck() {
    assert_explored(model(|| {
        let clock = ManualClock::new();
        let events = Arc::new(Events::default());
        let b = breaker(&clock, 1, 1.0, &events);
        open_and_elapsed(&b, &clock);
        let probe = b.try_acquire_owned().unwrap();
        let dropper = thread::spawn(move || drop(probe));
        let racer = {
            let b = Arc::clone(&b);
            // Takes the slot if the drop came first, and gives it back (dropped too).
            thread::spawn(move || b.try_acquire_owned().map(drop).is_ok())
        };
        dropper.join().unwrap();
        racer.join().unwrap();
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.metrics().probes_admitted, 0, "every slot came back");
        b.try_acquire().expect("a probe is admitted").success();
        assert_eq!(b.state(), State::Closed);
    }));
}

#[test]
fn a_late_probe_from_an_old_round_cannot_close_a_new_one() {
    assert_explored(model(|| {
        let clock = ManualClock::new();
        let events = Arc::new(Events::default());
        let b = breaker(&clock, 2, 1.0, &events); // both probes must succeed
        open_and_elapsed(&b, &clock);
        let old = b.try_acquire_owned().unwrap();
        b.try_acquire().unwrap().failure(); // the round is lost
        assert_eq!(b.state(), State::Open);
        clock.advance(Duration::from_secs(2));
        let new = b.try_acquire_owned().unwrap();
        let late = thread::spawn(move || old.success());
        let current = thread::spawn(move || new.success());
        late.join().unwrap();
        current.join().unwrap();
        assert_eq!(
            b.state(),
            State::HalfOpen,
            "one success of this round, two needed"
        );
        assert_eq!(events.closed.load(Ordering::SeqCst), 0);
        assert_eq!(b.metrics().probes_admitted, 1);
    }));
}

#[test]
fn racing_probe_outcomes_decide_the_round_once() {
    assert_explored(model(|| {
        let clock = ManualClock::new();
        let events = Arc::new(Events::default());
        let b = breaker(&clock, 2, 0.5, &events); // one success closes, two failures re-open
        open_and_elapsed(&b, &clock);
        let p1 = b.try_acquire_owned().unwrap();
        let p2 = b.try_acquire_owned().unwrap();
        let t = thread::spawn(move || p1.success());
        p2.failure();
        t.join().unwrap();
        assert_eq!(
            b.state(),
            State::Closed,
            "one success of two is enough, whatever the order"
        );
        assert_eq!(events.closed.load(Ordering::SeqCst), 1);
        assert_eq!(
            events.opened.load(Ordering::SeqCst),
            1,
            "only the initial trip"
        );
    }));
}

#[test]
fn the_window_never_reports_counts_no_run_of_outcomes_had() {
    assert_explored(model(|| {
        // Every call fills a bucket, so each record races a roll of the window start.
        let clock = ManualClock::new();
        let events = Arc::new(Events::default());
        let sink = Arc::clone(&events);
        let b = Arc::new(
            CircuitBreaker::builder()
                .failure_rate(100.0)
                .minimum_calls(2)
                .window(SlidingWindow::count(2).buckets(2))
                .on_transition(move |t| sink.windows.lock().unwrap().push(t.clone()))
                .clock(clock)
                .build()
                .unwrap(),
        );
        b.try_acquire().unwrap().success();
        let failer = {
            let b = Arc::clone(&b);
            thread::spawn(move || b.try_acquire().unwrap().failure())
        };
        let succeeder = {
            let b = Arc::clone(&b);
            thread::spawn(move || b.try_acquire().unwrap().success())
        };
        b.try_acquire().unwrap().failure();
        failer.join().unwrap();
        succeeder.join().unwrap();
        // Two failures and two successes in all, so a 100 % window holds at most the two
        // failures. A start read after the add (or a torn sum of buckets) would show more calls
        // than were made, or count a success as a failure.
        for t in events.windows.lock().unwrap().iter() {
            assert_eq!(t.reason, Reason::FailureRate);
            assert_eq!(
                (t.window.calls, t.window.failures),
                (2, 2),
                "{:?}",
                t.window
            );
        }
        if b.state() == State::Closed {
            let w = b.metrics().window;
            assert!(
                w.calls <= 4 && w.failures <= 2 && w.failures <= w.calls,
                "{w:?}"
            );
        }
    }));
}

#[test]
fn successes_alone_never_trip_however_the_window_rolls() {
    assert_explored(model(|| {
        // A window of one call: each record rolls it, so the start a recorder reads can move
        // twice while it records. Read after the add, it could be newer than the recorder's own
        // count, and the wrapped difference would look like billions of failures.
        let events = Arc::new(Events::default());
        let sink = Arc::clone(&events);
        let b = Arc::new(
            CircuitBreaker::builder()
                .failure_rate(100.0)
                .minimum_calls(1)
                .window(SlidingWindow::count(1))
                .on_transition(move |t| sink.windows.lock().unwrap().push(t.clone()))
                .clock(ManualClock::new())
                .build()
                .unwrap(),
        );
        let others: Vec<_> = (0..2)
            .map(|_| {
                let b = Arc::clone(&b);
                thread::spawn(move || b.try_acquire().unwrap().success())
            })
            .collect();
        b.try_acquire().unwrap().success();
        for t in others {
            t.join().unwrap();
        }
        assert_eq!(
            *events.windows.lock().unwrap(),
            [],
            "no failure was recorded"
        );
        let w = b.metrics().window;
        assert!(w.calls <= 3 && w.failures == 0, "{w:?}");
    }));
}

#[test]
fn callers_racing_the_end_of_the_open_duration_are_all_probes() {
    assert_explored(model(|| {
        // Two slots, two callers at the moment the open duration ends: one moves the breaker to
        // half-open, and both must be admitted, never rejected as "open" with a deadline that
        // belongs to another state.
        let clock = ManualClock::new();
        let events = Arc::new(Events::default());
        let b = breaker(&clock, 2, 1.0, &events);
        open_and_elapsed(&b, &clock);
        let other = {
            let b = Arc::clone(&b);
            thread::spawn(move || {
                b.try_acquire_owned()
                    .map_err(|r| (r.state(), r.retry_after()))
            })
        };
        let mine = b
            .try_acquire_owned()
            .map_err(|r| (r.state(), r.retry_after()));
        let theirs = other.join().unwrap();
        assert!(
            mine.is_ok() && theirs.is_ok(),
            "mine {:?}, theirs {:?}",
            mine.err(),
            theirs.err()
        );
        assert_eq!(events.half_opened.load(Ordering::SeqCst), 1);
    }));
}

#[test]
fn a_caller_from_a_lost_round_cannot_move_the_next_rounds_deadline() {
    assert_explored(model(|| {
        // Two probes, both needed; a full round re-opens after 10 s without a decision. The
        // straggler races for the last slot of round 1 while that round is lost and, at 2 s,
        // round 2 fills. Writing round 1's deadline (read at 1 s: 11 s) or a late one (read at
        // 7 s: 17 s) over round 2's would move its timeout: it must be 12 s, 10 s after it filled.
        let clock = ManualClock::new();
        let events = Arc::new(Events::default());
        let sink = Arc::clone(&events);
        let b = Arc::new(
            CircuitBreaker::builder()
                .no_failure_rate()
                .consecutive_failures(1)
                .open_duration(Duration::from_secs(1))
                .half_open_probes(2)
                .half_open_success_ratio(1.0)
                .half_open_max_wait(Duration::from_secs(10))
                .clock(clock.clone())
                .on_transition(move |t| {
                    if t.to == State::Open {
                        sink.opened.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .build()
                .unwrap(),
        );
        open_and_elapsed(&b, &clock); // 1 s: the next call starts round 1
        let first = b.try_acquire_owned().unwrap();
        let straggler = {
            let b = Arc::clone(&b);
            thread::spawn(move || b.try_acquire_owned().ok())
        };
        first.failure(); // round 1 is lost: open for 1 s
        clock.advance(Duration::from_secs(1));
        // 2 s: round 2, filled by this thread (and the straggler, if it came this late).
        let mut probes = Vec::new();
        while let Ok(p) = b.try_acquire_owned() {
            probes.push(p);
        }
        clock.advance(Duration::from_secs(5)); // the straggler may still be writing
        let held = straggler.join().unwrap();
        assert_eq!(events.opened.load(Ordering::SeqCst), 2, "the trip, round 1");
        clock.advance(Duration::from_millis(4_500)); // round 2 full for 9.5 s
        let r = b.try_acquire().map(drop).unwrap_err();
        assert_eq!(
            (r.state(), b.state()),
            (State::HalfOpen, State::HalfOpen),
            "round 2 timed out before its 10 s"
        );
        clock.advance(Duration::from_millis(500)); // 10 s
        let r = b.try_acquire().map(drop).unwrap_err();
        assert_eq!(r.state(), State::Open, "round 2 timed out at 10 s");
        assert_eq!(events.opened.load(Ordering::SeqCst), 3);
        drop((probes, held));
    }));
}

/// A breaker that trips on one failure, stays open 1 s, and then admits one probe per round, a
/// round re-opening 10 s after it fills.
fn one_probe_round_of_ten_seconds(clock: &ManualClock) -> Arc<CircuitBreaker<ManualClock>> {
    Arc::new(
        CircuitBreaker::builder()
            .no_failure_rate()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(1))
            .half_open_probes(1)
            .half_open_max_wait(Duration::from_secs(10))
            .clock(clock.clone())
            .build()
            .unwrap(),
    )
}

#[test]
fn a_round_refilled_after_a_dropped_probe_still_times_out() {
    assert_explored(model(|| {
        // One probe, a round that re-opens 10 s after it fills. The probe is dropped while
        // another caller takes the freed slot: whoever fills the round last, it times out 10 s
        // later, never stuck without a deadline.
        let clock = ManualClock::new();
        let b = one_probe_round_of_ten_seconds(&clock);
        open_and_elapsed(&b, &clock);
        let probe = b.try_acquire_owned().unwrap();
        let dropper = thread::spawn(move || drop(probe));
        let refiller = {
            let b = Arc::clone(&b);
            thread::spawn(move || b.try_acquire_owned().ok())
        };
        dropper.join().unwrap();
        let held = refiller.join().unwrap();
        let held = held.or_else(|| b.try_acquire_owned().ok());
        assert!(held.is_some(), "the freed slot is taken again");
        assert_eq!(b.metrics().probes_admitted, 1);
        clock.advance(Duration::from_millis(9_999));
        assert_eq!(
            b.try_acquire().map(drop).unwrap_err().state(),
            State::HalfOpen
        );
        clock.advance(Duration::from_millis(1));
        assert_eq!(b.try_acquire().map(drop).unwrap_err().state(), State::Open);
        drop(held);
    }));
}

#[test]
fn a_round_refilled_as_it_times_out_is_not_cut_short() {
    assert_explored(model(|| {
        // One probe, a round that re-opens 10 s after it fills. At its deadline the probe is
        // dropped and another caller refills the round (its deadline now 10 s away) while a
        // third caller checks for the timeout. Either the timeout came first and the refill
        // is refused, or the refill came first and the round runs on: a probe is never held
        // in a round that has already re-opened.
        let clock = ManualClock::new();
        let b = one_probe_round_of_ten_seconds(&clock);
        open_and_elapsed(&b, &clock);
        let probe = b.try_acquire_owned().unwrap();
        clock.advance(Duration::from_secs(10)); // the round's deadline
        let refiller = {
            let b = Arc::clone(&b);
            thread::spawn(move || {
                drop(probe);
                b.try_acquire_owned().ok()
            })
        };
        let mine = b.try_acquire_owned().ok();
        let theirs = refiller.join().unwrap();
        let held = usize::from(mine.is_some()) + usize::from(theirs.is_some());
        assert!(held <= 1, "two probes in a one-probe round");
        if held == 1 {
            assert_eq!(
                b.state(),
                State::HalfOpen,
                "a probe held in a re-opened round"
            );
        }
    }));
}
