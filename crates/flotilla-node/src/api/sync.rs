//! `POST /v1/sync`: a device's sync (docs/devices.md). The device pushes the transactions the
//! server has not acknowledged (checked whole against its shape, then each merged as one
//! transaction stamped with the device's origin) and pulls what of its shape changed since its
//! cursor — or the whole shape, the first time or when its cursor or shapes are gone.

use super::body::json_body;
use super::execute::leader_only;
use super::ApiError;
use crate::auth::TokenText;
use crate::leader::{ChangeError, DeviceChange, WriteJob};
use crate::node::Node;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use flotilla_log::LogError;
use flotilla_store::devices::{DeviceRowChange, DeviceTxn, DeviceView};
use flotilla_types::sync_protocol::{
    value_from_json, JsonRow, JsonVersionVector, PullItem, PullRequest, PullResponse, SyncRequest,
    SyncResponse, SYNC_PROTOCOL_VERSION,
};
use flotilla_types::{Hlc, Lsn, OriginName, Position, RowOp, SqlValue, VersionVector};
use std::sync::Arc;

/// Row changes in one pull at most (a device asks for fewer with `max_changes`); a pull ends
/// at a transaction's end, so one large transaction may go beyond.
pub const MAX_PULL_CHANGES: usize = 5_000;
/// Log records read at a time while pulling.
const PULL_READ_RECORDS: usize = 1_000;
const PULL_READ_BYTES: usize = 4 << 20;

/// Who is syncing: the device its token was made for.
struct Identity {
    device: String,
    user: String,
    origins: Vec<String>,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

/// Runs `f` on a reader (with Flotilla's rights: it reads the device registry), off the
/// async threads.
async fn with_reader<T: Send + 'static>(
    node: &Node,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let mut lease = node.readers.lease().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    tokio::task::spawn_blocking(move || {
        let r = lease.reader();
        let rules = r.rules.clone();
        rules.internal(|| f(&r.conn))
    })
    .await
    .map_err(internal)?
}

fn store_error(e: flotilla_store::StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        e.to_string(),
    )
}

/// The device the request's token was made for. Checked against the database on every sync
/// (not a cache): a revoked device is cut off at once.
async fn identify(node: &Node, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let text = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            unauthorized(
                "a device syncs with its token: send `Authorization: Bearer <token>` (made by \
                 `flotilla device add`)",
            )
        })?;
    let token = TokenText::parse(text)
        .ok_or_else(|| unauthorized("the Authorization header is not `Bearer flt_…`"))?;
    with_reader(node, move |conn| {
        let stored = flotilla_store::read_tokens(conn)
            .map_err(store_error)?
            .into_iter()
            .find(|t| t.id == token.id);
        let Some(stored) = stored.filter(|t| token.matches(&t.hash)) else {
            return Err(unauthorized("the token is not known to this node"));
        };
        if stored.revoked_ms.is_some() {
            return Err(unauthorized("the token was revoked"));
        }
        let Some((device, user)) =
            flotilla_store::devices::device_of_token(conn, &stored.id).map_err(store_error)?
        else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_a_device",
                format!(
                    "POST /v1/sync needs a device's token (`flotilla device add NAME --user U`); \
                     the token given is a {} token",
                    stored.role
                ),
            ));
        };
        let origins = flotilla_store::devices::origins_of(conn, &device).map_err(store_error)?;
        Ok(Identity {
            device,
            user,
            origins,
        })
    })
    .await
}

fn vv_from_json(v: &JsonVersionVector) -> Result<VersionVector, String> {
    let mut out = VersionVector::new();
    for (o, l) in v {
        let o = OriginName::new(o).map_err(|e| format!("origin {o:?}: {e}"))?;
        out.advance(&o, Lsn(*l));
    }
    Ok(out)
}

fn vv_to_json(v: &VersionVector) -> JsonVersionVector {
    v.iter().map(|(o, l)| (o.to_string(), l.0)).collect()
}

fn image(row: &JsonRow, seq: u64) -> Result<Vec<(String, SqlValue)>, ApiError> {
    row.iter()
        .map(|(c, v)| {
            value_from_json(v).map(|v| (c.clone(), v)).map_err(|e| {
                ApiError::bad_request("bad_request", format!("transaction {seq}, column {c}: {e}"))
            })
        })
        .collect()
}

/// The pushed transactions in the store's terms, or what is malformed in them.
fn device_txns(req: &SyncRequest) -> Result<Vec<DeviceTxn>, ApiError> {
    let mut out = Vec::with_capacity(req.push.len());
    for t in &req.push {
        if t.seq == 0 {
            return Err(ApiError::bad_request(
                "bad_request",
                "transaction numbers start at 1",
            ));
        }
        let deps = req.deps.get(&t.deps).ok_or_else(|| {
            ApiError::bad_request(
                "bad_request",
                format!(
                    "transaction {} depends on {:?}, which the request's deps do not hold",
                    t.seq, t.deps
                ),
            )
        })?;
        let deps = vv_from_json(deps)
            .map_err(|e| ApiError::bad_request("bad_request", format!("deps {:?}: {e}", t.deps)))?;
        let mut changes = Vec::with_capacity(t.changes.len());
        for c in &t.changes {
            let op = match c.op.as_str() {
                "insert" => RowOp::Insert,
                "update" => RowOp::Update,
                "delete" => RowOp::Delete,
                other => {
                    return Err(ApiError::bad_request(
                        "bad_request",
                        format!(
                            "transaction {}: op {other:?} is not insert, update or delete",
                            t.seq
                        ),
                    ))
                }
            };
            changes.push(DeviceRowChange {
                table: c.table.clone(),
                op,
                before: c.before.as_ref().map(|r| image(r, t.seq)).transpose()?,
                after: c.after.as_ref().map(|r| image(r, t.seq)).transpose()?,
            });
        }
        out.push(DeviceTxn {
            seq: t.seq,
            hlc: Hlc(t.hlc),
            deps,
            changes,
        });
    }
    Ok(out)
}

/// The keys of the rows a push changed (before and after a key's change), for the answer to
/// send as the server holds them now.
fn pushed_keys(view: &DeviceView, txns: &[DeviceTxn]) -> Vec<(String, Vec<SqlValue>)> {
    let mut out = Vec::new();
    for t in txns {
        for c in &t.changes {
            let Some(vt) = view.table(&c.table) else {
                continue;
            };
            for image in [&c.before, &c.after].into_iter().flatten() {
                let key: Option<Vec<SqlValue>> = vt
                    .key
                    .iter()
                    .map(|k| {
                        image
                            .iter()
                            .find(|(n, _)| n.eq_ignore_ascii_case(k))
                            .map(|(_, v)| v.clone())
                    })
                    .collect();
                if let Some(key) = key {
                    out.push((vt.table.clone(), key));
                }
            }
        }
    }
    out
}

/// Gives a fresh local database of `device` its origin.
async fn new_origin(node: &Node, device: &str) -> Result<OriginName, ApiError> {
    let (given_tx, given_rx) = tokio::sync::oneshot::channel();
    let change = DeviceChange::NewOrigin {
        device: device.to_string(),
        given: given_tx,
    };
    let done = super::writer_job::run(node, |reply| WriteJob::Device { change, reply }).await?;
    done.map_err(|e| super::writer_job::change_refused(e, "invalid_device"))?;
    let given = given_rx.await.map_err(internal)?;
    OriginName::new(&given).map_err(internal)
}

/// The answer to a refused push.
fn push_refused(e: ChangeError, merged: usize) -> ApiError {
    match e {
        ChangeError::DeviceRefused(r) => {
            // outside_shape 403, malformed 400, gap and clock_ahead 409 (docs/api.md).
            let status = if r.code == "outside_shape" {
                StatusCode::FORBIDDEN
            } else if r.code == "malformed" {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::CONFLICT
            };
            ApiError::new(status, r.code, r.to_string())
                .with("index", r.index)
                .with("seq", r.seq)
        }
        ChangeError::Indeterminate(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "outcome_unknown",
            format!("{e}; sync again: what was merged is not merged twice"),
        ),
        e => ApiError::new(
            StatusCode::CONFLICT,
            "not_merged",
            format!("{e} (the batch's first {merged} transactions were merged)"),
        )
        .with("merged", merged),
    }
}

pub async fn sync(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<SyncResponse>, ApiError> {
    let (req, _): (SyncRequest, _) = json_body(&headers, body, node.config.max_body_bytes).await?;
    if req.protocol != SYNC_PROTOCOL_VERSION {
        return Err(ApiError::bad_request(
            "unsupported_protocol",
            format!(
                "sync protocol {} is not spoken here: this server speaks {SYNC_PROTOCOL_VERSION}",
                req.protocol
            ),
        ));
    }
    let Some(leader) = node.leader() else {
        return Err(leader_only(&node, "devices sync with"));
    };
    let Some(ml) = node.config.multi_leader.clone() else {
        return Err(ApiError::bad_request(
            "not_a_data_centre",
            "devices sync with a data centre's leader (flotilla serve --dc NAME); this node \
             has no data centre",
        ));
    };
    let who = identify(&node, &headers).await?;
    let txns = device_txns(&req)?;
    let origin = match &req.origin {
        Some(o) if who.origins.iter().any(|g| g == o) => OriginName::new(o).map_err(internal)?,
        Some(o) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forged_origin",
                format!(
                    "origin {o} is not one this server gave device {} (its origins: {})",
                    who.device,
                    if who.origins.is_empty() {
                        "none yet".to_string()
                    } else {
                        who.origins.join(", ")
                    }
                ),
            ))
        }
        None => new_origin(&node, &who.device).await?,
    };
    let (user, device) = (who.user.clone(), who.device.clone());
    let view = with_reader(&node, move |conn| {
        DeviceView::load(conn, &user, &device).map_err(store_error)
    })
    .await?;
    if !txns.is_empty() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = WriteJob::DevicePush {
            view: Box::new(view.clone()),
            origin: origin.clone(),
            txns: txns.clone(),
            reply: tx,
        };
        let unavailable = || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the leader is stopping; sync again",
            )
        };
        leader.writer.send(job).await.map_err(|_| unavailable())?;
        let (merged, result, _) = rx.await.map_err(|_| unavailable())?;
        if let Err(e) = result {
            return Err(push_refused(e, merged));
        }
        if let Some(k) = &node.keyring {
            k.invalidate();
        }
    }
    let o = origin.clone();
    let acknowledged = with_reader(&node, move |conn| {
        flotilla_store::read_version_vector(conn)
            .map(|vv| vv.get(&o).0)
            .map_err(store_error)
    })
    .await?;
    let pull = match req.pull {
        None => None,
        Some(p) => Some(pull(&node, &leader, view, &p, &txns).await?),
    };
    if let Some(p) = &pull {
        node.device_activity
            .record(&who.device, origin.as_str(), &p.cursor);
    } else {
        node.device_activity
            .record(&who.device, origin.as_str(), "");
    }
    Ok(Json(SyncResponse {
        protocol: SYNC_PROTOCOL_VERSION,
        origin: origin.to_string(),
        server: ml.dc.to_string(),
        acknowledged,
        pull,
    }))
}

/// What a device pulls.
async fn pull(
    node: &Arc<Node>,
    leader: &Arc<crate::leader::LeaderState>,
    view: DeviceView,
    p: &PullRequest,
    pushed: &[DeviceTxn],
) -> Result<PullResponse, ApiError> {
    let max = p.max_changes.map_or(MAX_PULL_CHANGES, |m| {
        (m as usize).clamp(1, MAX_PULL_CHANGES)
    });
    let head = leader.head.borrow().position;
    let at: Option<Position> = p
        .cursor
        .as_deref()
        .map(|c| {
            c.parse()
                .map_err(|e| ApiError::bad_request("bad_position", format!("cursor {c:?}: {e}")))
        })
        .transpose()?;
    // Other shapes than the device's rows were chosen by, or a cursor beyond the server's
    // history (a restored server): the whole shape again.
    let cursor = at.filter(|at| p.shapes.as_deref() == Some(&view.digest) && at.lsn <= head.lsn);
    let Some(from) = cursor else {
        return whole_shape(node, view).await;
    };
    // The records after the cursor, read until `max` row changes (at a transaction's end).
    let mut records = Vec::new();
    let mut next = from.lsn.next();
    let mut bytes_read = 0usize;
    while next <= head.lsn && records.len() < max && bytes_read < 16 << 20 {
        let batch = match leader
            .read_records(next, PULL_READ_RECORDS, PULL_READ_BYTES)
            .await
        {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => break,
            Err(LogError::Trimmed { .. }) => return whole_shape(node, view).await,
            Err(e) => return Err(internal(e)),
        };
        for raw in batch {
            next = next.next();
            bytes_read += raw.len();
            if flotilla_wire::is_consensus_record(&raw) {
                continue;
            }
            let record = flotilla_wire::decode_record_rows(&raw).map_err(internal)?;
            next = record.lsn.next();
            records.push(record);
        }
    }
    let pushed_rows = pushed_keys(&view, pushed);
    let digest = view.digest.clone();
    let tables = view.shape_tables();
    let (items, cursor, vv_delta, hlc, more_records) = with_reader(node, move |conn| {
        let mine = flotilla_store::devices::user_origins(conn, &view.user).map_err(store_error)?;
        let mut items: Vec<PullItem> = Vec::new();
        let mut changes = 0usize;
        let mut cursor = from;
        let mut vv = VersionVector::new();
        let mut more = false;
        for r in &records {
            if changes >= max {
                more = true;
                break;
            }
            if let Some(s) = &r.exchange {
                vv.advance(&s.origin, s.origin_lsn);
            }
            if let Some(rows) = &r.rows {
                changes +=
                    flotilla_store::devices::pull_items_of(conn, &view, &mine, rows, &mut items)
                        .map_err(store_error)?;
            }
            cursor = r.position();
        }
        items.extend(
            flotilla_store::devices::current_rows(conn, &view, &pushed_rows)
                .map_err(store_error)?,
        );
        let hlc: i64 = conn
            .query_row("SELECT hlc FROM _flotilla_ml_origin", [], |r| r.get(0))
            .unwrap_or(0);
        Ok((items, cursor, vv, hlc as u64, more))
    })
    .await?;
    Ok(PullResponse {
        more: more_records || cursor.lsn < head.lsn,
        cursor: cursor.to_string(),
        reset: false,
        shapes: digest,
        tables,
        vv: (!vv_delta.is_empty()).then(|| vv_to_json(&vv_delta)),
        hlc,
        items,
    })
}

/// The whole shape, as one read saw it.
async fn whole_shape(node: &Arc<Node>, view: DeviceView) -> Result<PullResponse, ApiError> {
    let snap = with_reader(node, move |conn| {
        flotilla_store::devices::shape_snapshot(conn, &view.user, &view.device).map_err(store_error)
    })
    .await?;
    Ok(PullResponse {
        cursor: snap.position.to_string(),
        more: false,
        reset: true,
        shapes: snap.view.digest.clone(),
        tables: snap.view.shape_tables(),
        vv: Some(vv_to_json(&snap.vv)),
        hlc: snap.hlc.0,
        items: snap.items,
    })
}

/// When each device last synced, and where its cursor was then (since this node started).
#[derive(Default)]
pub struct DeviceActivity {
    seen: std::sync::Mutex<std::collections::HashMap<String, LastSync>>,
}

#[derive(Clone, Debug)]
pub struct LastSync {
    pub at_ms: u64,
    pub origin: String,
    pub cursor: String,
}

impl DeviceActivity {
    fn record(&self, device: &str, origin: &str, cursor: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let e = seen.entry(device.to_string()).or_insert_with(|| LastSync {
            at_ms: 0,
            origin: String::new(),
            cursor: String::new(),
        });
        e.at_ms = crate::time::wall_ms();
        e.origin = origin.to_string();
        if !cursor.is_empty() {
            e.cursor = cursor.to_string();
        }
    }

    pub fn of(&self, device: &str) -> Option<LastSync> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device)
            .cloned()
    }
}
