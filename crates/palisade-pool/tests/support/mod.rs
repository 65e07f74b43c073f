//! A scriptable in-memory backend for the pool's tests: counts connects, validations and
//! recycles, fails or hangs on demand, and counts live connections (a connection's `Drop`
//! decrements), so a test can prove nothing leaked.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::time::Duration;

use palisade_core::TokioClock;
use palisade_pool::{Manager, Pool, PoolBuilder};

#[derive(Debug, Default)]
pub struct Inner {
    pub next_id: AtomicUsize,
    pub connects: AtomicUsize,
    pub attempts: AtomicUsize,
    pub live: AtomicIsize,
    pub down: AtomicBool,
    pub hang_connect: AtomicBool,
    pub connect_delay_ms: AtomicUsize,
    pub validate_fails: AtomicBool,
    pub validate_hangs: AtomicBool,
    pub validations: AtomicUsize,
    pub recycles: AtomicUsize,
    pub recycle_fails: AtomicBool,
    pub broken: parking_lot::Mutex<HashSet<usize>>,
    pub attempt_times: parking_lot::Mutex<Vec<tokio::time::Instant>>,
}

/// The backend; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Backend(pub Arc<Inner>);

/// One connection, numbered in connect order from 0.
#[derive(Debug)]
pub struct Conn {
    pub id: usize,
    backend: Arc<Inner>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.backend.live.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    #[error("connection refused")]
    Refused,
    #[error("validation failed")]
    Invalid,
}

impl Backend {
    pub fn live(&self) -> isize {
        self.0.live.load(Ordering::SeqCst)
    }
    pub fn connects(&self) -> usize {
        self.0.connects.load(Ordering::SeqCst)
    }
    pub fn attempts(&self) -> usize {
        self.0.attempts.load(Ordering::SeqCst)
    }
    pub fn validations(&self) -> usize {
        self.0.validations.load(Ordering::SeqCst)
    }
    pub fn recycles(&self) -> usize {
        self.0.recycles.load(Ordering::SeqCst)
    }
    pub fn set(&self, flag: &AtomicBool, on: bool) {
        flag.store(on, Ordering::SeqCst);
    }
    pub fn connect_delay(&self, delay: Duration) {
        self.0
            .connect_delay_ms
            .store(delay.as_millis() as usize, Ordering::SeqCst);
    }
    pub fn break_conn(&self, id: usize) {
        self.0.broken.lock().insert(id);
    }
}

impl Manager for Backend {
    type Connection = Conn;
    type Error = BackendError;

    async fn connect(&self) -> Result<Conn, BackendError> {
        let inner = &self.0;
        inner.attempts.fetch_add(1, Ordering::SeqCst);
        inner.attempt_times.lock().push(tokio::time::Instant::now());
        let delay = inner.connect_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay as u64)).await;
        }
        if inner.hang_connect.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if inner.down.load(Ordering::SeqCst) {
            return Err(BackendError::Refused);
        }
        inner.connects.fetch_add(1, Ordering::SeqCst);
        inner.live.fetch_add(1, Ordering::SeqCst);
        Ok(Conn {
            id: inner.next_id.fetch_add(1, Ordering::SeqCst),
            backend: Arc::clone(inner),
        })
    }

    async fn validate(&self, _conn: &mut Conn) -> Result<(), BackendError> {
        let inner = &self.0;
        inner.validations.fetch_add(1, Ordering::SeqCst);
        if inner.validate_hangs.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if inner.validate_fails.load(Ordering::SeqCst) {
            return Err(BackendError::Invalid);
        }
        Ok(())
    }

    async fn recycle(&self, _conn: &mut Conn) -> Result<(), BackendError> {
        let inner = &self.0;
        inner.recycles.fetch_add(1, Ordering::SeqCst);
        if inner.recycle_fails.load(Ordering::SeqCst) {
            return Err(BackendError::Invalid);
        }
        Ok(())
    }

    fn is_broken(&self, conn: &mut Conn) -> bool {
        self.0.broken.lock().contains(&conn.id)
    }
}

/// A builder on tokio's (paused) clock, with checkout validation off unless a test turns it on.
pub fn builder(backend: &Backend) -> PoolBuilder<Backend, TokioClock> {
    Pool::builder(backend.clone())
        .test_on_checkout(palisade_pool::CheckoutTest::Never)
        .clock(TokioClock::new())
}

/// Lets spawned tasks (connects, waiters) run without moving paused time.
pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}
