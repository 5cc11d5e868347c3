//! Capture of the logical log on the leader: SQLite's pre-update hook records every row a
//! transaction inserts, updates or deletes (including rows changed by triggers and foreign-key
//! actions), with its values before and after. The writer adds schema changes in order, and
//! drops what a rolled-back request captured.
//!
//! The hook runs inside SQLite's statement execution, so it only copies values; table shapes
//! (column names, primary key) are looked up between statements, when the schema is stable.

use crate::rules::INTERNAL_PREFIX;
use crate::StoreError;
use flotilla_types::{RowChange, RowItem, RowOp, RowPayload, SchemaChange, SqlValue, TableShape};
use rusqlite::hooks::PreUpdateCase;
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A row change as the hook saw it, before its table's shape is known.
struct RawChange {
    table: Arc<str>,
    op: RowOp,
    old_rowid: i64,
    new_rowid: i64,
    before: Option<Vec<SqlValue>>,
    after: Option<Vec<SqlValue>>,
}

/// A table's shape and, for each shape column, the index of its value in the hook's row
/// (generated columns are not captured: followers compute them).
struct KnownShape {
    shape: TableShape,
    value_index: Vec<usize>,
    row_width: usize,
}

#[derive(Default)]
struct State {
    /// False while Flotilla runs its own statements or a schema change runs.
    enabled: bool,
    raw: Vec<RawChange>,
    /// The transaction so far.
    payload: RowPayload,
    /// Table name → index into `payload.tables` and shape, for the current schema.
    in_payload: HashMap<String, (u32, Arc<KnownShape>)>,
    /// Shapes as of the current schema, across transactions.
    shapes: HashMap<String, Arc<KnownShape>>,
    /// A failure seen inside the hook (reported at the end of the statement).
    error: Option<String>,
}

#[derive(Clone)]
pub(crate) struct RowCapture {
    state: Arc<Mutex<State>>,
}

fn value(v: ValueRef<'_>) -> SqlValue {
    match v {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(i) => SqlValue::Integer(i),
        ValueRef::Real(f) => SqlValue::Real(f),
        ValueRef::Text(t) => SqlValue::Text(match std::str::from_utf8(t) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(t).into_owned(),
        }),
        ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
    }
}

impl RowCapture {
    pub(crate) fn install(conn: &mut Connection) -> rusqlite::Result<RowCapture> {
        let capture = RowCapture {
            state: Arc::new(Mutex::new(State::default())),
        };
        let state = capture.state.clone();
        conn.preupdate_hook(Some(
            move |_action, db: &str, table: &str, case: &PreUpdateCase| {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                if !s.enabled || db != "main" {
                    return;
                }
                // The same table as the previous change (the common case) shares its name.
                let name: Arc<str> = match s.raw.last() {
                    Some(prev) if &*prev.table == table => prev.table.clone(),
                    _ => {
                        let lower = table.to_ascii_lowercase();
                        if lower.starts_with(INTERNAL_PREFIX) || lower.starts_with("sqlite_") {
                            return;
                        }
                        Arc::from(table)
                    }
                };
                let old = |a: &rusqlite::hooks::PreUpdateOldValueAccessor| {
                    (0..a.get_column_count())
                        .map(|i| a.get_old_column_value(i).map(value))
                        .collect::<rusqlite::Result<Vec<_>>>()
                };
                let new = |a: &rusqlite::hooks::PreUpdateNewValueAccessor| {
                    (0..a.get_column_count())
                        .map(|i| a.get_new_column_value(i).map(value))
                        .collect::<rusqlite::Result<Vec<_>>>()
                };
                let change = match case {
                    PreUpdateCase::Insert(n) => new(n).map(|after| RawChange {
                        table: name.clone(),
                        op: RowOp::Insert,
                        old_rowid: 0,
                        new_rowid: n.get_new_row_id(),
                        before: None,
                        after: Some(after),
                    }),
                    PreUpdateCase::Delete(o) => old(o).map(|before| RawChange {
                        table: name.clone(),
                        op: RowOp::Delete,
                        old_rowid: o.get_old_row_id(),
                        new_rowid: 0,
                        before: Some(before),
                        after: None,
                    }),
                    PreUpdateCase::Update {
                        old_value_accessor: o,
                        new_value_accessor: n,
                    } => old(o).and_then(|before| {
                        Ok(RawChange {
                            table: name.clone(),
                            op: RowOp::Update,
                            old_rowid: o.get_old_row_id(),
                            new_rowid: n.get_new_row_id(),
                            before: Some(before),
                            after: Some(new(n)?),
                        })
                    }),
                    PreUpdateCase::Unknown => {
                        s.error = Some(format!("unknown change kind on table {table}"));
                        return;
                    }
                };
                match change {
                    Ok(c) => s.raw.push(c),
                    Err(e) => s.error = Some(format!("reading a changed row of {table}: {e}")),
                }
            },
        ))?;
        Ok(capture)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a transaction's capture.
    pub(crate) fn begin(&self) {
        let mut s = self.lock();
        s.raw.clear();
        s.payload = RowPayload::default();
        s.in_payload.clear();
        s.error = None;
        s.enabled = true;
    }

    /// A mark to roll back to (taken at a savepoint, after [`RowCapture::statement_done`]).
    pub(crate) fn mark(&self) -> usize {
        self.lock().payload.items.len()
    }

    /// Forgets what was captured after `mark` (the savepoint was rolled back).
    pub(crate) fn rollback_to(&self, mark: usize) {
        let mut s = self.lock();
        s.raw.clear();
        s.payload.items.truncate(mark);
        s.error = None;
    }

    /// Resolves the changes of the statement that just ran against the current schema.
    pub(crate) fn statement_done(&self, conn: &Connection) -> Result<(), StoreError> {
        let mut s = self.lock();
        if let Some(e) = s.error.take() {
            return Err(StoreError::Capture(e));
        }
        let raw = std::mem::take(&mut s.raw);
        for c in raw {
            let (table, known) = match s.in_payload.get(&*c.table) {
                Some((i, k)) => (*i, k.clone()),
                None => {
                    let known = match s.shapes.get(&*c.table) {
                        Some(k) => k.clone(),
                        None => {
                            let k = Arc::new(read_shape(conn, &c.table)?);
                            s.shapes.insert(c.table.to_string(), k.clone());
                            k
                        }
                    };
                    let i = s.payload.tables.len() as u32;
                    s.payload.tables.push(known.shape.clone());
                    s.in_payload.insert(c.table.to_string(), (i, known.clone()));
                    (i, known)
                }
            };
            let pick = |vals: Option<Vec<SqlValue>>| -> Result<Option<Vec<SqlValue>>, StoreError> {
                let Some(vals) = vals else { return Ok(None) };
                if vals.len() != known.row_width {
                    return Err(StoreError::Capture(format!(
                        "a change of {} has {} values but the table has {} columns",
                        c.table,
                        vals.len(),
                        known.row_width
                    )));
                }
                if known.value_index.len() == vals.len() {
                    // No generated columns: the row as captured.
                    return Ok(Some(vals));
                }
                let mut vals = vals;
                Ok(Some(
                    known
                        .value_index
                        .iter()
                        .map(|&i| std::mem::replace(&mut vals[i], SqlValue::Null))
                        .collect(),
                ))
            };
            let change = RowChange {
                table,
                op: c.op,
                old_rowid: c.old_rowid,
                new_rowid: c.new_rowid,
                before: pick(c.before)?,
                after: pick(c.after)?,
            };
            s.payload.items.push(RowItem::Change(change));
        }
        Ok(())
    }

    /// Records a schema change (after it ran) and forgets the table shapes it may have changed.
    pub(crate) fn schema_changed(&self, change: SchemaChange) {
        let mut s = self.lock();
        // Rows the schema change itself rewrote (ALTER TABLE) are not changes: followers
        // replay the statement.
        s.raw.clear();
        s.payload.items.push(RowItem::Schema(change));
        s.shapes.clear();
        s.in_payload.clear();
    }

    /// The transaction's capture; capture stays off until the next [`RowCapture::begin`].
    pub(crate) fn finish(&self) -> RowPayload {
        let mut s = self.lock();
        s.enabled = false;
        s.in_payload.clear();
        std::mem::take(&mut s.payload)
    }

    /// Forgets cached shapes (after a rolled-back schema change).
    pub(crate) fn forget_shapes(&self) {
        let mut s = self.lock();
        s.shapes.clear();
        s.in_payload.clear();
    }
}

/// The stored (not generated) columns of a table in `schema`, with their primary-key position
/// (0: not in the key).
pub(crate) fn table_columns(
    conn: &Connection,
    schema: &str,
    table: &str,
) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT name, pk, hidden FROM pragma_table_xinfo(?1, ?2) ORDER BY cid")?;
    let cols = stmt
        .query_map([table, schema], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(cols
        .into_iter()
        .filter(|c| c.2 != 2 && c.2 != 3)
        .map(|c| (c.0, c.1))
        .collect())
}

fn read_shape(conn: &Connection, table: &str) -> Result<KnownShape, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, pk, hidden FROM pragma_table_xinfo(?1, 'main') ORDER BY cid",
    )?;
    let cols = stmt
        .query_map([table], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if cols.is_empty() {
        return Err(StoreError::Capture(format!(
            "table {table} changed but its columns cannot be read"
        )));
    }
    let mut columns = Vec::new();
    let mut value_index = Vec::new();
    let mut key: Vec<(i64, u16)> = Vec::new();
    for (i, (name, pk, hidden)) in cols.iter().enumerate() {
        // hidden 2 and 3: generated columns, computed on each replica.
        if *hidden == 2 || *hidden == 3 {
            continue;
        }
        if *pk > 0 {
            key.push((*pk, columns.len() as u16));
        }
        columns.push(name.clone());
        value_index.push(i);
    }
    key.sort();
    Ok(KnownShape {
        shape: TableShape {
            name: table.to_string(),
            columns,
            key: key.into_iter().map(|(_, i)| i).collect(),
        },
        value_index,
        row_width: cols.len(),
    })
}
