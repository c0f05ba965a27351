//! Reading a run directory's files and writing outputs, without following links.
//!
//! A run directory may come from elsewhere (a CI artifact, a colleague's upload), so its
//! files are opened as what they claim to be: [`open_regular`] refuses a symbolic link
//! or anything that is not a regular file, checked on the opened file itself (no race
//! between a check and the open). Outputs ([`write_output`]) are written to a temporary
//! file beside their target and renamed into place: a link at the target is replaced,
//! never written through, a reader never sees half a file, and an output that is one of
//! the inputs is refused before anything is written.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Opens `path` for reading if it is a regular file, not following a link.
///
/// A symbolic link, a directory, a FIFO, a socket or a device is refused with an error
/// that names the file and says what to do. The open itself does not follow a link
/// (`O_NOFOLLOW`) and does not block on a FIFO (`O_NONBLOCK`, harmless on regular
/// files); the kind is checked on the opened file.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} is a symbolic link; a run directory's files must be regular files \
                         inside it, since a link could make coherence read and show any file: \
                         replace the link with a copy of the file it points to",
                        path.display()
                    ),
                )
            } else {
                e
            }
        })?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is {what}; a run directory's files must be regular files: \
                 remove it or replace it with the file it should be",
                path.display()
            ),
        ));
    }
    Ok(file)
}

/// Reads the regular file at `path` as [`open_regular`] opens it; `None` when there is
/// nothing at `path`.
pub fn read_regular(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut file = match open_regular(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut file, &mut bytes)?;
    Ok(Some(bytes))
}

/// Why an output was not written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The output is one of the inputs.
    #[error(
        "refusing to write {}: it is the input {}, which would be overwritten; choose another output",
        output.display(),
        input.display()
    )]
    IsInput {
        /// The output asked for.
        output: PathBuf,
        /// The input it is.
        input: PathBuf,
    },
    /// Writing failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The output.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Refuses an `output` that is one of `inputs`: the same file (device and inode, so a
/// hard link or a symbolic link to an input counts), or the same canonical path. An
/// output or input that does not exist is no match.
pub fn refuse_input(output: &Path, inputs: &[&Path]) -> Result<(), OutputError> {
    let out_meta = std::fs::metadata(output).ok();
    let out_canonical = std::fs::canonicalize(output).ok();
    for input in inputs {
        let same_inode = match (&out_meta, std::fs::metadata(input)) {
            (Some(o), Ok(i)) => o.dev() == i.dev() && o.ino() == i.ino(),
            _ => false,
        };
        let same_path = out_canonical.is_some()
            && out_canonical.as_deref() == std::fs::canonicalize(input).ok().as_deref();
        if same_inode || same_path {
            return Err(OutputError::IsInput {
                output: output.to_path_buf(),
                input: input.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Writes `contents` to `output` safely: refused if `output` is one of `inputs`
/// ([`refuse_input`]); otherwise written to a new temporary file in the same directory,
/// synced, and renamed over `output`. A symbolic link at `output` is replaced by the
/// file, and what it pointed to is left alone. The file's mode is as `std::fs::write`
/// gives (0666 less the umask).
pub fn write_output(output: &Path, contents: &[u8], inputs: &[&Path]) -> Result<(), OutputError> {
    refuse_input(output, inputs)?;
    let io_err = |source| OutputError::Io {
        path: output.to_path_buf(),
        source,
    };
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = output
        .file_name()
        .ok_or_else(|| {
            io_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path names no file: give a file name",
            ))
        })?
        .to_string_lossy();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(io_err)?;
    tmp.write_all(contents).map_err(io_err)?;
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(output).map_err(|e| io_err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_regular_file_opens_and_a_link_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.toml");
        std::fs::write(&real, "name = \"x\"\n").unwrap();
        assert_eq!(read_regular(&real).unwrap().unwrap(), b"name = \"x\"\n");
        let link = dir.path().join("campaign.toml");
        symlink(&real, &link).unwrap();
        let e = open_regular(&link).unwrap_err().to_string();
        assert!(e.contains(&link.display().to_string()), "{e}");
        assert!(
            e.contains("is a symbolic link") && e.contains("replace the link"),
            "{e}"
        );
        assert!(read_regular(&link).is_err());
        // A dangling link is refused too, not taken for a missing file.
        let dangling = dir.path().join("run.json");
        symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(read_regular(&dangling).is_err());
        assert!(read_regular(&dir.path().join("absent")).unwrap().is_none());
    }

    #[test]
    fn a_directory_and_a_fifo_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_regular(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let fifo = dir.path().join("history.jsonl");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_regular(&fifo).unwrap_err().to_string();
        assert!(e.contains("is not a regular file"), "{e}");
    }

    #[test]
    fn an_output_replaces_a_link_and_leaves_its_target_alone() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let out = dir.path().join("results.json");
        symlink(&victim, &out).unwrap();
        write_output(&out, b"{}", &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(std::fs::symlink_metadata(&out)
            .unwrap()
            .file_type()
            .is_file());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{}");
        // Again over the file, and nothing is left beside it.
        write_output(&out, b"[]", &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "[]");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["results.json", "victim"]);
    }

    #[test]
    fn an_output_that_is_an_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("history.jsonl");
        std::fs::write(&input, "original").unwrap();
        let check = |output: &Path| {
            let e = write_output(output, b"junit", &[&input]).unwrap_err();
            assert!(matches!(e, OutputError::IsInput { .. }), "{e}");
            let m = e.to_string();
            assert!(m.contains(&output.display().to_string()), "{m}");
            assert!(m.contains(&input.display().to_string()), "{m}");
            assert_eq!(std::fs::read_to_string(&input).unwrap(), "original");
        };
        check(&input);
        // The same file by another path, a symbolic link and a hard link.
        check(&dir.path().join(".").join("history.jsonl"));
        let link = dir.path().join("link");
        symlink(&input, &link).unwrap();
        check(&link);
        let hard = dir.path().join("hard");
        std::fs::hard_link(&input, &hard).unwrap();
        check(&hard);
        // Another file is fine.
        write_output(&dir.path().join("junit.xml"), b"junit", &[&input]).unwrap();
    }

    #[test]
    fn the_mode_and_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("report.html");
        write_output(&out, b"<html>", &[]).unwrap();
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        // 0666 less a umask: readable by its owner, never executable.
        assert_eq!(mode & 0o600, 0o600, "{mode:o}");
        assert_eq!(mode & 0o111, 0, "{mode:o}");
        let e = write_output(&dir.path().join("missing").join("x"), b"", &[]).unwrap_err();
        assert!(matches!(e, OutputError::Io { .. }), "{e}");
    }
}
