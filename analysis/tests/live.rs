//! The online checker held to the offline one: over simulated histories (correct and
//! buggy) and random ones, every live detection is an offline finding of the same
//! history (same kind, same key, same operation), and over versioned histories the
//! live counts of the anomalies it decides equal the offline counts.

#[allow(dead_code)]
mod brute;

use coherence_analysis::check::{self, Context};
use coherence_analysis::live::{Live, LIVE_KINDS};
use coherence_analysis::model::Builder;
use coherence_sim::{generate, FaultLevel, Mode, SimConfig};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// (kind, key, invoke index) of each finding, offline and live, for `text` at bound
/// `bound` (ns).
#[allow(clippy::type_complexity)]
fn both(
    text: &str,
    bound: u64,
) -> (
    BTreeSet<(&'static str, String, u64)>,
    Vec<(&'static str, String, u64)>,
) {
    let mut b = Builder::new();
    coherence_store::reader::read_from(text.as_bytes(), std::path::Path::new("t.jsonl"), &mut b)
        .unwrap_or_else(|e| panic!("{e}"));
    let h = b.finish();
    let ctx = Context::new(&h, bound);
    let offline: BTreeSet<(&'static str, String, u64)> = check::check(&ctx)
        .findings
        .iter()
        .filter(|f| LIVE_KINDS.contains(&f.kind))
        .map(|f| (f.kind.name(), h.keys.name(f.key).to_string(), f.index))
        .collect();
    let mut live = Live::new(bound);
    let mut found = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let ev = coherence_store::reader::parse_event(line).unwrap();
        for d in live.feed(&ev, ev.time, &|| 0) {
            found.push((d.kind.name(), d.key, d.index));
        }
    }
    for d in live.finish(&|| 0) {
        found.push((d.kind.name(), d.key, d.index));
    }
    (offline, found)
}

fn counts<'a>(
    found: impl IntoIterator<Item = &'a (&'static str, String, u64)>,
) -> BTreeMap<&'static str, u64> {
    let mut c = BTreeMap::new();
    for f in found {
        *c.entry(f.0).or_default() += 1;
    }
    c
}

fn simulated(mode: Mode, faults: FaultLevel, seed: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let mut w = coherence_store::HistoryWriter::create(&path).unwrap();
    let config = SimConfig {
        seed,
        ops: 20_000,
        keys: 50,
        mode,
        faults,
        ..SimConfig::default()
    };
    generate(&config, &mut w).unwrap();
    w.finish().unwrap();
    std::fs::read_to_string(&path).unwrap()
}

#[test]
fn live_finds_what_offline_finds_in_simulated_histories() {
    let mut seen = 0;
    for (mode, faults) in [
        (Mode::Buggy, FaultLevel::Many),
        (Mode::Buggy, FaultLevel::None),
        (Mode::Correct, FaultLevel::Many),
    ] {
        for seed in 1..=3 {
            let text = simulated(mode, faults, seed);
            for bound in [0, 5_000_000] {
                let (offline, live) = both(&text, bound);
                for d in &live {
                    assert!(offline.contains(d), "live found {d:?}, offline did not");
                }
                // Versioned histories: live decides every read as offline does.
                assert_eq!(
                    counts(&live),
                    counts(&offline),
                    "{mode:?} {faults:?} seed {seed} bound {bound}"
                );
                seen += live.len();
            }
        }
    }
    assert!(seen > 0, "no simulated history showed a live detection");
}

/// `text` as a client that does not know versions writes it (a user's service driven
/// through its API): reads, fills and writes name only their write, and a `commit`
/// event a few lines after each acknowledged write states its version, as a commit
/// observer's would, late enough that reads complete before it.
fn without_versions(text: &str, lag_lines: usize) -> String {
    let mut out: Vec<serde_json::Value> = vec![serde_json::json!({
        "time": 0, "process": "control", "type": "info", "f": "observe",
        "value": {"caches": [], "databases": ["db"]},
    })];
    let mut due: std::collections::VecDeque<(usize, serde_json::Value)> = Default::default();
    for (i, line) in text.lines().enumerate() {
        let mut e: serde_json::Value = serde_json::from_str(line).unwrap();
        let f = e["f"].as_str().unwrap_or_default().to_string();
        let versioned = e["value"].get("version").is_some() && e["value"].get("write").is_some();
        if versioned
            && matches!(
                f.as_str(),
                "read" | "db-read" | "fill" | "write" | "final-read"
            )
        {
            let version = e["value"]["version"].clone();
            let write = e["value"]["write"].clone();
            if f == "write" && e["type"] == "ok" {
                due.push_back((
                    i + lag_lines,
                    serde_json::json!({
                        "process": "cdc:db", "type": "info", "f": "commit",
                        "key": e["key"], "node": "db",
                        "value": {"write": write, "version": version},
                    }),
                ));
            }
            e["value"] = serde_json::json!({ "write": write });
        }
        while due.front().is_some_and(|d| d.0 <= i) {
            let (_, mut c) = due.pop_front().unwrap();
            c["time"] = e["time"].clone();
            out.push(c);
        }
        out.push(e);
    }
    let end = out.last().map(|e| e["time"].clone()).unwrap_or_default();
    for (_, mut c) in due {
        c["time"] = end.clone();
        out.push(c);
    }
    out.iter_mut()
        .enumerate()
        .map(|(i, e)| {
            e["index"] = i.into();
            format!("{e}\n")
        })
        .collect()
}

#[test]
fn live_counts_stale_reads_as_offline_does_when_versions_come_from_commits() {
    let mut seen = 0;
    for (mode, faults, seed, lag) in [
        (Mode::Buggy, FaultLevel::None, 1, 7),
        (Mode::Buggy, FaultLevel::None, 2, 0),
        (Mode::Buggy, FaultLevel::Many, 1, 40),
    ] {
        let text = without_versions(&simulated(mode, faults, seed), lag);
        let (offline, live) = both(&text, 0);
        for d in &live {
            assert!(offline.contains(d), "live found {d:?}, offline did not");
        }
        let stale = |c: &BTreeMap<&'static str, u64>| c.get("stale-read").copied();
        assert_eq!(
            stale(&counts(&live)),
            stale(&counts(&offline)),
            "{mode:?} {faults:?} seed {seed}, commits {lag} lines late"
        );
        seen += stale(&counts(&live)).unwrap_or(0);
    }
    assert!(seen > 0, "no stale read in the histories without versions");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    /// Random histories (versioned or not, with observers, faults and commits): live is
    /// never ahead of the definitions.
    #[test]
    fn live_detections_are_offline_findings(steps in proptest::collection::vec(brute::step(), 1..60), bound in 0u64..3) {
        let bound = bound * 1_000_000;
        let text: String = brute::history(&steps).iter().map(|l| format!("{l}\n")).collect();
        let (offline, live) = both(&text, bound);
        for d in &live {
            prop_assert!(offline.contains(d), "live found {:?}, offline did not:\n{}", d, text);
        }
    }
}
