//! Retry budgets: how many retries a client may add on top of its requests, shared and lock-free.

use std::fmt;
use std::time::Duration;

use palisade_core::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use palisade_core::{Clock, FastClock};

use crate::error::ConfigError;

/// A budget that caps retries across every caller that shares it, so that when a dependency
/// fails, retries add a bounded fraction of load instead of multiplying it.
///
/// The retry loop calls [`deposit`](RetryBudget::deposit) once per original request,
/// [`record`](RetryBudget::record) after each classified attempt, and
/// [`withdraw`](RetryBudget::withdraw) before each retry; a `false` from `withdraw` ends the loop
/// with the last real outcome. Share one budget between clones and tasks through an
/// `Arc<dyn RetryBudget>` (see [`Retry::budget`](crate::Retry::budget)).
pub trait RetryBudget: Send + Sync + fmt::Debug {
    /// An original request (not a retry) is being made.
    fn deposit(&self);

    /// A retry is about to be made: `true` if the budget allows it, in which case it is charged.
    fn withdraw(&self) -> bool;

    /// An attempt's outcome was classified: `retryable` is true for a failure worth retrying,
    /// false for a final outcome (a success, or an error retrying can't fix).
    fn record(&self, retryable: bool) {
        let _ = retryable;
    }
}

/// Units of budget one retry costs; deposits are fractions of it.
const RETRY_COST: i64 = 1000;
/// The window is split into this many slots; a deposit expires with its slot.
const SLOTS: u64 = 10;
/// Slot words: a 32-bit epoch (the slot's tick, wrapping) above a 32-bit signed amount. The
/// epoch wraps after 2^32 slots (13.6 years with the shortest slot of 100 ms): only a budget
/// left idle that long, to the slot, could mistake its old amounts for live ones.
const AMOUNT_BITS: u32 = 32;
const AMOUNT_MASK: u64 = (1 << AMOUNT_BITS) - 1;
const AMOUNT_MAX: i64 = (1 << (AMOUNT_BITS - 1)) - 1;
/// How far (in slots) one thread's clock read may run ahead of another's and still be told apart
/// from an expired epoch: a thread would have to stall this long between reading the clock and
/// recording (at least 102 s, with the shortest slot of 100 ms).
const AHEAD_WINDOW: u32 = 1024;

/// Aligns its content to 128 bytes (two 64-byte lines: x86's adjacent-line prefetcher pairs
/// them), so that nothing else shares its cache line.
#[repr(align(128))]
#[derive(Debug)]
struct CacheLine<T>(T);

impl<T> std::ops::Deref for CacheLine<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

fn pack(epoch: u32, amount: i64) -> u64 {
    (u64::from(epoch) << AMOUNT_BITS) | (amount as u64 & AMOUNT_MASK)
}

fn unpack(word: u64) -> (u32, i64) {
    let epoch = (word >> AMOUNT_BITS) as u32;
    // Shift the 32-bit amount to the top and back to sign-extend it.
    let amount = ((word << (64 - AMOUNT_BITS)) as i64) >> (64 - AMOUNT_BITS);
    (epoch, amount)
}

/// The epoch slot `index` stands for at `tick`: the latest tick at or before `tick` that maps to
/// it. An emptied slot keeps this stamp, so a later tick that maps to it sees it expired and a
/// caller at that very tick sees it live.
fn cycle_epoch(tick: u64, index: u64) -> u32 {
    let back = (tick % SLOTS + SLOTS - index) % SLOTS;
    tick.wrapping_sub(back) as u32
}

/// Whether a slot stamped `slot_epoch` still counts at `epoch`: recorded in the last `SLOTS`
/// ticks, or a little ahead of a caller whose clock read is stale.
fn is_live(slot_epoch: u32, epoch: u32) -> bool {
    let age = epoch.wrapping_sub(slot_epoch);
    let ahead = slot_epoch.wrapping_sub(epoch);
    u64::from(age) < SLOTS || ahead < AHEAD_WINDOW
}

/// A Finagle-style retry budget (tower's `TpsBudget`), lock-free.
///
/// Each original request deposits `retry_ratio` of a retry; each retry withdraws one. Deposits
/// and withdrawals expire after `ttl`, in ten slots of `ttl / 10`, so the budget tracks recent
/// traffic. On top, a reserve of `min_per_sec × ttl` retries never expires, so a client with
/// little traffic can still retry. With the defaults (ttl 10 s, 10 retries/s, ratio 0.2), a client
/// sending 100 requests/s may retry 20 of them per second, plus 10 per second of floor.
///
/// `withdraw` is one compare-and-swap on the balance, so concurrent callers can never overdraw
/// it; the slot bookkeeping is lock-free too. Expiry is one slot coarse: an amount counts for
/// between `ttl - ttl/10` and `ttl`.
///
/// Every transient state errs towards fewer retries: an expired amount leaves the balance
/// before its slot is cleared, so it can never be spent. The price is that at a slot boundary,
/// for the few instructions while other callers retire an expired slot, a withdrawal can be
/// refused that a moment later would be granted, even one the reserve alone would cover.
///
/// Limits: one slot holds at most 2^31 thousandths of a retry (about 2.1 million retries); a
/// withdrawal that would overflow its slot is refused. Slot stamps wrap after 2^32 slots (13.6
/// years with the shortest slot): only a budget left idle that long, to the slot, could count
/// old amounts again.
///
/// ```
/// use palisade_core::ManualClock;
/// use palisade_retry::{RetryBudget, TpsBudget};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let budget = TpsBudget::builder()
///     .min_per_sec(0)
///     .retry_ratio(0.5)
///     .clock(clock.clone())
///     .build()?;
/// budget.deposit();
/// budget.deposit(); // two requests earn one retry
/// assert!(budget.withdraw());
/// assert!(!budget.withdraw());
/// # Ok::<(), palisade_retry::ConfigError>(())
/// ```
pub struct TpsBudget<C: Clock = FastClock> {
    clock: C,
    slot_nanos: u64,
    deposit: i64,
    /// On a cache line of its own: every deposit and withdrawal writes it, and sharing a line
    /// with the read-mostly fields above would make every reader miss.
    balance: CacheLine<AtomicI64>,
    last_sweep: AtomicU64,
    slots: Box<[AtomicU64]>,
    ttl: Duration,
    min_per_sec: u32,
    retry_ratio: f64,
}

/// Builder of a [`TpsBudget`]; [`build`](TpsBudgetBuilder::build) validates.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct TpsBudgetBuilder<C = FastClock> {
    clock: C,
    ttl: Duration,
    min_per_sec: u32,
    retry_ratio: f64,
}

impl TpsBudget {
    /// A builder with Finagle's defaults: ttl 10 s, 10 retries/s floor, ratio 0.2.
    pub fn builder() -> TpsBudgetBuilder {
        TpsBudgetBuilder {
            clock: FastClock::new(),
            ttl: Duration::from_secs(10),
            min_per_sec: 10,
            retry_ratio: 0.2,
        }
    }
}

impl<C: Clock> TpsBudgetBuilder<C> {
    /// How long a deposit or withdrawal counts, in `[1 s, 60 s]` (default 10 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Retries per second allowed whatever the traffic, in `[0, 1_000_000]` (default 10): a
    /// reserve of `min_per_sec × ttl` retries that never expires, while each retry drawn from
    /// it comes back after `ttl`. It is not a pace: the whole reserve may go at once.
    pub fn min_per_sec(mut self, min_per_sec: u32) -> Self {
        self.min_per_sec = min_per_sec;
        self
    }

    /// Retries earned per original request: 0 (only the `min_per_sec` floor), or in
    /// `[0.001, 10.0]` (default 0.2: one retry per five requests). Precision is 0.001.
    pub fn retry_ratio(mut self, retry_ratio: f64) -> Self {
        self.retry_ratio = retry_ratio;
        self
    }

    /// The clock the window reads (default [`FastClock`]); use a `ManualClock` in tests.
    pub fn clock<C2: Clock>(self, clock: C2) -> TpsBudgetBuilder<C2> {
        TpsBudgetBuilder {
            clock,
            ttl: self.ttl,
            min_per_sec: self.min_per_sec,
            retry_ratio: self.retry_ratio,
        }
    }

    /// Checks every knob and builds the budget.
    pub fn build(self) -> Result<TpsBudget<C>, ConfigError> {
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.ttl) {
            return Err(ConfigError::out_of_range(
                "ttl",
                "between 1s and 60s",
                self.ttl,
            ));
        }
        if self.min_per_sec > 1_000_000 {
            return Err(ConfigError::out_of_range(
                "min_per_sec",
                "at most 1000000",
                self.min_per_sec,
            ));
        }
        // Deposits count in thousandths of a retry: a positive ratio under a thousandth would
        // round to a budget that earns nothing, whatever the traffic.
        let ratio = self.retry_ratio;
        if !(ratio == 0.0 || (ratio.is_finite() && (0.001..=10.0).contains(&ratio))) {
            return Err(ConfigError::out_of_range(
                "retry_ratio",
                "0 or a finite number in [0.001, 10.0]",
                ratio,
            ));
        }
        let reserve =
            (f64::from(self.min_per_sec) * self.ttl.as_secs_f64() * RETRY_COST as f64) as i64;
        let slot_nanos = (self.ttl.as_nanos() / u128::from(SLOTS)) as u64;
        let tick = self.clock.now().as_nanos() / slot_nanos;
        Ok(TpsBudget {
            deposit: (self.retry_ratio * RETRY_COST as f64).round() as i64,
            balance: CacheLine(AtomicI64::new(reserve)),
            last_sweep: AtomicU64::new(tick),
            slots: (0..SLOTS)
                .map(|index| AtomicU64::new(pack(cycle_epoch(tick, index), 0)))
                .collect(),
            slot_nanos,
            clock: self.clock,
            ttl: self.ttl,
            min_per_sec: self.min_per_sec,
            retry_ratio: self.retry_ratio,
        })
    }
}

impl<C: Clock> TpsBudget<C> {
    /// Whole retries the budget would allow right now.
    pub fn available(&self) -> u64 {
        let tick = self.tick();
        self.sweep(tick);
        (self.balance.load(Ordering::Acquire).max(0) / RETRY_COST) as u64
    }

    fn tick(&self) -> u64 {
        self.clock.now().as_nanos() / self.slot_nanos
    }

    /// Swaps `slot` from `current` to `next`, retiring `retired` units from the balance.
    ///
    /// The order keeps every transient state conservative: a decrease of the balance lands
    /// before the slot changes (and is undone if the swap fails), an increase only after it
    /// succeeds. So no caller can ever see a retired slot while its amount still counts, and a
    /// racing `withdraw` can't spend credit that has expired.
    fn swap_slot(
        &self,
        slot: &AtomicU64,
        current: u64,
        next: u64,
        retired: i64,
    ) -> Result<(), u64> {
        if retired > 0 {
            self.balance.fetch_sub(retired, Ordering::AcqRel);
        }
        match slot.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                if retired < 0 {
                    self.balance.fetch_sub(retired, Ordering::AcqRel);
                }
                Ok(())
            }
            Err(actual) => {
                if retired > 0 {
                    self.balance.fetch_add(retired, Ordering::AcqRel);
                }
                Err(actual)
            }
        }
    }

    /// Adds `amount` (at most one retry's worth, either sign) to the slot of `tick`, retiring
    /// whatever expired amount the slot held. Returns `false`, changing nothing, if the slot is
    /// saturated (it holds over two million retries' worth): the caller then leaves the balance
    /// as it was, so every unit in the balance beyond the reserve is in exactly one slot.
    fn record_slot(&self, tick: u64, amount: i64) -> bool {
        // A caller whose clock read went stale records at the latest swept tick instead, so it
        // never writes into a slot that was already swept, nor retires a newer live one.
        let tick = tick.max(self.last_sweep.load(Ordering::Acquire));
        let epoch = tick as u32;
        let slot = &self.slots[(tick % SLOTS) as usize];
        let mut word = slot.load(Ordering::Acquire);
        loop {
            let (slot_epoch, held) = unpack(word);
            let (next, retired) = if is_live(slot_epoch, epoch) {
                // The slot is this tick's (or, for a stale caller, a newer one): add to it.
                let sum = held + amount;
                if !(-AMOUNT_MAX..=AMOUNT_MAX).contains(&sum) {
                    return false;
                }
                (pack(slot_epoch, sum), 0)
            } else {
                // The slot holds an expired tick: retire its amount and start this tick.
                (pack(epoch, amount), held)
            };
            match self.swap_slot(slot, word, next, retired) {
                Ok(()) => return true,
                Err(actual) => word = actual,
            }
        }
    }

    /// Retires every slot that has expired by `tick`, once per tick per caller at most.
    fn sweep(&self, tick: u64) {
        if self.last_sweep.load(Ordering::Acquire) >= tick {
            return;
        }
        let epoch = tick as u32;
        for (index, slot) in (0..SLOTS).zip(self.slots.iter()) {
            let mut word = slot.load(Ordering::Acquire);
            loop {
                let (slot_epoch, held) = unpack(word);
                if held == 0 || is_live(slot_epoch, epoch) {
                    break;
                }
                // Only the caller whose swap wins retires the amount: each amount expires once.
                match self.swap_slot(slot, word, pack(cycle_epoch(tick, index), 0), held) {
                    Ok(()) => break,
                    Err(actual) => word = actual,
                }
            }
        }
        self.last_sweep.fetch_max(tick, Ordering::AcqRel);
    }
}

impl<C: Clock> RetryBudget for TpsBudget<C> {
    fn deposit(&self) {
        if self.deposit == 0 {
            return;
        }
        if self.record_slot(self.tick(), self.deposit) {
            self.balance.fetch_add(self.deposit, Ordering::AcqRel);
        }
    }

    fn withdraw(&self) -> bool {
        let tick = self.tick();
        self.sweep(tick);
        let charged = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= RETRY_COST).then_some(b - RETRY_COST)
            })
            .is_ok();
        // The withdrawal expires with its slot too, which gives the retry back after ttl. A slot
        // too full to record it (millions of retries in one slot) refuses it instead, so that
        // nothing is charged that can't be given back.
        if charged && !self.record_slot(tick, -RETRY_COST) {
            self.balance.fetch_add(RETRY_COST, Ordering::AcqRel);
            return false;
        }
        charged
    }
}

impl<C: Clock> fmt::Debug for TpsBudget<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpsBudget")
            .field("ttl", &self.ttl)
            .field("min_per_sec", &self.min_per_sec)
            .field("retry_ratio", &self.retry_ratio)
            .field(
                "balance",
                &(self.balance.load(Ordering::Relaxed) as f64 / RETRY_COST as f64),
            )
            .finish()
    }
}

/// gRPC's retry throttling, lock-free.
///
/// The throttle holds `max_tokens` tokens. Every retryable failure takes one token, every other
/// outcome gives back `token_ratio`; retries are allowed only while more than half the tokens
/// are left. Unlike [`TpsBudget`] it reacts to the failure rate, not to the request rate: when
/// most calls fail, retrying stops for everyone sharing the throttle.
///
/// ```
/// use palisade_retry::{RetryBudget, RetryThrottle};
///
/// let throttle = RetryThrottle::new(10.0, 0.1)?;
/// assert!(throttle.withdraw());
/// for _ in 0..5 {
///     throttle.record(true); // five failures: 5 of 10 tokens left, not more than half
/// }
/// assert!(!throttle.withdraw());
/// throttle.record(false); // a success earns 0.1 back
/// assert!(throttle.withdraw());
/// # Ok::<(), palisade_retry::ConfigError>(())
/// ```
pub struct RetryThrottle {
    /// Thousandths of a token.
    tokens: AtomicU64,
    max: u64,
    ratio: u64,
}

impl RetryThrottle {
    /// `max_tokens` and `token_ratio` each in `[0.001, 1000]`, kept to three decimals as gRPC's
    /// service config specifies (gRPC's `(0, 1000]` with its three decimals: a value under
    /// a thousandth would round to none, and a throttle of no tokens never allows a retry). The
    /// throttle starts full.
    pub fn new(max_tokens: f64, token_ratio: f64) -> Result<RetryThrottle, ConfigError> {
        let thousandths = |field: &'static str, value: f64| {
            if value.is_finite() && (0.001..=1000.0).contains(&value) {
                Ok((value * 1000.0).round() as u64)
            } else {
                Err(ConfigError::out_of_range(
                    field,
                    "a number in [0.001, 1000]",
                    value,
                ))
            }
        };
        let max = thousandths("max_tokens", max_tokens)?;
        let ratio = thousandths("token_ratio", token_ratio)?;
        Ok(RetryThrottle {
            tokens: AtomicU64::new(max),
            max,
            ratio,
        })
    }

    /// Tokens left.
    pub fn tokens(&self) -> f64 {
        self.tokens.load(Ordering::Acquire) as f64 / 1000.0
    }
}

impl RetryBudget for RetryThrottle {
    fn deposit(&self) {}

    fn withdraw(&self) -> bool {
        self.tokens.load(Ordering::Acquire) > self.max / 2
    }

    fn record(&self, retryable: bool) {
        let (max, ratio) = (self.max, self.ratio);
        // The closure always returns `Some`: the update cannot fail.
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(if retryable {
                    t.saturating_sub(1000)
                } else {
                    (t + ratio).min(max)
                })
            });
    }
}

impl fmt::Debug for RetryThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryThrottle")
            .field("tokens", &self.tokens())
            .field("max_tokens", &(self.max as f64 / 1000.0))
            .field("token_ratio", &(self.ratio as f64 / 1000.0))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_words_round_trip_signed_amounts() {
        for amount in [0, 1, -1, 1000, -1000, AMOUNT_MAX, -AMOUNT_MAX] {
            for epoch in [0, 1, u32::MAX] {
                assert_eq!(unpack(pack(epoch, amount)), (epoch, amount));
            }
        }
    }

    #[test]
    fn liveness_spans_the_window_and_wraps() {
        assert!(is_live(5, 5));
        assert!(is_live(5, 14));
        assert!(!is_live(5, 15));
        assert!(is_live(u32::MAX, 3)); // across the wrap
        assert!(!is_live(u32::MAX - 20, 3));
        assert!(!is_live(0, 1 << 25));
        assert!(is_live(7, 5)); // a stale caller sees a newer slot as live
    }

    #[test]
    fn cycle_epochs_map_back_to_their_slot() {
        for tick in [0_u64, 3, 9, 10, 27, 1_000_003] {
            for index in 0..SLOTS {
                let e = u64::from(cycle_epoch(tick, index));
                let real = if tick >= 10 || e <= tick { e } else { continue };
                assert_eq!(real % SLOTS, index, "tick {tick} index {index}");
                assert!(real <= tick && tick - real < SLOTS);
            }
        }
    }
}
