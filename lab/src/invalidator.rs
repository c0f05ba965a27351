//! The invalidation pipelines that ship with the lab as systems under test. Each runs
//! as its own process in its own lab host (`coherence lab invalidator`), finds each
//! region's current Redis primary through Sentinel, and logs every deletion with a
//! timestamp (one JSON object per line).
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
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
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

/// Deletes a key and remembers the version it was invalidated for, so that a versioned
/// fill of an older version is refused: the protocol of the workload's versioned fills
/// (`coherence_workloads::cache_aside`). KEYS: key, tombstone. ARGV: version, ttl ms.
const INVALIDATE: &str = r#"
redis.call('DEL', KEYS[1])
local tomb = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tonumber(ARGV[1]) > tomb then redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) end
return 1
"#;

/// Where a key's invalidated version is kept (as the workload expects it).
const TOMBSTONE_PREFIX: &str = "coherence:invalidated:";

/// How long a tombstone is kept.
const TOMBSTONE_TTL_MS: u64 = 60_000;

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
    /// Per region: its name and the addresses of its Sentinels.
    regions: Vec<(String, Vec<Ipv4Addr>)>,
    /// The current primary of each region, as last learned from Sentinel.
    primaries: HashMap<String, Ipv4Addr>,
    connections: HashMap<Ipv4Addr, MultiplexedConnection>,
    names: HashMap<Ipv4Addr, String>,
    log: std::fs::File,
}

impl Deleter {
    fn new(opts: &Options) -> Result<Deleter> {
        let hosts = layout::hosts(opts.regions);
        let regions = (1..=opts.regions)
            .map(|n| {
                let region = layout::region(n);
                let sentinels = hosts
                    .iter()
                    .filter(|h| {
                        h.region.as_deref() == Some(&region) && h.ports().contains(&SENTINEL_PORT)
                    })
                    .map(|h| h.addr)
                    .collect();
                (region, sentinels)
            })
            .collect();
        let names = hosts
            .iter()
            .map(|h: &Host| (h.addr, h.name.clone()))
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
            names,
            log,
        })
    }

    /// Asks the region's Sentinels, in turn, for its primary.
    async fn resolve(&mut self, region: &str) -> Result<Ipv4Addr> {
        let sentinels = self
            .regions
            .iter()
            .find(|(r, _)| r == region)
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        for s in sentinels {
            let answer = async {
                let mut con = connect(s, SENTINEL_PORT).await?;
                let (ip, _port): (String, String) = redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(layout::master_name(region))
                    .query_async(&mut con)
                    .await?;
                anyhow::Ok(ip.parse::<Ipv4Addr>()?)
            };
            if let Ok(Ok(addr)) = tokio::time::timeout(Duration::from_secs(1), answer).await {
                self.primaries.insert(region.to_string(), addr);
                return Ok(addr);
            }
        }
        Err(anyhow!("no Sentinel of {region} answered"))
    }

    /// Deletes `key` on the region's primary once, remembering the version it was
    /// invalidated for; an error forgets what was cached.
    async fn delete_once(&mut self, region: &str, key: &str, version: i64) -> Result<Ipv4Addr> {
        let addr = match self.primaries.get(region) {
            Some(a) => *a,
            None => self.resolve(region).await?,
        };
        let attempt = async {
            let con = match self.connections.entry(addr) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(connect(addr, REDIS_PORT).await?)
                }
            };
            let _: i64 = redis::Script::new(INVALIDATE)
                .key(key)
                .key(format!("{TOMBSTONE_PREFIX}{key}"))
                .arg(version)
                .arg(TOMBSTONE_TTL_MS)
                .invoke_async(con)
                .await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(1), attempt).await {
            Ok(Ok(())) => Ok(addr),
            Ok(Err(e)) => {
                self.forget(region, addr);
                Err(e)
            }
            Err(_) => {
                self.forget(region, addr);
                Err(anyhow!("DEL on {addr} timed out"))
            }
        }
    }

    fn forget(&mut self, region: &str, addr: Ipv4Addr) {
        self.primaries.remove(region);
        self.connections.remove(&addr);
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
                    Ok(addr) => {
                        self.record(key, version, &region, addr, None);
                        break;
                    }
                    Err(e) if patience.is_some_and(|p| started.elapsed() > p) => {
                        self.record(
                            key,
                            version,
                            &region,
                            Ipv4Addr::UNSPECIFIED,
                            Some(&format!("{e:#}")),
                        );
                        all = false;
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        all
    }

    fn record(
        &mut self,
        key: &str,
        version: i64,
        region: &str,
        addr: Ipv4Addr,
        error: Option<&str>,
    ) {
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
        match error {
            None => {
                line["node"] = self
                    .names
                    .get(&addr)
                    .cloned()
                    .unwrap_or_else(|| addr.to_string())
                    .into();
                line["deleted"] = true.into();
            }
            Some(e) => {
                line["deleted"] = false.into();
                line["error"] = e.into();
            }
        }
        let _ = writeln!(self.log, "{line}");
    }
}

async fn connect(addr: Ipv4Addr, port: u16) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}:{port}/"))?;
    let con = tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| anyhow!("connecting to {addr}:{port} timed out"))??;
    Ok(con)
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
