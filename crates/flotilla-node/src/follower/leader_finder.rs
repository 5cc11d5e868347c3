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

    /// Asks the nodes this follower knows which one leads (the current one first, then the
    /// configured one, then the members last listed) and re-points to the leader the first
    /// answer names. Returns the new URL when it changed. A node that is not a cluster member,
    /// or none that answers, leaves the URL as it is.
    pub async fn refresh(&self) -> Option<String> {
        let (current, mut candidates) = {
            let k = self.known();
            (k.current.clone(), k.members.clone())
        };
        candidates.retain(|u| *u != current && *u != self.configured);
        candidates.insert(0, self.configured.clone());
        if current != self.configured {
            candidates.insert(0, current.clone());
        }
        for url in candidates {
            let Some(view) = self.ask(&url).await else {
                continue;
            };
            let members: Vec<String> = view["members"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(|m| m["url"].as_str())
                        .take(MAX_MEMBERS)
                        .map(|u| u.trim_end_matches('/').to_string())
                        .collect()
                })
                .unwrap_or_default();
            let leader = view["leader_url"]
                .as_str()
                .map(|u| u.trim_end_matches('/').to_string());
            let mut k = self.known();
            if !members.is_empty() {
                k.members = members;
            }
            // A member that knows no leader (an election is under way) says nothing of use:
            // the next member may know.
            let Some(leader) = leader else { continue };
            if leader == k.current {
                return None;
            }
            tracing::info!("the cluster's leader is now {leader}: following it");
            k.current = leader.clone();
            return Some(leader);
        }
        None
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
