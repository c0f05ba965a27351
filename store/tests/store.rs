//! Integration tests of the store crate: the validating reader (every kind of malformed
//! input, truncation, line endings, gzip, chunk boundaries, values, pairing), the
//! writer (indices, round trip, flush, crash) and run directories.

use coherence_store::event::{Event, EventType, Process};
use coherence_store::progress::{NoProgress, Progress};
use coherence_store::reader::{
    read_from, read_from_chunked, read_history, GZIP_RATIO_AFTER, STDIN,
};
use coherence_store::run::{resolve_history, RunDir};

const HISTORY: &str = RunDir::HISTORY;
const HISTORY_GZ: &str = RunDir::HISTORY_GZ;
use coherence_store::{
    quote, EventRef, HistoryWriter, ProcessRef, ReadError, ReadSummary, ValueRef, MAX_LINE,
};
use serde_json::json;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The name in-memory histories get in errors.
const MEM: &str = "mem.jsonl";

/// An owned snapshot of everything the reader handed to the visitor for one event.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    line: u64,
    index: u64,
    time: u64,
    process: String,
    kind: EventType,
    f: String,
    key: Option<String>,
    node: Option<String>,
    value: String,
    error: Option<String>,
    region: Option<String>,
    role: Option<String>,
    invoke_index: Option<u64>,
}

impl Seen {
    fn of(e: &EventRef<'_>) -> Seen {
        Seen {
            line: e.line,
            index: e.index,
            time: e.time,
            process: match &e.process {
                ProcessRef::Client(n) => format!("client {n}"),
                ProcessRef::Actor(s) => format!("actor {s}"),
            },
            kind: e.kind,
            f: e.f.to_string(),
            key: e.key.as_deref().map(str::to_string),
            node: e.node.as_deref().map(str::to_string),
            value: describe_value(&e.value),
            error: e.error.as_deref().map(str::to_string),
            region: e.region.as_deref().map(str::to_string),
            role: e.role.as_deref().map(str::to_string),
            invoke_index: e.invoke_index,
        }
    }
}

/// A stable description of a value (independent of borrowed vs owned strings).
fn describe_value(v: &ValueRef<'_>) -> String {
    match v {
        ValueRef::Absent => "absent".to_string(),
        ValueRef::WriteRequest(id) => format!("write-request {id}"),
        ValueRef::Versioned(v) => format!("versioned {} {}", v.version, v.write),
        ValueRef::Final { value, log } => {
            format!("final {} {} log {:?}", value.version, value.write, log)
        }
        ValueRef::Raw(raw) => format!("raw {}", raw.get()),
    }
}

/// Reads an in-memory history with the normal chunk size.
fn read(text: &str) -> Result<(Vec<Seen>, ReadSummary), ReadError> {
    let mut seen = Vec::new();
    let mut visitor = |e: &EventRef<'_>| {
        seen.push(Seen::of(e));
        Ok(())
    };
    let summary = read_from(text.as_bytes(), Path::new(MEM), &mut visitor)?;
    Ok((seen, summary))
}

/// Reads an in-memory history with the given chunk size.
fn read_chunked(text: &[u8], chunk: usize) -> Result<(Vec<Seen>, ReadSummary), ReadError> {
    let mut seen = Vec::new();
    let mut visitor = |e: &EventRef<'_>| {
        seen.push(Seen::of(e));
        Ok(())
    };
    let summary = read_from_chunked(text, Path::new(MEM), &mut visitor, chunk)?;
    Ok((seen, summary))
}

/// Reads a history file.
fn read_file(path: &Path) -> Result<(Vec<Seen>, ReadSummary), ReadError> {
    let mut seen = Vec::new();
    let mut visitor = |e: &EventRef<'_>| {
        seen.push(Seen::of(e));
        Ok(())
    };
    let summary = read_history(path, &mut visitor, &NoProgress)?;
    Ok((seen, summary))
}

/// Reads a history that must be accepted without warnings.
fn read_ok(text: &str) -> (Vec<Seen>, ReadSummary) {
    let (seen, summary) = read(text).unwrap_or_else(|e| panic!("rejected: {e}\n{text}"));
    assert!(
        summary.warnings.is_empty(),
        "unexpected warnings {:?}",
        summary.warnings
    );
    assert_eq!(summary.events, seen.len() as u64);
    (seen, summary)
}

/// Reads a history that must be rejected; returns the line and the reason.
fn rejected(text: &str) -> (u64, String) {
    match read(text) {
        Ok((seen, summary)) => panic!(
            "accepted ({} events, warnings {:?}) but should not be:\n{text}",
            seen.len(),
            summary.warnings
        ),
        Err(ReadError::Invalid { path, line, reason }) => {
            assert_eq!(path, Path::new(MEM));
            (line, reason)
        }
        Err(other) => panic!("expected ReadError::Invalid, got {other:?}"),
    }
}

/// Asserts that `text` is rejected at `line` with a reason that contains every needle.
/// The needles include both what is wrong and what to do about it.
fn assert_rejected(text: &str, line: u64, needles: &[&str]) -> String {
    let (at, reason) = rejected(text);
    assert_eq!(at, line, "wrong line for reason {reason:?}");
    for needle in needles {
        assert!(
            reason.contains(needle),
            "reason {reason:?} lacks {needle:?}"
        );
    }
    reason
}

/// Two valid lines: process 0 writes `a` as version 1 of `k`.
const HEAD: &str = concat!(
    r#"{"index":0,"time":0,"process":0,"type":"invoke","f":"write","key":"k","node":"db","value":{"write":"a"}}"#,
    "\n",
    r#"{"index":1,"time":10,"process":0,"type":"ok","f":"write","key":"k","node":"db","value":{"version":1,"write":"a"}}"#,
    "\n",
);

/// A valid line that could come after a third line (index 3).
const TAIL: &str = concat!(
    r#"{"index":3,"time":100,"process":7,"type":"invoke","f":"read","key":"k","node":"c1"}"#,
    "\n",
);

/// HEAD, then `line` as line 3, then TAIL: `line` is in the middle of the file.
fn middle(line: &str) -> String {
    format!("{HEAD}{line}\n{TAIL}")
}

/// HEAD, then the lines given (each followed by a newline).
fn after_head(lines: &[&str]) -> String {
    let mut s = HEAD.to_string();
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// An error and its causes, as `{:#}` of anyhow shows them: "a: b: c".
fn chain(err: &dyn std::error::Error) -> String {
    let mut shown = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        shown.push_str(": ");
        shown.push_str(&cause.to_string());
        source = cause.source();
    }
    shown
}

/// A scratch directory.
fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A varied valid history of `n` client operations plus nemesis events, as lines.
fn generated_history(n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut index = 0u64;
    let mut time = 0u64;
    let mut push = |lines: &mut Vec<String>, mut v: serde_json::Value| {
        v["index"] = json!(index);
        v["time"] = json!(time);
        index += 1;
        time += 17 + (index % 5) * 1_000;
        lines.push(v.to_string());
    };
    let mut version = 0i64;
    for i in 0..n {
        let process = (i % 4) as i64;
        let key = format!("key-{}", i % 3);
        match i % 6 {
            0 => {
                let id = format!("w{i}");
                version += 1;
                push(
                    &mut lines,
                    json!({"process": process, "type": "invoke", "f": "write", "key": key,
                           "node": "db", "value": {"write": id}}),
                );
                push(
                    &mut lines,
                    json!({"process": process, "type": "ok", "f": "write", "key": key,
                           "node": "db", "value": {"version": version, "write": id},
                           "latency_ms": i, "region": "eu-west"}),
                );
            }
            1 => {
                push(
                    &mut lines,
                    json!({"process": process, "type": "invoke", "f": "read", "key": key,
                           "node": "c1"}),
                );
                push(
                    &mut lines,
                    json!({"process": process, "type": "ok", "f": "read", "key": key,
                           "node": "c1", "value": null}),
                );
            }
            2 => {
                push(
                    &mut lines,
                    json!({"process": process, "type": "invoke", "f": "fill", "key": key,
                           "node": "c2", "value": {"version": version, "write": "x"}}),
                );
                push(
                    &mut lines,
                    json!({"process": process, "type": "fail", "f": "fill", "key": key,
                           "node": "c2", "error": "timeout"}),
                );
            }
            3 => {
                // A line far longer than the small chunks used below.
                push(
                    &mut lines,
                    json!({"process": "nemesis", "type": "info", "f": "start-partition",
                           "value": {"nodes": ["c1", "c2"], "note": "x".repeat(i * 7)}}),
                );
            }
            4 => {
                push(
                    &mut lines,
                    json!({"process": process, "type": "invoke", "f": "db-read", "key": key,
                           "node": "db", "role": "replica", "comment": "é ü ✓ \"quoted\""}),
                );
                push(
                    &mut lines,
                    json!({"process": process, "type": "ok", "f": "db-read", "key": key,
                           "node": "db", "value": {"version": version, "write": "w", "payload": [1, 2]}}),
                );
            }
            _ => {
                push(
                    &mut lines,
                    json!({"process": process, "type": "invoke", "f": "invalidate",
                           "key": key, "node": "c1"}),
                );
                push(
                    &mut lines,
                    json!({"process": process, "type": "ok", "f": "invalidate", "key": key,
                           "node": "c1", "value": null}),
                );
            }
        }
    }
    lines
}

fn joined(lines: &[String], eol: &str) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(l);
        s.push_str(eol);
    }
    s
}

// ---------------------------------------------------------------------------------------
// Malformed input: one test per kind
// ---------------------------------------------------------------------------------------

#[test]
fn bad_json_in_the_middle_is_rejected() {
    let text = middle(r#"{"index":2,"time":20,"process":1,"#);
    assert_rejected(
        &text,
        3,
        &["not valid JSON", "every line must be one JSON object"],
    );
}

#[test]
fn garbage_json_in_the_middle_is_rejected() {
    let text = middle(r#"{"index":2,,"time":20}"#);
    assert_rejected(
        &text,
        3,
        &[
            "not valid JSON",
            "column",
            "every line must be one JSON object",
        ],
    );
}

#[test]
fn line_that_is_not_an_object_is_rejected() {
    assert_rejected(
        &middle("[1, 2, 3]"),
        3,
        &[
            "expected a JSON object, found an array",
            "every line must be one JSON object",
        ],
    );
    assert_rejected(
        &middle("42"),
        3,
        &[
            "expected a JSON object, found a number",
            "every line must be one JSON object",
        ],
    );
    assert_rejected(
        &middle(r#""index""#),
        3,
        &["expected a JSON object, found a string"],
    );
    // An array holding the fields in order is no event either (serde would take it).
    assert_rejected(
        &middle(r#"[2, 20, 1, "invoke", "read", "k"]"#),
        3,
        &[
            "expected a JSON object, found an array",
            "every line must be one JSON object",
        ],
    );
    assert_rejected(
        &middle(r#"  [2, 20, 1, "invoke", "read""#),
        3,
        &["not valid JSON", "every line must be one JSON object"],
    );
}

#[test]
fn empty_line_in_the_middle_is_rejected() {
    assert_rejected(
        &middle(""),
        3,
        &["empty line", "every line must hold one JSON event"],
    );
    assert_rejected(
        &middle("   \t"),
        3,
        &["empty line", "every line must hold one JSON event"],
    );
}

#[test]
fn duplicated_field_is_rejected() {
    assert_rejected(
        &middle(
            r#"{"index":2,"time":20,"time":21,"process":1,"type":"invoke","f":"read","key":"k"}"#,
        ),
        3,
        &["duplicate field `time`", "each field given once"],
    );
}

#[test]
fn missing_index_is_rejected() {
    assert_rejected(
        &middle(r#"{"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#),
        3,
        &["missing field `index`", "position in the file, from 0"],
    );
}

#[test]
fn missing_time_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":2,"process":1,"type":"invoke","f":"read","key":"k"}"#),
        3,
        &["missing field `time`", "nanoseconds since the run started"],
    );
}

#[test]
fn missing_process_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":2,"time":20,"type":"invoke","f":"read","key":"k"}"#),
        3,
        &[
            "missing field `process`",
            "an integer for a client",
            "\"nemesis\"",
        ],
    );
}

#[test]
fn missing_type_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":2,"time":20,"process":1,"f":"read","key":"k"}"#),
        3,
        &["missing field `type`", "invoke, ok, fail or info"],
    );
}

#[test]
fn missing_f_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":2,"time":20,"process":1,"type":"invoke","key":"k"}"#),
        3,
        &["missing field `f`", "the operation"],
    );
}

#[test]
fn missing_key_on_a_data_operation_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","node":"c1"}"#),
        3,
        &[
            "missing field `key`",
            "\"read\"",
            "must name the item it touches",
        ],
    );
    // Every data operation needs it, including on its completion.
    assert_rejected(
        &after_head(&[
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"invalidate","key":"k"}"#,
            r#"{"index":3,"time":30,"process":1,"type":"ok","f":"invalidate"}"#,
        ]),
        4,
        &[
            "missing field `key`",
            "\"invalidate\"",
            "must name the item",
        ],
    );
}

#[test]
fn key_is_not_required_outside_data_operations() {
    let (seen, _) = read_ok(&after_head(&[
        r#"{"index":2,"time":20,"process":"nemesis","type":"info","f":"kill","value":{"node":"c1"}}"#,
        r#"{"index":3,"time":30,"process":"control","type":"info","f":"final-phase","value":{"quiesce_ms":5}}"#,
        r#"{"index":4,"time":40,"process":3,"type":"invoke","f":"custom-op"}"#,
        r#"{"index":5,"time":50,"process":3,"type":"ok","f":"custom-op"}"#,
    ]));
    assert_eq!(seen.len(), 6);
    assert_eq!(seen[2].key, None);
}

#[test]
fn index_as_a_string_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":"2","time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#),
        3,
        &[
            "field `index` must be a non-negative integer",
            "found a string \"2\"",
        ],
    );
}

#[test]
fn negative_index_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":-2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#),
        3,
        &[
            "field `index` must be a non-negative integer",
            "found a negative number -2",
        ],
    );
}

#[test]
fn negative_time_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":2,"time":-20,"process":1,"type":"invoke","f":"read","key":"k"}"#),
        3,
        &[
            "field `time` must be a non-negative integer (nanoseconds)",
            "found a negative number -20",
        ],
    );
}

#[test]
fn fractional_time_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":2,"time":20.5,"process":1,"type":"invoke","f":"read","key":"k"}"#),
        3,
        &[
            "field `time` must be a non-negative integer (nanoseconds)",
            "found a fraction 20.5",
        ],
    );
}

#[test]
fn process_as_a_boolean_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":2,"time":20,"process":true,"type":"invoke","f":"read","key":"k"}"#),
        3,
        &[
            "field `process` must be an integer or a string",
            "found a boolean true",
        ],
    );
}

#[test]
fn process_as_a_fraction_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":2,"time":20,"process":1.5,"type":"invoke","f":"read","key":"k"}"#),
        3,
        &[
            "field `process` must be an integer or a string",
            "found a fraction 1.5",
        ],
    );
}

#[test]
fn type_as_a_number_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":2,"time":20,"process":1,"type":1,"f":"read","key":"k"}"#),
        3,
        &[
            "field `type` must be a string: invoke, ok, fail or info",
            "found a number 1",
        ],
    );
}

#[test]
fn key_as_a_number_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":7}"#),
        3,
        &["field `key` must be a string", "found a number 7"],
    );
}

#[test]
fn f_as_a_number_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":2,"time":20,"process":1,"type":"invoke","f":3,"key":"k"}"#),
        3,
        &["field `f` must be a string", "found a number 3"],
    );
}

#[test]
fn unknown_type_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":2,"time":20,"process":1,"type":"done","f":"read","key":"k"}"#),
        3,
        &[
            "unknown type \"done\"",
            "the type must be invoke, ok, fail or info",
        ],
    );
}

#[test]
fn index_gap_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":3,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#),
        3,
        &[
            "index 3 where 2 was expected",
            "indices count up by 1 from 0",
            "lost",
        ],
    );
}

#[test]
fn index_not_starting_at_zero_is_rejected() {
    let text = concat!(
        r#"{"index":1,"time":0,"process":0,"type":"invoke","f":"read","key":"k"}"#,
        "\n",
        r#"{"index":2,"time":1,"process":0,"type":"ok","f":"read","key":"k","value":null}"#,
        "\n",
    );
    assert_rejected(
        text,
        1,
        &[
            "index 1 where 0 was expected",
            "indices count up by 1 from 0",
        ],
    );
}

#[test]
fn duplicated_index_is_rejected() {
    // The second line written twice, as a bad copy-paste or a retried append leaves it.
    let second = HEAD.lines().nth(1).unwrap();
    let text = format!("{HEAD}{second}\n{TAIL}");
    assert_rejected(
        &text,
        3,
        &[
            "index 1 where 2 was expected",
            "indices count up by 1 from 0",
            "duplicated",
        ],
    );
}

#[test]
fn time_going_backwards_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":2,"time":5,"process":1,"type":"invoke","f":"read","key":"k"}"#),
        3,
        &[
            "time 5 is earlier than 10 on line 2",
            "times must never decrease",
            "one monotonic clock",
        ],
    );
}

#[test]
fn equal_times_are_accepted() {
    read_ok(&after_head(&[
        r#"{"index":2,"time":10,"process":1,"type":"invoke","f":"read","key":"k"}"#,
        r#"{"index":3,"time":10,"process":1,"type":"ok","f":"read","key":"k","value":null}"#,
    ]));
}

#[test]
fn completion_without_invoke_is_rejected() {
    assert_rejected(
        &middle(
            r#"{"index":2,"time":20,"process":1,"type":"ok","f":"read","key":"k","value":null}"#,
        ),
        3,
        &[
            "ok of \"read\" by process 1 has no invoke",
            "every completion must follow an invoke of the same process",
        ],
    );
    // A process whose operation was already completed cannot complete it again.
    let completed_twice = HEAD
        .lines()
        .nth(1)
        .unwrap()
        .replace("\"index\":1", "\"index\":2");
    assert_rejected(
        &middle(&completed_twice),
        3,
        &["ok of \"write\" by process 0 has no invoke"],
    );
}

#[test]
fn completion_with_a_different_f_is_rejected() {
    assert_rejected(
        &after_head(&[
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#,
            r#"{"index":3,"time":30,"process":1,"type":"ok","f":"db-read","key":"k","value":null}"#,
        ]),
        4,
        &[
            "ok of \"db-read\" on key \"k\" by process 1 does not match its invoke on line 3",
            "(\"read\" on key \"k\")",
            "a completion repeats its invoke's f and key",
        ],
    );
}

#[test]
fn completion_with_a_different_key_is_rejected() {
    assert_rejected(
        &after_head(&[
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#,
            r#"{"index":3,"time":30,"process":1,"type":"fail","f":"read","key":"other"}"#,
        ]),
        4,
        &[
            "fail of \"read\" on key \"other\" by process 1 does not match its invoke on line 3",
            "a completion repeats its invoke's f and key",
        ],
    );
}

#[test]
fn second_invoke_while_one_is_outstanding_is_rejected() {
    assert_rejected(
        &after_head(&[
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#,
            r#"{"index":3,"time":30,"process":1,"type":"invoke","f":"write","key":"k","value":{"write":"b"}}"#,
        ]),
        4,
        &[
            "process 1 invokes \"write\" while its invoke on line 3 is still outstanding",
            "complete it (ok, fail or info) first",
        ],
    );
}

#[test]
fn string_process_with_type_invoke_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":2,"time":20,"process":"nemesis","type":"invoke","f":"kill"}"#),
        3,
        &[
            "process \"nemesis\" is a string, so its events must have type \"info\" (found \"invoke\")",
            "need an integer process",
        ],
    );
    assert_rejected(
        &middle(r#"{"index":2,"time":20,"process":"control","type":"ok","f":"final-phase"}"#),
        3,
        &["process \"control\" is a string", "(found \"ok\")"],
    );
}

#[test]
fn write_invoke_without_a_write_request_is_rejected() {
    let cases = [
        (r#""value":{"id":"b"}"#, r#"found {"id":"b"}"#),
        (r#""value":"b""#, r#"found "b""#),
        (r#""value":{"write":5}"#, r#"found {"write":5}"#),
        (r#""value":null"#, "found null"),
        (r#""node":"db""#, "found nothing"),
    ];
    for (value, found) in cases {
        let line = format!(
            r#"{{"index":2,"time":20,"process":1,"type":"invoke","f":"write","key":"k",{value}}}"#
        );
        assert_rejected(
            &middle(&line),
            3,
            &[
                "the value of `write` invoke must be {\"write\": \"<write id>\"}",
                found,
            ],
        );
    }
}

#[test]
fn values_naming_only_their_write_are_read_as_unversioned() {
    // A client that does not know versions (a user's service) logs {"write": id}; the
    // checker places it in the commit order. Every shape that takes a versioned value
    // takes it, on both paths (the fast one, and the slow one with an extra field).
    for extra in ["", r#","payload":"x""#] {
        let text = after_head(&[
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#,
            &format!(
                r#"{{"index":3,"time":30,"process":1,"type":"ok","f":"read","key":"k","value":{{"write":"a"{extra}}}}}"#
            ),
            r#"{"index":4,"time":40,"process":1,"type":"invoke","f":"write","key":"k","value":{"write":"b"}}"#,
            r#"{"index":5,"time":50,"process":1,"type":"ok","f":"write","key":"k","value":{"write":"b"}}"#,
            r#"{"index":6,"time":60,"process":1,"type":"invoke","f":"fill","key":"k","node":"c1","value":{"write":"b"}}"#,
            r#"{"index":7,"time":70,"process":1,"type":"ok","f":"fill","key":"k","node":"c1","value":{"write":"b"}}"#,
            r#"{"index":8,"time":80,"process":1,"type":"invoke","f":"db-final-read","key":"k"}"#,
            r#"{"index":9,"time":90,"process":1,"type":"ok","f":"db-final-read","key":"k","value":{"write":"b"}}"#,
        ]);
        let (seen, _) = read(&text).expect("unversioned values are allowed");
        let values: Vec<&str> = seen[2..].iter().map(|s| s.value.as_str()).collect();
        assert_eq!(
            values,
            [
                "absent",
                "versioned -1 a",
                "write-request b",
                "versioned -1 b",
                "versioned -1 b",
                "versioned -1 b",
                "absent",
                "final -1 b log None",
            ],
            "{text}"
        );
        assert_eq!(coherence_store::UNVERSIONED, -1);
    }
}

#[test]
fn values_given_as_arrays_are_rejected() {
    assert_rejected(
        &after_head(&[
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#,
            r#"{"index":3,"time":30,"process":1,"type":"ok","f":"read","key":"k","value":[1,"a"]}"#,
        ]),
        4,
        &[
            "the value of `read` ok must be {\"version\": <integer>, \"write\": \"<write id>\"}",
            r#"found [1,"a"]"#,
        ],
    );
    assert_rejected(
        &middle(
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"write","key":"k","value":[null,"b"]}"#,
        ),
        3,
        &[
            "the value of `write` invoke must be {\"write\": \"<write id>\"}",
            r#"found [null,"b"]"#,
        ],
    );
}

#[test]
fn ok_read_with_a_mistyped_version_is_rejected() {
    assert_rejected(
        &after_head(&[
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"db-read","key":"k"}"#,
            r#"{"index":3,"time":30,"process":1,"type":"ok","f":"db-read","key":"k","value":{"version":"1","write":"a"}}"#,
        ]),
        4,
        &[
            "the value of `db-read` ok must be {\"version\": <integer>",
            "invalid type",
        ],
    );
}

#[test]
fn ok_write_without_a_write_id_is_rejected() {
    assert_rejected(
        &after_head(&[
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"write","key":"k","value":{"write":"b"}}"#,
            r#"{"index":3,"time":30,"process":1,"type":"ok","f":"write","key":"k","value":{"version":1}}"#,
        ]),
        4,
        &["the value of `write` ok must be {\"version\": <integer>, \"write\": \"<write id>\"}"],
    );
}

#[test]
fn fill_without_a_value_is_rejected() {
    assert_rejected(
        &middle(r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"fill","key":"k","node":"c1"}"#),
        3,
        &[
            "the value of `fill` invoke must be {\"version\": <integer>, \"write\": \"<write id>\"}",
            "found nothing",
        ],
    );
}

#[test]
fn db_final_read_with_a_malformed_log_is_rejected() {
    for log in [r#"[1,2]"#, r#"[[1]]"#, r#"[["1","a"]]"#, r#""all""#] {
        let ok = format!(
            r#"{{"index":3,"time":30,"process":1,"type":"ok","f":"db-final-read","key":"k","value":{{"version":1,"write":"a","log":{log}}}}}"#
        );
        assert_rejected(
            &after_head(&[
                r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"db-final-read","key":"k"}"#,
                &ok,
            ]),
            4,
            &[
                "the value of `db-final-read` ok must be {\"version\": <integer>, \"write\": \"<write id>\"}",
                "with an optional \"log\": [[<version>, \"<write id>\"], ...]",
            ],
        );
    }
}

#[test]
fn db_final_read_without_a_value_is_rejected() {
    assert_rejected(
        &after_head(&[
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"db-final-read","key":"k"}"#,
            r#"{"index":3,"time":30,"process":1,"type":"ok","f":"db-final-read","key":"k","value":null}"#,
        ]),
        4,
        &["the value of `db-final-read` ok must be {\"version\""],
    );
}

// ---------------------------------------------------------------------------------------
// End of file: truncation and trailing newlines
// ---------------------------------------------------------------------------------------

#[test]
fn truncated_last_line_is_a_warning() {
    let text = format!(r#"{HEAD}{{"index":2,"time":20,"process":1,"type":"inv"#);
    let (seen, summary) = read(&text).expect("a cut-short last line is not an error");
    assert_eq!(
        seen.len(),
        2,
        "the events before the cut line are all visited"
    );
    assert_eq!(seen.iter().map(|s| s.index).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(summary.events, 2);
    assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
    let warning = &summary.warnings[0];
    assert_eq!(warning.line, 3);
    assert!(warning.message.contains("cut short"), "{warning}");
    assert!(warning.message.contains("skipped"), "{warning}");
    assert!(warning.to_string().starts_with("line 3: "), "{warning}");
}

#[test]
fn truncated_last_line_cut_anywhere_is_a_warning() {
    // Every proper prefix of a valid last line, as a crash may leave it.
    let last = r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"write","key":"k","value":{"write":"é✓"}}"#;
    for cut in 1..last.len() {
        if !last.is_char_boundary(cut) {
            continue;
        }
        let text = format!("{HEAD}{}", &last[..cut]);
        let (seen, summary) = read(&text).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(seen.len(), 2, "cut at {cut}");
        assert_eq!(summary.warnings.len(), 1, "cut at {cut}");
        assert_eq!(summary.warnings[0].line, 3, "cut at {cut}");
    }
    // Cut inside a multi-byte character: the bytes are not even UTF-8.
    let mut bytes = HEAD.as_bytes().to_vec();
    let at = last.find('é').unwrap() + 1;
    bytes.extend_from_slice(&last.as_bytes()[..at]);
    let (seen, summary) = read_chunked(&bytes, 1 << 20).expect("cut inside a character");
    assert_eq!(seen.len(), 2);
    assert_eq!(summary.warnings.len(), 1);
}

#[test]
fn whole_last_line_without_newline_is_read() {
    let text = format!(
        r#"{HEAD}{{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}}"#
    );
    let (seen, summary) = read_ok(&text);
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].line, 3);
    assert_eq!(summary.unfinished, 1);
    assert_eq!(summary.bytes, text.len() as u64);
}

#[test]
fn malformed_last_line_with_newline_is_an_error() {
    let text = format!("{HEAD}{{\"index\":2,\"time\":20,\"process\":1,\"type\":\"inv\n");
    assert_rejected(
        &text,
        3,
        &["not valid JSON", "every line must be one JSON object"],
    );
}

#[test]
fn invalid_whole_last_line_without_newline_is_an_error() {
    // Whole JSON cannot be what a crash leaves (any proper prefix of an object is not
    // JSON), so an invalid event on the last line is an error even without a newline.
    let text = format!(
        r#"{HEAD}{{"index":2,"time":20,"process":1,"type":"invoke","f":"write","key":"k","value":7}}"#
    );
    assert_rejected(&text, 3, &["the value of `write` invoke must be"]);
    let text = format!(r#"{HEAD}{{"index":2,"time":20,"process":1,"type":"invoke"}}"#);
    assert_rejected(&text, 3, &["missing field `f`"]);
    let text = format!("{HEAD}[1,2]");
    assert_rejected(&text, 3, &["expected a JSON object"]);
    // Broken JSON that is not a prefix of any JSON is not a crash either.
    let text = format!(r#"{HEAD}{{"index":2,,"#);
    assert_rejected(&text, 3, &["not valid JSON"]);
    // And sequence errors on such a line were errors already.
    let text = format!(
        r#"{HEAD}{{"index":5,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}}"#
    );
    assert_rejected(&text, 3, &["index 5 where 2 was expected"]);
}

#[test]
fn empty_input_is_an_empty_history() {
    let (seen, summary) = read_ok("");
    assert!(seen.is_empty());
    assert_eq!(summary.events, 0);
    assert_eq!(summary.unfinished, 0);
    assert_eq!(summary.bytes, 0);
}

#[test]
fn crlf_line_endings_are_accepted() {
    let lines = generated_history(40);
    let (lf, _) = read_ok(&joined(&lines, "\n"));
    let crlf_text = joined(&lines, "\r\n");
    let (crlf, summary) = read_ok(&crlf_text);
    assert_eq!(crlf, lf);
    assert_eq!(summary.bytes, crlf_text.len() as u64);
    // The last line without its line ending, and a cut-short last line, behave the same.
    let (whole, _) = read_ok(crlf_text.trim_end());
    assert_eq!(whole, lf);
    let cut = format!("{}{}", crlf_text, &lines[0][..20]);
    let (seen, summary) = read(&cut).unwrap();
    assert_eq!(seen, lf);
    assert_eq!(summary.warnings.len(), 1);
    assert_eq!(summary.warnings[0].line, lines.len() as u64 + 1);
}

// ---------------------------------------------------------------------------------------
// Gzip
// ---------------------------------------------------------------------------------------

#[test]
fn gzip_file_reads_the_same_events_as_the_plain_file() {
    let dir = tmp();
    let text = joined(&generated_history(200), "\n");
    let plain = dir.path().join("history.jsonl");
    fs::write(&plain, &text).unwrap();
    let gz = dir.path().join("history.jsonl.gz");
    let mut enc =
        flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap();

    let (plain_seen, plain_summary) = read_file(&plain).unwrap();
    let (gz_seen, gz_summary) = read_file(&gz).unwrap();
    assert!(!plain_seen.is_empty());
    assert_eq!(gz_seen, plain_seen);
    assert_eq!(gz_summary.events, plain_summary.events);
    assert_eq!(
        gz_summary.bytes,
        text.len() as u64,
        "bytes counts uncompressed bytes"
    );
    assert!(gz_summary.warnings.is_empty());

    // Gzip is told by its first bytes, not by the name.
    let misnamed = dir.path().join("compressed-but-named.jsonl");
    fs::copy(&gz, &misnamed).unwrap();
    assert_eq!(read_file(&misnamed).unwrap().0, plain_seen);
}

#[test]
fn concatenated_gzip_members_are_read() {
    let dir = tmp();
    let lines = generated_history(30);
    let (first, second) = lines.split_at(lines.len() / 2);
    let gz = dir.path().join("history.jsonl.gz");
    let mut file = File::create(&gz).unwrap();
    for part in [first, second] {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(joined(part, "\n").as_bytes()).unwrap();
        file.write_all(&enc.finish().unwrap()).unwrap();
    }
    drop(file);
    let (seen, _) = read_file(&gz).unwrap();
    let (expected, _) = read_ok(&joined(&lines, "\n"));
    assert_eq!(seen, expected);
}

#[test]
fn writer_with_a_gz_name_writes_gzip() {
    let dir = tmp();
    let events = sample_events();
    let plain = dir.path().join("history.jsonl");
    let gz = dir.path().join("history.jsonl.gz");
    for path in [&plain, &gz] {
        let mut w = HistoryWriter::create(path).unwrap();
        for e in &events {
            w.append(e.clone()).unwrap();
        }
        w.finish().unwrap();
    }
    let magic = fs::read(&gz).unwrap();
    assert_eq!(&magic[..2], &[0x1f, 0x8b], "a .gz name gives a gzip file");
    let (plain_seen, _) = read_file(&plain).unwrap();
    let (gz_seen, summary) = read_file(&gz).unwrap();
    assert_eq!(plain_seen.len(), events.len());
    assert_eq!(gz_seen, plain_seen);
    assert!(summary.warnings.is_empty());
}

#[test]
fn gzip_writer_flush_makes_events_visible_before_finish() {
    let dir = tmp();
    let path = dir.path().join("history.jsonl.gz");
    let events = sample_events();
    let mut w = HistoryWriter::create(&path).unwrap();
    for e in &events[..4] {
        w.append(e.clone()).unwrap();
    }
    w.flush().unwrap();
    // Flushed but not finished: no gzip trailer yet, as after a crash.
    let (seen, summary) = read_file(&path).expect("an unfinished gzip history is readable");
    assert_eq!(seen.len(), 4);
    assert_eq!(summary.unfinished, 1);
    assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
    assert_eq!(summary.warnings[0].line, 5);
    assert!(summary.warnings[0]
        .message
        .contains("gzip stream ends early"));

    for e in &events[4..] {
        w.append(e.clone()).unwrap();
    }
    w.finish().unwrap();
    let (seen, summary) = read_file(&path).unwrap();
    assert_eq!(seen.len(), events.len());
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
}

#[test]
fn cut_gzip_file_reads_its_prefix_with_a_warning() {
    let dir = tmp();
    let lines = generated_history(300);
    let text = joined(&lines, "\n");
    let (all, _) = read_ok(&text);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    let gz = enc.finish().unwrap();
    let path = dir.path().join("history.jsonl.gz");
    for cut in [
        2,
        10,
        gz.len() / 3,
        gz.len() / 2,
        gz.len() - 9,
        gz.len() - 1,
    ] {
        fs::write(&path, &gz[..cut]).unwrap();
        let (seen, summary) = read_file(&path).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(
            seen[..],
            all[..seen.len()],
            "cut at {cut}: a prefix of the events"
        );
        assert!(!summary.warnings.is_empty(), "cut at {cut}");
        let last = summary.warnings.last().unwrap();
        assert!(
            last.message.contains("gzip stream ends early"),
            "cut at {cut}: {last}"
        );
        assert_eq!(last.line, seen.len() as u64 + 1, "cut at {cut}");
    }
}

#[test]
fn corrupt_gzip_file_is_an_io_error() {
    let dir = tmp();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(joined(&generated_history(50), "\n").as_bytes())
        .unwrap();
    let mut gz = enc.finish().unwrap();
    for b in &mut gz[20..60] {
        *b ^= 0x5a;
    }
    let path = dir.path().join("history.jsonl.gz");
    fs::write(&path, &gz).unwrap();
    let err = read_file(&path).unwrap_err();
    assert!(matches!(err, ReadError::Io { .. }), "{err:?}");
    assert!(err
        .to_string()
        .starts_with(&format!("cannot read {}", path.display())));
}

// ---------------------------------------------------------------------------------------
// Chunk boundaries
// ---------------------------------------------------------------------------------------

#[test]
fn chunk_boundaries_anywhere_read_the_same_events() {
    let lines = generated_history(300);
    let longest = lines.iter().map(String::len).max().unwrap();
    assert!(longest > 1000, "some line is longer than the small chunks");
    let text = joined(&lines, "\n");
    let (expected, expected_summary) = read_chunked(text.as_bytes(), 64 << 20).unwrap();
    assert_eq!(expected.len(), lines.len());
    assert_eq!(expected.last().unwrap().line, lines.len() as u64);
    for chunk in [
        1,
        2,
        3,
        7,
        64,
        100,
        333,
        1000,
        4096,
        longest - 1,
        longest,
        longest + 1,
    ] {
        let (seen, summary) = read_chunked(text.as_bytes(), chunk).unwrap();
        assert_eq!(seen.len(), expected.len(), "chunk {chunk}");
        assert_eq!(seen, expected, "chunk {chunk}");
        assert_eq!(summary.events, expected_summary.events, "chunk {chunk}");
        assert_eq!(summary.bytes, text.len() as u64, "chunk {chunk}");
        assert_eq!(
            summary.unfinished, expected_summary.unfinished,
            "chunk {chunk}"
        );
        assert!(summary.warnings.is_empty(), "chunk {chunk}");
    }
    // The normal entry point agrees.
    assert_eq!(read_ok(&text).0, expected);
}

#[test]
fn chunk_boundaries_with_crlf_and_a_cut_last_line() {
    let lines = generated_history(60);
    let text = format!("{}{}", joined(&lines, "\r\n"), &lines[1][..31]);
    let (expected, _) = read_chunked(text.as_bytes(), 64 << 20).unwrap();
    for chunk in [1, 5, 17, 256, 999] {
        let (seen, summary) = read_chunked(text.as_bytes(), chunk).unwrap();
        assert_eq!(seen, expected, "chunk {chunk}");
        assert_eq!(summary.warnings.len(), 1, "chunk {chunk}");
        assert_eq!(
            summary.warnings[0].line,
            lines.len() as u64 + 1,
            "chunk {chunk}"
        );
    }
}

#[test]
fn chunk_boundaries_do_not_move_error_lines() {
    let mut lines = generated_history(100);
    let bad = 57;
    lines[bad] = lines[bad].replace("\"index\":", "\"index\":\"x\",\"was\":");
    let text = joined(&lines, "\n");
    for chunk in [1, 9, 128, 4096, 16 << 20] {
        let mut visited = 0u64;
        let mut count = |_: &EventRef<'_>| {
            visited += 1;
            Ok(())
        };
        let err = read_from_chunked(text.as_bytes(), Path::new(MEM), &mut count, chunk)
            .expect_err("bad line");
        assert_eq!(err.line(), Some(bad as u64 + 1), "chunk {chunk}: {err}");
        assert!(err.to_string().contains("field `index` must be"), "{err}");
        assert_eq!(
            visited, bad as u64,
            "chunk {chunk}: all lines before the bad one are visited"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Pairing, values and fields
// ---------------------------------------------------------------------------------------

#[test]
fn outstanding_invokes_at_eof_are_unfinished() {
    let (seen, summary) = read_ok(&after_head(&[
        r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#,
        r#"{"index":3,"time":30,"process":2,"type":"invoke","f":"write","key":"k","value":{"write":"b"}}"#,
        r#"{"index":4,"time":40,"process":3,"type":"invoke","f":"read","key":"k"}"#,
        r#"{"index":5,"time":50,"process":3,"type":"info","f":"read","key":"k","error":"timeout"}"#,
        r#"{"index":6,"time":60,"process":4,"type":"invoke","f":"read","key":"k"}"#,
        r#"{"index":7,"time":70,"process":4,"type":"fail","f":"read","key":"k"}"#,
    ]));
    assert_eq!(seen.len(), 8);
    assert_eq!(
        summary.unfinished, 2,
        "processes 1 and 2 are still outstanding"
    );
    assert_eq!(read_ok(HEAD).1.unfinished, 0);
}

#[test]
fn invoke_index_is_set_on_completions_only() {
    let (seen, _) = read_ok(&after_head(&[
        r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#,
        r#"{"index":3,"time":21,"process":2,"type":"invoke","f":"read","key":"k"}"#,
        r#"{"index":4,"time":22,"process":"nemesis","type":"info","f":"kill","value":["c1"]}"#,
        r#"{"index":5,"time":30,"process":2,"type":"fail","f":"read","key":"k"}"#,
        r#"{"index":6,"time":40,"process":1,"type":"info","f":"read","key":"k"}"#,
        r#"{"index":7,"time":50,"process":2,"type":"invoke","f":"db-read","key":"k"}"#,
        r#"{"index":8,"time":60,"process":2,"type":"ok","f":"db-read","key":"k","value":{"version":1,"write":"a"}}"#,
    ]));
    let pairs: Vec<(u64, Option<u64>)> = seen.iter().map(|s| (s.index, s.invoke_index)).collect();
    assert_eq!(
        pairs,
        [
            (0, None),
            (1, Some(0)),
            (2, None),
            (3, None),
            (4, None),
            (5, Some(3)),
            (6, Some(2)),
            (7, None),
            (8, Some(7)),
        ]
    );
}

#[test]
fn extra_unknown_fields_are_accepted() {
    let (seen, _) = read_ok(&after_head(&[
        r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k","node":"c1","latency_ms":3.5,"region":"eu-west","role":"replica","attempt":2,"tags":{"a":[1,null]},"nested":[{"index":"not this one"}]}"#,
        r#"{"index":3,"time":30,"process":1,"type":"ok","f":"read","key":"k","node":"c1","value":null,"error":null,"x":null}"#,
    ]));
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[2].region.as_deref(), Some("eu-west"));
    assert_eq!(seen[2].role.as_deref(), Some("replica"));
    assert_eq!(seen[2].node.as_deref(), Some("c1"));
    assert_eq!(seen[3].error, None);
}

#[test]
fn string_processes_log_info_events_that_are_never_paired() {
    let (seen, summary) = read_ok(&after_head(&[
        r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k","node":"c1"}"#,
        // Same f and key as the outstanding read: still no completion of it.
        r#"{"index":3,"time":21,"process":"nemesis","type":"info","f":"read","key":"k"}"#,
        r#"{"index":4,"time":22,"process":"nemesis","type":"info","f":"start-partition","value":{"nodes":["c1"]}}"#,
        r#"{"index":5,"time":23,"process":"nemesis","type":"info","f":"stop-partition","value":null}"#,
        r#"{"index":6,"time":24,"process":"monitor:c1","type":"info","f":"restart"}"#,
        r#"{"index":7,"time":25,"process":"invalidator","type":"info","f":"invalidate","key":"k","node":"c1"}"#,
        r#"{"index":8,"time":26,"process":"control","type":"info","f":"final-phase","value":{"quiesce_ms":100}}"#,
        r#"{"index":9,"time":30,"process":1,"type":"ok","f":"read","key":"k","node":"c1","value":null}"#,
    ]));
    assert_eq!(seen.len(), 10);
    for s in &seen[3..9] {
        assert!(s.process.starts_with("actor "), "{s:?}");
        assert_eq!(s.kind, EventType::Info);
        assert_eq!(s.invoke_index, None, "{s:?}");
    }
    assert_eq!(seen[3].process, "actor nemesis");
    assert_eq!(seen[8].process, "actor control");
    assert_eq!(seen[4].value, r#"raw {"nodes":["c1"]}"#);
    assert_eq!(seen[5].value, "absent");
    assert_eq!(seen[8].value, r#"raw {"quiesce_ms":100}"#);
    assert_eq!(
        seen[9].invoke_index,
        Some(2),
        "the client's ok pairs with its own invoke"
    );
    assert_eq!(summary.unfinished, 0);
}

#[test]
fn integer_process_values() {
    let (seen, _) = read_ok(&after_head(&[
        r#"{"index":2,"time":20,"process":-3,"type":"invoke","f":"read","key":"k"}"#,
        r#"{"index":3,"time":21,"process":9223372036854775807,"type":"invoke","f":"read","key":"k"}"#,
    ]));
    assert_eq!(seen[2].process, "client -3");
    assert_eq!(seen[3].process, "client 9223372036854775807");
    assert_rejected(
        &middle(
            r#"{"index":2,"time":20,"process":9223372036854775808,"type":"invoke","f":"read","key":"k"}"#,
        ),
        3,
        &["field `process` must be an integer or a string"],
    );
}

#[test]
fn values_are_typed_by_operation() {
    let mut seen_values: Vec<(u64, String)> = Vec::new();
    let mut finals = Vec::new();
    let mut visitor = |e: &EventRef<'_>| {
        seen_values.push((e.index, describe_value(&e.value)));
        if let ValueRef::Final { value, log } = &e.value {
            finals.push((value.version, value.write.to_string(), log.clone()));
        }
        if let ValueRef::Versioned(v) = &e.value {
            assert_eq!(e.value.versioned(), Some(v));
        }
        Ok(())
    };
    let text = after_head(&[
        r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k","node":"c1"}"#,
        r#"{"index":3,"time":21,"process":1,"type":"ok","f":"read","key":"k","node":"c1","value":null}"#,
        r#"{"index":4,"time":22,"process":1,"type":"invoke","f":"fill","key":"k","node":"c1","value":{"version":1,"write":"a","payload":"xyz"}}"#,
        r#"{"index":5,"time":23,"process":1,"type":"ok","f":"fill","key":"k","node":"c1","value":{"version":1,"write":"a"}}"#,
        r#"{"index":6,"time":24,"process":1,"type":"invoke","f":"final-read","key":"k","node":"c1"}"#,
        r#"{"index":7,"time":25,"process":1,"type":"ok","f":"final-read","key":"k","node":"c1"}"#,
        r#"{"index":8,"time":26,"process":1,"type":"invoke","f":"db-final-read","key":"k","node":"db"}"#,
        r#"{"index":9,"time":27,"process":1,"type":"ok","f":"db-final-read","key":"k","node":"db","value":{"version":1,"write":"a","log":[[0,"init"],[1,"a"]]}}"#,
        r#"{"index":10,"time":28,"process":2,"type":"invoke","f":"db-final-read","key":"j","node":"db"}"#,
        r#"{"index":11,"time":29,"process":2,"type":"ok","f":"db-final-read","key":"j","node":"db","value":{"version":0,"write":"init"}}"#,
        r#"{"index":12,"time":30,"process":3,"type":"invoke","f":"write","key":"k","value":{"write":"b"}}"#,
        r#"{"index":13,"time":31,"process":3,"type":"info","f":"write","key":"k","value":{"write":"b"},"error":"timeout"}"#,
        r#"{"index":14,"time":32,"process":4,"type":"invoke","f":"write","key":"k","value":{"write":"c"}}"#,
        r#"{"index":15,"time":33,"process":4,"type":"fail","f":"write","key":"k","value":"conflict"}"#,
        r#"{"index":16,"time":34,"process":5,"type":"invoke","f":"read","key":"k","value":{"anything":true}}"#,
        r#"{"index":17,"time":35,"process":5,"type":"fail","f":"read","key":"k","value":[1]}"#,
    ]);
    let summary = read_from(text.as_bytes(), Path::new(MEM), &mut visitor).unwrap();
    assert!(summary.warnings.is_empty());
    let expect = [
        (0, "write-request a"),
        (1, "versioned 1 a"),
        (2, "absent"),
        (3, "absent"), // a read miss
        (4, "versioned 1 a"),
        (5, "versioned 1 a"),
        (6, "absent"),
        (7, "absent"), // a final-read miss (no value at all)
        (8, "absent"),
        (9, r#"final 1 a log Some([(0, "init"), (1, "a")])"#),
        (10, "absent"),
        (11, "final 0 init log None"),
        (12, "write-request b"),
        (13, "write-request b"), // an info write keeps its request
        (14, "write-request c"),
        (15, r#"raw "conflict""#), // anything goes on a failed write
        (16, r#"raw {"anything":true}"#),
        (17, "raw [1]"),
    ];
    let expect: Vec<(u64, String)> = expect.iter().map(|(i, v)| (*i, v.to_string())).collect();
    assert_eq!(seen_values, expect);
    assert_eq!(
        finals,
        [
            (
                1,
                "a".to_string(),
                Some(vec![(0, "init".to_string()), (1, "a".to_string())])
            ),
            (0, "init".to_string(), None),
        ]
    );
}

#[test]
fn read_miss_is_absent() {
    let mut miss = None;
    let mut visitor = |e: &EventRef<'_>| {
        if e.kind == EventType::Ok && e.f == "read" {
            miss = Some(matches!(e.value, ValueRef::Absent));
            assert!(e.value.versioned().is_none());
        }
        Ok(())
    };
    let text = after_head(&[
        r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#,
        r#"{"index":3,"time":30,"process":1,"type":"ok","f":"read","key":"k","value":null}"#,
    ]);
    read_from(text.as_bytes(), Path::new(MEM), &mut visitor).unwrap();
    assert_eq!(miss, Some(true));
}

#[test]
fn final_value_carries_its_log() {
    let mut got = None;
    let mut visitor = |e: &EventRef<'_>| {
        if let ValueRef::Final { value, log } = &e.value {
            assert_eq!(e.value.versioned().map(|v| v.version), Some(2));
            got = Some((value.version, value.write.to_string(), log.clone()));
        }
        Ok(())
    };
    let text = after_head(&[
        r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"db-final-read","key":"k","node":"db"}"#,
        r#"{"index":3,"time":30,"process":1,"type":"ok","f":"db-final-read","key":"k","node":"db","value":{"version":2,"write":"b","log":[[0,"init"],[1,"a"],[2,"b"]]}}"#,
    ]);
    read_from(text.as_bytes(), Path::new(MEM), &mut visitor).unwrap();
    assert_eq!(
        got,
        Some((
            2,
            "b".to_string(),
            Some(vec![
                (0, "init".to_string()),
                (1, "a".to_string()),
                (2, "b".to_string())
            ])
        ))
    );
}

#[test]
fn escaped_strings_are_unescaped() {
    let (seen, _) = read_ok(&after_head(&[
        r#"{"index":2,"time":20,"process":"monitor:c\u0031","type":"info","f":"re\"start","key":"k\n1","node":"c\\1","error":"\u00e9"}"#,
    ]));
    assert_eq!(seen[2].process, "actor monitor:c1");
    assert_eq!(seen[2].f, "re\"start");
    assert_eq!(seen[2].key.as_deref(), Some("k\n1"));
    assert_eq!(seen[2].node.as_deref(), Some("c\\1"));
    assert_eq!(seen[2].error.as_deref(), Some("é"));
}

#[test]
fn visitor_error_stops_reading_at_its_line() {
    let lines = generated_history(50);
    let text = joined(&lines, "\n");
    let mut visited = Vec::new();
    let mut visitor = |e: &EventRef<'_>| {
        visited.push(e.line);
        if e.index == 9 {
            Err("the checker gave up here: fix the write ids".to_string())
        } else {
            Ok(())
        }
    };
    let err = read_from(text.as_bytes(), Path::new(MEM), &mut visitor).unwrap_err();
    match &err {
        ReadError::Invalid { path, line, reason } => {
            assert_eq!(path, Path::new(MEM));
            assert_eq!(*line, 10);
            assert_eq!(reason, "the checker gave up here: fix the write ids");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(
        visited,
        (1..=10).collect::<Vec<u64>>(),
        "nothing after the error is visited"
    );
}

#[test]
fn error_display_is_path_line_reason() {
    let dir = tmp();
    let path = dir.path().join("history.jsonl");
    fs::write(&path, middle("not json")).unwrap();
    let err = read_file(&path).unwrap_err();
    let ReadError::Invalid { line, reason, .. } = &err else {
        panic!("expected Invalid, got {err:?}");
    };
    assert_eq!(*line, 3);
    assert_eq!(err.line(), Some(3));
    assert_eq!(err.to_string(), format!("{}:3: {reason}", path.display()));
    assert!(reason.starts_with("not valid JSON"), "{reason}");
}

#[test]
fn missing_file_is_an_io_error() {
    let dir = tmp();
    let path = dir.path().join("nope.jsonl");
    let err = read_file(&path).unwrap_err();
    assert!(
        matches!(&err, ReadError::Io { path: p, .. } if p == &path),
        "{err:?}"
    );
    assert_eq!(err.line(), None);
    // The cause is the source, said once in the chain as the binary prints it.
    assert_eq!(err.to_string(), format!("cannot read {}", path.display()));
    let shown = chain(&err);
    assert!(
        shown.starts_with(&format!("cannot read {}: ", path.display())),
        "{shown}"
    );
    assert_eq!(shown.matches("No such file").count(), 1, "{shown}");
}

#[test]
fn progress_sees_every_byte() {
    #[derive(Default)]
    struct Count {
        total: AtomicU64,
        done: AtomicU64,
        finished: AtomicU64,
    }
    impl Progress for Count {
        fn start(&self, total: Option<u64>) {
            self.total
                .store(total.unwrap_or(u64::MAX), Ordering::SeqCst);
        }
        fn advance(&self, done: u64) {
            self.done.fetch_add(done, Ordering::SeqCst);
        }
        fn finish(&self) {
            self.finished.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dir = tmp();
    let path = dir.path().join("history.jsonl");
    let text = joined(&generated_history(100), "\n");
    fs::write(&path, &text).unwrap();
    let progress = Count::default();
    let mut visitor = |_: &EventRef<'_>| Ok(());
    read_history(&path, &mut visitor, &progress).unwrap();
    assert_eq!(progress.total.load(Ordering::SeqCst), text.len() as u64);
    assert_eq!(progress.done.load(Ordering::SeqCst), text.len() as u64);
    assert_eq!(progress.finished.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------
// Hostile input: long lines, gzip bombs, pipes, byte order marks, negative versions,
// long and control-character strings in errors (issue 10, found by fuzzing)
// ---------------------------------------------------------------------------------------

/// A reader that counts what was taken from it, to show that reading stopped early.
struct Taken<R> {
    inner: R,
    bytes: Arc<AtomicU64>,
}

impl<R: Read> Read for Taken<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Reads `input` with the normal chunk size; returns the result and how much was taken.
fn read_counting(input: impl Read + Send) -> (Result<ReadSummary, ReadError>, u64) {
    let bytes = Arc::new(AtomicU64::new(0));
    let taken = Taken {
        inner: input,
        bytes: Arc::clone(&bytes),
    };
    let mut visitor = |_: &EventRef<'_>| Ok(());
    let result = read_from(taken, Path::new(MEM), &mut visitor);
    (result, bytes.load(Ordering::Relaxed))
}

/// `text` as one gzip member.
fn gzip(text: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text).unwrap();
    enc.finish().unwrap()
}

/// What `sha256sum` says of a file.
fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    let out = String::from_utf8(out.stdout).unwrap();
    out.split_whitespace().next().unwrap().to_string()
}

/// A named pipe at `path` (mkfifo).
fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// The error of reading `text` as a string, for size and character checks.
fn error_of(text: &str) -> String {
    rejected(text).1
}

#[test]
fn quadratic_long_line_an_endless_line_is_refused_with_its_number_and_reading_stops() {
    // An endless line after two good ones: the reader refuses it once it passes the cap,
    // having read no more than the cap and a few chunks (so it held no more either).
    let endless = HEAD
        .as_bytes()
        .chain(&b"{\"index\":2,\"time\":"[..])
        .chain(std::io::repeat(b'7').take(16 * MAX_LINE as u64));
    let (result, taken) = read_counting(endless);
    let err = result.expect_err("an endless line is refused");
    let ReadError::Invalid { path, line, reason } = &err else {
        panic!("expected Invalid, got {err:?}");
    };
    assert_eq!(path, Path::new(MEM));
    assert_eq!(*line, 3);
    for needle in ["longer than 64 MiB", "check that this file is a history"] {
        assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
    }
    assert!(
        taken <= (MAX_LINE + (16 << 20)) as u64,
        "read {taken} bytes of an endless line"
    );
}

#[test]
fn quadratic_long_line_a_too_long_last_line_is_an_error_not_a_cut_short_warning() {
    // A last line without a newline that looks like a cut-short event but is over the cap:
    // it must not pass as what a crashed writer leaves.
    let mut text = HEAD.as_bytes().to_vec();
    text.extend_from_slice(b"{\"index\":2,\"time\":");
    text.resize(HEAD.len() + MAX_LINE + 1, b' ');
    for chunk in [4 << 20, MAX_LINE + (8 << 20)] {
        let err = read_chunked(&text, chunk).expect_err("a line over the cap");
        assert_eq!(err.line(), Some(3), "chunk {chunk}: {err}");
        assert!(err.to_string().contains("longer than 64 MiB"), "{err}");
    }
    // Whatever the chunk, a line over the cap in the middle is refused at its number.
    text.push(b'\n');
    text.extend_from_slice(TAIL.as_bytes());
    let err = read_chunked(&text, MAX_LINE + (8 << 20)).expect_err("a line over the cap");
    assert_eq!(err.line(), Some(3), "{err}");
}

#[test]
fn quadratic_long_line_a_hot_keys_final_log_over_many_chunks_is_read() {
    // 100,000 versions (about 2 MB on one line), read 64 bytes at a time: the line spans
    // some 30,000 chunks, which re-copying the line per chunk made take minutes.
    let versions = 100_000;
    let log: Vec<String> = (0..versions)
        .map(|v| {
            if v == 0 {
                "[0,\"init\"]".to_string()
            } else {
                format!("[{v},\"w3-{v}\"]")
            }
        })
        .collect();
    let last = versions - 1;
    let text = after_head(&[
        r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"db-final-read","key":"k","node":"db"}"#,
        &format!(
            r#"{{"index":3,"time":30,"process":1,"type":"ok","f":"db-final-read","key":"k","node":"db","value":{{"version":{last},"write":"w3-{last}","log":[{}]}}}}"#,
            log.join(",")
        ),
    ]);
    assert!(text.len() > 1_500_000);
    let mut got = None;
    let mut visitor = |e: &EventRef<'_>| {
        if let ValueRef::Final { log, .. } = &e.value {
            got = log.clone();
        }
        Ok(())
    };
    read_from_chunked(text.as_bytes(), Path::new(MEM), &mut visitor, 64).unwrap();
    let got = got.expect("the final read's log");
    assert_eq!(got.len(), versions as usize);
    assert_eq!(got[0], (0, "init".to_string()));
    assert_eq!(got[last as usize], (last, format!("w3-{last}")));
}

#[test]
fn gzip_bomb_of_one_endless_line_is_refused_naming_the_file() {
    // A valid start, then 100 MiB of zeros: one member of zeros, repeated (a gzip file may
    // hold many members), some 100 KiB on disk.
    let dir = tmp();
    let path = dir.path().join("bomb.jsonl.gz");
    let zeros = gzip(&vec![0u8; 1 << 20]);
    let mut bomb = gzip(format!("{HEAD}{{\"index\":2,\"time\":").as_bytes());
    for _ in 0..100 {
        bomb.extend_from_slice(&zeros);
    }
    assert!(bomb.len() < 200 << 10, "{} bytes", bomb.len());
    fs::write(&path, &bomb).unwrap();
    let err = read_file(&path).expect_err("a gzip bomb is refused");
    assert!(matches!(err, ReadError::Io { .. }), "{err:?}");
    let shown = chain(&err);
    assert_eq!(shown.matches("gzip bomb").count(), 1, "said once: {shown}");
    for needle in [
        &format!("cannot read {}: ", path.display()),
        "the gzip stream expanded to 64 MiB from ",
        "over 100 times its size",
        "gzip bomb",
        "decompress it (gunzip -k) and check the plain file",
    ] {
        assert!(shown.contains(needle), "{shown:?} lacks {needle:?}");
    }
}

#[test]
fn gzip_bomb_of_valid_padded_lines_is_refused_by_its_ratio() {
    // Valid events, each padded with 1 MiB of spaces: every line is under the line cap,
    // so only the ratio stops it.
    let dir = tmp();
    let path = dir.path().join("padded.jsonl.gz");
    let spaces = gzip(&vec![b' '; 1 << 20]);
    let lines = 2 * (GZIP_RATIO_AFTER >> 20);
    let mut bomb = Vec::new();
    for i in 0..lines {
        bomb.extend(gzip(
            format!(r#"{{"index":{i},"time":{i},"process":"nemesis","type":"info","f":"x","#)
                .as_bytes(),
        ));
        bomb.extend_from_slice(&spaces);
        bomb.extend(gzip(b"\"key\":\"k\"}\n"));
    }
    fs::write(&path, &bomb).unwrap();
    let mut visited = 0u64;
    let mut count = |_: &EventRef<'_>| {
        visited += 1;
        Ok(())
    };
    let err = read_history(&path, &mut count, &NoProgress).expect_err("refused");
    let shown = chain(&err);
    assert!(shown.contains("gzip bomb"), "{shown}");
    assert!(shown.contains(&path.display().to_string()), "{shown}");
    assert!(visited > 0, "the lines before were read");
    assert!(
        visited < lines,
        "reading stopped early ({visited} of {lines})"
    );
}

#[test]
fn pipes_a_fifo_is_read_like_the_file_it_carries_plain_and_gzip() {
    #[derive(Default)]
    struct Total(std::sync::Mutex<Option<Option<u64>>>);
    impl Progress for Total {
        fn start(&self, total: Option<u64>) {
            *self.0.lock().unwrap() = Some(total);
        }
    }
    let dir = tmp();
    let text = joined(&generated_history(200), "\n");
    let plain = dir.path().join("history.jsonl");
    fs::write(&plain, &text).unwrap();
    let gz = dir.path().join("history.jsonl.gz");
    fs::write(&gz, gzip(text.as_bytes())).unwrap();
    let (expected, _) = read_ok(&text);
    for (i, file) in [&plain, &gz].into_iter().enumerate() {
        let fifo = dir.path().join(format!("fifo-{i}"));
        mkfifo(&fifo);
        let bytes = fs::read(file).unwrap();
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || fs::write(fifo, bytes))
        };
        let mut seen = Vec::new();
        let mut visitor = |e: &EventRef<'_>| {
            seen.push(Seen::of(e));
            Ok(())
        };
        let progress = Total::default();
        let summary = read_history(&fifo, &mut visitor, &progress)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        writer.join().unwrap().unwrap();
        assert_eq!(seen, expected, "{}", file.display());
        assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
        assert_eq!(
            *progress.0.lock().unwrap(),
            Some(None),
            "a pipe has no size to show progress against"
        );
        // The hash of the bytes that came through the pipe: the file's, as sha256sum says.
        assert_eq!(summary.sha256, sha256sum(file), "{}", file.display());
    }
}

#[test]
fn the_sha256_of_a_read_is_what_sha256sum_says_of_the_file() {
    let dir = tmp();
    let text = joined(&generated_history(100), "\n");
    let plain = dir.path().join("history.jsonl");
    fs::write(&plain, &text).unwrap();
    let gz = dir.path().join("history.jsonl.gz");
    fs::write(&gz, gzip(text.as_bytes())).unwrap();
    let empty = dir.path().join("empty.jsonl");
    fs::write(&empty, "").unwrap();
    for file in [&plain, &gz, &empty] {
        let (_, summary) = read_file(file).unwrap();
        assert_eq!(summary.sha256.len(), 64);
        assert_eq!(summary.sha256, sha256sum(file), "{}", file.display());
    }
    let (_, plain_summary) = read_file(&plain).unwrap();
    let (_, gz_summary) = read_file(&gz).unwrap();
    assert_ne!(
        plain_summary.sha256, gz_summary.sha256,
        "gzip hashes the compressed bytes, as they are on disk"
    );
}

#[test]
fn pipes_resolve_history_takes_dash_for_stdin() {
    assert_eq!(resolve_history(Path::new("-")).unwrap(), Path::new("-"));
    assert_eq!(STDIN, "-");
}

#[test]
fn byte_order_mark_at_the_start_is_skipped_with_a_warning() {
    let text = joined(&generated_history(50), "\n");
    let (expected, _) = read_ok(&text);
    let with_bom = format!("\u{feff}{text}");
    for chunk in [1, 2, 3, 5, 4096, 4 << 20] {
        let (seen, summary) = read_chunked(with_bom.as_bytes(), chunk).unwrap();
        assert_eq!(seen, expected, "chunk {chunk}");
        assert_eq!(summary.bytes, with_bom.len() as u64, "chunk {chunk}");
        assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
        let warning = &summary.warnings[0];
        assert_eq!(warning.line, 1);
        assert!(
            warning.message.contains("byte order mark") && warning.message.contains("skipped"),
            "{warning}"
        );
    }
    // In a gzip file too: the mark is in the decompressed text.
    let dir = tmp();
    let gz = dir.path().join("history.jsonl.gz");
    fs::write(&gz, gzip(with_bom.as_bytes())).unwrap();
    let (seen, summary) = read_file(&gz).unwrap();
    assert_eq!(seen, expected);
    assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
    // A file that is only the mark is an empty history.
    let (seen, summary) = read("\u{feff}").unwrap();
    assert!(seen.is_empty());
    assert_eq!(summary.warnings.len(), 1);
}

#[test]
fn byte_order_mark_anywhere_else_is_an_error_that_says_what_it_is() {
    const BOM: char = '\u{feff}';
    let line = r#"{"index":2,"time":20,"process":"nemesis","type":"info","f":"start"}"#;
    // At the start of a later line, as joining two files that each have one leaves it.
    assert_rejected(
        &middle(&format!("\u{feff}{line}")),
        3,
        &["byte order mark (bytes EF BB BF) at column 1", "remove it"],
    );
    // Twice at the start: the second is an error on line 1.
    assert_rejected(
        &format!("\u{feff}\u{feff}{line}\n"),
        1,
        &["byte order mark"],
    );
    // Inside the line, between fields.
    assert_rejected(
        &middle(&format!(
            r#"{{"index":2,"time":20,"process":"nemesis",{BOM}"type":"info","f":"start"}}"#
        )),
        3,
        &["byte order mark (bytes EF BB BF) at column 42"],
    );
    // Inside a string it is just a character.
    let (seen, _) = read_ok(&after_head(&[&format!(
        r#"{{"index":2,"time":20,"process":"nemesis","type":"info","f":"start","node":"{BOM}n1"}}"#
    )]));
    assert_eq!(seen[2].node.as_deref(), Some("\u{feff}n1"));
}

#[test]
fn negative_versions_are_rejected_on_the_fast_and_the_slow_path() {
    let v = |version: &str| format!(r#"{{"version":{version},"write":"a"}}"#);
    // Each case: the lines after HEAD, with `VALUE` where the versioned value goes, and
    // what the error names.
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"write","key":"j","value":{"write":"a"}}"#,
                r#"{"index":3,"time":30,"process":1,"type":"ok","f":"write","key":"j","value":VALUE}"#,
            ],
            "the value of `write` ok has `version` -1",
        ),
        (
            &[
                r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#,
                r#"{"index":3,"time":30,"process":1,"type":"ok","f":"read","key":"k","value":VALUE}"#,
            ],
            "the value of `read` ok has `version` -1",
        ),
        (
            &[
                r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"fill","key":"k","value":VALUE}"#,
            ],
            "the value of `fill` invoke has `version` -1",
        ),
        (
            &[
                r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"db-final-read","key":"k"}"#,
                r#"{"index":3,"time":30,"process":1,"type":"ok","f":"db-final-read","key":"k","value":VALUE}"#,
            ],
            "the value of `db-final-read` ok has `version` -1",
        ),
    ];
    for (lines, needle) in cases {
        let bad_line = lines.len() as u64 + 2;
        let with = |value: &str, slow: bool| {
            let mut lines: Vec<String> = lines.iter().map(|l| l.replace("VALUE", value)).collect();
            if slow {
                // A leading space is valid JSON that only the slow path takes.
                let last = lines.last_mut().unwrap();
                last.insert(0, ' ');
            }
            after_head(&lines.iter().map(String::as_str).collect::<Vec<_>>())
        };
        // Version 0 is the first there is.
        read_ok(&with(&v("0"), false));
        read_ok(&with(&v("0"), true));
        let fast = assert_rejected(
            &with(&v("-1"), false),
            bad_line,
            &[needle, "versions start at 0"],
        );
        let slow = assert_rejected(&with(&v("-1"), true), bad_line, &[needle]);
        assert_eq!(fast, slow, "both paths say the same");
    }
    // A negative version in a db-final-read log, on both paths.
    for slow in ["", " "] {
        let text = after_head(&[
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"db-final-read","key":"k"}"#,
            &format!(
                r#"{slow}{{"index":3,"time":30,"process":1,"type":"ok","f":"db-final-read","key":"k","value":{{"version":1,"write":"a","log":[[0,"init"],[-7,"x"],[1,"a"]]}}}}"#
            ),
        ]);
        assert_rejected(
            &text,
            4,
            &[
                "the value of `db-final-read` ok has version -7 in its `log` (entry 1, from 0)",
                "versions start at 0",
            ],
        );
    }
}

#[test]
fn quote_cuts_on_a_char_boundary_and_escapes_control_characters() {
    assert_eq!(quote("k1"), "\"k1\"");
    assert_eq!(quote("a\"b\\c'd"), r#""a\"b\\c'd""#);
    assert_eq!(
        quote("\u{1b}[31m\0\r\n\u{202e}"),
        r#""\u{1b}[31m\0\r\n\u{202e}""#
    );
    let long = "é".repeat(1000); // two bytes each
    let quoted = quote(&long);
    assert!(quoted.starts_with("\"éé"), "{quoted}");
    assert!(quoted.ends_with("\"… (2000 bytes)"), "{quoted}");
    assert!(quoted.len() < 160, "{} bytes: {quoted}", quoted.len());
    // Escapes count towards the bound, so a string of escapes is cut as soon.
    let quoted = quote(&"\u{1b}".repeat(100_000));
    assert!(quoted.len() < 160, "{} bytes: {quoted}", quoted.len());
    assert!(quoted.ends_with("… (100000 bytes)"), "{quoted}");
}

#[test]
fn escape_is_quote_without_quotes_and_leaves_escaped_text_alone() {
    use coherence_store::escape;
    assert_eq!(
        escape("r1\u{1b}[2J\0\u{1}\u{fffe}", usize::MAX),
        r"r1\u{1b}[2J\0\u{1}\u{fffe}"
    );
    assert_eq!(escape("a\"b\\c'd", usize::MAX), "a\"b\\c'd");
    // Escaping what is escaped already changes nothing: a sentence quoting a key can be
    // escaped whole.
    let once = format!(
        "read of key {} on {}",
        quote("k\u{1b}"),
        escape("n\u{7f}", 120)
    );
    assert_eq!(escape(&once, usize::MAX), once);
    let cut = escape(&"é".repeat(1000), 10);
    assert_eq!(cut, "ééééé… (2000 bytes)");
}

#[test]
fn cut_keeps_short_strings_and_cuts_long_ones_on_a_char_boundary() {
    use coherence_store::cut;
    assert!(matches!(cut("k1", 2), std::borrow::Cow::Borrowed("k1")));
    assert_eq!(cut("é\u{1b}é", 3), "é\u{1b}… (5 bytes)", "nothing escaped");
    assert_eq!(cut(&"é".repeat(10), 5), "éé… (20 bytes)");
}

#[test]
fn errors_echo_user_strings_a_megabyte_process_name_gives_a_short_error() {
    let name = "n".repeat(1 << 20);
    let reason = assert_rejected(
        &middle(&format!(
            r#"{{"index":2,"time":20,"process":"{name}","type":"invoke","f":"start"}}"#
        )),
        3,
        &[
            "is a string, so its events must have type \"info\"",
            "… (1048576 bytes)",
        ],
    );
    assert!(reason.len() < 400, "{} bytes: {reason}", reason.len());
}

#[test]
fn errors_echo_user_strings_every_message_stays_short() {
    let big = "x".repeat(1 << 20);
    let texts = [
        // unknown type
        middle(&format!(
            r#"{{"index":2,"time":20,"process":1,"type":"{big}","f":"read","key":"k"}}"#
        )),
        // completion without invoke
        middle(&format!(
            r#"{{"index":2,"time":20,"process":1,"type":"ok","f":"{big}","key":"k"}}"#
        )),
        // second invoke
        after_head(&[
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#,
            &format!(
                r#"{{"index":3,"time":30,"process":1,"type":"invoke","f":"{big}","key":"k"}}"#
            ),
        ]),
        // completion that does not match: four strings quoted
        after_head(&[
            &format!(
                r#"{{"index":2,"time":20,"process":1,"type":"invoke","f":"{big}","key":"{big}"}}"#
            ),
            &format!(
                r#"{{"index":3,"time":30,"process":1,"type":"fail","f":"{big}y","key":"{big}z"}}"#
            ),
        ]),
        // a field of the wrong type, as diagnose shows it
        middle(&format!(
            r#"{{"index":"{big}","time":20,"process":1,"type":"invoke","f":"read","key":"k"}}"#
        )),
        // a value of the wrong shape, as found
        after_head(&[
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#,
            &format!(
                r#"{{"index":3,"time":30,"process":1,"type":"ok","f":"read","key":"k","value":{{"version":1,"payload":"{big}"}}}}"#
            ),
        ]),
        // serde's own message, which quotes the value it refused
        after_head(&[
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#,
            &format!(
                r#"{{"index":3,"time":30,"process":1,"type":"ok","f":"read","key":"k","value":{{"version":"{big}","write":"a"}}}}"#
            ),
        ]),
    ];
    for text in &texts {
        let reason = error_of(text);
        assert!(
            reason.len() < 1000,
            "{} bytes: {}",
            reason.len(),
            &reason[..300]
        );
        assert!(
            reason.contains("(1048576 bytes)") || reason.contains("bytes)"),
            "{reason}"
        );
    }
}

#[test]
fn errors_echo_user_strings_control_characters_never_reach_an_error_raw() {
    // ESC, NUL, CR, BEL, DEL and a right-to-left override, written as JSON escapes (the
    // reader decodes them) or raw where JSON allows it (the override).
    let evil = concat!(r"\u001b[2J\u0000\r\u0007\u007f", "\u{202e}");
    let texts = [
        middle(&format!(
            r#"{{"index":2,"time":20,"process":"{evil}","type":"ok","f":"start"}}"#
        )),
        middle(&format!(
            r#"{{"index":2,"time":20,"process":1,"type":"{evil}","f":"read","key":"k"}}"#
        )),
        after_head(&[
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#,
            &format!(r#"{{"index":3,"time":30,"process":1,"type":"invoke","f":"{evil}","key":"k"}}"#),
        ]),
        after_head(&[
            &format!(r#"{{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"{evil}"}}"#),
            &format!(r#"{{"index":3,"time":30,"process":1,"type":"ok","f":"read{evil}","key":"k{evil}"}}"#),
        ]),
        middle(&format!(
            r#"{{"index":2,"time":20,"process":1,"type":"ok","f":"{evil}","key":"k"}}"#
        )),
        after_head(&[
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#,
            &format!(r#"{{"index":3,"time":30,"process":1,"type":"ok","f":"read","key":"k","value":{{"version":"{evil}","write":"a"}}}}"#),
        ]),
        after_head(&[
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#,
            &format!(r#"{{"index":3,"time":30,"process":1,"type":"ok","f":"read","key":"k","value":{{"version":1,"payload":"{evil}"}}}}"#),
        ]),
        // A raw CR inside a value (JSON whitespace) and a raw override in a found value.
        after_head(&[
            r#"{"index":2,"time":20,"process":1,"type":"invoke","f":"read","key":"k"}"#,
            "{\"index\":3,\"time\":30,\"process\":1,\"type\":\"ok\",\"f\":\"read\",\"key\":\"k\",\"value\":{\"version\":1,\"x\":\"\u{202e}a\",\r\"y\":1}}",
        ]),
    ];
    for text in &texts {
        let reason = error_of(text);
        assert!(
            !reason.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "a raw control character in {reason:?}"
        );
        assert!(
            reason.contains(r"\u{1b}")
                || reason.contains(r"\u{202e}")
                || reason.contains(r"\u001b"),
            "the characters are shown escaped: {reason:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The example histories of the spec
// ---------------------------------------------------------------------------------------

#[test]
fn spec_examples_are_all_read() {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/spec/examples"
    ));
    let mut read_any = 0;
    for entry in fs::read_dir(dir).expect("the spec's examples") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "jsonl") {
            continue;
        }
        let (seen, summary) = read_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let lines = fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(seen.len(), lines, "{}", path.display());
        assert!(
            summary.warnings.is_empty(),
            "{}: {:?}",
            path.display(),
            summary.warnings
        );
        read_any += 1;
    }
    assert!(
        read_any >= 7,
        "only {read_any} examples found in {}",
        dir.display()
    );
}

// ---------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------

fn sample_events() -> Vec<Event> {
    vec![
        Event::new(0, Process::Client(0), EventType::Invoke, "write")
            .key("k")
            .node("db")
            .value(json!({"write": "a"}))
            .extra("region", json!("eu-west"))
            .extra("attempt", json!(1)),
        Event::new(5, Process::Client(0), EventType::Ok, "write")
            .key("k")
            .node("db")
            .value(json!({"version": 1, "write": "a"}))
            .extra("latency_ms", json!(5)),
        Event::new(
            6,
            Process::Actor("nemesis".into()),
            EventType::Info,
            "start-partition",
        )
        .value(json!({"nodes": ["c1", "c2"]})),
        Event::new(7, Process::Client(1), EventType::Invoke, "read")
            .key("k")
            .node("c1")
            .extra("role", json!("replica")),
        Event::new(9, Process::Client(1), EventType::Info, "read")
            .key("k")
            .node("c1")
            .error("timeout: \"c1\" did not answer")
            .extra("tags", json!({"retry": [1, 2], "ok": false})),
        Event::new(12, Process::Client(2), EventType::Invoke, "db-final-read")
            .key("k")
            .node("db"),
        Event::new(13, Process::Client(2), EventType::Ok, "db-final-read")
            .key("k")
            .node("db")
            .value(json!({"version": 1, "write": "a", "log": [[0, "init"], [1, "a"]]})),
    ]
}

#[test]
fn append_assigns_indices_from_zero() {
    let dir = tmp();
    let path = dir.path().join("history.jsonl");
    let mut w = HistoryWriter::create(&path).unwrap();
    assert_eq!(w.path(), path);
    assert_eq!(w.next_index(), 0);
    let mut got = Vec::new();
    for mut e in sample_events() {
        e.index = 999; // whatever the caller left there is replaced
        got.push(w.append(e).unwrap());
    }
    assert_eq!(got, (0..sample_events().len() as u64).collect::<Vec<_>>());
    assert_eq!(w.next_index(), sample_events().len() as u64);
    let raw = format!(
        r#"{{"index":{},"time":20,"process":"control","type":"info","f":"final-phase"}}"#,
        w.next_index()
    );
    assert_eq!(
        w.append_raw(raw.as_bytes()).unwrap(),
        sample_events().len() as u64
    );
    w.finish().unwrap();
    let (seen, _) = read_file(&path).unwrap();
    let indices: Vec<u64> = seen.iter().map(|s| s.index).collect();
    assert_eq!(
        indices,
        (0..=sample_events().len() as u64).collect::<Vec<_>>()
    );
}

#[test]
fn writer_reader_round_trip() {
    let dir = tmp();
    let path = dir.path().join("history.jsonl");
    let events = sample_events();
    let mut w = HistoryWriter::create(&path).unwrap();
    for e in &events {
        w.append(e.clone()).unwrap();
    }
    w.finish().unwrap();

    // Byte for byte, every line deserialises into the event that was appended.
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    let back: Vec<Event> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected: Vec<Event> = events
        .iter()
        .enumerate()
        .map(|(i, e)| Event {
            index: i as u64,
            ..e.clone()
        })
        .collect();
    assert_eq!(back, expected);
    assert_eq!(back[0].extra.get("attempt"), Some(&json!(1)));

    // And the validating reader sees the same content.
    let (seen, summary) = read_file(&path).unwrap();
    assert!(summary.warnings.is_empty());
    assert_eq!(seen.len(), events.len());
    for (s, e) in seen.iter().zip(&expected) {
        assert_eq!(s.line, e.index + 1);
        assert_eq!(s.index, e.index);
        assert_eq!(s.time, e.time);
        let process = match &e.process {
            Process::Client(n) => format!("client {n}"),
            Process::Actor(a) => format!("actor {a}"),
        };
        assert_eq!(s.process, process);
        assert_eq!(s.kind, e.kind);
        assert_eq!(s.f, e.f);
        assert_eq!(s.key, e.key);
        assert_eq!(s.node, e.node);
        assert_eq!(s.error, e.error);
        assert_eq!(
            s.region,
            e.extra
                .get("region")
                .and_then(|v| v.as_str())
                .map(String::from)
        );
        assert_eq!(
            s.role,
            e.extra
                .get("role")
                .and_then(|v| v.as_str())
                .map(String::from)
        );
    }
    assert_eq!(seen[0].value, "write-request a");
    assert_eq!(seen[1].value, "versioned 1 a");
    assert_eq!(seen[1].invoke_index, Some(0));
    assert_eq!(seen[2].value, r#"raw {"nodes":["c1","c2"]}"#);
    assert_eq!(seen[4].invoke_index, Some(3));
    assert_eq!(
        seen[6].value,
        r#"final 1 a log Some([(0, "init"), (1, "a")])"#
    );
}

#[test]
fn flush_makes_events_visible_before_finish() {
    let dir = tmp();
    let path = dir.path().join("history.jsonl");
    let events = sample_events();
    let mut w = HistoryWriter::create(&path).unwrap();
    for e in &events[..3] {
        w.append(e.clone()).unwrap();
    }
    w.flush().unwrap();
    let (seen, summary) = read_file(&path).unwrap();
    assert_eq!(seen.len(), 3);
    assert!(summary.warnings.is_empty());

    for e in &events[3..5] {
        w.append(e.clone()).unwrap();
    }
    w.sync().unwrap();
    let (seen, summary) = read_file(&path).unwrap();
    assert_eq!(seen.len(), 5);
    assert_eq!(summary.unfinished, 0);

    w.append(events[5].clone()).unwrap();
    w.flush().unwrap();
    assert_eq!(read_file(&path).unwrap().1.unfinished, 1);

    w.append(events[6].clone()).unwrap();
    w.finish().unwrap();
    assert_eq!(read_file(&path).unwrap().0.len(), events.len());
}

#[test]
fn crashed_writer_leaves_a_readable_history() {
    let dir = tmp();
    let path = dir.path().join("history.jsonl");
    let events = sample_events();
    let mut w = HistoryWriter::create(&path).unwrap();
    for e in &events[..4] {
        w.append(e.clone()).unwrap();
    }
    w.flush().unwrap();
    // The process dies while the next line is being written: part of it reached the file.
    let mut raw = OpenOptions::new().append(true).open(&path).unwrap();
    raw.write_all(br#"{"index":4,"time":9,"process":1,"type":"in"#)
        .unwrap();
    drop(raw);
    std::mem::forget(w); // no finish, no flush on drop

    let (seen, summary) = read_file(&path).expect("a crashed writer's history is readable");
    assert_eq!(seen.len(), 4);
    assert_eq!(summary.events, 4);
    assert_eq!(
        summary.unfinished, 1,
        "the read of process 1 never completed"
    );
    assert_eq!(summary.warnings.len(), 1);
    assert_eq!(summary.warnings[0].line, 5);
    assert!(summary.warnings[0].message.contains("cut short"));
}

#[test]
fn writer_dropped_without_finish_keeps_its_lines() {
    let dir = tmp();
    let path = dir.path().join("history.jsonl");
    let events = sample_events();
    {
        let mut w = HistoryWriter::create(&path).unwrap();
        for e in &events {
            w.append(e.clone()).unwrap();
        }
    }
    let (seen, summary) = read_file(&path).unwrap();
    assert_eq!(seen.len(), events.len());
    assert!(summary.warnings.is_empty());
}

#[test]
fn create_truncates_an_existing_file() {
    let dir = tmp();
    let path = dir.path().join("history.jsonl");
    fs::write(
        &path,
        "old content that is much longer than nothing\n".repeat(100),
    )
    .unwrap();
    let mut w = HistoryWriter::create(&path).unwrap();
    w.append(sample_events()[0].clone()).unwrap();
    w.finish().unwrap();
    assert_eq!(read_file(&path).unwrap().0.len(), 1);
}

// ---------------------------------------------------------------------------------------
// Run directories
// ---------------------------------------------------------------------------------------

#[test]
fn resolve_history_in_a_run_directory() {
    let dir = tmp();
    let plain = dir.path().join(HISTORY);
    fs::write(&plain, HEAD).unwrap();
    assert_eq!(resolve_history(dir.path()).unwrap(), plain);
    assert_eq!(HISTORY, "history.jsonl");
}

#[test]
fn resolve_history_gz_in_a_run_directory() {
    let dir = tmp();
    let gz = dir.path().join(HISTORY_GZ);
    fs::write(&gz, b"").unwrap();
    assert_eq!(resolve_history(dir.path()).unwrap(), gz);
    assert_eq!(HISTORY_GZ, "history.jsonl.gz");
    // With both, the plain file wins.
    let plain = dir.path().join(HISTORY);
    fs::write(&plain, HEAD).unwrap();
    assert_eq!(resolve_history(dir.path()).unwrap(), plain);
}

#[test]
fn resolve_history_in_an_empty_directory_says_what_to_do() {
    let dir = tmp();
    // A directory named like the history does not count as one.
    fs::create_dir(dir.path().join(HISTORY)).unwrap();
    let err = resolve_history(dir.path()).unwrap_err();
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    assert!(
        err.contains("without a history.jsonl or history.jsonl.gz"),
        "{err}"
    );
    assert!(
        err.contains("point at a history file or a run directory"),
        "{err}"
    );
}

#[test]
fn resolve_history_on_a_missing_path_says_what_to_do() {
    let dir = tmp();
    let missing: PathBuf = dir.path().join("runs").join("nope");
    let err = resolve_history(&missing).unwrap_err();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(
        err.contains(
            "point at a history file (.jsonl or .jsonl.gz), a run directory, or - for standard input"
        ),
        "{err}"
    );
}

#[test]
fn resolve_history_on_a_file_is_that_file() {
    let dir = tmp();
    let file = dir.path().join("elsewhere.jsonl");
    fs::write(&file, HEAD).unwrap();
    assert_eq!(resolve_history(&file).unwrap(), file);
}

#[test]
fn a_run_directory_history_that_is_a_link_is_refused_not_followed() {
    let dir = tmp();
    let elsewhere = dir.path().join("elsewhere.jsonl");
    fs::write(&elsewhere, HEAD).unwrap();
    let run = dir.path().join("run");
    fs::create_dir(&run).unwrap();
    std::os::unix::fs::symlink(&elsewhere, run.join(HISTORY)).unwrap();
    let err = resolve_history(&run).unwrap_err();
    assert!(
        err.contains(&run.join(HISTORY).display().to_string()) && err.contains("symbolic link"),
        "{err}"
    );
    assert!(err.contains("replace the link with a copy"), "{err}");
    // A regular .gz beside it does not make the link acceptable.
    fs::write(run.join(HISTORY_GZ), b"").unwrap();
    assert!(resolve_history(&run).is_err());
    // The reader refuses it too, whoever hands it the path.
    let e = read_file(&run.join(HISTORY)).unwrap_err();
    assert!(matches!(e, ReadError::Io { .. }), "{e}");
    assert!(chain(&e).contains("symbolic link"), "{e}");
    // A history outside a run directory is the user's choice: a link to it is read.
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    assert_eq!(resolve_history(&link).unwrap(), link);
    assert!(!read_file(&link).unwrap().0.is_empty());
}
