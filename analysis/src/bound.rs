//! How strings of the input reach the outputs: one rule for results, text, JUnit, the
//! report and the run index.
//!
//! A history is untrusted: a key, a node, a write id, an `f`, an error message can hold
//! control characters (NUL, ESC and `ESC[2J`, which clears a terminal) and can be
//! megabytes long. Two things happen to every such string:
//!
//! - **It is cut where results keep it.** Data fields of [`crate::Results`] (keys,
//!   nodes, regions, write ids, `f`s) keep at most [`NAME_LIMIT`] bytes, messages (a
//!   fault's error, the history's path) [`TEXT_LIMIT`], event values [`TEXT_LIMIT`] of
//!   JSON ([`value`]); a longer string is cut on a character boundary and ends with its
//!   full size, `aaaa… (1048576 bytes)` ([`coherence_store::cut`]). Nothing else is done
//!   to data: `results.json` is JSON, which escapes control characters on its own.
//!   Sentences quote keys and write ids with [`coherence_store::quote`] and names with
//!   [`prose`], both cut after 120 bytes in the same way.
//! - **It is escaped where it is shown.** Every string an output shows goes through
//!   [`shown`] (or [`shown_cut`] when it comes straight from the history): control and
//!   invisible characters become Rust escapes (`\u{1b}`, `\0`, `\n`, `\u{fffe}`), the
//!   form [`coherence_store::quote`] gives them in error messages. Text that is escaped
//!   already is left as it is, so a sentence quoting a key can be shown whole. No output
//!   then holds a control character of the input: not the terminal, not JUnit XML
//!   (which forbids most of them), not the HTML pages.

use coherence_store::{cut, escape, reader::QUOTE_LIMIT};
use serde_json::Value;

/// How many bytes of a name (key, node, region, write id, `f`, process) results keep.
pub const NAME_LIMIT: usize = 256;

/// How many bytes of a message (a fault's error, the history's path) or of an event
/// value's JSON results keep.
pub const TEXT_LIMIT: usize = 4096;

/// A name for results: cut after [`NAME_LIMIT`] bytes.
pub fn name(s: &str) -> String {
    cut(s, NAME_LIMIT).into_owned()
}

/// A message for results: cut after [`TEXT_LIMIT`] bytes.
pub fn text(s: &str) -> String {
    cut(s, TEXT_LIMIT).into_owned()
}

/// An event value for results: itself when its JSON is at most [`TEXT_LIMIT`] bytes,
/// else a JSON string of its JSON cut, `{"nodes":["r1a",… (1048576 bytes)`.
pub fn value(v: Value) -> Value {
    let json = v.to_string();
    if json.len() <= TEXT_LIMIT {
        return v;
    }
    Value::String(cut(&json, TEXT_LIMIT).into_owned())
}

/// A name inside a sentence (a node, an `f`, a signal): escaped, cut after 120 bytes.
pub fn prose(s: &str) -> String {
    escape(s, QUOTE_LIMIT)
}

/// A string as an output shows it: control and invisible characters escaped, nothing
/// cut (what results hold is cut already).
pub fn shown(s: &str) -> String {
    escape(s, usize::MAX)
}

/// A string straight from the history as an output shows it: escaped, and cut after
/// `limit` bytes of escaped text.
pub fn shown_cut(s: &str, limit: usize) -> String {
    escape(s, limit)
}

/// Text of several lines as an output shows it (a file, an error with its causes):
/// every line [`shown_cut`] after `limit` bytes, tabs and line ends kept (a `\r\n` line
/// end becomes `\n`).
pub fn lines(s: &str, limit: usize) -> String {
    s.split('\n')
        .map(|line| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            line.split('\t')
                .map(|part| shown_cut(part, limit))
                .collect::<Vec<_>>()
                .join("\t")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// How many names of a list a sentence names at most.
pub const LIST_LIMIT: usize = 20;

/// Names of a list that results keep, for a sentence (`kill, partition`): each one
/// [`shown`], at most [`LIST_LIMIT`] of them, then how many there are in all.
pub fn list(names: &[String]) -> String {
    let mut out: Vec<String> = names.iter().take(LIST_LIMIT).map(|n| shown(n)).collect();
    if names.len() > LIST_LIMIT {
        out.push(format!("… ({} in all)", names.len()));
    }
    out.join(", ")
}
