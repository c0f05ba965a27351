//! `coherence serve` as a user (and an attacker) meets it, over raw TCP: a client that
//! never reads a large response does not block the others; only requests for a
//! loopback host name are answered (no DNS rebinding); and the access log on stderr
//! shows control bytes of a request escaped, never raw.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A run store with an index page and a 20 MB history, larger than what the loopback
/// socket buffers of both ends take, so a client that does not read stalls its sender.
fn store(dir: &Path) -> std::path::PathBuf {
    let store = dir.join("runs");
    let run = store.join("big/2026-11-23T100000Z");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(store.join("index.html"), "<p>the run index</p>\n").unwrap();
    let line = "{\"index\":0,\"time\":0,\"process\":0,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"k\",\"node\":\"r1\"}\n";
    let big = line.repeat(20_000_000 / line.len() + 1);
    std::fs::write(run.join("history.jsonl"), big).unwrap();
    store
}

/// `coherence serve` on a free loopback port, killed when dropped however the test
/// ends; what it writes on stderr is collected as it comes.
struct Served {
    child: Child,
    addr: String,
    port: u16,
    log: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Served {
    fn start(store: &Path) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_coherence"))
            .args(["serve", "--addr", "127.0.0.1:0", "--store"])
            .arg(store)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run coherence serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut served = Served {
            child,
            addr: String::new(),
            port: 0,
            log,
            reader: Some(reader),
        };
        let mut first = String::new();
        BufReader::new(served.child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        // "serving /tmp/.../runs at http://127.0.0.1:PORT/ (read-only; Ctrl-C to stop)"
        served.addr = first
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_string();
        served.port = served.addr.rsplit(':').next().unwrap().parse().unwrap();
        served
    }

    /// Waits up to 10 s for the access log to hold `line` `times` times.
    fn wait_for_log(&self, line: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned();
            if log.lines().filter(|l| *l == line).count() >= times {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{line:?} not {times} times in the log within 10 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server; everything it wrote on stderr, raw.
    fn stop(mut self) -> Vec<u8> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `request` (raw bytes) and reads the whole answer, within `timeout`: the status
/// and the body.
fn exchange(addr: &str, request: &[u8], timeout: Duration) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer) {
        panic!(
            "no whole answer within {timeout:?} ({e}); got {} bytes",
            answer.len()
        );
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// GET `path` with `Host: host` (none if `None`), over a connection of its own.
fn get(addr: &str, host: Option<&str>, path: &str) -> (u16, String) {
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
    exchange(addr, request.as_bytes(), Duration::from_secs(10))
}

#[test]
fn a_client_that_never_reads_does_not_block_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&store(dir.path()));
    let big = "/big/2026-11-23T100000Z/history.jsonl";

    // Two clients ask for the 20 MB history and never read a byte of it.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(&served.addr).unwrap();
        write!(
            s,
            "GET {big} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        stalled.push(s);
    }
    // The server took them (it logs a request before it answers)...
    served.wait_for_log(&format!("GET {big} 200"), 2);
    std::thread::sleep(Duration::from_millis(200));

    // ...and another client still gets its page at once. Single-threaded, this would
    // wait for the stalled clients forever.
    let start = Instant::now();
    let (status, body) = get(&served.addr, Some("localhost"), "/");
    let took = start.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "<p>the run index</p>\n");
    eprintln!("the page came in {took:.1?} while two clients did not read");

    // The stalled clients really were in the middle of their 20 MB: one reads it whole.
    let mut whole = Vec::new();
    let mut reader = stalled.pop().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    reader.read_to_end(&mut whole).unwrap();
    assert!(whole.len() > 20_000_000, "{} bytes", whole.len());

    // A client that goes away mid-response frees its worker; the server lives on.
    drop(stalled);
    std::thread::sleep(Duration::from_millis(200));
    let (status, _) = get(&served.addr, Some("localhost"), "/");
    assert_eq!(status, 200);
    served.stop();
}

#[test]
fn only_requests_for_a_loopback_name_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&store(dir.path()));
    let port = served.port;

    // DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1.
    for (host, path) in [
        (format!("evil.example:{port}"), "/"),
        ("evil.example".to_string(), "/"),
        (format!("localhost.evil.example:{port}"), "/"),
        (format!("127.0.0.1.nip.io:{port}"), "/"),
        ("evil.example".to_string(), "/no/such/file"),
    ] {
        let (status, body) = get(&served.addr, Some(&host), path);
        assert_eq!(status, 403, "Host {host} GET {path}: {body}");
        assert!(
            body.starts_with("forbidden: the Host is not localhost, 127.0.0.1 or [::1]"),
            "{body}"
        );
    }
    let (status, body) = get(&served.addr, None, "/");
    assert_eq!(status, 403, "{body}");
    assert!(body.starts_with("forbidden: no Host header"), "{body}");
    let (status, _) = exchange(
        &served.addr,
        b"GET / HTTP/1.0\r\nHost: localhost\r\nHost: evil.example\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(status, 403);

    // The names of loopback, with the port or without (an SSH tunnel changes it).
    for host in [
        format!("localhost:{port}"),
        "localhost:9000".to_string(),
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("[::1]:{port}"),
    ] {
        let (status, body) = get(&served.addr, Some(&host), "/");
        assert_eq!(status, 200, "Host {host}: {body}");
        assert_eq!(body, "<p>the run index</p>\n");
    }
    let log = String::from_utf8(served.stop()).unwrap();
    assert!(
        log.lines()
            .any(|l| l == format!("GET / 403 (Host evil.example:{port})")),
        "{log}"
    );
    assert!(log.lines().any(|l| l == "GET / 403 (no Host)"), "{log}");
}

#[test]
fn control_bytes_of_a_request_reach_the_log_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&store(dir.path()));
    // Clear the screen, set the terminal's title, ring, backspace over the line.
    let nasty = b"/\x1b[2J\x1b]0;owned\x07\x08\x08\t\x7f\x01\rx";
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(nasty);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let (status, _) = exchange(&served.addr, &request, Duration::from_secs(10));
    assert_eq!(status, 404);
    let (status, _) = exchange(
        &served.addr,
        b"GET / HTTP/1.1\r\nHost: \x1b[2Jevil.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(status, 403);
    let long = format!("/{}", "a".repeat(100_000));
    let (status, _) = get(&served.addr, Some("localhost"), &long);
    assert_eq!(status, 404);

    let log = served.stop();
    let text = String::from_utf8(log.clone()).unwrap();
    let raw: Vec<u8> = log
        .iter()
        .copied()
        .filter(|b| (*b < 0x20 && *b != b'\n') || *b == 0x7f)
        .collect();
    assert!(
        raw.is_empty(),
        "raw control bytes {raw:?} in the log:\n{text:?}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0], r"GET /\u{1b}[2J\u{1b}]0;owned\u{7}\u{8}\u{8}\t\u{7f}\u{1}\rx 404",
        "{text}"
    );
    assert_eq!(lines[1], r"GET / 403 (Host \u{1b}[2Jevil.example)");
    assert!(lines[2].starts_with("GET /aaaa"), "{}", lines[2]);
    assert!(lines[2].ends_with("...[100001 bytes] 404"), "{}", lines[2]);
    assert!(lines[2].len() < 300, "a {} byte log line", lines[2].len());
    assert_eq!(lines.len(), 3, "{text}");
}
