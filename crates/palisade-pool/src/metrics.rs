//! [`Metrics`]: a snapshot of the pool, and [`Discard`]: why a connection left it.

use std::fmt;

/// Why the pool let go of a connection. Each reason has its own counter in [`Metrics`] and
/// names the `tracing` event (`reason = "expired"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Discard {
    /// [`Manager::is_broken`](crate::Manager::is_broken) said so, when it came back or before it
    /// went out.
    Broken,
    /// Its guard was dropped while [tainted](crate::Pooled::taint) (e.g. a request future was
    /// cancelled between writing a query and reading its answer), or while the thread panicked.
    Tainted,
    /// It reached its (jittered) `max_lifetime`.
    Expired,
    /// It sat idle longer than `idle_timeout` while the pool was above `min_idle`.
    IdleTimeout,
    /// `validate` or `recycle` failed or overran `validation_timeout`.
    Invalid,
    /// A check was cut short, so its state is unknown: the `get()` or keepalive pass checking
    /// it was dropped, or the caller's deadline passed, mid-check; or a check (`validate`,
    /// `recycle`, `is_broken`) panicked.
    Cancelled,
    /// The pool was closed.
    Closed,
    /// The caller took it out of the pool with [`Pooled::detach`](crate::Pooled::detach).
    Detached,
}

impl Discard {
    pub(crate) const COUNT: usize = 8;

    pub(crate) const ALL: [Discard; Discard::COUNT] = [
        Discard::Broken,
        Discard::Tainted,
        Discard::Expired,
        Discard::IdleTimeout,
        Discard::Invalid,
        Discard::Cancelled,
        Discard::Closed,
        Discard::Detached,
    ];

    /// The reason in one word, as the `tracing` events print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Discard::Broken => "broken",
            Discard::Tainted => "tainted",
            Discard::Expired => "expired",
            Discard::IdleTimeout => "idle_timeout",
            Discard::Invalid => "invalid",
            Discard::Cancelled => "cancelled",
            Discard::Closed => "closed",
            Discard::Detached => "detached",
        }
    }
}

impl fmt::Display for Discard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of a pool: gauges at one instant and counters since it was built.
///
/// `size = idle + in_use + connecting + checking` (plus, for an instant, connections being
/// closed), and `size <= max_size` always.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metrics {
    /// The configured `max_size`.
    pub max_size: usize,
    /// Connections that exist or are being connected.
    pub size: usize,
    /// Connections idle in the pool.
    pub idle: usize,
    /// Connections checked out.
    pub in_use: usize,
    /// Connects in flight (including those backing off after a failure).
    pub connecting: usize,
    /// Idle connections out of the idle set for a keepalive check.
    pub checking: usize,
    /// `get()` calls waiting in line.
    pub waiters: usize,
    /// Connections created.
    pub created: u64,
    /// Connect attempts that failed or timed out.
    pub connect_failures: u64,
    /// `get()` (and `warm_up()`) calls that ran out of time.
    pub timeouts: u64,
    /// Checkouts reported as suspected leaks.
    pub leaks: u64,
    pub(crate) discarded: [u64; Discard::COUNT],
}

impl Metrics {
    /// Connections discarded for `reason`.
    pub fn discarded(&self, reason: Discard) -> u64 {
        self.discarded[reason as usize]
    }

    /// Connections discarded for any reason.
    pub fn discarded_total(&self) -> u64 {
        self.discarded.iter().sum()
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "size {}/{}, idle {}, in use {}, connecting {}, waiters {}",
            self.size, self.max_size, self.idle, self.in_use, self.connecting, self.waiters
        )?;
        if self.checking > 0 {
            write!(f, ", checking {}", self.checking)?;
        }
        let discarded: Vec<String> = Discard::ALL
            .iter()
            .filter(|r| self.discarded(**r) > 0)
            .map(|r| format!("{} {}", self.discarded(*r), r))
            .collect();
        if !discarded.is_empty() {
            write!(f, ", discarded: {}", discarded.join(", "))?;
        }
        Ok(())
    }
}
