//! A follower: drives [`flotilla_core::FollowerSession`] with a WebSocket transport to the
//! leader, an apply thread owning the database's write connection, and snapshot bootstrap.

pub(crate) mod apply;
mod bootstrap;
mod driver;
mod flush;
mod replica;
mod transport;

pub use driver::drive;
use flotilla_store::Replica;
pub use replica::replica_settings;

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

/// Why a logical follower's own transaction did not run.
#[derive(Debug, thiserror::Error)]
pub enum LocalWriteError {
    #[error("the follower is starting")]
    Starting,
    #[error("the apply thread stopped")]
    Stopped,
    /// SQLite could not run or commit it (a full disk, say): nothing was applied.
    #[error(transparent)]
    Store(flotilla_store::StoreError),
}

pub struct FollowerShared {
    pub status: Mutex<FollowerStatus>,
    /// The database as opened at start; taken by the apply thread.
    pub(crate) initial_db: Mutex<Option<Replica>>,
    /// The apply thread's queue, once it runs (a logical follower's local writes go there).
    pub(crate) apply: Mutex<Option<std::sync::mpsc::Sender<apply::ApplyJob>>>,
}

impl FollowerShared {
    pub fn new(db: Option<Replica>) -> FollowerShared {
        FollowerShared {
            status: Mutex::new(FollowerStatus {
                phase: "starting",
                ..Default::default()
            }),
            initial_db: Mutex::new(db),
            apply: Mutex::new(None),
        }
    }

    pub fn status(&self) -> FollowerStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs a transaction on a logical follower's own tables (on the apply thread).
    pub async fn execute_local(
        &self,
        statements: Vec<(String, Vec<rusqlite::types::Value>)>,
        timeout_ms: u64,
    ) -> Result<flotilla_store::LocalOutcome, LocalWriteError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sender = self
            .apply
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(LocalWriteError::Starting)?;
        sender
            .send(apply::ApplyJob::ExecuteLocal(statements, timeout_ms, tx))
            .map_err(|_| LocalWriteError::Stopped)?;
        rx.await
            .map_err(|_| LocalWriteError::Stopped)?
            .map_err(LocalWriteError::Store)
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut FollowerStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
