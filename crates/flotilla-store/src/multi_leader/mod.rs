//! Multi-leader replication in the leader's database: the merge state of every row, the version
//! vector, the hybrid logical clock, the conflicts table, and the two kinds of commit that use
//! them — a local transaction (stamped for other data centres) and a transaction merged in from
//! another data centre (one local transaction, conflicts recorded in it).
//!
//! Everything here is written in the same SQLite transaction as the rows it concerns, so the
//! data, its merge state and the version vector never disagree, whatever crash comes.

mod copy;
mod merge;
mod policies;
mod prune;
mod schema_rules;

pub use copy::adopt_data_centre_copy;
pub(crate) use merge::create_target;
use merge::reconsider_shadowed;
pub(crate) use schema_rules::ddl_problem;
use schema_rules::key_problem;

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
    -- The deployment the data centres exchanging with this one share (a data centre's own
    -- cluster id may differ: each may be a failover cluster of its own).
    deployment TEXT NOT NULL,
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

/// The open conflicts of a row and column: what a write that resolves them looks up (most
/// conflicts are resolved at once, and stay out of it).
const CREATE_OPEN_CONFLICTS_INDEX: &str = "CREATE INDEX flotilla_conflicts_open ON \
    flotilla_conflicts (tbl, row_key, col) WHERE resolved = 0";

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
        /// The collaborative documents it changed (`table/key/column`): their open editors
        /// are to hear of it.
        documents: Vec<String>,
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
    // Tokens and the list of collaborative columns are the same in every data centre; the
    // documents themselves are merged as documents (see `collab::IncomingDocs`).
    (t.starts_with(crate::INTERNAL_PREFIX)
        && t != crate::TOKENS_TABLE
        && t != crate::collab::COLUMNS_TABLE)
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

/// The data centre a multi-leader database belongs to and its deployment (`None`: not a
/// multi-leader database, or not enabled yet).
pub fn read_data_centre(conn: &Connection) -> Result<Option<(String, String)>, StoreError> {
    let exists: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = '_flotilla_ml_origin'",
        [],
        |r| r.get(0),
    )?;
    if exists == 0 {
        return Ok(None);
    }
    Ok(conn
        .query_row("SELECT dc, deployment FROM _flotilla_ml_origin", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?)
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

/// Sets a collaborative column's value in its row's merge state to the document's merged
/// text (written to the row beside it), keeping the versions: the merge state holds what the
/// table holds.
pub(crate) fn set_cell_text(
    conn: &Connection,
    doc: &crate::collab::ResolvedDoc,
    text: &str,
) -> Result<(), StoreError> {
    let table = &doc.column.table;
    let key_value = match doc.key_value() {
        rusqlite::types::Value::Integer(i) => SqlValue::Integer(i),
        _ => SqlValue::Text(doc.key.clone()),
    };
    let key = encode_key(&[key_value]);
    let Some(mut state) = load_state(conn, table, &key)? else {
        // A row that predates the merge state: the table's values are its state.
        return Ok(());
    };
    let index: Option<i64> = conn
        .query_row(
            "SELECT n FROM (SELECT name, row_number() OVER (ORDER BY cid) - 1 AS n FROM \
             pragma_table_xinfo(?1) WHERE hidden = 0) WHERE name = ?2 COLLATE NOCASE",
            params![table, doc.column.column],
            |r| r.get(0),
        )
        .optional()?;
    let Some(cell) = index.and_then(|i| state.cells.get_mut(i as usize)) else {
        return Ok(());
    };
    let value = SqlValue::Text(text.to_string());
    for entry in &mut cell.entries {
        entry.value = value.clone();
    }
    cell.value = value;
    save_state(conn, table, &key, &state)
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

/// A row change as the merge rules see it: an update that changes the row's key is the
/// delete of the row under its old key and the insert of one under its new key (the merge
/// state is kept per key); any other change is itself. Each data centre splits alike.
pub(crate) fn by_key<'a>(
    shape: &TableShape,
    c: &'a flotilla_types::RowChange,
) -> Vec<std::borrow::Cow<'a, flotilla_types::RowChange>> {
    use std::borrow::Cow;
    let (Some(before), Some(after)) = (&c.before, &c.after) else {
        return vec![Cow::Borrowed(c)];
    };
    let moved = c.op == RowOp::Update
        && shape.key.iter().any(|k| {
            let k = *k as usize;
            before.get(k) != after.get(k)
        });
    if !moved {
        return vec![Cow::Borrowed(c)];
    }
    vec![
        Cow::Owned(flotilla_types::RowChange {
            op: RowOp::Delete,
            after: None,
            new_rowid: 0,
            ..c.clone()
        }),
        Cow::Owned(flotilla_types::RowChange {
            op: RowOp::Insert,
            before: None,
            old_rowid: 0,
            ..c.clone()
        }),
    ]
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
        deployment: &str,
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
        let deployment = deployment.to_string();
        let (_, out) = self
            .internal_commit::<_, MergeApplyError>(
                "enable multi-leader",
                epoch,
                origin,
                now_us,
                |db, _| {
                    db.conn.execute_batch(CREATE_INTERNAL)?;
                    db.conn.execute(
                        "INSERT INTO _flotilla_ml_origin (id, dc, deployment, hlc) \
                         VALUES (1, ?1, ?2, ?3)",
                        params![dc_name, deployment, Hlc::ZERO.tick(now_ms).0 as i64],
                    )?;
                    for (kind, table, sql) in [
                        (DdlKind::CreateTable, CONFLICTS_TABLE, CREATE_CONFLICTS),
                        (
                            DdlKind::CreateIndex,
                            CONFLICTS_TABLE,
                            CREATE_OPEN_CONFLICTS_INDEX,
                        ),
                        (DdlKind::CreateTable, POLICIES_TABLE, CREATE_POLICIES),
                    ] {
                        db.conn.execute_batch(sql)?;
                        db.capture.schema_changed(SchemaChange {
                            kind,
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
        self.rules
            .internal(|| read_data_centre(&self.conn))
            .map(|d| d.map(|(dc, _)| dc))
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
        let stamp =
            self.rules
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
                        let RowItem::Change(whole) = it else { continue };
                        let shape = payload.shape(whole);
                        if local_only(&shape.name) {
                            continue;
                        }
                        for c in by_key(shape, whole) {
                            let c = c.as_ref();
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
                                    let changed = c.before.as_ref().is_none_or(|b| {
                                        b[i] != c.after.as_ref().expect("after")[i]
                                    });
                                    if changed {
                                        resolve_seen(conn, &shape.name, &kj, col, &version, None)?;
                                    }
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
