//! A follower: drives [`flotilla_core::FollowerSession`] with a WebSocket transport to the
//! leader, an apply thread owning the database's write connection, and snapshot bootstrap.

pub(crate) mod apply;
pub(crate) mod bootstrap;
mod driver;
mod flush;
pub(crate) mod leader_finder;
mod replica;
pub(crate) mod transport;

pub use driver::drive;
use flotilla_store::{Replica, ReplicaSettings};
pub use replica::replica_settings;
pub use transport::Credentials;

use crate::auth::Keyring;
use crate::identity::IdentityStore;
use crate::metrics::Counters;
use crate::peer::Peers;
use crate::readers::ReaderPool;
use flotilla_types::Position;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a follower's tasks need of their node, and nothing more.
pub struct FollowerHost {
    /// This follower's id and URL, as it introduces itself to the leader.
    pub id: String,
    pub url: String,
    pub db_path: PathBuf,
    pub replica: ReplicaSettings,
    pub identity: Arc<IdentityStore>,
    /// Closed while a bootstrap replaces the database.
    pub readers: Arc<ReaderPool>,
    /// The newest position visible to readers.
    pub position: Arc<watch::Sender<Position>>,
    pub counters: Arc<Counters>,
    pub peers: Arc<Peers>,
    /// To warn when authentication is on but the cluster has no tokens yet.
    pub keyring: Option<Arc<Keyring>>,
    pub shutdown: CancellationToken,
}

/// What `/v1/status` shows of a follower.
#[derive(Debug, Clone, Default)]
pub struct FollowerStatus {
    pub phase: &'static str,
    pub last_error: Option<String>,
    pub leader_head: Position,
    pub received: Position,
    /// What survives a power loss here (applied batches are flushed just after).
    pub durable: Position,
    /// (bytes received, bytes in total) while bootstrapping.
    pub bootstrap_progress: Option<(u64, u64)>,
    /// Since when (monotonic ms) this follower has not been streaming with everything its
    /// leader announced applied; `None` while it is. `/readyz` measures lag by it.
    pub behind_since_ms: Option<u64>,
    /// The node it streams from, once it differs from the one it was started with (a learner
    /// of a cluster follows whichever member leads).
    pub leader_url: Option<String>,
    /// When (monotonic ms) the leader last sent anything (records or a heartbeat): a leader
    /// that falls silent (frozen, cut off) counts as lag before the session gives up on it.
    pub heard_ms: Option<u64>,
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
        statements: Vec<(String, flotilla_store::Params)>,
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
