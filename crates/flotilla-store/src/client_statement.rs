//! One client statement on a writer connection, under Flotilla's statement rules: shared by the
//! leader's writer and a logical follower's local writes.

use crate::leader_db::{sql_error_message, StatementResult};
use crate::{
    Cell, FailureKind, Params, ReturnedRows, StatementGuard, StatementRules, INTERNAL_PREFIX,
};
use flotilla_types::DdlKind;
use rusqlite::Connection;

/// A statement that ran, and the schema change it made, if any.
pub(crate) struct Ran {
    pub result: StatementResult,
    pub schema_change: Option<(DdlKind, String)>,
    /// The statement is `CREATE TABLE ... AS SELECT`.
    pub created_from_select: bool,
    /// The statement may have changed the database. `false` only when it surely did not: a
    /// read, or a plain INSERT, UPDATE or DELETE that changed no row. Anything else that is
    /// not read-only (REINDEX, ANALYZE) counts as a change.
    pub wrote: bool,
}

/// A client's statement failed: why, and what kind of failure it is.
pub(crate) type ClientError = (String, FailureKind);

/// Runs one client statement. Errors are the client's.
pub(crate) fn run_client_statement(
    conn: &Connection,
    rules: &StatementRules,
    guard: &StatementGuard,
    sql: &str,
    params: &Params,
) -> Result<Ran, ClientError> {
    // Cached: clients repeat the same statements. Authorization happens when a statement is
    // (re)prepared, so a cached statement was allowed by the same rules. A schema change is
    // never served from the cache (it is flushed after one runs), so the rules always see it
    // and name it.
    rules.take_schema_change();
    let refusal_or = |e: rusqlite::Error| match rules.take_reason() {
        Some(why) => (why, FailureKind::Refused),
        None => guard
            .explain(&e)
            .unwrap_or_else(|| (sql_error_message(&e), FailureKind::Sql)),
    };
    let sql_failure = |e: rusqlite::Error| (sql_error_message(&e), FailureKind::Sql);
    let mut stmt = conn.prepare_cached(sql).map_err(refusal_or)?;
    params
        .bind(&mut stmt)
        .map_err(|why| (why, FailureKind::Sql))?;
    let readonly = stmt.readonly();
    let before = conn.total_changes();
    let rowid_before = conn.last_insert_rowid();
    // Whether this statement inserts shows only if the connection's rowid starts from a value
    // no insert leaves (0): an insert of the same rowid as the last one (into another table)
    // would otherwise look like no insert. Not for a statement that reads the value itself.
    let probe_rowid = !sql.to_ascii_lowercase().contains("last_insert_rowid");
    // Restores the previous value unless the statement inserted (also when it fails).
    let _restore = probe_rowid.then(|| {
        set_last_insert_rowid(conn, 0);
        RestoreRowid {
            conn,
            rowid: rowid_before,
        }
    });
    let has_select = rules.take_saw_select();
    let schema_change = rules.take_schema_change();
    // A schema statement may find nothing to do (`CREATE TABLE IF NOT EXISTS` of a table that
    // exists, `DROP … IF EXISTS` of none): SQLite's schema cookie says whether it changed
    // anything. Pragmas set header values, not the schema: they count as changes.
    // (A `DROP … IF EXISTS` of nothing is not even shown to the authorizer.)
    // The first keyword, read once and only for a statement that may write.
    let keyword = if readonly {
        String::new()
    } else {
        crate::sql_text::first_keyword(sql)
    };
    let creates_or_drops = matches!(keyword.as_str(), "CREATE" | "DROP");
    let cookie_before = match &schema_change {
        Some((kind, _)) if *kind != DdlKind::SetPragma => {
            Some(schema_cookie(conn, rules).map_err(sql_failure)?)
        }
        None if creates_or_drops => Some(schema_cookie(conn, rules).map_err(sql_failure)?),
        _ => None,
    };
    // The authorizer sees the table an ALTER TABLE renames, not its new name: a rename into
    // Flotilla's own names is caught by counting them around the statement.
    let internal_before = match &schema_change {
        Some(_) => Some(internal_names(conn, rules).map_err(sql_failure)?),
        None => None,
    };
    let columns: Vec<String> = stmt.column_names().map(str::to_string).collect();
    let mut returned = (!columns.is_empty()).then(|| ReturnedRows {
        columns,
        rows: Vec::new(),
    });
    {
        let max_bytes = guard.max_bytes();
        let mut returned_bytes = 0u64;
        let mut rows = stmt.raw_query();
        loop {
            match rows.next() {
                Ok(Some(row)) => {
                    let Some(out) = returned.as_mut() else {
                        continue;
                    };
                    let mut values = Vec::with_capacity(out.columns.len());
                    for i in 0..out.columns.len() {
                        let cell = Cell::from_ref(row.get_ref(i).map_err(sql_failure)?);
                        returned_bytes += cell.size_bytes();
                        values.push(cell);
                    }
                    if returned_bytes > max_bytes {
                        return Err((
                            format!(
                                "the rows the statement returns are larger than {} MiB (the \
                                 transaction limit): return fewer rows or columns",
                                max_bytes >> 20
                            ),
                            FailureKind::TooLarge,
                        ));
                    }
                    out.rows.push(values);
                }
                Ok(None) => break,
                // A nested statement (a pragma function, a trigger) can be refused at step time.
                Err(e) => return Err(refusal_or(e)),
            }
        }
    }
    drop(stmt);
    if schema_change.is_some() {
        conn.flush_prepared_statement_cache();
    }
    if let Some(before) = internal_before {
        let after = internal_names(conn, rules).map_err(sql_failure)?;
        if after > before {
            // The caller's savepoint undoes the statement.
            return Err((
                format!(
                    "names starting with {INTERNAL_PREFIX} are Flotilla's own: choose another \
                     name"
                ),
                FailureKind::Refused,
            ));
        }
    }
    let schema_noop = match cookie_before {
        Some(v) => schema_cookie(conn, rules).map_err(sql_failure)? == v,
        None => false,
    };
    let schema_change = if schema_noop { None } else { schema_change };
    let created_from_select =
        has_select && matches!(schema_change, Some((DdlKind::CreateTable, _)));
    let changed = !readonly && conn.total_changes() != before;
    let wrote =
        schema_change.is_some() || changed || (!readonly && !schema_noop && !plain_dml(&keyword));
    Ok(Ran {
        result: StatementResult {
            rows_affected: if changed { conn.changes() } else { 0 },
            // The writer connection is shared by every client: a value this statement did not
            // set would be another client's.
            last_insert_rowid: match (changed, probe_rowid) {
                (true, true) => conn.last_insert_rowid(),
                (true, false) if conn.last_insert_rowid() != rowid_before => {
                    conn.last_insert_rowid()
                }
                _ => 0,
            },
            returned,
        },
        schema_change,
        created_from_select,
        wrote,
    })
}

/// Whether a statement's first keyword makes it a query or a plain INSERT, UPDATE or DELETE:
/// statements whose every change SQLite counts in `total_changes`.
fn plain_dml(keyword: &str) -> bool {
    matches!(
        keyword,
        "SELECT" | "VALUES" | "WITH" | "INSERT" | "REPLACE" | "UPDATE" | "DELETE"
    )
}

/// SQLite's schema cookie: it moves with every change of the schema.
fn schema_cookie(conn: &Connection, rules: &StatementRules) -> rusqlite::Result<i64> {
    rules.internal(|| conn.query_row("PRAGMA main.schema_version", [], |r| r.get(0)))
}

/// How many schema objects carry Flotilla's internal prefix (any case, as SQLite compares names).
fn internal_names(conn: &Connection, rules: &StatementRules) -> rusqlite::Result<i64> {
    rules.internal(|| {
        conn.prepare_cached(
            "SELECT count(*) FROM sqlite_schema WHERE substr(lower(name), 1, length(?1)) = ?1",
        )?
        .query_row([INTERNAL_PREFIX], |r| r.get(0))
    })
}

/// Puts the connection's last insert rowid back when a statement inserted nothing, so that
/// the next statement's `last_insert_rowid()` is the one before.
struct RestoreRowid<'c> {
    conn: &'c rusqlite::Connection,
    rowid: i64,
}

impl Drop for RestoreRowid<'_> {
    fn drop(&mut self) {
        if self.conn.last_insert_rowid() == 0 {
            set_last_insert_rowid(self.conn, self.rowid);
        }
    }
}

/// Sets the connection's last insert rowid (what `last_insert_rowid()` answers).
fn set_last_insert_rowid(conn: &rusqlite::Connection, rowid: i64) {
    // SAFETY: the handle of a connection this thread holds (`&Connection`: no other thread
    // uses it meanwhile); the call only stores an integer in it.
    unsafe { rusqlite::ffi::sqlite3_set_last_insert_rowid(conn.handle(), rowid) }
}
