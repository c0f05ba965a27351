//! What faults of several families do on nodes: run `redis-cli` there, ask Sentinel
//! or PostgreSQL who is primary, send signals, wait for a condition.

use super::{Nodes, Rule};
use crate::remote::{shell_words, Remote, RemoteError};

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
    let stdout = sentinel_cli(
        net,
        sentinel,
        &["SENTINEL", "get-master-addr-by-name", region],
    )?;
    let ip = stdout.lines().next().unwrap_or_default().trim().to_string();
    members
        .iter()
        .find(|m| net.addr(m).as_deref() == Some(ip.as_str()))
        .cloned()
        .ok_or_else(|| RemoteError {
            node: sentinel.to_string(),
            command: format!("SENTINEL get-master-addr-by-name {region}"),
            status: None,
            stdout: stdout.clone(),
            stderr: "the primary Sentinel names is none of the region's hosts".into(),
        })
}

/// Runs `redis-cli` against the Sentinel on `sentinel`, on that node; what it printed.
pub(crate) fn sentinel_cli(
    net: &dyn Nodes,
    sentinel: &str,
    args: &[&str],
) -> Result<String, RemoteError> {
    let addr = net.addr(sentinel).unwrap_or_default();
    let mut argv = vec!["redis-cli", "-h", &addr, "-p", "26379"];
    argv.extend(args);
    Ok(remote_of(net, sentinel)?.run(&argv)?.stdout)
}

/// Runs `redis-cli` against `node`'s Redis, on the node.
pub(crate) fn redis_cli(net: &dyn Nodes, node: &str, args: &[&str]) -> Result<String, RemoteError> {
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
pub(crate) fn primary_beside(
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
pub(crate) fn redis_role(net: &dyn Nodes, node: &str) -> Result<String, RemoteError> {
    Ok(redis_cli(net, node, &["ROLE"])?
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string())
}

/// Polls `done` every 50 ms for up to 10 s.
pub(crate) fn wait_for(
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
pub(crate) fn by_node(rules: &[Rule]) -> Vec<(&str, Vec<&Rule>)> {
    let mut groups: Vec<(&str, Vec<&Rule>)> = Vec::new();
    for rule in rules {
        match groups.iter_mut().find(|(n, _)| *n == rule.node) {
            Some((_, list)) => list.push(rule),
            None => groups.push((&rule.node, vec![rule])),
        }
    }
    groups
}

pub(crate) fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The signals faults send (numbers as on Linux).
pub(crate) mod libc_signal {
    pub(crate) const KILL: i32 = 9;
    pub(crate) const CONT: i32 = 18;
    pub(crate) const STOP: i32 = 19;
}

/// Sends a signal to processes of a node, through its remote. A process that is gone
/// is fine.
pub(crate) fn signal(
    net: &dyn Nodes,
    node: &str,
    pids: &[i32],
    sig: i32,
) -> Result<(), RemoteError> {
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

pub(crate) fn remote_of(net: &dyn Nodes, node: &str) -> Result<Box<dyn Remote>, RemoteError> {
    net.remote(node).ok_or_else(|| RemoteError {
        node: node.to_string(),
        command: String::new(),
        status: None,
        stdout: String::new(),
        stderr: "no such node: the fault names a node this cluster does not have".into(),
    })
}
