//! One test suite for every implementation of `Remote`: whatever reaches a node must
//! report commands, keep arguments intact, move files byte for byte and detach
//! processes the same way. `remote_suite` runs it; the harnesses (`netns.rs`,
//! `ssh.rs`) provide a node and a scratch directory on it.

#![allow(dead_code)] // each harness uses some of it

pub mod sshd;

use coherence_nemeses::remote::{shell_words, Remote};
use std::path::Path;
use std::time::{Duration, Instant};

/// Fails the test, saying why, unless it runs as root: `what` needs it. The tests that
/// call this are `#[ignore]`d, so a run as another user shows them as ignored;
/// `scripts/test` runs them as root (`--include-ignored`).
pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() == 0 };
    assert!(
        root,
        "this test needs root ({what}): run it as root, as scripts/test does"
    );
}

/// One check of the suite.
type Check = fn(&dyn Remote, &Path);

/// The exit status of a command killed by SIGKILL: -1 when the command is the process
/// the node reports on.
pub const KILLED: i32 = -1;

/// The same through `sudo`, which outlives the command and exits 128 + 9.
pub const KILLED_UNDER_SUDO: i32 = 137;

/// Runs every check against `r`. `scratch` is an existing directory on the node that
/// the checks may fill; `killed` is the status a command killed by SIGKILL reports
/// ([`KILLED`] or [`KILLED_UNDER_SUDO`]).
pub fn remote_suite(r: &dyn Remote, scratch: &Path, killed: i32) {
    let kill = |r: &dyn Remote| {
        let out = r.execute(&["sh", "-c", "kill -9 $$"]).expect("execute");
        assert_eq!(out.status, killed, "{out:?}");
    };
    kill(r);
    eprintln!("  a signal is status {killed}: ok");
    let checks: &[(&str, Check)] = &[
        ("execute reports a failure", execute_reports_a_failure),
        ("run names everything", run_names_everything),
        ("arguments arrive intact", arguments_arrive_intact),
        ("stdin is empty", stdin_is_empty),
        ("big output on both streams", big_output_on_both_streams),
        ("files round-trip", files_round_trip),
        ("the mode is set", the_mode_is_set),
        (
            "missing files are clear errors",
            missing_files_are_clear_errors,
        ),
        ("spawn detaches and logs", spawn_detaches_and_logs),
        ("spawn with a bad log fails", spawn_with_a_bad_log_fails),
    ];
    for (name, check) in checks {
        let start = Instant::now();
        check(r, scratch);
        eprintln!("  {name}: ok ({:.0?})", start.elapsed());
    }
}

fn path(scratch: &Path, name: &str) -> String {
    scratch
        .join(name)
        .to_str()
        .expect("UTF-8 scratch")
        .to_string()
}

/// Whether `path` exists on the node.
fn exists(r: &dyn Remote, path: &str) -> bool {
    r.execute(&["test", "-e", path]).expect("test -e").status == 0
}

const FAILING: &[&str] = &["sh", "-c", "echo out; echo err >&2; exit 3"];

fn execute_reports_a_failure(r: &dyn Remote, _: &Path) {
    let out = r
        .execute(FAILING)
        .expect("execute returns the output of a failure");
    assert_eq!(out.status, 3);
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    let ok = r
        .run(&["echo", "fine"])
        .expect("run of a command that exits 0");
    assert_eq!(ok.stdout, "fine\n");
}

fn run_names_everything(r: &dyn Remote, _: &Path) {
    let e = r.run(FAILING).expect_err("run fails on status 3");
    assert_eq!(e.node, r.node());
    assert_eq!(e.command, shell_words(FAILING));
    assert_eq!(e.status, Some(3));
    assert_eq!(e.stdout.trim(), "out");
    assert_eq!(e.stderr.trim(), "err");
    let text = e.to_string();
    for part in [
        r.node(),
        "sh -c 'echo out; echo err >&2; exit 3'",
        "status 3",
        "stdout: out",
        "stderr: err",
    ] {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
}

fn arguments_arrive_intact(r: &dyn Remote, scratch: &Path) {
    let marker = path(scratch, "injected");
    let sub = format!("$(touch {marker})");
    let back = format!("`touch {marker}`");
    let semi = format!("; touch {marker}");
    let args = [
        "two words",
        "  padded  ",
        "it's",
        "\"double\"",
        "$HOME",
        "${PATH}",
        "a;b",
        "a && b",
        "a | b",
        "line1\nline2\n",
        "tab\there",
        "",
        "*",
        "~",
        "\\back\\slash",
        "!bang",
        "-n",
        "--",
        "A=1",
        "ünïcødé ✓",
        "'",
        "''",
        &sub,
        &back,
        &semi,
    ];
    let mut argv = vec!["printf", "%s\\0"];
    argv.extend_from_slice(&args);
    let out = r.run(&argv).expect("printf");
    let got: Vec<&str> = out.stdout.split('\0').collect();
    assert_eq!(
        &got[..got.len() - 1],
        &args[..],
        "arguments changed on the way"
    );
    assert!(
        !exists(r, &marker),
        "an argument ran as a command: {marker} exists"
    );
}

fn stdin_is_empty(r: &dyn Remote, _: &Path) {
    let start = Instant::now();
    let out = r.run(&["cat"]).expect("cat reads an empty stdin");
    assert_eq!(out.stdout, "");
    assert!(start.elapsed() < Duration::from_secs(10));
}

fn big_output_on_both_streams(r: &dyn Remote, _: &Path) {
    // More on stderr than any window before stdout ends: reading one stream at a time
    // would stall.
    let script = "head -c 3000000 /dev/zero | tr '\\0' e >&2; \
                  head -c 2000000 /dev/zero | tr '\\0' o; echo";
    let out = r.run(&["sh", "-c", script]).expect("big output");
    assert_eq!(out.stderr.len(), 3_000_000);
    assert!(out.stderr.bytes().all(|b| b == b'e'));
    assert_eq!(out.stdout.len(), 2_000_001);
    assert!(out.stdout.trim_end().bytes().all(|b| b == b'o'));
}

/// `n` bytes from a fixed xorshift sequence.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn files_round_trip(r: &dyn Remote, scratch: &Path) {
    let every_byte: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let cases: [(&str, Vec<u8>); 4] = [
        ("text", b"hello\nworld\n".to_vec()),
        ("empty", Vec::new()),
        ("every-byte", every_byte),
        ("noise", noise(1 << 20)),
    ];
    for (name, data) in &cases {
        let p = scratch.join(format!("round-trip-{name}"));
        r.upload(data, &p, 0o644).expect("upload");
        let back = r.download(&p).expect("download");
        assert!(
            back == *data,
            "{name}: {} bytes back for {}",
            back.len(),
            data.len()
        );
        let size = r.run(&["stat", "-c", "%s", p.to_str().unwrap()]).unwrap();
        assert_eq!(
            size.stdout.trim(),
            data.len().to_string(),
            "{name}: size on the node"
        );
    }
    // Replacing a longer file leaves nothing of it.
    let p = scratch.join("round-trip-noise");
    r.upload(b"short", &p, 0o644).expect("upload over");
    assert_eq!(r.download(&p).unwrap(), b"short");
}

fn mode_of(r: &dyn Remote, p: &Path) -> String {
    let out = r.run(&["stat", "-c", "%a", p.to_str().unwrap()]).unwrap();
    out.stdout.trim().to_string()
}

fn the_mode_is_set(r: &dyn Remote, scratch: &Path) {
    let p = scratch.join("mode");
    r.upload(b"a", &p, 0o640).expect("upload");
    assert_eq!(mode_of(r, &p), "640");
    r.upload(b"b", &p, 0o600).expect("upload over");
    assert_eq!(mode_of(r, &p), "600", "an existing file takes the new mode");
    // Bits the umask would clear are set too.
    r.upload(b"c", &p, 0o666).expect("upload");
    assert_eq!(mode_of(r, &p), "666");
    let script = scratch.join("script.sh");
    r.upload(b"#!/bin/sh\necho ran \"$1\"\n", &script, 0o755)
        .expect("upload a script");
    let out = r.run(&[script.to_str().unwrap(), "it"]).expect("run it");
    assert_eq!(out.stdout, "ran it\n");
}

fn missing_files_are_clear_errors(r: &dyn Remote, scratch: &Path) {
    let missing = scratch.join("no-such-file");
    let e = r
        .download(&missing)
        .expect_err("download of a missing file");
    assert_eq!(e.node, r.node());
    let text = e.to_string();
    assert!(text.contains(missing.to_str().unwrap()), "{text}");
    assert!(text.to_lowercase().contains("no such file"), "{text}");

    let nowhere = scratch.join("no-such-dir/file");
    let e = r
        .upload(b"x", &nowhere, 0o644)
        .expect_err("upload into a missing directory");
    let text = e.to_string();
    assert!(text.contains(nowhere.to_str().unwrap()), "{text}");
    assert!(text.to_lowercase().contains("no such file"), "{text}");
}

/// The state, process group and session of `pid`, or None once it is gone.
fn stat(r: &dyn Remote, pid: u32) -> Option<(String, u32, u32)> {
    let out = r.execute(&["cat", &format!("/proc/{pid}/stat")]).unwrap();
    if out.status != 0 {
        return None;
    }
    let rest = &out.stdout[out.stdout.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f[0].to_string(), f[2].parse().ok()?, f[3].parse().ok()?))
}

fn spawn_detaches_and_logs(r: &dyn Remote, scratch: &Path) {
    let log = scratch.join("spawn.log");
    r.upload(b"earlier line\n", &log, 0o644).unwrap();
    let argv = [
        "sh",
        "-c",
        "echo started $$; echo to stderr >&2; exec sleep 60",
    ];
    let pid = r.spawn(&argv, &log).expect("spawn");
    let want = format!("started {pid}\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = String::from_utf8(r.download(&log).unwrap()).unwrap();
        if text.contains(&want) && text.contains("to stderr") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        text.starts_with("earlier line\n"),
        "the log is appended to:\n{text}"
    );
    assert!(
        text.contains(&want),
        "the log shows the process with the returned pid {pid}:\n{text}"
    );
    assert!(
        text.contains("to stderr\n"),
        "stderr goes to the log:\n{text}"
    );
    let (state, group, _session) = stat(r, pid).expect("the spawned process is alive");
    assert_ne!(state, "Z", "the spawned process is alive");
    assert_eq!(
        group, pid,
        "the spawned process leads its own process group"
    );
    r.run(&["kill", &pid.to_string()]).expect("kill it");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match stat(r, pid) {
            None => break,
            Some((state, ..)) if state == "Z" => break,
            Some(_) if Instant::now() > deadline => panic!("{pid} outlived kill"),
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn spawn_with_a_bad_log_fails(r: &dyn Remote, scratch: &Path) {
    let log = scratch.join("no-such-dir/spawn.log");
    let e = r
        .spawn(&["sleep", "60"], &log)
        .expect_err("spawn with a log in a missing directory");
    assert_eq!(e.node, r.node());
    let text = e.to_string();
    assert!(text.contains("sleep 60"), "{text}");
    assert!(text.contains("no-such-dir/spawn.log"), "{text}");
}
