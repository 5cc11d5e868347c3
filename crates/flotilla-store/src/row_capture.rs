//! Capture of the logical log on the leader: SQLite's pre-update hook records every row a
//! transaction inserts, updates or deletes (including rows changed by triggers and foreign-key
//! actions), with its values before and after. The writer adds schema changes in order, and
//! drops what a rolled-back request captured.
//!
//! The hook runs inside SQLite's statement execution, so it only copies values; table shapes
//! (column names, primary key) are looked up between statements, when the schema is stable.

use crate::preupdate::{self, PreUpdateCase, Row};
use crate::rules::INTERNAL_PREFIX;
use crate::StoreError;
use flotilla_types::{rowid_alias, RowOp, SchemaChange, TableShape};
use flotilla_wire::{split_values, value_bytes, Out, RowsMark, RowsWriter};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A row change as the hook saw it, before its table's shape is known: its body (rowids and
/// values, already encoded as the row format lays them out) is `raw[start..end]`.
struct RawChange {
    table: Arc<str>,
    op: RowOp,
    /// Values per row image, as SQLite reported them (generated columns included).
    width: usize,
    start: usize,
    end: usize,
    /// A blob written in place (`sqlite3_blob_write`, which fts5 uses for its index): SQLite
    /// reports it to the hook as a delete of the row, but it is an update whose new image is
    /// read back when the statement is done. The body holds the rowids and the old image.
    rewritten_rowid: Option<i64>,
}

/// A table's shape and, for each shape column, the index of its value in the hook's row
/// (generated columns are not captured: followers compute them).
struct KnownShape {
    shape: TableShape,
    value_index: Vec<usize>,
    row_width: usize,
    /// Primary-key columns (indexes into a captured row) that SQLite lets hold NULL: those of a
    /// rowid table not declared NOT NULL (a historical SQLite quirk).
    nullable_key: Vec<usize>,
}

#[derive(Default)]
struct State {
    /// False while Flotilla runs its own statements or outside a transaction.
    enabled: bool,
    /// The current statement's changes; their bodies are in `raw`.
    changes: Vec<RawChange>,
    raw: Out,
    /// The transaction so far, encoded.
    payload: RowsWriter,
    /// Table name → index into the payload's tables and shape, for the current schema.
    in_payload: HashMap<String, (u32, Arc<KnownShape>)>,
    /// Shapes as of the current schema, across transactions.
    shapes: HashMap<String, Arc<KnownShape>>,
    /// A failure seen inside the hook (reported at the end of the statement).
    error: Option<String>,
    /// The transaction's row changes may not grow past this many bytes; past it the hook
    /// stops copying (and the statement is refused as too large).
    max_bytes: u64,
    overflow: bool,
}

#[derive(Clone)]
pub(crate) struct RowCapture {
    state: Arc<Mutex<State>>,
}

fn encode_value(out: &mut Out, v: ValueRef<'_>) {
    match v {
        ValueRef::Null => value_bytes::null(out),
        ValueRef::Integer(i) => value_bytes::integer(out, i),
        ValueRef::Real(f) => value_bytes::real(out, f),
        ValueRef::Text(t) => value_bytes::text(out, t),
        ValueRef::Blob(b) => value_bytes::blob(out, b),
    }
}

impl RowCapture {
    /// Installs the pre-update hook; a transaction's row changes may take `max_bytes`.
    pub(crate) fn install(conn: &Connection, max_bytes: u64) -> rusqlite::Result<RowCapture> {
        let capture = RowCapture {
            state: Arc::new(Mutex::new(State {
                max_bytes,
                ..State::default()
            })),
        };
        let state = capture.state.clone();
        preupdate::install(conn, move |db: &str, table: &str, case: &PreUpdateCase| {
            let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
            let s = &mut *guard;
            if !s.enabled || s.overflow || db != "main" {
                return;
            }
            // The same table as the previous change (the common case) shares its name.
            let name: Arc<str> = match s.changes.last() {
                Some(prev) if &*prev.table == table => prev.table.clone(),
                _ => {
                    let lower = table.to_ascii_lowercase();
                    // API tokens, which every replica needs, and documents, which its viewers
                    // read, are the internal tables replicated.
                    let replicated_internal =
                        lower == crate::TOKENS_TABLE || crate::collab::is_collab_table(&lower);
                    if (lower.starts_with(INTERNAL_PREFIX) && !replicated_internal)
                        || lower.starts_with("sqlite_")
                    {
                        return;
                    }
                    Arc::from(table)
                }
            };
            let mut rewritten_rowid = None;
            if let PreUpdateCase::Delete(o) = case {
                if o.is_blob_write() {
                    let rowid = o.rowid();
                    let known = s
                        .changes
                        .iter()
                        .any(|c| c.rewritten_rowid == Some(rowid) && &*c.table == table);
                    if known {
                        // Its new image is read once, at the end of the statement.
                        return;
                    }
                    rewritten_rowid = Some(rowid);
                }
            }
            let start = s.raw.0.len();
            let raw = &mut s.raw;
            // A row image's values; how many there are.
            let image = |raw: &mut Out, row: &Row| {
                let width = row.column_count();
                for i in 0..width {
                    encode_value(raw, row.value(i)?);
                }
                rusqlite::Result::Ok(width)
            };
            let done: rusqlite::Result<(RowOp, usize)> = match case {
                PreUpdateCase::Insert(n) => {
                    value_bytes::ivar(raw, n.rowid());
                    image(raw, n).map(|w| (RowOp::Insert, w))
                }
                PreUpdateCase::Delete(o) if rewritten_rowid.is_some() => {
                    value_bytes::ivar(raw, o.rowid());
                    value_bytes::ivar(raw, o.rowid());
                    image(raw, o).map(|w| (RowOp::Update, w))
                }
                PreUpdateCase::Delete(o) => {
                    value_bytes::ivar(raw, o.rowid());
                    image(raw, o).map(|w| (RowOp::Delete, w))
                }
                PreUpdateCase::Update { old, new } => {
                    value_bytes::ivar(raw, old.rowid());
                    value_bytes::ivar(raw, new.rowid());
                    image(raw, old).and_then(|w| image(raw, new).map(|_| (RowOp::Update, w)))
                }
                PreUpdateCase::Unknown => {
                    s.error = Some(format!("unknown change kind on table {table}"));
                    return;
                }
            };
            match done {
                Ok((op, width)) => {
                    let end = s.raw.0.len();
                    if (end + s.payload.len_bytes()) as u64 > s.max_bytes {
                        // Memory stays bounded: nothing more is copied; the statement
                        // fails as too large.
                        s.overflow = true;
                        s.raw.0 = Vec::new();
                        s.changes.clear();
                        return;
                    }
                    s.changes.push(RawChange {
                        table: name,
                        op,
                        width,
                        start,
                        end,
                        rewritten_rowid,
                    });
                }
                Err(e) => {
                    s.raw.0.truncate(start);
                    let range =
                        matches!(&e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == 25);
                    s.error = Some(if range {
                        // SQLite's pre-update hook checks column indexes against the stored
                        // columns: rows of tables with VIRTUAL generated columns cannot be read.
                        format!(
                            "the changed rows of {table} cannot be read: tables with VIRTUAL \
                                 generated columns cannot be replicated row by row (declare the \
                                 generated columns STORED)"
                        )
                    } else {
                        format!("reading a changed row of {table}: {e}")
                    });
                }
            }
        })?;
        Ok(capture)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a transaction's capture.
    pub(crate) fn begin(&self) {
        let mut s = self.lock();
        s.changes.clear();
        s.raw.0.clear();
        s.payload = RowsWriter::new();
        s.in_payload.clear();
        s.error = None;
        s.overflow = false;
        s.enabled = true;
    }

    /// Bytes of row changes captured so far in the transaction (`u64::MAX` once over the
    /// limit).
    pub(crate) fn bytes(&self) -> u64 {
        let s = self.lock();
        if s.overflow {
            return u64::MAX;
        }
        (s.raw.0.len() + s.payload.len_bytes()) as u64
    }

    /// Whether the transaction's row changes outgrew the limit.
    pub(crate) fn overflowed(&self) -> bool {
        self.lock().overflow
    }

    /// A mark to roll back to (taken at a savepoint, after [`RowCapture::statement_done`]).
    pub(crate) fn mark(&self) -> RowsMark {
        self.lock().payload.mark()
    }

    /// Forgets what was captured after `mark` (the savepoint was rolled back).
    pub(crate) fn rollback_to(&self, mark: RowsMark) {
        let mut s = self.lock();
        s.changes.clear();
        s.raw.0.clear();
        s.payload.truncate(mark);
        s.error = None;
        s.overflow = false;
    }

    /// Resolves the changes of the statement that just ran against the current schema.
    pub(crate) fn statement_done(&self, conn: &Connection) -> Result<(), StoreError> {
        self.read_rewritten_rows(conn)?;
        let mut guard = self.lock();
        let s = &mut *guard;
        if let Some(e) = s.error.take() {
            return Err(StoreError::Capture(e));
        }
        let changes = std::mem::take(&mut s.changes);
        for c in &changes {
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
                    let i = s.payload.add_table(known.shape.clone());
                    s.in_payload.insert(c.table.to_string(), (i, known.clone()));
                    (i, known)
                }
            };
            if c.width != known.row_width {
                return Err(StoreError::Capture(format!(
                    "a change of {} has {} values but the table has {} columns",
                    c.table, c.width, known.row_width
                )));
            }
            let body = &s.raw.0[c.start..c.end];
            if !known.nullable_key.is_empty() && c.op != RowOp::Delete {
                check_key_not_null(&c.table, &known, c.op, body)?;
            }
            if known.value_index.len() == c.width {
                // No generated columns: the body as captured.
                s.payload.change(c.op, table, body);
                continue;
            }
            // Leave out generated columns: split each row image into its values and keep the
            // stored ones.
            let rowids = match c.op {
                RowOp::Update => 2,
                _ => 1,
            };
            let images = if c.op == RowOp::Update { 2 } else { 1 };
            let mut rest = body;
            let mut kept = Out::default();
            for _ in 0..rowids {
                let mut cur = flotilla_wire::Cursor::new(rest, "captured change");
                let before = cur.remaining();
                cur.ivar().map_err(|e| StoreError::Capture(e.to_string()))?;
                let used = before - cur.remaining();
                kept.raw(&rest[..used]);
                rest = &rest[used..];
            }
            for _ in 0..images {
                let (vals, tail) = split_values(rest, c.width).ok_or_else(|| {
                    StoreError::Capture(format!("a captured change of {} is malformed", c.table))
                })?;
                for &i in &known.value_index {
                    kept.raw(vals[i]);
                }
                rest = tail;
            }
            s.payload.change(c.op, table, &kept.0);
        }
        s.raw.0.clear();
        Ok(())
    }

    /// Completes the blob writes of the statement with the rows as they are now (read without
    /// holding the state: reading runs SQLite's progress handler, which looks at it). A row
    /// gone by the end of the statement was deleted: its delete is captured on its own.
    fn read_rewritten_rows(&self, conn: &Connection) -> Result<(), StoreError> {
        let pending: Vec<(usize, Arc<str>, i64)> = self
            .lock()
            .changes
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.rewritten_rowid.map(|r| (i, c.table.clone(), r)))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let mut images: Vec<(usize, Option<Out>)> = Vec::with_capacity(pending.len());
        // The query per table, made once (a merge rewrites many rows of one table).
        let mut queries: HashMap<Arc<str>, String> = HashMap::new();
        for (i, table, rowid) in pending {
            let sql = match queries.get(&table) {
                Some(sql) => sql,
                None => {
                    let sql = format!(
                        "SELECT * FROM main.{} WHERE {} = ?1",
                        crate::pipeline_triggers::quote(&table),
                        rowid_name(conn, &table)?
                    );
                    queries.entry(table.clone()).or_insert(sql)
                }
            };
            let mut stmt = conn.prepare_cached(sql)?;
            let width = stmt.column_count();
            let mut rows = stmt.query([rowid])?;
            let image = match rows.next()? {
                Some(row) => {
                    let mut out = Out::default();
                    for c in 0..width {
                        encode_value(&mut out, row.get_ref(c)?);
                    }
                    Some(out)
                }
                None => None,
            };
            images.push((i, image));
        }
        let mut s = self.lock();
        let mut gone = Vec::new();
        for (i, image) in images {
            match image {
                Some(new_image) => {
                    let (start, end) = (s.changes[i].start, s.changes[i].end);
                    let body_start = s.raw.0.len();
                    let old_body = s.raw.0[start..end].to_vec();
                    s.raw.raw(&old_body);
                    s.raw.raw(&new_image.0);
                    let c = &mut s.changes[i];
                    c.start = body_start;
                    c.end = body_start + old_body.len() + new_image.0.len();
                    c.rewritten_rowid = None;
                }
                None => gone.push(i),
            }
        }
        for i in gone.into_iter().rev() {
            s.changes.remove(i);
        }
        Ok(())
    }

    /// Records a schema change (after it ran) and forgets the table shapes it may have changed.
    pub(crate) fn schema_changed(&self, change: SchemaChange) {
        let mut s = self.lock();
        // Rows the schema change itself rewrote (ALTER TABLE) are not changes: followers
        // replay the statement.
        s.changes.clear();
        s.raw.0.clear();
        s.overflow = false;
        s.payload.schema(&change);
        s.shapes.clear();
        s.in_payload.clear();
    }

    /// Records a `CREATE TABLE ... AS SELECT` (after it ran) as the table's plain definition
    /// followed by the rows it inserted: a replica creates the table and takes the rows, rather
    /// than running the query again (non-deterministic functions, data it does not hold).
    ///
    /// SQLite fills such a table without calling the pre-update hook, so its rows are read
    /// back here, as inserts.
    pub(crate) fn table_created_with_rows(
        &self,
        change: SchemaChange,
        conn: &Connection,
    ) -> Result<(), StoreError> {
        let table: Arc<str> = Arc::from(change.table.as_str());
        {
            let mut s = self.lock();
            s.changes.clear();
            s.raw.0.clear();
            s.payload.schema(&change);
            s.shapes.clear();
            s.in_payload.clear();
        }
        let mut stmt = conn.prepare(&format!(
            "SELECT {}, * FROM {}",
            rowid_name(conn, &change.table)?,
            crate::pipeline_triggers::quote(&change.table)
        ))?;
        let width = stmt.column_count() - 1;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let mut s = self.lock();
            let start = s.raw.0.len();
            value_bytes::ivar(&mut s.raw, row.get::<_, i64>(0)?);
            for i in 0..width {
                encode_value(&mut s.raw, row.get_ref(i + 1)?);
            }
            let end = s.raw.0.len();
            if (end + s.payload.len_bytes()) as u64 > s.max_bytes {
                s.overflow = true;
                s.raw.0 = Vec::new();
                s.changes.clear();
                return Ok(());
            }
            s.changes.push(RawChange {
                table: table.clone(),
                op: RowOp::Insert,
                width,
                start,
                end,
                rewritten_rowid: None,
            });
        }
        self.statement_done(conn)
    }

    /// The transaction's capture so far, encoded (capture goes on).
    pub(crate) fn peek(&self) -> Vec<u8> {
        self.lock().payload.encoded()
    }

    /// The transaction's capture, encoded; capture stays off until the next
    /// [`RowCapture::begin`].
    pub(crate) fn finish(&self) -> Vec<u8> {
        let mut s = self.lock();
        s.enabled = false;
        s.in_payload.clear();
        std::mem::take(&mut s.payload).finish()
    }

    /// Forgets cached shapes (after a rolled-back schema change).
    pub(crate) fn forget_shapes(&self) {
        let mut s = self.lock();
        s.shapes.clear();
        s.in_payload.clear();
    }
}

/// Every column of a table in `schema` as `pragma_table_xinfo` lists it: (name, primary-key
/// position or 0, hidden: 2 and 3 are generated columns).
fn xinfo(
    conn: &Connection,
    schema: &str,
    table: &str,
) -> Result<Vec<(String, i64, i64)>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT name, pk, hidden FROM pragma_table_xinfo(?1, ?2) ORDER BY cid")?;
    let cols = stmt
        .query_map([table, schema], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(cols)
}

/// The name the rowid answers to in a `main` table, as SQL on this connection resolves it (a
/// column of any kind named `rowid` hides it).
fn rowid_name(conn: &Connection, table: &str) -> Result<&'static str, StoreError> {
    let cols = xinfo(conn, "main", table)?;
    rowid_alias(cols.iter().map(|c| c.0.as_str())).ok_or_else(|| {
        StoreError::Capture(format!(
            "table {table} has columns named rowid, oid and _rowid_: its rows cannot be addressed"
        ))
    })
}

/// Why the rows of a `main` table could not be replicated by rowid, if so: a table without a
/// primary key is replicated by rowid, which a replica addresses by a name no column takes
/// (`rowid`, `oid` or `_rowid_`); columns taking all three, or a generated column taking the
/// one replicas would use, leave it no name.
pub(crate) fn rowid_name_problem(
    conn: &Connection,
    table: &str,
) -> Result<Option<String>, StoreError> {
    let cols = xinfo(conn, "main", table)?;
    if cols.is_empty() || cols.iter().any(|c| c.1 > 0) {
        return Ok(None); // gone (renamed, dropped), a view, or keyed by its primary key
    }
    let all = rowid_alias(cols.iter().map(|c| c.0.as_str()));
    let stored = rowid_alias(
        cols.iter()
            .filter(|c| c.2 != 2 && c.2 != 3)
            .map(|c| c.0.as_str()),
    );
    Ok(match (all, stored) {
        (None, _) => Some(format!(
            "table {table:?} has no primary key and columns named rowid, oid and _rowid_: \
             replicas address its rows by rowid, which needs one of those names free \
             (declare a primary key, or rename a column)"
        )),
        (Some(a), Some(b)) if a == b => None,
        (Some(_), _) => Some(format!(
            "table {table:?} has no primary key and a generated column named rowid, oid or \
             _rowid_: replicas address its rows by rowid under that name (rename the column)"
        )),
    })
}

/// Every column of a `main` table: (name, primary-key position, declared type, hidden), where
/// hidden is 0 for an ordinary column, 2 or 3 for a generated one.
pub(crate) fn table_xinfo_all(
    conn: &Connection,
    table: &str,
) -> Result<Vec<(String, i64, String, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, pk, type, hidden FROM pragma_table_xinfo(?1, 'main') ORDER BY cid",
    )?;
    let cols = stmt
        .query_map([table], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(cols)
}

/// The stored (not generated) columns of a table in `schema`, with their primary-key position
/// (0: not in the key).
pub(crate) fn table_columns(
    conn: &Connection,
    schema: &str,
    table: &str,
) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(xinfo(conn, schema, table)?
        .into_iter()
        .filter(|c| c.2 != 2 && c.2 != 3)
        .map(|c| (c.0, c.1))
        .collect())
}

/// Refuses a row whose primary key holds NULL: replicas and pipeline targets find rows by their
/// key, and rows with NULL keys cannot be told apart (an update or delete of one would reach
/// every one of them there).
fn check_key_not_null(
    table: &str,
    known: &KnownShape,
    op: RowOp,
    body: &[u8],
) -> Result<(), StoreError> {
    let malformed = || StoreError::Capture(format!("a captured change of {table} is malformed"));
    // The rowids first (two for an update), then the images: the new one last.
    let (rowids, images) = if op == RowOp::Update { (2, 2) } else { (1, 1) };
    let mut cur = flotilla_wire::Cursor::new(body, "captured change");
    for _ in 0..rowids {
        cur.ivar().map_err(|_| malformed())?;
    }
    let mut rest = &body[body.len() - cur.remaining()..];
    for image in 1..=images {
        let (vals, tail) = split_values(rest, known.row_width).ok_or_else(malformed)?;
        if image == images {
            for &k in &known.nullable_key {
                // Tag 0: NULL.
                if vals[k] == [0] {
                    return Err(StoreError::Refused(format!(
                        "the primary key of table {table} would hold NULL (SQLite allows it in a \
                         table declared without NOT NULL): replicas find rows by their key, and \
                         rows with NULL keys cannot be told apart; give the key a value, or \
                         declare its columns NOT NULL"
                    )));
                }
            }
        }
        rest = tail;
    }
    Ok(())
}

fn read_shape(conn: &Connection, table: &str) -> Result<KnownShape, StoreError> {
    let cols = xinfo(conn, "main", table)?;
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
        nullable_key: nullable_key(conn, table)?,
        shape: TableShape {
            name: table.to_string(),
            columns,
            key: key.into_iter().map(|(_, i)| i).collect(),
        },
        value_index,
        row_width: cols.len(),
    })
}

/// The primary-key columns of a `main` table that may hold NULL (indexes into its rows as the
/// pre-update hook gives them): none for a WITHOUT ROWID table or an INTEGER PRIMARY KEY (the
/// rowid), which SQLite never lets be NULL, nor for columns declared NOT NULL.
fn nullable_key(conn: &Connection, table: &str) -> Result<Vec<usize>, StoreError> {
    let without_rowid: bool = conn
        .prepare_cached("SELECT wr FROM pragma_table_list(?1) WHERE schema = 'main'")?
        .query_row([table], |r| r.get(0))
        .optional()?
        .unwrap_or(false);
    if without_rowid {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT pk, type, \"notnull\" FROM pragma_table_xinfo(?1, 'main') ORDER BY cid",
    )?;
    let cols: Vec<(i64, String, bool)> = stmt
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let keys: Vec<usize> = (0..cols.len()).filter(|&i| cols[i].0 > 0).collect();
    if let [only] = keys[..] {
        // The rowid itself: an INTEGER PRIMARY KEY with no index of its own. Declared
        // `INTEGER PRIMARY KEY DESC` it is not (a quirk SQLite keeps): an ordinary column with
        // a key index, which may hold NULL.
        let key_index: i64 = conn
            .prepare_cached("SELECT count(*) FROM pragma_index_list(?1) WHERE origin = 'pk'")?
            .query_row([table], |r| r.get(0))?;
        if cols[only].1.eq_ignore_ascii_case("integer") && key_index == 0 {
            return Ok(Vec::new());
        }
    }
    Ok(keys.into_iter().filter(|&i| !cols[i].2).collect())
}
