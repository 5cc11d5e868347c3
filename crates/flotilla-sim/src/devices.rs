//! Deterministic simulation of offline devices (`cargo sim --devices`).
//!
//! One server: a real `LeaderDb` (a data centre, `home`) on a temporary file, its log kept as
//! the decoded records of its commits, and a reader connection on the same file. Two to four
//! devices, each a real `flotilla_device::Device` (its own SQLite file, capture triggers,
//! outbox, rebase), of two users, syncing through a transport that calls the server in this
//! process. The server's side is the store's: `check_device_batch`, `commit_device_merge` and
//! `devices::protocol` (request transactions, cursors, pulls) — what `POST /v1/sync` runs; the
//! simulator supplies only what the node does around them (who a token is, giving an origin,
//! holding the log), as the node does.
//!
//! One seed drives the workload (inserts, edits, deletes, key moves on the devices, rows given
//! to the other user, rows written for the other user; the server moving rows between users),
//! long offline stretches, the order devices sync in, and transfer faults: a request lost, an
//! answer lost after the server applied it, an old request replayed later.
//!
//! Invariants: a device never holds a row outside its shape after a sync; a row a device
//! wrote for the other user never reaches the server; after the faults stop and every device
//! has synced, each device holds exactly the server's rows of its user, its outbox is empty,
//! and the server merged each of its transactions exactly once (one merge record per number,
//! the version vector at the last number). `items.body` is collaborative: devices and the
//! server's editors edit its documents, and in the end every device shows the server's text,
//! which is its document's (`device_documents.rs`).

use crate::device_documents;
use anyhow::{bail, ensure, Context};
use flotilla_device::{Answer, Device, Transport, Unreachable};
use flotilla_store::devices::{protocol, DeviceView};
use flotilla_store::{DbSettings, LeaderDb, RequestOutcome, TxnRequest};
use flotilla_types::sync_protocol::{SyncRequest, SyncResponse, SYNC_PROTOCOL_VERSION};
use flotilla_types::{ContentDigest, Epoch, LogRecord, Lsn, NodeId, OriginName};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DevicesReport {
    pub device_transactions: u64,
    pub server_transactions: u64,
    pub syncs: u64,
    pub lost_requests: u64,
    pub lost_answers: u64,
    pub replays: u64,
    pub rejected: u64,
    pub resets: u64,
}

impl DevicesReport {
    pub fn add(&mut self, o: &DevicesReport) {
        self.device_transactions += o.device_transactions;
        self.server_transactions += o.server_transactions;
        self.syncs += o.syncs;
        self.lost_requests += o.lost_requests;
        self.lost_answers += o.lost_answers;
        self.replays += o.replays;
        self.rejected += o.rejected;
        self.resets += o.resets;
    }
}

impl fmt::Display for DevicesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} device transactions, {} server transactions, {} syncs ({} requests lost, {} \
             answers lost, {} old requests replayed), {} transactions refused outside the \
             shape, {} whole-shape pulls",
            self.device_transactions,
            self.server_transactions,
            self.syncs,
            self.lost_requests,
            self.lost_answers,
            self.replays,
            self.rejected,
            self.resets
        )
    }
}

const SETUP: &str = "CREATE TABLE items (id TEXT PRIMARY KEY, owner TEXT NOT NULL, v INTEGER NOT NULL DEFAULT 0, note TEXT, body TEXT DEFAULT 'text')";
const USERS: [&str; 2] = ["u1", "u2"];
/// The shapes a seed switches between (a narrower one, then back): devices pull their whole
/// shape again, and pending changes outside the narrower one are refused.
const PREDICATES: [&str; 2] = ["owner = :user", "owner = :user AND v < 60"];

/// The server: a data centre's leader, its log, and what the node keeps beside (who each
/// token is).
struct Server {
    db: LeaderDb,
    reader: rusqlite::Connection,
    log: Vec<LogRecord>,
    node: NodeId,
    now_us: u64,
    /// token → (device, user)
    devices: HashMap<String, (String, String)>,
}

fn record_of(out: &flotilla_store::CommitOutcome) -> anyhow::Result<LogRecord> {
    let mut r = out.record.clone().context("a commit without its record")?;
    r.rows = Some(flotilla_wire::decode_rows(&out.encoded_rows)?);
    Ok(r)
}

fn error(status: u16, code: &str, message: String, extra: serde_json::Value) -> Answer {
    let mut e = serde_json::json!({ "code": code, "message": message });
    if let (Some(o), Some(x)) = (e.as_object_mut(), extra.as_object()) {
        o.extend(x.clone());
    }
    Answer {
        status,
        body: serde_json::to_vec(&serde_json::json!({ "error": e })).expect("JSON"),
    }
}

impl Server {
    fn commit_sql(&mut self, sql: &str) -> anyhow::Result<bool> {
        self.now_us += 1_000;
        let req = TxnRequest {
            statements: vec![(sql.to_string(), flotilla_store::Params::default())],
            idempotency_key: None,
            digest: ContentDigest(1),
            timeout_ms: 0,
        };
        let node = self.node.clone();
        let out = self.db.commit_batch(&[req], Epoch(1), &node, self.now_us)?;
        match &out.outcomes[0] {
            RequestOutcome::Committed(_) => {
                if out.record.is_some() {
                    self.log.push(record_of(&out)?);
                }
                Ok(true)
            }
            RequestOutcome::Failed { .. } => Ok(false),
            other => bail!("an unexpected outcome {other:?}"),
        }
    }

    /// The permission invariant, checked on what the server accepted (independently of how
    /// the store checks it): every row an accepted transaction changes is this user's or new
    /// before, and this user's after.
    fn audit(
        &self,
        origin: &OriginName,
        user: &str,
        txns: &[flotilla_store::devices::DeviceTxn],
    ) -> anyhow::Result<()> {
        let have = flotilla_store::read_version_vector(&self.reader)?
            .get(origin)
            .0;
        let mut made_here: Vec<String> = Vec::new();
        for t in txns.iter().filter(|t| t.seq > have) {
            for c in &t.changes {
                let field = |img: &Option<Vec<(String, flotilla_types::SqlValue)>>, f: &str| {
                    img.as_ref().and_then(|i| {
                        i.iter().find(|(n, _)| n == f).map(|(_, v)| match v {
                            flotilla_types::SqlValue::Text(t) => t.clone(),
                            other => format!("{other:?}"),
                        })
                    })
                };
                let id = field(&c.before, "id").or_else(|| field(&c.after, "id"));
                if let Some(id) = id {
                    let owner: Option<String> = self
                        .reader
                        .query_row("SELECT owner FROM items WHERE id = ?1", [&id], |r| r.get(0))
                        .ok();
                    ensure!(
                        owner.as_deref().is_none_or(|o| o == user) || made_here.contains(&id),
                        "the server accepted {origin}'s change of {id}, a row of {owner:?}"
                    );
                }
                if let Some(o) = field(&c.after, "owner") {
                    ensure!(o == user, "the server accepted {origin}'s row for {o}");
                }
                if let Some(id) = field(&c.after, "id") {
                    made_here.push(id);
                }
            }
        }
        Ok(())
    }

    /// What `POST /v1/sync` does, around the store's pieces (see `flotilla-node`'s
    /// `api/sync.rs`).
    fn sync(&mut self, token: &str, body: &[u8]) -> anyhow::Result<Answer> {
        let req: SyncRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return Ok(error(
                    400,
                    "bad_request",
                    e.to_string(),
                    serde_json::json!({}),
                ))
            }
        };
        ensure!(
            req.protocol == SYNC_PROTOCOL_VERSION,
            "protocol {}",
            req.protocol
        );
        let Some((device, user)) = self.devices.get(token).cloned() else {
            return Ok(error(
                401,
                "unauthorized",
                "unknown token".into(),
                serde_json::json!({}),
            ));
        };
        let txns = match protocol::request_txns(&req) {
            Ok(t) => t,
            Err(e) => return Ok(error(400, e.code, e.message, serde_json::json!({}))),
        };
        let origins = flotilla_store::devices::origins_of(&self.reader, &device)?;
        let origin = match &req.origin {
            Some(o) if origins.contains(o) => OriginName::new(o)?,
            Some(o) => bail!("device {device} sent origin {o}, not one of {origins:?}"),
            None => {
                self.now_us += 1_000;
                let node = self.node.clone();
                let (o, out) = self
                    .db
                    .new_device_origin(&device, Epoch(1), &node, self.now_us)?;
                self.log.push(record_of(&out)?);
                o
            }
        };
        let mut view = DeviceView::load(&self.reader, &user, &device)?;
        if !txns.is_empty() {
            self.now_us += 1_000;
            match self
                .db
                .check_device_batch(&view, &origin, &txns, self.now_us)?
            {
                Err(r) => {
                    let status = if r.code == "outside_shape" { 403 } else { 409 };
                    return Ok(error(
                        status,
                        r.code,
                        r.to_string(),
                        serde_json::json!({ "index": r.index, "seq": r.seq }),
                    ));
                }
                Ok(prepared) => {
                    self.audit(&origin, &user, &txns)?;
                    for p in prepared {
                        self.now_us += 10;
                        let node = self.node.clone();
                        match self.db.commit_device_merge(
                            &p.stamp,
                            &p.changes,
                            Epoch(1),
                            &node,
                            self.now_us,
                        )? {
                            flotilla_store::MergeOutcome::Committed { commit, .. } => {
                                self.log.push(record_of(&commit)?)
                            }
                            flotilla_store::MergeOutcome::Duplicate => {}
                        }
                    }
                }
            }
        }
        let acknowledged = flotilla_store::read_version_vector(&self.reader)?
            .get(&origin)
            .0;
        let head = self.log.last().map_or(Lsn(0), |r| r.lsn);
        let pull = match &req.pull {
            None => None,
            Some(p) => Some(
                match protocol::pull_cursor(
                    p,
                    &{
                        view.documents = p.documents;
                        view.clone()
                    },
                    head,
                )? {
                    None => protocol::pull_whole_shape(&self.reader, &user, &device, p.documents)?,
                    Some(from)
                        if !protocol::cursor_holds(
                            from,
                            self.log.iter().find(|r| r.lsn == from.lsn),
                        ) =>
                    {
                        protocol::pull_whole_shape(&self.reader, &user, &device, p.documents)?
                    }
                    Some(from) => {
                        let max = protocol::pull_limit(p);
                        let records: Vec<LogRecord> = self
                            .log
                            .iter()
                            .filter(|r| r.lsn > from.lsn)
                            .take(max.max(1) * 2)
                            .cloned()
                            .collect();
                        let pushed = protocol::pushed_keys(&view, &txns);
                        protocol::pull_changes(
                            &self.reader,
                            &view,
                            from,
                            &records,
                            max,
                            &pushed,
                            head,
                        )?
                    }
                },
            ),
        };
        let resp = SyncResponse {
            protocol: SYNC_PROTOCOL_VERSION,
            origin: origin.to_string(),
            server: "home".into(),
            acknowledged,
            pull,
            max_request_bytes: Some(16 << 20),
            user: Some(user.clone()),
            device: Some(device.clone()),
        };
        Ok(Answer {
            status: 200,
            body: serde_json::to_vec(&resp)?,
        })
    }
}

/// What happens to the next request: the seed decides.
struct Faults {
    rng: ChaCha8Rng,
    /// Transfer faults happen (off once the simulation settles).
    on: bool,
    /// Requests kept to be sent again later (a client that retried, a proxy's replay).
    kept: Vec<(String, Vec<u8>)>,
    report: DevicesReport,
}

/// The devices' transport: calls the server in this process, losing requests and answers and
/// keeping some requests to replay, as the seed decides.
struct SimTransport {
    server: Arc<Mutex<Server>>,
    faults: Arc<Mutex<Faults>>,
    /// The server failed (an error the simulator reports, not an answer).
    failure: Arc<Mutex<Option<String>>>,
}

impl Transport for SimTransport {
    fn post_json(&self, _url: &str, token: &str, body: Vec<u8>) -> Result<Answer, Unreachable> {
        let mut f = self.faults.lock().expect("faults");
        if f.on && f.rng.random_bool(0.1) {
            f.report.lost_requests += 1;
            return Err(Unreachable("the request was lost".into()));
        }
        if f.on && f.rng.random_bool(0.1) {
            f.kept.push((token.to_string(), body.clone()));
        }
        let lose_answer = f.on && f.rng.random_bool(0.1);
        drop(f);
        let answer = self.server.lock().expect("server").sync(token, &body);
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                *self.failure.lock().expect("failure") = Some(format!("{e:#}"));
                return Err(Unreachable(format!("the server failed: {e:#}")));
            }
        };
        if lose_answer {
            self.faults.lock().expect("faults").report.lost_answers += 1;
            return Err(Unreachable("the answer was lost".into()));
        }
        Ok(answer)
    }
}

struct Dev {
    name: String,
    user: &'static str,
    device: Device,
    offline: bool,
    made: u64,
}

/// A row of `items`: id, owner, v, note.
type Item = (String, String, i64, Option<String>);

fn device_items(d: &Device) -> anyhow::Result<Vec<Item>> {
    let conn = d.connection();
    let exists: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = 'items'",
        [],
        |r| r.get(0),
    )?;
    if exists == 0 {
        return Ok(Vec::new());
    }
    let mut s = conn.prepare("SELECT id, owner, v, note FROM items ORDER BY id")?;
    let rows = s
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

fn server_items(
    conn: &rusqlite::Connection,
    user: &str,
    predicate: &str,
) -> anyhow::Result<Vec<Item>> {
    let mut s = conn.prepare(&format!(
        "SELECT id, owner, v, note FROM items WHERE {predicate} ORDER BY id"
    ))?;
    let rows = s
        .query_map(&[(":user", user)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Whether a row is in the shape `predicate` gives `user`.
fn in_shape(row: &Item, user: &str, predicate: &str) -> bool {
    row.1 == user && (predicate == PREDICATES[0] || row.2 < 60)
}

/// Runs one seed; `Err` names the invariant that broke.
pub fn run_devices_seed(seed: u64, trace: bool) -> anyhow::Result<DevicesReport> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6465_7669_6365_7321);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("home.db");
    let node = NodeId::new("home-leader")?;
    let (mut db, _) = LeaderDb::open(&path, &DbSettings::default(), || "cd".repeat(16))?;
    db.uncaptured(Lsn(0), &node)?;
    let clock_ms = Arc::new(std::sync::atomic::AtomicU64::new(1_800_000_000_000));
    let now_us = clock_ms.load(std::sync::atomic::Ordering::Relaxed) * 1000;
    let mut log = Vec::new();
    let dc = OriginName::new("home")?;
    if let Some(out) = db.enable_multi_leader(&dc, "sim", 60_000, Epoch(1), &node, now_us)? {
        log.push(record_of(&out)?);
    }
    let reader = rusqlite::Connection::open(&path)?;
    let mut server = Server {
        db,
        reader,
        log,
        node,
        now_us,
        devices: HashMap::new(),
    };
    server.commit_sql(SETUP)?;
    let mut predicate = PREDICATES[0];
    let shape = flotilla_store::devices::Shape {
        table: "items".into(),
        columns: None,
        predicate: Some(predicate.into()),
    };
    let node = server.node.clone();
    let (_, out) = server
        .db
        .set_shape(&shape, Epoch(1), &node, server.now_us)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    server.log.push(record_of(&out)?);
    let now = server.now_us;
    let (_, out) = server.db.enable_collab(
        device_documents::TABLE,
        device_documents::COLUMN,
        Epoch(1),
        &node,
        now,
    )?;
    server.log.push(record_of(&out)?);
    let count = rng.random_range(2..=4usize);
    let mut tokens = Vec::new();
    for i in 0..count {
        let user = USERS[i % 2];
        let name = format!("d{i}");
        let token = format!("token-{i}");
        let stored = flotilla_store::StoredToken {
            id: format!("{i:012x}"),
            name: name.clone(),
            role: flotilla_types::AccessRole::Device,
            hash: vec![i as u8],
            created_ms: 0,
            revoked_ms: None,
        };
        let out = server
            .db
            .add_device(&name, user, &stored, Epoch(1), &node, server.now_us)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        server.log.push(record_of(&out)?);
        server
            .devices
            .insert(token.clone(), (name, user.to_string()));
        tokens.push(token);
    }
    let server = Arc::new(Mutex::new(server));
    let faults = Arc::new(Mutex::new(Faults {
        rng: ChaCha8Rng::seed_from_u64(rng.random()),
        on: true,
        kept: Vec::new(),
        report: DevicesReport::default(),
    }));
    let failure = Arc::new(Mutex::new(None));
    let mut devs = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let transport = SimTransport {
            server: server.clone(),
            faults: faults.clone(),
            failure: failure.clone(),
        };
        let clock = clock_ms.clone();
        let device = Device::open_with(
            dir.path().join(format!("d{i}.db")),
            "sim://home",
            token,
            Box::new(transport),
        )?
        .with_clock(Box::new(move || {
            clock.load(std::sync::atomic::Ordering::Relaxed)
        }));
        devs.push(Dev {
            name: format!("d{i}"),
            user: USERS[i % 2],
            device,
            offline: false,
            made: 0,
        });
    }
    if trace {
        println!("seed {seed}: {count} devices");
    }
    let mut report = DevicesReport::default();
    // Rows written for the other user: never to reach the server.
    let mut forbidden: Vec<String> = Vec::new();

    let steps = rng.random_range(80..200);
    for step in 0..steps {
        clock_ms.fetch_add(
            rng.random_range(1..500),
            std::sync::atomic::Ordering::Relaxed,
        );
        server.lock().expect("server").now_us =
            clock_ms.load(std::sync::atomic::Ordering::Relaxed) * 1000;
        let i = rng.random_range(0..count);
        match rng.random_range(0..100) {
            // A device edits a document (online or not).
            0..=9 => {
                let d = &mut devs[i];
                let rows = device_items(&d.device)?;
                if rows.is_empty() {
                    continue;
                }
                let id = rows[rng.random_range(0..rows.len())].0.clone();
                let len = device_documents::device_text(&d.device, &id)?
                    .unwrap_or_default()
                    .encode_utf16()
                    .count() as u32;
                let (at, delete, insert) =
                    device_documents::random_edit(&mut rng, len, &format!("<{}:{step}>", d.name));
                if trace {
                    println!(
                        "  {} edits {id}'s text at {at}: -{delete} +{insert}",
                        d.name
                    );
                }
                d.device
                    .edit_text(
                        device_documents::TABLE,
                        &id,
                        device_documents::COLUMN,
                        at,
                        delete,
                        &insert,
                    )
                    .with_context(|| format!("{} editing {id}", d.name))?;
                report.device_transactions += 1;
            }
            // A device writes (online or not).
            10..=44 => {
                let d = &mut devs[i];
                let rows = device_items(&d.device)?;
                if rows.is_empty() && d.device.status()?.cursor.is_none() {
                    continue; // not synced yet: no table
                }
                let other = if d.user == USERS[0] {
                    USERS[1]
                } else {
                    USERS[0]
                };
                let pick = |rng: &mut ChaCha8Rng| {
                    (!rows.is_empty()).then(|| rows[rng.random_range(0..rows.len())].0.clone())
                };
                let mut sql: Vec<(String, bool)> = Vec::new();
                for _ in 0..rng.random_range(1..=3) {
                    match rng.random_range(0..10) {
                        0..=2 => {
                            d.made += 1;
                            sql.push((
                                format!(
                                    "INSERT INTO items (id, owner, v, note) VALUES ('{}-{}', '{}', {}, 'made {step}')",
                                    d.name, d.made, d.user, rng.random_range(0..100)
                                ),
                                false,
                            ));
                        }
                        3..=4 => {
                            if let Some(id) = pick(&mut rng) {
                                sql.push((
                                    format!(
                                        "UPDATE items SET v = v + {}, note = 'by {} at {step}' WHERE id = '{id}'",
                                        rng.random_range(1..5),
                                        d.name
                                    ),
                                    false,
                                ));
                            }
                        }
                        5 => {
                            if let Some(id) = pick(&mut rng) {
                                sql.push((format!("DELETE FROM items WHERE id = '{id}'"), false));
                            }
                        }
                        6 => {
                            if let Some(id) = pick(&mut rng) {
                                d.made += 1;
                                sql.push((
                                    format!(
                                        "UPDATE OR IGNORE items SET id = '{}-{}' WHERE id = '{id}'",
                                        d.name, d.made
                                    ),
                                    false,
                                ));
                            }
                        }
                        // Given away to the other user: outside the shape after: refused.
                        7 => {
                            if let Some(id) = pick(&mut rng) {
                                sql.push((
                                    format!("UPDATE items SET owner = '{other}' WHERE id = '{id}'"),
                                    true,
                                ));
                            }
                        }
                        // Written for the other user: refused, never on the server.
                        8 => {
                            d.made += 1;
                            let id = format!("{}-x{}", d.name, d.made);
                            forbidden.push(id.clone());
                            sql.push((
                                format!("INSERT INTO items (id, owner) VALUES ('{id}', '{other}')"),
                                true,
                            ));
                        }
                        _ => {
                            if let Some(id) = pick(&mut rng) {
                                sql.push((
                                    format!("UPDATE items SET note = 'n{step}' WHERE id = '{id}'"),
                                    false,
                                ));
                            }
                        }
                    }
                }
                if sql.is_empty() {
                    continue;
                }
                if trace {
                    println!("  {} writes {:?}", d.name, sql);
                }
                d.device.transaction(|tx| {
                    for (s, _) in &sql {
                        tx.execute(s, [])?;
                    }
                    Ok(())
                })?;
                report.device_transactions += 1;
            }
            // A device syncs.
            45..=79 => {
                let d = &mut devs[i];
                if d.offline {
                    continue;
                }
                report.syncs += 1;
                match d.device.sync() {
                    Ok(r) => {
                        report.rejected += r.rejected as u64;
                        report.resets += r.reset as u64;
                        if trace {
                            println!("  {} synced: {r:?}", d.name);
                        }
                        for row in device_items(&d.device)? {
                            ensure!(
                                in_shape(&row, d.user, predicate),
                                "device {} of {} holds {row:?} after a sync (shape {predicate})",
                                d.name,
                                d.user
                            );
                        }
                    }
                    Err(flotilla_device::DeviceError::Unreachable(why)) => {
                        if let Some(f) = failure.lock().expect("failure").take() {
                            bail!("the server failed during {}'s sync: {f}", d.name);
                        }
                        if trace {
                            println!("  {} sync failed: {why}", d.name);
                        }
                    }
                    Err(e) => bail!("{}'s sync failed: {e}", d.name),
                }
            }
            // A device goes offline, or comes back.
            80..=87 => {
                let d = &mut devs[i];
                d.offline = !d.offline;
                d.device.set_offline(d.offline)?;
            }
            // An old request arrives again.
            88..=92 => {
                let kept = {
                    let mut f = faults.lock().expect("faults");
                    let n = f.kept.len();
                    if n == 0 {
                        None
                    } else {
                        let at = f.rng.random_range(0..n);
                        Some(f.kept.remove(at))
                    }
                };
                if let Some((token, body)) = kept {
                    report.replays += 1;
                    server.lock().expect("server").sync(&token, &body)?;
                }
            }
            // The server's own writes: rows made for a user, moved to the other, deleted.
            _ => {
                let mut s = server.lock().expect("server");
                let user = USERS[rng.random_range(0..2)];
                let which = rng.random_range(0..14);
                if which >= 12 {
                    // An editor on the server edits a document.
                    let id: Option<String> = s
                        .reader
                        .query_row(
                            "SELECT id FROM items ORDER BY id LIMIT 1 OFFSET ?1",
                            [rng.random_range(0..6)],
                            |r| r.get(0),
                        )
                        .ok();
                    let Some(id) = id else { continue };
                    let (node, now) = (s.node.clone(), s.now_us);
                    let s = &mut *s;
                    let out = device_documents::server_edit(
                        &mut s.db,
                        &s.reader,
                        &node,
                        now,
                        &id,
                        &mut rng,
                        &format!("<server:{step}>"),
                    )?;
                    if let Some(out) = out {
                        s.log.push(record_of(&out)?);
                        report.server_transactions += 1;
                        if trace {
                            println!("  server: an editor edits {id}'s text");
                        }
                    }
                    continue;
                }
                if which == 10 {
                    // The shape changes.
                    predicate = if predicate == PREDICATES[0] {
                        PREDICATES[1]
                    } else {
                        PREDICATES[0]
                    };
                    let shape = flotilla_store::devices::Shape {
                        table: "items".into(),
                        columns: None,
                        predicate: Some(predicate.into()),
                    };
                    let (node, now) = (s.node.clone(), s.now_us);
                    let (_, out) =
                        s.db.set_shape(&shape, Epoch(1), &node, now)
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                    s.log.push(record_of(&out)?);
                    if trace {
                        println!("  server: the shape is now {predicate}");
                    }
                    continue;
                }
                let sql = match which {
                    // A column added (once: again is refused, and nothing happens).
                    11 => "ALTER TABLE items ADD COLUMN extra TEXT DEFAULT 'x'".to_string(),
                    0..=3 => format!(
                        "INSERT INTO items (id, owner, v) VALUES ('s-{step}', '{user}', {})",
                        rng.random_range(0..100)
                    ),
                    4..=6 => format!(
                        "UPDATE items SET owner = '{user}' WHERE id IN (SELECT id FROM items ORDER BY id LIMIT 1 OFFSET {})",
                        rng.random_range(0..5)
                    ),
                    _ => format!(
                        "DELETE FROM items WHERE id IN (SELECT id FROM items ORDER BY id LIMIT 1 OFFSET {})",
                        rng.random_range(0..8)
                    ),
                };
                if s.commit_sql(&sql)? {
                    report.server_transactions += 1;
                }
                if trace {
                    println!("  server: {sql}");
                }
            }
        }
    }

    // Settle: no more faults, every device online, each syncs until nothing moves.
    faults.lock().expect("faults").on = false;
    for d in devs.iter_mut() {
        d.offline = false;
        d.device.set_offline(false)?;
    }
    for _ in 0..3 {
        for d in devs.iter_mut() {
            let r = d
                .device
                .sync()
                .with_context(|| format!("{}'s sync after the faults", d.name))?;
            report.rejected += r.rejected as u64;
            report.resets += r.reset as u64;
        }
    }
    let s = server.lock().expect("server");
    for id in &forbidden {
        let n: i64 = s
            .reader
            .query_row("SELECT count(*) FROM items WHERE id = ?1", [id], |r| {
                r.get(0)
            })?;
        ensure!(
            n == 0,
            "row {id}, written by a device for the other user, reached the server"
        );
    }
    let vv = flotilla_store::read_version_vector(&s.reader)?;
    for d in &devs {
        let st = d.device.status()?;
        ensure!(
            st.pending == 0,
            "{} still has {} changes pending",
            d.name,
            st.pending
        );
        let held = device_items(&d.device)?;
        let should = server_items(&s.reader, d.user, predicate)?;
        ensure!(
            held == should,
            "device {} of {} holds {held:?}, the server {should:?}",
            d.name,
            d.user
        );
        for (id, ..) in &held {
            let there = device_documents::server_text(&s.reader, id)?;
            let here = device_documents::device_text(&d.device, id)?;
            ensure!(
                here == there,
                "device {} shows {here:?} as {id}'s text, the server {there:?}",
                d.name
            );
        }
        let origin = st.origin.context("a device that never synced")?;
        let next_seq: i64 =
            d.device
                .connection()
                .query_row("SELECT next_seq FROM _flotilla_device", [], |r| r.get(0))?;
        let o = OriginName::new(&origin)?;
        ensure!(
            vv.get(&o).0 == (next_seq - 1) as u64,
            "the server has {}'s transactions through {}, it made {}",
            d.name,
            vv.get(&o),
            next_seq - 1
        );
        let merges = s
            .log
            .iter()
            .filter(|r| r.exchange.as_ref().is_some_and(|x| x.origin == o))
            .count();
        ensure!(
            merges as i64 == next_seq - 1,
            "{} made {} transactions, the server merged {merges}",
            d.name,
            next_seq - 1
        );
    }
    let f = faults.lock().expect("faults");
    report.lost_requests = f.report.lost_requests;
    report.lost_answers = f.report.lost_answers;
    Ok(report)
}
