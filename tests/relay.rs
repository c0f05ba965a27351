//! The lab's outbox relay under the full write rate of `campaigns/lab-outbox.toml`. One
//! test, because there is one lab per machine; it needs root, so it is `#[ignore]`d and
//! `scripts/test` runs it as root.

mod common;

use common::{coherence, lab_up, run_dir, text};

use std::collections::HashMap;
use std::path::Path;

/// How long after a write's acknowledgement its key must have been invalidated (at its
/// version or above) in every region, for 99 % of the writes. The batched relay takes
/// about 8 ms at the median and 20–30 ms at the 99th percentile in a debug build (the
/// history's times, which include `coherence run` reading the deletion log every
/// 10 ms); the relay of one row at a time took about a second at the median. One full
/// `scripts/test` run measured p99 116 ms (p50 15 ms, 870 writes): a stall of the
/// machine of some 120 ms is more than 1 % of a 5 s run's writes. The bound is for
/// falling behind, which grows by the second, not for a stall.
const LAG_P99_MS: f64 = 250.0;

/// The fewest acknowledged writes the run must record for the lag figures to count.
const MIN_WRITES: usize = 300;

/// Regression: the outbox relay handled one row at a time (a deletion per region in
/// turn, then a cursor update) and fell ever further behind the writers, seconds
/// within a few seconds of load, so the campaign meant to be coherent served stale
/// reads far beyond any bound. Now every acknowledged write is invalidated in every
/// region before the final phase, quickly, and the campaign is valid at its bound.
#[test]
#[ignore = "needs root: the lab (network namespaces, a bridge, iptables); scripts/test runs it as root"]
fn the_outbox_relay_keeps_up_with_the_writers() {
    let (_down, _state, _nodes) = lab_up(&[]);
    let store = tempfile::tempdir().unwrap();
    let o = coherence(&[
        "run",
        "campaigns/lab-outbox.toml",
        "--time-limit",
        "5s",
        "--store",
        store.path().to_str().unwrap(),
    ]);
    let t = text(&o);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(run_dir(&t));
    let history = std::fs::read_to_string(dir.join("history.jsonl")).unwrap();

    // Each acknowledged write (key, version, when), each region's invalidations of each
    // key (when, version), and when the final phase began.
    let mut region_of: HashMap<String, String> = HashMap::new();
    let mut writes: Vec<(String, i64, u64)> = Vec::new();
    let mut invalidations: HashMap<(String, String), Vec<(u64, i64)>> = HashMap::new();
    let mut final_phase = None;
    for line in history.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let time = e["time"].as_u64().unwrap();
        let key = e["key"].as_str().unwrap_or_default().to_string();
        match e["f"].as_str().unwrap() {
            "topology" => {
                for c in e["value"]["caches"].as_array().unwrap() {
                    region_of.insert(
                        c["node"].as_str().unwrap().into(),
                        c["region"].as_str().unwrap().into(),
                    );
                }
            }
            "final-phase" => final_phase = Some(time),
            "write" if e["type"] == "ok" => {
                writes.push((key, e["value"]["version"].as_i64().unwrap(), time));
            }
            "invalidate" if e["process"] == "invalidator" => {
                let region = region_of[e["node"].as_str().unwrap()].clone();
                let version = e["value"]["version"].as_i64().unwrap();
                invalidations
                    .entry((key, region))
                    .or_default()
                    .push((time, version));
            }
            _ => {}
        }
    }
    let final_phase = final_phase.unwrap_or_else(|| panic!("no final phase:\n{t}"));
    let mut regions: Vec<String> = region_of.values().cloned().collect();
    regions.sort();
    regions.dedup();
    // Enough writes for a 99th percentile to mean something. Not a throughput target:
    // this machine records ~1,500 writes in the 5 s, CI's slower one half as many.
    assert!(
        writes.len() >= MIN_WRITES && regions.len() == 2,
        "{} writes, regions {regions:?}:\n{t}",
        writes.len()
    );

    for region in &regions {
        let mut lags_ms = Vec::new();
        for (key, version, acked) in &writes {
            let first = invalidations
                .get(&(key.clone(), region.clone()))
                .and_then(|list| list.iter().find(|(_, v)| v >= version))
                .map(|&(time, _)| time);
            match first {
                Some(time) if time <= final_phase => {
                    lags_ms.push(time.saturating_sub(*acked) as f64 / 1e6);
                }
                _ => panic!(
                    "{region}: {key} version {version} (acknowledged at {acked} ns) was not \
                     invalidated before the final phase ({final_phase} ns): the relay fell behind"
                ),
            }
        }
        lags_ms.sort_by(f64::total_cmp);
        let p99 = lags_ms[lags_ms.len() * 99 / 100];
        assert!(
            p99 <= LAG_P99_MS,
            "{region}: invalidation lag p99 {p99:.1} ms (p50 {:.1} ms, max {:.1} ms) over \
             {} writes: the relay did not keep up",
            lags_ms[lags_ms.len() / 2],
            lags_ms[lags_ms.len() - 1],
            lags_ms.len()
        );
    }
    // The campaign meant to be coherent is: valid at its staleness bound. Missing
    // invalidations are excused only when Sentinel moved a primary by itself (a known
    // defect of the lab under load: common::sentinel_moved_a_primary), and only they.
    if o.status.code() != Some(0) {
        let results: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("results.json")).expect("results.json"))
                .unwrap();
        let invalid: Vec<&str> = results["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["status"] == "invalid")
            .filter_map(|c| c["name"].as_str())
            .collect();
        let moved = common::sentinel_moved_a_primary();
        assert!(
            o.status.code() == Some(1) && invalid == ["missing-invalidation"] && !moved.is_empty(),
            "not valid ({invalid:?}), and Sentinel moved no primary ({moved:?}):\n{t}"
        );
        eprintln!("warning: Sentinel moved a primary during the run: {moved:?}; {invalid:?}");
    }
}
