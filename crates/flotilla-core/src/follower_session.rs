//! A follower's side of replication, as a state machine.
//!
//! Ordering contracts for the host:
//! - `Apply` batches are performed one at a time, in order; the host reports each with
//!   `Applied` or `ApplyFailed` before the session emits the next.
//! - An `Ack` is only emitted after the apply it reports completed (a physical follower's
//!   applied state is its durable state: it commits with SQLite's `synchronous=FULL`).
//! - `Hello` is only sent when no apply is in flight, so it states exactly what the database
//!   holds.

use crate::Backoff;
use flotilla_types::{Chain, LogKind, LogRecord, Position};
use flotilla_wire::{FollowerMessage, LeaderMessage, RefusalCode};
use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub struct FollowerConfig {
    pub follower_id: String,
    pub follower_url: String,
    pub log_kind: LogKind,
    pub backoff: Backoff,
    /// The leader is considered gone after this long without any message (it sends heartbeats).
    pub leader_timeout_ms: u64,
    pub max_batch_records: usize,
    pub max_batch_bytes: usize,
    /// How long to wait before retrying an apply that failed for lack of disk space.
    pub disk_full_retry_ms: u64,
}

impl FollowerConfig {
    pub fn new(follower_id: &str, follower_url: &str) -> FollowerConfig {
        FollowerConfig {
            follower_id: follower_id.to_string(),
            follower_url: follower_url.to_string(),
            log_kind: LogKind::Physical,
            backoff: Backoff::default(),
            leader_timeout_ms: 10_000,
            max_batch_records: 2_000,
            max_batch_bytes: 64 << 20,
            disk_full_retry_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowerEvent {
    Tick,
    Connected,
    ConnectionLost {
        reason: String,
    },
    Received(LeaderMessage),
    Applied {
        position: Position,
        chain: Chain,
    },
    ApplyFailed {
        reason: String,
        disk_full: bool,
    },
    BootstrapFinished {
        position: Position,
        chain: Chain,
        cluster_id: String,
    },
    BootstrapFailed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowerCommand {
    /// Open a replication session to the leader; report `Connected` or `ConnectionLost`.
    Connect,
    Send(FollowerMessage),
    /// Apply these contiguous records in one local transaction.
    Apply(Vec<LogRecord>),
    /// Close the session (no event is expected back).
    Disconnect,
    /// Replace the local database with a snapshot from the leader; report `BootstrapFinished`
    /// or `BootstrapFailed`.
    Bootstrap,
    /// Persist the incarnation of the leader this follower follows from now on (adopted at the
    /// first welcome after a bootstrap); no event is expected back.
    RememberLeader {
        incarnation: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowerPhase {
    Connecting,
    WaitingToRetry,
    Handshaking,
    Streaming,
    Bootstrapping,
    /// Apply paused because the disk is full; retried periodically.
    DiskFull,
    /// An operator removed this follower from the leader: it keeps what it has and does not
    /// reconnect until it is restarted.
    Removed,
}

impl FollowerPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            FollowerPhase::Connecting => "connecting",
            FollowerPhase::WaitingToRetry => "waiting_to_retry",
            FollowerPhase::Handshaking => "handshaking",
            FollowerPhase::Streaming => "streaming",
            FollowerPhase::Bootstrapping => "bootstrapping",
            FollowerPhase::DiskFull => "disk_full",
            FollowerPhase::Removed => "removed",
        }
    }
}

#[derive(Debug)]
pub struct FollowerSession {
    config: FollowerConfig,
    phase: FollowerPhase,
    /// What the local database holds; `None` before the first bootstrap.
    local: Option<(Position, Chain)>,
    cluster_id: Option<String>,
    /// The incarnation of the leader whose history the local database continues; a welcome
    /// from another is refused. `None`: adopt the next one (after a bootstrap).
    leader_incarnation: Option<String>,
    /// Last record received (buffered or applied).
    received: Position,
    pending: VecDeque<LogRecord>,
    applying: bool,
    connected: bool,
    hello_pending: bool,
    attempt: u32,
    /// Applies that failed in a row (not for a full disk): the reconnects they cause back off
    /// from one to the next, and their error stays shown until an apply succeeds.
    apply_failures: u32,
    retry_at_ms: u64,
    last_heard_ms: u64,
    leader_head: Position,
    last_error: Option<String>,
    now_ms: u64,
    jitter: u16,
}

impl FollowerSession {
    /// `local` is the position and chain read from the local database (`None`: no database),
    /// `cluster_id` the one the node adopted earlier, if any.
    pub fn new(
        config: FollowerConfig,
        local: Option<(Position, Chain)>,
        cluster_id: Option<String>,
    ) -> FollowerSession {
        let received = local.map(|l| l.0).unwrap_or_default();
        FollowerSession {
            config,
            phase: FollowerPhase::Connecting,
            local,
            cluster_id,
            leader_incarnation: None,
            received,
            pending: VecDeque::new(),
            applying: false,
            connected: false,
            hello_pending: false,
            attempt: 0,
            apply_failures: 0,
            retry_at_ms: 0,
            last_heard_ms: 0,
            leader_head: received,
            last_error: None,
            now_ms: 0,
            jitter: 1000,
        }
    }

    /// The incarnation of the leader the local database follows (as persisted by the host).
    pub fn with_leader_incarnation(mut self, incarnation: Option<String>) -> FollowerSession {
        self.leader_incarnation = incarnation;
        self
    }

    pub fn phase(&self) -> FollowerPhase {
        self.phase
    }
    pub fn applied(&self) -> Option<Position> {
        self.local.map(|l| l.0)
    }
    pub fn received(&self) -> Position {
        self.received
    }
    pub fn leader_head(&self) -> Position {
        self.leader_head
    }
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// The first commands after start.
    pub fn start(&mut self, now_ms: u64) -> Vec<FollowerCommand> {
        self.now_ms = now_ms;
        if self.local.is_none() {
            self.phase = FollowerPhase::Bootstrapping;
            vec![FollowerCommand::Bootstrap]
        } else {
            self.phase = FollowerPhase::Connecting;
            vec![FollowerCommand::Connect]
        }
    }

    /// Handles one event at time `now_ms`; `jitter` (0..=1000) randomises the next backoff.
    pub fn handle(
        &mut self,
        now_ms: u64,
        jitter: u16,
        event: FollowerEvent,
    ) -> Vec<FollowerCommand> {
        self.now_ms = self.now_ms.max(now_ms);
        self.jitter = jitter;
        let mut out = Vec::new();
        match event {
            FollowerEvent::Tick => self.on_tick(&mut out),
            FollowerEvent::Connected => {
                if self.phase == FollowerPhase::Connecting {
                    self.connected = true;
                    self.phase = FollowerPhase::Handshaking;
                    self.last_heard_ms = self.now_ms;
                    self.hello_pending = true;
                    self.maybe_hello(&mut out);
                }
            }
            FollowerEvent::ConnectionLost { reason } => {
                if self.connected || self.phase == FollowerPhase::Connecting {
                    self.connected = false;
                    self.lose_session(reason, false);
                }
            }
            FollowerEvent::Received(msg) => {
                if self.connected {
                    self.last_heard_ms = self.now_ms;
                    self.on_message(msg, &mut out);
                }
            }
            FollowerEvent::Applied { position, chain } => {
                self.applying = false;
                self.local = Some((position, chain));
                if self.apply_failures > 0 {
                    self.apply_failures = 0;
                    self.last_error = None;
                }
                if self.phase == FollowerPhase::DiskFull {
                    self.phase = FollowerPhase::Streaming;
                    self.last_error = None;
                }
                if self.connected && self.phase == FollowerPhase::Streaming {
                    out.push(self.ack());
                }
                self.maybe_hello(&mut out);
                self.maybe_apply(&mut out);
            }
            FollowerEvent::ApplyFailed { reason, disk_full } => {
                self.applying = false;
                if disk_full {
                    self.last_error = Some(format!(
                        "replication paused: the disk is full ({reason}); it resumes when space returns"
                    ));
                    if matches!(
                        self.phase,
                        FollowerPhase::Streaming | FollowerPhase::DiskFull
                    ) {
                        self.phase = FollowerPhase::DiskFull;
                        self.retry_at_ms = self.now_ms + self.config.disk_full_retry_ms;
                        // The failed batch is retried as it was: put nothing back, it is still
                        // queued.
                    } else {
                        // The session was lost while the batch was applying, and its records
                        // with it: they come again after the next handshake (which may meet the
                        // full disk again). Pausing here would wait for a batch that is gone.
                        self.maybe_hello(&mut out);
                    }
                } else {
                    self.apply_failures = self.apply_failures.saturating_add(1);
                    self.last_error = Some(format!("apply failed: {reason}"));
                    // Whatever was buffered is suspect: drop it, reconnect, and let the leader
                    // re-check the history from what the database really holds.
                    self.pending.clear();
                    if self.connected {
                        out.push(FollowerCommand::Disconnect);
                        self.connected = false;
                    }
                    self.lose_session(reason, true);
                }
            }
            FollowerEvent::BootstrapFinished {
                position,
                chain,
                cluster_id,
            } => {
                self.local = Some((position, chain));
                self.received = position;
                self.leader_head = self.leader_head.max(position);
                self.cluster_id = Some(cluster_id);
                // The database is now a copy of whichever leader served the snapshot: its
                // incarnation is adopted at the next welcome.
                self.leader_incarnation = None;
                self.pending.clear();
                self.last_error = None;
                self.attempt = 0;
                self.phase = FollowerPhase::Connecting;
                out.push(FollowerCommand::Connect);
            }
            FollowerEvent::BootstrapFailed { reason } => {
                self.last_error = Some(format!("bootstrap failed: {reason}"));
                self.schedule_retry();
            }
        }
        out
    }

    fn on_tick(&mut self, out: &mut Vec<FollowerCommand>) {
        match self.phase {
            FollowerPhase::WaitingToRetry if self.now_ms >= self.retry_at_ms => {
                if self.local.is_none() {
                    self.phase = FollowerPhase::Bootstrapping;
                    out.push(FollowerCommand::Bootstrap);
                } else {
                    self.phase = FollowerPhase::Connecting;
                    out.push(FollowerCommand::Connect);
                }
            }
            FollowerPhase::DiskFull if self.now_ms >= self.retry_at_ms && !self.applying => {
                self.maybe_apply_anyway(out);
            }
            FollowerPhase::Streaming | FollowerPhase::Handshaking
                if self.connected
                    && self.now_ms.saturating_sub(self.last_heard_ms)
                        > self.config.leader_timeout_ms =>
            {
                out.push(FollowerCommand::Disconnect);
                self.connected = false;
                self.lose_session(
                    format!(
                        "no message from the leader for {} ms",
                        self.config.leader_timeout_ms
                    ),
                    false,
                );
            }
            _ => {}
        }
    }

    fn on_message(&mut self, msg: LeaderMessage, out: &mut Vec<FollowerCommand>) {
        match msg {
            LeaderMessage::Welcome {
                cluster_id,
                leader_id,
                incarnation,
                start_after,
                head,
                ..
            } => {
                let local = self.local.map(|l| l.0.lsn);
                if self.phase != FollowerPhase::Handshaking || Some(start_after) != local {
                    return self.protocol_error("unexpected welcome", out);
                }
                match &self.leader_incarnation {
                    Some(mine) if *mine != incarnation => {
                        // Same cluster, a history that still links, yet another leader: a copy
                        // of some node's data directory started as a leader. Its writes would
                        // fork this replica away from the leader it follows.
                        out.push(FollowerCommand::Disconnect);
                        self.connected = false;
                        self.pending.clear();
                        self.last_error = Some(format!(
                            "refused leader {leader_id}: it is another leader incarnation \
                             ({incarnation}) than the one this follower follows ({mine}) — a \
                             copy of a data directory started as a leader? To follow it, start \
                             this follower with an empty data directory"
                        ));
                        self.schedule_retry();
                        return;
                    }
                    Some(_) => {}
                    None => {
                        self.leader_incarnation = Some(incarnation.clone());
                        out.push(FollowerCommand::RememberLeader { incarnation });
                    }
                }
                self.cluster_id = Some(cluster_id);
                self.phase = FollowerPhase::Streaming;
                self.leader_head = self.leader_head.max(head);
                // A welcome ends the reconnect backoff, unless applying is what keeps failing:
                // then the next failure waits longer, and its reason stays shown meanwhile.
                self.attempt = self.apply_failures;
                if self.apply_failures == 0 {
                    self.last_error = None;
                }
            }
            LeaderMessage::Records(records) => {
                if self.phase != FollowerPhase::Streaming && self.phase != FollowerPhase::DiskFull {
                    return self.protocol_error("records before welcome", out);
                }
                for r in records {
                    if r.lsn != self.received.lsn.next() {
                        return self.protocol_error(
                            &format!("record {} does not follow {}", r.position(), self.received),
                            out,
                        );
                    }
                    self.received = r.position();
                    self.leader_head = self.leader_head.max(r.position());
                    self.pending.push_back(r);
                }
                if self.phase == FollowerPhase::Streaming {
                    self.maybe_apply(out);
                }
            }
            LeaderMessage::Heartbeat { head, .. } => {
                // The leader welcomes before anything else: a heartbeat first means the welcome
                // was lost, and heartbeats alone would keep the session alive forever.
                if self.phase == FollowerPhase::Handshaking {
                    return self.protocol_error("heartbeat before welcome", out);
                }
                // A heartbeat states the last record the leader sent on this session. If that is
                // beyond what arrived, records were lost: only a new session recovers them.
                if self.phase == FollowerPhase::Streaming && head.lsn > self.received.lsn {
                    return self.protocol_error(
                        &format!(
                            "the leader sent up to {head} but only {} arrived",
                            self.received
                        ),
                        out,
                    );
                }
                self.leader_head = self.leader_head.max(head);
                if self.phase == FollowerPhase::Streaming && !self.applying {
                    out.push(self.ack());
                }
            }
            LeaderMessage::Refuse { code, message } => {
                out.push(FollowerCommand::Disconnect);
                self.connected = false;
                match code {
                    RefusalCode::NeedSnapshot | RefusalCode::Diverged => {
                        self.last_error = Some(format!("{}: {message}", code.as_str()));
                        self.pending.clear();
                        self.phase = FollowerPhase::Bootstrapping;
                        out.push(FollowerCommand::Bootstrap);
                    }
                    RefusalCode::Removed => {
                        self.pending.clear();
                        self.received = self.local.map(|l| l.0).unwrap_or_default();
                        self.phase = FollowerPhase::Removed;
                        self.last_error = Some(format!(
                            "removed: {message}; this follower keeps its data and serves reads, \
                             but replicates again only after a restart"
                        ));
                    }
                    _ => self.lose_session(format!("{}: {message}", code.as_str()), true),
                }
            }
        }
    }

    fn protocol_error(&mut self, what: &str, out: &mut Vec<FollowerCommand>) {
        out.push(FollowerCommand::Disconnect);
        self.connected = false;
        self.pending.clear();
        self.lose_session(format!("protocol error: {what}"), true);
    }

    fn lose_session(&mut self, reason: String, keep_error: bool) {
        if !keep_error || self.last_error.is_none() {
            self.last_error = Some(reason);
        }
        // Records buffered but not applied are fetched again after the next handshake.
        self.pending.clear();
        self.received = self.local.map(|l| l.0).unwrap_or_default();
        self.hello_pending = false;
        if self.phase != FollowerPhase::Bootstrapping {
            self.schedule_retry();
        }
    }

    fn schedule_retry(&mut self) {
        self.attempt += 1;
        self.phase = FollowerPhase::WaitingToRetry;
        self.retry_at_ms = self.now_ms + self.config.backoff.delay_ms(self.attempt, self.jitter);
    }

    fn maybe_hello(&mut self, out: &mut Vec<FollowerCommand>) {
        if !self.hello_pending || self.applying || !self.connected {
            return;
        }
        self.hello_pending = false;
        let (position, chain) = self.local.unwrap_or_default();
        self.received = position;
        out.push(FollowerCommand::Send(FollowerMessage::Hello {
            cluster_id: self.cluster_id.clone(),
            follower_id: self.config.follower_id.clone(),
            follower_url: self.config.follower_url.clone(),
            log_kind: self.config.log_kind,
            position,
            chain,
        }));
    }

    fn ack(&self) -> FollowerCommand {
        let applied = self.local.map(|l| l.0).unwrap_or_default();
        FollowerCommand::Send(FollowerMessage::Ack {
            received: self.received,
            durable: applied,
            applied,
            now_ms: self.now_ms,
        })
    }

    fn maybe_apply(&mut self, out: &mut Vec<FollowerCommand>) {
        if self.phase == FollowerPhase::Streaming {
            self.maybe_apply_anyway(out);
        }
    }

    fn maybe_apply_anyway(&mut self, out: &mut Vec<FollowerCommand>) {
        if self.applying || self.pending.is_empty() {
            return;
        }
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        // Batches are taken, not drained, until applied: a failed batch (disk full) is retried.
        for r in self.pending.iter() {
            if batch.len() >= self.config.max_batch_records
                || (bytes >= self.config.max_batch_bytes && !batch.is_empty())
            {
                break;
            }
            bytes += r.approx_bytes();
            batch.push(r.clone());
        }
        self.applying = true;
        #[cfg(feature = "sim-bugs")]
        if crate::injected_bugs::ACK_BEFORE_FSYNC.load(std::sync::atomic::Ordering::Relaxed) {
            if let (Some(last), true) = (batch.last(), self.connected) {
                let claimed = last.position();
                out.push(FollowerCommand::Send(FollowerMessage::Ack {
                    received: self.received.max(claimed),
                    durable: claimed,
                    applied: claimed,
                    now_ms: self.now_ms,
                }));
            }
        }
        out.push(FollowerCommand::Apply(batch));
    }

    /// Called by the host when an `Apply` batch of `n` records is done: drops them from the
    /// queue. Kept separate from `Applied` so that a disk-full retry re-sends the same batch.
    pub fn batch_done(&mut self, n: usize) {
        for _ in 0..n.min(self.pending.len()) {
            self.pending.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::{ContentDigest, Epoch, Lsn, NodeId, PagePayload};

    fn rec(lsn: u64, prev: Chain) -> LogRecord {
        let chain = prev.next(Epoch(1), Lsn(lsn), ContentDigest(lsn));
        LogRecord {
            epoch: Epoch(1),
            lsn: Lsn(lsn),
            chain,
            digest: ContentDigest(lsn),
            commit_time_us: 0,
            origin: NodeId::new("l").unwrap(),
            pages: Some(PagePayload {
                page_size: 512,
                db_size_pages: 1,
                pages: vec![],
            }),
            rows: None,
        }
    }

    /// A follower at `lsn` that follows leader incarnation `inc-1`.
    fn session_at(lsn: u64) -> FollowerSession {
        new_session_at(lsn).with_leader_incarnation(Some("inc-1".into()))
    }

    fn new_session_at(lsn: u64) -> FollowerSession {
        FollowerSession::new(
            FollowerConfig::new("f1", "http://f1"),
            Some((Position::new(1, lsn), Chain(lsn))),
            Some("c".into()),
        )
    }

    /// A session at `lsn` that has connected and been welcomed (times 0..=2 used).
    fn streaming_at(lsn: u64) -> FollowerSession {
        let mut s = session_at(lsn);
        s.start(0);
        s.handle(1, 0, FollowerEvent::Connected);
        s.handle(2, 0, welcome(lsn));
        assert_eq!(s.phase(), FollowerPhase::Streaming);
        s
    }

    fn welcome(after: u64) -> FollowerEvent {
        welcome_from("inc-1", after)
    }

    fn welcome_from(incarnation: &str, after: u64) -> FollowerEvent {
        FollowerEvent::Received(LeaderMessage::Welcome {
            cluster_id: "c".into(),
            leader_id: "l".into(),
            incarnation: incarnation.into(),
            epoch: Epoch(1),
            start_after: Lsn(after),
            head: Position::new(1, 10),
        })
    }

    /// An apply that keeps failing (a conflict, a schema change that cannot run here) keeps
    /// its reason shown across reconnects and backs off, rather than flapping to a clean
    /// "streaming" and retrying every 100 ms (found by an outside probe).
    #[test]
    fn an_apply_that_keeps_failing_backs_off_and_stays_reported() {
        let mut s = streaming_at(5);
        let mut now = 10;
        let mut delays = Vec::new();
        for _ in 0..5 {
            let cmds = s.handle(
                now,
                1000,
                FollowerEvent::Received(LeaderMessage::Records(vec![rec(6, Chain(5))])),
            );
            assert!(cmds.iter().any(|c| matches!(c, FollowerCommand::Apply(_))));
            let failed_at = now + 1;
            s.handle(
                failed_at,
                1000,
                FollowerEvent::ApplyFailed {
                    reason: "conflict".into(),
                    disk_full: false,
                },
            );
            assert_eq!(s.phase(), FollowerPhase::WaitingToRetry);
            // Reconnects at the retry time, not before.
            now = failed_at;
            while !s
                .handle(now, 1000, FollowerEvent::Tick)
                .contains(&FollowerCommand::Connect)
            {
                now += 10;
                assert!(now < failed_at + 60_000, "never reconnected");
            }
            delays.push(now - failed_at);
            s.handle(now + 1, 1000, FollowerEvent::Connected);
            s.handle(now + 2, 1000, welcome(5));
            assert_eq!(s.phase(), FollowerPhase::Streaming);
            let err = s.last_error().expect("the failure stays shown");
            assert!(err.contains("conflict"), "{err}");
            now += 3;
        }
        assert!(
            delays.windows(2).all(|w| w[1] >= w[0]) && delays[4] >= 4 * delays[0],
            "{delays:?}"
        );
        // Once an apply succeeds, the error is gone.
        s.handle(
            now,
            1000,
            FollowerEvent::Received(LeaderMessage::Records(vec![rec(6, Chain(5))])),
        );
        s.handle(
            now + 1,
            1000,
            FollowerEvent::Applied {
                position: Position::new(1, 6),
                chain: rec(6, Chain(5)).chain,
            },
        );
        assert_eq!(s.last_error(), None);
    }

    /// A copy of a follower's directory started as a leader has the cluster's id and a history
    /// that links: only its incarnation tells it apart, and it is refused.
    #[test]
    fn a_leader_of_another_incarnation_is_refused_and_a_bootstrap_adopts_the_next() {
        let mut s = new_session_at(5);
        s.start(0);
        s.handle(1, 0, FollowerEvent::Connected);
        let cmds = s.handle(2, 0, welcome_from("inc-1", 5));
        assert_eq!(
            cmds,
            vec![FollowerCommand::RememberLeader {
                incarnation: "inc-1".into()
            }]
        );
        s.handle(3, 0, FollowerEvent::ConnectionLost { reason: "x".into() });
        let retry_at = 100_000;
        s.handle(retry_at, 0, FollowerEvent::Tick);
        s.handle(retry_at + 1, 0, FollowerEvent::Connected);
        let cmds = s.handle(retry_at + 2, 0, welcome_from("impostor", 5));
        assert_eq!(cmds, vec![FollowerCommand::Disconnect]);
        assert_ne!(s.phase(), FollowerPhase::Streaming);
        let err = s.last_error().unwrap();
        assert!(err.contains("impostor") && err.contains("inc-1"), "{err}");
        // Records from it are never taken.
        assert!(s
            .handle(
                retry_at + 3,
                0,
                FollowerEvent::Received(LeaderMessage::Records(vec![rec(6, Chain(5))]))
            )
            .iter()
            .all(|c| !matches!(c, FollowerCommand::Apply(_))));
        // The remembered incarnation survives a restart of the follower.
        let mut restarted = session_at(5).with_leader_incarnation(Some("inc-1".into()));
        restarted.start(0);
        restarted.handle(1, 0, FollowerEvent::Connected);
        assert_eq!(
            restarted.handle(2, 0, welcome_from("impostor", 5)),
            vec![FollowerCommand::Disconnect]
        );
        // After a bootstrap the database is the new leader's copy: its incarnation is adopted.
        let mut rebuilt = session_at(5).with_leader_incarnation(Some("inc-1".into()));
        rebuilt.start(0);
        rebuilt.handle(
            1,
            0,
            FollowerEvent::BootstrapFinished {
                position: Position::new(1, 8),
                chain: Chain(8),
                cluster_id: "c".into(),
            },
        );
        rebuilt.handle(2, 0, FollowerEvent::Connected);
        assert_eq!(
            rebuilt.handle(3, 0, welcome_from("impostor", 8)),
            vec![FollowerCommand::RememberLeader {
                incarnation: "impostor".into()
            }]
        );
        assert_eq!(rebuilt.phase(), FollowerPhase::Streaming);
    }

    /// An operator removed the follower: it stops replicating instead of coming back.
    #[test]
    fn a_removed_follower_stops_until_restarted() {
        let mut s = streaming_at(5);
        let cmds = s.handle(
            3,
            0,
            FollowerEvent::Received(LeaderMessage::Refuse {
                code: RefusalCode::Removed,
                message: "removed by an operator".into(),
            }),
        );
        assert_eq!(cmds, vec![FollowerCommand::Disconnect]);
        assert_eq!(s.phase(), FollowerPhase::Removed);
        assert!(s.last_error().unwrap().contains("after a restart"));
        for t in 1..100u64 {
            assert!(s.handle(t * 10_000, 0, FollowerEvent::Tick).is_empty());
        }
    }

    #[test]
    fn without_a_database_it_bootstraps_first() {
        let mut s = FollowerSession::new(FollowerConfig::new("f", "u"), None, None);
        assert_eq!(s.start(0), vec![FollowerCommand::Bootstrap]);
        let cmds = s.handle(
            5,
            0,
            FollowerEvent::BootstrapFinished {
                position: Position::new(1, 4),
                chain: Chain(4),
                cluster_id: "c".into(),
            },
        );
        assert_eq!(cmds, vec![FollowerCommand::Connect]);
        assert_eq!(s.applied(), Some(Position::new(1, 4)));
    }

    #[test]
    fn hello_states_the_local_position_then_records_are_applied_and_acked() {
        let mut s = session_at(3);
        assert_eq!(s.start(0), vec![FollowerCommand::Connect]);
        let cmds = s.handle(1, 0, FollowerEvent::Connected);
        assert!(matches!(
            &cmds[..],
            [FollowerCommand::Send(FollowerMessage::Hello { position, chain, .. })]
                if *position == Position::new(1, 3) && *chain == Chain(3)
        ));
        assert!(s.handle(2, 0, welcome(3)).is_empty());
        let r4 = rec(4, Chain(3));
        let r5 = rec(5, r4.chain);
        let cmds = s.handle(
            3,
            0,
            FollowerEvent::Received(LeaderMessage::Records(vec![r4.clone()])),
        );
        assert_eq!(cmds, vec![FollowerCommand::Apply(vec![r4.clone()])]);
        // While applying, more records queue up without a second concurrent apply.
        let cmds = s.handle(
            4,
            0,
            FollowerEvent::Received(LeaderMessage::Records(vec![r5.clone()])),
        );
        assert!(cmds.is_empty());
        s.batch_done(1);
        let cmds = s.handle(
            5,
            0,
            FollowerEvent::Applied {
                position: r4.position(),
                chain: r4.chain,
            },
        );
        assert_eq!(cmds.len(), 2);
        assert!(matches!(
            &cmds[0],
            FollowerCommand::Send(FollowerMessage::Ack { applied, received, .. })
                if *applied == r4.position() && *received == r5.position()
        ));
        assert_eq!(cmds[1], FollowerCommand::Apply(vec![r5]));
    }

    #[test]
    fn a_gap_in_records_is_a_protocol_error_and_reconnects_later() {
        let mut s = streaming_at(3);
        let cmds = s.handle(
            3,
            1000,
            FollowerEvent::Received(LeaderMessage::Records(vec![rec(6, Chain(0))])),
        );
        assert_eq!(cmds, vec![FollowerCommand::Disconnect]);
        assert_eq!(s.phase(), FollowerPhase::WaitingToRetry);
        assert!(s.last_error().unwrap().contains("does not follow"));
        assert!(
            s.handle(50, 0, FollowerEvent::Tick).is_empty(),
            "backoff not yet over"
        );
        assert_eq!(
            s.handle(200, 0, FollowerEvent::Tick),
            vec![FollowerCommand::Connect]
        );
    }

    #[test]
    fn need_snapshot_and_diverged_bootstrap_other_refusals_retry() {
        for (code, expect_bootstrap) in [
            (RefusalCode::NeedSnapshot, true),
            (RefusalCode::Diverged, true),
            (RefusalCode::WrongCluster, false),
            (RefusalCode::NotLeader, false),
        ] {
            let mut s = session_at(3);
            s.start(0);
            s.handle(1, 0, FollowerEvent::Connected);
            let cmds = s.handle(
                2,
                0,
                FollowerEvent::Received(LeaderMessage::Refuse {
                    code,
                    message: "m".into(),
                }),
            );
            assert_eq!(cmds[0], FollowerCommand::Disconnect);
            assert_eq!(
                cmds.contains(&FollowerCommand::Bootstrap),
                expect_bootstrap,
                "{code:?}"
            );
            assert!(s.last_error().unwrap().contains(code.as_str()));
        }
    }

    #[test]
    fn disk_full_pauses_and_retries_the_same_batch() {
        let mut s = streaming_at(3);
        let r4 = rec(4, Chain(3));
        s.handle(
            3,
            0,
            FollowerEvent::Received(LeaderMessage::Records(vec![r4.clone()])),
        );
        let cmds = s.handle(
            4,
            0,
            FollowerEvent::ApplyFailed {
                reason: "full".into(),
                disk_full: true,
            },
        );
        assert!(cmds.is_empty());
        assert_eq!(s.phase(), FollowerPhase::DiskFull);
        assert!(s.last_error().unwrap().contains("disk is full"));
        assert!(s.handle(500, 0, FollowerEvent::Tick).is_empty());
        assert_eq!(
            s.handle(1005, 0, FollowerEvent::Tick),
            vec![FollowerCommand::Apply(vec![r4.clone()])]
        );
        s.batch_done(1);
        s.handle(
            1006,
            0,
            FollowerEvent::Applied {
                position: r4.position(),
                chain: r4.chain,
            },
        );
        assert_eq!(s.phase(), FollowerPhase::Streaming);
        assert_eq!(s.last_error(), None);
    }

    /// Found by the simulator (seed 13, once applies took time): the connection broke while a
    /// batch was applying, then the apply met a full disk. The session paused to retry a batch
    /// that the lost session had already dropped, and never reconnected.
    #[test]
    fn a_full_disk_after_the_session_was_lost_does_not_stop_reconnecting() {
        let mut s = streaming_at(3);
        let r4 = rec(4, Chain(3));
        s.handle(
            3,
            0,
            FollowerEvent::Received(LeaderMessage::Records(vec![r4.clone()])),
        );
        s.handle(
            4,
            0,
            FollowerEvent::ConnectionLost {
                reason: "broke".into(),
            },
        );
        let cmds = s.handle(
            5,
            0,
            FollowerEvent::ApplyFailed {
                reason: "full".into(),
                disk_full: true,
            },
        );
        assert!(cmds.is_empty());
        assert_eq!(s.phase(), FollowerPhase::WaitingToRetry);
        assert!(s.last_error().unwrap().contains("disk is full"));
        assert_eq!(
            s.handle(2_000, 0, FollowerEvent::Tick),
            vec![FollowerCommand::Connect]
        );
        let cmds = s.handle(2_001, 0, FollowerEvent::Connected);
        assert!(matches!(
            &cmds[..],
            [FollowerCommand::Send(FollowerMessage::Hello { position, .. })]
                if *position == Position::new(1, 3)
        ));
    }

    #[test]
    fn a_heartbeat_beyond_what_arrived_means_lost_records() {
        let mut s = streaming_at(3);
        let ok = FollowerEvent::Received(LeaderMessage::Heartbeat {
            head: Position::new(1, 3),
            now_ms: 0,
        });
        assert!(matches!(
            &s.handle(3, 0, ok)[..],
            [FollowerCommand::Send(FollowerMessage::Ack { .. })]
        ));
        let ahead = FollowerEvent::Received(LeaderMessage::Heartbeat {
            head: Position::new(1, 5),
            now_ms: 0,
        });
        assert_eq!(s.handle(4, 0, ahead), vec![FollowerCommand::Disconnect]);
        assert!(
            s.last_error().unwrap().contains("only 1/3 arrived"),
            "{:?}",
            s.last_error()
        );
    }

    #[test]
    fn a_heartbeat_before_welcome_means_the_welcome_was_lost() {
        let mut s = session_at(3);
        s.start(0);
        s.handle(1, 0, FollowerEvent::Connected);
        let hb = FollowerEvent::Received(LeaderMessage::Heartbeat {
            head: Position::new(1, 9),
            now_ms: 0,
        });
        assert_eq!(s.handle(2, 0, hb), vec![FollowerCommand::Disconnect]);
        assert_eq!(s.phase(), FollowerPhase::WaitingToRetry);
        assert!(s.last_error().unwrap().contains("heartbeat before welcome"));
    }

    #[test]
    fn a_silent_leader_is_dropped() {
        let mut s = streaming_at(3);
        assert!(s.handle(5_000, 0, FollowerEvent::Tick).is_empty());
        assert_eq!(
            s.handle(10_003, 0, FollowerEvent::Tick),
            vec![FollowerCommand::Disconnect]
        );
        assert_eq!(s.phase(), FollowerPhase::WaitingToRetry);
    }

    #[test]
    fn hello_waits_for_an_apply_in_flight() {
        let mut s = streaming_at(3);
        let r4 = rec(4, Chain(3));
        s.handle(
            3,
            0,
            FollowerEvent::Received(LeaderMessage::Records(vec![r4.clone()])),
        );
        s.handle(4, 0, FollowerEvent::ConnectionLost { reason: "x".into() });
        s.handle(200, 1000, FollowerEvent::Tick);
        assert!(
            s.handle(201, 0, FollowerEvent::Connected).is_empty(),
            "apply still in flight"
        );
        s.batch_done(1);
        let cmds = s.handle(
            202,
            0,
            FollowerEvent::Applied {
                position: r4.position(),
                chain: r4.chain,
            },
        );
        assert!(matches!(
            &cmds[..],
            [FollowerCommand::Send(FollowerMessage::Hello { position, .. })] if *position == r4.position()
        ));
    }
}
