//! A staging campaign, end to end: the lab's servers stand in for staging, each host
//! runs a real `sshd` in its namespace, and `coherence run` reaches the nodes only
//! through SSH (host keys verified) to partition, pause and kill; `coherence heal`
//! does the same for a run that was killed mid-fault.
//! One test, because there is one lab per machine.

mod common;
#[path = "../nemeses/tests/suite/sshd.rs"]
#[allow(dead_code)]
mod sshd;

use common::{coherence, lab_up, our_rules, run_dir, text};

use coherence_nemeses::fault::{pending, Nodes};
use coherence_store::run::RunDir;
use std::fmt::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOSTS: &[(&str, &str, &str)] = &[
    ("r1a", "10.77.0.21", "r1"),
    ("r1b", "10.77.0.22", "r1"),
    ("r1s", "10.77.0.23", "r1"),
    ("r2a", "10.77.0.31", "r2"),
    ("r2b", "10.77.0.32", "r2"),
    ("r2s", "10.77.0.33", "r2"),
];

/// The campaign: the lab's endpoints given as staging, and the nodes over SSH.
fn campaign(sshds: &[sshd::Sshd], faults: &str) -> String {
    let mut t = String::from(
        r#"name = "staging-over-ssh"

[cluster]
kind = "staging"

[cluster.postgres]
writer = "10.77.0.11:5432"
user = "postgres"
dbname = "postgres"

[[cluster.regions]]
name = "r1"
primary = "10.77.0.21:6379"
replica = "10.77.0.22:6379"
names = ["r1a", "r1b"]
sentinels = ["10.77.0.23:26379"]

[[cluster.regions]]
name = "r2"
primary = "10.77.0.31:6379"
names = ["r2a", "r2b"]
sentinels = ["10.77.0.33:26379"]

[workload]
invalidation = "writer"
fill = "versioned"
keys = 20
read_fraction = 0.8
concurrency = 8
time_limit = "8s"
quiesce = "1s"
seed = 5

[checker]
staleness_bound = "0"

"#,
    );
    writeln!(
        t,
        "[nemesis]\nfaults = [{faults}]\ninterval = \"2s\"\nduration = \"1s\"\n"
    )
    .unwrap();
    for ((name, addr, region), sshd) in HOSTS.iter().zip(sshds) {
        let services = if name.ends_with('s') {
            r#"["sentinel"]"#
        } else {
            r#"["redis", "sentinel"]"#
        };
        writeln!(
            t,
            r#"[[cluster.nodes]]
name = "{name}"
addr = "{addr}"
region = "{region}"
services = {services}
ssh = {{ host = "{addr}", user = "root", key = "{key}", known_hosts = "{kh}", command_timeout = "20s" }}
service.redis = {{ process = "redis-server {addr}:6379" }}
service.sentinel = {{ process = "redis-sentinel {addr}:26379", start = "redis-sentinel /var/tmp/coherence-lab/{name}/sentinel.conf --daemonize yes" }}
"#,
            key = sshd.client_key.display(),
            kh = sshd.known_hosts.display(),
        )
        .unwrap();
    }
    t
}

#[test]
#[ignore = "needs root: the lab and real sshds in its namespaces; scripts/test runs it as root"]
fn a_staging_campaign_reaches_its_nodes_over_ssh_and_heals() {
    let (_down, _state, lab) = lab_up(&["--invalidator", "none"]);
    // The data a staging database would hold: 20 keys at version 0.
    lab.sql(
        "db1",
        "INSERT INTO items (key, version, write_id) SELECT 'k' || i, 0, 'init' FROM generate_series(0, 19) i; \
         INSERT INTO item_versions (key, version, write_id) SELECT 'k' || i, 0, 'init' FROM generate_series(0, 19) i",
    )
    .unwrap();
    let sshds: Vec<sshd::Sshd> = HOSTS
        .iter()
        .map(|(name, addr, _)| sshd::Sshd::start_at(Some(&format!("coh-{name}")), addr))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("runs");
    let store_s = store.to_str().unwrap();

    // A whole run: partitions, pauses and Sentinel kills, all over SSH, all healed.
    let file = dir.path().join("staging.toml");
    std::fs::write(
        &file,
        campaign(
            &sshds,
            r#""partition-region", "pause-redis", "kill-sentinel""#,
        ),
    )
    .unwrap();
    let o = coherence(&["run", file.to_str().unwrap(), "--store", store_s]);
    let t = text(&o);
    assert!(matches!(o.status.code(), Some(0 | 1)), "{t}");
    let run = run_dir(&t);
    let history = std::fs::read_to_string(Path::new(&run).join("history.jsonl")).unwrap();
    let started = history.matches(r#""process":"nemesis""#).count();
    assert!(started >= 4, "too few nemesis events:\n{history}");
    assert!(
        !history.contains("nemesis-error"),
        "a fault failed:\n{}",
        history
            .lines()
            .filter(|l| l.contains("nemesis"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        !history.contains(r#""healed":false"#),
        "a fault was not healed"
    );
    assert!(pending(&RunDir::new(&run).journal()).unwrap().is_empty());
    assert!(our_rules(&lab).is_empty(), "{:?}", our_rules(&lab));
    for (name, _, _) in HOSTS {
        assert!(
            !lab.pids(name, "sentinel").unwrap().is_empty(),
            "no Sentinel runs on {name} after the run"
        );
    }
    // The nodes were reached over SSH: the sshds logged our logins.
    assert!(
        sshds.iter().any(|s| s.log().contains("Accepted publickey")),
        "no SSH login"
    );

    // Killed mid-partition, the run leaves its rules; `coherence heal` removes them
    // over SSH, reading the nodes from the run's campaign.
    std::fs::write(&file, campaign(&sshds, r#""partition-region""#)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args([
            "run",
            file.to_str().unwrap(),
            "--store",
            store_s,
            "--time-limit",
            "30s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let journal = loop {
        let found = std::fs::read_dir(store.join("staging-over-ssh"))
            .unwrap()
            .flatten()
            .map(|e| RunDir::new(e.path()).journal())
            .find(|j| pending(j).is_ok_and(|p| !p.is_empty()));
        if let Some(j) = found {
            if !our_rules(&lab).is_empty() {
                break j;
            }
        }
        assert!(Instant::now() < deadline, "no fault was applied");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !our_rules(&lab).is_empty(),
        "the partition outlived the run"
    );
    let o = coherence(&["heal", journal.parent().unwrap().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("verified"), "{}", text(&o));
    assert!(our_rules(&lab).is_empty(), "{:?}", our_rules(&lab));
    assert!(pending(&journal).unwrap().is_empty());
}
