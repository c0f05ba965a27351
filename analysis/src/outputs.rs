//! Check a history and write what it concludes, in one order for everyone: results,
//! report, JUnit. `coherence check` and the end of `coherence run` both call
//! [`check_and_write`], so the outputs of a check and of a run are made the same way.
//!
//! Every output is refused before the check when it is one of the inputs, and the run
//! directory's files the report shows are read before anything is written, so a check
//! that is refused leaves no output behind.

use crate::{check_file_keeping, junit, report, Options, Results};
use coherence_store::files::{refuse_input, write_output, OutputError};
use coherence_store::run::RunDir;
use coherence_store::{Progress, ReadError};
use std::path::{Path, PathBuf};

/// Where the outputs go.
#[derive(Debug, Clone)]
pub struct Outputs<'a> {
    /// The directory `results.json` and `report.html` go to (created when missing), if
    /// any: a run directory, or `check --out`'s.
    pub dir: Option<&'a RunDir>,
    /// The files the JUnit XML goes to: none, `--junit`'s, or the run directory's and
    /// `--junit`'s.
    pub junit: &'a [&'a Path],
    /// The files no output may overwrite: the history and what the check reads beside
    /// it ([`coherence_store::run::inputs_of`]), or the campaign file.
    pub inputs: &'a [&'a Path],
    /// What the online checker found while the history was written (`results.json`'s
    /// `live` section), if it ran.
    pub live: Option<crate::live::LiveSummary>,
}

/// What [`check_and_write`] concluded and wrote.
#[derive(Debug)]
pub struct Written {
    /// The check's results.
    pub results: Results,
    /// The report, when [`Outputs::dir`] asked for one.
    pub report: Option<PathBuf>,
}

/// Why the history was not checked or an output not written.
#[derive(Debug, thiserror::Error)]
pub enum OutputsError {
    /// The history could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// An output was refused or could not be written.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The run directory's files for the report could not be read.
    #[error("cannot read {} for the report", history.display())]
    Context {
        /// The history whose run directory was read.
        history: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The output directory could not be created.
    #[error("cannot create the output directory {}", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The results could not be encoded.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Checks the history at `path` with `options` (reporting to `progress`, which is
/// dropped when the check is done, so that a bar is gone before anything is written),
/// then writes `results.json`, `report.html` and the JUnit XML where `outputs` says.
pub fn check_and_write<P: Progress>(
    path: &Path,
    options: &Options,
    progress: P,
    outputs: &Outputs,
) -> Result<Written, OutputsError> {
    // No output may overwrite what is checked; refused before the work, not after.
    let files = outputs
        .dir
        .iter()
        .flat_map(|dir| [dir.results(), dir.report()])
        .chain(outputs.junit.iter().map(|f| f.to_path_buf()));
    for output in files {
        refuse_input(&output, outputs.inputs)?;
    }
    let (history, mut results, summary) = check_file_keeping(path, options, &progress)?;
    results.live = outputs.live.clone();
    drop(progress);
    let mut report_path = None;
    if let Some(dir) = outputs.dir {
        // The run directory's files first: one that is refused leaves no output behind.
        let context = report::RunContext::gather(path, Some(summary.sha256)).map_err(|source| {
            OutputsError::Context {
                history: path.to_path_buf(),
                source,
            }
        })?;
        std::fs::create_dir_all(dir.path()).map_err(|source| OutputsError::CreateDir {
            dir: dir.path().to_path_buf(),
            source,
        })?;
        let json = serde_json::to_vec_pretty(&results)?;
        write_output(&dir.results(), &json, outputs.inputs)?;
        let file = dir.report();
        report::write(&file, &history, &results, &context, outputs.inputs)?;
        report_path = Some(file);
    }
    drop(history);
    if !outputs.junit.is_empty() {
        let xml = junit::render(&results);
        for file in outputs.junit {
            write_output(file, xml.as_bytes(), outputs.inputs)?;
        }
    }
    Ok(Written {
        results,
        report: report_path,
    })
}
