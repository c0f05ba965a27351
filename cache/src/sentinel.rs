//! Redis Sentinel: one primary and its replica per region, and Sentinels that know
//! which of them is the primary now. [`primary`] is the one Sentinel lookup of the
//! project (the workloads, the lab's invalidators and the lab itself ask through it);
//! [`Sentinel`] is the [`Backend`] of such a region: one shard, every key on it.

use crate::{Backend, BoxFuture, Node, Shard};
use std::time::Duration;

/// A Sentinel-managed region's caches.
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

/// The `host:port` the Sentinel at `sentinel` (`host:port`) names as `master`'s
/// primary. No timeout of its own: callers bound it.
pub async fn primary(sentinel: &str, master: &str) -> redis::RedisResult<String> {
    let mut con = crate::connect(sentinel.to_string()).await?;
    let (ip, port): (String, String) = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query_async(&mut con)
        .await?;
    Ok(format!("{ip}:{port}"))
}

/// How many replicas of `master` the Sentinel at `sentinel` knows.
pub async fn replicas(sentinel: &str, master: &str) -> redis::RedisResult<usize> {
    let mut con = crate::connect(sentinel.to_string()).await?;
    let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
        .arg("REPLICAS")
        .arg(master)
        .query_async(&mut con)
        .await?;
    Ok(replicas.len())
}

/// A Sentinel-managed region as a [`Backend`].
#[derive(Debug, Clone)]
pub struct Sentinel {
    region: RegionNodes,
    ask: Duration,
}

impl Sentinel {
    /// The region's backend; `ask` bounds each question to one Sentinel.
    pub fn new(region: RegionNodes, ask: Duration) -> Sentinel {
        Sentinel { region, ask }
    }
}

impl Backend for Sentinel {
    fn nodes(&self) -> Vec<Node> {
        self.region.all()
    }

    fn shards(&self) -> Vec<Shard> {
        vec![Shard {
            primary: self.region.primary.clone(),
            replica: self.region.replica.clone(),
        }]
    }

    fn route(&self, _key: &str) -> usize {
        0
    }

    /// Asks the Sentinels in turn; the first that names one of the region's nodes
    /// decides, and the other node is its replica.
    fn primary(&self, _shard: usize) -> BoxFuture<'_, Option<Shard>> {
        Box::pin(async move {
            let nodes = self.region.all();
            for sentinel in &self.region.sentinels {
                let Ok(Ok(addr)) =
                    tokio::time::timeout(self.ask, primary(sentinel, &self.region.master_name))
                        .await
                else {
                    continue;
                };
                let Some(primary) = nodes.iter().find(|n| n.addr == addr) else {
                    continue;
                };
                return Some(Shard {
                    primary: primary.clone(),
                    replica: nodes.iter().find(|n| n.addr != primary.addr).cloned(),
                });
            }
            None
        })
    }
}
