//! Which columns are collaborative, and making one so (`flotilla collab enable`).

use super::{has_tables, CollabError, CREATE_TABLES};
use crate::leader_db::{CommitOutcome, LeaderDb};
use crate::pipeline_triggers::quote;
use crate::rules::INTERNAL_PREFIX;
use crate::StoreError;
use flotilla_types::{Epoch, NodeId};
use rusqlite::{params, Connection, OptionalExtension};

/// A collaborative column, with the key that addresses its documents.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CollabColumn {
    /// As the schema spells it.
    pub table: String,
    pub column: String,
    /// The table's primary key column (one column: a document's address names one value).
    pub key_column: String,
    /// Whether the key is an INTEGER (the URL's key is then a decimal number).
    pub integer_key: bool,
}

/// Every collaborative column (none before the first `enable`). A column whose table or key
/// changed shape since is left out: its documents cannot be addressed any more.
pub fn read_collab_columns(conn: &Connection) -> Result<Vec<CollabColumn>, StoreError> {
    if !has_tables(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached("SELECT tbl, col FROM _flotilla_collab_columns")?;
    let names = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for (table, column) in names {
        if let Ok(c) = check_column(conn, &table, &column) {
            out.push(c);
        }
    }
    out.sort_by(|a, b| (&a.table, &a.column).cmp(&(&b.table, &b.column)));
    Ok(out)
}

/// Whether `table.column` can hold documents: an ordinary table with a one-column INTEGER or
/// TEXT primary key, and a stored column that is not that key.
pub(super) fn check_column(
    conn: &Connection,
    table: &str,
    column: &str,
) -> Result<CollabColumn, CollabError> {
    let lower = table.to_ascii_lowercase();
    if lower.starts_with(INTERNAL_PREFIX) || lower.starts_with("sqlite_") {
        return Err(CollabError::Invalid(format!(
            "{table} is one of Flotilla's or SQLite's own tables"
        )));
    }
    let found: Option<(String, Option<String>)> = conn
        .query_row(
            "SELECT name, sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?1 \
             COLLATE NOCASE",
            [table],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((table, sql)) = found else {
        return Err(CollabError::NotFound(format!("there is no table {table}")));
    };
    if sql.is_some_and(|s| {
        s.trim_start()
            .to_ascii_uppercase()
            .starts_with("CREATE VIRTUAL")
    }) {
        return Err(CollabError::Invalid(format!(
            "{table} is a virtual table: only ordinary tables hold collaborative columns"
        )));
    }
    // (name, declared type, hidden: 0 stored, 2/3 generated, pk: position in the key)
    let mut stmt = conn.prepare("SELECT name, type, hidden, pk FROM pragma_table_xinfo(?1)")?;
    let cols = stmt
        .query_map([&table], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let keys: Vec<_> = cols.iter().filter(|c| c.3 > 0).collect();
    let [key] = keys.as_slice() else {
        return Err(CollabError::Invalid(format!(
            "{table} needs a PRIMARY KEY of one INTEGER or TEXT column: a document's address \
             (/v1/collab/{table}/KEY/COLUMN) names one key value{}",
            if keys.is_empty() {
                " (it has no declared primary key)"
            } else {
                " (its key has several columns)"
            }
        )));
    };
    let key_type = key.1.to_ascii_uppercase();
    let integer_key = key_type.contains("INT");
    let text_key = !integer_key
        && (key_type.contains("CHAR") || key_type.contains("CLOB") || key_type.contains("TEXT"));
    if !integer_key && !text_key {
        return Err(CollabError::Invalid(format!(
            "{table}'s primary key {} is declared {:?}: documents are addressed by an INTEGER \
             or TEXT key",
            key.0, key.1
        )));
    }
    let Some(col) = cols.iter().find(|c| c.0.eq_ignore_ascii_case(column)) else {
        return Err(CollabError::NotFound(format!(
            "{table} has no column {column}"
        )));
    };
    if col.3 > 0 {
        return Err(CollabError::Invalid(format!(
            "{} is {table}'s primary key: a key cannot be a collaborative text",
            col.0
        )));
    }
    if col.2 != 0 {
        return Err(CollabError::Invalid(format!(
            "{} is a generated column: its value is computed, not edited",
            col.0
        )));
    }
    Ok(CollabColumn {
        table,
        column: col.0.clone(),
        key_column: key.0.clone(),
        integer_key,
    })
}

/// The collaborative column `table.column`, or why it is not one.
pub(super) fn collab_column(
    conn: &Connection,
    table: &str,
    column: &str,
) -> Result<CollabColumn, CollabError> {
    let enabled = has_tables(conn)?
        && conn.query_row(
            "SELECT count(*) FROM _flotilla_collab_columns WHERE tbl = ?1 COLLATE NOCASE \
                 AND col = ?2 COLLATE NOCASE",
            params![table, column],
            |r| r.get::<_, i64>(0),
        )? > 0;
    if !enabled {
        return Err(CollabError::NotFound(format!(
            "{table}.{column} is not a collaborative column (`flotilla collab enable --table \
             {table} --column {column}` makes it one)"
        )));
    }
    check_column(conn, table, column)
}

impl LeaderDb {
    /// Makes `table.column` collaborative: each row's value becomes a document's text (the
    /// text a row holds now is its document's first content, when it is first opened).
    /// Enabling it again changes nothing.
    pub fn enable_collab(
        &mut self,
        table: &str,
        column: &str,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<(CollabColumn, CommitOutcome), CollabError> {
        let checked = check_column(&self.conn, table, column)?;
        // A document's text is text: a row holding a BLOB there could never be opened.
        let blob_key: Option<String> = self
            .conn
            .query_row(
                &format!(
                    "SELECT CAST({} AS TEXT) FROM main.{} WHERE typeof({}) = 'blob' LIMIT 1",
                    quote(&checked.key_column),
                    quote(&checked.table),
                    quote(&checked.column)
                ),
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(key) = blob_key {
            return Err(CollabError::Invalid(format!(
                "row {key} of {} holds a BLOB in {}: a collaborative column holds text (make \
                 it text, or NULL, first)",
                checked.table, checked.column
            )));
        }
        let what = format!(
            "enable collaborative text {}.{}",
            checked.table, checked.column
        );
        let c = checked.clone();
        let (_, out) =
            self.internal_commit::<_, CollabError>(&what, epoch, origin, now_us, move |db, _| {
                db.conn.execute_batch(CREATE_TABLES)?;
                db.conn.execute(
                    "INSERT OR IGNORE INTO _flotilla_collab_columns (tbl, col, enabled_ms) \
                     VALUES (?1, ?2, ?3)",
                    params![c.table, c.column, (now_us / 1000) as i64],
                )?;
                db.capture.statement_done(&db.conn)?;
                Ok(())
            })?;
        Ok((checked, out))
    }
}
