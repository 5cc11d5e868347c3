//! `GET /v1/changes`: the change feed. Committed transactions from the leader's log as
//! newline-delimited JSON, one line per transaction, in commit order; resumable from any
//! retained position (at-least-once: a consumer de-duplicates by position).

use super::execute::not_leader;
use super::ApiError;
use crate::node::Node;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use base64::Engine;
use flotilla_log::LogError;
use flotilla_types::{LogRecord, Lsn, Position, RowItem, SqlValue, TableShape};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    from: Option<String>,
    tables: Option<String>,
    follow: Option<String>,
}

fn value(v: &SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => json!(i),
        SqlValue::Real(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or_else(|| json!(f.to_string())),
        SqlValue::Text(s) => json!(s),
        SqlValue::Blob(b) => {
            json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) })
        }
    }
}

fn row(shape: &TableShape, vals: &[SqlValue]) -> Value {
    let mut m = Map::with_capacity(vals.len());
    for (c, v) in shape.columns.iter().zip(vals) {
        m.insert(c.clone(), value(v));
    }
    Value::Object(m)
}

/// One transaction as a feed line; `None` when a table filter leaves nothing of it.
pub fn transaction_json(r: &LogRecord, tables: Option<&BTreeSet<String>>) -> Option<Value> {
    let rows = r.rows.as_ref()?;
    let keep = |t: &str| tables.is_none_or(|s| s.contains(t));
    let mut ddl = Vec::new();
    let mut changes = Vec::new();
    for item in &rows.items {
        match item {
            // `before_change`: how many of the line's changes precede it (the order within the
            // transaction).
            RowItem::Schema(s) if keep(&s.table) => ddl.push(json!({
                "sql": s.sql,
                "table": s.table,
                "kind": s.kind.as_str(),
                "before_change": changes.len(),
            })),
            RowItem::Schema(_) => {}
            RowItem::Change(c) => {
                let shape = rows.shape(c);
                if !keep(&shape.name) {
                    continue;
                }
                let identifying = c.before.as_ref().or(c.after.as_ref()).expect("a row");
                let key = if shape.keyed_by_rowid() {
                    let rowid = if c.before.is_some() {
                        c.old_rowid
                    } else {
                        c.new_rowid
                    };
                    json!({ "rowid": rowid })
                } else {
                    let mut m = Map::new();
                    for k in &shape.key {
                        m.insert(
                            shape.columns[*k as usize].clone(),
                            value(&identifying[*k as usize]),
                        );
                    }
                    Value::Object(m)
                };
                changes.push(json!({
                    "table": shape.name,
                    "op": c.op.as_str(),
                    "key": key,
                    "before": c.before.as_ref().map(|b| row(shape, b)),
                    "after": c.after.as_ref().map(|a| row(shape, a)),
                }));
            }
        }
    }
    if tables.is_some() && ddl.is_empty() && changes.is_empty() {
        return None;
    }
    Some(json!({
        "position": r.position().to_string(),
        "commit_time_ms": r.commit_time_us / 1000,
        "origin": r.origin.as_str(),
        "ddl": ddl,
        "changes": changes,
    }))
}

pub async fn changes(
    State(node): State<Arc<Node>>,
    q: Result<Query<ChangesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| {
        ApiError::bad_request(
            "bad_request",
            format!(
                "{}; parameters are from=E/L, tables=a,b and follow=true|false",
                e.body_text()
            ),
        )
    })?;
    let Some(leader) = node.leader.as_ref() else {
        return Err(not_leader(&node));
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
    tokio::spawn(stream_changes(node.clone(), pin, start, tables, follow, tx));
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

async fn stream_changes(
    node: Arc<Node>,
    pin: crate::leader::FeedPin,
    mut next: Lsn,
    tables: Option<BTreeSet<String>>,
    follow: bool,
    tx: Sender,
) {
    let leader = node.leader.as_ref().expect("leader");
    let mut head_rx = leader.head.subscribe();
    loop {
        pin.advance(next.0);
        let head = head_rx.borrow_and_update().position;
        while next <= head.lsn {
            let batch = match crate::leader::shipping::fetch(&node, next.0).await {
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
                let record = match flotilla_wire::decode_record(raw) {
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
                if let Some(line) = transaction_json(&record, tables.as_ref()) {
                    serde_json::to_writer(&mut out, &line).expect("JSON to memory");
                    out.push(b'\n');
                }
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
            // Notices a consumer that went away while nothing is committed.
            _ = tokio::time::sleep(Duration::from_secs(5)) => if tx.is_closed() { return },
            _ = node.shutdown.cancelled() => return,
        }
    }
}

fn error_line(why: &str) -> bytes::Bytes {
    let mut v = serde_json::to_vec(&json!({ "error": why })).expect("JSON");
    v.push(b'\n');
    bytes::Bytes::from(v)
}
