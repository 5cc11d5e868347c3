//! Deterministic simulation of multi-leader data centres (`cargo sim --multi-dc`).
//!
//! Three to five data centres, each a real `LeaderDb` on a temporary file: client transactions
//! stamped by the real store, merges by the real `commit_merge` (the `flotilla-merge` rules,
//! unique clashes, conflicts table). What the simulator supplies is what a link does in the
//! node (`flotilla-node/src/exchange/link.rs`): read a peer's log in order, pass by what is not
//! to be merged, wait while a transaction's dependencies have not arrived. One seed drives the
//! topology (all-to-all, star, ring), the workload, links cut and healed, records delivered
//! again (a link that reconnects reads from where it last persisted), and crashes — some between
//! a commit and its log append, recovered from the WAL with their stamp.
//!
//! Invariants: after the faults stop and every link has read everything, every data centre
//! holds the same rows and the same version vector; the counter row holds exactly the sum of
//! every committed increment; no conflict is recorded twice; a record delivered again changes
//! nothing.

use anyhow::{bail, Context};
use flotilla_store::{
    DbSettings, LeaderDb, MergeApplyError, MergeOutcome, RequestOutcome, TxnRequest,
};
use flotilla_types::{
    Chain, ContentDigest, Epoch, ExchangeStamp, Lsn, NodeId, OriginName, Position, RowPayload,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MultiDcReport {
    pub transactions: u64,
    pub merges: u64,
    pub redeliveries: u64,
    pub waits: u64,
    pub crashes: u64,
    pub lost_appends: u64,
    pub cuts: u64,
    pub conflicts: u64,
}

impl MultiDcReport {
    pub fn add(&mut self, o: &MultiDcReport) {
        self.transactions += o.transactions;
        self.merges += o.merges;
        self.redeliveries += o.redeliveries;
        self.waits += o.waits;
        self.crashes += o.crashes;
        self.lost_appends += o.lost_appends;
        self.cuts += o.cuts;
        self.conflicts += o.conflicts;
    }
}

impl fmt::Display for MultiDcReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} transactions, {} merges, {} records delivered again, {} waits for dependencies, \
             {} crashes ({} between commit and log append), {} links cut, {} conflicts recorded",
            self.transactions,
            self.merges,
            self.redeliveries,
            self.waits,
            self.crashes,
            self.lost_appends,
            self.cuts,
            self.conflicts
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    AllToAll,
    Star,
    Ring,
}

/// One record of a data centre's log, as a link reads it.
#[derive(Clone)]
struct Rec {
    at: Position,
    chain: Chain,
    stamp: Option<ExchangeStamp>,
    /// The changes as made at their origin (what a link merges).
    changes: Option<RowPayload>,
}

struct Dc {
    name: OriginName,
    node: NodeId,
    path: std::path::PathBuf,
    db: LeaderDb,
    log: Vec<Rec>,
    now_us: u64,
}

struct Link {
    to: usize,
    from: usize,
    /// Records of `from`'s log read (and merged or passed by).
    read: usize,
    up: bool,
}

const SETUP: &str = "CREATE TABLE t (id TEXT PRIMARY KEY, name TEXT, n INTEGER NOT NULL DEFAULT 0, email TEXT UNIQUE)";

fn req(sql: &[String]) -> TxnRequest {
    TxnRequest {
        statements: sql
            .iter()
            .map(|s| (s.clone(), flotilla_store::Params::default()))
            .collect(),
        idempotency_key: None,
        digest: ContentDigest(1),
        timeout_ms: 0,
    }
}

fn record_of(out: &flotilla_store::CommitOutcome) -> anyhow::Result<Rec> {
    let r = out.record.as_ref().context("a commit without its record")?;
    let changes = match &r.exchange {
        Some(s) => Some(match &s.original {
            Some(o) => o.clone(),
            None => flotilla_wire::decode_rows(&out.encoded_rows)?,
        }),
        None => None,
    };
    Ok(Rec {
        at: r.position(),
        chain: r.chain,
        stamp: r.exchange.clone(),
        changes,
    })
}

fn rows(path: &std::path::Path, sql: &str) -> anyhow::Result<Vec<String>> {
    let c = rusqlite::Connection::open(path)?;
    let mut s = c.prepare(sql)?;
    let n = s.column_count();
    let out = s
        .query_map([], |r| {
            Ok((0..n)
                .map(|i| match r.get_ref(i) {
                    Ok(rusqlite::types::ValueRef::Text(t)) => {
                        String::from_utf8_lossy(t).into_owned()
                    }
                    Ok(other) => format!("{other:?}"),
                    Err(e) => e.to_string(),
                })
                .collect::<Vec<_>>()
                .join("|"))
        })?
        .collect::<Result<_, _>>()?;
    Ok(out)
}

/// Runs one seed; `Err` names the invariant that broke.
pub fn run_multi_dc_seed(seed: u64, trace: bool) -> anyhow::Result<MultiDcReport> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x006d_756c_7469_6463);
    let dir = tempfile::tempdir()?;
    let count = rng.random_range(3..=5usize);
    let topology = match rng.random_range(0..3) {
        0 => Topology::AllToAll,
        1 => Topology::Star,
        _ => Topology::Ring,
    };
    let mut report = MultiDcReport::default();
    // Abandoned connections of crashed data centres, released when the seed ends.
    let mut graveyard: Vec<LeaderDb> = Vec::new();
    let mut dcs: Vec<Dc> = Vec::new();
    for i in 0..count {
        let name = OriginName::new(&format!("dc{i}"))?;
        let node = NodeId::new(&format!("dc{i}-leader"))?;
        let path = dir.path().join(format!("dc{i}.db"));
        let (mut db, _) = LeaderDb::open(&path, &DbSettings::default(), || "ab".repeat(16))?;
        db.uncaptured(Lsn(0), &node)?;
        let now_us = 1_000_000_000 + rng.random_range(0..5_000_000);
        let mut log = Vec::new();
        if let Some(out) = db.enable_multi_leader(&name, "sim", 60_000, Epoch(1), &node, now_us)? {
            log.push(record_of(&out)?);
        }
        dcs.push(Dc {
            name,
            node,
            path,
            db,
            log,
            now_us,
        });
    }
    let mut links: Vec<Link> = Vec::new();
    for to in 0..count {
        for from in 0..count {
            let linked = match topology {
                Topology::AllToAll => to != from,
                Topology::Star => to != from && (to == 0 || from == 0),
                Topology::Ring => from == (to + count - 1) % count,
            };
            if linked {
                links.push(Link {
                    to,
                    from,
                    read: 0,
                    up: true,
                });
            }
        }
    }
    let forwards = topology != Topology::AllToAll;
    if trace {
        println!("seed {seed}: {count} data centres, {topology:?}");
    }

    // The table, made in dc0 and merged everywhere before the workload.
    commit(&mut dcs[0], &[SETUP.to_string()], &mut report)?;
    commit(
        &mut dcs[0],
        &["INSERT INTO t (id, name, n) VALUES ('ctr', 'counter', 100)".into()],
        &mut report,
    )?;
    let (node0, now0) = (dcs[0].node.clone(), dcs[0].now_us);
    let out = dcs[0]
        .db
        .set_policy("t", Some("n"), "counter", None, Epoch(1), &node0, now0)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    dcs[0].log.push(record_of(&out)?);
    settle(&mut dcs, &mut links, forwards, &mut report, trace)?;

    let steps = rng.random_range(60..160);
    for step in 0..steps {
        match rng.random_range(0..100) {
            // A client transaction.
            0..=39 => {
                let i = rng.random_range(0..count);
                let dc = &mut dcs[i];
                dc.now_us += rng.random_range(100..20_000);
                let key = format!("k{}", rng.random_range(0..6));
                let mut sql = Vec::new();
                for _ in 0..rng.random_range(1..=3) {
                    sql.push(match rng.random_range(0..8) {
                        0 => format!(
                            "INSERT INTO t (id, name, email) VALUES ('{key}', 'n{step}', 'e{}') ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                            rng.random_range(0..4)
                        ),
                        1 => format!("UPDATE t SET name = 'n{step}-{i}' WHERE id = '{key}'"),
                        2 => format!("UPDATE t SET email = 'e{}' WHERE id = '{key}'", rng.random_range(0..4)),
                        3 => format!("DELETE FROM t WHERE id = '{key}'"),
                        // A row moved to another key (the merge deletes the old one).
                        4 => format!(
                            "UPDATE OR IGNORE t SET id = 'k{}' WHERE id = '{key}'",
                            rng.random_range(0..6)
                        ),
                        _ => {
                            let d = rng.random_range(-3..=5);
                            format!("UPDATE t SET n = n + {d} WHERE id = 'ctr'")
                        }
                    });
                }
                // A lost append: committed, then the process dies before its log holds it.
                let lose = rng.random_bool(0.03);
                commit_maybe_lost(dc, &sql, lose, &mut report)?;
                if lose {
                    crash(dc, &mut graveyard, &mut report, trace)?;
                }
            }
            // A link reads some records.
            40..=84 => {
                let l = rng.random_range(0..links.len());
                let n = rng.random_range(1..=4);
                for _ in 0..n {
                    if !step_link(&mut dcs, &mut links[l], forwards, &mut report, trace, false)? {
                        break;
                    }
                }
                // Now and then a link reconnects from further back (as after a lost
                // acknowledgement): what it reads again must change nothing.
                if rng.random_bool(0.1) && links[l].read > 0 {
                    let back = rng.random_range(1..=links[l].read.min(5));
                    links[l].read -= back;
                    report.redeliveries += back as u64;
                }
            }
            // A link is cut or healed.
            85..=93 => {
                let l = rng.random_range(0..links.len());
                links[l].up = !links[l].up;
                if !links[l].up {
                    report.cuts += 1;
                }
            }
            // A data centre's leader crashes and restarts.
            _ => {
                let i = rng.random_range(0..count);
                crash(&mut dcs[i], &mut graveyard, &mut report, trace)?;
                // Its links start again from what its database says it merged.
                for l in links.iter_mut().filter(|l| l.to == i) {
                    let (p, _) = flotilla_store::link_position(
                        &rusqlite::Connection::open(&dcs[i].path)?,
                        &dcs[l.from].name,
                    )?;
                    let back = dcs[l.from]
                        .log
                        .iter()
                        .position(|r| r.at.lsn > p.lsn)
                        .unwrap_or(dcs[l.from].log.len());
                    if back < l.read {
                        report.redeliveries += (l.read - back) as u64;
                    }
                    l.read = back.min(l.read);
                }
            }
        }
    }
    for l in links.iter_mut() {
        l.up = true;
    }
    settle(&mut dcs, &mut links, forwards, &mut report, trace)?;

    // Convergence.
    let q = "SELECT id, name, n, email FROM t ORDER BY id";
    let first = rows(&dcs[0].path, q)?;
    for dc in &dcs[1..] {
        let theirs = rows(&dc.path, q)?;
        if theirs != first {
            bail!(
                "{} holds {theirs:?} but {} holds {first:?}",
                dc.name,
                dcs[0].name
            );
        }
    }
    let vv0 = dcs[0].db.version_vector()?;
    for dc in &dcs[1..] {
        let vv = dc.db.version_vector()?;
        if vv != vv0 {
            bail!(
                "{}'s version vector {vv} differs from {}'s {vv0}",
                dc.name,
                dcs[0].name
            );
        }
    }
    // The counter: 100 plus every committed increment, counted from the logs (each committed
    // transaction is in its origin's log once, a lost append's recovered from the WAL).
    let mut sum: i64 = 100;
    for dc in &dcs {
        for r in &dc.log {
            let (Some(s), Some(c)) = (&r.stamp, &r.changes) else {
                continue;
            };
            if s.origin != dc.name {
                continue;
            }
            for it in &c.items {
                if let flotilla_types::RowItem::Change(ch) = it {
                    if c.shape(ch).name == "t" {
                        if let (Some(b), Some(a)) = (&ch.before, &ch.after) {
                            if a[0] == flotilla_types::SqlValue::Text("ctr".into()) {
                                if let (
                                    flotilla_types::SqlValue::Integer(x),
                                    flotilla_types::SqlValue::Integer(y),
                                ) = (&b[2], &a[2])
                                {
                                    sum += y - x;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    for dc in &dcs {
        let c = rusqlite::Connection::open(&dc.path)?;
        let n: i64 = c.query_row("SELECT n FROM t WHERE id = 'ctr'", [], |r| r.get(0))?;
        if n != sum {
            bail!(
                "{}'s counter holds {n}, but its increments add up to {sum}",
                dc.name
            );
        }
    }
    // Every conflict once: the same two writes never make two rows.
    for dc in &dcs {
        let c = rusqlite::Connection::open(&dc.path)?;
        let dupes: i64 = c.query_row(
            "SELECT count(*) FROM (SELECT tbl, row_key, col, local_origin, local_lsn, remote_origin, remote_lsn, count(*) AS k \
             FROM flotilla_conflicts GROUP BY 1, 2, 3, 4, 5, 6, 7, local_value, remote_value HAVING k > 1)",
            [],
            |r| r.get(0),
        )?;
        if dupes > 0 {
            let which = rows(
                &dc.path,
                "SELECT tbl, row_key, col, local_origin, local_lsn, remote_origin, remote_lsn, policy, count(*) AS k \
                 FROM flotilla_conflicts GROUP BY 1, 2, 3, 4, 5, 6, 7, local_value, remote_value HAVING k > 1",
            )?;
            bail!(
                "{} recorded {dupes} conflicts more than once: {which:?}",
                dc.name
            );
        }
        report.conflicts += c.query_row("SELECT count(*) FROM flotilla_conflicts", [], |r| {
            r.get::<_, i64>(0)
        })? as u64;
    }
    drop(graveyard);
    Ok(report)
}

fn commit(dc: &mut Dc, sql: &[String], report: &mut MultiDcReport) -> anyhow::Result<bool> {
    Ok(commit_maybe_lost(dc, sql, false, report)?.unwrap_or(false))
}

/// Commits a client transaction; `lose`: its record does not reach the log (a crash follows).
/// `Some(true)` when it committed.
fn commit_maybe_lost(
    dc: &mut Dc,
    sql: &[String],
    lose: bool,
    report: &mut MultiDcReport,
) -> anyhow::Result<Option<bool>> {
    dc.now_us += 1;
    let out = dc
        .db
        .commit_batch(&[req(sql)], Epoch(1), &dc.node.clone(), dc.now_us)?;
    match &out.outcomes[0] {
        RequestOutcome::Committed(_) if out.record.is_some() => {
            report.transactions += 1;
            if !lose {
                dc.log.push(record_of(&out)?);
            }
            Ok(Some(true))
        }
        RequestOutcome::Committed(_) => Ok(Some(false)),
        // A unique value held here, and such: the client's error, nothing committed.
        RequestOutcome::Failed { .. } => Ok(Some(false)),
        other => bail!("an unexpected outcome {other:?}"),
    }
}

/// The process dies (its connection abandoned, as `kill -9` leaves it) and starts again: the
/// commit its log lacks, if any, comes back from the WAL with its stamp.
fn crash(
    dc: &mut Dc,
    graveyard: &mut Vec<LeaderDb>,
    report: &mut MultiDcReport,
    trace: bool,
) -> anyhow::Result<()> {
    report.crashes += 1;
    let (db, _) = LeaderDb::open(&dc.path, &DbSettings::default(), || {
        unreachable!("it exists")
    })?;
    let old = std::mem::replace(&mut dc.db, db);
    graveyard.push(old);
    let logged = dc.log.last().map_or(Lsn(0), |r| r.at.lsn);
    let missing = dc.db.uncaptured(logged, &dc.node)?;
    for (record, rows) in missing {
        report.lost_appends += 1;
        if trace {
            println!("  {} recovered lsn {} from the WAL", dc.name, record.lsn);
        }
        let out = flotilla_store::CommitOutcome {
            outcomes: Vec::new(),
            record: Some(record),
            encoded_rows: rows,
        };
        let rec = record_of(&out)?;
        if rec.stamp.is_none() {
            bail!(
                "{}'s recovered commit at {} lost its exchange stamp",
                dc.name,
                rec.at
            );
        }
        dc.log.push(rec);
    }
    if dc
        .db
        .enable_multi_leader(&dc.name, "sim", 60_000, Epoch(1), &dc.node, dc.now_us)?
        .is_some()
    {
        bail!(
            "{} made its multi-leader tables again after a restart",
            dc.name
        );
    }
    Ok(())
}

/// Reads one record over a link (when it is up). `false` when there is nothing to do (down,
/// read everything, or the next transaction waits for its dependencies).
fn step_link(
    dcs: &mut [Dc],
    link: &mut Link,
    forwards: bool,
    report: &mut MultiDcReport,
    trace: bool,
    _final: bool,
) -> anyhow::Result<bool> {
    if !link.up || link.read >= dcs[link.from].log.len() {
        return Ok(false);
    }
    let rec = dcs[link.from].log[link.read].clone();
    let from_name = dcs[link.from].name.clone();
    let to = &mut dcs[link.to];
    let (Some(stamp), Some(changes)) = (&rec.stamp, &rec.changes) else {
        link.read += 1;
        return Ok(true);
    };
    if stamp.origin == to.name || (stamp.origin != from_name && !forwards) {
        link.read += 1;
        return Ok(true);
    }
    let before = rows(&to.path, "SELECT * FROM t ORDER BY id").unwrap_or_default();
    let was_merged = to
        .db
        .version_vector()?
        .covers(&stamp.origin, stamp.origin_lsn);
    to.now_us += 500;
    match to.db.commit_merge(
        stamp,
        changes,
        &from_name,
        (rec.at, rec.chain),
        Epoch(1),
        &to.node.clone(),
        to.now_us,
    ) {
        Ok(MergeOutcome::Committed { commit, .. }) => {
            if was_merged {
                bail!(
                    "{} merged {}'s transaction {} a second time",
                    to.name,
                    stamp.origin,
                    stamp.origin_lsn
                );
            }
            report.merges += 1;
            to.log.push(record_of(&commit)?);
            link.read += 1;
            if trace {
                println!(
                    "  {} merged {}/{} via {from_name}",
                    to.name, stamp.origin, stamp.origin_lsn
                );
            }
            Ok(true)
        }
        Ok(MergeOutcome::Duplicate) => {
            let after = rows(&to.path, "SELECT * FROM t ORDER BY id").unwrap_or_default();
            if after != before {
                bail!("a transaction delivered again changed {}", to.name);
            }
            link.read += 1;
            Ok(true)
        }
        Err(MergeApplyError::NotReady(_)) => {
            report.waits += 1;
            Ok(false)
        }
        Err(e) => bail!(
            "{} could not merge {}/{}: {e}",
            to.name,
            stamp.origin,
            stamp.origin_lsn
        ),
    }
}

/// Every link reads everything it can until nothing moves (bounded).
fn settle(
    dcs: &mut [Dc],
    links: &mut [Link],
    forwards: bool,
    report: &mut MultiDcReport,
    trace: bool,
) -> anyhow::Result<()> {
    let bound = 20 + 4 * links.len() * dcs.iter().map(|d| d.log.len()).sum::<usize>();
    for _ in 0..bound {
        let mut moved = false;
        for l in links.iter_mut() {
            while step_link(dcs, l, forwards, report, trace, true)? {
                moved = true;
            }
        }
        if !moved {
            return Ok(());
        }
    }
    bail!("the links did not settle")
}
