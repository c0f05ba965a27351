//! `lost-write`: an ok `write` whose `(version, write)` is missing from the key's final
//! database `log`; without a `log`, one whose version is above the final database
//! version. A key with acknowledged writes but no ok `db-final-read` cannot be judged.
//! In a history whose values name only their write, an ok write that no `commit` event
//! shows is lost too (docs/history.md, *Values without versions*).

use super::{AnomalyKind, Detector, Evidence, Found, Key, Sink};
use crate::explain::{at, Explaining, Explanation};
use crate::model::{History, NONE};

/// The lost-write check.
pub struct Check;

/// An acknowledged write the database lost.
#[derive(Debug, Clone)]
pub struct LostWrite {
    /// The write.
    pub write: u32,
    /// The db-final-read that shows the database's final state.
    pub final_read: u32,
    /// The version it was acknowledged with.
    pub version: i64,
}

impl Detector for Check {
    fn kind(&self) -> AnomalyKind {
        AnomalyKind::LostWrite
    }

    fn detect(&self, k: &Key<'_>, out: &mut Sink<'_>) {
        let uncommitted = k.history.unversioned.uncommitted.get(&k.key);
        for &write in uncommitted.into_iter().flatten() {
            out.judged(1);
            out.found(LostWrite {
                write,
                final_read: NONE,
                version: coherence_store::UNVERSIONED,
            });
        }
        let Some(fin) = k.final_value else {
            // Keys, not writes: "n key(s) ... cannot be judged".
            if !k.acked.is_empty() {
                out.undecidable(1);
            }
            return;
        };
        out.judged(k.acked.len() as u64);
        for &(version, _, id) in &k.acked {
            if k.is_lost(version, id) {
                out.found(LostWrite {
                    write: id,
                    final_read: fin.op,
                    version,
                });
            }
        }
    }

    fn undecided(&self, _: &History, evidence: &Evidence) -> Option<String> {
        if evidence.undecidable > 0 {
            Some(format!(
                "{} key(s) with acknowledged writes have no ok db-final-read, so their lost writes cannot be judged",
                evidence.undecidable
            ))
        } else if evidence.judged == 0 {
            Some("no write was acknowledged, so there was none the database could lose".into())
        } else {
            None
        }
    }
}

impl Found for LostWrite {
    fn op(&self) -> u32 {
        self.write
    }

    fn other(&self) -> u32 {
        self.final_read
    }

    fn version(&self) -> i64 {
        self.version
    }

    fn explain(&self, ex: &Explaining<'_>) -> Explanation {
        let h = ex.history();
        let op = &h.ops[self.write as usize];
        if self.final_read == NONE {
            let summary = format!(
                "{} of key {} was acknowledged at {}, but no commit in the database's change stream shows it: the database never committed it.",
                ex.name(self.write),
                ex.key_name(),
                at(op.complete_time),
            );
            return Explanation::new(summary, vec![self.write], Vec::new(), self.version);
        }
        let how = match h.finals[ex.key as usize].as_ref() {
            Some(fin) if fin.log.is_some() => {
                "its log of every version it still holds lacks it".to_string()
            }
            Some(fin) => format!("it ends at version {}", fin.value.version),
            None => String::new(),
        };
        let summary = format!(
            "{} of key {} was acknowledged as {} at {}, but the database's final state ({}) has lost it: {how}.",
            ex.name(self.write),
            ex.key_name(),
            ex.seen(self.write),
            at(op.complete_time),
            ex.name(self.final_read)
        );
        Explanation::new(
            summary,
            vec![self.write, self.final_read],
            Vec::new(),
            self.version,
        )
    }
}
