//! Versioned, checksummed binary encodings: log records (on disk and on the wire), replication
//! messages and the snapshot stream. Every decoder returns [`DecodeError`] on bad input and never
//! panics; no allocation is sized by a length field before the bytes are known to be there.
//! The byte layouts are documented in `docs/physical-log.md`.

#![forbid(unsafe_code)]

mod consensus_record;
mod cursor;
mod error;
mod exchange;
#[cfg(test)]
mod fixtures;
#[cfg(feature = "sim-bugs")]
pub mod injected_bugs;
mod message;
mod physical_unit;
mod record;
mod rows;
mod snapshot;

pub use consensus_record::{
    decode_consensus_record, encode_consensus_record, is_consensus_record, ConsensusKind,
    ConsensusRecord, CONSENSUS_RECORD_VERSION,
};
pub use cursor::{Cursor, Out};
pub use error::DecodeError;
pub use exchange::{decode_exchange, encode_exchange, EXCHANGE_FORMAT_VERSION};
pub use message::{
    FollowerMessage, LeaderMessage, RefusalCode, MAX_FOLLOWER_MESSAGE_BYTES, MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
};
pub use record::{
    check_record_crc, decode_record, decode_record_rows, encode_record, encode_record_with_rows,
    encoded_record_len, project_record, RECORD_FORMAT_VERSION,
};
pub use rows::{
    decode_rows, decode_value, encode_rows, encode_value, split_values, value_bytes, RowsMark,
    RowsWriter, ROWS_FORMAT_VERSION,
};
pub use snapshot::{SnapshotHeader, SNAPSHOT_FORMAT_VERSION, SNAPSHOT_MAGIC};
