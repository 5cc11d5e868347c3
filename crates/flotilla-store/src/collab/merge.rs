//! Documents edited elsewhere — in another data centre, or on a device — merged here: the
//! updates a transaction from there stored into its document tables are merged into the
//! document here (a merge of text, never a conflict), stored as an update of its own here, and
//! the row's text set to the merged document's.
//!
//! The row's column itself is not taken from there: its text is derived from the document,
//! and the other side's text lacks what was typed here meanwhile (see
//! `multi_leader::merge_change`, which leaves a collaborative column to this).

use super::crdt;
use super::docs::{load_doc, resolve_doc, store_update};
use super::{is_collab_table, CollabError, COMPACT_MIN_BYTES, DOC_FORMAT_YJS_V1};
use crate::multi_leader::set_cell_text;
use crate::pipeline_triggers::quote;
use crate::StoreError;
use flotilla_types::{RowChange, RowOp, SqlValue, TableShape};
use rusqlite::{params, Connection};
use yrs::{GetString, ReadTxn, StateVector, Transact};

/// A document's address: table, column and key as stored.
pub(crate) type DocKey = (String, String, String);

/// The document updates a transaction brought, gathered while its rows merge (in order).
#[derive(Debug, Default)]
pub(crate) struct IncomingDocs {
    docs: Vec<(DocKey, Vec<Vec<u8>>)>,
}

impl IncomingDocs {
    /// Takes in a change of one of the document tables: `false` when `shape` is none of them.
    pub(crate) fn take(&mut self, shape: &TableShape, c: &RowChange) -> Result<bool, StoreError> {
        let Some(found) = doc_row(shape, c)? else {
            // What a change of the documents' tables removes is nothing to merge; the list of
            // collaborative columns merges as rows do.
            let lower = shape.name.to_ascii_lowercase();
            return Ok(is_collab_table(&lower) && lower != super::COLUMNS_TABLE);
        };
        let (key, data) = found;
        match self.docs.iter_mut().find(|(k, _)| *k == key) {
            Some((_, updates)) => updates.push(data),
            None => self.docs.push((key, vec![data])),
        }
        Ok(true)
    }

    /// Merges what was gathered into the documents here (inside the merging transaction): the
    /// addresses of the documents that changed. A document whose row or column is gone here
    /// (deleted, dropped meanwhile) is passed over: there is nothing left to merge it into.
    pub(crate) fn merge(self, conn: &Connection) -> Result<Vec<String>, CollabError> {
        let mut changed = Vec::new();
        for ((table, column, key), updates) in self.docs {
            let doc = match resolve_doc(conn, &table, &key, &column) {
                Ok(doc) => doc,
                Err(CollabError::NotFound(_)) | Err(CollabError::Invalid(_)) => continue,
                Err(e) => return Err(e),
            };
            let stored = load_doc(conn, &doc)?;
            let ydoc = crdt::new_doc();
            crdt::apply_stored(&ydoc, &stored).map_err(CollabError::Invalid)?;
            if stored.state.is_none() && stored.updates.is_empty() && !doc.text.is_empty() {
                // Never opened here: its first content, as a document task here would make it.
                crdt::apply_updates(&ydoc, [&crdt::first_content(&doc.address(), &doc.text)])
                    .map_err(CollabError::Invalid)?;
            }
            let before = ydoc.transact().state_vector();
            let produced = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = produced.clone();
            ydoc.observe_update_v1("merge", move |_, e| {
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(e.update.clone())
            })
            .map_err(|e| CollabError::Invalid(e.to_string()))?;
            crdt::apply_updates(&ydoc, &updates)
                .map_err(|e| CollabError::Invalid(format!("document {}: {e}", doc.address())))?;
            let produced = std::mem::take(&mut *produced.lock().unwrap_or_else(|p| p.into_inner()));
            if produced.is_empty() {
                continue;
            }
            // What the updates added here, as one update (with what the first content added).
            let txn = ydoc.transact();
            let update = txn.encode_diff_v1(&before);
            let first = (stored.state.is_none() && stored.updates.is_empty())
                .then(|| txn.encode_state_as_update_v1(&StateVector::default()));
            let text = txn
                .get_text(crdt::TEXT_NAME)
                .map(|t| t.get_string(&txn))
                .unwrap_or_default();
            let since: usize = stored.updates.iter().map(Vec::len).sum::<usize>() + update.len();
            let state_bytes = stored.state.as_ref().map_or(0, Vec::len);
            let compacted = (since > COMPACT_MIN_BYTES.max(state_bytes))
                .then(|| txn.encode_state_as_update_v1(&StateVector::default()));
            drop(txn);
            // A document never stored here starts with its whole state (its first content
            // included), so that what is stored holds everything its text shows.
            let update = first.unwrap_or(update);
            let c = &doc.column;
            store_update(
                conn,
                (&c.table, &c.column, &doc.key),
                &update,
                compacted.as_deref(),
            )?;
            if text != doc.text {
                conn.execute(
                    &format!(
                        "UPDATE main.{} SET {} = ?1 WHERE {} = ?2",
                        quote(&doc.column.table),
                        quote(&doc.column.column),
                        quote(&doc.column.key_column)
                    ),
                    params![text, doc.key_value()],
                )?;
                set_cell_text(conn, &doc, &text)?;
            }
            changed.push(doc.address());
        }
        Ok(changed)
    }
}

/// What a change of one of the document tables adds to a document: its address (table,
/// column, key as stored) and the update (an update's data, or a compacted state, which is an
/// update holding the whole document). `None` for other tables, and for what a change there
/// removes (a compaction dropping updates its state holds: nothing to merge).
pub(crate) fn doc_row(
    shape: &TableShape,
    c: &RowChange,
) -> Result<Option<(DocKey, Vec<u8>)>, StoreError> {
    let lower = shape.name.to_ascii_lowercase();
    let data_column = match lower.as_str() {
        "_flotilla_collab_updates" => "data",
        "_flotilla_collab_docs" => "state",
        _ => return Ok(None),
    };
    let (Some(after), RowOp::Insert | RowOp::Update) = (c.after.as_deref(), c.op) else {
        return Ok(None);
    };
    let at = |name: &str| -> Result<&SqlValue, StoreError> {
        shape
            .columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
            .and_then(|i| after.get(i))
            .ok_or_else(|| {
                StoreError::Apply(format!(
                    "a change of {} has no column {name} (it has {})",
                    shape.name,
                    shape.columns.join(", ")
                ))
            })
    };
    let text = |name: &str| -> Result<String, StoreError> {
        match at(name)? {
            SqlValue::Text(t) => Ok(t.clone()),
            other => Err(StoreError::Apply(format!(
                "a change of {} holds {other:?} in {name}, not text",
                shape.name
            ))),
        }
    };
    if data_column == "state" {
        let format = at("format")?;
        if *format != SqlValue::Integer(DOC_FORMAT_YJS_V1) {
            return Err(StoreError::Apply(format!(
                "a document arrived in format {format:?}, which this build does not read (it \
                 reads format {DOC_FORMAT_YJS_V1}): upgrade this node"
            )));
        }
    }
    let data = match at(data_column)? {
        SqlValue::Blob(b) => b.clone(),
        other => {
            return Err(StoreError::Apply(format!(
                "a change of {} holds {other:?} in {data_column}, not an update",
                shape.name
            )))
        }
    };
    Ok(Some(((text("tbl")?, text("col")?, text("pk")?), data)))
}
