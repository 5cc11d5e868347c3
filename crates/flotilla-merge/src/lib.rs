//! The merge rules of multi-leader replication and device sync: what a replica does with a row
//! change made concurrently elsewhere.
//!
//! The model (state-based, so that every replica that has applied the same set of changes holds
//! the same data, whatever the order they arrived in):
//!
//! - every column of every row is a **multi-value register**: the writes not yet overwritten
//!   by a write that saw them (its *frontier*; one entry unless writes were concurrent). The
//!   visible value is the column policy applied to the frontier (`lww`, `max`, `min`,
//!   `keep-both`, `custom`), or for `counter` columns the sum of every write's increment;
//! - whether the row exists is decided by the inserts/updates and the deletes the other kind
//!   has not seen (observed-remove sets), and the table's rule for a delete that races an
//!   update;
//! - columns keep their registers while a row is deleted, so that a row brought back shows
//!   the same values everywhere.
//!
//! Causality comes from version vectors: a change carries what its origin had applied (its
//! *dependencies*), and a replica applies it only once it has applied those too (the caller's
//! duty). A register entry the change's dependencies cover was seen by it, and is replaced;
//! one they do not cover is concurrent, and that is a conflict, recorded.
//!
//! Collaborative text documents merge too (`text_doc`: a sequence CRDT, nothing to resolve).
//!
//! This crate does no IO; the store keeps the states in SQLite and the simulator in memory, and
//! both call the same functions.

#![forbid(unsafe_code)]

mod cell;
mod conflict;
mod policy;
mod row;
mod state_codec;
pub mod text_doc;
mod value_order;
mod version;

pub use cell::{Cell, Entry};
pub use conflict::{conflict_id, Conflict, ConflictSide, Winner};
pub use policy::{ColumnPolicy, DeleteRule, PolicyError, TablePolicies};
pub use row::{merge_remote, write_local, LocalWrite, MergeError, Merged, RemoteChange, RowState};
pub use state_codec::{decode_state, encode_key, encode_state, STATE_FORMAT_VERSION};
pub use value_order::{compare_values, counter_add, counter_delta};
pub use version::Version;

/// Evaluates a `custom` policy's SQL expression over two values (the store runs it in SQLite).
pub trait CustomResolver {
    /// `local` is the value stamped earlier, `remote` the later one; the result becomes the
    /// column's value.
    fn resolve(
        &mut self,
        expression: &str,
        local: &flotilla_types::SqlValue,
        remote: &flotilla_types::SqlValue,
    ) -> Result<flotilla_types::SqlValue, String>;
}

/// A resolver for tables without `custom` columns: any call is an error.
pub struct NoCustomResolver;

impl CustomResolver for NoCustomResolver {
    fn resolve(
        &mut self,
        expression: &str,
        _: &flotilla_types::SqlValue,
        _: &flotilla_types::SqlValue,
    ) -> Result<flotilla_types::SqlValue, String> {
        Err(format!(
            "no resolver for the custom expression {expression:?}"
        ))
    }
}
