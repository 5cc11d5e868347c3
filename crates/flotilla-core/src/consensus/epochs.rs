//! The epoch history: where each epoch's entries start in the log (Kafka's leader-epoch cache).
//! By Raft's log matching, an entry `(epoch, lsn)` is in a log exactly when that log's epoch at
//! `lsn` is `epoch`, so this short list tells, for any position, whether it is part of a
//! history — after a snapshot replaced the entries themselves, too. A snapshot carries the
//! sender's list, so that a member that had entries the snapshot replaces can tell which of
//! them were divergent (never part of the history) and save those aside.
//!
//! Encoding (a snapshot's data; version 1): `[1u8][last lsn u64][count u32]([epoch u64][start
//! lsn u64])*`, big-endian.

use flotilla_types::{Epoch, Lsn, Position};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochHistory {
    /// `(epoch, first lsn)`, both strictly increasing.
    starts: Vec<(u64, u64)>,
}

const VERSION: u8 = 1;

impl EpochHistory {
    pub fn from_starts(mut starts: Vec<(u64, u64)>) -> EpochHistory {
        starts.sort_unstable();
        starts.dedup_by_key(|s| s.0);
        EpochHistory { starts }
    }

    pub fn starts(&self) -> &[(u64, u64)] {
        &self.starts
    }

    /// An entry of `epoch` was written at `lsn` (after every earlier one, truncations applied).
    pub fn note(&mut self, epoch: u64, lsn: u64) {
        if self.starts.last().is_none_or(|&(e, _)| epoch > e) {
            self.starts.push((epoch, lsn));
        }
    }

    /// The entries from `lsn` on were cut.
    pub fn truncate_from(&mut self, lsn: u64) {
        while self.starts.last().is_some_and(|&(_, s)| s >= lsn) {
            self.starts.pop();
        }
    }

    /// The epoch of the entry at `lsn` (0: before every known epoch).
    pub fn epoch_at(&self, lsn: u64) -> u64 {
        match self.starts.partition_point(|&(_, s)| s <= lsn) {
            0 => 0,
            i => self.starts[i - 1].0,
        }
    }

    /// Whether `position` belongs to the history this list describes, up to `last`.
    pub fn holds(&self, position: Position, last: Lsn) -> bool {
        position.lsn <= last && self.epoch_at(position.lsn.0) == position.epoch.0
    }

    /// The committed epoch start that rules `position` out of the history, if one does: an
    /// epoch after `position`'s began at or before its LSN, within `commit`. (A member that
    /// has not seen the newer epochs yet rules out nothing; uncommitted starts rule out
    /// nothing, as they may still be cut.)
    pub fn superseding(&self, position: Position, commit: Lsn) -> Option<(u64, u64)> {
        self.starts
            .iter()
            .copied()
            .find(|&(e, s)| e > position.epoch.0 && s <= position.lsn.0 && s <= commit.0)
    }

    pub fn encode(&self, last: Lsn) -> Vec<u8> {
        let mut out = Vec::with_capacity(13 + 16 * self.starts.len());
        out.push(VERSION);
        out.extend_from_slice(&last.0.to_be_bytes());
        out.extend_from_slice(&(self.starts.len() as u32).to_be_bytes());
        for (e, s) in &self.starts {
            out.extend_from_slice(&e.to_be_bytes());
            out.extend_from_slice(&s.to_be_bytes());
        }
        out
    }

    /// `None` for anything that is not a version-1 list (a peer sent garbage).
    pub fn decode(bytes: &[u8]) -> Option<(EpochHistory, Lsn)> {
        let (&v, rest) = bytes.split_first()?;
        if v != VERSION || rest.len() < 12 {
            return None;
        }
        let last = u64::from_be_bytes(rest[..8].try_into().ok()?);
        let n = u32::from_be_bytes(rest[8..12].try_into().ok()?) as usize;
        let body = &rest[12..];
        if body.len() != n.checked_mul(16)? {
            return None;
        }
        let starts = body
            .chunks_exact(16)
            .map(|c| {
                (
                    u64::from_be_bytes(c[..8].try_into().expect("8 bytes")),
                    u64::from_be_bytes(c[8..].try_into().expect("8 bytes")),
                )
            })
            .collect();
        Some((EpochHistory::from_starts(starts), Lsn(last)))
    }

    /// The epoch at `lsn` as an [`Epoch`].
    pub fn position_at(&self, lsn: Lsn) -> Position {
        Position {
            epoch: Epoch(self.epoch_at(lsn.0)),
            lsn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_a_later_epoch_began_before_is_ruled_out_once_that_start_is_committed() {
        let h = EpochHistory::from_starts(vec![(1, 1), (2, 100), (4, 180)]);
        let p = |e, l| Position::new(e, l);
        // Epoch 1 ended at 99: 1/99 may be in the history, 1/100 and 1/500 are not.
        assert_eq!(h.superseding(p(1, 99), Lsn(200)), None);
        assert_eq!(h.superseding(p(1, 100), Lsn(200)), Some((2, 100)));
        assert_eq!(h.superseding(p(1, 500), Lsn(200)), Some((2, 100)));
        assert_eq!(h.superseding(p(2, 179), Lsn(200)), None);
        assert_eq!(h.superseding(p(3, 185), Lsn(200)), Some((4, 180)));
        // Not committed yet: the start may still be cut, so it rules nothing out.
        assert_eq!(h.superseding(p(3, 185), Lsn(179)), None);
        // Newer than anything this member knows: nothing to say.
        assert_eq!(h.superseding(p(9, 1_000), Lsn(200)), None);
    }

    #[test]
    fn tells_which_positions_a_history_holds() {
        let mut h = EpochHistory::default();
        for (e, l) in [(1, 1), (1, 2), (1, 3), (3, 4), (3, 5), (4, 6)] {
            h.note(e, l);
        }
        assert_eq!(h.starts(), &[(1, 1), (3, 4), (4, 6)]);
        assert_eq!(h.epoch_at(0), 0);
        assert_eq!(h.epoch_at(3), 1);
        assert_eq!(h.epoch_at(5), 3);
        assert_eq!(h.epoch_at(99), 4);
        assert!(h.holds(Position::new(3, 5), Lsn(6)));
        assert!(!h.holds(Position::new(2, 5), Lsn(6)));
        assert!(
            !h.holds(Position::new(4, 7), Lsn(6)),
            "beyond the last entry"
        );
        h.truncate_from(5);
        assert_eq!(h.starts(), &[(1, 1), (3, 4)]);
        h.truncate_from(4);
        h.note(5, 4);
        assert_eq!(h.starts(), &[(1, 1), (5, 4)]);
        let (back, last) = EpochHistory::decode(&h.encode(Lsn(9))).unwrap();
        assert_eq!((back, last), (h.clone(), Lsn(9)));
        let bytes = h.encode(Lsn(9));
        for cut in 0..bytes.len() {
            assert!(
                EpochHistory::decode(&bytes[..cut]).is_none(),
                "cut at {cut}"
            );
        }
    }
}
