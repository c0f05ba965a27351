//! The `coherence` binary as a user runs it: exit statuses, output formats, errors on
//! bad input and arguments, run directories, `--out`, and `gen`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../analysis/tests/hostile/mod.rs"]
mod hostile;

fn coherence(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args(args)
        .env_remove("CI")
        .output()
        .expect("run coherence")
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/spec/examples")
        .join(name)
        .display()
        .to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// concurrent-ok has no anomaly but no final phase: unknown (exit 3), naming the checks
/// that could not decide; valid (exit 0) with `--checks` leaving them out.
#[test]
fn unknown_history_exits_3_and_chosen_checks_decide() {
    let o = coherence(&["check", &example("concurrent-ok.jsonl")]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("UNKNOWN"), "{out}");
    assert!(
        out.contains("unknown: non-convergence could not decide"),
        "{out}"
    );
    assert!(
        out.contains("unknown: lost-write could not decide"),
        "{out}"
    );
    let o = coherence(&[
        "check",
        &example("concurrent-ok.jsonl"),
        "--checks",
        "stale-read,phantom-read,version-fork,monotonic-read,read-your-writes",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(out.starts_with("VALID"), "{out}");
    assert!(
        out.contains("non-convergence             0  not run"),
        "{out}"
    );
    // An unknown check name is a usage error that lists the names.
    let o = coherence(&[
        "check",
        &example("concurrent-ok.jsonl"),
        "--checks",
        "stale,lost-write",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("the checks are stale-read, phantom-read"),
        "{}",
        stderr(&o)
    );
}

/// No evidence is not valid: an empty history, /dev/null, a file whose only line was
/// cut short, a history whose every operation is info: exit 3, unknown.
#[test]
fn no_evidence_is_unknown_not_valid() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.jsonl", "");
    let cut = write(
        dir.path(),
        "cut.jsonl",
        r#"{"index":0,"time":0,"process":0,"type":"inv"#,
    );
    let info = write(
        dir.path(),
        "info.jsonl",
        concat!(
            r#"{"index":0,"time":0,"process":0,"type":"invoke","f":"write","key":"k","value":{"write":"a"}}"#,
            "\n",
            r#"{"index":1,"time":5,"process":0,"type":"info","f":"write","key":"k","value":{"write":"a"},"error":"timeout"}"#,
            "\n",
            r#"{"index":2,"time":6,"process":1,"type":"invoke","f":"read","key":"k","node":"r1"}"#,
            "\n",
        ),
    );
    for path in [
        empty.to_str().unwrap(),
        "/dev/null",
        cut.to_str().unwrap(),
        info.to_str().unwrap(),
    ] {
        let o = coherence(&["check", path]);
        assert_eq!(o.status.code(), Some(3), "{path}: {}", stdout(&o));
        let out = stdout(&o);
        assert!(out.starts_with("UNKNOWN"), "{path}: {out}");
        assert!(out.contains("unknown: no evidence"), "{path}: {out}");
        // Every check is undecided (the observer checks do not apply: no observer
        // watched); the JSON says so too.
        let o = coherence(&["check", path, "--format", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["verdict"], "unknown", "{path}");
        assert_eq!(v["valid"], false, "{path}");
        for c in v["checks"].as_array().unwrap() {
            let observer = ["missing-invalidation", "slow-invalidation"]
                .contains(&c["name"].as_str().unwrap());
            let want = if observer { "not-run" } else { "unknown" };
            assert_eq!(c["status"], want, "{path}: {c}");
        }
    }
}

#[test]
fn anomalies_exit_1_with_explanations() {
    let o = coherence(&["check", &example("fill-race.jsonl")]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.starts_with("INVALID: 2 anomalies found"), "{out}");
    assert!(
        out.contains("likely cause: the cache-aside fill race"),
        "{out}"
    );
    assert!(
        out.contains("cycle: write 4 →rt read 9 →rw write 4"),
        "{out}"
    );
}

#[test]
fn staleness_bound_takes_durations() {
    let stale = example("stale-read.jsonl");
    assert_eq!(coherence(&["check", &stale]).status.code(), Some(1));
    assert_eq!(
        coherence(&["check", &stale, "--staleness-bound", "7ms"])
            .status
            .code(),
        Some(1)
    );
    // No anomaly from 8 ms on; stale-read decides, the history as a whole cannot (no
    // final phase).
    for bound in ["8ms", "2s"] {
        let args = ["check", &stale, "--staleness-bound", bound];
        assert_eq!(coherence(&args).status.code(), Some(3), "{bound}");
        let chosen = [&args[..], &["--checks", "stale-read"]].concat();
        assert_eq!(coherence(&chosen).status.code(), Some(0), "{bound}");
    }
}

#[test]
fn json_output_is_only_json_with_every_count() {
    let o = coherence(&[
        "check",
        &example("session.jsonl"),
        "--format",
        "json",
        "--staleness-bound",
        "5ms",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("stdout is one JSON document");
    assert_eq!(v["valid"], false);
    let counts = v["anomaly-counts"].as_object().unwrap();
    let names = [
        "stale-read",
        "phantom-read",
        "version-fork",
        "lost-write",
        "monotonic-read",
        "read-your-writes",
        "non-convergence",
        "missing-invalidation",
        "slow-invalidation",
    ];
    assert_eq!(counts.len(), names.len());
    for n in names {
        assert!(counts[n].is_u64(), "{n}");
    }
    assert_eq!(counts["read-your-writes"], 1);
    assert_eq!(counts["monotonic-read"], 1);
    assert_eq!(counts["stale-read"], 0);
    assert_eq!(v["format_version"], 3);
    assert_eq!(v["verdict"], "invalid");
}

#[test]
fn malformed_history_exits_2_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "bad.jsonl",
        "{\"index\":0,\"time\":0,\"process\":0,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"k\"}\n\
         {\"index\":2,\"time\":1,\"process\":0,\"type\":\"ok\",\"f\":\"read\",\"key\":\"k\",\"value\":null}\n",
    );
    let o = coherence(&["check", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty(), "nothing on stdout for unusable input");
    let err = stderr(&o);
    assert!(err.contains(&format!("{}:2:", p.display())), "{err}");
    assert!(err.contains("index 2 where 1 was expected"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn truncated_last_line_is_a_warning_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example("stale-read.jsonl")).unwrap();
    let p = write(
        dir.path(),
        "cut.jsonl",
        &format!("{text}{{\"index\":4,\"time\":12000000,\"pro"),
    );
    let o = coherence(&["check", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("warning: line 5: the last line is cut short"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn bad_arguments_exit_2() {
    let o = coherence(&[
        "check",
        &example("stale-read.jsonl"),
        "--staleness-bound",
        "soon",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("250ms"),
        "says what a duration looks like: {}",
        stderr(&o)
    );
    let o = coherence(&["check", "/nonexistent/history.jsonl"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    let o = coherence(&["check", &example("stale-read.jsonl"), "--format", "yaml"]);
    assert_eq!(o.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let o = coherence(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("without a history.jsonl"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_directory_and_out_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(example("phantom.jsonl"), dir.path().join("history.jsonl")).unwrap();
    let out = dir.path().join("results");
    let o = coherence(&[
        "check",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["format"], "coherence-results");
    assert_eq!(results["anomaly-counts"]["phantom-read"], 1);
}

#[test]
fn check_out_writes_the_report_with_the_run_context_and_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::copy(example("fill-race.jsonl"), run.join("history.jsonl")).unwrap();
    let campaign = "name = \"demo<x>\"\n[cluster]\nkind = \"lab\"\n";
    std::fs::write(run.join("campaign.toml"), campaign).unwrap();
    let run_json = serde_json::json!({
        "tool_version": "0.1.0",
        "seed": 4242,
        "server_versions": {"r1a": "redis 7.0.15", "db1": "PostgreSQL 15.8"},
        "nodes": [{"name": "r1a", "addr": "10.77.0.21:6379"}],
    });
    std::fs::write(run.join("run.json"), run_json.to_string()).unwrap();
    let out = dir.path().join("out");
    let o = coherence(&[
        "check",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let report = out.join("report.html");
    assert!(
        stdout(&o).contains(&format!("report: {}", report.display())),
        "{}",
        stdout(&o)
    );
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.contains("name = &quot;demo&lt;x&gt;&quot;"),
        "the campaign, escaped"
    );
    for shown in ["4242", "redis 7.0.15", "PostgreSQL 15.8", "10.77.0.21:6379"] {
        assert!(html.contains(shown), "{shown} missing from the report");
    }
    // The hashes are what sha256sum says.
    let sums = Command::new("sha256sum")
        .args(["history.jsonl", "campaign.toml"])
        .current_dir(&run)
        .output()
        .unwrap();
    let sums = String::from_utf8(sums.stdout).unwrap();
    for line in sums.lines() {
        let hash = line.split_whitespace().next().unwrap();
        assert_eq!(hash.len(), 64);
        assert!(html.contains(hash), "{line} not in the report");
    }
    assert!(html.contains("sha256sum history.jsonl campaign.toml"));

    // With --format json, stdout stays only JSON; the report's path goes to stderr.
    let o = coherence(&[
        "check",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--format",
        "json",
    ]);
    serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("stdout is JSON");
    assert!(stderr(&o).contains("report: "));
}

#[test]
fn gen_is_deterministic_and_its_modes_check_as_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).display().to_string();
    for name in ["a.jsonl", "b.jsonl"] {
        let o = coherence(&["gen", "--ops", "3000", "--seed", "9", "--out", &path(name)]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    assert_eq!(
        std::fs::read(path("a.jsonl")).unwrap(),
        std::fs::read(path("b.jsonl")).unwrap()
    );
    let o = coherence(&[
        "gen",
        "--ops",
        "5000",
        "--mode",
        "correct",
        "--out",
        &path("ok.jsonl.gz"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = coherence(&["check", &path("ok.jsonl.gz")]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let o = coherence(&[
        "gen",
        "--ops",
        "20000",
        "--mode",
        "buggy",
        "--keys",
        "20",
        "--out",
        &path("bug.jsonl"),
    ]);
    assert_eq!(o.status.code(), Some(0));
    let o = coherence(&["check", &path("bug.jsonl")]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let o = coherence(&["gen", "--mode", "flaky", "--out", &path("x.jsonl")]);
    assert_eq!(o.status.code(), Some(2));
}

/// docs/history.md grew from shared/spec/history.md: it keeps every anomaly definition of
/// the shared spec word for word (what it adds is its own).
#[test]
fn the_history_contract_in_docs_keeps_the_shared_definitions() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/spec/history.md");
    let spec = std::fs::read_to_string(&shared).unwrap_or_else(|e| {
        panic!(
            "{} is missing ({e}): the project's tests need ../shared beside it",
            shared.display()
        )
    });
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/history.md"))
            .unwrap();
    let rows: Vec<&str> = spec.lines().filter(|l| l.starts_with("| `")).collect();
    assert!(rows.len() >= 7, "the shared spec's tables: {rows:?}");
    for row in rows {
        assert!(
            docs.contains(row),
            "docs/history.md lacks the shared spec's row:\n{row}"
        );
    }
}

#[test]
fn every_shipped_campaign_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("campaigns");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        let text = std::fs::read_to_string(&path).unwrap();
        coherence_campaign::Campaign::parse(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    for required in [
        "lab-writer.toml",
        "lab-outbox.toml",
        "staging-example.toml",
        "staging-http-example.toml",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "campaigns/{required} is missing"
        );
    }
}

/// A staging campaign whose database does not answer is refused before anything runs:
/// exit 2, the endpoint named, no run directory.
#[test]
fn a_staging_campaign_that_cannot_reach_its_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let campaign = write(
        dir.path(),
        "staging.toml",
        r#"name = "unreachable"
[cluster]
kind = "staging"
[cluster.postgres]
writer = "127.0.0.1:1"
user = "u"
dbname = "d"
[[cluster.regions]]
name = "eu"
primary = "127.0.0.1:2"
[workload]
invalidation = "writer"
fill = "plain"
keys = 10
read_fraction = 0.9
concurrency = 1
time_limit = "1s"
"#,
    );
    let store = dir.path().join("runs");
    let o = coherence(&[
        "run",
        campaign.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("cannot reach the database writer") && e.contains("127.0.0.1:1"),
        "{e}"
    );
    assert!(
        !store.join("unreachable").exists(),
        "a run directory was made"
    );

    // Faults on staging need the nodes to reach.
    let with_faults = std::fs::read_to_string(&campaign).unwrap()
        + "[nemesis]\nfaults = [\"partition-region\"]\ninterval = \"5s\"\nduration = \"1s\"\n";
    let campaign = write(dir.path(), "faults.toml", &with_faults);
    let o = coherence(&["run", campaign.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("[[cluster.nodes]]"), "{}", stderr(&o));
}

/// An http workload's campaign mistakes are refused before anything runs, each naming
/// its line and field: exit 2, no run directory.
#[test]
fn a_bad_http_campaign_is_refused_naming_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let base = "name = \"svc\"\n[cluster]\nkind = \"lab\"\n[workload]\nkind = \"http\"\n\
                keys = 1\nconcurrency = 1\ntime_limit = \"1s\"\n";
    let http = "[workload.http]\nread = \"GET {base}/items/{key}\"\n\
                write = \"PUT {base}/items/{key}\"\nwrite_body = '{\"value\": \"{unique}\"}'\n\
                unique = \"/value\"\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{base}{}", http.replace("{key}\"\nwrite", "{id}\"\nwrite")),
            "line 10: field `workload.http.read`",
            "unknown placeholder {id}",
        ),
        (
            format!("{base}{}", http.replace("{unique}", "x")),
            "field `workload.http.write`",
            "put {unique} in its URL or write_body",
        ),
        (
            format!("{base}invalidation = \"writer\"\n{http}"),
            "field `workload.invalidation`",
            "with kind = \"http\" the service itself invalidates",
        ),
        (
            base.to_string(),
            "field `workload.http`",
            "needs a [workload.http] section",
        ),
        (
            format!(
                "{base}{http}[[workload.http.regions]]\nname = \"r1\"\nbase = [\"https://x:1\"]\n"
            ),
            "field `workload.http.regions`",
            "https is not built in",
        ),
    ];
    let store = dir.path().join("runs");
    for (text, at, what) in cases {
        let campaign = write(dir.path(), "svc.toml", &text);
        let o = coherence(&[
            "run",
            campaign.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{text}\n{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(at) && e.contains(what), "{text}\n{e}");
        assert!(!store.exists(), "a run directory was made");
    }
}

/// A staging http campaign whose service does not answer is refused before anything
/// runs, naming the URL: exit 2, no run directory.
#[test]
fn an_http_service_that_does_not_answer_is_refused_naming_its_url() {
    let dir = tempfile::tempdir().unwrap();
    let campaign = write(
        dir.path(),
        "svc.toml",
        r#"name = "svc"
[cluster]
kind = "staging"
[cluster.postgres]
writer = "127.0.0.1:1"
user = "u"
dbname = "d"
[[cluster.regions]]
name = "eu"
primary = "127.0.0.1:2"
[workload]
kind = "http"
keys = 10
concurrency = 1
time_limit = "1s"
[workload.http]
read = "GET {base}/items/{key}"
write = "PUT {base}/items/{key}"
write_body = '{"value": "{unique}"}'
unique = "/value"
[[workload.http.regions]]
name = "eu"
base = ["http://127.0.0.1:9"]
"#,
    );
    let store = dir.path().join("runs");
    let o = coherence(&[
        "run",
        campaign.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("the service of region eu at http://127.0.0.1:9 does not answer")
            && e.contains("GET http://127.0.0.1:9/items/k0"),
        "{e}"
    );
    assert!(!store.join("svc").exists(), "a run directory was made");
}

/// A campaign whose `[workload] kind` is unknown is refused before anything runs: exit
/// 2, the file, the line and the kinds there are named.
#[test]
fn an_unknown_workload_kind_is_refused_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let campaign = write(
        dir.path(),
        "kind.toml",
        "name = \"kind\"\n[cluster]\nkind = \"lab\"\n[workload]\nkind = \"telnet\"\n\
         invalidation = \"writer\"\nfill = \"plain\"\nkeys = 1\nconcurrency = 1\ntime_limit = \"1s\"\n",
    );
    let store = dir.path().join("runs");
    let o = coherence(&[
        "run",
        campaign.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("kind.toml: line 5 (field `kind`)")
            && e.contains("telnet")
            && e.contains("cache-aside"),
        "{e}"
    );
    assert!(!store.exists(), "a run directory was made");
}

/// `check --junit FILE` writes one test case per checker; the failures are the invalid
/// checks.
#[test]
fn check_writes_junit_for_ci() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("junit.xml");
    let o = coherence(&[
        "check",
        &example("fill-race.jsonl"),
        "--junit",
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let xml = std::fs::read_to_string(&file).unwrap();
    assert!(xml.starts_with("<?xml"), "{xml}");
    // one per check (nine), and the verdict's
    assert_eq!(xml.matches("<testcase ").count(), 10, "{xml}");
    assert!(xml.contains(r#"<failure message=""#), "{xml}");
    let o = coherence(&[
        "check",
        &example("concurrent-ok.jsonl"),
        "--junit",
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let xml = std::fs::read_to_string(&file).unwrap();
    assert!(!xml.contains("<failure"), "{xml}");
    assert!(xml.contains(r#"<error message="unknown: "#), "{xml}");
}

/// `serve`: the store read-only on loopback; nothing outside the store, whatever the
/// path says; GET and HEAD only; never on a non-loopback address.
#[test]
fn serve_shows_the_store_and_nothing_else() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("runs");
    let run = store.join("lab-writer/2026-11-23T100000Z");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(store.join("index.html"), "<p>the index</p>").unwrap();
    std::fs::write(run.join("report.html"), "<p>the report</p>").unwrap();
    std::fs::write(run.join("results.json"), "{}").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "outside").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), store.join("leak.txt")).unwrap();

    let o = coherence(&[
        "serve",
        "--store",
        store.to_str().unwrap(),
        "--addr",
        "0.0.0.0:0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("loopback"), "{}", stderr(&o));

    let mut child = Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args([
            "serve",
            "--store",
            store.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first.split("http://").nth(1).unwrap().trim_end();
    let host = url.split('/').next().unwrap().to_string();
    let get = |method: &str, path: &str| -> (u16, String, String) {
        let mut s = std::net::TcpStream::connect(&host).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, head.to_string(), body.to_string())
    };
    let (status, head, body) = get("GET", "/");
    assert_eq!(status, 200);
    assert_eq!(body, "<p>the index</p>");
    assert!(
        head.contains("Content-Security-Policy: default-src 'none'"),
        "{head}"
    );
    let (status, _, body) = get("GET", "/lab-writer/2026-11-23T100000Z/");
    assert_eq!((status, body.as_str()), (200, "<p>the report</p>"));
    let (status, head, _) = get("GET", "/lab-writer/2026-11-23T100000Z/results.json");
    assert_eq!(status, 200);
    assert!(head.contains("application/json"), "{head}");
    for escape in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/lab-writer/..%2f..%2fsecret.txt",
        "/leak.txt",
        "/nothing-here",
    ] {
        let (status, _, body) = get("GET", escape);
        assert_eq!(status, 404, "{escape}: {body}");
        assert!(!body.contains("outside"), "{escape}");
    }
    let (status, _, _) = get("POST", "/index.html");
    assert_eq!(status, 405);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Every file under `dir`, with its bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// A hand-made run directory: the example history and this campaign file.
fn run_dir_with_campaign(root: &Path, campaign: &str) -> PathBuf {
    let run = root.join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::copy(example("fill-race.jsonl"), run.join("history.jsonl")).unwrap();
    std::fs::write(run.join("campaign.toml"), campaign).unwrap();
    run
}

/// Issue 10: redaction was line by line, and `check` did not redact at all.
#[test]
fn a_secret_in_a_run_directorys_campaign_reaches_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "hunter2-Xq9";
    let campaign = format!(
        "name = \"leaky\"  # a campaign stored unredacted\n[cluster]\nkind = \"staging\"\n\
         postgres = {{ writer = \"db:5432\", password = \"{secret}\" }}\n\
         [[cluster.nodes]]\nname = \"n1\"\nssh = {{ host = \"h\", key = \"~/.ssh/id_ed25519\", api_key = \"{secret}\" }}\n\
         [workload]\nkeys = 10\n"
    );
    let run = run_dir_with_campaign(dir.path(), &campaign);
    let out = dir.path().join("out");
    let o = coherence(&[
        "check",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--junit",
        out.join("junit.xml").to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let written = files_under(&out);
    assert_eq!(written.len(), 3, "{written:?}");
    for (path, bytes) in &written {
        assert!(
            !contains(bytes, secret),
            "the secret is in {}",
            path.display()
        );
    }
    assert!(!contains(&o.stdout, secret) && !contains(&o.stderr, secret));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    // Redacted in place; the rest, comments and the SSH key's path are as written.
    assert!(
        html.contains("password = &quot;&lt;redacted&gt;&quot; }"),
        "{html}"
    );
    assert!(html.contains("# a campaign stored unredacted"));
    assert!(html.contains("key = &quot;~/.ssh/id_ed25519&quot;"));
    assert!(html.contains("keys = 10"));
    assert!(html.contains("held 2 secret value(s), redacted here"));
    // Nor its hash, which would let anyone test guesses of the secret.
    assert!(!html.contains("sha256sum history.jsonl campaign.toml"));
    let sums = Command::new("sha256sum")
        .arg(run.join("campaign.toml"))
        .output()
        .unwrap();
    let hash = String::from_utf8(sums.stdout).unwrap();
    let hash = hash.split_whitespace().next().unwrap();
    assert!(!html.contains(hash), "the stored campaign's hash is shown");
}

#[test]
fn a_campaign_that_is_not_toml_is_not_shown() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_dir_with_campaign(
        dir.path(),
        "name = \"x\"\npassword = \"unterminated-S3cr3t\n",
    );
    let out = dir.path().join("out");
    let o = coherence(&[
        "check",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    for (path, bytes) in files_under(&out) {
        assert!(
            !contains(&bytes, "S3cr3t"),
            "the secret is in {}",
            path.display()
        );
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains(
            "campaign.toml is in the run directory but not shown: it is not valid TOML (line 2)"
        ),
        "{html}"
    );
}

/// Issue 10: a campaign.toml linked to /etc/shadow was copied whole into the report.
#[test]
fn a_linked_file_in_a_run_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let private = write(dir.path(), "private", "root:$6$S3cr3tHash:19000::::::\n");
    let run = run_dir_with_campaign(dir.path(), "name = \"x\"\n");
    for name in ["campaign.toml", "run.json"] {
        let file = run.join(name);
        let kept = std::fs::read(&file).ok();
        std::fs::remove_file(&file).ok();
        std::os::unix::fs::symlink(&private, &file).unwrap();
        let out = dir.path().join(format!("out-{name}"));
        let o = coherence(&[
            "check",
            run.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains(&file.display().to_string()) && e.contains("is a symbolic link"),
            "{e}"
        );
        assert!(e.contains("replace the link with a copy"), "{e}");
        assert!(!e.contains("S3cr3t"), "{e}");
        assert!(!out.exists(), "outputs were written for {name}");
        std::fs::remove_file(&file).unwrap();
        if let Some(bytes) = kept {
            std::fs::write(&file, bytes).unwrap();
        }
    }
    // The history itself, too.
    let history = run.join("history.jsonl");
    let elsewhere = dir.path().join("elsewhere.jsonl");
    std::fs::rename(&history, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &history).unwrap();
    let o = coherence(&["check", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is a symbolic link"), "{}", stderr(&o));
}

/// Issue 10: `--out` followed a link at results.json and overwrote what it named.
#[test]
fn outputs_replace_links_and_leave_their_targets_alone() {
    let dir = tempfile::tempdir().unwrap();
    let victim = write(dir.path(), "victim", "precious\n");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for name in ["results.json", "report.html", "junit.xml"] {
        std::os::unix::fs::symlink(&victim, out.join(name)).unwrap();
    }
    let o = coherence(&[
        "check",
        &example("fill-race.jsonl"),
        "--out",
        out.to_str().unwrap(),
        "--junit",
        out.join("junit.xml").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    for name in ["results.json", "report.html", "junit.xml"] {
        let meta = std::fs::symlink_metadata(out.join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is not a regular file");
    }
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["format"], "coherence-results");
    // No temporary file is left beside them.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["junit.xml", "report.html", "results.json"]);
}

/// Issue 10: `check d/results.json --out d` overwrote its own input.
#[test]
fn an_output_that_would_overwrite_the_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d");
    std::fs::create_dir(&d).unwrap();
    let history = d.join("history.jsonl");
    std::fs::copy(example("fill-race.jsonl"), &history).unwrap();
    let original = std::fs::read(&history).unwrap();
    let link = d.join("link.jsonl");
    std::os::unix::fs::symlink(&history, &link).unwrap();
    for junit in [&history, &link] {
        let o = coherence(&[
            "check",
            history.to_str().unwrap(),
            "--out",
            d.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains(&format!("refusing to write {}", junit.display()))
                && e.contains(&format!("it is the input {}", history.display())),
            "{e}"
        );
        assert_eq!(std::fs::read(&history).unwrap(), original);
        // Refused before anything was written.
        assert!(!d.join("results.json").exists() && !d.join("report.html").exists());
    }
    // A history named like an output, checked into its own directory.
    let named = d.join("results.json");
    std::fs::copy(example("fill-race.jsonl"), &named).unwrap();
    let o = coherence(&[
        "check",
        named.to_str().unwrap(),
        "--out",
        d.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("refusing to write"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&named).unwrap(), original);
    // The run directory's own outputs beside the history are fine.
    let o = coherence(&["check", d.to_str().unwrap(), "--out", d.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(std::fs::read(&history).unwrap(), original);
}

fn staging_campaign(postgres_extra: &str) -> String {
    format!(
        r#"name = "secrets"
[cluster]
kind = "staging"
[cluster.postgres]
writer = "127.0.0.1:1"
{postgres_extra}
[[cluster.regions]]
name = "eu"
primary = "127.0.0.1:2"
[workload]
invalidation = "writer"
fill = "plain"
keys = 10
concurrency = 1
time_limit = "1s"
"#
    )
}

/// The database password comes from the environment; one written in the file works
/// but is warned about.
#[test]
fn run_takes_the_password_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("runs");
    let campaign = write(
        dir.path(),
        "env.toml",
        &staging_campaign("password_env = \"COHERENCE_TEST_UNSET_PW\""),
    );
    let o = Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args([
            "run",
            campaign.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ])
        .env_remove("COHERENCE_TEST_UNSET_PW")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("environment variable COHERENCE_TEST_UNSET_PW is not set")
            && e.contains(&campaign.display().to_string()),
        "{e}"
    );
    assert!(!store.exists(), "a run directory was made");
    // Set, it is used: the run gets as far as the (unreachable) database.
    let o = Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args([
            "run",
            campaign.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ])
        .env("COHERENCE_TEST_UNSET_PW", "pw")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot reach the database writer"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));

    let inline = write(
        dir.path(),
        "inline.toml",
        &staging_campaign("password = \"hunter2\""),
    );
    let o = coherence(&[
        "run",
        inline.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("warning: ") && e.contains("password_env"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");

    // --junit may not be the campaign itself.
    let o = coherence(&[
        "run",
        inline.to_str().unwrap(),
        "--junit",
        inline.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("refusing to write"), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&inline)
        .unwrap()
        .contains("hunter2"));
}

/// Runs the binary with `input` on its standard input.
fn coherence_with_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args(args)
        .env_remove("CI")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run coherence");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // From a thread, so that a child that stops reading early cannot block us.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("wait for coherence");
    let _ = writer.join();
    out
}

#[test]
fn pipes_check_reads_a_history_from_stdin_as_dash_or_dev_stdin() {
    let file = example("fill-race.jsonl");
    let bytes = std::fs::read(&file).unwrap();
    let expected = coherence(&["check", &file]);
    assert_eq!(expected.status.code(), Some(1));
    let gz = Command::new("gzip").arg("-c").arg(&file).output().unwrap();
    assert!(gz.status.success());
    let gz = gz.stdout;
    for (arg, name) in [("-", "<stdin>"), ("/dev/stdin", "/dev/stdin")] {
        for input in [&bytes, &gz] {
            let o = coherence_with_stdin(&["check", arg], input);
            assert_eq!(o.status.code(), Some(1), "{arg}: {}", stderr(&o));
            assert_eq!(
                stdout(&o),
                stdout(&expected).replace(&file, name),
                "{arg}: the same verdict as the file's"
            );
        }
    }
    // Errors name standard input and the line.
    let o = coherence_with_stdin(&["check", "-"], b"{\"index\":0}\nnot json\n");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("<stdin>:1: missing field `time`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn pipes_check_dash_out_writes_a_report_with_the_hash_of_what_came_in() {
    let dir = tempfile::tempdir().unwrap();
    let file = example("fill-race.jsonl");
    let bytes = std::fs::read(&file).unwrap();
    let out = dir.path().join("out");
    let o = coherence_with_stdin(&["check", "-", "--out", out.to_str().unwrap()], &bytes);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let sums = Command::new("sha256sum").arg(&file).output().unwrap();
    let sum = String::from_utf8(sums.stdout).unwrap();
    let sum = sum.split_whitespace().next().unwrap();
    assert_eq!(sum.len(), 64);
    assert!(
        html.contains(sum),
        "the report carries the sha256 of the bytes read"
    );
    assert!(html.contains("&lt;stdin&gt;"), "standard input is named");
}

#[test]
fn gzip_bomb_exits_2_saying_once_what_was_seen() {
    // 100 MiB of zeros from some 100 KiB: one gzip member of 1 MiB of zeros, repeated.
    let dir = tempfile::tempdir().unwrap();
    let zeros = write(dir.path(), "zeros", &"\0".repeat(1 << 20));
    let member = Command::new("gzip").arg("-c").arg(&zeros).output().unwrap();
    assert!(member.status.success());
    let bomb = dir.path().join("bomb.jsonl.gz");
    std::fs::write(&bomb, member.stdout.repeat(100)).unwrap();
    let o = coherence(&["check", bomb.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!(
            "error: cannot read {}: the gzip stream expanded to 64 MiB from ",
            bomb.display()
        )),
        "{err}"
    );
    assert_eq!(err.matches("gzip bomb").count(), 1, "said once: {err}");
    assert!(err.len() < 600, "{err}");
}

/// `heal` refuses a journal with an unreadable line that is not a cut-short last line,
/// naming it, instead of skipping it (its fault would never be healed); with only a
/// cut-short last line (what a crash leaves) there is nothing to heal.
#[test]
fn heal_refuses_a_damaged_journal_and_reads_a_crashed_one() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let entry = r#"{"seq":0,"time_unix_ns":1,"state":"applying","fault":{"kind":"kill","node":"inv","service":"invalidator","pids":[1]}}"#;
    std::fs::write(
        run.join("faults.jsonl"),
        format!(
            "{entry}\n{{\"seq\":1,\"state\":\"applying\",\"fault\":{{\"kind\":\"new-kind\"}}}}\n"
        ),
    )
    .unwrap();
    let o = coherence(&["heal", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("faults.jsonl:2: not a heal journal entry"),
        "{err}"
    );
    assert!(err.contains("repair or remove it"), "{err}");
    // Only a cut-short last line: the fault it was about was never applied.
    std::fs::write(
        run.join("faults.jsonl"),
        format!(
            "{entry}\n{{\"seq\":0,\"time_unix_ns\":2,\"state\":\"healed\"}}\n{{\"seq\":1,\"time_un"
        ),
    )
    .unwrap();
    let o = coherence(&["heal", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("nothing to heal"), "{}", stdout(&o));
}

/// `heal` of a run whose campaign is missing or unreadable says it cannot tell where the
/// faults were, instead of taking them for the lab's.
#[test]
fn heal_does_not_guess_where_the_faults_were() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    std::fs::write(
        run.join("faults.jsonl"),
        "{\"seq\":0,\"time_unix_ns\":1,\"state\":\"applying\",\"fault\":{\"kind\":\"kill\",\"node\":\"db1\",\"service\":\"postgres\",\"pids\":[1]}}\n",
    )
    .unwrap();
    let o = coherence(&["heal", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("cannot tell where the faults of"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("campaign.toml is missing"),
        "{}",
        stderr(&o)
    );
    std::fs::write(run.join("campaign.toml"), "name = \"x\"\n[cluster\n").unwrap();
    let o = coherence(&["heal", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("cannot tell where the faults of"),
        "{}",
        stderr(&o)
    );
}

/// The bytes of `out` a terminal would act on: below 0x20 but for a newline, and DEL.
fn terminal_controls(out: &[u8]) -> Vec<u8> {
    out.iter()
        .copied()
        .filter(|&b| (b < 0x20 && b != b'\n') || b == 0x7f)
        .collect()
}

/// Regression: node names and the history's file name reached the terminal raw in
/// `check`'s text output (`ESC[2J` cleared the screen), and junit.xml was ill-formed.
/// Nothing of them reaches stdout, stderr or a file raw; results.json stays JSON.
#[test]
fn check_of_names_with_control_characters_prints_none_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let history = hostile::control_characters(dir.path());
    let out = dir.path().join("out\u{1b}[2J");
    let junit = dir.path().join("junit\u{1b}[2J.xml");
    let o = coherence(&[
        "check",
        history.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(terminal_controls(&o.stdout), b"", "{}", stdout(&o));
    assert_eq!(terminal_controls(&o.stderr), b"", "{}", stderr(&o));
    let text = stdout(&o);
    for shown in [
        format!("\"k{}\"", hostile::CTRL_SHOWN),
        format!("on r1{}", hostile::CTRL_SHOWN),
        format!("\"ghost{}\"", hostile::CTRL_SHOWN),
        format!("start-part{} heal-failed", hostile::CTRL_SHOWN),
        r"h\u{1b}[2J\u{1}.jsonl".to_string(),
        r"report: ".to_string()
            + &out
                .join("report.html")
                .display()
                .to_string()
                .replace('\u{1b}', r"\u{1b}"),
    ] {
        assert!(text.contains(&shown), "{shown} not in:\n{text}");
    }
    for file in [out.join("report.html"), junit.clone()] {
        let page = std::fs::read_to_string(&file).unwrap();
        assert_eq!(hostile::raw_controls(&page), None, "{}", file.display());
    }
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(
        results["per_key"][0]["key"].as_str(),
        Some(format!("k{}", hostile::CTRL).as_str()),
        "results keep the key as it is: JSON escapes it"
    );

    // JSON on stdout: the report's path on stderr, escaped.
    let o = coherence(&[
        "check",
        history.to_str().unwrap(),
        "--format",
        "json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(terminal_controls(&o.stderr), b"", "{}", stderr(&o));
    assert!(o.stdout.iter().all(|&b| b >= 0x20 || b == b'\n'));
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap();

    // Errors quote what they name escaped: a file that is not there, a line that is bad.
    let missing = dir.path().join("missing\u{1b}[2J.jsonl");
    let bad = write(
        dir.path(),
        "bad\u{1b}[2J.jsonl",
        &format!("{{\"index\":0,\"f\":{:?}}}\n", hostile::CTRL),
    );
    for path in [missing, bad] {
        let o = coherence(&["check", path.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(terminal_controls(&o.stderr), b"", "{err}");
        assert!(err.contains(r"\u{1b}[2J.jsonl"), "{err}");
    }
}

/// Regression: one key of 1 MB made report.html 123 MB and results.json 289 MB. Every
/// output now cuts it, saying where and how long it was.
#[test]
fn a_one_megabyte_key_is_cut_in_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let history = hostile::huge_key(dir.path(), 8);
    let out = dir.path().join("out");
    let junit = dir.path().join("junit.xml");
    let o = coherence(&[
        "check",
        history.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let cut = hostile::huge_cut();
    let sizes: Vec<(String, usize, usize)> = [
        (
            "report.html",
            std::fs::read(out.join("report.html")).unwrap(),
            1_000_000,
        ),
        (
            "results.json",
            std::fs::read(out.join("results.json")).unwrap(),
            2_000_000,
        ),
        ("junit.xml", std::fs::read(&junit).unwrap(), 100_000),
        ("stdout", o.stdout.clone(), 100_000),
    ]
    .into_iter()
    .map(|(name, bytes, limit)| {
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(&cut), "{name} says where the key is cut");
        (name.to_string(), text.len(), limit)
    })
    .collect();
    eprintln!("a {} byte key: {sizes:?}", hostile::HUGE);
    for (name, size, limit) in sizes {
        assert!(size < limit, "{name}: {size} bytes");
    }
}

/// `check --follow` over a history another process is still writing: detections are
/// printed while it grows, the offline verdict comes once it stops growing, and every
/// live detection is an offline finding (equal counts at bound 0 for the kinds live
/// decides, on this versioned history).
#[test]
fn check_follow_detects_while_the_history_grows() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.jsonl");
    let o = coherence(&[
        "gen",
        "--ops",
        "4000",
        "--seed",
        "3",
        "--mode",
        "buggy",
        "--out",
        source.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    let text = std::fs::read_to_string(&source).unwrap();
    let growing = dir.path().join("growing.jsonl");
    std::fs::write(&growing, "").unwrap();
    // The writer: the lines in bursts, with pauses shorter than the idle time.
    let writer = {
        let growing = growing.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&growing)
                .unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for chunk in lines.chunks(500) {
                // A line cut in two by the writer's pause is read whole.
                let joined = chunk.join("\n") + "\n";
                let (a, b) = joined.split_at(joined.len() / 2);
                f.write_all(a.as_bytes()).unwrap();
                f.flush().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(30));
                f.write_all(b.as_bytes()).unwrap();
                f.flush().unwrap();
            }
        })
    };
    let out = dir.path().join("out");
    let o = coherence(&[
        "check",
        growing.to_str().unwrap(),
        "--follow",
        "--until-idle",
        "1s",
        "--out",
        out.to_str().unwrap(),
    ]);
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(stderr.contains("live: stale-read: read of key"), "{stderr}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let live = &r["live"];
    assert!(live["events"].as_u64().unwrap() > 4000, "{live}");
    for (kind, n) in live["counts"].as_object().unwrap() {
        assert_eq!(
            n.as_u64(),
            r["anomaly-counts"][kind].as_u64(),
            "{kind}: live {n}, offline {}",
            r["anomaly-counts"][kind]
        );
    }
    assert!(live["counts"]["stale-read"].as_u64() > Some(0), "{live}");
    // The same file, no longer growing, checked offline: the same verdict.
    let o2 = coherence(&["check", growing.to_str().unwrap()]);
    assert_eq!(o2.status.code(), Some(1));
    // A compressed file cannot be followed: a clear error, exit 2.
    let gz = dir.path().join("h.jsonl.gz");
    std::fs::write(&gz, b"").unwrap();
    let o = coherence(&[
        "check",
        gz.to_str().unwrap(),
        "--follow",
        "--until-idle",
        "10ms",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("compressed"));
}

/// `coherence watch` refuses what it cannot watch, before touching anything: a campaign
/// that is not a watch, a watch with no commit observer, a bad delay; and `run` refuses
/// a watch campaign. Each names the file and what to do, exit 2.
#[test]
fn watch_refuses_campaigns_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("runs");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let staging = r#"name = "w"
[cluster]
kind = "staging"
[cluster.postgres]
writer = "127.0.0.1:1"
user = "u"
dbname = "d"
[[cluster.regions]]
name = "r1"
primary = "127.0.0.1:2"
[workload]
kind = "watch"
keys = 5
concurrency = 1
time_limit = "1s"
"#;
    let cases = [
        (
            write(
                "not-watch.toml",
                &staging.replace(
                    r#"kind = "watch""#,
                    r#"kind = "cache-aside"
invalidation = "writer"
fill = "plain""#,
                ),
            ),
            "watch",
            "kind = \"watch\"",
        ),
        (
            write("no-observe.toml", staging),
            "watch",
            "[observe.database]",
        ),
        (
            write(
                "bad-delay.toml",
                &format!("{staging}[workload.watch]\ndelays = [\"soon\"]\n"),
            ),
            "watch",
            "soon",
        ),
        (write("run-watch.toml", staging), "run", "coherence watch"),
    ];
    // --fail-fast names only what the online checker decides.
    let cache_aside = write(
        "cache-aside.toml",
        &staging.replace(
            r#"kind = "watch""#,
            "kind = \"cache-aside\"\ninvalidation = \"writer\"\nfill = \"plain\"",
        ),
    );
    for (flag, says) in [
        ("--fail-fast=lost-write", "judged only once the run is over"),
        ("--fail-fast=stale", "no anomaly is named"),
    ] {
        let o = coherence(&[
            "run",
            &cache_aside,
            flag,
            "--store",
            store.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag}: {err}");
        assert!(err.contains(says), "{flag}: {err}");
    }
    // A release gate needs the online checker.
    let o = coherence(&[
        "run",
        &cache_aside,
        "--fail-fast",
        "--no-live",
        "--store",
        store.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--no-live") && err.contains("--fail-fast"),
        "{err}"
    );
    for (campaign, cmd, says) in cases {
        let o = coherence(&[cmd, &campaign, "--store", store.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{cmd} {campaign}: {err}");
        assert!(
            err.contains(says) && err.contains(&campaign),
            "{cmd} {campaign}: {err}"
        );
    }
    assert!(!store.exists(), "a refused campaign left a run directory");
}
