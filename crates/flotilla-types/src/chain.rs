use crate::{Epoch, Lsn};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// A digest of what a transaction did, as the leader saw it (the statements and parameters of
/// the requests it committed). It is an input to the [`Chain`], not a check on the pages: the
/// pages are covered by the record's own CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContentDigest(pub u64);

impl ContentDigest {
    pub fn of(bytes: &[u8]) -> ContentDigest {
        ContentDigest(xxh3_64_with_seed(bytes, 0x666c_6f74))
    }
}

/// A checksum chain over the history of a cluster: `chain(n) = H(chain(n-1), epoch, lsn, digest)`.
///
/// The leader writes `chain(n)` into the database inside transaction `n`, so every replica can
/// read the chain of exactly the state it holds and prove, when it reconnects, that it holds the
/// leader's history and not a fork (SQLite can silently drop the tail of a damaged WAL, which
/// moves a replica back to an older but still consistent state; the chain then matches the leader's
/// at that older LSN and the replica simply catches up again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Chain(pub u64);

impl Chain {
    pub const GENESIS: Chain = Chain(0);

    pub fn next(self, epoch: Epoch, lsn: Lsn, digest: ContentDigest) -> Chain {
        let mut buf = [0u8; 32];
        buf[0..8].copy_from_slice(&self.0.to_le_bytes());
        buf[8..16].copy_from_slice(&epoch.0.to_le_bytes());
        buf[16..24].copy_from_slice(&lsn.0.to_le_bytes());
        buf[24..32].copy_from_slice(&digest.0.to_le_bytes());
        Chain(xxh3_64_with_seed(&buf, 0x0063_6861_696e))
    }
}

impl std::fmt::Display for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_depends_on_every_input() {
        let base = Chain::GENESIS.next(Epoch(1), Lsn(1), ContentDigest(7));
        assert_ne!(base, Chain(1).next(Epoch(1), Lsn(1), ContentDigest(7)));
        assert_ne!(
            base,
            Chain::GENESIS.next(Epoch(2), Lsn(1), ContentDigest(7))
        );
        assert_ne!(
            base,
            Chain::GENESIS.next(Epoch(1), Lsn(2), ContentDigest(7))
        );
        assert_ne!(
            base,
            Chain::GENESIS.next(Epoch(1), Lsn(1), ContentDigest(8))
        );
        assert_eq!(
            base,
            Chain::GENESIS.next(Epoch(1), Lsn(1), ContentDigest(7))
        );
    }
}
