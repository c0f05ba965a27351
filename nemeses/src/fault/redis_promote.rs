//! Redis promotion behind Sentinel's back: a region's replica is made a primary with
//! `REPLICAOF NO ONE`, stops following its primary and serves what it held. Healing
//! makes it a replica again, of the primary Sentinel names.

use super::ops::{primary_beside, redis_cli, sentinel_primary};
use super::{FaultFamily, Nodes};
use crate::remote::RemoteError;
use coherence_store::faults::Family;
use serde::{Deserialize, Serialize};

/// A region's Redis replica made a primary with `REPLICAOF NO ONE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedisPromote {
    /// The region (Sentinel's master name).
    pub region: String,
    /// The replica promoted.
    pub node: String,
    /// The Sentinel host asked who the primary is.
    pub sentinel: String,
    /// The region's Redis hosts.
    pub members: Vec<String>,
}

impl RedisPromote {
    /// A `REPLICAOF NO ONE` on `region`'s replica (the member Sentinel does not name as
    /// its primary).
    pub fn new(
        region: &str,
        sentinel: &str,
        members: &[String],
        net: &dyn Nodes,
    ) -> Result<RedisPromote, RemoteError> {
        let primary = sentinel_primary(region, sentinel, members, net)?;
        let node = members
            .iter()
            .find(|m| **m != primary)
            .cloned()
            .ok_or_else(|| RemoteError {
                node: sentinel.to_string(),
                command: String::new(),
                status: None,
                stdout: String::new(),
                stderr: format!("{region} has no replica to promote"),
            })?;
        Ok(RedisPromote {
            region: region.to_string(),
            node,
            sentinel: sentinel.to_string(),
            members: members.to_vec(),
        })
    }
}

impl FaultFamily for RedisPromote {
    fn family(&self) -> Family {
        Family::ReplicaofNoOne
    }

    fn apply(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        redis_cli(net, &self.node, &["REPLICAOF", "NO", "ONE"])?;
        Ok(())
    }

    fn heal(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        let RedisPromote {
            region,
            node,
            sentinel,
            members,
        } = self;
        if let Some(primary) = primary_beside(region, node, sentinel, members, net)? {
            let addr = net.addr(&primary).unwrap_or_default();
            redis_cli(net, node, &["REPLICAOF", &addr, "6379"])?;
        }
        Ok(())
    }

    fn traces(&self, net: &dyn Nodes) -> Result<Vec<String>, RemoteError> {
        let RedisPromote {
            region,
            node,
            sentinel,
            members,
        } = self;
        let mut left = Vec::new();
        if let Some(primary) = primary_beside(region, node, sentinel, members, net)? {
            left.push(format!(
                "on {node}: Redis is a primary beside {region}'s primary {primary}"
            ));
        }
        Ok(left)
    }

    fn outcome(&self, _net: &dyn Nodes) -> Option<serde_json::Value> {
        Some(serde_json::json!({"service": "redis", "region": self.region, "promoted": self.node}))
    }
}
