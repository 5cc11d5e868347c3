//! `/v1/conflicts/policies` (multi-leader): a table's or column's conflict policy, checked
//! against the table when it is given, and committed on this data centre's leader (it travels
//! to the other data centres like data). The conflicts themselves are the `flotilla_conflicts`
//! table, read with SQL.

use super::body::json_body;
use super::ApiError;
use crate::leader::{PolicyChange, WriteJob};
use crate::node::Node;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
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
