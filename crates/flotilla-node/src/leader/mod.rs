//! A leader's state: one writer thread (group commit, capture, log append and fsync), the
//! durable head, recent records, the follower tracker and list, retention. Replication sessions
//! are served by `api/replication.rs` (a host of `flotilla_core::LeaderSession`).

mod collab_jobs;
mod device_jobs;
mod feed_pins;
mod gate;
mod recent;
mod replicated;
mod restore;
mod trims;
mod writer;

pub use collab_jobs::CollabChange;
pub use device_jobs::DeviceChange;
pub use feed_pins::{FeedPin, FeedPins};
pub use gate::WriterGate;
pub use recent::RecentRecords;
pub use replicated::{NotReplicated, Replicated};
pub use restore::{RestoreError, RestoreJob};
pub use trims::Trims;
pub use writer::{
    spawn_writer, ChangeError, ChangeReply, ClusterWriter, DataCentreParts, MergeJob, MergeReply,
    PipelineChange, PolicyChange, TokenChange, WriteError, WriteJob, WriteReply, WriterParts,
};

use flotilla_core::{FollowerTracker, ReadFailure};
use flotilla_log::{Log, LogError};
use flotilla_types::{Chain, Epoch, Lsn, Position};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// The newest durable commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    pub position: Position,
    pub chain: Chain,
    pub commit_time_us: u64,
}

pub struct LeaderState {
    pub writer: mpsc::Sender<WriteJob>,
    pub log: Arc<Log>,
    pub head: watch::Sender<Head>,
    pub recent: Arc<RecentRecords>,
    pub tracker: Mutex<FollowerTracker>,
    pub cluster_id: String,
    /// This data directory's leader incarnation (sent in every welcome).
    pub incarnation: String,
    pub epoch: Epoch,
    /// Where known followers are remembered across restarts.
    pub followers_file: PathBuf,
    /// Saves of the follower list happen one at a time, so an older list never overwrites a
    /// newer one.
    pub followers_saving: Mutex<()>,
    /// Open change-feed streams (they hold the log back like followers).
    pub feed_pins: Arc<FeedPins>,
    /// Changelog rows the pipelines delivered, for the writer to delete.
    pub trims: Arc<Trims>,
    /// Cancels the writer's running statement when the node stops (a restore replaces the
    /// connection, and its handle here).
    pub writer_interrupt: Arc<Mutex<flotilla_store::InterruptHandle>>,
    /// Wakes semi-sync writes when a follower reports progress.
    pub replicated: Replicated,
    /// Pauses the writer for a leadership transfer; closed when a cluster's leader steps down.
    pub gate: Arc<WriterGate>,
}

impl LeaderState {
    /// Durable records from `from` on (at most `max_records`, stopping after the one that
    /// reaches `max_bytes`): from memory when recent, otherwise from the log files.
    pub async fn read_records(
        &self,
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<bytes::Bytes>, LogError> {
        if let Some(recs) = self.recent.from(from.0, max_records, max_bytes) {
            if !recs.is_empty() {
                return Ok(recs);
            }
        }
        let log = self.log.clone();
        match tokio::task::spawn_blocking(move || log.read(from.0, max_records, max_bytes)).await {
            Ok(read) => read,
            // The read panicked (a bug): an error for this reader, not a panic of its task.
            Err(e) => Err(LogError::Io {
                path: PathBuf::from("(replication log read)"),
                source: std::io::Error::other(format!("the read task failed: {e}")),
            }),
        }
    }

    /// [`LeaderState::read_records`] for a replication session: what it cannot read is either
    /// gone for this follower (it bootstraps) or a failure that ends the session.
    pub async fn read_for_follower(
        &self,
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<bytes::Bytes>, ReadFailure> {
        self.read_records(from, max_records, max_bytes)
            .await
            .map_err(|e| match e {
                LogError::Trimmed { .. } => ReadFailure::Unavailable(e.to_string()),
                LogError::Corrupt { .. } => {
                    tracing::error!(
                        "replication log damaged: {e}; followers that need it bootstrap"
                    );
                    ReadFailure::Unavailable(e.to_string())
                }
                e => ReadFailure::Failed(e.to_string()),
            })
    }

    pub fn tracker(&self) -> std::sync::MutexGuard<'_, FollowerTracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Saves the known followers (id, url, durable position): a follower that is down still
    /// holds the log back after a leader restart.
    pub fn save_followers(&self) {
        let _one_at_a_time = self
            .followers_saving
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let bytes = flotilla_core::follower_list::encode(&self.tracker());
        if let Err(e) = flotilla_store::atomic_file::write_atomically(&self.followers_file, &bytes)
        {
            tracing::warn!(
                "could not save the follower list {}: {e}",
                self.followers_file.display()
            );
        }
    }
}

/// Reads the follower list saved by [`LeaderState::save_followers`]; what cannot be read is
/// reported (those followers reconnect and register again, and until then do not hold the log).
pub fn load_followers(path: &std::path::Path) -> Vec<flotilla_core::FollowerProgress> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!("cannot read the follower list {}: {e}", path.display());
            return Vec::new();
        }
    };
    match flotilla_core::follower_list::decode(&bytes) {
        Ok(list) => {
            for bad in &list.bad_entries {
                tracing::warn!("follower list {}: {bad}; entry ignored", path.display());
            }
            list.followers
        }
        Err(e) => {
            tracing::warn!("ignoring the follower list {}: {e}", path.display());
            Vec::new()
        }
    }
}

/// Deletes log segments no known follower (nor open change feed) needs, within the size and
/// age caps, every 5 s until `shutdown`.
pub async fn retention_loop(
    leader: Arc<LeaderState>,
    policy: flotilla_core::retention::RetentionPolicy,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use flotilla_core::retention::{keep_from, SegmentInfo};
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let segments: Vec<SegmentInfo> = leader
            .log
            .segments()
            .into_iter()
            .map(|s| SegmentInfo {
                first_lsn: s.first_lsn,
                last_lsn: s.last_lsn,
                bytes: s.bytes,
                modified_ms: std::fs::metadata(&s.path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(u64::MAX, |d| d.as_millis() as u64),
            })
            .collect();
        let needed = match (
            leader.tracker().needed_from(),
            leader.feed_pins.needed_from(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let keep = keep_from(&segments, needed, policy, crate::time::wall_ms());
        let log = leader.log.clone();
        match tokio::task::spawn_blocking(move || log.remove_before(keep)).await {
            Ok(Ok(n)) if n > 0 => {
                tracing::info!("log retention removed {n} segments before lsn {keep}")
            }
            Ok(Err(e)) => tracing::warn!("log retention failed: {e}"),
            _ => {}
        }
    }
}
