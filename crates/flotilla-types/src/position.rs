use std::fmt;
use std::str::FromStr;

/// A leadership term. Raised by every failover; a message from a stale epoch is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

/// Log sequence number: the position of a committed transaction in a leader's log.
/// One per commit; LSN 0 is the empty database before the first commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A point in the history of a cluster: `EPOCH/LSN`. Positions order by epoch, then LSN
/// (the derived `Ord` relies on the field order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub epoch: Epoch,
    pub lsn: Lsn,
}

impl Position {
    pub const ZERO: Position = Position {
        epoch: Epoch(0),
        lsn: Lsn(0),
    };

    pub fn new(epoch: u64, lsn: u64) -> Position {
        Position {
            epoch: Epoch(epoch),
            lsn: Lsn(lsn),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.epoch.0, self.lsn.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid position {input:?}: expected \"EPOCH/LSN\", two decimal integers such as \"1/42\""
)]
pub struct PositionParseError {
    pub input: String,
}

impl FromStr for Position {
    type Err = PositionParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PositionParseError {
            input: s.to_string(),
        };
        let (e, l) = s.split_once('/').ok_or_else(err)?;
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(e) || !digits(l) {
            return Err(err());
        }
        Ok(Position::new(
            e.parse().map_err(|_| err())?,
            l.parse().map_err(|_| err())?,
        ))
    }
}

impl serde::Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Position {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let p: Position = "1/42".parse().unwrap();
        assert_eq!(p, Position::new(1, 42));
        assert_eq!(p.to_string(), "1/42");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "1",
            "1/",
            "/2",
            "a/1",
            "1/2/3",
            "-1/2",
            "1/ 2",
            "+1/2",
            "99999999999999999999/1",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn orders_by_epoch_then_lsn() {
        assert!(Position::new(1, 100) < Position::new(2, 1));
        assert!(Position::new(2, 1) < Position::new(2, 2));
    }
}
