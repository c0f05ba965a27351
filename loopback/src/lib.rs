//! Throwaway real servers on loopback for tests: a `redis-server` ([`Redis`]) and a
//! PostgreSQL made with `initdb` in a temporary directory ([`Pg`]), each on a free port
//! of 127.0.0.1 and stopped when dropped. The servers are the distribution's (scripts/setup
//! installs them); nothing is mocked. When the tests run as root, PostgreSQL's tools run
//! as user `postgres` (PostgreSQL refuses root).

#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A TCP port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a port of 127.0.0.1")
        .local_addr()
        .expect("a bound address")
        .port()
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// What `redis-cli` against 127.0.0.1:`port` prints for `args`, trimmed.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (scripts/setup installs it)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A `redis-server` on 127.0.0.1 without persistence; killed when dropped.
pub struct Redis {
    /// Its port.
    pub port: u16,
    child: Child,
}

impl Redis {
    /// Starts one on a free port, its files in `dir`; returns once it answers PING.
    pub fn start(dir: &Path) -> Redis {
        Redis::start_on(free_port(), dir)
    }

    /// Starts one on `port` (one that was stopped, say), its files in `dir`.
    pub fn start_on(port: u16, dir: &Path) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup installs it)");
        let redis = Redis { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.cli(&["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What `redis-cli` prints for `args` against it.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The newest installed PostgreSQL's `tool`.
pub fn pg_tool(tool: &str) -> PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL under /usr/lib/postgresql (scripts/setup installs it)")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    let v = versions.last().expect("a PostgreSQL version");
    PathBuf::from(format!("/usr/lib/postgresql/{v}/bin/{tool}"))
}

/// Runs a PostgreSQL tool in `cwd`, as `postgres` when we are root; panics with its
/// output if it fails.
pub fn pg_run(tool: &str, args: &[&str], cwd: &Path) {
    let out = pg_command(tool)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run a PostgreSQL tool");
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pg_command(tool: &str) -> Command {
    let bin = pg_tool(tool);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    }
}

/// A throwaway PostgreSQL server on 127.0.0.1 (user `postgres`, trust); stopped
/// (immediately) when dropped.
pub struct Pg {
    /// Its name, for messages.
    pub name: String,
    /// Its port.
    pub port: u16,
    /// Its directory: `data/`, its socket and `server.log`.
    pub dir: tempfile::TempDir,
}

impl Pg {
    /// Its data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Its data directory, as text.
    pub fn data_str(&self) -> String {
        self.data().display().to_string()
    }

    /// A temporary directory the server's user owns.
    pub fn new_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("a temporary directory");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown")
                .success();
            assert!(ok, "chown the server's directory to postgres");
        }
        dir
    }

    /// An empty server named `name` on `port`, not initialised yet (see
    /// [`Pg::init`]).
    pub fn at(name: &str, port: u16) -> Pg {
        Pg {
            name: name.into(),
            port,
            dir: Pg::new_dir(),
        }
    }

    /// Initialises its data directory with `initdb`.
    pub fn init(&self) {
        let data = self.data_str();
        pg_run(
            "initdb",
            &["-D", &data, "-U", "postgres", "-A", "trust", "-E", "UTF8"],
            self.dir.path(),
        );
    }

    /// Appends this server's own settings (and `settings`, lines of
    /// `postgresql.conf`) to its configuration.
    pub fn configure(&self, settings: &[&str]) {
        let mut conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = off\nhot_standby = on\nmax_wal_senders = 10\n",
            self.port,
            self.dir.path().display()
        );
        for s in settings {
            conf.push_str(s);
            conf.push('\n');
        }
        let path = self.data().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).expect("postgresql.conf");
        text.push_str(&conf);
        std::fs::write(&path, text).expect("write postgresql.conf");
    }

    /// A new primary with these settings, started.
    pub fn primary(name: &str, settings: &[&str]) -> Pg {
        let pg = Pg::at(name, free_port());
        pg.init();
        pg.configure(settings);
        pg.start();
        pg
    }

    /// A streaming standby of `primary`, from a base backup, started.
    pub fn standby(name: &str, primary: &Pg) -> Pg {
        let pg = Pg::at(name, free_port());
        let data = pg.data_str();
        let port = primary.port.to_string();
        pg_run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
            ],
            pg.dir.path(),
        );
        pg.configure(&[]);
        pg.start();
        pg
    }

    /// Starts it and waits until it accepts connections.
    pub fn start(&self) {
        let log = self.dir.path().join("server.log").display().to_string();
        pg_run(
            "pg_ctl",
            &["-D", &self.data_str(), "-l", &log, "-w", "start"],
            self.dir.path(),
        );
    }

    /// Kills the postmaster (SIGKILL): a crash, not a shutdown.
    pub fn kill(&self) {
        let pid =
            std::fs::read_to_string(self.data().join("postmaster.pid")).expect("postmaster.pid");
        let pid = pid.lines().next().unwrap_or_default().trim().to_string();
        let ok = Command::new("kill")
            .args(["-9", &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -9 {pid}");
    }

    /// Stops it (fast shutdown) and waits until it is down.
    pub fn stop(&self) {
        pg_run(
            "pg_ctl",
            &["-D", &self.data_str(), "-m", "fast", "-w", "stop"],
            self.dir.path(),
        );
    }

    /// Promotes a standby.
    pub fn promote(&self) {
        pg_run(
            "pg_ctl",
            &["-D", &self.data_str(), "-w", "promote"],
            self.dir.path(),
        );
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A client as `postgres` (its connection runs on the current tokio runtime).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", self.name));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let data = self.data_str();
        let _ = pg_command("pg_ctl")
            .args(["-D", data.as_str(), "-m", "immediate", "-w", "stop"])
            .current_dir(self.dir.path())
            .output();
    }
}
