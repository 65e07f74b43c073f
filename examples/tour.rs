//! The palisade tour: `cargo run --example tour`.
//!
//! A narrated walk through palisade, one chapter per crate.

use std::fmt::Display;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use palisade::breaker::{
    CallError, CircuitBreaker, OpenDuration, SlidingWindow, State, Transition,
};
use palisade::bulkhead::{Aimd, Bulkhead, Discipline};
use palisade::lock::detect::{self, Mode, Report};
use palisade::lock::{Mutex, lock_all};
use palisade::pool::{Error as PoolError, Manager, Pool, Pooled};
use palisade::ratelimit::{KeyedRateLimiter, Quota, RateLimiter};
use palisade::reconnect::{ConnectionLost, ConnectionState, ReconnectingStream};
use palisade::retry::{Backoff, Jitter, RetryPolicy, TpsBudget, retry};
use palisade::shutdown::{Coordinator, Draining, Phase};
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
    chapter_bulkhead();
    chapter_shutdown();
    chapter_lock();
    chapter_pool();
    chapter_reconnect();
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

/// palisade-bulkhead: a slow dependency held to 8 calls in flight, FIFO against LIFO, and an
/// adaptive limit.
fn chapter_bulkhead() {
    println!("Chapter 5 - bulkhead (palisade-bulkhead)");
    println!("----------------------------------------");
    println!("A service sends a request every 4 ms to a dependency that answers in 20 ms, except");
    println!("that calls starting between t = 0.5 s and 1.0 s take 400 ms. Every fourth request");
    println!("is an optional prefetch that never waits (try_acquire). 2 s of virtual time, first");
    println!("without a bulkhead, then behind Bulkhead::builder(8).max_queued(8).max_wait(50 ms):");
    println!();
    let runtime = paused_runtime();
    let bulkhead = Bulkhead::builder(8)
        .max_queued(8)
        .max_wait(ms(50))
        .build()
        .expect("a valid bulkhead");
    let slow = slow_between(500, 1000);
    let without = runtime.block_on(run(None::<Bulkhead>, 500, ms(4), true, slow));
    let with = runtime.block_on(run(Some(bulkhead.clone()), 500, ms(4), true, slow));
    let served = |r: &Run| r.calls.iter().filter(|c| c.is_ok()).count();
    let refused = |r: &Run| r.calls.len() - served(r);
    let row =
        |what: &str, a: &dyn Display, b: &dyn Display| println!("    {what:<22}{a:>8}{b:>19}");
    row("", &"without", &"with the bulkhead");
    row("in flight at the peak", &without.peak.0, &with.peak.0);
    row("queued at the peak", &"-", &with.peak.1);
    row("answered", &served(&without), &served(&with));
    row("refused", &refused(&without), &refused(&with));
    let m = bulkhead.metrics();
    let (f, q, t) = (m.rejected_full, m.rejected_queue_full, m.rejected_timed_out);
    let slowest = with.calls.iter().filter_map(|c| c.err()).max();
    let slowest = human(slowest.unwrap_or_default());
    let tied = (with.peak.0 as usize + with.peak.1, without.peak.0);
    println!();
    println!("  Refusals by reason, from metrics():");
    println!(
        "    rejected_full {f} (the prefetches), rejected_queue_full {q}, rejected_timed_out {t}"
    );
    println!("  None took longer than {slowest}: nobody hangs on the slow dependency, and the");
    println!(
        "  service's other work keeps its workers ({} tasks tied up at most, not {}).",
        tied.0, tied.1
    );
    println!();

    println!("Under a lasting overload, the queue's order decides who waits. A limit of 4 in");
    println!("front of a 100 ms call, a request every 10 ms for 2 s (2.5x what it can serve), at");
    println!("most 64 queued for at most 300 ms each. How long the served requests had waited:");
    println!();
    for (name, discipline) in [("FIFO", Discipline::Fifo), ("LIFO", Discipline::Lifo)] {
        let bulkhead = Bulkhead::builder(4)
            .max_queued(64)
            .max_wait(ms(300))
            .discipline(discipline)
            .build()
            .expect("a valid bulkhead");
        let r = runtime.block_on(run(Some(bulkhead), 200, ms(10), false, |_| ms(100)));
        let mut waits: Vec<_> = r.calls.into_iter().filter_map(Result::ok).collect();
        waits.sort();
        let (median, longest) = (human(waits[waits.len() / 2]), human(waits[waits.len() - 1]));
        let served = waits.len();
        println!("    {name}: {served} served, median wait {median:>8}, longest {longest:>8}");
    }
    println!();
    println!("  Both serve what the dependency can take. FIFO serves everyone late; LIFO serves");
    println!("  most at once, and max_wait sheds the oldest, whose callers have likely given up.");
    println!();

    println!(
        "An adaptive bulkhead finds its limit itself. Aimd starts at 10, grows while the load"
    );
    println!("uses the limit, and cuts it by 10 % (at most once per window) for calls slower than");
    println!("100 ms. Now the dependency is slow for calls starting from t = 0.5 s to 2.0 s:");
    println!();
    let aimd = Aimd::builder().initial_limit(10).timeout(ms(100)).build();
    let bulkhead = Bulkhead::adaptive(aimd.expect("a valid algorithm"))
        .max_queued(8)
        .max_wait(ms(50))
        .clock(TokioClock::new())
        .build()
        .expect("a valid bulkhead");
    let r = runtime.block_on(run(
        Some(bulkhead),
        751,
        ms(4),
        false,
        slow_between(500, 2000),
    ));
    let (mut at, mut limit) = (String::from("    t (s)"), String::from("    limit"));
    for (i, l) in r.limits.iter().enumerate().step_by(125) {
        at += &format!("{:>6.1}", (ms(4) * i as u32).as_secs_f64());
        limit += &format!("{l:>6}");
    }
    println!("{at}\n{limit}");
    let lowest = r.limits.iter().min().copied().unwrap_or_default();
    let last = r.limits.last().copied().unwrap_or_default();
    println!();
    println!(
        "  The limit learns from calls as they finish: it sank to {lowest} while the dependency"
    );
    println!("  was slow and was back at {last} once it answered in 20 ms again. metrics().limit");
    println!("  reads it; each change is a tracing debug event.");
    println!();
}

/// A dependency that answers in 20 ms, or in 400 ms when a call starts between `from` and `to`
/// (milliseconds from the start of the run).
fn slow_between(from: u64, to: u64) -> impl Fn(Duration) -> Duration + Copy + Send + 'static {
    move |t| {
        ms(if (ms(from)..ms(to)).contains(&t) {
            400
        } else {
            20
        })
    }
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// What one run of a bulkhead scene saw.
struct Run {
    /// Per request: `Ok(time waited for a permit)` or `Err(time until the refusal)`.
    calls: Vec<Result<Duration, Duration>>,
    /// The most calls in the dependency at once, and the most callers queued.
    peak: (u32, usize),
    /// The bulkhead's limit as each request arrived.
    limits: Vec<u32>,
}

/// `requests` requests, one every `every`, to a dependency whose calls take `latency(t)` when
/// they start at `t`, behind `bulkhead` if there is one. With `prefetch`, every fourth request
/// is an optional prefetch that never waits.
async fn run<C: Clock>(
    bulkhead: Option<Bulkhead<C>>,
    requests: u32,
    every: Duration,
    prefetch: bool,
    latency: impl Fn(Duration) -> Duration + Copy + Send + 'static,
) -> Run {
    let start = tokio::time::Instant::now();
    let (in_flight, peak) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let (mut tasks, mut peak_queued, mut limits) = (Vec::new(), 0, Vec::new());
    for n in 0..requests {
        tokio::time::sleep_until(start + every * n).await;
        if let Some(m) = bulkhead.as_ref().map(Bulkhead::metrics) {
            peak_queued = peak_queued.max(m.queued);
            limits.push(m.limit);
        }
        let (bulkhead, in_flight, peak) = (bulkhead.clone(), in_flight.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            let asked = tokio::time::Instant::now();
            let permit = match &bulkhead {
                None => Ok(None),
                Some(b) if prefetch && n % 4 == 3 => b.try_acquire().map(Some),
                Some(b) => b.acquire().await.map(Some),
            };
            let waited = asked.elapsed();
            let Ok(_permit) = permit else {
                return Err(waited);
            };
            let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            peak.fetch_max(now, Ordering::Relaxed);
            tokio::time::sleep(latency(start.elapsed())).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            Ok(waited)
        }));
    }
    let mut calls = Vec::new();
    for task in tasks {
        calls.push(task.await.expect("the request task ran"));
    }
    let peak = (peak.load(Ordering::Relaxed), peak_queued);
    Run {
        calls,
        peak,
        limits,
    }
}

/// palisade-shutdown: one SIGTERM, five phases, a report.
fn chapter_shutdown() {
    println!("Chapter 6 - graceful shutdown (palisade-shutdown)");
    println!("-------------------------------------------------");
    println!("A service is asked to stop at t = 1 s (in production: SIGTERM; here: trigger()).");
    println!("Clients send a request every 500 ms, each takes 3 s. A `writer` subsystem has an");
    println!("`ingest` subsystem nested in it; one task ignores every stop signal; three cleanup");
    println!("hooks, the `cache` one hangs. readiness_delay 2 s, drain_timeout 5 s, hook_timeout");
    println!("1 s, deadline 10 s. Each line is printed as it happens (paused time):");
    println!();
    paused_runtime().block_on(async {
        let coordinator = Coordinator::builder()
            .signals([])
            .readiness_delay(ms(2000))
            .drain_timeout(ms(5000))
            .hook_timeout(ms(1000))
            .deadline(ms(10_000))
            .build()
            .expect("valid shutdown knobs");
        let shutdown = coordinator.handle();
        let start = tokio::time::Instant::now();
        let at = move || human(start.elapsed());

        let observer = shutdown.clone();
        tokio::spawn(async move {
            for phase in &Phase::ALL[1..] {
                observer.wait_for(*phase).await;
                let ready = if observer.is_ready() {
                    "ready"
                } else {
                    "not ready"
                };
                println!(
                    "    t = {:>6}  phase {:<15} ({ready})",
                    at(),
                    phase.as_str()
                );
            }
        });

        // Requests through the tower layer: counted in flight, refused once draining.
        let mut service = tower_layer::Layer::layer(
            &shutdown.layer(),
            tower::service_fn(|n: u32| async move {
                tokio::time::sleep(ms(3000)).await;
                Ok::<u32, std::convert::Infallible>(n)
            }),
        );
        let clients = tokio::spawn(async move {
            let (mut answered, mut refused) = (Vec::new(), 0);
            for n in 0..12 {
                let call = tower_service::Service::call(&mut service, n);
                answered.push(tokio::spawn(call));
                tokio::time::sleep(ms(500)).await;
            }
            let mut ok = 0;
            for call in answered {
                match call.await.expect("the request task ran") {
                    Ok(_) => ok += 1,
                    Err(error) if error.is::<Draining>() => refused += 1,
                    Err(error) => println!("    unexpected error: {error}"),
                }
            }
            (ok, refused)
        });

        let writer = shutdown.scope("writer");
        let ingest = writer.scope("ingest");
        for (scope, name, flush) in [
            (ingest.clone(), "ingest", 800),
            (writer.clone(), "writer", 400),
        ] {
            let me = scope.clone();
            scope
                .spawn(async move {
                    me.stopped().await;
                    println!(
                        "    t = {:>6}  {name} told to stop, flushing for {}",
                        at(),
                        human(ms(flush))
                    );
                    tokio::time::sleep(ms(flush)).await;
                })
                .expect("the scope is running");
        }
        shutdown
            .spawn(std::future::pending::<()>())
            .expect("the root scope is running");
        shutdown.on_cleanup("database", async {});
        shutdown.on_cleanup("cache", std::future::pending::<()>());
        shutdown.on_cleanup("metrics", async {});

        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ms(1000)).await;
            trigger.trigger();
        });
        let report = coordinator.run().await;
        let (ok, refused) = clients.await.expect("the clients ran");
        println!();
        println!("  The report run() returned, as its Display prints it for the log (times count");
        println!("  from the trigger):");
        for line in report.to_string().lines() {
            println!("    {line}");
        }
        println!();
        println!("  Requests: {ok} answered, {refused} refused with Draining (a 503 with");
        println!(
            "  `Connection: close` in axum, so clients retry elsewhere). Readiness went off at"
        );
        println!("  the trigger while the service kept serving for 2 s, so the load balancer had");
        println!("  time to stop routing here. Ingest stopped before the writer it feeds, the");
        println!("  hung hook cost its own 1 s timeout and no more, and the task that ignored");
        println!("  every signal was aborted at the 10 s deadline, its future dropped.");
    });
    println!();
}

/// palisade-lock: an ABBA bug caught on the first run, the fix, and the compile-time levels.
fn chapter_lock() {
    println!("Chapter 7 - deadlock-safe locks (palisade-lock)");
    println!("-----------------------------------------------");
    println!(
        "`transfer` locks the accounts, then the audit log. `reconcile`, written months later,"
    );
    println!("locks the audit log, then the accounts. Run at the same moment on two threads they");
    println!("deadlock, once in a while, in production. Here they run one after the other, so");
    println!("nothing can deadlock in this run; the detector still sees the two orders:");
    println!();
    if !detect::is_enabled() {
        println!(
            "  (detection is compiled out of this release build: run the tour in a debug build,"
        );
        println!("   `cargo run --example tour`, or with the `lock-detect-release` feature)");
        println!();
    }
    let reports: Arc<std::sync::Mutex<Vec<Report>>> = Arc::default();
    let sink = reports.clone();
    // In a test suite the default mode (a panic at the bad acquisition) is what you want;
    // the tour collects the reports to print them.
    detect::set_mode(Mode::callback(move |r| {
        sink.lock().expect("not poisoned").push(r.clone())
    }));

    let accounts = Arc::new(Mutex::named("accounts", vec![100_i64, 0]));
    let audit = Arc::new(Mutex::named("audit", Vec::<String>::new()));
    let transfer = {
        let (accounts, audit) = (accounts.clone(), audit.clone());
        std::thread::spawn(move || {
            let mut acc = accounts.lock();
            let mut log = audit.lock();
            acc[0] -= 30;
            acc[1] += 30;
            log.push("moved 30".into());
        })
    };
    transfer.join().expect("transfer runs");
    println!(
        "  transfer  ran: accounts, then audit    -> reports so far: {}",
        reports.lock().expect("not poisoned").len()
    );
    let reconcile = {
        let (accounts, audit) = (accounts.clone(), audit.clone());
        std::thread::spawn(move || {
            let log = audit.lock();
            let acc = accounts.lock();
            acc.iter().sum::<i64>() == 100 && log.len() == 1
        })
    };
    let balanced = reconcile.join().expect("reconcile runs");
    let found = reports.lock().expect("not poisoned").clone();
    println!(
        "  reconcile ran: audit, then accounts    -> reports so far: {} (books balanced: {balanced})",
        found.len()
    );
    for report in &found {
        println!();
        for line in report.to_string().lines() {
            println!("    {line}");
        }
    }
    println!();
    println!("The fix: take both with `lock_all`, which picks one global order whatever the");
    println!("argument order and never blocks while holding half the set. 2 threads x 10,000");
    println!("transfers, each naming the accounts in the opposite order:");
    let a = Arc::new(Mutex::named("account", 1_000_i64));
    let b = Arc::new(Mutex::named("account", 1_000_i64));
    let threads: Vec<_> = [false, true]
        .into_iter()
        .map(|swap| {
            let (a, b) = (a.clone(), b.clone());
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    let (from, to) = if swap { (&*b, &*a) } else { (&*a, &*b) };
                    let (mut from, mut to) = lock_all((from, to));
                    *from -= 1;
                    *to += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("transfers run");
    }
    let total = {
        let (a, b) = lock_all((&*a, &*b));
        *a + *b
    };
    println!(
        "  done, no deadlock; total still {total}; new reports: {}",
        reports.lock().expect("not poisoned").len() - found.len()
    );
    println!();
    println!("Lock levels make the order a type: with `lock_levels! {{ Accounts, Audit }}`,");
    println!("locking `Accounts` from a context that holds `Audit` does not compile:");
    println!(
        "    error[E0277]: `Accounts` cannot be locked while holding `Audit`: lock levels are"
    );
    println!("                  taken in the order `lock_levels!` declares them");
    println!();
}

/// An in-memory backend for the pool chapter: connects take `connect_ms` of (paused) time and
/// fail while `down` is set.
#[derive(Clone, Default)]
struct TourBackend {
    down: Arc<std::sync::atomic::AtomicBool>,
    attempts: Arc<AtomicU32>,
    connect_ms: u64,
}

#[derive(Debug)]
struct TourConn(u32);

impl Manager for TourBackend {
    type Connection = TourConn;
    type Error = std::io::Error;

    async fn connect(&self) -> std::io::Result<TourConn> {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(ms(self.connect_ms)).await;
        if self.down.load(Ordering::SeqCst) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused",
            ));
        }
        Ok(TourConn(n))
    }
}

/// palisade-pool: fair hand-off, few connects in a spike, fast failure with a cause, jitter.
fn chapter_pool() {
    println!("Chapter 8 - connection pool (palisade-pool)");
    println!("-------------------------------------------");
    println!("A backend takes 50 ms to accept a connection. 50 requests arrive at once, each");
    println!("needs a connection for 5 ms. Pool::builder(backend).max_size(50):");
    println!();
    paused_runtime().block_on(async {
        let backend = TourBackend {
            connect_ms: 50,
            ..TourBackend::default()
        };
        let pool = Pool::builder(backend.clone())
            .max_size(50)
            .acquire_timeout(ms(1000))
            .clock(TokioClock::new())
            .build()
            .expect("valid pool knobs");
        let start = tokio::time::Instant::now();
        let callers: Vec<_> = (0..50)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let conn = pool.get().await.expect("served within 1 s");
                    let waited = start.elapsed();
                    tokio::time::sleep(ms(5)).await;
                    drop(conn);
                    waited
                })
            })
            .collect();
        let mut waits = Vec::new();
        for caller in callers {
            waits.push(caller.await.expect("caller ran"));
        }
        waits.sort();
        let m = pool.metrics();
        println!("    served              50 of 50, in arrival order (a returned connection goes");
        println!("                        to the longest waiter, never to a newcomer)");
        println!(
            "    connections opened  {} (max_concurrent_connects = 2; a connection comes",
            m.created
        );
        println!("                        back every 5 ms, long before a new one would be ready)");
        println!(
            "    wait, first / last  {} / {}",
            human(waits[0]),
            human(waits[49])
        );
        println!();

        println!(
            "The backend goes down. A get() with acquire_timeout 1 s while the pool is empty:"
        );
        let _ = pool.close(ms(100)).await;
        backend.down.store(true, Ordering::SeqCst);
        let before = backend.attempts.load(Ordering::SeqCst);
        let pool = Pool::builder(backend.clone())
            .max_size(4)
            .acquire_timeout(ms(1000))
            .clock(TokioClock::new())
            .build()
            .expect("valid pool knobs");
        let start = tokio::time::Instant::now();
        match pool.get().await {
            Err(e @ PoolError::Unavailable { .. }) => {
                println!("    after {}: {e}", human(start.elapsed()));
            }
            other => println!("    unexpected: {:?}", other.map(|c| c.0)),
        }
        let attempts = backend.attempts.load(Ordering::SeqCst) - before;
        println!(
            "    connect attempts in that second: {attempts} (100 ms backoff, doubling, +/- 20 %),"
        );
        println!("    not one per caller or per millisecond");
        backend.down.store(false, Ordering::SeqCst);
        let conn = pool.get().await.expect("the backend is back");
        println!(
            "    back up: the next get() connects ({} after the outage)",
            human(start.elapsed())
        );
        drop(conn);
        println!();

        println!("A request future is cancelled between writing a query and reading its answer.");
        println!("Its connection was tainted for that span, so it is closed, not reused:");
        let mut conn = pool.get().await.expect("a connection");
        let id = conn.0;
        Pooled::taint(&mut conn);
        let request = tokio::spawn(async move {
            let _conn = conn;
            tokio::time::sleep(ms(10_000)).await; // waiting for an answer that never comes
        });
        tokio::time::sleep(ms(100)).await;
        request.abort();
        let _ = request.await;
        let next = pool.get().await.expect("a connection");
        println!(
            "    cancelled request had connection #{id}; the next caller gets #{}",
            next.0
        );
        drop(next);
        println!();

        println!("20 connections opened together with max_lifetime 60 s, max_lifetime_jitter 0.2:");
        let pool = Pool::builder(TourBackend::default())
            .max_size(20)
            .max_lifetime(Some(ms(60_000)))
            .max_lifetime_jitter(0.2)
            .idle_timeout(None)
            .clock(TokioClock::new())
            .build()
            .expect("valid pool knobs");
        let mut conns = Vec::new();
        for _ in 0..20 {
            conns.push(pool.get().await.expect("a connection"));
        }
        drop(conns);
        let start = tokio::time::Instant::now();
        let mut expiries = Vec::new();
        while pool.metrics().idle > 0 {
            tokio::time::sleep(ms(500)).await;
            pool.maintain().await;
            let gone = 20 - pool.metrics().idle;
            while expiries.len() < gone {
                expiries.push(start.elapsed());
            }
        }
        println!(
            "    they expire between {} and {}, not all at once: the pool reconnects",
            human(expiries[0]),
            human(expiries[19])
        );
        println!("    gradually instead of in one burst against the backend");
    });
    println!();
}

/// palisade-reconnect: a stream that survives a server restart.
fn chapter_reconnect() {
    println!("Chapter 9 - reconnecting connections (palisade-reconnect)");
    println!("--------------------------------------------------------");
    println!("A line-echo server on 127.0.0.1 and a client on a ReconnectingStream, with a");
    println!("fast backoff for the demo (50 ms, x 1.6, +/- 20 %). This chapter runs on real");
    println!("sockets and real time: about half a second.");
    println!();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("bound");
        let server = tokio::spawn(echo_server(listener));
        let attempts = Arc::new(AtomicU32::new(0));
        let counted = attempts.clone();
        let backoff = Backoff::exponential(ms(50))
            .multiplier(1.6)
            .max_delay(ms(1000))
            .jitter(Jitter::Proportional(0.2))
            .build()
            .expect("valid backoff");
        let stream = ReconnectingStream::builder(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::net::TcpStream::connect(addr)
        })
        .backoff(backoff)
        .build()
        .expect("valid knobs");
        let mut state = stream.state();
        let watcher = tokio::spawn(async move {
            let mut seen = Vec::new();
            while state.changed().await.is_ok() {
                seen.push(describe(&state.borrow_and_update()));
            }
            seen
        });
        let mut stream = tokio::io::BufReader::new(stream);
        for i in 1..=3 {
            let reply = echo(&mut stream, i).await.expect("the server is up");
            println!("    request {i}: {reply}");
        }

        println!("  The server dies (its listener and connections close):");
        server.abort();
        let _ = server.await;
        match echo(&mut stream, 4).await {
            Err(e) => {
                let lost = e.get_ref().and_then(|e| e.downcast_ref::<ConnectionLost>());
                let generation = lost.map_or(0, ConnectionLost::generation);
                println!("    request 4: error: {e}");
                println!(
                    "               the one error the caller sees, for connection {generation}"
                );
            }
            Ok(reply) => println!("    request 4: unexpected reply {reply}"),
        }

        println!("  The server comes back 300 ms later. Meanwhile request 5 is sent:");
        let before = attempts.load(Ordering::SeqCst);
        let restart = tokio::spawn(async move {
            tokio::time::sleep(ms(300)).await;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .expect("the port is free again");
            echo_server(listener).await;
        });
        let start = std::time::Instant::now();
        let reply = echo(&mut stream, 5).await.expect("reconnected");
        println!(
            "    request 5: {reply} after {} ({} connect attempts, refused until the server was",
            human(start.elapsed()),
            attempts.load(Ordering::SeqCst) - before
        );
        println!("               back; the request waited instead of failing)");
        let reply = echo(&mut stream, 6).await.expect("still connected");
        println!("    request 6: {reply}");
        drop(stream);
        restart.abort();
        let seen = watcher.await.expect("the watcher ran");
        println!("  The states a watcher saw on stream.state() (a watch channel: a reader that");
        println!("  falls behind sees the latest state, not every step):");
        for s in seen {
            println!("    {s}");
        }
    });
    println!();
}

/// One state, for the tour.
fn describe(state: &ConnectionState) -> String {
    match state {
        ConnectionState::Connecting { attempt } => format!("connecting, attempt {attempt}"),
        ConnectionState::Connected { generation, .. } => {
            format!("connected, connection {generation}")
        }
        ConnectionState::Disconnected {
            cause,
            next_attempt_at,
            ..
        } => format!(
            "disconnected: {cause}; next attempt in {}",
            human(next_attempt_at.saturating_duration_since(tokio::time::Instant::now()))
        ),
        ConnectionState::Closed(reason) => format!("closed: {reason}"),
        other => other.name().to_owned(),
    }
}

/// Sends `request <i>` as a line and reads the echoed line.
async fn echo<S>(stream: &mut tokio::io::BufReader<S>, i: u32) -> std::io::Result<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    stream
        .get_mut()
        .write_all(format!("request {i}\n").as_bytes())
        .await?;
    let mut line = String::new();
    if stream.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(format!("echo \"{}\"", line.trim_end()))
}

/// Echoes lines on every connection until aborted (which closes them all).
async fn echo_server(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        connections.spawn(async move {
            let (read, mut write) = socket.into_split();
            let mut lines = tokio::io::BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if write
                    .write_all(format!("{line}\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
}

/// A current-thread runtime with tokio's clock paused: sleeps complete at once, in order.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds")
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
