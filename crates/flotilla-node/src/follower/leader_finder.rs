//! Where a follower's leader is now. A follower of a cluster (a learner) is started with the URL
//! of any member; when its session ends (the leader died, or the node it reached no longer
//! leads), it asks the members it knows (`GET /v1/cluster`) which one leads, and re-points to it
//! by itself. A follower of a single leader (which answers 404 there) keeps its one URL.
//!
//! Following a new leader of the same cluster is safe without a new bootstrap: a cluster's
//! leader ships only committed transactions, so whatever a learner holds is in the history of
//! every later leader (Raft's log matching), and the chain check of the first records proves it.

use crate::peer::Peers;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long one member may take to say who leads.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Members remembered from a cluster's member list (a bound against a peer that lists many).
const MAX_MEMBERS: usize = 64;

pub struct LeaderFinder {
    /// The URL the follower was started with (always asked too).
    configured: String,
    state: Mutex<Known>,
    peers: Arc<Peers>,
}

#[derive(Default)]
struct Known {
    /// The node this follower streams from now.
    current: String,
    /// The cluster's member URLs, as the last member asked listed them.
    members: Vec<String>,
}

impl LeaderFinder {
    pub fn new(configured: &str, peers: Arc<Peers>) -> LeaderFinder {
        LeaderFinder {
            configured: configured.to_string(),
            state: Mutex::new(Known {
                current: configured.to_string(),
                members: Vec::new(),
            }),
            peers,
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node this follower streams from (the leader as last found).
    pub fn current(&self) -> String {
        self.known().current.clone()
    }

    /// Asks the nodes this follower knows which one leads (the current one, the configured
    /// one, the members last listed; all at once) and re-points to the leader named in the
    /// newest epoch: a member that has not noticed an election yet names the old leader, in an
    /// older epoch. Returns the new URL when it changed. Nodes that are not cluster members,
    /// or none that answers, leave the URL as it is.
    pub async fn refresh(&self) -> Option<String> {
        let mut candidates = {
            let k = self.known();
            let mut c = vec![k.current.clone(), self.configured.clone()];
            c.extend(k.members.iter().cloned());
            c
        };
        candidates.sort();
        candidates.dedup();
        let views =
            futures_util::future::join_all(candidates.iter().map(|url| self.ask(url))).await;
        let mut best: Option<(u64, String)> = None;
        let mut members = Vec::new();
        for view in views.into_iter().flatten() {
            if members.is_empty() {
                members = view["members"]
                    .as_array()
                    .map(|m| {
                        m.iter()
                            .filter_map(|m| m["url"].as_str())
                            .take(MAX_MEMBERS)
                            .map(|u| u.trim_end_matches('/').to_string())
                            .collect()
                    })
                    .unwrap_or_default();
            }
            // A member that knows no leader (an election is under way) says nothing of use.
            let Some(leader) = view["leader_url"].as_str() else {
                continue;
            };
            let epoch = view["epoch"].as_u64().unwrap_or(0);
            if best.as_ref().is_none_or(|(e, _)| epoch > *e) {
                best = Some((epoch, leader.trim_end_matches('/').to_string()));
            }
        }
        let mut k = self.known();
        if !members.is_empty() {
            k.members = members;
        }
        let (_, leader) = best?;
        if leader == k.current {
            return None;
        }
        tracing::info!("the cluster's leader is now {leader}: following it");
        k.current = leader.clone();
        Some(leader)
    }

    /// `GET {url}/v1/cluster`, or `None` when the node is down, slow, or not a cluster member.
    async fn ask(&self, url: &str) -> Option<Value> {
        let req = self
            .peers
            .authorized(self.peers.http.get(format!("{url}/v1/cluster")))
            .timeout(ASK_TIMEOUT);
        let resp = req.send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }
}
