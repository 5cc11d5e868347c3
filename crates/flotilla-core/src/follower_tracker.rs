//! The leader's view of its followers.

use flotilla_types::{LogKind, Lsn, Position};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Streaming,
    Disconnected,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Streaming => "streaming",
            SessionState::Disconnected => "disconnected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerProgress {
    pub id: String,
    pub url: String,
    pub log_kind: LogKind,
    pub state: SessionState,
    pub received: Position,
    pub durable: Position,
    pub applied: Position,
    /// When the follower last acknowledged anything (leader's clock).
    pub last_ack_ms: u64,
}

/// Known followers by id. A follower stays known while disconnected (the log is kept for it)
/// until an operator removes it.
#[derive(Debug, Default, Clone)]
pub struct FollowerTracker {
    followers: BTreeMap<String, FollowerProgress>,
}

impl FollowerTracker {
    pub fn new(known: impl IntoIterator<Item = FollowerProgress>) -> FollowerTracker {
        FollowerTracker {
            followers: known
                .into_iter()
                .map(|mut f| {
                    f.state = SessionState::Disconnected;
                    (f.id.clone(), f)
                })
                .collect(),
        }
    }

    pub fn session_opened(
        &mut self,
        id: &str,
        url: &str,
        log_kind: LogKind,
        position: Position,
        now_ms: u64,
    ) {
        self.followers.insert(
            id.to_string(),
            FollowerProgress {
                id: id.to_string(),
                url: url.to_string(),
                log_kind,
                state: SessionState::Streaming,
                received: position,
                durable: position,
                applied: position,
                last_ack_ms: now_ms,
            },
        );
    }

    /// Progress only moves forward: a late or duplicated ack never moves a follower back.
    pub fn acked(
        &mut self,
        id: &str,
        received: Position,
        durable: Position,
        applied: Position,
        now_ms: u64,
    ) {
        if let Some(f) = self.followers.get_mut(id) {
            f.received = f.received.max(received);
            f.durable = f.durable.max(durable);
            f.applied = f.applied.max(applied);
            f.last_ack_ms = now_ms;
        }
    }

    pub fn session_closed(&mut self, id: &str) {
        if let Some(f) = self.followers.get_mut(id) {
            f.state = SessionState::Disconnected;
        }
    }

    /// Forgets a follower: it no longer holds the log back. Returns whether it was known.
    pub fn remove(&mut self, id: &str) -> bool {
        self.followers.remove(id).is_some()
    }

    pub fn get(&self, id: &str) -> Option<&FollowerProgress> {
        self.followers.get(id)
    }

    pub fn all(&self) -> impl Iterator<Item = &FollowerProgress> {
        self.followers.values()
    }

    /// The oldest LSN some known follower still needs (`None`: no followers).
    pub fn needed_from(&self) -> Option<u64> {
        self.followers.values().map(|f| f.durable.lsn.0 + 1).min()
    }

    /// Transactions the follower has yet to apply.
    pub fn lag_transactions(f: &FollowerProgress, head: Lsn) -> u64 {
        head.0.saturating_sub(f.applied.lsn.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_monotonic_and_retention_follows_the_slowest() {
        let mut t = FollowerTracker::default();
        assert_eq!(t.needed_from(), None);
        t.session_opened("a", "u", LogKind::Physical, Position::new(1, 5), 0);
        t.session_opened("b", "u", LogKind::Physical, Position::new(1, 9), 0);
        assert_eq!(t.needed_from(), Some(6));
        t.acked(
            "a",
            Position::new(1, 20),
            Position::new(1, 20),
            Position::new(1, 20),
            1,
        );
        t.acked(
            "a",
            Position::new(1, 3),
            Position::new(1, 3),
            Position::new(1, 3),
            2,
        );
        assert_eq!(t.get("a").unwrap().applied, Position::new(1, 20));
        assert_eq!(t.needed_from(), Some(10));
        t.session_closed("b");
        assert_eq!(
            t.needed_from(),
            Some(10),
            "a disconnected follower still holds the log"
        );
        assert!(t.remove("b"));
        assert_eq!(t.needed_from(), Some(21));
        assert_eq!(
            FollowerTracker::lag_transactions(t.get("a").unwrap(), Lsn(25)),
            5
        );
    }
}
