//! Random sequences of get / return / taint / cancel / backend outage / clock advance /
//! maintenance keep the pool's invariants after every step, and end with every slot accounted
//! for: after a close, no connection is live and the pool is empty.

mod support;

use std::time::Duration;

use palisade_core::TokioClock;
use palisade_pool::{Error, Pool, Pooled};
use proptest::prelude::*;
use support::{Backend, settle};
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
enum Op {
    /// Start a `get()` on a task of its own.
    Get,
    /// Return the held connection at this index (modulo).
    Return(usize),
    /// Taint and drop the held connection at this index.
    Taint(usize),
    /// Abort the pending `get()` at this index.
    Cancel(usize),
    /// Take the backend down or bring it up.
    Down(bool),
    /// Let this much (paused) time pass.
    Advance(u64),
    /// One maintenance pass.
    Maintain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Get),
        3 => any::<usize>().prop_map(Op::Return),
        1 => any::<usize>().prop_map(Op::Taint),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => any::<bool>().prop_map(Op::Down),
        2 => (1u64..3_000).prop_map(Op::Advance),
        1 => Just(Op::Maintain),
    ]
}

type Held = Pooled<Backend, TokioClock>;
type Pending = JoinHandle<Result<Held, Error<support::BackendError>>>;

fn check(pool: &Pool<Backend, TokioClock>, backend: &Backend, held: &[Held], max: usize) {
    let m = pool.metrics();
    assert!(m.size <= max, "{m}");
    assert_eq!(m.size, m.idle + m.in_use + m.connecting, "{m}");
    assert_eq!(m.in_use, held.len(), "{m}");
    assert_eq!(backend.live() as usize, m.size - m.connecting, "{m}");
    let mut ids: Vec<usize> = held.iter().map(|c: &Held| -> usize { c.id }).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), held.len(), "a connection held twice");
    if m.waiters > 0 {
        assert_eq!(m.idle, 0, "idle connections while callers wait: {m}");
    }
}

async fn collect(pending: &mut Vec<Pending>, held: &mut Vec<Held>) {
    settle().await;
    let mut i = 0;
    while i < pending.len() {
        if pending[i].is_finished() {
            match pending.swap_remove(i).await.expect("get never panics") {
                Ok(conn) => held.push(conn),
                Err(e) => assert!(e.is_timeout(), "{e}"),
            }
        } else {
            i += 1;
        }
    }
}

fn run(ops: Vec<Op>, max: usize, min_idle: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let backend = Backend::default();
        let pool = support::builder(&backend)
            .max_size(max)
            .min_idle(min_idle)
            .acquire_timeout(Duration::from_secs(2))
            .max_lifetime(Some(Duration::from_secs(20)))
            .idle_timeout(Some(Duration::from_secs(5)))
            .build()
            .unwrap();
        let mut held: Vec<Held> = Vec::new();
        let mut pending: Vec<Pending> = Vec::new();
        for op in ops {
            match op {
                Op::Get => {
                    let pool = pool.clone();
                    pending.push(tokio::spawn(async move { pool.get().await }));
                }
                Op::Return(i) if !held.is_empty() => drop(held.swap_remove(i % held.len())),
                Op::Taint(i) if !held.is_empty() => {
                    let mut conn = held.swap_remove(i % held.len());
                    Pooled::taint(&mut conn);
                }
                Op::Cancel(i) if !pending.is_empty() => {
                    let task = pending.swap_remove(i % pending.len());
                    task.abort();
                    // A get that finished before the abort hands its connection back on drop.
                    if let Ok(Ok(conn)) = task.await {
                        drop(conn);
                    }
                }
                Op::Down(down) => backend.set(&backend.0.down, down),
                Op::Advance(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Op::Maintain => pool.maintain().await,
                _ => {}
            }
            collect(&mut pending, &mut held).await;
            check(&pool, &backend, &held, max);
        }
        // Wind down: every pending get ends (served or timed out), everything is returned.
        backend.set(&backend.0.down, false);
        while !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            collect(&mut pending, &mut held).await;
            check(&pool, &backend, &held, max);
        }
        held.clear();
        pool.close(Duration::from_secs(1)).await.unwrap();
        settle().await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        let m = pool.metrics();
        assert_eq!((m.size, m.idle, m.in_use, m.waiters), (0, 0, 0, 0), "{m}");
        assert_eq!(backend.live(), 0);
        assert_eq!(
            m.created,
            m.discarded_total(),
            "every connection made was discarded exactly once: {m}"
        );
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_workloads_keep_every_invariant(
        ops in prop::collection::vec(op(), 1..60),
        max in 1usize..5,
        min_idle in 0usize..3,
    ) {
        run(ops, max, min_idle.min(max));
    }
}
