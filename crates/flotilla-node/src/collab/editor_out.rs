//! What the document's task sends one editor, bounded by bytes as well as by messages: an
//! editor that does not read (a stalled or hostile client) holds at most
//! [`MAX_QUEUED_BYTES`] of the server's memory before it is dropped.

use super::Outgoing;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Messages waiting to be written to one editor, at most.
pub const OUTGOING_QUEUE: usize = 8192;
/// Bytes waiting to be written to one editor, at most (one larger message still goes when
/// nothing else waits: a big document's first sync).
pub const MAX_QUEUED_BYTES: usize = 4 << 20;

#[derive(Debug, Clone)]
pub struct EditorOut {
    tx: mpsc::Sender<Outgoing>,
    queued: Arc<AtomicUsize>,
}

/// The connection's end: messages to write, and the count to lower as each is written.
pub struct EditorIn {
    pub rx: mpsc::Receiver<Outgoing>,
    queued: Arc<AtomicUsize>,
}

impl EditorIn {
    /// `bytes` were written to the socket.
    pub fn written(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::Relaxed);
    }
}

pub fn editor_channel() -> (EditorOut, EditorIn) {
    let (tx, rx) = mpsc::channel(OUTGOING_QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    (
        EditorOut {
            tx,
            queued: queued.clone(),
        },
        EditorIn { rx, queued },
    )
}

impl EditorOut {
    /// Queues a message; `false` when the editor is too far behind to take it.
    pub fn push(&self, bytes: Vec<u8>) -> bool {
        let len = bytes.len();
        let waiting = self.queued.load(Ordering::Relaxed);
        if waiting > 0 && waiting + len > MAX_QUEUED_BYTES {
            return false;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        if self.tx.try_send(Outgoing::Binary(bytes)).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Ends the connection with this close code and reason.
    pub fn close(&self, code: u16, reason: &str) {
        let _ = self.tx.try_send(Outgoing::Close {
            code,
            reason: reason.to_string(),
        });
    }
}
