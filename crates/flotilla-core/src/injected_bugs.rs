//! Deliberate bugs, compiled only with the `sim-bugs` feature (enabled by `flotilla-sim` alone)
//! and off unless the simulator's `--inject-bug` turns one on.

use std::sync::atomic::AtomicBool;

/// A follower acknowledges what it applied as durable without waiting for the flush of its WAL
/// (applies commit without an fsync: a power loss can take them back).
pub static ACK_BEFORE_FSYNC: AtomicBool = AtomicBool::new(false);

/// A leader ships whatever is durable, ignoring the follower's flow-control window.
pub static IGNORE_WINDOW: AtomicBool = AtomicBool::new(false);
