//! Record layout, version 2 (little-endian), followed by a CRC32 of all preceding bytes:
//!
//! ```text
//! u8  format version (2)     u8  sections present (bit 0: pages, bit 1: rows, bit 2: exchange)
//! u64 epoch  u64 lsn  u64 chain  u64 content digest  u64 commit_time_us
//! u16 origin length, origin (UTF-8 node id)
//! if rows:  u32 length, the row changes (see `rows.rs`)
//! if exchange: u32 length, the exchange stamp (see `exchange.rs`; multi-leader nodes)
//! if pages: u32 page_size  u32 db_size_pages  u32 page count
//!           page count × (u32 pgno, page_size bytes)
//! u32 crc32
//! ```
//!
//! Version 1 (written before the logical log existed) is the same without the rows section,
//! with a payload kind byte (1 = pages) in place of the sections byte; it is still read.

use crate::cursor::unseal;
use crate::{decode_exchange, decode_rows, encode_exchange, encode_rows, Cursor, DecodeError, Out};
use flotilla_types::{
    Chain, ContentDigest, Epoch, LogKind, LogRecord, Lsn, NodeId, Page, PagePayload,
};

pub const RECORD_FORMAT_VERSION: u8 = 2;
pub(crate) const SECTION_PAGES: u8 = 1;
pub(crate) const SECTION_ROWS: u8 = 2;
pub(crate) const SECTION_EXCHANGE: u8 = 4;
const HEADER_LEN: usize = 2 + 5 * 8 + 2;
pub(crate) const WHAT: &str = "log record";

pub fn encoded_record_len(r: &LogRecord) -> usize {
    HEADER_LEN
        + r.origin.as_str().len()
        + 4
        + r.pages.as_ref().map_or(0, |p| {
            12 + p.pages.iter().map(|p| 4 + p.data.len()).sum::<usize>()
        })
}

/// Encodes a record; `rows` is the already encoded row section (see [`encode_rows`]) so that
/// the leader encodes it once for its meta row and its log.
pub fn encode_record_with_rows(r: &LogRecord, rows: Option<&[u8]>) -> Vec<u8> {
    let mut out = Out::with_capacity(encoded_record_len(r) + rows.map_or(0, |b| 4 + b.len()));
    let exchange = r.exchange.as_ref().map(encode_exchange);
    let sections = if r.pages.is_some() { SECTION_PAGES } else { 0 }
        | if rows.is_some() { SECTION_ROWS } else { 0 }
        | if exchange.is_some() {
            SECTION_EXCHANGE
        } else {
            0
        };
    out.u8(RECORD_FORMAT_VERSION)
        .u8(sections)
        .u64(r.epoch.0)
        .u64(r.lsn.0)
        .u64(r.chain.0)
        .u64(r.digest.0)
        .u64(r.commit_time_us)
        .str16(r.origin.as_str());
    if let Some(rows) = rows {
        out.bytes32(rows);
    }
    if let Some(exchange) = &exchange {
        out.bytes32(exchange);
    }
    if let Some(p) = &r.pages {
        out.u32(p.page_size)
            .u32(p.db_size_pages)
            .u32(p.pages.len() as u32);
        for p in &p.pages {
            out.u32(p.pgno).raw(&p.data);
        }
    }
    out.seal()
}

pub fn encode_record(r: &LogRecord) -> Vec<u8> {
    let rows = r.rows.as_ref().map(encode_rows);
    encode_record_with_rows(r, rows.as_deref())
}

/// Checks an encoded record's CRC without decoding it (a record passed on as it is).
pub fn check_record_crc(bytes: &[u8]) -> Result<(), DecodeError> {
    unseal(bytes, WHAT).map(|_| ())
}

pub fn decode_record(bytes: &[u8]) -> Result<LogRecord, DecodeError> {
    decode(bytes, true)
}

/// Decodes a record's header and row changes, leaving its pages out (`pages` is `None`): what a
/// change-feed reader needs, without copying page images. The CRC still covers every byte.
pub fn decode_record_rows(bytes: &[u8]) -> Result<LogRecord, DecodeError> {
    decode(bytes, false)
}

fn decode(bytes: &[u8], with_pages: bool) -> Result<LogRecord, DecodeError> {
    let body = unseal(bytes, WHAT)?;
    let mut c = Cursor::new(body, WHAT);
    let sections = read_sections(&mut c)?;
    let epoch = Epoch(c.u64()?);
    let lsn = Lsn(c.u64()?);
    let chain = Chain(c.u64()?);
    let digest = ContentDigest(c.u64()?);
    let commit_time_us = c.u64()?;
    let origin =
        NodeId::new(c.str16(64)?).map_err(|e| DecodeError::invalid(WHAT, e.to_string()))?;
    let rows = if sections & SECTION_ROWS != 0 {
        let bytes = c.bytes32()?;
        Some(
            decode_rows(bytes)
                .map_err(|e| DecodeError::invalid(WHAT, format!("lsn {lsn}: {e}")))?,
        )
    } else {
        None
    };
    let exchange = if sections & SECTION_EXCHANGE != 0 {
        Some(
            decode_exchange(c.bytes32()?)
                .map_err(|e| DecodeError::invalid(WHAT, format!("lsn {lsn}: {e}")))?,
        )
    } else {
        None
    };
    let pages = if sections & SECTION_PAGES != 0 && with_pages {
        Some(decode_pages(&mut c)?)
    } else {
        None
    };
    if with_pages {
        c.finish()?;
    }
    Ok(LogRecord {
        epoch,
        lsn,
        chain,
        digest,
        commit_time_us,
        origin,
        pages,
        rows,
        exchange,
    })
}

/// Reads the format version and the sections byte (a version 1 record has only pages).
pub(crate) fn read_sections(c: &mut Cursor) -> Result<u8, DecodeError> {
    let version = c.u8()?;
    Ok(match version {
        1 => match c.u8()? {
            1 => SECTION_PAGES,
            kind => {
                return Err(DecodeError::invalid(
                    WHAT,
                    format!("unknown payload kind {kind}"),
                ))
            }
        },
        2 => {
            let s = c.u8()?;
            if s & !(SECTION_PAGES | SECTION_ROWS | SECTION_EXCHANGE) != 0 {
                return Err(DecodeError::invalid(
                    WHAT,
                    format!("unknown sections {s:#x}"),
                ));
            }
            s
        }
        _ => {
            return Err(DecodeError::Version {
                what: WHAT,
                version,
                supported: RECORD_FORMAT_VERSION,
            })
        }
    })
}

fn decode_pages(c: &mut Cursor) -> Result<PagePayload, DecodeError> {
    let (page_size, db_size_pages, slices) = page_slices(c)?;
    Ok(PagePayload {
        page_size,
        db_size_pages,
        pages: slices
            .into_iter()
            .map(|(pgno, data)| Page {
                pgno,
                data: data.to_vec(),
            })
            .collect(),
    })
}

/// The page section at `c` (which it must end): page size, database size in pages, and each
/// page's number and image, borrowed. Checks the invariants of [`PagePayload`].
#[allow(clippy::type_complexity)]
pub(crate) fn page_slices<'a>(
    c: &mut Cursor<'a>,
) -> Result<(u32, u32, Vec<(u32, &'a [u8])>), DecodeError> {
    let page_size = c.u32()?;
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(DecodeError::invalid(WHAT, format!("page size {page_size}")));
    }
    let db_size_pages = c.u32()?;
    let count = c.u32()? as usize;
    let per_page = 4 + page_size as usize;
    if count.saturating_mul(per_page) != c.remaining() {
        return Err(DecodeError::invalid(
            WHAT,
            format!(
                "{count} pages of {page_size} bytes do not fit the {} bytes present",
                c.remaining()
            ),
        ));
    }
    let mut pages = Vec::with_capacity(count);
    let mut last = 0u32;
    for _ in 0..count {
        let pgno = c.u32()?;
        if pgno <= last || pgno > db_size_pages {
            return Err(DecodeError::invalid(
                WHAT,
                format!(
                    "page number {pgno} out of order or beyond the database size {db_size_pages}"
                ),
            ));
        }
        last = pgno;
        pages.push((pgno, c.take(page_size as usize)?));
    }
    Ok((page_size, db_size_pages, pages))
}

/// What a follower of `kind` is shipped of an encoded record: a logical follower gets the
/// record without its pages (a small fraction of the bytes), a physical one the record as
/// stored. Checks the CRC; does not decode the payloads. A record without the section the
/// follower needs is an error naming its LSN.
pub fn project_record(bytes: &[u8], kind: LogKind) -> Result<Vec<u8>, DecodeError> {
    if kind == LogKind::Physical {
        return Ok(bytes.to_vec());
    }
    let body = unseal(bytes, WHAT)?;
    let mut c = Cursor::new(body, WHAT);
    let version = c.u8()?;
    let sections = c.u8()?;
    c.take(40)?;
    let lsn = u64::from_le_bytes(body[10..18].try_into().expect("8 bytes"));
    c.str16(64)?;
    if version != 2 || sections & SECTION_ROWS == 0 {
        return Err(DecodeError::invalid(
            WHAT,
            format!("record {lsn} has no row changes (it was written before the logical log was enabled)"),
        ));
    }
    let rows = c.bytes32()?;
    let header_len = body.len() - c.remaining() - rows.len() - 4;
    let exchange = if sections & SECTION_EXCHANGE != 0 {
        Some(c.bytes32()?)
    } else {
        None
    };
    let mut out =
        Out::with_capacity(header_len + 12 + rows.len() + exchange.map_or(0, <[u8]>::len));
    out.raw(&body[..header_len]).bytes32(rows);
    if let Some(exchange) = exchange {
        out.bytes32(exchange);
    }
    out.0[1] = SECTION_ROWS | (sections & SECTION_EXCHANGE);
    Ok(out.seal())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample(lsn: u64, pages: &[u32]) -> LogRecord {
        LogRecord {
            epoch: Epoch(3),
            lsn: Lsn(lsn),
            chain: Chain(0xdead_beef),
            digest: ContentDigest(42),
            commit_time_us: 1_700_000_000_000,
            origin: NodeId::new("n1").unwrap(),
            rows: Some(crate::rows::tests::sample()),
            pages: Some(PagePayload {
                page_size: 512,
                db_size_pages: 10,
                pages: pages
                    .iter()
                    .map(|&pgno| Page {
                        pgno,
                        data: vec![pgno as u8; 512],
                    })
                    .collect(),
            }),
            exchange: None,
        }
    }

    #[test]
    fn round_trips() {
        let r = sample(7, &[1, 2, 9]);
        let bytes = encode_record(&r);
        assert_eq!(decode_record(&bytes).unwrap(), r);
        let mut bare = r.clone();
        bare.rows = None;
        assert_eq!(encode_record(&bare).len(), encoded_record_len(&bare));
    }

    #[test]
    fn the_exchange_stamp_round_trips_and_survives_the_logical_projection() {
        let mut r = sample(7, &[1, 2]);
        r.exchange = Some(crate::exchange::tests::sample());
        let full = encode_record(&r);
        assert_eq!(decode_record(&full).unwrap(), r);
        let back = decode_record(&project_record(&full, LogKind::Logical).unwrap()).unwrap();
        assert_eq!((back.pages, back.exchange), (None, r.exchange));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode_record(&sample(7, &[1, 3]));
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(decode_record(&b).is_err(), "flip at byte {i} accepted");
        }
    }

    #[test]
    fn rows_only_decoding_leaves_the_pages_out() {
        let r = sample(9, &[1, 2]);
        let got = decode_record_rows(&encode_record(&r)).unwrap();
        assert_eq!((got.pages, got.rows), (None, r.rows));
    }

    #[test]
    fn a_malformed_row_section_is_refused_with_its_lsn() {
        let mut r = sample(77, &[1]);
        r.pages = None;
        let mut rows = encode_rows(r.rows.as_ref().unwrap());
        rows.truncate(rows.len() - 3);
        let err = decode_record(&encode_record_with_rows(&r, Some(&rows))).unwrap_err();
        assert!(err.to_string().contains("lsn 77"), "{err}");
    }

    #[test]
    fn a_logical_projection_drops_the_pages_and_keeps_the_rest() {
        let r = sample(7, &[1, 2, 9]);
        let full = encode_record(&r);
        let projected = project_record(&full, LogKind::Logical).unwrap();
        assert!(projected.len() < full.len() / 4);
        let back = decode_record(&projected).unwrap();
        assert_eq!(back.pages, None);
        assert_eq!(back.rows, r.rows);
        assert_eq!(
            (back.lsn, back.chain, back.digest, back.origin),
            (r.lsn, r.chain, r.digest, r.origin.clone())
        );
        assert_eq!(project_record(&full, LogKind::Physical).unwrap(), full);
        let mut no_rows = r.clone();
        no_rows.rows = None;
        let err = project_record(&encode_record(&no_rows), LogKind::Logical).unwrap_err();
        assert!(
            err.to_string().contains("record 7 has no row changes"),
            "{err}"
        );
    }

    #[test]
    fn rejects_pages_out_of_range() {
        let mut r = sample(1, &[11]);
        r.pages.as_mut().unwrap().db_size_pages = 10;
        assert!(matches!(
            decode_record(&encode_record(&r)),
            Err(DecodeError::Invalid { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_record(&bytes);
        }

        #[test]
        fn resealed_garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            // Garbage with a valid CRC reaches the structural checks.
            let mut out = Out::default();
            out.raw(&body);
            let _ = decode_record(&out.seal());
        }
    }
}
