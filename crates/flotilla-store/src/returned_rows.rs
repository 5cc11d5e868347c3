//! Rows a writing statement returns (`RETURNING`, or a query sent as a write), kept as SQLite
//! gave them: they are answered to the client and, with an idempotency key, stored so that a
//! retry gets the same answer.

use rusqlite::types::ValueRef;
use serde::{Deserialize, Serialize};

/// One value as SQLite returned it. Text keeps its bytes (SQLite does not check UTF-8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Cell {
    Null,
    Integer(i64),
    /// Stored by its bits: JSON has no infinities.
    Real(#[serde(with = "f64_bits")] f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Cell {
    pub fn from_ref(v: ValueRef<'_>) -> Cell {
        match v {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(i) => Cell::Integer(i),
            ValueRef::Real(f) => Cell::Real(f),
            ValueRef::Text(t) => Cell::Text(t.to_vec()),
            ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
        }
    }

    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Cell::Null => ValueRef::Null,
            Cell::Integer(i) => ValueRef::Integer(*i),
            Cell::Real(f) => ValueRef::Real(*f),
            Cell::Text(t) => ValueRef::Text(t),
            Cell::Blob(b) => ValueRef::Blob(b),
        }
    }

    /// About what the value costs to hold and send.
    pub fn size_bytes(&self) -> u64 {
        match self {
            Cell::Text(b) | Cell::Blob(b) => b.len() as u64 + 8,
            _ => 8,
        }
    }
}

/// The rows one statement returned, with their column names.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ReturnedRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(v.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_survives_being_stored() {
        let rows = ReturnedRows {
            columns: vec!["a".into()],
            rows: vec![vec![
                Cell::Null,
                Cell::Integer(i64::MIN),
                Cell::Real(f64::INFINITY),
                Cell::Real(-0.5),
                Cell::Text(b"caf\xc3\xa9 \x80".to_vec()),
                Cell::Blob(vec![0, 255]),
            ]],
        };
        let json = serde_json::to_string(&rows).unwrap();
        assert_eq!(serde_json::from_str::<ReturnedRows>(&json).unwrap(), rows);
    }
}
