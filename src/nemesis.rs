//! Running a campaign's faults: a thread of its own (faults run commands that block)
//! that follows the seeded schedule, journals each fault before applying it, logs it in
//! the history as nemesis events, and heals it — after its duration, when the workload
//! ends (before the quiesce), on Ctrl-C or SIGTERM, and through [`HealGuard`] on a panic.

use coherence_lab::cluster::{LabNodes, State};
use coherence_nemeses::fault::{pending, Fault, Journal};
use coherence_nemeses::partition::Shape;
use coherence_nemeses::schedule::{plan, FaultKind, NemesisConfig, Targets};
use coherence_store::{Event, EventType, Process};
use coherence_workloads::recorder::Recorder;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Heals whatever the journal says is still applied, when dropped: the way out of a
/// panic. On the normal path the nemesis has healed everything and this finds nothing.
pub struct HealGuard {
    pub journal: PathBuf,
    pub state: State,
}

impl Drop for HealGuard {
    fn drop(&mut self) {
        heal_pending(&self.journal, &self.state);
    }
}

/// Heals every fault the journal holds as applied; says what it did on stderr.
pub fn heal_pending(journal: &Path, state: &State) {
    let Ok(left) = pending(journal) else { return };
    if left.is_empty() {
        return;
    }
    let nodes = LabNodes::new(state);
    let Ok(mut j) = Journal::open(journal) else {
        return;
    };
    for (seq, fault) in left {
        match fault.heal(&nodes) {
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

/// Builds the fault a plan entry names.
fn build(
    p: &coherence_nemeses::schedule::Planned,
    nodes: &LabNodes,
    all: &[String],
    tag: &str,
) -> Result<Fault, String> {
    let partition = |shape: Shape, order: &[String]| Fault::partition(shape, order, nodes, tag);
    match p.kind {
        FaultKind::PartitionRegion => {
            let region = p.target.clone().unwrap_or_default();
            let members = nodes.region(&region);
            partition(
                Shape::IsolateGroup {
                    name: region,
                    members,
                },
                all,
            )
        }
        FaultKind::PartitionNode => partition(
            Shape::IsolateNode {
                node: p.target.clone().unwrap_or_default(),
            },
            all,
        ),
        FaultKind::PartitionHalves => partition(Shape::Halves, &p.order),
        FaultKind::PartitionRing => partition(Shape::MajoritiesRing, &p.order),
        FaultKind::PartitionBridge => partition(Shape::Bridge, &p.order),
        FaultKind::KillInvalidator => {
            Fault::signal("inv", "invalidator", false, nodes).map_err(|e| e.to_string())
        }
        FaultKind::PauseInvalidator => {
            Fault::signal("inv", "invalidator", true, nodes).map_err(|e| e.to_string())
        }
        FaultKind::PacketLoss => {
            let members = nodes.region(&p.target.clone().unwrap_or_default());
            Ok(Fault::packet_loss(&members, 0.3, tag))
        }
        FaultKind::Latency => Ok(Fault::Latency {
            nodes: nodes.region(&p.target.clone().unwrap_or_default()),
            delay_ms: 100,
        }),
        FaultKind::RedisFailover => {
            let region = p.target.clone().unwrap_or_default();
            let members: Vec<String> = nodes
                .region(&region)
                .into_iter()
                .filter(|n| !n.ends_with('s'))
                .collect();
            Fault::redis_failover(&region, &format!("{region}s"), &members, nodes)
                .map_err(|e| e.to_string())
        }
        FaultKind::PauseRedis => {
            let node = format!("{}a", p.target.clone().unwrap_or_default());
            Fault::signal(&node, "redis", true, nodes).map_err(|e| e.to_string())
        }
        FaultKind::ClockBump | FaultKind::ClockStrobe => Ok(Fault::ClockSkew {
            node: p.target.clone().unwrap_or_default(),
            skew: p.skew.ok_or("the schedule planned no skew")?,
        }),
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
    /// The lab.
    pub state: State,
    /// The heal journal.
    pub journal: PathBuf,
    /// Tags the rules of this run's faults.
    pub tag: String,
    /// Where nemesis events go.
    pub rec: Arc<Recorder>,
    /// Set when the workload ends: heal and return.
    pub stop: Arc<AtomicBool>,
}

/// Runs the schedule until `stop` is set or the time limit leaves no room for another
/// fault; every fault it applied is healed when it returns.
pub fn run(n: Nemesis) {
    let Nemesis {
        config,
        seed,
        time_limit,
        state,
        journal: journal_path,
        tag,
        rec,
        stop,
    } = n;
    let nodes = LabNodes::new(&state);
    let all = nodes.names();
    let targets = Targets {
        nodes: all.clone(),
        regions: (1..=state.regions)
            .map(|n| {
                let r = coherence_lab::layout::region(n);
                let members = nodes.region(&r);
                (r, members)
            })
            .collect(),
    };
    let count = (time_limit.as_nanos() / config.interval.as_nanos().max(1)) as usize;
    let schedule = plan(&config, &targets, seed, count);
    let Ok(mut journal) = Journal::open(&journal_path) else {
        log(
            &rec,
            "nemesis-error",
            json!({"error": format!("cannot open {}", journal_path.display())}),
        );
        return;
    };
    let start = Instant::now();
    for (i, planned) in schedule.iter().enumerate() {
        let at = config.interval * (i as u32 + 1) - config.duration.min(config.interval);
        if at + config.duration > time_limit || !sleep_until(start + at, &stop) {
            break;
        }
        let fault = match build(
            planned,
            &nodes,
            &all,
            &format!("{tag}-{}", journal.next_seq()),
        ) {
            Ok(f) => f,
            Err(e) => {
                log(
                    &rec,
                    "nemesis-error",
                    json!({"planned": format!("{:?}", planned.kind), "error": e}),
                );
                continue;
            }
        };
        let Ok(seq) = journal.applying(&fault) else {
            log(
                &rec,
                "nemesis-error",
                json!({"error": "cannot write the heal journal; no fault applied"}),
            );
            break;
        };
        log(&rec, fault.start_f(), json!({"seq": seq, "fault": fault}));
        match fault.apply(&nodes) {
            Err(e) => log(
                &rec,
                "nemesis-error",
                json!({"seq": seq, "error": e.to_string()}),
            ),
            // A failover says whom it promoted, for the checker's causes.
            Ok(()) => {
                if let Some(outcome) = fault.outcome(&nodes) {
                    log(&rec, "failover", outcome);
                }
            }
        }
        sleep_until(Instant::now() + config.duration, &stop);
        let healed = fault.heal(&nodes).map_err(|e| e.to_string());
        let traces = fault.traces(&nodes).unwrap_or_else(|e| vec![e.to_string()]);
        if healed.is_ok() && traces.is_empty() {
            let _ = journal.healed(seq);
        }
        log(
            &rec,
            fault.stop_f(),
            json!({"seq": seq, "healed": healed.is_ok() && traces.is_empty(), "error": healed.err(), "traces": traces}),
        );
    }
}
