//! Consensus messages between members: each member dials every other at `/v1/raft` (a WebSocket,
//! with its replication token) and only *sends* on the connection it dialled; what arrives on a
//! connection another member dialled is handed to the consensus task. One link per peer, each
//! with a bounded queue: Raft tolerates lost messages (it sends again), so a full queue or a
//! broken connection drops messages rather than holding the consensus task up, and the task
//! hears `Unreachable` so that Raft probes that peer gently.

use crate::follower::transport::Credentials;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Messages waiting for one peer.
const LINK_QUEUE: usize = 1024;
/// The largest consensus message (a batch of entries is at most `max_bytes_per_message`, but
/// one entry may be a whole transaction record).
pub const MAX_RAFT_MESSAGE_BYTES: usize = flotilla_wire::MAX_MESSAGE_BYTES;

/// The sending end of the link to one peer.
pub struct Link {
    queue: mpsc::Sender<Vec<u8>>,
}

impl Link {
    /// Queues a message; `false` when the queue is full (the message is dropped).
    pub fn send(&self, bytes: Vec<u8>) -> bool {
        self.queue.try_send(bytes).is_ok()
    }
}

/// The WebSocket URL of a member's consensus endpoint.
pub fn raft_url(member_url: &str) -> String {
    match member_url.strip_prefix("https://") {
        Some(rest) => format!("wss://{}/v1/raft", rest.trim_end_matches('/')),
        None => format!(
            "ws://{}/v1/raft",
            member_url
                .trim_start_matches("http://")
                .trim_end_matches('/')
        ),
    }
}

/// Starts the link to member `id` at `url`; reports `id` on `unreachable` whenever a
/// connection fails or breaks.
pub fn spawn_link(
    id: u64,
    url: &str,
    credentials: Credentials,
    unreachable: mpsc::Sender<u64>,
    shutdown: CancellationToken,
) -> Link {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(LINK_QUEUE);
    let ws_url = raft_url(url);
    tokio::spawn(async move {
        let backoff = flotilla_core::Backoff {
            initial_ms: 100,
            max_ms: 2_000,
        };
        let mut attempt = 0u32;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match run_connection(&ws_url, &credentials, &mut rx, &shutdown).await {
                Ok(()) => return,
                Err(reason) => {
                    tracing::debug!(peer = id, "consensus link to {ws_url}: {reason}");
                    let _ = unreachable.try_send(id);
                    attempt += 1;
                }
            }
            // Messages queued meanwhile are stale by the time a connection exists: Raft sends
            // what is still needed again.
            while rx.try_recv().is_ok() {}
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(
                    backoff.delay_ms(attempt.min(8), rand::random::<u16>() % 1001),
                )) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    });
    Link { queue: tx }
}

/// One connection: sends queued messages until it breaks (`Err`) or the node stops (`Ok`).
async fn run_connection(
    ws_url: &str,
    credentials: &Credentials,
    rx: &mut mpsc::Receiver<Vec<u8>>,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let mut request = ws_url
        .into_client_request()
        .map_err(|e| format!("bad member URL {ws_url}: {e}"))?;
    if let Some(t) = &credentials.token {
        let v = format!("Bearer {t}")
            .parse()
            .map_err(|_| "the replication token is not a valid header value".to_string())?;
        request.headers_mut().insert("authorization", v);
    }
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(MAX_RAFT_MESSAGE_BYTES);
    config.max_frame_size = Some(MAX_RAFT_MESSAGE_BYTES);
    let connector = credentials
        .tls
        .clone()
        .map(tokio_tungstenite::Connector::Rustls);
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector),
    )
    .await
    .map_err(|_| "connecting timed out".to_string())?
    .map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            crate::follower::transport::refused_by_leader(ws_url, resp.status().as_u16())
        }
        e => e.to_string(),
    })?;
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(bytes) = msg else { return Ok(()) };
                sink.send(Message::Binary(bytes.into()))
                    .await
                    .map_err(|e| format!("sending failed: {e}"))?;
            }
            // The peer never sends on this connection; reading notices it closing.
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Close(_))) | None => return Err("the peer closed the connection".into()),
                Some(Err(e)) => return Err(format!("connection error: {e}")),
                Some(Ok(_)) => {}
            },
            _ = shutdown.cancelled() => {
                let _ = sink.close().await;
                return Ok(());
            }
        }
    }
}

/// Serves a connection another member dialled: every binary message is an envelope for the
/// consensus task (a full queue drops it, as a lost message).
pub async fn serve_inbound(inbound: mpsc::Sender<Vec<u8>>, socket: axum::extract::ws::WebSocket) {
    use axum::extract::ws::Message as WsMessage;
    let (_sink, mut stream) = socket.split();
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(WsMessage::Binary(b)) => {
                if inbound.try_send(b.to_vec()).is_err() && inbound.is_closed() {
                    return;
                }
            }
            Ok(WsMessage::Close(_)) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A router serving `/v1/raft` for `inbound` alone, without authentication: for tests of the
/// consensus transport (the node serves the route behind its authentication).
pub fn bare_router(inbound: mpsc::Sender<Vec<u8>>) -> axum::Router {
    use axum::extract::WebSocketUpgrade;
    axum::Router::new().route(
        "/v1/raft",
        axum::routing::get(move |ws: WebSocketUpgrade| {
            let inbound = inbound.clone();
            async move {
                ws.max_message_size(MAX_RAFT_MESSAGE_BYTES)
                    .on_upgrade(move |socket| serve_inbound(inbound, socket))
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_urls_become_consensus_endpoints() {
        assert_eq!(
            raft_url("http://127.0.0.1:4790"),
            "ws://127.0.0.1:4790/v1/raft"
        );
        assert_eq!(raft_url("https://db1:4790/"), "wss://db1:4790/v1/raft");
    }
}
