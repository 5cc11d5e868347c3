//! The logical payload (row changes and schema changes of one transaction), format version 1.
//! Integers are LEB128 varints (signed ones zigzag), strings and blobs are prefixed by their
//! varint length. It sits inside a log record, whose CRC covers it; see `docs/logical-log.md`.
//!
//! ```text
//! u8 format version (1)
//! varint table count, per table:
//!     string name, varint column count, column names, varint key count, key column indexes
//! varint item count, per item: u8 tag
//!     1 insert:  varint table, ivar new_rowid, after values
//!     2 update:  varint table, ivar old_rowid, ivar new_rowid, before values, after values
//!     3 delete:  varint table, ivar old_rowid, before values
//!     4 schema:  u8 DDL kind, string table, string SQL
//! values: one per column of the table, each u8 type (0 null, 1 integer, 2 real, 3 text,
//!     4 blob) then ivar / 8 bytes little-endian / string / blob
//! ```

use crate::{Cursor, DecodeError, Out};
use flotilla_types::{
    DdlKind, RowChange, RowItem, RowOp, RowPayload, SchemaChange, SqlValue, TableShape,
};

pub const ROWS_FORMAT_VERSION: u8 = 1;
const WHAT: &str = "row changes";
/// SQLite's own limit on columns per table (SQLITE_MAX_COLUMN can be raised to 32767).
const MAX_COLUMNS: usize = 32767;

const TAG_INSERT: u8 = 1;
const TAG_UPDATE: u8 = 2;
const TAG_DELETE: u8 = 3;
const TAG_SCHEMA: u8 = 4;

pub fn encode_rows(p: &RowPayload) -> Vec<u8> {
    let mut out = Out::with_capacity(64 + p.items.len() * 48);
    out.u8(ROWS_FORMAT_VERSION);
    encode_tables(&mut out, &p.tables);
    out.uvar(p.items.len() as u64);
    for item in &p.items {
        match item {
            RowItem::Change(c) => {
                let tag = match c.op {
                    RowOp::Insert => TAG_INSERT,
                    RowOp::Update => TAG_UPDATE,
                    RowOp::Delete => TAG_DELETE,
                };
                out.u8(tag).uvar(u64::from(c.table));
                if c.op != RowOp::Insert {
                    out.ivar(c.old_rowid);
                }
                if c.op != RowOp::Delete {
                    out.ivar(c.new_rowid);
                }
                for v in c.before.iter().chain(c.after.iter()).flatten() {
                    value(&mut out, v);
                }
            }
            RowItem::Schema(s) => {
                out.u8(TAG_SCHEMA)
                    .u8(s.kind.code())
                    .str_var(&s.table)
                    .str_var(&s.sql);
            }
        }
    }
    out.0
}

/// Builds an encoded row payload directly, without [`RowPayload`]'s per-value allocations: the
/// leader's capture writes each change's rowids and values as they come from SQLite (see
/// [`value_bytes`]), then adds its header here once the table's shape is known.
#[derive(Default)]
pub struct RowsWriter {
    tables: Vec<TableShape>,
    items: Out,
    count: u64,
}

/// Where a [`RowsWriter`] can be rolled back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowsMark {
    items_len: usize,
    count: u64,
}

impl RowsWriter {
    pub fn new() -> RowsWriter {
        RowsWriter::default()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of changes written so far (what [`RowsWriter::finish`] adds is small).
    pub fn len_bytes(&self) -> usize {
        self.items.0.len()
    }

    /// Adds a table shape; changes refer to it by the returned index.
    pub fn add_table(&mut self, shape: TableShape) -> u32 {
        self.tables.push(shape);
        (self.tables.len() - 1) as u32
    }

    /// A change whose body — `[ivar old_rowid] [ivar new_rowid] [before values] [after values]`
    /// as the format lays it out for `op` — is already encoded in `body`. The caller guarantees
    /// the body holds one value per column of the table for each row it carries.
    pub fn change(&mut self, op: RowOp, table: u32, body: &[u8]) {
        let tag = match op {
            RowOp::Insert => TAG_INSERT,
            RowOp::Update => TAG_UPDATE,
            RowOp::Delete => TAG_DELETE,
        };
        self.items.u8(tag).uvar(u64::from(table)).raw(body);
        self.count += 1;
    }

    pub fn schema(&mut self, s: &SchemaChange) {
        self.items
            .u8(TAG_SCHEMA)
            .u8(s.kind.code())
            .str_var(&s.table)
            .str_var(&s.sql);
        self.count += 1;
    }

    pub fn mark(&self) -> RowsMark {
        RowsMark {
            items_len: self.items.0.len(),
            count: self.count,
        }
    }

    /// Forgets the items added after `mark` (the tables stay: unused shapes are harmless).
    pub fn truncate(&mut self, mark: RowsMark) {
        self.items.0.truncate(mark.items_len);
        self.count = mark.count;
    }

    pub fn finish(self) -> Vec<u8> {
        self.encoded()
    }

    /// The payload so far, encoded, leaving the writer as it is.
    pub fn encoded(&self) -> Vec<u8> {
        let mut out = Out::with_capacity(64 + self.items.0.len());
        out.u8(ROWS_FORMAT_VERSION);
        encode_tables(&mut out, &self.tables);
        out.uvar(self.count).raw(&self.items.0);
        out.0
    }
}

fn encode_tables(out: &mut Out, tables: &[TableShape]) {
    out.uvar(tables.len() as u64);
    for t in tables {
        out.str_var(&t.name).uvar(t.columns.len() as u64);
        for c in &t.columns {
            out.str_var(c);
        }
        out.uvar(t.key.len() as u64);
        for k in &t.key {
            out.uvar(u64::from(*k));
        }
    }
}

/// Encoders of single values, as the row format lays them out.
pub mod value_bytes {
    use crate::Out;

    pub fn null(out: &mut Out) {
        out.u8(0);
    }
    pub fn integer(out: &mut Out, v: i64) {
        out.u8(1).ivar(v);
    }
    pub fn real(out: &mut Out, v: f64) {
        out.u8(2).u64(v.to_bits());
    }
    /// UTF-8 text as type 3 (the decoder checks it); text SQLite holds that is not UTF-8 as
    /// type 5, its bytes exactly.
    pub fn text(out: &mut Out, v: &[u8]) {
        match std::str::from_utf8(v) {
            Ok(s) => out.u8(3).str_var(s),
            Err(_) => out.u8(5).bytes_var(v),
        };
    }
    pub fn blob(out: &mut Out, v: &[u8]) {
        out.u8(4).bytes_var(v);
    }
    pub fn ivar(out: &mut Out, v: i64) {
        out.ivar(v);
    }
}

/// Splits `n` encoded values at the start of `bytes` into their byte ranges; the rest of the
/// bytes is returned last. `None` if they are malformed.
pub fn split_values(bytes: &[u8], n: usize) -> Option<(Vec<&[u8]>, &[u8])> {
    let mut c = Cursor::new(bytes, WHAT);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = bytes.len() - c.remaining();
        skip_value(&mut c).ok()?;
        out.push(&bytes[start..bytes.len() - c.remaining()]);
    }
    Some((out, &bytes[bytes.len() - c.remaining()..]))
}

/// Steps over one encoded value without decoding it (no copy, no UTF-8 check: [`read_value`]
/// checks when the value is decoded).
fn skip_value(c: &mut Cursor) -> Result<(), DecodeError> {
    match c.u8()? {
        0 => {}
        1 => {
            c.ivar()?;
        }
        2 => {
            c.u64()?;
        }
        3..=5 => {
            c.bytes_var()?;
        }
        other => return Err(DecodeError::invalid(WHAT, format!("value type {other}"))),
    }
    Ok(())
}

/// Encodes one value as the row format lays it out.
pub fn encode_value(out: &mut Out, v: &SqlValue) {
    value(out, v)
}

/// Decodes one value written by [`encode_value`].
pub fn decode_value(c: &mut Cursor) -> Result<SqlValue, DecodeError> {
    read_value(c)
}

pub(crate) fn value(out: &mut Out, v: &SqlValue) {
    match v {
        SqlValue::Null => {
            out.u8(0);
        }
        SqlValue::Integer(i) => {
            out.u8(1).ivar(*i);
        }
        SqlValue::Real(f) => {
            out.u8(2).u64(f.to_bits());
        }
        SqlValue::Text(s) => {
            out.u8(3).str_var(s);
        }
        SqlValue::Blob(b) => {
            out.u8(4).bytes_var(b);
        }
        SqlValue::TextBytes(b) => {
            out.u8(5).bytes_var(b);
        }
    }
}

pub(crate) fn read_value(c: &mut Cursor) -> Result<SqlValue, DecodeError> {
    Ok(match c.u8()? {
        0 => SqlValue::Null,
        1 => SqlValue::Integer(c.ivar()?),
        2 => SqlValue::Real(f64::from_bits(c.u64()?)),
        3 => SqlValue::Text(c.str_var()?.to_string()),
        4 => SqlValue::Blob(c.bytes_var()?.to_vec()),
        5 => SqlValue::TextBytes(c.bytes_var()?.to_vec()),
        other => return Err(DecodeError::invalid(WHAT, format!("value type {other}"))),
    })
}

fn read_values(c: &mut Cursor, n: usize) -> Result<Vec<SqlValue>, DecodeError> {
    // Each value takes at least one byte: `n` is checked against what is left.
    if n > c.remaining() {
        return Err(DecodeError::invalid(
            WHAT,
            format!("{n} values cannot fit the {} bytes left", c.remaining()),
        ));
    }
    (0..n).map(|_| read_value(c)).collect()
}

pub fn decode_rows(bytes: &[u8]) -> Result<RowPayload, DecodeError> {
    let mut c = Cursor::new(bytes, WHAT);
    let version = c.u8()?;
    if version != ROWS_FORMAT_VERSION {
        return Err(DecodeError::Version {
            what: WHAT,
            version,
            supported: ROWS_FORMAT_VERSION,
        });
    }
    let table_count = c.count(3)?;
    let mut tables = Vec::with_capacity(table_count);
    for _ in 0..table_count {
        let name = c.str_var()?.to_string();
        let ncols = c.count(1)?;
        if ncols == 0 || ncols > MAX_COLUMNS {
            return Err(DecodeError::invalid(
                WHAT,
                format!("table {name:?} has {ncols} columns"),
            ));
        }
        let columns = (0..ncols)
            .map(|_| c.str_var().map(str::to_string))
            .collect::<Result<Vec<_>, _>>()?;
        let nkey = c.count(1)?;
        let mut key = Vec::with_capacity(nkey);
        for _ in 0..nkey {
            let k = c.uvar()?;
            if k >= ncols as u64 {
                return Err(DecodeError::invalid(
                    WHAT,
                    format!("table {name:?}: key column {k} of {ncols}"),
                ));
            }
            key.push(k as u16);
        }
        tables.push(TableShape { name, columns, key });
    }
    let item_count = c.count(2)?;
    let mut items = Vec::with_capacity(item_count);
    for _ in 0..item_count {
        let tag = c.u8()?;
        if tag == TAG_SCHEMA {
            let code = c.u8()?;
            let kind = DdlKind::from_code(code)
                .ok_or_else(|| DecodeError::invalid(WHAT, format!("schema change kind {code}")))?;
            items.push(RowItem::Schema(SchemaChange {
                kind,
                table: c.str_var()?.to_string(),
                sql: c.str_var()?.to_string(),
            }));
            continue;
        }
        let op = match tag {
            TAG_INSERT => RowOp::Insert,
            TAG_UPDATE => RowOp::Update,
            TAG_DELETE => RowOp::Delete,
            other => return Err(DecodeError::invalid(WHAT, format!("item tag {other}"))),
        };
        let table = c.uvar()?;
        let ncols = tables
            .get(table as usize)
            .ok_or_else(|| {
                DecodeError::invalid(
                    WHAT,
                    format!("change refers to table {table} of {table_count}"),
                )
            })?
            .columns
            .len();
        let old_rowid = if op != RowOp::Insert { c.ivar()? } else { 0 };
        let new_rowid = if op != RowOp::Delete { c.ivar()? } else { 0 };
        let before = if op != RowOp::Insert {
            Some(read_values(&mut c, ncols)?)
        } else {
            None
        };
        let after = if op != RowOp::Delete {
            Some(read_values(&mut c, ncols)?)
        } else {
            None
        };
        items.push(RowItem::Change(RowChange {
            table: table as u32,
            op,
            old_rowid,
            new_rowid,
            before,
            after,
        }));
    }
    c.finish()?;
    Ok(RowPayload { tables, items })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample() -> RowPayload {
        RowPayload {
            tables: vec![
                TableShape {
                    name: "t".into(),
                    columns: vec!["id".into(), "v".into(), "b".into()],
                    key: vec![0],
                },
                TableShape {
                    name: "log".into(),
                    columns: vec!["msg".into()],
                    key: vec![],
                },
            ],
            items: vec![
                RowItem::Schema(SchemaChange {
                    kind: DdlKind::CreateTable,
                    table: "t".into(),
                    sql: "CREATE TABLE t(id INTEGER PRIMARY KEY, v, b)".into(),
                }),
                RowItem::Change(RowChange {
                    table: 0,
                    op: RowOp::Insert,
                    old_rowid: 0,
                    new_rowid: 1,
                    before: None,
                    after: Some(vec![
                        SqlValue::Integer(1),
                        SqlValue::Real(-0.5),
                        SqlValue::Blob(vec![0, 1, 2]),
                    ]),
                }),
                RowItem::Change(RowChange {
                    table: 0,
                    op: RowOp::Update,
                    old_rowid: 1,
                    new_rowid: 1,
                    before: Some(vec![
                        SqlValue::Integer(1),
                        SqlValue::TextBytes(vec![0x80, 0xff, b'a']),
                        SqlValue::Null,
                    ]),
                    after: Some(vec![
                        SqlValue::Integer(1),
                        SqlValue::Text("é".into()),
                        SqlValue::Integer(i64::MIN),
                    ]),
                }),
                RowItem::Change(RowChange {
                    table: 1,
                    op: RowOp::Delete,
                    old_rowid: -7,
                    new_rowid: 0,
                    before: Some(vec![SqlValue::Text("x".into())]),
                    after: None,
                }),
            ],
        }
    }

    #[test]
    fn round_trips() {
        let p = sample();
        assert_eq!(decode_rows(&encode_rows(&p)).unwrap(), p);
    }

    #[test]
    fn a_single_row_insert_is_small() {
        let mut p = sample();
        p.items.truncate(2);
        p.items.remove(0);
        p.tables.truncate(1);
        // Table shape + one insert of three columns (an integer, a real, a 3-byte blob).
        assert!(encode_rows(&p).len() < 40, "{}", encode_rows(&p).len());
    }

    #[test]
    fn the_writer_encodes_what_encode_rows_encodes() {
        let p = sample();
        let mut w = RowsWriter::new();
        for t in &p.tables {
            w.add_table(t.clone());
        }
        for item in &p.items {
            match item {
                RowItem::Schema(s) => w.schema(s),
                RowItem::Change(c) => {
                    let mut body = Out::default();
                    if c.op != RowOp::Insert {
                        value_bytes::ivar(&mut body, c.old_rowid);
                    }
                    if c.op != RowOp::Delete {
                        value_bytes::ivar(&mut body, c.new_rowid);
                    }
                    for v in c.before.iter().chain(c.after.iter()).flatten() {
                        value(&mut body, v);
                    }
                    w.change(c.op, c.table, &body.0);
                }
            }
        }
        let mark = w.mark();
        w.schema(&SchemaChange {
            kind: DdlKind::DropTable,
            table: "x".into(),
            sql: "DROP TABLE x".into(),
        });
        w.truncate(mark);
        assert_eq!(w.finish(), encode_rows(&p));
    }

    #[test]
    fn values_split_at_their_boundaries() {
        let mut out = Out::default();
        value_bytes::integer(&mut out, -3);
        value_bytes::text(&mut out, "hé".as_bytes());
        value_bytes::blob(&mut out, &[1, 2]);
        out.raw(&[9, 9]);
        let (vals, rest) = split_values(&out.0, 3).unwrap();
        assert_eq!(vals.len(), 3);
        assert_eq!(rest, &[9, 9]);
        assert_eq!(vals[1][0], 3);
        assert!(split_values(&out.0[..3], 2).is_none());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode_rows(&sample());
        for n in 0..bytes.len() {
            assert!(decode_rows(&bytes[..n]).is_err(), "prefix of {n} accepted");
        }
    }

    #[test]
    fn a_change_of_an_unknown_table_is_refused() {
        let mut p = sample();
        if let RowItem::Change(c) = &mut p.items[1] {
            c.table = 9;
        }
        let err = decode_rows(&encode_rows(&p)).unwrap_err();
        assert!(err.to_string().contains("table 9"), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = decode_rows(&bytes);
        }

        #[test]
        fn arbitrary_bytes_after_the_version_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..1024)
        ) {
            let mut b = vec![ROWS_FORMAT_VERSION];
            b.extend_from_slice(&bytes);
            let _ = decode_rows(&b);
        }
    }
}
