//! `Ssh` without a `key`: logging in with the keys of ssh-agent (`$SSH_AUTH_SOCK`),
//! against a real sshd. Its own test binary, since it changes the process's
//! environment. Needs root (sshd does): `#[ignore]`d, and `scripts/test` runs it as
//! root.

mod suite;

use coherence_nemeses::remote::Remote;
use coherence_nemeses::ssh::{ConnectError, Ssh};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use suite::require_root;
use suite::sshd::Sshd;

/// An ssh-agent in the foreground, stopped when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs root: a real sshd on 127.0.0.1; scripts/test runs it as root"]
fn logs_in_with_the_agents_keys() {
    require_root("a real sshd on 127.0.0.1");
    let sshd = Sshd::start();
    let mut config = sshd.config("root");
    config.key = None;

    std::env::remove_var("SSH_AUTH_SOCK");
    let e = Ssh::connect("staging-1", config.clone()).expect_err("no key, no agent");
    assert!(matches!(e, ConnectError::Auth { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("SSH_AUTH_SOCK is not set"), "{text}");
    assert!(text.contains("set `key`"), "{text}");

    let sock = sshd.dir.path().join("agent.sock");
    let _agent = Agent(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .spawn()
            .expect("ssh-agent (scripts/setup installs openssh-client)"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "ssh-agent made no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::env::set_var("SSH_AUTH_SOCK", &sock);

    let e = Ssh::connect("staging-1", config.clone()).expect_err("an agent without keys");
    assert!(e.to_string().contains("ssh-agent holds no key"), "{e}");

    let added = Command::new("ssh-add")
        .arg(&sshd.client_key)
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(added.status.success(), "ssh-add: {added:?}");
    let ssh = Ssh::connect("staging-1", config).expect("log in with the agent's key");
    assert_eq!(ssh.run(&["echo", "agent"]).unwrap().stdout, "agent\n");
}
