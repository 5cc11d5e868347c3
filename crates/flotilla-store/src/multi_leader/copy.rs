//! A new data centre started from a copy of a peer's database: the copy (a snapshot of the
//! peer's leader) holds every row with its merge state, the version vector and the positions
//! the peer had merged each other data centre's log through — so the new data centre reads each
//! peer's log from there, and needs no log of the past (which retention may have dropped).

use crate::StoreError;
use flotilla_types::{Chain, OriginName, Position};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

/// Makes the database at `path` (an installed snapshot of data centre `peer`'s, taken at
/// `peer_at` of its log) data centre `dc`'s own, in one transaction: its own log starts empty
/// (position 0 of a new history in `deployment`), it has merged `peer`'s log through the
/// copy's position, and what belonged to the peer's node alone is dropped (its pipelines, with
/// their triggers and change log, and its idempotency keys).
pub fn adopt_data_centre_copy(
    path: &Path,
    dc: &OriginName,
    deployment: &str,
    peer: &OriginName,
    peer_at: (Position, Chain),
) -> Result<(), StoreError> {
    let mut conn = Connection::open(path)?;
    let tx = conn.transaction()?;
    let peer_dc: Option<String> = tx
        .query_row("SELECT dc FROM _flotilla_ml_origin", [], |r| r.get(0))
        .optional()
        .map_err(|e| StoreError::Mismatch(format!("the copy is no data centre's: {e}")))?;
    if peer_dc.as_deref() != Some(peer.as_str()) {
        return Err(StoreError::Mismatch(format!(
            "the copy taken from data centre {peer} is data centre {}'s",
            peer_dc.as_deref().unwrap_or("no")
        )));
    }
    // A data centre of this name existed before (its data directory lost): what it made is
    // known to the others up to a position its new history would count through again, so its
    // new transactions would be taken for those.
    let known: Option<i64> = tx
        .query_row(
            "SELECT lsn FROM _flotilla_ml_vv WHERE origin = ?1",
            [dc.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(lsn) = known {
        return Err(StoreError::Mismatch(format!(
            "data centre {dc} existed before in this deployment ({peer} holds its transactions \
             up to {lsn}): a data centre whose data directory was lost comes back under a new \
             name (--dc)"
        )));
    }
    let triggers: Vec<String> = tx
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'trigger' AND name LIKE '\\_flotilla\\_p%' ESCAPE '\\'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for t in triggers {
        tx.execute_batch(&format!(
            "DROP TRIGGER IF EXISTS {}",
            crate::pipeline_triggers::quote(&t)
        ))?;
    }
    for table in [
        "_flotilla_pipelines",
        "_flotilla_pipeline_marks",
        "_flotilla_changelog",
        "_flotilla_idempotency",
    ] {
        let exists: i64 = tx.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )?;
        if exists > 0 {
            tx.execute_batch(&format!("DELETE FROM {table}"))?;
        }
    }
    tx.execute(
        "UPDATE _flotilla_meta SET cluster_id = ?1, epoch = 1, lsn = 0, chain = 0, digest = 0, \
         commit_time_us = 0, rows = NULL",
        [deployment],
    )?;
    tx.execute(
        "UPDATE _flotilla_ml_origin SET dc = ?1, deployment = ?2, last_lsn = 0, last_stamp = NULL",
        params![dc.as_str(), deployment],
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO _flotilla_ml_links (peer, epoch, lsn, chain) VALUES (?1, ?2, ?3, ?4)",
        params![
            peer.as_str(),
            peer_at.0.epoch.0 as i64,
            peer_at.0.lsn.0 as i64,
            peer_at.1 .0 as i64
        ],
    )?;
    tx.commit()?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}
