use std::fmt;
use std::str::FromStr;

/// How many copies of a transaction must be durable before its write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Durability {
    /// Durable in the leader's log (fsynced) only. A leader lost for good loses what its
    /// followers had not received yet.
    #[default]
    Async,
    /// Durable on the leader and on at least N replicas that hold complete copies (physical
    /// followers; voters in a cluster). N is the node's `durability.semi-sync-replicas`.
    SemiSync,
    /// Durable on a majority of a cluster's voters.
    Quorum,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Async => "async",
            Durability::SemiSync => "semi-sync",
            Durability::Quorum => "quorum",
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown durability {0:?}: expected \"async\", \"semi-sync\" or \"quorum\"")]
pub struct DurabilityParseError(pub String);

impl FromStr for Durability {
    type Err = DurabilityParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "async" => Ok(Durability::Async),
            "semi-sync" => Ok(Durability::SemiSync),
            "quorum" => Ok(Durability::Quorum),
            other => Err(DurabilityParseError(other.to_string())),
        }
    }
}

impl serde::Serialize for Durability {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Durability {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_names() {
        for d in [Durability::Async, Durability::SemiSync, Durability::Quorum] {
            assert_eq!(d.as_str().parse::<Durability>(), Ok(d));
        }
        for bad in ["", "sync", "Semi-Sync", "semisync", "quorum "] {
            assert!(bad.parse::<Durability>().is_err(), "{bad:?} parsed");
        }
    }
}
