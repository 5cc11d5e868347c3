//! Deliberate bugs, compiled only with the `sim-bugs` feature (enabled by `flotilla-sim` alone)
//! and off unless the simulator's `--inject-bug` turns one on: they prove the simulator catches
//! what they break.

use std::sync::atomic::AtomicBool;

/// Decoders accept bytes whose CRC does not match.
pub static SKIP_CHECKSUM: AtomicBool = AtomicBool::new(false);
