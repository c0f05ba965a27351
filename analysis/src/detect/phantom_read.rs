//! `phantom-read`: an ok `read`, `final-read` or `db-read` returned a versioned value
//! that no write produced: its write id belongs to no `write` (nor `"init"`), or to one
//! that failed, or it pairs a write id with a version other than the one that write was
//! acknowledged with; or, in a history whose values name only their write, its write id
//! no `commit` event shows (docs/history.md, *Values without versions*). A phantom read
//! is no cycle.

use super::{AnomalyKind, Detector, Evidence, Found, Key, Sink, WriteState};
use crate::explain::{line, Explaining, Explanation};
use crate::model::{History, INIT, NONE};
use coherence_store::OpKind;

/// The phantom-read check.
pub struct Check;

/// Why a read is a phantom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhantomWhy {
    /// No write of the key has that id (nor is it `"init"` at version 0).
    NoSuchWrite,
    /// The write failed.
    FailedWrite,
    /// The write was acknowledged with another version.
    WrongVersion,
    /// No commit in the database's change stream shows the write (a value without a
    /// version).
    NeverCommitted,
}

/// A phantom read.
#[derive(Debug, Clone)]
pub struct PhantomRead {
    /// The read.
    pub read: u32,
    /// The write whose id was read ([`NONE`]: none, or `"init"`).
    pub write: u32,
    /// The version read.
    pub version: i64,
    /// Why it is a phantom.
    pub why: PhantomWhy,
}

impl Detector for Check {
    fn kind(&self) -> AnomalyKind {
        AnomalyKind::PhantomRead
    }

    fn detect(&self, k: &Key<'_>, out: &mut Sink<'_>) {
        for (id, op) in k.ok_ops(&[OpKind::Read, OpKind::DbRead, OpKind::FinalRead]) {
            let Some(val) = op.value else { continue }; // a miss
            out.judged(1);
            let phantom = if val.write == INIT {
                (!k.init_in_force || val.version != 0).then_some((PhantomWhy::WrongVersion, NONE))
            } else {
                match k.states.get(&val.write) {
                    None => Some((PhantomWhy::NoSuchWrite, NONE)),
                    Some(WriteState::Fail { op }) => Some((PhantomWhy::FailedWrite, *op)),
                    Some(WriteState::Ok { version, op }) if *version != val.version => {
                        Some((PhantomWhy::WrongVersion, *op))
                    }
                    // Acknowledged with that version, or an info write that may have
                    // taken effect.
                    Some(WriteState::Ok { .. } | WriteState::Info { .. }) => None,
                }
            };
            if let Some((why, write)) = phantom {
                out.found(PhantomRead {
                    read: id,
                    write,
                    version: val.version,
                    why,
                });
            }
        }
        // Values without a version whose write no commit shows.
        let h = k.history;
        for &(read, write) in h.unversioned.phantoms.get(&k.key).into_iter().flatten() {
            out.judged(1);
            let write_op = match k.states.get(&write) {
                Some(
                    WriteState::Ok { op, .. } | WriteState::Fail { op } | WriteState::Info { op },
                ) => *op,
                None => NONE,
            };
            out.found(PhantomRead {
                read,
                write: write_op,
                version: coherence_store::UNVERSIONED,
                why: PhantomWhy::NeverCommitted,
            });
        }
    }

    fn undecided(&self, _: &History, evidence: &Evidence) -> Option<String> {
        (evidence.judged == 0).then(|| {
            "no read, db-read or final-read returned a value, so there was no value to trace to its write".into()
        })
    }
}

impl PhantomRead {
    /// The write id it read.
    fn written(&self, h: &History) -> u32 {
        h.unversioned
            .phantoms
            .get(&h.ops[self.read as usize].key)
            .and_then(|l| l.iter().find(|p| p.0 == self.read))
            .map_or_else(
                || h.ops[self.read as usize].value.map_or(INIT, |v| v.write),
                |p| p.1,
            )
    }
}

impl Found for PhantomRead {
    fn op(&self) -> u32 {
        self.read
    }

    fn other(&self) -> u32 {
        self.write
    }

    fn version(&self) -> i64 {
        self.version
    }

    fn explain(&self, ex: &Explaining<'_>) -> Explanation {
        let h = ex.history();
        let op = &h.ops[self.read as usize];
        let write = h.ops.get(self.write as usize);
        let why = match self.why {
            PhantomWhy::FailedWrite => format!(
                "{} failed (line {}): it never took effect, so its value cannot be read",
                ex.name(self.write),
                line(write.map_or(0, |o| o.complete_index))
            ),
            PhantomWhy::WrongVersion if op.value.is_some_and(|v| v.write == INIT) => {
                "the initial state \"init\" is version 0 only (and only when no write was acknowledged as version 0)".to_string()
            }
            PhantomWhy::WrongVersion => format!(
                "{} was acknowledged as version {}",
                ex.name(self.write),
                write.and_then(|o| o.value).map_or(0, |v| v.version)
            ),
            PhantomWhy::NeverCommitted => format!(
                "no commit in the database's change stream shows that write{}",
                match write.map(|w| w.outcome) {
                    Some(crate::model::Outcome::Ok) => " (its client was told it happened)",
                    Some(crate::model::Outcome::Fail) => " (it failed)",
                    Some(crate::model::Outcome::Info) => " (its outcome was unknown)",
                    None => " (nor does any write of the history have that id)",
                }
            ),
            PhantomWhy::NoSuchWrite => format!(
                "no write of key {} in the history has that id",
                ex.key_name()
            ),
        };
        // A value without a version no commit shows was taken from the read (every
        // other check sees a miss): name the write it returned.
        let seen = if self.why == PhantomWhy::NeverCommitted {
            format!(
                "{{\"write\": {}}}",
                coherence_store::quote(h.writes.name(self.written(h)))
            )
        } else {
            ex.seen(self.read)
        };
        let summary = format!(
            "{} of key {}{} returned {seen}, but {why}.",
            ex.name(self.read),
            ex.key_name(),
            ex.on_node(self.read),
        );
        Explanation {
            no_cycle: Some(
                "a phantom read is no cycle: no committed write produced the value it saw",
            ),
            ..Explanation::new(
                summary,
                vec![self.read, self.write],
                Vec::new(),
                self.version,
            )
        }
    }
}
