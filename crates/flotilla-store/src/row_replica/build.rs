//! Bootstrap of a logical follower: its database built from a snapshot of the leader, keeping
//! only what its filter keeps (and carrying over its own tables from a previous build).

use super::{quote, shadow_owner, virtual_table_filtered, CREATE_LOCAL, CREATE_REPLICA};
use crate::meta::CREATE_META;
use crate::row_filter::RowFilter;
use crate::{Meta, StoreError};
use flotilla_types::rowid_alias;
use rusqlite::Connection;
use std::path::Path;

/// Creates the filtered schema and rows from the snapshot in `conn` (an empty database).
pub(super) fn build_into(
    conn: &Connection,
    snapshot: &Path,
    filter: &RowFilter,
    previous: &Path,
) -> Result<Meta, StoreError> {
    conn.execute("ATTACH DATABASE ?1 AS snap", [snapshot.to_string_lossy()])?;
    let leader = read_meta_of(conn, "snap")?;
    let objects: Vec<(String, String, String, Option<String>)> = conn
        .prepare(
            "SELECT type, name, tbl_name, sql FROM snap.sqlite_schema \
             WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND tbl_name NOT LIKE '\\_flotilla\\_%' ESCAPE '\\' \
             ORDER BY rowid",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let tables: Vec<&str> = objects
        .iter()
        .filter(|o| o.0 == "table")
        .map(|o| o.1.as_str())
        .collect();
    // "table", "view", "virtual" or "shadow" (a virtual table's storage).
    let table_kinds: std::collections::HashMap<String, String> = conn
        .prepare("SELECT name, type FROM pragma_table_list WHERE schema = 'snap'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let bad = |m: String| StoreError::Mismatch(format!("filter: {m}"));
    // The filter must name what exists on the leader.
    for t in filter
        .tables
        .iter()
        .chain(filter.columns.keys())
        .chain(filter.predicates.keys())
    {
        if !tables.contains(&t.as_str()) {
            return Err(bad(format!(
                "table {t:?} does not exist on the leader (its tables: {})",
                tables.join(", ")
            )));
        }
    }
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(CREATE_META)?;
    tx.execute_batch(CREATE_REPLICA)?;
    for (kind, name, table, sql) in &objects {
        let Some(sql) = sql else { continue };
        if kind == "trigger" || (kind == "view" && !filter.tables.is_empty()) {
            continue;
        }
        if kind != "view" && !filter.keeps_table(table) {
            continue;
        }
        let table_kind = table_kinds.get(name).map(String::as_str);
        if kind == "table" && table_kind == Some("shadow") {
            // Copied with its virtual table.
            continue;
        }
        if kind == "table" && table_kind == Some("virtual") {
            if filter.columns.contains_key(name) || filter.predicates.contains_key(name) {
                return Err(bad(virtual_table_filtered(name)));
            }
            // Created as the leader created it, then its shadow tables made byte for byte the
            // leader's: later changes arrive as changes of those rows.
            tx.execute_batch(sql)?;
            let shadows = table_kinds.iter().filter(|(s, k)| {
                k.as_str() == "shadow" && shadow_owner(s, &table_kinds) == Some(name.as_str())
            });
            for (shadow, _) in shadows {
                let q = quote(shadow);
                tx.execute_batch(&format!(
                    "DELETE FROM main.{q}; INSERT INTO main.{q} SELECT * FROM snap.{q};"
                ))?;
            }
            continue;
        }
        if kind == "table" {
            let shape = crate::row_capture::table_columns(conn, "snap", name)?;
            let keep = match filter.columns.get(name) {
                None => {
                    tx.execute_batch(sql)?;
                    shape.clone()
                }
                Some(cols) => {
                    for c in cols {
                        if !shape.iter().any(|(n, _)| n == c) {
                            return Err(bad(format!(
                                "table {name:?} has no column {c:?} (its columns: {})",
                                shape
                                    .iter()
                                    .map(|c| c.0.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )));
                        }
                    }
                    for (n, pk) in &shape {
                        if *pk > 0 && !cols.contains(n) {
                            return Err(bad(format!(
                                "the column list of {name:?} must include its primary key column {n:?}"
                            )));
                        }
                    }
                    let kept: Vec<(String, i64)> = shape
                        .iter()
                        .filter(|(n, _)| cols.contains(n))
                        .cloned()
                        .collect();
                    let decls = column_decls(conn, name, &kept)?;
                    tx.execute_batch(&format!("CREATE TABLE {} ({decls})", quote(name)))?;
                    kept
                }
            };
            let cols: Vec<String> = keep.iter().map(|(n, _)| quote(n)).collect();
            let rowid_keyed = !shape.iter().any(|(_, pk)| *pk > 0);
            let (into, select) = if rowid_keyed {
                // The rowid keeps its value; a column named `rowid` hides it, and the name it
                // answers to can differ between the snapshot's table and a replica that keeps
                // fewer columns.
                let alias_in = |names: Vec<&str>| {
                    rowid_alias(names).ok_or_else(|| {
                        bad(format!(
                            "table {name:?} has no primary key and columns named rowid, oid \
                             and _rowid_: its rows cannot be copied with their rowids"
                        ))
                    })
                };
                let from = alias_in(shape.iter().map(|(n, _)| n.as_str()).collect())?;
                let to = alias_in(keep.iter().map(|(n, _)| n.as_str()).collect())?;
                (
                    format!("{to}, {}", cols.join(", ")),
                    format!("{from}, {}", cols.join(", ")),
                )
            } else {
                (cols.join(", "), cols.join(", "))
            };
            let predicate = filter
                .predicates
                .get(name)
                .map(|p| format!(" WHERE ({p})"))
                .unwrap_or_default();
            let copy = format!(
                "INSERT INTO main.{q}({into}) SELECT {select} FROM snap.{q}{predicate}",
                q = quote(name)
            );
            tx.execute_batch(&copy).map_err(|e| {
                if predicate.is_empty() {
                    StoreError::from(e)
                } else {
                    let p = filter
                        .predicates
                        .get(name)
                        .map(String::as_str)
                        .unwrap_or("");
                    let columns: Vec<String> = keep.iter().map(|(n, _)| n.clone()).collect();
                    bad(format!(
                        "--where {name}: the predicate {p:?} does not work on table {name}: {}",
                        crate::expression_problem(&e, p, &columns)
                    ))
                }
            })?;
        } else if let Err(e) = tx.execute_batch(sql) {
            if filter.columns.contains_key(table) && kind == "index" {
                tracing::info!(
                    "index {name} not built on this column subset: {}",
                    crate::sql_error_message(&e)
                );
            } else {
                return Err(e.into());
            }
        }
    }
    tx.execute(
        "INSERT INTO _flotilla_meta VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, NULL)",
        rusqlite::params![
            leader.cluster_id,
            leader.position.epoch.0 as i64,
            leader.position.lsn.0 as i64,
            leader.chain.0 as i64,
            leader.digest.0 as i64,
            leader.commit_time_us as i64
        ],
    )?;
    // The leader's API tokens (every node authenticates clients with them).
    tx.execute_batch(crate::leader_tokens::CREATE_TOKENS)?;
    let has_tokens: bool = tx.query_row(
        "SELECT count(*) FROM snap.sqlite_schema WHERE type = 'table' AND name = ?1",
        [crate::TOKENS_TABLE],
        |r| r.get(0),
    )?;
    if has_tokens {
        tx.execute_batch(&format!(
            "INSERT INTO main.{t} SELECT * FROM snap.{t}",
            t = crate::TOKENS_TABLE
        ))?;
    }
    // The leader's documents, on a follower of every row and column (see `apply`).
    tx.execute_batch(crate::collab::CREATE_TABLES)?;
    if filter.is_empty() {
        for t in crate::collab::COLLAB_TABLES {
            let there: bool = tx.query_row(
                "SELECT count(*) FROM snap.sqlite_schema WHERE type = 'table' AND name = ?1",
                [t],
                |r| r.get(0),
            )?;
            if there {
                tx.execute_batch(&format!("INSERT INTO main.{t} SELECT * FROM snap.{t}"))?;
            }
        }
    }
    // Header values the leader's clients set.
    for pragma in ["user_version", "application_id"] {
        let v: i64 = tx.query_row(&format!("PRAGMA snap.{pragma}"), [], |r| r.get(0))?;
        tx.execute_batch(&format!("PRAGMA main.{pragma} = {v}"))?;
    }
    tx.execute(
        "INSERT INTO _flotilla_replica VALUES (1, 'logical', ?1)",
        [serde_json::to_string(filter).expect("plain data serialises")],
    )?;
    tx.execute_batch(CREATE_LOCAL)?;
    tx.commit()?;
    conn.execute_batch("DETACH DATABASE snap")?;
    carry_local_tables(conn, previous)?;
    Ok(leader)
}

/// A rebuilt replica keeps the tables created on the follower itself (from the replica it
/// replaces): schema, indexes, triggers and rows.
fn carry_local_tables(conn: &Connection, previous: &Path) -> Result<(), StoreError> {
    if !previous.exists() {
        return Ok(());
    }
    conn.execute("ATTACH DATABASE ?1 AS prev", [previous.to_string_lossy()])?;
    let has_local: bool = conn.query_row(
        "SELECT count(*) FROM prev.sqlite_schema WHERE name = '_flotilla_local'",
        [],
        |r| r.get(0),
    )?;
    let names: Vec<String> = if has_local {
        conn.prepare("SELECT name FROM prev._flotilla_local")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?
    } else {
        Vec::new()
    };
    let tx = conn.unchecked_transaction()?;
    for name in &names {
        let clash: bool = tx.query_row(
            // SQLite's names are case-insensitive: `Loc` clashes with `loc`.
            "SELECT count(*) FROM main.sqlite_schema WHERE name = ?1 COLLATE NOCASE",
            [name],
            |r| r.get(0),
        )?;
        if clash {
            // Not fatal: the follower keeps serving its database, where the table can be
            // renamed or dropped, and tries again.
            return Err(StoreError::Refused(format!(
                "the follower's own table {name:?} has the name of a table of the leader: \
                 rename or drop it on this follower, and the next bootstrap goes on"
            )));
        }
        let objects: Vec<String> = tx
            .prepare(
                "SELECT sql FROM prev.sqlite_schema WHERE tbl_name = ?1 AND sql IS NOT NULL \
                 ORDER BY type = 'table' DESC, rowid",
            )?
            .query_map([name], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for (i, sql) in objects.iter().enumerate() {
            tx.execute_batch(sql)?;
            if i == 0 {
                tx.execute_batch(&format!(
                    "INSERT INTO main.{q} SELECT * FROM prev.{q}",
                    q = quote(name)
                ))?;
            }
        }
        tx.execute("INSERT INTO _flotilla_local VALUES (?1)", [name])?;
    }
    tx.commit()?;
    conn.execute_batch("DETACH DATABASE prev")?;
    Ok(())
}

fn read_meta_of(conn: &Connection, schema: &str) -> Result<Meta, StoreError> {
    conn.query_row(
        &format!(
            "SELECT cluster_id, epoch, lsn, chain, digest, commit_time_us FROM {schema}._flotilla_meta WHERE id = 1"
        ),
        [],
        |r| {
            Ok(Meta {
                cluster_id: r.get(0)?,
                position: flotilla_types::Position::new(
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ),
                chain: flotilla_types::Chain(r.get::<_, i64>(3)? as u64),
                digest: flotilla_types::ContentDigest(r.get::<_, i64>(4)? as u64),
                commit_time_us: r.get::<_, i64>(5)? as u64,
            })
        },
    )
    .map_err(|e| StoreError::Snapshot(format!("the snapshot holds no Flotilla position: {e}")))
}

/// Column declarations (name, declared type, primary key) for a column subset of a table.
fn column_decls(
    conn: &Connection,
    table: &str,
    kept: &[(String, i64)],
) -> Result<String, StoreError> {
    let types: Vec<(String, String)> = conn
        .prepare("SELECT name, type FROM pragma_table_info(?1, 'snap')")?
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut decls: Vec<String> = kept
        .iter()
        .map(|(n, _)| {
            let ty = types
                .iter()
                .find(|(c, _)| c == n)
                .map(|(_, t)| t.as_str())
                .unwrap_or("");
            format!("{} {ty}", quote(n)).trim_end().to_string()
        })
        .collect();
    let mut pk: Vec<&(String, i64)> = kept.iter().filter(|(_, p)| *p > 0).collect();
    pk.sort_by_key(|(_, p)| *p);
    if !pk.is_empty() {
        decls.push(format!(
            "PRIMARY KEY ({})",
            pk.iter()
                .map(|(n, _)| quote(n))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(decls.join(", "))
}
