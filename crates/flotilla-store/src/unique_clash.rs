//! Unique values two data centres gave two different rows (two accounts with one email): a
//! conflict like any other, settled the same way everywhere. The row inserted first (the
//! earliest insert version, ties by key) keeps the value and stays in the table; the other is
//! **shadowed**: alive in its merge state, kept out of the table, listed in
//! `_flotilla_ml_shadowed`, and recorded in `flotilla_conflicts`. When the winner lets the value
//! go (it is deleted, or changed), the shadowed row comes back.
//!
//! Whether a row is shown is decided from merge states only, which every data centre ends with
//! alike, so every data centre shows the same rows.

use crate::leader_db::LeaderDb;
use crate::multi_leader::{from_sql, load_state, quote, CONFLICTS_TABLE};
use crate::sql_arg::SqlArg;
use crate::StoreError;
use flotilla_merge::{conflict_id, encode_key, RowState, Version};
use flotilla_types::{SqlValue, TableShape};
use rusqlite::{params, Connection, OptionalExtension};

/// A unique index other than the primary key: its name and columns (indexes into the shape).
pub(crate) struct UniqueIndex {
    name: String,
    columns: Vec<usize>,
}

pub(crate) fn unique_indexes(
    conn: &Connection,
    shape: &TableShape,
) -> Result<Vec<UniqueIndex>, StoreError> {
    let names: Vec<String> = conn
        .prepare_cached("SELECT name FROM pragma_index_list(?1) WHERE \"unique\" = 1 AND origin <> 'pk' AND partial = 0")?
        .query_map([&shape.name], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for name in names {
        let cols: Vec<Option<String>> = conn
            .prepare_cached("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")?
            .query_map([&name], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        // An index on expressions cannot be checked by value here: left to SQLite.
        let Some(columns) = cols
            .iter()
            .map(|c| {
                c.as_ref()
                    .and_then(|c| shape.columns.iter().position(|s| s.eq_ignore_ascii_case(c)))
            })
            .collect::<Option<Vec<usize>>>()
        else {
            continue;
        };
        out.push(UniqueIndex { name, columns });
    }
    Ok(out)
}

/// Whether row `a` keeps a unique value against row `b`.
fn wins(a: &RowState, a_key: &[u8], b: &RowState, b_key: &[u8]) -> bool {
    let rank = |s: &RowState| s.created.clone();
    match (rank(a), rank(b)) {
        (Some(x), Some(y)) if x != y => x < y,
        (Some(_), None) => true,
        (None, Some(_)) => false,
        _ => a_key < b_key,
    }
}

fn key_values<'a>(shape: &TableShape, values: &'a [SqlValue]) -> Vec<&'a SqlValue> {
    shape.key.iter().map(|k| &values[*k as usize]).collect()
}

fn key_where(shape: &TableShape, first: usize) -> String {
    shape
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| {
            format!(
                "{} IS ?{} COLLATE BINARY",
                quote(&shape.columns[*k as usize]),
                i + first
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The keys of the rows in the table that hold a unique value `values` claims.
fn clashing(
    conn: &Connection,
    shape: &TableShape,
    indexes: &[UniqueIndex],
    values: &[SqlValue],
) -> Result<Vec<(String, Vec<SqlValue>)>, StoreError> {
    let own = key_values(shape, values);
    let mut out: Vec<(String, Vec<SqlValue>)> = Vec::new();
    for idx in indexes {
        // NULLs never clash in a unique index.
        if idx.columns.iter().any(|c| values[*c] == SqlValue::Null) {
            continue;
        }
        let keys: Vec<String> = shape
            .key
            .iter()
            .map(|k| quote(&shape.columns[*k as usize]))
            .collect();
        let cond: Vec<String> = idx
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} = ?{}", quote(&shape.columns[*c]), i + 1))
            .collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE {} AND NOT ({})",
            keys.join(", "),
            quote(&shape.name),
            cond.join(" AND "),
            key_where(shape, idx.columns.len() + 1)
        );
        let mut args: Vec<SqlArg> = idx.columns.iter().map(|c| SqlArg(&values[*c])).collect();
        args.extend(own.iter().map(|v| SqlArg(v)));
        let found: Vec<Vec<SqlValue>> = conn
            .prepare_cached(&sql)?
            .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                (0..shape.key.len())
                    .map(|i| Ok(from_sql(r.get_ref(i)?)))
                    .collect()
            })?
            .collect::<Result<_, _>>()?;
        for k in found {
            if !out.iter().any(|(_, o)| *o == k) {
                out.push((idx.name.clone(), k));
            }
        }
    }
    Ok(out)
}

fn shadow(conn: &Connection, table: &str, key: &[u8], on: bool) -> Result<(), StoreError> {
    let sql = if on {
        "INSERT OR IGNORE INTO _flotilla_ml_shadowed (tbl, key) VALUES (?1, ?2)"
    } else {
        "DELETE FROM _flotilla_ml_shadowed WHERE tbl = ?1 AND key = ?2"
    };
    conn.prepare_cached(sql)?.execute(params![table, key])?;
    Ok(())
}

fn key_json(values: &[&SqlValue]) -> String {
    crate::multi_leader::key_json(values)
}

/// Records the clash (the same id wherever it is met).
fn record(
    conn: &Connection,
    shape: &TableShape,
    index: &str,
    here: (&[u8], &[&SqlValue]),
    arriving: (&[u8], &[&SqlValue]),
    here_wins: bool,
) -> Result<(), StoreError> {
    let (a, b) = if here.0 <= arriving.0 {
        (here.0, arriving.0)
    } else {
        (arriving.0, here.0)
    };
    let mut both = a.to_vec();
    both.extend_from_slice(b);
    let id = conflict_id(
        &shape.name,
        &both,
        Some(index),
        &Version::zero(),
        &Version::zero(),
    );
    let (hk, ak) = (key_json(here.1), key_json(arriving.1));
    conn.prepare_cached(&format!(
        "INSERT OR IGNORE INTO {CONFLICTS_TABLE} (id, tbl, row_key, col, local_value, local_origin, \
         local_lsn, local_hlc, remote_value, remote_origin, remote_lsn, remote_hlc, policy, winner, \
         value, resolved) VALUES (?1, ?2, ?3, ?4, ?5, '', 0, '', ?6, '', 0, '', 'first-insert-wins', ?7, ?8, 1)"
    ))?
    .execute(params![
        id,
        shape.name,
        ak,
        format!("unique {index}"),
        hk,
        ak,
        if here_wins { "local" } else { "remote" },
        if here_wins { &hk } else { &ak },
    ])?;
    Ok(())
}

/// Puts a row its merge state says exists into the table (`in_table`: it is there now, with
/// other values), unless a row holding a unique value it claims wins: then it is shadowed.
/// Rows it beats are taken out and shadowed. Every write is captured.
pub(crate) fn place(
    db: &mut LeaderDb,
    shape: &TableShape,
    indexes: &[UniqueIndex],
    upsert: &str,
    state: &RowState,
    in_table: bool,
) -> Result<(), StoreError> {
    let values = state.values();
    let own = key_values(shape, &values);
    let own_key = encode_key(own.iter().copied());
    let clashes = clashing(&db.conn, shape, indexes, &values)?;
    let mut beaten = Vec::new();
    for (index, k) in &clashes {
        let k_key = encode_key(k.iter());
        let theirs =
            load_state(&db.conn, &shape.name, &k_key)?.unwrap_or_else(|| RowState::settled(&[]));
        let refs: Vec<&SqlValue> = k.iter().collect();
        if !wins(state, &own_key, &theirs, &k_key) {
            record(
                &db.conn,
                shape,
                index,
                (&k_key, &refs),
                (&own_key, &own),
                true,
            )?;
            if in_table {
                let args: Vec<SqlArg> = own.iter().map(|v| SqlArg(v)).collect();
                db.conn
                    .prepare_cached(&format!(
                        "DELETE FROM {} WHERE {}",
                        quote(&shape.name),
                        key_where(shape, 1)
                    ))?
                    .execute(rusqlite::params_from_iter(args.iter()))?;
                db.capture.statement_done(&db.conn)?;
            }
            shadow(&db.conn, &shape.name, &own_key, true)?;
            return Ok(());
        }
        beaten.push((index.clone(), k.clone(), k_key));
    }
    for (index, k, k_key) in &beaten {
        let refs: Vec<&SqlValue> = k.iter().collect();
        record(
            &db.conn,
            shape,
            index,
            (k_key, &refs),
            (&own_key, &own),
            false,
        )?;
        let args: Vec<SqlArg> = k.iter().map(SqlArg).collect();
        db.conn
            .prepare_cached(&format!(
                "DELETE FROM {} WHERE {}",
                quote(&shape.name),
                key_where(shape, 1)
            ))?
            .execute(rusqlite::params_from_iter(args.iter()))?;
        shadow(&db.conn, &shape.name, k_key, true)?;
    }
    let args: Vec<SqlArg> = values.iter().map(SqlArg).collect();
    db.conn
        .prepare_cached(upsert)?
        .execute(rusqlite::params_from_iter(args.iter()))?;
    db.capture.statement_done(&db.conn)?;
    shadow(&db.conn, &shape.name, &own_key, false)?;
    Ok(())
}

/// A row that is gone (deleted in its merge state) is no longer shadowed.
pub(crate) fn forget(conn: &Connection, table: &str, key: &[u8]) -> Result<(), StoreError> {
    shadow(conn, table, key, false)
}

/// Gives the shadowed rows of `shape`'s table another chance: those whose claim is free now
/// (or that now win it) come back into the table.
pub(crate) fn reconsider(
    db: &mut LeaderDb,
    shape: &TableShape,
    upsert: &str,
) -> Result<(), StoreError> {
    let keys: Vec<Vec<u8>> = db
        .conn
        .prepare_cached("SELECT key FROM _flotilla_ml_shadowed WHERE tbl = ?1")?
        .query_map([&shape.name], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let rule = crate::multi_leader::table_policies(&db.conn, shape)?.delete;
    let indexes = unique_indexes(&db.conn, shape)?;
    for key in keys {
        let state = load_state(&db.conn, &shape.name, &key)?;
        match state {
            Some(s) if s.alive(rule) && s.cells.len() == shape.columns.len() => {
                place(db, shape, &indexes, upsert, &s, false)?;
            }
            _ => forget(&db.conn, &shape.name, &key)?,
        }
    }
    Ok(())
}

/// Whether the table has shadowed rows (most tables never do).
pub(crate) fn has_shadowed(conn: &Connection, table: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM _flotilla_ml_shadowed WHERE tbl = ?1 LIMIT 1")?
        .query_row([table], |_| Ok(()))
        .optional()?
        .is_some())
}
