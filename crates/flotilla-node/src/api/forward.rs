//! Write forwarding: a follower asked to (`"forward": true`, or `api.forward-writes`) sends a
//! write request on to its leader with the client's own credentials, and answers the leader's
//! answer — after waiting until it has applied that position itself, so that the client's next
//! read here sees its write.

use super::ApiError;
use crate::node::Node;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use flotilla_types::Position;
use serde_json::Value;
use std::time::Duration;

/// How much longer than the statements' time limit the leader is given to answer.
const ANSWER_MARGIN_MS: u64 = 5_000;

pub async fn to_leader(
    node: &Node,
    headers: &HeaderMap,
    raw: bytes::Bytes,
    timeout_ms: u64,
) -> Result<Response, ApiError> {
    let leader = node.leader_url().unwrap_or_default().to_string();
    if leader.is_empty() {
        // A cluster member that knows no leader: nothing is sent.
        return Err(super::execute::leader_only(node, "forwards writes to"));
    }
    let started = std::time::Instant::now();
    let mut req = node
        .peers
        .http
        .post(format!("{}/v1/execute", leader.trim_end_matches('/')))
        .header(header::CONTENT_TYPE, "application/json")
        .timeout(Duration::from_millis(timeout_ms + ANSWER_MARGIN_MS))
        .body(raw);
    // The client's own token: the leader decides what it may do, never this node's.
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        req = req.header(header::AUTHORIZATION, auth.clone());
    }
    let answer = match req.send().await {
        Ok(a) => a,
        Err(e) if e.is_connect() => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "leader_unreachable",
                format!(
                    "this follower could not reach its leader at {leader} to forward the write \
                     ({}); nothing was sent, retry later",
                    crate::peer::error_chain(&e)
                ),
            )
            .with("leader", leader));
        }
        Err(e) => return Err(unknown(&leader, &e)),
    };
    let status =
        StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = answer.bytes().await.map_err(|e| unknown(&leader, &e))?;
    if !status.is_success() {
        // The leader's own error, as it gave it.
        return Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    let mut json: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            format!("the leader at {leader} answered something that is not JSON: {e}"),
        )
    })?;
    let position: Option<Position> = json["position"].as_str().and_then(|p| p.parse().ok());
    let mut applied_here = false;
    if let Some(position) = position {
        let mut rx = node.position.subscribe();
        // Within the request's time limit: the leader's answer counts against it too.
        let wait = Duration::from_millis(timeout_ms).saturating_sub(started.elapsed());
        applied_here = matches!(
            tokio::time::timeout(wait, rx.wait_for(|p| *p >= position)).await,
            Ok(Ok(_))
        );
    }
    json["forwarded_to"] = Value::String(leader);
    json["applied_here"] = Value::Bool(applied_here);
    Ok(axum::Json(json).into_response())
}

/// The request reached the leader (or may have) but no answer came back.
fn unknown(leader: &str, e: &reqwest::Error) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "outcome_unknown",
        format!(
            "the write was forwarded to the leader at {leader} but no answer came back ({}): it \
             may or may not have committed; retry with the same idempotency key",
            crate::peer::error_chain(e)
        ),
    )
    .with("leader", leader.to_string())
}
