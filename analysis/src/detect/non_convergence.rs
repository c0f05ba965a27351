//! `non-convergence`: after `final-phase`, a `final-read` on some cache node returned a
//! value other than the database's final value for that key (a miss is fine). A
//! final-read of a key without an ok `db-final-read` cannot be judged.

use super::{AnomalyKind, Detector, Evidence, Found, Key, Sink};
use crate::causes::{cache_cause, Cause};
use crate::explain::{Explaining, Explanation};
use crate::model::History;
use coherence_store::OpKind;

/// The non-convergence check.
pub struct Check;

/// A cache entry that disagreed with the database after the final phase.
#[derive(Debug, Clone)]
pub struct NonConvergence {
    /// The final-read.
    pub read: u32,
    /// The db-final-read that shows the database's final value.
    pub final_read: u32,
    /// The earliest acknowledged write newer than the version read, or
    /// [`NONE`](crate::model::NONE).
    pub newer: u32,
    /// The version the final-read returned.
    pub version: i64,
    /// The likely cause.
    pub cause: Cause,
}

impl Detector for Check {
    fn kind(&self) -> AnomalyKind {
        AnomalyKind::NonConvergence
    }

    fn detect(&self, k: &Key<'_>, out: &mut Sink<'_>) {
        for (id, op) in k.ok_ops(&[OpKind::FinalRead]) {
            if !k.after_final_phase(id) {
                continue;
            }
            // Judged here, misses included: a miss is converged.
            out.judged(1);
            let Some(fin) = k.final_value else {
                out.undecidable(1);
                continue;
            };
            let Some(val) = op.value else { continue };
            if fin.value == val {
                continue;
            }
            let cause = if val.version > fin.value.version {
                Cause::lost_by_database()
            } else {
                cache_cause(
                    k.ctx,
                    k.key,
                    op,
                    val,
                    &k.newer_of(val.version, u64::MAX),
                    k.fills(),
                )
            };
            out.found(NonConvergence {
                read: id,
                final_read: fin.op,
                newer: k.newer_than(val.version).1,
                version: val.version,
                cause,
            });
        }
    }

    fn undecided(&self, h: &History, evidence: &Evidence) -> Option<String> {
        if h.final_phase.is_none() {
            Some("the history has no final-phase event, so convergence cannot be judged".into())
        } else if evidence.judged == 0 {
            Some("no ok final-read follows the final-phase, so convergence cannot be judged".into())
        } else if evidence.undecidable > 0 {
            Some(format!(
                "{} final-read(s) are of keys without an ok db-final-read, so they cannot be judged",
                evidence.undecidable
            ))
        } else {
            None
        }
    }
}

impl Found for NonConvergence {
    fn op(&self) -> u32 {
        self.read
    }

    fn other(&self) -> u32 {
        self.final_read
    }

    fn version(&self) -> i64 {
        self.version
    }

    fn cause(&self) -> Option<Cause> {
        Some(self.cause)
    }

    fn explain(&self, ex: &Explaining<'_>) -> Explanation {
        let h = ex.history();
        let fin = h.finals[ex.key as usize].as_ref();
        let summary = format!(
            "after the final phase, {} of key {}{} returned {}, but the database's final value is {} ({}).",
            ex.name(self.read),
            ex.key_name(),
            ex.on_node(self.read),
            ex.seen(self.read),
            fin.map(|fin| ex.version_of(fin.value)).unwrap_or_default(),
            ex.name(self.final_read)
        );
        // The cycle runs through the writes from the version read up to the database's
        // final one, and the writer of the version read.
        let target = fin.map_or(self.version, |fin| fin.value.version);
        let mut context = ex.index.chain(self.version, target);
        let read = h.ops[self.read as usize].value;
        context.extend(read.and_then(|v| ex.index.writer_of(v)));
        Explanation {
            cause: Some((self.cause, self.newer)),
            ..Explanation::new(
                summary,
                vec![self.read, self.final_read, self.newer],
                context,
                self.version,
            )
        }
    }
}
