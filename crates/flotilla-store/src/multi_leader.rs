//! Multi-leader replication in the leader's database: the merge state of every row, the version
//! vector, the hybrid logical clock, the conflicts table, and the two kinds of commit that use
//! them — a local transaction (stamped for other data centres) and a transaction merged in from
//! another data centre (one local transaction, conflicts recorded in it).
//!
//! Everything here is written in the same SQLite transaction as the rows it concerns, so the
//! data, its merge state and the version vector never disagree, whatever crash comes.

use crate::leader_db::{CommitOutcome, LeaderDb};
use crate::sql_arg::SqlArg;
use crate::StoreError;
use flotilla_merge::{
    conflict_id, decode_state, encode_key, encode_state, merge_remote, write_local, ColumnPolicy,
    Conflict, CustomResolver, DeleteRule, RemoteChange, RowState, TablePolicies, Version,
};
use flotilla_types::{
    CounterBase, DdlKind, Epoch, ExchangeStamp, Hlc, Lsn, NodeId, OriginName, RowItem, RowOp,
    RowPayload, SchemaChange, SqlValue, TableShape, VersionVector,
};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;

/// The table every conflict lands in, on every node (user-visible, queryable with SQL).
pub const CONFLICTS_TABLE: &str = "flotilla_conflicts";
/// Conflict policies per table and column; replicated between data centres like data.
pub const POLICIES_TABLE: &str = "flotilla_policies";

const CREATE_INTERNAL: &str = "
CREATE TABLE IF NOT EXISTS _flotilla_ml_origin (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    dc TEXT NOT NULL,
    hlc INTEGER NOT NULL,
    -- The newest commit's stamp: re-attached to the commit if a crash keeps it from the log.
    last_lsn INTEGER NOT NULL DEFAULT 0,
    last_stamp BLOB
);
CREATE TABLE IF NOT EXISTS _flotilla_ml_vv (origin TEXT PRIMARY KEY, lsn INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _flotilla_ml_rows (
    tbl TEXT NOT NULL,
    key BLOB NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (tbl, key)
) WITHOUT ROWID;
-- Rows alive in their merge state but kept out of their table: another row holds a unique
-- value they claim (see unique_clash.rs).
CREATE TABLE IF NOT EXISTS _flotilla_ml_shadowed (
    tbl TEXT NOT NULL,
    key BLOB NOT NULL,
    PRIMARY KEY (tbl, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _flotilla_ml_links (
    peer TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    lsn INTEGER NOT NULL,
    chain INTEGER NOT NULL
) WITHOUT ROWID;
";

const CREATE_CONFLICTS: &str = "CREATE TABLE flotilla_conflicts (
    id TEXT PRIMARY KEY,
    tbl TEXT NOT NULL,
    row_key TEXT NOT NULL,
    col TEXT,
    local_value ANY,
    local_origin TEXT NOT NULL,
    local_lsn INTEGER NOT NULL,
    local_hlc TEXT NOT NULL,
    remote_value ANY,
    remote_origin TEXT NOT NULL,
    remote_lsn INTEGER NOT NULL,
    remote_hlc TEXT NOT NULL,
    policy TEXT NOT NULL,
    winner TEXT NOT NULL,
    value ANY,
    resolved INTEGER NOT NULL,
    resolved_by TEXT
)";

const CREATE_POLICIES: &str = "CREATE TABLE flotilla_policies (
    tbl TEXT NOT NULL,
    col TEXT NOT NULL,
    policy TEXT NOT NULL,
    expression TEXT,
    PRIMARY KEY (tbl, col)
)";

/// Errors of a merge that the caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum MergeApplyError {
    /// The transaction depends on changes not applied here yet: apply those first.
    #[error("waits for {0}")]
    NotReady(String),
    /// The origin's clock is too far ahead of this node's.
    #[error("{origin}'s timestamp is refused: {drift}")]
    Drift {
        origin: OriginName,
        drift: flotilla_types::HlcDrift,
    },
    /// The change cannot be merged here (schema differs, malformed): nothing was applied.
    #[error("{0}")]
    Unfit(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::leader_pipelines::InternalTooLarge> for MergeApplyError {
    fn from(e: crate::leader_pipelines::InternalTooLarge) -> Self {
        MergeApplyError::Unfit(e.0)
    }
}

impl From<rusqlite::Error> for MergeApplyError {
    fn from(e: rusqlite::Error) -> Self {
        MergeApplyError::Store(StoreError::from(e))
    }
}

/// A policy change that is refused (nothing was committed), or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SetPolicyError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::leader_pipelines::InternalTooLarge> for SetPolicyError {
    fn from(e: crate::leader_pipelines::InternalTooLarge) -> Self {
        SetPolicyError::Invalid(e.0)
    }
}

impl From<rusqlite::Error> for SetPolicyError {
    fn from(e: rusqlite::Error) -> Self {
        SetPolicyError::Store(StoreError::from(e))
    }
}

/// What a merged transaction did.
#[derive(Debug)]
pub enum MergeOutcome {
    /// Applied as one local commit.
    Committed {
        commit: Box<CommitOutcome>,
        conflicts: usize,
    },
    /// Applied here before (its origin position is in the version vector): nothing done.
    Duplicate,
}

/// The multi-leader state of a leader's database: its data centre and clock.
#[derive(Debug, Clone)]
pub struct MultiLeader {
    pub dc: OriginName,
    pub hlc: Hlc,
    /// A remote timestamp further ahead of this node's clock is refused.
    pub max_drift_ms: u64,
}

pub(crate) use crate::pipeline_triggers::quote;

/// Whether changes to this table stay on the node (Flotilla's own, and the conflicts table).
/// API tokens are the one internal table data centres exchange: a token made in one data
/// centre (a replication token for the links, an application's) works in every one.
fn local_only(table: &str) -> bool {
    let t = table.to_ascii_lowercase();
    (t.starts_with(crate::INTERNAL_PREFIX) && t != crate::TOKENS_TABLE)
        || t == CONFLICTS_TABLE
        || t.starts_with("sqlite_")
}

pub(crate) fn from_sql(v: rusqlite::types::ValueRef<'_>) -> SqlValue {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(i) => SqlValue::Integer(i),
        ValueRef::Real(f) => SqlValue::Real(f),
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => SqlValue::Text(s.to_string()),
            Err(_) => SqlValue::TextBytes(t.to_vec()),
        },
        ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
    }
}

/// A key as users read it in the conflicts table: its values as a JSON array.
pub(crate) fn key_json(values: &[&SqlValue]) -> String {
    let items: Vec<String> = values
        .iter()
        .map(|v| match v {
            SqlValue::Null => "null".to_string(),
            SqlValue::Integer(i) => i.to_string(),
            SqlValue::Real(f) => format!("{f}"),
            SqlValue::Text(s) => format!("{s:?}"),
            SqlValue::TextBytes(b) => format!("{:?}", String::from_utf8_lossy(b)),
            SqlValue::Blob(b) => format!(
                "\"x'{}'\"",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            ),
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// Evaluates `custom` expressions in SQLite: `SELECT (expr) FROM (SELECT ?1 AS local, ?2 AS remote)`.
struct SqlResolver<'c>(&'c Connection);

impl CustomResolver for SqlResolver<'_> {
    fn resolve(
        &mut self,
        expr: &str,
        local: &SqlValue,
        remote: &SqlValue,
    ) -> Result<SqlValue, String> {
        let sql = format!("SELECT ({expr}) FROM (SELECT ?1 AS local, ?2 AS remote)");
        self.0
            .query_row(&sql, params![SqlArg(local), SqlArg(remote)], |r| {
                Ok(from_sql(r.get_ref(0)?))
            })
            .map_err(|e| format!("{expr}: {e}"))
    }
}

/// The policies of `table` as stored (columns without one: `lww`).
pub(crate) fn table_policies(
    conn: &Connection,
    shape: &TableShape,
) -> Result<TablePolicies, StoreError> {
    let mut p = TablePolicies::lww(shape.columns.len());
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT col, policy, expression FROM {POLICIES_TABLE} WHERE tbl = ?1"
    ))?;
    let rows = stmt.query_map([&shape.name], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
        ))
    })?;
    for row in rows {
        let (col, policy, expression) = row?;
        if col.is_empty() {
            p.delete = DeleteRule::parse(&policy).unwrap_or_default();
            continue;
        }
        if let Some(i) = shape
            .columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case(&col))
        {
            p.columns[i] = ColumnPolicy::parse(&policy, expression.as_deref()).unwrap_or_default();
        }
    }
    Ok(p)
}

/// How far this node has read `peer`'s log, and the chain there (what a replication session
/// to the peer starts from); the start of a log when it has read nothing yet (or the table is
/// not there yet).
pub fn link_position(
    conn: &Connection,
    peer: &OriginName,
) -> Result<(flotilla_types::Position, flotilla_types::Chain), StoreError> {
    let exists: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = '_flotilla_ml_links'",
        [],
        |r| r.get(0),
    )?;
    let found: Option<(i64, i64, i64)> = if exists == 0 {
        None
    } else {
        conn.query_row(
            "SELECT epoch, lsn, chain FROM _flotilla_ml_links WHERE peer = ?1",
            [peer.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?
    };
    Ok(match found {
        Some((e, l, c)) => (
            flotilla_types::Position::new(e as u64, l as u64),
            flotilla_types::Chain(c as u64),
        ),
        None => (
            flotilla_types::Position::new(1, 0),
            flotilla_types::Chain::default(),
        ),
    })
}

/// A multi-leader database's version vector, read on any connection (empty before the
/// multi-leader tables exist).
pub fn read_version_vector(conn: &Connection) -> Result<VersionVector, StoreError> {
    let exists: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = '_flotilla_ml_vv'",
        [],
        |r| r.get(0),
    )?;
    if exists == 0 {
        return Ok(VersionVector::new());
    }
    load_vv(conn)
}

/// Keeps the commit's stamp (and the clock) beside it, in the same transaction.
fn remember_stamp(
    conn: &Connection,
    lsn: Lsn,
    hlc: Hlc,
    stamp: &ExchangeStamp,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE _flotilla_ml_origin SET hlc = ?1, last_lsn = ?2, last_stamp = ?3")?
        .execute(params![
            hlc.0 as i64,
            lsn.0 as i64,
            flotilla_wire::encode_exchange(stamp)
        ])?;
    Ok(())
}

/// The stamp of the commit at `lsn`, if it was the newest stamped one (crash recovery).
pub(crate) fn read_last_stamp(
    conn: &Connection,
    lsn: Lsn,
) -> Result<Option<ExchangeStamp>, StoreError> {
    let exists: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = '_flotilla_ml_origin'",
        [],
        |r| r.get(0),
    )?;
    if exists == 0 {
        return Ok(None);
    }
    let found: Option<Vec<u8>> = conn
        .query_row(
            "SELECT last_stamp FROM _flotilla_ml_origin WHERE last_lsn = ?1 AND last_stamp IS NOT NULL",
            [lsn.0 as i64],
            |r| r.get(0),
        )
        .optional()?;
    found
        .map(|b| {
            flotilla_wire::decode_exchange(&b)
                .map_err(|e| StoreError::Mismatch(format!("the stamp of lsn {lsn}: {e}")))
        })
        .transpose()
}

fn load_vv(conn: &Connection) -> Result<VersionVector, StoreError> {
    let mut vv = VersionVector::new();
    let mut stmt = conn.prepare_cached("SELECT origin, lsn FROM _flotilla_ml_vv")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (o, l) = row?;
        let o = OriginName::new(&o).map_err(|e| StoreError::Mismatch(e.to_string()))?;
        vv.advance(&o, Lsn(l as u64));
    }
    Ok(vv)
}

pub(crate) fn load_state(
    conn: &Connection,
    table: &str,
    key: &[u8],
) -> Result<Option<RowState>, StoreError> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT state FROM _flotilla_ml_rows WHERE tbl = ?1 AND key = ?2")?
        .query_row(params![table, key], |r| r.get(0))
        .optional()?;
    bytes
        .map(|b| {
            decode_state(&b)
                .map_err(|e| StoreError::Mismatch(format!("merge state of a row of {table}: {e}")))
        })
        .transpose()
}

fn save_state(
    conn: &Connection,
    table: &str,
    key: &[u8],
    state: &RowState,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO _flotilla_ml_rows (tbl, key, state) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![table, key, encode_state(state)])?;
    Ok(())
}

/// Why a table cannot be a multi-leader table (`None`: it can): it needs a declared primary
/// key that two data centres do not both count up — not the rowid, nor an INTEGER PRIMARY KEY
/// (an alias of the rowid, which SQLite numbers max + 1 in each data centre alike).
fn key_problem(conn: &Connection, table: &str) -> Result<Option<String>, StoreError> {
    let keys: Vec<(String, String)> = conn
        .prepare_cached("SELECT name, type FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")?
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let without_rowid: bool = conn
        .prepare_cached("SELECT wr FROM pragma_table_list WHERE name = ?1 AND schema = 'main'")?
        .query_row([table], |r| r.get::<_, i64>(0))
        .optional()?
        .is_some_and(|wr| wr != 0);
    let advice = "use a key no other data centre makes, such as id TEXT PRIMARY KEY DEFAULT \
                  (lower(hex(randomblob(16)))), or a key that includes the data centre";
    Ok(match keys.as_slice() {
        [] => Some(format!(
            "table {table} has no PRIMARY KEY: on a multi-leader node every table needs one \
             ({advice})"
        )),
        [(name, ty)] if !without_rowid && ty.eq_ignore_ascii_case("INTEGER") => Some(format!(
            "table {table}'s key {name} is an INTEGER PRIMARY KEY, which SQLite numbers the same \
             way in every data centre: two data centres would make different rows with the same \
             key ({advice})"
        )),
        _ => None,
    })
}

/// Why a table (its columns and constraints) cannot be merged between data centres: a merge
/// combines rows no single data centre wrote together, so a constraint between columns or rows
/// could refuse it after both sides accepted their halves, and stop the exchange for good.
fn table_problem(conn: &Connection, table: &str) -> Result<Option<String>, StoreError> {
    let virtual_generated: Option<String> = conn
        .prepare_cached("SELECT name FROM pragma_table_xinfo(?1) WHERE hidden = 2 LIMIT 1")?
        .query_row([table], |r| r.get(0))
        .optional()?;
    if let Some(c) = virtual_generated {
        return Ok(Some(format!(
            "column {c} of {table} is a VIRTUAL generated column, which cannot be replicated row \
             by row: declare it STORED"
        )));
    }
    let references: Option<String> = conn
        .prepare_cached("SELECT \"table\" FROM pragma_foreign_key_list(?1) LIMIT 1")?
        .query_row([table], |r| r.get(0))
        .optional()?;
    if let Some(parent) = references {
        return Ok(Some(format!(
            "{table} has a foreign key (to {parent}): on a multi-leader node a row and the row it \
             refers to can be deleted and inserted in two data centres at once, and the merge \
             could then neither keep nor refuse them alike everywhere; keep the reference as a \
             plain column"
        )));
    }
    let sql: Option<String> = conn
        .prepare_cached("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1")?
        .query_row([table], |r| r.get(0))
        .optional()?;
    if sql.is_some_and(|s| has_check(&s)) {
        return Ok(Some(format!(
            "{table} has a CHECK constraint: on a multi-leader node two data centres' writes that \
             each pass it can merge into a row that does not (two decrements of a counter), and \
             the merge could not be refused alike everywhere; check in the application instead"
        )));
    }
    Ok(None)
}

/// Whether a CREATE TABLE statement has a CHECK constraint (outside quotes and comments).
fn has_check(sql: &str) -> bool {
    let mut words = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                }
                words.push(' ');
            }
            '[' => {
                for d in chars.by_ref() {
                    if d == ']' {
                        break;
                    }
                }
                words.push(' ');
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
            }
            '(' | ')' | ',' => {
                words.push(' ');
                words.push(c);
                words.push(' ');
            }
            c => words.push(c.to_ascii_lowercase()),
        }
    }
    let tokens: Vec<&str> = words.split_whitespace().collect();
    tokens.windows(2).any(|w| w[0] == "check" && w[1] == "(")
}

/// Why a schema change cannot be made on a multi-leader node (`None`: it can). What the other
/// data centres could not merge in order is refused where it is made, not left to diverge.
pub(crate) fn ddl_problem(
    conn: &Connection,
    kind: DdlKind,
    table: &str,
    sql: &str,
) -> Result<Option<String>, StoreError> {
    if local_only(table) {
        return Ok(None);
    }
    let words: Vec<String> = crate::sql_text::without_leading_comments(sql)
        .split_whitespace()
        .take(6)
        .map(str::to_ascii_lowercase)
        .collect();
    let why = match kind {
        DdlKind::CreateTable => {
            if let Some(why) = key_problem(conn, table)? {
                return Ok(Some(why));
            }
            return table_problem(conn, table);
        }
        DdlKind::CreateIndex | DdlKind::CreateView | DdlKind::DropView | DdlKind::SetPragma => {
            return Ok(None)
        }
        DdlKind::AlterTable if words.get(3).is_some_and(|w| w == "add") => {
            return table_problem(conn, table)
        }
        DdlKind::AlterTable
            if words.get(3).is_some_and(|w| w == "rename")
                && words.get(4).is_some_and(|w| w == "to") =>
        {
            "a table cannot be renamed on a multi-leader node: other data centres may still be \
             writing to it under its name"
        }
        DdlKind::AlterTable => {
            "only ADD COLUMN changes a table on a multi-leader node: a renamed \
                                or dropped column would meet rows still written the old way in \
                                other data centres"
        }
        DdlKind::DropTable => {
            "a table cannot be dropped on a multi-leader node: other data \
                               centres may still be writing to it (delete its rows instead)"
        }
        DdlKind::DropIndex => "an index cannot be dropped on a multi-leader node yet",
        DdlKind::CreateTrigger | DdlKind::DropTrigger => {
            "triggers are not allowed on a \
            multi-leader node: a trigger would run again in every data centre as the changes it \
            made are merged there"
        }
        DdlKind::CreateVirtualTable | DdlKind::DropVirtualTable => {
            "virtual tables are not replicated between data centres"
        }
    };
    Ok(Some(why.to_string()))
}

/// The key values of a change's row and the key as stored.
fn row_key<'a>(
    shape: &TableShape,
    image: &'a [SqlValue],
) -> Result<(Vec<&'a SqlValue>, Vec<u8>), StoreError> {
    if shape.keyed_by_rowid() {
        return Err(StoreError::Refused(format!(
            "table {} has no PRIMARY KEY: on a multi-leader node every table needs one, and not \
             an INTEGER one that two data centres would both count up (use a text key such as \
             id TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(16))))",
            shape.name
        )));
    }
    let values: Vec<&SqlValue> = shape.key.iter().map(|k| &image[*k as usize]).collect();
    let key = encode_key(values.iter().copied());
    Ok((values, key))
}

/// Whether a table has open conflicts (most never do: checked once per transaction).
fn has_open_conflicts(conn: &Connection, table: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT 1 FROM {CONFLICTS_TABLE} WHERE tbl = ?1 AND resolved = 0 LIMIT 1"
        ))?
        .query_row([table], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Marks the open conflicts of a column resolved when a write saw both sides of them.
fn resolve_seen(
    conn: &Connection,
    table: &str,
    key_json: &str,
    column: &str,
    by: &Version,
    deps: Option<&VersionVector>,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, local_origin, local_lsn, remote_origin, remote_lsn FROM {CONFLICTS_TABLE} \
         WHERE tbl = ?1 AND row_key = ?2 AND col = ?3 AND resolved = 0"
    ))?;
    let open: Vec<(String, String, i64, String, i64)> = stmt
        .query_map(params![table, key_json, column], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    for (id, lo, ll, ro, rl) in open {
        let seen = |o: &str, l: i64| {
            deps.is_none_or(|d| OriginName::new(o).is_ok_and(|o| d.covers(&o, Lsn(l as u64))))
        };
        if seen(&lo, ll) && seen(&ro, rl) {
            conn.prepare_cached(&format!(
                "UPDATE {CONFLICTS_TABLE} SET resolved = 1, resolved_by = ?2 WHERE id = ?1"
            ))?
            .execute(params![id, by.to_string()])?;
        }
    }
    Ok(())
}

impl LeaderDb {
    /// Makes this database a multi-leader one of data centre `dc` (creating its tables in a
    /// commit of its own the first time, returned for the log). A database of another data
    /// centre is refused.
    pub fn enable_multi_leader(
        &mut self,
        dc: &OriginName,
        max_drift_ms: u64,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<Option<CommitOutcome>, StoreError> {
        let rules = self.rules.clone();
        let known: Option<(String, i64)> = rules.internal(|| {
            let exists: bool = self.conn.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = '_flotilla_ml_origin'",
                [],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )?;
            if !exists {
                return Ok::<_, rusqlite::Error>(None);
            }
            self.conn
                .query_row("SELECT dc, hlc FROM _flotilla_ml_origin", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
        })?;
        if let Some((known_dc, hlc)) = known {
            if known_dc != dc.as_str() {
                return Err(StoreError::Mismatch(format!(
                    "this database is data centre {known_dc}'s, not {dc}'s: start with --dc {known_dc}, or from an empty data directory"
                )));
            }
            self.multi_leader = Some(MultiLeader {
                dc: dc.clone(),
                hlc: Hlc(hlc as u64),
                max_drift_ms,
            });
            return Ok(None);
        }
        let now_ms = now_us / 1000;
        let dc_name = dc.to_string();
        let (_, out) = self
            .internal_commit::<_, MergeApplyError>(
                "enable multi-leader",
                epoch,
                origin,
                now_us,
                |db, _| {
                    db.conn.execute_batch(CREATE_INTERNAL)?;
                    db.conn.execute(
                        "INSERT INTO _flotilla_ml_origin (id, dc, hlc) VALUES (1, ?1, ?2)",
                        params![dc_name, Hlc::ZERO.tick(now_ms).0 as i64],
                    )?;
                    for (table, sql) in [
                        (CONFLICTS_TABLE, CREATE_CONFLICTS),
                        (POLICIES_TABLE, CREATE_POLICIES),
                    ] {
                        db.conn.execute_batch(sql)?;
                        db.capture.schema_changed(SchemaChange {
                            kind: DdlKind::CreateTable,
                            table: table.to_string(),
                            sql: sql.to_string(),
                        });
                    }
                    Ok(())
                },
            )
            .map_err(|e| StoreError::Refused(e.to_string()))?;
        self.multi_leader = Some(MultiLeader {
            dc: dc.clone(),
            hlc: Hlc::ZERO.tick(now_ms),
            max_drift_ms,
        });
        Ok(Some(out))
    }

    /// The data centre this database belongs to, if it is a multi-leader one (read before
    /// [`LeaderDb::enable_multi_leader`], to refuse a start with the wrong `--dc` or none).
    pub fn data_centre(&self) -> Result<Option<String>, StoreError> {
        self.rules.internal(|| {
            let exists: i64 = self.conn.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = '_flotilla_ml_origin'",
                [],
                |r| r.get(0),
            )?;
            if exists == 0 {
                return Ok(None);
            }
            Ok(self
                .conn
                .query_row("SELECT dc FROM _flotilla_ml_origin", [], |r| r.get(0))
                .optional()?)
        })
    }

    pub fn multi_leader(&self) -> Option<&MultiLeader> {
        self.multi_leader.as_ref()
    }

    /// This replica's version vector.
    pub fn version_vector(&self) -> Result<VersionVector, StoreError> {
        self.rules.internal(|| load_vv(&self.conn))
    }

    /// How far this node has read `peer`'s log (0: not yet).
    pub fn link_position(&self, peer: &OriginName) -> Result<Lsn, StoreError> {
        Ok(self
            .rules
            .internal(|| link_position(&self.conn, peer))?
            .0
            .lsn)
    }

    /// Ends the open transaction's capture: on a multi-leader node, first records the merge
    /// state of its row changes and sets its stamp (`pending_exchange`). What that adds to
    /// the transaction (rows a unique clash had hidden, shown again; conflicts resolved) is
    /// captured for this data centre's followers, while the stamp keeps the changes as the
    /// client made them: other data centres derive the rest themselves.
    pub(crate) fn stamp_and_finish(
        &mut self,
        lsn: Lsn,
        now_us: u64,
    ) -> Result<Vec<u8>, StoreError> {
        if self.multi_leader.is_none() {
            return Ok(self.capture.finish());
        }
        let made = self.capture.peek();
        let stamp = self.stamp_local(&made, lsn, now_us)?;
        let rows = self.capture.finish();
        let stamp = match stamp {
            Some(mut s) if rows != made => {
                s.original = Some(flotilla_wire::decode_rows(&made).map_err(|e| {
                    StoreError::Capture(format!("the transaction's own row changes: {e}"))
                })?);
                self.rules
                    .internal(|| remember_stamp(&self.conn, lsn, s.hlc, &s))?;
                Some(s)
            }
            other => other,
        };
        self.pending_exchange = stamp;
        Ok(rows)
    }

    /// Records the merge state of a local transaction's row changes (in the open transaction,
    /// before its commit) and returns its stamp for other data centres. `None` on a node that
    /// is not multi-leader, or a transaction that changed no replicated row.
    pub(crate) fn stamp_local(
        &mut self,
        encoded_rows: &[u8],
        lsn: Lsn,
        now_us: u64,
    ) -> Result<Option<flotilla_types::ExchangeStamp>, StoreError> {
        let Some(ml) = self.multi_leader.clone() else {
            return Ok(None);
        };
        let payload = flotilla_wire::decode_rows(encoded_rows)
            .map_err(|e| StoreError::Capture(format!("the transaction's own row changes: {e}")))?;
        let replicated = payload.items.iter().any(|i| match i {
            RowItem::Change(c) => !local_only(&payload.shape(c).name),
            RowItem::Schema(s) => !local_only(&s.table),
        });
        if !replicated {
            return Ok(None);
        }
        let hlc = ml.hlc.tick(now_us / 1000);
        let version = Version {
            hlc,
            origin: ml.dc.clone(),
            lsn,
        };
        let conn = &self.conn;
        let stamp = self
            .rules
            .internal(|| -> Result<ExchangeStamp, StoreError> {
                let deps = load_vv(conn)?;
                let mut counter_bases = Vec::new();
                let mut policies: HashMap<String, TablePolicies> = HashMap::new();
                let mut checked: std::collections::HashSet<String> = Default::default();
                let mut open_tables: HashMap<String, bool> = HashMap::new();
                for (item, it) in payload.items.iter().enumerate() {
                    let table = match it {
                        RowItem::Change(c) => &payload.shape(c).name,
                        RowItem::Schema(s) if s.kind == DdlKind::CreateTable => &s.table,
                        RowItem::Schema(_) => continue,
                    };
                    if !local_only(table) && checked.insert(table.clone()) {
                        if let Some(why) = key_problem(conn, table)? {
                            return Err(StoreError::Refused(why));
                        }
                    }
                    let RowItem::Change(c) = it else { continue };
                    let shape = payload.shape(c);
                    if local_only(&shape.name) {
                        continue;
                    }
                    let image = c.after.as_deref().or(c.before.as_deref()).unwrap_or(&[]);
                    let (key_values, key) = row_key(shape, image)?;
                    if !policies.contains_key(&shape.name) {
                        policies.insert(shape.name.clone(), table_policies(conn, shape)?);
                    }
                    let p = &policies[&shape.name];
                    let state = load_state(conn, &shape.name, &key)?;
                    let w = write_local(
                        state,
                        c.op,
                        c.before.as_deref(),
                        c.after.as_deref(),
                        &version,
                        p,
                    );
                    for (column, value) in w.counter_bases {
                        counter_bases.push(CounterBase {
                            item: item as u32,
                            column: column as u16,
                            value,
                        });
                    }
                    save_state(conn, &shape.name, &key, &w.state)?;
                    // A write made here saw every open conflict of the columns it wrote.
                    let open = match open_tables.get(&shape.name) {
                        Some(o) => *o,
                        None => {
                            let o = has_open_conflicts(conn, &shape.name)?;
                            open_tables.insert(shape.name.clone(), o);
                            o
                        }
                    };
                    if c.op != RowOp::Delete && open {
                        let kj = key_json(&key_values);
                        for (i, col) in shape.columns.iter().enumerate() {
                            let changed = c
                                .before
                                .as_ref()
                                .is_none_or(|b| b[i] != c.after.as_ref().expect("after")[i]);
                            if changed {
                                resolve_seen(conn, &shape.name, &kj, col, &version, None)?;
                            }
                        }
                    }
                }
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO _flotilla_ml_vv (origin, lsn) VALUES (?1, ?2)",
                )?
                .execute(params![ml.dc.as_str(), lsn.0 as i64])?;
                let stamp = ExchangeStamp {
                    origin: ml.dc.clone(),
                    origin_lsn: lsn,
                    hlc,
                    deps,
                    counter_bases,
                    original: None,
                };
                remember_stamp(conn, lsn, hlc, &stamp)?;
                Ok(stamp)
            })?;
        if let Some(m) = self.multi_leader.as_mut() {
            m.hlc = hlc;
        }
        // The conflicts it resolved reach this data centre's followers.
        let rules = self.rules.clone();
        rules.internal(|| self.capture.statement_done(&self.conn))?;
        // A delete, or a changed unique value, may free a value a shadowed row claims.
        rules.internal(|| reconsider_shadowed(self, &payload))?;
        Ok(Some(stamp))
    }
}

/// What merging into one table needs, worked out once per transaction.
struct TablePlan {
    /// The table as it is here (the change's shape, plus columns added here since).
    shape: TableShape,
    /// The defaults of the columns the change's shape lacks.
    pad: Vec<SqlValue>,
    sql: TableSql,
    policies: TablePolicies,
    /// The table has unique indexes besides its key (clashes are possible).
    unique: bool,
    /// The table has open (keep-both) conflicts a write may resolve.
    open_conflicts: bool,
}

impl TablePlan {
    fn new(conn: &Connection, remote: &TableShape) -> Result<TablePlan, MergeApplyError> {
        let here: Vec<(String, Option<String>)> = conn
            .prepare_cached(
                "SELECT name, dflt_value FROM pragma_table_xinfo(?1) WHERE hidden = 0 ORDER BY cid",
            )?
            .query_map([&remote.name], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let names: Vec<&str> = here.iter().map(|(n, _)| n.as_str()).collect();
        let prefix = remote.columns.len() <= here.len()
            && remote
                .columns
                .iter()
                .zip(&names)
                .all(|(a, b)| a.eq_ignore_ascii_case(b));
        if !prefix {
            return Err(MergeApplyError::Unfit(format!(
                "a change of {} names the columns {} but the table here has {}",
                remote.name,
                remote.columns.join(", "),
                names.join(", ")
            )));
        }
        let mut pad = Vec::new();
        for (_, default) in &here[remote.columns.len()..] {
            pad.push(match default {
                None => SqlValue::Null,
                Some(expr) => conn
                    .query_row(&format!("SELECT {expr}"), [], |r| {
                        Ok(from_sql(r.get_ref(0)?))
                    })
                    .map_err(|e| {
                        MergeApplyError::Unfit(format!(
                            "the default {expr} of a column of {}: {e}",
                            remote.name
                        ))
                    })?,
            });
        }
        let shape = TableShape {
            name: remote.name.clone(),
            columns: here.iter().map(|(n, _)| n.clone()).collect(),
            key: remote.key.clone(),
        };
        Ok(TablePlan {
            sql: TableSql::new(&shape),
            policies: table_policies(conn, &shape)?,
            unique: crate::unique_clash::has_unique_indexes(conn, &shape)?,
            open_conflicts: has_open_conflicts(conn, &shape.name)?,
            shape,
            pad,
        })
    }
}

/// SQL to read, write and delete a table's rows by key.
struct TableSql {
    select: String,
    upsert: String,
    delete: String,
}

impl TableSql {
    fn new(shape: &TableShape) -> TableSql {
        let t = quote(&shape.name);
        let cols: Vec<String> = shape.columns.iter().map(|c| quote(c)).collect();
        let keys: Vec<usize> = shape.key.iter().map(|k| *k as usize).collect();
        let key_where = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{} IS ?{}", cols[*k], i + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        let placeholders = (1..=cols.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sets: Vec<String> = (0..cols.len())
            .filter(|i| !keys.contains(i))
            .map(|i| format!("{c} = excluded.{c}", c = cols[i]))
            .collect();
        let key_cols = keys
            .iter()
            .map(|k| cols[*k].clone())
            .collect::<Vec<_>>()
            .join(", ");
        let on_conflict = if sets.is_empty() {
            format!("ON CONFLICT ({key_cols}) DO NOTHING")
        } else {
            format!("ON CONFLICT ({key_cols}) DO UPDATE SET {}", sets.join(", "))
        };
        TableSql {
            select: format!("SELECT {} FROM {t} WHERE {key_where}", cols.join(", ")),
            upsert: format!(
                "INSERT INTO {t} ({}) VALUES ({placeholders}) {on_conflict}",
                cols.join(", ")
            ),
            delete: format!("DELETE FROM {t} WHERE {key_where}"),
        }
    }
}

/// Runs a schema change that came from another data centre. Creating what exists already in
/// the same form is a no-op (two data centres may create the same table); anything else
/// that does not fit is refused, the whole transaction with it.
fn apply_remote_schema(db: &mut LeaderDb, s: &SchemaChange) -> Result<(), MergeApplyError> {
    if local_only(&s.table) {
        return Ok(());
    }
    match s.kind {
        DdlKind::CreateTable | DdlKind::CreateIndex => {
            let name = create_target(&s.sql).unwrap_or_else(|| s.table.clone());
            let existing: Option<String> = db
                .conn
                .query_row(
                    "SELECT sql FROM sqlite_schema WHERE name = ?1 COLLATE NOCASE",
                    [&name],
                    |r| r.get(0),
                )
                .optional()?;
            match existing {
                Some(sql) if normalise(&sql) == normalise(&s.sql) => return Ok(()),
                // Two data centres made an index of one name in two forms at once: an index
                // that is not unique changes no row, so each keeps its own, and the clash is
                // recorded (a unique one, or a table, could not be merged alike everywhere).
                Some(sql)
                    if s.kind == DdlKind::CreateIndex
                        && !is_unique_index(&sql)
                        && !is_unique_index(&s.sql) =>
                {
                    let id = conflict_id(
                        &s.table,
                        name.as_bytes(),
                        Some("index"),
                        &Version::zero(),
                        &Version::zero(),
                    );
                    db.conn.execute(
                        &format!(
                            "INSERT OR IGNORE INTO {CONFLICTS_TABLE} (id, tbl, row_key, col, local_value, \
                             local_origin, local_lsn, local_hlc, remote_value, remote_origin, remote_lsn, \
                             remote_hlc, policy, winner, value, resolved) VALUES (?1, ?2, '[]', ?3, ?4, \
                             '', 0, '', ?5, '', 0, '', 'keep-each-index', 'local', ?4, 1)"
                        ),
                        params![id, s.table, format!("index {name}"), sql, s.sql],
                    )?;
                    return Ok(());
                }
                Some(sql) => {
                    return Err(MergeApplyError::Unfit(format!(
                        "{name} exists here in another form ({sql}) than the one that arrived ({})",
                        s.sql
                    )))
                }
                None => {}
            }
        }
        DdlKind::AlterTable | DdlKind::SetPragma => {}
        DdlKind::CreateView => {
            let exists: i64 = db.conn.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'view' AND name = ?1 COLLATE NOCASE",
                [&s.table],
                |r| r.get(0),
            )?;
            if exists > 0 {
                return Ok(());
            }
        }
        DdlKind::DropView => {
            let exists: i64 = db.conn.query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'view' AND name = ?1 COLLATE NOCASE",
                [&s.table],
                |r| r.get(0),
            )?;
            if exists == 0 {
                return Ok(());
            }
        }
        other => {
            return Err(MergeApplyError::Unfit(format!(
                "a {} ({}) cannot be merged between data centres",
                other.as_str(),
                s.sql
            )))
        }
    }
    match db.conn.execute_batch(&s.sql) {
        Ok(()) => {}
        // The same column added on both sides.
        Err(e)
            if s.kind == DdlKind::AlterTable && e.to_string().contains("duplicate column name") =>
        {
            return Ok(())
        }
        Err(e) => return Err(MergeApplyError::Unfit(format!("{}: {e}", s.sql))),
    }
    db.capture.forget_shapes();
    db.capture.schema_changed(s.clone());
    Ok(())
}

fn is_unique_index(sql: &str) -> bool {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(2)
        .map(str::to_ascii_lowercase)
        .collect();
    words.get(1).is_some_and(|w| w == "unique")
}

fn normalise(sql: &str) -> String {
    sql.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase()
}

/// The name a `CREATE TABLE` / `CREATE INDEX` statement creates.
fn create_target(sql: &str) -> Option<String> {
    let words: Vec<&str> = sql
        .split(|c: char| c.is_whitespace() || c == '(')
        .filter(|w| !w.is_empty())
        .collect();
    let mut i = words
        .iter()
        .position(|w| w.eq_ignore_ascii_case("table") || w.eq_ignore_ascii_case("index"))?
        + 1;
    if words.get(i).is_some_and(|w| w.eq_ignore_ascii_case("if")) {
        i += 3;
    }
    let name = words.get(i)?;
    let name = name.rsplit('.').next().unwrap_or(name);
    Some(
        name.trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']')
            .to_string(),
    )
}

impl LeaderDb {
    /// Merges a transaction from another data centre (`changes`, stamped `stamp`, read at
    /// position and chain `peer_at` of `peer`'s log) as one local commit: the rows it changes here, their merge
    /// state, the conflicts it met, the version vector and the link position, all together.
    #[allow(clippy::too_many_arguments)]
    pub fn commit_merge(
        &mut self,
        stamp: &ExchangeStamp,
        changes: &RowPayload,
        peer: &OriginName,
        peer_at: (flotilla_types::Position, flotilla_types::Chain),
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<MergeOutcome, MergeApplyError> {
        let Some(ml) = self.multi_leader.clone() else {
            return Err(MergeApplyError::Unfit(
                "this node is not a multi-leader one (no --dc)".into(),
            ));
        };
        let vv = self.version_vector()?;
        if stamp.origin == ml.dc {
            // This data centre's own transaction, come back round a ring or star: merged
            // already. One beyond what it made was made by another node that calls itself
            // this data centre.
            if !vv.covers(&ml.dc, stamp.origin_lsn) {
                return Err(MergeApplyError::Unfit(format!(
                    "a transaction stamped by data centre {} at {} arrived from {peer}, but this \
                     node is {} and made nothing there: another node calls itself {}",
                    stamp.origin, stamp.origin_lsn, ml.dc, ml.dc
                )));
            }
            return Ok(MergeOutcome::Duplicate);
        }
        if vv.covers(&stamp.origin, stamp.origin_lsn) {
            return Ok(MergeOutcome::Duplicate);
        }
        #[cfg(feature = "sim-bugs")]
        let ignore_deps = crate::injected_bugs::MERGE_IGNORES_DEPENDENCIES
            .load(std::sync::atomic::Ordering::Relaxed);
        #[cfg(not(feature = "sim-bugs"))]
        let ignore_deps = false;
        if !vv.dominates(&stamp.deps) && !ignore_deps {
            let missing: Vec<String> = vv
                .missing(&stamp.deps)
                .map(|(o, l)| format!("{o} up to {l}"))
                .collect();
            return Err(MergeApplyError::NotReady(missing.join(", ")));
        }
        let hlc = ml
            .hlc
            .receive(stamp.hlc, now_us / 1000, ml.max_drift_ms)
            .map_err(|drift| MergeApplyError::Drift {
                origin: stamp.origin.clone(),
                drift,
            })?;
        let version = Version {
            hlc: stamp.hlc,
            origin: stamp.origin.clone(),
            lsn: stamp.origin_lsn,
        };
        let what = format!("merge {}/{}", stamp.origin, stamp.origin_lsn);
        let (conflicts, out) =
            self.internal_commit::<_, MergeApplyError>(&what, epoch, origin, now_us, |db, lsn| {
                let mut conflicts = 0;
                // Per table (and schema: a schema change in the transaction starts afresh).
                let mut plans: HashMap<String, TablePlan> = HashMap::new();
                for (item, it) in changes.items.iter().enumerate() {
                    match it {
                        RowItem::Schema(s) => {
                            plans.clear();
                            db.capture.statement_done(&db.conn)?;
                            apply_remote_schema(db, s)?
                        }
                        RowItem::Change(c) => {
                            let shape = changes.shape(c);
                            if local_only(&shape.name) {
                                continue;
                            }
                            if !plans.contains_key(&shape.name) {
                                if shape.name.eq_ignore_ascii_case(crate::TOKENS_TABLE) {
                                    // Made by a data centre's first token, not as a schema
                                    // change: each data centre makes it when it needs it.
                                    db.conn.execute_batch(crate::leader_tokens::CREATE_TOKENS)?;
                                }
                                plans.insert(shape.name.clone(), TablePlan::new(&db.conn, shape)?);
                            }
                            let bases: Vec<(usize, SqlValue)> = stamp
                                .counter_bases
                                .iter()
                                .filter(|b| b.item as usize == item)
                                .map(|b| (b.column as usize, b.value.clone()))
                                .collect();
                            conflicts += merge_change(
                                db,
                                shape,
                                c,
                                &bases,
                                &version,
                                &stamp.deps,
                                &plans[&shape.name],
                            )?;
                        }
                    }
                }
                db.conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO _flotilla_ml_vv (origin, lsn) VALUES (?1, ?2)",
                    )?
                    .execute(params![stamp.origin.as_str(), stamp.origin_lsn.0 as i64])?;
                db.conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO _flotilla_ml_links (peer, epoch, lsn, chain) \
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![
                        peer.as_str(),
                        peer_at.0.epoch.0 as i64,
                        peer_at.0.lsn.0 as i64,
                        peer_at.1 .0 as i64
                    ])?;
                db.capture.statement_done(&db.conn)?;
                reconsider_shadowed(db, changes)?;
                let mut passed_on = stamp.clone();
                passed_on.original = Some(changes.clone());
                remember_stamp(&db.conn, lsn, hlc, &passed_on)?;
                db.pending_exchange = Some(passed_on);
                Ok(conflicts)
            })?;
        if let Some(m) = self.multi_leader.as_mut() {
            m.hlc = hlc;
        }
        Ok(MergeOutcome::Committed {
            commit: Box::new(out),
            conflicts,
        })
    }
}

/// Shows again the shadowed rows of the tables a transaction changed whose unique values are
/// free now (a delete, or a changed value, let them go).
fn reconsider_shadowed(db: &mut LeaderDb, changes: &RowPayload) -> Result<(), StoreError> {
    let mut seen: Vec<&str> = Vec::new();
    for it in &changes.items {
        let RowItem::Change(c) = it else { continue };
        let shape = changes.shape(c);
        if local_only(&shape.name) || seen.contains(&shape.name.as_str()) {
            continue;
        }
        seen.push(&shape.name);
        if crate::unique_clash::has_shadowed(&db.conn, &shape.name)? {
            // The table as it is here (columns may have been added since the change).
            let plan =
                TablePlan::new(&db.conn, shape).map_err(|e| StoreError::Apply(e.to_string()))?;
            crate::unique_clash::reconsider(db, &plan.shape, &plan.sql.upsert)?;
        }
    }
    Ok(())
}

/// Merges one row change into the table, its merge state and the conflicts table. Returns the
/// number of conflicts recorded.
#[allow(clippy::too_many_arguments)]
fn merge_change(
    db: &mut LeaderDb,
    _remote_shape: &TableShape,
    c: &flotilla_types::RowChange,
    counter_bases: &[(usize, SqlValue)],
    version: &Version,
    deps: &VersionVector,
    plan: &TablePlan,
) -> Result<usize, MergeApplyError> {
    let (sql, policies, shape) = (&plan.sql, &plan.policies, &plan.shape);
    // A change made before a column was added there (the ADD COLUMN arrived here first): the
    // new columns hold their default in that data centre's row too, and this change did not
    // write them.
    let padded;
    let c = if plan.pad.is_empty() {
        c
    } else {
        let pad = |v: &Option<Vec<SqlValue>>| {
            v.as_ref().map(|v| {
                let mut v = v.clone();
                v.extend(plan.pad.iter().cloned());
                v
            })
        };
        padded = flotilla_types::RowChange {
            before: pad(&c.before),
            after: pad(&c.after),
            ..c.clone()
        };
        &padded
    };
    let image = c.after.as_deref().or(c.before.as_deref()).unwrap_or(&[]);
    let (key_values, key) =
        row_key(shape, image).map_err(|e| MergeApplyError::Unfit(e.to_string()))?;
    let key_params: Vec<SqlArg> = key_values.iter().map(|v| SqlArg(v)).collect();
    let read_here = |db: &LeaderDb| -> Result<Option<Vec<SqlValue>>, MergeApplyError> {
        Ok(db
            .conn
            .prepare_cached(&sql.select)
            .map_err(|e| {
                MergeApplyError::Unfit(format!(
                    "table {} does not fit the change here: {e}",
                    shape.name
                ))
            })?
            .query_row(rusqlite::params_from_iter(key_params.iter()), |r| {
                (0..shape.columns.len())
                    .map(|i| Ok(from_sql(r.get_ref(i)?)))
                    .collect()
            })
            .optional()?)
    };
    let stored = load_state(&db.conn, &shape.name, &key)?;
    // What the table holds for the row: its merge state says so (an existing row's values are
    // the state's), unless a unique clash may keep it out, or it predates the merge state.
    let (state, here) = match stored {
        Some(s) if !plan.unique && s.cells.len() == shape.columns.len() => {
            let here = s.alive(policies.delete).then(|| s.values());
            (Some(s), here)
        }
        Some(s) => {
            let here = read_here(db)?;
            (Some(s), here)
        }
        None => {
            let here = read_here(db)?;
            (here.as_deref().map(RowState::settled), here)
        }
    };
    let rule = policies.delete;
    let merged = merge_remote(
        state,
        RemoteChange {
            op: c.op,
            before: c.before.as_deref(),
            after: c.after.as_deref(),
            counter_bases,
        },
        version,
        deps,
        policies,
        &mut SqlResolver(&db.conn),
    )
    .map_err(|e| MergeApplyError::Unfit(format!("{} in {}: {e}", c.op.as_str(), shape.name)))?;
    let now_alive = merged.state.alive(rule);
    let values = merged.state.values();
    if now_alive && here.as_ref() != Some(&values) {
        if plan.unique {
            // A unique value another row holds may keep it out (see unique_clash.rs).
            crate::unique_clash::place(db, shape, &sql.upsert, &merged.state, here.is_some())?;
        } else {
            let args: Vec<SqlArg> = values.iter().map(SqlArg).collect();
            db.conn
                .prepare_cached(&sql.upsert)?
                .execute(rusqlite::params_from_iter(args.iter()))?;
        }
    } else if !now_alive {
        if here.is_some() {
            db.conn
                .prepare_cached(&sql.delete)?
                .execute(rusqlite::params_from_iter(key_params.iter()))?;
        }
        crate::unique_clash::forget(&db.conn, &shape.name, &key)?;
    }
    // (The capture takes these writes in at the end of the transaction's changes: see
    // `commit_merge`.)
    save_state(&db.conn, &shape.name, &key, &merged.state)?;
    let kj = key_json(&key_values);
    // A key column is the row's identity: two inserts of one key are writes of the same row,
    // and only its other columns can conflict.
    for conflict in merged
        .conflicts
        .iter()
        .filter(|c| c.column.is_none_or(|i| !shape.key.contains(&(i as u16))))
    {
        record_conflict(&db.conn, shape, &key, &kj, conflict)?;
    }
    if let (Some(before), Some(after), true) =
        (c.before.as_deref(), c.after.as_deref(), plan.open_conflicts)
    {
        for (i, col) in shape.columns.iter().enumerate() {
            if before[i] != after[i] {
                resolve_seen(&db.conn, &shape.name, &kj, col, version, Some(deps))?;
            }
        }
    }
    Ok(merged
        .conflicts
        .iter()
        .filter(|c| c.column.is_none_or(|i| !shape.key.contains(&(i as u16))))
        .count())
}

fn record_conflict(
    conn: &Connection,
    shape: &TableShape,
    key: &[u8],
    key_json: &str,
    c: &Conflict,
) -> Result<(), StoreError> {
    let col = c.column.map(|i| shape.columns[i].as_str());
    let id = conflict_id(&shape.name, key, col, &c.local.version, &c.remote.version);
    const NULL: SqlValue = SqlValue::Null;
    fn v(x: &Option<SqlValue>) -> SqlArg<'_> {
        SqlArg(x.as_ref().unwrap_or(&NULL))
    }
    conn.prepare_cached(&format!(
        "INSERT OR IGNORE INTO {CONFLICTS_TABLE} (id, tbl, row_key, col, local_value, local_origin, \
         local_lsn, local_hlc, remote_value, remote_origin, remote_lsn, remote_hlc, policy, winner, \
         value, resolved) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
    ))?
    .execute(params![
        id,
        shape.name,
        key_json,
        col,
        v(&c.local.value),
        c.local.version.origin.as_str(),
        c.local.version.lsn.0 as i64,
        c.local.version.hlc.to_string(),
        v(&c.remote.value),
        c.remote.version.origin.as_str(),
        c.remote.version.lsn.0 as i64,
        c.remote.version.hlc.to_string(),
        c.policy,
        c.winner.name(),
        v(&c.value),
        !c.open,
    ])?;
    Ok(())
}

impl LeaderDb {
    /// Sets the conflict policy of `table`'s `column` (or, without a column, the table's
    /// delete rule) after checking it against the table: the column exists and is not part of
    /// the key, `counter` is on a number column, a `custom` expression compiles. A commit of
    /// its own, which travels to the other data centres like data.
    #[allow(clippy::too_many_arguments)]
    pub fn set_policy(
        &mut self,
        table: &str,
        column: Option<&str>,
        policy: &str,
        expression: Option<&str>,
        epoch: Epoch,
        origin: &NodeId,
        now_us: u64,
    ) -> Result<CommitOutcome, SetPolicyError> {
        if self.multi_leader.is_none() {
            return Err(SetPolicyError::Invalid(
                "conflict policies are for multi-leader nodes: this node has no data centre (--dc)"
                    .into(),
            ));
        }
        // Checked with the client rules on: an expression may not read Flotilla's secrets.
        let (table, col) = check_policy(&self.conn, table, column, policy, expression)?;
        let what = format!("set the conflict policy of {table}");
        let (_, out) = self.internal_commit::<_, SetPolicyError>(&what, epoch, origin, now_us, |db, _| {
            db.conn.execute(
                &format!(
                    "INSERT OR REPLACE INTO {POLICIES_TABLE} (tbl, col, policy, expression) VALUES (?1, ?2, ?3, ?4)"
                ),
                params![table, col, policy, expression],
            )?;
            db.capture.statement_done(&db.conn)?;
            Ok(())
        })?;
        Ok(out)
    }
}

/// Checks a policy against the schema; returns the table's and column's names as declared
/// (`""` for a table's delete rule).
fn check_policy(
    conn: &Connection,
    table: &str,
    column: Option<&str>,
    policy: &str,
    expression: Option<&str>,
) -> Result<(String, String), SetPolicyError> {
    let invalid = |m: String| Err(SetPolicyError::Invalid(m));
    let declared: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
            [table],
            |r| r.get(0),
        )
        .optional()?;
    let Some(table) =
        declared.filter(|t| !local_only(t) && !t.eq_ignore_ascii_case(POLICIES_TABLE))
    else {
        return invalid(format!("there is no table {table} here"));
    };
    let Some(column) = column else {
        return match DeleteRule::parse(policy) {
            Ok(_) if expression.is_none() => Ok((table, String::new())),
            Ok(_) => invalid("a delete rule takes no expression".into()),
            Err(_) => invalid(format!(
                "{policy:?} without a column: a table's own policy is its delete rule, delete-wins \
                 or update-wins (give --column for a column's policy)"
            )),
        };
    };
    let columns: Vec<(String, String, i64)> = conn
        .prepare("SELECT name, type, pk FROM pragma_table_info(?1)")?
        .query_map([&table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let Some((name, declared_type, pk)) = columns
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(column))
    else {
        let names: Vec<&str> = columns.iter().map(|(n, _, _)| n.as_str()).collect();
        return invalid(format!(
            "table {table} has no column {column} (its columns: {})",
            names.join(", ")
        ));
    };
    if *pk > 0 {
        return invalid(format!(
            "{name} is part of {table}'s primary key: a key identifies the row and never conflicts"
        ));
    }
    let parsed = ColumnPolicy::parse(policy, expression)
        .map_err(|e| SetPolicyError::Invalid(e.to_string()))?;
    parsed
        .check_column_type(name, declared_type)
        .map_err(|e| SetPolicyError::Invalid(e.to_string()))?;
    if let Some(expr) = parsed.expression() {
        // Every data centre must compute the same value from the same two: the expression
        // may use `local`, `remote` and deterministic functions only — no tables, no
        // random(). SQLite holds a generated column's expression to exactly that, on a
        // scratch database that has no tables to read.
        let scratch = Connection::open_in_memory()?;
        let probe = format!("CREATE TABLE probe (local ANY, remote ANY, merged ANY AS ({expr}))");
        let single = !expr.contains(';') && crate::sql_text::is_complete(&format!("{probe};"));
        let compiled = if single {
            scratch.execute_batch(&probe)
        } else {
            Err(rusqlite::Error::InvalidQuery)
        };
        if let Err(e) = compiled {
            let why = match e {
                rusqlite::Error::InvalidQuery => "it is not one expression".to_string(),
                e => crate::leader_db::sql_error_message(&e),
            };
            return invalid(format!(
                "the expression {expr:?} does not compile: {why} (it is SQL over `local` and \
                 `remote`, with deterministic functions only: every data centre must compute \
                 the same value)"
            ));
        }
    }
    Ok((table, name.clone()))
}
