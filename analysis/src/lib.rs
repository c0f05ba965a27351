//! The offline checker of coherence.
//!
//! It reads a history (any file that follows `shared/spec/history.md`), pairs its
//! events into operations ([`model`]), runs one detector per anomaly ([`detect`]) on
//! every key in parallel ([`check`]), proves each anomaly as a cycle of the dependency
//! graph ([`graph`]), explains it in sentences with its likely cause ([`explain`]), and
//! gathers the verdict, counts and distributions ([`dist`]) into versioned [`results`],
//! which [`text`] and the HTML [`report`] render; [`outputs`] writes them in one order for
//! `check` and `run`. Every string of the history is cut where
//! results keep it and escaped wherever it is shown ([`bound`]). It never
//! touches a network; all it needs is the history.

#![deny(missing_docs)]

pub mod bound;
pub mod causes;
pub mod check;
pub mod detect;
pub mod dist;
pub mod explain;
pub mod faults;
pub mod graph;
pub mod index;
pub mod junit;
pub mod live;
pub mod model;
pub mod observers;
pub mod outputs;
pub mod report;
pub mod results;
pub mod text;
pub mod topology;
pub mod versions;

pub use check::{AnomalyKind, CauseKind};
pub use results::{Options, Results, Status, Verdict};

use coherence_store::reader::{STDIN, STDIN_NAME};
use coherence_store::{read_history, Progress, ReadError, ReadSummary};
use std::path::Path;

/// Reads, checks and explains the history at `path`.
pub fn check_file(
    path: &Path,
    options: &Options,
    progress: &dyn Progress,
) -> Result<Results, ReadError> {
    check_file_keeping(path, options, progress).map(|(_, results, _)| results)
}

/// As [`check_file`], and hands back the history too (the report draws its timelines
/// from it) and what the read saw (the history's sha256 for the report among it: `path`
/// may be a pipe or `-`, which cannot be read again).
pub fn check_file_keeping(
    path: &Path,
    options: &Options,
    progress: &dyn Progress,
) -> Result<(model::History, Results, ReadSummary), ReadError> {
    let mut builder = model::Builder::new();
    let summary = read_history(path, &mut builder, progress)?;
    progress.phase("checking");
    let history = builder.finish();
    let warnings = summary.warnings.iter().map(|w| w.to_string()).collect();
    let name = if path == Path::new(STDIN) {
        STDIN_NAME.to_string()
    } else {
        path.display().to_string()
    };
    let results = check_history(&history, options, &name, warnings, summary.unfinished);
    Ok((history, results, summary))
}

/// Checks a history already in memory.
pub fn check_history(
    history: &model::History,
    options: &Options,
    name: &str,
    warnings: Vec<String>,
    unfinished: u64,
) -> Results {
    let ctx = check::Context::new(history, options.staleness_bound)
        .with_invalidation_bound(options.invalidation_bound);
    let findings = check::check(&ctx);
    results::build(&ctx, findings, options, name, warnings, unfinished)
}
