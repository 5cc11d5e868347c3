//! A follower's database, of the log kind it consumes: a physical byte copy of the leader, or a
//! logical replica applying row changes; and its bootstrap from a snapshot. The node's apply
//! thread and the simulator both use this one copy.

use crate::snapshot::SnapshotReceiver;
use crate::{ConflictPolicy, DbSettings, FollowerDb, Meta, RowFilter, RowReplica, StoreError};
use flotilla_types::{LogKind, LogRecord};
use flotilla_wire::SnapshotHeader;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub enum Replica {
    Physical(FollowerDb),
    /// Boxed: a logical replica holds far more than a physical one.
    Logical(Box<RowReplica>),
}

/// What a replica needs to be opened or built.
#[derive(Clone)]
pub struct ReplicaSettings {
    pub kind: LogKind,
    pub db: DbSettings,
    /// Which rows a logical replica keeps.
    pub filter: RowFilter,
    pub conflict_policy: ConflictPolicy,
    /// Counts apply conflicts of a logical replica (shown in status and metrics).
    pub conflicts: Arc<AtomicU64>,
    /// Page size of a logical replica built from a snapshot (`None`: SQLite's default).
    pub page_size: Option<u32>,
}

impl ReplicaSettings {
    /// Defaults for a replica of `kind`: everything kept, conflicts stop the apply, applies
    /// committed without an fsync and flushed beside the next ([`crate::flush_wal`]).
    pub fn new(kind: LogKind) -> ReplicaSettings {
        ReplicaSettings {
            kind,
            db: DbSettings {
                synchronous: crate::Synchronous::Normal,
                ..DbSettings::default()
            },
            filter: RowFilter::default(),
            conflict_policy: ConflictPolicy::Stop,
            conflicts: Arc::new(AtomicU64::new(0)),
            page_size: None,
        }
    }
}

impl Replica {
    /// `None` when there is no database yet (a bootstrap makes one). What the opened database
    /// holds is durable (its WAL is flushed first): commits a crashed process left unflushed
    /// would otherwise count as durable in the session that starts from it.
    pub fn open(path: &Path, s: &ReplicaSettings) -> Result<Option<Replica>, StoreError> {
        crate::flush_wal(path)?;
        Ok(match s.kind {
            LogKind::Physical => FollowerDb::open(path, &s.db)?.map(Replica::Physical),
            LogKind::Logical => RowReplica::open(
                path,
                &s.db,
                &s.filter,
                s.conflict_policy,
                s.conflicts.clone(),
            )?
            .map(|r| Replica::Logical(Box::new(r))),
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

/// Where a bootstrap receives the snapshot for a replica at `db_path`: the database file itself
/// for a physical replica (it is a byte copy), a scratch file beside it for a logical one (built
/// from it, then removed).
pub fn snapshot_target(kind: LogKind, db_path: &Path) -> PathBuf {
    match kind {
        LogKind::Physical => db_path.to_path_buf(),
        LogKind::Logical => db_path.with_extension("snapshot"),
    }
}

/// Completes a bootstrap once the whole snapshot was fed to `received` (made for
/// [`snapshot_target`]): installs it, and for a logical replica builds the replica at `db_path`
/// from it (filtered by the settings) and removes the scratch file. The database must be closed
/// meanwhile; open it again with [`Replica::open`]. A [`StoreError::Mismatch`] means the filter
/// does not fit the leader's schema (retrying will not help).
pub fn install_snapshot(
    received: SnapshotReceiver,
    db_path: &Path,
    settings: &ReplicaSettings,
) -> Result<SnapshotHeader, StoreError> {
    let header = received.install()?;
    if settings.kind == LogKind::Logical {
        let scratch = snapshot_target(LogKind::Logical, db_path);
        let built = RowReplica::build(
            &scratch,
            db_path,
            &settings.db,
            &settings.filter,
            settings.page_size,
        );
        for suffix in ["", "-wal", "-shm"] {
            let mut p = scratch.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
        let meta = built?;
        tracing::info!(position = %meta.position, filter = %settings.filter, "logical replica built");
    }
    Ok(header)
}
