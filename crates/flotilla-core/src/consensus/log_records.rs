//! A member's Raft entries as the records its Flotilla log stores, and back (after a restart).
//!
//! A transaction entry's data *is* its encoded record, built by the leader that executed it;
//! it is stored as it came, once checked: its CRC holds and its header names the entry's
//! epoch and LSN (a leader cannot slip a record of another position into the log). Raft's own
//! entries (an epoch's empty first entry, membership changes) become consensus records
//! (`flotilla_wire::ConsensusRecord`), which carry the chain of the transaction before them.

use super::{EntryKind, LogEntry};
use bytes::Bytes;
use flotilla_types::{Chain, Epoch, Lsn};
use flotilla_wire::{ConsensusKind, ConsensusRecord};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryRecordError {
    #[error("entry {lsn}: its record is damaged: {detail}")]
    Damaged { lsn: Lsn, detail: String },
    #[error("entry {epoch}/{lsn} carries the record of {claimed}")]
    WrongPosition {
        epoch: Epoch,
        lsn: Lsn,
        claimed: String,
    },
}

/// Offsets in every record's header (format versions 2 and 3).
const EPOCH_AT: usize = 2;
const LSN_AT: usize = 10;
const CHAIN_AT: usize = 18;

fn header_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The record to store for `entry`; `last_chain` is the chain of the last transaction before
/// it. Returns the record and the chain after it.
pub fn record_of_entry(
    entry: &LogEntry,
    last_chain: Chain,
) -> Result<(Bytes, Chain), EntryRecordError> {
    let consensus = |kind| {
        let r = ConsensusRecord {
            epoch: entry.epoch,
            lsn: entry.lsn,
            chain: last_chain,
            kind,
            data: entry.data.to_vec(),
            context: entry.context.to_vec(),
        };
        (
            Bytes::from(flotilla_wire::encode_consensus_record(&r)),
            last_chain,
        )
    };
    match entry.kind {
        EntryKind::Membership => Ok(consensus(ConsensusKind::Membership)),
        EntryKind::Normal if entry.data.is_empty() => Ok(consensus(ConsensusKind::EpochStart)),
        EntryKind::Normal => {
            let bytes = &entry.data;
            let damaged = |detail: String| EntryRecordError::Damaged {
                lsn: entry.lsn,
                detail,
            };
            if flotilla_wire::is_consensus_record(bytes) {
                return Err(damaged("a consensus record as a transaction's data".into()));
            }
            flotilla_wire::check_record_crc(bytes).map_err(|e| damaged(e.to_string()))?;
            let (epoch, lsn, chain) = match (
                header_u64(bytes, EPOCH_AT),
                header_u64(bytes, LSN_AT),
                header_u64(bytes, CHAIN_AT),
            ) {
                (Some(e), Some(l), Some(c)) => (e, l, c),
                _ => return Err(damaged("too short for a record header".into())),
            };
            if (Epoch(epoch), Lsn(lsn)) != (entry.epoch, entry.lsn) {
                return Err(EntryRecordError::WrongPosition {
                    epoch: entry.epoch,
                    lsn: entry.lsn,
                    claimed: format!("{epoch}/{lsn}"),
                });
            }
            Ok((bytes.clone(), Chain(chain)))
        }
    }
}

/// The entry a stored record stands for, and the chain after it.
pub fn entry_of_record(bytes: &Bytes) -> Result<(LogEntry, Chain), EntryRecordError> {
    if flotilla_wire::is_consensus_record(bytes) {
        let r = flotilla_wire::decode_consensus_record(bytes).map_err(|e| {
            EntryRecordError::Damaged {
                lsn: Lsn(header_u64(bytes, LSN_AT).unwrap_or(0)),
                detail: e.to_string(),
            }
        })?;
        let (kind, data) = match r.kind {
            ConsensusKind::EpochStart => (EntryKind::Normal, Bytes::new()),
            ConsensusKind::Membership => (EntryKind::Membership, Bytes::from(r.data)),
        };
        return Ok((
            LogEntry {
                epoch: r.epoch,
                lsn: r.lsn,
                kind,
                data,
                context: Bytes::from(r.context),
            },
            r.chain,
        ));
    }
    let lsn = Lsn(header_u64(bytes, LSN_AT).unwrap_or(0));
    let entry = LogEntry {
        epoch: Epoch(header_u64(bytes, EPOCH_AT).unwrap_or(0)),
        lsn,
        kind: EntryKind::Normal,
        data: bytes.clone(),
        context: Bytes::new(),
    };
    // Checked as a leader's record is: the same function, so both ways agree.
    let (_, chain) = record_of_entry(&entry, Chain(0))?;
    Ok((entry, chain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::{ContentDigest, LogRecord, NodeId};

    fn txn(epoch: u64, lsn: u64, chain: u64) -> Bytes {
        Bytes::from(flotilla_wire::encode_record(&LogRecord {
            epoch: Epoch(epoch),
            lsn: Lsn(lsn),
            chain: Chain(chain),
            digest: ContentDigest(9),
            commit_time_us: 1,
            origin: NodeId::new("n1").unwrap(),
            pages: None,
            rows: Some(Default::default()),
            exchange: None,
        }))
    }

    fn entry(epoch: u64, lsn: u64, kind: EntryKind, data: Bytes) -> LogEntry {
        LogEntry {
            epoch: Epoch(epoch),
            lsn: Lsn(lsn),
            kind,
            data,
            context: Bytes::from_static(b"ctx"),
        }
    }

    #[test]
    fn entries_and_records_round_trip_with_the_chain() {
        let t = entry(2, 7, EntryKind::Normal, txn(2, 7, 700));
        let (rec, chain) = record_of_entry(&t, Chain(600)).unwrap();
        assert_eq!((rec.clone(), chain), (t.data.clone(), Chain(700)));
        let (back, c) = entry_of_record(&rec).unwrap();
        assert_eq!(
            (back.data, back.kind, c),
            (t.data, EntryKind::Normal, Chain(700))
        );

        let noop = entry(3, 8, EntryKind::Normal, Bytes::new());
        let (rec, chain) = record_of_entry(&noop, Chain(700)).unwrap();
        assert_eq!(chain, Chain(700), "raft's entries do not move the chain");
        let (back, c) = entry_of_record(&rec).unwrap();
        assert_eq!(
            (back.epoch, back.lsn, back.kind, c),
            (Epoch(3), Lsn(8), EntryKind::Normal, Chain(700))
        );
        assert!(back.data.is_empty());

        let member = entry(3, 9, EntryKind::Membership, Bytes::from_static(b"cc"));
        let (rec, _) = record_of_entry(&member, Chain(700)).unwrap();
        let (back, _) = entry_of_record(&rec).unwrap();
        assert_eq!(back, member);
    }

    #[test]
    fn a_record_must_be_intact_and_at_its_entrys_position() {
        let wrong = entry(2, 8, EntryKind::Normal, txn(2, 7, 700));
        assert!(matches!(
            record_of_entry(&wrong, Chain(0)),
            Err(EntryRecordError::WrongPosition { .. })
        ));
        let mut bytes = txn(2, 7, 700).to_vec();
        bytes[30] ^= 1;
        let damaged = entry(2, 7, EntryKind::Normal, Bytes::from(bytes));
        assert!(matches!(
            record_of_entry(&damaged, Chain(0)),
            Err(EntryRecordError::Damaged { .. })
        ));
        let junk = entry(2, 7, EntryKind::Normal, Bytes::from_static(b"xyz"));
        assert!(record_of_entry(&junk, Chain(0)).is_err());
        assert!(entry_of_record(&Bytes::from_static(b"\x03junk")).is_err());
    }
}
