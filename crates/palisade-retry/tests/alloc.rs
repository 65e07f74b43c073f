//! The success path allocates nothing (counted by a thread-local counting allocator, which this
//! test binary alone installs); an attempt timeout's timer, started only when an attempt
//! returns `Pending`, allocates the schedule state once per operation.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use palisade_retry::{AttemptTimedOut, RetryBudget, RetryPolicy, TpsBudget, retry};

fn allocations(f: impl FnOnce()) -> u64 {
    // A thread's first parking_lot lock allocates its list of held locks when parking_lot's
    // `deadlock_detection` is on (palisade-lock's `deadlock-detection` feature turns it on in
    // `--all-features` builds): take one before counting, so only `f`'s own allocations count.
    drop(palisade_core::sync::Mutex::new(()).lock());
    allocation_counter::measure(f).count_total
}

/// Runs `f` inside a current-thread runtime with timers, polled by hand with a no-op waker.
fn in_runtime(f: impl FnOnce(&mut Context<'_>)) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    f(&mut Context::from_waker(Waker::noop()));
}

#[derive(Debug)]
struct MyError;

impl From<AttemptTimedOut> for MyError {
    fn from(_: AttemptTimedOut) -> MyError {
        MyError
    }
}

/// An attempt that returns `Pending` `pendings` times, then succeeds.
fn pending_then_ok(pendings: u32) -> impl Future<Output = Result<u32, MyError>> {
    let mut left = pendings;
    std::future::poll_fn(move |_| {
        if left == 0 {
            Poll::Ready(Ok(1))
        } else {
            left -= 1;
            Poll::Pending
        }
    })
}

#[test]
fn the_counter_sees_allocations() {
    assert_eq!(
        allocations(|| drop(std::hint::black_box(Box::new(7u64)))),
        1
    );
}

/// A first attempt that is ready at once allocates nothing, whatever is configured: a policy by
/// reference with a deadline, a shared budget, an attempt timeout.
#[test]
fn an_immediate_success_allocates_nothing() {
    in_runtime(|cx| {
        let policy = RetryPolicy::builder()
            .max_elapsed(Duration::from_secs(5))
            .build()
            .unwrap();
        let budget: Arc<dyn RetryBudget> = Arc::new(TpsBudget::builder().build().unwrap());
        budget.deposit(); // the clock's one-time calibration, outside the count
        let n = allocations(|| {
            let fut = pin!(retry(|| async { Ok::<_, MyError>(1) }));
            assert!(matches!(fut.poll(cx), Poll::Ready(Ok(1))));
            let fut = pin!(
                retry(|| async { Ok::<_, MyError>(1) })
                    .with(&policy)
                    .budget(Arc::clone(&budget))
                    .attempt_timeout(Duration::from_secs(1))
            );
            assert!(matches!(fut.poll(cx), Poll::Ready(Ok(1))));
        });
        assert_eq!(n, 0, "an immediate success allocated");
    });
}

/// Without an attempt timeout, a success that was pending first allocates nothing either. With
/// one, its timer starts at the attempt's first `Pending` and allocates the schedule state
/// once: more `Pending`s don't allocate again.
#[test]
fn an_attempt_timeout_allocates_once_when_the_attempt_is_pending() {
    in_runtime(|cx| {
        let with_timeout = |pendings: u32, cx: &mut Context<'_>| {
            allocations(|| {
                let op = move || pending_then_ok(pendings);
                let mut fut = pin!(retry(op).attempt_timeout(Duration::from_secs(1)));
                for _ in 0..pendings {
                    assert!(fut.as_mut().poll(cx).is_pending());
                }
                assert!(matches!(fut.as_mut().poll(cx), Poll::Ready(Ok(1))));
            })
        };
        let without = allocations(|| {
            let mut fut = pin!(retry(|| pending_then_ok(3)));
            for _ in 0..3 {
                assert!(fut.as_mut().poll(cx).is_pending());
            }
            assert!(matches!(fut.as_mut().poll(cx), Poll::Ready(Ok(1))));
        });
        assert_eq!(without, 0, "no attempt timeout: nothing allocated");
        let once = with_timeout(1, cx);
        assert!(
            once > 0,
            "the attempt's timer is the schedule state's first use"
        );
        assert_eq!(
            with_timeout(5, cx),
            once,
            "the timer is allocated once per operation"
        );
        assert_eq!(with_timeout(0, cx), 0, "ready at once: no timer");
    });
}

/// The tower service's success path: readiness, the call, the response.
#[cfg(feature = "tower")]
#[test]
fn the_tower_success_path_allocates_nothing() {
    use palisade_retry::RetryLayer;
    use tower_layer::Layer;
    use tower_service::Service;

    #[derive(Clone)]
    struct Echo;
    impl Service<u32> for Echo {
        type Response = u32;
        type Error = MyError;
        type Future = std::future::Ready<Result<u32, MyError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), MyError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, request: u32) -> Self::Future {
            std::future::ready(Ok(request))
        }
    }

    in_runtime(|cx| {
        let mut svc = RetryLayer::new(RetryPolicy::default()).layer(Echo);
        let n = allocations(|| {
            assert!(svc.poll_ready(cx).is_ready());
            let fut = pin!(svc.call(7));
            assert!(matches!(fut.poll(cx), Poll::Ready(Ok(7))));
        });
        assert_eq!(n, 0, "the tower success path allocated");
    });
}
