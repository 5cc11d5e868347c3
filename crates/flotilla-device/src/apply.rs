//! Applying what a device pulled, and replaying on top of it what it has not pushed yet: the
//! device's rows are the server's plus its own pending changes (the rebase model; see
//! docs/devices.md). Runs inside one local transaction with capture off.

use crate::local_schema::quote;
use flotilla_types::sync_protocol::{value_from_json, JsonRow, PullItem, ShapeTable};
use flotilla_types::SqlValue;
use rusqlite::types::Value;
use rusqlite::Connection;
use std::collections::HashSet;

/// The rows a pull wrote (table, key): the pending changes of these rows are replayed on
/// top; others still show on the device as they were.
pub type Touched = HashSet<(String, String)>;

fn touched_key(t: &ShapeTable, key: &[&Value]) -> (String, String) {
    (t.table.to_ascii_lowercase(), format!("{key:?}"))
}

/// A protocol value as SQLite takes it.
pub fn to_sql(v: SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => Value::Integer(i),
        SqlValue::Real(f) => Value::Real(f),
        SqlValue::Text(s) => Value::Text(s),
        // SQLite keeps text as bytes; rusqlite binds text as str only: kept as a BLOB, the
        // nearest it can hold (such text does not come from a device's own writes).
        SqlValue::TextBytes(b) => Value::Blob(b),
        SqlValue::Blob(b) => Value::Blob(b),
    }
}

fn values(row: &JsonRow) -> Result<Vec<(String, Value)>, String> {
    row.iter()
        .map(|(c, v)| value_from_json(v).map(|v| (c.clone(), to_sql(v))))
        .collect()
}

fn key_of<'a>(t: &ShapeTable, row: &'a [(String, Value)]) -> Option<Vec<&'a Value>> {
    t.key
        .iter()
        .map(|k| row.iter().find(|(c, _)| c == k).map(|(_, v)| v))
        .collect()
}

fn table<'a>(tables: &'a [ShapeTable], name: &str) -> Result<&'a ShapeTable, String> {
    tables
        .iter()
        .find(|t| t.table.eq_ignore_ascii_case(name))
        .ok_or_else(|| format!("the server sent a row of {name}, which is not in the shape"))
}

/// Inserts the row, or sets the columns given of the row with its key.
fn upsert_raw(conn: &Connection, t: &ShapeTable, row: &[(String, Value)]) -> rusqlite::Result<()> {
    let cols: Vec<String> = row.iter().map(|(c, _)| quote(c)).collect();
    let marks: Vec<String> = (1..=row.len()).map(|i| format!("?{i}")).collect();
    let keys: Vec<String> = t.key.iter().map(|k| quote(k)).collect();
    let sets: Vec<String> = row
        .iter()
        .filter(|(c, _)| !t.key.contains(c))
        .map(|(c, _)| format!("{q} = excluded.{q}", q = quote(c)))
        .collect();
    let action = if sets.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", sets.join(", "))
    };
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {action}",
        quote(&t.table),
        cols.join(", "),
        marks.join(", "),
        keys.join(", ")
    );
    conn.prepare_cached(&sql)?
        .execute(rusqlite::params_from_iter(row.iter().map(|(_, v)| v)))
        .map(|_| ())
}

/// The columns of a unique index SQLite names in a constraint failure
/// (`UNIQUE constraint failed: events.owner, events.starts`).
fn unique_columns(e: &rusqlite::Error) -> Option<Vec<String>> {
    let rusqlite::Error::SqliteFailure(f, Some(msg)) = e else {
        return None;
    };
    if f.extended_code != rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE {
        return None;
    }
    let list = msg.strip_prefix("UNIQUE constraint failed: ")?;
    Some(
        list.split(", ")
            .map(|c| c.rsplit('.').next().unwrap_or(c).to_string())
            .collect(),
    )
}

/// Writes a row the server sent. A local row that holds one of its unique values (a change
/// of this device's not pushed yet) gives way: it is replayed afterwards, and if it still
/// clashes, waits unseen until the server has decided on it.
fn upsert(
    conn: &Connection,
    t: &ShapeTable,
    row: &[(String, Value)],
    touched: &mut Touched,
) -> Result<(), String> {
    let failed = |e: rusqlite::Error| format!("writing a row of {}: {e}", t.table);
    for _ in 0..8 {
        let e = match upsert_raw(conn, t, row) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let Some(cols) = unique_columns(&e) else {
            return Err(failed(e));
        };
        let values: Option<Vec<&Value>> = cols
            .iter()
            .map(|c| row.iter().find(|(n, _)| n == c).map(|(_, v)| v))
            .collect();
        let (Some(values), Some(key)) = (values, key_of(t, row)) else {
            return Err(failed(e));
        };
        let same: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} IS ?{}", quote(c), i + 1))
            .collect();
        let sql = format!(
            "DELETE FROM {} WHERE {} AND NOT ({})",
            quote(&t.table),
            same.join(" AND "),
            key_where(t, cols.len() + 1)
        );
        let params: Vec<&Value> = values.into_iter().chain(key).collect();
        // The rows that give way are touched: their pending changes are replayed.
        let keys: Vec<String> = t.key.iter().map(|k| quote(k)).collect();
        let select = sql.replacen("DELETE", &format!("SELECT {}", keys.join(", ")), 1);
        let gone: Vec<Vec<Value>> = conn
            .prepare(&select)
            .and_then(|mut st| {
                st.query_map(rusqlite::params_from_iter(params.iter()), |r| {
                    (0..keys.len()).map(|i| r.get::<_, Value>(i)).collect()
                })?
                .collect()
            })
            .map_err(failed)?;
        for k in gone {
            touched.insert(touched_key(t, &k.iter().collect::<Vec<_>>()));
        }
        conn.execute(&sql, rusqlite::params_from_iter(params))
            .map_err(failed)?;
    }
    Err(format!(
        "writing a row of {}: unique values clash again and again",
        t.table
    ))
}

fn key_where(t: &ShapeTable, first: usize) -> String {
    t.key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} IS ?{}", quote(k), first + i))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn delete_raw(conn: &Connection, t: &ShapeTable, key: &[&Value]) -> rusqlite::Result<()> {
    let sql = format!("DELETE FROM {} WHERE {}", quote(&t.table), key_where(t, 1));
    conn.prepare_cached(&sql)?
        .execute(rusqlite::params_from_iter(key.iter()))
        .map(|_| ())
}

fn delete(conn: &Connection, t: &ShapeTable, key: &[&Value]) -> Result<(), String> {
    delete_raw(conn, t, key).map_err(|e| format!("deleting a row of {}: {e}", t.table))
}

/// Applies pulled items in order. Schema statements for what exists already are skipped
/// (a table the whole shape brought, created again by the log).
pub fn apply_items(
    conn: &Connection,
    tables: &[ShapeTable],
    items: &[PullItem],
    touched: &mut Touched,
) -> Result<bool, String> {
    let mut schema_changed = false;
    for item in items {
        match item {
            PullItem::Schema { sql, .. } => {
                schema_changed = true;
                if let Err(e) = conn.execute_batch(sql) {
                    let text = e.to_string();
                    // An index is this device's own business (the server holds uniqueness): one
                    // the device's rows cannot take is left out rather than stopping the sync.
                    let index = sql
                        .trim_start()
                        .get(..6)
                        .is_some_and(|w| w.eq_ignore_ascii_case("create"))
                        && sql.to_ascii_lowercase().contains(" index ");
                    if !text.contains("already exists")
                        && !text.contains("duplicate column")
                        && !index
                    {
                        return Err(format!("the schema change {sql:?}: {text}"));
                    }
                }
            }
            PullItem::Upsert { table: name, row } => {
                let t = table(tables, name)?;
                let row = values(row).map_err(|e| format!("a row of {name}: {e}"))?;
                if let Some(k) = key_of(t, &row) {
                    touched.insert(touched_key(t, &k));
                }
                upsert(conn, t, &row, touched)?;
            }
            PullItem::Delete { table: name, key } => {
                let t = table(tables, name)?;
                let key_row = values(key).map_err(|e| format!("a key of {name}: {e}"))?;
                let Some(key) = key_of(t, &key_row) else {
                    return Err(format!("a delete of {name} without its key"));
                };
                touched.insert(touched_key(t, &key));
                delete(conn, t, &key)?;
            }
            PullItem::Doc(d) => crate::documents::merge(conn, tables, d)?,
            PullItem::Conflict { row } => {
                let row = values(row).map_err(|e| format!("a conflict: {e}"))?;
                let cols: Vec<String> = row.iter().map(|(c, _)| quote(c)).collect();
                let marks: Vec<String> = (1..=row.len()).map(|i| format!("?{i}")).collect();
                conn.execute(
                    &format!(
                        "INSERT OR REPLACE INTO flotilla_conflicts ({}) VALUES ({})",
                        cols.join(", "),
                        marks.join(", ")
                    ),
                    rusqlite::params_from_iter(row.iter().map(|(_, v)| v)),
                )
                .map_err(|e| format!("storing a conflict: {e}"))?;
            }
        }
    }
    Ok(schema_changed)
}

/// A change as the outbox keeps it: as it is pushed.
pub type OutboxChange = flotilla_types::sync_protocol::PushChange;

/// Replays a pending change on the rows as the server sent them: an insert writes its row, an
/// update its changed columns (of a row the server still has), a delete deletes.
/// Replays a pending change if the pull touched one of its rows (`None`: every change).
pub fn replay(
    conn: &Connection,
    tables: &[ShapeTable],
    c: &OutboxChange,
    touched: Option<&Touched>,
) -> Result<(), String> {
    let Ok(t) = table(tables, &c.table) else {
        // The table left the shape: the server will refuse the change, and say why.
        return Ok(());
    };
    let before = c.before.as_ref().map(values).transpose()?;
    let after = c.after.as_ref().map(values).transpose()?;
    if let Some(touched) = touched {
        let hit = |img: &Option<Vec<(String, Value)>>| {
            img.as_ref()
                .and_then(|i| key_of(t, i))
                .is_some_and(|k| touched.contains(&touched_key(t, &k)))
        };
        if !hit(&before) && !hit(&after) {
            return Ok(());
        }
    }
    let replayed = replay_change(conn, t, c, before, after);
    match replayed {
        // The server's rows leave this change no room (a unique value another row holds
        // now): it stays in the outbox, unseen here, until the server has decided on it.
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => Ok(()),
        other => other.map_err(|e| format!("replaying a change of {}: {e}", t.table)),
    }
}

fn replay_change(
    conn: &Connection,
    t: &ShapeTable,
    c: &OutboxChange,
    before: Option<Vec<(String, Value)>>,
    after: Option<Vec<(String, Value)>>,
) -> rusqlite::Result<()> {
    match (c.op.as_str(), before, after) {
        ("insert", _, Some(a)) => upsert_raw(conn, t, &a),
        ("delete", Some(b), _) => match key_of(t, &b) {
            Some(k) => delete_raw(conn, t, &k),
            None => Ok(()),
        },
        ("update", Some(b), Some(a)) => {
            let (Some(old), Some(new)) = (key_of(t, &b), key_of(t, &a)) else {
                return Ok(());
            };
            if old != new {
                delete_raw(conn, t, &old)?;
                return upsert_raw(conn, t, &a);
            }
            let changed: Vec<&(String, Value)> = a
                .iter()
                .filter(|(col, v)| b.iter().find(|(c2, _)| c2 == col).map(|(_, o)| o) != Some(v))
                .collect();
            if changed.is_empty() {
                return Ok(());
            }
            let sets: Vec<String> = changed
                .iter()
                .enumerate()
                .map(|(i, (col, _))| format!("{} = ?{}", quote(col), i + 1))
                .collect();
            let sql = format!(
                "UPDATE {} SET {} WHERE {}",
                quote(&t.table),
                sets.join(", "),
                key_where(t, changed.len() + 1)
            );
            let params: Vec<&Value> = changed
                .iter()
                .map(|(_, v)| v)
                .chain(old.iter().copied())
                .collect();
            conn.prepare_cached(&sql)?
                .execute(rusqlite::params_from_iter(params))
                .map(|_| ())
        }
        // A change the capture never makes: nothing to replay.
        _ => Ok(()),
    }
}
