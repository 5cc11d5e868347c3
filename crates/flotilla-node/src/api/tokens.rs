//! `/v1/tokens`: API tokens (admin role). Made and revoked on the leader (they are stored in
//! the database and replicate to every node); listed on any node. A token's secret is shown
//! once, in the answer that made it.

use super::body::json_body;
use super::ApiError;
use crate::auth::TokenText;
use crate::leader::{TokenChange, WriteJob};
use crate::node::Node;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use flotilla_store::StoredToken;
use flotilla_types::AccessRole;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    role: String,
    #[serde(default)]
    name: Option<String>,
}

async fn change(node: &Node, change: TokenChange) -> Result<String, ApiError> {
    let done = super::writer_job::run(node, |reply| WriteJob::Token { change, reply }).await?;
    let position = done.map_err(|e| super::writer_job::change_refused(e, "bad_request"))?;
    if let Some(k) = &node.keyring {
        k.invalidate();
    }
    Ok(position.to_string())
}

fn describe(t: &StoredToken) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "role": t.role.as_str(),
        "created_ms": t.created_ms,
        "revoked_ms": t.revoked_ms,
    })
}

pub async fn create(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (req, _): (CreateRequest, _) =
        json_body(&headers, body, node.config.max_body_bytes).await?;
    let role: AccessRole =
        req.role
            .parse()
            .map_err(|e: flotilla_types::AccessRoleParseError| {
                ApiError::bad_request("bad_request", e.to_string())
            })?;
    if role == AccessRole::Device {
        return Err(ApiError::bad_request(
            "bad_request",
            "a device's token is made with its device: `flotilla device add NAME --user U` \
             (POST /v1/devices)",
        ));
    }
    let name = req.name.unwrap_or_default();
    if name.len() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "bad_request",
            "\"name\" must be at most 200 characters, without control characters",
        ));
    }
    let token = TokenText::generate();
    let stored = StoredToken {
        id: token.id.clone(),
        name,
        role,
        hash: token.hash(),
        created_ms: crate::time::wall_ms(),
        revoked_ms: None,
    };
    let position = change(&node, TokenChange::Add(stored.clone())).await?;
    let mut out = describe(&stored);
    out["token"] = json!(token.to_string());
    out["position"] = json!(position);
    Ok(Json(out))
}

pub async fn list(State(node): State<Arc<Node>>) -> Result<Json<Value>, ApiError> {
    let path = node.db_path.clone();
    let tokens = tokio::task::spawn_blocking(move || {
        let conn = flotilla_store::open_reader(&path)?;
        flotilla_store::read_tokens(&conn)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    let list: Vec<Value> = tokens.iter().map(describe).collect();
    Ok(Json(json!({ "tokens": list })))
}

pub async fn revoke(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let position = change(&node, TokenChange::Revoke(id.clone())).await?;
    Ok(Json(json!({ "revoked": id, "position": position })))
}
