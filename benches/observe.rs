//! How late the cache observer stamps what it sees: for each of N deletions of a key
//! that a real `redis-server` on loopback holds, the time from just before the DEL is
//! sent (on the recorder's clock) to the observer's `invalidate` stamp of that key. The
//! figure includes the DEL's trip to the server and the notification's trip back, so it
//! bounds the stamping lateness from above. Issue 12's target: under 10 ms.
//!
//! `cargo bench --bench observe` (any user; `COHERENCE_BENCH_DELETIONS`, 5000, tunes it).

use coherence_loopback::{free_port, Redis};
use coherence_store::recorder::Recorder;
use coherence_store::HistoryWriter;
use coherence_workloads::observe::{watch, CacheWatch};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("COHERENCE_BENCH_DELETIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = Redis::start_on(port, dir.path());
    let path = dir.path().join("history.jsonl");
    let rec = Arc::new(Recorder::new(HistoryWriter::create(&path).unwrap()));
    let w = || CacheWatch {
        node: "r1a".into(),
        addr: format!("127.0.0.1:{port}"),
        pattern: "k*".into(),
        db: 0,
        configure: true,
        read_back: None,
    };
    w().configure().await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let observer = tokio::spawn(watch(w(), rec.clone(), stop_rx));
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    // Subscribed once a set of a warm-up key is seen.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _: () = redis::cmd("SET")
            .arg("kwarm")
            .arg("v")
            .query_async(&mut con)
            .await
            .unwrap();
        rec.flush();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains("\"kwarm\"") {
            break;
        }
        assert!(Instant::now() < deadline, "the observer did not subscribe");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("k{i}");
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("v")
            .query_async(&mut con)
            .await
            .unwrap();
        let t0 = rec.elapsed().as_nanos() as u64;
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut con)
            .await
            .unwrap();
        sent.push(t0);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).unwrap();
    observer.await.unwrap();
    Arc::into_inner(rec).unwrap().finish().unwrap();
    let mut seen = vec![None; n];
    for line in std::fs::read_to_string(&path).unwrap().lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        if e["f"] == "invalidate" && e["process"] == "monitor:r1a" {
            if let Some(i) = e["key"].as_str().and_then(|k| k[1..].parse::<usize>().ok()) {
                if i < n && seen[i].is_none() {
                    seen[i] = e["time"].as_u64();
                }
            }
        }
    }
    let mut late: Vec<f64> = sent
        .iter()
        .zip(&seen)
        .filter_map(|(t0, t1)| t1.map(|t1| t1.saturating_sub(*t0) as f64 / 1e6))
        .collect();
    late.sort_by(f64::total_cmp);
    let q = |p: f64| late[((late.len() as f64 * p) as usize).min(late.len() - 1)];
    println!(
        "cache observer stamping, {} of {n} deletions seen: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        late.len(),
        q(0.5),
        q(0.99),
        q(0.999),
        late[late.len() - 1]
    );
}
