//! A simulated follower's database, of the log kind it follows, and the logical oracle: a
//! digest of every row that equals between a logical replica and its leader at the same LSN.

use flotilla_store::{open_reader, ConflictPolicy, DbSettings, FollowerDb, RowFilter, RowReplica};
use flotilla_types::LogKind;
use rusqlite::types::Value;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// A follower's database, of its log kind.
pub(crate) enum Replica {
    Physical(FollowerDb),
    Logical(RowReplica),
}

impl Replica {
    pub(crate) fn open(kind: LogKind, path: &Path) -> anyhow::Result<Option<Replica>> {
        Ok(match kind {
            LogKind::Physical => {
                FollowerDb::open(path, &DbSettings::default())?.map(Replica::Physical)
            }
            LogKind::Logical => RowReplica::open(
                path,
                &DbSettings::default(),
                &RowFilter::default(),
                ConflictPolicy::Stop,
                Arc::new(AtomicU64::new(0)),
            )?
            .map(Replica::Logical),
        })
    }

    pub(crate) fn meta(&self) -> &flotilla_store::Meta {
        match self {
            Replica::Physical(d) => d.meta(),
            Replica::Logical(d) => d.meta(),
        }
    }

    pub(crate) fn apply(
        &mut self,
        records: &[flotilla_types::LogRecord],
    ) -> Result<&flotilla_store::Meta, flotilla_store::StoreError> {
        match self {
            Replica::Physical(d) => d.apply(records),
            Replica::Logical(d) => d.apply(records),
        }
    }
}

/// A digest of every row of every user table (Flotilla's and SQLite's own tables left out):
/// equal for a logical replica and its leader at the same LSN, whatever their pages.
pub(crate) fn content_digest(path: &Path) -> anyhow::Result<u64> {
    content_digest_of(&open_reader(path)?)
}

/// [`content_digest`] of what one connection sees (inside a read transaction: its snapshot).
pub(crate) fn content_digest_of(conn: &rusqlite::Connection) -> anyhow::Result<u64> {
    use std::hash::{Hash, Hasher};
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite%' \
             AND name NOT LIKE '\\_flotilla%' ESCAPE '\\' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for t in tables {
        t.hash(&mut h);
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{t}\" ORDER BY 1"))?;
        let n = stmt.column_count();
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            for i in 0..n {
                format!("{:?}", r.get::<_, Value>(i)?).hash(&mut h);
            }
        }
    }
    Ok(h.finish())
}
