//! Campaign files: which cluster to drive (the lab, or staging endpoints and the nodes
//! faults may touch), the workload, the checker's staleness bound, and the `[nemesis]`
//! section for the faults.
//!
//! A campaign is TOML. Every mistake is reported with the file, the line and the field,
//! from the TOML parser's own spans: values are validated while they are read. The
//! workload's pieces (the workload, the PostgreSQL and region endpoints, the checker's
//! settings) are `coherence_workloads::campaign`'s; the nodes and the schedule of faults
//! are `coherence_nemeses`'s; this crate puts them together.

#![deny(missing_docs)]

use coherence_workloads::campaign::{Checker, Postgres, Region, Workload};
use serde::{Deserialize, Deserializer};
use std::path::Path;

/// A whole campaign.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Campaign {
    /// Its name: runs are stored under `runs/<name>/`.
    #[serde(deserialize_with = "name")]
    pub name: String,
    /// What to run against.
    pub cluster: Cluster,
    /// What the clients do.
    pub workload: Workload,
    /// How the history is judged.
    #[serde(default)]
    pub checker: Checker,
    /// Faults, and when.
    #[serde(default)]
    pub nemesis: Option<coherence_nemeses::schedule::NemesisConfig>,
    /// What to watch from outside (the lab's default when absent: [`Campaign::observe`]).
    #[serde(default)]
    pub observe: Option<coherence_workloads::campaign::Observe>,
}

/// Which cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Cluster {
    /// The local lab (`coherence lab up`): endpoints come from it.
    Lab {
        /// The invalidator the lab runs for this campaign.
        #[serde(default = "default_invalidator")]
        invalidator: String,
        /// The design the lab's reference HTTP service runs in for this campaign (the
        /// `http` workload's system under test): `delete-after-commit` when absent.
        #[serde(default)]
        service: Option<String>,
    },
    /// Endpoints given here.
    Staging {
        /// PostgreSQL.
        postgres: Postgres,
        /// Cache regions.
        #[serde(deserialize_with = "non_empty")]
        regions: Vec<Region>,
        /// The nodes faults may touch, reached over SSH (needed for `[nemesis]`).
        #[serde(default)]
        nodes: Vec<coherence_nemeses::staging::NodeConfig>,
    },
}

fn default_invalidator() -> String {
    "none".into()
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Region>, D::Error> {
    let v = Vec::<Region>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom("name at least one region"));
    }
    Ok(v)
}

fn name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || s.starts_with('.')
    {
        return Err(serde::de::Error::custom(
            "use letters, digits, '-', '_' and '.' (it names a directory)",
        ));
    }
    Ok(s)
}

/// Why a campaign file was refused.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CampaignError {
    /// The file.
    pub path: String,
    /// What is wrong, with the line and the field.
    pub message: String,
}

impl Campaign {
    /// What the run watches: the campaign's `[observe]`, else in the lab both observers,
    /// else nothing.
    pub fn observe(&self) -> Option<coherence_workloads::campaign::Observe> {
        match (&self.observe, &self.cluster) {
            (Some(o), _) => Some(o.clone()),
            (None, Cluster::Lab { .. }) => {
                Some(coherence_workloads::campaign::Observe::lab_default())
            }
            (None, Cluster::Staging { .. }) => None,
        }
    }

    /// Reads and validates a campaign file.
    pub fn load(path: &Path) -> Result<Campaign, CampaignError> {
        let text = std::fs::read_to_string(path).map_err(|e| CampaignError {
            path: path.display().to_string(),
            message: format!("cannot read it: {e}"),
        })?;
        Campaign::parse(&text).map_err(|message| CampaignError {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses and validates campaign text.
    pub fn parse(text: &str) -> Result<Campaign, String> {
        let campaign: Campaign = toml::from_str(text).map_err(|e| describe(text, &e))?;
        if let Cluster::Staging { nodes, .. } = &campaign.cluster {
            coherence_nemeses::staging::validate(nodes).map_err(|e| {
                format!(
                    "{}field `cluster.nodes`: {e}",
                    line_of(text, "name").map(|_| "").unwrap_or_default()
                )
            })?;
            if campaign.nemesis.is_some() && nodes.is_empty() {
                return Err(
                    "[nemesis] on staging needs the nodes to reach: add [[cluster.nodes]] with their ssh settings"
                        .into(),
                );
            }
        }
        if let Cluster::Staging { postgres, .. } = &campaign.cluster {
            if postgres.password.is_some() && postgres.password_env.is_some() {
                return Err(format!(
                    "{}field `cluster.postgres.password_env`: give either password or password_env, not both \
                     (password_env is better: the password stays out of the file)",
                    line_of(text, "password_env").map(|l| format!("line {l}: ")).unwrap_or_default()
                ));
            }
        }
        if let Cluster::Lab { invalidator, .. } = &campaign.cluster {
            if !["notify", "outbox", "none"].contains(&invalidator.as_str()) {
                return Err(format!(
                    "{}field `cluster.invalidator`: unknown invalidator {invalidator:?}: use notify, outbox or none",
                    line_of(text, "invalidator").map(|l| format!("line {l}: ")).unwrap_or_default()
                ));
            }
        }
        if let Err((field, message)) = campaign.workload.validate() {
            let leaf = field.rsplit('.').next().unwrap_or(&field);
            let line = line_of(text, leaf).or_else(|| line_of_section(text, &field));
            return Err(format!(
                "{}field `{field}`: {message}",
                line.map(|l| format!("line {l}: ")).unwrap_or_default()
            ));
        }
        if let Some(o) = &campaign.observe {
            if let Err(e) = coherence_workloads::http::Decode::new(&o.value) {
                return Err(format!(
                    "{}field `observe.value`: {e}",
                    line_of(text, "value")
                        .map(|l| format!("line {l}: "))
                        .unwrap_or_default(),
                ));
            }
            if o.pattern.is_empty() {
                return Err(format!(
                    "{}field `observe.pattern`: give a glob of the keys to watch, e.g. \"k*\"",
                    line_of(text, "pattern")
                        .map(|l| format!("line {l}: "))
                        .unwrap_or_default()
                ));
            }
        }
        Ok(campaign)
    }
}

/// The line (from 1) of the section `[a.b]` (or `[[a.b]]`) that `field` names, or of
/// its parent section, if there is one.
fn line_of_section(text: &str, field: &str) -> Option<usize> {
    let mut name = field;
    loop {
        let found = text.lines().position(|l| {
            let l = l.trim();
            l == format!("[{name}]") || l == format!("[[{name}]]")
        });
        if let Some(i) = found {
            return Some(i + 1);
        }
        name = name.rsplit_once('.')?.0;
    }
}

impl Campaign {
    /// The line (from 1) where `field = ...` is first set in campaign text, if it is.
    pub fn line_of_field(text: &str, field: &str) -> Option<usize> {
        line_of(text, field)
    }
}

/// The TOML parser's message, led by "line N:" and without its source excerpt.
fn describe(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let field = text
                .lines()
                .nth(line - 1)
                .and_then(|l| l.split('=').next())
                .map(str::trim)
                .filter(|f| !f.is_empty() && !f.starts_with('['))
                .map(|f| format!(" (field `{f}`)"))
                .unwrap_or_default();
            format!("line {line}{field}: {message}")
        }
        None => message,
    }
}

fn line_of(text: &str, field: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.split('=').next().map(str::trim) == Some(field))
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LAB: &str = r#"
name = "lab-writer"

[cluster]
kind = "lab"
invalidator = "none"

[workload]
invalidation = "writer"
fill = "plain"
keys = 10
concurrency = 8
time_limit = "5s"
"#;

    #[test]
    fn the_workload_kind_defaults_to_cache_aside_and_an_unknown_one_names_its_line() {
        use coherence_workloads::registry::Kind;
        assert_eq!(
            Campaign::parse(LAB).unwrap().workload.kind,
            Kind::CacheAside
        );
        let named = LAB.replace("[workload]\n", "[workload]\nkind = \"cache-aside\"\n");
        assert_eq!(
            Campaign::parse(&named).unwrap().workload.kind,
            Kind::CacheAside
        );
        let bad = LAB.replace("[workload]\n", "[workload]\nkind = \"http-ish\"\n");
        let e = Campaign::parse(&bad).unwrap_err();
        assert!(
            e.starts_with("line 9 (field `kind`)")
                && e.contains("http-ish")
                && e.contains("cache-aside"),
            "{e}"
        );
    }

    #[test]
    fn a_minimal_lab_campaign_takes_defaults() {
        let c = Campaign::parse(LAB).unwrap();
        assert_eq!(c.name, "lab-writer");
        assert_eq!(c.workload.keys, 10);
        assert_eq!(c.workload.time_limit, Duration::from_secs(5));
        assert_eq!(c.workload.read_fraction, 0.9);
        assert_eq!(c.checker.staleness_bound, Duration::ZERO);
        assert!(matches!(c.cluster, Cluster::Lab { .. }));
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let bad = LAB.replace("concurrency = 8", "concurrency = 0");
        let e = Campaign::parse(&bad).unwrap_err();
        assert!(e.starts_with("line 12 (field `concurrency`)"), "{e}");
        assert!(e.contains("at least 1"), "{e}");
        let bad = LAB.replace("time_limit = \"5s\"", "time_limit = \"soon\"");
        let e = Campaign::parse(&bad).unwrap_err();
        assert!(
            e.starts_with("line 13 (field `time_limit`)") && e.contains("250ms"),
            "{e}"
        );
        let bad = LAB.replace("fill = \"plain\"", "fill = \"lazy\"");
        let e = Campaign::parse(&bad).unwrap_err();
        assert!(e.starts_with("line 10 (field `fill`)"), "{e}");
        let bad = LAB.replace("keys = 10", "keys = 10\ncolor = \"red\"");
        let e = Campaign::parse(&bad).unwrap_err();
        assert!(e.contains("line 12") && e.contains("color"), "{e}");
        let bad = LAB.replace("invalidator = \"none\"", "invalidator = \"gossip\"");
        let e = Campaign::parse(&bad).unwrap_err();
        assert!(e.starts_with("line 6: field `cluster.invalidator`"), "{e}");
    }

    const STAGING: &str = r#"
name = "staging"

[cluster]
kind = "staging"

[cluster.postgres]
writer = "db1.staging:5432"
user = "tester"
dbname = "coherence"

[[cluster.regions]]
name = "eu"
primary = "redis-eu:6379"

[workload]
invalidation = "writer"
fill = "plain"
keys = 10
concurrency = 8
time_limit = "5s"
"#;

    #[test]
    fn password_env_must_be_a_name_and_not_beside_a_password() {
        let text = STAGING.replace(
            "user = \"tester\"",
            "user = \"tester\"\npassword_env = \"hunter 2\"",
        );
        let e = Campaign::parse(&text).unwrap_err();
        assert!(
            e.contains("field `password_env` must name an environment variable"),
            "{e}"
        );
        assert!(!e.contains("hunter"), "the value is not quoted: {e}");
        let text = STAGING.replace(
            "user = \"tester\"",
            "user = \"tester\"\npassword = \"x\"\npassword_env = \"PW\"",
        );
        let e = Campaign::parse(&text).unwrap_err();
        assert!(
            e.starts_with("line 11: ") && e.contains("either password or password_env"),
            "{e}"
        );
    }
}
