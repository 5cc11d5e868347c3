//! The follower's database, of the log kind it consumes: a physical byte copy of the leader,
//! or a logical replica applying row changes.

use crate::config::NodeConfig;
use flotilla_store::{DbSettings, FollowerDb, Meta, RowReplica, StoreError};
use flotilla_types::{LogKind, LogRecord};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub enum Replica {
    Physical(FollowerDb),
    Logical(RowReplica),
}

/// What a replica needs to be opened (owned by the apply thread).
#[derive(Clone)]
pub struct ReplicaSettings {
    pub kind: LogKind,
    pub db: DbSettings,
    pub filter: flotilla_store::RowFilter,
    pub conflict_policy: flotilla_store::ConflictPolicy,
    /// Counts apply conflicts (shown in status and metrics).
    pub conflicts: Arc<AtomicU64>,
}

impl ReplicaSettings {
    pub fn of(config: &NodeConfig, conflicts: Arc<AtomicU64>) -> ReplicaSettings {
        ReplicaSettings {
            kind: config.log_kind,
            db: DbSettings {
                synchronous: config.synchronous,
                ..Default::default()
            },
            filter: config.filter.clone(),
            conflict_policy: config.conflict_policy,
            conflicts,
        }
    }
}

impl Replica {
    /// `None` when there is no database yet (a bootstrap makes one).
    pub fn open(path: &Path, s: &ReplicaSettings) -> Result<Option<Replica>, StoreError> {
        Ok(match s.kind {
            LogKind::Physical => FollowerDb::open(path, &s.db)?.map(Replica::Physical),
            LogKind::Logical => RowReplica::open(
                path,
                &s.db,
                &s.filter,
                s.conflict_policy,
                s.conflicts.clone(),
            )?
            .map(Replica::Logical),
        })
    }

    pub fn meta(&self) -> &Meta {
        match self {
            Replica::Physical(d) => d.meta(),
            Replica::Logical(d) => d.meta(),
        }
    }

    pub fn apply(&mut self, records: &[LogRecord]) -> Result<&Meta, StoreError> {
        match self {
            Replica::Physical(d) => d.apply(records),
            Replica::Logical(d) => d.apply(records),
        }
    }
}
