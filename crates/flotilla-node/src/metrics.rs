//! Counters the node keeps for `/metrics` (Prometheus text format).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Counters {
    pub commits: AtomicU64,
    pub committed_requests: AtomicU64,
    pub applied_transactions: AtomicU64,
    pub apply_batches: AtomicU64,
    pub execute_requests: AtomicU64,
    pub query_requests: AtomicU64,
    pub bootstraps: AtomicU64,
    pub shipped_bytes: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
