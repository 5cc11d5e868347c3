//! The flush thread: makes what the driver applied durable, beside the next apply.
//!
//! Applies commit without an fsync (readers see a batch as soon as it is applied);
//! this thread flushes the database's WAL ([`flotilla_store::flush_wal`]) and reports
//! `Flushed`, which the session turns into a `durable` position in its acks. A failed flush
//! stops the node: after a failed fsync the disk's state is unknown, and retrying could report
//! as durable what the kernel dropped.

use super::transport::Tagged;
use crate::fatal::{Fatal, FatalSender};
use flotilla_core::FollowerEvent;
use std::path::PathBuf;
use std::sync::mpsc;

/// Starts the flush thread for the database at `db_path`; each `seq` sent flushes once and is
/// answered on `events` (tagged `tag`) as `Flushed { seq }`. It ends when the sender is dropped.
pub fn spawn(
    db_path: PathBuf,
    events: tokio::sync::mpsc::Sender<Tagged>,
    tag: u64,
    fatal: FatalSender,
) -> mpsc::Sender<u64> {
    let (tx, rx) = mpsc::channel::<u64>();
    std::thread::Builder::new()
        .name("flotilla-flush".into())
        .spawn(move || {
            while let Ok(seq) = rx.recv() {
                if let Err(e) = flotilla_store::flush_wal(&db_path) {
                    fatal.report(Fatal::Flush(e.to_string()));
                    return;
                }
                // Waits for room (the driver never waits on this thread).
                if events
                    .blocking_send((tag, FollowerEvent::Flushed { seq }))
                    .is_err()
                {
                    return;
                }
            }
        })
        .expect("spawn flush thread");
    tx
}
