//! Bootstrap: replace the local database with a snapshot streamed from the leader.

use super::apply::ApplyJob;
use crate::node::Node;
use flotilla_store::snapshot::SnapshotReceiver;
use flotilla_types::{Chain, Position};
use std::io::IsTerminal;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Marks a bootstrap error that retrying cannot fix: the node stops with it.
pub const FATAL_PREFIX: &str = "fatal: ";

pub async fn bootstrap(
    node: Arc<Node>,
    leader_url: String,
    apply: std::sync::mpsc::Sender<ApplyJob>,
) -> Result<(Position, Chain, String), String> {
    let shared = node.follower.clone().expect("follower");
    // Readers and the writer let go of the old file first.
    node.readers.close().await;
    let (tx, rx) = oneshot::channel();
    apply
        .send(ApplyJob::Close(tx))
        .map_err(|_| "apply thread gone")?;
    let _ = rx.await;
    let result = fetch_and_install(&node, &leader_url).await;
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
        Err(e) => Err(format!("cannot open the installed snapshot: {e}")),
    }
}

async fn fetch_and_install(node: &Arc<Node>, leader_url: &str) -> Result<(), String> {
    let shared = node.follower.clone().expect("follower");
    let url = format!("{leader_url}/v1/snapshot");
    tracing::info!("bootstrapping from {url}");
    let mut resp = node
        .peers
        .authorized(node.peers.http.get(&url))
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {}", crate::peer::error_chain(&e)))?;
    if matches!(resp.status().as_u16(), 401 | 403) {
        return Err(super::transport::refused_by_leader(
            &url,
            resp.status().as_u16(),
        ));
    }
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("{url} answered {status}: {body}"));
    }
    // A logical replica is built from the snapshot; a physical one is the snapshot.
    let logical = node.config.log_kind == flotilla_types::LogKind::Logical;
    let path = if logical {
        node.config.data_dir.join("snapshot.sqlite")
    } else {
        node.db_path.clone()
    };
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
                if let Some(mine) = node.cluster_id() {
                    if mine != h.cluster_id {
                        return Err(format!(
                            "the leader belongs to cluster {} but this node belongs to cluster {mine}",
                            h.cluster_id
                        ));
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
    let header = tokio::task::block_in_place(|| rx.install()).map_err(|e| e.to_string())?;
    if logical {
        let settings = flotilla_store::DbSettings {
            synchronous: node.config.synchronous,
            ..Default::default()
        };
        let built = tokio::task::block_in_place(|| {
            flotilla_store::RowReplica::build(
                &path,
                &node.db_path,
                &settings,
                &node.config.filter,
                node.config.page_size,
            )
        });
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
        let meta = built.map_err(|e| {
            let msg = format!("cannot build the logical replica: {e}");
            // A filter that does not fit the leader's schema will not fit at the next try.
            if matches!(e, flotilla_store::StoreError::Mismatch(_)) {
                format!("{FATAL_PREFIX}{msg}")
            } else {
                msg
            }
        })?;
        tracing::info!(position = %meta.position, filter = %node.config.filter, "logical replica built");
    }
    node.adopt_cluster(&header.cluster_id)
        .map_err(|e| e.to_string())?;
    tracing::info!(position = %header.position, bytes = header.body_len(), "snapshot installed");
    Ok(())
}
