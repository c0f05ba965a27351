//! `run.json`: what a run was (tool version, campaign, seed, start time, the workload's
//! size, the nodes and their server versions), written when the nodes are known and read
//! back by whoever needs it.
//!
//! The file is versioned: it carries [`FORMAT`] and [`FORMAT_VERSION`] beside the fields
//! of [`RunInfo`], and reading a file of another version (or one without a version,
//! written before it had one) is an error that says what to do.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The `format` of every `run.json`.
pub const FORMAT: &str = "coherence-run";
/// The version of the `run.json` format; bump it when a field changes meaning.
pub const FORMAT_VERSION: u32 = 1;

/// What a run was, as `run.json` holds it (beside its `format` and `format_version`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The version of coherence that ran.
    pub tool_version: String,
    /// The campaign's name.
    pub campaign: String,
    /// The workload's random seed.
    pub seed: u64,
    /// The wall-clock start, RFC 3339 with milliseconds (UTC).
    pub started_at: String,
    /// The wall-clock start, in nanoseconds since the Unix epoch.
    pub started_unix_ns: u64,
    /// How long the workload was to run, in milliseconds.
    pub time_limit_ms: u64,
    /// Concurrent clients.
    pub concurrency: u32,
    /// Target operations per second (0: as fast as they go).
    pub rate: u32,
    /// Whether the run was against the lab.
    pub lab: bool,
    /// The lab's invalidator, when the run was against the lab.
    pub invalidator: Option<String>,
    /// Every node the clients used, once each.
    pub nodes: Vec<NodeAddr>,
    /// Each server's version by node name (`redis 7.0.15`, `postgresql 15.8`); `null`
    /// when it could not be asked.
    pub server_versions: BTreeMap<String, Option<String>>,
}

/// A node's name in the history and its address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The name events use.
    pub name: String,
    /// `host:port`.
    pub addr: String,
}

/// Why a `run.json` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RunInfoError {
    /// The file could not be read (or is a link, not a regular file).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not JSON, or a field is missing or of the wrong type.
    #[error("{path} is not a valid run.json: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// It is JSON of another format.
    #[error("{path} is not a run.json of coherence (its format is {found:?}, not \"{FORMAT}\"): point at a run directory's run.json")]
    NotRunJson {
        /// The file.
        path: String,
        /// Its `format`.
        found: String,
    },
    /// It is a run.json of another version, or of none (written before run.json had
    /// one).
    #[error(
        "{path} has {}, but this coherence ({}) reads version {FORMAT_VERSION}: \
         read it with the coherence that wrote it{}, or run the campaign again",
        found.map_or("no format version".to_string(), |v| format!("format version {v}")),
        env!("CARGO_PKG_VERSION"),
        tool_version.as_ref().map(|t| format!(" ({t})")).unwrap_or_default()
    )]
    Version {
        /// The file.
        path: String,
        /// Its `format_version`, if it has one.
        found: Option<u64>,
        /// The `tool_version` that wrote it, if it says.
        tool_version: Option<String>,
    },
}

#[derive(Serialize)]
struct Written<'a> {
    format: &'static str,
    format_version: u32,
    #[serde(flatten)]
    info: &'a RunInfo,
}

#[derive(Deserialize)]
struct Header {
    format: Option<String>,
    format_version: Option<u64>,
    tool_version: Option<String>,
}

impl RunInfo {
    /// The file's bytes: pretty JSON with [`FORMAT`] and [`FORMAT_VERSION`] first.
    pub fn to_json(&self) -> Vec<u8> {
        let written = Written {
            format: FORMAT,
            format_version: FORMAT_VERSION,
            info: self,
        };
        // A struct of strings, numbers and maps with string keys always serializes.
        serde_json::to_vec_pretty(&written).expect("run.json serializes")
    }

    /// Reads `run.json` from `bytes`; `path` names it in errors. The format and its
    /// version are checked before the fields.
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<RunInfo, RunInfoError> {
        let path = || path.display().to_string();
        let invalid = |source| RunInfoError::Invalid {
            path: path(),
            source,
        };
        let header: Header = serde_json::from_slice(bytes).map_err(invalid)?;
        match header.format {
            Some(f) if f == FORMAT => {}
            Some(found) => {
                return Err(RunInfoError::NotRunJson {
                    path: path(),
                    found,
                })
            }
            None => {}
        }
        if header.format_version != Some(FORMAT_VERSION.into()) {
            return Err(RunInfoError::Version {
                path: path(),
                found: header.format_version,
                tool_version: header.tool_version,
            });
        }
        serde_json::from_slice(bytes).map_err(invalid)
    }

    /// Reads a run directory's `run.json` (a regular file, not followed through a link:
    /// [`crate::files::read_regular`]); `None` when there is none.
    pub fn read(path: &Path) -> Result<Option<RunInfo>, RunInfoError> {
        let bytes = crate::files::read_regular(path).map_err(|source| RunInfoError::Io {
            path: path.display().to_string(),
            source,
        })?;
        bytes.map(|b| RunInfo::from_slice(&b, path)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            tool_version: "0.1.0".into(),
            campaign: "lab-writer".into(),
            seed: 7,
            started_at: "2026-11-23T12:00:00.000Z".into(),
            started_unix_ns: 1_795_000_000_000_000_000,
            time_limit_ms: 5000,
            concurrency: 8,
            rate: 0,
            lab: true,
            invalidator: None,
            nodes: vec![NodeAddr {
                name: "r1a".into(),
                addr: "10.77.0.21:6379".into(),
            }],
            server_versions: [("r1a".to_string(), Some("redis 7.0.15".to_string()))]
                .into_iter()
                .chain([("db1".to_string(), None)])
                .collect(),
        }
    }

    #[test]
    fn run_json_is_versioned_and_reads_back() {
        let bytes = info().to_json();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["format"], FORMAT);
        assert_eq!(v["format_version"], FORMAT_VERSION);
        // The fields it always had, as they were.
        assert_eq!(v["seed"], 7);
        assert_eq!(v["invalidator"], serde_json::Value::Null);
        assert_eq!(v["server_versions"]["db1"], serde_json::Value::Null);
        assert_eq!(v["server_versions"]["r1a"], "redis 7.0.15");
        assert_eq!(v["nodes"][0]["addr"], "10.77.0.21:6379");
        let back = RunInfo::from_slice(&bytes, Path::new("run.json")).unwrap();
        assert_eq!(back, info());
    }

    #[test]
    fn another_version_says_what_to_do() {
        let mut v: serde_json::Value = serde_json::from_slice(&info().to_json()).unwrap();
        v["format_version"] = 99.into();
        let e = RunInfo::from_slice(v.to_string().as_bytes(), Path::new("runs/x/run.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("runs/x/run.json has format version 99, but this coherence")
                && e.contains("reads version 1")
                && e.contains("with the coherence that wrote it (0.1.0)")
                && e.contains("run the campaign again"),
            "{e}"
        );
        // Written before run.json had a version.
        let old = r#"{"tool_version": "0.1.0", "seed": 1}"#;
        let e = RunInfo::from_slice(old.as_bytes(), Path::new("run.json"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("run.json has no format version"), "{e}");
        // Another file altogether.
        let other = r#"{"format": "coherence-results", "format_version": 2}"#;
        let e = RunInfo::from_slice(other.as_bytes(), Path::new("run.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a run.json of coherence"), "{e}");
    }
}
