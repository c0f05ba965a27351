//! Kills, restarts and failovers against the real lab: each has its effect (a killed
//! server does not answer, a promoted one takes writes) and healing brings back a
//! cluster with one primary per service, verified. Then end to end: an unfenced
//! PostgreSQL failover is a split brain the checker proves from the history.
//! One test, in order, because there is one lab per machine.

mod common;

use common::{lab_up, run_dir, text};

use coherence_lab::cluster::LabNodes;
use coherence_nemeses::fault::{sentinel_primary, Fault, Nodes, PostgresFailover, RedisPromote};
use coherence_store::run::RunDir;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// What `redis-cli` prints for `args` against `node`'s Redis (empty when it does not
/// answer within a second).
fn redis(nodes: &LabNodes, node: &str, args: &[&str]) -> String {
    let addr = nodes.addr(node).unwrap();
    let out = Command::new("timeout")
        .args(["1", "redis-cli", "-h", &addr])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn role(nodes: &LabNodes, node: &str) -> String {
    redis(nodes, node, &["ROLE"])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Waits up to `secs` for `cond`.
fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "waited {secs} s for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn in_recovery(nodes: &LabNodes, node: &str) -> Option<bool> {
    nodes
        .sql(node, "SELECT pg_is_in_recovery()")
        .ok()
        .map(|s| s == "t")
}

/// A row written on `primary` shows up on `standby`: replication works.
fn replicates(nodes: &LabNodes, primary: &str, standby: &str, tag: &str) {
    nodes
        .sql(
            primary,
            &format!(
                "CREATE TABLE IF NOT EXISTS probe (tag text); INSERT INTO probe VALUES ('{tag}')"
            ),
        )
        .unwrap();
    eventually(10, &format!("{tag} to reach {standby}"), || {
        nodes
            .sql(
                standby,
                &format!("SELECT count(*) FROM probe WHERE tag = '{tag}'"),
            )
            .is_ok_and(|c| c == "1")
    });
}

#[test]
#[ignore = "needs root: the lab (network namespaces, a bridge, iptables); scripts/test runs it as root"]
fn kills_and_failovers_have_their_effect_and_heal() {
    let (_down, state, nodes) = lab_up(&[]);
    let r1 = vec!["r1a".to_string(), "r1b".to_string()];

    // Kill and restart each service: down while killed, back (and answering) healed.
    let kill = Fault::signal("r1s", "sentinel", false, &nodes).unwrap();
    kill.apply(&nodes).unwrap();
    eventually(5, "the Sentinel to die", || {
        nodes.pids("r1s", "sentinel").unwrap().is_empty()
    });
    assert_eq!(kill.traces(&nodes).unwrap().len(), 1);
    kill.heal(&nodes).unwrap();
    assert!(kill.traces(&nodes).unwrap().is_empty());
    eventually(5, "the Sentinel to answer", || {
        sentinel_primary("r1", "r1s", &r1, &nodes).is_ok()
    });

    let kill = Fault::signal("r1a", "redis", false, &nodes).unwrap();
    kill.apply(&nodes).unwrap();
    eventually(5, "r1a's Redis to die", || {
        redis(&nodes, "r1a", &["PING"]).is_empty()
    });
    // Sentinel fails r1 over to r1b meanwhile; the restarted r1a comes back as its
    // replica, not as a second primary.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sentinel_primary("r1", "r1s", &r1, &nodes).is_ok_and(|p| p == "r1b") {
        assert!(
            Instant::now() < deadline,
            "Sentinel did not promote r1b within 30 s; the Sentinels' logs:\n{}",
            ["r1a", "r1b", "r1s"]
                .map(|h| std::fs::read_to_string(format!(
                    "/var/tmp/coherence-lab/{h}/sentinel.log"
                ))
                .unwrap_or_default())
                .join("\n--\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    kill.heal(&nodes).unwrap();
    assert!(kill.traces(&nodes).unwrap().is_empty());
    let deadline = Instant::now() + Duration::from_secs(20);
    while role(&nodes, "r1a") != "slave" {
        assert!(
            Instant::now() < deadline,
            "r1a did not rejoin as a replica within 20 s: ROLE {:?}, Sentinel names {:?}; r1a's log:\n{}",
            redis(&nodes, "r1a", &["ROLE"]),
            sentinel_primary("r1", "r1s", &r1, &nodes).ok(),
            std::fs::read_to_string("/var/tmp/coherence-lab/r1a/redis.log").unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    redis(&nodes, "r1b", &["SET", "after-kill", "1"]);
    eventually(10, "a write on r1b to reach r1a", || {
        redis(&nodes, "r1a", &["GET", "after-kill"]) == "1"
    });

    let kill = Fault::signal("db1", "postgres", false, &nodes).unwrap();
    kill.apply(&nodes).unwrap();
    eventually(5, "db1's PostgreSQL to die", || {
        in_recovery(&nodes, "db1").is_none()
    });
    kill.heal(&nodes).unwrap();
    assert!(kill.traces(&nodes).unwrap().is_empty());
    assert_eq!(
        in_recovery(&nodes, "db1"),
        Some(false),
        "db1 is the primary again"
    );
    replicates(&nodes, "db1", "db2", "after-kill");

    // REPLICAOF NO ONE on r2's replica: it stops following; healed, it follows again.
    let r2 = vec!["r2a".to_string(), "r2b".to_string()];
    let promote = Fault::redis_promote("r2", "r2s", &r2, &nodes).unwrap();
    let Fault::RedisPromote(RedisPromote { node, .. }) = &promote else {
        unreachable!()
    };
    let (replica, primary) = (
        node.clone(),
        sentinel_primary("r2", "r2s", &r2, &nodes).unwrap(),
    );
    assert_ne!(replica, primary);
    promote.apply(&nodes).unwrap();
    assert_eq!(role(&nodes, &replica), "master");
    assert_eq!(
        promote.outcome(&nodes).unwrap()["promoted"],
        replica.as_str()
    );
    redis(&nodes, &primary, &["SET", "split", "1"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        redis(&nodes, &replica, &["GET", "split"]),
        "",
        "a promoted replica no longer follows"
    );
    assert_eq!(promote.traces(&nodes).unwrap().len(), 1);
    promote.heal(&nodes).unwrap();
    assert!(promote.traces(&nodes).unwrap().is_empty());
    eventually(10, "the replica to follow again", || {
        redis(&nodes, &replica, &["GET", "split"]) == "1"
    });

    // A fenced PostgreSQL failover: db1 killed, db2 promoted; healed, db1 is db2's
    // standby and replicates.
    let failover = Fault::postgres_failover(&nodes.databases(), true, &nodes).unwrap();
    assert_eq!(
        failover,
        Fault::PostgresFailover(PostgresFailover {
            from: "db1".into(),
            to: "db2".into(),
            fence: true
        })
    );
    failover.apply(&nodes).unwrap();
    assert!(nodes.pids("db1", "postgres").unwrap().is_empty(), "fenced");
    assert_eq!(in_recovery(&nodes, "db2"), Some(false), "db2 promoted");
    assert!(!failover.traces(&nodes).unwrap().is_empty());
    failover.heal(&nodes).unwrap();
    assert!(failover.traces(&nodes).unwrap().is_empty());
    assert_eq!(in_recovery(&nodes, "db1"), Some(true));
    replicates(&nodes, "db2", "db1", "after-failover");
    let roles = coherence_lab::cluster::db_roles(&state).unwrap();
    assert_eq!(
        (roles.0.name.as_str(), roles.1.name.as_str()),
        ("db2", "db1")
    );

    // Unfenced, back the other way: two primaries (the lab refuses to run on them);
    // healed, one again.
    let failover = Fault::postgres_failover(&nodes.databases(), false, &nodes).unwrap();
    failover.apply(&nodes).unwrap();
    assert_eq!(in_recovery(&nodes, "db1"), Some(false));
    assert_eq!(
        in_recovery(&nodes, "db2"),
        Some(false),
        "db2 still takes writes"
    );
    let e = coherence_lab::cluster::db_roles(&state).unwrap_err();
    assert!(e.to_string().contains("split brain"), "{e}");
    failover.heal(&nodes).unwrap();
    assert!(failover.traces(&nodes).unwrap().is_empty());
    replicates(&nodes, "db1", "db2", "after-split");

    // End to end: writers follow a fenced failover (writes succeed on the new primary
    // after it), and an unfenced one splits the brain: the checker proves lost writes
    // from the history, and the heal left one primary.
    let store = tempfile::tempdir().unwrap();
    let store_s = store.path().to_str().unwrap();
    let run = |fault: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_coherence"))
            .args([
                "run",
                "campaigns/lab-outbox.toml",
                "--time-limit",
                "8s",
                "--nemesis",
                fault,
                "--nemesis-interval",
                "3s",
                "--nemesis-duration",
                "2s",
                "--store",
                store_s,
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let t = text(&o);
        let dir = run_dir(&t);
        let history = std::fs::read_to_string(Path::new(&dir).join("history.jsonl")).unwrap();
        let results: serde_json::Value = serde_json::from_slice(
            &std::fs::read(Path::new(&dir).join("results.json"))
                .unwrap_or_else(|e| panic!("no results.json ({e}); the run said:\n{t}")),
        )
        .unwrap();
        assert!(
            coherence_nemeses::fault::pending(&RunDir::new(&dir).journal())
                .unwrap()
                .is_empty(),
            "{t}"
        );
        (t, history, results)
    };

    let (t, history, _) = run("postgres-failover");
    assert!(
        history.contains(r#""f":"failover","value":{"demoted":"#)
            && history.contains(r#""service":"postgres""#),
        "no failover event:\n{t}"
    );
    // Some write was acknowledged by the promoted server after the failover.
    let promoted = if history.contains(r#""promoted":"db1""#) {
        "db1"
    } else {
        "db2"
    };
    let failover_at = history
        .lines()
        .position(|l| l.contains(r#""f":"failover""#))
        .unwrap();
    assert!(
        history
            .lines()
            .skip(failover_at)
            .any(|l| l.contains(r#""type":"ok","f":"write""#)
                && l.contains(&format!(r#""node":"{promoted}""#))),
        "no write reached the promoted {promoted}:\n{t}"
    );

    let (t, _, results) = run("postgres-failover-unfenced");
    let counts = &results["anomaly-counts"];
    assert!(
        counts["lost-write"].as_u64().unwrap() > 0 || counts["version-fork"].as_u64().unwrap() > 0,
        "a split brain lost no write: {counts}\n{t}"
    );
    assert!(
        coherence_lab::cluster::db_roles(&state).is_ok(),
        "one primary after the heal"
    );
}
