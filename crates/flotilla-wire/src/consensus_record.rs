//! A cluster member's log holds, at the LSNs Raft gives them, entries that are not transactions:
//! the empty entry each new epoch starts with, and membership changes. They are stored as
//! records of format version 3 with a consensus section, so that a member rebuilds its Raft log
//! from its Flotilla log after a restart. Followers, change feeds and pipelines never receive
//! them: they skip such records ([`is_consensus_record`]), and the transaction records around
//! them link by the checksum chain across the gap in LSNs.
//!
//! Layout, version 3 (little-endian), followed by a CRC32 of all preceding bytes; the header is
//! a transaction record's, so every reader finds the LSN at the same offset:
//!
//! ```text
//! u8  format version (3)     u8  sections (bit 2: consensus; nothing else)
//! u64 epoch  u64 lsn  u64 chain (the last transaction's: these entries do not move it)
//! u64 content digest (0)  u64 commit_time_us (0)
//! u16 origin length, origin ("raft")
//! u8  kind (1: epoch start, 2: membership)
//! u32 length, data (membership: raft's encoded ConfChangeV2)
//! u32 length, context (membership: the host's description of the members)
//! u32 crc32
//! ```

use crate::cursor::unseal;
use crate::{Cursor, DecodeError, Out};
use flotilla_types::{Chain, Epoch, Lsn, Position};

pub const CONSENSUS_RECORD_VERSION: u8 = 3;
pub(crate) const SECTION_CONSENSUS: u8 = 4;
const WHAT: &str = "consensus record";
const ORIGIN: &str = "raft";
/// A membership change and its description are small; anything larger is damage.
const MAX_PART_LEN: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsensusKind {
    /// Raft's empty entry at the start of an epoch.
    EpochStart,
    /// A change of the voters or learners.
    Membership,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsensusRecord {
    pub epoch: Epoch,
    pub lsn: Lsn,
    /// The chain of the last transaction before it.
    pub chain: Chain,
    pub kind: ConsensusKind,
    pub data: Vec<u8>,
    pub context: Vec<u8>,
}

impl ConsensusRecord {
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            lsn: self.lsn,
        }
    }
}

pub fn encode_consensus_record(r: &ConsensusRecord) -> Vec<u8> {
    let mut out = Out::with_capacity(64 + r.data.len() + r.context.len());
    out.u8(CONSENSUS_RECORD_VERSION)
        .u8(SECTION_CONSENSUS)
        .u64(r.epoch.0)
        .u64(r.lsn.0)
        .u64(r.chain.0)
        .u64(0)
        .u64(0)
        .str16(ORIGIN)
        .u8(match r.kind {
            ConsensusKind::EpochStart => 1,
            ConsensusKind::Membership => 2,
        })
        .bytes32(&r.data)
        .bytes32(&r.context);
    out.seal()
}

/// Whether an encoded record is a consensus record (by its version byte; the CRC is checked by
/// whoever decodes it).
pub fn is_consensus_record(bytes: &[u8]) -> bool {
    bytes.first() == Some(&CONSENSUS_RECORD_VERSION)
}

pub fn decode_consensus_record(bytes: &[u8]) -> Result<ConsensusRecord, DecodeError> {
    let body = unseal(bytes, WHAT)?;
    let mut c = Cursor::new(body, WHAT);
    let version = c.u8()?;
    if version != CONSENSUS_RECORD_VERSION {
        return Err(DecodeError::Version {
            what: WHAT,
            version,
            supported: CONSENSUS_RECORD_VERSION,
        });
    }
    let sections = c.u8()?;
    if sections != SECTION_CONSENSUS {
        return Err(DecodeError::invalid(
            WHAT,
            format!("sections {sections:#x} (a consensus record has only its own)"),
        ));
    }
    let epoch = Epoch(c.u64()?);
    let lsn = Lsn(c.u64()?);
    let chain = Chain(c.u64()?);
    c.u64()?;
    c.u64()?;
    c.str16(64)?;
    let kind = match c.u8()? {
        1 => ConsensusKind::EpochStart,
        2 => ConsensusKind::Membership,
        k => return Err(DecodeError::invalid(WHAT, format!("unknown kind {k}"))),
    };
    let data = c.bytes32()?;
    let context = c.bytes32()?;
    if data.len() > MAX_PART_LEN || context.len() > MAX_PART_LEN {
        return Err(DecodeError::invalid(WHAT, "a part above 1 MiB"));
    }
    let (data, context) = (data.to_vec(), context.to_vec());
    c.finish()?;
    Ok(ConsensusRecord {
        epoch,
        lsn,
        chain,
        kind,
        data,
        context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ConsensusRecord {
        ConsensusRecord {
            epoch: Epoch(4),
            lsn: Lsn(77),
            chain: Chain(0xfeed),
            kind: ConsensusKind::Membership,
            data: vec![1, 2, 3],
            context: b"{\"id\":2}".to_vec(),
        }
    }

    #[test]
    fn round_trips_and_is_told_apart_from_transactions() {
        let r = sample();
        let bytes = encode_consensus_record(&r);
        assert!(is_consensus_record(&bytes));
        assert_eq!(decode_consensus_record(&bytes).unwrap(), r);
        // The LSN sits where every record has it (the log indexes records by it).
        assert_eq!(u64::from_le_bytes(bytes[10..18].try_into().unwrap()), 77);
        // A transaction decoder refuses it with a clear version error; a transaction record
        // is not a consensus record.
        let err = crate::decode_record(&bytes).unwrap_err().to_string();
        assert!(err.contains("version 3"), "{err}");
        let txn = crate::encode_record(&crate::record::tests::sample(5, &[1]));
        assert!(!is_consensus_record(&txn));
        assert!(decode_consensus_record(&txn).is_err());
    }

    #[test]
    fn damage_and_truncation_are_errors_not_panics() {
        let bytes = encode_consensus_record(&sample());
        for cut in 0..bytes.len() {
            assert!(
                decode_consensus_record(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x20;
            assert!(decode_consensus_record(&b).is_err(), "flip at {i}");
        }
    }
}
