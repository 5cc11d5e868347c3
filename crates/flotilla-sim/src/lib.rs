//! Deterministic simulation of a Flotilla leader, a physical follower and a logical one.
//!
//! One seed drives everything: the client workload, the network (loss, duplication, delay and so
//! reordering, bit flips, partitions), and crashes of followers and of the leader (including
//! between a SQLite commit and its log append). The replication code under test is the real one:
//! `LeaderDb` capture, the `Log`, the wire codecs, `handshake::decide`, `FollowerSession`,
//! `FollowerDb` apply and the snapshot stream. What the simulator supplies is the glue the tokio
//! node supplies in production (connections, the shipping loop, the apply and bootstrap hosts)
//! and the clock.
//!
//! SQLite does its own file IO on real temporary files. A crash here is a *process* crash: the
//! connection is abandoned without closing (so SQLite gets no chance to checkpoint or clean up)
//! and everything the process wrote is still in the OS's page cache, as after `kill -9`.
//! Power loss (unsynced writes lost) needs a SQLite VFS over a simulated disk: not yet.
//!
//! Invariants, checked as the run goes:
//! - a follower's database always equals the leader's state at the follower's LSN (same page
//!   digest for a physical follower, same rows for a logical one): a prefix of the leader's
//!   history, never a fork, never a corrupted record applied;
//! - no acknowledged transaction is lost across leader crashes;
//! - after faults stop, every follower converges to the leader's head.

#![forbid(unsafe_code)]

pub mod cluster;
mod device_documents;
pub mod devices;
pub mod multi_dc;
mod network;
mod replica;
mod world;

pub use world::{run_seed, Report};

use std::sync::atomic::Ordering;

/// Bugs `--inject-bug` can switch on, to prove the simulator catches them.
pub const INJECTABLE_BUGS: &[&str] = &[
    "ack-before-fsync",
    "skip-checksum",
    "apply-out-of-order",
    "ignore-window",
];

/// Bugs of a cluster member's host that `--cluster --inject-bug` can switch on.
pub const INJECTABLE_CLUSTER_BUGS: &[&str] =
    &["forget-vote", "ack-quorum-on-persist", "read-past-commit"];

/// Bugs of multi-leader merging that `--multi-dc --inject-bug` can switch on.
pub const INJECTABLE_MULTI_DC_BUGS: &[&str] = &["merge-ignores-dependencies"];

/// A bug name the simulator does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown bug {0:?}; known: {known}, with --cluster {cluster}, with --multi-dc {multi}", known = INJECTABLE_BUGS.join(", "), cluster = INJECTABLE_CLUSTER_BUGS.join(", "), multi = INJECTABLE_MULTI_DC_BUGS.join(", "))]
pub struct UnknownBug(pub String);

/// Switches a deliberate bug on (or all off with `None`). The switches exist only in builds with
/// the `sim-bugs` feature, which only this crate enables.
pub fn inject_bug(name: Option<&str>) -> Result<(), UnknownBug> {
    flotilla_wire::injected_bugs::SKIP_CHECKSUM.store(false, Ordering::Relaxed);
    flotilla_store::injected_bugs::APPLY_OUT_OF_ORDER.store(false, Ordering::Relaxed);
    flotilla_core::injected_bugs::ACK_BEFORE_FSYNC.store(false, Ordering::Relaxed);
    flotilla_core::injected_bugs::IGNORE_WINDOW.store(false, Ordering::Relaxed);
    cluster::FORGET_VOTE.store(false, Ordering::Relaxed);
    cluster::ACK_QUORUM_ON_PERSIST.store(false, Ordering::Relaxed);
    cluster::READ_PAST_COMMIT.store(false, Ordering::Relaxed);
    flotilla_store::injected_bugs::MERGE_IGNORES_DEPENDENCIES.store(false, Ordering::Relaxed);
    match name {
        Some("merge-ignores-dependencies") => {
            flotilla_store::injected_bugs::MERGE_IGNORES_DEPENDENCIES.store(true, Ordering::Relaxed)
        }
        Some("forget-vote") => cluster::FORGET_VOTE.store(true, Ordering::Relaxed),
        Some("ack-quorum-on-persist") => {
            cluster::ACK_QUORUM_ON_PERSIST.store(true, Ordering::Relaxed)
        }
        Some("read-past-commit") => cluster::READ_PAST_COMMIT.store(true, Ordering::Relaxed),
        None => {}
        Some("skip-checksum") => {
            flotilla_wire::injected_bugs::SKIP_CHECKSUM.store(true, Ordering::Relaxed)
        }
        Some("apply-out-of-order") => {
            flotilla_store::injected_bugs::APPLY_OUT_OF_ORDER.store(true, Ordering::Relaxed)
        }
        Some("ignore-window") => {
            flotilla_core::injected_bugs::IGNORE_WINDOW.store(true, Ordering::Relaxed)
        }
        Some("ack-before-fsync") => {
            flotilla_core::injected_bugs::ACK_BEFORE_FSYNC.store(true, Ordering::Relaxed)
        }
        Some(other) => return Err(UnknownBug(other.to_string())),
    }
    Ok(())
}
