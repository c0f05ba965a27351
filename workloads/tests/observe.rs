//! The cache observer against a real `redis-server` on loopback: it refuses a node that
//! sends no keyspace notifications (naming the line that turns them on), records what
//! the node's notifications say under `monitor:<node>`, and after the server goes away
//! and comes back it records the gap it was blind for, then goes on.

use coherence_loopback::{free_port, redis_cli, Redis};
use coherence_store::recorder::Recorder;
use coherence_store::HistoryWriter;
use coherence_workloads::observe::{watch, CacheWatch};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn events(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "waited 10 s for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_observer_records_changes_and_where_it_was_blind() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Redis::start_on(port, dir.path());
    let w = CacheWatch {
        node: "r1a".into(),
        addr: format!("127.0.0.1:{port}"),
        pattern: "k*".into(),
        db: 0,
        configure: false,
        read_back: None,
    };
    // A node that sends no notifications is refused, with the line to run.
    let e = w.check_setting().await.unwrap_err();
    assert!(
        e.contains("r1a") && e.contains("CONFIG SET notify-keyspace-events K$gxe"),
        "{e}"
    );
    w.configure().await.unwrap();
    w.check_setting().await.unwrap();

    let path = dir.path().join("history.jsonl");
    let rec = Arc::new(Recorder::new(HistoryWriter::create(&path).unwrap()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(watch(w.clone(), rec.clone(), stop_rx));
    let seen = |f: &str, key: &str| {
        rec.flush();
        events(&path)
            .iter()
            .any(|e| e["f"] == f && e["key"] == key && e["process"] == "monitor:r1a")
    };
    // Subscribed once a set is seen (set, then del, an expiry; other keys ignored).
    wait_for("the first set", || {
        redis_cli(port, &["SET", "k0", "v"]);
        seen("set", "k0")
    });
    redis_cli(port, &["SET", "k1", "v1"]);
    redis_cli(port, &["DEL", "k1"]);
    redis_cli(port, &["UNLINK", "k0"]);
    redis_cli(port, &["SET", "other", "x"]);
    redis_cli(port, &["SET", "k2", "v", "PX", "30"]);
    wait_for("the expiry of k2", || {
        redis_cli(port, &["GET", "k2"]); // expires it on access at the latest
        seen("expire", "k2")
    });
    assert!(seen("set", "k1") && seen("invalidate", "k1") && seen("invalidate", "k0"));
    assert!(
        !seen("set", "other"),
        "keys outside the pattern are not recorded"
    );

    // The server goes away: the observer is blind until it is back, and says so.
    let before_gap = rec.elapsed().as_nanos() as u64;
    drop(server);
    std::thread::sleep(Duration::from_millis(300));
    let _server = Redis::start_on(port, dir.path());
    redis_cli(port, &["CONFIG", "SET", "notify-keyspace-events", "K$gxe"]);
    wait_for("a set after the restart", || {
        redis_cli(port, &["SET", "k3", "v"]);
        seen("set", "k3")
    });
    rec.flush();
    let gaps: Vec<serde_json::Value> = events(&path)
        .into_iter()
        .filter(|e| e["f"] == "observer-gap")
        .collect();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let (from, to) = (
        gaps[0]["value"]["from"].as_u64().unwrap(),
        gaps[0]["value"]["to"].as_u64().unwrap(),
    );
    assert_eq!(gaps[0]["value"]["node"], "r1a");
    assert!(
        from >= before_gap && to >= from + 300_000_000,
        "{from}..{to}"
    );

    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the observer stops when told")
        .unwrap();
}

/// Regression: a Redis restarted by a `kill-redis` fault comes back with notifications
/// off (they were turned on with `CONFIG SET`, which a restart forgets); the observer
/// resubscribed to it, heard nothing, and logged a gap that ended at the resubscription,
/// so every later invalidation there was a false `missing-invalidation`. Now, told to
/// configure (as the lab is), it turns them on again before it resubscribes; told not
/// to, it stays blind while they are off, and a gap still open when it stops is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_that_forgot_its_notifications_is_not_watched_blindly() {
    // Two servers: `CONFIG SET` is server-wide, so the observer that configures would
    // turn notifications on for the one that may not, had they watched the same one.
    let (dir, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port, port2) = (free_port(), free_port());
    let server = Redis::start_on(port, dir.path());
    let server2 = Redis::start_on(port2, dir2.path());
    let path = dir.path().join("history.jsonl");
    let rec = Arc::new(Recorder::new(HistoryWriter::create(&path).unwrap()));
    let watch_of = |node: &str, port: u16, configure: bool| CacheWatch {
        node: node.into(),
        addr: format!("127.0.0.1:{port}"),
        pattern: "k*".into(),
        db: 0,
        configure,
        read_back: None,
    };
    watch_of("lab", port, true).configure().await.unwrap();
    watch_of("staging", port2, true).configure().await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let lab = tokio::spawn(watch(
        watch_of("lab", port, true),
        rec.clone(),
        stop_rx.clone(),
    ));
    let staging = tokio::spawn(watch(
        watch_of("staging", port2, false),
        rec.clone(),
        stop_rx,
    ));
    let seen = |process: &str, f: &str, key: &str| {
        rec.flush();
        events(&path)
            .iter()
            .any(|e| e["f"] == f && e["key"] == key && e["process"] == process)
    };
    wait_for("both observers to subscribe", || {
        redis_cli(port, &["SET", "k0", "v"]);
        redis_cli(port2, &["SET", "k0", "v"]);
        seen("monitor:lab", "set", "k0") && seen("monitor:staging", "set", "k0")
    });

    // Restarted with their configuration file's setting: no notifications.
    drop(server);
    drop(server2);
    std::thread::sleep(Duration::from_millis(300));
    let _server = Redis::start_on(port, dir.path());
    let _server2 = Redis::start_on(port2, dir2.path());
    wait_for(
        "a set after the restart, seen by the observer that configures",
        || {
            redis_cli(port, &["SET", "k1", "v"]);
            seen("monitor:lab", "set", "k1")
        },
    );
    redis_cli(port, &["DEL", "k1"]);
    wait_for("the deletion after the restart", || {
        seen("monitor:lab", "invalidate", "k1")
    });
    redis_cli(port2, &["SET", "k1", "v"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !seen("monitor:staging", "set", "k1"),
        "notifications are off: the other observer cannot have heard it"
    );
    let gaps = |process: &str| -> Vec<serde_json::Value> {
        rec.flush();
        events(&path)
            .into_iter()
            .filter(|e| e["f"] == "observer-gap" && e["process"] == process)
            .collect()
    };
    assert_eq!(gaps("monitor:lab").len(), 1, "{:?}", gaps("monitor:lab"));
    assert!(
        gaps("monitor:staging").is_empty(),
        "the observer that may not configure is still blind: {:?}",
        gaps("monitor:staging")
    );

    // Stopped while blind: the gap is logged, up to the stop.
    let stopped_at = rec.elapsed().as_nanos() as u64;
    stop_tx.send(true).unwrap();
    for task in [lab, staging] {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the observer stops when told")
            .unwrap();
    }
    let gap = gaps("monitor:staging");
    assert_eq!(gap.len(), 1, "{gap:?}");
    assert!(
        gap[0]["value"]["to"].as_u64().unwrap() >= stopped_at,
        "{gap:?}"
    );
}
