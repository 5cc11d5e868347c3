//! The follower's write connection, shared by two users that take turns through its mutex:
//! the driver applies batches itself, in place on its tokio worker (`block_in_place`), so a
//! received batch is committed without waking another thread first — the hop that used to sit
//! between receiving a record and showing it; the apply thread runs everything else (closing
//! and opening around a bootstrap, a logical follower's own writes).

use flotilla_store::{LocalOutcome, StoreError};
use flotilla_store::{Replica, ReplicaSettings};
use flotilla_types::{Chain, LogRecord, Position};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

/// What an opened database holds: position, chain, cluster id (`None`: no database).
pub type Opened = Result<Option<(Position, Chain, String)>, StoreError>;

/// The follower's database (`None` while there is none: before a bootstrap, or during one).
pub type SharedReplica = Arc<Mutex<Option<Replica>>>;

/// Applies `records` in one local transaction; returns the position and chain reached. Blocks
/// (SQLite): call it where blocking is allowed.
pub fn apply(db: &SharedReplica, records: &[LogRecord]) -> Result<(Position, Chain), StoreError> {
    match lock(db).as_mut() {
        Some(d) => d.apply(records).map(|m| (m.position, m.chain)),
        None => Err(StoreError::Apply("no database is open".into())),
    }
}

fn lock(db: &SharedReplica) -> std::sync::MutexGuard<'_, Option<Replica>> {
    db.lock().unwrap_or_else(|p| p.into_inner())
}

pub enum ApplyJob {
    /// Close the database (before a snapshot replaces it).
    Close(oneshot::Sender<()>),
    /// (Re)open the database; answers with its position, chain and cluster id.
    Open(oneshot::Sender<Opened>),
    /// A client transaction on a logical follower's own tables.
    /// (The statements, their time limit in ms.)
    ExecuteLocal(
        Vec<(String, flotilla_store::Params)>,
        u64,
        oneshot::Sender<Result<LocalOutcome, StoreError>>,
    ),
}

pub fn spawn(
    path: PathBuf,
    settings: ReplicaSettings,
    db: SharedReplica,
) -> mpsc::Sender<ApplyJob> {
    let (tx, rx) = mpsc::channel::<ApplyJob>();
    std::thread::Builder::new()
        .name("flotilla-apply".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                match job {
                    ApplyJob::ExecuteLocal(statements, timeout_ms, reply) => {
                        let res = match lock(&db).as_mut() {
                            Some(Replica::Logical(r)) => r.execute_local(&statements, timeout_ms),
                            Some(Replica::Physical(_)) => Err(StoreError::Apply(
                                "a physical follower takes no writes".into(),
                            )),
                            None => Err(StoreError::Apply(
                                "no database is open yet (bootstrapping)".into(),
                            )),
                        };
                        let _ = reply.send(res);
                    }
                    ApplyJob::Close(reply) => {
                        *lock(&db) = None;
                        let _ = reply.send(());
                    }
                    ApplyJob::Open(reply) => {
                        let res = Replica::open(&path, &settings);
                        let answer = match res {
                            Ok(Some(d)) => {
                                let m = d.meta().clone();
                                *lock(&db) = Some(d);
                                Ok(Some((m.position, m.chain, m.cluster_id)))
                            }
                            Ok(None) => Ok(None),
                            Err(e) => Err(e),
                        };
                        let _ = reply.send(answer);
                    }
                }
            }
        })
        .expect("spawn apply thread");
    tx
}
