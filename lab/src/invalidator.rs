//! The invalidation pipelines that ship with the lab as systems under test. Each runs
//! as its own process in its own lab host (`coherence lab invalidator`), finds each
//! region's current Redis primary through the region's cache backend (Sentinel), and
//! logs every deletion with a timestamp (one JSON object per line). It invalidates with
//! the workload's versioned protocol (`coherence_cache::versioned`).
//!
//! - `notify`: LISTENs on the channel a trigger NOTIFYs, and deletes the key in every
//!   region. While it is disconnected from PostgreSQL, notifications are lost: it does
//!   not (and cannot) know what it missed. That is the bug class under test.
//! - `outbox`: reads the outbox table after its durable cursor, deletes each key in every
//!   region, retrying forever, and advances the cursor only after all acknowledged
//!   (at-least-once).

use crate::cluster::pg_connect;
use crate::layout::{self, Host, Role, REDIS_PORT, SENTINEL_PORT};
use crate::{schema, Design};
use anyhow::{anyhow, Context, Result};
use coherence_cache::{versioned, Backend, Node, RegionNodes};
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
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

/// How long one Sentinel, a connection or a deletion may take.
const PATIENCE: Duration = Duration::from_secs(1);

/// Runs the invalidator until the process is killed.
pub fn run(opts: Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut deleter = Deleter::new(&opts)?;
        match opts.design {
            Design::Notify => notify(&opts, &mut deleter).await,
            Design::Outbox => outbox(&opts, &mut deleter).await,
            Design::None => Err(anyhow!("the `none` design runs no invalidator")),
        }
    })
}

/// Deletes keys in every region's current primary, and logs each deletion.
struct Deleter {
    design: Design,
    /// Per region: its name and its caches.
    regions: Vec<(String, Arc<dyn Backend>)>,
    /// The current primary of each region's shards, as last learned from its backend.
    primaries: HashMap<(String, usize), Node>,
    /// Connections, by address.
    connections: HashMap<String, MultiplexedConnection>,
    log: std::fs::File,
}

/// A lab region's caches as its backend sees them: the hosts of its Redis servers and
/// Sentinels, by their lab names.
fn region_nodes(hosts: &[Host], region: &str) -> RegionNodes {
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

impl Deleter {
    fn new(opts: &Options) -> Result<Deleter> {
        let hosts = layout::hosts(opts.regions);
        let regions = (1..=opts.regions)
            .map(|n| {
                let region = layout::region(n);
                let backend = coherence_cache::open(&region_nodes(&hosts, &region), PATIENCE);
                (region, backend)
            })
            .collect();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&opts.log)
            .with_context(|| format!("cannot open {}", opts.log.display()))?;
        Ok(Deleter {
            design: opts.design,
            regions,
            primaries: HashMap::new(),
            connections: HashMap::new(),
            log,
        })
    }

    fn backend(&self, region: &str) -> Result<Arc<dyn Backend>> {
        self.regions
            .iter()
            .find(|(r, _)| r == region)
            .map(|(_, b)| b.clone())
            .ok_or_else(|| anyhow!("no region {region}"))
    }

    /// Asks the region's backend (its Sentinels, in turn) for the primary of `shard`.
    async fn resolve(&mut self, region: &str, shard: usize) -> Result<Node> {
        match self.backend(region)?.primary(shard).await {
            Some(found) => {
                self.primaries
                    .insert((region.to_string(), shard), found.primary.clone());
                Ok(found.primary)
            }
            None => Err(anyhow!("no Sentinel of {region} answered")),
        }
    }

    /// Deletes `key` on the primary that serves it in `region` once, remembering the
    /// version it was invalidated for; an error forgets what was cached.
    async fn delete_once(&mut self, region: &str, key: &str, version: i64) -> Result<Node> {
        let backend = self.backend(region)?;
        let shard = backend.route(key);
        let node = match self.primaries.get(&(region.to_string(), shard)) {
            Some(n) => n.clone(),
            None => self.resolve(region, shard).await?,
        };
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
            let ttl = versioned::TOMBSTONE_TTL.as_millis() as u64;
            versioned::invalidate(con, key, version, ttl).await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(PATIENCE, attempt).await {
            Ok(Ok(())) => Ok(node),
            Ok(Err(e)) => {
                self.forget(region, shard, &node);
                Err(e)
            }
            Err(_) => {
                self.forget(region, shard, &node);
                let host = node.addr.rsplit_once(':').map_or(&*node.addr, |(h, _)| h);
                Err(anyhow!("DEL on {host} timed out"))
            }
        }
    }

    fn forget(&mut self, region: &str, shard: usize, node: &Node) {
        self.primaries.remove(&(region.to_string(), shard));
        self.connections.remove(&node.addr);
    }

    /// Deletes `key` in every region. `patience`: how long to retry a region before
    /// giving up on it (`None`: forever). Returns whether every region acknowledged.
    async fn delete_everywhere(
        &mut self,
        key: &str,
        version: i64,
        patience: Option<Duration>,
    ) -> bool {
        let regions: Vec<String> = self.regions.iter().map(|(r, _)| r.clone()).collect();
        let mut all = true;
        for region in regions {
            let started = tokio::time::Instant::now();
            loop {
                match self.delete_once(&region, key, version).await {
                    Ok(node) => {
                        self.record(key, version, &region, Ok(&node));
                        break;
                    }
                    Err(e) if patience.is_some_and(|p| started.elapsed() > p) => {
                        self.record(key, version, &region, Err(&format!("{e:#}")));
                        all = false;
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        all
    }

    /// Logs a deletion: on the node that acknowledged it, or why it failed.
    fn record(&mut self, key: &str, version: i64, region: &str, done: Result<&Node, &str>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut line = serde_json::json!({
            "time_unix_ns": now.as_nanos() as u64,
            "design": self.design.to_string(),
            "key": key,
            "version": version,
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
        let _ = writeln!(self.log, "{line}");
    }
}

/// The `notify` design: listen, delete; reconnect after a lost connection, having lost
/// whatever was sent meanwhile.
async fn notify(opts: &Options, deleter: &mut Deleter) -> Result<()> {
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
            while let Some(payload) = rx.recv().await {
                let Ok(change) = serde_json::from_str::<serde_json::Value>(&payload) else {
                    eprintln!("notify: ignoring a payload that is not ours: {payload}");
                    continue;
                };
                let key = change["key"].as_str().unwrap_or_default().to_string();
                let version = change["version"].as_i64().unwrap_or(0);
                deleter
                    .delete_everywhere(&key, version, Some(Duration::from_secs(10)))
                    .await;
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

/// The `outbox` design: relay rows after the durable cursor, at least once.
async fn outbox(opts: &Options, deleter: &mut Deleter) -> Result<()> {
    loop {
        let relay = async {
            let db = find_primary(&opts.db).await?;
            let client = pg_connect(db).await?;
            client
                .execute(
                    "INSERT INTO outbox_cursor (relay, position) VALUES ('relay', 0) ON CONFLICT DO NOTHING",
                    &[],
                )
                .await?;
            eprintln!("outbox: relaying from {db}");
            loop {
                let rows = client
                    .query(
                        "SELECT id, key, version FROM outbox \
                         WHERE id > (SELECT position FROM outbox_cursor WHERE relay = 'relay') \
                         ORDER BY id LIMIT 100",
                        &[],
                    )
                    .await?;
                if rows.is_empty() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                for row in rows {
                    let id: i64 = row.get(0);
                    let key: String = row.get(1);
                    let version: i64 = row.get(2);
                    deleter.delete_everywhere(&key, version, None).await;
                    client
                        .execute(
                            "UPDATE outbox_cursor SET position = $1 WHERE relay = 'relay'",
                            &[&id],
                        )
                        .await?;
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
