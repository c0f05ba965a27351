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
use crate::recorder::Recorder;
use anyhow::{Context, Result};
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
    /// Its Redis primary.
    pub primary: Node,
    /// Its replica, if any.
    pub replica: Option<Node>,
}

/// Where everything is.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The PostgreSQL primary.
    pub db_writer: Node,
    /// The PostgreSQL reader endpoint.
    pub db_reader: Node,
    /// A libpq connection string without host and port (user, password, dbname).
    pub db_params: String,
    /// Cache regions.
    pub regions: Vec<RegionNodes>,
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
    client: tokio_postgres::Client,
    write: Option<tokio_postgres::Statement>,
    read: tokio_postgres::Statement,
}

struct Client {
    rec: Arc<Recorder>,
    ends: Arc<Endpoints>,
    work: Arc<Workload>,
    process: i64,
    region: usize,
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
    .map_err(OpError::certain)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
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
        let mut done = event(self.process, kind, f, key, node, &region);
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

    async fn db(&mut self, reader: bool) -> Result<&mut Db, OpError> {
        let (slot, node) = if reader {
            (&mut self.reader, &self.ends.db_reader)
        } else {
            (&mut self.writer, &self.ends.db_writer)
        };
        if slot.as_ref().is_none_or(|db| db.client.is_closed()) {
            let client = pg_connect(node, &self.ends.db_params).await?;
            // Prepared once per connection: a statement given as text costs a round
            // trip to prepare on every call.
            let write = if reader {
                None
            } else {
                Some(client.prepare(WRITE).await.map_err(OpError::certain)?)
            };
            let read = client.prepare(READ).await.map_err(OpError::certain)?;
            *slot = Some(Db {
                client,
                write,
                read,
            });
        }
        Ok(slot.as_mut().expect("connected"))
    }

    async fn write(&mut self, key: &str) {
        self.writes += 1;
        let id = format!("w{}-{}", self.id, self.writes);
        let node = self.ends.db_writer.name.clone();
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
                    let row = db
                        .client
                        .query_one(&statement, &[&k, &wid])
                        .await
                        .map_err(pg_error)?;
                    let version: i64 = row.get(0);
                    Ok(json!({"version": version, "write": wid}))
                },
            )
            .await;
        if let (Outcome::Ok(v), Invalidation::Writer) = (outcome, self.work.invalidation) {
            let version = v["version"].as_i64().unwrap_or(0);
            for r in 0..self.ends.regions.len() {
                let node = self.ends.regions[r].primary.clone();
                self.invalidate(key, &node, version).await;
            }
        }
    }

    async fn invalidate(&mut self, key: &str, node: &Node, version: i64) {
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
        .await;
    }

    async fn read(&mut self, key: &str) {
        let region = self.ends.regions[self.region].clone();
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
            .await;
        if !matches!(outcome, Outcome::Ok(Value::Null)) {
            return;
        }
        // A miss: read the database, then fill the cache.
        let reader = self.work.db_reads == DbReads::Reader;
        let db_node = if reader {
            &self.ends.db_reader
        } else {
            &self.ends.db_writer
        }
        .name
        .clone();
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
        .await;
    }
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
    let deadline = Instant::now() + work.time_limit;
    let keys = Arc::new(Keys::new(&work));
    let mut tasks = Vec::new();
    phase(Phase::Workload);
    for id in 0..work.concurrency {
        let mut client = Client {
            rec: rec.clone(),
            ends: ends.clone(),
            work: work.clone(),
            process: rec.new_process(),
            region: id as usize % ends.regions.len(),
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
        .flat_map(|(i, r)| {
            std::iter::once((i, r.primary.clone())).chain(r.replica.clone().map(|n| (i, n)))
        })
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
        let db = ends.db_writer.name.clone();
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
