//! Deadlock-safe locking for a service with shared state: a small bank whose transfers touch
//! bank-wide rules, two accounts and a journal, and whose notifications go out from async tasks.
//!
//! ```text
//! cargo run --example lock_ordering --features lock
//! ```
//!
//! What it shows, in order:
//!
//! 1. **Lock levels, checked by the compiler.** `Settings` is taken before `Journal` (and the
//!    async `Flush`, `Subscribers`, `Outbox` in that order); the other way round does not
//!    build. The error is quoted in `Bank::transfer`.
//! 2. **The runtime detector** catching a lock-order inversion between two threads. Transfers take
//!    an account, then the journal; a statement export written later takes the journal, then the
//!    accounts. The two threads never overlap and nothing blocks, yet the inversion is reported
//!    the first time the export runs, naming every call site, long before it deadlocks in
//!    production.
//! 3. **`lock_all` for two locks of one class.** The naive transfer (lock `from`, then `to`) is
//!    reported at once; `lock_all` takes both accounts in one global order and never blocks
//!    while holding one of them, so two threads transferring in opposite directions never
//!    deadlock.
//! 4. **Timeouts that name the holder.** A transfer waits for its accounts at most
//!    `lock_timeout`, then answers "busy" with an error naming the line that holds the account.
//!    A sync lock blocks the thread that waits for it, so an async request handler runs the
//!    transfer on tokio's blocking pool (`Bank::transfer_async`), never on a runtime worker.
//! 5. **Async (tokio) locks.** A notification flush holds a leveled async lock across `.await`
//!    while it delivers, each send bounded by a timeout; an admin endpoint on another task asks
//!    with a timeout of its own and learns who holds the flush. `notify` and `subscribe` take
//!    the other locks only for a push, so they never wait behind a slow subscriber, and one that
//!    stops reading is dropped instead of stalling every flush.
//!
//! The detector is compiled into debug builds (palisade-lock's `detect` feature, on by default).
//! Its default mode panics at the bad acquisition, which is what a test suite wants. This
//! example installs a callback that collects the reports to print them; a service in staging
//! would rather use `Mode::Log` (a `tracing` error event, target `palisade_lock`).
//!
//! Copy `Bank` and `Notifier` as the pattern: levels for the few long-lived locks, one class
//! for the many locks of a kind (accounts), `lock_all` whenever a path needs several of those,
//! timed acquisitions where a request must answer within a deadline, sync locks waited for off
//! the async runtime, and async locks held across `.await` only for a bounded time. Not the
//! `DON'T` methods, nor `month_end_statement`, which holds an account while it renders only so
//! that step 4 has a holder to name.

use std::collections::VecDeque;
use std::error::Error;
use std::fmt;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use palisade::lock::detect::{self, Mode, Report};
use palisade::lock::ordered::{self, Ctx};
use palisade::lock::{LockTimeout, Mutex, lock_all, lock_all_for};
use tokio::sync::mpsc;

palisade::lock::lock_levels! {
    /// Bank-wide rules: taken first, read by every transfer.
    Settings,
    /// The journal every movement of money is written to: the last sync lock taken.
    Journal,
    /// The batch a flush is delivering (async): held across `.await` for the whole delivery,
    /// so that notifications go out in order, one flush at a time. Every send in it is bounded
    /// by a timeout, so it is held for a bounded time.
    Flush,
    /// Who gets notified of movements (async): held to copy or change the list, never across a
    /// send.
    Subscribers,
    /// Notifications queued for the next flush (async): held to push or take them, never
    /// across a send.
    Outbox,
}

/// One customer account.
///
/// Every account's lock is built with `Mutex::named("account", ..)`, so all of them are one
/// *class* for the detector: one node in its order graph however many accounts there are, and
/// an order learnt on any two accounts covers them all.
#[derive(Debug)]
struct Account {
    /// Who owns it, for the journal.
    owner: &'static str,
    /// The balance.
    balance: i64,
}

/// Bank-wide rules, read by every transfer and changed by an administrator.
#[derive(Debug)]
struct Rules {
    /// The most one transfer may move.
    max_transfer: i64,
}

/// Why a transfer did not happen.
#[derive(Debug)]
enum TransferError {
    /// Bad input: an unknown account, the same account twice, an amount that is not positive.
    Invalid(&'static str),
    /// Over the bank's per-transfer limit.
    OverLimit {
        /// The amount asked for.
        amount: i64,
        /// The limit in force.
        limit: i64,
    },
    /// The source account holds less than the amount.
    InsufficientFunds {
        /// Its balance.
        balance: i64,
        /// The amount asked for.
        amount: i64,
    },
    /// An account stayed locked for the whole `lock_timeout`: answer "busy, try again" (HTTP
    /// 503) rather than hold the request. The error names the code that holds the lock.
    Busy(LockTimeout),
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::Invalid(why) => write!(f, "invalid transfer: {why}"),
            TransferError::OverLimit { amount, limit } => {
                write!(f, "{amount} is over the transfer limit of {limit}")
            }
            TransferError::InsufficientFunds { balance, amount } => {
                write!(
                    f,
                    "insufficient funds: balance {balance}, transfer {amount}"
                )
            }
            TransferError::Busy(timeout) => write!(f, "busy: {timeout}"),
        }
    }
}

impl Error for TransferError {}

/// The bank's shared state, behind an `Arc` in every request handler and background job.
///
/// Its locks are sync (parking_lot) locks, and every method may wait for one, blocking its
/// thread: a transfer up to `lock_timeout`. Threads call them directly; async code (a tokio
/// request handler) goes through `transfer_async`, which waits on tokio's blocking pool. Called
/// on a runtime worker, the wait would stall every task queued on that worker with it.
///
/// The lock order, from first to last: `rules` (level `Settings`), the accounts (class
/// `account`, always taken together with `lock_all`), `journal` (level `Journal`). The compiler
/// checks the levels; the runtime detector checks everything, accounts included.
#[derive(Debug)]
struct Bank {
    /// The rules, at level `Settings`.
    rules: ordered::RwLock<Settings, Rules>,
    /// The accounts, each behind its own lock so that transfers between different accounts
    /// run in parallel.
    accounts: Vec<Mutex<Account>>,
    /// The journal, at level `Journal`.
    journal: ordered::Mutex<Journal, Vec<String>>,
    /// How long a transfer waits for its two accounts before answering `Busy`.
    lock_timeout: Duration,
}

impl Bank {
    /// A bank with these accounts (owner, opening balance).
    fn new(accounts: &[(&'static str, i64)], max_transfer: i64, lock_timeout: Duration) -> Bank {
        Bank {
            rules: ordered::RwLock::new(Rules { max_transfer }),
            accounts: accounts
                .iter()
                .map(|&(owner, balance)| Mutex::named("account", Account { owner, balance }))
                .collect(),
            journal: ordered::Mutex::new(Vec::new()),
            lock_timeout,
        }
    }

    /// Moves `amount` from account `from` to account `to`, and journals it.
    ///
    /// Deadlock-free whatever other threads do: the rules are read first (level `Settings`),
    /// both accounts are taken together with `lock_all_for` (one global order, never blocking
    /// while holding one of them), and the journal comes last (level `Journal`).
    ///
    /// Blocks the calling thread for up to `lock_timeout`: from async code, use
    /// `transfer_async`.
    fn transfer(&self, from: usize, to: usize, amount: i64) -> Result<(), TransferError> {
        let (Some(src), Some(dst)) = (self.accounts.get(from), self.accounts.get(to)) else {
            return Err(TransferError::Invalid("no such account"));
        };
        if from == to {
            // `lock_all` panics on a lock given twice: it would wait for itself.
            return Err(TransferError::Invalid("the same account on both sides"));
        }
        if amount <= 0 {
            return Err(TransferError::Invalid("the amount must be positive"));
        }
        let mut root = Ctx::root();
        // Held for the whole transfer, so an administrator's change of the limit waits for the
        // transfers in flight instead of racing them.
        let (rules, mut ctx) = self.rules.read(&mut root);
        if amount > rules.max_transfer {
            return Err(TransferError::OverLimit {
                amount,
                limit: rules.max_transfer,
            });
        }
        let (mut src, mut dst) =
            lock_all_for((src, dst), self.lock_timeout).map_err(TransferError::Busy)?;
        if src.balance < amount {
            return Err(TransferError::InsufficientFunds {
                balance: src.balance,
                amount,
            });
        }
        src.balance -= amount;
        dst.balance += amount;
        // The journal last. The compiler holds us to it: with the journal taken first,
        //
        //     let (journal, mut ctx) = self.journal.lock(&mut root);
        //     let (rules, _) = self.rules.read(&mut ctx);
        //
        // does not build:
        //
        //     error[E0277]: `Settings` cannot be locked while holding `Journal`: lock levels
        //                   are taken in the order `lock_levels!` declares them
        //
        // (Nor does reusing `root` while `rules` is held: the context is borrowed by it.)
        let (mut journal, _ctx) = self.journal.lock(&mut ctx);
        journal.push(format!("{} -> {}: {amount}", src.owner, dst.owner));
        Ok(())
    }

    /// `transfer`, for async code such as a tokio request handler: runs it on tokio's blocking
    /// pool, so that its wait for the accounts (up to `lock_timeout`) blocks a thread made for
    /// that, not a runtime worker and every task queued there. The locks can stay sync: none is
    /// held across an `.await`.
    async fn transfer_async(
        self: Arc<Self>,
        from: usize,
        to: usize,
        amount: i64,
    ) -> Result<(), TransferError> {
        match tokio::task::spawn_blocking(move || self.transfer(from, to, amount)).await {
            Ok(result) => result,
            // Only the transfer's panic gets here (a blocking task cannot be aborted, and a
            // runtime shutting down drops this future with it): carry it on, as a direct call
            // would.
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }

    /// Changes the transfer limit, and journals it: `Settings` (written), then `Journal`.
    fn set_limit(&self, max_transfer: i64) {
        let mut root = Ctx::root();
        let (mut rules, mut ctx) = self.rules.write(&mut root);
        let old = std::mem::replace(&mut rules.max_transfer, max_transfer);
        let (mut journal, _ctx) = self.journal.lock(&mut ctx);
        journal.push(format!("limit {old} -> {max_transfer}"));
    }

    /// DON'T: the transfer as first written. Two threads running `naive_transfer(a, b, ..)`
    /// and `naive_transfer(b, a, ..)` at once each take their first account and wait for the
    /// other's, forever. The detector reports it the first time it runs, even on one thread:
    /// two locks of one class held at once have no defined order.
    fn naive_transfer(&self, from: usize, to: usize, amount: i64) {
        let mut src = self.accounts[from].lock();
        let mut dst = self.accounts[to].lock();
        src.balance -= amount;
        dst.balance += amount;
    }

    /// DON'T: a statement export written months after `transfer`. It holds the journal while
    /// it reads each account, the opposite of `transfer`'s order (account, then journal): run
    /// at the same moment as a transfer, each can hold what the other waits for. The compiler
    /// cannot see it (accounts have no level); the detector reports it the first time it runs.
    fn statement_journal_first(&self) -> String {
        let mut root = Ctx::root();
        let (journal, _ctx) = self.journal.lock(&mut root);
        let balances: Vec<String> = self
            .accounts
            .iter()
            .map(|account| {
                let account = account.lock();
                format!("{} {}", account.owner, account.balance)
            })
            .collect();
        format!(
            "{} ({} journal entries)",
            balances.join(", "),
            journal.len()
        )
    }

    /// The fix: `transfer`'s order. Every account at once (a consistent snapshot: no transfer
    /// can run between two reads), then the journal.
    fn statement(&self) -> String {
        let accounts = lock_all(self.accounts.iter().collect::<Vec<_>>());
        let mut root = Ctx::root();
        let (journal, _ctx) = self.journal.lock(&mut root);
        let balances: Vec<String> = accounts
            .iter()
            .map(|account| format!("{} {}", account.owner, account.balance))
            .collect();
        format!(
            "{} ({} journal entries)",
            balances.join(", "),
            journal.len()
        )
    }

    /// The month-end statement of one account: holds the account while `render` runs. A slow
    /// `render` (a PDF, a call to another service) keeps transfers of that account waiting;
    /// the `Busy` error they get names this function's `lock()` line.
    fn month_end_statement(&self, account: usize, render: impl FnOnce(&Account)) {
        let account = self.accounts[account].lock();
        render(&account);
    }

    /// The sum of every balance (a consistent snapshot, taken with `lock_all`).
    fn total(&self) -> i64 {
        lock_all(self.accounts.iter().collect::<Vec<_>>())
            .iter()
            .map(|account| account.balance)
            .sum()
    }
}

/// Notifications of account movements, delivered to subscribers by an async flush.
///
/// Three tokio locks at levels (`Flush`, `Subscribers`, `Outbox`). Only the flush's is held
/// across the sends, and only for a bounded time: every send waits at most `send_timeout` for
/// room, and a subscriber that lets it run out is dropped. The other two are held for a copy or
/// a push, so `notify` and `subscribe` never wait behind a slow subscriber.
#[derive(Debug)]
struct Notifier {
    /// The batch a flush is delivering, oldest first: taken from the outbox, emptied as it goes
    /// out. What a cancelled flush leaves here goes out first on the next flush.
    in_flight: ordered::AsyncMutex<Flush, VecDeque<String>>,
    /// The subscribers' channels.
    subscribers: ordered::AsyncRwLock<Subscribers, Vec<mpsc::Sender<String>>>,
    /// Notifications queued for the next flush, oldest first.
    outbox: ordered::AsyncMutex<Outbox, VecDeque<String>>,
    /// How long a send waits for room in a subscriber's channel before that subscriber is
    /// dropped.
    send_timeout: Duration,
}

/// What a flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flushed {
    /// Notifications that went out to every subscriber still subscribed.
    delivered: usize,
    /// Subscribers dropped: gone (receiver dropped), or too slow (a send timed out).
    dropped: usize,
}

impl Notifier {
    /// A notifier with no subscriber and nothing queued, whose sends wait at most
    /// `send_timeout` for a subscriber to make room.
    fn new(send_timeout: Duration) -> Notifier {
        Notifier {
            in_flight: ordered::AsyncMutex::new(VecDeque::new()),
            subscribers: ordered::AsyncRwLock::new(Vec::new()),
            outbox: ordered::AsyncMutex::new(VecDeque::new()),
            send_timeout,
        }
    }

    /// A new subscriber, whose channel holds `capacity` undelivered notifications. If it stays
    /// full for the send timeout, the subscriber is dropped: the receiver sees the end of the
    /// stream (`recv` returns `None`), and subscribes again to go on.
    async fn subscribe(&self, capacity: usize) -> mpsc::Receiver<String> {
        let (tx, rx) = mpsc::channel(capacity);
        let mut root = Ctx::root();
        let (mut subscribers, _ctx) = self.subscribers.write(&mut root).await;
        subscribers.push(tx);
        rx
    }

    /// Queues a notification for the next flush.
    async fn notify(&self, message: impl Into<String>) {
        let mut root = Ctx::root();
        let (mut outbox, _ctx) = self.outbox.lock(&mut root).await;
        outbox.push_back(message.into());
    }

    /// Delivers every queued notification to every subscriber, in order.
    ///
    /// One flush at a time: the `Flush` lock is held across the sends. The subscriber list and
    /// the outbox are held only to copy the one and take the batch from the other, then
    /// released before the first send. Each send waits at most `send_timeout`; a subscriber
    /// that stays full that long (connected, but not reading) or whose receiver is gone gets
    /// nothing more and is dropped from the list. So every send of a flush is bounded, though
    /// a subscriber that reads just in time at each send can keep one waiting up to
    /// `send_timeout` per message.
    ///
    /// At least once, and cancel-safe: a notification leaves the in-flight batch only once
    /// every subscriber has it (or was dropped), so the rest of a flush dropped mid-way goes
    /// out first on the next flush, possibly a second time to some subscribers.
    async fn flush(&self) -> Flushed {
        let mut root = Ctx::root();
        let (mut batch, mut ctx) = self.in_flight.lock(&mut root).await;
        let subscribers = {
            let (subscribers, mut ctx) = self.subscribers.read(&mut ctx).await;
            let (mut outbox, _ctx) = self.outbox.lock(&mut ctx).await;
            batch.extend(outbox.drain(..));
            subscribers.clone()
        };
        let mut dropped: Vec<mpsc::Sender<String>> = Vec::new();
        let mut delivered = 0;
        while let Some(message) = batch.front() {
            for subscriber in &subscribers {
                if dropped.iter().any(|d| d.same_channel(subscriber)) {
                    continue;
                }
                let sent = subscriber
                    .send_timeout(message.clone(), self.send_timeout)
                    .await;
                if sent.is_err() {
                    // Closed, or full for the whole timeout: either way, it is done.
                    dropped.push(subscriber.clone());
                }
            }
            batch.pop_front();
            delivered += 1;
        }
        let (mut list, _ctx) = self.subscribers.write(&mut ctx).await;
        let before = list.len();
        // Also those that went away since, so the list never keeps a closed channel for long.
        list.retain(|s| !s.is_closed() && !dropped.iter().any(|d| d.same_channel(s)));
        Flushed {
            delivered,
            dropped: before - list.len(),
        }
    }

    /// For an admin endpoint: how many notifications wait (in a flush under way and queued),
    /// or, if a flush keeps its batch for all of `timeout`, an error naming the code that
    /// holds it.
    async fn pending(&self, timeout: Duration) -> Result<usize, LockTimeout> {
        let mut root = Ctx::root();
        let (batch, mut ctx) = self.in_flight.try_lock_for(&mut root, timeout).await?;
        let (outbox, _ctx) = self.outbox.lock(&mut ctx).await;
        Ok(batch.len() + outbox.len())
    }
}

/// The detector's reports, collected by the callback `main` installs.
static REPORTS: std::sync::Mutex<Vec<Report>> = std::sync::Mutex::new(Vec::new());

/// Prints the reports collected since the last call, indented; returns how many there were.
fn print_new_reports() -> usize {
    let reports = std::mem::take(&mut *REPORTS.lock().unwrap_or_else(PoisonError::into_inner));
    for report in &reports {
        for line in report.to_string().lines() {
            println!("     | {line}");
        }
    }
    reports.len()
}

/// Runs the five steps, printing what happens; exits 0.
fn main() -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    if detect::is_enabled() {
        // The default, `Mode::Panic`, fails a test at the bad line. Here: collect and print.
        detect::set_mode(Mode::callback(|report| {
            REPORTS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(report.clone());
        }));
    } else {
        println!("(lock-order detection is compiled out of this release build: steps 2 and 3");
        println!(" report nothing; run a debug build, or enable `lock-detect-release`)");
        println!();
    }

    // In a service a transfer's lock timeout would be its request's remaining deadline (a
    // second, say), waited out on a blocking-pool thread when the request is async (step 4).
    // 50 ms keeps step 4, whose whole point is to wait out the timeout, short.
    let bank = Arc::new(Bank::new(
        &[("alice", 5_000), ("bob", 5_000), ("carol", 100)],
        500,
        Duration::from_millis(50),
    ));

    println!("1. Lock levels: rules (Settings) -> accounts -> journal (Journal)");
    bank.transfer(0, 1, 30)?;
    bank.transfer(1, 2, 5)?;
    bank.set_limit(20);
    match bank.transfer(0, 2, 25) {
        Err(e @ TransferError::OverLimit { .. }) => println!("   refused as it should be: {e}"),
        other => return Err(format!("expected the limit to refuse it, got {other:?}").into()),
    }
    println!("   {}", bank.statement());
    println!("   (taking Journal before Settings is a compile error, quoted in Bank::transfer)");
    println!("   reports: {}", print_new_reports());
    println!();

    println!("2. The detector: an order inversion between two threads, before any deadlock");
    println!("   thread `transfers` takes an account, then the journal (as in step 1);");
    let transfers = thread::spawn({
        let bank = Arc::clone(&bank);
        move || bank.transfer(2, 0, 1)
    });
    transfers
        .join()
        .map_err(|_| "the transfer thread panicked")??;
    println!("   thread `export`, run afterwards, takes the journal, then the accounts:");
    let export = thread::spawn({
        let bank = Arc::clone(&bank);
        move || bank.statement_journal_first()
    });
    let exported = export.join().map_err(|_| "the export thread panicked")?;
    println!("   export finished ({exported}); the detector said:");
    let found = print_new_reports();
    println!("   reports: {found}; the fix, `Bank::statement`, takes the accounts first:");
    println!("   {}", bank.statement());
    println!("   reports: {}", print_new_reports());
    println!();

    println!("3. Two locks of one class: a transfer between two accounts");
    println!("   the naive transfer (lock `from`, then `to`), once, on one thread:");
    bank.naive_transfer(1, 2, 1);
    println!("   reports: {}", print_new_reports());
    let total = bank.total();
    let rounds = 2_000;
    println!("   the fix, `lock_all`: 2 threads x {rounds} transfers, in opposite directions:");
    let runners: Vec<_> = [(0, 1), (1, 0)]
        .into_iter()
        .map(|(from, to)| {
            let bank = Arc::clone(&bank);
            thread::spawn(move || {
                let mut busy = 0;
                for _ in 0..rounds {
                    loop {
                        match bank.transfer(from, to, 1) {
                            Ok(()) => break,
                            // Only if this thread waited out the whole lock timeout (a
                            // machine so loaded the other thread was descheduled while
                            // holding the accounts): try again, as a client would.
                            Err(TransferError::Busy(_)) => busy += 1,
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok(busy)
            })
        })
        .collect();
    let mut busy = 0;
    for runner in runners {
        busy += runner.join().map_err(|_| "a transfer thread panicked")??;
    }
    println!(
        "   done, no deadlock; money in the bank: {} before, {} after; busy answers: {busy}",
        total,
        bank.total()
    );
    println!("   reports: {}", print_new_reports());
    println!();

    println!("4. Timeouts that name the holder");
    // The async runtime of steps 4 and 5: one thread, so a worker blocked on a sync lock would
    // stall everything on it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let (held_tx, held_rx) = std_mpsc::channel();
    let (release_tx, release_rx) = std_mpsc::channel::<()>();
    let job = thread::spawn({
        let bank = Arc::clone(&bank);
        move || {
            bank.month_end_statement(2, |account| {
                // Tell main the account is held, then "render" until told to stop: an event,
                // not a sleep, decides how long the lock is held.
                let _ = held_tx.send(account.owner);
                let _ = release_rx.recv();
            })
        }
    });
    let owner = held_rx.recv()?;
    println!("   a month-end job holds {owner}'s account; an async handler's transfer to {owner}");
    println!("   waits 50 ms on tokio's blocking pool (Bank::transfer_async), not on a worker:");
    match runtime.block_on(Arc::clone(&bank).transfer_async(0, 2, 1)) {
        Err(e @ TransferError::Busy(_)) => println!("   {e}"),
        other => return Err(format!("expected a lock timeout, got {other:?}").into()),
    }
    release_tx.send(())?;
    job.join().map_err(|_| "the statement job panicked")?;
    bank.transfer(0, 2, 1)?;
    println!("   the job finished; the same transfer now goes through");
    println!();

    println!("5. Async locks: levels across .await, and a timeout naming the holder");
    runtime.block_on(async {
        // Sends wait up to 200 ms for room: long enough for a subscriber that pauses (as the
        // first one does here, for 30 ms), short enough that one that stopped for good holds a
        // flush back only that long.
        let notifier = Arc::new(Notifier::new(Duration::from_millis(200)));
        // A subscriber whose channel holds one notification: it falls behind at once.
        let mut subscriber = notifier.subscribe(1).await;
        for message in ["alice -> bob: 30", "bob -> carol: 5", "carol -> alice: 1"] {
            notifier.notify(message).await;
        }
        let flush = tokio::spawn({
            let notifier = Arc::clone(&notifier);
            async move { notifier.flush().await }
        });
        let first = subscriber.recv().await.ok_or("the flush ended early")?;
        println!("   the subscriber reads {first:?}, then pauses;");
        // The flush keeps its batch until all three are delivered: the second fills the
        // subscriber's channel and the third waits for room. An admin endpoint asks with a
        // deadline (a real 30 ms wait: the point is to see it run out).
        match notifier.pending(Duration::from_millis(30)).await {
            Err(timeout) => println!("   the admin endpoint gets: {timeout}"),
            Ok(n) => return Err(format!("expected a lock timeout, got {n} pending").into()),
        }
        // Meanwhile new notifications are queued without waiting for the flush: it does not
        // hold the outbox while it sends.
        tokio::time::timeout(
            Duration::from_millis(10),
            notifier.notify("alice -> carol: 1"),
        )
        .await
        .map_err(|_| "notify waited for the flush")?;
        println!("   meanwhile a new notification is queued at once");
        let mut rest = Vec::new();
        for _ in 0..2 {
            rest.push(subscriber.recv().await.ok_or("the flush ended early")?);
        }
        println!("   the subscriber catches up: {rest:?}");
        let flushed = flush.await?;
        let pending = notifier.pending(Duration::from_millis(30)).await?;
        println!(
            "   the flush delivered {}; the endpoint now answers: {pending} pending (the new one)",
            flushed.delivered
        );

        // A second subscriber that never reads: the next flush fills its channel, waits the
        // 200 ms out for room and drops it, instead of stalling this flush and every later one.
        let mut stuck = notifier.subscribe(1).await;
        notifier.notify("bob -> alice: 2").await;
        println!(
            "   a second subscriber never reads; the next flush waits 200 ms for it, then drops it:"
        );
        let flush = tokio::spawn({
            let notifier = Arc::clone(&notifier);
            async move { notifier.flush().await }
        });
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(subscriber.recv().await.ok_or("the flush ended early")?);
        }
        let flushed = flush.await?;
        if flushed.dropped != 1 {
            return Err(format!("expected the silent subscriber dropped, got {flushed:?}").into());
        }
        println!(
            "   it delivered {}, dropped {}; the first subscriber got {got:?}",
            flushed.delivered, flushed.dropped
        );
        // The dropped subscriber reads what its channel held, then the end of the stream: its
        // cue to subscribe again (and catch up from the journal).
        let mut left = Vec::new();
        while let Some(message) = stuck.recv().await {
            left.push(message);
        }
        println!("   the second finds {left:?} in its channel, then the end of the stream");
        Ok::<(), Box<dyn Error>>(())
    })?;
    println!("   reports: {}", print_new_reports());
    println!();

    let stats = detect::stats();
    println!(
        "detector: {} lock classes, {} orders learnt, {} reports; ran in {:.0?}",
        stats.classes,
        stats.edges,
        stats.reports,
        started.elapsed()
    );
    Ok(())
}
