//! `monotonic-read`: one process read (`read` or `db-read`) version v of a key and later,
//! in its own order, read version u < v of the same key (misses excepted).

use super::{no_reads, AnomalyKind, Detector, Evidence, Found, Key, Sink, READS};
use crate::explain::{Explaining, Explanation};
use crate::model::History;
use rustc_hash::FxHashMap;

/// The monotonic-read check.
pub struct Check;

/// A read older than an earlier read of its process.
#[derive(Debug, Clone)]
pub struct MonotonicRead {
    /// The later read, of the older version.
    pub read: u32,
    /// The process's earlier read of the highest version so far.
    pub earlier: u32,
    /// The version the later read returned.
    pub version: i64,
}

impl Detector for Check {
    fn kind(&self) -> AnomalyKind {
        AnomalyKind::MonotonicRead
    }

    fn detect(&self, k: &Key<'_>, out: &mut Sink<'_>) {
        // Per process: the highest version read so far, and the read.
        let mut highest: FxHashMap<u32, (i64, u32)> = FxHashMap::default();
        for (id, op) in k.ok_ops(READS) {
            out.judged(1);
            let Some(val) = op.value else { continue }; // a miss
            let seen = highest.entry(op.process).or_insert((val.version, id));
            if seen.0 > val.version {
                out.found(MonotonicRead {
                    read: id,
                    earlier: seen.1,
                    version: val.version,
                });
            } else if val.version > seen.0 {
                *seen = (val.version, id);
            }
        }
    }

    fn undecided(&self, _: &History, evidence: &Evidence) -> Option<String> {
        no_reads(evidence)
    }
}

impl Found for MonotonicRead {
    fn op(&self) -> u32 {
        self.read
    }

    fn other(&self) -> u32 {
        self.earlier
    }

    fn version(&self) -> i64 {
        self.version
    }

    fn explain(&self, ex: &Explaining<'_>) -> Explanation {
        let h = ex.history();
        let op = &h.ops[self.read as usize];
        let earlier = h.ops[self.earlier as usize].value;
        let summary = format!(
            "process {} read version {} of key {} ({}) and later version {} ({}{}).",
            h.process_name(op.process),
            earlier.map_or(0, |v| v.version),
            ex.key_name(),
            ex.name(self.earlier),
            self.version,
            ex.name(self.read),
            ex.on_node(self.read)
        );
        // The cycle runs through the writes between the two versions, and the writer of
        // the newer one.
        let mut context = Vec::new();
        if let Some(v) = earlier {
            context = ex.index.chain(self.version, v.version);
            context.extend(ex.index.writer_of(v));
        }
        Explanation::new(
            summary,
            vec![self.read, self.earlier],
            context,
            self.version,
        )
    }
}
