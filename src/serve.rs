//! `coherence serve`: the run store over HTTP, read-only, on loopback. Only GET and
//! HEAD; only files inside the store (a path that leaves it, by `..` or a link, is not
//! found); pages may load nothing from anywhere (a strict Content-Security-Policy).

use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use tiny_http::{Header, Method, Response, Server};

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
        let index = ["index.html", "report.html"]
            .iter()
            .map(|name| file.join(name))
            .find(|p| p.is_file())?;
        file = index.canonicalize().ok()?;
    }
    // Links are followed above; what they reach must still be inside the store.
    (file.starts_with(root) && file.is_file()).then_some(file)
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
    println!(
        "serving {} at http://{bound}/ (read-only; Ctrl-C to stop)",
        root.display()
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let header = |k: &str, v: &str| Header::from_bytes(k, v).expect("a valid header");
    for request in server.incoming_requests() {
        let security = [
            header(
                "Content-Security-Policy",
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
            ),
            header("X-Content-Type-Options", "nosniff"),
        ];
        let response = match request.method() {
            Method::Get | Method::Head => match resolve(&root, request.url()) {
                Some(file) => match std::fs::File::open(&file) {
                    Ok(f) => Response::from_file(f)
                        .with_header(header("Content-Type", content_type(&file)))
                        .boxed(),
                    Err(_) => Response::from_string("not found\n")
                        .with_status_code(404)
                        .boxed(),
                },
                None => Response::from_string("not found\n")
                    .with_status_code(404)
                    .boxed(),
            },
            _ => Response::from_string("read-only: GET and HEAD only\n")
                .with_status_code(405)
                .with_header(header("Allow", "GET, HEAD"))
                .boxed(),
        };
        let mut response = response;
        for h in security {
            response.add_header(h);
        }
        // The access log, on stderr: what was asked, and what it got.
        eprintln!(
            "{} {} {}",
            request.method(),
            request.url(),
            response.status_code().0
        );
        let _ = request.respond(response);
    }
    Ok(0)
}
