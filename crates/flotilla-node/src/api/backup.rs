//! `GET /v1/backup`: the database as a plain SQLite file that `sqlite3` opens (the default), or
//! `?format=sql` as a SQL dump of the application's objects. Both are read on one snapshot,
//! while writes go on; the `X-Flotilla-Position` header says which position they hold.

use super::streamed::{stream_from_connection, Sink};
use super::ApiError;
use crate::node::Node;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupParams {
    format: Option<String>,
}

const POSITION: HeaderName = HeaderName::from_static("x-flotilla-position");

pub async fn backup(
    State(node): State<Arc<Node>>,
    params: Result<Query<BackupParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::bad_request(
            "bad_request",
            format!("{}; the only parameter is format=sqlite|sql", e.body_text()),
        )
    })?;
    let cluster = node.identity.get().cluster_id;
    let cluster_short: String = cluster.unwrap_or_default().chars().take(8).collect();
    match params.format.as_deref().unwrap_or("sqlite") {
        "sqlite" => {
            let (head_tx, head_rx) = tokio::sync::oneshot::channel();
            let body = stream_from_connection(&node, move |conn, sink: &mut Sink| {
                flotilla_store::snapshot::stream_database_file(
                    conn,
                    1 << 20,
                    |h| {
                        let _ = head_tx.send(h.clone());
                        Ok(())
                    },
                    |chunk| sink.send(chunk),
                )
            })?;
            let h = head_rx.await.map_err(|_| not_started())?;
            // Nothing leaves before the cluster committed what the snapshot holds.
            super::query::wait_committed(&node, h.position, commit_deadline(), "backup").await?;
            let name = format!("flotilla-{cluster_short}-{}.db", file_position(&h.position));
            Ok((
                [
                    (header::CONTENT_TYPE, "application/vnd.sqlite3".to_string()),
                    (POSITION, h.position.to_string()),
                    (
                        header::CONTENT_LENGTH,
                        (u64::from(h.page_size) * u64::from(h.page_count)).to_string(),
                    ),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}\""),
                    ),
                ],
                Body::from_stream(body),
            )
                .into_response())
        }
        "sql" => {
            let (head_tx, head_rx) = tokio::sync::oneshot::channel();
            let body = stream_from_connection(&node, move |conn, sink: &mut Sink| {
                flotilla_store::dump::dump_sql(
                    conn,
                    |position| {
                        let _ = head_tx.send(position);
                        Ok(())
                    },
                    |piece| sink.send(piece.into_bytes()),
                )
            })?;
            let position = head_rx.await.map_err(|_| not_started())?;
            super::query::wait_committed(&node, position, commit_deadline(), "backup").await?;
            let name = format!("flotilla-{cluster_short}-{}.sql", file_position(&position));
            Ok((
                [
                    (header::CONTENT_TYPE, "application/sql".to_string()),
                    (POSITION, position.to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}\""),
                    ),
                ],
                Body::from_stream(body),
            )
                .into_response())
        }
        other => Err(ApiError::bad_request(
            "bad_request",
            format!("format {other:?} is not one of sqlite (a database file) or sql (a dump)"),
        )),
    }
}

/// How long a backup on a cluster's leader waits for the commit of what its snapshot holds.
fn commit_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(10)
}

/// A position as it may appear in a file name (`1-42`).
fn file_position(p: &flotilla_types::Position) -> String {
    p.to_string().replace('/', "-")
}

fn not_started() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "snapshot_failed",
        "could not start reading the database (the node's log says why)",
    )
}
