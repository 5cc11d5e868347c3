use crate::LogError;
use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) const MAGIC: &[u8; 8] = b"FLOTLOG\0";
pub(crate) const VERSION: u8 = 1;
pub(crate) const HEADER_LEN: u64 = 8 + 1 + 8 + 4;
/// A record larger than this is refused as corrupt (a page image set of 1 GiB).
pub(crate) const MAX_RECORD_LEN: u32 = 1 << 30;
/// Offset of the LSN inside an encoded record (after version, kind and epoch).
const RECORD_LSN_OFFSET: usize = 2 + 8;

/// One segment file and the offsets of its frames. Invariant: `offsets[i]` is the frame of
/// `first_lsn + i`, and `end` is the byte just past the last complete frame.
pub(crate) struct Segment {
    pub first_lsn: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    pub offsets: Vec<u64>,
    pub end: u64,
}

pub(crate) fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("{first_lsn:020}.log"))
}

/// The first LSNs of the segment files in `dir`, in order.
pub(crate) fn segment_firsts(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut firsts: Vec<u64> = std::fs::read_dir(dir)
        .map_err(|e| LogError::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| parse_segment_name(e.file_name().to_str()?))
        .collect();
    firsts.sort_unstable();
    Ok(firsts)
}

pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".log")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

impl Segment {
    pub fn last_lsn(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.first_lsn + self.offsets.len() as u64 - 1)
    }

    pub fn create(dir: &Path, first_lsn: u64) -> Result<Segment, LogError> {
        let path = segment_path(dir, first_lsn);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, e))?;
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(MAGIC);
        header.push(VERSION);
        header.extend_from_slice(&first_lsn.to_le_bytes());
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        file.write_all(&header)
            .and_then(|_| file.sync_all())
            .map_err(|e| LogError::io(&path, e))?;
        // A new file survives a crash only once its directory entry is durable too.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| LogError::io(dir, e))?;
        Ok(Segment {
            first_lsn,
            path,
            file: Arc::new(file),
            offsets: Vec::new(),
            end: HEADER_LEN,
        })
    }

    /// Opens and scans a segment. With `is_last`, a torn tail is cut off (a crash during an
    /// append: the damaged record is the last thing in the file); damage that intact records
    /// follow, or damage in any other segment, is an error.
    pub fn open(path: PathBuf, expected_first: u64, is_last: bool) -> Result<Segment, LogError> {
        let mode = if is_last {
            Scan::CutTornTail
        } else {
            Scan::Strict
        };
        Self::scan(path, expected_first, mode).map(|(seg, _)| seg)
    }

    /// Scans a segment in `mode`; returns it and the first damage found, if any.
    pub fn scan(
        path: PathBuf,
        expected_first: u64,
        mode: Scan,
    ) -> Result<(Segment, Option<Damage>), LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(mode != Scan::Check)
            .open(&path)
            .map_err(|e| LogError::io(&path, e))?;
        let len = file.metadata().map_err(|e| LogError::io(&path, e))?.len();
        let corrupt = |offset: u64, detail: String| LogError::Corrupt {
            path: path.clone(),
            offset,
            detail,
        };
        let mut header = [0u8; HEADER_LEN as usize];
        if len < HEADER_LEN {
            return Err(corrupt(
                0,
                format!("file of {len} bytes has no complete header"),
            ));
        }
        file.read_exact_at(&mut header, 0)
            .map_err(|e| LogError::io(&path, e))?;
        let crc = u32::from_le_bytes(header[17..21].try_into().expect("4 bytes"));
        if &header[..8] != MAGIC || crc32fast::hash(&header[..17]) != crc {
            return Err(corrupt(0, "not a Flotilla log segment header".into()));
        }
        if header[8] != VERSION {
            return Err(corrupt(
                8,
                format!(
                    "segment format version {} (this build reads {VERSION})",
                    header[8]
                ),
            ));
        }
        let first_lsn = u64::from_le_bytes(header[9..17].try_into().expect("8 bytes"));
        if first_lsn != expected_first {
            return Err(corrupt(
                9,
                format!("header says first lsn {first_lsn}, file name says {expected_first}"),
            ));
        }
        let mut seg = Segment {
            first_lsn,
            path: path.clone(),
            file: Arc::new(file),
            offsets: Vec::new(),
            end: HEADER_LEN,
        };
        let mut offset = HEADER_LEN;
        let mut buf = Vec::new();
        let mut cut = None;
        while offset < len {
            match seg.check_frame(offset, len, &mut buf) {
                Ok(frame_len) => {
                    seg.offsets.push(offset);
                    offset += frame_len;
                }
                // A failed read says nothing about the bytes: never cut off as damage.
                Err(FrameError::Io(e)) => return Err(LogError::io(&path, e)),
                Err(damage) if mode != Scan::Strict => {
                    let detail = damage.to_string();
                    let lsn = first_lsn + seg.offsets.len() as u64;
                    let intact = seg
                        .intact_frame_after(offset, len, lsn)
                        .map_err(|e| LogError::io(&path, e))?;
                    let damage = Damage {
                        path: path.clone(),
                        offset,
                        lsn,
                        detail,
                        intact_after: intact,
                        bytes_cut: len - offset,
                    };
                    if mode == Scan::Check {
                        cut = Some(damage);
                        break;
                    }
                    if intact.is_some() && mode == Scan::CutTornTail {
                        return Err(LogError::Damaged(Box::new(damage)));
                    }
                    tracing::warn!(
                        path = %path.display(), offset, detail = %damage.detail,
                        "cutting off a damaged log tail"
                    );
                    seg.file
                        .set_len(offset)
                        .and_then(|_| seg.file.sync_all())
                        .map_err(|e| LogError::io(&path, e))?;
                    cut = Some(damage);
                    break;
                }
                Err(damage) => return Err(corrupt(offset, damage.to_string())),
            }
        }
        seg.end = offset;
        Ok((seg, cut))
    }

    /// The first intact frame after the damage at `from` (its offset and lsn), if any: a
    /// frame whose length fits the file, whose lsn lies after `damaged_lsn` and whose
    /// checksum holds. Only a crash tearing the last append leaves damage with nothing intact
    /// after it.
    fn intact_frame_after(
        &self,
        from: u64,
        file_len: u64,
        damaged_lsn: u64,
    ) -> std::io::Result<Option<(u64, u64)>> {
        const BLOCK: u64 = 1 << 20;
        const PEEK: u64 = 4 + RECORD_LSN_OFFSET as u64 + 8;
        let min_frame = 4 + RECORD_LSN_OFFSET as u64 + 12;
        let max_lsn = damaged_lsn + (file_len - from) / min_frame + 1;
        let mut block = Vec::new();
        let mut frame = Vec::new();
        let mut start = from + 1;
        while start + PEEK <= file_len {
            let end = (start + BLOCK + PEEK).min(file_len);
            block.resize((end - start) as usize, 0);
            self.file.read_exact_at(&mut block, start)?;
            let mut i = 0usize;
            while (i as u64) + PEEK <= block.len() as u64 && (i as u64) < BLOCK {
                let at = start + i as u64;
                let rec_len = u32::from_le_bytes(block[i..i + 4].try_into().expect("4 bytes"));
                let plausible = (RECORD_LSN_OFFSET as u32 + 12..=MAX_RECORD_LEN).contains(&rec_len)
                    && at + 4 + rec_len as u64 <= file_len;
                if plausible {
                    let l = i + 4 + RECORD_LSN_OFFSET;
                    let lsn = u64::from_le_bytes(block[l..l + 8].try_into().expect("8 bytes"));
                    if lsn > damaged_lsn && lsn <= max_lsn {
                        frame.resize(rec_len as usize, 0);
                        self.file.read_exact_at(&mut frame, at + 4)?;
                        if frame_crc_ok(&frame) {
                            return Ok(Some((at, lsn)));
                        }
                    }
                }
                i += 1;
            }
            start += BLOCK;
        }
        Ok(None)
    }

    /// Checks the frame at `offset`: its length, its record's CRC and LSN. Returns its length.
    fn check_frame(
        &self,
        offset: u64,
        file_len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<u64, FrameError> {
        let mut len_bytes = [0u8; 4];
        if offset + 4 > file_len {
            return Err(FrameError::TornLength);
        }
        self.file.read_exact_at(&mut len_bytes, offset)?;
        let rec_len = u32::from_le_bytes(len_bytes);
        if !(RECORD_LSN_OFFSET as u32 + 12..=MAX_RECORD_LEN).contains(&rec_len) {
            return Err(FrameError::ImplausibleLength(rec_len));
        }
        if offset + 4 + rec_len as u64 > file_len {
            return Err(FrameError::TornRecord);
        }
        buf.resize(rec_len as usize, 0);
        self.file.read_exact_at(buf, offset + 4)?;
        let (body, crc) = buf.split_at(buf.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(FrameError::ChecksumMismatch);
        }
        let found = record_lsn(buf);
        let expected = self.first_lsn + self.offsets.len() as u64;
        if found != expected {
            return Err(FrameError::WrongLsn { found, expected });
        }
        Ok(4 + rec_len as u64)
    }
}

/// Why a frame failed its check at a scan.
#[derive(Debug, thiserror::Error)]
enum FrameError {
    /// Reading failed: the disk's trouble, not the frame's (the scan fails; nothing is cut).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("torn frame length")]
    TornLength,
    #[error("implausible record length {0}")]
    ImplausibleLength(u32),
    #[error("torn record")]
    TornRecord,
    #[error("record checksum mismatch")]
    ChecksumMismatch,
    #[error("record has lsn {found}, expected {expected}")]
    WrongLsn { found: u64, expected: u64 },
}

/// How a segment's damage is treated when it is scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Any damage is an error (a sealed segment).
    Strict,
    /// A torn last record is cut off; damage that intact records follow is an error (the
    /// active segment at start-up).
    CutTornTail,
    /// Damage is cut off whatever follows it (an explicit repair).
    CutAnything,
    /// Nothing is changed: the first damage is reported (a check).
    Check,
}

/// Damage found in a segment: where, which record, and what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub path: PathBuf,
    pub offset: u64,
    /// The lsn the damaged record should have held.
    pub lsn: u64,
    pub detail: String,
    /// An intact record after the damage (offset, lsn): proof of corruption, not a torn write.
    pub intact_after: Option<(u64, u64)>,
    /// Bytes from the damage to the end of the file.
    pub bytes_cut: u64,
}

/// The record inside a frame read whole (`u32` length, then the record), if the length fits
/// the frame.
pub(crate) fn frame_record(frame: Bytes) -> Option<Bytes> {
    let len = u32::from_le_bytes(frame.get(..4)?.try_into().ok()?);
    if u64::from(len) + 4 != frame.len() as u64 || len > MAX_RECORD_LEN {
        return None;
    }
    Some(frame.slice(4..))
}

/// Whether an encoded record's trailing CRC32 matches its body.
pub(crate) fn frame_crc_ok(encoded: &[u8]) -> bool {
    if encoded.len() < 4 {
        return false;
    }
    let (body, crc) = encoded.split_at(encoded.len() - 4);
    crc32fast::hash(body) == u32::from_le_bytes(crc.try_into().expect("4 bytes"))
}

pub(crate) fn record_lsn(encoded: &[u8]) -> u64 {
    u64::from_le_bytes(
        encoded[RECORD_LSN_OFFSET..RECORD_LSN_OFFSET + 8]
            .try_into()
            .expect("8 bytes"),
    )
}
