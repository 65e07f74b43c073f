//! The GCRA `RateLimiter` over its public API, driven by a manual or a hand-set clock: quotas
//! and their validation, exact bursts and spacing, the numbers a `Decision` reports, `check_n`,
//! `peek`, `refund`, runtime quota changes, a clock that reads behind the limiter's creation or
//! past its 18 years, and the `Send + Sync` of the public types.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use palisade_core::{Clock, FastClock, Instant, ManualClock};
use palisade_ratelimit::{
    ConfigError, Decision, InsufficientCapacity, KeyedMetrics, KeyedRateLimiter,
    KeyedRateLimiterBuilder, MAX_REPLENISH, MultiGcra, Quota, RateLimited, RateLimiter,
    RateLimiterBuilder, SlidingWindow, WaitError, WhenFull,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn limiter(quota: Quota) -> (RateLimiter<Quota, ManualClock>, ManualClock) {
    let clock = ManualClock::new();
    let limiter = RateLimiter::builder(quota)
        .clock(clock.clone())
        .build()
        .unwrap();
    (limiter, clock)
}

/// The field a `ConfigError` names.
fn field(err: &ConfigError) -> &'static str {
    match err {
        ConfigError::OutOfRange { field, .. } => field,
        other => panic!("unexpected error {other:?}"),
    }
}

/// Checks the error names `name`, says the allowed range, and reads as the conventions ask.
fn assert_config_error(result: Result<impl std::fmt::Debug, ConfigError>, name: &str) {
    let err = result.expect_err("an invalid quota must be refused");
    assert_eq!(field(&err), name, "{err}");
    let ConfigError::OutOfRange { allowed, got, .. } = &err else {
        unreachable!()
    };
    assert!(!allowed.is_empty() && !got.is_empty(), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with(name), "{msg}");
    assert!(msg.contains(allowed.as_str()), "{msg}");
    assert!(!msg.ends_with('.'), "{msg}");
    assert_eq!(msg, msg.to_lowercase(), "{msg}");
}

fn allowed(d: Decision) -> Decision {
    assert!(d.is_allowed(), "expected an admission, got {d:?}");
    d
}

fn refused(d: Decision) -> Decision {
    assert!(!d.is_allowed(), "expected a refusal, got {d:?}");
    assert!(!d.is_keys_full());
    d
}

// ---------------------------------------------------------------------------------------------
// Quotas

#[test]
fn constructors_set_interval_and_burst() {
    let q = Quota::per_second(100);
    assert_eq!((q.interval(), q.burst_size()), (ms(10), 100));
    assert_eq!(q.replenish_all(), Duration::from_secs(1));

    let q = Quota::per_minute(60);
    assert_eq!((q.interval(), q.burst_size()), (Duration::from_secs(1), 60));
    assert_eq!(q.replenish_all(), Duration::from_secs(60));

    let q = Quota::per_hour(7_200);
    assert_eq!((q.interval(), q.burst_size()), (ms(500), 7_200));

    let q = Quota::per_day(24);
    assert_eq!(
        (q.interval(), q.burst_size()),
        (Duration::from_secs(3_600), 24)
    );

    let q = Quota::with_interval(ms(250));
    assert_eq!((q.interval(), q.burst_size()), (ms(250), 1));
    let q = q.burst(8);
    assert_eq!((q.interval(), q.burst_size()), (ms(250), 8));
    assert_eq!(q.replenish_all(), Duration::from_secs(2));

    // Whole nanoseconds, rounded up: the rate is never faster than asked.
    assert_eq!(
        Quota::per_second(3).interval(),
        Duration::from_nanos(333_333_334)
    );
    // burst() changes the burst only, not the rate.
    assert_eq!(
        Quota::per_minute(60).burst(10).interval(),
        Duration::from_secs(1)
    );
    assert_eq!(Quota::per_second(5).validate(), Ok(Quota::per_second(5)));
}

#[test]
fn a_zero_rate_is_an_error_naming_the_rate() {
    for q in [
        Quota::per_second(0),
        Quota::per_minute(0),
        Quota::per_hour(0),
        Quota::per_day(0),
    ] {
        assert_config_error(q.validate(), "rate");
        assert_config_error(RateLimiter::new(q), "rate");
        assert_config_error(KeyedRateLimiter::<u64>::new(q), "rate");
    }
}

#[test]
fn a_zero_burst_is_an_error_naming_the_burst() {
    let q = Quota::per_second(10).burst(0);
    assert_config_error(q.validate(), "burst");
    assert_config_error(RateLimiter::new(q), "burst");
    assert_config_error(Quota::with_interval(ms(1)).burst(0).validate(), "burst");
    let err = q.validate().unwrap_err();
    assert_eq!(err.to_string(), "burst must be at least 1, got 0");
}

#[test]
fn a_zero_interval_is_an_error_naming_the_interval() {
    assert_config_error(Quota::with_interval(Duration::ZERO).validate(), "interval");
    // More than one cell per nanosecond rounds the interval down to zero.
    assert_config_error(Quota::per_second(2_000_000_000).validate(), "interval");
}

#[test]
fn a_replenish_longer_than_the_maximum_is_an_error_naming_the_burst() {
    // 100 days to refill.
    let q = Quota::per_day(1).burst(100);
    assert!(q.replenish_all() > MAX_REPLENISH);
    assert_config_error(q.validate(), "burst");
    assert_config_error(RateLimiter::new(q), "burst");
    let err = q.validate().unwrap_err();
    assert!(err.to_string().contains("got 100"), "{err}");

    // Exactly the maximum is fine; one more cell is not.
    let interval = Duration::from_nanos(1 << 21);
    let burst = (MAX_REPLENISH.as_nanos() / interval.as_nanos()) as u32;
    assert!(
        Quota::with_interval(interval)
            .burst(burst)
            .validate()
            .is_ok()
    );
    assert_config_error(
        Quota::with_interval(interval).burst(burst + 1).validate(),
        "burst",
    );
    // The largest values never panic.
    assert!(
        Quota::with_interval(Duration::MAX)
            .burst(u32::MAX)
            .validate()
            .is_err()
    );
    assert!(
        Quota::with_interval(Duration::from_nanos(1))
            .burst(u32::MAX)
            .validate()
            .is_ok()
    );
}

#[test]
fn an_interval_that_alone_exceeds_the_maximum_replenish_names_the_interval() {
    // With burst 1 nothing can be done about the burst: the interval is what to change. (Today
    // the error names `burst` and asks for a burst below 1.)
    let q = Quota::with_interval(MAX_REPLENISH + Duration::from_nanos(1));
    assert_eq!(q.burst_size(), 1);
    assert_config_error(q.validate(), "interval");
    assert!(Quota::with_interval(MAX_REPLENISH).validate().is_ok());
}

#[test]
fn wait_jitter_above_an_hour_is_an_error() {
    let err = RateLimiter::builder(Quota::per_second(1))
        .wait_jitter(Duration::from_secs(3_601))
        .build()
        .unwrap_err();
    assert_eq!(field(&err), "wait_jitter");
    assert!(
        RateLimiter::builder(Quota::per_second(1))
            .wait_jitter(Duration::from_secs(3_600))
            .build()
            .is_ok()
    );
}

// ---------------------------------------------------------------------------------------------
// Bursts, spacing and decisions

#[test]
fn a_full_burst_then_one_cell_per_interval() {
    let (l, clock) = limiter(Quota::per_second(10));
    for i in 0..10 {
        assert_eq!(allowed(l.check()).remaining(), 9 - i);
    }
    assert_eq!(refused(l.check()).retry_after(), Some(ms(100)));
    for _ in 0..5 {
        clock.advance(ms(100));
        assert_eq!(allowed(l.check()).remaining(), 0);
        assert_eq!(refused(l.check()).retry_after(), Some(ms(100)));
    }
    // One nanosecond early is too early.
    clock.advance(ms(100) - Duration::from_nanos(1));
    assert_eq!(
        refused(l.check()).retry_after(),
        Some(Duration::from_nanos(1))
    );
    clock.advance(Duration::from_nanos(1));
    allowed(l.check());
}

#[test]
fn a_quiet_limiter_refills_to_its_burst_and_no_further() {
    let (l, clock) = limiter(Quota::per_second(10));
    assert_eq!(l.check_n(10).unwrap().remaining(), 0);
    clock.advance(Duration::from_secs(3_600));
    assert_eq!(allowed(l.check_n(10).unwrap()).remaining(), 0);
    refused(l.check());
}

#[test]
fn spacing_is_exact_for_an_interval_in_whole_nanoseconds() {
    let (l, clock) = limiter(Quota::per_second(3).burst(1));
    let interval = Duration::from_nanos(333_333_334);
    allowed(l.check());
    assert_eq!(refused(l.check()).retry_after(), Some(interval));
    for _ in 0..30 {
        clock.advance(interval);
        allowed(l.check());
        refused(l.check());
    }
}

#[test]
fn decision_fields_are_exact() {
    let (l, clock) = limiter(Quota::per_second(10));
    let d = allowed(l.check());
    assert_eq!(d.remaining(), 9);
    assert_eq!(d.limit(), 10);
    assert_eq!(d.reset_after(), ms(100));
    assert_eq!(d.retry_after(), None);

    let d = allowed(l.check_n(9).unwrap());
    assert_eq!(
        (d.remaining(), d.limit(), d.reset_after(), d.retry_after()),
        (0, 10, Duration::from_secs(1), None)
    );

    let d = refused(l.check());
    assert_eq!(
        (d.remaining(), d.limit(), d.reset_after(), d.retry_after()),
        (0, 10, Duration::from_secs(1), Some(ms(100)))
    );

    // 250 ms later two and a half cells are back: taking one leaves one whole cell.
    clock.advance(ms(250));
    let d = allowed(l.peek());
    assert_eq!(
        (d.remaining(), d.limit(), d.reset_after(), d.retry_after()),
        (1, 10, ms(850), None)
    );
    let d = refused(l.check_n(3).unwrap());
    assert_eq!(d.remaining(), 2);
    assert_eq!(d.reset_after(), ms(750));
    assert_eq!(d.retry_after(), Some(ms(50)));
    assert_eq!(d.limit(), 10);
}

#[test]
fn check_n_is_all_or_nothing() {
    let (l, clock) = limiter(Quota::per_second(10));
    assert_eq!(allowed(l.check_n(7).unwrap()).remaining(), 3);
    let d = refused(l.check_n(4).unwrap());
    assert_eq!(d.retry_after(), Some(ms(100)));
    assert_eq!(d.remaining(), 3);
    // The refusal took nothing: the 3 cells are still there, and not one more.
    refused(l.check_n(4).unwrap());
    assert_eq!(allowed(l.check_n(3).unwrap()).remaining(), 0);
    refused(l.check());
    clock.advance(ms(400));
    assert_eq!(refused(l.check_n(5).unwrap()).retry_after(), Some(ms(100)));
    assert_eq!(allowed(l.check_n(4).unwrap()).remaining(), 0);
}

#[test]
fn more_than_the_burst_is_insufficient_capacity_and_takes_nothing() {
    let (l, _clock) = limiter(Quota::per_second(10));
    let err: InsufficientCapacity = l.check_n(11).unwrap_err();
    assert_eq!((err.requested(), err.capacity()), (11, 10));
    assert_eq!(
        err.to_string(),
        "requested 11 cells but the limiter's capacity is 10: split the request"
    );
    assert_eq!(l.peek_n(11).unwrap_err(), err);
    assert!(l.check_n(u32::MAX).is_err());
    // Nothing was taken: the whole burst is still there.
    assert_eq!(allowed(l.check_n(10).unwrap()).remaining(), 0);
    // Even on an empty limiter it is the error, not a refusal.
    assert_eq!(l.check_n(11).unwrap_err(), err);
}

#[test]
fn zero_cells_are_always_allowed_and_take_nothing() {
    let (l, _clock) = limiter(Quota::per_second(2));
    assert_eq!(allowed(l.check_n(0).unwrap()).remaining(), 2);
    l.check_n(2).unwrap();
    let d = allowed(l.check_n(0).unwrap());
    assert_eq!(d.remaining(), 0);
    assert_eq!(d.retry_after(), None);
    allowed(l.peek_n(0).unwrap());
    refused(l.check());
}

#[test]
fn peek_never_consumes() {
    let (l, clock) = limiter(Quota::per_second(4));
    for _ in 0..100 {
        assert_eq!(allowed(l.peek()).remaining(), 3);
        assert_eq!(allowed(l.peek_n(4).unwrap()).remaining(), 0);
    }
    assert_eq!(allowed(l.check_n(4).unwrap()).remaining(), 0);
    for _ in 0..100 {
        assert_eq!(refused(l.peek()).retry_after(), Some(ms(250)));
    }
    clock.advance(ms(250));
    assert_eq!(l.peek(), l.peek());
    allowed(l.peek());
    allowed(l.check());
    refused(l.check());
}

#[test]
fn refund_gives_back_capacity() {
    let (l, clock) = limiter(Quota::per_second(10));
    assert_eq!(allowed(l.check_n(5).unwrap()).remaining(), 5);
    l.refund(3);
    assert_eq!(allowed(l.check()).remaining(), 7);
    // Empty, then refunded: usable at once, without waiting for the interval.
    assert_eq!(allowed(l.check_n(7).unwrap()).remaining(), 0);
    refused(l.check());
    l.refund(2);
    assert_eq!(allowed(l.check_n(2).unwrap()).remaining(), 0);
    refused(l.check());
    clock.advance(ms(100));
    allowed(l.check());
}

#[test]
fn refund_never_raises_capacity_above_full() {
    let (l, clock) = limiter(Quota::per_second(10));
    // Cells never taken give nothing.
    l.refund(5);
    l.refund(u32::MAX);
    assert_eq!(allowed(l.check_n(10).unwrap()).remaining(), 0);
    refused(l.check());

    // Over-refunding a partly used limiter stops at full.
    clock.advance(Duration::from_secs(1));
    l.check_n(2).unwrap();
    l.refund(7);
    assert_eq!(allowed(l.check_n(10).unwrap()).remaining(), 0);
    refused(l.check());

    // A refund after a quiet spell gives nothing extra either.
    clock.advance(Duration::from_secs(5));
    l.refund(10);
    assert_eq!(allowed(l.check_n(10).unwrap()).remaining(), 0);
    refused(l.check());
}

#[test]
fn set_quota_keeps_used_capacity_with_the_new_burst() {
    let (l, clock) = limiter(Quota::per_second(100));
    l.check_n(30).unwrap();
    let q = Quota::per_second(100).burst(50);
    l.set_quota(q).unwrap();
    assert_eq!(l.quota(), q);
    assert_eq!(l.algorithm(), q);
    assert_eq!(allowed(l.peek()).limit(), 50);
    assert_eq!(allowed(l.check_n(20).unwrap()).remaining(), 0);
    assert_eq!(refused(l.check()).retry_after(), Some(ms(10)));
    clock.advance(ms(500));
    assert_eq!(allowed(l.check_n(50).unwrap()).remaining(), 0);
}

#[test]
fn set_quota_switches_the_interval_and_carries_used_cells() {
    let (l, clock) = limiter(Quota::per_second(100));
    l.check_n(30).unwrap();
    // 50 per second: 20 ms per cell, burst 50; 30 used cells stay used.
    l.set_quota(Quota::per_second(50)).unwrap();
    assert_eq!(l.quota(), Quota::per_second(50));
    assert_eq!(allowed(l.peek()).remaining(), 19);
    assert_eq!(allowed(l.check_n(20).unwrap()).remaining(), 0);
    let d = refused(l.check());
    assert_eq!(d.retry_after(), Some(ms(20)));
    assert_eq!(d.reset_after(), Duration::from_secs(1));
    clock.advance(ms(20));
    allowed(l.check());
    refused(l.check());

    // Raising the limit: used cells still count against the bigger burst.
    let (l, _clock) = limiter(Quota::per_second(100));
    l.check_n(30).unwrap();
    l.set_quota(Quota::per_second(100).burst(200)).unwrap();
    assert_eq!(allowed(l.check_n(170).unwrap()).remaining(), 0);
    refused(l.check());
}

#[test]
fn an_idle_limiter_switches_quota_at_full_capacity() {
    let (l, clock) = limiter(Quota::per_second(10));
    l.check_n(10).unwrap();
    clock.advance(Duration::from_secs(1));
    l.set_quota(Quota::per_minute(3)).unwrap();
    assert_eq!(allowed(l.check_n(3).unwrap()).remaining(), 0);
    assert_eq!(
        refused(l.check()).retry_after(),
        Some(Duration::from_secs(20))
    );
}

#[test]
fn an_invalid_quota_change_is_an_error_and_changes_nothing() {
    let (l, _clock) = limiter(Quota::per_second(10));
    l.check_n(4).unwrap();
    assert_config_error(l.set_quota(Quota::per_second(0)), "rate");
    assert_config_error(l.set_quota(Quota::per_second(10).burst(0)), "burst");
    assert_eq!(l.quota(), Quota::per_second(10));
    assert_eq!(allowed(l.check_n(6).unwrap()).remaining(), 0);
    refused(l.check());
}

#[test]
fn many_quota_changes_keep_the_accounting() {
    // More changes than the limiter keeps generations for: the accounting carries through.
    let (l, clock) = limiter(Quota::per_second(100));
    l.check_n(40).unwrap();
    for i in 0..40 {
        let q = if i % 2 == 0 {
            Quota::per_second(100).burst(60)
        } else {
            Quota::per_second(100)
        };
        l.set_quota(q).unwrap();
    }
    assert_eq!(l.quota(), Quota::per_second(100));
    assert_eq!(allowed(l.check_n(60).unwrap()).remaining(), 0);
    refused(l.check());
    clock.advance(ms(10));
    allowed(l.check());
}

#[test]
fn a_limiter_can_start_on_a_clock_that_is_not_at_zero() {
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(86_400 * 365));
    let l = RateLimiter::builder(Quota::per_second(2))
        .clock(clock.clone())
        .build()
        .unwrap();
    assert_eq!(allowed(l.check_n(2).unwrap()).remaining(), 0);
    assert_eq!(refused(l.check()).retry_after(), Some(ms(500)));
    clock.advance(ms(500));
    allowed(l.check());
}

/// A clock set by hand to any reading, earlier ones included: a core whose counter trails the
/// one that created the limiter (which `FastClock`'s contract allows by a few nanoseconds).
#[derive(Clone, Debug, Default)]
struct SetClock(Arc<AtomicU64>);

impl SetClock {
    fn set(&self, nanos: u64) {
        self.0.store(nanos, Ordering::Relaxed);
    }
}

impl Clock for SetClock {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

#[test]
fn a_reading_behind_the_limiters_creation_counts_as_its_creation() {
    let clock = SetClock::default();
    clock.set(1_000_000);
    let l = RateLimiter::builder(Quota::per_second(2))
        .clock(clock.clone())
        .build()
        .unwrap();
    clock.set(999_990);
    assert_eq!(allowed(l.check()).remaining(), 1);
    clock.set(1_000_000);
    assert_eq!(allowed(l.check()).remaining(), 0);
    assert_eq!(refused(l.check()).retry_after(), Some(ms(500)));
}

#[test]
fn a_limiter_stops_its_clock_after_18_years_and_keeps_working() {
    // 2^59 ns is about 18.3 years; 40 years would not fit the state word's 60 bits of TAT.
    let (l, clock) = limiter(Quota::per_second(2));
    assert_eq!(allowed(l.check_n(2).unwrap()).remaining(), 0);
    clock.advance(Duration::from_secs(40 * 365 * 86_400));
    // Long past the 2 cells' replenishment: full again.
    assert_eq!(allowed(l.check_n(2).unwrap()).remaining(), 0);
    let d = refused(l.check());
    assert_eq!(d.retry_after(), Some(ms(500)));
    // Time has stopped: nothing refills, and the state (its quota generation included) is
    // intact for a quota change, which carries the used cells over.
    clock.advance(Duration::from_secs(1));
    refused(l.check());
    l.set_quota(Quota::per_second(2).burst(3)).unwrap();
    assert_eq!(allowed(l.check()).remaining(), 0);
    refused(l.check());
}

#[test]
fn threads_racing_on_one_limiter_take_exactly_the_burst() {
    let clock = ManualClock::new();
    let l = Arc::new(
        RateLimiter::builder(Quota::per_second(100).burst(1_000))
            .clock(clock.clone())
            .build()
            .unwrap(),
    );
    let admitted = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let l = Arc::clone(&l);
            let admitted = Arc::clone(&admitted);
            std::thread::spawn(move || {
                for _ in 0..500 {
                    if l.check().is_allowed() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 1_000);
    clock.advance(ms(10));
    allowed(l.check());
    refused(l.check());
}

#[test]
fn the_default_clock_limiter_works() {
    let l = RateLimiter::new(Quota::per_hour(2)).unwrap();
    allowed(l.check());
    allowed(l.check());
    let d = refused(l.check());
    let retry = d.retry_after().unwrap();
    assert!(retry <= Duration::from_secs(1_800) && retry > Duration::from_secs(1_790));
    let _: &FastClock = l.clock();
    assert!(!format!("{l:?}").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Send + Sync

fn send_sync<T: Send + Sync>() {}

#[test]
fn public_types_are_send_and_sync() {
    send_sync::<RateLimiter>();
    send_sync::<RateLimiter<Quota, ManualClock>>();
    send_sync::<RateLimiter<MultiGcra, ManualClock>>();
    send_sync::<RateLimiter<SlidingWindow>>();
    send_sync::<RateLimiterBuilder<Quota, FastClock>>();
    send_sync::<KeyedRateLimiter<String>>();
    send_sync::<KeyedRateLimiter<String, MultiGcra, ManualClock>>();
    send_sync::<KeyedRateLimiter<u64, SlidingWindow>>();
    send_sync::<KeyedRateLimiterBuilder<String, Quota, FastClock, std::hash::RandomState>>();
    send_sync::<Quota>();
    send_sync::<MultiGcra>();
    send_sync::<SlidingWindow>();
    send_sync::<Decision>();
    send_sync::<ConfigError>();
    send_sync::<InsufficientCapacity>();
    send_sync::<WaitError>();
    send_sync::<RateLimited>();
    send_sync::<KeyedMetrics>();
    send_sync::<WhenFull>();
    // And the errors are 'static errors, so they box into `BoxError`.
    let _: Box<dyn std::error::Error + Send + Sync> =
        Box::new(Quota::per_second(0).validate().unwrap_err());
}

#[test]
fn giving_back_a_reservation_after_later_ones_were_made_never_over_admits() {
    // Burst 1, one cell a second: a is taken at 0 (never used), b reserved for 1 s, c for 2 s.
    let (l, clock) = limiter(Quota::per_second(1));
    let a = l.reserve_n(1, Duration::MAX).unwrap();
    l.reserve_n(1, Duration::MAX).unwrap().commit();
    clock.advance(Duration::from_millis(1_500));
    let c = l.reserve_n(1, Duration::MAX).unwrap();
    assert_eq!(c.wait(), Duration::from_millis(500));
    c.commit();
    // Giving a back now would hand its cell out again at 2 s, beside c's.
    drop(a);
    clock.advance(Duration::from_millis(500));
    refused(l.check());
}

#[test]
fn a_reservation_dropped_after_a_quota_change_gives_back_what_a_refund_would() {
    // The change re-expressed the reservation with the rest of the accounting, so dropping it
    // can no longer be undone exactly: it gives back what a refund gives (documented; nothing
    // here, where the limiter owes more than a burst), never more.
    #[derive(Clone, Copy)]
    enum GiveBack {
        Drop,
        CommitAndRefund,
        Commit,
    }
    let run = |give_back: GiveBack| {
        let (l, clock) = limiter(Quota::per_second(1));
        allowed(l.check());
        let reservation = l.reserve_n(1, Duration::from_secs(10)).unwrap();
        assert_eq!(reservation.wait(), Duration::from_secs(1));
        l.set_quota(Quota::with_interval(Duration::from_secs(2)))
            .unwrap();
        match give_back {
            GiveBack::Drop => drop(reservation),
            GiveBack::CommitAndRefund => {
                reservation.commit();
                l.refund(1);
            }
            GiveBack::Commit => reservation.commit(),
        }
        (0..8)
            .map(|_| {
                clock.advance(ms(500));
                l.peek()
            })
            .collect::<Vec<_>>()
    };
    let dropped = run(GiveBack::Drop);
    assert_eq!(dropped, run(GiveBack::CommitAndRefund));
    assert_eq!(
        dropped,
        run(GiveBack::Commit),
        "a refund gives nothing back here"
    );
}
