//! Several GCRA quotas on one limiter or key, checked as one: a request is admitted only if
//! every quota admits it, and one refused by any quota takes nothing from the others.

use std::cmp;

use palisade_core::sync::Mutex;

use crate::algorithm::Algorithm;
use crate::algorithm::private::{Core, Op};
use crate::decision::{Decision, Outcome};
use crate::error::{ConfigError, InsufficientCapacity};
use crate::gcra::{self, Params};
use crate::quota::Quota;

/// The most quotas one [`MultiGcra`] holds.
pub const MAX_QUOTAS: usize = 8;

/// Several quotas enforced together, e.g. 10 per second *and* 1,000 per hour:
///
/// ```
/// use palisade_ratelimit::{MultiGcra, Quota, RateLimiter};
///
/// let limiter = RateLimiter::builder(MultiGcra::new([
///     Quota::per_second(10),
///     Quota::per_hour(1_000),
/// ]))
/// .build()?;
/// assert!(limiter.check().is_allowed());
/// # Ok::<(), palisade_ratelimit::ConfigError>(())
/// ```
///
/// The quotas' TATs sit under one short lock per limiter (or per key), so the check is
/// atomic: a concurrent observer never sees one quota charged for a request another refused.
/// Runtime changes keep every quota's accounting and must keep the number of quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiGcra {
    quotas: Vec<Quota>,
}

impl MultiGcra {
    /// The quotas to enforce together (1 to [`MAX_QUOTAS`], each a valid [`Quota`]).
    ///
    /// They are checked when a limiter is built and by
    /// [`set_algorithm`](crate::RateLimiter::set_algorithm). A [`ConfigError`] about them has
    /// [`field`](ConfigError::field) `"quotas"` (the argument at fault), and its message names
    /// an invalid quota by its index in `quotas` and the quota's own field:
    ///
    /// ```
    /// use palisade_ratelimit::{MultiGcra, Quota, RateLimiter};
    ///
    /// let err = RateLimiter::builder(MultiGcra::new([
    ///     Quota::per_second(10),
    ///     Quota::per_hour(1_000).burst(0),
    /// ]))
    /// .build()
    /// .unwrap_err();
    /// assert_eq!(err.field(), "quotas");
    /// assert_eq!(
    ///     err.to_string(),
    ///     "quotas must be valid: quotas[1].burst must be at least 1, got 0"
    /// );
    /// ```
    pub fn new(quotas: impl IntoIterator<Item = Quota>) -> MultiGcra {
        MultiGcra {
            quotas: quotas.into_iter().collect(),
        }
    }

    /// The quotas, in the order given.
    pub fn quotas(&self) -> &[Quota] {
        &self.quotas
    }

    fn params(&self) -> impl Iterator<Item = Params> + '_ {
        self.quotas.iter().map(Params::of)
    }
}

/// Steps every quota's TAT in `tats` for `n` cells; writes them only if all admit.
fn step(
    quotas: &MultiGcra,
    tats: &mut [u64],
    now: u64,
    n: u32,
    op: Op,
) -> Result<Decision, InsufficientCapacity> {
    let mut costs = [0u64; MAX_QUOTAS];
    let mut wait = 0u64;
    for (i, p) in quotas.params().enumerate() {
        costs[i] = p.cost(n).map_err(|_| InsufficientCapacity {
            requested: n,
            capacity: quotas.capacity(),
        })?;
        let ahead = cmp::max(tats[i], now) + costs[i] - now;
        wait = cmp::max(wait, ahead.saturating_sub(p.tau));
    }
    // Several TATs cannot promise one future moment to a waiter (a quota that admits earlier
    // would refill before the cells are used), so a reservation takes the cells only if they
    // fit now, like a check; waiters sleep until the predicted moment and check again.
    let admit = wait == 0;
    let at = now;
    let mut decision = Decision {
        outcome: if admit {
            Outcome::Allowed
        } else {
            Outcome::Limited
        },
        slack: u64::MAX,
        per_cell: 1,
        capacity: u64::MAX,
        reset_after: 0,
        retry_after: wait,
    };
    let mut new = [0u64; MAX_QUOTAS];
    for (i, p) in quotas.params().enumerate() {
        let start = cmp::max(tats[i], at);
        let end = if admit { start + costs[i] } else { start };
        if end > gcra::MAX_NOW * 2 {
            decision.outcome = Outcome::Limited;
        }
        new[i] = end;
        let used = end - at;
        decision.slack = cmp::min(decision.slack, p.tau.saturating_sub(used) / p.interval);
        decision.capacity = cmp::min(decision.capacity, u64::from(p.burst()));
        decision.reset_after = cmp::max(decision.reset_after, end.saturating_sub(now));
    }
    if decision.is_allowed() && op != Op::Peek {
        tats.copy_from_slice(&new[..tats.len()]);
    }
    Ok(decision)
}

fn refund(quotas: &MultiGcra, tats: &mut [u64], now: u64, n: u32) {
    for (tat, p) in tats.iter_mut().zip(quotas.params()) {
        if let Some(new) = gcra::refund(p, *tat, now, u64::from(n).saturating_mul(p.interval)) {
            *tat = new;
        }
    }
}

/// The error for the quota at `index` of the list given to [`MultiGcra::new`]: its field is
/// `quotas` (the argument at fault), and the message names the quota's index and its own field,
/// e.g. `quotas must be valid: quotas[1].burst must be at least 1, got 0`.
fn invalid_quota(index: usize, quota: &Quota, error: ConfigError) -> ConfigError {
    match error {
        ConfigError::OutOfRange {
            field,
            allowed,
            got,
        } => ConfigError::OutOfRange {
            field: "quotas",
            allowed: format!("valid: quotas[{index}].{field} must be {allowed}"),
            got,
        },
        // `ConfigError` is non-exhaustive: a future kind still names the quota's index.
        other => {
            ConfigError::out_of_range("quotas", format!("valid: quotas[{index}]: {other}"), quota)
        }
    }
}

impl Algorithm for MultiGcra {}

impl Core for MultiGcra {
    type State = Mutex<Box<[u64]>>;
    type Direct = Mutex<(MultiGcra, Box<[u64]>)>;

    fn validated(self) -> Result<MultiGcra, ConfigError> {
        if self.quotas.is_empty() || self.quotas.len() > MAX_QUOTAS {
            return Err(ConfigError::out_of_range(
                "quotas",
                format!("between 1 and {MAX_QUOTAS} quotas"),
                self.quotas.len(),
            ));
        }
        for (i, q) in self.quotas.iter().enumerate() {
            q.validate().map_err(|e| invalid_quota(i, q, e))?;
        }
        Ok(self)
    }

    fn capacity(&self) -> u32 {
        self.quotas.iter().map(|q| q.burst).min().unwrap_or(0)
    }

    fn new_state(&self, _now: u64) -> Self::State {
        Mutex::new(vec![0; self.quotas.len()].into_boxed_slice())
    }

    fn empty_state() -> Self::State {
        Mutex::new(Box::default())
    }

    fn step(
        &self,
        state: &Self::State,
        now: u64,
        n: u32,
        op: Op,
    ) -> Result<Decision, InsufficientCapacity> {
        step(self, &mut state.lock(), now, n, op)
    }

    fn refund(&self, state: &Self::State, now: u64, n: u32) {
        refund(self, &mut state.lock(), now, n);
    }

    fn idle_at(&self, state: &Self::State, _now: u64) -> u64 {
        state.lock().iter().copied().max().unwrap_or(0)
    }

    fn rebase(&self, state: &mut Self::State, to: &MultiGcra, now: u64) {
        let tats = state.get_mut();
        for ((tat, from), to) in tats.iter_mut().zip(self.params()).zip(to.params()) {
            *tat = gcra::rebase(*tat, from, to, now);
        }
    }

    fn can_become(&self, to: &MultiGcra) -> Result<(), ConfigError> {
        if to.quotas.len() != self.quotas.len() {
            return Err(ConfigError::out_of_range(
                "quotas",
                format!(
                    "{} quotas, as the limiter was built with (each keeps its accounting)",
                    self.quotas.len()
                ),
                to.quotas.len(),
            ));
        }
        Ok(())
    }

    fn direct(self) -> Self::Direct {
        let tats = vec![0; self.quotas.len()].into_boxed_slice();
        Mutex::new((self, tats))
    }

    fn direct_config(direct: &Self::Direct) -> MultiGcra {
        direct.lock().0.clone()
    }

    fn direct_step(
        direct: &Self::Direct,
        now: u64,
        n: u32,
        op: Op,
    ) -> Result<Decision, InsufficientCapacity> {
        let mut guard = direct.lock();
        let (quotas, tats) = &mut *guard;
        step(quotas, tats, now, n, op)
    }

    fn direct_refund(direct: &Self::Direct, now: u64, n: u32) {
        let mut guard = direct.lock();
        let (quotas, tats) = &mut *guard;
        refund(quotas, tats, now, n);
    }

    fn direct_set(direct: &Self::Direct, to: MultiGcra, now: u64) -> Result<(), ConfigError> {
        let mut guard = direct.lock();
        let (from, tats) = &mut *guard;
        from.can_become(&to)?;
        for ((tat, p_from), p_to) in tats.iter_mut().zip(from.params()).zip(to.params()) {
            *tat = gcra::rebase(*tat, p_from, p_to, now);
        }
        *from = to;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_reservation_that_would_wait_takes_nothing() {
        // a: 1 per 10 ns, burst 4 (idle); b: 1 per 100 ns, burst 1 (just used).
        let quotas = MultiGcra::new([
            Quota::with_interval(Duration::from_nanos(10)).burst(4),
            Quota::with_interval(Duration::from_nanos(100)),
        ]);
        let mut tats = [0, 100];
        let d = step(&quotas, &mut tats, 0, 1, Op::Reserve { max_wait: u64::MAX }).unwrap();
        assert!(!d.is_allowed());
        assert_eq!(
            d.retry_after(),
            Some(Duration::from_nanos(100)),
            "b makes it wait 100 ns"
        );
        assert_eq!(tats, [0, 100], "neither quota is charged");
    }
}
