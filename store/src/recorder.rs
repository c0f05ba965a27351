//! The recorder: every client's events go through one writer, stamped with one
//! monotonic clock under the same lock that appends them, so times in the file never go
//! backwards. It flushes as it goes (at least every 100 ms), so a run that dies leaves a
//! history whose only damage is a cut-short last line.

use crate::{Event, EventType, HistoryWriter, Process};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts for progress reports.
#[derive(Debug, Default)]
pub struct Counters {
    /// Completed client operations.
    pub completed: AtomicU64,
    /// Of which `fail`.
    pub failed: AtomicU64,
    /// Of which `info`.
    pub unknown: AtomicU64,
}

struct Inner {
    writer: HistoryWriter,
    last_flush: Instant,
    error: Option<std::io::Error>,
    /// Where each written line goes too ([`Recorder::tap`]).
    taps: Vec<std::sync::mpsc::Sender<Vec<u8>>>,
}

/// Writes a history from many tasks.
pub struct Recorder {
    inner: Mutex<Inner>,
    start: Instant,
    next_process: AtomicI64,
    /// Progress counters.
    pub counters: Counters,
}

impl Recorder {
    /// Records into `writer`; time 0 is now.
    pub fn new(writer: HistoryWriter) -> Recorder {
        Recorder {
            inner: Mutex::new(Inner {
                writer,
                last_flush: Instant::now(),
                error: None,
                taps: Vec::new(),
            }),
            start: Instant::now(),
            next_process: AtomicI64::new(0),
            counters: Counters::default(),
        }
    }

    /// A fresh client process number (after an `info`, a client continues under one).
    pub fn new_process(&self) -> i64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    /// Every event logged from now on, as its line in the file (without the newline),
    /// in file order: for a reader that follows the run as it goes (the online
    /// checker). The channel closes when the recorder finishes.
    pub fn tap(&self) -> std::sync::mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.taps.push(tx);
        rx
    }

    /// When the run started: time 0 of the history.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Appends `event`, stamped with the current time. Write errors are kept and
    /// reported by [`Recorder::finish`]; recording goes on.
    pub fn log(&self, mut event: Event) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        event.time = self.start.elapsed().as_nanos() as u64;
        if event.kind != EventType::Invoke && matches!(event.process, Process::Client(_)) {
            self.counters.completed.fetch_add(1, Ordering::Relaxed);
            match event.kind {
                EventType::Fail => self.counters.failed.fetch_add(1, Ordering::Relaxed),
                EventType::Info => self.counters.unknown.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
        }
        match inner.writer.append(event) {
            Ok(_) => {
                if !inner.taps.is_empty() {
                    let line = inner.writer.last_line().to_vec();
                    // A tap whose reader is gone is dropped.
                    inner.taps.retain(|tap| tap.send(line.clone()).is_ok());
                }
            }
            Err(e) => {
                inner.error.get_or_insert(e);
            }
        }
        if inner.last_flush.elapsed() > Duration::from_millis(100) {
            inner.last_flush = Instant::now();
            if let Err(e) = inner.writer.flush() {
                inner.error.get_or_insert(e);
            }
        }
    }

    /// Flushes what is buffered.
    pub fn flush(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = inner.writer.flush() {
            inner.error.get_or_insert(e);
        }
        inner.last_flush = Instant::now();
    }

    /// Finishes the file; the first write error, if any.
    pub fn finish(self) -> std::io::Result<u64> {
        let inner = self.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = inner.error {
            return Err(e);
        }
        let events = inner.writer.next_index();
        inner.writer.finish()?;
        Ok(events)
    }
}
