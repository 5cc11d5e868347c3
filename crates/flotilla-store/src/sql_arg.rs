//! A replicated value as an SQL parameter, borrowed: text SQLite holds as bytes that are not
//! UTF-8 is bound as those bytes, unchanged.

use flotilla_types::SqlValue;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::ToSql;

pub(crate) struct SqlArg<'a>(pub(crate) &'a SqlValue);

impl ToSql for SqlArg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Integer(i) => ValueRef::Integer(*i),
            SqlValue::Real(f) => ValueRef::Real(*f),
            SqlValue::Text(s) => ValueRef::Text(s.as_bytes()),
            SqlValue::Blob(b) => ValueRef::Blob(b),
            SqlValue::TextBytes(b) => ValueRef::Text(b),
        }))
    }
}
