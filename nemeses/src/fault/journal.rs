//! The heal journal of a run (`faults.jsonl`): every fault is written to it, synced to
//! disk, *before* it is applied, and marked healed after; whatever a run leaves applied,
//! a later `coherence heal RUN_DIR` finds here.

use super::Fault;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A journal entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    seq: u64,
    time_unix_ns: u64,
    state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fault: Option<Fault>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum State {
    Applying,
    Healed,
    /// Written when the journal is reopened after a crash cut its last line short: the
    /// line before was never a whole entry, so its fault was never applied.
    CutBefore,
}

/// The heal journal of a run: `faults.jsonl`.
pub struct Journal {
    file: File,
    path: PathBuf,
    next: u64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

impl Journal {
    /// Opens (or creates) the journal at `path`, appending after what it holds. A journal
    /// that cannot be read (see [`pending`]) is refused.
    pub fn open(path: &Path) -> std::io::Result<Journal> {
        let entries = read(path)?;
        let next = entries.iter().map(|e| e.seq + 1).max().unwrap_or(0);
        let file = File::options().create(true).append(true).open(path)?;
        let mut journal = Journal {
            file,
            path: path.to_path_buf(),
            next,
        };
        // After a crash mid-line, start the next entry on a line of its own, and say that
        // the line before was cut short (so that it reads as such once it is no longer
        // the last line).
        let text = std::fs::read(path)?;
        if text.last().is_some_and(|&b| b != b'\n') {
            journal.file.write_all(b"\n")?;
            journal.write(&Entry {
                seq: next,
                time_unix_ns: now_ns(),
                state: State::CutBefore,
                fault: None,
            })?;
        }
        Ok(journal)
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sequence number the next fault will get (for tagging its rules).
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    fn write(&mut self, entry: &Entry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }

    /// Records that `fault` is about to be applied; on disk before this returns.
    pub fn applying(&mut self, fault: &Fault) -> std::io::Result<u64> {
        let seq = self.next;
        self.next += 1;
        self.write(&Entry {
            seq,
            time_unix_ns: now_ns(),
            state: State::Applying,
            fault: Some(fault.clone()),
        })?;
        Ok(seq)
    }

    /// Records that fault `seq` was healed.
    pub fn healed(&mut self, seq: u64) -> std::io::Result<()> {
        self.write(&Entry {
            seq,
            time_unix_ns: now_ns(),
            state: State::Healed,
            fault: None,
        })
    }
}

/// The journal's entries. A line that is no entry is refused, naming it, unless it is
/// what a crash leaves: a line cut short (a proper prefix of JSON) that is the last line,
/// or that the next line says was cut (`cut-before`, written when the journal was
/// reopened). Anything else means the journal is damaged, and healing from it could
/// leave a fault in place.
fn read(path: &Path) -> std::io::Result<Vec<Entry>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    // A file ending with a newline (or an empty file) yields an empty last piece: no line.
    let count = if bytes.is_empty() || bytes.ends_with(b"\n") {
        lines.len() - 1
    } else {
        lines.len()
    };
    let mut entries = Vec::new();
    for (i, line) in lines[..count].iter().enumerate() {
        let error = match serde_json::from_slice::<Entry>(line) {
            Ok(entry) => {
                if entry.state != State::CutBefore {
                    entries.push(entry);
                }
                continue;
            }
            Err(e) => e,
        };
        let cut = error.is_eof() && !line.is_empty();
        let last = i + 1 == count;
        let marked = lines[..count]
            .get(i + 1)
            .and_then(|next| serde_json::from_slice::<Entry>(next).ok())
            .is_some_and(|e| e.state == State::CutBefore);
        if cut && (last || marked) {
            continue; // a crash cut it short while it was written: never applied
        }
        let shown: String = String::from_utf8_lossy(line).chars().take(120).collect();
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}:{}: not a heal journal entry ({error}): {shown:?}; only a cut-short last \
                 line is what a crash leaves. Healing from a damaged journal could leave a \
                 fault in place: look at that line, repair or remove it, and run \
                 `coherence heal` again (iptables rules of a run carry the comment \
                 coherence:<run>-<seq>)",
                path.display(),
                i + 1
            ),
        ));
    }
    Ok(entries)
}

/// The faults journaled as applying and not yet healed, oldest first.
pub fn pending(path: &Path) -> std::io::Result<Vec<(u64, Fault)>> {
    let entries = read(path)?;
    let healed: std::collections::HashSet<u64> = entries
        .iter()
        .filter(|e| e.state == State::Healed)
        .map(|e| e.seq)
        .collect();
    Ok(entries
        .into_iter()
        .filter(|e| e.state == State::Applying && !healed.contains(&e.seq))
        .filter_map(|e| e.fault.map(|f| (e.seq, f)))
        .collect())
}
