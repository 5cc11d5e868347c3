//! One client statement on a writer connection, under Flotilla's statement rules: shared by the
//! leader's writer and a logical follower's local writes.

use crate::leader_db::{sql_error_message, StatementResult};
use crate::{FailureKind, StatementGuard, StatementRules, INTERNAL_PREFIX};
use flotilla_types::DdlKind;
use rusqlite::types::Value;
use rusqlite::Connection;

/// A statement that ran, and the schema change it made, if any.
pub(crate) struct Ran {
    pub result: StatementResult,
    pub schema_change: Option<(DdlKind, String)>,
    /// The statement is `CREATE TABLE ... AS SELECT`.
    pub created_from_select: bool,
}

/// A client's statement failed: why, and what kind of failure it is.
pub(crate) type ClientError = (String, FailureKind);

/// Runs one client statement. Errors are the client's.
pub(crate) fn run_client_statement(
    conn: &Connection,
    rules: &StatementRules,
    guard: &StatementGuard,
    sql: &str,
    params: &[Value],
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
    let expected = stmt.parameter_count();
    if expected != params.len() {
        return Err((
            format!(
                "the statement has {expected} parameters but {} values were given",
                params.len()
            ),
            FailureKind::Sql,
        ));
    }
    for (i, v) in params.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, v).map_err(sql_failure)?;
    }
    let readonly = stmt.readonly();
    let before = conn.total_changes();
    let has_select = rules.take_saw_select();
    let schema_change = rules.take_schema_change();
    let created_from_select =
        has_select && matches!(schema_change, Some((DdlKind::CreateTable, _)));
    // The authorizer sees the table an ALTER TABLE renames, not its new name: a rename into
    // Flotilla's own names is caught by counting them around the statement.
    let internal_before = match &schema_change {
        Some(_) => Some(internal_names(conn, rules).map_err(sql_failure)?),
        None => None,
    };
    {
        let mut rows = stmt.raw_query();
        loop {
            match rows.next() {
                Ok(Some(_)) => {}
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
    let changed = !readonly && conn.total_changes() != before;
    Ok(Ran {
        result: StatementResult {
            rows_affected: if changed { conn.changes() } else { 0 },
            last_insert_rowid: conn.last_insert_rowid(),
        },
        schema_change,
        created_from_select,
    })
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
