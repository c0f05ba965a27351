//! The commit observer: coherence watching the database from outside, as Meta's Polaris
//! does, rather than trusting what its own clients say they wrote. It follows the
//! primary's logical replication stream (PostgreSQL's `pgoutput` plugin, protocol
//! version 1) and records every committed insert or update of a watched row into the
//! history as a `commit` event under process `cdc:<node>`, with the row's key, its
//! write id, its version (when the table has a version column), the commit LSN and the
//! server's commit timestamp. The events of one transaction are recorded when its
//! commit arrives, in commit order, stamped on the run's clock at receipt.
//!
//! The replication protocol is spoken by the `pgwire-replication` crate (a tokio client
//! of the walsender protocol with SCRAM; plain TCP, no TLS); the `pgoutput` messages the
//! observer needs (Relation, Insert, Update) are decoded here from the protocol
//! documentation's "Logical Replication Message Formats". Ordinary SQL (settings,
//! publication, finding the primary) goes through `tokio-postgres`.
//!
//! What it leaves on the server: a publication `coherence_<tag>` `FOR TABLE <table>`
//! (inserts and updates only), made by [`CommitWatch::prepare`] or on first connection,
//! dropped by [`CommitWatch::cleanup`] (which [`watch`] runs when stopped); and a
//! TEMPORARY replication slot of the same name, created on the replication connection
//! itself (`CREATE_REPLICATION_SLOT ... TEMPORARY LOGICAL pgoutput`), which PostgreSQL
//! drops when that connection ends, so a crashed or killed run leaks no slot that
//! retains WAL. The price of a temporary slot: when the stream is lost, commits made
//! before the next slot exists are never delivered. That time is inside the recorded
//! `observer-gap`, so it is never mistaken for "nothing committed".
//!
//! When the stream is lost (the server was killed, a failover, a silent partition
//! caught by a probe query every second), the observer looks for the primary among the
//! configured nodes every ~100 ms, makes the publication there if it is missing (after a
//! failover the slot never exists on the promoted standby; the publication does if it
//! was replicated), opens a new slot and goes on, and records the blind time as an
//! `observer-gap` event (`{"node", "previous", "from", "to"}`, ns on the run's clock).
//! Blind from the start (the first connection fails) is a gap too, with `previous` null;
//! stopped while blind, the gap ends at the stop, with `node` null (and process `cdc:<the
//! node it lost>`, or `cdc` if it never saw one).
//!
//! `coherence run` starts it before the workload (waiting until it streams) and stops it
//! after the final phase (`src/observers.rs`), as the campaign's `[observe.database]` says.

use coherence_store::recorder::Recorder;
use coherence_store::{Event, EventType, Process};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::watch;

/// How long connecting to a node (and authenticating) may take before it counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the observer looks for a primary while it is blind.
const RETRY: Duration = Duration::from_millis(100);
/// How often the followed node is asked whether it is still a reachable primary.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long that question may take before the stream counts as lost.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long making a slot and starting its stream may take: making a logical slot waits
/// for the transactions running at the time to end.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long stopping may wait for the replication session and the cleanup.
const STOP_WAIT: Duration = Duration::from_millis(300);

/// One database server the observer may follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbNode {
    /// Its name in the history (`db1`).
    pub name: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// What the commit observer watches, and where.
#[derive(Debug, Clone)]
pub struct CommitWatch {
    /// The database servers (a primary and its standbys). The observer follows the one
    /// that is a primary (`pg_is_in_recovery()` false) and looks again, in this order,
    /// whenever its stream is lost.
    pub nodes: Vec<DbNode>,
    /// The user; it needs the REPLICATION attribute (or to be a superuser) and the right
    /// to create publications on the table.
    pub user: String,
    /// Its password, if the servers ask for one (the caller reads it from the
    /// environment; it is never logged or put in an error).
    pub password: Option<String>,
    /// The database.
    pub dbname: String,
    /// The watched table, an identifier taken literally (not split at dots) and looked
    /// up on the search path.
    pub table: String,
    /// The column that holds a row's key.
    pub key_column: String,
    /// The column that holds the id of the write that produced the row.
    pub write_column: String,
    /// The column that holds the row's version, if the table has one.
    pub version_column: Option<String>,
    /// A tag naming what the observer leaves on the server: the publication and the slot
    /// are both `coherence_<tag>`, the tag lowercased and cut to `[a-z0-9_]`.
    pub name: String,
}

/// `s` as a quoted SQL identifier.
pub(crate) fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The message of a `tokio-postgres` error: the server's words when it said something.
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

impl CommitWatch {
    /// The name of the publication and of the slot: `coherence_<tag>`, in `[a-z0-9_]`,
    /// at most 63 bytes (PostgreSQL's limit for names).
    pub fn object_name(&self) -> String {
        let tag: String = self
            .name
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() {
                    c
                } else {
                    '_'
                }
            })
            .take(63 - "coherence_".len())
            .collect();
        format!("coherence_{tag}")
    }

    /// An ordinary SQL connection to `node`.
    async fn connect(&self, node: &DbNode) -> Result<tokio_postgres::Client, String> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&node.host)
            .port(node.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("coherence-cdc")
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(p) = &self.password {
            config.password(p);
        }
        let unreachable = |why: String| {
            format!(
                "cannot reach {} at {}:{}: {why}",
                node.name, node.host, node.port
            )
        };
        let (client, connection) =
            tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tokio_postgres::NoTls))
                .await
                .map_err(|_| unreachable("timed out".into()))?
                .map_err(|e| unreachable(pg_error(&e)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// The first node, in order, that answers and is a primary, with a connection to it.
    pub async fn primary(&self) -> Result<(DbNode, tokio_postgres::Client), String> {
        let mut why = Vec::new();
        for node in &self.nodes {
            let client = match self.connect(node).await {
                Ok(c) => c,
                Err(e) => {
                    why.push(e);
                    continue;
                }
            };
            match in_recovery(&client).await {
                Ok(false) => return Ok((node.clone(), client)),
                Ok(true) => why.push(format!("{} is a standby", node.name)),
                Err(e) => why.push(format!("{}: {e}", node.name)),
            }
        }
        if self.nodes.is_empty() {
            return Err("no database nodes to watch".into());
        }
        Err(format!(
            "no primary among the database nodes: {}",
            why.join("; ")
        ))
    }

    /// Whether the observer can work here: every node has `wal_level = logical` and room
    /// for a replication connection and slot (a standby may become the primary), and
    /// the primary has the table with its columns and a replica identity. Otherwise an
    /// error naming the node and the setting to change.
    pub async fn check(&self) -> Result<(), String> {
        for node in &self.nodes {
            let client = self.connect(node).await?;
            let show = |setting: &'static str| {
                let client = &client;
                async move {
                    client
                        .query_one(&format!("SHOW {setting}"), &[])
                        .await
                        .map(|row| row.get::<_, String>(0))
                        .map_err(|e| format!("{}: SHOW {setting}: {}", node.name, pg_error(&e)))
                }
            };
            let wal_level = show("wal_level").await?;
            if wal_level != "logical" {
                return Err(format!(
                    "wal_level is {wal_level} on {}: set wal_level = logical in \
                     postgresql.conf and restart",
                    node.name
                ));
            }
            for setting in ["max_replication_slots", "max_wal_senders"] {
                let n = show(setting).await?;
                if n.trim() == "0" {
                    return Err(format!(
                        "{setting} is 0 on {}: set {setting} = 10 in postgresql.conf and \
                         restart",
                        node.name
                    ));
                }
            }
        }
        let (node, client) = self.primary().await?;
        self.check_table(&node, &client).await
    }

    async fn check_table(
        &self,
        node: &DbNode,
        client: &tokio_postgres::Client,
    ) -> Result<(), String> {
        let on = |e: tokio_postgres::Error| format!("{}: {}", node.name, pg_error(&e));
        let table = ident(&self.table);
        let row = client
            .query_opt(
                "SELECT c.relreplident::text, \
                        EXISTS (SELECT 1 FROM pg_index i \
                                WHERE i.indrelid = c.oid AND i.indisprimary) \
                 FROM pg_class c WHERE c.oid = to_regclass($1)",
                &[&table],
            )
            .await
            .map_err(on)?;
        let Some(row) = row else {
            return Err(format!(
                "table {} does not exist in database {} on {}",
                self.table, self.dbname, node.name
            ));
        };
        let (identity, primary_key): (String, bool) = (row.get(0), row.get(1));
        let columns: Vec<String> = client
            .query(
                "SELECT attname::text FROM pg_attribute \
                 WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                &[&table],
            )
            .await
            .map_err(on)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for column in [Some(&self.key_column), Some(&self.write_column)]
            .into_iter()
            .chain([self.version_column.as_ref()])
            .flatten()
        {
            if !columns.contains(column) {
                return Err(format!(
                    "column {column} does not exist in table {} on {} (it has {})",
                    self.table,
                    node.name,
                    columns.join(", ")
                ));
            }
        }
        if identity == "n" || (identity == "d" && !primary_key) {
            return Err(format!(
                "table {} on {} has no replica identity, so updates of it would fail once it \
                 is published: give it a primary key, or run ALTER TABLE {} REPLICA \
                 IDENTITY FULL",
                self.table, node.name, table
            ));
        }
        Ok(())
    }

    /// Checks (see [`check`](Self::check)) and makes a fresh publication on the primary,
    /// dropping a stale one of the same name (from a run that died) first.
    pub async fn prepare(&self) -> Result<(), String> {
        self.check().await?;
        let (node, client) = self.primary().await?;
        let name = self.object_name();
        client
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", ident(&name)))
            .await
            .map_err(|e| format!("{}: DROP PUBLICATION {name}: {}", node.name, pg_error(&e)))?;
        self.ensure_publication(&node, &client).await
    }

    /// Makes the publication on the primary `node` unless it is there.
    async fn ensure_publication(
        &self,
        node: &DbNode,
        client: &tokio_postgres::Client,
    ) -> Result<(), String> {
        let name = self.object_name();
        let exists = client
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
            .await
            .map_err(|e| format!("{}: {}", node.name, pg_error(&e)))?
            .is_some();
        if exists {
            return Ok(());
        }
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update')",
            ident(&name),
            ident(&self.table)
        );
        match client.batch_execute(&sql).await {
            Ok(()) => Ok(()),
            // Made meanwhile by someone else: as good.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {
                Ok(())
            }
            Err(e) => Err(format!(
                "{}: CREATE PUBLICATION {name}: {}",
                node.name,
                pg_error(&e)
            )),
        }
    }

    /// Removes a slot of the observer's name on `client`'s server: ends the session that
    /// holds it (a temporary slot goes with it) or drops it if nobody does.
    async fn clear_slot(client: &tokio_postgres::Client, slot: &str) -> Result<(), String> {
        client
            .query(
                "SELECT CASE WHEN active_pid IS NULL \
                        THEN pg_drop_replication_slot(slot_name) IS NULL \
                        ELSE pg_terminate_backend(active_pid) END \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map(|_| ())
            .map_err(|e| pg_error(&e))
    }

    /// Whether an observer of this name is streaming from the primary now (its slot is
    /// there and in use). Commits made before it streams are not seen, so a caller
    /// waits for this before the workload starts.
    pub async fn streaming(&self) -> Result<bool, String> {
        let (node, client) = self.primary().await?;
        client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&self.object_name()],
            )
            .await
            .map(|row| row.is_some())
            .map_err(|e| format!("{}: {}", node.name, pg_error(&e)))
    }

    /// Drops what the observer made: the publication on the primary, and its slot if one
    /// is still there (normally the temporary slot went with its connection). Safe to
    /// call more than once, and when nothing was made.
    pub async fn cleanup(&self) -> Result<(), String> {
        let (node, client) = self.primary().await?;
        let name = self.object_name();
        // A temporary slot disappears when its walsender exits, which may lag the
        // client's goodbye by a moment: give it that moment before ending the session.
        for _ in 0..20 {
            let left = client
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                    &[&name],
                )
                .await
                .map_err(|e| format!("{}: {}", node.name, pg_error(&e)))?;
            if left.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Self::clear_slot(&client, &name)
            .await
            .map_err(|e| format!("{}: dropping slot {name}: {e}", node.name))?;
        client
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", ident(&name)))
            .await
            .map_err(|e| format!("{}: DROP PUBLICATION {name}: {}", node.name, pg_error(&e)))
    }

    /// Finds the primary, makes the publication there if missing, and opens a
    /// replication session on a new temporary slot.
    async fn open(&self) -> Result<Session, String> {
        let (node, probe) = self.primary().await?;
        self.ensure_publication(&node, &probe).await?;
        let slot = self.object_name();
        // A slot of this name left by an earlier session of ours (one whose connection
        // the server has not noticed is gone yet) would make the new one fail.
        Self::clear_slot(&probe, &slot)
            .await
            .map_err(|e| format!("{}: {e}", node.name))?;
        let config = ReplicationConfig::new(
            node.host.clone(),
            self.user.clone(),
            self.password.clone().unwrap_or_default(),
            self.dbname.clone(),
            slot.clone(),
            slot.clone(),
        )
        .with_port(node.port)
        .with_tls(TlsConfig::disabled())
        .with_start_lsn(Lsn::ZERO)
        .with_status_interval(Duration::from_millis(500))
        .with_wakeup_interval(Duration::from_secs(1))
        .with_application_name("coherence-cdc");
        let on = |what: &str, e: String| format!("{}: {what}: {e}", node.name);
        let mut client = ReplicationClient::connect_gated(config)
            .await
            .map_err(|e| on("replication connection", e.to_string()))?;
        let created = async {
            client
                .simple_query(&format!(
                    "CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT"
                ))
                .await
                .map_err(|e| on("CREATE_REPLICATION_SLOT", e.to_string()))?;
            client
                .start()
                .await
                .map_err(|e| on("START_REPLICATION", e.to_string()))?;
            client
                .wait_started()
                .await
                .map_err(|e| on("START_REPLICATION", e.to_string()))
        };
        tokio::time::timeout(START_TIMEOUT, created)
            .await
            .map_err(|_| on("replication connection", "timed out".into()))??;
        Ok(Session {
            node,
            client,
            probe,
        })
    }

    /// Which columns of a relation the observer reads, if `relation` is the watched
    /// table; an error if it is the table but lacks a column.
    fn columns_of(&self, relation: &Relation) -> Result<Option<Columns>, String> {
        if relation.name != self.table {
            return Ok(None);
        }
        let find = |column: &str| {
            relation
                .columns
                .iter()
                .position(|c| c == column)
                .ok_or_else(|| {
                    format!(
                        "the stream's table {}.{} has no column {column}",
                        relation.namespace, relation.name
                    )
                })
        };
        Ok(Some(Columns {
            key: find(&self.key_column)?,
            write: find(&self.write_column)?,
            version: self.version_column.as_deref().map(find).transpose()?,
        }))
    }
}

/// Whether the server is a standby.
async fn in_recovery(client: &tokio_postgres::Client) -> Result<bool, String> {
    client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map(|row| row.get(0))
        .map_err(|e| pg_error(&e))
}

/// A replication session on the primary, and an SQL connection to the same server that
/// asks it now and then whether it is still there and still the primary.
struct Session {
    node: DbNode,
    client: ReplicationClient,
    probe: tokio_postgres::Client,
}

impl Session {
    /// Ends the session (its temporary slot goes with it), waiting a moment at most.
    async fn close(mut self) {
        self.client.stop();
        if tokio::time::timeout(STOP_WAIT, self.client.shutdown())
            .await
            .is_err()
        {
            self.client.abort();
        }
    }
}

/// The positions of the columns the observer reads in the watched table's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Columns {
    key: usize,
    write: usize,
    version: Option<usize>,
}

/// One watched row as a transaction left it.
#[derive(Debug, Clone, PartialEq)]
struct Change {
    key: String,
    write: Option<String>,
    version: Option<i64>,
}

/// The row change `tuple` (of the watched table, read through `columns`) describes.
fn change_of(columns: &Columns, tuple: &[Datum]) -> Result<Change, String> {
    let text = |i: usize| match tuple.get(i) {
        Some(Datum::Text(s)) => Ok(Some(s.clone())),
        Some(Datum::Null | Datum::Unchanged) => Ok(None),
        None => Err(format!(
            "a row of {} columns has no column {}",
            tuple.len(),
            i + 1
        )),
    };
    let key = text(columns.key)?.ok_or("a row's key is null")?;
    let write = text(columns.write)?;
    let version = match columns.version {
        Some(i) => text(i)?.and_then(|v| v.trim().parse::<i64>().ok()),
        None => None,
    };
    Ok(Change {
        key,
        write,
        version,
    })
}

/// The server's commit time (µs since 2000-01-01 UTC) in RFC 3339, UTC, with µs.
fn commit_ts(micros_since_2000: i64) -> String {
    const PG_EPOCH: Duration = Duration::from_secs(946_684_800);
    // The end of year 9999, as far as RFC 3339 goes.
    const LAST: Duration = Duration::from_secs(253_402_300_800);
    let offset = Duration::from_micros(micros_since_2000.unsigned_abs());
    let t = if micros_since_2000 >= 0 {
        (UNIX_EPOCH + PG_EPOCH).checked_add(offset)
    } else {
        (UNIX_EPOCH + PG_EPOCH).checked_sub(offset)
    };
    match t {
        Some(t) if t >= UNIX_EPOCH && t < UNIX_EPOCH + LAST => {
            humantime::format_rfc3339_micros(t).to_string()
        }
        _ => format!("{micros_since_2000} µs after 2000-01-01T00:00:00Z"),
    }
}

fn process(node: &str) -> Process {
    Process::Actor(format!("cdc:{node}"))
}

fn now(rec: &Recorder) -> u64 {
    rec.elapsed().as_nanos() as u64
}

/// Whether `stop` says to stop, after its `changed()` returned `changed`: set, or its
/// sender is gone (nobody is left to say stop, so waiting on would spin).
fn told_to_stop(
    changed: Result<(), watch::error::RecvError>,
    stop: &watch::Receiver<bool>,
) -> bool {
    changed.is_err() || *stop.borrow()
}

/// How following a stream ended.
enum Ended {
    /// `stop` was set.
    Stopped,
    /// The stream was lost, for this reason.
    Lost(String),
}

/// Follows `w` until `stop` is set: records every committed insert or update of a
/// watched row, and every time it was blind as an `observer-gap`. Returns when stopped
/// (within about a second), after closing its session and running
/// [`CommitWatch::cleanup`].
pub async fn watch(w: CommitWatch, rec: Arc<Recorder>, mut stop: watch::Receiver<bool>) {
    // Since when the observer has been blind, the node it lost, and why.
    let mut blind: Option<(u64, Option<String>, String)> = None;
    let mut started = false;
    while !*stop.borrow() {
        let opened = tokio::select! {
            opened = w.open() => opened,
            changed = stop.changed() => {
                if told_to_stop(changed, &stop) {
                    break;
                }
                continue;
            }
        };
        let session = match opened {
            Ok(s) => s,
            Err(why) => {
                if !started {
                    // Blind from the start: the gap begins now.
                    blind.get_or_insert((now(&rec), None, why));
                    started = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    changed = stop.changed() => {
                        if told_to_stop(changed, &stop) {
                            break;
                        }
                    }
                }
                continue;
            }
        };
        started = true;
        let node = session.node.name.clone();
        if let Some((from, previous, why)) = blind.take() {
            rec.log(
                Event::new(0, process(&node), EventType::Info, "observer-gap")
                    .node(node.clone())
                    .value(
                        json!({"node": node, "previous": previous, "from": from, "to": now(&rec)}),
                    )
                    .error(why),
            );
        }
        let (ended, session) = follow(&w, &rec, session, &mut stop).await;
        session.close().await;
        match ended {
            Ended::Stopped => break,
            Ended::Lost(why) => blind = Some((now(&rec), Some(node), why)),
        }
    }
    if let Some((from, previous, why)) = blind.take() {
        // Stopped while blind: the gap lasted to the end, and resumed nowhere.
        let process = Process::Actor(match &previous {
            Some(node) => format!("cdc:{node}"),
            None => "cdc".to_string(),
        });
        rec.log(
            Event::new(0, process, EventType::Info, "observer-gap")
                .value(json!({"node": null, "previous": previous, "from": from, "to": now(&rec)}))
                .error(format!("{why} (still blind when stopped)")),
        );
    }
    let _ = tokio::time::timeout(STOP_WAIT * 2, w.cleanup()).await;
}

/// Records what `session` streams until it is lost or `stop` is set.
async fn follow(
    w: &CommitWatch,
    rec: &Recorder,
    mut session: Session,
    stop: &mut watch::Receiver<bool>,
) -> (Ended, Session) {
    let node = session.node.name.clone();
    // The watched table's relation ids in this session, and its columns.
    let mut relations: HashMap<u32, Columns> = HashMap::new();
    // The watched rows the open transaction changed.
    let mut pending: Vec<Change> = Vec::new();
    // Whether a transaction is open (between its Begin and its Commit).
    let mut in_transaction = false;
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended = loop {
        tokio::select! {
            ev = session.client.recv() => match ev {
                Ok(Some(ReplicationEvent::Begin { .. })) => {
                    pending.clear();
                    in_transaction = true;
                }
                // Between transactions, everything up to the server's WAL end was sent:
                // acknowledged, so that writes of other tables (whose transactions the
                // server does not send at all) do not make the slot retain WAL.
                Ok(Some(ReplicationEvent::KeepAlive { wal_end, .. })) if !in_transaction => {
                    session.client.update_applied_lsn(wal_end);
                }
                Ok(Some(ReplicationEvent::XLogData { data, .. })) => {
                    let step = decode(&data).and_then(|m| match m {
                        Message::Relation(r) => {
                            match w.columns_of(&r)? {
                                Some(c) => relations.insert(r.id, c),
                                None => relations.remove(&r.id),
                            };
                            Ok(())
                        }
                        Message::Insert { relation, new } | Message::Update { relation, new } => {
                            if let Some(columns) = relations.get(&relation) {
                                pending.push(change_of(columns, &new)?);
                            }
                            Ok(())
                        }
                        Message::Other(_) => Ok(()),
                    });
                    if let Err(e) = step {
                        break Ended::Lost(format!("{node}: undecodable change: {e}"));
                    }
                }
                Ok(Some(ReplicationEvent::Commit { lsn, end_lsn, commit_time_micros })) => {
                    let (lsn, ts) = (lsn.to_string(), commit_ts(commit_time_micros));
                    for c in pending.drain(..) {
                        let mut value = json!({"write": c.write, "lsn": lsn, "commit_ts": ts});
                        if w.version_column.is_some() {
                            value["version"] = json!(c.version);
                        }
                        rec.log(
                            Event::new(0, process(&node), EventType::Info, "commit")
                                .key(c.key)
                                .node(node.clone())
                                .value(value),
                        );
                    }
                    session.client.update_applied_lsn(end_lsn);
                    in_transaction = false;
                }
                Ok(Some(_)) => {}
                Ok(None) => break Ended::Lost(format!("{node}: the stream ended")),
                Err(e) => break Ended::Lost(format!("{node}: {e}")),
            },
            _ = probe.tick() => {
                match tokio::time::timeout(PROBE_TIMEOUT, in_recovery(&session.probe)).await {
                    Ok(Ok(false)) => {}
                    Ok(Ok(true)) => break Ended::Lost(format!("{node} is no longer the primary")),
                    Ok(Err(e)) => break Ended::Lost(format!("{node}: {e}")),
                    Err(_) => break Ended::Lost(format!("{node} did not answer for {PROBE_TIMEOUT:?}")),
                }
            }
            changed = stop.changed() => {
                if told_to_stop(changed, stop) {
                    break Ended::Stopped;
                }
            }
        }
    };
    (ended, session)
}

// ---- pgoutput, protocol version 1: the messages the observer reads ----

/// A column value in a pgoutput tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Datum {
    /// SQL NULL.
    Null,
    /// A TOASTed value the update did not change (its value is not sent).
    Unchanged,
    /// A value in text format.
    Text(String),
}

/// A Relation message: what a relation id in the following changes means.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Relation {
    id: u32,
    namespace: String,
    name: String,
    columns: Vec<String>,
}

/// A pgoutput message, as far as the observer cares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Message {
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Datum>,
    },
    Update {
        relation: u32,
        new: Vec<Datum>,
    },
    /// Any other message, by its tag (Begin and Commit never arrive here: the
    /// replication client turns them into events of their own).
    Other(u8),
}

/// Reads big-endian fields off a byte buffer, refusing to run past its end.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.data.len() < n {
            return Err(format!("{what}: needs {n} bytes, {} left", self.data.len()));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A NUL-terminated string.
    fn string(&mut self, what: &str) -> Result<String, String> {
        let end = self
            .data
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| format!("{what}: no terminating NUL"))?;
        let s = String::from_utf8_lossy(&self.data[..end]).into_owned();
        self.data = &self.data[end + 1..];
        Ok(s)
    }

    /// TupleData: a column count, then per column its kind and, for text, its value.
    fn tuple(&mut self) -> Result<Vec<Datum>, String> {
        let n = self.u16("tuple column count")?;
        let mut datums = Vec::with_capacity(usize::from(n).min(self.data.len()));
        for _ in 0..n {
            datums.push(match self.u8("tuple column kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' => {
                    let len = self.u32("text value length")? as usize;
                    let bytes = self.take(len, "text value")?;
                    Datum::Text(String::from_utf8_lossy(bytes).into_owned())
                }
                b'b' => return Err("a binary value (the observer asks for text)".into()),
                k => return Err(format!("unknown tuple column kind {:?}", k as char)),
            });
        }
        Ok(datums)
    }
}

/// Decodes one pgoutput message (the payload of an XLogData).
fn decode(data: &[u8]) -> Result<Message, String> {
    let mut r = Reader { data };
    let tag = r.u8("message tag")?;
    match tag {
        b'R' => {
            let id = r.u32("relation id")?;
            let namespace = r.string("relation namespace")?;
            let name = r.string("relation name")?;
            let _replica_identity = r.u8("replica identity")?;
            let n = r.u16("relation column count")?;
            let mut columns = Vec::with_capacity(usize::from(n).min(data.len()));
            for _ in 0..n {
                let _flags = r.u8("column flags")?;
                columns.push(r.string("column name")?);
                let _type = r.u32("column type")?;
                let _modifier = r.u32("column type modifier")?;
            }
            Ok(Message::Relation(Relation {
                id,
                namespace,
                name,
                columns,
            }))
        }
        b'I' => {
            let relation = r.u32("relation id")?;
            match r.u8("insert tuple kind")? {
                b'N' => Ok(Message::Insert {
                    relation,
                    new: r.tuple()?,
                }),
                k => Err(format!("insert: expected 'N', got {:?}", k as char)),
            }
        }
        b'U' => {
            let relation = r.u32("relation id")?;
            let mut kind = r.u8("update tuple kind")?;
            if kind == b'K' || kind == b'O' {
                let _old = r.tuple()?;
                kind = r.u8("update tuple kind")?;
            }
            match kind {
                b'N' => Ok(Message::Update {
                    relation,
                    new: r.tuple()?,
                }),
                k => Err(format!("update: expected 'N', got {:?}", k as char)),
            }
        }
        other => Ok(Message::Other(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds pgoutput messages by hand, following the protocol documentation.
    #[derive(Default)]
    struct Buf(Vec<u8>);

    impl Buf {
        fn u8(mut self, b: u8) -> Self {
            self.0.push(b);
            self
        }
        fn u16(mut self, n: u16) -> Self {
            self.0.extend(n.to_be_bytes());
            self
        }
        fn u32(mut self, n: u32) -> Self {
            self.0.extend(n.to_be_bytes());
            self
        }
        fn string(mut self, s: &str) -> Self {
            self.0.extend(s.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, s: &str) -> Self {
            let b = self.u8(b't').u32(s.len() as u32);
            let mut b = b;
            b.0.extend(s.as_bytes());
            b
        }
    }

    fn relation() -> Vec<u8> {
        let mut b = Buf::default()
            .u8(b'R')
            .u32(16384)
            .string("public")
            .string("items")
            .u8(b'd')
            .u16(4);
        for (flags, name, ty) in [
            (1, "key", 25),
            (0, "version", 20),
            (0, "write_id", 25),
            (0, "payload", 25),
        ] {
            b = b.u8(flags).string(name).u32(ty).u32(u32::MAX);
        }
        b.0
    }

    #[test]
    fn a_relation_message_names_the_columns_in_order() {
        let Message::Relation(r) = decode(&relation()).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(
            r,
            Relation {
                id: 16384,
                namespace: "public".into(),
                name: "items".into(),
                columns: vec![
                    "key".into(),
                    "version".into(),
                    "write_id".into(),
                    "payload".into()
                ],
            }
        );
        let w = CommitWatch {
            nodes: vec![],
            user: "u".into(),
            password: None,
            dbname: "d".into(),
            table: "items".into(),
            key_column: "key".into(),
            write_column: "write_id".into(),
            version_column: Some("version".into()),
            name: "T-1".into(),
        };
        assert_eq!(
            w.columns_of(&r).unwrap(),
            Some(Columns {
                key: 0,
                write: 2,
                version: Some(1)
            })
        );
        let other = Relation {
            name: "outbox".into(),
            ..r.clone()
        };
        assert_eq!(w.columns_of(&other).unwrap(), None);
        let w2 = CommitWatch {
            write_column: "nope".into(),
            ..w.clone()
        };
        assert!(w2.columns_of(&r).unwrap_err().contains("no column nope"));
        assert_eq!(w.object_name(), "coherence_t_1");
    }

    #[test]
    fn inserts_and_updates_give_the_new_row() {
        let insert = Buf::default()
            .u8(b'I')
            .u32(16384)
            .u8(b'N')
            .u16(4)
            .text("k1")
            .text("7")
            .text("w-7")
            .u8(b'n')
            .0;
        let row = vec![
            Datum::Text("k1".into()),
            Datum::Text("7".into()),
            Datum::Text("w-7".into()),
            Datum::Null,
        ];
        assert_eq!(
            decode(&insert).unwrap(),
            Message::Insert {
                relation: 16384,
                new: row.clone()
            }
        );
        // An update with the old key first ('K'), and one with the new row only.
        let update = Buf::default()
            .u8(b'U')
            .u32(16384)
            .u8(b'K')
            .u16(4)
            .text("k0")
            .u8(b'n')
            .u8(b'n')
            .u8(b'n')
            .u8(b'N')
            .u16(4)
            .text("k1")
            .text("7")
            .text("w-7")
            .u8(b'u')
            .0;
        let mut updated = row.clone();
        updated[3] = Datum::Unchanged;
        assert_eq!(
            decode(&update).unwrap(),
            Message::Update {
                relation: 16384,
                new: updated.clone()
            }
        );
        let plain = Buf::default().u8(b'U').u32(1).u8(b'N').u16(1).text("").0;
        assert_eq!(
            decode(&plain).unwrap(),
            Message::Update {
                relation: 1,
                new: vec![Datum::Text(String::new())]
            }
        );
        let columns = Columns {
            key: 0,
            write: 2,
            version: Some(1),
        };
        assert_eq!(
            change_of(&columns, &updated).unwrap(),
            Change {
                key: "k1".into(),
                write: Some("w-7".into()),
                version: Some(7)
            }
        );
        assert!(change_of(&Columns { key: 9, ..columns }, &updated).is_err());
        assert!(
            change_of(&Columns { key: 3, ..columns }, &row).is_err(),
            "null key"
        );
        // Deletes, truncates, types, origins: not the observer's business.
        assert_eq!(decode(b"D\0\0\0\x01").unwrap(), Message::Other(b'D'));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let good = relation();
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let insert = Buf::default()
            .u8(b'I')
            .u32(1)
            .u8(b'N')
            .u16(2)
            .text("abc")
            .text("de")
            .0;
        for cut in 0..insert.len() {
            assert!(decode(&insert[..cut]).is_err(), "cut at {cut}");
        }
        // A length far past the end, an unknown kind, a binary value, a huge count.
        let long = Buf::default()
            .u8(b'I')
            .u32(1)
            .u8(b'N')
            .u16(1)
            .u8(b't')
            .u32(u32::MAX)
            .0;
        assert!(decode(&long).is_err());
        let odd = Buf::default().u8(b'I').u32(1).u8(b'N').u16(1).u8(b'x').0;
        assert!(decode(&odd).is_err());
        let binary = Buf::default().u8(b'I').u32(1).u8(b'N').u16(1).u8(b'b').0;
        assert!(decode(&binary).unwrap_err().contains("binary"));
        let many = Buf::default().u8(b'I').u32(1).u8(b'N').u16(u16::MAX).0;
        assert!(decode(&many).is_err());
        assert!(decode(&Buf::default().u8(b'I').u32(1).u8(b'X').0).is_err());
        assert!(decode(&Buf::default().u8(b'U').u32(1).u8(b'O').u16(0).u8(b'K').0).is_err());
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn commit_times_read_as_rfc3339_utc_with_microseconds() {
        assert_eq!(commit_ts(0), "2000-01-01T00:00:00.000000Z");
        // 2026-12-02T10:14:30.123456Z
        let micros = (1_796_206_470 - 946_684_800) * 1_000_000 + 123_456;
        assert_eq!(commit_ts(micros), "2026-12-02T10:14:30.123456Z");
        assert_eq!(commit_ts(-1), "1999-12-31T23:59:59.999999Z");
        assert!(!commit_ts(i64::MIN).is_empty());
        assert!(!commit_ts(i64::MAX).is_empty());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("items"), "\"items\"");
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
    }
}
