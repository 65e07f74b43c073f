//! The palisade tour: `cargo run --example tour`.
//!
//! A narrated walk through what palisade has today, one chapter per crate. Each crate adds its
//! chapter as it lands; the crates still to come are listed at the end.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use palisade::breaker::{
    CallError, CircuitBreaker, OpenDuration, SlidingWindow, State, Transition,
};
use palisade::ratelimit::{KeyedRateLimiter, Quota, RateLimiter};
use palisade::retry::{Backoff, Jitter, RetryPolicy, TpsBudget, retry};
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
    chapter_retry();
    chapter_breaker();
    chapter_ratelimit();
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
    println!(
        "  FastClock (the default) reads the CPU's invariant time-stamp counter where there is"
    );
    println!(
        "  one, calibrated against the OS clock once per process (this time: {}). A read is",
        human(calibrated_in)
    );
    println!("  one counter read, a multiply and a shift: as cheap as quanta's, and well under");
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
    let runtime = paused_runtime();
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

/// palisade-retry: a flaky call that succeeds on retry, and a budget that stops a retry storm.
fn chapter_retry() {
    println!("Chapter 2 - retry (palisade-retry)");
    println!("----------------------------------");
    println!(
        "A flaky upstream fails twice, then answers. The retry loop (which by default retries"
    );
    println!(
        "every error) backs off exponentially from 100 ms with full jitter, a random delay in"
    );
    println!("[0, 100 ms x 2^n]; the seed is fixed here, so every run tells the same story:");
    println!();

    let runtime = paused_runtime();
    let policy = RetryPolicy::builder()
        .backoff(
            Backoff::exponential(Duration::from_millis(100))
                .max_delay(Duration::from_secs(2))
                .jitter(Jitter::Full),
        )
        .max_attempts(5)
        .seed(7)
        .build()
        .expect("a valid policy");
    runtime.block_on(async {
        let start = tokio::time::Instant::now();
        let calls = AtomicU32::new(0);
        let answer = retry(|| async {
            let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
            let at = start.elapsed();
            if n <= 2 {
                println!(
                    "    t = {:>3} ms  attempt {n}: connection reset",
                    at.as_millis()
                );
                Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
            } else {
                println!("    t = {:>3} ms  attempt {n}: 200 OK", at.as_millis());
                Ok("200 OK")
            }
        })
        .with(&policy)
        .await;
        println!(
            "  The caller saw one answer, {:?}, after {} (virtual time).",
            answer.expect("the third attempt succeeds"),
            human(start.elapsed())
        );
    });
    println!();

    println!("Now the upstream is down hard, and 200 clients call it at once. Without a budget,");
    println!("each one retries 3 times: the dead upstream takes 4x the load. A shared TpsBudget");
    println!("(each request earns 0.2 of a retry) keeps the extra load to about a fifth:");
    println!();
    let storm = |budget: Option<Arc<TpsBudget>>| {
        runtime.block_on(async {
            let calls = Arc::new(AtomicU32::new(0));
            let clients: Vec<_> = (0..200)
                .map(|_| {
                    let (calls, budget) = (calls.clone(), budget.clone());
                    let policy = RetryPolicy::builder()
                        .backoff(Backoff::constant(Duration::from_millis(50)))
                        .max_attempts(4)
                        .build()
                        .expect("a valid policy");
                    tokio::spawn(async move {
                        let call = retry(|| async {
                            calls.fetch_add(1, Ordering::Relaxed);
                            Err::<(), _>("503 Service Unavailable")
                        })
                        .with(policy);
                        match budget {
                            Some(budget) => call.budget(budget).await,
                            None => call.await,
                        }
                    })
                })
                .collect();
            for client in clients {
                let outcome = client.await.expect("the client task ran");
                assert_eq!(
                    outcome,
                    Err("503 Service Unavailable"),
                    "the real error comes back"
                );
            }
            calls.load(Ordering::Relaxed)
        })
    };
    let unbudgeted = storm(None);
    let budget = TpsBudget::builder()
        .min_per_sec(0)
        .retry_ratio(0.2)
        .build()
        .expect("a valid budget");
    let budgeted = storm(Some(Arc::new(budget)));
    println!("    without a budget: {unbudgeted:>4} calls reach the upstream (200 requests)");
    println!("    with a budget:    {budgeted:>4} calls reach the upstream (200 requests)");
    println!("  Every client still got the real error, \"503 Service Unavailable\", never a");
    println!("  made-up \"retries exhausted\".");
    println!();
}

/// palisade-breaker: a dependency goes down; the breaker opens, rejects fast, probes, and closes
/// once it has recovered.
fn chapter_breaker() {
    println!("Chapter 3 - circuit breaker (palisade-breaker)");
    println!("----------------------------------------------");
    println!("A client sends a request every 100 ms. The upstream answers in 5 ms, until it goes");
    println!("down at t = 2 s: then each call hangs 1 s before it fails, until it recovers at");
    println!(
        "t = 8 s. The breaker trips at a 50 % failure rate over the last 10 calls, stays open"
    );
    println!("2 s (doubling on each re-opening), then lets 3 probes through and closes when 2 of");
    println!("them succeed. Its transitions:");
    println!();

    let runtime = paused_runtime();
    runtime.block_on(async {
        let start = tokio::time::Instant::now();
        let log = move |t: &Transition| {
            let why = match t.to {
                State::Open => format!(
                    "{}: {} of {} calls failed; open for {}",
                    t.reason,
                    t.window.failures,
                    t.window.calls,
                    human(t.open_for.unwrap_or_default())
                ),
                _ => t.reason.to_string(),
            };
            println!(
                "    t = {:>4.1} s  {:>9} -> {:<9}  {why}",
                start.elapsed().as_secs_f64(),
                t.from.to_string(),
                t.to.to_string()
            );
        };
        let breaker = Arc::new(
            CircuitBreaker::builder()
                .name("upstream")
                .failure_rate(50.0)
                .minimum_calls(10)
                .window(SlidingWindow::count(10))
                .open_duration(OpenDuration::exponential(
                    Duration::from_secs(2),
                    Duration::from_secs(30),
                ))
                .half_open_probes(3)
                .half_open_success_ratio(0.6)
                .on_transition(log)
                .clock(TokioClock::new())
                .build()
                .expect("a valid breaker"),
        );

        let down = |at: Duration| at >= Duration::from_secs(2) && at < Duration::from_secs(8);
        let mut requests = Vec::new();
        for n in 0..120_u64 {
            tokio::time::sleep_until(start + Duration::from_millis(100 * n)).await;
            let breaker = Arc::clone(&breaker);
            requests.push(tokio::spawn(async move {
                let call = async {
                    if down(start.elapsed()) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Err("503 Service Unavailable")
                    } else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Ok("200 OK")
                    }
                };
                let began = tokio::time::Instant::now();
                let result = breaker.call(call).await;
                (result, began.elapsed())
            }));
        }
        let (mut ok, mut failed, mut rejected, mut waited) = (0, 0, 0, Duration::ZERO);
        for request in requests {
            let (result, took) = request.await.expect("the request task ran");
            match result {
                Ok(_) => ok += 1,
                Err(CallError::Inner(_)) => {
                    failed += 1;
                    waited += took;
                }
                Err(CallError::Rejected(_)) => rejected += 1,
            }
        }
        println!();
        println!("  120 requests over 12 s (virtual time): {ok} answered, {failed} failed after");
        println!(
            "  hanging on the dead upstream ({} of waiting in all), and {rejected} were rejected",
            human(waited)
        );
        println!("  at once, without touching it, while the breaker was open.");
    });
    println!();
}

/// palisade-ratelimit: per-client limits on a server, fair waiting on a client.
fn chapter_ratelimit() {
    println!("Chapter 4 - rate limiting (palisade-ratelimit)");
    println!("----------------------------------------------");
    println!("A server gives each client 10 requests per second with a burst of 20, in one keyed");
    println!("limiter (one atomic word per client, at most 10,000 clients tracked). Over 5 s of");
    println!("virtual time, a polite client sends 8 requests a second, a greedy one 50, and a");
    println!("bursty one 40 at once every 2 s:");
    println!();

    let runtime = paused_runtime();
    runtime.block_on(async {
        let limiter = KeyedRateLimiter::builder(Quota::per_second(10).burst(20))
            .max_keys(10_000)
            .clock(TokioClock::new())
            .build()
            .expect("a valid limiter");
        let start = tokio::time::Instant::now();
        // (client, requests at each tick of 25 ms): polite every 5th tick, greedy 1-2 per
        // tick, bursty 40 at once every 80th tick.
        let mut tally = [("polite", 0u32, 0u32), ("greedy", 0, 0), ("bursty", 0, 0)];
        let mut first_refusal = None;
        for tick in 0..200u32 {
            tokio::time::sleep_until(start + Duration::from_millis(25 * u64::from(tick))).await;
            let sends = [
                u32::from(tick % 5 == 0),
                1 + u32::from(tick % 4 == 0),
                if tick % 80 == 0 { 40 } else { 0 },
            ];
            for (i, n) in sends.into_iter().enumerate() {
                for _ in 0..n {
                    let decision = limiter.check(tally[i].0);
                    if decision.is_allowed() {
                        tally[i].1 += 1;
                    } else {
                        tally[i].2 += 1;
                        first_refusal.get_or_insert((tally[i].0, decision));
                    }
                }
            }
        }
        println!("    client   sent  admitted  refused");
        for (name, ok, no) in tally {
            println!("    {name:<7} {:>5}  {ok:>8}  {no:>7}", ok + no);
        }
        if let Some((name, d)) = first_refusal {
            println!();
            println!(
                "  The first refusal ({name}) said: 429, Retry-After {}, RateLimit-Limit {},",
                human(d.retry_after().unwrap_or_default()),
                d.limit()
            );
            println!(
                "  RateLimit-Remaining {}. Nobody got more than 20 + 10/s, and the polite client",
                d.remaining()
            );
            println!("  was never refused: one client's flood doesn't spend another's budget.");
        }
    });
    println!();

    println!("On the client side, five tasks share a limit of 2 requests per second (burst 1) and");
    println!(
        "wait for it with until_ready. There is no polling: each reserves its place and sleeps"
    );
    println!("until exactly then, in arrival order. Task 2 gives up after 0.6 s (its future is");
    println!("dropped), which hands its place back:");
    println!();
    runtime.block_on(async {
        let limiter = Arc::new(
            RateLimiter::builder(Quota::per_second(2).burst(1))
                .clock(TokioClock::new())
                .build()
                .expect("a valid limiter"),
        );
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for task in 0..5u32 {
            let limiter = Arc::clone(&limiter);
            tasks.push(tokio::spawn(async move {
                let wait = limiter.until_ready();
                if task == 2 {
                    match tokio::time::timeout(Duration::from_millis(600), wait).await {
                        Ok(()) => println!(
                            "    task {task} ran at t = {:.1} s",
                            start.elapsed().as_secs_f64()
                        ),
                        Err(_) => println!(
                            "    task {task} gave up at t = {:.1} s",
                            start.elapsed().as_secs_f64()
                        ),
                    }
                } else {
                    wait.await;
                    println!(
                        "    task {task} ran at t = {:.1} s",
                        start.elapsed().as_secs_f64()
                    );
                }
            }));
            tokio::task::yield_now().await;
        }
        for task in tasks {
            task.await.expect("the task ran");
        }
        let next = limiter.peek().retry_after().unwrap_or_default();
        let when = if next.is_zero() {
            "at once".to_string()
        } else {
            format!("after {}", human(next))
        };
        println!();
        println!(
            "  Tasks 3 and 4 kept their places, and the cell task 2 gave back is free: a caller"
        );
        println!("  arriving as task 4 runs is admitted {when}, not 0.5 s later.");
    });
    println!();
}

/// A current-thread runtime with tokio's clock paused: sleeps complete at once, in order.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds")
}

fn coming_next() {
    println!("Coming next");
    println!("-----------");
    println!("These crates are planned and get their chapters here as they land:");
    for (name, what) in [
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
