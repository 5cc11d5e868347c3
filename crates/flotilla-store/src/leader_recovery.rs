//! Bringing a leader's database and its replication log into agreement when the node starts.
//!
//! The log is flushed before a commit is acknowledged; the database, with
//! `synchronous=NORMAL`, is flushed only at checkpoints, and a crash can also fall between a
//! SQLite commit and its log append. So at start either may be ahead of the other:
//! - the database behind the log (a power loss took its newest WAL frames): its missing
//!   commits are applied from the log's page images;
//! - the database ahead of the log (a crash after the SQLite commit, before the append, or a
//!   torn append cut off by the log's recovery): the missing records are re-created from the
//!   database and appended;
//! - neither possible (the log lacks what the database needs, or the database cannot re-create
//!   what the log lacks): the log restarts after the database's position, and followers behind
//!   it bootstrap from a snapshot.
//!
//! The tokio node and the simulator both start a leader through [`recover_leader`].

use crate::{LeaderDb, StoreError};
use flotilla_log::{Log, LogError};
use flotilla_types::{Lsn, NodeId, Position};
use flotilla_wire::DecodeError;

/// What recovery did, for the node's log lines and the simulator's trace.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LeaderRecovery {
    /// Records applied to the database from the log (it had lost them).
    pub completed_from_log: u64,
    /// Commits re-created from the database and appended to the log.
    pub recaptured: Vec<Position>,
    /// Why the log restarted after the database's position, if it did.
    pub log_restarted: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The database is older than anything the log can complete: someone put back an old copy.
    #[error(
        "the database is at lsn {db_lsn} but the replication log starts at {log_first}: \
         the database file was replaced by an older one"
    )]
    DatabaseReplaced { db_lsn: u64, log_first: u64 },
    #[error("completing the database from the log up to lsn {upto}: {source}")]
    Completing {
        upto: u64,
        #[source]
        source: StoreError,
    },
    #[error("log record {lsn} cannot be decoded: {source}")]
    Decode {
        lsn: u64,
        #[source]
        source: DecodeError,
    },
    #[error("log record {0} cannot be read")]
    Missing(u64),
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Makes `db` and `log` agree (see the module docs) and flushes the log. `origin` names this
/// node in re-created records.
pub fn recover_leader(
    db: &mut LeaderDb,
    log: &Log,
    origin: &NodeId,
) -> Result<LeaderRecovery, RecoveryError> {
    let mut report = LeaderRecovery::default();
    let log_last = log.stats().last_lsn;
    let db_lsn = db.meta().position.lsn.0;
    if db_lsn < log_last {
        let first = log.stats().first_lsn;
        if db_lsn + 1 < first {
            return Err(RecoveryError::DatabaseReplaced {
                db_lsn,
                log_first: first,
            });
        }
        let mut next = db_lsn + 1;
        while next <= log_last {
            let raw = log.read(next, 1000, 64 << 20)?;
            if raw.is_empty() {
                return Err(RecoveryError::Missing(next));
            }
            let n = raw.len() as u64;
            // Raft's own entries (a cluster's) hold no transaction to complete.
            let records = raw
                .iter()
                .enumerate()
                .filter(|(_, r)| !flotilla_wire::is_consensus_record(r))
                .map(|(i, r)| {
                    flotilla_wire::decode_record(r).map_err(|source| RecoveryError::Decode {
                        lsn: next + i as u64,
                        source,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            db.complete_from_log(&records)
                .map_err(|source| RecoveryError::Completing {
                    upto: next + n - 1,
                    source,
                })?;
            next += n;
            report.completed_from_log += n;
        }
    }
    match db.uncaptured(Lsn(log_last), origin) {
        Ok(recaptured) => {
            for (r, rows) in &recaptured {
                let encoded = flotilla_wire::encode_record_with_rows(r, Some(rows));
                if encoded.len() as u64 > flotilla_log::MAX_RECORD_BYTES {
                    // Never made by this version (a transaction that large is refused before
                    // it commits), but a database must not become unable to start: followers
                    // behind it bootstrap instead.
                    report.log_restarted = Some(format!(
                        "the commit at {} makes a log record of {} bytes, over the log's limit",
                        r.position(),
                        encoded.len()
                    ));
                    log.reset(db.meta().position.lsn.0)?;
                    break;
                }
                log.append(&encoded)?;
                report.recaptured.push(r.position());
            }
        }
        Err(e) => {
            report.log_restarted = Some(e.to_string());
            log.reset(db.meta().position.lsn.0)?;
        }
    }
    log.sync()?;
    Ok(report)
}
