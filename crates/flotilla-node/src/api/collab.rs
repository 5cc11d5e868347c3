//! Collaborative text (docs/collab.md): `/v1/collab/columns` makes a column collaborative and
//! lists those that are, and `/v1/collab/TABLE/KEY/COLUMN` is a document's WebSocket, speaking
//! the y-websocket protocol so that a stock Yjs client connects to it unchanged:
//! `new WebsocketProvider('ws://HOST:PORT/v1/collab', 'notes/42/body', doc)`.

use super::body::json_body;
use super::execute::leader_only;
use super::ApiError;
use crate::collab::{
    editor_channel, DocEvent, LockAction, LockRefused, LockState, Outgoing, MAX_LEASE_MS,
};
use crate::leader::{CollabChange, WriteJob};
use crate::node::Node;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{Path, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_store::collab::{CollabError, ResolvedDoc};
use flotilla_types::AccessRole;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The largest message an editor may send (an update, or a first sync of a big document).
pub const MAX_COLLAB_MESSAGE_BYTES: usize = 16 << 20;

/// How long a closed connection's last messages are read while it answers the close.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Each editor connection's initial read buffer.
const READ_BUFFER_BYTES: usize = 4 << 10;

/// Messages of one editor queued for its document at most (its reader waits beyond).
const QUEUED_PER_EDITOR: usize = 256;

/// An editor's messages handed to its document together at most.
const READ_BATCH: usize = 64;

/// Messages to an editor written together at most (then flushed).
const WRITE_BATCH: usize = 64;

/// How often an open connection's token is checked again: a token revoked (or a role
/// lowered) ends the connections it opened within this time.
const RECHECK_TOKEN_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnableRequest {
    table: String,
    column: String,
}

fn collab_error(e: CollabError) -> ApiError {
    match e {
        CollabError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
        CollabError::Invalid(m) => ApiError::bad_request("invalid_collab", m),
        CollabError::Store(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}

/// Runs `f` on one of the node's pooled readers (see `collab::read_own`).
async fn read<T: Send + 'static>(
    node: &Node,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, CollabError> + Send + 'static,
) -> Result<T, ApiError> {
    crate::collab::read_own(node, f)
        .await
        .map_err(|why| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why))?
        .map_err(collab_error)
}

/// `POST /v1/collab/columns {"table", "column"}` (admin): makes the column collaborative.
pub async fn enable(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (req, _): (EnableRequest, _) =
        json_body(&headers, body, node.config.max_body_bytes).await?;
    let (enabled, column) = tokio::sync::oneshot::channel();
    let change = CollabChange::Enable {
        table: req.table,
        column: req.column,
        enabled,
    };
    let done = super::writer_job::run(&node, |reply| WriteJob::Collab { change, reply }).await?;
    let position = done.map_err(|e| match e {
        crate::leader::ChangeError::Collab(e) => collab_error(e),
        e => super::writer_job::change_refused(e, "invalid_collab"),
    })?;
    let column = column
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no answer"))?;
    Ok(Json(
        json!({ "column": column, "position": position.to_string() }),
    ))
}

/// `GET /v1/collab/columns`: the collaborative columns.
pub async fn columns(State(node): State<Arc<Node>>) -> Result<Json<Value>, ApiError> {
    let columns = read(&node, |c| {
        flotilla_store::collab::read_collab_columns(c).map_err(CollabError::Store)
    })
    .await?;
    Ok(Json(json!({ "columns": columns })))
}

/// `GET /v1/collab/TABLE/KEY/COLUMN` with a WebSocket upgrade: the document's editors. A
/// token of the read role follows the document; the write role edits it too. Browsers, which
/// cannot set headers on a WebSocket, may give the token as `?token=` (see the auth layer).
pub async fn connect(
    State(node): State<Arc<Node>>,
    Path((table, key, column)): Path<(String, String, String)>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // A follower serves documents to read, live, as the leader stores them.
    let leading = node.leader().is_some();
    let doc = read(&node, move |c| {
        flotilla_store::collab::resolve_doc(c, &table, &key, &column)
    })
    .await?;
    let ws = ws.map_err(|e| super::not_a_websocket("/v1/collab/TABLE/KEY/COLUMN", e))?;
    let lock = crate::auth::query_param(&uri, "lock");
    let token = crate::auth::presented_token(&headers, &uri);
    let can_edit = match &node.keyring {
        _ if !leading => false,
        None => true,
        Some(k) => k.check(token.as_deref(), AccessRole::Write).await.is_ok(),
    };
    Ok(ws
        .max_message_size(MAX_COLLAB_MESSAGE_BYTES)
        .max_frame_size(MAX_COLLAB_MESSAGE_BYTES)
        // Keystrokes are small: a small read buffer per editor (the default is 128 KiB), which
        // grows for a large message.
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| serve(node, doc, can_edit, lock, token, socket))
        .into_response())
}

async fn serve(
    node: Arc<Node>,
    doc: ResolvedDoc,
    can_edit: bool,
    lock: Option<String>,
    token: Option<String>,
    socket: WebSocket,
) {
    // What the token was checked for at the upgrade (the auth layer checked it may read).
    let role = if can_edit {
        AccessRole::Write
    } else {
        AccessRole::Read
    };
    let mut recheck = tokio::time::interval_at(
        tokio::time::Instant::now() + RECHECK_TOKEN_EVERY,
        RECHECK_TOKEN_EVERY,
    );
    let hub = node.collab.clone();
    let conn = hub.new_conn();
    let (out_tx, mut out_rx) = editor_channel();
    let join = DocEvent::Join {
        conn,
        out: out_tx,
        can_edit,
        lock,
    };
    let to_doc = hub.send(&node, doc, join);
    let permits = Arc::new(Semaphore::new(QUEUED_PER_EDITOR));
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            out = out_rx.rx.recv() => match out {
                Some(Outgoing::Binary { bytes, whole }) => {
                    // What else is queued already goes in the same write (a keystroke each:
                    // one system call for many under load, not one each).
                    let mut written = vec![(bytes.len(), whole)];
                    let mut then_close = None;
                    let mut sent = sink.feed(Message::Binary(bytes.into())).await.is_ok();
                    while sent && written.len() < WRITE_BATCH {
                        match out_rx.rx.try_recv() {
                            Ok(Outgoing::Binary { bytes, whole }) => {
                                written.push((bytes.len(), whole));
                                sent = sink.feed(Message::Binary(bytes.into())).await.is_ok();
                            }
                            Ok(Outgoing::Close { code, reason }) => {
                                then_close = Some((code, reason));
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if !sent || sink.flush().await.is_err() {
                        break;
                    }
                    for (len, whole) in written {
                        out_rx.written(len, whole);
                    }
                    if let Some((code, reason)) = then_close {
                        close(&mut sink, &mut stream, code, &reason).await;
                        break;
                    }
                }
                Some(Outgoing::Close { code, reason }) => {
                    close(&mut sink, &mut stream, code, &reason).await;
                    break;
                }
                None => break,
            },
            _ = recheck.tick(), if node.keyring.is_some() => {
                let Some(k) = &node.keyring else { continue };
                if let Err(denied) = k.check(token.as_deref(), role).await {
                    let why = format!("{denied}: this connection ends");
                    close(&mut sink, &mut stream, 1008, &why).await;
                    break;
                }
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    let Ok(mut permit) = permits.clone().acquire_owned().await else { break };
                    // What else has arrived already goes to the document with it (one event
                    // for many keystrokes under load), a permit each.
                    let mut batch = vec![bytes.to_vec()];
                    let mut then = None;
                    while batch.len() < READ_BATCH {
                        let Ok(more) = permits.clone().try_acquire_owned() else { break };
                        match stream.next().now_or_never() {
                            Some(Some(Ok(Message::Binary(bytes)))) => {
                                batch.push(bytes.to_vec());
                                permit.merge(more);
                            }
                            Some(other) => {
                                then = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    let ev = DocEvent::Message { conn, batch, permit };
                    if to_doc.send(ev).is_err() {
                        break;
                    }
                    match then {
                        None | Some(Some(Ok(Message::Binary(_)))) => {}
                        Some(Some(Ok(Message::Text(_)))) => {
                            refuse_text(&mut sink).await;
                            break;
                        }
                        Some(Some(Ok(_))) => {}
                        Some(Some(Err(_)) | None) => break,
                    }
                }
                Some(Ok(Message::Text(_))) => {
                    refuse_text(&mut sink).await;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    let _ = to_doc.send(DocEvent::Leave { conn });
}

/// A character that is not shown but changes what is shown around it: a control character,
/// or a bidirectional override or isolate (U+202E would show a holder's name reversed to the
/// others), or a zero-width one.
fn hides_text(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// A text message ends the connection: 1003 and why.
async fn refuse_text(sink: &mut futures_util::stream::SplitSink<WebSocket, Message>) {
    let frame = CloseFrame {
        code: 1003,
        reason: "the y-websocket protocol sends binary messages".into(),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
}

/// Closes the WebSocket with `code` and `reason`, then the closing handshake: what the editor
/// was still sending is read and dropped until it answers (bounded), so the socket is not
/// closed on unread bytes — a reset that could lose the close frame and its reason.
async fn close(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    code: u16,
    reason: &str,
) {
    let frame = CloseFrame {
        code,
        reason: close_reason(reason).into(),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LockRequest {
    /// Who holds it (shown to the others).
    holder: Option<String>,
    /// The lease (default 30 s, at most 10 minutes).
    seconds: Option<u64>,
    /// To renew a lock held: its id.
    lock: Option<String>,
}

async fn lock_action(
    node: &Arc<Node>,
    (table, key, column): (String, String, String),
    action: LockAction,
) -> Result<Option<LockState>, ApiError> {
    if node.leader().is_none() {
        return Err(leader_only(node, "documents are locked on"));
    }
    let doc = read(node, move |c| {
        flotilla_store::collab::resolve_doc(c, &table, &key, &column)
    })
    .await?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    node.collab
        .send(node, doc, DocEvent::Lock { action, reply });
    let unavailable = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the document could not be opened; retry",
        )
    };
    answer
        .await
        .map_err(|_| unavailable())?
        .map_err(|e| match e {
            LockRefused::Held { .. } => {
                ApiError::new(StatusCode::CONFLICT, "locked", e.to_string())
            }
            LockRefused::NotHeld(_) => {
                ApiError::new(StatusCode::CONFLICT, "not_locked", e.to_string())
            }
        })
}

/// `POST /v1/collab/TABLE/KEY/COLUMN/lock {"holder", "seconds", "lock"}` (write role): takes
/// the document's lock for a lease, or renews it (`lock`: its id). While it is held only
/// editors presenting it (`?lock=ID` on their WebSocket) edit; the others read.
pub async fn take_lock(
    State(node): State<Arc<Node>>,
    Path(address): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req: LockRequest = if headers.get(axum::http::header::CONTENT_TYPE).is_some() {
        json_body(&headers, body, node.config.max_body_bytes)
            .await?
            .0
    } else {
        LockRequest::default()
    };
    let holder = req.holder.unwrap_or_else(|| "an editor".into());
    if holder.is_empty() || holder.len() > 100 || holder.chars().any(hides_text) {
        return Err(ApiError::bad_request(
            "invalid_lock",
            "holder: 1 to 100 characters, no control, bidirectional or zero-width characters",
        ));
    }
    let seconds = req.seconds.unwrap_or(30);
    if seconds == 0 || seconds * 1000 > MAX_LEASE_MS {
        return Err(ApiError::bad_request(
            "invalid_lock",
            format!("seconds: from 1 to {}", MAX_LEASE_MS / 1000),
        ));
    }
    let action = LockAction::Take {
        holder,
        lease_ms: seconds * 1000,
        renew: req.lock,
    };
    let state = lock_action(&node, address, action).await?;
    Ok(Json(json!(state)))
}

/// `DELETE /v1/collab/TABLE/KEY/COLUMN/lock?lock=ID` (write role): releases the lock.
pub async fn release_lock(
    State(node): State<Arc<Node>>,
    Path(address): Path<(String, String, String)>,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let Some(lock) = crate::auth::query_param(&uri, "lock") else {
        return Err(ApiError::bad_request(
            "invalid_lock",
            "give the lock's id: DELETE .../lock?lock=ID",
        ));
    };
    lock_action(&node, address, LockAction::Release { lock }).await?;
    Ok(Json(json!({ "released": true })))
}

/// A close frame's reason holds at most 123 bytes.
fn close_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}
