//! Cluster membership and consensus on a node (issue 14, being built: see the failover section
//! of docs/architecture.md). The consensus machine is `flotilla_core::consensus`; this module
//! is its host.

pub mod driver;
pub mod member;
pub mod setup;
pub mod state;
pub mod transport;
