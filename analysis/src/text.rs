//! The text form of results, for terminals and CI logs.

use crate::explain::duration;
use crate::results::{Results, Status};
use std::fmt::Write;

/// Renders results as text, explaining at most `explain` anomalies.
pub fn render(r: &Results, explain: usize) -> String {
    let mut s = String::new();
    let total: u64 = r.anomaly_counts.values().sum();
    let unknown = r
        .checks
        .iter()
        .filter(|c| c.status == Status::Unknown)
        .count();
    let verdict = if !r.valid {
        format!(
            "INVALID: {total} anomal{} found",
            if total == 1 { "y" } else { "ies" }
        )
    } else if unknown > 0 {
        format!("VALID: no anomaly found ({unknown} check(s) could not decide)")
    } else {
        "VALID: no anomaly found".to_string()
    };
    let _ = writeln!(s, "{verdict}");
    let _ = writeln!(
        s,
        "history {}: {} events, {} operations, {} keys, staleness bound {}",
        r.history, r.stats.events, r.stats.operations, r.stats.keys, r.staleness_bound
    );
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    let _ = writeln!(s);
    for c in &r.checks {
        let status = match c.status {
            Status::Valid => "valid".to_string(),
            Status::Invalid => "INVALID".to_string(),
            Status::Unknown => format!(
                "unknown: {}",
                c.reason.as_deref().unwrap_or("the history cannot decide")
            ),
        };
        let _ = writeln!(s, "  {:<18} {:>8}  {status}", c.name.name(), c.count);
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
    if !r.per_node.is_empty() {
        let nodes: Vec<String> = r
            .per_node
            .iter()
            .map(|(node, c)| {
                let anomalies: u64 = c.anomalies.values().sum();
                format!(
                    "{node} {} reads ({} misses), {anomalies} anomalies",
                    c.reads, c.misses
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
                    .map(|n| format!(" on {n}"))
                    .unwrap_or_default(),
                lines.join(", ")
            );
            let _ = writeln!(s, "  {}", a.summary);
            if a.cycle.is_empty() {
                let why = if a.name == crate::AnomalyKind::PhantomRead {
                    "a phantom read is no cycle: no committed write produced the value it saw"
                } else {
                    "the rules give no cycle among these operations within the bound"
                };
                let _ = writeln!(s, "  ({why})");
            } else {
                let _ = writeln!(s, "  cycle: {}", a.cycle_text);
                for step in &a.cycle {
                    let _ = writeln!(s, "    {}: {}", step.kind.name(), step.why);
                }
            }
            if let Some(c) = &a.cause {
                let _ = writeln!(s, "  likely cause: {}", c.text);
            }
        }
    }
    s
}
