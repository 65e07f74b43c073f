//! The connection state published on a `tokio::sync::watch` channel, and why a connection went
//! down.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// A shareable error: the cause of a failed attempt or a lost connection.
pub type SharedError = Arc<dyn StdError + Send + Sync + 'static>;

/// Where a connection is in its life. Every change is published on the channel that
/// `state()` subscribes to (which keeps only the latest: a watcher can skip states passed
/// through in between), and logged as a `tracing` event (target `palisade_reconnect`), one
/// per change.
///
/// ```text
///            first use                     connected
///   Idle ─────────────────▶ Connecting ──────────────────▶ Connected(since)
///                             ▲    │ failed, timed out          │ lost (error, EOF, idle,
///                  backoff    │    ▼                            │ heartbeat, reconnect())
///                  elapsed    Disconnected(cause, next_attempt_at) ◀┘
///
///   Connecting ── failed, timed out: the max_attempts-th failure ──▶ Closed(GaveUp)
///   Connected ─── lost before stable_after: the max_attempts-th ───▶ Closed(GaveUp)
///   any state ─── close(), every handle dropped, shutdown() ───────▶ Closed(Closed)
///   any state ─── the service's task panicked or was dropped ──────▶ Closed(TaskStopped)
/// ```
///
/// Giving up never passes through `Disconnected`: the failure that reaches `max_attempts` in
/// a row goes straight to `Closed(GaveUp)`, from `Connecting` (an attempt failed or timed out)
/// or from `Connected` (a connection lost before it stayed up `stable_after`, which counts as
/// a failed attempt). Closing by the owner goes to `Closed(Closed)` from whichever state it
/// finds, `Idle`, `Connecting` and `Connected` included; a stream's `shutdown()` closes at once
/// with no connection up, and otherwise at the peer's end of file (or the connection's
/// failure) after it. A connection lost after it stayed up `stable_after` goes from
/// `Disconnected` to `Connecting` at once (`next_attempt_at` is the time it was lost); any
/// other `Disconnected` waits for the backoff. `Closed` is final.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Not connected yet: nothing has asked for a connection.
    Idle,
    /// An attempt is in flight: the `attempt`th since the last stable connection (from 1).
    Connecting {
        /// The attempt's number since the last stable connection, from 1.
        attempt: u32,
    },
    /// Connected since `since`; `generation` counts the connections made, from 1.
    Connected {
        /// When the connection was established (tokio's clock).
        since: Instant,
        /// Which connection this is: 1 for the first, 2 after the first reconnect, ...
        generation: u64,
    },
    /// Not connected: an attempt failed or the connection was lost; the next attempt starts at
    /// `next_attempt_at` (a stream attempts it at its next use after that time).
    Disconnected {
        /// Why the last attempt failed or the connection went down.
        cause: Cause,
        /// When the next attempt is due (tokio's clock).
        next_attempt_at: Instant,
        /// Attempts made since the last stable connection.
        attempts: u32,
    },
    /// Closed for good; no attempt will be made.
    Closed(CloseReason),
}

impl ConnectionState {
    /// True in [`Connected`](ConnectionState::Connected).
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }

    /// True in [`Closed`](ConnectionState::Closed).
    pub fn is_closed(&self) -> bool {
        matches!(self, ConnectionState::Closed(_))
    }

    /// The state's name in lowercase (`"idle"`, `"connecting"`, `"connected"`, `"disconnected"`,
    /// `"closed"`): for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            ConnectionState::Idle => "idle",
            ConnectionState::Connecting { .. } => "connecting",
            ConnectionState::Connected { .. } => "connected",
            ConnectionState::Disconnected { .. } => "disconnected",
            ConnectionState::Closed(_) => "closed",
        }
    }
}

/// Why an attempt failed or a connection was lost.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Cause {
    /// The connector (or the on-connect hook) returned this error.
    ConnectFailed(SharedError),
    /// The attempt did not finish by its deadline (the later of the connect timeout and the
    /// backoff's next delay after its start): how long it was given.
    ConnectTimedOut(Duration),
    /// The connection failed with this error: an I/O error of the stream, the service's
    /// `poll_ready` error, or a response error classified as a lost connection.
    Lost(SharedError),
    /// The peer closed the connection: a read returned end of file.
    Eof,
    /// No data arrived for this long while a read was waiting (the stream's `idle_timeout`).
    Idle(Duration),
    /// The service's heartbeat failed with this error, or did not answer within its timeout.
    Heartbeat(SharedError),
    /// The owner asked for a new connection (`reconnect()`).
    Requested,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::ConnectFailed(e) => write!(f, "connect failed: {e}"),
            Cause::ConnectTimedOut(d) => write!(f, "connect timed out after {d:?}"),
            Cause::Lost(e) => write!(f, "connection lost: {e}"),
            Cause::Eof => f.write_str("connection closed by the peer"),
            Cause::Idle(d) => write!(f, "no data for {d:?}"),
            Cause::Heartbeat(e) => write!(f, "heartbeat failed: {e}"),
            Cause::Requested => f.write_str("reconnect requested"),
        }
    }
}

impl Cause {
    /// The underlying error, if the cause carries one.
    pub fn error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match self {
            Cause::ConnectFailed(e) | Cause::Lost(e) | Cause::Heartbeat(e) => Some(&**e),
            _ => None,
        }
    }
}

/// Why a connection closed for good.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CloseReason {
    /// `max_attempts` attempts in a row failed (or were lost before `stable_after`).
    GaveUp {
        /// How many attempts were made.
        attempts: u32,
        /// Why the last one failed.
        last: Cause,
    },
    /// The owner closed it: `close()`, the stream's `shutdown`, or every handle dropped.
    Closed,
    /// The background task that connects stopped without closing: it panicked (in the
    /// connector, a hook or a heartbeat) or its runtime shut down.
    TaskStopped,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::GaveUp { attempts, last } => {
                write!(f, "gave up after {attempts} attempts; the last: {last}")
            }
            CloseReason::Closed => f.write_str("closed by its owner"),
            CloseReason::TaskStopped => {
                f.write_str("the reconnect task stopped (a panic, or its runtime shut down)")
            }
        }
    }
}

/// Publishes states: the watch channel and the `tracing` event of each change.
#[derive(Debug)]
pub(crate) struct Reporter {
    tx: watch::Sender<ConnectionState>,
}

impl Reporter {
    pub(crate) fn new() -> Reporter {
        Reporter {
            tx: watch::Sender::new(ConnectionState::Idle),
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<ConnectionState> {
        self.tx.subscribe()
    }

    pub(crate) fn current(&self) -> ConnectionState {
        self.tx.borrow().clone()
    }

    pub(crate) fn publish(&self, state: ConnectionState) {
        match &state {
            ConnectionState::Idle => {}
            ConnectionState::Connecting { attempt } => {
                tracing::debug!(target: "palisade_reconnect", attempt, "connecting");
            }
            ConnectionState::Connected { generation, .. } => {
                tracing::info!(target: "palisade_reconnect", generation, "connected");
            }
            ConnectionState::Disconnected {
                cause,
                next_attempt_at,
                attempts,
            } => {
                let retry_in = next_attempt_at.saturating_duration_since(Instant::now());
                tracing::warn!(
                    target: "palisade_reconnect",
                    %cause, attempts, ?retry_in, "disconnected"
                );
            }
            ConnectionState::Closed(reason) => {
                tracing::warn!(target: "palisade_reconnect", %reason, "closed");
            }
        }
        self.tx.send_replace(state);
    }
}
