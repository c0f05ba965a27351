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
//!
//! It is a [`workload::Workload`]: the harness records its operations, runs its clients
//! and its final phase. Its caches are reached through their [`Backend`], which says
//! where a region's primary went after a failover.

use crate::campaign::{CacheReads, DbReads, Fill, Invalidation, Workload};
use crate::workload::{self, key_name, BoxFuture, Endpoints, Keys, Node, Op, OpError, Outcome};
use crate::workload::{Recording, Who};
use anyhow::{Context, Result};
use coherence_cache::{versioned, Backend, Shard};
use coherence_store::with_sources;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a client waits for one Sentinel's answer.
const ASK: Duration = Duration::from_millis(500);

/// A shard's primary and replica as the clients currently know them.
#[derive(Debug, Clone)]
struct ShardNow {
    shard: Shard,
    /// When its authority was last asked.
    asked: Option<Instant>,
}

/// One region: its backend and what the clients know of each of its shards.
struct RegionNow {
    backend: Arc<dyn Backend>,
    shards: Vec<std::sync::Mutex<ShardNow>>,
}

/// What the clients currently know of where each region's primaries are.
struct Topology {
    regions: Vec<RegionNow>,
}

impl Topology {
    fn new(ends: &Endpoints) -> Topology {
        Topology {
            regions: ends
                .regions
                .iter()
                .map(|r| {
                    let backend = coherence_cache::open(r, ASK);
                    let shards = backend
                        .shards()
                        .into_iter()
                        .map(|shard| std::sync::Mutex::new(ShardNow { shard, asked: None }))
                        .collect();
                    RegionNow { backend, shards }
                })
                .collect(),
        }
    }

    fn backend(&self, region: usize) -> &Arc<dyn Backend> {
        &self.regions[region].backend
    }

    /// The primary and replica of the shard that serves `key` in `region`.
    fn now(&self, region: usize, key: &str) -> Shard {
        let r = &self.regions[region];
        r.shards[r.backend.route(key)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shard
            .clone()
    }

    /// Asks where the primary of the shard serving `key` in `region` is now, at most
    /// every 200 ms whoever asks.
    async fn refresh(&self, region: usize, key: &str) {
        let r = &self.regions[region];
        let shard = r.backend.route(key);
        {
            let mut now = r.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
            if now
                .asked
                .is_some_and(|t| t.elapsed() < Duration::from_millis(200))
            {
                return;
            }
            now.asked = Some(Instant::now());
        }
        let Some(found) = r.backend.primary(shard).await else {
            return;
        };
        let mut now = r.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        if now.shard.primary.addr != found.primary.addr {
            now.shard = found;
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

/// One process of the workload.
struct Client {
    rec: Recording,
    ends: Arc<Endpoints>,
    topo: Arc<Topology>,
    work: Arc<Workload>,
    keys: Arc<Keys>,
    region: usize,
    /// Where this client starts looking for a database primary among the writers.
    rotation: usize,
    redis: HashMap<String, MultiplexedConnection>,
    writer: Option<Db>,
    reader: Option<Db>,
    writes: u64,
    id: u32,
}

pub(crate) async fn pg_connect(
    node: &Node,
    params: &str,
) -> Result<tokio_postgres::Client, OpError> {
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

/// The cache-aside workload of a campaign, against its endpoints: the template its
/// clients are opened from.
pub struct CacheAside {
    work: Arc<Workload>,
    ends: Arc<Endpoints>,
    topo: Arc<Topology>,
    keys: Arc<Keys>,
}

impl CacheAside {
    /// The workload `work` configures, against `ends`.
    pub fn new(work: &Workload, ends: &Endpoints) -> CacheAside {
        CacheAside {
            work: Arc::new(work.clone()),
            ends: Arc::new(ends.clone()),
            topo: Arc::new(Topology::new(ends)),
            keys: Arc::new(Keys::new(work)),
        }
    }
}

impl workload::Workload for CacheAside {
    fn preflight(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(preflight(&self.ends))
    }

    fn open(&self, who: Who, rec: Recording) -> Box<dyn workload::Client> {
        let (id, region, rotation, topo) = match who {
            Who::Worker(id) => (
                id,
                id as usize % self.ends.regions.len(),
                id as usize,
                self.topo.clone(),
            ),
            // The final reads start from the topology as configured.
            Who::Final => (u32::MAX, 0, 0, Arc::new(Topology::new(&self.ends))),
        };
        Box::new(Client {
            rec,
            ends: self.ends.clone(),
            topo,
            work: self.work.clone(),
            keys: self.keys.clone(),
            region,
            rotation,
            redis: HashMap::new(),
            writer: None,
            reader: None,
            writes: 0,
            id,
        })
    }
}

impl workload::Client for Client {
    fn recording(&mut self) -> &mut Recording {
        &mut self.rec
    }

    fn reset(&mut self) {
        self.redis.clear();
        self.writer = None;
        self.reader = None;
    }

    fn invoke<'a>(&'a mut self, rng: &'a mut ChaCha8Rng) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let key = self.keys.pick(rng);
            if rng.random_bool(self.work.read_fraction) {
                self.read(&key).await;
            } else {
                self.write(&key).await;
            }
        })
    }

    fn final_phase(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.final_reads())
    }
}

impl Client {
    /// Runs one operation through the harness, in this client's region.
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
        let op = Op {
            f,
            key,
            node,
            value,
            region: Some(&region),
        };
        workload::op(self, op, body).await
    }

    /// The connection to `node` of `region`, opened through the region's backend.
    async fn redis(
        &mut self,
        region: usize,
        node: &Node,
    ) -> Result<MultiplexedConnection, OpError> {
        if let Some(c) = self.redis.get(&node.addr) {
            return Ok(c.clone());
        }
        let c = self
            .topo
            .backend(region)
            .connect(node)
            .await
            .map_err(OpError::certain)?;
        self.redis.insert(node.addr.clone(), c.clone());
        Ok(c)
    }

    /// GETs a key from a cache node: its versioned value, or null for a miss.
    async fn cache_get(&mut self, node: &Node, key: &str) -> Result<Value, OpError> {
        let mut con = self.redis(self.region, node).await?;
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
        self.rec.served = Some(db.node.clone());
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
        if let (Outcome::Ok(v), Invalidation::Writer) = (outcome, self.work.invalidation()) {
            let version = v["version"].as_i64().unwrap_or(0);
            for r in 0..self.ends.regions.len() {
                self.invalidate(key, r, version).await;
            }
        }
    }

    async fn invalidate(&mut self, key: &str, region: usize, version: i64) {
        let node = self.topo.now(region, key).primary;
        let (k, n) = (key.to_string(), node.clone());
        let fill = self.work.fill();
        let ttl = self.work.ttl.as_millis() as u64;
        self.op(
            "invalidate",
            key,
            &node.name,
            None,
            async move |c: &mut Client| {
                let mut con = c.redis(region, &n).await?;
                match fill {
                    Fill::Plain => {
                        let _: i64 = redis::cmd("DEL")
                            .arg(&k)
                            .query_async(&mut con)
                            .await
                            .map_err(redis_error)?;
                    }
                    Fill::Versioned => {
                        versioned::invalidate(&mut con, &k, version, ttl)
                            .await
                            .map_err(redis_error)?;
                    }
                }
                Ok(Value::Null)
            },
        )
        .await
        .failed_on(self, region, key)
        .await;
    }

    async fn read(&mut self, key: &str) {
        let region_i = self.region;
        let region = self.topo.now(region_i, key);
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
            .failed_on(self, region_i, key)
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
        let fill = self.work.fill();
        let ttl = self.work.ttl.as_millis() as u64;
        self.op(
            "fill",
            key,
            &primary_name,
            Some(value),
            async move |c: &mut Client| {
                let mut con = c.redis(region_i, &primary).await?;
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
                        let installed = versioned::fill(&mut con, &k, &text, version, ttl)
                            .await
                            .map_err(redis_error)?;
                        if !installed {
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
        .failed_on(self, region_i, key)
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
    /// After a failed cache operation on `key` in `region`, asks where the primary that
    /// serves it is now: a failover may have moved it (a `READONLY` refusal, a refused
    /// or lost connection).
    async fn failed_on(self, client: &mut Client, region: usize, key: &str) -> Outcome {
        if !matches!(self, Outcome::Ok(_)) {
            if let Outcome::Fail(e) = &self {
                if e.starts_with("refused:") {
                    return self;
                }
            }
            client.redis.clear();
            client.topo.refresh(region, key).await;
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

/// Checks, before a run, that the database writer and every region's primary answer:
/// a campaign whose endpoints are wrong is refused, not run against nothing.
async fn preflight(ends: &Endpoints) -> Result<()> {
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
        let backend = coherence_cache::open(region, ASK);
        for node in backend.shards().into_iter().map(|s| s.primary) {
            let ping = async {
                let mut con = backend.connect(&node).await.map_err(|e| e.to_string())?;
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
    }
    Ok(())
}

impl Client {
    /// The final phase: reads every key on every cache node and in the database.
    async fn final_reads(&mut self) -> Result<()> {
        let nodes: Vec<(usize, Node)> = (0..self.ends.regions.len())
            .flat_map(|i| {
                let nodes = self.topo.backend(i).nodes();
                nodes.into_iter().map(move |n| (i, n))
            })
            .collect();
        for i in 0..self.work.keys {
            let key = key_name(i);
            for (region, node) in &nodes {
                self.region = *region;
                let (k, n) = (key.clone(), node.clone());
                self.op(
                    "final-read",
                    &key,
                    &node.name,
                    None,
                    async move |c: &mut Client| c.cache_get(&n, &k).await,
                )
                .await;
            }
            let k = key.clone();
            let db = self.db_name(false);
            self.op("db-final-read", &key, &db, None, async move |c: &mut Client| {
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
}
