use crate::{Chain, ContentDigest, Epoch, ExchangeStamp, Lsn, NodeId, Position, RowPayload};
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
    /// The page images (physical log). Always present in the leader's log; absent in what is
    /// shipped to a logical follower or feed.
    pub pages: Option<PagePayload>,
    /// The row changes and schema changes (logical log). Present in the log for every
    /// transaction captured since the logical log exists; absent in what is shipped to a
    /// physical follower.
    pub rows: Option<RowPayload>,
    /// Present on a multi-leader node: what other data centres need to merge the transaction.
    pub exchange: Option<ExchangeStamp>,
}

impl LogRecord {
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            lsn: self.lsn,
        }
    }

    /// Roughly the bytes of its payloads (for batching: pages, plus a guess for rows).
    pub fn approx_bytes(&self) -> usize {
        self.pages
            .as_ref()
            .map_or(0, |p| p.pages.iter().map(|p| 4 + p.data.len()).sum())
            + self.rows.as_ref().map_or(0, |r| 64 * r.items.len())
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
    Logical,
}

impl LogKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LogKind::Physical => "physical",
            LogKind::Logical => "logical",
        }
    }
}

impl fmt::Display for LogKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log kind {0:?}: this version supports \"physical\" and \"logical\"")]
pub struct LogKindParseError(pub String);

impl serde::Serialize for LogKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for LogKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for LogKind {
    type Err = LogKindParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "physical" => Ok(LogKind::Physical),
            "logical" => Ok(LogKind::Logical),
            other => Err(LogKindParseError(other.to_string())),
        }
    }
}
