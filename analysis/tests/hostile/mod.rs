//! Hostile histories shared by the harnesses that check outputs (`junit`, `report`,
//! `index`, and the binary's `cli`): names full of control characters, and a key of a
//! megabyte.

#![allow(dead_code)] // each harness uses some of them

use std::path::{Path, PathBuf};

/// What a hostile history puts in every name: NUL, ESC, U+0001, U+FFFE, DEL, a
/// newline, a carriage return, and the escape sequence that clears a terminal.
pub const CTRL: &str = "\0\u{1b}\u{1}\u{fffe}\u{7f}\n\r\u{1b}[2J";

/// How [`CTRL`] reads where it is shown escaped.
pub const CTRL_SHOWN: &str = r"\0\u{1b}\u{1}\u{fffe}\u{7f}\n\r\u{1b}[2J";

/// The characters of [`CTRL`] that must never appear raw in an output (the newline
/// aside, which text and pages hold of their own).
pub const RAW: [char; 6] = ['\0', '\u{1b}', '\u{1}', '\u{fffe}', '\u{7f}', '\r'];

fn write_lines(path: &Path, lines: &[serde_json::Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// A history whose key, node, region, write ids, nemesis `f`s, fault errors and values,
/// client error and interruption signal all hold [`CTRL`]: a stale read while a fault
/// is in force, a phantom read of a write id that no write has, a read that failed, a
/// fault that failed to heal, a planned fault that did not happen. Written to `dir`
/// under a file name that holds ESC and `ESC[2J`; returns its path.
pub fn control_characters(dir: &Path) -> PathBuf {
    let path = dir.join("h\u{1b}[2J\u{1}.jsonl");
    let key = format!("k{CTRL}");
    let node = format!("r1{CTRL}");
    let region = format!("reg{CTRL}");
    let write = format!("w{CTRL}");
    let ghost = format!("ghost{CTRL}");
    let start = format!("start-part{CTRL}");
    let stop = format!("stop-part{CTRL}");
    let ms = 1_000_000u64;
    let lines = [
        serde_json::json!({"index":0,"time":0,"process":"nemesis","type":"info","f":"nemesis-plan","value":{"faults":[CTRL],"scheduled":0}}),
        serde_json::json!({"index":1,"time":ms,"process":0,"type":"invoke","f":"write","key":key,"node":"db","value":{"write":write},"region":region}),
        serde_json::json!({"index":2,"time":2*ms,"process":0,"type":"ok","f":"write","key":key,"node":"db","value":{"version":1,"write":write}}),
        serde_json::json!({"index":3,"time":3*ms,"process":"nemesis","type":"info","f":start,"value":{"seq":1,"nodes":[node, CTRL]}}),
        serde_json::json!({"index":4,"time":10*ms,"process":1,"type":"invoke","f":"read","key":key,"node":node,"region":region}),
        serde_json::json!({"index":5,"time":11*ms,"process":1,"type":"ok","f":"read","key":key,"node":node,"value":{"version":0,"write":"init"}}),
        serde_json::json!({"index":6,"time":12*ms,"process":"nemesis","type":"info","f":stop,"value":{"seq":1,"healed":false,"error":CTRL,"traces":[CTRL]}}),
        serde_json::json!({"index":7,"time":13*ms,"process":"nemesis","type":"info","f":"nemesis-error","value":{"planned":CTRL,"error":CTRL}}),
        serde_json::json!({"index":8,"time":14*ms,"process":2,"type":"invoke","f":"read","key":key,"node":node,"region":region}),
        serde_json::json!({"index":9,"time":15*ms,"process":2,"type":"ok","f":"read","key":key,"node":node,"value":{"version":1,"write":ghost}}),
        serde_json::json!({"index":10,"time":16*ms,"process":3,"type":"invoke","f":"read","key":key,"node":node}),
        serde_json::json!({"index":11,"time":17*ms,"process":3,"type":"fail","f":"read","key":key,"node":node,"error":CTRL}),
        serde_json::json!({"index":12,"time":18*ms,"process":"control","type":"info","f":"interrupted","value":{"signal":CTRL}}),
    ];
    write_lines(&path, &lines);
    path
}

/// How many bytes the huge key has: one MiB.
pub const HUGE: usize = 1 << 20;

/// How a string of [`HUGE`] bytes ends where it is cut.
pub fn huge_cut() -> String {
    format!("… ({HUGE} bytes)")
}

/// A history with one key of [`HUGE`] bytes (ending in [`CTRL`]), written once and read
/// back stale `reads` times; returns its path in `dir`.
pub fn huge_key(dir: &Path, reads: u64) -> PathBuf {
    let path = dir.join("huge-key.jsonl");
    let mut key = "k".repeat(HUGE - CTRL.len());
    key.push_str(CTRL);
    assert_eq!(key.len(), HUGE);
    let ms = 1_000_000u64;
    let mut lines = vec![
        serde_json::json!({"index":0,"time":0,"process":0,"type":"invoke","f":"write","key":key,"node":"db","value":{"write":"w1"}}),
        serde_json::json!({"index":1,"time":ms,"process":0,"type":"ok","f":"write","key":key,"node":"db","value":{"version":1,"write":"w1"}}),
    ];
    for i in 0..reads {
        let index = 2 + 2 * i;
        lines.push(serde_json::json!({"index":index,"time":(index + 10)*ms,"process":1,"type":"invoke","f":"read","key":key,"node":"r1"}));
        lines.push(serde_json::json!({"index":index+1,"time":(index + 11)*ms,"process":1,"type":"ok","f":"read","key":key,"node":"r1","value":{"version":0,"write":"init"}}));
    }
    write_lines(&path, &lines);
    path
}

/// The control characters of [`RAW`] found in `text`, if any, with what comes before
/// the first of them.
pub fn raw_controls(text: &str) -> Option<String> {
    let at = text.find(|c| RAW.contains(&c))?;
    let found: Vec<char> = RAW.iter().copied().filter(|c| text.contains(*c)).collect();
    let from = text[..at]
        .char_indices()
        .rev()
        .nth(80)
        .map_or(0, |(i, _)| i);
    Some(format!("{found:?} after {:?}", &text[from..at]))
}
