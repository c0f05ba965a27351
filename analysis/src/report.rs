//! The auditor's report: one self-contained `report.html` built from the checked
//! history and its [`Results`], plus what the run directory tells of the run (the
//! redacted campaign, `run.json`).
//!
//! The page is a maud template (everything shown is escaped by the template) with inline
//! CSS, a print stylesheet and inline SVG: plotters' SVG backend draws the charts, the
//! template draws each anomaly's cycle. It loads nothing: no URL, font or script. Its
//! size does not grow with the history: timelines are binned, explained anomalies and
//! listed events are capped, and each cap is stated on the page; every string of the
//! history is cut (by the results, or here when the page reads the history itself) and
//! shown with its control characters escaped, `\u{1b}` for ESC ([`crate::bound`]).

use crate::bound::{self, shown, shown_cut, NAME_LIMIT, TEXT_LIMIT};
use crate::dist::Latency;
use crate::explain::{at, duration, Anomaly};
use crate::faults::FaultRecord;
use crate::model::{History, Outcome};
use crate::results::{NodeCounts, Results, Status, Verdict};
use crate::AnomalyKind;
use coherence_store::files::{read_regular, write_output, OutputError};
use coherence_store::redact::redact_toml;
use coherence_store::run::RunDir;
use coherence_store::OpKind;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use plotters::coord::Shift;
use plotters::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;

/// How many anomalies the report explains at most.
pub const ANOMALY_LIMIT: usize = 50;
/// How many nemesis and control events the report lists at most.
pub const EVENT_LIMIT: usize = 200;
/// How many time bins the timelines have, whatever the length of the run.
pub const BINS: usize = 120;
/// How many bytes of the campaign file the report shows at most (256 KiB).
pub const CAMPAIGN_LIMIT: usize = 256 << 10;

/// What the report knows of the run beyond the history.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    /// The history's file name as shown (`history.jsonl`).
    pub history_name: String,
    /// The sha256 of the history file, hex.
    pub history_sha256: Option<String>,
    /// The campaign file of the run directory, redacted ([`coherence_store::redact`])
    /// whatever the file held.
    pub campaign: Option<String>,
    /// How many secret values this report redacted from the stored campaign file (0 when
    /// it was stored redacted, as `coherence run` stores it).
    pub campaign_redacted: usize,
    /// The sha256 of the stored campaign file, hex; only when the file held no secret
    /// (the hash of a file with a secret in it would let anyone test guesses of it).
    pub campaign_sha256: Option<String>,
    /// Why the run directory's campaign file is not shown although it is there (it is
    /// not valid TOML, so its secrets could not be found).
    pub campaign_withheld: Option<String>,
    /// The run directory's `run.json`.
    pub run: Option<serde_json::Value>,
}

impl RunContext {
    /// Takes the history's sha256 from the caller (the reader computes it as it reads:
    /// [`coherence_store::ReadSummary::sha256`]) and, when `history` is a run directory's
    /// history, reads the run's `campaign.toml` (redacted) and `run.json` beside it. Both
    /// must be regular files, not links ([`coherence_store::files::open_regular`]); a file
    /// that is not is an error naming it. Standard input (`-`) is shown as `<stdin>`.
    pub fn gather(history: &Path, history_sha256: Option<String>) -> std::io::Result<RunContext> {
        let name = if history == Path::new(coherence_store::reader::STDIN) {
            coherence_store::reader::STDIN_NAME.to_string()
        } else {
            history.file_name().map_or_else(
                || history.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        };
        let mut ctx = RunContext {
            history_sha256,
            history_name: name.clone(),
            ..RunContext::default()
        };
        if let Some(dir) = RunDir::of_history(history) {
            if let Some(bytes) = read_regular(&dir.campaign())? {
                ctx.set_campaign(&bytes);
            }
            if let Some(bytes) = read_regular(&dir.run_json())? {
                ctx.run = serde_json::from_slice(&bytes).ok();
            }
        }
        Ok(ctx)
    }

    /// Takes the stored campaign file's bytes: shown redacted, or withheld with the
    /// reason when they cannot be redacted.
    pub fn set_campaign(&mut self, bytes: &[u8]) {
        let redacted = std::str::from_utf8(bytes)
            .map_err(|_| "it is not UTF-8 text".to_string())
            .and_then(|text| redact_toml(text).map_err(|e| e.to_string()));
        match redacted {
            Ok(r) => {
                self.campaign_sha256 = (r.replaced == 0).then(|| hex(&Sha256::digest(bytes)));
                self.campaign_redacted = r.replaced;
                self.campaign = Some(r.text);
                self.campaign_withheld = None;
            }
            Err(why) => {
                self.campaign = None;
                self.campaign_redacted = 0;
                self.campaign_sha256 = None;
                self.campaign_withheld = Some(why);
            }
        }
    }
}

/// The sha256 of a file, hex, read in chunks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Renders and writes the report to `path` ([`write_output`]: never through a link,
/// and refused when `path` is one of `inputs`).
pub fn write(
    path: &Path,
    history: &History,
    results: &Results,
    ctx: &RunContext,
    inputs: &[&Path],
) -> Result<(), OutputError> {
    write_output(path, render(history, results, ctx).as_bytes(), inputs)
}

const CSS: &str = r#"
:root { --ok: #1b7f3b; --bad: #b3261e; --unk: #8a6d00; --fault: #f4c7c3; --line: #ccc; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 0 16px 48px; color: #222; }
h1 { font-size: 1.5em; margin: 16px 0 4px; }
h2 { border-bottom: 1px solid var(--line); padding-bottom: 2px; margin-top: 32px; }
h3 { font-size: 1.05em; margin: 20px 0 4px; }
nav a { margin-right: 12px; }
.verdict { padding: 12px 16px; border-radius: 6px; color: #fff; font-size: 1.3em; font-weight: 600; }
.verdict.valid { background: var(--ok); } .verdict.invalid { background: var(--bad); } .verdict.unknown { background: var(--unk); }
.status-valid { color: var(--ok); } .status-invalid { color: var(--bad); font-weight: 600; } .status-unknown { color: var(--unk); }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
pre, code { font: 13px/1.35 ui-monospace, monospace; }
td, h3 code, .anomaly p { overflow-wrap: anywhere; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
.anomaly { border: 1px solid var(--line); border-radius: 6px; padding: 4px 14px 10px; margin: 12px 0; }
.cause { background: #fff6e0; padding: 4px 8px; }
.note { color: #555; font-size: 0.92em; }
.chart svg, .cycle svg { max-width: 100%; height: auto; }
.key { background: var(--fault); padding: 0 6px; }
@media print {
  body { max-width: none; font-size: 10.5pt; color: #000; }
  nav { display: none; }
  .verdict { color: #000; border: 3px solid #000; background: none !important; }
  .anomaly, table, .chart, .cycle { break-inside: avoid; }
  h2 { break-after: avoid; }
  pre { white-space: pre-wrap; }
}
"#;

fn status_name(s: Status) -> &'static str {
    s.name()
}

/// Renders the whole report.
pub fn render(history: &History, results: &Results, ctx: &RunContext) -> String {
    let verdict = results.verdict;
    let total: u64 = results.anomaly_counts.values().sum();
    let banner = match verdict {
        Verdict::Invalid => format!(
            "INVALID: {total} anomal{} found",
            if total == 1 { "y" } else { "ies" }
        ),
        Verdict::Unknown => {
            "UNKNOWN: no anomaly found, but the history cannot vouch for validity".into()
        }
        Verdict::Valid => "VALID: no anomaly found".into(),
    };
    let history_name = shown_cut(&ctx.history_name, TEXT_LIMIT);
    let title = format!("coherence report: {history_name}");
    let doc = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { "coherence report" }
                p.note { "History " code { (history_name) } ", checked by coherence "
                    (results.tool_version) " with staleness bound " (results.staleness_bound) "." }
                nav {
                    a href="#checks" { "Checks" } a href="#context" { "Campaign" }
                    a href="#anomalies" { "Anomalies" } a href="#staleness" { "Staleness" }
                    a href="#invalidation-lag" { "Invalidation lag" }
                    a href="#timeline" { "Timeline" } a href="#breakdown" { "Breakdown" }
                    a href="#integrity" { "Integrity" }
                }
                div id="verdict" class={ "verdict " (verdict.name()) } { (banner) }
                @if !results.unknown_reasons.is_empty() {
                    ul id="unknown-reasons" {
                        @for why in &results.unknown_reasons { li.status-unknown { (shown(why)) } }
                    }
                }
                (checks(results))
                (context(results, ctx))
                (anomalies(results, total))
                (staleness(results))
                (invalidation_lag(results))
                (live(results))
                (timeline(history, results))
                (breakdown(history, results))
                (integrity(ctx))
            }
        }
    };
    doc.into_string()
}

fn checks(r: &Results) -> Markup {
    let s = &r.stats;
    html! {
        section id="checks" {
            h2 { "Checks" }
            p { (s.events) " events, " (s.operations) " operations on " (s.keys) " keys by "
                (s.processes) " client processes over " (duration(s.duration_ns)) "; "
                (s.nemesis_events) " nemesis events; final phase "
                (if s.final_phase { "logged" } else { "not logged" }) "." }
            @for w in &r.warnings { p.status-unknown { "warning: " (shown(w)) } }
            table {
                thead { tr { th { "check" } th { "status" } th.n { "count" } th { "note" } } }
                tbody {
                    @for c in &r.checks {
                        tr id={ "check-" (c.name.name()) } {
                            td { (c.name.name()) }
                            td class={ "status-" (status_name(c.status)) } { (status_name(c.status)) }
                            td.n { (c.count) }
                            td { @if let Some(reason) = &c.reason { (shown(reason)) } }
                        }
                    }
                }
            }
            @if !r.causes.is_empty() {
                h3 { "Likely causes" }
                table {
                    thead { tr { th { "anomaly" } th { "likely cause" } th.n { "count" } } }
                    tbody {
                        @for (name, causes) in &r.causes {
                            @for (cause, n) in causes {
                                tr { td { (name) } td { (cause) } td.n { (n) } }
                            }
                        }
                    }
                }
            }
            h3 { "Operations" }
            table {
                thead { tr { th { "operation" } th.n { "ok" } th.n { "fail" } th.n { "info" } } }
                tbody {
                    @for (f, c) in &s.by_f {
                        tr { td { (f) } td.n { (c.ok) } td.n { (c.fail) } td.n { (c.info) } }
                    }
                }
            }
        }
    }
}

/// A JSON value as the page shows it: a string as it is, anything else as JSON; escaped
/// and cut after `limit` bytes.
fn json_text(v: &serde_json::Value, limit: usize) -> String {
    match v {
        serde_json::Value::String(s) => shown_cut(s, limit),
        other => shown_cut(&other.to_string(), limit),
    }
}

fn context(r: &Results, ctx: &RunContext) -> Markup {
    let run = ctx.run.as_ref().and_then(|v| v.as_object());
    html! {
        section id="context" {
            h2 { "Campaign and environment" }
            table {
                tbody {
                    tr { th { "checked by" } td { "coherence " (r.tool_version) } }
                    tr { th { "staleness bound (Δ)" } td { (r.staleness_bound) } }
                    @if let Some(run) = run {
                        @for (k, v) in run.iter().filter(|(_, v)| !v.is_object() && !v.is_array() && !v.is_null()) {
                            tr { th { (shown_cut(k, NAME_LIMIT)) } td { (json_text(v, TEXT_LIMIT)) } }
                        }
                    }
                }
            }
            @if let Some(run) = run {
                @if let Some(versions) = run.get("server_versions").and_then(|v| v.as_object()) {
                    h3 { "Server versions" }
                    table {
                        thead { tr { th { "server" } th { "version" } } }
                        tbody { @for (k, v) in versions { tr { td { (shown_cut(k, NAME_LIMIT)) } td { (json_text(v, TEXT_LIMIT)) } } } }
                    }
                }
                @if let Some(nodes) = run.get("nodes").and_then(|v| v.as_array()) {
                    h3 { "Nodes" }
                    table {
                        thead { tr { th { "name" } th { "address" } } }
                        tbody {
                            @for n in nodes {
                                tr {
                                    td { (n.get("name").map(|v| json_text(v, NAME_LIMIT)).unwrap_or_default()) }
                                    td { (n.get("addr").map(|v| json_text(v, NAME_LIMIT)).unwrap_or_default()) }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(campaign) = &ctx.campaign {
                h3 { "Campaign file (as stored in the run directory, secrets redacted)" }
                @if ctx.campaign_redacted > 0 {
                    p.note {
                        (RunDir::CAMPAIGN) " in the run directory held " (ctx.campaign_redacted)
                        " secret value(s), redacted here. Its sha256 is not shown: it would let anyone test guesses of them."
                    }
                }
                @if campaign.len() > CAMPAIGN_LIMIT {
                    p.note { "The file is " (campaign.len()) " bytes; the first " (CAMPAIGN_LIMIT >> 10) " KiB are shown." }
                }
                pre id="campaign" { (bound::lines(&coherence_store::cut(campaign, CAMPAIGN_LIMIT), TEXT_LIMIT)) }
            } @else if let Some(why) = &ctx.campaign_withheld {
                h3 { "Campaign file" }
                p.note {
                    (RunDir::CAMPAIGN) " is in the run directory but not shown: " (shown_cut(why, TEXT_LIMIT))
                    ", so secrets in it could not be found and redacted."
                }
            } @else {
                p.note { "No campaign: the history was checked on its own, outside a run directory." }
            }
            h3 { "Faults" }
            (faults(r))
            h3 { "Nemesis and control events" }
            @if r.events.is_empty() {
                p { "No nemesis or control event in the history." }
            } @else {
                @if r.events.len() > EVENT_LIMIT {
                    p.note { "The first " (EVENT_LIMIT) " of " (r.events.len()) " events." }
                }
                table {
                    thead { tr { th.n { "line" } th.n { "time" } th { "by" } th { "event" } th { "details" } } }
                    tbody {
                        @for e in r.events.iter().take(EVENT_LIMIT) {
                            tr {
                                td.n { (e.index + 1) } td.n { (at(e.time_ns)) } td { (shown(&e.process)) } td { (shown(&e.f)) }
                                td { @if let Some(words) = &e.words {
                                        (shown(words))
                                        @if let Some(v) = &e.value { details { summary { "as logged" } code { (json_text(v, usize::MAX)) } } }
                                    } @else {
                                        code { (e.value.as_ref().map(|v| json_text(v, usize::MAX)).unwrap_or_default()) }
                                    } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Every fault with its outcome: what was requested, what happened, what healed.
fn faults(r: &Results) -> Markup {
    let n = &r.faults;
    html! {
        @if n.plan.is_none() && n.faults.is_empty() && n.errors.is_empty() {
            p { "No fault: the history has no nemesis." }
        } @else {
            p id="fault-summary" { (crate::text::fault_summary(r)) "." }
            @if !n.errors.is_empty() {
                ul { @for e in &n.errors {
                    li.status-unknown { (shown(e.planned.as_deref().unwrap_or("the nemesis"))) " did not happen (line "
                        (e.index + 1) "): " (shown(&e.error)) }
                } }
            }
            @if !n.faults.is_empty() {
                @if n.faults.len() > EVENT_LIMIT {
                    p.note { "The first " (EVENT_LIMIT) " of " (n.faults.len()) " faults." }
                }
                table id="faults" {
                    thead { tr { th.n { "seq" } th.n { "line" } th { "fault" } th { "kind" } th.n { "from" } th.n { "to" } th { "outcome" } th { "why" } } }
                    tbody {
                        @for f in n.faults.iter().take(EVENT_LIMIT) {
                            tr {
                                td.n { @if let Some(s) = f.seq { (s) } }
                                td.n { (f.index + 1) }
                                td { (shown(&f.words)) }
                                td { code { (shown(&f.f)) } }
                                td.n { (at(f.start_ns)) }
                                td.n { @if f.interval { @if let Some(e) = f.end_ns { (at(e)) } @else { "never" } } }
                                td class={ @if f.status.is_good() { "status-valid" } @else { "status-unknown" } } { (f.status.name()) }
                                td { @if let Some(e) = &f.error { (shown(e)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Picks at most [`ANOMALY_LIMIT`] anomalies, taking kinds in turn so every kind found
/// is shown.
fn pick(anomalies: &[Anomaly]) -> Vec<&Anomaly> {
    let mut by_kind: BTreeMap<AnomalyKind, Vec<&Anomaly>> = BTreeMap::new();
    for a in anomalies {
        by_kind.entry(a.name).or_default().push(a);
    }
    let mut picked: Vec<&Anomaly> = Vec::new();
    let mut round = 0;
    while picked.len() < ANOMALY_LIMIT {
        let before = picked.len();
        for list in by_kind.values() {
            if let Some(a) = list.get(round) {
                if picked.len() < ANOMALY_LIMIT {
                    picked.push(a);
                }
            }
        }
        if picked.len() == before {
            break;
        }
        round += 1;
    }
    picked.sort_by_key(|a| (a.name, a.indices.first().copied()));
    picked
}

fn anomalies(r: &Results, total: u64) -> Markup {
    let shown = pick(&r.anomalies);
    html! {
        section id="anomalies" {
            h2 { "Anomalies" }
            @if total == 0 {
                p { "None found." }
            } @else {
                p { "Showing " (shown.len()) " of " (total) " anomalies"
                    @if (shown.len() as u64) < total { " (at most " (ANOMALY_LIMIT) " in this report; results.json keeps up to " (r.anomaly_limit) " of each kind)" }
                    ". Line numbers are lines of the history file, from 1." }
                @for (i, a) in shown.iter().enumerate() { (anomaly(i, a)) }
            }
        }
    }
}

fn anomaly(i: usize, a: &Anomaly) -> Markup {
    let lines: Vec<String> = a.indices.iter().map(|i| (i + 1).to_string()).collect();
    html! {
        div.anomaly id={ "anomaly-" (i + 1) } {
            h3 { (a.name.name()) " of key " code { (shown(&a.key)) }
                @if let Some(n) = &a.node { " on " code { (shown(n)) } } }
            p.note { "history lines " (lines.join(", ")) }
            p { (shown(&a.summary)) }
            @if a.cycle.is_empty() {
                p.note { (sentence(a.no_cycle.unwrap_or("the rules give no cycle among these operations within the bound"))) }
            } @else {
                div.cycle { (cycle_svg(a)) }
                p { "cycle: " code { (shown(&a.cycle_text)) } }
                ol { @for s in &a.cycle { li { b { (s.kind.name()) } ": " (shown(&s.why)) } } }
            }
            @if let Some(c) = &a.cause {
                p.cause { b { "likely cause (" (c.kind.name()) "): " } (shown(&c.text)) }
            }
            table {
                thead { tr { th { "operation" } th.n { "line" } th.n { "completed line" } th { "outcome" }
                    th.n { "process" } th { "node" } th.n { "version" } th { "write" } th.n { "invoked" } th.n { "completed" } } }
                tbody {
                    @for o in &a.ops {
                        tr {
                            td { (o.f) " " (o.index) } td.n { (o.line) }
                            td.n { @if let Some(l) = o.complete_line { (l) } }
                            td { (o.outcome) } td.n { (o.process) }
                            td { @if let Some(n) = &o.node { (shown(n)) } }
                            td.n { @if let Some(v) = o.version { (v) } }
                            td { @if let Some(w) = &o.write { (shown(w)) } }
                            td.n { (at(o.invoke_ns)) }
                            td.n { @if let Some(t) = o.complete_ns { (at(t)) } }
                        }
                    }
                }
            }
        }
    }
}

/// One arrow of a cycle diagram.
struct Edge {
    kind: &'static str,
    /// The SVG path of the curve.
    path: String,
    /// Where the label goes.
    mid: (f64, f64),
    /// The arrowhead's points.
    head: String,
}

/// The cycle as a small diagram: operations on a circle, one labelled arrow per edge.
fn cycle_svg(a: &Anomaly) -> Markup {
    let mut nodes: Vec<u64> = Vec::new();
    for s in &a.cycle {
        for i in [s.from, s.to] {
            if !nodes.contains(&i) {
                nodes.push(i);
            }
        }
    }
    let label = |index: u64| {
        let f = a
            .ops
            .iter()
            .find(|o| o.index == index)
            .map_or("op", |o| o.f.as_str());
        format!("{f} {index}")
    };
    let two = nodes.len() <= 2;
    let (w, h) = (380.0f64, if two { 110.0 } else { 210.0f64 });
    let (cx, cy, radius) = (w / 2.0, h / 2.0, if two { 110.0 } else { 70.0 });
    let k = nodes.len().max(1) as f64;
    let pos: Vec<(f64, f64)> = (0..nodes.len())
        .map(|i| {
            let angle = std::f64::consts::PI + 2.0 * std::f64::consts::PI * i as f64 / k;
            (cx + radius * angle.cos(), cy + 0.8 * radius * angle.sin())
        })
        .collect();
    let boxes: Vec<(f64, f64)> = nodes
        .iter()
        .map(|&i| (7.0 * label(i).chars().count() as f64 / 2.0 + 8.0, 12.0))
        .collect();
    let at_of = |index: u64| nodes.iter().position(|&n| n == index).unwrap_or(0);
    // Where the segment from the box's centre towards `d` leaves the box.
    let exit = |(x, y): (f64, f64), (hw, hh): (f64, f64), (dx, dy): (f64, f64)| {
        let t = (hw / dx.abs().max(1e-9)).min(hh / dy.abs().max(1e-9));
        (x + dx * t, y + dy * t)
    };
    let edges: Vec<Edge> = a
        .cycle
        .iter()
        .filter(|s| s.from != s.to)
        .map(|s| {
            let (i, j) = (at_of(s.from), at_of(s.to));
            let (p, q) = (pos[i], pos[j]);
            let (dx, dy) = (q.0 - p.0, q.1 - p.1);
            let len = (dx * dx + dy * dy).sqrt().max(1e-9);
            let (ux, uy) = (dx / len, dy / len);
            let bend = if nodes.len() <= 2 { 38.0 } else { 14.0 };
            let c = ((p.0 + q.0) / 2.0 + uy * bend, (p.1 + q.1) / 2.0 - ux * bend);
            let start = exit(p, boxes[i], (c.0 - p.0, c.1 - p.1));
            let end = exit(q, boxes[j], (c.0 - q.0, c.1 - q.1));
            let (ex, ey) = (end.0 - c.0, end.1 - c.1);
            let el = (ex * ex + ey * ey).sqrt().max(1e-9);
            let (ax, ay) = (ex / el, ey / el);
            let head = format!(
                "{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}",
                end.0,
                end.1,
                end.0 - 9.0 * ax + 4.5 * ay,
                end.1 - 9.0 * ay - 4.5 * ax,
                end.0 - 9.0 * ax - 4.5 * ay,
                end.1 - 9.0 * ay + 4.5 * ax,
            );
            let mid = (
                0.25 * start.0 + 0.5 * c.0 + 0.25 * end.0,
                0.25 * start.1 + 0.5 * c.1 + 0.25 * end.1,
            );
            let path = format!(
                "M{:.1},{:.1} Q{:.1},{:.1} {:.1},{:.1}",
                start.0, start.1, c.0, c.1, end.0, end.1
            );
            Edge {
                kind: s.kind.name(),
                path,
                mid,
                head,
            }
        })
        .collect();
    html! {
        svg width=(w) height=(h) viewBox={ "0 0 " (w) " " (h) } role="img"
            aria-label={ "cycle: " (shown(&a.cycle_text)) } {
            title { "cycle: " (shown(&a.cycle_text)) }
            @for e in &edges {
                path d=(e.path) fill="none" stroke="#444" stroke-width="1.5" {}
                polygon points=(e.head) fill="#444" {}
                rect x=(format!("{:.1}", e.mid.0 - 11.0)) y=(format!("{:.1}", e.mid.1 - 8.0)) width="22" height="15" fill="#fff" {}
                text x=(format!("{:.1}", e.mid.0)) y=(format!("{:.1}", e.mid.1 + 4.0)) text-anchor="middle"
                    font-size="12" font-family="sans-serif" fill="#b3261e" { (e.kind) }
            }
            @for (i, &n) in nodes.iter().enumerate() {
                rect x=(format!("{:.1}", pos[i].0 - boxes[i].0)) y=(format!("{:.1}", pos[i].1 - boxes[i].1))
                    width=(format!("{:.1}", 2.0 * boxes[i].0)) height=(format!("{:.1}", 2.0 * boxes[i].1))
                    rx="5" fill="#eef3fb" stroke="#335" {}
                text x=(format!("{:.1}", pos[i].0)) y=(format!("{:.1}", pos[i].1 + 4.0)) text-anchor="middle"
                    font-size="12" font-family="sans-serif" { (label(n)) }
            }
        }
    }
}

type ChartResult = Result<(), Box<dyn std::error::Error>>;

/// Draws a chart with plotters into an SVG string. The namespace attribute is dropped:
/// inline SVG in HTML needs none, and the page names no URL at all.
fn chart(
    w: u32,
    h: u32,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> ChartResult,
) -> Markup {
    let mut svg = String::new();
    let drawn = {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        draw(&root).and_then(|_| root.present().map_err(|e| e.into()))
    };
    match drawn {
        Ok(()) => {
            let svg = svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1);
            html! { div.chart { (PreEscaped(svg)) } }
        }
        Err(e) => html! { p.note { "(chart unavailable: " (e.to_string()) ")" } },
    }
}

/// A histogram of `hist` (log counts), its buckets labelled by their bounds.
fn histogram_chart(hist: &[crate::results::Bucket], x_desc: &str, y_desc: &str) -> Markup {
    let bucket_label = |i: usize| -> String {
        hist.get(i).map_or(String::new(), |b| {
            if b.le_ns == 0 {
                "0".into()
            } else {
                format!("≤{}", duration(b.le_ns))
            }
        })
    };
    let max_count = hist.iter().map(|b| b.count).max().unwrap_or(1).max(1) as f64;
    chart(760, 260, |root| {
        root.fill(&WHITE)?;
        let mut c = ChartBuilder::on(root)
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(
                0f64..hist.len().max(1) as f64,
                (0.5f64..max_count * 2.0).log_scale(),
            )?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(hist.len().clamp(1, 24))
            .x_label_formatter(&|x| bucket_label(x.floor() as usize))
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()?;
        c.draw_series(
            hist.iter()
                .enumerate()
                .filter(|(_, b)| b.count > 0)
                .map(|(i, b)| {
                    Rectangle::new(
                        [(i as f64 + 0.1, 0.5), (i as f64 + 0.9, b.count as f64)],
                        RGBColor(70, 110, 180).filled(),
                    )
                }),
        )?;
        Ok(())
    })
}

/// The share of `n` samples within Δ as nines, at each bucket bound above 0 of `hist`
/// (whose counts may sum to less than `n`: the rest are never within), drawn against Δ;
/// and the most nines `n` samples can show.
fn nines_chart(hist: &[crate::results::Bucket], n: u64, y_desc: &str) -> (Markup, f64) {
    let n = n.max(1) as f64;
    let cap = n.log10().max(1.0);
    let mut cum = 0u64;
    let mut curve: Vec<(f64, f64)> = Vec::new();
    for b in hist {
        cum += b.count;
        if b.le_ns > 0 {
            let outside = 1.0 - cum as f64 / n;
            let nines = if outside <= 0.0 {
                cap
            } else {
                (-outside.log10()).min(cap)
            };
            curve.push((b.le_ns as f64 / 1e6, nines));
        }
    }
    let svg = chart(760, 260, |root| {
        root.fill(&WHITE)?;
        let x_max = curve.last().map_or(10.0, |p| p.0).max(0.01);
        let mut c = ChartBuilder::on(root)
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d((0.001f64..x_max).log_scale(), 0f64..cap.ceil())?;
        c.configure_mesh()
            .x_desc("Δ (ms, log)")
            .y_desc(y_desc)
            .draw()?;
        c.draw_series(LineSeries::new(
            curve.iter().copied(),
            RGBColor(70, 110, 180).stroke_width(2),
        ))?;
        Ok(())
    });
    (svg, cap)
}

fn staleness(r: &Results) -> Markup {
    let st = &r.staleness;
    let hist = &st.histogram;
    let distribution = histogram_chart(hist, "staleness", "reads (log)");
    let (nines_chart, cap) = nines_chart(hist, st.reads, "nines fresh within Δ");
    let fresh0 = hist
        .first()
        .map_or(1.0, |b| b.count as f64 / st.reads.max(1) as f64);
    html! {
        section id="staleness" {
            h2 { "Staleness" }
            p { (st.reads) " reads returned a value: staleness p50 " (duration(st.p50_ns)) ", p99 " (duration(st.p99_ns))
                ", p99.9 " (duration(st.p999_ns)) ", max " (duration(st.max_ns)) "; "
                (format!("{:.3}", fresh0 * 100.0)) " % were fresh (staleness 0)." }
            table {
                thead { tr { th { "fresh within" } th.n { "fraction" } th.n { "nines" } } }
                tbody { @for w in &st.fresh_within {
                    tr { td { (w.within) } td.n { (format!("{:.4} %", w.fraction * 100.0)) }
                        td.n { (w.nines.map_or("all".to_string(), |n| format!("{n:.2}"))) } }
                } }
            }
            h3 { "Distribution" }
            (distribution)
            h3 { "Fresh within Δ" }
            p.note { "The share of reads no staler than Δ, as nines (2 = 99 %); the curve tops out at "
                (format!("{cap:.1}")) " nines, all that " (st.reads) " reads can show." }
            (nines_chart)
        }
    }
}

/// The invalidation lag the cache observers saw: per region and per node, its
/// histogram, and the share invalidated within Δ as nines.
/// What the online checker detected while the history was written, if it ran.
fn live(r: &Results) -> Markup {
    let Some(live) = &r.live else {
        return html! {};
    };
    let total: u64 = live.counts.values().sum();
    html! {
        section id="live" {
            h2 { "Live detection" }
            p { "While the history was written, the online checker took its " (live.events)
                " events as they came and flagged " (total)
                " anomalies the moment the history made each certain (each is also among the findings above). Time from the event that made a detection certain to the detection: p50 "
                (duration(live.mttd_ns.p50)) ", p99 " (duration(live.mttd_ns.p99)) ", max " (duration(live.mttd_ns.max)) "." }
            @if !live.counts.is_empty() {
                table {
                    thead { tr { th { "anomaly" } th.n { "detected live" } th.n { "found after the run" } } }
                    tbody {
                        @for (kind, n) in &live.counts {
                            tr { td { (kind) } td.n { (n) } td.n { (r.anomaly_counts.get(kind).copied().unwrap_or(0)) } }
                        }
                    }
                }
            }
        }
    }
}

fn invalidation_lag(r: &Results) -> Markup {
    let Some(lag) = &r.invalidation_lag else {
        return html! {
            section id="invalidation-lag" {
                h2 { "Invalidation lag" }
                p.note { "No cache observer watched this run (no `observe` event), so no invalidation was seen from outside." }
            }
        };
    };
    let row = |name: &str, l: &crate::results::Lag| {
        html! {
            tr { td { (shown(name)) } td.n { (l.awaited) } td.n { (l.invalidated) } td.n { (l.missing) }
                td.n { (l.overwritten + l.expired) } td.n { (l.undecided) }
                td.n { (duration(l.p50_ns)) } td.n { (duration(l.p99_ns)) } td.n { (duration(l.p999_ns)) } td.n { (duration(l.max_ns)) }
                @for w in &l.within { td.n { (format!("{:.3} %", w.fraction * 100.0)) } } }
        }
    };
    let all = &lag.all;
    let distribution = histogram_chart(&all.histogram, "invalidation lag", "invalidations (log)");
    let (nines, cap) = nines_chart(
        &all.histogram,
        all.invalidated + all.missing,
        "nines invalidated within Δ",
    );
    html! {
        section id="invalidation-lag" {
            h2 { "Invalidation lag" }
            p { "From each commit (the change stream's commit event, else the write's acknowledgement) to the first invalidation of the key that the node's observer saw, over the commits on a watched node that held an older version: "
                (all.invalidated) " invalidated of " (all.awaited) " awaited; p50 " (duration(all.p50_ns)) ", p99 " (duration(all.p99_ns))
                ", p99.9 " (duration(all.p999_ns)) ", max " (duration(all.max_ns)) "; " (all.missing) " never invalidated." }
            table {
                thead { tr { th { "" } th.n { "awaited" } th.n { "invalidated" } th.n { "missing" } th.n { "overwritten or expired" } th.n { "undecided" }
                    th.n { "p50" } th.n { "p99" } th.n { "p99.9" } th.n { "max" }
                    @for w in &all.within { th.n { "within " (w.within) } } } }
                tbody {
                    (row("all nodes", all))
                    @for (region, l) in &lag.per_region { (row(&format!("region {region}"), l)) }
                    @for (node, l) in &lag.per_node { (row(node, l)) }
                }
            }
            p.note { "Undecided: the node's observer was blind (an observer-gap), or the node was killed or failed over, while the invalidation was due. The shares within Δ are of the invalidated and the missing together (a missing one never is)." }
            h3 { "Distribution" }
            (distribution)
            h3 { "Invalidated within Δ" }
            p.note { "The share invalidated within Δ, as nines (2 = 99 %); the curve tops out at "
                (format!("{cap:.1}")) " nines, all that " (all.invalidated + all.missing) " commits can show." }
            (nines)
        }
    }
}

/// A nemesis fault as an interval of the run, or an instant (`end == start`).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpan {
    /// The event that opened it (cut as results cut names: [`crate::bound::name`]).
    pub f: String,
    /// When, ns.
    pub start_ns: u64,
    /// When it was closed, ns (the end of the run when never closed).
    pub end_ns: u64,
    /// False for an instant event (a failover).
    pub interval: bool,
    /// The lane the report draws it in: its family's ([`Family::spec`]), else its name.
    pub lane: String,
    /// Its colour there (`#rrggbb`).
    pub colour: String,
    /// The fault in words, with how it ended.
    pub words: String,
}

/// The nemesis faults of a history as spans to draw (see [`crate::faults`] for how
/// events pair): intervals from their start to their heal (the end of the run when never
/// healed), instants (failovers) as lines. Faults that failed to apply are not drawn:
/// they did not happen. `log` is the results' pairing ([`Results::faults`]), its names
/// cut already, so the report draws what the results say.
pub fn fault_spans(h: &History, log: &crate::faults::NemesisLog) -> Vec<FaultSpan> {
    log.faults
        .iter()
        .filter(|f| f.status != crate::faults::FaultStatus::ApplyFailed)
        .map(|f| {
            let (lane, colour) = lane_of(f);
            FaultSpan {
                start_ns: f.start_ns,
                end_ns: f.end_ns.unwrap_or(h.end_time).max(f.start_ns),
                interval: f.interval,
                f: f.f.clone(),
                lane,
                colour,
                words: f.words.clone(),
            }
        })
        .collect()
}

/// `why` as a sentence: a capital first letter and a full stop.
fn sentence(why: &str) -> String {
    let mut c = why.chars();
    match c.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), c.as_str()),
        None => String::new(),
    }
}

/// The lane and colour of a fault: its family's, else (another nemesis's events) a
/// lane of its own name, in grey.
fn lane_of(f: &FaultRecord) -> (String, String) {
    match f.family {
        Some(family) => {
            let spec = family.spec();
            (spec.lane.to_string(), spec.colour.to_string())
        }
        None if f.f == coherence_store::faults::FAILOVER => {
            ("failovers".to_string(), "#b3261e".to_string())
        }
        None => (
            bound::name(f.f.strip_prefix("start-").unwrap_or(&f.f)),
            "#c8c8c8".to_string(),
        ),
    }
}

/// The colour `#rrggbb` as plotters takes it.
fn rgb(colour: &str) -> RGBColor {
    let hex = |i: usize| {
        colour
            .get(i..i + 2)
            .and_then(|x| u8::from_str_radix(x, 16).ok())
            .unwrap_or(200)
    };
    RGBColor(hex(1), hex(3), hex(5))
}

/// Height of one fault lane: its label above, its bars below.
const LANE_H: f64 = 24.0;
/// Where the charts' plotting area begins and ends (`margin` + `y_label_area_size` of
/// [`timeline`]'s charts, 900 wide): the lanes share their time axis.
const PLOT_X: (f64, f64) = (74.0, 890.0);

/// The faults of the run, one labelled lane per kind on the charts' time axis: intervals
/// as bars from the fault to its heal, instants as ticks; each with its words on hover.
fn fault_lanes(spans: &[FaultSpan], end_ns: u64) -> Markup {
    let mut lanes: Vec<&str> = Vec::new();
    for s in spans {
        if !lanes.contains(&s.lane.as_str()) {
            lanes.push(&s.lane);
        }
    }
    let width = 900.0;
    let height = LANE_H * lanes.len() as f64 + 16.0;
    let end = end_ns.max(1) as f64;
    let x_of = |t: u64| PLOT_X.0 + (t as f64 / end).min(1.0) * (PLOT_X.1 - PLOT_X.0);
    html! {
        @if lanes.is_empty() {
            p.note { "No fault happened in this run." }
        } @else {
            div.chart {
                svg id="fault-lanes" width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) } {
                    @for (i, lane) in lanes.iter().enumerate() {
                        rect x=(PLOT_X.0) y=(format!("{:.0}", LANE_H * i as f64 + 11.0)) width=(PLOT_X.1 - PLOT_X.0)
                            height=(format!("{:.0}", LANE_H - 12.0)) fill="#f6f6f6" {}
                        text x=(PLOT_X.0) y=(format!("{:.0}", LANE_H * i as f64 + 9.0)) font-size="10" fill="#444" { (shown(lane)) }
                    }
                    @for s in spans {
                        @let row = lanes.iter().position(|l| *l == s.lane).unwrap_or(0) as f64;
                        @if s.interval {
                            rect class="fault" x=(format!("{:.1}", x_of(s.start_ns))) y=(format!("{:.0}", LANE_H * row + 11.0))
                                width=(format!("{:.1}", (x_of(s.end_ns) - x_of(s.start_ns)).max(2.0)))
                                height=(format!("{:.0}", LANE_H - 12.0)) fill=(s.colour) stroke="#555" stroke-width="0.5" {
                                title { (shown(&s.words)) }
                            }
                        } @else {
                            path class="fault" d=(format!("M{:.1} {:.0} l0 {:.0}", x_of(s.start_ns), LANE_H * row + 10.0, LANE_H - 10.0))
                                stroke="#b3261e" stroke-width="2" {
                                title { (shown(&s.words)) }
                            }
                        }
                    }
                    text x=(PLOT_X.0) y=(format!("{:.0}", height - 3.0)) font-size="10" { "0 s" }
                    text x=(PLOT_X.1) y=(format!("{:.0}", height - 3.0)) font-size="10" text-anchor="end" { (duration(end_ns)) }
                }
            }
        }
    }
}

const KINDS: [OpKind; 5] = [
    OpKind::Read,
    OpKind::Write,
    OpKind::DbRead,
    OpKind::Fill,
    OpKind::Invalidate,
];

/// The timelines, binned: completions per bin by outcome, latency histograms per bin by
/// operation.
struct Binned {
    bin_ns: u64,
    outcomes: [Vec<u64>; 3],
    latency: Vec<Vec<Latency>>,
    /// Latency of completed operations of every kind, by outcome (ok, fail, info).
    by_outcome: Vec<Vec<Latency>>,
}

fn bin(h: &History) -> Binned {
    let end = h.end_time.max(1);
    let bin_ns = end.div_ceil(BINS as u64).max(1);
    let mut b = Binned {
        bin_ns,
        outcomes: [vec![0; BINS], vec![0; BINS], vec![0; BINS]],
        latency: vec![vec![Latency::new(); BINS]; KINDS.len()],
        by_outcome: vec![vec![Latency::new(); BINS]; 3],
    };
    for op in &h.ops {
        let done = op.complete_time != u64::MAX;
        let t = if done {
            op.complete_time
        } else {
            op.invoke_time
        };
        let i = ((t / bin_ns) as usize).min(BINS - 1);
        let o = match op.outcome {
            Outcome::Ok => 0,
            Outcome::Fail => 1,
            Outcome::Info => 2,
        };
        b.outcomes[o][i] += 1;
        if done {
            b.by_outcome[o][i].record(op.complete_time - op.invoke_time);
        }
        if done && op.outcome == Outcome::Ok {
            if let Some(k) = KINDS.iter().position(|&k| k == op.kind) {
                b.latency[k][i].record(op.complete_time - op.invoke_time);
            }
        }
    }
    b
}

const SERIES: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
];

fn shade<DB: DrawingBackend>(
    c: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, impl Ranged<ValueType = f64>>,
    >,
    spans: &[FaultSpan],
    y: (f64, f64),
    min_ns: f64,
) -> ChartResult
where
    DB::ErrorType: 'static,
{
    c.draw_series(spans.iter().filter(|s| s.interval).map(|s| {
        // A fault shorter than a third of a bin still shows, a third of a bin wide.
        let end = (s.end_ns as f64).max(s.start_ns as f64 + min_ns) / 1e9;
        Rectangle::new(
            [(s.start_ns as f64 / 1e9, y.0), (end, y.1)],
            rgb(&s.colour).mix(0.55).filled(),
        )
    }))
    .map_err(|e| e.to_string())?;
    c.draw_series(spans.iter().filter(|s| !s.interval).map(|s| {
        let x = s.start_ns as f64 / 1e9;
        PathElement::new(
            vec![(x, y.0), (x, y.1)],
            RGBColor(179, 38, 30).stroke_width(1),
        )
    }))
    .map_err(|e| e.to_string())?;
    Ok(())
}

fn timeline(h: &History, r: &Results) -> Markup {
    let b = bin(h);
    let spans = fault_spans(h, &r.faults);
    let secs = b.bin_ns as f64 / 1e9;
    let x_end = (b.bin_ns * BINS as u64) as f64 / 1e9;
    let x = |i: usize| (i as f64 + 0.5) * secs;
    let names = ["ok", "fail", "info"];
    let y_max = b
        .outcomes
        .iter()
        .flatten()
        .map(|&c| c as f64 / secs)
        .fold(1.0, f64::max)
        * 1.1;
    let throughput = chart(900, 280, |root| {
        root.fill(&WHITE)?;
        let mut c = ChartBuilder::on(root)
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_end, 0f64..y_max)?;
        c.configure_mesh()
            .x_desc("time (s)")
            .y_desc("operations/s")
            .draw()?;
        shade(&mut c, &spans, (0.0, y_max), b.bin_ns as f64 / 3.0)?;
        for (o, name) in names.iter().enumerate() {
            if b.outcomes[o].iter().all(|&n| n == 0) {
                continue;
            }
            let color = SERIES[o];
            c.draw_series(LineSeries::new(
                b.outcomes[o]
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| (x(i), n as f64 / secs)),
                color.stroke_width(2),
            ))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    });
    let latency = |q: f64, series: &[Vec<Latency>], labels: &[&str]| {
        let lines: Vec<(usize, Vec<(f64, f64)>)> = series
            .iter()
            .enumerate()
            .map(|(k, bins)| {
                let pts = bins
                    .iter()
                    .enumerate()
                    .filter_map(|(i, hist)| hist.quantile(q).map(|ns| (x(i), ns / 1e6)))
                    .collect::<Vec<_>>();
                (k, pts)
            })
            .filter(|(_, pts)| !pts.is_empty())
            .collect();
        let top = lines
            .iter()
            .flat_map(|(_, p)| p.iter().map(|p| p.1))
            .fold(0.01, f64::max)
            * 2.0;
        chart(900, 280, |root| {
            root.fill(&WHITE)?;
            let mut c = ChartBuilder::on(root)
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(64)
                .build_cartesian_2d(0f64..x_end, (0.001f64..top).log_scale())?;
            c.configure_mesh()
                .x_desc("time (s)")
                .y_desc("latency (ms, log)")
                .draw()?;
            shade(&mut c, &spans, (0.001, top), b.bin_ns as f64 / 3.0)?;
            for (k, pts) in &lines {
                let color = SERIES[*k];
                c.draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
                    .label(labels[*k].to_string())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                    });
            }
            c.configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
            Ok(())
        })
    };
    let kind_names: Vec<&str> = KINDS.iter().map(|k| k.as_str()).collect();
    let intervals = spans.iter().filter(|s| s.interval).count();
    html! {
        section id="timeline" {
            h2 { "Timeline" }
            p.note { "Completions per second, and latency by operation (ok operations) and by outcome, in " (BINS) " bins of "
                (duration(b.bin_ns)) " each. Faults are drawn in the colour of their kind: each kind in its own lane below, and shaded in the charts; the "
                (intervals) " fault intervals as bars from the fault to its heal, the " (spans.len() - intervals)
                " instant nemesis events (failovers) as red lines. " (r.stats.nemesis_events) " nemesis events in all." }
            h3 { "Faults by kind" }
            (fault_lanes(&spans, b.bin_ns * BINS as u64))
            h3 { "Throughput" }
            (throughput)
            h3 { "Latency, median by operation" }
            (latency(0.5, &b.latency, &kind_names))
            h3 { "Latency, 99th percentile by operation" }
            (latency(0.99, &b.latency, &kind_names))
            h3 { "Latency, 99th percentile by outcome (every operation)" }
            (latency(0.99, &b.by_outcome, &names))
            h3 { "Operations per node, with anomalies" }
            (node_timeline(h, r, &spans))
        }
    }
}

/// Columns of the per-node timeline.
const NODE_BINS: usize = 60;
/// Rows of the per-node timeline at most.
const NODE_ROWS: usize = 30;

/// One row per node, one cell per time bin: the darker, the more operations it served;
/// a red mark where an explained anomaly was observed; fault intervals shaded.
fn node_timeline(h: &History, r: &Results, spans: &[FaultSpan]) -> Markup {
    let end = h.end_time.max(1);
    let bin_ns = end.div_ceil(NODE_BINS as u64).max(1);
    let col = |t: u64| ((t / bin_ns) as usize).min(NODE_BINS - 1);
    // Rows by node name as results keep it (cut), so the anomalies' nodes match.
    let mut names: Vec<Option<String>> = vec![None; h.nodes.len()];
    let mut per_node: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for op in &h.ops {
        if op.node == crate::model::NONE {
            continue;
        }
        let name = names[op.node as usize]
            .get_or_insert_with(|| bound::name(h.node_name(op.node)))
            .clone();
        let cells = per_node.entry(name).or_insert_with(|| vec![0; NODE_BINS]);
        cells[col(op.invoke_time)] += 1;
    }
    let mut marks: BTreeMap<(&str, usize), Vec<&Anomaly>> = BTreeMap::new();
    for a in &r.anomalies {
        let (Some(node), Some(t)) = (a.node.as_deref(), a.ops.iter().map(|o| o.invoke_ns).max())
        else {
            continue;
        };
        marks.entry((node, col(t))).or_default().push(a);
    }
    let total_nodes = per_node.len();
    let rows: Vec<(String, Vec<u32>)> = per_node.into_iter().take(NODE_ROWS).collect();
    let busiest = rows
        .iter()
        .flat_map(|(_, c)| c.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (label_w, cell_w, row_h) = (90.0, 13.0, 16.0);
    let width = label_w + cell_w * NODE_BINS as f64 + 10.0;
    let height = row_h * rows.len() as f64 + 24.0;
    let x_of = |t: u64| label_w + (t as f64 / bin_ns as f64) * cell_w;
    html! {
        p.note { "Each row a node, each cell " (duration(bin_ns)) "; the darker, the more operations it served. "
            span style="color:#b3261e" { "▲" } " an explained anomaly observed there (results keep up to "
            (r.anomaly_limit) " per kind); shaded: fault intervals, in the colour of their kind."
            @if total_nodes > rows.len() { " The first " (rows.len()) " of " (total_nodes) " nodes are shown." } }
        div.chart {
            svg width=(width) height=(height) viewBox={ "0 0 " (width) " " (height) } {
                @for span in spans.iter().filter(|s| s.interval) {
                    rect x=(format!("{:.1}", x_of(span.start_ns))) y="0"
                        width=(format!("{:.1}", (x_of(span.end_ns) - x_of(span.start_ns)).max(1.0)))
                        height=(format!("{:.0}", row_h * rows.len() as f64)) fill=(span.colour) fill-opacity="0.45" {
                        title { (shown(&span.words)) }
                    }
                }
                @for (i, (node, cells)) in rows.iter().enumerate() {
                    text x="2" y=(format!("{:.0}", row_h * i as f64 + 12.0)) font-size="11" font-family="monospace" { (shown(node)) }
                    @for (j, &n) in cells.iter().enumerate() {
                        @if n > 0 {
                            rect x=(format!("{:.1}", label_w + cell_w * j as f64)) y=(format!("{:.0}", row_h * i as f64 + 2.0))
                                width=(format!("{:.1}", cell_w - 1.0)) height=(format!("{:.0}", row_h - 4.0))
                                fill="#1f77b4" fill-opacity=(format!("{:.2}", 0.12 + 0.88 * n as f64 / busiest)) {}
                        }
                    }
                    @for j in 0..NODE_BINS {
                        @if let Some(list) = marks.get(&(node.as_str(), j)) {
                            path d=(format!("M{:.1} {:.0} l5 9 l-10 0 z", label_w + cell_w * j as f64 + cell_w / 2.0, row_h * i as f64 + 3.0))
                                fill="#b3261e" {
                                title { (list.len()) " anomal" (if list.len() == 1 { "y" } else { "ies" }) ": "
                                    (list.iter().take(5).map(|a| format!("{} of {}", a.name.name(), shown(&a.key))).collect::<Vec<_>>().join(", ")) }
                            }
                        }
                    }
                }
                text x=(label_w) y=(format!("{:.0}", height - 6.0)) font-size="11" { "0 s" }
                text x=(format!("{:.0}", width - 60.0)) y=(format!("{:.0}", height - 6.0)) font-size="11" { (duration(bin_ns * NODE_BINS as u64)) }
            }
        }
    }
}

fn counts_table(title: &str, rows: &BTreeMap<String, NodeCounts>) -> Markup {
    let kinds: Vec<&str> = AnomalyKind::ALL
        .iter()
        .map(|k| k.name())
        .filter(|k| rows.values().any(|r| r.anomalies.contains_key(k)))
        .collect();
    html! {
        table {
            thead { tr { th { (title) } th.n { "ok reads" } th.n { "misses" } th.n { "miss rate" }
                @for k in &kinds { th.n { (k) } } } }
            tbody {
                @for (name, c) in rows {
                    tr {
                        td { (shown(name)) } td.n { (c.reads) } td.n { (c.misses) }
                        td.n { (if c.reads > 0 { format!("{:.1} %", 100.0 * c.misses as f64 / c.reads as f64) } else { "-".into() }) }
                        @for k in &kinds { td.n { (c.anomalies.get(k).copied().unwrap_or(0)) } }
                    }
                }
            }
        }
    }
}

fn breakdown(h: &History, r: &Results) -> Markup {
    let mut errors: Vec<(&str, u64)> = h.errors.iter().map(|(e, &n)| (&**e, n)).collect();
    errors.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    html! {
        section id="breakdown" {
            h2 { "Breakdown" }
            h3 { "Per region (of the client)" }
            @if r.per_region.is_empty() { p { "The history names no regions." } }
            @else { (counts_table("region", &r.per_region)) }
            h3 { "Per node" }
            @if r.per_node.is_empty() { p { "The history names no nodes." } }
            @else { (counts_table("node", &r.per_node)) }
            h3 { "Keys with the most anomalies" }
            @if r.per_key.is_empty() { p { "No key has an anomaly." } }
            @else {
                p.note { (r.keys_with_anomalies) " keys have anomalies; the first " (r.per_key.len().min(20)) " are shown." }
                table {
                    thead { tr { th { "key" } th.n { "anomalies" } th { "by kind" } } }
                    tbody { @for k in r.per_key.iter().take(20) {
                        tr { td { code { (shown(&k.key)) } } td.n { (k.total) }
                            td { (k.anomalies.iter().map(|(n, c)| format!("{n} {c}")).collect::<Vec<_>>().join(", ")) } }
                    } }
                }
            }
            h3 { "Errors clients saw" }
            @if errors.is_empty() { p { "No fail or info completion carried an error." } }
            @else {
                table {
                    thead { tr { th { "error" } th.n { "count" } } }
                    tbody { @for (e, n) in errors.iter().take(20) { tr { td { code { (shown_cut(e, TEXT_LIMIT)) } } td.n { (n) } } } }
                }
                @if errors.len() > 20 || h.errors_uncounted > 0 {
                    p.note { (errors.len()) " distinct messages; the 20 most frequent are shown." }
                }
            }
        }
    }
}

fn integrity(ctx: &RunContext) -> Markup {
    let history_name = shown_cut(&ctx.history_name, TEXT_LIMIT);
    html! {
        section id="integrity" {
            h2 { "Integrity" }
            p { "These hashes identify exactly what was checked. Recompute them in the run directory with:" }
            pre { "sha256sum " (history_name) @if ctx.campaign_sha256.is_some() { " " (RunDir::CAMPAIGN) } }
            table {
                thead { tr { th { "file" } th { "sha256" } } }
                tbody {
                    tr { td { code { (history_name) } } td { code { (ctx.history_sha256.as_deref().unwrap_or("(not computed)")) } } }
                    @if let Some(c) = &ctx.campaign_sha256 { tr { td { code { (RunDir::CAMPAIGN) } } td { code { (c) } } } }
                }
            }
        }
    }
}
