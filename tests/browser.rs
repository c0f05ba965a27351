//! A real report in a real browser: Debian's headless Chromium opens `report.html`
//! through `coherence serve` (whose Content-Security-Policy lets a page load nothing,
//! so any attempt is reported), logs no console message, asks the server for nothing
//! but the page, and leaves a screenshot in `target/browser/report.png`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

const CHROMIUM: &str = "/usr/bin/chromium";

#[test]
fn a_report_renders_in_chromium_without_errors_or_requests() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/setup (it installs Debian's chromium)"
    );
    let exe = env!("CARGO_BIN_EXE_coherence");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("runs");
    let run = store.join("generated/2026-11-23T100000Z");
    std::fs::create_dir_all(&run).unwrap();
    let history = run.join("history.jsonl");
    let gen = Command::new(exe)
        .args(["gen", "--ops", "20000", "--mode", "buggy", "--out"])
        .arg(&history)
        .output()
        .unwrap();
    assert!(gen.status.success(), "{gen:?}");
    let check = Command::new(exe)
        .arg("check")
        .arg(&history)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    assert!(run.join("report.html").is_file());

    let mut server = Command::new(exe)
        .args(["serve", "--addr", "127.0.0.1:0", "--store"])
        .arg(&store)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let base = first
        .split("http://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let page = "/generated/2026-11-23T100000Z/report.html";

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("report.png");
    let _ = std::fs::remove_file(&shot);
    let profile = dir.path().join("chromium-profile");
    let browser = Command::new("timeout")
        .arg("120")
        .arg(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            // Any host but loopback fails to resolve: nothing leaves the machine.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--window-size=1200,3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("http://{base}{page}"))
        .output()
        .unwrap();
    server.kill().unwrap();
    let mut access = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut access).unwrap();
    server.wait().unwrap();
    let log = String::from_utf8_lossy(&browser.stderr);
    assert!(browser.status.success(), "chromium failed:\n{log}");

    // No console message at all: the report has no script, so any would be the
    // browser's complaint (a refused load, a parse error).
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(
        console.is_empty(),
        "console messages:\n{}",
        console.join("\n")
    );
    // The server was asked for the page and nothing else (but the browser's own
    // favicon probe).
    let requests: Vec<&str> = access
        .lines()
        .filter(|l| !l.contains("/favicon.ico"))
        .collect();
    assert_eq!(
        requests,
        vec![format!("GET {page} 200").as_str()],
        "{access}"
    );
    // The screenshot is a real picture of a real page.
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(
        png.len() > 20_000,
        "a {} byte screenshot is too small for the report",
        png.len()
    );
}
