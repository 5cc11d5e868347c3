//! Long downloads read on one snapshot of the database (`/v1/snapshot`, `/v1/backup`): a
//! connection of their own (one long read transaction, no client-statement rules), never one
//! that queries need, on a blocking thread, with a bound on slow clients.

use super::ApiError;
use crate::node::Node;
use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::StreamExt;
use rusqlite::Connection;
use std::time::{Duration, Instant};

/// A trickle keeps a stream alive as surely as silence: each stall-timeout window must carry
/// at least this much, or the stream ends.
const MIN_BYTES_PER_WINDOW: usize = 1 << 20;

/// Where a producer sends its chunks; `Err` says why the client is given up.
pub struct Sink {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    runtime: tokio::runtime::Handle,
    stall: Duration,
    window_start: Instant,
    window_bytes: usize,
}

impl Sink {
    pub fn send(&mut self, chunk: Vec<u8>) -> Result<(), &'static str> {
        // A client that stops reading gives up its stream (and the read transaction that holds
        // the WAL back) after the stall timeout.
        let len = chunk.len();
        let sent = self.runtime.block_on(tokio::time::timeout(
            self.stall,
            self.tx.send(Ok(Bytes::from(chunk))),
        ));
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err("the client went away"),
            Err(_) => return Err("the client stopped reading"),
        }
        self.window_bytes += len;
        if self.window_start.elapsed() >= self.stall {
            if self.window_bytes < MIN_BYTES_PER_WINDOW {
                return Err("the client reads too slowly (less than 1 MiB per stall timeout)");
            }
            (self.window_start, self.window_bytes) = (Instant::now(), 0);
        }
        Ok(())
    }
}

/// Runs `produce` on a blocking thread with a connection of its own and a snapshot permit (a
/// follower cannot swap its database away mid-stream; few streams run at once), and returns
/// the stream of what it sends. A failure after the start ends the stream with an error, so
/// the client sees a broken download rather than a short file.
pub fn stream_from_connection(
    node: &Node,
    produce: impl FnOnce(
            &Connection,
            &mut Sink,
        ) -> Result<Result<(), &'static str>, flotilla_store::StoreError>
        + Send
        + 'static,
) -> Result<impl futures_util::Stream<Item = Result<Bytes, std::io::Error>>, ApiError> {
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
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let mut sink = Sink {
        tx: tx.clone(),
        runtime: tokio::runtime::Handle::current(),
        stall: Duration::from_millis(node.config.snapshot_stall_timeout_ms),
        window_start: Instant::now(),
        window_bytes: 0,
    };
    tokio::task::spawn_blocking(move || {
        let _lease = lease;
        match produce(&conn, &mut sink) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => tracing::info!("download ended early: {why}"),
            Err(e) => {
                tracing::warn!("download failed: {e}");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    Ok(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
}
