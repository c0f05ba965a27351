//! Faults that can be applied to nodes and healed, and the heal journal.
//!
//! Every fault is written to the journal (`faults.jsonl` in the run directory, synced to
//! disk) *before* it is applied, and marked healed after. Whatever a run leaves applied,
//! a later `coherence heal RUN_DIR` finds in the journal and heals. A fault records
//! exactly what it did (the iptables rules it added), so healing removes exactly that.

use crate::clock::Skew;
use crate::partition::{Grudge, Shape};
use crate::remote::{shell_words, Remote, RemoteError};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// How faults reach the nodes they name.
pub trait Nodes {
    /// The remote of a node, if it is one of ours.
    fn remote(&self, node: &str) -> Option<Box<dyn Remote>>;
    /// The address other nodes see it at.
    fn addr(&self, node: &str) -> Option<String>;
    /// The process ids of `service` on `node` (`redis`, `sentinel`, `postgres`,
    /// `invalidator`).
    fn pids(&self, node: &str, service: &str) -> Result<Vec<i32>, RemoteError>;
    /// Starts `service` on `node` again, as the cluster started it, in the role it has
    /// now (a Redis whose region failed over comes back as a replica).
    fn restart(&self, node: &str, service: &str) -> Result<(), RemoteError>;
    /// Runs `sql` as a superuser on `node`'s PostgreSQL; returns what it printed
    /// (tuples only, unaligned: `t`, `f`, a number).
    fn sql(&self, node: &str, sql: &str) -> Result<String, RemoteError>;
    /// Makes `node`'s PostgreSQL a fresh streaming standby of `primary`'s, discarding
    /// whatever it held (after a failover, the old primary rejoins this way).
    fn rebuild_standby(&self, node: &str, primary: &str) -> Result<(), RemoteError>;
    /// Moves `node`'s wall clock by `skew`, or back to true time with `None`.
    fn set_clock_skew(&self, node: &str, skew: Option<&Skew>) -> Result<(), RemoteError> {
        let _ = skew;
        Err(clock_unsupported(node))
    }
    /// How `node`'s wall clock is moved now (`None`: it shows true time).
    fn clock_skew(&self, node: &str) -> Result<Option<Skew>, RemoteError> {
        Err(clock_unsupported(node))
    }
}

fn clock_unsupported(node: &str) -> RemoteError {
    RemoteError {
        node: node.to_string(),
        command: String::new(),
        status: None,
        stdout: String::new(),
        stderr: "these nodes cannot have their clocks skewed".into(),
    }
}

/// One iptables rule on one node, as added (`-A`) and removed (`-D`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// The node whose iptables holds it.
    pub node: String,
    /// The rule after `-A`/`-D`: chain, match, target, and our comment.
    pub args: Vec<String>,
}

/// A fault, as journaled: what was done, to which nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// Nodes drop each other's traffic.
    Partition {
        /// The shape.
        shape: Shape,
        /// Who drops traffic from whom.
        grudge: Grudge,
        /// The rules that do it.
        rules: Vec<Rule>,
    },
    /// Nodes drop a share of the packets they receive.
    PacketLoss {
        /// The nodes.
        nodes: Vec<String>,
        /// The share dropped, 0 to 1.
        probability: f64,
        /// The rules that do it.
        rules: Vec<Rule>,
    },
    /// Nodes delay what they send (netem).
    Latency {
        /// The nodes.
        nodes: Vec<String>,
        /// The delay in milliseconds.
        delay_ms: u64,
    },
    /// A region's Redis primary is failed over through Sentinel. Healing undoes nothing:
    /// the old primary rejoins as a replica.
    RedisFailover {
        /// The region (Sentinel's master name).
        region: String,
        /// The Sentinel host asked to fail over.
        sentinel: String,
        /// The primary before.
        from: String,
        /// The region's Redis hosts.
        members: Vec<String>,
    },
    /// A region's Redis replica is made a primary with `REPLICAOF NO ONE`, behind
    /// Sentinel's back: it stops following its primary and serves what it held. Healing
    /// makes it a replica again, of the primary Sentinel names.
    RedisPromote {
        /// The region (Sentinel's master name).
        region: String,
        /// The replica promoted.
        node: String,
        /// The Sentinel host asked who the primary is.
        sentinel: String,
        /// The region's Redis hosts.
        members: Vec<String>,
    },
    /// PostgreSQL's standby is promoted (`pg_promote()`) and writers are pointed at it:
    /// every client session on the old primary is ended, and clients look for the
    /// primary again. Fenced, the old primary is killed first, so everyone finds the new
    /// one (and writes it had not shipped are lost). Unfenced, it keeps accepting
    /// writes: clients that try it first go back to it, a split brain. Healing rebuilds
    /// the old primary as a standby of the new one.
    PostgresFailover {
        /// The primary before.
        from: String,
        /// The standby promoted.
        to: String,
        /// Whether the old primary was killed before the promotion.
        fence: bool,
    },
    /// A service's processes are killed (SIGKILL); healing starts it again.
    Kill {
        /// The node.
        node: String,
        /// The service.
        service: String,
        /// The processes killed.
        pids: Vec<i32>,
    },
    /// A service's processes are paused (SIGSTOP); healing resumes them (SIGCONT).
    Pause {
        /// The node.
        node: String,
        /// The service.
        service: String,
        /// The processes paused.
        pids: Vec<i32>,
    },
    /// A node's wall clock is bumped or strobed; healing sets it back to true time.
    ClockSkew {
        /// The node.
        node: String,
        /// How its clock is moved.
        #[serde(flatten)]
        skew: Skew,
    },
}

/// A rule on `node` that drops the incoming packets `matches` selects, tagged.
fn drop_rule(node: &str, matches: &[&str], tag: &str) -> Rule {
    let mut args = vec!["INPUT".to_string()];
    args.extend(matches.iter().map(|m| m.to_string()));
    args.extend(["-j", "DROP", "-m", "comment", "--comment"].map(String::from));
    args.push(rule_comment(tag));
    Rule {
        node: node.to_string(),
        args,
    }
}

/// The comment that marks our rules: `coherence:<tag>`.
pub fn rule_comment(tag: &str) -> String {
    format!("coherence:{tag}")
}

impl Fault {
    /// A partition of `shape` over `nodes`, its rules tagged with `tag` (unique per
    /// fault, e.g. the run and the journal sequence number).
    pub fn partition(
        shape: Shape,
        nodes: &[String],
        net: &dyn Nodes,
        tag: &str,
    ) -> Result<Fault, String> {
        let grudge = crate::partition::grudge(&shape, nodes);
        let mut rules = Vec::new();
        for (node, dropped) in &grudge {
            for from in dropped {
                let addr = net
                    .addr(from)
                    .ok_or_else(|| format!("no address for node {from:?}"))?;
                rules.push(drop_rule(node, &["-s", &addr], tag));
            }
        }
        Ok(Fault::Partition {
            shape,
            grudge,
            rules,
        })
    }

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
            Fault::Pause {
                node,
                service,
                pids,
            }
        } else {
            Fault::Kill {
                node,
                service,
                pids,
            }
        })
    }

    /// Packet loss on `nodes`: each drops `probability` of what it receives.
    pub fn packet_loss(nodes: &[String], probability: f64, tag: &str) -> Fault {
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
                drop_rule(node, &matches, tag)
            })
            .collect();
        Fault::PacketLoss {
            nodes: nodes.to_vec(),
            probability,
            rules,
        }
    }

    /// A failover of `region`'s Redis primary, asked of the Sentinel on `sentinel`.
    pub fn redis_failover(
        region: &str,
        sentinel: &str,
        members: &[String],
        net: &dyn Nodes,
    ) -> Result<Fault, RemoteError> {
        let from = sentinel_primary(region, sentinel, members, net)?;
        Ok(Fault::RedisFailover {
            region: region.to_string(),
            sentinel: sentinel.to_string(),
            from,
            members: members.to_vec(),
        })
    }

    /// A `REPLICAOF NO ONE` on `region`'s replica (the member Sentinel does not name as
    /// its primary).
    pub fn redis_promote(
        region: &str,
        sentinel: &str,
        members: &[String],
        net: &dyn Nodes,
    ) -> Result<Fault, RemoteError> {
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
        Ok(Fault::RedisPromote {
            region: region.to_string(),
            node,
            sentinel: sentinel.to_string(),
            members: members.to_vec(),
        })
    }

    /// A failover of PostgreSQL from whichever of `servers` is the primary now to the
    /// other, fenced or not.
    pub fn postgres_failover(
        servers: &[String],
        fence: bool,
        net: &dyn Nodes,
    ) -> Result<Fault, RemoteError> {
        let (primaries, standbys) = postgres_roles(servers, net)?;
        match (primaries.as_slice(), standbys.first()) {
            ([from], Some(to)) => Ok(Fault::PostgresFailover {
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

    /// What applying did that the history should say (a failover: who was promoted).
    pub fn outcome(&self, net: &dyn Nodes) -> Option<serde_json::Value> {
        match self {
            Fault::RedisPromote { region, node, .. } => {
                Some(serde_json::json!({"service": "redis", "region": region, "promoted": node}))
            }
            Fault::PostgresFailover { from, to, fence } => Some(
                serde_json::json!({"service": "postgres", "promoted": to, "demoted": from, "fenced": fence}),
            ),
            Fault::RedisFailover {
                region,
                sentinel,
                from,
                members,
            } => {
                let promoted = sentinel_primary(region, sentinel, members, net).ok()?;
                Some(
                    serde_json::json!({"service": "redis", "region": region, "promoted": promoted, "demoted": from}),
                )
            }
            _ => None,
        }
    }

    /// The iptables rules the fault adds (none for faults that are no rules).
    pub fn rules(&self) -> &[Rule] {
        match self {
            Fault::Partition { rules, .. } | Fault::PacketLoss { rules, .. } => rules,
            _ => &[],
        }
    }

    /// The nemesis `f` that opens it in a history.
    pub fn start_f(&self) -> &'static str {
        match self {
            Fault::Partition { .. } => "start-partition",
            Fault::PacketLoss { .. } => "start-packet-loss",
            Fault::Latency { .. } => "start-latency",
            Fault::RedisFailover { .. } => "start-failover",
            Fault::RedisPromote { .. } => "start-replicaof-no-one",
            Fault::PostgresFailover { .. } => "start-postgres-failover",
            Fault::Kill { .. } => "kill",
            Fault::Pause { .. } => "pause",
            Fault::ClockSkew { skew, .. } => match skew {
                Skew::Bump { .. } => "bump-clock",
                Skew::Strobe { .. } => "strobe-clock",
            },
        }
    }

    /// The nemesis `f` that closes it in a history.
    pub fn stop_f(&self) -> &'static str {
        match self {
            Fault::Partition { .. } => "stop-partition",
            Fault::PacketLoss { .. } => "stop-packet-loss",
            Fault::Latency { .. } => "stop-latency",
            Fault::RedisFailover { .. } => "stop-failover",
            Fault::RedisPromote { .. } => "stop-replicaof-no-one",
            Fault::PostgresFailover { .. } => "stop-postgres-failover",
            Fault::Kill { .. } => "restart",
            Fault::Pause { .. } => "resume",
            Fault::ClockSkew { .. } => "reset-clock",
        }
    }

    /// Applies the fault.
    pub fn apply(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        match self {
            Fault::Latency { nodes, delay_ms } => {
                for node in nodes {
                    let delay = format!("{delay_ms}ms");
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
            Fault::Partition { .. } | Fault::PacketLoss { .. } => {
                // One command per node: `iptables -A` for each of its rules.
                for (node, rules) in by_node(self.rules()) {
                    let script = rules
                        .iter()
                        .map(|r| format!("iptables -w -A {}", shell_words(&strs(&r.args))))
                        .collect::<Vec<_>>()
                        .join(" && ");
                    remote_of(net, node)?.run(&["sh", "-c", &script])?;
                }
                Ok(())
            }
            Fault::RedisFailover {
                region,
                sentinel,
                from,
                members,
            } => {
                let addr = net.addr(sentinel).unwrap_or_default();
                remote_of(net, sentinel)?.run(&[
                    "redis-cli",
                    "-h",
                    &addr,
                    "-p",
                    "26379",
                    "SENTINEL",
                    "FAILOVER",
                    region,
                ])?;
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
            Fault::RedisPromote { node, .. } => {
                redis_cli(net, node, &["REPLICAOF", "NO", "ONE"])?;
                Ok(())
            }
            Fault::PostgresFailover { from, to, fence } => {
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
            Fault::Kill { node, pids, .. } => signal(net, node, pids, libc_signal::KILL),
            Fault::Pause { node, pids, .. } => signal(net, node, pids, libc_signal::STOP),
            Fault::ClockSkew { node, skew } => net.set_clock_skew(node, Some(skew)),
        }
    }

    /// Heals the fault: removes exactly the rules it added (those still there).
    pub fn heal(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        match self {
            Fault::Latency { nodes, .. } => {
                for node in nodes {
                    let remote = remote_of(net, node)?;
                    let shown = remote.run(&["tc", "qdisc", "show", "dev", "eth0"])?.stdout;
                    if shown.contains("netem") {
                        remote.run(&["tc", "qdisc", "del", "dev", "eth0", "root"])?;
                    }
                }
                Ok(())
            }
            Fault::Partition { .. } | Fault::PacketLoss { .. } => {
                // One command per node: delete each of its rules that is still there
                // (never added, or already removed, is fine).
                for (node, rules) in by_node(self.rules()) {
                    let script = rules
                        .iter()
                        .map(|r| {
                            let rule = shell_words(&strs(&r.args));
                            format!("if iptables -w -C {rule} 2>/dev/null; then iptables -w -D {rule}; fi")
                        })
                        .collect::<Vec<_>>()
                        .join("; ");
                    remote_of(net, node)?.run(&["sh", "-c", &format!("{script}; true")])?;
                }
                Ok(())
            }
            Fault::RedisFailover { .. } => Ok(()),
            Fault::RedisPromote {
                region,
                node,
                sentinel,
                members,
            } => {
                if let Some(primary) = primary_beside(region, node, sentinel, members, net)? {
                    let addr = net.addr(&primary).unwrap_or_default();
                    redis_cli(net, node, &["REPLICAOF", &addr, "6379"])?;
                }
                Ok(())
            }
            Fault::PostgresFailover { from, to, .. } => {
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
            Fault::Kill { node, service, .. } => {
                if net.pids(node, service)?.is_empty() {
                    net.restart(node, service)?;
                    wait_for(node, &format!("{service} to run again"), || {
                        Ok(!net.pids(node, service)?.is_empty())
                    })?;
                }
                Ok(())
            }
            Fault::Pause { node, pids, .. } => signal(net, node, pids, libc_signal::CONT),
            Fault::ClockSkew { node, .. } => net.set_clock_skew(node, None),
        }
    }

    /// What of the fault is still in place (empty once healed), in words.
    pub fn traces(&self, net: &dyn Nodes) -> Result<Vec<String>, RemoteError> {
        let mut left = Vec::new();
        match self {
            Fault::Latency { nodes, .. } => {
                for node in nodes {
                    let shown = remote_of(net, node)?
                        .run(&["tc", "qdisc", "show", "dev", "eth0"])?
                        .stdout;
                    if shown.contains("netem") {
                        left.push(format!("on {node}: a netem qdisc"));
                    }
                }
            }
            Fault::Partition { .. } | Fault::PacketLoss { .. } => {
                // One listing per node: a rule with this fault's tag is a trace.
                for (node, rules) in by_node(self.rules()) {
                    let listing = remote_of(net, node)?.run(&["iptables", "-w", "-S"])?.stdout;
                    let tags: std::collections::HashSet<&str> = rules
                        .iter()
                        .filter_map(|r| r.args.last().map(String::as_str))
                        .collect();
                    for line in listing.lines() {
                        // The tag as a whole word: `coherence:run-1` is no `coherence:run-10`.
                        let words: std::collections::HashSet<&str> = line
                            .split_whitespace()
                            .map(|w| w.trim_matches('"'))
                            .collect();
                        if tags.iter().any(|t| words.contains(t)) {
                            left.push(format!("on {node}: iptables rule {line}"));
                        }
                    }
                }
            }
            Fault::RedisFailover { .. } => {}
            Fault::RedisPromote {
                region,
                node,
                sentinel,
                members,
            } => {
                if let Some(primary) = primary_beside(region, node, sentinel, members, net)? {
                    left.push(format!(
                        "on {node}: Redis is a primary beside {region}'s primary {primary}"
                    ));
                }
            }
            Fault::PostgresFailover { from, to, .. } => {
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
            }
            Fault::Kill { node, service, .. } => {
                if net.pids(node, service)?.is_empty() {
                    left.push(format!("on {node}: {service} is not running"));
                }
            }
            Fault::Pause { node, pids, .. } => {
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
            }
            Fault::ClockSkew { node, .. } => {
                if let Some(skew) = net.clock_skew(node)? {
                    left.push(format!("on {node}: the clock is still skewed ({skew})"));
                }
            }
        }
        Ok(left)
    }
}

/// Which of `servers` are PostgreSQL primaries, and which standbys.
pub fn postgres_roles(
    servers: &[String],
    net: &dyn Nodes,
) -> Result<(Vec<String>, Vec<String>), RemoteError> {
    let mut primaries = Vec::new();
    let mut standbys = Vec::new();
    for s in servers {
        match net.sql(s, "SELECT pg_is_in_recovery()")?.trim() {
            "f" => primaries.push(s.clone()),
            _ => standbys.push(s.clone()),
        }
    }
    Ok((primaries, standbys))
}

/// The node Sentinel on `sentinel` names as `region`'s primary.
pub fn sentinel_primary(
    region: &str,
    sentinel: &str,
    members: &[String],
    net: &dyn Nodes,
) -> Result<String, RemoteError> {
    let addr = net.addr(sentinel).unwrap_or_default();
    let out = remote_of(net, sentinel)?.run(&[
        "redis-cli",
        "-h",
        &addr,
        "-p",
        "26379",
        "SENTINEL",
        "get-master-addr-by-name",
        region,
    ])?;
    let ip = out
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    members
        .iter()
        .find(|m| net.addr(m).as_deref() == Some(ip.as_str()))
        .cloned()
        .ok_or_else(|| RemoteError {
            node: sentinel.to_string(),
            command: format!("SENTINEL get-master-addr-by-name {region}"),
            status: None,
            stdout: out.stdout.clone(),
            stderr: "the primary Sentinel names is none of the region's hosts".into(),
        })
}

/// Runs `redis-cli` against `node`'s Redis, on the node.
fn redis_cli(net: &dyn Nodes, node: &str, args: &[&str]) -> Result<String, RemoteError> {
    let addr = net.addr(node).unwrap_or_default();
    let mut argv = vec!["redis-cli", "-h", &addr, "-p", "6379"];
    argv.extend(args);
    let out = remote_of(net, node)?.run(&argv)?;
    // redis-cli exits 0 on a server error: it prints it.
    if out.stdout.starts_with("ERR") || out.stdout.starts_with("(error)") {
        return Err(RemoteError {
            node: node.to_string(),
            command: shell_words(&argv),
            status: Some(0),
            stdout: out.stdout,
            stderr: out.stderr,
        });
    }
    Ok(out.stdout)
}

/// When `node`'s Redis is a primary that Sentinel does not name (a replica promoted
/// behind its back), the primary Sentinel names.
fn primary_beside(
    region: &str,
    node: &str,
    sentinel: &str,
    members: &[String],
    net: &dyn Nodes,
) -> Result<Option<String>, RemoteError> {
    let primary = sentinel_primary(region, sentinel, members, net)?;
    Ok((primary != node && redis_role(net, node)? == "master").then_some(primary))
}

/// `master` or `slave`: the role `node`'s Redis reports.
fn redis_role(net: &dyn Nodes, node: &str) -> Result<String, RemoteError> {
    Ok(redis_cli(net, node, &["ROLE"])?
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string())
}

/// Polls `done` every 50 ms for up to 10 s.
fn wait_for(
    node: &str,
    what: &str,
    mut done: impl FnMut() -> Result<bool, RemoteError>,
) -> Result<(), RemoteError> {
    for _ in 0..200 {
        if done()? {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(RemoteError {
        node: node.to_string(),
        command: String::new(),
        status: None,
        stdout: String::new(),
        stderr: format!("waited 10 s for {what}"),
    })
}

/// Rules grouped by their node, in the order first seen.
fn by_node(rules: &[Rule]) -> Vec<(&str, Vec<&Rule>)> {
    let mut groups: Vec<(&str, Vec<&Rule>)> = Vec::new();
    for rule in rules {
        match groups.iter_mut().find(|(n, _)| *n == rule.node) {
            Some((_, list)) => list.push(rule),
            None => groups.push((&rule.node, vec![rule])),
        }
    }
    groups
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The signals faults send (numbers as on Linux).
mod libc_signal {
    pub const KILL: i32 = 9;
    pub const CONT: i32 = 18;
    pub const STOP: i32 = 19;
}

/// Sends a signal to processes of a node, through its remote. A process that is gone
/// is fine.
fn signal(net: &dyn Nodes, node: &str, pids: &[i32], sig: i32) -> Result<(), RemoteError> {
    if pids.is_empty() {
        return Ok(());
    }
    let remote = remote_of(net, node)?;
    let mut argv = vec![format!("-{sig}")];
    argv.extend(pids.iter().map(|p| p.to_string()));
    let mut cmd = vec!["kill"];
    cmd.extend(argv.iter().map(String::as_str));
    remote.execute(&cmd)?;
    Ok(())
}

fn remote_of(net: &dyn Nodes, node: &str) -> Result<Box<dyn Remote>, RemoteError> {
    net.remote(node).ok_or_else(|| RemoteError {
        node: node.to_string(),
        command: String::new(),
        status: None,
        stdout: String::new(),
        stderr: "no such node: the fault names a node this cluster does not have".into(),
    })
}

/// A journal entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    seq: u64,
    time_unix_ns: u64,
    state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fault: Option<Fault>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum State {
    Applying,
    Healed,
    /// Written when the journal is reopened after a crash cut its last line short: the
    /// line before was never a whole entry, so its fault was never applied.
    CutBefore,
}

/// The heal journal of a run: `faults.jsonl`.
pub struct Journal {
    file: File,
    path: PathBuf,
    next: u64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

impl Journal {
    /// Opens (or creates) the journal at `path`, appending after what it holds. A journal
    /// that cannot be read (see [`pending`]) is refused.
    pub fn open(path: &Path) -> std::io::Result<Journal> {
        let entries = read(path)?;
        let next = entries.iter().map(|e| e.seq + 1).max().unwrap_or(0);
        let file = File::options().create(true).append(true).open(path)?;
        let mut journal = Journal {
            file,
            path: path.to_path_buf(),
            next,
        };
        // After a crash mid-line, start the next entry on a line of its own, and say that
        // the line before was cut short (so that it reads as such once it is no longer
        // the last line).
        let text = std::fs::read(path)?;
        if text.last().is_some_and(|&b| b != b'\n') {
            journal.file.write_all(b"\n")?;
            journal.write(&Entry {
                seq: next,
                time_unix_ns: now_ns(),
                state: State::CutBefore,
                fault: None,
            })?;
        }
        Ok(journal)
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sequence number the next fault will get (for tagging its rules).
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    fn write(&mut self, entry: &Entry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }

    /// Records that `fault` is about to be applied; on disk before this returns.
    pub fn applying(&mut self, fault: &Fault) -> std::io::Result<u64> {
        let seq = self.next;
        self.next += 1;
        self.write(&Entry {
            seq,
            time_unix_ns: now_ns(),
            state: State::Applying,
            fault: Some(fault.clone()),
        })?;
        Ok(seq)
    }

    /// Records that fault `seq` was healed.
    pub fn healed(&mut self, seq: u64) -> std::io::Result<()> {
        self.write(&Entry {
            seq,
            time_unix_ns: now_ns(),
            state: State::Healed,
            fault: None,
        })
    }
}

/// The journal's entries. A line that is no entry is refused, naming it, unless it is
/// what a crash leaves: a line cut short (a proper prefix of JSON) that is the last line,
/// or that the next line says was cut (`cut-before`, written when the journal was
/// reopened). Anything else means the journal is damaged, and healing from it could
/// leave a fault in place.
fn read(path: &Path) -> std::io::Result<Vec<Entry>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    // A file ending with a newline (or an empty file) yields an empty last piece: no line.
    let count = if bytes.is_empty() || bytes.ends_with(b"\n") {
        lines.len() - 1
    } else {
        lines.len()
    };
    let mut entries = Vec::new();
    for (i, line) in lines[..count].iter().enumerate() {
        let error = match serde_json::from_slice::<Entry>(line) {
            Ok(entry) => {
                if entry.state != State::CutBefore {
                    entries.push(entry);
                }
                continue;
            }
            Err(e) => e,
        };
        let cut = error.is_eof() && !line.is_empty();
        let last = i + 1 == count;
        let marked = lines[..count]
            .get(i + 1)
            .and_then(|next| serde_json::from_slice::<Entry>(next).ok())
            .is_some_and(|e| e.state == State::CutBefore);
        if cut && (last || marked) {
            continue; // a crash cut it short while it was written: never applied
        }
        let shown: String = String::from_utf8_lossy(line).chars().take(120).collect();
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}:{}: not a heal journal entry ({error}): {shown:?}; only a cut-short last \
                 line is what a crash leaves. Healing from a damaged journal could leave a \
                 fault in place: look at that line, repair or remove it, and run \
                 `coherence heal` again (iptables rules of a run carry the comment \
                 coherence:<run>-<seq>)",
                path.display(),
                i + 1
            ),
        ));
    }
    Ok(entries)
}

/// The faults journaled as applying and not yet healed, oldest first.
pub fn pending(path: &Path) -> std::io::Result<Vec<(u64, Fault)>> {
    let entries = read(path)?;
    let healed: std::collections::HashSet<u64> = entries
        .iter()
        .filter(|e| e.state == State::Healed)
        .map(|e| e.seq)
        .collect();
    Ok(entries
        .into_iter()
        .filter(|e| e.state == State::Applying && !healed.contains(&e.seq))
        .filter_map(|e| e.fault.map(|f| (e.seq, f)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoNodes;
    impl Nodes for NoNodes {
        fn remote(&self, _: &str) -> Option<Box<dyn Remote>> {
            None
        }
        fn addr(&self, node: &str) -> Option<String> {
            Some(format!("10.0.0.{}", &node[1..]))
        }
        fn pids(&self, _: &str, _: &str) -> Result<Vec<i32>, RemoteError> {
            Ok(vec![])
        }
        fn restart(&self, _: &str, _: &str) -> Result<(), RemoteError> {
            Ok(())
        }
        fn sql(&self, _: &str, _: &str) -> Result<String, RemoteError> {
            Ok(String::new())
        }
        fn rebuild_standby(&self, _: &str, _: &str) -> Result<(), RemoteError> {
            Ok(())
        }
    }

    fn nodes() -> Vec<String> {
        ["n1", "n2", "n3"].map(String::from).to_vec()
    }

    #[test]
    fn a_partition_adds_one_tagged_drop_rule_per_grudge_pair() {
        let f = Fault::partition(
            Shape::IsolateNode { node: "n1".into() },
            &nodes(),
            &NoNodes,
            "run-7",
        )
        .unwrap();
        let Fault::Partition { rules, .. } = &f else {
            unreachable!("a partition")
        };
        assert_eq!(rules.len(), 4, "n1 drops n2, n3; n2 and n3 drop n1");
        assert!(rules
            .iter()
            .all(|r| r.args.contains(&"coherence:run-7".to_string())));
        assert!(rules
            .iter()
            .any(|r| r.node == "n2" && r.args[2] == "10.0.0.1"));
    }

    #[test]
    fn the_journal_knows_what_is_still_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = coherence_store::run::RunDir::new(dir.path()).journal();
        let f = Fault::partition(Shape::Halves, &nodes(), &NoNodes, "t").unwrap();
        let mut j = Journal::open(&path).unwrap();
        let a = j.applying(&f).unwrap();
        let b = j.applying(&f).unwrap();
        j.healed(a).unwrap();
        assert_eq!(pending(&path).unwrap(), vec![(b, f.clone())]);
        // Reopened (as `coherence heal` does), numbering goes on.
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.next_seq(), b + 1);
        j.healed(b).unwrap();
        assert!(pending(&path).unwrap().is_empty());
    }

    #[test]
    fn a_clock_skew_is_journaled_with_its_node_and_numbers() {
        let f = Fault::ClockSkew {
            node: "r1a".into(),
            skew: Skew::Strobe {
                offset_ms: -2500,
                period_ms: 300,
            },
        };
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "clock-skew", "node": "r1a", "mode": "strobe",
                               "offset_ms": -2500, "period_ms": 300})
        );
        assert_eq!(serde_json::from_value::<Fault>(json).unwrap(), f);
        assert_eq!((f.start_f(), f.stop_f()), ("strobe-clock", "reset-clock"));
        // Nodes that cannot move clocks say so instead of pretending.
        let e = f.apply(&NoNodes).unwrap_err();
        assert!(e.stderr.contains("cannot have their clocks skewed"), "{e}");
    }

    #[test]
    fn an_empty_journal_is_an_empty_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = coherence_store::run::RunDir::new(dir.path()).journal();
        std::fs::write(&path, "").unwrap();
        assert!(pending(&path).unwrap().is_empty());
        assert_eq!(Journal::open(&path).unwrap().next_seq(), 0);
    }

    #[test]
    fn an_unreadable_middle_line_is_refused_not_skipped() {
        // Regression: every unreadable line was skipped, so an entry that could not be
        // parsed was never healed.
        let dir = tempfile::tempdir().unwrap();
        let path = coherence_store::run::RunDir::new(dir.path()).journal();
        let f = Fault::partition(Shape::Halves, &nodes(), &NoNodes, "t").unwrap();
        let mut j = Journal::open(&path).unwrap();
        j.applying(&f).unwrap();
        drop(j);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.insert_str(
            0,
            "{\"seq\":7,\"state\":\"applying\",\"fault\":{\"kind\":\"mystery\"}}\n",
        );
        std::fs::write(&path, &text).unwrap();
        let e = pending(&path).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        let m = e.to_string();
        assert!(
            m.contains("faults.jsonl:1: not a heal journal entry"),
            "{m}"
        );
        assert!(m.contains("repair or remove it"), "{m}");
        assert!(Journal::open(&path).is_err(), "nor is it appended to");
        // A broken line in the middle that is cut short JSON, but not marked as cut, is
        // refused too: a crash only cuts the last line.
        std::fs::write(
            &path,
            format!(
                "{{\"seq\":0,\"time_unix_ns\":1,\"sta\n{}",
                &text[text.find('\n').unwrap() + 1..]
            ),
        )
        .unwrap();
        assert!(pending(&path)
            .unwrap_err()
            .to_string()
            .contains(":1: not a heal journal entry"));
    }

    #[test]
    fn a_cut_short_last_entry_was_never_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = coherence_store::run::RunDir::new(dir.path()).journal();
        std::fs::write(&path, "{\"seq\":0,\"time_unix_ns\":1,\"state\":\"appl").unwrap();
        assert!(pending(&path).unwrap().is_empty());
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.next_seq(), 0);
        let f = Fault::partition(Shape::Halves, &nodes(), &NoNodes, "t").unwrap();
        let seq = j.applying(&f).unwrap();
        assert_eq!(
            pending(&path).unwrap(),
            vec![(seq, f.clone())],
            "the next entry is whole"
        );
        // Reopened once more (`coherence heal` after another crash), the cut line is in
        // the middle now, marked as cut: still read, not refused.
        let mut j = Journal::open(&path).unwrap();
        j.healed(seq).unwrap();
        assert!(pending(&path).unwrap().is_empty());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines().nth(1).unwrap().contains("\"cut-before\""),
            "{text}"
        );
    }
}
