//! Kills and pauses: a service's processes on a node are sent SIGKILL (healing starts the
//! service again) or SIGSTOP (healing sends SIGCONT).

use super::ops::{libc_signal, remote_of, signal, strs, wait_for};
use super::{Fault, FaultFamily, Nodes};
use crate::remote::RemoteError;
use coherence_store::faults::Family;
use serde::{Deserialize, Serialize};

/// A service's processes are killed (SIGKILL); healing starts it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kill {
    /// The node.
    pub node: String,
    /// The service.
    pub service: String,
    /// The processes killed.
    pub pids: Vec<i32>,
}

/// A service's processes are paused (SIGSTOP); healing resumes them (SIGCONT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pause {
    /// The node.
    pub node: String,
    /// The service.
    pub service: String,
    /// The processes paused.
    pub pids: Vec<i32>,
}

impl Fault {
    /// A kill (`pause == false`) or pause of `service` on `node`: its processes now.
    pub fn signal(
        node: &str,
        service: &str,
        pause: bool,
        net: &dyn Nodes,
    ) -> Result<Fault, RemoteError> {
        let pids = net.pids(node, service)?;
        if pids.is_empty() {
            // Killing nothing is no fault: say so, rather than "apply" it.
            return Err(RemoteError {
                node: node.to_string(),
                command: format!("find the {service} processes"),
                status: None,
                stdout: String::new(),
                stderr: format!(
                    "no {service} process runs on {node}, so there is nothing to kill or pause"
                ),
            });
        }
        let (node, service) = (node.to_string(), service.to_string());
        Ok(if pause {
            Fault::Pause(Pause {
                node,
                service,
                pids,
            })
        } else {
            Fault::Kill(Kill {
                node,
                service,
                pids,
            })
        })
    }
}

impl FaultFamily for Kill {
    fn family(&self) -> Family {
        Family::Kill
    }

    fn apply(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        signal(net, &self.node, &self.pids, libc_signal::KILL)
    }

    fn heal(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        let Kill { node, service, .. } = self;
        if net.pids(node, service)?.is_empty() {
            net.restart(node, service)?;
            wait_for(node, &format!("{service} to run again"), || {
                Ok(!net.pids(node, service)?.is_empty())
            })?;
        }
        Ok(())
    }

    fn traces(&self, net: &dyn Nodes) -> Result<Vec<String>, RemoteError> {
        let Kill { node, service, .. } = self;
        let mut left = Vec::new();
        if net.pids(node, service)?.is_empty() {
            left.push(format!("on {node}: {service} is not running"));
        }
        Ok(left)
    }
}

impl FaultFamily for Pause {
    fn family(&self) -> Family {
        Family::Pause
    }

    fn apply(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        signal(net, &self.node, &self.pids, libc_signal::STOP)
    }

    fn heal(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        signal(net, &self.node, &self.pids, libc_signal::CONT)
    }

    fn traces(&self, net: &dyn Nodes) -> Result<Vec<String>, RemoteError> {
        let Pause { node, pids, .. } = self;
        let mut left = Vec::new();
        if !pids.is_empty() {
            // Read on the node: its process ids are its own.
            let mut argv = vec![
                "ps".to_string(),
                "-o".into(),
                "pid=,stat=".into(),
                "-p".into(),
            ];
            argv.push(
                pids.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
            let out = remote_of(net, node)?.execute(&strs(&argv))?;
            for line in out.stdout.lines() {
                let mut words = line.split_whitespace();
                if let (Some(pid), Some(stat)) = (words.next(), words.next()) {
                    if stat.starts_with('T') {
                        left.push(format!("on {node}: process {pid} is still stopped"));
                    }
                }
            }
        }
        Ok(left)
    }
}
