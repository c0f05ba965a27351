//! The lab's HTTP service as a command: `coherence lab service` with --redis and --db
//! serves against any Redis and PostgreSQL (here throwaway ones on loopback), and bad
//! flags are refused with exit status 2. And against the real lab: after `lab up` every
//! region's service answers /health (and `lab status` says so), a PUT then a GET
//! round-trips through each region's service into the lab's database and cache,
//! `restart_services` changes the design, a killed service is reported down and
//! restarted by the repair a run does, and `lab down` leaves no process behind. The lab
//! test needs root, so it is `#[ignore]`d and `scripts/test` runs it as root.

mod common;

use coherence_lab::cluster::{self, State};
use coherence_lab::service::ServiceDesign;
use common::{coherence, lab_processes, lab_up, text};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// One request over its own connection: the status and the JSON body.
fn request(base: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let host = base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn redis(host: &str, args: &[&str]) -> String {
    let o = std::process::Command::new("redis-cli")
        .args(["-h", host])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}; lab processes: {:?}",
            lab_processes()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_service_command_serves_any_redis_and_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let redis = coherence_loopback::Redis::start(dir.path());
    let pg = coherence_loopback::Pg::primary("db1", &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        pg.client()
            .await
            .batch_execute(coherence_lab::schema::SCHEMA)
            .await
            .unwrap()
    });
    let port = coherence_loopback::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_coherence"))
        .args([
            "lab",
            "service",
            "--design",
            "update-cache",
            "--region",
            "eu-west",
        ])
        .args([
            "--listen",
            &listen,
            "--redis",
            &redis.addr(),
            "--db",
            &pg.addr(),
        ])
        .args(["--fill-ttl-ms", "5000"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(&mut child);
    let base = format!("http://{listen}");
    eventually("the service listening", Duration::from_secs(10), || {
        std::net::TcpStream::connect(&listen).is_ok()
    });
    assert_eq!(
        request(&base, "GET", "/health", ""),
        (200, json!({"db": "ok", "cache": "ok"}))
    );
    let (code, body) = request(&base, "PUT", "/items/a", r#"{"value": "u-1"}"#);
    assert_eq!((code, &body["version"]), (200, &json!(1)), "{body}");
    assert_eq!(redis.cli(&["GET", "a"]), r#"{"version":1,"write":"u-1"}"#);
    let ttl: i64 = redis.cli(&["PTTL", "a"]).parse().unwrap();
    assert!(ttl > 0 && ttl <= 5000, "{ttl}");
    let (code, body) = request(&base, "GET", "/items/a", "");
    assert_eq!((code, &body["source"]), (200, &json!("cache")), "{body}");
    drop(child);
}

#[test]
fn bad_service_flags_are_refused_with_exit_status_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let cases: [(Vec<&str>, String); 3] = [
        (
            vec!["--design", "write-through", "--region", "r1"],
            "use delete-after-commit, delete-before-commit".into(),
        ),
        (
            vec!["--design", "versioned", "--region", "r0"],
            r#"no lab region "r0""#.into(),
        ),
        (
            vec![
                "--design",
                "versioned",
                "--region",
                "r1",
                "--listen",
                &taken,
                "--redis",
                "127.0.0.1:1",
                "--db",
                "127.0.0.1:1",
            ],
            format!("cannot listen on {taken}"),
        ),
    ];
    for (args, says) in cases {
        let mut argv = vec!["lab", "service"];
        argv.extend(&args);
        let o = coherence(&argv);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(&says), "{args:?}: {}", text(&o));
    }
}

#[test]
#[ignore = "needs root: the lab (network namespaces, a bridge, iptables); scripts/test runs it as root"]
fn every_region_serves_its_items_and_lab_down_leaves_nothing() {
    let down = {
        let (down, state, _nodes) = lab_up(&["--regions", "2", "--invalidator", "none"]);
        assert_eq!(state.service, ServiceDesign::DeleteAfterCommit);
        down
    };
    let state = State::load().unwrap().unwrap();
    let o = coherence(&["lab", "status"]);
    let status = text(&o);
    assert_eq!(o.status.code(), Some(0), "{status}");
    for line in ["r1-app 10.77.0.24", "r2-app 10.77.0.34"] {
        let row = status
            .lines()
            .find(|l| l.starts_with(line) && l.contains("service"))
            .unwrap_or_else(|| panic!("{line} in {status}"));
        assert!(
            row.contains("8080") && row.contains("yes") && row.contains("delete-after-commit"),
            "{row}"
        );
    }
    let ends = cluster::endpoints(&state).unwrap();
    let bases: Vec<String> = ends.regions.iter().map(|r| r.service.clone()).collect();
    assert_eq!(bases, ["http://10.77.0.24:8080", "http://10.77.0.34:8080"]);

    // Each region's service: healthy, and a PUT then a GET round-trip; the cache it
    // touches is its own region's, the database the lab's.
    for (i, base) in bases.iter().enumerate() {
        let (code, body) = request(base, "GET", "/health", "");
        assert_eq!(
            (code, &body),
            (200, &json!({"db": "ok", "cache": "ok"})),
            "{base}"
        );
        let key = format!("svc{i}");
        let unique = format!("w-{i}");
        let (code, body) = request(
            base,
            "PUT",
            &format!("/items/{key}"),
            &json!({"value": unique}).to_string(),
        );
        assert_eq!(code, 200, "{base}: {body}");
        assert_eq!(body, json!({"key": key, "value": unique, "version": 1}));
        let (code, body) = request(base, "GET", &format!("/items/{key}"), "");
        assert_eq!(code, 200, "{base}: {body}");
        assert_eq!(
            (&body["value"], &body["source"]),
            (&json!(unique), &json!("db"))
        );
        let (_, body) = request(base, "GET", &format!("/items/{key}"), "");
        assert_eq!(body["source"], "cache", "{base}: filled on the miss");
        let primary = ends.regions[i].primary.addr.split(':').next().unwrap();
        assert_eq!(
            redis(primary, &["GET", &key]),
            format!(r#"{{"version":1,"write":"{unique}"}}"#)
        );
    }

    // A campaign's design: every service restarted in it.
    let state = cluster::restart_services(&state, ServiceDesign::Versioned).unwrap();
    assert_eq!(
        State::load().unwrap().unwrap().service,
        ServiceDesign::Versioned
    );
    let (code, body) = request(
        &bases[0],
        "PUT",
        "/items/svc0",
        &json!({"value": "w-v"}).to_string(),
    );
    assert_eq!((code, &body["version"]), (200, &json!(2)), "{body}");
    let r1 = ends.regions[0].primary.addr.split(':').next().unwrap();
    assert_eq!(redis(r1, &["GET", "coherence:invalidated:svc0"]), "2");
    assert!(text(&coherence(&["lab", "status"])).contains("versioned"));

    // A killed service is reported down, and the repair a run does brings it back.
    for pid in cluster::namespace_pids("coh-r2-app").unwrap() {
        // SAFETY: no preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    eventually("r2-app's service gone", Duration::from_secs(5), || {
        !cluster::service_health("10.77.0.34".parse().unwrap())
    });
    let o = coherence(&["lab", "status"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("down: service on r2-app"), "{}", text(&o));
    let restarted = cluster::repair(&state, &|_| {}).unwrap();
    assert_eq!(restarted, ["service on r2-app"]);
    assert_eq!(request(&bases[1], "GET", "/health", "").0, 200);
    assert!(text(&coherence(&["lab", "status"])).contains("versioned"));

    // Down: no service (and no other lab process) is left.
    drop(down);
    assert!(cluster::lab_namespaces().unwrap().is_empty());
    eventually("every lab process gone", Duration::from_secs(5), || {
        lab_processes().is_empty()
    });
    assert_eq!(lab_processes(), Vec::<String>::new());
}
