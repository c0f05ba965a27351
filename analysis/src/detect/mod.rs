//! The detectors: one module per anomaly of the spec, each a [`Detector`] with its own
//! finding type, its own rule for what the history must hold before it can vouch for
//! it, and its own explanation as data. [`DETECTORS`] lists them in the order of the
//! spec.
//!
//! Adding a check: a module here with a `Check` that implements [`Detector`] (what it
//! finds on a key, what it judged, when that leaves it unknown) and a finding type that
//! implements [`Found`] (its operations and its [`Explanation`]); then its `pub mod`
//! line, its variant of [`AnomalyKind`] (the name in results and `--checks`) and its
//! line in [`DETECTORS`], all in this file. Counting, results, the text, JUnit and the
//! report take it from there; the spec (`docs/history.md`) and its brute-force twin in
//! `tests/brute` get its definition, and the per-detector property test holds it to it.
//!
//! What every detector needs to know of a key (its acknowledged writes by version, the
//! state of every write id, the earliest acknowledgement of a newer write, the
//! database's final state, the fills) is built once per key as a [`Key`] and handed to
//! each of them in turn ([`crate::check`] runs the keys in parallel). Every definition
//! follows `shared/spec/history.md` word for word; the property tests in `tests/` hold
//! each detector against a brute-force reading of the same text.

pub mod lost_write;
pub mod missing_invalidation;
pub mod monotonic_read;
pub mod non_convergence;
pub mod phantom_read;
pub mod read_your_writes;
pub mod slow_invalidation;
pub mod stale_read;
pub mod version_fork;

use crate::causes::{Cause, Fills, Newer};
use crate::check::Context;
use crate::explain::{Explaining, Explanation};
use crate::model::{Final, History, Outcome, Val, NONE};
use crate::observers::Pair;
use coherence_store::OpKind;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;
use std::cell::OnceCell;
use std::fmt;

/// Every check, in the order of the spec (the order of results and reports).
pub static DETECTORS: &[&dyn Detector] = &[
    &stale_read::Check,
    &phantom_read::Check,
    &version_fork::Check,
    &lost_write::Check,
    &monotonic_read::Check,
    &read_your_writes::Check,
    &non_convergence::Check,
    &missing_invalidation::Check,
    &slow_invalidation::Check,
];

/// The anomalies of the spec. The names (`stale-read`, ...) are the variants in
/// kebab-case, in `results.json`, the CLI's `--checks` and everywhere they are shown.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
pub enum AnomalyKind {
    /// A read returned a version older than one acknowledged more than Δ before it began.
    StaleRead,
    /// A read returned a value no write produced.
    PhantomRead,
    /// Two writes tied to the same key and version.
    VersionFork,
    /// An acknowledged write missing from the database's final state.
    LostWrite,
    /// A process read an older version after a newer one.
    MonotonicRead,
    /// A process read a version older than its own acknowledged write.
    ReadYourWrites,
    /// After the final phase a cache node disagreed with the database.
    NonConvergence,
    /// A watched cache node holding an older version was never invalidated for a commit.
    MissingInvalidation,
    /// A watched cache node's invalidation for a commit came later than the bound.
    SlowInvalidation,
}

impl AnomalyKind {
    /// All of them, in the order of the spec.
    pub const ALL: &'static [AnomalyKind] = <AnomalyKind as strum::VariantArray>::VARIANTS;

    /// The spec's name.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// The kind a spec name names (`"stale-read"`, ...).
    pub fn parse(name: &str) -> Option<AnomalyKind> {
        AnomalyKind::ALL.iter().copied().find(|k| k.name() == name)
    }
}

impl std::str::FromStr for AnomalyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<AnomalyKind, String> {
        AnomalyKind::parse(s.trim()).ok_or_else(|| {
            let names: Vec<&str> = AnomalyKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown check {s:?}: the checks are {}", names.join(", "))
        })
    }
}

/// One check of the spec.
pub trait Detector: Sync {
    /// The anomaly it finds.
    fn kind(&self) -> AnomalyKind;

    /// Whether the check applies to the history at all (`Err`: why not; it is then
    /// reported as not run, with that reason): the observer checks need an observer,
    /// `slow-invalidation` a bound.
    fn applies(&self, _ctx: &Context<'_>) -> Result<(), String> {
        Ok(())
    }

    /// Looks at one key: reports each anomaly to `out`, and counts there what it judged.
    fn detect(&self, key: &Key<'_>, out: &mut Sink<'_>);

    /// Why, having found nothing, it cannot vouch for the history (`None`: it can),
    /// from what it counted over every key.
    fn undecided(&self, h: &History, evidence: &Evidence) -> Option<String>;
}

/// What a detector judged, summed over the keys: the unit is the detector's own (reads,
/// writes, final reads), and so is the rule that turns it into "unknown"
/// ([`Detector::undecided`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    /// How many things it judged.
    pub judged: u64,
    /// How many things it would have judged but the history cannot decide.
    pub undecidable: u64,
}

impl std::ops::AddAssign for Evidence {
    fn add_assign(&mut self, other: Evidence) {
        self.judged += other.judged;
        self.undecidable += other.undecidable;
    }
}

/// An anomaly as its detector found it: the detector's own finding type, which knows
/// how to explain itself.
pub trait Found: fmt::Debug + Send + Sync {
    /// The offending operation (the one counted, and whose node and process the
    /// breakdowns count it under).
    fn op(&self) -> u32;

    /// The other operation of the proof ([`NONE`] when there is none): with the version,
    /// it orders two findings of one kind at one operation.
    fn other(&self) -> u32 {
        NONE
    }

    /// The version at stake: the version read, written or forked.
    fn version(&self) -> i64;

    /// The node the breakdowns count it under, when it is not the offending
    /// operation's ([`NONE`]: the operation's): the cache node an invalidation was due on.
    fn node(&self) -> u32 {
        NONE
    }

    /// The likely cause, for the anomalies that name one.
    fn cause(&self) -> Option<Cause> {
        None
    }

    /// Its explanation as data: the sentence, the operations of the proof, the cause.
    fn explain(&self, ex: &Explaining<'_>) -> Explanation;
}

/// One anomaly of any kind: what counting, ordering and the breakdowns need, and the
/// detector's own finding.
#[derive(Debug)]
pub struct Finding {
    /// Which anomaly.
    pub kind: AnomalyKind,
    /// Interned key.
    pub key: u32,
    /// The history index of the offending op's invoke (for ordering).
    pub index: u64,
    found: Box<dyn Found>,
}

impl Finding {
    /// The offending operation.
    pub fn op(&self) -> u32 {
        self.found.op()
    }

    /// The version at stake.
    pub fn version(&self) -> i64 {
        self.found.version()
    }

    /// The likely cause (stale reads and non-convergence).
    pub fn cause(&self) -> Option<Cause> {
        self.found.cause()
    }

    /// The node it is counted under: the detector's, else the offending operation's.
    pub fn node(&self, h: &History) -> u32 {
        match self.found.node() {
            NONE => h.ops.get(self.op() as usize).map_or(NONE, |o| o.node),
            n => n,
        }
    }

    /// The detector's own finding.
    pub fn found(&self) -> &dyn Found {
        &*self.found
    }

    /// The order of results: by kind, then by the offending op's index.
    pub(crate) fn order(&self) -> (AnomalyKind, u64, u32, i64) {
        (
            self.kind,
            self.index,
            self.found.other(),
            self.found.version(),
        )
    }
}

/// Where a detector reports what it found on one key.
pub struct Sink<'a> {
    kind: AnomalyKind,
    key: u32,
    history: &'a History,
    findings: &'a mut Vec<Finding>,
    staleness: &'a mut Vec<u64>,
    evidence: &'a mut Evidence,
}

impl<'a> Sink<'a> {
    /// A sink for `kind`'s findings on `key`.
    pub(crate) fn new(
        kind: AnomalyKind,
        key: u32,
        history: &'a History,
        findings: &'a mut Vec<Finding>,
        staleness: &'a mut Vec<u64>,
        evidence: &'a mut Evidence,
    ) -> Sink<'a> {
        Sink {
            kind,
            key,
            history,
            findings,
            staleness,
            evidence,
        }
    }

    /// Reports an anomaly.
    pub fn found(&mut self, found: impl Found + 'static) {
        let index = self
            .history
            .ops
            .get(found.op() as usize)
            .map_or(u64::MAX, |o| o.invoke_index);
        self.findings.push(Finding {
            kind: self.kind,
            key: self.key,
            index,
            found: Box::new(found),
        });
    }

    /// Counts `n` things judged.
    pub fn judged(&mut self, n: u64) {
        self.evidence.judged += n;
    }

    /// Counts `n` things the history cannot decide.
    pub fn undecidable(&mut self, n: u64) {
        self.evidence.undecidable += n;
    }

    /// Adds a read's staleness (ns, 0 when fresh) to the distribution results show.
    pub fn staleness(&mut self, ns: u64) {
        self.staleness.push(ns);
    }
}

/// The state of a write id.
#[derive(Debug, Clone, Copy)]
pub enum WriteState {
    /// Acknowledged, with this version.
    Ok {
        /// The version it was acknowledged with.
        version: i64,
        /// The write op.
        op: u32,
    },
    /// Its outcome is unknown.
    Info {
        /// The (first) write op.
        op: u32,
    },
    /// It failed.
    Fail {
        /// The (first) write op.
        op: u32,
    },
}

/// One key of the history, indexed once for every detector.
pub struct Key<'h> {
    /// What every key's check needs of the whole history.
    pub ctx: &'h Context<'h>,
    /// The history.
    pub history: &'h History,
    /// Interned key.
    pub key: u32,
    /// The key's ops, in invoke order.
    pub ops: &'h [u32],
    /// Acknowledged writes as (version, complete time, op), sorted.
    pub acked: Vec<(i64, u64, u32)>,
    /// The state of every write id of the key: its (last) ok write, else its first
    /// write.
    pub states: FxHashMap<u32, WriteState>,
    /// True when `"init"` is version 0: no write was acknowledged as version 0.
    pub init_in_force: bool,
    /// The database's final state of the key (its last ok db-final-read), if any.
    pub final_value: Option<&'h Final>,
    /// The index of the `final-phase` event, if any.
    pub final_phase: Option<u64>,
    /// suffix[i]: the earliest acknowledgement among acked[i..], and its op.
    suffix: Vec<(u64, u32)>,
    /// kept[i]: as suffix, over the writes the database did not lose.
    kept: Vec<(u64, u32)>,
    /// The values the final log holds, when it has one.
    held: Option<FxHashSet<Val>>,
    /// The key's fills, indexed when a cause first needs them.
    fills: OnceCell<Fills>,
    /// The key's commits on watched nodes, judged when a check first needs them.
    pairs: OnceCell<Vec<Pair>>,
}

impl<'h> Key<'h> {
    /// Indexes one key.
    pub fn new(ctx: &'h Context<'h>, key: u32) -> Key<'h> {
        let h = ctx.history;
        let ops = &h.key_ops[key as usize][..];
        let mut acked: Vec<(i64, u64, u32)> = Vec::new();
        let mut states: FxHashMap<u32, WriteState> = FxHashMap::default();
        for &id in ops {
            let op = &h.ops[id as usize];
            if op.kind != OpKind::Write {
                continue;
            }
            let Some(val) = op.value else { continue };
            match op.outcome {
                // Acknowledged, but no commit shows it (a history without versions): a
                // lost write with no place in the version order.
                Outcome::Ok if val.version < 0 => {}
                Outcome::Ok => {
                    acked.push((val.version, op.complete_time, id));
                    states.insert(
                        val.write,
                        WriteState::Ok {
                            version: val.version,
                            op: id,
                        },
                    );
                }
                Outcome::Info => {
                    states
                        .entry(val.write)
                        .or_insert(WriteState::Info { op: id });
                }
                Outcome::Fail => {
                    states
                        .entry(val.write)
                        .or_insert(WriteState::Fail { op: id });
                }
            }
        }
        acked.sort_unstable();
        let init_in_force = !acked.iter().any(|a| a.0 == 0);
        let mut suffix: Vec<(u64, u32)> = vec![(u64::MAX, NONE); acked.len() + 1];
        for i in (0..acked.len()).rev() {
            suffix[i] = suffix[i + 1].min((acked[i].1, acked[i].2));
        }
        let final_value = h.finals[key as usize].as_ref();
        let held: Option<FxHashSet<Val>> = final_value
            .and_then(|f| f.log.as_ref())
            .map(|l| l.iter().copied().collect());
        let mut kept: Vec<(u64, u32)> = vec![(u64::MAX, NONE); acked.len() + 1];
        for i in (0..acked.len()).rev() {
            let (version, time, op) = acked[i];
            kept[i] = if lost(h, final_value, held.as_ref(), version, op) {
                kept[i + 1]
            } else {
                kept[i + 1].min((time, op))
            };
        }
        Key {
            ctx,
            history: h,
            key,
            ops,
            acked,
            states,
            init_in_force,
            final_value,
            final_phase: h.final_phase.map(|f| f.0),
            suffix,
            kept,
            held,
            fills: OnceCell::new(),
            pairs: OnceCell::new(),
        }
    }

    /// Every committed version of the key on every watched node that held an older one,
    /// with what became of it ([`crate::observers`]).
    pub fn pairs(&self) -> &[Pair] {
        self.pairs.get_or_init(|| {
            let committed =
                crate::observers::committed(self.history, self.key, self.ops, |v, op| {
                    self.is_lost(v, op)
                });
            crate::observers::pairs(self.ctx, self.key, self.ops, &committed)
        })
    }

    /// The pairs, if a check judged them.
    pub(crate) fn take_pairs(self) -> Vec<Pair> {
        self.pairs.into_inner().unwrap_or_default()
    }

    /// The earliest acknowledgement of a write newer than `v` (`u64::MAX`: none), and
    /// that write.
    pub fn newer_than(&self, v: i64) -> (u64, u32) {
        self.suffix[self.acked.partition_point(|a| a.0 <= v)]
    }

    /// What the causes need to know of the writes newer than `v`, for a read that began
    /// at `by` (`u64::MAX`: any time).
    pub fn newer_of(&self, v: i64, by: u64) -> Newer<'h> {
        let pos = self.acked.partition_point(|a| a.0 <= v);
        let (t, op) = self.kept[pos];
        Newer {
            kept: if t != u64::MAX && (by == u64::MAX || t.saturating_add(self.ctx.bound) < by) {
                op
            } else {
                NONE
            },
            first: self.suffix[pos].1,
            ops: self.ops,
        }
    }

    /// True when the database's final state lost the acknowledged write `op` of
    /// `version`: its log lacks it, or without a log, it ends below that version.
    pub fn is_lost(&self, version: i64, op: u32) -> bool {
        lost(
            self.history,
            self.final_value,
            self.held.as_ref(),
            version,
            op,
        )
    }

    /// The key's fills.
    pub fn fills(&self) -> &Fills {
        self.fills
            .get_or_init(|| Fills::new(self.history, self.ops))
    }

    /// True for a `final-read` invoked after the `final-phase` event.
    pub fn after_final_phase(&self, op: u32) -> bool {
        let op = &self.history.ops[op as usize];
        op.kind == OpKind::FinalRead && self.final_phase.is_some_and(|fp| op.invoke_index > fp)
    }

    /// The key's ok operations of the given kinds, in invoke order, with their ids.
    pub fn ok_ops<'a>(
        &'a self,
        kinds: &'a [OpKind],
    ) -> impl Iterator<Item = (u32, &'h crate::model::Op)> + 'a {
        let h = self.history;
        self.ops.iter().filter_map(move |&id| {
            let op = &h.ops[id as usize];
            (op.outcome == Outcome::Ok && kinds.contains(&op.kind)).then_some((id, op))
        })
    }
}

/// True when the final state `fin` (whose log holds `held`, when it has one) lost the
/// acknowledged write `op` of `version`.
fn lost(
    h: &History,
    fin: Option<&Final>,
    held: Option<&FxHashSet<Val>>,
    version: i64,
    op: u32,
) -> bool {
    let Some(fin) = fin else { return false };
    match held {
        Some(held) => !held.contains(&h.ops[op as usize].value.expect("acked writes have values")),
        None => version > fin.value.version,
    }
}

/// The operations stale-read and the session checks judge.
pub(crate) const READS: &[OpKind] = &[OpKind::Read, OpKind::DbRead];

/// The evidence rule of the checks that judge reads: unknown when none completed ok.
pub(crate) fn no_reads(evidence: &Evidence) -> Option<String> {
    (evidence.judged == 0)
        .then(|| "no read or db-read completed ok, so there was no read to judge".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_detector_in_the_order_of_the_spec() {
        let kinds: Vec<AnomalyKind> = DETECTORS.iter().map(|d| d.kind()).collect();
        assert_eq!(kinds, AnomalyKind::ALL);
    }

    #[test]
    fn names_are_the_spec_names_everywhere() {
        for &k in AnomalyKind::ALL {
            let json = serde_json::to_value(k).unwrap();
            assert_eq!(json.as_str(), Some(k.name()));
            assert_eq!(k.to_string(), k.name());
            assert_eq!(k.name().parse::<AnomalyKind>(), Ok(k));
            assert_eq!(format!(" {} ", k.name()).parse::<AnomalyKind>(), Ok(k));
        }
        assert_eq!(AnomalyKind::ReadYourWrites.name(), "read-your-writes");
        let e = "stale".parse::<AnomalyKind>().unwrap_err();
        assert!(
            e.starts_with("unknown check \"stale\": the checks are stale-read, phantom-read, "),
            "{e}"
        );
    }
}
