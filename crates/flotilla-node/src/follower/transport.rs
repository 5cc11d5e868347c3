//! The follower's end of a replication session: a WebSocket to `<leader>/v1/replication`.
//! Incoming messages are decoded here and handed to the driver as events, tagged with the
//! connection's generation so that events of an old connection are ignored.

use super::leader_finder::LeaderFinder;
use flotilla_core::FollowerEvent;
use flotilla_wire::LeaderMessage;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

pub type Tagged = (u64, FollowerEvent);

/// Messages to the leader waiting to be written.
const OUTGOING_QUEUE: usize = 64;

pub struct Connection {
    pub generation: u64,
    /// Messages to the leader (a hello, then acknowledgements: one per applied batch or
    /// heartbeat). Bounded; acknowledgements are cumulative, so one that finds it full (a
    /// leader that stopped reading) is dropped: the next says as much.
    pub outgoing: mpsc::Sender<Vec<u8>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // A session that is dropped is over: its events are stale from now on anyway.
        self.task.abort();
    }
}

/// How to open a session: over TLS with these roots, presenting this token.
#[derive(Clone)]
pub struct Credentials {
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pub token: Option<String>,
}

/// Why the leader refused a request of this follower (the replication session, a snapshot),
/// for the follower's status.
pub fn refused_by_leader(ws_url: &str, status: u16) -> String {
    match status {
        401 => format!(
            "the leader at {ws_url} requires a token: start this follower with \
             --replication-token (a token with the replicate role; `flotilla token create \
             --role replicate` on the leader makes one), or the token given is unknown or revoked"
        ),
        403 => format!(
            "the leader at {ws_url} refused this follower's token: it lacks the replicate role"
        ),
        other => format!("the leader at {ws_url} answered {other} to the replication request"),
    }
}

/// Connects to the node that leads, as `finder` finds it first (on a cluster, the node given
/// may not lead, and after a session ended the leader may have changed).
pub fn connect(
    finder: Arc<LeaderFinder>,
    credentials: Credentials,
    generation: u64,
    events: mpsc::Sender<Tagged>,
) -> Connection {
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(OUTGOING_QUEUE);
    let task = tokio::spawn(async move {
        finder.refresh().await;
        let leader_url = finder.current();
        let ws_url = match leader_url.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}/v1/replication"),
            None => format!(
                "ws://{}/v1/replication",
                leader_url.trim_start_matches("http://")
            ),
        };
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(flotilla_wire::MAX_MESSAGE_BYTES);
        config.max_frame_size = Some(flotilla_wire::MAX_MESSAGE_BYTES);
        let lost = |reason: String| (generation, FollowerEvent::ConnectionLost { reason });
        let request = match ws_url.as_str().into_client_request() {
            Ok(mut r) => {
                if let Some(t) = &credentials.token {
                    match format!("Bearer {t}").parse() {
                        Ok(v) => {
                            r.headers_mut().insert("authorization", v);
                        }
                        Err(_) => {
                            let _ = events
                                .send(lost(
                                    "the replication token is not a valid header value".into(),
                                ))
                                .await;
                            return;
                        }
                    }
                }
                r
            }
            Err(e) => {
                let _ = events
                    .send(lost(format!("bad leader URL {ws_url}: {e}")))
                    .await;
                return;
            }
        };
        let connector = credentials
            .tls
            .clone()
            .map(tokio_tungstenite::Connector::Rustls);
        let connected = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio_tungstenite::connect_async_tls_with_config(
                request,
                Some(config),
                true,
                connector,
            ),
        )
        .await;
        let ws = match connected {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                let _ = events
                    .send(lost(refused_by_leader(&ws_url, resp.status().as_u16())))
                    .await;
                return;
            }
            Ok(Err(e)) => {
                let _ = events
                    .send(lost(format!("cannot reach the leader at {ws_url}: {e}")))
                    .await;
                return;
            }
            Err(_) => {
                let _ = events
                    .send(lost(format!("connecting to {ws_url} timed out")))
                    .await;
                return;
            }
        };
        let _ = events.send((generation, FollowerEvent::Connected)).await;
        let (mut sink, mut stream) = ws.split();
        loop {
            tokio::select! {
                out = out_rx.recv() => match out {
                    Some(bytes) => {
                        if let Err(e) = sink.send(Message::Binary(bytes.into())).await {
                            let _ = events.send(lost(format!("send failed: {e}"))).await;
                            return;
                        }
                    }
                    None => {
                        let _ = sink.close().await;
                        return;
                    }
                },
                msg = stream.next() => match msg {
                    Some(Ok(Message::Binary(b))) => match LeaderMessage::decode(&b) {
                        Ok(m) => {
                            if events
                                .send((generation, FollowerEvent::Received(m)))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = events.send(lost(format!("bad message from the leader: {e}"))).await;
                            return;
                        }
                    },
                    Some(Ok(Message::Close(_))) | None => {
                        let _ = events.send(lost("the leader closed the session".into())).await;
                        return;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        let _ = events.send(lost(format!("connection error: {e}"))).await;
                        return;
                    }
                },
            }
        }
    });
    Connection {
        generation,
        outgoing: out_tx,
        task,
    }
}
