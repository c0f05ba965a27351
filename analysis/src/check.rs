//! The detectors: one pass per key (keys are checked in parallel), one detector per
//! anomaly of the spec, each leaving a compact [`Finding`] with the operations that
//! prove it and, for stale reads and non-converged entries, the likely [`CauseKind`].
//!
//! Every definition here follows `shared/spec/history.md` word for word; the property
//! test in `tests/` holds this code against a brute-force reading of the same text.

use crate::causes::{cache_cause, db_cause, Fills, Newer};
pub use crate::causes::{Cause, CauseKind};
use crate::faults::{FaultRecord, NemesisLog};
use crate::model::{History, Outcome, Val, INIT, NONE};
use crate::topology::Topology;
use coherence_store::OpKind;
use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;
use std::cell::OnceCell;

/// The anomalies of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnomalyKind {
    /// A read returned a version older than one acknowledged more than Δ before it began.
    StaleRead,
    /// A read returned a value no write produced.
    PhantomRead,
    /// Two writes tied to the same key and version.
    VersionFork,
    /// An acknowledged write missing from the database's final state.
    LostWrite,
    /// A process read an older version after a newer one.
    MonotonicRead,
    /// A process read a version older than its own acknowledged write.
    ReadYourWrites,
    /// After the final phase a cache node disagreed with the database.
    NonConvergence,
}

impl AnomalyKind {
    /// All of them, in the order of the spec.
    pub const ALL: [AnomalyKind; 7] = [
        AnomalyKind::StaleRead,
        AnomalyKind::PhantomRead,
        AnomalyKind::VersionFork,
        AnomalyKind::LostWrite,
        AnomalyKind::MonotonicRead,
        AnomalyKind::ReadYourWrites,
        AnomalyKind::NonConvergence,
    ];

    /// The spec's name.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::StaleRead => "stale-read",
            AnomalyKind::PhantomRead => "phantom-read",
            AnomalyKind::VersionFork => "version-fork",
            AnomalyKind::LostWrite => "lost-write",
            AnomalyKind::MonotonicRead => "monotonic-read",
            AnomalyKind::ReadYourWrites => "read-your-writes",
            AnomalyKind::NonConvergence => "non-convergence",
        }
    }

    /// The kind a spec name names (`"stale-read"`, ...).
    pub fn parse(name: &str) -> Option<AnomalyKind> {
        AnomalyKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::str::FromStr for AnomalyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<AnomalyKind, String> {
        AnomalyKind::parse(s.trim()).ok_or_else(|| {
            let names: Vec<&str> = AnomalyKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown check {s:?}: the checks are {}", names.join(", "))
        })
    }
}

/// Why a read is a phantom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhantomWhy {
    /// No write of the key has that id (nor is it `"init"` at version 0).
    NoSuchWrite,
    /// The write failed.
    FailedWrite,
    /// The write was acknowledged with another version.
    WrongVersion,
}

/// One anomaly, compactly: what the detectors found before it is explained.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Which anomaly.
    pub kind: AnomalyKind,
    /// The history index of the offending op's invoke (for ordering).
    pub index: u64,
    /// Interned key.
    pub key: u32,
    /// The offending op: the read (stale, phantom, monotonic, read-your-writes), the
    /// final read (non-convergence), the ok write (lost-write), the first write (fork).
    pub op: u32,
    /// The other op of the proof: the newer write (stale), the earlier read (monotonic),
    /// the process's own write (read-your-writes), the write whose id was read
    /// (phantom), the final database read (lost-write, non-convergence), the second
    /// write (fork); [`NONE`] when there is none.
    pub other: u32,
    /// A third op: the read that tied an info write to a version (fork), the earliest
    /// acknowledged newer write (non-convergence), or [`NONE`].
    pub extra: u32,
    /// The version at stake (fork: the forked version; others: the version read).
    pub version: i64,
    /// Staleness in ns (stale reads).
    pub staleness: u64,
    /// Phantom reads: why.
    pub phantom: Option<PhantomWhy>,
    /// Stale reads and non-convergence: the likely cause.
    pub cause: Option<Cause>,
}

impl Finding {
    fn new(h: &History, kind: AnomalyKind, key: u32, op: u32) -> Finding {
        Finding {
            kind,
            index: h.ops.get(op as usize).map_or(u64::MAX, |o| o.invoke_index),
            key,
            op,
            other: NONE,
            extra: NONE,
            version: 0,
            staleness: 0,
            phantom: None,
            cause: None,
        }
    }
}

/// A node promoted by a failover: when, and which.
#[derive(Debug, Clone, Copy)]
pub struct Promotion {
    /// Index of the event that says so.
    pub index: u64,
    /// Its time, ns.
    pub time: u64,
    /// The promoted node (interned), or [`NONE`] when it is not a node of the history.
    pub node: u32,
}

/// What every key's check needs to know of the whole history.
pub struct Context<'h> {
    /// The history.
    pub history: &'h History,
    /// Δ in ns.
    pub bound: u64,
    /// Failovers: who was promoted, when.
    pub promotions: Vec<Promotion>,
    /// What the nemesis did.
    pub nemesis: NemesisLog,
    /// Who replicates whom, over time.
    pub topology: Topology,
    /// True when the history records any invalidation (ok or not): without any, a
    /// missing invalidation proves nothing.
    pub records_invalidations: bool,
}

impl<'h> Context<'h> {
    /// Gathers failovers and fault intervals from the nemesis events.
    pub fn new(history: &'h History, bound: u64) -> Context<'h> {
        let nemesis = NemesisLog::read(history);
        let mut promotions = Vec::new();
        for f in &nemesis.faults {
            let said = if f.f == "failover" {
                f.value.as_ref()
            } else {
                f.outcome.as_ref()
            };
            let Some(promoted) = said
                .and_then(|v| v.get("promoted"))
                .and_then(|p| p.as_str())
            else {
                continue;
            };
            promotions.push(Promotion {
                index: f.index,
                time: f.start_ns,
                node: history.nodes.get(promoted).unwrap_or(NONE),
            });
        }
        let topology = Topology::read(history, &nemesis);
        let records_invalidations = history.invalidations.iter().any(|i| !i.is_empty())
            || history.ops.iter().any(|o| o.kind == OpKind::Invalidate);
        Context {
            history,
            bound,
            promotions,
            nemesis,
            topology,
            records_invalidations,
        }
    }

    /// A fault in force at some time in `[from, to]`.
    pub fn fault_during(&self, from: u64, to: u64) -> Option<&FaultRecord> {
        self.nemesis.active_during(from, to)
    }
}

/// Everything the per-key passes found.
#[derive(Debug, Default)]
pub struct Findings {
    /// All anomalies, sorted by kind, then by the offending op's index.
    pub findings: Vec<Finding>,
    /// Staleness (ns, 0 when fresh) of every ok read and db-read that returned a value.
    pub staleness: Vec<u64>,
    /// Keys with ok writes but no ok db-final-read (lost-write undecidable there).
    pub keys_without_final: u64,
    /// Final reads after the final phase whose key has no db-final-read.
    pub final_reads_undecided: u64,
    /// Final reads after the final phase.
    pub final_reads: u64,
    /// Ok reads and db-reads (values and misses): what stale-read and the session
    /// checks judge.
    pub reads: u64,
    /// Ok reads, db-reads and final-reads that returned a value: what phantom-read
    /// judges.
    pub valued_reads: u64,
    /// Ok writes: what version-fork judges.
    pub ok_writes: u64,
    /// Ok writes of keys with an ok db-final-read: what lost-write judges.
    pub judged_writes: u64,
}

/// Runs every detector on every key, in parallel.
pub fn check(ctx: &Context<'_>) -> Findings {
    let h = ctx.history;
    let parts: Vec<Findings> = (0..h.keys.len() as u32)
        .into_par_iter()
        .with_min_len(16)
        .map(|key| check_key(ctx, key))
        .collect();
    let mut all = Findings::default();
    for mut part in parts {
        all.findings.append(&mut part.findings);
        all.staleness.append(&mut part.staleness);
        all.keys_without_final += part.keys_without_final;
        all.final_reads_undecided += part.final_reads_undecided;
        all.final_reads += part.final_reads;
        all.reads += part.reads;
        all.valued_reads += part.valued_reads;
        all.ok_writes += part.ok_writes;
        all.judged_writes += part.judged_writes;
    }
    all.findings
        .sort_unstable_by_key(|f| (f.kind, f.index, f.other, f.version));
    all
}

#[derive(Clone, Copy)]
enum WriteState {
    Ok { version: i64, op: u32 },
    Info { op: u32 },
    Fail { op: u32 },
}

#[derive(Default, Clone, Copy)]
struct Session {
    /// Highest version read so far, and the op that read it.
    read: Option<(i64, u32)>,
    /// Highest version written (ok) so far, and the write op.
    written: Option<(i64, u32)>,
}

/// The per-key pass.
fn check_key(ctx: &Context<'_>, key: u32) -> Findings {
    let h = ctx.history;
    let ops = &h.key_ops[key as usize];
    let mut out = Findings::default();

    // Writes: acknowledged ones by version, and the state of every write id.
    let mut acked: Vec<(i64, u64, u32)> = Vec::new(); // (version, complete time, op)
    let mut states: FxHashMap<u32, WriteState> = FxHashMap::default();
    for &id in ops {
        let op = &h.ops[id as usize];
        if op.kind != OpKind::Write {
            continue;
        }
        let Some(val) = op.value else { continue };
        match op.outcome {
            Outcome::Ok => {
                acked.push((val.version, op.complete_time, id));
                states.insert(
                    val.write,
                    WriteState::Ok {
                        version: val.version,
                        op: id,
                    },
                );
            }
            Outcome::Info => {
                states
                    .entry(val.write)
                    .or_insert(WriteState::Info { op: id });
            }
            Outcome::Fail => {
                states
                    .entry(val.write)
                    .or_insert(WriteState::Fail { op: id });
            }
        }
    }
    acked.sort_unstable();
    out.ok_writes = acked.len() as u64;
    if h.finals[key as usize].is_some() {
        out.judged_writes = acked.len() as u64;
    }
    let init_in_force = !acked.iter().any(|a| a.0 == 0);
    // suffix[i]: the earliest acknowledgement among acked[i..], and its op.
    let mut suffix: Vec<(u64, u32)> = vec![(u64::MAX, NONE); acked.len() + 1];
    for i in (0..acked.len()).rev() {
        suffix[i] = suffix[i + 1].min((acked[i].1, acked[i].2));
    }
    let newer_than = |v: i64| -> (u64, u32) {
        let pos = acked.partition_point(|a| a.0 <= v);
        suffix[pos]
    };
    // The database's final state says which acknowledged writes it lost.
    let final_value = h.finals[key as usize].as_ref();
    let held: Option<FxHashSet<Val>> = final_value
        .and_then(|f| f.log.as_ref())
        .map(|l| l.iter().copied().collect());
    let is_lost = |version: i64, op: u32| -> bool {
        let Some(fin) = final_value else { return false };
        match &held {
            Some(held) => {
                !held.contains(&h.ops[op as usize].value.expect("acked writes have values"))
            }
            None => version > fin.value.version,
        }
    };
    // kept[i]: as suffix, over the writes the database did not lose.
    let mut kept: Vec<(u64, u32)> = vec![(u64::MAX, NONE); acked.len() + 1];
    for i in (0..acked.len()).rev() {
        kept[i] = if is_lost(acked[i].0, acked[i].2) {
            kept[i + 1]
        } else {
            kept[i + 1].min((acked[i].1, acked[i].2))
        };
    }
    // What the causes need to know of the writes newer than `v`, for a read that began
    // at `by` (u64::MAX: any time).
    let newer_of = |v: i64, by: u64| -> Newer<'_> {
        let pos = acked.partition_point(|a| a.0 <= v);
        let (t, op) = kept[pos];
        Newer {
            kept: if t != u64::MAX && (by == u64::MAX || t.saturating_add(ctx.bound) < by) {
                op
            } else {
                NONE
            },
            first: suffix[pos].1,
            ops,
        }
    };

    // Versions tied to write ids, for forks: (version) -> [(write id, write op, read op)].
    let mut ties: FxHashMap<i64, Vec<(u32, u32, u32)>> = FxHashMap::default();
    let mut tie = |version: i64, write: u32, op: u32, read: u32| {
        let list = ties.entry(version).or_default();
        if !list.iter().any(|t| t.0 == write) {
            list.push((write, op, read));
        }
    };
    for &(version, _, op) in &acked {
        tie(
            version,
            h.ops[op as usize].value.map_or(NONE, |v| v.write),
            op,
            NONE,
        );
    }
    if init_in_force {
        tie(0, INIT, NONE, NONE);
    }

    // Fills of the key, indexed when a cause is first needed.
    let fills: OnceCell<Fills> = OnceCell::new();
    let fills = || fills.get_or_init(|| Fills::new(h, ops));
    let final_phase_index = ctx.history.final_phase.map(|f| f.0);
    let mut sessions: FxHashMap<u32, Session> = FxHashMap::default();
    let info_tie = |val: Val, read: u32, tie: &mut dyn FnMut(i64, u32, u32, u32)| {
        if let Some(WriteState::Info { op }) = states.get(&val.write) {
            tie(val.version, val.write, *op, read);
        }
    };

    for &id in ops {
        let op = &h.ops[id as usize];
        if op.kind == OpKind::Write && op.outcome == Outcome::Ok {
            if let Some(val) = op.value {
                let s = sessions.entry(op.process).or_default();
                if s.written.is_none_or(|w| val.version > w.0) {
                    s.written = Some((val.version, id));
                }
            }
            continue;
        }
        if op.outcome != Outcome::Ok {
            continue;
        }
        if matches!(op.kind, OpKind::Read | OpKind::DbRead) {
            out.reads += 1;
        }
        if op.value.is_some()
            && matches!(op.kind, OpKind::Read | OpKind::DbRead | OpKind::FinalRead)
        {
            out.valued_reads += 1;
        }
        let reads_value = matches!(
            op.kind,
            OpKind::Read | OpKind::DbRead | OpKind::FinalRead | OpKind::DbFinalRead
        );
        if !reads_value {
            continue;
        }
        let after_final_phase = op.kind == OpKind::FinalRead
            && final_phase_index.is_some_and(|fp| op.invoke_index > fp);
        if after_final_phase {
            // Judged here, misses included: a miss is converged.
            out.final_reads += 1;
            if final_value.is_none() {
                out.final_reads_undecided += 1;
            }
        }
        let Some(val) = op.value else { continue }; // a miss
        info_tie(val, id, &mut tie);
        if op.kind == OpKind::DbFinalRead {
            if let Some(log) = h.logs.get(&id) {
                for &entry in log {
                    info_tie(entry, id, &mut tie);
                }
            }
            continue;
        }

        // phantom-read
        let phantom = if val.write == INIT {
            (!init_in_force || val.version != 0).then_some((PhantomWhy::WrongVersion, NONE))
        } else {
            match states.get(&val.write) {
                None => Some((PhantomWhy::NoSuchWrite, NONE)),
                Some(WriteState::Fail { op }) => Some((PhantomWhy::FailedWrite, *op)),
                Some(WriteState::Ok { version, op }) if *version != val.version => {
                    Some((PhantomWhy::WrongVersion, *op))
                }
                _ => None,
            }
        };
        if let Some((why, write_op)) = phantom {
            let mut f = Finding::new(h, AnomalyKind::PhantomRead, key, id);
            f.other = write_op;
            f.version = val.version;
            f.phantom = Some(why);
            out.findings.push(f);
        }

        if op.kind == OpKind::FinalRead {
            if after_final_phase {
                match final_value {
                    None => {}
                    Some(fin) if fin.value != val => {
                        let mut f = Finding::new(h, AnomalyKind::NonConvergence, key, id);
                        f.other = fin.op;
                        f.version = val.version;
                        let (_, newer) = newer_than(val.version);
                        f.extra = newer;
                        f.cause = Some(if val.version > fin.value.version {
                            Cause::lost_by_database()
                        } else {
                            cache_cause(
                                ctx,
                                key,
                                op,
                                val,
                                &newer_of(val.version, u64::MAX),
                                fills(),
                            )
                        });
                        out.findings.push(f);
                    }
                    Some(_) => {}
                }
            }
            continue;
        }

        // stale-read (read and db-read)
        let (first_ack, newer) = newer_than(val.version);
        let staleness = op.invoke_time.saturating_sub(first_ack);
        out.staleness
            .push(if first_ack == u64::MAX { 0 } else { staleness });
        if first_ack != u64::MAX && first_ack.saturating_add(ctx.bound) < op.invoke_time {
            let mut f = Finding::new(h, AnomalyKind::StaleRead, key, id);
            f.other = newer;
            f.version = val.version;
            f.staleness = staleness;
            let newer = newer_of(val.version, op.invoke_time);
            f.cause = Some(if op.kind == OpKind::DbRead {
                db_cause(ctx, op, &newer)
            } else {
                cache_cause(ctx, key, op, val, &newer, fills())
            });
            out.findings.push(f);
        }

        // monotonic-read and read-your-writes
        let s = sessions.entry(op.process).or_default();
        if let Some((v, earlier)) = s.read {
            if v > val.version {
                let mut f = Finding::new(h, AnomalyKind::MonotonicRead, key, id);
                f.other = earlier;
                f.version = val.version;
                out.findings.push(f);
            }
        }
        if let Some((v, write)) = s.written {
            if v > val.version {
                let mut f = Finding::new(h, AnomalyKind::ReadYourWrites, key, id);
                f.other = write;
                f.version = val.version;
                out.findings.push(f);
            }
        }
        if s.read.is_none_or(|r| val.version > r.0) {
            s.read = Some((val.version, id));
        }
    }

    // version-fork: one per (key, version) with two or more writes.
    let mut forked: Vec<_> = ties.into_iter().filter(|(_, w)| w.len() > 1).collect();
    forked.sort_unstable_by_key(|(v, _)| *v);
    for (version, writes) in forked {
        let mut f = Finding::new(h, AnomalyKind::VersionFork, key, writes[0].1);
        f.other = writes[1].1;
        f.extra = if writes[1].2 != NONE {
            writes[1].2
        } else {
            writes[0].2
        };
        f.version = version;
        if f.op == NONE {
            // "init" is no op; lead with the write that has one.
            std::mem::swap(&mut f.op, &mut f.other);
            f.index = h
                .ops
                .get(f.op as usize)
                .map_or(u64::MAX, |o| o.invoke_index);
        }
        out.findings.push(f);
    }

    // lost-write
    match final_value {
        None if !acked.is_empty() => out.keys_without_final += 1,
        None => {}
        Some(fin) => {
            for &(version, _, id) in &acked {
                if is_lost(version, id) {
                    let mut f = Finding::new(h, AnomalyKind::LostWrite, key, id);
                    f.other = fin.op;
                    f.version = version;
                    out.findings.push(f);
                }
            }
        }
    }
    out
}
