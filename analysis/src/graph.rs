//! The dependency graph of one anomaly, and its cycle.
//!
//! For each anomaly its detector names the operations that prove it (the read, the
//! writes between the version it saw and the one it should have seen, the earlier read
//! or own write of the process, the final database read: the proof and context of its
//! [`crate::explain::Explanation`]); this module adds every edge the spec defines
//! between them — `ww` version order, `wr` a read saw a write, `rw` a read saw a
//! version a write replaced, `rt` realtime beyond Δ, `po` process order — into a
//! petgraph graph, and finds the shortest cycle through the offending operation. The
//! edges are derived from the rules, not from the anomaly's kind, so a cycle found is
//! a proof that stands on its own.

use crate::model::{History, Op, Outcome, Val, NONE};
use coherence_store::OpKind;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;
use std::collections::VecDeque;

/// The kinds of dependency edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeKind {
    /// Version order: the second write installed a later version.
    Ww,
    /// The read saw the write's version.
    Wr,
    /// The read saw a version that the write replaced.
    Rw,
    /// Realtime: the first completed more than Δ before the second began.
    Rt,
    /// Process order.
    Po,
}

impl EdgeKind {
    /// The short name (`ww`, `wr`, ...).
    pub fn name(self) -> &'static str {
        match self {
            EdgeKind::Ww => "ww",
            EdgeKind::Wr => "wr",
            EdgeKind::Rw => "rw",
            EdgeKind::Rt => "rt",
            EdgeKind::Po => "po",
        }
    }
}

/// One step of a cycle: an edge between two operations (op ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Where the edge starts.
    pub from: u32,
    /// Where it ends.
    pub to: u32,
    /// Which dependency it is.
    pub kind: EdgeKind,
    /// The value `from` wrote or saw (an info write: the version the proof ties it to).
    pub from_value: Option<Val>,
    /// The value `to` wrote or saw.
    pub to_value: Option<Val>,
}

/// A vertex: an operation and the value it wrote or saw.
#[derive(Debug, Clone, Copy)]
struct Vertex {
    op: u32,
    /// For writes: the version it is tied to (for info writes, the version a read showed).
    wrote: Option<Val>,
    /// For reads: what it saw.
    saw: Option<Val>,
}

/// What explaining a key's anomalies needs, built once per key: its acknowledged
/// writes by version, and the op of each write id.
pub struct KeyIndex {
    /// Ok writes as (value, op id), sorted by version.
    writes: Vec<(Val, u32)>,
    /// The first write op (not failed) of each write id.
    by_id: FxHashMap<u32, u32>,
}

impl KeyIndex {
    /// Indexes one key.
    pub fn new(h: &History, key: u32) -> KeyIndex {
        let mut writes = Vec::new();
        let mut by_id = FxHashMap::default();
        for &id in &h.key_ops[key as usize] {
            let op = &h.ops[id as usize];
            if op.kind != OpKind::Write || op.outcome == Outcome::Fail {
                continue;
            }
            if let Some(v) = op.value {
                by_id.entry(v.write).or_insert(id);
                if op.outcome == Outcome::Ok {
                    writes.push((v, id));
                }
            }
        }
        writes.sort_by_key(|(v, id)| (v.version, *id));
        KeyIndex { writes, by_id }
    }

    /// The op that wrote `val`.
    pub fn writer_of(&self, val: Val) -> Option<u32> {
        self.by_id.get(&val.write).copied()
    }

    /// The acknowledged writes from the version after `from` up to `to`: at most the
    /// first four of them and the last.
    pub fn chain(&self, from: i64, to: i64) -> Vec<u32> {
        let writes = &self.writes;
        let lo = writes.partition_point(|(v, _)| v.version <= from);
        let hi = writes.partition_point(|(v, _)| v.version <= to);
        let between = &writes[lo..hi.max(lo)];
        let mut ids: Vec<u32> = between.iter().take(4).map(|&(_, id)| id).collect();
        ids.extend(between.last().map(|&(_, id)| id));
        ids
    }
}

/// The ops of the proof, as vertices.
fn vertices(h: &History, ids: &[u32], version: i64) -> Vec<Vertex> {
    let mut ids = ids.to_vec();
    let saw = |id: u32| h.ops.get(id as usize).and_then(|o| o.value);
    let mut seen = FxHashSet::default();
    ids.retain(|&id| id != NONE && seen.insert(id));
    // What the reads of the proof saw, to tie info writes to a version.
    let seen_values: Vec<Val> = ids.iter().filter_map(|&id| saw(id)).collect();
    ids.iter()
        .map(|&id| {
            let op = &h.ops[id as usize];
            let mut wrote = None;
            let mut saw = None;
            if op.kind == OpKind::Write {
                wrote = op.value.map(|v| {
                    if v.version < 0 {
                        // an info write: tied to the version a read of the proof saw it
                        // with (a fork's version otherwise)
                        let version = seen_values
                            .iter()
                            .find(|s| s.write == v.write && s.version >= 0)
                            .map_or(version, |s| s.version);
                        Val {
                            version,
                            write: v.write,
                        }
                    } else {
                        v
                    }
                });
            } else {
                saw = op.value;
            }
            Vertex { op: id, wrote, saw }
        })
        .collect()
}

/// Builds the graph of the proof's operations with every edge the rules give.
fn build(
    h: &History,
    bound: u64,
    key: u32,
    ids: &[u32],
    version: i64,
) -> (DiGraph<Option<Val>, EdgeKind>, Vec<NodeIndex>, Vec<u32>) {
    let vs = vertices(h, ids, version);
    let mut g = DiGraph::new();
    let nodes: Vec<NodeIndex> = vs.iter().map(|v| g.add_node(v.wrote.or(v.saw))).collect();
    let op = |i: usize| -> &Op { &h.ops[vs[i].op as usize] };
    let final_log = h.finals[key as usize]
        .as_ref()
        .and_then(|fin| fin.log.as_ref().map(|l| (fin.op, l)));
    for a in 0..vs.len() {
        for b in 0..vs.len() {
            if a == b {
                continue;
            }
            let (oa, ob) = (op(a), op(b));
            // ww: b installs the next version after a (or the same version: a fork).
            if let (Some(wa), Some(wb)) = (vs[a].wrote, vs[b].wrote) {
                let next = wb.version > wa.version
                    && !vs.iter().any(|v| {
                        v.wrote
                            .is_some_and(|w| w.version > wa.version && w.version < wb.version)
                    });
                if next || (wb.version == wa.version && wb.write != wa.write) {
                    g.add_edge(nodes[a], nodes[b], EdgeKind::Ww);
                }
            }
            // wr: b saw a's write.
            if let (Some(wa), Some(sb)) = (vs[a].wrote, vs[b].saw) {
                if wa == sb {
                    g.add_edge(nodes[a], nodes[b], EdgeKind::Wr);
                }
            }
            // rw: a saw a version that b replaced.
            if let (Some(sa), Some(wb)) = (vs[a].saw, vs[b].wrote) {
                let replaced = match final_log {
                    Some((fop, log)) if fop == vs[a].op => !log.contains(&wb),
                    _ => {
                        wb.version > sa.version
                            && !vs.iter().any(|v| {
                                v.wrote.is_some_and(|w| {
                                    w.version > sa.version && w.version < wb.version
                                })
                            })
                    }
                };
                if replaced {
                    g.add_edge(nodes[a], nodes[b], EdgeKind::Rw);
                }
            }
            // rt: a completed more than Δ before b began.
            if oa.outcome == Outcome::Ok && oa.complete_time.saturating_add(bound) < ob.invoke_time
            {
                g.add_edge(nodes[a], nodes[b], EdgeKind::Rt);
            }
            // po: b is the next op of a's process among the vertices.
            if oa.process == ob.process
                && oa.invoke_index < ob.invoke_index
                && !vs.iter().any(|v| {
                    let o = &h.ops[v.op as usize];
                    o.process == oa.process
                        && o.invoke_index > oa.invoke_index
                        && o.invoke_index < ob.invoke_index
                })
            {
                g.add_edge(nodes[a], nodes[b], EdgeKind::Po);
            }
        }
    }
    let ops = vs.iter().map(|v| v.op).collect();
    (g, nodes, ops)
}

/// The shortest cycle through the anomaly's offending operation (the first of `ids`,
/// the operations of its proof on `key`), if the rules give one. An info write among
/// them that no read of them shows with a version is tied to `version`.
pub fn cycle(h: &History, bound: u64, key: u32, ids: &[u32], version: i64) -> Option<Vec<Step>> {
    if ids.first().is_none_or(|&id| id == NONE) {
        return None;
    }
    let (g, nodes, ops) = build(h, bound, key, ids, version);
    let step = |from: NodeIndex, to: NodeIndex, kind: EdgeKind| Step {
        from: ops[from.index()],
        to: ops[to.index()],
        kind,
        from_value: g[from],
        to_value: g[to],
    };
    let start = *nodes.first()?;
    // Breadth-first search from the start's successors back to it; prefer the
    // dependency edges over realtime ones when both lead on (edges in insertion order).
    let mut parent: Vec<Option<(NodeIndex, EdgeKind)>> = vec![None; g.node_count()];
    let mut queue = VecDeque::new();
    let mut edges: Vec<_> = g.edges_directed(start, Direction::Outgoing).collect();
    edges.sort_by_key(|e| (e.weight() == &EdgeKind::Rt, e.id()));
    for e in edges {
        let t = e.target();
        if t == start {
            return Some(vec![step(start, start, *e.weight())]);
        }
        if parent[t.index()].is_none() {
            parent[t.index()] = Some((start, *e.weight()));
            queue.push_back(t);
        }
    }
    while let Some(n) = queue.pop_front() {
        let mut edges: Vec<_> = g.edges_directed(n, Direction::Outgoing).collect();
        edges.sort_by_key(|e| (e.weight() == &EdgeKind::Rt, e.id()));
        for e in edges {
            let t = e.target();
            if t == start {
                let mut steps = vec![step(n, start, *e.weight())];
                let mut cur = n;
                while cur != start {
                    let (p, k) = parent[cur.index()].expect("visited");
                    steps.push(step(p, cur, k));
                    cur = p;
                }
                steps.reverse();
                // Start the cycle where a reader expects it: at a write when it has one.
                if let Some(pos) = steps
                    .iter()
                    .position(|s| h.ops[s.from as usize].kind == OpKind::Write)
                {
                    steps.rotate_left(pos);
                }
                return Some(steps);
            }
            if parent[t.index()].is_none() && t != start {
                parent[t.index()] = Some((n, *e.weight()));
                queue.push_back(t);
            }
        }
    }
    None
}
