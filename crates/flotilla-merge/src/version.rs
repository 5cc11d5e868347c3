use flotilla_types::{Hlc, Lsn, OriginName, VersionVector};
use std::cmp::Ordering;
use std::fmt;

/// Who wrote a value and when: the origin, the origin's position of the transaction, and its
/// hybrid-logical-clock timestamp. Ordered by timestamp, then origin name (the tie-break every
/// replica agrees on), then position.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    pub hlc: Hlc,
    pub origin: OriginName,
    pub lsn: Lsn,
}

impl Version {
    /// The version of values that were there before merge metadata existed: seen by everyone.
    pub fn zero() -> Version {
        Version {
            hlc: Hlc::ZERO,
            origin: OriginName::new("_").expect("valid"),
            lsn: Lsn(0),
        }
    }

    /// Whether the write `by`, made with dependencies `deps`, had seen this version: it was in
    /// its dependencies, or it is `by`'s own transaction (an earlier change of it).
    pub fn seen_by(&self, deps: &VersionVector, by: &Version) -> bool {
        self.lsn == Lsn(0) || deps.covers(&self.origin, self.lsn) || self == by
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.hlc, &self.origin, self.lsn).cmp(&(other.hlc, &other.origin, other.lsn))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}/{}", self.hlc, self.origin, self.lsn)
    }
}
