//! The `coherence` command line: parses arguments, wires the crates together, shows
//! progress. No checking or fault logic lives here.

mod follow;
mod live;
mod nemesis;
mod observers;
mod progress;
mod run;
mod serve;
mod watch;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use coherence_analysis::outputs::{check_and_write, Outputs, Written};
use coherence_analysis::{bound, text, Options};
use coherence_store::run::{inputs_of, resolve_history, RunDir};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit status: the history is valid.
const EXIT_VALID: u8 = 0;
/// Exit status: anomalies were found.
const EXIT_ANOMALIES: u8 = 1;
/// Exit status: unusable input or arguments.
const EXIT_USAGE: u8 = 2;
/// Exit status: no anomaly proven, but the history cannot vouch for validity (a check
/// could not decide, a requested fault did not happen or heal, no evidence).
const EXIT_UNKNOWN: u8 = 3;

/// The exit status of a verdict.
fn exit_status(verdict: coherence_analysis::Verdict) -> u8 {
    match verdict {
        coherence_analysis::Verdict::Valid => EXIT_VALID,
        coherence_analysis::Verdict::Invalid => EXIT_ANOMALIES,
        coherence_analysis::Verdict::Unknown => EXIT_UNKNOWN,
    }
}

#[derive(Parser)]
#[command(
    name = "coherence",
    version,
    about = "A Jepsen-style tester for cache coherence",
    long_about = "A Jepsen-style tester for cache coherence: records histories of caches in front of a \
                  database, breaks them with faults, and proves stale reads, lost writes and \
                  non-convergence from the history."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a history file (or a run directory's history) for anomalies.
    ///
    /// Exit status: 0 valid, 1 anomalies found, 2 unusable input or arguments, 3 unknown
    /// (a check could not decide, a requested fault did not happen, no evidence).
    Check(CheckArgs),
    /// Generate a synthetic cache-aside history (for trying the checker and benchmarks).
    Gen(GenArgs),
    /// Run a campaign: drive clients against a real cluster, record the history in a
    /// run directory, then check it. Exit status as `check`.
    Run(run::RunArgs),
    /// Watch a system that serves its own traffic: observers only, no workload of ours
    /// and no fault. After each commit, every cache node is sampled after each of a few
    /// delays; prints "N nines of writes consistent within M" per region, and the keys
    /// that were not. Exit status 0 all consistent, 1 some not, 3 nothing sampled or the
    /// commit observer was blind for a while.
    Watch(run::WatchArgs),
    /// Serve the run store read-only over HTTP on loopback: the run index, every report.
    Serve {
        /// The run store.
        #[arg(long, default_value = "runs")]
        store: PathBuf,
        /// Where to listen (loopback only).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
    },
    /// Heal the faults a run left applied (after it was killed), from its faults.jsonl.
    Heal {
        /// The run directory.
        run_dir: PathBuf,
    },
    /// A real cluster of Redis and PostgreSQL on this machine, in network namespaces.
    #[command(subcommand)]
    Lab(LabCommand),
}

#[derive(Subcommand)]
enum LabCommand {
    /// Start the lab: PostgreSQL primary and standby, per region a Redis primary, a
    /// replica and three Sentinels, and the invalidator under test. Needs root.
    Up {
        /// Regions, each with its own Redis primary, replica and Sentinels.
        #[arg(long, default_value_t = 2)]
        regions: u32,
        /// The invalidation pipeline under test.
        #[arg(long, default_value = "notify")]
        invalidator: coherence_lab::Design,
        /// Replicate to the standby synchronously.
        #[arg(long)]
        sync_replication: bool,
        /// The design the regions' HTTP services start in (delete-after-commit,
        /// delete-before-commit, update-cache, delayed-double-delete, versioned, pipeline).
        #[arg(long, default_value = "delete-after-commit")]
        service: coherence_lab::service::ServiceDesign,
    },
    /// Show every host, its address, role and ports, and whether it answers.
    ///
    /// Exit status (as `systemctl status`): 0 every server answers, 1 some server does
    /// not (they are named), 3 the lab is not up.
    Status,
    /// Stop every lab process and remove every namespace, the bridge and the lab's files.
    Down,
    /// Run a command on a lab host: `coherence lab exec r1a -- redis-cli -h 10.77.0.21 ping`.
    Exec {
        /// The host (db1, db2, r1a, r1b, r1s, ..., inv).
        host: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run the lab's HTTP service: cache-aside over a region's Redis and the lab's
    /// PostgreSQL in a chosen design (`lab up` starts one per region, inside its app
    /// host). With --redis and --db it runs against any Redis and PostgreSQL.
    ///
    /// GET /items/{key}, PUT /items/{key} with {"value": "..."}, GET /health.
    Service(ServiceArgs),
    /// Run an invalidator (started by `lab up` inside its host).
    #[command(hide = true)]
    Invalidator {
        #[arg(long)]
        design: coherence_lab::Design,
        #[arg(long)]
        regions: u32,
        #[arg(long)]
        log: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServiceArgs {
    /// How it keeps its cache coherent: delete-after-commit, delete-before-commit,
    /// update-cache, delayed-double-delete, versioned or pipeline.
    #[arg(long)]
    design: coherence_lab::service::ServiceDesign,
    /// Its region (r1, r2, ...): in the lab, its cache is the region's Redis, found
    /// through the region's Sentinels.
    #[arg(long)]
    region: String,
    /// How many regions the lab has (`versioned` invalidates every region's cache).
    #[arg(long, default_value_t = 2, value_name = "N")]
    regions: u32,
    /// Where to listen (default: the region's app host in the lab, port 8080).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<std::net::SocketAddr>,
    /// TTL of filled values, in milliseconds.
    #[arg(long, default_value_t = 60_000, value_name = "N")]
    fill_ttl_ms: u64,
    /// delayed-double-delete's delay before the second DEL, in milliseconds.
    #[arg(long, default_value_t = 500, value_name = "N")]
    double_delete_delay_ms: u64,
    /// A Redis primary (host:port) to use instead of the lab region's, found through no
    /// Sentinel.
    #[arg(long, value_name = "ADDR")]
    redis: Option<String>,
    /// A PostgreSQL server (host:port, user postgres, trust) to use instead of the lab's;
    /// give it more than once to follow whichever of them is the primary.
    #[arg(long, value_name = "ADDR")]
    db: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// A history file (.jsonl or .jsonl.gz, or a pipe), a run directory, or - for stdin.
    path: PathBuf,
    /// The staleness bound Δ a read may lag behind acknowledged writes, e.g. 0, 250ms, 2s.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = coherence_store::duration::parse)]
    staleness_bound: Duration,
    /// The invalidation bound: a watched cache node's invalidation that comes later than
    /// this after the commit is a slow-invalidation, e.g. 200ms (default: not checked).
    #[arg(long, value_name = "DURATION", value_parser = coherence_store::duration::parse)]
    invalidation_bound: Option<Duration>,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Write results.json and report.html into this directory (created if missing).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// How many anomalies the text output explains.
    #[arg(long, default_value_t = 5, value_name = "N")]
    explain: usize,
    /// How many anomalies of each kind results keep explained.
    #[arg(long, default_value_t = 100, value_name = "N")]
    anomaly_limit: usize,
    /// Write JUnit XML here for CI: one test case per checker.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// The checks that count, e.g. stale-read,read-your-writes (default: all); the
    /// others are listed as not run and the verdict is over the chosen ones.
    #[arg(long, value_delimiter = ',', value_name = "CHECKS")]
    checks: Option<Vec<coherence_analysis::AnomalyKind>>,
    /// Follow a history that another process is still writing: check each event as it
    /// is appended, print every anomaly as soon as it is certain, and give the offline
    /// verdict once the file has not grown for --until-idle.
    #[arg(long)]
    follow: bool,
    /// With --follow: how long the file may stay the same before it is taken as done.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = coherence_store::duration::parse)]
    until_idle: Duration,
}

#[derive(clap::Args)]
struct GenArgs {
    /// Where to write the history (a name ending in .gz is compressed).
    #[arg(long, short)]
    out: PathBuf,
    /// Client operations (reads and writes) to simulate.
    #[arg(long, default_value_t = 10_000)]
    ops: u64,
    /// Random seed; the same seed gives the same file.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `correct` produces a valid history; `buggy` injects fill races, lagging replicas,
    /// lost invalidations under partitions and failovers that lose writes.
    #[arg(long, default_value = "buggy")]
    mode: coherence_sim::Mode,
    /// Number of keys.
    #[arg(long, default_value_t = 1000)]
    keys: u32,
    /// Concurrent client processes.
    #[arg(long, default_value_t = 16)]
    concurrency: u32,
    /// Regions (each with a cache primary and replica).
    #[arg(long, default_value_t = 2)]
    regions: u32,
}

fn main() -> ExitCode {
    // A closed stdout (`coherence lab status | head -1`) ends us quietly, as it ends
    // other Unix tools, instead of a panic in `println!`.
    // SAFETY: setting a signal's disposition to its default has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // The chain can quote the input (a path, a name): no control character of it
            // reaches the terminal.
            eprintln!(
                "error: {}",
                bound::lines(&format!("{err:#}"), bound::TEXT_LIMIT)
            );
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Check(args) => check(args),
        Command::Gen(args) => gen(args),
        Command::Lab(cmd) => lab(cmd),
        Command::Run(args) => run::run(args),
        Command::Watch(args) => run::watch(args),
        Command::Heal { run_dir } => heal(&run_dir),
        Command::Serve { store, addr } => serve::serve(&store, addr),
    }
}

fn heal(run_dir: &std::path::Path) -> anyhow::Result<u8> {
    use coherence_nemeses::fault::{pending, Journal};
    let path = RunDir::new(run_dir).journal();
    anyhow::ensure!(
        path.exists(),
        "{} has no {}: point at the run directory of a run with faults",
        run_dir.display(),
        RunDir::JOURNAL
    );
    let left = pending(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if left.is_empty() {
        println!(
            "nothing to heal: every fault in {} was healed",
            path.display()
        );
        return Ok(EXIT_VALID);
    }
    let cluster = crate::nemesis::Target::of_run(run_dir)?.cluster();
    let nodes = cluster.nodes.as_ref();
    let mut journal = Journal::open(&path)?;
    for (seq, fault) in &left {
        fault
            .heal(nodes)
            .with_context(|| format!("cannot heal fault {seq} ({})", fault.start_f()))?;
        let traces = fault.traces(nodes)?;
        anyhow::ensure!(
            traces.is_empty(),
            "fault {seq} is still in place after healing:\n  {}",
            traces.join("\n  ")
        );
        journal.healed(*seq)?;
        println!(
            "healed fault {seq}: {} (verified: nothing of it remains)",
            fault.start_f()
        );
    }
    println!(
        "healed {} fault(s) left by the run in {}",
        left.len(),
        run_dir.display()
    );
    Ok(EXIT_VALID)
}

fn lab(cmd: LabCommand) -> anyhow::Result<u8> {
    use coherence_lab::cluster;
    match cmd {
        LabCommand::Up {
            regions,
            invalidator,
            sync_replication,
            service,
        } => {
            let opts = cluster::UpOptions {
                regions,
                design: invalidator,
                sync_replication,
                service,
            };
            match cluster::up(&opts)? {
                cluster::UpOutcome::AlreadyUp(state) => println!(
                    "the lab is already up ({} regions, invalidator {}); `coherence lab down` first to start afresh",
                    state.regions, state.design
                ),
                cluster::UpOutcome::Started {
                    took,
                    cleaned_remains,
                } => {
                    if cleaned_remains {
                        println!("cleaned the remains of an earlier lab");
                    }
                    println!(
                        "the lab is up in {:.1} s: {regions} regions, invalidator {invalidator}, services {service}{}",
                        took.as_secs_f64(),
                        if sync_replication { ", synchronous replication" } else { "" }
                    );
                    return print_status();
                }
            }
            Ok(EXIT_VALID)
        }
        LabCommand::Status => print_status(),
        LabCommand::Down => {
            let r = cluster::down()?;
            println!(
                "the lab is down in {:.1} s: killed {} processes, removed {} namespaces{}{}",
                r.took.as_secs_f64(),
                r.processes,
                r.namespaces,
                if r.bridge { ", the bridge" } else { "" },
                if r.dir { " and the lab directory" } else { "" }
            );
            Ok(EXIT_VALID)
        }
        LabCommand::Exec { host, command } => {
            let code = cluster::exec(&host, &command)?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
        LabCommand::Service(args) => {
            service(args)?;
            Ok(EXIT_VALID)
        }
        LabCommand::Invalidator {
            design,
            regions,
            log,
        } => {
            coherence_lab::invalidator::run(coherence_lab::invalidator::Options {
                design,
                regions,
                log,
                db: coherence_lab::invalidator::db_servers(regions),
            })?;
            Ok(EXIT_VALID)
        }
    }
}

/// `lab service`: the options as the flags say (the lab region's by default), then run.
fn service(args: ServiceArgs) -> anyhow::Result<()> {
    use coherence_lab::service::{self, Options};
    let mut opts = match (&args.redis, args.db.is_empty(), args.listen) {
        // Nothing of the lab is used: any region name goes.
        (Some(redis), false, Some(listen)) => Options::new(
            args.design,
            listen,
            Options::fixed_cache(&args.region, redis),
            args.db.clone(),
        ),
        _ => Options::lab(args.design, &args.region, args.regions)?,
    };
    if let Some(listen) = args.listen {
        opts.listen = listen;
    }
    if let Some(redis) = &args.redis {
        opts.cache = Options::fixed_cache(&args.region, redis);
    }
    if !args.db.is_empty() {
        opts.db = args.db;
    }
    anyhow::ensure!(args.fill_ttl_ms > 0, "--fill-ttl-ms must be at least 1");
    opts.fill_ttl = Duration::from_millis(args.fill_ttl_ms);
    opts.double_delete_delay = Duration::from_millis(args.double_delete_delay_ms);
    service::run(opts)
}

/// `lab status`: what every server is; exit 0 when all answer, 1 when some do not
/// (named on the last line), 3 when the lab is not up.
fn print_status() -> anyhow::Result<u8> {
    let Some((state, hosts)) = coherence_lab::cluster::status()? else {
        println!("the lab is down; start it with `coherence lab up`");
        return Ok(EXIT_UNKNOWN);
    };
    println!(
        "{:<6} {:<12} {:<26} {:<12} {:>6}  {:<8} now",
        "host", "address", "role at start", "server", "port", "answers"
    );
    let mut down = Vec::new();
    for h in hosts {
        for s in &h.servers {
            println!(
                "{:<6} {:<12} {:<26} {:<12} {:>6}  {:<8} {}",
                h.host.name,
                h.host.addr,
                h.host.role.describe(),
                s.kind,
                if s.port == 0 {
                    "-".to_string()
                } else {
                    s.port.to_string()
                },
                if s.answers { "yes" } else { "NO" },
                s.role
            );
            if !s.answers {
                down.push(format!("{} on {}", s.kind, h.host.name));
            }
        }
    }
    println!(
        "invalidator: {}; services: {}; lab files in {}",
        state.design,
        state.service,
        coherence_lab::lab_dir().display()
    );
    if down.is_empty() {
        return Ok(EXIT_VALID);
    }
    println!(
        "down: {} (the next `coherence run --lab` restarts what it can; `coherence lab down` and `lab up` start afresh)",
        down.join(", ")
    );
    Ok(EXIT_ANOMALIES)
}

fn check(args: CheckArgs) -> anyhow::Result<u8> {
    let bound = u64::try_from(args.staleness_bound.as_nanos()).unwrap_or(u64::MAX);
    let live = if args.follow {
        let file = if args.path.is_dir() {
            RunDir::new(&args.path).history()
        } else {
            args.path.clone()
        };
        Some(follow::follow(
            &file,
            bound,
            args.invalidation_bound
                .map(|b| u64::try_from(b.as_nanos()).unwrap_or(u64::MAX)),
            args.checks.as_deref(),
            args.until_idle,
        )?)
    } else {
        None
    };
    let path = resolve_history(&args.path).map_err(anyhow::Error::msg)?;
    let inputs = inputs_of(&path);
    let inputs: Vec<&std::path::Path> = inputs.iter().map(PathBuf::as_path).collect();
    let out = args.out.as_ref().map(RunDir::new);
    let junit: Vec<&std::path::Path> = args.junit.iter().map(PathBuf::as_path).collect();
    let options = Options {
        staleness_bound: u64::try_from(args.staleness_bound.as_nanos()).unwrap_or(u64::MAX),
        anomaly_limit: args.anomaly_limit,
        checks: args.checks.clone(),
        invalidation_bound: args
            .invalidation_bound
            .map(|b| u64::try_from(b.as_nanos()).unwrap_or(u64::MAX)),
        ..Options::default()
    };
    let Written {
        results,
        report: report_path,
    } = check_and_write(
        &path,
        &options,
        progress::Bar::for_file(&path),
        &Outputs {
            dir: out.as_ref(),
            junit: &junit,
            inputs: &inputs,
            live,
        },
    )?;
    let mut stdout = std::io::stdout().lock();
    match args.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut stdout, &results)?;
            writeln!(stdout)?;
        }
        Format::Text => write!(stdout, "{}", text::render(&results, args.explain))?,
    }
    if let Some(file) = report_path {
        // On stderr with --format json, so stdout stays only JSON.
        let file = bound::shown(&file.display().to_string());
        match args.format {
            Format::Text => writeln!(stdout, "report: {file}")?,
            Format::Json => eprintln!("report: {file}"),
        }
    }
    Ok(exit_status(results.verdict))
}

fn gen(args: GenArgs) -> anyhow::Result<u8> {
    use coherence_sim::{generate, SimConfig};
    let config = SimConfig {
        seed: args.seed,
        ops: args.ops,
        keys: args.keys,
        concurrency: args.concurrency,
        regions: args.regions,
        mode: args.mode,
        ..SimConfig::default()
    };
    anyhow::ensure!(args.keys > 0, "--keys must be at least 1");
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.regions > 0, "--regions must be at least 1");
    let mut writer = coherence_store::HistoryWriter::create(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let summary = generate(&config, &mut writer)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    writer
        .finish()
        .with_context(|| format!("cannot finish {}", args.out.display()))?;
    eprintln!(
        "wrote {}: {} operations, {} events (seed {}, mode {})",
        args.out.display(),
        summary.ops,
        summary.events,
        args.seed,
        args.mode
    );
    Ok(EXIT_VALID)
}
