//! Staging nodes as fault targets: each reached over SSH ([`crate::ssh`]), its services
//! found and started by commands the campaign may override.
//!
//! A campaign names every node faults may touch, in `[[cluster.nodes]]`:
//!
//! ```toml
//! [[cluster.nodes]]
//! name = "redis-eu-1"          # the name histories and faults use
//! addr = "10.0.1.5"            # the address other nodes see it at (partitions)
//! region = "eu"                # the region whose caches it hosts, if any
//! services = ["redis", "sentinel"]
//! ssh = { host = "redis-eu-1.staging.internal", user = "ops", key = "~/.ssh/id_ed25519",
//!         known_hosts = "~/.ssh/known_hosts", sudo = true }
//! # Optional, per service: how to find its processes and start it again.
//! service.redis = { process = "redis-server", start = "systemctl start redis-server" }
//! ```
//!
//! Nothing needs installing on the nodes beyond the servers, `iptables`, `pgrep`, and
//! `psql`/`redis-cli` where PostgreSQL and Redis run.

use crate::clock::Skew;
use crate::fault::Nodes;
use crate::remote::{shell_word, shell_words, Remote, RemoteError};
use crate::ssh::{Ssh, SshConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where a staging node remembers how far its clock was bumped, so that a later
/// `coherence heal` can set it right (written before the clock is moved).
pub const SKEW_MARKER: &str = "/var/tmp/coherence-clock-skew";

/// A shell script that moves the node's system clock by `delta_ms` (nanosecond
/// arithmetic in the shell, `date -s @SECONDS.NANOS`).
pub fn bump_script(delta_ms: i64) -> String {
    let delta_ns = delta_ms.saturating_mul(1_000_000);
    format!(
        "n=$(date +%s%N) && n=$((n + ({delta_ns}))) && \
         date -s \"@$((n / 1000000000)).$(printf %09d $((n % 1000000000)))\" >/dev/null"
    )
}

/// The services faults know; a campaign names them in lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::VariantNames)]
#[strum(serialize_all = "lowercase")]
enum Service {
    Redis,
    Sentinel,
    Postgres,
    Invalidator,
}

/// The services faults know, by campaign name.
pub const SERVICES: &[&str] = <Service as strum::VariantNames>::VARIANTS;

/// One staging node, as a campaign describes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The name histories and faults use.
    pub name: String,
    /// The address the other nodes see it at: partitions drop traffic from it.
    pub addr: String,
    /// The region whose caches (or Sentinel) it hosts; none for database and pipeline
    /// nodes.
    #[serde(default)]
    pub region: Option<String>,
    /// What runs on it, among [`SERVICES`].
    #[serde(default)]
    pub services: Vec<String>,
    /// How to reach it.
    pub ssh: SshConfig,
    /// How to find and start a service, where the defaults do not fit.
    #[serde(default)]
    pub service: BTreeMap<String, ServiceConfig>,
}

/// How to find and start one service on a node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// A `pgrep -f` pattern matching its processes' command lines (default: the
    /// process name `redis-server`, `redis-sentinel` or `postgres`, matched exactly).
    #[serde(default)]
    pub process: Option<String>,
    /// A shell command that starts it again in the role it has now (default:
    /// `systemctl start redis-server`, `redis-sentinel` or `postgresql`).
    #[serde(default)]
    pub start: Option<String>,
    /// PostgreSQL only: a shell command that makes this node a fresh standby of
    /// `{primary}` (replaced by the primary's address, quoted for the shell when it
    /// needs it), e.g. a script around `pg_basebackup -R`. Needed to heal a PostgreSQL
    /// failover.
    #[serde(default)]
    pub rebuild_standby: Option<String>,
}

/// Why a set of node descriptions cannot be used.
pub fn validate(nodes: &[NodeConfig]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for n in nodes {
        if !seen.insert(n.name.as_str()) {
            return Err(format!("node {:?} is named twice", n.name));
        }
        for s in n.services.iter().chain(n.service.keys()) {
            if !SERVICES.contains(&s.as_str()) {
                return Err(format!(
                    "node {:?}: unknown service {s:?}; the services are {}",
                    n.name,
                    SERVICES.join(", ")
                ));
            }
        }
        if n.services.iter().any(|s| s == "invalidator")
            && n.service
                .get("invalidator")
                .is_none_or(|c| c.process.is_none() || c.start.is_none())
        {
            return Err(format!(
                "node {:?} runs the invalidator: give service.invalidator = {{ process = \"…\", start = \"…\" }}",
                n.name
            ));
        }
    }
    Ok(())
}

/// Staging nodes, reached over SSH.
pub struct StagingNodes {
    nodes: Vec<(NodeConfig, Arc<Ssh>)>,
}

impl StagingNodes {
    /// The nodes a campaign describes. Connections open on first use.
    pub fn new(nodes: &[NodeConfig]) -> StagingNodes {
        StagingNodes {
            nodes: nodes
                .iter()
                .map(|n| (n.clone(), Arc::new(Ssh::new(n.name.clone(), n.ssh.clone()))))
                .collect(),
        }
    }

    /// Connects to every node, verifying its host key: a campaign whose nodes cannot
    /// be reached is refused before any fault is applied.
    pub fn check(&self) -> Result<(), String> {
        for (n, _) in &self.nodes {
            Ssh::connect(n.name.clone(), n.ssh.clone()).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Every node's name.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|(n, _)| n.name.clone()).collect()
    }

    /// The nodes of `region`.
    pub fn region(&self, region: &str) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(n, _)| n.region.as_deref() == Some(region))
            .map(|(n, _)| n.name.clone())
            .collect()
    }

    /// The nodes that run `service`.
    pub fn running(&self, service: &str) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(n, _)| n.services.iter().any(|s| s == service))
            .map(|(n, _)| n.name.clone())
            .collect()
    }

    fn get(&self, node: &str) -> Result<&(NodeConfig, Arc<Ssh>), RemoteError> {
        self.nodes
            .iter()
            .find(|(n, _)| n.name == node)
            .ok_or_else(|| RemoteError {
                node: node.to_string(),
                command: String::new(),
                status: None,
                stdout: String::new(),
                stderr: "no such node in the campaign's [[cluster.nodes]]".into(),
            })
    }

    fn service(&self, node: &str, service: &str) -> Result<ServiceConfig, RemoteError> {
        Ok(self
            .get(node)?
            .0
            .service
            .get(service)
            .cloned()
            .unwrap_or_default())
    }
}

/// The process name a service runs under by default.
fn default_process(service: &str) -> Option<&'static str> {
    match service.parse().ok()? {
        Service::Redis => Some("redis-server"),
        Service::Sentinel => Some("redis-sentinel"),
        Service::Postgres => Some("postgres"),
        Service::Invalidator => None,
    }
}

/// The systemd unit a service runs as by default (Debian's names).
fn default_unit(service: &str) -> Option<&'static str> {
    match service.parse().ok()? {
        Service::Redis => Some("redis-server"),
        Service::Sentinel => Some("redis-sentinel"),
        Service::Postgres => Some("postgresql"),
        Service::Invalidator => None,
    }
}

fn unsupported(node: &str, what: String) -> RemoteError {
    RemoteError {
        node: node.to_string(),
        command: String::new(),
        status: None,
        stdout: String::new(),
        stderr: what,
    }
}

impl Nodes for StagingNodes {
    fn remote(&self, node: &str) -> Option<Box<dyn Remote>> {
        self.get(node)
            .ok()
            .map(|(_, ssh)| Box::new(ssh.clone()) as Box<dyn Remote>)
    }

    fn addr(&self, node: &str) -> Option<String> {
        self.get(node).ok().map(|(n, _)| n.addr.clone())
    }

    fn pids(&self, node: &str, service: &str) -> Result<Vec<i32>, RemoteError> {
        let (_, ssh) = self.get(node)?;
        let config = self.service(node, service)?;
        let argv: Vec<String> = match (&config.process, default_process(service)) {
            (Some(pattern), _) => vec!["pgrep".into(), "-f".into(), pattern.clone()],
            (None, Some(name)) => vec!["pgrep".into(), "-x".into(), name.into()],
            (None, None) => {
                return Err(unsupported(
                    node,
                    format!("give service.{service}.process: a pgrep -f pattern for its processes"),
                ))
            }
        };
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = ssh.execute(&argv)?;
        // pgrep: 0 found, 1 none found, anything else an error.
        if out.status > 1 {
            return Err(RemoteError {
                node: node.to_string(),
                command: shell_words(&argv),
                status: Some(out.status),
                stdout: out.stdout,
                stderr: out.stderr,
            });
        }
        Ok(out
            .stdout
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    fn restart(&self, node: &str, service: &str) -> Result<(), RemoteError> {
        let (_, ssh) = self.get(node)?;
        let config = self.service(node, service)?;
        let command = match (&config.start, default_unit(service)) {
            (Some(c), _) => c.clone(),
            (None, Some(unit)) => format!("systemctl start {unit}"),
            (None, None) => {
                return Err(unsupported(
                    node,
                    format!("give service.{service}.start: a command that starts it"),
                ))
            }
        };
        ssh.run(&["sh", "-c", &command])?;
        Ok(())
    }

    fn sql(&self, node: &str, sql: &str) -> Result<String, RemoteError> {
        let (_, ssh) = self.get(node)?;
        // As the postgres user over the local socket: Debian's peer authentication.
        let out = ssh.run(&[
            "runuser",
            "-u",
            "postgres",
            "--",
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
            sql,
        ])?;
        Ok(out.stdout.trim().to_string())
    }

    /// Staging nodes have one clock each: a bump moves the system clock with `date -s`
    /// (the marker file first, so that a heal after a crash knows how far), and the
    /// reset moves it back by as much. A strobe needs the lab's shim.
    fn set_clock_skew(&self, node: &str, skew: Option<&Skew>) -> Result<(), RemoteError> {
        let (_, ssh) = self.get(node)?;
        let now = self.clock_skew(node)?;
        match (skew, now) {
            (Some(Skew::Bump { offset_ms }), None) => {
                ssh.upload(
                    format!("{offset_ms}\n").as_bytes(),
                    std::path::Path::new(SKEW_MARKER),
                    0o644,
                )?;
                ssh.run(&["sh", "-c", &bump_script(*offset_ms)])?;
                Ok(())
            }
            (Some(Skew::Bump { .. }), Some(now)) => Err(unsupported(
                node,
                format!(
                    "its clock is already bumped by {} ms ({SKEW_MARKER}): heal that first",
                    now.offset_ms()
                ),
            )),
            (Some(Skew::Strobe { .. }), _) => Err(unsupported(
                node,
                "clock-strobe needs the lab's clock shim; on staging nodes use clock-bump".into(),
            )),
            (None, None) => Ok(()),
            (None, Some(now)) => {
                ssh.run(&["sh", "-c", &bump_script(-now.offset_ms())])?;
                ssh.run(&["rm", "-f", SKEW_MARKER])?;
                Ok(())
            }
        }
    }

    fn clock_skew(&self, node: &str) -> Result<Option<Skew>, RemoteError> {
        let (_, ssh) = self.get(node)?;
        let out = ssh.execute(&["cat", SKEW_MARKER])?;
        if out.status != 0 {
            return Ok(None);
        }
        Ok(out
            .stdout
            .trim()
            .parse()
            .ok()
            .map(|offset_ms| Skew::Bump { offset_ms }))
    }

    fn rebuild_standby(&self, node: &str, primary: &str) -> Result<(), RemoteError> {
        let (_, ssh) = self.get(node)?;
        let addr = self.addr(primary).unwrap_or_default();
        let command = self
            .service(node, "postgres")?
            .rebuild_standby
            .ok_or_else(|| {
                unsupported(
                    node,
                    "give service.postgres.rebuild_standby: a command that makes this node a \
                     standby of {primary}"
                        .into(),
                )
            })?
            .replace("{primary}", &shell_word(&addr));
        ssh.run(&["sh", "-c", &command])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(text: &str) -> Result<NodeConfig, toml::de::Error> {
        toml::from_str(text)
    }

    const BASE: &str = r#"
name = "r1"
addr = "10.0.0.5"
region = "eu"
services = ["redis", "sentinel"]
ssh = { host = "127.0.0.1", user = "ops", known_hosts = "/k" }
"#;

    /// The bump script, run by a real shell with a `date` that only prints what it was
    /// asked to set: the arithmetic carries nanoseconds and negative offsets right.
    #[test]
    fn the_bump_script_computes_the_new_time() {
        let dir = tempfile::tempdir().unwrap();
        let date = dir.path().join("date");
        std::fs::write(
            &date,
            "#!/bin/sh\nif [ \"$1\" = +%s%N ]; then echo 1700000000123456789; else echo \"$2\" >&2; fi\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&date, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (delta, want) in [
            (2500, "@1700000002.623456789"),
            (-1000, "@1699999999.123456789"),
            (-200, "@1699999999.923456789"),
        ] {
            let out = std::process::Command::new("sh")
                .args(["-c", &bump_script(delta)])
                .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), want);
        }
    }

    #[test]
    fn a_node_reads_with_its_defaults() {
        let n = node(BASE).unwrap();
        assert_eq!(n.ssh.port, 22);
        assert!(!n.ssh.sudo);
        assert!(n.service.is_empty());
        validate(&[n]).unwrap();
    }

    #[test]
    fn bad_nodes_are_refused_with_what_to_do() {
        let n = node(BASE).unwrap();
        let e = validate(&[n.clone(), n.clone()]).unwrap_err();
        assert!(e.contains("named twice"), "{e}");
        let mut odd = n.clone();
        odd.services.push("memcached".into());
        let e = validate(&[odd]).unwrap_err();
        assert!(e.contains("unknown service \"memcached\""), "{e}");
        let mut inv = n;
        inv.services.push("invalidator".into());
        let e = validate(&[inv]).unwrap_err();
        assert!(e.contains("service.invalidator"), "{e}");
        let e = node(&format!("{BASE}colour = \"red\"\n")).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }
}
