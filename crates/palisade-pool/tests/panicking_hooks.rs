//! The README's guarantee that a panicking `validate`, `recycle` or `is_broken` frees its
//! connection's slot, and the panic goes on to its caller, on every path that runs a hook: at
//! checkout (`is_broken`, `recycle`, `validate`) and in `maintain()`'s keepalive pass (`recycle`
//! of a used connection). (`is_broken` on return is in `regressions.rs`, bug 20.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade_core::TokioClock;
use palisade_pool::{CheckoutTest, Discard, Manager, Pool};

const S: Duration = Duration::from_secs(1);

/// A connector whose hooks panic while their flag is set.
#[derive(Debug, Default)]
struct Panicky {
    is_broken: AtomicBool,
    validate: AtomicBool,
    recycle: AtomicBool,
}

impl Manager for Panicky {
    type Connection = ();
    type Error = std::io::Error;
    async fn connect(&self) -> std::io::Result<()> {
        Ok(())
    }
    async fn validate(&self, _: &mut ()) -> std::io::Result<()> {
        tokio::task::yield_now().await;
        assert!(!self.validate.load(Ordering::SeqCst), "validate has a bug");
        Ok(())
    }
    async fn recycle(&self, _: &mut ()) -> std::io::Result<()> {
        tokio::task::yield_now().await;
        assert!(!self.recycle.load(Ordering::SeqCst), "recycle has a bug");
        Ok(())
    }
    fn is_broken(&self, _: &mut ()) -> bool {
        assert!(
            !self.is_broken.load(Ordering::SeqCst),
            "is_broken has a bug"
        );
        false
    }
}

/// A pool of at most one connection, on tokio's (paused) clock.
fn pool() -> Pool<Panicky, TokioClock> {
    Pool::builder(Panicky::default())
        .clock(TokioClock::new())
        .max_size(1)
        .acquire_timeout(S)
        .build()
        .unwrap()
}

/// The panic discarded the connection as `Cancelled` and freed its slot: a `get()` connects
/// again, and `close()` finds nothing left out.
async fn slot_freed(pool: &Pool<Panicky, TokioClock>) {
    let m = pool.metrics();
    assert_eq!((m.size, m.in_use, m.idle), (0, 0, 0), "{m}");
    assert_eq!(m.discarded(Discard::Cancelled), 1, "{m}");
    drop(pool.get().await.expect("the slot is free"));
    pool.close(S).await.expect("nothing left out");
}

/// A `get()` on its own task, whose hook behind `flag` panics: the task panics.
async fn get_panics(pool: &Pool<Panicky, TokioClock>, flag: &AtomicBool) {
    flag.store(true, Ordering::SeqCst);
    let p = pool.clone();
    let got = tokio::spawn(async move { p.get().await.map(drop) }).await;
    assert!(got.unwrap_err().is_panic());
    flag.store(false, Ordering::SeqCst);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_is_broken_at_checkout_frees_the_slot() {
    let pool = pool();
    drop(pool.get().await.unwrap());
    get_panics(&pool, &pool.manager().is_broken).await;
    slot_freed(&pool).await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_recycle_at_checkout_frees_the_slot() {
    let pool = pool();
    drop(pool.get().await.unwrap());
    get_panics(&pool, &pool.manager().recycle).await;
    slot_freed(&pool).await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_validate_at_checkout_frees_the_slot() {
    let pool = Pool::builder(Panicky::default())
        .clock(TokioClock::new())
        .max_size(1)
        .acquire_timeout(S)
        .test_on_checkout(CheckoutTest::Always)
        .build()
        .unwrap();
    get_panics(&pool, &pool.manager().validate).await;
    slot_freed(&pool).await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_keepalive_check_frees_the_slot() {
    let pool = Pool::builder(Panicky::default())
        .clock(TokioClock::new())
        .max_size(1)
        .acquire_timeout(S)
        .keepalive(Some(S))
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    tokio::time::sleep(2 * S).await;
    pool.manager().recycle.store(true, Ordering::SeqCst);
    let p = pool.clone();
    assert!(
        tokio::spawn(async move { p.maintain().await })
            .await
            .unwrap_err()
            .is_panic()
    );
    pool.manager().recycle.store(false, Ordering::SeqCst);
    let m = pool.metrics();
    assert_eq!(
        (m.size, m.in_use, m.idle, m.discarded(Discard::Cancelled)),
        (0, 0, 0, 1),
        "{m}"
    );
    drop(pool.get().await.expect("the slot is free"));
    pool.close(S).await.expect("nothing left out");
}
