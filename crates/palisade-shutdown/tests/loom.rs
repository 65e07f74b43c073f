//! Concurrency models of the shutdown protocol (see docs/testing.md for how they run): a drain
//! never misses the last tracked task finishing; a task tracked while the drain runs is either
//! tracked and waited for, or refused and handed back, never lost; a task that tracks follow-up
//! work before it finishes is always admitted; a drain dropped mid-wait leaves the scope to a
//! later drain; a trigger or a stop never misses its waiter; and a parent scope is told to stop
//! only after the tasks of the scopes nested in it have finished.
//!
//! The models use the public API only. The flags a task sets before it finishes are written and
//! read with `Relaxed` on purpose: the crate's counter and event alone must make a task's work
//! visible to whoever saw it finish (the drain returning, `stopped()` completing).

use std::future::{Future, ready};
use std::pin::pin;
use std::task::{Context, Waker};

use palisade_core::sync::atomic::{AtomicBool, Ordering};
use palisade_core::sync::{Arc, assert_explored, block_on, model, thread};
use palisade_shutdown::{Coordinator, Phase, Shutdown};

/// A coordinator's handle with no signal handlers (none are installed outside a runtime anyway).
fn shutdown() -> Shutdown {
    Coordinator::builder()
        .signals([])
        .build()
        .expect("the defaults are valid")
        .handle()
}

/// Two tracked futures finish (are dropped) on two threads while the main thread drains their
/// scope: whichever finishes last, after or during the drain's registration, wakes it (loom
/// reports a deadlock otherwise), and the sealed scope refuses a later task.
#[test]
fn the_drain_never_misses_the_last_task_finishing() {
    assert_explored(model(|| {
        let scope = shutdown().scope("workers");
        let finishers: Vec<_> = (0..2)
            .map(|_| {
                let tracked = scope
                    .track(async {})
                    .expect("the scope is not draining yet");
                thread::spawn(move || drop(tracked))
            })
            .collect();
        block_on(scope.drain());
        assert_eq!(scope.running(), 0, "the drain returned with a task running");
        assert!(scope.is_stopping());
        assert!(scope.track(async {}).is_err(), "a drained scope is sealed");
        for finisher in finishers {
            finisher.join().unwrap();
        }
    }));
}

/// A task tracked while the drain runs: admitted before the seal, the drain waits until it has
/// finished (its work is visible once the drain returns); refused after it, the future comes
/// back unpolled. Never admitted and forgotten.
#[test]
fn a_task_tracked_during_the_drain_is_awaited_or_refused_never_lost() {
    assert_explored(model(|| {
        let scope = shutdown().root();
        let finished = Arc::new(AtomicBool::new(false));
        let spawner = thread::spawn({
            let (scope, finished) = (scope.clone(), finished.clone());
            move || match scope.track(ready(7)) {
                Ok(tracked) => {
                    finished.store(true, Ordering::Relaxed);
                    drop(tracked);
                    true
                }
                Err(refused) => {
                    assert_eq!(block_on(refused.into_inner()), 7, "the future comes back");
                    false
                }
            }
        });
        block_on(scope.drain());
        let finished_before_the_drain_returned = finished.load(Ordering::Relaxed);
        let admitted = spawner.join().unwrap();
        if admitted {
            assert!(
                finished_before_the_drain_returned,
                "the drain returned before a task it admitted had finished"
            );
        }
        assert_eq!(scope.running(), 0);
        assert!(scope.track(async {}).is_err(), "a drained scope is sealed");
    }));
}

/// A running task that tracks follow-up work before it finishes (as a task spawning another
/// while draining) is always admitted, since the scope cannot seal while the first one runs; and
/// the drain waits for both.
#[test]
fn follow_up_work_tracked_by_a_running_task_is_admitted_and_awaited() {
    assert_explored(model(|| {
        let scope = shutdown().root();
        let first = scope
            .track(async {})
            .expect("the scope is not draining yet");
        let finished = Arc::new(AtomicBool::new(false));
        let task = thread::spawn({
            let (scope, finished) = (scope.clone(), finished.clone());
            move || {
                let follow_up = scope.track(async {});
                drop(first);
                let follow_up = follow_up.expect("a scope with a task running cannot be sealed");
                finished.store(true, Ordering::Relaxed);
                drop(follow_up);
            }
        });
        block_on(scope.drain());
        assert!(
            finished.load(Ordering::Relaxed),
            "the drain returned before the follow-up work finished"
        );
        task.join().unwrap();
        assert_eq!(scope.running(), 0);
    }));
}

/// A drain polled once and dropped while a task finishes on another thread (cancel-safety): the
/// scope stays stopped, and a later drain completes and seals it.
#[test]
fn a_drain_dropped_mid_wait_leaves_the_scope_to_a_later_drain() {
    assert_explored(model(|| {
        let scope = shutdown().scope("workers");
        let tracked = scope
            .track(async {})
            .expect("the scope is not draining yet");
        let finisher = thread::spawn(move || drop(tracked));
        {
            let mut drain = pin!(scope.drain());
            let _ = drain.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        }
        assert!(
            scope.is_stopping(),
            "a drain polled once has stopped the scope"
        );
        block_on(scope.drain());
        assert_eq!(scope.running(), 0);
        finisher.join().unwrap();
        assert!(scope.track(async {}).is_err(), "a drained scope is sealed");
    }));
}

/// `requested()` waiting on one thread never misses a `trigger()` on another.
#[test]
fn a_trigger_never_misses_its_waiter() {
    assert_explored(model(|| {
        let shutdown = shutdown();
        let waiter = thread::spawn({
            let shutdown = shutdown.clone();
            move || {
                block_on(shutdown.requested());
                assert!(shutdown.is_shutting_down());
                assert!(shutdown.phase() >= Phase::NotReady);
            }
        });
        assert!(shutdown.trigger(), "the first trigger starts the shutdown");
        waiter.join().unwrap();
        assert!(!shutdown.trigger(), "a second trigger does nothing");
    }));
}

/// A tracked worker that runs until its scope is told to stop (`stopped()`), on another thread,
/// while the main thread drains the scope: the stop wakes the worker, the worker's finishing
/// wakes the drain, and neither wake-up is lost.
#[test]
fn a_worker_waiting_for_stopped_is_woken_and_its_finish_ends_the_drain() {
    assert_explored(model(|| {
        let scope = shutdown().scope("workers");
        let worker = scope
            .track(scope.stopped())
            .expect("the scope is not draining yet");
        let worker = thread::spawn(move || block_on(worker));
        block_on(scope.drain());
        assert_eq!(
            scope.running(),
            0,
            "the drain returned with the worker running"
        );
        worker.join().unwrap();
    }));
}

/// A child scope's task finishes on one thread, another waits for the parent to be told to stop,
/// and the main thread drains the parent: the parent is stopped only after the child's task has
/// finished, and both scopes end sealed.
#[test]
fn a_parent_is_stopped_only_after_its_nested_scopes_tasks_finished() {
    assert_explored(model(|| {
        let parent = shutdown().scope("parent");
        let child = parent.scope("child");
        let child_done = Arc::new(AtomicBool::new(false));
        let child_task = {
            let child_done = child_done.clone();
            let stopped = child.stopped();
            child
                .track(async move {
                    stopped.await;
                    child_done.store(true, Ordering::Relaxed);
                })
                .expect("the child is not draining yet")
        };
        let child_worker = thread::spawn(move || block_on(child_task));
        let parent_worker = thread::spawn({
            let (parent, child, child_done) = (parent.clone(), child.clone(), child_done.clone());
            move || {
                block_on(parent.stopped());
                assert!(
                    child_done.load(Ordering::Relaxed),
                    "the parent was stopped before its child's task finished"
                );
                assert!(
                    child.is_stopping(),
                    "the child is stopped before its parent"
                );
                assert_eq!(child.running(), 0);
            }
        });
        block_on(parent.drain());
        child_worker.join().unwrap();
        parent_worker.join().unwrap();
        // After the joins: a refused `track` counts itself in for a moment (it adds one, sees the
        // seal and takes it back), which the parent worker's `running()` could otherwise see.
        assert!(
            child.track(async {}).is_err(),
            "the drained child is sealed"
        );
        assert!(
            parent.track(async {}).is_err(),
            "the drained parent is sealed"
        );
    }));
}
