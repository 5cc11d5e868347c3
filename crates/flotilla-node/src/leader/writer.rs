//! The leader's single writer: SQLite has one writer, so one thread owns the write connection
//! and the log. Requests queue on a channel; everything waiting is committed together (group
//! commit): one SQLite transaction, one log record, one fsync of each, then every request is
//! answered. An answer is sent only after the record is durable in the log.

use super::{Head, RecentRecords};
use crate::metrics::Counters;
use crate::time::wall_us;
use flotilla_log::Log;
use flotilla_store::{LeaderDb, RequestOutcome, TxnRequest};
use flotilla_types::{Epoch, NodeId, Position};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// Requests committed together at most.
const MAX_GROUP: usize = 256;

pub type WriteReply = Result<(RequestOutcome, Position), WriteError>;

pub struct WriteJob {
    pub request: TxnRequest,
    pub reply: oneshot::Sender<WriteReply>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The transaction may or may not have committed: the node stopped before it could tell.
    #[error(
        "the node stopped before the outcome was known: {0}; retry with the same idempotency key"
    )]
    Indeterminate(String),
    #[error("the write failed and was rolled back: {0}")]
    Failed(String),
}

pub struct WriterParts {
    pub db: LeaderDb,
    pub log: Arc<Log>,
    pub head: watch::Sender<Head>,
    pub recent: Arc<RecentRecords>,
    pub epoch: Epoch,
    pub origin: NodeId,
    pub counters: Arc<Counters>,
    /// Receives the reason when the writer hits a fatal error; the node then stops.
    pub fatal: mpsc::UnboundedSender<String>,
}

pub fn spawn_writer(
    parts: WriterParts,
    mut jobs: mpsc::Receiver<WriteJob>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("flotilla-writer".into())
        .spawn(move || {
            let WriterParts {
                mut db,
                log,
                head,
                recent,
                epoch,
                origin,
                counters,
                fatal,
            } = parts;
            while let Some(first) = jobs.blocking_recv() {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match jobs.try_recv() {
                        Ok(j) => group.push(j),
                        Err(_) => break,
                    }
                }
                let requests: Vec<TxnRequest> = group.iter().map(|j| j.request.clone()).collect();
                let now = wall_us();
                let outcome = match db.commit_batch(&requests, epoch, &origin, now) {
                    Ok(o) => o,
                    Err(e) if matches!(e, flotilla_store::StoreError::Capture(_)) => {
                        return stop(group, &fatal, format!("{e}"));
                    }
                    Err(e) => {
                        // SQLite refused the commit (disk full, IO error): rolled back.
                        let msg = e.to_string();
                        for j in group {
                            let _ = j.reply.send(Err(WriteError::Failed(msg.clone())));
                        }
                        continue;
                    }
                };
                let position = match &outcome.record {
                    Some(record) => {
                        let encoded = Arc::new(flotilla_wire::encode_record_with_rows(
                            record,
                            Some(&outcome.encoded_rows),
                        ));
                        if let Err(e) = log.append(&encoded).and_then(|_| log.sync()) {
                            // Committed in SQLite but not durable in the log: the node must stop;
                            // at restart the commit is recaptured from the WAL.
                            return stop(group, &fatal, format!("replication log: {e}"));
                        }
                        recent.push(record.lsn.0, record.commit_time_us, encoded.clone());
                        Counters::add(&counters.commits, 1);
                        head.send_replace(Head {
                            position: record.position(),
                            chain: record.chain,
                            commit_time_us: record.commit_time_us,
                        });
                        record.position()
                    }
                    None => db.meta().position,
                };
                for (job, out) in group.into_iter().zip(outcome.outcomes) {
                    let pos = match &out {
                        RequestOutcome::Duplicate { position, .. } => *position,
                        RequestOutcome::Committed(_) => {
                            Counters::add(&counters.committed_requests, 1);
                            position
                        }
                        RequestOutcome::Failed { .. } => position,
                    };
                    let _ = job.reply.send(Ok((out, pos)));
                }
                if let Err(e) = db.maybe_checkpoint() {
                    tracing::warn!("checkpoint failed (will retry): {e}");
                }
            }
        })
        .expect("spawn writer thread")
}

fn stop(group: Vec<WriteJob>, fatal: &mpsc::UnboundedSender<String>, reason: String) {
    tracing::error!("stopping the node: {reason}");
    for j in group {
        let _ = j.reply.send(Err(WriteError::Indeterminate(reason.clone())));
    }
    let _ = fatal.send(reason);
}
