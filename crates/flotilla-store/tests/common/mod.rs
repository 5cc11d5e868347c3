//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use flotilla_store::TxnRequest;
use flotilla_types::ContentDigest;
use rusqlite::types::Value;

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
