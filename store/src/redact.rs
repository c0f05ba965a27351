//! Redaction of secrets in a campaign file (TOML) before it is stored or shown.
//!
//! The document is parsed with `toml_edit` and walked at every depth: tables, inline
//! tables, arrays, arrays of tables and dotted keys alike. Every value under a key whose
//! name looks like a secret ([`is_secret_key`]) is replaced by [`REDACTED`], in place:
//! comments, key order, quoting and layout of everything else are kept, so the stored
//! file reads like the one that was run. A text that is not valid TOML is refused, never
//! passed through: its secrets could not be found.
//!
//! What redaction cannot see: a secret written in a comment, or inside a value under an
//! innocent name (`writer = "postgres://user:pw@db"`).

use std::fmt;
use toml_edit::visit_mut::{self, VisitMut};
use toml_edit::{DocumentMut, Formatted, Item, KeyMut, Value};

/// What a redacted value reads.
pub const REDACTED: &str = "<redacted>";

/// The parts of a key's name that make it a secret, compared after the name is lowered
/// and stripped of `_`, `-` and `.` (so `api_key`, `API-Key` and `apikey` are one).
const SECRET_PARTS: [&str; 8] = [
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "apikey",
    "privatekey",
];

/// Whether a key's name looks like it holds a secret.
///
/// The rule: the name, lowered and without `_`, `-` and `.`, contains `password`,
/// `passwd`, `passphrase`, `secret`, `token`, `credential`, `apikey` or `privatekey` —
/// unless it ends in `_env` or `-env`, which names an environment variable that holds the
/// secret (`password_env = "PGPASSWORD"`), not the secret itself. `key` alone (an SSH
/// key's path in `[[cluster.nodes]] ssh`) and `keys` (the workload's key count) are not
/// secrets.
pub fn is_secret_key(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with("_env") || lower.ends_with("-env") {
        return false;
    }
    let squashed: String = lower
        .chars()
        .filter(|c| !matches!(c, '_' | '-' | '.'))
        .collect();
    SECRET_PARTS.iter().any(|part| squashed.contains(part))
}

/// A campaign text with its secrets replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    /// The text: the input unchanged when there was nothing to redact.
    pub text: String,
    /// How many values were replaced (values that already read [`REDACTED`] are not
    /// counted).
    pub replaced: usize,
}

/// Why a text could not be redacted: it is not valid TOML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactError {
    /// The line the TOML parser stopped at, if it said.
    pub line: Option<usize>,
}

impl fmt::Display for RedactError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The parser's own message quotes the offending line, which may be the secret:
        // only the line number is given.
        match self.line {
            Some(line) => write!(f, "it is not valid TOML (line {line})"),
            None => write!(f, "it is not valid TOML"),
        }
    }
}

impl std::error::Error for RedactError {}

/// Replaces every secret in the TOML `text` (see [`is_secret_key`]), keeping comments
/// and layout. A text that is not valid TOML is an error.
pub fn redact_toml(text: &str) -> Result<Redacted, RedactError> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| RedactError {
            line: e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
        })?;
    let mut walker = Walker {
        in_secret: false,
        replaced: 0,
    };
    walker.visit_document_mut(&mut doc);
    let text = if walker.replaced == 0 {
        text.to_string()
    } else {
        doc.to_string()
    };
    Ok(Redacted {
        text,
        replaced: walker.replaced,
    })
}

struct Walker {
    /// Under a secret key: every value below is replaced.
    in_secret: bool,
    replaced: usize,
}

impl VisitMut for Walker {
    fn visit_table_like_kv_mut(&mut self, key: KeyMut<'_>, node: &mut Item) {
        let outer = self.in_secret;
        self.in_secret = outer || is_secret_key(key.get());
        visit_mut::visit_item_mut(self, node);
        self.in_secret = outer;
    }

    fn visit_value_mut(&mut self, node: &mut Value) {
        if !self.in_secret || matches!(node, Value::Array(_) | Value::InlineTable(_)) {
            // Containers keep their shape; their values are visited.
            return visit_mut::visit_value_mut(self, node);
        }
        if node.as_str() == Some(REDACTED) {
            return;
        }
        let decor = node.decor().clone();
        let mut redacted = Formatted::new(REDACTED.to_string());
        *redacted.decor_mut() = decor;
        *node = Value::String(redacted);
        self.replaced += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(text: &str) -> Redacted {
        redact_toml(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    #[test]
    fn the_rule_for_names() {
        for secret in [
            "password",
            "PASSWORD",
            "db_password",
            "passwd",
            "passphrase",
            "secret",
            "client_secret",
            "token",
            "auth-token",
            "credentials",
            "api_key",
            "API-Key",
            "apikey",
            "private_key",
            "privateKey",
        ] {
            assert!(is_secret_key(secret), "{secret}");
        }
        for plain in [
            "key",
            "keys",
            "known_hosts",
            "user",
            "writer",
            "password_env",
            "token-env",
            "name",
            "monkey",
        ] {
            assert!(!is_secret_key(plain), "{plain}");
        }
    }

    #[test]
    fn a_password_in_an_inline_table_at_depth() {
        let text = "[cluster]\nkind = \"staging\"\npostgres = { writer = \"db:5432\", password = \"hunter2\" }\n";
        let r = redact(text);
        assert_eq!(r.replaced, 1);
        assert_eq!(
            r.text,
            "[cluster]\nkind = \"staging\"\npostgres = { writer = \"db:5432\", password = \"<redacted>\" }\n"
        );
        let deep = "a = { b = { c = [ { d = { token = \"t0ps3cret\" } } ] } }\n";
        let r = redact(deep);
        assert!(!r.text.contains("t0ps3cret"), "{}", r.text);
        assert_eq!(r.replaced, 1);
    }

    #[test]
    fn arrays_of_tables_and_their_inline_tables() {
        let text = r#"
[[cluster.nodes]]
name = "a"
ssh = { host = "h", key = "~/.ssh/id_ed25519", passphrase = "open sesame" }

[[cluster.nodes]]
name = "b"
secret = "s2"
"#;
        let r = redact(text);
        assert_eq!(r.replaced, 2);
        assert!(!r.text.contains("open sesame") && !r.text.contains("s2"));
        assert!(r.text.contains("key = \"~/.ssh/id_ed25519\""), "{}", r.text);
        assert!(r.text.contains("name = \"b\"\nsecret = \"<redacted>\""));
    }

    #[test]
    fn dotted_keys() {
        let text = "cluster.postgres.password = \"hunter2\"\ncluster.postgres.writer = \"db\"\n";
        let r = redact(text);
        assert_eq!(
            r.text,
            "cluster.postgres.password = \"<redacted>\"\ncluster.postgres.writer = \"db\"\n"
        );
        let r = redact("[cluster]\npostgres.password = 'x'\n");
        assert_eq!(r.text, "[cluster]\npostgres.password = \"<redacted>\"\n");
    }

    #[test]
    fn comments_and_layout_are_kept() {
        let text = "# the campaign\nname = \"x\"   # its name\n\n[cluster.postgres]\n# credentials\npassword = \"hunter2\"  # do not commit\nuser    =   \"coherence\"\n";
        let r = redact(text);
        assert_eq!(
            r.text,
            "# the campaign\nname = \"x\"   # its name\n\n[cluster.postgres]\n# credentials\npassword = \"<redacted>\"  # do not commit\nuser    =   \"coherence\"\n"
        );
    }

    #[test]
    fn every_value_under_a_secret_name_whatever_its_type() {
        let text =
            "token = 12345\ntokens = [\"a\", \"b\"]\n[credentials]\nuser = \"u\"\npin = 42\n";
        let r = redact(text);
        assert_eq!(r.replaced, 5);
        assert_eq!(
            r.text,
            "token = \"<redacted>\"\ntokens = [\"<redacted>\", \"<redacted>\"]\n[credentials]\nuser = \"<redacted>\"\npin = \"<redacted>\"\n"
        );
    }

    #[test]
    fn key_and_keys_are_untouched_and_an_unchanged_text_is_the_input() {
        let text = "[workload]\nkeys = 1000  # key count\n[[cluster.nodes]]\nssh = { key = \"~/.ssh/k\", known_hosts = \"~/.ssh/known_hosts\" }\n";
        let r = redact(text);
        assert_eq!(r.replaced, 0);
        assert_eq!(r.text, text);
    }

    #[test]
    fn an_already_redacted_text_is_unchanged() {
        let once = redact("[cluster.postgres]\npassword = \"hunter2\"\n");
        let twice = redact(&once.text);
        assert_eq!(twice.replaced, 0);
        assert_eq!(twice.text, once.text);
    }

    #[test]
    fn invalid_toml_is_refused_without_quoting_it() {
        let e = redact_toml("name = \"x\"\npassword = \"hunter2\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        let message = e.to_string();
        assert!(message.contains("not valid TOML (line 2)"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(redact_toml("[cluster\npassword = 1").is_err());
    }
}
