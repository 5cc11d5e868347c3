//! `GET /v1/changes`: the change feed. Committed transactions from the leader's log as
//! newline-delimited JSON, one line per transaction, in commit order; resumable from any
//! retained position (at-least-once: a consumer de-duplicates by position).

use super::execute::leader_only;
use super::ApiError;
use crate::node::Node;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use base64::Engine;
use flotilla_log::LogError;
use flotilla_types::{LogRecord, Lsn, Position, RowItem, SqlValue, TableShape};

/// Records read from the log at a time for the change feed.
const FEED_BATCH_RECORDS: usize = 10_000;
const FEED_BATCH_BYTES: usize = 4 << 20;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    from: Option<String>,
    tables: Option<String>,
    follow: Option<String>,
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("a string serialises");
}

/// A value as JSON, as everywhere in the API (BLOBs as `{"base64": ...}`, non-finite reals as
/// strings).
fn json_value(out: &mut Vec<u8>, v: &SqlValue) {
    match v {
        SqlValue::Null => out.extend_from_slice(b"null"),
        SqlValue::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        SqlValue::Real(f) if f.is_finite() => {
            serde_json::to_writer(&mut *out, f).expect("a finite real serialises")
        }
        SqlValue::Real(f) => json_str(out, &f.to_string()),
        SqlValue::Text(s) => json_str(out, s),
        // JSON strings hold Unicode only: as everywhere in the API, text that is not UTF-8
        // keeps its bytes (never U+FFFD, which would merge different keys).
        SqlValue::TextBytes(b) => json_base64(out, "text_base64", b),
        SqlValue::Blob(b) => json_base64(out, "base64", b),
    }
}

/// `{"<key>": "<bytes in base64>"}`.
fn json_base64(out: &mut Vec<u8>, key: &str, bytes: &[u8]) {
    let _ = write!(out, "{{\"{key}\":\"");
    out.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .as_bytes(),
    );
    out.extend_from_slice(b"\"}");
}

fn json_row(out: &mut Vec<u8>, shape: &TableShape, vals: Option<&Vec<SqlValue>>) {
    let Some(vals) = vals else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'{');
    for (i, (c, v)) in shape.columns.iter().zip(vals).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(out, c);
        out.push(b':');
        json_value(out, v);
    }
    out.push(b'}');
}

/// Appends one transaction as a feed line (JSON and a newline) to `out`; false (and nothing
/// appended) when a table filter leaves nothing of it. Written directly rather than through a
/// JSON tree: the feed is a hot path.
pub fn write_transaction(
    out: &mut Vec<u8>,
    r: &LogRecord,
    tables: Option<&BTreeSet<String>>,
) -> bool {
    let Some(rows) = r.rows.as_ref() else {
        return false;
    };
    // Flotilla's own rows (API tokens) are never part of the feed.
    let keep = |t: &str| {
        !t.starts_with(flotilla_store::INTERNAL_PREFIX) && tables.is_none_or(|s| s.contains(t))
    };
    let start = out.len();
    let _ = write!(
        out,
        "{{\"position\":\"{}\",\"commit_time_ms\":{},\"origin\":",
        r.position(),
        r.commit_time_us / 1000
    );
    json_str(out, r.origin.as_str());
    // Schema changes first, each saying how many of the line's changes precede it.
    out.extend_from_slice(b",\"ddl\":[");
    let mut kept_changes = 0usize;
    let mut ddl = 0usize;
    for item in &rows.items {
        match item {
            RowItem::Schema(s) if keep(&s.table) => {
                if ddl > 0 {
                    out.push(b',');
                }
                ddl += 1;
                out.extend_from_slice(b"{\"sql\":");
                json_str(out, &s.sql);
                out.extend_from_slice(b",\"table\":");
                json_str(out, &s.table);
                let _ = write!(
                    out,
                    ",\"kind\":\"{}\",\"before_change\":{kept_changes}}}",
                    s.kind.as_str()
                );
            }
            RowItem::Schema(_) => {}
            RowItem::Change(c) => {
                if keep(&rows.shape(c).name) {
                    kept_changes += 1;
                }
            }
        }
    }
    if tables.is_some() && ddl == 0 && kept_changes == 0 {
        out.truncate(start);
        return false;
    }
    out.extend_from_slice(b"],\"changes\":[");
    let mut n = 0usize;
    for item in &rows.items {
        let RowItem::Change(c) = item else { continue };
        let shape = rows.shape(c);
        if !keep(&shape.name) {
            continue;
        }
        if n > 0 {
            out.push(b',');
        }
        n += 1;
        out.extend_from_slice(b"{\"table\":");
        json_str(out, &shape.name);
        let _ = write!(out, ",\"op\":\"{}\",\"key\":", c.op.as_str());
        let identifying = c.before.as_ref().or(c.after.as_ref()).expect("a row");
        if shape.keyed_by_rowid() {
            let rowid = if c.before.is_some() {
                c.old_rowid
            } else {
                c.new_rowid
            };
            let _ = write!(out, "{{\"rowid\":{rowid}}}");
            // An update may move the row to another rowid (`SET rowid = …`): its new key.
            if c.before.is_some() && c.after.is_some() && c.new_rowid != c.old_rowid {
                let _ = write!(out, ",\"new_key\":{{\"rowid\":{}}}", c.new_rowid);
            }
        } else {
            out.push(b'{');
            for (i, k) in shape.key.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_str(out, &shape.columns[*k as usize]);
                out.push(b':');
                json_value(out, &identifying[*k as usize]);
            }
            out.push(b'}');
        }
        out.extend_from_slice(b",\"before\":");
        json_row(out, shape, c.before.as_ref());
        out.extend_from_slice(b",\"after\":");
        json_row(out, shape, c.after.as_ref());
        out.push(b'}');
    }
    out.extend_from_slice(b"]}\n");
    true
}

pub async fn changes(
    State(node): State<Arc<Node>>,
    headers: axum::http::HeaderMap,
    q: Result<Query<ChangesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let credential = crate::auth::Credential::of(&headers, flotilla_types::AccessRole::Read);
    let Query(q) = q.map_err(|e| {
        ApiError::bad_request(
            "bad_request",
            format!(
                "{}; parameters are from=E/L, tables=a,b and follow=true|false",
                e.body_text()
            ),
        )
    })?;
    let Some(leader) = node.leader() else {
        return Err(leader_only(&node, "its change feed is served by"));
    };
    let follow = match q.follow.as_deref() {
        None | Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        Some(other) => {
            return Err(ApiError::bad_request(
                "bad_request",
                format!("follow={other:?}: expected true or false"),
            ))
        }
    };
    let tables: Option<BTreeSet<String>> = q.tables.as_deref().map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect()
    });
    let head = leader.head.borrow().position;
    let first = leader.log.stats().first_lsn;
    let start = match q.from.as_deref() {
        None => Lsn(first.max(1)),
        Some(text) => {
            let from: Position = text.parse().map_err(|e| {
                ApiError::bad_request("bad_position", format!("from={text:?}: {e}"))
            })?;
            if from.lsn > head.lsn || from.epoch > head.epoch {
                return Err(ApiError::bad_request(
                    "position_in_future",
                    format!("from={from} is beyond this leader's newest commit {head}"),
                )
                .with("head", head.to_string()));
            }
            if from.lsn.0 + 1 < first {
                return Err(ApiError::new(
                    StatusCode::GONE,
                    "position_not_retained",
                    format!(
                        "from={from} is older than the retained log, which starts after lsn {}: \
                         start again from a snapshot (GET /v1/snapshot) and the position it holds",
                        first.saturating_sub(1)
                    ),
                )
                .with("first_retained_lsn", first));
            }
            from.lsn.next()
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
    // Pinned before the stream starts: retention keeps what it has yet to send.
    let pin = leader.feed_pins.pin(start.0);
    tokio::spawn(stream_changes(
        node.clone(),
        leader.clone(),
        pin,
        start,
        Selection { tables, follow },
        tx,
        credential,
    ));
    let body = Body::from_stream(tokio_stream_from(rx));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .expect("valid response"))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

type Sender = tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>;

/// What a feed request asked for: the tables (`None`: all), and whether to follow new commits.
struct Selection {
    tables: Option<BTreeSet<String>>,
    follow: bool,
}

async fn stream_changes(
    node: Arc<Node>,
    leader: Arc<crate::leader::LeaderState>,
    pin: crate::leader::FeedPin,
    mut next: Lsn,
    Selection { tables, follow }: Selection,
    tx: Sender,
    credential: crate::auth::Credential,
) {
    let mut head_rx = leader.head.subscribe();
    loop {
        pin.advance(next.0);
        let head = head_rx.borrow_and_update().position;
        while next <= head.lsn {
            let batch = match leader
                .read_records(next, FEED_BATCH_RECORDS, FEED_BATCH_BYTES)
                .await
            {
                Ok(b) if !b.is_empty() => b,
                Ok(_) => break,
                Err(e) => {
                    let why = match e {
                        LogError::Trimmed { .. } => format!(
                            "lsn {next} is no longer retained: start again from a snapshot ({e})"
                        ),
                        e => e.to_string(),
                    };
                    let _ = tx.send(Ok(error_line(&why))).await;
                    return;
                }
            };
            let mut out = Vec::with_capacity(batch.len() * 256);
            for raw in &batch {
                // Raft's own entries (a cluster's) change no data: stepped over.
                if flotilla_wire::is_consensus_record(raw) {
                    next = next.next();
                    continue;
                }
                let record = match flotilla_wire::decode_record_rows(raw) {
                    Ok(r) if r.rows.is_some() => r,
                    Ok(r) => {
                        let why = format!(
                            "record {} has no row changes (written before the logical log existed)",
                            r.position()
                        );
                        let _ = tx.send(Ok(error_line(&why))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Ok(error_line(&format!("lsn {next}: {e}")))).await;
                        return;
                    }
                };
                next = record.lsn.next();
                write_transaction(&mut out, &record, tables.as_ref());
            }
            if !out.is_empty() && tx.send(Ok(bytes::Bytes::from(out))).await.is_err() {
                return; // The consumer went away.
            }
            pin.advance(next.0);
        }
        if !follow {
            return;
        }
        tokio::select! {
            changed = head_rx.changed() => if changed.is_err() { return },
            // Notices a consumer that went away while nothing is committed, and a leader that
            // stepped down (a cluster's): its head moves no more.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if tx.is_closed() {
                    return;
                }
                if !node.still_leads(&leader) {
                    let why = format!(
                        "the feed ends: this node no longer leads; resume from={} at the \
                         leader ({})",
                        head_rx.borrow().position,
                        node.leader_url().unwrap_or_else(|| "being elected".into())
                    );
                    let _ = tx.send(Ok(error_line(&why))).await;
                    return;
                }
            }
            _ = node.shutdown.cancelled() => return,
        }
        // A revoked token ends the feed it opened.
        if let Err(denied) = credential.still_allowed(&node).await {
            let _ = tx
                .send(Ok(error_line(&format!("the feed ends: {denied}"))))
                .await;
            return;
        }
    }
}

fn error_line(why: &str) -> bytes::Bytes {
    let mut v = serde_json::to_vec(&json!({ "error": why })).expect("JSON");
    v.push(b'\n');
    bytes::Bytes::from(v)
}
