//! What the tokio node's shipping task and retention loop do, for the simulated leader: a host
//! of the same [`LeaderSession`] per connection, over the simulated network, with log reads,
//! the follower list and retention on the simulated leader's real files.

use super::*;
use flotilla_core::retention::{keep_from, RetentionPolicy, SegmentInfo};
use flotilla_core::{
    follower_list, LeaderCommand, LeaderContext, LeaderEvent, LeaderIdentity, LeaderSession,
    ReadFailure,
};

/// The leader's end of one connection.
pub(super) struct LeaderConn {
    pub(super) follower: usize,
    /// The follower session's number for this connection (its events carry it).
    pub(super) tag: u64,
    pub(super) session: LeaderSession,
    /// Set when the session ended: the connection closes at this time (after what was sent,
    /// a refusal say, has arrived), as a socket closes after its last message.
    pub(super) closing_at: Option<u64>,
}

impl World {
    /// A follower's connection reached the leader.
    pub(super) fn accept_conn(&mut self, conn: u64, follower: usize, tag: u64) {
        let meta = self.leader.db.meta();
        let identity = LeaderIdentity {
            cluster_id: meta.cluster_id.clone(),
            leader_id: "leader".into(),
            incarnation: LEADER_INCARNATION.into(),
            epoch: meta.position.epoch,
        };
        let session = LeaderSession::new(self.shipping.clone(), identity, self.now);
        self.conns.insert(
            conn,
            LeaderConn {
                follower,
                tag,
                session,
                closing_at: None,
            },
        );
    }

    /// A message from a follower reached the leader.
    pub(super) fn leader_receive(&mut self, conn: u64, bytes: Vec<u8>) -> anyhow::Result<()> {
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        // The oracle's note of what the follower claims durable (not part of the leader).
        if let Ok(FollowerMessage::Ack { durable, .. }) = FollowerMessage::decode(&bytes) {
            let fl = &mut self.followers[c.follower];
            fl.acked_durable = fl.acked_durable.max(durable.lsn.0);
        }
        self.leader_event(conn, LeaderEvent::Received(bytes))
    }

    /// Hands `event` to the session of `conn` and performs its commands (reads answered at
    /// once, as the log is local).
    pub(super) fn leader_event(&mut self, conn: u64, event: LeaderEvent) -> anyhow::Result<()> {
        let mut events = VecDeque::from([event]);
        while let Some(ev) = events.pop_front() {
            let meta = self.leader.db.meta().clone();
            let first_retained = Lsn(self.leader.log.first_lsn());
            let Some(c) = self.conns.get_mut(&conn) else {
                return Ok(());
            };
            let mut ctx = LeaderContext {
                tracker: &mut self.leader.tracker,
                head: meta.position,
                head_chain: meta.chain,
                first_retained,
                now_ms: self.now,
                wall_ms: self.now,
            };
            let commands = c.session.handle(&mut ctx, ev);
            for cmd in commands {
                match cmd {
                    LeaderCommand::Send(bytes) => {
                        if self.send(conn, Dir::ToFollower, bytes) == Sent::ConnectionBroke {
                            events.push_back(LeaderEvent::Closed {
                                reason: "the connection broke".into(),
                            });
                        }
                    }
                    LeaderCommand::ReadLog {
                        from,
                        max_records,
                        max_bytes,
                    } => {
                        let result = match self.leader.log.read(from.0, max_records, max_bytes) {
                            Ok(recs) => Ok(recs),
                            Err(
                                e @ (flotilla_log::LogError::Trimmed { .. }
                                | flotilla_log::LogError::Corrupt { .. }),
                            ) => Err(ReadFailure::Unavailable(e.to_string())),
                            Err(e) => Err(ReadFailure::Failed(e.to_string())),
                        };
                        events.push_back(LeaderEvent::LogRead { from, result });
                    }
                    LeaderCommand::SaveFollowers => self.save_followers()?,
                    LeaderCommand::Close { reason } => {
                        self.log(|| format!("leader ends conn {conn}: {reason}"));
                        // As TCP does: the close arrives after what was sent before it.
                        let at = self
                            .net
                            .last_delivery(conn, Dir::ToFollower)
                            .unwrap_or(self.now)
                            .max(self.now)
                            + 1;
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.closing_at = Some(at);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The connection is gone for both ends.
    pub(super) fn close_conn(&mut self, conn: u64, reason: &str) -> anyhow::Result<()> {
        if !self.conns.contains_key(&conn) {
            return Ok(());
        }
        self.leader_event(
            conn,
            LeaderEvent::Closed {
                reason: reason.to_string(),
            },
        )?;
        self.drop_conn(conn, reason);
        Ok(())
    }

    /// The leader process died: its connections are gone without its sessions hearing of it
    /// (a killed process saves nothing); each follower sees its connection drop.
    pub(super) fn abandon_conns(&mut self) {
        for conn in self.conns.keys().copied().collect::<Vec<_>>() {
            self.drop_conn(conn, "the leader crashed");
        }
    }

    fn drop_conn(&mut self, conn: u64, reason: &str) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        // What was on its way to the follower still arrives, and then the news of the close;
        // the follower session tells them from its current connection's.
        self.net.close_to_leader(conn);
        self.closed_conns.insert(conn, (c.follower, c.tag));
        let f = c.follower;
        if self.followers[f].conn == Some(conn) {
            self.followers[f].conn = None;
        }
        self.events.push_back((
            f,
            c.tag,
            FollowerEvent::ConnectionLost {
                reason: reason.to_string(),
            },
        ));
    }

    /// Every session's timers, and connections whose session ended.
    pub(super) fn tick_sessions(&mut self) -> anyhow::Result<()> {
        for conn in self.conns.keys().copied().collect::<Vec<_>>() {
            match self.conns.get(&conn).and_then(|c| c.closing_at) {
                Some(t) if t <= self.now => {
                    self.close_conn(conn, "the leader closed the session")?
                }
                Some(_) => {}
                None => self.leader_event(conn, LeaderEvent::Tick)?,
            }
        }
        Ok(())
    }

    /// A commit became durable: every session may ship.
    pub(super) fn head_moved(&mut self) -> anyhow::Result<()> {
        for conn in self.conns.keys().copied().collect::<Vec<_>>() {
            self.leader_event(conn, LeaderEvent::HeadMoved)?;
        }
        Ok(())
    }

    /// Persists the follower list as the node does (`followers.json`, replaced atomically).
    fn save_followers(&mut self) -> anyhow::Result<()> {
        let bytes = follower_list::encode(&self.leader.tracker);
        flotilla_store::atomic_file::write_atomically(&self.leader.followers_file, &bytes)?;
        Ok(())
    }

    /// The follower list a restarted leader starts with: what it saved last.
    pub(super) fn load_followers(&self) -> anyhow::Result<FollowerTracker> {
        let bytes = match std::fs::read(&self.leader.followers_file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(FollowerTracker::default())
            }
            Err(e) => return Err(e.into()),
        };
        let list = follower_list::decode(&bytes)?;
        ensure!(
            list.bad_entries.is_empty(),
            "the saved follower list has bad entries: {:?}",
            list.bad_entries
        );
        Ok(FollowerTracker::new(list.followers))
    }

    /// The node's retention loop: deletes the segments no known follower needs, within the
    /// size and age caps (drawn per seed, small enough that followers fall behind them).
    pub(super) fn run_retention(&mut self) -> anyhow::Result<()> {
        let segments: Vec<SegmentInfo> = self
            .leader
            .log
            .segments()
            .into_iter()
            .map(|s| {
                // Simulated modification times: when the segment last grew.
                let seen = self
                    .leader
                    .segment_mtimes
                    .entry(s.first_lsn)
                    .or_insert((s.last_lsn, self.now));
                if seen.0 != s.last_lsn {
                    *seen = (s.last_lsn, self.now);
                }
                SegmentInfo {
                    first_lsn: s.first_lsn,
                    last_lsn: s.last_lsn,
                    bytes: s.bytes,
                    modified_ms: seen.1,
                }
            })
            .collect();
        let keep = keep_from(
            &segments,
            self.leader.tracker.needed_from(),
            self.retention,
            self.now,
        );
        let removed = self.leader.log.remove_before(keep)?;
        if removed > 0 {
            self.report.segments_removed += removed as u64;
            self.log(|| format!("retention removes {removed} segment(s) before lsn {keep}"));
        }
        Ok(())
    }
}

/// Retention caps for a seed: often loose, sometimes tight enough to drop what a follower
/// still needs (it then bootstraps).
pub(super) fn draw_retention(rng: &mut ChaCha8Rng) -> RetentionPolicy {
    if rng.random_bool(0.5) {
        RetentionPolicy {
            max_bytes: 1 << 40,
            max_age_ms: u64::MAX,
        }
    } else {
        RetentionPolicy {
            max_bytes: rng.random_range(300_000..3_000_000),
            max_age_ms: rng.random_range(5_000..60_000),
        }
    }
}

/// Shipping limits for a seed: small, so that windows fill and batches split.
pub(super) fn draw_shipping(rng: &mut ChaCha8Rng) -> flotilla_core::ShippingConfig {
    flotilla_core::ShippingConfig {
        batch_records: rng.random_range(1..8),
        batch_bytes: rng.random_range(1_000..200_000),
        window_records: rng.random_range(1..24),
        window_bytes: rng.random_range(20_000..1_000_000),
        ..Default::default()
    }
}
