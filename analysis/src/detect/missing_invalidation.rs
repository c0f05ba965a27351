//! `missing-invalidation`: a committed version, on a watched cache node that held an
//! older version of the key at the commit, never invalidated (nor overwritten with the
//! new version) there by the final phase, as the node's cache observer saw it
//! ([`crate::observers`] holds the rules). Where the observer was blind the pair cannot
//! be judged; without a cache observer the check does not apply.

use super::{AnomalyKind, Detector, Evidence, Found, Key, Sink};
use crate::causes::{Cause, CauseKind};
use crate::check::Context;
use crate::explain::{at, duration, line, CauseView, Explaining, Explanation};
use crate::model::History;
use crate::observers::{missing_cause, Fate, Holding, MissingCause, Pair};
use coherence_store::quote;

/// The missing-invalidation check.
pub struct Check;

/// A commit whose invalidation of a watched node went missing, or came late.
#[derive(Debug, Clone)]
pub struct Awaited {
    /// The commit on the node.
    pub pair: Pair,
    /// The likely cause, when a fault explains it.
    pub cause: Cause,
}

impl Detector for Check {
    fn kind(&self) -> AnomalyKind {
        AnomalyKind::MissingInvalidation
    }

    fn applies(&self, ctx: &Context<'_>) -> Result<(), String> {
        watched(ctx.history)
    }

    fn detect(&self, k: &Key<'_>, out: &mut Sink<'_>) {
        let until = k.history.final_phase.map_or(k.history.end_time, |f| f.1);
        for p in k.pairs() {
            match p.fate {
                Fate::Missing => {
                    out.judged(1);
                    out.found(Awaited {
                        pair: *p,
                        cause: cause_of(k.ctx, p, until),
                    });
                }
                Fate::Blind { .. } | Fate::Pending => {
                    out.judged(1);
                    out.undecidable(1);
                }
                Fate::Invalidated { .. } | Fate::Overwritten { .. } => out.judged(1),
                Fate::Expired { .. } => {}
            }
        }
    }

    fn undecided(&self, h: &History, evidence: &Evidence) -> Option<String> {
        if evidence.undecidable > 0 {
            Some(if h.final_phase.is_none() {
                format!(
                    "{} commit(s) on watched nodes were not invalidated by the end of a history without a final-phase, so whether they ever were cannot be told",
                    evidence.undecidable
                )
            } else {
                format!(
                    "{} commit(s) on watched nodes fell where the node's observer was blind (observer-gap) or the node was killed or failed over (its content changed unseen), so whether they were invalidated cannot be told",
                    evidence.undecidable
                )
            })
        } else if evidence.judged == 0 {
            Some("no watched cache node held an older version of a key when a newer one was committed, so no invalidation was awaited".into())
        } else {
            None
        }
    }
}

/// Whether the history has a cache observer to judge by.
pub(crate) fn watched(h: &History) -> Result<(), String> {
    if h.watched.caches.is_empty() {
        Err("the history has no cache observer (no `observe` event naming cache nodes), so invalidations were not seen".into())
    } else {
        Ok(())
    }
}

/// The cause of a missing or late invalidation, from the faults in force from the write
/// to `until`.
pub(crate) fn cause_of(ctx: &Context<'_>, p: &Pair, until: u64) -> Cause {
    match missing_cause(ctx, p, until) {
        Some((why, index)) => {
            let kind = match why {
                MissingCause::FailoverPromoted => CauseKind::FailoverPromoted,
                MissingCause::InvalidatorDown => CauseKind::InvalidatorDown,
                MissingCause::Partition => CauseKind::Partition,
                MissingCause::Failover => CauseKind::Failover,
            };
            let mut c = Cause::new(kind).event(index);
            c.fault = index;
            c.holder = p.node;
            c
        }
        None => {
            let mut c = Cause::new(CauseKind::Unexplained);
            c.holder = p.node;
            c
        }
    }
}

impl Found for Awaited {
    fn op(&self) -> u32 {
        self.pair.write
    }

    fn other(&self) -> u32 {
        self.pair.node
    }

    fn node(&self) -> u32 {
        self.pair.node
    }

    fn version(&self) -> i64 {
        self.pair.version
    }

    fn cause(&self) -> Option<Cause> {
        Some(self.cause)
    }

    fn explain(&self, ex: &Explaining<'_>) -> Explanation {
        let h = ex.history();
        let p = &self.pair;
        let node = quote(h.node_name(p.node));
        let committed = committed_words(ex, p);
        let summary = match p.fate {
            Fate::Invalidated { time, index } => format!(
                "version {} of key {} was {committed}, when {node} held version {} ({}); {node}'s observer saw its invalidation only at {} (line {}), {} after the commit: later than the bound of {}.",
                p.version,
                ex.key_name(),
                p.held,
                holding_words(ex, p.evidence),
                at(time),
                line(index),
                duration(time.saturating_sub(p.commit)),
                duration(ex.ctx.invalidation_bound.unwrap_or(0)),
            ),
            _ => format!(
                "version {} of key {} was {committed}, when {node} held version {} ({}); {node}'s observer, watching without a gap, saw no invalidation of the key there (and no fill of the new version) by {}.",
                p.version,
                ex.key_name(),
                p.held,
                holding_words(ex, p.evidence),
                match h.final_phase {
                    Some((i, t)) => format!("the final phase at {} (line {})", at(t), line(i)),
                    None => "the end of the history".into(),
                },
            ),
        };
        let mut indices: Vec<u64> = Vec::new();
        if p.commit_index != u64::MAX {
            indices.push(p.commit_index);
        }
        if let Fate::Invalidated { index, .. } = p.fate {
            indices.push(index);
        }
        let c = self.cause;
        let text = match c.kind {
            CauseKind::FailoverPromoted => format!("{node} was promoted by the failover at line {} after the write began, and the invalidation did not reach it", line(c.event)),
            CauseKind::InvalidatorDown => format!("the invalidator was down: the nemesis fault at line {} stopped it while the invalidation was due", line(c.event)),
            CauseKind::Partition => format!("a network fault (line {}) was in force while the invalidation was due", line(c.event)),
            CauseKind::Failover => format!("a failover (line {}) happened while the invalidation was due", line(c.event)),
            _ => "no fault explains it: the invalidation pipeline dropped it".to_string(),
        };
        if c.event != u64::MAX {
            indices.push(c.event);
        }
        let mut proof = vec![p.write];
        match p.evidence {
            Holding::Op(op) => proof.push(op),
            Holding::Sample(index) => indices.push(index),
        }
        Explanation {
            cause: Some((c, p.write)),
            cause_view: Some(CauseView {
                kind: c.kind,
                text,
                indices,
            }),
            no_cycle: Some(
                "an invalidation that never came (or came late) is no cycle of operations: the proof is the commit, what the node held, and what its observer saw after",
            ),
            cycle: false,
            ..Explanation::new(summary, proof, Vec::new(), p.version)
        }
    }
}

/// "read 12 at line 40", or "its observer's read-back at line 41".
pub(crate) fn holding_words(ex: &Explaining<'_>, by: Holding) -> String {
    match by {
        Holding::Op(op) => format!(
            "{} at line {}",
            ex.name(op),
            line(ex.history().ops[op as usize].invoke_index)
        ),
        Holding::Sample(index) => format!("its observer's read-back at line {}", line(index)),
    }
}

/// "committed at 1.2 s (the commit event at line 40)" or "... (write 12 acknowledged)".
pub(crate) fn committed_words(ex: &Explaining<'_>, p: &Pair) -> String {
    if p.commit_index != u64::MAX {
        format!(
            "committed at {} (the change stream's commit at line {}, {})",
            at(p.commit),
            line(p.commit_index),
            ex.name(p.write)
        )
    } else {
        format!(
            "committed at {} ({} acknowledged)",
            at(p.commit),
            ex.name(p.write)
        )
    }
}
