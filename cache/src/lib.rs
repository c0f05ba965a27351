//! The caches coherence talks to, behind one seam.
//!
//! A [`Backend`] is one region's cache deployment: it lists its nodes, routes a key to
//! the shard that serves it, asks its authority where a shard's primary is now (after a
//! failover it moved) and connects to a node. Workloads keep what they last learned and
//! ask again after an error; the lab's invalidators do the same. Today's one backend is
//! a Sentinel-managed primary and replica per region ([`sentinel`]); [`open`] is where
//! a campaign's region becomes a backend, the one place a new kind is registered.
//!
//! The versioned-fill protocol that the cache-aside workload and the lab's invalidators
//! share (its Lua scripts and tombstones) is here too ([`versioned`]), so the two sides
//! cannot drift apart.

#![deny(missing_docs)]

pub mod sentinel;
pub mod versioned;

use redis::aio::MultiplexedConnection;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use sentinel::RegionNodes;

/// A server, and the name the history gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The name in the history (`r1a`, `db1`, ...).
    pub name: String,
    /// `host:port`.
    pub addr: String,
}

/// A shard: the primary that takes its writes and a replica that follows it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// Its primary.
    pub primary: Node,
    /// A replica of the primary.
    pub replica: Option<Node>,
}

/// A future a [`Backend`] returns (boxed, so that backends can be chosen at run time).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One region's caches: how to reach them and which node serves a key.
pub trait Backend: Send + Sync {
    /// Every cache node of the region.
    fn nodes(&self) -> Vec<Node>;

    /// The region's shards as they were configured, before any failover: index `i` is
    /// the shard [`Backend::route`] names with `i`.
    fn shards(&self) -> Vec<Shard>;

    /// The shard that serves `key`.
    fn route(&self, key: &str) -> usize;

    /// Asks the region's authority (its Sentinels, a cluster's slot map) where the
    /// primary of `shard` is now, with the replica that follows it; `None` when none
    /// answered in time, or when the primary is fixed.
    fn primary(&self, shard: usize) -> BoxFuture<'_, Option<Shard>>;

    /// Connects to `node` (no timeout of its own: callers bound it).
    fn connect(
        &self,
        node: &Node,
    ) -> BoxFuture<'static, redis::RedisResult<MultiplexedConnection>> {
        Box::pin(connect(node.addr.clone()))
    }
}

/// A multiplexed connection to the Redis at `addr` (`host:port`).
pub async fn connect(addr: String) -> redis::RedisResult<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    client.get_multiplexed_async_connection().await
}

/// The backend a region is: today always Sentinel-managed (a region without Sentinels
/// keeps the primary it was given). `ask` bounds each question to an authority. A new
/// kind of backend is one module implementing [`Backend`], chosen here.
pub fn open(region: &RegionNodes, ask: Duration) -> Arc<dyn Backend> {
    Arc::new(sentinel::Sentinel::new(region.clone(), ask))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, addr: &str) -> Node {
        Node {
            name: name.into(),
            addr: addr.into(),
        }
    }

    fn region(sentinels: Vec<String>) -> RegionNodes {
        RegionNodes {
            name: "r1".into(),
            primary: node("r1a", "127.0.0.1:1"),
            replica: Some(node("r1b", "127.0.0.1:2")),
            sentinels,
            master_name: "r1".into(),
            nodes: Vec::new(),
        }
    }

    #[test]
    fn a_sentinel_region_is_one_shard_serving_every_key() {
        let backend = open(&region(Vec::new()), Duration::from_millis(100));
        assert_eq!(
            backend.nodes(),
            [node("r1a", "127.0.0.1:1"), node("r1b", "127.0.0.1:2")]
        );
        assert_eq!(backend.route("k0"), 0);
        assert_eq!(backend.route("k99"), 0);
        assert_eq!(
            backend.shards(),
            [Shard {
                primary: node("r1a", "127.0.0.1:1"),
                replica: Some(node("r1b", "127.0.0.1:2")),
            }]
        );
    }

    #[tokio::test]
    async fn without_an_answering_sentinel_the_primary_is_unknown() {
        // No Sentinels: the primary is fixed.
        let backend = open(&region(Vec::new()), Duration::from_millis(100));
        assert_eq!(backend.primary(0).await, None);
        // Sentinels that refuse connections, or never answer: none within the bound.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = open(
            &region(vec![
                "127.0.0.1:1".into(),
                silent.local_addr().unwrap().to_string(),
            ]),
            Duration::from_millis(100),
        );
        let started = std::time::Instant::now();
        assert_eq!(backend.primary(0).await, None);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn tombstones_are_where_the_invalidators_and_the_workload_look() {
        assert_eq!(
            versioned::tombstone("k7"),
            "coherence:invalidated:k7".to_string()
        );
        assert_eq!(versioned::TOMBSTONE_TTL, Duration::from_secs(60));
    }
}
