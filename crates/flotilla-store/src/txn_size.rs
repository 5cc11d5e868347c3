//! How large the log record of the leader's open transaction is so far: its captured row
//! changes plus the page images it wrote. The record must stay under the log's record limit, so
//! a transaction that would exceed the configured maximum is refused before it commits.
//!
//! Pages are counted with SQLite's `SQLITE_DBSTATUS_CACHE_WRITE` counter (pages written to the
//! WAL by cache spills and flushes). Pages still dirty in the page cache are at most the cache's
//! size: the running estimate adds that bound, and only when the bound crosses the limit is the
//! cache flushed to the WAL (`sqlite3_db_cacheflush`) to count them. A page written twice in one
//! transaction is counted twice, so the estimate errs on the large side; pages of a request that
//! was rolled back are not counted.

use crate::row_capture::RowCapture;
use rusqlite::ffi;
use rusqlite::Connection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Encoded bytes per page image beyond the page itself (its page number).
const PAGE_OVERHEAD: u64 = 4;

/// The raw connection handle, for the status counters. Only used on the writer's own thread,
/// by the connection's own progress handler or between its statements.
#[derive(Clone, Copy)]
struct Handle(*mut ffi::sqlite3);
// SAFETY: the handle is only dereferenced by SQLite calls made on the thread that owns the
// connection (the progress handler runs inside that connection's statements); it is moved
// into the handler closure, which the connection owns and drops before closing.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

impl Handle {
    /// Pages written to the WAL since the counter was last reset.
    fn pages_written(self) -> u64 {
        let (mut cur, mut hi) = (0i32, 0i32);
        // SAFETY: a valid open connection (see above); out-pointers to locals.
        let rc = unsafe {
            ffi::sqlite3_db_status(
                self.0,
                ffi::SQLITE_DBSTATUS_CACHE_WRITE,
                &mut cur,
                &mut hi,
                0,
            )
        };
        if rc == ffi::SQLITE_OK {
            cur.max(0) as u64
        } else {
            0
        }
    }

    fn reset(self) {
        let (mut cur, mut hi) = (0i32, 0i32);
        // SAFETY: as above.
        unsafe {
            ffi::sqlite3_db_status(
                self.0,
                ffi::SQLITE_DBSTATUS_CACHE_WRITE,
                &mut cur,
                &mut hi,
                1,
            );
        }
    }

    /// Writes every dirty page of the open transaction to the WAL (not committed).
    fn flush(self) {
        // SAFETY: as above. SQLITE_BUSY cannot happen: this connection holds the write lock.
        unsafe {
            ffi::sqlite3_db_cacheflush(self.0);
        }
    }
}

#[derive(Clone)]
pub(crate) struct TxnSize {
    handle: Handle,
    capture: RowCapture,
    page_bytes: u64,
    /// The most dirty pages the page cache holds before it spills to the WAL.
    cache_pages: u64,
    /// Pages written by the transaction's kept requests (and Flotilla's own statements).
    kept_pages: Arc<AtomicU64>,
    /// The write counter when the current request began.
    request_start: Arc<AtomicU64>,
}

impl TxnSize {
    pub(crate) fn new(conn: &Connection, capture: RowCapture) -> rusqlite::Result<TxnSize> {
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let cache_size: i64 = conn.query_row("PRAGMA cache_size", [], |r| r.get(0))?;
        // A negative cache size is in KiB.
        let cache_pages = if cache_size < 0 {
            (-cache_size as u64 * 1024).div_ceil(page_size as u64)
        } else {
            cache_size as u64
        };
        Ok(TxnSize {
            // SAFETY: the handle outlives every use (see `Handle`).
            handle: Handle(unsafe { conn.handle() }),
            capture,
            page_bytes: page_size as u64 + PAGE_OVERHEAD,
            cache_pages,
            kept_pages: Arc::new(AtomicU64::new(0)),
            request_start: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A transaction began: nothing counted yet.
    pub(crate) fn begin_txn(&self) {
        self.handle.reset();
        self.kept_pages.store(0, Ordering::Relaxed);
        self.request_start.store(0, Ordering::Relaxed);
    }

    /// A client request begins; what was written before it is kept.
    pub(crate) fn begin_request(&self) {
        // Writes since the last request ended (Flotilla's own statements) count.
        self.keep_request();
    }

    /// The current request is kept: its pages count from now on.
    pub(crate) fn keep_request(&self) {
        let now = self.handle.pages_written();
        let start = self.request_start.swap(now, Ordering::Relaxed);
        self.kept_pages
            .fetch_add(now.saturating_sub(start), Ordering::Relaxed);
    }

    /// The current request was rolled back: its pages do not count.
    pub(crate) fn drop_request(&self) {
        self.request_start
            .store(self.handle.pages_written(), Ordering::Relaxed);
    }

    fn written(&self) -> u64 {
        self.kept_pages.load(Ordering::Relaxed)
            + self
                .handle
                .pages_written()
                .saturating_sub(self.request_start.load(Ordering::Relaxed))
    }

    /// What the record holds for certain so far (row changes and pages already written): cheap
    /// enough for the progress handler, and never more than the record will be — a statement
    /// that writes little is never stopped for the size of the page cache.
    pub(crate) fn written_so_far(&self) -> u64 {
        let rows = self.capture.bytes();
        if rows == u64::MAX {
            return u64::MAX;
        }
        rows + self.written() * self.page_bytes
    }

    /// An upper estimate of the record so far: pages still in the cache count at most the
    /// cache's size.
    pub(crate) fn estimate(&self) -> u64 {
        let rows = self.capture.bytes();
        if rows == u64::MAX {
            return u64::MAX;
        }
        rows + (self.written() + self.cache_pages) * self.page_bytes
    }

    /// The record so far, measured more closely when the cheap estimate crosses `limit`: the
    /// page cache is flushed so that every dirty page is counted as written.
    pub(crate) fn measure(&self, limit: u64) -> u64 {
        let estimate = self.estimate();
        if estimate <= limit {
            return estimate;
        }
        self.handle.flush();
        let rows = self.capture.bytes();
        if rows == u64::MAX {
            return u64::MAX;
        }
        rows + self.written() * self.page_bytes
    }
}
