//! What the observers show of each commit on each watched cache node: whether the node
//! held an older version of the key when the version was committed, and if so, what
//! became of that entry — invalidated (when), overwritten with the new version, expired,
//! never, or unseen because the observer was blind. `missing-invalidation`,
//! `slow-invalidation` and the `invalidation_lag` figures all read this one judgement,
//! whose rules are the spec's (`docs/history.md`, *Observers*):
//!
//! - The committed versions of a key are its acknowledged writes the database kept (not
//!   `lost-write`s) or a `commit` event shows, and its writes of unknown outcome that a
//!   `commit` event shows committed. A version's *commit time* C is the time of its first `commit` event
//!   (matched by write id), else its write's acknowledgement.
//! - A watched node *held an older version* at the commit when its last *holding
//!   evidence* before the write W began shows a version below v, and the node's
//!   observer saw no change of the key there (`invalidate`, `set`, `expire`, `evict`)
//!   after that evidence and before W began. Holding evidence is an ok `fill` of the
//!   node (at its completion: it installed its version; not when the observer saw an
//!   `invalidate`, `expire` or `evict` of the key there, or more than one `set`,
//!   between its invoke and its completion: what it installed may be gone) or an ok `read` or `final-read`
//!   of the node (at its invoke: it held what it returned, and a miss shows it held
//!   nothing), or a cache observer's `sample` of the node (at its `from`, as a read);
//!   among several of the latest time, the highest version counts.
//! - What became of the entry is the first of these after W began: an observed
//!   `invalidate` (*invalidated*; its lag is its time minus C, or 0 when it came before
//!   C); an observed `set` that an ok fill of version v or above on the node completed
//!   within 1 s after, or that a `sample` sent within 1 s after shows at version v or
//!   above (*overwritten*); an observed `expire` or `evict` (*expired*: gone,
//!   not invalidated, and not judged); none by the `final-phase` (*missing*; without a
//!   `final-phase`, *pending*). Other sets (a fill of an older version) do not end it.
//! - When an `observer-gap` of the node's cache observer overlaps the time from the
//!   holding evidence to that end (to the final phase when missing), the observer may
//!   have missed the change that decides: the pair is *blind* and cannot be judged. So
//!   it is when a kill or a failover of the node (or of the primary it follows) falls
//!   in that time: the node came back empty or resynced wholesale, which notifications
//!   do not tell.

use crate::check::Context;
use crate::model::{Change, History, Outcome};
use coherence_store::OpKind;
use rustc_hash::FxHashMap;

/// How long after an observed `set` the fill that made it may complete and still be
/// taken as its cause.
pub const SET_TO_FILL: u64 = 1_000_000_000;

/// A `sample` logged more than this long after its `from` is no evidence: an answer that
/// slow may be of any moment in between (and a live checker could not wait for it).
pub const SAMPLE_AGE: u64 = 1_000_000_000;

/// What became of an older entry on a watched node after a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Observed invalidated: at this time, by the event at this index.
    Invalidated {
        /// When the observer saw it.
        time: u64,
        /// Its event.
        index: u64,
    },
    /// Overwritten by a fill of the new version (or a later one): this op.
    Overwritten {
        /// The fill.
        by: Holding,
    },
    /// Gone by expiry or eviction before any invalidation: not judged.
    Expired {
        /// The `expire` or `evict` event.
        index: u64,
    },
    /// Never invalidated nor overwritten by the final phase.
    Missing,
    /// Not yet by the end of a history without a `final-phase`.
    Pending,
    /// The observer was blind over the time that decides, or the node was killed or
    /// failed over then (its content changed unseen).
    Blind {
        /// The `observer-gap` event, or the fault's opening event.
        index: u64,
    },
}

/// What shows that a node held a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Holding {
    /// An ok fill, read or final-read (the op).
    Op(u32),
    /// A cache observer's `sample` (its event index).
    Sample(u64),
}

/// One committed version of a key on one watched node that held an older version of it.
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    /// Interned key.
    pub key: u32,
    /// The version committed.
    pub version: i64,
    /// Its write op.
    pub write: u32,
    /// Its commit time C.
    pub commit: u64,
    /// The `commit` event it was timed by, or `u64::MAX` when timed by the write's ack.
    pub commit_index: u64,
    /// The watched node (interned).
    pub node: u32,
    /// What shows the node held an older version (a fill, a read or a sample).
    pub evidence: Holding,
    /// The older version it held.
    pub held: i64,
    /// What became of the entry.
    pub fate: Fate,
}

impl Pair {
    /// The invalidation lag: from the commit to the observed invalidation (0 when the
    /// invalidation was seen before the commit was), for an invalidated pair.
    pub fn lag(&self) -> Option<u64> {
        match self.fate {
            Fate::Invalidated { time, .. } => Some(time.saturating_sub(self.commit)),
            _ => None,
        }
    }
}

/// The committed versions of key `key`: (version, write op, commit time, commit event
/// index or `u64::MAX`), by version. `lost(version, op)` says whether the database lost
/// an acknowledged write.
pub fn committed(
    h: &History,
    key: u32,
    ops: &[u32],
    lost: impl Fn(i64, u32) -> bool,
) -> Vec<(i64, u32, u64, u64)> {
    // The first commit event of each write id, and its version.
    let mut seen: FxHashMap<u32, (u64, u64, Option<i64>)> = FxHashMap::default();
    for c in &h.commits[key as usize] {
        seen.entry(c.write).or_insert((c.time, c.index, c.version));
    }
    let mut out = Vec::new();
    for &id in ops {
        let op = &h.ops[id as usize];
        if op.kind != OpKind::Write {
            continue;
        }
        let Some(val) = op.value else { continue };
        let commit = seen.get(&val.write).copied();
        let version = match op.outcome {
            // (An ok write no commit shows, in a history without versions, has none.)
            // Acknowledged and kept, or seen committed by the change stream (whatever
            // the database lost later).
            Outcome::Ok if val.version >= 0 && (commit.is_some() || !lost(val.version, id)) => {
                val.version
            }
            // A write of unknown outcome that the change stream shows committed.
            Outcome::Info => match commit.and_then(|c| c.2) {
                Some(v) => v,
                None => continue,
            },
            _ => continue,
        };
        let (time, index) = match commit {
            Some((t, i, _)) => (t, i),
            None => (op.complete_time, u64::MAX),
        };
        out.push((version, id, time, index));
    }
    // One per version: the earliest committed (the first in invoke order among equals).
    out.sort_by_key(|c| (c.0, c.2));
    out.dedup_by_key(|c| c.0);
    out
}

/// Every (committed version, watched node) pair of key `key` whose node held an older
/// version at the commit, with its fate. `committed` is [`committed`]'s answer.
pub fn pairs(
    ctx: &Context<'_>,
    key: u32,
    ops: &[u32],
    committed: &[(i64, u32, u64, u64)],
) -> Vec<Pair> {
    let h = ctx.history;
    let mut out = Vec::new();
    if h.watched.caches.is_empty() || committed.is_empty() {
        return out;
    }
    let end = h.final_phase.map(|f| f.1);
    for &node in &h.watched.caches {
        // The changes the node's observer saw: (time, index, what).
        let mut changes: Vec<(u64, u64, Seen)> = h.invalidations[key as usize]
            .iter()
            .filter(|i| i.observed && i.node == node)
            .map(|i| (i.time, i.index, Seen::Invalidate))
            .chain(
                h.observed[key as usize]
                    .iter()
                    .filter(|o| o.node == node)
                    .map(|o| {
                        let what = match o.change {
                            Change::Set => Seen::Set,
                            Change::Removed => Seen::Removed,
                        };
                        (o.time, o.index, what)
                    }),
            )
            .collect();
        changes.sort_unstable_by_key(|c| (c.0, c.1));
        // The node's holding evidence: (time, version held or None for a miss, op), in
        // time order, the highest version last among those of one time.
        let mut evidence: Vec<(u64, Option<i64>, Holding)> = Vec::new();
        let mut fills: Vec<(u64, i64, Holding)> = Vec::new();
        for s in h.samples[key as usize]
            .iter()
            .filter(|s| s.node == node && s.time.saturating_sub(s.from) <= SAMPLE_AGE)
        {
            evidence.push((s.from, s.held.map(|v| v.version), Holding::Sample(s.index)));
            if let Some(v) = s.held {
                // Sent after a set and showing its version: the set installed it (or
                // something newer came meanwhile).
                fills.push((s.from, v.version, Holding::Sample(s.index)));
            }
        }
        for &id in ops {
            let op = &h.ops[id as usize];
            if op.node != node || op.outcome != Outcome::Ok {
                continue;
            }
            match (op.kind, op.value) {
                (OpKind::Fill, Some(v)) => {
                    fills.push((op.complete_time, v.version, Holding::Op(id)));
                    // What it installed may be gone by its completion: not evidence when
                    // the observer saw the key removed, or set twice, meanwhile.
                    let from = changes.partition_point(|c| c.0 <= op.invoke_time);
                    let during = changes[from..]
                        .iter()
                        .take_while(|c| c.0 < op.complete_time);
                    let (mut sets, mut removed) = (0, false);
                    for c in during {
                        match c.2 {
                            Seen::Set => sets += 1,
                            Seen::Invalidate | Seen::Removed => removed = true,
                        }
                    }
                    if !removed && sets <= 1 {
                        evidence.push((op.complete_time, Some(v.version), Holding::Op(id)));
                    }
                }
                (OpKind::Read | OpKind::FinalRead, v) => {
                    evidence.push((op.invoke_time, v.map(|v| v.version), Holding::Op(id)))
                }
                _ => {}
            }
        }
        if evidence.is_empty() {
            continue;
        }
        evidence.sort_unstable();
        for &(version, write, commit, commit_index) in committed {
            let began = h.ops[write as usize].invoke_time;
            // The last holding evidence before the write began.
            let pos = evidence.partition_point(|e| e.0 < began);
            let Some(&(t_e, Some(held), ev_op)) = pos.checked_sub(1).map(|p| &evidence[p]) else {
                continue;
            };
            if held >= version {
                continue;
            }
            // No observed change between the evidence and the write's beginning.
            let after = changes.partition_point(|c| c.0 <= t_e);
            if changes[after..].first().is_some_and(|c| c.0 < began) {
                continue;
            }
            let mut fate = None;
            for &(t, index, what) in &changes[after..] {
                if end.is_some_and(|f| t > f) {
                    break;
                }
                match what {
                    Seen::Invalidate => {
                        fate = Some((Fate::Invalidated { time: t, index }, t));
                        break;
                    }
                    Seen::Removed => {
                        fate = Some((Fate::Expired { index }, t));
                        break;
                    }
                    Seen::Set => {
                        let newer = fills
                            .iter()
                            .find(|f| f.0 >= t && f.0 <= t + SET_TO_FILL && f.1 >= version);
                        if let Some(&(_, _, by)) = newer {
                            fate = Some((Fate::Overwritten { by }, t));
                            break;
                        }
                    }
                }
            }
            let (fate, until) = match fate {
                Some(f) => f,
                None => match end {
                    Some(f) => (Fate::Missing, f),
                    None => (Fate::Pending, h.end_time),
                },
            };
            let blind = h
                .gaps
                .iter()
                .find(|g| g.cache && g.node == node && g.from <= until && g.to >= t_e);
            let fate = match blind {
                Some(g) => Fate::Blind { index: g.index },
                None => match disrupted(ctx, node, t_e, until) {
                    Some(index) => Fate::Blind { index },
                    None => fate,
                },
            };
            out.push(Pair {
                key,
                version,
                write,
                commit,
                commit_index,
                node,
                evidence: ev_op,
                held,
                fate,
            });
        }
    }
    out
}

/// A fault that changed what `node` holds without its observer seeing it, in force
/// (or, for an instant, happening) between `from` and `to`: a kill of the node or of
/// the primary it follows (it comes back empty, or resyncs from an empty primary), or a
/// failover naming either (a demoted node resyncs from its new primary wholesale).
/// Its event index.
fn disrupted(ctx: &Context<'_>, node: u32, from: u64, to: u64) -> Option<u64> {
    use coherence_store::faults::Family;
    let h = ctx.history;
    let primary = ctx.topology.follows(node, from);
    let names: Vec<&str> = std::iter::once(node)
        .chain(primary)
        .map(|n| h.nodes.name(n))
        .collect();
    ctx.nemesis
        .faults
        .iter()
        .filter(|f| {
            matches!(
                f.family,
                Some(Family::Kill | Family::RedisFailover | Family::ReplicaofNoOne)
            )
        })
        .filter(|f| {
            f.active_during(from, to) || (!f.interval && f.start_ns >= from && f.start_ns <= to)
        })
        .find(|f| {
            [f.value.as_ref(), f.outcome.as_ref()]
                .into_iter()
                .flatten()
                .any(|v| names_any(v, &names))
        })
        .map(|f| f.index)
}

/// True when some string in `v` is one of `names`.
fn names_any(v: &serde_json::Value, names: &[&str]) -> bool {
    match v {
        serde_json::Value::String(s) => names.contains(&s.as_str()),
        serde_json::Value::Array(a) => a.iter().any(|v| names_any(v, names)),
        serde_json::Value::Object(o) => o.values().any(|v| names_any(v, names)),
        _ => false,
    }
}

#[derive(Debug, Clone, Copy)]
enum Seen {
    Invalidate,
    Set,
    Removed,
}

/// Why a pair's invalidation went missing, from the faults in force: the node promoted
/// by a failover, the invalidator killed or paused, a network fault, another failover;
/// `None` when no fault explains it.
pub fn missing_cause(ctx: &Context<'_>, p: &Pair, until: u64) -> Option<(MissingCause, u64)> {
    use coherence_store::faults::Family;
    let h = ctx.history;
    let from = h.ops[p.write as usize].invoke_time;
    if let Some(c) = ctx
        .topology
        .promoted(p.node, crate::topology::NodeKind::Cache, from, until)
    {
        return Some((MissingCause::FailoverPromoted, c.index));
    }
    let active = |f: &&crate::faults::FaultRecord| f.active_during(from, until);
    let faults: Vec<&crate::faults::FaultRecord> =
        ctx.nemesis.faults.iter().filter(active).collect();
    if let Some(f) = faults.iter().find(|f| {
        matches!(f.family, Some(Family::Kill | Family::Pause))
            && f.value.as_ref().is_some_and(names_invalidator)
    }) {
        return Some((MissingCause::InvalidatorDown, f.index));
    }
    if let Some(f) = faults.iter().find(|f| {
        matches!(
            f.family,
            Some(Family::Partition | Family::PacketLoss | Family::Latency)
        )
    }) {
        return Some((MissingCause::Partition, f.index));
    }
    let failover = ctx.nemesis.faults.iter().find(|f| {
        f.family.is_some_and(|fam| fam.spec().promotes.is_some())
            && f.start_ns >= from
            && f.start_ns <= until
    });
    if let Some(f) = failover {
        return Some((MissingCause::Failover, f.index));
    }
    None
}

/// True when a fault's value names the invalidator (as a service, a role or a node).
fn names_invalidator(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s == "invalidator" || s == "inv",
        serde_json::Value::Array(a) => a.iter().any(names_invalidator),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| {
            matches!(
                k.as_str(),
                "service" | "node" | "role" | "fault" | "kill" | "pause"
            ) && names_invalidator(v)
        }),
        _ => false,
    }
}

/// What the faults say of a missing invalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingCause {
    /// A cache failover promoted the node after the write began.
    FailoverPromoted,
    /// The invalidator was killed or paused.
    InvalidatorDown,
    /// A network fault (partition, packet loss, latency) was in force.
    Partition,
    /// A failover (of the database or another cache) happened.
    Failover,
}
