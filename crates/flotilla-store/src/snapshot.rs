//! A consistent copy of the database with its position, streamed page by page.
//!
//! Reading takes one read transaction (a WAL snapshot): the writer keeps committing meanwhile.
//! The copy is the database file itself, byte for byte, at the position in its own
//! `_flotilla_meta` row; its install writes a new file beside the old one, checks it, fsyncs it
//! and renames it into place, so a crash leaves either the old database or the new one.

use crate::{read_meta, StoreError};
use flotilla_wire::SnapshotHeader;
use rusqlite::Connection;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Streams a snapshot to `emit` in chunks of about `chunk_bytes`.
pub fn stream<E>(
    conn: &Connection,
    chunk_bytes: usize,
    mut emit: impl FnMut(Vec<u8>) -> Result<(), E>,
) -> Result<Result<SnapshotHeader, E>, StoreError> {
    let mut crc = crc32fast::Hasher::new();
    let mut chunk = Vec::with_capacity(chunk_bytes);
    let mut header = None;
    let streamed = stream_pages(
        conn,
        chunk_bytes,
        |h| {
            header = Some(h.clone());
            Ok(h.encode())
        },
        &mut chunk,
        |c| crc.update(c),
        &mut emit,
    )?;
    if let Err(e) = streamed {
        return Ok(Err(e));
    }
    chunk.extend_from_slice(&crc.finalize().to_le_bytes());
    if let Err(e) = emit(chunk) {
        return Ok(Err(e));
    }
    Ok(Ok(header.expect("the header comes first")))
}

/// Streams the database as a plain SQLite file (what `GET /v1/backup` sends): the snapshot's
/// pages only, with page 1 saying "rollback journal" instead of "WAL" so that `sqlite3` opens
/// the file anywhere, even read-only, without a `-wal` beside it. `start` gets the header first
/// (the position, the size).
pub fn stream_database_file<E>(
    conn: &Connection,
    chunk_bytes: usize,
    start: impl FnOnce(&SnapshotHeader) -> Result<(), E>,
    mut emit: impl FnMut(Vec<u8>) -> Result<(), E>,
) -> Result<Result<(), E>, StoreError> {
    let mut chunk = Vec::with_capacity(chunk_bytes);
    let mut first = true;
    let mut emit_plain = |mut c: Vec<u8>| {
        if std::mem::take(&mut first) && c.len() >= 20 {
            // Bytes 18 and 19: the file format's write and read versions, 2 for WAL.
            c[18] = 1;
            c[19] = 1;
        }
        emit(c)
    };
    let streamed = stream_pages(
        conn,
        chunk_bytes,
        |h| start(h).map(|()| Vec::new()),
        &mut chunk,
        |_| {},
        &mut emit_plain,
    )?;
    if let Err(e) = streamed {
        return Ok(Err(e));
    }
    Ok(emit_plain(chunk))
}

/// The pages of one read transaction, in order, gathered in `chunk` and handed to `emit` in
/// pieces of about `chunk_bytes`; `seen_page` sees every page. `start` gets the header first
/// and gives the bytes to emit before the pages (none if empty). The last piece stays in
/// `chunk`.
fn stream_pages<E>(
    conn: &Connection,
    chunk_bytes: usize,
    start: impl FnOnce(&SnapshotHeader) -> Result<Vec<u8>, E>,
    chunk: &mut Vec<u8>,
    mut seen_page: impl FnMut(&[u8]),
    mut emit: impl FnMut(Vec<u8>) -> Result<(), E>,
) -> Result<Result<(), E>, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let meta = read_meta(&tx)?
        .ok_or_else(|| StoreError::Snapshot("the database is not initialised".into()))?;
    let page_size: u32 = tx.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let page_count: u32 = tx.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let header = SnapshotHeader {
        position: meta.position,
        chain: meta.chain,
        cluster_id: meta.cluster_id,
        page_size,
        page_count,
    };
    match start(&header) {
        Err(e) => return Ok(Err(e)),
        Ok(prefix) if !prefix.is_empty() => {
            if let Err(e) = emit(prefix) {
                return Ok(Err(e));
            }
        }
        Ok(_) => {}
    }
    let mut stmt = tx.prepare("SELECT data FROM sqlite_dbpage WHERE pgno <= ?1 ORDER BY pgno")?;
    let mut rows = stmt.query([page_count])?;
    let mut seen = 0u32;
    while let Some(row) = rows.next()? {
        let data = row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
        seen_page(data);
        chunk.extend_from_slice(data);
        seen += 1;
        if chunk.len() >= chunk_bytes {
            let full =
                std::mem::replace(chunk, Vec::with_capacity(chunk_bytes + page_size as usize));
            if let Err(e) = emit(full) {
                return Ok(Err(e));
            }
        }
    }
    if seen != page_count {
        return Err(StoreError::Snapshot(format!(
            "read {seen} pages, expected {page_count}"
        )));
    }
    Ok(Ok(()))
}

/// Receives a snapshot stream into `<target>.bootstrap` and installs it.
pub struct SnapshotReceiver {
    target: PathBuf,
    temp: PathBuf,
    file: File,
    pending: Vec<u8>,
    header: Option<SnapshotHeader>,
    body_written: u64,
    crc: crc32fast::Hasher,
}

impl SnapshotReceiver {
    pub fn new(target: &Path) -> Result<SnapshotReceiver, StoreError> {
        let mut temp = target.as_os_str().to_owned();
        temp.push(".bootstrap");
        let temp = PathBuf::from(temp);
        let file = File::create(&temp).map_err(|e| StoreError::io(&temp, e))?;
        Ok(SnapshotReceiver {
            target: target.to_path_buf(),
            temp,
            file,
            pending: Vec::new(),
            header: None,
            body_written: 0,
            crc: crc32fast::Hasher::new(),
        })
    }

    pub fn header(&self) -> Option<&SnapshotHeader> {
        self.header.as_ref()
    }

    /// Bytes of the database received so far.
    pub fn body_written(&self) -> u64 {
        self.body_written
    }

    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), StoreError> {
        if self.header.is_none() {
            self.pending.extend_from_slice(bytes);
            match SnapshotHeader::decode_prefix(&self.pending)
                .map_err(|e| StoreError::Snapshot(e.to_string()))?
            {
                None => return Ok(()),
                Some((h, used)) => {
                    self.header = Some(h);
                    let rest = self.pending.split_off(used);
                    self.pending.clear();
                    return self.feed_body(&rest);
                }
            }
        }
        self.feed_body(std::mem::take(&mut bytes))
    }

    fn feed_body(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let body_len = self.header.as_ref().expect("header parsed").body_len();
        let room = (body_len - self.body_written) as usize;
        let (body, trailer) = bytes.split_at(bytes.len().min(room));
        if !body.is_empty() {
            self.crc.update(body);
            self.file
                .write_all(body)
                .map_err(|e| StoreError::io(&self.temp, e))?;
            self.body_written += body.len() as u64;
        }
        self.pending.extend_from_slice(trailer);
        if self.pending.len() > 4 {
            return Err(StoreError::Snapshot(
                "more bytes than the header announced".into(),
            ));
        }
        Ok(())
    }

    /// Checks the stream was complete and intact, makes the file durable and renames it over the
    /// target (removing the target's old `-wal` and `-shm`). The caller must have closed every
    /// connection to the target.
    pub fn install(self) -> Result<SnapshotHeader, StoreError> {
        let header = self
            .header
            .ok_or_else(|| StoreError::Snapshot("the stream ended before its header".into()))?;
        if self.body_written != header.body_len() || self.pending.len() != 4 {
            return Err(StoreError::Snapshot(format!(
                "the stream ended early: {} of {} bytes",
                self.body_written,
                header.body_len()
            )));
        }
        let stored = u32::from_le_bytes(self.pending[..4].try_into().expect("4 bytes"));
        if stored != self.crc.finalize() {
            return Err(StoreError::Snapshot(
                "checksum mismatch: the copy is damaged".into(),
            ));
        }
        self.file
            .sync_all()
            .map_err(|e| StoreError::io(&self.temp, e))?;
        drop(self.file);
        {
            // A file received from a peer is checked before it replaces anything.
            let conn = Connection::open(&self.temp)?;
            let ok: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
            if ok != "ok" {
                return Err(StoreError::Snapshot(format!("quick_check: {ok}")));
            }
            let meta = read_meta(&conn)?
                .ok_or_else(|| StoreError::Snapshot("the copy holds no _flotilla_meta".into()))?;
            if meta.position != header.position || meta.chain != header.chain {
                return Err(StoreError::Snapshot(format!(
                    "the copy says {} but its header {}",
                    meta.position, header.position
                )));
            }
        }
        for suffix in ["-wal", "-shm"] {
            let mut p = self.target.as_os_str().to_owned();
            p.push(suffix);
            let p = PathBuf::from(p);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&p, e)),
            }
        }
        std::fs::rename(&self.temp, &self.target).map_err(|e| StoreError::io(&self.target, e))?;
        if let Some(dir) = self.target.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::io(dir, e))?;
        }
        Ok(header)
    }
}
