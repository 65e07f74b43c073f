//! Waiting for capacity on paused tokio time (`TokioClock` follows it): immediate admission,
//! first-come first-served waiters exactly one interval apart, cancellation that gives the
//! reserved cells back, `until_ready_within`, `until_n_ready`, keyed waiting, sliding-window
//! waiting and jitter.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use palisade_core::TokioClock;
use palisade_ratelimit::{
    Algorithm, Decision, KeyedRateLimiter, MultiGcra, Quota, RateLimiter, SlidingWindow, WaitError,
    WhenFull,
};
use tokio::task::{JoinHandle, yield_now};
use tokio::time::{Instant, sleep, timeout};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn limiter<A: Algorithm>(algorithm: A) -> Arc<RateLimiter<A, TokioClock>> {
    Arc::new(
        RateLimiter::builder(algorithm)
            .clock(TokioClock::new())
            .build()
            .unwrap(),
    )
}

/// Polls `fut` once (a waiter takes its place in line on its first poll).
async fn poll_once<F: Future>(mut fut: Pin<&mut F>) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

/// Spawns `until_ready` waiters in order; each reports its index and completion time.
fn spawn_waiter<A: Algorithm>(
    l: &Arc<RateLimiter<A, TokioClock>>,
    i: usize,
    log: &Arc<Mutex<Vec<(usize, Instant)>>>,
) -> JoinHandle<()> {
    let l = Arc::clone(l);
    let log = Arc::clone(log);
    tokio::spawn(async move {
        l.until_ready().await;
        log.lock().unwrap().push((i, Instant::now()));
    })
}

fn retry(d: Decision) -> Duration {
    d.retry_after().expect("expected a refusal")
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn until_ready_returns_at_once_when_capacity_is_free() {
    let l = limiter(Quota::per_second(3));
    let start = Instant::now();
    for _ in 0..3 {
        let fut = pin!(l.until_ready());
        assert!(poll_once(fut).await.is_ready());
    }
    assert_eq!(Instant::now(), start);
    // The three cells were taken.
    assert_eq!(retry(l.check()), Duration::from_nanos(333_333_334));
    // A full n fits at once too after a refill (three intervals: 1 s and 2 ns).
    sleep(secs(2)).await;
    let start = Instant::now();
    l.until_n_ready(3).await.unwrap();
    l.until_n_ready(0).await.unwrap();
    assert_eq!(Instant::now(), start);
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_order_one_interval_apart() {
    let l = limiter(Quota::with_interval(ms(100)));
    assert!(l.check().is_allowed());
    let t0 = Instant::now();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for i in 0..8 {
        handles.push(spawn_waiter(&l, i, &log));
        yield_now().await;
        // Each waiter holds its place: the next free moment moved by one interval.
        assert_eq!(retry(l.peek()), ms(100) * (i as u32 + 2));
    }
    // A plain check cannot take a cell promised to a waiter.
    sleep(ms(150)).await;
    assert_eq!(retry(l.check()), ms(750));
    for h in handles {
        h.await.unwrap();
    }
    let log = log.lock().unwrap();
    let order: Vec<usize> = log.iter().map(|&(i, _)| i).collect();
    assert_eq!(order, (0..8).collect::<Vec<_>>());
    for &(i, at) in log.iter() {
        assert_eq!(at - t0, ms(100) * (i as u32 + 1), "waiter {i}");
    }
    // After the last waiter, the next cell is one interval later.
    assert_eq!(retry(l.check()), ms(100));
}

#[tokio::test(start_paused = true)]
async fn a_waiter_cancelled_by_timeout_gives_its_cell_back() {
    let l = limiter(Quota::with_interval(secs(1)));
    assert!(l.check().is_allowed());
    assert!(timeout(ms(300), l.until_ready()).await.is_err());
    // The cell it had reserved (at 1 s) is free again: next free moment is 1 s, not 2 s.
    assert_eq!(retry(l.peek()), ms(700));
    sleep(ms(700)).await;
    assert!(l.check().is_allowed());
    assert_eq!(retry(l.check()), secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_waiter_dropped_by_select_gives_its_cell_back() {
    let l = limiter(Quota::per_second(10));
    assert!(l.check_n(10).unwrap().is_allowed());
    tokio::select! {
        _ = l.until_n_ready(5) => panic!("admitted before its cells were free"),
        _ = sleep(ms(100)) => {}
    }
    // One cell back after 100 ms; the waiter's five reserved cells are not taken.
    let d = l.check();
    assert!(d.is_allowed(), "{d:?}");
    assert_eq!(retry(l.check()), ms(100));
}

#[tokio::test(start_paused = true)]
async fn a_waiter_dropped_after_its_first_poll_leaves_the_limiter_as_it_found_it() {
    let l = limiter(Quota::per_second(4));
    l.check_n(3).unwrap();
    sleep(ms(100)).await;
    let before = (l.peek(), l.peek_n(4).unwrap());
    {
        let fut = pin!(l.until_n_ready(4));
        assert!(poll_once(fut).await.is_pending());
        // While it waits, its cells are reserved.
        assert!(!l.peek().is_allowed());
    }
    assert_eq!((l.peek(), l.peek_n(4).unwrap()), before);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_multi_quota_waiter_leaves_every_quota_as_it_found_it() {
    // `slow` is empty; `fast` has half its burst. A waiter for 3 cells is due at 3 s.
    let slow = Quota::with_interval(secs(1)).burst(5);
    let fast = Quota::with_interval(ms(100)).burst(10);
    let l = limiter(MultiGcra::new([slow, fast]));
    l.check_n(5).unwrap();
    let before = l.peek();
    assert_eq!(retry(before), secs(1));
    {
        let fut = pin!(l.until_n_ready(3));
        assert!(poll_once(fut).await.is_pending());
    }
    assert_eq!(l.peek(), before);
    sleep(secs(1)).await;
    assert!(l.check().is_allowed());
}

#[tokio::test(start_paused = true)]
async fn a_multi_quota_waiter_is_admitted_when_every_quota_admits() {
    let l = limiter(MultiGcra::new([Quota::per_second(2), Quota::per_minute(3)]));
    l.check_n(2).unwrap();
    let start = Instant::now();
    l.until_ready().await;
    assert_eq!(Instant::now() - start, ms(500));
    // The per-minute quota: three used at 0 s and 0.5 s, the first cell back at 20 s.
    l.until_ready().await;
    assert_eq!(Instant::now() - start, secs(20));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_waiter_with_others_behind_it_never_admits_above_the_burst() {
    // Burst 1: any two admissions must be at least one interval apart.
    let l = limiter(Quota::with_interval(secs(1)));
    let t0 = Instant::now();
    let admitted = Arc::new(Mutex::new(vec![Duration::ZERO]));
    assert!(l.check().is_allowed());
    let waiter = |l: &Arc<RateLimiter<Quota, TokioClock>>| {
        let l = Arc::clone(l);
        let admitted = Arc::clone(&admitted);
        tokio::spawn(async move {
            l.until_ready().await;
            admitted.lock().unwrap().push(Instant::now() - t0);
        })
    };
    let first = waiter(&l); // due at 1 s
    yield_now().await;
    let second = waiter(&l); // due at 2 s
    yield_now().await;
    sleep(ms(500)).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    // Someone checks every 100 ms for three seconds.
    for _ in 0..30 {
        sleep(ms(100)).await;
        if l.check().is_allowed() {
            admitted.lock().unwrap().push(Instant::now() - t0);
        }
    }
    second.await.unwrap();
    let mut admitted = admitted.lock().unwrap().clone();
    admitted.sort();
    for pair in admitted.windows(2) {
        assert!(
            pair[1] - pair[0] >= secs(1),
            "two cells within one interval with burst 1: {admitted:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn until_ready_within_gives_up_at_once_and_takes_nothing() {
    let l = limiter(Quota::with_interval(secs(1)));
    assert!(l.check().is_allowed());
    let start = Instant::now();
    assert_eq!(
        l.until_ready_within(1, ms(500)).await,
        Err(WaitError::TooLong { wait: secs(1) })
    );
    assert_eq!(Instant::now(), start);
    assert_eq!(retry(l.peek()), secs(1));

    // Its place in line counts earlier waiters.
    let log = Arc::new(Mutex::new(Vec::new()));
    let queued = spawn_waiter(&l, 0, &log);
    yield_now().await;
    assert_eq!(
        l.until_ready_within(1, ms(1_999)).await,
        Err(WaitError::TooLong { wait: secs(2) })
    );
    assert_eq!(Instant::now(), start);
    assert_eq!(retry(l.peek()), secs(2));
    // Exactly the wait is enough.
    l.until_ready_within(1, secs(2)).await.unwrap();
    assert_eq!(Instant::now() - start, secs(2));
    queued.await.unwrap();
    assert_eq!(log.lock().unwrap()[0].1 - start, secs(1));

    // A request larger than the burst is the capacity error, whatever the budget.
    assert!(matches!(
        l.until_ready_within(2, Duration::MAX).await,
        Err(WaitError::InsufficientCapacity(e)) if e.requested() == 2 && e.capacity() == 1
    ));
}

#[tokio::test(start_paused = true)]
async fn until_n_ready_waits_for_n_cells_and_refuses_more_than_the_burst() {
    let l = limiter(Quota::per_second(10).burst(5));
    let start = Instant::now();
    let err = l.until_n_ready(6).await.unwrap_err();
    assert_eq!((err.requested(), err.capacity()), (6, 5));
    assert_eq!(Instant::now(), start);
    // Nothing was taken by the refused request.
    l.until_n_ready(5).await.unwrap();
    assert_eq!(Instant::now(), start);
    l.until_n_ready(3).await.unwrap();
    assert_eq!(Instant::now() - start, ms(300));
    assert_eq!(retry(l.check()), ms(100));
}

#[tokio::test(start_paused = true)]
async fn until_key_ready_waits_per_key() {
    let l = Arc::new(
        KeyedRateLimiter::<String, _, _>::builder(Quota::per_second(2))
            .clock(TokioClock::new())
            .build()
            .unwrap(),
    );
    let start = Instant::now();
    l.check_n("a", 2).unwrap();
    // Another key is not held up.
    l.until_key_ready("b", 2).await.unwrap();
    assert_eq!(Instant::now(), start);
    // Two waiters on "a", in order, one interval apart.
    let log = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let l = Arc::clone(&l);
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                l.until_key_ready("a", 1).await.unwrap();
                log.lock().unwrap().push((i, Instant::now() - start));
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(*log.lock().unwrap(), vec![(0, ms(500)), (1, secs(1))]);

    // Limits and budgets.
    assert!(matches!(
        l.until_key_ready("a", 3).await,
        Err(WaitError::InsufficientCapacity(_))
    ));
    let now = Instant::now();
    assert_eq!(
        l.until_key_ready_within("a", 1, ms(100)).await,
        Err(WaitError::TooLong { wait: ms(500) })
    );
    assert_eq!(Instant::now(), now);
    assert_eq!(retry(l.peek_n("a", 1).unwrap()), ms(500));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_key_waiter_gives_its_cells_back() {
    let l = KeyedRateLimiter::<String, _, _>::builder(Quota::per_second(2))
        .clock(TokioClock::new())
        .build()
        .unwrap();
    l.check_n("a", 2).unwrap();
    let before = l.peek_n("a", 1).unwrap();
    assert!(timeout(ms(200), l.until_key_ready("a", 2)).await.is_err());
    assert_eq!(retry(l.peek_n("a", 1).unwrap()), retry(before) - ms(200));
    sleep(ms(300)).await;
    assert!(l.check("a").is_allowed());
}

#[tokio::test(start_paused = true)]
async fn a_full_key_table_refuses_a_new_keys_waiter_at_once() {
    let l = KeyedRateLimiter::<String, _, _>::builder(Quota::per_second(1))
        .max_keys(1)
        .when_full(WhenFull::RejectNewKeys)
        .clock(TokioClock::new())
        .build()
        .unwrap();
    l.check("a");
    let start = Instant::now();
    // The error says when a place may free up: "a" is replenished, so sweepable, in 1 s.
    let full = Err(WaitError::KeysFull {
        retry_after: secs(1),
    });
    assert_eq!(l.until_key_ready("b", 1).await, full);
    assert_eq!(l.until_key_ready_within("b", 1, secs(60)).await, full);
    assert_eq!(Instant::now(), start);
    // The existing key waits as usual.
    l.until_key_ready("a", 1).await.unwrap();
    assert_eq!(Instant::now() - start, secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_sliding_window_waiter_gets_in_at_the_predicted_moment() {
    let l = limiter(SlidingWindow::new(10, secs(1)));
    l.check_n(10).unwrap();
    let predicted = retry(l.check());
    assert_eq!(predicted, ms(1_100));
    let start = Instant::now();
    assert_eq!(
        l.until_ready_within(1, ms(1_099)).await,
        Err(WaitError::TooLong { wait: predicted })
    );
    assert_eq!(Instant::now(), start);
    l.until_ready().await;
    assert_eq!(Instant::now() - start, predicted);
    // It took the cell that came free.
    assert!(!l.check().is_allowed());
    // n > limit is the capacity error.
    assert!(l.until_n_ready(11).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn jitter_only_delays_waiters_past_their_slot() {
    let jitter = ms(300);
    let l = Arc::new(
        RateLimiter::builder(Quota::with_interval(secs(1)))
            .wait_jitter(jitter)
            .clock(TokioClock::new())
            .build()
            .unwrap(),
    );
    let t0 = Instant::now();
    // No wait, no jitter.
    l.until_ready().await;
    assert_eq!(Instant::now(), t0);
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for i in 0..10 {
        handles.push(spawn_waiter(&l, i, &log));
        yield_now().await;
    }
    for h in handles {
        h.await.unwrap();
    }
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 10);
    let mut jittered = 0;
    for &(i, at) in log.iter() {
        let slot = secs(i as u64 + 1);
        let waited = at - t0;
        assert!(
            waited >= slot && waited <= slot + jitter,
            "waiter {i} admitted at {waited:?}, slot {slot:?}"
        );
        jittered += usize::from(waited > slot);
    }
    assert!(jittered > 0, "no waiter was jittered");
}

#[tokio::test(start_paused = true)]
async fn jitter_also_spreads_sliding_window_waiters() {
    // `wait_jitter` is documented for every waiter that had to wait; a sliding window's waiters
    // are the ones released together at one predicted moment.
    let jitter = ms(300);
    let mut late = 0;
    for _ in 0..10 {
        let l = RateLimiter::builder(SlidingWindow::new(10, secs(1)))
            .wait_jitter(jitter)
            .clock(TokioClock::new())
            .build()
            .unwrap();
        l.check_n(10).unwrap();
        let start = Instant::now();
        l.until_ready().await;
        let waited = Instant::now() - start;
        assert!(
            waited >= ms(1_100) && waited <= ms(1_100) + jitter,
            "{waited:?}"
        );
        late += usize::from(waited > ms(1_100));
    }
    assert!(late > 0, "no sliding-window waiter was jittered");
}

#[tokio::test(start_paused = true)]
async fn waiting_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let l = limiter(Quota::per_second(1));
    let keyed = KeyedRateLimiter::<String, _, _>::builder(Quota::per_second(1))
        .clock(TokioClock::new())
        .build()
        .unwrap();
    let multi = limiter(MultiGcra::new([Quota::per_second(1)]));
    let window = limiter(SlidingWindow::new(1, secs(1)));
    send(&l.until_ready());
    send(&l.until_n_ready(1));
    send(&l.until_ready_within(1, secs(1)));
    send(&keyed.until_key_ready("a", 1));
    send(&keyed.until_key_ready_within("a", 1, secs(1)));
    send(&multi.until_ready());
    send(&window.until_ready());
}
