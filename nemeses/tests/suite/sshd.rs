//! A real OpenSSH server for the tests, on 127.0.0.1 and a free port, with everything
//! of its own in a temporary directory: a fresh host key, a fresh client key in its
//! authorized_keys, its config, pid file and log. Needs root (and `/run/sshd`, which it
//! makes). Stopped when dropped.

use coherence_nemeses::ssh::SshConfig;
use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running sshd.
pub struct Sshd {
    /// Its directory: keys, config, log.
    pub dir: tempfile::TempDir,
    /// Its address.
    pub addr: String,
    /// Its port.
    pub port: u16,
    /// Its private host key (the public one is next to it, `.pub`).
    pub host_key: PathBuf,
    /// A private client key its authorized_keys accepts.
    pub client_key: PathBuf,
    /// A known_hosts file with its host key, as `ssh-keyscan` printed it.
    pub known_hosts: PathBuf,
    child: Child,
}

/// Makes an ed25519 key pair without a passphrase at `path` and `path.pub`.
pub fn keygen(path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen (scripts/setup installs openssh-client)");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
}

/// The SHA256 fingerprint of a public key, as `ssh-keygen -lf` prints it.
pub fn fingerprint(public: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen -lf: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().nth(1).unwrap().to_string()
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

impl Sshd {
    /// Starts one on 127.0.0.1 and a free port.
    pub fn start() -> Sshd {
        Sshd::start_at(None, "127.0.0.1")
    }

    /// Starts one on `addr`, inside the network namespace `netns` when given (then on
    /// port 22: the namespace is the node's own).
    pub fn start_at(netns: Option<&str>, addr: &str) -> Sshd {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "{} is missing: run scripts/setup (it installs openssh-server)",
            sshd.display()
        );
        // The privilege separation directory.
        fs::create_dir_all("/run/sshd").unwrap();
        chmod(Path::new("/run/sshd"), 0o755);
        let dir = tempfile::Builder::new()
            .prefix("coherence-sshd-")
            .tempdir()
            .unwrap();
        // Other users (the unprivileged test user) read authorized_keys through it.
        chmod(dir.path(), 0o755);
        let host_key = dir.path().join("host_key");
        let client_key = dir.path().join("client_key");
        keygen(&host_key, "coherence-test-host");
        keygen(&client_key, "coherence-test-client");
        let authorized = dir.path().join("authorized_keys");
        fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
        chmod(&authorized, 0o644);
        let config = dir.path().join("sshd_config");
        fs::write(
            &config,
            format!(
                "ListenAddress {addr}\n\
                 HostKey {host_key}\n\
                 AuthorizedKeysFile {authorized}\n\
                 PidFile {pid}\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\n\
                 MaxStartups 100\n\
                 PrintMotd no\n\
                 Subsystem sftp internal-sftp\n",
                host_key = host_key.display(),
                authorized = authorized.display(),
                pid = dir.path().join("sshd.pid").display(),
            ),
        )
        .unwrap();
        let log = dir.path().join("sshd.log");
        for _ in 0..5 {
            let port = if netns.is_some() { 22 } else { free_port() };
            let file = fs::File::create(&log).unwrap();
            let mut command = match netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns]).arg(sshd);
                    c
                }
                None => Command::new(sshd),
            };
            let mut child = command
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .args(["-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .expect("start sshd");
            let deadline = Instant::now() + Duration::from_secs(10);
            let ready = loop {
                if child.try_wait().unwrap().is_some() {
                    break false; // the port was taken meanwhile, or worse: the log says
                }
                if let Ok(mut s) = TcpStream::connect((addr, port)) {
                    let mut banner = [0u8; 8];
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    if s.read_exact(&mut banner).is_ok() && &banner == b"SSH-2.0-" {
                        break true;
                    }
                }
                assert!(Instant::now() < deadline, "sshd does not answer on {port}");
                std::thread::sleep(Duration::from_millis(20));
            };
            if !ready {
                eprintln!(
                    "sshd on port {port} exited: {}",
                    fs::read_to_string(&log).unwrap()
                );
                continue;
            }
            let scan = Command::new("ssh-keyscan")
                .args(["-p", &port.to_string(), addr])
                .output()
                .expect("ssh-keyscan");
            assert!(scan.status.success(), "ssh-keyscan: {scan:?}");
            assert!(
                !scan.stdout.is_empty(),
                "ssh-keyscan found no key: {scan:?}"
            );
            let known_hosts = dir.path().join("known_hosts");
            fs::write(&known_hosts, &scan.stdout).unwrap();
            return Sshd {
                dir,
                addr: addr.to_string(),
                port,
                host_key,
                client_key,
                known_hosts,
                child,
            };
        }
        panic!("sshd did not start: {}", fs::read_to_string(&log).unwrap());
    }

    /// How to reach it as `user` with the client key.
    pub fn config(&self, user: &str) -> SshConfig {
        let mut c = SshConfig::new(self.addr.clone(), user, &self.known_hosts);
        c.port = self.port;
        c.key = Some(self.client_key.clone());
        c.connect_timeout = Duration::from_secs(5);
        c.command_timeout = Duration::from_secs(30);
        c
    }

    /// The fingerprint of its host key.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.host_key.with_extension("pub"))
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The processes it forked for connections (not itself).
    pub fn connection_processes(&self) -> Vec<u32> {
        let mut parent = HashMap::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                parent.insert(pid, ppid);
            }
        }
        let master = self.child.id();
        let descends = |mut pid: u32| loop {
            match parent.get(&pid) {
                Some(&p) if p == master => return true,
                Some(&p) if p > 1 => pid = p,
                _ => return false,
            }
        };
        parent.keys().copied().filter(|&p| descends(p)).collect()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
