//! `coherence run`: wiring a campaign to a cluster, a run directory, the workload, the
//! progress bar and the checker.

use anyhow::{bail, Context, Result};
use coherence_analysis::outputs::{check_and_write, Outputs, Written};
use coherence_analysis::{text, Options};
use coherence_campaign::{Campaign, Cluster};
use coherence_nemeses::fault::Journal;
use coherence_store::files::{refuse_input, write_output};
use coherence_store::recorder::Recorder;
use coherence_store::redact::redact_toml;
use coherence_store::run::{point_latest, RunDir};
use coherence_store::run_info::{NodeAddr, RunInfo};
use coherence_store::{Event, EventType, HistoryWriter, Process};
use coherence_workloads::campaign::Invalidation;
use coherence_workloads::workload::{self, key_name, Endpoints, Node, Phase, RegionNodes};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `coherence run`'s arguments.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The campaign file (TOML; see campaigns/).
    campaign: PathBuf,
    /// Also write the run's JUnit XML (junit.xml in the run directory) here, for CI.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Run against the local lab (`coherence lab up`), preparing it for the campaign.
    #[arg(long)]
    lab: bool,
    /// Override the campaign's time limit, e.g. 30s.
    #[arg(long, value_parser = coherence_store::duration::parse, value_name = "DURATION")]
    time_limit: Option<Duration>,
    /// Override the number of concurrent clients.
    #[arg(long, value_name = "N")]
    concurrency: Option<u32>,
    /// Override the target rate (operations per second; 0: as fast as they go).
    #[arg(long, value_name = "R")]
    rate: Option<u32>,
    /// Override the random seed.
    #[arg(long, value_name = "S")]
    seed: Option<u64>,
    /// Where runs are stored.
    #[arg(long, default_value = "runs", value_name = "DIR")]
    store: PathBuf,
    /// Override the campaign's faults, e.g. partition-region,kill-invalidator.
    #[arg(long, value_delimiter = ',', value_name = "FAULTS")]
    nemesis: Option<Vec<String>>,
    /// Override the time between faults.
    #[arg(long, value_parser = coherence_store::duration::parse, value_name = "DURATION")]
    nemesis_interval: Option<Duration>,
    /// Override how long each fault lasts.
    #[arg(long, value_parser = coherence_store::duration::parse, value_name = "DURATION")]
    nemesis_duration: Option<Duration>,
    /// Override the checks that count ([checker] checks), e.g. non-convergence,lost-write.
    #[arg(long, value_delimiter = ',', value_name = "CHECKS")]
    checks: Option<Vec<coherence_analysis::AnomalyKind>>,
    /// Stop at the first anomaly the online checker detects (of these kinds, e.g.
    /// `--fail-fast=stale-read,read-your-writes`; alone: any it decides): the workload
    /// stops, every fault heals, the final phase runs, the run directory and report are
    /// written as usual, and the exit status is 1. A release gate.
    #[arg(long, value_name = "KINDS", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    fail_fast: Option<String>,
    /// Do not run the online checker (no live detections, no `live` section in
    /// results.json): to measure what it costs, or to spare a loaded machine.
    #[arg(long, conflicts_with = "fail_fast")]
    no_live: bool,
    /// `coherence watch`: observers only, the lab left as it is.
    #[arg(skip)]
    watch: bool,
}

/// `coherence watch`'s arguments.
#[derive(clap::Args)]
pub struct WatchArgs {
    /// The campaign file, its workload `kind = "watch"` (see campaigns/lab-watch.toml).
    campaign: PathBuf,
    /// Override the campaign's time limit, e.g. 2m.
    #[arg(long, value_parser = coherence_store::duration::parse, value_name = "DURATION")]
    time_limit: Option<Duration>,
    /// Where runs are stored.
    #[arg(long, default_value = "runs", value_name = "DIR")]
    store: PathBuf,
}

/// Watches a system that serves its own traffic: observers and the cache samples after
/// each commit, no workload of ours and no fault; the lab is not prepared. Exit status
/// 0 when every sample was consistent, 1 when some were not, 3 when none was taken or
/// the commit observer was blind for a while (commits went unseen).
pub fn watch(args: WatchArgs) -> Result<u8> {
    run(RunArgs {
        campaign: args.campaign,
        junit: None,
        lab: false,
        time_limit: args.time_limit,
        concurrency: None,
        rate: None,
        seed: None,
        store: args.store,
        nemesis: None,
        nemesis_interval: None,
        nemesis_duration: None,
        checks: None,
        fail_fast: None,
        no_live: false,
        watch: true,
    })
}

/// The kinds `--fail-fast` names (all the online checker decides while the run goes on
/// when it names none); an error naming one it cannot decide then.
fn fail_fast_kinds(arg: &str) -> Result<Vec<coherence_analysis::AnomalyKind>> {
    use coherence_analysis::live::EARLY_KINDS;
    if arg.trim().is_empty() {
        return Ok(EARLY_KINDS.to_vec());
    }
    let live: Vec<&str> = EARLY_KINDS.iter().map(|k| k.name()).collect();
    arg.split(',')
        .map(|name| {
            let kind: coherence_analysis::AnomalyKind = name.trim().parse().map_err(|_| {
                anyhow::anyhow!("--fail-fast: no anomaly is named {name:?}; the online checker decides {} while the run goes on", live.join(", "))
            })?;
            anyhow::ensure!(
                EARLY_KINDS.contains(&kind),
                "--fail-fast: {name} is judged only once the run is over; the online checker decides {} while the run goes on",
                live.join(", ")
            );
            Ok(kind)
        })
        .collect()
}

/// Whether the campaign's workload is `watch`.
fn work_kind_is_watch(campaign: &Campaign) -> bool {
    campaign.workload.kind == coherence_workloads::registry::Kind::Watch
}

/// Whether a progress bar may be drawn.
fn interactive() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("CI").is_none()
}

/// Runs a campaign; returns the exit status (as `check`).
pub fn run(args: RunArgs) -> Result<u8> {
    let text = std::fs::read_to_string(&args.campaign)
        .with_context(|| format!("cannot read the campaign {}", args.campaign.display()))?;
    let mut campaign =
        Campaign::parse(&text).map_err(|m| anyhow::anyhow!("{}: {m}", args.campaign.display()))?;
    // The checks that count, refused before anything runs when one is unknown.
    let from_campaign: Option<Vec<coherence_analysis::AnomalyKind>> = campaign
        .checker
        .checks
        .as_ref()
        .map(|names| {
            names
                .iter()
                .map(|n| n.parse())
                .collect::<Result<Vec<_>, String>>()
        })
        .transpose()
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: {}field `checker.checks`: {e}",
                args.campaign.display(),
                Campaign::line_of_field(&text, "checks")
                    .map(|l| format!("line {l}: "))
                    .unwrap_or_default()
            )
        })?;
    let checks = args.checks.clone().or(from_campaign);
    let mut fail_fast = args.fail_fast.as_deref().map(fail_fast_kinds).transpose()?;
    if let (Some(kinds), Some(checks)) = (fail_fast.as_mut(), &checks) {
        let named = args
            .fail_fast
            .as_deref()
            .is_some_and(|a| !a.trim().is_empty());
        if named {
            if let Some(k) = kinds.iter().find(|k| !checks.contains(k)) {
                anyhow::bail!(
                    "--fail-fast: {} is not among the checks that count ([checker] checks, --checks)",
                    k.name()
                );
            }
        }
        kinds.retain(|k| checks.contains(k));
    }
    // What the run directory stores: secrets redacted, at any depth.
    let stored_campaign = redact_toml(&text)
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot redact its secrets: {e}",
                args.campaign.display()
            )
        })?
        .text;
    // --junit must not overwrite the campaign; refused before the run, not after it.
    if let Some(file) = &args.junit {
        refuse_input(file, &[&args.campaign])?;
    }
    if let Some(t) = args.time_limit {
        campaign.workload.time_limit = t;
    }
    if let Some(c) = args.concurrency {
        anyhow::ensure!(c > 0, "--concurrency must be at least 1");
        campaign.workload.concurrency = c;
    }
    if let Some(r) = args.rate {
        campaign.workload.rate = r;
    }
    if let Some(s) = args.seed {
        campaign.workload.seed = s;
    }
    if let Some(kinds) = &args.nemesis {
        let faults = kinds
            .iter()
            .map(|k| {
                serde_json::from_value(serde_json::Value::String(k.clone())).map_err(|_| {
                    anyhow::anyhow!(
                        "--nemesis: unknown fault {k:?}: use {}",
                        coherence_nemeses::schedule::FaultKind::NAMES.join(", ")
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let base = campaign.nemesis.clone();
        campaign.nemesis = Some(coherence_nemeses::schedule::NemesisConfig {
            faults,
            interval: base
                .as_ref()
                .map_or(Duration::from_secs(10), |b| b.interval),
            duration: base.as_ref().map_or(Duration::from_secs(3), |b| b.duration),
            clock_offset: base
                .as_ref()
                .map_or(coherence_nemeses::schedule::DEFAULT_CLOCK_OFFSET, |b| {
                    b.clock_offset
                }),
            clock_period: base
                .as_ref()
                .map_or(coherence_nemeses::schedule::DEFAULT_CLOCK_PERIOD, |b| {
                    b.clock_period
                }),
        });
    }
    if let Some(n) = campaign.nemesis.as_mut() {
        if let Some(i) = args.nemesis_interval {
            n.interval = i;
        }
        if let Some(d) = args.nemesis_duration {
            n.duration = d;
        }
        anyhow::ensure!(
            !n.faults.is_empty(),
            "[nemesis] faults: name at least one fault"
        );
        anyhow::ensure!(
            n.interval > Duration::ZERO,
            "[nemesis] interval must be more than 0"
        );
        // The lab's clock shim holds offsets and periods of less than 2^31 ms (24 days).
        let clock_range = Duration::from_millis(1)..Duration::from_secs(86_400 * 24);
        anyhow::ensure!(
            clock_range.contains(&n.clock_offset) && clock_range.contains(&n.clock_period),
            "[nemesis] clock_offset and clock_period must be between 1 ms and 24 days"
        );
    }
    let watching = work_kind_is_watch(&campaign);
    if args.watch && !watching {
        bail!(
            "{}: `coherence watch` runs a campaign whose [workload] kind = \"watch\" (see campaigns/lab-watch.toml)",
            args.campaign.display()
        );
    }
    if !args.watch && watching {
        bail!(
            "{}: a campaign of [workload] kind = \"watch\" drives nothing: run it with `coherence watch`",
            args.campaign.display()
        );
    }
    if args.watch {
        // Observers only: no fault, one watcher, nothing to wait for at the end.
        campaign.nemesis = None;
        campaign.workload.concurrency = 1;
        campaign.workload.quiesce = Duration::ZERO;
    }
    let work = campaign.workload.clone();
    let keys: Vec<String> = (0..work.keys).map(key_name).collect();
    // From here on Ctrl-C and SIGTERM stop the run gracefully (whatever it is doing, it
    // restores what it stopped and heals what it applied); a second one ends it at once
    // (`coherence heal RUN_DIR` then finishes the job).
    let signals = Signals::install()?;

    // The cluster: prepare the lab, or take the staging endpoints as given.
    let lab = args.lab || matches!(campaign.cluster, Cluster::Lab { .. });
    if let (Some(_), Cluster::Staging { nodes, .. }) = (&campaign.nemesis, &campaign.cluster) {
        if nodes.is_empty() && !lab {
            bail!("faults ([nemesis]) on staging need the nodes to reach: add [[cluster.nodes]] with their ssh settings (see campaigns/staging-example.toml)");
        }
    }
    // What the observers watch ([observe]; the lab's default when absent), named per run.
    let observe = campaign.observe();
    if args.watch
        && observe
            .as_ref()
            .is_none_or(|o| o.database.is_none() || !o.caches)
    {
        bail!(
            "{}: `coherence watch` samples the caches after each commit the commit observer sees: give an [observe] section with caches = true and [observe.database] (see campaigns/lab-watch.toml, README \"Observers\")",
            args.campaign.display()
        );
    }
    let observe_tag = format!("{}_{}", campaign.name, std::process::id());
    let (endpoints, design, dir, rec, observers) = if lab {
        let design: coherence_lab::Design = match &campaign.cluster {
            Cluster::Lab { invalidator, .. } => invalidator.parse().map_err(anyhow::Error::msg)?,
            Cluster::Staging { .. } => bail!(
                "--lab runs a campaign whose cluster is the lab: set `kind = \"lab\"` in [cluster]"
            ),
        };
        if design == coherence_lab::Design::None
            && work.kind == coherence_workloads::registry::Kind::CacheAside
            && work.invalidation() == Invalidation::Pipeline
        {
            bail!("invalidation = \"pipeline\" needs an invalidator in the lab: set [cluster] invalidator = \"notify\" or \"outbox\"");
        }
        // The http workload drives the lab's reference service, in the campaign's design.
        let service = match &campaign.cluster {
            Cluster::Lab {
                service: Some(name),
                ..
            } => Some(
                name.parse::<coherence_lab::service::ServiceDesign>()
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "{}: {}field `cluster.service`: {e}",
                            args.campaign.display(),
                            Campaign::line_of_field(&text, "service")
                                .map(|l| format!("line {l}: "))
                                .unwrap_or_default()
                        )
                    })?,
            ),
            _ => None,
        };
        let http = work.kind == coherence_workloads::registry::Kind::Http;
        let (dir, rec) = open_run(&args.store, &campaign.name, &stored_campaign)?;
        let mut journal = Journal::open(&dir.journal())
            .with_context(|| format!("cannot open the heal journal in {}", dir.path().display()))?;
        let say = |m: &str| eprintln!("preparing the lab: {m}");
        let prepared = if args.watch {
            // The lab serves another run's traffic: left as it is.
            coherence_lab::cluster::State::load()?
                .ok_or_else(|| anyhow::anyhow!("the lab is not up: `coherence lab up` first"))
        } else {
            coherence_lab::cluster::prepare(
                &keys,
                design,
                coherence_lab::cluster::Preparing {
                    journal: &mut journal,
                    stop: &signals.interrupted,
                    say: &say,
                },
            )
        };
        let state = match prepared {
            Ok(state) => state,
            Err(e) if e.is::<coherence_lab::cluster::Interrupted>() => {
                eprintln!("interrupted while preparing the lab; the invalidator runs again");
                signals.log(&rec);
                return Conclude::of(&args, &campaign, checks, dir, rec).conclude(Ok(()), None);
            }
            Err(e) => return Err(e),
        };
        drop(journal);
        let state = if http && !args.watch {
            coherence_lab::cluster::restart_services(&state, service.unwrap_or_default())?
        } else {
            state
        };
        let lab = coherence_lab::cluster::endpoints(&state)?;
        let node = |e: &coherence_lab::cluster::Endpoint| Node {
            name: e.name.clone(),
            addr: e.addr.clone(),
        };
        // Clients follow failovers: the primary among both database servers, a
        // region's primary through its Sentinels.
        let (primary, standby) = (node(&lab.db_primary), node(&lab.db_standby));
        let endpoints = Endpoints {
            db_writers: vec![primary.clone(), standby.clone()],
            db_readers: vec![standby.clone(), primary.clone()],
            db_params: "user=postgres dbname=postgres".into(),
            regions: lab
                .regions
                .iter()
                .map(|r| RegionNodes {
                    name: r.name.clone(),
                    primary: node(&r.primary),
                    replica: r.replica.as_ref().map(node),
                    sentinels: r.sentinels.clone(),
                    master_name: r.master_name.clone(),
                    nodes: Vec::new(),
                })
                .collect(),
            apps: lab
                .regions
                .iter()
                .map(|r| coherence_workloads::workload::AppRegion {
                    name: r.name.clone(),
                    bases: vec![r.service.clone()],
                })
                .collect(),
            table: observe.as_ref().and_then(|o| o.database.clone()),
            cached_value: observe
                .as_ref()
                .map_or_else(|| "versioned-json".to_string(), |o| o.value.clone()),
        };
        // The service must answer before the run: else no run directory stays behind.
        if http {
            let checked = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?
                .block_on(work.kind.open(&work, &endpoints).preflight());
            if let Err(e) = checked {
                drop(rec);
                let _ = std::fs::remove_dir_all(dir.path());
                return Err(e);
            }
        }
        // The lab turns on what its observers need.
        let plan = match &observe {
            Some(o) => {
                let mut o = o.clone();
                o.configure = true;
                let db = crate::observers::Database {
                    nodes: vec![primary.clone(), standby.clone()],
                    user: "postgres".into(),
                    password: None,
                    dbname: "postgres".into(),
                };
                let plan = crate::observers::Plan::new(
                    &o,
                    &endpoints,
                    db,
                    &observe_tag,
                    work.kind == coherence_workloads::registry::Kind::Http,
                )?;
                plan.check()?;
                Some(plan)
            }
            None => None,
        };
        (endpoints, Some(design), dir, rec, plan)
    } else {
        let Cluster::Staging {
            postgres, regions, ..
        } = &campaign.cluster
        else {
            unreachable!("not the lab")
        };
        let password = postgres
            .resolve_password(&|name| std::env::var_os(name))
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.campaign.display()))?;
        for warning in &password.warnings {
            eprintln!("warning: {}: {warning}", args.campaign.display());
        }
        let params = postgres.conninfo(password.password.as_deref());
        let node = |addr: &str, name: Option<&str>| Node {
            name: name.unwrap_or(addr).to_string(),
            addr: addr.to_string(),
        };
        let endpoints = Endpoints {
            db_writers: vec![node(&postgres.writer, Some("db"))],
            db_readers: vec![node(
                postgres.reader.as_deref().unwrap_or(&postgres.writer),
                Some("db-reader"),
            )],
            db_params: params,
            regions: regions
                .iter()
                .map(|r| RegionNodes {
                    name: r.name.clone(),
                    primary: node(&r.primary, r.names.as_ref().map(|n| n[0].as_str())),
                    replica: r
                        .replica
                        .as_deref()
                        .map(|a| node(a, r.names.as_ref().map(|n| n[1].as_str()))),
                    sentinels: r.sentinels.clone(),
                    master_name: r.master_name.clone().unwrap_or_else(|| r.name.clone()),
                    nodes: Vec::new(),
                })
                .collect(),
            // The http workload names its service's instances in [workload.http].
            apps: Vec::new(),
            table: observe.as_ref().and_then(|o| o.database.clone()),
            cached_value: observe
                .as_ref()
                .map_or_else(|| "versioned-json".to_string(), |o| o.value.clone()),
        };
        // Refuse endpoints and nodes that do not answer, before anything runs.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(work.kind.open(&work, &endpoints).preflight())?;
        if let (Some(_), Cluster::Staging { nodes, .. }) = (&campaign.nemesis, &campaign.cluster) {
            coherence_nemeses::staging::StagingNodes::new(nodes)
                .check()
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{e}\n(the nodes of [[cluster.nodes]] are reached before any fault)"
                    )
                })?;
        }
        // The observers' settings are checked (or configured) before anything runs.
        let plan = match &observe {
            Some(o) => {
                let mut db_nodes = vec![node(&postgres.writer, Some("db"))];
                if let Some(reader) = postgres.reader.as_deref().filter(|r| *r != postgres.writer) {
                    db_nodes.push(node(reader, Some("db-reader")));
                }
                let db = crate::observers::Database {
                    nodes: db_nodes,
                    user: postgres.user.clone(),
                    password: password.password.clone(),
                    dbname: postgres.dbname.clone(),
                };
                let plan = crate::observers::Plan::new(
                    o,
                    &endpoints,
                    db,
                    &observe_tag,
                    work.kind == coherence_workloads::registry::Kind::Http,
                )?;
                plan.check()?;
                Some(plan)
            }
            None => None,
        };
        let (dir, rec) = open_run(&args.store, &campaign.name, &stored_campaign)?;
        (endpoints, None, dir, rec, plan)
    };

    // run.json, now that the nodes are known.
    let started = SystemTime::now();
    let mut nodes: Vec<NodeAddr> = Vec::new();
    for n in endpoints
        .db_writers
        .iter()
        .chain(&endpoints.db_readers)
        .cloned()
        .chain(endpoints.regions.iter().flat_map(|r| r.all()))
    {
        let v = NodeAddr {
            name: n.name,
            addr: n.addr,
        };
        if !nodes.contains(&v) {
            nodes.push(v);
        }
    }
    let run_info = RunInfo {
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        campaign: campaign.name.clone(),
        seed: work.seed,
        started_at: humantime::format_rfc3339_millis(started).to_string(),
        started_unix_ns: started
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64,
        time_limit_ms: work.time_limit.as_millis() as u64,
        concurrency: work.concurrency,
        rate: work.rate,
        lab,
        invalidator: design.map(|d| d.to_string()),
        nodes,
        server_versions: server_versions(&endpoints),
    };
    write_output(&dir.run_json(), &run_info.to_json(), &[])?;
    // The online checker follows every event from here on.
    let live = (!args.no_live).then(|| {
        crate::live::LiveRun::start(
            &rec,
            campaign.checker.staleness_bound.as_nanos() as u64,
            campaign
                .checker
                .invalidation_bound
                .map(|b| b.as_nanos() as u64),
            checks.clone(),
            fail_fast,
            |line| eprintln!("{line}"),
        )
    });
    // Who replicates whom, for the checker's causes (failovers change it later).
    rec.log(
        Event::new(
            0,
            Process::Actor("control".into()),
            EventType::Info,
            "topology",
        )
        .value(topology(&endpoints)),
    );
    // Where the lab invalidator's deletion log stands before anything is watched, so
    // that its witness and the observers' start at the same point.
    let deletions_from = coherence_lab::cluster::deletions_end();
    // The observers watch from before the workload to after the final phase.
    let observers = match observers {
        Some(plan) => Some(plan.start(rec.clone())?),
        None => None,
    };

    // Faults: a thread of their own, journaled in the run directory, healed on every
    // way out (the guard covers a panic).
    let stop_faults = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let journal = dir.journal();
    let mut heal_guard = None;
    let nemesis_thread = match &campaign.nemesis {
        Some(config) => {
            let target = match &campaign.cluster {
                Cluster::Staging { nodes, regions, .. } if !lab => {
                    crate::nemesis::Target::Staging {
                        nodes: nodes.clone(),
                        regions: regions.iter().map(|r| r.name.clone()).collect(),
                    }
                }
                _ => crate::nemesis::Target::Lab(
                    coherence_lab::cluster::State::load()?
                        .ok_or_else(|| anyhow::anyhow!("the lab went down"))?,
                ),
            };
            heal_guard = Some(crate::nemesis::HealGuard {
                journal: journal.clone(),
                target: target.clone(),
            });
            let (config, rec, stop) = (config.clone(), rec.clone(), stop_faults.clone());
            let tag = dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (seed, limit, journal) = (work.seed, work.time_limit, journal.clone());
            Some(std::thread::spawn(move || {
                crate::nemesis::run(crate::nemesis::Nemesis {
                    config,
                    seed,
                    time_limit: limit,
                    target,
                    journal,
                    tag,
                    rec,
                    stop,
                })
            }))
        }
        None => None,
    };
    let nemesis_thread = Arc::new(Mutex::new(nemesis_thread));
    // When the nemesis thread ends: a panic is logged in the history (the run is then
    // unknown), and whatever it left applied is healed and logged.
    let nemesis_after: Arc<dyn Fn(Option<String>) + Send + Sync> = {
        let (rec, journal, target) = (
            rec.clone(),
            journal.clone(),
            heal_guard.as_ref().map(|g| g.target.clone()),
        );
        Arc::new(move |panicked: Option<String>| {
            if let Some(message) = panicked {
                eprintln!("error: the nemesis failed: {message}");
                crate::nemesis::log_failure(
                    &rec,
                    &format!("the nemesis thread panicked: {message}"),
                );
            }
            if let Some(target) = &target {
                crate::nemesis::heal_left(&journal, target, &rec);
            }
        })
    };

    let bar = interactive().then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"));
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let phase = Arc::new(Mutex::new("workload"));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        {
            // Ctrl-C or SIGTERM: the workload stops, faults heal, the final phase runs.
            let (stop_faults, rec, signals) = (stop_faults.clone(), rec.clone(), signals.clone());
            let (hit, tripped) = live
                .as_ref()
                .map(|l| (l.hit.clone(), l.tripped.clone()))
                .unwrap_or_default();
            tokio::spawn(async move {
                while !signals.interrupted.load(Ordering::Relaxed) && !hit.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if signals.interrupted.load(Ordering::Relaxed) {
                    eprintln!("stopping: healing the faults, then the final phase (press Ctrl-C again to quit at once, then `coherence heal`)");
                    signals.log(&rec);
                } else {
                    let t = tripped.lock().ok().and_then(|t| t.clone());
                    if let Some(t) = t {
                        eprintln!("fail-fast: {} detected (line {}); stopping: healing the faults, then the final phase", t.kind.name(), t.index + 1);
                        rec.log(
                            Event::new(0, Process::Actor("control".into()), EventType::Info, "fail-fast")
                                .value(json!({"kind": t.kind.name(), "index": t.index, "summary": t.summary})),
                        );
                    }
                }
                stop_faults.store(true, Ordering::Relaxed);
                let _ = stop_tx.send(true);
            });
        }
        // The lab's invalidator logs its deletions; record them as they happen.
        let pipeline = lab
            && design.is_some_and(|d| d != coherence_lab::Design::None)
            && work.invalidation() == Invalidation::Pipeline;
        let tail = pipeline.then(|| {
            let rec = rec.clone();
            let mut offset = deletions_from;
            tokio::spawn(async move {
                loop {
                    if let Ok((deletions, next)) = coherence_lab::cluster::read_deletions(offset) {
                        offset = next;
                        for d in deletions {
                            rec.log(
                                Event::new(
                                    0,
                                    Process::Actor("invalidator".into()),
                                    EventType::Info,
                                    "invalidate",
                                )
                                .key(d.key)
                                .node(d.node)
                                .value(json!({"version": d.version})),
                            );
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        });
        let progress = bar.clone().map(|bar| {
            let rec = rec.clone();
            let phase = phase.clone();
            let limit = work.time_limit;
            let counts = live.as_ref().map(|l| l.counts.clone());
            let faults = live.as_ref().map(|l| l.faults.clone());
            tokio::spawn(async move {
                let mut last = (0u64, std::time::Instant::now());
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let done = rec.counters.completed.load(Ordering::Relaxed);
                    let rate = (done - last.0) as f64 / last.1.elapsed().as_secs_f64();
                    last = (done, std::time::Instant::now());
                    bar.set_message(format!(
                        "{} {:.0}/{:.0} s, {done} ops, {rate:.0} ops/s, {} failed, {} unknown; live: {}; faults: {}",
                        phase.lock().map(|p| *p).unwrap_or("?"),
                        rec.elapsed().as_secs_f64().min(limit.as_secs_f64()),
                        limit.as_secs_f64(),
                        rec.counters.failed.load(Ordering::Relaxed),
                        rec.counters.unknown.load(Ordering::Relaxed),
                        counts.as_ref().map_or("off".into(), |c| crate::live::LiveRun::so_far(c)),
                        faults.as_ref().map_or("not followed".into(), |f| crate::live::LiveRun::faults_now(f)),
                    ));
                }
            })
        });
        let phase_cb = {
            let phase = phase.clone();
            let nemesis_after = nemesis_after.clone();
            let (stop, thread) = (stop_faults.clone(), nemesis_thread.clone());
            move |p: Phase| {
                if p == Phase::Quiesce {
                    // After the time limit: heal every fault before the quiesce.
                    stop.store(true, Ordering::Relaxed);
                    if let Some(t) = thread.lock().ok().and_then(|mut t| t.take()) {
                        joined(t, &nemesis_after);
                    }
                }
                if let Ok(mut cur) = phase.lock() {
                    *cur = match p {
                        Phase::Workload => "workload",
                        Phase::Quiesce => "quiesce",
                        Phase::Final => "final reads",
                    };
                }
            }
        };
        let workload = work.kind.open(&work, &endpoints);
        let r = workload::run(&*workload, &work, rec.clone(), phase_cb, stop_rx).await;
        if let Some(t) = tail {
            t.abort();
        }
        if let Some(p) = progress {
            p.abort();
        }
        r
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    drop(rt);
    if let Some(o) = observers {
        o.stop();
    }
    // However the workload ended, no fault outlives it.
    stop_faults.store(true, Ordering::Relaxed);
    if let Some(t) = nemesis_thread.lock().ok().and_then(|mut t| t.take()) {
        joined(t, &nemesis_after);
    }
    drop(heal_guard);
    // The servers' logs, for whoever reads the run later.
    if lab {
        if let Ok(Some(state)) = coherence_lab::cluster::State::load() {
            if let Err(e) = coherence_lab::cluster::fetch_logs(&state, &dir.logs()) {
                eprintln!("warning: could not fetch the lab's server logs: {e:#}");
            }
        }
    }
    // The last holder of the recorder besides us.
    drop(nemesis_after);
    Conclude::of(&args, &campaign, checks, dir, rec).conclude(result, live)
}

/// The end of every run: the history finished, checked, results, report and JUnit
/// written, runs/latest and the index refreshed, the verdict printed.
struct Conclude<'a> {
    /// `coherence watch`: its own summary and exit status.
    watch: bool,
    dir: RunDir,
    rec: Arc<Recorder>,
    checks: Option<Vec<coherence_analysis::AnomalyKind>>,
    bound: Duration,
    invalidation_bound: Option<Duration>,
    junit: Option<&'a Path>,
    store: &'a Path,
    campaign_file: &'a Path,
}

impl<'a> Conclude<'a> {
    /// The end of this run.
    fn of(
        args: &'a RunArgs,
        campaign: &Campaign,
        checks: Option<Vec<coherence_analysis::AnomalyKind>>,
        dir: RunDir,
        rec: Arc<Recorder>,
    ) -> Conclude<'a> {
        Conclude {
            watch: args.watch,
            dir,
            rec,
            checks,
            bound: campaign.checker.staleness_bound,
            invalidation_bound: campaign.checker.invalidation_bound,
            junit: args.junit.as_deref(),
            store: &args.store,
            campaign_file: &args.campaign,
        }
    }

    /// Finishes the history, then fails with the workload's error if it had one, else
    /// checks and stores; returns the exit status.
    fn conclude(self, workload: Result<()>, live: Option<crate::live::LiveRun>) -> Result<u8> {
        let Conclude {
            watch,
            dir,
            rec,
            checks,
            bound,
            invalidation_bound,
            junit,
            store,
            campaign_file,
        } = self;
        let rec = Arc::into_inner(rec).expect("every task has ended");
        let events = rec.finish().context("cannot finish the history")?;
        let live = live.map(crate::live::LiveRun::finish);
        workload?;
        let options = Options {
            staleness_bound: bound.as_nanos() as u64,
            checks,
            invalidation_bound: invalidation_bound.map(|b| b.as_nanos() as u64),
            ..Options::default()
        };
        let history_file = dir.history();
        let inputs = [history_file.as_path(), campaign_file];
        let junit_file = dir.junit();
        let junit: Vec<&Path> = std::iter::once(junit_file.as_path()).chain(junit).collect();
        let Written { results, report } = check_and_write(
            &history_file,
            &options,
            coherence_store::NoProgress,
            &Outputs {
                dir: Some(&dir),
                junit: &junit,
                inputs: &inputs,
                live,
            },
        )?;
        let report_file = report.unwrap_or_else(|| dir.report());
        point_latest(store, dir.path()).context("cannot point runs/latest at the run")?;
        let index = coherence_analysis::index::write(store)
            .with_context(|| format!("cannot write the run index in {}", store.display()))?;
        print!("{}", text::render(&results, 3));
        println!(
            "\n{events} events recorded; run directory: {}",
            dir.path().display()
        );
        println!("report: {}", report_file.display());
        println!("all runs: {}", index.display());
        if watch {
            let summary = crate::watch::summarize(&history_file)?;
            let json = serde_json::to_vec_pretty(&summary)?;
            write_output(&dir.path().join("watch.json"), &json, &[])?;
            for line in summary.lines() {
                println!("{line}");
            }
            println!("watch: {}", dir.path().join("watch.json").display());
            // Consistent is claimed only of a watch that saw every commit.
            return Ok(if summary.inconsistent() {
                1
            } else if summary.samples == 0 || !summary.blind.is_empty() {
                3
            } else {
                0
            });
        }
        Ok(crate::exit_status(results.verdict))
    }
}

/// Creates the run directory with the campaign (redacted) and starts its history: from
/// here on, whatever happens, the run leaves a directory that `check` and `heal` read.
fn open_run(store: &Path, name: &str, campaign: &str) -> Result<(RunDir, Arc<Recorder>)> {
    let dir = RunDir::create(store, name)
        .with_context(|| format!("cannot create a run directory in {}", store.display()))?;
    write_output(&dir.campaign(), campaign.as_bytes(), &[])?;
    let writer = HistoryWriter::create(&dir.history())?;
    eprintln!("run directory: {}", dir.path().display());
    Ok((dir, Arc::new(Recorder::new(writer))))
}

/// Ctrl-C and SIGTERM, caught for the whole run: the first sets `interrupted` (and says
/// which it was), the second ends the process at once.
#[derive(Clone)]
struct Signals {
    interrupted: Arc<AtomicBool>,
    which: Arc<AtomicUsize>,
}

impl Signals {
    fn install() -> Result<Signals> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let s = Signals {
            interrupted: Arc::new(AtomicBool::new(false)),
            which: Arc::new(AtomicUsize::new(0)),
        };
        for sig in [SIGINT, SIGTERM] {
            // The shutdown goes first: armed by the first signal, it acts on the second.
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, s.interrupted.clone())
                .and_then(|_| signal_hook::flag::register_usize(sig, s.which.clone(), sig as usize))
                .and_then(|_| signal_hook::flag::register(sig, s.interrupted.clone()))
                .context("cannot catch Ctrl-C and SIGTERM")?;
        }
        Ok(s)
    }

    /// Logs in the history that the run was interrupted, and by which signal.
    fn log(&self, rec: &Recorder) {
        let signal = match self.which.load(Ordering::Relaxed) as i32 {
            signal_hook::consts::SIGINT => "SIGINT",
            signal_hook::consts::SIGTERM => "SIGTERM",
            _ => "a signal",
        };
        rec.log(
            Event::new(
                0,
                Process::Actor("control".into()),
                EventType::Info,
                "interrupted",
            )
            .value(json!({"signal": signal})),
        );
    }
}

/// Waits for the nemesis thread; tells `after` whether it panicked (and with what).
fn joined(t: std::thread::JoinHandle<()>, after: &Arc<dyn Fn(Option<String>) + Send + Sync>) {
    let panicked = t.join().err().map(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    });
    after(panicked);
}

/// The topology the run starts with: each region's cache primary and the replica that
/// follows it, the database primary and its standby (`docs/history.md`, `topology`).
fn topology(ends: &Endpoints) -> serde_json::Value {
    let mut caches = Vec::new();
    for r in &ends.regions {
        caches.push(json!({"node": r.primary.name, "region": r.name}));
        if let Some(rep) = &r.replica {
            caches.push(json!({"node": rep.name, "region": r.name, "replica_of": r.primary.name}));
        }
    }
    let primary = &ends.db_writers[0];
    let mut databases = vec![json!({"node": primary.name})];
    for n in ends.db_writers.iter().chain(&ends.db_readers) {
        if n.name == primary.name || databases.iter().any(|d| d["node"] == n.name.as_str()) {
            continue;
        }
        // The same server under another name (a reader endpoint that is the writer) is
        // no standby.
        databases.push(if n.addr == primary.addr {
            json!({"node": n.name})
        } else {
            json!({"node": n.name, "standby_of": primary.name})
        });
    }
    json!({"caches": caches, "databases": databases})
}

/// The version of every server, as each reports it.
fn server_versions(ends: &Endpoints) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for r in &ends.regions {
        for n in &r.all() {
            let version = redis::Client::open(format!("redis://{}/", n.addr))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
                .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c))
                .ok()
                .and_then(|info| {
                    info.lines()
                        .find_map(|l| l.strip_prefix("redis_version:"))
                        .map(|v| format!("redis {}", v.trim()))
                });
            out.insert(n.name.clone(), version);
        }
    }
    let pg = std::process::Command::new("psql")
        .args([
            "-h",
            ends.db_writers[0]
                .addr
                .split(':')
                .next()
                .unwrap_or_default(),
            "-U",
            "postgres",
            "-tAc",
            "SHOW server_version",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| format!("postgresql {}", String::from_utf8_lossy(&o.stdout).trim()));
    out.insert(ends.db_writers[0].name.clone(), pg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_nemesis_is_reported_not_dropped() {
        // Regression: the nemesis thread's join result was dropped, so a panic in it
        // went unreported and the run could say VALID.
        let seen = Arc::new(Mutex::new(None));
        let after: Arc<dyn Fn(Option<String>) + Send + Sync> = {
            let seen = seen.clone();
            Arc::new(move |p| *seen.lock().unwrap() = Some(p))
        };
        let t = std::thread::spawn(|| panic!("the schedule broke"));
        joined(t, &after);
        assert_eq!(
            seen.lock().unwrap().clone(),
            Some(Some("the schedule broke".to_string()))
        );
        let t = std::thread::spawn(|| {});
        joined(t, &after);
        assert_eq!(
            seen.lock().unwrap().clone(),
            Some(None),
            "a clean end is no failure"
        );
    }
}
