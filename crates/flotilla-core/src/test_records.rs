//! Records for the state machines' tests.

use flotilla_types::{
    Chain, ContentDigest, Epoch, LogRecord, Lsn, NodeId, Page, PagePayload, RowPayload,
};

/// Record `lsn` following a state whose chain is `prev`: one page, and an (empty) row section so
/// that it can be shipped to logical followers too.
pub(crate) fn record(lsn: u64, prev: Chain) -> LogRecord {
    LogRecord {
        epoch: Epoch(1),
        lsn: Lsn(lsn),
        chain: prev.next(Epoch(1), Lsn(lsn), ContentDigest(lsn)),
        digest: ContentDigest(lsn),
        commit_time_us: 0,
        origin: NodeId::new("l").unwrap(),
        pages: Some(PagePayload {
            page_size: 512,
            db_size_pages: 1,
            pages: vec![Page {
                pgno: 1,
                data: vec![lsn as u8; 512],
            }],
        }),
        rows: Some(RowPayload {
            tables: vec![],
            items: vec![],
        }),
        exchange: None,
    }
}
