//! The invalidation pipelines that ship with the lab as systems under test. Each runs
//! as its own process in its own lab host (`coherence lab invalidator`), finds each
//! region's current Redis primary through the region's cache backend (Sentinel), and
//! logs every deletion with a timestamp (one JSON object per line). It invalidates with
//! the workload's versioned protocol (`coherence_cache::versioned`).
//!
//! - `notify`: LISTENs on the channel a trigger NOTIFYs. It takes every notification
//!   that is pending (up to [`BATCH`]) as one batch, invalidates it, then takes what
//!   arrived meanwhile. While it is disconnected from PostgreSQL, notifications are
//!   lost: it does not (and cannot) know what it missed. That is the bug class under
//!   test. A region that fails is retried for [`NOTIFY_PATIENCE`] (4 s), then the
//!   batch is given up there (and logged as not deleted): a partition longer than that
//!   loses the region's invalidations of its first seconds for good, as a relay that
//!   drops what it cannot deliver does. While it retries one region, the next batch
//!   waits (the other regions' invalidations come late, not lost).
//! - `outbox`: reads the outbox table in batches of up to [`BATCH`] rows after the last
//!   row it relayed, invalidates each batch, retrying a region forever, and only then
//!   advances its durable cursor, once per batch (at-least-once). Outbox ids come from a
//!   sequence when a writer's transaction inserts its row, so rows become visible out of
//!   id order (a transaction that took id 10 may commit after the one that took 11): a
//!   cursor moved past 11 on seeing it would never relay 10. So the relay remembers the
//!   ids it skipped over (gaps) and asks for them again with every batch; the durable
//!   cursor stays just below the oldest gap. A gap still empty after [`GAP_PATIENCE`]
//!   belongs to a transaction that rolled back, or the sequence skipped it (after a
//!   crash); the relay gives up on it and says so. After a restart, a reconnection or a
//!   database failover it starts again from the durable cursor: rows it had relayed
//!   beyond it are relayed again, harmlessly.
//!
//!   It also follows a Redis failover without waiting for an error: every
//!   [`SWITCH_CHECK`] it asks each region's Sentinels for the primary, and when the
//!   primary changed it relays again, to the new one, every key it relayed in the last
//!   [`REPLAY_WINDOW`], at the highest version it relayed. Sentinel promotes a replica
//!   before it names it (and demotes the old primary seconds later): the invalidations
//!   that reached the old primary meanwhile never replicate, and without the replay the
//!   new primary keeps what they deleted.
//!
//! Both invalidate a batch the same way, so that one round trip per region serves the
//! whole batch:
//! - Coalesced by key: one invalidation per key, for the highest version of the key in
//!   the batch. The versioned invalidation of version v deletes the key whatever version
//!   it holds and leaves a tombstone of at least v, which refuses the fill of any older
//!   version: it covers every older version of the batch.
//! - In all regions concurrently; in each, one Redis pipeline per shard primary (the
//!   lab's regions have one): the invalidation script loaded, then run once per key.
//! - Logged per (key, version) it covers: one line for each version of the batch, all
//!   with the time the region acknowledged, `version` the version covered and
//!   `tombstone` the version it was invalidated for (the highest). The checker, naming
//!   a stale read's cause, looks for the invalidation of the newer write's own version,
//!   so every version keeps its line.

use crate::cluster::pg_connect;
use crate::layout::{self, Host, Role, REDIS_PORT, SENTINEL_PORT};
use crate::{schema, Design};
use anyhow::{anyhow, Context, Result};
use coherence_cache::{versioned, Backend, Node, RegionNodes};
use redis::aio::MultiplexedConnection;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_postgres::AsyncMessage;

/// How to run an invalidator.
#[derive(Debug, Clone)]
pub struct Options {
    /// notify or outbox.
    pub design: Design,
    /// The lab's regions.
    pub regions: u32,
    /// Where to log deletions (JSON lines).
    pub log: PathBuf,
    /// The PostgreSQL servers; it follows the one that is a primary (not in recovery),
    /// the first in this order when there are two (a split brain), and looks again
    /// whenever its connection is lost.
    pub db: Vec<Ipv4Addr>,
}

/// The most changes one batch takes: outbox rows, or pending notifications.
pub const BATCH: usize = 1000;

/// How long the outbox relay waits for a skipped outbox id to show up before it gives
/// up on it: longer than any writer's transaction lasts.
pub const GAP_PATIENCE: Duration = Duration::from_secs(10);

/// A jump of the outbox ids larger than this is not waited for: in-flight transactions
/// are never that many (they are at most the database's connections).
const GAP_LIMIT: i64 = 10_000;

/// How long one Sentinel, a connection or one region's pipeline may take.
const PATIENCE: Duration = Duration::from_secs(1);

/// How long one statement to PostgreSQL may take before the relay reconnects.
const DB_PATIENCE: Duration = Duration::from_secs(5);

/// How long `notify` retries a region before it gives up a batch there: longer than
/// a short fault (a 2 s partition loses nothing), shorter than a long one.
pub const NOTIFY_PATIENCE: Duration = Duration::from_secs(4);

/// Between two attempts at a region that failed.
const RETRY: Duration = Duration::from_millis(100);

/// How often the outbox relay asks the Sentinels whether a region's primary changed.
pub const SWITCH_CHECK: Duration = Duration::from_millis(250);

/// How far back the outbox relay replays its invalidations to a new primary.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(30);

/// The relay's pause when the outbox had nothing new: from the first, doubled while it
/// stays empty, up to the second.
const IDLE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(16));

/// Runs the invalidator until the process is killed.
pub fn run(opts: Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut invalidator = Invalidator::new(&opts)?;
        match opts.design {
            Design::Notify => notify(&opts, &mut invalidator).await,
            Design::Outbox => outbox(&opts, &mut invalidator).await,
            Design::None => Err(anyhow!("the `none` design runs no invalidator")),
        }
    })
}

/// One invalidation of a batch: a key, the highest version of it in the batch (the one
/// it is invalidated for), and every version of it in the batch (which that covers),
/// ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Invalidation {
    key: String,
    version: i64,
    covers: Vec<i64>,
}

/// Coalesces a batch of changes (key, version) into one invalidation per key, in the
/// order the keys first appear.
fn coalesce(changes: impl IntoIterator<Item = (String, i64)>) -> Vec<Invalidation> {
    let mut batch: Vec<Invalidation> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for (key, version) in changes {
        match at.get(&key) {
            Some(&i) => {
                batch[i].version = batch[i].version.max(version);
                batch[i].covers.push(version);
            }
            None => {
                at.insert(key.clone(), batch.len());
                batch.push(Invalidation {
                    key,
                    version,
                    covers: vec![version],
                });
            }
        }
    }
    for inv in &mut batch {
        inv.covers.sort_unstable();
        inv.covers.dedup();
    }
    batch
}

/// How far the outbox relay got: every row up to [`Frontier::durable`] was relayed (or
/// given up on), and every row up to [`Frontier::read`] except the gaps.
#[derive(Debug)]
struct Frontier {
    /// The highest id relayed.
    read: i64,
    /// Ids below `read` not seen yet (their transactions may still commit), with when
    /// each was first missed.
    gaps: BTreeMap<i64, Instant>,
}

impl Frontier {
    /// Starts at the durable cursor `position`: every row up to it was relayed.
    fn new(position: i64) -> Frontier {
        Frontier {
            read: position,
            gaps: BTreeMap::new(),
        }
    }

    /// The highest id relayed: new rows are those after it.
    fn read(&self) -> i64 {
        self.read
    }

    /// The ids skipped over that may still show up.
    fn gaps(&self) -> Vec<i64> {
        self.gaps.keys().copied().collect()
    }

    /// Records that the rows `ids` were relayed (every region acknowledged their
    /// invalidation), as read at `now`: ids skipped over become gaps, and ids that were
    /// gaps are not any more.
    fn relayed(&mut self, ids: &[i64], now: Instant) {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        for id in ids {
            if id > self.read {
                for gap in (self.read + 1).max(id - GAP_LIMIT)..id {
                    self.gaps.insert(gap, now);
                }
                self.read = id;
            } else {
                self.gaps.remove(&id);
            }
        }
    }

    /// Gives up on the gaps missing for longer than `patience` at `now`; returns them.
    fn expire(&mut self, now: Instant, patience: Duration) -> Vec<i64> {
        let expired: Vec<i64> = self
            .gaps
            .iter()
            .filter(|(_, &since)| now.saturating_duration_since(since) > patience)
            .map(|(&id, _)| id)
            .collect();
        for id in &expired {
            self.gaps.remove(id);
        }
        expired
    }

    /// Where the durable cursor may stand: just below the oldest gap, else at the
    /// highest id relayed.
    fn durable(&self) -> i64 {
        self.gaps.keys().next().map_or(self.read, |&gap| gap - 1)
    }
}

/// Runs `futures` concurrently on the calling task; their outputs, in order.
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(out) => *output = Some(out),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Invalidates batches in every region's current primaries, and logs each deletion.
struct Invalidator {
    regions: Vec<Region>,
    log: Log,
    /// The keys invalidated lately: the highest version, and when.
    recent: HashMap<String, (i64, Instant)>,
}

impl Invalidator {
    fn new(opts: &Options) -> Result<Invalidator> {
        let hosts = layout::hosts(opts.regions);
        let regions = (1..=opts.regions)
            .map(|n| {
                let name = layout::region(n);
                let backend = coherence_cache::open(&region_nodes(&hosts, &name), PATIENCE);
                Region {
                    name,
                    backend,
                    primaries: HashMap::new(),
                    connections: HashMap::new(),
                }
            })
            .collect();
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&opts.log)
            .with_context(|| format!("cannot open {}", opts.log.display()))?;
        Ok(Invalidator {
            regions,
            log: Log {
                design: opts.design,
                file: Mutex::new(file),
            },
            recent: HashMap::new(),
        })
    }

    /// Asks each region's Sentinels for the primaries it invalidates on; where one
    /// changed, invalidates there again every key of the last [`REPLAY_WINDOW`].
    async fn follow_switches(&mut self) {
        let now = Instant::now();
        self.recent
            .retain(|_, (_, at)| now.duration_since(*at) <= REPLAY_WINDOW);
        let log = &self.log;
        for region in &mut self.regions {
            let known: Vec<(usize, Node)> = region
                .primaries
                .iter()
                .map(|(s, n)| (*s, n.clone()))
                .collect();
            for (shard, node) in known {
                let Some(found) = region.backend.primary(shard).await else {
                    continue;
                };
                if found.primary.addr == node.addr {
                    continue;
                }
                let replay: Vec<Invalidation> = self
                    .recent
                    .iter()
                    .filter(|(k, _)| region.backend.route(k) == shard)
                    .map(|(k, (v, _))| Invalidation {
                        key: k.clone(),
                        version: *v,
                        covers: vec![*v],
                    })
                    .collect();
                eprintln!(
                    "outbox: {} is the primary of {} now (was {}): relaying the {} keys of the last {:?} there again",
                    found.primary.addr,
                    region.name,
                    node.addr,
                    replay.len(),
                    REPLAY_WINDOW
                );
                region.forget(shard, &node);
                region.primaries.insert(shard, found.primary);
                region.invalidate(&replay, None, log).await;
            }
        }
    }

    /// Invalidates `batch` in every region at once. `patience`: how long to retry a
    /// region before giving up on it (`None`: forever). Whether every region
    /// acknowledged.
    async fn invalidate(&mut self, batch: &[Invalidation], patience: Option<Duration>) -> bool {
        if batch.is_empty() {
            return true;
        }
        let now = Instant::now();
        for inv in batch {
            let e = self
                .recent
                .entry(inv.key.clone())
                .or_insert((inv.version, now));
            *e = (e.0.max(inv.version), now);
        }
        let log = &self.log;
        let done = join_all(
            self.regions
                .iter_mut()
                .map(|region| region.invalidate(batch, patience, log)),
        )
        .await;
        done.into_iter().all(|ok| ok)
    }
}

/// One region's caches, as the invalidator reaches them.
struct Region {
    name: String,
    backend: Arc<dyn Backend>,
    /// The current primary of each shard, as last learned from the backend.
    primaries: HashMap<usize, Node>,
    /// Connections, by address.
    connections: HashMap<String, MultiplexedConnection>,
}

impl Region {
    /// Invalidates `batch` here, in one pipeline per shard, retrying a shard that failed
    /// every [`RETRY`]; `patience`: how long before giving up (`None`: never). Logs each
    /// shard's deletions when its primary acknowledged them, or why they failed when it
    /// gives up. Whether every shard acknowledged.
    async fn invalidate(
        &mut self,
        batch: &[Invalidation],
        patience: Option<Duration>,
        log: &Log,
    ) -> bool {
        let mut shards: BTreeMap<usize, Vec<&Invalidation>> = BTreeMap::new();
        for inv in batch {
            shards
                .entry(self.backend.route(&inv.key))
                .or_default()
                .push(inv);
        }
        let started = Instant::now();
        let mut pending: Vec<(usize, Vec<&Invalidation>)> = shards.into_iter().collect();
        loop {
            let mut failed = Vec::new();
            for (shard, invs) in pending {
                match self.attempt(shard, &invs).await {
                    Ok(node) => log.record(&self.name, &invs, Ok(&node)),
                    Err(e) => failed.push((shard, invs, e)),
                }
            }
            if failed.is_empty() {
                return true;
            }
            if patience.is_some_and(|p| started.elapsed() > p) {
                for (_, invs, e) in &failed {
                    log.record(&self.name, invs, Err(&format!("{e:#}")));
                }
                return false;
            }
            pending = failed
                .into_iter()
                .map(|(shard, invs, _)| (shard, invs))
                .collect();
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Asks the region's backend (its Sentinels, in turn) for the primary of `shard`.
    async fn resolve(&mut self, shard: usize) -> Result<Node> {
        match self.backend.primary(shard).await {
            Some(found) => {
                self.primaries.insert(shard, found.primary.clone());
                Ok(found.primary)
            }
            None => Err(anyhow!("no Sentinel of {} answered", self.name)),
        }
    }

    /// Invalidates `batch` once on the primary that serves `shard`, in one round trip;
    /// the node that acknowledged. An error forgets what was cached of that primary.
    async fn attempt(&mut self, shard: usize, batch: &[&Invalidation]) -> Result<Node> {
        let node = match self.primaries.get(&shard) {
            Some(n) => n.clone(),
            None => self.resolve(shard).await?,
        };
        let backend = self.backend.clone();
        let attempt = async {
            let con = match self.connections.entry(node.addr.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let con = tokio::time::timeout(PATIENCE, backend.connect(&node))
                        .await
                        .map_err(|_| anyhow!("connecting to {} timed out", node.addr))??;
                    e.insert(con)
                }
            };
            invalidate_pipelined(con, batch).await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(PATIENCE, attempt).await {
            Ok(Ok(())) => Ok(node),
            Ok(Err(e)) => {
                self.forget(shard, &node);
                Err(e)
            }
            Err(_) => {
                self.forget(shard, &node);
                let host = node.addr.rsplit_once(':').map_or(&*node.addr, |(h, _)| h);
                Err(anyhow!("invalidating on {host} timed out"))
            }
        }
    }

    fn forget(&mut self, shard: usize, node: &Node) {
        self.primaries.remove(&shard);
        self.connections.remove(&node.addr);
    }
}

/// Invalidates every key of `batch` on one Redis in one round trip: a pipeline that
/// loads the versioned invalidation script (so that a primary that never ran it, one
/// just promoted say, has it), then runs it once per key for the key's version.
async fn invalidate_pipelined(
    con: &mut MultiplexedConnection,
    batch: &[&Invalidation],
) -> redis::RedisResult<()> {
    let script = redis::Script::new(versioned::INVALIDATE_VERSIONED);
    let ttl = versioned::TOMBSTONE_TTL.as_millis() as u64;
    let mut pipe = redis::pipe();
    pipe.cmd("SCRIPT")
        .arg("LOAD")
        .arg(versioned::INVALIDATE_VERSIONED)
        .ignore();
    for inv in batch {
        pipe.cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(2)
            .arg(&inv.key)
            .arg(versioned::tombstone(&inv.key))
            .arg(inv.version)
            .arg(ttl)
            .ignore();
    }
    // Any command's error fails the whole pipeline (ignored or not): it is retried,
    // which the versioned invalidation makes harmless.
    pipe.query_async(con).await
}

/// The deletion log: one JSON object per line, per (key, version) a deletion covered.
struct Log {
    design: Design,
    file: Mutex<std::fs::File>,
}

impl Log {
    /// Logs the deletions of `batch` in `region`: on the node that acknowledged them, or
    /// why they failed. Written at once, so a reader sees whole batches.
    fn record(&self, region: &str, batch: &[&Invalidation], done: Result<&Node, &str>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut text = String::new();
        for inv in batch {
            for &version in &inv.covers {
                let mut line = serde_json::json!({
                    "time_unix_ns": now.as_nanos() as u64,
                    "design": self.design.to_string(),
                    "key": inv.key,
                    "version": version,
                    "tombstone": inv.version,
                    "region": region,
                });
                match done {
                    Ok(node) => {
                        line["node"] = node.name.clone().into();
                        line["deleted"] = true.into();
                    }
                    Err(e) => {
                        line["deleted"] = false.into();
                        line["error"] = e.into();
                    }
                }
                text.push_str(&line.to_string());
                text.push('\n');
            }
        }
        if let Ok(mut file) = self.file.lock() {
            let _ = file.write_all(text.as_bytes());
        }
    }
}

/// A lab region's caches as its backend sees them: the hosts of its Redis servers and
/// Sentinels, by their lab names.
pub(crate) fn region_nodes(hosts: &[Host], region: &str) -> RegionNodes {
    let in_region = |h: &&Host| h.region.as_deref() == Some(region);
    let node = |h: &Host| Node {
        name: h.name.clone(),
        addr: format!("{}:{REDIS_PORT}", h.addr),
    };
    let nodes: Vec<Node> = hosts
        .iter()
        .filter(in_region)
        .filter(|h| h.ports().contains(&REDIS_PORT))
        .map(node)
        .collect();
    let primary = hosts
        .iter()
        .filter(in_region)
        .find(|h| h.role == Role::RedisPrimary)
        .map(node)
        .unwrap_or_else(|| nodes[0].clone());
    RegionNodes {
        name: region.to_string(),
        replica: nodes.iter().find(|n| n.addr != primary.addr).cloned(),
        primary,
        sentinels: hosts
            .iter()
            .filter(in_region)
            .filter(|h| h.ports().contains(&SENTINEL_PORT))
            .map(|h| format!("{}:{SENTINEL_PORT}", h.addr))
            .collect(),
        master_name: layout::master_name(region).to_string(),
        nodes,
    }
}

/// A change a notification announces: its key and version; `None` (and a word on
/// stderr) for a payload that is not ours.
fn announced(payload: &str) -> Option<(String, i64)> {
    let change = serde_json::from_str::<serde_json::Value>(payload).ok();
    let parsed = change
        .as_ref()
        .and_then(|c| Some((c["key"].as_str()?.to_string(), c["version"].as_i64()?)));
    if parsed.is_none() {
        eprintln!("notify: ignoring a payload that is not ours: {payload}");
    }
    parsed
}

/// The `notify` design: listen; take what is pending as a batch and invalidate it;
/// reconnect after a lost connection, having lost whatever was sent meanwhile.
async fn notify(opts: &Options, invalidator: &mut Invalidator) -> Result<()> {
    loop {
        let connected = async {
            let db = find_primary(&opts.db).await?;
            let (client, mut conn) = tokio::time::timeout(
                Duration::from_secs(3),
                tokio_postgres::connect(
                    &format!("host={db} port=5432 user=postgres dbname=postgres connect_timeout=3"),
                    tokio_postgres::NoTls,
                ),
            )
            .await
            .map_err(|_| anyhow!("connect timed out"))??;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            tokio::spawn(async move {
                while let Some(msg) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    match msg {
                        Ok(AsyncMessage::Notification(n)) => {
                            if tx.send(n.payload().to_string()).is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            });
            client
                .batch_execute(&format!("LISTEN {}", schema::CHANNEL))
                .await?;
            eprintln!("notify: listening on {db}");
            // Notifications keep arriving (into the channel) while a batch is being
            // invalidated; the next batch is all of those.
            while let Some(first) = rx.recv().await {
                let mut payloads = vec![first];
                while payloads.len() < BATCH {
                    match rx.try_recv() {
                        Ok(p) => payloads.push(p),
                        Err(_) => break,
                    }
                }
                let batch = coalesce(payloads.iter().filter_map(|p| announced(p)));
                invalidator.invalidate(&batch, Some(NOTIFY_PATIENCE)).await;
            }
            drop(client);
            anyhow::Ok(())
        };
        if let Err(e) = connected.await {
            eprintln!("notify: {e:#}; reconnecting");
        } else {
            eprintln!("notify: connection lost; reconnecting");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Awaits a statement to PostgreSQL for at most [`DB_PATIENCE`].
async fn within<T>(
    what: &str,
    statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    tokio::time::timeout(DB_PATIENCE, statement)
        .await
        .map_err(|_| anyhow!("{what} timed out"))?
        .with_context(|| format!("{what} failed"))
}

/// The `outbox` design: relay rows after the durable cursor in batches, at least once.
async fn outbox(opts: &Options, invalidator: &mut Invalidator) -> Result<()> {
    loop {
        let relay = async {
            let db = find_primary(&opts.db).await?;
            let client = pg_connect(db).await?;
            within(
                "creating the cursor",
                client.execute(
                    "INSERT INTO outbox_cursor (relay, position) VALUES ('relay', 0) ON CONFLICT DO NOTHING",
                    &[],
                ),
            )
            .await?;
            let position: i64 = within(
                "reading the cursor",
                client.query_one(
                    "SELECT position FROM outbox_cursor WHERE relay = 'relay'",
                    &[],
                ),
            )
            .await?
            .get(0);
            // The rows skipped over that showed up since, then the next new rows.
            let next = within(
                "preparing the batch query",
                client.prepare(
                    "SELECT id, key, version FROM outbox WHERE id = ANY($1) \
                     UNION ALL \
                     (SELECT id, key, version FROM outbox WHERE id > $2 ORDER BY id LIMIT $3)",
                ),
            )
            .await?;
            let advance = within(
                "preparing the cursor update",
                client.prepare("UPDATE outbox_cursor SET position = $1 WHERE relay = 'relay'"),
            )
            .await?;
            eprintln!("outbox: relaying from {db}, after row {position}");
            let mut frontier = Frontier::new(position);
            let mut durable = position;
            let mut idle = IDLE.0;
            let mut checked = Instant::now();
            loop {
                if checked.elapsed() >= SWITCH_CHECK {
                    invalidator.follow_switches().await;
                    checked = Instant::now();
                }
                let rows = within(
                    "reading the outbox",
                    client.query(
                        &next,
                        &[&frontier.gaps(), &frontier.read(), &(BATCH as i64)],
                    ),
                )
                .await?;
                let now = Instant::now();
                for id in frontier.expire(now, GAP_PATIENCE) {
                    eprintln!(
                        "outbox: gave up waiting for row {id} (rolled back, or skipped by the sequence)"
                    );
                }
                if !rows.is_empty() {
                    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                    let batch = coalesce(rows.iter().map(|r| (r.get(1), r.get(2))));
                    // Retries every region until it acknowledged: returns only then.
                    invalidator.invalidate(&batch, None).await;
                    frontier.relayed(&ids, now);
                }
                if frontier.durable() != durable {
                    durable = frontier.durable();
                    within(
                        "advancing the cursor",
                        client.execute(&advance, &[&durable]),
                    )
                    .await?;
                }
                if rows.is_empty() {
                    tokio::time::sleep(idle).await;
                    idle = (idle * 2).min(IDLE.1);
                } else {
                    idle = IDLE.0;
                }
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        };
        if let Err(e) = relay.await {
            eprintln!("outbox: {e:#}; retrying");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The first of `candidates` that answers as a primary (not in recovery).
async fn find_primary(candidates: &[Ipv4Addr]) -> Result<Ipv4Addr> {
    for &addr in candidates {
        let Ok(client) = pg_connect(addr).await else {
            continue;
        };
        if let Ok(row) = client.query_one("SELECT pg_is_in_recovery()", &[]).await {
            if !row.get::<_, bool>(0) {
                return Ok(addr);
            }
        }
    }
    Err(anyhow!("no PostgreSQL primary among {candidates:?}"))
}

/// The addresses of the lab's database servers, the initial primary first.
pub fn db_servers(regions: u32) -> Vec<Ipv4Addr> {
    let hosts = layout::hosts(regions);
    [Role::DbPrimary, Role::DbStandby]
        .iter()
        .filter_map(|role| hosts.iter().find(|h| h.role == *role).map(|h| h.addr))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(list: &[(&str, i64)]) -> Vec<(String, i64)> {
        list.iter().map(|&(k, v)| (k.to_string(), v)).collect()
    }

    #[test]
    fn coalescing_keeps_one_invalidation_per_key_for_its_highest_version() {
        let batch = coalesce(changes(&[
            ("a", 3),
            ("b", 7),
            ("a", 5),
            ("a", 4),
            ("c", 1),
            ("b", 6),
            ("a", 5),
        ]));
        let got: Vec<(&str, i64, &[i64])> = batch
            .iter()
            .map(|i| (i.key.as_str(), i.version, i.covers.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", 5, &[3, 4, 5][..]),
                ("b", 7, &[6, 7][..]),
                ("c", 1, &[1][..])
            ]
        );
        assert!(coalesce(Vec::new()).is_empty());
    }

    #[test]
    fn the_cursor_advances_over_rows_relayed_in_order() {
        let now = Instant::now();
        let mut f = Frontier::new(10);
        assert_eq!((f.read(), f.durable()), (10, 10));
        f.relayed(&[13, 11, 12], now);
        assert_eq!((f.read(), f.durable()), (13, 13));
        assert!(f.gaps().is_empty());
        // A batch with nothing new leaves it where it is.
        f.relayed(&[], now);
        assert_eq!(f.durable(), 13);
    }

    #[test]
    fn the_cursor_stops_below_a_row_that_may_still_commit() {
        // Rows 11 and 13 committed; 12's transaction took its id first and commits
        // later. A cursor at 13 would never relay 12.
        let t0 = Instant::now();
        let mut f = Frontier::new(10);
        f.relayed(&[11, 13, 16], t0);
        assert_eq!(f.gaps(), vec![12, 14, 15]);
        assert_eq!(f.read(), 16, "new rows are asked for after 16");
        assert_eq!(f.durable(), 11);
        // 14 shows up: still held below 12.
        f.relayed(&[14, 17], t0);
        assert_eq!(f.gaps(), vec![12, 15]);
        assert_eq!(f.durable(), 11);
        f.relayed(&[12], t0);
        assert_eq!(f.durable(), 14);
        f.relayed(&[15], t0);
        assert_eq!((f.durable(), f.read()), (17, 17));
        assert!(f.gaps().is_empty());
    }

    #[test]
    fn a_gap_that_never_fills_is_given_up_after_the_patience() {
        let t0 = Instant::now();
        let mut f = Frontier::new(0);
        f.relayed(&[1, 3], t0);
        let later = t0 + Duration::from_secs(1);
        f.relayed(&[6], later);
        assert!(f
            .expire(t0 + Duration::from_secs(5), Duration::from_secs(10))
            .is_empty());
        assert_eq!(f.durable(), 1);
        // 2 was missed at t0, 4 and 5 a second later.
        let expired = f.expire(t0 + Duration::from_millis(10_500), Duration::from_secs(10));
        assert_eq!(expired, vec![2]);
        assert_eq!(f.durable(), 3);
        assert_eq!(
            f.expire(later + Duration::from_secs(11), Duration::from_secs(10)),
            vec![4, 5]
        );
        assert_eq!(f.durable(), 6);
    }

    #[test]
    fn a_huge_jump_of_the_ids_is_not_waited_for_id_by_id() {
        let mut f = Frontier::new(0);
        f.relayed(&[1_000_000_000], Instant::now());
        assert_eq!(f.gaps().len() as i64, GAP_LIMIT);
        assert_eq!(f.durable(), 1_000_000_000 - GAP_LIMIT - 1);
    }

    /// A `redis-server` on a free loopback port, killed when dropped.
    struct Redis(std::process::Child);

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    async fn redis_server(dir: &std::path::Path) -> (Redis, MultiplexedConnection) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup installs it)");
        let addr = format!("127.0.0.1:{port}");
        let server = Redis(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(con) = coherence_cache::connect(addr.clone()).await {
                return (server, con);
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn get(con: &mut MultiplexedConnection, key: &str) -> Option<String> {
        redis::cmd("GET").arg(key).query_async(con).await.unwrap()
    }

    #[tokio::test]
    async fn one_pipeline_invalidates_a_batch_for_the_highest_versions() {
        let dir = tempfile::tempdir().unwrap();
        let (_server, mut con) = redis_server(dir.path()).await;
        let value = |v: i64| format!(r#"{{"version":{v},"write":"w{v}"}}"#);
        assert!(versioned::fill(&mut con, "k", &value(3), 3, 60_000)
            .await
            .unwrap());
        assert!(versioned::fill(&mut con, "j", &value(1), 1, 60_000)
            .await
            .unwrap());
        // A server that never ran the script (a primary just promoted, say): the
        // pipeline loads it first.
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut con)
            .await
            .unwrap();

        let batch = coalesce(changes(&[("k", 4), ("j", 2), ("k", 6), ("k", 5)]));
        let refs: Vec<&Invalidation> = batch.iter().collect();
        invalidate_pipelined(&mut con, &refs).await.unwrap();
        assert_eq!(get(&mut con, "k").await, None);
        assert_eq!(get(&mut con, "j").await, None);
        assert_eq!(
            get(&mut con, &versioned::tombstone("k")).await.as_deref(),
            Some("6")
        );
        assert_eq!(
            get(&mut con, &versioned::tombstone("j")).await.as_deref(),
            Some("2")
        );
        // The invalidation for 6 covers the versions before it: a fill of 5 (read from
        // the database before 6 committed) is refused, one of 6 is not.
        assert!(!versioned::fill(&mut con, "k", &value(5), 5, 60_000)
            .await
            .unwrap());
        assert!(versioned::fill(&mut con, "k", &value(6), 6, 60_000)
            .await
            .unwrap());

        // A key the script fails on fails the whole pipeline, so the relay retries it
        // rather than logging a deletion that did not happen.
        let _: () = redis::cmd("SET")
            .arg(versioned::tombstone("j"))
            .arg("not a number")
            .query_async(&mut con)
            .await
            .unwrap();
        let batch = coalesce(changes(&[("k", 7), ("j", 3)]));
        let refs: Vec<&Invalidation> = batch.iter().collect();
        assert!(invalidate_pipelined(&mut con, &refs).await.is_err());
    }

    #[test]
    fn the_log_has_a_line_per_version_a_deletion_covered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deletions.jsonl");
        let log = Log {
            design: Design::Outbox,
            file: Mutex::new(std::fs::File::create(&path).unwrap()),
        };
        let batch = coalesce(changes(&[("a", 2), ("b", 9), ("a", 3)]));
        let refs: Vec<&Invalidation> = batch.iter().collect();
        let node = Node {
            name: "r1a".into(),
            addr: "10.77.0.21:6379".into(),
        };
        log.record("r1", &refs, Ok(&node));
        log.record("r2", &refs[1..], Err("timed out"));
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let got: Vec<(&str, i64, i64, &str, bool)> = lines
            .iter()
            .map(|l| {
                (
                    l["key"].as_str().unwrap(),
                    l["version"].as_i64().unwrap(),
                    l["tombstone"].as_i64().unwrap(),
                    l["region"].as_str().unwrap(),
                    l["deleted"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", 2, 3, "r1", true),
                ("a", 3, 3, "r1", true),
                ("b", 9, 9, "r1", true),
                ("b", 9, 9, "r2", false),
            ]
        );
        assert!(lines[..3]
            .iter()
            .all(|l| l["node"] == "r1a" && l["design"] == "outbox"));
        assert_eq!(lines[3]["error"], "timed out");
        assert_eq!(lines[0]["time_unix_ns"], lines[2]["time_unix_ns"]);
    }

    #[tokio::test]
    async fn joined_futures_run_concurrently_and_keep_their_order() {
        let started = tokio::time::Instant::now();
        let out = join_all([30u64, 10, 20].map(|ms| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ms
        }))
        .await;
        assert_eq!(out, vec![30, 10, 20]);
        assert!(
            started.elapsed() < Duration::from_millis(55),
            "{:?}",
            started.elapsed()
        );
    }
}
