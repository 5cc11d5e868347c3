//! One link to a peer data centre: performs the commands of a `FollowerSession` whose
//! "apply" is a merge through this node's writer.

use super::Link;
use crate::follower::leader_finder::LeaderFinder;
use crate::follower::transport::{self, Connection, Tagged};
use crate::leader::{ChangeError, WriteJob};
use crate::node::Node;
use crate::time::mono_ms;
use flotilla_core::{FollowerCommand, FollowerConfig, FollowerEvent, FollowerSession};
use flotilla_types::{Chain, LogKind, LogRecord, OriginName, Position};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Events of the timer carry tag 0; the transport's carry their connection's number.
const LOCAL: u64 = 0;
const EVENT_QUEUE: usize = 256;
/// How long a transaction waits for the changes it depends on to arrive over other links
/// before the batch is given up (and asked for again after a pause).
const WAIT_FOR_DEPENDENCIES_MS: u64 = 3_000;

/// Runs the link until `stop` (the node stops, or stops leading its data centre). `forwards`:
/// take from the peer changes made elsewhere too (star and ring topologies); otherwise only
/// those made at the peer.
pub async fn drive(
    node: Arc<Node>,
    link: Arc<Link>,
    own_dc: OriginName,
    forwards: bool,
    stop: tokio_util::sync::CancellationToken,
) {
    let Some(leader) = node.leader() else { return };
    let writer = leader.writer.clone();
    link.update(|v| {
        v.phase = "connecting";
        v.last_error = None;
    });
    let db_path = node.db_path.clone();
    let peer = link.peer.clone();
    // The writer makes the multi-leader tables when it starts: until then there is no
    // deployment to check the peer against.
    let mut deployment = None;
    for _ in 0..100 {
        let path = db_path.clone();
        let read = tokio::task::spawn_blocking(move || {
            flotilla_store::read_data_centre(&flotilla_store::open_reader(&path)?)
        })
        .await;
        if let Ok(Ok(Some((_, d)))) = read {
            deployment = Some(d);
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.cancelled() => return,
        }
    }
    let Some(deployment) = deployment else {
        link.update(|v| {
            v.phase = "stopped";
            v.last_error = Some("this data centre's multi-leader tables were not made".into());
        });
        return;
    };
    let local = tokio::task::spawn_blocking(move || {
        let conn = flotilla_store::open_reader(&db_path)?;
        flotilla_store::link_position(&conn, &peer)
    })
    .await;
    let link_file = node
        .db_path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join(format!("dc-link-{}.json", link.peer));
    let local = match local {
        // Where it merged last (in the database), or, further, what it passed by since and
        // made durable here (the peer's log may be trimmed up to there).
        Ok(Ok(l)) => match read_link_file(&link_file) {
            Some(f) if f.0.lsn > l.0.lsn => f,
            _ => l,
        },
        Ok(Err(e)) => {
            link.update(|v| {
                v.phase = "stopped";
                v.last_error = Some(format!("cannot read where the link stopped: {e}"));
            });
            return;
        }
        Err(_) => return,
    };
    link.update(|v| v.read_through = local.0.lsn.0);
    let finder = Arc::new(LeaderFinder::new(&link.url, node.peers.clone()));
    // The peer must be the data centre it is configured as: merging a node that is another
    // data centre (or this one) under the wrong name would mix up their histories.
    let peer_cluster = loop {
        match peer_identity(&node, &finder, &link.peer, &own_dc, &deployment).await {
            Ok(cluster) => break cluster,
            Err(why) => {
                // A peer that does not answer is not refused: the link keeps trying.
                let unreachable = why.starts_with("no node answers");
                link.update(|v| {
                    v.phase = if unreachable { "connecting" } else { "refused" };
                    v.last_error = Some(why.clone());
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    };
    let mut config = FollowerConfig::new(&format!("dc-{own_dc}"), &node.url);
    config.log_kind = LogKind::Logical;
    // A link back after a cut should take up again within a second: a data centre catching up
    // on another's writes matters more than a reconnect attempt a second to a peer that is down.
    config.backoff.max_ms = 1_000;
    // The peer's cluster is its own (a data centre may be a failover cluster, whose members
    // share a cluster id): the session is of the peer's cluster; the deployment, checked
    // above, is what the data centres share.
    let mut session = FollowerSession::new(config, Some(local), Some(peer_cluster.clone()));
    let (ev_tx, mut ev_rx) = mpsc::channel::<Tagged>(EVENT_QUEUE);
    let mut conn: Option<Connection> = None;
    let mut cmds: VecDeque<FollowerCommand> = session.start(mono_ms()).into();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // The chains of the last positions applied (a `Flush` names one of them).
    let mut applied_chains: VecDeque<(Position, Chain)> = VecDeque::new();
    loop {
        while let Some(cmd) = cmds.pop_front() {
            match cmd {
                FollowerCommand::Connect => {
                    let credentials = transport::Credentials {
                        tls: node.peers.tls.clone(),
                        token: node.peers.token.clone(),
                    };
                    conn = Some(transport::connect(
                        finder.clone(),
                        credentials,
                        session.connection(),
                        ev_tx.clone(),
                    ));
                }
                FollowerCommand::Send(msg) => {
                    if let Some(c) = &conn {
                        let _ = c.outgoing.try_send(msg.encode());
                    }
                }
                FollowerCommand::Disconnect => conn = None,
                // The peer's incarnation is only kept in memory: the chain check at every
                // handshake is what tells a peer that started another history.
                FollowerCommand::RememberLeader { .. } => {}
                FollowerCommand::Apply(records) => {
                    let event =
                        merge_batch(&node, &writer, &link, &own_dc, forwards, &records).await;
                    if let FollowerEvent::Applied { position, chain } = &event {
                        applied_chains.push_back((*position, *chain));
                        if applied_chains.len() > 64 {
                            applied_chains.pop_front();
                        }
                    }
                    cmds.extend(session.handle(mono_ms(), rand::random_range(0..=1000), event));
                }
                // The merges are durable once the writer answers (their commits are in this
                // node's log); what the link passed by becomes durable when its position is
                // written here — only then does the peer hear it (its retention follows this).
                FollowerCommand::Flush { seq, through } => {
                    let chain = applied_chains
                        .iter()
                        .find(|(p, _)| *p == through)
                        .map(|(_, c)| *c);
                    // Beside the next batch's merges (the session allows one flush in flight):
                    // its answer comes back as an event.
                    let (path, events, view) = (link_file.clone(), ev_tx.clone(), link.clone());
                    tokio::spawn(async move {
                        if let Some(chain) = chain {
                            let target = path.clone();
                            let written = tokio::task::spawn_blocking(move || {
                                write_link_file(&target, through, chain)
                            })
                            .await;
                            if !matches!(written, Ok(Ok(()))) {
                                let why = match written {
                                    Ok(Err(e)) => e.to_string(),
                                    _ => "the task stopped".into(),
                                };
                                // Not durable: the peer keeps its log from the last position
                                // that was (no flush is answered any more).
                                view.update(|v| {
                                    v.last_error = Some(format!(
                                        "cannot save the link's position in {}: {why}",
                                        path.display()
                                    ))
                                });
                                return;
                            }
                        }
                        let _ = events.send((LOCAL, FollowerEvent::Flushed { seq })).await;
                    });
                }
                FollowerCommand::Bootstrap => {
                    conn = None;
                    // The peer's log no longer holds this link's position (a new leader of
                    // this data centre took up from the database, whose position lags what the
                    // old leader had read; or this data centre is a copy): take up at the
                    // log's first transaction if what the log dropped holds nothing this data
                    // centre lacks.
                    let event = match take_up_at_log_start(
                        &node, &finder, &link.peer, &own_dc, forwards,
                    )
                    .await
                    {
                        Ok((position, chain)) => {
                            let path = link_file.clone();
                            let written = tokio::task::spawn_blocking(move || {
                                write_link_file(&path, position, chain)
                            })
                            .await;
                            match written {
                                Ok(Ok(())) => {
                                    tracing::warn!(
                                        peer = %link.peer,
                                        "the peer's log no longer holds this link's position; \
                                         it lacks nothing the log dropped: taking up at {position}"
                                    );
                                    applied_chains.clear();
                                    FollowerEvent::BootstrapFinished {
                                        position,
                                        chain,
                                        cluster_id: peer_cluster.clone(),
                                    }
                                }
                                Ok(Err(e)) => FollowerEvent::BootstrapFailed {
                                    reason: format!(
                                        "cannot save the link's position in {}: {e}",
                                        link_file.display()
                                    ),
                                },
                                Err(_) => FollowerEvent::BootstrapFailed {
                                    reason: "the task stopped".into(),
                                },
                            }
                        }
                        Err(reason) => FollowerEvent::BootstrapFailed { reason },
                    };
                    cmds.extend(session.handle(mono_ms(), rand::random_range(0..=1000), event));
                }
            }
        }
        link.update(|v| {
            v.phase = session.phase().as_str();
            v.last_error = session.last_error().map(|e| in_link_terms(e, &link.peer));
            v.peer_head = session.leader_head().lsn.0;
            if let Some(p) = session.applied() {
                v.read_through = p.lsn.0;
            }
        });
        let (tag, event) = tokio::select! {
            Some(tagged) = ev_rx.recv() => tagged,
            _ = tick.tick() => (LOCAL, FollowerEvent::Tick),
            _ = stop.cancelled() => return,
        };
        let jitter: u16 = rand::random_range(0..=1000);
        if tag != LOCAL {
            if matches!(event, FollowerEvent::Received(_)) {
                link.update(|v| v.heard_ms = Some(mono_ms()));
            }
            if let FollowerEvent::ConnectionLost { reason } = &event {
                if conn.as_ref().is_some_and(|c| c.generation == tag) {
                    tracing::info!(peer = %link.peer, "data centre link lost: {reason}");
                    conn = None;
                }
            }
            cmds.extend(session.handle_connection_event(mono_ms(), jitter, tag, event));
            continue;
        }
        cmds.extend(session.handle(mono_ms(), jitter, event));
    }
}

/// The link file: `{"version": 1, "epoch", "lsn", "chain"}`, the position of the peer's log
/// this data centre has read through durably.
fn write_link_file(path: &std::path::Path, at: Position, chain: Chain) -> std::io::Result<()> {
    let body = serde_json::json!({
        "version": 1,
        "epoch": at.epoch.0,
        "lsn": at.lsn.0,
        "chain": chain.0,
    });
    flotilla_store::atomic_file::write_atomically(path, body.to_string().as_bytes())
}

fn read_link_file(path: &std::path::Path) -> Option<(Position, Chain)> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    if v["version"] != 1 {
        return None;
    }
    Some((
        Position::new(v["epoch"].as_u64()?, v["lsn"].as_u64()?),
        Chain(v["chain"].as_u64()?),
    ))
}

/// The replication session's words are a follower's; a link's user reads them as a data
/// centre's.
fn in_link_terms(error: &str, peer: &OriginName) -> String {
    if error.contains("belongs to cluster") {
        format!(
            "peer data centre {peer} is of another cluster (data centres of one deployment share \
             their cluster: start a new data centre with an empty data directory and its peers \
             running): {error}"
        )
    } else {
        error.to_string()
    }
}

/// Asks the peer (its leader) which data centre it is.
async fn peer_identity(
    node: &Node,
    finder: &LeaderFinder,
    peer: &OriginName,
    own_dc: &OriginName,
    deployment: &str,
) -> Result<String, String> {
    finder.refresh().await;
    let url = finder.current();
    let req = node
        .peers
        .authorized(node.peers.http.get(format!("{url}/v1/dc")))
        .timeout(Duration::from_secs(5));
    let answer: serde_json::Value = match req.send().await {
        Ok(r) if r.status().as_u16() == 404 => {
            return Err(format!(
                "the node at {url} is not a data centre's leader (started without --dc): it \
                 cannot be peer data centre {peer}"
            ))
        }
        Ok(r) if r.status().is_success() => r.json().await.map_err(|e| e.to_string())?,
        Ok(r) if matches!(r.status().as_u16(), 401 | 403) => {
            return Err(crate::follower::transport::refused_by_leader(
                &url,
                r.status().as_u16(),
            ))
        }
        Ok(r) => return Err(format!("the peer at {url} answered {}", r.status())),
        Err(e) => {
            let chain = crate::peer::error_chain(&e);
            let tls = chain.contains("certificate") || chain.to_ascii_lowercase().contains("tls");
            return Err(if (e.is_connect() || e.is_timeout()) && !tls {
                format!("no node answers at {url} — is it running?")
            } else {
                format!("{url}: {chain}")
            });
        }
    };
    let theirs = answer["dc"].as_str().unwrap_or("");
    if theirs == own_dc.as_str() {
        return Err(format!(
            "the node at {url} says it is data centre {theirs}, which is this node's own: two \
             nodes cannot be the same data centre"
        ));
    }
    if theirs != peer.as_str() {
        return Err(format!(
            "the node at {url} is data centre {theirs}, not {peer} as --peer-dc says"
        ));
    }
    let their_deployment = answer["deployment"].as_str().unwrap_or("");
    if their_deployment != deployment {
        return Err(format!(
            "peer data centre {peer} at {url} is of another deployment ({their_deployment}, this \
             data centre's is {deployment}): data centres exchange only within their deployment \
             (start a new data centre with an empty data directory while its peers run, and it \
             joins theirs)"
        ));
    }
    match answer["cluster_id"].as_str() {
        Some(c) if !c.is_empty() => Ok(c.to_string()),
        _ => Err(format!("the node at {url} did not say its cluster id")),
    }
}

/// Where a link whose position the peer's log no longer holds can take up: the log's first
/// transaction (claimed as read), provided the transactions the log dropped hold nothing this
/// data centre lacks. Of the peer's own transactions that is certain when its newest one is
/// there or earlier and merged here; a later one of its own carries the one before it among
/// its dependencies, so a gap makes the merge wait with the gap named instead of skipping it.
/// A link that forwards (star, ring) takes other data centres' transactions too: it takes up
/// only once it has everything the peer has of theirs (until then it asks again).
async fn take_up_at_log_start(
    node: &Node,
    finder: &LeaderFinder,
    peer: &OriginName,
    own_dc: &OriginName,
    forwards: bool,
) -> Result<(Position, Chain), String> {
    let gone = |detail: String| {
        format!(
            "{peer}'s log no longer holds transactions this data centre has not merged \
             ({detail}): start this data centre again from a copy (an empty data directory \
             while its peers run)"
        )
    };
    finder.refresh().await;
    let url = finder.current();
    let req = node
        .peers
        .authorized(node.peers.http.get(format!("{url}/v1/dc?log_start=true")))
        .timeout(Duration::from_secs(10));
    let answer: serde_json::Value = match req.send().await {
        Ok(r) if r.status().is_success() => r.json().await.map_err(|e| e.to_string())?,
        Ok(r) => return Err(format!("asking {url} where its log starts: {}", r.status())),
        Err(e) => return Err(format!("asking {url} where its log starts: {e}")),
    };
    let start = &answer["log_start"];
    let (Some(epoch), Some(lsn), Some(chain)) = (
        start["epoch"].as_u64(),
        start["lsn"].as_u64(),
        start["chain"].as_u64(),
    ) else {
        return Err(gone(format!(
            "{url} did not say where its log starts (an older version, or an empty log)"
        )));
    };
    let theirs: Vec<(String, u64)> = start["vv"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(o, l)| Some((o.clone(), l.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let path = node.db_path.clone();
    let ours = tokio::task::spawn_blocking(move || {
        flotilla_store::read_version_vector(&flotilla_store::open_reader(&path)?)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("reading this data centre's version vector: {e}"))?;
    for (origin, their_lsn) in theirs {
        let Ok(o) = OriginName::new(&origin) else {
            continue;
        };
        let have = ours.get(&o).0;
        if o == *own_dc || have >= their_lsn {
            continue;
        }
        if o == *peer {
            // Its newest transaction is in the log: what matters is its newest one the log
            // dropped (at or before where it starts), which the peer read off the dependencies
            // of its first one after.
            let dropped = if their_lsn > lsn {
                match start["own_before"].as_u64() {
                    Some(b) => b,
                    None => {
                        return Err(format!(
                            "{peer}'s log no longer holds this link's position, and {peer} \
                             could not tell which of its own transactions its log dropped; \
                             asking again"
                        ))
                    }
                }
            } else {
                their_lsn
            };
            if have >= dropped {
                continue;
            }
            return Err(gone(format!(
                "its own transactions after {have} through {dropped}; its log starts at {lsn}"
            )));
        }
        if forwards {
            return Err(format!(
                "{peer}'s log no longer holds this link's position; taking up where it starts \
                 ({lsn}) waits until this data centre has {origin}'s transactions through \
                 {their_lsn} as {peer} has (it has {have})"
            ));
        }
    }
    Ok((Position::new(epoch, lsn), Chain(chain)))
}

/// Merges a batch of the peer's records, in order, as one writer job (each its own commit,
/// the log synced once); `Applied` at its last record, or `ApplyFailed` (the session asks for
/// the batch again after a pause; what was merged is not merged twice).
async fn merge_batch(
    node: &Node,
    writer: &mpsc::Sender<WriteJob>,
    link: &Link,
    own_dc: &OriginName,
    forwards: bool,
    records: &[LogRecord],
) -> FollowerEvent {
    let mut jobs = Vec::new();
    let mut passed = 0u64;
    for r in records {
        let Some(stamp) = &r.exchange else {
            passed += 1;
            continue;
        };
        // A device's transaction merged at the peer counts as made there.
        let made_elsewhere = stamp.origin != link.peer
            && !flotilla_store::devices::is_device_origin_of(
                stamp.origin.as_str(),
                link.peer.as_str(),
            );
        if stamp.origin == *own_dc || (made_elsewhere && !forwards) {
            passed += 1;
            continue;
        }
        let Some(changes) = stamp.original.clone().or_else(|| r.rows.clone()) else {
            return FollowerEvent::ApplyFailed {
                reason: format!("{}'s record {} has no row changes", link.peer, r.lsn),
                disk_full: false,
            };
        };
        jobs.push(crate::leader::MergeJob {
            stamp: stamp.clone(),
            changes,
            peer: link.peer.clone(),
            peer_at: Some((r.position(), r.chain)),
        });
    }
    link.update(|v| v.passed += passed);
    let started = mono_ms();
    while !jobs.is_empty() {
        let (tx, rx) = oneshot::channel();
        let batch = std::mem::take(&mut jobs);
        if writer
            .send(WriteJob::Merge {
                jobs: batch,
                reply: tx,
            })
            .await
            .is_err()
        {
            return stopped();
        }
        let Ok((merged, result, rest)) = rx.await else {
            return stopped();
        };
        jobs = rest;
        if merged > 0 {
            // Tokens made in other data centres arrive with their transactions.
            if let Some(k) = &node.keyring {
                k.invalidate();
            }
        }
        link.update(|v| {
            v.merged += merged as u64;
            if merged > 0 {
                v.last_merge_lag_ms = records
                    .iter()
                    .rev()
                    .find(|r| r.exchange.is_some())
                    .map(|r| crate::time::wall_us().saturating_sub(r.commit_time_us) / 1000);
            }
        });
        match result {
            Ok(()) => break,
            Err(ChangeError::Merge(flotilla_store::MergeApplyError::NotReady(why)))
                if mono_ms().saturating_sub(started) < WAIT_FOR_DEPENDENCIES_MS =>
            {
                tracing::debug!(peer = %link.peer, "a transaction {why}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = node.shutdown.cancelled() => return stopped(),
                }
            }
            Err(e) => {
                let at = jobs.first().and_then(|j| {
                    Some((
                        j.stamp.origin.to_string(),
                        j.stamp.origin_lsn,
                        j.peer_at?.0.lsn,
                    ))
                });
                return FollowerEvent::ApplyFailed {
                    reason: match at {
                        Some((o, l, read)) => format!(
                            "transaction {l} of {o} (read at {read} of {}'s log): {e}",
                            link.peer
                        ),
                        None => e.to_string(),
                    },
                    disk_full: false,
                };
            }
        }
    }
    match records.last() {
        Some(last) => FollowerEvent::Applied {
            position: last.position(),
            chain: last.chain,
        },
        None => stopped(),
    }
}

fn stopped() -> FollowerEvent {
    FollowerEvent::ApplyFailed {
        reason: "this node's writer stopped".into(),
        disk_full: false,
    }
}
