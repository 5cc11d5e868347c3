//! A logical follower's own writes: client transactions on the tables created on it (never
//! replicated), and the checks that keep them from stopping replication.

use super::{LocalOutcome, RowReplica};
use crate::client_statement::run_client_statement;
use crate::StoreError;
use flotilla_types::DdlKind;
use rusqlite::Connection;

impl RowReplica {
    /// Runs a client transaction on this follower's own tables (created here with `CREATE
    /// TABLE`; they are never replicated). Writes to replicated tables are refused as
    /// misdirected. Does not move the replication position.
    /// The statements are cancelled after `timeout_ms` (0: no limit).
    pub fn execute_local(
        &mut self,
        statements: &[(String, crate::Params)],
        timeout_ms: u64,
    ) -> Result<LocalOutcome, StoreError> {
        // Transaction control is Flotilla's own (clients may not issue it).
        let rules = self.rules.clone();
        // Applies commit without an fsync and are flushed apart (`crate::wal_flush`); a
        // client's write is answered only once durable, so its commit flushes.
        rules.internal(|| self.conn.execute_batch("PRAGMA synchronous=FULL"))?;
        let out = self.execute_local_durably(statements, timeout_ms);
        let restore = format!("PRAGMA synchronous={}", self.synchronous.as_sql());
        rules.internal(|| self.conn.execute_batch(&restore))?;
        out
    }

    fn execute_local_durably(
        &mut self,
        statements: &[(String, crate::Params)],
        timeout_ms: u64,
    ) -> Result<LocalOutcome, StoreError> {
        let rules = self.rules.clone();
        rules.internal(|| self.conn.execute_batch("BEGIN IMMEDIATE"))?;
        self.guard.begin_request(timeout_ms);
        let ran = self.run_local(statements);
        self.guard.end_request();
        let out = match ran {
            Ok(LocalOutcome::Committed(results)) => {
                match rules.internal(|| self.conn.execute_batch("COMMIT")) {
                    Ok(()) => Ok(LocalOutcome::Committed(results)),
                    Err(e) => {
                        let _ = rules.internal(|| self.conn.execute_batch("ROLLBACK"));
                        Err(e.into())
                    }
                }
            }
            other => {
                let _ = rules.internal(|| self.conn.execute_batch("ROLLBACK"));
                other
            }
        };
        self.reload_local()?;
        out
    }

    fn run_local(
        &mut self,
        statements: &[(String, crate::Params)],
    ) -> Result<LocalOutcome, StoreError> {
        let tx = &self.conn;
        let mut results = Vec::with_capacity(statements.len());
        for (i, (sql, params)) in statements.iter().enumerate() {
            self.rules.take_misdirected();
            // The indexes before a CREATE INDEX, to find the one it makes.
            let indexes_before = if creates_index(sql) {
                Some(self.rules.internal(|| index_names(tx))?)
            } else {
                None
            };
            // The tables before an ALTER TABLE, to follow a rename of a local table.
            let tables_before = if crate::leader_pipelines::next_keyword(sql)
                .0
                .eq_ignore_ascii_case("alter")
            {
                Some(self.rules.internal(|| table_names(tx))?)
            } else {
                None
            };
            match run_client_statement(tx, &self.rules, &self.guard, sql, params) {
                Ok(ran) => {
                    match ran.schema_change {
                        Some((DdlKind::CreateTable, t)) => {
                            self.rules.internal(|| {
                                tx.execute(
                                    "INSERT OR IGNORE INTO _flotilla_local VALUES (?1)",
                                    [&t],
                                )
                            })?;
                            // Writable by the next statement of the request already (a
                            // rollback reloads the set).
                            self.local
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(t);
                        }
                        // An index of its own on a replicated table must accept every row
                        // the leader accepted, or it stops replication here.
                        Some((DdlKind::CreateIndex, t))
                            if !self
                                .local
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .contains(&t) =>
                        {
                            let problem = self.rules.internal(|| {
                                local_index_problem(tx, &t, indexes_before.as_deref())
                            })?;
                            if let Some(message) = problem {
                                return Ok(LocalOutcome::Failed {
                                    statement: i,
                                    message,
                                    kind: crate::FailureKind::Refused,
                                    misdirected: false,
                                });
                            }
                        }
                        // A local table renamed stays local under its new name.
                        Some((DdlKind::AlterTable, t))
                            if self
                                .local
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .contains(&t) =>
                        {
                            let after = self.rules.internal(|| table_names(tx))?;
                            let before = tables_before.unwrap_or_default();
                            let new: Vec<&String> =
                                after.iter().filter(|n| !before.contains(n)).collect();
                            if let ([renamed], false) = (new.as_slice(), after.contains(&t)) {
                                self.rules.internal(|| {
                                    tx.execute(
                                        "UPDATE _flotilla_local SET name = ?2 WHERE name = ?1",
                                        [&t, *renamed],
                                    )
                                })?;
                                let mut local =
                                    self.local.lock().unwrap_or_else(|p| p.into_inner());
                                local.remove(&t);
                                local.insert((*renamed).clone());
                            }
                        }
                        Some((DdlKind::DropTable, t)) => {
                            self.rules.internal(|| {
                                tx.execute("DELETE FROM _flotilla_local WHERE name = ?1", [&t])
                            })?;
                        }
                        _ => {}
                    }
                    results.push(ran.result);
                }
                Err((message, kind)) => {
                    let misdirected = self.rules.take_misdirected();
                    return Ok(LocalOutcome::Failed {
                        statement: i,
                        message,
                        kind,
                        misdirected,
                    });
                }
            }
        }
        Ok(LocalOutcome::Committed(results))
    }

    /// The local table set as committed (after a rollback or a drop).
    fn reload_local(&mut self) -> Result<(), StoreError> {
        let names: std::collections::HashSet<String> = self.rules.internal(|| {
            self.conn
                .prepare_cached("SELECT name FROM _flotilla_local")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()
        })?;
        *self.local.lock().unwrap_or_else(|p| p.into_inner()) = names;
        Ok(())
    }
}

/// Whether a statement reads as `CREATE [UNIQUE] INDEX` (the authorizer says for sure).
fn creates_index(sql: &str) -> bool {
    let (first, rest) = crate::leader_pipelines::next_keyword(sql);
    let (second, rest) = crate::leader_pipelines::next_keyword(rest);
    let third = if second.eq_ignore_ascii_case("unique") {
        crate::leader_pipelines::next_keyword(rest).0
    } else {
        second
    };
    first.eq_ignore_ascii_case("create") && third.eq_ignore_ascii_case("index")
}

fn table_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    conn.prepare_cached("SELECT name FROM sqlite_schema WHERE type = 'table'")?
        .query_map([], |r| r.get(0))?
        .collect()
}

fn index_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM main.sqlite_schema WHERE type = 'index'")?;
    let names = stmt.query_map([], |r| r.get(0))?.collect();
    names
}

/// Why a follower's own new index on replicated `table` could stop replication, if it could:
/// a unique one could refuse the leader's rows; one on an expression, or with a WHERE clause,
/// evaluates SQL for each row the leader sends, which can fail (`json()` of text that is not
/// JSON) where the leader had no such index. `before` holds the indexes before the statement.
fn local_index_problem(
    conn: &Connection,
    table: &str,
    before: Option<&[String]>,
) -> rusqlite::Result<Option<String>> {
    let Some(before) = before else {
        return Ok(Some(format!(
            "an index of this follower's own on {table}, which is replicated from the leader, \
             must be written as CREATE [UNIQUE] INDEX name ON {table}(columns)"
        )));
    };
    let mut stmt =
        conn.prepare("SELECT name, \"unique\", partial FROM pragma_index_list(?1, 'main')")?;
    let listed: Vec<(String, bool, bool)> = stmt
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, unique, partial) in listed {
        if before.contains(&name) {
            continue;
        }
        let on_expression: bool = conn.query_row(
            "SELECT count(*) > 0 FROM pragma_index_xinfo(?1, 'main') WHERE cid = -2",
            [&name],
            |r| r.get(0),
        )?;
        let why = if unique {
            "a unique index on {t} could refuse the leader's rows"
        } else if on_expression {
            "an index on an expression of {t} evaluates it for every row the leader sends, \
             which can fail here"
        } else if partial {
            "an index with a WHERE clause on {t} evaluates it for every row the leader sends, \
             which can fail here"
        } else {
            continue;
        };
        return Ok(Some(format!(
            "{}: {t} is replicated from the leader, and a failure would stop replication; \
             create such an index on the leader, or a plain one (on columns, without WHERE) \
             here",
            why.replace("{t}", table),
            t = table
        )));
    }
    Ok(None)
}
