use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("invalid node id {0:?}: use 1 to 64 characters from A-Z, a-z, 0-9, '-' and '_'")]
    Node(String),
    #[error("invalid cluster id {0:?}: expected 32 lowercase hexadecimal characters")]
    Cluster(String),
}

/// A node's name, chosen by the operator (`--id`). Kept in the node's data directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct NodeId(String);

impl NodeId {
    pub fn new(s: &str) -> Result<NodeId, IdError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(NodeId(s.to_string()))
        } else {
            Err(IdError::Node(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies one replicated database. Created by the first leader; followers adopt it and refuse
/// a leader of another cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ClusterId(String);

impl ClusterId {
    /// `random` must be 16 bytes of randomness supplied by the caller (this crate does no IO).
    pub fn from_random(random: [u8; 16]) -> ClusterId {
        ClusterId(random.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn parse(s: &str) -> Result<ClusterId, IdError> {
        if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(ClusterId(s.to_string()))
        } else {
            Err(IdError::Cluster(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        assert!(NodeId::new("leader-1_a").is_ok());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("a b").is_err());
        assert!(NodeId::new(&"x".repeat(65)).is_err());
    }

    #[test]
    fn cluster_ids_round_trip() {
        let c = ClusterId::from_random([0xab; 16]);
        assert_eq!(ClusterId::parse(c.as_str()).unwrap(), c);
        assert!(ClusterId::parse("ABAB").is_err());
    }
}
