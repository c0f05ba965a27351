//! A streaming, validating reader for history files (plain or gzip).
//!
//! The file is read in large chunks; the lines of a chunk are parsed in parallel into
//! borrowed [`EventRef`]s (no allocation per line), then checked in order — index
//! sequence, clock, pairing — and handed one by one to a [`Visitor`]. Memory stays
//! bounded by the chunk size and the longest line allowed ([`MAX_LINE`]) whatever the
//! file size; a gzip stream that expands absurdly ([`MAX_GZIP_RATIO`]) is refused.
//! The input is read once, front to back, so a pipe or standard input (`-`) does as well
//! as a file; the file's sha256 is computed on the way ([`ReadSummary::sha256`]).
//!
//! Malformed input is rejected with the file, the line and the reason, phrased so the
//! user knows what to fix; every string of the input that a message quotes goes through
//! [`quote`], so a message stays short and never carries control characters to a
//! terminal. A last line cut short (no newline and not a whole event) is what a crashed
//! writer leaves behind: it becomes a [`Warning`], not an error.

use crate::event::{EventType, OpKind};
use crate::progress::Progress;
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};

/// How many bytes are parsed at a time.
const CHUNK: usize = 4 << 20;

/// The longest line the reader takes, in bytes (its line end not counted): 64 MiB.
///
/// An ordinary event is about 140 bytes. The longest real one is the `ok` of a
/// `db-final-read`, which carries the key's whole version log at about 25 bytes a
/// version (`[123456,"w12-34567"],`): 2.5 MB for a hot key with 100,000 versions. 64 MiB
/// holds the log of over 2.5 million versions of one key, 25 times that hot key, while
/// bounding what one line costs: a line is parsed whole, so the reader holds at most
/// this plus a chunk of it (and the parsed log, about twice as much again). A longer
/// line is refused with its number as soon as it is seen, instead of being gathered for
/// minutes: it comes from a file without line ends (not a history) or from a gzip stream
/// that expands to one endless line.
pub const MAX_LINE: usize = 64 << 20;

/// A gzip stream that expands to more than this many times the compressed bytes read so
/// far is refused (once past [`GZIP_RATIO_AFTER`]), as a gzip bomb.
///
/// Real histories expand far less: what our writer produces (`coherence gen --mode buggy
/// --ops 200000`, gzip level 1) expands 5.4 times (18,826,554 bytes to 101,599,224); the
/// most repetitive simulated history (one key, one client) recompressed with `gzip -9`
/// expands 12.8 times. Deflate itself tops out near 1032 times, and a bomb (zeros, or
/// valid events padded with spaces) comes close to that. 100 leaves eight times the
/// headroom over the most compressible history measured and stays ten times below a
/// bomb. A real history that compresses better (huge constant payloads, say) can be
/// decompressed first: a plain file has no such limit.
pub const MAX_GZIP_RATIO: u64 = 100;

/// How many decompressed bytes a gzip stream may produce before [`MAX_GZIP_RATIO`]
/// applies (64 MiB): below it, the ratio of a short stream says little, and the whole of
/// it costs a fraction of a second to read.
pub const GZIP_RATIO_AFTER: u64 = 64 << 20;

/// The path that names standard input, for [`read_history`] and
/// [`crate::run::resolve_history`].
pub const STDIN: &str = "-";

/// How standard input is named in errors and results.
pub const STDIN_NAME: &str = "<stdin>";

/// How many bytes of a string (after escaping) a message quotes at most.
pub const QUOTE_LIMIT: usize = 120;

/// Quotes a string of the input for a message: in double quotes, escaped as Rust's
/// `{:?}` escapes it (control characters such as ESC, NUL or CR, and invisible ones
/// such as bidirectional overrides, become `\u{1b}`, `\0`, `\r`, ...), and cut on a
/// character boundary after 120 bytes of escaped text, with its full size appended:
/// `"aaaa"… (1048576 bytes)`. A message quoting it stays short and safe to print.
pub fn quote(s: &str) -> String {
    bounded(s, true, QUOTE_LIMIT)
}

/// [`quote`] without the quotes and with a limit of the caller's (`usize::MAX`: none):
/// control and invisible characters escaped as `quote` escapes them, `"` and `\` kept
/// as they are, cut after `limit` bytes of escaped text with the full size appended
/// (`aaaa… (1048576 bytes)`). For names shown as they are (a node, a file) and for
/// text that may hold them: text that went through `quote` or `escape` already comes
/// out of it unchanged (short of the limit), so escaping twice does no harm.
pub fn escape(s: &str, limit: usize) -> String {
    bounded(s, false, limit)
}

/// `s` cut on a character boundary after at most `limit` bytes, with its full size
/// appended as [`quote`] appends it (`aaaa… (1048576 bytes)`), and nothing escaped: for
/// data kept in a format that escapes on its own (JSON). `s` itself when it is short.
pub fn cut(s: &str, limit: usize) -> Cow<'_, str> {
    if s.len() <= limit {
        return Cow::Borrowed(s);
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + 24);
    out.push_str(&s[..end]);
    mark_cut(&mut out, s.len());
    Cow::Owned(out)
}

/// [`escape`] with the limit of [`quote`], for text that is already readable as it is
/// (the JSON of a value, a parser's message).
fn excerpt(s: &str) -> String {
    escape(s, QUOTE_LIMIT)
}

fn mark_cut(out: &mut String, len: usize) {
    let _ = write!(out, "… ({len} bytes)");
}

fn bounded(s: &str, quoted: bool, limit: usize) -> String {
    let mut out = String::with_capacity(s.len().min(limit) + 24);
    if quoted {
        out.push('"');
    }
    let body = out.len();
    let mut cut = false;
    for c in s.chars() {
        let before = out.len();
        match c {
            '"' | '\\' if !quoted => out.push(c),
            '\'' => out.push(c),
            _ => out.extend(c.escape_debug()),
        }
        if out.len() - body > limit {
            out.truncate(before);
            cut = true;
            break;
        }
    }
    if quoted {
        out.push('"');
    }
    if cut {
        mark_cut(&mut out, s.len());
    }
    out
}

/// Who logged an event, borrowed from the line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProcessRef<'a> {
    /// A client: at most one operation outstanding.
    Client(i64),
    /// A named actor that logs standalone `info` events.
    Actor(Cow<'a, str>),
}

impl fmt::Display for ProcessRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessRef::Client(n) => write!(f, "{n}"),
            ProcessRef::Actor(s) => f.write_str(&quote(s)),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for ProcessRef<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = ProcessRef<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(ProcessRef::Client(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(ProcessRef::Client)
                    .map_err(|_| E::custom("process number too large"))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ProcessRef::Actor(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ProcessRef::Actor(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

/// The `version` of a value that names only its write (`{"write": id}`): its version
/// is the place of its write in the database's commit order, which only the commit
/// observer's `commit` events tell (docs/history.md, *Values without versions*). A
/// version stated in the file is never negative.
pub const UNVERSIONED: i64 = -1;

/// A versioned value borrowed from the line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VersionedRef<'a> {
    /// The database version, or [`UNVERSIONED`] for a value that names only its write.
    pub version: i64,
    /// The id of the write that produced it.
    pub write: Cow<'a, str>,
}

/// The value of an event, checked against the shape its `f` and `type` require.
#[derive(Debug, Clone)]
pub enum ValueRef<'a> {
    /// No value, or `null` (for a read: a miss).
    Absent,
    /// `{"write": id}`: the value of a write's invoke.
    WriteRequest(Cow<'a, str>),
    /// `{"version": v, "write": id}`, or `{"write": id}` (version [`UNVERSIONED`]).
    Versioned(VersionedRef<'a>),
    /// The value of an ok `db-final-read`: the final state and, when present, the log
    /// of every version the database still holds, oldest first.
    Final {
        /// The final state.
        value: VersionedRef<'a>,
        /// The version log, when the client sent one.
        log: Option<Vec<(i64, String)>>,
    },
    /// Any other value, unchecked (nemesis descriptions, values of failed operations).
    Raw(&'a RawValue),
}

impl ValueRef<'_> {
    /// The versioned value carried, if any (also the final state of a `db-final-read`).
    pub fn versioned(&self) -> Option<&VersionedRef<'_>> {
        match self {
            ValueRef::Versioned(v) => Some(v),
            ValueRef::Final { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// One validated event, borrowed from the chunk being read.
#[derive(Debug, Clone)]
pub struct EventRef<'a> {
    /// Line number in the file, from 1.
    pub line: u64,
    /// The event's `index`.
    pub index: u64,
    /// Nanoseconds since the run started.
    pub time: u64,
    /// Who logged it.
    pub process: ProcessRef<'a>,
    /// invoke, ok, fail or info.
    pub kind: EventType,
    /// The operation as written.
    pub f: Cow<'a, str>,
    /// The operation, classified.
    pub op: OpKind,
    /// The item (required for data operations).
    pub key: Option<Cow<'a, str>>,
    /// The server that served it.
    pub node: Option<Cow<'a, str>>,
    /// The value, checked against its shape.
    pub value: ValueRef<'a>,
    /// The client's error message for a fail or info.
    pub error: Option<Cow<'a, str>>,
    /// The extra field `region`, when present.
    pub region: Option<Cow<'a, str>>,
    /// The extra field `role` (e.g. `"replica"`), when present.
    pub role: Option<Cow<'a, str>>,
    /// For the completion of a client operation: the index of its invoke.
    pub invoke_index: Option<u64>,
}

/// Receives every event of a history in order, after validation.
pub trait Visitor {
    /// Takes one event. An `Err` stops reading; the reader adds the file and line.
    fn visit(&mut self, event: &EventRef<'_>) -> Result<(), String>;
}

impl<F: FnMut(&EventRef<'_>) -> Result<(), String>> Visitor for F {
    fn visit(&mut self, event: &EventRef<'_>) -> Result<(), String> {
        self(event)
    }
}

/// Something odd that did not stop reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The line it is about.
    pub line: u64,
    /// What happened, in a sentence.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// What a finished read saw.
#[derive(Debug, Clone, Default)]
pub struct ReadSummary {
    /// Events handed to the visitor.
    pub events: u64,
    /// Bytes of history read (uncompressed).
    pub bytes: u64,
    /// Invokes that had no completion by the end of the file (treated as `info`).
    pub unfinished: u64,
    /// Things that did not stop reading, such as a cut-short last line.
    pub warnings: Vec<Warning>,
    /// The sha256 of the bytes read, hex: of the file as it is on disk (for gzip, the
    /// compressed bytes), so `sha256sum FILE` agrees. Computed while reading, so that a
    /// pipe, which cannot be read twice, gets one too. [`read_from`] leaves it empty.
    pub sha256: String,
}

/// Why a history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be opened or read. The cause is the error's source (not
    /// repeated in its message, so that a cause chain reads once).
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A line breaks the format.
    #[error("{}:{line}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: u64,
        /// What is wrong and what to do.
        reason: String,
    },
}

impl ReadError {
    /// The line the error is about, if any.
    pub fn line(&self) -> Option<u64> {
        match self {
            ReadError::Invalid { line, .. } => Some(*line),
            ReadError::Io { .. } => None,
        }
    }
}

/// Reads the history at `path` (plain or gzip, told by its first bytes), handing every
/// event to `visitor` in order. A run directory's history must be a regular file and is
/// not read through a link ([`crate::run::open_history`]). Any other `path` may be a
/// pipe, or [`STDIN`] (`-`) for standard input: the input is read once, front to back,
/// and never seeked.
pub fn read_history(
    path: &Path,
    visitor: &mut dyn Visitor,
    progress: &dyn Progress,
) -> Result<ReadSummary, ReadError> {
    if path == Path::new(STDIN) {
        return read_source(io::stdin(), None, Path::new(STDIN_NAME), visitor, progress);
    }
    let io_err = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = crate::run::open_history(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    // A pipe or a device has no size to show progress against.
    let total = meta.is_file().then_some(meta.len());
    read_source(file, total, path, visitor, progress)
}

/// Reads a history from `inner`, telling gzip by its first two bytes without seeking
/// back (they are handed on ahead of the rest).
fn read_source<R: Read + Send>(
    inner: R,
    total: Option<u64>,
    path: &Path,
    visitor: &mut dyn Visitor,
    progress: &dyn Progress,
) -> Result<ReadSummary, ReadError> {
    let mut source = Source {
        inner,
        progress,
        hasher: Sha256::new(),
        bytes: 0,
    };
    progress.start(total);
    let mut magic = [0u8; 2];
    let result = read_full(&mut source, &mut magic)
        .map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })
        .and_then(|n| {
            let head = &magic[..n];
            if head == [0x1f, 0x8b] {
                let mut gzip = Gunzip {
                    inner: flate2::read::MultiGzDecoder::new(head.chain(&mut source)),
                    out: 0,
                    cut: false,
                };
                let mut summary = read_from(&mut gzip, path, visitor)?;
                if gzip.cut {
                    summary.warnings.push(Warning {
                        line: summary.events + 1,
                        message: "the gzip stream ends early (its writer did not finish it, \
                                  as after a crash); the events before were read and nothing \
                                  after them was"
                            .to_string(),
                    });
                }
                Ok(summary)
            } else {
                read_from(head.chain(&mut source), path, visitor)
            }
        });
    progress.finish();
    let mut summary = result?;
    summary.sha256 = hex(&source.hasher.finalize());
    Ok(summary)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The input's bytes as they come: counted for the progress and the gzip ratio, and
/// hashed.
struct Source<'p, R> {
    inner: R,
    progress: &'p dyn Progress,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Source<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// The decompressed stream of a gzip file.
///
/// A stream that ends early, as an unfinished writer leaves it (flushed blocks but no
/// trailer), ends the input instead of failing, so that the prefix is read; `cut` says
/// that it happened. Corrupt data stays an error, and so does a stream that expands
/// more than [`MAX_GZIP_RATIO`] times.
struct Gunzip<'a, 'p, R> {
    inner: flate2::read::MultiGzDecoder<io::Chain<&'a [u8], &'a mut Source<'p, R>>>,
    /// Decompressed bytes handed on so far.
    out: u64,
    cut: bool,
}

impl<R: Read> Read for Gunzip<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cut {
            return Ok(0);
        }
        let n = match self.inner.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.cut = true;
                return Ok(0);
            }
            other => other?,
        };
        self.out += n as u64;
        // What the decoder has taken in; some of it may still wait in its buffer, which
        // only makes the ratio look smaller.
        let compressed = self.inner.get_ref().get_ref().1.bytes.max(1);
        if self.out > GZIP_RATIO_AFTER && self.out > MAX_GZIP_RATIO * compressed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the gzip stream expanded to {} MiB from {} KiB, over {MAX_GZIP_RATIO} \
                     times its size (real histories expand 5 to 13 times), as a gzip bomb \
                     does, so reading stopped; if this is a real history, decompress it \
                     (gunzip -k) and check the plain file",
                    self.out >> 20,
                    compressed.div_ceil(1024),
                ),
            ));
        }
        Ok(n)
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads a history from any byte stream; `path` only names it in errors.
pub fn read_from(
    input: impl Read + Send,
    path: &Path,
    visitor: &mut dyn Visitor,
) -> Result<ReadSummary, ReadError> {
    read_from_chunked(input, path, visitor, CHUNK)
}

/// The lines of one chunk, parsed. Events borrow from the chunk's bytes.
struct Parsed<'a> {
    /// Each line's event, or why it is not one.
    events: Vec<Result<EventRef<'a>, String>>,
    /// Where each line is in the chunk.
    ranges: Vec<(usize, usize)>,
    /// The last line has no newline (only at the end of the input).
    cut_tail: bool,
}

self_cell::self_cell!(
    /// A chunk of whole lines and its parsed events, owned together so that a batch can
    /// travel from the parsing thread to the one that checks and visits.
    struct Batch {
        owner: Vec<u8>,
        #[covariant]
        dependent: Parsed,
    }
);

/// Splits a chunk into lines and parses them in parallel.
fn parse_chunk(chunk: &[u8]) -> Parsed<'_> {
    let mut ranges = Vec::with_capacity(chunk.len() / 96);
    let mut start = 0;
    for nl in memchr::memchr_iter(b'\n', chunk) {
        ranges.push((start, nl));
        start = nl + 1;
    }
    let cut_tail = start < chunk.len();
    if cut_tail {
        ranges.push((start, chunk.len()));
    }
    // Checking UTF-8 once per chunk lets serde skip it for every string.
    let text = std::str::from_utf8(chunk).ok();
    let events = ranges
        .par_iter()
        .with_min_len(256)
        .map(|&(s, e)| {
            if e - s > MAX_LINE {
                return Err(too_long());
            }
            let line = match text {
                Some(t) => Line::Text(trim_cr_str(&t[s..e])),
                None => Line::Bytes(trim_cr(&chunk[s..e])),
            };
            parse_line(line)
        })
        .collect();
    Parsed {
        events,
        ranges,
        cut_tail,
    }
}

/// [`read_from`] with a chosen chunk size, so that tests can put chunk boundaries
/// anywhere (a chunk grows as needed to hold a line longer than it).
///
/// A producer thread reads chunks of whole lines and parses each in parallel while the
/// calling thread checks the sequence and visits the events of the chunk before, so
/// parsing, checking and the visitor's work overlap. A UTF-8 byte order mark at the very
/// start is skipped with a [`Warning`].
#[doc(hidden)]
pub fn read_from_chunked(
    mut input: impl Read + Send,
    path: &Path,
    visitor: &mut dyn Visitor,
    chunk_bytes: usize,
) -> Result<ReadSummary, ReadError> {
    let chunk_bytes = chunk_bytes.max(1);
    let mut head = [0u8; BOM.len()];
    let n = read_full(&mut input, &mut head).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bom = head[..n] == BOM;
    let input = (if bom { &[][..] } else { &head[..n] }).chain(input);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Sent>(2);
    std::thread::scope(|scope| {
        scope.spawn(move || produce(input, chunk_bytes, tx));
        let mut summary = ReadSummary::default();
        if bom {
            summary.bytes = BOM.len() as u64;
            summary.warnings.push(Warning {
                line: 1,
                message: "the file starts with a UTF-8 byte order mark (bytes EF BB BF, \
                          which some editors add); it was skipped, as a history needs none"
                    .to_string(),
            });
        }
        consume(rx, path, visitor, summary)
        // Returning drops the receiver, which stops the producer at its next send.
    })
}

/// The UTF-8 byte order mark.
const BOM: [u8; 3] = [0xef, 0xbb, 0xbf];

/// What the producer hands the consumer.
enum Sent {
    /// The next chunk of whole lines, parsed.
    Batch(Batch),
    /// Reading failed.
    Failed(io::Error),
    /// The line after the last batch is longer than [`MAX_LINE`].
    LineTooLong,
}

/// Why a line longer than [`MAX_LINE`] is refused, and what to do.
fn too_long() -> String {
    format!(
        "the line is longer than {} MiB, the most the reader takes (the longest real \
         event, a db-final-read with its version log, is far shorter): every event is one \
         JSON object on its own line, ending in a newline, so check that this file is a \
         history (a file without line ends, or a gzip stream that expands to one endless \
         line, gives this)",
        MAX_LINE >> 20
    )
}

/// Reads chunks that end at a line end, parses them, and sends them in order.
///
/// A line longer than a chunk is gathered in one buffer that grows (amortized doubling)
/// and only its new bytes are searched for a line end, so it costs time linear in its
/// length; it stops at [`MAX_LINE`].
fn produce(mut input: impl Read, chunk_bytes: usize, tx: SyncSender<Sent>) {
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let mut buf = Vec::with_capacity(carry.len() + chunk_bytes);
        buf.append(&mut carry);
        // The carry is the start of a line: it holds no line end.
        let mut searched = buf.len();
        let (end, eof) = loop {
            // `read_to_end` writes into the spare capacity without zero-filling it.
            let got = match (&mut input).take(chunk_bytes as u64).read_to_end(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.send(Sent::Failed(e));
                    return;
                }
            };
            if got < chunk_bytes {
                break (buf.len(), true);
            }
            if let Some(p) = memchr::memrchr(b'\n', &buf[searched..]) {
                break (searched + p + 1, false);
            }
            // One line, longer than a chunk so far: read more of it, unless too long.
            if buf.len() > MAX_LINE {
                let _ = tx.send(Sent::LineTooLong);
                return;
            }
            searched = buf.len();
        };
        carry.extend_from_slice(&buf[end..]);
        buf.truncate(end);
        let batch = Batch::new(buf, |chunk| parse_chunk(chunk));
        if tx.send(Sent::Batch(batch)).is_err() || eof {
            return; // the consumer stopped (an error), or all is sent
        }
    }
}

/// Checks and visits the batches in order, adding to `summary`.
fn consume(
    rx: Receiver<Sent>,
    path: &Path,
    visitor: &mut dyn Visitor,
    mut summary: ReadSummary,
) -> Result<ReadSummary, ReadError> {
    let mut checker = Sequence::default();
    let mut first_line = 1u64;
    for sent in rx {
        let mut batch = match sent {
            Sent::Batch(batch) => batch,
            Sent::Failed(source) => {
                return Err(ReadError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
            Sent::LineTooLong => {
                return Err(ReadError::Invalid {
                    path: path.to_path_buf(),
                    line: first_line,
                    reason: too_long(),
                })
            }
        };
        let bytes = batch.borrow_owner().len() as u64;
        let count = batch.with_dependent_mut(|chunk, parsed| -> Result<u64, ReadError> {
            let count = parsed.events.len();
            // In place: an event is a few hundred bytes, not worth moving again.
            for (i, result) in parsed.events.iter_mut().enumerate() {
                let line = first_line + i as u64;
                let invalid = |reason: String| ReadError::Invalid {
                    path: path.to_path_buf(),
                    line,
                    reason,
                };
                match result {
                    Ok(event) => {
                        event.line = line;
                        checker.check(event).map_err(invalid)?;
                        visitor.visit(event).map_err(invalid)?;
                        summary.events += 1;
                    }
                    Err(_)
                        if parsed.cut_tail
                            && i + 1 == count
                            && is_cut_short(chunk, parsed.ranges[i]) =>
                    {
                        summary.warnings.push(Warning {
                            line,
                            message: "the last line is cut short (no newline and not a whole \
                                      event), as a writer that crashed leaves it; it was skipped"
                                .to_string(),
                        });
                    }
                    Err(reason) => return Err(invalid(std::mem::take(reason))),
                }
            }
            Ok(count as u64)
        })?;
        first_line += count;
        summary.bytes += bytes;
    }
    summary.unfinished = checker.outstanding.values().filter(|s| s.active).count() as u64;
    Ok(summary)
}

/// True when the line is what a crashed writer leaves: a proper prefix of a JSON
/// value (the JSON ends early). A line that is whole JSON, or that breaks JSON before its
/// end, cannot be a cut-short event and stays an error.
fn is_cut_short(chunk: &[u8], (start, end): (usize, usize)) -> bool {
    if end - start > MAX_LINE {
        return false;
    }
    match serde_json::from_slice::<de::IgnoredAny>(trim_cr(&chunk[start..end])) {
        Ok(_) => false,
        Err(e) => e.is_eof(),
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_cr_str(line: &str) -> &str {
    line.strip_suffix('\r').unwrap_or(line)
}

/// A line, as text when its chunk is valid UTF-8 (serde then skips checking each string).
#[derive(Clone, Copy)]
enum Line<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// A string that borrows from the line unless it holds escapes. (serde borrows a bare
/// `Cow<str>` field, but never one inside an `Option`, which would cost an allocation
/// per field per line.)
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

fn cow(t: Option<Text<'_>>) -> Option<Cow<'_, str>> {
    t.map(|t| t.0)
}

/// The line as serde sees it; every field optional so that a missing one gets a clear
/// message of ours. `V` is the value: a [`ValueField`] on the fast path, the raw JSON on
/// the slow one.
#[derive(Deserialize)]
#[serde(bound(deserialize = "V: Deserialize<'de>"))]
struct RawLine<'a, V> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    time: Option<u64>,
    #[serde(default, borrow)]
    process: Option<ProcessRef<'a>>,
    #[serde(default, borrow, rename = "type")]
    kind: Option<Text<'a>>,
    #[serde(default, borrow)]
    f: Option<Text<'a>>,
    #[serde(default, borrow)]
    key: Option<Text<'a>>,
    #[serde(default, borrow)]
    node: Option<Text<'a>>,
    #[serde(default = "none", deserialize_with = "present")]
    value: Option<V>,
    #[serde(default, borrow)]
    error: Option<Text<'a>>,
    #[serde(default, borrow)]
    region: Option<Text<'a>>,
    #[serde(default, borrow)]
    role: Option<Text<'a>>,
}

fn none<V>() -> Option<V> {
    None
}

/// Keeps an explicit `null` as a value (`None` is for a missing field), so that errors
/// can tell `null` from nothing.
fn present<'de, D: Deserializer<'de>, V: Deserialize<'de>>(d: D) -> Result<Option<V>, D::Error> {
    V::deserialize(d).map(Some)
}

/// The fields every event has, checked.
struct Head<'a> {
    index: u64,
    time: u64,
    process: ProcessRef<'a>,
    kind: EventType,
    f: Cow<'a, str>,
    op: OpKind,
}

impl<'a, V> RawLine<'a, V> {
    /// Takes out and checks the fields every event has, with what to fix when wrong.
    fn head(&mut self) -> Result<Head<'a>, String> {
        let missing = |field: &str, what: &str| format!("missing field `{field}` ({what})");
        let index = self
            .index
            .ok_or_else(|| missing("index", "the event's position in the file, from 0"))?;
        let time = self
            .time
            .ok_or_else(|| missing("time", "nanoseconds since the run started"))?;
        let process = self.process.take().ok_or_else(|| {
            missing(
                "process",
                "an integer for a client, a string such as \"nemesis\" for an actor",
            )
        })?;
        let kind_str =
            cow(self.kind.take()).ok_or_else(|| missing("type", "invoke, ok, fail or info"))?;
        let kind = EventType::parse(&kind_str).ok_or_else(|| {
            format!(
                "unknown type {}: the type must be invoke, ok, fail or info",
                quote(&kind_str)
            )
        })?;
        let f = cow(self.f.take())
            .ok_or_else(|| missing("f", "the operation, such as \"read\" or \"write\""))?;
        let op = OpKind::parse(&f);
        if let ProcessRef::Actor(name) = &process {
            if kind != EventType::Info {
                return Err(format!(
                    "process {} is a string, so its events must have type \"info\" (found {:?}); \
                     operations that are invoked and completed need an integer process",
                    quote(name),
                    kind.as_str()
                ));
            }
        }
        if op.is_data() && self.key.is_none() {
            return Err(format!(
                "missing field `key`: a {} event must name the item it touches",
                quote(&f)
            ));
        }
        Ok(Head {
            index,
            time,
            process,
            kind,
            f,
            op,
        })
    }

    /// The event, with its checked head and value.
    fn event(self, head: Head<'a>, value: ValueRef<'a>) -> EventRef<'a> {
        EventRef {
            line: 0,
            index: head.index,
            time: head.time,
            process: head.process,
            kind: head.kind,
            f: head.f,
            op: head.op,
            key: cow(self.key),
            node: cow(self.node),
            value,
            error: cow(self.error),
            region: cow(self.region),
            role: cow(self.role),
            invoke_index: None,
        }
    }
}

#[derive(Deserialize)]
struct RawVersioned<'a> {
    #[serde(default)]
    version: Option<i64>,
    #[serde(default, borrow)]
    write: Option<Text<'a>>,
    #[serde(default)]
    log: Option<Vec<(i64, String)>>,
}

/// Parses one line into an event, checking fields and value shape; `line` and
/// `invoke_index` are filled in later.
/// Parses one line of a history (without its newline) into an event, checking its
/// shape as [`read_from`] does but not its place in the file: the `index` is not
/// checked against the line's position, and a completion's `invoke_index` is left
/// unset. For a reader that takes lines as they come (the online checker).
pub fn parse_event(line: &str) -> Result<EventRef<'_>, String> {
    parse_line(Line::Text(trim_cr_str(line)))
}

fn parse_line(line: Line<'_>) -> Result<EventRef<'_>, String> {
    match parse_fast(line) {
        Some(event) => Ok(event),
        None => parse_slow(line),
    }
}

/// The value as the fast path sees it: `null`, or an object's known fields.
enum ValueField<'a> {
    Null,
    Object {
        version: Option<i64>,
        write: Option<Text<'a>>,
        log: Option<Vec<(i64, String)>>,
    },
}

impl<'de: 'a, 'a> Deserialize<'de> for ValueField<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = ValueField<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("null or an object")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(ValueField::Null)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut version, mut write, mut log) = (None, None, None);
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    match &*key.0 {
                        "version" if version.is_none() => version = Some(map.next_value()?),
                        "write" if write.is_none() => write = Some(map.next_value()?),
                        "log" if log.is_none() => log = Some(map.next_value()?),
                        "version" | "write" | "log" => {
                            return Err(de::Error::custom("a field given twice"))
                        }
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(ValueField::Object {
                    version,
                    write,
                    log,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// One pass over a well-formed line of the usual shapes. `None` sends the line to
/// [`parse_slow`], which accepts the same lines and explains what is wrong with the
/// others; so this path only has to be right about what it accepts.
fn parse_fast(line: Line<'_>) -> Option<EventRef<'_>> {
    let mut raw: RawLine<'_, ValueField<'_>> = match line {
        Line::Text(t) if t.starts_with('{') => serde_json::from_str(t).ok()?,
        _ => return None,
    };
    let head = raw.head().ok()?;
    let need = shape(
        head.op,
        head.kind,
        matches!(head.process, ProcessRef::Client(_)),
    );
    let value = match (need, raw.value.take()) {
        (Shape::Anything | Shape::WriteRequestOrAnything | Shape::VersionedOrNull, None)
        | (
            Shape::Anything | Shape::WriteRequestOrAnything | Shape::VersionedOrNull,
            Some(ValueField::Null),
        ) => ValueRef::Absent,
        (
            Shape::WriteRequest | Shape::WriteRequestOrAnything,
            Some(ValueField::Object { write: Some(w), .. }),
        ) => ValueRef::WriteRequest(w.0),
        (
            Shape::Versioned | Shape::VersionedOrNull,
            Some(ValueField::Object {
                version,
                write: Some(write),
                ..
            }),
        ) if version.is_none_or(|v| v >= 0) => ValueRef::Versioned(VersionedRef {
            version: version.unwrap_or(UNVERSIONED),
            write: write.0,
        }),
        (
            Shape::Final,
            Some(ValueField::Object {
                version,
                write: Some(write),
                log,
            }),
        ) if version.is_none_or(|v| v >= 0) && first_negative(log.as_deref()).is_none() => {
            ValueRef::Final {
                value: VersionedRef {
                    version: version.unwrap_or(UNVERSIONED),
                    write: write.0,
                },
                log,
            }
        }
        // anything else (a negative version too), and values kept raw, take the slow path
        _ => return None,
    };
    Some(raw.event(head, value))
}

/// The shape a value must have, by operation and type.
fn shape(op: OpKind, kind: EventType, client: bool) -> Shape {
    use EventType::{Fail, Info, Invoke, Ok as Done};
    use OpKind::*;
    match (op, kind) {
        (Write, Invoke) => Shape::WriteRequest,
        (Write, Done) | (Fill, Invoke) | (Fill, Done) => Shape::Versioned,
        (Read, Done) | (FinalRead, Done) | (DbRead, Done) => Shape::VersionedOrNull,
        (DbFinalRead, Done) => Shape::Final,
        (Write, Info) | (Write, Fail) if client => Shape::WriteRequestOrAnything,
        _ => Shape::Anything,
    }
}

/// Parses one line with every check and a precise message for what is wrong.
fn parse_slow(line: Line<'_>) -> Result<EventRef<'_>, String> {
    let bytes = match line {
        Line::Text(t) => t.as_bytes(),
        Line::Bytes(b) => b,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("empty line: every line must hold one JSON event".to_string());
    }
    // serde would also take a JSON array as a struct, field by field in order.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(diagnose(bytes, None));
    }
    let parsed = match line {
        Line::Text(t) => serde_json::from_str::<RawLine<'_, &RawValue>>(t),
        Line::Bytes(b) => serde_json::from_slice::<RawLine<'_, &RawValue>>(b),
    };
    let mut raw = parsed.map_err(|e| diagnose(bytes, Some(&e)))?;
    let head = raw.head()?;
    let value = typed_value(head.op, head.kind, &head.process, raw.value.take())?;
    Ok(raw.event(head, value))
}

const VERSIONED: &str = "{\"version\": <integer>, \"write\": \"<write id>\"}";

/// Checks a value against the shape the spec gives for its operation and type.
fn typed_value<'a>(
    op: OpKind,
    kind: EventType,
    process: &ProcessRef<'_>,
    raw: Option<&'a RawValue>,
) -> Result<ValueRef<'a>, String> {
    let need = shape(op, kind, matches!(process, ProcessRef::Client(_)));
    let text = raw.map(RawValue::get);
    let is_null = text.is_none_or(|t| t == "null");
    // serde would also take a JSON array as a struct, field by field in order.
    let is_object = text.is_some_and(|t| t.starts_with('{'));
    let what = || format!("the value of `{}` {}", op.as_str(), kind.as_str());
    let found = || excerpt(text.unwrap_or("nothing"));
    match need {
        Shape::Anything => Ok(raw
            .filter(|_| !is_null)
            .map_or(ValueRef::Absent, ValueRef::Raw)),
        Shape::WriteRequest | Shape::WriteRequestOrAnything => {
            let parsed = is_object
                .then(|| serde_json::from_str::<RawVersioned<'a>>(text.unwrap_or("null")).ok())
                .flatten();
            match parsed.and_then(|p| cow(p.write)) {
                Some(id) => Ok(ValueRef::WriteRequest(id)),
                None if need == Shape::WriteRequestOrAnything => Ok(raw
                    .filter(|_| !is_null)
                    .map_or(ValueRef::Absent, ValueRef::Raw)),
                None => Err(format!(
                    "{} must be {{\"write\": \"<write id>\"}}, found {}",
                    what(),
                    found()
                )),
            }
        }
        Shape::Versioned | Shape::VersionedOrNull | Shape::Final => {
            if is_null {
                return if need == Shape::VersionedOrNull {
                    Ok(ValueRef::Absent)
                } else {
                    Err(format!("{} must be {VERSIONED}, found {}", what(), found()))
                };
            }
            if !is_object {
                return Err(format!("{} must be {VERSIONED}, found {}", what(), found()));
            }
            let parsed: RawVersioned<'a> =
                serde_json::from_str(text.unwrap_or("null")).map_err(|e| {
                    format!(
                        "{} must be {VERSIONED}{}: {}",
                        what(),
                        if need == Shape::Final {
                            " with an optional \"log\": [[<version>, \"<write id>\"], ...]"
                        } else {
                            ""
                        },
                        strip_position(&e)
                    )
                })?;
            let Some(write) = cow(parsed.write) else {
                return Err(format!("{} must be {VERSIONED}, found {}", what(), found()));
            };
            let version = parsed.version.unwrap_or(UNVERSIONED);
            if parsed.version.is_some_and(|v| v < 0) {
                return Err(format!(
                    "{} has `version` {version}, but versions start at 0 (the key's initial \
                     state) and each committed write adds 1: fix the client that logged it",
                    what()
                ));
            }
            if let Some((entry, v)) = first_negative(parsed.log.as_deref()) {
                return Err(format!(
                    "{} has version {v} in its `log` (entry {entry}, from 0), but versions \
                     start at 0 (the key's initial state) and each committed write adds 1: \
                     fix the client that logged it",
                    what()
                ));
            }
            let value = VersionedRef { version, write };
            if need == Shape::Final {
                Ok(ValueRef::Final {
                    value,
                    log: parsed.log,
                })
            } else {
                Ok(ValueRef::Versioned(value))
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Anything,
    WriteRequest,
    WriteRequestOrAnything,
    Versioned,
    VersionedOrNull,
    Final,
}

/// The first negative version of a `db-final-read` log, with its place in the log.
fn first_negative(log: Option<&[(i64, String)]>) -> Option<(usize, i64)> {
    log?.iter()
        .enumerate()
        .find(|(_, (v, _))| *v < 0)
        .map(|(i, (v, _))| (i, *v))
}

/// serde's message without its position (ours gives the line), cut and escaped: serde
/// quotes the value it refused, which may be long.
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    excerpt(match s.find(" at line ") {
        Some(p) => &s[..p],
        None => &s,
    })
}

/// A field, a test of its value, and what the value must be.
type Rule = (&'static str, fn(&serde_json::Value) -> bool, &'static str);

/// Explains a line serde rejected: which field is wrong and how, or where the JSON breaks.
fn diagnose(bytes: &[u8], err: Option<&serde_json::Error>) -> String {
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            let at = e.column().saturating_sub(1);
            if bytes.get(at..).is_some_and(|rest| rest.starts_with(&BOM)) {
                return format!(
                    "a UTF-8 byte order mark (bytes EF BB BF) at column {}: only the very \
                     start of a file may carry one (it is skipped there); remove it (joining \
                     files that each start with one leaves them inside)",
                    e.column()
                );
            }
            return format!(
                "not valid JSON ({} at column {}): every line must be one JSON object",
                strip_position(&e),
                e.column()
            );
        }
    };
    let Some(obj) = value.as_object() else {
        return format!(
            "expected a JSON object, found {}: every line must be one JSON object",
            kind_of(&value)
        );
    };
    let rules: [Rule; 10] = [
        ("index", |v| v.as_u64().is_some(), "a non-negative integer"),
        (
            "time",
            |v| v.as_u64().is_some(),
            "a non-negative integer (nanoseconds)",
        ),
        (
            "process",
            |v| v.is_string() || v.as_i64().is_some(),
            "an integer or a string",
        ),
        (
            "type",
            |v| v.is_string(),
            "a string: invoke, ok, fail or info",
        ),
        ("f", |v| v.is_string(), "a string"),
        ("key", |v| v.is_string() || v.is_null(), "a string"),
        ("node", |v| v.is_string() || v.is_null(), "a string"),
        ("error", |v| v.is_string() || v.is_null(), "a string"),
        ("region", |v| v.is_string() || v.is_null(), "a string"),
        ("role", |v| v.is_string() || v.is_null(), "a string"),
    ];
    for (field, ok, what) in rules {
        if let Some(v) = obj.get(field) {
            if !ok(v) {
                return format!(
                    "field `{field}` must be {what}, found {} {}",
                    kind_of(v),
                    excerpt(&v.to_string())
                );
            }
        }
    }
    match err {
        // In practice a field given twice, which serde refuses.
        Some(err) => format!(
            "{} at column {}: every line must be one JSON object with each field given once",
            strip_position(err),
            err.column()
        ),
        None => "every line must be one JSON object".to_string(),
    }
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(n) if n.is_f64() => "a fraction",
        serde_json::Value::Number(n) if n.as_i64().is_some_and(|n| n < 0) => "a negative number",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The checks that need the events before: index sequence, clock, and pairing.
#[derive(Default)]
struct Sequence {
    next_index: u64,
    last_time: u64,
    last_time_line: u64,
    outstanding: FxHashMap<i64, Slot>,
}

#[derive(Default)]
struct Slot {
    active: bool,
    f: String,
    key: String,
    line: u64,
    index: u64,
}

impl Sequence {
    fn check(&mut self, event: &mut EventRef<'_>) -> Result<(), String> {
        if event.index != self.next_index {
            return Err(format!(
                "index {} where {} was expected: indices count up by 1 from 0 \
                 (was a line lost, duplicated or reordered?)",
                event.index, self.next_index
            ));
        }
        self.next_index += 1;
        if event.time < self.last_time {
            return Err(format!(
                "time {} is earlier than {} on line {}: times must never decrease \
                 (take them from one monotonic clock)",
                event.time, self.last_time, self.last_time_line
            ));
        }
        self.last_time = event.time;
        self.last_time_line = event.line;
        let ProcessRef::Client(process) = event.process else {
            return Ok(());
        };
        let key = event.key.as_deref().unwrap_or("");
        let slot = self.outstanding.entry(process).or_default();
        if event.kind == EventType::Invoke {
            if slot.active {
                return Err(format!(
                    "process {process} invokes {} while its invoke on line {} is still \
                     outstanding: a client has one operation at a time, so complete it \
                     (ok, fail or info) first",
                    quote(&event.f),
                    slot.line
                ));
            }
            slot.active = true;
            slot.f.clear();
            slot.f.push_str(&event.f);
            slot.key.clear();
            slot.key.push_str(key);
            slot.line = event.line;
            slot.index = event.index;
            return Ok(());
        }
        if !slot.active {
            return Err(format!(
                "{} of {} by process {process} has no invoke: every completion must \
                 follow an invoke of the same process",
                event.kind.as_str(),
                quote(&event.f)
            ));
        }
        if slot.f != event.f || slot.key != key {
            return Err(format!(
                "{} of {} on key {} by process {process} does not match its invoke on \
                 line {} ({} on key {}): a completion repeats its invoke's f and key",
                event.kind.as_str(),
                quote(&event.f),
                quote(key),
                slot.line,
                quote(&slot.f),
                quote(&slot.key)
            ));
        }
        slot.active = false;
        event.invoke_index = Some(slot.index);
        Ok(())
    }
}
