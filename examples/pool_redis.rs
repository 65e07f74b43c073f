//! A pool of Redis connections.
//!
//! ```text
//! redis-server &                                        # or any Redis you can reach
//! cargo run --example pool_redis --features pool        # redis://127.0.0.1:6379
//! cargo run --example pool_redis --features pool -- redis://10.0.0.7:6380/2
//! REDIS_URL=redis://127.0.0.1:6380 cargo run --example pool_redis --features pool
//! ```
//!
//! The URL comes from the first argument, else `REDIS_URL`, else `redis://127.0.0.1:6379`.
//!
//! Why pool Redis connections at all, when one `MultiplexedConnection` already carries
//! concurrent commands? Because some commands own the connection while they run: blocking
//! reads (`BLPOP`, `XREAD BLOCK`) stall every command queued behind them, `WATCH` and
//! `MULTI`/`EXEC` are per-connection state, and one socket is one server thread's worth of
//! throughput. A pool gives each of those its own connection, bounded in number.
//!
//! Each command gets a deadline that fits it (`run`): `COMMAND_TIMEOUT` for an ordinary one, the
//! time it may block plus that for a blocking one (`pop`), rather than one response timeout for
//! every command on the connection, which would cut a long `BLPOP`. A command that misses its
//! deadline closes its connection: the server may still be running it (a `BLPOP` still blocked
//! there), so the next caller must not get it.

use std::process::ExitCode;
use std::time::Duration;

use palisade::pool::{Error, Manager, Pool, Pooled};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, RedisResult};

/// How the pool makes and checks Redis connections.
struct RedisManager {
    client: redis::Client,
    config: AsyncConnectionConfig,
}

impl std::fmt::Debug for RedisManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisManager")
            .field("server", &self.client.get_connection_info().addr())
            .finish_non_exhaustive()
    }
}

impl Manager for RedisManager {
    type Connection = MultiplexedConnection;
    type Error = RedisError;

    /// The pool bounds this with its `connect_timeout`; a failure is retried on its
    /// `connect_backoff` while callers wait.
    async fn connect(&self) -> RedisResult<MultiplexedConnection> {
        self.client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
    }

    /// PING: run on connections idle longer than `test_on_checkout` says (the default: 500 ms)
    /// and by the keepalive pass, so a connection to a restarted or failed-over server is
    /// replaced before a caller gets it.
    async fn validate(&self, conn: &mut MultiplexedConnection) -> RedisResult<()> {
        redis::cmd("PING").query_async::<()>(conn).await
    }

    // `recycle` keeps its default (do nothing). A connection that ran SELECT, CLIENT
    // TRACKING or a half-finished WATCH would reset that state here (e.g. `RESET`).
}

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("REDIS_URL").ok())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());

    let manager = RedisManager {
        client: redis::Client::open(url.as_str())?,
        // The pool bounds connects and checks itself, and `run` each command with a deadline
        // of its own: no client-wide response timeout (its default, 500 ms, would cut every
        // `BLPOP` that waits longer).
        config: AsyncConnectionConfig::new()
            .set_connection_timeout(None)
            .set_response_timeout(None),
    };
    let pool = Pool::builder(manager)
        // Enough for the blocking commands and transactions in flight at once; plain commands
        // need few (each connection multiplexes).
        .max_size(8)
        // One connection kept warm: the first command after a quiet spell pays no connect.
        .min_idle(1)
        // A caller waits at most this long for a connection, connects and checks included.
        .acquire_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .validation_timeout(Duration::from_millis(500))
        // Renew connections now and then (below any proxy's limit), spread over
        // [54 min, 60 min] so they do not all reconnect at once.
        .max_lifetime(Some(Duration::from_secs(60 * 60)))
        .max_lifetime_jitter(0.1)
        // PING connections idle for a minute: a dead one is found by the pool, not a caller.
        .keepalive(Some(Duration::from_secs(60)))
        .leak_detection(Some(Duration::from_secs(30)))
        .build()?;
    tokio::spawn(pool.maintenance(Duration::from_secs(10)));

    // Fail fast, with a useful message, when there is no Redis at the URL. Returning from
    // `main` (not `process::exit`, which skips destructors) shuts the pool and the runtime down
    // cleanly; the exit status is still 1.
    if let Err(e) = pool.warm_up().await {
        eprintln!("no Redis at {url}: {e}");
        eprintln!("start one (`redis-server`), or pass its URL as the first argument");
        return Ok(ExitCode::FAILURE);
    }

    let prefix = format!("palisade:example:{}", std::process::id());
    let counter = format!("{prefix}:counter");

    // Concurrent work: 20 tasks, each a small transaction on a connection of its own.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let pool = pool.clone();
        let counter = counter.clone();
        let key = format!("{prefix}:item:{i}");
        tasks.spawn(async move { record(&pool, &key, i, &counter).await });
    }
    while let Some(done) = tasks.join_next().await {
        match done? {
            Ok(_) => {}
            // Told apart as an HTTP handler would: 503 and back off when Redis is down; shed
            // load (or look for leaked connections) when every connection is busy.
            Err(TaskError::Pool(e @ Error::Unavailable { .. })) => eprintln!("redis down: {e}"),
            Err(TaskError::Pool(e @ Error::Exhausted { .. })) => eprintln!("pool busy: {e}"),
            Err(e) => eprintln!("failed: {e}"),
        }
    }

    let mut conn = pool.get().await?;
    let total: i64 = run(&mut conn, COMMAND_TIMEOUT, async |c| {
        redis::cmd("GET").arg(&counter).query_async(c).await
    })
    .await?;
    println!("counter after 20 transactions: {total}");
    drop(conn);

    // A blocking command on a connection of its own: the consumer waits in `BLPOP` for longer
    // than `COMMAND_TIMEOUT`, and the producer's `RPUSH` goes through another connection
    // meanwhile.
    let queue = format!("{prefix}:queue");
    let consumer = tokio::spawn({
        let (pool, queue) = (pool.clone(), queue.clone());
        async move { pop(&pool, &queue, Duration::from_secs(5)).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut conn = pool.get().await?;
    run(&mut conn, COMMAND_TIMEOUT, async |c| {
        redis::cmd("RPUSH")
            .arg(&queue)
            .arg("job-1")
            .query_async::<()>(c)
            .await
    })
    .await?;
    println!("BLPOP after 1.5 s -> {:?}", consumer.await??);

    let keys: Vec<String> = (0..20).map(|i| format!("{prefix}:item:{i}")).collect();
    run(&mut conn, COMMAND_TIMEOUT, async |c| {
        redis::cmd("DEL")
            .arg(&counter)
            .arg(&queue)
            .arg(&keys)
            .query_async::<()>(c)
            .await
    })
    .await?;
    drop(conn);

    let metrics = pool.metrics();
    println!(
        "pool: {metrics}; created {}, connect failures {}, timeouts {}",
        metrics.created, metrics.connect_failures, metrics.timeouts
    );
    pool.close(Duration::from_secs(5)).await?;
    println!("pool closed");
    Ok(ExitCode::SUCCESS)
}

/// The deadline of an ordinary command (or transaction) on a pooled connection; a blocking one
/// gets the time it may block on top (see `pop`).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs `command` on a pooled connection under `deadline`.
///
/// The connection is tainted until the reply is in. If the command misses its deadline, fails
/// on the connection itself, or its caller gives up (this future is dropped), the server may
/// still be running it, or its reply may still come, so the connection is closed when the guard
/// drops instead of going back to the pool. A server error (like WRONGTYPE) leaves it fine.
async fn run<T>(
    conn: &mut Pooled<RedisManager>,
    deadline: Duration,
    command: impl AsyncFnOnce(&mut MultiplexedConnection) -> RedisResult<T>,
) -> Result<T, TaskError> {
    Pooled::taint(conn);
    match tokio::time::timeout(deadline, command(&mut **conn)).await {
        Ok(Ok(reply)) => {
            Pooled::untaint(conn);
            Ok(reply)
        }
        Ok(Err(e)) => {
            if !(e.is_unrecoverable_error() || e.is_connection_dropped()) {
                Pooled::untaint(conn);
            }
            Err(e.into())
        }
        Err(_) => Err(TaskError::Timeout(deadline)),
    }
}

/// Stores `value` under `key` and counts it, in one transaction on a pooled connection.
/// Returns the count.
async fn record(
    pool: &Pool<RedisManager>,
    key: &str,
    value: i64,
    counter: &str,
) -> Result<i64, TaskError> {
    let mut conn = pool.get().await?;
    // MULTI ... EXEC: atomic on the server, and this connection is ours until the guard
    // drops, so nothing else is interleaved into the transaction.
    let (count,) = run(&mut conn, COMMAND_TIMEOUT, async |c| {
        redis::pipe()
            .atomic()
            .set_ex(key, value, 60)
            .ignore()
            .incr(counter, 1)
            .query_async::<(i64,)>(c)
            .await
    })
    .await?;
    Ok(count)
}

/// Takes the first item of `list`, waiting up to `wait` for one (`BLPOP`): `None` if none came.
/// The connection is blocked on the server meanwhile, which is why it is a pooled one and not
/// a shared `MultiplexedConnection`. Its deadline is `wait` plus `COMMAND_TIMEOUT`.
async fn pop(
    pool: &Pool<RedisManager>,
    list: &str,
    wait: Duration,
) -> Result<Option<String>, TaskError> {
    let mut conn = pool.get().await?;
    let popped: Option<(String, String)> = run(&mut conn, wait + COMMAND_TIMEOUT, async |c| {
        redis::cmd("BLPOP")
            .arg(list)
            .arg(wait.as_secs_f64())
            .query_async(c)
            .await
    })
    .await?;
    Ok(popped.map(|(_list, item)| item))
}

/// What a task can fail with: no connection, the command failed, or it missed its deadline.
#[derive(Debug)]
enum TaskError {
    Pool(Error<RedisError>),
    Redis(RedisError),
    /// No reply within this deadline; the connection was closed.
    Timeout(Duration),
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskError::Pool(e) => e.fmt(f),
            TaskError::Redis(e) => e.fmt(f),
            TaskError::Timeout(after) => {
                write!(f, "no reply within {after:?}; the connection was closed")
            }
        }
    }
}

impl std::error::Error for TaskError {}

impl From<Error<RedisError>> for TaskError {
    fn from(e: Error<RedisError>) -> TaskError {
        TaskError::Pool(e)
    }
}

impl From<RedisError> for TaskError {
    fn from(e: RedisError) -> TaskError {
        TaskError::Redis(e)
    }
}
