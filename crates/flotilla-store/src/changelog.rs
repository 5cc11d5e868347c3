//! Reading the changelog of trigger-based replication, for delivery: from a reader connection
//! (a WAL snapshot, never blocking the writer), in `seq` order, whole source transactions at a
//! time, and only commits already durable in the replication log.

use crate::pipeline_triggers::CHANGELOG_TABLE;
use crate::StoreError;
use rusqlite::Connection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// `data` is the full row as the target stores it.
    Upsert,
    /// `data` holds the key columns only.
    Delete,
}

/// One changelog row: one row change at the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogEntry {
    pub seq: i64,
    pub lsn: u64,
    pub at_ms: i64,
    pub op: ChangeOp,
    /// A JSON object: target column name → value (blobs as `{"$hex": "…"}`).
    pub data: String,
}

/// What a pipeline has not delivered yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub rows: u64,
    pub oldest_at_ms: Option<i64>,
}

fn read(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<Vec<ChangelogEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map(params, |r| {
            let op: String = r.get(4)?;
            Ok(ChangelogEntry {
                seq: r.get(0)?,
                lsn: r.get::<_, i64>(1)? as u64,
                at_ms: r.get(2)?,
                data: r.get(3)?,
                op: if op == "delete" {
                    ChangeOp::Delete
                } else {
                    ChangeOp::Upsert
                },
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Up to about `max_rows` changes of pipeline `id` after `after_seq`, from commits up to
/// `durable_lsn`, ending at a transaction boundary: the rows of one LSN are never split (a
/// transaction larger than `max_rows` comes whole, alone).
pub fn read_changes(
    conn: &Connection,
    id: i64,
    after_seq: i64,
    durable_lsn: u64,
    max_rows: usize,
) -> Result<Vec<ChangelogEntry>, StoreError> {
    let sql = format!(
        "SELECT seq, lsn, at_ms, data, op FROM {CHANGELOG_TABLE} \
         WHERE seq > ?1 AND pipeline = ?2 AND lsn <= ?3 ORDER BY seq LIMIT ?4"
    );
    let limit = max_rows as i64 + 1;
    let durable = durable_lsn.min(i64::MAX as u64) as i64;
    let mut rows = read(conn, &sql, &[&after_seq, &id, &durable, &limit])?;
    if rows.len() <= max_rows {
        return Ok(rows);
    }
    // One row more than asked: the last LSN may continue beyond. Drop it unless it is the
    // only one, in which case read all of it.
    let last_lsn = rows[max_rows].lsn;
    let first_lsn = rows[0].lsn;
    if first_lsn != last_lsn {
        rows.retain(|r| r.lsn != last_lsn);
        return Ok(rows);
    }
    let sql = format!(
        "SELECT seq, lsn, at_ms, data, op FROM {CHANGELOG_TABLE} \
         WHERE seq > ?1 AND pipeline = ?2 AND lsn = ?3 ORDER BY seq"
    );
    read(conn, &sql, &[&after_seq, &id, &(first_lsn as i64)])
}

/// How many changes of pipeline `id` after `after_seq` wait, and the commit time of the oldest.
pub fn backlog(conn: &Connection, id: i64, after_seq: i64) -> Result<Backlog, StoreError> {
    let (rows, oldest): (i64, Option<i64>) = conn
        .prepare_cached(&format!(
            "SELECT count(*), min(at_ms) FROM {CHANGELOG_TABLE} WHERE seq > ?1 AND pipeline = ?2"
        ))?
        .query_row(rusqlite::params![after_seq, id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    Ok(Backlog {
        rows: rows as u64,
        oldest_at_ms: oldest,
    })
}
