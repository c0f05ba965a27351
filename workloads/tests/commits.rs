//! The commit observer against real PostgreSQL servers on loopback, made for each test
//! in a temporary directory with `initdb` (run as user `postgres` when the tests run as
//! root, as PostgreSQL refuses root): it refuses a server without logical decoding
//! (naming the node and the setting), records exactly the committed inserts and updates
//! of the watched table in commit order with the server's LSN and commit timestamp,
//! follows a failover to the promoted standby and records the gap, and leaves no slot
//! and no publication behind when stopped.

use coherence_loopback::{free_port, Pg};
use coherence_store::recorder::Recorder;
use coherence_store::HistoryWriter;
use coherence_workloads::commits::{watch, CommitWatch, DbNode};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The observer's name for a server.
fn node(pg: &Pg) -> DbNode {
    DbNode {
        name: pg.name.clone(),
        host: "127.0.0.1".into(),
        port: pg.port,
    }
}

fn items_watch(nodes: Vec<DbNode>, name: &str) -> CommitWatch {
    CommitWatch {
        nodes,
        user: "postgres".into(),
        password: None,
        dbname: "postgres".into(),
        table: "items".into(),
        key_column: "key".into(),
        write_column: "write_id".into(),
        version_column: Some("version".into()),
        name: name.into(),
    }
}

const SCHEMA: &str = "CREATE TABLE items (key text PRIMARY KEY, version bigint, \
                      write_id text, payload text); \
                      CREATE TABLE other (key text PRIMARY KEY, n bigint); \
                      INSERT INTO other VALUES ('o', 0)";

fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the observer's slot is there and streaming on `pg`.
async fn streaming(pg: &Pg, slot: &str) -> bool {
    let client = pg.client().await;
    let row = client
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    row.is_some_and(|r| r.get::<_, bool>(0))
}

/// The slots and publications of observers left on `pg`.
async fn leftovers(pg: &Pg) -> Vec<String> {
    let client = pg.client().await;
    client
        .query(
            "SELECT 'slot ' || slot_name FROM pg_replication_slots \
             UNION ALL SELECT 'publication ' || pubname FROM pg_publication",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn commits(events: &[Value], process: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["f"] == "commit" && e["process"] == process)
        .cloned()
        .collect()
}

/// An LSN's text form `X/Y` as a number, to compare.
fn lsn(e: &Value) -> u64 {
    let s = e["value"]["lsn"].as_str().unwrap();
    let (hi, lo) = s.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

async fn stop_and_join(stop: tokio::sync::watch::Sender<bool>, task: tokio::task::JoinHandle<()>) {
    let t = Instant::now();
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the observer stops when told")
        .unwrap();
    let took = t.elapsed();
    eprintln!("the observer stopped in {took:?}");
    assert!(took < Duration::from_secs(2), "stopping took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_logical_decoding_is_refused_naming_the_setting() {
    let db = Pg::primary("db1", &["wal_level = replica"]);
    let w = items_watch(vec![node(&db)], "refusal");
    let e = w.check().await.unwrap_err();
    assert!(
        e.contains("db1") && e.contains("wal_level = logical") && e.contains("replica"),
        "{e}"
    );
    assert!(w.prepare().await.is_err());
    // Nobody home is an error naming the node, not a hang or a panic.
    let gone = items_watch(
        vec![DbNode {
            name: "db9".into(),
            host: "127.0.0.1".into(),
            port: free_port(),
        }],
        "refusal",
    );
    let e = gone.check().await.unwrap_err();
    assert!(e.contains("cannot reach db9"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_observer_records_committed_rows_in_commit_order_and_cleans_up() {
    let db = Pg::primary(
        "db1",
        &[
            "wal_level = logical",
            "max_replication_slots = 10",
            "track_commit_timestamp = on",
            // Keepalives every second when idle.
            "wal_sender_timeout = 2s",
        ],
    );
    let sql = db.client().await;
    let w = items_watch(vec![node(&db)], "Events-1");
    assert_eq!(w.object_name(), "coherence_events_1");
    // A missing table, then missing columns, then a table without replica identity.
    let e = w.check().await.unwrap_err();
    assert!(
        e.contains("table items does not exist") && e.contains("db1"),
        "{e}"
    );
    sql.batch_execute(SCHEMA).await.unwrap();
    sql.batch_execute("CREATE TABLE plain (key text PRIMARY KEY, write_id text)")
        .await
        .unwrap();
    let e = CommitWatch {
        version_column: Some("nope".into()),
        ..w.clone()
    }
    .check()
    .await
    .unwrap_err();
    assert!(e.contains("column nope does not exist"), "{e}");
    sql.batch_execute("CREATE TABLE bare (key text, write_id text)")
        .await
        .unwrap();
    let e = CommitWatch {
        table: "bare".into(),
        version_column: None,
        ..w.clone()
    }
    .check()
    .await
    .unwrap_err();
    assert!(e.contains("REPLICA IDENTITY FULL"), "{e}");
    // A stale publication of the same name (a run that died) is replaced.
    sql.batch_execute("CREATE PUBLICATION coherence_events_1 FOR TABLE other")
        .await
        .unwrap();
    w.prepare().await.unwrap();
    let tables: Vec<String> = sql
        .query(
            "SELECT tablename::text FROM pg_publication_tables \
             WHERE pubname = 'coherence_events_1'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, ["items"]);

    // A second observer on a table with no version column, into its own history.
    let plain = CommitWatch {
        table: "plain".into(),
        version_column: None,
        name: "plain".into(),
        ..w.clone()
    };
    plain.prepare().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let plain_path = dir.path().join("plain.jsonl");
    let rec = Arc::new(Recorder::new(HistoryWriter::create(&path).unwrap()));
    let plain_rec = Arc::new(Recorder::new(HistoryWriter::create(&plain_path).unwrap()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(watch(w.clone(), rec.clone(), stop_rx.clone()));
    let plain_task = tokio::spawn(watch(plain.clone(), plain_rec.clone(), stop_rx));
    wait_for("the observers to stream", async || {
        w.streaming().await.unwrap() && plain.streaming().await.unwrap()
    })
    .await;

    sql.batch_execute("INSERT INTO items VALUES ('k1', 1, 'w1', 'a')")
        .await
        .unwrap();
    sql.batch_execute(
        "BEGIN; INSERT INTO items VALUES ('k2', 1, 'w2', 'b'); \
         UPDATE other SET n = n + 1; \
         UPDATE items SET version = 2, write_id = 'w3' WHERE key = 'k1'; COMMIT",
    )
    .await
    .unwrap();
    sql.batch_execute("BEGIN; INSERT INTO items VALUES ('k3', 1, 'w-rolled-back', 'c'); ROLLBACK")
        .await
        .unwrap();
    sql.batch_execute("UPDATE other SET n = n + 1")
        .await
        .unwrap();
    sql.batch_execute("UPDATE items SET payload = 'bb' WHERE key = 'k2'")
        .await
        .unwrap();
    sql.batch_execute("INSERT INTO items VALUES ('k4', 1, 'w4', NULL), ('k5', 7, 'w5', 'e')")
        .await
        .unwrap();
    sql.batch_execute("DELETE FROM items WHERE key = 'k5'")
        .await
        .unwrap();
    sql.batch_execute(
        "INSERT INTO plain VALUES ('p1', 'pw1'); UPDATE plain SET write_id = 'pw2' WHERE key = 'p1'",
    )
    .await
    .unwrap();
    // A last commit that must come through, so that nothing is still on its way.
    sql.batch_execute("INSERT INTO items VALUES ('last', 1, 'w-last', NULL)")
        .await
        .unwrap();
    wait_for("the last commit", async || {
        rec.flush();
        events(&path)
            .iter()
            .any(|e| e["f"] == "commit" && e["key"] == "last")
    })
    .await;
    wait_for("the plain table's commits", async || {
        plain_rec.flush();
        commits(&events(&plain_path), "cdc:db1").len() == 2
    })
    .await;

    rec.flush();
    let got = commits(&events(&path), "cdc:db1");
    let seen: Vec<(&str, &str, i64)> = got
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap(),
                e["value"]["write"].as_str().unwrap(),
                e["value"]["version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("k1", "w1", 1),
            ("k2", "w2", 1),
            ("k1", "w3", 2),
            ("k2", "w2", 1),
            ("k4", "w4", 1),
            ("k5", "w5", 7),
            ("last", "w-last", 1),
        ],
        "{got:#?}"
    );
    for e in &got {
        assert_eq!(e["node"], "db1");
        assert_eq!(e["type"], "info");
    }
    // One LSN per transaction, growing in commit order.
    let lsns: Vec<u64> = got.iter().map(lsn).collect();
    assert!(lsns[0] < lsns[1] && lsns[1] == lsns[2] && lsns[2] < lsns[3]);
    assert!(lsns[3] < lsns[4] && lsns[4] == lsns[5] && lsns[5] < lsns[6]);
    // The commit timestamp is the server's, to the microsecond.
    let server_ts = |key: &'static str| {
        let sql = &sql;
        async move {
            let row = sql
                .query_one(
                    "SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', \
                     'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM items WHERE key = $1",
                    &[&key],
                )
                .await
                .unwrap();
            row.get::<_, String>(0)
        }
    };
    assert_eq!(got[2]["value"]["commit_ts"], server_ts("k1").await.as_str());
    assert_eq!(got[3]["value"]["commit_ts"], server_ts("k2").await.as_str());
    assert_eq!(
        got[6]["value"]["commit_ts"],
        server_ts("last").await.as_str()
    );
    assert!(
        got[0]["value"]["commit_ts"].as_str().unwrap()
            < got[2]["value"]["commit_ts"].as_str().unwrap()
    );
    // Times on the run's clock, in the order received.
    let times: Vec<u64> = got.iter().map(|e| e["time"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    plain_rec.flush();
    let plain_got = commits(&events(&plain_path), "cdc:db1");
    assert_eq!(plain_got.len(), 2, "{plain_got:#?}");
    assert_eq!(plain_got[0]["key"], "p1");
    assert_eq!(plain_got[0]["value"]["write"], "pw1");
    assert_eq!(plain_got[1]["value"]["write"], "pw2");
    for e in &plain_got {
        assert!(e["value"].get("version").is_none(), "{e}");
    }
    // Nothing was blind here.
    assert!(!events(&path).iter().any(|e| e["f"] == "observer-gap"));

    // Writes of other tables only (transactions the server does not send): the slot
    // still moves on, so it does not retain WAL for the rest of the run.
    sql.batch_execute("UPDATE other SET n = n + 1; SELECT pg_switch_wal()")
        .await
        .unwrap();
    let current: String = sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    wait_for("the slot to confirm WAL it had no changes in", async || {
        sql.query_one(
            "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots \
             WHERE slot_name = 'coherence_events_1'",
            &[&current],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
    })
    .await;

    // Stopped, the observers leave no slot and no publication.
    stop_and_join(stop_tx, task).await;
    tokio::time::timeout(Duration::from_secs(5), plain_task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(leftovers(&db).await, Vec::<String>::new());
    // And cleanup is safe to call again.
    w.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_observer_follows_a_failover_and_records_the_gap() {
    let a = Pg::primary(
        "A",
        &[
            "wal_level = logical",
            "max_replication_slots = 10",
            "track_commit_timestamp = on",
        ],
    );
    a.client().await.batch_execute(SCHEMA).await.unwrap();
    let b = Pg::standby("B", &a);
    let w = items_watch(vec![node(&a), node(&b)], "failover");
    w.prepare().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let rec = Arc::new(Recorder::new(HistoryWriter::create(&path).unwrap()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(watch(w.clone(), rec.clone(), stop_rx));
    wait_for("the slot on A", async || {
        streaming(&a, "coherence_failover").await
    })
    .await;
    let sql_a = a.client().await;
    for i in 0..3 {
        sql_a
            .batch_execute(&format!(
                "INSERT INTO items VALUES ('a{i}', 1, 'wa{i}', NULL)"
            ))
            .await
            .unwrap();
    }
    wait_for("A's commits", async || {
        rec.flush();
        commits(&events(&path), "cdc:A").len() == 3
    })
    .await;
    let sql_b = b.client().await;
    wait_for("B to replay A's rows", async || {
        let n: i64 = sql_b
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap()
            .get(0);
        n == 3
    })
    .await;

    // A crashes; B is promoted.
    let lost_after = rec.elapsed().as_nanos() as u64;
    a.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.promote();
    wait_for("the observer to resume on B", async || {
        rec.flush();
        events(&path).iter().any(|e| e["f"] == "observer-gap")
    })
    .await;
    for i in 0..3 {
        sql_b
            .batch_execute(&format!(
                "INSERT INTO items VALUES ('b{i}', 1, 'wb{i}', NULL)"
            ))
            .await
            .unwrap();
    }
    wait_for("B's commits", async || {
        rec.flush();
        commits(&events(&path), "cdc:B").len() == 3
    })
    .await;

    let all = events(&path);
    let gaps: Vec<&Value> = all.iter().filter(|e| e["f"] == "observer-gap").collect();
    assert_eq!(gaps.len(), 1, "{gaps:#?}");
    let gap = gaps[0];
    eprintln!("the gap: {gap}");
    assert_eq!(gap["process"], "cdc:B");
    assert_eq!(gap["node"], "B");
    assert_eq!(gap["value"]["node"], "B");
    assert_eq!(gap["value"]["previous"], "A");
    let (from, to) = (
        gap["value"]["from"].as_u64().unwrap(),
        gap["value"]["to"].as_u64().unwrap(),
    );
    assert!(from >= lost_after && to > from, "{from}..{to}");
    let on_b = commits(&all, "cdc:B");
    let keys: Vec<&str> = on_b.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["b0", "b1", "b2"]);
    for e in &on_b {
        assert_eq!(e["node"], "B");
        assert!(e["time"].as_u64().unwrap() > to);
    }
    let on_a = commits(&all, "cdc:A");
    assert!(on_a.iter().all(|e| e["time"].as_u64().unwrap() < from));

    stop_and_join(stop_tx, task).await;
    assert_eq!(leftovers(&b).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_blind_from_the_start_records_the_gap() {
    let port = free_port();
    let w = items_watch(
        vec![DbNode {
            name: "db1".into(),
            host: "127.0.0.1".into(),
            port,
        }],
        "blind",
    );
    let dir = tempfile::tempdir().unwrap();
    // Blind from start to stop: the gap ends at the stop and resumed nowhere.
    let never = dir.path().join("never.jsonl");
    let never_rec = Arc::new(Recorder::new(HistoryWriter::create(&never).unwrap()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(watch(w.clone(), never_rec.clone(), stop_rx));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_and_join(stop_tx, task).await;
    never_rec.flush();
    let gaps = events(&never);
    assert_eq!(gaps.len(), 1, "{gaps:#?}");
    assert_eq!(gaps[0]["f"], "observer-gap");
    assert_eq!(gaps[0]["process"], "cdc");
    assert!(gaps[0]["value"]["node"].is_null() && gaps[0]["value"]["previous"].is_null());
    assert!(
        gaps[0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach db1"),
        "{gaps:?}"
    );
    assert!(
        gaps[0]["value"]["to"].as_u64().unwrap()
            >= gaps[0]["value"]["from"].as_u64().unwrap() + 300_000_000
    );

    let path = dir.path().join("history.jsonl");
    let rec = Arc::new(Recorder::new(HistoryWriter::create(&path).unwrap()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(watch(w.clone(), rec.clone(), stop_rx));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The server comes up on the port the observer keeps trying.
    let db = Pg::at("db1", port);
    db.init();
    db.configure(&["wal_level = logical", "max_replication_slots = 10"]);
    db.start();
    db.client().await.batch_execute(SCHEMA).await.unwrap();
    wait_for("the gap", async || {
        rec.flush();
        events(&path).iter().any(|e| e["f"] == "observer-gap")
    })
    .await;
    let gap = events(&path)
        .into_iter()
        .find(|e| e["f"] == "observer-gap")
        .unwrap();
    assert_eq!(gap["value"]["node"], "db1");
    assert!(gap["value"]["previous"].is_null(), "{gap}");
    assert!(
        gap["value"]["to"].as_u64().unwrap()
            >= gap["value"]["from"].as_u64().unwrap() + 300_000_000,
        "{gap}"
    );
    stop_and_join(stop_tx, task).await;
    assert_eq!(leftovers(&db).await, Vec::<String>::new());

    // An observer whose stop sender is gone stops too (and does not spin).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(watch(w.clone(), rec.clone(), stop_rx));
    wait_for("the observer to stream", async || {
        w.streaming().await.unwrap()
    })
    .await;
    drop(stop_tx);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("an observer stops when its stop sender is dropped")
        .unwrap();
}

/// Not an assertion on time: prints how late commit events are stamped after the
/// client saw its COMMIT acknowledged (negative: the observer heard first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn how_late_commit_events_are_stamped() {
    let db = Pg::primary(
        "db1",
        &["wal_level = logical", "max_replication_slots = 10"],
    );
    let sql = db.client().await;
    sql.batch_execute(SCHEMA).await.unwrap();
    let w = items_watch(vec![node(&db)], "latency");
    w.prepare().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let rec = Arc::new(Recorder::new(HistoryWriter::create(&path).unwrap()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(watch(w.clone(), rec.clone(), stop_rx));
    wait_for("the slot", async || {
        streaming(&db, "coherence_latency").await
    })
    .await;
    const N: usize = 400;
    let mut acked = Vec::with_capacity(N);
    for i in 0..N {
        sql.batch_execute(&format!(
            "INSERT INTO items VALUES ('k{i}', 1, 'w{i}', NULL)"
        ))
        .await
        .unwrap();
        acked.push(rec.elapsed().as_nanos() as i64);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wait_for("every commit", async || {
        rec.flush();
        commits(&events(&path), "cdc:db1").len() == N
    })
    .await;
    let got = commits(&events(&path), "cdc:db1");
    let mut late: Vec<i64> = got
        .iter()
        .map(|e| {
            let i: usize = e["key"].as_str().unwrap()[1..].parse().unwrap();
            e["time"].as_i64().unwrap() - acked[i]
        })
        .collect();
    late.sort();
    let at = |q: f64| late[((late.len() - 1) as f64 * q) as usize] as f64 / 1e3;
    eprintln!(
        "commit event stamped after the COMMIT ack, over {N} commits: min {:.0} µs, \
         p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        at(0.0),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    stop_and_join(stop_tx, task).await;
}
