//! A y-websocket client for tests and benchmarks: a `yrs` document kept in sync with a
//! server's document over the y-websocket protocol, as a stock Yjs client keeps it (it answers
//! the server's sync step 1, asks with its own, applies what comes, sends its own edits).

use futures_util::{SinkExt, StreamExt};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::encoding::read::Cursor;
use yrs::sync::protocol::{Message, MessageReader, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, OffsetKind, Options, ReadTxn, StateVector, Text, TextRef, Transact};

/// How a client's connection ended (`None` while open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: Option<u16>,
    pub reason: String,
}

pub struct YjsClient {
    pub doc: Doc,
    text: TextRef,
    out: mpsc::UnboundedSender<WsMessage>,
    /// Bumped on every change of the document (local or remote).
    changed: watch::Receiver<u64>,
    closed: Arc<Mutex<Option<Closed>>>,
    /// Permission-denied messages the server sent.
    pub denied: Arc<Mutex<Vec<String>>>,
    /// Bytes of the updates this client sent (its own edits).
    pub sent_bytes: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for YjsClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl YjsClient {
    /// Connects to `ws_url` (`ws://HOST:PORT/v1/collab/TABLE/KEY/COLUMN`, with `?token=` if
    /// needed) with a fresh document.
    pub async fn connect(ws_url: &str) -> anyhow::Result<YjsClient> {
        Self::connect_with(
            ws_url,
            Doc::with_options(Options {
                offset_kind: OffsetKind::Utf16,
                ..Options::default()
            }),
        )
        .await
    }

    /// Connects with `doc` (which may hold edits made offline: the sync sends them).
    pub async fn connect_with(ws_url: &str, doc: Doc) -> anyhow::Result<YjsClient> {
        let request = ws_url.into_client_request()?;
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async_with_config(request, None, true),
        )
        .await??;
        let text = doc.get_or_insert_text("text");
        let (out, mut out_rx) = mpsc::unbounded_channel::<WsMessage>();
        let (changed_tx, changed) = watch::channel(0u64);
        let changed_tx = Arc::new(changed_tx);
        let closed: Arc<Mutex<Option<Closed>>> = Arc::default();
        let denied: Arc<Mutex<Vec<String>>> = Arc::default();
        let sent_bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        // Local edits go to the server as they happen (as y-websocket's provider does).
        {
            let out = out.clone();
            let sent = sent_bytes.clone();
            let changed_tx = changed_tx.clone();
            doc.observe_update_v1("client", move |txn, e| {
                changed_tx.send_modify(|n| *n += 1);
                if txn.origin().is_none() {
                    sent.fetch_add(e.update.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    let msg = Message::Sync(SyncMessage::Update(e.update.clone())).encode_v1();
                    let _ = out.send(WsMessage::Binary(msg.into()));
                }
            })
            .map_err(|e| anyhow::anyhow!("observe: {e}"))?;
        }
        // Ask for what the server has.
        let sv = doc.transact().state_vector();
        out.send(WsMessage::Binary(
            Message::Sync(SyncMessage::SyncStep1(sv)).encode_v1().into(),
        ))?;
        let (mut sink, mut stream) = ws.split();
        let (d, c, dn, out2) = (doc.clone(), closed.clone(), denied.clone(), out.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = out_rx.recv() => match m {
                        Some(m) => if sink.send(m).await.is_err() { break },
                        None => break,
                    },
                    m = stream.next() => match m {
                        Some(Ok(WsMessage::Binary(b))) => {
                            let mut decoder = DecoderV1::new(Cursor::new(&b));
                            for msg in MessageReader::new(&mut decoder).flatten() {
                                match msg {
                                    Message::Sync(SyncMessage::SyncStep1(sv)) => {
                                        let diff = d.transact().encode_diff_v1(&sv);
                                        let reply = Message::Sync(SyncMessage::SyncStep2(diff));
                                        let _ = out2.send(WsMessage::Binary(reply.encode_v1().into()));
                                    }
                                    Message::Sync(SyncMessage::SyncStep2(u))
                                    | Message::Sync(SyncMessage::Update(u)) => {
                                        if let Ok(u) = yrs::Update::decode_v1(&u) {
                                            let mut txn = d.transact_mut_with("remote");
                                            let _ = txn.apply_update(u);
                                        }
                                    }
                                    Message::Auth(Some(reason)) => {
                                        dn.lock().unwrap().push(reason);
                                    }
                                    _ => {}
                                }
                            }
                        }
                        Some(Ok(WsMessage::Close(frame))) => {
                            *c.lock().unwrap() = Some(Closed {
                                code: frame.as_ref().map(|f| u16::from(f.code)),
                                reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                            });
                            break;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
            let mut c = c.lock().unwrap();
            if c.is_none() {
                *c = Some(Closed {
                    code: None,
                    reason: "connection ended".into(),
                });
            }
        });
        Ok(YjsClient {
            doc,
            text,
            out,
            changed,
            closed,
            denied,
            sent_bytes,
            task,
        })
    }

    pub fn text(&self) -> String {
        self.text.get_string(&self.doc.transact())
    }

    /// Inserts at `at` (UTF-16 units); the edit goes to the server.
    pub fn insert(&self, at: u32, s: &str) {
        self.text.insert(&mut self.doc.transact_mut(), at, s);
    }

    pub fn delete(&self, at: u32, len: u32) {
        self.text
            .remove_range(&mut self.doc.transact_mut(), at, len);
    }

    /// Sends raw bytes as one binary message (for bad-input tests).
    pub fn send_raw(&self, bytes: Vec<u8>) {
        let _ = self.out.send(WsMessage::Binary(bytes.into()));
    }

    /// How the connection ended, if it did.
    pub fn closed(&self) -> Option<Closed> {
        self.closed.lock().unwrap().clone()
    }

    /// Waits (bounded by `timeout`) until `pred` holds of the text; the last text otherwise.
    pub async fn wait_text(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let t = self.text();
            if pred(&t) {
                return Ok(t);
            }
            if self.closed().is_some() {
                return Err(t);
            }
            match tokio::time::timeout_at(deadline, self.changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(self.text()),
            }
        }
    }

    /// Waits (bounded) until the connection ends.
    pub async fn wait_closed(&self, timeout: Duration) -> Option<Closed> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Some(c) = self.closed() {
                return Some(c);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    /// The whole document as one update (to start another client offline from it).
    pub fn state(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }
}
