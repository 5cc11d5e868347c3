use crate::LogError;
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

    /// Opens and scans a segment. With `is_last`, a damaged tail is cut off (a crash during an
    /// append); otherwise damage is an error.
    pub fn open(path: PathBuf, expected_first: u64, is_last: bool) -> Result<Segment, LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
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
        while offset < len {
            match seg.check_frame(offset, len, &mut buf) {
                Ok(frame_len) => {
                    seg.offsets.push(offset);
                    offset += frame_len;
                }
                Err(detail) if is_last => {
                    tracing::warn!(
                        path = %path.display(), offset, %detail,
                        "cutting off a damaged log tail (crash during an append)"
                    );
                    seg.file
                        .set_len(offset)
                        .and_then(|_| seg.file.sync_all())
                        .map_err(|e| LogError::io(&path, e))?;
                    break;
                }
                Err(detail) => return Err(corrupt(offset, detail)),
            }
        }
        seg.end = offset;
        Ok(seg)
    }

    /// Checks the frame at `offset`: its length, its record's CRC and LSN. Returns its length.
    fn check_frame(&self, offset: u64, file_len: u64, buf: &mut Vec<u8>) -> Result<u64, String> {
        let mut len_bytes = [0u8; 4];
        if offset + 4 > file_len {
            return Err("torn frame length".into());
        }
        self.file
            .read_exact_at(&mut len_bytes, offset)
            .map_err(|e| e.to_string())?;
        let rec_len = u32::from_le_bytes(len_bytes);
        if !(RECORD_LSN_OFFSET as u32 + 12..=MAX_RECORD_LEN).contains(&rec_len) {
            return Err(format!("implausible record length {rec_len}"));
        }
        if offset + 4 + rec_len as u64 > file_len {
            return Err("torn record".into());
        }
        buf.resize(rec_len as usize, 0);
        self.file
            .read_exact_at(buf, offset + 4)
            .map_err(|e| e.to_string())?;
        let (body, crc) = buf.split_at(buf.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err("record checksum mismatch".into());
        }
        let lsn = record_lsn(buf);
        let expected = self.first_lsn + self.offsets.len() as u64;
        if lsn != expected {
            return Err(format!("record has lsn {lsn}, expected {expected}"));
        }
        Ok(4 + rec_len as u64)
    }

    /// Reads the frame at `offset`, whose extent the index knows: `frame_len` bytes including
    /// its length prefix. A length prefix that disagrees (damage at rest) is reported as `None`,
    /// never used to size an allocation.
    pub fn read_frame(
        file: &File,
        offset: u64,
        frame_len: u64,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; frame_len as usize];
        file.read_exact_at(&mut buf, offset)?;
        let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
        if u64::from(len) + 4 != frame_len || len > MAX_RECORD_LEN {
            return Ok(None);
        }
        buf.drain(..4);
        Ok(Some(buf))
    }
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
