//! Faults against the real lab: a partition has its effect, is journaled before it is
//! applied, and `coherence heal` removes exactly what a killed run left, verified.
//! One test, in order, because there is one lab per machine.

mod common;

use common::{coherence, is_root, text, Down};

use coherence_lab::cluster::{LabNodes, State};
use coherence_nemeses::fault::{pending, Fault, Journal, Nodes, JOURNAL};
use coherence_nemeses::partition::Shape;
use std::path::Path;
use std::process::{Command, Output};

/// Whether `host` can open a TCP connection to `addr:port` within 2 s.
fn reaches(host: &str, addr: &str, port: u16) -> bool {
    let probe = format!("timeout 2 bash -c '</dev/tcp/{addr}/{port}'");
    coherence(&["lab", "exec", host, "--", "bash", "-c", &probe])
        .status
        .success()
}

/// Every rule of ours on every lab host.
fn our_rules(nodes: &LabNodes) -> Vec<String> {
    let mut found = Vec::new();
    for node in nodes.names() {
        let out = nodes
            .remote(&node)
            .unwrap()
            .run(&["iptables", "-w", "-S"])
            .unwrap();
        found.extend(
            out.stdout
                .lines()
                .filter(|l| l.contains("coherence:"))
                .map(|l| format!("{node}: {l}")),
        );
    }
    found
}

#[test]
fn partitions_have_their_effect_and_heal_without_a_trace() {
    if !is_root() {
        eprintln!("not root: the lab cannot run here");
        return;
    }
    let o = coherence(&["lab", "up"]);
    assert!(o.status.success(), "{}", text(&o));
    let _down = Down;
    let state = State::load().unwrap().unwrap();
    let nodes = LabNodes::new(&state);
    assert!(
        our_rules(&nodes).is_empty(),
        "a clean lab has none of our rules"
    );
    assert!(reaches("r1a", "10.77.0.11", 5432));

    // Isolate region r1, journaled first; then "crash" without healing.
    let run = tempfile::tempdir().unwrap();
    let journal_path = run.path().join(JOURNAL);
    let mut journal = Journal::open(&journal_path).unwrap();
    let shape = Shape::IsolateGroup {
        name: "r1".into(),
        members: nodes.region("r1"),
    };
    let fault = Fault::partition(
        shape,
        &nodes.names(),
        &nodes,
        &format!("test-{}", journal.next_seq()),
    )
    .unwrap();
    journal.applying(&fault).unwrap();
    fault.apply(&nodes).unwrap();
    drop(journal);

    // A partitioned region cannot reach the database; another region still can.
    assert!(
        !reaches("r1a", "10.77.0.11", 5432),
        "r1 is cut off from db1"
    );
    assert!(
        !reaches("inv", "10.77.0.21", 6379),
        "the invalidator cannot reach r1a"
    );
    assert!(reaches("r2a", "10.77.0.11", 5432), "r2 is not");
    assert!(
        reaches("r1a", "10.77.0.22", 6379),
        "inside r1, hosts still talk"
    );
    assert!(!our_rules(&nodes).is_empty());
    assert_eq!(pending(&journal_path).unwrap().len(), 1);

    // `coherence heal` finishes the job: exactly our rules go, verified.
    let o = coherence(&["heal", run.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("healed 1 fault"), "{}", text(&o));
    assert!(our_rules(&nodes).is_empty(), "{:?}", our_rules(&nodes));
    assert!(fault.traces(&nodes).unwrap().is_empty());
    assert!(reaches("r1a", "10.77.0.11", 5432));
    assert!(pending(&journal_path).unwrap().is_empty());
    let o = coherence(&["heal", run.path().to_str().unwrap()]);
    assert!(text(&o).contains("nothing to heal"), "{}", text(&o));

    // A rule someone else added stays: healing removes exactly ours.
    let r2a = nodes.remote("r2a").unwrap();
    r2a.run(&[
        "iptables",
        "-w",
        "-A",
        "INPUT",
        "-s",
        "10.77.0.99",
        "-j",
        "DROP",
    ])
    .unwrap();
    let mut journal = Journal::open(&journal_path).unwrap();
    let fault = Fault::partition(
        Shape::Halves,
        &nodes.names(),
        &nodes,
        &format!("test-{}", journal.next_seq()),
    )
    .unwrap();
    let seq = journal.applying(&fault).unwrap();
    fault.apply(&nodes).unwrap();
    fault.heal(&nodes).unwrap();
    journal.healed(seq).unwrap();
    assert!(our_rules(&nodes).is_empty());
    let rules = r2a.run(&["iptables", "-w", "-S", "INPUT"]).unwrap().stdout;
    assert!(rules.contains("10.77.0.99"), "{rules}");

    // Packet loss: at probability 1 every packet to db2 is dropped; healed, none is.
    // (db2 runs no Redis, so Sentinel does not fail anything over meanwhile.)
    let loss = Fault::packet_loss(&["db2".to_string()], 1.0, "test-loss");
    loss.apply(&nodes).unwrap();
    assert!(!reaches("r2a", "10.77.0.12", 5432), "db2 drops everything");
    loss.heal(&nodes).unwrap();
    assert!(loss.traces(&nodes).unwrap().is_empty());
    assert!(our_rules(&nodes).is_empty());
    assert!(reaches("r2a", "10.77.0.12", 5432));

    // Latency needs netem: where the kernel has none, the message says so.
    let latency = Fault::Latency {
        nodes: vec!["r1a".to_string()],
        delay_ms: 50,
    };
    match latency.apply(&nodes) {
        Err(e) => assert!(e.to_string().contains("netem"), "{e}"),
        Ok(()) => latency.heal(&nodes).unwrap(),
    }
    assert!(latency.traces(&nodes).unwrap().is_empty());

    // A paused Redis does not answer; resumed, it does, and nothing stays stopped.
    let ping = || {
        Command::new("timeout")
            .args(["1", "redis-cli", "-h", "10.77.0.31", "ping"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
            .unwrap_or(false)
    };
    assert!(ping());
    let pause = Fault::signal("r2a", "redis", true, &nodes).unwrap();
    pause.apply(&nodes).unwrap();
    assert!(!ping(), "a paused Redis does not answer");
    pause.heal(&nodes).unwrap();
    assert!(pause.traces(&nodes).unwrap().is_empty());
    assert!(ping());

    // A Redis failover through Sentinel changes roles, and says whom it promoted.
    let members = vec!["r2a".to_string(), "r2b".to_string()];
    let failover = Fault::redis_failover("r2", "r2s", &members, &nodes).unwrap();
    let Fault::RedisFailover { from, .. } = &failover else {
        unreachable!()
    };
    let from = from.clone();
    failover.apply(&nodes).unwrap();
    let outcome = failover.outcome(&nodes).unwrap();
    let promoted = outcome["promoted"].as_str().unwrap().to_string();
    assert_ne!(promoted, from, "{outcome}");
    assert_eq!(outcome["demoted"], from.as_str());
    let addr = nodes.addr(&promoted).unwrap();
    let info = Command::new("redis-cli")
        .args(["-h", &addr, "info", "replication"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("role:master"));
    failover.heal(&nodes).unwrap();
    assert!(failover.traces(&nodes).unwrap().is_empty());

    // SIGINT during an active partition: the run heals before it exits, no rule remains.
    let store = tempfile::tempdir().unwrap();
    let store_s = store.path().to_str().unwrap();
    let manifest = env!("CARGO_MANIFEST_DIR");
    let child = Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args([
            "run",
            "campaigns/lab-notify-partitions.toml",
            "--time-limit",
            "30s",
            "--store",
            store_s,
        ])
        .current_dir(manifest)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let runs = store.path().join("lab-notify-partitions");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let journal = loop {
        let found = std::fs::read_dir(&runs)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path().join(JOURNAL))
            .filter(|j| pending(j).is_ok_and(|p| !p.is_empty()));
        if let Some(j) = found {
            break j;
        }
        assert!(std::time::Instant::now() < deadline, "no fault was applied");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!our_rules(&nodes).is_empty(), "a partition is active");
    // SAFETY: no preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o));
    assert!(our_rules(&nodes).is_empty(), "{:?}", our_rules(&nodes));
    assert!(pending(&journal).unwrap().is_empty());
    let history = std::fs::read_to_string(journal.with_file_name("history.jsonl")).unwrap();
    assert!(history.contains(r#""f":"stop-partition""#));

    // End to end, same faults and seed: notify loses invalidations, outbox converges.
    let results = |o: &Output| -> serde_json::Value {
        let t = text(o);
        let dir = t
            .lines()
            .find_map(|l| l.strip_prefix("run directory: "))
            .unwrap_or_else(|| panic!("{t}"));
        serde_json::from_slice(&std::fs::read(Path::new(dir.trim()).join("results.json")).unwrap())
            .unwrap()
    };
    let run = |campaign: &str| {
        Command::new(env!("CARGO_BIN_EXE_coherence"))
            .args(["run", campaign, "--store", store_s])
            .current_dir(manifest)
            .output()
            .unwrap()
    };
    let o = run("campaigns/lab-notify-partitions.toml");
    let r = results(&o);
    let nc = r["anomaly-counts"]["non-convergence"].as_u64().unwrap();
    let lost = r["causes"]["stale-read"]["lost-invalidation"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        nc > 0 || lost > 0,
        "notify under partitions lost no invalidation: {}",
        text(&o)
    );
    assert!(r["stats"]["nemesis_events"].as_u64().unwrap() >= 2);
    assert!(our_rules(&nodes).is_empty());

    // A scheduled Redis failover is recorded with whom it promoted, and the checker
    // names the promoted node among the causes.
    let o = Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args([
            "run",
            "campaigns/lab-writer.toml",
            "--time-limit",
            "8s",
            "--nemesis",
            "redis-failover",
            "--nemesis-interval",
            "3s",
            "--nemesis-duration",
            "1s",
            "--store",
            store_s,
        ])
        .current_dir(manifest)
        .output()
        .unwrap();
    let t = text(&o);
    let dir = t
        .lines()
        .find_map(|l| l.strip_prefix("run directory: "))
        .unwrap_or_else(|| panic!("{t}"));
    let history = std::fs::read_to_string(Path::new(dir.trim()).join("history.jsonl")).unwrap();
    assert!(
        history.contains(r#""f":"failover","value":{"demoted":"#),
        "no failover event:\n{t}"
    );
    assert!(pending(&Path::new(dir.trim()).join(JOURNAL))
        .unwrap()
        .is_empty());

    let o = run("campaigns/lab-outbox-partitions.toml");
    let r = results(&o);
    assert_eq!(r["anomaly-counts"]["non-convergence"], 0, "{}", text(&o));
    assert_eq!(r["checks"][6]["status"], "valid", "{}", r["checks"]);
    assert!(our_rules(&nodes).is_empty());
}
