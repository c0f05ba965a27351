//! The online checker: anomalies as the history is written, not after.
//!
//! [`Live`] takes a history's events one at a time, in file order (from `coherence run`'s
//! recorder, or from a file another process is still writing: `check --follow`), and
//! flags an anomaly as soon as the events so far make it certain, never earlier. Its
//! state is per key and per (process, key), so each event costs a few map lookups. Its
//! memory is bounded by the keys, the live processes, the operations in flight and what
//! the last [`MEMORY`] of history time wrote: older per-write facts (a write id's
//! version, an acknowledged write's place in a key's order, a read still waiting for a
//! commit) are forgotten, so a run of any length holds as much as two minutes of it.
//! What would need a forgotten fact is not judged live (it is said nothing of, never
//! guessed): a read, without a version, of a value written before then, say, is left
//! to the offline check.
//!
//! What it decides, by the definitions of `docs/history.md` (*Anomalies*):
//!
//! - `stale-read`, at the completion of the read, or once the `commit` events that tell
//!   the versions it needs came: an ok `read` or `db-read` R of version v, when an ok
//!   write of a version above v completed more than Δ before R was invoked. Every such
//!   write completed before R did, so its `ok` is already in the history when R's is;
//!   with values without versions, R waits until its own write's version and that of
//!   every write acknowledged more than Δ before it are known (at the end of the
//!   history, what no commit showed has no version). So every read is judged, exactly
//!   as the offline check judges it.
//! - `monotonic-read`: the process read the key at a higher version earlier.
//! - `read-your-writes`: the process wrote the key at a higher version earlier (ok).
//! - `slow-invalidation`, with an invalidation bound ([`Live::invalidation_bound`]): a
//!   committed version on a watched node that held an older one, invalidated there
//!   later than the bound; decided a few seconds after the invalidation, once nothing
//!   still to come can change it (`invalidation` module).
//! - `non-convergence`, at the end of the history: a `final-read` after the
//!   `final-phase` that returned a value other than the key's last ok `db-final-read`
//!   (another could come until the end).
//! - `phantom-read`, at the end of the history: a read that looked like one when it
//!   completed, and is one by every write of the history (`phantoms` module).
//! - `missing-invalidation`, at the end of the history: the same pairs as
//!   `slow-invalidation`, with no change that decides by the `final-phase` (a cache
//!   observer logs its gap only when it is back, possibly after the final phase).
//!
//! Values without versions take the version their write's `commit` event states; a
//! value whose write no `commit` with a version has shown yet is not judged (live says
//! nothing rather than guess). Lost writes and forks need the whole history (the final
//! database state, every write's version) and are left to the offline check.
//! Every live detection is also an offline finding of the same history (same kind,
//! same operation): `analysis/tests/live.rs` holds it to that.

mod invalidation;
mod phantoms;

use crate::detect::AnomalyKind;
use coherence_store::reader::{EventRef, ProcessRef, ValueRef};
use coherence_store::{EventType, OpKind, UNVERSIONED};
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::collections::BTreeMap;

/// How much history time the online checker remembers per-write facts for (ns): a
/// read of a value written longer ago than this, whose judgment needs what that write
/// did, is left to the offline check. Longer than any of its waits (the invalidation
/// judge's horizon, a commit's delay behind its acknowledgement).
pub const MEMORY: u64 = 120_000_000_000;

/// How often (ns of history time) the online checker forgets what is older than
/// [`MEMORY`].
const PRUNE_EVERY: u64 = 1_000_000_000;

/// The anomalies the online checker decides.
pub const LIVE_KINDS: [AnomalyKind; 7] = [
    AnomalyKind::StaleRead,
    AnomalyKind::PhantomRead,
    AnomalyKind::MonotonicRead,
    AnomalyKind::ReadYourWrites,
    AnomalyKind::NonConvergence,
    AnomalyKind::MissingInvalidation,
    AnomalyKind::SlowInvalidation,
];

/// The anomalies the online checker can decide before the end of the history (what
/// `run --fail-fast` can stop at); the others of [`LIVE_KINDS`] only at its end.
pub const EARLY_KINDS: [AnomalyKind; 4] = [
    AnomalyKind::StaleRead,
    AnomalyKind::MonotonicRead,
    AnomalyKind::ReadYourWrites,
    AnomalyKind::SlowInvalidation,
];

/// One anomaly, flagged when the history made it certain.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    /// Which anomaly.
    pub kind: AnomalyKind,
    /// The key.
    pub key: String,
    /// The index of the offending operation's invoke (the offline finding's `index`).
    pub index: u64,
    /// The index of the event that made it certain (the read's completion).
    pub certain_index: u64,
    /// When that event arrived (ns on the caller's clock).
    pub arrived_ns: u64,
    /// When it was flagged (same clock).
    pub detected_ns: u64,
    /// One line saying what was seen.
    pub summary: String,
}

impl std::fmt::Display for Detection {
    /// The line `run` and `check --follow` print: `live: stale-read: ...`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "live: {}: {}", self.kind.name(), self.summary)
    }
}

/// What the online checker found: `results.json`'s `live` section.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveSummary {
    /// Detections per kind.
    pub counts: BTreeMap<&'static str, u64>,
    /// Time from the event that made each detection certain to the detection, in ns.
    pub mttd_ns: Mttd,
    /// Events taken.
    pub events: u64,
}

/// Percentiles of the time to detection.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Mttd {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

/// A value as live knows it: its version (if known) and its write id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Value {
    version: Option<i64>,
    write: String,
}

impl Value {
    fn of(v: &coherence_store::reader::VersionedRef<'_>) -> Value {
        Value {
            version: (v.version != UNVERSIONED).then_some(v.version),
            write: v.write.to_string(),
        }
    }
}

/// An operation in flight.
#[derive(Debug)]
struct Pending {
    index: u64,
    time: u64,
    op: OpKind,
    key: String,
    /// A write's id.
    write: Option<String>,
    /// The node its invoke names.
    node: Option<String>,
    /// Invoked after the final phase began.
    after_final: bool,
}

/// A key's state.
#[derive(Debug, Default)]
struct KeyState {
    /// The ok writes that matter for staleness: (version, completion), both increasing
    /// (a write of a lower version completed later is dominated by one above it that
    /// completed earlier, and dropped).
    frontier: Vec<(i64, u64)>,
    /// Write ids whose version a `commit` event stated: (version, the commit's time).
    versions: FxHashMap<String, (i64, u64)>,
    /// Ok writes waiting for their version: write id -> completion time.
    awaiting: FxHashMap<String, u64>,
    /// The database's final value (the last ok `db-final-read` so far).
    db_final: Option<Value>,
    /// The last ok `db-final-read`'s version log, when it had one (`Some(None)`: a
    /// final state without a log).
    db_log: Option<Option<Vec<(i64, String)>>>,
    /// Final reads after the final phase, judged at the end against the database's
    /// final value: (invoke index, completion index, node, value).
    final_reads: Vec<(u64, u64, String, Value)>,
    /// Ok reads not judged stale or fresh yet: their own version, or the version of a
    /// write acknowledged more than Δ before they began, waits for its `commit`.
    deferred: Vec<Deferred>,
}

/// A read whose staleness waits for a commit event.
#[derive(Debug)]
struct Deferred {
    /// Its invoke's index and time.
    index: u64,
    time: u64,
    /// Its completion's index.
    at: u64,
    node: String,
    value: Value,
}

/// The most reads one key keeps waiting for commits; beyond, the oldest are dropped
/// unjudged (live says nothing of them; the offline check judges every read).
const DEFERRED_PER_KEY: usize = 10_000;

impl KeyState {
    fn version(&self, v: &Value) -> Option<i64> {
        match v.version {
            Some(n) => Some(n),
            None if v.write == "init" => Some(0),
            None => self.versions.get(&v.write).map(|&(n, _)| n),
        }
    }

    /// Forgets the per-write facts older than `cutoff`, each in a way that can only
    /// make a judgment say less, never more:
    /// - the frontier's entries that completed before `cutoff` but the last of them: a
    ///   read of an older version then finds that one, which completed no earlier than
    ///   the one it replaces, so it is stale only if it was;
    /// - write ids' versions: a read of one waits for a commit that does not come,
    ///   and is forgotten in turn;
    /// - writes waiting for their version (lost ones: no commit showed them): no
    ///   longer the newer write of any read;
    /// - reads waiting for a commit: never judged.
    fn prune(&mut self, cutoff: u64) {
        let old = self.frontier.partition_point(|e| e.1 < cutoff);
        if old > 1 {
            self.frontier.drain(..old - 1);
        }
        self.versions.retain(|_, v| v.1 >= cutoff);
        self.awaiting.retain(|_, done| *done >= cutoff);
        self.deferred.retain(|d| d.time >= cutoff);
    }

    /// Adds an ok write of `version` completed at `t` to the frontier.
    fn acked(&mut self, version: i64, t: u64) {
        let f = &mut self.frontier;
        // Dominated: a write of a version at least as high completed no later.
        let at = f.partition_point(|e| e.0 < version);
        if f[at..].first().is_some_and(|e| e.1 <= t) {
            return;
        }
        // It dominates those of lower versions that completed no earlier.
        let mut start = at;
        while start > 0 && f[start - 1].1 >= t {
            start -= 1;
        }
        let end = if f.get(at).is_some_and(|e| e.0 == version) {
            at + 1
        } else {
            at
        };
        f.splice(start..end, [(version, t)]);
    }

    /// The earliest completion of an ok write of a version above `v`.
    fn newer_acked(&self, v: i64) -> Option<(i64, u64)> {
        let at = self.frontier.partition_point(|e| e.0 <= v);
        self.frontier.get(at).copied()
    }

    /// True when the database's final state lost the acknowledged write `write` of
    /// `version`: its log lacks it, or without a log, it ends below that version (no
    /// final state yet: not lost).
    fn lost(&self, version: i64, write: &str) -> bool {
        let (Some(fin), Some(log)) = (&self.db_final, &self.db_log) else {
            return false;
        };
        match log {
            Some(log) => !log.iter().any(|(v, w)| *v == version && w == write),
            None => self.version(fin).is_some_and(|f| version > f),
        }
    }

    /// Whether a read of `v` that began at `began` can be judged now: its version is
    /// known, and so is that of every write acknowledged more than `bound` before it
    /// began (a write waiting for its commit may be the newer one).
    fn decidable(&self, v: &Value, began: u64, bound: u64) -> Option<i64> {
        let version = self.version(v)?;
        let blocked = self
            .awaiting
            .values()
            .any(|&done| done.saturating_add(bound) < began);
        (!blocked).then_some(version)
    }

    /// The stale-read finding of a read of `version` on `node` that began at `began`
    /// (invoke `index`, completion `at`), if it is stale.
    fn stale(
        &self,
        key: &str,
        version: i64,
        r: (u64, u64, u64),
        node: &str,
        bound: u64,
    ) -> Option<(AnomalyKind, String, u64, String)> {
        let (index, began, at) = r;
        let (newer, done) = self.newer_acked(version)?;
        (done.saturating_add(bound) < began).then(|| {
            (
                AnomalyKind::StaleRead,
                key.to_string(),
                index,
                format!(
                    "read of key {} on {node} (line {}) returned version {version}, but version {newer} had been acknowledged {:.3} ms before it began",
                    coherence_store::quote(key),
                    at + 1,
                    (began - done) as f64 / 1e6
                ),
            )
        })
    }

    /// Judges the deferred reads that can be judged now.
    fn judge_deferred(
        &mut self,
        key: &str,
        bound: u64,
        found: &mut Vec<(AnomalyKind, String, u64, String)>,
    ) {
        let waiting = std::mem::take(&mut self.deferred);
        for d in waiting {
            match self.decidable(&d.value, d.time, bound) {
                Some(version) => {
                    found.extend(self.stale(key, version, (d.index, d.time, d.at), &d.node, bound))
                }
                None => self.deferred.push(d),
            }
        }
    }

    /// Judges every deferred read by what is known: at the end of the history, a write
    /// no commit showed has no version (a lost write, never the newer one), and a read
    /// of one is not a read of a version.
    fn judge_all_deferred(
        &mut self,
        key: &str,
        bound: u64,
        found: &mut Vec<(AnomalyKind, String, u64, String)>,
    ) {
        for d in std::mem::take(&mut self.deferred) {
            if let Some(version) = self.version(&d.value) {
                found.extend(self.stale(key, version, (d.index, d.time, d.at), &d.node, bound));
            }
        }
    }
}

/// One process's session on one key: the highest version it read, and wrote (ok).
type Session = (Option<i64>, Option<i64>);

/// The online checker.
#[derive(Debug)]
pub struct Live {
    bound: u64,
    keys: FxHashMap<String, KeyState>,
    pending: FxHashMap<i64, Pending>,
    /// Per process, per key: the highest version read, and written (ok). A process
    /// that ended (an `info`: the next operation is another process's) is forgotten.
    sessions: FxHashMap<i64, FxHashMap<String, Session>>,
    /// The history time of the last pruning (`MEMORY`).
    pruned_at: u64,
    final_phase: bool,
    counts: BTreeMap<&'static str, u64>,
    mttd: hdrhistogram::Histogram<u64>,
    events: u64,
    /// The last event's index.
    last_index: u64,
    /// The kinds that count (the others are not flagged).
    kinds: Vec<AnomalyKind>,
    /// Slow and missing invalidations.
    invalidations: invalidation::Judge,
    /// Phantom reads.
    phantoms: phantoms::Phantoms,
}

impl Live {
    /// A checker with staleness bound `bound` (ns).
    pub fn new(bound: u64) -> Live {
        Live {
            bound,
            keys: FxHashMap::default(),
            pending: FxHashMap::default(),
            sessions: FxHashMap::default(),
            pruned_at: 0,
            final_phase: false,
            counts: BTreeMap::new(),
            mttd: hdrhistogram::Histogram::new(3).expect("3 significant figures"),
            events: 0,
            last_index: 0,
            kinds: LIVE_KINDS.to_vec(),
            invalidations: invalidation::Judge::new(None),
            phantoms: phantoms::Phantoms::default(),
        }
    }

    /// Judges slow invalidations too, against the invalidation bound `bound` (ns;
    /// `None`: no bound, none is slow).
    pub fn invalidation_bound(mut self, bound: Option<u64>) -> Live {
        self.invalidations = invalidation::Judge::new(bound);
        self
    }

    /// Flags only the kinds among `checks` (the checks that count; `None`: all).
    pub fn counting(mut self, checks: Option<&[AnomalyKind]>) -> Live {
        if let Some(c) = checks {
            self.kinds.retain(|k| c.contains(k));
        }
        self
    }

    /// Takes the next event, which arrived at `arrived` (ns on the clock `now` reads);
    /// the anomalies it made certain.
    pub fn feed(
        &mut self,
        ev: &EventRef<'_>,
        arrived: u64,
        now: &dyn Fn() -> u64,
    ) -> Vec<Detection> {
        self.events += 1;
        self.last_index = ev.index;
        let mut found: Vec<(AnomalyKind, String, u64, String)> = Vec::new();
        match &ev.process {
            ProcessRef::Actor(actor) => {
                self.invalidations.actor(actor, ev);
                if ev.op == OpKind::FinalPhase {
                    self.final_phase = true;
                }
                if ev.f == "commit" {
                    self.commit(ev, &mut found);
                }
            }
            ProcessRef::Client(p) => {
                if ev.kind == EventType::Invoke {
                    let write = match &ev.value {
                        ValueRef::WriteRequest(id) => Some(id.to_string()),
                        _ => None,
                    };
                    if let Some(key) = &ev.key {
                        self.pending.insert(
                            *p,
                            Pending {
                                index: ev.index,
                                time: ev.time,
                                op: ev.op,
                                key: key.to_string(),
                                write,
                                node: ev.node.as_deref().map(str::to_string),
                                after_final: self.final_phase,
                            },
                        );
                    }
                } else if let Some(inv) = self.pending.remove(p) {
                    self.invalidations.completed(&inv, ev);
                    self.phantoms.completed(&inv, ev);
                    if ev.kind == EventType::Ok {
                        self.completed(*p, inv, ev, &mut found);
                    } else if ev.kind == EventType::Info {
                        self.sessions.remove(p);
                    }
                }
            }
        }
        if ev.time > self.pruned_at.saturating_add(PRUNE_EVERY) {
            self.pruned_at = ev.time;
            self.prune(ev.time.saturating_sub(MEMORY));
        }
        self.slow(false, &mut found);
        self.emit(found, ev.index, arrived, now)
    }

    /// Forgets what is older than `cutoff` (history time), as [`MEMORY`] says.
    fn prune(&mut self, cutoff: u64) {
        for k in self.keys.values_mut() {
            k.prune(cutoff);
        }
        self.phantoms.prune(cutoff);
    }

    /// The end of the history (no more events come): what could be judged only then,
    /// the reads still waiting for a commit.
    pub fn finish(&mut self, now: &dyn Fn() -> u64) -> Vec<Detection> {
        let (last_index, arrived) = (self.last_index, now());
        let mut found = Vec::new();
        self.slow(true, &mut found);
        found.extend(self.phantoms.finish(&self.pending));
        let bound = self.bound;
        for (key, k) in self.keys.iter_mut() {
            if !k.deferred.is_empty() {
                k.judge_all_deferred(key, bound, &mut found);
            }
            if let Some(db) = k.db_final.clone() {
                for (index, at, node, v) in std::mem::take(&mut k.final_reads) {
                    if let Some(d) = diverged(k, &v, &db, key, &node, at) {
                        found.push((AnomalyKind::NonConvergence, key.clone(), index, d));
                    }
                }
            }
        }
        self.emit(found, last_index, arrived, now)
    }

    /// The slow and missing invalidations decided by now (`end`: the history is over).
    fn slow(&mut self, end: bool, found: &mut Vec<(AnomalyKind, String, u64, String)>) {
        found.extend(self.invalidations.wake(&self.keys, &self.pending, end));
    }

    /// Counts and times what was found, made certain by the event at `certain_index`
    /// that arrived at `arrived`.
    fn emit(
        &mut self,
        mut found: Vec<(AnomalyKind, String, u64, String)>,
        certain_index: u64,
        arrived: u64,
        now: &dyn Fn() -> u64,
    ) -> Vec<Detection> {
        found.retain(|f| self.kinds.contains(&f.0));
        if found.is_empty() {
            return Vec::new();
        }
        let detected = now();
        found
            .into_iter()
            .map(|(kind, key, index, summary)| {
                *self.counts.entry(kind.name()).or_default() += 1;
                let _ = self.mttd.record(detected.saturating_sub(arrived));
                Detection {
                    kind,
                    key,
                    index,
                    certain_index,
                    arrived_ns: arrived,
                    detected_ns: detected,
                    summary,
                }
            })
            .collect()
    }

    /// A commit event of the commit observer: a write id's stated version; the
    /// deferred reads it lets be judged.
    fn commit(&mut self, ev: &EventRef<'_>, found: &mut Vec<(AnomalyKind, String, u64, String)>) {
        let (Some(key), ValueRef::Raw(raw)) = (&ev.key, &ev.value) else {
            return;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(raw.get()) else {
            return;
        };
        let (Some(write), Some(version)) = (
            v.get("write").and_then(|w| w.as_str()),
            v.get("version").and_then(|n| n.as_i64()),
        ) else {
            return;
        };
        let k = self.keys.entry(key.to_string()).or_default();
        // The first commit of a write id states its version.
        if k.versions.contains_key(write) {
            return;
        }
        k.versions.insert(write.to_string(), (version, ev.time));
        if let Some(t) = k.awaiting.remove(write) {
            k.acked(version, t);
        }
        if !k.deferred.is_empty() {
            k.judge_deferred(key, self.bound, found);
        }
    }

    fn completed(
        &mut self,
        process: i64,
        inv: Pending,
        ev: &EventRef<'_>,
        found: &mut Vec<(AnomalyKind, String, u64, String)>,
    ) {
        let node = ev.node.as_deref().unwrap_or("?");
        let key = inv.key;
        let k = self.keys.entry(key.clone()).or_default();
        match inv.op {
            OpKind::Write => {
                let Some(v) = ev.value.versioned().map(Value::of) else {
                    return;
                };
                let write = inv.write.unwrap_or(v.write.clone());
                let value = Value {
                    version: v.version,
                    write,
                };
                match k.version(&value) {
                    Some(n) => {
                        k.acked(n, ev.time);
                        let s = self
                            .sessions
                            .entry(process)
                            .or_default()
                            .entry(key)
                            .or_default();
                        s.1 = s.1.max(Some(n));
                    }
                    None => {
                        k.awaiting.insert(value.write, ev.time);
                    }
                }
            }
            OpKind::Read | OpKind::DbRead => {
                let Some(v) = ev.value.versioned().map(Value::of) else {
                    return; // a miss is never stale
                };
                let version = k.version(&v);
                match k.decidable(&v, inv.time, self.bound) {
                    Some(version) => found.extend(k.stale(
                        &key,
                        version,
                        (inv.index, inv.time, ev.index),
                        node,
                        self.bound,
                    )),
                    None => {
                        // Judged when the commit it waits for comes (or at the end).
                        if k.deferred.len() >= DEFERRED_PER_KEY {
                            k.deferred.remove(0);
                        }
                        k.deferred.push(Deferred {
                            index: inv.index,
                            time: inv.time,
                            at: ev.index,
                            node: node.to_string(),
                            value: v,
                        });
                    }
                }
                // The session checks judge reads in the process's order, so only at
                // their completion: a read whose version is not known yet is not.
                let Some(version) = version else { return };
                let s = self
                    .sessions
                    .entry(process)
                    .or_default()
                    .entry(key.clone())
                    .or_default();
                if let Some(read) = s.0.filter(|r| *r > version) {
                    found.push((
                        AnomalyKind::MonotonicRead,
                        key.clone(),
                        inv.index,
                        format!(
                            "process {process} read key {} at version {version} on {node} (line {}) after reading version {read}",
                            coherence_store::quote(&key),
                            ev.index + 1
                        ),
                    ));
                }
                if let Some(wrote) = s.1.filter(|w| *w > version) {
                    found.push((
                        AnomalyKind::ReadYourWrites,
                        key.clone(),
                        inv.index,
                        format!(
                            "process {process} read key {} at version {version} on {node} (line {}) after writing version {wrote}",
                            coherence_store::quote(&key),
                            ev.index + 1
                        ),
                    ));
                }
                s.0 = s.0.max(Some(version));
            }
            OpKind::FinalRead if inv.after_final => {
                let Some(v) = ev.value.versioned().map(Value::of) else {
                    return; // a miss has converged
                };
                // Judged at the end: the database's final value is its last ok
                // db-final-read, and another may still come.
                k.final_reads
                    .push((inv.index, ev.index, node.to_string(), v));
            }
            OpKind::DbFinalRead => {
                if let Some(db) = ev.value.versioned().map(Value::of) {
                    k.db_final = Some(db);
                }
                if let ValueRef::Final { log, .. } = &ev.value {
                    k.db_log = Some(log.clone());
                }
            }
            _ => {}
        }
    }

    /// What it found so far.
    pub fn summary(&self) -> LiveSummary {
        let q = |p: f64| {
            if self.mttd.is_empty() {
                0
            } else {
                self.mttd.value_at_quantile(p)
            }
        };
        LiveSummary {
            counts: self.counts.clone(),
            mttd_ns: Mttd {
                p50: q(0.5),
                p99: q(0.99),
                max: self.mttd.max(),
            },
            events: self.events,
        }
    }

    /// How many per-write facts it holds now (versions, acknowledged writes, reads
    /// waiting, write ids' states, invalidation candidates and their commits): what
    /// [`MEMORY`] keeps bounded however long the history.
    pub fn remembered(&self) -> usize {
        let keys: usize = self
            .keys
            .values()
            .map(|k| k.frontier.len() + k.versions.len() + k.awaiting.len() + k.deferred.len())
            .sum();
        let sessions: usize = self.sessions.values().map(|s| s.len()).sum();
        keys + sessions + self.phantoms.remembered() + self.invalidations.remembered()
    }

    /// Detections so far, in all.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// Whether a final read of `v` differs from the database's final value `db`, in words;
/// `None` when it agrees or cannot be told (a version not known yet).
fn diverged(
    k: &KeyState,
    v: &Value,
    db: &Value,
    key: &str,
    node: &str,
    line_index: u64,
) -> Option<String> {
    let (a, b) = (k.version(v), k.version(db));
    let differs = match (v.version, db.version) {
        (Some(x), Some(y)) => x != y || v.write != db.write,
        // Values without versions: a write id names one version.
        _ => {
            if a.is_none() || b.is_none() {
                return None;
            }
            v.write != db.write
        }
    };
    differs.then(|| {
        format!(
            "after the final phase, {node} held key {} at version {} (line {}), but the database's final version is {}",
            coherence_store::quote(key),
            a.map_or("?".into(), |n| n.to_string()),
            line_index + 1,
            b.map_or("?".into(), |n| n.to_string()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::KeyState;

    #[test]
    fn the_frontier_keeps_the_earliest_ack_above_each_version() {
        let mut k = KeyState::default();
        k.acked(2, 20);
        k.acked(1, 30); // dominated by version 2 at 20
        assert_eq!(k.frontier, [(2, 20)]);
        k.acked(3, 10); // dominates version 2
        assert_eq!(k.frontier, [(3, 10)]);
        k.acked(1, 5);
        k.acked(5, 40);
        assert_eq!(k.frontier, [(1, 5), (3, 10), (5, 40)]);
        assert_eq!(k.newer_acked(0), Some((1, 5)));
        assert_eq!(k.newer_acked(1), Some((3, 10)));
        assert_eq!(k.newer_acked(4), Some((5, 40)));
        assert_eq!(k.newer_acked(5), None);
        k.acked(3, 8);
        assert_eq!(k.frontier, [(1, 5), (3, 8), (5, 40)]);
    }
}
