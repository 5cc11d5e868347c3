//! A follower: drives [`flotilla_core::FollowerSession`] with a WebSocket transport to the
//! leader, an apply thread owning the database's write connection, and snapshot bootstrap.

mod apply;
mod bootstrap;
mod driver;
mod replica;
mod transport;

pub use driver::drive;
pub use replica::{Replica, ReplicaSettings};

use flotilla_types::Position;
use std::sync::Mutex;

/// What `/v1/status` shows of a follower.
#[derive(Debug, Clone, Default)]
pub struct FollowerStatus {
    pub phase: &'static str,
    pub last_error: Option<String>,
    pub leader_head: Position,
    pub received: Position,
    /// (bytes received, bytes in total) while bootstrapping.
    pub bootstrap_progress: Option<(u64, u64)>,
}

pub struct FollowerShared {
    pub status: Mutex<FollowerStatus>,
    /// The database as opened at start; taken by the apply thread.
    pub(crate) initial_db: Mutex<Option<Replica>>,
}

impl FollowerShared {
    pub fn new(db: Option<Replica>) -> FollowerShared {
        FollowerShared {
            status: Mutex::new(FollowerStatus {
                phase: "starting",
                ..Default::default()
            }),
            initial_db: Mutex::new(db),
        }
    }

    pub fn status(&self) -> FollowerStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut FollowerStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
