//! Everything in Flotilla that touches SQLite.
//!
//! - [`LeaderDb`]: the leader's one writer connection. Runs client transactions, stamps each
//!   commit with its position in `_flotilla_meta`, and captures the page images the commit wrote
//!   from the WAL ([`WalTail`]).
//! - [`FollowerDb`]: a physical follower's writer. Applies page images through SQLite's
//!   `sqlite_dbpage` virtual table inside ordinary transactions, so readers keep their snapshots.
//! - [`snapshot`]: a consistent copy of the database streamed page by page, and its installation.
//! - [`StatementRules`]: which client statements are refused, and why.

pub mod atomic_file;
pub mod changelog;
mod client_statement;
pub mod collab;
mod connection_state;
pub mod devices;
pub mod dump;
mod error;
mod follower_db;
#[cfg(feature = "sim-bugs")]
pub mod injected_bugs;
mod key_collations;
mod leader_db;
mod leader_pipelines;
mod leader_recovery;
mod leader_tokens;
mod meta;
mod multi_leader;
mod open;
mod params;
mod pending_rows;
mod pipeline_triggers;
mod preupdate;
mod replica;
pub mod restore;
mod returned_rows;
mod row_capture;
mod row_filter;
mod row_replica;
mod rules;
pub mod snapshot;
mod sql_arg;
pub mod sql_text;
mod statement_guard;
mod txn_size;
mod unique_clash;
mod wal_flush;
mod wal_tail;

pub use connection_state::connection_state;
pub use error::StoreError;
pub use follower_db::FollowerDb;
pub use leader_db::{
    expression_problem, sql_error_message, CommitOutcome, LeaderDb, RequestOutcome,
    StatementResult, TxnRequest,
};
pub use leader_pipelines::{read_pipelines, StoredPipeline};
pub use leader_recovery::{recover_leader, LeaderRecovery, RecoveryError};
pub use leader_tokens::{read_tokens, StoredToken, TokenError, TOKENS_TABLE};
pub use meta::{read_meta, Meta, META_TABLE};
pub use multi_leader::{
    adopt_data_centre_copy, link_position, read_data_centre, read_version_vector, MergeApplyError,
    MergeOutcome, MultiLeader, SetPolicyError, CONFLICTS_TABLE, POLICIES_TABLE,
};
pub use open::{
    open_reader, DbSettings, Synchronous, DEFAULT_MAX_TRANSACTION_BYTES,
    MAX_TRANSACTION_BYTES_LIMIT,
};
pub use params::Params;
pub use pipeline_triggers::{
    plan as plan_pipeline, quote as quote_ident, OutputColumn, PipelineError, TriggerPlan,
};
pub use replica::{install_snapshot, snapshot_target, Replica, ReplicaSettings};
pub use returned_rows::{Cell, ReturnedRows};
pub use row_filter::{FilterParseError, RowFilter};
pub use row_replica::{ConflictPolicy, LocalOutcome, RowReplica, UnknownConflictPolicy};
pub use rules::{StatementRules, INTERNAL_PREFIX};
pub use statement_guard::{FailureKind, InterruptHandle, StatementGuard};
pub use wal_flush::{flush_wal, wal_path};
pub use wal_tail::WalTail;

/// A digest of every page of the database as one connection sees it (its snapshot): equal
/// digests mean identical databases. Returns (page count, digest).
///
/// Page 1's file change counter (bytes 24..28) and its copy (bytes 92..96) are left out: SQLite's
/// pager rewrites them in each file from that file's own history on every commit that writes
/// page 1, so they differ between any two copies of a database that were written separately.
/// Every other byte of every page is compared.
pub fn page_digest(conn: &rusqlite::Connection) -> Result<(u32, u64), StoreError> {
    let tx = conn.unchecked_transaction()?;
    let mut stmt = tx.prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")?;
    let mut rows = stmt.query([])?;
    let mut hasher = crc32fast::Hasher::new();
    let mut count = 0u32;
    let mut total = 0u64;
    while let Some(row) = rows.next()? {
        let pgno: u32 = row.get(0)?;
        let data = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
        if pgno == 1 && data.len() >= 100 {
            hasher.update(&data[..24]);
            hasher.update(&data[28..92]);
            hasher.update(&data[96..]);
        } else {
            hasher.update(data);
        }
        total += data.len() as u64;
        count += 1;
    }
    Ok((count, (u64::from(hasher.finalize()) << 32) ^ total))
}
