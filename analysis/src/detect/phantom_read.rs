//! `phantom-read`: an ok `read`, `final-read` or `db-read` returned a versioned value
//! that no write produced: its write id belongs to no `write` (nor `"init"`), or to one
//! that failed, or it pairs a write id with a version other than the one that write was
//! acknowledged with. A phantom read is no cycle.

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
    }

    fn undecided(&self, _: &History, evidence: &Evidence) -> Option<String> {
        (evidence.judged == 0).then(|| {
            "no read, db-read or final-read returned a value, so there was no value to trace to its write".into()
        })
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
            PhantomWhy::NoSuchWrite => format!(
                "no write of key {} in the history has that id",
                ex.key_name()
            ),
        };
        let summary = format!(
            "{} of key {}{} returned {}, but {why}.",
            ex.name(self.read),
            ex.key_name(),
            ex.on_node(self.read),
            ex.seen(self.read)
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
