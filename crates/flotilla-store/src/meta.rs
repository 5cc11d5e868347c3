use crate::StoreError;
use flotilla_types::{Chain, ContentDigest, Position};
use rusqlite::{Connection, OptionalExtension};

pub const META_TABLE: &str = "_flotilla_meta";

/// What a database knows about its own place in the cluster's history. The leader updates it
/// inside every transaction, so the position a replica reads from its own database is exactly the
/// state that database holds — atomically, also after a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub cluster_id: String,
    pub position: Position,
    pub chain: Chain,
    /// The digest that linked the previous chain to `chain` (re-creates a lost log record).
    pub digest: ContentDigest,
    pub commit_time_us: u64,
}

pub(crate) const CREATE_META: &str = "
CREATE TABLE IF NOT EXISTS _flotilla_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    cluster_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    lsn INTEGER NOT NULL,
    chain INTEGER NOT NULL,
    digest INTEGER NOT NULL,
    commit_time_us INTEGER NOT NULL,
    rows BLOB
);
CREATE TABLE IF NOT EXISTS _flotilla_idempotency (
    key TEXT PRIMARY KEY,
    lsn INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    results TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS _flotilla_idempotency_lsn ON _flotilla_idempotency(lsn);
";

/// Adds what later versions keep in the meta row to a database created before them.
pub(crate) fn upgrade_meta(conn: &Connection) -> Result<(), StoreError> {
    let has_rows: bool = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('_flotilla_meta') WHERE name = 'rows'",
        [],
        |r| r.get(0),
    )?;
    if !has_rows {
        // The row changes of the last commit, so that a commit the log lacks after a crash is
        // re-created with its logical payload.
        conn.execute_batch("ALTER TABLE _flotilla_meta ADD COLUMN rows BLOB")?;
    }
    Ok(())
}

/// The encoded row changes of the last commit (see [`upgrade_meta`]).
pub(crate) fn read_last_rows(conn: &Connection) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(
        conn.query_row("SELECT rows FROM _flotilla_meta WHERE id = 1", [], |r| {
            r.get(0)
        })?,
    )
}

/// Reads the meta row; `None` for a database that Flotilla has not initialised.
pub fn read_meta(conn: &Connection) -> Result<Option<Meta>, StoreError> {
    let exists: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = '_flotilla_meta'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(None);
    }
    read_meta_row(conn)
}

/// Reads the meta row of a database known to have the table (the hot path of apply).
pub(crate) fn read_meta_row(conn: &Connection) -> Result<Option<Meta>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT cluster_id, epoch, lsn, chain, digest, commit_time_us FROM _flotilla_meta WHERE id = 1",
        )?
        .query_row([], |r| {
                Ok(Meta {
                    cluster_id: r.get(0)?,
                    position: Position::new(r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64),
                    chain: Chain(r.get::<_, i64>(3)? as u64),
                    digest: ContentDigest(r.get::<_, i64>(4)? as u64),
                    commit_time_us: r.get::<_, i64>(5)? as u64,
                })
        })
        .optional()?)
}
