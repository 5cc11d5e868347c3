//! Multi-leader exchange: a data centre's leader takes the transactions of its peer data
//! centres' leaders and merges them (see docs/multi-leader.md).
//!
//! Each peer is a link: this node opens a replication session to the peer's leader as a
//! logical follower (the same session machine, `flotilla_core::FollowerSession`, as every
//! follower), starting after the position of the peer's log it last merged from, and hands
//! each stamped transaction to the writer as a merge. The peer's leader serves it like any
//! other follower session (flow control, retention pins, heartbeats); a link does not count
//! as a copy for semi-sync writes (it is a logical session).

mod deployment;
mod link;

use flotilla_types::{Lsn, OriginName};
use std::sync::Mutex;

pub use deployment::{copy_from_peer, new_deployment, peers_deployment};
pub use link::drive;

/// What one link shows in the status.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LinkView {
    pub phase: &'static str,
    /// The position of the peer's log this node has read through.
    pub read_through: u64,
    /// The peer's head, as its last message said.
    pub peer_head: u64,
    /// Transactions merged in over this link since the node started, and those passed by
    /// (made here, elsewhere in an all-to-all exchange, or already merged).
    pub merged: u64,
    pub passed: u64,
    pub last_error: Option<String>,
    /// When the link last heard from the peer (milliseconds on this node's monotonic clock).
    #[serde(skip)]
    pub heard_ms: Option<u64>,
    /// For the newest merged transaction: from its commit at the peer to its merge here
    /// (wall clocks of both, so it includes their difference).
    pub last_merge_lag_ms: Option<u64>,
}

pub struct Link {
    pub peer: OriginName,
    pub url: String,
    pub view: Mutex<LinkView>,
}

impl Link {
    pub fn new(peer: OriginName, url: String) -> Link {
        Link {
            peer,
            url,
            view: Mutex::new(LinkView {
                phase: "connecting",
                ..LinkView::default()
            }),
        }
    }

    pub fn view(&self) -> LinkView {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut LinkView)) {
        f(&mut self.view.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Transactions of the peer's log not read here yet.
    pub fn lag_transactions(&self) -> u64 {
        let v = self.view();
        v.peer_head.saturating_sub(v.read_through)
    }
}

/// The links of this node (empty on a node that is not a data centre's leader).
#[derive(Default)]
pub struct Exchange {
    pub links: Vec<std::sync::Arc<Link>>,
}

impl Exchange {
    pub fn read_through(&self, peer: &OriginName) -> Option<Lsn> {
        self.links
            .iter()
            .find(|l| l.peer == *peer)
            .map(|l| Lsn(l.view().read_through))
    }
}
