//! The follower's database settings from the node's configuration (the database itself,
//! [`flotilla_store::Replica`], lives in the store: the simulator uses the same one).

use crate::config::NodeConfig;
use flotilla_store::{DbSettings, ReplicaSettings};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// `conflicts` counts apply conflicts (shown in status and metrics).
pub fn replica_settings(config: &NodeConfig, conflicts: Arc<AtomicU64>) -> ReplicaSettings {
    ReplicaSettings {
        kind: config.log_kind,
        db: DbSettings {
            synchronous: config.synchronous,
            ..Default::default()
        },
        filter: config.filter.clone(),
        conflict_policy: config.conflict_policy,
        conflicts,
        page_size: config.page_size,
    }
}
