//! The palisade tour: `cargo run --example tour`.
//!
//! A narrated walk through what palisade has today, one chapter per crate. Each crate adds its
//! chapter as it lands; the crates still to come are listed at the end.

use std::process::ExitCode;
use std::time::Duration;

use palisade::{Clock, FastClock, Instant, ManualClock, TokioClock};

const USAGE: &str = "usage: cargo run --example tour [-- --help]

Walks through palisade's crates with live demos. Takes no options yet; it finishes in seconds.";

fn main() -> ExitCode {
    if let Some(arg) = std::env::args().nth(1) {
        if arg == "--help" || arg == "-h" {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        eprintln!("tour: unexpected argument {arg:?}\n\n{USAGE}");
        return ExitCode::FAILURE;
    }

    banner();
    chapter_time();
    coming_next();
    ExitCode::SUCCESS
}

fn banner() {
    println!("palisade: resilience patterns for tokio services");
    println!("=================================================");
    println!();
    println!("Each chapter below runs a real demo of one crate. Nothing here waits on wall-clock");
    println!("time except where a chapter says so, so the tour finishes in seconds.");
    println!();
}

/// palisade-core: the clocks every primitive reads.
fn chapter_time() {
    println!("Chapter 1 - time (palisade-core)");
    println!("--------------------------------");
    println!(
        "Every time-based decision in palisade (is this rate exceeded? has the breaker cooled"
    );
    println!("down? is this connection too old?) reads a Clock that you inject. Three ship:");
    println!();

    // FastClock: the production default.
    let calibration = std::time::Instant::now();
    let fast = FastClock::new();
    let calibrated_in = calibration.elapsed();
    println!("  FastClock (the default) reads the CPU's invariant time-stamp counter, calibrated");
    println!(
        "  against the OS clock once per process (this time: {}). A read is one counter",
        human(calibrated_in)
    );
    println!("  read, a multiply and a shift: as cheap as quanta's, about 2.4x cheaper than");
    println!("  std::time::Instant::now (criterion numbers: docs/benchmarks.md).");
    let (first, second) = (fast.now(), fast.now());
    println!(
        "    two reads in a row: {first:?}, then {second:?} ({} later).",
        human(second - first)
    );
    println!();

    // ManualClock: time that only moves when the test says so.
    let clock = ManualClock::new();
    let inside_a_primitive = clock.clone();
    let before = inside_a_primitive.now();
    clock.advance(Duration::from_secs(90));
    clock.advance_to(Instant::ZERO + Duration::from_secs(30)); // the past: no effect
    println!("  ManualClock moves only when a test moves it, and clones share its time:");
    println!("    a primitive's clone reads {before:?};");
    println!(
        "    after advance(90 s) and then advance_to(30 s), which is in the past, it reads {:?}.",
        inside_a_primitive.now()
    );
    println!();

    // TokioClock: follows tokio's clock, so paused-time tests drive it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
    let wall = std::time::Instant::now();
    let slept = runtime.block_on(async {
        let clock = TokioClock::new();
        let start = clock.now();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        clock.elapsed(start)
    });
    println!("  TokioClock follows tokio's clock. In a paused runtime, as in");
    println!("  #[tokio::test(start_paused = true)], a one-hour sleep returns at once:");
    println!(
        "    the clock saw {} pass in {} of wall time.",
        human(slept),
        human(wall.elapsed())
    );
    println!();
}

fn coming_next() {
    println!("Coming next");
    println!("-----------");
    println!("These crates are planned and get their chapters here as they land:");
    for (name, what) in [
        (
            "palisade-retry",
            "backoff with jitter under the cap, retry budgets",
        ),
        (
            "palisade-breaker",
            "circuit breaker with windows, slow calls, cancel-safe probes",
        ),
        (
            "palisade-ratelimit",
            "GCRA in one atomic, keyed limits, fair waiting",
        ),
        (
            "palisade-bulkhead",
            "bounded queues, shedding, adaptive concurrency",
        ),
        (
            "palisade-pool",
            "async connection pool with fair hand-off and lifetime jitter",
        ),
        (
            "palisade-reconnect",
            "reconnecting streams and services, gRPC backoff",
        ),
        (
            "palisade-shutdown",
            "graceful-shutdown phases, deadlines and a report",
        ),
        (
            "palisade-lock",
            "lock ordering at compile time and at run time",
        ),
    ] {
        println!("  {name:<20} {what}");
    }
}

/// A duration rounded for reading: `3.2 ms`, `1 h`.
fn human(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 3600.0 {
        format!("{:.0} h", secs / 3600.0)
    } else if secs >= 1.0 {
        format!("{secs:.1} s")
    } else if secs >= 1e-3 {
        format!("{:.1} ms", secs * 1e3)
    } else if secs >= 1e-6 {
        format!("{:.1} us", secs * 1e6)
    } else {
        format!("{} ns", d.as_nanos())
    }
}
