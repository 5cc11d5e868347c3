//! What a running node's tasks share: its role (leader or follower, with the state of each) and
//! the parts every role has. Starting a node is `serve.rs`.

use crate::config::NodeConfig;
use crate::follower::FollowerShared;
use crate::identity::IdentityStore;
use crate::leader::LeaderState;
use crate::metrics::Counters;
use crate::readers::ReaderPool;
use flotilla_types::Position;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What this node is, with the state only that role has: matched once where a task or a
/// request needs it, and passed on as the state itself.
pub enum Role {
    Leader {
        state: Arc<LeaderState>,
        /// Trigger-based replication: the delivery workers.
        pipelines: Arc<crate::pipeline::Pipelines>,
    },
    Follower {
        leader_url: String,
        state: Arc<FollowerShared>,
    },
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Leader { .. } => "leader",
            Role::Follower { .. } => "follower",
        }
    }
}

pub struct Node {
    pub config: NodeConfig,
    /// What this node is now. A cluster member's role changes with elections: read it once per
    /// request (`role()`), and use what was read.
    pub role: arc_swap::ArcSwap<Role>,
    /// How clients and other nodes reach this node.
    pub url: String,
    pub db_path: PathBuf,
    pub identity: Arc<IdentityStore>,
    pub readers: Arc<ReaderPool>,
    /// The newest position visible to readers (committed on a leader, applied on a follower).
    pub position: Arc<watch::Sender<Position>>,
    pub counters: Arc<Counters>,
    pub shutdown: CancellationToken,
    /// The tokens requests must carry; `None` when authentication is off.
    pub keyring: Option<Arc<crate::auth::Keyring>>,
    /// How this node reaches other nodes (TLS roots, its replication token).
    pub peers: Arc<crate::peer::Peers>,
    /// On a cluster member: its consensus task.
    pub cluster: Option<Arc<crate::cluster::driver::ClusterHandle>>,
    /// Multi-leader: the links to the peer data centres.
    pub exchange: Arc<crate::exchange::Exchange>,
    /// When each device last synced (offline devices).
    pub device_activity: crate::api::sync::DeviceActivity,
    /// The collaborative documents open on this node.
    pub collab: Arc<crate::collab::DocHub>,
}

impl Node {
    /// The role as it is now.
    pub fn role(&self) -> Arc<Role> {
        self.role.load_full()
    }

    pub fn leader_url(&self) -> Option<String> {
        match &**self.role.load() {
            Role::Leader { .. } => Some(self.url.clone()),
            Role::Follower { leader_url, state } => Some(
                state
                    .status()
                    .leader_url
                    .unwrap_or_else(|| leader_url.clone()),
            ),
        }
    }

    /// The leader's state, on a leader.
    pub fn leader(&self) -> Option<Arc<LeaderState>> {
        match &**self.role.load() {
            Role::Leader { state, .. } => Some(state.clone()),
            Role::Follower { .. } => None,
        }
    }

    /// Whether this node still leads with `state` (a cluster member that stepped down, or led
    /// again since, holds another or none): sessions and feeds opened on it end when not.
    pub fn still_leads(&self, state: &Arc<LeaderState>) -> bool {
        self.leader().is_some_and(|now| Arc::ptr_eq(&now, state))
    }

    /// The pipelines' workers, on a leader.
    pub fn pipelines(&self) -> Option<Arc<crate::pipeline::Pipelines>> {
        match &**self.role.load() {
            Role::Leader { pipelines, .. } => Some(pipelines.clone()),
            Role::Follower { .. } => None,
        }
    }

    /// The follower's state, on a follower.
    pub fn follower(&self) -> Option<Arc<FollowerShared>> {
        match &**self.role.load() {
            Role::Leader { .. } => None,
            Role::Follower { state, .. } => Some(state.clone()),
        }
    }
}
