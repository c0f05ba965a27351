//! The event types of the history format (`shared/spec/history.md`).
//!
//! [`Event`] is the owned form that recorders write and tools pass around; the reader
//! hands out the borrowed, already-validated form [`crate::EventRef`] instead, which
//! costs no allocation per line.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// The `type` of an event, as in Jepsen. Its spelling in the format is its name in
/// lowercase, for serde and strings alike.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::Display,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum EventType {
    /// An operation begins.
    Invoke,
    /// The operation happened; the event carries its result.
    Ok,
    /// The operation certainly did not happen.
    Fail,
    /// The outcome is unknown, or a standalone event of a string process.
    Info,
}

impl EventType {
    /// Parses the spelling used in the format.
    pub fn parse(s: &str) -> Option<EventType> {
        s.parse().ok()
    }

    /// The spelling used in the format.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The operations the format gives a meaning to (`f`). Anything else is [`OpKind::Other`].
/// Its spelling in the format is its name in kebab-case (`db-read`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::EnumString,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "kebab-case")]
pub enum OpKind {
    /// `write`: commit a new version of a key in the database.
    Write,
    /// `read`: read a key from a cache node.
    Read,
    /// `db-read`: read a key from the database.
    DbRead,
    /// `fill`: install a value read from the database into a cache node.
    Fill,
    /// `invalidate`: delete a key from a cache node.
    Invalidate,
    /// `final-read`: a cache read taken in the final phase.
    FinalRead,
    /// `db-final-read`: the database's final state of a key.
    DbFinalRead,
    /// `final-phase`: faults healed, the system quiesced.
    FinalPhase,
    /// Any other `f` (nemesis faults, monitor events, user operations).
    Other,
}

impl OpKind {
    /// Classifies an `f` (`"other"`, like any `f` the format gives no meaning to, is
    /// [`OpKind::Other`]).
    pub fn parse(f: &str) -> OpKind {
        f.parse().unwrap_or(OpKind::Other)
    }

    /// True for the operations on one item, which must carry a `key`.
    pub fn is_data(self) -> bool {
        !matches!(self, OpKind::FinalPhase | OpKind::Other)
    }

    /// The spelling used in the format (`"other"` for [`OpKind::Other`]).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Who logged an event: an integer client, or a named actor such as `"nemesis"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Process {
    /// A client with at most one operation outstanding.
    Client(i64),
    /// An actor that logs standalone `info` events (`"nemesis"`, `"control"`, ...).
    Actor(String),
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Process::Client(n) => write!(f, "{n}"),
            Process::Actor(s) => f.write_str(s),
        }
    }
}

/// A versioned value: the database version of a key and the write that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Versioned {
    /// The version, 0 for the initial state.
    pub version: i64,
    /// The unique id of the write that committed it (`"init"` for version 0).
    pub write: String,
}

impl Versioned {
    /// The JSON form of the value.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"version": self.version, "write": self.write})
    }
}

/// One line of a history, owned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the file, from 0. The writer assigns it.
    pub index: u64,
    /// Nanoseconds since the run started, from one monotonic clock.
    pub time: u64,
    /// Who logged it.
    pub process: Process,
    /// invoke, ok, fail or info.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The operation.
    pub f: String,
    /// The item the operation touches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Which server served it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The value; its shape depends on `f` and `type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Why a `fail` or `info` happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Any other fields (`region`, `latency_ms`, ...), kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Event {
    /// A new event with no key, node, value, error or extra fields; index 0 until written.
    pub fn new(time: u64, process: Process, kind: EventType, f: impl Into<String>) -> Event {
        Event {
            index: 0,
            time,
            process,
            kind,
            f: f.into(),
            key: None,
            node: None,
            value: None,
            error: None,
            extra: Map::new(),
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<String>) -> Event {
        self.key = Some(key.into());
        self
    }

    /// Sets the node.
    pub fn node(mut self, node: impl Into<String>) -> Event {
        self.node = Some(node.into());
        self
    }

    /// Sets the value.
    pub fn value(mut self, value: Value) -> Event {
        self.value = Some(value);
        self
    }

    /// Sets the error.
    pub fn error(mut self, error: impl Into<String>) -> Event {
        self.error = Some(error.into());
        self
    }

    /// Adds an extra field.
    pub fn extra(mut self, name: &str, value: Value) -> Event {
        self.extra.insert(name.to_string(), value);
        self
    }
}
