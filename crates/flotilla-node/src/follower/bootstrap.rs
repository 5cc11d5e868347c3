//! Bootstrap: replace the local database with a snapshot streamed from the leader.

use super::apply::ApplyJob;
use super::FollowerHost;
use super::FollowerShared;
use flotilla_store::snapshot::SnapshotReceiver;
use flotilla_types::{Chain, Position};
use std::io::IsTerminal;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Why a bootstrap did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BootstrapError {
    /// Worth another try later (the leader unreachable, the stream cut, …).
    #[error("{0}")]
    Retry(String),
    /// Retrying cannot fix it (a filter that does not fit the leader's schema): the node stops.
    #[error("{0}")]
    Fatal(String),
}

impl From<String> for BootstrapError {
    fn from(s: String) -> BootstrapError {
        BootstrapError::Retry(s)
    }
}

impl From<&str> for BootstrapError {
    fn from(s: &str) -> BootstrapError {
        BootstrapError::Retry(s.to_string())
    }
}

pub async fn bootstrap(
    node: Arc<FollowerHost>,
    shared: Arc<FollowerShared>,
    leader_url: String,
    apply: std::sync::mpsc::Sender<ApplyJob>,
) -> Result<(Position, Chain, String), BootstrapError> {
    // Readers and the writer let go of the old file first.
    node.readers.close().await;
    let (tx, rx) = oneshot::channel();
    apply
        .send(ApplyJob::Close(tx))
        .map_err(|_| "apply thread gone")?;
    let _ = rx.await;
    let result = fetch_and_install(&node, &shared, &leader_url).await;
    // Open whatever is in place now: the new database, or the old one if the fetch failed.
    let (tx, rx) = oneshot::channel();
    apply
        .send(ApplyJob::Open(tx))
        .map_err(|_| "apply thread gone")?;
    let opened = rx.await.map_err(|_| "apply thread gone")?;
    shared.update(|s| s.bootstrap_progress = None);
    if let Ok(Some(_)) = &opened {
        node.readers.reopen();
    }
    result?;
    match opened {
        Ok(Some((position, chain, cluster))) => {
            crate::metrics::Counters::add(&node.counters.bootstraps, 1);
            Ok((position, chain, cluster))
        }
        Ok(None) => Err("the installed snapshot holds no Flotilla database".into()),
        Err(e) => Err(format!("cannot open the installed snapshot: {e}").into()),
    }
}

async fn fetch_and_install(
    node: &Arc<FollowerHost>,
    shared: &FollowerShared,
    leader_url: &str,
) -> Result<(), BootstrapError> {
    let url = format!("{leader_url}/v1/snapshot");
    tracing::info!("bootstrapping from {url}");
    let mut resp = node
        .peers
        .authorized(node.peers.http.get(&url))
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {}", crate::peer::error_chain(&e)))?;
    if matches!(resp.status().as_u16(), 401 | 403) {
        return Err(super::transport::refused_by_leader(&url, resp.status().as_u16()).into());
    }
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("{url} answered {status}: {body}").into());
    }
    let path = flotilla_store::snapshot_target(node.replica.kind, &node.db_path);
    let mut rx =
        tokio::task::block_in_place(|| SnapshotReceiver::new(&path)).map_err(|e| e.to_string())?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "bootstrapping {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("template"),
        );
        b
    });
    let mut checked_cluster = false;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("snapshot stream: {e}"))?
    {
        tokio::task::block_in_place(|| rx.feed(&chunk)).map_err(|e| e.to_string())?;
        if let Some(h) = rx.header() {
            if !checked_cluster {
                checked_cluster = true;
                if let Some(mine) = node.identity.cluster_id() {
                    if mine != h.cluster_id {
                        return Err(format!(
                            "the leader belongs to cluster {} but this node belongs to cluster {mine}",
                            h.cluster_id
                        )
                        .into());
                    }
                }
                if let Some(b) = &bar {
                    b.set_length(h.body_len());
                }
            }
            let (done, total) = (rx.body_written(), h.body_len());
            shared.update(|s| s.bootstrap_progress = Some((done, total)));
            if let Some(b) = &bar {
                b.set_position(done);
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let settings = node.replica.clone();
    let header = tokio::task::block_in_place(|| {
        flotilla_store::install_snapshot(rx, &node.db_path, &settings)
    })
    .map_err(|e| match e {
        // A filter that does not fit the leader's schema will not fit at the next try.
        flotilla_store::StoreError::Mismatch(_) => {
            BootstrapError::Fatal(format!("cannot build the logical replica: {e}"))
        }
        e => BootstrapError::Retry(format!("cannot install the snapshot: {e}")),
    })?;
    node.identity
        .adopt_cluster(&header.cluster_id)
        .map_err(|e| e.to_string())?;
    tracing::info!(position = %header.position, bytes = header.body_len(), "snapshot installed");
    Ok(())
}
