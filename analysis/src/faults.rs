//! What the nemesis did, as the history tells it: every fault with its interval and its
//! outcome (applied and healed, failed to apply, failed to heal, never healed), the
//! plan the campaign asked for, and the errors that kept a requested fault from
//! happening. The checker (fault context of causes, the verdict), the results and the
//! report all read the nemesis through this one pairing.
//!
//! Faults of coherence's own nemesis carry a sequence number (`"seq"`) on every event
//! about them (`start-*`, `nemesis-error`, the instant outcome `failover`, `stop-*`), so
//! they pair exactly. Events without one (a user's own nemesis, the spec's examples)
//! pair by name, as the vocabulary of faults says ([`coherence_store::faults`]: e.g.
//! `kill`/`restart`, `bump-clock` or `strobe-clock`/`reset-clock`), else `start-X`/`stop-X`;
//! `heal` closes every open fault; other nemesis events (`failover`, ...) are instants.

use crate::bound::{self, shown};
use crate::model::History;
use coherence_store::faults::{self, Family};
use serde::Serialize;
use serde_json::Value;

/// How a fault ended, as far as the history tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultStatus {
    /// Applied, and healed (verified where the nemesis verifies).
    Healed,
    /// An instant fault (a failover) that happened; nothing to heal.
    Happened,
    /// Applying it failed: it did not happen as requested.
    ApplyFailed,
    /// It was applied but healing failed or left traces.
    HealFailed,
    /// It was opened and never closed: the history ends with it applied.
    NotHealed,
}

impl FaultStatus {
    /// The name used in results.
    pub fn name(self) -> &'static str {
        match self {
            FaultStatus::Healed => "healed",
            FaultStatus::Happened => "happened",
            FaultStatus::ApplyFailed => "apply-failed",
            FaultStatus::HealFailed => "heal-failed",
            FaultStatus::NotHealed => "not-healed",
        }
    }

    /// True when the fault did what was asked of it and left nothing behind.
    pub fn is_good(self) -> bool {
        matches!(self, FaultStatus::Healed | FaultStatus::Happened)
    }
}

/// One fault of the nemesis.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// The nemesis's sequence number, when the events carry one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The `f` that opened it (`start-partition`, `kill`, `failover`, ...).
    pub f: String,
    /// Its family, when the `f` is one of the vocabulary's ([`Family::of_start`]).
    #[serde(skip)]
    pub family: Option<Family>,
    /// The fault in words, with how it ended ([`FaultRecord::describe`]), made from the
    /// whole value before results cut it.
    #[serde(skip)]
    pub words: String,
    /// Index of the opening event.
    pub index: u64,
    /// When it began, ns.
    pub start_ns: u64,
    /// Index of the closing event, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_index: Option<u64>,
    /// When it ended, ns (`None`: never closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_ns: Option<u64>,
    /// False for an instant (a failover).
    pub interval: bool,
    /// How it ended.
    pub status: FaultStatus,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The opening event's value: what was done, to which nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// For a fault whose application promoted a node: the instant `failover` event's
    /// value (who was promoted, who demoted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Value>,
}

impl FaultRecord {
    /// The fault in words, as an auditor reads it: what was done ("partition into halves
    /// {db1, r1b} | {db2, r1a}", "kill redis on r1b"), whom it promoted, and how it ended
    /// ("healed after 3.98 s", "restarted after 1.7 s", "never healed").
    pub fn describe(&self) -> String {
        let mut words = match self.family {
            Some(family) => family.describe(self.value.as_ref()),
            None => match &self.value {
                Some(Value::String(v)) => format!("{} {v}", self.f),
                Some(v) => format!("{} {v}", self.f),
                None => self.f.clone(),
            },
        };
        let promoted = self
            .outcome
            .as_ref()
            .and_then(|o| o.get("promoted"))
            .and_then(|p| p.as_str());
        if let Some(p) = promoted {
            words.push_str(&format!(", promoted {p}"));
        }
        if !self.interval {
            return words;
        }
        let ended = self.family.map_or("ended", |x| x.spec().ended);
        match (self.status, self.end_ns) {
            (FaultStatus::ApplyFailed, _) => words.push_str("; failed to apply"),
            (_, None) => words.push_str(", never healed"),
            (FaultStatus::HealFailed, Some(end)) => words.push_str(&format!(
                ", heal failed after {}",
                faults::span(end.saturating_sub(self.start_ns))
            )),
            (_, Some(end)) => words.push_str(&format!(
                ", {ended} after {}",
                faults::span(end.saturating_sub(self.start_ns))
            )),
        }
        words
    }

    /// True when the fault was in force at some time in `[from, to]` (an interval that
    /// was applied; instants and faults that failed to apply are never in force).
    pub fn active_during(&self, from: u64, to: u64) -> bool {
        self.interval
            && self.status != FaultStatus::ApplyFailed
            && self.start_ns <= to
            && self.end_ns.is_none_or(|e| e >= from)
    }
}

/// A nemesis error not tied to an applied fault: a planned fault that could not be
/// built, or the nemesis itself failing.
#[derive(Debug, Clone, Serialize)]
pub struct NemesisError {
    /// The event's index.
    pub index: u64,
    /// The fault kind that was planned, when the event names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub planned: Option<String>,
    /// What went wrong.
    pub error: String,
}

/// The faults a campaign asked for, as the nemesis logged them when it started
/// (`nemesis-plan`).
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The fault kinds requested.
    pub faults: Vec<String>,
    /// How many faults the schedule holds within the time limit.
    pub scheduled: u64,
}

/// Everything the nemesis did, read from the history.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NemesisLog {
    /// The plan, when the nemesis logged one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// Every fault, in the order they began.
    pub faults: Vec<FaultRecord>,
    /// Errors that kept a fault from happening, or stopped the nemesis.
    pub errors: Vec<NemesisError>,
}

fn field<'v>(v: Option<&'v Value>, name: &str) -> Option<&'v Value> {
    v.and_then(|v| v.get(name))
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// For a closing nemesis `f`, the opening `f`s it closes; an empty list closes all. The
/// families of [`coherence_store::faults`] say which event closes which; events no
/// family names pair by the generic `stop-X` closes `start-X`.
fn openers_of(closer: &str) -> Option<Vec<String>> {
    let families = Family::closed_by(closer);
    if !families.is_empty() {
        return Some(
            families
                .iter()
                .map(|f| f.spec().start.to_string())
                .collect(),
        );
    }
    if let Some(rest) = closer.strip_prefix("stop-") {
        return Some(vec![format!("start-{rest}")]);
    }
    (closer == faults::HEAL_ALL).then(Vec::new)
}

fn is_opener(f: &str) -> bool {
    Family::of_start(f).is_some() || f.starts_with("start-")
}

impl NemesisLog {
    /// Reads the nemesis events of a history.
    pub fn read(h: &History) -> NemesisLog {
        let mut log = NemesisLog::default();
        let mut open: Vec<usize> = Vec::new();
        for ev in h.standalone.iter().filter(|e| e.actor == "nemesis") {
            let value: Option<Value> = ev
                .value
                .as_deref()
                .and_then(|v| serde_json::from_str(v).ok());
            let v = value.as_ref();
            let seq = field(v, "seq").and_then(Value::as_u64);
            let by_seq = |log: &NemesisLog| {
                seq.and_then(|s| log.faults.iter().rposition(|f| f.seq == Some(s)))
            };
            match ev.f.as_str() {
                "nemesis-plan" => {
                    log.plan = Some(Plan {
                        faults: field(v, "faults")
                            .and_then(Value::as_array)
                            .map(|a| a.iter().map(text_of).collect())
                            .unwrap_or_default(),
                        scheduled: field(v, "scheduled").and_then(Value::as_u64).unwrap_or(0),
                    });
                    continue;
                }
                "nemesis-error" => {
                    let error = field(v, "error")
                        .map(text_of)
                        .unwrap_or_else(|| "unknown error".into());
                    match by_seq(&log) {
                        Some(i) => {
                            let f = &mut log.faults[i];
                            f.status = FaultStatus::ApplyFailed;
                            f.error = Some(error);
                        }
                        None => log.errors.push(NemesisError {
                            index: ev.index,
                            planned: field(v, "planned").map(text_of),
                            error,
                        }),
                    }
                    continue;
                }
                _ => {}
            }
            // A fault's instant outcome (the failover it caused) belongs to it.
            if let Some(i) = by_seq(&log) {
                let f = &mut log.faults[i];
                if openers_of(&ev.f).is_none() && f.end_ns.is_none() && f.interval {
                    f.outcome = value;
                    continue;
                }
                // Its closing event.
                f.end_index = Some(ev.index);
                f.end_ns = Some(ev.time);
                let healed = field(v, "healed").and_then(Value::as_bool).unwrap_or(true);
                if !healed {
                    let traces: Vec<String> = field(v, "traces")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().map(text_of).collect())
                        .unwrap_or_default();
                    let mut why = field(v, "error")
                        .filter(|e| !e.is_null())
                        .map(text_of)
                        .unwrap_or_default();
                    if !traces.is_empty() {
                        if !why.is_empty() {
                            why.push_str("; ");
                        }
                        why.push_str(&format!("still in place: {}", traces.join("; ")));
                    }
                    if f.status != FaultStatus::ApplyFailed {
                        f.status = FaultStatus::HealFailed;
                    }
                    let why = if why.is_empty() {
                        "healing was not verified".to_string()
                    } else {
                        why
                    };
                    f.error = Some(match f.error.take() {
                        Some(e) => format!("{e}; healing: {why}"),
                        None => why,
                    });
                } else if f.status == FaultStatus::NotHealed {
                    f.status = FaultStatus::Healed;
                }
                open.retain(|&o| o != i);
                continue;
            }
            if let Some(openers) = openers_of(&ev.f) {
                let close = |i: usize, log: &mut NemesisLog| {
                    let f = &mut log.faults[i];
                    f.end_index = Some(ev.index);
                    f.end_ns = Some(ev.time);
                    if f.status == FaultStatus::NotHealed {
                        f.status = FaultStatus::Healed;
                    }
                };
                if openers.is_empty() {
                    for i in open.drain(..) {
                        close(i, &mut log);
                    }
                } else if let Some(p) = open
                    .iter()
                    .position(|&i| openers.contains(&log.faults[i].f))
                {
                    let i = open.remove(p);
                    close(i, &mut log);
                }
                continue;
            }
            let interval = is_opener(&ev.f);
            if interval {
                open.push(log.faults.len());
            }
            log.faults.push(FaultRecord {
                seq,
                f: ev.f.clone(),
                family: Family::of_start(&ev.f),
                words: String::new(),
                index: ev.index,
                start_ns: ev.time,
                end_index: (!interval).then_some(ev.index),
                end_ns: (!interval).then_some(ev.time),
                interval,
                status: if interval {
                    FaultStatus::NotHealed
                } else {
                    FaultStatus::Happened
                },
                error: None,
                value,
                outcome: None,
            });
        }
        for f in &mut log.faults {
            f.words = f.describe();
        }
        log
    }

    /// A fault in force at some time in `[from, to]`, if any.
    pub fn active_during(&self, from: u64, to: u64) -> Option<&FaultRecord> {
        self.faults.iter().find(|f| f.active_during(from, to))
    }

    /// Why the faults make the verdict unknown: requested faults that did not happen,
    /// faults that failed to apply or to heal, or that were never healed. Empty when
    /// every requested fault happened and healed. What the history says is escaped but
    /// not cut: results call this on their log, which is cut already ([`crate::bound`]).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(plan) = &self.plan {
            if !plan.faults.is_empty() && plan.scheduled == 0 {
                out.push(format!(
                    "faults were requested ({}) but the schedule held none within the time limit: \
                     make the time limit longer than the nemesis interval",
                    bound::list(&plan.faults)
                ));
            }
        }
        for e in &self.errors {
            let error = shown(&e.error);
            out.push(match &e.planned {
                Some(p) => format!(
                    "a requested {} fault did not happen (line {}): {error}",
                    shown(p),
                    e.index + 1,
                ),
                None => format!("the nemesis failed (line {}): {error}", e.index + 1),
            });
        }
        for f in &self.faults {
            let name = match f.seq {
                Some(s) => format!("fault {s} ({}, line {})", shown(&f.f), f.index + 1),
                None => format!("{} (line {})", shown(&f.f), f.index + 1),
            };
            let why = f
                .error
                .as_deref()
                .map_or_else(|| "no reason given".to_string(), shown);
            match f.status {
                FaultStatus::ApplyFailed => out.push(format!("{name} failed to apply: {why}")),
                FaultStatus::HealFailed => out.push(format!("{name} failed to heal: {why}")),
                FaultStatus::NotHealed => out.push(format!(
                    "{name} was never healed: the history ends with it applied (did the run die? `coherence heal RUN_DIR` heals what it left)"
                )),
                FaultStatus::Healed | FaultStatus::Happened => {}
            }
        }
        out
    }
}

/// A nemesis event in words, for the report's events table: a family's opening event as
/// the fault, its closing event as how healing went; `None` for other events and
/// processes (shown as their JSON). Made from the whole value, before results cut it.
pub fn event_words(process: &str, f: &str, value: Option<&Value>) -> Option<String> {
    if process != "nemesis" {
        return None;
    }
    if let Some(family) = Family::of_start(f) {
        return Some(family.describe(value));
    }
    if Family::closed_by(f).is_empty() && !f.starts_with("stop-") {
        return None;
    }
    let v = value?;
    let healed = v.get("healed")?.as_bool()?;
    if healed {
        return Some("healed, and nothing of it left in place".to_string());
    }
    let mut why: Vec<String> = Vec::new();
    if let Some(err) = v.get("error").and_then(|x| x.as_str()) {
        why.push(err.to_string());
    }
    if let Some(t) = v.get("traces").and_then(|x| x.as_array()) {
        why.extend(
            t.iter()
                .filter_map(|x| x.as_str())
                .map(|x| format!("still in place: {x}")),
        );
    }
    Some(format!("NOT healed: {}", why.join("; ")))
}
