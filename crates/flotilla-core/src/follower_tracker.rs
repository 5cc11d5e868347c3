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
    /// When its applied position last moved (leader's clock): a follower that keeps
    /// reconnecting without applying anything is stalled, not streaming.
    pub applied_moved_ms: u64,
}

/// One replication session of a follower; a newer session of the same follower id replaces
/// it, and removing the follower ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// Why a progress report was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckRefused {
    #[error("the session is no longer the follower's current one (replaced or removed)")]
    NotCurrent,
    #[error("the follower reports {reported} but the leader has sent it only up to lsn {sent}")]
    BeyondSent { reported: Position, sent: Lsn },
}

/// Known followers by id. A follower stays known while disconnected (the log is kept for it)
/// until an operator removes it.
#[derive(Debug, Default, Clone)]
pub struct FollowerTracker {
    followers: BTreeMap<String, FollowerProgress>,
    /// The current session of each connected follower.
    sessions: BTreeMap<String, SessionId>,
    next_session: u64,
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
            sessions: BTreeMap::new(),
            next_session: 0,
        }
    }

    /// A session opened; it replaces any earlier session of the same follower id.
    pub fn session_opened(
        &mut self,
        id: &str,
        url: &str,
        log_kind: LogKind,
        position: Position,
        now_ms: u64,
    ) -> SessionId {
        self.next_session += 1;
        let session = SessionId(self.next_session);
        self.sessions.insert(id.to_string(), session);
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
                applied_moved_ms: self
                    .followers
                    .get(id)
                    .filter(|f| f.applied >= position)
                    .map_or(now_ms, |f| f.applied_moved_ms),
            },
        );
        session
    }

    /// Whether a session of follower `id` is streaming now.
    pub fn has_session(&self, id: &str) -> bool {
        self.sessions.contains_key(id)
    }

    /// Whether `session` is still the follower's current one (not replaced, not removed).
    pub fn is_current(&self, id: &str, session: SessionId) -> bool {
        self.sessions.get(id) == Some(&session)
    }

    /// A progress report of `session`, whose leader has sent it records up to `sent`. Taken
    /// only from the follower's current session and never beyond what was sent (a forged
    /// report would let retention drop log the follower still needs). Progress only moves
    /// forward: a late or duplicated ack never moves a follower back.
    pub fn acked(
        &mut self,
        id: &str,
        session: SessionId,
        sent: Lsn,
        progress: [Position; 3],
        now_ms: u64,
    ) -> Result<(), AckRefused> {
        if !self.is_current(id, session) {
            return Err(AckRefused::NotCurrent);
        }
        if let Some(beyond) = progress.iter().find(|p| p.lsn > sent) {
            return Err(AckRefused::BeyondSent {
                reported: *beyond,
                sent,
            });
        }
        let [received, durable, applied] = progress;
        if let Some(f) = self.followers.get_mut(id) {
            f.received = f.received.max(received);
            f.durable = f.durable.max(durable);
            if applied > f.applied {
                f.applied = applied;
                f.applied_moved_ms = now_ms;
            }
            f.last_ack_ms = now_ms;
        }
        Ok(())
    }

    /// `session` ended; the follower shows as disconnected unless a newer session replaced it.
    pub fn session_closed(&mut self, id: &str, session: SessionId) {
        if !self.is_current(id, session) {
            return;
        }
        self.sessions.remove(id);
        if let Some(f) = self.followers.get_mut(id) {
            f.state = SessionState::Disconnected;
        }
    }

    /// Forgets a follower: it no longer holds the log back, and its session (if any) is no
    /// longer current, so it ends. Returns whether it was known.
    pub fn remove(&mut self, id: &str) -> bool {
        self.sessions.remove(id);
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

    /// The newest position that at least `copies` followers hold durably as complete copies:
    /// physical followers only (a logical follower may filter; it cannot take over). Position
    /// zero when fewer than `copies` physical followers are known; `copies == 0` asks for
    /// nothing, so every position qualifies.
    ///
    /// A follower that disconnected still counts with what it reported durable: that copy is on
    /// its disk whether or not it is connected now.
    pub fn durable_on(&self, copies: usize) -> Position {
        if copies == 0 {
            return Position {
                epoch: flotilla_types::Epoch(u64::MAX),
                lsn: Lsn(u64::MAX),
            };
        }
        let mut durable: Vec<Position> = self
            .followers
            .values()
            .filter(|f| f.log_kind == LogKind::Physical)
            .map(|f| f.durable)
            .collect();
        durable.sort_unstable_by(|a, b| b.cmp(a));
        durable.get(copies - 1).copied().unwrap_or(Position::ZERO)
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
        let a = t.session_opened("a", "u", LogKind::Physical, Position::new(1, 5), 0);
        let b = t.session_opened("b", "u", LogKind::Physical, Position::new(1, 9), 0);
        assert_eq!(t.needed_from(), Some(6));
        let at = |l| [Position::new(1, l); 3];
        t.acked("a", a, Lsn(20), at(20), 1).unwrap();
        t.acked("a", a, Lsn(20), at(3), 2).unwrap();
        assert_eq!(t.get("a").unwrap().applied, Position::new(1, 20));
        assert_eq!(t.needed_from(), Some(10));
        t.session_closed("b", b);
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

    /// A forged report (`1/1000000000000` from a rogue session) once made retention drop log
    /// a follower still needed.
    #[test]
    fn reports_beyond_what_was_sent_or_from_old_sessions_are_refused() {
        let mut t = FollowerTracker::default();
        let s1 = t.session_opened("a", "u", LogKind::Physical, Position::new(1, 5), 0);
        let forged = [Position::new(1, 1_000_000_000_000); 3];
        assert_eq!(
            t.acked("a", s1, Lsn(9), forged, 1),
            Err(AckRefused::BeyondSent {
                reported: forged[0],
                sent: Lsn(9)
            })
        );
        let mut partly = [Position::new(1, 9); 3];
        partly[1] = Position::new(1, 10);
        assert!(t.acked("a", s1, Lsn(9), partly, 1).is_err());
        assert_eq!(t.get("a").unwrap().durable, Position::new(1, 5));
        // A second session with the same id replaces the first: the first's reports and its
        // closing no longer count.
        let s2 = t.session_opened("a", "u", LogKind::Physical, Position::new(1, 5), 2);
        assert_eq!(
            t.acked("a", s1, Lsn(9), [Position::new(1, 9); 3], 3),
            Err(AckRefused::NotCurrent)
        );
        t.session_closed("a", s1);
        assert_eq!(t.get("a").unwrap().state, SessionState::Streaming);
        t.acked("a", s2, Lsn(9), [Position::new(1, 9); 3], 3)
            .unwrap();
        assert_eq!(t.needed_from(), Some(10));
        // Removing the follower ends its session.
        assert!(t.remove("a"));
        assert!(!t.is_current("a", s2));
        assert_eq!(
            t.acked("a", s2, Lsn(9), [Position::new(1, 9); 3], 4),
            Err(AckRefused::NotCurrent)
        );
        assert_eq!(t.needed_from(), None);
    }
    #[test]
    fn durable_on_counts_physical_copies_only() {
        let mut t = FollowerTracker::default();
        assert_eq!(t.durable_on(1), Position::ZERO);
        assert!(t.durable_on(0) >= Position::new(9, 9));
        let a = t.session_opened("a", "u", LogKind::Physical, Position::new(1, 5), 0);
        let b = t.session_opened("b", "u", LogKind::Physical, Position::new(1, 2), 0);
        let l = t.session_opened("l", "u", LogKind::Logical, Position::new(1, 50), 0);
        t.acked("l", l, Lsn(90), [Position::new(1, 90); 3], 1)
            .unwrap();
        assert_eq!(t.durable_on(1), Position::new(1, 5));
        assert_eq!(t.durable_on(2), Position::new(1, 2));
        assert_eq!(
            t.durable_on(3),
            Position::ZERO,
            "the logical follower is no copy"
        );
        // Received and applied are not durable.
        let mut p = [Position::new(1, 9); 3];
        p[1] = Position::new(1, 7);
        t.acked("b", b, Lsn(9), p, 2).unwrap();
        assert_eq!(t.durable_on(1), Position::new(1, 7));
        assert_eq!(t.durable_on(2), Position::new(1, 5));
        // A disconnected follower's durable copy still counts; a removed one's does not.
        t.session_closed("a", a);
        assert_eq!(t.durable_on(2), Position::new(1, 5));
        t.remove("a");
        assert_eq!(t.durable_on(2), Position::ZERO);
    }
}
