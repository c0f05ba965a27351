//! Packet loss: nodes drop a share of the packets they receive (an iptables rule with
//! the `statistic` match on each); healing removes exactly those rules.

use super::{iptables, FaultFamily, Nodes, Rule};
use crate::remote::RemoteError;
use coherence_store::faults::Family;
use serde::{Deserialize, Serialize};

/// Nodes drop a share of the packets they receive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PacketLoss {
    /// The nodes.
    pub nodes: Vec<String>,
    /// The share dropped, 0 to 1.
    pub probability: f64,
    /// The rules that do it.
    pub rules: Vec<Rule>,
}

impl PacketLoss {
    /// Packet loss on `nodes`: each drops `probability` of what it receives.
    pub fn new(nodes: &[String], probability: f64, tag: &str) -> PacketLoss {
        let probability_s = format!("{probability:.4}");
        let rules = nodes
            .iter()
            .map(|node| {
                let matches = [
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &probability_s,
                ];
                iptables::drop_rule(node, &matches, tag)
            })
            .collect();
        PacketLoss {
            nodes: nodes.to_vec(),
            probability,
            rules,
        }
    }
}

impl FaultFamily for PacketLoss {
    fn family(&self) -> Family {
        Family::PacketLoss
    }

    fn apply(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        iptables::add(&self.rules, net)
    }

    fn heal(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        iptables::remove(&self.rules, net)
    }

    fn traces(&self, net: &dyn Nodes) -> Result<Vec<String>, RemoteError> {
        iptables::traces(&self.rules, net)
    }

    fn rules(&self) -> &[Rule] {
        &self.rules
    }
}
