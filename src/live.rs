//! The online checker inside `coherence run`: a thread that takes every event the
//! recorder writes ([`Recorder::tap`]), checks it as it comes ([`Live`]), prints one
//! line per detection, counts them for the progress display, and says when a
//! detection of the kinds `--fail-fast` names happened.

use coherence_analysis::live::{Detection, Live, LiveSummary};
use coherence_analysis::AnomalyKind;
use coherence_store::recorder::Recorder;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Detection lines printed per kind; the rest are counted only.
const PRINTED_PER_KIND: u64 = 10;

/// The first detection `--fail-fast` stops at.
#[derive(Debug, Clone)]
pub struct Tripped {
    /// Its kind.
    pub kind: AnomalyKind,
    /// The history index of the event that made it certain.
    pub index: u64,
    /// What it saw.
    pub summary: String,
}

/// The online checker of a run.
pub struct LiveRun {
    thread: std::thread::JoinHandle<LiveSummary>,
    /// Detections so far, per kind.
    pub counts: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    /// Set at the first detection of a `--fail-fast` kind.
    pub tripped: Arc<Mutex<Option<Tripped>>>,
    /// Whether `tripped` is set (cheap to poll).
    pub hit: Arc<AtomicBool>,
    /// The faults in force, by the nemesis's sequence number: their family's name.
    pub faults: Arc<Mutex<BTreeMap<u64, &'static str>>>,
}

impl LiveRun {
    /// Follows `rec` from now on with staleness bound `bound` and invalidation bound
    /// `invalidation` (ns), flagging the kinds
    /// among `checks` (the checks that count; `None`: all); `fail_fast`: the kinds that
    /// stop the run (`None`: none do). `print` shows a line.
    pub fn start(
        rec: &Recorder,
        bound: u64,
        invalidation: Option<u64>,
        checks: Option<Vec<AnomalyKind>>,
        fail_fast: Option<Vec<AnomalyKind>>,
        print: impl Fn(&str) + Send + 'static,
    ) -> LiveRun {
        let lines = rec.tap();
        let start = rec.started();
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let tripped = Arc::new(Mutex::new(None));
        let hit = Arc::new(AtomicBool::new(false));
        let faults = Arc::new(Mutex::new(BTreeMap::new()));
        let (c, t, h, f) = (counts.clone(), tripped.clone(), hit.clone(), faults.clone());
        let thread = std::thread::spawn(move || {
            let mut live = Live::new(bound)
                .invalidation_bound(invalidation)
                .counting(checks.as_deref());
            let now = || start.elapsed().as_nanos() as u64;
            let mut printed: BTreeMap<&'static str, u64> = BTreeMap::new();
            let mut shown = |d: Detection| {
                let name = d.kind.name();
                let n = printed.entry(name).or_default();
                *n += 1;
                if *n <= PRINTED_PER_KIND {
                    print(&d.to_string());
                } else if *n == PRINTED_PER_KIND + 1 {
                    print(&format!(
                        "live: more {name} detections are counted, not shown"
                    ));
                }
                if let Ok(mut c) = c.lock() {
                    *c.entry(name).or_default() += 1;
                }
                let stops = fail_fast.as_ref().is_some_and(|k| k.contains(&d.kind));
                if stops && !h.load(Ordering::Relaxed) {
                    if let Ok(mut t) = t.lock() {
                        *t = Some(Tripped {
                            kind: d.kind,
                            index: d.certain_index,
                            summary: d.summary.clone(),
                        });
                    }
                    h.store(true, Ordering::Relaxed);
                }
            };
            for line in lines {
                let Ok(text) = std::str::from_utf8(&line) else {
                    continue;
                };
                let Ok(ev) = coherence_store::reader::parse_event(text) else {
                    continue;
                };
                if matches!(&ev.process, coherence_store::reader::ProcessRef::Actor(a) if a == "nemesis")
                {
                    track_fault(&f, &ev);
                }
                let found: Vec<Detection> = live.feed(&ev, ev.time, &now);
                for d in found {
                    shown(d);
                }
            }
            for d in live.finish(&now) {
                shown(d);
            }
            live.summary()
        });
        LiveRun {
            thread,
            counts,
            tripped,
            hit,
            faults,
        }
    }

    /// "partition, redis-failover", or "none".
    pub fn faults_now(faults: &Mutex<BTreeMap<u64, &'static str>>) -> String {
        let f = faults.lock().map(|f| f.clone()).unwrap_or_default();
        if f.is_empty() {
            return "none".into();
        }
        f.values().copied().collect::<Vec<_>>().join(", ")
    }

    /// "3 stale-read, 1 read-your-writes", or "none".
    pub fn so_far(counts: &Mutex<BTreeMap<&'static str, u64>>) -> String {
        let c = counts.lock().map(|c| c.clone()).unwrap_or_default();
        if c.is_empty() {
            return "no anomaly".into();
        }
        c.iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Waits until the recorder finished (its channel closed); what it found.
    pub fn finish(self) -> LiveSummary {
        self.thread.join().unwrap_or_default()
    }
}

/// Keeps `faults` up to date with a nemesis event: a fault opened (by its sequence
/// number) or closed; `heal` closes every one.
fn track_fault(
    faults: &Mutex<BTreeMap<u64, &'static str>>,
    ev: &coherence_store::reader::EventRef<'_>,
) {
    use coherence_store::faults::Family;
    let Ok(mut open) = faults.lock() else { return };
    if ev.f == "heal" {
        open.clear();
        return;
    }
    let seq = match &ev.value {
        coherence_store::reader::ValueRef::Raw(raw) => {
            serde_json::from_str::<serde_json::Value>(raw.get())
                .ok()
                .and_then(|v| v.get("seq")?.as_u64())
        }
        _ => None,
    };
    let Some(seq) = seq else { return };
    if let Some(family) = Family::of_start(&ev.f) {
        open.insert(seq, family.name());
    } else if !Family::closed_by(&ev.f).is_empty() {
        open.remove(&seq);
    }
}
