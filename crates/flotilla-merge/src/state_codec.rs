//! How a row's merge state is kept (a BLOB beside the row), format version 1:
//!
//! ```text
//! u8 version (1)
//! varint live count, versions; varint dead count, versions
//! u8 0 (no insert seen) | 1 followed by the earliest insert's version
//! varint cell count, per cell: value, varint entry count, per entry: version, value
//! version: u64 hlc, string origin, varint lsn
//! ```
//! Values as in the row format. A row's key is its primary-key values, concatenated the same way.

use crate::{Cell, Entry, RowState, Version};
use flotilla_types::{Hlc, Lsn, OriginName, SqlValue};
use flotilla_wire::{decode_value, encode_value, Cursor, DecodeError, Out};

pub const STATE_FORMAT_VERSION: u8 = 1;
const WHAT: &str = "row merge state";

fn version(out: &mut Out, v: &Version) {
    out.u64(v.hlc.0).str_var(v.origin.as_str()).uvar(v.lsn.0);
}

fn read_version(c: &mut Cursor) -> Result<Version, DecodeError> {
    let hlc = Hlc(c.u64()?);
    let origin =
        OriginName::new(c.str_var()?).map_err(|e| DecodeError::invalid(WHAT, e.to_string()))?;
    Ok(Version {
        hlc,
        origin,
        lsn: Lsn(c.uvar()?),
    })
}

pub fn encode_state(s: &RowState) -> Vec<u8> {
    let mut out = Out::with_capacity(32 + 24 * s.cells.len());
    out.u8(STATE_FORMAT_VERSION);
    for set in [&s.live, &s.dead] {
        out.uvar(set.len() as u64);
        for v in set {
            version(&mut out, v);
        }
    }
    match &s.created {
        None => {
            out.u8(0);
        }
        Some(v) => {
            out.u8(1);
            version(&mut out, v);
        }
    }
    out.uvar(s.cells.len() as u64);
    for cell in &s.cells {
        encode_value(&mut out, &cell.value);
        out.uvar(cell.entries.len() as u64);
        for e in &cell.entries {
            version(&mut out, &e.version);
            encode_value(&mut out, &e.value);
        }
    }
    out.0
}

pub fn decode_state(bytes: &[u8]) -> Result<RowState, DecodeError> {
    let mut c = Cursor::new(bytes, WHAT);
    let v = c.u8()?;
    if v != STATE_FORMAT_VERSION {
        return Err(DecodeError::Version {
            what: WHAT,
            version: v,
            supported: STATE_FORMAT_VERSION,
        });
    }
    let mut sets = [Vec::new(), Vec::new()];
    for set in &mut sets {
        let n = c.count(10)?;
        for _ in 0..n {
            set.push(read_version(&mut c)?);
        }
    }
    let created = match c.u8()? {
        0 => None,
        1 => Some(read_version(&mut c)?),
        other => {
            return Err(DecodeError::invalid(
                WHAT,
                format!("created marker {other}"),
            ))
        }
    };
    let n = c.count(2)?;
    let mut cells = Vec::with_capacity(n);
    for _ in 0..n {
        let value = decode_value(&mut c)?;
        let m = c.count(11)?;
        let mut entries = Vec::with_capacity(m);
        for _ in 0..m {
            entries.push(Entry {
                version: read_version(&mut c)?,
                value: decode_value(&mut c)?,
            });
        }
        cells.push(Cell { entries, value });
    }
    c.finish()?;
    let [live, dead] = sets;
    Ok(RowState {
        live,
        dead,
        created,
        cells,
    })
}

/// A row's key as stored: its primary-key values in key order.
pub fn encode_key<'a>(values: impl IntoIterator<Item = &'a SqlValue>) -> Vec<u8> {
    let mut out = Out::with_capacity(16);
    for v in values {
        encode_value(&mut out, v);
    }
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{write_local, TablePolicies};
    use flotilla_types::RowOp;

    #[test]
    fn round_trip_and_truncations() {
        let v = Version {
            hlc: Hlc::from_parts(5, 1),
            origin: OriginName::new("eu").unwrap(),
            lsn: Lsn(3),
        };
        let after = [
            SqlValue::Integer(1),
            SqlValue::Text("x".into()),
            SqlValue::Null,
        ];
        let s = write_local(
            None,
            RowOp::Insert,
            None,
            Some(&after),
            &v,
            &TablePolicies::lww(3),
        )
        .state;
        let bytes = encode_state(&s);
        assert_eq!(decode_state(&bytes).unwrap(), s);
        for cut in 0..bytes.len() {
            assert!(decode_state(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
