//! The sync protocol's server side in pieces without IO, shared by the node's `POST /v1/sync`
//! and the simulator: a request's transactions in the store's terms, where a pull goes on
//! from, and the answer a pull makes of the log records after its cursor (or of the whole
//! shape). The host does the rest: who the device is, the writer's check and merge, reading
//! the log.

use super::pull::{current_rows, pull_items_of, shape_snapshot, user_origins};
use super::push::{DeviceDocUpdate, DeviceRowChange, DeviceTxn};
use super::shapes::DeviceView;
use crate::StoreError;
use flotilla_types::sync_protocol::{
    value_from_json, JsonRow, JsonVersionVector, PullItem, PullRequest, PullResponse, SyncRequest,
};
use flotilla_types::{Hlc, LogRecord, Lsn, OriginName, Position, RowOp, SqlValue, VersionVector};
use rusqlite::Connection;

/// Row changes in one pull at most (a device asks for fewer with `max_changes`); a pull ends
/// at a transaction's end, so one large transaction may go beyond.
pub const MAX_PULL_CHANGES: usize = 5_000;

/// What is malformed in a request (the API's `bad_request`, `bad_position`, or `malformed`
/// naming the pushed transaction, which the device then sets aside).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadRequest {
    /// `bad_request`, `bad_position` or `malformed`.
    pub code: &'static str,
    pub message: String,
    /// The pushed transaction at fault: its index in the batch and its number.
    pub at: Option<(usize, u64)>,
}

fn bad(message: String) -> BadRequest {
    BadRequest {
        code: "bad_request",
        message,
        at: None,
    }
}

fn malformed(index: usize, seq: u64, message: String) -> BadRequest {
    BadRequest {
        code: "malformed",
        message: format!("transaction {seq} (number {index} of the batch, from 0): {message}"),
        at: Some((index, seq)),
    }
}

pub fn vv_from_json(v: &JsonVersionVector) -> Result<VersionVector, String> {
    let mut out = VersionVector::new();
    for (o, l) in v {
        let o = OriginName::new(o).map_err(|e| format!("origin {o:?}: {e}"))?;
        out.advance(&o, Lsn(*l));
    }
    Ok(out)
}

pub fn vv_to_json(v: &VersionVector) -> JsonVersionVector {
    v.iter().map(|(o, l)| (o.to_string(), l.0)).collect()
}

fn image(row: &JsonRow) -> Result<Vec<(String, SqlValue)>, String> {
    row.iter()
        .map(|(c, v)| {
            value_from_json(v)
                .map(|v| (c.clone(), v))
                .map_err(|e| format!("column {c}: {e}"))
        })
        .collect()
}

/// The pushed transactions in the store's terms, or what is malformed in them (a
/// transaction at fault is named: the device sets it aside and goes on).
pub fn request_txns(req: &SyncRequest) -> Result<Vec<DeviceTxn>, BadRequest> {
    let mut out = Vec::with_capacity(req.push.len());
    for (index, t) in req.push.iter().enumerate() {
        if t.seq == 0 {
            return Err(bad("transaction numbers start at 1".into()));
        }
        let deps = req.deps.get(&t.deps).ok_or_else(|| {
            bad(format!(
                "transaction {} depends on {:?}, which the request's deps do not hold",
                t.seq, t.deps
            ))
        })?;
        let deps = vv_from_json(deps).map_err(|e| bad(format!("deps {:?}: {e}", t.deps)))?;
        let mut changes = Vec::with_capacity(t.changes.len());
        for c in &t.changes {
            let op = match c.op.as_str() {
                "insert" => RowOp::Insert,
                "update" => RowOp::Update,
                "delete" => RowOp::Delete,
                other => {
                    return Err(malformed(
                        index,
                        t.seq,
                        format!("op {other:?} is not insert, update or delete"),
                    ))
                }
            };
            let img = |r: &Option<JsonRow>| {
                r.as_ref()
                    .map(image)
                    .transpose()
                    .map_err(|e| malformed(index, t.seq, format!("a change of {}: {e}", c.table)))
            };
            changes.push(DeviceRowChange {
                table: c.table.clone(),
                op,
                before: img(&c.before)?,
                after: img(&c.after)?,
            });
        }
        let mut docs = Vec::with_capacity(t.docs.len());
        for d in &t.docs {
            let at_fault = |e: String| {
                malformed(
                    index,
                    t.seq,
                    format!("an edit of document {}.{}: {e}", d.table, d.column),
                )
            };
            docs.push(DeviceDocUpdate {
                table: d.table.clone(),
                key: image(&d.key).map_err(at_fault)?,
                column: d.column.clone(),
                update: d.bytes().map_err(at_fault)?,
            });
        }
        out.push(DeviceTxn {
            seq: t.seq,
            hlc: Hlc(t.hlc),
            deps,
            changes,
            docs,
        });
    }
    Ok(out)
}

/// The keys of the rows a push changed (before and after a key's change): the answer sends
/// them as the server holds them now.
pub fn pushed_keys(view: &DeviceView, txns: &[DeviceTxn]) -> Vec<(String, Vec<SqlValue>)> {
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

/// Where a pull goes on from: the device's cursor, unless it has none, its rows were chosen
/// by other shapes, or it lies beyond the server's newest commit `head` (a restored server) —
/// then `None`, the whole shape.
pub fn pull_cursor(
    p: &PullRequest,
    view: &DeviceView,
    head: Lsn,
) -> Result<Option<Position>, BadRequest> {
    let at: Option<Position> = p
        .cursor
        .as_deref()
        .map(|c| {
            c.parse().map_err(|e| BadRequest {
                code: "bad_position",
                message: format!("cursor {c:?}: {e}"),
                at: None,
            })
        })
        .transpose()?;
    Ok(at.filter(|at| p.shapes.as_deref() == Some(&view.digest) && at.lsn <= head))
}

/// Whether the server's log still holds the device's cursor as the device saw it: the record
/// at its position has its epoch. After a failover that lost the end of the old leader's log,
/// or with a cursor of another server, it does not: the whole shape again.
pub fn cursor_holds(from: Position, record_at_cursor: Option<&LogRecord>) -> bool {
    from.lsn == Lsn(0) || record_at_cursor.is_some_and(|r| r.position() == from)
}

/// How many row changes a pull carries at most.
pub fn pull_limit(p: &PullRequest) -> usize {
    p.max_changes.map_or(MAX_PULL_CHANGES, |m| {
        (m as usize).clamp(1, MAX_PULL_CHANGES)
    })
}

/// A pull of changes from the device's cursor, built a batch of log records at a time (so a
/// pull holds one batch in memory, however far behind the device is).
#[derive(Debug)]
pub struct PullBuilder {
    cursor: Position,
    items: Vec<PullItem>,
    changes: usize,
    max: usize,
    vv: VersionVector,
    stopped: bool,
}

impl PullBuilder {
    pub fn new(from: Position, max: usize) -> PullBuilder {
        PullBuilder {
            cursor: from,
            items: Vec::new(),
            changes: 0,
            max,
            vv: VersionVector::new(),
            stopped: false,
        }
    }

    /// Whether the pull has its `max` row changes (it ends at the end of a transaction).
    pub fn full(&self) -> bool {
        self.stopped || self.changes >= self.max
    }

    /// Takes the next records of the log (in order, after what it took before): what of them
    /// touches the device's shape. `mine`: the origins of the user's devices
    /// ([`super::user_origins`]).
    pub fn add(
        &mut self,
        conn: &Connection,
        view: &DeviceView,
        mine: &std::collections::HashSet<String>,
        records: &[LogRecord],
    ) -> Result<(), StoreError> {
        for r in records {
            if self.changes >= self.max {
                self.stopped = true;
                return Ok(());
            }
            if let Some(s) = &r.exchange {
                self.vv.advance(&s.origin, s.origin_lsn);
            }
            if let Some(rows) = &r.rows {
                self.changes += pull_items_of(conn, view, mine, rows, &mut self.items)?;
            }
            self.cursor = r.position();
        }
        Ok(())
    }

    /// The answer: what was taken, then the rows `pushed` as the server holds them now.
    /// `head`: the server's newest position (is there more?).
    pub fn finish(
        mut self,
        conn: &Connection,
        view: &DeviceView,
        pushed: &[(String, Vec<SqlValue>)],
        head: Lsn,
    ) -> Result<PullResponse, StoreError> {
        self.items.extend(current_rows(conn, view, pushed)?);
        let hlc: i64 = conn
            .query_row("SELECT hlc FROM _flotilla_ml_origin", [], |r| r.get(0))
            .unwrap_or(0);
        Ok(PullResponse {
            more: self.stopped || self.cursor.lsn < head,
            cursor: self.cursor.to_string(),
            reset: false,
            shapes: view.digest.clone(),
            tables: view.shape_tables(),
            vv: (!self.vv.is_empty()).then(|| vv_to_json(&self.vv)),
            hlc: hlc as u64,
            items: self.items,
        })
    }
}

/// A whole pull of changes from `from` over `records` (the log's records after it, as far as
/// the host read), on a reader of the server's database: [`PullBuilder`] in one go.
pub fn pull_changes(
    conn: &Connection,
    view: &DeviceView,
    from: Position,
    records: &[LogRecord],
    max: usize,
    pushed: &[(String, Vec<SqlValue>)],
    head: Lsn,
) -> Result<PullResponse, StoreError> {
    let mine = user_origins(conn, &view.user)?;
    let mut b = PullBuilder::new(from, max);
    b.add(conn, view, &mine, records)?;
    b.finish(conn, view, pushed, head)
}

/// The whole shape, as one read transaction of `conn` saw it.
pub fn pull_whole_shape(
    conn: &Connection,
    user: &str,
    device: &str,
    documents: bool,
) -> Result<PullResponse, StoreError> {
    let snap = shape_snapshot(conn, user, device, documents)?;
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
