//! One replication session per follower, on a WebSocket at `GET /v1/replication`: a thin host of
//! [`flotilla_core::LeaderSession`] (the simulator hosts the same machine). This file only
//! moves bytes: messages from the socket, the durable head, timers and log reads in as events;
//! sends, reads, saves of the follower list and the close out as commands.

use crate::node::Node;
use crate::time::{mono_ms, wall_ms};
use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use flotilla_core::{
    LeaderCommand, LeaderContext, LeaderEvent, LeaderIdentity, LeaderSession, ShippingConfig,
};
use flotilla_types::Lsn;
use flotilla_wire::{LeaderMessage, RefusalCode};
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the session's timers run (heartbeats, timeouts, the credential check).
const TICK: Duration = Duration::from_millis(200);
/// A send the follower does not take within this long ends the session (as long as the
/// leader's ack timeout: a follower that reads nothing acknowledges nothing either).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the closing handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages read from the follower ahead of the session (acks are small; the follower sends
/// one per applied batch and heartbeat).
const INCOMING_QUEUE: usize = 64;

/// `credential`: what the follower presented; the session ends once it is revoked.
pub async fn serve_session(
    node: Arc<Node>,
    socket: WebSocket,
    credential: crate::auth::Credential,
) {
    let (mut sink, mut stream) = socket.split();
    let Some(leader) = node.leader() else {
        let message = match node.leader_url() {
            Some(url) => format!("this node is a follower; its leader is {url}"),
            None => "this node is not a leader".into(),
        };
        tracing::info!("refusing a replication session: {message}");
        let msg = LeaderMessage::Refuse {
            code: RefusalCode::NotLeader,
            message,
        };
        let _ = sink.send(Message::Binary(Bytes::from(msg.encode()))).await;
        let _ = sink.close().await;
        return;
    };
    let identity = LeaderIdentity {
        cluster_id: leader.cluster_id.clone(),
        leader_id: node.config.id.to_string(),
        incarnation: leader.incarnation.clone(),
        epoch: leader.epoch,
    };
    let mut session = LeaderSession::new(ShippingConfig::default(), identity, mono_ms());
    // The socket is read by its own task, so that acks are taken while a send waits.
    let (incoming_tx, mut incoming) = mpsc::channel::<LeaderEvent>(INCOMING_QUEUE);
    let reader = tokio::spawn(async move {
        let closed = loop {
            let ev = match stream.next().await {
                Some(Ok(Message::Binary(b))) => LeaderEvent::Received(b.to_vec()),
                Some(Ok(Message::Text(_))) => LeaderEvent::Unexpected("a text frame".into()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) | None => {
                    break "the follower closed the session".to_string()
                }
                Some(Err(e)) => break format!("connection error: {e}"),
            };
            if incoming_tx.send(ev).await.is_err() {
                return;
            }
        };
        let _ = incoming_tx
            .send(LeaderEvent::Closed { reason: closed })
            .await;
    });
    let mut head_rx = leader.head.subscribe();
    // The head the session may ship up to: taken *before* the follower's credential is
    // checked, and used only once the check passed, so that nothing committed after a
    // revocation goes out (the session never reads past it).
    let mut head = *head_rx.borrow_and_update();
    let mut tick = tokio::time::interval(TICK);
    let mut commands: VecDeque<LeaderCommand> = VecDeque::new();
    if let Err(denied) = credential.still_allowed(&node).await {
        let ev = LeaderEvent::Revoked {
            reason: denied.to_string(),
        };
        commands.extend(step(&leader, &mut session, head, ev));
    }
    loop {
        while let Some(cmd) = commands.pop_front() {
            let answer = match cmd {
                LeaderCommand::Send(bytes) => {
                    crate::metrics::Counters::add(&node.counters.shipped_bytes, bytes.len() as u64);
                    // A peer that stopped reading blocks the send: bounded in time (and by the
                    // node stopping), so that its follower id is not held for ever.
                    tokio::select! {
                        sent = tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Binary(Bytes::from(bytes)))) => match sent {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => Some(LeaderEvent::Closed {
                                reason: format!("sending failed: {e}"),
                            }),
                            Err(_) => Some(LeaderEvent::Closed {
                                reason: format!(
                                    "the follower read nothing for {} s",
                                    SEND_TIMEOUT.as_secs()
                                ),
                            }),
                        },
                        _ = node.shutdown.cancelled() => Some(LeaderEvent::Closed {
                            reason: "the leader is stopping".into(),
                        }),
                    }
                }
                LeaderCommand::ReadLog {
                    from,
                    max_records,
                    max_bytes,
                } => Some(LeaderEvent::LogRead {
                    from,
                    result: leader.read_for_follower(from, max_records, max_bytes).await,
                }),
                LeaderCommand::SaveFollowers => {
                    leader.save_followers();
                    None
                }
                LeaderCommand::Close { reason } => {
                    tracing::info!(
                        follower = %session.follower_id().unwrap_or("?"),
                        "replication session closed: {reason}"
                    );
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
                    reader.abort();
                    return;
                }
            };
            if let Some(ev) = answer {
                commands.extend(step(&leader, &mut session, head, ev));
            }
        }
        let ev = tokio::select! {
            ev = incoming.recv() => ev.unwrap_or(LeaderEvent::Closed {
                reason: "the follower closed the session".into(),
            }),
            // The credential is checked before new records go out: a revocation commit is
            // the last thing a revoked follower receives.
            changed = head_rx.changed() => match changed {
                Ok(()) => {
                    let moved = *head_rx.borrow_and_update();
                    match credential.still_allowed(&node).await {
                        Ok(()) => {
                            head = moved;
                            LeaderEvent::HeadMoved
                        }
                        Err(denied) => LeaderEvent::Revoked { reason: denied.to_string() },
                    }
                }
                Err(_) => LeaderEvent::Closed { reason: "the leader is stopping".into() },
            },
            _ = tick.tick() => match credential.still_allowed(&node).await {
                // A cluster member that stepped down ships no more: its follower finds the
                // new leader (it would otherwise wait here for commits that never come).
                Ok(()) if !node.still_leads(&leader) => LeaderEvent::Closed {
                    reason: "this node no longer leads".into(),
                },
                Ok(()) => LeaderEvent::Tick,
                Err(denied) => LeaderEvent::Revoked { reason: denied.to_string() },
            },
            _ = node.shutdown.cancelled() => LeaderEvent::Closed {
                reason: "the leader is stopping".into(),
            },
        };
        commands.extend(step(&leader, &mut session, head, ev));
    }
}

/// Hands one event to the session with the leader's state as it is now.
fn step(
    leader: &crate::leader::LeaderState,
    session: &mut LeaderSession,
    head: crate::leader::Head,
    ev: LeaderEvent,
) -> Vec<LeaderCommand> {
    let first_retained = Lsn(leader.log.first_lsn());
    let progress = matches!(ev, LeaderEvent::Received(_));
    let commands = {
        let mut tracker = leader.tracker();
        let mut ctx = LeaderContext {
            tracker: &mut tracker,
            head: head.position,
            head_chain: head.chain,
            first_retained,
            now_ms: mono_ms(),
            wall_ms: wall_ms(),
        };
        session.handle(&mut ctx, ev)
    };
    // A hello or an ack may have moved a follower's durable position: semi-sync writes look.
    if progress {
        leader.replicated.notify();
    }
    commands
}
