//! Reads the page images of each commit out of the leader's `-wal` file.
//!
//! WAL layout (big-endian): a 32-byte header (magic, version, page size, checkpoint sequence,
//! salt-1, salt-2, checksum-1, checksum-2), then frames of a 24-byte header (page number,
//! database size in pages for the last frame of a commit and 0 otherwise, salt-1, salt-2,
//! checksum-1, checksum-2) and one page. Checksums are cumulative from the header on.
//!
//! Invariants the leader keeps so that this is exact: one writer connection, no automatic
//! checkpoints (Flotilla checkpoints from the writer between commits), and [`WalTail::capture`]
//! is called after every commit, so the first commit frame after the last position is that
//! commit's. When SQLite restarts the WAL after a checkpoint it writes a new header with new
//! salts; a changed salt means "start again at frame 1".

use crate::StoreError;
use flotilla_types::{Page, PagePayload};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const WAL_HEADER: u64 = 32;
const FRAME_HEADER: usize = 24;

#[derive(Debug)]
pub struct WalTail {
    path: PathBuf,
    /// Salts of the WAL generation being read; `None` before the first header was read.
    salts: Option<(u32, u32)>,
    big_endian_checksums: bool,
    page_size: u32,
    /// Offset of the next unread frame and the running checksum up to it.
    next_offset: u64,
    checksum: (u32, u32),
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn wal_checksum(big_endian: bool, data: &[u8], mut s: (u32, u32)) -> (u32, u32) {
    for w in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (be32(w, 0), be32(w, 4))
        } else {
            (
                u32::from_le_bytes(w[0..4].try_into().expect("4")),
                u32::from_le_bytes(w[4..8].try_into().expect("4")),
            )
        };
        s.0 = s.0.wrapping_add(x0).wrapping_add(s.1);
        s.1 = s.1.wrapping_add(x1).wrapping_add(s.0);
    }
    s
}

impl WalTail {
    pub fn new(db_path: &Path) -> WalTail {
        let mut p = db_path.as_os_str().to_owned();
        p.push("-wal");
        WalTail {
            path: PathBuf::from(p),
            salts: None,
            big_endian_checksums: false,
            page_size: 0,
            next_offset: WAL_HEADER,
            checksum: (0, 0),
        }
    }

    /// Bytes of WAL read so far in the current generation (drives checkpoint decisions).
    pub fn offset(&self) -> u64 {
        self.next_offset
    }

    fn open(&self) -> Result<Option<File>, StoreError> {
        match File::open(&self.path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(&self.path, e)),
        }
    }

    /// Re-reads the header; on a new generation (or the first read) starts at frame 1.
    fn sync_header(&mut self, file: &File) -> Result<bool, StoreError> {
        let mut h = [0u8; WAL_HEADER as usize];
        match file.read_exact_at(&mut h, 0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(StoreError::io(&self.path, e)),
        }
        let magic = be32(&h, 0);
        if magic != 0x377f_0682 && magic != 0x377f_0683 {
            return Err(StoreError::Capture(format!(
                "{} has no WAL header (magic {magic:08x})",
                self.path.display()
            )));
        }
        let salts = (be32(&h, 16), be32(&h, 20));
        if self.salts != Some(salts) {
            let big_endian = magic & 1 == 1;
            let sum = wal_checksum(big_endian, &h[..24], (0, 0));
            if sum != (be32(&h, 24), be32(&h, 28)) {
                return Err(StoreError::Capture("WAL header checksum mismatch".into()));
            }
            self.salts = Some(salts);
            self.big_endian_checksums = big_endian;
            self.page_size = be32(&h, 8);
            self.next_offset = WAL_HEADER;
            self.checksum = sum;
        }
        Ok(true)
    }

    /// The pages of the next commit after the last position, or `None` if the WAL holds no
    /// further complete commit.
    pub fn capture(&mut self) -> Result<Option<PagePayload>, StoreError> {
        let Some(file) = self.open()? else {
            return Ok(None);
        };
        if !self.sync_header(&file)? {
            return Ok(None);
        }
        let len = file
            .metadata()
            .map_err(|e| StoreError::io(&self.path, e))?
            .len();
        let frame_len = FRAME_HEADER + self.page_size as usize;
        let salts = self.salts.expect("header read");
        // Read in chunks: after a WAL restart the file keeps its old length, and the frames
        // beyond this commit (stale, from the previous generation) must not be read every time.
        let chunk_frames = (256 << 10) / frame_len + 1;
        let mut pages: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        let mut sum = self.checksum;
        let mut offset = self.next_offset;
        let mut buf = Vec::new();
        while offset + frame_len as u64 <= len {
            let frames = (((len - offset) / frame_len as u64) as usize).min(chunk_frames);
            buf.resize(frames * frame_len, 0);
            file.read_exact_at(&mut buf, offset)
                .map_err(|e| StoreError::io(&self.path, e))?;
            for frame in buf.chunks_exact(frame_len) {
                if (be32(frame, 8), be32(frame, 12)) != salts {
                    return Ok(None);
                }
                sum = wal_checksum(self.big_endian_checksums, &frame[..8], sum);
                sum = wal_checksum(self.big_endian_checksums, &frame[FRAME_HEADER..], sum);
                if sum != (be32(frame, 16), be32(frame, 20)) {
                    return Ok(None);
                }
                offset += frame_len as u64;
                // A page written twice in one transaction (cache spill): the later image wins.
                pages.insert(be32(frame, 0), frame[FRAME_HEADER..].to_vec());
                let db_size = be32(frame, 4);
                if db_size != 0 {
                    self.next_offset = offset;
                    self.checksum = sum;
                    return Ok(Some(PagePayload {
                        page_size: self.page_size,
                        db_size_pages: db_size,
                        pages: pages
                            .into_iter()
                            .filter(|(pgno, _)| *pgno <= db_size)
                            .map(|(pgno, data)| Page { pgno, data })
                            .collect(),
                    }));
                }
            }
        }
        Ok(None)
    }

    /// Every complete commit in the current WAL generation, oldest first; leaves the tail at the
    /// end of the last one.
    pub fn capture_all(&mut self) -> Result<Vec<PagePayload>, StoreError> {
        self.salts = None;
        let mut out = Vec::new();
        while let Some(p) = self.capture()? {
            out.push(p);
        }
        Ok(out)
    }
}
