//! Collaborative text on the leader (docs/collab.md): each open document is a task that holds
//! it in memory (a `yrs` document), merges what its editors send, relays it to the others at
//! once, and stores it in group commits through the writer.
//!
//! The hub finds a document's task or starts one. A task ends once its last editor left and
//! everything merged is stored; it takes itself out of the hub under the hub's lock, after
//! checking that nothing was sent to it meanwhile, so an editor who joins at that moment
//! reaches a live task or starts a new one that reads everything stored.

mod doc_task;
mod editor_out;
mod text_edit;

pub use doc_task::{ConnId, Outgoing, MAX_LEASE_MS};
pub use editor_out::{editor_channel, EditorIn, EditorOut};

use flotilla_store::collab::ResolvedDoc;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// What a document's task is told.
#[derive(Debug)]
pub enum DocEvent {
    /// An editor connected: its messages go to `out`. `can_edit`: its token may write.
    Join {
        conn: ConnId,
        out: EditorOut,
        can_edit: bool,
        /// The lock this editor holds (`?lock=`), if any.
        lock: Option<String>,
    },
    /// Binary WebSocket messages of an editor, in order (those that had arrived together).
    /// The permit — one per message — bounds what one connection has queued (its reader waits
    /// for one before it reads on): it is released once they are handled.
    Message {
        conn: ConnId,
        batch: Vec<Vec<u8>>,
        permit: tokio::sync::OwnedSemaphorePermit,
    },
    /// An editor disconnected.
    Leave { conn: ConnId },
    /// Something other than the document's task stored into it (a merge from another data
    /// centre or a device): the task reads it, merges it and relays it.
    Stored,
    /// Take, renew or release the document's lock (lock-based mode).
    Lock {
        action: LockAction,
        reply: tokio::sync::oneshot::Sender<Result<Option<LockState>, LockRefused>>,
    },
}

#[derive(Debug)]
pub enum LockAction {
    /// Take the lock for `lease_ms` (or renew it, giving its id).
    Take {
        holder: String,
        lease_ms: u64,
        renew: Option<String>,
    },
    Release {
        lock: String,
    },
}

/// A held lock, as its holder hears of it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LockState {
    /// Presented by the holder's editors (`?lock=`) and to renew or release it.
    pub lock: String,
    pub holder: String,
    pub expires_in_ms: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LockRefused {
    #[error("the document is locked by {holder} for another {left_ms} ms")]
    Held { holder: String, left_ms: u64 },
    #[error("no lock {0} is held on this document (it expired, or was released)")]
    NotHeld(String),
}

#[derive(Default)]
pub struct DocHub {
    docs: Mutex<HashMap<String, mpsc::UnboundedSender<DocEvent>>>,
    next_conn: AtomicU64,
}

impl DocHub {
    /// A number for a new editor connection.
    pub fn new_conn(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Sends `doc`'s task an event (starting the task when none runs): the sender for later
    /// events.
    pub fn send(
        self: &Arc<Self>,
        node: &Arc<crate::node::Node>,
        doc: ResolvedDoc,
        join: DocEvent,
    ) -> mpsc::UnboundedSender<DocEvent> {
        let address = doc.address();
        let mut docs = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        let join = match docs.get(&address) {
            Some(tx) => match tx.send(join) {
                Ok(()) => return tx.clone(),
                // Its task panicked (a task that ends otherwise takes itself out first).
                Err(mpsc::error::SendError(join)) => join,
            },
            None => join,
        };
        self.start(&mut docs, node, doc, address, join)
    }

    fn start(
        self: &Arc<Self>,
        docs: &mut HashMap<String, mpsc::UnboundedSender<DocEvent>>,
        node: &Arc<crate::node::Node>,
        doc: ResolvedDoc,
        address: String,
        first: DocEvent,
    ) -> mpsc::UnboundedSender<DocEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(first);
        docs.insert(address.clone(), tx.clone());
        tokio::spawn(doc_task::run(self.clone(), node.clone(), doc, rx));
        tx
    }

    /// Called by a task with nothing left to do: it leaves the hub unless something was sent to
    /// it meanwhile (then it goes on). `true`: it left and ends.
    fn leave_if_idle(&self, address: &str, rx: &mut mpsc::UnboundedReceiver<DocEvent>) -> bool {
        let mut docs = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        if !rx.is_empty() {
            return false;
        }
        docs.remove(address);
        rx.close();
        true
    }

    /// Tells the task of the document at `address`, if one runs, that something else stored
    /// into it.
    pub fn stored(&self, address: &str) {
        if let Some(tx) = self
            .docs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(address)
        {
            let _ = tx.send(DocEvent::Stored);
        }
    }

    /// Takes a failed task out (its editors were told why).
    fn remove(&self, address: &str) {
        self.docs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(address);
    }
}

/// Runs `f` on one of the node's pooled readers, with Flotilla's own tables readable (the
/// clients' rules do not apply), on this worker thread: `block_in_place` hands the worker's
/// other tasks to another thread meanwhile. A connection opened for each read cost a third
/// of an editor's join, and a follower's documents read what the leader stored every 20 ms.
pub(crate) async fn read_own<T>(
    node: &crate::node::Node,
    f: impl FnOnce(&rusqlite::Connection) -> T,
) -> Result<T, String> {
    let mut lease = node
        .readers
        .lease()
        .await
        .map_err(|e| format!("cannot read the database right now: {e}"))?;
    Ok(tokio::task::block_in_place(move || {
        let reader = lease.reader();
        let rules = reader.rules.clone();
        rules.internal(|| f(&reader.conn))
    }))
}
