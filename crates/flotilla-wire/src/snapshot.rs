//! Snapshot stream (`GET /v1/snapshot`), version 1:
//!
//! ```text
//! header: "FLOTSNAP" u8 version  u64 epoch u64 lsn u64 chain  u16+cluster id
//!         u32 page_size  u32 page_count  u32 crc32 of the header
//! body:   page_count × page_size bytes, pages 1..=page_count in order
//! trailer: u32 crc32 of the body
//! ```
//! The body is the database file itself, byte for byte, as of the header's position.

use crate::cursor::unseal;
use crate::{Cursor, DecodeError, Out};
use flotilla_types::{Chain, Position};

pub const SNAPSHOT_MAGIC: &[u8; 8] = b"FLOTSNAP";
pub const SNAPSHOT_FORMAT_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub position: Position,
    pub chain: Chain,
    pub cluster_id: String,
    pub page_size: u32,
    pub page_count: u32,
}

impl SnapshotHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out::default();
        out.raw(SNAPSHOT_MAGIC)
            .u8(SNAPSHOT_FORMAT_VERSION)
            .u64(self.position.epoch.0)
            .u64(self.position.lsn.0)
            .u64(self.chain.0)
            .str16(&self.cluster_id)
            .u32(self.page_size)
            .u32(self.page_count);
        out.seal()
    }

    /// The header's length is not fixed (it holds the cluster id); this reads its length from
    /// the first bytes: returns `Ok(None)` if more bytes are needed.
    pub fn decode_prefix(bytes: &[u8]) -> Result<Option<(SnapshotHeader, usize)>, DecodeError> {
        const WHAT: &str = "snapshot header";
        let fixed = 8 + 1 + 24;
        if bytes.len() < fixed + 2 {
            return Ok(None);
        }
        if &bytes[..8] != SNAPSHOT_MAGIC {
            return Err(DecodeError::invalid(
                WHAT,
                "not a Flotilla snapshot (bad magic)",
            ));
        }
        if bytes[8] != SNAPSHOT_FORMAT_VERSION {
            return Err(DecodeError::Version {
                what: WHAT,
                version: bytes[8],
                supported: SNAPSHOT_FORMAT_VERSION,
            });
        }
        let id_len = u16::from_le_bytes([bytes[fixed], bytes[fixed + 1]]) as usize;
        let total = fixed + 2 + id_len + 8 + 4;
        if bytes.len() < total {
            return Ok(None);
        }
        let body = unseal(&bytes[..total], WHAT)?;
        let mut c = Cursor::new(&body[9..], WHAT);
        let position = Position::new(c.u64()?, c.u64()?);
        let chain = Chain(c.u64()?);
        let cluster_id = c.str16(64)?.to_string();
        let page_size = c.u32()?;
        let page_count = c.u32()?;
        c.finish()?;
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(DecodeError::invalid(WHAT, format!("page size {page_size}")));
        }
        Ok(Some((
            SnapshotHeader {
                position,
                chain,
                cluster_id,
                page_size,
                page_count,
            },
            total,
        )))
    }

    pub fn body_len(&self) -> u64 {
        self.page_size as u64 * self.page_count as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_round_trips_from_any_prefix() {
        let h = SnapshotHeader {
            position: Position::new(1, 2),
            chain: Chain(3),
            cluster_id: "ab".repeat(16),
            page_size: 4096,
            page_count: 10,
        };
        let bytes = h.encode();
        for cut in 0..bytes.len() {
            assert_eq!(SnapshotHeader::decode_prefix(&bytes[..cut]).unwrap(), None);
        }
        let mut more = bytes.clone();
        more.extend_from_slice(b"body");
        assert_eq!(
            SnapshotHeader::decode_prefix(&more).unwrap(),
            Some((h, bytes.len()))
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = SnapshotHeader::decode_prefix(&body);
            let mut b = SNAPSHOT_MAGIC.to_vec();
            b.push(1);
            b.extend_from_slice(&body);
            let _ = SnapshotHeader::decode_prefix(&b);
        }
    }
}
