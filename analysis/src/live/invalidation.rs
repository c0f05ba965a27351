//! `slow-invalidation` and `missing-invalidation`, live: a committed version on a
//! watched cache node that held an older version of the key, invalidated there later
//! than the invalidation bound after the commit, or never by the final phase (`docs/history.md`, *Observers*; [`crate::observers`] is the offline
//! judgement this one must agree with).
//!
//! Each write that completed is a *candidate* on every watched node, judged by a wake-up
//! queue ordered by history time (the `time` of the events taken: it never decreases,
//! so at time T every event before T is in). A candidate is decided only once nothing
//! that could still arrive can change the answer:
//!
//! - its version and its commit time are known: the write completed, and a `commit`
//!   event of its write id came (without one the commit time is the acknowledgement,
//!   and a database that loses the write later takes the version back: left to the
//!   offline check), and no other write claims its version;
//! - its holding evidence is complete: no read of the key that began before the write
//!   is still in flight, and a second has passed since the write began (a `sample`
//!   answered later than that is no evidence, [`SAMPLE_AGE`]);
//! - its fate is settled: the first change the node's observer saw after the evidence is
//!   an `invalidate` at least [`SETTLE`] ago, every `set` before it too (so the fill or
//!   read-back that would make it an overwrite had its time to come), and no observer
//!   gap of the node overlaps, nor a kill or failover (of any node: live does not track
//!   the topology, so it says nothing where one could matter).
//!
//! A candidate that cannot be established within [`HORIZON`] of its write is dropped:
//! live says nothing of it. One established with no change yet waits (parked on its
//! node, woken by the next change there) until the end: a pair with no change that
//! decides by the `final-phase` is a `missing-invalidation`, certain only at the end of
//! the history (an observer logs its gap only when it is back, possibly after the
//! final phase), and not blind by the gaps and faults known then.

use super::{KeyState, Pending, Value};
use crate::detect::AnomalyKind;
use crate::observers::{SAMPLE_AGE, SET_TO_FILL};
use coherence_store::reader::{EventRef, ValueRef};
use coherence_store::{EventType, OpKind};
use rustc_hash::{FxHashMap, FxHashSet};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// How long after a late invalidation (or a `set`) live waits before deciding: the fill
/// that would make a `set` an overwrite completes within [`SET_TO_FILL`] of it, and a
/// read-back sent then is answered within [`SAMPLE_AGE`].
pub const SETTLE: u64 = SET_TO_FILL + SAMPLE_AGE;

/// How long after its write began a candidate may wait to be decided; then it is
/// dropped (and the node's older evidence with it).
pub const HORIZON: u64 = 30_000_000_000;

/// The most candidates one node's key keeps parked (waiting for its next change);
/// beyond, the oldest are dropped unjudged, so that a node whose invalidations are all
/// lost holds no more than this per key.
const PARKED_PER_NODE_KEY: usize = 1024;

/// How soon a candidate waiting for something that has no time of its own (its commit
/// event, a read in flight) looks again, at first; then at half its age, so a
/// candidate looks a few times in all before [`HORIZON`]. One waiting for the next
/// change on its node is woken by that change.
const RETRY: u64 = 250_000_000;

/// What one watched node showed of one key.
#[derive(Debug, Default)]
struct NodeKey {
    /// Holding evidence, by time: (time, what it held: `None` a miss, dirty). `dirty`:
    /// pruned changes came after it.
    evidence: Vec<(u64, Option<Value>, bool)>,
    /// What the node's observer saw, in time order: (time, what, sequence number).
    changes: Vec<(u64, Seen, u64)>,
    /// What may have overwritten an entry: ok fills at their completion and read-backs
    /// at their `from`, by time.
    fills: Vec<(u64, Value)>,
    /// Candidates waiting for the next change: (write's invoke index, node's place).
    waiters: Vec<(u64, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Invalidate,
    Set,
    Removed,
}

impl NodeKey {
    /// Inserts holding evidence at `time` (arrivals are not in time order: a read's
    /// evidence is its invoke).
    fn evidence_at(&mut self, time: u64, held: Option<Value>) {
        let at = self.evidence.partition_point(|e| e.0 <= time);
        self.evidence.insert(at, (time, held, false));
    }

    fn fill_at(&mut self, time: u64, v: Value) {
        let at = self.fills.partition_point(|e| e.0 <= time);
        self.fills.insert(at, (time, v));
    }

    /// Forgets what no candidate can need any more: the evidence before `cutoff` but
    /// the last (marked dirty when a change came after it), and the changes and fills
    /// before `cutoff`.
    fn prune(&mut self, cutoff: u64) {
        let old = self.evidence.partition_point(|e| e.0 < cutoff);
        if old > 0 {
            let last = self.evidence[old - 1].0;
            let dirty = self
                .changes
                .iter()
                .take_while(|c| c.0 < cutoff)
                .any(|c| c.0 > last);
            let first = self.evidence.partition_point(|e| e.0 < last);
            self.evidence.drain(..first);
            if dirty {
                for e in self.evidence.iter_mut().take_while(|e| e.0 == last) {
                    e.2 = true;
                }
            }
        }
        let gone = self.changes.partition_point(|c| c.0 < cutoff);
        self.changes.drain(..gone);
        let gone = self.fills.partition_point(|f| f.0 < cutoff);
        self.fills.drain(..gone);
    }
}

/// A completed write, waiting to be judged on some watched nodes.
#[derive(Debug)]
struct Write {
    key: String,
    write: String,
    /// The version its `ok` states (`None`: unversioned, or an `info`).
    acked: Option<i64>,
    /// True for an `info` (its version is its first commit's).
    info: bool,
    /// When it completed.
    done: u64,
    /// Its invoke's time and index.
    invoke: u64,
    index: u64,
}

/// What became of one candidate when it was looked at.
enum Step {
    /// Look again at this time.
    Wait(u64),
    /// Look again at the next change on the node.
    Park,
    /// Nothing to say (no pair, or not slow, or not certain).
    Drop,
    /// An anomaly: its kind and summary.
    Found(AnomalyKind, String),
}

/// A candidate's pair, once established: its node held an older version when the write
/// began.
#[derive(Debug, Clone, Copy)]
struct Est {
    /// The holding evidence's time.
    t_e: u64,
    /// The version it showed.
    held: i64,
    /// The version committed, and when.
    version: i64,
    commit: u64,
    /// The node's changes up to this sequence number were looked at and decided nothing.
    scanned: u64,
}

/// The versions of one key that writes claimed.
#[derive(Debug, Default)]
struct Claims {
    /// Version -> the write that claimed it first, and when.
    by_version: FxHashMap<i64, (String, u64)>,
    /// The highest version whose claim was forgotten: another write may claim it again
    /// (a fork, on the other side of a split brain, minutes later) unseen, so no pair
    /// of a version up to it is judged.
    forgot_to: Option<i64>,
}

/// The live slow-invalidation check.
#[derive(Debug, Default)]
pub(super) struct Judge {
    bound: Option<u64>,
    /// The watched cache nodes (the first `observe` event's), once known.
    watched: Option<Vec<String>>,
    nodes: FxHashMap<(String, String), NodeKey>,
    writes: FxHashMap<u64, Write>,
    /// (wake time, write's invoke index, watched node's place).
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    /// Candidates waiting per write (the write is forgotten at 0).
    waiting: FxHashMap<u64, usize>,
    /// Cache observers' gaps: node -> (from, to).
    gaps: FxHashMap<String, Vec<(u64, u64)>>,
    /// Kills and failovers: (start, end when closed), by their `seq` while open.
    disruptions: Vec<(u64, Option<u64>)>,
    open: FxHashMap<u64, usize>,
    /// The `final-phase`'s time.
    final_time: Option<u64>,
    now: u64,
    pruned_at: u64,
    /// What came before this was forgotten (but the last evidence of each node).
    cutoff: u64,
    /// The write that claimed each version of a key first, and when (a version claimed
    /// by more than one write is left to the offline check).
    claims: FxHashMap<String, Claims>,
    /// Established pairs, by (write's invoke index, node's place).
    est: FxHashMap<(u64, usize), Est>,
    /// The last change's sequence number.
    seq: u64,
    forked: FxHashSet<(String, i64)>,
    /// The first `commit` event of each (key, write id): its version, its time.
    commits: FxHashMap<(String, String), (Option<i64>, u64)>,
}

impl Judge {
    /// How many candidates, established pairs, commits and claims it holds.
    pub(super) fn remembered(&self) -> usize {
        let claims: usize = self.claims.values().map(|c| c.by_version.len()).sum();
        let nodes: usize = self
            .nodes
            .values()
            .map(|n| n.evidence.len() + n.changes.len() + n.fills.len() + n.waiters.len())
            .sum();
        self.writes.len() + self.est.len() + self.commits.len() + claims + nodes
    }

    pub(super) fn new(bound: Option<u64>) -> Judge {
        Judge {
            bound,
            ..Judge::default()
        }
    }

    fn node_key(&mut self, key: &str, node: &str) -> Option<&mut NodeKey> {
        let watched = self.watched.as_ref()?;
        if !watched.iter().any(|n| n == node) {
            return None;
        }
        Some(
            self.nodes
                .entry((key.to_string(), node.to_string()))
                .or_default(),
        )
    }

    fn claim(&mut self, key: &str, version: i64, write: &str) {
        let c = self.claims.entry(key.to_string()).or_default();
        if c.forgot_to.is_some_and(|f| version <= f) {
            return; // its pairs are not judged
        }
        let c = &mut c.by_version;
        match c.get(&version) {
            Some((w, _)) if w != write => {
                self.forked.insert((key.to_string(), version));
            }
            Some(_) => {}
            None => {
                c.insert(version, (write.to_string(), self.now));
            }
        }
    }

    /// An actor's event (observers, the nemesis, control).
    pub(super) fn actor(&mut self, actor: &str, ev: &EventRef<'_>) {
        self.now = ev.time;
        let raw = || match &ev.value {
            ValueRef::Raw(raw) => serde_json::from_str::<serde_json::Value>(raw.get()).ok(),
            _ => None,
        };
        if ev.op == OpKind::FinalPhase && self.final_time.is_none() {
            self.final_time = Some(ev.time);
        }
        match &*ev.f {
            "observe" if actor == "control" && self.watched.is_none() => {
                let caches = raw()
                    .and_then(|v| v.get("caches")?.as_array().cloned())
                    .unwrap_or_default();
                self.watched = Some(
                    caches
                        .iter()
                        .filter_map(|n| n.as_str().map(str::to_string))
                        .collect(),
                );
            }
            "commit" => {
                let v = raw();
                let write = v.as_ref().and_then(|v| v.get("write")?.as_str());
                let version = v.as_ref().and_then(|v| v.get("version")?.as_i64());
                if let (Some(key), Some(write)) = (&ev.key, write) {
                    self.commits
                        .entry((key.to_string(), write.to_string()))
                        .or_insert((version, ev.time));
                    if let Some(version) = version {
                        self.claim(key, version, write);
                    }
                }
            }
            "observer-gap" if actor.starts_with("monitor:") => {
                let v = raw();
                let at = |f: &str| v.as_ref().and_then(|v| v.get(f)?.as_u64());
                if let (Some(node), Some(from), Some(to)) = (&ev.node, at("from"), at("to")) {
                    self.gaps
                        .entry(node.to_string())
                        .or_default()
                        .push((from, to.max(from)));
                }
            }
            f if actor.starts_with("monitor:") => {
                let (Some(key), Some(node)) = (&ev.key, &ev.node) else {
                    return;
                };
                let seen = match f {
                    "invalidate" => Seen::Invalidate,
                    "set" => Seen::Set,
                    "expire" | "evict" => Seen::Removed,
                    "sample" => {
                        let v = raw();
                        let from = v.as_ref().and_then(|v| v.get("from")?.as_u64());
                        let held = v.as_ref().and_then(|v| v.get("held").cloned());
                        let (Some(from), Some(held)) = (from, held) else {
                            return;
                        };
                        let from = from.min(ev.time);
                        if ev.time - from > SAMPLE_AGE {
                            return;
                        }
                        let held = match held.get("write").and_then(|w| w.as_str()) {
                            Some(write) => Some(Value {
                                version: held.get("version").and_then(|v| v.as_i64()),
                                write: write.to_string(),
                            }),
                            None if held.is_null() => None,
                            None => return,
                        };
                        if let Some(nk) = self.node_key(key, node) {
                            if let Some(v) = &held {
                                nk.fill_at(from, v.clone());
                            }
                            nk.evidence_at(from, held);
                        }
                        return;
                    }
                    _ => return,
                };
                let time = ev.time;
                self.seq += 1;
                let seq = self.seq;
                if let Some(nk) = self.node_key(key, node) {
                    nk.changes.push((time, seen, seq));
                    let woken: Vec<(u64, usize)> = std::mem::take(&mut nk.waiters);
                    for (index, slot) in woken {
                        self.queue.push(Reverse((time, index, slot)));
                    }
                }
            }
            f => {
                use coherence_store::faults::Family;
                let v = raw();
                let seq = v.as_ref().and_then(|v| v.get("seq")?.as_u64());
                if f == coherence_store::faults::HEAL_ALL {
                    for (_, i) in self.open.drain() {
                        self.disruptions[i].1 = Some(ev.time);
                    }
                } else if matches!(
                    Family::of_start(f),
                    Some(Family::Kill | Family::RedisFailover | Family::ReplicaofNoOne)
                ) {
                    self.disruptions.push((ev.time, None));
                    if let Some(seq) = seq {
                        self.open.insert(seq, self.disruptions.len() - 1);
                    }
                } else if !Family::closed_by(f).is_empty() || f.starts_with("stop-") {
                    if let Some(i) = seq.and_then(|s| self.open.remove(&s)) {
                        self.disruptions[i].1 = Some(ev.time);
                    }
                }
            }
        }
    }

    /// A client operation's completion (`inv` its invoke).
    pub(super) fn completed(&mut self, inv: &Pending, ev: &EventRef<'_>) {
        self.now = ev.time;
        if self.watched.is_none() {
            return;
        }
        let node = ev.node.as_deref().or(inv.node.as_deref());
        let ok = ev.kind == EventType::Ok;
        let value = ev.value.versioned().map(Value::of);
        match inv.op {
            OpKind::Write if ok || ev.kind == EventType::Info => {
                let Some(write) = inv
                    .write
                    .clone()
                    .or(value.as_ref().map(|v| v.write.clone()))
                else {
                    return;
                };
                let acked = value.as_ref().and_then(|v| v.version).filter(|_| ok);
                if let Some(v) = acked {
                    self.claim(&inv.key, v, &write);
                }
                let n = self.watched.as_ref().map_or(0, |w| w.len());
                if n == 0 {
                    return;
                }
                self.writes.insert(
                    inv.index,
                    Write {
                        key: inv.key.clone(),
                        write,
                        acked,
                        info: !ok,
                        done: ev.time,
                        invoke: inv.time,
                        index: inv.index,
                    },
                );
                self.waiting.insert(inv.index, n);
                let wake = inv.time.saturating_add(SAMPLE_AGE).max(ev.time);
                for i in 0..n {
                    self.queue.push(Reverse((wake, inv.index, i)));
                }
            }
            OpKind::Fill if ok => {
                let Some(node) = node else { return };
                let Some(v) = value else { return };
                let (began, done) = (inv.time, ev.time);
                let Some(nk) = self.node_key(&inv.key, node) else {
                    return;
                };
                nk.fill_at(done, v.clone());
                // Not evidence when the key was removed, or set twice, meanwhile.
                let from = nk.changes.partition_point(|c| c.0 <= began);
                let (mut sets, mut removed) = (0, false);
                for c in nk.changes[from..].iter().take_while(|c| c.0 < done) {
                    match c.1 {
                        Seen::Set => sets += 1,
                        _ => removed = true,
                    }
                }
                if !removed && sets <= 1 {
                    nk.evidence_at(done, Some(v));
                }
            }
            OpKind::Read | OpKind::FinalRead if ok => {
                let Some(node) = node else { return };
                if let Some(nk) = self.node_key(&inv.key, node) {
                    nk.evidence_at(inv.time, value);
                }
            }
            _ => {}
        }
    }

    /// Decides what can be decided by now: the anomalies found, as (kind, key, write's
    /// invoke index, summary). `end`: the history is over, nothing more comes.
    pub(super) fn wake(
        &mut self,
        keys: &FxHashMap<String, KeyState>,
        pending: &FxHashMap<i64, Pending>,
        end: bool,
    ) -> Vec<(AnomalyKind, String, u64, String)> {
        let mut out = Vec::new();
        let now = if end { u64::MAX } else { self.now };
        if end {
            // The parked ones too: nothing more will wake them.
            for nk in self.nodes.values_mut() {
                for (index, slot) in nk.waiters.drain(..) {
                    self.queue.push(Reverse((0, index, slot)));
                }
            }
        }
        let mut again = Vec::new();
        while let Some(&Reverse((wake, index, slot))) = self.queue.peek() {
            if wake > now {
                break;
            }
            self.queue.pop();
            let est = self.est.get(&(index, slot)).copied();
            let (step, est) = match self.writes.get(&index) {
                Some(w) => self.decide(w, slot, est, keys, pending, end),
                None => (Step::Drop, None),
            };
            match est {
                Some(e) => self.est.insert((index, slot), e),
                None => self.est.remove(&(index, slot)),
            };
            match step {
                Step::Wait(t) => again.push(Reverse((t.max(wake + 1), index, slot))),
                Step::Park if !end => {
                    let at = self.writes.get(&index).and_then(|w| {
                        let node = self.watched.as_ref()?.get(slot)?;
                        self.nodes.get_mut(&(w.key.clone(), node.clone()))
                    });
                    let evicted = match at {
                        Some(nk) => {
                            nk.waiters.push((index, slot));
                            // A node that takes no change of the key (its invalidations
                            // lost) parks every write of it: the oldest are let go.
                            (nk.waiters.len() > PARKED_PER_NODE_KEY).then(|| nk.waiters.remove(0))
                        }
                        None => Some((index, slot)),
                    };
                    if let Some((index, slot)) = evicted {
                        self.est.remove(&(index, slot));
                        self.forget(index);
                    }
                }
                Step::Park | Step::Drop => {
                    self.est.remove(&(index, slot));
                    self.forget(index);
                }
                Step::Found(kind, summary) => {
                    if let Some(w) = self.writes.get(&index) {
                        out.push((kind, w.key.clone(), w.index, summary));
                    }
                    self.forget(index);
                }
            }
        }
        if !end {
            self.queue.extend(again);
        }
        // Now and then, forget what no candidate can need.
        if !end && self.now > self.pruned_at + 1_000_000_000 {
            self.pruned_at = self.now;
            let cutoff = self.now.saturating_sub(HORIZON + SETTLE);
            self.cutoff = cutoff;
            for nk in self.nodes.values_mut() {
                nk.prune(cutoff);
            }
            // (Parked candidates stay, with their established pairs, until a change
            // wakes them or the end; the gaps and faults stay too, few as they are.)
            self.nodes.retain(|_, nk| {
                !(nk.evidence.is_empty() && nk.changes.is_empty() && nk.waiters.is_empty())
            });
            // Commits and claims come near their write's: kept a horizon longer.
            let kept_from = cutoff.saturating_sub(HORIZON);
            self.commits.retain(|_, c| c.1 >= kept_from);
            for c in self.claims.values_mut() {
                let mut forgot = c.forgot_to;
                c.by_version.retain(|&v, w| {
                    let keep = w.1 >= kept_from;
                    if !keep {
                        forgot = forgot.max(Some(v));
                    }
                    keep
                });
                c.forgot_to = forgot;
            }
        }
        out
    }

    /// One of a write's candidates is done with; the write is forgotten after its last.
    fn forget(&mut self, index: u64) {
        let left = self.waiting.entry(index).or_default();
        *left = left.saturating_sub(1);
        if *left == 0 {
            self.waiting.remove(&index);
            self.writes.remove(&index);
        }
    }

    /// One candidate: `w` on the watched node at `slot`, whose pair is `est` when it
    /// was established already. What to do, and the pair as far as it is judged.
    fn decide(
        &self,
        w: &Write,
        slot: usize,
        est: Option<Est>,
        keys: &FxHashMap<String, KeyState>,
        pending: &FxHashMap<i64, Pending>,
        end: bool,
    ) -> (Step, Option<Est>) {
        let now = if end { u64::MAX } else { self.now };
        let Some(node) = self.watched.as_ref().and_then(|w| w.get(slot)) else {
            return (Step::Drop, None);
        };
        let Some(k) = keys.get(&w.key) else {
            return (Step::Drop, None);
        };
        let mut est = match est {
            Some(e) => e,
            None => match self.establish(w, node, k, pending, end) {
                Ok(e) => e,
                Err(step) => return (step, None),
            },
        };
        let Some(nk) = self.nodes.get(&(w.key.clone(), node.clone())) else {
            return (Step::Drop, None);
        };
        let version = est.version;
        // What became of the entry: the first change after the evidence that decides.
        let from = nk.changes.partition_point(|c| c.2 <= est.scanned);
        for &(t, seen, seq) in &nk.changes[from..] {
            if self.final_time.is_some_and(|f| t > f) {
                return self.missing(w, node, est, end);
            }
            if now < t.saturating_add(SETTLE) {
                return (Step::Wait(t + SETTLE), Some(est));
            }
            match seen {
                Seen::Removed => return (Step::Drop, None),
                Seen::Set => {
                    let mut window = nk
                        .fills
                        .iter()
                        .filter(|f| f.0 >= t && f.0 <= t + SET_TO_FILL)
                        .map(|f| k.version(&f.1));
                    // An overwrite (or a fill whose version is not known: say nothing).
                    if window.any(|v| v.is_none_or(|v| v >= version)) {
                        return (Step::Drop, None);
                    }
                    est.scanned = seq;
                }
                Seen::Invalidate => {
                    let (Some(bound), false) = (self.bound, self.blind(node, est.t_e, t)) else {
                        return (Step::Drop, None);
                    };
                    let lag = t.saturating_sub(est.commit);
                    if lag <= bound {
                        return (Step::Drop, None);
                    }
                    return (
                        Step::Found(
                            AnomalyKind::SlowInvalidation,
                            format!(
                                "key {} version {version} was committed while {node} held version {}; {node}'s observer saw it invalidated {:.3} ms after the commit, beyond the bound of {:.3} ms",
                                coherence_store::quote(&w.key),
                                est.held,
                                lag as f64 / 1e6,
                                bound as f64 / 1e6
                            ),
                        ),
                        None,
                    );
                }
            }
        }
        if self.final_time.is_some() {
            return self.missing(w, node, est, end);
        }
        if end {
            return (Step::Drop, None); // pending: no final phase
        }
        (Step::Park, Some(est))
    }

    /// Whether `node`'s observer was blind, or a kill or failover could have changed
    /// what it holds unseen, between `from` and `to`.
    fn blind(&self, node: &str, from: u64, to: u64) -> bool {
        let gap = self
            .gaps
            .get(node)
            .is_some_and(|g| g.iter().any(|g| g.0 <= to && g.1 >= from));
        let disrupted = self
            .disruptions
            .iter()
            .any(|d| d.0 <= to && d.1.is_none_or(|e| e >= from));
        gap || disrupted
    }

    /// A pair with no change that decides by the final phase: missing, decided at the end
    /// (an observer may log a gap up to then).
    fn missing(&self, w: &Write, node: &str, est: Est, end: bool) -> (Step, Option<Est>) {
        if !end {
            return (Step::Park, Some(est));
        }
        let Some(f) = self.final_time else {
            return (Step::Drop, None);
        };
        if self.blind(node, est.t_e, f) {
            return (Step::Drop, None);
        }
        (
            Step::Found(
                AnomalyKind::MissingInvalidation,
                format!(
                    "key {} version {} was committed while {node} held version {}; by the final phase {node}'s observer saw it neither invalidated nor overwritten",
                    coherence_store::quote(&w.key),
                    est.version,
                    est.held
                ),
            ),
            None,
        )
    }

    /// The pair of `w` on `node`, once every evidence of what the node held when `w`
    /// began is in: `Err` with what to do when it is not (yet), or there is none.
    fn establish(
        &self,
        w: &Write,
        node: &str,
        k: &KeyState,
        pending: &FxHashMap<i64, Pending>,
        end: bool,
    ) -> Result<Est, Step> {
        let now = if end { u64::MAX } else { self.now };
        let retry = |at: u64| {
            if end || at > w.invoke.saturating_add(HORIZON) {
                Step::Drop
            } else {
                Step::Wait(at)
            }
        };
        let later = self
            .now
            .saturating_add(RETRY.max(self.now.saturating_sub(w.invoke) / 2));
        if w.invoke < self.cutoff {
            return Err(Step::Drop); // what it needs may be forgotten
        }
        // Its commit time, from its first commit event, and its version: the one its
        // `ok` states, else its commit's.
        let (first, commit) = match self.commits.get(&(w.key.clone(), w.write.clone())) {
            Some(&c) => c,
            // At the end, an acknowledged write no commit showed is committed at its
            // acknowledgement, unless the database lost it.
            None if end => match w.acked {
                Some(v) if !k.lost(v, &w.write) => (Some(v), w.done),
                _ => return Err(Step::Drop),
            },
            None => return Err(retry(later)),
        };
        let version = match (w.acked, w.info) {
            (Some(v), _) => v,
            (None, true) => first.ok_or(Step::Drop)?,
            (None, false) => match k.version(&Value {
                version: None,
                write: w.write.clone(),
            }) {
                Some(v) => v,
                None => return Err(retry(later)),
            },
        };
        if self.forked.contains(&(w.key.clone(), version))
            || self
                .claims
                .get(&w.key)
                .and_then(|c| c.forgot_to)
                .is_some_and(|f| version <= f)
        {
            return Err(Step::Drop);
        }
        // Every holding evidence before the write began is in.
        if !end {
            if now < w.invoke.saturating_add(SAMPLE_AGE) {
                return Err(retry(w.invoke + SAMPLE_AGE));
            }
            let in_flight = pending.values().any(|p| {
                p.key == w.key
                    && matches!(p.op, OpKind::Read | OpKind::FinalRead)
                    && p.time < w.invoke
            });
            if in_flight {
                return Err(retry(later));
            }
        }
        let nk = self
            .nodes
            .get(&(w.key.clone(), node.to_string()))
            .ok_or(Step::Drop)?;
        // The last holding evidence before the write began (the highest version among
        // those of its time).
        let pos = nk.evidence.partition_point(|e| e.0 < w.invoke);
        let t_e = pos
            .checked_sub(1)
            .map(|p| nk.evidence[p].0)
            .ok_or(Step::Drop)?;
        let mut held: Option<Option<i64>> = None;
        for e in nk.evidence[..pos].iter().rev().take_while(|e| e.0 == t_e) {
            if e.2 {
                return Err(Step::Drop);
            }
            let v = match &e.1 {
                None => None,
                // Not known (yet): say nothing.
                Some(v) => Some(k.version(v).ok_or(Step::Drop)?),
            };
            held = Some(held.map_or(v, |h| h.max(v)));
        }
        // A miss: it held nothing.
        let held = held.flatten().ok_or(Step::Drop)?;
        if held >= version {
            return Err(Step::Drop);
        }
        // No change between the evidence and the write's beginning.
        let after = nk.changes.partition_point(|c| c.0 <= t_e);
        if nk.changes[after..].first().is_some_and(|c| c.0 < w.invoke) {
            return Err(Step::Drop);
        }
        Ok(Est {
            t_e,
            held,
            version,
            commit,
            scanned: after.checked_sub(1).map_or(0, |i| nk.changes[i].2),
        })
    }
}
