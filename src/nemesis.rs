//! Running a campaign's faults: a thread of its own (faults run commands that block)
//! that follows the seeded schedule, journals each fault before applying it, logs it in
//! the history as nemesis events, and heals it — after its duration, when the workload
//! ends (before the quiesce), on Ctrl-C or SIGTERM, and through [`HealGuard`] on a panic.

use coherence_lab::cluster::{LabNodes, State};
use coherence_nemeses::fault::Nodes;
use coherence_nemeses::fault::{pending, postgres_roles, sentinel_primary, Fault, Journal};
use coherence_nemeses::partition::Shape;
use coherence_nemeses::schedule::{plan, FaultKind, NemesisConfig, Planned, Targets};
use coherence_nemeses::staging::{NodeConfig, StagingNodes};
use coherence_store::recorder::Recorder;
use coherence_store::{Event, EventType, Process};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The cluster faults are aimed at: the lab, or staging nodes reached over SSH.
#[derive(Debug, Clone)]
pub enum Target {
    /// The lab.
    Lab(State),
    /// Staging: the campaign's nodes, and its regions' names.
    Staging {
        /// `[[cluster.nodes]]`.
        nodes: Vec<NodeConfig>,
        /// The regions, in the campaign's order.
        regions: Vec<String>,
    },
}

/// What faults need to know of a cluster: how to reach its nodes, and who is who.
pub struct Cluster {
    /// The nodes.
    pub nodes: Box<dyn Nodes>,
    /// Every node, by name.
    names: Vec<String>,
    /// Each region and all its nodes.
    regions: Vec<(String, Vec<String>)>,
    /// Each region's Redis nodes.
    redis: HashMap<String, Vec<String>>,
    /// A Sentinel node of each region, to ask and to kill.
    sentinel: HashMap<String, String>,
    /// The PostgreSQL servers.
    databases: Vec<String>,
    /// Where the invalidator runs.
    invalidator: Option<String>,
}

impl Target {
    /// The cluster, ready for faults.
    pub fn cluster(&self) -> Cluster {
        match self {
            Target::Lab(state) => {
                let lab = LabNodes::new(state);
                let regions: Vec<(String, Vec<String>)> = (1..=state.regions)
                    .map(|n| {
                        let r = coherence_lab::layout::region(n);
                        let members = lab.region(&r);
                        (r, members)
                    })
                    .collect();
                Cluster {
                    names: lab.names(),
                    redis: regions
                        .iter()
                        .map(|(r, m)| {
                            let redis = m.iter().filter(|n| !n.ends_with('s')).cloned();
                            (r.clone(), redis.collect())
                        })
                        .collect(),
                    sentinel: regions
                        .iter()
                        .map(|(r, _)| (r.clone(), format!("{r}s")))
                        .collect(),
                    databases: lab.databases(),
                    invalidator: Some("inv".into()),
                    regions,
                    nodes: Box::new(lab),
                }
            }
            Target::Staging { nodes, regions } => {
                let staging = StagingNodes::new(nodes);
                let in_region = |service: &str, region: &str| -> Vec<String> {
                    let members = staging.region(region);
                    staging
                        .running(service)
                        .into_iter()
                        .filter(|n| members.contains(n))
                        .collect()
                };
                Cluster {
                    names: staging.names(),
                    regions: regions
                        .iter()
                        .map(|r| (r.clone(), staging.region(r)))
                        .collect(),
                    redis: regions
                        .iter()
                        .map(|r| (r.clone(), in_region("redis", r)))
                        .collect(),
                    sentinel: regions
                        .iter()
                        .filter_map(|r| {
                            in_region("sentinel", r)
                                .into_iter()
                                .next()
                                .map(|s| (r.clone(), s))
                        })
                        .collect(),
                    databases: staging.running("postgres"),
                    invalidator: staging.running("invalidator").into_iter().next(),
                    nodes: Box::new(staging),
                }
            }
        }
    }

    /// The target a run directory's faults were applied to, as its campaign says:
    /// staging when the campaign's cluster is staging, the lab otherwise. A campaign
    /// that is missing or cannot be read is an error, not a guess (healing the lab when
    /// the faults were on staging would leave them in place).
    pub fn of_run(run_dir: &Path) -> anyhow::Result<Target> {
        use coherence_campaign::{Campaign, Cluster};
        // A regular file in the run directory, not a link to somebody else's nodes.
        let file = coherence_store::run::RunDir::new(run_dir).campaign();
        let unknown = |why: String| {
            anyhow::anyhow!(
                "cannot tell where the faults of {} were applied: {why}; restore the run's \
                 campaign.toml (as the run stored it), or heal the faults its faults.jsonl \
                 lists by hand",
                run_dir.display()
            )
        };
        let bytes = coherence_store::files::read_regular(&file)
            .map_err(|e| unknown(format!("cannot read {}: {e}", file.display())))?
            .ok_or_else(|| unknown(format!("{} is missing", file.display())))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| unknown(format!("{} is not UTF-8", file.display())))?;
        let campaign =
            Campaign::parse(&text).map_err(|e| unknown(format!("{}: {e}", file.display())))?;
        match campaign.cluster {
            Cluster::Staging { nodes, regions, .. } => {
                if nodes.is_empty() {
                    return Err(unknown(format!(
                        "{} is a staging campaign without [[cluster.nodes]], which can have had no faults",
                        file.display()
                    )));
                }
                Ok(Target::Staging {
                    nodes,
                    regions: regions.into_iter().map(|r| r.name).collect(),
                })
            }
            Cluster::Lab { .. } => {
                let state = State::load()?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "the faults were applied to the lab, which is down: nothing of them remains"
                    )
                })?;
                Ok(Target::Lab(state))
            }
        }
    }
}

/// Heals whatever the journal says is still applied, when dropped: the way out of a
/// panic. On the normal path the nemesis has healed everything and this finds nothing.
pub struct HealGuard {
    pub journal: PathBuf,
    pub target: Target,
}

impl Drop for HealGuard {
    fn drop(&mut self) {
        heal_pending(&self.journal, &self.target);
    }
}

/// Heals every fault the journal holds as applied; says what it did on stderr.
pub fn heal_pending(journal: &Path, target: &Target) {
    let Ok(left) = pending(journal) else { return };
    if left.is_empty() {
        return;
    }
    let cluster = target.cluster();
    let Ok(mut j) = Journal::open(journal) else {
        return;
    };
    for (seq, fault) in left {
        match fault.heal(cluster.nodes.as_ref()) {
            Ok(()) => {
                let _ = j.healed(seq);
                eprintln!("healed fault {seq} ({})", fault.start_f());
            }
            Err(e) => eprintln!(
                "could not heal fault {seq}: {e}\nrun `coherence heal {}` to finish",
                journal.parent().unwrap_or(journal).display()
            ),
        }
    }
}

fn log(rec: &Recorder, f: &str, value: serde_json::Value) {
    rec.log(Event::new(0, Process::Actor("nemesis".into()), EventType::Info, f).value(value));
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
        let e = |e: coherence_nemeses::remote::RemoteError| e.to_string();
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
            FaultKind::Latency => Ok(Fault::Latency {
                nodes: self.members_of(&region),
                delay_ms: 100,
            }),
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
            FaultKind::ClockBump | FaultKind::ClockStrobe => Ok(Fault::ClockSkew {
                node: p.target.clone().unwrap_or_default(),
                skew: p.skew.ok_or("the schedule planned no skew")?,
            }),
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
    pub target: Target,
    /// The heal journal.
    pub journal: PathBuf,
    /// Tags the rules of this run's faults.
    pub tag: String,
    /// Where nemesis events go.
    pub rec: Arc<Recorder>,
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
        target,
        journal: journal_path,
        tag,
        rec,
        stop,
    } = n;
    let cluster = target.cluster();
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
        &rec,
        "nemesis-plan",
        json!({"faults": kinds, "scheduled": schedule.len(),
               "interval_ms": config.interval.as_millis() as u64,
               "duration_ms": config.duration.as_millis() as u64}),
    );
    let mut journal = match Journal::open(&journal_path) {
        Ok(j) => j,
        Err(e) => {
            log(
                &rec,
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
                    &rec,
                    "nemesis-error",
                    json!({"planned": kind, "target": planned.target, "error": e}),
                );
                continue;
            }
        };
        let Ok(seq) = journal.applying(&fault) else {
            log(
                &rec,
                "nemesis-error",
                json!({"planned": kind, "error": "cannot write the heal journal; no fault applied"}),
            );
            break;
        };
        log(&rec, fault.start_f(), json!({"seq": seq, "fault": fault}));
        match fault.apply(nodes) {
            Err(e) => log(
                &rec,
                "nemesis-error",
                json!({"seq": seq, "error": e.to_string()}),
            ),
            // A failover says whom it promoted, for the checker's causes.
            Ok(()) => {
                if let Some(mut outcome) = fault.outcome(nodes) {
                    outcome["seq"] = json!(seq);
                    log(&rec, "failover", outcome);
                }
            }
        }
        sleep_until(Instant::now() + config.duration, &stop);
        heal_logged(&fault, seq, nodes, &mut journal, &rec);
    }
}

/// Heals one fault, verifies it, marks it healed in the journal when nothing of it
/// remains, and logs the `stop-*` event that says how it went.
fn heal_logged(fault: &Fault, seq: u64, nodes: &dyn Nodes, journal: &mut Journal, rec: &Recorder) {
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
pub fn heal_left(journal_path: &Path, target: &Target, rec: &Recorder) {
    let Ok(left) = pending(journal_path) else {
        return;
    };
    if left.is_empty() {
        return;
    }
    let cluster = target.cluster();
    let Ok(mut journal) = Journal::open(journal_path) else {
        return;
    };
    for (seq, fault) in left {
        heal_logged(&fault, seq, cluster.nodes.as_ref(), &mut journal, rec);
    }
}

/// Logs in the history that the nemesis failed outside any one fault (it panicked).
pub fn log_failure(rec: &Recorder, error: &str) {
    log(rec, "nemesis-error", json!({"error": error}));
}
