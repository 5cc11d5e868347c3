//! The leader's single writer: SQLite has one writer, so one thread owns the write connection
//! and the log. Requests queue on a channel; everything waiting is committed together (group
//! commit): one SQLite transaction, one log record, one fsync of each, then every request is
//! answered. An answer is sent only after the record is durable in the log.

use super::{Head, RecentRecords};
use crate::metrics::Counters;
use crate::time::wall_us;
use flotilla_log::{Log, LogError};
use flotilla_store::{CommitOutcome, LeaderDb, RequestOutcome, TxnRequest};
use flotilla_types::{Epoch, NodeId, PipelineSpec, Position};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// Requests committed together at most.
const MAX_GROUP: usize = 256;

pub type WriteReply = Result<(RequestOutcome, Position), WriteError>;

pub enum WriteJob {
    /// A client transaction (committed in a group with others).
    Request {
        request: TxnRequest,
        /// On a cluster's leader, the answer waits for it (a single leader answers once its
        /// log holds the record; semi-sync waits in the handler).
        durability: flotilla_types::Durability,
        reply: oneshot::Sender<WriteReply>,
    },
    /// The leader stops leading: the writer ends (and closes the database).
    Stop,
    /// Adding, removing or pausing a pipeline: an internal commit of its own.
    Pipeline {
        change: PipelineChange,
        reply: oneshot::Sender<ChangeReply>,
    },
    /// Making or revoking an API token: an internal commit of its own.
    Token {
        change: TokenChange,
        reply: oneshot::Sender<ChangeReply>,
    },
    /// Replacing the database with a restored one (a new history at the next position).
    Restore(super::restore::RestoreJob),
    /// A cluster's leader hands over: everything queued before this job is executed and
    /// proposed, then the writer waits at the gate until it opens again or closes. `parked`
    /// says so, with the LSN of the last proposal (the transfer waits for the consensus to
    /// hold it).
    Pause {
        parked: oneshot::Sender<flotilla_types::Lsn>,
    },
    /// On a cluster's leader: a membership change, proposed at the next position between
    /// transactions (it takes an LSN of its own). Answered once proposed, with its LSN.
    Membership {
        change: flotilla_core::consensus::MemberChange,
        member: crate::cluster::driver::MemberContext,
        reply: oneshot::Sender<Result<flotilla_types::Lsn, String>>,
    },
    /// A transaction from another data centre, merged as one commit of its own (a duplicate
    /// is answered with the current position and commits nothing).
    Merge {
        jobs: Vec<MergeJob>,
        reply: oneshot::Sender<MergeReply>,
    },
    /// Setting a table's or column's conflict policy (multi-leader): a commit of its own.
    Policy {
        change: PolicyChange,
        reply: oneshot::Sender<ChangeReply>,
    },
    /// A device's push (see docs/devices.md): checked whole against the device's shape, then
    /// merged like [`WriteJob::Merge`], each transaction a commit of its own; a refused batch
    /// is answered `ChangeError::DeviceRefused` with nothing merged.
    DevicePush {
        view: Box<flotilla_store::devices::DeviceView>,
        origin: flotilla_types::OriginName,
        txns: Vec<flotilla_store::devices::DeviceTxn>,
        reply: oneshot::Sender<MergeReply>,
    },
    /// Registering a device, giving one of its local databases an origin, setting or
    /// removing a shape: a commit of its own.
    Device {
        change: super::device_jobs::DeviceChange,
        reply: oneshot::Sender<ChangeReply>,
    },
    /// Making a column collaborative, or storing what was merged into a document: a commit of
    /// its own.
    Collab {
        change: super::collab_jobs::CollabChange,
        reply: oneshot::Sender<ChangeReply>,
    },
    /// Deleting the resolved conflicts stamped before `before_ms` (multi-leader): a commit of
    /// its own; `pruned` hears how many (before `reply` hears the commit's position).
    PruneConflicts {
        before_ms: u64,
        pruned: oneshot::Sender<usize>,
        reply: oneshot::Sender<ChangeReply>,
    },
}

#[derive(Debug, Clone)]
pub struct PolicyChange {
    pub table: String,
    pub column: Option<String>,
    pub policy: String,
    pub expression: Option<String>,
}

/// How many of a [`WriteJob::Merge`]'s transactions were merged (or found merged before), in
/// order, why the next was not (`Err`), and the jobs not merged (to send again). Those merged
/// are durable in the log.
pub type MergeReply = (usize, Result<(), ChangeError>, Vec<MergeJob>);

/// What [`WriteJob::Merge`] merges: a transaction read at `peer_at` (its position and chain)
/// of `peer`'s log, or (`peer_at` `None`) one a device pushed, `peer` being its origin.
#[derive(Debug)]
pub struct MergeJob {
    pub stamp: flotilla_types::ExchangeStamp,
    pub changes: flotilla_types::RowPayload,
    pub peer: flotilla_types::OriginName,
    pub peer_at: Option<(Position, flotilla_types::Chain)>,
}

/// The answer to an internal change: the position of its commit, or why there is none.
pub type ChangeReply = Result<Position, ChangeError>;

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// A token change was refused (invalid, or no such token): nothing was committed.
    #[error(transparent)]
    Token(#[from] flotilla_store::TokenError),
    /// A pipeline change was refused: nothing was committed.
    #[error(transparent)]
    Pipeline(#[from] flotilla_store::PipelineError),
    /// Committed in SQLite but not made durable in the log: the node stops, and whether the
    /// change took effect is known after its restart.
    #[error("the node stopped before the change was durable: {0}")]
    Indeterminate(String),
    /// Not available on this node (a cluster's leader does not take such changes yet).
    #[error("{0}")]
    Unavailable(String),
    /// A transaction from another data centre was not merged: nothing was committed.
    #[error(transparent)]
    Merge(#[from] flotilla_store::MergeApplyError),
    /// A conflict policy was refused: nothing was committed.
    #[error(transparent)]
    Policy(#[from] flotilla_store::SetPolicyError),
    /// A device change was refused: nothing was committed.
    #[error(transparent)]
    Device(#[from] flotilla_store::devices::DeviceError),
    /// A device's push was refused: nothing of it was merged.
    #[error(transparent)]
    DeviceRefused(#[from] flotilla_store::devices::DeviceRefusal),
    /// A collaborative column or document change was refused: nothing was committed.
    #[error(transparent)]
    Collab(#[from] flotilla_store::collab::CollabError),
    /// The database could not be read.
    #[error(transparent)]
    Store(#[from] flotilla_store::StoreError),
}

#[derive(Debug, Clone)]
pub enum TokenChange {
    Add(flotilla_store::StoredToken),
    Revoke(String),
}

#[derive(Debug, Clone)]
pub enum PipelineChange {
    Add(Box<PipelineSpec>),
    Remove(String),
    Pause { name: String, paused: bool },
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
    /// Where the writer reports a fatal error; the node then stops.
    pub fatal: crate::fatal::FatalSender,
    /// Changelog rows the pipelines delivered, to delete inside the next commit.
    pub trims: Arc<super::Trims>,
    /// How the writer connection is opened again (after a restore).
    pub settings: flotilla_store::DbSettings,
    /// Cancels the writer connection's running statement (a restore replaces it).
    pub interrupt: Arc<std::sync::Mutex<flotilla_store::InterruptHandle>>,
    /// On a cluster's leader: where records go instead of the log (the consensus task
    /// persists and replicates them).
    pub cluster: Option<ClusterWriter>,
    pub gate: Arc<super::WriterGate>,
    /// This node's data centre (multi-leader).
    pub multi_leader: Option<DataCentreParts>,
    /// The open collaborative documents, told when a merge stored into theirs.
    pub collab: Arc<crate::collab::DocHub>,
}

/// What a data centre's writer needs to enable multi-leader (the first time: it makes the
/// tables in a commit of its own).
pub struct DataCentreParts {
    pub dc: flotilla_types::OriginName,
    /// The deployment a new data centre's database joins (kept from then on).
    pub deployment: String,
    /// The clock drift it accepts from other data centres.
    pub max_clock_drift_ms: u64,
}

/// How a cluster's leader publishes: each commit at the next position the consensus machine
/// gives (the writer is the only proposer while it leads, so it counts them itself), proposed
/// instead of appended; each request is answered once its durability holds.
pub struct ClusterWriter {
    pub proposals: mpsc::Sender<crate::cluster::driver::Proposal>,
    pub next: flotilla_types::Lsn,
    pub runtime: tokio::runtime::Handle,
}

/// Why a cluster's leader does not take a restore.
const NOT_IN_CLUSTER: &str = "a cluster's leader does not take a restore yet: restore a single \
     leader, and start the cluster's members from its data (see docs/failover.md)";

/// What the writer needs to make a commit durable and visible.
pub(super) struct Publisher {
    pub(super) log: Arc<Log>,
    pub(super) head: watch::Sender<Head>,
    pub(super) recent: Arc<RecentRecords>,
    counters: Arc<Counters>,
}

/// What the head needs of a record appended but not yet published.
struct LogRecordHead {
    position: Position,
    chain: flotilla_types::Chain,
    commit_time_us: u64,
}

impl Publisher {
    /// Appends a commit's record to the log without flushing it (see
    /// [`Publisher::sync_published`]).
    fn append(
        &self,
        outcome: &CommitOutcome,
    ) -> Result<Option<(LogRecordHead, bytes::Bytes)>, LogError> {
        let Some(record) = &outcome.record else {
            return Ok(None);
        };
        let encoded = bytes::Bytes::from(flotilla_wire::encode_record_with_rows(
            record,
            Some(&outcome.encoded_rows),
        ));
        self.log.append(&encoded)?;
        Ok(Some((
            LogRecordHead {
                position: record.position(),
                chain: record.chain,
                commit_time_us: record.commit_time_us,
            },
            encoded,
        )))
    }

    /// Flushes the log once for commits appended with [`Publisher::append`], then publishes
    /// them (the recent records, the head) in order.
    fn sync_published(&self, appended: Vec<(LogRecordHead, bytes::Bytes)>) -> Result<(), LogError> {
        if appended.is_empty() {
            return Ok(());
        }
        self.log.sync()?;
        for (head, encoded) in appended {
            self.recent
                .push(head.position.lsn.0, head.commit_time_us, encoded);
            Counters::add(&self.counters.commits, 1);
            self.head.send_replace(Head {
                position: head.position,
                chain: head.chain,
                commit_time_us: head.commit_time_us,
            });
        }
        Ok(())
    }

    /// Appends the commit's record to the log, flushes it, and publishes the new head. `Err`:
    /// the record is committed in SQLite but not durable in the log; the node must stop (at
    /// restart the commit is recaptured from the WAL).
    fn publish(&self, outcome: &CommitOutcome) -> Result<Option<Position>, LogError> {
        let Some(record) = &outcome.record else {
            return Ok(None);
        };
        let encoded = bytes::Bytes::from(flotilla_wire::encode_record_with_rows(
            record,
            Some(&outcome.encoded_rows),
        ));
        self.log.append(&encoded).and_then(|_| self.log.sync())?;
        self.recent
            .push(record.lsn.0, record.commit_time_us, encoded.clone());
        Counters::add(&self.counters.commits, 1);
        self.head.send_replace(Head {
            position: record.position(),
            chain: record.chain,
            commit_time_us: record.commit_time_us,
        });
        Ok(Some(record.position()))
    }
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
                trims,
                settings,
                interrupt,
                mut cluster,
                gate,
                multi_leader,
                collab,
            } = parts;
            let publisher = Publisher {
                log,
                head,
                recent,
                counters: counters.clone(),
            };
            if let Some(ml) = &multi_leader {
                // The first time, this makes the multi-leader tables in a commit of its own.
                if let Some(c) = &cluster {
                    db.next_internal_at(c.next);
                }
                let enabled = db
                    .enable_multi_leader(
                        &ml.dc,
                        &ml.deployment,
                        ml.max_clock_drift_ms,
                        epoch,
                        &origin,
                        wall_us(),
                    )
                    .map_err(|e| e.to_string())
                    .and_then(|out| match (out, &mut cluster) {
                        (Some(out), Some(c)) => {
                            let (tx, _) = oneshot::channel();
                            internal_commit_proposed(c, &db, Ok(out), tx);
                            Ok(())
                        }
                        (Some(out), None) => publisher
                            .publish(&out)
                            .map(|_| ())
                            .map_err(|e| durability_lost(&e)),
                        (None, _) => Ok(()),
                    });
                if let Err(why) = enabled {
                    return stop(Vec::new(), &fatal, format!("multi-leader: {why}"));
                }
            }
            // Jobs that wait for the next turn, before anything new: a pipeline job met while
            // gathering a group, and requests a group had no room for (size limit).
            let mut waiting: VecDeque<WriteJob> = VecDeque::new();
            while let Some(first) = waiting.pop_front().or_else(|| jobs.blocking_recv()) {
                if gate.is_closed() {
                    // Stepped down: what is queued was never executed; dropping the replies
                    // answers "retry" (the next leader executes them once, by their keys).
                    return;
                }
                // A device's push is checked whole here, then merged like a peer's batch.
                let first = match first {
                    WriteJob::DevicePush {
                        view,
                        origin: device_origin,
                        txns,
                        reply,
                    } => {
                        match super::device_jobs::push_as_merge(&db, &view, device_origin, &txns) {
                            Ok(jobs) => WriteJob::Merge { jobs, reply },
                            Err(refused) => {
                                let _ = reply.send((0, Err(refused), Vec::new()));
                                continue;
                            }
                        }
                    }
                    other => other,
                };
                let (request, durability, reply) = match first {
                    WriteJob::Request {
                        request,
                        durability,
                        reply,
                    } => (request, durability, reply),
                    WriteJob::Stop => return,
                    // Turned into a merge above.
                    WriteJob::DevicePush { .. } => continue,
                    WriteJob::Pause { parked } => {
                        let last = cluster.as_ref().map_or(flotilla_types::Lsn(0), |c| {
                            flotilla_types::Lsn(c.next.0.saturating_sub(1))
                        });
                        let _ = parked.send(last);
                        if !gate.park() {
                            return;
                        }
                        continue;
                    }
                    WriteJob::Membership {
                        change,
                        member,
                        reply,
                    } => {
                        match &mut cluster {
                            Some(c) => propose_membership(c, epoch, change, member, reply),
                            None => {
                                let _ = reply.send(Err("this node is not a cluster member".into()));
                            }
                        }
                        continue;
                    }
                    WriteJob::Restore(job) if cluster.is_some() => {
                        let _ = job
                            .reply
                            .send(Err(super::RestoreError::Refused(NOT_IN_CLUSTER.into())));
                        continue;
                    }
                    WriteJob::Token { change, reply } => {
                        internal_at(&cluster, &mut db);
                        let now = wall_us();
                        let result = match &change {
                            TokenChange::Add(t) => db.add_token(t, epoch, &origin, now),
                            TokenChange::Revoke(id) => {
                                db.revoke_token(id, now / 1000, epoch, &origin, now)
                            }
                        };
                        let result = result.map_err(ChangeError::from);
                        if let Err(e) =
                            internal_answer(&mut cluster, &db, &publisher, result, reply)
                        {
                            return stop(Vec::new(), &fatal, durability_lost(&e));
                        }
                        continue;
                    }
                    WriteJob::Restore(job) => {
                        let ctx = super::restore::RestoreContext {
                            publisher: &publisher,
                            settings: &settings,
                            epoch,
                            origin: &origin,
                            interrupt: &interrupt,
                        };
                        match super::restore::run(db, job, &ctx) {
                            Ok(next) => db = next,
                            Err(why) => {
                                return fatal.report(crate::fatal::Fatal::Durability(why));
                            }
                        }
                        continue;
                    }
                    WriteJob::Policy { change, reply } => {
                        internal_at(&cluster, &mut db);
                        let result = db
                            .set_policy(
                                &change.table,
                                change.column.as_deref(),
                                &change.policy,
                                change.expression.as_deref(),
                                epoch,
                                &origin,
                                wall_us(),
                            )
                            .map_err(ChangeError::from);
                        if let Err(e) =
                            internal_answer(&mut cluster, &db, &publisher, result, reply)
                        {
                            return stop(Vec::new(), &fatal, durability_lost(&e));
                        }
                        continue;
                    }
                    WriteJob::Device { change, reply } => {
                        internal_at(&cluster, &mut db);
                        let result =
                            super::device_jobs::change(&mut db, change, epoch, &origin, wall_us());
                        if let Err(e) =
                            internal_answer(&mut cluster, &db, &publisher, result, reply)
                        {
                            return stop(Vec::new(), &fatal, durability_lost(&e));
                        }
                        continue;
                    }
                    WriteJob::Collab { change, reply } => {
                        internal_at(&cluster, &mut db);
                        let result =
                            super::collab_jobs::change(&mut db, change, epoch, &origin, wall_us());
                        if let Err(e) =
                            internal_answer(&mut cluster, &db, &publisher, result, reply)
                        {
                            return stop(Vec::new(), &fatal, durability_lost(&e));
                        }
                        continue;
                    }
                    WriteJob::PruneConflicts {
                        before_ms,
                        pruned,
                        reply,
                    } => {
                        internal_at(&cluster, &mut db);
                        let result = match db.prune_conflicts(before_ms, epoch, &origin, wall_us())
                        {
                            Ok(None) => {
                                let _ = pruned.send(0);
                                let _ = reply.send(Ok(db.meta().position));
                                continue;
                            }
                            Ok(Some((n, out))) => {
                                let _ = pruned.send(n);
                                Ok(out)
                            }
                            Err(e) => Err(ChangeError::Merge(e.into())),
                        };
                        if let Err(e) =
                            internal_answer(&mut cluster, &db, &publisher, result, reply)
                        {
                            return stop(Vec::new(), &fatal, durability_lost(&e));
                        }
                        continue;
                    }
                    WriteJob::Merge { jobs, reply } => {
                        // Each transaction its own commit (and log record); the log is synced
                        // once for the batch, before any answer.
                        let mut merged = 0usize;
                        let mut outcomes = Vec::new();
                        let mut proposed = Vec::new();
                        let mut failure = None;
                        for job in &jobs {
                            if let Some(c) = &cluster {
                                db.next_internal_at(c.next);
                            }
                            let merged_one = match job.peer_at {
                                Some(at) => db.commit_merge(
                                    &job.stamp,
                                    &job.changes,
                                    &job.peer,
                                    at,
                                    epoch,
                                    &origin,
                                    wall_us(),
                                ),
                                None => db.commit_device_merge(
                                    &job.stamp,
                                    &job.changes,
                                    epoch,
                                    &origin,
                                    wall_us(),
                                ),
                            };
                            match merged_one {
                                Ok(flotilla_store::MergeOutcome::Committed {
                                    commit,
                                    conflicts,
                                    documents,
                                }) => {
                                    for d in &documents {
                                        collab.stored(d);
                                    }
                                    Counters::add(&counters.merged_transactions, 1);
                                    Counters::add(&counters.merge_conflicts, conflicts as u64);
                                    if let Some(c) = &mut cluster {
                                        let (tx, rx) = oneshot::channel();
                                        internal_commit_proposed(c, &db, Ok(*commit), tx);
                                        proposed.push(rx);
                                    } else {
                                        match publisher.append(&commit) {
                                            Ok(Some(a)) => outcomes.push(a),
                                            Ok(None) => {}
                                            Err(e) => {
                                                let _ = reply.send((
                                                    merged,
                                                    Err(ChangeError::Indeterminate(
                                                        durability_lost(&e),
                                                    )),
                                                    Vec::new(),
                                                ));
                                                return stop(
                                                    Vec::new(),
                                                    &fatal,
                                                    durability_lost(&e),
                                                );
                                            }
                                        }
                                    }
                                }
                                Ok(flotilla_store::MergeOutcome::Duplicate) => {}
                                Err(flotilla_store::MergeApplyError::Store(e))
                                    if matches!(e, flotilla_store::StoreError::Capture(_)) =>
                                {
                                    return stop(Vec::new(), &fatal, e.to_string());
                                }
                                Err(e) => {
                                    failure = Some(ChangeError::from(e));
                                    break;
                                }
                            }
                            merged += 1;
                        }
                        if let Some(c) = &cluster {
                            // On a cluster's leader the merges hold once a majority has them:
                            // only then does the link go on (and tell the peer it has them).
                            let rest: Vec<MergeJob> = jobs.into_iter().skip(merged).collect();
                            c.runtime.spawn(async move {
                                let mut result = failure.map_or(Ok(()), Err);
                                for rx in proposed {
                                    let held = rx.await.unwrap_or_else(|_| {
                                        Err(ChangeError::Indeterminate(
                                            "the consensus task stopped".into(),
                                        ))
                                    });
                                    if let Err(e) = held {
                                        result = Err(e);
                                        break;
                                    }
                                }
                                let _ = reply.send((merged, result, rest));
                            });
                            continue;
                        }
                        if let Err(e) = publisher.sync_published(outcomes) {
                            let _ = reply.send((
                                merged,
                                Err(ChangeError::Indeterminate(durability_lost(&e))),
                                Vec::new(),
                            ));
                            return stop(Vec::new(), &fatal, durability_lost(&e));
                        }
                        let rest: Vec<MergeJob> = jobs.into_iter().skip(merged).collect();
                        let _ = reply.send((merged, failure.map_or(Ok(()), Err), rest));
                        // A data centre that only merges (a backlog after a partition) keeps
                        // its WAL short too: the log holds what the merges wrote.
                        if let Err(e) = db.maybe_checkpoint() {
                            tracing::warn!("checkpoint failed (will retry): {e}");
                        }
                        continue;
                    }
                    WriteJob::Pipeline { change, reply } => {
                        internal_at(&cluster, &mut db);
                        let result = pipeline_change(&mut db, &change, epoch, &origin)
                            .map_err(ChangeError::from);
                        if let Err(e) =
                            internal_answer(&mut cluster, &db, &publisher, result, reply)
                        {
                            return stop(Vec::new(), &fatal, durability_lost(&e));
                        }
                        continue;
                    }
                };
                let mut group = vec![(request, durability, reply)];
                while group.len() < MAX_GROUP {
                    let next = match waiting.pop_front() {
                        Some(job) => Some(job),
                        None => jobs.try_recv().ok(),
                    };
                    match next {
                        Some(WriteJob::Request {
                            request,
                            durability,
                            reply,
                        }) => group.push((request, durability, reply)),
                        Some(other) => {
                            waiting.push_front(other);
                            break;
                        }
                        None => break,
                    }
                }
                for (id, seq) in trims.take() {
                    db.queue_changelog_trim(id, seq);
                }
                let requests: Vec<TxnRequest> = group.iter().map(|j| j.0.clone()).collect();
                let now = wall_us();
                let committed = match &cluster {
                    Some(c) => db.commit_batch_at(&requests, epoch, c.next, &origin, now),
                    None => db.commit_batch(&requests, epoch, &origin, now),
                };
                let outcome = match committed {
                    Ok(o) => o,
                    Err(e) if matches!(e, flotilla_store::StoreError::Capture(_)) => {
                        return stop(group, &fatal, format!("{e}"));
                    }
                    Err(e) => {
                        // SQLite refused the commit (disk full, IO error): rolled back.
                        let msg = e.to_string();
                        for (_, _, reply) in group {
                            let _ = reply.send(Err(WriteError::Failed(msg.clone())));
                        }
                        continue;
                    }
                };
                if let Some(c) = &mut cluster {
                    let retries = propose(c, &db, &counters, group, outcome);
                    for job in retries.into_iter().rev() {
                        waiting.push_front(job);
                    }
                    continue;
                }
                let position = match publisher.publish(&outcome) {
                    Ok(Some(p)) => p,
                    Ok(None) => db.meta().position,
                    Err(e) => return stop(group, &fatal, durability_lost(&e)),
                };
                let mut retries = Vec::new();
                for ((request, durability, reply), out) in group.into_iter().zip(outcome.outcomes) {
                    let pos = match &out {
                        RequestOutcome::Retry => {
                            retries.push(WriteJob::Request {
                                request,
                                durability,
                                reply,
                            });
                            continue;
                        }
                        RequestOutcome::Duplicate { position, .. } => *position,
                        RequestOutcome::Committed(_) => {
                            Counters::add(&counters.committed_requests, 1);
                            position
                        }
                        RequestOutcome::Failed { .. } => position,
                    };
                    let _ = reply.send(Ok((out, pos)));
                }
                // Requests the group had no room for go first into the next one, in order.
                for job in retries.into_iter().rev() {
                    waiting.push_front(job);
                }
                if let Err(e) = db.maybe_checkpoint() {
                    tracing::warn!("checkpoint failed (will retry): {e}");
                }
            }
        })
        .expect("spawn writer thread")
}

type Group = Vec<(
    TxnRequest,
    flotilla_types::Durability,
    oneshot::Sender<WriteReply>,
)>;

/// A cluster leader's group after its SQLite commit: the record goes to the consensus task, and
/// each request is answered once the durability it asked for holds (or as an unknown outcome
/// if the leadership is lost first). Returns the requests to run again (no room in the group).
fn propose(
    c: &mut ClusterWriter,
    db: &LeaderDb,
    counters: &Counters,
    group: Group,
    outcome: CommitOutcome,
) -> Vec<WriteJob> {
    use crate::cluster::driver::{Proposal, Unacknowledged};
    let mut retries = Vec::new();
    let Some(record) = &outcome.record else {
        // Nothing changed: nothing to replicate. A retried request waits for the durability it
        // asked for on the transaction it committed before.
        let at = db.meta().position;
        for ((request, durability, reply), out) in group.into_iter().zip(outcome.outcomes) {
            match out {
                RequestOutcome::Retry => retries.push(WriteJob::Request {
                    request,
                    durability,
                    reply,
                }),
                RequestOutcome::Duplicate { position, .. } => {
                    let (tx, rx) = oneshot::channel();
                    let sent = c
                        .proposals
                        .blocking_send(Proposal {
                            at: position,
                            record: None,
                            membership: None,
                            waiters: vec![(durability, tx)],
                        })
                        .is_ok();
                    c.runtime.spawn(async move {
                        let answer = match (sent, rx.await) {
                            (true, Ok(Ok(()))) => Ok((out, position)),
                            (_, Ok(Err(e))) => Err(WriteError::Indeterminate(e.to_string())),
                            _ => Err(WriteError::Indeterminate(
                                "the consensus task stopped".into(),
                            )),
                        };
                        let _ = reply.send(answer);
                    });
                }
                out => {
                    let _ = reply.send(Ok((out, at)));
                }
            }
        }
        return retries;
    };
    c.next = record.lsn.next();
    let position = record.position();
    let encoded = bytes::Bytes::from(flotilla_wire::encode_record_with_rows(
        record,
        Some(&outcome.encoded_rows),
    ));
    let mut waiters = Vec::new();
    let mut answers = Vec::new();
    for ((request, durability, reply), out) in group.into_iter().zip(outcome.outcomes) {
        let pos = match &out {
            RequestOutcome::Retry => {
                retries.push(WriteJob::Request {
                    request,
                    durability,
                    reply,
                });
                continue;
            }
            RequestOutcome::Failed { .. } => {
                let _ = reply.send(Ok((out, position)));
                continue;
            }
            RequestOutcome::Duplicate { position, .. } => *position,
            RequestOutcome::Committed(_) => {
                Counters::add(&counters.committed_requests, 1);
                position
            }
        };
        let (tx, rx) = oneshot::channel();
        waiters.push((durability, tx));
        answers.push((rx, reply, out, pos));
    }
    Counters::add(&counters.commits, 1);
    let proposal = Proposal {
        at: position,
        record: Some(encoded),
        membership: None,
        waiters,
    };
    let sent = c.proposals.blocking_send(proposal).is_ok();
    c.runtime.spawn(async move {
        for (rx, reply, out, pos) in answers {
            let answer = match (sent, rx.await) {
                (true, Ok(Ok(()))) => Ok((out, pos)),
                (_, Ok(Err(Unacknowledged::NotProposed(why)))) => Err(WriteError::Indeterminate(
                    format!("the transaction was executed but not replicated ({why})"),
                )),
                (_, Ok(Err(e))) => Err(WriteError::Indeterminate(e.to_string())),
                _ => Err(WriteError::Indeterminate(
                    "the consensus task stopped".into(),
                )),
            };
            let _ = reply.send(answer);
        }
    });
    retries
}

/// Proposes a membership change at the writer's next position and waits (briefly: the
/// consensus task's turn) until it is proposed, so that the next transaction's position is
/// known: one after it.
fn propose_membership(
    c: &mut ClusterWriter,
    epoch: Epoch,
    change: flotilla_core::consensus::MemberChange,
    member: crate::cluster::driver::MemberContext,
    reply: oneshot::Sender<Result<flotilla_types::Lsn, String>>,
) {
    use crate::cluster::driver::{MembershipProposal, Proposal};
    let (tx, rx) = oneshot::channel();
    let proposal = Proposal {
        at: Position { epoch, lsn: c.next },
        record: None,
        membership: Some(MembershipProposal {
            change,
            member,
            proposed: tx,
        }),
        waiters: Vec::new(),
    };
    if c.proposals.blocking_send(proposal).is_err() {
        let _ = reply.send(Err("the consensus task stopped".into()));
        return;
    }
    let answer = rx
        .blocking_recv()
        .unwrap_or_else(|_| Err("the consensus task stopped".into()));
    if let Ok(lsn) = answer {
        c.next = lsn.next();
    }
    let _ = reply.send(answer);
}

/// On a cluster's leader: proposes an internal commit (pipeline, token) and answers its
/// requester once a majority holds it (a change every member must have before it is relied
/// on: a token that a member not holding it would refuse).
/// On a cluster's leader, an internal commit takes the next position the consensus gives.
fn internal_at(cluster: &Option<ClusterWriter>, db: &mut LeaderDb) {
    if let Some(c) = cluster {
        db.next_internal_at(c.next);
    }
}

/// Publishes an internal commit and answers it: proposed on a cluster's leader (answered once
/// held), appended to the log otherwise. `Err`: the log failed (the node must stop).
fn internal_answer(
    cluster: &mut Option<ClusterWriter>,
    db: &LeaderDb,
    publisher: &Publisher,
    result: Result<CommitOutcome, ChangeError>,
    reply: oneshot::Sender<ChangeReply>,
) -> Result<(), LogError> {
    match cluster {
        Some(c) => {
            internal_commit_proposed(c, db, result, reply);
            Ok(())
        }
        None => internal_commit_done(db, publisher, result, reply),
    }
}

fn internal_commit_proposed(
    c: &mut ClusterWriter,
    db: &LeaderDb,
    result: Result<CommitOutcome, ChangeError>,
    reply: oneshot::Sender<ChangeReply>,
) {
    use crate::cluster::driver::Proposal;
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            let _ = reply.send(Err(e));
            return;
        }
    };
    let Some(record) = &outcome.record else {
        let _ = reply.send(Ok(db.meta().position));
        return;
    };
    c.next = record.lsn.next();
    let position = record.position();
    let encoded = bytes::Bytes::from(flotilla_wire::encode_record_with_rows(
        record,
        Some(&outcome.encoded_rows),
    ));
    let (tx, rx) = oneshot::channel();
    let proposal = Proposal {
        at: position,
        record: Some(encoded),
        membership: None,
        waiters: vec![(flotilla_types::Durability::Quorum, tx)],
    };
    let sent = c.proposals.blocking_send(proposal).is_ok();
    c.runtime.spawn(async move {
        let answer = match (sent, rx.await) {
            (true, Ok(Ok(()))) => Ok(position),
            (_, Ok(Err(e))) => Err(ChangeError::Indeterminate(e.to_string())),
            _ => Err(ChangeError::Indeterminate(
                "the consensus task stopped".into(),
            )),
        };
        let _ = reply.send(answer);
    });
}

/// Publishes an internal commit (pipeline, token) and answers its requester. `Err`: the record
/// could not be made durable; the node must stop.
fn internal_commit_done(
    db: &LeaderDb,
    publisher: &Publisher,
    result: Result<CommitOutcome, ChangeError>,
    reply: oneshot::Sender<ChangeReply>,
) -> Result<(), LogError> {
    let answer = match result {
        Ok(outcome) => match publisher.publish(&outcome) {
            Ok(p) => Ok(p.unwrap_or(db.meta().position)),
            Err(e) => {
                let _ = reply.send(Err(ChangeError::Indeterminate(durability_lost(&e))));
                return Err(e);
            }
        },
        Err(e) => Err(e),
    };
    let _ = reply.send(answer);
    Ok(())
}

/// Why a commit is not known to be durable: its record could not be appended or flushed.
fn durability_lost(e: &LogError) -> String {
    format!("replication log: {e}")
}

fn stop(group: Group, fatal: &crate::fatal::FatalSender, reason: String) {
    for (_, _, reply) in group {
        let _ = reply.send(Err(WriteError::Indeterminate(reason.clone())));
    }
    fatal.report(crate::fatal::Fatal::Durability(reason));
}

fn pipeline_change(
    db: &mut LeaderDb,
    change: &PipelineChange,
    epoch: Epoch,
    origin: &NodeId,
) -> Result<CommitOutcome, flotilla_store::PipelineError> {
    let now = wall_us();
    match change {
        PipelineChange::Add(spec) => db.add_pipeline(spec, epoch, origin, now).map(|(_, o)| o),
        PipelineChange::Remove(name) => db.remove_pipeline(name, epoch, origin, now),
        PipelineChange::Pause { name, paused } => {
            db.set_pipeline_paused(name, *paused, epoch, origin, now)
        }
    }
}
