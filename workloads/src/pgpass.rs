//! libpq's password file (`~/.pgpass`, or the file `PGPASSFILE` names), read as libpq
//! reads it, so a staging campaign needs no password in it.
//!
//! Each line is `hostname:port:database:username:password`; a field may be `*`, which
//! matches anything, and `\:` and `\\` stand for a colon and a backslash. Lines starting
//! with `#` are comments. The first line that matches gives the password. As libpq does,
//! a file that is not a regular file, or that its group or others may read or write, is
//! not used, with a warning (`chmod 0600` it).

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

/// The connection a password is looked up for.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The host as the campaign names it.
    pub host: &'a str,
    /// The port.
    pub port: &'a str,
    /// The database.
    pub dbname: &'a str,
    /// The user.
    pub user: &'a str,
}

/// The password the passfile `text` gives `target`: the first matching line's.
pub fn lookup(text: &str, target: Target<'_>) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('#') || line.is_empty() {
            return None;
        }
        let rest = field_matches(line, target.host)?;
        let rest = field_matches(rest, target.port)?;
        let rest = field_matches(rest, target.dbname)?;
        let rest = field_matches(rest, target.user)?;
        Some(unescape_password(rest))
    })
}

/// If the first field of `line` matches `value` (`*`, or equal once `\` escapes are
/// read), the rest of the line after its colon.
fn field_matches<'l>(line: &'l str, value: &str) -> Option<&'l str> {
    if let Some(rest) = line.strip_prefix("*:") {
        return Some(rest);
    }
    let mut field = String::new();
    let mut chars = line.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => field.push(chars.next().map_or('\\', |(_, c)| c)),
            ':' => return (field == value).then(|| &line[i + 1..]),
            c => field.push(c),
        }
    }
    // A line with fewer than five fields matches nothing.
    None
}

/// The password field: up to the first unescaped colon, escapes read.
fn unescape_password(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().unwrap_or('\\')),
            ':' => break,
            c => out.push(c),
        }
    }
    out
}

/// Where the password file is: `PGPASSFILE`, else `~/.pgpass` (`HOME`); `None` when
/// neither is set. `env` reads the environment.
pub fn location(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    if let Some(file) = env("PGPASSFILE").filter(|f| !f.is_empty()) {
        return Some(PathBuf::from(file));
    }
    env("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".pgpass"))
}

/// What reading the password file found.
#[derive(Debug, Default)]
pub struct Found {
    /// Its text, when it exists and may be used.
    pub text: Option<String>,
    /// Why it was not used (its permissions, its kind), to show the user.
    pub warning: Option<String>,
}

/// Reads the password file at `path` as libpq would: a missing file is no file; one that
/// is not a regular file, or that its group or others may access, is not used, with a
/// warning.
pub fn read(path: &std::path::Path) -> Found {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) => return Found::default(),
    };
    if !meta.is_file() {
        return Found {
            text: None,
            warning: Some(format!(
                "password file {} is not a plain file; it is not used",
                path.display()
            )),
        };
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Found {
            text: None,
            warning: Some(format!(
                "password file {} has group or world access (mode {:04o}); it is not used: \
                 permissions should be u=rw (0600) or less (`chmod 0600 {}`)",
                path.display(),
                mode & 0o7777,
                path.display()
            )),
        };
    }
    match std::fs::read_to_string(path) {
        Ok(text) => Found {
            text: Some(text),
            warning: None,
        },
        Err(e) => Found {
            text: None,
            warning: Some(format!(
                "cannot read password file {}: {e}; it is not used",
                path.display()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Target<'static> = Target {
        host: "db.staging",
        port: "5432",
        dbname: "coherence",
        user: "tester",
    };

    #[test]
    fn the_first_matching_line_wins() {
        let text = "# comment: db.staging:5432:coherence:tester:not-this\n\
                    other:5432:coherence:tester:wrong-host\n\
                    db.staging:5433:coherence:tester:wrong-port\n\
                    db.staging:5432:coherence:tester:right\n\
                    db.staging:5432:coherence:tester:later\n";
        assert_eq!(lookup(text, T).as_deref(), Some("right"));
        assert_eq!(lookup("", T), None);
        assert_eq!(
            lookup("db.staging:5432:coherence:someone-else:x\n", T),
            None
        );
    }

    #[test]
    fn wildcards_match_any_value() {
        assert_eq!(lookup("*:*:*:*:any\n", T).as_deref(), Some("any"));
        assert_eq!(
            lookup("db.staging:*:*:tester:per-host\r\n", T).as_deref(),
            Some("per-host")
        );
        // `*` is a wildcard only as a whole field.
        assert_eq!(lookup("db.*:5432:coherence:tester:x\n", T), None);
    }

    #[test]
    fn escapes_in_fields_and_the_password() {
        let t = Target {
            host: "fe80::1",
            ..T
        };
        assert_eq!(
            lookup("fe80\\:\\:1:5432:coherence:tester:p\\:w\\\\d\n", t).as_deref(),
            Some("p:w\\d")
        );
        // The password ends at an unescaped colon.
        assert_eq!(
            lookup("*:*:*:*:first:second\n", T).as_deref(),
            Some("first")
        );
        // An empty password is a password.
        assert_eq!(lookup("*:*:*:*:\n", T).as_deref(), Some(""));
    }

    #[test]
    fn short_lines_match_nothing() {
        assert_eq!(lookup("db.staging:5432:coherence:tester\n", T), None);
        assert_eq!(lookup("*:*:*\n", T), None);
    }

    #[test]
    fn its_location_and_its_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().as_os_str().to_owned();
        let env = |name: &str| (name == "HOME").then(|| home.clone());
        assert_eq!(location(&env), Some(dir.path().join(".pgpass")));
        let named = |name: &str| match name {
            "PGPASSFILE" => Some(OsString::from("/etc/coherence/pgpass")),
            "HOME" => Some(home.clone()),
            _ => None,
        };
        assert_eq!(
            location(&named),
            Some(PathBuf::from("/etc/coherence/pgpass"))
        );
        assert_eq!(location(&|_| None), None);

        let file = dir.path().join(".pgpass");
        assert!(read(&file).text.is_none() && read(&file).warning.is_none());
        std::fs::write(&file, "*:*:*:*:secret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let found = read(&file);
        assert!(found.text.is_none());
        let w = found.warning.unwrap();
        assert!(
            w.contains("group or world access") && w.contains("chmod 0600"),
            "{w}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let found = read(&file);
        assert_eq!(found.text.as_deref(), Some("*:*:*:*:secret\n"));
        assert!(found.warning.is_none());
        let found = read(dir.path());
        assert!(found.text.is_none() && found.warning.unwrap().contains("not a plain file"));
    }
}
