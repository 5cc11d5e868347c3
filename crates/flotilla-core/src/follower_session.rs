//! A follower's side of replication, as a state machine.
//!
//! Ordering contracts for the host:
//! - `Apply` batches are performed one at a time, in order; the host reports each with
//!   `Applied` or `ApplyFailed` before the session emits the next.
//! - An `Ack` is only emitted after the apply it reports completed, and reports as `durable`
//!   only what a `Flush` made durable: a follower commits its applies without waiting for the
//!   disk (SQLite's `synchronous=NORMAL`), so a change is visible to readers before it is
//!   durable, and flushes its WAL beside the next apply (one `Flush` in flight at a time, the
//!   way a leader groups its commits).
//! - The host opens the database durable (`flotilla_store::Replica::open` flushes it): the
//!   `local` state a session starts from survives a power loss.
//! - `Hello` is only sent when no apply is in flight and everything applied is durable, so it
//!   states exactly what the database holds and will hold after a power loss.

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
    /// Received records not yet applied, at most: a leader keeps to its flow-control window
    /// (`ShippingConfig`); these bounds are four times its default and cut off one that does
    /// not. One record is always taken, however large.
    pub max_pending_records: usize,
    pub max_pending_bytes: usize,
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
            max_pending_records: 80_000,
            max_pending_bytes: 128 << 20,
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
    /// The `Flush` numbered `seq` finished: what it covered is durable.
    Flushed {
        seq: u64,
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
    /// Make everything applied so far (through `through`) durable: flush the database's WAL;
    /// report `Flushed { seq }`. May run beside the next `Apply`; a failed flush is fatal to
    /// the node (the disk's state is unknown), so there is no event for it.
    Flush {
        seq: u64,
        through: Position,
    },
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
    /// What the local database holds durably (survives a power loss): at most `local`.
    durable: Position,
    /// The `Flush` in flight (its number and what it covers); `None` also discards the answer
    /// of one that a bootstrap made moot.
    flushing: Option<(u64, Position)>,
    /// The number of the last `Flush`.
    flush_seq: u64,
    cluster_id: Option<String>,
    /// The incarnation of the leader whose history the local database continues; a welcome
    /// from another is refused. `None`: adopt the next one (after a bootstrap).
    leader_incarnation: Option<String>,
    /// Last record received (buffered or applied).
    received: Position,
    pending: VecDeque<Pending>,
    /// `approx_bytes` of `pending`.
    pending_bytes: usize,
    applying: bool,
    connected: bool,
    /// Number of the current (or last) connection: see [`FollowerSession::connection`].
    connection: u64,
    stale_events: u64,
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
            durable: received,
            flushing: None,
            flush_seq: 0,
            cluster_id,
            leader_incarnation: None,
            received,
            pending: VecDeque::new(),
            pending_bytes: 0,
            applying: false,
            connected: false,
            connection: 0,
            stale_events: 0,
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
    /// What survives a power loss (at most [`FollowerSession::applied`]).
    pub fn durable(&self) -> Position {
        self.durable
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
            self.flushing = None;
            vec![FollowerCommand::Bootstrap]
        } else {
            self.phase = FollowerPhase::Connecting;
            self.connection += 1;
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
                // The applied batch leaves the queue (a failed one stays, to be retried).
                while self
                    .pending
                    .front()
                    .is_some_and(|p| p.record.lsn <= position.lsn)
                {
                    if let Some(p) = self.pending.pop_front() {
                        self.pending_bytes -= p.bytes;
                    }
                }
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
                self.maybe_flush(&mut out);
                self.maybe_hello(&mut out);
                self.maybe_apply(&mut out);
            }
            FollowerEvent::Flushed { seq } => {
                if let Some((_, through)) = self.flushing.filter(|(s, _)| *s == seq) {
                    self.flushing = None;
                    self.durable = self.durable.max(through);
                    if self.connected && self.phase == FollowerPhase::Streaming {
                        out.push(self.ack());
                    }
                    self.maybe_flush(&mut out);
                    self.maybe_hello(&mut out);
                } else {
                    // The answer to a flush a bootstrap made moot: it covered the old database.
                    self.stale_events += 1;
                }
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
                    self.clear_pending();
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
                // An installed snapshot is flushed before it is opened.
                self.durable = position;
                self.received = position;
                self.leader_head = self.leader_head.max(position);
                self.cluster_id = Some(cluster_id);
                // The database is now a copy of whichever leader served the snapshot: its
                // incarnation is adopted at the next welcome.
                self.leader_incarnation = None;
                self.clear_pending();
                self.last_error = None;
                self.attempt = 0;
                self.phase = FollowerPhase::Connecting;
                self.connect(&mut out);
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
                    self.flushing = None;
                    out.push(FollowerCommand::Bootstrap);
                } else {
                    self.phase = FollowerPhase::Connecting;
                    self.connect(out);
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
                // The leader checked the hello's cluster id, but a peer that is not one of this
                // cluster's nodes may say anything: its records would overwrite this replica.
                if let Some(mine) = self.cluster_id.as_ref().filter(|c| **c != cluster_id) {
                    out.push(FollowerCommand::Disconnect);
                    self.connected = false;
                    self.last_error = Some(format!(
                        "refused leader {leader_id}: it belongs to cluster {cluster_id}, this \
                         follower to cluster {mine}"
                    ));
                    self.clear_pending();
                    self.schedule_retry();
                    return;
                }
                match &self.leader_incarnation {
                    Some(mine) if *mine != incarnation => {
                        // Same cluster, a history that still links, yet another leader: a copy
                        // of some node's data directory started as a leader. Its writes would
                        // fork this replica away from the leader it follows.
                        out.push(FollowerCommand::Disconnect);
                        self.connected = false;
                        self.last_error = Some(format!(
                            "refused leader {leader_id}: it is another leader incarnation \
                             ({incarnation}) than the one this follower follows ({mine}) — a \
                             copy of a data directory started as a leader? To follow it, start \
                             this follower with an empty data directory"
                        ));
                        self.clear_pending();
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
                let count = records.len();
                for (i, r) in records.into_iter().enumerate() {
                    // LSNs may skip Raft's own entries (a cluster's): the apply checks that
                    // each record's checksum chain links to the one before.
                    if r.lsn <= self.received.lsn {
                        return self.protocol_error(
                            &format!("record {} does not follow {}", r.position(), self.received),
                            out,
                        );
                    }
                    self.received = r.position();
                    self.leader_head = self.leader_head.max(r.position());
                    // The leader keeps what is in flight within its window; a leader that
                    // does not is cut off before this queue takes the memory.
                    // (One record beyond the byte bound is taken, as the leader's window lets
                    // one record beyond it go: a record larger than the bound still moves.)
                    if !self.pending.is_empty()
                        && (self.pending.len() >= self.config.max_pending_records
                            || self.pending_bytes >= self.config.max_pending_bytes)
                    {
                        return self.protocol_error(
                            &format!(
                                "the leader sent more than {} records or {} MiB ahead of what \
                                 was applied (its flow-control window is smaller)",
                                self.config.max_pending_records,
                                self.config.max_pending_bytes >> 20
                            ),
                            out,
                        );
                    }
                    let bytes = r.approx_bytes();
                    self.pending_bytes += bytes;
                    self.pending.push_back(Pending {
                        record: r,
                        bytes,
                        unit_end: i + 1 == count,
                    });
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
                // Answered also while a batch applies and while the disk is full: the leader
                // ends a session that acknowledges nothing for long, and the ack states only
                // what is applied.
                if matches!(
                    self.phase,
                    FollowerPhase::Streaming | FollowerPhase::DiskFull
                ) {
                    out.push(self.ack());
                }
            }
            LeaderMessage::Refuse { code, message } => {
                out.push(FollowerCommand::Disconnect);
                self.connected = false;
                match code {
                    RefusalCode::NeedSnapshot | RefusalCode::Diverged => {
                        self.last_error = Some(format!("{}: {message}", code.as_str()));
                        self.clear_pending();
                        self.phase = FollowerPhase::Bootstrapping;
                        self.flushing = None;
                        out.push(FollowerCommand::Bootstrap);
                    }
                    RefusalCode::Removed => {
                        self.clear_pending();
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
        self.clear_pending();
        self.lose_session(format!("protocol error: {what}"), true);
    }

    fn lose_session(&mut self, reason: String, keep_error: bool) {
        if !keep_error || self.last_error.is_none() {
            self.last_error = Some(reason);
        }
        // Records buffered but not applied are fetched again after the next handshake.
        self.clear_pending();
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
        // The leader takes the position a hello states as durable (its log is kept from there
        // on for this follower): wait for the flush of what was applied.
        if self.local.is_some_and(|l| l.0 > self.durable) {
            self.maybe_flush(out);
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
        #[allow(unused_mut)]
        let mut durable = self.durable;
        #[cfg(feature = "sim-bugs")]
        if crate::injected_bugs::ACK_BEFORE_FSYNC.load(std::sync::atomic::Ordering::Relaxed) {
            durable = applied;
        }
        FollowerCommand::Send(FollowerMessage::Ack {
            received: self.received,
            durable,
            applied,
            now_ms: self.now_ms,
        })
    }

    /// Flushes what is applied and not yet durable, unless a flush is in flight (its answer
    /// starts the next one: flushes group whatever was applied meanwhile).
    fn maybe_flush(&mut self, out: &mut Vec<FollowerCommand>) {
        let Some((applied, _)) = self.local else {
            return;
        };
        if self.flushing.is_some() || applied <= self.durable {
            return;
        }
        self.flush_seq += 1;
        self.flushing = Some((self.flush_seq, applied));
        out.push(FollowerCommand::Flush {
            seq: self.flush_seq,
            through: applied,
        });
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
        // A physical follower's batch ends only where a message ended: a message is one unit
        // (see `LeaderMessage::Records`), so a batch may pass the bounds by up to one message,
        // which the leader's batch limits bound. A logical follower's records are whole.
        let units = self.config.log_kind == LogKind::Physical;
        let mut at_unit_end = true;
        for p in self.pending.iter() {
            if at_unit_end
                && (batch.len() >= self.config.max_batch_records
                    || (bytes >= self.config.max_batch_bytes && !batch.is_empty()))
            {
                break;
            }
            bytes += p.bytes;
            at_unit_end = p.unit_end || !units;
            batch.push(p.record.clone());
        }
        // The loop stops only at a unit end, or after the last pending record, which ends its
        // message: messages are queued whole (a message cut short clears the queue).
        debug_assert!(at_unit_end, "an apply batch would end inside a message");
        self.applying = true;
        out.push(FollowerCommand::Apply(batch));
    }

    fn connect(&mut self, out: &mut Vec<FollowerCommand>) {
        self.connection += 1;
        out.push(FollowerCommand::Connect);
    }

    /// The connection the last `Connect` opened (numbered from 1). The host tags what its
    /// transport reports with it and hands those events over through
    /// [`FollowerSession::handle_connection_event`].
    pub fn connection(&self) -> u64 {
        self.connection
    }

    /// An event of connection `connection` (`Connected`, `ConnectionLost`, `Received`): ignored
    /// when it comes from an earlier connection than the last one opened — a transport may
    /// still report what it saw before it was dropped, and that must not reach this session.
    pub fn handle_connection_event(
        &mut self,
        now_ms: u64,
        jitter: u16,
        connection: u64,
        event: FollowerEvent,
    ) -> Vec<FollowerCommand> {
        if connection != self.connection {
            self.stale_events += 1;
            return Vec::new();
        }
        self.handle(now_ms, jitter, event)
    }

    /// Events of earlier connections ignored so far.
    pub fn stale_events(&self) -> u64 {
        self.stale_events
    }

    fn clear_pending(&mut self) {
        self.pending.clear();
        self.pending_bytes = 0;
    }

    /// Records received and not yet applied (including a batch being applied).
    pub fn pending_records(&self) -> usize {
        self.pending.len()
    }
}

/// A received record waiting to be applied.
#[derive(Debug)]
struct Pending {
    record: LogRecord,
    /// `record.approx_bytes()`, counted once.
    bytes: usize,
    /// The last record of its message: an apply batch may end after it.
    unit_end: bool,
}

#[cfg(test)]
mod tests;
