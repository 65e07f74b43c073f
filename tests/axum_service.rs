//! The `axum_service` example under a bounded chaos soak: the example binary runs as a process in
//! front of an in-process, fault-injecting upstream, several client IPs drive more load than its
//! limits admit, and the test checks what the limits promise, from the outside:
//!
//! - a. no request is lost: every request sent gets a complete answer, a 200 with the upstream's
//!   body or a non-200 naming a known `x-palisade-error` (with the status that kind implies);
//! - b. the bulkhead holds: the upstream never sees more requests in progress at once than
//!   `--concurrency`, and the example's `/stats` agrees (`max_in_flight`);
//! - c. the upstream's attempt limit holds: no window of its arrival log (100 ms to 2 s) holds
//!   more attempts than GCRA admits (burst + rate x (window + 50 ms of network slack));
//! - d. nothing leaks: once the load stops, no bulkhead permit and no pooled connection stays
//!   checked out, and neither the pool's count nor the upstream's count of open connections
//!   ever exceeds `--pool-size`;
//! - e. each client IP's quota holds: the answers it was admitted for (all but the 429s),
//!   counted over every window, stay within its GCRA bound;
//! - f. the service recovers: after the upstream's outage ends, 200s come back;
//! - g. SIGTERM drains: readiness turns off, an in-flight request completes, idle keep-alive
//!   connections are closed, and the process exits 0 within `--deadline-ms` (+ 1 s).
//!
//! A last check makes sure the soak still reaches every limit it checks (429s, `overloaded`,
//! `upstream_quota`, the upstream at `--concurrency`, 500s and retries), so that a change of
//! limits or load cannot turn it into a run that passes whatever the layers do.
//!
//! The upstream follows a script over time (normal, random 500s, latency spikes, a 3 s outage
//! with the listener dropped and live connections cut, a restart on the same port); its random
//! choices come from a seeded xorshift, printed with a summary table so a failure can be replayed
//! (`PALISADE_SOAK_SEED=<seed>`). The checkers return `Result<(), String>`: the soak asserts them
//! `Ok`, and shorter runs with one layer removed (`--without bulkhead`, `--without
//! upstream-limit`, `--without ratelimit`) assert the matching checker `Err`, so each invariant
//! is shown to be one the layer enforces and the test could catch.
//!
//! Real time and real sockets are unavoidable here (a real process), so every wait is bounded;
//! the tests run one at a time (they measure rates and concurrency on a shared machine) and take
//! about 21 s together. Client sockets bind 127.0.0.2, 127.0.0.3, ... before connecting: on
//! Linux all of 127/8 is loopback, so each is a distinct client IP to the example's per-IP limit.
//! The example binary is found and built as `tests/axum_graceful.rs` does.
#![cfg(target_os = "linux")]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

/// How long anything that should happen at once may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(10);
/// A request with no complete answer after this long counts as lost (hung). The slowest honest
/// answer here is a few retries of a 1 s attempt timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Network and scheduling delay allowed between a limiter's decision and what the test sees.
const SLACK: Duration = Duration::from_millis(50);
/// The windows every rate bound is checked over.
const WINDOWS_MS: [u64; 6] = [100, 200, 500, 1000, 1500, 2000];
/// The symbols the load asks quotes for.
const SYMBOLS: [&str; 8] = [
    "AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "TSLA", "META", "ORCL",
];
/// Every `x-palisade-error` value of the contract, with the status it comes with.
const KINDS: [(&str, u16); 10] = [
    ("rate_limited", 429),
    ("overloaded", 503),
    ("breaker_open", 503),
    ("upstream_quota", 503),
    ("upstream_failed", 502),
    ("upstream_timeout", 504),
    ("draining", 503),
    ("invalid_symbol", 400),
    ("not_found", 404),
    ("internal", 500),
];
/// The address control requests (`/stats`, `/ready`, the retry probes) come from; the load
/// comes from 127.0.0.2 and up, so control traffic never spends a load IP's quota.
const CONTROL_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// How long the upstream takes over `/price/SLOW` (the request in flight during shutdown).
const SLOW_MS: u64 = 600;

/// The example's limits for every run (the layer-removed runs drop one layer of them).
#[derive(Debug, Clone, Copy)]
struct Limits {
    rate_per_ip: u32,
    concurrency: usize,
    queue: usize,
    queue_timeout_ms: u64,
    upstream_rps: u32,
    /// Above `concurrency`, so that the bulkhead, not the pool, bounds concurrency (b), and the
    /// upstream's count of open connections has room for a replaced connection's close to be
    /// seen after its successor's accept.
    pool_size: usize,
    /// Above the longest latency spike: an attempt abandoned by a timeout keeps running at the
    /// upstream (until it sees the connection close), which would blur what b measures.
    attempt_timeout_ms: u64,
    readiness_delay_ms: u64,
    deadline_ms: u64,
}

const LIMITS: Limits = Limits {
    rate_per_ip: 50,
    concurrency: 8,
    queue: 16,
    queue_timeout_ms: 100,
    upstream_rps: 100,
    pool_size: 12,
    attempt_timeout_ms: 1000,
    readiness_delay_ms: 200,
    deadline_ms: 3000,
};

impl Limits {
    fn args(&self, upstream: SocketAddr, without: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            ("--port", "0".to_owned()),
            ("--upstream", format!("http://{upstream}")),
            ("--rate-per-ip", self.rate_per_ip.to_string()),
            ("--concurrency", self.concurrency.to_string()),
            ("--queue", self.queue.to_string()),
            ("--queue-timeout-ms", self.queue_timeout_ms.to_string()),
            ("--upstream-rps", self.upstream_rps.to_string()),
            ("--pool-size", self.pool_size.to_string()),
            ("--attempt-timeout-ms", self.attempt_timeout_ms.to_string()),
            ("--readiness-delay-ms", self.readiness_delay_ms.to_string()),
            ("--deadline-ms", self.deadline_ms.to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .collect();
        for layer in without {
            args.push("--without".to_owned());
            args.push((*layer).to_owned());
        }
        args
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
}

/// The load: `ips` client IPs (127.0.0.2, ...), each with `conns_per_ip` keep-alive connections
/// that together offer `per_ip_rps` requests a second (less while answers are slow: a connection
/// waits for its answer before its next request).
#[derive(Debug, Clone, Copy)]
struct LoadConfig {
    ips: usize,
    conns_per_ip: usize,
    per_ip_rps: u32,
}

/// Twice what the per-IP limit admits, and 5 IPs x 50/s admitted is 2.5 x the upstream's rate.
const MAIN_LOAD: LoadConfig = LoadConfig {
    ips: 5,
    conns_per_ip: 8,
    per_ip_rps: 100,
};

// ---------------------------------------------------------------------------------------------
// The soak and the layer-removed runs
// ---------------------------------------------------------------------------------------------

/// Normal, random 500s, latency spikes, an outage, a restart on the same port: every invariant
/// holds throughout, and SIGTERM drains and exits 0 in time.
#[test]
fn chaos_soak_keeps_every_invariant() {
    let _serial = serial();
    runtime().block_on(chaos_soak());
}

/// Without the bulkhead the upstream sees more requests at once than `--concurrency`: checker b
/// fails, so the soak's b passing is the bulkhead's doing.
#[test]
fn without_the_bulkhead_the_upstream_sees_more_than_the_concurrency() {
    let _serial = serial();
    runtime().block_on(async {
        let slow = Fault::Slow {
            min_ms: 100,
            max_ms: 200,
        };
        let run = layer_removed_run("bulkhead", slow, MAIN_LOAD).await;
        let b = check_bulkhead(run.upstream.max_in_progress, None, LIMITS.concurrency);
        let c = check_attempt_rate(&run.upstream.arrivals, LIMITS.upstream_rps);
        eprintln!("b without the bulkhead: {b:?}\nc (still limited): {c:?}");
        assert!(
            b.is_err(),
            "with --without bulkhead the upstream's max concurrency ({}) should exceed \
             --concurrency {}: the load or the script no longer stresses the bulkhead",
            run.upstream.max_in_progress,
            LIMITS.concurrency
        );
        assert_eq!(
            c,
            Ok(()),
            "the attempt limit still holds without the bulkhead"
        );
        assert_eq!(check_answers(&run.records), Ok(()));
    });
}

/// Without the attempt limit the upstream gets more attempts per window than GCRA would admit:
/// checker c fails, so the soak's c passing is the limit's doing.
#[test]
fn without_the_upstream_limit_the_upstream_sees_more_than_its_rate() {
    let _serial = serial();
    runtime().block_on(async {
        let run = layer_removed_run("upstream-limit", Fault::Normal, MAIN_LOAD).await;
        let c = check_attempt_rate(&run.upstream.arrivals, LIMITS.upstream_rps);
        let b = check_bulkhead(run.upstream.max_in_progress, None, LIMITS.concurrency);
        eprintln!("c without the upstream limit: {c:?}\nb (still bounded): {b:?}");
        assert!(
            c.is_err(),
            "with --without upstream-limit the upstream should see more than {}/s (burst {}); \
             the load no longer exceeds the limit:\n{}",
            LIMITS.upstream_rps,
            LIMITS.upstream_rps,
            window_table(&run.upstream.arrivals, LIMITS.upstream_rps)
        );
        assert_eq!(
            b,
            Ok(()),
            "the bulkhead still holds without the attempt limit"
        );
        assert_eq!(check_answers(&run.records), Ok(()));
    });
}

/// Without the per-IP limit a client IP is admitted more than its quota: checker e fails, so the
/// soak's e passing is the limit's doing.
#[test]
fn without_the_rate_limit_a_client_ip_gets_more_than_its_quota() {
    let _serial = serial();
    runtime().block_on(async {
        // Four times the per-IP rate, so the admitted count outgrows the bound on every window.
        let load = LoadConfig {
            ips: 3,
            conns_per_ip: 8,
            per_ip_rps: 200,
        };
        let run = layer_removed_run("ratelimit", Fault::Normal, load).await;
        let e = check_per_ip(&run.records, LIMITS.rate_per_ip);
        eprintln!("e without the rate limit: {e:?}");
        assert!(
            e.is_err(),
            "with --without ratelimit each IP should be admitted more than {}/s (burst {})",
            LIMITS.rate_per_ip,
            LIMITS.rate_per_ip
        );
        assert!(
            run.records
                .iter()
                .all(|record| record.kind.as_deref() != Some("rate_limited")),
            "no 429 rate_limited without the rate limit layer"
        );
        assert_eq!(check_answers(&run.records), Ok(()));
    });
}

async fn chaos_soak() {
    let seed = seed();
    let mut rng = XorShift::new(seed);
    let mut upstream = Upstream::start(rng.fork(), Fault::Normal).await;
    let args = LIMITS.args(upstream.addr, &[]);
    let mut example = Example::start(&args);
    let addr = example.addr;
    eprintln!(
        "soak: seed {seed} (replay with PALISADE_SOAK_SEED={seed}); upstream {}; example {addr} \
         (pid {}): {}",
        upstream.addr,
        example.child.id(),
        args.join(" ")
    );
    let mut verdicts: Vec<(&str, Result<(), String>)> = Vec::new();
    verdicts.push((
        "0. /ready, /live; 5xx retried, 404 passed on, bad symbols not sent",
        check_basics(addr, &upstream).await,
    ));

    // The script: each phase starts at a fixed offset from the start of the load.
    let epoch = Instant::now();
    let load = Load::start(addr, MAIN_LOAD, &mut rng, epoch);
    let sampler = Sampler::start(addr);
    let mut timeline = vec![("normal", Duration::ZERO)];
    let phases = [
        (1500, "500s 30%", Some(Fault::Errors { percent: 30 })),
        (
            3000,
            "spikes 50% 200-400ms",
            Some(Fault::Spikes {
                percent: 50,
                min_ms: 200,
                max_ms: 400,
            }),
        ),
        (4500, "outage", None),
    ];
    for (at_ms, name, fault) in phases {
        tokio::time::sleep_until((epoch + Duration::from_millis(at_ms)).into()).await;
        match fault {
            Some(fault) => upstream.set_fault(fault),
            None => upstream.stop().await,
        }
        timeline.push((name, epoch.elapsed()));
    }
    tokio::time::sleep_until((epoch + Duration::from_millis(7500)).into()).await;
    upstream.set_fault(Fault::Normal);
    upstream.restart().await;
    let restarted = Instant::now();
    timeline.push(("restarted, normal", epoch.elapsed()));
    // Run on until 200s have been back for 1.5 s (at least 2.5 s after the restart, at most 10).
    let mut recovered_at = None;
    loop {
        let now = Instant::now();
        if recovered_at.is_none() && load.ok_sent_since(restarted) {
            recovered_at = Some(now);
        }
        let recovered_long_enough =
            recovered_at.is_some_and(|at| now >= at + Duration::from_millis(1500));
        if (now >= restarted + Duration::from_millis(2500) && recovered_long_enough)
            || now >= restarted + Duration::from_secs(10)
        {
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    let load_stopped = Instant::now();
    timeline.push(("load stopped", epoch.elapsed()));
    let records = load.finish().await;
    let samples = sampler.finish().await;
    let (settled, idle_after) = wait_idle(addr).await;
    let report = upstream.report();

    verdicts.push((
        "a. every request answered: 200 or a known error",
        check_answers(&records),
    ));
    verdicts.push((
        "b. in flight <= --concurrency",
        match &settled {
            Ok(stats) => check_bulkhead(report.max_in_progress, Some(stats), LIMITS.concurrency),
            Err(error) => Err(format!("no /stats: {error}")),
        },
    ));
    verdicts.push((
        "c. upstream attempts within the GCRA bound",
        check_attempt_rate(&report.arrivals, LIMITS.upstream_rps),
    ));
    verdicts.push((
        "d. no leaks; connections <= --pool-size",
        check_no_leaks(&settled, &samples, report.max_open, LIMITS.pool_size),
    ));
    verdicts.push((
        "e. each client IP within its quota",
        check_per_ip(&records, LIMITS.rate_per_ip),
    ));
    verdicts.push((
        "f. 200s again after the outage",
        check_recovered(&records, restarted, load_stopped),
    ));
    verdicts.push((
        "the load reached every limit it checks",
        check_coverage(&records, &report, &settled, LIMITS.concurrency),
    ));

    // g. Graceful shutdown, with idle keep-alive connections open and one request in flight.
    // From addresses the load never used, so no per-IP bucket drained by the load refuses them.
    let mut idle = Vec::new();
    for ip in 200..203 {
        if let Ok(mut conn) = Conn::open(load_ip(ip), addr).await
            && conn.send("/live", false).await.is_ok()
            && conn.receive().await.is_ok_and(|r| r.status == 200)
        {
            idle.push(conn);
        }
    }
    let slow_before = upstream.symbol_count("SLOW");
    let slow = tokio::spawn(async move {
        let mut conn = Conn::open(load_ip(210), addr).await?;
        conn.send("/quote/SLOW", false).await?;
        conn.receive().await
    });
    let slow_seen = eventually(|| upstream.symbol_count("SLOW") > slow_before).await;
    let signalled = Instant::now();
    example.signal("-TERM");
    let ready_off = async {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match get(addr, "/ready").await {
                Ok(response) if response.status == 200 => {}
                Ok(response) if response.status == 503 => return Ok("503".to_owned()),
                Ok(response) => return Err(format!("/ready answered {}", response.status)),
                Err(error) => return Ok(format!("refused ({})", error.kind())),
            }
            if Instant::now() > deadline {
                return Err(format!("/ready still 200 {PATIENCE:?} after SIGTERM"));
            }
            sleep(Duration::from_millis(10)).await;
        }
    }
    .await;
    verdicts.push(("g1. readiness off after SIGTERM", ready_off.map(drop)));
    let slow = match timeout(PATIENCE, slow).await {
        Ok(Ok(Ok(response))) => judge(&response, "SLOW"),
        other => Err(format!("{other:?}")),
    };
    verdicts.push((
        "g2. the request in flight at SIGTERM completes with 200",
        if slow_seen {
            slow
        } else {
            Err(format!(
                "the upstream never saw /price/SLOW within {PATIENCE:?}; {slow:?}"
            ))
        },
    ));
    let idle_count = idle.len();
    let mut idle_closed = Ok(());
    for mut conn in idle {
        let left = (signalled + LIMITS.deadline()).saturating_duration_since(Instant::now());
        if let Err(error) = conn.closed_within(left).await {
            idle_closed = Err(error);
        }
    }
    verdicts.push((
        "g3. idle keep-alive connections closed by the server",
        if idle_count == 3 {
            idle_closed
        } else {
            Err(format!(
                "only {idle_count} of 3 idle connections got a 200 from /live"
            ))
        },
    ));
    let exit = example
        .wait_exit(LIMITS.deadline() + Duration::from_secs(5))
        .await;
    let took = signalled.elapsed();
    verdicts.push((
        "g4. SIGTERM: exit 0 within --deadline-ms + 1 s",
        check_shutdown(exit, took, LIMITS.deadline()),
    ));
    upstream.stop().await;

    let mut table = summary(
        &format!("chaos soak, seed {seed}"),
        &records,
        &report,
        Some(&samples),
        &settled,
    );
    let _ = writeln!(table, "timeline:");
    for (name, at) in &timeline {
        let _ = writeln!(table, "  {:>6.2} s  {name}", at.as_secs_f64());
    }
    let _ = writeln!(
        table,
        "  /stats idle {:.2} s after the load stopped; exit {:.2} s after SIGTERM ({exit:?})",
        idle_after.as_secs_f64(),
        took.as_secs_f64()
    );
    let _ = writeln!(table, "invariants:");
    for (name, verdict) in &verdicts {
        match verdict {
            Ok(()) => {
                let _ = writeln!(table, "  ok      {name}");
            }
            Err(error) => {
                let _ = writeln!(table, "  FAILED  {name}: {error}");
            }
        }
    }
    eprintln!("{table}");
    let failed: Vec<String> = verdicts
        .iter()
        .filter_map(|(name, verdict)| verdict.as_ref().err().map(|e| format!("{name}: {e}")))
        .collect();
    assert!(
        failed.is_empty(),
        "{} invariant(s) failed (seed {seed}):\n{}\n\nthe example's output (tail):\n{}",
        failed.len(),
        failed.join("\n"),
        example.output_tail(60)
    );
}

/// What a layer-removed run leaves behind.
#[derive(Debug)]
struct Run {
    records: Vec<Record>,
    upstream: UpstreamReport,
}

/// The example without `layer`, 3 s of `load` against an upstream following `fault`.
async fn layer_removed_run(layer: &str, fault: Fault, load_config: LoadConfig) -> Run {
    let seed = seed();
    let mut rng = XorShift::new(seed);
    let mut upstream = Upstream::start(rng.fork(), fault).await;
    let args = LIMITS.args(upstream.addr, &[layer]);
    let example = Example::start(&args);
    let addr = example.addr;
    let epoch = Instant::now();
    let load = Load::start(addr, load_config, &mut rng, epoch);
    sleep(Duration::from_secs(3)).await;
    let records = load.finish().await;
    let (settled, _) = wait_idle(addr).await;
    let report = upstream.report();
    upstream.stop().await;
    eprintln!(
        "{}",
        summary(
            &format!("--without {layer}, seed {seed}, {fault:?}"),
            &records,
            &report,
            None,
            &settled
        )
    );
    drop(example);
    Run {
        records,
        upstream: report,
    }
}

/// `/ready` and `/live` answer 200; a 500 is retried (two attempts, then the upstream's 200
/// and body), a 404 is not (one attempt, passed on as 404 `not_found`); a symbol that would
/// change the upstream's path or query is refused with 400 `invalid_symbol`, and nothing
/// reaches the upstream.
async fn check_basics(addr: SocketAddr, upstream: &Upstream) -> Result<(), String> {
    let mut errors = Vec::new();
    for path in ["/ready", "/live"] {
        match get(addr, path).await {
            Ok(response) if response.status == 200 => {}
            other => errors.push(format!("{path}: {other:?}")),
        }
    }
    match get(addr, "/quote/FLAKY").await {
        Ok(response) => {
            if let Err(error) = judge(&response, "FLAKY") {
                errors.push(format!("/quote/FLAKY (500, then 200): {error}"));
            } else if response.status != 200 {
                errors.push(format!(
                    "/quote/FLAKY (500, then 200) answered {}, not retried to a 200",
                    response.status
                ));
            }
        }
        Err(error) => errors.push(format!("/quote/FLAKY: {error}")),
    }
    let attempts = upstream.symbol_count("FLAKY");
    if attempts != 2 {
        errors.push(format!(
            "/price/FLAKY was attempted {attempts} times; a 500 then a 200 takes 2"
        ));
    }
    match get(addr, "/quote/MISSING").await {
        Ok(response) => match judge(&response, "MISSING") {
            Ok(()) if response.status != 404 => {
                errors.push(format!(
                    "/quote/MISSING (upstream 404) answered {}, not 404",
                    response.status
                ));
            }
            Ok(()) => {}
            Err(error) => errors.push(format!("/quote/MISSING (upstream 404): {error}")),
        },
        Err(error) => errors.push(format!("/quote/MISSING: {error}")),
    }
    let attempts = upstream.symbol_count("MISSING");
    if attempts != 1 {
        errors.push(format!(
            "/price/MISSING (404) was attempted {attempts} times; a 4xx is not retried"
        ));
    }
    let arrived = lock(&upstream.state.arrivals).len();
    for path in [
        "/quote/..%2F..%2Fadmin%2Fdelete",
        "/quote/X%3Fadmin%3Dtrue%26",
        "/quote/..",
        "/quote/ABCDEFGHIJKLMNOPQ",
    ] {
        match get(addr, path).await {
            Ok(response) => {
                if response.status != 400
                    || response.header("x-palisade-error") != Some("invalid_symbol")
                {
                    errors.push(format!(
                        "{path} answered {response:?}, not 400 invalid_symbol"
                    ));
                }
            }
            Err(error) => errors.push(format!("{path}: {error}")),
        }
    }
    let sent = lock(&upstream.state.arrivals).len() - arrived;
    if sent != 0 {
        errors.push(format!(
            "invalid symbols sent {sent} requests to the upstream, not 0"
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// The checkers
// ---------------------------------------------------------------------------------------------

/// a. Every request written got a complete answer within [`REQUEST_TIMEOUT`], and each answer
/// is a 200 with the upstream's body or carries a known `x-palisade-error` with its status.
fn check_answers(records: &[Record]) -> Result<(), String> {
    let written = records.iter().filter(|r| r.written).count();
    let answered = records.iter().filter(|r| r.status.is_some()).count();
    let problems: Vec<&Record> = records.iter().filter(|r| r.problem.is_some()).collect();
    if records.is_empty() {
        return Err("no request was made".to_owned());
    }
    if problems.is_empty() && written == answered && written == records.len() {
        return Ok(());
    }
    let mut message = format!(
        "{} requests, {written} sent, {answered} answered, {} with a problem",
        records.len(),
        problems.len()
    );
    for record in problems.iter().take(8) {
        let _ = write!(
            message,
            "\n    ip 127.0.0.{} after {:?}: {}",
            record.ip + 2,
            record.done - record.sent,
            record.problem.as_deref().unwrap_or_default()
        );
    }
    Err(message)
}

/// b. The upstream never had more requests in progress than `concurrency`; with `stats`, the
/// example's own `max_in_flight` agrees.
fn check_bulkhead(
    upstream_max: usize,
    stats: Option<&Stats>,
    concurrency: usize,
) -> Result<(), String> {
    let mut errors = Vec::new();
    if upstream_max > concurrency {
        errors.push(format!(
            "the upstream saw {upstream_max} requests in progress at once, more than \
             --concurrency {concurrency}"
        ));
    }
    if let Some(stats) = stats {
        match stats.get("max_in_flight") {
            Some(&max) if max as usize > concurrency => errors.push(format!(
                "/stats max_in_flight {max} exceeds --concurrency {concurrency}"
            )),
            Some(_) => {}
            None => errors.push("/stats has no max_in_flight".to_owned()),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// The most entries of `times` (sorted) in any closed window of length `window`, and where
/// that window starts.
fn max_in_window(times: &[Instant], window: Duration) -> (usize, Option<Instant>) {
    let mut best = (0, None);
    let mut end = 0;
    for (start, &from) in times.iter().enumerate() {
        end = end.max(start);
        while end < times.len() && times[end] - from <= window {
            end += 1;
        }
        if end - start > best.0 {
            best = (end - start, Some(from));
        }
    }
    best
}

/// What a GCRA limit of `rate`/s with burst `rate` admits in a window, plus [`SLACK`].
fn gcra_bound(rate: u32, window: Duration) -> f64 {
    f64::from(rate) + f64::from(rate) * (window + SLACK).as_secs_f64()
}

/// c. No window of the upstream's arrival log holds more attempts than the attempt limit
/// (`rate`/s, burst `rate`) admits.
fn check_attempt_rate(arrivals: &[Instant], rate: u32) -> Result<(), String> {
    let violations: Vec<String> = WINDOWS_MS
        .iter()
        .filter_map(|&ms| {
            let window = Duration::from_millis(ms);
            let (count, _) = max_in_window(arrivals, window);
            let bound = gcra_bound(rate, window);
            (count as f64 > bound).then(|| {
                format!("{count} attempts within {ms} ms, bound {bound:.1} (rate {rate}/s, burst {rate})")
            })
        })
        .collect();
    if arrivals.is_empty() {
        Err("the upstream saw no attempt at all".to_owned())
    } else if violations.is_empty() {
        Ok(())
    } else {
        Err(violations.join("; "))
    }
}

/// d. Once idle, no bulkhead permit and no pooled connection is still held; the pool never had
/// more than `pool_size` connections open, by its own count (sampled during the load and at
/// the end) and by the upstream's.
fn check_no_leaks(
    settled: &Result<Stats, String>,
    samples: &Samples,
    upstream_max_open: usize,
    pool_size: usize,
) -> Result<(), String> {
    let mut errors = Vec::new();
    match settled {
        Ok(stats) => {
            for key in ["in_flight", "pool_in_use"] {
                match stats.get(key) {
                    Some(0) => {}
                    Some(n) => errors.push(format!("/stats {key} is {n} once idle, not 0")),
                    None => errors.push(format!("/stats has no {key}")),
                }
            }
            match stats.get("pool_open") {
                Some(&open) if open as usize > pool_size => errors.push(format!(
                    "/stats pool_open {open} once idle exceeds --pool-size {pool_size}"
                )),
                Some(_) => {}
                None => errors.push("/stats has no pool_open".to_owned()),
            }
        }
        Err(error) => errors.push(format!("/stats: {error}")),
    }
    if let Some(&open) = samples.max.get("pool_open")
        && open as usize > pool_size
    {
        errors.push(format!(
            "/stats pool_open reached {open} during the load, above --pool-size {pool_size}"
        ));
    }
    if samples.taken == 0 {
        errors.push(format!(
            "no /stats sample during the load ({} failed: {:?})",
            samples.failed, samples.last_error
        ));
    }
    if upstream_max_open > pool_size {
        errors.push(format!(
            "the upstream saw {upstream_max_open} connections open at once, above --pool-size \
             {pool_size}"
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// The most requests of one IP admitted (answered, but not 429) in any window of `window`:
/// counted are requests both sent and answered inside the window, so the limiter admitted them
/// inside it, whatever the network delay.
fn max_admitted_in_window(admitted: &[(Instant, Instant)], window: Duration) -> usize {
    (0..admitted.len())
        .map(|start| {
            let end = admitted[start].0 + window;
            admitted[start..]
                .iter()
                .take_while(|(sent, _)| *sent <= end)
                .filter(|(_, done)| *done <= end)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// The admitted requests of each IP: `(sent, done)`, sorted by `sent`.
fn admitted_per_ip(records: &[Record]) -> BTreeMap<usize, Vec<(Instant, Instant)>> {
    let mut per_ip: BTreeMap<usize, Vec<(Instant, Instant)>> = BTreeMap::new();
    for record in records {
        if record.status.is_some() && record.kind.as_deref() != Some("rate_limited") {
            per_ip
                .entry(record.ip)
                .or_default()
                .push((record.sent, record.done));
        }
    }
    for admitted in per_ip.values_mut() {
        admitted.sort();
    }
    per_ip
}

/// e. No client IP was admitted more than its quota (`rate`/s, burst `rate`) in any window.
fn check_per_ip(records: &[Record], rate: u32) -> Result<(), String> {
    let mut violations = Vec::new();
    for (ip, admitted) in admitted_per_ip(records) {
        for ms in WINDOWS_MS {
            let window = Duration::from_millis(ms);
            let count = max_admitted_in_window(&admitted, window);
            let bound = gcra_bound(rate, window);
            if count as f64 > bound {
                violations.push(format!(
                    "127.0.0.{}: {count} admitted within {ms} ms, bound {bound:.1}",
                    ip + 2
                ));
            }
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations.join("; "))
    }
}

/// f. 200s came back after the upstream's restart, and were still coming in the load's last
/// second.
fn check_recovered(records: &[Record], restarted: Instant, stopped: Instant) -> Result<(), String> {
    let oks = || records.iter().filter(|r| r.status == Some(200));
    let after = oks().filter(|r| r.sent >= restarted).count();
    let last_second = oks()
        .filter(|r| r.sent + Duration::from_secs(1) >= stopped)
        .count();
    let first = oks()
        .filter(|r| r.sent >= restarted)
        .map(|r| r.done - restarted)
        .min();
    if after == 0 {
        Err(format!(
            "no 200 in the {:?} after the upstream restarted",
            stopped - restarted
        ))
    } else if last_second == 0 {
        Err(format!(
            "{after} 200s after the restart (first after {first:?}), but none in the last second"
        ))
    } else {
        Ok(())
    }
}

/// Not an invariant but what makes the others mean something: the soak drove every limit it
/// checks to its edge (a soak that never reaches a limit passes whatever the limit does).
fn check_coverage(
    records: &[Record],
    upstream: &UpstreamReport,
    settled: &Result<Stats, String>,
    concurrency: usize,
) -> Result<(), String> {
    let mut missing = Vec::new();
    if !records.iter().any(|r| r.status == Some(200)) {
        missing.push("no 200".to_owned());
    }
    for kind in ["rate_limited", "overloaded", "upstream_quota"] {
        if !records.iter().any(|r| r.kind.as_deref() == Some(kind)) {
            missing.push(format!("no {kind} answer"));
        }
    }
    if upstream.max_in_progress < concurrency {
        missing.push(format!(
            "the upstream never had --concurrency {concurrency} requests at once (max {})",
            upstream.max_in_progress
        ));
    }
    if upstream.statuses.get(&500).is_none_or(|&n| n == 0) {
        missing.push("the upstream never answered 500".to_owned());
    }
    if settled
        .as_ref()
        .is_ok_and(|stats| stats.get("retries").is_none_or(|&n| n == 0))
    {
        missing.push("/stats counts no retry".to_owned());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the load or the script no longer stresses the example: {}",
            missing.join("; ")
        ))
    }
}

/// g. The process exited 0 within `deadline` + 1 s of SIGTERM.
fn check_shutdown(
    exit: Option<ExitStatus>,
    took: Duration,
    deadline: Duration,
) -> Result<(), String> {
    match exit {
        None => Err(format!("still running {took:?} after SIGTERM")),
        Some(status) if status.code() != Some(0) => Err(format!(
            "exited with {status} {took:?} after SIGTERM; a clean shutdown exits 0"
        )),
        Some(_) if took > deadline + Duration::from_secs(1) => Err(format!(
            "exited {took:?} after SIGTERM, past --deadline-ms {deadline:?} + 1 s"
        )),
        Some(_) => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// The summary
// ---------------------------------------------------------------------------------------------

fn summary(
    title: &str,
    records: &[Record],
    upstream: &UpstreamReport,
    samples: Option<&Samples>,
    settled: &Result<Stats, String>,
) -> String {
    let mut out = format!("\n=== {title} ===\n");
    let mut kinds: BTreeMap<String, (usize, Duration)> = BTreeMap::new();
    for record in records {
        let key = match (&record.problem, record.status) {
            (Some(_), _) => "PROBLEM (lost or invalid)".to_owned(),
            (None, Some(200)) => "200".to_owned(),
            (None, Some(status)) => format!("{status} {}", record.kind.as_deref().unwrap_or("?")),
            (None, None) => "?".to_owned(),
        };
        let entry = kinds.entry(key).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(record.done - record.sent);
    }
    let written = records.iter().filter(|r| r.written).count();
    let answered = records.iter().filter(|r| r.status.is_some()).count();
    let _ = writeln!(
        out,
        "requests {} (sent {written}, answered {answered}) from {} IPs",
        records.len(),
        records.iter().map(|r| r.ip).max().map_or(0, |ip| ip + 1)
    );
    let _ = writeln!(
        out,
        "  {:<28} {:>7} {:>12}",
        "answer", "count", "max latency"
    );
    for (key, (count, latency)) in &kinds {
        let _ = writeln!(
            out,
            "  {key:<28} {count:>7} {:>9.0} ms",
            latency.as_secs_f64() * 1e3
        );
    }
    let _ = writeln!(
        out,
        "upstream: {} attempts {:?}, {} abandoned by the client mid-delay; max in progress {} \
         (--concurrency {}); max open connections {} (--pool-size {}), {} accepted",
        upstream.arrivals.len(),
        upstream.statuses,
        upstream.abandoned,
        upstream.max_in_progress,
        LIMITS.concurrency,
        upstream.max_open,
        LIMITS.pool_size,
        upstream.accepted
    );
    let _ = write!(
        out,
        "upstream attempts, max per window:\n{}",
        window_table(&upstream.arrivals, LIMITS.upstream_rps)
    );
    let per_ip = admitted_per_ip(records);
    let _ = writeln!(
        out,
        "admitted per IP, max per window (bound = {}/s, burst {}, + {SLACK:?}):",
        LIMITS.rate_per_ip, LIMITS.rate_per_ip
    );
    for ms in WINDOWS_MS {
        let window = Duration::from_millis(ms);
        let worst = per_ip
            .values()
            .map(|admitted| max_admitted_in_window(admitted, window))
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "  {ms:>5} ms  {worst:>5}  (bound {:.1})",
            gcra_bound(LIMITS.rate_per_ip, window)
        );
    }
    if let Some(samples) = samples {
        let _ = writeln!(
            out,
            "/stats during the load: {} samples ({} failed), maxima {:?}",
            samples.taken, samples.failed, samples.max
        );
    }
    let _ = writeln!(out, "/stats once idle: {settled:?}");
    out
}

fn window_table(arrivals: &[Instant], rate: u32) -> String {
    let mut out = String::new();
    for ms in WINDOWS_MS {
        let window = Duration::from_millis(ms);
        let (count, from) = max_in_window(arrivals, window);
        let bound = gcra_bound(rate, window);
        let at = match (from, arrivals.first()) {
            (Some(from), Some(&first)) => (from - first).as_secs_f64(),
            _ => 0.0,
        };
        let _ = writeln!(
            out,
            "  {ms:>5} ms  {count:>5}  (bound {bound:.1}, {:.0}/s) from {at:.3} s",
            count as f64 / window.as_secs_f64()
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The fault-injecting upstream
// ---------------------------------------------------------------------------------------------

/// What the upstream does with a `/price/{symbol}` request for an ordinary symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Normal,
    /// `percent` % of requests answer 500.
    Errors {
        percent: u64,
    },
    /// `percent` % of requests take `min_ms..=max_ms`, the rest answer at once.
    Spikes {
        percent: u64,
        min_ms: u64,
        max_ms: u64,
    },
    /// Every request takes `min_ms..=max_ms`.
    Slow {
        min_ms: u64,
        max_ms: u64,
    },
}

#[derive(Debug)]
struct Script {
    fault: Fault,
    rng: XorShift,
}

/// The upstream's state, shared by its tasks; survives outages.
#[derive(Debug)]
struct UpstreamState {
    script: Mutex<Script>,
    /// When each request's head was read, in order.
    arrivals: Mutex<Vec<Instant>>,
    per_symbol: Mutex<HashMap<String, usize>>,
    statuses: Mutex<BTreeMap<u16, usize>>,
    in_progress: AtomicUsize,
    max_in_progress: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
    accepted: AtomicUsize,
    abandoned: AtomicUsize,
    /// The live connections' tasks, cut (aborted) by an outage.
    connections: Mutex<Vec<JoinHandle<()>>>,
}

/// What the upstream saw, for the checkers.
#[derive(Debug)]
struct UpstreamReport {
    arrivals: Vec<Instant>,
    statuses: BTreeMap<u16, usize>,
    max_in_progress: usize,
    max_open: usize,
    accepted: usize,
    abandoned: usize,
}

#[derive(Debug)]
struct Upstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
    accept: Option<JoinHandle<()>>,
}

impl Upstream {
    async fn start(rng: XorShift, fault: Fault) -> Upstream {
        let listener =
            listen(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind the upstream on 127.0.0.1");
        let addr = listener.local_addr().expect("the upstream's address");
        let state = Arc::new(UpstreamState {
            script: Mutex::new(Script { fault, rng }),
            arrivals: Mutex::new(Vec::new()),
            per_symbol: Mutex::new(HashMap::new()),
            statuses: Mutex::new(BTreeMap::new()),
            in_progress: AtomicUsize::new(0),
            max_in_progress: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            max_open: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            abandoned: AtomicUsize::new(0),
            connections: Mutex::new(Vec::new()),
        });
        let accept = Some(tokio::spawn(accept_loop(state.clone(), listener)));
        Upstream {
            addr,
            state,
            accept,
        }
    }

    fn set_fault(&self, fault: Fault) {
        lock(&self.state.script).fault = fault;
    }

    /// An outage: the listener is closed (connects are refused) and every live connection cut.
    async fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        let connections = std::mem::take(&mut *lock(&self.state.connections));
        for connection in &connections {
            connection.abort();
        }
        for connection in connections {
            let _ = connection.await;
        }
    }

    /// Listens again on the same port.
    async fn restart(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        let listener = loop {
            match listen(self.addr) {
                Ok(listener) => break listener,
                Err(error) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {error}; retrying", self.addr);
                    sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("could not listen on {} again: {error}", self.addr),
            }
        };
        self.accept = Some(tokio::spawn(accept_loop(self.state.clone(), listener)));
    }

    fn symbol_count(&self, symbol: &str) -> usize {
        lock(&self.state.per_symbol)
            .get(symbol)
            .copied()
            .unwrap_or(0)
    }

    fn report(&self) -> UpstreamReport {
        let mut arrivals = lock(&self.state.arrivals).clone();
        arrivals.sort();
        UpstreamReport {
            arrivals,
            statuses: lock(&self.state.statuses).clone(),
            max_in_progress: self.state.max_in_progress.load(SeqCst),
            max_open: self.state.max_open.load(SeqCst),
            accepted: self.state.accepted.load(SeqCst),
            abandoned: self.state.abandoned.load(SeqCst),
        }
    }
}

impl UpstreamState {
    /// The status and delay for a request of `path`, by the script.
    fn decide(&self, path: &str) -> (u16, Duration, String) {
        let Some(symbol) = path.strip_prefix("/price/") else {
            return (404, Duration::ZERO, "no such route\n".to_owned());
        };
        let seen = {
            let mut per_symbol = lock(&self.per_symbol);
            let count = per_symbol.entry(symbol.to_owned()).or_default();
            *count += 1;
            *count
        };
        let ok = |delay_ms: u64| (200, Duration::from_millis(delay_ms), quote_body(symbol));
        let failed = || (500, Duration::ZERO, "injected fault\n".to_owned());
        match symbol {
            "MISSING" => (404, Duration::ZERO, "no such symbol\n".to_owned()),
            "FLAKY" if seen % 2 == 1 => failed(),
            "FLAKY" => ok(0),
            "SLOW" => ok(SLOW_MS),
            _ => {
                let mut script = lock(&self.script);
                let fault = script.fault;
                let rng = &mut script.rng;
                match fault {
                    Fault::Normal => ok(0),
                    Fault::Errors { percent } if rng.percent(percent) => failed(),
                    Fault::Errors { .. } => ok(0),
                    Fault::Spikes {
                        percent,
                        min_ms,
                        max_ms,
                    } if rng.percent(percent) => ok(rng.between(min_ms, max_ms)),
                    Fault::Spikes { .. } => ok(0),
                    Fault::Slow { min_ms, max_ms } => ok(rng.between(min_ms, max_ms)),
                }
            }
        }
    }
}

/// Counts something in progress (a request, an open connection) while alive, keeping its
/// maximum; dropped with its task, so an aborted connection counts down too.
#[derive(Debug)]
struct Gauge {
    state: Arc<UpstreamState>,
    connection: bool,
}

impl Gauge {
    fn enter(state: &Arc<UpstreamState>, connection: bool) -> Gauge {
        let gauge = Gauge {
            state: state.clone(),
            connection,
        };
        let (now, max) = gauge.counters();
        max.fetch_max(now.fetch_add(1, SeqCst) + 1, SeqCst);
        gauge
    }

    fn counters(&self) -> (&AtomicUsize, &AtomicUsize) {
        if self.connection {
            (&self.state.open, &self.state.max_open)
        } else {
            (&self.state.in_progress, &self.state.max_in_progress)
        }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.counters().0.fetch_sub(1, SeqCst);
    }
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // Rebinding the port after an outage, with the cut connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(state: Arc<UpstreamState>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                state.accepted.fetch_add(1, SeqCst);
                // Counted from the accept, so a connection is open until its task ends.
                let open = Gauge::enter(&state, true);
                let task = tokio::spawn(serve_connection(state.clone(), stream, open));
                let mut connections = lock(&state.connections);
                connections.retain(|task| !task.is_finished());
                connections.push(task);
            }
            // Out of file descriptors, or a connection reset while queued: keep accepting.
            Err(_) => sleep(Duration::from_millis(5)).await,
        }
    }
}

/// HTTP/1.1 keep-alive: reads a request head, answers by the script with a Content-Length,
/// and goes on until the client closes (or asks to).
async fn serve_connection(state: Arc<UpstreamState>, mut stream: TcpStream, _open: Gauge) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let head_len = loop {
            if let Some(at) = find(&buf, b"\r\n\r\n") {
                break at + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > 64 * 1024 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        buf.drain(..head_len);
        let in_progress = Gauge::enter(&state, false);
        lock(&state.arrivals).push(Instant::now());
        let mut lines = head.lines();
        let path = lines
            .next()
            .and_then(|line| line.split_whitespace().nth(1))
            .unwrap_or("/")
            .to_owned();
        let mut close = false;
        let mut body_len = 0;
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                    close = true;
                } else if name.eq_ignore_ascii_case("content-length") {
                    body_len = value.parse().unwrap_or(0);
                }
            }
        }
        while buf.len() < body_len {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..body_len);
        let (status, delay, body) = state.decide(&path);
        if !delay.is_zero() {
            // Wait, but notice a client that gives up (closes) meanwhile: its request is no
            // longer in progress for anyone.
            let wait = sleep(delay);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    read = stream.read(&mut chunk) => match read {
                        Ok(0) | Err(_) => {
                            state.abandoned.fetch_add(1, SeqCst);
                            return;
                        }
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    },
                }
            }
        }
        *lock(&state.statuses).entry(status).or_default() += 1;
        // Done before the answer leaves, so no client can see it and send its next request
        // while this one still counts.
        drop(in_progress);
        let reason = match status {
            200 => "OK",
            404 => "Not Found",
            _ => "Internal Server Error",
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// The upstream's answer for `symbol`: a made-up price, the same every time.
fn quote_body(symbol: &str) -> String {
    let hash = symbol
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{symbol} {}.{:02}\n", 10 + hash % 990, (hash >> 20) % 100)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

// ---------------------------------------------------------------------------------------------
// The load
// ---------------------------------------------------------------------------------------------

/// One request of the load, as its client saw it.
#[derive(Debug, Clone)]
struct Record {
    /// The client IP, 127.0.0.(ip + 2).
    ip: usize,
    sent: Instant,
    done: Instant,
    /// The whole request was written.
    written: bool,
    status: Option<u16>,
    kind: Option<String>,
    /// Why this request breaks invariant a, if it does.
    problem: Option<String>,
}

#[derive(Debug)]
struct LoadState {
    stop: AtomicBool,
    records: Mutex<Vec<Record>>,
    epoch: Instant,
    /// When the most recent 200 was sent, in µs since `epoch` (0: none yet).
    last_ok_sent_us: AtomicU64,
}

#[derive(Debug)]
struct Load {
    state: Arc<LoadState>,
    clients: Vec<JoinHandle<()>>,
}

fn load_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        0,
        0,
        2 + u8::try_from(index).expect("fewer than 250 client IPs"),
    )
}

impl Load {
    fn start(target: SocketAddr, config: LoadConfig, rng: &mut XorShift, epoch: Instant) -> Load {
        let state = Arc::new(LoadState {
            stop: AtomicBool::new(false),
            records: Mutex::new(Vec::new()),
            epoch,
            last_ok_sent_us: AtomicU64::new(0),
        });
        let period =
            Duration::from_secs_f64(config.conns_per_ip as f64 / f64::from(config.per_ip_rps));
        let mut clients = Vec::new();
        for ip in 0..config.ips {
            for _ in 0..config.conns_per_ip {
                let mut rng = rng.fork();
                // Staggered over the first period, so an IP's connections do not tick together.
                let first = epoch + period.mul_f64(rng.below(1000) as f64 / 1000.0);
                clients.push(tokio::spawn(client(
                    state.clone(),
                    target,
                    ip,
                    period,
                    first,
                    rng,
                )));
            }
        }
        Load { state, clients }
    }

    /// Whether a request sent at or after `since` was answered 200.
    fn ok_sent_since(&self, since: Instant) -> bool {
        let us = self.state.last_ok_sent_us.load(SeqCst);
        us > 0 && self.state.epoch + Duration::from_micros(us) >= since
    }

    /// Stops the load; every client finishes the request it is in (bounded by
    /// [`REQUEST_TIMEOUT`]).
    async fn finish(self) -> Vec<Record> {
        self.state.stop.store(true, SeqCst);
        for client in self.clients {
            client.await.expect("a load client panicked");
        }
        std::mem::take(&mut *lock(&self.state.records))
    }
}

/// One keep-alive connection's worth of load: a request every `period` (or as soon as the
/// previous answer came, when it was slower), reconnecting when the server closes.
async fn client(
    state: Arc<LoadState>,
    target: SocketAddr,
    ip: usize,
    period: Duration,
    first: Instant,
    mut rng: XorShift,
) {
    let mut conn: Option<Conn> = None;
    let mut next = first;
    loop {
        tokio::time::sleep_until(next.into()).await;
        if state.stop.load(SeqCst) {
            return;
        }
        next = (next + period).max(Instant::now());
        let symbol = SYMBOLS[rng.below(SYMBOLS.len() as u64) as usize];
        let path = format!("/quote/{symbol}");
        let sent = Instant::now();
        let mut written = false;
        let result = timeout(
            REQUEST_TIMEOUT,
            exchange(&mut conn, load_ip(ip), target, &path, &mut written),
        )
        .await;
        let done = Instant::now();
        let mut record = Record {
            ip,
            sent,
            done,
            written,
            status: None,
            kind: None,
            problem: None,
        };
        match result {
            Ok(Ok(response)) => {
                record.status = Some(response.status);
                record.kind = response.header("x-palisade-error").map(str::to_owned);
                record.problem = judge(&response, symbol).err();
                if response.close {
                    conn = None;
                }
                if response.status == 200 {
                    let us = u64::try_from((sent - state.epoch).as_micros()).unwrap_or(u64::MAX);
                    state.last_ok_sent_us.fetch_max(us.max(1), SeqCst);
                }
            }
            Ok(Err(error)) => {
                conn = None;
                record.problem = Some(error);
            }
            Err(_) => {
                conn = None;
                record.problem = Some(format!("no complete answer within {REQUEST_TIMEOUT:?}"));
            }
        }
        lock(&state.records).push(record);
    }
}

/// One request on the client's connection (opened first if there is none).
async fn exchange(
    conn: &mut Option<Conn>,
    local: Ipv4Addr,
    target: SocketAddr,
    path: &str,
    written: &mut bool,
) -> Result<Response, String> {
    let open = match conn {
        Some(open) => open,
        None => conn.insert(
            Conn::open(local, target)
                .await
                .map_err(|error| format!("connect from {local}: {error}"))?,
        ),
    };
    let reused = open.requests > 0;
    open.send(path, false)
        .await
        .map_err(|error| format!("write (reused connection: {reused}): {error}"))?;
    *written = true;
    open.receive()
        .await
        .map_err(|error| format!("read (reused connection: {reused}): {error}"))
}

/// Whether `response` is one the contract allows for a quote of `symbol`.
fn judge(response: &Response, symbol: &str) -> Result<(), String> {
    if response.status == 200 {
        let expected = quote_body(symbol);
        return if response.body == expected {
            Ok(())
        } else {
            Err(format!(
                "200 with body {:?}, not the upstream's {expected:?}",
                response.body
            ))
        };
    }
    let Some(kind) = response.header("x-palisade-error") else {
        return Err(format!(
            "{} without x-palisade-error (body {:?})",
            response.status, response.body
        ));
    };
    let Some(&(_, status)) = KINDS.iter().find(|(known, _)| *known == kind) else {
        return Err(format!(
            "{} with unknown x-palisade-error {kind:?}",
            response.status
        ));
    };
    if status != response.status {
        return Err(format!(
            "x-palisade-error {kind} comes with {status}, not {}",
            response.status
        ));
    }
    if matches!(kind, "rate_limited" | "breaker_open")
        && response
            .header("retry-after")
            .is_none_or(|value| value.trim().parse::<u64>().is_err())
    {
        return Err(format!(
            "{kind} without a retry-after in seconds: {:?}",
            response.header("retry-after")
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client over raw TCP
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// The server closes the connection after this response.
    close: bool,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    requests: usize,
}

impl Conn {
    /// A connection from `local` (port chosen by the kernel) to `to`.
    async fn open(local: Ipv4Addr, to: SocketAddr) -> io::Result<Conn> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(local.into(), 0))?;
        let stream = socket.connect(to).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            requests: 0,
        })
    }

    async fn send(&mut self, path: &str, close: bool) -> io::Result<()> {
        self.requests += 1;
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: palisade-soak\r\n{}\r\n",
            if close { "connection: close\r\n" } else { "" }
        );
        self.stream.write_all(request.as_bytes()).await
    }

    /// Reads more into the buffer; end of stream is an error naming `what`.
    async fn read_more(&mut self, what: &str) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed {what}"),
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// The index just past the first `pattern` in the buffer, reading as needed.
    async fn read_until(&mut self, pattern: &[u8], what: &str) -> io::Result<usize> {
        loop {
            if let Some(at) = find(&self.buf, pattern) {
                return Ok(at + pattern.len());
            }
            if self.buf.len() > 1 << 20 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
            }
            self.read_more(what).await?;
        }
    }

    /// Takes `n` bytes off the buffer, reading as needed.
    async fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.read_more("mid-body").await?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// One response: status line, headers, and a body by Content-Length, chunked, or to EOF.
    async fn receive(&mut self) -> io::Result<Response> {
        let what = if self.buf.is_empty() {
            "before any response byte"
        } else {
            "mid-head"
        };
        let head_len = self.read_until(b"\r\n\r\n", what).await?;
        let head = String::from_utf8_lossy(&self.buf[..head_len]).into_owned();
        self.buf.drain(..head_len);
        let invalid = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what} in head {head:?}"),
            )
        };
        let mut lines = head.lines();
        let status_line = lines.next().unwrap_or_default();
        let http10 = status_line.starts_with("HTTP/1.0 ");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| invalid("no status"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        let find_header = |name: &str| {
            headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        let close = http10
            || find_header("connection").is_some_and(|value| value.eq_ignore_ascii_case("close"));
        let body = if find_header("transfer-encoding")
            .is_some_and(|value| value.to_ascii_lowercase().contains("chunked"))
        {
            let mut body = Vec::new();
            loop {
                let line_end = self.read_until(b"\r\n", "mid-chunk").await?;
                let line = String::from_utf8_lossy(&self.buf[..line_end - 2]).into_owned();
                self.buf.drain(..line_end);
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| invalid("bad chunk size"))?;
                if size == 0 {
                    // Trailers, up to an empty line.
                    loop {
                        let end = self.read_until(b"\r\n", "in trailers").await?;
                        self.buf.drain(..end);
                        if end == 2 {
                            break;
                        }
                    }
                    break body;
                }
                let mut chunk = self.take(size + 2).await?;
                chunk.truncate(size);
                body.extend_from_slice(&chunk);
            }
        } else if let Some(length) = find_header("content-length") {
            let length = length.parse().map_err(|_| invalid("bad content-length"))?;
            self.take(length).await?
        } else if status == 204 || status == 304 || status < 200 {
            Vec::new()
        } else {
            // Delimited by the end of the connection.
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await? {
                    0 => break std::mem::take(&mut self.buf),
                    n => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            close,
        })
    }

    /// Waits up to `limit` for the server to close this idle connection.
    async fn closed_within(&mut self, limit: Duration) -> Result<(), String> {
        let mut chunk = [0u8; 256];
        match timeout(limit, self.stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => Ok(()),
            Ok(Ok(n)) => Err(format!(
                "an idle connection got {n} unasked bytes: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            )),
            Err(_) => Err(format!(
                "an idle keep-alive connection still open after {limit:?}"
            )),
        }
    }
}

/// `GET path` from [`CONTROL_IP`] on a fresh connection (`Connection: close`).
async fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    let exchange = async {
        let mut conn = Conn::open(CONTROL_IP, addr).await?;
        conn.send(path, true).await?;
        conn.receive().await
    };
    timeout(PATIENCE, exchange).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("GET {path}: no answer within {PATIENCE:?}"),
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// /stats
// ---------------------------------------------------------------------------------------------

/// `/stats` as `key value` pairs.
type Stats = BTreeMap<String, u64>;

async fn fetch_stats(addr: SocketAddr) -> Result<Stats, String> {
    let response = get(addr, "/stats").await.map_err(|e| e.to_string())?;
    if response.status != 200 {
        return Err(format!("/stats answered {}", response.status));
    }
    Ok(response
        .body
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(char::is_whitespace)?;
            Some((key.to_owned(), value.trim().parse().ok()?))
        })
        .collect())
}

/// Polls `/stats` until nothing is in flight and no pooled connection is checked out (at most
/// [`PATIENCE`]); the last `/stats` seen, and how long it took.
async fn wait_idle(addr: SocketAddr) -> (Result<Stats, String>, Duration) {
    let started = Instant::now();
    loop {
        let stats = fetch_stats(addr).await;
        let idle = stats.as_ref().is_ok_and(|stats| {
            stats.get("in_flight") == Some(&0) && stats.get("pool_in_use") == Some(&0)
        });
        if idle || started.elapsed() > PATIENCE {
            return (stats, started.elapsed());
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// `/stats` every 100 ms while the load runs, keeping each key's maximum.
#[derive(Debug, Default)]
struct Samples {
    taken: usize,
    failed: usize,
    max: Stats,
    last_error: Option<String>,
}

#[derive(Debug)]
struct Sampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Samples>,
}

impl Sampler {
    fn start(addr: SocketAddr) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Samples::default();
            while !stopped.load(SeqCst) {
                match fetch_stats(addr).await {
                    Ok(stats) => {
                        samples.taken += 1;
                        for (key, value) in stats {
                            let max = samples.max.entry(key).or_default();
                            *max = (*max).max(value);
                        }
                    }
                    Err(error) => {
                        samples.failed += 1;
                        samples.last_error = Some(error);
                    }
                }
                sleep(Duration::from_millis(100)).await;
            }
            samples
        });
        Sampler { stop, task }
    }

    async fn finish(self) -> Samples {
        self.stop.store(true, SeqCst);
        self.task.await.expect("the /stats sampler panicked")
    }
}

// ---------------------------------------------------------------------------------------------
// The example process
// ---------------------------------------------------------------------------------------------

/// The example binary, running; killed when dropped, so a failing test leaves nothing behind.
#[derive(Debug)]
struct Example {
    child: Child,
    addr: SocketAddr,
    /// The child's stdout, one line at a time, from a reader thread.
    lines: Receiver<String>,
    seen: Vec<String>,
    /// The child's stderr (its last lines).
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Example {
    /// Starts the example with `args` and waits until it prints where it listens.
    fn start(args: &[String]) -> Example {
        let mut child = Command::new(example_binary())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the axum_service example");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Keep reading after the test hung up, so the child never blocks on a full pipe.
                let _ = sender.send(line);
            }
        });
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let kept = stderr_lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut kept = lock(&kept);
                if kept.len() >= 2000 {
                    kept.drain(..1000);
                }
                kept.push(line);
            }
        });
        let mut example = Example {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
            seen: Vec::new(),
            stderr: stderr_lines,
        };
        let line = example.wait_for_line("listening on ");
        example.addr = line
            .trim_start_matches("listening on ")
            .split_whitespace()
            .next()
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        example
    }

    /// The first line starting with `prefix`, seen already or printed within [`PATIENCE`]
    /// (blocks the calling thread: only for start-up, before any load).
    fn wait_for_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.seen.iter().find(|line| line.starts_with(prefix)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line {prefix:?} within {PATIENCE:?}:\n{}",
                        self.output_tail(60)
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.try_wait();
                    panic!(
                        "stdout closed before {prefix:?} ({status:?}):\n{}",
                        self.output_tail(60)
                    )
                }
            }
        }
    }

    /// Sends a signal (`-TERM`) with `kill(1)`.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed: {status}");
    }

    /// Waits up to `limit` for the process to exit, polling every 5 ms.
    async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            sleep(Duration::from_millis(5)).await;
        }
    }

    /// The last `n` lines of stdout and of stderr.
    fn output_tail(&mut self, n: usize) -> String {
        self.seen.extend(self.lines.try_iter());
        let stderr = lock(&self.stderr);
        let tail = |lines: &[String]| lines[lines.len().saturating_sub(n)..].join("\n");
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            tail(&self.seen),
            tail(&stderr)
        )
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example's binary, built first if missing or out of date (see `support`).
fn example_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        support::example_binary(
            "axum_service",
            "ratelimit,bulkhead,retry,breaker,pool,shutdown",
            &[
                "core",
                "ratelimit",
                "bulkhead",
                "retry",
                "breaker",
                "pool",
                "shutdown",
            ],
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Small things
// ---------------------------------------------------------------------------------------------

/// xorshift64, seeded through splitmix64 (so any seed, 0 included, gives a good stream).
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        XorShift((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// An independent stream, for a task of its own.
    fn fork(&mut self) -> XorShift {
        XorShift::new(self.next_u64())
    }
}

/// `PALISADE_SOAK_SEED` if set, else one from the clock (printed, to replay a failure).
fn seed() -> u64 {
    match std::env::var("PALISADE_SOAK_SEED") {
        Ok(seed) => seed
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PALISADE_SOAK_SEED={seed:?} is not a u64")),
        Err(_) => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64),
    }
}

/// Polls `check` every 5 ms until it holds, for at most [`PATIENCE`].
async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        if Instant::now() > deadline {
            return false;
        }
        sleep(Duration::from_millis(5)).await;
    }
    true
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One test at a time: they measure rates and concurrency on a shared machine.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    lock(&SERIAL)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}
