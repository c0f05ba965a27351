//! The seam every workload plugs into, and the op-recording harness they share.
//!
//! A workload is shaped like a Jepsen client. A [`Workload`] is the template: it
//! checks the endpoints before a run ([`Workload::preflight`]) and opens a [`Client`]
//! per process. A client is set up, invoked once per step of the workload (a step is
//! one logical operation, which may record several history operations: a cache-aside
//! read that misses records `read`, `db-read` and `fill`), and closed; one more client
//! runs the final phase. The harness owns everything the history's contract demands of
//! every workload alike ([`run`], [`op`]): an `invoke` before each operation and `ok`,
//! `fail` or `info` after it (timeouts and unknown outcomes are `info`, only certain
//! failures `fail`), a fresh process after an `info`, the rate, concurrency and time
//! limit, the stop flag, and the phases (workload, quiesce, `final-phase`, final
//! reads).
//!
//! Workloads are chosen by `[workload] kind` in the campaign ([`crate::registry`]).

use crate::campaign;
use anyhow::{Context, Result};
use coherence_store::recorder::Recorder;
use coherence_store::{Event, EventType, Process};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use coherence_cache::{BoxFuture, Node, RegionNodes};

/// Where everything is.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The PostgreSQL servers writes may go to. With more than one, a client connects to
    /// the first, in an order of its own, that is not in recovery (a primary), as libpq
    /// does with `target_session_attrs=read-write`; it looks again after its connection
    /// is lost or a write is refused as read-only: so writers follow a failover.
    pub db_writers: Vec<Node>,
    /// The servers for database reads after a miss: a standby when one answers,
    /// else a primary.
    pub db_readers: Vec<Node>,
    /// A libpq connection string without host and port (user, password, dbname).
    pub db_params: String,
    /// Cache regions.
    pub regions: Vec<RegionNodes>,
    /// The service under test, per region (the `http` workload's, when the cluster
    /// provides it: the lab's reference service; staging names it in the campaign).
    pub apps: Vec<AppRegion>,
    /// The table of the service's items, as `[observe.database]` names it: where the
    /// final phase reads each key's state in the database.
    pub table: Option<crate::campaign::ObserveDatabase>,
    /// How the final phase decodes a cached value (`[observe] value`).
    pub cached_value: String,
}

/// The instances of the service under test in one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRegion {
    /// The region's name (as its cache region is named).
    pub name: String,
    /// Base URLs of its instances (`http://host:port`), none ending in `/`.
    pub bases: Vec<String>,
}

/// A workload: the template its clients are opened from.
pub trait Workload: Send + Sync {
    /// Checks, before a run, that the system under test answers: a campaign whose
    /// endpoints are wrong is refused, not run against nothing.
    fn preflight(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Opens the client `who`, which records through `recording`.
    fn open(&self, who: Who, recording: Recording) -> Box<dyn Client>;
}

/// Which client the harness opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// The `n`-th of the workload's concurrent clients (from 0).
    Worker(u32),
    /// The client of the final phase.
    Final,
}

/// One client: a process of the history (a new one after each `info`).
pub trait Client: Send {
    /// Where it records, and its process now.
    fn recording(&mut self) -> &mut Recording;

    /// After an `info`: drops whatever may be mid-request (connections), so that the
    /// fresh process starts clean.
    fn reset(&mut self) {}

    /// Before the first operation.
    fn setup(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// One step of the workload, its operations recorded with [`op`]; `rng` is this
    /// client's, seeded from the campaign.
    fn invoke<'a>(&'a mut self, rng: &'a mut ChaCha8Rng) -> BoxFuture<'a, ()>;

    /// The final phase, after the quiesce: reads the final state.
    fn final_phase(&mut self) -> BoxFuture<'_, Result<()>>;

    /// After the last operation.
    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A client's part of the harness: where it records, its process, its timeout.
pub struct Recording {
    rec: Arc<Recorder>,
    process: i64,
    timeout: Duration,
    /// The server that served the operation under way, when it is not the one named
    /// at its invocation (a client that followed a failover). Cleared before each
    /// operation; the completion names it.
    pub served: Option<String>,
}

impl Recording {
    /// A fresh process recording into `rec`, every call bounded by `timeout`.
    pub fn new(rec: Arc<Recorder>, timeout: Duration) -> Recording {
        Recording {
            process: rec.new_process(),
            rec,
            timeout,
            served: None,
        }
    }

    /// The recorder.
    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.rec
    }
}

/// An operation, as its invocation names it.
#[derive(Debug, Clone)]
pub struct Op<'a> {
    /// What it does (`read`, `write`, ...).
    pub f: &'a str,
    /// The key.
    pub key: &'a str,
    /// The server it goes to.
    pub node: &'a str,
    /// Its value at the invocation (a write's id, a fill's version).
    pub value: Option<Value>,
    /// The client's region, if the workload has regions.
    pub region: Option<&'a str>,
}

/// How an operation ended, as the history says it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// It happened; its value.
    Ok(Value),
    /// It certainly had no effect; why.
    Fail(String),
    /// It may or may not have happened; why.
    Info(String),
}

/// A failure and whether it certainly had no effect.
#[derive(Debug, Clone)]
pub struct OpError {
    /// What went wrong.
    pub message: String,
    /// True when the operation certainly had no effect (`fail`), false when it may
    /// have (`info`).
    pub certain: bool,
}

impl OpError {
    /// A failure that certainly had no effect.
    pub fn certain(e: impl std::fmt::Display) -> OpError {
        OpError {
            message: e.to_string(),
            certain: true,
        }
    }

    /// A failure whose effect is unknown.
    pub fn unknown(e: impl std::fmt::Display) -> OpError {
        OpError {
            message: e.to_string(),
            certain: false,
        }
    }
}

fn event(process: i64, kind: EventType, op: &Op<'_>, node: &str) -> Event {
    let event = Event::new(0, Process::Client(process), kind, op.f)
        .key(op.key)
        .node(node);
    match op.region {
        Some(region) => event.extra("region", Value::String(region.to_string())),
        None => event,
    }
}

/// Runs one operation of `client`: logs the invoke, runs `body` under the client's
/// timeout (past it the outcome is unknown), logs the completion. After an `info` the
/// client is [`Client::reset`] and continues under a fresh process.
pub async fn op<C, F>(client: &mut C, op: Op<'_>, body: F) -> Outcome
where
    C: Client + ?Sized,
    F: AsyncFnOnce(&mut C) -> Result<Value, OpError>,
{
    let recording = client.recording();
    let mut invoke = event(recording.process, EventType::Invoke, &op, op.node);
    if let Some(v) = op.value.clone() {
        invoke = invoke.value(v);
    }
    recording.rec.log(invoke);
    recording.served = None;
    let timeout = recording.timeout;
    let result = match tokio::time::timeout(timeout, body(client)).await {
        Ok(r) => r,
        Err(_) => Err(OpError::unknown(format!("timed out after {timeout:?}"))),
    };
    let outcome = match result {
        Ok(v) => Outcome::Ok(v),
        Err(e) if e.certain => Outcome::Fail(e.message),
        Err(e) => Outcome::Info(e.message),
    };
    let (kind, v, error) = match &outcome {
        Outcome::Ok(v) => (EventType::Ok, Some(v.clone()), None),
        Outcome::Fail(e) => (EventType::Fail, op.value.clone(), Some(e.clone())),
        Outcome::Info(e) => (EventType::Info, op.value.clone(), Some(e.clone())),
    };
    let recording = client.recording();
    let served = recording.served.take();
    let mut done = event(
        recording.process,
        kind,
        &op,
        served.as_deref().unwrap_or(op.node),
    );
    if let Some(v) = v {
        done = done.value(v);
    }
    if let Some(e) = error {
        done = done.error(e);
    }
    recording.rec.log(done);
    if matches!(outcome, Outcome::Info(_)) {
        // The connections may be mid-request: start over with fresh ones.
        recording.process = recording.rec.new_process();
        client.reset();
    }
    outcome
}

/// The name of key `i`.
pub fn key_name(i: u32) -> String {
    format!("k{i}")
}

/// Picks keys by the campaign's distribution.
pub struct Keys {
    n: u32,
    zipf: Option<rand_distr::Zipf<f64>>,
}

impl Keys {
    /// The campaign's keys and distribution.
    pub fn new(w: &campaign::Workload) -> Keys {
        let zipf = match w.distribution {
            campaign::Distribution::Uniform => None,
            campaign::Distribution::Zipf { exponent } => {
                rand_distr::Zipf::new(w.keys as f64, exponent).ok()
            }
        };
        Keys { n: w.keys, zipf }
    }

    /// The next key.
    pub fn pick(&self, rng: &mut ChaCha8Rng) -> String {
        let i = match &self.zipf {
            Some(z) => (rng.sample(z) as u32).saturating_sub(1).min(self.n - 1),
            None => rng.random_range(0..self.n),
        };
        key_name(i)
    }
}

/// What the progress bar shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Clients are running.
    Workload,
    /// Waiting for the system to settle.
    Quiesce,
    /// Reading the final state.
    Final,
}

/// The final phase's calls get at least this much patience.
const FINAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `workload` as `work` says (concurrency, rate, time limit, seed) until the time
/// limit, then quiesces, logs `final-phase` and runs the final phase. `phase` is told
/// when the run moves on; `stop` ends the workload early (Ctrl-C).
pub async fn run(
    workload: &dyn Workload,
    work: &campaign::Workload,
    rec: Arc<Recorder>,
    phase: impl Fn(Phase),
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let deadline = Instant::now() + work.time_limit;
    let interval = (work.rate > 0)
        .then(|| Duration::from_secs_f64(work.concurrency as f64 / work.rate as f64));
    let mut tasks = Vec::new();
    phase(Phase::Workload);
    for id in 0..work.concurrency {
        let mut client = workload.open(
            Who::Worker(id),
            Recording::new(rec.clone(), work.op_timeout),
        );
        let stop = stop.clone();
        let seed = work.seed.wrapping_mul(1_000_003).wrapping_add(id as u64);
        tasks.push(tokio::spawn(async move {
            client.setup().await?;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut next = tokio::time::Instant::now();
            while Instant::now() < deadline && !*stop.borrow() {
                if let Some(i) = interval {
                    tokio::time::sleep_until(next).await;
                    next += i;
                }
                client.invoke(&mut rng).await;
            }
            client.close().await;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("a client task panicked")??;
    }
    rec.flush();
    phase(Phase::Quiesce);
    tokio::time::sleep(work.quiesce).await;
    rec.log(
        Event::new(
            0,
            Process::Actor("control".into()),
            EventType::Info,
            "final-phase",
        )
        .value(json!({"quiesce_ms": work.quiesce.as_millis() as u64})),
    );
    let mut client = workload.open(
        Who::Final,
        Recording::new(rec.clone(), work.op_timeout.max(FINAL_TIMEOUT)),
    );
    client.final_phase().await?;
    client.close().await;
    phase(Phase::Final);
    rec.flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use coherence_store::HistoryWriter;
    use std::sync::Mutex;

    /// A client whose operations do what the test says.
    struct Fake {
        rec: Recording,
        resets: Arc<Mutex<u32>>,
    }

    impl Fake {
        async fn run(&mut self, f: &str, outcome: Result<Value, OpError>, delay: Duration) {
            let value = (f == "write").then(|| json!({"write": "w1"}));
            let op = Op {
                f,
                key: "k0",
                node: "db1",
                value,
                region: Some("r1"),
            };
            super::op(self, op, async move |c: &mut Fake| {
                tokio::time::sleep(delay).await;
                if f == "db-read" {
                    c.recording().served = Some("db2".into());
                }
                outcome
            })
            .await;
        }
    }

    impl Client for Fake {
        fn recording(&mut self) -> &mut Recording {
            &mut self.rec
        }
        fn reset(&mut self) {
            *self.resets.lock().unwrap() += 1;
        }
        fn invoke<'a>(&'a mut self, _rng: &'a mut ChaCha8Rng) -> BoxFuture<'a, ()> {
            Box::pin(self.run("read", Ok(Value::Null), Duration::ZERO))
        }
        fn final_phase(&mut self) -> BoxFuture<'_, Result<()>> {
            Box::pin(async {
                self.run("final-read", Ok(Value::Null), Duration::ZERO)
                    .await;
                Ok(())
            })
        }
    }

    struct FakeWorkload {
        resets: Arc<Mutex<u32>>,
        opened: Mutex<Vec<Who>>,
    }

    impl Workload for FakeWorkload {
        fn open(&self, who: Who, rec: Recording) -> Box<dyn Client> {
            self.opened.lock().unwrap().push(who);
            Box::new(Fake {
                rec,
                resets: self.resets.clone(),
            })
        }
    }

    fn recorder(dir: &tempfile::TempDir) -> Arc<Recorder> {
        let writer = HistoryWriter::create(&dir.path().join("history.jsonl")).unwrap();
        Arc::new(Recorder::new(writer))
    }

    fn events(dir: &tempfile::TempDir, rec: Arc<Recorder>) -> Vec<Value> {
        Arc::into_inner(rec).unwrap().finish().unwrap();
        std::fs::read_to_string(dir.path().join("history.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// What the history says of each event: type, process, f, node, value, error.
    fn brief(e: &Value) -> (String, Value, String, String, Value, Value) {
        (
            e["type"].as_str().unwrap().to_string(),
            e["process"].clone(),
            e["f"].as_str().unwrap().to_string(),
            e["node"].as_str().unwrap_or_default().to_string(),
            e["value"].clone(),
            e["error"].clone(),
        )
    }

    #[tokio::test]
    async fn an_operation_is_an_invoke_then_ok_fail_or_info_and_info_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let rec = recorder(&dir);
        let resets = Arc::new(Mutex::new(0));
        let mut client = Fake {
            rec: Recording::new(rec.clone(), Duration::from_millis(50)),
            resets: resets.clone(),
        };
        let v = json!({"version": 1, "write": "w1"});
        client.run("write", Ok(v.clone()), Duration::ZERO).await;
        client
            .run("write", Err(OpError::certain("refused")), Duration::ZERO)
            .await;
        client.run("db-read", Ok(v.clone()), Duration::ZERO).await;
        assert_eq!(*resets.lock().unwrap(), 0, "no info yet");
        client
            .run(
                "write",
                Err(OpError::unknown("connection lost")),
                Duration::ZERO,
            )
            .await;
        assert_eq!(*resets.lock().unwrap(), 1, "an info resets the client");
        client
            .run("read", Ok(Value::Null), Duration::from_secs(5))
            .await;
        assert_eq!(*resets.lock().unwrap(), 2);
        drop(client);
        let events = events(&dir, rec);
        let s = |x: &str| x.to_string();
        let w = json!({"write": "w1"});
        let expected = vec![
            (
                s("invoke"),
                json!(0),
                s("write"),
                s("db1"),
                w.clone(),
                Value::Null,
            ),
            (
                s("ok"),
                json!(0),
                s("write"),
                s("db1"),
                v.clone(),
                Value::Null,
            ),
            (
                s("invoke"),
                json!(0),
                s("write"),
                s("db1"),
                w.clone(),
                Value::Null,
            ),
            (
                s("fail"),
                json!(0),
                s("write"),
                s("db1"),
                w.clone(),
                json!("refused"),
            ),
            (
                s("invoke"),
                json!(0),
                s("db-read"),
                s("db1"),
                Value::Null,
                Value::Null,
            ),
            // The server that served it, not the one named at the invocation.
            (
                s("ok"),
                json!(0),
                s("db-read"),
                s("db2"),
                v.clone(),
                Value::Null,
            ),
            (
                s("invoke"),
                json!(0),
                s("write"),
                s("db1"),
                w.clone(),
                Value::Null,
            ),
            (
                s("info"),
                json!(0),
                s("write"),
                s("db1"),
                w.clone(),
                json!("connection lost"),
            ),
            // A fresh process after an info; past the timeout, the outcome is unknown.
            (
                s("invoke"),
                json!(1),
                s("read"),
                s("db1"),
                Value::Null,
                Value::Null,
            ),
            (
                s("info"),
                json!(1),
                s("read"),
                s("db1"),
                Value::Null,
                json!("timed out after 50ms"),
            ),
        ];
        assert_eq!(events.iter().map(brief).collect::<Vec<_>>(), expected);
        assert!(events
            .iter()
            .all(|e| e["key"] == "k0" && e["region"] == "r1"));
    }

    #[tokio::test]
    async fn a_run_opens_its_clients_in_order_then_runs_the_final_phase() {
        let dir = tempfile::tempdir().unwrap();
        let rec = recorder(&dir);
        let work: campaign::Workload = toml::from_str(
            "invalidation = \"writer\"\nfill = \"plain\"\nkeys = 1\nconcurrency = 2\n\
             rate = 100\ntime_limit = \"50ms\"\nquiesce = \"0\"\n",
        )
        .unwrap();
        assert_eq!(work.kind, crate::registry::Kind::CacheAside);
        let workload = FakeWorkload {
            resets: Arc::new(Mutex::new(0)),
            opened: Mutex::new(Vec::new()),
        };
        let phases = Mutex::new(Vec::new());
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        run(
            &workload,
            &work,
            rec.clone(),
            |p| phases.lock().unwrap().push(p),
            stop_rx,
        )
        .await
        .unwrap();
        assert_eq!(
            *workload.opened.lock().unwrap(),
            [Who::Worker(0), Who::Worker(1), Who::Final]
        );
        assert_eq!(
            *phases.lock().unwrap(),
            [Phase::Workload, Phase::Quiesce, Phase::Final]
        );
        let events = events(&dir, rec);
        let final_phase = events
            .iter()
            .position(|e| e["f"] == "final-phase")
            .expect("a final-phase event");
        assert_eq!(events[final_phase]["value"], json!({"quiesce_ms": 0}));
        assert!(events[..final_phase]
            .iter()
            .all(|e| e["f"] == "read" && (e["process"] == 0 || e["process"] == 1)));
        assert!(events[..final_phase].len() >= 4, "both clients ran");
        let after: Vec<_> = events[final_phase + 1..].iter().map(brief).collect();
        assert_eq!(after.len(), 2);
        assert!(after
            .iter()
            .all(|(_, p, f, ..)| *p == json!(2) && f == "final-read"));
    }
}
