//! What `coherence watch` saw: for each delay M and each region, the share of the
//! watched commits whose every sample in the region, M after the commit, was
//! consistent — the node held the committed version or a newer one, or nothing (a
//! miss is fine) — as "N nines of writes consistent within M", and the keys that were
//! not. A commit is judged in a region only when every node of it gave a sample, or
//! one was inconsistent. Read from the run's history: the commit observer's `commit` events and the
//! watcher's `sample` events (`after`: the commit's index, `delay_ms`).

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufRead;
use std::path::Path;

/// One (region, delay): what the samples showed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Within {
    /// Commits sampled in the region at this delay.
    pub commits: u64,
    /// Of which every sample was consistent.
    pub consistent: u64,
    /// Commits whose samples all were consistent but some node of the region gave none
    /// (it did not answer): not judged, and not counted in `commits`.
    pub incomplete: u64,
    /// `-log10` of the inconsistent share (`null` when none was inconsistent: as many
    /// nines as the commits can show).
    pub nines: Option<f64>,
    /// Keys with an inconsistent sample (at most 20).
    pub keys: Vec<String>,
}

/// `watch.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatchSummary {
    /// Commits seen.
    pub commits: u64,
    /// Samples taken.
    pub samples: u64,
    /// Per region, per delay (ms).
    pub regions: BTreeMap<String, BTreeMap<u64, Within>>,
    /// Samples the rate limit did not allow, and samples still due at the end.
    pub skipped: u64,
    /// Samples still due when the watch ended.
    pub pending: u64,
    /// The commit observer's gaps (from, to, ns): commits then went unseen, unsampled.
    pub blind: Vec<(u64, u64)>,
}

impl WatchSummary {
    /// Whether some sample was inconsistent.
    pub fn inconsistent(&self) -> bool {
        self.regions
            .values()
            .flat_map(|d| d.values())
            .any(|w| w.consistent < w.commits)
    }

    /// The lines to print.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "watch: {} commits, {} samples ({} skipped by the rate limit, {} still due at the end)",
            self.commits, self.samples, self.skipped, self.pending
        )];
        for (from, to) in &self.blind {
            out.push(format!(
                "  unknown: the commit observer was blind from {} to {}: commits then were not seen, nor sampled",
                coherence_analysis::explain::duration(*from),
                coherence_analysis::explain::duration(*to)
            ));
        }
        for (region, delays) in &self.regions {
            for (ms, w) in delays {
                let m = coherence_analysis::explain::duration(ms * 1_000_000);
                let nines = match w.nines {
                    Some(n) => format!("{n:.2} nines"),
                    None => "all".to_string(),
                };
                let mut line = format!(
                    "  {region}: {nines} of writes consistent within {m} ({} of {} commits)",
                    w.consistent, w.commits
                );
                if w.incomplete > 0 {
                    line.push_str(&format!(
                        "; {} more not judged (a node gave no sample)",
                        w.incomplete
                    ));
                }
                if !w.keys.is_empty() {
                    line.push_str(&format!("; not: {}", w.keys.join(", ")));
                }
                out.push(line);
            }
        }
        out
    }
}

/// Reads the history at `path`.
pub fn summarize(path: &Path) -> Result<WatchSummary> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut region_of: HashMap<String, String> = HashMap::new();
    // commit index -> (key, write, stated version)
    let mut commits: HashMap<u64, (String, String, Option<i64>)> = HashMap::new();
    // key -> write id -> place in the commit order
    let mut order: HashMap<String, HashMap<String, i64>> = HashMap::new();
    // (commit index, delay, region) -> (consistent so far, nodes sampled)
    let mut judged: BTreeMap<(u64, u64, String), (bool, BTreeSet<String>)> = BTreeMap::new();
    let mut s = WatchSummary::default();
    let mut samples: Vec<(u64, u64, String, Value)> = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        match v["f"].as_str().unwrap_or("") {
            "topology" => {
                for c in v["value"]["caches"].as_array().into_iter().flatten() {
                    if let (Some(n), Some(r)) = (c["node"].as_str(), c["region"].as_str()) {
                        region_of.insert(n.into(), r.into());
                    }
                }
            }
            "commit" => {
                let (Some(index), Some(key), Some(write)) = (
                    v["index"].as_u64(),
                    v["key"].as_str(),
                    v["value"]["write"].as_str(),
                ) else {
                    continue;
                };
                s.commits += 1;
                let places = order.entry(key.into()).or_default();
                let next = places.len() as i64 + 1;
                places.entry(write.into()).or_insert(next);
                commits.insert(
                    index,
                    (key.into(), write.into(), v["value"]["version"].as_i64()),
                );
            }
            "sample" => {
                let (Some(after), Some(delay), Some(node)) = (
                    v["after"].as_u64(),
                    v["delay_ms"].as_u64(),
                    v["node"].as_str(),
                ) else {
                    continue;
                };
                s.samples += 1;
                samples.push((after, delay, node.to_string(), v["value"]["held"].clone()));
            }
            "observer-gap" if v["process"].as_str().is_some_and(|p| p.starts_with("cdc:")) => {
                if let (Some(from), Some(to)) =
                    (v["value"]["from"].as_u64(), v["value"]["to"].as_u64())
                {
                    s.blind.push((from, to));
                }
            }
            "watch-end" => {
                s.skipped += v["value"]["skipped_samples"].as_u64().unwrap_or(0);
                s.pending += v["value"]["pending_samples"].as_u64().unwrap_or(0);
            }
            _ => {}
        }
    }
    let version_of = |key: &str, write: &str, stated: Option<i64>| -> Option<i64> {
        if write == "init" {
            return Some(0);
        }
        stated.or_else(|| order.get(key)?.get(write).copied())
    };
    let mut bad_keys: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
    for (after, delay, node, held) in samples {
        let Some((key, write, stated)) = commits.get(&after) else {
            continue;
        };
        let Some(committed) = version_of(key, write, *stated) else {
            continue;
        };
        let region = region_of.get(&node).cloned().unwrap_or(node.clone());
        let consistent = if held.is_null() {
            true
        } else {
            let w = held["write"].as_str().unwrap_or("");
            match version_of(key, w, held["version"].as_i64()) {
                Some(v) => v >= committed,
                // A value no commit shows: not the committed one.
                None => false,
            }
        };
        let e = judged
            .entry((after, delay, region.clone()))
            .or_insert((true, BTreeSet::new()));
        e.0 &= consistent;
        e.1.insert(node.clone());
        if !consistent {
            bad_keys
                .entry((region, delay))
                .or_default()
                .insert(key.clone());
        }
    }
    // The cache nodes of each region, as the topology names them.
    let mut region_nodes: HashMap<&str, usize> = HashMap::new();
    for r in region_of.values() {
        *region_nodes.entry(r.as_str()).or_default() += 1;
    }
    for ((_, delay, region), (ok, sampled)) in judged {
        let w = s
            .regions
            .entry(region.clone())
            .or_default()
            .entry(delay)
            .or_default();
        // Consistent only when every node of the region said so; an inconsistent
        // sample is one whatever the others said.
        let nodes = region_nodes.get(region.as_str()).copied().unwrap_or(1);
        if ok && sampled.len() < nodes {
            w.incomplete += 1;
            continue;
        }
        w.commits += 1;
        w.consistent += ok as u64;
        if let Some(keys) = bad_keys.get(&(region, delay)) {
            w.keys = keys.iter().take(20).cloned().collect();
        }
    }
    for w in s.regions.values_mut().flat_map(|d| d.values_mut()) {
        let bad = w.commits - w.consistent;
        w.nines = (bad > 0).then(|| -((bad as f64) / (w.commits as f64)).log10());
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_region_is_judged_by_all_its_nodes_or_by_an_inconsistent_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let topology = json!({"caches": [{"node": "r1a", "region": "r1"}, {"node": "r1b", "region": "r1", "replica_of": "r1a"}]});
        let mut lines = vec![json!({"f": "topology", "process": "control", "value": topology})];
        for (c, v) in [(1, 1), (2, 2), (3, 3)] {
            lines.push(json!({"index": c, "f": "commit", "process": "cdc:db1", "key": "k", "value": {"write": format!("w{v}"), "version": v}}));
        }
        let sample = |after: u64, node: &str, held: i64| json!({"f": "sample", "process": format!("monitor:{node}"), "node": node, "key": "k", "after": after, "delay_ms": 1000, "value": {"from": 0, "held": {"write": format!("w{held}"), "version": held}}});
        // Commit 1: both nodes consistent. Commit 2: r1b gave no sample. Commit 3: r1a
        // alone, and behind.
        lines.extend([
            sample(1, "r1a", 1),
            sample(1, "r1b", 1),
            sample(2, "r1a", 2),
            sample(3, "r1a", 2),
        ]);
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let s = summarize(&path).unwrap();
        let w = &s.regions["r1"][&1000];
        assert_eq!((w.commits, w.consistent, w.incomplete), (2, 1, 1), "{w:?}");
        assert!(s.inconsistent());
        assert!(
            s.lines()[1].contains("1 more not judged"),
            "{:?}",
            s.lines()
        );
    }
}
