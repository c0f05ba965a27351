//! `Netns` through the shared remote suite, in a throwaway network namespace of its own
//! (`cohtest-PID`: not the lab's `coh-` prefix, which `coherence lab down` removes).
//! Needs root: `#[ignore]`d, and `scripts/test` runs it as root.

mod suite;

use coherence_nemeses::remote::{Netns, Remote};
use std::process::Command;
use suite::{remote_suite, require_root, KILLED};

/// A namespace, deleted when dropped.
struct Namespace(String);

impl Namespace {
    fn create() -> Namespace {
        let name = format!("cohtest-{}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip (scripts/setup installs iproute2)");
        assert!(out.status.success(), "ip netns add {name}: {out:?}");
        Namespace(name)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
#[ignore = "needs root: a network namespace of its own; scripts/test runs it as root"]
fn suite_in_a_network_namespace() {
    require_root("a network namespace");
    let ns = Namespace::create();
    let host = Netns::new("cohtest", &ns.0);
    // Commands really run in the namespace: it has nothing but a loopback.
    let links = host.run(&["ip", "-o", "link"]).unwrap();
    assert_eq!(links.stdout.lines().count(), 1, "{}", links.stdout);
    assert!(links.stdout.contains(": lo:"), "{}", links.stdout);
    let scratch = tempfile::tempdir().unwrap();
    remote_suite(&host, scratch.path(), KILLED);
}
