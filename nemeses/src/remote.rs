//! Running commands on a node and moving files to and from it. One trait, [`Remote`],
//! with one implementation per way of reaching a node: [`Netns`], a lab host that is a
//! Linux network namespace on this machine, and [`crate::ssh::Ssh`], a staging node
//! reached over SSH. Both pass the same test suite (`nemeses/tests/suite`).
//!
//! A failed command is reported with the node, the command, the exit status, stdout
//! and stderr, so that the user sees what the node said.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Its exit status (-1 when killed by a signal).
    pub status: i32,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

/// A command that could not run, did not finish or did not succeed on a node; or a file
/// that could not be moved to or from it. Without an exit status, `stderr` says why.
#[derive(Debug, thiserror::Error)]
pub struct RemoteError {
    /// The node.
    pub node: String,
    /// The command, as a shell would show it.
    pub command: String,
    /// Its exit status, if it ran.
    pub status: Option<i32>,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr, or why it could not start.
    pub stderr: String,
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(
                f,
                "on {}: `{}` exited with status {s}",
                self.node, self.command
            )?,
            None => write!(
                f,
                "on {}: `{}` failed without an exit status",
                self.node, self.command
            )?,
        }
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let text = text.trim();
            if !text.is_empty() {
                write!(f, "\n  {name}: {}", text.replace('\n', "\n    "))?;
            }
        }
        Ok(())
    }
}

/// A node that runs commands.
pub trait Remote {
    /// The node's name.
    fn node(&self) -> &str;

    /// Runs `argv` to completion and returns its output, whatever its exit status.
    fn execute(&self, argv: &[&str]) -> Result<Output, RemoteError>;

    /// Runs `argv` and fails unless it exits 0.
    fn run(&self, argv: &[&str]) -> Result<Output, RemoteError> {
        let out = self.execute(argv)?;
        if out.status == 0 {
            Ok(out)
        } else {
            Err(RemoteError {
                node: self.node().to_string(),
                command: shell_words(argv),
                status: Some(out.status),
                stdout: out.stdout,
                stderr: out.stderr,
            })
        }
    }

    /// Starts `argv` in the background, detached in its own process group, with stdout
    /// and stderr appended to `log` (a path on the node); returns its process id.
    fn spawn(&self, argv: &[&str], log: &Path) -> Result<u32, RemoteError>;

    /// Writes `contents` to the file `path` on the node, replacing it, with the
    /// permission bits `mode` (for example `0o644`, whatever the node's umask). The
    /// directory must exist.
    fn upload(&self, contents: &[u8], path: &Path, mode: u32) -> Result<(), RemoteError>;

    /// Reads the whole file `path` on the node. A missing file is an error that says so.
    fn download(&self, path: &Path) -> Result<Vec<u8>, RemoteError>;
}

/// A shared remote is a remote: one connection, many owners.
impl<R: Remote + ?Sized> Remote for std::sync::Arc<R> {
    fn node(&self) -> &str {
        (**self).node()
    }
    fn execute(&self, argv: &[&str]) -> Result<Output, RemoteError> {
        (**self).execute(argv)
    }
    fn run(&self, argv: &[&str]) -> Result<Output, RemoteError> {
        (**self).run(argv)
    }
    fn spawn(&self, argv: &[&str], log: &Path) -> Result<u32, RemoteError> {
        (**self).spawn(argv, log)
    }
    fn upload(&self, contents: &[u8], path: &Path, mode: u32) -> Result<(), RemoteError> {
        (**self).upload(contents, path, mode)
    }
    fn download(&self, path: &Path) -> Result<Vec<u8>, RemoteError> {
        (**self).download(path)
    }
}

/// One word as a POSIX shell reads it back unchanged, whatever it holds: single-quoted,
/// each `'` in it written `'\''`. The one quoting rule of the project: [`shell_word`]
/// and [`shell_words`] use it, and so does the SSH remote for the command line a node's
/// shell receives.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// One word for a shell, quoted only when it needs it: a word of letters, digits and
/// `-_./=:,@%+` stays as it is, which reads better in messages.
pub fn shell_word(word: &str) -> std::borrow::Cow<'_, str> {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        word.into()
    } else {
        shell_quote(word).into()
    }
}

/// A command as a shell reads it back ([`shell_word`] for each word): for messages,
/// and for commands built into scripts.
pub fn shell_words(argv: &[&str]) -> String {
    argv.iter()
        .map(|a| shell_word(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A lab host: a network namespace on this machine, entered with `ip netns exec`.
///
/// The namespace has its own network but shares this machine's filesystem, so
/// [`Remote::upload`] and [`Remote::download`] are plain local file writes and reads,
/// done by this process with its own rights. (The one difference inside the namespace:
/// `ip netns exec` bind-mounts the files of `/etc/netns/NAME/` over `/etc`; commands
/// run there see those, `upload` and `download` do not.)
#[derive(Debug, Clone)]
pub struct Netns {
    node: String,
    namespace: String,
}

impl Netns {
    /// The host `node`, living in the namespace `namespace`.
    pub fn new(node: impl Into<String>, namespace: impl Into<String>) -> Netns {
        Netns {
            node: node.into(),
            namespace: namespace.into(),
        }
    }

    /// The namespace's name.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespace]).args(argv);
        cmd
    }

    fn error(&self, argv: &[&str], why: String) -> RemoteError {
        RemoteError {
            node: self.node.clone(),
            command: shell_words(argv),
            status: None,
            stdout: String::new(),
            stderr: why,
        }
    }
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory with
/// the mode set, then renamed over `path`.
fn write_local(contents: &[u8], path: &Path, mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".coherence-upload-")
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

impl Remote for Netns {
    fn node(&self) -> &str {
        &self.node
    }

    fn execute(&self, argv: &[&str]) -> Result<Output, RemoteError> {
        let out = self
            .command(argv)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.error(argv, format!("cannot start `ip netns exec`: {e}")))?;
        Ok(Output {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn spawn(&self, argv: &[&str], log: &Path) -> Result<u32, RemoteError> {
        use std::os::unix::process::CommandExt;
        let open = || {
            File::options()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|e| {
                    self.error(argv, format!("cannot open the log {}: {e}", log.display()))
                })
        };
        let child = self
            .command(argv)
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?)
            .process_group(0)
            .spawn()
            .map_err(|e| self.error(argv, format!("cannot start `ip netns exec`: {e}")))?;
        // `ip netns exec` enters the namespace and execs the command: same process.
        Ok(child.id())
    }

    /// A local write (see [`Netns`]): atomic, through a temporary file in the same
    /// directory renamed over `path`; owned by this process's user.
    fn upload(&self, contents: &[u8], path: &Path, mode: u32) -> Result<(), RemoteError> {
        write_local(contents, path, mode).map_err(|e| RemoteError {
            node: self.node.clone(),
            command: format!("upload {}", path.display()),
            status: None,
            stdout: String::new(),
            stderr: format!("cannot write {}: {e}", path.display()),
        })
    }

    /// A local read (see [`Netns`]).
    fn download(&self, path: &Path) -> Result<Vec<u8>, RemoteError> {
        std::fs::read(path).map_err(|e| RemoteError {
            node: self.node.clone(),
            command: format!("download {}", path.display()),
            status: None,
            stdout: String::new(),
            stderr: format!("cannot read {}: {e}", path.display()),
        })
    }
}
