//! Likely causes: for each stale read and non-converged entry, the mechanism the history
//! shows, following the topology (a replica serves what its primary held), or
//! `unexplained` when the history does not show one. A cause is never counted as an
//! anomaly; it says where to look.
//!
//! For a read R of version v on node n whose newer version u was acknowledged by write W
//! (the earliest acknowledged newer write the database kept), in this order:
//!
//! 1. `database-lost-write`: every newer write acknowledged in time was lost by the
//!    database (its final log lacks it): the cache agreed with the database.
//! 2. The *holder* is the node whose state n served: its primary when n is a replica
//!    (topology), else n. `fill-race`: a fill of v on the holder landed after the
//!    invalidation of the holder for W (or, with none before R, after W was
//!    acknowledged) and before R returned; `database-replica-fill` when that fill's
//!    value came from a db-read of a database standby that was itself behind.
//! 3. `replica-read`: n is a replica and its primary had been invalidated for W before
//!    R began (or the read says `"role": "replica"` and no topology says more): the
//!    deletion had not replicated yet.
//! 4. `failover-promoted`: a cache failover promoted n after W began, and n was not
//!    invalidated for W before R.
//! 5. `late-invalidation`: the holder was invalidated for W only after R began;
//!    `lost-invalidation`: never (a failed invalidate operation is cited when there is
//!    one). When the holder is watched by a cache observer, that is proven — unless its
//!    observer was blind while it was due (`unexplained`, citing the gap); when it is
//!    not watched and the history records no invalidation of anything, neither can be
//!    told: `unexplained`.
//! 6. Otherwise `unexplained`.
//!
//! A stale db-read is `database-lost-write` as in 1, `database-replica-lag` when its
//! node was a standby (topology, or `"role": "replica"`, or another node than the one
//! that took W when there is no topology), `failover-promoted` when a database failover
//! promoted its node after W began, else `unexplained`. Every cause also names a nemesis
//! fault in force between W and R, when there was one.

use crate::check::Context;
use crate::model::{History, Op, Outcome, Val, NONE};
use crate::topology::NodeKind;
use coherence_store::OpKind;
use rustc_hash::FxHashMap;
use serde::Serialize;

/// The likely cause of a stale read or a non-converged entry, as the history shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CauseKind {
    /// A fill of the old version completed after the newer write was acknowledged (or
    /// after the node was invalidated for it): the cache-aside race.
    FillRace,
    /// A fill installed an old version that it had read from a lagging database standby.
    DatabaseReplicaFill,
    /// The read was served by a replica whose primary no longer held the old version.
    ReplicaRead,
    /// The node had been promoted by a failover and did not hold the newer version.
    FailoverPromoted,
    /// The node (or its primary) was invalidated, but only after the read began.
    LateInvalidation,
    /// No invalidation of the node (or its primary) followed the newer write.
    LostInvalidation,
    /// A database read served by a standby that had not applied the newer write.
    DatabaseReplicaLag,
    /// The database lost the newer writes (or the cache holds one it lost).
    DatabaseLostWrite,
    /// The invalidator was killed or paused while the invalidation was due.
    InvalidatorDown,
    /// A network fault (partition, packet loss, latency) was in force while the
    /// invalidation was due.
    Partition,
    /// A failover (of the database, or of another cache node) happened while the
    /// invalidation was due.
    Failover,
    /// The history does not show what happened.
    Unexplained,
}

impl CauseKind {
    /// Every cause, in the order of the rules.
    pub const ALL: [CauseKind; 12] = [
        CauseKind::FillRace,
        CauseKind::DatabaseReplicaFill,
        CauseKind::ReplicaRead,
        CauseKind::FailoverPromoted,
        CauseKind::LateInvalidation,
        CauseKind::LostInvalidation,
        CauseKind::DatabaseReplicaLag,
        CauseKind::DatabaseLostWrite,
        CauseKind::InvalidatorDown,
        CauseKind::Partition,
        CauseKind::Failover,
        CauseKind::Unexplained,
    ];

    /// The name used in results.
    pub fn name(self) -> &'static str {
        match self {
            CauseKind::FillRace => "fill-race",
            CauseKind::DatabaseReplicaFill => "database-replica-fill",
            CauseKind::ReplicaRead => "replica-read",
            CauseKind::FailoverPromoted => "failover-promoted",
            CauseKind::LateInvalidation => "late-invalidation",
            CauseKind::LostInvalidation => "lost-invalidation",
            CauseKind::DatabaseReplicaLag => "database-replica-lag",
            CauseKind::DatabaseLostWrite => "database-lost-write",
            CauseKind::InvalidatorDown => "invalidator-down",
            CauseKind::Partition => "partition",
            CauseKind::Failover => "failover",
            CauseKind::Unexplained => "unexplained",
        }
    }

    /// The kind a name names.
    pub fn parse(name: &str) -> Option<CauseKind> {
        CauseKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A cause with the events that show it.
#[derive(Debug, Clone, Copy)]
pub struct Cause {
    /// What it was.
    pub kind: CauseKind,
    /// The op that shows it (a fill, a failed invalidate), or [`NONE`].
    pub op: u32,
    /// For `database-replica-fill`: the db-read the fill's value came from, or [`NONE`].
    pub source: u32,
    /// An event index that shows it (an invalidation, a failover), or `u64::MAX`.
    pub event: u64,
    /// The node whose state the read served (a replica's primary), or [`NONE`].
    pub holder: u32,
    /// A nemesis fault in force between the newer write and the read: its index, or
    /// `u64::MAX`.
    pub fault: u64,
}

impl Cause {
    /// A cause of this kind, shown by nothing yet.
    pub fn new(kind: CauseKind) -> Cause {
        Cause {
            kind,
            op: NONE,
            source: NONE,
            event: u64::MAX,
            holder: NONE,
            fault: u64::MAX,
        }
    }

    /// The cache holds a version the database no longer has.
    pub fn lost_by_database() -> Cause {
        Cause::new(CauseKind::DatabaseLostWrite)
    }

    /// The same cause, shown by the event at `event`.
    pub fn event(mut self, event: u64) -> Cause {
        self.event = event;
        self
    }

    fn op(mut self, op: u32) -> Cause {
        self.op = op;
        self
    }
}

/// Fills of one key by (node, value installed), for finding the one behind a stale read.
#[derive(Default)]
pub struct Fills {
    /// Completed fills (ok), in invoke order.
    done: FxHashMap<(u32, Val), Vec<u32>>,
    /// Fills with an unknown outcome: they may land at any time after their invoke.
    unknown: FxHashMap<(u32, Val), Vec<u32>>,
    /// The longest a completed fill took, which bounds how far back one can hide.
    longest: u64,
}

impl Fills {
    /// Indexes the fills among `ops` (one key's ops, in invoke order).
    pub fn new(h: &History, ops: &[u32]) -> Fills {
        let mut fills = Fills::default();
        for &id in ops {
            let op = &h.ops[id as usize];
            let (OpKind::Fill, Some(v)) = (op.kind, op.value) else {
                continue;
            };
            match op.outcome {
                Outcome::Ok => {
                    fills.done.entry((op.node, v)).or_default().push(id);
                    fills.longest = fills.longest.max(op.complete_time - op.invoke_time);
                }
                Outcome::Info => fills.unknown.entry((op.node, v)).or_default().push(id),
                Outcome::Fail => {}
            }
        }
        fills
    }

    /// The latest fill of `val` on `node` that began by `by` and landed (or may have
    /// landed) after `after`.
    fn landed(&self, h: &History, node: u32, val: Val, by: u64, after: u64) -> Option<u32> {
        let began =
            |list: &Vec<u32>| list.partition_point(|&id| h.ops[id as usize].invoke_time <= by);
        let done = self.done.get(&(node, val)).and_then(|list| {
            list[..began(list)]
                .iter()
                .rev()
                .take_while(|&&id| {
                    h.ops[id as usize].invoke_time.saturating_add(self.longest) > after
                })
                .find(|&&id| h.ops[id as usize].complete_time > after)
                .copied()
        });
        let unknown = self
            .unknown
            .get(&(node, val))
            .and_then(|list| list[..began(list)].last().copied());
        done.max(unknown)
    }
}

/// What the causes need of one key's writes.
pub struct Newer<'a> {
    /// The write that makes the read stale and that the database kept: the earliest
    /// acknowledged newer write not lost, or [`NONE`] when every newer write acknowledged
    /// in time was lost.
    pub kept: u32,
    /// The earliest acknowledged newer write, lost or not ([`NONE`]: none).
    pub first: u32,
    /// The key's ops (for the db-read behind a fill, failed invalidations).
    pub ops: &'a [u32],
}

/// The node whose state `node` serves at `at`: its primary when it is a replica.
fn holder(ctx: &Context<'_>, node: u32, at: u64) -> u32 {
    ctx.topology.follows(node, at).unwrap_or(node)
}

/// The likely cause of a cache read `read` (of `val` on its node) not showing the newer
/// write.
pub fn cache_cause(
    ctx: &Context<'_>,
    key: u32,
    read: &Op,
    val: Val,
    newer: &Newer<'_>,
    fills: &Fills,
) -> Cause {
    let h = ctx.history;
    let with_fault = |mut c: Cause, from: u64| {
        if let Some(f) = ctx.fault_during(from, read.invoke_time) {
            c.fault = f.index;
        }
        c
    };
    // Every newer write acknowledged in time was lost by a database failover before the
    // read: the cache agreed with the database. (Lost only later, the database still
    // held the write when the read came: the cache's own story applies.)
    let w = match lost_before(ctx, newer, read) {
        Ok(c) => return c,
        Err(w) => w,
    };
    let node = ctx.cache_of(read);
    let hold = holder(ctx, node, read.invoke_time);
    let replica = hold != node;
    // Invalidations are in history order, so in time order. The first one of the
    // holder after the newer write began: in time for the read, or late. The write's
    // own invalidation carries its version (one that does not say may be anyone's);
    // one for another version is not it.
    let invals = &h.invalidations[key as usize];
    let first = invals.partition_point(|i| i.time < w.invoke_time);
    let newer_version = w.value.map_or(0, |v| v.version);
    let next = invals[first..]
        .iter()
        .find(|i| i.node == hold && i.version.is_none_or(|v| v == newer_version));
    let in_time = next.filter(|i| i.time <= read.invoke_time);
    let mut base = Cause::new(CauseKind::Unexplained);
    base.holder = hold;
    let promoted = || {
        ctx.topology
            .promoted(node, NodeKind::Cache, w.invoke_time, read.invoke_time)
    };
    // The holder's invalidation for W came after the read began: it was on its way.
    if let Some(i) = next.filter(|i| i.time > read.invoke_time) {
        if let Some(p) = promoted() {
            let mut c = base.event(p.index);
            c.kind = CauseKind::FailoverPromoted;
            return with_fault(c, w.invoke_time);
        }
        let mut c = base.event(i.index);
        c.kind = CauseKind::LateInvalidation;
        return with_fault(c, w.invoke_time);
    }
    // A fill of the old value on the holder that landed after the invalidation that
    // removed the old value (or, with none, after W was acknowledged), and before the
    // read returned: nothing was left to undo it.
    let landed_after = in_time.map_or(w.complete_time, |i| i.time);
    let fill = fills.landed(h, hold, val, read.complete_time, landed_after);
    // A replica whose primary had dropped the value (an invalidation of any version
    // after the fill, or after W with no fill) before the read began: replication lag.
    if replica {
        let since = fill.map_or(w.invoke_time, |id| {
            h.ops[id as usize].complete_time.min(read.invoke_time)
        });
        let dropped = invals[first..]
            .iter()
            .take_while(|i| i.time <= read.invoke_time)
            .filter(|i| i.node == hold && i.time >= since)
            .last();
        if let Some(i) = dropped {
            let mut c = base.event(i.index);
            c.kind = CauseKind::ReplicaRead;
            return with_fault(c, w.invoke_time);
        }
    }
    // No fill recorded: a set the holder's observer saw in the same window (the
    // service's own fill, which no client of the history recorded).
    if fill.is_none() {
        // In history order, so in time order: from the window's start only.
        let observed = &h.observed[key as usize];
        let from = observed.partition_point(|o| o.time <= landed_after);
        let set = observed[from..]
            .iter()
            .take_while(|o| o.time <= read.complete_time)
            .find(|o| o.node == hold && o.change == crate::model::Change::Set);
        if let Some(s) = set {
            let mut c = base.event(s.index);
            c.kind = CauseKind::FillRace;
            return with_fault(c, w.invoke_time);
        }
    }
    if let Some(id) = fill {
        let mut c = base.op(id).event(in_time.map_or(u64::MAX, |i| i.index));
        c.kind = CauseKind::FillRace;
        if let Some(src) = stale_source(ctx, newer.ops, id, val) {
            c.kind = CauseKind::DatabaseReplicaFill;
            c.source = src;
        }
        return with_fault(c, w.invoke_time);
    }
    if !replica && read.replica && !ctx.topology.declared {
        let mut c = base;
        c.kind = CauseKind::ReplicaRead;
        return with_fault(c, w.invoke_time);
    }
    if let Some(i) = in_time {
        // Invalidated in time, and no fill or replica shows why it still served v.
        return with_fault(base.event(i.index), w.invoke_time);
    }
    // Never invalidated for W.
    if let Some(p) = promoted() {
        let mut c = base.event(p.index);
        c.kind = CauseKind::FailoverPromoted;
        return with_fault(c, w.invoke_time);
    }
    if h.watched.caches.contains(&hold) {
        // Watched from outside: a lost invalidation is proven, unless the observer was
        // blind while it was due.
        if let Some(g) = h.gaps.iter().find(|g| {
            g.cache && g.node == hold && g.from <= read.invoke_time && g.to >= w.invoke_time
        }) {
            return with_fault(base.event(g.index), w.invoke_time);
        }
    } else if !ctx.records_invalidations {
        return with_fault(base, w.invoke_time);
    }
    let mut c = base;
    c.kind = CauseKind::LostInvalidation;
    // An invalidate of the holder that failed or timed out, after the write began.
    if let Some(&id) = newer.ops.iter().find(|&&id| {
        let o = &h.ops[id as usize];
        o.kind == OpKind::Invalidate
            && o.node == hold
            && o.outcome != Outcome::Ok
            && o.invoke_time >= w.invoke_time
            && o.invoke_time <= read.invoke_time
    }) {
        c.op = id;
    }
    with_fault(c, w.invoke_time)
}

/// The db-read a fill's value came from, when it was served by a database node that
/// lagged: same process, same key, the op right before the fill, returning that value,
/// on a standby (or a replica by its role), with a newer write acknowledged before it
/// returned.
fn stale_source(ctx: &Context<'_>, ops: &[u32], fill: u32, val: Val) -> Option<u32> {
    let h = ctx.history;
    let f = &h.ops[fill as usize];
    let pos = ops.iter().position(|&id| id == fill)?;
    let &src = ops[..pos]
        .iter()
        .rev()
        .find(|&&id| h.ops[id as usize].process == f.process)?;
    let d = &h.ops[src as usize];
    if d.kind != OpKind::DbRead || d.outcome != Outcome::Ok || d.value != Some(val) {
        return None;
    }
    let standby = d.replica || ctx.topology.follows(d.node, d.invoke_time).is_some();
    if !standby {
        return None;
    }
    // Behind: a newer version was acknowledged before the db-read returned, so the
    // primary had committed it while the standby still served the old one.
    let behind = ops.iter().any(|&id| {
        let o = &h.ops[id as usize];
        o.kind == OpKind::Write
            && o.outcome == Outcome::Ok
            && o.complete_time < d.complete_time
            && o.value.is_some_and(|v| v.version > val.version)
    });
    behind.then_some(src)
}

/// `Ok(database-lost-write)` when every newer write acknowledged in time was lost and a
/// database failover between the first of them and the read shows when; otherwise
/// `Err(W)`, the write the read's cause is about: the earliest acknowledged newer write
/// the database kept, else the earliest one at all.
fn lost_before<'h>(ctx: &Context<'h>, newer: &Newer<'_>, read: &Op) -> Result<Cause, &'h Op> {
    let h = ctx.history;
    if let Some(w) = h.ops.get(newer.kept as usize) {
        return Err(w);
    }
    let Some(w) = h.ops.get(newer.first as usize) else {
        return Ok(Cause::new(CauseKind::Unexplained));
    };
    match ctx
        .topology
        .database_failover(w.invoke_time, read.invoke_time)
    {
        Some(f) => {
            let mut c = Cause::new(CauseKind::DatabaseLostWrite);
            c.event = f.index;
            Ok(c)
        }
        None => Err(w),
    }
}

/// The likely cause of a stale database read.
pub fn db_cause(ctx: &Context<'_>, read: &Op, newer: &Newer<'_>) -> Cause {
    let w = match lost_before(ctx, newer, read) {
        Ok(c) => return c,
        Err(w) => w,
    };
    let with_fault = |mut c: Cause| {
        if let Some(f) = ctx.fault_during(w.invoke_time, read.invoke_time) {
            c.fault = f.index;
        }
        c
    };
    let mut c = Cause::new(CauseKind::Unexplained);
    c.holder = read.node;
    if let Some(p) = ctx.topology.follows(read.node, read.invoke_time) {
        c.kind = CauseKind::DatabaseReplicaLag;
        c.holder = p;
        return with_fault(c);
    }
    if read.replica {
        c.kind = CauseKind::DatabaseReplicaLag;
        return with_fault(c);
    }
    if let Some(p) = ctx.topology.promoted(
        read.node,
        NodeKind::Database,
        w.invoke_time,
        read.invoke_time,
    ) {
        c.kind = CauseKind::FailoverPromoted;
        c.event = p.index;
        return with_fault(c);
    }
    if !ctx.topology.declared && read.node != NONE && w.node != NONE && read.node != w.node {
        c.kind = CauseKind::DatabaseReplicaLag;
        return with_fault(c);
    }
    with_fault(c)
}
