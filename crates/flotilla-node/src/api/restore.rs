//! `POST /v1/restore`: replaces the cluster's database with a backup — a SQLite file (such as
//! `GET /v1/backup` gives) or a SQL dump — sent as the body. `?replace=true` is required when
//! the cluster holds tables; `?to=POSITION` rolls a Flotilla backup of this cluster forward
//! through the retained log to that position (point-in-time restore). The restored database
//! starts a new history at the next position; followers start again from a snapshot of it.

use super::ApiError;
use crate::leader::{LeaderState, RestoreError, RestoreJob, WriteJob};
use crate::node::Node;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use flotilla_store::restore::{self, BackupInfo, SQLITE_MAGIC};
use flotilla_types::Position;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreParams {
    #[serde(default)]
    replace: bool,
    to: Option<String>,
}

/// One restore at a time per node.
static RESTORING: AtomicBool = AtomicBool::new(false);

struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        RESTORING.store(false, Ordering::SeqCst);
    }
}

/// The temporary files of one restore, removed however it ends.
struct TempFiles(Vec<PathBuf>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut s = p.as_os_str().to_owned();
                s.push(suffix);
                let _ = std::fs::remove_file(PathBuf::from(s));
            }
        }
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_backup", message)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("the restore failed before changing anything: {e}"),
    )
}

pub async fn restore(
    State(node): State<Arc<Node>>,
    params: Result<Query<RestoreParams>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::bad_request(
            "bad_request",
            format!(
                "{}; the parameters are replace=true|false and to=EPOCH/LSN",
                e.body_text()
            ),
        )
    })?;
    let Some(leader) = node.leader() else {
        return Err(super::execute::leader_only(&node, "restores go to"));
    };
    let to: Option<Position> = match &params.to {
        None => None,
        Some(t) => Some(t.parse().map_err(|e: flotilla_types::PositionParseError| {
            ApiError::bad_request("bad_position", format!("to: {e}"))
        })?),
    };
    if RESTORING.swap(true, Ordering::SeqCst) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "restore_running",
            "a restore is running on this node already",
        ));
    }
    let _running = Running;
    let dir = node.config.data_dir.join("restore");
    std::fs::create_dir_all(&dir).map_err(internal)?;
    let upload = dir.join("upload");
    let build = dir.join("build.sqlite");
    // Whatever an interrupted restore left (a half-built file, its journal) goes first: none
    // of it may end up in this one.
    drop(TempFiles(vec![upload.clone(), build.clone()]));
    let _temp = TempFiles(vec![upload.clone(), build.clone()]);
    let received = receive(body, &upload).await?;
    let page_size: u32 = {
        let conn = flotilla_store::open_reader(&node.db_path).map_err(internal)?;
        conn.query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(internal)?
    };
    // Build the new database beside the live one: nothing live changes until it is ready.
    let (format, info) = {
        let (upload, build) = (upload.clone(), build.clone());
        tokio::task::spawn_blocking(move || build_database(&upload, &build, page_size))
            .await
            .map_err(internal)??
    };
    let backup_position = info.flotilla.as_ref().map(|m| m.position);
    if let Some(to) = to {
        roll_forward(&leader, &build, &info, to).await?;
        let path = build.clone();
        tokio::task::spawn_blocking(move || restore::check_integrity(&path))
            .await
            .map_err(internal)?
            .map_err(|e| bad(e.to_string()))?;
    }
    {
        let path = build.clone();
        tokio::task::spawn_blocking(move || restore::check_restorable(&path))
            .await
            .map_err(internal)?
            .map_err(|e| bad(e.to_string()))?;
    }
    // Queries let go of the database; the writer swaps it.
    node.readers.close().await;
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    let job = RestoreJob {
        build: build.clone(),
        replace: params.replace,
        reply: reply_tx,
    };
    let sent = leader.writer.send(WriteJob::Restore(job)).await;
    let outcome = match sent {
        Ok(()) => reply_rx.await.ok(),
        Err(_) => None,
    };
    node.readers.reopen();
    let position = match outcome {
        Some(Ok(p)) => p,
        Some(Err(RestoreError::Refused(why))) => {
            return Err(ApiError::new(StatusCode::CONFLICT, "restore_refused", why))
        }
        Some(Err(e @ RestoreError::Unfinished(_))) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ))
        }
        None => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the leader is stopping; nothing was restored",
            ))
        }
    };
    node.position.send_replace(position);
    let tables = {
        let conn = flotilla_store::open_reader(&node.db_path).map_err(internal)?;
        restore::user_objects(&conn).map_err(internal)?
    };
    Ok(Json(json!({
        "position": position.to_string(),
        "format": format,
        "bytes": received,
        "backup_position": backup_position.map(|p| p.to_string()),
        "rolled_forward_to": to.map(|p| p.to_string()),
        "objects": tables,
    })))
}

/// Writes the body to `path`; its size.
async fn receive(body: Body, path: &Path) -> Result<u64, ApiError> {
    let mut file = std::fs::File::create(path).map_err(internal)?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(
                "bad_request",
                format!("the upload broke off after {total} bytes: {e}"),
            )
        })?;
        total += chunk.len() as u64;
        file.write_all(&chunk).map_err(internal)?;
    }
    if total == 0 {
        return Err(bad(
            "the body is empty: send a SQLite database file or a SQL dump",
        ));
    }
    Ok(total)
}

/// Makes `build` from the uploaded file: a SQLite file is checked and used as it is, anything
/// else must be a SQL dump in UTF-8.
fn build_database(
    upload: &Path,
    build: &Path,
    page_size: u32,
) -> Result<(&'static str, BackupInfo), ApiError> {
    let mut magic = [0u8; 16];
    let is_sqlite = std::fs::File::open(upload)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == SQLITE_MAGIC;
    if is_sqlite {
        std::fs::rename(upload, build).map_err(internal)?;
        let info = restore::open_sqlite_backup(build).map_err(|e| bad(e.to_string()))?;
        return Ok(("sqlite", info));
    }
    let bytes = std::fs::read(upload).map_err(internal)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        bad(format!(
            "the file is neither a SQLite database (it does not start with \"SQLite format 3\") \
             nor a SQL dump in UTF-8 (byte {} is not UTF-8)",
            e.utf8_error().valid_up_to()
        ))
    })?;
    restore::build_from_sql(&text, build, page_size).map_err(|e| bad(e.to_string()))?;
    Ok((
        "sql",
        BackupInfo {
            flotilla: None,
            page_size,
        },
    ))
}

/// Rolls a Flotilla backup of this cluster forward through the log to `to`.
async fn roll_forward(
    leader: &LeaderState,
    build: &Path,
    info: &BackupInfo,
    to: Position,
) -> Result<(), ApiError> {
    let Some(meta) = &info.flotilla else {
        return Err(bad(
            "--to needs a Flotilla backup (GET /v1/backup in the sqlite format): this file \
             holds no position to roll forward from",
        ));
    };
    if meta.cluster_id != leader.cluster_id {
        return Err(bad(format!(
            "the backup is of cluster {}, this is cluster {}: the log here cannot roll it \
             forward",
            meta.cluster_id, leader.cluster_id
        )));
    }
    let head = leader.head.borrow().position;
    if to < meta.position || to > head {
        return Err(ApiError::bad_request(
            "bad_position",
            format!(
                "--to {to} is outside what this backup and log hold: from the backup's {} to \
                 the newest commit {head}",
                meta.position
            ),
        ));
    }
    let mut next = meta.position.lsn.0 + 1;
    while next <= to.lsn.0 {
        let want = (to.lsn.0 - next + 1).min(1000) as usize;
        let raw = leader
            .read_records(flotilla_types::Lsn(next), want, 64 << 20)
            .await
            .map_err(|e| match e {
                flotilla_log::LogError::Trimmed { first, .. } => ApiError::new(
                    StatusCode::GONE,
                    "position_not_retained",
                    format!(
                        "the log no longer holds the commits after the backup's position {} \
                         (it starts at lsn {first}): take a newer backup",
                        meta.position
                    ),
                ),
                e => internal(e),
            })?;
        if raw.is_empty() {
            return Err(internal(format!("the log returned no record {next}")));
        }
        let n = raw.len() as u64;
        // Raft's own entries (a cluster's) change no data.
        let records = raw
            .iter()
            .filter(|r| !flotilla_wire::is_consensus_record(r))
            .map(|r| flotilla_wire::decode_record(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(internal)?;
        let path = build.to_path_buf();
        tokio::task::spawn_blocking(move || restore::roll_forward(&path, &records))
            .await
            .map_err(internal)?
            .map_err(|e| {
                bad(format!(
                    "the log does not continue this backup's history (was it taken from this \
                     cluster before a restore?): {e}"
                ))
            })?;
        next += n;
    }
    Ok(())
}
