//! Version vectors: for each origin (a data centre, or a device), the highest position of its
//! own transactions a replica has applied. A multi-leader replica's position, and what a
//! transaction depended on when it was made.

use crate::{Lsn, NodeId};
use std::collections::BTreeMap;
use std::fmt;

/// The name of a data centre (or a device): an origin of changes. Validated like a node id.
pub type OriginName = NodeId;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VersionVector(BTreeMap<OriginName, Lsn>);

impl VersionVector {
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    pub fn get(&self, origin: &OriginName) -> Lsn {
        self.0.get(origin).copied().unwrap_or(Lsn(0))
    }

    /// Raises `origin`'s entry to `lsn` (never lowers it).
    pub fn advance(&mut self, origin: &OriginName, lsn: Lsn) {
        let e = self.0.entry(origin.clone()).or_insert(Lsn(0));
        if lsn > *e {
            *e = lsn;
        }
    }

    /// Whether the transaction `lsn` of `origin` is among what this vector has seen.
    pub fn covers(&self, origin: &OriginName, lsn: Lsn) -> bool {
        self.get(origin) >= lsn
    }

    /// Whether this vector has seen everything `other` has.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(o, l)| self.get(o) >= *l)
    }

    /// The origins `other` has seen further than this vector, with how far.
    pub fn missing<'a>(
        &'a self,
        other: &'a VersionVector,
    ) -> impl Iterator<Item = (&'a OriginName, Lsn)> + 'a {
        other
            .0
            .iter()
            .filter(|(o, l)| self.get(o) < **l)
            .map(|(o, l)| (o, *l))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&OriginName, Lsn)> {
        self.0.iter().map(|(o, l)| (o, *l))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (o, l)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{o}: {l}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(s: &str) -> OriginName {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn covers_and_dominates() {
        let mut a = VersionVector::new();
        a.advance(&o("eu"), Lsn(5));
        a.advance(&o("eu"), Lsn(3));
        assert_eq!(a.get(&o("eu")), Lsn(5));
        assert!(a.covers(&o("eu"), Lsn(5)));
        assert!(!a.covers(&o("us"), Lsn(1)));
        assert!(a.covers(&o("us"), Lsn(0)));
        let mut b = a.clone();
        b.advance(&o("us"), Lsn(2));
        assert!(b.dominates(&a));
        assert!(!a.dominates(&b));
        assert_eq!(a.missing(&b).collect::<Vec<_>>(), vec![(&o("us"), Lsn(2))]);
    }
}
