//! Collaborative documents on a device (docs/collab.md): a collaborative column's document
//! kept beside its row, edited offline and merged with everyone's when the device syncs —
//! a merge of text, never a conflict.
//!
//! `_flotilla_docs` holds each document this device has: what the server sent, merged with
//! this device's own edits. An edit is an update of the document, pushed with the outbox
//! transaction that sets the row's text; a pull merges the server's updates in. The row's
//! column always shows its document's text: after a pull, the text the server sent for the
//! row (which lacks the edits not pushed yet) gives way to the document's.

use crate::apply::to_sql;
use crate::local_schema::quote;
use flotilla_merge::text_doc::{self, text_of};
use flotilla_types::sync_protocol::{
    value_from_json, value_to_json, DocUpdate, JsonRow, ShapeTable,
};
use flotilla_types::SqlValue;
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Text, Transact};

pub(crate) const CREATE: &str = "
CREATE TABLE IF NOT EXISTS _flotilla_docs (
    tbl TEXT NOT NULL,
    -- The row's key (INTEGER or TEXT), as the row holds it.
    pk ANY NOT NULL,
    col TEXT NOT NULL,
    -- The whole document (a Yjs update holding it all).
    state BLOB NOT NULL,
    PRIMARY KEY (tbl, pk, col)
) WITHOUT ROWID;
";

/// Makes the documents' table, and gives an outbox made before documents existed their
/// column (a transaction's document edits, JSON).
pub(crate) fn create(conn: &Connection) -> rusqlite::Result<()> {
    let existed: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = '_flotilla_docs'",
        [],
        |r| r.get(0),
    )?;
    conn.execute_batch(CREATE)?;
    if existed == 0 {
        // A local database from before documents: its rows were pulled without theirs, so
        // the next sync pulls the whole shape (documents included).
        conn.execute(
            "UPDATE _flotilla_device SET reset_next = 1 WHERE id = 1 AND cursor IS NOT NULL",
            [],
        )?;
    }
    let has_docs: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('_flotilla_outbox') WHERE name = 'docs'",
        [],
        |r| r.get(0),
    )?;
    if has_docs == 0 {
        conn.execute_batch(
            "ALTER TABLE _flotilla_outbox ADD COLUMN docs TEXT NOT NULL DEFAULT '[]'",
        )?;
    }
    Ok(())
}

/// A document of a row: its table and column as the shape spells them, and its key.
struct Address<'a> {
    table: &'a ShapeTable,
    column: &'a str,
    key_column: &'a str,
    key: Value,
}

impl Address<'_> {
    /// `table/key/column`, as the server names the document (the first content's seed).
    fn name(&self) -> String {
        let key = match &self.key {
            Value::Integer(i) => i.to_string(),
            Value::Text(t) => t.clone(),
            other => format!("{other:?}"),
        };
        format!("{}/{key}/{}", self.table.table, self.column)
    }

    fn key_row(&self) -> JsonRow {
        let v = match &self.key {
            Value::Integer(i) => SqlValue::Integer(*i),
            Value::Text(t) => SqlValue::Text(t.clone()),
            _ => SqlValue::Null,
        };
        [(self.key_column.to_string(), value_to_json(&v))]
            .into_iter()
            .collect()
    }
}

fn address<'a>(
    tables: &'a [ShapeTable],
    table: &str,
    column: &str,
    key: Value,
) -> Result<Address<'a>, String> {
    let t = tables
        .iter()
        .find(|t| t.table.eq_ignore_ascii_case(table))
        .ok_or_else(|| format!("table {table} is not in this device's shape"))?;
    let column = t
        .columns
        .iter()
        .find(|c| c.eq_ignore_ascii_case(column))
        .ok_or_else(|| {
            format!(
                "column {column} of {} is not in this device's shape",
                t.table
            )
        })?;
    if !t.documents.iter().any(|c| c == column) {
        return Err(format!(
            "{}.{column} is not a collaborative text column (flotilla collab enable makes it one)",
            t.table
        ));
    }
    let [key_column] = t.key.as_slice() else {
        return Err(format!(
            "{} has a key of several columns: a document's row has a one-column key",
            t.table
        ));
    };
    if !matches!(key, Value::Integer(_) | Value::Text(_)) {
        return Err(format!(
            "a document's key is an INTEGER or TEXT, not {key:?}"
        ));
    }
    Ok(Address {
        table: t,
        column,
        key_column,
        key,
    })
}

fn load(conn: &Connection, a: &Address<'_>) -> Result<Option<Doc>, String> {
    let state: Option<Vec<u8>> = conn
        .query_row(
            "SELECT state FROM _flotilla_docs WHERE tbl = ?1 AND pk = ?2 AND col = ?3",
            params![a.table.table, a.key, a.column],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| e.to_string())?;
    let Some(state) = state else {
        return Ok(None);
    };
    let doc = text_doc::new_doc();
    text_doc::apply_updates(&doc, [&state])?;
    Ok(Some(doc))
}

fn save(conn: &Connection, a: &Address<'_>, doc: &Doc) -> Result<(), String> {
    let state = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    conn.execute(
        "INSERT OR REPLACE INTO _flotilla_docs (tbl, pk, col, state) VALUES (?1, ?2, ?3, ?4)",
        params![a.table.table, a.key, a.column, state],
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// An edit of a row's document on this device, inside its local transaction: deletes
/// `delete` characters (UTF-16 units, as Yjs counts) at `at` and inserts `insert` there, sets
/// the row's text, and returns the update to push and the new text.
pub(crate) fn edit(
    conn: &Connection,
    tables: &[ShapeTable],
    (table, key, column): (&str, Value, &str),
    (at, delete, insert): (u32, u32, &str),
) -> Result<(DocUpdate, String), String> {
    let a = address(tables, table, column, key)?;
    let row_text: Option<Option<String>> = conn
        .query_row(
            &format!(
                "SELECT CAST({} AS TEXT) FROM {} WHERE {} = ?1",
                quote(a.column),
                quote(&a.table.table),
                quote(a.key_column)
            ),
            [&a.key],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| e.to_string())?;
    let Some(row_text) = row_text else {
        return Err(format!(
            "there is no row {} = {:?} in {}: a document is a row's {}",
            a.key_column, a.key, a.table.table, a.column
        ));
    };
    let (doc, before) = match load(conn, &a)? {
        Some(doc) => {
            let sv = doc.transact().state_vector();
            (doc, sv)
        }
        None => {
            // Never edited here: the document starts from the row's text, as it does on the
            // server (the same first content, merged once) — sent whole with this edit.
            let doc = text_doc::new_doc();
            let first = text_doc::first_content(&a.name(), row_text.as_deref().unwrap_or(""));
            if row_text.as_deref().is_some_and(|t| !t.is_empty()) {
                text_doc::apply_updates(&doc, [&first])?;
            }
            (doc, StateVector::default())
        }
    };
    let text = doc.get_or_insert_text(text_doc::TEXT_NAME);
    {
        let mut txn = doc.transact_mut();
        let len = text.len(&txn);
        if at > len || delete > len - at {
            return Err(format!(
                "the edit at {at} deleting {delete} is beyond the text's {len} characters \
                 (UTF-16 units) of document {}",
                a.name()
            ));
        }
        if delete > 0 {
            text.remove_range(&mut txn, at, delete);
        }
        if !insert.is_empty() {
            text.insert(&mut txn, at, insert);
        }
    }
    let update = doc.transact().encode_diff_v1(&before);
    let now = text_of(&doc);
    save(conn, &a, &doc)?;
    conn.execute(
        &format!(
            "UPDATE {} SET {} = ?1 WHERE {} = ?2",
            quote(&a.table.table),
            quote(a.column),
            quote(a.key_column)
        ),
        params![now, a.key],
    )
    .map_err(|e| e.to_string())?;
    Ok((
        DocUpdate::new(&a.table.table, a.key_row(), a.column, &update),
        now,
    ))
}

/// Merges an update (pulled, or a pending edit replayed) into the row's document here.
pub(crate) fn merge(conn: &Connection, tables: &[ShapeTable], d: &DocUpdate) -> Result<(), String> {
    let t = tables
        .iter()
        .find(|t| t.table.eq_ignore_ascii_case(&d.table))
        .ok_or_else(|| {
            format!(
                "the server sent a document of {}, which is not in the shape",
                d.table
            )
        })?;
    let key = t
        .key
        .first()
        .and_then(|k| d.key.get(k))
        .ok_or_else(|| format!("a document of {} without its key", d.table))?;
    let key = to_sql(value_from_json(key).map_err(|e| format!("a document's key: {e}"))?);
    let a = address(tables, &d.table, &d.column, key)?;
    let update = d.bytes()?;
    yrs::Update::decode_v1(&update)
        .map_err(|e| format!("an update of document {} is damaged: {e}", a.name()))?;
    let doc = load(conn, &a)?.unwrap_or_else(text_doc::new_doc);
    text_doc::apply_updates(&doc, [&update])?;
    save(conn, &a, &doc)
}

/// Sets each document's row to its text (after a pull wrote the server's text, which lacks
/// the edits not pushed yet). A document whose row or table is gone is left as it is.
pub(crate) fn show_texts(conn: &Connection, tables: &[ShapeTable]) -> Result<(), String> {
    let docs: Vec<(String, Value, String, Vec<u8>)> = conn
        .prepare("SELECT tbl, pk, col, state FROM _flotilla_docs")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect()
        })
        .map_err(|e| e.to_string())?;
    for (table, key, column, state) in docs {
        let Ok(a) = address(tables, &table, &column, key) else {
            continue;
        };
        let doc = text_doc::new_doc();
        text_doc::apply_updates(&doc, [&state])?;
        conn.execute(
            &format!(
                "UPDATE {} SET {} = ?1 WHERE {} = ?2 AND {} IS NOT ?1",
                quote(&a.table.table),
                quote(a.column),
                quote(a.key_column),
                quote(a.column)
            ),
            params![text_of(&doc), a.key],
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Forgets every document (a whole-shape pull sends the server's again).
pub(crate) fn forget_all(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM _flotilla_docs", []).map(|_| ())
}
