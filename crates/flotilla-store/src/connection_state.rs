//! What a connection keeps between requests that a client statement could change: temporary
//! objects and connection settings. Every client of a node shares the leader's writer
//! connection, so none of this may change: tests compare it before and after hostile SQL.

use rusqlite::Connection;

/// Connection settings read back with `PRAGMA name` (one value each).
const SETTINGS: &[&str] = &[
    "analysis_limit",
    "automatic_index",
    "busy_timeout",
    "cache_size",
    "cache_spill",
    "cell_size_check",
    "checkpoint_fullfsync",
    "defer_foreign_keys",
    "foreign_keys",
    "fullfsync",
    "hard_heap_limit",
    "ignore_check_constraints",
    "journal_mode",
    "journal_size_limit",
    "legacy_alter_table",
    "locking_mode",
    "max_page_count",
    "mmap_size",
    "query_only",
    "read_uncommitted",
    "recursive_triggers",
    "reverse_unordered_selects",
    "secure_delete",
    "soft_heap_limit",
    "synchronous",
    "temp_store",
    "threads",
    "trusted_schema",
    "wal_autocheckpoint",
    "writable_schema",
];

/// A readable summary of the connection's state: the objects of its temp schema and the value
/// of each setting. Two equal summaries mean nothing a client could leave behind differs.
pub fn connection_state(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare("SELECT type, name FROM temp.sqlite_schema ORDER BY name")?;
    let temp = stmt.query_map([], |r| {
        Ok(format!(
            "temp {} {}",
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?
        ))
    })?;
    for t in temp {
        out.push(t?);
    }
    let mut stmt = conn.prepare("SELECT name FROM pragma_database_list ORDER BY seq")?;
    let schemas = stmt.query_map([], |r| r.get::<_, String>(0))?;
    for s in schemas {
        out.push(format!("schema {}", s?));
    }
    for name in SETTINGS {
        let v: rusqlite::types::Value =
            conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?;
        out.push(format!("{name} = {v:?}"));
    }
    Ok(out)
}
