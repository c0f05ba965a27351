//! A buffered, append-only history writer for recorders.
//!
//! Each event is serialised whole before it reaches the buffer, so the file only ever
//! holds whole lines plus, after a crash, at most one cut-short last line (which the
//! reader skips with a warning). `flush` hands the buffer to the OS; `sync` also
//! fsyncs, for a history that must survive the machine.

use crate::event::Event;
use flate2::write::GzEncoder;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

enum Sink {
    Plain(BufWriter<File>),
    Gzip(GzEncoder<BufWriter<File>>),
}

/// Appends events to a history file, assigning their indices.
pub struct HistoryWriter {
    sink: Sink,
    path: PathBuf,
    next_index: u64,
    line: Vec<u8>,
}

impl HistoryWriter {
    /// Creates (or truncates) the file; a name ending in `.gz` is written gzip-compressed.
    pub fn create(path: &Path) -> io::Result<HistoryWriter> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let buffered = BufWriter::with_capacity(1 << 20, file);
        let sink = if path.extension().is_some_and(|e| e == "gz") {
            Sink::Gzip(GzEncoder::new(buffered, flate2::Compression::fast()))
        } else {
            Sink::Plain(buffered)
        };
        Ok(HistoryWriter {
            sink,
            path: path.to_path_buf(),
            next_index: 0,
            line: Vec::with_capacity(512),
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The index the next event will get (= events written so far).
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Appends `event` with the next index, which it returns.
    pub fn append(&mut self, mut event: Event) -> io::Result<u64> {
        event.index = self.next_index;
        self.line.clear();
        serde_json::to_writer(&mut self.line, &event)?;
        self.line.push(b'\n');
        self.write_line()?;
        Ok(event.index)
    }

    /// The last line written, without its newline.
    pub fn last_line(&self) -> &[u8] {
        self.line.strip_suffix(b"\n").unwrap_or(&self.line)
    }

    /// Appends one line the caller serialised itself (without the newline). The caller
    /// promises it is one JSON event whose `index` is [`HistoryWriter::next_index`].
    pub fn append_raw(&mut self, json: &[u8]) -> io::Result<u64> {
        self.line.clear();
        self.line.extend_from_slice(json);
        self.line.push(b'\n');
        self.write_line()?;
        Ok(self.next_index - 1)
    }

    fn write_line(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Plain(w) => w.write_all(&self.line)?,
            Sink::Gzip(w) => w.write_all(&self.line)?,
        }
        self.next_index += 1;
        Ok(())
    }

    /// Hands everything buffered to the operating system.
    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Plain(w) => w.flush(),
            Sink::Gzip(w) => w.flush(),
        }
    }

    /// Flushes and waits until the data is on disk.
    pub fn sync(&mut self) -> io::Result<()> {
        self.flush()?;
        match &mut self.sink {
            Sink::Plain(w) => w.get_ref().sync_data(),
            Sink::Gzip(w) => w.get_ref().get_ref().sync_data(),
        }
    }

    /// Finishes the file (the gzip trailer too) and syncs it.
    pub fn finish(self) -> io::Result<()> {
        let mut file = match self.sink {
            Sink::Plain(w) => w.into_inner().map_err(|e| e.into_error())?,
            Sink::Gzip(w) => w.finish()?.into_inner().map_err(|e| e.into_error())?,
        };
        file.flush()?;
        file.sync_all()
    }
}
