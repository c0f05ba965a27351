//! Redis failover: a region's primary is failed over through Sentinel
//! (`SENTINEL FAILOVER`). Healing undoes nothing, but ends what Sentinel leaves open:
//! it names the new primary at once and tells the old one to follow it only at its next
//! look, up to 10 s later, and meanwhile the old primary takes writes (a client that
//! did not notice the switch) that never replicate. The heal makes the old primary a
//! replica of the new one and waits until it has synced, so that the run's final phase
//! sees a settled region.

use super::ops::{redis_cli, sentinel_cli, sentinel_primary};
use super::{FaultFamily, Nodes};
use crate::remote::RemoteError;
use coherence_store::faults::Family;
use serde::{Deserialize, Serialize};

/// How long the heal waits for the old primary to sync with the new one (a full sync
/// waits for `repl-diskless-sync-delay`, 5 s by default, first).
const SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether `INFO replication` says the node is a replica of `primary` (an address),
/// linked and not syncing.
fn synced_to(info: &str, primary: &str) -> bool {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    field("role") == Some("slave")
        && field("master_host") == Some(primary)
        && field("master_link_status") == Some("up")
        && field("master_sync_in_progress") == Some("0")
}

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

    fn heal(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        let to = sentinel_primary(&self.region, &self.sentinel, &self.members, net)?;
        if to == self.from {
            return Ok(());
        }
        let to_addr = net.addr(&to).unwrap_or_default();
        // A node that does not answer (killed by another fault) is Sentinel's to
        // reconfigure when it is back.
        let Ok(role) = redis_cli(net, &self.from, &["ROLE"]) else {
            return Ok(());
        };
        let follows = role.lines().nth(1).is_some_and(|h| h.trim() == to_addr);
        if !follows {
            redis_cli(net, &self.from, &["REPLICAOF", &to_addr, "6379"])?;
        }
        let deadline = std::time::Instant::now() + SYNC_WAIT;
        loop {
            let info = redis_cli(net, &self.from, &["INFO", "replication"])?;
            if synced_to(&info, &to_addr) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(RemoteError {
                    node: self.from.clone(),
                    command: format!("REPLICAOF {to_addr} 6379"),
                    status: None,
                    stdout: info,
                    stderr: format!(
                        "{} has not synced with the new primary {to} after {SYNC_WAIT:?}",
                        self.from
                    ),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
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

#[cfg(test)]
mod tests {
    use super::synced_to;

    #[test]
    fn a_replica_is_synced_once_linked_and_not_syncing() {
        let info = "# Replication\r\nrole:slave\r\nmaster_host:10.77.0.31\r\nmaster_port:6379\r\nmaster_link_status:up\r\nmaster_sync_in_progress:0\r\n";
        assert!(synced_to(info, "10.77.0.31"));
        assert!(!synced_to(info, "10.77.0.32"), "another primary");
        assert!(!synced_to(&info.replace(":up", ":down"), "10.77.0.31"));
        assert!(!synced_to(
            &info.replace("progress:0", "progress:1"),
            "10.77.0.31"
        ));
        assert!(!synced_to("# Replication\r\nrole:master\r\n", "10.77.0.31"));
    }
}
