//! The cache-aside workload, per `shared/spec/history.md`.
//!
//! Each client lives in a region. A write commits a new version with a unique write id
//! in one transaction (the items row and the version log); with `writer` invalidation
//! the client then deletes the key in every region. A read goes to the region's cache;
//! on a miss the client reads the database and fills the cache, plainly (SET with TTL)
//! or versioned (a script that refuses a version older than the one cached or recently
//! invalidated). Every call has a timeout: an outcome that is not known is `info`, and
//! only a certain failure is `fail`. After the time limit comes the final phase:
//! quiesce, then `final-read` every key on every cache node and `db-final-read` every
//! key with its version log.

use crate::campaign::{CacheReads, DbReads, Distribution, Fill, Invalidation, Workload};
use anyhow::{Context, Result};
use coherence_store::recorder::Recorder;
use coherence_store::{Event, EventType, Process};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A server the workload talks to, and the name the history gives it.
#[derive(Debug, Clone)]
pub struct Node {
    /// The name in the history (`r1a`, `db1`, ...).
    pub name: String,
    /// `host:port`.
    pub addr: String,
}

/// One region's caches.
#[derive(Debug, Clone)]
pub struct RegionNodes {
    /// The region's name.
    pub name: String,
    /// Its Redis primary at the start.
    pub primary: Node,
    /// Its replica, if any.
    pub replica: Option<Node>,
    /// Sentinels (`host:port`) that know the region's current primary, by
    /// `master_name`. After an error on the primary, clients ask them again: a failover
    /// may have moved it. Empty: the primary is fixed.
    pub sentinels: Vec<String>,
    /// The region's name at the Sentinels.
    pub master_name: String,
    /// Every Redis node of the region, to name the addresses Sentinel returns (the
    /// primary and replica are among them; empty means just those two).
    pub nodes: Vec<Node>,
}

impl RegionNodes {
    /// Every cache node of the region: `nodes`, or the primary and the replica.
    pub fn all(&self) -> Vec<Node> {
        if self.nodes.is_empty() {
            std::iter::once(self.primary.clone())
                .chain(self.replica.clone())
                .collect()
        } else {
            self.nodes.clone()
        }
    }
}

/// Where everything is.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The PostgreSQL servers writes may go to. With more than one, a client connects to
    /// the first, in an order of its own, that is not in recovery (a primary), as libpq
    /// does with `target_session_attrs=read-write`; it looks again after its connection
    /// is lost or a write is refused as read-only: so writers follow a failover.
    pub db_writers: Vec<Node>,
    /// The servers for database reads after a miss: a standby when one answers,
    /// else a primary.
    pub db_readers: Vec<Node>,
    /// A libpq connection string without host and port (user, password, dbname).
    pub db_params: String,
    /// Cache regions.
    pub regions: Vec<RegionNodes>,
}

/// A region's primary and replica as the clients currently know them.
#[derive(Debug, Clone)]
struct RegionNow {
    primary: Node,
    replica: Option<Node>,
    /// When its Sentinels were last asked.
    asked: Option<Instant>,
}

/// What the clients currently know of where each region's primary is.
struct Topology {
    regions: Vec<std::sync::Mutex<RegionNow>>,
}

impl Topology {
    fn new(ends: &Endpoints) -> Topology {
        Topology {
            regions: ends
                .regions
                .iter()
                .map(|r| {
                    std::sync::Mutex::new(RegionNow {
                        primary: r.primary.clone(),
                        replica: r.replica.clone(),
                        asked: None,
                    })
                })
                .collect(),
        }
    }

    fn now(&self, region: usize) -> RegionNow {
        self.regions[region]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks the region's Sentinels for its primary, at most every 200 ms whoever asks.
    async fn refresh(&self, ends: &Endpoints, region: usize) {
        let r = &ends.regions[region];
        if r.sentinels.is_empty() {
            return;
        }
        {
            let mut now = self.regions[region]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if now
                .asked
                .is_some_and(|t| t.elapsed() < Duration::from_millis(200))
            {
                return;
            }
            now.asked = Some(Instant::now());
        }
        let nodes = r.all();
        for sentinel in &r.sentinels {
            let Ok(Ok(addr)) = tokio::time::timeout(
                Duration::from_millis(500),
                sentinel_primary(sentinel, &r.master_name),
            )
            .await
            else {
                continue;
            };
            let Some(primary) = nodes.iter().find(|n| n.addr == addr) else {
                continue;
            };
            let mut now = self.regions[region]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if now.primary.addr != primary.addr {
                now.replica = nodes.iter().find(|n| n.addr != primary.addr).cloned();
                now.primary = primary.clone();
            }
            return;
        }
    }
}

/// The `host:port` a Sentinel names as `master`'s primary.
async fn sentinel_primary(sentinel: &str, master: &str) -> Result<String, redis::RedisError> {
    let client = redis::Client::open(format!("redis://{sentinel}/"))?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let (ip, port): (String, String) = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query_async(&mut con)
        .await?;
    Ok(format!("{ip}:{port}"))
}

/// Where Redis keeps the version a key was last invalidated for (versioned fills).
fn tombstone(key: &str) -> String {
    format!("coherence:invalidated:{key}")
}

/// Installs a value unless the cache holds a newer one or the key was invalidated for a
/// newer version. KEYS: key, tombstone. ARGV: value, version, ttl ms.
const FILL_VERSIONED: &str = r#"
local cur = redis.call('GET', KEYS[1])
local new = tonumber(ARGV[2])
if cur then
  local ok, v = pcall(cjson.decode, cur)
  if ok and v['version'] and v['version'] >= new then return 0 end
end
local tomb = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tomb > new then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"#;

/// Deletes a key and remembers the version it was invalidated for.
/// KEYS: key, tombstone. ARGV: version, ttl ms.
pub const INVALIDATE_VERSIONED: &str = r#"
redis.call('DEL', KEYS[1])
local tomb = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tonumber(ARGV[1]) > tomb then redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) end
return 1
"#;

/// The name of key `i`.
pub fn key_name(i: u32) -> String {
    format!("k{i}")
}

/// How an operation ended, as the history says it.
enum Outcome {
    Ok(Value),
    Fail(String),
    Info(String),
}

/// A failure and whether it certainly had no effect.
struct OpError {
    message: String,
    certain: bool,
}

impl OpError {
    fn certain(e: impl std::fmt::Display) -> OpError {
        OpError {
            message: e.to_string(),
            certain: true,
        }
    }
    fn unknown(e: impl std::fmt::Display) -> OpError {
        OpError {
            message: e.to_string(),
            certain: false,
        }
    }
}

/// One new version and its log entry, committed together: one statement is one
/// transaction.
const WRITE: &str = "WITH bumped AS (\
        UPDATE items SET version = version + 1, write_id = $2, updated_at = now() \
        WHERE key = $1 RETURNING key, version) \
    INSERT INTO item_versions (key, version, write_id) \
    SELECT key, version, $2 FROM bumped RETURNING version";

/// A key's current version.
const READ: &str = "SELECT version, write_id FROM items WHERE key = $1";

/// A database connection with the workload's statements prepared.
struct Db {
    /// The server's name.
    node: String,
    client: tokio_postgres::Client,
    write: Option<tokio_postgres::Statement>,
    read: tokio_postgres::Statement,
}

struct Client {
    rec: Arc<Recorder>,
    ends: Arc<Endpoints>,
    topo: Arc<Topology>,
    work: Arc<Workload>,
    process: i64,
    region: usize,
    /// Where this client starts looking for a database primary among the writers.
    rotation: usize,
    /// The server that served the operation under way, when it is not the one named
    /// at its invocation (a client that followed a failover).
    served: Option<String>,
    redis: HashMap<String, MultiplexedConnection>,
    writer: Option<Db>,
    reader: Option<Db>,
    writes: u64,
    id: u32,
}

fn event(process: i64, kind: EventType, f: &str, key: &str, node: &str, region: &str) -> Event {
    Event::new(0, Process::Client(process), kind, f)
        .key(key)
        .node(node)
        .extra("region", Value::String(region.to_string()))
}

async fn pg_connect(node: &Node, params: &str) -> Result<tokio_postgres::Client, OpError> {
    let (host, port) = node.addr.rsplit_once(':').unwrap_or((&node.addr, "5432"));
    let (client, conn) = tokio_postgres::connect(
        &format!("host={host} port={port} {params} connect_timeout=2"),
        tokio_postgres::NoTls,
    )
    .await
    .map_err(|e| OpError::certain(with_sources(&e)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// An error and what caused it, as one line: "error connecting to server: Connection
/// refused (os error 111)".
fn with_sources(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

async fn redis_connect(node: &Node) -> Result<MultiplexedConnection, OpError> {
    let client =
        redis::Client::open(format!("redis://{}/", node.addr)).map_err(OpError::certain)?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(OpError::certain)
}

impl Client {
    /// Runs one operation: logs the invoke, runs `body` under the timeout, logs the
    /// completion. After an `info` the client continues under a fresh process.
    async fn op<F>(
        &mut self,
        f: &str,
        key: &str,
        node: &str,
        value: Option<Value>,
        body: F,
    ) -> Outcome
    where
        F: AsyncFnOnce(&mut Client) -> Result<Value, OpError>,
    {
        let region = self.ends.regions[self.region].name.clone();
        let mut invoke = event(self.process, EventType::Invoke, f, key, node, &region);
        if let Some(v) = value.clone() {
            invoke = invoke.value(v);
        }
        self.rec.log(invoke);
        self.served = None;
        let timeout = self.work.op_timeout;
        let result = match tokio::time::timeout(timeout, body(self)).await {
            Ok(r) => r,
            Err(_) => Err(OpError::unknown(format!("timed out after {timeout:?}"))),
        };
        let outcome = match result {
            Ok(v) => Outcome::Ok(v),
            Err(e) if e.certain => Outcome::Fail(e.message),
            Err(e) => Outcome::Info(e.message),
        };
        let (kind, v, error) = match &outcome {
            Outcome::Ok(v) => (EventType::Ok, Some(v.clone()), None),
            Outcome::Fail(e) => (EventType::Fail, value, Some(e.clone())),
            Outcome::Info(e) => (EventType::Info, value, Some(e.clone())),
        };
        let served = self.served.take();
        let mut done = event(
            self.process,
            kind,
            f,
            key,
            served.as_deref().unwrap_or(node),
            &region,
        );
        if let Some(v) = v {
            done = done.value(v);
        }
        if let Some(e) = error {
            done = done.error(e);
        }
        self.rec.log(done);
        if matches!(outcome, Outcome::Info(_)) {
            // The connections may be mid-request: start over with fresh ones.
            self.process = self.rec.new_process();
            self.redis.clear();
            self.writer = None;
            self.reader = None;
        }
        outcome
    }

    async fn redis(&mut self, node: &Node) -> Result<MultiplexedConnection, OpError> {
        if let Some(c) = self.redis.get(&node.addr) {
            return Ok(c.clone());
        }
        let c = redis_connect(node).await?;
        self.redis.insert(node.addr.clone(), c.clone());
        Ok(c)
    }

    /// GETs a key from a cache node: its versioned value, or null for a miss.
    async fn cache_get(&mut self, node: &Node, key: &str) -> Result<Value, OpError> {
        let mut con = self.redis(node).await?;
        let got: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut con)
            .await
            .map_err(redis_error)?;
        match got {
            None => Ok(Value::Null),
            Some(s) => serde_json::from_str(&s)
                .map_err(|e| OpError::certain(format!("not a versioned value: {e}"))),
        }
    }

    /// The connection for writes (`reader == false`) or for reads after a miss,
    /// finding the server first if there is none.
    async fn db(&mut self, reader: bool) -> Result<&mut Db, OpError> {
        let slot = if reader { &self.reader } else { &self.writer };
        if slot.as_ref().is_none_or(|db| db.client.is_closed()) {
            let db = self.find_db(reader).await?;
            if reader {
                self.reader = Some(db);
            } else {
                self.writer = Some(db);
            }
        }
        let db = if reader {
            self.reader.as_mut()
        } else {
            self.writer.as_mut()
        }
        .expect("connected");
        self.served = Some(db.node.clone());
        Ok(db)
    }

    /// Connects to the writer (a primary, tried in this client's order) or the reader
    /// (a standby if one answers, else a primary), with the statements prepared.
    async fn find_db(&self, reader: bool) -> Result<Db, OpError> {
        let candidates = if reader {
            &self.ends.db_readers
        } else {
            &self.ends.db_writers
        };
        let n = candidates.len().max(1);
        let order = (0..candidates.len()).map(|i| &candidates[(i + self.rotation) % n]);
        let mut fallback = None;
        let mut errors = Vec::new();
        for node in order {
            let client = match pg_connect(node, &self.ends.db_params).await {
                Ok(c) => c,
                Err(e) => {
                    errors.push(format!("{}: {}", node.name, e.message));
                    continue;
                }
            };
            if candidates.len() > 1 {
                let standby: bool = match client.query_one("SELECT pg_is_in_recovery()", &[]).await
                {
                    Ok(row) => row.get(0),
                    Err(e) => {
                        errors.push(format!("{}: {e}", node.name));
                        continue;
                    }
                };
                if standby != reader {
                    // A standby cannot take writes; a primary is the reader's last resort.
                    if reader && fallback.is_none() {
                        fallback = Some((node, client));
                    } else {
                        errors.push(format!("{}: in recovery", node.name));
                    }
                    continue;
                }
            }
            return prepared(node, client, reader).await;
        }
        match fallback {
            Some((node, client)) => prepared(node, client, reader).await,
            None => Err(OpError::certain(format!(
                "no {} among the database servers ({})",
                if reader { "server" } else { "primary" },
                errors.join("; ")
            ))),
        }
    }

    async fn write(&mut self, key: &str) {
        self.writes += 1;
        let id = format!("w{}-{}", self.id, self.writes);
        let node = self.db_name(false);
        let k = key.to_string();
        let wid = id.clone();
        let outcome = self
            .op(
                "write",
                key,
                &node,
                Some(json!({"write": id})),
                async move |c: &mut Client| {
                    let db = c.db(false).await?;
                    let statement = db.write.clone().expect("the writer prepares WRITE");
                    let row = match db.client.query_one(&statement, &[&k, &wid]).await {
                        Ok(row) => row,
                        Err(e) => {
                            if e.code()
                                == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
                            {
                                // No longer a primary: look for the one there is now.
                                c.writer = None;
                            }
                            return Err(pg_error(e));
                        }
                    };
                    let version: i64 = row.get(0);
                    Ok(json!({"version": version, "write": wid}))
                },
            )
            .await;
        if let (Outcome::Ok(v), Invalidation::Writer) = (outcome, self.work.invalidation) {
            let version = v["version"].as_i64().unwrap_or(0);
            for r in 0..self.ends.regions.len() {
                self.invalidate(key, r, version).await;
            }
        }
    }

    async fn invalidate(&mut self, key: &str, region: usize, version: i64) {
        let node = self.topo.now(region).primary;
        let (k, n) = (key.to_string(), node.clone());
        let fill = self.work.fill;
        let ttl = self.work.ttl.as_millis() as u64;
        self.op(
            "invalidate",
            key,
            &node.name,
            None,
            async move |c: &mut Client| {
                let mut con = c.redis(&n).await?;
                match fill {
                    Fill::Plain => {
                        let _: i64 = redis::cmd("DEL")
                            .arg(&k)
                            .query_async(&mut con)
                            .await
                            .map_err(redis_error)?;
                    }
                    Fill::Versioned => {
                        let _: i64 = redis::Script::new(INVALIDATE_VERSIONED)
                            .key(&k)
                            .key(tombstone(&k))
                            .arg(version)
                            .arg(ttl)
                            .invoke_async(&mut con)
                            .await
                            .map_err(redis_error)?;
                    }
                }
                Ok(Value::Null)
            },
        )
        .await
        .failed_on(self, region)
        .await;
    }

    async fn read(&mut self, key: &str) {
        let region_i = self.region;
        let region = self.topo.now(region_i);
        let node = match (self.work.cache_reads, &region.replica) {
            (CacheReads::Replica, Some(r)) => r.clone(),
            _ => region.primary.clone(),
        };
        let (k, n) = (key.to_string(), node.clone());
        let outcome = self
            .op(
                "read",
                key,
                &node.name,
                None,
                async move |c: &mut Client| c.cache_get(&n, &k).await,
            )
            .await
            .failed_on(self, region_i)
            .await;
        if !matches!(outcome, Outcome::Ok(Value::Null)) {
            return;
        }
        // A miss: read the database, then fill the cache.
        let reader = self.work.db_reads == DbReads::Reader;
        let db_node = self.db_name(reader);
        let k = key.to_string();
        let outcome = self
            .op(
                "db-read",
                key,
                &db_node,
                None,
                async move |c: &mut Client| {
                    let db = c.db(reader).await?;
                    let row = db
                        .client
                        .query_one(&db.read, &[&k])
                        .await
                        .map_err(pg_error)?;
                    Ok(json!({"version": row.get::<_, i64>(0), "write": row.get::<_, String>(1)}))
                },
            )
            .await;
        let Outcome::Ok(value) = outcome else { return };
        let primary = region.primary.clone();
        let primary_name = primary.name.clone();
        let (k, text) = (key.to_string(), value.to_string());
        let version = value["version"].as_i64().unwrap_or(0);
        let fill = self.work.fill;
        let ttl = self.work.ttl.as_millis() as u64;
        self.op(
            "fill",
            key,
            &primary_name,
            Some(value),
            async move |c: &mut Client| {
                let mut con = c.redis(&primary).await?;
                match fill {
                    Fill::Plain => {
                        let _: () = redis::cmd("SET")
                            .arg(&k)
                            .arg(&text)
                            .arg("PX")
                            .arg(ttl)
                            .query_async(&mut con)
                            .await
                            .map_err(redis_error)?;
                    }
                    Fill::Versioned => {
                        let installed: i64 = redis::Script::new(FILL_VERSIONED)
                            .key(&k)
                            .key(tombstone(&k))
                            .arg(&text)
                            .arg(version)
                            .arg(ttl)
                            .invoke_async(&mut con)
                            .await
                            .map_err(redis_error)?;
                        if installed == 0 {
                            return Err(OpError::certain(
                                "refused: the cache holds or was invalidated for a newer version",
                            ));
                        }
                    }
                }
                Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
            },
        )
        .await
        .failed_on(self, region_i)
        .await;
    }

    /// The database server an operation starts on: the current connection's, or the
    /// first this client will try.
    fn db_name(&self, reader: bool) -> String {
        let (slot, candidates) = if reader {
            (&self.reader, &self.ends.db_readers)
        } else {
            (&self.writer, &self.ends.db_writers)
        };
        match slot {
            Some(db) if !db.client.is_closed() => db.node.clone(),
            _ => candidates
                .get(self.rotation % candidates.len().max(1))
                .map(|n| n.name.clone())
                .unwrap_or_default(),
        }
    }
}

impl Outcome {
    /// After a failed cache operation in `region`, asks where its primary is now: a
    /// failover may have moved it (a `READONLY` refusal, a refused or lost connection).
    async fn failed_on(self, client: &mut Client, region: usize) -> Outcome {
        if !matches!(self, Outcome::Ok(_)) {
            if let Outcome::Fail(e) = &self {
                if e.starts_with("refused:") {
                    return self;
                }
            }
            client.redis.clear();
            client.topo.refresh(&client.ends, region).await;
        }
        self
    }
}

/// A connection with the workload's statements prepared once: a statement given as text
/// costs a round trip to prepare on every call.
async fn prepared(
    node: &Node,
    client: tokio_postgres::Client,
    reader: bool,
) -> Result<Db, OpError> {
    let write = if reader {
        None
    } else {
        Some(client.prepare(WRITE).await.map_err(OpError::certain)?)
    };
    let read = client.prepare(READ).await.map_err(OpError::certain)?;
    Ok(Db {
        node: node.name.clone(),
        client,
        write,
        read,
    })
}

/// A statement the server refused was rolled back: certain. Anything else (a dropped
/// connection, a timeout) may have committed: unknown.
fn pg_error(e: tokio_postgres::Error) -> OpError {
    if e.as_db_error().is_some() {
        OpError::certain(e)
    } else {
        OpError::unknown(e)
    }
}

/// Timeouts and dropped connections leave the outcome unknown; refusals are certain.
fn redis_error(e: redis::RedisError) -> OpError {
    if e.is_timeout() || e.is_connection_dropped() || e.is_io_error() && !e.is_connection_refusal()
    {
        OpError::unknown(e)
    } else {
        OpError::certain(e)
    }
}

/// Picks keys by the campaign's distribution.
struct Keys {
    n: u32,
    zipf: Option<rand_distr::Zipf<f64>>,
}

impl Keys {
    fn new(w: &Workload) -> Keys {
        let zipf = match w.distribution {
            Distribution::Uniform => None,
            Distribution::Zipf { exponent } => rand_distr::Zipf::new(w.keys as f64, exponent).ok(),
        };
        Keys { n: w.keys, zipf }
    }

    fn pick(&self, rng: &mut ChaCha8Rng) -> String {
        let i = match &self.zipf {
            Some(z) => (rng.sample(z) as u32).saturating_sub(1).min(self.n - 1),
            None => rng.random_range(0..self.n),
        };
        key_name(i)
    }
}

/// Checks, before a run, that the database writer and every region's primary answer:
/// a campaign whose endpoints are wrong is refused, not run against nothing.
pub async fn preflight(ends: &Endpoints) -> Result<()> {
    let within = Duration::from_secs(5);
    for node in ends.db_writers.iter().take(1) {
        let connected = tokio::time::timeout(within, pg_connect(node, &ends.db_params)).await;
        match connected {
            Ok(Ok(client)) => {
                client
                    .query_one(READ, &[&key_name(0)])
                    .await
                    .with_context(|| {
                        format!(
                            "the database at {} has no row for {}: create the workload's tables and rows (see lab/src/schema.rs)",
                            node.addr,
                            key_name(0)
                        )
                    })?;
            }
            Ok(Err(e)) => anyhow::bail!(
                "cannot reach the database writer {} ({}): {}; check [cluster.postgres]",
                node.name,
                node.addr,
                e.message
            ),
            Err(_) => anyhow::bail!(
                "the database writer {} ({}) did not answer within {within:?}; check [cluster.postgres]",
                node.name,
                node.addr
            ),
        }
    }
    for region in &ends.regions {
        let node = &region.primary;
        let ping = async {
            let mut con = redis_connect(node).await.map_err(|e| e.message)?;
            redis::cmd("PING")
                .query_async::<String>(&mut con)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(within, ping).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!(
                "cannot reach region {}'s Redis primary {} ({}): {e}; check its [[cluster.regions]] entry",
                region.name,
                node.name,
                node.addr
            ),
            Err(_) => anyhow::bail!(
                "region {}'s Redis primary {} ({}) did not answer within {within:?}",
                region.name,
                node.name,
                node.addr
            ),
        }
    }
    Ok(())
}

/// What the progress bar shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Clients are running.
    Workload,
    /// Waiting for the system to settle.
    Quiesce,
    /// Reading the final state.
    Final,
}

/// Runs the workload until the time limit, then the final phase. `phase` is told when
/// the run moves on; `stop` ends the workload early (Ctrl-C).
pub async fn run(
    work: Workload,
    ends: Endpoints,
    rec: Arc<Recorder>,
    phase: impl Fn(Phase),
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let work = Arc::new(work);
    let ends = Arc::new(ends);
    let topo = Arc::new(Topology::new(&ends));
    let deadline = Instant::now() + work.time_limit;
    let keys = Arc::new(Keys::new(&work));
    let mut tasks = Vec::new();
    phase(Phase::Workload);
    for id in 0..work.concurrency {
        let mut client = Client {
            rec: rec.clone(),
            ends: ends.clone(),
            topo: topo.clone(),
            work: work.clone(),
            process: rec.new_process(),
            region: id as usize % ends.regions.len(),
            rotation: id as usize,
            served: None,
            redis: HashMap::new(),
            writer: None,
            reader: None,
            writes: 0,
            id,
        };
        let keys = keys.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(
                client
                    .work
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(id as u64),
            );
            let interval = (client.work.rate > 0).then(|| {
                Duration::from_secs_f64(client.work.concurrency as f64 / client.work.rate as f64)
            });
            let mut next = tokio::time::Instant::now();
            while Instant::now() < deadline && !*stop.borrow() {
                if let Some(i) = interval {
                    tokio::time::sleep_until(next).await;
                    next += i;
                }
                let key = keys.pick(&mut rng);
                if rng.random_bool(client.work.read_fraction) {
                    client.read(&key).await;
                } else {
                    client.write(&key).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("a client task panicked")?;
    }
    rec.flush();
    phase(Phase::Quiesce);
    tokio::time::sleep(work.quiesce).await;
    final_phase(&work, &ends, &rec).await?;
    phase(Phase::Final);
    rec.flush();
    Ok(())
}

/// Logs `final-phase`, then reads every key on every cache node and in the database.
async fn final_phase(work: &Workload, ends: &Endpoints, rec: &Arc<Recorder>) -> Result<()> {
    rec.log(
        Event::new(
            0,
            Process::Actor("control".into()),
            EventType::Info,
            "final-phase",
        )
        .value(json!({"quiesce_ms": work.quiesce.as_millis() as u64})),
    );
    let mut client = Client {
        rec: rec.clone(),
        ends: Arc::new(ends.clone()),
        topo: Arc::new(Topology::new(ends)),
        rotation: 0,
        served: None,
        work: Arc::new(Workload {
            // the final reads get more patience than the workload's calls
            op_timeout: work.op_timeout.max(Duration::from_secs(5)),
            ..work.clone()
        }),
        process: rec.new_process(),
        region: 0,
        redis: HashMap::new(),
        writer: None,
        reader: None,
        writes: 0,
        id: u32::MAX,
    };
    let nodes: Vec<(usize, Node)> = ends
        .regions
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.all().into_iter().map(move |n| (i, n)))
        .collect();
    for i in 0..work.keys {
        let key = key_name(i);
        for (region, node) in &nodes {
            client.region = *region;
            let (k, n) = (key.clone(), node.clone());
            client
                .op(
                    "final-read",
                    &key,
                    &node.name,
                    None,
                    async move |c: &mut Client| c.cache_get(&n, &k).await,
                )
                .await;
        }
        let k = key.clone();
        let db = client.db_name(false);
        client
            .op("db-final-read", &key, &db, None, async move |c: &mut Client| {
                let db = c.db(false).await?;
                let row = db
                    .client
                    .query_one(&db.read, &[&k])
                    .await
                    .map_err(pg_error)?;
                let log = db
                    .client
                    .query("SELECT version, write_id FROM item_versions WHERE key = $1 ORDER BY version", &[&k])
                    .await
                    .map_err(OpError::certain)?;
                let log: Vec<Value> = log
                    .iter()
                    .map(|r| json!([r.get::<_, i64>(0), r.get::<_, String>(1)]))
                    .collect();
                Ok(json!({"version": row.get::<_, i64>(0), "write": row.get::<_, String>(1), "log": log}))
            })
            .await;
    }
    Ok(())
}
