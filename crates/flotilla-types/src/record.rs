use crate::{Chain, ContentDigest, Epoch, Lsn, NodeId, Position};
use std::fmt;
use std::str::FromStr;

/// One page image: the full content of database page `pgno` after the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub pgno: u32,
    pub data: Vec<u8>,
}

/// The physical payload of a transaction: the pages it wrote and the database size after it.
/// Invariant (checked by the decoder): every page is `page_size` bytes and `pgno` is in
/// `1..=db_size_pages`; pages are sorted by `pgno` without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagePayload {
    pub page_size: u32,
    pub db_size_pages: u32,
    pub pages: Vec<Page>,
}

/// One committed transaction of a leader, as it is kept in the log and shipped to followers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub epoch: Epoch,
    pub lsn: Lsn,
    /// `chain(lsn)`; see [`Chain`].
    pub chain: Chain,
    /// The input that links `chain(lsn - 1)` to `chain(lsn)`.
    pub digest: ContentDigest,
    pub commit_time_us: u64,
    /// The node where the transaction was first committed.
    pub origin: NodeId,
    pub pages: PagePayload,
}

impl LogRecord {
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            lsn: self.lsn,
        }
    }

    /// Whether this record follows a state whose chain is `previous`.
    pub fn links_to(&self, previous: Chain) -> bool {
        previous.next(self.epoch, self.lsn, self.digest) == self.chain
    }
}

/// The kind of replication log a follower consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogKind {
    #[default]
    Physical,
}

impl LogKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LogKind::Physical => "physical",
        }
    }
}

impl fmt::Display for LogKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log kind {0:?}: this version supports \"physical\"")]
pub struct LogKindParseError(pub String);

impl FromStr for LogKind {
    type Err = LogKindParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "physical" => Ok(LogKind::Physical),
            other => Err(LogKindParseError(other.to_string())),
        }
    }
}
