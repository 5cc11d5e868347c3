//! One pipeline's delivery loop: read whole, durable source transactions from the changelog
//! after the target's cursor, deliver them as one target transaction, confirm the new cursor
//! for trimming; on failure report it in status and retry with backoff.

use super::target::{Change, Delivery, Target, TargetError};
use super::{PipelineHost, Worker};
use flotilla_store::StoredPipeline;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Changes read per batch (a larger source transaction comes whole).
const BATCH_ROWS: usize = 5_000;

/// Opens the target for the pipeline as it is now; returns it with the cursor to continue
/// after.
async fn open(
    host: &PipelineHost,
    stored: &StoredPipeline,
    cluster_id: &str,
) -> Result<(Target, Delivery, i64), TargetError> {
    let spec = stored.spec.clone();
    let mut lease = host
        .readers
        .lease()
        .await
        .map_err(|e| TargetError::Failed(e.to_string()))?;
    let plan = tokio::task::spawn_blocking(move || {
        let r = lease.reader();
        flotilla_store::plan_pipeline(&r.conn, &spec)
    })
    .await
    .map_err(|e| TargetError::Failed(e.to_string()))?
    .map_err(|e| TargetError::Refused(format!("source: {e}")))?;
    let d = Delivery::new(&stored.spec, &plan, cluster_id, &host.leader.incarnation);
    let (target, cursor) = Target::open(&stored.spec, &d, &host.allow, &host.http).await?;
    let cursor = match cursor {
        // Stdout remembers nothing: start from what the changelog still holds.
        c if c < 0 => stored.trimmed_to,
        c if c < stored.trimmed_to => {
            return Err(TargetError::Refused(format!(
                "the target's cursor (seq {c}) is behind changes already delivered and trimmed \
                 (up to seq {}): the target lost data; remove and add the pipeline again to send \
                 a full copy",
                stored.trimmed_to
            )))
        }
        c => c,
    };
    Ok((target, d, cursor))
}

pub async fn run(host: PipelineHost, w: Arc<Worker>) {
    let leader = host.leader.clone();
    let cluster_id = leader.cluster_id.clone();
    let mut head_rx = leader.head.subscribe();
    let mut target: Option<(Target, Delivery)> = None;
    let mut cursor = 0i64;
    let mut backoff_ms = 250u64;
    loop {
        if w.cancel.is_cancelled() {
            return;
        }
        if w.paused.load(Ordering::Relaxed) {
            w.set(|s| s.state = "paused");
            target = None;
            tokio::select! {
                _ = w.wake.notified() => {}
                _ = w.cancel.cancelled() => return,
            }
            continue;
        }
        let stored = w.stored.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if target.is_none() {
            match open(&host, &stored, &cluster_id).await {
                Ok((t, d, c)) => {
                    cursor = c;
                    target = Some((t, d));
                    w.set(|s| {
                        s.cursor = Some(c);
                        s.last_error = None;
                    });
                }
                Err(e) => {
                    report(&w, &stored, &e);
                    backoff_ms = wait_retry(&w, backoff_ms).await;
                    continue;
                }
            }
        }
        let durable = leader.head.borrow().position.lsn.0;
        let id = stored.id;
        let after = cursor;
        let read = match host.readers.lease().await {
            Ok(mut lease) => tokio::task::spawn_blocking(move || {
                let r = lease.reader();
                let rules = r.rules.clone();
                rules.internal(|| {
                    flotilla_store::changelog::read_changes(&r.conn, id, after, durable, BATCH_ROWS)
                })
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string())),
            Err(e) => Err(e.to_string()),
        };
        let entries = match read {
            Ok(e) => e,
            Err(e) => {
                report(
                    &w,
                    &stored,
                    &TargetError::Failed(format!("reading the changelog: {e}")),
                );
                backoff_ms = wait_retry(&w, backoff_ms).await;
                continue;
            }
        };
        if entries.is_empty() {
            w.set(|s| {
                if s.last_error.is_none() {
                    s.state = "idle"
                }
            });
            tokio::select! {
                _ = head_rx.changed() => {}
                _ = w.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = w.cancel.cancelled() => return,
            }
            continue;
        }
        let changes = match entries
            .iter()
            .map(Change::decode)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(c) => c,
            Err(e) => {
                report(&w, &stored, &e);
                backoff_ms = wait_retry(&w, backoff_ms).await;
                continue;
            }
        };
        w.set(|s| s.state = "delivering");
        let (t, d) = target.as_mut().expect("opened above");
        match t.deliver(d, &changes).await {
            Ok(()) => {
                let last = entries.last().expect("not empty");
                cursor = last.seq;
                leader.trims.confirm(id, cursor);
                w.delivered_rows
                    .fetch_add(entries.len() as u64, Ordering::Relaxed);
                let now_ms = crate::time::wall_ms() as i64;
                for e in &entries {
                    host.counters
                        .delivery_lag
                        .record((now_ms - e.at_ms).max(0) as u64 * 1000);
                }
                let lag = (now_ms - last.at_ms).max(0) as u64;
                w.set(|s| {
                    s.cursor = Some(cursor);
                    s.delivered_lsn = last.lsn;
                    s.last_lag_ms = Some(lag);
                    s.last_error = None;
                });
                backoff_ms = 250;
            }
            Err(e) => {
                report(&w, &stored, &e);
                // Whatever the target held of a failed batch was rolled back: reconnect and
                // read the cursor again.
                target = None;
                backoff_ms = wait_retry(&w, backoff_ms).await;
            }
        }
    }
}

fn report(w: &Worker, stored: &StoredPipeline, e: &TargetError) {
    tracing::warn!(pipeline = %stored.spec.name, "delivery: {e}");
    w.set(|s| {
        s.state = "error";
        s.last_error = Some(e.to_string());
    });
}

/// Waits before a retry (or until woken or cancelled); returns the next backoff.
async fn wait_retry(w: &Worker, backoff_ms: u64) -> u64 {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(backoff_ms)) => {}
        _ = w.wake.notified() => {}
        _ = w.cancel.cancelled() => {}
    }
    (backoff_ms * 2).min(10_000)
}
