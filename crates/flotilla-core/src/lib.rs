//! Flotilla's replication state machines, sans IO: each takes events (with the time passed in)
//! and returns commands for its host to perform. The tokio node and the simulator both drive
//! them; nothing here owns a socket, a file, a clock or a thread.
//!
//! - [`handshake`]: the leader's decision when a follower opens a session.
//! - [`FollowerSession`]: a follower's side of replication (connect, handshake, buffer, apply,
//!   acknowledge, bootstrap, retry).
//! - [`LeaderSession`]: the leader's side of one replication session (handshake, shipping with
//!   flow control, heartbeats, acknowledgements, follower registration).
//! - [`FollowerTracker`]: the leader's view of its followers (progress, lag, what the log must
//!   retain for them).
//! - [`retention`]: which log segments may be deleted.
//! - [`consensus`]: Raft among a cluster's voters (raft-rs), with per-request durability.

#![forbid(unsafe_code)]

mod backoff;
pub mod consensus;
pub mod follower_list;
mod follower_session;
mod follower_tracker;
pub mod handshake;
#[cfg(feature = "sim-bugs")]
pub mod injected_bugs;
mod leader_session;
pub mod retention;
#[cfg(test)]
mod test_records;

pub use backoff::Backoff;
pub use follower_session::{
    FollowerCommand, FollowerConfig, FollowerEvent, FollowerPhase, FollowerSession,
};
pub use follower_tracker::{
    AckRefused, FollowerProgress, FollowerTracker, SessionId, SessionState,
};
pub use leader_session::{
    LeaderCommand, LeaderContext, LeaderEvent, LeaderIdentity, LeaderSession, ReadFailure,
    ShippingConfig,
};
