//! The HTTP/JSON client API (documented in `docs/api.md`).

mod backup;
mod body;
pub mod changes;
mod collab;
mod conflicts;
pub mod decode;
mod devices;
pub mod edit_page;

mod execute;
mod followers;
mod forward;
mod health;
mod membership;
mod metrics;
mod pipelines;
mod query;
mod replication;
mod restore;
mod snapshot;
mod status;
mod streamed;
pub mod sync;
mod tokens;
pub mod values;
pub mod web;
mod writer_job;

pub use crate::api_error::ApiError;

use crate::node::Node;
use axum::extract::{State, WebSocketUpgrade};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use axum::Router;
use std::sync::Arc;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/execute", post(execute::execute))
        .route("/v1/query", post(query::query))
        .route("/v1/status", get(status::status))
        .route("/v1/dc", get(status::dc))
        .route("/v1/snapshot", get(snapshot::snapshot))
        .route("/v1/backup", get(backup::backup))
        .route("/v1/restore", post(restore::restore))
        .route("/v1/changes", get(changes::changes))
        .route("/v1/followers/{id}", delete(followers::remove))
        .route("/v1/pipelines", get(pipelines::list).post(pipelines::add))
        .route(
            "/v1/pipelines/{name}",
            get(pipelines::get).delete(pipelines::remove),
        )
        .route("/v1/pipelines/{name}/pause", post(pipelines::pause))
        .route("/v1/pipelines/{name}/resume", post(pipelines::resume))
        .route("/v1/conflicts/policies", put(conflicts::set_policy))
        .route("/v1/conflicts/prune", post(conflicts::prune))
        .route("/v1/sync", post(sync::sync))
        .route(
            "/v1/collab/columns",
            get(collab::columns).post(collab::enable),
        )
        .route("/v1/collab/{table}/{key}/{column}", get(collab::connect))
        .route(
            "/v1/collab/{table}/{key}/{column}/lock",
            post(collab::take_lock).delete(collab::release_lock),
        )
        .route("/v1/devices", get(devices::list).post(devices::add))
        .route("/v1/devices/{name}", delete(devices::revoke))
        .route("/v1/shapes", get(devices::shapes).put(devices::set_shape))
        .route("/v1/shapes/{table}", delete(devices::remove_shape))
        .route("/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/v1/tokens/{id}", delete(tokens::revoke))
        .route("/v1/replication", get(replication))
        .route("/v1/raft", get(raft))
        .route("/v1/cluster", get(status::cluster))
        .route("/v1/cluster/promote", post(status::promote))
        .route("/v1/cluster/members", post(membership::add))
        .route("/v1/cluster/members/{name}", delete(membership::remove))
        .route("/metrics", get(metrics::metrics))
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/favicon.ico", get(edit_page::no_icon))
        .route("/edit/app.js", get(edit_page::app))
        .route("/edit/{table}/{key}/{column}", get(edit_page::page))
        .route("/calendar", get(web::calendar_root))
        .route("/calendar/", get(web::calendar_index))
        .route("/calendar/{file}", get(web::calendar_file))
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see docs/api.md",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not accept that method; see docs/api.md",
            )
        })
        .with_state(node.clone())
        // Outermost: nothing is answered to a request the token does not allow.
        .layer(axum::middleware::from_fn_with_state(
            node,
            crate::auth::layer,
        ))
}

/// A cluster member's consensus messages from a peer (see `cluster::transport`).
/// A WebSocket endpoint reached without a WebSocket upgrade: the API's JSON error, naming
/// what is missing (axum's own rejection is plain text).
pub(crate) fn not_a_websocket(
    what: &str,
    e: axum::extract::ws::rejection::WebSocketUpgradeRejection,
) -> ApiError {
    ApiError::bad_request(
        "bad_request",
        format!("{what} is a WebSocket endpoint: {}", e.body_text()),
    )
}

async fn raft(
    State(node): State<Arc<Node>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<axum::response::Response, ApiError> {
    let ws = ws.map_err(|e| not_a_websocket("/v1/raft", e))?;
    let Some(cluster) = node.cluster.clone() else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            "this node is not a cluster member (flotilla serve --cluster)",
        ));
    };
    Ok(ws
        .max_message_size(crate::cluster::transport::MAX_RAFT_MESSAGE_BYTES)
        .max_frame_size(crate::cluster::transport::MAX_RAFT_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            crate::cluster::transport::serve_inbound(cluster.inbound.clone(), socket)
        })
        .into_response())
}

async fn replication(
    State(node): State<Arc<Node>>,
    headers: axum::http::HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<axum::response::Response, ApiError> {
    let ws = ws.map_err(|e| not_a_websocket("/v1/replication", e))?;
    let credential = crate::auth::Credential::of(&headers, flotilla_types::AccessRole::Replicate);
    Ok(ws
        .max_message_size(flotilla_wire::MAX_FOLLOWER_MESSAGE_BYTES)
        .max_frame_size(flotilla_wire::MAX_FOLLOWER_MESSAGE_BYTES)
        .on_upgrade(move |socket| replication::serve_session(node, socket, credential))
        .into_response())
}
