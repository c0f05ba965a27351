//! `Ssh` against a real OpenSSH server on 127.0.0.1: the shared remote suite (as root,
//! and as an unprivileged user through sudo), host key verification, login failures,
//! timeouts and reconnection. Needs root (sshd does): every test is `#[ignore]`d, and
//! `scripts/test` runs them as root.

mod suite;

use coherence_nemeses::remote::Remote;
use coherence_nemeses::ssh::{ConnectError, Ssh};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use suite::sshd::{keygen, Sshd};
use suite::{remote_suite, require_root, KILLED, KILLED_UNDER_SUDO};

const SSHD: &str = "a real sshd on 127.0.0.1";
const USER: &str = "a real sshd and a throwaway login user";

/// A directory only root can enter.
fn root_only(sshd: &Sshd, name: &str) -> PathBuf {
    let d = sshd.dir.path().join(name);
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    d
}

#[test]
#[ignore = "needs root: a real sshd on 127.0.0.1; scripts/test runs it as root"]
fn suite_over_ssh() {
    require_root(SSHD);
    let sshd = Sshd::start();
    let ssh = Ssh::connect("staging-1", sshd.config("root")).expect("connect");
    let scratch = tempfile::tempdir().unwrap();
    remote_suite(&ssh, scratch.path(), KILLED);
}

/// Held while adding or deleting a user: both lock /etc/passwd.
static ACCOUNTS: Mutex<()> = Mutex::new(());

/// A throwaway login user with a home and a sudo rule; removed when dropped.
struct User {
    name: String,
    sudoers: PathBuf,
}

impl User {
    fn create(sshd: &Sshd) -> User {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let _one_at_a_time = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
        let name = format!("cohtest-{}-{n}", std::process::id());
        let home = sshd.dir.path().join("home");
        fs::create_dir(&home).unwrap();
        let out = Command::new("useradd")
            // "*": no password, but not locked (sshd refuses locked accounts).
            .args([
                "--system",
                "--no-create-home",
                "--password",
                "*",
                "--shell",
                "/bin/sh",
            ])
            .arg("--home-dir")
            .arg(&home)
            .arg(&name)
            .output()
            .expect("useradd (scripts/setup installs passwd)");
        assert!(out.status.success(), "useradd: {out:?}");
        let user = User {
            sudoers: PathBuf::from(format!("/etc/sudoers.d/{name}")),
            name,
        };
        let chown = Command::new("chown")
            .arg(&user.name)
            .arg(&home)
            .status()
            .unwrap();
        assert!(chown.success());
        fs::write(
            &user.sudoers,
            format!("{} ALL=(root) NOPASSWD: ALL\n", user.name),
        )
        .unwrap();
        fs::set_permissions(
            &user.sudoers,
            std::os::unix::fs::PermissionsExt::from_mode(0o440),
        )
        .unwrap();
        user
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.sudoers);
        let _one_at_a_time = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

#[test]
#[ignore = "needs root: a real sshd and a throwaway login user with a sudo rule; scripts/test runs it as root"]
fn suite_over_ssh_as_an_unprivileged_user_through_sudo() {
    require_root(USER);
    assert!(
        Path::new("/usr/bin/sudo").exists(),
        "sudo is missing: run scripts/setup (it installs sudo)"
    );
    let sshd = Sshd::start();
    let user = User::create(&sshd);
    let locked = root_only(&sshd, "locked");
    fs::write(locked.join("secret"), b"root's\0bytes").unwrap();

    // Without sudo, root's files are out of reach, and the errors say so.
    let plain = Ssh::connect("staging-1", sshd.config(&user.name)).expect("connect");
    let id = plain.run(&["id", "-u"]).unwrap();
    assert_ne!(id.stdout.trim(), "0");
    let e = plain
        .upload(b"x", &locked.join("file"), 0o600)
        .expect_err("upload into root's directory");
    assert!(e.to_string().contains("Permission denied"), "{e}");
    let e = plain
        .download(&locked.join("secret"))
        .expect_err("download from root's directory");
    assert!(
        e.to_string().to_lowercase().contains("permission denied"),
        "{e}"
    );

    // With sudo, commands run as root and files go where root's go, owned by root.
    let mut config = sshd.config(&user.name);
    config.sudo = true;
    let ssh = Ssh::connect("staging-1", config).expect("connect");
    let out = ssh.run(&["sh", "-c", "id -u; echo $SUDO_USER"]).unwrap();
    assert_eq!(out.stdout, format!("0\n{}\n", user.name));
    assert_eq!(
        ssh.download(&locked.join("secret")).unwrap(),
        b"root's\0bytes"
    );
    let file = locked.join("file");
    ssh.upload(b"installed", &file, 0o600)
        .expect("upload through sudo");
    assert_eq!(fs::read(&file).unwrap(), b"installed");
    let owner = ssh
        .run(&["stat", "-c", "%u %a", file.to_str().unwrap()])
        .unwrap();
    assert_eq!(owner.stdout.trim(), "0 600");
    // Only this user's: the other tests of this binary upload at the same time.
    let leftovers = ssh.run(&[
        "find",
        "/tmp",
        "-maxdepth",
        "1",
        "-name",
        "coherence-upload-*",
        "-user",
        &user.name,
    ]);
    assert_eq!(
        leftovers.unwrap().stdout,
        "",
        "the temporary upload files are removed"
    );

    remote_suite(&ssh, &locked, KILLED_UNDER_SUDO);
}

fn refused(config: coherence_nemeses::ssh::SshConfig) -> ConnectError {
    Ssh::connect("staging-1", config).expect_err("the connection must be refused")
}

#[test]
#[ignore = "needs root: a real sshd on 127.0.0.1; scripts/test runs it as root"]
fn a_different_host_key_is_refused() {
    require_root(SSHD);
    let sshd = Sshd::start();
    let other = sshd.dir.path().join("other_host_key");
    keygen(&other, "someone-else");
    let public = fs::read_to_string(other.with_extension("pub")).unwrap();
    let known = sshd.dir.path().join("known_hosts_other");
    fs::write(&known, format!("[127.0.0.1]:{} {public}", sshd.port)).unwrap();
    let mut config = sshd.config("root");
    config.known_hosts = known.clone();

    let e = refused(config.clone());
    assert!(
        matches!(e, ConnectError::HostKeyMismatch { revoked: false, .. }),
        "{e:?}"
    );
    let text = e.to_string();
    let keyscan = format!(
        "ssh-keyscan -p {} 127.0.0.1 >> {}",
        sshd.port,
        known.display()
    );
    let remove = format!("ssh-keygen -R '[127.0.0.1]:{}'", sshd.port);
    for part in [
        "staging-1",
        &format!("127.0.0.1:{}", sshd.port),
        &format!("ED25519 key {}", sshd.fingerprint()),
        &known.display().to_string(),
        "does not match",
        &keyscan,
        &remove,
    ] {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }

    // Through a call: the error reaches the caller, and nothing ran.
    let marker = sshd.dir.path().join("ran");
    let ssh = Ssh::new("staging-1", config);
    let e = ssh
        .execute(&["touch", marker.to_str().unwrap()])
        .expect_err("no command over an unverified connection");
    assert!(e.to_string().contains("does not match"), "{e}");
    assert!(
        !marker.exists(),
        "a command ran on a host that was not verified"
    );
}

#[test]
#[ignore = "needs root: a real sshd on 127.0.0.1; scripts/test runs it as root"]
fn an_unknown_host_is_refused() {
    require_root(SSHD);
    let sshd = Sshd::start();
    let empty = sshd.dir.path().join("known_hosts_empty");
    fs::write(&empty, "").unwrap();
    // The right key, but for another port: another host as far as known_hosts goes.
    let elsewhere = sshd.dir.path().join("known_hosts_elsewhere");
    let public = fs::read_to_string(sshd.host_key.with_extension("pub")).unwrap();
    fs::write(&elsewhere, format!("[127.0.0.1]:1 {public}")).unwrap();
    for file in [empty, elsewhere] {
        let mut config = sshd.config("root");
        config.known_hosts = file.clone();
        let e = refused(config);
        assert!(matches!(e, ConnectError::UnknownHost(_)), "{e:?}");
        let text = e.to_string();
        let keyscan = format!(
            "ssh-keyscan -p {} 127.0.0.1 >> {}",
            sshd.port,
            file.display()
        );
        for part in [
            "staging-1",
            &format!("[127.0.0.1]:{}", sshd.port),
            &format!("ED25519 key {}", sshd.fingerprint()),
            &file.display().to_string(),
            "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub",
            &keyscan,
        ] {
            assert!(text.contains(part), "{part:?} missing from:\n{text}");
        }
    }
    // A revoked key is refused even where another line accepts it.
    let revoked = sshd.dir.path().join("known_hosts_revoked");
    let accepted = fs::read_to_string(&sshd.known_hosts).unwrap();
    fs::write(&revoked, format!("{accepted}@revoked * {public}")).unwrap();
    let mut config = sshd.config("root");
    config.known_hosts = revoked;
    let e = refused(config);
    assert!(
        matches!(e, ConnectError::HostKeyMismatch { revoked: true, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("@revoked"), "{e}");
}

#[test]
#[ignore = "needs root: a real sshd on 127.0.0.1; scripts/test runs it as root"]
fn a_missing_known_hosts_file_is_refused() {
    require_root(SSHD);
    let sshd = Sshd::start();
    let mut config = sshd.config("root");
    config.known_hosts = sshd.dir.path().join("nowhere");
    let e = refused(config);
    assert!(matches!(e, ConnectError::KnownHostsFile { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("nowhere") && text.contains("ssh-keyscan"),
        "{text}"
    );
}

#[test]
#[ignore = "needs root: a real sshd on 127.0.0.1; scripts/test runs it as root"]
fn a_wrong_client_key_is_refused() {
    require_root(SSHD);
    let sshd = Sshd::start();
    let stranger = sshd.dir.path().join("stranger_key");
    keygen(&stranger, "stranger");
    let mut config = sshd.config("root");
    config.key = Some(stranger.clone());
    let e = refused(config.clone());
    assert!(matches!(e, ConnectError::Auth { .. }), "{e:?}");
    let text = e.to_string();
    for part in [
        "staging-1",
        "as root",
        &stranger.display().to_string(),
        "authorized_keys",
    ] {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
    config.key = Some(sshd.dir.path().join("no_such_key"));
    let e = refused(config);
    assert!(e.to_string().contains("cannot read the key"), "{e}");
}

#[test]
#[ignore = "needs root: a real sshd on 127.0.0.1; scripts/test runs it as root"]
fn a_command_past_its_timeout_fails_and_the_next_call_reconnects() {
    require_root(SSHD);
    let sshd = Sshd::start();
    let mut config = sshd.config("root");
    config.command_timeout = Duration::from_secs(1);
    let ssh = Ssh::connect("staging-1", config).expect("connect");
    let start = Instant::now();
    let e = ssh
        .execute(&["sleep", "30"])
        .expect_err("sleep 30 within 1s");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(4), "the timeout took {took:?}");
    let text = e.to_string();
    assert!(text.contains("sleep 30"), "{text}");
    assert!(text.contains("timed out after 1s"), "{text}");
    let out = ssh.run(&["echo", "again"]).expect("the next call works");
    assert_eq!(out.stdout, "again\n");
    // A transfer is bounded the same way (a FIFO nobody writes to never ends).
    let fifo = sshd.dir.path().join("fifo");
    ssh.run(&["mkfifo", fifo.to_str().unwrap()]).unwrap();
    let start = Instant::now();
    let e = ssh
        .download(&fifo)
        .expect_err("reading a FIFO without a writer");
    assert!(start.elapsed() < Duration::from_secs(4));
    assert!(e.to_string().contains("timed out"), "{e}");
    // Let the blocked SFTP server go: a writer that closes at once.
    use std::os::unix::fs::OpenOptionsExt;
    let _ = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo);
}

#[test]
#[ignore = "needs root: a real sshd on 127.0.0.1; scripts/test runs it as root"]
fn a_dropped_connection_is_reopened() {
    require_root(SSHD);
    let sshd = Sshd::start();
    let ssh = Ssh::connect("staging-1", sshd.config("root")).expect("connect");
    assert_eq!(ssh.run(&["echo", "one"]).unwrap().stdout, "one\n");
    let serving = sshd.connection_processes();
    assert!(!serving.is_empty(), "sshd serves the connection");
    for pid in &serving {
        // SAFETY: kill has no memory preconditions; these are our sshd's own children.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(ssh.run(&["echo", "two"]).unwrap().stdout, "two\n");
    assert!(
        sshd.connection_processes()
            .iter()
            .all(|p| !serving.contains(p)),
        "a new connection serves the call"
    );
}

/// The mean time of `true` over `ssh`.
fn command_time(ssh: &Ssh) -> Duration {
    let n = 50;
    let start = Instant::now();
    for _ in 0..n {
        ssh.run(&["true"]).unwrap();
    }
    start.elapsed() / n
}

#[test]
#[ignore = "needs root: a real sshd and a throwaway login user; scripts/test runs it as root"]
fn round_trip_figures() {
    require_root(USER);
    let sshd = Sshd::start();
    let user = User::create(&sshd);
    let start = Instant::now();
    let ssh = Ssh::connect("staging-1", sshd.config(&user.name)).expect("connect");
    let connect = start.elapsed();
    let plain = command_time(&ssh);
    let data = vec![7u8; 1 << 20];
    let file = sshd.dir.path().join("home/mib");
    let start = Instant::now();
    ssh.upload(&data, &file, 0o644).unwrap();
    let upload = start.elapsed();
    let start = Instant::now();
    assert_eq!(ssh.download(&file).unwrap().len(), data.len());
    let download = start.elapsed();
    let mut config = sshd.config(&user.name);
    config.sudo = true;
    let sudo = command_time(&Ssh::connect("staging-1", config).unwrap());
    // root's login shell is bash, which reads root's ~/.bashrc for commands over ssh.
    let root = command_time(&Ssh::connect("staging-1", sshd.config("root")).unwrap());
    eprintln!(
        "ssh on loopback: connect {connect:.1?}; a command (`true`, user with /bin/sh) \
         {plain:.1?}, through sudo {sudo:.1?}, as root (bash) {root:.1?}; \
         upload 1 MiB {upload:.1?}, download 1 MiB {download:.1?}"
    );
    assert!(plain < Duration::from_secs(1), "{plain:?} a command");
}
