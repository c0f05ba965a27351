//! The lab against real servers: `coherence lab up/status/exec/down` as a user runs
//! them, checked with `redis-cli` and `psql` from outside. One test, in order, because
//! there is one lab per machine; it needs root, so it is `#[ignore]`d and `scripts/test`
//! runs it as root. Whoever runs the tests, `lab up` without root refuses clearly.

mod common;

use common::{coherence, is_root, lab_processes, require_root, text, Down};

use coherence_lab::cluster::{self, State};
use coherence_lab::Design;
use std::process::Command;
use std::time::{Duration, Instant};

fn run(argv: &[&str]) -> String {
    let o = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect(argv[0]);
    assert!(o.status.success(), "{argv:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn redis(host: &str, args: &[&str]) -> String {
    let mut argv = vec!["redis-cli", "-h", host];
    argv.extend(args);
    run(&argv)
}

fn sql(host: &str, query: &str) -> String {
    run(&["psql", "-h", host, "-U", "postgres", "-tAqc", query])
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const R1A: &str = "10.77.0.21";
const R1B: &str = "10.77.0.22";
const R2A: &str = "10.77.0.31";
const DB1: &str = "10.77.0.11";
const DB2: &str = "10.77.0.12";

fn write(key: &str, version: i64) {
    sql(
        DB1,
        &format!(
            "INSERT INTO items (key, version, write_id) VALUES ('{key}', {version}, 'w{version}') \
             ON CONFLICT (key) DO UPDATE SET version = EXCLUDED.version, write_id = EXCLUDED.write_id"
        ),
    );
}

fn cached(host: &str, key: &str) -> bool {
    !redis(host, &["GET", key]).is_empty()
}

/// Without root, `lab up` refuses with a clear message before it touches anything (so
/// this may run beside the lab test). As root, it drops to `nobody` to try.
#[test]
fn lab_up_without_root_refuses_clearly() {
    let o = if is_root() {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                env!("CARGO_BIN_EXE_coherence"),
                "lab",
                "up",
            ])
            .output()
            .unwrap()
    } else {
        coherence(&["lab", "up"])
    };
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("the lab needs root: it makes network namespaces"),
        "{}",
        text(&o)
    );
}

#[test]
#[ignore = "needs root: the lab (network namespaces, a bridge, iptables); scripts/test runs it as root"]
fn the_lab_end_to_end() {
    require_root();
    assert!(coherence(&["lab", "down"]).status.success());
    let _down = Down;
    let started = Instant::now();
    let o = coherence(&["lab", "up", "--regions", "2", "--invalidator", "notify"]);
    let up_took = started.elapsed();
    assert!(o.status.success(), "{}", text(&o));
    eprintln!("lab up took {up_took:.1?}");

    // status: every server answers, with its role
    let o = coherence(&["lab", "status"]);
    let status = text(&o);
    assert_eq!(o.status.code(), Some(0), "{status}");
    assert!(!status.contains(" NO "), "{status}");
    for line in [
        "db2    10.77.0.12",
        "r2b    10.77.0.32",
        "r1s    10.77.0.23",
        "inv    10.77.0.5",
    ] {
        assert!(status.contains(line), "{line} in {status}");
    }
    assert!(
        status.contains("standby") && status.contains("replica"),
        "{status}"
    );
    let o = coherence(&["lab", "up"]);
    assert!(text(&o).contains("already up"), "{}", text(&o));

    // lab exec runs inside the host: it sees the host's own address
    let o = coherence(&[
        "lab", "exec", "r1b", "--", "ip", "-4", "-o", "addr", "show", "eth0",
    ]);
    assert!(text(&o).contains(R1B), "{}", text(&o));
    let o = coherence(&["lab", "exec", "nohost", "--", "true"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("the hosts are"), "{}", text(&o));

    // hosts reach each other and nothing else: no route leaves the lab's subnet
    for host in ["db1", "r1a", "inv"] {
        let o = coherence(&["lab", "exec", host, "--", "ip", "route"]);
        let routes = text(&o);
        assert!(!routes.contains("default"), "{host}: {routes}");
        assert!(routes.contains("10.77.0.0/24"), "{host}: {routes}");
    }

    // a write on db1 appears on db2
    write("rep", 1);
    eventually(
        "the write replicating to db2",
        Duration::from_secs(5),
        || sql(DB2, "SELECT version FROM items WHERE key = 'rep'") == "1",
    );
    assert_eq!(sql(DB2, "SELECT pg_is_in_recovery()"), "t");

    // a SET on r1a appears on r1b
    redis(R1A, &["SET", "cached", "v"]);
    eventually("the SET replicating to r1b", Duration::from_secs(5), || {
        cached(R1B, "cached")
    });

    // notify: an UPDATE makes the invalidator delete the key in both regions
    for h in [R1A, R2A] {
        redis(h, &["SET", "k1", "old"]);
    }
    write("k1", 1);
    eventually(
        "notify deleting k1 in both regions",
        Duration::from_secs(5),
        || !cached(R1A, "k1") && !cached(R2A, "k1"),
    );

    // notify with the listener disconnected: the deletion is lost for good
    let state = State::load().unwrap().unwrap();
    cluster::stop_invalidator(&state).unwrap();
    for h in [R1A, R2A] {
        redis(h, &["SET", "k2", "old"]);
    }
    write("k2", 1);
    cluster::start_invalidator(&state).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        cached(R1A, "k2") && cached(R2A, "k2"),
        "notify lost the deletion sent while it was down"
    );

    // SIGKILL of r1a: Sentinel promotes r1b, and the invalidator follows it
    let r1a_redis = cluster::namespace_pids("coh-r1a")
        .unwrap()
        .into_iter()
        .find(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).starts_with("redis-server")
        })
        .expect("redis-server on r1a");
    let killed = Instant::now();
    // SAFETY: no preconditions.
    unsafe { libc::kill(r1a_redis, libc::SIGKILL) };
    eventually("Sentinel promoting r1b", Duration::from_secs(15), || {
        redis(R1B, &["INFO", "replication"]).contains("role:master")
    });
    eprintln!("failover took {:.1?}", killed.elapsed());
    redis(R1B, &["SET", "k3", "old"]);
    write("k3", 1);
    eventually(
        "notify deleting k3 on the new primary r1b",
        Duration::from_secs(10),
        || !cached(R1B, "k3"),
    );

    // `lab up` over the remains of a dead lab (namespaces left, servers gone) starts afresh
    for ns in cluster::lab_namespaces().unwrap() {
        for pid in cluster::namespace_pids(&ns).unwrap() {
            // SAFETY: no preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let o = coherence(&[
        "lab",
        "up",
        "--regions",
        "2",
        "--invalidator",
        "outbox",
        "--sync-replication",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("cleaned the remains"), "{}", text(&o));
    eventually(
        "the standby replicating synchronously",
        Duration::from_secs(5),
        || sql(DB1, "SELECT sync_state FROM pg_stat_replication") == "sync",
    );

    // outbox: an UPDATE makes the relay delete the key in both regions
    for h in [R1A, R2A] {
        redis(h, &["SET", "k4", "old"]);
    }
    write("k4", 1);
    eventually(
        "outbox deleting k4 in both regions",
        Duration::from_secs(5),
        || !cached(R1A, "k4") && !cached(R2A, "k4"),
    );

    // outbox with the relay down: the deletion is delivered when it is back
    let state = State::load().unwrap().unwrap();
    assert_eq!(state.design, Design::Outbox);
    cluster::stop_invalidator(&state).unwrap();
    // status says what is down, with exit status 1 (as systemctl status)
    let o = coherence(&["lab", "status"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("down: invalidator on inv"),
        "{}",
        text(&o)
    );
    for h in [R1A, R2A] {
        redis(h, &["SET", "k5", "old"]);
    }
    write("k5", 1);
    std::thread::sleep(Duration::from_secs(1));
    assert!(cached(R1A, "k5"), "nothing deletes while the relay is down");
    cluster::start_invalidator(&state).unwrap();
    eventually(
        "outbox delivering the deletion later",
        Duration::from_secs(10),
        || !cached(R1A, "k5") && !cached(R2A, "k5"),
    );
    let log =
        std::fs::read_to_string(coherence_lab::lab_dir().join("inv/deletions.jsonl")).unwrap();
    assert!(
        log.contains(r#""key":"k5""#) && log.contains(r#""design":"outbox""#),
        "{log}"
    );

    // down: no namespace, bridge, directory or process remains
    let started = Instant::now();
    let o = coherence(&["lab", "down"]);
    eprintln!("lab down took {:.1?}", started.elapsed());
    assert!(o.status.success(), "{}", text(&o));
    assert!(cluster::lab_namespaces().unwrap().is_empty());
    assert!(!std::path::Path::new("/sys/class/net/cohbr0").exists());
    assert!(!coherence_lab::lab_dir().exists());
    eventually("every lab process gone", Duration::from_secs(5), || {
        lab_processes().is_empty()
    });
    let o = coherence(&["lab", "status"]);
    assert!(text(&o).contains("the lab is down"), "{}", text(&o));
    assert_eq!(o.status.code(), Some(3), "not up: 3, as systemctl status");
}
