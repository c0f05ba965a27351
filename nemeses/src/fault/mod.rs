//! Faults that can be applied to nodes and healed, and the heal journal.
//!
//! One module per family of fault ([`partition`], [`packet_loss`], [`latency`],
//! [`redis_failover`], [`redis_promote`], [`postgres_failover`], [`signal`] for kills and
//! pauses, [`clock_skew`]): each holds its fault as a value and implements
//! [`FaultFamily`], which applies it, heals it, says what of it is still in place, and
//! names its family in the history's vocabulary ([`coherence_store::faults`]): the
//! events that open and close it, how it reads in words and how the report draws it.
//! [`Fault`] is the one enum of them all, as journaled; adding a family is its module
//! and one line in `families!` here.
//!
//! Every fault is written to the journal ([`journal`], `faults.jsonl` in the run
//! directory, synced to disk) *before* it is applied, and marked healed after. Whatever a
//! run leaves applied, a later `coherence heal RUN_DIR` finds in the journal and heals. A
//! fault records exactly what it did (the iptables rules it added), so healing removes
//! exactly that.

use crate::clock::Skew;
use crate::remote::{Remote, RemoteError};
use coherence_store::faults::Family;
use serde::{Deserialize, Serialize};

pub mod clock_skew;
mod iptables;
pub mod journal;
pub mod latency;
mod ops;
pub mod packet_loss;
pub mod partition;
pub mod postgres_failover;
pub mod redis_failover;
pub mod redis_promote;
pub mod signal;

pub use clock_skew::ClockSkew;
pub use iptables::rule_comment;
pub use journal::{pending, Journal};
pub use latency::Latency;
pub use ops::{postgres_roles, sentinel_primary};
pub use packet_loss::PacketLoss;
pub use partition::Partition;
pub use postgres_failover::PostgresFailover;
pub use redis_failover::RedisFailover;
pub use redis_promote::RedisPromote;
pub use signal::{Kill, Pause};

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

/// One family of faults: how a fault of it is applied, healed and verified on the nodes.
pub trait FaultFamily {
    /// Its family in the history's vocabulary: the events that open and close it, its
    /// words, its lane in the report.
    fn family(&self) -> Family;
    /// Applies the fault.
    fn apply(&self, net: &dyn Nodes) -> Result<(), RemoteError>;
    /// Heals the fault: undoes exactly what applying did (what is still there).
    fn heal(&self, net: &dyn Nodes) -> Result<(), RemoteError>;
    /// What of the fault is still in place (empty once healed), in words.
    fn traces(&self, net: &dyn Nodes) -> Result<Vec<String>, RemoteError>;
    /// What applying did that the history should say (a failover: who was promoted).
    fn outcome(&self, net: &dyn Nodes) -> Option<serde_json::Value> {
        let _ = net;
        None
    }
    /// The iptables rules the fault adds (none for faults that are no rules).
    fn rules(&self) -> &[Rule] {
        &[]
    }
}

/// Declares [`Fault`], one variant per family, and `dispatch!`, which runs an
/// expression on the family's value whatever the variant: one line per family is its
/// whole registration (beside its module).
macro_rules! families {
    ($($(#[$doc:meta])* $variant:ident($value:ty),)*) => {
        /// A fault, as journaled: what was done, to which nodes (`{"kind": ..., fields of
        /// the family's value}`).
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind", rename_all = "kebab-case")]
        pub enum Fault {
            $($(#[$doc])* $variant($value),)*
        }

        /// `dispatch!(fault, f => expr)`: `expr` with `f` bound to the family's value.
        macro_rules! dispatch {
            ($fault:expr, $f:ident => $body:expr) => {
                match $fault {
                    $(Fault::$variant($f) => $body,)*
                }
            };
        }
    };
}

families! {
    /// Nodes drop each other's traffic.
    Partition(Partition),
    /// Nodes drop a share of the packets they receive.
    PacketLoss(PacketLoss),
    /// Nodes delay what they send (netem).
    Latency(Latency),
    /// A region's Redis primary is failed over through Sentinel.
    RedisFailover(RedisFailover),
    /// A region's Redis replica is made a primary behind Sentinel's back.
    RedisPromote(RedisPromote),
    /// PostgreSQL's standby is promoted, fenced or not.
    PostgresFailover(PostgresFailover),
    /// A service's processes are killed; healing starts it again.
    Kill(Kill),
    /// A service's processes are paused; healing resumes them.
    Pause(Pause),
    /// A node's wall clock is bumped or strobed; healing sets it right.
    ClockSkew(ClockSkew),
}

impl Fault {
    /// The family's value, as the trait all families implement.
    pub fn as_family(&self) -> &dyn FaultFamily {
        dispatch!(self, f => f)
    }

    /// Its family in the history's vocabulary.
    pub fn family(&self) -> Family {
        self.as_family().family()
    }

    /// The nemesis `f` that opens it in a history.
    pub fn start_f(&self) -> &'static str {
        self.family().spec().start
    }

    /// The nemesis `f` that closes it in a history.
    pub fn stop_f(&self) -> &'static str {
        self.family().spec().stop
    }

    /// Applies the fault.
    pub fn apply(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        self.as_family().apply(net)
    }

    /// Heals the fault: removes exactly what it did (what is still there).
    pub fn heal(&self, net: &dyn Nodes) -> Result<(), RemoteError> {
        self.as_family().heal(net)
    }

    /// What of the fault is still in place (empty once healed), in words.
    pub fn traces(&self, net: &dyn Nodes) -> Result<Vec<String>, RemoteError> {
        self.as_family().traces(net)
    }

    /// What applying did that the history should say (a failover: who was promoted).
    pub fn outcome(&self, net: &dyn Nodes) -> Option<serde_json::Value> {
        self.as_family().outcome(net)
    }

    /// The iptables rules the fault adds (none for faults that are no rules).
    pub fn rules(&self) -> &[Rule] {
        dispatch!(self, f => f.rules())
    }

    /// A partition of `shape` over `nodes` ([`Partition::new`]).
    pub fn partition(
        shape: crate::partition::Shape,
        nodes: &[String],
        net: &dyn Nodes,
        tag: &str,
    ) -> Result<Fault, String> {
        Partition::new(shape, nodes, net, tag).map(Fault::Partition)
    }

    /// Packet loss on `nodes` ([`PacketLoss::new`]).
    pub fn packet_loss(nodes: &[String], probability: f64, tag: &str) -> Fault {
        Fault::PacketLoss(PacketLoss::new(nodes, probability, tag))
    }

    /// A failover of `region`'s Redis primary ([`RedisFailover::new`]).
    pub fn redis_failover(
        region: &str,
        sentinel: &str,
        members: &[String],
        net: &dyn Nodes,
    ) -> Result<Fault, RemoteError> {
        RedisFailover::new(region, sentinel, members, net).map(Fault::RedisFailover)
    }

    /// A `REPLICAOF NO ONE` on `region`'s replica ([`RedisPromote::new`]).
    pub fn redis_promote(
        region: &str,
        sentinel: &str,
        members: &[String],
        net: &dyn Nodes,
    ) -> Result<Fault, RemoteError> {
        RedisPromote::new(region, sentinel, members, net).map(Fault::RedisPromote)
    }

    /// A failover of PostgreSQL ([`PostgresFailover::new`]).
    pub fn postgres_failover(
        servers: &[String],
        fence: bool,
        net: &dyn Nodes,
    ) -> Result<Fault, RemoteError> {
        PostgresFailover::new(servers, fence, net).map(Fault::PostgresFailover)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Skew;
    use crate::partition::Shape;
    use crate::remote::Remote;

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
        let Fault::Partition(Partition { rules, .. }) = &f else {
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
        let f = Fault::ClockSkew(ClockSkew {
            node: "r1a".into(),
            skew: Skew::Strobe {
                offset_ms: -2500,
                period_ms: 300,
            },
        });
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

#[cfg(test)]
mod vocabulary {
    use super::*;
    use crate::clock::Skew;
    use crate::partition::Shape;

    /// One fault of every family, as journaled.
    fn one_of_each() -> Vec<Fault> {
        let rule = Rule {
            node: "n1".into(),
            args: vec!["INPUT".into()],
        };
        vec![
            Fault::Partition(Partition {
                shape: Shape::Halves,
                grudge: Default::default(),
                rules: vec![rule.clone()],
            }),
            Fault::PacketLoss(PacketLoss {
                nodes: vec!["n1".into()],
                probability: 0.3,
                rules: vec![rule],
            }),
            Fault::Latency(Latency {
                nodes: vec!["n1".into()],
                delay_ms: 100,
            }),
            Fault::RedisFailover(RedisFailover {
                region: "r1".into(),
                sentinel: "r1s".into(),
                from: "r1a".into(),
                members: vec!["r1a".into(), "r1b".into()],
            }),
            Fault::RedisPromote(RedisPromote {
                region: "r1".into(),
                node: "r1b".into(),
                sentinel: "r1s".into(),
                members: vec!["r1a".into(), "r1b".into()],
            }),
            Fault::PostgresFailover(PostgresFailover {
                from: "db1".into(),
                to: "db2".into(),
                fence: false,
            }),
            Fault::Kill(Kill {
                node: "r1a".into(),
                service: "redis".into(),
                pids: vec![7],
            }),
            Fault::Pause(Pause {
                node: "db1".into(),
                service: "postgres".into(),
                pids: vec![8],
            }),
            Fault::ClockSkew(ClockSkew {
                node: "r2a".into(),
                skew: Skew::Bump { offset_ms: 1500 },
            }),
            Fault::ClockSkew(ClockSkew {
                node: "r2a".into(),
                skew: Skew::Strobe {
                    offset_ms: -300,
                    period_ms: 200,
                },
            }),
        ]
    }

    #[test]
    fn the_history_names_of_every_fault_stay_as_they_were() {
        // Histories written before the vocabulary was one table name faults so: a
        // checker reading them must still pair them.
        let names: Vec<(&str, &str)> = one_of_each()
            .iter()
            .map(|f| (f.start_f(), f.stop_f()))
            .collect();
        assert_eq!(
            names,
            [
                ("start-partition", "stop-partition"),
                ("start-packet-loss", "stop-packet-loss"),
                ("start-latency", "stop-latency"),
                ("start-failover", "stop-failover"),
                ("start-replicaof-no-one", "stop-replicaof-no-one"),
                ("start-postgres-failover", "stop-postgres-failover"),
                ("kill", "restart"),
                ("pause", "resume"),
                ("bump-clock", "reset-clock"),
                ("strobe-clock", "reset-clock"),
            ]
        );
        // Every family of the vocabulary has a fault here, and reads in words from
        // what the nemesis logs (`{"seq", "fault"}`), not as raw JSON.
        let families: Vec<Family> = one_of_each().iter().map(Fault::family).collect();
        for family in Family::all() {
            assert!(families.contains(&family), "{family} has no fault");
        }
        for f in one_of_each() {
            let logged = serde_json::json!({"seq": 1, "fault": f});
            let words = f.family().describe(Some(&logged));
            assert!(!words.contains("\"kind\""), "raw JSON: {words}");
            assert_ne!(words, f.family().name(), "no words for {f:?}");
        }
    }

    #[test]
    fn the_journal_format_stays_as_it_was() {
        for f in one_of_each() {
            let json = serde_json::to_value(&f).unwrap();
            assert_eq!(serde_json::from_value::<Fault>(json.clone()).unwrap(), f);
            assert!(json["kind"].is_string(), "{json}");
        }
        assert_eq!(
            serde_json::to_value(&one_of_each()[6]).unwrap(),
            serde_json::json!({"kind": "kill", "node": "r1a", "service": "redis", "pids": [7]})
        );
        assert_eq!(
            serde_json::to_value(&one_of_each()[5]).unwrap(),
            serde_json::json!({"kind": "postgres-failover", "from": "db1", "to": "db2", "fence": false})
        );
    }
}
