//! Wiring of the nemesis into a run: which cluster the faults are aimed at (the lab or
//! staging, [`Target`]), the history as the runner's log, and healing on every way out —
//! after each fault's duration and when the workload ends (the runner,
//! `coherence_nemeses::runner`), on Ctrl-C or SIGTERM, and through [`HealGuard`] on a
//! panic.

use coherence_lab::cluster::{LabNodes, State};
use coherence_nemeses::fault::{pending, Journal};
use coherence_nemeses::runner::{self, Cluster};
use coherence_nemeses::schedule::NemesisConfig;
use coherence_nemeses::staging::{NodeConfig, StagingNodes};
use coherence_store::recorder::Recorder;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

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
                    // The app hosts go with their region's partition, but are no target
                    // of their own (and the schedules of a seed stay as they were).
                    names: lab.data_hosts(),
                    redis: regions
                        .iter()
                        .map(|(r, _)| (r.clone(), lab.redis(r)))
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

/// Runs the schedule on the target's cluster ([`runner::run`]), logging in the history.
pub fn run(n: Nemesis) {
    runner::run(runner::Nemesis {
        config: n.config,
        seed: n.seed,
        time_limit: n.time_limit,
        cluster: n.target.cluster(),
        journal: n.journal,
        tag: n.tag,
        rec: n.rec,
        stop: n.stop,
    })
}

/// After the nemesis thread ended without healing (a panic): heals what the journal
/// still holds as applied, logging each heal in the history ([`runner::heal_left`]).
pub fn heal_left(journal_path: &Path, target: &Target, rec: &Arc<Recorder>) {
    runner::heal_left(journal_path, &target.cluster(), rec.as_ref());
}

/// Logs in the history that the nemesis failed outside any one fault (it panicked).
pub fn log_failure(rec: &Arc<Recorder>, error: &str) {
    runner::log_failure(rec.as_ref(), error);
}
