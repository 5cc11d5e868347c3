//! `DELETE /v1/followers/{id}`: forget a follower that is gone for good, so it no longer holds
//! the log back.

use super::execute::leader_only;
use super::ApiError;
use crate::node::Node;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

pub async fn remove(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Some(leader) = node.leader() else {
        return Err(leader_only(&node, "followers are managed on"));
    };
    if !leader.tracker().remove(&id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_follower",
            format!("no follower {id:?} is known to this leader"),
        ));
    }
    leader.save_followers();
    Ok(Json(json!({ "removed": id })))
}
