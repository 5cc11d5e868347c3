//! The logical oracle: a digest of every row that equals between a logical replica and its
//! leader at the same LSN.

use flotilla_store::open_reader;
use rusqlite::types::Value;
use std::path::Path;

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
