//! The checker's results: the verdict, counts, per-check status, the staleness
//! distribution, breakdowns per node and key, and the explained anomalies. Written as
//! `results.json` (versioned) and rendered as text.
//!
//! Strings of the history are kept cut ([`crate::bound`]): a name (key, node, region,
//! write id, `f`) after 256 bytes, a message or an event value's JSON after 4 KiB, each
//! ending then with its full size, `kkkk… (1048576 bytes)`; an event value cut so is
//! the string of its JSON. Nothing else is changed: JSON escapes control characters.

use crate::bound;
use crate::check::{AnomalyKind, Context, Findings};
use crate::detect::Finding;
use crate::dist;
use crate::explain::{self, Anomaly};
use crate::graph;
use crate::model::{History, Outcome, NONE};
use coherence_store::OpKind;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;

/// The name of the results format.
pub const FORMAT: &str = "coherence-results";
/// The version of the results format; bump it when a field changes meaning.
/// Version 2: `verdict` and `unknown_reasons`; `valid` is true only when the verdict is
/// valid (it used to mean "no anomaly"); checks may be `not-run`; `faults`. Cutting
/// long strings ([`crate::bound`]) changed no field's meaning or type and did not bump
/// it (an event value cut is a string, which `value` could always be).
/// Version 3: the observer checks `missing-invalidation` and `slow-invalidation` (a
/// check may be `not-run` with the reason it does not apply), `invalidation_lag`.
pub const FORMAT_VERSION: u32 = 3;

/// A check's verdict: three-valued, or not run at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// No anomaly, and the history could decide.
    Valid,
    /// Anomalies found.
    Invalid,
    /// No anomaly found, but the history cannot decide (part of) the check.
    Unknown,
    /// Left out by the user (`--checks`, `[checker] checks`): it does not count.
    NotRun,
}

impl Status {
    /// The name used in results and reports.
    pub fn name(self) -> &'static str {
        match self {
            Status::Valid => "valid",
            Status::Invalid => "invalid",
            Status::Unknown => "unknown",
            Status::NotRun => "not-run",
        }
    }
}

/// The verdict of a whole history, composed as Jepsen composes it: invalid when any
/// chosen check proved an anomaly; else unknown when a chosen check could not decide,
/// a requested fault did not happen or did not heal, the run was interrupted, or there
/// was no evidence at all; else valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every chosen check decided, found nothing, and every requested fault happened.
    Valid,
    /// Anomalies were proven.
    Invalid,
    /// Nothing proven, but the history cannot vouch for validity.
    Unknown,
}

impl Verdict {
    /// `valid`, `invalid` or `unknown`.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Invalid => "invalid",
            Verdict::Unknown => "unknown",
        }
    }
}

/// One checker's result.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// The anomaly it looks for.
    pub name: AnomalyKind,
    /// Its verdict.
    pub status: Status,
    /// How many it found.
    pub count: u64,
    /// Why it is unknown, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The share of reads at most so stale.
#[derive(Debug, Clone, Serialize)]
pub struct Within {
    /// The staleness limit in ns.
    pub within_ns: u64,
    /// The limit for people (`0 s`, `10 ms`, ...).
    pub within: String,
    /// Fraction of reads no staler than that.
    pub fraction: f64,
    /// The fraction as nines (e.g. 3.0 for 99.9 %); `null` when every read was.
    pub nines: Option<f64>,
}

/// The staleness distribution of all ok reads and db-reads that returned a value.
#[derive(Debug, Clone, Serialize)]
pub struct Staleness {
    /// How many reads.
    pub reads: u64,
    /// Median staleness, ns.
    pub p50_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// 99.9th percentile, ns.
    pub p999_ns: u64,
    /// Maximum, ns.
    pub max_ns: u64,
    /// Fresh within 0, 10 ms, 100 ms, 1 s, 10 s.
    pub fresh_within: Vec<Within>,
    /// How many reads fell in each staleness bucket: the first bucket holds the fresh
    /// reads (0), each later one those above the previous bound up to its own; bounds
    /// follow 1, 2, 5 from 1 µs, up to the first that holds the maximum.
    pub histogram: Vec<Bucket>,
}

/// One bucket of the staleness histogram.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Its upper bound (inclusive), ns.
    pub le_ns: u64,
    /// Reads in it.
    pub count: u64,
}

/// The bucket bounds of the staleness histogram: 0, then 1, 2, 5 × 10ⁿ ns from 1 µs,
/// up to the first bound at or above `max`.
fn bucket_bounds(max: u64) -> Vec<u64> {
    let mut bounds = vec![0];
    let mut decade = 1_000u64;
    while *bounds.last().unwrap() < max {
        for m in [1, 2, 5] {
            let b = decade.saturating_mul(m);
            if *bounds.last().unwrap() < max {
                bounds.push(b);
            }
        }
        decade = decade.saturating_mul(10);
    }
    bounds
}

/// Counts for one node.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeCounts {
    /// Ok reads (read, db-read, final-read) served.
    pub reads: u64,
    /// Of which misses.
    pub misses: u64,
    /// Anomalies whose offending operation ran on this node, by name.
    pub anomalies: BTreeMap<&'static str, u64>,
}

/// Anomaly counts of one key.
#[derive(Debug, Clone, Serialize)]
pub struct KeyCounts {
    /// The key.
    pub key: String,
    /// Total anomalies.
    pub total: u64,
    /// By name.
    pub anomalies: BTreeMap<&'static str, u64>,
}

/// Operation counts by `f` and outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OpCounts {
    /// Completed ok.
    pub ok: u64,
    /// Failed.
    pub fail: u64,
    /// Unknown outcome (info or never completed).
    pub info: u64,
}

/// What the history held.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryStats {
    /// Events (lines).
    pub events: u64,
    /// Client operations.
    pub operations: u64,
    /// Operations by `f`.
    pub by_f: BTreeMap<&'static str, OpCounts>,
    /// Invokes that never completed (treated as info).
    pub unfinished: u64,
    /// Keys.
    pub keys: u64,
    /// Client processes.
    pub processes: u64,
    /// Time of the last event, ns.
    pub duration_ns: u64,
    /// Whether a `final-phase` was logged.
    pub final_phase: bool,
    /// Nemesis events.
    pub nemesis_events: u64,
}

/// A nemesis or control event, for the report's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct ActorEvent {
    /// Its index.
    pub index: u64,
    /// Its time, ns.
    pub time_ns: u64,
    /// Who logged it.
    pub process: String,
    /// What it was.
    pub f: String,
    /// Its value as JSON, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// A nemesis event in words ([`crate::faults::event_words`]), made from the whole
    /// value before it was cut.
    #[serde(skip)]
    pub words: Option<String>,
}

/// Everything `check` concludes.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// Always [`FORMAT`].
    pub format: &'static str,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The version of coherence that checked.
    pub tool_version: &'static str,
    /// The history checked.
    pub history: String,
    /// Δ in ns.
    pub staleness_bound_ns: u64,
    /// Δ for people.
    pub staleness_bound: String,
    /// The verdict.
    pub verdict: Verdict,
    /// True only when the verdict is valid: an unknown history is not valid.
    pub valid: bool,
    /// Why the verdict is (or, behind proven anomalies, would also be) unknown: checks
    /// that could not decide, faults that did not happen or heal, an interrupted run,
    /// no evidence. Empty when none of that holds.
    pub unknown_reasons: Vec<String>,
    /// Counts of all seven anomalies, zeros included.
    #[serde(rename = "anomaly-counts")]
    pub anomaly_counts: BTreeMap<&'static str, u64>,
    /// Each check's verdict.
    pub checks: Vec<CheckResult>,
    /// What the history held.
    pub stats: HistoryStats,
    /// The staleness distribution.
    pub staleness: Staleness,
    /// How long invalidations took, as the cache observers saw them (`null` when the
    /// history has no cache observer).
    pub invalidation_lag: Option<InvalidationLag>,
    /// Likely causes of stale reads and non-converged entries, counted.
    pub causes: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    /// Per node.
    pub per_node: BTreeMap<String, NodeCounts>,
    /// Per region of the client that ran the operation (events' field `region`).
    pub per_region: BTreeMap<String, NodeCounts>,
    /// Keys with anomalies, most first (at most `key_limit`).
    pub per_key: Vec<KeyCounts>,
    /// How many keys had anomalies in all.
    pub keys_with_anomalies: u64,
    /// Explained anomalies, at most `anomaly_limit` per name, in history order.
    pub anomalies: Vec<Anomaly>,
    /// The cap on explained anomalies per name.
    pub anomaly_limit: usize,
    /// Nemesis and control events.
    pub events: Vec<ActorEvent>,
    /// What the nemesis did: its plan, every fault with its outcome, its errors.
    pub faults: crate::faults::NemesisLog,
    /// Reader warnings (e.g. a cut-short last line).
    pub warnings: Vec<String>,
    /// What the online checker detected while the history was written (`run`,
    /// `check --follow`): counts per kind and the time to detection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<crate::live::LiveSummary>,
}

/// How results are built.
#[derive(Debug, Clone)]
pub struct Options {
    /// Δ in ns.
    pub staleness_bound: u64,
    /// Explained anomalies kept per name.
    pub anomaly_limit: usize,
    /// Keys listed in `per_key`.
    pub key_limit: usize,
    /// The checks that count (`None`: all of them); the others are listed as not run.
    pub checks: Option<Vec<AnomalyKind>>,
    /// The invalidation bound in ns (`slow-invalidation`); `None`: that check is not run.
    pub invalidation_bound: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            staleness_bound: 0,
            anomaly_limit: 100,
            key_limit: 100,
            checks: None,
            invalidation_bound: None,
        }
    }
}

impl Options {
    /// True when `kind` is among the checks that count.
    pub fn runs(&self, kind: AnomalyKind) -> bool {
        self.checks.as_ref().is_none_or(|c| c.contains(&kind))
    }
}

/// The share of `total` that `samples` has at or below each limit (1 when `total` is 0).
fn within(samples: &dist::Exact, limits: &[u64], total: u64) -> Vec<Within> {
    limits
        .iter()
        .map(|&limit| {
            let fraction = if total == 0 {
                1.0
            } else {
                samples.at_most(limit) as f64 / total as f64
            };
            Within {
                within_ns: limit,
                within: explain::duration(limit),
                fraction,
                nines: (fraction < 1.0).then(|| -(1.0 - fraction).log10()),
            }
        })
        .collect()
}

/// The samples counted in the buckets of [`bucket_bounds`].
fn histogram(samples: &dist::Exact) -> Vec<Bucket> {
    let bounds = bucket_bounds(samples.max());
    bounds
        .iter()
        .zip(samples.buckets(&bounds))
        .map(|(&le_ns, count)| Bucket { le_ns, count })
        .collect()
}

fn staleness(samples: Vec<u64>) -> Staleness {
    let samples = dist::Exact::new(samples);
    let n = samples.len();
    let fresh_within = within(
        &samples,
        &[0, 10_000_000, 100_000_000, 1_000_000_000, 10_000_000_000],
        n,
    );
    let histogram = histogram(&samples);
    Staleness {
        histogram,
        reads: n,
        p50_ns: samples.quantile(0.5),
        p99_ns: samples.quantile(0.99),
        p999_ns: samples.quantile(0.999),
        max_ns: samples.max(),
        fresh_within,
    }
}

/// The invalidation lag of one node, one region, or all of them: over every commit on a
/// watched node that held an older version of the key (`docs/history.md`, *Observers*).
#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    /// Commits on a node that held an older version.
    pub awaited: u64,
    /// Of which the observer saw invalidated (the lag's samples).
    pub invalidated: u64,
    /// Never invalidated by the final phase (`missing-invalidation`).
    pub missing: u64,
    /// Overwritten by a fill of the new version before any invalidation.
    pub overwritten: u64,
    /// Gone by expiry or eviction before any invalidation.
    pub expired: u64,
    /// Where the observer was blind, or (without a final phase) not yet invalidated:
    /// not judged.
    pub undecided: u64,
    /// Median lag of the invalidated, ns.
    pub p50_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// 99.9th percentile, ns.
    pub p999_ns: u64,
    /// Maximum, ns.
    pub max_ns: u64,
    /// The share of the invalidated and the missing that were invalidated within 10 ms,
    /// 100 ms, 200 ms and 1 s (a missing one never is).
    pub within: Vec<Within>,
    /// How many invalidations fell in each lag bucket (bounds as the staleness
    /// histogram's).
    pub histogram: Vec<Bucket>,
}

/// The invalidation lag, overall, per region and per node.
#[derive(Debug, Clone, Serialize)]
pub struct InvalidationLag {
    /// Over every watched node.
    pub all: Lag,
    /// Per region (the topology's region of each node).
    pub per_region: BTreeMap<String, Lag>,
    /// Per watched node.
    pub per_node: BTreeMap<String, Lag>,
}

/// The limits of [`Lag::within`].
pub const LAG_WITHIN: [u64; 4] = [10_000_000, 100_000_000, 200_000_000, 1_000_000_000];

fn lag(pairs: &[&crate::observers::Pair]) -> Lag {
    use crate::observers::Fate;
    let mut samples = Vec::new();
    let (mut missing, mut overwritten, mut expired, mut undecided) = (0, 0, 0, 0);
    for p in pairs {
        match p.fate {
            Fate::Invalidated { .. } => samples.extend(p.lag()),
            Fate::Missing => missing += 1,
            Fate::Overwritten { .. } => overwritten += 1,
            Fate::Expired { .. } => expired += 1,
            Fate::Blind { .. } | Fate::Pending => undecided += 1,
        }
    }
    let samples = dist::Exact::new(samples);
    let n = samples.len();
    // A missing invalidation is never within any limit.
    let within = within(&samples, &LAG_WITHIN, n + missing);
    let histogram = histogram(&samples);
    Lag {
        awaited: pairs.len() as u64,
        invalidated: n,
        missing,
        overwritten,
        expired,
        undecided,
        p50_ns: samples.quantile(0.5),
        p99_ns: samples.quantile(0.99),
        p999_ns: samples.quantile(0.999),
        max_ns: samples.max(),
        within,
        histogram,
    }
}

/// The invalidation lag of `pairs`, when the history has a cache observer.
fn invalidation_lag(h: &History, pairs: &[crate::observers::Pair]) -> Option<InvalidationLag> {
    if h.watched.caches.is_empty() {
        return None;
    }
    let regions = crate::topology::regions(h);
    let all: Vec<&crate::observers::Pair> = pairs.iter().collect();
    let mut per_node: BTreeMap<String, Lag> = BTreeMap::new();
    let mut per_region: BTreeMap<String, Vec<&crate::observers::Pair>> = BTreeMap::new();
    for &node in &h.watched.caches {
        let of: Vec<&crate::observers::Pair> = pairs.iter().filter(|p| p.node == node).collect();
        if let Some(region) = regions.get(&node) {
            per_region
                .entry(bound::name(region))
                .or_default()
                .extend(&of);
        }
        per_node.insert(bound::name(h.nodes.name(node)), lag(&of));
    }
    Some(InvalidationLag {
        all: lag(&all),
        per_region: per_region.into_iter().map(|(r, p)| (r, lag(&p))).collect(),
        per_node,
    })
}

/// Turns findings into results.
pub fn build(
    ctx: &Context<'_>,
    findings: Findings,
    options: &Options,
    history_path: &str,
    warnings: Vec<String>,
    unfinished: u64,
) -> Results {
    let h: &History = ctx.history;
    let mut counts: BTreeMap<&'static str, u64> =
        AnomalyKind::ALL.iter().map(|k| (k.name(), 0)).collect();
    let mut causes: BTreeMap<&'static str, BTreeMap<&'static str, u64>> = BTreeMap::new();
    let mut per_node: BTreeMap<String, NodeCounts> = BTreeMap::new();
    let mut per_region: BTreeMap<String, NodeCounts> = BTreeMap::new();
    let region_of = |process: u32| {
        h.process_regions
            .get(process as usize)
            .copied()
            .filter(|&r| r != NONE)
            .map(|r| bound::name(h.regions.name(r)))
    };
    let mut per_key: Vec<BTreeMap<&'static str, u64>> = vec![BTreeMap::new(); h.keys.len()];
    let mut to_explain: Vec<&Finding> = Vec::new();
    let mut shown: BTreeMap<AnomalyKind, usize> = BTreeMap::new();
    for f in findings.findings.iter().filter(|f| options.runs(f.kind)) {
        *counts.entry(f.kind.name()).or_default() += 1;
        *per_key[f.key as usize].entry(f.kind.name()).or_default() += 1;
        let op = &h.ops[f.op() as usize];
        let node = f.node(h);
        if node != NONE {
            *per_node
                .entry(bound::name(h.nodes.name(node)))
                .or_default()
                .anomalies
                .entry(f.kind.name())
                .or_default() += 1;
        }
        if let Some(region) = region_of(op.process) {
            *per_region
                .entry(region)
                .or_default()
                .anomalies
                .entry(f.kind.name())
                .or_default() += 1;
        }
        if let Some(c) = f.cause() {
            *causes
                .entry(f.kind.name())
                .or_default()
                .entry(c.kind.name())
                .or_default() += 1;
        }
        let n = shown.entry(f.kind).or_default();
        if *n < options.anomaly_limit {
            *n += 1;
            to_explain.push(f);
        }
    }
    // Explain key by key (one index per key), in parallel, then back in order.
    let mut by_key: Vec<(usize, &Finding)> = to_explain.into_iter().enumerate().collect();
    by_key.sort_by_key(|(i, f)| (f.key, *i));
    let groups: Vec<&[(usize, &Finding)]> = by_key.chunk_by(|a, b| a.1.key == b.1.key).collect();
    let mut explained: Vec<(usize, Anomaly)> = groups
        .into_par_iter()
        .flat_map_iter(|group| {
            let index = graph::KeyIndex::new(h, group[0].1.key);
            group
                .iter()
                .map(|&(i, f)| (i, explain::explain(ctx, &index, f)))
                .collect::<Vec<_>>()
        })
        .collect();
    explained.sort_by_key(|(i, _)| *i);
    let anomalies: Vec<Anomaly> = explained.into_iter().map(|(_, a)| a).collect();

    let mut by_f: BTreeMap<&'static str, OpCounts> = BTreeMap::new();
    let mut node_reads: Vec<(u64, u64)> = vec![(0, 0); h.nodes.len()];
    let mut region_reads: Vec<(u64, u64)> = vec![(0, 0); h.regions.len()];
    for op in &h.ops {
        let c = by_f.entry(op.kind.as_str()).or_default();
        match op.outcome {
            Outcome::Ok => c.ok += 1,
            Outcome::Fail => c.fail += 1,
            Outcome::Info => c.info += 1,
        }
        if op.outcome == Outcome::Ok
            && matches!(op.kind, OpKind::Read | OpKind::DbRead | OpKind::FinalRead)
            && op.node != NONE
        {
            let n = &mut node_reads[op.node as usize];
            n.0 += 1;
            if op.value.is_none() {
                n.1 += 1;
            }
        }
        if op.outcome == Outcome::Ok
            && matches!(op.kind, OpKind::Read | OpKind::DbRead | OpKind::FinalRead)
        {
            if let Some(&r) = h.process_regions.get(op.process as usize) {
                if r != NONE {
                    let n = &mut region_reads[r as usize];
                    n.0 += 1;
                    if op.value.is_none() {
                        n.1 += 1;
                    }
                }
            }
        }
    }
    for (region, &(reads, misses)) in region_reads.iter().enumerate() {
        if reads > 0 {
            let n = per_region
                .entry(bound::name(h.regions.name(region as u32)))
                .or_default();
            n.reads = reads;
            n.misses = misses;
        }
    }
    for (node, &(reads, misses)) in node_reads.iter().enumerate() {
        if reads > 0 {
            let n = per_node
                .entry(bound::name(h.nodes.name(node as u32)))
                .or_default();
            n.reads = reads;
            n.misses = misses;
        }
    }

    let mut keys: Vec<KeyCounts> = per_key
        .into_iter()
        .enumerate()
        .filter(|(_, m)| !m.is_empty())
        .map(|(k, anomalies)| KeyCounts {
            key: bound::name(h.keys.name(k as u32)),
            total: anomalies.values().sum(),
            anomalies,
        })
        .collect();
    let keys_with_anomalies = keys.len() as u64;
    keys.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.key.cmp(&b.key)));
    keys.truncate(options.key_limit);

    // One per detector, in the order they ran (the spec's), each with its own rule for
    // when what it judged leaves it unknown.
    let checks: Vec<CheckResult> = findings
        .judged
        .iter()
        .map(|judged| {
            let kind = judged.detector.kind();
            if !options.runs(kind) {
                return CheckResult {
                    name: kind,
                    status: Status::NotRun,
                    count: 0,
                    reason: Some("not among the checks chosen (--checks, [checker] checks)".into()),
                };
            }
            if let Err(why) = judged.detector.applies(ctx) {
                return CheckResult {
                    name: kind,
                    status: Status::NotRun,
                    count: 0,
                    reason: Some(why),
                };
            }
            let count = counts[kind.name()];
            let reason = judged.undecided(h);
            let status = if count > 0 {
                Status::Invalid
            } else if reason.is_some() {
                Status::Unknown
            } else {
                Status::Valid
            };
            CheckResult {
                name: kind,
                status,
                count,
                reason: reason.filter(|_| status == Status::Unknown),
            }
        })
        .collect();
    let nemesis = bound_nemesis(&ctx.nemesis);
    let mut unknown_reasons: Vec<String> = Vec::new();
    let client_ok = h.ops.iter().any(|op| op.outcome == Outcome::Ok);
    if !client_ok {
        unknown_reasons.push(if h.ops.is_empty() {
            "no evidence: the history holds no client operation".to_string()
        } else {
            format!(
                "no evidence: none of the history's {} client operations completed ok",
                h.ops.len()
            )
        });
    }
    for c in checks.iter().filter(|c| c.status == Status::Unknown) {
        unknown_reasons.push(format!(
            "{} could not decide: {}",
            c.name.name(),
            c.reason.as_deref().unwrap_or("the history cannot decide")
        ));
    }
    unknown_reasons.extend(nemesis.problems());
    for e in h
        .standalone
        .iter()
        .filter(|e| e.actor == "control" && e.f == "interrupted")
    {
        let why = e
            .value
            .as_deref()
            .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
            .and_then(|v| v.get("signal").and_then(|s| s.as_str()).map(String::from))
            .map(|s| format!(" by {}", bound::prose(&s)))
            .unwrap_or_default();
        unknown_reasons.push(format!(
            "the run was interrupted{why} (line {}) before its time limit: it did not run as requested",
            e.index + 1
        ));
    }

    let events = h
        .standalone
        .iter()
        .filter(|e| e.actor == "nemesis" || e.actor == "control")
        .map(|e| {
            let value: Option<serde_json::Value> = e
                .value
                .as_deref()
                .and_then(|v| serde_json::from_str(v).ok());
            ActorEvent {
                index: e.index,
                time_ns: e.time,
                process: bound::name(&e.actor),
                f: bound::name(&e.f),
                words: crate::faults::event_words(&e.actor, &e.f, value.as_ref())
                    .map(|w| bound::text(&w)),
                value: value.map(bound::value),
            }
        })
        .collect::<Vec<_>>();
    let stats = HistoryStats {
        events: h.events,
        operations: h.ops.len() as u64,
        by_f,
        unfinished,
        keys: h.keys.len() as u64,
        processes: h.processes.len() as u64,
        duration_ns: h.end_time,
        final_phase: h.final_phase.is_some(),
        nemesis_events: events.iter().filter(|e| e.process == "nemesis").count() as u64,
    };
    let verdict = if checks.iter().any(|c| c.status == Status::Invalid) {
        Verdict::Invalid
    } else if !unknown_reasons.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Valid
    };
    Results {
        format: FORMAT,
        format_version: FORMAT_VERSION,
        tool_version: env!("CARGO_PKG_VERSION"),
        history: bound::text(history_path),
        staleness_bound_ns: ctx.bound,
        staleness_bound: explain::duration(ctx.bound),
        verdict,
        valid: verdict == Verdict::Valid,
        unknown_reasons,
        anomaly_counts: counts,
        checks,
        stats,
        staleness: staleness(findings.staleness),
        invalidation_lag: invalidation_lag(h, &findings.pairs),
        causes,
        per_node,
        per_region,
        per_key: keys,
        keys_with_anomalies,
        anomalies,
        anomaly_limit: options.anomaly_limit,
        events,
        faults: nemesis,
        warnings: warnings.iter().map(|w| bound::text(w)).collect(),
        live: None,
    }
}

/// The nemesis log as results keep it: names, errors and values cut ([`crate::bound`]).
fn bound_nemesis(log: &crate::faults::NemesisLog) -> crate::faults::NemesisLog {
    use crate::faults::{FaultRecord, NemesisError, NemesisLog, Plan};
    NemesisLog {
        plan: log.plan.as_ref().map(|p| Plan {
            faults: p.faults.iter().map(|f| bound::name(f)).collect(),
            scheduled: p.scheduled,
        }),
        faults: log
            .faults
            .iter()
            .map(|f| FaultRecord {
                seq: f.seq,
                f: bound::name(&f.f),
                family: f.family,
                words: bound::text(&f.words),
                index: f.index,
                start_ns: f.start_ns,
                end_index: f.end_index,
                end_ns: f.end_ns,
                interval: f.interval,
                status: f.status,
                error: f.error.as_deref().map(bound::text),
                value: f.value.clone().map(bound::value),
                outcome: f.outcome.clone().map(bound::value),
            })
            .collect(),
        errors: log
            .errors
            .iter()
            .map(|e| NemesisError {
                index: e.index,
                planned: e.planned.as_deref().map(bound::name),
                error: bound::text(&e.error),
            })
            .collect(),
    }
}
