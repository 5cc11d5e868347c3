//! The deployment a data centre belongs to: the id every data centre exchanging with it shares.
//! A data centre's own cluster id is not it — a data centre may be a failover cluster, whose
//! members agree on a cluster id of their own.
//!
//! A new single-leader data centre starts from a copy of the first peer that answers (see
//! `flotilla_store::adopt_data_centre_copy`): it needs no log of the past, which the peers'
//! retention may have dropped long ago.

use crate::config::MultiLeaderConfig;
use crate::follower::leader_finder::LeaderFinder;
use crate::peer::Peers;
use anyhow::Context;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

/// A new deployment's id (the first data centre makes it).
pub fn new_deployment() -> String {
    flotilla_types::ClusterId::from_random(rand::random()).to_string()
}

/// A peer data centre that answered: where its leader is, and its deployment.
struct PeerLeader {
    name: flotilla_types::OriginName,
    url: String,
    deployment: String,
}

/// Peer data centre `name`'s answer to `GET /v1/dc`, from its leader, and the leader's URL
/// (`None`: it does not answer, or it is not the data centre named — no one to join, and its
/// link is refused too, with the reason).
async fn ask_dc(
    peers: &Arc<Peers>,
    name: &flotilla_types::OriginName,
    url: &str,
) -> Option<(String, serde_json::Value)> {
    let finder = LeaderFinder::new(url, peers.clone());
    finder.refresh().await;
    let url = finder.current();
    let answer: serde_json::Value = peers
        .authorized(peers.http.get(format!("{url}/v1/dc")))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .ok()
        .filter(|r| r.status().is_success())?
        .json()
        .await
        .ok()?;
    if answer["dc"].as_str() != Some(name.as_str()) {
        tracing::warn!("the node at {url} is not data centre {name}: not joining its deployment");
        return None;
    }
    Some((url, answer))
}

/// The first peer data centre that answers as the data centre named (`None`: none does).
async fn first_peer(peers: &Arc<Peers>, ml: &MultiLeaderConfig) -> Option<PeerLeader> {
    for (name, url) in &ml.peers {
        let Some((url, answer)) = ask_dc(peers, name, url).await else {
            continue;
        };
        let deployment = answer["deployment"]
            .as_str()
            .and_then(|id| flotilla_types::ClusterId::parse(id).ok());
        if let Some(d) = deployment {
            return Some(PeerLeader {
                name: name.clone(),
                url,
                deployment: d.to_string(),
            });
        }
    }
    None
}

/// The deployment of the first peer data centre that answers (`None`: none does).
pub async fn peers_deployment(peers: &Arc<Peers>, ml: &MultiLeaderConfig) -> Option<String> {
    match first_peer(peers, ml).await {
        Some(p) => {
            tracing::info!(
                "data centre {} belongs to deployment {}: joining it",
                p.name,
                p.deployment
            );
            Some(p.deployment)
        }
        None => {
            tracing::info!(
                "no peer data centre answered: this data centre starts a new deployment"
            );
            None
        }
    }
}

/// Makes a new data centre's database at `db_path` from a copy of the first peer data centre
/// that answers, and returns its deployment; `None` when no peer answers (the data centre
/// starts a new deployment, with an empty database). A copy that fails leaves no file behind.
pub async fn copy_from_peer(
    peers: &Arc<Peers>,
    ml: &MultiLeaderConfig,
    db_path: &Path,
) -> anyhow::Result<Option<String>> {
    let Some(peer) = first_peer(peers, ml).await else {
        if !ml.peers.is_empty() {
            // Two data centres started at once would each start one, and never exchange.
            tracing::warn!(
                "no peer data centre answered: this data centre starts a NEW deployment, which \
                 the data centres of another never exchange with — start the others after this \
                 one (with empty data directories, they join it)"
            );
        }
        return Ok(None);
    };
    // A data centre that never wrote leaves nothing in its peers' databases, but their links
    // have read its log: one started again under its name would make transactions its peers
    // take for ones they read already (or their links stop), so it is refused as one that wrote.
    // Every peer that answers is asked: the one copied may have been added since.
    for (name, url) in &ml.peers {
        let read = ask_dc(peers, name, url)
            .await
            .and_then(|(_, answer)| answer["heard_from"][ml.dc.as_str()].as_u64())
            .filter(|r| *r > 0);
        if let Some(read) = read {
            anyhow::bail!(
                "data centre {} existed before in this deployment ({name} has read its log up \
                 to {read}): a data centre whose data directory was lost comes back under a new \
                 name (--dc)",
                ml.dc
            );
        }
    }
    tracing::info!(
        "data centre {} belongs to deployment {}: copying its database from {}",
        peer.name,
        peer.deployment,
        peer.url
    );
    let copied = copy(peers, ml, &peer, db_path).await;
    if copied.is_err() {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = db_path.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
    copied.with_context(|| {
        format!(
            "cannot start data centre {} from a copy of data centre {}'s database",
            ml.dc, peer.name
        )
    })?;
    Ok(Some(peer.deployment))
}

async fn copy(
    peers: &Arc<Peers>,
    ml: &MultiLeaderConfig,
    peer: &PeerLeader,
    db_path: &Path,
) -> anyhow::Result<()> {
    let url = format!("{}/v1/snapshot", peer.url);
    let mut resp = peers
        .authorized(peers.http.get(&url))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {url}: {}", crate::peer::error_chain(&e)))?;
    if matches!(resp.status().as_u16(), 401 | 403) {
        anyhow::bail!(crate::follower::transport::refused_by_leader(
            &url,
            resp.status().as_u16()
        ));
    }
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        anyhow::bail!("{url} answered {status}: {body}");
    }
    let mut rx =
        tokio::task::block_in_place(|| flotilla_store::snapshot::SnapshotReceiver::new(db_path))?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "copying {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("template"),
        );
        b
    });
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| anyhow::anyhow!("the copy's stream: {e}"))?
    {
        tokio::task::block_in_place(|| rx.feed(&chunk))?;
        if let (Some(b), Some(h)) = (&bar, rx.header()) {
            b.set_length(h.body_len());
            b.set_position(rx.body_written());
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let header = tokio::task::block_in_place(|| rx.install())?;
    tokio::task::block_in_place(|| {
        flotilla_store::adopt_data_centre_copy(
            db_path,
            &ml.dc,
            &peer.deployment,
            &peer.name,
            (header.position, header.chain),
        )
    })?;
    tracing::info!(
        position = %header.position,
        bytes = header.body_len(),
        "copied data centre {}'s database: reading its log after {}",
        peer.name,
        header.position
    );
    Ok(())
}
