//! A SQL dump of the database's own objects (not Flotilla's `_flotilla_*` tables), read on one
//! snapshot: the text `sqlite3` would load (`sqlite3 new.db < dump.sql`) and `flotilla restore`
//! loads. Unlike `sqlite3 .dump`, it keeps the rowids of tables without an INTEGER PRIMARY KEY
//! (replicas and pipelines find such rows by rowid) and never writes `sqlite_schema` directly.

use crate::{read_meta, StoreError, INTERNAL_PREFIX};
use flotilla_types::Position;
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use std::fmt::Write;

/// The dump is written to `emit` in pieces of about this many bytes.
const PIECE_BYTES: usize = 256 << 10;

/// Writes the dump to `emit`; `start` gets the snapshot's position first. `Ok(Err(e))`: `emit`
/// or `start` gave up.
pub fn dump_sql<E>(
    conn: &Connection,
    start: impl FnOnce(Position) -> Result<(), E>,
    mut emit: impl FnMut(String) -> Result<(), E>,
) -> Result<Result<(), E>, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let position = read_meta(&tx)?.map(|m| m.position).unwrap_or_default();
    if let Err(e) = start(position) {
        return Ok(Err(e));
    }
    let mut out = String::with_capacity(PIECE_BYTES + 4096);
    let _ = writeln!(
        out,
        "-- Flotilla SQL dump at position {position}\nPRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;"
    );
    let objects: Vec<(String, String, String)> = {
        let mut stmt = tx.prepare(
            "SELECT type, name, sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY rowid",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let shadow = shadow_tables(&tx)?;
    let own = |name: &str| {
        !name.to_ascii_lowercase().starts_with(INTERNAL_PREFIX)
            && !name.to_ascii_lowercase().starts_with("sqlite_")
            && !shadow.iter().any(|s| s.eq_ignore_ascii_case(name))
    };
    // Tables and their rows first, then what depends on them (indexes, views, triggers).
    for (_, name, sql) in objects.iter().filter(|(k, ..)| k == "table") {
        if !own(name) {
            continue;
        }
        let _ = writeln!(out, "{sql};");
        let virtual_table = sql
            .trim_start()
            .get(..14)
            .is_some_and(|p| p.eq_ignore_ascii_case("CREATE VIRTUAL"));
        if let Err(e) = dump_rows(&tx, name, virtual_table, &mut out, &mut emit)? {
            return Ok(Err(e));
        }
    }
    if has_table(&tx, "sqlite_sequence")? {
        // The inserts above moved the counters already: they are set to the copied values.
        out.push_str("DELETE FROM sqlite_sequence;\n");
        let mut stmt = tx.prepare("SELECT name, seq FROM sqlite_sequence ORDER BY rowid")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let name: String = r.get(0)?;
            if own(&name) {
                let _ = writeln!(
                    out,
                    "INSERT INTO sqlite_sequence(name, seq) VALUES({}, {});",
                    literal(r.get_ref(0)?),
                    literal(r.get_ref(1)?)
                );
            }
        }
    }
    for (kind, name, sql) in &objects {
        if kind != "table" && own(name) {
            let _ = writeln!(out, "{sql};");
        }
    }
    for pragma in ["user_version", "application_id"] {
        let v: i64 = tx.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))?;
        if v != 0 {
            let _ = writeln!(out, "PRAGMA {pragma}={v};");
        }
    }
    out.push_str("COMMIT;\n");
    Ok(emit(out))
}

/// Writes the INSERTs of one table's rows, handing full pieces to `emit`.
fn dump_rows<E>(
    conn: &Connection,
    table: &str,
    virtual_table: bool,
    out: &mut String,
    emit: &mut impl FnMut(String) -> Result<(), E>,
) -> Result<Result<(), E>, StoreError> {
    // Stored columns only: generated ones are computed again.
    let mut columns: Vec<String> = Vec::new();
    let mut rowid_alias = false;
    let mut without_rowid = false;
    {
        let mut stmt = conn.prepare(&format!(
            "SELECT name, type, pk, hidden FROM pragma_table_xinfo({})",
            literal(ValueRef::Text(table.as_bytes()))
        ))?;
        let mut rows = stmt.query([])?;
        let mut pk_columns = 0;
        let mut integer_pk = false;
        while let Some(r) = rows.next()? {
            let (name, ty, pk, hidden): (String, String, i64, i64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            if pk > 0 {
                pk_columns += 1;
                integer_pk = ty.eq_ignore_ascii_case("INTEGER");
            }
            if hidden == 0 {
                columns.push(name);
            }
        }
        if !virtual_table {
            let wr: i64 = conn.query_row(
                "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
                [table],
                |r| r.get(0),
            )?;
            without_rowid = wr == 1;
            rowid_alias = pk_columns == 1 && integer_pk;
        }
    }
    // A rowid that is not a column is kept under a name no column takes (a virtual table's
    // too, where it has one: fts5's rowids are what applications join on).
    let vtab_rowid = virtual_table
        && conn
            .prepare(&format!(
                "SELECT rowid FROM {} LIMIT 0",
                crate::quote_ident(table)
            ))
            .is_ok();
    let rowid_name = if (virtual_table && !vtab_rowid) || without_rowid || rowid_alias {
        None
    } else {
        ["rowid", "oid", "_rowid_"]
            .into_iter()
            .find(|n| !columns.iter().any(|c| c.eq_ignore_ascii_case(n)))
    };
    let mut names: Vec<String> = rowid_name.iter().map(|n| n.to_string()).collect();
    names.extend(columns.iter().map(|c| crate::quote_ident(c)));
    let select = format!(
        "SELECT {} FROM {}",
        names.join(", "),
        crate::quote_ident(table)
    );
    let head = format!(
        "INSERT INTO {}({}) VALUES(",
        crate::quote_ident(table),
        names.join(", ")
    );
    let mut stmt = conn.prepare(&select)?;
    let width = names.len();
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        out.push_str(&head);
        for i in 0..width {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&literal(r.get_ref(i)?));
        }
        out.push_str(");\n");
        if out.len() >= PIECE_BYTES {
            if let Err(e) = emit(std::mem::take(out)) {
                return Ok(Err(e));
            }
        }
    }
    Ok(Ok(()))
}

/// The shadow tables of virtual tables (their rows come back through the virtual table).
fn shadow_tables(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'shadow'")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn has_table(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// A value as an SQL literal that reads back as the same value.
pub fn literal(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) if f.is_infinite() => if f > 0.0 { "1e999" } else { "-1e999" }.into(),
        // `{:?}` is the shortest text that parses back to the same f64, always with a '.' or
        // an exponent, so SQLite reads a REAL.
        ValueRef::Real(f) => format!("{f:?}"),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) if !s.contains('\0') => format!("'{}'", s.replace('\'', "''")),
            // Bytes SQLite holds as text but a literal cannot spell.
            _ => format!("CAST(X'{}' AS TEXT)", hex(t)),
        },
        ValueRef::Blob(b) => format!("X'{}'", hex(b)),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02X}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(conn: &Connection) -> String {
        let mut text = String::new();
        dump_sql(
            conn,
            |_| Ok::<(), ()>(()),
            |piece| {
                text.push_str(&piece);
                Ok(())
            },
        )
        .unwrap()
        .unwrap();
        text
    }

    #[test]
    fn a_dump_loads_back_into_the_same_rows() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE a(id INTEGER PRIMARY KEY AUTOINCREMENT, t TEXT, r REAL, b BLOB, n);
             CREATE TABLE plain(x, y);
             CREATE TABLE wr(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
             CREATE TABLE g(x INTEGER, y INTEGER GENERATED ALWAYS AS (x * 2) STORED);
             CREATE INDEX a_t ON a(t);
             CREATE VIEW v AS SELECT t FROM a;
             CREATE TRIGGER tr AFTER INSERT ON plain BEGIN SELECT 1; END;
             CREATE TABLE _flotilla_secret(x);
             INSERT INTO _flotilla_secret VALUES ('hidden');
             INSERT INTO a(t, r, b, n) VALUES ('it''s', 1.5, x'00ff', NULL),
                 ('', 1e300, x'', 1), (CAST(x'80' AS TEXT), -0.1, NULL, 9223372036854775807);
             INSERT INTO a(t, r) VALUES ('inf', 9e999);
             INSERT INTO plain(rowid, x, y) VALUES (7, 1, 2), (100, 'z', NULL);
             INSERT INTO wr VALUES ('k', 1);
             INSERT INTO g(x) VALUES (21);
             CREATE VIRTUAL TABLE ft USING fts5(body);
             INSERT INTO ft(rowid, body) VALUES (5, 'hello world'), (9, 'bye');
             PRAGMA user_version = 5;",
        )
        .unwrap();
        let text = dump(&conn);
        assert!(
            !text.contains("_flotilla_secret") && !text.contains("hidden"),
            "{text}"
        );
        let copy = Connection::open_in_memory().unwrap();
        copy.execute_batch(&text).unwrap();
        for sql in [
            "SELECT id, t, r, b, n, typeof(t) FROM a ORDER BY id",
            "SELECT rowid, x, y FROM plain ORDER BY rowid",
            "SELECT * FROM wr",
            "SELECT x, y FROM g",
            "SELECT rowid, body FROM ft WHERE ft MATCH 'hello'",
            "SELECT rowid, body FROM ft ORDER BY rowid",
            "SELECT * FROM sqlite_sequence",
            "SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE '_flotilla%' ORDER BY name",
            "PRAGMA user_version",
        ] {
            let read = |c: &Connection| -> Vec<Vec<String>> {
                let mut stmt = c.prepare(sql).unwrap();
                let n = stmt.column_count();
                stmt.query_map([], |r| {
                    Ok((0..n)
                        .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                        .collect())
                })
                .unwrap()
                .map(|r| r.unwrap())
                .collect()
            };
            assert_eq!(read(&conn), read(&copy), "{sql}");
        }
    }
}
