//! Real signals sent to this test process: the first SIGTERM triggers, the second escalates.
//! One test in its own binary, so no other test sees the signals.

#![cfg(unix)]

use std::time::Duration;

use palisade_shutdown::{Coordinator, Outcome, Phase, Signal, Trigger};

fn send_sigterm_to_self() {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("the `kill` command runs");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_sigterm_triggers_and_the_second_escalates() {
    // Installed at build: a signal sent before `run` is polled is kept for it (without the
    // handler, SIGTERM's default action would end this test process).
    let coordinator = Coordinator::builder()
        .signals([Signal::Terminate, Signal::Interrupt])
        .drain_timeout(Duration::from_secs(600))
        .deadline(Duration::from_secs(900))
        .build()
        .unwrap();
    let shutdown = coordinator.handle();
    shutdown.spawn(std::future::pending::<()>()).unwrap();
    send_sigterm_to_self();
    // The handlers act at once, before `run` is even polled: readiness fails right away.
    tokio::time::timeout(Duration::from_secs(60), shutdown.requested())
        .await
        .expect("the SIGTERM triggers without run()");
    assert!(!shutdown.is_ready());
    let run = tokio::spawn(coordinator.run());
    shutdown.wait_for(Phase::Draining).await;
    send_sigterm_to_self();
    // Bounded only so a regression fails instead of hanging; escalation returns at once.
    let report = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the second SIGTERM ends the shutdown")
        .unwrap();
    assert_eq!(report.trigger, Trigger::Signal(Signal::Terminate));
    assert_eq!(report.escalated, Some(Some(Signal::Terminate)));
    assert_eq!(report.exit_code(), 143, "128 + SIGTERM");
    assert_eq!(
        report.phase(Phase::Draining).unwrap().outcome,
        Outcome::Interrupted
    );
    assert_eq!(report.aborted, 1);
    assert!(
        report.to_string().contains("escalated by SIGTERM"),
        "{report}"
    );
}
