//! Bringing the lab up and down, and asking how it is.
//!
//! `up` is idempotent in the way users need: on a lab that answers it says so; over the
//! remains of a dead lab (namespaces left, servers gone) it cleans them and starts
//! afresh. `down` trusts nothing but the system itself: it kills every process in every
//! namespace with the lab's prefix, removes the namespaces and the bridge, and deletes
//! the lab directory.

use crate::layout::{
    self, Host, Role, BRIDGE, BRIDGE_ADDR, NS_PREFIX, PG_PORT, REDIS_PORT, SENTINEL_PORT,
    SERVICE_PORT,
};
use crate::service::ServiceDesign;
use crate::{clock, lab_dir, schema, Design};
use anyhow::{anyhow, bail, Context, Result};
use coherence_nemeses::clock::Skew;
use coherence_nemeses::fault::{Fault, Journal, Nodes as _};
use coherence_nemeses::remote::{shell_words, Netns, Remote, RemoteError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How to bring the lab up.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Regions (each with a Redis primary, replica and three Sentinels).
    pub regions: u32,
    /// The invalidation pipeline to run.
    pub design: Design,
    /// Synchronous streaming replication to the standby.
    pub sync_replication: bool,
    /// The design the regions' HTTP services start in.
    pub service: ServiceDesign,
}

/// What `up` did.
#[derive(Debug)]
pub enum UpOutcome {
    /// The lab was started.
    Started {
        /// How long it took.
        took: Duration,
        /// Whether the remains of a dead lab were cleaned first.
        cleaned_remains: bool,
    },
    /// A lab was already up and answering; nothing was changed.
    AlreadyUp(State),
}

/// What `down` removed.
#[derive(Debug, Default)]
pub struct DownReport {
    /// Namespaces removed.
    pub namespaces: usize,
    /// Processes killed.
    pub processes: usize,
    /// Whether the bridge was removed.
    pub bridge: bool,
    /// Whether the lab directory was removed.
    pub dir: bool,
    /// How long it took.
    pub took: Duration,
}

/// The lab as `up` made it, kept in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Regions.
    pub regions: u32,
    /// The invalidator running.
    pub design: Design,
    /// Whether replication is synchronous.
    pub sync_replication: bool,
    /// The PostgreSQL binaries used.
    pub pg_bin: PathBuf,
    /// The `coherence` executable that runs the invalidator and the services.
    pub exe: PathBuf,
    /// The design the regions' HTTP services run (a state written before there were
    /// services reads as the default).
    #[serde(default)]
    pub service: ServiceDesign,
}

impl State {
    fn path() -> PathBuf {
        lab_dir().join("state.json")
    }

    /// The state of the lab, if one was brought up.
    pub fn load() -> Result<Option<State>> {
        let path = State::path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
                format!(
                    "cannot read the lab state {}: run `coherence lab down`",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn save(&self) -> Result<()> {
        let path = State::path();
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The lab's hosts.
    pub fn hosts(&self) -> Vec<Host> {
        layout::hosts(self.regions)
    }

    /// The host that has `role` at start (one of the roles there is one of).
    pub fn host(&self, role: Role) -> Host {
        self.hosts()
            .into_iter()
            .find(|h| h.role == role)
            .expect("the layout has one host of each single role")
    }
}

/// Fails with a clear message unless running as root.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the lab needs root: it makes network namespaces, a bridge and iptables rules; \
             run it as root (for example with sudo)"
        );
    }
    Ok(())
}

/// Runs a command in the machine's own namespace; fails with what it printed.
fn sh(argv: &[&str]) -> Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .with_context(|| {
            format!(
                "cannot run `{}`: is it installed? (scripts/setup installs it)",
                argv[0]
            )
        })?;
    if !out.status.success() {
        bail!(
            "`{}` exited with {}: {}",
            shell_words(argv),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The remote of a host.
pub fn remote(host: &Host) -> Netns {
    Netns::new(host.name.clone(), host.namespace())
}

/// The namespaces with the lab's prefix that exist now.
pub fn lab_namespaces() -> Result<Vec<String>> {
    let list = sh(&["ip", "netns", "list"])?;
    Ok(list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NS_PREFIX))
        .map(String::from)
        .collect())
}

/// The processes running in a namespace.
pub fn namespace_pids(ns: &str) -> Result<Vec<i32>> {
    Ok(sh(&["ip", "netns", "pids", ns])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// The newest PostgreSQL server binaries on this machine.
fn find_pg_bin() -> Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v = e.file_name().to_string_lossy().parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("postgres").exists().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        anyhow!("PostgreSQL is not installed: run scripts/setup (it installs postgresql)")
    })
}

fn require_tools() -> Result<()> {
    for tool in [
        "ip",
        "iptables",
        "redis-server",
        "redis-sentinel",
        "setpriv",
    ] {
        if Command::new("sh")
            .args(["-c", &shell_words(&["command", "-v", tool])])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            bail!("{tool} is not installed: run scripts/setup (it installs what the lab needs)");
        }
    }
    Ok(())
}

fn host_dir(host: &Host) -> PathBuf {
    lab_dir().join(&host.name)
}

/// A tokio runtime for the clients the lab uses.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start an async runtime")
}

/// Connects to PostgreSQL at `addr` as the superuser.
pub async fn pg_connect(addr: std::net::Ipv4Addr) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_postgres::connect(
            &format!("host={addr} port={PG_PORT} user=postgres dbname=postgres connect_timeout=3"),
            tokio_postgres::NoTls,
        ),
    )
    .await
    .map_err(|_| anyhow!("connecting to PostgreSQL at {addr} timed out"))??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A Redis connection to `addr:port` with short timeouts.
pub fn redis_connect(addr: std::net::Ipv4Addr, port: u16) -> Result<redis::Connection> {
    let client = redis::Client::open(format!("redis://{addr}:{port}/"))?;
    let con = client.get_connection_with_timeout(Duration::from_secs(2))?;
    con.set_read_timeout(Some(Duration::from_secs(2)))?;
    con.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(con)
}

/// Polls `check` until it returns true, or fails after `timeout` naming `what`.
fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not happen within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Brings the lab up.
pub fn up(opts: &UpOptions) -> Result<UpOutcome> {
    require_root()?;
    if !(1..=layout::MAX_REGIONS).contains(&opts.regions) {
        bail!("--regions must be between 1 and {}", layout::MAX_REGIONS);
    }
    require_tools()?;
    let pg_bin = find_pg_bin()?;
    let started = Instant::now();

    let mut cleaned_remains = false;
    if let Some(state) = State::load()? {
        if answers(&state) {
            return Ok(UpOutcome::AlreadyUp(state));
        }
    }
    if !lab_namespaces()?.is_empty() || lab_dir().exists() || bridge_exists() {
        down()?;
        cleaned_remains = true;
    }

    let exe = std::env::current_exe().context("cannot find the coherence executable")?;
    let state = State {
        regions: opts.regions,
        design: opts.design,
        sync_replication: opts.sync_replication,
        pg_bin,
        exe,
        service: opts.service,
    };
    std::fs::create_dir_all(lab_dir())
        .with_context(|| format!("cannot create {}", lab_dir().display()))?;
    state.save()?;
    let result = build(&state);
    if let Err(e) = result {
        // Leave nothing half-made behind.
        let _ = down();
        return Err(e.context("the lab did not come up; everything it started was removed"));
    }
    Ok(UpOutcome::Started {
        took: started.elapsed(),
        cleaned_remains,
    })
}

fn bridge_exists() -> bool {
    Path::new("/sys/class/net").join(BRIDGE).exists()
}

fn build(state: &State) -> Result<()> {
    let hosts = state.hosts();
    network(&hosts)?;
    for h in &hosts {
        std::fs::create_dir_all(host_dir(h))?;
    }
    clock::install().context("cannot install the clock shim")?;
    let rt = runtime()?;
    let db1 = state.host(Role::DbPrimary);
    let db2 = state.host(Role::DbStandby);
    // Redis first: it starts in milliseconds while PostgreSQL initialises.
    for h in &hosts {
        match h.role {
            Role::RedisPrimary => start_redis(h, None)?,
            Role::RedisReplica => {
                let primary = primary_of(&hosts, h);
                start_redis(h, Some(primary.addr))?;
            }
            _ => {}
        }
    }
    // Sentinels learn a region's replicas from its primary's INFO, which they ask every
    // 10 s: start them once the replicas are attached, or a failover in their first
    // 10 s finds "no good replica".
    for h in hosts.iter().filter(|h| h.role == Role::RedisPrimary) {
        wait_until(
            &format!("{}'s replica attaching", h.name),
            Duration::from_secs(20),
            || {
                redis_connect(h.addr, REDIS_PORT)
                    .and_then(|mut c| {
                        Ok(redis::cmd("INFO")
                            .arg("replication")
                            .query::<String>(&mut c)?)
                    })
                    .is_ok_and(|info| info.contains("connected_slaves:1"))
            },
        )?;
    }
    for h in hosts.iter().filter(|h| h.ports().contains(&SENTINEL_PORT)) {
        start_sentinel(h, primary_of(&hosts, h))?;
    }
    start_primary(state, &db1)?;
    rt.block_on(async {
        let client = pg_connect(db1.addr).await?;
        client
            .batch_execute(schema::SCHEMA)
            .await
            .context("cannot create the schema")?;
        client
            .batch_execute(&schema::triggers(state.design))
            .await
            .context("cannot install the invalidation trigger")?;
        anyhow::Ok(())
    })?;
    start_standby(state, &db1, &db2)?;
    if state.sync_replication {
        rt.block_on(async {
            let client = pg_connect(db1.addr).await?;
            // Two statements: ALTER SYSTEM cannot run inside a (multi-statement) transaction.
            client
                .batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'db2'")
                .await
                .context("cannot make replication synchronous")?;
            client.batch_execute("SELECT pg_reload_conf()").await?;
            anyhow::Ok(())
        })?;
    }
    start_invalidator(state)?;
    start_services(state, state.service)?;
    // Ready to fail over: every Sentinel knows its region's replica.
    for h in hosts.iter().filter(|h| h.ports().contains(&SENTINEL_PORT)) {
        let region = h.region.clone().unwrap_or_default();
        wait_until(
            &format!("the Sentinel on {} to know {region}'s replica", h.name),
            Duration::from_secs(20),
            || {
                let sentinel = format!("{}:{SENTINEL_PORT}", h.addr);
                let master = layout::master_name(&region);
                blocking(
                    SENTINEL_WAIT,
                    coherence_cache::sentinel::replicas(&sentinel, master),
                )
                .is_ok_and(|replicas| replicas > 0)
            },
        )?;
    }
    wait_until("every server answering", Duration::from_secs(20), || {
        answers(state)
    })
}

/// The primary a replica or Sentinel host of a region follows at start.
fn primary_of<'h>(hosts: &'h [Host], host: &Host) -> &'h Host {
    hosts
        .iter()
        .find(|h| h.role == Role::RedisPrimary && h.region == host.region)
        .expect("every region has a primary")
}

fn network(hosts: &[Host]) -> Result<()> {
    let bridge = BRIDGE;
    sh(&["ip", "link", "add", bridge, "type", "bridge"])?;
    sh(&[
        "ip",
        "addr",
        "add",
        &format!("{BRIDGE_ADDR}/24"),
        "dev",
        bridge,
    ])?;
    sh(&["ip", "link", "set", bridge, "up"])?;
    for h in hosts {
        let ns = h.namespace();
        let veth = h.veth();
        sh(&["ip", "netns", "add", &ns])?;
        sh(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        sh(&["ip", "link", "set", &veth, "master", bridge, "up"])?;
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", h.addr),
            "dev",
            "eth0",
        ])?;
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

fn start_redis(h: &Host, replica_of: Option<std::net::Ipv4Addr>) -> Result<()> {
    let dir = host_dir(h);
    let addr = h.addr.to_string();
    let port = REDIS_PORT.to_string();
    let dir_s = dir.display().to_string();
    let mut argv = vec![
        "redis-server",
        "--bind",
        &addr,
        "--port",
        &port,
        "--dir",
        &dir_s,
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--daemonize",
        "no",
    ];
    let primary;
    if let Some(p) = replica_of {
        primary = p.to_string();
        argv.extend(["--replicaof", &primary, "6379"]);
    }
    spawn_server(h, &argv, &dir.join("redis.log"))
}

fn start_sentinel(h: &Host, primary: &Host) -> Result<()> {
    let dir = host_dir(h);
    let conf = dir.join("sentinel.conf");
    // A restarted Sentinel keeps the configuration it rewrote: what it learned of
    // failovers since.
    if !conf.exists() {
        write_sentinel_conf(h, &conf, primary)?;
    }
    spawn_server(
        h,
        &["redis-sentinel", &conf.display().to_string()],
        &dir.join("sentinel.log"),
    )
}

fn write_sentinel_conf(h: &Host, conf: &Path, primary: &Host) -> Result<()> {
    let dir = host_dir(h);
    let region = primary.region.as_deref().expect("a region");
    let name = layout::master_name(region);
    std::fs::write(
        conf,
        format!(
            "bind {addr}\nport {SENTINEL_PORT}\ndir {dir}\nprotected-mode no\n\
             sentinel monitor {name} {primary} {REDIS_PORT} 2\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 5000\n\
             sentinel parallel-syncs {name} 1\n",
            addr = h.addr,
            dir = dir.display(),
            primary = primary.addr,
        ),
    )?;
    Ok(())
}

fn as_postgres(pg_bin: &Path, tool: &str) -> Vec<String> {
    vec![
        "setpriv".into(),
        "--reuid=postgres".into(),
        "--regid=postgres".into(),
        "--init-groups".into(),
        "--".into(),
        pg_bin.join(tool).display().to_string(),
    ]
}

/// Runs one of PostgreSQL's tools on a host as the postgres user, to completion.
fn run_as_postgres(state: &State, h: &Host, tool: &str, args: &[&str]) -> Result<()> {
    let mut argv = as_postgres(&state.pg_bin, tool);
    argv.extend(args.iter().map(|a| a.to_string()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    remote(h).run(&argv)?;
    Ok(())
}

fn chown_postgres(path: &Path) -> Result<()> {
    sh(&[
        "chown",
        "-R",
        "postgres:postgres",
        &path.display().to_string(),
    ])?;
    Ok(())
}

/// Removes the lock files of a PostgreSQL that was killed: a killed postmaster may
/// linger as a zombie until init reaps it, and PostgreSQL takes the live pid in its lock
/// files for a running server. A lock whose pid is no running postgres is stale.
fn remove_stale_pg_locks(dir: &Path, data: &Path) {
    let running = |lock: &Path| {
        let pid = std::fs::read_to_string(lock)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        pid.is_some_and(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("postgres"))
        })
    };
    for lock in [
        data.join("postmaster.pid"),
        dir.join(format!(".s.PGSQL.{PG_PORT}.lock")),
    ] {
        if lock.exists() && !running(&lock) {
            let _ = std::fs::remove_file(&lock);
        }
    }
}

fn start_pg(state: &State, h: &Host, data: &Path) -> Result<()> {
    let dir = host_dir(h);
    remove_stale_pg_locks(&dir, data);
    let mut argv = as_postgres(&state.pg_bin, "postgres");
    argv.extend(["-D".into(), data.display().to_string()]);
    for setting in [
        format!("listen_addresses={}", h.addr),
        format!("port={PG_PORT}"),
        format!("unix_socket_directories={}", dir.display()),
        "wal_level=logical".into(),
        "max_replication_slots=10".into(),
        "track_commit_timestamp=on".into(),
        "max_wal_senders=10".into(),
        "hot_standby=on".into(),
        "fsync=off".into(),
        "synchronous_commit=on".into(),
        "shared_buffers=64MB".into(),
        "max_connections=200".into(),
    ] {
        argv.extend(["-c".into(), setting]);
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    spawn_server(h, &argv, &dir.join("postgres.log"))?;
    let rt = runtime()?;
    let log = dir.join("postgres.log");
    wait_until(
        &format!("PostgreSQL on {} answering", h.name),
        Duration::from_secs(20),
        || rt.block_on(async { pg_connect(h.addr).await.is_ok() }),
    )
    .map_err(|e| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow!(
            "{e}; the end of {}:\n  {}",
            log.display(),
            tail.join("\n  ")
        )
    })
}

fn start_primary(state: &State, h: &Host) -> Result<()> {
    let dir = host_dir(h);
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    chown_postgres(&dir)?;
    let data_s = data.display().to_string();
    run_as_postgres(
        state,
        h,
        "initdb",
        &["-D", &data_s, "-U", "postgres", "--auth=trust", "--no-sync"],
    )?;
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhost all all 10.77.0.0/24 trust\nhost replication all 10.77.0.0/24 trust\n",
    )?;
    start_pg(state, h, &data)
}

fn start_standby(state: &State, primary: &Host, h: &Host) -> Result<()> {
    let dir = host_dir(h);
    let data = dir.join("data");
    chown_postgres(&dir)?;
    let source = format!(
        "host={} port={PG_PORT} user=postgres application_name={}",
        primary.addr, h.name
    );
    let data_s = data.display().to_string();
    run_as_postgres(
        state,
        h,
        "pg_basebackup",
        &[
            "-D",
            &data_s,
            "-d",
            &source,
            "-R",
            "-X",
            "stream",
            // Without it the clone waits for the primary's next spread checkpoint:
            // tens of seconds after a failover.
            "--checkpoint=fast",
            "--no-sync",
        ],
    )?;
    start_pg(state, h, &data)
}

/// Starts the invalidator of the state's design (nothing for `none`).
pub fn start_invalidator(state: &State) -> Result<()> {
    if state.design == Design::None {
        return Ok(());
    }
    let host = state.host(Role::Invalidator);
    let dir = host_dir(&host);
    let exe = state.exe.display().to_string();
    let regions = state.regions.to_string();
    let deletions = dir.join("deletions.jsonl").display().to_string();
    spawn_server(
        &host,
        &[
            &exe,
            "lab",
            "invalidator",
            "--design",
            &state.design.to_string(),
            "--regions",
            &regions,
            "--log",
            &deletions,
        ],
        &dir.join("invalidator.log"),
    )
}

/// Starts the HTTP service of every region in `design`, waits until each answers
/// `/health` with 200, and records the design in the lab's state (returned). Services
/// that run already are left alone: [`restart_services`] changes the design. An error
/// names the host that does not answer and the end of its log.
pub fn start_services(state: &State, design: ServiceDesign) -> Result<State> {
    let mut state = state.clone();
    state.service = design;
    state.save()?;
    let hosts = crate::service::hosts(state.regions);
    for h in &hosts {
        if !service_pids(h)?.is_empty() {
            continue;
        }
        start_service(&state, h)?;
    }
    for h in &hosts {
        wait_for_service(h)?;
    }
    Ok(state)
}

/// Stops every region's HTTP service (kills every process on its host).
pub fn stop_services(state: &State) -> Result<()> {
    for h in crate::service::hosts(state.regions) {
        kill_namespace(&h.namespace())?;
    }
    Ok(())
}

/// Stops every region's HTTP service and starts it again in `design`, as a campaign
/// wants it; waits until each answers `/health` with 200. The lab's state, updated.
pub fn restart_services(state: &State, design: ServiceDesign) -> Result<State> {
    stop_services(state)?;
    start_services(state, design)
}

/// The base URL of a region's HTTP service (`http://10.77.0.24:8080`).
pub fn service_url(host: &Host) -> String {
    format!("http://{}:{SERVICE_PORT}", host.addr)
}

/// How long a service may take to answer `/health` after it was started.
const SERVICE_START: Duration = Duration::from_secs(20);

fn service_log(h: &Host) -> PathBuf {
    host_dir(h).join("service.log")
}

fn service_pids(h: &Host) -> Result<Vec<i32>> {
    Ok(namespace_pids(&h.namespace())?
        .into_iter()
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd)
                .replace('\0', " ")
                .contains("lab service")
        })
        .collect())
}

/// Starts the service of one app host in the state's design (without waiting).
fn start_service(state: &State, h: &Host) -> Result<()> {
    let exe = state.exe.display().to_string();
    let design = state.service.to_string();
    let region = h.region.clone().unwrap_or_default();
    let listen = format!("{}:{SERVICE_PORT}", h.addr);
    let regions = state.regions.to_string();
    spawn_server(
        h,
        &[
            &exe,
            "lab",
            "service",
            "--design",
            &design,
            "--region",
            &region,
            "--regions",
            &regions,
            "--listen",
            &listen,
        ],
        &service_log(h),
    )
}

fn wait_for_service(h: &Host) -> Result<()> {
    wait_until(
        &format!("the service on {} answering /health", h.name),
        SERVICE_START,
        || service_health(h.addr),
    )
    .map_err(|e| {
        let log = service_log(h);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow!(
            "{e}; see its log {}:\n  {}",
            log.display(),
            tail.join("\n  ")
        )
    })
}

/// Whether the service at `addr` answers `GET /health` with 200 (within a second).
pub fn service_health(addr: std::net::Ipv4Addr) -> bool {
    use std::io::{Read, Write};
    let ask = || -> std::io::Result<bool> {
        let sock = std::net::SocketAddr::from((addr, SERVICE_PORT));
        let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(1)))?;
        write!(
            s,
            "GET /health HTTP/1.1\r\nHost: {addr}:{SERVICE_PORT}\r\nConnection: close\r\n\r\n"
        )?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.1 200"))
    };
    ask().unwrap_or(false)
}

/// Starts a server on a host in the background, with the clock shim preloaded (so
/// clock faults reach it) and its output appended to `log`.
fn spawn_server(h: &Host, argv: &[&str], log: &Path) -> Result<()> {
    let argv = clock::preloaded(&h.name, argv);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    remote(h).spawn(&argv, log)?;
    Ok(())
}

/// Stops the invalidator (kills every process on its host).
pub fn stop_invalidator(state: &State) -> Result<()> {
    let host = state.host(Role::Invalidator);
    kill_namespace(&host.namespace())?;
    Ok(())
}

fn kill_namespace(ns: &str) -> Result<usize> {
    let pids = namespace_pids(ns)?;
    for &pid in &pids {
        // SAFETY: kill has no memory preconditions; a pid that is gone is fine.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    // Wait until they are gone, so that ports and files are free.
    let _ = wait_until(
        &format!("the processes of {ns} exiting"),
        Duration::from_secs(5),
        || namespace_pids(ns).map(|p| p.is_empty()).unwrap_or(true),
    );
    Ok(pids.len())
}

/// Takes the lab down: every process, namespace, the bridge and the lab directory.
pub fn down() -> Result<DownReport> {
    require_root()?;
    let started = Instant::now();
    let mut report = DownReport::default();
    for ns in lab_namespaces()? {
        report.processes += kill_namespace(&ns)?;
        if let Err(e) = sh(&["ip", "netns", "del", &ns]) {
            // Gone meanwhile (another `down`) is as good as deleted.
            if lab_namespaces()?.contains(&ns) {
                return Err(e);
            }
        }
        report.namespaces += 1;
    }
    if bridge_exists() {
        sh(&["ip", "link", "del", BRIDGE])?;
        report.bridge = true;
    }
    // The kernel tears a deleted namespace down in the background; delete our ends of
    // the veth pairs now, so that an `up` right after finds none of them.
    for link in sh(&["ip", "-o", "link", "show"])?.lines() {
        let name = link.split(':').nth(1).map(str::trim).unwrap_or_default();
        let name = name.split('@').next().unwrap_or_default();
        if name.starts_with("coh") && !name.is_empty() {
            let _ = sh(&["ip", "link", "del", name]);
        }
    }
    let dir = lab_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
        report.dir = true;
    }
    report.took = started.elapsed();
    Ok(report)
}

/// One host as `status` sees it.
#[derive(Debug, Clone)]
pub struct HostStatus {
    /// The host.
    pub host: Host,
    /// Each server: what it is, its port, whether it answers and its current role.
    pub servers: Vec<ServerStatus>,
}

/// One server on a host.
#[derive(Debug, Clone)]
pub struct ServerStatus {
    /// `postgres`, `redis`, `sentinel`, `invalidator` or `service`.
    pub kind: &'static str,
    /// Its port (0 for the invalidator).
    pub port: u16,
    /// Whether it answered.
    pub answers: bool,
    /// Its role now (`primary`, `replica`, `standby`, or what Sentinel says).
    pub role: String,
}

/// How every host is, or `None` when the lab is down.
pub fn status() -> Result<Option<(State, Vec<HostStatus>)>> {
    let Some(state) = State::load()? else {
        return Ok(None);
    };
    let rt = runtime()?;
    let running_invalidator = |h: &Host| {
        namespace_pids(&h.namespace())
            .map(|p| !p.is_empty())
            .unwrap_or(false)
    };
    let hosts = state
        .hosts()
        .into_iter()
        .map(|h| {
            let mut servers = Vec::new();
            match h.role {
                Role::DbPrimary | Role::DbStandby => {
                    let role = rt.block_on(async {
                        let client = pg_connect(h.addr).await.ok()?;
                        let row = client
                            .query_one("SELECT pg_is_in_recovery()", &[])
                            .await
                            .ok()?;
                        Some(if row.get::<_, bool>(0) {
                            "standby"
                        } else {
                            "primary"
                        })
                    });
                    servers.push(ServerStatus {
                        kind: "postgres",
                        port: PG_PORT,
                        answers: role.is_some(),
                        role: role.unwrap_or("-").to_string(),
                    });
                }
                Role::Invalidator => servers.push(ServerStatus {
                    kind: "invalidator",
                    port: 0,
                    answers: state.design == Design::None || running_invalidator(&h),
                    role: state.design.to_string(),
                }),
                Role::Service => servers.push(ServerStatus {
                    kind: "service",
                    port: SERVICE_PORT,
                    answers: service_health(h.addr),
                    role: state.service.to_string(),
                }),
                _ => {}
            }
            if h.ports().contains(&REDIS_PORT) {
                let role = redis_role(h.addr).ok();
                servers.push(ServerStatus {
                    kind: "redis",
                    port: REDIS_PORT,
                    answers: role.is_some(),
                    role: role.unwrap_or_else(|| "-".into()),
                });
            }
            if h.ports().contains(&SENTINEL_PORT) {
                let master = sentinel_master(h.addr, h.region.as_deref().unwrap_or("")).ok();
                servers.push(ServerStatus {
                    kind: "sentinel",
                    port: SENTINEL_PORT,
                    answers: master.is_some(),
                    role: master.map_or_else(|| "-".into(), |m| format!("primary is {m}")),
                });
            }
            HostStatus { host: h, servers }
        })
        .collect();
    Ok(Some((state, hosts)))
}

/// The replication role a Redis reports (`master` or `slave`, as Redis says it).
pub fn redis_role(addr: std::net::Ipv4Addr) -> Result<String> {
    let mut con = redis_connect(addr, REDIS_PORT)?;
    let info: String = redis::cmd("INFO").arg("replication").query(&mut con)?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("role:"))
        .map(|r| {
            if r.trim() == "master" {
                "primary".into()
            } else {
                "replica".into()
            }
        })
        .unwrap_or_else(|| "unknown".into()))
}

/// The address of the region's primary, as the Sentinel at `addr` sees it.
pub fn sentinel_master(addr: std::net::Ipv4Addr, region: &str) -> Result<String> {
    let sentinel = format!("{addr}:{SENTINEL_PORT}");
    blocking(
        SENTINEL_WAIT,
        coherence_cache::sentinel::primary(&sentinel, region),
    )
}

/// How long the lab waits for a Sentinel's answer (connecting, then asking).
const SENTINEL_WAIT: Duration = Duration::from_secs(4);

/// Waits up to `within` for a Redis question, from synchronous code: on a thread and
/// runtime of its own, so that it may be asked inside an async runtime as well (a heal
/// during a run restarts a Redis in the role its Sentinels say).
fn blocking<T: Send>(
    within: Duration,
    question: impl std::future::Future<Output = redis::RedisResult<T>> + Send,
) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            runtime()?.block_on(async {
                tokio::time::timeout(within, question)
                    .await
                    .map_err(|_| anyhow!("no answer within {within:?}"))?
                    .map_err(anyhow::Error::from)
            })
        })
        .join()
        .map_err(|_| anyhow!("a Redis question panicked"))?
    })
}

/// True when every server of the lab answers.
fn answers(state: &State) -> bool {
    match status() {
        Ok(Some((s, hosts))) => {
            s.regions == state.regions && hosts.iter().all(|h| h.servers.iter().all(|s| s.answers))
        }
        _ => false,
    }
}

/// Runs a command on a lab host, with the terminal's stdin and stdout; returns its exit
/// status.
pub fn exec(host: &str, argv: &[String]) -> Result<i32> {
    require_root()?;
    let state = State::load()?
        .ok_or_else(|| anyhow!("the lab is down: start it with `coherence lab up`"))?;
    let h = state
        .hosts()
        .into_iter()
        .find(|h| h.name == host)
        .ok_or_else(|| {
            let names: Vec<String> = state.hosts().into_iter().map(|h| h.name).collect();
            anyhow!("no lab host {host:?}: the hosts are {}", names.join(", "))
        })?;
    if argv.is_empty() {
        bail!("give a command to run after `--`, e.g. `coherence lab exec {host} -- ip addr`");
    }
    let status = Command::new("ip")
        .args(["netns", "exec", &h.namespace()])
        .args(argv)
        .status()
        .context("cannot run `ip netns exec`")?;
    Ok(status.code().unwrap_or(1))
}

/// A server of the running lab, for clients: the name histories use and `host:port`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The host's name.
    pub name: String,
    /// `address:port`.
    pub addr: String,
}

/// A region of the running lab: its current primary (as Sentinel says) and replica.
#[derive(Debug, Clone)]
pub struct RegionEndpoints {
    /// The region's name.
    pub name: String,
    /// The current primary.
    pub primary: Endpoint,
    /// A replica of it.
    pub replica: Option<Endpoint>,
    /// The region's Sentinels, `address:port`.
    pub sentinels: Vec<String>,
    /// The region's name at the Sentinels.
    pub master_name: String,
    /// The base URL of the region's HTTP service (`http://10.77.0.24:8080`).
    pub service: String,
}

/// The running lab's endpoints.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The current database primary.
    pub db_primary: Endpoint,
    /// The current standby.
    pub db_standby: Endpoint,
    /// Every region's caches.
    pub regions: Vec<RegionEndpoints>,
}

/// The database host that is a primary now, and the other one; an error unless there
/// is exactly one primary and it answers.
pub fn db_roles(state: &State) -> Result<(Host, Host)> {
    let db = [state.host(Role::DbPrimary), state.host(Role::DbStandby)];
    let rt = runtime()?;
    let roles: Vec<Option<bool>> = db
        .iter()
        .map(|h| {
            rt.block_on(async {
                let client = pg_connect(h.addr).await.ok()?;
                let row = client
                    .query_one("SELECT pg_is_in_recovery()", &[])
                    .await
                    .ok()?;
                Some(row.get::<_, bool>(0))
            })
        })
        .collect();
    match roles.as_slice() {
        [Some(false), Some(true)] | [Some(false), None] => Ok((db[0].clone(), db[1].clone())),
        [Some(true), Some(false)] | [None, Some(false)] => Ok((db[1].clone(), db[0].clone())),
        [Some(false), Some(false)] => bail!(
            "both {} and {} are PostgreSQL primaries (a split brain a failover left): \
             run `coherence heal` on the run, or restart the lab",
            db[0].name,
            db[1].name
        ),
        _ => bail!(
            "no PostgreSQL primary answers in the lab (see `coherence lab status`); \
             restart it with `coherence lab down` and `coherence lab up`"
        ),
    }
}

/// The running lab's endpoints: database primary and standby, and each region's caches.
pub fn endpoints(state: &State) -> Result<Endpoints> {
    let hosts = state.hosts();
    let db = |h: &Host| Endpoint {
        name: h.name.clone(),
        addr: format!("{}:{PG_PORT}", h.addr),
    };
    let mut regions = Vec::new();
    for n in 1..=state.regions {
        let region = layout::region(n);
        let caches: Vec<&Host> = hosts
            .iter()
            .filter(|h| h.region.as_deref() == Some(&region) && h.ports().contains(&REDIS_PORT))
            .collect();
        let sentinel = hosts
            .iter()
            .find(|h| h.region.as_deref() == Some(&region) && h.role == Role::Sentinel)
            .expect("a sentinel host");
        let sentinels: Vec<String> = hosts
            .iter()
            .filter(|h| h.region.as_deref() == Some(&region) && h.ports().contains(&SENTINEL_PORT))
            .map(|h| format!("{}:{SENTINEL_PORT}", h.addr))
            .collect();
        let primary_addr = sentinel_master(sentinel.addr, &region)
            .with_context(|| format!("cannot ask {}'s Sentinel for its primary", region))?;
        let endpoint = |h: &Host| Endpoint {
            name: h.name.clone(),
            addr: format!("{}:{REDIS_PORT}", h.addr),
        };
        let primary = caches
            .iter()
            .find(|h| endpoint(h).addr == primary_addr)
            .ok_or_else(|| {
                anyhow!("{region}'s Sentinel names {primary_addr}, which is no lab host")
            })?;
        let replica = caches
            .iter()
            .find(|h| h.name != primary.name)
            .map(|h| endpoint(h));
        let app = hosts
            .iter()
            .find(|h| h.region.as_deref() == Some(&region) && h.role == Role::Service)
            .expect("an app host");
        regions.push(RegionEndpoints {
            service: service_url(app),
            master_name: layout::master_name(&region).to_string(),
            name: region,
            primary: endpoint(primary),
            replica,
            sentinels,
        });
    }
    let (primary, standby) = db_roles(state)?;
    Ok(Endpoints {
        db_primary: db(&primary),
        db_standby: db(&standby),
        regions,
    })
}

/// What preparing the lab is told and tells: the run's heal journal, where whatever it
/// stops is journaled like a fault (so that every way out, and `coherence heal`, brings
/// it back); a flag that asks it to stop early (Ctrl-C, SIGTERM); and a sink for what it
/// is doing or waiting for.
pub struct Preparing<'a> {
    /// The run's heal journal.
    pub journal: &'a mut Journal,
    /// Set to stop: preparing restores what it stopped and returns [`Interrupted`].
    pub stop: &'a AtomicBool,
    /// Told each step, e.g. "waiting for r1b to empty".
    pub say: &'a dyn Fn(&str),
}

/// Preparing was stopped early (the flag was set); what it had stopped runs again.
#[derive(Debug, thiserror::Error)]
#[error("preparing the lab was interrupted")]
pub struct Interrupted;

/// Restarts every server of the lab that does not answer, in the role it has now, and
/// waits until they answer; returns what it restarted. An error says what is still down.
pub fn repair(state: &State, say: &dyn Fn(&str)) -> Result<Vec<String>> {
    let Some((_, hosts)) = status()? else {
        bail!("the lab is not up: start it with `coherence lab up`");
    };
    let nodes = LabNodes::new(state);
    let mut restarted = Vec::new();
    for h in &hosts {
        for srv in h.servers.iter().filter(|s| !s.answers) {
            let what = format!("{} on {}", srv.kind, h.host.name);
            say(&format!("restarting {what}, which does not answer"));
            if nodes.pids(&h.host.name, srv.kind)?.is_empty() {
                nodes
                    .restart(&h.host.name, srv.kind)
                    .map_err(|e| anyhow!("cannot restart {what}: {e}"))?;
            } else if srv.kind != "invalidator" {
                // Running but not answering (stopped, or stuck): resume it, else kill and
                // start it again.
                for pid in nodes.pids(&h.host.name, srv.kind)? {
                    // SAFETY: no memory preconditions; a pid that is gone is fine.
                    unsafe { libc::kill(pid, libc::SIGCONT) };
                }
            }
            restarted.push(what);
        }
    }
    if !restarted.is_empty() {
        say("waiting for the restarted servers to answer");
        let ok = wait_until("the lab answering", Duration::from_secs(30), || {
            answers(state)
        });
        if ok.is_err() {
            let down: Vec<String> = status()?
                .map(|(_, hosts)| {
                    hosts
                        .iter()
                        .flat_map(|h| {
                            h.servers
                                .iter()
                                .filter(|s| !s.answers)
                                .map(move |s| format!("{} on {}", s.kind, h.host.name))
                        })
                        .collect()
                })
                .unwrap_or_default();
            bail!(
                "the lab does not answer after restarting {}: still down: {} (see `coherence lab status`); \
                 restart it with `coherence lab down` and `coherence lab up`",
                restarted.join(", "),
                down.join(", ")
            );
        }
    }
    Ok(restarted)
}

/// Prepares the running lab for a campaign, as Jepsen prepares its database: servers
/// that do not answer restarted ([`repair`]), fresh data (`keys` rows at version 0
/// written by "init", with their version log), every cache flushed, and the invalidator
/// restarted in `design`. Stopping the invalidator is journaled in `prep.journal` before
/// it happens and marked healed once it runs again; when `prep.stop` is set, preparing
/// restarts it and returns [`Interrupted`].
pub fn prepare(keys: &[String], design: Design, prep: Preparing<'_>) -> Result<State> {
    require_root()?;
    let state = State::load()?
        .ok_or_else(|| anyhow!("the lab is not up: start it with `coherence lab up`"))?;
    let say = prep.say;
    if !answers(&state) {
        let restarted = repair(&state, say)?;
        if !restarted.is_empty() {
            say(&format!("restarted {}", restarted.join(", ")));
        }
    }
    let interrupted = || prep.stop.load(Ordering::Relaxed);
    if interrupted() {
        return Err(Interrupted.into());
    }
    // Stopping the invalidator is a fault of ours: journaled, and undone on every way out.
    let inv = state.host(Role::Invalidator);
    let nodes = LabNodes::new(&state);
    let pids = nodes.pids(&inv.name, "invalidator")?;
    // (When the campaign wants no invalidator, stopping it is the point: nothing to
    // restore then, and a way out before the new design is saved restarts the old one
    // below, or the next run's repair does.)
    let stopped = if design != Design::None && !pids.is_empty() {
        let fault = Fault::Kill(coherence_nemeses::fault::Kill {
            node: inv.name.clone(),
            service: "invalidator".into(),
            pids,
        });
        let seq = prep
            .journal
            .applying(&fault)
            .context("cannot write the heal journal; the lab was not touched")?;
        Some((seq, fault))
    } else {
        None
    };
    say("stopping the invalidator");
    stop_invalidator(&state)?;
    let result = reset(&state, keys, design, say, &interrupted);
    // Whatever happened, the invalidator runs again (the new design when the reset got
    // that far, else the one before).
    let state = State::load()?.unwrap_or(state);
    say(&format!("starting the invalidator ({})", state.design));
    start_invalidator(&state)?;
    if let Some((seq, fault)) = stopped {
        fault
            .heal(&nodes)
            .map_err(|e| anyhow!("the invalidator did not come back: {e}"))?;
        prep.journal.healed(seq)?;
    }
    result?;
    if interrupted() {
        return Err(Interrupted.into());
    }
    Ok(state)
}

/// The part of preparing that the invalidator must not see: data, triggers, caches.
fn reset(
    state: &State,
    keys: &[String],
    design: Design,
    say: &dyn Fn(&str),
    interrupted: &dyn Fn() -> bool,
) -> Result<()> {
    let (primary, _) = db_roles(state)?;
    say(&format!(
        "resetting the data on {} ({} keys)",
        primary.name,
        keys.len()
    ));
    runtime()?
        .block_on(async {
            let mut client = pg_connect(primary.addr).await?;
            let tx = client.transaction().await?;
            tx.batch_execute(
                "TRUNCATE items, item_versions, outbox, outbox_cursor RESTART IDENTITY",
            )
            .await?;
            for key in keys {
                tx.execute(
                    "INSERT INTO items (key, version, write_id) VALUES ($1, 0, 'init')",
                    &[key],
                )
                .await?;
                tx.execute(
                    "INSERT INTO item_versions (key, version, write_id) VALUES ($1, 0, 'init')",
                    &[key],
                )
                .await?;
            }
            tx.commit().await?;
            client.batch_execute(&schema::triggers(design)).await?;
            anyhow::Ok(())
        })
        .context("cannot prepare the database")?;
    if interrupted() {
        return Err(Interrupted.into());
    }
    let regions = endpoints(state)?.regions;
    say("flushing every cache");
    for r in &regions {
        let (addr, _) = r.primary.addr.split_once(':').expect("host:port");
        let mut con = redis_connect(addr.parse()?, REDIS_PORT)?;
        let _: () = redis::cmd("FLUSHALL").query(&mut con)?;
    }
    // Replicas follow their primary's flush; wait until they are empty too. After a
    // failover the old primary first resyncs as a replica: be patient.
    for r in &regions {
        if let Some(rep) = &r.replica {
            let (addr, _) = rep.addr.split_once(':').expect("host:port");
            let addr: std::net::Ipv4Addr = addr.parse()?;
            let empty = || {
                redis_connect(addr, REDIS_PORT)
                    .and_then(|mut c| Ok(redis::cmd("DBSIZE").query::<i64>(&mut c)?))
                    .is_ok_and(|n| n == 0)
            };
            if !empty() {
                say(&format!(
                    "waiting for {} to empty (a replica follows its primary's flush; after a failover it resyncs first)",
                    rep.name
                ));
            }
            wait_until(
                &format!("{} emptying", rep.name),
                Duration::from_secs(30),
                || empty() || interrupted(),
            )?;
            if interrupted() {
                return Err(Interrupted.into());
            }
        }
    }
    let mut state = state.clone();
    state.design = design;
    state.save()
}

/// One deletion the invalidator logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// The key deleted.
    pub key: String,
    /// The cache node it was deleted on.
    pub node: String,
    /// The version it was invalidated for.
    pub version: i64,
}

/// Where the invalidator's deletion log ends now: a run reads it from there on, so that
/// the deletions of the runs before are not taken for its own.
pub fn deletions_end() -> u64 {
    std::fs::metadata(lab_dir().join("inv").join("deletions.jsonl")).map_or(0, |m| m.len())
}

/// The deletions the invalidator logged, from byte `offset` of its log, with the new
/// offset. For recording them into a history as they happen.
pub fn read_deletions(offset: u64) -> Result<(Vec<Deletion>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let path = lab_dir().join("inv").join("deletions.jsonl");
    let Ok(mut file) = std::fs::File::open(&path) else {
        return Ok((Vec::new(), offset));
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    // Only whole lines: a line being written is read next time.
    let whole = text.rfind('\n').map_or(0, |p| p + 1);
    let deletions = text[..whole]
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["deleted"] == true)
        .filter_map(|v| {
            Some(Deletion {
                key: v["key"].as_str()?.to_string(),
                node: v["node"].as_str()?.to_string(),
                version: v["version"].as_i64()?,
            })
        })
        .collect();
    Ok((deletions, offset + whole as u64))
}

/// The server logs a lab host keeps.
const LOGS: &[&str] = &[
    "redis.log",
    "sentinel.log",
    "postgres.log",
    "invalidator.log",
    "service.log",
];

/// Fetches every host's server logs into `dest/<host>/`, through the host's remote;
/// returns how many files it copied.
pub fn fetch_logs(state: &State, dest: &Path) -> Result<usize> {
    let mut copied = 0;
    for h in state.hosts() {
        let r = remote(&h);
        for name in LOGS {
            let path = host_dir(&h).join(name);
            if !path.exists() {
                continue;
            }
            let bytes = r.download(&path)?;
            let dir = dest.join(&h.name);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(name), bytes)?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// The lab's hosts as fault targets: each reached in its namespace, at its address.
pub struct LabNodes {
    hosts: Vec<Host>,
}

impl LabNodes {
    /// The hosts of a lab with this state.
    pub fn new(state: &State) -> LabNodes {
        LabNodes {
            hosts: state.hosts(),
        }
    }

    /// Every host's name.
    pub fn names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.name.clone()).collect()
    }

    /// Every host but the regions' app hosts: the nodes that whole-cluster partition
    /// shapes, node partitions and clock faults are drawn from. (A region's partition
    /// takes its app host with it: see [`LabNodes::region`].) Keeping the app hosts out
    /// keeps the schedules a seed draws as they were before the lab had them.
    pub fn data_hosts(&self) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|h| h.role != Role::Service)
            .map(|h| h.name.clone())
            .collect()
    }

    /// The database hosts.
    pub fn databases(&self) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|h| matches!(h.role, Role::DbPrimary | Role::DbStandby))
            .map(|h| h.name.clone())
            .collect()
    }

    /// The Redis hosts of a region.
    pub fn redis(&self, region: &str) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|h| h.region.as_deref() == Some(region) && h.ports().contains(&REDIS_PORT))
            .map(|h| h.name.clone())
            .collect()
    }

    /// The hosts of a region: its caches, Sentinel and app host.
    pub fn region(&self, region: &str) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|h| h.region.as_deref() == Some(region))
            .map(|h| h.name.clone())
            .collect()
    }
}

impl coherence_nemeses::fault::Nodes for LabNodes {
    fn remote(&self, node: &str) -> Option<Box<dyn Remote>> {
        self.hosts
            .iter()
            .find(|h| h.name == node)
            .map(|h| Box::new(remote(h)) as Box<dyn Remote>)
    }

    fn addr(&self, node: &str) -> Option<String> {
        self.hosts
            .iter()
            .find(|h| h.name == node)
            .map(|h| h.addr.to_string())
    }

    fn pids(&self, node: &str, service: &str) -> Result<Vec<i32>, RemoteError> {
        let host = self.host(node)?;
        let pids =
            namespace_pids(&host.namespace()).map_err(|e| self.error(node, "ip netns pids", e))?;
        Ok(pids
            .into_iter()
            .filter(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                match service {
                    "redis" => cmd.starts_with("redis-server"),
                    "sentinel" => cmd.starts_with("redis-sentinel"),
                    "postgres" => cmd.contains("postgres"),
                    "invalidator" => cmd.contains("lab invalidator"),
                    "service" => cmd.contains("lab service"),
                    _ => false,
                }
            })
            .collect())
    }

    fn restart(&self, node: &str, service: &str) -> Result<(), RemoteError> {
        let host = self.host(node)?;
        let state = State::load()
            .ok()
            .flatten()
            .ok_or_else(|| self.error(node, "restart", anyhow!("the lab is down")))?;
        let hosts = state.hosts();
        let result = match service {
            "invalidator" => start_invalidator(&state),
            "service" => start_service(&state, host).and_then(|()| wait_for_service(host)),
            // In the role it has now: the primary its region's Sentinels name, or a
            // replica of that primary.
            "redis" => current_primary(&hosts, host).and_then(|primary| {
                let replica_of = (primary != host.addr).then_some(primary);
                start_redis(host, replica_of)
            }),
            "sentinel" => start_sentinel(host, primary_of(&hosts, host)),
            // From its data directory, in the role it had (a standby keeps its
            // standby.signal).
            "postgres" => {
                // A killed postmaster may linger as a zombie until init reaps it, and
                // PostgreSQL takes a live pid in its lock file for a running server.
                start_pg(&state, host, &host_dir(host).join("data"))
            }
            other => Err(anyhow!("no service {other:?} to restart")),
        };
        result.map_err(|e| self.error(node, &format!("restart {service}"), e))
    }

    fn sql(&self, node: &str, sql: &str) -> Result<String, RemoteError> {
        let host = self.host(node)?;
        let addr = host.addr.to_string();
        let port = PG_PORT.to_string();
        let out = remote(host).run(&[
            "psql",
            "-X",
            "-q",
            "-h",
            &addr,
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
            sql,
        ])?;
        Ok(out.stdout.trim().to_string())
    }

    fn rebuild_standby(&self, node: &str, primary: &str) -> Result<(), RemoteError> {
        let host = self.host(node)?.clone();
        let primary = self.host(primary)?.clone();
        let state = State::load()
            .ok()
            .flatten()
            .ok_or_else(|| self.error(node, "rebuild standby", anyhow!("the lab is down")))?;
        let fail = |e| self.error(node, "rebuild standby", e);
        // Stop what runs there, discard its data, clone the primary afresh.
        let pids = self.pids(node, "postgres")?;
        for pid in &pids {
            // SAFETY: kill(2) on a process id we just read; no memory is involved.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        wait_until(
            &format!("PostgreSQL on {node} stopping"),
            Duration::from_secs(10),
            || self.pids(node, "postgres").is_ok_and(|p| p.is_empty()),
        )
        .map_err(fail)?;
        let data = host_dir(&host).join("data");
        if data.exists() {
            std::fs::remove_dir_all(&data).map_err(|e| fail(e.into()))?;
        }
        start_standby(&state, &primary, &host).map_err(fail)
    }

    /// Writes (or removes) the host's clock file, which its servers' shim reads.
    fn set_clock_skew(&self, node: &str, skew: Option<&Skew>) -> Result<(), RemoteError> {
        let host = self.host(node)?;
        let file = clock::clock_file(&host.name);
        clock::set(&file, skew).map_err(|e| {
            let what = format!("write {}", file.display());
            self.error(node, &what, e.into())
        })
    }

    /// The skew the host's clock file holds.
    fn clock_skew(&self, node: &str) -> Result<Option<Skew>, RemoteError> {
        let host = self.host(node)?;
        let file = clock::clock_file(&host.name);
        clock::get(&file)
            .map_err(|e| self.error(node, &format!("read {}", file.display()), e.into()))
    }
}

/// The address of `host`'s region's Redis primary, as its Sentinels say; asked for up
/// to 5 s (a Sentinel may be busy failing over), then the primary the lab started with.
fn current_primary(hosts: &[Host], host: &Host) -> Result<std::net::Ipv4Addr> {
    let region = host.region.clone().unwrap_or_default();
    let sentinels: Vec<&Host> = hosts
        .iter()
        .filter(|h| h.region == host.region && h.ports().contains(&SENTINEL_PORT))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        for h in &sentinels {
            if let Ok(addr) = sentinel_master(h.addr, &region) {
                if let Some(ip) = addr.split(':').next().and_then(|a| a.parse().ok()) {
                    return Ok(ip);
                }
            }
        }
        if Instant::now() > deadline {
            return Ok(primary_of(hosts, host).addr);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl LabNodes {
    fn host(&self, node: &str) -> Result<&Host, RemoteError> {
        self.hosts
            .iter()
            .find(|h| h.name == node)
            .ok_or_else(|| self.error(node, "", anyhow!("no such lab host")))
    }

    fn error(&self, node: &str, command: &str, e: anyhow::Error) -> RemoteError {
        RemoteError {
            node: node.to_string(),
            command: command.to_string(),
            status: None,
            stdout: String::new(),
            stderr: format!("{e:#}"),
        }
    }
}
