//! The coordinator's sequence under paused time: every phase, every timeout path, scopes,
//! hooks, panics, escalation and cancel-safety.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use palisade_shutdown::{
    Coordinator, CoordinatorBuilder, Outcome, PanicPolicy, Phase, Shutdown, ShutdownReport, Trigger,
};
use tokio::time::Instant;

fn builder() -> CoordinatorBuilder {
    Coordinator::builder().signals([])
}

/// Sets a flag when dropped: proves a task's future was dropped (aborted or finished).
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Spawns a tracked task that ignores every stop signal; the flag says when its future is dropped.
fn spawn_stuck(shutdown: &Shutdown) -> (tokio::task::JoinHandle<()>, Arc<AtomicBool>) {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    let task = shutdown
        .spawn(async move {
            let _flag = flag;
            std::future::pending::<()>().await
        })
        .unwrap();
    (task, dropped)
}

fn phases(report: &palisade_shutdown::ShutdownReport) -> Vec<(Phase, Outcome)> {
    report
        .phases
        .iter()
        .map(|phase| (phase.phase, phase.outcome.clone()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_clean_shutdown_walks_every_phase_in_order_and_reports_it() {
    let coordinator = builder()
        .readiness_delay(Duration::from_secs(5))
        .build()
        .unwrap();
    let shutdown = coordinator.handle();
    assert!(shutdown.is_ready() && !shutdown.is_shutting_down());
    assert_eq!(shutdown.phase(), Phase::Running);

    // An observer records the phase sequence as it happens, with the time each began.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let observer = tokio::spawn({
        let shutdown = shutdown.clone();
        let seen = seen.clone();
        async move {
            let start = Instant::now();
            for phase in &Phase::ALL[1..] {
                shutdown.wait_for(*phase).await;
                seen.lock().unwrap().push((*phase, start.elapsed()));
            }
        }
    });
    let worker = shutdown.root();
    let stopper = worker.clone();
    worker
        .spawn(async move { stopper.stopped().await })
        .unwrap();
    tokio::task::yield_now().await;

    let run = tokio::spawn(coordinator.run());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(shutdown.phase(), Phase::Running, "nothing before a trigger");
    assert!(shutdown.trigger());
    assert!(!shutdown.trigger(), "a second trigger does nothing");
    assert!(shutdown.is_shutting_down() && !shutdown.is_ready());
    assert_eq!(shutdown.phase(), Phase::NotReady);
    let report = run.await.unwrap();
    observer.await.unwrap();

    assert!(report.is_clean(), "{report}");
    assert_eq!(report.exit_code(), 0);
    assert_eq!(report.trigger, Trigger::Requested);
    let ran: Vec<Phase> = report.phases.iter().map(|phase| phase.phase).collect();
    assert_eq!(ran, &Phase::ALL[1..6]);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|(phase, _)| *phase).collect::<Vec<_>>(),
        &Phase::ALL[1..]
    );
    // Stop-accepting begins once the readiness delay is over, after the trigger at 1 s.
    let stop_accepting = seen[1].1;
    assert_eq!(stop_accepting, Duration::from_secs(6));
    assert_eq!(
        report.phase(Phase::NotReady).unwrap().took,
        Duration::from_secs(5)
    );
    assert_eq!(report.total, Duration::from_secs(5));
    assert_eq!(report.scopes[0].spawned, 1);
    assert_eq!(shutdown.phase(), Phase::Done);
}

#[tokio::test(start_paused = true)]
async fn the_drain_overrun_times_out_then_the_straggler_is_aborted_at_the_deadline() {
    let coordinator = builder()
        .drain_timeout(Duration::from_secs(3))
        .deadline(Duration::from_secs(10))
        .build()
        .unwrap();
    let shutdown = coordinator.handle();
    let (stuck, dropped) = spawn_stuck(&shutdown);
    let hook_ran_at = Arc::new(std::sync::Mutex::new(None));
    let start = Instant::now();
    shutdown.on_cleanup("flush", {
        let hook_ran_at = hook_ran_at.clone();
        async move { *hook_ran_at.lock().unwrap() = Some(start.elapsed()) }
    });
    shutdown.trigger();
    let report = coordinator.run().await;

    assert_eq!(
        phases(&report),
        vec![
            (Phase::NotReady, Outcome::Completed),
            (Phase::StopAccepting, Outcome::Completed),
            (Phase::Draining, Outcome::TimedOut),
            (Phase::Cleanup, Outcome::Completed),
            (Phase::Aborting, Outcome::TimedOut),
        ]
    );
    let drain = report.phase(Phase::Draining).unwrap();
    assert_eq!(drain.took, Duration::from_secs(3));
    assert_eq!(
        *hook_ran_at.lock().unwrap(),
        Some(Duration::from_secs(3)),
        "hooks run right after the drain timeout"
    );
    // The straggler got until the deadline, then was aborted and dropped.
    let aborting = report.phase(Phase::Aborting).unwrap();
    assert_eq!(
        aborting.started_after + aborting.took,
        Duration::from_secs(10)
    );
    assert_eq!(report.aborted, 1);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the aborted task's future was dropped"
    );
    assert!(stuck.await.unwrap_err().is_cancelled());
    assert!(!report.is_clean());
    assert_eq!(report.exit_code(), 1, "aborted tasks, no escalation");
    assert_eq!(report.scopes[0].still_running, 0);
}

#[tokio::test(start_paused = true)]
async fn a_straggler_that_finishes_before_the_deadline_is_not_aborted() {
    let coordinator = builder()
        .drain_timeout(Duration::from_secs(2))
        .deadline(Duration::from_secs(10))
        .build()
        .unwrap();
    let shutdown = coordinator.handle();
    let task = shutdown
        .spawn(tokio::time::sleep(Duration::from_secs(5)))
        .unwrap();
    shutdown.trigger();
    let report = coordinator.run().await;
    assert_eq!(
        report.phase(Phase::Draining).unwrap().outcome,
        Outcome::TimedOut
    );
    let aborting = report.phase(Phase::Aborting).unwrap();
    assert_eq!(aborting.outcome, Outcome::Completed);
    assert_eq!(
        aborting.started_after + aborting.took,
        Duration::from_secs(5)
    );
    assert_eq!(report.aborted, 0);
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_hook_overrun_times_out_and_the_remaining_hooks_still_run_in_reverse_order() {
    let coordinator = builder()
        .hook_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let shutdown = coordinator.handle();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    for name in ["database", "cache", "metrics"] {
        let order = order.clone();
        shutdown.on_cleanup(name, async move {
            order.lock().unwrap().push(name);
            if name == "cache" {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        });
    }
    shutdown.trigger();
    let report = coordinator.run().await;
    assert_eq!(*order.lock().unwrap(), ["metrics", "cache", "database"]);
    let hooks: Vec<(&str, Outcome, Duration)> = report
        .hooks
        .iter()
        .map(|hook| (hook.name.as_str(), hook.outcome.clone(), hook.took))
        .collect();
    assert_eq!(
        hooks,
        vec![
            ("metrics", Outcome::Completed, Duration::ZERO),
            ("cache", Outcome::TimedOut, Duration::from_secs(2)),
            ("database", Outcome::Completed, Duration::ZERO),
        ]
    );
    assert_eq!(
        report.phase(Phase::Cleanup).unwrap().outcome,
        Outcome::Completed,
        "one hook's timeout is the hook's, not the phase's"
    );
    assert!(!report.is_clean());
}

#[tokio::test(start_paused = true)]
async fn hooks_declared_after_another_wait_for_it_and_own_timeouts_apply() {
    let coordinator = builder().build().unwrap();
    let shutdown = coordinator.handle();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let push = |name: &'static str| {
        let order = order.clone();
        async move { order.lock().unwrap().push(name) }
    };
    let database = shutdown.on_cleanup("database", push("database"));
    shutdown.on_cleanup("cache", push("cache"));
    // Registered last, but it must outlive the database (it reports the database closing).
    shutdown
        .cleanup("audit log")
        .after(database)
        .timeout(Duration::from_millis(100))
        .register(push("audit log"))
        .unwrap();
    shutdown
        .cleanup("slow")
        .timeout(Duration::from_millis(100))
        .register(tokio::time::sleep(Duration::from_secs(1)))
        .unwrap();
    shutdown.trigger();
    let report = coordinator.run().await;
    assert_eq!(*order.lock().unwrap(), ["cache", "database", "audit log"]);
    let slow = report.hook("slow").unwrap();
    assert_eq!(
        (slow.outcome.clone(), slow.took),
        (Outcome::TimedOut, Duration::from_millis(100))
    );
    assert_eq!(
        report.hooks[0].name, "slow",
        "the latest registered runs first"
    );
}

#[tokio::test(start_paused = true)]
async fn hook_failures_and_panics_are_reported_and_do_not_stop_the_others() {
    let coordinator = builder().build().unwrap();
    let shutdown = coordinator.handle();
    let last = Arc::new(AtomicBool::new(false));
    let ran = last.clone();
    shutdown.on_cleanup("last", async move { ran.store(true, Ordering::SeqCst) });
    shutdown.on_cleanup("fails", async { Err::<(), _>("disk full") });
    shutdown.on_cleanup("panics", async {
        if true {
            panic!("hook bug");
        }
    });
    shutdown.trigger();
    let report = coordinator.run().await;
    assert_eq!(
        report.hook("panics").unwrap().outcome,
        Outcome::Panicked("hook bug".into())
    );
    assert_eq!(
        report.hook("fails").unwrap().outcome,
        Outcome::Failed("disk full".into())
    );
    assert!(last.load(Ordering::SeqCst));
    assert!(report.to_string().contains("failed: disk full"), "{report}");
}

#[tokio::test(start_paused = true)]
async fn the_overall_deadline_cuts_every_phase_and_skips_the_hooks_left() {
    let coordinator = builder()
        .readiness_delay(Duration::from_secs(4))
        .drain_timeout(Duration::from_secs(8))
        .hook_timeout(Duration::from_secs(5))
        .deadline(Duration::from_secs(10))
        .build()
        .unwrap();
    let shutdown = coordinator.handle();
    shutdown.spawn(std::future::pending::<()>()).unwrap();
    shutdown.on_cleanup("never reached", async {});
    shutdown.on_cleanup("slow", tokio::time::sleep(Duration::from_secs(60)));
    let start = Instant::now();
    shutdown.trigger();
    let report = coordinator.run().await;
    // 4 s readiness delay, drain cut at 4 + 8 = 12 > 10: the deadline ends it at 10 s.
    let drain = report.phase(Phase::Draining).unwrap();
    assert_eq!(
        (drain.outcome.clone(), drain.started_after + drain.took),
        (Outcome::TimedOut, Duration::from_secs(10))
    );
    assert_eq!(report.hook("slow").unwrap().outcome, Outcome::Skipped);
    assert_eq!(
        report.hook("never reached").unwrap().outcome,
        Outcome::Skipped
    );
    assert_eq!(
        report.phase(Phase::Cleanup).unwrap().outcome,
        Outcome::TimedOut
    );
    assert_eq!(report.aborted, 1);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(10),
        "nothing waits past the deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn a_nested_scope_finishes_before_its_parent_is_told_to_stop() {
    let coordinator = builder().build().unwrap();
    let shutdown = coordinator.handle();
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let parent = shutdown.scope("writer");
    let child = parent.scope("ingest");
    let grandchild = child.scope("parser");
    assert_eq!(grandchild.name(), "root/writer/ingest/parser");
    for (scope, label, linger) in [
        (parent.clone(), "writer", 1),
        (child.clone(), "ingest", 2),
        (grandchild.clone(), "parser", 3),
    ] {
        let events = events.clone();
        let me = scope.clone();
        scope
            .spawn(async move {
                me.stopped().await;
                events.lock().unwrap().push(format!("{label} told to stop"));
                tokio::time::sleep(Duration::from_secs(linger)).await;
                events.lock().unwrap().push(format!("{label} done"));
            })
            .unwrap();
    }
    shutdown.trigger();
    let report = coordinator.run().await;
    assert_eq!(
        *events.lock().unwrap(),
        [
            "parser told to stop",
            "parser done",
            "ingest told to stop",
            "ingest done",
            "writer told to stop",
            "writer done",
        ]
    );
    assert_eq!(
        report.phase(Phase::Draining).unwrap().took,
        Duration::from_secs(6)
    );
    let names: Vec<&str> = report
        .scopes
        .iter()
        .map(|scope| scope.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "root",
            "root/writer",
            "root/writer/ingest",
            "root/writer/ingest/parser"
        ]
    );
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn work_spawned_while_draining_is_awaited_and_after_draining_is_refused_and_given_back() {
    let coordinator = builder().build().unwrap();
    let shutdown = coordinator.handle();
    let follow_up_done = Arc::new(AtomicBool::new(false));
    let root = shutdown.root();
    let done = follow_up_done.clone();
    // A task that, once told to stop, spawns a follow-up (a last write) into its own scope.
    root.spawn({
        let root = root.clone();
        async move {
            root.stopped().await;
            root.spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                done.store(true, Ordering::SeqCst);
            })
            .unwrap();
        }
    })
    .unwrap();
    shutdown.trigger();
    let report = coordinator.run().await;
    assert!(
        follow_up_done.load(Ordering::SeqCst),
        "the drain waited for it"
    );
    assert_eq!(
        report.phase(Phase::Draining).unwrap().took,
        Duration::from_secs(2)
    );
    assert_eq!(report.scopes[0].spawned, 2);

    let refused = shutdown.spawn(async { 42 }).unwrap_err();
    assert_eq!(refused.scope(), "root");
    assert_eq!(
        refused.into_inner().await,
        42,
        "the future comes back unpolled"
    );
    let late = shutdown.scope("late");
    assert!(
        late.spawn(async {}).is_err(),
        "a scope born after draining refuses"
    );
    assert!(late.is_stopping());
    let nested = late.scope("step");
    assert!(
        nested.spawn(async {}).is_err(),
        "and so does anything nested in it"
    );
    assert!(nested.is_stopping());
}

#[tokio::test(start_paused = true)]
async fn a_panicking_task_is_reported_and_can_trigger_shutdown() {
    let coordinator = builder().on_panic(PanicPolicy::Shutdown).build().unwrap();
    let shutdown = coordinator.handle();
    let scope = shutdown.scope("ingest");
    let handle = scope.spawn(async { panic!("bad frame") }).unwrap();
    assert!(
        handle.await.unwrap_err().is_panic(),
        "tokio still sees the panic"
    );
    assert!(shutdown.is_shutting_down());
    let report = coordinator.run().await;
    assert_eq!(
        report.trigger,
        Trigger::TaskPanicked {
            scope: "root/ingest".into()
        }
    );
    assert_eq!(report.panics.len(), 1);
    assert_eq!(report.panics[0].message, "bad frame");
    assert!(report.panics[0].task.is_some());
    assert_eq!(report.scopes[1].panicked, 1);
    assert!(!report.is_clean());
}

#[tokio::test(start_paused = true)]
async fn by_default_a_panic_is_only_reported() {
    let coordinator = builder().build().unwrap();
    let shutdown = coordinator.handle();
    // A finished tracked future counts out on completion, even while the caller keeps it.
    let mut finished = Box::pin(shutdown.track(async { 7 }).unwrap());
    assert_eq!(shutdown.running_tasks(), 1);
    assert_eq!((&mut finished).await, 7);
    assert_eq!(shutdown.running_tasks(), 0);
    let tracked = shutdown
        .track(async { panic!("in a tracked future") })
        .unwrap();
    assert!(tokio::spawn(tracked).await.unwrap_err().is_panic());
    assert!(!shutdown.is_shutting_down());
    assert_eq!(
        shutdown.running_tasks(),
        0,
        "a panicked task is counted out"
    );
    shutdown.trigger();
    let report = coordinator.run().await;
    assert_eq!(report.trigger, Trigger::Requested);
    assert_eq!(report.panics[0].message, "in a tracked future");
}

/// A long-lived service whose handlers panic now and then: the report keeps the latest 64 in
/// full (bounded memory), and the scope's count still has them all.
#[tokio::test(start_paused = true)]
async fn the_report_keeps_the_latest_panics_and_counts_them_all() {
    let coordinator = builder().build().unwrap();
    let shutdown = coordinator.handle();
    let handlers = shutdown.scope("handlers");
    for i in 0..100 {
        let handler = handlers
            .spawn(async move { panic!("request {i}") })
            .unwrap();
        assert!(handler.await.unwrap_err().is_panic());
    }
    shutdown.trigger();
    let report = coordinator.run().await;
    let messages: Vec<&str> = report.panics.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(messages.len(), 64);
    assert_eq!(messages[0], "request 36");
    assert_eq!(messages[63], "request 99");
    let scope = report.scopes.iter().find(|s| s.name.ends_with("handlers"));
    assert_eq!(scope.unwrap().panicked, 100);
}

#[tokio::test(start_paused = true)]
async fn escalation_aborts_at_once_skips_the_hooks_and_drops_the_tasks() {
    let coordinator = builder()
        .drain_timeout(Duration::from_secs(20))
        .deadline(Duration::from_secs(30))
        .build()
        .unwrap();
    let shutdown = coordinator.handle();
    let (_stuck, dropped) = spawn_stuck(&shutdown);
    let hook_ran = Arc::new(AtomicBool::new(false));
    let ran = hook_ran.clone();
    shutdown.on_cleanup("flush", async move { ran.store(true, Ordering::SeqCst) });
    let run = tokio::spawn(coordinator.run());
    shutdown.trigger();
    shutdown.wait_for(Phase::Draining).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    shutdown.escalate();
    let report = run.await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no timer ran out: it aborted at once"
    );
    assert_eq!(report.escalated, Some(None));
    assert_eq!(report.exit_code(), 1, "escalated, by no signal");
    assert!(shutdown.is_escalated());
    let drain = report.phase(Phase::Draining).unwrap();
    assert_eq!(
        (drain.outcome.clone(), drain.took),
        (Outcome::Interrupted, Duration::from_secs(1)),
        "an interrupted phase is timed up to the escalation"
    );
    assert_eq!(report.hook("flush").unwrap().outcome, Outcome::Skipped);
    assert!(!hook_ran.load(Ordering::SeqCst));
    assert_eq!(report.aborted, 1);
    assert!(dropped.load(Ordering::SeqCst));
    assert!(report.to_string().contains("escalated"), "{report}");
}

/// An escalation the sequence could outrun (one before `run`, or in the poll the sequence
/// finishes in) is in the report: the biased select polled the finished sequence first and
/// never saw it, so the report said clean while `is_escalated()` said otherwise (and with
/// `Escalation::Exit` the process did not exit).
#[tokio::test(start_paused = true)]
async fn an_escalation_the_sequence_outruns_is_in_the_report() {
    let coordinator = builder().build().unwrap();
    let shutdown = coordinator.handle();
    shutdown.escalate();
    let report = coordinator.run().await;
    assert!(shutdown.is_escalated());
    assert_eq!(report.escalated, Some(None), "{report}");
    assert!(!report.is_clean());
    // Nothing was left to abort: every phase completed, none is listed twice.
    let phases: Vec<(Phase, Outcome)> = report
        .phases
        .iter()
        .map(|p| (p.phase, p.outcome.clone()))
        .collect();
    assert!(
        phases
            .iter()
            .all(|(_, outcome)| *outcome == Outcome::Completed),
        "{phases:?}"
    );
    assert_eq!(report.aborted, 0);
}

/// Escalated while the Aborting phase waits for the deadline: the tasks are aborted at once,
/// within that phase, and the report lists it once (it listed a second Aborting phase, and
/// `report.phase(Phase::Aborting)` found the first, which missed the abort).
#[tokio::test(start_paused = true)]
async fn escalation_while_aborting_aborts_at_once_in_that_phase() {
    let coordinator = builder()
        .drain_timeout(Duration::from_secs(1))
        .deadline(Duration::from_secs(30))
        .build()
        .unwrap();
    let shutdown = coordinator.handle();
    let (_stuck, dropped) = spawn_stuck(&shutdown);
    let run = tokio::spawn(coordinator.run());
    shutdown.trigger();
    shutdown.wait_for(Phase::Aborting).await;
    let entered = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    shutdown.escalate();
    let report = run.await.unwrap();
    assert_eq!(entered.elapsed(), Duration::from_secs(2), "aborted at once");
    let phases: Vec<Phase> = report.phases.iter().map(|p| p.phase).collect();
    assert_eq!(
        phases.iter().filter(|p| **p == Phase::Aborting).count(),
        1,
        "{phases:?}\n{report}"
    );
    let aborting = report.phase(Phase::Aborting).unwrap();
    assert_eq!(
        (aborting.outcome.clone(), aborting.took),
        (Outcome::Interrupted, Duration::from_secs(2)),
        "timed from its start to the abort"
    );
    assert_eq!(report.aborted, 1);
    assert!(dropped.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn the_stop_accepting_phase_waits_for_listeners_and_times_out_on_a_stuck_one() {
    let coordinator = builder()
        .stop_accepting_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let shutdown = coordinator.handle();
    let http = shutdown.listener("http");
    let stopped_at = Arc::new(std::sync::Mutex::new(None));
    let start = Instant::now();
    tokio::spawn({
        let stopped_at = stopped_at.clone();
        async move {
            http.stop_accepting().await;
            *stopped_at.lock().unwrap() = Some(start.elapsed());
        }
    });
    let _stuck = shutdown.listener("grpc"); // never stops: held until the end of the test
    assert_eq!(shutdown.metrics().listeners, 2);
    shutdown.trigger();
    let report = coordinator.run().await;
    assert_eq!(*stopped_at.lock().unwrap(), Some(Duration::ZERO));
    let phase = report.phase(Phase::StopAccepting).unwrap();
    assert_eq!(
        (phase.outcome.clone(), phase.took),
        (Outcome::TimedOut, Duration::from_secs(2))
    );
    assert_eq!(shutdown.metrics().listeners, 1);
    let late = shutdown.listener("late");
    late.stop_accepting().await; // completes at once, never counted
    assert_eq!(shutdown.metrics().listeners, 1);
}

#[tokio::test(start_paused = true)]
async fn dropped_waits_leave_later_waits_working_and_a_dropped_listener_counts_as_stopped() {
    let coordinator = builder().build().unwrap();
    let shutdown = coordinator.handle();
    let scope = shutdown.scope("worker");
    // Poll each wait once (registering a waker), then drop it.
    for _ in 0..100 {
        let requested = shutdown.requested();
        let stopped = scope.stopped();
        assert!(
            tokio::time::timeout(Duration::from_millis(1), async {
                tokio::join!(requested, stopped)
            })
            .await
            .is_err()
        );
    }
    let listener = shutdown.listener("http");
    let wait = listener.stop_accepting();
    drop(wait);
    assert_eq!(shutdown.metrics().listeners, 0);
    // The waits still work after all that cancelling.
    let woken = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let shutdown = shutdown.clone();
        let scope = scope.clone();
        let woken = woken.clone();
        tokio::spawn(async move {
            shutdown.requested().await;
            scope.stopped().await;
            woken.fetch_add(1, Ordering::SeqCst);
        });
    }
    tokio::task::yield_now().await;
    shutdown.trigger();
    let report = coordinator.run().await;
    assert!(report.is_clean(), "{report}");
    tokio::task::yield_now().await;
    assert_eq!(woken.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn default_timeouts_are_cut_to_a_short_deadline() {
    let coordinator = builder().deadline(Duration::from_secs(2)).build().unwrap();
    let shutdown = coordinator.handle();
    shutdown.spawn(std::future::pending::<()>()).unwrap();
    shutdown.on_cleanup("slow", std::future::pending::<()>());
    shutdown.trigger();
    let report = coordinator.run().await;
    assert_eq!(
        report.phase(Phase::Draining).unwrap().took,
        Duration::from_secs(2)
    );
    assert_eq!(report.hook("slow").unwrap().outcome, Outcome::Skipped);
    assert_eq!(report.total, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn run_waits_for_a_trigger_that_came_before_it_and_counts_time_from_the_trigger() {
    let coordinator = builder()
        .readiness_delay(Duration::from_secs(3))
        .build()
        .unwrap();
    let shutdown = coordinator.handle();
    shutdown.trigger();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = coordinator.run().await;
    // The readiness delay runs from when run() got there, but the deadline from the trigger.
    assert_eq!(
        report.phase(Phase::NotReady).unwrap().started_after,
        Duration::from_secs(2)
    );
    assert_eq!(report.total, Duration::from_secs(5));
}

#[test]
fn every_knob_is_validated_and_the_error_names_it() {
    let cases: Vec<(CoordinatorBuilder, &str)> = vec![
        (
            builder().deadline(Duration::ZERO),
            "deadline must be in 1ms..=24h, got 0ns",
        ),
        (
            builder().deadline(Duration::from_secs(100_000)),
            "deadline must be in 1ms..=24h, got 100000s",
        ),
        (
            builder()
                .deadline(Duration::from_secs(10))
                .readiness_delay(Duration::from_secs(11)),
            "readiness_delay must be in 0s..=deadline (10s), got 11s",
        ),
        (
            builder().stop_accepting_timeout(Duration::from_secs(31)),
            "stop_accepting_timeout must be in 0s..=deadline (30s), got 31s",
        ),
        (
            builder().drain_timeout(Duration::from_secs(31)),
            "drain_timeout must be in 0s..=deadline (30s), got 31s",
        ),
        (
            builder().hook_timeout(Duration::ZERO),
            "hook_timeout must be in 1ms..=deadline (30s), got 0ns",
        ),
        (
            builder().abort_grace(Duration::from_secs(61)),
            "abort_grace must be in 0s..=60s, got 61s",
        ),
    ];
    for (builder, message) in cases {
        assert_eq!(builder.build().unwrap_err().to_string(), message);
    }
    // Timeouts left at their defaults are cut to a short deadline instead.
    assert!(builder().deadline(Duration::from_secs(2)).build().is_ok());
    let coordinator = builder().build().unwrap();
    let shutdown = coordinator.handle();
    let error = shutdown
        .cleanup("x")
        .timeout(Duration::from_secs(31))
        .register(async {})
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "timeout must be in 1ms..=deadline (30s), got 31s"
    );
    let own = shutdown.on_cleanup("own", async {});
    let other = builder().build().unwrap();
    let foreign = other.handle().on_cleanup("foreign", async {});
    assert_ne!(
        foreign, own,
        "the same index on another coordinator is another hook"
    );
    let error = shutdown
        .cleanup("y")
        .after(foreign)
        .register(async {})
        .unwrap_err();
    assert_eq!(error.field(), "after");
    assert!(shutdown.cleanup("z").after(own).register(async {}).is_ok());
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Coordinator>();
    send_sync::<Shutdown>();
    send_sync::<palisade_shutdown::Scope>();
    send_sync::<palisade_shutdown::WaitFor>();
    send_sync::<palisade_shutdown::Stopped>();
    send_sync::<palisade_shutdown::Listener>();
    send_sync::<palisade_shutdown::ShutdownReport>();
    send_sync::<palisade_shutdown::Tracked<std::future::Ready<()>>>();
    send_sync::<palisade_shutdown::ShutdownLayer>();
    send_sync::<palisade_shutdown::RequestGuard>();
    // An error for `?` into `Box<dyn Error + Send + Sync>` even when the future is not `Sync`.
    type NotSync = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
    send_sync::<palisade_shutdown::Refused<NotSync>>();
    fn boxed(
        refused: palisade_shutdown::Refused<NotSync>,
    ) -> Box<dyn std::error::Error + Send + Sync> {
        refused.into()
    }
    let _ = boxed;
    fn send<T: Send>(_: &T) {}
    let coordinator = builder().build().unwrap();
    send(&coordinator.run());
}

#[tokio::test(start_paused = true)]
async fn when_a_child_scope_overruns_the_drain_its_parent_is_still_told_to_stop() {
    let coordinator = builder()
        .drain_timeout(Duration::from_secs(2))
        .deadline(Duration::from_secs(10))
        .build()
        .unwrap();
    let shutdown = coordinator.handle();
    let parent = shutdown.scope("writer");
    let child = parent.scope("ingest");
    child.spawn(std::future::pending::<()>()).unwrap();
    let start = Instant::now();
    let writer = parent.clone();
    let writer_stopped_at = parent
        .spawn(async move {
            writer.stopped().await;
            start.elapsed()
        })
        .unwrap();
    shutdown.trigger();
    let report = coordinator.run().await;
    assert_eq!(
        writer_stopped_at.await.unwrap(),
        Duration::from_secs(2),
        "told at the drain timeout, not left to be aborted"
    );
    assert_eq!(report.aborted, 1, "only the stuck task");
}

#[test]
fn a_runtime_without_io_gets_a_logged_error_not_a_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        // Default signals: tokio cannot deliver them here, and would panic if asked.
        let coordinator = Coordinator::builder().build().unwrap();
        let shutdown = coordinator.handle();
        shutdown.trigger();
        assert!(coordinator.run().await.is_clean());
    });
}

#[tokio::test(start_paused = true)]
async fn a_server_without_tower_counts_its_requests_with_guards() {
    let coordinator = builder()
        .readiness_delay(Duration::from_secs(1))
        .build()
        .unwrap();
    let shutdown = coordinator.handle();
    let before = shutdown.begin_request().unwrap();
    let run = tokio::spawn(coordinator.run());
    shutdown.trigger();
    let during_delay = shutdown
        .begin_request()
        .expect("still serving while not ready");
    assert_eq!(shutdown.metrics().requests_in_flight, 2);
    shutdown.wait_for(Phase::Draining).await;
    assert!(shutdown.begin_request().is_none(), "refused once draining");
    assert_eq!(
        shutdown.metrics().requests_in_flight,
        2,
        "a refusal leaves no count"
    );
    drop(before);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        shutdown.phase(),
        Phase::Draining,
        "the drain waits for the last guard"
    );
    drop(during_delay);
    let report = run.await.unwrap();
    assert_eq!(
        report.phase(Phase::Draining).unwrap().took,
        Duration::from_secs(3)
    );
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_hook_registered_too_late_is_reported_skipped() {
    let coordinator = builder()
        .drain_timeout(Duration::from_secs(1))
        .deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    let shutdown = coordinator.handle();
    let (_stuck, _) = spawn_stuck(&shutdown);
    let run = tokio::spawn(coordinator.run());
    shutdown.trigger();
    shutdown.wait_for(Phase::Aborting).await;
    shutdown.on_cleanup("late", async {});
    let report = run.await.unwrap();
    assert_eq!(report.hook("late").unwrap().outcome, Outcome::Skipped);
}

/// A per-connection scope that made a nested scope (per request) is pruned once it is finished
/// and no handle is left, like any other finished scope: a long-running server creating one per
/// connection must not grow its scope tree (and its report, and every walk of it) without end.
/// The pruned scopes' counts are kept for the report, nested ones included.
#[tokio::test(start_paused = true)]
async fn finished_scopes_with_nested_scopes_are_pruned_and_their_counts_kept() {
    let coordinator = builder().build().unwrap();
    let shutdown = coordinator.handle();
    for _ in 0..1000 {
        let connection = shutdown.scope("connection");
        connection.spawn(async {}).unwrap().await.unwrap();
        let request = connection.scope("request");
        request.spawn(async {}).unwrap().await.unwrap();
    }
    shutdown.trigger();
    let report = coordinator.run().await;
    assert!(report.is_clean(), "{report}");
    assert!(
        report.scopes.len() <= 2 * 64 * 2 + 1,
        "{} scopes kept for 1000 finished connections",
        report.scopes.len()
    );
    let spawned: u64 = report.scopes.iter().map(|scope| scope.spawned).sum();
    assert_eq!(spawned, 2000, "every task is counted once in the report");
}

/// Panics when dropped, as a hook future owning a blocking client (which owns a runtime of its
/// own: "Cannot drop a runtime in a context where blocking is not allowed") does when it is
/// dropped on a runtime thread.
struct PanicsWhenDropped;

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("dropped in an async context");
        }
    }
}

/// A hook the deadline does not reach is dropped without running; like a hook that runs (on a
/// task of its own), its future's destructor must not take `run()` down: the report still comes
/// back, with the hook skipped.
#[tokio::test(start_paused = true)]
async fn a_hook_skipped_at_the_deadline_that_panics_when_dropped_does_not_take_run_down() {
    let coordinator = builder().deadline(Duration::from_secs(1)).build().unwrap();
    let shutdown = coordinator.handle();
    let owned = PanicsWhenDropped;
    shutdown.on_cleanup("blocking client", async move {
        let _owned = &owned;
    });
    shutdown.on_cleanup("slow", std::future::pending::<()>());
    shutdown.trigger();
    let report = tokio::spawn(coordinator.run())
        .await
        .expect("run() returns its report");
    assert_eq!(report.hook("slow").unwrap().outcome, Outcome::TimedOut);
    assert_eq!(
        report.hook("blocking client").unwrap().outcome,
        Outcome::Skipped
    );
}

/// The same for the hooks an escalation skips (dropped as the report is made).
#[tokio::test(start_paused = true)]
async fn a_hook_skipped_by_an_escalation_that_panics_when_dropped_does_not_take_run_down() {
    let coordinator = builder().build().unwrap();
    let shutdown = coordinator.handle();
    let owned = PanicsWhenDropped;
    shutdown.on_cleanup("blocking client", async move {
        let _owned = &owned;
    });
    shutdown.spawn(std::future::pending::<()>()).unwrap();
    let run = tokio::spawn(coordinator.run());
    shutdown.trigger();
    shutdown.wait_for(Phase::Draining).await;
    shutdown.escalate();
    let report = run.await.expect("run() returns its report");
    assert_eq!(
        report.hook("blocking client").unwrap().outcome,
        Outcome::Skipped
    );
    assert_eq!(report.aborted, 1);
}

/// Registers a cleanup hook owning a flag set when its future is dropped (a log guard that
/// flushes, a writer); the hook returns at once, or with `hangs` never.
fn hook_owning_a_guard(shutdown: &Shutdown, name: &str, hangs: bool) -> Arc<AtomicBool> {
    let dropped = Arc::new(AtomicBool::new(false));
    let guard = DropFlag(dropped.clone());
    shutdown.on_cleanup(name, async move {
        let _guard = guard;
        if hangs {
            std::future::pending::<()>().await;
        }
    });
    dropped
}

/// The hook ended as `outcome`, and its future (with the guard it owns) was dropped by the time
/// `run()` returned: `main` typically calls `process::exit` right after `run()` (see the
/// README), so a guard dropped later would never flush.
fn assert_dropped(report: &ShutdownReport, name: &str, outcome: Outcome, dropped: &AtomicBool) {
    assert_eq!(report.hook(name).unwrap().outcome, outcome);
    assert!(
        dropped.load(Ordering::SeqCst),
        "run() returned before the {outcome:?} hook's future was dropped"
    );
}

/// A hook the deadline does not reach is dropped unpolled by the time `run()` returns.
#[tokio::test(start_paused = true)]
async fn a_hook_skipped_at_the_deadline_is_dropped_before_run_returns() {
    let coordinator = builder().deadline(Duration::from_secs(1)).build().unwrap();
    let shutdown = coordinator.handle();
    let dropped = hook_owning_a_guard(&shutdown, "flush logs", false);
    shutdown.on_cleanup("slow", std::future::pending::<()>());
    shutdown.trigger();
    let report = coordinator.run().await;
    assert_dropped(&report, "flush logs", Outcome::Skipped, &dropped);
}

/// The same for the hooks an escalation skips.
#[tokio::test(start_paused = true)]
async fn a_hook_skipped_by_an_escalation_is_dropped_before_run_returns() {
    let coordinator = builder().build().unwrap();
    let shutdown = coordinator.handle();
    let dropped = hook_owning_a_guard(&shutdown, "flush logs", false);
    shutdown.spawn(std::future::pending::<()>()).unwrap();
    shutdown.escalate();
    let report = coordinator.run().await;
    assert_dropped(&report, "flush logs", Outcome::Skipped, &dropped);
}

/// A hook that timed out is aborted, and its future dropped by the time `run()` returns too.
#[tokio::test(start_paused = true)]
async fn a_hook_that_timed_out_is_dropped_before_run_returns() {
    let coordinator = builder()
        .hook_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let shutdown = coordinator.handle();
    let dropped = hook_owning_a_guard(&shutdown, "flush logs, slowly", true);
    shutdown.trigger();
    let report = coordinator.run().await;
    assert_dropped(&report, "flush logs, slowly", Outcome::TimedOut, &dropped);
}

/// The same for a hook an escalation interrupts while it runs.
#[tokio::test(start_paused = true)]
async fn a_hook_interrupted_by_an_escalation_is_dropped_before_run_returns() {
    let coordinator = builder().build().unwrap();
    let shutdown = coordinator.handle();
    let dropped = hook_owning_a_guard(&shutdown, "flush logs, slowly", true);
    shutdown.trigger();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            shutdown.escalate();
        }
    });
    let report = coordinator.run().await;
    assert_dropped(
        &report,
        "flush logs, slowly",
        Outcome::Interrupted,
        &dropped,
    );
}
