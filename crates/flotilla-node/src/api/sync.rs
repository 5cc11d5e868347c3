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
use flotilla_store::devices::{protocol, DeviceTxn, DeviceView};
use flotilla_types::sync_protocol::{
    PullRequest, PullResponse, SyncRequest, SyncResponse, SYNC_PROTOCOL_VERSION,
};
use flotilla_types::OriginName;
use std::sync::Arc;

/// Log records read at a time while pulling, and the bytes of them one pull reads at most.
const PULL_READ_RECORDS: usize = 1_000;
const PULL_READ_BYTES: usize = 4 << 20;
const PULL_MAX_BYTES: usize = 16 << 20;
/// Pulls of changes that read the log at once (the others wait their turn): what bounds the
/// memory many devices syncing together take.
static PULLS_AT_ONCE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

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
            // outside_shape 403, malformed 400, too_large 413, gap and clock_ahead 409
            // (docs/api.md).
            // (An if-chain, not a match: tests/error_codes.rs pairs each status with the code
            // written after it.)
            let status = if r.code == "outside_shape" {
                StatusCode::FORBIDDEN
            } else if r.code == "malformed" {
                StatusCode::BAD_REQUEST
            } else if r.code == "too_large" {
                StatusCode::PAYLOAD_TOO_LARGE
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
    let txns = protocol::request_txns(&req).map_err(bad_request)?;
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
        Some(p) => {
            let mut view = view;
            view.documents = p.documents;
            Some(pull(&node, &leader, view, &p, &txns).await?)
        }
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
        max_request_bytes: Some(node.config.max_body_bytes as u64),
        user: Some(who.user.clone()),
        device: Some(who.device.clone()),
    }))
}

/// The API's answer to a malformed request.
fn bad_request(e: protocol::BadRequest) -> ApiError {
    match (e.code, e.at) {
        ("bad_position", _) => ApiError::bad_request("bad_position", e.message),
        (_, Some((index, seq))) => ApiError::bad_request("malformed", e.message)
            .with("index", index)
            .with("seq", seq),
        _ => ApiError::bad_request("bad_request", e.message),
    }
}

/// What a device pulls.
async fn pull(
    node: &Arc<Node>,
    leader: &Arc<crate::leader::LeaderState>,
    view: DeviceView,
    p: &PullRequest,
    pushed: &[DeviceTxn],
) -> Result<PullResponse, ApiError> {
    let max = protocol::pull_limit(p);
    let head = leader.head.borrow().position;
    let Some(from) = protocol::pull_cursor(p, &view, head.lsn).map_err(bad_request)? else {
        return whole_shape(node, view).await;
    };
    // The record at the cursor, as the device saw it.
    if from.lsn.0 > 0 {
        let at = match leader.read_records(from.lsn, 1, PULL_READ_BYTES).await {
            Ok(b) => b
                .first()
                .filter(|raw| !flotilla_wire::is_consensus_record(raw))
                .and_then(|raw| flotilla_wire::decode_record_rows(raw).ok()),
            Err(LogError::Trimmed { .. }) => None,
            Err(e) => return Err(internal(e)),
        };
        if !protocol::cursor_holds(from, at.as_ref()) {
            return whole_shape(node, view).await;
        }
    }
    // The records after the cursor, a batch at a time, until the pull has its row changes:
    // one batch in memory per pull, and a bounded number of pulls reading at once.
    let _turn = PULLS_AT_ONCE.acquire().await.map_err(internal)?;
    let user = view.user.clone();
    let mine = with_reader(node, move |conn| {
        flotilla_store::devices::user_origins(conn, &user).map_err(store_error)
    })
    .await?;
    let (mine, view) = (Arc::new(mine), Arc::new(view));
    let mut builder = protocol::PullBuilder::new(from, max);
    let mut next = from.lsn.next();
    let mut bytes_read = 0usize;
    while next <= head.lsn && !builder.full() && bytes_read < PULL_MAX_BYTES {
        let batch = match leader
            .read_records(next, PULL_READ_RECORDS, PULL_READ_BYTES)
            .await
        {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => break,
            Err(LogError::Trimmed { .. }) => {
                return whole_shape(node, Arc::unwrap_or_clone(view)).await
            }
            Err(e) => return Err(internal(e)),
        };
        let mut records = Vec::with_capacity(batch.len());
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
        let (v, m) = (view.clone(), mine.clone());
        builder = with_reader(node, move |conn| {
            builder.add(conn, &v, &m, &records).map_err(store_error)?;
            Ok(builder)
        })
        .await?;
    }
    let pushed_rows = protocol::pushed_keys(&view, pushed);
    with_reader(node, move |conn| {
        builder
            .finish(conn, &view, &pushed_rows, head.lsn)
            .map_err(store_error)
    })
    .await
}

/// The whole shape, as one read saw it.
async fn whole_shape(node: &Arc<Node>, view: DeviceView) -> Result<PullResponse, ApiError> {
    with_reader(node, move |conn| {
        protocol::pull_whole_shape(conn, &view.user, &view.device, view.documents)
            .map_err(store_error)
    })
    .await
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
