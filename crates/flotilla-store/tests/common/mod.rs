//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

pub mod data_centre;

use flotilla_store::snapshot::{stream, SnapshotReceiver};
use flotilla_store::{open_reader, ConflictPolicy, DbSettings, RowFilter, RowReplica, TxnRequest};
use flotilla_types::ContentDigest;
use rusqlite::types::Value;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// The tests' one deterministic generator (ChaCha8, as in the simulator): tests replay exactly.
pub struct Rng(rand_chacha::ChaCha8Rng);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }
    pub fn next(&mut self) -> u64 {
        rand::RngCore::next_u64(&mut self.0)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        rand::Rng::random_range(&mut self.0, 0..n)
    }
}

/// One client request of `stmts`.
pub fn req(stmts: &[(&str, Vec<Value>)]) -> TxnRequest {
    TxnRequest {
        statements: stmts
            .iter()
            .map(|(s, p)| (s.to_string(), p.clone().into()))
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
