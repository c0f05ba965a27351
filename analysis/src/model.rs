//! The history as the checker sees it: paired operations with interned keys, nodes and
//! write ids, standalone events (nemesis, control, invalidator), and a per-key index.
//!
//! It is built by [`Builder`], a [`coherence_store::Visitor`], while the store reads the
//! file, so the file is never held in memory. Line numbers are `index + 1`: the reader
//! guarantees one event per line with indices counting up from 0.

use coherence_store::{EventRef, EventType, OpKind, ProcessRef, ValueRef, Visitor};
use rustc_hash::FxHashMap;

/// "No such thing" for interned ids and indices.
pub const NONE: u32 = u32::MAX;

/// Interns strings as dense `u32` ids.
#[derive(Debug, Default)]
pub struct Interner {
    ids: FxHashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    /// The id of `s`, adding it when new.
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(s.into());
        self.ids.insert(s.into(), id);
        id
    }

    /// The id of `s`, if known.
    pub fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    /// The string of an id.
    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    /// How many strings are interned.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when nothing is interned.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// It happened.
    Ok,
    /// It certainly did not happen.
    Fail,
    /// Unknown: an `info` completion, or no completion at all.
    Info,
}

/// A versioned value with its write id interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Val {
    /// The version.
    pub version: i64,
    /// The interned write id.
    pub write: u32,
}

/// One client operation: an invoke and its completion.
#[derive(Debug, Clone)]
pub struct Op {
    /// The operation.
    pub kind: OpKind,
    /// How it ended.
    pub outcome: Outcome,
    /// True when the event says it was served by a replica (`"role": "replica"`).
    pub replica: bool,
    /// Dense process id (see [`History::process_name`]).
    pub process: u32,
    /// Interned key ([`NONE`] for operations without one).
    pub key: u32,
    /// Interned node ([`NONE`] when not given).
    pub node: u32,
    /// Index of the invoke event.
    pub invoke_index: u64,
    /// Index of the completion event (`u64::MAX` when it never completed).
    pub complete_index: u64,
    /// Time of the invoke.
    pub invoke_time: u64,
    /// Time of the completion (`u64::MAX` when it never completed).
    pub complete_time: u64,
    /// For a write: its write id (version from the ok, or -1). For reads and fills:
    /// the value returned or installed. `None` for a miss.
    pub value: Option<Val>,
}

impl Op {
    /// True for an ok operation.
    pub fn is_ok(&self) -> bool {
        self.outcome == Outcome::Ok
    }
}

/// An event of a string process (nemesis, control, invalidator, monitor).
#[derive(Debug, Clone)]
pub struct Standalone {
    /// Its index.
    pub index: u64,
    /// Its time.
    pub time: u64,
    /// The actor's name.
    pub actor: String,
    /// The operation.
    pub f: String,
    /// Interned key, or [`NONE`].
    pub key: u32,
    /// Interned node, or [`NONE`].
    pub node: u32,
    /// The value as JSON text, if any.
    pub value: Option<String>,
}

/// An invalidation: by a client (`invalidate` ok) or a standalone event.
#[derive(Debug, Clone, Copy)]
pub struct Invalidation {
    /// Index of the event that logged it (the completion for a client).
    pub index: u64,
    /// When it was logged.
    pub time: u64,
    /// Interned node.
    pub node: u32,
    /// The version it invalidated for, when the event says (`"value": {"version": n}`);
    /// `None`: unknown, taken as any.
    pub version: Option<i64>,
    /// True when a cache observer saw it happen (an actor `monitor:<node>`), rather
    /// than a client or the pipeline saying it did it.
    pub observed: bool,
}

/// What a cache observer saw change a key on a node, besides invalidations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The key was set (a fill, a write-through): to what, the notification does not say.
    Set,
    /// The key expired or was evicted: the entry is gone, not invalidated.
    Removed,
}

/// A change of a key on a node that a cache observer saw (`set`, `expire`, `evict`).
#[derive(Debug, Clone, Copy)]
pub struct Observed {
    /// Index of the event.
    pub index: u64,
    /// When it was received.
    pub time: u64,
    /// Interned node.
    pub node: u32,
    /// What happened.
    pub change: Change,
}

/// What a cache observer read back of a key on a node (`sample` by an actor
/// `monitor:<node>`): holding evidence, never judged as a user's read.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Index of the event.
    pub index: u64,
    /// When the observer sent the read (`from`): the evidence's time, as a read's invoke.
    pub from: u64,
    /// When the answer came (the event's time).
    pub time: u64,
    /// Interned node.
    pub node: u32,
    /// What the node held (`None`: nothing).
    pub held: Option<Val>,
}

/// A committed change of a key, as the commit observer saw it in the database's
/// change stream (`commit` by an actor `cdc:<node>`).
#[derive(Debug, Clone, Copy)]
pub struct Commit {
    /// Index of the event.
    pub index: u64,
    /// When it was received.
    pub time: u64,
    /// The database node it was committed on (interned).
    pub node: u32,
    /// The write id it committed (interned).
    pub write: u32,
    /// The version, when the watched table has one.
    pub version: Option<i64>,
}

/// Where an observer was blind: an `observer-gap` event.
#[derive(Debug, Clone, Copy)]
pub struct Gap {
    /// Index of the event.
    pub index: u64,
    /// The node it watches (interned).
    pub node: u32,
    /// True for a cache observer's gap (an actor `monitor:<node>`); false for the
    /// commit observer's (`cdc:<node>`) or another's.
    pub cache: bool,
    /// Blind from, ns.
    pub from: u64,
    /// Blind until, ns.
    pub to: u64,
}

/// What the run's observers watched, from the `observe` event of `control`.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// True when the history has an `observe` event.
    pub declared: bool,
    /// Cache nodes a cache observer watched (interned).
    pub caches: Vec<u32>,
    /// Database nodes the commit observer followed (interned).
    pub databases: Vec<u32>,
}

/// The final state of a key as a `db-final-read` returned it.
#[derive(Debug, Clone)]
pub struct Final {
    /// The op that read it.
    pub op: u32,
    /// The final value.
    pub value: Val,
    /// Every version the database still holds, when the client sent the log.
    pub log: Option<Vec<Val>>,
}

/// The whole history, paired and indexed.
#[derive(Debug, Default)]
pub struct History {
    /// Operations in invoke order.
    pub ops: Vec<Op>,
    /// Events of string processes, except invalidations (see `invalidations`).
    pub standalone: Vec<Standalone>,
    /// Keys.
    pub keys: Interner,
    /// Nodes.
    pub nodes: Interner,
    /// Write ids; id 0 is `"init"`.
    pub writes: Interner,
    /// Client process numbers by dense id.
    pub processes: Vec<i64>,
    /// Regions (the events' extra field `region`).
    pub regions: Interner,
    /// The region of each client process, by dense id ([`NONE`] when its events name
    /// none).
    pub process_regions: Vec<u32>,
    /// How often each error message of a `fail` or `info` completion occurred, at most
    /// [`ERROR_KINDS`] distinct ones.
    pub errors: FxHashMap<Box<str>, u64>,
    /// Errors whose message was not counted in `errors` because it was full.
    pub errors_uncounted: u64,
    /// Invalidations per key.
    pub invalidations: Vec<Vec<Invalidation>>,
    /// What cache observers saw besides invalidations, per key.
    pub observed: Vec<Vec<Observed>>,
    /// What cache observers read back, per key, in history order.
    pub samples: Vec<Vec<Sample>>,
    /// Commits the commit observer saw, per key, in the order it saw them.
    pub commits: Vec<Vec<Commit>>,
    /// Where observers were blind.
    pub gaps: Vec<Gap>,
    /// What the observers watched.
    pub watched: Watched,
    /// The values that named only their write, and what became of them.
    pub unversioned: crate::versions::Unversioned,
    /// The last ok `db-final-read` per key.
    pub finals: Vec<Option<Final>>,
    /// The log of every ok `db-final-read` that sent one, by op id.
    pub logs: FxHashMap<u32, Vec<Val>>,
    /// Op ids per key, in invoke order.
    pub key_ops: Vec<Vec<u32>>,
    /// The `final-phase` event: index and time.
    pub final_phase: Option<(u64, u64)>,
    /// Number of events.
    pub events: u64,
    /// Time of the last event.
    pub end_time: u64,
}

/// How many distinct error messages [`History::errors`] counts.
pub const ERROR_KINDS: usize = 1000;

/// The interned id of `"init"`.
pub const INIT: u32 = 0;

impl History {
    /// The number a process had in the file.
    pub fn process_name(&self, id: u32) -> i64 {
        self.processes[id as usize]
    }

    /// The node's name, or `"?"`.
    pub fn node_name(&self, id: u32) -> &str {
        if id == NONE {
            "?"
        } else {
            self.nodes.name(id)
        }
    }
}

/// Why a value without a version cannot be read in a history with no commit observer.
const UNWATCHED_ORDER: &str = "the value names only its write (it has no \"version\"), but no \
     commit observer watched the database: such a value's version is its write's place in \
     the commit order, which only `commit` events tell. Log an `observe` event of `control` \
     naming the database before the workload, and the commit observer's `commit` events \
     (docs/history.md, *Values without versions*), or give every value its version";

/// Builds a [`History`] from the events the store reader hands out.
#[derive(Debug)]
pub struct Builder {
    history: History,
    process_ids: FxHashMap<i64, u32>,
    /// The op each process has outstanding (or last had), by dense process id.
    current: Vec<u32>,
}

impl Default for Builder {
    fn default() -> Self {
        let mut history = History::default();
        history.writes.intern("init");
        Builder {
            history,
            process_ids: FxHashMap::default(),
            current: Vec::new(),
        }
    }
}

impl Builder {
    /// A builder with nothing read yet.
    pub fn new() -> Builder {
        Builder::default()
    }

    fn key_id(&mut self, key: Option<&str>) -> u32 {
        match key {
            Some(k) => {
                let id = self.history.keys.intern(k);
                if id as usize == self.history.invalidations.len() {
                    self.history.invalidations.push(Vec::new());
                    self.history.observed.push(Vec::new());
                    self.history.samples.push(Vec::new());
                    self.history.commits.push(Vec::new());
                    self.history.finals.push(None);
                    self.history.key_ops.push(Vec::new());
                }
                id
            }
            None => NONE,
        }
    }

    fn node_id(&mut self, node: Option<&str>) -> u32 {
        node.map_or(NONE, |n| self.history.nodes.intern(n))
    }

    fn val(&mut self, v: &coherence_store::reader::VersionedRef<'_>) -> Val {
        if v.version == coherence_store::UNVERSIONED {
            self.history.unversioned.values += 1;
        }
        Val {
            version: v.version,
            write: self.history.writes.intern(&v.write),
        }
    }

    /// Finishes: builds the per-key index, and gives the values without a version
    /// their version from the commit order ([`crate::versions`]).
    pub fn finish(mut self) -> History {
        let h = &mut self.history;
        for (id, op) in h.ops.iter().enumerate() {
            if op.key != NONE {
                h.key_ops[op.key as usize].push(id as u32);
            }
        }
        crate::versions::resolve(h);
        self.history
    }

    /// Refuses a value without a version in a history whose commit order nobody
    /// watched: nothing could give it its version.
    fn versionable(&self, value: &ValueRef<'_>) -> Result<(), String> {
        let unversioned = value
            .versioned()
            .is_some_and(|v| v.version == coherence_store::UNVERSIONED);
        if unversioned && self.history.watched.databases.is_empty() {
            return Err(UNWATCHED_ORDER.into());
        }
        Ok(())
    }
}

impl Visitor for Builder {
    fn visit(&mut self, ev: &EventRef<'_>) -> Result<(), String> {
        self.history.events += 1;
        self.history.end_time = ev.time;
        match &ev.process {
            ProcessRef::Actor(actor) => {
                let key = self.key_id(ev.key.as_deref());
                let node = self.node_id(ev.node.as_deref());
                let value = || match &ev.value {
                    ValueRef::Raw(raw) => serde_json::from_str::<serde_json::Value>(raw.get()).ok(),
                    _ => None,
                };
                let monitor = actor.starts_with("monitor:");
                match ev.op {
                    OpKind::Invalidate if key != NONE => {
                        let version = value().and_then(|v| v.get("version")?.as_i64());
                        self.history.invalidations[key as usize].push(Invalidation {
                            index: ev.index,
                            time: ev.time,
                            node,
                            version,
                            observed: monitor,
                        });
                    }
                    // What observers saw: per key, not kept as standalone events (one
                    // per write or fill, they would be most of the history).
                    _ if monitor
                        && key != NONE
                        && node != NONE
                        && matches!(&*ev.f, "set" | "expire" | "evict") =>
                    {
                        self.history.observed[key as usize].push(Observed {
                            index: ev.index,
                            time: ev.time,
                            node,
                            change: if ev.f == "set" {
                                Change::Set
                            } else {
                                Change::Removed
                            },
                        });
                    }
                    _ if monitor && key != NONE && node != NONE && ev.f == "sample" => {
                        let v = value();
                        let from = v.as_ref().and_then(|v| v.get("from")?.as_u64());
                        let held = v.as_ref().and_then(|v| v.get("held").cloned());
                        let held = match held {
                            Some(serde_json::Value::Null) => Some(None),
                            Some(h) => match h.get("write").and_then(|w| w.as_str()) {
                                Some(write) => {
                                    let version = match h.get("version") {
                                        None => coherence_store::UNVERSIONED,
                                        Some(v) => v.as_i64().filter(|v| *v >= 0).ok_or(
                                            "a sample's \"held\" value has a \"version\" that \
                                             is not an integer ≥ 0",
                                        )?,
                                    };
                                    let vr = coherence_store::reader::VersionedRef {
                                        version,
                                        write: write.into(),
                                    };
                                    if version == coherence_store::UNVERSIONED
                                        && self.history.watched.databases.is_empty()
                                    {
                                        return Err(UNWATCHED_ORDER.into());
                                    }
                                    Some(Some(self.val(&vr)))
                                }
                                None => None,
                            },
                            None => None,
                        };
                        let (Some(from), Some(held)) = (from, held) else {
                            return Err("a `sample` needs a value {\"from\": ns, \"held\": \
                                        versioned value or null} (docs/history.md, *Observers*)"
                                .into());
                        };
                        self.history.samples[key as usize].push(Sample {
                            index: ev.index,
                            from: from.min(ev.time),
                            time: ev.time,
                            node,
                            held,
                        });
                    }
                    _ if ev.f == "commit" && key != NONE => {
                        let v = value();
                        let write = v
                            .as_ref()
                            .and_then(|v| v.get("write")?.as_str().map(str::to_string));
                        if let Some(write) = write {
                            let version = v.as_ref().and_then(|v| v.get("version")?.as_i64());
                            let write = self.history.writes.intern(&write);
                            self.history.commits[key as usize].push(Commit {
                                index: ev.index,
                                time: ev.time,
                                node,
                                write,
                                version,
                            });
                        }
                    }
                    _ => {
                        if ev.op == OpKind::FinalPhase && self.history.final_phase.is_none() {
                            self.history.final_phase = Some((ev.index, ev.time));
                        }
                        let parsed = value();
                        if ev.f == "observer-gap" && node != NONE {
                            let at = |f: &str| parsed.as_ref().and_then(|v| v.get(f)?.as_u64());
                            if let (Some(from), Some(to)) = (at("from"), at("to")) {
                                self.history.gaps.push(Gap {
                                    index: ev.index,
                                    node,
                                    cache: monitor,
                                    from,
                                    to: to.max(from),
                                });
                            }
                        }
                        if ev.f == "observe" && actor == "control" && !self.history.watched.declared
                        {
                            self.history.watched.declared = true;
                            for (list, databases) in [("caches", false), ("databases", true)] {
                                let names: Vec<String> = parsed
                                    .as_ref()
                                    .and_then(|v| v.get(list)?.as_array().cloned())
                                    .unwrap_or_default()
                                    .iter()
                                    .filter_map(|n| n.as_str().map(str::to_string))
                                    .collect();
                                for n in names {
                                    let id = self.history.nodes.intern(&n);
                                    let into = if databases {
                                        &mut self.history.watched.databases
                                    } else {
                                        &mut self.history.watched.caches
                                    };
                                    if !into.contains(&id) {
                                        into.push(id);
                                    }
                                }
                            }
                        }
                        let value = match &ev.value {
                            ValueRef::Raw(raw) => Some(raw.get().to_string()),
                            _ => None,
                        };
                        self.history.standalone.push(Standalone {
                            index: ev.index,
                            time: ev.time,
                            actor: actor.to_string(),
                            f: ev.f.to_string(),
                            key,
                            node,
                            value,
                        });
                    }
                }
                Ok(())
            }
            ProcessRef::Client(p) => {
                self.versionable(&ev.value)?;
                if ev.kind == EventType::Invoke {
                    let next = self.process_ids.len() as u32;
                    let process = *self.process_ids.entry(*p).or_insert(next);
                    if process == next {
                        self.history.processes.push(*p);
                        self.history.process_regions.push(NONE);
                        self.current.push(NONE);
                    }
                    if let Some(region) = ev.region.as_deref() {
                        self.history.process_regions[process as usize] =
                            self.history.regions.intern(region);
                    }
                    let key = self.key_id(ev.key.as_deref());
                    let node = self.node_id(ev.node.as_deref());
                    let value = match &ev.value {
                        ValueRef::WriteRequest(id) => Some(Val {
                            version: -1,
                            write: self.history.writes.intern(id),
                        }),
                        ValueRef::Versioned(v) => Some(self.val(v)),
                        _ => None,
                    };
                    let id = self.history.ops.len() as u32;
                    self.current[process as usize] = id;
                    self.history.ops.push(Op {
                        kind: ev.op,
                        outcome: Outcome::Info,
                        replica: ev.role.as_deref() == Some("replica"),
                        process,
                        key,
                        node,
                        invoke_index: ev.index,
                        complete_index: u64::MAX,
                        invoke_time: ev.time,
                        complete_time: u64::MAX,
                        value,
                    });
                    return Ok(());
                }
                // The reader has paired it: the process's current op is its invoke.
                let id = self
                    .process_ids
                    .get(p)
                    .map(|&process| self.current[process as usize])
                    .filter(|&id| {
                        id != NONE
                            && Some(self.history.ops[id as usize].invoke_index) == ev.invoke_index
                    })
                    .ok_or("a completion whose invoke was not seen")?;
                let node = match ev.node.as_deref() {
                    Some(n) => self.history.nodes.intern(n),
                    None => NONE,
                };
                let completed_value = match ev.kind {
                    EventType::Ok => match &ev.value {
                        ValueRef::Versioned(v) => Some(Some(self.val(v))),
                        ValueRef::Final { value, log } => {
                            let value = self.val(value);
                            let log: Option<Vec<Val>> = log.as_ref().map(|l| {
                                l.iter()
                                    .map(|(version, write)| Val {
                                        version: *version,
                                        write: self.history.writes.intern(write),
                                    })
                                    .collect()
                            });
                            if let Some(log) = &log {
                                self.history.logs.insert(id, log.clone());
                            }
                            let op = &self.history.ops[id as usize];
                            if op.key != NONE {
                                self.history.finals[op.key as usize] =
                                    Some(Final { op: id, value, log });
                            }
                            Some(Some(value))
                        }
                        ValueRef::Absent => Some(None),
                        _ => None,
                    },
                    _ => None,
                };
                if let Some(error) = ev.error.as_deref() {
                    let errors = &mut self.history.errors;
                    if let Some(n) = errors.get_mut(error) {
                        *n += 1;
                    } else if errors.len() < ERROR_KINDS {
                        errors.insert(error.into(), 1);
                    } else {
                        self.history.errors_uncounted += 1;
                    }
                }
                let op = &mut self.history.ops[id as usize];
                op.outcome = match ev.kind {
                    EventType::Ok => Outcome::Ok,
                    EventType::Fail => Outcome::Fail,
                    _ => Outcome::Info,
                };
                op.complete_index = ev.index;
                op.complete_time = ev.time;
                if node != NONE {
                    op.node = node;
                }
                if ev.role.as_deref() == Some("replica") {
                    op.replica = true;
                }
                match op.kind {
                    OpKind::Write => {
                        if let Some(Some(v)) = completed_value {
                            // The ok names the version; keep the write id of the invoke.
                            op.value = Some(Val {
                                version: v.version,
                                write: op.value.map_or(v.write, |w| w.write),
                            });
                        }
                    }
                    OpKind::Invalidate if op.outcome == Outcome::Ok && op.key != NONE => {
                        let inv = Invalidation {
                            index: ev.index,
                            time: ev.time,
                            node: op.node,
                            version: None,
                            observed: false,
                        };
                        self.history.invalidations[op.key as usize].push(inv);
                    }
                    _ => {
                        if let Some(v) = completed_value {
                            op.value = v;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}
