//! A logical follower's database: built from a snapshot of the leader (only what its filter
//! keeps), then kept up to date by applying row changes and schema changes by column name.
//! Its page size, indexes and extra tables are its own.
//!
//! Invariant: `_flotilla_meta` holds the position of the last applied leader transaction and is
//! written in the same SQLite transaction as that transaction's rows, so the data and the
//! position move together, also across a crash.

mod build;
mod local;

use crate::key_collations::{key_collations, KeyCollations};
use crate::meta::read_meta_row;
use crate::open::configure;
use crate::row_filter::RowFilter;
use crate::rules::LocalTables;
use crate::sql_arg::SqlArg;
use crate::{read_meta, DbSettings, Meta, StatementResult, StatementRules, StoreError};
use flotilla_types::{rowid_alias, DdlKind, LogRecord, RowChange, RowItem, SqlValue, TableShape};
use rusqlite::config::DbConfig;
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a logical follower does when a change does not fit its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictPolicy {
    /// Stop applying, with the conflict as the error (nothing of the batch is applied).
    #[default]
    Stop,
    /// Make the row what the leader says: insert a missing row, replace a colliding one,
    /// ignore the delete of a missing one.
    Overwrite,
}

/// A conflict policy name that is neither `stop` nor `overwrite`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown conflict policy {0:?}: use \"stop\" or \"overwrite\"")]
pub struct UnknownConflictPolicy(pub String);

impl std::str::FromStr for ConflictPolicy {
    type Err = UnknownConflictPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stop" => Ok(ConflictPolicy::Stop),
            "overwrite" => Ok(ConflictPolicy::Overwrite),
            other => Err(UnknownConflictPolicy(other.to_string())),
        }
    }
}

const CREATE_REPLICA: &str = "
CREATE TABLE IF NOT EXISTS _flotilla_replica (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    log_kind TEXT NOT NULL,
    filter TEXT NOT NULL
);";

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The outcome of a write to a logical follower's own tables.
#[derive(Debug, Clone, PartialEq)]
pub enum LocalOutcome {
    Committed(Vec<StatementResult>),
    /// Rolled back; nothing of the request remains.
    Failed {
        statement: usize,
        message: String,
        kind: crate::FailureKind,
        /// The statement writes a table replicated from the leader: send it there.
        misdirected: bool,
    },
}

const CREATE_LOCAL: &str =
    "CREATE TABLE IF NOT EXISTS _flotilla_local (name TEXT PRIMARY KEY) WITHOUT ROWID";

pub struct RowReplica {
    conn: Connection,
    rules: StatementRules,
    /// Time limits of local writes.
    guard: crate::StatementGuard,
    /// Tables created on this follower through its API (writable here, never replicated).
    local: LocalTables,
    meta: Meta,
    filter: RowFilter,
    policy: ConflictPolicy,
    conflicts: Arc<AtomicU64>,
    /// The configured setting, which applies run with (local writes commit with FULL).
    synchronous: crate::Synchronous,
    /// The record whose conflict stopped the last apply: counted once, not at every retry.
    stopped_at: Option<flotilla_types::Position>,
    /// Each table's key collations (see [`key_collations`]), read once per table rather than
    /// at every record; forgotten at every schema change.
    key_colls: HashMap<String, KeyCollations>,
}

impl RowReplica {
    /// Opens a logical replica; `None` if there is no database yet (it needs a bootstrap).
    /// Refuses a physical replica, or one built with another filter (its rows would not be
    /// what the new filter promises).
    pub fn open(
        path: &Path,
        settings: &DbSettings,
        filter: &RowFilter,
        policy: ConflictPolicy,
        conflicts: Arc<AtomicU64>,
    ) -> Result<Option<RowReplica>, StoreError> {
        if !path.exists() {
            return Ok(None);
        }
        let mut conn = Connection::open(path)?;
        configure(&conn, settings, false)?;
        let Some(meta) = read_meta(&conn)? else {
            return Ok(None);
        };
        let built: Option<(String, String)> = conn
            .query_row(
                "SELECT log_kind, filter FROM _flotilla_replica WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .or_else(|e| match e {
                rusqlite::Error::SqliteFailure(_, Some(ref m)) if m.contains("no such table") => {
                    Ok(None)
                }
                e => Err(e),
            })?;
        let Some((kind, stored)) = built else {
            return Err(StoreError::Mismatch(format!(
                "{} is a physical replica; a logical follower needs its own data directory",
                path.display()
            )));
        };
        if kind != "logical" {
            return Err(StoreError::Mismatch(format!(
                "{} holds a {kind} replica, not a logical one",
                path.display()
            )));
        }
        let stored: RowFilter = serde_json::from_str(&stored)
            .map_err(|e| StoreError::Mismatch(format!("unreadable stored filter: {e}")))?;
        if &stored != filter {
            return Err(StoreError::Mismatch(format!(
                "this replica was built with the filter [{stored}] but the follower was started \
                 with [{filter}]: start it with the same filter, or with an empty data directory \
                 to build a new replica"
            )));
        }
        conn.execute_batch("PRAGMA foreign_keys = OFF; PRAGMA recursive_triggers = OFF;")?;
        conn.execute_batch(CREATE_LOCAL)?;
        // The leader's token rows arrive as changes of this table, its documents as changes of
        // these.
        conn.execute_batch(crate::leader_tokens::CREATE_TOKENS)?;
        conn.execute_batch(crate::collab::CREATE_TABLES)?;
        let names: std::collections::HashSet<String> = conn
            .prepare("SELECT name FROM _flotilla_local")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let local: LocalTables = Arc::new(std::sync::Mutex::new(names));
        let rules = StatementRules::install_for_replica(&mut conn, local.clone())?;
        let guard = crate::StatementGuard::install_for_reads(&mut conn);
        Ok(Some(RowReplica {
            conn,
            rules,
            guard,
            local,
            meta,
            filter: filter.clone(),
            policy,
            conflicts,
            synchronous: settings.synchronous,
            stopped_at: None,
            key_colls: HashMap::new(),
        }))
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Builds a replica at `path` from the leader snapshot at `snapshot` (a database file):
    /// the schema of the tables the filter keeps (without triggers: their effects arrive as
    /// row changes), their rows as filtered, and the snapshot's position. Checks the filter
    /// against the leader's schema first: an unknown table or column, or a predicate that does
    /// not compile, is an error naming it. Written to a temporary file and renamed into place.
    pub fn build(
        snapshot: &Path,
        path: &Path,
        settings: &DbSettings,
        filter: &RowFilter,
        page_size: Option<u32>,
    ) -> Result<Meta, StoreError> {
        let tmp = path.with_extension("building");
        for p in [
            tmp.clone(),
            tmp.with_extension("building-wal"),
            tmp.with_extension("building-shm"),
        ] {
            let _ = std::fs::remove_file(p);
        }
        let meta = {
            let conn = Connection::open(&tmp)?;
            // The page size of a new file is set before its first write (WAL mode is one).
            if let Some(size) = page_size {
                conn.execute_batch(&format!("PRAGMA page_size = {size}"))?;
            }
            configure(&conn, settings, false)?;
            // Shadow tables of virtual tables are copied as they are (see `build_into`).
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, false)?;
            build::build_into(&conn, snapshot, filter, path)?
        };
        // The WAL is checkpointed into the file when the connection closes; make it durable
        // before it replaces the old database.
        let f = std::fs::File::open(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        f.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
        for suffix in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
        std::fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))?;
        let _ = crate::atomic_file::sync_parent(path);
        Ok(meta)
    }

    /// Applies `records` (contiguous, following this replica's position and chain) in one
    /// transaction: readers see all of them or none.
    pub fn apply(&mut self, records: &[LogRecord]) -> Result<&Meta, StoreError> {
        let rules = self.rules.clone();
        // The leader's changes include those of virtual tables' shadow tables (an fts5
        // index), which defensive mode keeps read-only for clients' statements.
        self.conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, false)?;
        let applied = rules.internal(|| self.apply_records(records));
        self.conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        if applied.is_err() {
            // What was read inside the rolled-back transaction may describe a schema that
            // is not there.
            self.key_colls.clear();
        }
        applied?;
        Ok(&self.meta)
    }

    fn apply_records(&mut self, records: &[LogRecord]) -> Result<(), StoreError> {
        let Some(last) = records.last() else {
            return Ok(());
        };
        crate::follower_db::check_follows(&self.meta, records)?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut conflicts = 0u64;
        for r in records {
            let rows = r.rows.as_ref().ok_or_else(|| {
                StoreError::Apply(format!("record {} carries no row changes", r.position()))
            })?;
            // Plans per table of this record, and whether the filter keeps it, made on first use.
            let mut plans: Vec<Option<TablePlan>> = Vec::new();
            plans.resize_with(rows.tables.len(), || None);
            let mut keeps: Vec<Option<bool>> = vec![None; rows.tables.len()];
            for item in &rows.items {
                let res = match item {
                    RowItem::Schema(s) => {
                        self.key_colls.clear();
                        apply_schema(&tx, &self.filter, s)
                    }
                    RowItem::Change(c) => {
                        let shape = rows.shape(c);
                        let keep = match keeps[c.table as usize] {
                            Some(k) => k,
                            None => {
                                // Tokens reach every logical follower, whatever its filter;
                                // documents only a follower of every row and column (they
                                // hold what a filter may keep out).
                                let k = shape.name == crate::TOKENS_TABLE
                                    || if crate::collab::is_collab_table(&shape.name) {
                                        self.filter.is_empty()
                                    } else {
                                        self.filter.keeps_table(&owner_table(&tx, &shape.name)?)
                                    };
                                keeps[c.table as usize] = Some(k);
                                k
                            }
                        };
                        if !keep {
                            continue;
                        }
                        let slot = &mut plans[c.table as usize];
                        if slot.is_none() {
                            let in_record = |e: ChangeError| {
                                StoreError::Apply(format!("record {}: {e}", r.position()))
                            };
                            let colls = match self.key_colls.get(&shape.name) {
                                Some(c) => c,
                                None => {
                                    let c = key_collations(&tx, &shape.name)
                                        .map_err(|e| in_record(e.into()))?;
                                    self.key_colls.entry(shape.name.clone()).or_insert(c)
                                }
                            };
                            *slot = Some(
                                TablePlan::new(shape, colls, &self.filter).map_err(in_record)?,
                            );
                        }
                        let plan = slot.as_ref().expect("made above");
                        let cx = ChangeCtx {
                            conn: &tx,
                            policy: self.policy,
                            shape,
                            plan,
                        };
                        apply_change(&cx, c, &mut conflicts)
                    }
                };
                if let Err(e) = res {
                    // A conflict that stops the apply is counted too (once per record).
                    if conflicts > 0 && self.stopped_at != Some(r.position()) {
                        self.stopped_at = Some(r.position());
                        self.conflicts.fetch_add(conflicts, Ordering::Relaxed);
                    }
                    return Err(StoreError::Apply(format!("record {}: {e}", r.position())));
                }
            }
        }
        tx.prepare_cached(
            "UPDATE _flotilla_meta SET epoch = ?1, lsn = ?2, chain = ?3, digest = ?4, commit_time_us = ?5 WHERE id = 1",
        )?
        .execute(rusqlite::params![
            last.epoch.0 as i64,
            last.lsn.0 as i64,
            last.chain.0 as i64,
            last.digest.0 as i64,
            last.commit_time_us as i64
        ])?;
        let meta = read_meta_row(&tx)?.ok_or_else(|| StoreError::Apply("no meta row".into()))?;
        tx.commit()?;
        self.conflicts.fetch_add(conflicts, Ordering::Relaxed);
        self.meta = meta;
        Ok(())
    }
}

/// Why a change cannot be applied: each stops the apply (the batch rolls back).
#[derive(Debug, thiserror::Error)]
enum ChangeError {
    /// SQLite refused a statement the change needs.
    #[error("{0}")]
    Sqlite(String),
    /// SQLite refused a statement while doing what `doing` says.
    #[error("{doing}: {detail}")]
    Sql { doing: String, detail: String },
    /// The change does not fit the data here and the conflict policy is `stop`.
    #[error("conflict: {0}; the conflict policy is stop")]
    Conflict(String),
    /// The change cannot be applied under this replica's filter: only rebuilding the replica
    /// (or another filter) helps.
    #[error("{0}")]
    Unfit(String),
}

impl ChangeError {
    fn sql(doing: String, e: rusqlite::Error) -> ChangeError {
        ChangeError::Sql {
            doing,
            detail: crate::sql_error_message(&e),
        }
    }
}

impl From<rusqlite::Error> for ChangeError {
    fn from(e: rusqlite::Error) -> ChangeError {
        ChangeError::Sqlite(crate::sql_error_message(&e))
    }
}

type ApplyResult = Result<(), ChangeError>;

fn apply_schema(
    conn: &Connection,
    filter: &RowFilter,
    s: &flotilla_types::SchemaChange,
) -> ApplyResult {
    match s.kind {
        // A database header value (the statement is Flotilla's canonical one).
        DdlKind::SetPragma => {
            return conn
                .execute_batch(&s.sql)
                .map_err(|e| ChangeError::sql(format!("{:?} failed here", s.sql), e));
        }
        // A trigger's effects arrive as row changes; running it here would apply them twice.
        DdlKind::CreateTrigger | DdlKind::DropTrigger => return Ok(()),
        // A virtual table is replicated whole: its shadow tables' rows are its storage.
        DdlKind::CreateVirtualTable
            if filter.columns.contains_key(&s.table)
                || filter.predicates.contains_key(&s.table) =>
        {
            return Err(ChangeError::Unfit(virtual_table_filtered(&s.table)));
        }
        // Views read tables a filtered replica may not have: kept only without a table filter.
        DdlKind::CreateView | DdlKind::DropView if !filter.tables.is_empty() => return Ok(()),
        _ => {}
    }
    if !matches!(s.kind, DdlKind::CreateView | DdlKind::DropView) && !filter.keeps_table(&s.table) {
        return Ok(());
    }
    if filter.columns.contains_key(&s.table) {
        match s.kind {
            DdlKind::CreateTable | DdlKind::AlterTable => {
                return Err(ChangeError::Unfit(format!(
                    "schema change on table {} cannot be applied to its column subset ({}): \
                     rebuild this replica (restart it with an empty data directory)",
                    s.table, s.sql
                )))
            }
            // An index may name columns this replica does not keep: then it is not built.
            DdlKind::CreateIndex => {
                if let Err(e) = conn.execute_batch(&s.sql) {
                    tracing::info!(
                        "index on {} not built on this column subset: {}",
                        s.table,
                        crate::sql_error_message(&e)
                    );
                }
                conn.flush_prepared_statement_cache();
                return Ok(());
            }
            _ => {}
        }
    }
    // A predicate names columns as they were at bootstrap: one renamed or dropped would make it
    // select other rows (a column swapped in under its name) or fail later.
    let predicate = filter
        .predicates
        .iter()
        .find(|(t, _)| t.eq_ignore_ascii_case(&s.table))
        .map(|(_, p)| p.to_ascii_lowercase());
    let columns_before = match (&predicate, s.kind) {
        (Some(_), DdlKind::AlterTable) => column_names(conn, &s.table)?,
        _ => Vec::new(),
    };
    conn.execute_batch(&s.sql)
        .map_err(|e| ChangeError::sql(format!("schema change {:?} failed here", s.sql), e))?;
    conn.flush_prepared_statement_cache();
    if let Some(predicate) = &predicate {
        let after = column_names(conn, &s.table)?;
        let gone = columns_before.iter().find(|c| {
            !after.iter().any(|a| a.eq_ignore_ascii_case(c))
                && predicate.contains(&c.to_ascii_lowercase())
        });
        if let (Some(column), false) = (gone, after.is_empty()) {
            return Err(ChangeError::Unfit(format!(
                "the leader renamed or dropped column {column:?} of table {:?}, which this \
                 follower's predicate uses ({}): rebuild this replica with a predicate naming the \
                 new columns (restart it with an empty data directory)",
                s.table, s.sql
            )));
        }
    }
    // The filter names tables as they were at bootstrap: once renamed, a table would no longer
    // be kept (a table list) or would be kept whole (a predicate). Stopping here (the apply
    // rolls back) beats either.
    let named = |t: &str| t.eq_ignore_ascii_case(&s.table);
    if s.kind == DdlKind::AlterTable
        && (filter.tables.iter().any(|t| named(t)) || filter.predicates.keys().any(|t| named(t)))
    {
        let still_there: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM main.sqlite_schema WHERE type = 'table' AND name = ?1 \
                 COLLATE NOCASE",
                [&s.table],
                |r| r.get(0),
            )
            .map_err(ChangeError::from)?;
        if !still_there {
            return Err(ChangeError::Unfit(format!(
                "the leader renamed table {:?}, which this follower's filter names ({}): rebuild \
                 this replica with a filter naming the new name (restart it with an empty data \
                 directory)",
                s.table, s.sql
            )));
        }
    }
    Ok(())
}

fn column_names(conn: &Connection, table: &str) -> Result<Vec<String>, ChangeError> {
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_xinfo(?1, 'main')")
        .map_err(ChangeError::from)?;
    let names = stmt
        .query_map([table], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(ChangeError::from);
    names
}

/// How one table's changes are applied, worked out once per record (a record's changes of one
/// table share a shape): the kept columns and the SQL of each operation.
struct TablePlan {
    kept: Vec<usize>,
    insert: String,
    insert_or_replace: String,
    update: String,
    delete: String,
    /// `SELECT (predicate) FROM (SELECT ?1 AS col1, ...)` when the filter has a predicate.
    predicate: Option<String>,
}

impl TablePlan {
    fn new(
        shape: &TableShape,
        colls: &KeyCollations,
        filter: &RowFilter,
    ) -> Result<TablePlan, ChangeError> {
        // The columns this replica keeps, as indexes into the shape.
        let kept: Vec<usize> = match filter.columns.get(&shape.name) {
            None => (0..shape.columns.len()).collect(),
            Some(cols) => shape
                .columns
                .iter()
                .enumerate()
                .filter(|(_, n)| cols.iter().any(|c| c == *n))
                .map(|(i, _)| i)
                .collect(),
        };
        let table = quote(&shape.name);
        // The rowid's name in this replica's table (its kept columns): a column named `rowid`
        // hides the rowid, which then answers to `oid` or `_rowid_`.
        let rowid = if shape.keyed_by_rowid() {
            Some(
                rowid_alias(kept.iter().map(|i| shape.columns[*i].as_str())).ok_or_else(|| {
                    ChangeError::Unfit(format!(
                        "table {:?} has no primary key and columns named rowid, oid and \
                         _rowid_: its rows cannot be addressed",
                        shape.name
                    ))
                })?,
            )
        } else {
            None
        };
        let mut cols: Vec<String> = kept.iter().map(|i| quote(&shape.columns[*i])).collect();
        if let Some(alias) = rowid {
            cols.push(alias.into());
        }
        let params: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        let insert_as = |verb: &str| {
            format!(
                "{verb} INTO {table}({}) VALUES ({})",
                cols.join(", "),
                params.join(", ")
            )
        };
        // UPDATE binds the kept values (and the new rowid) first, then the key.
        let sets: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(n, c)| format!("{c} = ?{}", n + 1))
            .collect();
        let update = format!(
            "UPDATE {table} SET {} WHERE {}",
            sets.join(", "),
            key_clause(shape, colls, rowid, cols.len() + 1)
        );
        let delete = format!(
            "DELETE FROM {table} WHERE {}",
            key_clause(shape, colls, rowid, 1)
        );
        let predicate = filter.predicates.get(&shape.name).map(|p| {
            let cols: Vec<String> = shape
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| format!("?{} AS {}", i + 1, quote(c)))
                .collect();
            format!("SELECT ({p}) FROM (SELECT {})", cols.join(", "))
        });
        Ok(TablePlan {
            insert: insert_as("INSERT"),
            insert_or_replace: insert_as("INSERT OR REPLACE"),
            update,
            delete,
            predicate,
            kept,
        })
    }
}

/// Whether a row (values in the shape's column order) passes the table's predicate.
fn passes(
    conn: &Connection,
    table: &str,
    sql: &str,
    row: &[SqlValue],
) -> Result<bool, ChangeError> {
    let mut stmt = conn.prepare_cached(sql).map_err(|e| {
        ChangeError::sql(
            format!("the predicate for {table} does not work on its columns"),
            e,
        )
    })?;
    let v: Value = stmt
        .query_row(params_from_iter(row.iter().map(SqlArg)), |r| r.get(0))
        .map_err(ChangeError::from)?;
    Ok(match v {
        Value::Integer(i) => i != 0,
        Value::Real(f) => f != 0.0,
        Value::Text(t) => t.trim().parse::<f64>().map(|f| f != 0.0).unwrap_or(false),
        _ => false,
    })
}

/// What applying one change needs besides the change.
struct ChangeCtx<'a> {
    conn: &'a Connection,
    policy: ConflictPolicy,
    shape: &'a TableShape,
    plan: &'a TablePlan,
}

fn apply_change(cx: &ChangeCtx, c: &RowChange, conflicts: &mut u64) -> ApplyResult {
    let (in_before, in_after) = match &cx.plan.predicate {
        None => (c.before.is_some(), c.after.is_some()),
        Some(p) => (
            match &c.before {
                Some(b) => passes(cx.conn, &cx.shape.name, p, b)?,
                None => false,
            },
            match &c.after {
                Some(a) => passes(cx.conn, &cx.shape.name, p, a)?,
                None => false,
            },
        ),
    };
    match (in_before, in_after) {
        (false, false) => Ok(()),
        (false, true) => insert(cx, c, conflicts),
        (true, false) => delete(cx, c, conflicts),
        (true, true) => update(cx, c, conflicts),
    }
}

/// The WHERE clause finding a row: by its rowid (under `rowid`, its name in the replica's
/// table) or by its primary key, compared by the key index's collations (`colls`).
fn key_clause(
    shape: &TableShape,
    colls: &KeyCollations,
    rowid: Option<&str>,
    first_param: usize,
) -> String {
    if let Some(alias) = rowid {
        return format!("{alias} = ?{first_param}");
    }
    shape
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let column = &shape.columns[*k as usize];
            let coll = colls
                .get(column)
                .map(|c| format!(" COLLATE {}", quote(c)))
                .unwrap_or_default();
            format!("{} IS ?{}{coll}", quote(column), first_param + i)
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn key_values<'a>(shape: &TableShape, row: &'a [SqlValue], rowid: &'a SqlValue) -> Vec<SqlArg<'a>> {
    if shape.keyed_by_rowid() {
        vec![SqlArg(rowid)]
    } else {
        shape
            .key
            .iter()
            .map(|k| SqlArg(&row[*k as usize]))
            .collect()
    }
}

/// The kept values of `row`, plus `rowid` for a table keyed by rowid.
fn row_args<'a>(cx: &ChangeCtx, row: &'a [SqlValue], rowid: &'a SqlValue) -> Vec<SqlArg<'a>> {
    let mut args: Vec<SqlArg> = cx.plan.kept.iter().map(|i| SqlArg(&row[*i])).collect();
    if cx.shape.keyed_by_rowid() {
        args.push(SqlArg(rowid));
    }
    args
}

/// Counts a change that does not fit this replica's data; under the stop policy it is the error.
fn conflict(cx: &ChangeCtx, conflicts: &mut u64, what: String) -> ApplyResult {
    *conflicts += 1;
    match cx.policy {
        ConflictPolicy::Stop => Err(ChangeError::Conflict(what)),
        ConflictPolicy::Overwrite => Ok(()),
    }
}

fn insert(cx: &ChangeCtx, c: &RowChange, conflicts: &mut u64) -> ApplyResult {
    let after = c.after.as_ref().expect("insert or update has after values");
    let rowid = SqlValue::Integer(c.new_rowid);
    let args = row_args(cx, after, &rowid);
    let name = &cx.shape.name;
    let mut stmt = cx
        .conn
        .prepare_cached(&cx.plan.insert)
        .map_err(ChangeError::from)?;
    match stmt.execute(params_from_iter(args.iter())) {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, msg))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            let msg = msg.unwrap_or_default();
            conflict(
                cx,
                conflicts,
                format!("inserting into {name} collides with a row here ({msg})"),
            )?;
            cx.conn
                .prepare_cached(&cx.plan.insert_or_replace)
                .and_then(|mut s| s.execute(params_from_iter(args.iter())))
                .map(|_| ())
                .map_err(ChangeError::from)
        }
        Err(e) => Err(ChangeError::sql(format!("inserting into {name}"), e)),
    }
}

fn delete(cx: &ChangeCtx, c: &RowChange, conflicts: &mut u64) -> ApplyResult {
    let before = c
        .before
        .as_ref()
        .expect("update or delete has before values");
    let rowid = SqlValue::Integer(c.old_rowid);
    let name = &cx.shape.name;
    let n = cx
        .conn
        .prepare_cached(&cx.plan.delete)
        .and_then(|mut s| s.execute(params_from_iter(key_values(cx.shape, before, &rowid))))
        .map_err(|e| ChangeError::sql(format!("deleting from {name}"), e))?;
    if n == 0 {
        conflict(
            cx,
            conflicts,
            format!("the row of {name} to delete is missing here"),
        )?;
    }
    Ok(())
}

fn update(cx: &ChangeCtx, c: &RowChange, conflicts: &mut u64) -> ApplyResult {
    let before = c.before.as_ref().expect("update has before values");
    let after = c.after.as_ref().expect("update has after values");
    let (new_rowid, old_rowid) = (
        SqlValue::Integer(c.new_rowid),
        SqlValue::Integer(c.old_rowid),
    );
    let mut args = row_args(cx, after, &new_rowid);
    args.extend(key_values(cx.shape, before, &old_rowid));
    let name = &cx.shape.name;
    let res = cx
        .conn
        .prepare_cached(&cx.plan.update)
        .and_then(|mut s| s.execute(params_from_iter(args.iter())));
    match res {
        Ok(0) => {
            conflict(
                cx,
                conflicts,
                format!("the row of {name} to update is missing here"),
            )?;
            insert(cx, c, &mut 0)
        }
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, msg))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            let msg = msg.unwrap_or_default();
            conflict(
                cx,
                conflicts,
                format!("updating {name} collides with a row here ({msg})"),
            )?;
            let overwrite = ChangeCtx {
                policy: ConflictPolicy::Overwrite,
                ..*cx
            };
            delete(&overwrite, c, &mut 0)?;
            insert(&overwrite, c, &mut 0)
        }
        Err(e) => Err(ChangeError::sql(format!("updating {name}"), e)),
    }
}

fn virtual_table_filtered(table: &str) -> String {
    format!(
        "virtual table {table:?} cannot be filtered by columns or rows (its shadow tables are \
         its storage): keep it whole, or leave it out of --tables"
    )
}

/// The table whose data `name` holds: for a shadow table of a virtual table (fts5's
/// `docs_data` of `docs`), the virtual table; otherwise `name` itself. A filter keeps or drops
/// a virtual table together with its shadow tables.
fn owner_table(conn: &Connection, name: &str) -> rusqlite::Result<String> {
    let kind = |t: &str| -> rusqlite::Result<Option<String>> {
        conn.prepare_cached("SELECT type FROM pragma_table_list(?1) WHERE schema = 'main'")?
            .query_row([t], |r| r.get(0))
            .optional()
    };
    if kind(name)?.as_deref() != Some("shadow") {
        return Ok(name.to_string());
    }
    let mut end = name.len();
    while let Some(i) = name[..end].rfind('_') {
        if kind(&name[..i])?.as_deref() == Some("virtual") {
            return Ok(name[..i].to_string());
        }
        end = i;
    }
    Ok(name.to_string())
}

/// The virtual table a shadow table belongs to: the longest prefix of its name, before an
/// underscore, that is a virtual table.
fn shadow_owner<'a>(
    shadow: &'a str,
    kinds: &std::collections::HashMap<String, String>,
) -> Option<&'a str> {
    let mut end = shadow.len();
    while let Some(i) = shadow[..end].rfind('_') {
        if kinds.get(&shadow[..i]).map(String::as_str) == Some("virtual") {
            return Some(&shadow[..i]);
        }
        end = i;
    }
    None
}
