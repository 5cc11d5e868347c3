//! What a physical follower is shipped: the records of one `Records` message form a *unit*,
//! and a page image that a later record of the same unit writes again is left out of the
//! earlier record.
//!
//! Why: a follower applies many records in one local transaction and writes each page once,
//! the last image winning; images that lose never needed to travel. With small transactions
//! that is nearly all of them (each commit rewrites the same table leaf and `_flotilla_meta`
//! page): 100,000 single-row transactions are about 440 MiB of page images in the log and a
//! few MiB once superseded images are left out.
//!
//! Invariant (protocol version 3): a follower applies a unit whole, in one local transaction,
//! or not at all — the state after a record inside a unit may lack pages it wrote, but the
//! state after the unit's last record is exact. The records keep their header (epoch, LSN,
//! chain, digest, commit time, origin), so the follower still checks the checksum chain record
//! by record and measures each transaction's lag; the row changes are left out, as a physical
//! follower does not read them.

use crate::cursor::unseal;
use crate::record::{
    page_slices, read_sections, SECTION_EXCHANGE, SECTION_PAGES, SECTION_ROWS, WHAT,
};
use crate::{Cursor, DecodeError, Out, RECORD_FORMAT_VERSION};
use std::collections::HashSet;

/// A stored record, borrowed: its fixed header and its page images.
struct PhysicalView<'a> {
    /// epoch, lsn, chain, digest, commit time, origin: copied as they are.
    header: &'a [u8],
    lsn: u64,
    page_size: u32,
    db_size_pages: u32,
    pages: Vec<(u32, &'a [u8])>,
}

/// The record's CRC is checked here, although the log checked it as it read the record: records
/// also come from the leader's cache of recent ones, which nothing else checks, and the unit
/// gives them a new CRC — without this, a record changed in memory would reach the follower
/// under a valid checksum. (A second CRC over a catch-up's reads cost no measurable time.)
fn view(bytes: &[u8]) -> Result<PhysicalView<'_>, DecodeError> {
    let body = unseal(bytes, WHAT)?;
    let mut c = Cursor::new(body, WHAT);
    let sections = read_sections(&mut c)?;
    let fixed = c.take(40)?;
    let lsn = u64::from_le_bytes(fixed[8..16].try_into().expect("8 bytes"));
    let origin = c.str16(64)?;
    let header = &body[2..2 + 40 + 2 + origin.len()];
    // The sections before the pages, in their order: the row changes, then a multi-leader
    // stamp (a physical follower reads neither).
    for section in [SECTION_ROWS, SECTION_EXCHANGE] {
        if sections & section != 0 {
            c.bytes32()?;
        }
    }
    if sections & SECTION_PAGES == 0 {
        return Err(DecodeError::invalid(
            WHAT,
            format!("record {lsn} has no page images"),
        ));
    }
    let (page_size, db_size_pages, pages) = page_slices(&mut c)?;
    c.finish()?;
    Ok(PhysicalView {
        header,
        lsn,
        page_size,
        db_size_pages,
        pages,
    })
}

/// Appends `records` (encoded as stored, in LSN order) to `out` as a unit: for each record, its
/// length and its version-2 encoding with pages only, less the pages a later record of the unit
/// writes, under a new CRC. Checks every record's CRC first: a damaged record is an error, not
/// shipped under a new checksum.
pub(crate) fn write_unit<B: AsRef<[u8]>>(out: &mut Out, records: &[B]) -> Result<(), DecodeError> {
    let views = records
        .iter()
        .map(|r| view(r.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(v) = views.iter().find(|v| v.page_size != views[0].page_size) {
        return Err(DecodeError::invalid(
            WHAT,
            format!(
                "record {} has pages of {} bytes, record {} of {}",
                v.lsn, v.page_size, views[0].lsn, views[0].page_size
            ),
        ));
    }
    // Walk backwards: a page is kept in the last record that writes it.
    let mut later: HashSet<u32> = HashSet::new();
    let mut keep: Vec<Vec<usize>> = vec![Vec::new(); views.len()];
    for (v, keep) in views.iter().zip(keep.iter_mut()).rev() {
        for (i, (pgno, _)) in v.pages.iter().enumerate() {
            if later.insert(*pgno) {
                keep.push(i);
            }
        }
    }
    out.u32(views.len() as u32);
    for (v, keep) in views.iter().zip(&keep) {
        let len = 2 + v.header.len() + 12 + keep.len() * (4 + v.page_size as usize) + 4;
        out.u32(len as u32);
        let start = out.0.len();
        out.u8(RECORD_FORMAT_VERSION)
            .u8(SECTION_PAGES)
            .raw(v.header)
            .u32(v.page_size)
            .u32(v.db_size_pages)
            .u32(keep.len() as u32);
        for &i in keep {
            let (pgno, data) = v.pages[i];
            out.u32(pgno).raw(data);
        }
        let crc = crc32fast::hash(&out.0[start..]);
        out.u32(crc);
        debug_assert_eq!(out.0.len() - start, len);
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::record::tests::sample;
    use crate::{decode_record, encode_record, encode_record_with_rows, LeaderMessage};
    use flotilla_types::LogRecord;
    use std::collections::BTreeMap;

    /// The database a follower gets from applying `records` in one transaction: each page's
    /// last image, and the last record's size.
    fn applied(records: &[LogRecord]) -> (u32, BTreeMap<u32, Vec<u8>>) {
        let mut pages = BTreeMap::new();
        let mut size = 0;
        for r in records {
            let p = r.pages.as_ref().unwrap();
            for page in &p.pages {
                pages.insert(page.pgno, page.data.clone());
            }
            size = p.db_size_pages;
        }
        (size, pages)
    }

    fn with_byte(mut r: LogRecord, b: u8) -> LogRecord {
        for p in &mut r.pages.as_mut().unwrap().pages {
            p.data.fill(b.wrapping_add(p.pgno as u8));
        }
        r
    }

    /// The page numbers each record carries.
    pub(crate) fn page_numbers(records: &[LogRecord]) -> Vec<Vec<u32>> {
        records
            .iter()
            .map(|r| {
                r.pages
                    .as_ref()
                    .unwrap()
                    .pages
                    .iter()
                    .map(|p| p.pgno)
                    .collect()
            })
            .collect()
    }

    fn unit(records: &[LogRecord]) -> Vec<LogRecord> {
        let encoded: Vec<Vec<u8>> = records.iter().map(encode_record).collect();
        let msg = LeaderMessage::encode_physical_unit(&encoded).unwrap();
        match LeaderMessage::decode(&msg).unwrap() {
            LeaderMessage::Records(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn superseded_pages_are_left_out_and_the_result_is_the_same() {
        let records = vec![
            with_byte(sample(5, &[1, 2, 3]), 10),
            with_byte(sample(6, &[2, 4]), 20),
            with_byte(sample(7, &[1, 2, 9]), 30),
        ];
        let got = unit(&records);
        let pgnos = page_numbers(&got);
        assert_eq!(pgnos, vec![vec![3], vec![4], vec![1, 2, 9]]);
        assert_eq!(applied(&got), applied(&records));
        for (g, r) in got.iter().zip(&records) {
            assert_eq!(
                (
                    g.lsn,
                    g.epoch,
                    g.chain,
                    g.digest,
                    g.commit_time_us,
                    &g.origin
                ),
                (
                    r.lsn,
                    r.epoch,
                    r.chain,
                    r.digest,
                    r.commit_time_us,
                    &r.origin
                )
            );
            assert_eq!(g.rows, None, "a physical follower does not get row changes");
        }
    }

    /// A multi-leader data centre's records carry a stamp between their row changes and their
    /// pages: its physical followers get the pages all the same.
    #[test]
    fn a_stamped_record_ships_its_pages() {
        let mut stamped = with_byte(sample(5, &[1, 2]), 10);
        stamped.exchange = Some(crate::exchange::tests::sample());
        let records = vec![stamped, with_byte(sample(6, &[2]), 20)];
        let got = unit(&records);
        assert_eq!(page_numbers(&got), vec![vec![1], vec![2]]);
        assert_eq!(applied(&got), applied(&records));
        assert!(got.iter().all(|r| r.exchange.is_none() && r.rows.is_none()));
    }

    #[test]
    fn a_damaged_malformed_or_page_less_record_is_refused_by_lsn() {
        let good = encode_record(&sample(5, &[1]));
        let mut damaged = encode_record(&sample(6, &[1]));
        damaged[20] ^= 1;
        assert!(LeaderMessage::encode_physical_unit(&[good.clone(), damaged]).is_err());
        let mut cut = encode_record(&sample(6, &[1]));
        cut.truncate(cut.len() - 9);
        assert!(LeaderMessage::encode_physical_unit(&[good.clone(), cut]).is_err());
        assert!(LeaderMessage::encode_physical_unit(&[vec![2u8, 1, 0]]).is_err());
        let mut rows_only = sample(7, &[]);
        let rows = crate::encode_rows(rows_only.rows.as_ref().unwrap());
        rows_only.pages = None;
        let err = LeaderMessage::encode_physical_unit(&[
            good,
            encode_record_with_rows(&rows_only, Some(&rows)),
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains("record 7 has no page images"),
            "{err}"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = LeaderMessage::encode_physical_unit(&[bytes]);
        }
    }

    #[test]
    fn each_record_stays_decodable_alone() {
        let got = unit(&[sample(5, &[1, 2]), sample(6, &[2])]);
        for r in &got {
            assert_eq!(decode_record(&encode_record(r)).unwrap(), *r);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_unit_applies_to_what_its_records_apply_to(
            writes in proptest::collection::vec(
                proptest::collection::btree_set(1u32..10, 0..5), 1..8)
        ) {
            let records: Vec<LogRecord> = writes
                .iter()
                .enumerate()
                .map(|(i, set)| {
                    let pages: Vec<u32> = set.iter().copied().collect();
                    with_byte(sample(100 + i as u64, &pages), i as u8 * 16)
                })
                .collect();
            let got = unit(&records);
            proptest::prop_assert_eq!(applied(&got), applied(&records));
        }
    }
}
