//! The other algorithms over the public API, on a manual clock: `SlidingWindow` ("N per
//! window", with the sliding estimate and exact retry times) and `MultiGcra` (several quotas
//! checked as one).

use std::sync::{Arc, Barrier, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

use palisade_core::{Clock, Instant, ManualClock};
use palisade_ratelimit::{
    Algorithm, ConfigError, Decision, KeyedRateLimiter, MAX_QUOTAS, MAX_REPLENISH,
    MAX_WINDOW_LIMIT, MultiGcra, Quota, RateLimiter, SlidingWindow,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ns(n: u64) -> Duration {
    Duration::from_nanos(n)
}

fn direct<A: Algorithm>(algorithm: A) -> (RateLimiter<A, ManualClock>, ManualClock) {
    let clock = ManualClock::new();
    let limiter = RateLimiter::builder(algorithm)
        .clock(clock.clone())
        .build()
        .unwrap();
    (limiter, clock)
}

fn field(err: &ConfigError) -> &'static str {
    match err {
        ConfigError::OutOfRange { field, .. } => field,
        other => panic!("unexpected error {other:?}"),
    }
}

fn config_error<T: std::fmt::Debug>(result: Result<T, ConfigError>) -> ConfigError {
    let err = result.expect_err("expected a configuration error");
    let msg = err.to_string();
    assert!(msg.starts_with(field(&err)), "{msg}");
    assert!(!msg.ends_with('.'), "{msg}");
    err
}

fn allowed(d: Decision) -> Decision {
    assert!(d.is_allowed(), "expected an admission, got {d:?}");
    d
}

fn refused(d: Decision) -> Decision {
    assert!(!d.is_allowed(), "expected a refusal, got {d:?}");
    d
}

// ---------------------------------------------------------------------------------------------
// SlidingWindow

#[test]
fn sliding_window_accessors() {
    let w = SlidingWindow::new(10, secs(60));
    assert_eq!((w.limit(), w.window()), (10, secs(60)));
}

#[test]
fn sliding_window_admits_its_limit_and_retry_after_is_exact() {
    let (l, clock) = direct(SlidingWindow::new(10, secs(1)));
    let d = allowed(l.check());
    assert_eq!((d.remaining(), d.limit(), d.retry_after()), (9, 10, None));
    // A count in the current window is forgotten two window boundaries later.
    assert_eq!(d.reset_after(), secs(2));
    for i in 0..9 {
        assert_eq!(allowed(l.check()).remaining(), 8 - i);
    }
    // Full. In the next window at offset e the estimate is 10·(1 s − e)/1 s: one more cell fits
    // once that is at most 9, at e = 100 ms, 1.1 s from now.
    let d = refused(l.check());
    assert_eq!(d.retry_after(), Some(ms(1_100)));
    assert_eq!((d.remaining(), d.limit()), (0, 10));
    clock.advance(ms(1_100) - ns(1));
    assert_eq!(refused(l.check()).retry_after(), Some(ns(1)));
    clock.advance(ns(1));
    assert_eq!(allowed(l.check()).remaining(), 0);
    refused(l.check());
}

#[test]
fn sliding_window_estimate_slides_the_previous_window_out() {
    let (l, clock) = direct(SlidingWindow::new(10, secs(1)));
    l.check_n(10).unwrap();
    // Half-way through the next window half of the previous count still counts.
    clock.advance(ms(1_500));
    let d = allowed(l.peek());
    assert_eq!(d.remaining(), 4);
    let d = allowed(l.check_n(5).unwrap());
    assert_eq!(d.remaining(), 0);
    assert_eq!(d.reset_after(), ms(1_500));
    // curr 5, prev 10 at e = 0.5 s: one more fits once 10·(1 − e) ≤ 4, at e = 0.6 s.
    let d = refused(l.check());
    assert_eq!(d.retry_after(), Some(ms(100)));
    clock.advance(ms(100));
    allowed(l.check());
    refused(l.check());
    // Two windows after the last count, everything has slid out.
    clock.advance(secs(2));
    assert_eq!(allowed(l.check_n(10).unwrap()).remaining(), 0);
}

#[test]
fn sliding_window_retry_after_is_exact_when_the_wait_ends_inside_the_window() {
    let (l, clock) = direct(SlidingWindow::new(4, secs(1)));
    l.check_n(4).unwrap();
    clock.advance(secs(1));
    // prev 4 at e = 0: two more fit once 4·(1 − e) ≤ 2, at e = 0.5 s.
    let d = refused(l.check_n(2).unwrap());
    assert_eq!(d.retry_after(), Some(ms(500)));
    clock.advance(ms(500) - ns(1));
    refused(l.check_n(2).unwrap());
    clock.advance(ns(1));
    allowed(l.check_n(2).unwrap());
}

#[test]
fn sliding_window_check_n_peek_and_refund() {
    let (l, _clock) = direct(SlidingWindow::new(10, secs(1)));
    let err = l.check_n(11).unwrap_err();
    assert_eq!((err.requested(), err.capacity()), (11, 10));
    assert_eq!(l.peek_n(11).unwrap_err(), err);
    assert_eq!(allowed(l.check_n(0).unwrap()).remaining(), 10);
    assert_eq!(allowed(l.check_n(7).unwrap()).remaining(), 3);
    // All or nothing.
    refused(l.check_n(4).unwrap());
    for _ in 0..10 {
        assert_eq!(allowed(l.peek()).remaining(), 2);
    }
    l.refund(5);
    assert_eq!(allowed(l.check_n(8).unwrap()).remaining(), 0);
    refused(l.check());
    // Never above full.
    l.refund(100);
    assert_eq!(allowed(l.check_n(10).unwrap()).remaining(), 0);
    refused(l.check());
}

#[test]
fn sliding_window_limit_changes_at_runtime_keep_the_counts() {
    let (l, clock) = direct(SlidingWindow::new(10, secs(1)));
    l.check_n(6).unwrap();
    l.set_algorithm(SlidingWindow::new(8, secs(1))).unwrap();
    assert_eq!(l.algorithm(), SlidingWindow::new(8, secs(1)));
    assert_eq!(allowed(l.check_n(2).unwrap()).remaining(), 0);
    let d = refused(l.check());
    assert_eq!(d.limit(), 8);
    // The capacity follows the limit.
    let err = l.check_n(9).unwrap_err();
    assert_eq!((err.requested(), err.capacity()), (9, 8));
    // Raising it: the 8 used cells still count.
    l.set_algorithm(SlidingWindow::new(20, secs(1))).unwrap();
    assert_eq!(allowed(l.check_n(12).unwrap()).remaining(), 0);
    refused(l.check());
    clock.advance(secs(2));
    assert_eq!(allowed(l.check_n(20).unwrap()).remaining(), 0);
}

#[test]
fn sliding_window_length_cannot_change_on_a_direct_limiter() {
    let (l, _clock) = direct(SlidingWindow::new(10, secs(1)));
    l.check_n(6).unwrap();
    let err = config_error(l.set_algorithm(SlidingWindow::new(10, secs(2))));
    assert_eq!(field(&err), "window");
    assert!(err.to_string().contains("1s"), "{err}");
    // Unchanged.
    assert_eq!(l.algorithm(), SlidingWindow::new(10, secs(1)));
    assert_eq!(allowed(l.check_n(4).unwrap()).remaining(), 0);
    refused(l.check());
    // An invalid limit is refused too, and changes nothing.
    assert_eq!(
        field(&config_error(
            l.set_algorithm(SlidingWindow::new(0, secs(1)))
        )),
        "limit"
    );
    assert_eq!(l.algorithm(), SlidingWindow::new(10, secs(1)));
}

#[test]
fn sliding_window_validation() {
    let build = |w: SlidingWindow| RateLimiter::builder(w).build();
    assert_eq!(
        field(&config_error(build(SlidingWindow::new(0, secs(1))))),
        "limit"
    );
    assert_eq!(
        field(&config_error(build(SlidingWindow::new(
            MAX_WINDOW_LIMIT + 1,
            secs(1)
        )))),
        "limit"
    );
    assert_eq!(
        field(&config_error(build(SlidingWindow::new(u32::MAX, secs(1))))),
        "limit"
    );
    assert!(build(SlidingWindow::new(MAX_WINDOW_LIMIT, secs(1))).is_ok());
    assert_eq!(
        field(&config_error(build(SlidingWindow::new(10, ns(999))))),
        "window"
    );
    assert_eq!(
        field(&config_error(build(SlidingWindow::new(10, Duration::ZERO)))),
        "window"
    );
    assert_eq!(
        field(&config_error(build(SlidingWindow::new(
            10,
            Duration::from_micros(999)
        )))),
        "window"
    );
    assert!(build(SlidingWindow::new(10, Duration::from_millis(1))).is_ok());
    assert!(build(SlidingWindow::new(10, MAX_REPLENISH)).is_ok());
    assert_eq!(
        field(&config_error(build(SlidingWindow::new(
            10,
            MAX_REPLENISH + ns(1)
        )))),
        "window"
    );
    assert_eq!(
        field(&config_error(build(SlidingWindow::new(10, Duration::MAX)))),
        "window"
    );
    let err =
        config_error(KeyedRateLimiter::<u64, _>::builder(SlidingWindow::new(0, secs(1))).build());
    assert_eq!(field(&err), "limit");
}

#[test]
fn sliding_window_max_limit_counts_exactly() {
    let (l, clock) = direct(SlidingWindow::new(MAX_WINDOW_LIMIT, secs(1)));
    assert_eq!(allowed(l.check_n(MAX_WINDOW_LIMIT).unwrap()).remaining(), 0);
    refused(l.check());
    clock.advance(secs(2));
    assert_eq!(allowed(l.check_n(MAX_WINDOW_LIMIT).unwrap()).remaining(), 0);
}

#[test]
fn a_wrapped_window_index_is_only_ever_stricter_and_for_at_most_two_windows() {
    // The state keeps the window index in 24 bits (documented): a limiter quiet for exactly
    // 2^24 windows sees its old counts again, which refuses, never admits more.
    let (l, clock) = direct(SlidingWindow::new(1, secs(1)));
    allowed(l.check());
    refused(l.check());
    clock.advance(secs(1 << 24));
    refused(l.check());
    clock.advance(secs(2));
    allowed(l.check());
    refused(l.check());
}

/// A new key of a keyed sliding window counts in its own window, also in the second before a
/// multiple of 2^24 windows. Its state named window 0, which the 24-bit index puts up to a
/// second ahead of such a reading: the key looked like one whose state a later reading had
/// stored, and all its cells counted in that later window, so a limit of 2 per 1 ms window
/// held for half a second. (A direct limiter left unused since it was built is the documented
/// idle case: stricter for up to that second.)
#[test]
fn a_new_keys_sliding_window_near_the_index_wrap_counts_in_its_own_window() {
    let window = ms(1);
    let clock = ManualClock::new();
    let keyed = KeyedRateLimiter::<u32, _, _>::builder(SlidingWindow::new(2, window))
        .clock(clock.clone())
        .build()
        .unwrap();
    clock.advance(ms((1 << 24) - 500));
    allowed(keyed.check(&1));
    allowed(keyed.check(&1));
    refused(keyed.check(&1));
    // Two windows later, the two cells have slid out.
    clock.advance(ms(2));
    allowed(keyed.check_n(&1, 2).unwrap());
    refused(keyed.check(&1));
}

/// A manual clock that holds one chosen thread right after it reads the time, until released:
/// the thread's reading is then late, as one is when the thread is preempted between reading
/// the clock and storing its step (or runs on a core whose counter trails).
#[derive(Debug, Clone)]
struct LateClock {
    clock: ManualClock,
    held: Arc<Mutex<Option<ThreadId>>>,
    read: Arc<Barrier>,
    release: Arc<Barrier>,
}

impl LateClock {
    fn new() -> LateClock {
        LateClock {
            clock: ManualClock::new(),
            held: Arc::new(Mutex::new(None)),
            read: Arc::new(Barrier::new(2)),
            release: Arc::new(Barrier::new(2)),
        }
    }

    /// Runs `f` on a thread held after its first clock read; returns once it has read.
    fn run_late<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let held = Arc::clone(&self.held);
        let late = thread::spawn(move || {
            *held.lock().unwrap() = Some(thread::current().id());
            f()
        });
        self.read.wait();
        late
    }

    /// [`run_late`](LateClock::run_late) on a scoped thread, for `f` that borrows.
    fn run_late_scoped<'scope, T: Send + 'scope>(
        &self,
        scope: &'scope thread::Scope<'scope, '_>,
        f: impl FnOnce() -> T + Send + 'scope,
    ) -> thread::ScopedJoinHandle<'scope, T> {
        let held = Arc::clone(&self.held);
        let late = scope.spawn(move || {
            *held.lock().unwrap() = Some(thread::current().id());
            f()
        });
        self.read.wait();
        late
    }

    /// Lets the held thread go on with its (now late) reading.
    fn release(&self) {
        self.release.wait();
    }
}

impl Clock for LateClock {
    fn now(&self) -> Instant {
        let now = self.clock.now();
        let mine = {
            let mut held = self.held.lock().unwrap();
            let mine = *held == Some(thread::current().id());
            if mine {
                *held = None;
            }
            mine
        };
        if mine {
            self.read.wait();
            self.release.wait();
        }
        now
    }
}

#[test]
fn a_late_reading_counts_in_the_newer_window_and_erases_nothing() {
    // A check that read the clock at 900 ms stores its step after the window of [1 s, 2 s) has
    // filled: it counts in that window. Seen as it stood, that window's counts looked two
    // windows old: the late check was admitted against nothing and wrote the old window back
    // over them, and the window admitted 19 of its 10.
    let clock = LateClock::new();
    let limiter = Arc::new(
        RateLimiter::builder(SlidingWindow::new(10, secs(1)))
            .clock(clock.clone())
            .build()
            .unwrap(),
    );
    clock.clock.advance(ms(900));
    let late = clock.run_late({
        let limiter = Arc::clone(&limiter);
        move || limiter.check()
    });
    clock.clock.advance(ms(100));
    let mut admitted = (0..20).filter(|_| limiter.check().is_allowed()).count();
    assert_eq!(admitted, 10);
    clock.release();
    let late = late.join().unwrap();
    assert!(!late.is_allowed(), "the window is full: {late:?}");
    // From the window's start (the late reading moved up to it): at 2.1 s, 10 · 0.9 of the
    // full window still counts, and one more fits.
    assert_eq!(late.retry_after(), Some(ms(1_100)), "{late:?}");
    admitted += (0..20).filter(|_| limiter.check().is_allowed()).count();
    assert_eq!(
        admitted, 10,
        "admitted in the window of [1 s, 2 s), limit 10"
    );
}

#[test]
fn a_late_sweep_keeps_a_key_that_still_owes() {
    // A sweep that read the clock at 900 ms runs after key 7 used the window of [1 s, 2 s):
    // the key still owes, so it stays. Seen as it stood, its counts looked two windows old,
    // the sweep dropped it, and it got a second full window.
    let clock = LateClock::new();
    let limiter = Arc::new(
        KeyedRateLimiter::<u64, _, _, _>::builder(SlidingWindow::new(10, secs(1)))
            .clock(clock.clone())
            .shards(1)
            .build()
            .unwrap(),
    );
    clock.clock.advance(ms(900));
    let sweep = clock.run_late({
        let limiter = Arc::clone(&limiter);
        move || limiter.evict_idle()
    });
    clock.clock.advance(ms(100));
    let mut admitted = (0..20).filter(|_| limiter.check(&7).is_allowed()).count();
    assert_eq!(admitted, 10);
    clock.release();
    assert_eq!(sweep.join().unwrap(), 0, "no key was idle");
    admitted += (0..20).filter(|_| limiter.check(&7).is_allowed()).count();
    assert_eq!(admitted, 10, "key 7 in the window of [1 s, 2 s), limit 10");
    assert_eq!(limiter.len(), 1);
}

#[test]
fn a_late_refund_gives_nothing_back_from_a_newer_window() {
    // A refund that read the clock at 0.9 s, for a cell taken in window 0, runs after a cell
    // was taken in window 2: the refund's cell is not in that window's count, so nothing comes
    // back (moved up to window 2 with its reading, it took that cell off: 2 of 1 admitted).
    let clock = LateClock::new();
    let limiter = Arc::new(
        RateLimiter::builder(SlidingWindow::new(1, secs(1)))
            .clock(clock.clone())
            .build()
            .unwrap(),
    );
    clock.clock.advance(ms(500));
    allowed(limiter.check());
    clock.clock.advance(ms(400));
    let refund = clock.run_late({
        let limiter = Arc::clone(&limiter);
        move || limiter.refund(1)
    });
    clock.clock.advance(ms(1_600));
    allowed(limiter.check());
    clock.release();
    refund.join().unwrap();
    refused(limiter.check());
}

#[test]
fn a_reservation_dropped_at_a_late_reading_gives_nothing_back_from_a_newer_window() {
    // The same with a reservation given back (an undo) at a reading late by two windows.
    let clock = LateClock::new();
    let limiter = RateLimiter::builder(SlidingWindow::new(1, secs(1)))
        .clock(clock.clone())
        .build()
        .unwrap();
    clock.clock.advance(ms(500));
    let reservation = limiter.reserve_n(1, Duration::ZERO).unwrap();
    clock.clock.advance(ms(400));
    thread::scope(|scope| {
        let undo = clock.run_late_scoped(scope, move || drop(reservation));
        clock.clock.advance(ms(1_600));
        allowed(limiter.check());
        clock.release();
        undo.join().unwrap();
    });
    refused(limiter.check());
}

#[test]
fn a_keyed_sliding_window_forgets_its_counts_after_a_quiet_spell() {
    // The shortest window, 1 ms: a key quiet for a while (not a multiple of 2^24 windows)
    // starts over.
    let clock = ManualClock::new();
    let keyed = KeyedRateLimiter::builder(SlidingWindow::new(1, Duration::from_millis(1)))
        .clock(clock.clone())
        .build()
        .unwrap();
    allowed(keyed.check("k"));
    refused(keyed.check("k"));
    clock.advance(Duration::from_millis(3 + (1 << 23)));
    allowed(keyed.check("k"));
}

#[test]
fn a_keyed_sliding_window_may_change_its_window_and_keeps_each_keys_estimate() {
    let clock = ManualClock::new();
    let l = KeyedRateLimiter::builder(SlidingWindow::new(10, secs(1)))
        .clock(clock.clone())
        .build()
        .unwrap();
    l.check_n("a", 6).unwrap();
    l.set_algorithm(SlidingWindow::new(10, secs(2))).unwrap();
    assert_eq!(l.algorithm(), SlidingWindow::new(10, secs(2)));
    assert_eq!(allowed(l.check_n("a", 4).unwrap()).remaining(), 0);
    refused(l.check("a"));
    assert_eq!(allowed(l.check_n("b", 10).unwrap()).remaining(), 0);
}

// ---------------------------------------------------------------------------------------------
// MultiGcra

#[test]
fn ten_per_second_and_twenty_per_minute() {
    let (l, clock) = direct(MultiGcra::new([
        Quota::per_second(10),
        Quota::per_minute(20),
    ]));
    assert_eq!(
        l.algorithm().quotas(),
        &[Quota::per_second(10), Quota::per_minute(20)]
    );
    for i in 0..10 {
        let d = allowed(l.check());
        assert_eq!(d.remaining(), 9 - i);
        assert_eq!(d.limit(), 10);
    }
    // The per-second quota refuses; the per-minute one would admit.
    let d = refused(l.check());
    assert_eq!(d.retry_after(), Some(ms(100)));
    assert_eq!(d.limit(), 10);

    clock.advance(secs(1));
    for _ in 0..10 {
        allowed(l.check());
    }
    // Now both refuse: per-second for 100 ms, per-minute (20 cells used, one every 3 s) for
    // 2 s. The answer is the longer wait.
    let d = refused(l.check());
    assert_eq!(d.retry_after(), Some(secs(2)));
    assert_eq!(d.remaining(), 0);
    clock.advance(secs(2) - ns(1));
    assert_eq!(refused(l.check()).retry_after(), Some(ns(1)));
    clock.advance(ns(1));
    allowed(l.check());
    assert_eq!(refused(l.check()).retry_after(), Some(secs(3)));
}

/// `slow`: burst 10, one cell a second; `fast`: burst 2, one cell every 10 ms. The fast quota
/// refuses early; later the slow one does. Neither refusal may charge the other quota.
fn refusals_take_nothing_from_the_other_quota(slow_first: bool) {
    let slow = Quota::with_interval(secs(1)).burst(10);
    let fast = Quota::with_interval(ms(10)).burst(2);
    let pair = |a: Quota, b: Quota| MultiGcra::new(if slow_first { [a, b] } else { [b, a] });
    let (l, clock) = direct(pair(slow, fast));
    allowed(l.check());
    allowed(l.check());
    // Refused by `fast` (empty); `slow` has 8 cells and would admit.
    assert_eq!(refused(l.check()).retry_after(), Some(ms(10)));
    assert_eq!(refused(l.check_n(2).unwrap()).retry_after(), Some(ms(20)));
    assert_eq!(refused(l.check()).retry_after(), Some(ms(10)));
    // So `slow` still has exactly 8 cells: four rounds of 2, 20 ms apart (fast refills).
    for round in 0..4 {
        clock.advance(ms(20));
        assert!(
            l.check_n(2).unwrap().is_allowed(),
            "round {round}: the slow quota was charged for refused requests"
        );
    }
    clock.advance(ms(20));
    // t = 100 ms: refused by `slow` (10 s of cells used), `fast` is full and would admit.
    for _ in 0..3 {
        assert_eq!(
            refused(l.check_n(2).unwrap()).retry_after(),
            Some(ms(1_900))
        );
    }
    // Swap `slow` for a generous quota (its 10 s of used cells carry over as about 10 ms): what is
    // left is `fast`'s own accounting, which the refusals must not have touched.
    let generous = Quota::with_interval(ms(1)).burst(1_000);
    l.set_algorithm(pair(generous, fast)).unwrap();
    let d = allowed(l.check_n(2).unwrap());
    assert_eq!(d.remaining(), 0);
}

#[test]
fn a_request_refused_by_one_quota_takes_nothing_from_the_other() {
    refusals_take_nothing_from_the_other_quota(true);
    refusals_take_nothing_from_the_other_quota(false);
}

#[test]
fn multi_gcra_check_n_capacity_is_the_smallest_burst() {
    let (l, _clock) = direct(MultiGcra::new([
        Quota::per_minute(100),
        Quota::per_second(10),
    ]));
    let err = l.check_n(11).unwrap_err();
    assert_eq!((err.requested(), err.capacity()), (11, 10));
    assert!(l.peek_n(11).is_err());
    assert_eq!(allowed(l.peek_n(0).unwrap()).limit(), 10);
    assert_eq!(allowed(l.check_n(10).unwrap()).remaining(), 0);
    allowed(l.check_n(0).unwrap());
    // peek changes nothing.
    for _ in 0..10 {
        assert_eq!(refused(l.peek()).retry_after(), Some(ms(100)));
    }
    assert_eq!(refused(l.check()).retry_after(), Some(ms(100)));
}

#[test]
fn multi_gcra_refund_returns_cells_to_every_quota() {
    let (l, _clock) = direct(MultiGcra::new([
        Quota::per_second(10),
        Quota::per_minute(12),
    ]));
    l.check_n(10).unwrap();
    refused(l.check());
    l.refund(4);
    assert_eq!(allowed(l.check_n(2).unwrap()).remaining(), 2);
    // Never above full: refunding more than was taken fills every quota, no further.
    l.refund(100);
    assert_eq!(allowed(l.check_n(10).unwrap()).remaining(), 0);
    refused(l.check());
}

#[test]
fn multi_gcra_changes_keep_each_quotas_accounting() {
    let (l, clock) = direct(MultiGcra::new([
        Quota::per_second(100),
        Quota::per_minute(60),
    ]));
    l.check_n(30).unwrap();
    // The per-second quota halves its burst (30 used → 20 left), the per-minute one doubles
    // (30 used of 120).
    let to = MultiGcra::new([Quota::per_second(100).burst(50), Quota::per_minute(120)]);
    l.set_algorithm(to.clone()).unwrap();
    assert_eq!(l.algorithm(), to);
    assert_eq!(allowed(l.check_n(20).unwrap()).remaining(), 0);
    assert_eq!(refused(l.check()).retry_after(), Some(ms(10)));
    clock.advance(ms(500));
    assert_eq!(allowed(l.check_n(50).unwrap()).remaining(), 0);
}

#[test]
fn changing_the_number_of_quotas_is_an_error() {
    let original = MultiGcra::new([Quota::per_second(10), Quota::per_minute(20)]);
    let (l, _clock) = direct(original.clone());
    l.check_n(5).unwrap();
    for to in [
        MultiGcra::new([Quota::per_second(10)]),
        MultiGcra::new([
            Quota::per_second(10),
            Quota::per_minute(20),
            Quota::per_hour(100),
        ]),
    ] {
        let err = config_error(l.set_algorithm(to));
        assert_eq!(field(&err), "quotas");
        assert!(err.to_string().contains('2'), "{err}");
    }
    assert_eq!(
        field(&config_error(l.set_algorithm(MultiGcra::new([])))),
        "quotas"
    );
    assert_eq!(l.algorithm(), original);
    assert_eq!(allowed(l.check_n(5).unwrap()).remaining(), 0);
    refused(l.check());

    let clock = ManualClock::new();
    let keyed = KeyedRateLimiter::builder(original.clone())
        .clock(clock)
        .build()
        .unwrap();
    keyed.check_n("a", 5).unwrap();
    let err = config_error(keyed.set_algorithm(MultiGcra::new([Quota::per_second(1)])));
    assert_eq!(field(&err), "quotas");
    assert_eq!(keyed.algorithm(), original);
    assert_eq!(allowed(keyed.check_n("a", 5).unwrap()).remaining(), 0);
    refused(keyed.check("a"));
}

#[test]
fn multi_gcra_validation() {
    let build = |m: MultiGcra| RateLimiter::builder(m).build();
    assert_eq!(field(&config_error(build(MultiGcra::new([])))), "quotas");
    let nine = MultiGcra::new(std::iter::repeat_n(Quota::per_second(1), MAX_QUOTAS + 1));
    assert_eq!(field(&config_error(build(nine))), "quotas");
    let eight = MultiGcra::new(std::iter::repeat_n(Quota::per_second(1), MAX_QUOTAS));
    let (l, _clock) = direct(eight);
    allowed(l.check());
    refused(l.check());
}

/// An invalid quota of a `MultiGcra` is named by its index: the field at fault is `quotas` (the
/// argument to `MultiGcra::new`), and the message says which quota and which of its knobs,
/// with the quota's own range and value. Built, keyed, or switched to at runtime, the same.
#[test]
fn an_invalid_quota_of_a_multi_gcra_is_named_by_its_index() {
    let cases = [
        (
            MultiGcra::new([Quota::per_second(1), Quota::per_second(0)]),
            "quotas must be valid: quotas[1].rate must be at least 1 cell per period, got 0",
        ),
        (
            MultiGcra::new([Quota::per_second(1).burst(0), Quota::per_second(1)]),
            "quotas must be valid: quotas[0].burst must be at least 1, got 0",
        ),
        (
            MultiGcra::new([
                Quota::per_second(1),
                Quota::per_minute(1),
                Quota::with_interval(Duration::ZERO).burst(5),
            ]),
            "quotas must be valid: quotas[2].interval must be at least 1ns (at most 1e9 cells \
             per second), got 0ns",
        ),
    ];
    for (multi, message) in cases {
        let quotas = multi.quotas().len();
        let errors = [
            config_error(RateLimiter::builder(multi.clone()).build()),
            config_error(KeyedRateLimiter::<u32, _>::builder(multi.clone()).build()),
            config_error(
                direct(MultiGcra::new(vec![Quota::per_second(1); quotas]))
                    .0
                    .set_algorithm(multi.clone()),
            ),
        ];
        for err in errors {
            assert_eq!(err.field(), "quotas");
            assert_eq!(err.to_string(), message);
        }
    }
    // A lone quota keeps its own field.
    let err = config_error(RateLimiter::new(Quota::per_second(1).burst(0)));
    assert_eq!(err.field(), "burst");
    assert_eq!(err.to_string(), "burst must be at least 1, got 0");
}

#[test]
fn keyed_multi_gcra_limits_each_key_on_every_quota() {
    let clock = ManualClock::new();
    let l = KeyedRateLimiter::builder(MultiGcra::new([Quota::per_second(2), Quota::per_minute(3)]))
        .clock(clock.clone())
        .build()
        .unwrap();
    allowed(l.check("a"));
    allowed(l.check("a"));
    assert_eq!(refused(l.check("a")).retry_after(), Some(ms(500)));
    allowed(l.check("b"));
    clock.advance(ms(500));
    allowed(l.check("a"));
    // Per-minute: 3 used, one cell every 20 s, first back at t = 20 s.
    assert_eq!(refused(l.check("a")).retry_after(), Some(ms(19_500)));
    assert_eq!(allowed(l.check_n("b", 2).unwrap()).remaining(), 0);
}

#[test]
fn a_sliding_window_reservation_given_back_in_a_later_window_gives_nothing() {
    let (l, clock) = direct(SlidingWindow::new(10, secs(1)));
    let taken = l.reserve_n(10, Duration::MAX).unwrap(); // counted in window 0
    clock.advance(Duration::from_millis(1_999));
    allowed(l.check_n(9).unwrap()); // window 1 (the estimate still counts window 0's at 0.1%)
    // Window 0's cells come back in window 1: taking them off window 1's count would let it
    // admit 18.
    drop(taken);
    refused(l.check_n(9).unwrap());
    // Given back in the window it was taken in, a reservation does come back.
    clock.advance(secs(3));
    let taken = l.reserve_n(10, Duration::MAX).unwrap();
    drop(taken);
    allowed(l.check_n(10).unwrap());
}
