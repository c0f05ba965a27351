//! Who replicates whom, and when: the cache replicas and database standbys of a history,
//! from its `topology` event and the failovers after it.
//!
//! A history may declare its topology (`docs/history.md`): a `control` event `topology`
//! naming every cache node (its region, and the primary it replicates, `replica_of`) and
//! every database node (the primary it is a standby of, `standby_of`). Failovers change
//! it: after a nemesis `failover` whose value names the `promoted` node, that node
//! follows no one; when it also names the `demoted` one, the demoted node and every node
//! that followed it follow the promoted one from then on (Sentinel's failover, and a
//! PostgreSQL failover whose old primary is rebuilt as a standby). Without a topology
//! event, the kind of a node is what it served (a cache node served reads, fills and
//! invalidations; a database node writes and db-reads) and nobody is known to follow
//! anybody; an event's `"role": "replica"` still marks a replica read.

use crate::faults::NemesisLog;
use crate::model::{History, NONE};
use coherence_store::OpKind;
use serde_json::Value;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A cache node.
    Cache,
    /// A database node.
    Database,
    /// The history does not say.
    Unknown,
}

/// A change of who follows whom.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    /// When, ns.
    pub time: u64,
    /// Index of the event that says so.
    pub index: u64,
    /// The node promoted.
    pub promoted: u32,
    /// The node demoted, or [`NONE`].
    pub demoted: u32,
    /// What kind of node was promoted.
    pub kind: NodeKind,
}

/// The topology of a history over time.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// Per node id: its kind.
    kinds: Vec<NodeKind>,
    /// Per node id: the node it follows at the start ([`NONE`]: none).
    initial: Vec<u32>,
    /// Failovers, in time order.
    pub changes: Vec<Change>,
    /// True when the history declared its topology.
    pub declared: bool,
}

impl Topology {
    /// Reads the topology of `h`, with the failovers `nemesis` logged.
    pub fn read(h: &History, nemesis: &NemesisLog) -> Topology {
        let n = h.nodes.len();
        let mut t = Topology {
            kinds: vec![NodeKind::Unknown; n],
            initial: vec![NONE; n],
            changes: Vec::new(),
            declared: false,
        };
        let node = |name: Option<&str>| name.and_then(|n| h.nodes.get(n));
        if let Some(ev) = h
            .standalone
            .iter()
            .find(|e| e.actor == "control" && e.f == "topology")
        {
            let value: Option<Value> = ev
                .value
                .as_deref()
                .and_then(|v| serde_json::from_str(v).ok());
            for (list, kind, follows) in [
                ("caches", NodeKind::Cache, "replica_of"),
                ("databases", NodeKind::Database, "standby_of"),
            ] {
                let entries = value
                    .as_ref()
                    .and_then(|v| v.get(list))
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for e in entries {
                    let Some(id) = node(e.get("node").and_then(Value::as_str)) else {
                        continue; // a node that never appears in the history
                    };
                    t.declared = true;
                    t.kinds[id as usize] = kind;
                    t.initial[id as usize] =
                        node(e.get(follows).and_then(Value::as_str)).unwrap_or(NONE);
                }
            }
        }
        // What nodes served tells their kind where the topology does not.
        for op in &h.ops {
            if op.node == NONE || t.kinds[op.node as usize] != NodeKind::Unknown {
                continue;
            }
            t.kinds[op.node as usize] = match op.kind {
                OpKind::Read | OpKind::Fill | OpKind::FinalRead | OpKind::Invalidate => {
                    NodeKind::Cache
                }
                OpKind::Write | OpKind::DbRead | OpKind::DbFinalRead => NodeKind::Database,
                _ => NodeKind::Unknown,
            };
        }
        for f in &nemesis.faults {
            let said = if f.f == coherence_store::faults::FAILOVER {
                f.value.as_ref()
            } else {
                f.outcome.as_ref()
            };
            let Some(said) = said else { continue };
            let Some(promoted) = node(said.get("promoted").and_then(Value::as_str)) else {
                continue;
            };
            let kind = match said.get("service").and_then(Value::as_str) {
                Some("postgres") | Some("postgresql") | Some("database") => NodeKind::Database,
                Some("redis") | Some("cache") => NodeKind::Cache,
                _ => t.kinds[promoted as usize],
            };
            t.changes.push(Change {
                time: f.start_ns,
                index: f.index,
                promoted,
                demoted: node(said.get("demoted").and_then(Value::as_str)).unwrap_or(NONE),
                kind,
            });
        }
        t.changes.sort_by_key(|c| c.time);
        t
    }

    /// What `node` is.
    pub fn kind(&self, node: u32) -> NodeKind {
        self.kinds
            .get(node as usize)
            .copied()
            .unwrap_or(NodeKind::Unknown)
    }

    /// The node `node` follows (replicates, or is a standby of) at time `at`, if any.
    pub fn follows(&self, node: u32, at: u64) -> Option<u32> {
        if node == NONE || node as usize >= self.initial.len() {
            return None;
        }
        let mut follows = self.initial.clone();
        for c in self.changes.iter().take_while(|c| c.time <= at) {
            let p = c.promoted as usize;
            if c.demoted != NONE {
                for f in follows.iter_mut() {
                    if *f == c.demoted {
                        *f = c.promoted;
                    }
                }
                if let Some(d) = follows.get_mut(c.demoted as usize) {
                    *d = c.promoted;
                }
            }
            follows[p] = NONE;
        }
        let f = follows[node as usize];
        (f != NONE).then_some(f)
    }

    /// The failover that promoted `node` most recently at or before `at`, of a node of
    /// `kind`.
    pub fn promoted(&self, node: u32, kind: NodeKind, from: u64, to: u64) -> Option<&Change> {
        self.changes
            .iter()
            .rev()
            .find(|c| c.promoted == node && c.kind == kind && c.time >= from && c.time <= to)
    }

    /// A database failover between `from` and `to`.
    pub fn database_failover(&self, from: u64, to: u64) -> Option<&Change> {
        self.changes
            .iter()
            .find(|c| c.kind == NodeKind::Database && c.time >= from && c.time <= to)
    }
}

/// The region of each cache node the history's `topology` event names one for.
pub fn regions(h: &History) -> rustc_hash::FxHashMap<u32, String> {
    let mut out = rustc_hash::FxHashMap::default();
    let Some(value) = h
        .standalone
        .iter()
        .find(|e| e.actor == "control" && e.f == "topology")
        .and_then(|e| e.value.as_deref())
        .and_then(|v| serde_json::from_str::<Value>(v).ok())
    else {
        return out;
    };
    for e in value
        .get("caches")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let node = e
            .get("node")
            .and_then(Value::as_str)
            .and_then(|n| h.nodes.get(n));
        if let (Some(node), Some(region)) = (node, e.get("region").and_then(Value::as_str)) {
            out.insert(node, region.to_string());
        }
    }
    out
}
