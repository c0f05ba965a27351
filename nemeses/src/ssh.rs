//! Reaching a staging node over SSH: [`Ssh`] runs commands and moves files through
//! libssh2 (the `ssh2` crate), set up by an [`SshConfig`], the settings a campaign file
//! is to give each staging node.
//!
//! The node's host key is always verified against the `known_hosts` file before
//! anything else happens; an unknown host or a different key is refused, with the
//! fingerprint it offered and what to do. Nothing is ever added to that file.
//!
//! What it assumes of a node: an OpenSSH-compatible server with the SFTP subsystem; a
//! POSIX shell as the user's login shell (a command is sent as one string of
//! single-quoted words, so no argument is ever interpreted by it); `cat`, `install`,
//! `rm`, `nohup` and `setsid` (coreutils and util-linux); and, with `sudo = true`, a
//! `sudo` that lets the user run anything without a password: every command runs as
//! `sudo -n -- COMMAND`, which fails rather than prompts.
//!
//! One connection per [`Ssh`], opened on first use and reused by every call (calls are
//! serialised). When it is found broken before a command was sent, it is reopened once
//! and the call goes on; a connection that fails or times out in the middle of a call
//! is dropped, and the next call opens a new one.

use crate::remote::{shell_quote, shell_words, Output, Remote, RemoteError};
use base64::Engine as _;
use serde::Deserialize;
use ssh2::{
    BlockDirections, Channel, ErrorCode, HashType, HostKeyType, KnownHostFileKind, MethodType,
    OpenFlags, OpenType, Session, Sftp,
};
use std::fmt;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How to reach a node over SSH; made to be embedded in campaign files (snake_case
/// fields, unknown ones refused).
///
/// ```toml
/// host = "db1.staging.internal"
/// port = 22                                  # the default
/// user = "coherence"
/// key = "/home/me/.ssh/id_ed25519"           # optional: without it, ssh-agent's keys
/// known_hosts = "/home/me/.ssh/known_hosts"  # required: host keys are always verified
/// sudo = true                                # run commands as `sudo -n -- COMMAND`
/// connect_timeout = "10s"                    # the default
/// command_timeout = "60s"                    # the default
/// ```
///
/// Paths may start with `~/` for the home directory. There is no passphrase field: a
/// key with a passphrase is used through ssh-agent (leave `key` out), so no secret is
/// ever in a campaign file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// The node's address: a host name or an IP address.
    pub host: String,
    /// Its SSH port (default 22).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Whom to log in as.
    pub user: String,
    /// A private key file without a passphrase. Without it, every key that ssh-agent
    /// (`$SSH_AUTH_SOCK`) holds is tried.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The known_hosts file (OpenSSH format) that must hold the node's host key, as
    /// `ssh-keyscan -p PORT HOST` prints it.
    pub known_hosts: PathBuf,
    /// Run every command, upload and download through `sudo -n --` (default false).
    #[serde(default)]
    pub sudo: bool,
    /// How long connecting, the SSH handshake and logging in may take (default 10s).
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "crate::duration"
    )]
    pub connect_timeout: Duration,
    /// How long one command, or one file transfer, may take (default 60s). Past it the
    /// call fails, and a command may still be running on the node.
    #[serde(
        default = "default_command_timeout",
        deserialize_with = "crate::duration"
    )]
    pub command_timeout: Duration,
}

fn default_port() -> u16 {
    22
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(60)
}

impl SshConfig {
    /// A config with the defaults: port 22, ssh-agent, no sudo, 10s to connect, 60s a
    /// command.
    pub fn new(
        host: impl Into<String>,
        user: impl Into<String>,
        known_hosts: impl Into<PathBuf>,
    ) -> SshConfig {
        SshConfig {
            host: host.into(),
            port: default_port(),
            user: user.into(),
            key: None,
            known_hosts: known_hosts.into(),
            sudo: false,
            connect_timeout: default_connect_timeout(),
            command_timeout: default_command_timeout(),
        }
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn address(&self) -> String {
        address(&self.host, self.port)
    }

    /// How known_hosts names this host: `HOST`, or `[HOST]:PORT` off port 22.
    pub fn known_hosts_name(&self) -> String {
        known_hosts_name(&self.host, self.port)
    }
}

/// A host key as the node offered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// Its type as `ssh-keygen -l` shows it: `ED25519`, `ECDSA`, `RSA`, `DSA`.
    pub kind: &'static str,
    /// Its fingerprint as `ssh-keygen -l` shows it: `SHA256:` and unpadded base64.
    pub fingerprint: String,
}

impl HostKey {
    /// Where OpenSSH keeps the public half of such a key on the node.
    fn file_on_node(&self) -> String {
        let name = match self.kind {
            "ED25519" => "ed25519",
            "ECDSA" => "ecdsa",
            "RSA" => "rsa",
            "DSA" => "dsa",
            _ => "*",
        };
        format!("/etc/ssh/ssh_host_{name}_key.pub")
    }
}

impl fmt::Display for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} key {}", self.kind, self.fingerprint)
    }
}

/// A host key that was refused: what the node offered, and where it was looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The node.
    pub node: String,
    /// Its host.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The key it offered.
    pub key: HostKey,
    /// The known_hosts file checked.
    pub known_hosts: PathBuf,
}

impl Refusal {
    fn unknown(&self) -> String {
        format!(
            "refusing {node}: the known_hosts file {file} holds no {kind} key for {name}, \
             and {address} offered the {key}. Check that fingerprint on the node itself \
             (`ssh-keygen -lf {on_node}`), then add the key: \
             `ssh-keyscan -p {port} {host} >> {file}`",
            node = self.node,
            file = self.known_hosts.display(),
            kind = self.key.kind,
            name = known_hosts_name(&self.host, self.port),
            address = address(&self.host, self.port),
            key = self.key,
            on_node = self.key.file_on_node(),
            port = self.port,
            host = self.host,
        )
    }

    fn mismatch(&self, revoked: bool) -> String {
        format!(
            "refusing {node}: {address} offered the {key}, which does not match the \
             known_hosts file {file}{revoked}. Someone may be intercepting the connection, \
             or the node's keys were replaced; no command was sent. If they were replaced, \
             check the new fingerprint on the node itself (`ssh-keygen -lf {on_node}`), \
             remove the old entry (`ssh-keygen -R '{name}' -f {file}`) and add the new one \
             (`ssh-keyscan -p {port} {host} >> {file}`)",
            node = self.node,
            address = address(&self.host, self.port),
            key = self.key,
            file = self.known_hosts.display(),
            revoked = if revoked {
                " (it is marked @revoked there)"
            } else {
                ""
            },
            on_node = self.key.file_on_node(),
            name = known_hosts_name(&self.host, self.port),
            port = self.port,
            host = self.host,
        )
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// How known_hosts names a host: `HOST`, or `[HOST]:PORT` off port 22.
fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Why a connection to a node could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The config cannot work.
    #[error("the ssh settings of {node} are wrong: {reason}")]
    Config {
        /// The node.
        node: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The known_hosts file cannot be read.
    #[error(
        "cannot read the known_hosts file {} for {node}: {reason}; create it with the \
         node's verified host key: `ssh-keyscan -p PORT HOST >> FILE`",
        path.display()
    )]
    KnownHostsFile {
        /// The node.
        node: String,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No TCP connection.
    #[error("cannot connect to {node} at {address}: {reason}")]
    Connect {
        /// The node.
        node: String,
        /// `host:port`.
        address: String,
        /// Why.
        reason: String,
    },
    /// The SSH handshake failed.
    #[error("the ssh handshake with {node} at {address} failed: {reason}")]
    Handshake {
        /// The node.
        node: String,
        /// `host:port`.
        address: String,
        /// Why.
        reason: String,
    },
    /// The known_hosts file holds no key of the offered type for the host.
    #[error("{}", .0.unknown())]
    UnknownHost(Box<Refusal>),
    /// The known_hosts file holds a different key for the host, or revokes this one.
    #[error("{}", refusal.mismatch(*revoked))]
    HostKeyMismatch {
        /// What was refused.
        refusal: Box<Refusal>,
        /// Whether the file revokes the key rather than holding another.
        revoked: bool,
    },
    /// The node did not accept the login.
    #[error("cannot log in to {node} at {address} as {user}: {reason}")]
    Auth {
        /// The node.
        node: String,
        /// `host:port`.
        address: String,
        /// The user.
        user: String,
        /// Why, and what to do.
        reason: String,
    },
}

/// A node reached over SSH. See the [module](self) for what it assumes of the node.
pub struct Ssh {
    node: String,
    config: SshConfig,
    conn: Mutex<Option<Conn>>,
}

impl fmt::Debug for Ssh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ssh")
            .field("node", &self.node)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// An open, verified and authenticated session.
struct Conn {
    session: Session,
    /// The session's socket, for waiting on it and for cutting it.
    socket: TcpStream,
}

impl Conn {
    /// Cuts the connection: whatever is under way fails at once instead of waiting.
    fn cut(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.session.set_blocking(true);
        self.session.set_timeout(1000);
        let _ = self.session.disconnect(None, "done", None);
    }
}

/// Why a call failed after its channel was open.
enum Fail {
    /// The connection is no longer usable: it is dropped.
    Broken(String),
    /// The command ran out of time: the connection is dropped.
    Timeout,
    /// The request failed, the connection is fine (an SFTP error: no such file...).
    Refused(String),
}

impl Fail {
    fn ssh(what: &str, e: ssh2::Error) -> Fail {
        match e.code() {
            ErrorCode::Session(LIBSSH2_ERROR_TIMEOUT) => Fail::Timeout,
            ErrorCode::SFTP(_) => Fail::Refused(format!("{what}: {}", e.message())),
            ErrorCode::Session(_) => Fail::Broken(format!("{what}: {}", e.message())),
        }
    }

    fn io(what: &str, e: std::io::Error) -> Fail {
        match e.kind() {
            std::io::ErrorKind::TimedOut => Fail::Timeout,
            _ => Fail::Broken(format!("{what}: {e}")),
        }
    }
}

const LIBSSH2_ERROR_TIMEOUT: i32 = -9;
const LIBSSH2_ERROR_EAGAIN: i32 = -37;

/// A call's time limit.
struct Deadline {
    start: Instant,
    limit: Duration,
}

impl Deadline {
    fn new(limit: Duration) -> Deadline {
        Deadline {
            start: Instant::now(),
            limit,
        }
    }

    fn left(&self) -> Result<Duration, Fail> {
        self.limit
            .checked_sub(self.start.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or(Fail::Timeout)
    }

    /// Bounds the session's next blocking call by the time left.
    fn arm(&self, session: &Session) -> Result<(), Fail> {
        session.set_timeout(millis(self.left()?));
        Ok(())
    }
}

/// libssh2's timeout: milliseconds, at least 1 (0 would mean none).
fn millis(d: Duration) -> u32 {
    d.as_millis().clamp(1, u32::MAX as u128) as u32
}

/// What a command printed, as bytes.
struct RawOutput {
    status: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Ssh {
    /// The node `node`, reached as `config` says. Nothing happens until the first call,
    /// which connects; see [`Ssh::connect`] to connect at once.
    pub fn new(node: impl Into<String>, config: SshConfig) -> Ssh {
        Ssh {
            node: node.into(),
            config,
            conn: Mutex::new(None),
        }
    }

    /// The node `node`, connected now: the host key is verified and the user logged in.
    pub fn connect(node: impl Into<String>, config: SshConfig) -> Result<Ssh, ConnectError> {
        let ssh = Ssh::new(node, config);
        let conn = ssh.open()?;
        *ssh.lock() = Some(conn);
        Ok(ssh)
    }

    /// How the node is reached.
    pub fn config(&self) -> &SshConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Option<Conn>> {
        // A panic while holding the lock leaves at worst a broken connection, which the
        // next call replaces.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a connection: TCP, handshake, host key check, login.
    fn open(&self) -> Result<Conn, ConnectError> {
        let c = &self.config;
        let config_error = |reason: &str| ConnectError::Config {
            node: self.node.clone(),
            reason: reason.to_string(),
        };
        if c.host.is_empty() {
            return Err(config_error("`host` is empty"));
        }
        if c.port == 0 {
            return Err(config_error("`port` is 0"));
        }
        if c.user.is_empty() {
            return Err(config_error("`user` is empty"));
        }
        // Read the known hosts first: no network traffic without a way to verify.
        let known_hosts = expand_home(&c.known_hosts);
        let known =
            std::fs::read_to_string(&known_hosts).map_err(|e| ConnectError::KnownHostsFile {
                node: self.node.clone(),
                path: known_hosts.clone(),
                reason: e.to_string(),
            })?;
        let entries = parse_known_hosts(&known);

        let address = c.address();
        let connect_error = |reason: String| ConnectError::Connect {
            node: self.node.clone(),
            address: address.clone(),
            reason,
        };
        let addrs: Vec<_> = (c.host.as_str(), c.port)
            .to_socket_addrs()
            .map_err(|e| connect_error(format!("cannot resolve {}: {e}", c.host)))?
            .collect();
        let mut last = format!("{} resolves to no address", c.host);
        let mut socket = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, c.connect_timeout) {
                Ok(s) => {
                    socket = Some(s);
                    break;
                }
                Err(e) => last = format!("{a}: {e}"),
            }
        }
        let socket = socket.ok_or_else(|| connect_error(last))?;
        let _ = socket.set_nodelay(true);
        let poll = socket
            .try_clone()
            .map_err(|e| connect_error(format!("cannot use the socket: {e}")))?;

        let handshake_error = |e: ssh2::Error| ConnectError::Handshake {
            node: self.node.clone(),
            address: address.clone(),
            reason: e.message().to_string(),
        };
        let mut session = Session::new().map_err(handshake_error)?;
        session.set_tcp_stream(socket);
        session.set_timeout(millis(c.connect_timeout));
        let supported = session
            .supported_algs(MethodType::HostKey)
            .map_err(handshake_error)?;
        let wanted = host_key_algorithms(&entries, &c.host, c.port, &supported);
        if !wanted.is_empty() {
            session
                .method_pref(MethodType::HostKey, &wanted.join(","))
                .map_err(handshake_error)?;
        }
        session.handshake().map_err(|e| match e.code() {
            ErrorCode::Session(LIBSSH2_ERROR_TIMEOUT) => ConnectError::Handshake {
                node: self.node.clone(),
                address: address.clone(),
                reason: format!(
                    "no answer within {} (connect_timeout); is an ssh server listening there?",
                    humantime::format_duration(c.connect_timeout)
                ),
            },
            _ => handshake_error(e),
        })?;
        let conn = Conn {
            session,
            socket: poll,
        };
        self.verify_host_key(&conn.session, &entries, &known_hosts)?;
        self.authenticate(&conn.session)?;
        Ok(conn)
    }

    fn verify_host_key(
        &self,
        session: &Session,
        entries: &[KnownHost<'_>],
        file: &Path,
    ) -> Result<(), ConnectError> {
        let c = &self.config;
        let handshake_error = |reason: &str| ConnectError::Handshake {
            node: self.node.clone(),
            address: c.address(),
            reason: reason.to_string(),
        };
        let (blob, kind) = session
            .host_key()
            .ok_or_else(|| handshake_error("the node sent no host key"))?;
        let hash = session
            .host_key_hash(HashType::Sha256)
            .ok_or_else(|| handshake_error("cannot hash the node's host key"))?;
        let key = HostKey {
            kind: match kind {
                HostKeyType::Ed25519 => "ED25519",
                HostKeyType::Ecdsa256 | HostKeyType::Ecdsa384 | HostKeyType::Ecdsa521 => "ECDSA",
                HostKeyType::Rsa => "RSA",
                HostKeyType::Dss => "DSA",
                HostKeyType::Unknown => "unknown",
            },
            fingerprint: format!(
                "SHA256:{}",
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
            ),
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(blob);
        let revoked = entries
            .iter()
            .any(|e| e.marker == Some("@revoked") && e.key == encoded);
        let mut known = session
            .known_hosts()
            .map_err(|e| handshake_error(e.message()))?;
        for e in entries.iter().filter(|e| e.marker.is_none()) {
            // A line libssh2 cannot read (a key type it does not know) cannot match.
            let _ = known.read_str(e.line, KnownHostFileKind::OpenSSH);
        }
        let refusal = || {
            Box::new(Refusal {
                node: self.node.clone(),
                host: c.host.clone(),
                port: c.port,
                key: key.clone(),
                known_hosts: file.to_path_buf(),
            })
        };
        let mismatch = |revoked| ConnectError::HostKeyMismatch {
            refusal: refusal(),
            revoked,
        };
        if revoked {
            return Err(mismatch(true));
        }
        match known.check_port(&c.host, c.port, blob) {
            ssh2::CheckResult::Match => Ok(()),
            ssh2::CheckResult::Mismatch => Err(mismatch(false)),
            ssh2::CheckResult::NotFound => Err(ConnectError::UnknownHost(refusal())),
            ssh2::CheckResult::Failure => Err(handshake_error(
                "checking the host key against known_hosts failed",
            )),
        }
    }

    fn authenticate(&self, session: &Session) -> Result<(), ConnectError> {
        let c = &self.config;
        let auth_error = |reason: String| ConnectError::Auth {
            node: self.node.clone(),
            address: c.address(),
            user: c.user.clone(),
            reason,
        };
        let accepts = || match session.auth_methods(&c.user) {
            Ok(m) => format!(" (it accepts: {m})"),
            Err(_) => String::new(),
        };
        match &c.key {
            Some(key) => {
                let key = expand_home(key);
                if let Err(e) = std::fs::metadata(&key) {
                    return Err(auth_error(format!(
                        "cannot read the key {}: {e}",
                        key.display()
                    )));
                }
                if let Err(e) = session.userauth_pubkey_file(&c.user, None, &key, None) {
                    return Err(auth_error(format!(
                        "the node refused the key {} ({}){}. Check that its public key is in \
                         the user's authorized_keys on the node; a key with a passphrase \
                         cannot be read from a file: load it into ssh-agent and leave `key` out",
                        key.display(),
                        e.message(),
                        accepts(),
                    )));
                }
            }
            None => {
                let sock = match std::env::var_os("SSH_AUTH_SOCK") {
                    Some(s) => format!("SSH_AUTH_SOCK is {}", Path::new(&s).display()),
                    None => "SSH_AUTH_SOCK is not set".to_string(),
                };
                let no_agent = |e: ssh2::Error| {
                    auth_error(format!(
                        "no `key` is set and ssh-agent cannot be used ({sock}: {}); set `key`, \
                         or start ssh-agent and `ssh-add` the key",
                        e.message()
                    ))
                };
                let mut agent = session.agent().map_err(no_agent)?;
                agent.connect().map_err(no_agent)?;
                agent.list_identities().map_err(no_agent)?;
                let ids = agent.identities().map_err(no_agent)?;
                if ids.is_empty() {
                    return Err(auth_error(format!(
                        "no `key` is set and ssh-agent holds no key ({sock}); `ssh-add` one"
                    )));
                }
                let accepted = ids.iter().any(|id| agent.userauth(&c.user, id).is_ok());
                let _ = agent.disconnect();
                if !accepted {
                    let names: Vec<_> = ids.iter().map(|id| id.comment().to_string()).collect();
                    return Err(auth_error(format!(
                        "the node refused every key ssh-agent holds ({}){}; check the user's \
                         authorized_keys on the node",
                        names.join(", "),
                        accepts()
                    )));
                }
            }
        }
        if session.authenticated() {
            Ok(())
        } else {
            Err(auth_error(format!("not logged in{}", accepts())))
        }
    }

    fn error(&self, command: &str, why: String) -> RemoteError {
        RemoteError {
            node: self.node.clone(),
            command: command.to_string(),
            status: None,
            stdout: String::new(),
            stderr: why,
        }
    }

    /// Opens a channel with `open` (connecting first when needed; once more on a fresh
    /// connection if the old one turned out broken) and runs `body` on it within the
    /// command timeout. A failure that leaves the connection unusable drops it.
    fn with_channel<C, T>(
        &self,
        command: &str,
        open: impl Fn(&Session) -> Result<C, ssh2::Error>,
        body: impl FnOnce(&Conn, &mut C, &Deadline) -> Result<T, Fail>,
    ) -> Result<T, RemoteError> {
        let mut guard = self.lock();
        let mut fresh = false;
        let mut channel = loop {
            if guard.is_none() {
                *guard = Some(
                    self.open()
                        .map_err(|e| self.error(command, e.to_string()))?,
                );
                fresh = true;
            }
            let conn = guard.as_ref().expect("connected above");
            conn.session.set_blocking(true);
            conn.session
                .set_timeout(millis(self.config.connect_timeout));
            match open(&conn.session) {
                Ok(c) => break c,
                // Nothing was sent yet: the connection broke since the last call.
                Err(_) if !fresh => discard(&mut guard),
                Err(e) => {
                    discard(&mut guard);
                    return Err(self.error(
                        command,
                        format!("cannot open an ssh channel: {}", e.message()),
                    ));
                }
            }
        };
        let conn = guard.as_ref().expect("connected above");
        let deadline = Deadline::new(self.config.command_timeout);
        let result = body(conn, &mut channel, &deadline);
        let broken = matches!(result, Err(Fail::Broken(_) | Fail::Timeout));
        if broken {
            // Cut first, so that closing the channel does not wait on it.
            conn.cut();
        }
        drop(channel);
        if broken {
            discard(&mut guard);
        }
        result.map_err(|f| {
            let why = match f {
                Fail::Broken(why) | Fail::Refused(why) => why,
                Fail::Timeout => format!(
                    "timed out after {} (command_timeout); a command may still be running on \
                     the node",
                    humantime::format_duration(self.config.command_timeout)
                ),
            };
            self.error(command, why)
        })
    }

    /// Runs `argv` as given (no sudo added); errors name `command`.
    fn exec(&self, command: &str, argv: &[&str]) -> Result<RawOutput, RemoteError> {
        let line = command_line(argv).map_err(|why| self.error(command, why))?;
        self.with_channel(command, Session::channel_session, |conn, ch, deadline| {
            deadline.arm(&conn.session)?;
            ch.exec(&line)
                .map_err(|e| Fail::ssh("cannot start the command", e))?;
            ch.send_eof()
                .map_err(|e| Fail::ssh("cannot close its stdin", e))?;
            conn.session.set_blocking(false);
            let out = read_output(conn, ch, deadline)?;
            conn.session.set_blocking(true);
            Ok(out)
        })
    }

    /// `argv`, behind `sudo -n --` when the config asks for sudo.
    fn elevated<'a>(&self, argv: &[&'a str]) -> Vec<&'a str> {
        let mut full = Vec::with_capacity(argv.len() + 3);
        if self.config.sudo {
            full.extend(["sudo", "-n", "--"]);
        }
        full.extend_from_slice(argv);
        full
    }

    /// Runs our own `argv` (with sudo if configured) and fails unless it exits 0.
    fn exec_checked(&self, argv: &[&str]) -> Result<RawOutput, RemoteError> {
        let argv = self.elevated(argv);
        let command = shell_words(&argv);
        let out = self.exec(&command, &argv)?;
        if out.status == 0 {
            Ok(out)
        } else {
            Err(RemoteError {
                node: self.node.clone(),
                command,
                status: Some(out.status),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }
}

/// Drops the connection, cut first so that nothing waits on it.
fn discard(conn: &mut Option<Conn>) {
    if let Some(c) = conn.take() {
        c.cut();
    }
}

/// Reads a started command's stdout and stderr as they come (neither can fill up and
/// stall the other) until it exits; the session is non-blocking.
fn read_output(conn: &Conn, ch: &mut Channel, deadline: &Deadline) -> Result<RawOutput, Fail> {
    let mut out = RawOutput {
        status: -1,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut progress = false;
        for (id, sink) in [(0, &mut out.stdout), (1, &mut out.stderr)] {
            match ch.stream(id).read(&mut buf) {
                Ok(n) => {
                    sink.extend_from_slice(&buf[..n]);
                    progress |= n > 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Fail::io("reading its output", e)),
            }
        }
        if ch.eof() {
            break;
        }
        if !progress {
            wait(conn, deadline)?;
        }
    }
    loop {
        match ch.wait_close() {
            Ok(()) => break,
            Err(e) if e.code() == ErrorCode::Session(LIBSSH2_ERROR_EAGAIN) => wait(conn, deadline)?,
            Err(e) => return Err(Fail::ssh("waiting for it to exit", e)),
        }
    }
    let signal = ch.exit_signal().ok().and_then(|s| s.exit_signal);
    out.status = match signal {
        Some(_) => -1,
        None => ch
            .exit_status()
            .map_err(|e| Fail::ssh("reading its exit status", e))?,
    };
    Ok(out)
}

/// Waits until the socket can move in the direction libssh2 is blocked on, at most
/// 100 ms and never past the deadline.
fn wait(conn: &Conn, deadline: &Deadline) -> Result<(), Fail> {
    let left = deadline.left()?;
    let events = match conn.session.block_directions() {
        BlockDirections::Inbound => libc::POLLIN,
        BlockDirections::Outbound => libc::POLLOUT,
        BlockDirections::Both => libc::POLLIN | libc::POLLOUT,
        BlockDirections::None => 0,
    };
    let timeout = left.min(Duration::from_millis(100));
    if events == 0 {
        std::thread::sleep(timeout.min(Duration::from_millis(1)));
        return Ok(());
    }
    let mut fd = libc::pollfd {
        fd: conn.socket.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    unsafe { libc::poll(&mut fd, 1, millis(timeout) as libc::c_int) };
    Ok(())
}

/// The one string a remote shell receives for `argv`: every word single-quoted, so
/// that nothing in it is expanded or interpreted.
fn command_line(argv: &[&str]) -> Result<String, String> {
    if argv.is_empty() {
        return Err("the command is empty".to_string());
    }
    if let Some(a) = argv.iter().find(|a| a.contains('\0')) {
        return Err(format!(
            "the argument {a:?} holds a NUL byte, which no command can receive"
        ));
    }
    Ok(argv
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" "))
}

/// `~/x` in the home directory.
fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => Path::new(&home).join(rest),
        _ => path.to_path_buf(),
    }
}

fn utf8<'a>(ssh: &Ssh, command: &str, path: &'a Path) -> Result<&'a str, RemoteError> {
    path.to_str()
        .ok_or_else(|| ssh.error(command, format!("{} is not UTF-8", path.display())))
}

/// Detaches `"$@"` with its output appended to the log `$1`: opens the log first (so
/// an unwritable log fails here), ignores SIGHUP from the start (sudo may close a
/// terminal it made), and prints the pid, which is the command's own: a
/// non-interactive shell keeps a background job in its own process group, so `setsid`
/// needs no fork, and `nohup` and `setsid` exec.
const SPAWN: &str = "trap '' HUP; exec 3>>\"$1\" || exit 1; shift; \
                     nohup setsid \"$@\" </dev/null >&3 2>&3 3>&- & echo $!";

impl Remote for Ssh {
    fn node(&self) -> &str {
        &self.node
    }

    fn execute(&self, argv: &[&str]) -> Result<Output, RemoteError> {
        let out = self.exec(&shell_words(argv), &self.elevated(argv))?;
        Ok(Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Starts it with `nohup setsid` behind `sh`, which opens the log (as root with
    /// sudo) and prints the pid.
    fn spawn(&self, argv: &[&str], log: &Path) -> Result<u32, RemoteError> {
        let command = shell_words(argv);
        let log = utf8(self, &command, log)?;
        let mut full = vec!["sh", "-c", SPAWN, "sh", log];
        full.extend_from_slice(argv);
        let full = self.elevated(&full);
        let out = self.exec(&command, &full)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        match stdout.trim().parse() {
            Ok(pid) if out.status == 0 => Ok(pid),
            _ => Err(RemoteError {
                node: self.node.clone(),
                command,
                status: Some(out.status),
                stdout,
                stderr,
            }),
        }
    }

    /// Writes a private temporary file in the node's `/tmp` over SFTP, then moves it
    /// into place with `install -m MODE` (through sudo when configured: the file is then
    /// owned by root) and removes the temporary file.
    fn upload(&self, contents: &[u8], path: &Path, mode: u32) -> Result<(), RemoteError> {
        let command = format!("upload {}", path.display());
        let dest = utf8(self, &command, path)?;
        let tmp = format!("/tmp/coherence-upload-{:016x}", rand::random::<u64>());
        let sent = self.with_channel(&command, Session::sftp, |conn, sftp: &mut Sftp, dl| {
            let what = format!("cannot write the temporary file {tmp}");
            dl.arm(&conn.session)?;
            let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUSIVE;
            let mut file = sftp
                .open_mode(Path::new(&tmp), flags, 0o600, OpenType::File)
                .map_err(|e| Fail::ssh(&what, e))?;
            for chunk in contents.chunks(256 * 1024) {
                dl.arm(&conn.session)?;
                file.write_all(chunk).map_err(|e| Fail::io(&what, e))?;
            }
            dl.arm(&conn.session)?;
            file.close().map_err(|e| Fail::ssh(&what, e))
        });
        let installed = sent.and_then(|()| {
            let mode = format!("{:o}", mode & 0o7777);
            self.exec_checked(&["install", "-m", &mode, "--", &tmp, dest])
        });
        // The temporary file is the login user's, whoever installed it.
        let _ = self.exec("rm", &["rm", "-f", "--", &tmp]);
        installed.map(|_| ())
    }

    /// Reads it over SFTP; with sudo, as the output of `sudo -n -- cat -- PATH`.
    fn download(&self, path: &Path) -> Result<Vec<u8>, RemoteError> {
        let command = format!("download {}", path.display());
        let src = utf8(self, &command, path)?;
        if self.config.sudo {
            return Ok(self.exec_checked(&["cat", "--", src])?.stdout);
        }
        self.with_channel(&command, Session::sftp, |conn, sftp: &mut Sftp, dl| {
            let what = format!("cannot read {src}");
            dl.arm(&conn.session)?;
            let mut file = sftp.open(path).map_err(|e| Fail::ssh(&what, e))?;
            let mut data = Vec::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                dl.arm(&conn.session)?;
                match file.read(&mut buf).map_err(|e| Fail::io(&what, e))? {
                    0 => return Ok(data),
                    n => data.extend_from_slice(&buf[..n]),
                }
            }
        })
    }
}

/// One line of a known_hosts file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KnownHost<'a> {
    /// The whole line.
    line: &'a str,
    /// `@revoked` or `@cert-authority`.
    marker: Option<&'a str>,
    /// Comma-separated host patterns, or one hashed name (`|1|...`).
    hosts: &'a str,
    /// `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`...
    key_type: &'a str,
    /// The key, base64.
    key: &'a str,
}

fn parse_known_hosts(text: &str) -> Vec<KnownHost<'_>> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let mut words = line.split_whitespace();
            let mut first = words.next()?;
            let marker = if first.starts_with('@') {
                let m = first;
                first = words.next()?;
                Some(m)
            } else {
                None
            };
            Some(KnownHost {
                line,
                marker,
                hosts: first,
                key_type: words.next()?,
                key: words.next()?,
            })
        })
        .collect()
}

/// The host key algorithms to ask the node for: those of the key types known_hosts
/// holds for this host by name, so that a node with several host keys offers one that
/// can be checked. Empty (libssh2's defaults) when it names none, or only hashed or
/// wildcard entries might match.
fn host_key_algorithms(
    entries: &[KnownHost<'_>],
    host: &str,
    port: u16,
    supported: &[&'static str],
) -> Vec<&'static str> {
    let bracketed = format!("[{host}]:{port}");
    let names_host = |patterns: &str| {
        patterns
            .split(',')
            .any(|p| p == bracketed || (p == host && port == 22))
    };
    let types: Vec<&str> = entries
        .iter()
        .filter(|e| e.marker.is_none() && names_host(e.hosts))
        .map(|e| e.key_type)
        .collect();
    const BY_TYPE: &[(&str, &[&str])] = &[
        ("ssh-ed25519", &["ssh-ed25519"]),
        ("ecdsa-sha2-nistp256", &["ecdsa-sha2-nistp256"]),
        ("ecdsa-sha2-nistp384", &["ecdsa-sha2-nistp384"]),
        ("ecdsa-sha2-nistp521", &["ecdsa-sha2-nistp521"]),
        ("ssh-rsa", &["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]),
        ("ssh-dss", &["ssh-dss"]),
    ];
    BY_TYPE
        .iter()
        .filter(|(t, _)| types.contains(t))
        .flat_map(|(_, algs)| algs.iter())
        .filter_map(|a| supported.iter().find(|s| *s == a).copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_quotes_every_word() {
        assert_eq!(command_line(&["echo", "a b"]).unwrap(), "'echo' 'a b'");
        assert_eq!(command_line(&["it's"]).unwrap(), r"'it'\''s'");
        assert_eq!(command_line(&["A=1", ""]).unwrap(), "'A=1' ''");
        assert!(command_line(&[]).is_err());
        assert!(command_line(&["a\0b"]).unwrap_err().contains("NUL"));
    }

    #[test]
    fn config_defaults_and_strictness() {
        let c: SshConfig =
            toml::from_str("host = \"127.0.0.1\"\nuser = \"root\"\nknown_hosts = \"/k\"\n")
                .unwrap();
        assert_eq!(c, SshConfig::new("127.0.0.1", "root", "/k"));
        let c: SshConfig = toml::from_str(
            "host = \"h\"\nport = 2222\nuser = \"u\"\nkey = \"/id\"\nknown_hosts = \"/k\"\n\
             sudo = true\nconnect_timeout = \"2s\"\ncommand_timeout = \"1m\"\n",
        )
        .unwrap();
        assert_eq!(c.port, 2222);
        assert_eq!(c.key.as_deref(), Some(Path::new("/id")));
        assert!(c.sudo);
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.command_timeout, Duration::from_secs(60));
        let e = toml::from_str::<SshConfig>("host = \"h\"\nuser = \"u\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("known_hosts"), "{e}");
        let e = toml::from_str::<SshConfig>(
            "host = \"h\"\nuser = \"u\"\nknown_hosts = \"/k\"\npassword = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `password`"), "{e}");
        let e = toml::from_str::<SshConfig>(
            "host = \"h\"\nuser = \"u\"\nknown_hosts = \"/k\"\ncommand_timeout = \"soon\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"5s\""), "{e}");
    }

    #[test]
    fn names_in_known_hosts() {
        let mut c = SshConfig::new("10.0.0.1", "u", "/k");
        assert_eq!(c.known_hosts_name(), "10.0.0.1");
        assert_eq!(c.address(), "10.0.0.1:22");
        c.port = 2222;
        assert_eq!(c.known_hosts_name(), "[10.0.0.1]:2222");
        c.host = "::1".into();
        assert_eq!(c.address(), "[::1]:2222");
    }

    #[test]
    fn known_hosts_lines() {
        let text = "# comment\n\n[h]:2222 ssh-ed25519 AAAA c\n@revoked * ssh-rsa BBBB\nbroken\n";
        let e = parse_known_hosts(text);
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].hosts, e[0].key_type, e[0].key),
            ("[h]:2222", "ssh-ed25519", "AAAA")
        );
        assert_eq!(e[0].marker, None);
        assert_eq!(
            (e[1].marker, e[1].hosts, e[1].key),
            (Some("@revoked"), "*", "BBBB")
        );
    }

    #[test]
    fn asks_for_the_key_types_known_for_the_host() {
        let supported = [
            "ssh-ed25519",
            "ecdsa-sha2-nistp256",
            "rsa-sha2-512",
            "ssh-rsa",
        ];
        let text = "a,[h]:2222 ssh-rsa X\n[h]:2222 ssh-ed25519 Y\nh ecdsa-sha2-nistp256 Z\n\
                    |1|salt|hash ssh-dss W\n";
        let e = parse_known_hosts(text);
        assert_eq!(
            host_key_algorithms(&e, "h", 2222, &supported),
            ["ssh-ed25519", "rsa-sha2-512", "ssh-rsa"]
        );
        assert_eq!(
            host_key_algorithms(&e, "h", 22, &supported),
            ["ecdsa-sha2-nistp256"]
        );
        assert!(host_key_algorithms(&e, "other", 22, &supported).is_empty());
    }

    #[test]
    fn home_expansion() {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        if let Some(home) = home {
            assert_eq!(expand_home(Path::new("~/.ssh/k")), home.join(".ssh/k"));
        }
        assert_eq!(expand_home(Path::new("/a/~/b")), PathBuf::from("/a/~/b"));
    }
}
