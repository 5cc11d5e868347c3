//! Deliberate bugs, compiled only with the `sim-bugs` feature (enabled by `flotilla-sim` alone)
//! and off unless the simulator's `--inject-bug` turns one on.

use std::sync::atomic::AtomicBool;

/// Apply takes a batch's records newest first, so the oldest image of a page wins.
pub static APPLY_OUT_OF_ORDER: AtomicBool = AtomicBool::new(false);

/// A data centre merges a transaction without waiting for the ones it depends on.
pub static MERGE_IGNORES_DEPENDENCIES: AtomicBool = AtomicBool::new(false);
