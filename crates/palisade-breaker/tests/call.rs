//! `call`: outcomes, rejection without polling, cancel-safety, and timing under tokio's paused
//! clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade_breaker::{CallError, CircuitBreaker, Outcome, State};
use palisade_core::TokioClock;
use tokio::time::sleep;

fn breaker() -> CircuitBreaker<TokioClock> {
    CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(2)
        .open_duration(Duration::from_secs(30))
        .half_open_probes(1)
        .half_open_success_ratio(1.0)
        .clock(TokioClock::new())
        .build()
        .unwrap()
}

async fn failing() -> Result<(), &'static str> {
    sleep(Duration::from_millis(10)).await;
    Err("boom")
}

#[tokio::test(start_paused = true)]
async fn call_records_runs_and_rejects_without_polling() {
    let b = breaker();
    assert_eq!(b.call(async { Ok::<_, &str>(5) }).await, Ok(5));
    assert_eq!(b.call(failing()).await, Err(CallError::Inner("boom")));
    assert_eq!(b.call(failing()).await, Err(CallError::Inner("boom")));
    assert_eq!(b.state(), State::Open);

    let polled = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&polled);
    let r = b
        .call(async move {
            flag.store(true, Ordering::SeqCst);
            Ok::<_, &str>(())
        })
        .await;
    let rejected = r.unwrap_err().rejected().unwrap();
    assert_eq!(rejected.retry_after(), Some(Duration::from_secs(30)));
    assert!(
        !polled.load(Ordering::SeqCst),
        "a rejected call's future is never polled"
    );
}

#[tokio::test(start_paused = true)]
async fn the_open_duration_runs_on_tokio_time() {
    let b = breaker();
    let _ = b.call(failing()).await;
    let _ = b.call(failing()).await;
    sleep(Duration::from_secs(29)).await;
    let r = b
        .call(async { Ok::<_, ()>(()) })
        .await
        .unwrap_err()
        .rejected()
        .unwrap();
    assert_eq!(r.retry_after(), Some(Duration::from_millis(1000)));
    sleep(r.retry_after().unwrap()).await;
    assert_eq!(b.call(async { Ok::<_, ()>(7) }).await, Ok(7));
    assert_eq!(b.state(), State::Closed, "the one probe succeeded");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_frees_its_slot() {
    let b = Arc::new(breaker());
    let _ = b.call(failing()).await;
    let _ = b.call(failing()).await;
    sleep(Duration::from_secs(30)).await;

    // The probe hangs; the caller gives up after 1 s (the future is dropped mid-await).
    let hung = tokio::time::timeout(
        Duration::from_secs(1),
        b.call(async {
            sleep(Duration::from_secs(3600)).await;
            Ok::<_, ()>(())
        }),
    )
    .await;
    assert!(hung.is_err(), "timed out");
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.metrics().probes_admitted, 0, "the slot was freed");

    // An aborted task frees its slot too.
    let task = {
        let b = Arc::clone(&b);
        tokio::spawn(async move {
            b.call(async {
                sleep(Duration::from_secs(3600)).await;
                Ok::<_, ()>(())
            })
            .await
        })
    };
    tokio::task::yield_now().await;
    assert_eq!(b.metrics().probes_admitted, 1);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(b.metrics().probes_admitted, 0);

    assert_eq!(b.call(async { Ok::<_, ()>(()) }).await, Ok(()));
    assert_eq!(b.state(), State::Closed, "the next probe decided the round");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_probe_frees_its_slot() {
    let b = Arc::new(breaker());
    let _ = b.call(failing()).await;
    let _ = b.call(failing()).await;
    sleep(Duration::from_secs(30)).await;
    let task = {
        let b = Arc::clone(&b);
        tokio::spawn(async move {
            b.call(async {
                sleep(Duration::from_millis(1)).await;
                if true {
                    panic!("the probe's handler panicked");
                }
                Ok::<_, ()>(())
            })
            .await
        })
    };
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(b.metrics().probes_admitted, 0);
    assert_eq!(b.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn call_with_classifies_responses() {
    let b = breaker();
    let classify = |r: &Result<u16, std::io::Error>| match r {
        Ok(status) if *status >= 500 => Outcome::Failure,
        Ok(status) if *status >= 400 => Outcome::Ignored,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    };
    assert_eq!(b.call_with(classify, async { Ok(503) }).await.unwrap(), 503);
    assert_eq!(b.call_with(classify, async { Ok(404) }).await.unwrap(), 404);
    assert_eq!(
        b.state(),
        State::Closed,
        "the 404 was ignored, not a success"
    );
    assert_eq!(b.call_with(classify, async { Ok(502) }).await.unwrap(), 502);
    assert_eq!(b.state(), State::Open, "two 5xx responses in a row");
}
