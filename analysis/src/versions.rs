//! Versions from the commit order, for histories whose values name only their write
//! (`{"write": id}`): docs/history.md, *Values without versions*.
//!
//! A client that does not know versions (a user's service driven through its API) logs
//! a read's value as the write id it saw. The commit observer's `commit` events fix
//! each key's version order: a write's version is the one its first `commit` event
//! states, else its place among the key's distinct write ids in the change stream
//! (1, 2, ...; `"init"` is 0). [`resolve`] assigns those versions before any check runs,
//! so every check judges an unversioned history exactly as the versioned one it
//! stands for. What no commit shows is a phantom (a read of it) or a lost write (an ok
//! write), unless the commit observer was blind: then versions cannot be assigned with
//! certainty and every check says unknown, with [`Unversioned::blind`] as the reason.

use crate::model::{History, Outcome, Val, INIT};
use coherence_store::{OpKind, UNVERSIONED};
use rustc_hash::FxHashMap;

/// What the history's values without a version became.
#[derive(Debug, Default, Clone)]
pub struct Unversioned {
    /// How many values in the history name only their write.
    pub values: u64,
    /// Per key: ok reads, final-reads and db-reads of a write id no commit shows,
    /// as (op, write id). Their value is taken away (a miss for every other check).
    pub phantoms: FxHashMap<u32, Vec<(u32, u32)>>,
    /// Per key: ok writes no commit shows (lost), by op.
    pub uncommitted: FxHashMap<u32, Vec<u32>>,
    /// Why versions could not be assigned with certainty, if so: then every check is
    /// unknown for that reason, and no phantom or lost write is claimed from it.
    pub blind: Option<String>,
}

/// Assigns every value without a version the version of its write in the commit
/// order (see the module). Needs `key_ops`.
pub fn resolve(h: &mut History) {
    if h.unversioned.values == 0 {
        return;
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    // The commit observer's own gaps (not the cache observers').
    let gap = h
        .gaps
        .iter()
        .filter(|g| !g.cache)
        .map(|g| (g.from, g.to, g.node))
        .next();
    let gap_text = gap.map(|(from, to, node)| {
        format!(
            "the commit observer of {} was blind from {:.1} ms to {:.1} ms",
            h.node_name(node),
            ms(from),
            ms(to)
        )
    });
    let mut unresolved = 0u64;
    let mut positional = false;
    let mut final_unseen: Option<(u32, u32)> = None;
    for key in 0..h.keys.len() as u32 {
        // The version of each write id in the key's change stream.
        let mut order: FxHashMap<u32, i64> = FxHashMap::default();
        let mut place = 0i64;
        for c in h.commits[key as usize].iter_mut() {
            if c.write == INIT {
                c.version.get_or_insert(0);
                continue;
            }
            let version = match order.get(&c.write) {
                Some(&v) => v,
                None => {
                    place += 1;
                    let v = c.version.unwrap_or_else(|| {
                        positional = true;
                        place
                    });
                    order.insert(c.write, v);
                    v
                }
            };
            // Commits of the write say its version from now on: the observer checks
            // read it there (a committed write of unknown outcome).
            c.version.get_or_insert(version);
        }
        let version_of = |w: u32| {
            if w == INIT {
                Some(0)
            } else {
                order.get(&w).copied()
            }
        };
        for &id in &h.key_ops[key as usize] {
            let op = &mut h.ops[id as usize];
            let Some(val) = op.value else { continue };
            if val.version != UNVERSIONED {
                continue;
            }
            if op.kind == OpKind::Write && op.outcome != Outcome::Ok {
                continue; // its version is unknown in any history
            }
            match version_of(val.write) {
                Some(version) => op.value = Some(Val { version, ..val }),
                None => {
                    unresolved += 1;
                    match op.kind {
                        OpKind::Write => h.unversioned.uncommitted.entry(key).or_default().push(id),
                        OpKind::Read | OpKind::FinalRead | OpKind::DbRead => {
                            op.value = None;
                            h.unversioned
                                .phantoms
                                .entry(key)
                                .or_default()
                                .push((id, val.write));
                        }
                        // The database's state names a write the observer did not
                        // see commit: no state to judge against.
                        OpKind::DbFinalRead => {
                            final_unseen.get_or_insert((key, val.write));
                            op.value = None;
                        }
                        // A fill of a value no commit shows: nothing to install.
                        _ => op.value = None,
                    }
                }
            }
        }
        // A read-back of a value no commit shows is no evidence of anything.
        h.samples[key as usize].retain_mut(|s| match s.held {
            Some(val) if val.version == UNVERSIONED => match version_of(val.write) {
                Some(version) => {
                    s.held = Some(Val { version, ..val });
                    true
                }
                None => false,
            },
            _ => true,
        });
        let fin = &mut h.finals[key as usize];
        if let Some(f) = fin.as_mut().filter(|f| f.value.version == UNVERSIONED) {
            match version_of(f.value.write) {
                Some(version) => f.value.version = version,
                None => *fin = None,
            }
        }
    }
    let reason = if let Some((key, write)) = final_unseen {
        Some(format!(
            "the database's final state of key {} names write {}, which no commit event \
             shows: the commit observer missed commits, so the versions of the values \
             without one are not certain",
            coherence_store::quote(h.keys.name(key)),
            coherence_store::quote(h.writes.name(write))
        ))
    } else {
        match (&gap_text, positional, unresolved) {
            (Some(g), true, _) => Some(format!(
                "{g}: commits it missed would shift the commit order that gives {} values \
                 without a version their version",
                h.unversioned.values
            )),
            (Some(g), false, n) if n > 0 => Some(format!(
                "{g}: {n} values name writes no commit event shows, which may have been \
                 committed unseen"
            )),
            _ => None,
        }
    };
    if reason.is_some() {
        // No claim rests on an order that is not certain.
        h.unversioned.phantoms.clear();
        h.unversioned.uncommitted.clear();
        h.unversioned.blind = reason;
    }
}
