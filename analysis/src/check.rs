//! Running the checks: every key of the history is indexed once ([`Key`]) and handed to
//! every [`Detector`] in turn (keys are checked in parallel); what they found is
//! gathered into [`Findings`], sorted by kind and by the offending operation.
//!
//! The detectors themselves, one per anomaly of the spec, are in [`crate::detect`].

pub use crate::causes::{Cause, CauseKind};
pub use crate::detect::{AnomalyKind, Finding};
use crate::detect::{Detector, Evidence, Key, Sink, DETECTORS};
use crate::faults::{FaultRecord, NemesisLog};
use crate::model::{History, NONE};
use crate::topology::Topology;
use coherence_store::OpKind;
use rayon::prelude::*;

/// A node promoted by a failover: when, and which.
#[derive(Debug, Clone, Copy)]
pub struct Promotion {
    /// Index of the event that says so.
    pub index: u64,
    /// Its time, ns.
    pub time: u64,
    /// The promoted node (interned), or [`NONE`] when it is not a node of the history.
    pub node: u32,
}

/// What every key's check needs to know of the whole history.
pub struct Context<'h> {
    /// The history.
    pub history: &'h History,
    /// Δ in ns.
    pub bound: u64,
    /// Failovers: who was promoted, when.
    pub promotions: Vec<Promotion>,
    /// What the nemesis did.
    pub nemesis: NemesisLog,
    /// Who replicates whom, over time.
    pub topology: Topology,
    /// True when the history records any invalidation (ok or not): without any, a
    /// missing invalidation proves nothing.
    pub records_invalidations: bool,
    /// The invalidation bound in ns, when one is set (`slow-invalidation`).
    pub invalidation_bound: Option<u64>,
    /// The cache nodes the topology names, by region (interned), for reads served by
    /// a service instance rather than a cache node ([`Context::cache_of`]).
    region_caches: rustc_hash::FxHashMap<u32, Vec<u32>>,
    /// Every cache node the topology names with a region.
    pub(crate) declared_caches: rustc_hash::FxHashSet<u32>,
}

impl<'h> Context<'h> {
    /// Gathers failovers and fault intervals from the nemesis events.
    pub fn new(history: &'h History, bound: u64) -> Context<'h> {
        let nemesis = NemesisLog::read(history);
        let mut promotions = Vec::new();
        for f in &nemesis.faults {
            let said = if f.f == coherence_store::faults::FAILOVER {
                f.value.as_ref()
            } else {
                f.outcome.as_ref()
            };
            let Some(promoted) = said
                .and_then(|v| v.get("promoted"))
                .and_then(|p| p.as_str())
            else {
                continue;
            };
            promotions.push(Promotion {
                index: f.index,
                time: f.start_ns,
                node: history.nodes.get(promoted).unwrap_or(NONE),
            });
        }
        let topology = Topology::read(history, &nemesis);
        let records_invalidations = history.invalidations.iter().any(|i| !i.is_empty())
            || history.ops.iter().any(|o| o.kind == OpKind::Invalidate);
        let mut region_caches: rustc_hash::FxHashMap<u32, Vec<u32>> = Default::default();
        let mut declared_caches = rustc_hash::FxHashSet::default();
        let mut regions: Vec<(u32, String)> =
            crate::topology::regions(history).into_iter().collect();
        regions.sort();
        for (node, region) in regions {
            declared_caches.insert(node);
            if let Some(r) = history.regions.get(&region) {
                region_caches.entry(r).or_default().push(node);
            }
        }
        Context {
            history,
            bound,
            promotions,
            nemesis,
            topology,
            records_invalidations,
            invalidation_bound: None,
            region_caches,
            declared_caches,
        }
    }

    /// The cache node whose state `read` saw: its own node, or, for a read served by
    /// a service instance (a node that is not a cache node of the topology, e.g.
    /// `app:r1`), the cache node of its client's region that follows no one then.
    pub fn cache_of(&self, read: &crate::model::Op) -> u32 {
        let h = self.history;
        if read.node == NONE || self.declared_caches.contains(&read.node) {
            return read.node;
        }
        let region = h
            .process_regions
            .get(read.process as usize)
            .copied()
            .unwrap_or(NONE);
        self.region_caches
            .get(&region)
            .and_then(|nodes| {
                nodes
                    .iter()
                    .find(|&&n| self.topology.follows(n, read.invoke_time).is_none())
            })
            .copied()
            .unwrap_or(read.node)
    }

    /// The same context with an invalidation bound (ns).
    pub fn with_invalidation_bound(mut self, bound: Option<u64>) -> Context<'h> {
        self.invalidation_bound = bound;
        self
    }

    /// A fault in force at some time in `[from, to]`.
    pub fn fault_during(&self, from: u64, to: u64) -> Option<&FaultRecord> {
        self.nemesis.active_during(from, to)
    }
}

/// Everything the per-key passes found.
#[derive(Debug, Default)]
pub struct Findings {
    /// All anomalies, sorted by kind, then by the offending op's index.
    pub findings: Vec<Finding>,
    /// Staleness (ns, 0 when fresh) of every ok read and db-read that returned a value.
    pub staleness: Vec<u64>,
    /// What each detector run judged, in the order they ran.
    pub judged: Vec<Judged>,
    /// Every commit on a watched node that held an older version, with what became of
    /// it (for the invalidation lag), when a check judged them.
    pub pairs: Vec<crate::observers::Pair>,
}

/// One detector and what it judged over every key.
#[derive(Clone, Copy)]
pub struct Judged {
    /// The detector.
    pub detector: &'static dyn Detector,
    /// What it judged.
    pub evidence: Evidence,
}

impl std::fmt::Debug for Judged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Judged")
            .field("detector", &self.detector.kind())
            .field("evidence", &self.evidence)
            .finish()
    }
}

impl Judged {
    /// Why the detector cannot vouch for the history, having found nothing.
    pub fn undecided(&self, h: &History) -> Option<String> {
        // Values whose versions the commit order could not give with certainty leave
        // every check undecided.
        if let Some(blind) = &h.unversioned.blind {
            return Some(blind.clone());
        }
        self.detector.undecided(h, &self.evidence)
    }
}

/// Runs every detector ([`DETECTORS`]) on every key, in parallel.
pub fn check(ctx: &Context<'_>) -> Findings {
    check_with(ctx, DETECTORS)
}

/// Runs the given detectors on every key, in parallel.
pub fn check_with(ctx: &Context<'_>, detectors: &[&'static dyn Detector]) -> Findings {
    let h = ctx.history;
    let empty = || Part {
        findings: Vec::new(),
        staleness: Vec::new(),
        evidence: vec![Evidence::default(); detectors.len()],
        pairs: Vec::new(),
    };
    let all = (0..h.keys.len() as u32)
        .into_par_iter()
        .with_min_len(16)
        .fold(empty, |mut part, key| {
            let k = Key::new(ctx, key);
            for (d, evidence) in detectors.iter().zip(&mut part.evidence) {
                let mut sink = Sink::new(
                    d.kind(),
                    key,
                    h,
                    &mut part.findings,
                    &mut part.staleness,
                    evidence,
                );
                if d.applies(ctx).is_ok() {
                    d.detect(&k, &mut sink);
                }
            }
            part.pairs.extend(k.take_pairs());
            part
        })
        .reduce(empty, |mut a, mut b| {
            if a.findings.len() < b.findings.len() {
                std::mem::swap(&mut a.findings, &mut b.findings);
            }
            a.findings.append(&mut b.findings);
            if a.staleness.len() < b.staleness.len() {
                std::mem::swap(&mut a.staleness, &mut b.staleness);
            }
            a.staleness.append(&mut b.staleness);
            for (x, y) in a.evidence.iter_mut().zip(b.evidence) {
                *x += y;
            }
            a.pairs.append(&mut b.pairs);
            a
        });
    let mut findings = all.findings;
    findings.sort_unstable_by_key(|f| f.order());
    let mut pairs = all.pairs;
    pairs.sort_unstable_by_key(|p| (p.key, p.version, p.node));
    Findings {
        findings,
        pairs,
        staleness: all.staleness,
        judged: detectors
            .iter()
            .zip(all.evidence)
            .map(|(&detector, evidence)| Judged { detector, evidence })
            .collect(),
    }
}

/// What one thread of [`check_with`] gathered.
struct Part {
    findings: Vec<Finding>,
    staleness: Vec<u64>,
    evidence: Vec<Evidence>,
    pairs: Vec<crate::observers::Pair>,
}
