//! The logical payload of a log record: which rows of which tables a transaction changed, and
//! its schema changes, in the order they happened. Independent of SQLite's page format.

/// A column value, as SQLite stores it.
#[derive(Debug, Clone)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    /// TEXT whose bytes are not UTF-8: SQLite keeps them as given, and so does every replica.
    TextBytes(Vec<u8>),
    Blob(Vec<u8>),
}

impl PartialEq for SqlValue {
    fn eq(&self, other: &SqlValue) -> bool {
        match (self, other) {
            (SqlValue::Null, SqlValue::Null) => true,
            (SqlValue::Integer(a), SqlValue::Integer(b)) => a == b,
            // Bit equality: a replicated NaN equals itself, and 0.0 differs from -0.0 as stored.
            (SqlValue::Real(a), SqlValue::Real(b)) => a.to_bits() == b.to_bits(),
            (SqlValue::Text(a), SqlValue::Text(b)) => a == b,
            (SqlValue::TextBytes(a), SqlValue::TextBytes(b)) => a == b,
            (SqlValue::Blob(a), SqlValue::Blob(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for SqlValue {}

/// The shape of a table when a change was captured: its columns in declaration order and which
/// of them form the primary key. An empty `key` means the table has no declared primary key:
/// rows are identified by their rowid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    pub name: String,
    pub columns: Vec<String>,
    /// Indexes into `columns`, in primary-key order.
    pub key: Vec<u16>,
}

impl TableShape {
    /// Whether rows are identified by rowid (no declared primary key).
    pub fn keyed_by_rowid(&self) -> bool {
        self.key.is_empty()
    }

    /// The name the rowid answers to in this table: `rowid`, `oid` or `_rowid_`, whichever
    /// comes first that no column has taken (a column of that name hides the rowid). `None`
    /// when columns take all three; the leader refuses to create such a rowid table.
    pub fn rowid_alias(&self) -> Option<&'static str> {
        rowid_alias(self.columns.iter().map(String::as_str))
    }
}

/// The name the rowid answers to in a table with these columns (see
/// [`TableShape::rowid_alias`]).
pub fn rowid_alias<'a>(columns: impl IntoIterator<Item = &'a str> + Clone) -> Option<&'static str> {
    ["rowid", "oid", "_rowid_"].into_iter().find(|alias| {
        !columns
            .clone()
            .into_iter()
            .any(|c| c.eq_ignore_ascii_case(alias))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOp {
    Insert,
    Update,
    Delete,
}

impl RowOp {
    pub fn as_str(self) -> &'static str {
        match self {
            RowOp::Insert => "insert",
            RowOp::Update => "update",
            RowOp::Delete => "delete",
        }
    }
}

/// One changed row. Invariants (checked by the decoder): `before` is present exactly for
/// updates and deletes, `after` exactly for inserts and updates, and each holds one value per
/// column of `tables[table]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowChange {
    /// Index into [`RowPayload::tables`].
    pub table: u32,
    pub op: RowOp,
    /// The rowid before (updates, deletes) and after (inserts, updates); 0 where absent and
    /// meaningless for WITHOUT ROWID tables.
    pub old_rowid: i64,
    pub new_rowid: i64,
    pub before: Option<Vec<SqlValue>>,
    pub after: Option<Vec<SqlValue>>,
}

/// A schema change, replayed as SQL. `table` is the table it concerns (for CREATE/DROP INDEX
/// and TRIGGER: the table it is on), so that a filtering follower can decide without parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaChange {
    pub kind: DdlKind,
    pub table: String,
    pub sql: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DdlKind {
    CreateTable,
    AlterTable,
    DropTable,
    CreateIndex,
    DropIndex,
    CreateView,
    DropView,
    CreateTrigger,
    DropTrigger,
    /// `PRAGMA user_version = N` or `application_id = N` (`table` names the pragma): database
    /// header values, not captured as rows.
    SetPragma,
    CreateVirtualTable,
    DropVirtualTable,
}

impl DdlKind {
    /// In code order: new kinds are only ever appended (the code is part of the log format).
    pub const ALL: [DdlKind; 12] = [
        DdlKind::CreateTable,
        DdlKind::AlterTable,
        DdlKind::DropTable,
        DdlKind::CreateIndex,
        DdlKind::DropIndex,
        DdlKind::CreateView,
        DdlKind::DropView,
        DdlKind::CreateTrigger,
        DdlKind::DropTrigger,
        DdlKind::SetPragma,
        DdlKind::CreateVirtualTable,
        DdlKind::DropVirtualTable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DdlKind::CreateTable => "create_table",
            DdlKind::AlterTable => "alter_table",
            DdlKind::DropTable => "drop_table",
            DdlKind::CreateIndex => "create_index",
            DdlKind::DropIndex => "drop_index",
            DdlKind::CreateView => "create_view",
            DdlKind::DropView => "drop_view",
            DdlKind::CreateTrigger => "create_trigger",
            DdlKind::DropTrigger => "drop_trigger",
            DdlKind::SetPragma => "set_pragma",
            DdlKind::CreateVirtualTable => "create_virtual_table",
            DdlKind::DropVirtualTable => "drop_virtual_table",
        }
    }

    /// The code used in the binary format (stable: part of the log format).
    pub fn code(self) -> u8 {
        DdlKind::ALL
            .iter()
            .position(|k| *k == self)
            .expect("listed") as u8
            + 1
    }

    pub fn from_code(code: u8) -> Option<DdlKind> {
        DdlKind::ALL.get((code as usize).checked_sub(1)?).copied()
    }
}

/// One step of a transaction, in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowItem {
    Change(RowChange),
    Schema(SchemaChange),
}

/// Everything a transaction did, logically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowPayload {
    /// The table shapes the changes refer to. The same table may appear twice when a schema
    /// change in the transaction altered it between two changes.
    pub tables: Vec<TableShape>,
    pub items: Vec<RowItem>,
}

impl RowPayload {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The shape of a change's table.
    pub fn shape(&self, change: &RowChange) -> &TableShape {
        &self.tables[change.table as usize]
    }
}
