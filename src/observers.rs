//! The run's observers (`[observe]`): a cache observer per watched cache node and the
//! commit observer of the watched table, started before the workload on a runtime of
//! their own (so that the workload's load does not delay their stamping), and stopped
//! after the final phase. They log into the run's history: the `observe` event saying
//! what is watched, then what each observer sees (`docs/history.md`, *Observers*).

use anyhow::{bail, Context, Result};
use coherence_store::recorder::Recorder;
use coherence_store::{Event, EventType, Process};
use coherence_workloads::campaign::Observe;
use coherence_workloads::commits::{self, CommitWatch, DbNode};
use coherence_workloads::observe::{self, CacheWatch};
use coherence_workloads::workload::{Endpoints, Node};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the observers may take to subscribe and start streaming before the workload
/// starts anyway (a node that is down shows as a gap from the start).
const READY_WAIT: Duration = Duration::from_secs(30);

/// The database the commit observer follows.
pub struct Database {
    /// Its servers (the observer follows the primary among them).
    pub nodes: Vec<Node>,
    /// The user (with the REPLICATION attribute).
    pub user: String,
    /// The password, from the environment or the password file; never logged.
    pub password: Option<String>,
    /// The database.
    pub dbname: String,
}

/// What the run will watch.
pub struct Plan {
    caches: Vec<CacheWatch>,
    configure: bool,
    commits: Option<CommitWatch>,
}

impl Plan {
    /// The observers `observe` asks for on the cluster of `endpoints`; `tag` names the
    /// commit observer's publication and slot. An unknown node name is refused.
    /// `unseen_fills`: the workload records no fills of its own (a service driven
    /// through its API), so the cache observer reads back what was set unless
    /// `[observe] read_back` says otherwise.
    pub fn new(
        observe: &Observe,
        endpoints: &Endpoints,
        db: Database,
        tag: &str,
        unseen_fills: bool,
    ) -> Result<Plan> {
        let all: Vec<Node> = endpoints.regions.iter().flat_map(|r| r.all()).collect();
        if let Some(names) = &observe.nodes {
            for n in names {
                if !all.iter().any(|a| &a.name == n) {
                    let known: Vec<&str> = all.iter().map(|a| a.name.as_str()).collect();
                    bail!(
                        "[observe] nodes: no cache node is named {n:?}: the cluster's are {}",
                        known.join(", ")
                    );
                }
            }
        }
        // A workload that records no fills of its own (a service's API) needs the
        // read-backs; `[observe] value` says how to read them.
        let read_back = if observe.read_back.unwrap_or(unseen_fills) {
            Some(
                coherence_workloads::http::Decode::new(&observe.value)
                    .context("[observe] value")?,
            )
        } else {
            None
        };
        let caches = if observe.caches {
            all.into_iter()
                .filter(|n| {
                    observe
                        .nodes
                        .as_ref()
                        .is_none_or(|names| names.contains(&n.name))
                })
                .map(|n| CacheWatch {
                    node: n.name,
                    addr: n.addr,
                    pattern: observe.pattern.clone(),
                    db: 0,
                    configure: observe.configure,
                    read_back: read_back.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let commits = match &observe.database {
            None => None,
            Some(d) => Some(CommitWatch {
                nodes: db
                    .nodes
                    .iter()
                    .map(|n| {
                        let (host, port) = n.addr.rsplit_once(':').unwrap_or((&n.addr, "5432"));
                        let port = port.parse().with_context(|| {
                            format!("the database node {} has no port in {:?}", n.name, n.addr)
                        })?;
                        Ok(DbNode {
                            name: n.name.clone(),
                            host: host.to_string(),
                            port,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
                user: db.user,
                password: db.password,
                dbname: db.dbname,
                table: d.table.clone(),
                key_column: d.key_column.clone(),
                write_column: d.write_column.clone(),
                version_column: Some(d.version_column.clone()).filter(|c| !c.is_empty()),
                name: tag.to_string(),
            }),
        };
        Ok(Plan {
            caches,
            configure: observe.configure,
            commits,
        })
    }

    /// Checks (or, with `configure`, turns on) what the observers need, before anything
    /// runs: keyspace notifications on every watched node, logical decoding and the
    /// table on the database. Errors name the node and what to do.
    pub fn check(&self) -> Result<()> {
        let rt = runtime()?;
        rt.block_on(async {
            for w in &self.caches {
                let r = if self.configure {
                    w.configure().await
                } else {
                    w.check_setting().await
                };
                r.map_err(|e| anyhow::anyhow!("[observe] {e}"))?;
            }
            if let Some(c) = &self.commits {
                c.prepare()
                    .await
                    .map_err(|e| anyhow::anyhow!("[observe.database] {e}"))?;
            }
            Ok(())
        })
    }

    /// Logs what is watched and starts the observers; returns once each has subscribed
    /// (or gone blind) and the commit observer streams, or after [`READY_WAIT`].
    pub fn start(self, rec: Arc<Recorder>) -> Result<Running> {
        let databases: Vec<String> = self
            .commits
            .iter()
            .flat_map(|c| c.nodes.iter().map(|n| n.name.clone()))
            .collect();
        rec.log(
            Event::new(
                0,
                Process::Actor("control".into()),
                EventType::Info,
                "observe",
            )
            .value(json!({
                "caches": self.caches.iter().map(|c| c.node.clone()).collect::<Vec<_>>(),
                "databases": databases,
            })),
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("coherence-observer")
            .enable_all()
            .build()
            .context("cannot start the observers' runtime")?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let mut ready = Vec::new();
        for w in self.caches {
            let (tx, rx) = tokio::sync::oneshot::channel();
            ready.push(rx);
            tasks.push(rt.spawn(observe::watch_ready(
                w,
                rec.clone(),
                stop_rx.clone(),
                Some(tx),
            )));
        }
        let deadline = Instant::now() + READY_WAIT;
        rt.block_on(async {
            for r in ready {
                let _ = tokio::time::timeout_at(deadline.into(), r).await;
            }
        });
        if let Some(c) = self.commits {
            tasks.push(rt.spawn(commits::watch(c.clone(), rec.clone(), stop_rx.clone())));
            let streaming = rt.block_on(async {
                while Instant::now() < deadline {
                    if c.streaming().await.unwrap_or(false) {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                false
            });
            if !streaming {
                eprintln!(
                    "warning: the commit observer was not streaming after {} s; the workload starts anyway (its gap will show)",
                    READY_WAIT.as_secs()
                );
            }
        }
        Ok(Running {
            rt,
            stop: stop_tx,
            tasks,
        })
    }
}

/// The observers while they run.
pub struct Running {
    rt: tokio::runtime::Runtime,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops every observer and waits for them (the commit observer cleans up on the
    /// server); their handles on the history are dropped by then.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        self.rt.block_on(async {
            for t in self.tasks {
                if tokio::time::timeout(Duration::from_secs(5), t)
                    .await
                    .is_err()
                {
                    eprintln!("warning: an observer did not stop within 5 s");
                }
            }
        });
        self.rt.shutdown_timeout(Duration::from_secs(1));
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
