//! The `watch` workload (`coherence watch`): no operation of ours against a system that
//! serves its own traffic (staging, or the lab under another run), only observers. For
//! each commit the commit observer sees, it reads the key on every cache node after
//! each of a few delays (`[workload.watch] delays`, default 1 s, 10 s, 60 s) and logs
//! what each node held as a `sample` (`{"from", "held"}`, with `after` the commit's
//! index and `delay_ms`), under the node's `monitor:` actor. Samples are rate-limited
//! (`max_samples_per_second`): a commit's samples at one delay are taken on every node
//! or, when they would exceed the budget, on none (counted as skipped), so the watcher
//! never becomes the load and no region is judged by some of its nodes only.
//!
//! What it shows ("N nines of writes consistent within M") is computed from those
//! samples after the run (`src/watch.rs`).

use crate::campaign;
use crate::http::Decode;
use crate::workload::{Client, Endpoints, Recording, Who, Workload};
use coherence_store::{Event, EventType, Process};
use futures_util::future::BoxFuture;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;
use tokio::time::Instant;

/// `[workload.watch]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// After each commit, sample every cache node after each of these delays.
    #[serde(default = "default_delays")]
    pub delays: Vec<String>,
    /// The most samples (GETs on a cache node) per second.
    #[serde(default = "default_rate")]
    pub max_samples_per_second: u32,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            delays: default_delays(),
            max_samples_per_second: default_rate(),
        }
    }
}

fn default_delays() -> Vec<String> {
    vec!["1s".into(), "10s".into(), "60s".into()]
}

fn default_rate() -> u32 {
    200
}

impl WatchConfig {
    /// The delays, parsed; an error naming the bad one.
    pub fn parsed_delays(&self) -> Result<Vec<Duration>, String> {
        if self.delays.is_empty() {
            return Err("workload.watch.delays: give at least one delay, e.g. [\"1s\"]".into());
        }
        self.delays
            .iter()
            .map(|d| {
                coherence_store::duration::parse(d)
                    .map_err(|e| format!("workload.watch.delays: {d:?}: {e}"))
            })
            .collect()
    }
}

/// The watch workload.
pub struct Watch {
    nodes: Vec<(String, String)>,
    delays: Vec<Duration>,
    rate: u32,
    decode: Option<Decode>,
}

impl Watch {
    /// The watcher of every cache node of `ends`, as `work` configures it.
    pub fn new(work: &campaign::Workload, ends: &Endpoints) -> Watch {
        let config = work.watch.clone().unwrap_or_default();
        Watch {
            nodes: ends
                .regions
                .iter()
                .flat_map(|r| r.all())
                .map(|n| (n.name, n.addr))
                .collect(),
            delays: config.parsed_delays().unwrap_or_default(),
            rate: config.max_samples_per_second.max(1),
            decode: Decode::new(&ends.cached_value).ok(),
        }
    }
}

impl Workload for Watch {
    fn preflight(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            anyhow::ensure!(
                self.decode.is_some(),
                "[observe] value: unknown value format"
            );
            for (name, addr) in &self.nodes {
                let client = redis::Client::open(format!("redis://{addr}/"))?;
                let mut con = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.get_multiplexed_async_connection(),
                )
                .await
                .map_err(|_| anyhow::anyhow!("cache node {name} ({addr}) does not answer"))?
                .map_err(|e| anyhow::anyhow!("cache node {name} ({addr}): {e}"))?;
                let _: String = redis::cmd("PING").query_async(&mut con).await?;
            }
            Ok(())
        })
    }

    fn open(&self, who: Who, recording: Recording) -> Box<dyn Client> {
        Box::new(Watcher {
            active: who == Who::Worker(0),
            commits: None,
            due: BinaryHeap::new(),
            connections: HashMap::new(),
            nodes: self.nodes.clone(),
            delays: self.delays.clone(),
            rate: self.rate,
            tokens: self.rate as f64,
            refilled: Instant::now(),
            decode: self.decode.clone().unwrap_or(Decode::VersionedJson),
            recording,
            skipped: 0,
            printed: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

/// A sample to take: when, the commit's index and key, its delay, the committed version.
type Due = Reverse<(Instant, u64, String, u64, Option<i64>)>;

/// Inconsistent samples printed as they are taken; the rest are counted in watch.json.
const PRINTED: u64 = 20;

struct Watcher {
    /// Only the first worker watches; the others have nothing to do.
    active: bool,
    commits: Option<std::sync::mpsc::Receiver<Vec<u8>>>,
    due: BinaryHeap<Due>,
    connections: HashMap<String, redis::aio::MultiplexedConnection>,
    nodes: Vec<(String, String)>,
    delays: Vec<Duration>,
    rate: u32,
    tokens: f64,
    refilled: Instant,
    decode: Decode,
    recording: Recording,
    skipped: u64,
    /// Inconsistent samples seen (the first [`PRINTED`] are printed).
    printed: std::sync::atomic::AtomicU64,
}

impl Watcher {
    /// The commits logged since the last look: each is due after every delay.
    fn take_commits(&mut self) {
        let Some(rx) = &self.commits else { return };
        let now = Instant::now();
        while let Ok(line) = rx.try_recv() {
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            let actor = v["process"].as_str().unwrap_or("");
            if v["f"] != "commit" || !actor.starts_with("cdc:") {
                continue;
            }
            let (Some(key), Some(index)) = (v["key"].as_str(), v["index"].as_u64()) else {
                continue;
            };
            let version = v["value"]["version"].as_i64();
            for d in &self.delays {
                self.due.push(Reverse((
                    now + *d,
                    index,
                    key.to_string(),
                    d.as_millis() as u64,
                    version,
                )));
            }
        }
    }

    /// Whether the rate allows `n` more samples now (a budget of at least `n` a second).
    fn allowed(&mut self, n: usize) -> bool {
        let now = Instant::now();
        let rate = self.rate as f64;
        let need = n as f64;
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate)
            .min(rate.max(need));
        self.refilled = now;
        if self.tokens >= need {
            self.tokens -= need;
            true
        } else {
            false
        }
    }

    /// The connection to `addr`, opened when missing.
    async fn connection(&mut self, addr: &str) -> Option<redis::aio::MultiplexedConnection> {
        if let Some(c) = self.connections.get(addr) {
            return Some(c.clone());
        }
        let client = redis::Client::open(format!("redis://{addr}/")).ok()?;
        let opened = tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await;
        match opened {
            Ok(Ok(c)) => {
                self.connections.insert(addr.to_string(), c.clone());
                Some(c)
            }
            _ => None,
        }
    }
}

/// Reads `key` on `node` and logs what it held as a sample of the commit at `after`;
/// whether the node answered.
async fn sample(
    rec: &coherence_store::recorder::Recorder,
    mut con: redis::aio::MultiplexedConnection,
    decode: &Decode,
    node: &str,
    key: &str,
    (after, delay_ms, version): (u64, u64, Option<i64>),
    printed: &std::sync::atomic::AtomicU64,
) -> bool {
    let mut ev = match crate::observe::read_back_sample(rec, &mut con, decode, node, key).await {
        crate::observe::ReadBack::Held(ev) => ev,
        crate::observe::ReadBack::NoEvidence => return true,
        crate::observe::ReadBack::NoAnswer => return false,
    };
    ev.extra.insert("after".into(), json!(after));
    ev.extra.insert("delay_ms".into(), json!(delay_ms));
    let held = ev
        .value
        .as_ref()
        .and_then(|v| v["held"]["version"].as_i64());
    let older = held.zip(version).filter(|(h, v)| h < v);
    rec.log(ev);
    if let Some((h, v)) = older {
        use std::sync::atomic::Ordering;
        if printed.fetch_add(1, Ordering::Relaxed) < PRINTED {
            eprintln!(
                "watch: {node} held key {} at version {h} {delay_ms} ms after version {v} was committed (line {})",
                coherence_store::quote(key),
                after + 1
            );
        }
    }
    true
}

impl Client for Watcher {
    fn recording(&mut self) -> &mut Recording {
        &mut self.recording
    }

    fn setup(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            if self.active {
                self.commits = Some(self.recording.recorder().tap());
            }
            Ok(())
        })
    }

    fn invoke<'a>(&'a mut self, _rng: &'a mut ChaCha8Rng) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if !self.active {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
            self.take_commits();
            let now = Instant::now();
            // Every sample due now, all at once (each node's GETs share its connection).
            let mut batch = Vec::new();
            while self.due.peek().is_some_and(|Reverse(d)| d.0 <= now) {
                let Some(Reverse((_, after, key, delay_ms, version))) = self.due.pop() else {
                    break;
                };
                // Every node or none: a commit sampled on some nodes of a region only
                // would look consistent there without being so.
                if !self.allowed(self.nodes.len()) {
                    self.skipped += self.nodes.len() as u64;
                    continue;
                }
                for (node, addr) in self.nodes.clone() {
                    if let Some(con) = self.connection(&addr).await {
                        batch.push((node, addr, con, key.clone(), (after, delay_ms, version)));
                    }
                }
            }
            if batch.is_empty() {
                let next = self.due.peek().map(|Reverse(d)| d.0);
                let wake = next.map_or(now + Duration::from_millis(5), |t| {
                    t.min(now + Duration::from_millis(5))
                });
                tokio::time::sleep_until(wake).await;
                return;
            }
            let rec = self.recording.recorder().clone();
            let decode = self.decode.clone();
            let printed = &self.printed;
            let answered =
                futures_util::future::join_all(batch.iter().map(|(node, _, con, key, of)| {
                    sample(&rec, con.clone(), &decode, node, key, *of, printed)
                }))
                .await;
            for ((_, addr, ..), ok) in batch.iter().zip(answered) {
                if !ok {
                    self.connections.remove(addr);
                }
            }
        })
    }

    fn final_phase(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.active {
                let rec = self.recording.recorder().clone();
                rec.log(
                    Event::new(
                        0,
                        Process::Actor("control".into()),
                        EventType::Info,
                        "watch-end",
                    )
                    .value(
                        json!({"skipped_samples": self.skipped, "pending_samples": self.due.len()}),
                    ),
                );
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse_and_a_bad_one_is_named() {
        let c = WatchConfig::default();
        assert_eq!(
            c.parsed_delays().unwrap(),
            [
                Duration::from_secs(1),
                Duration::from_secs(10),
                Duration::from_secs(60)
            ]
        );
        let bad = WatchConfig {
            delays: vec!["1s".into(), "soon".into()],
            ..WatchConfig::default()
        };
        assert!(bad.parsed_delays().unwrap_err().contains("\"soon\""));
        let none = WatchConfig {
            delays: vec![],
            ..WatchConfig::default()
        };
        assert!(none.parsed_delays().is_err());
    }
}
