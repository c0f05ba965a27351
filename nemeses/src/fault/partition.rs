//! Partitions: nodes drop each other's traffic, one iptables rule per (node, sender)
//! pair of the grudge; healing removes exactly those rules.

use super::{iptables, FaultFamily, Nodes, Rule};
use crate::partition::{Grudge, Shape};
use crate::remote::RemoteError;
use coherence_store::faults::Family;
use serde::{Deserialize, Serialize};

/// Nodes drop each other's traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partition {
    /// The shape.
    pub shape: Shape,
    /// Who drops traffic from whom.
    pub grudge: Grudge,
    /// The rules that do it.
    pub rules: Vec<Rule>,
}

impl Partition {
    /// A partition of `shape` over `nodes`, its rules tagged with `tag` (unique per
    /// fault, e.g. the run and the journal sequence number).
    pub fn new(
        shape: Shape,
        nodes: &[String],
        net: &dyn Nodes,
        tag: &str,
    ) -> Result<Partition, String> {
        let grudge = crate::partition::grudge(&shape, nodes);
        let mut rules = Vec::new();
        for (node, dropped) in &grudge {
            for from in dropped {
                let addr = net
                    .addr(from)
                    .ok_or_else(|| format!("no address for node {from:?}"))?;
                rules.push(iptables::drop_rule(node, &["-s", &addr], tag));
            }
        }
        Ok(Partition {
            shape,
            grudge,
            rules,
        })
    }
}

impl FaultFamily for Partition {
    fn family(&self) -> Family {
        Family::Partition
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
