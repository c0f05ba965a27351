//! Clock skew: a node's wall clock is bumped or strobed (through the node's clock
//! control: the lab's clock shim); healing sets it back to true time.

use super::{FaultFamily, Nodes};
use crate::clock::Skew;
use crate::remote::RemoteError;
use coherence_store::faults::Family;
use serde::{Deserialize, Serialize};

/// A node's wall clock is bumped or strobed; healing sets it back to true time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockSkew {
    /// The node.
    pub node: String,
    /// How its clock is moved.
    #[serde(flatten)]
    pub skew: Skew,
}

impl FaultFamily for ClockSkew {
    fn family(&self) -> Family {
        match self.skew {
            Skew::Bump { .. } => Family::ClockBump,
            Skew::Strobe { .. } => Family::ClockStrobe,
        }
    }

    fn apply(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        net.set_clock_skew(&self.node, Some(&self.skew))
    }

    fn heal(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        net.set_clock_skew(&self.node, None)
    }

    fn traces(&self, net: &dyn Nodes) -> Result<Vec<String>, RemoteError> {
        let mut left = Vec::new();
        if let Some(skew) = net.clock_skew(&self.node)? {
            left.push(format!(
                "on {}: the clock is still skewed ({skew})",
                self.node
            ));
        }
        Ok(left)
    }
}
