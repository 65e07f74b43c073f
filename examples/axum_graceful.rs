//! A real axum server shut down gracefully by SIGTERM, with palisade's shutdown coordinator.
//!
//! What happens, in the order a Kubernetes pod goes through it (each step prints a
//! `phase: <name>` line when it begins):
//!
//! 1. SIGTERM (or Ctrl-C) triggers the shutdown (`phase: not_ready`). `/ready` answers 503 at
//!    once, so the load balancer stops routing here, but everything keeps serving for the
//!    readiness delay: the endpoints controller and the proxies need that long to catch up.
//! 2. The listener stops accepting (`phase: stop_accepting`); axum tells every open connection
//!    to close once its current request is answered.
//! 3. In-flight requests finish, then tracked tasks (`phase: draining`): the background worker,
//!    in a scope of its own, is told to stop; the server task ends once its last connection
//!    has closed. New connections are refused; a request that still reaches the service on an
//!    open one is answered `503` with `Connection: close`, so the client retries elsewhere.
//!    Every request has a time limit a little under the drain timeout (90 % of it): one that
//!    runs longer is cut and answered `503`, so the drain always sees the requests end.
//! 4. Cleanup hooks run, in reverse order of registration (`phase: cleanup`): metrics are
//!    flushed, then the database is closed, now that no request uses it.
//! 5. Whatever still runs at the deadline is aborted (`phase: aborting`), the report is printed
//!    (`phase: done`), and the exit code tells the supervisor how it went: 0 clean, 1 not clean
//!    (something timed out, failed or was aborted), 128 + the number of the signal that
//!    escalated it.
//!
//! A second signal escalates: the phase under way is cut short, remaining hooks are skipped,
//! tracked tasks are aborted and the process exits with 128 + the number of that signal, as if
//! the signal had killed it: 143 for SIGTERM, 130 for Ctrl-C (the default `Escalation::Abort`).
//!
//! Run it:
//!
//! ```text
//! cargo run --example axum_graceful
//! cargo run --example axum_graceful -- --port 0 --readiness-delay-ms 300 --deadline-ms 5000
//! ```
//!
//! Then, from another terminal (it prints its pid beside the address):
//!
//! ```text
//! curl -i localhost:3000/ready                # 200 ready
//! curl -i 'localhost:3000/slow?ms=10000' &    # an in-flight request that takes 10 s
//! kill -TERM <pid>                            # phase: not_ready
//! curl -i localhost:3000/ready                # 503 for the readiness delay ...
//! curl -i localhost:3000/                     # ... while the service still answers
//!                                             # then the slow request completes with 200,
//!                                             # the hooks run and the report is printed
//! ```
//!
//! A request longer than the time limit (`/slow?ms=25000` with the defaults, or
//! `/slow?ms=4000` with `--drain-timeout-ms 1000`) is answered `503` at the limit, before
//! the hooks close what it used.
//!
//! Send `kill -TERM <pid>` twice (or press Ctrl-C twice) to see an escalation.
//!
//! Every option can also be set by an environment variable (`PORT=8080`); a flag wins over the
//! variable. Run it with `--help` for the list.

use std::collections::HashMap;
use std::error::Error;
use std::fmt::Display;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::BoxError;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use palisade::shutdown::{Coordinator, Draining, Phase, Scope, Shutdown};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower::timeout::TimeoutLayer;
use tower::timeout::error::Elapsed;

const USAGE: &str = "\
usage: cargo run --example axum_graceful [-- OPTIONS]

Serves HTTP until SIGTERM or Ctrl-C, then shuts down gracefully. A second signal escalates.
Exit code: 0 clean shutdown, 1 not clean, 2 bad options; escalated, 128 + the number of the
signal that escalated it (143 for SIGTERM, 130 for Ctrl-C).

options (flag, or environment variable; a flag wins):
  --host HOST                 HOST                 address to bind [127.0.0.1; 0.0.0.0 in a container]
  --port PORT                 PORT                 port to bind, 0 for any free one [3000]
  --readiness-delay-ms MS     READINESS_DELAY_MS   serve on after readiness turns off [5000]
  --drain-timeout-ms MS       DRAIN_TIMEOUT_MS     wait for in-flight requests and tasks [20000];
                                                   each request is cut at 90 % of it
  --hook-timeout-ms MS        HOOK_TIMEOUT_MS      time each cleanup hook gets [5000]
  --deadline-ms MS            DEADLINE_MS          from the signal to the abort of what is left [25000]

A default longer than the deadline is cut to the deadline.

routes:
  GET /ready       200 while ready, 503 once shutting down (the readiness probe)
  GET /live        always 200 (the liveness probe)
  GET /            200 hello
  GET /slow?ms=N   answers 200 after N ms, N up to 60000 (an in-flight request to drain);
                   503 if it outlasts the request time limit";

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::from_env_and_args(std::env::args().skip(1)) {
        Ok(Some(settings)) => settings,
        Ok(None) => {
            say(USAGE);
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("axum_graceful: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match serve(settings).await {
        Ok(code) => code,
        Err(error) => {
            // Start-up failed (a bad timeout, the port taken) before it opened anything that
            // needs cleaning up: nothing to shut down.
            eprintln!("axum_graceful: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the service, waits for the shutdown to run, and turns its report into an exit code.
async fn serve(settings: Settings) -> Result<ExitCode, Box<dyn Error>> {
    // The coordinator, built first: inside the runtime, `build` installs the SIGINT and SIGTERM
    // handlers right away, so a signal that arrives while the service starts is not lost (and
    // does not kill the process the default way). Every phase timeout must fit in the deadline;
    // `build` names the knob that does not.
    let coordinator = Coordinator::builder()
        .readiness_delay(settings.readiness_delay)
        .drain_timeout(settings.drain_timeout)
        .hook_timeout(settings.hook_timeout)
        .deadline(settings.deadline)
        .build()?;
    // A cheap, cloneable handle for everything that serves, spawns or cleans up.
    let shutdown = coordinator.handle();

    // The listener, before anything that needs cleaning up: if the port is taken, start-up
    // fails here, with no database open and no hook that would never run.
    let listener = TcpListener::bind((settings.host, settings.port)).await?;
    let addr = listener.local_addr()?;

    // Prints each phase as the sequence enters it. A plain `tokio::spawn`, not a tracked task:
    // the draining phase would otherwise wait for it, and it waits for the very end.
    let phases = tokio::spawn(print_phases(shutdown.clone()));

    // Resources released by cleanup hooks. Hooks run after draining, and every request ends
    // before the drain times out (the request time limit in `router` is shorter), so no
    // request uses them any more. They run in reverse order of registration, like
    // destructors: the database, opened first, is closed last, after the metrics (which might
    // still write to it) are flushed.
    let database = Arc::new(Database::connect().await?);
    let db = database.clone();
    shutdown
        .cleanup("close-database")
        // Its own timeout instead of the coordinator's `hook_timeout` (it must fit in the
        // deadline too).
        .timeout(Duration::from_secs(2).min(settings.deadline))
        .register(async move { db.close().await })?;
    let metrics = Arc::new(Metrics::default());
    let flushed = metrics.clone();
    shutdown.on_cleanup("flush-metrics", async move { flushed.flush().await });

    // A background worker in a scope of its own. The draining phase stops nested scopes first
    // (innermost first), once the in-flight requests are done, and waits for their tasks.
    let worker = shutdown.scope("worker");
    worker.spawn(run_worker(worker.clone()))?;

    // The HTTP server, on the listener bound above.
    let app = router(
        AppState {
            shutdown: shutdown.clone(),
            metrics,
            database,
        },
        settings.request_timeout,
    );
    // `listener("http")` registers the listener with the stop-accepting phase; its
    // `stop_accepting()` future completes when the listener should stop, which is when axum
    // stops accepting and tells open connections to close after their current request.
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.listener("http").stop_accepting());
    // A tracked task: the draining phase waits for it, and axum's serve future returns only
    // once its last connection has closed, so the drain waits for the connections too.
    let on_error = shutdown.clone();
    shutdown.spawn(async move {
        if let Err(error) = server.await {
            eprintln!("axum_graceful: server failed: {error}");
            // A dead server should not leave the process waiting for a signal.
            on_error.trigger();
        }
    })?;
    say(format_args!(
        "listening on {addr} (pid {pid}; stop it with Ctrl-C or `kill -TERM {pid}`)",
        pid = std::process::id()
    ));

    // Waits for SIGTERM or Ctrl-C, then runs every phase; returns by the deadline (plus the
    // abort grace period) whatever happens.
    let report = coordinator.run().await;
    // The printer has seen `Phase::Done` by now: let it print it before the report.
    if let Err(error) = phases.await {
        eprintln!("axum_graceful: the phase printer failed: {error}");
    }
    say(&report);

    // 0 when clean; 128 + the signal when a second signal escalated it (143 for SIGTERM, 130
    // for Ctrl-C), what a supervisor reads as "ended by that signal"; 1 otherwise.
    Ok(ExitCode::from(report.exit_code()))
}

/// What every handler can reach.
#[derive(Clone)]
struct AppState {
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
    database: Arc<Database>,
}

/// The application: probes outside the shutdown layer, everything else inside it and inside a
/// time limit per request.
fn router(state: AppState, request_timeout: Duration) -> Router {
    // The probes sit outside `ShutdownLayer`: they must keep answering while the service
    // shuts down (`/ready` says 503 by itself), and must not count as in-flight requests.
    // They share the listener, so they go quiet with it once it stops accepting: the kubelet
    // restarts a pod only after several failed liveness probes (30 s with the defaults), longer
    // than the shutdown. If yours is quicker, serve the probes on a port of their own.
    let probes = Router::new()
        .route("/ready", get(ready))
        .route("/live", get(live));

    // The API, inside the layer: it counts each request in flight, so the draining phase waits
    // for it, and from the draining phase on refuses new requests with a `Draining` error,
    // which `HandleErrorLayer` (outside it) turns into a response. With `axum::serve` few get
    // that far (the listener is closed by then, and idle HTTP/1 connections too); the refusal
    // is the safety net for whatever still comes in on an open connection.
    //
    // The time limit, inside the shutdown layer, is shorter than the drain timeout: a request
    // in flight when the drain begins started before it, so it ends (answered, or cut and
    // answered 503) before the drain times out, and the cleanup hooks never run under a
    // request still using what they close.
    let api = Router::new()
        .route("/", get(hello))
        .route("/slow", get(slow))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(refused))
                .layer(state.shutdown.layer())
                .layer(TimeoutLayer::new(request_timeout)),
        );

    api.merge(probes).with_state(state)
}

/// Turns the layers' errors into responses: `Draining` becomes 503 with `Connection: close`
/// (the client should retry on another instance, on a new connection); the time limit's
/// `Elapsed` 503 (the handler was dropped, so whatever it used is free again); any other
/// error (none in this router) 500, its details logged rather than sent to the client.
async fn refused(error: BoxError) -> Response {
    if error.is::<Draining>() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONNECTION, "close")],
            "shutting down, retry elsewhere\n",
        )
            .into_response()
    } else if error.is::<Elapsed>() {
        say("request: cut at the time limit");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the request took too long\n",
        )
            .into_response()
    } else {
        eprintln!("axum_graceful: internal error: {error}");
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
    }
}

/// The readiness probe: 200 until the shutdown is triggered, then 503 for good.
async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.shutdown.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}

/// The liveness probe: the process is alive as long as it answers.
async fn live() -> &'static str {
    "alive\n"
}

async fn hello(State(state): State<AppState>) -> &'static str {
    state.metrics.served.fetch_add(1, Ordering::Relaxed);
    "hello\n"
}

/// The longest `/slow` request, in ms.
const MAX_SLOW_MS: u64 = 60_000;

/// `GET /slow?ms=N`: answers after N ms (default 1000, at most [`MAX_SLOW_MS`]), the in-flight
/// request a graceful shutdown lets finish. One longer than the request time limit is cut
/// there.
async fn slow(State(state): State<AppState>, uri: Uri) -> Result<String, (StatusCode, String)> {
    let ms = match uri
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
    {
        None => 1000,
        Some(ms) => ms.parse::<u64>().map_err(|error| {
            (
                StatusCode::BAD_REQUEST,
                format!("ms must be a whole number of milliseconds: {error}\n"),
            )
        })?,
    };
    if ms > MAX_SLOW_MS {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("ms must be at most {MAX_SLOW_MS}\n"),
        ));
    }
    say(format_args!("slow request: started ({ms} ms)"));
    state.database.query(Duration::from_millis(ms)).await;
    state.metrics.served.fetch_add(1, Ordering::Relaxed);
    say(format_args!("slow request: done ({ms} ms)"));
    Ok(format!("slept {ms} ms\n"))
}

/// Ticks until its scope is told to stop, finishing the tick under way first.
async fn run_worker(scope: Scope) {
    let mut stopped = scope.stopped();
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut ticks = 0_u64;
    loop {
        tokio::select! {
            () = &mut stopped => break,
            _ = ticker.tick() => {
                // One unit of background work (a real worker would poll a queue here).
                ticks += 1;
            }
        }
    }
    say(format_args!("worker: stopped after {ticks} ticks"));
}

/// Prints `phase: <name>` as the shutdown enters each phase, up to `done`.
///
/// It prints the phase it finds on waking: a phase that lasted less than a wake-up (a stop
/// accepting with nothing to wait for) may be seen already over, and the phases an escalation
/// skips are not printed. The report lists every phase that ran.
async fn print_phases(shutdown: Shutdown) {
    let mut seen = shutdown.phase();
    while let Some(next) = Phase::ALL.into_iter().find(|&phase| phase > seen) {
        shutdown.wait_for(next).await;
        seen = shutdown.phase();
        say(format_args!("phase: {seen}"));
    }
}

/// Request counts, flushed by a cleanup hook.
#[derive(Debug, Default)]
struct Metrics {
    served: AtomicU64,
}

impl Metrics {
    async fn flush(&self) {
        // A real service would push to its metrics backend here.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let served = self.served.load(Ordering::Relaxed);
        say(format_args!("flush-metrics: {served} requests served"));
    }
}

/// A simulated database connection pool.
#[derive(Debug)]
struct Database;

impl Database {
    async fn connect() -> std::io::Result<Database> {
        Ok(Database)
    }

    async fn query(&self, took: Duration) {
        tokio::time::sleep(took).await;
    }

    /// Closes the pool. A hook may return a `Result`: its error lands in the report.
    async fn close(&self) -> std::io::Result<()> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        say("close-database: connections closed");
        Ok(())
    }
}

/// Writes a line to stdout and flushes it, so a supervisor (or a test) reading a pipe sees it
/// at once. A closed stdout is not worth a panic in a shutting-down service.
fn say(line: impl Display) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// The options, from the environment and the command line.
#[derive(Debug)]
struct Settings {
    host: IpAddr,
    port: u16,
    readiness_delay: Duration,
    drain_timeout: Duration,
    hook_timeout: Duration,
    deadline: Duration,
    /// Each request's time limit: 90 % of the drain timeout.
    request_timeout: Duration,
}

/// Every option: its flag (without `--`) and its environment variable.
const OPTIONS: [(&str, &str); 6] = [
    ("host", "HOST"),
    ("port", "PORT"),
    ("readiness-delay-ms", "READINESS_DELAY_MS"),
    ("drain-timeout-ms", "DRAIN_TIMEOUT_MS"),
    ("hook-timeout-ms", "HOOK_TIMEOUT_MS"),
    ("deadline-ms", "DEADLINE_MS"),
];

impl Settings {
    /// The settings, or `None` if help was asked for.
    fn from_env_and_args(
        mut args: impl Iterator<Item = String>,
    ) -> Result<Option<Settings>, String> {
        let mut given: HashMap<&str, String> = OPTIONS
            .iter()
            .filter_map(|&(flag, var)| Some((flag, std::env::var(var).ok()?)))
            .collect();
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(None);
            }
            let Some(option) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            let (name, value) = match option.split_once('=') {
                Some((name, value)) => (name, value.to_owned()),
                None => (
                    option,
                    args.next()
                        .ok_or_else(|| format!("--{option} needs a value"))?,
                ),
            };
            let Some(&(flag, _)) = OPTIONS.iter().find(|(flag, _)| *flag == name) else {
                return Err(format!("unknown option --{name}"));
            };
            given.insert(flag, value);
        }

        let ms = |flag| parse(&given, flag).map(|ms: Option<u64>| ms.map(Duration::from_millis));
        let deadline = ms("deadline-ms")?.unwrap_or(Duration::from_secs(25));
        // The builder wants every phase timeout within the deadline: a short deadline cuts the
        // defaults; an explicit value is passed on as given, for `build` to check.
        let or_default =
            |value: Option<Duration>, default: Duration| value.unwrap_or(default.min(deadline));
        let drain_timeout = or_default(ms("drain-timeout-ms")?, Duration::from_secs(20));
        // A little under the drain timeout, with room for the answer to be written and the
        // connection closed before the drain gives up.
        let request_timeout = drain_timeout * 9 / 10;
        if request_timeout.is_zero() {
            return Err(format!(
                "--drain-timeout-ms {}: requests need time to finish (each is cut at 90 % of it)",
                drain_timeout.as_millis()
            ));
        }
        Ok(Some(Settings {
            host: parse(&given, "host")?.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port: parse(&given, "port")?.unwrap_or(3000),
            readiness_delay: or_default(ms("readiness-delay-ms")?, Duration::from_secs(5)),
            drain_timeout,
            hook_timeout: or_default(ms("hook-timeout-ms")?, Duration::from_secs(5)),
            deadline,
            request_timeout,
        }))
    }
}

/// The option's value, parsed, if it was given.
fn parse<T>(given: &HashMap<&str, String>, flag: &str) -> Result<Option<T>, String>
where
    T: FromStr,
    T::Err: Display,
{
    given
        .get(flag)
        .map(|value| {
            value
                .parse()
                .map_err(|error| format!("--{flag} {value:?}: {error}"))
        })
        .transpose()
}
