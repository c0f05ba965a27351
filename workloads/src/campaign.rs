//! The workload's parts of a campaign file: the cache-aside workload, the staging
//! endpoints clients use (PostgreSQL and the cache regions) and the checker's settings.
//! The whole campaign (its name, the cluster, the `[nemesis]` section, loading and
//! validation) is the `coherence-campaign` crate, which reads these pieces.
//!
//! Values are validated while they are read, so the TOML parser's own spans give every
//! mistake its line and field.

use coherence_store::duration::deserialize as duration;
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// PostgreSQL endpoints and credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postgres {
    /// `host:port` of the primary (writes).
    pub writer: String,
    /// `host:port` of a replica for reads; the writer when absent.
    #[serde(default)]
    pub reader: Option<String>,
    /// The user.
    #[serde(default = "default_user")]
    pub user: String,
    /// The password written in the campaign (a secret in a file: it is redacted from
    /// the run directory and the report, and warned about; prefer `password_env`).
    #[serde(default)]
    pub password: Option<String>,
    /// The name of the environment variable that holds the password. Without it and
    /// without `password`, libpq's password file is read ([`crate::pgpass`]).
    #[serde(default, deserialize_with = "env_name")]
    pub password_env: Option<String>,
    /// The database.
    #[serde(default = "default_user")]
    pub dbname: String,
}

fn default_user() -> String {
    "postgres".into()
}

fn env_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    let mut chars = s.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        // The value is not quoted: it may be the password, put there by mistake.
        return Err(serde::de::Error::custom(
            "field `password_env` must name an environment variable (letters, digits and '_', \
             such as \"COHERENCE_PG_PASSWORD\"), not hold the password",
        ));
    }
    Ok(Some(s))
}

/// Where the database password came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// `password` in the campaign file.
    Inline,
    /// The environment variable `password_env` names.
    Env(String),
    /// libpq's password file.
    Passfile(std::path::PathBuf),
    /// Nowhere: no password is sent (the server may not ask for one).
    None,
}

/// The database password and where it came from. (No `Debug`: it holds the secret.)
pub struct DbPassword {
    /// The password, if any.
    pub password: Option<String>,
    /// Where it came from.
    pub source: PasswordSource,
    /// What the user should hear about it (an inline password, an unusable password
    /// file).
    pub warnings: Vec<String>,
}

/// A `host:port` split as the clients connect to it (port 5432 when absent).
fn host_port(addr: &str) -> (&str, &str) {
    addr.rsplit_once(':').unwrap_or((addr, "5432"))
}

/// A value in a libpq connection string, quoted: `'…'` with `\` and `'` escaped.
fn conninfo_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

impl Postgres {
    /// Finds the password: `password` (with a warning that it is a secret in a file),
    /// else the environment variable `password_env` names (an error naming it when it is
    /// not set), else the first line of libpq's password file (`PGPASSFILE`, else
    /// `~/.pgpass`) that matches the writer (and the reader, which must then agree),
    /// else none. `env` reads the environment.
    pub fn resolve_password(
        &self,
        env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<DbPassword, String> {
        if let Some(password) = &self.password {
            return Ok(DbPassword {
                password: Some(password.clone()),
                source: PasswordSource::Inline,
                warnings: vec![
                    "[cluster.postgres] password is a secret written in the campaign file \
                     (it is kept out of the run directory and the report, but the file holds it): \
                     set password_env = \"NAME\" and export NAME with the password instead, \
                     or put it in ~/.pgpass"
                        .to_string(),
                ],
            });
        }
        if let Some(name) = &self.password_env {
            let value = env(name).ok_or_else(|| {
                format!(
                    "[cluster.postgres] password_env: the environment variable {name} is not set: \
                     export {name} with the database password before the run"
                )
            })?;
            let value = value.into_string().map_err(|_| {
                format!("[cluster.postgres] password_env: the environment variable {name} is not valid UTF-8")
            })?;
            if value.is_empty() {
                return Err(format!(
                    "[cluster.postgres] password_env: the environment variable {name} is empty: \
                     export {name} with the database password"
                ));
            }
            return Ok(DbPassword {
                password: Some(value),
                source: PasswordSource::Env(name.clone()),
                warnings: Vec::new(),
            });
        }
        let none = |warnings| DbPassword {
            password: None,
            source: PasswordSource::None,
            warnings,
        };
        let Some(file) = crate::pgpass::location(env) else {
            return Ok(none(Vec::new()));
        };
        let found = crate::pgpass::read(&file);
        let warnings: Vec<String> = found.warning.into_iter().collect();
        let Some(text) = found.text else {
            return Ok(none(warnings));
        };
        let mut endpoints = vec![self.writer.as_str()];
        endpoints.extend(self.reader.as_deref().filter(|r| *r != self.writer));
        let mut passwords = endpoints.iter().filter_map(|addr| {
            let (host, port) = host_port(addr);
            let target = crate::pgpass::Target {
                host,
                port,
                dbname: &self.dbname,
                user: &self.user,
            };
            crate::pgpass::lookup(&text, target)
        });
        let Some(password) = passwords.next() else {
            return Ok(none(warnings));
        };
        if passwords.any(|other| other != password) {
            return Err(format!(
                "{}: the writer {} and the reader {} have different passwords there; \
                 coherence uses one password for both: give them one, or set password_env",
                file.display(),
                self.writer,
                self.reader.as_deref().unwrap_or_default()
            ));
        }
        Ok(DbPassword {
            password: Some(password),
            source: PasswordSource::Passfile(file),
            warnings,
        })
    }

    /// The libpq connection parameters other than host and port (`user`, `dbname`,
    /// `password`), every value quoted.
    pub fn conninfo(&self, password: Option<&str>) -> String {
        let mut params = format!(
            "user={} dbname={}",
            conninfo_value(&self.user),
            conninfo_value(&self.dbname)
        );
        if let Some(p) = password {
            params.push_str(" password=");
            params.push_str(&conninfo_value(p));
        }
        params
    }
}

/// One cache region.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Its name (`r1`, `eu-west`, ...).
    pub name: String,
    /// `host:port` of its Redis primary.
    pub primary: String,
    /// `host:port` of a replica, if reads may go there.
    #[serde(default)]
    pub replica: Option<String>,
    /// Node names used in the history for the primary and replica (default: the
    /// addresses).
    #[serde(default)]
    pub names: Option<[String; 2]>,
    /// Sentinels (`host:port`) that know the region's primary: clients ask them where
    /// it went after an error (a failover). Without them the primary is fixed.
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// The region's master name at the Sentinels (default: the region's name).
    #[serde(default)]
    pub master_name: Option<String>,
}

/// Who invalidates the cache after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Invalidation {
    /// The writing client deletes the key in every region after commit.
    Writer,
    /// A pipeline does (the lab's invalidator, or the user's).
    Pipeline,
}

/// How a miss is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fill {
    /// SET with a TTL.
    Plain,
    /// A script that refuses a version older than the one cached or recently invalidated.
    Versioned,
}

/// Where cache reads go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheReads {
    /// The region's primary.
    Primary,
    /// The region's replica.
    Replica,
}

/// Where database reads (after a miss) go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbReads {
    /// The primary.
    Writer,
    /// The reader endpoint (a replica).
    Reader,
}

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Distribution {
    /// Every key equally often.
    Uniform,
    /// Zipf-skewed hot keys.
    Zipf {
        /// The exponent (1.0: the classic Zipf law).
        #[serde(default = "one")]
        exponent: f64,
    },
}

fn one() -> f64 {
    1.0
}

/// The workload: which one, and how it runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Which workload ([`crate::registry`]); `cache-aside` when absent.
    #[serde(default)]
    pub kind: crate::registry::Kind,
    /// Who invalidates (cache-aside only: required there, refused for `http`).
    #[serde(default)]
    pub invalidation: Option<Invalidation>,
    /// How misses are filled (cache-aside only: required there, refused for `http`).
    #[serde(default)]
    pub fill: Option<Fill>,
    /// `[workload.http]`: the user's service and how to drive it (`kind = "http"` only).
    #[serde(default)]
    pub http: Option<crate::http::Http>,
    /// `[workload.watch]`: when to sample the caches after each commit (`kind = "watch"`).
    #[serde(default)]
    pub watch: Option<crate::watch::WatchConfig>,
    /// Where cache reads go.
    #[serde(default = "primary")]
    pub cache_reads: CacheReads,
    /// Where database reads go.
    #[serde(default = "writer")]
    pub db_reads: DbReads,
    /// How many keys.
    #[serde(deserialize_with = "at_least_one")]
    pub keys: u32,
    /// How keys are chosen.
    #[serde(default = "uniform")]
    pub distribution: Distribution,
    /// Share of operations that are reads.
    #[serde(default = "ninety", deserialize_with = "fraction")]
    pub read_fraction: f64,
    /// Concurrent clients.
    #[serde(deserialize_with = "at_least_one")]
    pub concurrency: u32,
    /// Target operations per second over all clients; 0 for as fast as they go.
    #[serde(default)]
    pub rate: u32,
    /// How long the workload runs.
    #[serde(deserialize_with = "duration")]
    pub time_limit: Duration,
    /// Every call's timeout; past it the outcome is unknown (`info`).
    #[serde(default = "one_second", deserialize_with = "duration")]
    pub op_timeout: Duration,
    /// TTL of filled values.
    #[serde(default = "one_minute", deserialize_with = "duration")]
    pub ttl: Duration,
    /// How long the system is left alone before the final reads.
    #[serde(default = "two_seconds", deserialize_with = "duration")]
    pub quiesce: Duration,
    /// The random seed (operations, keys, timing).
    #[serde(default = "seed")]
    pub seed: u64,
}

impl Workload {
    /// Who invalidates: the campaign's choice (validated to be there for cache-aside),
    /// else the pipeline (the `http` workload's service and its pipeline do).
    pub fn invalidation(&self) -> Invalidation {
        self.invalidation.unwrap_or(Invalidation::Pipeline)
    }

    /// How misses are filled (plain when not given: only cache-aside fills).
    pub fn fill(&self) -> Fill {
        self.fill.unwrap_or(Fill::Plain)
    }

    /// What is wrong with the workload's fields for its kind: (the field, why).
    pub fn validate(&self) -> Result<(), (String, String)> {
        use crate::registry::Kind;
        match self.kind {
            Kind::CacheAside => {
                let need = |field: &str, what: &str| {
                    (
                        format!("workload.{field}"),
                        format!("the cache-aside workload needs `{field}`: {what}"),
                    )
                };
                if self.invalidation.is_none() {
                    return Err(need("invalidation", "\"writer\" or \"pipeline\""));
                }
                if self.fill.is_none() {
                    return Err(need("fill", "\"plain\" or \"versioned\""));
                }
                if self.http.is_some() {
                    return Err((
                        "workload.http".into(),
                        "[workload.http] is for kind = \"http\"; this workload is cache-aside"
                            .into(),
                    ));
                }
                Ok(())
            }
            Kind::Http => {
                for (field, given) in [
                    ("invalidation", self.invalidation.is_some()),
                    ("fill", self.fill.is_some()),
                ] {
                    if given {
                        return Err((
                            format!("workload.{field}"),
                            format!("`{field}` is for the cache-aside workload; with kind = \"http\" the service itself invalidates and fills: remove it"),
                        ));
                    }
                }
                match &self.http {
                    Some(http) => crate::http::Compiled::new(http).map(|_| ()),
                    None => Err((
                        "workload.http".into(),
                        "kind = \"http\" needs a [workload.http] section: the service's read and write requests (see campaigns/staging-http-example.toml)".into(),
                    )),
                }
            }
            Kind::Watch => {
                if self.http.is_some() || self.invalidation.is_some() || self.fill.is_some() {
                    return Err((
                        "workload".into(),
                        "kind = \"watch\" drives nothing: remove invalidation, fill and [workload.http]".into(),
                    ));
                }
                self.watch
                    .clone()
                    .unwrap_or_default()
                    .parsed_delays()
                    .map(|_| ())
                    .map_err(|e| ("workload.watch.delays".into(), e))
            }
        }
    }
}

fn primary() -> CacheReads {
    CacheReads::Primary
}
fn writer() -> DbReads {
    DbReads::Writer
}
fn uniform() -> Distribution {
    Distribution::Uniform
}
fn ninety() -> f64 {
    0.9
}
fn one_second() -> Duration {
    Duration::from_secs(1)
}
fn one_minute() -> Duration {
    Duration::from_secs(60)
}
fn two_seconds() -> Duration {
    Duration::from_secs(2)
}
fn seed() -> u64 {
    1
}

/// How the history is judged.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checker {
    /// Δ: how stale a read may be.
    #[serde(default, deserialize_with = "duration")]
    pub staleness_bound: Duration,
    /// The checks that count, by name (`stale-read`, ...); all when absent. The names
    /// are the checker's, which checks them before a run.
    #[serde(default)]
    pub checks: Option<Vec<String>>,
    /// The invalidation bound: a watched cache node invalidated later than this after a
    /// commit is a `slow-invalidation`; not checked when absent.
    #[serde(default, deserialize_with = "some_duration")]
    pub invalidation_bound: Option<Duration>,
}

fn some_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if n == 0 {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(n)
}

fn fraction<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let x = f64::deserialize(d)?;
    if !(0.0..=1.0).contains(&x) {
        return Err(serde::de::Error::custom("must be between 0 and 1"));
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[cluster.postgres]` section of a staging campaign, with `extra` lines.
    fn postgres(extra: &str) -> Postgres {
        let text = format!(
            "writer = \"db1.staging:5432\"\nuser = \"tester\"\ndbname = \"coherence\"\n{extra}"
        );
        toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.into())
    }

    #[test]
    fn the_password_from_the_environment() {
        let pg = postgres("password_env = \"COHERENCE_TEST_PW\"\n");
        let found = pg
            .resolve_password(&env_of(&[("COHERENCE_TEST_PW", "s3cret")]))
            .unwrap();
        assert_eq!(found.password.as_deref(), Some("s3cret"));
        assert_eq!(
            found.source,
            PasswordSource::Env("COHERENCE_TEST_PW".into())
        );
        assert!(found.warnings.is_empty());
        // A variable that is not set is an error naming it; so is an empty one.
        let e = pg.resolve_password(&env_of(&[])).err().unwrap();
        assert!(
            e.contains("COHERENCE_TEST_PW is not set") && e.contains("export COHERENCE_TEST_PW"),
            "{e}"
        );
        let e = pg
            .resolve_password(&env_of(&[("COHERENCE_TEST_PW", "")]))
            .err()
            .unwrap();
        assert!(e.contains("is empty"), "{e}");
    }

    #[test]
    fn an_inline_password_works_with_a_warning() {
        let pg = postgres("password = \"hunter2\"\n");
        let found = pg.resolve_password(&env_of(&[])).unwrap();
        assert_eq!(found.password.as_deref(), Some("hunter2"));
        assert_eq!(found.source, PasswordSource::Inline);
        assert_eq!(found.warnings.len(), 1);
        assert!(
            found.warnings[0].contains("password_env"),
            "{}",
            found.warnings[0]
        );
    }

    #[test]
    fn the_password_from_the_passfile() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(
            &file,
            "other:5432:*:*:no\ndb1.staging:5432:coherence:tester:from-file\n",
        )
        .unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let pg = postgres("");
        let env = env_of(&[("PGPASSFILE", file.to_str().unwrap())]);
        let found = pg.resolve_password(&env).unwrap();
        assert_eq!(found.password.as_deref(), Some("from-file"));
        assert_eq!(found.source, PasswordSource::Passfile(file.clone()));
        // ~/.pgpass when PGPASSFILE is not set; no file, no password.
        let found = pg
            .resolve_password(&env_of(&[("HOME", dir.path().to_str().unwrap())]))
            .unwrap();
        assert_eq!((found.password, found.source), (None, PasswordSource::None));
        // A reader with another password in the file is refused.
        std::fs::write(
            &file,
            "db1.staging:5432:coherence:tester:one\ndb2.staging:5432:coherence:tester:two\n",
        )
        .unwrap();
        let pg = postgres("reader = \"db2.staging:5432\"\n");
        let e = pg.resolve_password(&env).err().unwrap();
        assert!(e.contains("different passwords"), "{e}");
        // A file others may read is not used, with a warning.
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        let found = pg.resolve_password(&env).unwrap();
        assert!(found.password.is_none());
        assert!(
            found.warnings[0].contains("group or world access"),
            "{:?}",
            found.warnings
        );
    }

    #[test]
    fn connection_parameters_are_quoted() {
        let pg = postgres("");
        let params = pg.conninfo(Some("it's a \\ pass word"));
        assert_eq!(
            params,
            r"user='tester' dbname='coherence' password='it\'s a \\ pass word'"
        );
        let config: tokio_postgres::Config = format!("host=db port=5432 {params}").parse().unwrap();
        assert_eq!(
            config.get_password(),
            Some("it's a \\ pass word".as_bytes())
        );
        assert_eq!(config.get_user(), Some("tester"));
        assert_eq!(pg.conninfo(None), "user='tester' dbname='coherence'");
    }
}

/// `[observe]`: what coherence watches from outside while the run goes on
/// ([`crate::observe`], [`crate::commits`]). The lab turns both observers on when the
/// campaign says nothing; on staging they are on only when the campaign has this section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observe {
    /// Watch the cache nodes through their keyspace notifications.
    #[serde(default = "yes")]
    pub caches: bool,
    /// Only these cache nodes, by name (default: every cache node of the cluster).
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    /// The keys to watch, as a glob (default: the workload's keys, `k*`).
    #[serde(default = "key_pattern")]
    pub pattern: String,
    /// How a cached value is decoded: `versioned-json` (`{"version", "write"}`), or
    /// `json:<pointer>` (JSON whose string at the JSON pointer is the write's unique
    /// value, e.g. `json:/value`); the observer records what changed, the final phase
    /// what each node holds.
    #[serde(default = "versioned_json")]
    pub value: String,
    /// Turn keyspace notifications on where they are off (the lab always does); without
    /// it, a node that sends none is refused, naming the `CONFIG SET` line to run.
    #[serde(default)]
    pub configure: bool,
    /// Read each key the cache observer saw set back on its node and record what it
    /// held (`sample`): what shows a node held an older version when the workload
    /// records no fills of its own (a user's service). Default: on for the `http`
    /// workload, off otherwise. Costs a GET per SET on the node.
    #[serde(default)]
    pub read_back: Option<bool>,
    /// The commit observer: the table whose committed changes to follow (none when
    /// absent).
    #[serde(default)]
    pub database: Option<ObserveDatabase>,
}

/// `[observe.database]`: the watched table of the commit observer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObserveDatabase {
    /// The table.
    #[serde(default = "items")]
    pub table: String,
    /// Its key column.
    #[serde(default = "key_column")]
    pub key_column: String,
    /// The column that holds the write id of the change.
    #[serde(default = "write_column")]
    pub write_column: String,
    /// The column that holds the version, if the table has one (`""`: none).
    #[serde(default = "version_column")]
    pub version_column: String,
}

impl Observe {
    /// What the lab watches when the campaign says nothing: every cache node, and the
    /// workload's table.
    pub fn lab_default() -> Observe {
        Observe {
            caches: true,
            nodes: None,
            pattern: key_pattern(),
            value: versioned_json(),
            read_back: None,
            configure: true,
            database: Some(ObserveDatabase {
                table: items(),
                key_column: key_column(),
                write_column: write_column(),
                version_column: version_column(),
            }),
        }
    }
}

fn yes() -> bool {
    true
}
fn key_pattern() -> String {
    "k*".into()
}
fn versioned_json() -> String {
    "versioned-json".into()
}
fn items() -> String {
    "items".into()
}
fn key_column() -> String {
    "key".into()
}
fn write_column() -> String {
    "write_id".into()
}
fn version_column() -> String {
    "version".into()
}
