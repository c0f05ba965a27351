//! Redis failover: a region's primary is failed over through Sentinel
//! (`SENTINEL FAILOVER`). Healing undoes nothing: the old primary rejoins as a replica.

use super::ops::{sentinel_cli, sentinel_primary};
use super::{FaultFamily, Nodes};
use crate::remote::RemoteError;
use coherence_store::faults::Family;
use serde::{Deserialize, Serialize};

/// A region's Redis primary is failed over through Sentinel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedisFailover {
    /// The region (Sentinel's master name).
    pub region: String,
    /// The Sentinel host asked to fail over.
    pub sentinel: String,
    /// The primary before.
    pub from: String,
    /// The region's Redis hosts.
    pub members: Vec<String>,
}

impl RedisFailover {
    /// A failover of `region`'s Redis primary, asked of the Sentinel on `sentinel`.
    pub fn new(
        region: &str,
        sentinel: &str,
        members: &[String],
        net: &dyn Nodes,
    ) -> Result<RedisFailover, RemoteError> {
        let from = sentinel_primary(region, sentinel, members, net)?;
        Ok(RedisFailover {
            region: region.to_string(),
            sentinel: sentinel.to_string(),
            from,
            members: members.to_vec(),
        })
    }
}

impl FaultFamily for RedisFailover {
    fn family(&self) -> Family {
        Family::RedisFailover
    }

    fn apply(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        let RedisFailover {
            region,
            sentinel,
            from,
            members,
        } = self;
        sentinel_cli(net, sentinel, &["SENTINEL", "FAILOVER", region])?;
        // Done when Sentinel names another primary.
        for _ in 0..200 {
            if sentinel_primary(region, sentinel, members, net).is_ok_and(|p| p != *from) {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err(RemoteError {
            node: sentinel.clone(),
            command: format!("SENTINEL FAILOVER {region}"),
            status: None,
            stdout: String::new(),
            stderr: format!("{from} is still the primary of {region} after 10 s"),
        })
    }

    fn heal(&self, _net: &dyn Nodes) -> Result<(), RemoteError> {
        Ok(())
    }

    fn traces(&self, _net: &dyn Nodes) -> Result<Vec<String>, RemoteError> {
        Ok(Vec::new())
    }

    fn outcome(&self, net: &dyn Nodes) -> Option<serde_json::Value> {
        let promoted = sentinel_primary(&self.region, &self.sentinel, &self.members, net).ok()?;
        Some(
            serde_json::json!({"service": "redis", "region": self.region, "promoted": promoted, "demoted": self.from}),
        )
    }
}
