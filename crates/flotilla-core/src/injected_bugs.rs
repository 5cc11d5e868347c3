//! Deliberate bugs, compiled only with the `sim-bugs` feature (enabled by `flotilla-sim` alone)
//! and off unless the simulator's `--inject-bug` turns one on.

use std::sync::atomic::AtomicBool;

/// A follower acknowledges a batch as durable when it hands the batch to apply, before the
/// apply (and its fsync) completed.
pub static ACK_BEFORE_FSYNC: AtomicBool = AtomicBool::new(false);

/// A leader ships whatever is durable, ignoring the follower's flow-control window.
pub static IGNORE_WINDOW: AtomicBool = AtomicBool::new(false);
