//! `GET /v1/status`: the node, and on a leader its followers with their lag.

use crate::leader::LeaderState;
use crate::node::{Node, Role};
use crate::time::wall_us;
use axum::extract::{Query, State};
use axum::Json;
use flotilla_core::{FollowerProgress, FollowerTracker};
use serde_json::{json, Value};
use std::sync::Arc;

/// One follower's lag as the leader sees it.
pub struct Lag {
    pub transactions: u64,
    pub bytes: u64,
    /// How long the oldest transaction the follower has not applied has waited; `None` when
    /// it is older than what the leader keeps in memory (then it has waited long).
    pub waited_ms: Option<u64>,
}

impl Lag {
    /// `waited_ms` as shown (0 when unknown).
    pub fn ms(&self) -> u64 {
        self.waited_ms.unwrap_or(0)
    }
}

pub fn follower_lag(leader: &LeaderState, f: &FollowerProgress) -> Lag {
    let head = leader.head.borrow().position;
    let transactions = FollowerTracker::lag_transactions(f, head.lsn);
    if transactions == 0 {
        return Lag {
            transactions,
            bytes: 0,
            waited_ms: Some(0),
        };
    }
    // How long the oldest commit the follower has not applied has been waiting.
    let first_missing = f.applied.lsn.0 + 1;
    let waited_ms = leader
        .recent
        .commit_time(first_missing)
        .map(|t| (wall_us().saturating_sub(t)) / 1000);
    Lag {
        transactions,
        bytes: leader.recent.bytes_after(f.applied.lsn.0),
        waited_ms,
    }
}

/// Behind this long without applying anything, a connected follower is `stalled` (it keeps
/// failing to apply, or cannot keep up at all), not `streaming`.
const STALLED_AFTER_MS: u64 = 10_000;

fn follower_state(f: &FollowerProgress, lag: &Lag, now_ms: u64) -> &'static str {
    // Both: nothing applied for that long (an idle leader applies nothing either), and the
    // oldest missing transaction has waited that long (the first commit after an idle spell
    // does not make every follower stalled).
    let stuck = now_ms.saturating_sub(f.applied_moved_ms) > STALLED_AFTER_MS
        && lag.waited_ms.is_none_or(|ms| ms > STALLED_AFTER_MS);
    match f.state {
        flotilla_core::SessionState::Streaming if lag.transactions > 0 && stuck => "stalled",
        s => s.as_str(),
    }
}

/// A data centre's leader: its version vector and each link to a peer data centre.
async fn multi_leader_json(node: &Arc<Node>, ml: &crate::config::MultiLeaderConfig) -> Value {
    let vv = match node.readers.lease().await {
        Ok(mut lease) => tokio::task::spawn_blocking(move || {
            let r = lease.reader();
            let rules = r.rules.clone();
            rules.internal(|| flotilla_store::read_version_vector(&r.conn))
        })
        .await
        .ok()
        .and_then(|r| r.ok()),
        Err(_) => None,
    };
    let now_ms = crate::time::mono_ms();
    let peers: Vec<Value> = node
        .exchange
        .links
        .iter()
        .map(|l| {
            let v = l.view();
            // Up: the peer's leader was heard from lately (it sends heartbeats).
            let up = v.phase == "streaming"
                && v.heard_ms.is_some_and(|h| now_ms.saturating_sub(h) < 3_000);
            json!({
                "dc": l.peer.as_str(),
                "url": l.url,
                "link": if up { "up" } else { "down" },
                "phase": v.phase,
                "read_through": v.read_through,
                "peer_head": v.peer_head,
                "lag_transactions": v.peer_head.saturating_sub(v.read_through),
                // Commit at the peer to merge here, for the newest merged transaction.
                "last_merge_lag_ms": v.last_merge_lag_ms,
                "merged": v.merged,
                "passed": v.passed,
                "error": v.last_error,
            })
        })
        .collect();
    json!({
        "dc": ml.dc.as_str(),
        "topology": ml.topology.as_str(),
        "max_clock_drift_ms": ml.max_clock_drift_ms,
        "version_vector": vv.map(|vv| vv.iter().map(|(o, l)| (o.to_string(), json!(l.0))).collect::<serde_json::Map<_, _>>()),
        "peers": peers,
        "merged_transactions": crate::metrics::Counters::get(&node.counters.merged_transactions),
        "conflicts": crate::metrics::Counters::get(&node.counters.merge_conflicts),
    })
}

pub async fn status(State(node): State<Arc<Node>>) -> Json<Value> {
    // On a leader, the durable head itself: the visible position follows it through a task, and
    // a client that was just answered must see its commit here.
    let position = match node.leader() {
        Some(leader) => leader.head.borrow().position.max(*node.position.borrow()),
        None => *node.position.borrow(),
    };
    let identity = node.identity.get();
    let mut out = json!({
        "id": node.config.id.as_str(),
        "url": node.url,
        "cluster_id": identity.cluster_id,
        // A cluster member's epoch is the consensus's (a new epoch starts before its first
        // transaction).
        "epoch": match &node.cluster {
            Some(c) => c.status.borrow().epoch.0,
            None => identity.epoch.max(position.epoch.0),
        },
        "position": position.to_string(),
        "leader": node.leader_url(),
    });
    match &*node.role() {
        Role::Leader {
            state: leader,
            pipelines,
        } => {
            let followers: Vec<Value> = leader
                .tracker()
                .all()
                .cloned()
                .collect::<Vec<_>>()
                .iter()
                .map(|f| {
                    let lag = follower_lag(leader, f);
                    json!({
                        "id": f.id,
                        "url": f.url,
                        "log": f.log_kind.as_str(),
                        "applied_position": f.applied.to_string(),
                        "durable_position": f.durable.to_string(),
                        "lag_transactions": lag.transactions,
                        "lag_bytes": lag.bytes,
                        "lag_ms": lag.ms(),
                        "state": follower_state(f, &lag, crate::time::mono_ms()),
                    })
                })
                .collect();
            let stats = leader.log.stats();
            out["role"] = json!("leader");
            out["state"] = json!("leading");
            out["followers"] = json!(followers);
            let d = &node.config.durability;
            out["durability"] = json!({
                "default": d.default.as_str(),
                "semi_sync_replicas": d.semi_sync_replicas,
                "too_few_replicas": match d.too_few_replicas {
                    crate::config::TooFewReplicas::Wait => "wait",
                    crate::config::TooFewReplicas::Error => "error",
                },
                "timeout_ms": d.timeout_ms,
                // The newest position that many physical followers hold durably.
                "semi_sync_position": leader.tracker().durable_on(d.semi_sync_replicas).min(position).to_string(),
            });
            out["log"] = json!({
                "first_lsn": stats.first_lsn,
                "last_lsn": stats.last_lsn,
                "bytes": stats.bytes,
                "segments": stats.segments,
            });
            let mut statuses = Vec::new();
            for w in pipelines.all() {
                statuses.push(crate::pipeline::status_json(&node.readers, &w).await);
            }
            out["pipelines"] = json!(statuses);
            if let Some(ml) = &node.config.multi_leader {
                out["multi_leader"] = multi_leader_json(&node, ml).await;
            }
        }
        Role::Follower { state, .. } => {
            let s = state.status();
            out["role"] = json!("follower");
            out["state"] = json!(s.phase);
            out["leader_position"] = json!(s.leader_head.max(position).to_string());
            out["lag_transactions"] = json!(s.leader_head.lsn.0.saturating_sub(position.lsn.0));
            out["durable_position"] = json!(s.durable.to_string());
            out["error"] = json!(s.last_error);
            out["log"] = json!(node.config.log_kind.as_str());
            if node.config.log_kind == flotilla_types::LogKind::Logical {
                out["filter"] = json!(node.config.filter.to_string());
                out["conflict_policy"] =
                    json!(format!("{:?}", node.config.conflict_policy).to_lowercase());
                out["conflicts"] = json!(crate::metrics::Counters::get(
                    &node.counters.apply_conflicts
                ));
            }
            if let Some((done, total)) = s.bootstrap_progress {
                out["bootstrap"] = json!({
                    "bytes_received": done,
                    "bytes_total": total,
                    "percent": if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 },
                });
            }
        }
    }
    if let Some(c) = &node.cluster {
        out["cluster"] = cluster_json(c);
    }
    Json(out)
}

/// A cluster member's view of the consensus: its role and epoch, the leader, the commit index
/// and, on the leader, how far each member holds the log.
fn cluster_json(c: &crate::cluster::driver::ClusterHandle) -> Value {
    let s = c.status.borrow().clone();
    let file = c.file();
    let name = |id: u64| file.members.get(&id).map(|m| m.name.clone());
    let url = |id: u64| file.members.get(&id).map(|m| m.url.clone());
    let members: Vec<Value> = file
        .members
        .iter()
        .map(|(id, m)| {
            let progress = s.progress.iter().find(|p| p.id == *id);
            json!({
                "member_id": id,
                "id": m.name,
                "url": m.url,
                "voter": s.voters.contains(id),
                "matched_lsn": progress.map(|p| p.matched.0),
            })
        })
        .collect();
    json!({
        "cluster_id": c.cluster_id,
        "member_id": c.member_id,
        "role": s.role.as_str(),
        "epoch": s.epoch.0,
        "leader": s.leader.and_then(name),
        "leader_url": s.leader.and_then(url),
        "commit_lsn": s.commit.0,
        "last_lsn": s.last.0,
        "applied_lsn": s.applied.0,
        // For how long this member may have been behind (0 while it knows a leader and has
        // applied all it committed): what `max_lag_ms` on a read compares with.
        "lag_ms": s.behind_since_ms.map_or(0, |since| crate::time::mono_ms().saturating_sub(since)),
        "members": members,
        // No longer among the voters or learners: it takes no part in the cluster any more.
        "removed": !s.voters.contains(&c.member_id) && !s.learners.contains(&c.member_id),
        "refused_messages": s.refused,
        "last_refusal": s.last_refusal,
    })
}

/// `POST /v1/cluster/promote` `{"member": "n2"}` on the leader: hands the leadership to that
/// member once it holds everything (the leader stops taking writes meanwhile), and answers when
/// it leads (or why not, within 10 s).
pub async fn promote(
    State(node): State<Arc<Node>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, super::ApiError> {
    use axum::http::StatusCode;
    let Some(c) = node.cluster.clone() else {
        return Err(super::ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this node is not a cluster member (flotilla serve --cluster)",
        ));
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Promote {
        member: String,
    }
    let raw = super::body::json_bytes(&headers, body, 64 << 10).await?;
    let req: Promote = super::decode::decode_json(&raw)?;
    let file = c.file();
    let Some(to) = file.member_named(&req.member) else {
        let names: Vec<&str> = file.members.values().map(|m| m.name.as_str()).collect();
        return Err(super::ApiError::bad_request(
            "bad_request",
            format!(
                "no member is named {:?}; the members are {}",
                req.member,
                names.join(", ")
            ),
        ));
    };
    let status = c.status.borrow().clone();
    if status.leader == Some(to) {
        return Ok(Json(json!({"leader": req.member, "epoch": status.epoch.0})));
    }
    if status.role != flotilla_core::consensus::Role::Leader {
        return Err(super::execute::leader_only(
            &node,
            "hands the leadership over through",
        ));
    }
    if !status.voters.contains(&to) {
        return Err(super::ApiError::bad_request(
            "bad_request",
            format!("{} is not a voter: only a voter can lead", req.member),
        ));
    }
    // The writer pauses first, once everything it executed is proposed (and taken by the
    // consensus): nothing executed here is then missing from the history the target takes
    // over, and the old leader follows it without copying a database.
    let paused = pause_writer(&node, &c).await;
    let _ = c
        .control
        .send(crate::cluster::driver::Control::Transfer(to));
    let mut rx = c.status.clone();
    let led = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        rx.wait_for(|s| s.leader == Some(to)),
    )
    .await;
    if let Some(gate) = paused {
        match &led {
            // The member steps down and closes the gate itself; closing it here first keeps
            // the writer from executing anything in between.
            Ok(Ok(_)) => gate.close(),
            _ => gate.open(),
        }
    }
    match led {
        Ok(Ok(s)) => Ok(Json(json!({"leader": req.member, "epoch": s.epoch.0}))),
        _ => Err(super::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "{} did not take over within 10 s: it is down or too far behind (see flotilla \
                 cluster status)",
                req.member
            ),
        )),
    }
}

/// Parks the leader's writer and waits until the consensus holds its last proposal; the gate
/// to open (or close) afterwards. `None`: no writer to pause (it was not parked in time).
async fn pause_writer(
    node: &Node,
    c: &crate::cluster::driver::ClusterHandle,
) -> Option<Arc<crate::leader::WriterGate>> {
    let leader = node.leader()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    leader.gate.request_pause();
    let job = crate::leader::WriteJob::Pause { parked: tx };
    if leader.writer.send(job).await.is_err() {
        leader.gate.open();
        return None;
    }
    let wait = std::time::Duration::from_secs(5);
    let last = match tokio::time::timeout(wait, rx).await {
        Ok(Ok(lsn)) => lsn,
        // The writer did not park in time (a long transaction): hand over anyway; the gate
        // opens again after the attempt.
        _ => return Some(leader.gate.clone()),
    };
    let mut status = c.status.clone();
    let _ = tokio::time::timeout(wait, status.wait_for(|s| s.last >= last)).await;
    Some(leader.gate.clone())
}

/// `GET /v1/cluster`: the consensus view of a cluster member.
pub async fn cluster(State(node): State<Arc<Node>>) -> Result<Json<Value>, super::ApiError> {
    match &node.cluster {
        Some(c) => Ok(Json(cluster_json(c))),
        None => Err(super::ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            "this node is not a cluster member (flotilla serve --cluster)",
        )),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcQuery {
    /// Also say where the log starts (`log_start`): it reads the log, so only a link that
    /// needs it asks.
    #[serde(default)]
    log_start: bool,
}

/// `GET /v1/dc`: which data centre this node leads, and its cluster (what a peer data centre's
/// link checks before it merges anything; the replicate role may ask).
pub async fn dc(
    State(node): State<Arc<Node>>,
    query: Result<Query<DcQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, super::ApiError> {
    let Query(query) = query.map_err(|e| {
        super::ApiError::bad_request(
            "bad_request",
            format!("{}; the only parameter is log_start=true", e.body_text()),
        )
    })?;
    let identity = node.identity.get();
    match &node.config.multi_leader {
        Some(ml) if node.leader().is_some() => {
            let deployment = read_deployment(&node).await?;
            let mut answer = json!({
                "dc": ml.dc.as_str(),
                "deployment": deployment,
                "cluster_id": identity.cluster_id,
            });
            // The data centres this one has read from: a new data centre under one of these
            // names is one whose data directory was lost (see exchange/deployment.rs).
            let heard_from: serde_json::Map<String, Value> = node
                .exchange
                .links
                .iter()
                .filter_map(|l| {
                    let read = l.view().read_through;
                    (read > 0).then(|| (l.peer.as_str().to_string(), json!(read)))
                })
                .collect();
            answer["heard_from"] = Value::Object(heard_from);
            // Where a peer's link can take up when this log no longer holds its position.
            if let Some(leader) = node.leader().filter(|_| query.log_start) {
                if let Ok(Some(start)) = log_start(&node, &leader).await {
                    answer["log_start"] = start;
                }
            }
            Ok(Json(answer))
        }
        Some(_) => Err(super::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not_leading",
            "this node is a data centre's node but does not lead it now",
        )),
        None => Err(super::ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_multi_leader",
            "this node is not a data centre's leader (started without --dc)",
        )),
    }
}

/// The first transaction this data centre's log still holds (its position and chain: a link
/// may claim it as its own) and, read after it, the version vector: a peer whose position the
/// log no longer holds may take up there if it lacks nothing the log dropped (see
/// `exchange/link.rs`). `None` when the log holds no transaction.
async fn log_start(node: &Node, leader: &Arc<LeaderState>) -> Result<Option<Value>, String> {
    let log = leader.log.clone();
    let path = node.db_path.clone();
    let Some(own) = node.config.multi_leader.as_ref().map(|ml| ml.dc.clone()) else {
        return Ok(None);
    };
    tokio::task::spawn_blocking(move || {
        let mut from = log.first_lsn();
        // Raft's own entries are no transactions; a few at most come first.
        for _ in 0..64 {
            let records = log.read(from, 16, 1 << 20).map_err(|e| e.to_string())?;
            if records.is_empty() {
                return Ok(None);
            }
            for bytes in &records {
                from += 1;
                if flotilla_wire::is_consensus_record(bytes) {
                    continue;
                }
                let r = flotilla_wire::decode_record(bytes).map_err(|e| e.to_string())?;
                let conn = flotilla_store::open_reader(&path).map_err(|e| e.to_string())?;
                let vv = flotilla_store::read_version_vector(&conn).map_err(|e| e.to_string())?;
                let own_before = own_before(&log, &own, r.lsn.0, vv.get(&own).0)?;
                let vv: serde_json::Map<String, Value> = vv
                    .iter()
                    .map(|(o, l)| (o.as_str().to_string(), json!(l.0)))
                    .collect();
                let mut start = json!({
                    "epoch": r.epoch.0,
                    "lsn": r.lsn.0,
                    "chain": r.chain.0,
                    "vv": vv,
                });
                if let Some(b) = own_before {
                    start["own_before"] = json!(b);
                }
                return Ok(Some(start));
            }
        }
        Ok(None)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The newest transaction this data centre made at or before `start` (its log's first): the
/// first one of its own after `start` names it among its dependencies; with none of its own
/// after `start`, its newest (`newest_own`, read before). `None` when the scan (bounded) found
/// neither: a peer then cannot tell whether the log dropped one it lacks.
fn own_before(
    log: &flotilla_log::Log,
    own: &flotilla_types::OriginName,
    start: u64,
    newest_own: u64,
) -> Result<Option<u64>, String> {
    const SCAN_RECORDS: u64 = 20_000;
    let mut from = start + 1;
    while from <= start + SCAN_RECORDS {
        let records = log.read(from, 256, 4 << 20).map_err(|e| e.to_string())?;
        if records.is_empty() {
            // The end of the log: nothing of its own after `start`.
            return Ok(Some(newest_own));
        }
        for bytes in &records {
            from += 1;
            if flotilla_wire::is_consensus_record(bytes) {
                continue;
            }
            let r = flotilla_wire::decode_record_rows(bytes).map_err(|e| e.to_string())?;
            if let Some(stamp) = r.exchange.filter(|s| s.origin == *own) {
                return Ok(Some(stamp.deps.get(own).0));
            }
        }
    }
    Ok(None)
}

/// The deployment this data centre's database belongs to (until the writer has made the
/// multi-leader tables: not ready).
async fn read_deployment(node: &Node) -> Result<String, super::ApiError> {
    let path = node.db_path.clone();
    let read = tokio::task::spawn_blocking(move || {
        flotilla_store::read_data_centre(&flotilla_store::open_reader(&path)?)
    })
    .await;
    match read {
        Ok(Ok(Some((_, deployment)))) => Ok(deployment),
        Ok(Ok(None)) => Err(super::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not_leading",
            "this data centre's leader is starting: ask again",
        )),
        Ok(Err(e)) => Err(super::ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("reading the data centre's deployment: {e}"),
        )),
        Err(_) => Err(super::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "not_leading",
            "the node is stopping",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::SessionState;
    use flotilla_types::{LogKind, Position};

    #[test]
    fn a_connected_follower_that_applies_nothing_while_behind_is_stalled() {
        let now = 1_000_000;
        let f = |state, moved_ago: u64| FollowerProgress {
            id: "f".into(),
            url: String::new(),
            log_kind: LogKind::Logical,
            state,
            received: Position::new(1, 5),
            durable: Position::new(1, 5),
            applied: Position::new(1, 5),
            last_ack_ms: now,
            applied_moved_ms: now.saturating_sub(moved_ago),
        };
        let lag = |transactions: u64, waited_ms: Option<u64>| Lag {
            transactions,
            bytes: 0,
            waited_ms,
        };
        // (session state, last apply this long ago, transactions behind, the oldest of them
        // waiting this long) → shown state.
        for (state, moved_ago, behind, waited, shown) in [
            (SessionState::Streaming, 60_000, 30, Some(20_000), "stalled"),
            (SessionState::Streaming, 60_000, 30, None, "stalled"),
            (SessionState::Streaming, 60_000, 0, Some(0), "streaming"),
            (SessionState::Streaming, 100, 30, Some(20_000), "streaming"),
            // The first commit after a long idle spell: not stalled.
            (SessionState::Streaming, 60_000, 1, Some(2), "streaming"),
            (
                SessionState::Disconnected,
                60_000,
                30,
                Some(20_000),
                "disconnected",
            ),
        ] {
            assert_eq!(
                follower_state(&f(state, moved_ago), &lag(behind, waited), now),
                shown,
                "{state:?}, {moved_ago} ms, {behind} behind, waited {waited:?}"
            );
        }
    }
}
