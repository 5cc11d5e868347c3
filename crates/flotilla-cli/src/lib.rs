//! Pieces of the `flotilla` command that its tests and benchmarks use too.

pub mod client;
pub mod cluster;
pub mod postgres;
