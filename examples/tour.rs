//! The palisade tour: `cargo run --example tour [-- --seconds N --seed S]`.
//!
//! A narrated demo that runs by itself in about 15 seconds. A flaky upstream listens on
//! 127.0.0.1 and follows a script drawn from the seed: a calm spell with random errors and late
//! answers, a surge of callers, a slow spell, a full outage with every connection cut, and a
//! restart on the same port. A client sends it a steady stream of requests through palisade's
//! layers, composed by [`palisade::Stack`] in the recommended order:
//!
//! ```text
//! shutdown → rate limit → bulkhead → retry (budget) → breaker → attempt timeout → pooled connections
//! ```
//!
//! and follows the upstream's tick feed over a `ReconnectingStream`. A live line shows the run
//! and each layer's moves are told as they happen; then a chapter per crate says what it did,
//! a table sums up each layer, and the graceful shutdown reports how it went.
//!
//! The same seed replays the same script: the same requests fail on the same attempts, the
//! same answers come late, the outage starts and ends at the same moments. The run uses real
//! sockets and real time, so its counts move by a few percent from run to run; the story
//! doesn't. The tour checks what it claims (no request lost, no more attempts in flight than the
//! bulkhead allows, nothing leaked, the breaker tripped and recovered, a clean shutdown) and
//! exits non-zero if a check fails: CI runs it.

use std::fmt::{self, Display};
use std::future::Future;
use std::io::{self, IsTerminal, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade::Stack;
use palisade::breaker::{
    CircuitBreaker, CircuitBreakerLayer, OpenDuration, Outcome as Verdict, Rejected as BreakerOpen,
    SlidingWindow, State, Transition,
};
use palisade::bulkhead::{Bulkhead, BulkheadLayer, Rejected as Overloaded};
use palisade::lock::detect::{self, Mode, Report};
use palisade::lock::{Mutex, lock_all};
use palisade::pool::{Discard, Error as PoolError, Manager, Pool, Pooled};
use palisade::ratelimit::{Quota, RateLimitLayer, RateLimited, RateLimiter};
use palisade::reconnect::{ConnectionLost, ConnectionState, ReconnectingStream};
use palisade::retry::{
    Backoff, Decision, Jitter, RetryBudget, RetryEvent, RetryLayer, RetryPolicy, TpsBudget,
};
use palisade::shutdown::{Coordinator, Draining, Phase, Shutdown, ShutdownReport, Trigger};
use palisade::{Clock, FastClock, TokioClock};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tower::timeout::TimeoutLayer;
use tower::timeout::error::Elapsed;
use tower::{BoxError, Layer, Service, ServiceExt};

const USAGE: &str = "\
usage: cargo run --example tour [-- OPTIONS]

A narrated demo of palisade: a flaky upstream on 127.0.0.1, a client stack in front of it,
a chapter per crate, a table per layer and a graceful shutdown. Ctrl-C stops the run early,
gracefully.

options:
  --seconds N   how long the run lasts, in [5, 300] [12]
  --seed S      the seed of the upstream's script: same seed, same story [42]
  -h, --help    this text";

const DEFAULT_SECONDS: u64 = 12;
const SECONDS: std::ops::RangeInclusive<u64> = 5..=300;

// The client's knobs, as a service would set them for this upstream.
/// Requests per second the client may send (GCRA), and its burst.
const RATE: u32 = 200;
const BURST: u32 = 20;
/// Requests in flight at once (the bulkhead), and how many may wait, and how long.
const CONCURRENCY: u32 = 24;
const QUEUE: usize = 8;
const QUEUE_WAIT: Duration = Duration::from_millis(50);
/// Attempts per request, and the share of requests the retries may add (plus a floor).
const ATTEMPTS: u32 = 3;
const RETRY_RATIO: f64 = 0.2;
const RETRY_FLOOR: u32 = 10;
/// Each attempt's time limit.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(400);

// The upstream's script.
/// Attempts the upstream fails, and answers it gives late, outside the slow spell.
const ERROR_RATE: f64 = 0.10;
const LATE_RATE: f64 = 0.02;

fn main() -> ExitCode {
    let settings = match Settings::parse(std::env::args().skip(1)) {
        Ok(Some(settings)) => settings,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("tour: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tour: can't start tokio: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tour(settings)) {
        Ok(failures) if failures.is_empty() => ExitCode::SUCCESS,
        Ok(failures) => {
            eprintln!();
            for failure in failures {
                eprintln!("tour: check failed: {failure}");
            }
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("tour: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The command line.
struct Settings {
    run: Duration,
    seed: u64,
}

impl Settings {
    /// `Ok(None)` for `--help`.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Settings>, String> {
        let mut settings = Settings {
            run: Duration::from_secs(DEFAULT_SECONDS),
            seed: 42,
        };
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "-h" | "--help" => return Ok(None),
                "--seconds" => {
                    let range = format!(
                        "a whole number of seconds in [{}, {}]",
                        SECONDS.start(),
                        SECONDS.end()
                    );
                    let given = value()?;
                    match given.parse::<u64>() {
                        Ok(n) if SECONDS.contains(&n) => settings.run = Duration::from_secs(n),
                        _ => return Err(format!("--seconds must be {range}, got {given:?}")),
                    }
                }
                "--seed" => {
                    let given = value()?;
                    settings.seed = given.parse().map_err(|_| {
                        format!(
                            "--seed must be a whole number in [0, {}], got {given:?}",
                            u64::MAX
                        )
                    })?;
                }
                other => return Err(format!("unexpected argument {other:?}")),
            }
        }
        Ok(Some(settings))
    }
}

// ------------------------------------------------------------------------------------------
// The script
// ------------------------------------------------------------------------------------------

/// The parts of the run, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scene {
    Calm,
    Surge,
    Slow,
    Outage,
    Recovery,
}

impl Scene {
    const ALL: [Scene; 5] = [
        Scene::Calm,
        Scene::Surge,
        Scene::Slow,
        Scene::Outage,
        Scene::Recovery,
    ];

    /// Where the scene starts, as a share of the run.
    fn starts_at(self) -> f64 {
        match self {
            Scene::Calm => 0.0,
            Scene::Surge => 0.25,
            Scene::Slow => 0.40,
            Scene::Outage => 0.55,
            Scene::Recovery => 0.75,
        }
    }

    /// Requests per second the callers send.
    fn offered(self) -> u32 {
        match self {
            Scene::Surge => 400,
            _ => 150,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scene::Calm => "calm",
            Scene::Surge => "surge",
            Scene::Slow => "slow",
            Scene::Outage => "outage",
            Scene::Recovery => "recovery",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The upstream's script: when each scene starts, and the fate of every attempt, all drawn
/// from the seed.
struct Script {
    seed: u64,
    run: Duration,
    start: Instant,
}

/// How the upstream answers one attempt.
struct Answer {
    ok: bool,
    after: Duration,
}

impl Script {
    fn start_of(&self, scene: Scene) -> Duration {
        self.run.mul_f64(scene.starts_at())
    }

    fn end_of(&self, scene: Scene) -> Duration {
        match Scene::ALL.get(scene.index() + 1) {
            Some(next) => self.start_of(*next),
            None => self.run,
        }
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn scene_at(&self, elapsed: Duration) -> Scene {
        Scene::ALL
            .into_iter()
            .rev()
            .find(|scene| elapsed >= self.start_of(*scene))
            .unwrap_or(Scene::Calm)
    }

    /// The fate of attempt `attempt` of request `id`: a pure function of the seed, so the same
    /// seed fails the same attempts whatever the timing.
    fn answer(&self, id: u64, attempt: u32, scene: Scene) -> Answer {
        let h = mix(self.seed ^ mix(id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(attempt)));
        let (fails, late, spread) = (unit(h), unit(mix(h)), unit(mix(mix(h))));
        let after = if scene == Scene::Slow {
            ms(150) + ms(200).mul_f64(spread)
        } else if late < LATE_RATE {
            ms(500) + ms(400).mul_f64(spread)
        } else {
            ms(2) + ms(10).mul_f64(spread)
        };
        Answer {
            ok: fails >= ERROR_RATE,
            after,
        }
    }
}

/// splitmix64's finalizer: a good 64-bit mix.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A hash as a number in [0, 1).
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1_u64 << 53) as f64
}

// ------------------------------------------------------------------------------------------
// The tour
// ------------------------------------------------------------------------------------------

async fn tour(settings: Settings) -> Result<Vec<String>, BoxError> {
    let Settings { run, seed } = settings;
    prologue(run, seed);

    // The coordinator first, so that a Ctrl-C from here on is a graceful stop.
    let coordinator = Coordinator::builder()
        .drain_timeout(Duration::from_secs(3))
        .hook_timeout(Duration::from_secs(1))
        .deadline(Duration::from_secs(5))
        .build()?;
    let shutdown = coordinator.handle();

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let script = Arc::new(Script {
        seed,
        run,
        // A moment to set up the client first, so the load starts on time.
        start: Instant::now() + ms(200),
    });
    let (say, lines) = Narration::new(script.start);
    let upstream = Arc::new(UpstreamStats::new(run));
    let upstream_task = tokio::spawn(serve_upstream(
        listener,
        script.clone(),
        upstream.clone(),
        say.clone(),
    ));

    // The client: every layer, in the order Stack gives them.
    let client = Client::new(&shutdown, addr, run, &say)?;
    let policy = RetryPolicy::builder()
        .max_attempts(ATTEMPTS)
        .backoff(
            Backoff::exponential(ms(25))
                .max_delay(ms(250))
                .jitter(Jitter::Full),
        )
        .build()?;
    let retries = client.tally.clone();
    let retry = RetryLayer::new(policy)
        .when(should_retry)
        .budget(client.budget.clone())
        .on_retry(move |_: &RetryEvent<'_, u32, BoxError>| {
            retries.retries.fetch_add(1, Ordering::Relaxed);
        });
    let service = Stack::new()
        .shutdown(shutdown.layer())
        .rate_limit(RateLimitLayer::new(client.limiter.clone()))
        .bulkhead(BulkheadLayer::new(client.bulkhead.clone()))
        .retry(retry)
        .breaker(CircuitBreakerLayer::new(client.breaker.clone()).classify(breaker_verdict))
        // Per attempt, inside the breaker, so that a timed-out attempt counts as a failure.
        .timeout(TimeoutLayer::new(ATTEMPT_TIMEOUT))
        .layer(Upstream {
            pool: client.pool.clone(),
            tally: client.tally.clone(),
        });

    let feed = client.follow_feed(addr, &shutdown, &say)?;
    // The pool's count when the outage begins, to tell the connections made after it.
    // (All of them, if the run stops before the outage.)
    let created_before_outage = Arc::new(AtomicU64::new(u64::MAX));
    let (snapshot, pool) = (created_before_outage.clone(), client.pool.clone());
    let outage = script.start + script.start_of(Scene::Outage);
    tokio::spawn(async move {
        tokio::time::sleep_until(outage).await;
        snapshot.store(pool.metrics().created, Ordering::Relaxed);
    });
    let narrator = tokio::spawn(narrate(
        lines,
        Live {
            script: script.clone(),
            tally: client.tally.clone(),
            upstream: upstream.clone(),
            breaker: client.breaker.clone(),
            pool: client.pool.clone(),
            feed: feed.clone(),
        },
    ));
    let load = tokio::spawn(send_load(
        service,
        script.clone(),
        client.tally.clone(),
        say.clone(),
        shutdown.listener("load generator").stop_accepting(),
    ));
    let (stopper, start) = (shutdown.clone(), script.start);
    let story = say.clone();
    let timer = tokio::spawn(async move {
        tokio::time::sleep_until(start + run).await;
        story.scene(
            "shutdown",
            "the run is over: stop sending, let what is in flight finish",
        );
        stopper.trigger();
    });
    let observer = shutdown.clone();
    let drain_story = say.clone();
    tokio::spawn(async move {
        observer.wait_for(Phase::Draining).await;
        let in_flight = observer.metrics().requests_in_flight;
        drain_story.event(
            "shutdown",
            format!("draining: new requests are refused, {in_flight} in flight may finish"),
        );
    });

    let report = coordinator.run().await;
    timer.abort();
    // Every request has ended by now (the drain waited for them), unless one hangs: a bug the
    // checks below report.
    let sent = match tokio::time::timeout(Duration::from_secs(5), load).await {
        Ok(sent) => sent?,
        Err(_) => return Err("requests still running 5 s after the shutdown".into()),
    };
    say.stop();
    narrator.await?;
    let stopped_early = report.trigger != Trigger::Requested;
    if upstream_task.is_finished()
        && let Ok(Err(error)) = upstream_task.await
    {
        return Err(format!("the upstream failed: {error}").into());
    }

    let run_report = RunReport {
        script: &script,
        client: &client,
        upstream: &upstream,
        feed: &feed,
        sent,
        created_before_outage: created_before_outage.load(Ordering::Relaxed),
    };
    run_report.scenes();
    run_report.chapters();
    chapter_lock();
    run_report.table();
    chapter_shutdown(&report, client.tally.total(|s| get(&s.draining)));
    let failures = run_report.checks(&report, stopped_early);
    if failures.is_empty() {
        println!(
            "Every check the tour makes passed: no request lost, no more than {CONCURRENCY} attempts"
        );
        println!("in flight, no permit or connection left behind, and a clean shutdown.");
    }
    Ok(failures)
}

fn prologue(run: Duration, seed: u64) {
    println!("palisade tour: resilience patterns for tokio services");
    println!("=====================================================");
    println!();
    println!("An upstream service on 127.0.0.1 is about to have a bad day, following a script");
    println!(
        "drawn from seed {seed} (`--seed` picks another; the same seed tells the same story)."
    );
    println!(
        "A client calls it {} times a second through palisade's layers:",
        Scene::Calm.offered()
    );
    println!();
    println!("  request");
    println!("    │ shutdown    once the client stops: refuses new requests, waits for the rest");
    println!(
        "    │ rate limit  {RATE} requests a second, burst {BURST} (GCRA); refuses the excess"
    );
    println!(
        "    │ bulkhead    {CONCURRENCY} at once, {QUEUE} more may wait {} ms; refuses the rest at once",
        QUEUE_WAIT.as_millis()
    );
    println!(
        "    │ retry       {ATTEMPTS} attempts, backoff from 25 ms, a budget of {:.0}% + {RETRY_FLOOR}/s",
        RETRY_RATIO * 100.0
    );
    println!("    │ breaker     opens when half of the last 40 attempts failed");
    println!(
        "    │ timeout     {} ms per attempt",
        ATTEMPT_TIMEOUT.as_millis()
    );
    println!("    ▼ pool        up to {CONCURRENCY} TCP connections to the upstream");
    println!();
    println!("They are composed by palisade::Stack, which nests them in this order whatever order");
    println!("the code adds them in (docs/layer-order.md says why this order).");
    println!();
    println!(
        "The client also follows the upstream's tick feed on a reconnecting stream. The script,\nover {}:",
        human(run)
    );
    let at = |share: f64| format!("{:>5.1} s", run.mul_f64(share).as_secs_f64());
    println!(
        "  {}  calm      {:.0}% of attempts fail, {:.0}% of answers come 0.5-0.9 s late",
        at(0.0),
        ERROR_RATE * 100.0,
        LATE_RATE * 100.0
    );
    println!(
        "  {}  surge     the callers send {} requests a second",
        at(Scene::Surge.starts_at()),
        Scene::Surge.offered()
    );
    println!(
        "  {}  slow      every answer takes 150-350 ms",
        at(Scene::Slow.starts_at())
    );
    println!(
        "  {}  outage    the upstream closes its port and cuts every connection",
        at(Scene::Outage.starts_at())
    );
    println!(
        "  {}  recovery  it comes back on the same port",
        at(Scene::Recovery.starts_at())
    );
    println!("  {}  shutdown  the client stops gracefully", at(1.0));
    println!();
    println!("The run (the last line is live; Ctrl-C stops early, gracefully):");
    println!();
}

// ------------------------------------------------------------------------------------------
// The upstream: a line protocol over TCP, faults from the script
// ------------------------------------------------------------------------------------------

/// What the upstream saw.
struct UpstreamStats {
    /// Attempts that arrived, per 100 ms since the start.
    arrivals: Vec<AtomicU32>,
    /// Attempts that arrived, and those it failed, per scene.
    attempts: [AtomicU64; 5],
    failed: [AtomicU64; 5],
    /// Connections open now.
    connections: AtomicU64,
}

/// Arrivals are counted in buckets this wide, so that scene edges fall on them closely.
const BUCKET: Duration = Duration::from_millis(10);
const BUCKETS_PER_SECOND: usize = 100;
/// How often the upstream sends its feed a tick.
const TICK: Duration = Duration::from_millis(100);

impl UpstreamStats {
    fn new(run: Duration) -> UpstreamStats {
        let buckets = (run + Duration::from_secs(10)).as_millis() / BUCKET.as_millis();
        UpstreamStats {
            arrivals: (0..buckets).map(|_| AtomicU32::new(0)).collect(),
            attempts: Default::default(),
            failed: Default::default(),
            connections: AtomicU64::new(0),
        }
    }

    fn bucket(&self, elapsed: Duration) -> usize {
        let index = (elapsed.as_millis() / BUCKET.as_millis()) as usize;
        index.min(self.arrivals.len() - 1)
    }

    fn arrive(&self, elapsed: Duration, scene: Scene) {
        self.attempts[scene.index()].fetch_add(1, Ordering::Relaxed);
        self.arrivals[self.bucket(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    /// Arrivals in the second before `elapsed`.
    fn last_second(&self, elapsed: Duration) -> u32 {
        let end = self.bucket(elapsed);
        (end.saturating_sub(BUCKETS_PER_SECOND - 1)..=end)
            .map(|i| self.arrivals[i].load(Ordering::Relaxed))
            .sum()
    }

    /// The most arrivals in any one second between `from` and `to` (in the whole span if it is
    /// shorter than a second).
    fn peak_second(&self, from: Duration, to: Duration) -> u32 {
        let (first, end) = (self.bucket(from), self.bucket(to));
        let sum = |range: std::ops::Range<usize>| -> u32 {
            range
                .map(|i| self.arrivals[i].load(Ordering::Relaxed))
                .sum()
        };
        if end - first <= BUCKETS_PER_SECOND {
            return sum(first..end);
        }
        (first..=end - BUCKETS_PER_SECOND)
            .map(|i| sum(i..i + BUCKETS_PER_SECOND))
            .max()
            .unwrap_or(0)
    }

    fn attempts_in(&self, scenes: &[Scene]) -> u64 {
        scenes
            .iter()
            .map(|s| self.attempts[s.index()].load(Ordering::Relaxed))
            .sum()
    }

    fn failed_in(&self, scenes: &[Scene]) -> u64 {
        scenes
            .iter()
            .map(|s| self.failed[s.index()].load(Ordering::Relaxed))
            .sum()
    }
}

/// Runs the upstream for the whole tour: serves, goes down for the outage (its port closed,
/// its connections cut), comes back on the same port.
async fn serve_upstream(
    listener: TcpListener,
    script: Arc<Script>,
    stats: Arc<UpstreamStats>,
    say: Narration,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    // Every connection watches this: a new value cuts it.
    let (cut, _) = watch::channel(0_u64);
    say.scene(
        Scene::Calm.name(),
        format!(
            "{} requests/s; the upstream fails {:.0}% of attempts and answers {:.0}% late",
            Scene::Calm.offered(),
            ERROR_RATE * 100.0,
            LATE_RATE * 100.0
        ),
    );
    let outage = script.start + script.start_of(Scene::Outage);
    accept_until(&listener, outage, &script, &stats, &cut).await;
    drop(listener);
    let live = stats.connections.load(Ordering::Relaxed);
    cut.send_modify(|epoch| *epoch += 1);
    say.scene(
        Scene::Outage.name(),
        format!("the upstream closes its port and cuts its {live} connections"),
    );

    tokio::time::sleep_until(script.start + script.start_of(Scene::Recovery)).await;
    let listener = TcpListener::bind(addr).await?;
    say.scene(
        Scene::Recovery.name(),
        format!("the upstream is back on {addr}, answering as in the calm"),
    );
    accept_until(
        &listener,
        Instant::now() + Duration::from_secs(3600),
        &script,
        &stats,
        &cut,
    )
    .await;
    Ok(())
}

async fn accept_until(
    listener: &TcpListener,
    until: Instant,
    script: &Arc<Script>,
    stats: &Arc<UpstreamStats>,
    cut: &watch::Sender<u64>,
) {
    let deadline = tokio::time::sleep_until(until);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (script, stats) = (script.clone(), stats.clone());
                let cut = cut.subscribe();
                tokio::spawn(async move {
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    upstream_connection(stream, script, &stats, cut).await;
                    stats.connections.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }
}

/// One connection: `REQ id attempt` gets `OK id` or `ERR id` when the script says and as late
/// as it says; `WATCH` gets a `tick n` every 100 ms.
async fn upstream_connection(
    stream: TcpStream,
    script: Arc<Script>,
    stats: &UpstreamStats,
    mut cut: watch::Receiver<u64>,
) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = tokio::select! {
            _ = cut.changed() => return,
            line = lines.next_line() => match line {
                Ok(Some(line)) => line,
                _ => return,
            },
        };
        let reply = if line == "WATCH" {
            for tick in 1_u64.. {
                tokio::select! {
                    _ = cut.changed() => return,
                    () = tokio::time::sleep(TICK) => {}
                }
                if write
                    .write_all(format!("tick {tick}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            return;
        } else if let Some((id, attempt)) = parse_request(&line) {
            let elapsed = script.elapsed();
            let scene = script.scene_at(elapsed);
            stats.arrive(elapsed, scene);
            let answer = script.answer(id, attempt, scene);
            tokio::select! {
                _ = cut.changed() => return,
                () = tokio::time::sleep(answer.after) => {}
            }
            if answer.ok {
                format!("OK {id}\n")
            } else {
                stats.failed[scene.index()].fetch_add(1, Ordering::Relaxed);
                format!("ERR {id}\n")
            }
        } else {
            return;
        };
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn parse_request(line: &str) -> Option<(u64, u32)> {
    let mut words = line.strip_prefix("REQ ")?.split(' ');
    let id = words.next()?.parse().ok()?;
    let attempt = words.next()?.parse().ok()?;
    Some((id, attempt))
}

// ------------------------------------------------------------------------------------------
// The client
// ------------------------------------------------------------------------------------------

/// One request: its id, and the attempts made so far (shared by the retry's clones).
#[derive(Clone)]
struct Job {
    id: u64,
    attempts: Arc<AtomicU32>,
}

/// The client's parts, kept to read their counters after the run.
struct Client {
    limiter: Arc<RateLimiter>,
    bulkhead: Bulkhead,
    budget: Arc<CountedBudget>,
    breaker: Arc<CircuitBreaker>,
    pool: Pool<LineManager>,
    tally: Arc<Tally>,
    trips: Arc<AtomicU32>,
    /// When the breaker last closed, in milliseconds since the start.
    closed_at: Arc<AtomicU64>,
    transitions: Arc<Mutex<Vec<String>>>,
}

impl Client {
    fn new(
        shutdown: &Shutdown,
        addr: SocketAddr,
        run: Duration,
        say: &Narration,
    ) -> Result<Client, BoxError> {
        let limiter = Arc::new(RateLimiter::new(Quota::per_second(RATE).burst(BURST))?);
        let bulkhead = Bulkhead::builder(CONCURRENCY)
            .max_queued(QUEUE)
            .max_wait(QUEUE_WAIT)
            .build()?;
        let budget = Arc::new(CountedBudget {
            inner: TpsBudget::builder()
                .retry_ratio(RETRY_RATIO)
                .min_per_sec(RETRY_FLOOR)
                // Deposits last a second: retries track the last second's traffic, so a calm
                // spell can't bank retries for the next outage.
                .ttl(Duration::from_secs(1))
                .build()?,
            denied: AtomicU64::new(0),
        });

        let trips = Arc::new(AtomicU32::new(0));
        let transitions = Arc::new(Mutex::named("breaker transitions", Vec::new()));
        let closed_at = Arc::new(AtomicU64::new(0));
        let (counted, log, story) = (trips.clone(), transitions.clone(), say.clone());
        let closed = closed_at.clone();
        let breaker = CircuitBreaker::builder()
            .name("upstream")
            .failure_rate(50.0)
            .minimum_calls(20)
            .window(SlidingWindow::count(40))
            .open_duration(OpenDuration::exponential(open_for(run), open_for(run) * 2))
            .half_open_probes(3)
            .on_transition(move |t: &Transition| {
                let what = describe_transition(t);
                match t.to {
                    State::Open => {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    State::Closed => {
                        let at = story.elapsed().as_millis() as u64;
                        closed.store(at, Ordering::Relaxed);
                    }
                    _ => {}
                }
                log.lock()
                    .push(format!("{:>5.1} s  {what}", story.elapsed().as_secs_f64()));
                story.event("breaker", what);
            })
            .build()?;

        let pool = Pool::builder(LineManager { addr })
            .max_size(CONCURRENCY as usize)
            // Short waits: an attempt that can't get a connection fails fast, so a dead upstream
            // shows up as failures the breaker counts, not as attempts piling up.
            .acquire_timeout(ms(50))
            .connect_timeout(ms(100))
            // While the upstream is down, the pool retries connects on this schedule (never in a
            // storm); capped at 500 ms, it finds the upstream back within half a second. (The
            // default grows to 10 s: the breaker's probes would fail on the pool's wait.)
            .connect_backoff(
                Backoff::exponential(ms(50))
                    .multiplier(1.6)
                    .max_delay(ms(500))
                    .jitter(Jitter::Proportional(0.2))
                    .build()?,
            )
            // A connection out longer than this is reported (and counted) as a suspected leak.
            .leak_detection(Some(Duration::from_secs(2)))
            .build()?;
        let closing = pool.clone();
        shutdown.on_cleanup("close the connection pool", async move {
            closing.close(Duration::from_secs(1)).await
        });

        Ok(Client {
            limiter,
            bulkhead,
            budget,
            breaker: Arc::new(breaker),
            pool,
            tally: Arc::new(Tally::default()),
            trips,
            closed_at,
            transitions,
        })
    }

    /// Follows the upstream's tick feed on a reconnecting stream, until the shutdown.
    fn follow_feed(
        &self,
        addr: SocketAddr,
        shutdown: &Shutdown,
        say: &Narration,
    ) -> Result<Arc<Feed>, BoxError> {
        let backoff = Backoff::exponential(ms(50))
            .multiplier(1.6)
            .max_delay(ms(500))
            .jitter(Jitter::Proportional(0.2))
            .build()?;
        let stream = ReconnectingStream::builder(move || TcpStream::connect(addr))
            .backoff(backoff)
            .connect_timeout(ms(200))
            // Ticks come every 100 ms: a connection silent for 500 ms is dead, even if no one
            // closed it.
            .idle_timeout(ms(500))
            // Every new connection subscribes again before anyone reads from it.
            .on_connect(|mut conn: TcpStream| async move {
                conn.write_all(b"WATCH\n").await?;
                Ok::<_, io::Error>(conn)
            })
            .build()?;
        let feed = Arc::new(Feed {
            state: stream.state(),
            ticks: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        });

        let (watched, story) = (feed.clone(), say.clone());
        let mut state = stream.state();
        tokio::spawn(async move {
            let (mut up, mut attempt) = (false, 0);
            while state.changed().await.is_ok() {
                let now = state.borrow_and_update().clone();
                match now {
                    ConnectionState::Connected { generation: 1, .. } => {
                        up = true;
                        story.event("feed", "connected and subscribed to the upstream's ticks");
                    }
                    ConnectionState::Connected { generation, .. } => {
                        up = true;
                        watched.reconnects.store(generation - 1, Ordering::Relaxed);
                        story.event(
                            "feed",
                            format!(
                                "reconnected on attempt {attempt}; on_connect subscribed again"
                            ),
                        );
                    }
                    // A watch keeps only the latest state: the first one seen after the
                    // connection went down may already be a reconnect attempt.
                    ConnectionState::Disconnected { cause, .. } if up => {
                        up = false;
                        story.event("feed", format!("{cause}: reconnecting with backoff"));
                    }
                    ConnectionState::Connecting { attempt: n } => {
                        attempt = n;
                        if up {
                            up = false;
                            story.event("feed", "connection lost: reconnecting with backoff");
                        }
                    }
                    ConnectionState::Closed(_) => break,
                    _ => {}
                }
            }
        });

        let scope = shutdown.scope("feed");
        let stopped = scope.stopped();
        let reader = feed.clone();
        scope.spawn(async move {
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            tokio::pin!(stopped);
            loop {
                line.clear();
                tokio::select! {
                    () = &mut stopped => break,
                    read = stream.read_line(&mut line) => match read {
                        Ok(0) => break,
                        Ok(_) => {
                            if line.starts_with("tick ") {
                                reader.ticks.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        // The one error a lost connection costs; the next read reconnects.
                        Err(e) if e.get_ref().is_some_and(|e| e.is::<ConnectionLost>()) => {
                            reader.lost.fetch_add(1, Ordering::Relaxed);
                        }
                        // Closed, or out of attempts: nothing more will come.
                        Err(_) => break,
                    },
                }
            }
            stream.get_mut().close();
        })?;
        Ok(feed)
    }
}

/// What the feed saw.
struct Feed {
    state: watch::Receiver<ConnectionState>,
    ticks: AtomicU64,
    reconnects: AtomicU64,
    lost: AtomicU64,
}

fn describe_transition(t: &Transition) -> String {
    match t.to {
        State::Open => format!(
            "{} -> open: {} ({} of {} {} failed); open for {}",
            t.from,
            t.reason,
            t.window.failures,
            t.window.calls,
            if t.from == State::HalfOpen {
                "probes"
            } else {
                "attempts"
            },
            human(t.open_for.unwrap_or_default())
        ),
        State::HalfOpen => "open -> half-open: lets 3 probe attempts through".to_string(),
        State::Closed => format!("half-open -> closed: {}", t.reason),
        other => format!("{} -> {other}: {}", t.from, t.reason),
    }
}

/// Retry what another attempt may fix: the upstream's errors, broken connections, timeouts.
/// Not our own refusals: an open breaker says "not now", and waiting it out here would hold
/// the request's bulkhead slot.
fn should_retry(result: &Result<u32, BoxError>) -> Decision {
    match result {
        Err(error) if is_upstream_failure(error) => Decision::Retry,
        _ => Decision::DontRetry,
    }
}

/// The breaker counts the upstream's failures, and nothing else.
fn breaker_verdict(result: &Result<u32, BoxError>) -> Verdict {
    match result {
        Err(error) if is_upstream_failure(error) => Verdict::Failure,
        _ => Verdict::Success,
    }
}

/// The upstream's failures: an `ERR`, a connection that broke, an attempt that timed out, a
/// pool that couldn't connect. Not a full pool (`Exhausted`: our own load) nor a closed one (our
/// own shutdown). Retrying a request that may have reached the upstream assumes it is
/// idempotent, as this one (a read) is; `examples/tcp_client.rs` shows how to tell "not sent"
/// from "interrupted" when it isn't.
fn is_upstream_failure(error: &BoxError) -> bool {
    if let Some(pool) = error.downcast_ref::<PoolError<io::Error>>() {
        return matches!(pool, PoolError::Unavailable { .. });
    }
    error.is::<UpstreamFailed>()
        || error.is::<Elapsed>()
        || error.is::<io::Error>()
        || error.is::<BadReply>()
}

/// The upstream answered `ERR`.
#[derive(Debug)]
struct UpstreamFailed;

impl Display for UpstreamFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the upstream answered ERR")
    }
}

impl std::error::Error for UpstreamFailed {}

/// The upstream's reply was not an answer to this request.
#[derive(Debug)]
struct BadReply(String);

impl Display for BadReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unexpected reply from the upstream: {:?}", self.0)
    }
}

impl std::error::Error for BadReply {}

/// The longest reply line read: a peer that sends more is not this upstream.
const MAX_REPLY: u64 = 64;

/// A budget that counts the retries it refused (palisade-retry's `TpsBudget` inside).
#[derive(Debug)]
struct CountedBudget {
    inner: TpsBudget,
    denied: AtomicU64,
}

impl RetryBudget for CountedBudget {
    fn deposit(&self) {
        self.inner.deposit();
    }

    fn withdraw(&self) -> bool {
        let allowed = self.inner.withdraw();
        if !allowed {
            self.denied.fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }

    fn record(&self, retryable: bool) {
        self.inner.record(retryable);
    }
}

/// Opens TCP connections to the upstream for the pool.
struct LineManager {
    addr: SocketAddr,
}

impl Manager for LineManager {
    type Connection = BufReader<TcpStream>;
    type Error = io::Error;

    async fn connect(&self) -> io::Result<Self::Connection> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(BufReader::new(stream))
    }

    /// Checked when a connection comes back and before it is handed out: one the upstream
    /// closed (the outage cut it) is discarded instead of failing the next request.
    fn is_broken(&self, conn: &mut Self::Connection) -> bool {
        let mut byte = [0_u8];
        !conn.buffer().is_empty()
            || !matches!(conn.get_ref().try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// The innermost service: one attempt, `REQ id attempt` on a pooled connection.
#[derive(Clone)]
struct Upstream {
    pool: Pool<LineManager>,
    tally: Arc<Tally>,
}

impl Service<Job> for Upstream {
    /// The attempt that succeeded, from 1.
    type Response = u32;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The pool's wait is part of the call, bounded by its acquire_timeout.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, job: Job) -> Self::Future {
        let (pool, tally) = (self.pool.clone(), self.tally.clone());
        Box::pin(async move {
            let attempt = job.attempts.fetch_add(1, Ordering::Relaxed) + 1;
            let _in_flight = tally.attempt_started();
            let mut conn = pool.get().await.inspect_err(|_| {
                tally.pool_refused.fetch_add(1, Ordering::Relaxed);
            })?;
            // Until the answer is read, the connection's state is unknown: if this attempt is
            // dropped (its timeout), the tainted connection is closed, not reused.
            Pooled::taint(&mut conn);
            let request = format!("REQ {} {attempt}\n", job.id);
            conn.get_mut().write_all(request.as_bytes()).await?;
            let mut reply = String::new();
            if (&mut *conn).take(MAX_REPLY).read_line(&mut reply).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed the connection",
                )
                .into());
            }
            // Only a whole answer to this request leaves the connection fit for the next one;
            // anything else keeps it tainted, and the pool closes it.
            let answer = match reply.strip_suffix('\n').and_then(|r| r.split_once(' ')) {
                Some((verdict, id)) if id == job.id.to_string() => verdict,
                _ => return Err(BadReply(reply).into()),
            };
            match answer {
                "OK" => {
                    Pooled::untaint(&mut conn);
                    Ok(attempt)
                }
                "ERR" => {
                    Pooled::untaint(&mut conn);
                    Err(UpstreamFailed.into())
                }
                _ => Err(BadReply(reply).into()),
            }
        })
    }
}

// ------------------------------------------------------------------------------------------
// The load and its tally
// ------------------------------------------------------------------------------------------

/// How one request ended.
enum End {
    Ok { attempts: u32 },
    RateLimited,
    Overloaded,
    BreakerOpen,
    Draining,
    Failed { error: BoxError, attempts: u32 },
}

impl End {
    /// `attempts`: how many attempts the request made. A request refused by the open breaker
    /// after an attempt had already failed is a failure, not a fast refusal.
    fn of(result: Result<u32, BoxError>, attempts: u32) -> End {
        match result {
            Ok(attempts) => End::Ok { attempts },
            Err(e) if e.is::<RateLimited>() => End::RateLimited,
            Err(e) if e.is::<Overloaded>() => End::Overloaded,
            Err(e) if e.is::<BreakerOpen>() && attempts == 0 => End::BreakerOpen,
            Err(e) if e.is::<Draining>() => End::Draining,
            Err(e) => End::Failed { error: e, attempts },
        }
    }
}

/// Per scene, how requests ended.
#[derive(Default)]
struct SceneTally {
    sent: AtomicU64,
    ok: AtomicU64,
    ok_retried: AtomicU64,
    rate_limited: AtomicU64,
    overloaded: AtomicU64,
    breaker_open: AtomicU64,
    draining: AtomicU64,
    failed: AtomicU64,
}

impl SceneTally {
    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn refused(&self) -> u64 {
        [
            &self.rate_limited,
            &self.overloaded,
            &self.breaker_open,
            &self.draining,
        ]
        .into_iter()
        .map(Self::get)
        .sum()
    }

    fn ended(&self) -> u64 {
        Self::get(&self.ok) + self.refused() + Self::get(&self.failed)
    }
}

#[derive(Default)]
struct Tally {
    scenes: [SceneTally; 5],
    retries: AtomicU64,
    /// Attempts started, in progress now, and the most in progress at once.
    attempts: AtomicU64,
    in_flight: AtomicU32,
    peak_in_flight: AtomicU32,
    /// Attempts that got no connection from the pool in time.
    pool_refused: AtomicU64,
    /// The first refusal of each kind in each scene is told.
    told: [[AtomicBool; 3]; 5],
}

impl Tally {
    fn attempt_started(self: &Arc<Self>) -> InFlight {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn total(&self, field: impl Fn(&SceneTally) -> u64) -> u64 {
        self.scenes.iter().map(field).sum()
    }

    fn record(&self, scene: Scene, id: u64, end: End, say: &Narration) {
        let tally = &self.scenes[scene.index()];
        let per_scene = matches!(end, End::Failed { .. });
        let (counter, first) = match end {
            End::Ok { attempts } => {
                if attempts > 1 {
                    tally.ok_retried.fetch_add(1, Ordering::Relaxed);
                }
                (&tally.ok, None)
            }
            End::RateLimited => (
                &tally.rate_limited,
                Some((
                    0,
                    "rate limit",
                    format!("over {RATE}/s: the excess is refused, with a retry-after"),
                )),
            ),
            End::Overloaded => (
                &tally.overloaded,
                Some((
                    1,
                    "bulkhead",
                    format!(
                        "all {CONCURRENCY} slots busy: a request waits up to {} ms, then is refused",
                        QUEUE_WAIT.as_millis()
                    ),
                )),
            ),
            End::BreakerOpen => (&tally.breaker_open, None),
            End::Draining => (&tally.draining, None),
            End::Failed { error, attempts } => (
                &tally.failed,
                Some((
                    2,
                    "retry",
                    if error.is::<BreakerOpen>() {
                        format!("request {id} failed, then the breaker refused its retry")
                    } else if attempts < ATTEMPTS {
                        format!("request {id} failed, no retry budget left: {error}")
                    } else {
                        format!("request {id} failed {attempts} times: {error}")
                    },
                )),
            ),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // The first refusal of each kind is told once; the first failure once per scene.
        let once = if per_scene { scene.index() } else { 0 };
        if let Some((kind, who, what)) = first
            && !self.told[once][kind].swap(true, Ordering::Relaxed)
        {
            say.event(who, what);
        }
    }
}

/// One attempt in progress (see [`Tally::attempt_started`]).
struct InFlight(Arc<Tally>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends requests at each scene's rate, open loop (a slow answer doesn't slow the callers),
/// until the shutdown stops it; then waits for every request to end. Returns how many it sent.
async fn send_load<S>(
    service: S,
    script: Arc<Script>,
    tally: Arc<Tally>,
    say: Narration,
    stop: impl Future<Output = ()>,
) -> u64
where
    S: Service<Job, Response = u32, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    tokio::pin!(stop);
    let mut requests = tokio::task::JoinSet::new();
    let mut next = Duration::ZERO;
    let mut id = 0;
    loop {
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep_until(script.start + next) => {}
        }
        while requests.try_join_next().is_some() {}
        let scene = script.scene_at(next);
        next += Duration::from_secs(1) / scene.offered();
        id += 1;
        tally.scenes[scene.index()]
            .sent
            .fetch_add(1, Ordering::Relaxed);
        let job = Job {
            id,
            attempts: Arc::new(AtomicU32::new(0)),
        };
        let attempts = job.attempts.clone();
        let call = service.clone().oneshot(job);
        let (tally, say) = (tally.clone(), say.clone());
        requests.spawn(async move {
            let end = End::of(call.await, attempts.load(Ordering::Relaxed));
            tally.record(scene, id, end, &say);
        });
    }
    // The drain waits for the requests in flight; this waits for them to be counted too.
    while requests.join_next().await.is_some() {}
    id
}

// ------------------------------------------------------------------------------------------
// Narration: events above, a live line below
// ------------------------------------------------------------------------------------------

enum Line {
    Text(String),
    Stop,
}

/// Tells what happens, with the time since the start.
#[derive(Clone)]
struct Narration {
    lines: mpsc::UnboundedSender<Line>,
    start: Instant,
}

impl Narration {
    fn new(start: Instant) -> (Narration, mpsc::UnboundedReceiver<Line>) {
        let (lines, receiver) = mpsc::unbounded_channel();
        (Narration { lines, start }, receiver)
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn scene(&self, name: &str, what: impl Display) {
        let at = self.elapsed().as_secs_f64();
        let _ = self
            .lines
            .send(Line::Text(format!("{at:>6.1} s  == {name} == {what}")));
    }

    fn event(&self, who: &str, what: impl Display) {
        let at = self.elapsed().as_secs_f64();
        let _ = self
            .lines
            .send(Line::Text(format!("{at:>6.1} s     {who:<11}{what}")));
    }

    fn stop(&self) {
        let _ = self.lines.send(Line::Stop);
    }
}

/// What the live line reads.
struct Live {
    script: Arc<Script>,
    tally: Arc<Tally>,
    upstream: Arc<UpstreamStats>,
    breaker: Arc<CircuitBreaker>,
    pool: Pool<LineManager>,
    feed: Arc<Feed>,
}

impl Live {
    /// Two lines: the requests, then the layers.
    fn lines(&self) -> (String, String) {
        let elapsed = self.script.elapsed();
        let scene = if elapsed >= self.script.run {
            "shutdown"
        } else {
            self.script.scene_at(elapsed).name()
        };
        let t = &self.tally;
        let feed = match &*self.feed.state.borrow() {
            ConnectionState::Connected { .. } => "up",
            ConnectionState::Closed(_) => "closed",
            _ => "down",
        };
        let requests = format!(
            "{:>6.1} s  {scene:<8}  requests {}: {} ok, {} refused, {} failed",
            elapsed.as_secs_f64(),
            t.total(|s| SceneTally::get(&s.sent)),
            t.total(|s| SceneTally::get(&s.ok)),
            t.total(SceneTally::refused),
            t.total(|s| SceneTally::get(&s.failed)),
        );
        let layers = format!(
            "upstream {} attempts/s | breaker {} | pool {} open | feed {feed}",
            self.upstream.last_second(elapsed),
            self.breaker.state(),
            self.pool.metrics().size,
        );
        (requests, layers)
    }
}

/// Prints the scenes and events as they come, and the live lines: redrawn in place ten times a
/// second on a terminal, once a second otherwise (a log, where they make one line).
async fn narrate(mut lines: mpsc::UnboundedReceiver<Line>, live: Live) {
    // Back to the start of the live lines, both erased.
    const ERASE: &str = "\r\x1b[2K\x1b[1A\x1b[2K";
    let tty = io::stdout().is_terminal();
    let mut tick = tokio::time::interval(if tty { ms(100) } else { Duration::from_secs(1) });
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut out = io::stdout();
    let mut drawn = false;
    loop {
        let text = tokio::select! {
            line = lines.recv() => match line {
                Some(Line::Text(text)) => Some(text),
                Some(Line::Stop) | None => break,
            },
            _ = tick.tick() => None,
        };
        let (requests, layers) = live.lines();
        if tty {
            let erase = if drawn { ERASE } else { "" };
            let text = text.map(|text| text + "\n").unwrap_or_default();
            let _ = write!(out, "{erase}{text}{requests}\n           {layers}");
            drawn = true;
        } else if let Some(text) = text {
            let _ = writeln!(out, "{text}");
        } else {
            let _ = writeln!(out, "{requests}\n           {layers}");
        }
        let _ = out.flush();
    }
    let (requests, layers) = live.lines();
    if tty && drawn {
        let _ = write!(out, "{ERASE}");
    }
    let _ = writeln!(out, "{requests}\n           {layers}\n");
    let _ = out.flush();
}

// ------------------------------------------------------------------------------------------
// After the run: the scenes, a chapter per crate, the table, the checks
// ------------------------------------------------------------------------------------------

/// The scenes in which the upstream was up.
const SERVING: [Scene; 4] = [Scene::Calm, Scene::Surge, Scene::Slow, Scene::Recovery];

struct RunReport<'a> {
    script: &'a Script,
    client: &'a Client,
    upstream: &'a UpstreamStats,
    feed: &'a Feed,
    /// Requests the load generator sent.
    sent: u64,
    /// Connections the pool had created when the outage began.
    created_before_outage: u64,
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn heading(title: &str) {
    println!("{title}");
    println!("{}", "-".repeat(title.chars().count()));
}

impl RunReport<'_> {
    fn tally(&self) -> &Tally {
        &self.client.tally
    }

    /// Requests sent, refused and ok in `scenes`.
    fn requests_in(&self, scenes: &[Scene]) -> (u64, u64, u64) {
        let tally = self.tally();
        scenes.iter().fold((0, 0, 0), |(sent, refused, ok), scene| {
            let t = &tally.scenes[scene.index()];
            (sent + get(&t.sent), refused + t.refused(), ok + get(&t.ok))
        })
    }

    fn scenes(&self) {
        heading("Scene by scene");
        println!(
            "Each request is counted in the scene it was sent in. A refused request got a fast"
        );
        println!("answer from a layer (the rate limit, the bulkhead, the open breaker); \"ok\" is");
        println!("the share of the others that succeeded. The upstream's columns are what it saw.");
        println!();
        println!(
            "  scene     seconds       sent  refused      ok  |  upstream: attempts  failed  most in 1 s"
        );
        for scene in Scene::ALL {
            let (from, to) = (self.script.start_of(scene), self.script.end_of(scene));
            let (sent, refused, ok) = self.requests_in(&[scene]);
            if sent == 0 {
                continue;
            }
            let attempts = self.upstream.attempts_in(&[scene]);
            let failed = self.upstream.failed_in(&[scene]);
            println!(
                "  {:<9} {:<11} {sent:>6} {refused:>8} {:>7}  |  {attempts:>18} {:>7} {:>12}",
                scene.name(),
                format!("{:.1}-{:.1} s", from.as_secs_f64(), to.as_secs_f64()),
                percent(ok, sent - refused),
                percent(failed, attempts),
                self.upstream.peak_second(from, to),
            );
        }
        let (sent, refused, ok) = self.requests_in(&SERVING);
        let (attempts, failed) = (
            self.upstream.attempts_in(&SERVING),
            self.upstream.failed_in(&SERVING),
        );
        println!();
        println!(
            "While it was up, the upstream failed {} of the {attempts} attempts it saw; the callers",
            percent(failed, attempts)
        );
        println!(
            "saw {} of the {} requests the layers let through succeed. Of all {} requests sent",
            percent(ok, sent - refused),
            sent - refused,
            self.sent
        );
        let all_ok = self.tally().total(|s| get(&s.ok));
        let all_failed = self.tally().total(|s| get(&s.failed));
        println!(
            "(the outage included), {} succeeded, {} were refused fast and {} failed.",
            percent(all_ok, self.sent),
            percent(self.sent - all_ok - all_failed, self.sent),
            percent(all_failed, self.sent)
        );
        println!(
            "And the upstream never saw more than {} attempts in a second, though the callers",
            self.upstream.peak_second(Duration::ZERO, self.script.run),
        );
        println!(
            "sent up to {} requests a second and each may take {ATTEMPTS} attempts: the rate limit",
            Scene::Surge.offered()
        );
        println!(
            "({RATE}/s, burst {BURST}) and the retry budget ({:.0}% + {RETRY_FLOOR}/s) hold it to roughly",
            RETRY_RATIO * 100.0
        );
        println!(
            "({RATE} + {BURST}) x {:.1} + {RETRY_FLOOR} = {:.0} a second.",
            1.0 + RETRY_RATIO,
            f64::from(RATE + BURST) * (1.0 + RETRY_RATIO) + f64::from(RETRY_FLOOR)
        );
        println!();
    }

    fn chapters(&self) {
        let t = self.tally();
        chapter_time();

        heading("Chapter 2 - rate limiting (palisade-ratelimit)");
        let surge = &t.scenes[Scene::Surge.index()];
        let surge_for = self.script.end_of(Scene::Surge) - self.script.start_of(Scene::Surge);
        let admitted = get(&surge.sent) - get(&surge.rate_limited);
        println!(
            "A GCRA limiter, one atomic word: {RATE} requests a second with a burst of {BURST}. In the"
        );
        println!(
            "surge the callers sent {} requests in {}: it let {admitted} through ({:.0} a second:",
            get(&surge.sent),
            human(surge_for),
            admitted as f64 / surge_for.as_secs_f64()
        );
        println!(
            "the rate and the burst of {BURST}) and refused {}, each with the time it would",
            get(&surge.rate_limited),
        );
        // A debug build would time its own overhead: the cost is told in release builds only.
        if cfg!(debug_assertions) {
            println!(
                "fit (a retry-after). It sits outside the retry, so retries never spend the quota."
            );
        } else {
            println!(
                "fit (a retry-after), in {} of CPU. It sits outside the retry, so retries never",
                human(rate_limit_check_cost())
            );
            println!("spend the quota.");
        }
        println!("A refusal comes at once while the bulkhead has a free slot: the limiter decides");
        println!(
            "in `call`, after the bulkhead's `poll_ready`, so with every slot busy an over-rate"
        );
        println!(
            "request first queues for one like any other (up to {} ms; see docs/layer-order.md).",
            QUEUE_WAIT.as_millis()
        );
        println!("The crate also has keyed limiters (one limit per client IP, bounded memory: see");
        println!("examples/axum_service.rs), sliding windows, fair async waiting and refunds.");
        println!();

        heading("Chapter 3 - bulkhead (palisade-bulkhead)");
        let bulkhead = self.client.bulkhead.metrics();
        let slow = &t.scenes[Scene::Slow.index()];
        println!(
            "At most {CONCURRENCY} requests at once; {QUEUE} more may wait, {} ms at most. When the",
            QUEUE_WAIT.as_millis()
        );
        println!(
            "upstream slowed down, a request held its slot for 150-350 ms and the slots ran out:"
        );
        println!(
            "{} requests of the slow scene were refused fast instead of queueing behind the",
            get(&slow.overloaded)
        );
        println!(
            "slow ones ({} at once with the queue full, {} after waiting the {} ms out). Attempts in",
            bulkhead.rejected_queue_full,
            bulkhead.rejected_timed_out,
            QUEUE_WAIT.as_millis()
        );
        println!(
            "flight never passed {} (limit {CONCURRENCY}): a slow upstream can't take every task",
            get_u32(&t.peak_in_flight)
        );
        println!("and connection of the service with it. A request keeps its one slot across its");
        println!("retries, so retries don't multiply the concurrency.");
        println!();

        heading("Chapter 4 - retry (palisade-retry)");
        let ok_retried = t.total(|s| get(&s.ok_retried));
        println!(
            "Up to {ATTEMPTS} attempts, backing off from 25 ms with full jitter, and a budget shared by"
        );
        println!(
            "every request: retries may add {:.0}% to the last second's requests, plus {RETRY_FLOOR} a second.",
            RETRY_RATIO * 100.0
        );
        println!(
            "It retried {} times, and {ok_retried} requests succeeded only because it did. It retries",
            get(&t.retries)
        );
        println!(
            "only what another attempt may fix: an ERR, a broken connection, a timeout, never an"
        );
        println!(
            "open breaker's refusal. The budget refused {} retries: those callers got the real",
            get(&self.client.budget.denied)
        );
        println!("error at once, and a failing upstream never gets a retry storm.");
        println!();

        heading("Chapter 5 - circuit breaker (palisade-breaker)");
        let breaker = self.client.breaker.metrics();
        println!(
            "Trips when half of about the last 40 attempts failed (20 at least), stays open {},",
            human(open_for(self.script.run))
        );
        println!(
            "then {} each time its 3 probes fail (2 failures re-open it), and closes when 2 of",
            human(open_for(self.script.run) * 2)
        );
        println!("them succeed. Its");
        println!("transitions in this run:");
        for line in self.client.transitions.lock().iter() {
            println!("  {line}");
        }
        println!(
            "While open it refused {} attempts in microseconds, without touching the upstream.",
            breaker.rejections
        );
        println!(
            "It sits inside the retry and outside the timeout: it counts every attempt, and a"
        );
        println!("timed-out attempt is a failure.");
        println!();

        heading("Chapter 6 - connection pool (palisade-pool)");
        let pool = self.client.pool.metrics();
        let after_outage = pool.created - self.created_before_outage.min(pool.created);
        println!(
            "Up to {CONCURRENCY} TCP connections, {} created: {} before the outage, {after_outage} after it.",
            pool.created,
            pool.created - after_outage,
        );
        println!(
            "{} were dropped tainted: an attempt ended mid-request (a late answer cut by the",
            pool.discarded(Discard::Tainted)
        );
        println!(
            "timeout, a connection cut by the outage), so the connection's state was unknown."
        );
        println!(
            "The manager's is_broken check caught {} closed while idle, before it went out. {}",
            pool.discarded(Discard::Broken),
            pool.connect_failures
        );
        println!(
            "connects failed while the upstream was down. At the end: {} in use, {} leaked; the shutdown's",
            pool.in_use, pool.leaks
        );
        println!(
            "cleanup hook closed the last {}.",
            pool.discarded(Discard::Closed)
        );
        println!();

        heading("Chapter 7 - reconnecting stream (palisade-reconnect)");
        println!(
            "The tick feed's ReconnectingStream read {} ticks. The outage cost its reader {} error,",
            get(&self.feed.ticks),
            get(&self.feed.lost)
        );
        println!(
            "then it reconnected ({} in all), backing off from 50 ms (x 1.6, up to 500 ms, +/- 20%),",
            get(&self.feed.reconnects)
        );
        println!(
            "and its on_connect hook subscribed again before the reader saw the new connection."
        );
        println!();
    }

    fn table(&self) {
        let t = self.tally();
        heading("Layer by layer");
        let requests = self.sent;
        let draining = t.total(|s| get(&s.draining));
        let limited = t.total(|s| get(&s.rate_limited));
        let overloaded = t.total(|s| get(&s.overloaded));
        let entered_retry = requests - draining - limited - overloaded;
        let attempts = get(&t.attempts);
        let pool = self.client.pool.metrics();
        let dash = "-".to_string();
        println!("  layer        admitted   retried  rejected   tripped  reconnected");
        let row = |layer: &str, cells: [String; 5]| {
            println!(
                "  {layer:<10} {:>10} {:>9} {:>9} {:>9} {:>12}",
                cells[0], cells[1], cells[2], cells[3], cells[4]
            );
        };
        row(
            "shutdown",
            [
                (requests - draining).to_string(),
                dash.clone(),
                draining.to_string(),
                dash.clone(),
                dash.clone(),
            ],
        );
        row(
            "rate limit",
            [
                (requests - draining - limited).to_string(),
                dash.clone(),
                limited.to_string(),
                dash.clone(),
                dash.clone(),
            ],
        );
        row(
            "bulkhead",
            [
                entered_retry.to_string(),
                dash.clone(),
                overloaded.to_string(),
                dash.clone(),
                dash.clone(),
            ],
        );
        row(
            "retry",
            [
                entered_retry.to_string(),
                get(&t.retries).to_string(),
                get(&self.client.budget.denied).to_string(),
                dash.clone(),
                dash.clone(),
            ],
        );
        row(
            "breaker",
            [
                attempts.to_string(),
                dash.clone(),
                self.client.breaker.metrics().rejections.to_string(),
                get_u32(&self.client.trips).to_string(),
                dash.clone(),
            ],
        );
        row(
            "pool",
            [
                (attempts - get(&t.pool_refused)).to_string(),
                dash.clone(),
                get(&t.pool_refused).to_string(),
                dash.clone(),
                (pool.created - self.created_before_outage.min(pool.created)).to_string(),
            ],
        );
        row(
            "feed",
            [
                dash.clone(),
                dash.clone(),
                dash.clone(),
                dash.clone(),
                get(&self.feed.reconnects).to_string(),
            ],
        );
        println!();
        println!(
            "Requests for the first three rows, attempts for the breaker and the pool. The retry's"
        );
        println!("rejections are retries its budget refused; the pool's, attempts that got no");
        println!("connection in time; its reconnections, connections opened after the outage.");
        println!();
    }

    /// What the tour claims, checked: the failures, empty if every check passed.
    fn checks(&self, report: &ShutdownReport, stopped_early: bool) -> Vec<String> {
        let t = self.tally();
        let mut failures = Vec::new();
        let mut check = |ok: bool, claim: String| {
            if !ok {
                failures.push(claim);
            }
        };
        let (counted, ended) = (t.total(|s| get(&s.sent)), t.total(SceneTally::ended));
        check(
            counted == self.sent && ended == self.sent,
            format!(
                "every request ends: {} sent, {counted} counted, {ended} ended",
                self.sent
            ),
        );
        let peak = get_u32(&t.peak_in_flight);
        check(
            peak <= CONCURRENCY,
            format!("at most {CONCURRENCY} attempts in flight, the bulkhead's limit: {peak} were"),
        );
        let bulkhead = self.client.bulkhead.metrics();
        check(
            bulkhead.in_flight == 0 && bulkhead.queued == 0,
            format!(
                "no bulkhead permit left: {} out, {} queued",
                bulkhead.in_flight, bulkhead.queued
            ),
        );
        let pool = self.client.pool.metrics();
        check(
            pool.in_use == 0 && pool.leaks == 0 && pool.size == 0,
            format!(
                "every connection back and closed: {} in use, {} leaked, {} open",
                pool.in_use, pool.leaks, pool.size
            ),
        );
        check(report.is_clean(), format!("a clean shutdown: {report}"));
        if !stopped_early {
            let scene = |s: Scene| &t.scenes[s.index()];
            check(
                get(&scene(Scene::Surge).rate_limited) > 0,
                "the rate limit refuses part of the surge".to_string(),
            );
            check(
                get(&scene(Scene::Slow).overloaded) > 0,
                "the bulkhead sheds load while the upstream is slow".to_string(),
            );
            let recovery = self.script.start_of(Scene::Recovery);
            let closed_at = Duration::from_millis(get(&self.client.closed_at));
            check(
                get_u32(&self.client.trips) > 0 && closed_at >= recovery,
                format!(
                    "the breaker trips in the outage and closes after it: {} trips, last closed at {}",
                    get_u32(&self.client.trips),
                    human(closed_at)
                ),
            );
            check(
                get(&self.feed.reconnects) > 0,
                "the feed reconnects after the outage".to_string(),
            );
        }
        failures
    }
}

/// How long the breaker stays open at first: a twelfth of the run (1 s in the default run), so
/// that it probes once during the outage whatever the run's length, and twice that before it
/// probes again.
fn open_for(run: Duration) -> Duration {
    run / 12
}

fn get_u32(counter: &AtomicU32) -> u32 {
    counter.load(Ordering::Relaxed)
}

/// What one `check` costs on this machine, on a limiter of its own.
fn rate_limit_check_cost() -> Duration {
    let limiter = RateLimiter::new(Quota::per_second(1_000_000_000)).expect("a valid quota");
    let rounds = 1_000_000;
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(limiter.check());
    }
    started.elapsed() / rounds
}

/// palisade-core: the clock every layer above read.
fn chapter_time() {
    heading("Chapter 1 - time (palisade-core)");
    let fast = FastClock::new();
    let rounds = 1_000_000;
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(fast.now());
    }
    let fast_read = started.elapsed() / rounds;
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(std::time::Instant::now());
    }
    let std_read = started.elapsed() / rounds;
    // A runtime of its own, on a thread of its own: the tour's runtime keeps real time.
    let (slept, took) = std::thread::spawn(|| {
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
        (slept, wall.elapsed())
    })
    .join()
    .expect("the paused runtime ran");
    println!("Every layer above read the time from a FastClock: the CPU's time-stamp counter,");
    if cfg!(debug_assertions) {
        println!("calibrated once against the OS clock (docs/benchmarks.md compares it with std's");
        println!("Instant::now; this debug build would only time its own overhead).");
    } else {
        println!(
            "calibrated once against the OS clock. A read took {} here (std's Instant::now: {}).",
            human(fast_read),
            human(std_read),
        );
    }
    println!(
        "Each layer takes its clock as a parameter, so tests drive them with a ManualClock or"
    );
    println!("tokio's paused clock: under a paused runtime (#[tokio::test(start_paused = true)]),");
    println!(
        "a one-hour sleep just now took {} of wall time, and TokioClock saw {} pass.",
        human(took),
        human(slept)
    );
    println!();
}

/// palisade-lock: an ABBA bug caught on its first run, and the fix.
fn chapter_lock() {
    heading("Chapter 8 - deadlock-safe locks (palisade-lock)");
    println!(
        "Not in the request path, but in most services: `transfer` locks the accounts, then the"
    );
    println!(
        "audit log; `reconcile`, written later, locks the log, then the accounts. Run at once on"
    );
    println!("two threads they deadlock, now and then. Run here one after the other, so nothing");
    println!("can deadlock, the runtime detector still sees the two orders:");
    if !detect::is_enabled() {
        println!(
            "  (detection is compiled out of this release build: run the tour in a debug build,"
        );
        println!("   or with the `lock-detect-release` feature)");
    }
    let reports: Arc<std::sync::Mutex<Vec<Report>>> = Arc::default();
    let sink = reports.clone();
    // A test suite wants the default mode, a panic at the bad acquisition; the tour prints.
    detect::set_mode(Mode::callback(move |r| {
        sink.lock().expect("not poisoned").push(r.clone());
    }));
    let accounts = Arc::new(Mutex::named("accounts", vec![100_i64, 0]));
    let audit = Arc::new(Mutex::named("audit", Vec::<String>::new()));
    {
        let (accounts, audit) = (accounts.clone(), audit.clone());
        std::thread::spawn(move || {
            let mut acc = accounts.lock();
            let mut log = audit.lock();
            acc[0] -= 30;
            acc[1] += 30;
            log.push("moved 30".into());
        })
        .join()
        .expect("transfer runs");
    }
    {
        let (accounts, audit) = (accounts.clone(), audit.clone());
        std::thread::spawn(move || {
            let log = audit.lock();
            let acc = accounts.lock();
            assert_eq!(acc.iter().sum::<i64>() + log.len() as i64, 101);
        })
        .join()
        .expect("reconcile runs");
    }
    for report in reports.lock().expect("not poisoned").iter() {
        for line in report.to_string().lines() {
            println!("    {line}");
        }
    }
    let before = reports.lock().expect("not poisoned").len();
    let (a, b) = (
        Arc::new(Mutex::named("account", 1_000_i64)),
        Arc::new(Mutex::named("account", 1_000_i64)),
    );
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
    for thread in threads {
        thread.join().expect("transfers run");
    }
    let total = {
        let (a, b) = lock_all((&*a, &*b));
        *a + *b
    };
    println!("The fix is `lock_all`, which takes a set in one global order whatever the argument");
    println!(
        "order: 2 threads x 10,000 transfers in opposite directions, no deadlock, total still"
    );
    println!(
        "{total}, {} new reports. `lock_levels!` makes an order a type instead: the wrong order",
        reports.lock().expect("not poisoned").len() - before
    );
    println!("does not compile (examples/lock_ordering.rs shows the error).");
    println!();
}

/// palisade-shutdown: how the run ended.
fn chapter_shutdown(report: &ShutdownReport, draining: u64) {
    heading("Chapter 9 - graceful shutdown (palisade-shutdown)");
    match &report.trigger {
        Trigger::Signal(signal) => {
            println!(
                "You sent {signal} (Ctrl-C), and the coordinator, which listens for SIGINT and"
            );
            println!(
                "SIGTERM, began the graceful stop. The load generator, registered as a listener, stopped"
            );
        }
        _ => {
            println!(
                "At the end of the run the tour called trigger() (a service gets SIGTERM or Ctrl-C,"
            );
            println!(
                "which this tour catches too). The load generator, registered as a listener, stopped"
            );
        }
    }
    println!(
        "sending; the ShutdownLayer, outermost in the stack, let the requests in flight finish"
    );
    println!(
        "and refused {draining} that came after; the feed's task stopped; the cleanup hook closed"
    );
    println!("the pool. The report coordinator.run() returned, as it prints for a log:");
    println!();
    for line in report.to_string().lines() {
        println!("    {line}");
    }
    println!();
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_string()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// A duration rounded for reading: `3.2 ms`, `1.5 s`.
fn human(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 1.0 {
        format!("{secs:.1} s")
    } else if secs >= 1e-3 {
        format!("{:.1} ms", secs * 1e3)
    } else if secs >= 1e-6 {
        format!("{:.1} us", secs * 1e6)
    } else {
        format!("{} ns", d.as_nanos())
    }
}
