//! A local replica on a device — a phone, a laptop — that takes reads and writes at any time,
//! online or not, and syncs with a Flotilla data centre when it can (docs/devices.md).
//!
//! ```no_run
//! # fn main() -> Result<(), flotilla_device::DeviceError> {
//! let mut phone = flotilla_device::Device::open("phone.db", "http://127.0.0.1:4790", "flt_…")?;
//! phone.sync()?; // the first sync brings the schema and the rows of the device's shape
//! phone.execute("INSERT INTO events (id, title, owner) VALUES (?1, ?2, ?3)",
//!               rusqlite::params!["e1", "Dentist", "ana"])?; // works offline too
//! println!("{}", phone.status()?); // "syncing (1 change pending)"
//! phone.sync()?;
//! # Ok(()) }
//! ```
//!
//! **No async runtime.** Everything is blocking. The crate reaches the server only through
//! a [`Transport`] — one `POST` at a time — so an application brings its own HTTP stack, or
//! takes [`UreqTransport`] (the default `ureq-transport` feature: blocking HTTP, HTTPS with
//! the `tls` feature). [`BackgroundSync`] syncs on a thread of its own every so often.
//!
//! **The model.** Each local write is one outbox transaction (numbered 1, 2, 3… in the local
//! database's origin, stamped with a hybrid logical clock and the server's version vector as
//! last pulled). A sync pushes the outbox, which the server checks against the device's shape
//! and merges with the data centre's conflict policies, and pulls what changed in the shape;
//! the device takes the server's rows and replays what it has not pushed yet on top. Conflicts
//! are decided on the server and pulled into the local `flotilla_conflicts` table.

#![forbid(unsafe_code)]

mod apply;
mod documents;
mod local_schema;
mod status;
mod transport;

pub use status::{utc, Rejected, Status, SyncReport};
#[cfg(feature = "ureq-transport")]
pub use transport::UreqTransport;
pub use transport::{Answer, Transport, Unreachable};

use apply::OutboxChange;
use flotilla_types::sync_protocol::{
    DocUpdate, JsonVersionVector, PullRequest, PushChange, PushTransaction, ShapeTable,
    SyncRequest, SyncResponse, SYNC_PROTOCOL_VERSION,
};
use flotilla_types::Hlc;
use rusqlite::{Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::path::Path;

/// Transactions pushed in one request at most, and about this many bytes of their changes (a
/// longer outbox takes several requests; a server that finds one too large halves them).
const PUSH_BATCH: usize = 500;
const PUSH_BATCH_BYTES: usize = 4 << 20;
/// Requests one sync makes at most (a backlog larger than this takes several syncs).
const MAX_ROUNDS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("the device is offline (switch it online to sync)")]
    Offline,
    #[error("the server is unreachable: {0}")]
    Unreachable(String),
    #[error("the server refused the sync ({status} {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the server's answer is not one this device understands: {0}")]
    Protocol(String),
    /// The local database is not one this device can use (another server's, a newer format),
    /// or what the server sent could not be applied (nothing of it was).
    #[error("{0}")]
    Local(String),
}

/// A device's local database, bound to its server.
pub struct Device {
    conn: Connection,
    url: String,
    token: String,
    transport: Box<dyn Transport>,
    clock: Clock,
}

/// Where a device reads the time (Unix milliseconds): the system's clock, or one the host
/// gives (a simulator's).
pub type Clock = Box<dyn Fn() -> u64 + Send>;

fn system_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The device's state row, as `conn` sees it.
fn state_in(conn: &Connection) -> Result<State, DeviceError> {
    let row = conn.query_row(
        "SELECT origin, cursor, shapes, tables, vv, deps_id, offline, reset_next \
         FROM _flotilla_device WHERE id = 1",
        [],
        |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
            ))
        },
    )?;
    let bad = |what: &str, e: serde_json::Error| {
        DeviceError::Local(format!("the local database's {what} is damaged: {e}"))
    };
    Ok(State {
        origin: row.0,
        cursor: row.1,
        shapes: row.2,
        tables: serde_json::from_str(&row.3).map_err(|e| bad("shape", e))?,
        vv: serde_json::from_str(&row.4).map_err(|e| bad("version vector", e))?,
        deps_id: row.5,
        offline: row.6 != 0,
        reset_next: row.7 != 0,
    })
}

/// The device's state row.
struct State {
    origin: Option<String>,
    cursor: Option<String>,
    shapes: Option<String>,
    tables: Vec<ShapeTable>,
    vv: JsonVersionVector,
    deps_id: i64,
    offline: bool,
    reset_next: bool,
}

impl Device {
    /// Opens (or creates) the local database at `path`, bound to the server at `server`
    /// (`http://host:port`), syncing with `token` (from `flotilla device add`), over HTTP
    /// with [`UreqTransport`].
    #[cfg(feature = "ureq-transport")]
    pub fn open(path: impl AsRef<Path>, server: &str, token: &str) -> Result<Device, DeviceError> {
        Device::open_with(path, server, token, Box::new(UreqTransport::default()))
    }

    /// As [`Device::open`], with the application's own transport.
    pub fn open_with(
        path: impl AsRef<Path>,
        server: &str,
        token: &str,
        transport: Box<dyn Transport>,
    ) -> Result<Device, DeviceError> {
        let server = server.trim_end_matches('/').to_string();
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        local_schema::create(&conn, &server)?;
        let (format, bound): (i64, String) = conn.query_row(
            "SELECT format, server FROM _flotilla_device WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if format > local_schema::LOCAL_FORMAT {
            return Err(DeviceError::Local(format!(
                "this local database has format {format}, newer than this build's {}",
                local_schema::LOCAL_FORMAT
            )));
        }
        if bound != server {
            return Err(DeviceError::Local(format!(
                "this local database syncs with {bound}, not {server}: open it with that \
                 server, or start a new local database"
            )));
        }
        Ok(Device {
            conn,
            url: format!("{server}/v1/sync"),
            token: token.to_string(),
            transport,
            clock: Box::new(system_ms),
        })
    }

    /// Reads the time from `clock` instead of the system's (for simulation).
    pub fn with_clock(mut self, clock: Clock) -> Device {
        self.clock = clock;
        self
    }

    fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// The local database, for reads (`SELECT`). A write to a table of the shape through it
    /// is refused: write with [`Device::execute`] or [`Device::transaction`].
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Runs one statement as a local transaction of its own; returns the rows it changed.
    pub fn execute(
        &mut self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<usize, DeviceError> {
        self.transaction(|tx| tx.execute(sql, params))
    }

    /// Runs `f` as one local transaction: its row changes to the shape's tables are one
    /// transaction for the server too (all of it applied there, or none). An error from `f`
    /// rolls it back.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, DeviceError> {
        self.transaction_with_docs(|tx| Ok((f(tx)?, Vec::new())))
    }

    /// Edits the document of a collaborative text column (docs/collab.md) of a row of the
    /// shape, as one local transaction: deletes `delete` characters at `at` (both counted in
    /// UTF-16 units, as Yjs and JavaScript count) and inserts `insert` there. The row's column
    /// shows the new text at once; the edit merges with everyone's when the device syncs —
    /// offline edits included, never a conflict. Returns the new text.
    pub fn edit_text(
        &mut self,
        table: &str,
        key: impl rusqlite::ToSql,
        column: &str,
        at: u32,
        delete: u32,
        insert: &str,
    ) -> Result<String, DeviceError> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        let tables = self.state()?.tables;
        let key: Value = match key.to_sql()? {
            ToSqlOutput::Borrowed(ValueRef::Integer(i)) => Value::Integer(i),
            ToSqlOutput::Borrowed(ValueRef::Text(t)) => {
                Value::Text(String::from_utf8_lossy(t).into_owned())
            }
            ToSqlOutput::Owned(v @ (Value::Integer(_) | Value::Text(_))) => v,
            _ => {
                return Err(DeviceError::Local(
                    "a document's key is an INTEGER or TEXT".into(),
                ))
            }
        };
        let mut failed = None;
        let done = self.transaction_with_docs(|tx| {
            match documents::edit(tx, &tables, (table, key, column), (at, delete, insert)) {
                Ok((update, text)) => Ok((Some(text), vec![update])),
                Err(e) => {
                    failed = Some(e);
                    Ok((None, Vec::new()))
                }
            }
        })?;
        match (done, failed) {
            (Some(text), _) => Ok(text),
            (None, why) => Err(DeviceError::Local(why.unwrap_or_default())),
        }
    }

    /// [`Device::transaction`], with edits of documents made in it (`f` returns them).
    fn transaction_with_docs<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<(T, Vec<DocUpdate>)>,
    ) -> Result<T, DeviceError> {
        let now = self.now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM _flotilla_capture", [])?;
        tx.execute("INSERT INTO _flotilla_writing (mode) VALUES (1)", [])?;
        let (out, docs) = f(&tx)?;
        tx.execute("DELETE FROM _flotilla_writing", [])?;
        let raw: Vec<(String, String, Option<String>, Option<String>)> = tx
            .prepare("SELECT tbl, op, before, after FROM _flotilla_capture ORDER BY n")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        let parse = |s: Option<String>| -> Result<Option<_>, DeviceError> {
            s.map(|s| {
                serde_json::from_str(&s).map_err(|e| {
                    DeviceError::Local(format!("a row change could not be recorded ({e}): {s}"))
                })
            })
            .transpose()
        };
        let mut captured: Vec<OutboxChange> = Vec::with_capacity(raw.len());
        for (table, op, before, after) in raw {
            captured.push(OutboxChange {
                table,
                op,
                before: parse(before)?,
                after: parse(after)?,
            });
        }
        if !captured.is_empty() || !docs.is_empty() {
            let (seq, hlc, deps): (i64, i64, i64) = tx.query_row(
                "SELECT next_seq, hlc, deps_id FROM _flotilla_device WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let hlc = Hlc(hlc as u64).tick(now);
            let changes = serde_json::to_string(&captured)
                .map_err(|e| DeviceError::Local(format!("recording the changes: {e}")))?;
            let docs = serde_json::to_string(&docs)
                .map_err(|e| DeviceError::Local(format!("recording the edits: {e}")))?;
            tx.execute(
                "INSERT INTO _flotilla_outbox (seq, hlc, deps, changes, docs) VALUES (?1, ?2, \
                 ?3, ?4, ?5)",
                rusqlite::params![seq, hlc.0 as i64, deps, changes, docs],
            )?;
            tx.execute(
                "UPDATE _flotilla_device SET next_seq = ?1, hlc = ?2 WHERE id = 1",
                rusqlite::params![seq + 1, hlc.0 as i64],
            )?;
            tx.execute("DELETE FROM _flotilla_capture", [])?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// Switches the device offline (no sync until it is switched back) or online.
    pub fn set_offline(&mut self, offline: bool) -> Result<(), DeviceError> {
        self.conn.execute(
            "UPDATE _flotilla_device SET offline = ?1 WHERE id = 1",
            [offline as i64],
        )?;
        Ok(())
    }

    fn state(&self) -> Result<State, DeviceError> {
        state_in(&self.conn)
    }

    /// The outbox's first transactions (at most `limit`, and about `max_bytes` of changes),
    /// with the version vectors they depend on. Images carry the shape's columns only (a
    /// column the shape dropped since the change was made is left out).
    #[allow(clippy::type_complexity)]
    fn outbox(
        &self,
        limit: usize,
        max_bytes: usize,
        tables: &[ShapeTable],
    ) -> Result<(Vec<PushTransaction>, BTreeMap<String, JsonVersionVector>), DeviceError> {
        let mut rows: Vec<(i64, i64, i64, String, String)> = Vec::new();
        let mut bytes = 0usize;
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT seq, hlc, deps, changes, docs FROM _flotilla_outbox ORDER BY seq LIMIT ?1",
            )?;
            let mut q = stmt.query([limit as i64])?;
            while let Some(r) = q.next()? {
                let changes: String = r.get(3)?;
                let docs: String = r.get(4)?;
                let size = changes.len() + docs.len();
                if !rows.is_empty() && bytes + size > max_bytes {
                    break;
                }
                bytes += size;
                rows.push((r.get(0)?, r.get(1)?, r.get(2)?, changes, docs));
            }
        }
        let mut push = Vec::with_capacity(rows.len());
        let mut deps = BTreeMap::new();
        for (seq, hlc, dep, changes, docs) in rows {
            let damaged = |e: serde_json::Error| {
                DeviceError::Local(format!("outbox transaction {seq} is damaged: {e}"))
            };
            let changes: Vec<OutboxChange> = serde_json::from_str(&changes).map_err(damaged)?;
            let docs: Vec<DocUpdate> = serde_json::from_str(&docs).map_err(damaged)?;
            let id = dep.to_string();
            if !deps.contains_key(&id) {
                let vv: String = self.conn.query_row(
                    "SELECT vv FROM _flotilla_deps WHERE id = ?1",
                    [dep],
                    |r| r.get(0),
                )?;
                let vv: JsonVersionVector = serde_json::from_str(&vv).map_err(|e| {
                    DeviceError::Local(format!("a version vector of the outbox is damaged: {e}"))
                })?;
                deps.insert(id.clone(), vv);
            }
            let shaped = |table: &str, img: Option<flotilla_types::sync_protocol::JsonRow>| {
                let t = tables.iter().find(|t| t.table.eq_ignore_ascii_case(table));
                img.map(|row| match t {
                    Some(t) => row
                        .into_iter()
                        .filter(|(c, _)| t.columns.iter().any(|n| n.eq_ignore_ascii_case(c)))
                        .collect(),
                    None => row,
                })
            };
            push.push(PushTransaction {
                seq: seq as u64,
                hlc: hlc as u64,
                deps: id,
                changes: changes
                    .into_iter()
                    .map(|c| PushChange {
                        before: shaped(&c.table, c.before),
                        after: shaped(&c.table, c.after),
                        ..c
                    })
                    .collect(),
                docs,
            });
        }
        Ok((push, deps))
    }

    /// Keeps why the last sync failed, and how: `unreachable` (the device counts as
    /// offline), `refused` (the server said no) or `local` (this device could not apply it).
    fn note_error(&self, kind: &str, why: &str) {
        let _ = self.conn.execute(
            "UPDATE _flotilla_device SET last_error = ?1, last_error_kind = ?2 WHERE id = 1",
            [why, kind],
        );
    }

    /// Pushes what the server lacks and pulls what changed, until both are done (several
    /// requests for a large backlog). A transaction the server refuses (outside the shape) is
    /// set aside as rejected (see [`Device::rejected`]) and its effects undone by pulling the
    /// whole shape again; the rest goes on.
    pub fn sync(&mut self) -> Result<SyncReport, DeviceError> {
        let mut report = SyncReport::default();
        // Pushes are sized to what the server said it takes (until it has said, the first
        // request pushes nothing), and halved when it finds one too large.
        let mut batch = PUSH_BATCH;
        let mut halved_bytes = PUSH_BATCH_BYTES;
        let (mut started_over, mut restamped) = (false, false);
        for _ in 0..MAX_ROUNDS {
            let st = self.state()?;
            if st.offline {
                return Err(DeviceError::Offline);
            }
            let limit: Option<i64> = self.conn.query_row(
                "SELECT max_request_bytes FROM _flotilla_device WHERE id = 1",
                [],
                |r| r.get(0),
            )?;
            // Room for the request's own JSON beside the changes.
            let fits = limit.map(|l| (l as usize).saturating_mul(3) / 4);
            let batch_bytes = fits.map_or(0, |f| f.min(halved_bytes));
            if let Some((seq, size)) = self.first_pending_size()? {
                if fits.is_some_and(|f| size > f) {
                    // Larger than the server takes: it can never be sent.
                    self.reject(
                        seq,
                        "too_large",
                        &format!(
                            "its changes take {size} bytes; the server takes requests of at most \
                             {} bytes (api.max-body-kib)",
                            limit.unwrap_or(0)
                        ),
                    )?;
                    report.rejected += 1;
                    continue;
                }
            }
            let this_batch = if limit.is_some() { batch } else { 0 };
            let (push, deps) = self.outbox(this_batch, batch_bytes, &st.tables)?;
            let pushed_seqs: Vec<u64> = push.iter().map(|t| t.seq).collect();
            let more_to_push = self.pending_count()? > push.len();
            let resync = st.reset_next;
            let sent_cursor = if resync { None } else { st.cursor.clone() };
            let req = SyncRequest {
                protocol: SYNC_PROTOCOL_VERSION,
                origin: st.origin.clone(),
                deps,
                push,
                pull: Some(PullRequest {
                    cursor: sent_cursor.clone(),
                    shapes: if resync { None } else { st.shapes.clone() },
                    max_changes: None,
                    documents: true,
                }),
            };
            let body = serde_json::to_vec(&req)
                .map_err(|e| DeviceError::Local(format!("encoding the request: {e}")))?;
            report.bytes_sent += body.len();
            let answer = match self.transport.post_json(&self.url, &self.token, body) {
                Ok(a) => a,
                Err(Unreachable(why)) => {
                    self.note_error("unreachable", &why);
                    return Err(DeviceError::Unreachable(why));
                }
            };
            report.bytes_received += answer.body.len();
            if answer.status != 200 {
                let err: serde_json::Value =
                    serde_json::from_slice(&answer.body).unwrap_or_default();
                let e = &err["error"];
                let code = e["code"].as_str().unwrap_or("unknown").to_string();
                let message = e["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).into_owned());
                if let ("outside_shape" | "malformed", Some(seq)) =
                    (code.as_str(), e["seq"].as_u64())
                {
                    self.reject(seq, &code, &message)?;
                    report.rejected += 1;
                    continue;
                }
                // The server lacks transactions this device forgot once they were acknowledged
                // (the server was restored to an earlier state): what they did is lost with the
                // server's state. Or the server has other transactions under this database's
                // numbers (it was restored from a backup, or copied). Either way the device
                // starts a new origin and sends what it has.
                if (code == "gap" || code == "origin_reused") && !started_over {
                    started_over = true;
                    self.start_over()?;
                    continue;
                }
                // The device's clock was ahead when it made them: stamped again from its clock
                // now (once; a clock still ahead is the error below).
                if code == "clock_ahead" && !restamped {
                    restamped = true;
                    // From the refused one on: those before it are the server's already.
                    self.restamp(e["seq"].as_u64().unwrap_or(0))?;
                    continue;
                }
                if code == "body_too_large" {
                    if let [only] = pushed_seqs[..] {
                        // One transaction larger than the server takes: it can never be sent.
                        self.reject(only, "too_large", &message)?;
                        report.rejected += 1;
                    } else {
                        batch = (pushed_seqs.len() / 2).max(1);
                        halved_bytes = (batch_bytes / 2).max(1);
                    }
                    continue;
                }
                let why = format!("{} {code}: {message}", answer.status);
                self.note_error("refused", &why);
                return Err(DeviceError::Refused {
                    status: answer.status,
                    code,
                    message,
                });
            }
            let resp: SyncResponse = serde_json::from_slice(&answer.body)
                .map_err(|e| DeviceError::Protocol(e.to_string()))?;
            let more = match self.take(sent_cursor.as_deref(), resync, &resp, &mut report) {
                Ok(m) => m,
                Err(e) => {
                    self.note_error("local", &e.to_string());
                    return Err(e);
                }
            };
            if !more && !more_to_push {
                return Ok(report);
            }
        }
        Ok(report)
    }

    /// Starts a new origin: the pending transactions numbered again from 1, the whole shape
    /// pulled next.
    fn start_over(&mut self) -> Result<(), DeviceError> {
        let tx = self.conn.transaction()?;
        let seqs: Vec<i64> = tx
            .prepare("SELECT seq FROM _flotilla_outbox ORDER BY seq")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        // Moved out of the way first: the new numbers overlap the old ones.
        tx.execute("UPDATE _flotilla_outbox SET seq = -seq", [])?;
        for (i, old) in seqs.iter().enumerate() {
            tx.execute(
                "UPDATE _flotilla_outbox SET seq = ?1 WHERE seq = ?2",
                [i as i64 + 1, -old],
            )?;
        }
        tx.execute(
            "UPDATE _flotilla_device SET origin = NULL, next_seq = ?1, reset_next = 1 WHERE id = 1",
            [seqs.len() as i64 + 1],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Stamps the pending transactions from `from_seq` on again from the device's clock now
    /// (those before were merged already, with their clocks: stamped again, they would look
    /// like other transactions under the same numbers).
    fn restamp(&mut self, from_seq: u64) -> Result<(), DeviceError> {
        let now = self.now_ms();
        let tx = self.conn.transaction()?;
        let seqs: Vec<i64> = tx
            .prepare("SELECT seq FROM _flotilla_outbox WHERE seq >= ?1 ORDER BY seq")?
            .query_map([from_seq as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut hlc = Hlc::ZERO;
        for seq in seqs {
            hlc = hlc.tick(now);
            tx.execute(
                "UPDATE _flotilla_outbox SET hlc = ?1 WHERE seq = ?2",
                [hlc.0 as i64, seq],
            )?;
        }
        tx.execute(
            "UPDATE _flotilla_device SET hlc = ?1 WHERE id = 1",
            [hlc.0 as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The first outbox transaction that still has changes, and their size.
    fn first_pending_size(&self) -> Result<Option<(u64, usize)>, DeviceError> {
        Ok(self
            .conn
            .query_row(
                "SELECT seq, length(changes) + length(docs) FROM _flotilla_outbox WHERE \
                 changes <> '[]' OR docs <> '[]' ORDER BY seq LIMIT 1",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as usize)),
            )
            .optional()?)
    }

    fn pending_count(&self) -> Result<usize, DeviceError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM _flotilla_outbox", [], |r| r.get(0))?;
        Ok(n as usize)
    }

    /// Sets an outbox transaction aside as rejected: it stays in the outbox empty (the
    /// server must see every number), and the whole shape is pulled next.
    fn reject(&mut self, seq: u64, code: &str, reason: &str) -> Result<(), DeviceError> {
        let now = self.now_ms();
        let tx = self.conn.transaction()?;
        let changes: Option<String> = tx
            .query_row(
                "SELECT changes FROM _flotilla_outbox WHERE seq = ?1",
                [seq as i64],
                |r| r.get(0),
            )
            .optional()?;
        let Some(changes) = changes else {
            return Err(DeviceError::Protocol(format!(
                "the server refused transaction {seq}, which this device does not have"
            )));
        };
        tx.execute(
            "INSERT OR REPLACE INTO _flotilla_rejected (seq, code, reason, changes, at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![seq as i64, code, reason, changes, now as i64],
        )?;
        tx.execute(
            "UPDATE _flotilla_outbox SET changes = '[]', docs = '[]' WHERE seq = ?1",
            [seq as i64],
        )?;
        tx.execute(
            "UPDATE _flotilla_device SET reset_next = 1 WHERE id = 1",
            [],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Takes a sync's answer in one local transaction: forgets what the server acknowledged,
    /// applies what was pulled, replays the rest of the outbox on top. Returns whether there
    /// is more to pull. Another sync of this database that finished meanwhile (a background
    /// one) moved the cursor: then only the acknowledgement is taken, and the pull asked for
    /// again.
    fn take(
        &mut self,
        sent_cursor: Option<&str>,
        sent_reset: bool,
        resp: &SyncResponse,
        report: &mut SyncReport,
    ) -> Result<bool, DeviceError> {
        let now = self.now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute("INSERT INTO _flotilla_writing (mode) VALUES (0)", [])?;
        let before: i64 =
            tx.query_row("SELECT count(*) FROM _flotilla_outbox", [], |r| r.get(0))?;
        tx.execute(
            "DELETE FROM _flotilla_outbox WHERE seq <= ?1",
            [resp.acknowledged as i64],
        )?;
        let after: i64 = tx.query_row("SELECT count(*) FROM _flotilla_outbox", [], |r| r.get(0))?;
        report.pushed += (before - after).max(0) as usize;
        tx.execute(
            "UPDATE _flotilla_device SET origin = ?1, last_sync_ms = ?2, last_error = NULL, \
             last_error_kind = NULL, max_request_bytes = coalesce(?3, max_request_bytes) \
             WHERE id = 1",
            rusqlite::params![
                resp.origin,
                now as i64,
                resp.max_request_bytes.map(|b| b as i64)
            ],
        )?;
        let (cursor_now, reset_now): (Option<String>, i64) = tx.query_row(
            "SELECT cursor, reset_next FROM _flotilla_device WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let stale = cursor_now.as_deref() != sent_cursor && !(sent_reset && reset_now != 0);
        let mut more = false;
        if let (Some(p), false) = (&resp.pull, stale) {
            more = p.more;
            // The state as it is now, in this transaction.
            let st = state_in(&tx)?;
            if p.reset {
                for t in st.tables.iter().chain(&p.tables) {
                    tx.execute_batch(&format!(
                        "DROP TABLE IF EXISTS {}",
                        local_schema::quote(&t.table)
                    ))?;
                }
                tx.execute("DELETE FROM flotilla_conflicts", [])?;
                documents::forget_all(&tx)?;
                report.reset = true;
            }
            let mut touched = apply::Touched::new();
            let schema_changed = apply::apply_items(&tx, &p.tables, &p.items, &mut touched)
                .map_err(DeviceError::Local)?;
            report.pulled += p.items.len();
            let mut vv = if p.reset {
                BTreeMap::new()
            } else {
                st.vv.clone()
            };
            let mut vv_moved = p.reset;
            for (o, l) in p.vv.iter().flatten() {
                let e = vv.entry(o.clone()).or_insert(0);
                if *l > *e {
                    *e = *l;
                    vv_moved = true;
                }
            }
            let mut deps_id = st.deps_id;
            let vv_text = serde_json::to_string(&vv).expect("a map serialises");
            if vv_moved {
                tx.execute("INSERT INTO _flotilla_deps (vv) VALUES (?1)", [&vv_text])?;
                deps_id = tx.last_insert_rowid();
            }
            // Version vectors no pending transaction depends on are dropped.
            tx.execute(
                "DELETE FROM _flotilla_deps WHERE id <> ?1 AND id NOT IN \
                 (SELECT deps FROM _flotilla_outbox)",
                [deps_id],
            )?;
            let tables_text = serde_json::to_string(&p.tables).expect("tables serialise");
            tx.execute(
                "UPDATE _flotilla_device SET cursor = ?1, shapes = ?2, tables = ?3, vv = ?4, \
                 deps_id = ?5, hlc = max(hlc, ?6), reset_next = 0 WHERE id = 1",
                rusqlite::params![
                    p.cursor,
                    p.shapes,
                    tables_text,
                    vv_text,
                    deps_id,
                    p.hlc as i64
                ],
            )?;
            if p.reset || schema_changed || p.tables != st.tables {
                local_schema::install_triggers(&tx, &p.tables)?;
            }
            // What the server does not have yet goes back on top of its rows. A pending
            // change that no longer fits them (a unique value the server gave another row) is
            // not shown until the server has decided on it.
            let pending: Vec<(String, String)> = tx
                .prepare("SELECT changes, docs FROM _flotilla_outbox ORDER BY seq")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let damaged =
                |e: serde_json::Error| DeviceError::Local(format!("the outbox is damaged: {e}"));
            for (changes, docs) in pending {
                let changes: Vec<OutboxChange> = serde_json::from_str(&changes).map_err(damaged)?;
                for c in &changes {
                    // After a whole-shape pull every pending change goes back on top; after
                    // changes, those of the rows the pull wrote (the others still show).
                    let only = (!p.reset).then_some(&touched);
                    apply::replay(&tx, &p.tables, c, only).map_err(DeviceError::Local)?;
                }
                if p.reset {
                    // The documents were the server's again: this device's pending edits go
                    // back in (merged again elsewhere, they change nothing).
                    let docs: Vec<DocUpdate> = serde_json::from_str(&docs).map_err(damaged)?;
                    for d in &docs {
                        documents::merge(&tx, &p.tables, d).map_err(DeviceError::Local)?;
                    }
                }
            }
            // Each row shows its document's text (the server's lacks what is pending here).
            documents::show_texts(&tx, &p.tables).map_err(DeviceError::Local)?;
        } else if stale {
            more = true;
        }
        tx.execute("DELETE FROM _flotilla_writing", [])?;
        tx.commit()?;
        Ok(more)
    }

    /// What the app can show: offline, syncing (n changes pending), or synced through a
    /// position at a time.
    #[allow(clippy::type_complexity)]
    pub fn status(&self) -> Result<Status, DeviceError> {
        let (origin, cursor, last_sync_ms, last_error, kind, offline): (
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<String>,
            i64,
        ) = self.conn.query_row(
            "SELECT origin, cursor, last_sync_ms, last_error, last_error_kind, offline \
             FROM _flotilla_device WHERE id = 1",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )?;
        let pending: i64 = self.conn.query_row(
            "SELECT count(*) FROM _flotilla_outbox WHERE changes <> '[]'",
            [],
            |r| r.get(0),
        )?;
        let rejected: i64 =
            self.conn
                .query_row("SELECT count(*) FROM _flotilla_rejected", [], |r| r.get(0))?;
        Ok(Status {
            offline: offline != 0,
            pending: pending as usize,
            rejected: rejected as usize,
            origin,
            cursor,
            last_sync_ms: last_sync_ms.map(|v| v as u64),
            unreachable: kind.as_deref() == Some("unreachable"),
            last_error,
        })
    }

    /// The transactions the server refused, with why (kept for the app to show).
    pub fn rejected(&self) -> Result<Vec<Rejected>, DeviceError> {
        let out = self
            .conn
            .prepare(
                "SELECT seq, code, reason, changes, at_ms FROM _flotilla_rejected ORDER BY seq",
            )?
            .query_map([], |r| {
                Ok(Rejected {
                    seq: r.get::<_, i64>(0)? as u64,
                    code: r.get(1)?,
                    reason: r.get(2)?,
                    changes: r.get(3)?,
                    at_ms: r.get::<_, i64>(4)? as u64,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(out)
    }
}

/// Syncs a device's local database on a thread of its own, every `every`, until dropped or
/// stopped. It opens its own connection to the file, so the application keeps using its
/// [`Device`] meanwhile (SQLite serialises the writes).
#[cfg(feature = "ureq-transport")]
pub struct BackgroundSync {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(feature = "ureq-transport")]
impl BackgroundSync {
    pub fn start(
        path: impl AsRef<Path>,
        server: &str,
        token: &str,
        every: std::time::Duration,
    ) -> Result<BackgroundSync, DeviceError> {
        let mut device = Device::open(path, server, token)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("flotilla-device-sync".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    // Failures are in the status (last_error); the next round tries again.
                    let _ = device.sync();
                    let step = std::time::Duration::from_millis(50);
                    let mut waited = std::time::Duration::ZERO;
                    while waited < every && !flag.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(step);
                        waited += step;
                    }
                }
            })
            .map_err(|e| DeviceError::Local(format!("starting the sync thread: {e}")))?;
        Ok(BackgroundSync {
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(feature = "ureq-transport")]
impl Drop for BackgroundSync {
    fn drop(&mut self) {
        self.halt();
    }
}
