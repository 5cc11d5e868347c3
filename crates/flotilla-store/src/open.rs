use crate::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

/// SQLite's `synchronous` setting for the database (the log has its own fsync policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Every commit is flushed before it returns: a committed transaction survives power loss.
    #[default]
    Full,
    /// WAL commits are flushed at checkpoints: a power loss can undo recent commits.
    Normal,
    Off,
}

impl Synchronous {
    pub fn as_sql(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
            Synchronous::Off => "OFF",
        }
    }
}

/// The largest transaction a leader commits by default (its log record: row changes plus page
/// images).
pub const DEFAULT_MAX_TRANSACTION_BYTES: u64 = 128 << 20;
/// The most `max_transaction_bytes` may be: a group of requests stays under the log's 1 GiB
/// record limit.
pub const MAX_TRANSACTION_BYTES_LIMIT: u64 = 768 << 20;

#[derive(Debug, Clone)]
pub struct DbSettings {
    pub synchronous: Synchronous,
    /// A leader refuses a transaction whose log record would be larger (see
    /// `docs/operations.md`).
    pub max_transaction_bytes: u64,
}

impl Default for DbSettings {
    fn default() -> Self {
        DbSettings {
            synchronous: Synchronous::default(),
            max_transaction_bytes: DEFAULT_MAX_TRANSACTION_BYTES,
        }
    }
}

/// Settings every Flotilla writer gets: WAL, untrusted schema, a busy timeout, and defensive
/// mode unless `writes_raw_pages` (defensive mode makes `sqlite_dbpage` read-only; only a
/// follower's apply connection writes it, and it runs no client SQL).
pub(crate) fn configure(
    conn: &Connection,
    settings: &DbSettings,
    writes_raw_pages: bool,
) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE,
        !writes_raw_pages,
    )?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA,
        false,
    )?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Mismatch(format!(
            "could not switch the database to WAL mode (it is in {mode} mode)"
        )));
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous={};",
        settings.synchronous.as_sql()
    ))?;
    Ok(())
}

/// A read-only connection for queries: it never writes, so it never competes with the writer.
pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA,
        false,
    )?;
    conn.execute_batch("PRAGMA query_only=1;")?;
    Ok(conn)
}
