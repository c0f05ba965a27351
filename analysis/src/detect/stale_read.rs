//! `stale-read`: an ok `read` or `db-read` R of a key returned version v, and some ok
//! `write` W of the key with version u > v has `W.complete + Δ < R.invoke`. Its
//! staleness is `R.invoke − min{W.complete : W ok, W.version > v}`; a miss is never
//! stale. It also measures the staleness of every read that returned a value, the
//! distribution results show.

use super::{no_reads, AnomalyKind, Detector, Evidence, Found, Key, Sink, READS};
use crate::causes::{cache_cause, db_cause, Cause};
use crate::explain::{at, duration, Explaining, Explanation};
use crate::model::History;
use coherence_store::OpKind;

/// The stale-read check.
pub struct Check;

/// A stale read.
#[derive(Debug, Clone)]
pub struct StaleRead {
    /// The read.
    pub read: u32,
    /// The earliest acknowledged newer write.
    pub newer: u32,
    /// The version read.
    pub version: i64,
    /// Its staleness, ns.
    pub staleness: u64,
    /// The likely cause.
    pub cause: Cause,
}

impl Detector for Check {
    fn kind(&self) -> AnomalyKind {
        AnomalyKind::StaleRead
    }

    fn detect(&self, k: &Key<'_>, out: &mut Sink<'_>) {
        let ctx = k.ctx;
        for (id, op) in k.ok_ops(READS) {
            out.judged(1);
            let Some(val) = op.value else { continue }; // a miss
            let (first_ack, newer) = k.newer_than(val.version);
            let staleness = op.invoke_time.saturating_sub(first_ack);
            out.staleness(if first_ack == u64::MAX { 0 } else { staleness });
            if first_ack == u64::MAX || first_ack.saturating_add(ctx.bound) >= op.invoke_time {
                continue;
            }
            let kept = k.newer_of(val.version, op.invoke_time);
            let cause = if op.kind == OpKind::DbRead {
                db_cause(ctx, op, &kept)
            } else {
                cache_cause(ctx, k.key, op, val, &kept, k.fills())
            };
            out.found(StaleRead {
                read: id,
                newer,
                version: val.version,
                staleness,
                cause,
            });
        }
    }

    fn undecided(&self, _: &History, evidence: &Evidence) -> Option<String> {
        no_reads(evidence)
    }
}

impl Found for StaleRead {
    fn op(&self) -> u32 {
        self.read
    }

    fn other(&self) -> u32 {
        self.newer
    }

    fn version(&self) -> i64 {
        self.version
    }

    fn cause(&self) -> Option<Cause> {
        Some(self.cause)
    }

    fn explain(&self, ex: &Explaining<'_>) -> Explanation {
        let h = ex.history();
        let op = &h.ops[self.read as usize];
        let w = &h.ops[self.newer as usize];
        let u = w.value.map_or(0, |v| v.version);
        let summary = format!(
            "{} of key {}{} returned {} at {}, but version {u} had been acknowledged at {} ({}), {} earlier; the bound allows {}.",
            ex.name(self.read),
            ex.key_name(),
            ex.on_node(self.read),
            ex.seen(self.read),
            at(op.invoke_time),
            at(w.complete_time),
            ex.name(self.newer),
            duration(self.staleness),
            duration(ex.ctx.bound),
        );
        // The cycle runs through the writes from the version read up to the newer one.
        let target = w.value.map_or(self.version, |v| v.version);
        Explanation {
            staleness_ns: Some(self.staleness),
            cause: Some((self.cause, self.newer)),
            ..Explanation::new(
                summary,
                vec![self.read, self.newer],
                ex.index.chain(self.version, target),
                self.version,
            )
        }
    }
}
