//! The leader's side of one replication session, as a state machine.
//!
//! The follower speaks first (`Hello`: who it is, what it holds); the session decides
//! ([`crate::handshake`]) and either refuses with a reason or welcomes it, then ships every
//! durable record after the follower's position and heartbeats while idle.
//!
//! Flow control: at most [`ShippingConfig::window_records`] records and about
//! [`ShippingConfig::window_bytes`] bytes are in flight — sent but not yet reported *applied* by
//! the follower (what it buffers until then is what it holds in memory). One record is always
//! allowed when nothing is in flight, however large, so a big transaction still moves.
//!
//! Ordering contracts for the host:
//! - Commands are performed in order. `ReadLog` is answered with exactly one `LogRead` event
//!   (there is never more than one read outstanding).
//! - Every event carries a [`LeaderContext`]: the shared follower list, the durable head and the
//!   clock at that moment. The session registers its follower in the list and takes it out
//!   again; nothing else about the list is the host's business except persisting it
//!   (`SaveFollowers`).
//! - After `Close` the session is over: later events are ignored and produce nothing.

use crate::follower_tracker::{AckRefused, FollowerTracker, SessionId};
use crate::handshake::{
    check_link, check_link_consensus, decide, Decision, FollowerClaim, LeaderView,
};
use bytes::Bytes;
use flotilla_types::{Chain, Epoch, LogKind, Lsn, NodeId, Position};
use flotilla_wire::{project_record, FollowerMessage, LeaderMessage, RefusalCode};
use std::collections::VecDeque;

/// Limits and timers of a session. The node uses [`ShippingConfig::default`]; the simulator
/// draws small values per seed so that windows fill and batches split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippingConfig {
    /// A batch stops growing after the record that reaches this many bytes read from the log.
    /// What is sent is at most what was read: a physical follower's batch leaves superseded
    /// page images out, a logical follower's all of them. A quarter of the window, so that
    /// batches that leave little out still keep several in flight.
    pub batch_bytes: usize,
    pub batch_records: usize,
    /// In flight at most (sent, not yet applied by the follower).
    pub window_bytes: u64,
    pub window_records: u64,
    /// A heartbeat goes out after this long without any message to the follower.
    pub heartbeat_ms: u64,
    /// A session whose follower acknowledged nothing for this long is closed (a follower acks
    /// every applied batch and every heartbeat while idle): a dead peer behind a half-open
    /// connection must not keep its follower id taken.
    pub ack_timeout_ms: u64,
    /// The follower must say `Hello` within this long.
    pub hello_timeout_ms: u64,
}

impl Default for ShippingConfig {
    fn default() -> ShippingConfig {
        ShippingConfig {
            batch_bytes: 8 << 20,
            batch_records: 10_000,
            window_bytes: 32 << 20,
            window_records: 20_000,
            heartbeat_ms: 1_000,
            ack_timeout_ms: 30_000,
            hello_timeout_ms: 10_000,
        }
    }
}

/// Who this leader is (fixed for the session).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderIdentity {
    pub cluster_id: String,
    pub leader_id: String,
    /// This data directory's leader incarnation (sent in every welcome).
    pub incarnation: String,
    pub epoch: Epoch,
}

/// The leader's state as the host sees it when it hands an event over.
pub struct LeaderContext<'a> {
    /// Every known follower (shared by all sessions of this leader).
    pub tracker: &'a mut FollowerTracker,
    /// The newest durable record.
    pub head: Position,
    pub head_chain: Chain,
    /// Oldest LSN still in the log (`head + 1` when the log is empty).
    pub first_retained: Lsn,
    /// Monotonic clock (timeouts).
    pub now_ms: u64,
    /// Wall clock (sent in heartbeats, for the follower's lag estimate).
    pub wall_ms: u64,
}

/// Why a log read gave no records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFailure {
    /// Removed by retention, or damaged: the follower must bootstrap from a snapshot.
    Unavailable(String),
    /// Anything else (an IO error): the session ends and the follower reconnects.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderEvent {
    /// A binary message from the follower, as received (decoded here).
    Received(Vec<u8>),
    /// Something the transport cannot hand over as a message (a text frame, say).
    Unexpected(String),
    /// The durable head moved (the context carries it).
    HeadMoved,
    /// The answer to `ReadLog`: the encoded records from `from` on.
    LogRead {
        from: Lsn,
        result: Result<Vec<Bytes>, ReadFailure>,
    },
    /// Timers: heartbeats, the hello and ack timeouts. Any period up to a few hundred ms.
    Tick,
    /// The follower's credentials no longer allow replication (revoked token).
    Revoked { reason: String },
    /// The connection ended (the peer closed it, or the leader is stopping).
    Closed { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderCommand {
    /// Send this encoded [`LeaderMessage`].
    Send(Vec<u8>),
    /// Read durable records from the log (or a cache of it); answer with `LogRead`.
    ReadLog {
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
    },
    /// The follower list changed (a follower registered or disconnected): persist it.
    SaveFollowers,
    /// End the session: close the connection after what was sent (a refusal says why to the
    /// follower; `reason` is for the leader's log).
    Close { reason: String },
}

/// What the follower asked for in its hello.
#[derive(Debug, Clone)]
struct Hello {
    follower_id: String,
    follower_url: String,
    log_kind: LogKind,
    claim: FollowerClaim,
}

#[derive(Debug)]
enum Phase {
    AwaitingHello,
    /// Reading the record after the follower's position to check it links.
    CheckingLink(Hello, Lsn),
    Streaming(Stream),
    Closed,
}

#[derive(Debug)]
struct Stream {
    follower_id: String,
    log_kind: LogKind,
    session: SessionId,
    /// The next LSN to read.
    next: Lsn,
    /// The last record sent (the next LSN to read may be past it: Raft's own entries are read
    /// and not sent).
    last_shipped: Lsn,
    /// A `ReadLog` is outstanding.
    reading: bool,
    /// Sent batches not yet applied by the follower: (last LSN, records, bytes).
    in_flight: VecDeque<(Lsn, u64, u64)>,
    in_flight_records: u64,
    in_flight_bytes: u64,
    last_sent_ms: u64,
}

#[derive(Debug)]
pub struct LeaderSession {
    config: ShippingConfig,
    identity: LeaderIdentity,
    phase: Phase,
    opened_ms: u64,
}

impl LeaderSession {
    /// A connection was accepted at `now_ms`; the follower is expected to say hello.
    pub fn new(config: ShippingConfig, identity: LeaderIdentity, now_ms: u64) -> LeaderSession {
        LeaderSession {
            config,
            identity,
            phase: Phase::AwaitingHello,
            opened_ms: now_ms,
        }
    }

    /// The follower this session streams to, once welcomed.
    pub fn follower_id(&self) -> Option<&str> {
        match &self.phase {
            Phase::Streaming(s) => Some(&s.follower_id),
            Phase::CheckingLink(h, _) => Some(&h.follower_id),
            _ => None,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Records and bytes sent and not yet reported applied.
    pub fn in_flight(&self) -> (u64, u64) {
        match &self.phase {
            Phase::Streaming(s) => (s.in_flight_records, s.in_flight_bytes),
            _ => (0, 0),
        }
    }

    pub fn handle(
        &mut self,
        ctx: &mut LeaderContext<'_>,
        event: LeaderEvent,
    ) -> Vec<LeaderCommand> {
        let mut out = Vec::new();
        match event {
            _ if self.is_closed() => {}
            LeaderEvent::Closed { reason } => self.close(ctx, reason, &mut out),
            LeaderEvent::Revoked { reason } => self.refuse(
                ctx,
                RefusalCode::Unauthorized,
                format!("the replication session ends: {reason}"),
                &mut out,
            ),
            LeaderEvent::Unexpected(what) => self.refuse(
                ctx,
                RefusalCode::Protocol,
                format!("expected a binary message, got {what}"),
                &mut out,
            ),
            LeaderEvent::Received(bytes) => match FollowerMessage::decode(&bytes) {
                Ok(msg) => self.on_message(ctx, msg, &mut out),
                Err(e) => self.refuse(ctx, RefusalCode::Protocol, e.to_string(), &mut out),
            },
            LeaderEvent::LogRead { from, result } => self.on_read(ctx, from, result, &mut out),
            LeaderEvent::HeadMoved => {}
            LeaderEvent::Tick => self.on_tick(ctx, &mut out),
        }
        if !self.is_closed() {
            self.check_current(ctx, &mut out);
        }
        if !self.is_closed() {
            self.maybe_read(ctx, &mut out);
        }
        out
    }

    fn on_message(
        &mut self,
        ctx: &mut LeaderContext<'_>,
        msg: FollowerMessage,
        out: &mut Vec<LeaderCommand>,
    ) {
        match (&self.phase, msg) {
            (
                Phase::AwaitingHello,
                FollowerMessage::Hello {
                    cluster_id,
                    follower_id,
                    follower_url,
                    log_kind,
                    position,
                    chain,
                },
            ) => {
                if NodeId::new(&follower_id).is_err() {
                    return self.refuse(
                        ctx,
                        RefusalCode::Protocol,
                        format!("invalid follower id {follower_id:?}"),
                        out,
                    );
                }
                // Shown in status and by `flotilla status`: no line breaks or terminal codes.
                if follower_url
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace())
                {
                    return self.refuse(
                        ctx,
                        RefusalCode::Protocol,
                        format!(
                            "invalid follower URL {follower_url:?}: it holds spaces or control \
                             characters"
                        ),
                        out,
                    );
                }
                let hello = Hello {
                    follower_id,
                    follower_url,
                    log_kind,
                    claim: FollowerClaim {
                        cluster_id,
                        position,
                        chain,
                    },
                };
                let view = LeaderView {
                    cluster_id: self.identity.cluster_id.clone(),
                    epoch: self.identity.epoch,
                    head: ctx.head,
                    head_chain: ctx.head_chain,
                    first_retained: ctx.first_retained,
                };
                match decide(&view, &hello.claim) {
                    Decision::CheckLink { lsn } => {
                        out.push(LeaderCommand::ReadLog {
                            from: lsn,
                            max_records: 1,
                            max_bytes: 1,
                        });
                        self.phase = Phase::CheckingLink(hello, lsn);
                    }
                    decision => self.decided(ctx, hello, decision, out),
                }
            }
            (
                Phase::Streaming(s),
                FollowerMessage::Ack {
                    received,
                    durable,
                    applied,
                    ..
                },
            ) => {
                let sent = s.last_shipped;
                let (id, session) = (s.follower_id.clone(), s.session);
                match ctx.tracker.acked(
                    &id,
                    session,
                    sent,
                    [received, durable, applied],
                    ctx.now_ms,
                ) {
                    Ok(()) => self.release(applied.lsn),
                    // Removed or replaced: `check_current` ends the session.
                    Err(AckRefused::NotCurrent) => {}
                    Err(e) => self.refuse(
                        ctx,
                        RefusalCode::Protocol,
                        format!("progress report refused: {e}"),
                        out,
                    ),
                }
            }
            (Phase::AwaitingHello, other) => self.refuse(
                ctx,
                RefusalCode::Protocol,
                format!("expected Hello, got {}", kind_of(&other)),
                out,
            ),
            (_, other) => self.refuse(
                ctx,
                RefusalCode::Protocol,
                format!("unexpected {} in this session", kind_of(&other)),
                out,
            ),
        }
    }

    fn decided(
        &mut self,
        ctx: &mut LeaderContext<'_>,
        hello: Hello,
        decision: Decision,
        out: &mut Vec<LeaderCommand>,
    ) {
        let start_after = match decision {
            Decision::Accept { start_after } => start_after,
            Decision::Refuse { code, message } => return self.refuse(ctx, code, message, out),
            Decision::CheckLink { .. } => unreachable!("resolved by the caller"),
        };
        // One session per follower id: the first keeps it (a second session, from a copy of
        // the follower or from another holder of a replicate token, would take its place and
        // its progress).
        if ctx.tracker.has_session(&hello.follower_id) {
            return self.refuse(
                ctx,
                RefusalCode::Duplicate,
                format!(
                    "another session of follower {} is streaming; if that follower is gone, its \
                     session ends within {} s",
                    hello.follower_id,
                    self.config.ack_timeout_ms / 1000
                ),
                out,
            );
        }
        out.push(LeaderCommand::Send(
            LeaderMessage::Welcome {
                cluster_id: self.identity.cluster_id.clone(),
                leader_id: self.identity.leader_id.clone(),
                incarnation: self.identity.incarnation.clone(),
                epoch: self.identity.epoch,
                start_after,
                head: ctx.head,
            }
            .encode(),
        ));
        let session = ctx.tracker.session_opened(
            &hello.follower_id,
            &hello.follower_url,
            hello.log_kind,
            hello.claim.position,
            ctx.now_ms,
        );
        out.push(LeaderCommand::SaveFollowers);
        self.phase = Phase::Streaming(Stream {
            follower_id: hello.follower_id,
            log_kind: hello.log_kind,
            session,
            next: start_after.next(),
            last_shipped: start_after,
            reading: false,
            in_flight: VecDeque::new(),
            in_flight_records: 0,
            in_flight_bytes: 0,
            last_sent_ms: ctx.now_ms,
        });
    }

    fn on_read(
        &mut self,
        ctx: &mut LeaderContext<'_>,
        from: Lsn,
        result: Result<Vec<Bytes>, ReadFailure>,
        out: &mut Vec<LeaderCommand>,
    ) {
        match &mut self.phase {
            Phase::CheckingLink(hello, lsn) if *lsn == from => {
                let (hello, lsn) = (hello.clone(), *lsn);
                // A record that cannot be read (trimmed meanwhile, or damaged) means a snapshot;
                // a failed read (an IO error) only ends this session: the follower comes back.
                let records = match result {
                    Err(ReadFailure::Failed(e)) => {
                        return self.close(ctx, format!("reading the log failed: {e}"), out)
                    }
                    Err(ReadFailure::Unavailable(_)) => Vec::new(),
                    Ok(r) => r,
                };
                // Raft's own entries (a cluster's) are no transactions: one right after the
                // follower's position carries the chain it must hold.
                let decision = match records.first() {
                    Some(r) if flotilla_wire::is_consensus_record(r) => {
                        match flotilla_wire::decode_consensus_record(r) {
                            Ok(c) => check_link_consensus(&hello.claim, c.chain),
                            Err(_) => check_link(&hello.claim, lsn, None),
                        }
                    }
                    first => {
                        let next = first.and_then(|r| flotilla_wire::decode_record(r).ok());
                        check_link(&hello.claim, lsn, next.as_ref())
                    }
                };
                self.decided(ctx, hello, decision, out);
            }
            Phase::Streaming(s) if s.reading && s.next == from => {
                s.reading = false;
                let records = match result {
                    Ok(r) => r,
                    Err(ReadFailure::Unavailable(e)) => {
                        return self.refuse(
                            ctx,
                            RefusalCode::NeedSnapshot,
                            format!("record {from} cannot be shipped: {e}"),
                            out,
                        )
                    }
                    Err(ReadFailure::Failed(e)) => {
                        return self.close(ctx, format!("reading the log failed: {e}"), out)
                    }
                };
                if records.is_empty() {
                    // The head says record `from` is durable: a log that has not got it would
                    // be read again and again. End the session; the follower comes back.
                    return self.close(
                        ctx,
                        format!(
                            "the log returned no record {from} though the head is {}",
                            ctx.head
                        ),
                        out,
                    );
                }
                let n = records.len() as u64;
                s.next = Lsn(s.next.0 + n);
                // Raft's own entries are not shipped: the records around them link by the
                // checksum chain across the gap in LSNs.
                let records: Vec<Bytes> = records
                    .into_iter()
                    .filter(|r| !flotilla_wire::is_consensus_record(r))
                    .collect();
                let Some(last) = records.last() else {
                    return;
                };
                let last = Lsn(u64::from_le_bytes(
                    last.get(10..18)
                        .and_then(|b| b.try_into().ok())
                        .unwrap_or([0; 8]),
                ));
                // A physical follower gets the batch as one unit, less the page images a later
                // record of it rewrites; a logical one gets the records without their pages.
                let msg = if s.log_kind == LogKind::Physical {
                    LeaderMessage::encode_physical_unit(&records)
                } else {
                    records
                        .iter()
                        .map(|r| project_record(r, s.log_kind))
                        .collect::<Result<Vec<_>, _>>()
                        .map(|p| LeaderMessage::encode_records(&p))
                };
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        let reason = format!("cannot ship to a {} follower: {e}", s.log_kind);
                        return self.refuse(ctx, RefusalCode::NeedSnapshot, reason, out);
                    }
                };
                let n = records.len() as u64;
                let bytes = msg.len() as u64;
                s.last_shipped = last;
                s.in_flight.push_back((last, n, bytes));
                s.in_flight_records += n;
                s.in_flight_bytes += bytes;
                s.last_sent_ms = ctx.now_ms;
                out.push(LeaderCommand::Send(msg));
            }
            // An answer to nothing outstanding: a host bug, but harmless to ignore.
            _ => {}
        }
    }

    fn on_tick(&mut self, ctx: &mut LeaderContext<'_>, out: &mut Vec<LeaderCommand>) {
        let now = ctx.now_ms;
        match &mut self.phase {
            Phase::AwaitingHello | Phase::CheckingLink(..)
                if now.saturating_sub(self.opened_ms) > self.config.hello_timeout_ms =>
            {
                self.close(
                    ctx,
                    format!("no Hello within {} ms", self.config.hello_timeout_ms),
                    out,
                );
            }
            Phase::Streaming(s) => {
                let last_ack_ms = ctx.tracker.get(&s.follower_id).map_or(0, |f| f.last_ack_ms);
                if now.saturating_sub(last_ack_ms) > self.config.ack_timeout_ms {
                    let reason = format!(
                        "no acknowledgement for {} s",
                        self.config.ack_timeout_ms / 1000
                    );
                    return self.close(ctx, reason, out);
                }
                if now.saturating_sub(s.last_sent_ms) >= self.config.heartbeat_ms {
                    // The last record sent on this session (the follower checks nothing was
                    // lost on the way).
                    let last_sent = Position {
                        epoch: ctx.head.epoch,
                        lsn: s.last_shipped,
                    };
                    s.last_sent_ms = now;
                    out.push(LeaderCommand::Send(
                        LeaderMessage::Heartbeat {
                            head: last_sent,
                            now_ms: ctx.wall_ms,
                        }
                        .encode(),
                    ));
                }
            }
            _ => {}
        }
    }

    /// Ends a session whose follower was removed by an operator or replaced by a newer session.
    fn check_current(&mut self, ctx: &mut LeaderContext<'_>, out: &mut Vec<LeaderCommand>) {
        let Phase::Streaming(s) = &self.phase else {
            return;
        };
        if ctx.tracker.is_current(&s.follower_id, s.session) {
            return;
        }
        let (code, message) = if ctx.tracker.get(&s.follower_id).is_none() {
            (
                RefusalCode::Removed,
                "this follower was removed from the leader",
            )
        } else {
            (
                RefusalCode::Duplicate,
                "another session of this follower took its place",
            )
        };
        self.refuse(ctx, code, message.into(), out);
    }

    /// Asks for the next batch when records wait and the window has room.
    fn maybe_read(&mut self, ctx: &mut LeaderContext<'_>, out: &mut Vec<LeaderCommand>) {
        let Phase::Streaming(s) = &mut self.phase else {
            return;
        };
        if s.reading || s.next > ctx.head.lsn {
            return;
        }
        let (mut room_records, mut room_bytes) = (
            self.config
                .window_records
                .saturating_sub(s.in_flight_records),
            self.config.window_bytes.saturating_sub(s.in_flight_bytes),
        );
        #[cfg(feature = "sim-bugs")]
        if crate::injected_bugs::IGNORE_WINDOW.load(std::sync::atomic::Ordering::Relaxed) {
            (room_records, room_bytes) = (u64::MAX, u64::MAX);
        }
        if s.in_flight_records == 0 {
            // One record always goes, however large.
            room_records = room_records.max(1);
            room_bytes = room_bytes.max(1);
        }
        if room_records == 0 || room_bytes == 0 {
            return;
        }
        s.reading = true;
        // Never past the head the host vouches for (the log may hold newer records: the node
        // ships only what it checked the follower's credential against).
        let to_head = ctx.head.lsn.0 - s.next.0 + 1;
        out.push(LeaderCommand::ReadLog {
            from: s.next,
            max_records: (self.config.batch_records as u64)
                .min(room_records)
                .min(to_head)
                .max(1) as usize,
            max_bytes: (self.config.batch_bytes as u64).min(room_bytes).max(1) as usize,
        });
    }

    /// The follower applied up to `applied`: what it held of those batches is freed.
    fn release(&mut self, applied: Lsn) {
        let Phase::Streaming(s) = &mut self.phase else {
            return;
        };
        while let Some(&(last, records, bytes)) = s.in_flight.front() {
            if last > applied {
                break;
            }
            s.in_flight.pop_front();
            s.in_flight_records -= records;
            s.in_flight_bytes -= bytes;
        }
    }

    fn refuse(
        &mut self,
        ctx: &mut LeaderContext<'_>,
        code: RefusalCode,
        message: String,
        out: &mut Vec<LeaderCommand>,
    ) {
        let reason = format!("refused: {}: {message}", code.as_str());
        out.push(LeaderCommand::Send(
            LeaderMessage::Refuse { code, message }.encode(),
        ));
        self.close(ctx, reason, out);
    }

    fn close(&mut self, ctx: &mut LeaderContext<'_>, reason: String, out: &mut Vec<LeaderCommand>) {
        if let Phase::Streaming(s) = &self.phase {
            ctx.tracker.session_closed(&s.follower_id, s.session);
            out.push(LeaderCommand::SaveFollowers);
        }
        self.phase = Phase::Closed;
        out.push(LeaderCommand::Close { reason });
    }
}

fn kind_of(msg: &FollowerMessage) -> &'static str {
    match msg {
        FollowerMessage::Hello { .. } => "Hello",
        FollowerMessage::Ack { .. } => "Ack",
    }
}

#[cfg(test)]
mod tests;
