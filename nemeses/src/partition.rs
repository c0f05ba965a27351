//! Partitions as pure values: a *grudge* says which node drops traffic from which. The
//! named shapes are small functions of the node list, tested on their own; applying a
//! grudge (iptables on each node) is [`crate::fault`]'s business.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// For each node, the nodes whose traffic it drops.
pub type Grudge = BTreeMap<String, BTreeSet<String>>;

/// The named shapes of partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "shape")]
pub enum Shape {
    /// One node cut off from all others.
    IsolateNode {
        /// The node.
        node: String,
    },
    /// A group of nodes (a region) cut off from all others.
    IsolateGroup {
        /// The group's name (e.g. the region).
        name: String,
        /// Its members.
        members: Vec<String>,
    },
    /// Two halves that cannot reach each other.
    Halves,
    /// Each node sees a majority, but no two nodes see the same majority.
    MajoritiesRing,
    /// Two halves joined only through one node in the middle.
    Bridge,
    /// `to` drops what `from` sends; the other way works.
    OneWay {
        /// The sender whose traffic is dropped.
        from: String,
        /// The receiver that drops it.
        to: String,
    },
}

fn cut(grudge: &mut Grudge, a: &[String], b: &[String]) {
    for x in a {
        for y in b {
            if x != y {
                grudge.entry(x.clone()).or_default().insert(y.clone());
                grudge.entry(y.clone()).or_default().insert(x.clone());
            }
        }
    }
}

/// The grudge of `shape` over `nodes` (in the order given: the caller shuffles it with
/// the run's seed, so that halves and rings differ from run to run but not between two
/// runs with the same seed).
pub fn grudge(shape: &Shape, nodes: &[String]) -> Grudge {
    let mut g = Grudge::new();
    match shape {
        Shape::IsolateNode { node } => {
            let others: Vec<String> = nodes.iter().filter(|n| *n != node).cloned().collect();
            cut(&mut g, std::slice::from_ref(node), &others);
        }
        Shape::IsolateGroup { members, .. } => {
            let others: Vec<String> = nodes
                .iter()
                .filter(|n| !members.contains(n))
                .cloned()
                .collect();
            cut(&mut g, members, &others);
        }
        Shape::Halves => {
            let (a, b) = nodes.split_at(nodes.len() / 2);
            cut(&mut g, a, b);
        }
        Shape::Bridge => {
            // a | bridge | b: the bridge node is in the middle and sees both sides.
            if nodes.len() >= 3 {
                let mid = nodes.len() / 2;
                cut(&mut g, &nodes[..mid], &nodes[mid + 1..]);
            }
        }
        Shape::MajoritiesRing => {
            // As Jepsen does it: node i hears the majority that starts at itself and
            // goes round the ring, and drops everyone else. Every node hears a majority,
            // and no two hear the same one (so the grudge is not symmetric).
            let n = nodes.len();
            let majority = n / 2 + 1;
            for (i, x) in nodes.iter().enumerate() {
                for (j, y) in nodes.iter().enumerate() {
                    let ahead = (j + n - i) % n;
                    if ahead >= majority {
                        g.entry(x.clone()).or_default().insert(y.clone());
                    }
                }
            }
        }
        Shape::OneWay { from, to } => {
            g.entry(to.clone()).or_default().insert(from.clone());
        }
    }
    g
}

/// The nodes `node` can still hear from under `g` (itself included).
pub fn hears(g: &Grudge, nodes: &[String], node: &str) -> BTreeSet<String> {
    let dropped = g.get(node).cloned().unwrap_or_default();
    nodes
        .iter()
        .filter(|n| !dropped.contains(*n))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    fn symmetric(g: &Grudge) -> bool {
        g.iter()
            .all(|(a, bs)| bs.iter().all(|b| g.get(b).is_some_and(|s| s.contains(a))))
    }

    #[test]
    fn isolating_a_node_cuts_it_from_everyone_and_nothing_else() {
        let ns = nodes(5);
        let g = grudge(&Shape::IsolateNode { node: "n3".into() }, &ns);
        assert!(symmetric(&g));
        assert_eq!(hears(&g, &ns, "n3"), ["n3".to_string()].into());
        assert_eq!(hears(&g, &ns, "n1").len(), 4);
    }

    #[test]
    fn isolating_a_group_keeps_it_whole() {
        let ns = nodes(6);
        let members = vec!["n1".to_string(), "n2".to_string()];
        let g = grudge(
            &Shape::IsolateGroup {
                name: "r1".into(),
                members: members.clone(),
            },
            &ns,
        );
        assert!(symmetric(&g));
        assert_eq!(hears(&g, &ns, "n1"), members.iter().cloned().collect());
        assert_eq!(hears(&g, &ns, "n5").len(), 4);
    }

    #[test]
    fn halves_split_in_two_complete_components() {
        let ns = nodes(5);
        let g = grudge(&Shape::Halves, &ns);
        assert!(symmetric(&g));
        assert_eq!(hears(&g, &ns, "n1").len(), 2);
        assert_eq!(hears(&g, &ns, "n5").len(), 3);
    }

    #[test]
    fn a_bridge_node_hears_both_sides_which_do_not_hear_each_other() {
        let ns = nodes(5);
        let g = grudge(&Shape::Bridge, &ns);
        assert!(symmetric(&g));
        assert_eq!(hears(&g, &ns, "n3").len(), 5, "the bridge");
        assert!(!hears(&g, &ns, "n1").contains("n5"));
        assert!(hears(&g, &ns, "n1").contains("n3"));
    }

    #[test]
    fn in_a_majorities_ring_each_node_sees_a_different_majority() {
        for n in [3, 4, 5, 7] {
            let ns = nodes(n);
            let g = grudge(&Shape::MajoritiesRing, &ns);
            let views: BTreeSet<BTreeSet<String>> = ns.iter().map(|x| hears(&g, &ns, x)).collect();
            for v in &views {
                assert!(v.len() > n / 2, "{n} nodes: {v:?} is no majority");
            }
            assert_eq!(views.len(), n, "{n} nodes: every majority differs");
        }
    }

    #[test]
    fn one_way_drops_one_direction_only() {
        let ns = nodes(3);
        let g = grudge(
            &Shape::OneWay {
                from: "n1".into(),
                to: "n2".into(),
            },
            &ns,
        );
        assert!(!hears(&g, &ns, "n2").contains("n1"));
        assert!(hears(&g, &ns, "n1").contains("n2"));
        assert!(!symmetric(&g));
    }
}
