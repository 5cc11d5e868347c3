//! Counters the node keeps for `/metrics` (exposed through `prometheus-client`).

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
    /// Writes that waited for semi-sync copies, and those answered `not_replicated`.
    pub semi_sync_waits: AtomicU64,
    pub semi_sync_timeouts: AtomicU64,
    /// Multi-leader: transactions merged in from other data centres, and the conflicts met.
    pub merged_transactions: AtomicU64,
    pub merge_conflicts: AtomicU64,
    /// Changes a logical follower found not to fit its data (see the conflict policy).
    pub apply_conflicts: std::sync::Arc<AtomicU64>,
    pub apply_lag: LagHistogram,
    /// Trigger-based replication: source commit to target commit, per change.
    pub delivery_lag: LagHistogram,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A lag histogram (commit-to-visible on a follower, source-to-target commit for pipelines):
/// log-spaced buckets from 10 µs (×1.25 each) to about 13 s, exported in seconds.
#[derive(Clone)]
pub struct LagHistogram(prometheus_client::metrics::histogram::Histogram);

pub const LAG_BUCKETS: u16 = 64;

impl Default for LagHistogram {
    fn default() -> Self {
        LagHistogram(prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(10e-6, 1.25, LAG_BUCKETS),
        ))
    }
}

impl LagHistogram {
    pub fn record(&self, lag_us: u64) {
        self.0.observe(lag_us as f64 / 1e6);
    }

    /// The histogram to register for one exposition (it shares the counts).
    pub fn metric(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.0.clone()
    }
}
