//! `POST /v1/query`: a read on a snapshot, optionally after a position (read-your-writes).

use super::body::json_bytes;
use super::decode::Consistency;
use super::values::to_json;
use super::ApiError;
use crate::metrics::Counters;
use crate::node::Node;
use crate::readers::ReaderError;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use flotilla_store::read_meta;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Rows one query may return.
const MAX_ROWS: usize = 1_000_000;

pub async fn query(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    Counters::add(&node.counters.query_requests, 1);
    let raw = json_bytes(&headers, body, node.config.max_body_bytes).await?;
    let req = super::decode::decode_query(&raw, node.config.query_timeout_ms)?;
    let (params, run_ms, associative) = (req.params, req.run_ms, req.associative);
    let timeout = Duration::from_millis(req.wait_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    if let Some(max) = req.max_lag_ms {
        let lag = super::health::lag_ms(&node);
        if lag > max {
            let leader = node.leader_url().filter(|l| *l != node.url);
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_stale",
                format!(
                    "this replica may be {lag} ms behind its leader, more than max_lag_ms \
                     ({max}): read from the leader{}",
                    leader
                        .as_deref()
                        .map(|l| format!(" ({l})"))
                        .unwrap_or_default()
                ),
            )
            .with("lag_ms", lag)
            .with("leader", leader));
        }
    }
    if req.consistency == Consistency::Linearizable {
        linearizable_point(&node, deadline).await?;
    }
    if let (Some(min), Some(c)) = (req.min_position, &node.cluster) {
        let history = flotilla_core::consensus::EpochHistory::from_starts(c.file().epochs);
        let commit = c.status.borrow().commit;
        if let Some((epoch, start)) = history.superseding(min, commit) {
            return Err(ApiError::new(
                StatusCode::GONE,
                "position_lost",
                format!(
                    "min_position {min} is not in the cluster's history: epoch {epoch} began at \
                     lsn {start}, so nothing was committed at {min}. A write answered with it \
                     was `async` and a failover dropped it (the member that led epoch {} saved \
                     it to divergent.ndjson): write it again, or read without it",
                    min.epoch
                ),
            )
            .with("epoch_start", format!("{epoch}/{start}")));
        }
    }
    if let Some(min) = req.min_position {
        // Every position a client was given is at or before the leader's newest commit: one
        // beyond it was never acknowledged, and waiting for it would only time out.
        let at = *node.position.borrow();
        if node.leader().is_some() && min > at {
            return Err(ApiError::bad_request(
                "position_in_future",
                format!("min_position {min} is beyond this leader's newest commit {at}"),
            )
            .with("position", at.to_string()));
        }
        let mut rx = node.position.subscribe();
        let reached = tokio::time::timeout_at(deadline, rx.wait_for(|p| *p >= min)).await;
        if !matches!(reached, Ok(Ok(_))) {
            let at = *node.position.borrow();
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "position_not_reached",
                format!(
                    "this node has applied up to {at} and did not reach {min} within {} ms",
                    timeout.as_millis()
                ),
            )
            .with("position", at.to_string()));
        }
    }
    let mut lease = match tokio::time::timeout_at(deadline, node.readers.lease()).await {
        Ok(Ok(l)) => l,
        // A leader closes its readers only while a restore puts the new database in place.
        Ok(Err(ReaderError::Unavailable)) if node.leader().is_some() => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "a restore is putting the new database in place; retry shortly",
            ))
        }
        Ok(Err(ReaderError::Unavailable)) => return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "bootstrapping",
            "this node has no database yet (it is bootstrapping from a snapshot); retry shortly",
        )),
        Ok(Err(e)) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                e.to_string(),
            ))
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "busy",
                "no reader connection became free in time",
            ))
        }
    };
    let max_bytes = node.config.max_result_bytes;
    // The query runs on this worker thread: `block_in_place` hands the worker's other tasks to
    // another thread while it runs, so a long query blocks nobody, and a short one costs no
    // hand-off to the blocking pool and back (two thread wake-ups: 191 -> 112 µs per query on
    // this 2-core VM). `run` checks that the runtime is multi-threaded, which this needs.
    let shape = super::values::RowShape { associative };
    let answer = tokio::task::block_in_place(move || {
        run(lease.reader(), &req.sql, &params, run_ms, max_bytes, shape)
    })?;
    // A cluster's leader executes transactions before the cluster commits them: an answer is
    // given only once every transaction its snapshot saw is committed (a failover could drop
    // the others). On other members nothing uncommitted is ever applied.
    let seen: Option<flotilla_types::Position> =
        answer["position"].as_str().and_then(|p| p.parse().ok());
    if let Some(seen) = seen {
        wait_committed(&node, seen, deadline, "read").await?;
    }
    Ok(Json(answer))
}

/// On a cluster member: waits (until `deadline`) until the cluster committed everything up to
/// `seen`, the position of a snapshot something was read from. A cluster's leader executes
/// transactions before the cluster commits them, so its snapshots may hold some a failover
/// could drop: nothing read from such a snapshot is given out before then. Elsewhere nothing
/// uncommitted is ever applied, and this returns at once.
pub(crate) async fn wait_committed(
    node: &Node,
    seen: flotilla_types::Position,
    deadline: tokio::time::Instant,
    what: &str,
) -> Result<(), ApiError> {
    if node.cluster.is_none() {
        return Ok(());
    }
    let mut rx = node.position.subscribe();
    let committed = tokio::time::timeout_at(deadline, rx.wait_for(|p| *p >= seen)).await;
    if matches!(committed, Ok(Ok(_))) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!(
            "the {what} saw transactions up to {seen} that the cluster has not committed (the \
             leader may be changing, or cannot reach a majority); retry"
        ),
    ))
}

/// Waits until this node's database holds everything committed before now, as a linearizable
/// read needs. On a cluster member: Raft's ReadIndex (the leader confirms with a majority that
/// it still leads and names its commit index; this member applies that far). A single leader
/// is the only node that commits, so what it holds is current; a follower outside a cluster
/// cannot know it is, and sends the reader to its leader (421).
async fn linearizable_point(
    node: &Arc<Node>,
    deadline: tokio::time::Instant,
) -> Result<(), ApiError> {
    let Some(c) = &node.cluster else {
        return match node.leader() {
            Some(_) => Ok(()),
            None => Err(super::execute::leader_only(
                node,
                "serves linearizable reads through",
            )),
        };
    };
    let unavailable = |why: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("a linearizable read could not be confirmed: {why}; retry"),
        )
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    c.control
        .send(crate::cluster::driver::Control::ReadIndex(tx))
        .map_err(|_| unavailable("the consensus task stopped".into()))?;
    let index = match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(Ok(lsn))) => lsn,
        Ok(Ok(Err(why))) => return Err(unavailable(why)),
        Ok(Err(_)) => return Err(unavailable("the consensus task stopped".into())),
        Err(_) => {
            return Err(unavailable(
                "no majority of the members confirmed the leader in time".into(),
            ))
        }
    };
    let mut status = c.status.clone();
    let applied = tokio::time::timeout_at(deadline, status.wait_for(|s| s.applied >= index))
        .await
        .is_ok_and(|r| r.is_ok());
    match applied {
        true => Ok(()),
        false => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "position_not_reached",
            format!("this member did not apply through the read index {index} in time"),
        )),
    }
}

fn run(
    reader: &mut crate::readers::Reader,
    sql: &str,
    params: &flotilla_store::Params,
    timeout_ms: u64,
    max_bytes: u64,
    shape: super::values::RowShape,
) -> Result<Value, ApiError> {
    // One read transaction: the position and the rows come from the same snapshot. BEGIN and
    // ROLLBACK are Flotilla's own statements (the client rules refuse them), and the
    // transaction always ends here, whatever the query did.
    let rules = reader.rules.clone();
    rules
        .internal(|| reader.conn.execute_batch("BEGIN"))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    reader.guard.begin_request(timeout_ms);
    let result = run_in_snapshot(reader, sql, params, max_bytes, shape);
    reader.guard.end_request();
    if let Err(e) = rules.internal(|| reader.conn.execute_batch("ROLLBACK")) {
        tracing::warn!("ending a read transaction failed: {e}");
    }
    result
}

fn run_in_snapshot(
    reader: &mut crate::readers::Reader,
    sql: &str,
    params: &flotilla_store::Params,
    max_bytes: u64,
    shape: super::values::RowShape,
) -> Result<Value, ApiError> {
    let sql_err =
        |e: rusqlite::Error| ApiError::bad_request("sql_error", flotilla_store_message(&e));
    let conn = &reader.conn;
    let position = read_meta(conn)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map(|m| m.position)
        .unwrap_or_default();
    let mut stmt = match conn.prepare(sql) {
        Ok(s) => s,
        Err(e) => {
            return Err(match reader.rules.take_reason() {
                Some(why) => ApiError::bad_request("statement_refused", why),
                None => sql_err(e),
            })
        }
    };
    if !stmt.readonly() {
        return Err(ApiError::bad_request(
            "not_read_only",
            "POST /v1/query runs read-only statements; send writes to POST /v1/execute",
        ));
    }
    params
        .bind(&mut stmt)
        .map_err(|why| ApiError::bad_request("sql_error", why))?;
    let columns: Vec<String> = stmt.column_names().map(|c| c.to_string()).collect();
    let ncols = columns.len();
    let mut rows_out = Vec::new();
    let mut bytes = 0u64;
    let mut rows = stmt.raw_query();
    let step_err = |e: rusqlite::Error| match reader.rules.take_reason() {
        Some(why) => ApiError::bad_request("statement_refused", why),
        None => match reader.guard.explain(&e) {
            Some((why, flotilla_store::FailureKind::TimedOut)) => {
                ApiError::bad_request("statement_timeout", why)
            }
            Some((why, flotilla_store::FailureKind::Interrupted)) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why)
            }
            _ => sql_err(e),
        },
    };
    while let Some(row) = rows.next().map_err(step_err)? {
        if rows_out.len() >= MAX_ROWS {
            return Err(ApiError::bad_request(
                "result_too_large",
                format!("the result has more than {MAX_ROWS} rows: add a LIMIT"),
            ));
        }
        let mut out = Vec::with_capacity(ncols);
        for i in 0..ncols {
            let v = row.get_ref(i).map_err(step_err)?;
            bytes += match v {
                rusqlite::types::ValueRef::Text(t) => t.len() as u64,
                rusqlite::types::ValueRef::Blob(b) => b.len() as u64 * 4 / 3,
                _ => 8,
            };
            if bytes > max_bytes {
                return Err(ApiError::bad_request(
                    "result_too_large",
                    format!(
                        "the result is larger than {} MiB (limits.max-result-mib): select fewer \
                         rows or columns, or read it in pages (LIMIT … OFFSET …)",
                        max_bytes >> 20
                    ),
                ));
            }
            out.push(to_json(v));
        }
        rows_out.push(shape.row(&columns, out));
    }
    Ok(json!({ "columns": columns, "rows": rows_out, "position": position.to_string() }))
}

fn flotilla_store_message(e: &rusqlite::Error) -> String {
    flotilla_store::sql_error_message(e)
}
