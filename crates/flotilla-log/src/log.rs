use crate::segment::{record_lsn, Segment, MAX_RECORD_LEN};
use crate::LogError;
use bytes::Bytes;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// When appended records are flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fdatasync` on every [`Log::sync`]: a record is durable before it is acknowledged.
    #[default]
    Always,
    /// Leave flushing to the operating system: a power loss can lose acknowledged records
    /// (a process crash cannot). For benchmarks and throw-away clusters.
    Never,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A segment is closed and a new one started once it holds this many bytes.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 << 20,
            fsync: FsyncPolicy::Always,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    pub first_lsn: u64,
    pub last_lsn: u64,
    pub bytes: u64,
    pub path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// Oldest retained LSN (`last + 1` when the log holds nothing).
    pub first_lsn: u64,
    pub last_lsn: u64,
    pub durable_lsn: u64,
    pub bytes: u64,
    pub segments: usize,
}

struct State {
    /// Ordered by `first_lsn`; never empty; LSNs are contiguous across segments.
    segments: Vec<Segment>,
    durable_lsn: u64,
    poisoned: Option<String>,
}

impl State {
    fn last_lsn(&self) -> u64 {
        let seg = self.segments.last().expect("never empty");
        seg.last_lsn().unwrap_or(seg.first_lsn - 1)
    }

    fn first_lsn(&self) -> u64 {
        self.segments[0].first_lsn
    }
}

/// The replication log. One writer appends (the leader's commit path); any number of readers
/// (shipping tasks) read concurrently.
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    state: Mutex<State>,
}

impl Log {
    /// Opens the log in `dir`, creating it if needed. An empty log starts after `start_after`
    /// (the position of the database it belongs to).
    pub fn open(dir: &Path, config: LogConfig, start_after: u64) -> Result<Log, LogError> {
        std::fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        let firsts = crate::segment::segment_firsts(dir)?;
        let mut segments: Vec<Segment> = Vec::with_capacity(firsts.len());
        for (i, first) in firsts.iter().enumerate() {
            let path = crate::segment::segment_path(dir, *first);
            let seg = Segment::open(path.clone(), *first, i + 1 == firsts.len())?;
            if let Some(prev) = segments.last() {
                let expected = prev.last_lsn().map_or(prev.first_lsn, |l| l + 1);
                if seg.first_lsn != expected {
                    return Err(LogError::Corrupt {
                        path,
                        offset: 0,
                        detail: format!(
                            "segment starts at lsn {} but the previous one ends before {expected}",
                            seg.first_lsn
                        ),
                    });
                }
            }
            segments.push(seg);
        }
        if segments.is_empty() {
            segments.push(Segment::create(dir, start_after + 1)?);
        }
        let mut state = State {
            segments,
            durable_lsn: 0,
            poisoned: None,
        };
        // Everything that survived recovery is on disk; make sure it is durable before we say so.
        state
            .segments
            .last()
            .expect("never empty")
            .file
            .sync_data()
            .map_err(|e| LogError::io(dir, e))?;
        state.durable_lsn = state.last_lsn();
        Ok(Log {
            dir: dir.to_path_buf(),
            config,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent state (every mutation is the last
        // step of its method), so a poisoned mutex is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one encoded record. It becomes durable (and visible to readers) at the next
    /// [`Log::sync`].
    pub fn append(&self, encoded: &[u8]) -> Result<(), LogError> {
        let lsn = record_lsn(encoded);
        let mut st = self.lock();
        if let Some(p) = &st.poisoned {
            return Err(LogError::Poisoned(p.clone()));
        }
        let last = st.last_lsn();
        if lsn != last + 1 {
            return Err(LogError::OutOfOrder { got: lsn, last });
        }
        if encoded.len() as u64 > MAX_RECORD_LEN as u64 {
            return Err(LogError::Poisoned(format!(
                "record of {} bytes exceeds the 1 GiB limit",
                encoded.len()
            )));
        }
        let needs_roll = {
            let active = st.segments.last().expect("never empty");
            active.end >= self.config.segment_bytes && !active.offsets.is_empty()
        };
        if needs_roll {
            // Seal the full segment before starting the next one so that recovery only ever
            // finds a torn tail in the last segment.
            let res = st.segments.last().expect("never empty").file.sync_data();
            if let Err(e) = res {
                return Err(self.poison(&mut st, e));
            }
            st.durable_lsn = last;
            match Segment::create(&self.dir, lsn) {
                Ok(seg) => st.segments.push(seg),
                Err(e) => {
                    st.poisoned = Some(e.to_string());
                    return Err(e);
                }
            }
        }
        let active = st.segments.last_mut().expect("never empty");
        let mut frame = Vec::with_capacity(4 + encoded.len());
        frame.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        frame.extend_from_slice(encoded);
        if let Err(e) = active.file.write_all_at(&frame, active.end) {
            return Err(self.poison(&mut st, e));
        }
        active.offsets.push(active.end);
        active.end += frame.len() as u64;
        Ok(())
    }

    fn poison(&self, st: &mut State, e: std::io::Error) -> LogError {
        let err = LogError::io(&self.dir, e);
        st.poisoned = Some(err.to_string());
        err
    }

    /// Makes every appended record durable (per the fsync policy) and returns the last LSN.
    pub fn sync(&self) -> Result<u64, LogError> {
        let (file, last) = {
            let st = self.lock();
            if let Some(p) = &st.poisoned {
                return Err(LogError::Poisoned(p.clone()));
            }
            if st.durable_lsn == st.last_lsn() {
                return Ok(st.durable_lsn);
            }
            (
                st.segments.last().expect("never empty").file.clone(),
                st.last_lsn(),
            )
        };
        if self.config.fsync == FsyncPolicy::Always {
            if let Err(e) = file.sync_data() {
                let mut st = self.lock();
                return Err(self.poison(&mut st, e));
            }
        }
        let mut st = self.lock();
        st.durable_lsn = st.durable_lsn.max(last);
        Ok(st.durable_lsn)
    }

    /// Oldest retained LSN (`last + 1` when the log holds nothing): what `stats` says, without
    /// summing the segments (asked on every replication event).
    pub fn first_lsn(&self) -> u64 {
        self.lock().first_lsn()
    }

    pub fn stats(&self) -> LogStats {
        let st = self.lock();
        LogStats {
            first_lsn: st.first_lsn(),
            last_lsn: st.last_lsn(),
            durable_lsn: st.durable_lsn,
            bytes: st.segments.iter().map(|s| s.end).sum(),
            segments: st.segments.len(),
        }
    }

    /// One summary per segment, oldest first.
    pub fn segments(&self) -> Vec<SegmentSummary> {
        let st = self.lock();
        st.segments
            .iter()
            .map(|s| SegmentSummary {
                first_lsn: s.first_lsn,
                last_lsn: s.last_lsn().unwrap_or(s.first_lsn.saturating_sub(1)),
                bytes: s.end,
                path: s.path.clone(),
            })
            .collect()
    }

    /// Reads durable records from `from` on: at most `max_records`, and stops after the record
    /// that reaches `max_bytes` (at least one record is returned if one is there).
    pub fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>, LogError> {
        // Collect (file, offset) pairs under the lock; read outside it.
        // (file, offset, frame length, path)
        let plan: Vec<(Arc<std::fs::File>, u64, u64, PathBuf)> = {
            let st = self.lock();
            let first = st.first_lsn();
            if from < first {
                return Err(LogError::Trimmed {
                    requested: from,
                    first,
                });
            }
            let mut plan = Vec::new();
            let mut lsn = from;
            while lsn <= st.durable_lsn && plan.len() < max_records {
                let idx = st.segments.partition_point(|s| s.first_lsn <= lsn) - 1;
                let seg = &st.segments[idx];
                let i = (lsn - seg.first_lsn) as usize;
                let Some(&offset) = seg.offsets.get(i) else {
                    break;
                };
                let end = seg.offsets.get(i + 1).copied().unwrap_or(seg.end);
                plan.push((seg.file.clone(), offset, end - offset, seg.path.clone()));
                lsn += 1;
            }
            plan
        };
        // Frames that lie back to back in one file are read with one `pread` into one buffer,
        // and each record is a slice of it: no copy per record (a catch-up reads hundreds of
        // MiB). Reads stop at `max_bytes`, so a run is cut there before it is read.
        let mut out = Vec::with_capacity(plan.len());
        let mut bytes = 0usize;
        let mut i = 0;
        while i < plan.len() && (bytes < max_bytes || out.is_empty()) {
            let (file, start, _, path) = &plan[i];
            let mut end = start + plan[i].2;
            let mut j = i + 1;
            while j < plan.len()
                && Arc::ptr_eq(&plan[j].0, file)
                && plan[j].1 == end
                && bytes + ((end - start) as usize) < max_bytes
            {
                end += plan[j].2;
                j += 1;
            }
            let mut buf = vec![0u8; (end - start) as usize];
            file.read_exact_at(&mut buf, *start)
                .map_err(|e| LogError::io(path, e))?;
            let buf = Bytes::from(buf);
            let mut at = 0usize;
            for (_, offset, frame_len, path) in &plan[i..j] {
                let frame = buf.slice(at..at + *frame_len as usize);
                at += *frame_len as usize;
                // Damage at rest (after the log was opened) is caught here, before it is
                // shipped.
                let Some(rec) =
                    crate::segment::frame_record(frame).filter(|r| crate::segment::frame_crc_ok(r))
                else {
                    return Err(LogError::Corrupt {
                        path: path.clone(),
                        offset: *offset,
                        detail: "record damaged at rest (length or checksum mismatch)".into(),
                    });
                };
                bytes += rec.len();
                out.push(rec);
                if bytes >= max_bytes {
                    break;
                }
            }
            i = j;
        }
        Ok(out)
    }

    /// Deletes every segment whose records all precede `keep_from`. The active segment is never
    /// deleted. Returns the number of segments removed.
    pub fn remove_before(&self, keep_from: u64) -> Result<usize, LogError> {
        let victims: Vec<PathBuf> = {
            let mut st = self.lock();
            let n = st
                .segments
                .iter()
                .take(st.segments.len() - 1)
                .take_while(|s| s.last_lsn().is_some_and(|l| l < keep_from))
                .count();
            st.segments.drain(..n).map(|s| s.path).collect()
        };
        for path in &victims {
            std::fs::remove_file(path).map_err(|e| LogError::io(path, e))?;
        }
        Ok(victims.len())
    }

    /// Cuts every record from `from` on (a cluster member's entries that its leader's log
    /// replaces), durably: the files are shortened or removed and flushed before this returns.
    /// Cutting at or before the first retained record empties the log, which continues after
    /// `from - 1`. Cutting past the last record does nothing.
    pub fn truncate_from(&self, from: u64) -> Result<(), LogError> {
        let first = self.first_lsn();
        if from <= first {
            return self.reset(from.saturating_sub(1));
        }
        let mut st = self.lock();
        if from > st.last_lsn() {
            return Ok(());
        }
        // Whole segments after the cut go (newest first, so that a crash midway leaves a
        // contiguous log), then the segment holding `from` is shortened.
        while st
            .segments
            .last()
            .is_some_and(|s| s.first_lsn >= from && st.segments.len() > 1)
        {
            let seg = st.segments.pop().expect("checked");
            if let Err(e) = std::fs::remove_file(&seg.path) {
                st.poisoned = Some(format!("cutting the log at {from}: {e}"));
                return Err(LogError::io(&seg.path, e));
            }
        }
        let active = st.segments.last_mut().expect("never empty");
        let keep = (from - active.first_lsn) as usize;
        if keep < active.offsets.len() {
            let end = active.offsets[keep];
            let cut = active
                .file
                .set_len(end)
                .and_then(|_| active.file.sync_all());
            if let Err(e) = cut {
                return Err(self.poison(&mut st, e));
            }
            active.offsets.truncate(keep);
            active.end = end;
        }
        let dir_synced = std::fs::File::open(&self.dir).and_then(|d| d.sync_all());
        if let Err(e) = dir_synced {
            return Err(self.poison(&mut st, e));
        }
        st.durable_lsn = st.durable_lsn.min(from - 1);
        Ok(())
    }

    /// Empties the log so that it continues after `start_after` (a replica that was rebuilt
    /// from a snapshot starts a new history there).
    pub fn reset(&self, start_after: u64) -> Result<(), LogError> {
        let mut st = self.lock();
        let new = Segment::create(&self.dir, start_after + 1).or_else(|e| {
            // The segment for that LSN may already exist from an earlier reset.
            let path = crate::segment::segment_path(&self.dir, start_after + 1);
            if path.exists() && st.segments.iter().any(|s| s.path == path) {
                std::fs::remove_file(&path).map_err(|e| LogError::io(&path, e))?;
                st.segments.retain(|s| s.path != path);
                Segment::create(&self.dir, start_after + 1)
            } else {
                Err(e)
            }
        })?;
        for seg in st.segments.drain(..) {
            std::fs::remove_file(&seg.path).map_err(|e| LogError::io(&seg.path, e))?;
        }
        st.segments.push(new);
        st.durable_lsn = start_after;
        st.poisoned = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::*;
    use flotilla_wire::encode_record;

    fn rec(lsn: u64, fill: u8) -> Vec<u8> {
        encode_record(&LogRecord {
            epoch: Epoch(1),
            lsn: Lsn(lsn),
            chain: Chain(lsn),
            digest: ContentDigest(0),
            commit_time_us: 0,
            origin: NodeId::new("n").unwrap(),
            pages: Some(PagePayload {
                page_size: 512,
                db_size_pages: 1,
                pages: vec![Page {
                    pgno: 1,
                    data: vec![fill; 512],
                }],
            }),
            rows: None,
            exchange: None,
        })
    }

    /// A log in `dir` holding records 1..=last (each a page of 1s), synced.
    fn synced(dir: &Path, config: LogConfig, last: u64) -> Log {
        let log = Log::open(dir, config, 0).unwrap();
        for lsn in 1..=last {
            log.append(&rec(lsn, 1)).unwrap();
        }
        log.sync().unwrap();
        log
    }

    fn small() -> LogConfig {
        LogConfig {
            segment_bytes: 2000,
            fsync: FsyncPolicy::Always,
        }
    }

    /// Segment files of format version 1, kept in `fixtures/segment-v1/` (two segments, records
    /// 1..=5): a change to the segment format that this build cannot read fails here.
    /// `FLOTILLA_WRITE_FIXTURES=1` writes the fixture when it is missing.
    #[test]
    fn segment_version_1_fixture_still_reads() {
        assert_eq!(
            crate::segment::VERSION,
            1,
            "a new version gets a fixture of its own"
        );
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/segment-v1");
        if std::env::var_os("FLOTILLA_WRITE_FIXTURES").is_some() && !fixture.exists() {
            let log = Log::open(&fixture, small(), 0).unwrap();
            for lsn in 1..=5 {
                log.append(&rec(lsn, lsn as u8)).unwrap();
            }
            log.sync().unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let mut files = 0;
        for e in std::fs::read_dir(&fixture).expect("fixture present") {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
            files += 1;
        }
        assert!(files >= 2, "the fixture spans segments");
        let log = Log::open(dir.path(), small(), 5).unwrap();
        let got = log.read(1, 100, usize::MAX).unwrap();
        assert_eq!(got, (1..=5).map(|l| rec(l, l as u8)).collect::<Vec<_>>());
    }

    #[test]
    fn appends_reads_and_reopens_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small(), 0).unwrap();
        for lsn in 1..=20 {
            log.append(&rec(lsn, lsn as u8)).unwrap();
        }
        // Only sealed segments are durable before the sync.
        assert!(
            log.read(1, 100, usize::MAX).unwrap().len() < 20,
            "not yet durable"
        );
        assert_eq!(log.sync().unwrap(), 20);
        let all = log.read(1, 100, usize::MAX).unwrap();
        assert_eq!(all.len(), 20);
        assert_eq!(all[4], rec(5, 5));
        assert!(log.stats().segments > 3);
        drop(log);
        let log = Log::open(dir.path(), small(), 0).unwrap();
        assert_eq!(log.stats().last_lsn, 20);
        assert_eq!(
            log.read(17, 2, usize::MAX).unwrap(),
            vec![rec(17, 17), rec(18, 18)]
        );
        log.append(&rec(21, 0)).unwrap();
        assert!(matches!(
            log.append(&rec(23, 0)),
            Err(LogError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn torn_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let log = synced(dir.path(), LogConfig::default(), 3);
        drop(log);
        let path = crate::segment::segment_path(dir.path(), 1);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 100).unwrap();
        let log = Log::open(dir.path(), LogConfig::default(), 0).unwrap();
        assert_eq!(log.stats().last_lsn, 2);
        log.append(&rec(3, 9)).unwrap();
        log.sync().unwrap();
        assert_eq!(log.read(3, 1, usize::MAX).unwrap(), vec![rec(3, 9)]);
    }

    #[test]
    fn corruption_in_a_sealed_segment_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = synced(dir.path(), small(), 10);
        drop(log);
        let path = crate::segment::segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        match Log::open(dir.path(), small(), 0) {
            Err(LogError::Corrupt { path: p, .. }) => assert_eq!(p, path),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("corrupt segment accepted"),
        }
    }

    /// The finding: one byte flipped in the middle of the active segment, and the 414 intact
    /// records after it were cut as a "torn tail" with only a warning.
    #[test]
    fn damage_followed_by_intact_records_stops_the_log_until_repaired() {
        let rec_len = 4 + rec(1, 1).len() as u64;
        for (what, offset_in_record) in [("a page byte", 300u64), ("a length prefix", 1)] {
            let dir = tempfile::tempdir().unwrap();
            let log = Log::open(dir.path(), LogConfig::default(), 0).unwrap();
            for lsn in 1..=40 {
                log.append(&rec(lsn, 1)).unwrap();
            }
            log.sync().unwrap();
            drop(log);
            let path = crate::segment::segment_path(dir.path(), 1);
            let before = std::fs::read(&path).unwrap();
            let mut bytes = before.clone();
            // Record 11.
            let at = (crate::segment::HEADER_LEN + 10 * rec_len + offset_in_record) as usize;
            bytes[at] ^= 0x5a;
            std::fs::write(&path, &bytes).unwrap();
            let err = match Log::open(dir.path(), LogConfig::default(), 0) {
                Err(e) => e,
                Ok(_) => panic!("{what}: damage with intact records after it was accepted"),
            };
            let msg = err.to_string();
            assert!(matches!(err, LogError::Damaged(_)), "{what}: {msg}");
            assert!(
                msg.contains(&path.display().to_string())
                    && msg.contains("record 11")
                    && msg.contains("lsn 12")
                    && msg.contains("flotilla log repair"),
                "{what}: {msg}"
            );
            // Nothing was cut.
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "{what}");
            // A check reports the same and changes nothing.
            let report = crate::check(dir.path()).unwrap().expect("damage");
            assert_eq!(report.damage.lsn, 11, "{what}");
            assert_eq!(report.last_kept_lsn, 10);
            assert!(!report.is_torn_tail());
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
            // A repair cuts there; the log opens with records 1..=10 and takes appends.
            let repaired = crate::repair(dir.path()).unwrap().expect("damage");
            assert_eq!(repaired.damage.offset, report.damage.offset);
            let log = Log::open(dir.path(), LogConfig::default(), 0).unwrap();
            assert_eq!(log.stats().last_lsn, 10, "{what}");
            log.append(&rec(11, 7)).unwrap();
            log.sync().unwrap();
            assert_eq!(log.read(11, 1, usize::MAX).unwrap(), vec![rec(11, 7)]);
            assert_eq!(crate::check(dir.path()).unwrap(), None);
        }
    }

    /// A crash during an append leaves the last record torn in any of these ways; each is cut.
    #[test]
    fn every_kind_of_torn_last_record_is_cut() {
        let rec_len = 4 + rec(1, 1).len() as u64;
        type Tear = fn(&mut Vec<u8>, usize);
        let tears: [(&str, Tear); 4] = [
            ("cut short", |b, last| b.truncate(last + 30)),
            ("zeroes", |b, last| {
                b[last..].iter_mut().for_each(|x| *x = 0)
            }),
            ("half written", |b, last| {
                let n = b.len();
                b[last + (n - last) / 2..].iter_mut().for_each(|x| *x = 0)
            }),
            ("garbage length", |b, last| {
                b[last..last + 4].copy_from_slice(&[9, 9, 9, 9])
            }),
        ];
        for (what, tear) in tears {
            let dir = tempfile::tempdir().unwrap();
            let log = Log::open(dir.path(), LogConfig::default(), 0).unwrap();
            for lsn in 1..=5 {
                log.append(&rec(lsn, 1)).unwrap();
            }
            log.sync().unwrap();
            drop(log);
            let path = crate::segment::segment_path(dir.path(), 1);
            let mut bytes = std::fs::read(&path).unwrap();
            tear(
                &mut bytes,
                (crate::segment::HEADER_LEN + 4 * rec_len) as usize,
            );
            std::fs::write(&path, &bytes).unwrap();
            let report = crate::check(dir.path()).unwrap().expect("damage");
            assert!(report.is_torn_tail(), "{what}: {}", report.describe());
            let log = Log::open(dir.path(), LogConfig::default(), 0)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(log.stats().last_lsn, 4, "{what}");
        }
    }

    #[test]
    fn damage_at_rest_is_caught_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = synced(dir.path(), LogConfig::default(), 3);
        let path = crate::segment::segment_path(dir.path(), 1);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // A byte inside record 2's page image.
        let offset = crate::segment::HEADER_LEN + (4 + rec(1, 1).len() as u64) + 300;
        f.write_all_at(&[0xee], offset).unwrap();
        assert_eq!(log.read(1, 1, usize::MAX).unwrap(), vec![rec(1, 1)]);
        assert!(matches!(
            log.read(2, 1, usize::MAX),
            Err(LogError::Corrupt { .. })
        ));
        // A damaged length prefix is caught too, without trusting it.
        let len_at = crate::segment::HEADER_LEN + 2 * (4 + rec(1, 1).len() as u64);
        f.write_all_at(&[0xff, 0xff, 0xff, 0x3f], len_at).unwrap();
        assert!(matches!(
            log.read(3, 1, usize::MAX),
            Err(LogError::Corrupt { .. })
        ));
    }

    /// A read stops after the record that reaches `max_bytes` — also inside a run of
    /// back-to-back records read at once, and across segments — and returns at least one.
    #[test]
    fn reads_stop_after_the_record_that_reaches_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small(), 0).unwrap();
        for lsn in 1..=20 {
            log.append(&rec(lsn, lsn as u8)).unwrap();
        }
        log.sync().unwrap();
        let len = rec(1, 1).len();
        let expect = |from: u64, n: u64| {
            (from..from + n)
                .map(|l| rec(l, l as u8))
                .collect::<Vec<_>>()
        };
        for (from, max_bytes, n) in [
            (1, 0, 1),
            (1, 1, 1),
            (1, len, 1),
            (1, len + 1, 2),
            (2, 3 * len, 3),
            (2, 3 * len + 1, 4),
            // Many segments of a few records each: runs end at segment ends.
            (1, 12 * len - 1, 12),
            (5, usize::MAX, 16),
        ] {
            assert_eq!(
                log.read(from, 100, max_bytes).unwrap(),
                expect(from, n),
                "from {from}, max_bytes {max_bytes}"
            );
        }
        assert_eq!(log.read(3, 2, usize::MAX).unwrap(), expect(3, 2));
    }

    /// Damage in the middle of a run read at once is caught, and what precedes it still reads.
    #[test]
    fn damage_inside_a_run_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let log = synced(dir.path(), LogConfig::default(), 6);
        let path = crate::segment::segment_path(dir.path(), 1);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let frame = 4 + rec(1, 1).len() as u64;
        f.write_all_at(&[0xee], crate::segment::HEADER_LEN + 3 * frame + 200)
            .unwrap();
        assert!(matches!(
            log.read(1, 100, usize::MAX),
            Err(LogError::Corrupt { .. })
        ));
        assert_eq!(log.read(1, 3, usize::MAX).unwrap().len(), 3);
    }

    #[test]
    fn retention_removes_whole_old_segments_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = synced(dir.path(), small(), 20);
        let removed = log.remove_before(10).unwrap();
        assert!(removed > 0);
        let first = log.stats().first_lsn;
        assert!(first <= 10 && first > 1, "first retained {first}");
        assert!(matches!(
            log.read(1, 1, usize::MAX),
            Err(LogError::Trimmed { .. })
        ));
        assert_eq!(log.read(10, 1, usize::MAX).unwrap(), vec![rec(10, 1)]);
        // Never removes the active segment.
        log.remove_before(1000).unwrap();
        assert_eq!(log.stats().last_lsn, 20);
    }

    #[test]
    fn reset_starts_a_new_history() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), small(), 0).unwrap();
        log.append(&rec(1, 1)).unwrap();
        log.reset(100).unwrap();
        assert_eq!(log.stats().first_lsn, 101);
        log.append(&rec(101, 1)).unwrap();
        log.sync().unwrap();
        drop(log);
        let log = Log::open(dir.path(), small(), 0).unwrap();
        assert_eq!(log.stats().last_lsn, 101);
    }
    #[test]
    fn truncation_cuts_records_durably_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let log = synced(dir.path(), small(), 12);
        let segments_before = log.segments().len();
        assert!(segments_before >= 3, "{segments_before}");
        // Past the end: nothing happens.
        log.truncate_from(13).unwrap();
        assert_eq!(log.stats().last_lsn, 12);
        log.truncate_from(5).unwrap();
        assert_eq!(log.stats().last_lsn, 4);
        assert_eq!(log.stats().durable_lsn, 4);
        assert!(log.segments().len() < segments_before);
        assert!(log.read(5, 10, usize::MAX).unwrap().is_empty());
        // New records continue at the cut, with other content, and survive a reopen.
        log.append(&rec(5, 9)).unwrap();
        log.append(&rec(6, 9)).unwrap();
        log.sync().unwrap();
        drop(log);
        let log = Log::open(dir.path(), small(), 0).unwrap();
        assert_eq!(log.stats().last_lsn, 6);
        let five = log.read(5, 1, usize::MAX).unwrap();
        assert_eq!(five[0].as_ref(), rec(5, 9).as_slice());
        // Cutting at the first record empties the log; it continues from there.
        log.truncate_from(1).unwrap();
        assert_eq!(log.stats().last_lsn, 0);
        log.append(&rec(1, 3)).unwrap();
        log.sync().unwrap();
        assert_eq!(log.stats().last_lsn, 1);
    }
}
