//! `coherence check --follow`: the online checker over a history another process is
//! still writing (a user's own client). It reads what was appended, line by line as
//! each is completed, prints every detection as it is made, and stops once the file
//! has not grown for the idle time; the offline check then gives the verdict.

use anyhow::{Context, Result};
use coherence_analysis::live::{Live, LiveSummary};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

/// How often the file is looked at again when it did not grow.
const POLL: Duration = Duration::from_millis(5);

/// Follows `path` until it has not grown for `idle` (waiting that long for it to
/// appear, too), at staleness bound `bound` and invalidation bound `invalidation` (ns),
/// flagging the kinds among `checks` (`None`: all); prints each detection on stderr.
/// What the online checker found.
pub fn follow(
    path: &Path,
    bound: u64,
    invalidation: Option<u64>,
    checks: Option<&[coherence_analysis::AnomalyKind]>,
    idle: Duration,
) -> Result<LiveSummary> {
    anyhow::ensure!(
        path.extension().is_none_or(|e| e != "gz"),
        "--follow reads a plain .jsonl file as it grows; {} is compressed",
        path.display()
    );
    let start = Instant::now();
    let now = || start.elapsed().as_nanos() as u64;
    let mut last_growth = Instant::now();
    let mut file = loop {
        match std::fs::File::open(path) {
            Ok(f) => break f,
            Err(e) if last_growth.elapsed() < idle => {
                let _ = e;
                std::thread::sleep(POLL);
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot open {}", path.display()));
            }
        }
    };
    let mut live = Live::new(bound)
        .invalidation_bound(invalidation)
        .counting(checks);
    let mut offset = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        file.seek(SeekFrom::Start(offset))?;
        let n = file
            .read(&mut chunk)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            if last_growth.elapsed() >= idle {
                break;
            }
            std::thread::sleep(POLL);
            continue;
        }
        last_growth = Instant::now();
        let arrived = now();
        offset += n as u64;
        pending.extend_from_slice(&chunk[..n]);
        // Whole lines only: the writer may be in the middle of one.
        let Some(end) = pending.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let complete: Vec<u8> = pending.drain(..=end).collect();
        for line in complete.split(|&b| b == b'\n') {
            let Ok(text) = std::str::from_utf8(line) else {
                continue;
            };
            if text.trim().is_empty() {
                continue;
            }
            // A line that is not an event is the offline check's to report.
            let Ok(ev) = coherence_store::reader::parse_event(text) else {
                continue;
            };
            for d in live.feed(&ev, arrived, &now) {
                eprintln!("{d}");
            }
        }
    }
    for d in live.finish(&now) {
        eprintln!("{d}");
    }
    Ok(live.summary())
}
