//! Semi-synchronous acknowledgement: a write asked for `semi-sync` is answered once enough
//! physical followers report its position durable. The replication sessions bump
//! [`Replicated::notify`] after every progress report; a waiting write re-reads the tracker
//! then, so no report is missed between its check and its wait.

use super::LeaderState;
use crate::config::{DurabilitySettings, TooFewReplicas};
use flotilla_types::Position;
use std::time::Duration;
use tokio::sync::watch;

/// Bumped after each follower progress report.
pub struct Replicated {
    reports: watch::Sender<u64>,
}

impl Default for Replicated {
    fn default() -> Self {
        Replicated {
            reports: watch::channel(0).0,
        }
    }
}

impl Replicated {
    pub fn notify(&self) {
        self.reports.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Why a semi-sync write was not acknowledged as such.
#[derive(Debug, thiserror::Error)]
pub enum NotReplicated {
    #[error(
        "committed on the leader at {position}, but only {durable} of the {wanted} physical \
         followers semi-sync asks for hold it durably after {waited_ms} ms; it is not lost \
         unless the leader is; retry with the same idempotency key to wait again"
    )]
    TooFew {
        position: Position,
        durable: usize,
        wanted: usize,
        waited_ms: u64,
    },
    #[error(
        "committed on the leader at {position}, but the leader is stopping before enough \
         followers reported it durable; retry with the same idempotency key"
    )]
    Stopping { position: Position },
}

impl LeaderState {
    /// Waits until `copies` physical followers hold `position` durably. With
    /// [`TooFewReplicas::Error`] the wait ends after the configured timeout; with `Wait` it
    /// lasts until the followers report or the node stops.
    pub async fn wait_replicated(
        &self,
        position: Position,
        settings: &DurabilitySettings,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(), NotReplicated> {
        let copies = settings.semi_sync_replicas;
        let started = std::time::Instant::now();
        let mut reports = self.replicated.reports.subscribe();
        let deadline = match settings.too_few_replicas {
            TooFewReplicas::Wait => None,
            TooFewReplicas::Error => {
                Some(tokio::time::Instant::now() + Duration::from_millis(settings.timeout_ms))
            }
        };
        loop {
            reports.borrow_and_update();
            if self.tracker().durable_on(copies) >= position {
                return Ok(());
            }
            let too_few = || NotReplicated::TooFew {
                position,
                durable: self
                    .tracker()
                    .all()
                    .filter(|f| {
                        f.log_kind == flotilla_types::LogKind::Physical && f.durable >= position
                    })
                    .count(),
                wanted: copies,
                waited_ms: started.elapsed().as_millis() as u64,
            };
            let deadline_passed = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = reports.changed() => {
                    if changed.is_err() {
                        return Err(NotReplicated::Stopping { position });
                    }
                }
                _ = deadline_passed => return Err(too_few()),
                _ = shutdown.cancelled() => return Err(NotReplicated::Stopping { position }),
            }
        }
    }
}
