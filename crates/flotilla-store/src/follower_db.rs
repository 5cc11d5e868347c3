use crate::open::configure;
use crate::{read_meta, DbSettings, Meta, StoreError};
use flotilla_types::LogRecord;
use rusqlite::Connection;
use std::collections::BTreeMap;
use std::path::Path;

/// A physical follower's writer connection. Applies page images with `sqlite_dbpage` in
/// ordinary write transactions: readers on other connections keep their WAL snapshots and
/// never see part of a batch, and a crash mid-apply leaves the previous state.
pub struct FollowerDb {
    conn: Connection,
    meta: Meta,
    page_size: u32,
}

impl FollowerDb {
    /// Opens a follower database; `None` if the file holds no Flotilla database (it needs a
    /// snapshot first).
    pub fn open(path: &Path, settings: &DbSettings) -> Result<Option<FollowerDb>, StoreError> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open(path)?;
        configure(&conn, settings, true)?;
        let logical: bool = conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = '_flotilla_replica'",
            [],
            |r| r.get(0),
        )?;
        if logical {
            return Err(StoreError::Mismatch(format!(
                "{} holds a logical replica; a physical follower needs its own data directory",
                path.display()
            )));
        }
        let page_size: u32 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        match read_meta(&conn)? {
            Some(meta) => Ok(Some(FollowerDb {
                conn,
                meta,
                page_size,
            })),
            None => Ok(None),
        }
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Applies `records` (contiguous, following this database's position and chain) in one
    /// transaction, each page written once: the last image of a page in the batch wins, and
    /// pages beyond the final database size are dropped.
    pub fn apply(&mut self, records: &[LogRecord]) -> Result<&Meta, StoreError> {
        self.meta = apply_pages(&mut self.conn, &self.meta, self.page_size, records)?;
        Ok(&self.meta)
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// Writes the page images of `records` (contiguous, following `meta`'s position and chain) into
/// the database through `sqlite_dbpage` in one transaction, each page once: the last image of a
/// page wins, pages beyond the final size are dropped. Checks that the result holds the position
/// the last record claims. The connection must allow `sqlite_dbpage` writes.
pub(crate) fn apply_pages(
    conn: &mut Connection,
    meta: &Meta,
    page_size: u32,
    records: &[LogRecord],
) -> Result<Meta, StoreError> {
    let Some(last) = records.last() else {
        return Ok(meta.clone());
    };
    check_follows(meta, records)?;
    // A physical replica never changes its page size (the leader's is fixed at creation).
    let mut pages: BTreeMap<u32, &[u8]> = BTreeMap::new();
    #[cfg(feature = "sim-bugs")]
    let reversed: Vec<&LogRecord> =
        if crate::injected_bugs::APPLY_OUT_OF_ORDER.load(std::sync::atomic::Ordering::Relaxed) {
            records.iter().rev().collect()
        } else {
            records.iter().collect()
        };
    #[cfg(feature = "sim-bugs")]
    let records = reversed;
    let mut db_size = 0;
    for r in records {
        let payload = r.pages.as_ref().ok_or_else(|| {
            StoreError::Apply(format!("record {} carries no page images", r.position()))
        })?;
        if payload.page_size != page_size {
            return Err(StoreError::Apply(format!(
                "record {} has pages of {} bytes, this database {page_size}",
                r.position(),
                payload.page_size
            )));
        }
        for p in &payload.pages {
            pages.insert(p.pgno, &p.data);
        }
        db_size = payload.db_size_pages;
    }
    // SQLite's b-tree layer keeps the parsed header of each cached page (cell count, leaf or
    // interior) across transactions of a connection, and pages written through sqlite_dbpage
    // change under it: a schema page that grew into an interior page would then read as
    // "malformed". Evicting the connection's cached pages (all clean between transactions)
    // makes every later read parse what is really there.
    conn.release_memory()?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let current: u32 = tx.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let mut put = tx.prepare_cached("INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)")?;
        // Page 1 (with the schema cookie) goes last: each execution of this statement checks
        // the cookie, and a changed one makes SQLite parse the schema again, which must then
        // find every page it names already in place.
        for (pgno, data) in pages.range(2..=db_size) {
            put.execute(rusqlite::params![pgno, data])?;
        }
        if db_size < current {
            // A NULL page truncates the database to the pages before it.
            put.execute(rusqlite::params![db_size + 1, rusqlite::types::Null])?;
        }
        if let Some(first) = pages.get(&1) {
            put.execute(rusqlite::params![1, first])?;
        }
    }
    tx.commit()?;
    conn.release_memory()?;
    // Checked after the commit, for the reason above: the pages must hold the position the
    // last record claims. They come checksummed and chained from the leader's WAL, so a
    // mismatch means damage or a bug; the error makes the follower re-handshake from what its
    // database says, and a replica that does not continue the leader's history re-bootstraps.
    let meta = crate::meta::read_meta_row(conn)?
        .ok_or_else(|| StoreError::Apply("the applied pages hold no _flotilla_meta".into()))?;
    if meta.position != last.position() || meta.chain != last.chain {
        return Err(StoreError::Apply(format!(
            "after applying {} the database says {} (chain {}): the replica does not hold \
             what the records claim",
            last.position(),
            meta.position,
            meta.chain
        )));
    }
    Ok(meta)
}

/// Checks that `records` continue the history a replica at `meta` holds: increasing LSNs, each
/// record's checksum chain linking to the one before. LSNs may skip Raft's own entries (a
/// cluster's, which are no transactions): the chain covers each record's LSN, so it still proves
/// that nothing was left out. Shared by every kind of replica.
pub(crate) fn check_follows(meta: &Meta, records: &[LogRecord]) -> Result<(), StoreError> {
    let mut prev = (meta.position.lsn, meta.chain);
    for r in records {
        if r.lsn <= prev.0 {
            return Err(StoreError::Apply(format!(
                "record {} does not follow lsn {}",
                r.position(),
                prev.0
            )));
        }
        if !r.links_to(prev.1) {
            return Err(StoreError::Apply(format!(
                "record {} does not continue this replica's history (checksum chain {} \
                 does not link to {})",
                r.position(),
                r.chain,
                prev.1
            )));
        }
        prev = (r.lsn, r.chain);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::{Chain, ContentDigest, Epoch, Lsn, NodeId, Position};

    fn meta(lsn: u64, chain: Chain) -> Meta {
        Meta {
            cluster_id: "c".into(),
            position: Position::new(1, lsn),
            chain,
            digest: ContentDigest(0),
            commit_time_us: 0,
        }
    }

    fn record(epoch: u64, lsn: u64, after: Chain) -> LogRecord {
        let digest = ContentDigest(lsn * 31);
        LogRecord {
            epoch: Epoch(epoch),
            lsn: Lsn(lsn),
            chain: after.next(Epoch(epoch), Lsn(lsn), digest),
            digest,
            commit_time_us: 0,
            origin: NodeId::new("n").unwrap(),
            pages: None,
            rows: None,
            exchange: None,
        }
    }

    /// Raft's own entries leave gaps in LSNs that followers are not sent: a record across a gap
    /// is taken when its chain links; one that does not link, or goes back, is refused.
    #[test]
    fn records_may_skip_lsns_but_must_link() {
        let m = meta(10, Chain(77));
        let across = record(2, 13, Chain(77));
        let then = record(2, 14, across.chain);
        assert!(check_follows(&m, &[across.clone(), then]).is_ok());
        let forged = record(2, 13, Chain(78));
        let err = check_follows(&m, &[forged]).unwrap_err().to_string();
        assert!(err.contains("does not continue"), "{err}");
        let back = record(1, 10, Chain(77));
        let err = check_follows(&m, &[back]).unwrap_err().to_string();
        assert!(err.contains("does not follow"), "{err}");
        let err = check_follows(&m, &[across.clone(), across])
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not follow"), "{err}");
    }
}
