//! `/v1/conflicts/policies` (multi-leader): a table's or column's conflict policy, checked
//! against the table when it is given, and committed on this data centre's leader (it travels
//! to the other data centres like data). The conflicts themselves are the `flotilla_conflicts`
//! table, read with SQL; `/v1/conflicts/prune` deletes the resolved ones older than a time.

use super::body::json_body;
use super::ApiError;
use crate::leader::{PolicyChange, WriteJob};
use crate::node::Node;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyRequest {
    table: String,
    #[serde(default)]
    column: Option<String>,
    policy: String,
    #[serde(default)]
    expression: Option<String>,
}

pub async fn set_policy(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (req, _): (PolicyRequest, _) =
        json_body(&headers, body, node.config.max_body_bytes).await?;
    let change = PolicyChange {
        table: req.table,
        column: req.column.filter(|c| !c.is_empty()),
        policy: req.policy,
        expression: req.expression,
    };
    let done = super::writer_job::run(&node, |reply| WriteJob::Policy { change, reply }).await?;
    let position = done.map_err(|e| super::writer_job::change_refused(e, "invalid_policy"))?;
    Ok(Json(json!({ "position": position.to_string() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PruneRequest {
    /// Resolved conflicts whose both sides were stamped longer ago than this go.
    older_than_ms: u64,
}

/// `POST /v1/conflicts/prune` (admin): deletes this data centre's resolved conflicts older than
/// `older_than_ms`, as one commit (its followers see them go); open ones stay.
pub async fn prune(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (req, _): (PruneRequest, _) = json_body(&headers, body, node.config.max_body_bytes).await?;
    // A follower has no --dc of its own but holds its data centre's conflicts: it is told
    // to ask its leader (by the writer job), as for every write.
    if node.config.multi_leader.is_none() && node.leader().is_some() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_multi_leader",
            "this node is not a data centre's (started without --dc): it has no conflicts",
        ));
    }
    let before_ms = (crate::time::wall_us() / 1000).saturating_sub(req.older_than_ms);
    let (count_tx, count_rx) = tokio::sync::oneshot::channel();
    let done = super::writer_job::run(&node, |reply| WriteJob::PruneConflicts {
        before_ms,
        pruned: count_tx,
        reply,
    })
    .await?;
    let position = done.map_err(|e| super::writer_job::change_refused(e, "invalid_request"))?;
    let pruned = count_rx.await.unwrap_or(0);
    Ok(Json(
        json!({ "pruned": pruned, "position": position.to_string() }),
    ))
}
