//! The lab's reference HTTP service: a small cache-aside application over one region's
//! Redis and the lab's PostgreSQL, as teams write them, with selectable designs that
//! are real mistakes (and a correct one). The lab runs one instance per region, in the
//! region's own host (`rN-app`, port [`crate::layout::SERVICE_PORT`]), started as
//! `coherence lab service`; the HTTP workload drives it and the checker judges what
//! its users saw.
//!
//! The service touches only its own region's cache: other regions rely on the lab's
//! invalidation pipeline (or stay stale), as they would in production.
//!
//! # Data
//! The lab's `items` table and its `item_versions` log (`crate::schema`), written as the
//! cache-aside workload writes them, so the lab's triggers, invalidators and a run's
//! final database reads work unchanged. The unique value a client writes is the row's
//! `write_id`; every write bumps `version` by one and logs `(key, version, write_id)` in
//! the same transaction. A key written for the first time is created as a prepared key
//! is, at version 0 by `init` (logged too), and then written: its first write is
//! version 1. The cached value is the workload's `{"version": n, "write": "<write id>"}`
//! (decoded as `versioned-json`), for [`Options::fill_ttl`].
//!
//! # API
//! Every response body is JSON.
//! - `GET /items/{key}`: the cache first; on a miss (or a cached value that is not the
//!   service's JSON) the database, then a fill of the cache as the design fills.
//!   - 200 `{"key": k, "value": "<write id>", "version": n, "source": "cache" | "db"}`
//!   - 404 `{"error": "..."}`: the database has no row for the key.
//!   - 503 `{"error": "..."}`: the cache or the database failed (nothing is guessed: a
//!     cache that does not answer is an error, not a reason to read the database).
//! - `PUT /items/{key}` with `{"value": "<unique>"}` (a non-empty string; other fields
//!   are ignored): commits the new version, touching the cache as the design says.
//!   - 200 `{"key": k, "value": "<unique>", "version": n}` once committed; when the
//!     cache step after the commit failed, also `"cache_error": "..."` (the write
//!     happened; the cache stays stale: that is the bug class).
//!   - 400 `{"error": "..."}`: the body is not such JSON.
//!   - 503 `{"error": "...", "applied": false}`: failed before COMMIT (connecting,
//!     BEGIN, a statement, a cache step the design takes before committing, or COMMIT
//!     refused by the server): certainly not applied.
//!   - 500 `{"error": "...", "applied": "unknown"}`: the outcome of COMMIT is unknown
//!     (the connection broke or timed out during it).
//! - `GET /health`: 200 `{"db": "ok", "cache": "ok"}` when both answer, else 503 with
//!   the error of each that failed (`{"db": "...", "cache": "..."}`).
//!
//! HTTP/1.1 with keep-alive. Every database statement is bounded by [`DB_PATIENCE`],
//! every cache command by [`CACHE_PATIENCE`]; a failed connection is dropped and the
//! next request finds the PostgreSQL primary (or the region's Redis primary, through
//! its Sentinels) again.

use crate::layout::{self, Host, Role, SERVICE_PORT};
use anyhow::{anyhow, bail, Context, Result};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use coherence_cache::{versioned, Backend, Node, RegionNodes};
use coherence_store::with_sources;
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strum::IntoEnumIterator;

/// How long one database statement (or connecting) may take.
pub const DB_PATIENCE: Duration = Duration::from_secs(5);

/// How long one cache command (or connecting, or asking a Sentinel) may take.
pub const CACHE_PATIENCE: Duration = Duration::from_secs(1);

/// How long `/health` waits for the database's answer.
pub const HEALTH_PATIENCE: Duration = Duration::from_secs(1);

/// How the service keeps its cache coherent: each design is one arm here and one write
/// function below (and, if it fills differently, an arm of [`ServiceDesign::fill`]).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    strum::EnumIter,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum ServiceDesign {
    /// Commit, then DEL the key; reads fill plainly after a miss. The classic, with its
    /// fill race: a reader that read the old row before the commit fills it after the
    /// DEL.
    #[default]
    DeleteAfterCommit,
    /// DEL, then commit: a reader between the two refills the old row.
    DeleteBeforeCommit,
    /// Commit, then SET the new value instead of deleting: concurrent writers' SETs
    /// arrive reordered and the older one stays.
    UpdateCache,
    /// DEL, commit, answer, and DEL again after [`Options::double_delete_delay`]: fewer
    /// stale fills survive, not none.
    DelayedDoubleDelete,
    /// Commit, then a versioned invalidation (a tombstone of the version) of its own
    /// region's cache and of every other region's ([`Options::remote`]) before it
    /// answers; reads fill with the versioned fill, which refuses an older version.
    /// Fresh at once without faults; coherent under faults together with the lab's
    /// outbox pipeline, which covers a region the service could not reach.
    Versioned,
    /// The service never deletes (the lab's invalidator does); reads fill plainly.
    Pipeline,
}

impl ServiceDesign {
    /// Every design, in declaration order.
    pub fn all() -> Vec<ServiceDesign> {
        ServiceDesign::iter().collect()
    }

    /// How its reads fill the cache after a miss.
    pub fn fill(self) -> Fill {
        match self {
            ServiceDesign::Versioned => Fill::Versioned,
            _ => Fill::Plain,
        }
    }

    /// Writes `value` as the new version of `key`, touching the cache as the design
    /// does.
    async fn write(self, svc: &Service, key: &str, value: &str) -> Result<Written, WriteError> {
        match self {
            ServiceDesign::DeleteAfterCommit => delete_after_commit(svc, key, value).await,
            ServiceDesign::DeleteBeforeCommit => delete_before_commit(svc, key, value).await,
            ServiceDesign::UpdateCache => update_cache(svc, key, value).await,
            ServiceDesign::DelayedDoubleDelete => delayed_double_delete(svc, key, value).await,
            ServiceDesign::Versioned => versioned_invalidation(svc, key, value).await,
            ServiceDesign::Pipeline => pipeline(svc, key, value).await,
        }
    }
}

impl fmt::Display for ServiceDesign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.into())
    }
}

impl FromStr for ServiceDesign {
    type Err = String;
    fn from_str(s: &str) -> Result<ServiceDesign, String> {
        ServiceDesign::iter()
            .find(|d| d.to_string() == s)
            .ok_or_else(|| {
                let names: Vec<String> = ServiceDesign::iter().map(|d| d.to_string()).collect();
                format!("unknown service design {s:?}: use {}", names.join(", "))
            })
    }
}

/// How a read fills the cache after a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// `SET key value PX ttl`.
    Plain,
    /// The versioned fill of `coherence_cache::versioned`: refused when the cache holds
    /// a newer version or the key was invalidated for one.
    Versioned,
}

/// How to run the service.
#[derive(Debug, Clone)]
pub struct Options {
    /// Its design.
    pub design: ServiceDesign,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Its region's caches: the primary and its Sentinels (none: the primary is fixed).
    pub cache: RegionNodes,
    /// The other regions' caches, which `versioned` invalidates too before it answers
    /// (none: only its own).
    pub remote: Vec<RegionNodes>,
    /// PostgreSQL servers (`host:port`); it writes to the one that is a primary (the
    /// first in this order that is), and looks again after an error.
    pub db: Vec<String>,
    /// TTL of filled values (and of `update-cache`'s SET).
    pub fill_ttl: Duration,
    /// `delayed-double-delete`'s delay before the second DEL.
    pub double_delete_delay: Duration,
    /// Database connections kept.
    pub connections: usize,
    /// How long to try again while the address is in use (the lab's instance this one
    /// replaces may not have let go of it yet; elsewhere 0: in use is an error).
    pub listen_wait: Duration,
}

impl Options {
    /// A service with the default TTL, delay and connections.
    pub fn new(
        design: ServiceDesign,
        listen: SocketAddr,
        cache: RegionNodes,
        db: Vec<String>,
    ) -> Options {
        Options {
            design,
            listen,
            cache,
            remote: Vec::new(),
            db,
            fill_ttl: Duration::from_secs(60),
            double_delete_delay: Duration::from_millis(500),
            connections: 16,
            listen_wait: Duration::ZERO,
        }
    }

    /// The service of `region` in a lab of `regions` regions (`rN`): listening on its
    /// app host, its cache the region's Redis through the region's Sentinels (and the
    /// other regions' for `versioned`), its database the lab's.
    pub fn lab(design: ServiceDesign, region: &str, regions: u32) -> Result<Options> {
        let n = region_number(region)?;
        if n > regions {
            bail!("the lab has {regions} regions: it has no {region}");
        }
        let hosts = layout::hosts(regions);
        let app = hosts
            .iter()
            .find(|h| h.role == Role::Service && h.region.as_deref() == Some(region))
            .ok_or_else(|| anyhow!("the lab has no service host in {region}"))?;
        let mut opts = Options::new(
            design,
            SocketAddr::from((app.addr, SERVICE_PORT)),
            crate::invalidator::region_nodes(&hosts, region),
            crate::invalidator::db_servers(regions)
                .iter()
                .map(|a| format!("{a}:{}", layout::PG_PORT))
                .collect(),
        );
        opts.listen_wait = Duration::from_secs(10);
        opts.remote = (1..=regions)
            .map(|i| format!("r{i}"))
            .filter(|r| r != region)
            .map(|r| crate::invalidator::region_nodes(&hosts, &r))
            .collect();
        Ok(opts)
    }

    /// A fixed Redis primary at `addr` (`host:port`), found through no Sentinel.
    pub fn fixed_cache(region: &str, addr: &str) -> RegionNodes {
        RegionNodes {
            name: region.to_string(),
            primary: Node {
                name: format!("{region}-cache"),
                addr: addr.to_string(),
            },
            replica: None,
            sentinels: Vec::new(),
            master_name: layout::master_name(region).to_string(),
            nodes: Vec::new(),
        }
    }
}

/// The number of a region named `rN` (1 to [`layout::MAX_REGIONS`]).
fn region_number(region: &str) -> Result<u32> {
    region
        .strip_prefix('r')
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| (1..=layout::MAX_REGIONS).contains(n))
        .ok_or_else(|| {
            anyhow!(
                "no lab region {region:?}: the lab's regions are r1 to r{}",
                layout::MAX_REGIONS
            )
        })
}

/// The lab's service hosts.
pub fn hosts(regions: u32) -> Vec<Host> {
    layout::hosts(regions)
        .into_iter()
        .filter(|h| h.role == Role::Service)
        .collect()
}

/// Runs the service until the process is killed or interrupted (Ctrl-C, SIGTERM).
pub fn run(opts: Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start an async runtime")?;
    /// Binds `addr`; while the address is in use, tries again for up to `wait` (the
    /// instance this one replaces may not have let go of it yet).
    async fn listen(addr: std::net::SocketAddr, wait: Duration) -> Result<tokio::net::TcpListener> {
        let start = std::time::Instant::now();
        loop {
            match tokio::net::TcpListener::bind(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && start.elapsed() < wait => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                r => return r.with_context(|| format!("cannot listen on {addr}")),
            }
        }
    }
    rt.block_on(async move {
        let listener = listen(opts.listen, opts.listen_wait).await?;
        serve(&opts, listener, stopped()).await
    })
}

/// Serves on `listener` until `shutdown` resolves (then finishes the requests under
/// way), on the current tokio runtime.
pub async fn serve(
    opts: &Options,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    {
        eprintln!(
            "service ({}) listening on {}; cache {} (sentinels: {}), database {}",
            opts.design,
            listener.local_addr().map_or(opts.listen, |a| a),
            opts.cache.primary.addr,
            if opts.cache.sentinels.is_empty() {
                "none".to_string()
            } else {
                opts.cache.sentinels.join(", ")
            },
            opts.db.join(", ")
        );
        let app = router(Arc::new(Service::new(opts)?));
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("the HTTP server failed")
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/items/{key}", get(get_item).put(put_item))
        .route("/health", get(health))
        .with_state(svc)
}

type Reply = (StatusCode, Json<Value>);

fn error(status: StatusCode, message: impl fmt::Display) -> Reply {
    (status, Json(json!({"error": message.to_string()})))
}

async fn get_item(State(svc): State<Arc<Service>>, Path(key): Path<String>) -> Reply {
    let cached = match svc.cache.get(&key).await {
        Ok(c) => c,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("cache: {e:#}")),
    };
    if let Some((version, write)) = cached.as_deref().and_then(decode) {
        return (
            StatusCode::OK,
            Json(json!({"key": key, "value": write, "version": version, "source": "cache"})),
        );
    }
    let row = match svc.db.read(&key).await {
        Ok(Some(row)) => row,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no item {key:?}")),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e:#}")),
    };
    let (version, write) = row;
    let text = encode(version, &write);
    let ttl = svc.fill_ttl_ms;
    let filled = match svc.design.fill() {
        Fill::Plain => svc.cache.set(&key, &text, ttl).await,
        Fill::Versioned => svc
            .cache
            .fill_versioned(&key, &text, version, ttl)
            .await
            .map(|_| ()),
    };
    if let Err(e) = filled {
        eprintln!("fill of {key} at version {version} failed: {e:#}");
    }
    (
        StatusCode::OK,
        Json(json!({"key": key, "value": write, "version": version, "source": "db"})),
    )
}

async fn put_item(
    State(svc): State<Arc<Service>>,
    Path(key): Path<String>,
    body: axum::body::Bytes,
) -> Reply {
    let value = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match v.get("value").and_then(Value::as_str) {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    r#"the body must be {"value": "<a non-empty string>"}"#,
                )
            }
        },
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(r#"the body is not JSON ({e}): send {{"value": "<a non-empty string>"}}"#),
            )
        }
    };
    match svc.design.write(&svc, &key, &value).await {
        Ok(w) => {
            let mut body = json!({"key": key, "value": value, "version": w.version});
            if let Some(e) = w.cache_error {
                eprintln!(
                    "{key} committed at version {} but the cache step failed: {e}",
                    w.version
                );
                body["cache_error"] = e.into();
            }
            (StatusCode::OK, Json(body))
        }
        Err(WriteError::NotApplied(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": e, "applied": false})),
        ),
        Err(WriteError::Unknown(e)) => {
            eprintln!("{key}: the outcome of COMMIT is unknown: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": e, "applied": "unknown"})),
            )
        }
    }
}

async fn health(State(svc): State<Arc<Service>>) -> Reply {
    let (db, cache) = tokio::join!(svc.db.ping(), svc.cache.ping());
    let said = |r: &Result<()>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("{e:#}"),
    };
    let status = if db.is_ok() && cache.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"db": said(&db), "cache": said(&cache)})),
    )
}

/// The cached value of a version: the cache-aside workload's JSON.
pub fn encode(version: i64, write: &str) -> String {
    json!({"version": version, "write": write}).to_string()
}

/// A cached value's version and write id, if it is the service's JSON.
pub fn decode(text: &str) -> Option<(i64, String)> {
    let v: Value = serde_json::from_str(text).ok()?;
    Some((v["version"].as_i64()?, v["write"].as_str()?.to_string()))
}

/// A committed write.
#[derive(Debug)]
struct Written {
    version: i64,
    /// The cache step after the commit failed.
    cache_error: Option<String>,
}

/// A write that failed.
#[derive(Debug)]
enum WriteError {
    /// Certainly not applied.
    NotApplied(String),
    /// Perhaps applied.
    Unknown(String),
}

fn committed(version: i64, after: Result<()>) -> Written {
    Written {
        version,
        cache_error: after.err().map(|e| format!("{e:#}")),
    }
}

fn before_commit(e: anyhow::Error) -> WriteError {
    WriteError::NotApplied(format!(
        "cache (before the commit; nothing was written): {e:#}"
    ))
}

async fn delete_after_commit(svc: &Service, key: &str, value: &str) -> Result<Written, WriteError> {
    let version = svc.db.write(key, value).await?;
    Ok(committed(version, svc.cache.del(key).await))
}

async fn delete_before_commit(
    svc: &Service,
    key: &str,
    value: &str,
) -> Result<Written, WriteError> {
    svc.cache.del(key).await.map_err(before_commit)?;
    let version = svc.db.write(key, value).await?;
    Ok(committed(version, Ok(())))
}

async fn update_cache(svc: &Service, key: &str, value: &str) -> Result<Written, WriteError> {
    let version = svc.db.write(key, value).await?;
    let text = encode(version, value);
    Ok(committed(
        version,
        svc.cache.set(key, &text, svc.fill_ttl_ms).await,
    ))
}

async fn delayed_double_delete(
    svc: &Service,
    key: &str,
    value: &str,
) -> Result<Written, WriteError> {
    svc.cache.del(key).await.map_err(before_commit)?;
    let version = svc.db.write(key, value).await?;
    let (cache, key, delay) = (svc.cache.clone(), key.to_string(), svc.double_delete_delay);
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if let Err(e) = cache.del(&key).await {
            eprintln!("the second DEL of {key} (version {version}) failed: {e:#}");
        }
    });
    Ok(committed(version, Ok(())))
}

async fn versioned_invalidation(
    svc: &Service,
    key: &str,
    value: &str,
) -> Result<Written, WriteError> {
    let version = svc.db.write(key, value).await?;
    // Every region at once; an error names the region (the outbox relay still covers it).
    let all = std::iter::once(&svc.cache).chain(&svc.remote);
    let results =
        futures_util::future::join_all(all.map(|c| c.invalidate_versioned(key, version))).await;
    let errors: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    Ok(Written {
        version,
        cache_error: (!errors.is_empty()).then(|| errors.join("; ")),
    })
}

async fn pipeline(svc: &Service, key: &str, value: &str) -> Result<Written, WriteError> {
    let version = svc.db.write(key, value).await?;
    Ok(committed(version, Ok(())))
}

/// The running service's shared parts.
struct Service {
    design: ServiceDesign,
    fill_ttl_ms: u64,
    double_delete_delay: Duration,
    cache: Arc<Cache>,
    /// The other regions' caches (`versioned` only).
    remote: Vec<Arc<Cache>>,
    db: Pool,
}

impl Service {
    fn new(opts: &Options) -> Result<Service> {
        if opts.db.is_empty() {
            bail!("the service needs a database server");
        }
        Ok(Service {
            design: opts.design,
            fill_ttl_ms: u64::try_from(opts.fill_ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            double_delete_delay: opts.double_delete_delay,
            cache: Arc::new(Cache::new(&opts.cache)),
            remote: match opts.design {
                ServiceDesign::Versioned => opts
                    .remote
                    .iter()
                    .map(|r| Arc::new(Cache::new(r)))
                    .collect(),
                _ => Vec::new(),
            },
            db: Pool::new(opts.db.clone(), opts.connections.max(1)),
        })
    }
}

/// The region's cache primary: one multiplexed connection, found again through the
/// region's Sentinels after an error.
struct Cache {
    backend: Arc<dyn Backend>,
    /// The primary as last learned.
    primary: Mutex<Node>,
    /// The connection and its generation (so that a request that failed on an old
    /// connection does not drop a new one).
    con: Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicUsize,
    /// Held while connecting, so that one request connects and the others wait for it.
    connecting: tokio::sync::Mutex<()>,
}

impl Cache {
    fn new(region: &RegionNodes) -> Cache {
        Cache {
            backend: coherence_cache::open(region, CACHE_PATIENCE),
            primary: Mutex::new(region.primary.clone()),
            con: Mutex::new(None),
            generation: AtomicUsize::new(0),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.con.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn connection(&self) -> Result<(u64, MultiplexedConnection)> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        if let Some(found) = self.backend.primary(0).await {
            *self.primary.lock().unwrap_or_else(|e| e.into_inner()) = found.primary;
        }
        let node = self
            .primary
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut con = tokio::time::timeout(CACHE_PATIENCE, self.backend.connect(&node))
            .await
            .map_err(|_| anyhow!("connecting to the cache at {} timed out", node.addr))?
            .with_context(|| format!("cannot connect to the cache at {}", node.addr))?;
        con.set_response_timeout(CACHE_PATIENCE);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) as u64 + 1;
        *self.con.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, con.clone()));
        Ok((generation, con))
    }

    /// Runs one command on the primary; after an error the connection is dropped, and
    /// the next command asks the Sentinels where the primary is.
    async fn call<T, F>(
        &self,
        what: &str,
        command: impl FnOnce(MultiplexedConnection) -> F,
    ) -> Result<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let (generation, con) = self.connection().await?;
        let result = match tokio::time::timeout(CACHE_PATIENCE, command(con)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => Err(anyhow!("{what} failed: {e}")),
            Err(_) => Err(anyhow!("{what} timed out")),
        };
        let mut con = self.con.lock().unwrap_or_else(|e| e.into_inner());
        if con.as_ref().is_some_and(|(g, _)| *g == generation) {
            *con = None;
        }
        result
    }

    async fn get(&self, key: &str) -> Result<Option<String>> {
        self.call("GET", |mut con| async move {
            redis::cmd("GET").arg(key).query_async(&mut con).await
        })
        .await
    }

    async fn del(&self, key: &str) -> Result<()> {
        self.call("DEL", |mut con| async move {
            redis::cmd("DEL")
                .arg(key)
                .query_async::<i64>(&mut con)
                .await
                .map(|_| ())
        })
        .await
    }

    async fn set(&self, key: &str, value: &str, ttl_ms: u64) -> Result<()> {
        self.call("SET", |mut con| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<()>(&mut con)
                .await
        })
        .await
    }

    async fn fill_versioned(
        &self,
        key: &str,
        value: &str,
        version: i64,
        ttl_ms: u64,
    ) -> Result<bool> {
        self.call("the versioned fill", |mut con| async move {
            versioned::fill(&mut con, key, value, version, ttl_ms).await
        })
        .await
    }

    async fn invalidate_versioned(&self, key: &str, version: i64) -> Result<()> {
        let ttl = versioned::TOMBSTONE_TTL.as_millis() as u64;
        self.call("the versioned invalidation", |mut con| async move {
            versioned::invalidate(&mut con, key, version, ttl).await
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.call("PING", |mut con| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut con)
                .await
                .map(|_| ())
        })
        .await
    }
}

/// Statements of the service, as the cache-aside workload writes and reads.
mod sql {
    /// One new version and its log entry (the workload's statement).
    pub const WRITE: &str = "WITH bumped AS (\
            UPDATE items SET version = version + 1, write_id = $2, updated_at = now() \
            WHERE key = $1 RETURNING key, version) \
        INSERT INTO item_versions (key, version, write_id) \
        SELECT key, version, $2 FROM bumped RETURNING version";
    /// A key written for the first time starts as a prepared key does.
    pub const CREATE: &str =
        "INSERT INTO items (key, version, write_id) VALUES ($1, 0, 'init') ON CONFLICT (key) DO NOTHING";
    /// Its log entry.
    pub const CREATE_LOG: &str =
        "INSERT INTO item_versions (key, version, write_id) VALUES ($1, 0, 'init')";
    /// A key's current version.
    pub const READ: &str = "SELECT version, write_id FROM items WHERE key = $1";
}

/// One database connection with the statements prepared.
struct Db {
    client: tokio_postgres::Client,
    write: tokio_postgres::Statement,
    create: tokio_postgres::Statement,
    create_log: tokio_postgres::Statement,
    read: tokio_postgres::Statement,
}

/// A fixed set of connections to the PostgreSQL primary, each made when first needed
/// and dropped after an error.
struct Pool {
    candidates: Vec<String>,
    slots: Vec<tokio::sync::Mutex<Option<Db>>>,
    next: AtomicUsize,
}

/// Awaits a database step for at most [`DB_PATIENCE`].
async fn bounded<T>(
    what: &str,
    step: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StepError> {
    match tokio::time::timeout(DB_PATIENCE, step).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(StepError {
            refused: e.as_db_error().is_some(),
            message: format!("{what}: {}", with_sources(&e)),
        }),
        Err(_) => Err(StepError {
            refused: false,
            message: format!("{what} timed out after {DB_PATIENCE:?}"),
        }),
    }
}

/// A failed database step.
struct StepError {
    /// The server refused it (and rolled its transaction back).
    refused: bool,
    message: String,
}

impl Pool {
    fn new(candidates: Vec<String>, size: usize) -> Pool {
        Pool {
            candidates,
            slots: (0..size).map(|_| tokio::sync::Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A free connection slot, else the next one when it is free.
    async fn slot(&self) -> tokio::sync::MutexGuard<'_, Option<Db>> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(slot) = self.slots[(start + i) % n].try_lock() {
                return slot;
            }
        }
        self.slots[start % n].lock().await
    }

    /// The slot's connection, connecting to the primary first if it has none.
    async fn connected<'s>(&self, slot: &'s mut Option<Db>) -> Result<&'s mut Db> {
        if slot.as_ref().is_none_or(|db| db.client.is_closed()) {
            *slot = Some(self.connect().await?);
        }
        Ok(slot.as_mut().expect("connected"))
    }

    /// Connects to the first candidate that is a primary, with the statements prepared.
    async fn connect(&self) -> Result<Db> {
        let mut errors = Vec::new();
        for addr in &self.candidates {
            match self.connect_to(addr).await {
                Ok(db) => return Ok(db),
                Err(e) => errors.push(format!("{addr}: {e:#}")),
            }
        }
        bail!("no PostgreSQL primary answers ({})", errors.join("; "))
    }

    async fn connect_to(&self, addr: &str) -> Result<Db> {
        let client = self.open(addr).await?;
        let step = |e: StepError| anyhow!(e.message);
        let write = bounded("preparing", client.prepare(sql::WRITE))
            .await
            .map_err(step)?;
        let create = bounded("preparing", client.prepare(sql::CREATE))
            .await
            .map_err(step)?;
        let create_log = bounded("preparing", client.prepare(sql::CREATE_LOG))
            .await
            .map_err(step)?;
        let read = bounded("preparing", client.prepare(sql::READ))
            .await
            .map_err(step)?;
        Ok(Db {
            client,
            write,
            create,
            create_log,
            read,
        })
    }

    /// A connection to `addr`, if it is a primary (asked when there are candidates to
    /// choose from).
    async fn open(&self, addr: &str) -> Result<tokio_postgres::Client> {
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "5432"));
        let (client, conn) = tokio::time::timeout(
            DB_PATIENCE,
            tokio_postgres::connect(
                &format!("host={host} port={port} user=postgres dbname=postgres connect_timeout=2"),
                tokio_postgres::NoTls,
            ),
        )
        .await
        .map_err(|_| anyhow!("connecting timed out"))?
        .map_err(|e| anyhow!(with_sources(&e)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let step = |e: StepError| anyhow!(e.message);
        if self.candidates.len() > 1 {
            let row = bounded(
                "asking pg_is_in_recovery()",
                client.query_one("SELECT pg_is_in_recovery()", &[]),
            )
            .await
            .map_err(step)?;
            if row.get::<_, bool>(0) {
                bail!("a standby");
            }
        }
        Ok(client)
    }

    /// Commits `value` as the new version of `key`; the version.
    async fn write(&self, key: &str, value: &str) -> Result<i64, WriteError> {
        let mut slot = self.slot().await;
        let result = self.write_on(&mut slot, key, value).await;
        if result.is_err() {
            *slot = None;
        }
        result
    }

    async fn write_on(
        &self,
        slot: &mut Option<Db>,
        key: &str,
        value: &str,
    ) -> Result<i64, WriteError> {
        let not_applied = |e: StepError| WriteError::NotApplied(e.message);
        let db = self
            .connected(slot)
            .await
            .map_err(|e| WriteError::NotApplied(format!("database: {e:#}")))?;
        let Db {
            client,
            write,
            create,
            create_log,
            ..
        } = db;
        let tx = bounded("BEGIN", client.transaction())
            .await
            .map_err(not_applied)?;
        let mut row = bounded("UPDATE", tx.query_opt(&*write, &[&key, &value]))
            .await
            .map_err(not_applied)?;
        if row.is_none() {
            let created = bounded("INSERT", tx.execute(&*create, &[&key]))
                .await
                .map_err(not_applied)?;
            if created == 1 {
                bounded("INSERT", tx.execute(&*create_log, &[&key]))
                    .await
                    .map_err(not_applied)?;
            }
            row = bounded("UPDATE", tx.query_opt(&*write, &[&key, &value]))
                .await
                .map_err(not_applied)?;
        }
        let version: i64 = row
            .ok_or_else(|| WriteError::NotApplied(format!("the row of {key:?} vanished")))?
            .get(0);
        match bounded("COMMIT", tx.commit()).await {
            Ok(()) => Ok(version),
            Err(e) if e.refused => Err(WriteError::NotApplied(e.message)),
            Err(e) => Err(WriteError::Unknown(e.message)),
        }
    }

    /// The current version and write id of `key`, if it has a row.
    async fn read(&self, key: &str) -> Result<Option<(i64, String)>> {
        let mut slot = self.slot().await;
        let result = async {
            let db = self.connected(&mut slot).await?;
            let row = bounded("SELECT", db.client.query_opt(&db.read, &[&key]))
                .await
                .map_err(|e| anyhow!(e.message))?;
            anyhow::Ok(row.map(|r| (r.get(0), r.get(1))))
        }
        .await;
        if result.is_err() {
            *slot = None;
        }
        result
    }

    /// Whether a primary answers a new connection within [`HEALTH_PATIENCE`]: a new
    /// one, so that the answer says whether the database can be reached now, and a
    /// connection of the pool stuck on a request is not taken for the database.
    async fn ping(&self) -> Result<()> {
        tokio::time::timeout(HEALTH_PATIENCE, async {
            let mut errors = Vec::new();
            for addr in &self.candidates {
                match self.open(addr).await {
                    Ok(_) => return Ok(()),
                    Err(e) => errors.push(format!("{addr}: {e:#}")),
                }
            }
            bail!("no PostgreSQL primary answers ({})", errors.join("; "))
        })
        .await
        .unwrap_or_else(|_| Err(anyhow!("no answer within {HEALTH_PATIENCE:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn designs_have_kebab_case_names_that_parse_back() {
        let names: Vec<String> = ServiceDesign::all().iter().map(|d| d.to_string()).collect();
        assert_eq!(
            names,
            [
                "delete-after-commit",
                "delete-before-commit",
                "update-cache",
                "delayed-double-delete",
                "versioned",
                "pipeline"
            ]
        );
        for d in ServiceDesign::all() {
            assert_eq!(d.to_string().parse::<ServiceDesign>(), Ok(d));
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{d}\""));
        }
        let e = "delete".parse::<ServiceDesign>().unwrap_err();
        assert!(
            e.contains("delete-after-commit, delete-before-commit"),
            "{e}"
        );
        assert_eq!(ServiceDesign::default(), ServiceDesign::DeleteAfterCommit);
    }

    #[test]
    fn the_cached_value_is_the_workloads_json() {
        assert_eq!(encode(3, "w1-2"), r#"{"version":3,"write":"w1-2"}"#);
        assert_eq!(decode(&encode(3, "w1-2")), Some((3, "w1-2".to_string())));
        assert_eq!(decode("old"), None);
        assert_eq!(decode(r#"{"version":"x"}"#), None);
    }

    #[test]
    fn a_lab_service_listens_on_its_regions_app_host() {
        let o = Options::lab(ServiceDesign::Versioned, "r2", 2).unwrap();
        assert_eq!(o.listen.to_string(), "10.77.0.34:8080");
        assert_eq!(o.cache.primary.addr, "10.77.0.31:6379");
        assert_eq!(o.cache.sentinels.len(), 3);
        assert_eq!(o.db, ["10.77.0.11:5432", "10.77.0.12:5432"]);
        let remote: Vec<&str> = o.remote.iter().map(|r| r.primary.addr.as_str()).collect();
        assert_eq!(remote, ["10.77.0.21:6379"]);
        // r1's service reaches r2's cache too (the region count is the lab's).
        let o = Options::lab(ServiceDesign::Versioned, "r1", 2).unwrap();
        let remote: Vec<&str> = o.remote.iter().map(|r| r.primary.addr.as_str()).collect();
        assert_eq!(remote, ["10.77.0.31:6379"]);
        assert!(Options::lab(ServiceDesign::Versioned, "r3", 2).is_err());
        for bad in ["r0", "x1", "r10", ""] {
            assert!(
                Options::lab(ServiceDesign::Pipeline, bad, 2).is_err(),
                "{bad}"
            );
        }
    }
}
