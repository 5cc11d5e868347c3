//! The collation each key column is compared with in its table's key index. A key column may
//! declare another collation than its key index (`k TEXT COLLATE NOCASE, PRIMARY KEY (k
//! COLLATE BINARY)`): rows are told apart by the key index's, so whoever finds a row by its key
//! (a logical follower's apply, a multi-leader merge) must compare with that one, not the
//! column's (which would match 'abc' and 'ABC' both).

use rusqlite::Connection;
use std::collections::HashMap;

/// Key column name → the collation its key index compares it with (empty for a rowid key,
/// which has no index).
pub(crate) type KeyCollations = HashMap<String, String>;

pub(crate) fn key_collations(
    conn: &Connection,
    table: &str,
) -> Result<KeyCollations, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT x.name, x.coll FROM pragma_index_list(?1) AS l, pragma_index_xinfo(l.name) AS x \
         WHERE l.origin = 'pk' AND x.key = 1 AND x.name IS NOT NULL AND x.coll IS NOT NULL",
    )?;
    let rows = stmt
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}
