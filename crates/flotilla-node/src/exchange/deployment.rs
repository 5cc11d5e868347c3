//! The deployment a data centre belongs to: the id every data centre exchanging with it shares.
//! A data centre's own cluster id is not it — a data centre may be a failover cluster, whose
//! members agree on a cluster id of their own.

use crate::config::MultiLeaderConfig;
use crate::peer::Peers;
use std::sync::Arc;

/// A new deployment's id (the first data centre makes it).
pub fn new_deployment() -> String {
    flotilla_types::ClusterId::from_random(rand::random()).to_string()
}

/// The deployment of the first peer data centre that answers (`None`: none does). A node that
/// is not the data centre named is no one to join (its link is refused too, with the reason).
pub async fn peers_deployment(peers: &Arc<Peers>, ml: &MultiLeaderConfig) -> Option<String> {
    for (name, url) in &ml.peers {
        let finder = crate::follower::leader_finder::LeaderFinder::new(url, peers.clone());
        finder.refresh().await;
        let url = finder.current();
        let req = peers
            .authorized(peers.http.get(format!("{url}/v1/dc")))
            .timeout(std::time::Duration::from_secs(5));
        let answer = match req.send().await {
            Ok(r) if r.status().is_success() => r.json::<serde_json::Value>().await.ok(),
            _ => None,
        };
        if answer
            .as_ref()
            .is_some_and(|v| v["dc"].as_str() != Some(name.as_str()))
        {
            tracing::warn!(
                "the node at {url} is not data centre {name}: not joining its deployment"
            );
            continue;
        }
        let id = answer
            .as_ref()
            .and_then(|v| v["deployment"].as_str())
            .and_then(|id| flotilla_types::ClusterId::parse(id).ok());
        if let Some(id) = id {
            tracing::info!("data centre {name} belongs to deployment {id}: joining it");
            return Some(id.to_string());
        }
    }
    tracing::info!("no peer data centre answered: this data centre starts a new deployment");
    None
}
