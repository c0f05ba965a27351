//! Tests of the simulator: determinism, format, shape, and an independent check that
//! correct-mode histories have no anomaly while buggy ones do.

use coherence_sim::{generate, Mode, SimConfig, SimSummary};
use coherence_store::{
    read_history, EventRef, EventType, HistoryWriter, NoProgress, OpKind, ProcessRef, ValueRef,
};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

fn config(mode: Mode, seed: u64, ops: u64, keys: u32) -> SimConfig {
    SimConfig {
        seed,
        ops,
        keys,
        mode,
        ..SimConfig::default()
    }
}

fn simulate(dir: &Path, name: &str, config: &SimConfig) -> (PathBuf, SimSummary) {
    let path = dir.join(name);
    let mut out = HistoryWriter::create(&path).unwrap();
    let summary = generate(config, &mut out).unwrap();
    out.finish().unwrap();
    (path, summary)
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [Mode::Correct, Mode::Buggy] {
        let c = config(mode, 7, 3000, 100);
        let (a, sa) = simulate(dir.path(), "a.jsonl", &c);
        let (b, sb) = simulate(dir.path(), "b.jsonl", &c);
        let (other, _) = simulate(
            dir.path(),
            "c.jsonl",
            &SimConfig {
                seed: 8,
                ..c.clone()
            },
        );
        let (a, b, other) = (
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap(),
            std::fs::read(other).unwrap(),
        );
        assert_eq!(sa, sb);
        assert!(a == b, "{mode}: the same seed gave different files");
        assert!(a != other, "{mode}: different seeds gave the same file");
    }
}

/// Reads the history with the store's reader, which validates every line.
fn read_all(path: &Path) -> Vec<Ev> {
    let mut events = Vec::new();
    let mut visit = |ev: &EventRef<'_>| -> Result<(), String> {
        events.push(Ev::from(ev));
        Ok(())
    };
    let summary = read_history(path, &mut visit, &NoProgress)
        .unwrap_or_else(|e| panic!("the store rejected {}: {e}", path.display()));
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    assert_eq!(summary.unfinished, 0, "every invoke is completed");
    events
}

/// An owned copy of what the checks below need of an event.
#[derive(Debug, Clone)]
struct Ev {
    client: Option<i64>,
    actor: Option<String>,
    kind: EventType,
    op: OpKind,
    f: String,
    key: Option<String>,
    node: Option<String>,
    value: Option<(i64, String)>,
    write_request: Option<String>,
    log: Option<Vec<(i64, String)>>,
    region: Option<String>,
}

impl From<&EventRef<'_>> for Ev {
    fn from(ev: &EventRef<'_>) -> Ev {
        let (client, actor) = match &ev.process {
            ProcessRef::Client(n) => (Some(*n), None),
            ProcessRef::Actor(a) => (None, Some(a.to_string())),
        };
        Ev {
            client,
            actor,
            kind: ev.kind,
            op: ev.op,
            f: ev.f.to_string(),
            key: ev.key.as_deref().map(str::to_string),
            node: ev.node.as_deref().map(str::to_string),
            value: ev
                .value
                .versioned()
                .map(|v| (v.version, v.write.to_string())),
            write_request: match &ev.value {
                ValueRef::WriteRequest(w) => Some(w.to_string()),
                _ => None,
            },
            log: match &ev.value {
                ValueRef::Final { log, .. } => log.clone(),
                _ => None,
            },
            region: ev.region.as_deref().map(str::to_string),
        }
    }
}

#[test]
fn every_history_is_accepted_by_the_store_reader() {
    let dir = tempfile::tempdir().unwrap();
    let shapes = [
        (2000, 50, 8, 2),
        (1500, 5, 4, 1),
        (1000, 300, 1, 3),
        (0, 10, 4, 2),
        (1, 1, 1, 1),
    ];
    for mode in [Mode::Correct, Mode::Buggy] {
        for seed in [1, 2, 3] {
            for (ops, keys, concurrency, regions) in shapes {
                let c = SimConfig {
                    concurrency,
                    regions,
                    ..config(mode, seed, ops, keys)
                };
                let (path, summary) = simulate(dir.path(), "h.jsonl", &c);
                let events = read_all(&path);
                assert_eq!(events.len() as u64, summary.events, "{c:?}");
                assert_eq!(summary.ops, ops);
                assert_eq!(summary.reads + summary.writes, ops);
                // Client requests counted from the file agree with the summary.
                let requests = events
                    .iter()
                    .filter(|e| {
                        e.kind == EventType::Invoke && matches!(e.op, OpKind::Read | OpKind::Write)
                    })
                    .count() as u64;
                assert_eq!(requests, ops, "{c:?}");
                check_shape(&events, &c);
            }
        }
    }
}

/// Structural promises beyond what the reader checks.
fn check_shape(events: &[Ev], c: &SimConfig) {
    let mut retired = HashSet::new();
    let mut write_ids = HashSet::new();
    let mut final_phase = false;
    for e in events {
        if let Some(p) = e.client {
            assert!(
                !retired.contains(&p),
                "process {p} issued an operation after an info"
            );
            if e.kind == EventType::Info {
                retired.insert(p);
            }
            if e.op != OpKind::DbFinalRead {
                assert!(e.region.is_some(), "client events name their region: {e:?}");
            }
            if e.kind == EventType::Invoke {
                assert!(final_phase == matches!(e.op, OpKind::FinalRead | OpKind::DbFinalRead));
            }
            if e.op == OpKind::Write && e.kind == EventType::Invoke {
                let id = e.write_request.clone().expect("a write names its id");
                assert!(id != "init" && write_ids.insert(id), "write ids are unique");
            }
        }
        if e.op == OpKind::FinalPhase {
            final_phase = true;
        }
        let node = e.node.as_deref().unwrap_or("");
        match e.op {
            OpKind::Read | OpKind::Fill | OpKind::Invalidate | OpKind::FinalRead => {
                assert!(node.starts_with('r'), "a cache node: {e:?}");
            }
            OpKind::DbRead | OpKind::Write | OpKind::DbFinalRead => {
                assert!(node.starts_with("db"), "a database node: {e:?}");
                if c.mode == Mode::Correct {
                    assert_eq!(node, "db");
                }
            }
            _ => {}
        }
    }
    assert!(final_phase, "every history has a final phase");
}

#[test]
fn events_per_op_and_bytes_per_line_are_in_band() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [Mode::Correct, Mode::Buggy] {
        let c = config(mode, 3, 20_000, 200);
        let (path, summary) = simulate(dir.path(), "h.jsonl", &c);
        let per_op = summary.events as f64 / summary.ops as f64;
        assert!(
            (3.0..4.5).contains(&per_op),
            "{mode}: {per_op} events per op"
        );
        let bytes = std::fs::metadata(&path).unwrap().len() as f64 / summary.events as f64;
        assert!(
            (100.0..170.0).contains(&bytes),
            "{mode}: {bytes} bytes per line"
        );
    }
}

#[test]
fn nemesis_events_only_in_buggy_mode() {
    let dir = tempfile::tempdir().unwrap();
    for seed in [1, 2] {
        let (path, summary) = simulate(dir.path(), "b.jsonl", &config(Mode::Buggy, seed, 2000, 50));
        let events = read_all(&path);
        let nemesis = |f: &str| {
            events
                .iter()
                .filter(|e| e.actor.as_deref() == Some("nemesis") && e.f == f)
                .count() as u64
        };
        assert!(nemesis("start-partition") >= 1);
        assert_eq!(nemesis("start-partition"), nemesis("stop-partition"));
        assert_eq!(nemesis("start-partition"), summary.partitions);
        assert!(nemesis("failover") >= 1);
        assert_eq!(nemesis("failover"), summary.failovers);
        let fp = events
            .iter()
            .position(|e| e.op == OpKind::FinalPhase)
            .unwrap();
        let last_stop = events
            .iter()
            .rposition(|e| e.f == "stop-partition")
            .unwrap();
        assert!(last_stop < fp, "faults are healed before the final phase");

        let (path, summary) = simulate(
            dir.path(),
            "c.jsonl",
            &config(Mode::Correct, seed, 2000, 50),
        );
        let events = read_all(&path);
        assert!(!events.iter().any(|e| e.actor.as_deref() == Some("nemesis")));
        assert_eq!((summary.partitions, summary.failovers), (0, 0));
    }
}

/// Anomalies found by an independent, simple checker of the spec's definitions
/// (staleness bound 0).
#[derive(Debug, Default)]
struct Anomalies {
    stale_reads: u64,
    phantom_reads: u64,
    version_forks: u64,
    lost_writes: u64,
    monotonic_reads: u64,
    read_your_writes: u64,
    non_convergence: u64,
    misses: u64,
    reads: u64,
}

impl Anomalies {
    fn total(&self) -> u64 {
        self.stale_reads
            + self.phantom_reads
            + self.version_forks
            + self.lost_writes
            + self.monotonic_reads
            + self.read_your_writes
            + self.non_convergence
    }
}

/// A version and the write that produced it.
type Versioned = (i64, String);

fn check(events: &[Ev]) -> Anomalies {
    let mut a = Anomalies::default();
    // Per key: the highest version of an ok write completed so far.
    let mut acked: HashMap<String, i64> = HashMap::new();
    // Per process: the acknowledged version floor at its current invoke.
    let mut floor_at_invoke: HashMap<i64, i64> = HashMap::new();
    // Write id -> (version, ok?) and failed ids.
    let mut writes: HashMap<String, (String, i64)> = HashMap::new();
    let mut failed: HashSet<String> = HashSet::new();
    let mut info: HashSet<String> = HashSet::new();
    let mut tied: HashMap<(String, i64), HashSet<String>> = HashMap::new();
    let mut seen: HashMap<(i64, String), i64> = HashMap::new();
    let mut wrote: HashMap<(i64, String), i64> = HashMap::new();
    let mut finals: Vec<(String, Option<(i64, String)>)> = Vec::new();
    let mut db_finals: HashMap<String, (Versioned, Vec<Versioned>)> = HashMap::new();
    let mut read_values: Vec<(String, (i64, String))> = Vec::new();
    for e in events {
        let Some(p) = e.client else { continue };
        let key = e.key.clone().unwrap_or_default();
        if e.kind == EventType::Invoke {
            floor_at_invoke.insert(p, acked.get(&key).copied().unwrap_or(-1));
            continue;
        }
        match (e.op, e.kind) {
            (OpKind::Write, EventType::Ok) => {
                let (v, w) = e.value.clone().unwrap();
                let top = acked.entry(key.clone()).or_insert(-1);
                *top = (*top).max(v);
                writes.insert(w.clone(), (key.clone(), v));
                tied.entry((key.clone(), v)).or_default().insert(w);
                let mine = wrote.entry((p, key)).or_insert(-1);
                *mine = (*mine).max(v);
            }
            (OpKind::Write, EventType::Fail) => {
                failed.insert(e.write_request.clone().unwrap());
            }
            (OpKind::Write, EventType::Info) => {
                info.insert(e.write_request.clone().unwrap());
            }
            (OpKind::Read | OpKind::DbRead, EventType::Ok) => {
                a.reads += 1;
                let Some((v, w)) = e.value.clone() else {
                    a.misses += 1;
                    continue;
                };
                if v < floor_at_invoke[&p] {
                    a.stale_reads += 1;
                }
                let last = seen.entry((p, key.clone())).or_insert(-1);
                if v < *last {
                    a.monotonic_reads += 1;
                }
                *last = (*last).max(v);
                if v < wrote.get(&(p, key.clone())).copied().unwrap_or(-1) {
                    a.read_your_writes += 1;
                }
                read_values.push((key, (v, w)));
            }
            (OpKind::FinalRead, EventType::Ok) => {
                if let Some(v) = &e.value {
                    read_values.push((key.clone(), v.clone()));
                }
                finals.push((key, e.value.clone()));
            }
            (OpKind::DbFinalRead, EventType::Ok) => {
                let value = e.value.clone().unwrap();
                let log = e.log.clone().expect("db-final-read has a log");
                assert_eq!(
                    log.last(),
                    Some(&value),
                    "the log ends with the final value"
                );
                for (i, (v, _)) in log.iter().enumerate() {
                    assert_eq!(*v, i as i64, "the log holds versions 0.. in order");
                }
                read_values.push((key.clone(), value.clone()));
                db_finals.insert(key, (value, log));
            }
            _ => {}
        }
    }
    for (key, (v, w)) in &read_values {
        let produced = w == "init" && *v == 0
            || writes.get(w).is_some_and(|(k, ver)| k == key && ver == v)
            || info.contains(w);
        if !produced || failed.contains(w) {
            a.phantom_reads += 1;
        }
        if info.contains(w) {
            tied.entry((key.clone(), *v)).or_default().insert(w.clone());
        }
    }
    a.version_forks = tied.values().filter(|ids| ids.len() > 1).count() as u64;
    for (w, (key, v)) in &writes {
        let (_, log) = db_finals
            .get(key)
            .expect("every written key has a db-final-read");
        if !log.iter().any(|(lv, lw)| lv == v && lw == w) {
            a.lost_writes += 1;
        }
    }
    for (key, value) in &finals {
        let db = &db_finals
            .get(key)
            .expect("final-read keys have a db-final-read")
            .0;
        if value.as_ref().is_some_and(|v| v != db) {
            a.non_convergence += 1;
        }
    }
    a
}

#[test]
fn correct_mode_histories_have_no_anomaly() {
    let dir = tempfile::tempdir().unwrap();
    // Hot keys and many clients make the races as likely as they get.
    let shapes = [
        (10_000, 1000, 16, 2),
        (5000, 3, 16, 2),
        (5000, 20, 32, 3),
        (3000, 50, 4, 1),
    ];
    for seed in [1, 2] {
        for (ops, keys, concurrency, regions) in shapes {
            let c = SimConfig {
                concurrency,
                regions,
                ..config(Mode::Correct, seed, ops, keys)
            };
            let (path, summary) = simulate(dir.path(), "c.jsonl", &c);
            let a = check(&read_all(&path));
            assert_eq!(a.total(), 0, "{c:?}: {a:?}");
            assert!(a.misses > 0 && a.misses < a.reads, "{c:?}: {a:?}");
            if keys <= 20 {
                assert!(
                    summary.rejected_fills > 0,
                    "the fill race was tried: {summary:?}"
                );
            }
        }
    }
    // One key, many clients, half writes: every operation races every other.
    let c = SimConfig {
        concurrency: 64,
        regions: 3,
        read_fraction: 0.5,
        ..config(Mode::Correct, 9, 5000, 1)
    };
    let (path, summary) = simulate(dir.path(), "c.jsonl", &c);
    let a = check(&read_all(&path));
    assert_eq!(a.total(), 0, "{c:?}: {a:?}");
    assert!(summary.rejected_fills > 0, "{summary:?}");
}

#[test]
fn buggy_mode_histories_have_anomalies_at_low_rates() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(Mode::Buggy, 1, 20_000, 200);
    let (path, summary) = simulate(dir.path(), "b.jsonl", &c);
    let a = check(&read_all(&path));
    assert!(summary.fill_races > 0, "{summary:?}");
    assert!(summary.lost_invalidations > 0, "{summary:?}");
    assert!(
        summary.replica_reads > 0 && summary.db_replica_reads > 0,
        "{summary:?}"
    );
    assert!(summary.timeouts > 0 && summary.failures > 0, "{summary:?}");
    assert!(summary.lost_writes > 0, "{summary:?}");
    assert!(a.stale_reads > 0, "{a:?}");
    assert!(a.lost_writes > 0 && a.version_forks > 0, "{a:?}");
    assert!(a.read_your_writes > 0 && a.monotonic_reads > 0, "{a:?}");
    assert!(a.non_convergence > 0, "{a:?}");
    assert_eq!(a.phantom_reads, 0, "{a:?}");
    // Low rates: most reads are fine.
    assert!(a.stale_reads * 20 < a.reads, "{a:?}");
}

#[test]
fn impossible_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.jsonl");
    for c in [
        SimConfig {
            concurrency: 0,
            ..SimConfig::default()
        },
        SimConfig {
            regions: 0,
            ..SimConfig::default()
        },
        SimConfig {
            keys: 0,
            ..SimConfig::default()
        },
        SimConfig {
            read_fraction: 1.5,
            ..SimConfig::default()
        },
    ] {
        let mut out = HistoryWriter::create(&path).unwrap();
        let err = generate(&c, &mut out).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
}

#[test]
fn default_config_is_as_documented() {
    let c = SimConfig::default();
    assert_eq!(
        (c.seed, c.ops, c.keys, c.concurrency, c.regions, c.mode),
        (1, 10_000, 1000, 16, 2, Mode::Buggy)
    );
    assert_eq!(c.read_fraction, 0.8);
    assert_eq!("correct".parse::<Mode>().unwrap(), Mode::Correct);
    assert_eq!(
        Mode::Buggy.to_string().parse::<Mode>().unwrap(),
        Mode::Buggy
    );
}
