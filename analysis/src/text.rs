//! The text form of results, for terminals and CI logs. Every string of the results is
//! shown escaped ([`crate::bound::shown`]): nothing of the history reaches a terminal
//! as a control character.

use crate::bound::{self, shown};
use crate::explain::duration;
use crate::results::{Results, Status, Verdict};
use std::fmt::Write;

/// Renders results as text, explaining at most `explain` anomalies.
pub fn render(r: &Results, explain: usize) -> String {
    let mut s = String::new();
    let total: u64 = r.anomaly_counts.values().sum();
    let verdict =
        match r.verdict {
            Verdict::Invalid => format!(
                "INVALID: {total} anomal{} found",
                if total == 1 { "y" } else { "ies" }
            ),
            Verdict::Unknown => format!(
            "UNKNOWN: no anomaly found, but the history cannot vouch for validity ({} reason{})",
            r.unknown_reasons.len(),
            if r.unknown_reasons.len() == 1 { "" } else { "s" }
        ),
            Verdict::Valid => "VALID: no anomaly found".to_string(),
        };
    let _ = writeln!(s, "{verdict}");
    if r.verdict == Verdict::Unknown {
        for why in &r.unknown_reasons {
            let _ = writeln!(s, "  unknown: {}", shown(why));
        }
    }
    let _ = writeln!(
        s,
        "history {}: {} events, {} operations, {} keys, staleness bound {}",
        shown(&r.history),
        r.stats.events,
        r.stats.operations,
        r.stats.keys,
        r.staleness_bound
    );
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {}", shown(w));
    }
    let _ = writeln!(s);
    for c in &r.checks {
        let status = match c.status {
            Status::Valid => "valid".to_string(),
            Status::Invalid => "INVALID".to_string(),
            Status::Unknown => format!(
                "unknown: {}",
                shown(c.reason.as_deref().unwrap_or("the history cannot decide"))
            ),
            Status::NotRun => format!(
                "not run: {}",
                shown(c.reason.as_deref().unwrap_or("not among the chosen checks"))
            ),
        };
        let _ = writeln!(s, "  {:<20} {:>8}  {status}", c.name.name(), c.count);
    }
    let faults = fault_summary(r);
    if !faults.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "{faults}");
        for f in r.faults.faults.iter().filter(|f| !f.status.is_good()) {
            let _ = writeln!(
                s,
                "  {} {} (line {}): {}",
                shown(&f.f),
                f.status.name(),
                f.index + 1,
                shown(f.error.as_deref().unwrap_or("no reason given"))
            );
        }
        for e in &r.faults.errors {
            let _ = writeln!(
                s,
                "  {} did not happen (line {}): {}",
                shown(e.planned.as_deref().unwrap_or("nemesis")),
                e.index + 1,
                shown(&e.error)
            );
        }
    }
    let st = &r.staleness;
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "staleness of {} reads: p50 {}, p99 {}, p99.9 {}, max {}",
        st.reads,
        duration(st.p50_ns),
        duration(st.p99_ns),
        duration(st.p999_ns),
        duration(st.max_ns)
    );
    let within: Vec<String> = st
        .fresh_within
        .iter()
        .map(|w| format!("{} {:.3}%", w.within, w.fraction * 100.0))
        .collect();
    let _ = writeln!(s, "fresh within: {}", within.join(", "));
    if let Some(lag) = &r.invalidation_lag {
        let line = |l: &crate::results::Lag| {
            let within: Vec<String> = l
                .within
                .iter()
                .map(|w| format!("{} {:.3}%", w.within, w.fraction * 100.0))
                .collect();
            format!(
                "{} awaited, {} invalidated (p50 {}, p99 {}, p99.9 {}, max {}), {} missing, {} undecided; within {}",
                l.awaited,
                l.invalidated,
                duration(l.p50_ns),
                duration(l.p99_ns),
                duration(l.p999_ns),
                duration(l.max_ns),
                l.missing,
                l.undecided,
                within.join(", ")
            )
        };
        let _ = writeln!(s, "invalidation lag: {}", line(&lag.all));
        for (region, l) in &lag.per_region {
            let _ = writeln!(s, "  region {}: {}", shown(region), line(l));
        }
    }
    if let Some(live) = &r.live {
        let total: u64 = live.counts.values().sum();
        let kinds: Vec<String> = live
            .counts
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            s,
            "live: {total} detections while the history was written{}; time to detection p50 {}, p99 {}, max {}",
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" ({})", kinds.join(", "))
            },
            duration(live.mttd_ns.p50),
            duration(live.mttd_ns.p99),
            duration(live.mttd_ns.max),
        );
    }
    if !r.per_node.is_empty() {
        let nodes: Vec<String> = r
            .per_node
            .iter()
            .map(|(node, c)| {
                let anomalies: u64 = c.anomalies.values().sum();
                format!(
                    "{} {} reads ({} misses), {anomalies} anomalies",
                    shown(node),
                    c.reads,
                    c.misses
                )
            })
            .collect();
        let _ = writeln!(s, "per node: {}", nodes.join("; "));
    }
    if r.keys_with_anomalies > 0 {
        let top: Vec<String> = r
            .per_key
            .iter()
            .take(5)
            .map(|k| format!("{:?} {}", k.key, k.total))
            .collect();
        let _ = writeln!(
            s,
            "keys with anomalies: {} (most: {})",
            r.keys_with_anomalies,
            top.join(", ")
        );
    }
    for (name, causes) in &r.causes {
        let list: Vec<String> = causes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let _ = writeln!(s, "likely causes of {name}: {}", list.join(", "));
    }
    if !r.anomalies.is_empty() && explain > 0 {
        let n = explain.min(r.anomalies.len());
        let _ = writeln!(s);
        let _ = writeln!(s, "first anomalies ({n} of {total}):");
        for a in r.anomalies.iter().take(n) {
            let lines: Vec<String> = a.indices.iter().map(|i| (i + 1).to_string()).collect();
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "{} of key {:?}{} (history lines {})",
                a.name.name(),
                a.key,
                a.node
                    .as_deref()
                    .map(|n| format!(" on {}", shown(n)))
                    .unwrap_or_default(),
                lines.join(", ")
            );
            let _ = writeln!(s, "  {}", shown(&a.summary));
            if a.cycle.is_empty() {
                let why = a
                    .no_cycle
                    .unwrap_or("the rules give no cycle among these operations within the bound");
                let _ = writeln!(s, "  ({why})");
            } else {
                let _ = writeln!(s, "  cycle: {}", shown(&a.cycle_text));
                for step in &a.cycle {
                    let _ = writeln!(s, "    {}: {}", step.kind.name(), shown(&step.why));
                }
            }
            if let Some(c) = &a.cause {
                let _ = writeln!(s, "  likely cause: {}", shown(&c.text));
            }
        }
    }
    s
}

/// One line on what the nemesis did: `faults: 4 requested kinds, 6 scheduled; 5 healed,
/// 1 apply-failed`, or nothing when the history has no nemesis.
pub fn fault_summary(r: &Results) -> String {
    let n = &r.faults;
    if n.plan.is_none() && n.faults.is_empty() && n.errors.is_empty() {
        return String::new();
    }
    let mut by: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    for f in &n.faults {
        *by.entry(f.status.name()).or_default() += 1;
    }
    if !n.errors.is_empty() {
        by.insert("did not happen", n.errors.len() as u64);
    }
    let outcomes: Vec<String> = by.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let plan = n
        .plan
        .as_ref()
        .map(|p| {
            format!(
                " (requested {}; {} scheduled)",
                bound::list(&p.faults),
                p.scheduled
            )
        })
        .unwrap_or_default();
    format!(
        "faults{plan}: {}",
        if outcomes.is_empty() {
            "none happened".to_string()
        } else {
            outcomes.join(", ")
        }
    )
}
