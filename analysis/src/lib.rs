//! The offline checker of coherence.
//!
//! It reads a history (any file that follows `shared/spec/history.md`), pairs its
//! events into operations ([`model`]), runs one detector per anomaly on every key in
//! parallel ([`check`]), proves each anomaly as a cycle of the dependency graph
//! ([`graph`]), explains it in sentences with its likely cause ([`explain`]), and
//! gathers the verdict, counts and distributions into versioned [`results`], which
//! [`text`] and the HTML [`report`] render. It never
//! touches a network; all it needs is the history.

#![deny(missing_docs)]

pub mod causes;
pub mod check;
pub mod explain;
pub mod faults;
pub mod graph;
pub mod index;
pub mod junit;
pub mod model;
pub mod report;
pub mod results;
pub mod text;
pub mod topology;

pub use check::{AnomalyKind, CauseKind};
pub use results::{Options, Results, Status, Verdict};

use coherence_store::{read_history, Progress, ReadError};
use std::path::Path;

/// Reads, checks and explains the history at `path`.
pub fn check_file(
    path: &Path,
    options: &Options,
    progress: &dyn Progress,
) -> Result<Results, ReadError> {
    check_file_keeping(path, options, progress).map(|(_, results)| results)
}

/// As [`check_file`], and hands back the history too (the report draws its timelines
/// from it).
pub fn check_file_keeping(
    path: &Path,
    options: &Options,
    progress: &dyn Progress,
) -> Result<(model::History, Results), ReadError> {
    let mut builder = model::Builder::new();
    let summary = read_history(path, &mut builder, progress)?;
    progress.phase("checking");
    let history = builder.finish();
    let warnings = summary.warnings.iter().map(|w| w.to_string()).collect();
    let results = check_history(
        &history,
        options,
        &path.display().to_string(),
        warnings,
        summary.unfinished,
    );
    Ok((history, results))
}

/// Checks a history already in memory.
pub fn check_history(
    history: &model::History,
    options: &Options,
    name: &str,
    warnings: Vec<String>,
    unfinished: u64,
) -> Results {
    let ctx = check::Context::new(history, options.staleness_bound);
    let findings = check::check(&ctx);
    results::build(&ctx, findings, options, name, warnings, unfinished)
}
