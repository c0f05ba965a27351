//! A brute-force reading of the anomaly definitions of `shared/spec/history.md`, written
//! straight from the text with nested loops and no indexes, and a generator of small
//! random histories for the property test.

use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One random step: a process acts.
#[derive(Debug, Clone)]
pub struct Step {
    process: u8,
    action: u8,
    a: u8,
    b: u8,
    dt: u8,
}

/// Any step.
pub fn step() -> impl Strategy<Value = Step> {
    (0u8..3, 0u8..28, any::<u8>(), any::<u8>(), 0u8..3).prop_map(|(process, action, a, b, dt)| {
        Step {
            process,
            action,
            a,
            b,
            dt,
        }
    })
}

/// Turns steps into a well-formed history (JSON lines).
pub fn history(steps: &[Step]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut time = 0u64;
    let mut numbers = [0i64, 1, 2]; // the current process number of each client slot
    let mut pending: HashMap<u8, (String, String, String)> = HashMap::new(); // slot -> (f, key, write id)
    let mut writes: Vec<String> = vec!["init".into(), "ghost".into()];
    let mut next_write = 0;
    let mut final_phase = false;
    let mut next_seq = 0u64;
    let mut open_faults: Vec<u64> = Vec::new();
    let mut key_of: HashMap<String, String> = HashMap::new(); // write id -> key
    let emit = |lines: &mut Vec<String>, time: u64, mut ev: Value| {
        ev["index"] = json!(lines.len());
        ev["time"] = json!(time);
        lines.push(ev.to_string());
    };
    // One history in three has values without versions (and so a commit observer).
    let unversioned = steps.first().is_some_and(|s| s.a % 3 == 0);
    let value = |version: u8, write: &str| {
        if unversioned {
            json!({"write": write})
        } else {
            json!({"version": version, "write": write})
        }
    };
    // Two histories in three have a cache observer watching node n.
    if unversioned || steps.first().is_some_and(|s| s.b % 3 != 0) {
        emit(
            &mut lines,
            0,
            json!({"process": "control", "type": "info", "f": "observe", "value": {"caches": ["n"], "databases": ["db"]}}),
        );
    }
    for s in steps {
        time += s.dt as u64 * 1_000_000;
        let slot = s.process;
        let process = numbers[slot as usize];
        // The observers: what the cache observer of n saw, its gaps, the change stream.
        if (23..=26).contains(&s.action) && !pending.contains_key(&slot) {
            let key = format!("k{}", s.a % 2);
            let ev = match s.action {
                23 => {
                    json!({"process": "monitor:n", "type": "info", "f": "invalidate", "key": key, "node": "n"})
                }
                24 if s.b % 4 >= 2 => {
                    // A read-back: what n held, asked a little earlier.
                    let from = time.saturating_sub((s.a % 3) as u64 * 1_000_000);
                    let id = &writes[s.a as usize % writes.len()];
                    let held = if s.a % 7 == 0 {
                        Value::Null
                    } else {
                        value(s.b % 5, id)
                    };
                    json!({"process": "monitor:n", "type": "info", "f": "sample", "key": key, "node": "n", "value": {"from": from, "held": held}})
                }
                24 => {
                    let f = ["set", "expire", "evict"][s.b as usize % 4];
                    json!({"process": "monitor:n", "type": "info", "f": f, "key": key, "node": "n"})
                }
                25 => {
                    let actor = if s.a % 5 == 0 { "cdc:db" } else { "monitor:n" };
                    let node = if s.a % 5 == 0 { "db" } else { "n" };
                    let from = time.saturating_sub((s.b % 4) as u64 * 1_000_000);
                    json!({"process": actor, "type": "info", "f": "observer-gap", "node": node, "value": {"node": node, "from": from, "to": time}})
                }
                _ => {
                    let id = writes[s.a as usize % writes.len()].clone();
                    let key = key_of.get(&id).cloned().unwrap_or(key);
                    let mut ev = json!({"process": "cdc:db", "type": "info", "f": "commit", "key": key, "node": "db", "value": {"write": id, "version": s.b % 4, "lsn": "0/1"}});
                    // A table without a version column: the commit order gives them.
                    if unversioned && s.b % 8 < 5 {
                        ev["value"].as_object_mut().unwrap().remove("version");
                    }
                    ev
                }
            };
            emit(&mut lines, time, ev);
            continue;
        }
        if let Some((f, key, own)) = pending.remove(&slot) {
            let kind = match s.a % 5 {
                0..=2 => "ok",
                3 => "fail",
                _ => "info",
            };
            let id = writes[s.a as usize % writes.len()].clone();
            let versioned = value(s.b % 4, &id);
            let mut ev = json!({"process": process, "type": kind, "f": f, "key": key, "node": "n"});
            if kind == "ok" {
                ev["value"] = match f.as_str() {
                    "write" => value(s.b % 4, &own),
                    "read" | "final-read" if s.b % 5 == 4 => Value::Null,
                    "db-final-read" => {
                        let mut v = versioned.clone();
                        if s.b % 3 != 0 && !unversioned {
                            let log: Vec<Value> = (0..=s.b % 4)
                                .map(|v| {
                                    json!([v, writes[(s.a as usize + v as usize) % writes.len()]])
                                })
                                .collect();
                            v["log"] = Value::Array(log);
                        }
                        v
                    }
                    _ => versioned,
                };
            }
            emit(&mut lines, time, ev);
            if kind == "info" {
                numbers[slot as usize] += 10;
            }
            continue;
        }
        // The nemesis: faults that apply and heal, or fail to; errors; a plan.
        if s.action >= 20 {
            let nemesis = |f: &str, value: Value| json!({"process": "nemesis", "type": "info", "f": f, "value": value});
            match (s.action, s.b % 4) {
                (20, _) => {
                    emit(
                        &mut lines,
                        time,
                        nemesis("start-partition", json!({"seq": next_seq})),
                    );
                    if s.a % 7 == 0 {
                        emit(
                            &mut lines,
                            time,
                            nemesis(
                                "nemesis-error",
                                json!({"seq": next_seq, "error": "no netem"}),
                            ),
                        );
                    }
                    open_faults.push(next_seq);
                    next_seq += 1;
                }
                (21, _) if !open_faults.is_empty() => {
                    let seq = open_faults.remove(s.a as usize % open_faults.len());
                    let healed = s.b % 9 != 0;
                    emit(
                        &mut lines,
                        time,
                        nemesis("stop-partition", json!({"seq": seq, "healed": healed})),
                    );
                }
                (22, 0) => emit(
                    &mut lines,
                    time,
                    nemesis(
                        "nemesis-error",
                        json!({"planned": "kill-redis", "error": "no such node"}),
                    ),
                ),
                (22, 1) => emit(
                    &mut lines,
                    time,
                    nemesis(
                        "nemesis-plan",
                        json!({"faults": ["partition-node"], "scheduled": s.a % 2}),
                    ),
                ),
                _ => {}
            }
            continue;
        }
        let key = format!("k{}", s.a % 2);
        let f = match s.action {
            0..=5 => "write",
            6..=11 => "read",
            12..=14 => "db-read",
            15..=16 => "final-read",
            17..=18 => "db-final-read",
            27 => "fill",
            _ => {
                if !final_phase {
                    final_phase = true;
                    emit(
                        &mut lines,
                        time,
                        json!({"process": "control", "type": "info", "f": "final-phase", "value": {"quiesce_ms": 0}}),
                    );
                }
                continue;
            }
        };
        let mut ev = json!({"process": process, "type": "invoke", "f": f, "key": key, "node": "n"});
        let mut own = String::new();
        if f == "write" {
            next_write += 1;
            let id = format!("w{next_write}");
            writes.push(id.clone());
            ev["value"] = json!({"write": id});
            key_of.insert(id.clone(), key.clone());
            own = id;
        }
        if f == "fill" {
            ev["value"] = value(s.b % 4, &writes[s.a as usize % writes.len()]);
        }
        emit(&mut lines, time, ev);
        pending.insert(slot, (f.to_string(), key, own));
    }
    lines
}

#[derive(Debug, Clone)]
struct Op {
    index: u64,
    process: i64,
    f: String,
    key: String,
    node: Option<String>,
    kind: String, // ok, fail, info ("info" also for unfinished)
    invoke: u64,
    complete: Option<u64>,
    complete_index: Option<u64>,
    write_id: Option<String>,
    value: Option<(i64, String)>,
    log: Option<Vec<(i64, String)>>,
}

fn versioned(v: &Value) -> Option<(i64, String)> {
    Some((
        v.get("version")?.as_i64()?,
        v.get("write")?.as_str()?.to_string(),
    ))
}

/// A history whose values without a version got theirs from the commit order, by the
/// definitions of *Values without versions*: the versioned text, the phantom reads and
/// lost writes of what no commit shows, and whether the order was not certain.
struct Resolved {
    text: String,
    found: Vec<(&'static str, Found)>,
    blind: bool,
    /// Values that got a version.
    placed: usize,
}

/// What resolution did to a history's values without a version: how many got a version,
/// the phantom reads and lost writes of the writes no commit shows, and whether the
/// order was not certain (so that a test can see the generator reaches each case).
pub fn resolution(text: &str) -> (usize, usize, usize, bool) {
    let r = resolve(text);
    let count = |name: &str| r.found.iter().filter(|f| f.0 == name).count();
    (
        r.placed,
        count("phantom-read"),
        count("lost-write"),
        r.blind,
    )
}

/// True for a value that names its write but no version.
fn unversioned(v: &Value) -> bool {
    v.is_object() && v["write"].is_string() && v.get("version").is_none()
}

fn resolve(text: &str) -> Resolved {
    let mut events: Vec<Value> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let valued = |e: &Value| -> bool {
        let f = e["f"].as_str().unwrap_or("");
        match e["type"].as_str().unwrap_or("") {
            "invoke" => f == "fill",
            "ok" => [
                "read",
                "final-read",
                "db-read",
                "fill",
                "write",
                "db-final-read",
            ]
            .contains(&f),
            _ => false,
        }
    };
    let sample = |e: &Value| e["process"].is_string() && e["f"] == "sample";
    let any = events.iter().any(|e| {
        (e["process"].is_i64() && valued(e) && unversioned(&e["value"]))
            || (sample(e) && unversioned(&e["value"]["held"]))
    });
    if !any {
        return Resolved {
            text: text.to_string(),
            found: Vec::new(),
            blind: false,
            placed: 0,
        };
    }
    // Each key's commit order: write id -> version (stated, else its place).
    let mut order: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    let mut positional = false;
    for e in &events {
        if e["process"].is_string() && e["f"] == "commit" && e["key"].is_string() {
            let Some(id) = e["value"]["write"].as_str() else {
                continue;
            };
            if id == "init" {
                continue;
            }
            let list = order.entry(e["key"].as_str().unwrap().into()).or_default();
            if !list.iter().any(|(w, _)| w == id) {
                let place = list.len() as i64 + 1;
                let v = match e["value"]["version"].as_i64() {
                    Some(v) => v,
                    None => {
                        positional = true;
                        place
                    }
                };
                list.push((id.to_string(), v));
            }
        }
    }
    let version_of = |key: &str, id: &str| -> Option<i64> {
        if id == "init" {
            return Some(0);
        }
        order
            .get(key)?
            .iter()
            .find(|(w, _)| w == id)
            .map(|(_, v)| *v)
    };
    let gap = events.iter().any(|e| {
        e["f"] == "observer-gap"
            && e["process"]
                .as_str()
                .is_some_and(|a| !a.starts_with("monitor:"))
            && e["node"].is_string()
            && e["value"]["from"].is_u64()
            && e["value"]["to"].is_u64()
    });
    let mut found = Vec::new();
    let mut unresolved = 0;
    let mut placed = 0;
    let mut final_unseen = false;
    // The write id a write's invoke carried, by process, to name an ok write's value.
    let mut invoked: HashMap<i64, (u64, String)> = HashMap::new();
    // Processes with a fill outstanding whose invoke's value no commit shows.
    let mut fill_invoked: HashMap<i64, bool> = HashMap::new();
    for e in events.iter_mut() {
        if e["process"].is_string() {
            if e["f"] == "commit"
                && e["key"].is_string()
                && e["value"]["write"].is_string()
                && e["value"].get("version").is_none()
            {
                let v = version_of(
                    e["key"].as_str().unwrap(),
                    e["value"]["write"].as_str().unwrap(),
                );
                e["value"]["version"] = json!(v.unwrap_or(0));
            }
            // A read-back of a write no commit shows is no evidence: dropped.
            if sample(e) && unversioned(&e["value"]["held"]) {
                match version_of(
                    e["key"].as_str().unwrap(),
                    e["value"]["held"]["write"].as_str().unwrap(),
                ) {
                    Some(v) => e["value"]["held"]["version"] = json!(v),
                    None => e["f"] = json!("dropped-sample"),
                }
            }
            continue;
        }
        let p = e["process"].as_i64().unwrap();
        if e["type"] == "invoke" {
            invoked.insert(
                p,
                (
                    e["index"].as_u64().unwrap(),
                    e["value"]["write"].as_str().unwrap_or("").to_string(),
                ),
            );
        } else if let Some(unseen) = fill_invoked.remove(&p) {
            // A fill's value is its ok's; one that did not end ok keeps its invoke's.
            if unseen && e["type"] != "ok" {
                unresolved += 1;
            }
        }
        if !valued(e) || !unversioned(&e["value"]) {
            continue;
        }
        if e["type"] == "invoke" {
            let (key, id) = (
                e["key"].as_str().unwrap(),
                e["value"]["write"].as_str().unwrap(),
            );
            let v = version_of(key, id);
            fill_invoked.insert(p, v.is_none());
            e["value"] = v.map_or(Value::Null, |v| json!({"version": v, "write": id}));
            continue;
        }
        let f = e["f"].as_str().unwrap().to_string();
        let key = e["key"].as_str().unwrap().to_string();
        let id = if f == "write" {
            invoked[&p].1.clone() // an ok write's value is its invoke's write id
        } else {
            e["value"]["write"].as_str().unwrap().to_string()
        };
        match version_of(&key, &id) {
            Some(v) => {
                placed += 1;
                e["value"]["version"] = json!(v);
            }
            None => {
                unresolved += 1;
                let at = invoked[&p].0;
                match f.as_str() {
                    "read" | "final-read" | "db-read" => {
                        found.push(("phantom-read", (key, Some(at), -1)));
                        e["value"] = Value::Null;
                    }
                    // acknowledged, never committed: lost, and judged by nothing else
                    "write" => {
                        found.push(("lost-write", (key, Some(at), -1)));
                        e["type"] = json!("info");
                    }
                    "db-final-read" => final_unseen = true,
                    _ => e["value"] = Value::Null, // a fill installs nothing
                }
            }
        }
    }
    let blind = final_unseen || (gap && (positional || unresolved > 0));
    if blind {
        found.clear();
    }
    let text = events.iter().map(|e| format!("{e}\n")).collect();
    Resolved {
        text,
        found,
        blind,
        placed,
    }
}

/// One anomaly by the definitions: the key, the offending operation's invoke index
/// (`None` for the anomalies counted per (key, version): [`counted_per_op`]), and the
/// version at stake (read, written or forked).
pub type Found = (String, Option<u64>, i64);

/// True for the anomalies counted once per offending operation; `version-fork` is
/// counted once per (key, version) (`docs/history.md`, "Counting").
pub fn counted_per_op(name: &str) -> bool {
    name != "version-fork"
}

/// Counts the anomalies of the history text by the definitions.
pub fn counts(text: &str, bound: u64) -> BTreeMap<&'static str, u64> {
    findings(text, bound)
        .into_iter()
        .map(|(name, found)| (name, found.len() as u64))
        .collect()
}

/// The anomalies of the history text by the definitions, by name.
pub fn findings(text: &str, bound: u64) -> BTreeMap<&'static str, Vec<Found>> {
    analyse(text, bound).0
}

/// The anomalies by name, the fate of every awaited invalidation, and whether the
/// history watches any cache node.
fn analyse(text: &str, bound: u64) -> (BTreeMap<&'static str, Vec<Found>>, Vec<Fate>, bool) {
    let resolved = resolve(text);
    let text = resolved.text.as_str();
    let events: Vec<Value> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut ops: Vec<Op> = Vec::new();
    let mut open: HashMap<i64, usize> = HashMap::new();
    let mut final_phase: Option<u64> = None;
    let mut final_time: Option<u64> = None;
    let mut watched: Vec<String> = Vec::new();
    let mut observe_seen = false;
    // (key, node, time, index, f) of what cache observers saw
    let mut seen: Vec<(String, String, u64, u64, String)> = Vec::new();
    // (node, from, to) of cache observers' gaps
    let mut gaps: Vec<(String, u64, u64)> = Vec::new();
    // (key, node, from, version held or None) of cache observers' read-backs
    let mut samples: Vec<(String, String, u64, Option<i64>)> = Vec::new();
    // (key, write id, version, time) of commit events
    let mut commits: Vec<(String, String, Option<i64>, u64)> = Vec::new();
    let mut end_time = 0;
    for e in &events {
        let index = e["index"].as_u64().unwrap();
        let time = e["time"].as_u64().unwrap();
        end_time = time;
        if let Some(actor) = e["process"].as_str() {
            let f = e["f"].as_str().unwrap();
            if f == "final-phase" && final_phase.is_none() {
                final_phase = Some(index);
                final_time = Some(time);
            }
            if f == "observe" && actor == "control" && !observe_seen {
                observe_seen = true;
                for n in e["value"]["caches"].as_array().into_iter().flatten() {
                    watched.push(n.as_str().unwrap().to_string());
                }
            }
            if actor.starts_with("monitor:")
                && ["invalidate", "set", "expire", "evict"].contains(&f)
                && e["key"].is_string()
                && e["node"].is_string()
            {
                seen.push((
                    e["key"].as_str().unwrap().into(),
                    e["node"].as_str().unwrap().into(),
                    time,
                    index,
                    f.into(),
                ));
            }
            // a sample answered more than 1 s after it was sent is no evidence
            let sent = e["value"]["from"].as_u64().unwrap_or(0).min(time);
            if f == "sample" && actor.starts_with("monitor:") && time - sent <= 1_000_000_000 {
                let held = &e["value"]["held"];
                samples.push((
                    e["key"].as_str().unwrap().into(),
                    e["node"].as_str().unwrap().into(),
                    e["value"]["from"].as_u64().unwrap().min(time),
                    held["version"].as_i64().filter(|_| !held.is_null()),
                ));
            }
            if f == "observer-gap" && actor.starts_with("monitor:") && e["node"].is_string() {
                gaps.push((
                    e["node"].as_str().unwrap().into(),
                    e["value"]["from"].as_u64().unwrap(),
                    e["value"]["to"].as_u64().unwrap(),
                ));
            }
            if f == "commit" && e["key"].is_string() {
                if let Some(id) = e["value"]["write"].as_str() {
                    commits.push((
                        e["key"].as_str().unwrap().into(),
                        id.into(),
                        e["value"]["version"].as_i64(),
                        time,
                    ));
                }
            }
            continue;
        }
        let p = e["process"].as_i64().unwrap();
        if e["type"] == "invoke" {
            open.insert(p, ops.len());
            ops.push(Op {
                index,
                process: p,
                f: e["f"].as_str().unwrap().into(),
                key: e["key"].as_str().unwrap().into(),
                node: e["node"].as_str().map(String::from),
                kind: "info".into(),
                invoke: time,
                complete: None,
                complete_index: None,
                write_id: e["value"]["write"].as_str().map(String::from),
                value: None,
                log: None,
            });
        } else {
            let op = &mut ops[open.remove(&p).unwrap()];
            op.kind = e["type"].as_str().unwrap().into();
            op.complete = Some(time);
            op.complete_index = Some(index);
            if let Some(n) = e["node"].as_str() {
                op.node = Some(n.to_string());
            }
            if op.kind == "ok" {
                op.value = versioned(&e["value"]);
                op.log = e["value"]["log"].as_array().map(|l| {
                    l.iter()
                        .map(|x| (x[0].as_i64().unwrap(), x[1].as_str().unwrap().to_string()))
                        .collect()
                });
            }
        }
    }
    let ok = |o: &Op, f: &str| o.kind == "ok" && o.f == f;
    let ok_writes: Vec<&Op> = ops.iter().filter(|o| ok(o, "write")).collect();
    // a write's identity: its invoke's id, acknowledged with the ok's version
    let wval = |w: &Op| (w.value.as_ref().unwrap().0, w.write_id.clone().unwrap());
    let init_in_force = |key: &str| !ok_writes.iter().any(|w| w.key == key && wval(w).0 == 0);
    let is_read = |o: &Op| ok(o, "read") || ok(o, "db-read");
    let mut c: BTreeMap<&'static str, Vec<Found>> = [
        "stale-read",
        "phantom-read",
        "version-fork",
        "lost-write",
        "monotonic-read",
        "read-your-writes",
        "non-convergence",
        "missing-invalidation",
        "slow-invalidation",
    ]
    .into_iter()
    .map(|n| (n, Vec::new()))
    .collect();
    let mut found = |name: &str, key: &str, op: Option<u64>, version: i64| {
        c.get_mut(name)
            .unwrap()
            .push((key.to_string(), op, version));
    };

    // stale-read
    for r in ops.iter().filter(|o| is_read(o)) {
        let Some((v, _)) = &r.value else { continue };
        if ok_writes
            .iter()
            .any(|w| w.key == r.key && wval(w).0 > *v && w.complete.unwrap() + bound < r.invoke)
        {
            found("stale-read", &r.key, Some(r.index), *v);
        }
    }
    // phantom-read
    for r in ops.iter().filter(|o| is_read(o) || ok(o, "final-read")) {
        let Some((v, id)) = &r.value else { continue };
        let phantom = if id == "init" {
            !(init_in_force(&r.key) && *v == 0)
        } else {
            let same: Vec<&Op> = ops
                .iter()
                .filter(|w| w.f == "write" && w.key == r.key && w.write_id.as_deref() == Some(id))
                .collect();
            if same.is_empty() {
                true
            } else if let Some(w) = same.iter().find(|w| w.kind == "ok") {
                wval(w).0 != *v
            } else {
                !same.iter().any(|w| w.kind == "info")
            }
        };
        if phantom {
            found("phantom-read", &r.key, Some(r.index), *v);
        }
    }
    // version-fork
    let keys: BTreeSet<&str> = ops.iter().map(|o| o.key.as_str()).collect();
    for key in &keys {
        let mut tied: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
        for w in ok_writes.iter().filter(|w| w.key == *key) {
            let (v, id) = wval(w);
            tied.entry(v).or_default().insert(id);
        }
        if init_in_force(key) {
            tied.entry(0).or_default().insert("init".into());
        }
        let info_ids: BTreeSet<String> = ops
            .iter()
            .filter(|w| w.f == "write" && w.key == *key && w.kind == "info")
            .filter(|w| !ok_writes.iter().any(|o| o.write_id == w.write_id))
            .filter_map(|w| w.write_id.clone())
            .collect();
        for r in ops.iter().filter(|o| {
            o.key == *key
                && o.kind == "ok"
                && ["read", "db-read", "final-read", "db-final-read"].contains(&o.f.as_str())
        }) {
            let mut shown: Vec<(i64, String)> = r.value.iter().cloned().collect();
            shown.extend(r.log.iter().flatten().cloned());
            for (v, id) in shown {
                if info_ids.contains(&id) {
                    tied.entry(v).or_default().insert(id);
                }
            }
        }
        for (&version, _) in tied.iter().filter(|(_, s)| s.len() > 1) {
            found("version-fork", key, None, version);
        }
    }
    // the last ok db-final-read of each key, by completion (in file order)
    let final_of = |key: &str| -> Option<&Op> {
        // (one whose write no commit shows has no version: no state to judge against)
        ops.iter()
            .filter(|o| ok(o, "db-final-read") && o.key == key)
            .max_by_key(|o| o.complete_index)
            .filter(|o| o.value.is_some())
    };
    let is_lost = |w: &Op| -> bool {
        let Some(d) = final_of(&w.key) else {
            return false;
        };
        let (v, id) = wval(w);
        match &d.log {
            Some(log) => !log.contains(&(v, id)),
            None => v > d.value.as_ref().unwrap().0,
        }
    };
    // lost-write
    for w in &ok_writes {
        if is_lost(w) {
            found("lost-write", &w.key, Some(w.index), wval(w).0);
        }
    }
    // missing-invalidation and slow-invalidation: every pair's fate, by the definitions
    let pairs = fates(
        &ops, &watched, &seen, &samples, &gaps, &commits, final_time, end_time, &is_lost,
    );
    let all_fates: Vec<Fate> = pairs.iter().map(|p| p.3).collect();
    for (key, version, w, fate) in pairs {
        match fate {
            Fate::Missing => found("missing-invalidation", &key, Some(w.index), version),
            Fate::Invalidated(lag) if lag > INVALIDATION_BOUND => {
                found("slow-invalidation", &key, Some(w.index), version)
            }
            _ => {}
        }
    }
    // monotonic-read and read-your-writes
    for r in ops.iter().filter(|o| is_read(o)) {
        let Some((u, _)) = &r.value else { continue };
        let earlier = ops
            .iter()
            .filter(|o| o.process == r.process && o.key == r.key && o.index < r.index);
        if earlier
            .clone()
            .any(|o| is_read(o) && o.value.as_ref().is_some_and(|(v, _)| v > u))
        {
            found("monotonic-read", &r.key, Some(r.index), *u);
        }
        if earlier
            .into_iter()
            .any(|o| ok(o, "write") && wval(o).0 > *u)
        {
            found("read-your-writes", &r.key, Some(r.index), *u);
        }
    }
    // non-convergence
    if let Some(fp) = final_phase {
        for r in ops.iter().filter(|o| ok(o, "final-read") && o.index > fp) {
            let Some(val) = &r.value else { continue };
            if let Some(d) = final_of(&r.key) {
                if d.value.as_ref() != Some(val) {
                    found("non-convergence", &r.key, Some(r.index), val.0);
                }
            }
        }
    }
    for (name, f) in resolved.found {
        c.get_mut(name).unwrap().push(f);
    }
    (c, all_fates, !watched.is_empty())
}

/// The invalidation bound the property tests check `slow-invalidation` with (1 ms).
pub const INVALIDATION_BOUND: u64 = 1_000_000;

/// What became of an older entry after a commit (`docs/history.md`, *Observers*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Invalidated, this long after the commit (0 when seen before it).
    Invalidated(u64),
    /// Overwritten by a fill of the new version.
    Overwritten,
    /// Gone by expiry or eviction.
    Expired,
    /// Never by the final phase.
    Missing,
    /// Not by the end of a history without a final phase.
    Pending,
    /// An observer gap overlaps the time that decides.
    Blind,
}

/// Every (committed version, watched node that held an older version) of the history,
/// with its fate: (key, version, write, fate).
#[allow(clippy::too_many_arguments)]
fn fates<'o>(
    ops: &'o [Op],
    watched: &[String],
    seen: &[(String, String, u64, u64, String)],
    samples: &[(String, String, u64, Option<i64>)],
    gaps: &[(String, u64, u64)],
    commits: &[(String, String, Option<i64>, u64)],
    final_time: Option<u64>,
    end_time: u64,
    is_lost: &dyn Fn(&Op) -> bool,
) -> Vec<(String, i64, &'o Op, Fate)> {
    let mut out = Vec::new();
    let keys: BTreeSet<&str> = ops.iter().map(|o| o.key.as_str()).collect();
    for key in keys {
        // The committed versions: kept ok writes, and info writes a commit event shows
        // committed with a version; timed by their first commit event, else the ack.
        let first_commit = |id: &str| commits.iter().find(|c| c.0 == key && c.1 == id);
        let mut committed: Vec<(i64, u64, &Op)> = Vec::new();
        for w in ops.iter().filter(|o| o.f == "write" && o.key == key) {
            let Some(id) = w.write_id.as_deref() else {
                continue;
            };
            let c = first_commit(id);
            let version = match w.kind.as_str() {
                // kept, or seen committed (whatever the database lost later)
                "ok" if c.is_some() || !is_lost(w) => w.value.as_ref().unwrap().0,
                "info" => match c.and_then(|c| c.2) {
                    Some(v) => v,
                    None => continue,
                },
                _ => continue,
            };
            let time = c.map_or(w.complete.unwrap_or(u64::MAX), |c| c.3);
            // one write per version: the earliest committed, the first among equals
            match committed.iter_mut().find(|c| c.0 == version) {
                Some(e) if time < e.1 => *e = (version, time, w),
                Some(_) => {}
                None => committed.push((version, time, w)),
            }
        }
        for node in watched {
            for &(version, commit, w) in &committed {
                let began = w.invoke;
                // the holding evidence before W began: (time, version or None for a miss)
                let evidence = ops
                    .iter()
                    .filter(|o| o.key == key && o.node.as_deref() == Some(node) && o.kind == "ok")
                    .filter_map(|o| match o.f.as_str() {
                        // not when, between its invoke and its completion, the
                        // observer saw the key removed, or set more than once
                        "fill" => {
                            let t = o.complete.unwrap();
                            let during: Vec<&str> = seen
                                .iter()
                                .filter(|c| c.0 == key && &c.1 == node && c.2 > o.invoke && c.2 < t)
                                .map(|c| c.4.as_str())
                                .collect();
                            let removed = during.iter().any(|f| *f != "set");
                            let sets = during.iter().filter(|f| **f == "set").count();
                            (!removed && sets <= 1).then(|| (t, o.value.as_ref().map(|v| v.0)))
                        }
                        "read" | "final-read" => Some((o.invoke, o.value.as_ref().map(|v| v.0))),
                        _ => None,
                    })
                    // and the observer's read-backs of the node, at their `from`
                    .chain(
                        samples
                            .iter()
                            .filter(|x| x.0 == key && &x.1 == node)
                            .map(|x| (x.2, x.3)),
                    );
                let Some(last) = evidence.filter(|e| e.0 < began).max() else {
                    continue;
                };
                let (t_e, Some(held)) = last else { continue };
                if held >= version {
                    continue;
                }
                let changes: Vec<&(String, String, u64, u64, String)> = {
                    let mut c: Vec<_> =
                        seen.iter().filter(|c| c.0 == key && &c.1 == node).collect();
                    c.sort_by_key(|c| (c.2, c.3));
                    c
                };
                if changes.iter().any(|c| c.2 > t_e && c.2 < began) {
                    continue;
                }
                let mut fate = None;
                for c in changes
                    .iter()
                    .filter(|c| c.2 > t_e && final_time.is_none_or(|f| c.2 <= f))
                {
                    match c.4.as_str() {
                        "invalidate" => {
                            fate = Some((Fate::Invalidated(c.2.saturating_sub(commit)), c.2));
                            break;
                        }
                        "expire" | "evict" => {
                            fate = Some((Fate::Expired, c.2));
                            break;
                        }
                        _ => {
                            let newer = ops.iter().any(|o| {
                                o.f == "fill"
                                    && o.kind == "ok"
                                    && o.key == key
                                    && o.node.as_deref() == Some(node)
                                    && o.value.as_ref().is_some_and(|v| v.0 >= version)
                                    && o.complete
                                        .is_some_and(|t| t >= c.2 && t <= c.2 + 1_000_000_000)
                            }) || samples.iter().any(|x| {
                                x.0 == key
                                    && &x.1 == node
                                    && x.3.is_some_and(|v| v >= version)
                                    && x.2 >= c.2
                                    && x.2 <= c.2 + 1_000_000_000
                            });
                            if newer {
                                fate = Some((Fate::Overwritten, c.2));
                                break;
                            }
                        }
                    }
                }
                let (fate, until) = fate.unwrap_or(match final_time {
                    Some(f) => (Fate::Missing, f),
                    None => (Fate::Pending, end_time),
                });
                let blind = gaps
                    .iter()
                    .any(|g| &g.0 == node && g.1 <= until && g.2 >= t_e);
                out.push((
                    key.to_string(),
                    version,
                    w,
                    if blind { Fate::Blind } else { fate },
                ));
            }
        }
    }
    out
}

/// The verdict of the history text by the definitions of `docs/history.md` ("Verdict"):
/// each check's status, then the whole.
pub fn verdict(text: &str, bound: u64) -> (&'static str, BTreeMap<&'static str, &'static str>) {
    let (found, fates, watching) = analyse(text, bound);
    let resolved = resolve(text);
    let text = resolved.text.as_str();
    let counts: BTreeMap<&'static str, u64> = found
        .into_iter()
        .map(|(n, f)| (n, f.len() as u64))
        .collect();
    let count_fates = |pred: &dyn Fn(&Fate) -> bool| fates.iter().filter(|f| pred(f)).count();
    let events: Vec<Value> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Pair client events into (f, key, type, value, invoke index).
    let mut ops: Vec<(String, String, String, Value, u64)> = Vec::new();
    let mut open: HashMap<i64, usize> = HashMap::new();
    let mut final_phase: Option<u64> = None;
    let mut problems = 0;
    let mut faults: BTreeMap<u64, &'static str> = BTreeMap::new(); // seq -> state
    for e in &events {
        let index = e["index"].as_u64().unwrap();
        if e["process"].is_string() {
            let f = e["f"].as_str().unwrap();
            if f == "final-phase" && final_phase.is_none() {
                final_phase = Some(index);
            }
            if e["process"] == "nemesis" {
                let seq = e["value"]["seq"].as_u64();
                match (f, seq) {
                    ("nemesis-plan", _)
                        if e["value"]["scheduled"] == 0
                            && e["value"]["faults"]
                                .as_array()
                                .is_some_and(|a| !a.is_empty()) =>
                    {
                        problems += 1
                    }
                    ("nemesis-plan", _) => {}
                    ("nemesis-error", Some(seq)) if faults.contains_key(&seq) => {
                        faults.insert(seq, "apply-failed");
                    }
                    ("nemesis-error", _) => problems += 1,
                    (_, Some(seq)) if f.starts_with("start-") => {
                        faults.insert(seq, "open");
                    }
                    (_, Some(seq)) if f.starts_with("stop-") => {
                        let state = faults.get(&seq).copied();
                        if e["value"]["healed"] == false && state != Some("apply-failed") {
                            faults.insert(seq, "heal-failed");
                        } else if state == Some("open") {
                            faults.insert(seq, "healed");
                        }
                    }
                    _ => {}
                }
            }
            continue;
        }
        let p = e["process"].as_i64().unwrap();
        if e["type"] == "invoke" {
            open.insert(p, ops.len());
            ops.push((
                e["f"].as_str().unwrap().into(),
                e["key"].as_str().unwrap().into(),
                "info".into(),
                Value::Null,
                index,
            ));
        } else {
            let op = &mut ops[open.remove(&p).unwrap()];
            op.2 = e["type"].as_str().unwrap().into();
            op.3 = e["value"].clone();
        }
    }
    problems += faults.values().filter(|s| **s != "healed").count();
    let ok = |f: &'static str| ops.iter().filter(move |o| o.2 == "ok" && o.0 == f);
    let reads = ok("read").count() + ok("db-read").count();
    let valued = ops
        .iter()
        .filter(|o| {
            o.2 == "ok"
                && ["read", "db-read", "final-read"].contains(&o.0.as_str())
                && !o.3.is_null()
        })
        .count();
    let written_keys: BTreeSet<&str> = ok("write").map(|o| o.1.as_str()).collect();
    let final_keys: BTreeSet<&str> = ok("db-final-read").map(|o| o.1.as_str()).collect();
    let after: Vec<&(String, String, String, Value, u64)> = ops
        .iter()
        .filter(|o| o.2 == "ok" && o.0 == "final-read" && final_phase.is_some_and(|fp| o.4 > fp))
        .collect();
    let undecided = |name: &str| -> bool {
        match name {
            "stale-read" | "monotonic-read" | "read-your-writes" => reads == 0,
            "phantom-read" => valued == 0,
            "version-fork" => written_keys.is_empty(),
            "lost-write" => written_keys.is_empty() || !written_keys.is_subset(&final_keys),
            "non-convergence" => {
                final_phase.is_none()
                    || after.is_empty()
                    || after.iter().any(|o| !final_keys.contains(o.1.as_str()))
            }
            // judged: every fate but expired; unknown when blind or pending, or none judged
            "missing-invalidation" => {
                count_fates(&|f| matches!(f, Fate::Blind | Fate::Pending)) > 0
                    || count_fates(&|f| *f != Fate::Expired) == 0
            }
            // judged: every fate but expired and pending; unknown when blind, or none judged
            "slow-invalidation" => {
                count_fates(&|f| *f == Fate::Blind) > 0
                    || count_fates(&|f| !matches!(f, Fate::Expired | Fate::Pending)) == 0
            }
            _ => unreachable!(),
        }
    };
    let statuses: BTreeMap<&'static str, &'static str> = counts
        .iter()
        .map(|(&name, &n)| {
            let observer_check = name == "missing-invalidation" || name == "slow-invalidation";
            let status = if observer_check && !watching {
                "not-run"
            } else if n > 0 {
                "invalid"
            } else if resolved.blind || undecided(name) {
                "unknown"
            } else {
                "valid"
            };
            (name, status)
        })
        .collect();
    let evidence = ops.iter().any(|o| o.2 == "ok");
    let verdict = if statuses.values().any(|s| *s == "invalid") {
        "invalid"
    } else if !evidence || problems > 0 || statuses.values().any(|s| *s == "unknown") {
        "unknown"
    } else {
        "valid"
    };
    (verdict, statuses)
}
