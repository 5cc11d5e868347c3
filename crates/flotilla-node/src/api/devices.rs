//! `/v1/devices` and `/v1/shapes` (admin role; docs/devices.md): the devices a data centre's
//! leader syncs with — each with a token of the `device` role, made with it and revoked to cut
//! it off — and the shapes that say which rows they pull and may push.

use super::body::json_body;
use super::ApiError;
use crate::auth::TokenText;
use crate::leader::{DeviceChange, TokenChange, WriteJob};
use crate::node::Node;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use flotilla_store::devices::Shape;
use flotilla_store::StoredToken;
use flotilla_types::AccessRole;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    name: String,
    user: String,
}

async fn read<T: Send + 'static>(
    node: &Node,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, flotilla_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let path = node.db_path.clone();
    tokio::task::spawn_blocking(move || {
        let conn = flotilla_store::open_reader(&path)?;
        f(&conn)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })
}

/// `refused_code`: `invalid_device` or `invalid_shape`.
async fn device_change(
    node: &Node,
    change: DeviceChange,
    refused_code: &'static str,
) -> Result<String, ApiError> {
    let done = super::writer_job::run(node, |reply| WriteJob::Device { change, reply }).await?;
    let position = done.map_err(|e| super::writer_job::change_refused(e, refused_code))?;
    Ok(position.to_string())
}

/// `POST /v1/devices {"name", "user"}`: registers a device and makes its token (shown once).
pub async fn add(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (req, _): (AddRequest, _) = json_body(&headers, body, node.config.max_body_bytes).await?;
    let token = TokenText::generate();
    let stored = StoredToken {
        id: token.id.clone(),
        name: format!("device {}", req.name),
        role: AccessRole::Device,
        hash: token.hash(),
        created_ms: crate::time::wall_ms(),
        revoked_ms: None,
    };
    let position = device_change(
        &node,
        DeviceChange::Add {
            name: req.name.clone(),
            user: req.user.clone(),
            token: stored.clone(),
        },
        "invalid_device",
    )
    .await?;
    if let Some(k) = &node.keyring {
        k.invalidate();
    }
    Ok(Json(json!({
        "name": req.name,
        "user": req.user,
        "token_id": stored.id,
        "token": token.to_string(),
        "position": position,
    })))
}

/// `GET /v1/devices`: each device, its token's state, the origins its local databases took
/// (with how far the server has their transactions) and its last sync.
pub async fn list(State(node): State<Arc<Node>>) -> Result<Json<Value>, ApiError> {
    let (devices, vv) = read(&node, |conn| {
        Ok((
            flotilla_store::devices::read_devices(conn)?,
            flotilla_store::read_version_vector(conn)?,
        ))
    })
    .await?;
    let list: Vec<Value> = devices
        .iter()
        .map(|d| {
            let last = node.device_activity.of(&d.name);
            let origins: Vec<Value> = d
                .origins
                .iter()
                .map(|o| {
                    let pushed = flotilla_types::OriginName::new(o)
                        .map(|o| vv.get(&o).0)
                        .unwrap_or(0);
                    json!({ "origin": o, "pushed_through": pushed })
                })
                .collect();
            json!({
                "name": d.name,
                "user": d.user,
                "token_id": d.token_id,
                "created_ms": d.created_ms,
                "revoked_ms": d.revoked_ms,
                "origins": origins,
                "last_sync_ms": last.as_ref().map(|l| l.at_ms),
                "cursor": last.as_ref().map(|l| l.cursor.clone()).filter(|c| !c.is_empty()),
            })
        })
        .collect();
    Ok(Json(json!({ "devices": list })))
}

/// `DELETE /v1/devices/{name}`: revokes the device's token; its next sync is refused.
pub async fn revoke(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let devices = read(&node, flotilla_store::devices::read_devices).await?;
    let Some(d) = devices.into_iter().find(|d| d.name == name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_device",
            format!("there is no device {name} (flotilla device list)"),
        ));
    };
    let change = TokenChange::Revoke(d.token_id.clone());
    let done = super::writer_job::run(&node, |reply| WriteJob::Token { change, reply }).await?;
    let position = done.map_err(|e| super::writer_job::change_refused(e, "invalid_device"))?;
    if let Some(k) = &node.keyring {
        k.invalidate();
    }
    Ok(Json(
        json!({ "revoked": name, "token_id": d.token_id, "position": position.to_string() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShapeRequest {
    table: String,
    #[serde(default)]
    columns: Option<Vec<String>>,
    /// The row predicate (SQL over the table's columns, with `:user` and `:device`).
    #[serde(default, rename = "where")]
    predicate: Option<String>,
}

fn shape_json(s: &Shape) -> Value {
    json!({ "table": s.table, "columns": s.columns, "where": s.predicate })
}

/// `GET /v1/shapes`.
pub async fn shapes(State(node): State<Arc<Node>>) -> Result<Json<Value>, ApiError> {
    let shapes = read(&node, flotilla_store::devices::read_shapes).await?;
    Ok(Json(
        json!({ "shapes": shapes.iter().map(shape_json).collect::<Vec<_>>() }),
    ))
}

/// `PUT /v1/shapes {"table", "columns"?, "where"?}`: sets a table's shape (checked against
/// the table).
pub async fn set_shape(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (req, _): (ShapeRequest, _) = json_body(&headers, body, node.config.max_body_bytes).await?;
    let shape = Shape {
        table: req.table,
        columns: req.columns,
        predicate: req.predicate,
    };
    let position = device_change(&node, DeviceChange::SetShape(shape), "invalid_shape").await?;
    let shapes = read(&node, flotilla_store::devices::read_shapes).await?;
    Ok(Json(json!({
        "position": position,
        "shapes": shapes.iter().map(shape_json).collect::<Vec<_>>(),
    })))
}

/// `DELETE /v1/shapes/{table}`.
pub async fn remove_shape(
    State(node): State<Arc<Node>>,
    Path(table): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let position = device_change(
        &node,
        DeviceChange::RemoveShape(table.clone()),
        "invalid_shape",
    )
    .await?;
    Ok(Json(json!({ "removed": table, "position": position })))
}
