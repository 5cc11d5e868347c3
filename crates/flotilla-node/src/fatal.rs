//! Errors that stop the node: going on could lose or misreport acknowledged writes, or would
//! only fail again. Each component reports its own kind; the node's main task stops the node at
//! the first one and returns it.

use tokio::sync::mpsc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Fatal {
    /// A commit reached SQLite but could not be made durable in the replication log (or its
    /// capture failed): restart recovery decides what is durable.
    #[error("a commit could not be made durable: {0}")]
    Durability(String),
    /// The node's identity file (cluster, leader incarnation) could not be written.
    #[error("cannot save the node's identity: {0}")]
    Identity(String),
    /// A follower could not flush what it applied: the disk's state is unknown.
    #[error("cannot make applied changes durable: {0}")]
    Flush(String),
    /// A follower cannot be built from its leader's snapshot as configured (a filter that does
    /// not fit the leader's schema).
    #[error("{0}")]
    Bootstrap(String),
    /// A cluster member could not persist its consensus state (its log, its epoch and vote):
    /// going on could break promises made to its peers.
    #[error("consensus: {0}")]
    Consensus(String),
}

/// Where components report fatal errors. Bounded: the first report stops the node; if more
/// arrive meanwhile than fit, they are only logged.
#[derive(Clone)]
pub struct FatalSender(mpsc::Sender<Fatal>);

impl FatalSender {
    pub fn report(&self, fatal: Fatal) {
        tracing::error!("stopping the node: {fatal}");
        let _ = self.0.try_send(fatal);
    }
}

pub fn channel() -> (FatalSender, mpsc::Receiver<Fatal>) {
    let (tx, rx) = mpsc::channel(8);
    (FatalSender(tx), rx)
}
