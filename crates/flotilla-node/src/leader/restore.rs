//! The writer's side of a restore (see `flotilla_store::restore`): with no other write in
//! flight, the prepared database becomes the leader's, at the next position, and the log
//! starts again after it.

use super::writer::Publisher;
use super::Head;
use crate::time::wall_us;
use flotilla_store::{restore, DbSettings, LeaderDb, StoreError};
use flotilla_types::{Epoch, Lsn, NodeId, Position};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

pub struct RestoreJob {
    /// The database to install, built from the backup (and rolled forward) by the caller.
    pub build: PathBuf,
    /// Replace a database that holds tables (refused otherwise).
    pub replace: bool,
    pub reply: oneshot::Sender<Result<Position, RestoreError>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The new database is in place but the node could not go on with it: it stops, and its
    /// next start finishes the restore.
    #[error("the restore was installed, but the node must restart to finish it: {0}")]
    Unfinished(String),
}

/// What the writer lends a restore.
pub(super) struct RestoreContext<'a> {
    pub publisher: &'a Publisher,
    pub settings: &'a DbSettings,
    pub epoch: Epoch,
    pub origin: &'a NodeId,
    pub interrupt: &'a Arc<Mutex<flotilla_store::InterruptHandle>>,
}

/// Runs a restore. Returns the database to go on with (the new one, or the old one when the
/// restore was refused), or `Err` with the reason the node must stop.
pub(super) fn run(
    mut db: LeaderDb,
    job: RestoreJob,
    ctx: &RestoreContext<'_>,
) -> Result<LeaderDb, String> {
    let refuse = |db: LeaderDb, reply: oneshot::Sender<_>, why: String| {
        let _ = reply.send(Err(RestoreError::Refused(why)));
        Ok(db)
    };
    let pipelines = db.pipeline_names();
    if !pipelines.is_empty() {
        return refuse(
            db,
            job.reply,
            format!(
                "the cluster has pipelines ({}): a restore would replace the tables they \
                 capture; remove them first (flotilla pipeline remove) and add them again after",
                pipelines.join(", ")
            ),
        );
    }
    match db.user_objects() {
        Ok(objects) if !objects.is_empty() && !job.replace => {
            let shown: Vec<&str> = objects.iter().take(5).map(String::as_str).collect();
            return refuse(
                db,
                job.reply,
                format!(
                    "the cluster is not empty (it holds {}{}): restore with --replace \
                     (\"replace\": true) to replace everything in it",
                    shown.join(", "),
                    if objects.len() > 5 { ", …" } else { "" }
                ),
            );
        }
        Ok(_) => {}
        Err(e) => return refuse(db, job.reply, format!("cannot read the schema: {e}")),
    }
    let meta = db.meta().clone();
    let now = wall_us();
    let next = Position {
        epoch: ctx.epoch,
        lsn: meta.position.lsn.next(),
    };
    let digest = restore::restore_digest(next, ctx.epoch, now);
    let chain = meta.chain.next(ctx.epoch, next.lsn, digest);
    let live = db.path().to_path_buf();
    if let Err(e) = restore::prepare_restore(&job.build, &live, next, chain, digest, now)
        .and_then(|()| db.checkpoint_fully())
    {
        return refuse(db, job.reply, format!("the restore did not start: {e}"));
    }
    drop(db);
    if let Err(e) = restore::swap_in(&job.build, &live) {
        // The live file was not replaced: go on with it.
        let why = format!("cannot put the restored database in place: {e}");
        return match reopen(&live, ctx, meta.position.lsn) {
            Ok(db) => refuse(db, job.reply, why),
            Err(e2) => {
                let _ = job.reply.send(Err(RestoreError::Refused(why.clone())));
                Err(format!("{why}; reopening the database failed too: {e2}"))
            }
        };
    }
    // The new history is in place; from here on a failure stops the node, whose start-up
    // restarts the log after the new position.
    let finished = ctx
        .publisher
        .log
        .reset(next.lsn.0)
        .map_err(|e| format!("cannot restart the replication log: {e}"))
        .and_then(|()| reopen(&live, ctx, next.lsn).map_err(|e| e.to_string()));
    match finished {
        Ok(db) => {
            ctx.publisher.recent.clear();
            ctx.publisher.head.send_replace(Head {
                position: next,
                chain,
                commit_time_us: now,
            });
            tracing::warn!(position = %next, "restored the database from a backup: a new history starts here");
            let _ = job.reply.send(Ok(next));
            Ok(db)
        }
        Err(why) => {
            let _ = job.reply.send(Err(RestoreError::Unfinished(why.clone())));
            Err(why)
        }
    }
}

/// Opens the writer connection again on the file now in place, at `lsn`.
fn reopen(
    live: &std::path::Path,
    ctx: &RestoreContext<'_>,
    lsn: Lsn,
) -> Result<LeaderDb, StoreError> {
    let (mut db, created) = LeaderDb::open(live, ctx.settings, String::new)?;
    if created {
        return Err(StoreError::Mismatch(format!(
            "{} held no Flotilla meta row",
            live.display()
        )));
    }
    db.uncaptured(lsn, ctx.origin)?;
    *ctx.interrupt.lock().unwrap_or_else(|p| p.into_inner()) = db.interrupt_handle();
    Ok(db)
}
