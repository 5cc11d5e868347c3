//! Change-feed streams in progress hold the log back: retention never removes a record an open
//! stream has yet to send (within the size and age caps), so a consumer reading history is not
//! cut off half-way by followers that are already caught up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct FeedPins {
    next_id: AtomicU64,
    pins: Mutex<BTreeMap<u64, u64>>,
}

/// One stream's pin: the next LSN it will send. Released when dropped.
pub struct FeedPin {
    owner: Arc<FeedPins>,
    id: u64,
}

impl FeedPins {
    pub fn pin(self: &Arc<Self>, next_lsn: u64) -> FeedPin {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, next_lsn);
        FeedPin {
            owner: self.clone(),
            id,
        }
    }

    /// The oldest LSN an open stream still needs.
    pub fn needed_from(&self) -> Option<u64> {
        self.lock().values().copied().min()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, u64>> {
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FeedPin {
    pub fn advance(&self, next_lsn: u64) {
        self.owner.lock().insert(self.id, next_lsn);
    }
}

impl Drop for FeedPin {
    fn drop(&mut self) {
        self.owner.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_open_stream_holds_the_log_until_it_moves_or_ends() {
        let pins = Arc::new(FeedPins::default());
        assert_eq!(pins.needed_from(), None);
        let a = pins.pin(10);
        let b = pins.pin(4);
        assert_eq!(pins.needed_from(), Some(4));
        b.advance(12);
        assert_eq!(pins.needed_from(), Some(10));
        drop(a);
        assert_eq!(pins.needed_from(), Some(12));
        drop(b);
        assert_eq!(pins.needed_from(), None);
    }
}
