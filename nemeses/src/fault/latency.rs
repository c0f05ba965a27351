//! Latency: nodes delay what they send by a netem queueing discipline on their
//! interface; healing removes it.

use super::ops::remote_of;
use super::{FaultFamily, Nodes};
use crate::remote::RemoteError;
use coherence_store::faults::Family;
use serde::{Deserialize, Serialize};

/// Nodes delay what they send (netem).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// The nodes.
    pub nodes: Vec<String>,
    /// The delay in milliseconds.
    pub delay_ms: u64,
}

impl FaultFamily for Latency {
    fn family(&self) -> Family {
        Family::Latency
    }

    fn apply(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        for node in &self.nodes {
            let delay = format!("{}ms", self.delay_ms);
            let argv = [
                "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", &delay,
            ];
            remote_of(net, node)?.run(&argv).map_err(|mut e| {
                if e.stderr.contains("qdisc kind is unknown") {
                    e.stderr = format!(
                        "{}\nlatency needs the kernel's netem queueing discipline (sch_netem), \
                         which this node's kernel lacks: use packet-loss instead",
                        e.stderr.trim()
                    );
                }
                e
            })?;
        }
        Ok(())
    }

    fn heal(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        for node in &self.nodes {
            let remote = remote_of(net, node)?;
            let shown = remote.run(&["tc", "qdisc", "show", "dev", "eth0"])?.stdout;
            if shown.contains("netem") {
                remote.run(&["tc", "qdisc", "del", "dev", "eth0", "root"])?;
            }
        }
        Ok(())
    }

    fn traces(&self, net: &dyn Nodes) -> Result<Vec<String>, RemoteError> {
        let mut left = Vec::new();
        for node in &self.nodes {
            let shown = remote_of(net, node)?
                .run(&["tc", "qdisc", "show", "dev", "eth0"])?
                .stdout;
            if shown.contains("netem") {
                left.push(format!("on {node}: a netem qdisc"));
            }
        }
        Ok(left)
    }
}
