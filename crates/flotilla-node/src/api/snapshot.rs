//! `GET /v1/snapshot`: a consistent copy of the database with its position (the stream format
//! is in `docs/physical-log.md`). Taken on a read snapshot: writes continue meanwhile.

use super::streamed::{stream_from_connection, Sink};
use super::ApiError;
use crate::node::Node;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub async fn snapshot(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    let body = stream_from_connection(&node, move |conn, sink: &mut Sink| {
        let mut head_tx = Some(head_tx);
        flotilla_store::snapshot::stream(conn, 1 << 20, |chunk| {
            if let Some(tx) = head_tx.take() {
                if let Ok(Some((h, _))) = flotilla_wire::SnapshotHeader::decode_prefix(&chunk) {
                    let _ = tx.send(h);
                }
            }
            sink.send(chunk)
        })
        .map(|r| r.map(|_| ()))
    })?;
    let header = head_rx.await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "snapshot_failed",
            "could not start the snapshot",
        )
    })?;
    // A cluster's leader may hold transactions not committed yet: a snapshot is only given
    // once the consensus committed everything it holds (never a state a failover drops).
    if node.cluster.is_some() {
        let mut position = node.position.subscribe();
        let committed = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            position.wait_for(|p| *p >= header.position),
        )
        .await;
        if !matches!(committed, Ok(Ok(_))) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!(
                    "the snapshot at {} is not committed by the cluster yet; retry",
                    header.position
                ),
            ));
        }
    }
    // The copy's owner reads the log after the copy's position next (a follower, or a new
    // data centre's link): retention keeps it from there while the copy streams and for a
    // while after, or a busy log could drop those records before they are asked for.
    let pin = node
        .leader()
        .map(|l| l.feed_pins.pin(header.position.lsn.0 + 1));
    let held = PinAfterCopy(pin);
    let body = futures_util::StreamExt::map(body, move |chunk| {
        let _ = &held;
        chunk
    });
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/vnd.flotilla.snapshot".to_string(),
            ),
            (
                header::HeaderName::from_static("x-flotilla-position"),
                header.position.to_string(),
            ),
            (
                header::CONTENT_LENGTH,
                (header.encode().len() as u64 + header.body_len() + 4).to_string(),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// How long the log stays pinned after a copy has been sent: enough for its owner to install it
/// and ask for what follows.
const PIN_AFTER_COPY_MS: u64 = 120_000;

/// Holds the log from a copy's position while the copy streams; released
/// [`PIN_AFTER_COPY_MS`] after the stream ends (sent, or broken off).
struct PinAfterCopy(Option<crate::leader::FeedPin>);

impl Drop for PinAfterCopy {
    fn drop(&mut self) {
        if let (Some(pin), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(PIN_AFTER_COPY_MS)).await;
                drop(pin);
            });
        }
    }
}
