//! What a device pulls: the whole shape (its first sync, or when its cursor or shapes are
//! gone), or the changes of the server's log that touch it — a row entering or changed in the
//! shape is sent whole (its shape columns), a row leaving it or deleted is sent as its key.

use super::shapes::{DeviceView, ViewTable};
use crate::multi_leader::{key_json, CONFLICTS_TABLE};
use crate::StoreError;
use flotilla_types::sync_protocol::{value_from_json, value_to_json, DocUpdate, JsonRow, PullItem};
use flotilla_types::{DdlKind, Hlc, Position, RowItem, RowPayload, SqlValue, VersionVector};
use rusqlite::Connection;
use std::collections::{HashMap, HashSet};

/// Whether an index of a shaped table is for devices too: one on the shape's columns only. An
/// index on a column a device does not hold (it holds that column's default) would refuse a
/// device's rows for a uniqueness it cannot see, or index nothing.
fn index_for_devices(conn: &Connection, t: &ViewTable, index: &str) -> Result<bool, StoreError> {
    let cols: Vec<Option<String>> = conn
        .prepare_cached("SELECT name FROM pragma_index_info(?1)")?
        .query_map([index], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(!cols.is_empty()
        && cols
            .iter()
            .all(|c| c.as_deref().is_some_and(|c| t.has_column(c))))
}

/// The whole shape as one read transaction saw it, and where the server was then.
#[derive(Debug)]
pub struct ShapeSnapshot {
    pub view: DeviceView,
    pub position: Position,
    pub vv: VersionVector,
    pub hlc: Hlc,
    pub items: Vec<PullItem>,
}

fn json_row(columns: &[String], values: &[SqlValue]) -> JsonRow {
    columns
        .iter()
        .zip(values)
        .map(|(c, v)| (c.clone(), value_to_json(v)))
        .collect()
}

/// A row's shape columns (those the image has), by name.
fn shaped_row(t: &ViewTable, columns: &[String], values: &[SqlValue]) -> JsonRow {
    columns
        .iter()
        .zip(values)
        .filter(|(c, _)| t.has_column(c))
        .map(|(c, v)| (c.clone(), value_to_json(v)))
        .collect()
}

fn key_row(t: &ViewTable, columns: &[String], values: &[SqlValue]) -> JsonRow {
    t.key
        .iter()
        .filter_map(|k| {
            let i = columns.iter().position(|c| c.eq_ignore_ascii_case(k))?;
            Some((k.clone(), value_to_json(&values[i])))
        })
        .collect()
}

/// The origins of every device of `user` (their conflicts are theirs to see even once the
/// row is gone).
pub fn user_origins(conn: &Connection, user: &str) -> Result<HashSet<String>, StoreError> {
    if !super::has_registry(conn)? {
        return Ok(HashSet::new());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT o.origin FROM _flotilla_device_origins o JOIN _flotilla_devices d \
         ON d.name = o.device WHERE d.user = ?1",
    )?;
    let out = stmt
        .query_map([user], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(out)
}

/// A conflict's row key as the conflicts table writes it (a JSON array of the key's values),
/// read back; `None` for a key it cannot hold exactly (a BLOB).
fn key_from_json(text: &str) -> Option<Vec<SqlValue>> {
    let parsed: serde_json::Value = serde_json::from_str(text).ok()?;
    parsed
        .as_array()?
        .iter()
        .map(|v| match v {
            serde_json::Value::Null => Some(SqlValue::Null),
            serde_json::Value::Number(n) => n
                .as_i64()
                .map(SqlValue::Integer)
                .or_else(|| n.as_f64().map(SqlValue::Real)),
            serde_json::Value::String(s) if s.starts_with("x'") => None,
            serde_json::Value::String(s) => Some(SqlValue::Text(s.clone())),
            _ => None,
        })
        .collect()
}

/// Whether a conflict (a row of the conflicts table) is for this device to see: it is on a
/// table of the shape and either concerns a row in the shape now, or one of its sides was
/// written by a device of the same user.
fn conflict_visible(
    conn: &Connection,
    view: &DeviceView,
    mine: &HashSet<String>,
    columns: &[String],
    values: &[SqlValue],
) -> Result<bool, StoreError> {
    let get = |name: &str| columns.iter().position(|c| c == name).map(|i| &values[i]);
    let Some(SqlValue::Text(table)) = get("tbl") else {
        return Ok(false);
    };
    let Some(t) = view.table(table) else {
        return Ok(false);
    };
    // A conflict on a column outside the shape holds values the device may not see.
    if let Some(SqlValue::Text(col)) = get("col") {
        if !t.has_column(col) {
            return Ok(false);
        }
    }
    for side in ["local_origin", "remote_origin"] {
        if let Some(SqlValue::Text(o)) = get(side) {
            if mine.contains(o) {
                return Ok(true);
            }
        }
    }
    let Some(SqlValue::Text(key)) = get("row_key") else {
        return Ok(false);
    };
    let Some(key) = key_from_json(key).filter(|k| k.len() == t.key.len()) else {
        return Ok(false);
    };
    match view.current_row(conn, t, &key)? {
        Some((names, vals)) => view.contains(conn, &t.table, &names, &vals),
        None => Ok(false),
    }
}

/// Reads the whole shape of a device in one read transaction of `conn` (a reader): each
/// table's schema and rows in the shape, the conflicts the device may see, and the server's
/// position, version vector and clock as of that same moment.
pub fn shape_snapshot(
    conn: &Connection,
    user: &str,
    device: &str,
    documents: bool,
) -> Result<ShapeSnapshot, StoreError> {
    conn.execute_batch("BEGIN")?;
    let read = (|| {
        let mut view = DeviceView::load(conn, user, device)?;
        view.documents = documents;
        let collab = if documents {
            crate::collab::read_collab_columns(conn)?
        } else {
            Vec::new()
        };
        let meta = crate::read_meta(conn)?
            .ok_or_else(|| StoreError::Mismatch("the database has no position yet".into()))?;
        let vv = crate::read_version_vector(conn)?;
        let hlc: i64 = conn
            .query_row("SELECT hlc FROM _flotilla_ml_origin", [], |r| r.get(0))
            .unwrap_or(0);
        let mut items = Vec::new();
        let mut tables: Vec<&ViewTable> = view.tables().collect();
        tables.sort_by(|a, b| a.table.cmp(&b.table));
        let mut in_shape: HashMap<String, HashSet<String>> = HashMap::new();
        for t in tables {
            let schema: Vec<(String, String, String)> = conn
                .prepare_cached(
                    "SELECT type, name, sql FROM sqlite_schema WHERE tbl_name = ?1 COLLATE NOCASE \
                     AND sql IS NOT NULL AND type IN ('table', 'index') \
                     ORDER BY type = 'index', rowid",
                )?
                .query_map([&t.table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            for (kind, name, sql) in schema {
                if kind == "index" && !index_for_devices(conn, t, &name)? {
                    continue;
                }
                items.push(PullItem::Schema {
                    table: t.table.clone(),
                    sql,
                });
            }
            let keys = in_shape.entry(t.table.to_ascii_lowercase()).or_default();
            let key_at: Vec<usize> = t
                .key
                .iter()
                .filter_map(|k| t.columns.iter().position(|c| c == k))
                .collect();
            let documents: Vec<&crate::collab::CollabColumn> = collab
                .iter()
                .filter(|c| c.table.eq_ignore_ascii_case(&t.table) && t.has_column(&c.column))
                .collect();
            for row in view.rows_of(conn, t)? {
                keys.insert(key_json(
                    &key_at.iter().map(|i| &row[*i]).collect::<Vec<_>>(),
                ));
                items.push(PullItem::Upsert {
                    table: t.table.clone(),
                    row: json_row(&t.columns, &row),
                });
                for c in &documents {
                    if let Some(item) = whole_document(conn, t, c, &key_row(t, &t.columns, &row))? {
                        items.push(item);
                    }
                }
            }
        }
        let has_conflicts: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = ?1",
            [CONFLICTS_TABLE],
            |r| r.get(0),
        )?;
        if has_conflicts > 0 {
            let mine = user_origins(conn, user)?;
            let mut stmt = conn.prepare(&format!("SELECT * FROM {CONFLICTS_TABLE}"))?;
            let names: Vec<String> = stmt.column_names().map(str::to_string).collect();
            let mut rows = stmt.raw_query();
            while let Some(r) = rows.next()? {
                let mut vals = Vec::with_capacity(names.len());
                for i in 0..names.len() {
                    vals.push(crate::multi_leader::from_sql(r.get_ref(i)?));
                }
                let get = |n: &str| names.iter().position(|c| c == n).map(|i| &vals[i]);
                let column_shown = match (get("tbl"), get("col")) {
                    (Some(SqlValue::Text(t)), Some(SqlValue::Text(c))) => {
                        view.table(t).is_some_and(|vt| vt.has_column(c))
                    }
                    _ => true,
                };
                let visible = column_shown && match (get("tbl"), get("row_key")) {
                    (Some(SqlValue::Text(t)), Some(SqlValue::Text(k))) => {
                        in_shape
                            .get(&t.to_ascii_lowercase())
                            .is_some_and(|s| s.contains(k.as_str()))
                            || (view.table(t.as_str()).is_some()
                                && ["local_origin", "remote_origin"].iter().any(|side| {
                                    matches!(get(side), Some(SqlValue::Text(o)) if mine.contains(o.as_str()))
                                }))
                    }
                    _ => false,
                };
                if visible {
                    items.push(PullItem::Conflict {
                        row: json_row(&names, &vals),
                    });
                }
            }
        }
        Ok(ShapeSnapshot {
            view,
            position: meta.position,
            vv,
            hlc: Hlc(hlc as u64),
            items,
        })
    })();
    let _ = conn.execute_batch("COMMIT");
    read
}

/// What of one transaction of the server's log a device pulls, appended to `out`; returns
/// how many row items it added.
pub fn pull_items_of(
    conn: &Connection,
    view: &DeviceView,
    mine: &HashSet<String>,
    rows: &RowPayload,
    out: &mut Vec<PullItem>,
) -> Result<usize, StoreError> {
    let mut added = 0;
    for item in &rows.items {
        match item {
            RowItem::Schema(s) => {
                let relevant = matches!(
                    s.kind,
                    DdlKind::CreateTable
                        | DdlKind::AlterTable
                        | DdlKind::CreateIndex
                        | DdlKind::DropIndex
                );
                let index_left_out = s.kind == DdlKind::CreateIndex
                    && match (
                        view.table(&s.table),
                        crate::multi_leader::create_target(&s.sql),
                    ) {
                        (Some(t), Some(name)) => !index_for_devices(conn, t, &name)?,
                        _ => false,
                    };
                if relevant && !index_left_out && view.table(&s.table).is_some() {
                    out.push(PullItem::Schema {
                        table: view.table(&s.table).expect("checked").table.clone(),
                        sql: s.sql.clone(),
                    });
                }
            }
            RowItem::Change(c) => {
                let shape = rows.shape(c);
                if let Some(((table, column, pk), update)) = crate::collab::doc_row(shape, c)? {
                    if view.documents {
                        if let Some(item) = doc_item(conn, view, &table, &column, &pk, &update)? {
                            out.push(item);
                            added += 1;
                        }
                    }
                    continue;
                }
                if shape.name.eq_ignore_ascii_case(CONFLICTS_TABLE) {
                    if let Some(after) = &c.after {
                        if conflict_visible(conn, view, mine, &shape.columns, after)? {
                            out.push(PullItem::Conflict {
                                row: json_row(&shape.columns, after),
                            });
                            added += 1;
                        }
                    }
                    continue;
                }
                let Some(t) = view.table(&shape.name) else {
                    continue;
                };
                // An image the predicate cannot judge (written before a column it reads was
                // added) is outside the shape: the row comes back when it changes again.
                let inside = |image: &Option<Vec<SqlValue>>| -> Result<bool, StoreError> {
                    match image {
                        Some(v) => match view.contains(conn, &t.table, &shape.columns, v) {
                            Err(StoreError::Sqlite(_)) => Ok(false),
                            other => other,
                        },
                        None => Ok(false),
                    }
                };
                let was = inside(&c.before)?;
                let is = inside(&c.after)?;
                if was {
                    let before = c.before.as_deref().expect("inside");
                    let moved = match &c.after {
                        Some(after) => shape
                            .key
                            .iter()
                            .any(|k| before[*k as usize] != after[*k as usize]),
                        None => true,
                    };
                    if moved || !is {
                        out.push(PullItem::Delete {
                            table: t.table.clone(),
                            key: key_row(t, &shape.columns, before),
                        });
                        added += 1;
                    }
                }
                if is {
                    out.push(PullItem::Upsert {
                        table: t.table.clone(),
                        row: shaped_row(t, &shape.columns, c.after.as_deref().expect("inside")),
                    });
                    added += 1;
                }
            }
        }
    }
    Ok(added)
}

/// A document of a row in the shape, all of it as one update (`None`: never edited: the
/// device starts it from the row's text, as the server does).
fn whole_document(
    conn: &Connection,
    t: &ViewTable,
    c: &crate::collab::CollabColumn,
    key: &JsonRow,
) -> Result<Option<PullItem>, StoreError> {
    let Some(key_value) = key.get(&c.key_column).and_then(|v| value_from_json(v).ok()) else {
        return Ok(None);
    };
    let pk = match key_value {
        SqlValue::Integer(i) => i.to_string(),
        SqlValue::Text(s) => s,
        _ => return Ok(None),
    };
    let doc = crate::collab::ResolvedDoc {
        column: c.clone(),
        key: pk,
        text: String::new(),
    };
    let stored = crate::collab::load_doc(conn, &doc).map_err(|e| match e {
        crate::collab::CollabError::Store(e) => e,
        e => StoreError::Apply(e.to_string()),
    })?;
    if stored.state.is_none() && stored.updates.is_empty() {
        return Ok(None);
    }
    let update = yrs::merge_updates_v1(stored.state.iter().chain(&stored.updates))
        .map_err(|e| StoreError::Apply(format!("document {}: {e}", doc.address())))?;
    Ok(Some(PullItem::Doc(DocUpdate::new(
        &t.table,
        key.clone(),
        &c.column,
        &update,
    ))))
}

/// An update of a document the log holds, for a device whose shape holds the document's row
/// now (`None` otherwise).
fn doc_item(
    conn: &Connection,
    view: &DeviceView,
    table: &str,
    column: &str,
    pk: &str,
    update: &[u8],
) -> Result<Option<PullItem>, StoreError> {
    let Some(t) = view.table(table) else {
        return Ok(None);
    };
    let Some(c) = crate::collab::read_collab_columns(conn)?
        .into_iter()
        .find(|c| c.table.eq_ignore_ascii_case(table) && c.column.eq_ignore_ascii_case(column))
    else {
        return Ok(None);
    };
    if !t.has_column(&c.column) || t.key.len() != 1 {
        return Ok(None);
    }
    let key = if c.integer_key {
        match pk.parse::<i64>() {
            Ok(i) => SqlValue::Integer(i),
            Err(_) => return Ok(None),
        }
    } else {
        SqlValue::Text(pk.to_string())
    };
    match view.current_row(conn, t, std::slice::from_ref(&key))? {
        Some((names, values)) if view.contains(conn, &t.table, &names, &values)? => {}
        _ => return Ok(None),
    }
    let key_row: JsonRow = [(t.key[0].clone(), value_to_json(&key))]
        .into_iter()
        .collect();
    Ok(Some(PullItem::Doc(DocUpdate::new(
        &t.table, key_row, &c.column, update,
    ))))
}

/// The rows with these keys as the server holds them now, for the device that just pushed
/// changes to them (a change the merge did not keep changes nothing in the log, yet the
/// device must drop it): each in the shape is sent whole, any other as its key.
pub fn current_rows(
    conn: &Connection,
    view: &DeviceView,
    keys: &[(String, Vec<SqlValue>)],
) -> Result<Vec<PullItem>, StoreError> {
    let mut out = Vec::with_capacity(keys.len());
    let mut seen: HashSet<(String, Vec<u8>)> = HashSet::new();
    for (table, key) in keys {
        let Some(t) = view.table(table) else {
            continue;
        };
        if key.len() != t.key.len()
            || !seen.insert((
                t.table.to_ascii_lowercase(),
                flotilla_merge::encode_key(key.iter()),
            ))
        {
            continue;
        }
        match view.current_row(conn, t, key)? {
            Some((names, vals)) if view.contains(conn, &t.table, &names, &vals)? => {
                out.push(PullItem::Upsert {
                    table: t.table.clone(),
                    row: shaped_row(t, &names, &vals),
                });
            }
            _ => out.push(PullItem::Delete {
                table: t.table.clone(),
                key: t
                    .key
                    .iter()
                    .zip(key)
                    .map(|(k, v)| (k.clone(), value_to_json(v)))
                    .collect(),
            }),
        }
    }
    Ok(out)
}
