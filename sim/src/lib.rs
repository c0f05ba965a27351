//! A seedable, discrete-event simulator of cache-aside systems that writes realistic
//! history files.
//!
//! The simulated system is what the real workloads test: per region a cache primary
//! (`r1a`, `r2a`, ...) with a lagging replica (`r1b`, `r2b`, ...), a database (`db`,
//! or `db1`/`db2` with asynchronous replication in [`Mode::Buggy`]), an invalidator
//! that deletes keys from the caches after writes, and `concurrency` clients spread over
//! the regions, each with at most one operation outstanding. Every operation takes
//! effect at a linearization point between its invoke and its completion on one
//! simulated clock (nanoseconds), and events are logged in time order, so the file is
//! exactly what a perfect recorder would have seen.
//!
//! A client's read request is a `read` of its region's cache; on a miss it does a
//! `db-read` and a `fill` of the value it read, each its own invoke/completion pair. A
//! write request is a `write` to the database, after which the invalidator deletes the
//! key from every region's cache primary (logged as standalone `invalidate` events of
//! process `"invalidator"`); replicas follow their primary by replication. Keys are
//! chosen with a Zipf skew (exponent 0.8); each cache primary holds at most half of the
//! keys and evicts silently with Redis's approximated LRU. Client events carry a
//! `region` field (`"r1"`, ...) and, when a replica served them, `"role":"replica"`.
//!
//! # Modes
//!
//! [`Mode::Correct`] is a coherent system. Writes invalidate every cache primary at
//! their linearization point, before they are acknowledged; fills install only if the
//! value is still the database's current version at theirs (otherwise they end `fail`,
//! `"stale fill rejected ..."`); reads go to cache primaries and the single database
//! node `db` only; there are no nemesis faults. Its histories have no anomaly of the
//! spec with a staleness bound of 0. They do contain rare timeouts (0.01% of
//! operations, `info` with `"error":"timeout"`, after which the client continues as a
//! fresh process) and failures (0.02%), which the spec allows.
//!
//! [`Mode::Buggy`] is a typical production system, with database nodes `db1` and `db2`:
//!
//! * fills are unconditional `SET`s: a fill of a version read before a write and its
//!   invalidation lands after them and stays (the cache-aside race; about 0.8% of
//!   fills at the default sizes, widened by rare 20–200 ms client pauses before a fill
//!   in 0.1% of read misses);
//! * invalidations are asynchronous: delivered 0.05 ms + exp(0.7 ms) after the commit,
//!   and 0.2% of them 20–400 ms late;
//! * 2% of cache reads go to the region's cache replica (replication lag
//!   exp(0.4 ms), spikes of 10–100 ms) and 2% of db-reads to the database replica
//!   (asynchronous replication, exp(1.5 ms), spikes of 20–200 ms);
//! * partitions: one per 250,000 operations and at least two, each lasting 0.5–1.5% of
//!   the operations, cut a region's cache nodes off from the invalidator (nemesis
//!   `start-partition` / `stop-partition` with `{"region", "nodes", "isolated_from"}`);
//!   the invalidations for that region are dropped. The last one comes near the end of
//!   the run and is often healed only by the final phase, so stale entries remain;
//! * failovers: one per 500,000 operations and at least one. Replication from the
//!   primary stalls for 5–40 ms, then the replica is promoted (nemesis `failover`,
//!   `{"promoted": "db2", "demoted": "db1"}`) without the writes it had not received;
//!   later writes reuse their version numbers (lost writes and version forks). For
//!   20–80 ms afterwards database operations fail (`connection refused`), and writes
//!   still in flight to the demoted node fail (read-only transaction);
//! * timeouts in 0.05% and failures in 0.05% of operations.
//!
//! Both modes end with a final phase: any partition healed (`stop-partition`),
//! everything in flight delivered, a `final-phase` event of process `"control"` with
//! `{"quiesce_ms": 1000}`, then for every key that any request touched a `final-read`
//! on every cache node (primaries and replicas) and a `db-final-read` whose value
//! carries the database's whole version `log`. The same [`SimConfig`] always produces
//! the same bytes on the same platform.
//!
//! At the default settings a run averages about 3.7 events and 510 bytes of history per
//! operation (about 137 bytes per line); a million operations take a few seconds.

#![deny(missing_docs)]

use coherence_store::HistoryWriter;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fmt;
use std::io;
use std::str::FromStr;

/// Which system is simulated; named in lowercase (`correct`, `buggy`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[strum(serialize_all = "lowercase")]
pub enum Mode {
    /// A coherent cache-aside system with no faults: its histories have no anomaly.
    Correct,
    /// A cache-aside system with the usual bugs and faults, injected at low rates.
    Buggy,
}

impl FromStr for Mode {
    type Err = String;

    /// Parses `"correct"` or `"buggy"` (any case).
    fn from_str(s: &str) -> Result<Mode, String> {
        use strum::VariantArray;
        let name = |m: &Mode| -> &'static str { m.into() };
        Mode::VARIANTS
            .iter()
            .find(|m| name(m).eq_ignore_ascii_case(s))
            .copied()
            .ok_or_else(|| {
                let names: Vec<String> = Mode::VARIANTS
                    .iter()
                    .map(|m| format!("{:?}", name(m)))
                    .collect();
                format!("unknown simulation mode {s:?}: use {}", names.join(" or "))
            })
    }
}

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seed of the random number generator: the same config gives the same file.
    pub seed: u64,
    /// Logical client operations (read requests and write requests) to run.
    pub ops: u64,
    /// Number of keys (`k0`, `k1`, ...); they are chosen with a Zipf skew, `k0` hottest.
    pub keys: u32,
    /// Number of concurrent clients.
    pub concurrency: u32,
    /// Number of regions, each with a cache primary and a cache replica.
    pub regions: u32,
    /// Which system is simulated.
    pub mode: Mode,
    /// The fraction of requests that are reads, from 0 to 1.
    pub read_fraction: f64,
    /// How often the nemesis strikes in [`Mode::Buggy`] (no effect in
    /// [`Mode::Correct`], which has no faults).
    pub faults: FaultLevel,
    /// Record the true cause of every stale value a read returns in
    /// [`SimSummary::truth`], for holding the checker's causes to it.
    pub truth: bool,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            seed: 1,
            ops: 10_000,
            keys: 1000,
            concurrency: 16,
            regions: 2,
            mode: Mode::Buggy,
            read_fraction: 0.8,
            faults: FaultLevel::Some,
            truth: false,
        }
    }
}

/// How often the nemesis of [`Mode::Buggy`] partitions and fails over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultLevel {
    /// No partition and no failover (the other bugs remain).
    None,
    /// One partition per 250,000 operations (at least two) and one failover per
    /// 500,000 (at least one): the default.
    Some,
    /// One partition per 10,000 operations and one failover per 25,000 (at least two
    /// and one).
    Many,
}

/// The true cause of a stale value a read returned, as the simulator knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truth {
    /// The index of the read's invoke event.
    pub index: u64,
    /// What made the value stale, named as the checker names causes: `fill-race`,
    /// `database-replica-fill`, `replica-read`, `late-invalidation`,
    /// `lost-invalidation`, `database-replica-lag`, `database-lost-write`.
    pub cause: &'static str,
}

/// What a simulation did: sizes, and counts of what was injected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimSummary {
    /// Logical client operations run (read requests plus write requests).
    pub ops: u64,
    /// Events written to the history.
    pub events: u64,
    /// Read requests.
    pub reads: u64,
    /// Write requests.
    pub writes: u64,
    /// Cache reads that missed.
    pub misses: u64,
    /// Fills that installed their value in a cache.
    pub fills: u64,
    /// Entries a full cache evicted (least recently used), silently.
    pub evictions: u64,
    /// Fills refused because the database had moved on ([`Mode::Correct`] only).
    pub rejected_fills: u64,
    /// Fills that installed a version older than the database's current one
    /// ([`Mode::Buggy`] only); most are deleted by an invalidation still on its way.
    pub stale_fills: u64,
    /// Stale fills that landed after every invalidation of their key had reached their
    /// cache (or been lost), so that the stale entry stays: the cache-aside race.
    pub fill_races: u64,
    /// Fills preceded by a long client pause (garbage collection), which widens the
    /// race window.
    pub client_pauses: u64,
    /// Cache reads served by a lagging cache replica.
    pub replica_reads: u64,
    /// Database reads served by the lagging database replica.
    pub db_replica_reads: u64,
    /// Invalidations delivered with a long-tail lag (tens to hundreds of milliseconds).
    pub delayed_invalidations: u64,
    /// Invalidations dropped because their region was cut off from the invalidator.
    pub lost_invalidations: u64,
    /// Partitions started by the nemesis.
    pub partitions: u64,
    /// Database failovers.
    pub failovers: u64,
    /// Committed writes the database lost in failovers (acknowledged or not yet).
    pub lost_writes: u64,
    /// Operations that ended `info` with a timeout.
    pub timeouts: u64,
    /// Operations that ended `fail` (not counting rejected fills).
    pub failures: u64,
    /// Keys given a `db-final-read` in the final phase.
    pub final_keys: u64,
    /// Simulated time the run took, in nanoseconds.
    pub duration_ns: u64,
    /// With [`SimConfig::truth`]: for every ok `read`, `db-read` and `final-read` that
    /// returned a value other than the database primary's current one, or the current
    /// one while an acknowledged write was lost, what made it so. In history order.
    pub truth: Vec<Truth>,
}

impl fmt::Display for SimSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops ({} reads, {} writes), {} events, {:.3} s simulated; misses {}, fills {}, \
             evictions {}, rejected fills {}, stale fills {}, fill races {}, client pauses {}, replica reads {}, \
             db replica reads {}, delayed invalidations {}, lost invalidations {}, \
             partitions {}, failovers {}, lost writes {}, timeouts {}, failures {}",
            self.ops,
            self.reads,
            self.writes,
            self.events,
            self.duration_ns as f64 / 1e9,
            self.misses,
            self.fills,
            self.evictions,
            self.rejected_fills,
            self.stale_fills,
            self.fill_races,
            self.client_pauses,
            self.replica_reads,
            self.db_replica_reads,
            self.delayed_invalidations,
            self.lost_invalidations,
            self.partitions,
            self.failovers,
            self.lost_writes,
            self.timeouts,
            self.failures
        )
    }
}

/// Runs the simulation `config` describes, appending its history to `out` (which the
/// caller finishes). Fails on an impossible config (no clients, no regions, no keys
/// with operations to run, a read fraction outside 0..=1) or when writing fails.
pub fn generate(config: &SimConfig, out: &mut HistoryWriter) -> io::Result<SimSummary> {
    let invalid = |msg: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, msg.to_string()));
    if config.concurrency == 0 {
        return invalid("the simulation needs at least one client (concurrency >= 1)");
    }
    if config.regions == 0 {
        return invalid("the simulation needs at least one region");
    }
    if config.keys == 0 && config.ops > 0 {
        return invalid("the simulation needs at least one key");
    }
    if !(0.0..=1.0).contains(&config.read_fraction) {
        return invalid("the read fraction must be between 0 and 1");
    }
    let start = out.next_index();
    let mut sim = Sim::new(config, out);
    sim.run()?;
    let mut summary = sim.summary;
    summary.events = sim.out.next_index() - start;
    Ok(summary)
}

// ---------------------------------------------------------------------------------------
// Parameters

const MS: u64 = 1_000_000;
const US: u64 = 1_000;

/// The knobs of the simulated system; fixed per mode.
struct Params {
    buggy: bool,
    /// Zipf exponent of the key choice.
    zipf: f64,
    /// Mean latency of a cache operation.
    cache_lat: u64,
    /// Mean latency of a database read / write.
    db_read_lat: u64,
    db_write_lat: u64,
    /// Extra round trip to the database for clients outside the first region.
    remote_extra: u64,
    /// Gap between the steps of one request, and think time between requests.
    step_gap: u64,
    think: u64,
    /// Probability and range of a latency spike (factor).
    spike_p: f64,
    /// Probability that an operation times out (ends `info`) or fails.
    timeout_p: f64,
    fail_p: f64,
    timeout: u64,
    /// Buggy: probability that a read goes to the cache replica / a db-read to the
    /// database replica.
    replica_read_p: f64,
    db_replica_read_p: f64,
    /// Mean replication lag of the cache replicas and of the database replica, and the
    /// probability of a lag spike.
    cache_repl_lag: u64,
    db_repl_lag: u64,
    repl_spike_p: f64,
    /// Buggy: mean invalidation lag, and the probability of a long-tail lag.
    inval_lag: u64,
    inval_tail_p: f64,
    /// How many entries a cache primary holds, as a fraction of the keys; beyond that
    /// it evicts with Redis's approximated LRU, sampling this many entries.
    cache_capacity: f64,
    lru_samples: u32,
    /// Buggy: probability of a long client pause between a db-read and its fill.
    pause_p: f64,
    /// Buggy: operations per partition / failover (at least two partitions and one
    /// failover).
    ops_per_partition: u64,
    ops_per_failover: u64,
    /// Buggy, and faults not turned off.
    nemesis: bool,
    quiesce_ms: u64,
}

impl Params {
    fn new(mode: Mode, faults: FaultLevel) -> Params {
        let buggy = mode == Mode::Buggy;
        let (ops_per_partition, ops_per_failover) = match faults {
            FaultLevel::Many => (10_000, 25_000),
            FaultLevel::Some | FaultLevel::None => (250_000, 500_000),
        };
        Params {
            buggy,
            zipf: 0.8,
            cache_lat: 300 * US,
            db_read_lat: 1200 * US,
            db_write_lat: 2500 * US,
            remote_extra: 1500 * US,
            step_gap: 40 * US,
            think: 300 * US,
            spike_p: 0.002,
            timeout_p: if buggy { 0.0005 } else { 0.0001 },
            fail_p: if buggy { 0.0005 } else { 0.0002 },
            timeout: 500 * MS,
            replica_read_p: if buggy { 0.02 } else { 0.0 },
            db_replica_read_p: if buggy { 0.02 } else { 0.0 },
            cache_repl_lag: 400 * US,
            db_repl_lag: 1500 * US,
            repl_spike_p: 0.001,
            inval_lag: 700 * US,
            inval_tail_p: 0.002,
            cache_capacity: 0.5,
            lru_samples: 5,
            pause_p: 0.001,
            ops_per_partition,
            ops_per_failover,
            nemesis: buggy && faults != FaultLevel::None,
            quiesce_ms: 1000,
        }
    }
}

// ---------------------------------------------------------------------------------------
// State

/// A cache entry: `EMPTY`, `INIT` (version 0 of its key) or a write id.
const EMPTY: u64 = u64::MAX;
const INIT: u64 = 0;

/// A client operation; its `f` in the history is its name in kebab-case.
#[derive(Clone, Copy, PartialEq, Eq, Debug, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
enum Fop {
    Read,
    DbRead,
    Fill,
    Write,
}

/// A server: cache node `region * 2 + (0 primary | 1 replica)`, or a database node
/// (0: `db`, 1: `db1`, 2: `db2`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Node {
    Cache(u32),
    Db(u8),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Normal,
    Fail(&'static str),
    Timeout { effect: bool },
}

#[derive(Clone, Copy, Debug)]
struct Op {
    f: Fop,
    key: u32,
    node: Node,
    /// The write id of a write, the entry of a fill.
    arg: u64,
    outcome: Outcome,
    /// Time from the linearization point to the completion (normal outcome).
    rest: u64,
    /// The entry read, or the version written.
    result: u64,
    /// The operation was refused at its linearization point (it had no effect).
    refused: Option<&'static str>,
    /// The node was a replica when the operation was invoked.
    replica: bool,
    /// The index of its invoke event.
    invoke_index: u64,
    /// Truth: what made the value it read stale, when it was.
    truth: Option<&'static str>,
    /// A db-read served by the database replica that returned a version older than the
    /// primary's current one.
    stale_replica: bool,
}

#[derive(Clone, Copy, Debug)]
enum Next {
    Request,
    DbRead(u32),
    Fill(u32, u64),
}

struct Client {
    process: i64,
    region: u32,
    op: Option<Op>,
    next: Next,
    /// The db-read before the pending fill got a stale version from the db replica.
    stale_source: bool,
}

#[derive(Debug)]
enum Action {
    Start(u32),
    Lin(u32),
    Done(u32),
    CacheRepl {
        region: u32,
        key: u32,
        entry: u64,
    },
    DbRepl {
        key: u32,
        version: u64,
        epoch: u32,
    },
    Invalidate {
        region: u32,
        key: u32,
        version: u64,
        commit: u32,
    },
    Failover,
}

struct Sched {
    time: u64,
    seq: u64,
    action: Action,
}

impl PartialEq for Sched {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Sched {}
impl PartialOrd for Sched {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Sched {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    StartPartition(u32),
    StopPartition,
    Failover,
}

/// Who logs a line.
#[derive(Clone, Copy)]
enum Who {
    Client(i64),
    Actor(&'static str),
}

struct Sim<'w> {
    ops: u64,
    keys: u32,
    regions: u32,
    read_fraction: f64,
    p: Params,
    rng: ChaCha8Rng,
    out: &'w mut HistoryWriter,
    line: Vec<u8>,
    now: u64,
    last_logged: u64,
    seq: u64,
    heap: BinaryHeap<Reverse<Sched>>,
    clients: Vec<Client>,
    active: u32,
    next_process: i64,
    issued: u64,
    /// Version of every write id (`EMPTY` until committed); index 0 is `init`.
    versions: Vec<u64>,
    /// Per key, the write id of every version the database primary holds.
    log: Vec<Vec<u64>>,
    /// Per key, the last version the database replica applied.
    db_replica: Vec<u64>,
    db_primary: u8,
    db_epoch: u32,
    db_repl_last: u64,
    db_stall_until: u64,
    db_outage_until: u64,
    /// Per cache node, the entry of every key.
    cache: Vec<Vec<u64>>,
    /// Per region, the entries its cache primary holds, its capacity, and when each
    /// key was last used there.
    cache_count: Vec<u64>,
    cache_capacity: u64,
    last_used: Vec<Vec<u64>>,
    cache_repl_last: Vec<u64>,
    /// Buggy: per region and key, invalidations on their way.
    inval_pending: Vec<Vec<u32>>,
    partition: Option<u32>,
    touched: Vec<bool>,
    zipf_cdf: Vec<f64>,
    faults: Vec<(u64, Fault)>,
    next_fault: usize,
    summary: SimSummary,
    /// Truth: per region and key, how its cache primary's entry got there.
    installs: Vec<Vec<Install>>,
    /// Truth: per key, every commit with its invalidation's state in each region.
    commits: Vec<Vec<Commit>>,
    /// Truth: per write id, the index of its commit in `commits`.
    commit_of: Vec<u32>,
}

/// How a cache primary's entry was installed (truth).
#[derive(Clone, Copy, Default)]
struct Install {
    /// When.
    at: u64,
    /// `Some(cause)` when the value was already not the database's current one: the
    /// fill's kind (`fill-race`, or `database-replica-fill` when its db-read got the
    /// value from a lagging replica).
    stale: Option<&'static str>,
    /// For a stale install: the invalidation of the commit that superseded the value
    /// had already been delivered or dropped in this region, so that no invalidation was
    /// left to undo the fill.
    settled: bool,
}

/// One commit of a key and what became of its invalidation in each region (truth).
#[derive(Clone)]
struct Commit {
    at: u64,
    /// Per region: 0 on its way, 1 delivered, 2 lost.
    inval: Vec<u8>,
}

impl<'w> Sim<'w> {
    fn new(config: &SimConfig, out: &'w mut HistoryWriter) -> Sim<'w> {
        let p = Params::new(config.mode, config.faults);
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let keys = config.keys as usize;
        let mut zipf_cdf = Vec::with_capacity(keys);
        let mut total = 0.0;
        for i in 0..keys {
            total += 1.0 / ((i + 1) as f64).powf(p.zipf);
            zipf_cdf.push(total);
        }
        let faults = if p.nemesis {
            plan_faults(&mut rng, config.ops, config.regions, &p)
        } else {
            Vec::new()
        };
        let clients = (0..config.concurrency)
            .map(|i| Client {
                process: i as i64,
                region: i % config.regions,
                op: None,
                next: Next::Request,
                stale_source: false,
            })
            .collect();
        Sim {
            ops: config.ops,
            keys: config.keys,
            regions: config.regions,
            read_fraction: config.read_fraction,
            rng,
            out,
            line: Vec::with_capacity(1 << 12),
            now: 0,
            last_logged: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            clients,
            active: config.concurrency,
            next_process: config.concurrency as i64,
            issued: 0,
            versions: vec![0],
            log: vec![vec![INIT]; keys],
            db_replica: vec![0; if p.buggy { keys } else { 0 }],
            db_primary: if p.buggy { 1 } else { 0 },
            db_epoch: 0,
            db_repl_last: 0,
            db_stall_until: 0,
            db_outage_until: 0,
            cache: vec![vec![EMPTY; keys]; 2 * config.regions as usize],
            cache_repl_last: vec![0; config.regions as usize],
            cache_count: vec![0; config.regions as usize],
            cache_capacity: ((keys as f64 * p.cache_capacity) as u64).max(1),
            last_used: vec![vec![0; keys]; config.regions as usize],
            inval_pending: vec![vec![0; if p.buggy { keys } else { 0 }]; config.regions as usize],
            partition: None,
            touched: vec![false; keys],
            zipf_cdf,
            faults,
            next_fault: 0,
            summary: SimSummary::default(),
            installs: if config.truth {
                vec![vec![Install::default(); keys]; config.regions as usize]
            } else {
                Vec::new()
            },
            commits: if config.truth {
                vec![Vec::new(); keys]
            } else {
                Vec::new()
            },
            commit_of: if config.truth { vec![0] } else { Vec::new() },
            p,
        }
    }

    fn schedule(&mut self, time: u64, action: Action) {
        self.seq += 1;
        self.heap.push(Reverse(Sched {
            time,
            seq: self.seq,
            action,
        }));
    }

    fn run(&mut self) -> io::Result<()> {
        self.log_topology()?;
        for c in 0..self.clients.len() as u32 {
            let t = self.rng.random_range(0..self.p.think);
            self.schedule(t, Action::Start(c));
        }
        let mut healed = false;
        while let Some(Reverse(s)) = self.heap.pop() {
            debug_assert!(s.time >= self.now);
            self.now = s.time;
            match s.action {
                Action::Start(c) => self.start(c)?,
                Action::Lin(c) => self.lin(c)?,
                Action::Done(c) => self.done(c)?,
                Action::CacheRepl { region, key, entry } => {
                    self.cache[region as usize * 2 + 1][key as usize] = entry;
                }
                Action::DbRepl {
                    key,
                    version,
                    epoch,
                } => {
                    if epoch == self.db_epoch {
                        let applied = &mut self.db_replica[key as usize];
                        *applied = (*applied).max(version);
                    }
                }
                Action::Invalidate {
                    region,
                    key,
                    version,
                    commit,
                } => self.deliver_invalidation(region, key, version, commit)?,
                Action::Failover => self.failover()?,
            }
            if self.active == 0 && !healed {
                healed = true;
                self.heal()?;
            }
        }
        if !healed {
            self.heal()?;
        }
        self.final_phase()
    }

    // -----------------------------------------------------------------------------------
    // Randomness

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }

    /// A latency with mean about `mean`: a floor of half the mean plus an exponential
    /// tail, with rare spikes.
    fn latency(&mut self, mean: u64) -> u64 {
        let u: f64 = self.rng.random();
        let e = -(1.0 - u).ln();
        let mut l = mean as f64 * (0.5 + 0.5 * e);
        if self.chance(self.p.spike_p) {
            l *= self.rng.random_range(5.0..30.0);
        }
        (l as u64).max(2)
    }

    fn exp(&mut self, mean: u64) -> u64 {
        let u: f64 = self.rng.random();
        (-(1.0 - u).ln() * mean as f64) as u64
    }

    fn pick_key(&mut self) -> u32 {
        let total = *self.zipf_cdf.last().unwrap_or(&1.0);
        let u = self.rng.random::<f64>() * total;
        let i = self.zipf_cdf.partition_point(|&c| c <= u);
        i.min(self.keys as usize - 1) as u32
    }

    // -----------------------------------------------------------------------------------
    // Clients

    fn start(&mut self, c: u32) -> io::Result<()> {
        let client = &self.clients[c as usize];
        let region = client.region;
        match client.next {
            Next::Request => {
                if self.issued >= self.ops {
                    self.active -= 1;
                    return Ok(());
                }
                let i = self.issued;
                self.issued += 1;
                self.fire_faults(i)?;
                let key = self.pick_key();
                self.touched[key as usize] = true;
                if self.rng.random::<f64>() < self.read_fraction {
                    self.summary.reads += 1;
                    let replica = self.chance(self.p.replica_read_p);
                    if replica {
                        self.summary.replica_reads += 1;
                    }
                    let node = Node::Cache(region * 2 + replica as u32);
                    self.invoke(c, Fop::Read, key, node, 0)
                } else {
                    self.summary.writes += 1;
                    let id = self.versions.len() as u64;
                    self.versions.push(EMPTY);
                    if !self.commit_of.is_empty() {
                        self.commit_of.push(u32::MAX);
                    }
                    let node = Node::Db(self.db_primary);
                    self.invoke(c, Fop::Write, key, node, id)
                }
            }
            Next::DbRead(key) => {
                let node = if self.chance(self.p.db_replica_read_p) {
                    self.summary.db_replica_reads += 1;
                    Node::Db(3 - self.db_primary)
                } else {
                    Node::Db(self.db_primary)
                };
                self.invoke(c, Fop::DbRead, key, node, 0)
            }
            Next::Fill(key, entry) => {
                self.invoke(c, Fop::Fill, key, Node::Cache(region * 2), entry)
            }
        }
    }

    fn invoke(&mut self, c: u32, f: Fop, key: u32, node: Node, arg: u64) -> io::Result<()> {
        let t0 = self.now;
        let client = &self.clients[c as usize];
        let (process, region) = (client.process, client.region);
        let replica = self.is_replica(node);
        let invoke_index = self.out.next_index();
        self.head(Who::Client(process), "invoke", f.into());
        self.key_node(key, node);
        if f == Fop::Write {
            self.line.extend_from_slice(b",\"value\":{\"write\":\"w");
            push_u64(&mut self.line, arg);
            self.line.extend_from_slice(b"\"}");
        } else if f == Fop::Fill {
            self.value_entry(arg);
        }
        self.tail(Some(region), replica, None);
        self.emit()?;

        let is_db = matches!(f, Fop::DbRead | Fop::Write);
        let mean = match f {
            Fop::Read | Fop::Fill => self.p.cache_lat,
            Fop::DbRead => self.p.db_read_lat,
            Fop::Write => self.p.db_write_lat,
        } + if is_db && region > 0 {
            self.p.remote_extra
        } else {
            0
        };
        let lat = self.latency(mean);
        let outcome = if is_db && self.p.buggy && t0 < self.db_outage_until {
            Outcome::Fail("connection refused")
        } else {
            let r: f64 = self.rng.random();
            if r < self.p.timeout_p {
                Outcome::Timeout {
                    effect: self.rng.random::<bool>(),
                }
            } else if r < self.p.timeout_p + self.p.fail_p {
                Outcome::Fail(match f {
                    Fop::Read => "connection refused",
                    Fop::Fill => "OOM command not allowed when used memory > 'maxmemory'",
                    Fop::DbRead => "too many connections",
                    Fop::Write => "could not serialize access due to concurrent update",
                })
            } else {
                Outcome::Normal
            }
        };
        let mut op = Op {
            f,
            key,
            node,
            arg,
            outcome,
            rest: 0,
            result: EMPTY,
            refused: None,
            replica,
            invoke_index,
            truth: None,
            stale_replica: false,
        };
        match outcome {
            Outcome::Normal => {
                let frac = self.rng.random_range(0.25..0.75);
                let before = ((lat as f64 * frac) as u64).clamp(1, lat - 1);
                op.rest = lat - before;
                self.schedule(t0 + before, Action::Lin(c));
            }
            Outcome::Fail(_) => {
                let l = lat / 2 + 1;
                self.schedule(t0 + l, Action::Done(c));
            }
            Outcome::Timeout { effect } => {
                let timeout = self.p.timeout;
                if effect {
                    let at = t0 + self.rng.random_range(1..timeout);
                    self.schedule(at, Action::Lin(c));
                }
                self.schedule(t0 + timeout, Action::Done(c));
            }
        }
        self.clients[c as usize].op = Some(op);
        Ok(())
    }

    /// The linearization point of client `c`'s operation: it takes effect.
    fn lin(&mut self, c: u32) -> io::Result<()> {
        let region = self.clients[c as usize].region;
        let Some(mut op) = self.clients[c as usize].op else {
            return Ok(());
        };
        let key = op.key as usize;
        match op.f {
            Fop::Read => {
                let Node::Cache(n) = op.node else {
                    unreachable!()
                };
                op.result = self.cache[n as usize][key];
                if n % 2 == 0 && op.result != EMPTY {
                    self.last_used[n as usize / 2][key] = self.now;
                }
                op.truth = self.cache_truth(n, op.key);
            }
            Fop::DbRead => {
                let Node::Db(db) = op.node else {
                    unreachable!()
                };
                let head = *self.log[key].last().expect("a log is never empty");
                op.result = if db == self.db_primary {
                    head
                } else {
                    self.log[key][self.db_replica[key] as usize]
                };
                op.stale_replica = op.result != head;
                if !self.installs.is_empty() {
                    op.truth = Some(if op.stale_replica {
                        "database-replica-lag"
                    } else {
                        "database-lost-write"
                    });
                }
            }
            Fop::Fill => {
                let current = *self.log[key].last().expect("a log is never empty");
                if self.p.buggy {
                    self.set_primary(region, op.key, op.arg);
                    if !self.installs.is_empty() {
                        let stale = (current != op.arg).then_some(
                            if self.clients[c as usize].stale_source {
                                "database-replica-fill"
                            } else {
                                "fill-race"
                            },
                        );
                        let settled = stale.is_some()
                            && self
                                .superseding(op.key, op.arg)
                                .is_none_or(|c| c.inval[region as usize] != 0);
                        self.installs[region as usize][key] = Install {
                            at: self.now,
                            stale,
                            settled,
                        };
                    }
                    self.summary.fills += 1;
                    if current != op.arg {
                        self.summary.stale_fills += 1;
                        if self.inval_pending[region as usize][key] == 0 {
                            self.summary.fill_races += 1;
                        }
                    }
                } else if current == op.arg {
                    self.set_primary(region, op.key, op.arg);
                    self.summary.fills += 1;
                } else {
                    op.refused = Some("stale fill rejected: the database has a newer version");
                }
            }
            Fop::Write => {
                if op.node != Node::Db(self.db_primary) {
                    op.refused = Some("cannot execute UPDATE in a read-only transaction");
                } else {
                    self.commit(op.key, op.arg)?;
                    op.result = self.versions[op.arg as usize];
                }
            }
        }
        if op.outcome == Outcome::Normal {
            self.schedule(self.now + op.rest, Action::Done(c));
        }
        self.clients[c as usize].op = Some(op);
        Ok(())
    }

    fn commit(&mut self, key: u32, id: u64) -> io::Result<()> {
        let log = &mut self.log[key as usize];
        log.push(id);
        let version = (log.len() - 1) as u64;
        self.versions[id as usize] = version;
        let commit = match self.commits.get_mut(key as usize) {
            Some(list) => {
                list.push(Commit {
                    at: self.now,
                    inval: vec![0; self.regions as usize],
                });
                self.commit_of[id as usize] = (list.len() - 1) as u32;
                (list.len() - 1) as u32
            }
            None => 0,
        };
        if !self.p.buggy {
            // Invalidate every region synchronously, before the write is acknowledged.
            for r in 0..self.regions {
                self.set_primary(r, key, EMPTY);
                if let Some(list) = self.commits.get_mut(key as usize) {
                    list[commit as usize].inval[r as usize] = 1;
                }
                self.log_invalidation(r, key, version)?;
            }
            return Ok(());
        }
        // Asynchronous replication to the database replica.
        let lag = if self.chance(self.p.repl_spike_p) {
            self.rng.random_range(20 * MS..200 * MS)
        } else {
            self.exp(self.p.db_repl_lag)
        };
        let at = (self.now + lag)
            .max(self.db_repl_last)
            .max(self.db_stall_until);
        self.db_repl_last = at;
        let epoch = self.db_epoch;
        self.schedule(
            at,
            Action::DbRepl {
                key,
                version,
                epoch,
            },
        );
        // Asynchronous invalidation of every region.
        for region in 0..self.regions {
            let lag = if self.chance(self.p.inval_tail_p) {
                self.summary.delayed_invalidations += 1;
                self.rng.random_range(20 * MS..400 * MS)
            } else {
                self.exp(self.p.inval_lag) + 50 * US
            };
            self.inval_pending[region as usize][key as usize] += 1;
            self.schedule(
                self.now + lag,
                Action::Invalidate {
                    region,
                    key,
                    version,
                    commit,
                },
            );
        }
        Ok(())
    }

    fn done(&mut self, c: u32) -> io::Result<()> {
        let client = &self.clients[c as usize];
        let (process, region) = (client.process, client.region);
        let op = client.op.expect("a completion has an operation");
        let (kind, error) = match (op.outcome, op.refused) {
            (Outcome::Normal, None) => ("ok", None),
            (Outcome::Normal, Some(why)) => ("fail", Some(why)),
            (Outcome::Fail(why), _) => ("fail", Some(why)),
            (Outcome::Timeout { .. }, _) => ("info", Some("timeout")),
        };
        self.head(Who::Client(process), kind, op.f.into());
        self.key_node(op.key, op.node);
        match (op.f, kind) {
            (Fop::Write, "ok") => {
                self.line.extend_from_slice(b",\"value\":{\"version\":");
                push_u64(&mut self.line, op.result);
                self.line.extend_from_slice(b",\"write\":\"w");
                push_u64(&mut self.line, op.arg);
                self.line.extend_from_slice(b"\"}");
            }
            (Fop::Write, _) => {
                self.line.extend_from_slice(b",\"value\":{\"write\":\"w");
                push_u64(&mut self.line, op.arg);
                self.line.extend_from_slice(b"\"}");
            }
            (Fop::Read | Fop::DbRead, "ok") => self.value_entry(op.result),
            (Fop::Fill, _) => self.value_entry(op.arg),
            _ => {}
        }
        self.tail(Some(region), op.replica, error);
        self.emit()?;
        if let (Some(cause), "ok") = (op.truth, kind) {
            self.summary.truth.push(Truth {
                index: op.invoke_index,
                cause,
            });
        }
        if op.f == Fop::DbRead {
            self.clients[c as usize].stale_source = op.stale_replica;
        }

        let mut gap = self.p.step_gap / 2 + self.exp(self.p.step_gap / 2);
        let next = match (kind, op.f) {
            ("ok", Fop::Read) if op.result == EMPTY => {
                self.summary.misses += 1;
                Next::DbRead(op.key)
            }
            ("ok", Fop::DbRead) => {
                if self.chance(self.p.pause_p) {
                    self.summary.client_pauses += 1;
                    gap += self.rng.random_range(20 * MS..200 * MS);
                }
                Next::Fill(op.key, op.result)
            }
            _ => {
                gap = self.exp(self.p.think) + US;
                Next::Request
            }
        };
        match op.outcome {
            Outcome::Timeout { .. } => self.summary.timeouts += 1,
            Outcome::Fail(_) => self.summary.failures += 1,
            Outcome::Normal if op.refused.is_some() => {
                if op.f == Fop::Fill {
                    self.summary.rejected_fills += 1;
                } else {
                    self.summary.failures += 1;
                }
            }
            Outcome::Normal => {}
        }
        let client = &mut self.clients[c as usize];
        client.op = None;
        client.next = next;
        if kind == "info" {
            // A client that lost track of an operation goes on as a fresh process.
            client.process = self.next_process;
            self.next_process += 1;
        }
        self.schedule(self.now + gap, Action::Start(c));
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Caches, invalidation, database

    fn set_primary(&mut self, region: u32, key: u32, entry: u64) {
        let r = region as usize;
        let old = std::mem::replace(&mut self.cache[r * 2][key as usize], entry);
        if entry != EMPTY {
            self.last_used[r][key as usize] = self.now;
        }
        match (old == EMPTY, entry == EMPTY) {
            (true, false) => self.cache_count[r] += 1,
            (false, true) => self.cache_count[r] -= 1,
            _ => {}
        }
        let lag = if self.chance(self.p.repl_spike_p) {
            self.rng.random_range(10 * MS..100 * MS)
        } else {
            self.exp(self.p.cache_repl_lag) + 20 * US
        };
        let at = (self.now + lag).max(self.cache_repl_last[region as usize]);
        self.cache_repl_last[region as usize] = at;
        self.schedule(at, Action::CacheRepl { region, key, entry });
        if self.cache_count[r] > self.cache_capacity {
            self.evict(region, key);
        }
    }

    /// Evicts one entry from a full cache primary (not `keep`), as Redis's
    /// `allkeys-lru` does: the least recently used of a few sampled entries.
    fn evict(&mut self, region: u32, keep: u32) {
        let r = region as usize;
        let mut victim = None;
        let mut sampled = 0;
        for _ in 0..self.p.lru_samples * 20 {
            let key = self.rng.random_range(0..self.keys);
            if key == keep || self.cache[r * 2][key as usize] == EMPTY {
                continue;
            }
            let used = self.last_used[r][key as usize];
            if victim.is_none_or(|(_, u)| used < u) {
                victim = Some((key, used));
            }
            sampled += 1;
            if sampled == self.p.lru_samples {
                break;
            }
        }
        if let Some((key, _)) = victim {
            self.summary.evictions += 1;
            self.set_primary(region, key, EMPTY);
        }
    }

    fn deliver_invalidation(
        &mut self,
        region: u32,
        key: u32,
        version: u64,
        commit: u32,
    ) -> io::Result<()> {
        self.inval_pending[region as usize][key as usize] -= 1;
        let lost = self.partition == Some(region);
        if let Some(list) = self.commits.get_mut(key as usize) {
            list[commit as usize].inval[region as usize] = if lost { 2 } else { 1 };
        }
        if lost {
            self.summary.lost_invalidations += 1;
            return Ok(());
        }
        self.set_primary(region, key, EMPTY);
        self.log_invalidation(region, key, version)
    }

    /// An invalidation of `key` on the region's cache primary, for `version`.
    fn log_invalidation(&mut self, region: u32, key: u32, version: u64) -> io::Result<()> {
        self.head(Who::Actor("invalidator"), "info", "invalidate");
        self.key_node(key, Node::Cache(region * 2));
        self.line.extend_from_slice(b",\"value\":{\"version\":");
        push_u64(&mut self.line, version);
        self.line.push(b'}');
        self.emit()
    }

    /// The topology: each region's cache primary and the replica that follows it, and
    /// the database nodes (a primary and its standby in [`Mode::Buggy`]).
    fn log_topology(&mut self) -> io::Result<()> {
        self.head(Who::Actor("control"), "info", "topology");
        self.line.extend_from_slice(b",\"value\":{\"caches\":[");
        for n in 0..self.regions * 2 {
            if n > 0 {
                self.line.push(b',');
            }
            self.line.extend_from_slice(b"{\"node\":\"");
            push_node(&mut self.line, Node::Cache(n));
            self.line.extend_from_slice(b"\",\"region\":\"r");
            push_u64(&mut self.line, n as u64 / 2 + 1);
            self.line.push(b'"');
            if n % 2 == 1 {
                self.line.extend_from_slice(b",\"replica_of\":\"");
                push_node(&mut self.line, Node::Cache(n - 1));
                self.line.push(b'"');
            }
            self.line.push(b'}');
        }
        self.line.extend_from_slice(b"],\"databases\":[");
        if self.p.buggy {
            self.line
                .extend_from_slice(b"{\"node\":\"db1\"},{\"node\":\"db2\",\"standby_of\":\"db1\"}");
        } else {
            self.line.extend_from_slice(b"{\"node\":\"db\"}");
        }
        self.line.extend_from_slice(b"]}");
        self.emit()
    }

    /// Truth: why cache node `n`'s entry of `key` is stale, if it is (`None` for a miss
    /// or when truth is not recorded).
    fn cache_truth(&self, n: u32, key: u32) -> Option<&'static str> {
        if self.installs.is_empty() {
            return None;
        }
        let k = key as usize;
        let entry = self.cache[n as usize][k];
        if entry == EMPTY {
            return None;
        }
        let head = *self.log[k].last().expect("a log is never empty");
        if entry == head {
            // The cache agrees with the database: only a lost write makes it stale.
            return Some("database-lost-write");
        }
        let region = n / 2;
        if n % 2 == 1 && self.cache[region as usize * 2][k] != entry {
            return Some("replica-read");
        }
        let install = self.installs[region as usize][k];
        // A fill installed it after the invalidation that would have removed it had
        // passed (delivered or dropped): the fill is to blame.
        if let (Some(cause), true) = (install.stale, install.settled) {
            return Some(cause);
        }
        // Otherwise the invalidation of the commit that superseded it was meant to
        // remove it: still on its way (late), or dropped since (lost).
        let superseding = self.superseding(key, entry).or_else(|| {
            let commits = &self.commits[k];
            commits.get(commits.partition_point(|c| c.at <= install.at))
        });
        Some(match superseding.map(|c| c.inval[region as usize]) {
            Some(0) => "late-invalidation",
            Some(2) => "lost-invalidation",
            _ => install.stale.unwrap_or("unexplained"),
        })
    }

    /// Truth: the commit that superseded `entry` (the next version of `key` the
    /// database holds), if the database holds one.
    fn superseding(&self, key: u32, entry: u64) -> Option<&Commit> {
        let k = key as usize;
        let version = self.versions[entry as usize] as usize;
        let id = *self.log[k].get(version + 1)?;
        if self.log[k].get(version) != Some(&entry) {
            return None; // a version the database lost
        }
        self.commits[k].get(self.commit_of[id as usize] as usize)
    }

    fn failover(&mut self) -> io::Result<()> {
        let demoted = self.db_primary;
        let promoted = 3 - demoted;
        for (log, &applied) in self.log.iter_mut().zip(&self.db_replica) {
            let held = log.len() as u64 - 1;
            if held > applied {
                self.summary.lost_writes += held - applied;
                log.truncate(applied as usize + 1);
            }
        }
        // The demoted primary rejoins as a replica of the promoted one, rewound to its
        // state; replication still in flight from the old primary is void.
        self.db_primary = promoted;
        self.db_epoch += 1;
        self.db_stall_until = 0;
        self.db_outage_until = self.now + self.rng.random_range(20 * MS..80 * MS);
        self.summary.failovers += 1;
        self.head(Who::Actor("nemesis"), "info", "failover");
        self.line
            .extend_from_slice(b",\"value\":{\"promoted\":\"db");
        push_u64(&mut self.line, promoted as u64);
        self.line.extend_from_slice(b"\",\"demoted\":\"db");
        push_u64(&mut self.line, demoted as u64);
        self.line.extend_from_slice(b"\"}");
        self.emit()
    }

    // -----------------------------------------------------------------------------------
    // Faults

    fn fire_faults(&mut self, op_index: u64) -> io::Result<()> {
        while let Some(&(at, fault)) = self.faults.get(self.next_fault) {
            if at > op_index {
                break;
            }
            self.next_fault += 1;
            match fault {
                Fault::StartPartition(region) => {
                    if self.partition.is_none() {
                        self.partition = Some(region);
                        self.summary.partitions += 1;
                        self.log_partition("start-partition", region)?;
                    }
                }
                Fault::StopPartition => self.heal()?,
                Fault::Failover => {
                    // The primary falls ill: replication stalls, then the replica is
                    // promoted, missing whatever it had not received.
                    let delay = self.rng.random_range(5 * MS..40 * MS);
                    self.db_stall_until = self.now + delay + 1;
                    self.schedule(self.now + delay, Action::Failover);
                }
            }
        }
        Ok(())
    }

    fn heal(&mut self) -> io::Result<()> {
        if let Some(region) = self.partition.take() {
            self.log_partition("stop-partition", region)?;
        }
        Ok(())
    }

    fn log_partition(&mut self, f: &'static str, region: u32) -> io::Result<()> {
        self.head(Who::Actor("nemesis"), "info", f);
        self.line.extend_from_slice(b",\"value\":{\"region\":\"r");
        push_u64(&mut self.line, region as u64 + 1);
        self.line.extend_from_slice(b"\",\"nodes\":[");
        for (i, replica) in [false, true].into_iter().enumerate() {
            if i > 0 {
                self.line.push(b',');
            }
            self.line.push(b'"');
            push_node(&mut self.line, Node::Cache(region * 2 + replica as u32));
            self.line.push(b'"');
        }
        self.line
            .extend_from_slice(b"],\"isolated_from\":[\"invalidator\"]}");
        self.emit()
    }

    // -----------------------------------------------------------------------------------
    // Final phase

    fn final_phase(&mut self) -> io::Result<()> {
        // Every fault is healed (above) and nothing is in flight: leave the system alone.
        let quiesce = self.p.quiesce_ms;
        self.now = self.now.max(self.last_logged) + quiesce * MS;
        self.head(Who::Actor("control"), "info", "final-phase");
        self.line.extend_from_slice(b",\"value\":{\"quiesce_ms\":");
        push_u64(&mut self.line, quiesce);
        self.line.push(b'}');
        self.emit()?;
        let process = self.next_process;
        self.next_process += 1;
        let who = Who::Client(process);
        let db = Node::Db(self.db_primary);
        for key in 0..self.keys {
            if !self.touched[key as usize] {
                continue;
            }
            for n in 0..self.regions * 2 {
                let node = Node::Cache(n);
                self.now += self.p.step_gap;
                let invoke_index = self.out.next_index();
                if let Some(cause) = self.cache_truth(n, key) {
                    self.summary.truth.push(Truth {
                        index: invoke_index,
                        cause,
                    });
                }
                self.head(who, "invoke", "final-read");
                self.key_node(key, node);
                self.tail(Some(n / 2), n % 2 == 1, None);
                self.emit()?;
                self.now += self.latency(self.p.cache_lat);
                self.head(who, "ok", "final-read");
                self.key_node(key, node);
                self.value_entry(self.cache[n as usize][key as usize]);
                self.tail(Some(n / 2), n % 2 == 1, None);
                self.emit()?;
            }
            self.now += self.p.step_gap;
            self.head(who, "invoke", "db-final-read");
            self.key_node(key, db);
            self.emit()?;
            self.now += self.latency(self.p.db_read_lat);
            self.head(who, "ok", "db-final-read");
            self.key_node(key, db);
            let log = &self.log[key as usize];
            let last = *log.last().expect("a log is never empty");
            self.line.extend_from_slice(b",\"value\":{\"version\":");
            push_u64(&mut self.line, log.len() as u64 - 1);
            self.line.extend_from_slice(b",\"write\":");
            push_write(&mut self.line, last);
            self.line.extend_from_slice(b",\"log\":[");
            for (v, &id) in log.iter().enumerate() {
                if v > 0 {
                    self.line.push(b',');
                }
                self.line.push(b'[');
                push_u64(&mut self.line, v as u64);
                self.line.push(b',');
                push_write(&mut self.line, id);
                self.line.push(b']');
            }
            self.line.extend_from_slice(b"]}");
            self.emit()?;
            self.summary.final_keys += 1;
        }
        self.summary.ops = self.issued;
        self.summary.duration_ns = self.now;
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Lines

    /// Starts a line: index, time, process, type and f.
    fn head(&mut self, who: Who, kind: &str, f: &str) {
        debug_assert!(self.now >= self.last_logged);
        self.last_logged = self.now;
        let line = &mut self.line;
        line.clear();
        line.extend_from_slice(b"{\"index\":");
        push_u64(line, self.out.next_index());
        line.extend_from_slice(b",\"time\":");
        push_u64(line, self.now);
        line.extend_from_slice(b",\"process\":");
        match who {
            Who::Client(n) => push_i64(line, n),
            Who::Actor(name) => {
                line.push(b'"');
                line.extend_from_slice(name.as_bytes());
                line.push(b'"');
            }
        }
        line.extend_from_slice(b",\"type\":\"");
        line.extend_from_slice(kind.as_bytes());
        line.extend_from_slice(b"\",\"f\":\"");
        line.extend_from_slice(f.as_bytes());
        line.push(b'"');
    }

    fn key_node(&mut self, key: u32, node: Node) {
        self.line.extend_from_slice(b",\"key\":\"k");
        push_u64(&mut self.line, key as u64);
        self.line.extend_from_slice(b"\",\"node\":\"");
        push_node(&mut self.line, node);
        self.line.push(b'"');
    }

    /// `"value"`: null for `EMPTY`, otherwise the versioned value of the entry.
    fn value_entry(&mut self, entry: u64) {
        self.line.extend_from_slice(b",\"value\":");
        if entry == EMPTY {
            self.line.extend_from_slice(b"null");
            return;
        }
        self.line.extend_from_slice(b"{\"version\":");
        push_u64(&mut self.line, self.versions[entry as usize]);
        self.line.extend_from_slice(b",\"write\":");
        push_write(&mut self.line, entry);
        self.line.push(b'}');
    }

    /// The error, region and role fields of a client line.
    fn tail(&mut self, region: Option<u32>, replica: bool, error: Option<&str>) {
        if let Some(error) = error {
            self.line.extend_from_slice(b",\"error\":\"");
            // The messages are fixed strings with no character that needs escaping.
            debug_assert!(!error.contains(['"', '\\']));
            self.line.extend_from_slice(error.as_bytes());
            self.line.push(b'"');
        }
        if let Some(region) = region {
            self.line.extend_from_slice(b",\"region\":\"r");
            push_u64(&mut self.line, region as u64 + 1);
            self.line.push(b'"');
        }
        if replica {
            self.line.extend_from_slice(b",\"role\":\"replica\"");
        }
    }

    fn is_replica(&self, node: Node) -> bool {
        match node {
            Node::Cache(n) => n % 2 == 1,
            Node::Db(d) => d != 0 && d != self.db_primary,
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        self.line.push(b'}');
        self.out.append_raw(&self.line)?;
        Ok(())
    }
}

/// Chooses when the nemesis acts, by operation number: partitions (never overlapping)
/// and failovers, at least one of each when there are operations at all.
fn plan_faults(rng: &mut ChaCha8Rng, ops: u64, regions: u32, p: &Params) -> Vec<(u64, Fault)> {
    let mut faults = Vec::new();
    if ops == 0 {
        return faults;
    }
    let partitions = (ops / p.ops_per_partition).max(2);
    let length =
        |rng: &mut ChaCha8Rng| ((ops as f64 * rng.random_range(0.005..0.015)) as u64).max(1);
    // All but the last happen between 5% and 85% of the run, one per segment.
    let lo = ops / 20;
    let span = (ops * 17 / 20 - lo).max(1);
    let mid = partitions - 1;
    for i in 0..mid {
        let seg_start = lo + span * i / mid;
        let seg_len = (span / mid).max(1);
        let start = seg_start + rng.random_range(0..seg_len.div_ceil(2));
        let length = length(rng).min(seg_len / 2 + 1);
        let region = rng.random_range(0..regions);
        faults.push((start.min(ops - 1), Fault::StartPartition(region)));
        faults.push((start + length, Fault::StopPartition));
    }
    // The last one comes near the end: it is often still going when the run ends (the
    // final phase heals it), and the invalidations it lost leave stale entries behind.
    let length = length(rng);
    let back = ((length as f64 * rng.random_range(0.3..1.5)) as u64).max(1);
    let start = ops.saturating_sub(back).max(ops * 17 / 20 + length);
    let region = rng.random_range(0..regions);
    faults.push((start.min(ops - 1), Fault::StartPartition(region)));
    faults.push((start + length, Fault::StopPartition));
    let failovers = (ops / p.ops_per_failover).max(1);
    for _ in 0..failovers {
        let at = rng.random_range(ops / 10..=(ops * 9 / 10).max(ops / 10));
        faults.push((at.min(ops - 1), Fault::Failover));
    }
    faults.sort_by_key(|&(at, _)| at);
    faults
}

fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

fn push_i64(buf: &mut Vec<u8>, n: i64) {
    if n < 0 {
        buf.push(b'-');
    }
    push_u64(buf, n.unsigned_abs());
}

/// A write id as a JSON string: `"init"` or `"w<n>"`.
fn push_write(buf: &mut Vec<u8>, id: u64) {
    if id == INIT {
        buf.extend_from_slice(b"\"init\"");
    } else {
        buf.extend_from_slice(b"\"w");
        push_u64(buf, id);
        buf.push(b'"');
    }
}

fn push_node(buf: &mut Vec<u8>, node: Node) {
    match node {
        Node::Cache(n) => {
            buf.push(b'r');
            push_u64(buf, n as u64 / 2 + 1);
            buf.push(if n % 2 == 0 { b'a' } else { b'b' });
        }
        Node::Db(0) => buf.extend_from_slice(b"db"),
        Node::Db(d) => {
            buf.extend_from_slice(b"db");
            push_u64(buf, d as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_parses_and_displays() {
        assert_eq!("correct".parse::<Mode>(), Ok(Mode::Correct));
        assert_eq!("Buggy".parse::<Mode>(), Ok(Mode::Buggy));
        assert!("maybe".parse::<Mode>().is_err());
        assert_eq!(Mode::Correct.to_string(), "correct");
        assert_eq!(Mode::Buggy.to_string(), "buggy");
    }

    #[test]
    fn numbers_format() {
        let mut b = Vec::new();
        push_u64(&mut b, 0);
        b.push(b' ');
        push_u64(&mut b, 18_446_744_073_709_551_615);
        b.push(b' ');
        push_i64(&mut b, -42);
        b.push(b' ');
        push_write(&mut b, INIT);
        b.push(b' ');
        push_write(&mut b, 17);
        b.push(b' ');
        push_node(&mut b, Node::Cache(3));
        b.push(b' ');
        push_node(&mut b, Node::Db(0));
        b.push(b' ');
        push_node(&mut b, Node::Db(2));
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "0 18446744073709551615 -42 \"init\" \"w17\" r2b db db2"
        );
    }
}
