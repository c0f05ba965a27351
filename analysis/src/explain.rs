//! Explanations: each finding as data (the operations with their lines, the cycle,
//! the cause) and then as sentences. The report and the text output reuse the data.
//! Names from the history are cut in the data and quoted or escaped in the sentences
//! ([`crate::bound`]), so neither grows with a huge key nor carries control characters.

use crate::bound::{self, prose};
use crate::check::{AnomalyKind, Cause, CauseKind, Context};
use crate::detect::Finding;
use crate::graph::{self, EdgeKind, Step};
use crate::model::{History, Op, Val, NONE};
use coherence_store::{quote, OpKind};
use serde::Serialize;

/// An operation as shown to people.
#[derive(Debug, Clone, Serialize)]
pub struct OpView {
    /// Index of the invoke event (the operation's number in sentences).
    pub index: u64,
    /// Index of the completion event, if it completed.
    pub complete_index: Option<u64>,
    /// Line of the invoke in the history file.
    pub line: u64,
    /// Line of the completion.
    pub complete_line: Option<u64>,
    /// The operation.
    pub f: String,
    /// ok, fail or info.
    #[serde(rename = "type")]
    pub outcome: String,
    /// The client process.
    pub process: i64,
    /// The node that served it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The version read or written, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// The write id read or written, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write: Option<String>,
    /// Invoke time in ns.
    pub invoke_ns: u64,
    /// Completion time in ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complete_ns: Option<u64>,
}

/// One edge of a cycle, as data and as a sentence.
#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    /// Index of the operation the edge leaves.
    pub from: u64,
    /// Index of the operation it reaches.
    pub to: u64,
    /// ww, wr, rw, rt or po.
    pub kind: EdgeKind,
    /// The edge in words.
    pub why: String,
}

/// The likely cause, as data and as a sentence.
#[derive(Debug, Clone, Serialize)]
pub struct CauseView {
    /// Its name (`fill-race`, `lost-invalidation`, ...).
    pub kind: CauseKind,
    /// In words.
    pub text: String,
    /// History indices that show it.
    pub indices: Vec<u64>,
}

/// An anomaly, explained.
#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    /// Which anomaly.
    pub name: AnomalyKind,
    /// The key.
    pub key: String,
    /// The cache or database node of the offending operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The process of the offending operation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<i64>,
    /// Every history index that proves it, ascending.
    pub indices: Vec<u64>,
    /// The operations involved.
    pub ops: Vec<OpView>,
    /// Staleness in ns (stale reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staleness_ns: Option<u64>,
    /// One sentence that states the anomaly.
    pub summary: String,
    /// The cycle, step by step; empty when the anomaly is no cycle (a phantom read).
    pub cycle: Vec<StepView>,
    /// The cycle in one line, e.g. `write 4 →rt read 9 →rw write 4`.
    pub cycle_text: String,
    /// The likely cause (stale reads and non-convergence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<CauseView>,
    /// What to say when [`Anomaly::cycle`] is empty, when the anomaly's kind has its
    /// own reason (not in results).
    #[serde(skip)]
    pub no_cycle: Option<&'static str>,
}

/// Formats a duration in ns for people: `0 ns`, `250 µs`, `8 ms`, `1.5 s`.
pub fn duration(ns: u64) -> String {
    if ns == 0 {
        "0 s".to_string()
    } else if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        trim(ns as f64 / 1e3, "µs")
    } else if ns < 1_000_000_000 {
        trim(ns as f64 / 1e6, "ms")
    } else {
        trim(ns as f64 / 1e9, "s")
    }
}

fn trim(x: f64, unit: &str) -> String {
    let s = format!("{x:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s} {unit}")
}

/// Formats a point in the run (ns since start) to the microsecond: `20 ms`, `1.00001 ms`,
/// `10.2 s`.
pub fn at(ns: u64) -> String {
    if ns < 1_000_000_000 {
        let s = format!("{:.6}", ns as f64 / 1e6);
        format!("{} ms", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        let s = format!("{:.6}", ns as f64 / 1e9);
        format!("{} s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// The line of the history file of an event index (lines count from 1).
pub fn line(index: u64) -> u64 {
    index + 1
}

/// Describes an operation by its kind and number: `read 9`, `write 4`.
fn name(h: &History, id: u32) -> String {
    let op = &h.ops[id as usize];
    format!("{} {}", op.kind.as_str(), op.invoke_index)
}

fn version_of(h: &History, v: Val) -> String {
    format!("version {} ({})", v.version, quote(h.writes.name(v.write)))
}

/// Builds the view of an operation.
pub fn op_view(h: &History, id: u32) -> OpView {
    let op = &h.ops[id as usize];
    let done = op.complete_index != u64::MAX;
    OpView {
        index: op.invoke_index,
        complete_index: done.then_some(op.complete_index),
        line: line(op.invoke_index),
        complete_line: done.then(|| line(op.complete_index)),
        f: op.kind.as_str().to_string(),
        outcome: match op.outcome {
            crate::model::Outcome::Ok => "ok",
            crate::model::Outcome::Fail => "fail",
            crate::model::Outcome::Info => "info",
        }
        .to_string(),
        process: h.process_name(op.process),
        node: (op.node != NONE).then(|| bound::name(h.nodes.name(op.node))),
        version: op.value.map(|v| v.version).filter(|v| *v >= 0),
        write: op.value.map(|v| bound::name(h.writes.name(v.write))),
        invoke_ns: op.invoke_time,
        complete_ns: done.then_some(op.complete_time),
    }
}

/// What a detector's explanation may draw on: the history, the key's index of writes
/// for the dependency graph, and the words sentences are made of.
pub struct Explaining<'a> {
    /// What every key's check knows of the whole history.
    pub ctx: &'a Context<'a>,
    /// The key's writes, for the operations a cycle may run through.
    pub index: &'a graph::KeyIndex,
    /// Interned key.
    pub key: u32,
}

impl Explaining<'_> {
    /// The history.
    pub fn history(&self) -> &History {
        self.ctx.history
    }

    /// An operation by its kind and number: `read 9`, `write 4`.
    pub fn name(&self, id: u32) -> String {
        name(self.ctx.history, id)
    }

    /// The key, quoted.
    pub fn key_name(&self) -> String {
        quote(self.ctx.history.keys.name(self.key))
    }

    /// ` on r1a` for an operation served by a node, else nothing.
    pub fn on_node(&self, id: u32) -> String {
        on_node(self.ctx.history, &self.ctx.history.ops[id as usize])
    }

    /// What an operation read or wrote: `version 3 ("w7")`, or nothing for a miss.
    pub fn seen(&self, id: u32) -> String {
        self.ctx.history.ops[id as usize]
            .value
            .map(|v| self.version_of(v))
            .unwrap_or_default()
    }

    /// A value: `version 3 ("w7")`.
    pub fn version_of(&self, v: Val) -> String {
        version_of(self.ctx.history, v)
    }
}

/// An anomaly explained as data, by its detector ([`crate::detect::Found::explain`]):
/// what [`explain`] turns into the [`Anomaly`] that results, text and the report show.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// One sentence that states the anomaly.
    pub summary: String,
    /// The operations that prove it, the offending one first ([`NONE`] entries are
    /// skipped): shown, and the vertices of the dependency graph.
    pub proof: Vec<u32>,
    /// Further operations the cycle may run through (the writes between two versions):
    /// vertices of the graph, shown only when the cycle uses them.
    pub context: Vec<u32>,
    /// The version at stake; an info write of the proof that no read of it shows with a
    /// version is tied to it.
    pub version: i64,
    /// Staleness in ns (stale reads).
    pub staleness_ns: Option<u64>,
    /// The likely cause, and the newer write it is about ([`NONE`]: none).
    pub cause: Option<(Cause, u32)>,
    /// What to say when the rules give no cycle, when the anomaly has a reason of its
    /// own (a phantom read is no cycle).
    pub no_cycle: Option<&'static str>,
    /// The cause in words, when the detector words it itself (the observer checks);
    /// `None`: worded from [`Explanation::cause`] by the rules of stale reads.
    pub cause_view: Option<CauseView>,
    /// False when the anomaly is no cycle at all: none is looked for.
    pub cycle: bool,
}

impl Explanation {
    /// An explanation with no staleness, cause or note of its own.
    pub fn new(summary: String, proof: Vec<u32>, context: Vec<u32>, version: i64) -> Self {
        Explanation {
            summary,
            proof,
            context,
            version,
            staleness_ns: None,
            cause: None,
            no_cycle: None,
            cause_view: None,
            cycle: true,
        }
    }
}

/// Explains one finding: its operations, cycle, sentences and cause.
pub fn explain(ctx: &Context<'_>, index: &graph::KeyIndex, f: &Finding) -> Anomaly {
    let h = ctx.history;
    let e = f.found().explain(&Explaining {
        ctx,
        index,
        key: f.key,
    });
    let read = f.op();
    let op = &h.ops[read as usize];
    let key = bound::name(h.keys.name(f.key));
    let vertices: Vec<u32> = e.proof.iter().chain(&e.context).copied().collect();
    let steps = if e.cycle {
        graph::cycle(h, ctx.bound, f.key, &vertices, e.version)
    } else {
        None
    };
    let mut op_ids: Vec<u32> = e.proof.clone();
    if let Some(steps) = &steps {
        op_ids.extend(steps.iter().flat_map(|s| [s.from, s.to]));
    }
    if let Some((c, _)) = e.cause.filter(|(c, _)| c.op != NONE) {
        op_ids.push(c.op);
    }
    let mut seen = rustc_hash::FxHashSet::default();
    op_ids.retain(|&id| id != NONE && seen.insert(id));
    op_ids.sort_by_key(|&id| h.ops[id as usize].invoke_index);
    let ops: Vec<OpView> = op_ids.iter().map(|&id| op_view(h, id)).collect();
    let mut indices: Vec<u64> = ops
        .iter()
        .flat_map(|o| std::iter::once(o.index).chain(o.complete_index))
        .collect();
    let cause = match e.cause_view {
        Some(view) => Some(view),
        None => e
            .cause
            .map(|(c, newer)| cause_view(ctx, f.key, read, newer, e.version, c)),
    };
    if let Some(c) = &cause {
        indices.extend(&c.indices);
    }
    indices.sort_unstable();
    indices.dedup();
    let cycle: Vec<StepView> = steps
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|s| step_view(ctx, s))
        .collect();
    let cycle_text = match &steps {
        Some(steps) if !steps.is_empty() => {
            let mut s = name(h, steps[0].from);
            for step in steps {
                s.push_str(&format!(" →{} {}", step.kind.name(), name(h, step.to)));
            }
            s
        }
        _ => String::new(),
    };
    Anomaly {
        name: f.kind,
        key,
        node: Some(f.node(h))
            .filter(|&n| n != NONE)
            .map(|n| bound::name(h.nodes.name(n))),
        process: Some(h.process_name(op.process)),
        indices,
        ops,
        staleness_ns: e.staleness_ns,
        summary: e.summary,
        cycle,
        cycle_text,
        cause,
        no_cycle: e.no_cycle,
    }
}

fn on_node(h: &History, op: &Op) -> String {
    if op.node == NONE {
        String::new()
    } else {
        format!(" on {}", prose(h.nodes.name(op.node)))
    }
}

fn step_view(ctx: &Context<'_>, s: &Step) -> StepView {
    let h = ctx.history;
    let (a, b) = (&h.ops[s.from as usize], &h.ops[s.to as usize]);
    let (na, nb) = (name(h, s.from), name(h, s.to));
    let (va, vb) = (
        s.from_value.map_or(-1, |v| v.version),
        s.to_value.map_or(-1, |v| v.version),
    );
    let why = match s.kind {
        EdgeKind::Rt => format!(
            "{na} completed at {} and {nb} began at {}, {} later (more than the bound of {})",
            at(a.complete_time),
            at(b.invoke_time),
            duration(b.invoke_time - a.complete_time),
            duration(ctx.bound)
        ),
        EdgeKind::Wr => format!("{nb} saw version {} written by {na}", vb),
        EdgeKind::Rw if a.kind == OpKind::DbFinalRead => format!(
            "{na} shows the database's final state without version {} of {nb}, so {nb} must come after it",
            vb
        ),
        EdgeKind::Rw => format!(
            "{na} saw version {}, which {nb} replaced (version {})",
            va,
            vb
        ),
        EdgeKind::Ww if va == vb => format!(
            "{na} and {nb} both installed version {}, so each would have to follow the other",
            va
        ),
        EdgeKind::Ww => format!(
            "{na} installed version {} and {nb} the later version {}",
            va,
            vb
        ),
        EdgeKind::Po => format!(
            "{na} came before {nb} in process {}",
            h.process_name(a.process)
        ),
    };
    StepView {
        from: a.invoke_index,
        to: b.invoke_index,
        kind: s.kind,
        why,
    }
}

/// The cause `c` of the anomaly of `read` (which saw `version` of `key`), about the
/// newer write `newer_id`.
fn cause_view(
    ctx: &Context<'_>,
    key: u32,
    read: u32,
    newer_id: u32,
    version: i64,
    c: Cause,
) -> CauseView {
    let h = ctx.history;
    let read = &h.ops[read as usize];
    let node = prose(h.node_name(read.node));
    let holder = if c.holder == NONE {
        read.node
    } else {
        c.holder
    };
    // "r1a" for a primary read, "r1a (the primary r1b replicates)" for a replica's,
    // "r1a (the cache app:r1 reads through)" for a service's.
    let holder_name = if holder != read.node && holder != NONE {
        if ctx.declared_caches.contains(&read.node) {
            format!(
                "{} (the primary {node} replicates)",
                prose(h.node_name(holder))
            )
        } else {
            format!(
                "{} (the cache {node} reads through)",
                prose(h.node_name(holder))
            )
        }
    } else {
        node.clone()
    };
    let newer = h
        .ops
        .get(newer_id as usize)
        .filter(|o| o.kind == OpKind::Write);
    let newer_name = newer.map_or("the newer write".to_string(), |_| name(h, newer_id));
    let newer_version = newer.and_then(|w| w.value).map_or(0, |v| v.version);
    let ev_f = |index: u64| {
        h.standalone
            .iter()
            .find(|e| e.index == index)
            .map(|e| prose(&e.f))
            .unwrap_or_else(|| "invalidate".to_string())
    };
    let inval_at = |index: u64| {
        h.invalidations[key as usize]
            .iter()
            .find(|i| i.index == index)
            .map(|i| i.time)
    };
    let mut indices = Vec::new();
    for i in [c.event, c.fault] {
        if i != u64::MAX {
            indices.push(i);
        }
    }
    for op in [c.op, c.source] {
        if let Some(o) = h.ops.get(op as usize) {
            indices.push(o.invoke_index);
            if o.complete_index != u64::MAX {
                indices.push(o.complete_index);
            }
        }
    }
    let mut text = match c.kind {
        CauseKind::FillRace if c.op == NONE => {
            // A set the holder's cache observer saw, which no client recorded.
            let set_at = h.observed[key as usize]
                .iter()
                .find(|o| o.index == c.event)
                .map_or(0, |o| o.time);
            format!(
                "the cache-aside fill race: {holder_name}'s cache observer saw the key set at {} (line {}), after version {newer_version} was acknowledged or invalidated ({newer_name}) and before the read returned; no client of the history recorded that fill (the service's own), and the read shows it installed the old version",
                at(set_at),
                line(c.event)
            )
        }
        CauseKind::FillRace | CauseKind::DatabaseReplicaFill => {
            let fill = &h.ops[c.op as usize];
            let after = match inval_at(c.event) {
                Some(t) => format!(
                    "after {} was invalidated at {} (line {}), once {newer_name} had begun writing version {newer_version}",
                    prose(h.node_name(holder)),
                    at(t),
                    line(c.event)
                ),
                None => format!(
                    "after version {newer_version} was acknowledged at {} ({newer_name})",
                    at(newer.map_or(0, |w| w.complete_time)),
                ),
            };
            let landed = if fill.complete_time == u64::MAX {
                "(its outcome unknown, so it may have landed any time after it began)".to_string()
            } else {
                format!("at {}", at(fill.complete_time))
            };
            let race = format!(
                "{} installed the old version {} on {holder_name} {landed}, {after}",
                name(h, c.op),
                fill.value.map_or(0, |v| v.version),
            );
            match h.ops.get(c.source as usize) {
                Some(src) if c.kind == CauseKind::DatabaseReplicaFill => format!(
                    "a fill from a lagging database standby: {race}; it had read that version from {} ({} at {}), which had not yet applied a newer acknowledged write",
                    prose(h.node_name(src.node)),
                    name(h, c.source),
                    at(src.invoke_time)
                ),
                _ => format!("the cache-aside fill race: {race}"),
            }
        }
        CauseKind::ReplicaRead => match inval_at(c.event) {
            Some(t) if holder != read.node => format!(
                "replica lag: {node} replicates {}, which was invalidated for version {newer_version} at {} (line {}), {} before the read began; the deletion had not reached {node} yet",
                prose(h.node_name(holder)),
                at(t),
                line(c.event),
                duration(read.invoke_time.saturating_sub(t))
            ),
            _ => format!("the read was served by a replica ({node}) that had not caught up"),
        },
        CauseKind::FailoverPromoted => format!(
            "{node} had been promoted by the failover at line {}, and did not hold the newer version",
            line(c.event)
        ),
        CauseKind::LateInvalidation => format!(
            "the invalidation of {holder_name} came late: it was logged at {} (line {}), after the read began at {}",
            inval_at(c.event).map_or_else(|| "?".to_string(), at),
            line(c.event),
            at(read.invoke_time)
        ),
        CauseKind::LostInvalidation => {
            let failed = h.ops.get(c.op as usize).map(|o| {
                format!(
                    " ({} of {} ended {})",
                    name(h, c.op),
                    prose(h.node_name(o.node)),
                    if o.outcome == crate::model::Outcome::Fail { "failed" } else { "with an unknown outcome" }
                )
            });
            let proven = if h.watched.caches.contains(&holder) {
                format!(" (proven: {}'s observer, watching without a gap, saw none)", prose(h.node_name(holder)))
            } else {
                String::new()
            };
            format!(
                "a lost invalidation: no invalidation of {holder_name} for version {newer_version} of this key followed {newer_name}{}{proven}",
                failed.unwrap_or_default()
            )
        }
        CauseKind::DatabaseReplicaLag => format!(
            "database replica lag: the read was served by {node}{}, which had not yet applied what {newer_name} committed",
            if holder != read.node && holder != NONE {
                format!(", a standby of {}", prose(h.node_name(holder)))
            } else {
                String::new()
            }
        ),
        // Only a cache entry can hold a version above the newer write's: a stale read's
        // newer write is newer than what it read.
        CauseKind::DatabaseLostWrite if version > newer_version => format!(
            "the cache holds version {version}, which the database no longer has: the database lost that write (a failover?)",
        ),
        CauseKind::DatabaseLostWrite => format!(
            "the database lost the newer write: every version after {} that was acknowledged before the read ({newer_name} and any later) is missing from the database's final state{}; the read agreed with what the database kept",
            version,
            if c.event != u64::MAX {
                format!(", after the failover at line {}", line(c.event))
            } else {
                String::new()
            }
        ),
        // Worded by the observer checks themselves ([`Explanation::cause_view`]).
        CauseKind::InvalidatorDown | CauseKind::Partition | CauseKind::Failover => {
            c.kind.name().to_string()
        }
        CauseKind::Unexplained => {
            let gap = h.gaps.iter().find(|g| g.index == c.event);
            if let Some(g) = gap {
                format!(
                    "not shown by the history: the observer of {} was blind from {} to {} (the observer-gap at line {}), while the invalidation for {newer_name} was due",
                    prose(h.node_name(g.node)),
                    at(g.from),
                    at(g.to),
                    line(g.index)
                )
            } else if !ctx.records_invalidations && read.kind != OpKind::DbRead {
                format!(
                    "not shown by the history: it records no invalidation at all, so whether {holder_name} was invalidated after {newer_name} cannot be told"
                )
            } else {
                format!(
                    "not shown by the history: {holder_name} served version {} after {newer_name}{}, and no fill of it, replica or failover explains it",
                    version,
                    match inval_at(c.event) {
                        Some(t) => format!(" and an invalidation at {} (line {})", at(t), line(c.event)),
                        None => String::new(),
                    }
                )
            }
        }
    };
    if c.fault != u64::MAX {
        text.push_str(&format!(
            "; a nemesis {} (line {}) was in force then",
            ev_f(c.fault),
            line(c.fault)
        ));
    }
    indices.sort_unstable();
    indices.dedup();
    CauseView {
        kind: c.kind,
        text,
        indices,
    }
}
