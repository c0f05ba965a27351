//! Faults made of iptables rules (partitions, packet loss): each rule is added on its
//! node with `-A`, removed with `-D`, and carries a comment (`coherence:<tag>`) that
//! finds it again.

use super::ops::{by_node, remote_of, strs};
use super::{Nodes, Rule};
use crate::remote::{shell_words, RemoteError};

/// A rule on `node` that drops the incoming packets `matches` selects, tagged.
pub(crate) fn drop_rule(node: &str, matches: &[&str], tag: &str) -> Rule {
    let mut args = vec!["INPUT".to_string()];
    args.extend(matches.iter().map(|m| m.to_string()));
    args.extend(["-j", "DROP", "-m", "comment", "--comment"].map(String::from));
    args.push(rule_comment(tag));
    Rule {
        node: node.to_string(),
        args,
    }
}

/// The comment that marks our rules: `coherence:<tag>`.
pub fn rule_comment(tag: &str) -> String {
    format!("coherence:{tag}")
}

/// Adds the rules: one command per node, `iptables -A` for each of its rules.
pub(crate) fn add(rules: &[Rule], net: &dyn Nodes) -> Result<(), RemoteError> {
    for (node, rules) in by_node(rules) {
        let script = rules
            .iter()
            .map(|r| format!("iptables -w -A {}", shell_words(&strs(&r.args))))
            .collect::<Vec<_>>()
            .join(" && ");
        remote_of(net, node)?.run(&["sh", "-c", &script])?;
    }
    Ok(())
}

/// Removes the rules: one command per node, deleting each of its rules that is still
/// there (never added, or already removed, is fine).
pub(crate) fn remove(rules: &[Rule], net: &dyn Nodes) -> Result<(), RemoteError> {
    for (node, rules) in by_node(rules) {
        let script = rules
            .iter()
            .map(|r| {
                let rule = shell_words(&strs(&r.args));
                format!("if iptables -w -C {rule} 2>/dev/null; then iptables -w -D {rule}; fi")
            })
            .collect::<Vec<_>>()
            .join("; ");
        remote_of(net, node)?.run(&["sh", "-c", &format!("{script}; true")])?;
    }
    Ok(())
}

/// The rules still in place: one listing per node, a rule with one of these rules'
/// tags is a trace.
pub(crate) fn traces(rules: &[Rule], net: &dyn Nodes) -> Result<Vec<String>, RemoteError> {
    let mut left = Vec::new();
    for (node, rules) in by_node(rules) {
        let listing = remote_of(net, node)?.run(&["iptables", "-w", "-S"])?.stdout;
        let tags: std::collections::HashSet<&str> = rules
            .iter()
            .filter_map(|r| r.args.last().map(String::as_str))
            .collect();
        for line in listing.lines() {
            // The tag as a whole word: `coherence:run-1` is no `coherence:run-10`.
            let words: std::collections::HashSet<&str> = line
                .split_whitespace()
                .map(|w| w.trim_matches('"'))
                .collect();
            if tags.iter().any(|t| words.contains(t)) {
                left.push(format!("on {node}: iptables rule {line}"));
            }
        }
    }
    Ok(left)
}
