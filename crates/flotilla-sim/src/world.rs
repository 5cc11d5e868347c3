use crate::network::{Dir, Faults, Network, Sent};
use crate::replica::{content_digest, content_digest_of, Replica};
use anyhow::{bail, ensure, Context};
use flotilla_core::handshake::{check_link, decide, Decision, FollowerClaim, LeaderView};
use flotilla_core::{
    FollowerCommand, FollowerConfig, FollowerEvent, FollowerSession, FollowerTracker, SessionId,
};
use flotilla_log::{Log, LogConfig};
use flotilla_store::snapshot::{stream, SnapshotReceiver};
use flotilla_store::{
    open_reader, page_digest, recover_leader, DbSettings, LeaderDb, RowFilter, RowReplica,
    TxnRequest,
};
use flotilla_types::{ContentDigest, Epoch, LogKind, LogRecord, Lsn, NodeId, Position};
use flotilla_wire::{project_record, FollowerMessage, LeaderMessage, RefusalCode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::types::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;

const FOLLOWERS: usize = 2;
const MAX_OPS: usize = 120;
const MAX_SIM_MS: u64 = 60_000;
const HEARTBEAT_MS: u64 = 1_000;
/// The simulated leader's incarnation (it never changes: the simulated leader's data directory
/// is never copied).
const LEADER_INCARNATION: &str = "sim-leader";

mod faults;
mod follower_host;
mod report;

pub use report::Report;

/// The leader's database files (suffix of the name, bytes) as they were after the commit at
/// `.0`.
type LeaderImage = (u64, Vec<(&'static str, Vec<u8>)>);

struct Leader {
    path: PathBuf,
    log_dir: PathBuf,
    db: LeaderDb,
    log: Log,
    tracker: FollowerTracker,
    /// Page digest of the leader's database after each LSN (the oracle of physical followers).
    history: HashMap<u64, (u32, u64)>,
    /// Digest of the rows of the leader's tables after each LSN (the oracle of logical ones).
    content: HashMap<u64, u64>,
    /// Highest LSN acknowledged to a client (appended and synced).
    acked: u64,
    /// After damage at rest the log may not reopen (by design); the leader is not crashed again.
    damaged: bool,
    /// The database files as they were after an earlier commit: what a power loss leaves when
    /// SQLite (`synchronous=NORMAL`) had not flushed the WAL frames of the commits since.
    image: Option<LeaderImage>,
    /// Bumped at each power loss: the restored files get a new name, so that no abandoned
    /// connection of the crashed process shares SQLite's locks or shared memory with them.
    generation: u32,
}

struct LeaderConn {
    follower: usize,
    /// The log the follower asked for in its hello.
    kind: LogKind,
    /// LSN of the next record to ship; `None` until the follower is welcomed.
    next: Option<u64>,
    last_sent_ms: u64,
    /// Set after a refusal: the connection closes at this time.
    closing_at: Option<u64>,
    /// The tracker's session, once welcomed.
    session: Option<SessionId>,
}

struct Follower {
    id: String,
    kind: LogKind,
    path: PathBuf,
    session: FollowerSession,
    db: Option<Replica>,
    conn: Option<u64>,
    partitioned_until: u64,
    /// One-way partition: until then, messages from the leader to this follower vanish (the
    /// connection stalls; nothing tells either side), and new connections cannot complete.
    deaf_until: u64,
    /// An apply handed to the host and not finished: it is committed (and fsynced) at `.0`. A
    /// crash before then loses it, as a power loss loses a write whose fsync had not returned.
    apply_in_flight: Option<(u64, Vec<LogRecord>)>,
    /// Until then, applies fail for lack of disk space.
    disk_full_until: u64,
    /// The follower's clock runs this far ahead of the simulation's; it jumps now and then.
    clock_skew_ms: u64,
    /// The highest LSN this follower told the leader it holds durably. Only a snapshot replaces
    /// its database, and a snapshot is never older; so after any crash it must hold this LSN.
    acked_durable: u64,
    /// The leader incarnation the follower persisted (survives its crashes).
    leader_incarnation: Option<String>,
}

struct World {
    rng: ChaCha8Rng,
    trace: bool,
    now: u64,
    net: Network,
    faults: Faults,
    leader: Leader,
    conns: BTreeMap<u64, LeaderConn>,
    next_conn: u64,
    followers: Vec<Follower>,
    events: VecDeque<(usize, FollowerEvent)>,
    /// An apply takes up to this long (drawn per seed).
    apply_ms_max: u64,
    report: Report,
    /// Connections of crashed nodes: abandoned without closing (as `kill -9` would leave them,
    /// SQLite gets no chance to checkpoint or clean up), released when the seed ends so that a
    /// campaign does not run out of file descriptors.
    graveyard: Vec<Box<dyn std::any::Any>>,
    _dir: tempfile::TempDir,
}

fn origin() -> NodeId {
    NodeId::new("leader").expect("valid")
}

fn digest_of(path: &std::path::Path) -> anyhow::Result<(u32, u64)> {
    Ok(page_digest(&open_reader(path)?)?)
}

fn follower_config(id: &str, kind: LogKind) -> FollowerConfig {
    let mut c = FollowerConfig::new(id, &format!("sim://{id}"));
    c.log_kind = kind;
    c
}

/// f0 follows the physical log, f1 the logical one.
fn kind_of(f: usize) -> LogKind {
    if f.is_multiple_of(2) {
        LogKind::Physical
    } else {
        LogKind::Logical
    }
}

impl World {
    fn log(&self, msg: impl FnOnce() -> String) {
        if self.trace {
            println!("{:>6} ms  {}", self.now, msg());
        }
    }

    fn open_leader(
        path: &std::path::Path,
        log_dir: &std::path::Path,
    ) -> anyhow::Result<(LeaderDb, Log)> {
        let (mut db, _) = LeaderDb::open(path, &DbSettings::default(), || "5eed".repeat(8))?;
        let log = Log::open(
            log_dir,
            LogConfig {
                segment_bytes: 256 << 10,
                ..Default::default()
            },
            db.meta().position.lsn.0,
        )?;
        // As the node does.
        recover_leader(&mut db, &log, &origin())?;
        Ok((db, log))
    }

    fn random_request(&mut self, i: u64) -> TxnRequest {
        let r = self.rng.random_range(0..11);
        let statements: Vec<(String, Vec<Value>)> = match r {
            0 => vec![(
                "INSERT INTO big(b) VALUES (?1)".into(),
                vec![Value::Blob(vec![
                    (i % 251) as u8;
                    self.rng.random_range(3000..30_000)
                ])],
            )],
            1 => vec![(
                "DELETE FROM t WHERE k % 7 = ?1".into(),
                vec![Value::Integer((i % 7) as i64)],
            )],
            2 => vec![(
                "UPDATE t SET v = v || 'x' WHERE k % 5 = ?1".into(),
                vec![Value::Integer((i % 5) as i64)],
            )],
            3 => vec![(
                format!(
                    "CREATE TABLE IF NOT EXISTS extra{} (a INTEGER PRIMARY KEY)",
                    i % 3
                ),
                vec![],
            )],
            4 => vec![(
                "DELETE FROM big WHERE id % 2 = ?1".into(),
                vec![Value::Integer((i % 2) as i64)],
            )],
            // Long definitions: the schema outgrows page 1, which becomes an interior page.
            5 => vec![(
                format!(
                    "CREATE TABLE IF NOT EXISTS wide{} (id INTEGER PRIMARY KEY, {})",
                    i % 40,
                    (0..16)
                        .map(|c| format!("a_rather_long_column_name_{c} TEXT DEFAULT 'x'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                vec![],
            )],
            _ => (0..self.rng.random_range(1..6))
                .map(|j| {
                    (
                        "INSERT INTO t(k, v) VALUES (?1, ?2)".to_string(),
                        vec![
                            Value::Integer((i * 10 + j) as i64),
                            Value::Text("v".repeat(self.rng.random_range(0..300))),
                        ],
                    )
                })
                .collect(),
        };
        TxnRequest {
            digest: ContentDigest::of(format!("{statements:?}").as_bytes()),
            statements,
            idempotency_key: None,
            timeout_ms: 0,
        }
    }

    /// One client transaction on the leader; sometimes the leader crashes right after the
    /// SQLite commit, before the log append (the request is then not acknowledged).
    fn client_op(&mut self, i: u64) -> anyhow::Result<()> {
        let req = self.random_request(i);
        self.log(|| {
            let first = req.statements.first().map_or("", |s| s.0.as_str());
            format!(
                "client: {} statement(s), first: {first}",
                req.statements.len()
            )
        });
        let out = self
            .leader
            .db
            .commit_batch(&[req], Epoch(1), &origin(), self.now * 1000)?;
        let Some(rec) = out.record else { return Ok(()) };
        self.leader
            .history
            .insert(rec.lsn.0, digest_of(&self.leader.path)?);
        self.leader
            .content
            .insert(rec.lsn.0, content_digest(&self.leader.path)?);
        self.report.commits += 1;
        if !self.leader.damaged && self.rng.random_bool(0.01) {
            self.log(|| {
                format!(
                    "leader crashes after committing {} in SQLite, before the log append",
                    rec.position()
                )
            });
            return self.crash_leader();
        }
        let encoded = flotilla_wire::encode_record_with_rows(&rec, Some(&out.encoded_rows));
        self.leader.log.append(&encoded)?;
        if !self.leader.damaged && self.rng.random_bool(0.005) {
            // The append reached the disk only in part when the process died: its fsync never
            // returned, so the request was not acknowledged.
            self.leader.log.sync()?;
            let seg = self
                .leader
                .log
                .segments()
                .last()
                .cloned()
                .context("a segment")?;
            let cut = self.rng.random_range(1..=encoded.len() as u64);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&seg.path)?
                .set_len(seg.bytes - cut)?;
            self.report.torn_appends += 1;
            self.log(|| {
                format!(
                    "leader crashes in the log append of {}: {cut} of its bytes never reached the disk",
                    rec.position()
                )
            });
            return self.crash_leader();
        }
        self.leader.log.sync()?;
        self.leader.acked = rec.lsn.0;
        if self.rng.random_bool(0.2) {
            self.take_leader_image(rec.lsn.0)?;
        }
        Ok(())
    }

    fn crash_leader(&mut self) -> anyhow::Result<()> {
        self.report.leader_crashes += 1;
        // Abandon the connections without closing them, as a killed process would.
        let (db, log) = Self::open_leader(&self.leader.path, &self.leader.log_dir)?;
        let old_db = std::mem::replace(&mut self.leader.db, db);
        let old_log = std::mem::replace(&mut self.leader.log, log);
        self.graveyard.push(Box::new(old_db));
        drop(old_log);
        let head = self.leader.db.meta().position.lsn.0;
        ensure!(
            head >= self.leader.acked,
            "acknowledged lsn {} lost: the leader restarted at {head}",
            self.leader.acked
        );
        ensure!(
            self.leader.log.stats().last_lsn == head,
            "log and database disagree after recovery"
        );
        ensure!(
            digest_of(&self.leader.path)? == self.leader.history[&head],
            "the recovered leader's database differs from its history at lsn {head}"
        );
        self.leader.acked = head;
        self.leader.image = None;
        for conn in self.conns.keys().copied().collect::<Vec<_>>() {
            self.close_conn(conn, "the leader crashed");
        }
        Ok(())
    }

    fn close_conn(&mut self, conn: u64, reason: &str) {
        if let Some(c) = self.conns.remove(&conn) {
            self.net.close(conn);
            let f = c.follower;
            if let Some(session) = c.session {
                self.leader
                    .tracker
                    .session_closed(&self.followers[f].id, session);
            }
            if self.followers[f].conn == Some(conn) {
                self.followers[f].conn = None;
                self.events.push_back((
                    f,
                    FollowerEvent::ConnectionLost {
                        reason: reason.to_string(),
                    },
                ));
            }
        }
    }

    fn send_to_follower(&mut self, conn: u64, msg: Vec<u8>) {
        self.send(conn, Dir::ToFollower, msg);
    }

    fn send(&mut self, conn: u64, dir: Dir, msg: Vec<u8>) {
        if dir == Dir::ToFollower {
            let f = self.conns.get(&conn).map(|c| c.follower);
            if f.is_some_and(|f| self.now < self.followers[f].deaf_until) {
                self.report.blackholed += 1;
                return;
            }
        }
        let faults = self.faults;
        if self
            .net
            .send(&mut self.rng, faults, self.now, conn, dir, msg)
            == Sent::ConnectionBroke
        {
            self.log(|| format!("conn {conn} breaks"));
            self.close_conn(conn, "the connection broke");
        }
    }

    fn leader_receive(&mut self, conn: u64, bytes: &[u8]) -> anyhow::Result<()> {
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let f = c.follower;
        let welcomed = c.next.is_some();
        let msg = match FollowerMessage::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.log(|| format!("leader drops conn {conn}: {e}"));
                self.close_conn(conn, "bad message");
                return Ok(());
            }
        };
        match msg {
            FollowerMessage::Hello {
                cluster_id,
                position,
                chain,
                log_kind,
                ..
            } if !welcomed => {
                let meta = self.leader.db.meta().clone();
                let view = LeaderView {
                    cluster_id: meta.cluster_id.clone(),
                    epoch: meta.position.epoch,
                    head: meta.position,
                    head_chain: meta.chain,
                    first_retained: Lsn(self.leader.log.stats().first_lsn),
                };
                let claim = FollowerClaim {
                    cluster_id,
                    position,
                    chain,
                };
                let mut decision = decide(&view, &claim);
                if let Decision::CheckLink { lsn } = decision {
                    // As the node does: a record that cannot be read means a snapshot.
                    let next = self
                        .leader
                        .log
                        .read(lsn.0, 1, 1)
                        .ok()
                        .and_then(|recs| flotilla_wire::decode_record(recs.first()?).ok());
                    decision = check_link(&claim, lsn, next.as_ref());
                }
                match decision {
                    Decision::Accept { start_after } => {
                        self.log(|| {
                            format!(
                                "leader welcomes {} after {start_after}",
                                self.followers[f].id
                            )
                        });
                        let w = LeaderMessage::Welcome {
                            cluster_id: meta.cluster_id,
                            leader_id: "leader".into(),
                            incarnation: LEADER_INCARNATION.into(),
                            epoch: meta.position.epoch,
                            start_after,
                            head: meta.position,
                        };
                        self.send_to_follower(conn, w.encode());
                        // The send may have broken the connection.
                        let Some(c) = self.conns.get_mut(&conn) else {
                            return Ok(());
                        };
                        c.next = Some(start_after.0 + 1);
                        c.last_sent_ms = self.now;
                        c.kind = log_kind;
                        let id = self.followers[f].id.clone();
                        let session = self
                            .leader
                            .tracker
                            .session_opened(&id, "sim", log_kind, position, self.now);
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.session = Some(session);
                        }
                    }
                    Decision::Refuse { code, message } => {
                        self.log(|| {
                            format!("leader refuses {}: {}", self.followers[f].id, code.as_str())
                        });
                        self.send_to_follower(
                            conn,
                            LeaderMessage::Refuse { code, message }.encode(),
                        );
                        let at = self.now + self.faults.max_delay_ms + 2;
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.closing_at = Some(at);
                        }
                    }
                    Decision::CheckLink { .. } => unreachable!("resolved"),
                }
            }
            FollowerMessage::Ack {
                received,
                durable,
                applied,
                ..
            } if welcomed => {
                let id = self.followers[f].id.clone();
                let fl = &mut self.followers[f];
                fl.acked_durable = fl.acked_durable.max(durable.lsn.0);
                let c = &self.conns[&conn];
                let sent = Lsn(c.next.unwrap_or(1) - 1);
                let session = c.session.expect("welcomed");
                if let Err(e) = self.leader.tracker.acked(
                    &id,
                    session,
                    sent,
                    [received, durable, applied],
                    self.now,
                ) {
                    // As the node does: a report the leader cannot take ends the session.
                    self.log(|| format!("leader refuses a report of {id}: {e}"));
                    self.close_conn(conn, "progress report refused");
                }
            }
            other => {
                self.log(|| format!("leader: unexpected {other:?} on conn {conn}"));
                self.close_conn(conn, "protocol error");
            }
        }
        Ok(())
    }

    /// The shipping loop: durable records to every welcomed follower, heartbeats when idle.
    fn ship(&mut self) -> anyhow::Result<()> {
        let head = self.leader.log.stats().durable_lsn;
        let head_pos = self.leader.db.meta().position;
        for conn in self.conns.keys().copied().collect::<Vec<_>>() {
            let c = self.conns.get(&conn).expect("open");
            if c.closing_at.is_some_and(|t| t <= self.now) {
                self.close_conn(conn, "the leader closed the session");
                continue;
            }
            let Some(next) = c.next else { continue };
            if next <= head {
                let recs = match self.leader.log.read(next, 4, 1 << 20) {
                    Ok(r) => r,
                    Err(
                        e @ (flotilla_log::LogError::Trimmed { .. }
                        | flotilla_log::LogError::Corrupt { .. }),
                    ) => {
                        let m = LeaderMessage::Refuse {
                            code: RefusalCode::NeedSnapshot,
                            message: e.to_string(),
                        };
                        self.send_to_follower(conn, m.encode());
                        let at = self.now + self.faults.max_delay_ms + 2;
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.next = None;
                            c.closing_at = Some(at);
                        }
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let n = recs.len() as u64;
                // As the node does: a logical follower gets the records without their pages.
                let recs = recs
                    .iter()
                    .map(|r| project_record(r, c.kind))
                    .collect::<Result<Vec<_>, _>>()?;
                let msg = LeaderMessage::encode_records(&recs);
                self.send_to_follower(conn, msg);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.next = Some(next + n);
                    c.last_sent_ms = self.now;
                }
            } else if self.now - c.last_sent_ms >= HEARTBEAT_MS {
                let m = LeaderMessage::Heartbeat {
                    head: Position {
                        epoch: head_pos.epoch,
                        lsn: Lsn(next - 1),
                    },
                    now_ms: self.now,
                };
                self.send_to_follower(conn, m.encode());
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.last_sent_ms = self.now;
                }
            }
        }
        Ok(())
    }

    fn drain_events(&mut self) -> anyhow::Result<()> {
        let mut budget = 100_000;
        while let Some((f, ev)) = self.events.pop_front() {
            budget -= 1;
            ensure!(budget > 0, "event storm");
            if self.trace && !matches!(ev, FollowerEvent::Tick) {
                let id = self.followers[f].id.clone();
                self.log(|| format!("{id} <- {}", short(&ev)));
            }
            let jitter = self.rng.random_range(0..=1000);
            let now = self.follower_now(f);
            let cmds = self.followers[f].session.handle(now, jitter, ev);
            for c in cmds {
                self.execute(f, c)?;
            }
        }
        Ok(())
    }

    fn deliver(&mut self) -> anyhow::Result<()> {
        for m in self.net.due(self.now) {
            match m.dir {
                Dir::ToLeader => {
                    if self.conns.contains_key(&m.conn) {
                        self.leader_receive(m.conn, &m.bytes)?;
                    }
                }
                Dir::ToFollower => {
                    let Some(c) = self.conns.get(&m.conn) else {
                        continue;
                    };
                    let f = c.follower;
                    if self.followers[f].conn != Some(m.conn) {
                        continue;
                    }
                    match LeaderMessage::decode(&m.bytes) {
                        Ok(msg) => self.events.push_back((f, FollowerEvent::Received(msg))),
                        Err(e) => {
                            self.log(|| {
                                format!("{} drops conn {}: {e}", self.followers[f].id, m.conn)
                            });
                            self.close_conn(m.conn, &format!("bad message: {e}"));
                        }
                    }
                }
            }
            self.drain_events()?;
        }
        Ok(())
    }

    fn converged(&self) -> bool {
        let head = self.leader.db.meta().position;
        self.followers
            .iter()
            .all(|f| f.session.applied() == Some(head))
    }
}

fn short(ev: &FollowerEvent) -> String {
    match ev {
        FollowerEvent::Received(LeaderMessage::Records(r)) => format!(
            "records {}..={}",
            r.first().map_or(0, |r| r.lsn.0),
            r.last().map_or(0, |r| r.lsn.0)
        ),
        other => {
            let s = format!("{other:?}");
            s.chars().take(120).collect()
        }
    }
}

/// Runs one seed; `Err` describes the violated invariant.
pub fn run_seed(seed: u64, trace: bool) -> anyhow::Result<Report> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::Builder::new().prefix("flotilla-sim-").tempdir()?;
    let path = dir.path().join("leader.sqlite");
    let log_dir = dir.path().join("leader-log");
    let (mut db, log) = World::open_leader(&path, &log_dir)?;
    let setup = TxnRequest {
        statements: vec![
            (
                "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT)".into(),
                vec![],
            ),
            (
                "CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB)".into(),
                vec![],
            ),
        ],
        idempotency_key: None,
        timeout_ms: 0,
        digest: ContentDigest(1),
    };
    let mut history = HashMap::new();
    history.insert(0, digest_of(&path)?);
    let mut content = HashMap::new();
    content.insert(0, content_digest(&path)?);
    let out = db.commit_batch(&[setup], Epoch(1), &origin(), 0)?;
    let rec = out.record.context("setup")?;
    log.append(&flotilla_wire::encode_record_with_rows(
        &rec,
        Some(&out.encoded_rows),
    ))?;
    log.sync()?;
    history.insert(1, digest_of(&path)?);
    content.insert(1, content_digest(&path)?);
    let faults = Faults {
        drop: rng.random_range(0.0..0.05),
        bit_flip: rng.random_range(0.0..0.02),
        max_delay_ms: rng.random_range(1..40),
    };
    let followers = (0..FOLLOWERS)
        .map(|i| {
            let id = format!("f{i}");
            Follower {
                path: dir.path().join(format!("{id}.sqlite")),
                session: FollowerSession::new(follower_config(&id, kind_of(i)), None, None),
                kind: kind_of(i),
                id,
                db: None,
                conn: None,
                partitioned_until: 0,
                deaf_until: 0,
                apply_in_flight: None,
                disk_full_until: 0,
                clock_skew_ms: 0,
                acked_durable: 0,
                leader_incarnation: None,
            }
        })
        .collect();
    let mut w = World {
        rng,
        trace,
        now: 0,
        net: Network::default(),
        faults,
        leader: Leader {
            path,
            log_dir,
            db,
            log,
            tracker: FollowerTracker::default(),
            history,
            content,
            acked: 1,
            damaged: false,
            image: None,
            generation: 0,
        },
        conns: BTreeMap::new(),
        next_conn: 1,
        followers,
        events: VecDeque::new(),
        apply_ms_max: 0,
        report: Report {
            seed,
            ..Default::default()
        },
        graveyard: Vec::new(),
        _dir: dir,
    };
    w.apply_ms_max = w.rng.random_range(1..60);
    w.log(|| {
        format!(
            "seed {seed}: faults {faults:?}, applies take up to {} ms",
            w.apply_ms_max
        )
    });
    for f in 0..FOLLOWERS {
        let cmds = w.followers[f].session.start(0);
        for c in cmds {
            w.execute(f, c)?;
        }
    }
    w.drain_events()?;
    let mut ops = 0u64;
    let mut last_tick = 0;
    // Faults for the first 40 simulated seconds, then a calm phase that must converge.
    let calm_at = 40_000;
    while w.now < MAX_SIM_MS {
        w.now += w.rng.random_range(1..=3);
        if w.now >= calm_at && w.faults.drop > 0.0 {
            w.log(|| "faults stop".into());
            w.faults = Faults::NONE;
            for f in w.followers.iter_mut() {
                f.partitioned_until = 0;
                f.deaf_until = 0;
                f.disk_full_until = 0;
            }
        }
        let faulty = w.now < calm_at;
        if (ops as usize) < MAX_OPS && w.rng.random_bool(0.02) {
            ops += 1;
            w.client_op(ops)?;
        }
        if faulty && !w.leader.damaged && w.rng.random_bool(0.00005) {
            w.damage_log_at_rest()?;
        }
        if faulty && !w.leader.damaged && w.rng.random_bool(0.0002) {
            w.power_loss_leader()?;
        }
        if faulty {
            for f in 0..FOLLOWERS {
                if w.rng.random_bool(0.0005) {
                    w.log(|| format!("f{f} crashes"));
                    w.crash_follower(f)?;
                }
                if w.rng.random_bool(0.0003) {
                    let until = w.now + w.rng.random_range(500..5_000);
                    w.log(|| format!("f{f} partitioned until {until}"));
                    w.followers[f].partitioned_until = until;
                    if let Some(conn) = w.followers[f].conn {
                        w.close_conn(conn, "partitioned");
                    }
                }
                if w.rng.random_bool(0.0002) {
                    let until = w.now + w.rng.random_range(1_000..15_000);
                    w.log(|| format!("f{f} cannot hear the leader until {until}"));
                    w.followers[f].deaf_until = until;
                }
                if w.rng.random_bool(0.0002) {
                    let until = w.now + w.rng.random_range(100..8_000);
                    w.log(|| format!("f{f}'s disk is full until {until}"));
                    w.followers[f].disk_full_until = until;
                    w.report.disk_full += 1;
                }
                if w.rng.random_bool(0.0001) {
                    // The session runs on the monotonic clock, which never steps back, but jumps
                    // ahead when a paused VM or a stopped process resumes.
                    let jump = w.rng.random_range(100..60_000);
                    w.log(|| format!("f{f}'s clock jumps {jump} ms ahead"));
                    w.followers[f].clock_skew_ms += jump;
                    w.report.clock_jumps += 1;
                }
            }
        }
        w.finish_applies()?;
        w.drain_events()?;
        if w.rng.random_bool(0.01) {
            let f = w.rng.random_range(0..FOLLOWERS);
            w.read_with_token(f)?;
        }
        w.deliver()?;
        w.ship()?;
        if w.now - last_tick >= 100 {
            last_tick = w.now;
            for f in 0..FOLLOWERS {
                w.events.push_back((f, FollowerEvent::Tick));
            }
        }
        w.drain_events()?;
        if !faulty && ops as usize >= MAX_OPS && w.converged() {
            break;
        }
    }
    if !w.converged() {
        let states: Vec<String> = w
            .followers
            .iter()
            .map(|f| {
                format!(
                    "{} at {:?} ({}, {:?})",
                    f.id,
                    f.session.applied(),
                    f.session.phase().as_str(),
                    f.session.last_error()
                )
            })
            .collect();
        bail!(
            "followers did not converge to {} within {} simulated ms: {}",
            w.leader.db.meta().position,
            MAX_SIM_MS,
            states.join("; ")
        );
    }
    // The oracles compare each replica with the leader; the leader itself must be a sound
    // database (a corrupt one would be faithfully copied).
    let check: String =
        open_reader(&w.leader.path)?.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    ensure!(check == "ok", "the leader's database is damaged: {check}");
    for f in &w.followers {
        let same = match f.kind {
            LogKind::Physical => digest_of(&f.path)? == digest_of(&w.leader.path)?,
            LogKind::Logical => content_digest(&f.path)? == content_digest(&w.leader.path)?,
        };
        ensure!(same, "{} differs from the leader at the end", f.id);
    }
    let r = &mut w.report;
    r.sim_ms = w.now;
    r.messages = w.net.sent;
    r.dropped = w.net.dropped;
    r.flipped = w.net.flipped;
    Ok(w.report)
}
