//! The lab's HTTP service against a real `redis-server` and a real PostgreSQL on
//! loopback (the lab's schema, keys prepared as a run prepares them): each design's own
//! behaviour, checked in Redis and in the database; the API's status codes; and what
//! it answers when its cache or its database is down. The service runs in-process on a
//! free port; requests go over one kept-alive HTTP/1.1 connection per test.

use coherence_cache::versioned;
use coherence_lab::schema;
use coherence_lab::service::{self, encode, Options, ServiceDesign};
use coherence_loopback::{Pg, Redis};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A version and its write id.
type Version = (i64, String);

/// A service of `design` over its own Redis and PostgreSQL.
struct Env {
    rt: tokio::runtime::Runtime,
    redis: Option<Redis>,
    redis_port: u16,
    redis_dir: tempfile::TempDir,
    pg: Pg,
    http: Http,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Env {
    fn new(design: ServiceDesign) -> Env {
        Env::with(design, |_| {})
    }

    fn with(design: ServiceDesign, tweak: impl FnOnce(&mut Options)) -> Env {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let redis_dir = tempfile::tempdir().unwrap();
        let redis = Redis::start(redis_dir.path());
        let pg = Pg::primary("db1", &[]);
        rt.block_on(async {
            let c = pg.client().await;
            c.batch_execute(schema::SCHEMA).await.unwrap();
            for key in ["k0", "k1"] {
                c.execute(
                    "INSERT INTO items (key, version, write_id) VALUES ($1, 0, 'init')",
                    &[&key],
                )
                .await
                .unwrap();
                c.execute(
                    "INSERT INTO item_versions (key, version, write_id) VALUES ($1, 0, 'init')",
                    &[&key],
                )
                .await
                .unwrap();
            }
        });
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let mut opts = Options::new(
            design,
            addr,
            Options::fixed_cache("r1", &redis.addr()),
            vec![pg.addr()],
        );
        tweak(&mut opts);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(async move {
            service::serve(&opts, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Env {
            rt,
            redis_port: redis.port,
            redis: Some(redis),
            redis_dir,
            pg,
            http: Http::connect(addr),
            stop: Some(stop),
        }
    }

    fn get(&mut self, key: &str) -> (u16, Value) {
        self.http.request("GET", &format!("/items/{key}"), None)
    }

    fn put(&mut self, key: &str, value: &str) -> (u16, Value) {
        let body = json!({ "value": value }).to_string();
        self.http
            .request("PUT", &format!("/items/{key}"), Some(&body))
    }

    fn redis(&self, args: &[&str]) -> String {
        coherence_loopback::redis_cli(self.redis_port, args)
    }

    fn cached(&self, key: &str) -> Option<String> {
        Some(self.redis(&["GET", key])).filter(|v| !v.is_empty())
    }

    /// The row and the version log of `key`.
    fn db(&self, key: &str) -> (Option<Version>, Vec<Version>) {
        self.rt.block_on(async {
            let c = self.pg.client().await;
            let row = c
                .query_opt(
                    "SELECT version, write_id FROM items WHERE key = $1",
                    &[&key],
                )
                .await
                .unwrap()
                .map(|r| (r.get(0), r.get(1)));
            let log = c
                .query(
                    "SELECT version, write_id FROM item_versions WHERE key = $1 ORDER BY version",
                    &[&key],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            (row, log)
        })
    }

    /// A versioned fill of `version`, as a reader that read it would attempt it.
    fn versioned_fill(&self, key: &str, version: i64) -> bool {
        let tomb = versioned::tombstone(key);
        let value = encode(version, "x");
        let v = version.to_string();
        self.redis(&[
            "EVAL",
            versioned::FILL_VERSIONED,
            "2",
            key,
            &tomb,
            &value,
            &v,
            "60000",
        ]) == "1"
    }

    fn stop_redis(&mut self) {
        self.redis = None;
    }

    fn start_redis(&mut self) {
        self.redis = Some(Redis::start_on(self.redis_port, self.redis_dir.path()));
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A kept-alive HTTP/1.1 connection.
struct Http {
    addr: std::net::SocketAddr,
    reader: BufReader<TcpStream>,
}

impl Http {
    fn connect(addr: std::net::SocketAddr) -> Http {
        let deadline = Instant::now() + Duration::from_secs(5);
        let stream = loop {
            match TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "the service does not listen: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Http {
            addr,
            reader: BufReader::new(stream),
        }
    }

    /// Sends a request and reads its response: the status and the JSON body.
    fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, text) = self.raw(method, path, body.unwrap_or(""));
        let value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{method} {path}: {status} with a body that is not JSON ({e}): {text:?}")
        });
        (status, value)
    }

    fn raw(&mut self, method: &str, path: &str, body: &str) -> (u16, String) {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.reader.get_mut().write_all(request.as_bytes()).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 "), "status line {line:?}");
        let status: u16 = line[9..12].parse().unwrap();
        let mut length = 0;
        loop {
            let mut header = String::new();
            self.reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let lower = header.to_ascii_lowercase();
            assert!(
                lower != "connection: close",
                "the service closes the connection"
            );
            if let Some(n) = lower.strip_prefix("content-length:") {
                length = n.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, String::from_utf8(body).unwrap())
    }
}

fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_read_misses_reads_the_database_fills_and_then_hits_the_cache() {
    let mut env = Env::new(ServiceDesign::DeleteAfterCommit);
    let (status, body) = env.get("k0");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"key": "k0", "value": "init", "version": 0, "source": "db"})
    );
    assert_eq!(
        env.cached("k0").as_deref(),
        Some(r#"{"version":0,"write":"init"}"#)
    );
    let ttl: i64 = env.redis(&["PTTL", "k0"]).parse().unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "the fill's TTL: {ttl}");
    let (status, body) = env.get("k0");
    assert_eq!((status, &body["source"]), (200, &json!("cache")), "{body}");
    assert_eq!(body["value"], "init");
    // A cached value that is not the service's JSON is a miss, and is overwritten.
    env.redis(&["SET", "k1", "garbage"]);
    let (status, body) = env.get("k1");
    assert_eq!((status, &body["source"]), (200, &json!("db")), "{body}");
    assert_eq!(
        env.cached("k1").as_deref(),
        Some(r#"{"version":0,"write":"init"}"#)
    );
}

#[test]
fn unknown_keys_bad_bodies_and_unknown_routes_are_refused_clearly() {
    let mut env = Env::new(ServiceDesign::DeleteAfterCommit);
    let (status, body) = env.get("nokey");
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nokey"), "{body}");
    assert_eq!(
        env.cached("nokey"),
        None,
        "nothing is cached for a missing row"
    );
    for bad in [
        "",
        "not json",
        "{}",
        r#"{"value": 3}"#,
        r#"{"value": ""}"#,
        "[1]",
    ] {
        let (status, body) = env.http.request("PUT", "/items/k0", Some(bad));
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(body["error"].as_str().unwrap().contains("value"), "{body}");
    }
    assert_eq!(
        env.db("k0").0,
        Some((0, "init".into())),
        "nothing was written"
    );
    let (status, _) = env.http.raw("GET", "/nothing", "");
    assert_eq!(status, 404);
    let (status, _) = env.http.raw("DELETE", "/items/k0", "");
    assert_eq!(status, 405);
    // The connection is still the same one (keep-alive), and still works.
    assert_eq!(env.get("k0").0, 200);
}

#[test]
fn delete_after_commit_commits_a_version_and_its_log_then_deletes_the_key() {
    let mut env = Env::new(ServiceDesign::DeleteAfterCommit);
    assert_eq!(env.get("k0").0, 200);
    assert!(env.cached("k0").is_some());
    let (status, body) = env.put("k0", "w-1");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"key": "k0", "value": "w-1", "version": 1}));
    assert_eq!(env.cached("k0"), None, "deleted after the commit");
    let (row, log) = env.db("k0");
    assert_eq!(row, Some((1, "w-1".into())));
    assert_eq!(log, [(0, "init".into()), (1, "w-1".into())]);
    let (_, body) = env.put("k0", "w-2");
    assert_eq!(body["version"], 2);
    let (status, body) = env.get("k0");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"key": "k0", "value": "w-2", "version": 2, "source": "db"})
    );
    // A key written for the first time starts as a prepared key does: init at 0.
    let (status, body) = env.put("fresh", "w-3");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 1);
    let (row, log) = env.db("fresh");
    assert_eq!(row, Some((1, "w-3".into())));
    assert_eq!(log, [(0, "init".into()), (1, "w-3".into())]);
    assert_eq!(env.get("fresh").1["value"], "w-3");
}

#[test]
fn delete_before_commit_deletes_first_and_writes_nothing_when_the_cache_is_down() {
    let mut env = Env::new(ServiceDesign::DeleteBeforeCommit);
    assert_eq!(env.get("k0").0, 200);
    let (status, body) = env.put("k0", "w-1");
    assert_eq!((status, &body["version"]), (200, &json!(1)), "{body}");
    assert_eq!(env.cached("k0"), None);
    // The DEL comes before the commit: when it fails, nothing was written.
    env.stop_redis();
    let (status, body) = env.put("k0", "w-2");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["applied"], false, "{body}");
    assert_eq!(env.db("k0").0, Some((1, "w-1".into())));
}

#[test]
fn update_cache_sets_the_new_value_instead_of_deleting() {
    let mut env = Env::with(ServiceDesign::UpdateCache, |o| {
        o.fill_ttl = Duration::from_secs(30)
    });
    assert_eq!(env.get("k0").0, 200);
    let (status, body) = env.put("k0", "w-1");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        env.cached("k0").as_deref(),
        Some(r#"{"version":1,"write":"w-1"}"#)
    );
    let ttl: i64 = env.redis(&["PTTL", "k0"]).parse().unwrap();
    assert!(ttl > 20_000 && ttl <= 30_000, "the SET's TTL: {ttl}");
    let (_, body) = env.get("k0");
    assert_eq!(body["source"], "cache");
    assert_eq!(body["version"], 1);
}

#[test]
fn delayed_double_delete_deletes_again_after_the_delay() {
    let mut env = Env::with(ServiceDesign::DelayedDoubleDelete, |o| {
        o.double_delete_delay = Duration::from_millis(700)
    });
    assert_eq!(env.get("k0").0, 200);
    let (status, body) = env.put("k0", "w-1");
    let answered = Instant::now();
    assert_eq!(status, 200, "{body}");
    assert_eq!(env.cached("k0"), None, "the first DEL");
    // A reader that read the old row before the commit fills it after the first DEL.
    let stale = encode(0, "init");
    env.redis(&["SET", "k0", &stale]);
    assert_eq!(env.cached("k0").as_deref(), Some(stale.as_str()));
    eventually("the second DEL", Duration::from_secs(3), || {
        env.cached("k0").is_none()
    });
    let took = answered.elapsed();
    assert!(
        took >= Duration::from_millis(600),
        "the second DEL came {took:?} after the answer, before the 700 ms delay"
    );
    // Filled again after the second DEL, the stale value stays: fewer, not none.
    env.redis(&["SET", "k0", &stale]);
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(env.cached("k0").as_deref(), Some(stale.as_str()));
}

#[test]
fn versioned_leaves_a_tombstone_that_refuses_an_older_fill() {
    let mut env = Env::new(ServiceDesign::Versioned);
    assert_eq!(env.get("k0").0, 200);
    assert_eq!(
        env.cached("k0").as_deref(),
        Some(r#"{"version":0,"write":"init"}"#)
    );
    let (status, body) = env.put("k0", "w-1");
    assert_eq!(status, 200, "{body}");
    assert_eq!(env.cached("k0"), None);
    assert_eq!(env.redis(&["GET", &versioned::tombstone("k0")]), "1");
    // A reader that read version 0 before the commit cannot fill it now.
    assert!(
        !env.versioned_fill("k0", 0),
        "the tombstone refuses version 0"
    );
    // The service's own fill of the new version is installed.
    let (_, body) = env.get("k0");
    assert_eq!(
        (&body["source"], &body["version"]),
        (&json!("db"), &json!(1))
    );
    assert_eq!(
        env.cached("k0").as_deref(),
        Some(r#"{"version":1,"write":"w-1"}"#)
    );
    // And its fill refuses a version older than the tombstone.
    env.redis(&["DEL", "k0"]);
    env.redis(&["SET", &versioned::tombstone("k0"), "5"]);
    let (status, body) = env.get("k0");
    assert_eq!((status, &body["version"]), (200, &json!(1)), "{body}");
    assert_eq!(
        env.cached("k0"),
        None,
        "the fill of 1 refused under a tombstone of 5"
    );
}

#[test]
fn pipeline_never_deletes_so_the_old_value_stays_cached() {
    let mut env = Env::new(ServiceDesign::Pipeline);
    assert_eq!(env.get("k0").0, 200);
    let (status, body) = env.put("k0", "w-1");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        env.cached("k0").as_deref(),
        Some(r#"{"version":0,"write":"init"}"#)
    );
    let (_, body) = env.get("k0");
    assert_eq!(body["source"], "cache");
    assert_eq!(
        body["value"], "init",
        "stale until the pipeline invalidates"
    );
    assert_eq!(env.db("k0").0, Some((1, "w-1".into())));
}

#[test]
fn with_the_cache_down_health_and_reads_fail_and_writes_commit_leaving_it_stale() {
    let mut env = Env::new(ServiceDesign::DeleteAfterCommit);
    let (status, body) = env.http.request("GET", "/health", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"db": "ok", "cache": "ok"}));
    env.stop_redis();
    let (status, body) = env.http.request("GET", "/health", None);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["db"], "ok");
    assert_ne!(body["cache"], "ok");
    let (status, body) = env.get("k0");
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("cache"), "{body}");
    // The commit happened; only the DEL after it failed.
    let (status, body) = env.put("k0", "w-1");
    assert_eq!(status, 200, "{body}");
    assert!(body["cache_error"].is_string(), "{body}");
    assert_eq!(env.db("k0").0, Some((1, "w-1".into())));
    // The cache comes back: the service reconnects.
    env.start_redis();
    eventually("health again", Duration::from_secs(5), || {
        env.http.request("GET", "/health", None).0 == 200
    });
    assert_eq!(env.get("k0").1["value"], "w-1");
}

#[test]
fn with_the_database_down_health_fails_and_writes_are_not_applied() {
    let mut env = Env::new(ServiceDesign::DeleteAfterCommit);
    assert_eq!(env.put("k0", "w-1").0, 200);
    env.pg.stop();
    let (status, body) = env.http.request("GET", "/health", None);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["cache"], "ok");
    assert_ne!(body["db"], "ok");
    let (status, body) = env.put("k0", "w-2");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["applied"], false, "{body}");
    let (status, body) = env.get("k1");
    assert_eq!(status, 503, "{body}");
    // Back: the next request connects again.
    env.pg.start();
    eventually("health again", Duration::from_secs(10), || {
        env.http.request("GET", "/health", None).0 == 200
    });
    assert_eq!(env.put("k0", "w-3").1["version"], 2);
}
