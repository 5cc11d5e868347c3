//! Collaborative text columns (docs/collab.md): a column of an ordinary table whose every row
//! holds a CRDT document (the Yjs model, as `yrs` encodes it), edited keystroke by keystroke by
//! many people at once. The column itself always holds the document's current text, so plain
//! SQL reads see it; the document lives beside it in Flotilla's own tables:
//!
//! - `_flotilla_collab_columns`: the columns made collaborative (`flotilla collab enable`).
//! - `_flotilla_collab_docs`: per document, its compacted state (one Yjs update holding the
//!   whole document, deleted text garbage-collected) and the format it is encoded in.
//! - `_flotilla_collab_updates`: the updates merged since that state, in order. Compaction
//!   folds them into the state, so a document's storage tracks its text, not its edit count.
//!
//! This module stores and reads; what a document is (merging updates, encoding its state) is
//! the caller's business, which keeps the store free of the CRDT library. A document is
//! addressed by table, key and column; the key is the row's primary key in the form the URL
//! gives it (an INTEGER key in decimal, a TEXT key as is).

mod columns;
pub mod crdt;
mod docs;
mod merge;

pub use columns::{read_collab_columns, CollabColumn};
pub use docs::{
    load_doc, load_doc_since, resolve_doc, DocWrite, DocWritten, ResolvedDoc, StoredDoc,
};
pub(crate) use merge::{doc_row, IncomingDocs};

use crate::leader_pipelines::InternalTooLarge;
use crate::StoreError;

/// The encoding of stored states and updates: Yjs's update format v1 (what `y-websocket`
/// clients send). A later format gets the next number; a document in a format this build does
/// not know is refused, never misread.
pub const DOC_FORMAT_YJS_V1: i64 = 1;

/// Updates stored since the last compaction may reach the compacted state's size (at least
/// this much) before the next compaction folds them in: storage stays within about twice the
/// document's state.
pub const COMPACT_MIN_BYTES: usize = 64 << 10;

/// The list of collaborative columns (the same in every data centre: exchanged like data).
pub(crate) const COLUMNS_TABLE: &str = "_flotilla_collab_columns";

/// Flotilla's tables that hold documents: replicated to logical followers (whose viewers read
/// them live) like the rows they belong to.
pub const COLLAB_TABLES: [&str; 3] = [
    "_flotilla_collab_columns",
    "_flotilla_collab_docs",
    "_flotilla_collab_updates",
];

/// Whether `table` (lowercase) is one of [`COLLAB_TABLES`].
pub(crate) fn is_collab_table(lower: &str) -> bool {
    COLLAB_TABLES.contains(&lower)
}

/// The document updates table's shape, as its rows travel in a transaction.
pub(crate) fn updates_shape() -> flotilla_types::TableShape {
    flotilla_types::TableShape {
        name: "_flotilla_collab_updates".into(),
        columns: ["tbl", "col", "pk", "seq", "data"]
            .map(String::from)
            .to_vec(),
        key: vec![0, 1, 2, 3],
    }
}

/// An update of a document as a row of [`updates_shape`] (its number is the receiver's to
/// give).
pub(crate) fn update_row(
    table: &str,
    column: &str,
    key: &str,
    update: &[u8],
) -> flotilla_types::RowChange {
    use flotilla_types::SqlValue;
    flotilla_types::RowChange {
        table: 0,
        op: flotilla_types::RowOp::Insert,
        old_rowid: 0,
        new_rowid: 0,
        before: None,
        after: Some(vec![
            SqlValue::Text(table.into()),
            SqlValue::Text(column.into()),
            SqlValue::Text(key.into()),
            SqlValue::Integer(0),
            SqlValue::Blob(update.to_vec()),
        ]),
    }
}

pub(crate) const CREATE_TABLES: &str = "
CREATE TABLE IF NOT EXISTS _flotilla_collab_columns (
    tbl TEXT NOT NULL,
    col TEXT NOT NULL,
    enabled_ms INTEGER NOT NULL,
    PRIMARY KEY (tbl, col)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _flotilla_collab_docs (
    tbl TEXT NOT NULL,
    col TEXT NOT NULL,
    pk TEXT NOT NULL,
    format INTEGER NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (tbl, col, pk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _flotilla_collab_updates (
    tbl TEXT NOT NULL,
    col TEXT NOT NULL,
    pk TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (tbl, col, pk, seq)
) WITHOUT ROWID;
";

/// Why a collaborative column or document cannot be used; nothing was committed.
#[derive(Debug, thiserror::Error)]
pub enum CollabError {
    /// The request names something that is not there (a table, a column that is not
    /// collaborative, a row).
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be done as asked (a table without a usable key, a key column).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for CollabError {
    fn from(e: rusqlite::Error) -> Self {
        CollabError::Store(StoreError::Sqlite(e))
    }
}

impl From<InternalTooLarge> for CollabError {
    fn from(e: InternalTooLarge) -> Self {
        CollabError::Invalid(e.0)
    }
}

fn has_tables(conn: &rusqlite::Connection) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = '_flotilla_collab_columns'",
        [],
        |r| r.get::<_, i64>(0),
    )? > 0)
}
