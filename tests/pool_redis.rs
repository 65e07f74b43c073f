//! The pool against a real Redis: commands through pooled connections, a Redis killed and
//! restarted on the same port, and a spike of 50 callers.
//!
//! The fault tests start their own `redis-server` processes (on a free loopback port, with
//! persistence off) and kill them with SIGKILL; a guard kills whatever is left when a test
//! ends, passing or not. The other tests use the server `PALISADE_REDIS_URL` names when it is
//! set (`scripts/test` starts one), else their own. `redis-server` must be installed: without
//! it the tests fail, naming the command that installs it.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use palisade::pool::{CheckoutTest, Discard, Error, Failure, Manager, Pool};
use redis::RedisResult;
use redis::aio::MultiplexedConnection;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

/// How long anything that should happen promptly may take on a loaded machine. Only a
/// failing test ever waits this long.
const PATIENCE: Duration = Duration::from_secs(5);

const INSTALL: &str = "apt-get install redis-server";

// ---------------------------------------------------------------------------------------
// A redis-server process of the test's own.
// ---------------------------------------------------------------------------------------

/// A `redis-server` child process, killed (SIGKILL) and reaped when dropped.
struct RedisServer {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl RedisServer {
    /// A server on a free loopback port.
    async fn start() -> RedisServer {
        // The kernel picks a free port; the listener is closed before redis binds it.
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("an ephemeral loopback port")
            .port();
        RedisServer::start_on(port).await
    }

    /// A server on `port` (a killed server's, for a restart).
    async fn start_on(port: u16) -> RedisServer {
        let log = std::env::temp_dir().join(format!(
            "palisade-pool-redis-{}-{port}.log",
            std::process::id()
        ));
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed (or not on PATH); these tests need a real Redis. \
                 Install it with `{INSTALL}` (as root), then run the tests again"
            ),
            Err(e) => panic!("starting redis-server failed: {e}"),
        };
        let mut server = RedisServer {
            port,
            child: Some(child),
            log,
        };
        server.wait_until_ready().await;
        server
    }

    /// Waits until the server answers PING, or fails with its log if it exits first (a port
    /// taken meanwhile) or takes longer than [`PATIENCE`].
    async fn wait_until_ready(&mut self) {
        let url = self.url();
        let client = redis::Client::open(url.as_str()).expect("a valid URL");
        let started = Instant::now();
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!(
                    "redis-server on port {} exited ({status}) on start:\n{log}",
                    self.port
                );
            }
            if let Ok(Ok(mut conn)) = tokio::time::timeout(
                Duration::from_millis(500),
                client.get_multiplexed_async_connection(),
            )
            .await
                && let Ok(pong) = redis::cmd("PING").query_async::<String>(&mut conn).await
                && pong == "PONG"
            {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "redis-server on port {} did not answer PING within {PATIENCE:?}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to its clients) and reaps it; its sockets are
    /// closed when this returns.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The URL of the shared server `PALISADE_REDIS_URL` names, or of a server of the caller's
/// own (returned too, so it lives as long as the test).
async fn shared_or_own() -> (String, Option<RedisServer>) {
    match std::env::var("PALISADE_REDIS_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let server = RedisServer::start().await;
            (server.url(), Some(server))
        }
    }
}

// ---------------------------------------------------------------------------------------
// The Manager.
// ---------------------------------------------------------------------------------------

/// A pooled Redis connection: the connection, an id in connect order, and the `run_id` of the
/// server process it connected to (a restarted server has a new one).
struct RedisConn {
    id: u64,
    run_id: String,
    conn: MultiplexedConnection,
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConn")
            .field("id", &self.id)
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

/// One connection per pooled item: a `MultiplexedConnection` could be shared, but a pool of
/// them is what a blocking command (BLPOP), MULTI/EXEC or WATCH needs.
struct Redis {
    client: redis::Client,
    /// Paid before each connect: a far or TLS-fronted Redis.
    connect_delay: Duration,
    /// Set with CLIENT SETNAME on each connection, to find them in CLIENT LIST.
    name: Option<String>,
    attempts: AtomicUsize,
    next_id: AtomicU64,
}

impl Redis {
    fn new(url: &str) -> Redis {
        Redis {
            client: redis::Client::open(url).expect("a valid redis URL"),
            connect_delay: Duration::ZERO,
            name: None,
            attempts: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
        }
    }
}

impl Manager for Redis {
    type Connection = RedisConn;
    type Error = redis::RedisError;

    async fn connect(&self) -> RedisResult<RedisConn> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if !self.connect_delay.is_zero() {
            tokio::time::sleep(self.connect_delay).await;
        }
        let mut conn = self.client.get_multiplexed_async_connection().await?;
        if let Some(name) = &self.name {
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(name)
                .query_async::<()>(&mut conn)
                .await?;
        }
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?;
        let run_id = info
            .lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        Ok(RedisConn { id, run_id, conn })
    }

    async fn validate(&self, conn: &mut RedisConn) -> RedisResult<()> {
        let pong: String = redis::cmd("PING").query_async(&mut conn.conn).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "unexpected PING reply",
                pong,
            )))
        }
    }
}

/// The `run_id` of the server at `url`.
async fn run_id(url: &str) -> String {
    let client = redis::Client::open(url).expect("a valid URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .expect("INFO server");
    info.lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .expect("INFO names the run_id")
        .trim()
        .to_owned()
}

/// A key no other test or run uses.
fn unique_key(what: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    format!(
        "palisade:pool_redis:{what}:{}:{nanos}:{n}",
        std::process::id()
    )
}

/// `fut`, or a panic naming what hung after `limit`: the proof that nothing waits forever.
async fn within<F: Future>(limit: Duration, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("hung: still pending after {limit:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

/// SET then GET through one pooled connection, then concurrent INCRs through a pool smaller
/// than the number of callers: every command lands, and the connections come back.
#[tokio::test]
async fn commands_run_through_pooled_connections() {
    let (url, _own) = shared_or_own().await;
    let pool = Pool::builder(Redis::new(&url))
        .max_size(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .validation_timeout(Duration::from_millis(500))
        .build()
        .expect("a valid pool");

    let key = unique_key("set_get");
    {
        let mut conn = within(PATIENCE, pool.get()).await.expect("a connection");
        redis::cmd("SET")
            .arg(&key)
            .arg("palisade")
            .arg("EX")
            .arg(60)
            .query_async::<()>(&mut conn.conn)
            .await
            .expect("SET");
        let value: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn.conn)
            .await
            .expect("GET");
        assert_eq!(value.as_deref(), Some("palisade"));
    }

    let counter = unique_key("counter");
    let mut callers = JoinSet::new();
    for _ in 0..16 {
        let pool = pool.clone();
        let counter = counter.clone();
        callers.spawn(async move {
            let mut conn = pool.get().await.expect("a connection");
            redis::cmd("INCR")
                .arg(&counter)
                .query_async::<i64>(&mut conn.conn)
                .await
                .expect("INCR");
        });
    }
    within(PATIENCE, callers.join_all()).await;
    let mut conn = pool.get().await.expect("a connection");
    let total: i64 = redis::cmd("GET")
        .arg(&counter)
        .query_async(&mut conn.conn)
        .await
        .expect("GET");
    assert_eq!(total, 16);
    redis::cmd("DEL")
        .arg(&key)
        .arg(&counter)
        .query_async::<()>(&mut conn.conn)
        .await
        .expect("DEL");
    drop(conn);

    let metrics = pool.metrics();
    assert!((1..=4).contains(&metrics.created), "{metrics:?}");
    assert_eq!(metrics.in_use, 0, "{metrics}");
    assert_eq!(metrics.discarded_total(), 0, "{metrics}");
}

/// Redis is killed: `get()` fails by its deadline, never hanging, with `Unavailable`
/// carrying Redis's connect error (connection refused) and the pool's metrics; the idle
/// connections to the dead server are discarded (their PING fails).
#[tokio::test]
async fn killed_redis_fails_get_by_its_deadline_with_the_redis_error() {
    const ACQUIRE: Duration = Duration::from_millis(500);
    let mut server = RedisServer::start().await;
    let pool = Pool::builder(Redis::new(&server.url()))
        .max_size(4)
        .acquire_timeout(ACQUIRE)
        .connect_timeout(Duration::from_millis(300))
        .validation_timeout(Duration::from_millis(300))
        .test_on_checkout(CheckoutTest::Always)
        .build()
        .expect("a valid pool");
    {
        let _a = pool.get().await.expect("redis is up");
        let _b = pool.get().await.expect("redis is up");
    }
    assert_eq!(pool.metrics().idle, 2);

    server.kill();

    let started = Instant::now();
    let result = within(ACQUIRE + PATIENCE, pool.get()).await;
    let elapsed = started.elapsed();
    let error = result.expect_err("no connection from a dead redis");
    assert!(elapsed >= ACQUIRE, "gave up after {elapsed:?}: {error}");
    assert!(
        elapsed < ACQUIRE + Duration::from_secs(1),
        "overran its deadline of {ACQUIRE:?}: {elapsed:?}"
    );
    let Error::Unavailable { metrics, .. } = &error else {
        panic!("expected Unavailable, got {error:?}");
    };
    match error.last_error() {
        Some(Failure::Connect(e)) => {
            assert!(e.is_connection_refusal(), "not a refusal: {e:?}");
        }
        other => panic!("expected a refused connect as the last error, got {other:?}"),
    }
    assert_eq!(metrics.idle, 0, "{metrics}");
    assert_eq!(metrics.in_use, 0, "{metrics}");
    assert!(metrics.connect_failures >= 1, "{metrics:?}");
    assert_eq!(metrics.discarded(Discard::Invalid), 2, "{metrics}");
    let message = error.to_string();
    assert!(message.contains("refused"), "{message}");
    assert!(message.contains("size "), "{message}");
}

/// Redis is restarted on the same port: every connection handed out afterwards is to the new
/// process (its `run_id`) and runs commands; the ones to the old process are all discarded.
/// After a second outage in which connects failed, the pool recovers.
#[tokio::test]
async fn restarted_redis_recovers_and_stale_connections_are_never_handed_out() {
    const SIZE: usize = 4;
    let mut server = RedisServer::start().await;
    let port = server.port;
    let url = server.url();
    let old_run_id = run_id(&url).await;
    let pool = Pool::builder(Redis::new(&url))
        .max_size(SIZE)
        .acquire_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(300))
        .validation_timeout(Duration::from_millis(300))
        .test_on_checkout(CheckoutTest::Always)
        .build()
        .expect("a valid pool");
    {
        let mut held = Vec::new();
        for _ in 0..SIZE {
            held.push(pool.get().await.expect("redis is up"));
        }
        assert!(held.iter().all(|c| c.run_id == old_run_id));
    }
    assert_eq!(pool.metrics().idle, SIZE);

    server.kill();
    let mut server = RedisServer::start_on(port).await;
    let new_run_id = run_id(&url).await;
    assert_ne!(new_run_id, old_run_id);

    let all_in = Arc::new(Barrier::new(SIZE));
    let mut callers = JoinSet::new();
    for i in 0..SIZE {
        let pool = pool.clone();
        let all_in = Arc::clone(&all_in);
        let key = unique_key(&format!("restart{i}"));
        callers.spawn(async move {
            let mut conn = pool.get().await.expect("the restarted redis serves");
            let set = redis::cmd("SET")
                .arg(&key)
                .arg(i)
                .query_async::<()>(&mut conn.conn)
                .await;
            let got = redis::cmd("GET")
                .arg(&key)
                .query_async::<usize>(&mut conn.conn)
                .await;
            all_in.wait().await;
            (conn.id, conn.run_id.clone(), set.and(got))
        });
    }
    let served = within(PATIENCE, callers.join_all()).await;
    for (id, run_id, got) in &served {
        assert_eq!(
            run_id, &new_run_id,
            "connection {id} is to the killed server"
        );
        assert!(
            *id >= SIZE as u64,
            "connection {id} is one of the first {SIZE}"
        );
        assert!(got.is_ok(), "connection {id}: {got:?}");
    }
    let metrics = pool.metrics();
    assert_eq!(
        metrics.discarded(Discard::Invalid) + metrics.discarded(Discard::Broken),
        SIZE as u64,
        "{metrics}"
    );
    assert_eq!(metrics.created, 2 * SIZE as u64, "{metrics:?}");

    // A second outage, in which a caller's connects fail; then Redis comes back.
    server.kill();
    let error = within(PATIENCE, pool.get())
        .await
        .expect_err("no connection from a dead redis");
    assert!(
        matches!(error.last_error(), Some(Failure::Connect(e)) if e.is_connection_refusal()),
        "{error}"
    );
    let _server = RedisServer::start_on(port).await;
    let latest_run_id = run_id(&url).await;
    // Callers retry on their own schedule; the pool must serve one within PATIENCE.
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut conn = loop {
        match pool.get().await {
            Ok(conn) => break conn,
            Err(e) => failures.push(e.to_string()),
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the pool did not recover within {PATIENCE:?}: {failures:#?}"
        );
    };
    assert_eq!(conn.run_id, latest_run_id);
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn.conn)
        .await
        .expect("PING");
    assert_eq!(pong, "PONG");
}

/// HikariCP's spike test against Redis: 50 callers at once, connects that take 50 ms (a far
/// Redis), each caller holding its connection for one command. All are served, and the pool
/// opens few connections, as the pool's metrics and Redis's own CLIENT LIST agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spike_of_50_gets_opens_few_redis_connections() {
    const CALLERS: usize = 50;
    const CONNECT_DELAY: Duration = Duration::from_millis(50);
    const MAX_CONNECTING: usize = 2;
    let (url, _own) = shared_or_own().await;
    let name = unique_key("spike").replace(':', "-");
    let manager = Redis {
        connect_delay: CONNECT_DELAY,
        name: Some(name.clone()),
        ..Redis::new(&url)
    };
    let pool = Pool::builder(manager)
        .max_size(CALLERS)
        .max_concurrent_connects(MAX_CONNECTING)
        .acquire_timeout(PATIENCE)
        .build()
        .expect("a valid pool");
    let counter = unique_key("spike_counter");

    let started = Instant::now();
    let mut callers = JoinSet::new();
    for _ in 0..CALLERS {
        let pool = pool.clone();
        let counter = counter.clone();
        callers.spawn(async move {
            let mut conn = pool.get().await?;
            redis::cmd("INCR")
                .arg(&counter)
                .query_async::<i64>(&mut conn.conn)
                .await
                .expect("INCR");
            Ok::<u64, Error<redis::RedisError>>(conn.id)
        });
    }
    let results = within(PATIENCE, callers.join_all()).await;
    let metrics = pool.metrics();
    let elapsed = started.elapsed();
    eprintln!(
        "redis spike: {CALLERS} callers served in {elapsed:?} by {} connections",
        metrics.created
    );
    assert!(
        results.iter().all(Result::is_ok),
        "every caller is served: {results:?}"
    );

    // At most MAX_CONNECTING connects in flight, each at least CONNECT_DELAY long: by
    // `elapsed`, at most MAX_CONNECTING × ⌊elapsed / CONNECT_DELAY⌋ completed.
    let paced = MAX_CONNECTING as u64 * (elapsed.as_millis() / CONNECT_DELAY.as_millis()) as u64;
    assert!(
        metrics.created <= paced,
        "created {} connections in {elapsed:?}",
        metrics.created
    );
    // One connection per caller would be 50; the single-command holds are served by a few.
    assert!(
        (1..=16).contains(&metrics.created),
        "the spike opened {} connections: {metrics}",
        metrics.created
    );

    // Redis's view: once the connects in flight have landed, it lists exactly the pool's
    // connections under their name.
    let settle = Instant::now();
    while pool.metrics().connecting > 0 {
        assert!(settle.elapsed() < PATIENCE, "connects never finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let metrics = pool.metrics();
    let mut conn = pool.get().await.expect("a connection");
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn.conn)
        .await
        .expect("CLIENT LIST");
    let listed = clients
        .lines()
        .filter(|line| line.split(' ').any(|field| field == format!("name={name}")))
        .count();
    assert_eq!(listed as u64, metrics.created, "CLIENT LIST:\n{clients}");
    assert_eq!(metrics.size as u64, metrics.created, "{metrics}");
    let total: i64 = redis::cmd("GET")
        .arg(&counter)
        .query_async(&mut conn.conn)
        .await
        .expect("GET");
    assert_eq!(total, CALLERS as i64);
    redis::cmd("DEL")
        .arg(&counter)
        .query_async::<()>(&mut conn.conn)
        .await
        .expect("DEL");
    drop(conn);
    pool.close(Duration::from_secs(1))
        .await
        .expect("every connection back");
}

/// A Redis connect slower than `connect_timeout` (a 60 s delay stands in for an overloaded,
/// far server) is cut at the timeout and reported as `Failure::ConnectTimeout`.
#[tokio::test]
async fn slow_redis_connect_is_cut_by_connect_timeout() {
    let (url, _own) = shared_or_own().await;
    let manager = Redis {
        connect_delay: Duration::from_secs(60),
        ..Redis::new(&url)
    };
    let pool = Pool::builder(manager)
        .acquire_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(50))
        .build()
        .expect("a valid pool");
    let error = within(PATIENCE, pool.get())
        .await
        .expect_err("no connect completes");
    assert!(
        matches!(
            error.last_error(),
            Some(Failure::ConnectTimeout(d)) if *d == Duration::from_millis(50)
        ),
        "{error}"
    );
}
