//! Where the row changes of the newest commit wait until the log holds them, so that a commit
//! that reached SQLite but not the log is re-created whole after a crash (see
//! `LeaderDb::uncaptured`). Small payloads ride in the commit itself (`_flotilla_meta.rows`, on a
//! page the commit writes anyway); large ones would double the pages a big transaction writes,
//! so they go to a side file `<db>-rows`, made durable before the COMMIT:
//!
//! ```text
//! "FLOTROWS" u8 version (1) u64 lsn u32 length, the encoded rows, u32 CRC32 of all before
//! ```

use crate::StoreError;
use flotilla_types::Lsn;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Payloads up to this size stay in the meta row.
pub(crate) const INLINE_MAX_BYTES: usize = 2048;
const MAGIC: &[u8; 8] = b"FLOTROWS";
const VERSION: u8 = 1;

pub(crate) fn side_file(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-rows");
    PathBuf::from(p)
}

/// Writes the rows of `lsn` durably (replacing the previous ones).
pub(crate) fn write(db: &Path, lsn: Lsn, rows: &[u8]) -> Result<(), StoreError> {
    let path = side_file(db);
    let mut buf = Vec::with_capacity(rows.len() + 25);
    buf.extend_from_slice(MAGIC);
    buf.push(VERSION);
    buf.extend_from_slice(&lsn.0.to_le_bytes());
    buf.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    buf.extend_from_slice(rows);
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    let existed = path.exists();
    let mut f = std::fs::File::create(&path).map_err(|e| StoreError::io(&path, e))?;
    f.write_all(&buf).map_err(|e| StoreError::io(&path, e))?;
    f.sync_all().map_err(|e| StoreError::io(&path, e))?;
    if !existed {
        // The file's name must survive a crash too.
        if let Some(dir) = path.parent() {
            let d = std::fs::File::open(dir).map_err(|e| StoreError::io(dir, e))?;
            d.sync_all().map_err(|e| StoreError::io(dir, e))?;
        }
    }
    Ok(())
}

/// The rows stored for `lsn`, if the side file holds them intact.
pub(crate) fn read(db: &Path, lsn: Lsn) -> Option<Vec<u8>> {
    let bytes = std::fs::read(side_file(db)).ok()?;
    if bytes.len() < 25 || &bytes[..8] != MAGIC || bytes[8] != VERSION {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let stored = u64::from_le_bytes(body[9..17].try_into().ok()?);
    let len = u32::from_le_bytes(body[17..21].try_into().ok()?) as usize;
    (stored == lsn.0 && body.len() == 21 + len).then(|| body[21..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_another_lsn_or_damage() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.sqlite");
        write(&db, Lsn(7), b"rows of seven").unwrap();
        assert_eq!(read(&db, Lsn(7)).unwrap(), b"rows of seven");
        assert_eq!(read(&db, Lsn(8)), None);
        let mut bytes = std::fs::read(side_file(&db)).unwrap();
        bytes[22] ^= 1;
        std::fs::write(side_file(&db), &bytes).unwrap();
        assert_eq!(read(&db, Lsn(7)), None);
    }
}
