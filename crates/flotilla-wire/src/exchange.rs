//! The exchange section of a log record (multi-leader replication), format version 1. Inside a
//! record, whose CRC covers it; varints as in the row format.
//!
//! ```text
//! u8 format version (1)
//! string origin, varint origin_lsn, u64 hlc
//! varint dependency count, per dependency: string origin, varint lsn (origins ascending)
//! varint counter base count, per base: varint item, varint column, value
//! u8 0 (the record's rows are the original) | 1 followed by the original row payload (varint
//!    length, bytes in the row format)
//! ```

use crate::rows::{read_value, value};
use crate::{decode_rows, encode_rows, Cursor, DecodeError, Out};
use flotilla_types::{CounterBase, ExchangeStamp, Hlc, Lsn, OriginName, VersionVector};

pub const EXCHANGE_FORMAT_VERSION: u8 = 1;
const WHAT: &str = "exchange stamp";

pub fn encode_exchange(s: &ExchangeStamp) -> Vec<u8> {
    let mut out = Out::with_capacity(64 + 16 * s.deps.len());
    out.u8(EXCHANGE_FORMAT_VERSION)
        .str_var(s.origin.as_str())
        .uvar(s.origin_lsn.0)
        .u64(s.hlc.0)
        .uvar(s.deps.len() as u64);
    for (o, l) in s.deps.iter() {
        out.str_var(o.as_str()).uvar(l.0);
    }
    out.uvar(s.counter_bases.len() as u64);
    for b in &s.counter_bases {
        out.uvar(b.item as u64).uvar(b.column as u64);
        value(&mut out, &b.value);
    }
    match &s.original {
        None => {
            out.u8(0);
        }
        Some(p) => {
            out.u8(1).bytes_var(&encode_rows(p));
        }
    }
    out.0
}

pub fn decode_exchange(bytes: &[u8]) -> Result<ExchangeStamp, DecodeError> {
    let mut c = Cursor::new(bytes, WHAT);
    let version = c.u8()?;
    if version != EXCHANGE_FORMAT_VERSION {
        return Err(DecodeError::Version {
            what: WHAT,
            version,
            supported: EXCHANGE_FORMAT_VERSION,
        });
    }
    let origin = origin_name(c.str_var()?)?;
    let origin_lsn = Lsn(c.uvar()?);
    let hlc = Hlc(c.u64()?);
    let n = c.count(2)?;
    let mut deps = VersionVector::new();
    let mut last: Option<OriginName> = None;
    for _ in 0..n {
        let o = origin_name(c.str_var()?)?;
        if last.as_ref().is_some_and(|l| *l >= o) {
            return Err(DecodeError::invalid(WHAT, "dependencies out of order"));
        }
        deps.advance(&o, Lsn(c.uvar()?));
        last = Some(o);
    }
    let n = c.count(3)?;
    let mut counter_bases = Vec::with_capacity(n);
    for _ in 0..n {
        let item = u32::try_from(c.uvar()?)
            .map_err(|_| DecodeError::invalid(WHAT, "counter base item out of range"))?;
        let column = u16::try_from(c.uvar()?)
            .map_err(|_| DecodeError::invalid(WHAT, "counter base column out of range"))?;
        counter_bases.push(CounterBase {
            item,
            column,
            value: read_value(&mut c)?,
        });
    }
    let original = match c.u8()? {
        0 => None,
        1 => Some(decode_rows(c.bytes_var()?)?),
        other => {
            return Err(DecodeError::invalid(
                WHAT,
                format!("unknown original marker {other}"),
            ))
        }
    };
    c.finish()?;
    Ok(ExchangeStamp {
        origin,
        origin_lsn,
        hlc,
        deps,
        counter_bases,
        original,
    })
}

fn origin_name(s: &str) -> Result<OriginName, DecodeError> {
    OriginName::new(s).map_err(|e| DecodeError::invalid(WHAT, e.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flotilla_types::SqlValue;

    pub(crate) fn sample() -> ExchangeStamp {
        let mut deps = VersionVector::new();
        deps.advance(&OriginName::new("eu").unwrap(), Lsn(7));
        deps.advance(&OriginName::new("us").unwrap(), Lsn(3));
        ExchangeStamp {
            origin: OriginName::new("eu").unwrap(),
            origin_lsn: Lsn(8),
            hlc: Hlc::from_parts(1_700_000_000_000, 2),
            deps,
            counter_bases: vec![CounterBase {
                item: 0,
                column: 2,
                value: SqlValue::Integer(5),
            }],
            original: Some(crate::rows::tests::sample()),
        }
    }

    #[test]
    fn round_trip_and_every_truncation_is_an_error() {
        let s = sample();
        let bytes = encode_exchange(&s);
        assert_eq!(decode_exchange(&bytes).unwrap(), s);
        for cut in 0..bytes.len() {
            assert!(decode_exchange(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut plain = s.clone();
        plain.original = None;
        assert_eq!(decode_exchange(&encode_exchange(&plain)).unwrap(), plain);
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(matches!(
            decode_exchange(&bad),
            Err(DecodeError::Version { version: 9, .. })
        ));
    }
}
