//! Faults against the real lab: a partition has its effect, is journaled before it is
//! applied, and `coherence heal` removes exactly what a killed run left, verified; a
//! skewed clock shows in the servers' own time and is set back without a trace.
//! One test, in order, because there is one lab per machine.

mod common;

use common::{coherence, lab_up, our_rules, run_dir, text};

use coherence_lab::cluster::LabNodes;
use coherence_nemeses::clock::Skew;
use coherence_nemeses::fault::{pending, ClockSkew, Fault, Journal, Latency, Nodes, RedisFailover};
use coherence_nemeses::partition::Shape;
use coherence_store::run::RunDir;
use std::path::Path;
use std::process::{Command, Output};

/// Whether `host` can open a TCP connection to `addr:port` within 2 s.
fn reaches(host: &str, addr: &str, port: u16) -> bool {
    let probe = format!("timeout 2 bash -c '</dev/tcp/{addr}/{port}'");
    coherence(&["lab", "exec", host, "--", "bash", "-c", &probe])
        .status
        .success()
}

#[test]
#[ignore = "needs root: the lab (network namespaces, a bridge, iptables); scripts/test runs it as root"]
fn partitions_have_their_effect_and_heal_without_a_trace() {
    let (_down, _state, nodes) = lab_up(&[]);
    assert!(
        our_rules(&nodes).is_empty(),
        "a clean lab has none of our rules"
    );
    assert!(reaches("r1a", "10.77.0.11", 5432));

    clock_skews_show_in_the_servers_time_and_heal(&nodes);

    // Isolate region r1, journaled first; then "crash" without healing.
    let run = tempfile::tempdir().unwrap();
    let journal_path = RunDir::new(run.path()).journal();
    let mut journal = Journal::open(&journal_path).unwrap();
    let shape = Shape::IsolateGroup {
        name: "r1".into(),
        members: nodes.region("r1"),
    };
    let fault = Fault::partition(
        shape,
        &nodes.names(),
        &nodes,
        &format!("test-{}", journal.next_seq()),
    )
    .unwrap();
    journal.applying(&fault).unwrap();
    fault.apply(&nodes).unwrap();
    drop(journal);
    // The crash came while the next entry was being written: a cut-short last line.
    let mut cut = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal_path)
        .unwrap();
    std::io::Write::write_all(&mut cut, b"{\"seq\":1,\"time_unix_ns\":17,\"state\":\"appl")
        .unwrap();
    drop(cut);
    // `heal` learns from the run's campaign that the faults were the lab's.
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("campaigns/lab-writer.toml"),
        run.path().join("campaign.toml"),
    )
    .unwrap();

    // A partitioned region cannot reach the database; another region still can.
    assert!(
        !reaches("r1a", "10.77.0.11", 5432),
        "r1 is cut off from db1"
    );
    assert!(
        !reaches("inv", "10.77.0.21", 6379),
        "the invalidator cannot reach r1a"
    );
    assert!(reaches("r2a", "10.77.0.11", 5432), "r2 is not");
    assert!(
        reaches("r1a", "10.77.0.22", 6379),
        "inside r1, hosts still talk"
    );
    assert!(!our_rules(&nodes).is_empty());
    assert_eq!(pending(&journal_path).unwrap().len(), 1);

    // `coherence heal` finishes the job: exactly our rules go, verified.
    let o = coherence(&["heal", run.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("healed 1 fault"), "{}", text(&o));
    assert!(our_rules(&nodes).is_empty(), "{:?}", our_rules(&nodes));
    assert!(fault.traces(&nodes).unwrap().is_empty());
    assert!(reaches("r1a", "10.77.0.11", 5432));
    assert!(pending(&journal_path).unwrap().is_empty());
    let o = coherence(&["heal", run.path().to_str().unwrap()]);
    assert!(text(&o).contains("nothing to heal"), "{}", text(&o));

    // A rule someone else added stays: healing removes exactly ours.
    let r2a = nodes.remote("r2a").unwrap();
    r2a.run(&[
        "iptables",
        "-w",
        "-A",
        "INPUT",
        "-s",
        "10.77.0.99",
        "-j",
        "DROP",
    ])
    .unwrap();
    let mut journal = Journal::open(&journal_path).unwrap();
    let fault = Fault::partition(
        Shape::Halves,
        &nodes.names(),
        &nodes,
        &format!("test-{}", journal.next_seq()),
    )
    .unwrap();
    let seq = journal.applying(&fault).unwrap();
    fault.apply(&nodes).unwrap();
    fault.heal(&nodes).unwrap();
    journal.healed(seq).unwrap();
    assert!(our_rules(&nodes).is_empty());
    let rules = r2a.run(&["iptables", "-w", "-S", "INPUT"]).unwrap().stdout;
    assert!(rules.contains("10.77.0.99"), "{rules}");

    // Packet loss: at probability 1 every packet to db2 is dropped; healed, none is.
    // (db2 runs no Redis, so Sentinel does not fail anything over meanwhile.)
    let loss = Fault::packet_loss(&["db2".to_string()], 1.0, "test-loss");
    loss.apply(&nodes).unwrap();
    assert!(!reaches("r2a", "10.77.0.12", 5432), "db2 drops everything");
    loss.heal(&nodes).unwrap();
    assert!(loss.traces(&nodes).unwrap().is_empty());
    assert!(our_rules(&nodes).is_empty());
    assert!(reaches("r2a", "10.77.0.12", 5432));

    // Latency needs netem: where the kernel has none, the message says so.
    let latency = Fault::Latency(Latency {
        nodes: vec!["r1a".to_string()],
        delay_ms: 50,
    });
    match latency.apply(&nodes) {
        Err(e) => assert!(e.to_string().contains("netem"), "{e}"),
        Ok(()) => latency.heal(&nodes).unwrap(),
    }
    assert!(latency.traces(&nodes).unwrap().is_empty());

    // A paused Redis does not answer; resumed, it does, and nothing stays stopped.
    let ping = || {
        Command::new("timeout")
            .args(["1", "redis-cli", "-h", "10.77.0.31", "ping"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
            .unwrap_or(false)
    };
    assert!(ping());
    let pause = Fault::signal("r2a", "redis", true, &nodes).unwrap();
    pause.apply(&nodes).unwrap();
    assert!(!ping(), "a paused Redis does not answer");
    pause.heal(&nodes).unwrap();
    assert!(pause.traces(&nodes).unwrap().is_empty());
    assert!(ping());

    // A Redis failover through Sentinel changes roles, and says whom it promoted.
    let members = vec!["r2a".to_string(), "r2b".to_string()];
    let failover = Fault::redis_failover("r2", "r2s", &members, &nodes).unwrap();
    let Fault::RedisFailover(RedisFailover { from, .. }) = &failover else {
        unreachable!()
    };
    let from = from.clone();
    failover.apply(&nodes).unwrap();
    let outcome = failover.outcome(&nodes).unwrap();
    let promoted = outcome["promoted"].as_str().unwrap().to_string();
    assert_ne!(promoted, from, "{outcome}");
    assert_eq!(outcome["demoted"], from.as_str());
    let addr = nodes.addr(&promoted).unwrap();
    let info = Command::new("redis-cli")
        .args(["-h", &addr, "info", "replication"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("role:master"));
    failover.heal(&nodes).unwrap();
    assert!(failover.traces(&nodes).unwrap().is_empty());

    // SIGINT during an active partition: the run heals before it exits, no rule remains.
    let store = tempfile::tempdir().unwrap();
    let store_s = store.path().to_str().unwrap();
    let manifest = env!("CARGO_MANIFEST_DIR");
    let child = Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args([
            "run",
            "campaigns/lab-notify-partitions.toml",
            "--time-limit",
            "30s",
            "--store",
            store_s,
        ])
        .current_dir(manifest)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let runs = store.path().join("lab-notify-partitions");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let journal = loop {
        let found = std::fs::read_dir(&runs)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| RunDir::new(e.path()).journal())
            .filter(|j| pending(j).is_ok_and(|p| !p.is_empty()));
        // Journaled comes before applied: wait for the rules too.
        if let Some(j) = found.filter(|_| !our_rules(&nodes).is_empty()) {
            break j;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no partition was applied"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // SAFETY: no preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o));
    assert!(our_rules(&nodes).is_empty(), "{:?}", our_rules(&nodes));
    assert!(pending(&journal).unwrap().is_empty());
    let history = std::fs::read_to_string(journal.with_file_name("history.jsonl")).unwrap();
    assert!(history.contains(r#""f":"stop-partition""#));

    // End to end, same faults and seed: notify loses invalidations, outbox converges.
    let results = |o: &Output| -> serde_json::Value {
        let t = text(o);
        let dir = t
            .lines()
            .find_map(|l| l.strip_prefix("run directory: "))
            .unwrap_or_else(|| panic!("{t}"));
        let r =
            serde_json::from_slice(&std::fs::read(Path::new(&dir).join("results.json")).unwrap())
                .unwrap();
        common::live_agrees(r, true)
    };
    let run = |campaign: &str| {
        Command::new(env!("CARGO_BIN_EXE_coherence"))
            .args(["run", campaign, "--store", store_s])
            .current_dir(manifest)
            .output()
            .unwrap()
    };
    let o = run("campaigns/lab-notify-partitions.toml");
    let r = results(&o);
    // Its 1000 keys: the tail keys written while the invalidator is down are written
    // no more, so the loss shows for good (with 50 hot keys, later writes' deletions
    // covered every loss, and only late invalidations showed).
    let nc = r["anomaly-counts"]["non-convergence"].as_u64().unwrap();
    let missing = r["anomaly-counts"]["missing-invalidation"]
        .as_u64()
        .unwrap();
    assert!(
        nc > 0 && missing > 0,
        "notify under partitions lost no invalidation for good: {}",
        text(&o)
    );
    assert!(
        r["causes"]["missing-invalidation"]["invalidator-down"].as_u64() > Some(0),
        "{}",
        r["causes"]
    );
    assert!(r["stats"]["nemesis_events"].as_u64().unwrap() >= 2);
    assert!(our_rules(&nodes).is_empty());

    // A scheduled Redis failover is recorded with whom it promoted, and the checker
    // names the promoted node among the causes.
    let o = Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args([
            "run",
            "campaigns/lab-writer.toml",
            "--time-limit",
            "8s",
            "--nemesis",
            "redis-failover",
            "--nemesis-interval",
            "3s",
            "--nemesis-duration",
            "1s",
            "--store",
            store_s,
        ])
        .current_dir(manifest)
        .output()
        .unwrap();
    let t = text(&o);
    let dir = run_dir(&t);
    let history = std::fs::read_to_string(Path::new(&dir).join("history.jsonl")).unwrap();
    assert!(
        history.contains(r#""f":"failover","value":{"demoted":"#),
        "no failover event:\n{t}"
    );
    assert!(pending(&RunDir::new(&dir).journal()).unwrap().is_empty());

    let o = run("campaigns/lab-outbox-partitions.toml");
    let r = results(&o);
    assert_eq!(r["anomaly-counts"]["non-convergence"], 0, "{}", text(&o));
    assert_eq!(r["checks"][6]["status"], "valid", "{}", r["checks"]);
    // The relay cut off from a region invalidates late when the partition heals: the
    // online checker flags those slow invalidations while the run goes on, each one an
    // offline finding too (live says nothing of those a kill could have disturbed).
    let live_slow = r["live"]["counts"]["slow-invalidation"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        live_slow > 0 && r["anomaly-counts"]["slow-invalidation"].as_u64() >= Some(live_slow),
        "live {live_slow} slow invalidations, offline {}:\n{}",
        r["anomaly-counts"]["slow-invalidation"],
        text(&o)
    );
    common::live_agrees(r, false);
    assert!(our_rules(&nodes).is_empty());
}

/// The true Unix time in milliseconds.
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A time a server reported, in Unix milliseconds, with the true time just before and
/// just after it was asked.
#[derive(Debug, Clone, Copy)]
struct Reading {
    before: i64,
    shown: i64,
    after: i64,
}

impl Reading {
    /// How far the reading is from the true time shifted by `offset_ms`: 0 inside the
    /// window it was taken in (1 ms of slack for rounding to milliseconds).
    fn error(&self, offset_ms: i64) -> i64 {
        let (lo, hi) = (self.before + offset_ms - 1, self.after + offset_ms + 1);
        (lo - self.shown).max(self.shown - hi).max(0)
    }
}

fn reading(argv: &[&str], parse: impl Fn(&str) -> i64) -> Reading {
    let before = unix_ms();
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    let after = unix_ms();
    assert!(out.status.success(), "{argv:?}: {}", text(&out));
    let shown = parse(&String::from_utf8_lossy(&out.stdout));
    Reading {
        before,
        shown,
        after,
    }
}

/// Redis `TIME` on the server at `addr`.
fn redis_time(addr: &str) -> Reading {
    reading(&["redis-cli", "-h", addr, "TIME"], |out| {
        let mut lines = out.lines().map(|l| l.trim().parse::<i64>().unwrap());
        let (secs, micros) = (lines.next().unwrap(), lines.next().unwrap());
        secs * 1000 + micros / 1000
    })
}

/// PostgreSQL's `now()` on the server at `addr`.
fn pg_now(addr: &str) -> Reading {
    let sql = "SELECT floor(extract(epoch FROM now()) * 1000)::bigint";
    reading(
        &["psql", "-h", addr, "-U", "postgres", "-Atc", sql],
        |out| out.trim().parse().unwrap(),
    )
}

/// The time a lab host's servers see: `date` run on it with the clock shim preloaded,
/// as the lab starts its servers.
fn node_time(node: &str) -> Reading {
    let shim = coherence_lab::clock::shim_path();
    let file = coherence_lab::clock::clock_file(node);
    let preload = format!("LD_PRELOAD={}", shim.display());
    let clock = format!("COHERENCE_CLOCK_FILE={}", file.display());
    let argv = [
        env!("CARGO_BIN_EXE_coherence"),
        "lab",
        "exec",
        node,
        "--",
        "env",
        &preload,
        &clock,
        "date",
        "+%s%3N",
    ];
    reading(&argv, |out| out.trim().parse().unwrap())
}

/// Asserts that `r` shows the true time moved by `offset_ms`; returns how far from the
/// middle of its window it was and the window's width, for the figures.
fn assert_shifted(what: &str, r: Reading, offset_ms: i64) -> (i64, i64) {
    assert_eq!(
        r.error(offset_ms),
        0,
        "{what}: {r:?}, expected {offset_ms:+} ms"
    );
    (
        (r.shown - offset_ms - (r.before + r.after) / 2).abs(),
        r.after - r.before,
    )
}

/// Clock faults, bumped and strobed, in the servers' own time (Redis `TIME`,
/// PostgreSQL `now()`), only on the node skewed; healed, the clocks are back and
/// nothing remains; `coherence heal` sets back a skew a SIGKILLed run left.
fn clock_skews_show_in_the_servers_time_and_heal(nodes: &LabNodes) {
    // Every server runs with the shim preloaded.
    for node in nodes.names() {
        for service in ["redis", "sentinel", "postgres", "invalidator"] {
            for pid in nodes.pids(&node, service).unwrap() {
                let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
                assert!(
                    maps.contains("clockshift.so"),
                    "{service} on {node} has no clock shim"
                );
            }
        }
    }
    let mut worst = (0, 0);
    // Unskewed, every clock is true.
    assert_shifted("r1a", redis_time("10.77.0.21"), 0);
    assert_shifted("db1", pg_now("10.77.0.11"), 0);

    // A bump forward on a Redis replica and one back on the database primary.
    let bump_r1b = Fault::ClockSkew(ClockSkew {
        node: "r1b".into(),
        skew: Skew::Bump { offset_ms: 4200 },
    });
    let bump_db1 = Fault::ClockSkew(ClockSkew {
        node: "db1".into(),
        skew: Skew::Bump { offset_ms: -3100 },
    });
    for f in [&bump_r1b, &bump_db1] {
        f.apply(nodes).unwrap();
        assert_eq!(
            f.traces(nodes).unwrap().len(),
            1,
            "a skew in place is a trace"
        );
    }
    assert_eq!(bump_r1b.start_f(), "bump-clock");
    for _ in 0..5 {
        for (distance, width) in [
            assert_shifted("r1b", redis_time("10.77.0.22"), 4200),
            assert_shifted("db1", pg_now("10.77.0.11"), -3100),
        ] {
            worst = (worst.0.max(distance), worst.1.max(width));
        }
        // The other nodes are not moved.
        assert_shifted("r1a", redis_time("10.77.0.21"), 0);
        assert_shifted("db2", pg_now("10.77.0.12"), 0);
    }
    assert_eq!(
        nodes.clock_skew("db1").unwrap(),
        Some(Skew::Bump { offset_ms: -3100 })
    );

    // Healed: the clocks are back, and nothing of the faults remains.
    for f in [&bump_r1b, &bump_db1] {
        f.heal(nodes).unwrap();
        assert!(f.traces(nodes).unwrap().is_empty());
    }
    assert_shifted("r1b", redis_time("10.77.0.22"), 0);
    assert_shifted("db1", pg_now("10.77.0.11"), 0);

    // A strobe: the clock jumps forth and back with the period, as its phase says.
    let skew = Skew::Strobe {
        offset_ms: 8000,
        period_ms: 200,
    };
    let strobe = Fault::ClockSkew(ClockSkew {
        node: "r2b".into(),
        skew,
    });
    strobe.apply(nodes).unwrap();
    let (mut moved, mut true_time) = (0, 0);
    for _ in 0..40 {
        let r = redis_time("10.77.0.32");
        if r.error(8000) == 0 {
            moved += 1;
        } else {
            assert_eq!(r.error(0), 0, "neither true nor moved: {r:?}");
            true_time += 1;
        }
        // Within one period, the phase decides.
        if r.before / 200 == r.after / 200 {
            assert_eq!(r.error(skew.offset_at(r.before)), 0, "{r:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(23));
    }
    assert!(
        moved > 5 && true_time > 5,
        "{moved} moved, {true_time} true"
    );
    strobe.heal(nodes).unwrap();
    assert!(strobe.traces(nodes).unwrap().is_empty());
    for _ in 0..10 {
        assert_shifted("r2b", redis_time("10.77.0.32"), 0);
    }

    // A run killed (SIGKILL) while a clock is skewed: `coherence heal` sets it back.
    let store = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args(["run", "campaigns/lab-writer.toml", "--time-limit", "30s"])
        .args(["--nemesis", "clock-bump", "--nemesis-interval", "2s"])
        .args(["--nemesis-duration", "1500ms", "--seed", "5"])
        .args(["--store", store.path().to_str().unwrap()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let runs = store.path().join("lab-writer");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (journal, node, offset_ms) = loop {
        let found = std::fs::read_dir(&runs)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| RunDir::new(e.path()).journal())
            .and_then(|j| Some((pending(&j).ok()?.into_iter().next()?.1, j)));
        if let Some((Fault::ClockSkew(ClockSkew { node, skew }), j)) = found {
            if nodes.clock_skew(&node).unwrap() == Some(skew) {
                break (j, node, skew.offset_ms());
            }
        }
        assert!(std::time::Instant::now() < deadline, "no clock was skewed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // The history is flushed at least every 100 ms: let it hold the bump.
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_shifted(&node, node_time(&node), offset_ms);
    let history = std::fs::read_to_string(journal.with_file_name("history.jsonl")).unwrap();
    let start = history
        .lines()
        .find(|l| l.contains(r#""f":"bump-clock""#))
        .expect("the history has the bump");
    assert!(
        start.contains(&format!(r#""node":"{node}""#))
            && start.contains(&format!(r#""offset_ms":{offset_ms}"#)),
        "{start}"
    );
    let killed_dir = journal.parent().unwrap().to_str().unwrap();
    let o = coherence(&["heal", killed_dir]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("healed 1 fault"), "{}", text(&o));
    assert_eq!(nodes.clock_skew(&node).unwrap(), None);
    assert_shifted(&node, node_time(&node), 0);
    assert!(pending(&journal).unwrap().is_empty());

    // Scheduled, end to end: each fault is in the history with its node and offset,
    // and its reset says it was healed, verified.
    let o = Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args(["run", "campaigns/lab-writer.toml", "--time-limit", "7s"])
        .args([
            "--nemesis",
            "clock-bump,clock-strobe",
            "--nemesis-interval",
            "2s",
        ])
        .args(["--nemesis-duration", "1s", "--seed", "9"])
        .args(["--store", store.path().to_str().unwrap()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let t = text(&o);
    let dir = run_dir(&t);
    let history = std::fs::read_to_string(Path::new(&dir).join("history.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = history
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["process"] == "nemesis")
        .collect();
    let starts: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["f"] == "bump-clock" || e["f"] == "strobe-clock")
        .collect();
    let resets: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["f"] == "reset-clock").collect();
    assert!(starts.len() >= 2, "{events:?}");
    assert_eq!(starts.len(), resets.len(), "{events:?}");
    for e in &starts {
        let f = &e["value"]["fault"];
        assert!(f["node"].is_string() && f["offset_ms"].is_i64(), "{e}");
        assert_eq!(f["mode"] == "strobe", e["f"] == "strobe-clock", "{e}");
    }
    for e in &resets {
        assert_eq!(e["value"]["healed"], true, "{e}");
    }
    assert!(pending(&RunDir::new(&dir).journal()).unwrap().is_empty());
    for node in nodes.names() {
        assert_eq!(nodes.clock_skew(&node).unwrap(), None, "{node}");
    }
    eprintln!(
        "clock skew: bumped Redis TIME and PostgreSQL now() within their windows \
         (at most {} ms wide), at most {} ms from the middle",
        worst.1, worst.0
    );
}
