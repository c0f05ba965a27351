//! Observers: coherence watching a system from outside, as Meta's Polaris does, rather
//! than trusting what its own clients did. The cache observer subscribes to a cache
//! node's keyspace notifications for the campaign's keys and records each change it
//! is told of into the history, under process `monitor:<node>`, stamped on the run's
//! clock when it is received: a `del`/`unlink` as `invalidate`, `expired` as `expire`,
//! `evicted` as `evict`, a `set` as `set`.
//!
//! A notification does not say what was set. When the campaign asks for it
//! ([`CacheWatch::read_back`]), the observer reads each set key back on its node and
//! records what the node held as a `sample` (`{"from", "held"}`: sent at `from`, the
//! value or null): holding evidence for the checker where the workload records no
//! fills (a user's service fills its cache unseen).
//!
//! Notifications are fire-and-forget: while the subscription is down, changes happen
//! unseen. So a dropped subscription is reconnected, and the time it was down is
//! recorded as an `observer-gap` event (`{"node", "from", "to"}`, ns on the run's
//! clock), for the checker to know where the observer was blind.
//!
//! `coherence run` starts one per watched cache node before the workload and stops them
//! after the final phase (`src/observers.rs`), as the campaign's `[observe]` says.

use coherence_store::recorder::Recorder;
use coherence_store::{Event, EventType, Process};
use futures_util::StreamExt as _;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The keyspace notification classes the observer needs: keyspace events (`K`) of
/// generic commands (`g`: `del`, `unlink`), strings (`$`: `set`), expiry (`x`) and
/// eviction (`e`).
pub const NOTIFY_CLASSES: &str = "K$gxe";

/// What the observer records for a keyspace notification `event`, if anything.
pub fn notice_of(event: &str) -> Option<&'static str> {
    match event {
        "del" | "unlink" => Some("invalidate"),
        "expired" => Some("expire"),
        "evicted" => Some("evict"),
        "set" => Some("set"),
        _ => None,
    }
}

/// One cache node to watch.
#[derive(Debug, Clone)]
pub struct CacheWatch {
    /// Its name in the history (`r1a`).
    pub node: String,
    /// `host:port`.
    pub addr: String,
    /// The keys, as a glob (`k*`).
    pub pattern: String,
    /// Database number.
    pub db: u32,
    /// Whether to turn the notifications on whenever the observer (re)subscribes, as
    /// the lab does: a restarted Redis comes back with its configuration file's
    /// setting, which may be off. Without it the setting is checked instead, and while
    /// it is off the observer counts itself blind.
    pub configure: bool,
    /// Read each set key back and record what the node held (`sample`), decoding the
    /// cached value so; `None`: record only that it was set.
    pub read_back: Option<crate::http::Decode>,
}

/// Read-backs in flight per node at most: more wait for one to finish.
const READ_BACKS_IN_FLIGHT: usize = 32;

impl CacheWatch {
    fn client(&self) -> redis::RedisResult<redis::Client> {
        redis::Client::open(format!("redis://{}/{}", self.addr, self.db))
    }

    /// Whether the node sends the notifications the observer needs; if it does not, an
    /// error naming the node and the exact line that turns them on.
    pub async fn check_setting(&self) -> Result<(), String> {
        let client = self.client().map_err(|e| format!("{}: {e}", self.node))?;
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("cannot reach {} at {}: {e}", self.node, self.addr))?;
        let (_, flags): (String, String) = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut con)
            .await
            .map_err(|e| format!("{}: CONFIG GET notify-keyspace-events: {e}", self.node))?;
        if classes_cover(&flags) {
            return Ok(());
        }
        Err(format!(
            "{} ({}) does not send the keyspace notifications the observer needs \
             (notify-keyspace-events is {flags:?}): run `redis-cli -h {} CONFIG SET \
             notify-keyspace-events {NOTIFY_CLASSES}` there, or let the campaign set it \
             (configure = true)",
            self.node,
            self.addr,
            self.addr.split(':').next().unwrap_or(&self.addr),
        ))
    }

    /// Turns the notifications the observer needs on (as the lab does).
    pub async fn configure(&self) -> Result<(), String> {
        let client = self.client().map_err(|e| format!("{}: {e}", self.node))?;
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("cannot reach {} at {}: {e}", self.node, self.addr))?;
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(NOTIFY_CLASSES)
            .query_async::<()>(&mut con)
            .await
            .map_err(|e| format!("{}: CONFIG SET notify-keyspace-events: {e}", self.node))
    }
}

/// Whether notification classes `flags` (as `CONFIG GET` shows them) include what the
/// observer needs.
pub fn classes_cover(flags: &str) -> bool {
    let keyspace = flags.contains('K');
    let all = flags.contains('A');
    keyspace && (all || NOTIFY_CLASSES[1..].chars().all(|c| flags.contains(c)))
}

fn process(node: &str) -> Process {
    Process::Actor(format!("monitor:{node}"))
}

/// Watches `w` until `stop` is set: records what the node's notifications say, and
/// every time the subscription was down as an `observer-gap`. Returns when stopped.
pub async fn watch(w: CacheWatch, rec: Arc<Recorder>, stop: watch::Receiver<bool>) {
    watch_ready(w, rec, stop, None).await
}

/// As [`watch`], and says on `ready` when it first subscribed (or first went blind, so
/// that a caller waiting for it never waits for a node that is down: the gap says so).
pub async fn watch_ready(
    w: CacheWatch,
    rec: Arc<Recorder>,
    mut stop: watch::Receiver<bool>,
    mut ready: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let channel = format!("__keyspace@{}__:", w.db);
    // The read-backs, on a task of their own so that they never delay stamping.
    let (sample_tx, sampler) = match &w.read_back {
        Some(decode) => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            let task = tokio::spawn(read_back(w.clone(), decode.clone(), rec.clone(), rx));
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    watch_notifications(
        &w,
        &rec,
        &mut stop,
        &mut ready,
        &channel,
        sample_tx.as_ref(),
    )
    .await;
    // The read-backs asked for are answered (or given up) before the observer stops.
    drop(sample_tx);
    if let Some(task) = sampler {
        if tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .is_err()
        {
            eprintln!("the read-backs of {} did not finish in 2 s", w.node);
        }
    }
}

async fn watch_notifications(
    w: &CacheWatch,
    rec: &Arc<Recorder>,
    stop: &mut watch::Receiver<bool>,
    ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
    channel: &str,
    samples: Option<&tokio::sync::mpsc::UnboundedSender<String>>,
) {
    // When the observer went blind (None: it sees, or has not started yet).
    let mut blind_since: Option<u64> = None;
    let mut started = false;
    while !*stop.borrow() {
        let subscribed = async {
            // A node that came back (restarted) may send no notifications any more:
            // subscribed to it, the observer would hear nothing and not know it.
            if w.configure {
                w.configure().await?;
            } else {
                w.check_setting().await?;
            }
            let redis = |e: redis::RedisError| e.to_string();
            let mut pubsub = w
                .client()
                .map_err(redis)?
                .get_async_pubsub()
                .await
                .map_err(redis)?;
            pubsub
                .psubscribe(format!("{channel}{}", w.pattern))
                .await
                .map_err(redis)?;
            Ok::<_, String>(pubsub)
        }
        .await;
        let mut pubsub = match subscribed {
            Ok(p) => p,
            Err(_) => {
                if !started {
                    // Blind from the start: the gap begins now.
                    blind_since.get_or_insert(rec.elapsed().as_nanos() as u64);
                    started = true;
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        };
        started = true;
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        if let Some(from) = blind_since.take() {
            log_gap(rec, &w.node, from);
        }
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { break };
                    let Some(key) = msg.get_channel_name().strip_prefix(channel) else { continue };
                    let Ok(event) = msg.get_payload::<String>() else { continue };
                    if let Some(f) = notice_of(&event) {
                        rec.log(
                            Event::new(0, process(&w.node), EventType::Info, f)
                                .key(key.to_string())
                                .node(w.node.clone()),
                        );
                        if let (Some(tx), "set") = (samples, f) {
                            let _ = tx.send(key.to_string());
                        }
                    }
                }
                _ = stop.changed() => {
                    if *stop.borrow() { return; }
                }
            }
        }
        // The subscription dropped: blind until it is back.
        blind_since = Some(rec.elapsed().as_nanos() as u64);
    }
    // Stopped while blind: the gap lasted until now.
    if let Some(from) = blind_since {
        log_gap(rec, &w.node, from);
    }
}

/// Reads back each key `keys` names on `w`'s node and logs what it held, as a
/// `sample`, until the channel closes. A read-back that fails logs nothing: it shows
/// nothing held.
async fn read_back(
    w: CacheWatch,
    decode: crate::http::Decode,
    rec: Arc<Recorder>,
    keys: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let Ok(client) = w.client() else { return };
    let con: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>> =
        tokio::sync::Mutex::new(None);
    let stream =
        futures_util::stream::unfold(
            keys,
            |mut rx| async move { rx.recv().await.map(|k| (k, rx)) },
        );
    stream
        .for_each_concurrent(READ_BACKS_IN_FLIGHT, |key| {
            let (client, con, w, decode, rec) = (&client, &con, &w, &decode, &rec);
            async move {
                let mut c = {
                    let mut slot = con.lock().await;
                    if slot.is_none() {
                        let opened = tokio::time::timeout(
                            Duration::from_secs(1),
                            client.get_multiplexed_async_connection(),
                        )
                        .await;
                        if let Ok(Ok(c)) = opened {
                            *slot = Some(c);
                        }
                    }
                    match slot.clone() {
                        Some(c) => c,
                        None => return,
                    }
                };
                match read_back_sample(rec, &mut c, decode, &w.node, &key).await {
                    ReadBack::Held(ev) => rec.log(ev),
                    ReadBack::NoEvidence => {}
                    ReadBack::NoAnswer => *con.lock().await = None,
                }
            }
        })
        .await;
}

/// What reading a key back on a node gave.
#[derive(Debug)]
pub enum ReadBack {
    /// The node's observer's `sample` of what it held (not yet logged).
    Held(Event),
    /// The cached value names no write of the workload's: it shows nothing.
    NoEvidence,
    /// The node did not answer within a second (its connection is better dropped).
    NoAnswer,
}

/// Reads `key` back on `node` over `con`, decoding the cached value with `decode`:
/// the `sample` event of the node's observer (`{"from", "held"}`, `from` when the GET
/// was sent), for the caller to log (the watcher adds fields to it first).
pub async fn read_back_sample(
    rec: &Recorder,
    con: &mut redis::aio::MultiplexedConnection,
    decode: &crate::http::Decode,
    node: &str,
    key: &str,
) -> ReadBack {
    let from = rec.elapsed().as_nanos() as u64;
    let got = tokio::time::timeout(
        Duration::from_secs(1),
        redis::cmd("GET")
            .arg(key)
            .query_async::<Option<String>>(con),
    )
    .await;
    let held = match got {
        Ok(Ok(None)) => serde_json::Value::Null,
        Ok(Ok(Some(cached))) => match decode.held(&cached) {
            Some(v) => v,
            None => return ReadBack::NoEvidence,
        },
        _ => return ReadBack::NoAnswer,
    };
    ReadBack::Held(
        Event::new(0, process(node), EventType::Info, "sample")
            .key(key.to_string())
            .node(node.to_string())
            .value(json!({"from": from, "held": held})),
    )
}

/// Logs that the observer of `node` was blind from `from` until now.
fn log_gap(rec: &Recorder, node: &str, from: u64) {
    let to = rec.elapsed().as_nanos() as u64;
    rec.log(
        Event::new(0, process(node), EventType::Info, "observer-gap")
            .node(node.to_string())
            .value(json!({"node": node, "from": from, "to": to})),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_map_to_history_events() {
        assert_eq!(notice_of("del"), Some("invalidate"));
        assert_eq!(notice_of("unlink"), Some("invalidate"));
        assert_eq!(notice_of("expired"), Some("expire"));
        assert_eq!(notice_of("evicted"), Some("evict"));
        assert_eq!(notice_of("set"), Some("set"));
        assert_eq!(notice_of("expire"), None, "setting a TTL changes no value");
        assert!(classes_cover("K$gxe") && classes_cover("xeKg$") && classes_cover("AK"));
        assert!(!classes_cover("") && !classes_cover("Egx$") && !classes_cover("Kgx"));
    }
}
