//! Performs the commands of a [`FollowerSession`] and feeds it events.

use super::apply;
use super::bootstrap::{bootstrap, BootstrapError};
use super::flush;
use super::leader_finder::LeaderFinder;
use super::transport::{self, Connection, Tagged};
use super::{FollowerHost, FollowerShared};
use crate::fatal::{Fatal, FatalSender};
use crate::metrics::Counters;
use crate::time::mono_ms;
use flotilla_core::{FollowerCommand, FollowerConfig, FollowerEvent, FollowerSession};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Events of the apply thread, bootstrap and timer carry tag 0; the transport's carry their
/// connection's number (from 1), and the session ignores those of an earlier connection.
const LOCAL: u64 = 0;

/// Events waiting for the session: what one connection and the local work report.
const EVENT_QUEUE: usize = 256;

/// Runs the follower's replication until the node stops: `shared` is this follower's state,
/// `leader_url` the leader it follows.
pub async fn drive(
    node: Arc<FollowerHost>,
    shared: Arc<FollowerShared>,
    leader_url: String,
    fatal: FatalSender,
) {
    let initial = shared
        .initial_db
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let local = initial
        .as_ref()
        .map(|d| (d.meta().position, d.meta().chain));
    let replica: apply::SharedReplica = std::sync::Arc::new(std::sync::Mutex::new(initial));
    let apply_tx = apply::spawn(node.db_path.clone(), node.replica.clone(), replica.clone());
    *shared.apply.lock().unwrap_or_else(|p| p.into_inner()) = Some(apply_tx.clone());
    let finder = Arc::new(LeaderFinder::new(&leader_url, node.peers.clone()));
    let mut config = FollowerConfig::new(&node.id, &node.url);
    config.log_kind = node.replica.kind;
    let mut session = FollowerSession::new(config, local, node.identity.cluster_id())
        .with_leader_incarnation(node.identity.leader_incarnation());
    // Bounded: the transport stops reading its socket while the session is behind (TCP then
    // holds the leader back), the flush thread waits to report.
    let (ev_tx, mut ev_rx) = mpsc::channel::<Tagged>(EVENT_QUEUE);
    let flush_tx = flush::spawn(node.db_path.clone(), ev_tx.clone(), LOCAL, fatal.clone());
    let mut conn: Option<Connection> = None;
    let mut cmds: VecDeque<FollowerCommand> = session.start(mono_ms()).into();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // An event taken from the queue while draining it after an apply, not yet handled.
    let mut held: Option<Tagged> = None;
    loop {
        while let Some(cmd) = cmds.pop_front() {
            match cmd {
                FollowerCommand::Connect => {
                    let generation = session.connection();
                    let credentials = transport::Credentials {
                        tls: node.peers.tls.clone(),
                        token: node.peers.token.clone(),
                    };
                    // The cluster (if any) is asked who leads now: at the start (the node
                    // given may not lead), and after a session ended (the leader may be gone).
                    conn = Some(transport::connect(
                        finder.clone(),
                        credentials,
                        generation,
                        ev_tx.clone(),
                    ));
                }
                FollowerCommand::Send(msg) => {
                    if let Some(c) = &conn {
                        if c.outgoing.try_send(msg.encode()).is_err() {
                            tracing::debug!(
                                "the leader is not reading: an acknowledgement waits for the next"
                            );
                        }
                    }
                }
                FollowerCommand::RememberLeader { incarnation } => {
                    if let Err(e) = node.identity.remember_leader(&incarnation) {
                        fatal.report(Fatal::Identity(e.to_string()));
                        return;
                    }
                }
                FollowerCommand::Disconnect => {
                    // Dropping the sender closes the socket; the task's later events are stale.
                    conn = None;
                }
                FollowerCommand::Apply(records) => {
                    // In place: the batch is visible as soon as it commits, with no thread to
                    // wake first; this worker's other tasks move to another thread meanwhile.
                    let res = tokio::task::block_in_place(|| apply::apply(&replica, &records));
                    let event = match res {
                        Ok((position, chain)) => {
                            let now = crate::time::wall_us();
                            for r in &records {
                                node.counters
                                    .apply_lag
                                    .record(now.saturating_sub(r.commit_time_us));
                            }
                            Counters::add(
                                &node.counters.applied_transactions,
                                records.len() as u64,
                            );
                            Counters::add(&node.counters.apply_batches, 1);
                            node.position.send_replace(position);
                            FollowerEvent::Applied { position, chain }
                        }
                        Err(e) => {
                            tracing::warn!("apply failed: {e}");
                            FollowerEvent::ApplyFailed {
                                disk_full: e.is_disk_full(),
                                reason: e.to_string(),
                            }
                        }
                    };
                    let jitter: u16 = rand::random_range(0..=1000);
                    // What arrived meanwhile joins the queue first, so that the next batch
                    // takes all of it (as when a thread applied while this task received).
                    for (tag, ev) in take_arrived(&mut ev_rx, &mut held) {
                        cmds.extend(session.handle_connection_event(mono_ms(), jitter, tag, ev));
                    }
                    cmds.extend(session.handle(mono_ms(), jitter, event));
                }
                FollowerCommand::Flush { seq, .. } => {
                    if flush_tx.send(seq).is_err() {
                        // The thread stopped after a failed flush and reported it.
                        return;
                    }
                }
                FollowerCommand::Bootstrap => {
                    conn = None;
                    shared.update(|s| s.phase = "bootstrapping");
                    let (n, state, url, a, events, fatal) = (
                        node.clone(),
                        shared.clone(),
                        finder.current(),
                        apply_tx.clone(),
                        ev_tx.clone(),
                        fatal.clone(),
                    );
                    tokio::spawn(async move {
                        let ev = match bootstrap(n, state, url, a).await {
                            Err(BootstrapError::Fatal(reason)) => {
                                fatal.report(Fatal::Bootstrap(reason));
                                return;
                            }
                            Ok((position, chain, cluster_id)) => FollowerEvent::BootstrapFinished {
                                position,
                                chain,
                                cluster_id,
                            },
                            Err(BootstrapError::Retry(reason)) => {
                                tracing::warn!("bootstrap failed: {reason}");
                                FollowerEvent::BootstrapFailed { reason }
                            }
                        };
                        let _ = events.send((LOCAL, ev)).await;
                    });
                }
            }
        }
        shared.update(|s| {
            s.phase = session.phase().as_str();
            s.last_error = session.last_error().map(str::to_string);
            s.leader_head = session.leader_head();
            s.received = session.received();
            s.durable = session.durable();
            let following = finder.current();
            s.leader_url = (following != leader_url).then_some(following);
            let caught_up = s.phase == "streaming" && *node.position.borrow() >= s.leader_head;
            s.behind_since_ms = match (caught_up, s.behind_since_ms) {
                (true, _) => None,
                (false, since) => Some(since.unwrap_or_else(mono_ms)),
            };
        });
        let (tag, event) = match held.take() {
            Some(tagged) => tagged,
            None => tokio::select! {
                Some(tagged) = ev_rx.recv() => tagged,
                _ = tick.tick() => (LOCAL, FollowerEvent::Tick),
                _ = node.shutdown.cancelled() => return,
            },
        };
        let jitter: u16 = rand::random_range(0..=1000);
        if tag != LOCAL {
            if matches!(event, FollowerEvent::Received(_))
                && conn.as_ref().is_some_and(|c| c.generation == tag)
            {
                shared.update(|s| s.heard_ms = Some(mono_ms()));
            }
            // The transport's events: the session ignores those of an earlier connection.
            if let FollowerEvent::ConnectionLost { reason } = &event {
                if conn.as_ref().is_some_and(|c| c.generation == tag) {
                    tracing::info!("replication session lost: {reason}");
                    conn = None;
                }
            }
            cmds.extend(session.handle_connection_event(mono_ms(), jitter, tag, event));
            continue;
        }
        if let FollowerEvent::BootstrapFinished { position, .. } = &event {
            node.position.send_replace(*position);
            if let Some(k) = &node.keyring {
                if !k.has_any().await {
                    tracing::warn!(
                        "authentication is on here, but the cluster has no API tokens: every \
                         request to this follower is refused until the leader makes some \
                         (start the leader with --auth: it writes an admin token)"
                    );
                }
            }
        }
        cmds.extend(session.handle(mono_ms(), jitter, event));
    }
}

/// After an apply: takes the connection's records that arrived meanwhile, in order, up to the
/// first other event, which is put in `held` to wait its turn (the driver handles it next).
///
/// Nothing is taken while an event is held: taking records from behind it would reorder them,
/// and a second held event would replace the first. (That lost a `Flushed` answer once: the
/// follower then waited for a flush that never ended, and never said hello again.)
fn take_arrived(rx: &mut mpsc::Receiver<Tagged>, held: &mut Option<Tagged>) -> Vec<Tagged> {
    let mut arrived = Vec::new();
    if held.is_some() {
        return arrived;
    }
    for _ in 0..EVENT_QUEUE {
        match rx.try_recv() {
            Ok((tag, ev @ FollowerEvent::Received(_))) if tag != LOCAL => arrived.push((tag, ev)),
            Ok(other) => {
                *held = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    arrived
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_wire::LeaderMessage;

    fn heartbeat() -> FollowerEvent {
        FollowerEvent::Received(LeaderMessage::Heartbeat {
            head: Default::default(),
            now_ms: 0,
        })
    }

    fn kind(e: &Tagged) -> String {
        match &e.1 {
            FollowerEvent::Received(_) => format!("{}:received", e.0),
            FollowerEvent::Flushed { seq } => format!("{}:flushed {seq}", e.0),
            FollowerEvent::ConnectionLost { .. } => format!("{}:lost", e.0),
            other => format!("{}:{other:?}", e.0),
        }
    }

    /// Two applies in a row with a flush answer and a lost connection queued behind records:
    /// every event is handled once, in the order it arrived.
    #[tokio::test]
    async fn events_taken_after_applies_are_neither_lost_nor_reordered() {
        let (tx, mut rx) = mpsc::channel::<Tagged>(EVENT_QUEUE);
        let sent = [
            (1, heartbeat()),
            (LOCAL, FollowerEvent::Flushed { seq: 7 }),
            (1, heartbeat()),
            (
                1,
                FollowerEvent::ConnectionLost {
                    reason: "cut".into(),
                },
            ),
            (LOCAL, FollowerEvent::Flushed { seq: 8 }),
        ];
        for e in sent.clone() {
            tx.send(e).await.unwrap();
        }
        let mut handled = Vec::new();
        let mut held = None;
        // The driver: applies (each taking what arrived), then the held event, then the queue.
        for _ in 0..10 {
            handled.extend(take_arrived(&mut rx, &mut held));
            handled.extend(take_arrived(&mut rx, &mut held));
            match held.take() {
                Some(e) => handled.push(e),
                None => match rx.try_recv() {
                    Ok(e) => handled.push(e),
                    Err(_) => break,
                },
            }
        }
        let expected: Vec<String> = sent.iter().map(kind).collect();
        assert_eq!(handled.iter().map(kind).collect::<Vec<_>>(), expected);
    }
}
