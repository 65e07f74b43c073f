//! The async retry loop under tokio's paused clock: exact schedules, stop conditions,
//! classification, hints, budgets, timeouts and cancellation.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_retry::{
    AttemptTimedOut, Backoff, Decision, Jitter, RetryEvent, RetryPolicy, RetryThrottle, TpsBudget,
    retry,
};
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn policy(backoff: impl Into<palisade_retry::BackoffBuilder>, attempts: u32) -> RetryPolicy {
    RetryPolicy::builder()
        .backoff(backoff)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

fn no_jitter(initial: u64) -> palisade_retry::BackoffBuilder {
    Backoff::exponential(ms(initial))
        .jitter(Jitter::None)
        .max_delay(Duration::from_secs(60))
}

/// Records when each attempt started, relative to `start`, and fails every attempt.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Duration>>>);

impl Recorder {
    fn mark(&self, start: Instant) {
        self.0.lock().unwrap().push(start.elapsed());
    }
    fn times(&self) -> Vec<Duration> {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test(start_paused = true)]
async fn exponential_schedule_is_exact() {
    let start = Instant::now();
    let rec = Recorder::default();
    let outcome: Result<(), &str> = retry(|| {
        let rec = rec.clone();
        async move {
            rec.mark(start);
            Err("down")
        }
    })
    .with(policy(no_jitter(100), 4))
    .await;
    assert_eq!(outcome, Err("down"));
    assert_eq!(rec.times(), [0, 100, 300, 700].map(ms));
}

#[tokio::test(start_paused = true)]
async fn succeeds_as_soon_as_an_attempt_does() {
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let outcome: Result<u32, &str> = retry(|| async {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n < 3 { Err("flaky") } else { Ok(n) }
    })
    .with(policy(no_jitter(10), 10))
    .await;
    assert_eq!(outcome, Ok(3));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), ms(30));
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_sleeps_the_same_jittered_schedule() {
    async fn schedule(seed: u64) -> Vec<Duration> {
        let start = Instant::now();
        let rec = Recorder::default();
        let p = RetryPolicy::builder()
            .backoff(Backoff::exponential(ms(100)).jitter(Jitter::Full))
            .max_attempts(6)
            .seed(seed)
            .build()
            .unwrap();
        let _: Result<(), ()> = retry(|| {
            let rec = rec.clone();
            async move {
                rec.mark(start);
                Err(())
            }
        })
        .with(p)
        .await;
        rec.times()
    }
    let a = schedule(7).await;
    assert_eq!(a.len(), 6);
    assert_eq!(a, schedule(7).await);
    assert_ne!(a, schedule(8).await);
}

#[tokio::test(start_paused = true)]
async fn a_final_outcome_is_returned_at_once_and_a_retryable_value_is_retried() {
    // An error the classifier calls final: no retry.
    let calls = AtomicU32::new(0);
    let outcome: Result<u16, &str> = retry(|| async {
        calls.fetch_add(1, Ordering::SeqCst);
        Err("bad request")
    })
    .with(policy(no_jitter(10), 5))
    .when(|o: &Result<u16, &str>| match o {
        Err(e) if *e == "bad request" => Decision::DontRetry,
        _ => Decision::Retry,
    })
    .await;
    assert_eq!(outcome, Err("bad request"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A success value the classifier calls retryable (a 503) is retried, and the last one returned.
    let calls = AtomicU32::new(0);
    let outcome: Result<u16, &str> = retry(|| async {
        calls.fetch_add(1, Ordering::SeqCst);
        Ok(503)
    })
    .with(policy(no_jitter(10), 3))
    .when(|o: &Result<u16, &str>| match o {
        Ok(503) => Decision::Retry,
        _ => Decision::DontRetry,
    })
    .await;
    assert_eq!(outcome, Ok(503));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// When the attempts of an operation that always fails with a `Retry-After` of `hint_secs`
/// start, under `policy`.
async fn attempts_with_hint(policy: RetryPolicy, hint_secs: u64) -> Vec<Duration> {
    let start = Instant::now();
    let rec = Recorder::default();
    let _ = retry(|| {
        let rec = rec.clone();
        async move {
            rec.mark(start);
            Err::<(), u64>(hint_secs)
        }
    })
    .with(policy)
    .when(|o: &Result<(), u64>| match o {
        Err(secs) => Decision::RetryAfter(Duration::from_secs(*secs)),
        Ok(()) => Decision::DontRetry,
    })
    .await;
    rec.times()
}

#[tokio::test(start_paused = true)]
async fn retry_after_overrides_the_backoff_and_is_capped_unless_honored() {
    let capped = RetryPolicy::builder()
        .backoff(Backoff::constant(ms(10)).max_delay(Duration::from_secs(5)))
        .max_attempts(2)
        .build()
        .unwrap();
    let secs = Duration::from_secs;
    assert_eq!(
        attempts_with_hint(capped, 2).await,
        [ms(0), secs(2)],
        "the hint replaces the 10 ms backoff"
    );
    assert_eq!(
        attempts_with_hint(capped, 60).await,
        [ms(0), secs(5)],
        "capped at max_delay"
    );
    let honoring = palisade_retry::RetryPolicyBuilder::from(capped)
        .honor_retry_after_beyond_max_delay(true)
        .build()
        .unwrap();
    assert_eq!(
        attempts_with_hint(honoring, 60).await,
        [ms(0), secs(60)],
        "honored beyond max_delay"
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_cuts_the_last_sleep_and_bounds_the_whole_operation() {
    let p = RetryPolicy::builder()
        .backoff(no_jitter(400))
        .max_attempts(100)
        .max_elapsed(Duration::from_secs(1))
        .build()
        .unwrap();
    let start = Instant::now();
    let rec = Recorder::default();
    let outcome: Result<(), &str> = retry(|| {
        let rec = rec.clone();
        async move {
            rec.mark(start);
            tokio::time::sleep(ms(50)).await; // each attempt takes 50 ms
            Err("down")
        }
    })
    .with(p)
    .await;
    assert_eq!(outcome, Err("down"));
    // 0, +50 run +400 sleep = 450, +50 run = 500, the 800 ms sleep is cut to the 500 ms left.
    assert_eq!(rec.times(), [0, 450, 1000].map(ms));
    // The attempt that starts at the deadline runs to completion (no attempt timeout is set).
    assert_eq!(start.elapsed(), ms(1050));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_mid_sleep_makes_no_further_attempt() {
    let calls = Arc::new(AtomicU32::new(0));
    let fut = retry({
        let calls = calls.clone();
        move || {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("down")
            }
        }
    })
    .with(policy(no_jitter(1000), 5));
    let handle = tokio::spawn(fut);
    tokio::time::sleep(ms(500)).await; // the first attempt failed; the loop sleeps 1 s
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    handle.abort();
    assert!(handle.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "an attempt ran after the future was dropped"
    );
}

/// Counts live attempt futures, so a test can see that a timed-out attempt was dropped.
struct Live(Arc<AtomicU32>);
impl Live {
    fn new(count: &Arc<AtomicU32>) -> Live {
        count.fetch_add(1, Ordering::SeqCst);
        Live(count.clone())
    }
}
impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_attempt_is_cancelled_by_the_attempt_timeout_and_retried() {
    let live = Arc::new(AtomicU32::new(0));
    let calls = AtomicU32::new(0);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let outcome: Result<u32, io::Error> = retry(|| {
        let guard = Live::new(&live);
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let _guard = guard;
            if n < 3 {
                tokio::time::sleep(Duration::from_secs(3600)).await; // hangs
            }
            Ok(n)
        }
    })
    .with(policy(Backoff::constant(ms(100)), 5))
    .attempt_timeout(Duration::from_secs(1))
    .on_retry({
        let seen = seen.clone();
        move |e: &RetryEvent<'_, u32, io::Error>| {
            let kind = e.outcome.as_ref().unwrap_err().kind();
            seen.lock().unwrap().push((e.attempt, kind, e.delay));
        }
    })
    .await;
    assert_eq!(outcome.unwrap(), 3);
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "a cancelled attempt was not dropped"
    );
    assert_eq!(start.elapsed(), ms(2200));
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (1, io::ErrorKind::TimedOut, ms(100)),
            (2, io::ErrorKind::TimedOut, ms(100))
        ]
    );

    // When every attempt times out, the caller gets the timeout as its own error type.
    #[derive(Debug, PartialEq)]
    enum MyError {
        Timeout(Duration),
    }
    impl From<AttemptTimedOut> for MyError {
        fn from(e: AttemptTimedOut) -> MyError {
            MyError::Timeout(e.0)
        }
    }
    let outcome: Result<(), MyError> = retry(|| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    })
    .with(policy(Backoff::constant(ms(0)), 2))
    .attempt_timeout(ms(250))
    .await;
    assert_eq!(outcome, Err(MyError::Timeout(ms(250))));
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_budget_returns_the_last_real_error() {
    // No floor and no ratio: the budget never allows a retry.
    let budget = Arc::new(
        TpsBudget::builder()
            .min_per_sec(0)
            .retry_ratio(0.0)
            .build()
            .unwrap(),
    );
    let calls = AtomicU32::new(0);
    let outcome: Result<(), String> = retry(|| async {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        Err(format!("real error #{n}"))
    })
    .with(policy(no_jitter(10), 5))
    .budget(budget.clone())
    .await;
    assert_eq!(outcome, Err("real error #0".to_string()));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_shared_budget_stops_a_retry_storm_across_tasks() {
    // 20 % of requests may be retried, no floor: 50 callers that always fail get 10 retries.
    let budget: Arc<TpsBudget> = Arc::new(
        TpsBudget::builder()
            .min_per_sec(0)
            .retry_ratio(0.2)
            .build()
            .unwrap(),
    );
    let calls = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (budget, calls) = (budget.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            retry(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("down")
            })
            .with(policy(no_jitter(10), 10))
            .budget(budget)
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Err("down"));
    }
    // 50 first attempts and exactly the 10 retries that 50 deposits of 0.2 earn (without a
    // budget: 500 calls).
    let total = calls.load(Ordering::SeqCst);
    assert_eq!(total, 60);
    assert_eq!(budget.available(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_throttle_stops_retrying_when_most_calls_fail() {
    let throttle = Arc::new(RetryThrottle::new(4.0, 0.5).unwrap());
    let calls = AtomicU32::new(0);
    let outcome: Result<(), &str> = retry(|| async {
        calls.fetch_add(1, Ordering::SeqCst);
        Err("down")
    })
    .with(policy(no_jitter(10), 10))
    .budget(throttle.clone())
    .await;
    assert_eq!(outcome, Err("down"));
    // 4 tokens: the first failure leaves 3, more than half, so it retries; the second leaves 2,
    // only half, so it stops.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(throttle.tokens(), 2.0);
}

#[test]
fn zero_delay_retries_need_no_timer() {
    // A runtime without the time driver: arming a timer would panic.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let outcome: Result<u32, &str> = rt.block_on(
        retry(|| async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n < 3 { Err("again") } else { Ok(n) }
        })
        .with(policy(Backoff::constant(Duration::ZERO), 3)),
    );
    assert_eq!(outcome, Ok(3));
}

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    let fut = retry(|| async { Ok::<_, io::Error>(1) })
        .budget(Arc::new(TpsBudget::builder().build().unwrap()))
        .on_retry(|_: &RetryEvent<'_, i32, io::Error>| {})
        .attempt_timeout(ms(10));
    assert_send_sync(&fut);
    assert_send_sync(&TpsBudget::builder().build().unwrap());
    assert_send_sync(&RetryThrottle::new(1.0, 1.0).unwrap());
    assert_send_sync(&RetryPolicy::default());
    assert_send_sync(&Backoff::aws_standard().delays());
    let budget: Arc<dyn palisade_retry::RetryBudget> =
        Arc::new(RetryThrottle::new(1.0, 1.0).unwrap());
    assert_send_sync(&budget);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_retried_whatever_the_classifier_says() {
    let calls = AtomicU32::new(0);
    let outcome: Result<u32, io::Error> = retry(|| async {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n < 3 {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok(n)
    })
    .with(policy(Backoff::constant(ms(10)), 5))
    // Retries connection resets only: a timeout error would be final if classified.
    .when(|o: &Result<u32, io::Error>| match o {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Decision::Retry,
        _ => Decision::DontRetry,
    })
    .attempt_timeout(ms(100))
    .await;
    assert_eq!(outcome.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_huge_honored_hint_is_capped_at_a_day_and_reported_as_slept() {
    let policy = palisade_retry::RetryPolicyBuilder::from(policy(no_jitter(10), 2))
        .honor_retry_after_beyond_max_delay(true)
        .build()
        .unwrap();
    let delays = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let _: Result<(), ()> = retry(|| async { Err(()) })
        .with(policy)
        .when(|_: &Result<(), ()>| Decision::RetryAfter(Duration::MAX))
        .on_retry({
            let delays = delays.clone();
            move |e: &RetryEvent<'_, (), ()>| delays.lock().unwrap().push(e.delay)
        })
        .await;
    let day = Duration::from_secs(86_400);
    assert_eq!(*delays.lock().unwrap(), [day]);
    assert_eq!(start.elapsed(), day);
}

/// A zero delay takes no timer but yields: the future returns `Pending` (after waking itself)
/// between attempts, so a loop of instant failures never holds the worker.
#[test]
fn a_zero_delay_yields_between_attempts() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let calls = AtomicU32::new(0);
    let fut = retry(|| async {
        calls.fetch_add(1, Ordering::SeqCst);
        Err::<(), _>("again")
    })
    .with(policy(Backoff::constant(Duration::ZERO), 3));
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for attempt in 1..=2 {
        assert!(
            fut.as_mut().poll(&mut cx).is_pending(),
            "no yield after attempt {attempt}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), attempt);
    }
    assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(Err("again")));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
