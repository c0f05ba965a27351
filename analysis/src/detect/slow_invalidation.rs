//! `slow-invalidation`, only when an invalidation bound is set: as
//! `missing-invalidation`, but the node's observer did see the invalidation, later than
//! the bound after the commit ([`crate::observers`] holds the rules).

use super::missing_invalidation::{cause_of, watched, Awaited};
use super::{AnomalyKind, Detector, Evidence, Key, Sink};
use crate::check::Context;
use crate::model::History;
use crate::observers::Fate;

/// The slow-invalidation check.
pub struct Check;

impl Detector for Check {
    fn kind(&self) -> AnomalyKind {
        AnomalyKind::SlowInvalidation
    }

    fn applies(&self, ctx: &Context<'_>) -> Result<(), String> {
        if ctx.invalidation_bound.is_none() {
            return Err("no invalidation bound was set ([checker] invalidation_bound, --invalidation-bound), so no invalidation can be late".into());
        }
        watched(ctx.history)
    }

    fn detect(&self, k: &Key<'_>, out: &mut Sink<'_>) {
        let Some(bound) = k.ctx.invalidation_bound else {
            return;
        };
        for p in k.pairs() {
            match p.fate {
                Fate::Invalidated { time, .. } => {
                    out.judged(1);
                    if time.saturating_sub(p.commit) > bound {
                        out.found(Awaited {
                            pair: *p,
                            cause: cause_of(k.ctx, p, time),
                        });
                    }
                }
                Fate::Blind { .. } => {
                    out.judged(1);
                    out.undecidable(1);
                }
                Fate::Missing | Fate::Overwritten { .. } => out.judged(1),
                Fate::Pending | Fate::Expired { .. } => {}
            }
        }
    }

    fn undecided(&self, _: &History, evidence: &Evidence) -> Option<String> {
        if evidence.undecidable > 0 {
            Some(format!(
                "{} commit(s) on watched nodes fell where the node's observer was blind (observer-gap) or the node was killed or failed over (its content changed unseen), so when they were invalidated cannot be told",
                evidence.undecidable
            ))
        } else if evidence.judged == 0 {
            Some("no watched cache node held an older version of a key when a newer one was committed, so no invalidation was awaited".into())
        } else {
            None
        }
    }
}
