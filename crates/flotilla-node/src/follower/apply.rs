//! The apply thread: owns the follower's write connection (SQLite work is blocking).

use flotilla_store::{LocalOutcome, StoreError};
use flotilla_store::{Replica, ReplicaSettings};
use flotilla_types::{Chain, LogRecord, Position};
use std::path::PathBuf;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// What an opened database holds: position, chain, cluster id (`None`: no database).
pub type Opened = Result<Option<(Position, Chain, String)>, StoreError>;

/// Called on the apply thread with the outcome of a batch.
pub type ApplyDone = Box<dyn FnOnce(Result<(Position, Chain), StoreError>) + Send>;

pub enum ApplyJob {
    Apply(Vec<LogRecord>, ApplyDone),
    /// Close the database (before a snapshot replaces it).
    Close(oneshot::Sender<()>),
    /// (Re)open the database; answers with its position, chain and cluster id.
    Open(oneshot::Sender<Opened>),
    /// A client transaction on a logical follower's own tables.
    /// (The statements, their time limit in ms.)
    ExecuteLocal(
        Vec<(String, Vec<rusqlite::types::Value>)>,
        u64,
        oneshot::Sender<Result<LocalOutcome, StoreError>>,
    ),
}

pub fn spawn(
    path: PathBuf,
    settings: ReplicaSettings,
    mut db: Option<Replica>,
) -> mpsc::Sender<ApplyJob> {
    let (tx, rx) = mpsc::channel::<ApplyJob>();
    std::thread::Builder::new()
        .name("flotilla-apply".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                match job {
                    ApplyJob::Apply(records, reply) => {
                        let res = match db.as_mut() {
                            Some(d) => d.apply(&records).map(|m| (m.position, m.chain)),
                            None => Err(StoreError::Apply("no database is open".into())),
                        };
                        reply(res);
                    }
                    ApplyJob::ExecuteLocal(statements, timeout_ms, reply) => {
                        let res = match db.as_mut() {
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
                        db = None;
                        let _ = reply.send(());
                    }
                    ApplyJob::Open(reply) => {
                        let res = Replica::open(&path, &settings);
                        let answer = match res {
                            Ok(Some(d)) => {
                                let m = d.meta().clone();
                                db = Some(d);
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
