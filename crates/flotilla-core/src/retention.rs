//! Which log segments may be deleted: the leader keeps what its slowest follower needs, bounded
//! by a size cap and an age cap (a follower beyond them re-bootstraps from a snapshot).

/// One segment as the log reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub first_lsn: u64,
    pub last_lsn: u64,
    pub bytes: u64,
    /// When the segment was last written.
    pub modified_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub max_bytes: u64,
    pub max_age_ms: u64,
}

/// Returns the first LSN to keep. `needed_from` is the oldest LSN a known follower still needs
/// (`None`: no follower needs anything). The newest segment is never deleted.
pub fn keep_from(
    segments: &[SegmentInfo],
    needed_from: Option<u64>,
    policy: RetentionPolicy,
    now_ms: u64,
) -> u64 {
    let Some(newest) = segments.last() else {
        return 0;
    };
    // Without followers, nothing needs old records: keep only the caps' worth.
    let mut keep = needed_from.unwrap_or(newest.first_lsn);
    // Size cap: drop the oldest segments until the rest fits.
    let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
    for s in &segments[..segments.len() - 1] {
        let too_big = total > policy.max_bytes;
        let too_old = now_ms.saturating_sub(s.modified_ms) > policy.max_age_ms;
        if too_big || too_old {
            keep = keep.max(s.last_lsn + 1);
            total -= s.bytes;
        } else {
            break;
        }
    }
    keep.min(newest.first_lsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs() -> Vec<SegmentInfo> {
        (0..4)
            .map(|i| SegmentInfo {
                first_lsn: i * 10 + 1,
                last_lsn: i * 10 + 10,
                bytes: 100,
                modified_ms: i * 1000,
            })
            .collect()
    }

    const LOOSE: RetentionPolicy = RetentionPolicy {
        max_bytes: 1 << 40,
        max_age_ms: u64::MAX,
    };

    #[test]
    fn keeps_what_the_slowest_follower_needs() {
        assert_eq!(keep_from(&segs(), Some(15), LOOSE, 0), 15);
        assert_eq!(keep_from(&segs(), Some(1), LOOSE, 0), 1);
    }

    #[test]
    fn without_followers_keeps_the_newest_segment() {
        assert_eq!(keep_from(&segs(), None, LOOSE, 0), 31);
    }

    #[test]
    fn caps_override_a_slow_follower() {
        let by_size = RetentionPolicy {
            max_bytes: 250,
            max_age_ms: u64::MAX,
        };
        assert_eq!(keep_from(&segs(), Some(1), by_size, 0), 21);
        let by_age = RetentionPolicy {
            max_bytes: 1 << 40,
            max_age_ms: 1500,
        };
        // Segments modified at 0 and 1000 are older than 1.5 s at 3000.
        assert_eq!(keep_from(&segs(), Some(1), by_age, 3000), 21);
        // The newest segment is never dropped, however old.
        assert_eq!(keep_from(&segs(), Some(1), by_age, 1_000_000), 31);
    }
}
