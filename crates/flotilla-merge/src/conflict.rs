use crate::Version;
use flotilla_types::SqlValue;

/// One side of a conflict: a value (`None`: the row deleted) and who wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictSide {
    pub version: Version,
    pub value: Option<SqlValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    Local,
    Remote,
    /// Neither value as it was: a sum (`counter`) or an expression's result (`custom`).
    Merged,
}

impl Winner {
    pub fn name(self) -> &'static str {
        match self {
            Winner::Local => "local",
            Winner::Remote => "remote",
            Winner::Merged => "merged",
        }
    }
}

/// A remote write that met a concurrent one here. `column` is `None` for a row-level conflict
/// (a delete racing an update); then a side's value is `None` for the delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub column: Option<usize>,
    /// What this replica had (the latest of the concurrent writes here).
    pub local: ConflictSide,
    /// The write that arrived.
    pub remote: ConflictSide,
    /// The policy's name (`delete-wins` / `update-wins` for a row-level conflict).
    pub policy: &'static str,
    pub winner: Winner,
    /// The value afterwards (`None`: the row is deleted).
    pub value: Option<SqlValue>,
    /// `keep-both`: open until a later write to the column resolves it.
    pub open: bool,
}

/// A conflict's id: the same on every replica that meets the same two writes, whichever
/// arrived first, so that a conflict can be named across data centres.
pub fn conflict_id(
    table: &str,
    key: &[u8],
    column: Option<&str>,
    a: &Version,
    b: &Version,
) -> String {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in [table.as_bytes(), key, column.unwrap_or("").as_bytes()] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    for v in [first, second] {
        h.update(&v.hlc.0.to_le_bytes());
        h.update(v.origin.as_str().as_bytes());
        h.update(&[0]);
        h.update(&v.lsn.0.to_le_bytes());
    }
    format!("{:032x}", h.digest128())
}
