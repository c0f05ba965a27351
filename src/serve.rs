//! `coherence serve`: the run store over HTTP, read-only, on loopback. Only GET and
//! HEAD; only files inside the store (a path that leaves it, by `..` or a link, is not
//! found); pages may load nothing from anywhere (a strict Content-Security-Policy).
//! Only requests for a loopback host name are answered (`localhost`, `127.0.0.1`,
//! `[::1]`, any port), so a page elsewhere cannot read the store by DNS rebinding.
//! A pool of worker threads answers, so a client that does not read its response holds
//! one worker, not the server. The access log on stderr escapes what clients sent.

use anyhow::{bail, Context};
use coherence_store::run::{RunDir, INDEX};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::sync::{mpsc, Arc};
use tiny_http::{Header, Method, Request, Response, ResponseBox, Server};

/// How many requests are answered at once. A client that stops reading holds one
/// worker until it goes away; past this many such clients, requests wait their turn.
const WORKERS: usize = 16;

/// How much of a request path (or a refused Host) the access log shows, in characters.
const LOG_CHARS: usize = 200;

/// What a file is served as.
fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "json" => "application/json",
        "xml" => "application/xml",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "gz" => "application/gzip",
        // history.jsonl, campaign.toml, faults.jsonl, server logs
        _ => "text/plain; charset=utf-8",
    }
}

/// The file under `root` (canonical) that the URL path names, if it names one inside:
/// a directory is its `index.html`, or a run directory's `report.html`.
pub fn resolve(root: &Path, url: &str) -> Option<PathBuf> {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?
        .into_owned();
    let mut relative = PathBuf::new();
    for c in Path::new(&decoded).components() {
        match c {
            Component::Normal(part) => relative.push(part),
            Component::RootDir | Component::CurDir => {}
            // `..` and anything odd: refused, not interpreted.
            _ => return None,
        }
    }
    let mut file = root.join(relative).canonicalize().ok()?;
    if file.is_dir() {
        let index = [INDEX, RunDir::REPORT]
            .iter()
            .map(|name| file.join(name))
            .find(|p| p.is_file())?;
        file = index.canonicalize().ok()?;
    }
    // Links are followed above; what they reach must still be inside the store.
    (file.starts_with(root) && file.is_file()).then_some(file)
}

/// Whether a Host header value names loopback: `localhost` (any case), a loopback IPv4
/// address or `[::1]`, with or without a port. Any port, because an SSH tunnel
/// (`ssh -L 9000:localhost:8080`) makes the browser send its own local port; the name
/// is what defeats DNS rebinding, as a page elsewhere can only send its own name.
fn loopback_host(host: &str) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((inside, "")) => (inside, None),
            Some((inside, after)) => match after.strip_prefix(':') {
                Some(port) => (inside, Some(port)),
                None => return false,
            },
            None => return false,
        },
        None => match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let bracketed = host.starts_with('[');
    let name_ok = if bracketed {
        name.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
    } else {
        name.eq_ignore_ascii_case("localhost")
            || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
    };
    port_ok && name_ok
}

/// `text` as the access log shows it: control and other unprintable characters (and
/// backslashes) escaped as in Rust (`\u{1b}`), and cut after [`LOG_CHARS`] characters,
/// saying how long it was, so a request cannot move the cursor or clear the screen of
/// the operator's terminal, nor flood it.
fn log_text(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().take(LOG_CHARS) {
        match c {
            '"' | '\'' => out.push(c),
            c => out.extend(c.escape_debug()),
        }
    }
    if text.chars().nth(LOG_CHARS).is_some() {
        out.push_str(&format!("...[{} bytes]", text.len()));
    }
    out
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name, value).expect("a valid header")
}

fn plain(status: u16, text: &str) -> ResponseBox {
    Response::from_string(text)
        .with_status_code(status)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
        .boxed()
}

/// Answers one request, and logs it on stderr.
fn answer(root: &Path, request: Request) {
    let hosts: Vec<&str> = request
        .headers()
        .iter()
        .filter(|h| h.field.equiv("Host"))
        .map(|h| h.value.as_str())
        .collect();
    let mut note = String::new();
    let mut response = match hosts.as_slice() {
        [host] if loopback_host(host) => match request.method() {
            Method::Get | Method::Head => match resolve(root, request.url()) {
                Some(file) => match std::fs::File::open(&file) {
                    Ok(f) => Response::from_file(f)
                        .with_header(header("Content-Type", content_type(&file)))
                        .boxed(),
                    Err(_) => plain(404, "not found\n"),
                },
                None => plain(404, "not found\n"),
            },
            _ => plain(405, "read-only: GET and HEAD only\n")
                .with_header(header("Allow", "GET, HEAD")),
        },
        hosts => {
            let (why, reason) = match hosts {
                [] => ("no Host".to_string(), "no Host header"),
                [host] => (
                    format!("Host {}", log_text(host)),
                    "the Host is not localhost, 127.0.0.1 or [::1]",
                ),
                _ => (
                    format!("{} Host headers", hosts.len()),
                    "more than one Host header",
                ),
            };
            note = format!(" ({why})");
            plain(
                403,
                &format!(
                    "forbidden: {reason}; serve answers only requests for a loopback name, \
                     so that no page elsewhere can read the store (DNS rebinding)\n"
                ),
            )
        }
    };
    response.add_header(header(
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    ));
    response.add_header(header("X-Content-Type-Options", "nosniff"));
    // The access log: what was asked, and what it got. Written before the response,
    // which may take as long as the client takes to read it.
    eprintln!(
        "{} {} {}{note}",
        log_text(request.method().as_str()),
        log_text(request.url()),
        response.status_code().0
    );
    let _ = request.respond(response);
}

/// Serves `store` at `addr` (a loopback address) until killed. Prints where, first.
pub fn serve(store: &Path, addr: SocketAddr) -> anyhow::Result<u8> {
    if !addr.ip().is_loopback() {
        bail!(
            "--addr {addr}: serve listens on loopback only (127.0.0.1 or ::1); \
             reach it from elsewhere through an SSH tunnel"
        );
    }
    let root = store.canonicalize().with_context(|| {
        format!(
            "no run store at {}: run a campaign first, or give --store",
            store.display()
        )
    })?;
    let server = Server::http(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .map(|a| a.to_string())
        .unwrap_or_else(|| addr.to_string());
    let server = Arc::new(server);
    let root = Arc::new(root);
    // Each worker takes requests from the server until it fails to accept connections
    // (out of file descriptors, say); the first such error ends the command.
    let (failed, failure) = mpsc::channel();
    for i in 0..WORKERS {
        let (server, root, failed) = (Arc::clone(&server), Arc::clone(&root), failed.clone());
        std::thread::Builder::new()
            .name(format!("serve-{i}"))
            .spawn(move || loop {
                match server.recv() {
                    Ok(request) => answer(&root, request),
                    Err(e) => {
                        let _ = failed.send(e);
                        return;
                    }
                }
            })
            .context("cannot start the threads that answer requests")?;
    }
    drop(failed);
    println!(
        "serving {} at http://{bound}/ (read-only; Ctrl-C to stop)",
        root.display()
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    match failure.recv() {
        Ok(e) => bail!("serving at {bound} stopped: {e}"),
        Err(_) => bail!("serving at {bound} stopped: every worker thread ended"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_host_names_are_answered() {
        for ok in [
            "localhost",
            "LocalHost:8080",
            "127.0.0.1",
            "127.0.0.1:1",
            "127.1.2.3:65535",
            "[::1]",
            "[::1]:8080",
            "[0:0:0:0:0:0:0:1]:80",
        ] {
            assert!(loopback_host(ok), "{ok:?} refused");
        }
        for refused in [
            "",
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "localhost.",
            "127.0.0.1.nip.io:8080",
            "10.77.0.11:8080",
            "0.0.0.0:8080",
            "::1",
            "[::1",
            "[::1]8080",
            "[::2]:80",
            "[::ffff:127.0.0.1]:80",
            "[localhost]:80",
            "localhost:",
            "localhost:80:80",
            "localhost:8o",
            "localhost:123456",
            "127.0.0.1 evil.example",
        ] {
            assert!(!loopback_host(refused), "{refused:?} answered");
        }
    }

    #[test]
    fn the_access_log_escapes_control_characters_and_cuts_long_paths() {
        assert_eq!(
            log_text("/runs/a%20b/report.html"),
            "/runs/a%20b/report.html"
        );
        let shown = log_text("/\u{1b}[2J\u{7}\r\t\u{7f}\u{9b}\u{202e}\\'\"");
        assert_eq!(shown, r#"/\u{1b}[2J\u{7}\r\t\u{7f}\u{9b}\u{202e}\\'""#);
        assert!(!shown.chars().any(char::is_control));
        let long = format!("/{}", "a".repeat(10_000));
        let shown = log_text(&long);
        assert!(shown.starts_with(&long[..LOG_CHARS]), "{shown}");
        assert!(shown.ends_with("...[10001 bytes]"), "{shown}");
        assert_eq!(shown.len(), LOG_CHARS + "...[10001 bytes]".len());
    }
}
