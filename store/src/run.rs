//! Run directories: where a run's files live and how to find its history.
//!
//! A run directory is `runs/<campaign>/<UTC timestamp>/` and holds `history.jsonl`
//! (or `history.jsonl.gz`), `results.json`, `report.html` and the other files listed
//! in DESIGN.md; [`RunDir`] is the one place that names them. `runs/latest` points at
//! the newest run, and `runs/index.html` lists them all.

use std::path::{Path, PathBuf};

/// A run directory, and the one place that names its files: every reader and writer of
/// a run's files asks it for their paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir(PathBuf);

impl RunDir {
    /// The history file's name.
    pub const HISTORY: &'static str = "history.jsonl";
    /// The compressed history file's name.
    pub const HISTORY_GZ: &'static str = "history.jsonl.gz";
    /// The campaign as run (secrets redacted).
    pub const CAMPAIGN: &'static str = "campaign.toml";
    /// Tool version, seed, start time, nodes and server versions ([`crate::run_info`]).
    pub const RUN_JSON: &'static str = "run.json";
    /// The heal journal of the run's faults.
    pub const JOURNAL: &'static str = "faults.jsonl";
    /// The checker's results.
    pub const RESULTS: &'static str = "results.json";
    /// The HTML report.
    pub const REPORT: &'static str = "report.html";
    /// The JUnit XML for CI.
    pub const JUNIT: &'static str = "junit.xml";
    /// The directory of server logs fetched from the nodes, one directory per node.
    pub const LOGS: &'static str = "logs";

    /// The run directory (or a directory laid out as one, such as `check --out`'s) at
    /// `path`.
    pub fn new(path: impl Into<PathBuf>) -> RunDir {
        RunDir(path.into())
    }

    /// Creates `STORE/<campaign>/<UTC timestamp>/` for a new run.
    pub fn create(store: &Path, campaign: &str) -> std::io::Result<RunDir> {
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace(':', "");
        let parent = store.join(campaign);
        std::fs::create_dir_all(&parent)?;
        // Two runs in the same second get -2, -3, ...
        for n in 1.. {
            let dir = if n == 1 {
                parent.join(&stamp)
            } else {
                parent.join(format!("{stamp}-{n}"))
            };
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(RunDir(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!()
    }

    /// The run directory a history belongs to: its directory when the file is named
    /// [`RunDir::HISTORY`] or [`RunDir::HISTORY_GZ`], as in a run directory; `None` for
    /// a history elsewhere. The report reads the run's other files from it, and its
    /// files are regular files opened without following links.
    pub fn of_history(history: &Path) -> Option<RunDir> {
        let name = history.file_name()?;
        if name != Self::HISTORY && name != Self::HISTORY_GZ {
            return None;
        }
        Some(RunDir::new(match history.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        }))
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `history.jsonl`.
    pub fn history(&self) -> PathBuf {
        self.0.join(Self::HISTORY)
    }

    /// `history.jsonl.gz`.
    pub fn history_gz(&self) -> PathBuf {
        self.0.join(Self::HISTORY_GZ)
    }

    /// `campaign.toml`.
    pub fn campaign(&self) -> PathBuf {
        self.0.join(Self::CAMPAIGN)
    }

    /// `run.json`.
    pub fn run_json(&self) -> PathBuf {
        self.0.join(Self::RUN_JSON)
    }

    /// `faults.jsonl`, the heal journal.
    pub fn journal(&self) -> PathBuf {
        self.0.join(Self::JOURNAL)
    }

    /// `results.json`.
    pub fn results(&self) -> PathBuf {
        self.0.join(Self::RESULTS)
    }

    /// `report.html`.
    pub fn report(&self) -> PathBuf {
        self.0.join(Self::REPORT)
    }

    /// `junit.xml`.
    pub fn junit(&self) -> PathBuf {
        self.0.join(Self::JUNIT)
    }

    /// `logs/`.
    pub fn logs(&self) -> PathBuf {
        self.0.join(Self::LOGS)
    }

    /// Whether it holds a history (plain or compressed), as every run does.
    pub fn has_history(&self) -> bool {
        self.history().exists() || self.history_gz().exists()
    }
}

impl AsRef<Path> for RunDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

/// Finds the history a user pointed at: a file (or a pipe) as it is, the history inside a
/// run directory, or `-` for standard input ([`crate::reader::STDIN`]). The error says
/// what was looked for.
///
/// A history found in a directory must be a regular file in it: a symbolic link (or a
/// FIFO, a device) named `history.jsonl` is refused rather than followed, as every file
/// of a run directory is ([`crate::files::open_regular`]). A directory by that name is
/// not a history and is passed over.
pub fn resolve_history(path: &Path) -> Result<PathBuf, String> {
    if path == Path::new(crate::reader::STDIN) {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        let dir = RunDir::new(path);
        for candidate in [dir.history(), dir.history_gz()] {
            match std::fs::symlink_metadata(&candidate) {
                Err(_) => continue,
                Ok(m) if m.is_dir() => continue,
                Ok(_) => {
                    // The reader opens it the same way; this only refuses it early.
                    crate::files::open_regular(&candidate).map_err(|e| e.to_string())?;
                    return Ok(candidate);
                }
            }
        }
        return Err(format!(
            "{} is a directory without a {} or {}: point at a history file or a run directory",
            path.display(),
            RunDir::HISTORY,
            RunDir::HISTORY_GZ
        ));
    }
    if path.exists() {
        Ok(path.to_path_buf())
    } else {
        Err(format!(
            "{} does not exist: point at a history file (.jsonl or .jsonl.gz), a run directory, \
             or - for standard input",
            path.display()
        ))
    }
}

/// Opens a history for reading: a run directory's history ([`RunDir::of_history`]) as a regular
/// file, never through a link ([`crate::files::open_regular`]); any other file as it is,
/// links followed (the user named it).
pub fn open_history(path: &Path) -> std::io::Result<std::fs::File> {
    if RunDir::of_history(path).is_some() {
        crate::files::open_regular(path)
    } else {
        std::fs::File::open(path)
    }
}

/// The files a check of `history` reads, which its outputs must not overwrite: the
/// history and, in a run directory, the run's `campaign.toml` and `run.json`.
pub fn inputs_of(history: &Path) -> Vec<PathBuf> {
    let mut inputs = vec![history.to_path_buf()];
    if let Some(dir) = RunDir::of_history(history) {
        inputs.push(dir.campaign());
        inputs.push(dir.run_json());
    }
    inputs
}

/// The link to the newest run, in the store.
pub const LATEST: &str = "latest";

/// Points `STORE/latest` at `run` (a relative link, replaced atomically).
pub fn point_latest(store: &Path, run: &Path) -> std::io::Result<()> {
    let target = run.strip_prefix(store).unwrap_or(run);
    let tmp = store.join(format!(".{LATEST}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, store.join(LATEST))
}

/// The run index's file name, in the store.
pub const INDEX: &str = "index.html";

/// One run in the store, as the index lists it.
#[derive(Debug, Clone)]
pub struct RunEntry {
    /// The campaign's name (the run directory's parent).
    pub campaign: String,
    /// The run directory's name (its UTC start, `2026-11-23T120000Z`).
    pub name: String,
    /// The run directory, relative to the store.
    pub dir: PathBuf,
    /// Its `results.json`, if it has one that parses (a run that died has none).
    pub results: Option<serde_json::Value>,
}

/// Every run in `store`, newest first. Directories that are not runs (no history) are
/// left out; a run without results is listed with none.
pub fn list_runs(store: &Path) -> std::io::Result<Vec<RunEntry>> {
    let mut runs = Vec::new();
    for campaign in std::fs::read_dir(store)? {
        let campaign = campaign?;
        if !campaign.file_type()?.is_dir() {
            continue; // `latest` is a link, the index a file
        }
        let campaign_name = campaign.file_name().to_string_lossy().into_owned();
        for run in std::fs::read_dir(campaign.path())? {
            let run = run?;
            let dir = RunDir::new(run.path());
            if !dir.has_history() {
                continue;
            }
            let results = std::fs::read(dir.results())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let name = run.file_name().to_string_lossy().into_owned();
            runs.push(RunEntry {
                dir: PathBuf::from(&campaign_name).join(&name),
                campaign: campaign_name.clone(),
                name,
                results,
            });
        }
    }
    // Names are UTC timestamps: newest first across campaigns.
    runs.sort_by(|a, b| b.name.cmp(&a.name).then(a.campaign.cmp(&b.campaign)));
    Ok(runs)
}
