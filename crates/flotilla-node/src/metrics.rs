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

/// Commit-to-visible lag on a follower: from the leader's commit time (in the record) to the
/// end of the local transaction that made it visible. Log-spaced buckets from 10 µs (×1.25 each)
/// to about 13 s; exported as a Prometheus histogram.
pub struct LagHistogram {
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

pub const LAG_BUCKETS: usize = 64;

/// Upper bound of bucket `i`, in microseconds.
pub fn lag_bucket_bound_us(i: usize) -> f64 {
    10.0 * 1.25f64.powi(i as i32)
}

impl Default for LagHistogram {
    fn default() -> Self {
        LagHistogram {
            counts: (0..=LAG_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl LagHistogram {
    pub fn record(&self, lag_us: u64) {
        let i = (0..LAG_BUCKETS)
            .find(|&i| lag_us as f64 <= lag_bucket_bound_us(i))
            .unwrap_or(LAG_BUCKETS);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(lag_us, Ordering::Relaxed);
    }

    /// Prometheus text for `flotilla_apply_lag_seconds`.
    pub fn render(&self, out: &mut String) {
        self.render_as(
            out,
            "flotilla_apply_lag_seconds",
            "Leader commit to visible on this follower.",
        )
    }

    pub fn render_as(&self, out: &mut String, name: &str, help: &str) {
        use std::fmt::Write;
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = if i == LAG_BUCKETS {
                "+Inf".to_string()
            } else {
                format!("{:.6}", lag_bucket_bound_us(i) / 1e6)
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_sum {:.6}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}
