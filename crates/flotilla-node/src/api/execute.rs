//! `POST /v1/execute`: one transaction on the leader.

use super::body::json_bytes;
use super::decode::decode_execute;
use super::values::RowShape;
use super::ApiError;
use crate::leader::{WriteError, WriteJob};
use crate::metrics::Counters;
use crate::node::Node;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_store::{FailureKind, LocalOutcome, RequestOutcome, TxnRequest};
use flotilla_types::{ContentDigest, Durability};
use serde_json::{json, Value};
use std::sync::Arc;

pub fn not_leader(node: &Node) -> ApiError {
    leader_only(node, "does not take writes; send them to")
}

/// 421 for what only the leader does: `what` says what, in words that lead to the leader's
/// URL ("the change feed is served by").
pub fn leader_only(node: &Node, what: &str) -> ApiError {
    let leader = node.leader_url().unwrap_or_default().to_string();
    if leader.is_empty() {
        // A cluster member that knows no leader yet (an election, or the new leader opening
        // its database): there is nowhere to send the client, only a moment to wait.
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the cluster has no leader taking requests (an election is under way, or no \
             majority of its members is reachable; see flotilla cluster status); retry shortly",
        );
    }
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "not_leader",
        format!("this node is a follower and {what} the leader at {leader}"),
    )
    .with("leader", leader)
}

pub async fn execute(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    Counters::add(&node.counters.execute_requests, 1);
    let logical_follower =
        node.leader().is_none() && node.config.log_kind == flotilla_types::LogKind::Logical;
    let raw = json_bytes(&headers, body, node.config.max_body_bytes).await?;
    let req = decode_execute(&raw, node.config.write_timeout_ms)?;
    let forward = req.forward.unwrap_or(node.config.forward_writes);
    let shape = RowShape {
        associative: req.associative,
    };
    let (statements, timeout_ms) = (req.statements, req.timeout_ms);
    let durability = req.durability.unwrap_or(node.config.durability.default);
    let clustered = node.cluster.is_some();
    if durability == Durability::Quorum && !clustered {
        return Err(ApiError::bad_request(
            "durability_unavailable",
            "\"quorum\" durability needs a cluster of voters (flotilla serve --cluster); this \
             node leads alone: \"semi-sync\" waits for physical followers",
        ));
    }
    let Some(leader) = node.leader() else {
        let Some(follower) = node.follower() else {
            return Err(not_leader(&node));
        };
        if !logical_follower || req.idempotency_key.is_some() {
            if forward {
                return super::forward::to_leader(&node, &headers, raw, timeout_ms).await;
            }
            if logical_follower {
                return Err(ApiError::bad_request(
                    "bad_request",
                    "idempotency keys are kept by the leader; a logical follower's own tables \
                     take writes without one (or ask for \"forward\": true to send the request \
                     to the leader)",
                ));
            }
            return Err(not_leader(&node));
        }
        return match execute_local(&node, &follower, statements, timeout_ms, shape).await {
            Err(e) if forward && e.code == "not_leader" => {
                super::forward::to_leader(&node, &headers, raw, timeout_ms).await
            }
            other => other.map(IntoResponse::into_response),
        };
    };
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    let job = WriteJob::Request {
        durability,
        request: TxnRequest {
            statements,
            idempotency_key: req.idempotency_key,
            digest: ContentDigest::of(&raw),
            timeout_ms,
        },
        reply: reply_tx,
    };
    let unavailable = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the leader is stopping; retry with the same idempotency key",
        )
    };
    leader.writer.send(job).await.map_err(|_| unavailable())?;
    let settings = &node.config.durability;
    let bounded = clustered
        && durability != Durability::Async
        && settings.too_few_replicas == crate::config::TooFewReplicas::Error;
    let reply = if bounded {
        // A cluster's leader answers once its consensus acknowledged the durability; too few
        // members within the timeout is an answer too, as configured.
        match tokio::time::timeout(
            std::time::Duration::from_millis(settings.timeout_ms),
            reply_rx,
        )
        .await
        {
            Ok(r) => r.map_err(|_| unavailable())?,
            Err(_) => {
                Counters::add(&node.counters.semi_sync_timeouts, 1);
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_replicated",
                    format!(
                        "too few members held the write within {} ms for {durability} \
                         durability: it may still be committed; retry with the same \
                         idempotency key to wait again",
                        settings.timeout_ms
                    ),
                ));
            }
        }
    } else {
        reply_rx.await.map_err(|_| unavailable())?
    };
    match reply {
        Ok((RequestOutcome::Committed(results), position))
        | Ok((RequestOutcome::Duplicate { results, position }, _)) => {
            // A retry of an acknowledged request waits again too: its first answer may have
            // been a timeout.
            // A cluster's leader answers once the consensus acknowledged the durability.
            if durability == Durability::SemiSync && !clustered {
                Counters::add(&node.counters.semi_sync_waits, 1);
                let settings = &node.config.durability;
                if let Err(e) = leader
                    .wait_replicated(position, settings, &node.shutdown)
                    .await
                {
                    if matches!(e, crate::leader::NotReplicated::TooFew { .. }) {
                        Counters::add(&node.counters.semi_sync_timeouts, 1);
                    }
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not_replicated",
                        e.to_string(),
                    )
                    .with("position", position.to_string()));
                }
            }
            Ok(Json(json!({
                "position": position.to_string(),
                "durability": durability.as_str(),
                "results": shape.statement_results(&results),
            }))
            .into_response())
        }
        Ok((
            RequestOutcome::Failed {
                statement,
                message,
                kind,
            },
            _,
        )) => Err(rolled_back(statement, &message, kind)),
        // The writer runs such requests again itself; never an answer.
        Ok((RequestOutcome::Retry, _)) => Err(unavailable()),
        Err(e @ WriteError::Indeterminate(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "outcome_unknown",
            e.to_string(),
        )),
        Err(e @ WriteError::Failed(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "write_failed",
            e.to_string(),
        )),
    }
}

/// A logical follower: a transaction on its own tables; writes to replicated tables are sent
/// to the leader (421).
async fn execute_local(
    node: &Node,
    follower: &crate::follower::FollowerShared,
    statements: Vec<(String, flotilla_store::Params)>,
    timeout_ms: u64,
    shape: RowShape,
) -> Result<Json<Value>, ApiError> {
    let outcome = follower
        .execute_local(statements, timeout_ms)
        .await
        .map_err(|e| match e {
            crate::follower::LocalWriteError::Store(e) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "write_failed",
                format!("the transaction was not applied: {e}"),
            ),
            e => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
        })?;
    match outcome {
        LocalOutcome::Committed(results) => Ok(Json(json!({
            "position": node.position.borrow().to_string(),
            "results": shape.statement_results(&results),
            "local": true,
        }))),
        LocalOutcome::Failed {
            statement,
            message,
            misdirected: true,
            ..
        } => {
            let mut e = not_leader(node).with("statement", statement);
            e.message = format!(
                "statement {statement}: {message} ({}); the transaction was rolled back",
                node.leader_url().unwrap_or_default()
            );
            Err(e)
        }
        LocalOutcome::Failed {
            statement,
            message,
            kind,
            ..
        } => Err(rolled_back(statement, &message, kind)),
    }
}

/// A request whose statement failed: rolled back, with the kind of failure as the code.
fn rolled_back(statement: usize, message: &str, kind: FailureKind) -> ApiError {
    let (status, code) = match kind {
        FailureKind::Refused => (StatusCode::BAD_REQUEST, "statement_refused"),
        FailureKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "transaction_too_large"),
        FailureKind::TimedOut => (StatusCode::BAD_REQUEST, "statement_timeout"),
        FailureKind::Interrupted => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        _ => (StatusCode::BAD_REQUEST, "sql_error"),
    };
    ApiError::new(
        status,
        code,
        format!("statement {statement}: {message}; the transaction was rolled back"),
    )
    .with("statement", statement)
}
