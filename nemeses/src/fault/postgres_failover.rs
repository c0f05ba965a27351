//! PostgreSQL failover: the standby is promoted (`pg_promote()`) and writers are pointed
//! at it. Fenced, the old primary is killed first, so everyone finds the new one (and
//! writes it had not shipped are lost). Unfenced, it keeps accepting writes: clients that
//! try it first go back to it, a split brain. Healing rebuilds the old primary as a
//! standby of the new one.

use super::ops::{libc_signal, postgres_roles, signal, wait_for};
use super::{FaultFamily, Nodes};
use crate::remote::RemoteError;
use coherence_store::faults::Family;
use serde::{Deserialize, Serialize};

/// PostgreSQL's standby promoted, fenced or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostgresFailover {
    /// The primary before.
    pub from: String,
    /// The standby promoted.
    pub to: String,
    /// Whether the old primary was killed before the promotion.
    pub fence: bool,
}

impl PostgresFailover {
    /// A failover of PostgreSQL from whichever of `servers` is the primary now to the
    /// other, fenced or not.
    pub fn new(
        servers: &[String],
        fence: bool,
        net: &dyn Nodes,
    ) -> Result<PostgresFailover, RemoteError> {
        let (primaries, standbys) = postgres_roles(servers, net)?;
        match (primaries.as_slice(), standbys.first()) {
            ([from], Some(to)) => Ok(PostgresFailover {
                from: from.clone(),
                to: to.clone(),
                fence,
            }),
            _ => Err(RemoteError {
                node: servers.join(","),
                command: "SELECT pg_is_in_recovery()".into(),
                status: None,
                stdout: String::new(),
                stderr: format!(
                    "a failover needs one primary and a standby; primaries: {primaries:?}, standbys: {standbys:?}"
                ),
            }),
        }
    }
}

impl FaultFamily for PostgresFailover {
    fn family(&self) -> Family {
        Family::PostgresFailover
    }

    fn apply(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        let PostgresFailover { from, to, fence } = self;
        if *fence {
            let pids = net.pids(from, "postgres")?;
            signal(net, from, &pids, libc_signal::KILL)?;
            wait_for(from, "postgres to die", || {
                Ok(net.pids(from, "postgres")?.is_empty())
            })?;
        }
        let promoted = net.sql(to, "SELECT pg_promote(true, 30)")?;
        if promoted.trim() != "t" {
            return Err(RemoteError {
                node: to.clone(),
                command: "SELECT pg_promote(true, 30)".into(),
                status: None,
                stdout: promoted,
                stderr: "the standby was not promoted within 30 s".into(),
            });
        }
        if !*fence {
            // Point the writers at the new primary: end their sessions on the
            // old one, so that they look for a primary again.
            net.sql(
                from,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )?;
        }
        Ok(())
    }

    fn heal(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        let PostgresFailover { from, to, .. } = self;
        if net
            .sql(from, "SELECT pg_is_in_recovery()")
            .ok()
            .as_deref()
            .map(str::trim)
            != Some("t")
        {
            net.rebuild_standby(from, to)?;
        }
        Ok(())
    }

    fn traces(&self, net: &dyn Nodes) -> Result<Vec<String>, RemoteError> {
        let PostgresFailover { from, to, .. } = self;
        let mut left = Vec::new();
        for (node, want, role) in [(from, "t", "a standby"), (to, "f", "the primary")] {
            match net.sql(node, "SELECT pg_is_in_recovery()") {
                Ok(got) if got.trim() == want => {}
                Ok(_) => left.push(format!("on {node}: PostgreSQL is not {role}")),
                Err(e) => left.push(format!(
                    "on {node}: PostgreSQL does not answer: {}",
                    e.stderr.trim()
                )),
            }
        }
        Ok(left)
    }

    fn outcome(&self, _net: &dyn Nodes) -> Option<serde_json::Value> {
        Some(
            serde_json::json!({"service": "postgres", "promoted": self.to, "demoted": self.from, "fenced": self.fence}),
        )
    }
}
