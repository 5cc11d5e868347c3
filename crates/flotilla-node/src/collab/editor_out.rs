//! What the document's task sends one editor, bounded by bytes as well as by messages: an
//! editor that does not read (a stalled or hostile client) holds at most
//! [`MAX_QUEUED_BYTES`] of the server's memory before it is dropped.

use super::Outgoing;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Messages waiting to be written to one editor, at most.
pub const OUTGOING_QUEUE: usize = 65_536;
/// Bytes of edits and presence waiting to be written to one editor, at most. A whole
/// document (the answer to an editor's sync step 1, up to the document's own limit) is
/// queued on top of it: an editor receiving a large document is not dropped for the
/// keystrokes others type meanwhile.
pub const MAX_QUEUED_BYTES: usize = 4 << 20;

#[derive(Debug, Clone)]
pub struct EditorOut {
    tx: mpsc::Sender<Outgoing>,
    queued: Arc<Queued>,
}

/// Bytes queued in all, and those of whole documents among them.
#[derive(Debug, Default)]
struct Queued {
    all: AtomicUsize,
    whole: AtomicUsize,
}

/// The connection's end: messages to write, and the count to lower as each is written.
pub struct EditorIn {
    pub rx: mpsc::Receiver<Outgoing>,
    queued: Arc<Queued>,
}

impl EditorIn {
    /// `bytes` were written to the socket (`whole`: a whole document's).
    pub fn written(&self, bytes: usize, whole: bool) {
        self.queued.all.fetch_sub(bytes, Ordering::Relaxed);
        if whole {
            self.queued.whole.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

pub fn editor_channel() -> (EditorOut, EditorIn) {
    let (tx, rx) = mpsc::channel(OUTGOING_QUEUE);
    let queued = Arc::new(Queued::default());
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
        self.queue(bytes, false)
    }

    /// Queues a whole document (beyond [`MAX_QUEUED_BYTES`]); `false` when the editor is
    /// already too far behind.
    pub fn push_whole(&self, bytes: Vec<u8>) -> bool {
        self.queue(bytes, true)
    }

    fn queue(&self, bytes: Vec<u8>, whole: bool) -> bool {
        let len = bytes.len();
        let all = self.queued.all.load(Ordering::Relaxed);
        let others = all.saturating_sub(self.queued.whole.load(Ordering::Relaxed));
        let over = if whole {
            others > MAX_QUEUED_BYTES
        } else {
            others > 0 && others + len > MAX_QUEUED_BYTES
        };
        if over {
            return false;
        }
        self.queued.all.fetch_add(len, Ordering::Relaxed);
        if whole {
            self.queued.whole.fetch_add(len, Ordering::Relaxed);
        }
        if self.tx.try_send(Outgoing::Binary { bytes, whole }).is_err() {
            self.queued.all.fetch_sub(len, Ordering::Relaxed);
            if whole {
                self.queued.whole.fetch_sub(len, Ordering::Relaxed);
            }
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
