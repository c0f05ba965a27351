//! The history store of coherence.
//!
//! This crate knows the history format of `shared/spec/history.md` and nothing about
//! checking it: the event types ([`event`]), durations as people write them
//! ([`duration`]), a streaming reader that validates every
//! line and hands each event to a [`reader::Visitor`] ([`reader`]), a buffered,
//! append-only writer ([`writer`]) and the thread-safe recorder that stamps events with
//! the run's monotonic clock ([`recorder`]), the layout of run directories
//! ([`run`]) and their versioned `run.json` ([`run_info`]), how a run directory's files are read and outputs written without following
//! links ([`files`]), the redaction of secrets in campaign files ([`redact`]), and the vocabulary of
//! faults as histories tell them ([`faults`]). It assumes
//! nothing about where a history came from: our own workloads and a user's client in
//! another language write the same format.

#![deny(missing_docs)]

pub mod duration;
pub mod event;
pub mod faults;
pub mod files;
pub mod progress;
pub mod reader;
pub mod recorder;
pub mod redact;
pub mod run;
pub mod run_info;
pub mod writer;

pub use event::{Event, EventType, OpKind, Process, Versioned};
pub use progress::{NoProgress, Progress};
pub use reader::{
    cut, escape, quote, read_history, EventRef, ProcessRef, ReadError, ReadSummary, ValueRef,
    Visitor, Warning, MAX_LINE, UNVERSIONED,
};
pub use writer::HistoryWriter;

/// An error and every error that caused it, as one line ("error connecting to server:
/// Connection refused (os error 111)"), a cause left out where the message above
/// already says it.
pub fn with_sources(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
