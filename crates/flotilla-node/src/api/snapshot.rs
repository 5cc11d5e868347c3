//! `GET /v1/snapshot`: a consistent copy of the database with its position (the stream format
//! is in `docs/physical-log.md`). Taken on a read snapshot: writes continue meanwhile.

use super::ApiError;
use crate::node::Node;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;

pub async fn snapshot(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    // A snapshot permit keeps a follower from swapping its database away mid-stream, and
    // bounds how many streams run; the stream uses its own connection (one long read
    // transaction, no client-statement rules), never one that queries need.
    let lease = node.readers.snapshot_permit().map_err(|e| {
        let (status, code) = match e {
            crate::readers::ReaderError::TooManySnapshots => {
                (StatusCode::SERVICE_UNAVAILABLE, "busy")
            }
            _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        ApiError::new(status, code, e.to_string())
    })?;
    let conn = flotilla_store::open_reader(&node.db_path).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    let stall = std::time::Duration::from_millis(node.config.snapshot_stall_timeout_ms);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut head_tx = Some(head_tx);
        let mut first = true;
        let _lease = lease;
        // A trickle keeps a stream alive as surely as silence: each stall-timeout window must
        // carry at least this much, or the stream ends.
        const MIN_BYTES_PER_WINDOW: usize = 1 << 20;
        let (mut window_start, mut window_bytes) = (std::time::Instant::now(), 0usize);
        let res = flotilla_store::snapshot::stream(&conn, 1 << 20, |chunk| {
            if first {
                first = false;
                if let Some(h) = flotilla_wire::SnapshotHeader::decode_prefix(&chunk)
                    .ok()
                    .flatten()
                {
                    let _ = head_tx.take().expect("once").send(h.0);
                }
            }
            // A client that stops reading gives up its stream (and the read transaction that
            // holds the WAL back) after the stall timeout.
            let len = chunk.len();
            match runtime.block_on(tokio::time::timeout(stall, tx.send(Ok(Bytes::from(chunk))))) {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("the client went away"),
                Err(_) => return Err("the client stopped reading"),
            }
            window_bytes += len;
            if window_start.elapsed() >= stall {
                if window_bytes < MIN_BYTES_PER_WINDOW {
                    return Err("the client reads too slowly (less than 1 MiB per stall timeout)");
                }
                (window_start, window_bytes) = (std::time::Instant::now(), 0);
            }
            Ok(())
        });
        match res {
            Ok(Ok(_)) => {}
            Ok(Err(why)) => tracing::info!("snapshot stream ended early: {why}"),
            Err(e) => {
                tracing::warn!("snapshot failed: {e}");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let header = head_rx.await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "snapshot_failed",
            "could not start the snapshot",
        )
    })?;
    let stream = tokio_stream_from(rx);
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
        Body::from_stream(stream),
    )
        .into_response())
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}
