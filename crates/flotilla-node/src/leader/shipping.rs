//! One replication session per follower, on a WebSocket at `GET /v1/replication`.
//!
//! The follower speaks first (`Hello`: who it is, what it holds); the leader decides
//! ([`flotilla_core::handshake`]) and either refuses with a reason or welcomes it and streams
//! every durable record after the follower's position, then heartbeats while idle. Acks are read
//! by a separate task so that progress is visible during a long catch-up.

use crate::node::Node;
use crate::time::{mono_ms, wall_ms};
use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use flotilla_core::handshake::{check_link, decide, Decision, FollowerClaim, LeaderView};
use flotilla_log::LogError;
use flotilla_types::{LogKind, Lsn, Position};
use flotilla_wire::{project_record, FollowerMessage, LeaderMessage, RefusalCode};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;

/// Records per message stop growing past this size.
const BATCH_BYTES: usize = 4 << 20;
const HEARTBEAT: Duration = Duration::from_millis(1000);
/// A session whose follower acknowledged nothing for this long is closed (a follower acks
/// every applied batch and every heartbeat while idle): a dead peer behind a half-open
/// connection must not keep its follower id taken.
const ACK_TIMEOUT_MS: u64 = 30_000;
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

async fn refuse(socket: &mut WebSocket, code: RefusalCode, message: String) {
    tracing::info!(
        "refusing a replication session: {}: {message}",
        code.as_str()
    );
    let msg = LeaderMessage::Refuse { code, message }.encode();
    let _ = socket.send(Message::Binary(Bytes::from(msg))).await;
    let _ = socket.close().await;
}

/// `credential`: what the follower presented; the session ends once it is revoked.
pub async fn serve_session(
    node: Arc<Node>,
    mut socket: WebSocket,
    credential: crate::auth::Credential,
) {
    let first = tokio::time::timeout(Duration::from_secs(10), socket.recv()).await;
    let hello = match first {
        Ok(Some(Ok(Message::Binary(b)))) => FollowerMessage::decode(&b),
        Ok(Some(Ok(other))) => {
            return refuse(
                &mut socket,
                RefusalCode::Protocol,
                format!("expected a binary Hello message, got {other:?}"),
            )
            .await
        }
        _ => return,
    };
    let Some(leader) = node.leader.as_ref() else {
        let message = match node.leader_url() {
            Some(url) => format!("this node is a follower; its leader is {url}"),
            None => "this node is not a leader".into(),
        };
        return refuse(&mut socket, RefusalCode::NotLeader, message).await;
    };
    let (cluster_id, follower_id, follower_url, log_kind, position, chain) = match hello {
        Ok(FollowerMessage::Hello {
            cluster_id,
            follower_id,
            follower_url,
            log_kind,
            position,
            chain,
        }) => (
            cluster_id,
            follower_id,
            follower_url,
            log_kind,
            position,
            chain,
        ),
        Ok(other) => {
            return refuse(
                &mut socket,
                RefusalCode::Protocol,
                format!("expected Hello, got {other:?}"),
            )
            .await
        }
        Err(e) => return refuse(&mut socket, RefusalCode::Protocol, e.to_string()).await,
    };
    if flotilla_types::NodeId::new(&follower_id).is_err() {
        return refuse(
            &mut socket,
            RefusalCode::Protocol,
            format!("invalid follower id {follower_id:?}"),
        )
        .await;
    }
    let head = *leader.head.borrow();
    let stats = leader.log.stats();
    let view = LeaderView {
        cluster_id: leader.cluster_id.clone(),
        epoch: leader.epoch,
        head: head.position,
        head_chain: head.chain,
        first_retained: Lsn(stats.first_lsn),
    };
    let claim = FollowerClaim {
        cluster_id,
        position,
        chain,
    };
    let mut decision = decide(&view, &claim);
    if let Decision::CheckLink { lsn } = decision {
        let log = leader.log.clone();
        let read = tokio::task::spawn_blocking(move || log.read(lsn.0, 1, 1)).await;
        let next = match read {
            Ok(Ok(recs)) => recs
                .first()
                .and_then(|r| flotilla_wire::decode_record(r).ok()),
            _ => None,
        };
        decision = check_link(&claim, lsn, next.as_ref());
    }
    let start_after = match decision {
        Decision::Accept { start_after } => start_after,
        Decision::Refuse { code, message } => return refuse(&mut socket, code, message).await,
        Decision::CheckLink { .. } => unreachable!("resolved above"),
    };
    let welcome = LeaderMessage::Welcome {
        cluster_id: leader.cluster_id.clone(),
        leader_id: node.config.id.to_string(),
        incarnation: leader.incarnation.clone(),
        epoch: leader.epoch,
        start_after,
        head: head.position,
    };
    if socket
        .send(Message::Binary(Bytes::from(welcome.encode())))
        .await
        .is_err()
    {
        return;
    }
    // One session per follower id: the first keeps it (a second session, from a copy of the
    // follower or from another holder of a replicate token, would take its place and its
    // progress).
    if leader.tracker().has_session(&follower_id) {
        return refuse(
            &mut socket,
            RefusalCode::Duplicate,
            format!(
                "another session of follower {follower_id} is streaming; if that follower is \
                 gone, its session ends within {} s",
                ACK_TIMEOUT_MS / 1000
            ),
        )
        .await;
    }
    tracing::info!(follower = %follower_id, position = %position, "follower session opened");
    let session =
        leader
            .tracker()
            .session_opened(&follower_id, &follower_url, log_kind, position, mono_ms());
    leader.save_followers();
    // The last lsn sent on this session: progress reports beyond it are forged.
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(start_after.0));

    let (mut sink, mut stream) = socket.split();
    // Acks: read by their own task so that progress moves during a long catch-up.
    let mut acks = {
        let node = node.clone();
        let follower_id = follower_id.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            let leader = node.leader.as_ref().expect("leader");
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Binary(b) = msg else {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                    continue;
                };
                match FollowerMessage::decode(&b) {
                    Ok(FollowerMessage::Ack {
                        received,
                        durable,
                        applied,
                        ..
                    }) => {
                        let sent = Lsn(sent.load(std::sync::atomic::Ordering::Acquire));
                        let taken = leader.tracker().acked(
                            &follower_id,
                            session,
                            sent,
                            [received, durable, applied],
                            mono_ms(),
                        );
                        match taken {
                            Ok(()) => {}
                            // Removed or replaced: the shipping loop ends the session.
                            Err(flotilla_core::AckRefused::NotCurrent) => {}
                            Err(e) => {
                                tracing::warn!(
                                    follower = %follower_id,
                                    "progress report refused, closing the session: {e}"
                                );
                                break;
                            }
                        }
                    }
                    Ok(other) => {
                        tracing::warn!(follower = %follower_id, "unexpected message {other:?}");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(follower = %follower_id, "undecodable message: {e}");
                        break;
                    }
                }
            }
        })
    };

    let mut head_rx = leader.head.subscribe();
    let mut next = start_after.next();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let outcome: Result<(), String> = async {
        loop {
            let head = head_rx.borrow_and_update().position;
            while next <= head.lsn && leader.tracker().is_current(&follower_id, session) {
                let batch = match fetch(&node, next.0).await {
                    Ok(b) => b,
                    Err(e @ (LogError::Trimmed { .. } | LogError::Corrupt { .. })) => {
                        if matches!(e, LogError::Corrupt { .. }) {
                            tracing::error!(
                                "replication log damaged: {e}; followers that need it bootstrap"
                            );
                        }
                        let msg = LeaderMessage::Refuse {
                            code: RefusalCode::NeedSnapshot,
                            message: format!("record {next} cannot be shipped: {e}"),
                        };
                        let _ = sink.send(Message::Binary(Bytes::from(msg.encode()))).await;
                        return Err("follower fell behind the retained log".into());
                    }
                    Err(e) => return Err(e.to_string()),
                };
                if batch.is_empty() {
                    break;
                }
                next = Lsn(next.0 + batch.len() as u64);
                // Set before the records leave: an ack can only follow their arrival.
                sent.store(next.0 - 1, std::sync::atomic::Ordering::Release);
                let msg = if log_kind == LogKind::Physical {
                    let raw: Vec<&[u8]> = batch.iter().map(|r| r.as_slice()).collect();
                    LeaderMessage::encode_records(&raw)
                } else {
                    // A logical follower gets the records without their page images.
                    let projected = match batch
                        .iter()
                        .map(|r| project_record(r, log_kind))
                        .collect::<Result<Vec<_>, _>>()
                    {
                        Ok(p) => p,
                        Err(e) => {
                            let msg = LeaderMessage::Refuse {
                                code: RefusalCode::NeedSnapshot,
                                message: format!("cannot ship to a logical follower: {e}"),
                            };
                            let _ = sink.send(Message::Binary(Bytes::from(msg.encode()))).await;
                            return Err(e.to_string());
                        }
                    };
                    let raw: Vec<&[u8]> = projected.iter().map(|r| r.as_slice()).collect();
                    LeaderMessage::encode_records(&raw)
                };
                crate::metrics::Counters::add(&node.counters.shipped_bytes, msg.len() as u64);
                sink.send(Message::Binary(Bytes::from(msg)))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            tokio::select! {
                changed = head_rx.changed() => {
                    if changed.is_err() {
                        return Err("the leader is stopping".into());
                    }
                }
                _ = heartbeat.tick() => {
                    // The last record sent on this session (the follower checks nothing was lost).
                    let head = head_rx.borrow().position;
                    let last_sent = Position { epoch: head.epoch, lsn: Lsn(head.lsn.0.min(next.0 - 1)) };
                    let msg = LeaderMessage::Heartbeat { head: last_sent, now_ms: wall_ms() };
                    sink.send(Message::Binary(Bytes::from(msg.encode())))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                _ = node.shutdown.cancelled() => {
                    let _ = sink.close().await;
                    return Ok(());
                }
                // The follower went away: its id is free for its next session at once.
                _ = &mut acks => return Err("the follower closed the session".into()),
            }
            if let Err(denied) = credential.still_allowed(&node).await {
                let msg = LeaderMessage::Refuse {
                    code: RefusalCode::Unauthorized,
                    message: format!("the replication session ends: {denied}"),
                };
                let _ = sink.send(Message::Binary(Bytes::from(msg.encode()))).await;
                let _ = sink.close().await;
                return Err(format!("credentials no longer valid: {denied}"));
            }
            let (current, known, last_ack_ms) = {
                let t = leader.tracker();
                (
                    t.is_current(&follower_id, session),
                    t.get(&follower_id).map(|f| f.last_ack_ms),
                    t.get(&follower_id).map_or(0, |f| f.last_ack_ms),
                )
            };
            if current && mono_ms().saturating_sub(last_ack_ms) > ACK_TIMEOUT_MS {
                let _ = sink.close().await;
                return Err(format!("no acknowledgement for {} s", ACK_TIMEOUT_MS / 1000));
            }
            if !current {
                // Removed by an operator, or (a race of two handshakes) replaced.
                let msg = if known.is_none() {
                    LeaderMessage::Refuse {
                        code: RefusalCode::Removed,
                        message: "this follower was removed from the leader".into(),
                    }
                } else {
                    LeaderMessage::Refuse {
                        code: RefusalCode::Duplicate,
                        message: "another session of this follower took its place".into(),
                    }
                };
                let _ = sink.send(Message::Binary(Bytes::from(msg.encode()))).await;
                let _ = sink.close().await;
                return Err("removed or replaced".into());
            }
            if acks.is_finished() {
                return Err("the follower closed the session".into());
            }
        }
    }
    .await;
    acks.abort();
    if let Err(reason) = outcome {
        tracing::info!(follower = %follower_id, "follower session closed: {reason}");
    }
    leader.tracker().session_closed(&follower_id, session);
    leader.save_followers();
}

/// The durable records from `from` on: from memory when recent, otherwise from the log files.
pub(crate) async fn fetch(node: &Arc<Node>, from: u64) -> Result<Vec<Arc<Vec<u8>>>, LogError> {
    let leader = node.leader.as_ref().expect("leader");
    if let Some(recs) = leader.recent.from(from, BATCH_BYTES) {
        if !recs.is_empty() {
            return Ok(recs);
        }
    }
    let log = leader.log.clone();
    tokio::task::spawn_blocking(move || log.read(from, 10_000, BATCH_BYTES))
        .await
        .expect("log read task")
        .map(|v| v.into_iter().map(Arc::new).collect())
}
