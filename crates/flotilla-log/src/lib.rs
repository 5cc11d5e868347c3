//! Flotilla's replication log: an append-only sequence of encoded [`flotilla_types::LogRecord`]s,
//! one per committed transaction, in segment files of bounded size.
//!
//! Layout of a segment file `<first lsn, 20 digits>.log`:
//!
//! ```text
//! header: "FLOTLOG\0"  u8 version (1)  u64 first lsn  u32 crc32 of the preceding 17 bytes
//! frames: u32 length, then `length` bytes of an encoded record (which ends in its own CRC32)
//! ```
//!
//! Recovery scans every segment; a torn last record of the *last* segment (a crash during an
//! append: nothing intact follows it) is cut off. Damage anywhere else, or damage that intact
//! records follow, stops the node with an error naming the file, offset and records; an operator
//! cuts the log there explicitly ([`repair`]).
//! A record is durable once [`Log::sync`] returned after its append; only durable records are
//! handed to readers.

#![forbid(unsafe_code)]

mod error;
mod log;
mod repair;
mod segment;

pub use error::LogError;
pub use log::{FsyncPolicy, Log, LogConfig, LogStats, SegmentSummary};
pub use repair::{check, repair, DamageReport};
pub use segment::Damage;

/// The largest encoded record the log holds.
pub const MAX_RECORD_BYTES: u64 = segment::MAX_RECORD_LEN as u64;
