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
    (0u8..3, 0u8..23, any::<u8>(), any::<u8>(), 0u8..3).prop_map(|(process, action, a, b, dt)| {
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
    let emit = |lines: &mut Vec<String>, time: u64, mut ev: Value| {
        ev["index"] = json!(lines.len());
        ev["time"] = json!(time);
        lines.push(ev.to_string());
    };
    for s in steps {
        time += s.dt as u64 * 1_000_000;
        let slot = s.process;
        let process = numbers[slot as usize];
        if let Some((f, key, own)) = pending.remove(&slot) {
            let kind = match s.a % 5 {
                0..=2 => "ok",
                3 => "fail",
                _ => "info",
            };
            let id = writes[s.a as usize % writes.len()].clone();
            let versioned = json!({"version": s.b % 4, "write": id});
            let mut ev = json!({"process": process, "type": kind, "f": f, "key": key, "node": "n"});
            if kind == "ok" {
                ev["value"] = match f.as_str() {
                    "write" => json!({"version": s.b % 4, "write": own}),
                    "read" | "final-read" if s.b % 5 == 4 => Value::Null,
                    "db-final-read" => {
                        let mut v = versioned.clone();
                        if s.b % 3 != 0 {
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
            own = id;
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
    let events: Vec<Value> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut ops: Vec<Op> = Vec::new();
    let mut open: HashMap<i64, usize> = HashMap::new();
    let mut final_phase: Option<u64> = None;
    for e in &events {
        let index = e["index"].as_u64().unwrap();
        let time = e["time"].as_u64().unwrap();
        if e["process"].is_string() {
            if e["f"] == "final-phase" && final_phase.is_none() {
                final_phase = Some(index);
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
        ops.iter()
            .filter(|o| ok(o, "db-final-read") && o.key == key && o.value.is_some())
            .max_by_key(|o| o.complete_index)
    };
    // lost-write
    for w in &ok_writes {
        let Some(d) = final_of(&w.key) else { continue };
        let (v, id) = wval(w);
        let lost = match &d.log {
            Some(log) => !log.contains(&(v, id)),
            None => v > d.value.as_ref().unwrap().0,
        };
        if lost {
            found("lost-write", &w.key, Some(w.index), v);
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
    c
}

/// The verdict of the history text by the definitions of `docs/history.md` ("Verdict"):
/// each check's status, then the whole.
pub fn verdict(text: &str, bound: u64) -> (&'static str, BTreeMap<&'static str, &'static str>) {
    let counts = counts(text, bound);
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
            _ => unreachable!(),
        }
    };
    let statuses: BTreeMap<&'static str, &'static str> = counts
        .iter()
        .map(|(&name, &n)| {
            let status = if n > 0 {
                "invalid"
            } else if undecided(name) {
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
