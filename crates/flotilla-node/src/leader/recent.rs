//! The newest encoded records in memory, so that followers that keep up are served without
//! reading the log files, and commit times for lag reporting.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Mutex;

const MAX_BYTES: usize = 64 << 20;
const MAX_TIMES: usize = 1 << 20;

#[derive(Default)]
struct Inner {
    records: VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// (lsn, commit time, encoded bytes of all records before this lsn)
    times: VecDeque<(u64, u64, u64)>,
    total_bytes: u64,
}

#[derive(Default)]
pub struct RecentRecords {
    inner: Mutex<Inner>,
}

impl RecentRecords {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, lsn: u64, commit_time_us: u64, encoded: Bytes) {
        let mut st = self.lock();
        st.bytes += encoded.len();
        let before = st.total_bytes;
        st.total_bytes += encoded.len() as u64;
        st.records.push_back((lsn, encoded));
        while st.bytes > MAX_BYTES && st.records.len() > 1 {
            let (_, old) = st.records.pop_front().expect("non-empty");
            st.bytes -= old.len();
        }
        st.times.push_back((lsn, commit_time_us, before));
        if st.times.len() > MAX_TIMES {
            st.times.pop_front();
        }
    }

    /// Forgets everything (a restore started a new history).
    pub fn clear(&self) {
        *self.lock() = Inner::default();
    }

    /// Records `from..` that are still in memory, at most `max_records`, stopping after the one
    /// that reaches `max_bytes`; `None` if `from` is older than the cache (read the log instead).
    pub fn from(&self, from: u64, max_records: usize, max_bytes: usize) -> Option<Vec<Bytes>> {
        let st = self.lock();
        let first = st.records.front()?.0;
        if from < first {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for (_, r) in st
            .records
            .iter()
            .skip((from - first) as usize)
            .take(max_records)
        {
            bytes += r.len();
            out.push(r.clone());
            if bytes >= max_bytes {
                break;
            }
        }
        Some(out)
    }

    /// Commit time of `lsn`, or of the oldest known commit after it (a lower bound on age).
    pub fn commit_time(&self, lsn: u64) -> Option<u64> {
        let st = self.lock();
        let first = st.times.front()?.0;
        let idx = lsn.saturating_sub(first) as usize;
        st.times.get(idx).map(|t| t.1)
    }

    /// Encoded bytes of the records after `lsn` (as far back as the window reaches).
    pub fn bytes_after(&self, lsn: u64) -> u64 {
        let st = self.lock();
        let Some(&(first, _, _)) = st.times.front() else {
            return 0;
        };
        let idx = (lsn + 1).saturating_sub(first) as usize;
        st.times
            .get(idx)
            .map_or(0, |&(_, _, before)| st.total_bytes - before)
    }
}
