use crate::network::{Dir, Faults, Network, Sent};
use crate::replica::{content_digest, content_digest_of};
use anyhow::{bail, ensure, Context};
use flotilla_core::{
    FollowerCommand, FollowerConfig, FollowerEvent, FollowerSession, FollowerTracker,
};
use flotilla_log::{Log, LogConfig};
use flotilla_store::snapshot::{stream, SnapshotReceiver};
use flotilla_store::{
    install_snapshot, open_reader, page_digest, recover_leader, snapshot_target, DbSettings,
    LeaderDb, Replica, ReplicaSettings, TxnRequest,
};
use flotilla_types::{ContentDigest, Epoch, LogKind, LogRecord, Lsn, NodeId};
use flotilla_wire::{FollowerMessage, LeaderMessage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::types::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;

const FOLLOWERS: usize = 2;
const MAX_OPS: usize = 120;
const MAX_SIM_MS: u64 = 60_000;
/// The node's retention loop runs every 5 s; here more often, so that it meets more states.
const RETENTION_EVERY_MS: u64 = 1_000;
/// The tag of follower events that come from no connection (applies, bootstraps, timers).
const LOCAL: u64 = 0;
/// The simulated leader's incarnation (it never changes: the simulated leader's data directory
/// is never copied).
const LEADER_INCARNATION: &str = "sim-leader";

mod disk_image;
mod faults;
mod follower_host;
mod leader_host;
mod report;

use leader_host::LeaderConn;

pub use report::Report;

/// The leader's database files (suffix of the name, bytes) as they were after the commit at
/// `.0`.
type LeaderImage = (u64, disk_image::Files);

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
    /// Where the leader persists its follower list (reloaded when it restarts).
    followers_file: PathBuf,
    /// Each log segment's simulated modification time (first lsn → (last lsn seen, ms)).
    segment_mtimes: BTreeMap<u64, (u64, u64)>,
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
    /// An apply handed to the host and not finished: it is committed at `.0` (without an fsync,
    /// as the node's apply thread does). A crash before then loses it.
    apply_in_flight: Option<(u64, Vec<LogRecord>)>,
    /// A flush handed to the host and not finished: (done at, its number, the files as they
    /// were when it started — what it makes durable).
    flush_in_flight: Option<(u64, u64, disk_image::Files)>,
    /// The database files as a power loss would leave them: as of the last flush that
    /// finished (or the last open, which flushes, or bootstrap, which installs flushed files).
    durable_image: Option<disk_image::Files>,
    /// Bumped at each power loss: the restored files get a new name (see `disk_image`).
    generation: u32,
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
    /// Events for follower sessions: (follower, connection tag or [`LOCAL`], event).
    events: VecDeque<(usize, u64, FollowerEvent)>,
    /// Connections closed while messages to the follower were still in flight: those arrive
    /// (as a transport's last reports do in the node) tagged with their old connection.
    closed_conns: HashMap<u64, (usize, u64)>,
    /// The leader's shipping limits and retention caps (drawn per seed).
    shipping: flotilla_core::ShippingConfig,
    retention: flotilla_core::retention::RetentionPolicy,
    /// An apply takes up to this long (drawn per seed).
    apply_ms_max: u64,
    /// The followers' apply-batch bounds (records, bytes), drawn per seed small enough that
    /// they bind: a physical follower must still never end a batch inside a message.
    apply_batch: (usize, usize),
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

fn follower_config(id: &str, kind: LogKind, apply_batch: (usize, usize)) -> FollowerConfig {
    let mut c = FollowerConfig::new(id, &format!("sim://{id}"));
    c.log_kind = kind;
    (c.max_batch_records, c.max_batch_bytes) = apply_batch;
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
            statements: statements.into_iter().map(|(s, p)| (s, p.into())).collect(),
            idempotency_key: None,
            timeout_ms: 0,
        }
    }

    /// One client transaction on the leader; sometimes the leader crashes right after the
    /// SQLite commit, before the log append (the request is then not acknowledged).
    fn client_op(&mut self, i: u64) -> anyhow::Result<()> {
        // Group commit: sometimes several clients' requests wait and go in one transaction, as
        // the node's writer gathers them.
        let group = if self.rng.random_bool(0.3) {
            self.rng.random_range(2..5)
        } else {
            1
        };
        let requests: Vec<TxnRequest> =
            (0..group).map(|j| self.random_request(i * 8 + j)).collect();
        self.log(|| {
            let first = requests[0].statements.first().map_or("", |s| s.0.as_str());
            format!(
                "client: {} request(s), the first's first statement: {first}",
                requests.len()
            )
        });
        if group > 1 {
            self.report.grouped_requests += group;
        }
        if self.rng.random_bool(0.03) {
            // A Raft entry as a cluster member's log holds one (an epoch start): no
            // transaction; followers are not sent it, and the next commit links across it.
            let c = flotilla_wire::ConsensusRecord {
                epoch: Epoch(1),
                lsn: Lsn(self.leader.log.stats().last_lsn + 1),
                chain: self.leader.db.meta().chain,
                kind: flotilla_wire::ConsensusKind::EpochStart,
                data: Vec::new(),
                context: Vec::new(),
            };
            self.leader
                .log
                .append(&flotilla_wire::encode_consensus_record(&c))?;
            self.report.consensus_records += 1;
        }
        let lsn = Lsn(self
            .leader
            .log
            .stats()
            .last_lsn
            .max(self.leader.db.meta().position.lsn.0)
            + 1);
        let out =
            self.leader
                .db
                .commit_batch_at(&requests, Epoch(1), lsn, &origin(), self.now * 1000)?;
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
        self.head_moved()
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
        // The log may end in Raft entries after the database's last transaction, never in a
        // transaction the database lacks.
        let last = self.leader.log.stats().last_lsn;
        ensure!(
            last >= head,
            "the log ends at {last}, before the database's {head}"
        );
        if last > head {
            let tail = self.leader.log.read(head + 1, usize::MAX, usize::MAX)?;
            ensure!(
                tail.iter().all(|r| flotilla_wire::is_consensus_record(r)),
                "log and database disagree after recovery: the log holds transactions after {head}"
            );
        }
        ensure!(
            digest_of(&self.leader.path)? == self.leader.history[&head],
            "the recovered leader's database differs from its history at lsn {head}"
        );
        self.leader.acked = head;
        self.leader.image = None;
        self.abandon_conns();
        // The restarted process knows its followers from the list it saved.
        self.leader.tracker = self.load_followers()?;
        Ok(())
    }

    /// Puts a message on the simulated network; the caller closes a connection that broke.
    fn send(&mut self, conn: u64, dir: Dir, msg: Vec<u8>) -> Sent {
        if dir == Dir::ToFollower {
            let f = self.conns.get(&conn).map(|c| c.follower);
            if f.is_some_and(|f| self.now < self.followers[f].deaf_until) {
                self.report.blackholed += 1;
                return Sent::Queued;
            }
        }
        let faults = self.faults;
        let sent = self
            .net
            .send(&mut self.rng, faults, self.now, conn, dir, msg);
        if sent == Sent::ConnectionBroke {
            self.log(|| format!("conn {conn} breaks"));
        }
        sent
    }

    fn drain_events(&mut self) -> anyhow::Result<()> {
        let mut budget = 100_000;
        while let Some((f, tag, ev)) = self.events.pop_front() {
            budget -= 1;
            ensure!(budget > 0, "event storm");
            if self.trace && !matches!(ev, FollowerEvent::Tick) {
                let id = self.followers[f].id.clone();
                self.log(|| format!("{id} <- {}", short(&ev)));
            }
            let jitter = self.rng.random_range(0..=1000);
            let now = self.follower_now(f);
            let session = &mut self.followers[f].session;
            let cmds = if tag == LOCAL {
                session.handle(now, jitter, ev)
            } else {
                session.handle_connection_event(now, jitter, tag, ev)
            };
            // Flow control: a follower never holds more records waiting to be applied than the
            // leader's window lets be in flight.
            let pending = self.followers[f].session.pending_records() as u64;
            ensure!(
                pending <= self.shipping.window_records,
                "{} holds {pending} records not yet applied, beyond the leader's window of {}",
                self.followers[f].id,
                self.shipping.window_records
            );
            self.report.peak_pending = self.report.peak_pending.max(pending);
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
                        self.leader_receive(m.conn, m.bytes)?;
                    }
                }
                Dir::ToFollower => {
                    let (f, tag) = match self.conns.get(&m.conn) {
                        Some(c) => (c.follower, c.tag),
                        None => match self.closed_conns.get(&m.conn) {
                            Some(&late) => late,
                            None => continue,
                        },
                    };
                    match LeaderMessage::decode(&m.bytes) {
                        Ok(msg) => self
                            .events
                            .push_back((f, tag, FollowerEvent::Received(msg))),
                        Err(_) if !self.conns.contains_key(&m.conn) => {}
                        Err(e) => {
                            self.log(|| {
                                format!("{} drops conn {}: {e}", self.followers[f].id, m.conn)
                            });
                            self.close_conn(m.conn, &format!("bad message: {e}"))?;
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
                vec![].into(),
            ),
            (
                "CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB)".into(),
                vec![].into(),
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
        stall: rng.random_range(0.0..0.01),
    };
    let shipping = leader_host::draw_shipping(&mut rng);
    // From a stream of its own, so that adding it left every other draw of a seed as it was.
    let apply_batch = {
        let mut own = ChaCha8Rng::seed_from_u64(seed ^ 0xa991_7b47_c4e5_0001);
        (own.random_range(1..5), own.random_range(1_000..100_000))
    };
    let retention = leader_host::draw_retention(&mut rng);
    let followers = (0..FOLLOWERS)
        .map(|i| {
            let id = format!("f{i}");
            Follower {
                path: dir.path().join(format!("{id}.sqlite")),
                session: FollowerSession::new(
                    follower_config(&id, kind_of(i), apply_batch),
                    None,
                    None,
                ),
                kind: kind_of(i),
                id,
                db: None,
                conn: None,
                partitioned_until: 0,
                deaf_until: 0,
                apply_in_flight: None,
                flush_in_flight: None,
                durable_image: None,
                generation: 0,
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
            followers_file: dir.path().join("followers.json"),
            segment_mtimes: BTreeMap::new(),
        },
        conns: BTreeMap::new(),
        next_conn: 1,
        followers,
        events: VecDeque::new(),
        closed_conns: HashMap::new(),
        shipping,
        retention,
        apply_ms_max: 0,
        apply_batch,
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
    let mut last_retention = 0;
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
                    let power_loss = w.rng.random_bool(0.5);
                    w.log(|| {
                        format!(
                            "f{f} crashes{}",
                            if power_loss { " (power loss)" } else { "" }
                        )
                    });
                    w.crash_follower(f, power_loss)?;
                }
                if w.rng.random_bool(0.0003) {
                    let until = w.now + w.rng.random_range(500..5_000);
                    w.log(|| format!("f{f} partitioned until {until}"));
                    w.followers[f].partitioned_until = until;
                    if let Some(conn) = w.followers[f].conn {
                        w.close_conn(conn, "partitioned")?;
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
        w.finish_flushes()?;
        w.drain_events()?;
        if w.rng.random_bool(0.01) {
            let f = w.rng.random_range(0..FOLLOWERS);
            w.read_with_token(f)?;
        }
        w.deliver()?;
        w.tick_sessions()?;
        if w.now - last_retention >= RETENTION_EVERY_MS {
            last_retention = w.now;
            w.run_retention()?;
        }
        if w.now - last_tick >= 100 {
            last_tick = w.now;
            for f in 0..FOLLOWERS {
                w.events.push_back((f, LOCAL, FollowerEvent::Tick));
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
    w.report.stale_events += w
        .followers
        .iter()
        .map(|f| f.session.stale_events())
        .sum::<u64>();
    let r = &mut w.report;
    r.sim_ms = w.now;
    r.messages = w.net.sent;
    r.dropped = w.net.dropped;
    r.flipped = w.net.flipped;
    r.stalled = w.net.stalled;
    Ok(w.report)
}
