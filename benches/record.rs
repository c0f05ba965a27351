//! Recording throughput in the lab, next to `redis-benchmark -t get` at the same
//! concurrency against the same node, run one after the other.
//!
//! `cargo bench --bench record` (as root; it takes any running lab down and brings up a
//! one-region lab, so every client uses the node redis-benchmark measures, and takes it
//! down at the end). `COHERENCE_BENCH_CONCURRENCY` (16) and `COHERENCE_BENCH_SECONDS`
//! (10) tune it. The workload is 95% reads over 1000 uniform keys with writer
//! invalidation and plain fills; recorded operations count every operation in the
//! history (reads, and the db-reads, fills, writes and invalidations they lead to),
//! except the final phase's reads.

use std::process::Command;

fn coherence(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args(args)
        .output()
        .expect("run coherence");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        matches!(o.status.code(), Some(0 | 1)),
        "coherence {args:?}: {text}"
    );
    text
}

fn main() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the record benchmark needs root (it runs the lab); skipped");
        return;
    }
    let concurrency: u32 = std::env::var("COHERENCE_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let seconds: u64 = std::env::var("COHERENCE_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    coherence(&["lab", "down"]);
    coherence(&["lab", "up", "--regions", "1", "--invalidator", "none"]);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let campaign = dir.path().join("bench.toml");
    std::fs::write(
        &campaign,
        format!(
            "name = \"bench-record\"\n[cluster]\nkind = \"lab\"\ninvalidator = \"none\"\n\
             [workload]\ninvalidation = \"writer\"\nfill = \"plain\"\nkeys = 1000\n\
             read_fraction = 0.95\nconcurrency = {concurrency}\ntime_limit = \"{seconds}s\"\nquiesce = \"0s\"\n"
        ),
    )
    .unwrap();
    let store = dir.path().join("runs");
    coherence(&[
        "run",
        campaign.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]);
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("latest/results.json")).unwrap()).unwrap();
    let by_f = results["stats"]["by_f"].as_object().unwrap();
    let count = |f: &str| -> u64 {
        by_f.get(f).map_or(0, |c| {
            ["ok", "fail", "info"]
                .iter()
                .map(|k| c[k].as_u64().unwrap_or(0))
                .sum()
        })
    };
    let recorded = results["stats"]["operations"].as_u64().unwrap()
        - count("final-read")
        - count("db-final-read");
    let ops_per_sec = recorded as f64 / seconds as f64;

    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "10.77.0.21",
            "-p",
            "6379",
            "-t",
            "get",
            "-c",
            &concurrency.to_string(),
            "-n",
            "500000",
            "-q",
        ])
        .output()
        .expect("redis-benchmark (package redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let rps: f64 = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("GET: ")?
                .split(" requests per second")
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .next_back()
        .expect("redis-benchmark's GET rate");
    coherence(&["lab", "down"]);

    println!("recording throughput in the lab, concurrency {concurrency}, {seconds} s, 95% reads");
    println!(
        "  coherence run (recorded operations): {ops_per_sec:>10.0} ops/s ({recorded} operations)"
    );
    println!("  redis-benchmark -t get (same node):  {rps:>10.0} requests/s");
    println!("  ratio: {:.2}", ops_per_sec / rps);
}
