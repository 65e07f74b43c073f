//! The builder and its validated configuration.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc as StdArc;
use std::time::Duration;

use palisade_core::{Clock, FastClock};
use palisade_retry::{Backoff, Jitter};

use crate::error::ConfigError;
use crate::manager::Manager;
use crate::pool::Pool;

/// The largest `max_size`.
pub const MAX_SIZE: usize = 1 << 16;
/// The longest duration any knob accepts: 30 days.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// The shortest duration any knob accepts: 1 ms.
pub const MIN_DURATION: Duration = Duration::from_millis(1);
/// The largest `max_lifetime_jitter`: half the lifetime.
pub const MAX_LIFETIME_JITTER: f64 = 0.5;

/// When a connection taken from the idle set is validated before it is handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckoutTest {
    /// Never: rely on `is_broken`, keepalive and the caller's own error handling.
    Never,
    /// Every time.
    Always,
    /// When it has been idle at least this long (HikariCP skips validation of connections
    /// used within the last 500 ms, which is the default here).
    IdleFor(Duration),
}

impl Default for CheckoutTest {
    fn default() -> CheckoutTest {
        CheckoutTest::IdleFor(Duration::from_millis(500))
    }
}

/// A boxed background task of the pool (a connect).
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

#[derive(Clone, Default)]
pub(crate) enum Spawner {
    /// `tokio::spawn` on the runtime current at the time (none: the connect is not started,
    /// and the next `get()` inside a runtime starts it).
    #[default]
    Tokio,
    Custom(StdArc<dyn Fn(BoxFuture) + Send + Sync>),
}

impl fmt::Debug for Spawner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Spawner::Tokio => "tokio::spawn",
            Spawner::Custom(_) => "custom",
        })
    }
}

impl Spawner {
    /// Starts `task`, or drops it unpolled if there is nowhere to run it.
    pub(crate) fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        match self {
            Spawner::Tokio => {
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    drop(handle.spawn(task));
                }
            }
            Spawner::Custom(spawn) => spawn(Box::pin(task)),
        }
    }
}

/// The validated knobs of a pool.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_size: usize,
    pub(crate) min_idle: usize,
    pub(crate) acquire_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) validation_timeout: Duration,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) max_lifetime_jitter: f64,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) test_on_checkout: CheckoutTest,
    pub(crate) max_concurrent_connects: usize,
    pub(crate) leak_detection: Option<Duration>,
    pub(crate) connect_backoff: Backoff,
    pub(crate) spawner: Spawner,
}

/// Builds a [`Pool`]; every knob is checked by [`build`](PoolBuilder::build).
///
/// | knob | default | allowed |
/// |---|---|---|
/// | `max_size` | 10 | 1..=65536 |
/// | `min_idle` | 0 | 0..=`max_size` |
/// | `acquire_timeout` | 30 s | 1 ms..=30 days |
/// | `connect_timeout` | 10 s | 1 ms..=30 days |
/// | `validation_timeout` | 5 s | 1 ms..=30 days |
/// | `max_lifetime` | 30 min | `None`, or 1 ms..=30 days |
/// | `max_lifetime_jitter` | 0.1 | 0.0..=0.5 |
/// | `idle_timeout` | 10 min | `None`, or 1 ms..=30 days |
/// | `keepalive` | `None` | `None`, or 1 ms..=30 days |
/// | `test_on_checkout` | `IdleFor(500 ms)` | durations ≤ 30 days |
/// | `max_concurrent_connects` | 2 | 1..=65536 |
/// | `leak_detection` | `None` | `None`, or 1 ms..=30 days |
/// | `connect_backoff` | 100 ms × 2, ± 20 %, capped at 10 s | any [`Backoff`] |
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder<M, C = FastClock> {
    manager: M,
    clock: C,
    config: Config,
}

impl<M: fmt::Debug, C: fmt::Debug> fmt::Debug for PoolBuilder<M, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("manager", &self.manager)
            .field("clock", &self.clock)
            .field("config", &self.config)
            .finish()
    }
}

/// The default connect backoff: 100 ms, doubling, ± 20 % jitter, capped at 10 s.
fn default_backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(100))
        .multiplier(2.0)
        .max_delay(Duration::from_secs(10))
        .jitter(Jitter::Proportional(0.2))
        .build()
        .expect("the default backoff is valid")
}

impl<M: Manager> PoolBuilder<M, FastClock> {
    pub(crate) fn new(manager: M) -> PoolBuilder<M, FastClock> {
        PoolBuilder {
            manager,
            clock: FastClock::new(),
            config: Config {
                max_size: 10,
                min_idle: 0,
                acquire_timeout: Duration::from_secs(30),
                connect_timeout: Duration::from_secs(10),
                validation_timeout: Duration::from_secs(5),
                max_lifetime: Some(Duration::from_secs(30 * 60)),
                max_lifetime_jitter: 0.1,
                idle_timeout: Some(Duration::from_secs(10 * 60)),
                keepalive: None,
                test_on_checkout: CheckoutTest::default(),
                max_concurrent_connects: 2,
                leak_detection: None,
                connect_backoff: default_backoff(),
                spawner: Spawner::Tokio,
            },
        }
    }
}

impl<M: Manager, C: Clock> PoolBuilder<M, C> {
    /// The most connections the pool holds at once, idle, checked out and being connected
    /// together.
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.config.max_size = max_size;
        self
    }

    /// Connections the pool keeps open even when nobody uses them: refilled by
    /// [`warm_up`](Pool::warm_up), by [`maintain`](Pool::maintain) and whenever one is discarded,
    /// and exempt from `idle_timeout`.
    pub fn min_idle(mut self, min_idle: usize) -> Self {
        self.config.min_idle = min_idle;
        self
    }

    /// The one deadline over a whole `get()`: waiting in line, connecting, recycling and
    /// validating together.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.config.acquire_timeout = timeout;
        self
    }

    /// The deadline of one `connect` attempt.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// The deadline of one `validate` or `recycle`.
    pub fn validation_timeout(mut self, timeout: Duration) -> Self {
        self.config.validation_timeout = timeout;
        self
    }

    /// Connections are closed once this old (checked when they come back and before they go
    /// out, never while in use); `None` keeps them forever. Set it below any limit the backend
    /// or a proxy in between enforces.
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.config.max_lifetime = lifetime;
        self
    }

    /// Each connection's lifetime is drawn uniformly from
    /// `[max_lifetime × (1 − jitter), max_lifetime]`, so connections made together (a warm-up,
    /// a recovery) do not all expire, and reconnect, together.
    pub fn max_lifetime_jitter(mut self, jitter: f64) -> Self {
        self.config.max_lifetime_jitter = jitter;
        self
    }

    /// Idle connections are closed after this long unused, down to `min_idle`; `None` keeps
    /// them.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// [`maintain`](Pool::maintain) validates connections idle this long (recycling first one
    /// back from a use), so a connection a firewall or the server dropped silently is found
    /// before a caller gets it.
    pub fn keepalive(mut self, interval: Option<Duration>) -> Self {
        self.config.keepalive = interval;
        self
    }

    /// When an idle connection is validated before it is handed out.
    pub fn test_on_checkout(mut self, test: CheckoutTest) -> Self {
        self.config.test_on_checkout = test;
        self
    }

    /// The most connects in flight at once: a spike of callers never opens a storm of
    /// connections to a backend that is already slow.
    pub fn max_concurrent_connects(mut self, max: usize) -> Self {
        self.config.max_concurrent_connects = max;
        self
    }

    /// A connection checked out longer than this is reported (a `tracing` warning naming the
    /// `get()` call site) by [`maintain`](Pool::maintain), and again when it comes back.
    pub fn leak_detection(mut self, threshold: Option<Duration>) -> Self {
        self.config.leak_detection = threshold;
        self
    }

    /// The pause between failed connect attempts, continued across connect tasks: while the
    /// backend is down the pool retries on this schedule, never in a storm.
    pub fn connect_backoff(mut self, backoff: Backoff) -> Self {
        self.config.connect_backoff = backoff;
        self
    }

    /// Where connect tasks run. The default is `tokio::spawn` on the runtime current when the
    /// connect starts. Use this to put them on a runtime of your choice
    /// (`move |task| { handle.spawn(task); }`), or to drive them by hand in a test.
    pub fn spawn_with(mut self, spawn: impl Fn(BoxFuture) + Send + Sync + 'static) -> Self {
        self.config.spawner = Spawner::Custom(StdArc::new(spawn));
        self
    }

    /// The clock of lifetimes, idle times and leak detection. Use
    /// [`TokioClock`](palisade_core::TokioClock) in tests with paused time.
    pub fn clock<C2: Clock>(self, clock: C2) -> PoolBuilder<M, C2> {
        PoolBuilder {
            manager: self.manager,
            clock,
            config: self.config,
        }
    }

    /// Checks every knob and builds the pool. With `min_idle > 0` inside a tokio runtime, it
    /// starts connecting right away ([`warm_up`](Pool::warm_up) waits for it).
    pub fn build(self) -> Result<Pool<M, C>, ConfigError> {
        let c = &self.config;
        if !(1..=MAX_SIZE).contains(&c.max_size) {
            return Err(ConfigError::out_of_range(
                "max_size",
                format!("in 1..={MAX_SIZE}"),
                c.max_size,
            ));
        }
        if c.min_idle > c.max_size {
            return Err(ConfigError::out_of_range(
                "min_idle",
                format!("at most max_size ({})", c.max_size),
                c.min_idle,
            ));
        }
        if !(1..=MAX_SIZE).contains(&c.max_concurrent_connects) {
            return Err(ConfigError::out_of_range(
                "max_concurrent_connects",
                format!("in 1..={MAX_SIZE}"),
                c.max_concurrent_connects,
            ));
        }
        let durations = [
            ("acquire_timeout", Some(c.acquire_timeout)),
            ("connect_timeout", Some(c.connect_timeout)),
            ("validation_timeout", Some(c.validation_timeout)),
            ("max_lifetime", c.max_lifetime),
            ("idle_timeout", c.idle_timeout),
            ("keepalive", c.keepalive),
            ("leak_detection", c.leak_detection),
        ];
        for (field, value) in durations {
            if let Some(d) = value
                && !(MIN_DURATION..=MAX_DURATION).contains(&d)
            {
                return Err(ConfigError::out_of_range(
                    field,
                    "in 1ms..=30days (use None to turn it off, where allowed)",
                    d,
                ));
            }
        }
        if let CheckoutTest::IdleFor(d) = c.test_on_checkout
            && d > MAX_DURATION
        {
            return Err(ConfigError::out_of_range(
                "test_on_checkout",
                "IdleFor at most 30days",
                d,
            ));
        }
        if !(0.0..=MAX_LIFETIME_JITTER).contains(&c.max_lifetime_jitter) {
            return Err(ConfigError::out_of_range(
                "max_lifetime_jitter",
                format!("in 0.0..={MAX_LIFETIME_JITTER}"),
                c.max_lifetime_jitter,
            ));
        }
        Ok(Pool::from_parts(self.manager, self.clock, self.config))
    }
}
