//! `read-your-writes`: one process wrote version v of a key (ok) and later read (`read`
//! or `db-read`) version u < v of it (misses excepted).

use super::{no_reads, AnomalyKind, Detector, Evidence, Found, Key, Sink};
use crate::explain::{at, Explaining, Explanation};
use crate::model::History;
use coherence_store::OpKind;
use rustc_hash::FxHashMap;

/// The read-your-writes check.
pub struct Check;

/// A read older than its process's own acknowledged write.
#[derive(Debug, Clone)]
pub struct ReadYourWrites {
    /// The read.
    pub read: u32,
    /// The process's write of the highest version so far.
    pub write: u32,
    /// The version read.
    pub version: i64,
}

impl Detector for Check {
    fn kind(&self) -> AnomalyKind {
        AnomalyKind::ReadYourWrites
    }

    fn detect(&self, k: &Key<'_>, out: &mut Sink<'_>) {
        // Per process: the highest version written (ok) so far, and the write.
        let mut written: FxHashMap<u32, (i64, u32)> = FxHashMap::default();
        for (id, op) in k.ok_ops(&[OpKind::Write, OpKind::Read, OpKind::DbRead]) {
            if op.kind == OpKind::Write {
                if let Some(val) = op.value {
                    let w = written.entry(op.process).or_insert((val.version, id));
                    if val.version > w.0 {
                        *w = (val.version, id);
                    }
                }
                continue;
            }
            out.judged(1);
            let Some(val) = op.value else { continue }; // a miss
            if let Some(&(v, write)) = written.get(&op.process) {
                if v > val.version {
                    out.found(ReadYourWrites {
                        read: id,
                        write,
                        version: val.version,
                    });
                }
            }
        }
    }

    fn undecided(&self, _: &History, evidence: &Evidence) -> Option<String> {
        no_reads(evidence)
    }
}

impl Found for ReadYourWrites {
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
        let w = &h.ops[self.write as usize];
        let summary = format!(
            "process {} wrote version {} of key {} ({}, acknowledged at {}) and later read version {} ({}{}).",
            h.process_name(op.process),
            w.value.map_or(0, |v| v.version),
            ex.key_name(),
            ex.name(self.write),
            at(w.complete_time),
            self.version,
            ex.name(self.read),
            ex.on_node(self.read)
        );
        // The cycle runs through the writes from the version read up to the process's.
        let target = w.value.map_or(self.version, |v| v.version);
        Explanation::new(
            summary,
            vec![self.read, self.write],
            ex.index.chain(self.version, target),
            self.version,
        )
    }
}
