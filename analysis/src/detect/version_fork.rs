//! `version-fork`: two different writes are tied to the same key and version: an ok
//! write to the version it was acknowledged with, an info write to every version that
//! any read (`read`, `db-read`, `final-read`, `db-final-read` and its log) showed it
//! with, and `"init"` to version 0 while no write was acknowledged as version 0. One
//! finding per (key, version).

use super::{AnomalyKind, Detector, Evidence, Found, Key, Sink, WriteState};
use crate::explain::{Explaining, Explanation};
use crate::model::{History, Outcome, Val, INIT, NONE};
use coherence_store::{quote, OpKind};
use rustc_hash::FxHashMap;

/// The version-fork check.
pub struct Check;

/// Two writes tied to one version.
#[derive(Debug, Clone)]
pub struct VersionFork {
    /// The first write tied to it (never [`NONE`]).
    pub first: u32,
    /// The second ([`NONE`]: the initial state `"init"`).
    pub second: u32,
    /// The read that tied an info write to the version, or [`NONE`].
    pub shown_by: u32,
    /// The forked version.
    pub version: i64,
}

impl Detector for Check {
    fn kind(&self) -> AnomalyKind {
        AnomalyKind::VersionFork
    }

    fn detect(&self, k: &Key<'_>, out: &mut Sink<'_>) {
        let h = k.history;
        out.judged(k.acked.len() as u64);
        // Versions tied to write ids: version -> [(write id, write op, read op)].
        let mut ties: FxHashMap<i64, Vec<(u32, u32, u32)>> = FxHashMap::default();
        let mut tie = |version: i64, write: u32, op: u32, read: u32| {
            let list = ties.entry(version).or_default();
            if !list.iter().any(|t| t.0 == write) {
                list.push((write, op, read));
            }
        };
        for &(version, _, op) in &k.acked {
            tie(
                version,
                h.ops[op as usize].value.map_or(NONE, |v| v.write),
                op,
                NONE,
            );
        }
        if k.init_in_force {
            tie(0, INIT, NONE, NONE);
        }
        let mut info_tie = |val: Val, read: u32| {
            if let Some(WriteState::Info { op }) = k.states.get(&val.write) {
                tie(val.version, val.write, *op, read);
            }
        };
        let reads = [
            OpKind::Read,
            OpKind::DbRead,
            OpKind::FinalRead,
            OpKind::DbFinalRead,
        ];
        for (id, op) in k.ok_ops(&reads) {
            let Some(val) = op.value else { continue }; // a miss
            info_tie(val, id);
            if op.kind == OpKind::DbFinalRead {
                for &entry in h.logs.get(&id).into_iter().flatten() {
                    info_tie(entry, id);
                }
            }
        }
        let mut forked: Vec<_> = ties.into_iter().filter(|(_, w)| w.len() > 1).collect();
        forked.sort_unstable_by_key(|(v, _)| *v);
        for (version, writes) in forked {
            let mut f = VersionFork {
                first: writes[0].1,
                second: writes[1].1,
                shown_by: if writes[1].2 != NONE {
                    writes[1].2
                } else {
                    writes[0].2
                },
                version,
            };
            if f.first == NONE {
                // "init" is no op; lead with the write that has one.
                std::mem::swap(&mut f.first, &mut f.second);
            }
            out.found(f);
        }
    }

    fn undecided(&self, _: &History, evidence: &Evidence) -> Option<String> {
        (evidence.judged == 0).then(|| {
            "no write was acknowledged, so there was no version to be handed out twice".into()
        })
    }
}

impl Found for VersionFork {
    fn op(&self) -> u32 {
        self.first
    }

    fn other(&self) -> u32 {
        self.second
    }

    fn version(&self) -> i64 {
        self.version
    }

    fn explain(&self, ex: &Explaining<'_>) -> Explanation {
        let h = ex.history();
        let who = |id: u32| {
            if id == NONE {
                "the initial state (\"init\")".to_string()
            } else {
                let o = &h.ops[id as usize];
                format!(
                    "{} ({}, {})",
                    ex.name(id),
                    o.value
                        .map_or("?".to_string(), |v| quote(h.writes.name(v.write))),
                    if o.outcome == Outcome::Ok {
                        "acknowledged"
                    } else {
                        "outcome unknown"
                    }
                )
            }
        };
        let shown = if self.shown_by != NONE {
            format!(
                " ({} showed it as version {})",
                ex.name(self.shown_by),
                self.version
            )
        } else {
            String::new()
        };
        let summary = format!(
            "{} and {} are both version {} of key {}{shown}: the database handed that version out twice, as a failover that loses committed data does.",
            who(self.first),
            who(self.second),
            self.version,
            ex.key_name(),
        );
        Explanation::new(
            summary,
            vec![self.first, self.second, self.shown_by],
            Vec::new(),
            self.version,
        )
    }
}
