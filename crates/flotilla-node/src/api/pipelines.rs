//! `/v1/pipelines`: trigger-based replication managed over the API (the `flotilla pipeline`
//! commands call these). Only a leader runs pipelines; followers answer 421 with its URL.

use super::body::json_body;
use super::execute::leader_only;
use super::ApiError;
use crate::leader::{PipelineChange, WriteJob};
use crate::node::Node;
use crate::pipeline::Pipelines;
use crate::pipeline::{check_target, status_json, TargetError};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use flotilla_types::PipelineSpec;
use serde_json::{json, Value};
use std::sync::Arc;

/// The pipelines' workers: on a leader only.
fn pipelines(node: &Node) -> Result<Arc<Pipelines>, ApiError> {
    node.pipelines()
        .ok_or_else(|| leader_only(node, "pipelines run on"))
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_pipeline",
        format!("there is no pipeline named {name}; `flotilla pipeline list` shows them"),
    )
}

async fn change(node: &Node, change: PipelineChange) -> Result<String, ApiError> {
    let pipelines = pipelines(node)?;
    let done = super::writer_job::run(node, |reply| WriteJob::Pipeline { change, reply }).await?;
    let position = done.map_err(|e| super::writer_job::change_refused(e, "invalid_pipeline"))?;
    pipelines.changed.notify_one();
    Ok(position.to_string())
}

/// Waits (briefly) for the manager to start the worker of a pipeline just added.
async fn worker_of(node: &Node, name: &str) -> Option<Arc<crate::pipeline::Worker>> {
    let pipelines = node.pipelines()?;
    for _ in 0..50 {
        if let Some(w) = pipelines.worker(name) {
            return Some(w);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    None
}

pub async fn list(State(node): State<Arc<Node>>) -> Result<Json<Value>, ApiError> {
    let pipelines = pipelines(&node)?;
    let mut out = Vec::new();
    for w in pipelines.all() {
        out.push(status_json(&node.readers, &w).await);
    }
    // Declared in the config but not installed (or declared differently).
    for (name, why) in pipelines.declared_problems() {
        match out.iter_mut().find(|p| p["name"] == name.as_str()) {
            Some(p) => p["config_warning"] = json!(why),
            None => out.push(json!({ "name": name, "state": "not_installed", "last_error": why })),
        }
    }
    Ok(Json(json!({ "pipelines": out })))
}

pub async fn get(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let w = pipelines(&node)?
        .worker(&name)
        .ok_or_else(|| not_found(&name))?;
    Ok(Json(status_json(&node.readers, &w).await))
}

pub async fn add(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let leader = node
        .leader()
        .ok_or_else(|| leader_only(&node, "pipelines are managed on"))?;
    let (spec, _): (PipelineSpec, _) =
        json_body(&headers, body, node.config.max_body_bytes).await?;
    spec.check()
        .map_err(|e| ApiError::bad_request("invalid_pipeline", e.0))?;
    // What can be known now is checked now: the source (by planning on a reader) and the
    // target (reachable, with the table and columns the pipeline delivers).
    let mut lease = node.readers.lease().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    let s = spec.clone();
    let plan = tokio::task::spawn_blocking(move || {
        let r = lease.reader();
        flotilla_store::plan_pipeline(&r.conn, &s)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    .map_err(|e| ApiError::bad_request("invalid_pipeline", e.to_string()))?;
    let d = crate::pipeline::Delivery::new(&spec, &plan, &leader.cluster_id, &leader.incarnation);
    if let Err(e) = check_target(&spec, &d, &node.config.pipeline_allow, &node.peers.http).await {
        let code = match e {
            TargetError::Refused(_) => "invalid_target",
            TargetError::Failed(_) => "target_unavailable",
        };
        return Err(ApiError::bad_request(code, e.to_string()));
    }
    let position = change(&node, PipelineChange::Add(Box::new(spec.clone()))).await?;
    let mut status = match worker_of(&node, &spec.name).await {
        Some(w) => status_json(&node.readers, &w).await,
        None => json!({ "name": spec.name }),
    };
    status["position"] = json!(position);
    Ok((StatusCode::CREATED, Json(status)))
}

pub async fn remove(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if pipelines(&node)?.worker(&name).is_none() {
        return Err(not_found(&name));
    }
    let position = change(&node, PipelineChange::Remove(name.clone())).await?;
    Ok(Json(json!({ "removed": name, "position": position })))
}

async fn set_paused(node: &Node, name: &str, paused: bool) -> Result<Json<Value>, ApiError> {
    let w = pipelines(node)?
        .worker(name)
        .ok_or_else(|| not_found(name))?;
    let position = change(
        node,
        PipelineChange::Pause {
            name: name.to_string(),
            paused,
        },
    )
    .await?;
    w.paused.store(paused, std::sync::atomic::Ordering::Relaxed);
    w.wake.notify_one();
    let mut status = status_json(&node.readers, &w).await;
    status["position"] = json!(position);
    Ok(Json(status))
}

pub async fn pause(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&node, &name, true).await
}

pub async fn resume(
    State(node): State<Arc<Node>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&node, &name, false).await
}
