//! A coordinator dropped without `run` leaves its signal handlers nothing to trigger: the first
//! SIGTERM must then end the process (with 128 + 15), not be swallowed. Its own binary, without
//! the test harness: it runs itself again as the child that gets the signal, and checks how the
//! child ended.

#[cfg(unix)]
fn main() {
    use std::process::Command;

    const CHILD: &str = "PALISADE_SIGNAL_ABANDONED_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let coordinator = palisade_shutdown::Coordinator::builder()
                .signals([palisade_shutdown::Signal::Terminate])
                .build()
                .unwrap();
            let shutdown = coordinator.handle();
            drop(coordinator);
            let status = Command::new("kill")
                .args(["-TERM", &std::process::id().to_string()])
                .status()
                .expect("the `kill` command runs");
            assert!(status.success());
            // The handler either exits the process (no coordinator left) or, swallowing the
            // signal, triggers the orphaned shutdown: then this returns, and so does the child.
            shutdown.requested().await;
        });
        // Still here: the signal was swallowed.
        std::process::exit(0);
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .output()
        .expect("run the child");
    assert_eq!(
        output.status.code(),
        Some(128 + 15),
        "the child's SIGTERM with no coordinator left: {:?}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    println!("signal_abandoned: the SIGTERM ended the process with 143");
}

#[cfg(not(unix))]
fn main() {}
