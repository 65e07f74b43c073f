//! [`ReconnectingStream`]: an `AsyncRead + AsyncWrite` that reconnects by policy.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::Duration;

use palisade_core::sync::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::config::{ConfigError, MIN_DURATION, PolicyBuilder, check_duration, policy_setters};
use crate::error::{BoxError, Closed, ConnectionLost, into_io};
use crate::schedule::Schedule;
use crate::state::{Cause, CloseReason, ConnectionState, Reporter};

type ConnectFuture<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'static>>;
type ConnectFn<T> = Box<dyn FnMut() -> ConnectFuture<T> + Send + 'static>;
type HookFn<T> = Arc<dyn Fn(T) -> ConnectFuture<T> + Send + Sync + 'static>;

/// An `AsyncRead + AsyncWrite` over a connector that reconnects when its connection fails.
///
/// - **Failures are reported, never hidden.** The operation that meets a dead connection (an
///   I/O error, end of file, or no data for `idle_timeout`) returns an error: the underlying
///   `io::Error`'s kind, carrying a [`ConnectionLost`]. Bytes the old connection accepted but
///   did not deliver are not resent: after that error the protocol resynchronizes (resend an
///   idempotent request, re-subscribe, ...).
/// - **The next operation reconnects** by the [`Policy`](crate::Policy): it waits (stays
///   pending) through failed attempts and backoff until a connection is up, then proceeds on
///   it. Only when the policy gives up does it fail, with [`Closed`]. A stream has no task of
///   its own: it reconnects when it is used.
/// - **Cancel-safe.** The connect in flight and the backoff timer belong to the stream, not to
///   the operation: dropping a read or a write (a `select!`, a `timeout`) while the stream
///   reconnects loses nothing, and the next operation carries on from where it was.
/// - **Observable.** [`state`](ReconnectingStream::state) is a `watch` channel of the latest
///   [`ConnectionState`] (a watcher may skip states passed through in between); each change
///   is also a `tracing` event, so a subscriber sees every transition.
///
/// ```no_run
/// use palisade_reconnect::ReconnectingStream;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use tokio::net::TcpStream;
///
/// # async fn run() -> std::io::Result<()> {
/// let mut stream = ReconnectingStream::builder(|| TcpStream::connect("127.0.0.1:6379"))
///     .build()
///     .map_err(std::io::Error::other)?;
/// stream.write_all(b"PING\r\n").await?;
/// let mut reply = [0u8; 7];
/// stream.read_exact(&mut reply).await?;
/// # Ok(())
/// # }
/// ```
pub struct ReconnectingStream<T> {
    connect: ConnectFn<T>,
    schedule: Schedule,
    link: Link<T>,
    /// The backoff and connect-deadline timer: created for a wait or an attempt, dropped once
    /// connected (a registered timer costs the runtime a clock read on every park).
    timer: Option<Pin<Box<Sleep>>>,
    idle: Option<Idle>,
    reporter: Reporter,
    generation: u64,
    /// Each direction's task while its operation waits on the current connection (after a
    /// `tokio::io::split` the two may be different tasks). Left behind when that operation is
    /// dropped (a `select!`, a `timeout`): the stream cannot see the drop, so a waker here only
    /// says that an operation of that task *was* waiting.
    parked: [Option<Waker>; 2],
    /// A loss another task saw while this direction was parked on that connection: the next
    /// operation in this direction fails with it (once), instead of carrying on, torn, on a new
    /// connection, if it comes from the task that was parked (see [`Owed`]).
    owed: [Option<Owed>; 2],
    /// `shutdown` closed the write side: reads go on until end of file; no reconnect.
    write_shut: bool,
    /// The tasks whose operations wait for a connection (after a split, both halves may).
    waiters: Arc<Waiters>,
    /// Wakes every one of `waiters`: the waker the attempt and the timer are polled with, since
    /// a future or a `Sleep` keeps only the waker of its last poll.
    wake_waiters: Waker,
}

/// The tasks waiting in `poll_connect`, woken together by whatever the attempt in flight or the
/// backoff timer wakes, and when the stream closes or abandons the attempt.
///
/// One slot per [`Waiter`], holding the waker of that kind of operation's latest poll: an
/// `AsyncRead` or `AsyncWrite` owes a wakeup only to the latest poll in each direction, and
/// `connect` holds `&mut self` while it waits. A waker left by an operation dropped while
/// waiting stays until the next wake, or until the next poll of its kind replaces it: one per
/// slot at most, never a growing list.
#[derive(Default)]
struct Waiters(Mutex<[Option<Waker>; Waiter::COUNT]>);

impl Waiters {
    /// Records `waker` as `who`'s, replacing an earlier poll's unless it wakes the same task.
    fn add(&self, who: Waiter, waker: &Waker) {
        let mut slots = self.0.lock();
        let slot = &mut slots[who as usize];
        if slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return;
        }
        let replaced = slot.replace(waker.clone());
        drop(slots);
        drop(replaced); // outside the lock: dropping a task's last waker may run its drop
    }

    /// Wakes every waiting task but `current`'s.
    fn wake_others(&self, current: &Waker) {
        let slots = std::mem::take(&mut *self.0.lock());
        slots
            .into_iter()
            .flatten()
            .filter(|w| !w.will_wake(current))
            .for_each(Waker::wake);
    }
}

impl Wake for Waiters {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let slots = std::mem::take(&mut *self.0.lock());
        slots.into_iter().flatten().for_each(Waker::wake);
    }
}

/// An operation that waits in `poll_connect`, to index [`Waiters`]: one for each of its callers.
#[derive(Clone, Copy)]
enum Waiter {
    /// `poll_read`.
    Read,
    /// `poll_write`, `poll_write_vectored` and `poll_flush` (through `poll_op`).
    Write,
    /// [`connect`](ReconnectingStream::connect).
    Connect,
}

impl Waiter {
    const COUNT: usize = 3;
}

/// A loss owed to a direction that was parked on the lost connection, and the task that was.
///
/// Only an operation of that task can be the one that waited: the next operation in this
/// direction gets the error if its waker is that task's, and otherwise (the parked one was
/// dropped, and the stream moved to another task) it is discarded, not reported a second time.
struct Owed {
    error: ConnectionLost,
    task: Waker,
}

impl Owed {
    /// The owed error, if the operation polled with `cx` may be the one that was parked.
    #[inline]
    fn take_for(slot: &mut Option<Owed>, cx: &Context<'_>) -> Option<io::Error> {
        let owed = slot.take()?;
        owed.task
            .will_wake(cx.waker())
            .then(|| owed.error.into_io())
    }
}

/// An operation's direction, to index `parked` and `owed`.
#[derive(Clone, Copy)]
enum Dir {
    Read = 0,
    Write = 1,
}

enum Link<T> {
    /// Not connected: the next attempt may start at this instant (`None`: at once).
    Down(Option<Instant>),
    /// An attempt is in flight; `timer` holds its deadline, reached after `budget`.
    Connecting(ConnectFuture<T>, Duration),
    Up(T),
    Closed(CloseReason),
}

/// The idle timeout: armed when a read starts waiting, cut when data arrives.
struct Idle {
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl<T> fmt::Debug for ReconnectingStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconnectingStream")
            .field("state", &self.reporter.current().name())
            .field("generation", &self.generation)
            .field("policy", self.schedule.policy())
            .field("idle_timeout", &self.idle.as_ref().map(|i| i.timeout))
            .finish_non_exhaustive()
    }
}

impl<T> ReconnectingStream<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// A builder over `connect`, called for every attempt: a closure returning the connect
    /// future, as `|| TcpStream::connect(addr)`. Its error can be any error type; an
    /// `io::Error` is kept as it is.
    pub fn builder<F, Fut, E>(mut connect: F) -> StreamBuilder<T>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        StreamBuilder {
            connect: Box::new(move || {
                let fut = connect();
                Box::pin(async move { fut.await.map_err(|e| into_io(e.into())) })
            }),
            hook: None,
            policy: PolicyBuilder::default(),
            idle_timeout: None,
        }
    }
}

impl<T> ReconnectingStream<T> {
    /// The connection state: a `watch` receiver of the latest [`ConnectionState`].
    ///
    /// A `watch` channel keeps only the latest value. The receiver is woken when the state
    /// changes, and `changed()` completes once for any number of changes since it last looked,
    /// so it can skip states passed through in between: a connect that completes at once
    /// publishes `Connecting` and then `Connected` in one poll, and a watcher sees only
    /// `Connected`. For every transition, in order, subscribe to the `tracing` events: each
    /// published state is one event, target `palisade_reconnect` (`connecting` at `DEBUG`,
    /// `connected` at `INFO`, `disconnected` and `closed` at `WARN`). The crate has no other
    /// per-transition hook.
    ///
    /// The stream has no task: each change is published from the thread that caused it (a
    /// read, a write, `connect`, `reconnect`, `close`, the drop). Don't hold a `borrow()` of
    /// this channel across any of them: publishing waits for every borrow to end, yours too.
    /// Copy the state out instead (`rx.borrow().clone()`).
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.reporter.subscribe()
    }

    /// The number of connections made so far; the current one's generation when connected.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// True while a connection is up.
    pub fn is_connected(&self) -> bool {
        matches!(self.link, Link::Up(_))
    }

    /// The current connection, if one is up.
    pub fn get_ref(&self) -> Option<&T> {
        match &self.link {
            Link::Up(io) => Some(io),
            _ => None,
        }
    }

    /// The current connection, if one is up. Reading or writing it directly bypasses failure
    /// detection.
    pub fn get_mut(&mut self) -> Option<&mut T> {
        match &mut self.link {
            Link::Up(io) => Some(io),
            _ => None,
        }
    }

    /// Connects now if not connected, by the policy: returns once a connection is up, or with
    /// [`Closed`] (in an `io::Error`) when the policy gives up. Cancel-safe: dropping it keeps
    /// the attempt in flight for the next use.
    pub async fn connect(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_connect(cx, Waiter::Connect)).await
    }

    /// Drops the current connection (if any); the next use reconnects. Counts as a lost
    /// connection: the backoff starts over only if it was up for `stable_after`. No operation
    /// gets an error for it (none can be in flight: this takes `&mut self`, and you asked): the
    /// next read and write proceed on the new connection.
    pub fn reconnect(&mut self) {
        if matches!(self.link, Link::Up(_)) {
            drop(self.lost(Cause::Requested, None));
        } else if matches!(self.link, Link::Connecting(..)) {
            // The attempt in flight is abandoned: a failed attempt, with its backoff and its
            // place in `max_attempts`. The operations waiting on it wait for the next one.
            self.attempt_failed(Cause::Requested);
            self.wake_waiters.wake_by_ref();
        }
    }

    /// Closes for good without a shutdown handshake: drops the connection or the attempt in
    /// flight; later reads return end of file and writes fail with [`Closed`].
    pub fn close(&mut self) {
        self.release_parked();
        self.close_with(CloseReason::Closed);
    }

    /// Forgets the parked operations and wakes their tasks, owing them nothing: for the
    /// `&mut self` paths, where no operation can be in flight, so a parked waker is one a
    /// dropped operation left behind (or, behind a lock of the caller's, a task that must not
    /// be left waiting on a connection that is gone).
    fn release_parked(&mut self) {
        for waker in self.parked.iter_mut().filter_map(Option::take) {
            waker.wake();
        }
    }

    fn close_with(&mut self, reason: CloseReason) {
        if !matches!(self.link, Link::Closed(_)) {
            self.link = Link::Closed(reason.clone());
            self.reporter.publish(ConnectionState::Closed(reason));
            // An operation waiting for a connection (the attempt just dropped) ends now.
            self.wake_waiters.wake_by_ref();
        }
    }

    /// The connection failed with `cause`: schedules the next attempt (or gives up) and returns
    /// the error for the operation that saw it: of direction `seen_by.0`, polled by the waker
    /// `seen_by.1` (`None`: `reconnect()`, where no operation is in flight).
    fn lost(&mut self, cause: Cause, seen_by: Option<(Dir, &Waker)>) -> io::Error {
        let error = ConnectionLost {
            generation: self.generation,
            cause: cause.clone(),
        };
        if let Some(idle) = &mut self.idle {
            idle.waiting = false;
        }
        match seen_by {
            None => self.release_parked(),
            Some((seen, seen_task)) => {
                // The operation that saw the loss gets this error. The other direction, if an
                // operation was parked on this connection, is woken (its waker went with the
                // connection dropped here), and owed the error only if another task parked it:
                // one task cannot wait in one direction while it sees the loss in the other,
                // unless it polls both at once (`join!` over split halves), which the stream
                // cannot tell from a parked operation that a `select!` or a `timeout` dropped
                // (one that must not get a second error).
                self.parked[seen as usize] = None;
                let other = match seen {
                    Dir::Read => Dir::Write,
                    Dir::Write => Dir::Read,
                };
                if let Some(task) = self.parked[other as usize].take() {
                    task.wake_by_ref();
                    if !task.will_wake(seen_task) {
                        let error = error.clone();
                        self.owed[other as usize] = Some(Owed { error, task });
                    }
                }
            }
        }
        if self.write_shut {
            self.close_with(CloseReason::Closed);
            return error.into_io();
        }
        match self.schedule.lost(Instant::now()) {
            Ok(next) => {
                self.link = Link::Down(Some(next));
                self.reporter.publish(ConnectionState::Disconnected {
                    cause,
                    next_attempt_at: next,
                    attempts: self.schedule.attempts(),
                });
            }
            Err(gave_up) => self.close_with(CloseReason::GaveUp {
                attempts: gave_up.attempts,
                last: cause,
            }),
        }
        error.into_io()
    }

    fn attempt_failed(&mut self, cause: Cause) {
        match self.schedule.failed(Instant::now()) {
            Ok(next) => {
                self.link = Link::Down(Some(next));
                self.reporter.publish(ConnectionState::Disconnected {
                    cause,
                    next_attempt_at: next,
                    attempts: self.schedule.attempts(),
                });
            }
            Err(gave_up) => self.close_with(CloseReason::GaveUp {
                attempts: gave_up.attempts,
                last: cause,
            }),
        }
    }

    /// Drives the connection up for the operation `who`: `Ready(Ok)` once one is up,
    /// `Ready(Err(Closed))` once closed.
    #[inline]
    fn poll_connect(&mut self, cx: &mut Context<'_>, who: Waiter) -> Poll<io::Result<()>> {
        if let Link::Up(_) = self.link {
            return Poll::Ready(Ok(()));
        }
        self.poll_connect_slow(cx, who)
    }

    /// The reconnect state machine, out of line so the connected path inlines.
    ///
    /// It starts at most one attempt per call: when an attempt started here has already failed
    /// and the next one is due at once (a zero backoff, a connector that fails without pending),
    /// it wakes the task and returns `Pending`, so the runtime runs its other tasks and timers
    /// between attempts instead of this poll spinning.
    ///
    /// The attempt and the timer are polled with `wake_waiters`, which wakes every task waiting
    /// here (both halves after a split), not only the last to poll.
    #[inline(never)]
    fn poll_connect_slow(&mut self, cx: &mut Context<'_>, who: Waiter) -> Poll<io::Result<()>> {
        if !matches!(self.link, Link::Closed(_)) {
            self.waiters.add(who, cx.waker());
        }
        let waker = self.wake_waiters.clone();
        let fan = &mut Context::from_waker(&waker);
        let mut attempted = false;
        loop {
            match &mut self.link {
                Link::Up(_) => return Poll::Ready(Ok(())),
                Link::Closed(reason) => {
                    let reason = reason.clone();
                    return Poll::Ready(Err(Closed { reason }.into_io()));
                }
                Link::Down(at) => {
                    let now = Instant::now();
                    if let Some(at) = *at
                        && at > now
                    {
                        ready!(poll_timer(&mut self.timer, at, fan));
                        continue;
                    }
                    if attempted {
                        // A cooperative yield: the next poll (of any waiting task) makes the
                        // next attempt.
                        waker.wake_by_ref();
                        return Poll::Pending;
                    }
                    attempted = true;
                    let attempt = self.schedule.begin(now);
                    self.reporter.publish(ConnectionState::Connecting {
                        attempt: attempt.number,
                    });
                    let budget = attempt.deadline.saturating_duration_since(now);
                    let fut = (self.connect)();
                    self.link = Link::Connecting(fut, budget);
                    arm(&mut self.timer, attempt.deadline);
                }
                Link::Connecting(fut, budget) => match fut.as_mut().poll(fan) {
                    Poll::Ready(Ok(io)) => {
                        let now = Instant::now();
                        self.generation += 1;
                        // Drop the attempt's deadline: a timer left in tokio's wheel makes the
                        // runtime read the clock on every park (5 % of a loopback round trip).
                        self.timer = None;
                        self.schedule.connected(now);
                        self.link = Link::Up(io);
                        self.reporter.publish(ConnectionState::Connected {
                            since: now,
                            generation: self.generation,
                        });
                        // The others waiting proceed too (the timer they may wait on is gone).
                        self.waiters.wake_others(cx.waker());
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Err(e)) => self.attempt_failed(Cause::ConnectFailed(Arc::new(e))),
                    Poll::Pending => {
                        let budget = *budget;
                        let timer = self.timer.as_mut().expect("armed with the attempt");
                        ready!(timer.as_mut().poll(fan));
                        self.attempt_failed(Cause::ConnectTimedOut(budget));
                    }
                },
            }
        }
    }
}

/// Arms `timer` for `at`, creating it on first use.
fn arm(timer: &mut Option<Pin<Box<Sleep>>>, at: Instant) {
    match timer {
        Some(t) => t.as_mut().reset(at),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
    }
}

/// Waits until `at` on `timer`.
fn poll_timer(timer: &mut Option<Pin<Box<Sleep>>>, at: Instant, cx: &mut Context<'_>) -> Poll<()> {
    match timer {
        Some(t) if t.deadline() == at => {}
        _ => arm(timer, at),
    }
    timer.as_mut().expect("armed").as_mut().poll(cx)
}

/// Whether an I/O error leaves the connection usable: only the retry-me kinds do.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

impl<T> Drop for ReconnectingStream<T> {
    /// Publishes `Closed(Closed)` unless closed already, so that watchers of
    /// [`state`](ReconnectingStream::state) see the end as a state, not only as the channel
    /// closing. It publishes from the dropping thread, which must not hold a `borrow()` of the
    /// state at that moment.
    fn drop(&mut self) {
        self.close_with(CloseReason::Closed);
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for ReconnectingStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(owed) = Owed::take_for(&mut this.owed[Dir::Read as usize], cx) {
            return Poll::Ready(Err(owed));
        }
        if let Link::Closed(CloseReason::Closed) = this.link {
            return Poll::Ready(Ok(())); // closed by its owner: end of file
        }
        ready!(this.poll_connect(cx, Waiter::Read))?;
        let Link::Up(io) = &mut this.link else {
            unreachable!("poll_connect returns Ok only when up")
        };
        let before = buf.filled().len();
        match Pin::new(io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.parked[Dir::Read as usize] = None;
                if buf.filled().len() == before && buf.remaining() > 0 {
                    if this.write_shut {
                        // The end of a half-closed exchange: the peer answered and closed.
                        this.close_with(CloseReason::Closed);
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Ready(Err(this.lost(Cause::Eof, Some((Dir::Read, cx.waker())))));
                }
                if let Some(idle) = &mut this.idle {
                    idle.waiting = false;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) if is_transient(&e) => Poll::Ready(Err(e)),
            Poll::Ready(Err(e)) => {
                let seen_by = Some((Dir::Read, cx.waker()));
                Poll::Ready(Err(this.lost(Cause::Lost(Arc::new(e)), seen_by)))
            }
            Poll::Pending => {
                park(&mut this.parked[Dir::Read as usize], cx);
                let Some(idle) = &mut this.idle else {
                    return Poll::Pending;
                };
                if !idle.waiting {
                    idle.waiting = true;
                    arm(&mut idle.timer, Instant::now() + idle.timeout);
                }
                let timer = idle.timer.as_mut().expect("armed when waiting");
                ready!(timer.as_mut().poll(cx));
                let timeout = idle.timeout;
                let seen_by = Some((Dir::Read, cx.waker()));
                Poll::Ready(Err(this.lost(Cause::Idle(timeout), seen_by)))
            }
        }
    }
}

/// Remembers `cx`'s waker as the one waiting in this direction.
fn park(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> ReconnectingStream<T> {
    /// Runs `op` on the connection once it is up; turns a failure (or a result that is `zero`)
    /// into a lost connection, and restarts the idle clock on a result that `sent` something.
    fn poll_op<R>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<R>>,
        zero: impl FnOnce(&R) -> bool,
        sent: impl FnOnce(&R) -> bool,
    ) -> Poll<io::Result<R>> {
        if let Some(owed) = Owed::take_for(&mut self.owed[Dir::Write as usize], cx) {
            return Poll::Ready(Err(owed));
        }
        if self.write_shut {
            let reason = CloseReason::Closed;
            return Poll::Ready(Err(Closed { reason }.into_io()));
        }
        ready!(self.poll_connect(cx, Waiter::Write))?;
        let Link::Up(io) = &mut self.link else {
            unreachable!("poll_connect returns Ok only when up")
        };
        let result = match op(Pin::new(io), cx) {
            Poll::Pending => {
                park(&mut self.parked[Dir::Write as usize], cx);
                return Poll::Pending;
            }
            Poll::Ready(result) => result,
        };
        self.parked[Dir::Write as usize] = None;
        match result {
            Ok(r) if zero(&r) => {
                let e = io::Error::from(io::ErrorKind::WriteZero);
                let seen_by = Some((Dir::Write, cx.waker()));
                Poll::Ready(Err(self.lost(Cause::Lost(Arc::new(e)), seen_by)))
            }
            Ok(r) => {
                // Sending something starts a new wait for the peer: the idle clock restarts (a
                // flush or a write of nothing does not).
                if let Some(idle) = &mut self.idle
                    && sent(&r)
                {
                    idle.waiting = false;
                }
                Poll::Ready(Ok(r))
            }
            Err(e) if is_transient(&e) => Poll::Ready(Err(e)),
            Err(e) => {
                let seen_by = Some((Dir::Write, cx.waker()));
                Poll::Ready(Err(self.lost(Cause::Lost(Arc::new(e)), seen_by)))
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ReconnectingStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let nonempty = !buf.is_empty();
        self.get_mut().poll_op(
            cx,
            |io, cx| io.poll_write(cx, buf),
            |n| nonempty && *n == 0,
            |n| *n > 0,
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let nonempty = bufs.iter().any(|b| !b.is_empty());
        self.get_mut().poll_op(
            cx,
            |io, cx| io.poll_write_vectored(cx, bufs),
            |n| nonempty && *n == 0,
            |n| *n > 0,
        )
    }

    fn is_write_vectored(&self) -> bool {
        match &self.link {
            Link::Up(io) => io.is_write_vectored(),
            _ => false,
        }
    }

    /// Flushes the current connection. With no connection up (or once closed) there is nothing
    /// to flush, so it returns `Ok` without connecting, unless the loss of what the lost one
    /// held is owed to this direction (a flush or a write of this task waited on it when the
    /// other half saw the loss): then it returns that error, once.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write_shut || !matches!(this.link, Link::Up(_)) {
            if let Some(owed) = Owed::take_for(&mut this.owed[Dir::Write as usize], cx) {
                return Poll::Ready(Err(owed));
            }
            return Poll::Ready(Ok(()));
        }
        this.poll_op(cx, |io, cx| io.poll_flush(cx), |_| false, |_| false)
    }

    /// Shuts the write side of the current connection down, as a `TcpStream`'s `shutdown`
    /// does: no more writes, and no reconnect, but reads go on until the peer's end of file
    /// (the reply of a half-close protocol), which closes the stream for good. With no
    /// connection up, it closes at once (after returning a loss owed to this direction, as
    /// [`poll_flush`](AsyncWrite::poll_flush) does).
    ///
    /// A write-side operation: a shutdown still flushing when the other half sees the loss is
    /// woken and fails with it, like a write. If the connection's own shutdown fails, the
    /// error is a lost connection ([`ConnectionLost`]), and the stream closes for good; a
    /// `WouldBlock` or `Interrupted` error is returned as it is, and the shutdown can be
    /// retried, as for reads and writes.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(owed) = Owed::take_for(&mut this.owed[Dir::Write as usize], cx) {
            return Poll::Ready(Err(owed));
        }
        let Link::Up(io) = &mut this.link else {
            this.close_with(CloseReason::Closed);
            return Poll::Ready(Ok(()));
        };
        if this.write_shut {
            return Poll::Ready(Ok(()));
        }
        let result = match Pin::new(io).poll_shutdown(cx) {
            Poll::Pending => {
                park(&mut this.parked[Dir::Write as usize], cx);
                return Poll::Pending;
            }
            Poll::Ready(result) => result,
        };
        this.parked[Dir::Write as usize] = None;
        match result {
            Err(e) if is_transient(&e) => Poll::Ready(Err(e)),
            Err(e) => {
                // Gone with the connection: the reader waiting for the reply is told, and the
                // stream, shut down, closes (`lost` does both).
                this.write_shut = true;
                let seen_by = Some((Dir::Write, cx.waker()));
                Poll::Ready(Err(this.lost(Cause::Lost(Arc::new(e)), seen_by)))
            }
            Ok(()) => {
                this.write_shut = true;
                Poll::Ready(Ok(()))
            }
        }
    }
}

/// Builds a [`ReconnectingStream`]: the policy knobs, an on-connect hook and the idle timeout.
#[must_use = "a builder does nothing until `build` is called"]
pub struct StreamBuilder<T> {
    connect: ConnectFn<T>,
    hook: Option<HookFn<T>>,
    policy: PolicyBuilder,
    idle_timeout: Option<Duration>,
}

impl<T> fmt::Debug for StreamBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamBuilder")
            .field("policy", &self.policy)
            .field("on_connect", &self.hook.is_some())
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> StreamBuilder<T> {
    policy_setters!();

    /// Runs `hook` on every new connection before it is used (authenticate, select a database,
    /// re-subscribe): it gets the connection and hands it back. An error fails the attempt,
    /// which is retried by the policy like a failed connect; the hook's time counts against
    /// the attempt's deadline.
    pub fn on_connect<H, Fut, E>(mut self, hook: H) -> Self
    where
        H: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.hook = Some(Arc::new(move |io| {
            let fut = hook(io);
            Box::pin(async move { fut.await.map_err(|e| into_io(e.into())) })
        }));
        self
    }

    /// Declares the connection dead when a read waits this long for data, in `[1ms, 24h]`
    /// (default: never). The read fails with a [`ConnectionLost`] of kind `TimedOut` and the
    /// next operation reconnects. Pick a few times the interval at which the peer sends
    /// something (its heartbeat), or the longest a reply may take.
    ///
    /// The clock starts when a read finds no data, and restarts when data arrives or the stream
    /// writes bytes (a request starts a new wait for its reply; a flush does not); a connection
    /// nobody reads is not timed. A read dropped while waiting does not stop the clock, so a
    /// `select!` loop that re-creates its read keeps one clock: a later read with no write in
    /// between resumes it and fails at once if it already ran out (the peer has then said
    /// nothing for `timeout` since a read began waiting).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Validates the knobs and returns the stream, not connected yet: the first operation (or
    /// [`connect`](ReconnectingStream::connect)) connects.
    pub fn build(self) -> Result<ReconnectingStream<T>, ConfigError> {
        let policy = self.policy.build()?;
        if let Some(timeout) = self.idle_timeout {
            check_duration("idle_timeout", timeout, MIN_DURATION)?;
        }
        let connect = match self.hook {
            None => self.connect,
            Some(hook) => {
                let mut connect = self.connect;
                Box::new(move || {
                    let fut = connect();
                    let hook = Arc::clone(&hook);
                    Box::pin(async move { hook(fut.await?).await }) as ConnectFuture<T>
                })
            }
        };
        let waiters = Arc::new(Waiters::default());
        Ok(ReconnectingStream {
            connect,
            schedule: Schedule::new(policy),
            link: Link::Down(None),
            timer: None,
            idle: self.idle_timeout.map(|timeout| Idle {
                timeout,
                timer: None,
                waiting: false,
            }),
            reporter: Reporter::new(),
            generation: 0,
            parked: [None, None],
            owed: [None, None],
            write_shut: false,
            wake_waiters: Waker::from(Arc::clone(&waiters)),
            waiters,
        })
    }
}
