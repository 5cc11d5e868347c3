//! Documents: finding one by its address, reading what is stored of it, and storing what was
//! merged into it (with its text, in the same commit).

use super::columns::collab_column;
use super::{has_tables, CollabColumn, CollabError, DOC_FORMAT_YJS_V1};
use crate::leader_db::{CommitOutcome, LeaderDb};
use crate::pipeline_triggers::quote;
use crate::StoreError;
use flotilla_types::{Epoch, NodeId};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};

/// A document that exists: its column, its key (canonical: an INTEGER key in decimal), and the
/// text its row holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDoc {
    pub column: CollabColumn,
    pub key: String,
    pub text: String,
}

impl ResolvedDoc {
    /// The key as the row's primary key compares (an INTEGER key as a number).
    pub(crate) fn key_value(&self) -> Value {
        match self.key.parse::<i64>() {
            Ok(i) if self.column.integer_key => Value::Integer(i),
            _ => Value::Text(self.key.clone()),
        }
    }

    /// `table/key/column`, as the document's address says it.
    pub fn address(&self) -> String {
        format!("{}/{}/{}", self.column.table, self.key, self.column.column)
    }
}

/// What is stored of a document: its compacted state (none before the first compaction) and
/// the updates merged since, in order.
///
/// Updates are numbered in the order they were stored, and the numbers never go back: a
/// compaction folds every update but the newest into the state and keeps that one (which the
/// state also holds), so the next update takes the next number. A reader that has merged the
/// updates up to `last_seq` reads only what follows; a gap in the numbers tells it a compaction
/// took what it missed into the state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredDoc {
    pub state: Option<Vec<u8>>,
    pub updates: Vec<Vec<u8>>,
    /// The number of the newest update stored (0: none).
    pub last_seq: i64,
}

/// What one commit stores of a document: the update merged since the last commit (all the
/// edits in between, as one update), the text the document has now, and — when the caller
/// compacts — the whole document as one update, which then replaces the state and every
/// update stored before (it holds them).
///
/// `base_seq` is the number of the newest stored update the caller's document holds (with
/// every one before it): the caller's document is what is stored up to there plus `update`.
/// When something else was stored since (a merge from another data centre or a device, racing
/// with this commit), `text` and `compacted` lack it: the text is then read from what is
/// stored instead, and the compaction left for a later commit — a row's text is always its
/// stored document's, so a row that differs was changed by other means (see `load_doc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocWrite {
    pub update: Vec<u8>,
    pub text: String,
    pub compacted: Option<Vec<u8>>,
    pub base_seq: i64,
}

/// What a [`DocWrite`] stored: the number of the newest stored update after it, and whether
/// the writer's document was the stored one (nothing else stored since its `base_seq`): then
/// it holds every stored update up to `last_seq`; else it has yet to read what was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocWritten {
    pub last_seq: i64,
    pub was_current: bool,
}

/// The document at `table/key/column`, or why there is none: the column must be
/// collaborative and the row must exist.
pub fn resolve_doc(
    conn: &Connection,
    table: &str,
    key: &str,
    column: &str,
) -> Result<ResolvedDoc, CollabError> {
    let c = collab_column(conn, table, column)?;
    let key_value = if c.integer_key {
        match key.parse::<i64>() {
            Ok(i) => Value::Integer(i),
            Err(_) => {
                return Err(CollabError::NotFound(format!(
                    "{}'s key {} is an INTEGER: {key:?} names no row",
                    c.table, c.key_column
                )))
            }
        }
    } else {
        Value::Text(key.to_string())
    };
    // The key as the row stores it: a key column with a collation (`COLLATE NOCASE`) finds
    // the row by other spellings too, and each spelling must name the one document.
    let sql = format!(
        "SELECT {}, {} FROM main.{} WHERE {} = ?1",
        quote(&c.column),
        quote(&c.key_column),
        quote(&c.table),
        quote(&c.key_column)
    );
    let found = conn
        .query_row(&sql, [&key_value], |r| {
            let text = match r.get_ref(0)? {
                ValueRef::Null => Ok(String::new()),
                ValueRef::Text(t) => Ok(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Integer(i) => Ok(i.to_string()),
                ValueRef::Real(f) => Ok(f.to_string()),
                ValueRef::Blob(_) => Err(()),
            };
            let stored_key = match r.get_ref(1)? {
                ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
                _ => None,
            };
            Ok((text, stored_key))
        })
        .optional()?;
    let (text, stored_key) = match found {
        Some((text, stored_key)) => (Some(text), stored_key),
        None => (None, None),
    };
    let key = match key_value {
        Value::Integer(i) => i.to_string(),
        _ => stored_key.unwrap_or_else(|| key.to_string()),
    };
    match text {
        None => Err(CollabError::NotFound(format!(
            "there is no row {} = {key} in {}: a document is a row's {} (insert the row first)",
            c.key_column, c.table, c.column
        ))),
        Some(Err(())) => Err(CollabError::Invalid(format!(
            "row {key} of {} holds a BLOB in {}, not text",
            c.table, c.column
        ))),
        Some(Ok(text)) => Ok(ResolvedDoc {
            column: c,
            key,
            text,
        }),
    }
}

/// What is stored of `doc` (nothing yet for a document never edited).
pub fn load_doc(conn: &Connection, doc: &ResolvedDoc) -> Result<StoredDoc, CollabError> {
    load_doc_since(conn, doc, None)
}

/// What was stored of `doc` after update `seen` (its updates from `seen + 1` on, the state
/// too when a compaction took some of them in); everything when `seen` is `None`.
pub fn load_doc_since(
    conn: &Connection,
    doc: &ResolvedDoc,
    seen: Option<i64>,
) -> Result<StoredDoc, CollabError> {
    if !has_tables(conn)? {
        return Ok(StoredDoc::default());
    }
    let (t, c, k) = (&doc.column.table, &doc.column.column, &doc.key);
    if let Some(seen) = seen {
        let mut stmt = conn.prepare_cached(
            "SELECT seq, data FROM _flotilla_collab_updates WHERE tbl = ?1 AND col = ?2 AND \
             pk = ?3 AND seq > ?4 ORDER BY seq",
        )?;
        let newer = stmt
            .query_map(params![t, c, k, seen], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        match newer.first() {
            None => {
                return Ok(StoredDoc {
                    last_seq: seen,
                    ..StoredDoc::default()
                })
            }
            Some((first, _)) if *first == seen + 1 => {
                return Ok(StoredDoc {
                    state: None,
                    last_seq: newer.last().map_or(seen, |u| u.0),
                    updates: newer.into_iter().map(|u| u.1).collect(),
                })
            }
            // A compaction took updates after `seen` into the state: read it all.
            Some(_) => {}
        }
    }
    let state: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT format, state FROM _flotilla_collab_docs WHERE tbl = ?1 AND col = ?2 AND \
             pk = ?3",
            params![t, c, k],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((format, _)) = &state {
        if *format != DOC_FORMAT_YJS_V1 {
            return Err(CollabError::Invalid(format!(
                "document {} is stored in format {format}, which this build does not read \
                 (it reads format {DOC_FORMAT_YJS_V1}): upgrade this node",
                doc.address()
            )));
        }
    }
    let mut stmt = conn.prepare_cached(
        "SELECT seq, data FROM _flotilla_collab_updates WHERE tbl = ?1 AND col = ?2 AND pk = ?3 \
         ORDER BY seq",
    )?;
    let updates = stmt
        .query_map(params![t, c, k], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StoredDoc {
        state: state.map(|s| s.1),
        last_seq: updates.last().map_or(0, |u| u.0),
        updates: updates.into_iter().map(|u| u.1).collect(),
    })
}

impl LeaderDb {
    /// Stores what was merged into `doc` and sets its row's text, in one commit. Refused (and
    /// nothing stored) when the row is gone.
    pub fn write_collab_doc(
        &mut self,
        doc: &ResolvedDoc,
        write: &DocWrite,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<(DocWritten, CommitOutcome), CollabError> {
        let what = format!("edit document {}", doc.address());
        let (written, out) =
            self.internal_commit::<_, CollabError>(&what, epoch, origin, now_us, |db, _| {
                let (t, c, k) = (&doc.column.table, &doc.column.column, &doc.key);
                let latest = latest_seq(&db.conn, (t, c, k))?;
                let was_current = latest == write.base_seq;
                let compacted = write.compacted.as_deref().filter(|_| was_current);
                store_update(&db.conn, (t, c, k), &write.update, compacted)?;
                // The update (if any) took the next number; a compaction keeps the newest.
                let last_seq = latest + i64::from(!write.update.is_empty());
                let text = if was_current {
                    std::borrow::Cow::Borrowed(write.text.as_str())
                } else {
                    let ydoc = super::crdt::new_doc();
                    super::crdt::apply_stored(&ydoc, &load_doc(&db.conn, doc)?)
                        .map_err(CollabError::Invalid)?;
                    std::borrow::Cow::Owned(super::crdt::text_of(&ydoc))
                };
                db.capture.statement_done(&db.conn)?;
                let sql = format!(
                    "UPDATE main.{} SET {} = ?1 WHERE {} = ?2",
                    quote(&doc.column.table),
                    quote(&doc.column.column),
                    quote(&doc.column.key_column)
                );
                let changed = db
                    .conn
                    .execute(&sql, params![text.as_ref(), doc.key_value()])?;
                if changed == 0 {
                    return Err(CollabError::NotFound(format!(
                        "row {} of {} was deleted: document {} is gone",
                        doc.key,
                        doc.column.table,
                        doc.address()
                    )));
                }
                db.capture.statement_done(&db.conn)?;
                Ok(DocWritten {
                    last_seq,
                    was_current,
                })
            })?;
        Ok((written, out))
    }
}

/// The number of the newest update stored of a document (0: none).
fn latest_seq(conn: &Connection, (t, c, k): (&str, &str, &str)) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT coalesce(max(seq), 0) FROM _flotilla_collab_updates WHERE tbl = ?1 AND \
             col = ?2 AND pk = ?3",
        )?
        .query_row(params![t, c, k], |r| r.get(0))?)
}

/// Stores an update of a document (none when `update` is empty: a write of its text only),
/// and a compacted state when given, which takes in every update but the newest (see
/// [`StoredDoc`]: update numbers never go back).
pub(crate) fn store_update(
    conn: &Connection,
    (t, c, k): (&str, &str, &str),
    update: &[u8],
    compacted: Option<&[u8]>,
) -> Result<(), StoreError> {
    if !update.is_empty() {
        conn.prepare_cached(
            "INSERT INTO _flotilla_collab_updates (tbl, col, pk, seq, data) VALUES (?1, ?2, ?3, \
             (SELECT coalesce(max(seq), 0) + 1 FROM _flotilla_collab_updates WHERE tbl = ?1 AND \
             col = ?2 AND pk = ?3), ?4)",
        )?
        .execute(params![t, c, k, update])?;
    }
    if let Some(state) = compacted {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO _flotilla_collab_docs (tbl, col, pk, format, state) VALUES \
             (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![t, c, k, DOC_FORMAT_YJS_V1, state])?;
        conn.prepare_cached(
            "DELETE FROM _flotilla_collab_updates WHERE tbl = ?1 AND col = ?2 AND pk = ?3 AND \
             seq < (SELECT max(seq) FROM _flotilla_collab_updates WHERE tbl = ?1 AND col = ?2 \
             AND pk = ?3)",
        )?
        .execute(params![t, c, k])?;
    }
    Ok(())
}
