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

/// One transaction a device made.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceTxn {
    /// Its number in its origin (1, 2, 3… without gaps).
    pub seq: u64,
    pub hlc: Hlc,
    /// The server's version vector as the device had pulled it when it made the transaction.
    pub deps: VersionVector,
    pub changes: Vec<DeviceRowChange>,
}

/// Why a batch was refused, naming the transaction (its index in the batch and its number):
/// nothing of the batch was merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("transaction {seq} (number {index} of the batch, from 0): {reason}")]
pub struct DeviceRefusal {
    pub index: usize,
    pub seq: u64,
    /// `outside_shape`, `malformed`, `clock_ahead` or `gap`.
    pub code: &'static str,
    pub reason: String,
}

/// A checked transaction, ready for [`LeaderDb::commit_merge`].
#[derive(Debug, Clone)]
pub struct PreparedDeviceTxn {
    pub stamp: ExchangeStamp,
    pub changes: RowPayload,
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
        let have = self.version_vector()?.get(origin).0;
        let mut expected = have + 1;
        let mut batch_rows: HashMap<(String, Vec<u8>), Option<FullRow>> = HashMap::new();
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
                continue; // merged before: pushed again after a cut
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
            // The device saw its own transactions before this one.
            let mut deps = txn.deps.clone();
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

    /// One change: its table and columns in the shape, its rows (before and after) in the
    /// shape. Returns the change in the merge's terms (its table's shape: the columns sent).
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
        let image = c.after.as_ref().or(c.before.as_ref()).expect("one image");
        let mut columns: Vec<String> = Vec::with_capacity(image.len());
        for (name, _) in image {
            let Some(declared) = t.columns.iter().find(|n| n.eq_ignore_ascii_case(name)) else {
                return Ok(Err((
                    "outside_shape",
                    format!(
                        "column {name} of {} is not in this device's shape (its columns: {})",
                        t.table,
                        t.columns.join(", ")
                    ),
                )));
            };
            if columns.iter().any(|n| n == declared) {
                return Ok(Err((
                    "malformed",
                    format!("column {name} of {} is given twice", t.table),
                )));
            }
            columns.push(declared.clone());
        }
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
        let mut key = Vec::with_capacity(t.key.len());
        for k in &t.key {
            match columns.iter().position(|n| n.eq_ignore_ascii_case(k)) {
                Some(i) => key.push(i as u16),
                None => {
                    return Ok(Err((
                        "malformed",
                        format!("a change of {} lacks its key column {k}", t.table),
                    )))
                }
            }
        }
        let values = |image: &[(String, SqlValue)]| -> Vec<SqlValue> {
            image.iter().map(|(_, v)| v.clone()).collect()
        };
        let key_of = |image: &[(String, SqlValue)]| -> (Vec<SqlValue>, Vec<u8>) {
            let vals: Vec<SqlValue> = t
                .key
                .iter()
                .map(|k| named(image, k).cloned().unwrap_or(SqlValue::Null))
                .collect();
            let bytes = encode_key(vals.iter());
            (vals, bytes)
        };
        let table_key = t.table.to_ascii_lowercase();
        let (key_vals, key_bytes) = key_of(key_image);
        let current: Option<FullRow> = match batch_rows.get(&(table_key.clone(), key_bytes.clone()))
        {
            Some(r) => r.clone(),
            None => view.current_row(&self.conn, t, &key_vals)?,
        };
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
        // The server's row, if it has one, must be the device's to change (an insert too: it
        // would merge into that row).
        {
            if let Some((names, vals)) = &current {
                match judge(names, vals)? {
                    Ok(true) => {}
                    Ok(false) => {
                        return Ok(Err((
                            "outside_shape",
                            format!(
                                "the row {} of {} is not in this device's shape",
                                describe(&key_vals),
                                t.table
                            ),
                        )))
                    }
                    Err(why) => {
                        return Ok(Err((
                            "outside_shape",
                            format!("the shape of {} cannot judge the row: {why}", t.table),
                        )))
                    }
                }
            }
        }
        if let Some(after) = &c.after {
            // Judged on the server's row with the device's values over it.
            let (names, vals) = overlay(current.as_ref(), after);
            match judge(&names, &vals)? {
                Ok(true) => {}
                Ok(false) => {
                    return Ok(Err((
                        "outside_shape",
                        format!(
                            "the row {} of {} would not be in this device's shape after the \
                             change",
                            describe(&key_of(after).0),
                            t.table
                        ),
                    )))
                }
                Err(why) => {
                    return Ok(Err((
                        "outside_shape",
                        format!("the shape of {} cannot judge the row: {why}", t.table),
                    )))
                }
            }
            let (_, after_key) = key_of(after);
            if after_key != key_bytes {
                batch_rows.insert((table_key.clone(), key_bytes.clone()), None);
            }
            batch_rows.insert((table_key, after_key), Some((names, vals)));
        } else {
            batch_rows.insert((table_key, key_bytes), None);
        }
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
            before: c.before.as_deref().map(values),
            after: c.after.as_deref().map(values),
        };
        Ok(Ok((shape, change)))
    }
}
