//! `phantom-read`, live, at the end of the history: an ok `read`, `db-read` or
//! `final-read` of a versioned value that no write produced: its write id belongs to no
//! write of the key (nor `"init"` at version 0 while no write was acknowledged as
//! version 0), or only to failed ones, or to one acknowledged with another version
//! (`docs/history.md`, *Anomalies*; `detect::phantom_read` offline).
//!
//! A write of the id may come until the end, so a read is decided only then, and only
//! one that looked like a phantom when it completed (a read that looked fine may still
//! become one, if its id is written again: live says nothing of it). Each write id's
//! state is kept, as the offline check's: its last acknowledged write (by invoke
//! order), else its first write (`info` or `fail`); an operation still in flight at the
//! end is of unknown outcome. Histories with values without versions are left to the
//! offline check (their phantoms come from the commit order).
//!
//! The states of write ids last written longer than [`super::MEMORY`] ago are
//! forgotten, and the suspects that name them with them; on a key that forgot any, a
//! read of an id it does not know is no suspect (it may be a forgotten one).

use super::{Pending, Value};
use crate::detect::AnomalyKind;
use coherence_store::reader::EventRef;
use coherence_store::{EventType, OpKind};
use rustc_hash::{FxHashMap, FxHashSet};

/// What the writes of one write id of a key did.
#[derive(Debug, Default, Clone, Copy)]
struct WState {
    /// The last acknowledged one (by invoke index), and its version.
    last_ok: Option<(u64, i64)>,
    /// The first other one (by invoke index), and whether it failed.
    first_other: Option<(u64, bool)>,
    /// The latest invoke time of its writes.
    time: u64,
}

/// A read that looked like a phantom when it completed.
#[derive(Debug)]
struct Suspect {
    index: u64,
    at: u64,
    node: String,
    write: String,
    version: i64,
}

#[derive(Debug, Default)]
struct PKey {
    writes: FxHashMap<String, WState>,
    /// Some write was acknowledged as version 0 (then `"init"` is no version).
    ok_zero: bool,
    suspects: Vec<Suspect>,
    /// Some write id's state was forgotten.
    forgot: bool,
}

/// Why a read of (`write`, `version`) is a phantom by `k`'s writes so far, if it is.
fn phantom(k: &PKey, write: &str, version: i64) -> Option<String> {
    if write == "init" {
        return (k.ok_zero || version != 0)
            .then(|| "the initial value, which is version 0 only while no write is".into());
    }
    match k.writes.get(write) {
        None => Some("no write of the key has that id".into()),
        Some(WState {
            last_ok: Some((_, v)),
            ..
        }) if *v != version => Some(format!("that write was acknowledged as version {v}")),
        Some(WState {
            last_ok: Some(_), ..
        }) => None,
        Some(WState {
            first_other: Some((_, true)),
            ..
        }) => Some("that write failed".into()),
        Some(_) => None, // of unknown outcome: it may have taken effect
    }
}

/// The live phantom-read check.
#[derive(Debug, Default)]
pub(super) struct Phantoms {
    keys: FxHashMap<String, PKey>,
    /// A value without a version was seen: left to the offline check.
    unversioned: bool,
}

impl Phantoms {
    /// A client operation's completion (`inv` its invoke).
    pub(super) fn completed(&mut self, inv: &Pending, ev: &EventRef<'_>) {
        if self.unversioned {
            return;
        }
        let value = ev.value.versioned().map(Value::of);
        if value.as_ref().is_some_and(|v| v.version.is_none()) {
            self.unversioned = true;
            self.keys.clear();
            return;
        }
        let k = self.keys.entry(inv.key.clone()).or_default();
        match inv.op {
            OpKind::Write => {
                let Some(write) = inv.write.clone() else {
                    return;
                };
                let version = value.and_then(|v| v.version);
                if ev.kind == EventType::Ok && version.is_none() {
                    return; // acknowledged without a version: no place in the order
                }
                let s = k.writes.entry(write).or_default();
                s.time = s.time.max(inv.time);
                match (ev.kind, version) {
                    (EventType::Ok, Some(v)) => {
                        if s.last_ok.is_none_or(|(i, _)| inv.index > i) {
                            s.last_ok = Some((inv.index, v));
                        }
                        k.ok_zero |= v == 0;
                    }
                    (EventType::Ok, None) => {}
                    (kind, _) => {
                        if s.first_other.is_none_or(|(i, _)| inv.index < i) {
                            s.first_other = Some((inv.index, kind == EventType::Fail));
                        }
                    }
                }
            }
            OpKind::Read | OpKind::DbRead | OpKind::FinalRead if ev.kind == EventType::Ok => {
                let Some(v) = value else { return }; // a miss
                let version = v.version.unwrap_or_default();
                let forgotten = k.forgot && v.write != "init" && !k.writes.contains_key(&v.write);
                if !forgotten && phantom(k, &v.write, version).is_some() {
                    k.suspects.push(Suspect {
                        index: inv.index,
                        at: ev.index,
                        node: ev.node.as_deref().unwrap_or("?").to_string(),
                        write: v.write,
                        version,
                    });
                }
            }
            _ => {}
        }
    }

    /// How many write ids' states and suspects it holds.
    pub(super) fn remembered(&self) -> usize {
        self.keys
            .values()
            .map(|k| k.writes.len() + k.suspects.len())
            .sum()
    }

    /// Forgets the states of the write ids last written before `cutoff`, and the
    /// suspects that name them (they cannot be decided any more).
    pub(super) fn prune(&mut self, cutoff: u64) {
        for k in self.keys.values_mut() {
            let mut gone = FxHashSet::default();
            k.writes.retain(|id, s| {
                let keep = s.time >= cutoff;
                if !keep {
                    gone.insert(id.clone());
                }
                keep
            });
            if !gone.is_empty() {
                k.forgot = true;
                k.suspects.retain(|s| !gone.contains(&s.write));
            }
        }
    }

    /// At the end of the history (`pending`: the operations still in flight, of unknown
    /// outcome): the suspects that are phantoms.
    pub(super) fn finish(
        &mut self,
        pending: &FxHashMap<i64, Pending>,
    ) -> Vec<(AnomalyKind, String, u64, String)> {
        if self.unversioned {
            return Vec::new();
        }
        for p in pending.values() {
            let (OpKind::Write, Some(write)) = (p.op, &p.write) else {
                continue;
            };
            if let Some(k) = self.keys.get_mut(&p.key) {
                let s = k.writes.entry(write.clone()).or_default();
                if s.first_other.is_none_or(|(i, _)| p.index < i) {
                    s.first_other = Some((p.index, false));
                }
            }
        }
        let mut out = Vec::new();
        for (key, k) in &mut self.keys {
            for s in std::mem::take(&mut k.suspects) {
                if let Some(why) = phantom(k, &s.write, s.version) {
                    out.push((
                        AnomalyKind::PhantomRead,
                        key.clone(),
                        s.index,
                        format!(
                            "read of key {} on {} (line {}) returned version {} of write {}: {why}",
                            coherence_store::quote(key),
                            s.node,
                            s.at + 1,
                            s.version,
                            coherence_store::quote(&s.write)
                        ),
                    ));
                }
            }
        }
        out
    }
}
