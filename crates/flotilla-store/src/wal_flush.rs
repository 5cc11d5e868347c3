//! Making a follower's applied changes durable from outside SQLite.
//!
//! A follower commits its applies with `synchronous=NORMAL`: the commit writes the WAL frames
//! without an fsync, so readers see a change as soon as it is applied, and a power loss can take
//! back the newest commits (never half of one: SQLite's frame checksums end the WAL at the last
//! whole commit). [`flush_wal`] then makes everything committed so far durable, beside the next
//! apply: an `fdatasync` of the WAL file flushes every write made to it through any descriptor.
//! What is no longer in the WAL was moved into the database file by a checkpoint, and SQLite
//! flushes the WAL before and the database file after every checkpoint at `NORMAL`, and before
//! it restarts the WAL from its beginning.

use crate::StoreError;
use std::path::{Path, PathBuf};

/// The WAL file of the database at `db_path`.
pub fn wal_path(db_path: &Path) -> PathBuf {
    let mut p = db_path.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// Flushes the WAL of the database at `db_path` to disk: every commit made before the call
/// survives a power loss once it returns. A missing WAL holds nothing unflushed (SQLite
/// checkpoints and flushes everything into the database file before it removes it). An error
/// means the disk's state is unknown: the caller must stop, not retry (see fsyncgate).
pub fn flush_wal(db_path: &Path) -> Result<(), StoreError> {
    let path = wal_path(db_path);
    match std::fs::File::open(&path) {
        Ok(f) => f.sync_data().map_err(|e| StoreError::io(&path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_wal_is_nothing_to_flush_and_a_present_one_is_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.sqlite");
        flush_wal(&db).unwrap();
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; CREATE TABLE t(x)")
            .unwrap();
        assert!(wal_path(&db).exists());
        flush_wal(&db).unwrap();
    }

    #[test]
    fn a_wal_that_cannot_be_opened_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A path through a regular file cannot be opened (ENOTDIR, not "missing").
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let through_file = dir.path().join("file").join("a.sqlite");
        let e = flush_wal(&through_file).unwrap_err();
        assert!(e.to_string().contains("a.sqlite-wal"), "{e}");
    }
}
