//! Running a campaign's faults: on a thread of its own (faults run commands that
//! block), the runner follows the seeded schedule ([`crate::schedule`]), builds each
//! planned fault for the cluster, journals it before applying it, logs it in the
//! history as nemesis events, and heals it after its duration or as soon as it is told
//! to stop. What the history says: what it planned (`nemesis-plan`), what it applied
//! (the family's opening event, with the journal's `seq`), what failed
//! (`nemesis-error`) and how each fault healed (the family's closing event, with
//! `healed`). Where the events go is the caller's ([`Log`]).

use crate::fault::{
    pending, postgres_roles, sentinel_primary, ClockSkew, Fault, Journal, Latency, Nodes,
};
use crate::partition::Shape;
use crate::schedule::{plan, FaultKind, NemesisConfig, Planned, Targets};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What faults need to know of a cluster: how to reach its nodes, and who is who.
pub struct Cluster {
    /// The nodes.
    pub nodes: Box<dyn Nodes>,
    /// Every node, by name.
    pub names: Vec<String>,
    /// Each region and all its nodes.
    pub regions: Vec<(String, Vec<String>)>,
    /// Each region's Redis nodes.
    pub redis: HashMap<String, Vec<String>>,
    /// A Sentinel node of each region, to ask and to kill.
    pub sentinel: HashMap<String, String>,
    /// The PostgreSQL servers.
    pub databases: Vec<String>,
    /// Where the invalidator runs.
    pub invalidator: Option<String>,
}

/// Where the nemesis's events go: the run's history, as events of actor `nemesis`.
pub trait Log: Send + Sync {
    /// Records a nemesis event `f` with its value, stamped now.
    fn nemesis(&self, f: &str, value: serde_json::Value);
}

/// A run's recorder logs the nemesis's events into its history.
impl Log for coherence_store::recorder::Recorder {
    fn nemesis(&self, f: &str, value: serde_json::Value) {
        use coherence_store::{Event, EventType, Process};
        self.log(Event::new(0, Process::Actor("nemesis".into()), EventType::Info, f).value(value));
    }
}

fn log(rec: &dyn Log, f: &str, value: serde_json::Value) {
    rec.nemesis(f, value);
}

impl Cluster {
    fn region_of(&self, p: &Planned) -> String {
        p.target.clone().unwrap_or_default()
    }

    fn redis_of(&self, region: &str) -> Vec<String> {
        self.redis.get(region).cloned().unwrap_or_default()
    }

    fn sentinel_of(&self, region: &str) -> Result<String, String> {
        self.sentinel
            .get(region)
            .cloned()
            .ok_or_else(|| format!("region {region} has no Sentinel node"))
    }

    fn members_of(&self, region: &str) -> Vec<String> {
        self.regions
            .iter()
            .find(|(r, _)| r == region)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    /// The schedule's targets.
    fn targets(&self) -> Targets {
        Targets {
            nodes: self.names.clone(),
            regions: self.regions.clone(),
        }
    }

    /// Builds the fault a plan entry names.
    fn build(&self, p: &Planned, tag: &str) -> Result<Fault, String> {
        let net = self.nodes.as_ref();
        let all = &self.names;
        let e = |e: crate::remote::RemoteError| e.to_string();
        let partition = |shape: Shape, order: &[String]| Fault::partition(shape, order, net, tag);
        let region = self.region_of(p);
        let invalidator = || {
            self.invalidator
                .clone()
                .ok_or_else(|| "no node runs the invalidator".to_string())
        };
        match p.kind {
            FaultKind::PartitionRegion => partition(
                Shape::IsolateGroup {
                    members: self.members_of(&region),
                    name: region,
                },
                all,
            ),
            FaultKind::PartitionNode => partition(
                Shape::IsolateNode {
                    node: p.target.clone().unwrap_or_default(),
                },
                all,
            ),
            FaultKind::PartitionHalves => partition(Shape::Halves, &p.order),
            FaultKind::PartitionRing => partition(Shape::MajoritiesRing, &p.order),
            FaultKind::PartitionBridge => partition(Shape::Bridge, &p.order),
            FaultKind::KillInvalidator | FaultKind::PauseInvalidator => {
                let pause = p.kind == FaultKind::PauseInvalidator;
                Fault::signal(&invalidator()?, "invalidator", pause, net).map_err(e)
            }
            FaultKind::PacketLoss => Ok(Fault::packet_loss(&self.members_of(&region), 0.3, tag)),
            FaultKind::Latency => Ok(Fault::Latency(Latency {
                nodes: self.members_of(&region),
                delay_ms: 100,
            })),
            FaultKind::RedisFailover => Fault::redis_failover(
                &region,
                &self.sentinel_of(&region)?,
                &self.redis_of(&region),
                net,
            )
            .map_err(e),
            FaultKind::RedisPromoteReplica => Fault::redis_promote(
                &region,
                &self.sentinel_of(&region)?,
                &self.redis_of(&region),
                net,
            )
            .map_err(e),
            FaultKind::PauseRedis | FaultKind::KillRedis => {
                let primary = sentinel_primary(
                    &region,
                    &self.sentinel_of(&region)?,
                    &self.redis_of(&region),
                    net,
                )
                .map_err(e)?;
                let pause = p.kind == FaultKind::PauseRedis;
                Fault::signal(&primary, "redis", pause, net).map_err(e)
            }
            FaultKind::KillSentinel => {
                Fault::signal(&self.sentinel_of(&region)?, "sentinel", false, net).map_err(e)
            }
            FaultKind::KillPostgres | FaultKind::PausePostgres => {
                let (primaries, _) = postgres_roles(&self.databases, net).map_err(e)?;
                let primary = primaries.first().ok_or("no PostgreSQL primary answers")?;
                let pause = p.kind == FaultKind::PausePostgres;
                Fault::signal(primary, "postgres", pause, net).map_err(e)
            }
            FaultKind::PostgresFailover | FaultKind::PostgresFailoverUnfenced => {
                let fence = p.kind == FaultKind::PostgresFailover;
                Fault::postgres_failover(&self.databases, fence, net).map_err(e)
            }
            FaultKind::ClockBump | FaultKind::ClockStrobe => Ok(Fault::ClockSkew(ClockSkew {
                node: p.target.clone().unwrap_or_default(),
                skew: p.skew.ok_or("the schedule planned no skew")?,
            })),
        }
    }
}

/// Sleeps until `until` or until `stop` is set; false when stopped.
fn sleep_until(until: Instant, stop: &AtomicBool) -> bool {
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
    }
    !stop.load(Ordering::Relaxed)
}

/// A campaign's faults, ready to run.
pub struct Nemesis {
    /// The `[nemesis]` section.
    pub config: NemesisConfig,
    /// The run's seed.
    pub seed: u64,
    /// The workload's time limit: no fault starts that would outlast it.
    pub time_limit: Duration,
    /// The cluster.
    pub cluster: Cluster,
    /// The heal journal.
    pub journal: PathBuf,
    /// Tags the rules of this run's faults.
    pub tag: String,
    /// Where nemesis events go.
    pub rec: Arc<dyn Log>,
    /// Set when the workload ends: heal and return.
    pub stop: Arc<AtomicBool>,
}

/// When the `i`th fault of the schedule starts, after the nemesis starts: so that each
/// fault ends by the next one's start.
fn start_of(config: &NemesisConfig, i: usize) -> Duration {
    config.interval * (i as u32 + 1) - config.duration.min(config.interval)
}

/// How many faults of a schedule fit in the time limit.
pub fn scheduled(config: &NemesisConfig, time_limit: Duration) -> usize {
    let count = (time_limit.as_nanos() / config.interval.as_nanos().max(1)) as usize;
    (0..count)
        .take_while(|&i| start_of(config, i) + config.duration <= time_limit)
        .count()
}

/// Runs the schedule until `stop` is set or the time limit leaves no room for another
/// fault; every fault it applied is healed when it returns. The history says what it
/// planned (`nemesis-plan`), what it applied (`start-*`, with the journal's `seq`), what
/// failed (`nemesis-error`) and how each fault healed (`stop-*` with `healed`).
pub fn run(n: Nemesis) {
    let Nemesis {
        config,
        seed,
        time_limit,
        cluster,
        journal: journal_path,
        tag,
        rec,
        stop,
    } = n;
    let rec = rec.as_ref();
    let nodes = cluster.nodes.as_ref();
    let targets = cluster.targets();
    let count = scheduled(&config, time_limit);
    let schedule = plan(&config, &targets, seed, count);
    let kinds: Vec<serde_json::Value> = config
        .faults
        .iter()
        .map(|k| serde_json::to_value(k).unwrap_or_default())
        .collect();
    log(
        rec,
        "nemesis-plan",
        json!({"faults": kinds, "scheduled": schedule.len(),
               "interval_ms": config.interval.as_millis() as u64,
               "duration_ms": config.duration.as_millis() as u64}),
    );
    let mut journal = match Journal::open(&journal_path) {
        Ok(j) => j,
        Err(e) => {
            log(
                rec,
                "nemesis-error",
                json!({"error": format!("cannot open the heal journal {}: {e}; no fault applied", journal_path.display())}),
            );
            return;
        }
    };
    let start = Instant::now();
    for (i, planned) in schedule.iter().enumerate() {
        if !sleep_until(start + start_of(&config, i), &stop) {
            break;
        }
        let kind = serde_json::to_value(planned.kind).unwrap_or_default();
        let fault = match cluster.build(planned, &format!("{tag}-{}", journal.next_seq())) {
            Ok(f) => f,
            Err(e) => {
                log(
                    rec,
                    "nemesis-error",
                    json!({"planned": kind, "target": planned.target, "error": e}),
                );
                continue;
            }
        };
        let Ok(seq) = journal.applying(&fault) else {
            log(
                rec,
                "nemesis-error",
                json!({"planned": kind, "error": "cannot write the heal journal; no fault applied"}),
            );
            break;
        };
        log(rec, fault.start_f(), json!({"seq": seq, "fault": fault}));
        match fault.apply(nodes) {
            Err(e) => log(
                rec,
                "nemesis-error",
                json!({"seq": seq, "error": e.to_string()}),
            ),
            // A failover says whom it promoted, for the checker's causes.
            Ok(()) => {
                if let Some(mut outcome) = fault.outcome(nodes) {
                    outcome["seq"] = json!(seq);
                    log(rec, "failover", outcome);
                }
            }
        }
        sleep_until(Instant::now() + config.duration, &stop);
        heal_logged(&fault, seq, nodes, &mut journal, rec);
    }
}

/// Heals one fault, verifies it, marks it healed in the journal when nothing of it
/// remains, and logs the `stop-*` event that says how it went.
fn heal_logged(fault: &Fault, seq: u64, nodes: &dyn Nodes, journal: &mut Journal, rec: &dyn Log) {
    let healed = fault.heal(nodes).map_err(|e| e.to_string());
    let traces = fault.traces(nodes).unwrap_or_else(|e| vec![e.to_string()]);
    let ok = healed.is_ok() && traces.is_empty();
    if ok {
        let _ = journal.healed(seq);
    }
    log(
        rec,
        fault.stop_f(),
        json!({"seq": seq, "healed": ok, "error": healed.err(), "traces": traces}),
    );
}

/// After the nemesis thread ended without healing (a panic): heals what the journal
/// still holds as applied, logging each heal in the history as the nemesis would have.
pub fn heal_left(journal_path: &Path, cluster: &Cluster, rec: &dyn Log) {
    let Ok(left) = pending(journal_path) else {
        return;
    };
    if left.is_empty() {
        return;
    }
    let Ok(mut journal) = Journal::open(journal_path) else {
        return;
    };
    for (seq, fault) in left {
        heal_logged(&fault, seq, cluster.nodes.as_ref(), &mut journal, rec);
    }
}

/// Logs in the history that the nemesis failed outside any one fault (it panicked).
pub fn log_failure(rec: &dyn Log, error: &str) {
    log(rec, "nemesis-error", json!({"error": error}));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::{Remote, RemoteError};
    use std::sync::Mutex;

    /// Nodes that can do nothing: every fault fails to apply, and to heal.
    struct Helpless;
    impl Nodes for Helpless {
        fn remote(&self, _: &str) -> Option<Box<dyn Remote>> {
            None
        }
        fn addr(&self, _: &str) -> Option<String> {
            None
        }
        fn pids(&self, _: &str, _: &str) -> Result<Vec<i32>, RemoteError> {
            Ok(vec![])
        }
        fn restart(&self, _: &str, _: &str) -> Result<(), RemoteError> {
            Ok(())
        }
        fn sql(&self, _: &str, _: &str) -> Result<String, RemoteError> {
            Ok(String::new())
        }
        fn rebuild_standby(&self, _: &str, _: &str) -> Result<(), RemoteError> {
            Ok(())
        }
    }

    #[derive(Default)]
    struct Events(Mutex<Vec<(String, serde_json::Value)>>);
    impl Log for Events {
        fn nemesis(&self, f: &str, value: serde_json::Value) {
            self.0.lock().unwrap().push((f.to_string(), value));
        }
    }

    #[test]
    fn every_planned_fault_is_journaled_logged_and_its_failure_said() {
        let dir = tempfile::tempdir().unwrap();
        let journal = coherence_store::run::RunDir::new(dir.path()).journal();
        let events = Arc::new(Events::default());
        let config = NemesisConfig {
            faults: vec![FaultKind::ClockBump, FaultKind::KillInvalidator],
            interval: Duration::from_millis(40),
            duration: Duration::from_millis(10),
            clock_offset: Duration::from_secs(1),
            clock_period: Duration::from_secs(1),
        };
        run(Nemesis {
            config,
            seed: 5,
            time_limit: Duration::from_millis(400),
            cluster: Cluster {
                nodes: Box::new(Helpless),
                names: vec!["n1".into(), "n2".into()],
                regions: vec![("r1".into(), vec!["n1".into(), "n2".into()])],
                redis: HashMap::new(),
                sentinel: HashMap::new(),
                databases: vec![],
                invalidator: Some("n2".into()),
            },
            journal: journal.clone(),
            tag: "t".into(),
            rec: events.clone(),
            stop: Arc::new(AtomicBool::new(false)),
        });
        let events = events.0.lock().unwrap();
        let fs: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(fs[0], "nemesis-plan");
        assert_eq!(events[0].1["scheduled"], 10);
        // A clock bump is built and journaled, then fails to apply and to heal: said so.
        let bumps = fs.iter().filter(|f| **f == "bump-clock").count();
        assert!(bumps > 0, "{fs:?}");
        assert_eq!(fs.iter().filter(|f| **f == "reset-clock").count(), bumps);
        for (f, v) in events.iter() {
            match f.as_str() {
                "bump-clock" => assert!(v["seq"].is_u64() && v["fault"]["kind"] == "clock-skew"),
                "reset-clock" => assert_eq!(v["healed"], false, "{v}"),
                _ => {}
            }
        }
        // A kill of an invalidator that does not run is no fault: a nemesis-error that
        // names what was planned, and nothing journaled for it.
        let kills = events
            .iter()
            .filter(|e| e.0 == "nemesis-error" && e.1["planned"] == "kill-invalidator")
            .count();
        assert!(kills > 0, "{fs:?}");
        assert_eq!(
            bumps + kills,
            10,
            "every planned fault accounted for: {fs:?}"
        );
        let pending = crate::fault::pending(&journal).unwrap();
        assert_eq!(pending.len(), bumps, "unhealed faults stay in the journal");
    }
}
