//! The lab: a real multi-region cluster of Redis and PostgreSQL on one machine.
//!
//! `up` builds hosts as Linux network namespaces joined by a bridge and starts real
//! servers from the distribution's packages in them: a PostgreSQL primary and streaming
//! standby, per region a Redis primary, a replica and three Sentinels, and the
//! invalidation pipeline under test ([`invalidator`]), and per region an app host running
//! the lab's HTTP service ([`service`]). Its state is kept on disk, so
//! `down` removes everything the lab made even after the tool itself was killed. Hosts
//! are reached through the `nemeses` remote, as faults will reach them. Every server
//! has the lab's [`clock`] shim preloaded, so a host's clock can be skewed.
//!
//! Everything here needs root (namespaces, bridges, iptables).

#![deny(missing_docs)]

pub mod clock;
pub mod cluster;
pub mod invalidator;
pub mod layout;
pub mod schema;
pub mod service;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Which invalidation pipeline runs in the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Design {
    /// A trigger sends `NOTIFY`; a listener deletes the key in every region. What is
    /// sent while the listener is disconnected is lost.
    Notify,
    /// A trigger appends to an outbox; a relay deletes in every region and advances a
    /// durable cursor only after all acknowledged. Retries forever.
    Outbox,
    /// No invalidator (the workload's writers invalidate, or nobody does).
    None,
}

impl FromStr for Design {
    type Err = String;
    fn from_str(s: &str) -> Result<Design, String> {
        match s {
            "notify" => Ok(Design::Notify),
            "outbox" => Ok(Design::Outbox),
            "none" => Ok(Design::None),
            _ => Err(format!(
                "unknown invalidator {s:?}: use notify, outbox or none"
            )),
        }
    }
}

impl fmt::Display for Design {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Design::Notify => "notify",
            Design::Outbox => "outbox",
            Design::None => "none",
        })
    }
}

/// Where the lab keeps its state, data and logs: `$COHERENCE_LAB_DIR`, or
/// `/var/tmp/coherence-lab`.
pub fn lab_dir() -> PathBuf {
    std::env::var_os("COHERENCE_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/coherence-lab"))
}
