//! An axum service that calls an upstream over HTTP, with every palisade layer where it belongs.
//!
//! `GET /quote/{symbol}` asks an upstream pricing service (`GET /price/{symbol}`) and returns its
//! answer. Two stacks protect it, both built with [`palisade::Stack`], which nests the layers in
//! the recommended order (`docs/layer-order.md`):
//!
//! ```text
//! server:  HandleErrorLayer → shutdown → rate limit per client IP → handler
//! handler → client stack:   bulkhead → retry (budget) → upstream quota → circuit breaker
//!                           → attempt timeout → pooled HTTP/1 connections (palisade-pool)
//! ```
//!
//! - **A client that floods** gets `429` with `Retry-After` (a keyed GCRA limit per IP); the
//!   others are unaffected.
//! - **A slow upstream** can hold at most `--concurrency` requests (the bulkhead; a short queue,
//!   then `503 overloaded`), so it can't take every task and connection with it.
//! - **A flaky upstream** is retried: 5xx, connection failures and attempt timeouts, with
//!   jittered backoff and a budget shared by every request (retries stay a fraction of the
//!   traffic, so an outage can't become a retry storm). 4xx and our own rejections are not.
//! - **The upstream's quota** (`--upstream-rps`) counts every attempt, retries included.
//! - **A dead upstream** trips the breaker: requests fail at once with `503` and `Retry-After`
//!   instead of waiting on timeouts, and a few probes find out when it is back.
//! - **A symbol that could rewrite the upstream's URL** (`..%2Fadmin`, `X%3Fadmin%3Dtrue`) gets
//!   `400`: a symbol is 1 to 16 ASCII letters, digits, `.`, `_` or `-`, starting with a letter
//!   or digit, checked before anything is sent. The upstream's `404` (no such symbol) is passed
//!   on as `404`.
//! - **Shutdown** (SIGTERM, Ctrl-C): readiness off, stop accepting, in-flight requests finish,
//!   then the pool closes; the exit code says whether it was clean (0), not (1), or escalated
//!   by a second signal (128 + its number: 130 for Ctrl-C, 143 for SIGTERM).
//!
//! Every refusal carries an `x-palisade-error` header naming its kind (`rate_limited`,
//! `overloaded`, `breaker_open`, `upstream_quota`, `upstream_failed`, `upstream_timeout`,
//! `draining`, `invalid_symbol`, `not_found`, `internal`), so a client or a test can tell them
//! apart, and a short body; the details (upstream addresses, pool metrics) go to stderr, not to
//! the client. `GET /stats` shows the counters.
//!
//! ```text
//! cargo run --example axum_service
//! curl -i localhost:3000/quote/ACME
//! # 50 requests at once from one IP: beyond the burst of 20 (and 20 more a second), 429
//! seq 50 | xargs -P 50 -I{} curl -s -o /dev/null -w '%{http_code} ' localhost:3000/quote/ACME; echo
//! curl -i localhost:3000/quote/..%2Fadmin     # 400 invalid_symbol, nothing sent upstream
//! curl localhost:3000/stats
//! ```
//!
//! Without `--upstream`, it starts a demo upstream of its own on a free port, which fails one
//! request in eight and answers one in ten slowly. `--without LAYER` removes a layer (for
//! demos, and for `tests/axum_service.rs`, which shows each invariant failing without its
//! layer). `--help` lists the options.

use std::error::Error;
use std::fmt::Display;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use palisade::Stack;
use palisade::breaker::{CircuitBreaker, CircuitBreakerLayer, Outcome, Rejected as BreakerOpen};
use palisade::bulkhead::{Bulkhead, BulkheadLayer, MAX_CONCURRENT, Rejected as Overloaded};
use palisade::pool::{Error as PoolError, Manager, Pool, Pooled};
use palisade::ratelimit::{KeyedRateLimiter, Quota, RateLimitLayer, RateLimited, RateLimiter};
use palisade::retry::{Backoff, Decision, RetryEvent, RetryLayer, RetryPolicy, TpsBudget};
use palisade::shutdown::{Coordinator, Draining};
use tokio::net::{TcpListener, TcpStream};
use tower::timeout::TimeoutLayer;
use tower::timeout::error::Elapsed;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

const USAGE: &str = "\
usage: cargo run --example axum_service [-- OPTIONS]

Serves GET /quote/{symbol} from an upstream pricing service, behind palisade's layers.

options:
  --port PORT               port to bind on 127.0.0.1, 0 for any free one [3000]
  --upstream URL            the upstream, http://HOST:PORT [a demo upstream on a free port]
  --rate-per-ip N           requests per second per client IP, burst N [20]
  --concurrency N           requests in flight to the upstream at once (bulkhead) [32]
  --queue N                 requests waiting for the bulkhead; more are refused at once [64]
  --queue-timeout-ms MS     longest wait in the bulkhead's queue [100]
  --upstream-rps N          attempts per second sent upstream, retries included, burst N [200]
  --pool-size N             most connections to the upstream [64]
  --acquire-timeout-ms MS   longest wait for a pooled connection, connecting included [50]
  --connect-timeout-ms MS   one connect to the upstream (it outlives a wait that gave up) [1000]
  --attempt-timeout-ms MS   each attempt's time limit [500]
  --readiness-delay-ms MS   serve on after readiness turns off, for the load balancer [1000]
  --deadline-ms MS          from the shutdown signal to the abort of what is left [10000]
  --without LAYER           remove a layer: ratelimit, bulkhead, upstream-limit, retry, breaker

routes:
  GET /quote/{symbol}   the upstream's price; refusals carry an x-palisade-error header
  GET /stats            counters, one `key value` per line
  GET /ready, /live     the readiness and liveness probes";

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::parse(std::env::args().skip(1)) {
        Ok(Some(settings)) => settings,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("axum_service: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match serve(settings).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("axum_service: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Builds both stacks, serves until a signal, shuts down gracefully.
async fn serve(settings: Settings) -> Result<ExitCode, Box<dyn Error>> {
    // First, so that a signal during start-up is not lost (see examples/axum_graceful.rs).
    let coordinator = Coordinator::builder()
        .readiness_delay(settings.readiness_delay)
        .drain_timeout(settings.deadline / 2)
        .hook_timeout(settings.deadline / 4)
        .deadline(settings.deadline)
        .build()?;
    let shutdown = coordinator.handle();

    let upstream = match settings.upstream {
        Some(addr) => addr,
        None => demo_upstream().await?,
    };
    let stats = Arc::new(Stats::default());
    let pool = Pool::builder(HttpManager { addr: upstream })
        .max_size(settings.pool_size)
        // Connections kept open when idle (opened by `warm_up` below, refilled after discards),
        // so the first requests, and those after a connection broke, do not wait for a connect.
        .min_idle(MIN_IDLE.min(settings.pool_size))
        // Short: the upstream quota's cell is spent before this wait, so a long wait would let
        // attempts that waited through an outage arrive together when it ends, above the
        // quota; and a dead upstream must fail attempts fast for the breaker to see it.
        .acquire_timeout(settings.acquire_timeout)
        // One connect attempt: as long as a connect may really take, not the acquire timeout.
        // A connect outlives the `get()` that started it and gave up: it finishes on its own
        // task and the connection serves the next caller. Were it cut at the acquire timeout,
        // an upstream slower to connect than that could never get a connection.
        .connect_timeout(settings.connect_timeout)
        .build()?;
    // Open `min_idle` connections before taking traffic. An upstream that is down (or slow to
    // connect) is no reason not to start: the breaker and the refusals handle it, and the
    // connects already started finish into the pool.
    if let Err(error) = pool.warm_up().await {
        log(format_args!(
            "upstream pool warm-up: {error}; serving anyway"
        ));
    }
    // After the drain, nothing uses the pool: close its connections (the hook's time limit is
    // the coordinator's `hook_timeout`).
    let closing = pool.clone();
    shutdown.on_cleanup("close-upstream-pool", async move {
        closing.close(Duration::from_secs(1)).await
    });

    let client = client_stack(&settings, pool.clone(), stats.clone())?;
    let per_ip = Arc::new(KeyedRateLimiter::<IpAddr>::new(
        Quota::per_second(settings.rate_per_ip).burst(settings.rate_per_ip),
    )?);

    // The API behind the server stack; stats and probes outside it (they must answer while
    // draining, and are not the API's traffic).
    let api = Router::new().route("/quote/{symbol}", get(quote));
    let server_stack = Stack::new().shutdown(shutdown.layer());
    let api = if settings.without(Layer::RateLimit) {
        api.layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(server_refusal))
                .layer(server_stack),
        )
    } else {
        api.layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(server_refusal))
                .layer(server_stack.rate_limit(RateLimitLayer::keyed(per_ip, client_ip))),
        )
    };
    let app = api
        .route("/stats", get(stats_page))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "alive\n" }))
        .with_state(App {
            client,
            stats,
            pool,
            shutdown: shutdown.clone(),
        });

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, settings.port)).await?;
    let addr = listener.local_addr()?;
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.listener("http").stop_accepting());
    let on_error = shutdown.clone();
    shutdown.spawn(async move {
        if let Err(error) = server.await {
            eprintln!("axum_service: server failed: {error}");
            on_error.trigger();
        }
    })?;
    say(format_args!(
        "listening on {addr} (pid {pid}); upstream http://{upstream}",
        pid = std::process::id()
    ));

    let report = coordinator.run().await;
    say(&report);
    // 0 when clean; 128 + the signal when a second signal escalated it (143 for SIGTERM, 130
    // for Ctrl-C), what a supervisor reads as "ended by that signal"; 1 otherwise.
    Ok(ExitCode::from(report.exit_code()))
}

/// Connections the pool keeps open to the upstream when idle (at most `--pool-size`).
const MIN_IDLE: usize = 4;

/// The most the upstream's answer may hold: a quote is a line. A bigger body is refused
/// (`upstream_failed`) instead of read into memory.
const MAX_UPSTREAM_BODY: usize = 16 * 1024;

/// The symbol of a quote, checked: 1 to 16 bytes, an ASCII letter or digit first, then ASCII
/// letters, digits, `.`, `_` or `-`. Nothing in it can change the upstream request's path or
/// query: no `/`, `?`, `#` or `%`, no `.` or `..` segment. Cheap to clone for each attempt.
#[derive(Debug, Clone)]
struct Symbol(Arc<str>);

impl Symbol {
    /// The longest symbol, in bytes.
    const MAX_LEN: usize = 16;

    /// `symbol` (as axum decoded it from the path), if it is a valid symbol.
    fn parse(symbol: &str) -> Option<Symbol> {
        let bytes = symbol.as_bytes();
        let valid = bytes.len() <= Self::MAX_LEN
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        valid.then(|| Symbol(Arc::from(symbol)))
    }
}

impl Display for Symbol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The client stack, type-erased so the handler state has one type whatever `--without` says.
type Client = BoxCloneSyncService<Symbol, Bytes, BoxError>;

/// The stack around the upstream calls: bulkhead → retry → upstream quota → breaker → timeout
/// → pool.
fn client_stack(
    settings: &Settings,
    pool: Pool<HttpManager>,
    stats: Arc<Stats>,
) -> Result<Client, Box<dyn Error>> {
    // `--without` keeps every layer and makes it let everything through, so the stack has one
    // type: the largest bulkhead, one attempt, a quota nobody reaches, a breaker counting
    // nothing as a failure.
    let concurrency = match settings.without(Layer::Bulkhead) {
        true => MAX_CONCURRENT,
        false => settings.concurrency,
    };
    let bulkhead = Bulkhead::builder(concurrency)
        .max_queued(settings.queue)
        .max_wait(settings.queue_timeout)
        .build()?;

    let attempts = if settings.without(Layer::Retry) { 1 } else { 3 };
    let policy = RetryPolicy::builder()
        .max_attempts(attempts)
        .backoff(
            Backoff::exponential(Duration::from_millis(20)).max_delay(Duration::from_millis(200)),
        )
        .build()?;
    // Retries may add at most 20 % to the traffic (plus 10 a second, so a quiet service can
    // still retry): shared by every request.
    let budget = Arc::new(
        TpsBudget::builder()
            .retry_ratio(0.2)
            .min_per_sec(10)
            .build()?,
    );
    let counted = stats.clone();
    let retry = RetryLayer::new(policy)
        .when(should_retry)
        .budget(budget)
        .on_retry(move |_: &RetryEvent<'_, Bytes, BoxError>| {
            counted.retries.fetch_add(1, Ordering::Relaxed);
        });

    let rps = match settings.without(Layer::UpstreamLimit) {
        true => 1_000_000,
        false => settings.upstream_rps,
    };
    let quota = Arc::new(RateLimiter::new(Quota::per_second(rps).burst(rps))?);

    let breaker = CircuitBreaker::builder()
        .failure_rate(50.0)
        .minimum_calls(20)
        .open_duration(Duration::from_secs(2))
        .name("upstream")
        .build()?;
    let count_failures = !settings.without(Layer::Breaker);
    let breaker = CircuitBreakerLayer::new(Arc::new(breaker)).classify(
        move |result: &Result<Bytes, BoxError>| match result {
            Ok(_) => Outcome::Success,
            Err(error) if count_failures && is_upstream_failure(error) => Outcome::Failure,
            // Says nothing about the upstream's health: a 4xx (the request's fault), a full
            // pool (our own saturation), an oversized answer, a closed pool. Ignored, as the
            // breaker's docs recommend: neither a failure nor a success that would dilute the
            // failure rate, and a half-open probe's slot goes to the next call.
            Err(_) => Outcome::Ignored,
        },
    );

    let stack = Stack::new()
        .bulkhead(BulkheadLayer::new(bulkhead))
        .retry(retry)
        .rate_limit_attempts(RateLimitLayer::new(quota))
        .breaker(breaker)
        // Inside the breaker, so that timeouts count as the upstream's failures.
        .timeout(TimeoutLayer::new(settings.attempt_timeout));
    Ok(BoxCloneSyncService::new(tower::Layer::layer(
        &stack,
        Upstream { pool, stats },
    )))
}

/// Retry what another attempt may fix: the upstream's 5xx, connections that failed, attempts
/// that timed out. Not 4xx (the same request gets the same answer), and not our own
/// rejections: the upstream quota and an open breaker say "not now", and waiting for them here
/// would hold the bulkhead's slot.
fn should_retry(outcome: &Result<Bytes, BoxError>) -> Decision {
    match outcome {
        Err(error) if is_upstream_failure(error) => Decision::Retry,
        _ => Decision::DontRetry,
    }
}

/// An error that says the upstream (or the way to it) is failing.
fn is_upstream_failure(error: &BoxError) -> bool {
    if let Some(UpstreamError::Status(status)) = error.downcast_ref::<UpstreamError>() {
        return status.is_server_error();
    }
    if let Some(pool) = error.downcast_ref::<PoolError<io::Error>>() {
        // The upstream refused connections; `Exhausted` (every connection busy until the wait
        // ran out) is our own saturation, not the upstream's failure.
        return matches!(pool, PoolError::Unavailable { .. });
    }
    error.is::<hyper::Error>() || error.is::<Elapsed>() || error.is::<io::Error>()
}

/// The innermost service: one `GET /price/{symbol}` on a pooled connection.
#[derive(Clone)]
struct Upstream {
    pool: Pool<HttpManager>,
    stats: Arc<Stats>,
}

impl Service<Symbol> for Upstream {
    type Response = Bytes;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Bytes, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The pool's wait is part of the call, bounded by its `acquire_timeout`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, symbol: Symbol) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let _in_flight = this.stats.enter();
            let mut conn = this.pool.get().await?;
            // Until the whole response is read, the connection's state is unknown: if this
            // future is dropped in between (an attempt timeout, a client that hung up), the
            // tainted connection is closed instead of going back to the pool.
            Pooled::taint(&mut conn);
            // `Symbol` holds nothing that changes the path or adds a query; an error here would
            // be our bug (`internal`), not the upstream's.
            let request = Request::get(format!("/price/{symbol}"))
                .header(header::HOST, this.pool.manager().addr.to_string())
                .body(Empty::<Bytes>::new())?;
            let response = conn.send_request(request).await?;
            let status = response.status();
            // Read to the end (so the connection can serve another request), but no further
            // than the limit: an upstream can't make us buffer whatever it sends. Over the
            // limit, the connection stays tainted and is closed.
            let body = Limited::new(response.into_body(), MAX_UPSTREAM_BODY)
                .collect()
                .await
                .map_err(|error| match error.downcast::<LengthLimitError>() {
                    Ok(_) => UpstreamError::TooLarge.into(),
                    Err(error) => error,
                })?
                .to_bytes();
            Pooled::untaint(&mut conn);
            if status.is_success() {
                Ok(body)
            } else {
                Err(UpstreamError::Status(status).into())
            }
        })
    }
}

/// A failed answer from the upstream.
#[derive(Debug)]
enum UpstreamError {
    /// The upstream answered with this non-2xx status.
    Status(StatusCode),
    /// The upstream's body was longer than [`MAX_UPSTREAM_BODY`].
    TooLarge,
}

impl Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Status(status) => write!(f, "the upstream answered {status}"),
            UpstreamError::TooLarge => write!(
                f,
                "the upstream's answer is longer than {MAX_UPSTREAM_BODY} bytes"
            ),
        }
    }
}

impl Error for UpstreamError {}

/// Makes HTTP/1 connections to the upstream for the pool.
struct HttpManager {
    addr: SocketAddr,
}

impl Manager for HttpManager {
    type Connection = SendRequest<Empty<Bytes>>;
    type Error = io::Error;

    async fn connect(&self) -> io::Result<Self::Connection> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        // The connection's I/O runs on its own task; it ends when the sender is dropped (the
        // pool discards or closes it) or the upstream hangs up. An error that a request was
        // waiting for reaches that request (and its refusal is logged); one that ends an idle
        // connection (a reset, bytes nobody asked for) would leave no trace: log it. The pool
        // sees the sender closed (`is_broken`) and discards it.
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                log(format_args!("upstream connection to {addr}: {error}"));
            }
        });
        Ok(sender)
    }

    async fn recycle(&self, conn: &mut Self::Connection) -> io::Result<()> {
        // Ready for another request: the previous response was read to the end.
        conn.ready().await.map_err(io::Error::other)
    }

    fn is_broken(&self, conn: &mut Self::Connection) -> bool {
        conn.is_closed()
    }
}

/// What the handlers share.
#[derive(Clone)]
struct App {
    client: Client,
    stats: Arc<Stats>,
    pool: Pool<HttpManager>,
    shutdown: palisade::shutdown::Shutdown,
}

/// `GET /quote/{symbol}`: the upstream's answer, or a refusal saying which layer refused.
async fn quote(State(app): State<App>, Path(symbol): Path<String>) -> Response {
    app.stats.requests.fetch_add(1, Ordering::Relaxed);
    // Checked before anything is sent: axum has percent-decoded the path parameter, so
    // `..%2Fadmin` arrives as `../admin`, which must not become part of the upstream's path.
    let Some(symbol) = Symbol::parse(&symbol) else {
        return refusal(StatusCode::BAD_REQUEST, "invalid_symbol", None);
    };
    match app.client.oneshot(symbol.clone()).await {
        Ok(body) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response(),
        Err(error) => client_refusal(&symbol, &error),
    }
}

/// The client stack's errors as responses. The client gets the kind and a short message; the
/// error itself, which may name upstream addresses or hold pool metrics, goes to the log.
fn client_refusal(symbol: &Symbol, error: &BoxError) -> Response {
    if let Some(open) = error.downcast_ref::<BreakerOpen>() {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "breaker_open",
            // Half-open with every probe slot taken has no reopening time: try again soon.
            open.retry_after().or(Some(Duration::from_secs(1))),
        );
    }
    // A full pool (every connection busy until the wait ran out) is our own saturation too.
    let pool_full = matches!(
        error.downcast_ref::<PoolError<io::Error>>(),
        Some(PoolError::Exhausted { .. })
    );
    if error.is::<Overloaded>() || pool_full {
        return refusal(StatusCode::SERVICE_UNAVAILABLE, "overloaded", None);
    }
    if let Some(limited) = error.downcast_ref::<RateLimited>() {
        let wait = Some(limited.retry_after());
        return refusal(StatusCode::SERVICE_UNAVAILABLE, "upstream_quota", wait);
    }
    if let Some(UpstreamError::Status(StatusCode::NOT_FOUND)) = error.downcast_ref() {
        // The upstream knows no such symbol: the client's answer too, not a gateway error.
        return refusal(StatusCode::NOT_FOUND, "not_found", None);
    }
    if error.is::<axum::http::Error>() {
        // The request to the upstream could not be built: our bug, not the upstream's.
        log(format_args!("quote {symbol}: internal: {error}"));
        return refusal(StatusCode::INTERNAL_SERVER_ERROR, "internal", None);
    }
    if error.is::<Elapsed>() {
        log(format_args!("quote {symbol}: upstream_timeout: {error}"));
        return refusal(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", None);
    }
    log(format_args!("quote {symbol}: upstream_failed: {error}"));
    refusal(StatusCode::BAD_GATEWAY, "upstream_failed", None)
}

/// The server stack's errors (`HandleErrorLayer`): the per-IP limit and the drain.
async fn server_refusal(error: BoxError) -> Response {
    if let Some(limited) = error.downcast_ref::<RateLimited>() {
        let wait = Some(limited.retry_after());
        return refusal(StatusCode::TOO_MANY_REQUESTS, "rate_limited", wait);
    }
    if error.is::<Draining>() {
        let mut response = refusal(StatusCode::SERVICE_UNAVAILABLE, "draining", None);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    log(format_args!("server stack: internal: {error}"));
    refusal(StatusCode::INTERNAL_SERVER_ERROR, "internal", None)
}

/// A refusal: the status, `x-palisade-error: kind`, `Retry-After` in whole seconds (rounded up)
/// when the layer knows when to come back, and a short body (`kind: what to do`) that tells
/// the client nothing about our internals.
fn refusal(status: StatusCode, kind: &'static str, retry_after: Option<Duration>) -> Response {
    let message = match kind {
        "rate_limited" => "too many requests from your address, retry later",
        "overloaded" => "too many requests in progress, retry later",
        "breaker_open" => "the upstream is unavailable, retry later",
        "upstream_quota" => "the upstream's quota is spent, retry later",
        "upstream_timeout" => "the upstream did not answer in time",
        "upstream_failed" => "the upstream failed",
        "draining" => "shutting down, retry elsewhere",
        "invalid_symbol" => "a symbol is 1 to 16 of A-Z a-z 0-9 . _ -, a letter or digit first",
        "not_found" => "no such symbol",
        _ => "internal error",
    };
    let mut response = (status, format!("{kind}: {message}\n")).into_response();
    let headers = response.headers_mut();
    headers.insert("x-palisade-error", HeaderValue::from_static(kind));
    if let Some(wait) = retry_after {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

/// The per-IP limit's key: the peer's address, from axum's `ConnectInfo`.
fn client_ip(request: &Request<Body>) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip())
}

/// The readiness probe: 503 from the moment the shutdown starts.
async fn ready(State(app): State<App>) -> (StatusCode, &'static str) {
    if app.shutdown.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}

/// `GET /stats`: one `key value` per line.
async fn stats_page(State(app): State<App>) -> String {
    let pool = app.pool.metrics();
    let stats = &app.stats;
    format!(
        "requests {}\nretries {}\nin_flight {}\nmax_in_flight {}\npool_open {}\npool_in_use {}\n",
        stats.requests.load(Ordering::Relaxed),
        stats.retries.load(Ordering::Relaxed),
        stats.in_flight.load(Ordering::Relaxed),
        stats.max_in_flight.load(Ordering::Relaxed),
        pool.size,
        pool.in_use,
    )
}

/// Counters for `/stats`.
#[derive(Default)]
struct Stats {
    /// `/quote` requests admitted by the per-IP limit.
    requests: AtomicU64,
    /// Retries the retry layer made.
    retries: AtomicU64,
    /// Calls to the upstream (attempts) in progress now; the bulkhead bounds them.
    in_flight: AtomicU32,
    /// The most calls to the upstream in progress at once.
    max_in_flight: AtomicU32,
}

impl Stats {
    /// Counts one call to the upstream until the guard drops.
    fn enter(self: &Arc<Self>) -> InFlight {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// One call to the upstream in progress (see [`Stats::enter`]).
struct InFlight(Arc<Stats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A demo upstream on a free loopback port: `GET /price/{symbol}` answers a made-up price; one
/// request in eight fails with 500 and one in ten takes 300 ms.
async fn demo_upstream() -> io::Result<SocketAddr> {
    let served = Arc::new(AtomicU64::new(0));
    let app = Router::new().route(
        "/price/{symbol}",
        get(move |Path(symbol): Path<String>| {
            let n = served.fetch_add(1, Ordering::Relaxed);
            async move {
                if n % 10 == 3 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                if n % 8 == 5 {
                    return Err((StatusCode::INTERNAL_SERVER_ERROR, "flaky\n"));
                }
                let cents = symbol.bytes().map(u64::from).sum::<u64>() * 37 + n % 100;
                Ok(format!("{symbol} {}.{:02}\n", cents / 100, cents % 100))
            }
        }),
    );
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// The layers `--without` can remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    RateLimit,
    Bulkhead,
    UpstreamLimit,
    Retry,
    Breaker,
}

/// The command line.
#[derive(Debug)]
struct Settings {
    port: u16,
    upstream: Option<SocketAddr>,
    rate_per_ip: u32,
    concurrency: u32,
    queue: usize,
    queue_timeout: Duration,
    upstream_rps: u32,
    pool_size: usize,
    acquire_timeout: Duration,
    connect_timeout: Duration,
    attempt_timeout: Duration,
    readiness_delay: Duration,
    deadline: Duration,
    without: Vec<Layer>,
}

impl Settings {
    /// Parses the options; `Ok(None)` for `--help`. The builders check the ranges and name the
    /// knob when one is out of range.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Settings>, String> {
        let mut s = Settings {
            port: 3000,
            upstream: None,
            rate_per_ip: 20,
            concurrency: 32,
            queue: 64,
            queue_timeout: Duration::from_millis(100),
            upstream_rps: 200,
            pool_size: 64,
            acquire_timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(1000),
            attempt_timeout: Duration::from_millis(500),
            readiness_delay: Duration::from_millis(1000),
            deadline: Duration::from_millis(10_000),
            without: Vec::new(),
        };
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                return Ok(None);
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |e: &dyn Display| format!("{flag} {value:?}: {e}");
            let ms = |v: &str| v.parse().map(Duration::from_millis).map_err(|e| bad(&e));
            match flag.as_str() {
                "--port" => s.port = value.parse().map_err(|e| bad(&e))?,
                "--upstream" => {
                    let hostport = value
                        .strip_prefix("http://")
                        .ok_or_else(|| bad(&"expected http://HOST:PORT"))?;
                    s.upstream = Some(
                        hostport
                            .trim_end_matches('/')
                            .parse()
                            .map_err(|e| bad(&e))?,
                    );
                }
                "--rate-per-ip" => s.rate_per_ip = value.parse().map_err(|e| bad(&e))?,
                "--concurrency" => s.concurrency = value.parse().map_err(|e| bad(&e))?,
                "--queue" => s.queue = value.parse().map_err(|e| bad(&e))?,
                "--queue-timeout-ms" => s.queue_timeout = ms(&value)?,
                "--upstream-rps" => s.upstream_rps = value.parse().map_err(|e| bad(&e))?,
                "--pool-size" => s.pool_size = value.parse().map_err(|e| bad(&e))?,
                "--acquire-timeout-ms" => s.acquire_timeout = ms(&value)?,
                "--connect-timeout-ms" => s.connect_timeout = ms(&value)?,
                "--attempt-timeout-ms" => s.attempt_timeout = ms(&value)?,
                "--readiness-delay-ms" => s.readiness_delay = ms(&value)?,
                "--deadline-ms" => s.deadline = ms(&value)?,
                "--without" => s.without.push(match value.as_str() {
                    "ratelimit" => Layer::RateLimit,
                    "bulkhead" => Layer::Bulkhead,
                    "upstream-limit" => Layer::UpstreamLimit,
                    "retry" => Layer::Retry,
                    "breaker" => Layer::Breaker,
                    _ => {
                        return Err(bad(
                            &"expected ratelimit, bulkhead, upstream-limit, retry or breaker",
                        ));
                    }
                }),
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        Ok(Some(s))
    }

    /// Whether `--without layer` was given.
    fn without(&self, layer: Layer) -> bool {
        self.without.contains(&layer)
    }
}

/// Prints a line at once (stdout is a pipe under tests, where it would be block-buffered).
fn say(line: impl Display) {
    use std::io::Write as _;
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Logs an error's details to stderr (unbuffered), for the operator, not the client. A real
/// service would use its logger (`tracing::warn!`) here.
fn log(line: impl Display) {
    eprintln!("axum_service: {line}");
}
