//! Chaos of our own: many runs of a campaign under a mix of faults, each interrupted at a
//! random point — while preparing the lab, while faults are applied, during the final
//! phase — by SIGINT, SIGTERM, or SIGKILL followed by `coherence heal`. After each, every
//! host's iptables rules, qdiscs, processes, clocks and services must be as `lab up` left
//! them, and the next run must start.
//!
//! `COHERENCE_CHAOS_RUNS` (default 8) and `COHERENCE_CHAOS_SEED` (default 1) choose how
//! many runs and which random points; the seed is printed so a failure can be replayed.

mod common;

use coherence_lab::cluster::{self, LabNodes};
use coherence_nemeses::fault::{pending, Nodes};
use coherence_store::run::RunDir;
use common::{coherence, our_rules, text};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The faults of the mix: partitions, packet loss, pause and kill of Redis, the
/// invalidator killed, a clock bump, a Redis failover.
const FAULTS: &str = "partition-region,partition-halves,packet-loss,pause-redis,kill-redis,kill-invalidator,clock-bump,redis-failover";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The run directory under `store`, if the run made one.
fn run_dir_in(store: &Path) -> Option<PathBuf> {
    // Directories only, not the `latest` link.
    let is_dir = |e: &std::fs::DirEntry| e.file_type().is_ok_and(|t| t.is_dir());
    let campaign = std::fs::read_dir(store).ok()?.flatten().find(is_dir)?;
    let run = std::fs::read_dir(campaign.path())
        .ok()?
        .flatten()
        .find(is_dir)?;
    Some(run.path())
}

/// What of a fault, a stopped process or a skewed clock is left on the lab's hosts.
fn leftovers(nodes: &LabNodes) -> Vec<String> {
    let mut left = our_rules(nodes);
    for node in nodes.names() {
        let remote = nodes.remote(&node).unwrap();
        let qdiscs = remote
            .run(&["tc", "qdisc", "show", "dev", "eth0"])
            .map(|o| o.stdout)
            .unwrap_or_default();
        if qdiscs.contains("netem") {
            left.push(format!("{node}: a netem qdisc: {}", qdiscs.trim()));
        }
        if let Ok(Some(skew)) = nodes.clock_skew(&node) {
            left.push(format!("{node}: its clock is still moved: {skew:?}"));
        }
        let ns = format!("coh-{node}");
        for pid in cluster::namespace_pids(&ns).unwrap_or_default() {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the command in parentheses: "T" is stopped.
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            if state.starts_with('T') {
                left.push(format!("{node}: process {pid} is stopped: {stat}"));
            }
        }
    }
    left
}

/// Waits until `lab status` says every server answers (a restarted Redis resyncs, a
/// Sentinel settles), and fails with what is down otherwise.
fn all_answer(within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let o = coherence(&["lab", "status"]);
        if o.status.code() == Some(0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the lab is not as lab up left it:\n{}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
#[ignore = "needs root: the lab (network namespaces, a bridge, iptables); scripts/test runs it as root"]
fn interrupted_runs_leave_the_lab_as_lab_up_left_it() {
    let (_down, _state, nodes) = common::lab_up(&["--regions", "2", "--invalidator", "notify"]);
    let runs = env_u64("COHERENCE_CHAOS_RUNS", 8);
    let seed = env_u64("COHERENCE_CHAOS_SEED", 1);
    eprintln!("chaos: {runs} runs, seed {seed} (COHERENCE_CHAOS_RUNS, COHERENCE_CHAOS_SEED)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut during_preparation = 0;
    for i in 0..runs {
        let store = tempfile::tempdir().unwrap();
        let signal = [libc::SIGINT, libc::SIGTERM, libc::SIGKILL][rng.random_range(0..3)];
        // Preparing takes a second or two: a third of the points fall in it.
        let after = if rng.random_bool(1.0 / 3.0) {
            Duration::from_millis(rng.random_range(100..1500))
        } else {
            Duration::from_millis(rng.random_range(1500..9000))
        };
        let child = Command::new(env!("CARGO_BIN_EXE_coherence"))
            .args([
                "run",
                "campaigns/lab-notify-partitions.toml",
                "--store",
                store.path().to_str().unwrap(),
                "--time-limit",
                "8s",
                "--nemesis",
                FAULTS,
                "--nemesis-interval",
                "1200ms",
                "--nemesis-duration",
                "800ms",
                "--seed",
                &(seed * 1000 + i).to_string(),
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(after);
        // SAFETY: no preconditions; the child is ours and still to be waited for.
        unsafe { libc::kill(child.id() as i32, signal) };
        let started = Instant::now();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Interrupted before preparing had restarted the invalidator for the workload.
        let preparing = said.contains("interrupted while preparing the lab")
            || (signal == libc::SIGKILL && !said.contains("starting the invalidator"));
        if std::env::var_os("COHERENCE_CHAOS_VERBOSE").is_some() {
            eprintln!("{said}");
        }
        if preparing {
            during_preparation += 1;
        }
        eprintln!(
            "run {i}: signal {signal} after {after:?} ({}), exit {:?} {:.1?} later",
            if preparing {
                "while preparing"
            } else {
                "running"
            },
            out.status.code(),
            started.elapsed()
        );
        let dir = run_dir_in(store.path());
        if signal == libc::SIGKILL {
            if let Some(dir) = &dir {
                let o = coherence(&["heal", dir.to_str().unwrap()]);
                assert_eq!(o.status.code(), Some(0), "run {i}: heal: {}", text(&o));
            }
        } else {
            // A caught signal: the run healed, restored and concluded by itself.
            let code = out.status.code();
            assert!(
                matches!(code, Some(1) | Some(3)),
                "run {i}: an interrupted run is unknown (3), or invalid (1) when it proved anomalies first; got {code:?}:\n{said}"
            );
            let dir = dir.unwrap_or_else(|| panic!("run {i}: no run directory:\n{said}"));
            assert!(
                dir.join("results.json").is_file(),
                "run {i}: no results:\n{said}"
            );
            let journal = RunDir::new(&dir).journal();
            if journal.exists() {
                let left = pending(&journal).unwrap();
                assert!(left.is_empty(), "run {i}: left applied: {left:?}\n{said}");
            }
            let results: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
            assert!(
                results["unknown_reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r.as_str().unwrap().contains("interrupted")),
                "run {i}: the interruption is not in the verdict: {}",
                results["unknown_reasons"]
            );
        }
        let left = leftovers(&nodes);
        assert!(
            left.is_empty(),
            "run {i} left:\n  {}\n{said}",
            left.join("\n  ")
        );
        all_answer(Duration::from_secs(30));
    }
    eprintln!("chaos: {during_preparation} of {runs} runs were interrupted while preparing");
    // And the next run starts and runs to its end.
    let store = tempfile::tempdir().unwrap();
    let o = coherence(&[
        "run",
        "campaigns/lab-notify-partitions.toml",
        "--store",
        store.path().to_str().unwrap(),
        "--time-limit",
        "5s",
    ]);
    assert!(
        matches!(o.status.code(), Some(0) | Some(1)),
        "the run after the chaos: {}",
        text(&o)
    );
}
