//! `runs/index.html`: every run in the store, newest first, with its campaign, time,
//! verdict and anomaly counts, linking to its report. One self-contained page, refreshed
//! after each run; it escapes everything it shows (control characters too:
//! [`crate::bound`]), and its links are percent-encoded.

use crate::bound::{shown, shown_cut, NAME_LIMIT};
use coherence_store::files::write_output;
use coherence_store::run::{list_runs, RunDir, RunEntry, INDEX};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use std::path::{Path, PathBuf};

const CSS: &str = r#"
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 0 16px 48px; color: #222; }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
.valid { color: #1b7f3b; } .invalid { color: #b3261e; font-weight: 600; } .unknown { color: #8a6d00; }
.note { color: #555; font-size: 0.92em; }
@media print { body { max-width: none; font-size: 10.5pt; } a { color: #000; } }
"#;

/// A run's verdict as results.json says it: `valid`, `invalid`, `unknown`, or
/// `no results` for a run that died before its check.
pub fn verdict(results: Option<&serde_json::Value>) -> &'static str {
    let Some(r) = results else {
        return "no results";
    };
    match r["verdict"].as_str() {
        Some("valid") => return "valid",
        Some("invalid") => return "invalid",
        Some("unknown") => return "unknown",
        _ => {}
    }
    // Results of format 1, which had no verdict.
    let statuses: Vec<&str> = r["checks"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["status"].as_str()).collect())
        .unwrap_or_default();
    if r["valid"] == false || statuses.contains(&"invalid") {
        "invalid"
    } else if statuses.contains(&"unknown") {
        "unknown"
    } else {
        "valid"
    }
}

/// What a link's path keeps of a file name as it is: anything else is percent-encoded
/// (control characters, spaces, `%`, `#`, `?`, quotes and brackets, and every byte of a
/// character beyond ASCII).
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'\'')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\');

fn counts(results: Option<&serde_json::Value>) -> String {
    let Some(map) = results.and_then(|r| r["anomaly-counts"].as_object()) else {
        return String::new();
    };
    map.iter()
        .filter_map(|(k, v)| {
            v.as_u64()
                .filter(|n| *n > 0)
                .map(|n| format!("{} {n}", shown_cut(k, NAME_LIMIT)))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn row(run: &RunEntry) -> Markup {
    let link =
        |file: &str| utf8_percent_encode(&run.dir.join(file).to_string_lossy(), PATH).to_string();
    let verdict = verdict(run.results.as_ref());
    let counts = counts(run.results.as_ref());
    html! {
        tr {
            td { (shown(&run.campaign)) }
            td { a href=(link(RunDir::REPORT)) { (shown(&run.name)) } }
            td class=(verdict) { (verdict) }
            td { @if counts.is_empty() { "—" } @else { (counts) } }
            td { a href=(link(RunDir::RESULTS)) { (RunDir::RESULTS) } }
        }
    }
}

/// The index page of `runs`.
pub fn render(runs: &[RunEntry]) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "coherence runs" }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { "coherence runs" }
                p.note { (runs.len()) " run(s), newest first. Each links to its report." }
                table {
                    tr { th { "campaign" } th { "run (UTC)" } th { "verdict" } th { "anomalies" } th { "files" } }
                    @for run in runs { (row(run)) }
                }
            }
        }
    }
    .into_string()
}

/// Writes `STORE/index.html` from the runs in the store ([`write_output`]: a temporary
/// file renamed into place, never written through a link); returns its path.
pub fn write(store: &Path) -> std::io::Result<PathBuf> {
    let runs = list_runs(store)?;
    let path = store.join(INDEX);
    write_output(&path, render(&runs).as_bytes(), &[]).map_err(std::io::Error::other)?;
    Ok(path)
}
