//! Run directories: where a run's files live and how to find its history.
//!
//! A run directory is `runs/<campaign>/<UTC timestamp>/` and holds `history.jsonl`
//! (or `history.jsonl.gz`), `results.json`, `report.html` and the other files listed
//! in DESIGN.md. `runs/latest` points at the newest run.

use std::path::{Path, PathBuf};

/// The history file's name in a run directory.
pub const HISTORY: &str = "history.jsonl";
/// The compressed history file's name in a run directory.
pub const HISTORY_GZ: &str = "history.jsonl.gz";
/// The checker's results in a run directory.
pub const RESULTS: &str = "results.json";

/// Finds the history a user pointed at: a file as it is, or the history inside a run
/// directory. The error says what was looked for.
pub fn resolve_history(path: &Path) -> Result<PathBuf, String> {
    if path.is_dir() {
        for name in [HISTORY, HISTORY_GZ] {
            let candidate = path.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        return Err(format!(
            "{} is a directory without a {HISTORY} or {HISTORY_GZ}: point at a history file or a run directory",
            path.display()
        ));
    }
    if path.exists() {
        Ok(path.to_path_buf())
    } else {
        Err(format!(
            "{} does not exist: point at a history file (.jsonl or .jsonl.gz) or a run directory",
            path.display()
        ))
    }
}
