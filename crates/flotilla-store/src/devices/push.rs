//! A device's push: its transactions checked whole before any is merged (the order, the
//! clock, every row inside the device's shape), then each merged as one transaction stamped
//! with the device's origin.

use super::shapes::DeviceView;
use crate::leader_db::LeaderDb;
use crate::StoreError;
use flotilla_merge::encode_key;
use flotilla_types::{
    ExchangeStamp, Hlc, Lsn, OriginName, RowChange, RowItem, RowOp, RowPayload, SqlValue,
    TableShape, VersionVector,
};
use std::collections::HashMap;

/// A row change as a device sent it: images by column name (the shape's columns, or some).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRowChange {
    pub table: String,
    pub op: RowOp,
    pub before: Option<Vec<(String, SqlValue)>>,
    pub after: Option<Vec<(String, SqlValue)>>,
}

/// An edit of a collaborative document a device made (docs/collab.md): a Yjs update.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceDocUpdate {
    pub table: String,
    /// The row's key by column name.
    pub key: Vec<(String, SqlValue)>,
    pub column: String,
    pub update: Vec<u8>,
}

/// One transaction a device made.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceTxn {
    /// Its number in its origin (1, 2, 3… without gaps).
    pub seq: u64,
    pub hlc: Hlc,
    /// The server's version vector as the device had pulled it when it made the transaction.
    pub deps: VersionVector,
    pub changes: Vec<DeviceRowChange>,
    /// Its edits of documents (merged after its row changes).
    pub docs: Vec<DeviceDocUpdate>,
}

/// Why a batch was refused, naming the transaction (its index in the batch and its number):
/// nothing of the batch was merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("transaction {seq} (number {index} of the batch, from 0): {reason}")]
pub struct DeviceRefusal {
    pub index: usize,
    pub seq: u64,
    /// `outside_shape`, `malformed`, `too_large`, `clock_ahead`, `gap` or `origin_reused`.
    pub code: &'static str,
    pub reason: String,
}

/// A checked transaction, ready for [`LeaderDb::commit_merge`].
#[derive(Debug, Clone)]
pub struct PreparedDeviceTxn {
    pub stamp: ExchangeStamp,
    pub changes: RowPayload,
}

/// What the edits of one document in a push add up to so far.
#[derive(Default)]
struct DocBudget {
    bytes: usize,
    writers: std::collections::HashSet<yrs::block::ClientID>,
}

/// A full row as the server would hold it (column names and values).
type FullRow = super::shapes::NamedRow;

fn named<'a>(image: &'a [(String, SqlValue)], column: &str) -> Option<&'a SqlValue> {
    image
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(column))
        .map(|(_, v)| v)
}

/// `base` with the image's values over it (columns the base lacks are added).
fn overlay(base: Option<&FullRow>, image: &[(String, SqlValue)]) -> FullRow {
    let (mut names, mut values) = base.cloned().unwrap_or_default();
    for (c, v) in image {
        match names.iter().position(|n| n.eq_ignore_ascii_case(c)) {
            Some(i) => values[i] = v.clone(),
            None => {
                names.push(c.clone());
                values.push(v.clone());
            }
        }
    }
    (names, values)
}

impl LeaderDb {
    /// Checks a device's batch: transactions this server has merged already are left out
    /// (a replay is a no-op); the rest must follow on without a gap, carry a clock within
    /// the drift bound, and change only rows of the device's shape — the server's row before
    /// (if it has one) and the row after. Rows an earlier transaction of the batch changed are
    /// judged as that transaction left them. `Ok(Err(_))`: refused, nothing to merge.
    pub fn check_device_batch(
        &self,
        view: &DeviceView,
        origin: &OriginName,
        txns: &[DeviceTxn],
        now_us: u64,
    ) -> Result<Result<Vec<PreparedDeviceTxn>, DeviceRefusal>, StoreError> {
        let max_drift_ms = self.multi_leader.as_ref().map_or(0, |m| m.max_drift_ms);
        let vv = self.version_vector()?;
        let have = vv.get(origin).0;
        let mut expected = have + 1;
        let mut batch_rows: HashMap<(String, Vec<u8>), Option<FullRow>> = HashMap::new();
        // What the batch adds to each document so far: its limits hold for the batch as a
        // whole (two edits of 5 MiB in one push, or in two transactions of it, are 10).
        let mut doc_budget: HashMap<(String, String, String), DocBudget> = HashMap::new();
        let mut out = Vec::new();
        for (index, txn) in txns.iter().enumerate() {
            let refuse = |code: &'static str, reason: String| {
                Ok(Err(DeviceRefusal {
                    index,
                    seq: txn.seq,
                    code,
                    reason,
                }))
            };
            if txn.seq < expected {
                // Merged before: pushed again after a cut — unless the number carried another
                // transaction (another clock): a copy of the local database reuses the origin.
                match super::merged_clock(&self.conn, origin.as_str(), txn.seq)? {
                    Some(h) if h != txn.hlc.0 => {
                        return refuse(
                            "origin_reused",
                            format!(
                                "the server merged another transaction {} of origin {origin}: \
                                 this local database was restored from a backup or copied; it \
                                 starts a new origin",
                                txn.seq
                            ),
                        )
                    }
                    _ => continue,
                }
            }
            if txn.seq > expected {
                return refuse(
                    "gap",
                    format!(
                        "the server has this device's transactions through {}: push from {} on",
                        expected - 1,
                        expected
                    ),
                );
            }
            if let Err(drift) = Hlc::ZERO.receive(txn.hlc, now_us / 1000, max_drift_ms) {
                return refuse(
                    "clock_ahead",
                    format!("its timestamp is refused: {drift} (the device's clock is wrong)"),
                );
            }
            let mut tables: Vec<TableShape> = Vec::new();
            let mut items = Vec::with_capacity(txn.changes.len());
            for c in &txn.changes {
                let prepared = match self.check_device_change(view, c, &mut batch_rows)? {
                    Ok(p) => p,
                    Err((code, reason)) => return refuse(code, reason),
                };
                let (shape, change) = prepared;
                let t = match tables.iter().position(|s| *s == shape) {
                    Some(t) => t,
                    None => {
                        tables.push(shape);
                        tables.len() - 1
                    }
                };
                items.push(RowItem::Change(RowChange {
                    table: t as u32,
                    ..change
                }));
            }
            // Documents travel as the document tables' rows do between data centres: the
            // merge takes them into the documents (`collab::IncomingDocs`).
            for d in &txn.docs {
                let change = match self.check_device_doc(view, d, &batch_rows, &mut doc_budget)? {
                    Ok(c) => c,
                    Err((code, reason)) => return refuse(code, reason),
                };
                let shape = crate::collab::updates_shape();
                let t = match tables.iter().position(|s| *s == shape) {
                    Some(t) => t,
                    None => {
                        tables.push(shape);
                        tables.len() - 1
                    }
                };
                items.push(RowItem::Change(RowChange {
                    table: t as u32,
                    ..change
                }));
            }
            // What the device saw: the server's vector as it pulled it — never beyond what the
            // server has (a server restored to an earlier state would otherwise wait for ever
            // for what it lost: the transaction then counts as concurrent with those writes)
            // — and its own transactions before this one.
            let mut deps = VersionVector::new();
            for (o, l) in txn.deps.iter() {
                deps.advance(o, l.min(vv.get(o)));
            }
            deps.advance(origin, Lsn(txn.seq - 1));
            out.push(PreparedDeviceTxn {
                stamp: ExchangeStamp {
                    origin: origin.clone(),
                    origin_lsn: Lsn(txn.seq),
                    hlc: txn.hlc,
                    deps,
                    counter_bases: Vec::new(),
                    original: None,
                },
                changes: RowPayload { tables, items },
            });
            expected += 1;
        }
        Ok(Ok(out))
    }

    /// A document edit: a collaborative column in the shape, of a row in the shape (as the
    /// batch leaves it), an update that decodes. Returns it as a row of the document updates.
    #[allow(clippy::type_complexity)]
    fn check_device_doc(
        &self,
        view: &DeviceView,
        d: &DeviceDocUpdate,
        batch_rows: &HashMap<(String, Vec<u8>), Option<FullRow>>,
        doc_budget: &mut HashMap<(String, String, String), DocBudget>,
    ) -> Result<Result<RowChange, (&'static str, String)>, StoreError> {
        let Some(t) = view.table(&d.table) else {
            return Ok(Err((
                "outside_shape",
                format!("table {} is not in this device's shape", d.table),
            )));
        };
        let Some(column) = t.columns.iter().find(|c| c.eq_ignore_ascii_case(&d.column)) else {
            return Ok(Err((
                "outside_shape",
                format!(
                    "column {} of {} is not in this device's shape",
                    d.column, t.table
                ),
            )));
        };
        let collab = crate::collab::read_collab_columns(&self.conn)?
            .into_iter()
            .find(|c| {
                c.table.eq_ignore_ascii_case(&t.table) && c.column.eq_ignore_ascii_case(column)
            });
        let Some(collab) = collab else {
            return Ok(Err((
                "malformed",
                format!("{}.{column} is not a collaborative column", t.table),
            )));
        };
        let key: Option<Vec<SqlValue>> = t.key.iter().map(|k| named(&d.key, k).cloned()).collect();
        let Some(key) = key.filter(|k| k.len() == 1) else {
            return Ok(Err((
                "malformed",
                format!(
                    "an edit of document {}.{column} must name the row's key {}",
                    t.table,
                    t.key.join(", ")
                ),
            )));
        };
        let pk = match (&key[0], collab.integer_key) {
            (SqlValue::Integer(i), true) => i.to_string(),
            (SqlValue::Text(s), false) => s.clone(),
            (other, _) => {
                let given = match other {
                    SqlValue::Integer(i) => format!("the integer {i}"),
                    SqlValue::Text(s) => format!("the text {s:?}"),
                    SqlValue::Real(f) => format!("the real {f}"),
                    SqlValue::Null => "NULL".into(),
                    SqlValue::TextBytes(_) => "text that is not UTF-8".into(),
                    SqlValue::Blob(_) => "a BLOB".into(),
                };
                let wanted = if collab.integer_key {
                    "an INTEGER"
                } else {
                    "a TEXT"
                };
                return Ok(Err((
                    "malformed",
                    format!(
                        "document key {} = {given}: the key of {} is {wanted}",
                        collab.key_column, t.table
                    ),
                )));
            }
        };
        let key_bytes = encode_key(key.iter());
        let row = match batch_rows.get(&(t.table.to_ascii_lowercase(), key_bytes)) {
            Some(r) => r.clone(),
            None => view.current_row(&self.conn, t, &key)?,
        };
        let inside = match &row {
            Some((names, values)) => view.contains(&self.conn, &t.table, names, values)?,
            None => false,
        };
        if !inside {
            return Ok(Err((
                "outside_shape",
                format!(
                    "document {}/{pk}/{column}: its row is not in this device's shape",
                    t.table
                ),
            )));
        }
        let update = match <yrs::Update as yrs::updates::decoder::Decode>::decode_v1(&d.update) {
            Ok(u) => u,
            Err(e) => {
                return Ok(Err((
                    "malformed",
                    format!(
                        "the edit of document {}/{pk}/{column} is not a Yjs update: {e}",
                        t.table
                    ),
                )))
            }
        };
        // The limits of an editor's update (docs/collab.md): a device writes as one writer.
        use crate::collab::crdt::{MAX_DOCUMENT_BYTES, MAX_NEW_WRITERS_PER_UPDATE};
        let text_bytes = row.as_ref().map_or(0, |(names, values)| {
            names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(column))
                .and_then(|i| values.get(i))
                .map_or(0, |v| match v {
                    SqlValue::Text(s) => s.len(),
                    _ => 0,
                })
        });
        let budget = doc_budget
            .entry((
                t.table.to_ascii_lowercase(),
                pk.clone(),
                column.to_ascii_lowercase(),
            ))
            .or_default();
        budget.bytes += d.update.len();
        let inserted = update.state_vector();
        budget
            .writers
            .extend(crate::collab::crdt::writers(&inserted, &update));
        if text_bytes + budget.bytes > MAX_DOCUMENT_BYTES {
            return Ok(Err((
                "too_large",
                format!(
                    "the edits of document {}/{pk}/{column} in this push ({} bytes, its text \
                     {text_bytes}) would make it larger than its limit of {} MiB",
                    t.table,
                    budget.bytes,
                    MAX_DOCUMENT_BYTES >> 20
                ),
            )));
        }
        if budget.writers.len() > MAX_NEW_WRITERS_PER_UPDATE {
            return Ok(Err((
                "malformed",
                format!(
                    "the edits of document {}/{pk}/{column} in this push bring {} writers; a \
                     push may bring {MAX_NEW_WRITERS_PER_UPDATE} at most",
                    t.table,
                    budget.writers.len()
                ),
            )));
        }
        Ok(Ok(crate::collab::update_row(
            &collab.table,
            &collab.column,
            &pk,
            &d.update,
        )))
    }

    /// The row the server knows under a key: the table's row, or else the last values of a
    /// row its merge state still holds (deleted, or hidden by a unique clash) — a device may
    /// not bring back or take over a row that was never its own. `None`: no such row.
    fn known_row(
        &self,
        view: &DeviceView,
        t: &super::ViewTable,
        key: &[SqlValue],
        key_bytes: &[u8],
        batch_rows: &HashMap<(String, Vec<u8>), Option<FullRow>>,
    ) -> Result<Option<FullRow>, StoreError> {
        if let Some(r) = batch_rows.get(&(t.table.to_ascii_lowercase(), key_bytes.to_vec())) {
            return Ok(r.clone());
        }
        if let Some(live) = view.current_row(&self.conn, t, key)? {
            return Ok(Some(live));
        }
        let Some(state) = crate::multi_leader::load_state(&self.conn, &t.table, key_bytes)? else {
            return Ok(None);
        };
        let names = &t.all_columns;
        let n = names.len().min(state.cells.len());
        Ok(Some((
            names[..n].to_vec(),
            state.cells[..n].iter().map(|c| c.value.clone()).collect(),
        )))
    }

    /// One change: its table and columns in the shape, the rows it touches (the server's
    /// before, and after: at the key it ends under) in the shape. Returns the change in the
    /// merge's terms, with the columns outside the shape filled in from the server's row (so
    /// that moving a row to another key keeps them).
    #[allow(clippy::type_complexity)]
    fn check_device_change(
        &self,
        view: &DeviceView,
        c: &DeviceRowChange,
        batch_rows: &mut HashMap<(String, Vec<u8>), Option<FullRow>>,
    ) -> Result<Result<(TableShape, RowChange), (&'static str, String)>, StoreError> {
        let Some(t) = view.table(&c.table) else {
            return Ok(Err((
                "outside_shape",
                format!("table {} is not in this device's shape", c.table),
            )));
        };
        let key_image = match (c.op, &c.before, &c.after) {
            (RowOp::Insert, None, Some(a)) => a,
            (RowOp::Update, Some(b), Some(_)) => b,
            (RowOp::Delete, Some(b), None) => b,
            _ => {
                return Ok(Err((
                    "malformed",
                    format!(
                        "a change of {} with op {} must carry {}",
                        t.table,
                        c.op.as_str(),
                        match c.op {
                            RowOp::Insert => "an after image only",
                            RowOp::Update => "a before and an after image",
                            RowOp::Delete => "a before image only",
                        }
                    ),
                )))
            }
        };
        if let (Some(b), Some(a)) = (&c.before, &c.after) {
            let same =
                b.len() == a.len() && b.iter().zip(a).all(|(x, y)| x.0.eq_ignore_ascii_case(&y.0));
            if !same {
                return Ok(Err((
                    "malformed",
                    format!(
                        "an update of {} has before and after images of different columns",
                        t.table
                    ),
                )));
            }
        }
        // The columns sent: each in the shape (an update may carry one outside it unchanged,
        // as a device that has not pulled a narrower shape yet does: it is left out).
        let image = c.after.as_ref().or(c.before.as_ref()).expect("one image");
        let mut kept: Vec<usize> = Vec::with_capacity(image.len());
        let mut sent: Vec<String> = Vec::with_capacity(image.len());
        for (i, (name, _)) in image.iter().enumerate() {
            // A column outside the shape is left out: not written (the server's value stays,
            // and the device gets it back with the row). A device that has not pulled a
            // narrower shape yet sends such columns.
            let Some(declared) = t.columns.iter().find(|n| n.eq_ignore_ascii_case(name)) else {
                continue;
            };
            if sent.iter().any(|n| n == declared) {
                return Ok(Err((
                    "malformed",
                    format!("column {name} of {} is given twice", t.table),
                )));
            }
            sent.push(declared.clone());
            kept.push(i);
        }
        let only_kept = |img: &[(String, SqlValue)]| -> Vec<(String, SqlValue)> {
            kept.iter()
                .zip(&sent)
                .map(|(i, name)| (name.clone(), img[*i].1.clone()))
                .collect()
        };
        let before = c.before.as_deref().map(only_kept);
        let after = c.after.as_deref().map(only_kept);
        for k in &t.key {
            if !sent.iter().any(|n| n.eq_ignore_ascii_case(k)) {
                return Ok(Err((
                    "malformed",
                    format!("a change of {} lacks its key column {k}", t.table),
                )));
            }
        }
        let key_of = |image: &[(String, SqlValue)]| -> (Vec<SqlValue>, Vec<u8>) {
            let vals: Vec<SqlValue> = t
                .key
                .iter()
                .map(|k| named(image, k).cloned().unwrap_or(SqlValue::Null))
                .collect();
            let bytes = encode_key(vals.iter());
            (vals, bytes)
        };
        let key_image = only_kept(key_image);
        let table_key = t.table.to_ascii_lowercase();
        let (key_vals, key_bytes) = key_of(&key_image);
        let null_key = |vals: &[SqlValue]| vals.iter().any(|v| matches!(v, SqlValue::Null));
        if null_key(&key_vals) || after.as_deref().is_some_and(|a| null_key(&key_of(a).0)) {
            return Ok(Err((
                "malformed",
                format!("a change of {} has a NULL in its key", t.table),
            )));
        }
        // A key as the table stores it (7 in a TEXT key column is stored as '7': to the merge
        // it would be another row).
        let typed = |vals: &[SqlValue]| vals.iter().zip(&t.key_affinity).all(|(v, a)| a.keeps(v));
        if !typed(&key_vals) || after.as_deref().is_some_and(|a| !typed(&key_of(a).0)) {
            return Ok(Err((
                "malformed",
                format!(
                    "a change of {} has a key value of another type than its column's ({})",
                    t.table,
                    t.key.join(", ")
                ),
            )));
        }
        let current = self.known_row(view, t, &key_vals, &key_bytes, batch_rows)?;
        let describe =
            |vals: &[SqlValue]| crate::multi_leader::key_json(&vals.iter().collect::<Vec<_>>());
        let judge =
            |names: &[String], vals: &[SqlValue]| -> Result<Result<bool, String>, StoreError> {
                match view.contains(&self.conn, &t.table, names, vals) {
                    Ok(b) => Ok(Ok(b)),
                    Err(StoreError::Sqlite(e)) => Ok(Err(crate::sql_error_message(&e))),
                    Err(e) => Err(e),
                }
            };
        let outside = |what: String| -> Result<
            Result<(TableShape, RowChange), (&'static str, String)>,
            StoreError,
        > { Ok(Err(("outside_shape", what))) };
        // The server's row under the key, if it knows one, must be the device's to change
        // (an insert too: it would merge into that row).
        if let Some((names, vals)) = &current {
            match judge(names, vals)? {
                Ok(true) => {}
                Ok(false) => {
                    return outside(format!(
                        "the row {} of {} is not in this device's shape",
                        describe(&key_vals),
                        t.table
                    ))
                }
                Err(why) => {
                    return outside(format!(
                        "the shape of {} cannot judge the row {}: {why}",
                        t.table,
                        describe(&key_vals)
                    ))
                }
            }
        }
        let mut after_key = key_bytes.clone();
        if let Some(after) = &after {
            let (after_vals, ak) = key_of(after);
            after_key = ak;
            if after_key != key_bytes {
                // Moved to another key: the server's row there, if any, must be the device's.
                if let Some((names, vals)) =
                    self.known_row(view, t, &after_vals, &after_key, batch_rows)?
                {
                    if judge(&names, &vals)? != Ok(true) {
                        return outside(format!(
                            "the row {} of {} (where the change moves a row) is not in this \
                             device's shape",
                            describe(&after_vals),
                            t.table
                        ));
                    }
                }
            }
            // Judged on the server's row with the device's values over it.
            let (names, vals) = overlay(current.as_ref(), after);
            match judge(&names, &vals)? {
                Ok(true) => {}
                Ok(false) => {
                    return outside(format!(
                        "the row {} of {} would not be in this device's shape after the change",
                        describe(&after_vals),
                        t.table
                    ))
                }
                Err(why) => {
                    return outside(format!(
                        "the shape of {} cannot judge the row {}: {why}",
                        t.table,
                        describe(&after_vals)
                    ))
                }
            }
        }
        // The columns outside the shape, from the server's row: unchanged by the device (the
        // same before and after), they are kept where the row goes.
        let mut columns = sent.clone();
        let mut extra: Vec<SqlValue> = Vec::new();
        // (An insert over a row the server has — `INSERT OR REPLACE` on the device, or two
        // devices inserting one key — keeps them too.)
        if let Some((names, vals)) = &current {
            for (n, v) in names.iter().zip(vals) {
                if !columns.iter().any(|c| c.eq_ignore_ascii_case(n)) {
                    columns.push(n.clone());
                    extra.push(v.clone());
                }
            }
        }
        let full = |img: &Option<Vec<(String, SqlValue)>>| -> Option<Vec<SqlValue>> {
            img.as_ref().map(|i| {
                i.iter()
                    .map(|(_, v)| v.clone())
                    .chain(extra.iter().cloned())
                    .collect()
            })
        };
        // What the batch's later transactions see of these rows.
        match &after {
            Some(a) => {
                let row = overlay(current.as_ref(), a);
                if after_key != key_bytes {
                    batch_rows.insert((table_key.clone(), key_bytes.clone()), None);
                }
                batch_rows.insert((table_key, after_key), Some(row));
            }
            None => {
                batch_rows.insert((table_key, key_bytes), None);
            }
        }
        let key = t
            .key
            .iter()
            .map(|k| {
                columns
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(k))
                    .expect("the key is sent") as u16
            })
            .collect();
        let shape = TableShape {
            name: t.table.clone(),
            columns,
            key,
        };
        let change = RowChange {
            table: 0,
            op: c.op,
            old_rowid: 0,
            new_rowid: 0,
            before: full(&before),
            after: full(&after),
        };
        Ok(Ok((shape, change)))
    }
}
