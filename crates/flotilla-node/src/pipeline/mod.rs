//! Trigger-based replication on a leader: one delivery worker per pipeline stored in the
//! database, started and stopped as pipelines are added, removed, paused and resumed. Physical
//! followers carry the pipelines byte for byte but never run them (only a leader delivers).
//!
//! Delivery is effectively exactly-once: each target keeps the pipeline's cursor (the last
//! changelog `seq` applied) and advances it in the same target transaction as the changes, so a
//! crash anywhere neither loses nor repeats a change. Delivered rows are deleted from the
//! changelog by the writer, inside its next commit.

pub mod allow;
mod file_target;
mod flotilla_target;
mod postgres_target;
mod target;
mod worker;

pub use target::{check_target, Delivery, TargetError};

use crate::leader::LeaderState;
use crate::metrics::Counters;
use crate::readers::ReaderPool;
use flotilla_store::StoredPipeline;
use flotilla_types::PipelineSpec;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// What a worker reports about its pipeline.
#[derive(Debug, Clone, Default)]
pub struct DeliveryStatus {
    /// `starting`, `delivering`, `idle`, `paused`, `error`.
    pub state: &'static str,
    /// The last changelog seq the target confirmed.
    pub cursor: Option<i64>,
    /// The source position (LSN) of the last delivered change.
    pub delivered_lsn: u64,
    pub last_error: Option<String>,
    /// Commit-to-delivered time of the last batch.
    pub last_lag_ms: Option<u64>,
}

pub struct Worker {
    pub stored: Mutex<StoredPipeline>,
    pub paused: AtomicBool,
    pub status: Mutex<DeliveryStatus>,
    pub delivered_rows: AtomicU64,
    pub cancel: CancellationToken,
    pub wake: tokio::sync::Notify,
}

impl Worker {
    pub fn status(&self) -> DeliveryStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, f: impl FnOnce(&mut DeliveryStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// The running pipelines of a leader.
#[derive(Default)]
pub struct Pipelines {
    workers: Mutex<HashMap<String, Arc<Worker>>>,
    /// Wakes the manager after a pipeline was added, removed, paused or resumed.
    pub changed: tokio::sync::Notify,
    /// Pipelines declared in the config that are not installed (or differ), and why.
    declared: Mutex<BTreeMap<String, String>>,
}

impl Pipelines {
    /// Config-declared pipelines that could not be installed as declared, with the reason.
    pub fn declared_problems(&self) -> BTreeMap<String, String> {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn worker(&self, name: &str) -> Option<Arc<Worker>> {
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Worker>> {
        let mut v: Vec<Arc<Worker>> = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|w| w.stored.lock().unwrap_or_else(|p| p.into_inner()).id);
        v
    }
}

/// What the pipelines' tasks need of their leader node, and nothing more.
#[derive(Clone)]
pub struct PipelineHost {
    pub leader: Arc<LeaderState>,
    pub pipelines: Arc<Pipelines>,
    pub readers: Arc<ReaderPool>,
    pub counters: Arc<Counters>,
    /// The pipelines the node's config declares (installed if missing).
    pub declared: Arc<Vec<PipelineSpec>>,
    /// The targets the operator allows (`pipeline.allow`).
    pub allow: Arc<Vec<allow::Allowed>>,
    /// For Flotilla targets.
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
}

/// Reads the stored pipelines through a reader connection.
pub async fn stored_pipelines(readers: &Arc<ReaderPool>) -> anyhow::Result<Vec<StoredPipeline>> {
    let mut lease = readers.lease().await?;
    let list = tokio::task::spawn_blocking(move || {
        let r = lease.reader();
        let rules = r.rules.clone();
        rules.internal(|| flotilla_store::read_pipelines(&r.conn))
    })
    .await??;
    Ok(list)
}

/// Keeps one worker per stored pipeline, until the node stops.
pub async fn manage(host: PipelineHost) {
    let pipelines = host.pipelines.clone();
    loop {
        match stored_pipelines(&host.readers).await {
            Ok(list) => {
                if install_declared(&host, &list).await {
                    continue; // read the list again, with the new pipeline
                }
                let mut workers = pipelines.workers.lock().unwrap_or_else(|p| p.into_inner());
                workers.retain(|name, w| {
                    let keep = list.iter().any(|p| {
                        &p.spec.name == name
                            && p.id == w.stored.lock().unwrap_or_else(|x| x.into_inner()).id
                    });
                    if !keep {
                        w.cancel.cancel();
                    }
                    keep
                });
                for p in list {
                    match workers.get(&p.spec.name) {
                        Some(w) => {
                            w.paused.store(p.paused, Ordering::Relaxed);
                            *w.stored.lock().unwrap_or_else(|x| x.into_inner()) = p;
                            w.wake.notify_one();
                        }
                        None => {
                            let w = Arc::new(Worker {
                                paused: AtomicBool::new(p.paused),
                                stored: Mutex::new(p.clone()),
                                status: Mutex::new(DeliveryStatus {
                                    state: "starting",
                                    ..Default::default()
                                }),
                                delivered_rows: AtomicU64::new(0),
                                cancel: host.shutdown.child_token(),
                                wake: tokio::sync::Notify::new(),
                            });
                            workers.insert(p.spec.name.clone(), w.clone());
                            tokio::spawn(worker::run(host.clone(), w));
                        }
                    }
                }
            }
            Err(e) => tracing::warn!("cannot read the pipelines: {e}"),
        }
        // A declared pipeline waiting for its source table is retried sooner.
        let pass = if pipelines.declared_problems().is_empty() {
            5
        } else {
            1
        };
        tokio::select! {
            _ = pipelines.changed.notified() => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(pass)) => {}
            _ = host.shutdown.cancelled() => return,
        }
    }
}

/// Installs the config's pipelines that are not stored yet (a source table may not exist
/// yet: retried on every pass). Returns whether one was installed.
async fn install_declared(host: &PipelineHost, stored: &[StoredPipeline]) -> bool {
    let leader = &host.leader;
    let mut problems = BTreeMap::new();
    let mut installed = false;
    for spec in host.declared.iter() {
        match stored.iter().find(|p| p.spec.name == spec.name) {
            Some(p) if p.spec != *spec => {
                problems.insert(
                    spec.name.clone(),
                    "the config declares it differently from the installed pipeline, which \
                     runs as installed; remove it (flotilla pipeline remove) to install the \
                     config's"
                        .to_string(),
                );
            }
            Some(_) => {}
            None => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let job = crate::leader::WriteJob::Pipeline {
                    change: crate::leader::PipelineChange::Add(Box::new(spec.clone())),
                    reply: tx,
                };
                if leader.writer.send(job).await.is_err() {
                    return false;
                }
                match rx.await {
                    Ok(Ok(position)) => {
                        tracing::info!(pipeline = %spec.name, %position, "installed the pipeline the config declares");
                        installed = true;
                    }
                    Ok(Err(e)) => {
                        problems.insert(spec.name.clone(), format!("not installed: {e}"));
                    }
                    Err(_) => return false,
                }
            }
        }
    }
    let mut declared = host
        .pipelines
        .declared
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    for (name, why) in &problems {
        if declared.get(name) != Some(why) {
            tracing::warn!(pipeline = %name, "config: {why}");
        }
    }
    *declared = problems;
    installed
}

/// A pipeline's status as the API shows it (backlog read from the changelog now).
pub async fn status_json(readers: &Arc<ReaderPool>, w: &Worker) -> Value {
    let stored = w.stored.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let st = w.status();
    let (id, after) = (stored.id, st.cursor.unwrap_or(stored.trimmed_to));
    let backlog = match readers.lease().await {
        Ok(mut lease) => tokio::task::spawn_blocking(move || {
            let r = lease.reader();
            let rules = r.rules.clone();
            rules.internal(|| flotilla_store::changelog::backlog(&r.conn, id, after))
        })
        .await
        .ok()
        .and_then(|r| r.ok()),
        Err(_) => None,
    };
    let now_ms = crate::time::wall_ms() as i64;
    let rows = backlog.map(|b| b.rows);
    let warn_at = stored.spec.backlog_warn_rows;
    let warning = match (rows, warn_at) {
        (Some(r), Some(limit)) if r > limit => Some(format!(
            "the backlog ({r} changes) is above the warning limit ({limit})"
        )),
        _ => None,
    };
    json!({
        "name": stored.spec.name,
        "source": stored.spec.source,
        "target": flotilla_types::PipelineTarget::redacted(&stored.spec.target),
        "into": stored.spec.target_table(),
        "state": if stored.paused { "paused" } else { st.state },
        "paused": stored.paused,
        "cursor": st.cursor,
        "delivered_position_lsn": st.delivered_lsn,
        "delivered_rows": w.delivered_rows.load(Ordering::Relaxed),
        "backlog_rows": rows,
        "oldest_change_age_ms": backlog.and_then(|b| b.oldest_at_ms).map(|t| (now_ms - t).max(0)),
        "last_lag_ms": st.last_lag_ms,
        "last_error": st.last_error,
        "backlog_warning": warning,
        "spec": redacted_spec(&stored.spec),
    })
}

/// A pipeline's definition as shown to anyone: the target's password (a PostgreSQL password, a
/// Flotilla token) masked.
fn redacted_spec(spec: &flotilla_types::PipelineSpec) -> serde_json::Value {
    let mut shown = spec.clone();
    shown.target = flotilla_types::PipelineTarget::redacted(&spec.target);
    serde_json::to_value(shown).expect("plain data serialises")
}
