//! The pool's bookkeeping under one short lock: idle connections, the FIFO line of waiters,
//! and the slot count. Nothing here awaits or does I/O; the async parts (`get`, the connect
//! task, the maintenance pass) call these transitions and do their I/O outside the lock.

use std::collections::VecDeque;
use std::panic::Location;
use std::sync::Arc as StdArc;
use std::task::Waker;

use palisade_core::Instant;

use crate::error::Failure;
use crate::metrics::{Discard, Metrics};

/// A live connection and what the pool knows about it.
#[derive(Debug)]
pub(crate) struct Live<T> {
    pub(crate) conn: T,
    /// When it was connected.
    pub(crate) created: Instant,
    /// Its jittered end of life ([`Instant::MAX`] without a `max_lifetime`).
    pub(crate) expires: Instant,
    /// Checked out at least once since it was connected: `recycle` runs before the next use.
    pub(crate) used: bool,
    /// Ever returned to the pool after a use (never reset, unlike `used`).
    pub(crate) reused: bool,
    /// Ever kept in the idle set. A connection that fails a check having gone straight from
    /// its connect to that check says the backend is failing; one that sat idle, or was used,
    /// may just have gone stale (the server's own idle timeout), and its replacement's connect
    /// tells the truth about the backend.
    pub(crate) idled: bool,
    /// When it last went back to the pool (idle or handed over), or was connected: the idle
    /// order and `idle_timeout` run on this.
    pub(crate) since: Instant,
    /// When it was last known good: returned, connected or validated. Checkout tests and
    /// keepalive run on this.
    pub(crate) checked: Instant,
}

impl<T> Live<T> {
    /// Went straight from its connect to the check it is in: a failure says the backend is
    /// failing (see [`idled`](Live::idled)).
    pub(crate) fn fresh(&self) -> bool {
        !self.reused && !self.idled
    }
}

/// What a waiter's slot holds.
#[derive(Debug)]
enum Slot<T> {
    /// In line; woken through the waker when a connection is handed to it or the pool closes.
    Waiting(Option<Waker>),
    /// A connection was handed to it: from this moment it is the waiter's.
    Delivered(Live<T>),
    /// The pool closed while it waited.
    Closed,
}

/// A waiter's claim on its place in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    index: u32,
    generation: u32,
}

#[derive(Debug)]
struct Entry<T> {
    generation: u32,
    slot: Option<Slot<T>>,
}

/// The waiters in arrival order. A slab holds their slots; the line holds tickets, and a
/// waiter that leaves early only frees its slot (the stale ticket is skipped when it reaches
/// the front), so joining, leaving and serving are O(1) amortized.
#[derive(Debug)]
struct Line<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    order: VecDeque<Ticket>,
    /// Slots in state `Waiting`.
    waiting: usize,
}

impl<T> Line<T> {
    fn new() -> Line<T> {
        Line {
            entries: Vec::new(),
            free: Vec::new(),
            order: VecDeque::new(),
            waiting: 0,
        }
    }

    fn push(&mut self, waker: Option<Waker>, front: bool) -> Ticket {
        let ticket = match self.free.pop() {
            Some(index) => {
                let entry = &mut self.entries[index as usize];
                entry.slot = Some(Slot::Waiting(waker));
                Ticket {
                    index,
                    generation: entry.generation,
                }
            }
            None => {
                // A `Vec` of u32-indexed entries: 2^32 simultaneous waiters would exhaust memory first.
                let index = self.entries.len() as u32;
                self.entries.push(Entry {
                    generation: 0,
                    slot: Some(Slot::Waiting(waker)),
                });
                Ticket {
                    index,
                    generation: 0,
                }
            }
        };
        if front {
            self.order.push_front(ticket);
        } else {
            self.order.push_back(ticket);
        }
        self.waiting += 1;
        ticket
    }

    fn slot_mut(&mut self, ticket: Ticket) -> Option<&mut Slot<T>> {
        let entry = self.entries.get_mut(ticket.index as usize)?;
        if entry.generation != ticket.generation {
            return None;
        }
        entry.slot.as_mut()
    }

    /// Frees the ticket's slot and returns what it held.
    fn remove(&mut self, ticket: Ticket) -> Option<Slot<T>> {
        let entry = self.entries.get_mut(ticket.index as usize)?;
        if entry.generation != ticket.generation {
            return None;
        }
        let slot = entry.slot.take()?;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(ticket.index);
        if matches!(slot, Slot::Waiting(_)) {
            self.waiting -= 1;
            // Stale tickets pile up only when waiters leave from the middle; keep the line
            // within a constant factor of the live waiters.
            if self.order.len() > 2 * self.waiting + 32 {
                let entries = &self.entries;
                self.order.retain(|t| {
                    let e = &entries[t.index as usize];
                    e.generation == t.generation && matches!(e.slot, Some(Slot::Waiting(_)))
                });
            }
        }
        Some(slot)
    }

    /// The longest waiter still waiting, taken out of line (its slot stays, for the waiter to
    /// collect), with its waker.
    fn pop_waiting(&mut self) -> Option<(Ticket, Option<Waker>)> {
        while let Some(ticket) = self.order.pop_front() {
            if let Some(Slot::Waiting(waker)) = self.slot_mut(ticket) {
                let waker = waker.take();
                self.waiting -= 1;
                return Some((ticket, waker));
            }
        }
        None
    }
}

/// The outcome of asking for a connection.
#[derive(Debug)]
pub(crate) enum Checkout<T> {
    /// An idle connection, now checked out.
    Idle(Live<T>),
    /// In line; `connects` new connections were reserved for the caller to start.
    Wait { ticket: Ticket, connects: usize },
}

/// What a waiter finds when it looks at its slot.
#[derive(Debug)]
pub(crate) enum Poll<T> {
    /// Still in line; the caller starts this many connects (reserved for it and the waiters
    /// behind it, in case a connect was abandoned).
    Waiting(usize),
    Delivered(Live<T>),
    Closed,
}

/// Why a failed connect attempt stops or goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// Someone still needs the connection: back off and try again.
    Retry,
    /// Nobody needs it any more (or the pool closed): the slot was released.
    GiveUp,
}

/// Counters of what happened, for [`Metrics`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    pub(crate) created: u64,
    pub(crate) connect_failures: u64,
    pub(crate) timeouts: u64,
    pub(crate) leaks: u64,
    pub(crate) discarded: [u64; Discard::COUNT],
}

/// Connections the caller must drop once the lock is released (closing a socket is a syscall).
pub(crate) type Dropped<T> = Vec<T>;

/// The limits the state enforces (a copy of the config's).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_size: usize,
    pub(crate) min_idle: usize,
    pub(crate) max_connecting: usize,
    /// Idle connections older than this (in idle time) are reaped, above `min_idle`.
    pub(crate) idle_timeout: Option<u64>,
}

/// Everything the lock protects.
#[derive(Debug)]
pub(crate) struct State<T, E> {
    limits: Limits,
    /// Idle connections, least recently used at the front, most recently used at the back.
    idle: VecDeque<Live<T>>,
    line: Line<T>,
    /// Connections that exist or are being connected: never above `max_size`.
    size: usize,
    /// Of `size`, those being connected.
    connecting: usize,
    /// Of `size`, those out of the pool for a keepalive check.
    checking: usize,
    /// Of `size`, those discarded but not yet dropped: a slot is released only once its
    /// connection is closed, so the backend never sees more than `max_size` at once.
    closing: usize,
    /// Consecutive failed connect attempts and failed checks of [fresh](Live::fresh)
    /// connections (0 once a connect succeeds): whether a `get()` that times out blames the
    /// backend.
    failures: u32,
    /// The same failures, counted since a connection last proved the backend works (it came
    /// back after a use, passed a keepalive check, or passed its first check as a new
    /// connection): the step of the connect backoff schedule. A connect alone does not reset
    /// it, or a backend that accepts connections and fails every check would be probed at the
    /// schedule's first step forever.
    unproven: u32,
    /// No connect attempt starts before this instant: the pool-wide backoff after a failure.
    /// A connect task that starts long after the last failure does not pause at all.
    retry_at: Instant,
    pub(crate) last_error: Option<StdArc<Failure<E>>>,
    closed: bool,
    pub(crate) counters: Counters,
    /// Checked-out connections, recorded only with leak detection on.
    out: Vec<Option<Out>>,
    out_free: Vec<u32>,
}

/// A checked-out connection, as leak detection tracks it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Out {
    pub(crate) since: Instant,
    pub(crate) site: &'static Location<'static>,
    /// Already reported as a suspected leak.
    pub(crate) reported: bool,
}

impl<T, E> State<T, E> {
    pub(crate) fn new(limits: Limits) -> State<T, E> {
        State {
            limits,
            idle: VecDeque::new(),
            line: Line::new(),
            size: 0,
            connecting: 0,
            checking: 0,
            closing: 0,
            failures: 0,
            unproven: 0,
            retry_at: Instant::ZERO,
            last_error: None,
            closed: false,
            counters: Counters::default(),
            out: Vec::new(),
            out_free: Vec::new(),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Failures since a connection last proved the backend works: the step of the connect
    /// backoff schedule the next pause follows.
    pub(crate) fn unproven(&self) -> u32 {
        self.unproven
    }

    /// A connection passed a check: the backend works, so the next failure backs off from the
    /// schedule's first step again.
    pub(crate) fn proven(&mut self) {
        self.unproven = 0;
    }

    /// When the next connect attempt may start.
    pub(crate) fn retry_at(&self) -> Instant {
        self.retry_at
    }

    /// Pushes the next connect attempt back to `at` (never earlier than already set).
    pub(crate) fn back_off_until(&mut self, at: Instant) {
        self.retry_at = self.retry_at.max(at);
    }

    /// Live connections, idle or checked out, plus those being connected.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Checked-out connections (the pool's own keepalive checks excluded).
    pub(crate) fn in_use(&self) -> usize {
        self.size - self.idle.len() - self.connecting - self.checking - self.closing
    }

    pub(crate) fn metrics(&self) -> Metrics {
        Metrics {
            max_size: self.limits.max_size,
            size: self.size,
            idle: self.idle.len(),
            in_use: self.in_use(),
            connecting: self.connecting,
            checking: self.checking,
            waiters: self.line.waiting,
            created: self.counters.created,
            connect_failures: self.counters.connect_failures,
            timeouts: self.counters.timeouts,
            leaks: self.counters.leaks,
            discarded: self.counters.discarded,
        }
    }

    /// Why an idle connection must go: its lifetime, or (while more than `min_idle` other
    /// connections are idle, HikariCP's rule) its idle time.
    fn expired(&self, live: &Live<T>, now: Instant, idle_others: usize) -> Option<Discard> {
        if now >= live.expires {
            return Some(Discard::Expired);
        }
        match self.limits.idle_timeout {
            Some(limit)
                if idle_others >= self.limits.min_idle
                    && now.as_nanos().saturating_sub(live.since.as_nanos()) >= limit =>
            {
                Some(Discard::IdleTimeout)
            }
            _ => None,
        }
    }

    /// Takes the most recently used idle connection that has not expired, or joins the line
    /// (reserving the connects it needs). Expired idle connections met on the way, and the
    /// least recently used one if it expired, go to `dropped`.
    #[inline]
    pub(crate) fn checkout(
        &mut self,
        now: Instant,
        waker: Option<Waker>,
        front: bool,
        dropped: &mut Dropped<T>,
    ) -> Result<Checkout<T>, Closed> {
        if self.closed {
            return Err(Closed);
        }
        // Amortized reaping: the oldest idle connection is the likeliest to have expired.
        if self.idle.len() > 1
            && let Some(oldest) = self.idle.front()
            && let Some(reason) = self.expired(oldest, now, self.idle.len() - 1)
        {
            let live = self.idle.pop_front().expect("front exists");
            dropped.push(self.discard(live, reason));
        }
        // Only the lifetime stops an idle connection from going out: one past its idle
        // timeout is still good, and about to be used.
        while let Some(live) = self.idle.pop_back() {
            if now < live.expires {
                return Ok(Checkout::Idle(live));
            }
            dropped.push(self.discard(live, Discard::Expired));
        }
        let ticket = self.line.push(waker, front);
        let connects = self.reserve_connects();
        Ok(Checkout::Wait { ticket, connects })
    }

    /// Reserves slots for the connects that waiters and `min_idle` need and the limits allow;
    /// returns how many the caller must start.
    pub(crate) fn reserve_connects(&mut self) -> usize {
        if self.closed {
            return 0;
        }
        let mut n = 0;
        while self.size < self.limits.max_size
            && self.connecting < self.limits.max_connecting
            && (self.line.waiting > self.connecting
                || self.idle.len() + self.checking + self.connecting < self.limits.min_idle)
        {
            self.size += 1;
            self.connecting += 1;
            n += 1;
        }
        n
    }

    /// What the waiter holding `ticket` has, updating its waker if it still waits. A delivered
    /// connection or a close frees the slot.
    pub(crate) fn poll_waiter(&mut self, ticket: Ticket, waker: &Waker) -> Poll<T> {
        match self.line.slot_mut(ticket) {
            Some(Slot::Waiting(slot)) => {
                if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *slot = Some(waker.clone());
                }
                Poll::Waiting(self.reserve_connects())
            }
            Some(Slot::Delivered(_)) | Some(Slot::Closed) => match self.line.remove(ticket) {
                Some(Slot::Delivered(live)) => Poll::Delivered(live),
                _ => Poll::Closed,
            },
            None => Poll::Closed,
        }
    }

    /// A waiter gives up (dropped, or its deadline passed). A connection handed to it in the
    /// meantime is returned: `Some` if the waiter should keep it after all (`keep`), else
    /// it goes to the next waiter or the idle set, and any wakers to call are pushed to `wake`.
    pub(crate) fn leave(
        &mut self,
        ticket: Ticket,
        keep: bool,
        now: Instant,
        dropped: &mut Dropped<T>,
    ) -> (Option<Live<T>>, Option<Waker>) {
        match self.line.remove(ticket) {
            Some(Slot::Delivered(live)) if keep => (Some(live), None),
            // Not used by the waiter: it goes on exactly as it came.
            Some(Slot::Delivered(live)) => (None, self.place(live, now, dropped)),
            _ => (None, None),
        }
    }

    /// Puts a connection that is fit for use back: to the longest waiter, else on top of the
    /// idle set; discarded instead if it expired or the pool closed.
    #[must_use = "the waker of the waiter served must be woken"]
    #[inline(always)]
    fn place(&mut self, live: Live<T>, now: Instant, dropped: &mut Dropped<T>) -> Option<Waker> {
        match self.place_one(live, now) {
            Ok(waker) => waker,
            Err(conn) => {
                dropped.push(conn);
                None
            }
        }
    }

    /// [`place`](State::place), with a discarded connection returned as `Err` for the caller
    /// to drop once the lock is released.
    #[inline(always)]
    fn place_one(&mut self, mut live: Live<T>, now: Instant) -> Result<Option<Waker>, T> {
        if self.closed {
            return Err(self.discard(live, Discard::Closed));
        }
        if now >= live.expires {
            return Err(self.discard(live, Discard::Expired));
        }
        // Nobody waits (tickets left in `order` by waiters that left are stale): straight to
        // the idle set.
        if self.line.waiting == 0 {
            live.idled = true;
            self.idle.push_back(live);
            return Ok(None);
        }
        match self.line.pop_waiting() {
            Some((ticket, waker)) => {
                if let Some(slot) = self.line.slot_mut(ticket) {
                    *slot = Slot::Delivered(live);
                }
                Ok(waker)
            }
            None => {
                live.idled = true;
                self.idle.push_back(live);
                Ok(None)
            }
        }
    }

    /// A checked-out connection comes back, fit for use: `Ok` with the waker of the waiter it
    /// went to, if any, or `Err` with the connection, discarded (expired, or the pool closed),
    /// for the caller to drop once the lock is released and then [`release`](State::release).
    #[must_use = "the waker of the waiter served must be woken"]
    #[inline]
    pub(crate) fn checkin(&mut self, mut live: Live<T>, now: Instant) -> Result<Option<Waker>, T> {
        live.used = true;
        live.reused = true;
        live.since = now;
        live.checked = now;
        self.proven();
        self.place_one(live, now)
    }

    /// Records why a connection is discarded and returns it for the caller to drop; its slot
    /// stays taken (as `closing`) until [`release`](State::release).
    fn discard(&mut self, live: Live<T>, reason: Discard) -> T {
        self.closing += 1;
        self.counters.discarded[reason as usize] += 1;
        live.conn
    }

    /// `n` connections discarded by [`discard`](State::discard) are closed: their slots are
    /// free. Returns how many connects to start in their place.
    pub(crate) fn release(&mut self, n: usize) -> usize {
        self.size -= n;
        self.closing -= n;
        self.reserve_connects()
    }

    /// A checked-out (or keepalive-checked) connection was discarded and is closed. Returns how
    /// many connects to start in its place.
    pub(crate) fn discard_out(&mut self, reason: Discard, from_check: bool) -> usize {
        self.size -= 1;
        if from_check {
            self.checking -= 1;
        }
        self.counters.discarded[reason as usize] += 1;
        self.reserve_connects()
    }

    /// A connect finished: the new connection goes to the longest waiter or the idle set.
    /// Returns the waker to call and how many further connects to start (waiters that
    /// arrived while this one was in flight).
    #[must_use = "the waker of the waiter served must be woken"]
    pub(crate) fn connected(
        &mut self,
        live: Live<T>,
        dropped: &mut Dropped<T>,
    ) -> (Option<Waker>, usize) {
        self.connecting -= 1;
        // `unproven` stays: this connection has yet to pass a check or come back after a use.
        self.failures = 0;
        self.retry_at = Instant::ZERO;
        self.counters.created += 1;
        let now = live.since;
        let waker = self.place(live, now, dropped);
        (waker, self.reserve_connects())
    }

    /// A connect attempt failed. While waiters (or `min_idle`) still need the connection the
    /// task retries after a backoff; otherwise its slot is released.
    pub(crate) fn connect_failed(&mut self, failure: Failure<E>) -> AfterFailure {
        self.failures = self.failures.saturating_add(1);
        self.unproven = self.unproven.saturating_add(1);
        self.counters.connect_failures += 1;
        self.last_error = Some(StdArc::new(failure));
        self.still_needed()
    }

    /// Whether a connect task (one of `connecting`) should go on; if not, its slot is released.
    pub(crate) fn still_needed(&mut self) -> AfterFailure {
        let needed = self.line.waiting
            + self
                .limits
                .min_idle
                .saturating_sub(self.idle.len() + self.checking);
        // The other connect tasks may cover the need.
        if self.closed || needed < self.connecting {
            self.size -= 1;
            self.connecting -= 1;
            AfterFailure::GiveUp
        } else {
            AfterFailure::Retry
        }
    }

    /// A connect task stopped without a connection (it could not be spawned, its runtime shut
    /// down, or it panicked). Its slot is freed; the longest waiter's waker is returned so that
    /// it wakes and starts a connect from its own runtime.
    #[must_use = "the longest waiter must be woken to start a connect"]
    pub(crate) fn connect_abandoned(&mut self) -> Option<Waker> {
        self.size -= 1;
        self.connecting -= 1;
        let line = &self.line;
        line.order.iter().find_map(|ticket| {
            let entry = line.entries.get(ticket.index as usize)?;
            match &entry.slot {
                Some(Slot::Waiting(waker)) if entry.generation == ticket.generation => {
                    waker.clone()
                }
                _ => None,
            }
        })
    }

    /// Records a failed validation or recycle (the connection is discarded separately). For a
    /// `fresh` connection ([`Live::fresh`]: straight from its connect) it counts as a failure of
    /// the backend: replacements follow the connect backoff, so a backend that accepts
    /// connections but fails every check is not hammered with connects. A connection that
    /// failed after sitting idle or after a use is just stale (the server's idle timeout, a
    /// restart, a middlebox): its replacement is not delayed.
    pub(crate) fn record_error(&mut self, failure: Failure<E>, fresh: bool) {
        if fresh {
            self.failures = self.failures.saturating_add(1);
            self.unproven = self.unproven.saturating_add(1);
        }
        self.last_error = Some(StdArc::new(failure));
    }

    /// Counts a `get` that ran out of time.
    pub(crate) fn timed_out(&mut self) {
        self.counters.timeouts += 1;
    }

    /// The least recently checked idle connection not known good for `after` nanoseconds,
    /// taken out for a keepalive check (it counts as `checking` until
    /// [`checked`](State::checked)). One at a time, so the others stay available meanwhile.
    pub(crate) fn take_for_keepalive(&mut self, now: Instant, after: u64) -> Option<Live<T>> {
        let stale =
            |live: &Live<T>| now.as_nanos().saturating_sub(live.checked.as_nanos()) >= after;
        let index = self
            .idle
            .iter()
            .enumerate()
            .filter(|(_, live)| stale(live))
            .min_by_key(|(_, live)| live.checked)
            .map(|(i, _)| i)?;
        let live = self.idle.remove(index)?;
        self.checking += 1;
        Some(live)
    }

    /// A connection that passed its keepalive check goes back to its place in the idle order
    /// (a check is not a use: it neither counts as one nor delays `idle_timeout`).
    #[must_use = "the waker of the waiter served must be woken"]
    pub(crate) fn checked(
        &mut self,
        mut live: Live<T>,
        now: Instant,
        dropped: &mut Dropped<T>,
    ) -> Option<Waker> {
        self.checking -= 1;
        self.proven();
        live.checked = now;
        if self.line.waiting > 0 || self.closed || now >= live.expires {
            return self.place(live, now, dropped);
        }
        let at = self.idle.partition_point(|other| other.since <= live.since);
        self.idle.insert(at, live);
        None
    }

    /// Discards every idle connection that expired (by lifetime, or by idle time above
    /// `min_idle`).
    pub(crate) fn reap(&mut self, now: Instant, dropped: &mut Dropped<T>) {
        let mut i = 0;
        while i < self.idle.len() {
            match self.expired(&self.idle[i], now, self.idle.len() - 1) {
                Some(reason) => {
                    let live = self.idle.remove(i).expect("index in range");
                    dropped.push(self.discard(live, reason));
                }
                None => i += 1,
            }
        }
    }

    /// Closes the pool: idle connections go to `dropped`, waiters are told. Returns whether
    /// this call closed it.
    pub(crate) fn close(&mut self, wake: &mut Vec<Waker>, dropped: &mut Dropped<T>) -> bool {
        if self.closed {
            return false;
        }
        self.closed = true;
        while let Some(live) = self.idle.pop_front() {
            dropped.push(self.discard(live, Discard::Closed));
        }
        while let Some((ticket, waker)) = self.line.pop_waiting() {
            if let Some(slot) = self.line.slot_mut(ticket) {
                *slot = Slot::Closed;
            }
            wake.extend(waker);
        }
        true
    }

    /// Connections still out of the pool after a close (checked out or being checked).
    pub(crate) fn outstanding(&self) -> usize {
        self.size - self.connecting
    }

    /// Records a checkout for leak detection; the index goes back in [`returned`](State::returned).
    pub(crate) fn checked_out(&mut self, since: Instant, site: &'static Location<'static>) -> u32 {
        let out = Some(Out {
            since,
            site,
            reported: false,
        });
        match self.out_free.pop() {
            Some(index) => {
                self.out[index as usize] = out;
                index
            }
            None => {
                self.out.push(out);
                (self.out.len() - 1) as u32
            }
        }
    }

    /// The checkout record `index` ends.
    pub(crate) fn returned(&mut self, index: u32) -> Option<Out> {
        let out = self.out.get_mut(index as usize)?.take();
        if out.is_some() {
            self.out_free.push(index);
        }
        out
    }

    /// Checkouts held for `threshold` nanoseconds or more and not yet reported; marks them
    /// reported.
    pub(crate) fn suspected_leaks(&mut self, now: Instant, threshold: u64) -> Vec<Out> {
        let mut found = Vec::new();
        for out in self.out.iter_mut().flatten() {
            if !out.reported && now.as_nanos().saturating_sub(out.since.as_nanos()) >= threshold {
                out.reported = true;
                found.push(*out);
            }
        }
        self.counters.leaks += found.len() as u64;
        found
    }
}

/// The pool is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;
