//! End-to-end benchmark of `coherence check`: read, parse, check and results of
//! simulated histories of 1 M and 5 M operations, as a user runs it (the release
//! binary, a fresh process per run). Reports wall time and peak memory (the child's
//! max RSS from `wait4`).
//!
//! `cargo bench --bench check`. Sizes and runs: `COHERENCE_BENCH_OPS=1000000,5000000`,
//! `COHERENCE_BENCH_RUNS=5`. Histories are generated once (seed 1, buggy mode) into
//! `target/bench-data/`.

use coherence_sim::{generate, Mode, SimConfig};
use coherence_store::HistoryWriter;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn data_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-data")
}

fn history(ops: u64) -> PathBuf {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).expect("create target/bench-data");
    let path = dir.join(format!("sim-{ops}-seed1.jsonl"));
    if !path.exists() {
        let partial = path.with_extension("partial");
        let started = Instant::now();
        let mut w = HistoryWriter::create(&partial).expect("create history");
        let config = SimConfig {
            seed: 1,
            ops,
            mode: Mode::Buggy,
            ..SimConfig::default()
        };
        let summary = generate(&config, &mut w).expect("generate");
        w.finish().expect("finish history");
        std::fs::rename(&partial, &path).expect("rename history");
        eprintln!(
            "generated {} ({} events) in {:.1?}",
            path.display(),
            summary.events,
            started.elapsed()
        );
    }
    path
}

/// Counts lines by streaming, so that this process stays small: a child's max RSS
/// includes what it inherited at fork.
fn count_lines(path: &Path) -> u64 {
    use std::io::Read;
    let mut file = std::fs::File::open(path).expect("open history");
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 0;
    loop {
        match file.read(&mut buf).expect("read history") {
            0 => return lines,
            n => lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64,
        }
    }
}

/// Runs the binary once: wall time, peak RSS in KiB, exit status.
#[allow(clippy::zombie_processes)] // reaped by `wait4`, which also gives its max RSS
fn run_once(path: &Path) -> (Duration, u64, i32) {
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_coherence"))
        .arg("check")
        .arg(path)
        .args(["--explain", "0"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start coherence");
    let mut status = 0;
    // SAFETY: plain FFI call with pointers to live locals; `child` is ours and not
    // waited for elsewhere.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    let wall = started.elapsed();
    (wall, usage.ru_maxrss as u64, libc::WEXITSTATUS(status))
}

/// The report's targets: its size (under 5 MB for 5 M operations), and how long a
/// browser takes to open it (Debian's headless Chromium, start to screenshot).
fn report(sizes: &[u64]) {
    println!(
        "\nreport.html (check --out, one run each; browser: headless Chromium to a screenshot)"
    );
    println!(
        "{:>10} {:>14} {:>12} {:>10}",
        "ops", "check+report s", "report KB", "browser s"
    );
    for &ops in sizes {
        let out = tempfile::tempdir().expect("a temporary directory");
        let started = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_coherence"))
            .arg("check")
            .arg(history(ops))
            .arg("--out")
            .arg(out.path())
            .stdout(Stdio::null())
            .status()
            .expect("start coherence");
        assert!(matches!(status.code(), Some(0 | 1)), "check --out failed");
        let wall = started.elapsed().as_secs_f64();
        let page = out.path().join("report.html");
        let bytes = std::fs::metadata(&page).expect("report.html").len();
        let browser = Path::new("/usr/bin/chromium").exists().then(|| {
            let started = Instant::now();
            let status = Command::new("/usr/bin/chromium")
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1200,3000",
                ])
                .arg(format!(
                    "--user-data-dir={}",
                    out.path().join("profile").display()
                ))
                .arg(format!(
                    "--screenshot={}",
                    out.path().join("shot.png").display()
                ))
                .arg(format!("file://{}", page.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("start chromium");
            assert!(status.success(), "chromium failed");
            started.elapsed().as_secs_f64()
        });
        println!(
            "{:>10} {:>14.2} {:>12.0} {:>10}",
            ops,
            wall,
            bytes as f64 / 1000.0,
            browser.map_or("-".to_string(), |s| format!("{s:.2}"))
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter we ignore.
    let sizes: Vec<u64> = std::env::var("COHERENCE_BENCH_OPS")
        .unwrap_or_else(|_| "1000000,5000000".to_string())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("COHERENCE_BENCH_OPS: numbers, comma-separated")
        })
        .collect();
    let runs: usize = std::env::var("COHERENCE_BENCH_RUNS")
        .ok()
        .map(|s| s.parse().expect("COHERENCE_BENCH_RUNS: a number"))
        .unwrap_or(5);
    println!("coherence check, end to end ({runs} runs each, fresh process per run)");
    println!(
        "{:>10} {:>10} {:>9} {:>10} {:>10} {:>10} {:>12}",
        "ops", "events", "MB", "min s", "median s", "max s", "peak MiB"
    );
    let mut medians = Vec::new();
    for &ops in &sizes {
        let path = history(ops);
        let bytes = std::fs::metadata(&path).expect("history").len();
        let events = count_lines(&path);
        let _ = run_once(&path); // warm the page cache
        let mut walls = Vec::new();
        let mut peak = 0;
        for _ in 0..runs {
            let (wall, rss, code) = run_once(&path);
            assert!(
                code == 0 || code == 1,
                "check failed with exit status {code}"
            );
            walls.push(wall.as_secs_f64());
            peak = peak.max(rss);
        }
        walls.sort_by(f64::total_cmp);
        let median = walls[walls.len() / 2];
        medians.push((ops, median));
        println!(
            "{:>10} {:>10} {:>9.0} {:>10.2} {:>10.2} {:>10.2} {:>12.0}",
            ops,
            events,
            bytes as f64 / 1e6,
            walls[0],
            median,
            walls[walls.len() - 1],
            peak as f64 / 1024.0
        );
    }
    report(&sizes);
    if let (Some(&(a, ta)), Some(&(b, tb))) = (medians.first(), medians.last()) {
        if b > a {
            println!(
                "scaling: {b} ops took {:.2}x the time of {a} ops ({:.1}x the operations)",
                tb / ta,
                b as f64 / a as f64
            );
        }
    }
}
