//! Shapes: which rows of which tables a device pulls and may push. One shape per table, for
//! every device: its columns (all when not given) and a row predicate over the table's
//! columns with the parameters `:user` and `:device` (the device's, from its token), e.g.
//! `owner = :user`. Kept in `flotilla_shapes`, which replicates like data.

use super::DeviceError;
use crate::leader_db::{CommitOutcome, LeaderDb};
use crate::multi_leader::{from_sql, quote};
use crate::sql_arg::SqlArg;
use crate::StoreError;
use flotilla_types::{sync_protocol::ShapeTable, Epoch, NodeId, SchemaChange, SqlValue};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;

pub const SHAPES_TABLE: &str = "flotilla_shapes";

const CREATE_SHAPES: &str = "CREATE TABLE flotilla_shapes (
    tbl TEXT PRIMARY KEY,
    columns TEXT,
    predicate TEXT
)";

/// A table's shape as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub table: String,
    /// `None`: every column.
    pub columns: Option<Vec<String>>,
    /// `None`: every row.
    pub predicate: Option<String>,
}

fn has_shapes(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = 'flotilla_shapes'",
        [],
        |r| r.get::<_, i64>(0),
    )? > 0)
}

/// Every shape, by table name.
pub fn read_shapes(conn: &Connection) -> Result<Vec<Shape>, StoreError> {
    if !has_shapes(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt =
        conn.prepare_cached("SELECT tbl, columns, predicate FROM flotilla_shapes ORDER BY tbl")?;
    let rows = stmt.query_map([], |r| {
        Ok(Shape {
            table: r.get(0)?,
            columns: r
                .get::<_, Option<String>>(1)?
                .map(|c| c.split(',').map(|s| s.trim().to_string()).collect()),
            predicate: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The columns of a table here, with whether each is part of the key (its position in it)
/// and whether a row may leave it out (nullable or with a default).
struct Columns {
    names: Vec<String>,
    key: Vec<usize>,
    optional: Vec<bool>,
    /// Each column's affinity, by SQLite's rules on its declared type.
    affinity: Vec<Affinity>,
}

/// A column's type affinity (sqlite.org/datatype3.html, 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    pub fn of(declared: &str) -> Affinity {
        let t = declared.to_ascii_uppercase();
        if t.contains("INT") {
            Affinity::Integer
        } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
            Affinity::Text
        } else if t.contains("BLOB") || t.is_empty() {
            Affinity::Blob
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }

    /// Whether SQLite would store `v` in such a column as it is (no conversion): a key a
    /// device sends must be, or it would name another row to the merge than to the table.
    pub fn keeps(self, v: &SqlValue) -> bool {
        let numeric_text = |s: &str| {
            let s = s.trim();
            !s.is_empty() && s.parse::<f64>().is_ok()
        };
        match (self, v) {
            (Affinity::Text, SqlValue::Integer(_) | SqlValue::Real(_)) => false,
            (Affinity::Integer | Affinity::Real | Affinity::Numeric, SqlValue::Text(s)) => {
                !numeric_text(s)
            }
            _ => true,
        }
    }
}

fn table_columns(conn: &Connection, table: &str) -> Result<Columns, StoreError> {
    let rows: Vec<(String, i64, bool, i64, String)> = conn
        .prepare_cached(
            "SELECT name, pk, \"notnull\" = 0 OR dflt_value IS NOT NULL, hidden, type \
             FROM pragma_table_xinfo(?1) ORDER BY cid",
        )?
        .query_map([table], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    let rows: Vec<_> = rows.into_iter().filter(|r| r.3 == 0).collect();
    let mut key: Vec<(i64, usize)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.1 > 0)
        .map(|(i, r)| (r.1, i))
        .collect();
    key.sort();
    Ok(Columns {
        names: rows.iter().map(|r| r.0.clone()).collect(),
        key: key.into_iter().map(|(_, i)| i).collect(),
        optional: rows.iter().map(|r| r.2).collect(),
        affinity: rows.iter().map(|r| Affinity::of(&r.4)).collect(),
    })
}

/// The SQL that tells whether a row (given as parameters in `columns` order) is in the shape:
/// the predicate over a one-row table of the same name and columns.
fn predicate_sql(table: &str, columns: &[String], predicate: &str) -> String {
    let cols: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("?{} AS {}", i + 1, quote(c)))
        .collect();
    format!(
        "SELECT CASE WHEN ({predicate}) THEN 1 ELSE 0 END FROM (SELECT {}) AS {}",
        cols.join(", "),
        quote(table)
    )
}

/// Binds `:user` and `:device` where the statement names them.
fn bind_identity(
    stmt: &mut rusqlite::CachedStatement<'_>,
    user: &str,
    device: &str,
) -> rusqlite::Result<()> {
    if let Some(i) = stmt.parameter_index(":user")? {
        stmt.raw_bind_parameter(i, user)?;
    }
    if let Some(i) = stmt.parameter_index(":device")? {
        stmt.raw_bind_parameter(i, device)?;
    }
    Ok(())
}

/// Checks a shape against the schema and returns it with names as declared.
fn check_shape(conn: &Connection, shape: &Shape) -> Result<Shape, DeviceError> {
    let invalid = |m: String| Err(DeviceError::Invalid(m));
    let declared: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
            [&shape.table],
            |r| r.get(0),
        )
        .optional()?;
    let Some(table) = declared.filter(|t| {
        let t = t.to_ascii_lowercase();
        !t.starts_with(crate::INTERNAL_PREFIX)
            && !t.starts_with("sqlite_")
            && t != SHAPES_TABLE
            && t != crate::POLICIES_TABLE
            && t != crate::CONFLICTS_TABLE
    }) else {
        return invalid(format!("there is no table {} here to shape", shape.table));
    };
    let cols = table_columns(conn, &table)?;
    if cols.key.is_empty() {
        return invalid(format!(
            "table {table} has no PRIMARY KEY: devices find rows by key"
        ));
    }
    let columns = match &shape.columns {
        None => None,
        Some(wanted) => {
            let mut chosen = Vec::new();
            for w in wanted {
                let Some(i) = cols.names.iter().position(|n| n.eq_ignore_ascii_case(w)) else {
                    return invalid(format!(
                        "table {table} has no column {w} (its columns: {})",
                        cols.names.join(", ")
                    ));
                };
                if !chosen.contains(&i) {
                    chosen.push(i);
                }
            }
            for k in &cols.key {
                if !chosen.contains(k) {
                    return invalid(format!(
                        "a shape's columns include the key: add {} (devices find rows by it)",
                        cols.names[*k]
                    ));
                }
            }
            for (i, optional) in cols.optional.iter().enumerate() {
                if !chosen.contains(&i) && !optional {
                    return invalid(format!(
                        "column {} is NOT NULL without a default, so a row a device makes \
                         without it could not be stored: add it to the shape's columns",
                        cols.names[i]
                    ));
                }
            }
            chosen.sort();
            Some(
                chosen
                    .iter()
                    .map(|i| cols.names[*i].clone())
                    .collect::<Vec<String>>(),
            )
        }
    };
    let predicate = match shape.predicate.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(p) => {
            let probe = format!("SELECT 1 FROM {} WHERE ({p})", quote(&table));
            let single = !p.contains(';') && crate::sql_text::is_complete(&format!("{probe};"));
            let prepared = if single {
                conn.prepare(&probe)
                    .map_err(|e| crate::sql_error_message(&e))
            } else {
                Err("it is not one expression".to_string())
            };
            let stmt = match prepared {
                Ok(s) => s,
                Err(why) => {
                    return invalid(format!(
                        "the predicate {p:?} does not compile on {table}: {why}"
                    ))
                }
            };
            // Judged on a device's rows, which carry the shape's columns only (not the rowid,
            // nor generated columns).
            let chosen = columns.clone().unwrap_or_else(|| cols.names.clone());
            let probe = predicate_sql(&table, &chosen, p);
            if let Err(e) = conn.prepare(&probe) {
                return invalid(format!(
                    "the predicate {p:?} reads more than the shape's columns ({}): {}; a \
                     predicate reads the columns a device holds",
                    chosen.join(", "),
                    crate::sql_error_message(&e)
                ));
            }
            for i in 1..=stmt.parameter_count() {
                match stmt.parameter_name(i) {
                    Some(":user") | Some(":device") => {}
                    other => {
                        return invalid(format!(
                            "the predicate {p:?} has the parameter {}: a shape's parameters \
                             are :user and :device",
                            other.unwrap_or("?")
                        ))
                    }
                }
            }
            Some(p.to_string())
        }
    };
    Ok(Shape {
        table,
        columns,
        predicate,
    })
}

impl LeaderDb {
    /// Sets (or replaces) the shape of a table after checking it against the schema. A commit
    /// of its own; devices pull their whole shape again at their next sync.
    #[allow(clippy::too_many_arguments)]
    pub fn set_shape(
        &mut self,
        shape: &Shape,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<(Shape, CommitOutcome), DeviceError> {
        if self.multi_leader.is_none() {
            return Err(DeviceError::Invalid(
                "shapes are for devices, which sync with a data centre's leader: start this \
                 node with --dc NAME"
                    .into(),
            ));
        }
        // Checked with the client rules on: a predicate may not read Flotilla's secrets.
        let checked = check_shape(&self.conn, shape)?;
        let what = format!("set the shape of {}", checked.table);
        let (_, out) =
            self.internal_commit::<_, DeviceError>(&what, epoch, origin, now_us, |db, _| {
                if !has_shapes(&db.conn)? {
                    db.conn.execute_batch(CREATE_SHAPES)?;
                    db.capture.schema_changed(SchemaChange {
                        kind: flotilla_types::DdlKind::CreateTable,
                        table: SHAPES_TABLE.to_string(),
                        sql: CREATE_SHAPES.to_string(),
                    });
                }
                db.conn.execute(
                    "INSERT OR REPLACE INTO flotilla_shapes (tbl, columns, predicate) \
                     VALUES (?1, ?2, ?3)",
                    params![
                        checked.table,
                        checked.columns.as_ref().map(|c| c.join(",")),
                        checked.predicate
                    ],
                )?;
                db.capture.statement_done(&db.conn)?;
                Ok(())
            })?;
        Ok((checked, out))
    }

    /// Removes a table's shape: devices no longer pull or push it (their copies of its rows
    /// go at their next sync).
    pub fn remove_shape(
        &mut self,
        table: &str,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<CommitOutcome, DeviceError> {
        let shapes = self.rules.internal(|| read_shapes(&self.conn))?;
        let Some(found) = shapes
            .into_iter()
            .find(|s| s.table.eq_ignore_ascii_case(table))
        else {
            return Err(DeviceError::Invalid(format!("table {table} has no shape")));
        };
        let what = format!("remove the shape of {}", found.table);
        let (_, out) =
            self.internal_commit::<_, DeviceError>(&what, epoch, origin, now_us, |db, _| {
                db.conn
                    .execute("DELETE FROM flotilla_shapes WHERE tbl = ?1", [&found.table])?;
                db.capture.statement_done(&db.conn)?;
                Ok(())
            })?;
        Ok(out)
    }
}

/// A row's column names and values.
pub type NamedRow = (Vec<String>, Vec<SqlValue>);

/// A shaped table as a device sees it.
#[derive(Debug, Clone)]
pub struct ViewTable {
    /// The table's name as declared.
    pub table: String,
    /// The columns a device pulls and may write, in the table's order.
    pub columns: Vec<String>,
    /// The key columns, in key order.
    pub key: Vec<String>,
    pub predicate: Option<String>,
    /// A predicate of the form `column = :user` (or `:device`), judged without SQL: the
    /// column and the value it must equal.
    pub equals: Option<(String, String)>,
    /// Every column of the table, in its order (as the view was loaded).
    pub all_columns: Vec<String>,
    /// The key columns' affinities, in key order.
    pub key_affinity: Vec<Affinity>,
    /// The collaborative text columns among `columns` (docs/collab.md).
    pub documents: Vec<String>,
}

/// `column = :user` or `column = :device` (the column bare or in double quotes): the column
/// and which parameter.
fn simple_equality(predicate: &str) -> Option<(String, &'static str)> {
    let (lhs, rhs) = predicate.split_once('=')?;
    let param = match rhs.trim() {
        ":user" => ":user",
        ":device" => ":device",
        _ => return None,
    };
    let lhs = lhs.trim();
    let column = match lhs.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(q) if !q.contains('"') => q,
        Some(_) => return None,
        None => lhs,
    };
    let plain = !column.is_empty()
        && column
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !column.starts_with(|c: char| c.is_ascii_digit());
    plain.then(|| (column.to_string(), param))
}

impl ViewTable {
    pub fn has_column(&self, c: &str) -> bool {
        self.columns.iter().any(|n| n.eq_ignore_ascii_case(c))
    }
}

/// One device's shapes resolved against the schema: what it may see and write.
#[derive(Debug, Clone)]
pub struct DeviceView {
    pub user: String,
    pub device: String,
    tables: HashMap<String, ViewTable>,
    /// A digest of the shapes and the device's parameters: when it changes, the device pulls
    /// its whole shape again.
    pub digest: String,
    /// The device keeps collaborative documents: pulls carry their updates.
    pub documents: bool,
}

impl DeviceView {
    /// Reads the shapes (tables that no longer exist are left out).
    pub fn load(conn: &Connection, user: &str, device: &str) -> Result<DeviceView, StoreError> {
        let mut tables = HashMap::new();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |s: &str| {
            for b in s.bytes().chain([0u8]) {
                hash ^= b as u64;
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        };
        feed(user);
        feed(device);
        let collab = crate::collab::read_collab_columns(conn)?;
        for shape in read_shapes(conn)? {
            let cols = table_columns(conn, &shape.table)?;
            if cols.names.is_empty() || cols.key.is_empty() {
                continue;
            }
            let columns: Vec<String> = match &shape.columns {
                None => cols.names.clone(),
                Some(chosen) => cols
                    .names
                    .iter()
                    .filter(|n| chosen.iter().any(|c| c.eq_ignore_ascii_case(n)))
                    .cloned()
                    .collect(),
            };
            feed(&shape.table);
            for c in &columns {
                feed(c);
            }
            feed(shape.predicate.as_deref().unwrap_or(""));
            let equals = shape
                .predicate
                .as_deref()
                .and_then(simple_equality)
                .filter(|(c, _)| cols.names.iter().any(|n| n.eq_ignore_ascii_case(c)))
                .map(|(c, param)| {
                    let value = if param == ":user" { user } else { device };
                    (c, value.to_string())
                });
            let documents = collab
                .iter()
                .filter(|c| c.table.eq_ignore_ascii_case(&shape.table))
                .filter_map(|c| columns.iter().find(|n| n.eq_ignore_ascii_case(&c.column)))
                .cloned()
                .collect();
            tables.insert(
                shape.table.to_ascii_lowercase(),
                ViewTable {
                    documents,
                    equals,
                    all_columns: cols.names.clone(),
                    key_affinity: cols.key.iter().map(|k| cols.affinity[*k]).collect(),
                    key: cols.key.iter().map(|k| cols.names[*k].clone()).collect(),
                    table: shape.table,
                    columns,
                    predicate: shape.predicate,
                },
            );
        }
        Ok(DeviceView {
            user: user.to_string(),
            device: device.to_string(),
            tables,
            digest: format!("{hash:016x}"),
            documents: false,
        })
    }

    pub fn table(&self, name: &str) -> Option<&ViewTable> {
        self.tables.get(&name.to_ascii_lowercase())
    }

    pub fn tables(&self) -> impl Iterator<Item = &ViewTable> {
        self.tables.values()
    }

    /// The shape's tables for the protocol, by name.
    pub fn shape_tables(&self) -> Vec<ShapeTable> {
        let mut out: Vec<ShapeTable> = self
            .tables
            .values()
            .map(|t| ShapeTable {
                table: t.table.clone(),
                columns: t.columns.clone(),
                key: t.key.clone(),
                // Said only to a device that keeps documents (others know no such field).
                documents: if self.documents {
                    t.documents.clone()
                } else {
                    Vec::new()
                },
            })
            .collect();
        out.sort_by(|a, b| a.table.cmp(&b.table));
        out
    }

    /// Whether a row of `table` (its `values` in `columns` order, as a change or the table
    /// holds it) is in the shape. A table outside the shape holds no row of it.
    pub fn contains(
        &self,
        conn: &Connection,
        table: &str,
        columns: &[String],
        values: &[SqlValue],
    ) -> Result<bool, StoreError> {
        let Some(t) = self.table(table) else {
            return Ok(false);
        };
        let Some(predicate) = &t.predicate else {
            return Ok(true);
        };
        // `column = :user`: what SQLite answers for a row given as parameters (no affinity,
        // BINARY collation) is true only for text of the same bytes.
        if let Some((column, value)) = &t.equals {
            if let Some(i) = columns.iter().position(|c| c.eq_ignore_ascii_case(column)) {
                return Ok(match &values[i] {
                    SqlValue::Text(s) => s == value,
                    SqlValue::TextBytes(b) => b == value.as_bytes(),
                    _ => false,
                });
            }
        }
        let sql = predicate_sql(&t.table, columns, predicate);
        let mut stmt = conn.prepare_cached(&sql)?;
        for (i, v) in values.iter().enumerate() {
            stmt.raw_bind_parameter(i + 1, SqlArg(v))?;
        }
        bind_identity(&mut stmt, &self.user, &self.device)?;
        let mut rows = stmt.raw_query();
        let inside = match rows.next()? {
            Some(r) => r.get::<_, i64>(0)? == 1,
            None => false,
        };
        Ok(inside)
    }

    /// The rows of a shaped table in the shape (its shape columns), as the connection sees
    /// them. A row the predicate cannot judge (it fails on that row: malformed JSON for
    /// `json_extract`, say) is outside the shape, as in a pull of changes.
    pub fn rows_of(
        &self,
        conn: &Connection,
        t: &ViewTable,
    ) -> Result<Vec<Vec<SqlValue>>, StoreError> {
        if t.predicate.is_none() {
            return self.select_rows(conn, t, None);
        }
        // Every row is judged as a pull of changes and a push judge it ([`DeviceView::contains`]:
        // the row's values as given, without the column's collation or affinity), so that the
        // three agree. `column = :user` first selects by SQL (index-friendly; a column's
        // NOCASE collation only selects more), then judges what it selected.
        let all = t.all_columns.clone();
        let every = ViewTable {
            columns: all.clone(),
            ..t.clone()
        };
        let candidates = match &t.equals {
            Some(_) => match self.select_rows(conn, &every, t.predicate.as_deref()) {
                Ok(rows) => rows,
                Err(StoreError::Sqlite(_)) => self.select_rows(conn, &every, None)?,
                Err(e) => return Err(e),
            },
            None => self.select_rows(conn, &every, None)?,
        };
        let mut out = Vec::new();
        for row in candidates {
            match self.contains(conn, &t.table, &all, &row) {
                Ok(true) => out.push(
                    all.iter()
                        .zip(row)
                        .filter(|(c, _)| t.has_column(c))
                        .map(|(_, v)| v)
                        .collect(),
                ),
                Ok(false) | Err(StoreError::Sqlite(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn select_rows(
        &self,
        conn: &Connection,
        t: &ViewTable,
        predicate: Option<&str>,
    ) -> Result<Vec<Vec<SqlValue>>, StoreError> {
        let cols: Vec<String> = t.columns.iter().map(|c| quote(c)).collect();
        let sql = format!(
            "SELECT {} FROM {}{}",
            cols.join(", "),
            quote(&t.table),
            predicate
                .map(|p| format!(" WHERE ({p})"))
                .unwrap_or_default()
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        bind_identity(&mut stmt, &self.user, &self.device)?;
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Vec::with_capacity(cols.len());
            for i in 0..cols.len() {
                row.push(from_sql(r.get_ref(i)?));
            }
            out.push(row);
        }
        Ok(out)
    }

    /// The row of a shaped table with this key, all its columns (`None`: no such row).
    pub fn current_row(
        &self,
        conn: &Connection,
        t: &ViewTable,
        key: &[SqlValue],
    ) -> Result<Option<NamedRow>, StoreError> {
        let names = &t.all_columns;
        let key_where: Vec<String> = t
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} IS ?{} COLLATE BINARY", quote(k), i + 1))
            .collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE {}",
            names
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", "),
            quote(&t.table),
            key_where.join(" AND ")
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        for (i, v) in key.iter().enumerate() {
            stmt.raw_bind_parameter(i + 1, SqlArg(v))?;
        }
        let mut rows = stmt.raw_query();
        let Some(r) = rows.next()? else {
            return Ok(None);
        };
        let mut values = Vec::with_capacity(names.len());
        for i in 0..names.len() {
            values.push(from_sql(r.get_ref(i)?));
        }
        Ok(Some((names.clone(), values)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_equalities_and_affinities_are_read_as_sqlite_would() {
        assert_eq!(
            simple_equality("owner = :user"),
            Some(("owner".to_string(), ":user"))
        );
        assert_eq!(
            simple_equality(" \"my_col\"=:device "),
            Some(("my_col".to_string(), ":device"))
        );
        for not_simple in [
            "owner = :user OR 1",
            "lower(owner) = :user",
            "owner = 'x'",
            "1x = :user",
        ] {
            assert_eq!(simple_equality(not_simple), None, "{not_simple}");
        }
        assert_eq!(Affinity::of("VARCHAR(20)"), Affinity::Text);
        assert_eq!(Affinity::of("BIGINT"), Affinity::Integer);
        assert_eq!(Affinity::of(""), Affinity::Blob);
        assert_eq!(Affinity::of("DOUBLE"), Affinity::Real);
        assert_eq!(Affinity::of("DECIMAL"), Affinity::Numeric);
        assert!(!Affinity::Text.keeps(&SqlValue::Integer(7)));
        assert!(Affinity::Text.keeps(&SqlValue::Text("7".into())));
        assert!(!Affinity::Integer.keeps(&SqlValue::Text("7".into())));
        assert!(Affinity::Integer.keeps(&SqlValue::Text("seven".into())));
        assert!(Affinity::Blob.keeps(&SqlValue::Integer(7)));
    }
}
