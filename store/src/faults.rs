//! The vocabulary of faults, defined once: for every family of fault coherence's nemesis
//! applies, the history events that open and close it, what it aims at, whether it
//! promotes a node (and of which service), how it reads in words, and how the report
//! draws it (its lane and colour). The nemeses apply faults by family
//! (`coherence_nemeses::faults`), the checker pairs a history's nemesis events by it, and
//! the report describes and draws them from it, so the three cannot disagree.
//!
//! Adding a family is one variant here and its arm in [`Family::spec`] (the compiler
//! asks for it: there is no catch-all arm), and its module in `nemeses`. Events of other nemeses (a user's own, the spec's examples) that
//! no family names still pair by the generic rule `start-X`/`stop-X`.

use serde_json::Value;
use std::fmt::Write as _;

/// The `f` of the instant event that says whom a fault promoted (`{"service",
/// "promoted", "demoted", ...}`); a nemesis of another tool may log it on its own.
pub const FAILOVER: &str = "failover";

/// The `f` of an event that closes every open fault (a user's own nemesis's "heal all").
pub const HEAL_ALL: &str = "heal";

/// A family of faults: one way of breaking the system, applied and healed one way.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::EnumIter,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    serde::Serialize,
)]
#[strum(serialize_all = "kebab-case")]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// Nodes drop each other's traffic (iptables).
    Partition,
    /// Nodes drop a share of what they receive.
    PacketLoss,
    /// Nodes delay what they send (netem).
    Latency,
    /// A region's Redis primary is failed over through Sentinel.
    RedisFailover,
    /// A Redis replica is made a primary behind Sentinel's back (`REPLICAOF NO ONE`).
    ReplicaofNoOne,
    /// PostgreSQL's standby is promoted (fenced or not).
    PostgresFailover,
    /// A service's processes are killed (SIGKILL) and started again.
    Kill,
    /// A service's processes are paused (SIGSTOP) and resumed.
    Pause,
    /// A node's wall clock is moved by an offset, then set right.
    ClockBump,
    /// A node's wall clock jumps back and forth, then is set right.
    ClockStrobe,
}

/// A service a fault can promote a node of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::Display)]
#[strum(serialize_all = "kebab-case")]
pub enum Service {
    /// A Redis cache node.
    Redis,
    /// A PostgreSQL server.
    Postgres,
}

/// What a fault aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aim {
    /// The network between nodes.
    Network,
    /// A set of nodes (a region's hosts).
    Nodes,
    /// One service on one node.
    Process,
    /// A service's roles (who is primary).
    Roles,
    /// One node's wall clock.
    Clock,
}

/// How a family reads in a history, in words and in pictures.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The family's name (kebab-case).
    pub name: &'static str,
    /// The `f` of the event that opens it.
    pub start: &'static str,
    /// The `f` of the event that closes it.
    pub stop: &'static str,
    /// What it aims at.
    pub aims: Aim,
    /// The service it promotes a node of, if it does.
    pub promotes: Option<Service>,
    /// The label of its lane in the report's timelines (families may share one).
    pub lane: &'static str,
    /// Its colour there (CSS, `#rrggbb`).
    pub colour: &'static str,
    /// How its end reads after the words of the fault: `"healed"`, `"restarted"`, ...
    pub ended: &'static str,
    /// The fault in words, from the fault as journaled (`{"kind", ...}`); `None` when
    /// the value is not of that shape.
    pub words: fn(&Value) -> Option<String>,
}

impl Family {
    /// Every family, in the order the report lists its lanes.
    pub fn all() -> impl Iterator<Item = Family> {
        <Family as strum::IntoEnumIterator>::iter()
    }

    /// The family's name.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// How the family reads.
    pub fn spec(self) -> Spec {
        #[allow(clippy::too_many_arguments)]
        fn spec(
            name: &'static str,
            (start, stop): (&'static str, &'static str),
            aims: Aim,
            promotes: Option<Service>,
            (lane, colour): (&'static str, &'static str),
            ended: &'static str,
            words: fn(&Value) -> Option<String>,
        ) -> Spec {
            Spec {
                name,
                start,
                stop,
                aims,
                promotes,
                lane,
                colour,
                ended,
                words,
            }
        }
        let name = self.name();
        match self {
            Family::Partition => spec(
                name,
                ("start-partition", "stop-partition"),
                Aim::Network,
                None,
                ("partitions", "#e9dca0"),
                "healed",
                partition_words,
            ),
            Family::PacketLoss => spec(
                name,
                ("start-packet-loss", "stop-packet-loss"),
                Aim::Nodes,
                None,
                ("packet loss", "#e9c3a0"),
                "healed",
                packet_loss_words,
            ),
            Family::Latency => spec(
                name,
                ("start-latency", "stop-latency"),
                Aim::Nodes,
                None,
                ("latency", "#d6b38a"),
                "healed",
                latency_words,
            ),
            Family::RedisFailover => spec(
                name,
                ("start-failover", "stop-failover"),
                Aim::Roles,
                Some(Service::Redis),
                ("Redis failovers", "#a0c8e9"),
                "ended",
                redis_failover_words,
            ),
            Family::ReplicaofNoOne => spec(
                name,
                ("start-replicaof-no-one", "stop-replicaof-no-one"),
                Aim::Roles,
                Some(Service::Redis),
                ("Redis promotions", "#8fb0e0"),
                "made a replica again",
                replicaof_words,
            ),
            Family::PostgresFailover => spec(
                name,
                ("start-postgres-failover", "stop-postgres-failover"),
                Aim::Roles,
                Some(Service::Postgres),
                ("PostgreSQL failovers", "#a0a8e9"),
                "old primary rebuilt as a standby",
                postgres_failover_words,
            ),
            Family::Kill => spec(
                name,
                ("kill", "restart"),
                Aim::Process,
                None,
                ("kills", "#e9a4a0"),
                "restarted",
                kill_words,
            ),
            Family::Pause => spec(
                name,
                ("pause", "resume"),
                Aim::Process,
                None,
                ("pauses", "#c5a0e9"),
                "resumed",
                pause_words,
            ),
            Family::ClockBump => spec(
                name,
                ("bump-clock", "reset-clock"),
                Aim::Clock,
                None,
                ("clocks", "#a0e9db"),
                "set right",
                clock_bump_words,
            ),
            Family::ClockStrobe => spec(
                name,
                ("strobe-clock", "reset-clock"),
                Aim::Clock,
                None,
                ("clocks", "#a0e9db"),
                "set right",
                clock_strobe_words,
            ),
        }
    }

    /// The family whose opening event is `f`.
    pub fn of_start(f: &str) -> Option<Family> {
        Family::all().find(|x| x.spec().start == f)
    }

    /// The families whose closing event is `f` (`reset-clock` closes both clock
    /// families); empty when `f` closes none.
    pub fn closed_by(f: &str) -> Vec<Family> {
        Family::all().filter(|x| x.spec().stop == f).collect()
    }

    /// A fault of this family in words, from its opening event's value: coherence's
    /// nemesis logs `{"seq", "fault": {"kind", ...}}`, the fault as journaled. A value of
    /// another shape reads as the family's name and the value itself.
    pub fn describe(self, value: Option<&Value>) -> String {
        let fault = value.and_then(|v| v.get("fault")).unwrap_or(&Value::Null);
        (self.spec().words)(fault).unwrap_or_else(|| match value {
            Some(v) if !v.is_null() => format!("{} {}", self.name(), v),
            _ => self.name().to_string(),
        })
    }
}

/// A string field of a journaled fault.
fn text(fault: &Value, name: &str) -> Option<String> {
    fault.get(name).and_then(Value::as_str).map(str::to_string)
}

fn packet_loss_words(fault: &Value) -> Option<String> {
    let p = fault.get("probability").and_then(Value::as_f64)?;
    Some(format!(
        "packet loss: {} drop {} % of the packets they receive",
        names(&strings(fault.get("nodes"))),
        trim_float(p * 100.0)
    ))
}

fn latency_words(fault: &Value) -> Option<String> {
    let d = fault.get("delay_ms").and_then(Value::as_u64)?;
    Some(format!(
        "latency: {} delay what they send by {d} ms",
        names(&strings(fault.get("nodes")))
    ))
}

fn redis_failover_words(fault: &Value) -> Option<String> {
    let (region, from) = (text(fault, "region")?, text(fault, "from")?);
    Some(format!(
        "Redis failover of region {region} through Sentinel{} (primary was {from})",
        text(fault, "sentinel").map_or(String::new(), |x| format!(" on {x}"))
    ))
}

fn replicaof_words(fault: &Value) -> Option<String> {
    let node = text(fault, "node")?;
    Some(format!(
        "REPLICAOF NO ONE on {node}{}: a replica made a primary behind Sentinel's back",
        text(fault, "region").map_or(String::new(), |r| format!(" (region {r})"))
    ))
}

fn postgres_failover_words(fault: &Value) -> Option<String> {
    let (from, to) = (text(fault, "from")?, text(fault, "to")?);
    let fenced = fault.get("fence").and_then(Value::as_bool).unwrap_or(true);
    Some(if fenced {
        format!("PostgreSQL failover from {from} to {to}, fenced ({from} killed first)")
    } else {
        format!(
            "PostgreSQL failover from {from} to {to}, unfenced ({from} keeps accepting writes: a split brain)"
        )
    })
}

fn signal_words(verb: &str, fault: &Value) -> Option<String> {
    let (service, node) = (text(fault, "service")?, text(fault, "node")?);
    Some(format!(
        "{verb} {service} on {node}{}",
        pids(fault.get("pids"))
    ))
}

fn kill_words(fault: &Value) -> Option<String> {
    signal_words("kill", fault)
}

fn pause_words(fault: &Value) -> Option<String> {
    signal_words("pause", fault)
}

fn clock_bump_words(fault: &Value) -> Option<String> {
    let node = text(fault, "node")?;
    let ms = fault.get("offset_ms").and_then(Value::as_i64)?;
    Some(format!("clock of {node} bumped {ms:+} ms"))
}

fn clock_strobe_words(fault: &Value) -> Option<String> {
    let node = text(fault, "node")?;
    let ms = fault.get("offset_ms").and_then(Value::as_i64)?;
    let period = fault.get("period_ms").and_then(Value::as_u64)?;
    Some(format!(
        "clock of {node} strobed {ms:+} ms every {period} ms"
    ))
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// How many names a set shows before `…`.
const SHOWN_NAMES: usize = 6;

/// `{a, b, c, …}`: a set of node names, the first few.
pub fn braces(names: &[String]) -> String {
    let mut out = String::from("{");
    for (i, n) in names.iter().take(SHOWN_NAMES).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(n);
    }
    if names.len() > SHOWN_NAMES {
        let _ = write!(out, ", … ({} in all)", names.len());
    }
    out.push('}');
    out
}

fn names(list: &[String]) -> String {
    match list {
        [] => "no node".into(),
        [one] => one.clone(),
        many => braces(many),
    }
}

fn pids(v: Option<&Value>) -> String {
    let list: Vec<String> = v
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|p| p.to_string()).collect())
        .unwrap_or_default();
    match list.len() {
        0 => String::new(),
        1 => format!(" (pid {})", list[0]),
        _ => format!(" (pids {})", list.join(", ")),
    }
}

fn trim_float(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A partition in words: the sides of a clean cut (`{a, b} | {c, d}`), else its shape.
fn partition_words(fault: &Value) -> Option<String> {
    let grudge = fault.get("grudge")?.as_object()?;
    let shape = fault.get("shape");
    let shape_name = shape
        .and_then(|s| s.get("shape"))
        .and_then(Value::as_str)
        .unwrap_or("partition");
    // Nodes grouped by whom they drop.
    let mut groups: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for (node, dropped) in grudge {
        let dropped = {
            let mut d = strings(Some(dropped));
            d.sort();
            d
        };
        match groups.iter_mut().find(|g| g.1 == dropped) {
            Some(g) => g.0.push(node.clone()),
            None => groups.push((vec![node.clone()], dropped)),
        }
    }
    let clean = groups.len() == 2 && {
        let (mut a, mut b) = (groups[0].0.clone(), groups[1].0.clone());
        a.sort();
        b.sort();
        groups[0].1 == b && groups[1].1 == a
    };
    let sides =
        |g: &[(Vec<String>, Vec<String>)]| format!("{} | {}", braces(&g[0].0), braces(&g[1].0));
    Some(match shape_name {
        "isolate-node" if clean => {
            let node = shape?.get("node")?.as_str()?.to_string();
            let others = groups
                .iter()
                .find(|g| g.0 != [node.clone()])
                .map(|g| g.0.clone())?;
            format!("partition: {node} cut off from {}", braces(&others))
        }
        "isolate-group" if clean => {
            let name = shape?
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("a group");
            let members = strings(shape?.get("members"));
            let others = groups
                .iter()
                .find(|g| g.0 != members)
                .map(|g| g.0.clone())?;
            format!(
                "partition: {name} {} cut off from {}",
                braces(&members),
                braces(&others)
            )
        }
        "halves" if clean => format!("partition into halves {}", sides(&groups)),
        "bridge" if clean => format!(
            "partition into halves {}, joined through the nodes in neither",
            sides(&groups)
        ),
        "majorities-ring" => format!(
            "partition into a ring of majorities: each of {} nodes hears a different majority",
            grudge.len()
        ),
        "one-way" => {
            let from = shape?.get("from")?.as_str()?;
            let to = shape?.get("to")?.as_str()?;
            format!("partition one way: {to} drops what {from} sends")
        }
        _ if clean => format!("partition {}", sides(&groups)),
        other => format!(
            "partition ({other}): {} nodes drop traffic from others",
            grudge.len()
        ),
    })
}

/// How long a fault lasted, in words (`3.98 s`, `250 ms`).
pub fn span(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{} s", trim_float(ns as f64 / 1e9))
    } else if ns >= 1_000_000 {
        format!("{} ms", trim_float(ns as f64 / 1e6))
    } else {
        format!("{} µs", trim_float(ns as f64 / 1e3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_family_opens_with_its_own_event() {
        let starts: Vec<&str> = Family::all().map(|f| f.spec().start).collect();
        for (i, s) in starts.iter().enumerate() {
            assert!(!starts[i + 1..].contains(s), "{s} opens two families");
            assert_eq!(Family::of_start(s).map(|f| f.spec().start), Some(*s));
        }
        for f in Family::all() {
            assert!(Family::closed_by(f.spec().stop).contains(&f), "{f}");
            assert_eq!(f.name().parse::<Family>().ok(), Some(f));
            assert_eq!(f.spec().name, f.name());
        }
        assert_eq!(
            Family::closed_by("reset-clock"),
            [Family::ClockBump, Family::ClockStrobe]
        );
        assert!(Family::closed_by("start-partition").is_empty());
    }

    #[test]
    fn faults_read_in_words() {
        let halves = json!({"seq": 3, "fault": {"kind": "partition", "shape": {"shape": "halves"},
            "grudge": {"db1": ["db2", "r1a"], "r1b": ["db2", "r1a"], "db2": ["db1", "r1b"], "r1a": ["db1", "r1b"]},
            "rules": [{"node": "db1", "args": ["INPUT", "-s", "10.0.0.2", "-j", "DROP"]}]}});
        assert_eq!(
            Family::Partition.describe(Some(&halves)),
            "partition into halves {db1, r1b} | {db2, r1a}"
        );
        let kill = json!({"seq": 1, "fault": {"kind": "kill", "node": "r1b", "service": "redis", "pids": [42]}});
        assert_eq!(
            Family::Kill.describe(Some(&kill)),
            "kill redis on r1b (pid 42)"
        );
        let region = json!({"fault": {"kind": "partition",
            "shape": {"shape": "isolate-group", "name": "r1", "members": ["r1a", "r1b"]},
            "grudge": {"r1a": ["db1"], "r1b": ["db1"], "db1": ["r1a", "r1b"]}}});
        assert_eq!(
            Family::Partition.describe(Some(&region)),
            "partition: r1 {r1a, r1b} cut off from {db1}"
        );
        let pg = json!({"fault": {"kind": "postgres-failover", "from": "db1", "to": "db2", "fence": false}});
        assert!(Family::PostgresFailover
            .describe(Some(&pg))
            .contains("unfenced (db1 keeps accepting writes"));
        let strobe = json!({"fault": {"kind": "clock-skew", "node": "r2a", "mode": "strobe", "offset_ms": -300, "period_ms": 200}});
        assert_eq!(
            Family::ClockStrobe.describe(Some(&strobe)),
            "clock of r2a strobed -300 ms every 200 ms"
        );
        let loss =
            json!({"fault": {"kind": "packet-loss", "nodes": ["r1a", "r1b"], "probability": 0.3}});
        assert_eq!(
            Family::PacketLoss.describe(Some(&loss)),
            "packet loss: {r1a, r1b} drop 30 % of the packets they receive"
        );
        // Another nemesis's value reads as the family and the value.
        assert_eq!(
            Family::Partition.describe(Some(&json!({"isolated": ["r1"]}))),
            r#"partition {"isolated":["r1"]}"#
        );
        assert_eq!(Family::Kill.describe(None), "kill");
    }

    #[test]
    fn the_history_contract_lists_every_family() {
        // docs/history.md is the public contract: a family its table lacks would be
        // events that users' own tools cannot pair.
        let doc = include_str!("../../docs/history.md");
        for f in Family::all() {
            let spec = f.spec();
            let row = format!("| {} | `{}` | `{}` |", spec.name, spec.start, spec.stop);
            assert!(doc.contains(&row), "docs/history.md lacks the row {row}");
        }
    }

    #[test]
    fn long_sets_are_cut() {
        let many: Vec<String> = (1..=9).map(|i| format!("n{i}")).collect();
        assert_eq!(braces(&many), "{n1, n2, n3, n4, n5, n6, … (9 in all)}");
        assert_eq!(span(3_980_000_000), "3.98 s");
        assert_eq!(span(1_700_000_000), "1.7 s");
        assert_eq!(span(250_000_000), "250 ms");
    }
}
