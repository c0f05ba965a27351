//! The online checker's cost and its time to detection while a history is recorded at
//! full speed: a simulated buggy history is logged through the recorder as fast as one
//! thread can (far above the lab's recording rate), once without the online checker
//! and once with it following the recorder's tap on a thread of its own, as
//! `coherence run` does. Reports events per second both ways, and the time from each
//! detection's certain event being recorded to its detection (p50, p99, max). Then the
//! memory the checker holds (heap bytes it allocated and has not freed, counted by this
//! bench's allocator) after each quarter of the history, fed straight to it: what
//! grows with the operations rather than with the keys shows as bytes per operation.
//!
//! `cargo bench --bench live` (`COHERENCE_BENCH_OPS`, 200000, tunes it;
//! `COHERENCE_BENCH_STRETCH` stretches the times of the memory part).
//! `COHERENCE_BENCH_HISTORY=path/history.jsonl` replays a recorded history instead (a
//! lab run's, with its observers' events: the slow-invalidation judge at work; the
//! recorder stamps the events anew, so its detections are not the run's).

use coherence_analysis::live::Live;
use coherence_store::recorder::Recorder;
use coherence_store::{Event, HistoryWriter};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

/// The system allocator, counting the bytes allocated and not yet freed.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn main() {
    let ops: u64 = std::env::var("COHERENCE_BENCH_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().unwrap();
    let source = match std::env::var_os("COHERENCE_BENCH_HISTORY") {
        Some(path) => std::path::PathBuf::from(path),
        None => simulated(dir.path(), ops),
    };
    let events: Vec<Event> = std::fs::read_to_string(&source)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ops = events
        .iter()
        .filter(|e| e.kind == coherence_store::EventType::Invoke)
        .count();
    let n = events.len() as f64;

    // Without the online checker.
    let rec = Recorder::new(HistoryWriter::create(&dir.path().join("plain.jsonl")).unwrap());
    let started = Instant::now();
    for e in events.iter().cloned() {
        rec.log(e);
    }
    rec.finish().unwrap();
    let plain = n / started.elapsed().as_secs_f64();

    // With it, on its own thread, fed by the tap.
    let rec = Recorder::new(HistoryWriter::create(&dir.path().join("live.jsonl")).unwrap());
    let lines = rec.tap();
    let start = rec.started();
    let checker = std::thread::spawn(move || {
        let mut live = Live::new(0).invalidation_bound(Some(200_000_000));
        let now = || start.elapsed().as_nanos() as u64;
        for line in lines {
            let text = std::str::from_utf8(&line).unwrap();
            let ev = coherence_store::reader::parse_event(text).unwrap();
            live.feed(&ev, ev.time, &now);
        }
        live.finish(&now);
        live.summary()
    });
    let started = Instant::now();
    for e in events.iter().cloned() {
        rec.log(e);
    }
    let recorded = started.elapsed();
    rec.finish().unwrap();
    let summary = checker.join().unwrap();
    let caught_up = started.elapsed();
    let with = n / recorded.as_secs_f64();
    let ms = |ns: u64| ns as f64 / 1e6;
    println!(
        "{} events ({ops} operations), recorded by one thread:",
        events.len()
    );
    println!("  without the online checker: {plain:.0} events/s");
    println!(
        "  with it: {with:.0} events/s recorded; the checker caught up {:.1} ms after the last",
        (caught_up - recorded).as_secs_f64() * 1e3
    );
    println!(
        "  {} detections ({:?}); time to detection p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        summary.counts.values().sum::<u64>(),
        summary.counts,
        ms(summary.mttd_ns.p50),
        ms(summary.mttd_ns.p99),
        ms(summary.mttd_ns.max)
    );

    // What the checker holds as the history goes on: fed on this thread, so that the
    // heap it keeps is what this thread allocated and did not free.
    // `COHERENCE_BENCH_STRETCH=F` makes its times F times later: a history of seconds
    // spans minutes, past what the checker remembers (`live::MEMORY`), at a rate F
    // times lower.
    let stretch: u64 = std::env::var("COHERENCE_BENCH_STRETCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let lines: Vec<String> = events
        .iter()
        .map(|e| {
            let mut v = serde_json::to_value(e).unwrap();
            let scale = |t: Option<&mut serde_json::Value>| {
                if let Some(t) = t {
                    if let Some(n) = t.as_u64() {
                        *t = (n * stretch).into();
                    }
                }
            };
            scale(v.get_mut("time"));
            if let Some(value) = v.get_mut("value").and_then(|x| x.as_object_mut()) {
                scale(value.get_mut("from"));
                scale(value.get_mut("to"));
            }
            v.to_string()
        })
        .collect();
    drop(events);
    let base = HELD.load(Ordering::Relaxed);
    let mut live = Live::new(0).invalidation_bound(Some(200_000_000));
    let now = || 0;
    let mut held = Vec::new();
    let mut invokes = 0usize;
    for (i, text) in lines.iter().enumerate() {
        let ev = coherence_store::reader::parse_event(text).unwrap();
        invokes += (ev.kind == coherence_store::EventType::Invoke) as usize;
        live.feed(&ev, ev.time, &now);
        if held.len() < 4 && i + 1 == lines.len() * (held.len() + 1) / 4 {
            held.push((invokes, HELD.load(Ordering::Relaxed) - base));
        }
    }
    let mib = |b: isize| b as f64 / (1 << 20) as f64;
    println!(
        "  the checker's heap after each quarter: {}",
        held.iter()
            .map(|(ops, b)| format!("{ops} ops {:.1} MiB", mib(*b)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let [.., (o1, b1), _, (o2, b2)] = held[..] {
        println!(
            "  growth from the half to the end: {:.0} bytes per operation",
            (b2 - b1) as f64 / (o2 - o1).max(1) as f64
        );
    }
    live.finish(&now);
}

/// A simulated buggy history of `ops` operations, written under `dir`.
fn simulated(dir: &std::path::Path, ops: u64) -> std::path::PathBuf {
    let source = dir.join("source.jsonl");
    let mut w = HistoryWriter::create(&source).unwrap();
    let config = coherence_sim::SimConfig {
        seed: 7,
        ops,
        keys: 200,
        mode: coherence_sim::Mode::Buggy,
        ..coherence_sim::SimConfig::default()
    };
    coherence_sim::generate(&config, &mut w).unwrap();
    w.finish().unwrap();
    source
}
