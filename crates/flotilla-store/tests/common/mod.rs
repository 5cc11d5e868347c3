//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use flotilla_store::snapshot::{stream, SnapshotReceiver};
use flotilla_store::{open_reader, ConflictPolicy, DbSettings, RowFilter, RowReplica, TxnRequest};
use flotilla_types::ContentDigest;
use rusqlite::types::Value;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// A small deterministic generator (xorshift): tests replay exactly.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One client request of `stmts`.
pub fn req(stmts: &[(&str, Vec<Value>)]) -> TxnRequest {
    TxnRequest {
        statements: stmts
            .iter()
            .map(|(s, p)| (s.to_string(), p.clone()))
            .collect(),
        idempotency_key: None,
        timeout_ms: 0,
        digest: ContentDigest::of(format!("{stmts:?}").as_bytes()),
    }
}

/// Streams a snapshot of the database at `leader` and installs it at `target`.
pub fn snapshot(leader: &Path, target: &Path) {
    let reader = open_reader(leader).unwrap();
    let mut rx = SnapshotReceiver::new(target).unwrap();
    stream(&reader, 1 << 16, |chunk| rx.feed(&chunk))
        .unwrap()
        .unwrap();
    rx.install().unwrap();
}

/// A logical replica at `path`, built from the snapshot at `snap` with `filter`, opened with
/// the `stop` conflict policy.
pub fn logical_replica(snap: &Path, path: &Path, filter: &RowFilter) -> RowReplica {
    RowReplica::build(snap, path, &DbSettings::default(), filter, None).unwrap();
    RowReplica::open(
        path,
        &DbSettings::default(),
        filter,
        ConflictPolicy::Stop,
        Arc::new(AtomicU64::new(0)),
    )
    .unwrap()
    .expect("built")
}
