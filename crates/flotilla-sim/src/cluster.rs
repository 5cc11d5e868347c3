//! Deterministic simulation of a cluster of voters: failover under faults.
//!
//! The consensus code under test is the product's: `flotilla_core::consensus::Consensus` (raft-rs
//! inside), its envelope codec and its durability acknowledgements, driven through its events and
//! commands exactly as the node drives it. What the simulator supplies is the host: a disk per
//! member (what `Persist` made durable survives a crash, nothing else of the machine does), the
//! network, the clock, clients, and the database as a model — the sequence of transactions each
//! member executed or applied, which is what a SQLite file holds. The leader executes a
//! transaction before proposing it (as Flotilla's writer does); a member whose log is cut below
//! what its database holds reverts its database to the cut (the WAL truncation of the design).
//!
//! One seed drives everything: message loss, delay (so reordering) and duplication; partitions
//! (symmetric, one-way, flapping, a leader cut from some voters only); crashes of any member;
//! clock jumps (a member's timer runs fast or stalls). At the end the faults stop, the cluster
//! heals, and the history of every client operation is checked:
//! - at most one member acknowledges writes per epoch;
//! - every acknowledged `semi-sync` or `quorum` write is in the final history, at its position;
//! - no client read saw a transaction the final history does not hold;
//! - an acknowledged `async` write missing from the final history is exactly one that a member
//!   reported as divergent (saved aside), and nothing reported divergent is in the history;
//! - every member's database is a prefix of one history, and converges to all of it.

use anyhow::{bail, ensure};
use bytes::Bytes;
use flotilla_core::consensus::{
    Consensus, ConsensusCommand, ConsensusConfig, ConsensusEvent, EntryKind, LogEntry, Recovered,
    Role,
};
use flotilla_types::{Durability, Position};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};

/// Deliberate bugs of the host, to prove the checker catches them (`--inject-bug`).
pub static FORGET_VOTE: AtomicBool = AtomicBool::new(false);
pub static ACK_QUORUM_ON_PERSIST: AtomicBool = AtomicBool::new(false);
pub static READ_PAST_COMMIT: AtomicBool = AtomicBool::new(false);

const TICK_MS: u64 = 50;
const RUN_MS: u64 = 40_000;
const HEAL_MS: u64 = 20_000;
const OP_TIMEOUT_MS: u64 = 3_000;

/// What one cluster seed did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClusterReport {
    pub seed: u64,
    pub members: u64,
    pub writes: u64,
    pub acked: u64,
    pub failed: u64,
    pub unknown: u64,
    pub reads: u64,
    pub elections: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub clock_jumps: u64,
    pub divergent: u64,
    pub reverts: u64,
    pub messages: u64,
    pub lost: u64,
}

impl ClusterReport {
    pub fn add(&mut self, o: &ClusterReport) {
        self.members += o.members;
        self.writes += o.writes;
        self.acked += o.acked;
        self.failed += o.failed;
        self.unknown += o.unknown;
        self.reads += o.reads;
        self.elections += o.elections;
        self.crashes += o.crashes;
        self.partitions += o.partitions;
        self.clock_jumps += o.clock_jumps;
        self.divergent += o.divergent;
        self.reverts += o.reverts;
        self.messages += o.messages;
        self.lost += o.lost;
    }
}

impl std::fmt::Display for ClusterReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cluster: {} members, {} writes ({} acknowledged, {} failed, {} unknown), {} reads, \
             {} leader changes, {} crashes, {} partitions, {} clock jumps, {} reverts, {} \
             transactions saved as divergent, {} messages ({} lost)",
            self.members,
            self.writes,
            self.acked,
            self.failed,
            self.unknown,
            self.reads,
            self.elections,
            self.crashes,
            self.partitions,
            self.clock_jumps,
            self.reverts,
            self.divergent,
            self.messages,
            self.lost
        )
    }
}

/// What survives a member's crash.
#[derive(Debug, Clone, Default)]
struct Disk {
    hard_state: (u64, u64, u64),
    voters: Vec<u64>,
    entries: Vec<LogEntry>,
    /// The database: one slot per LSN from 1 (`None`: an entry without a transaction).
    db: Vec<Option<u64>>,
    /// Transactions cut from this member's log, saved aside: (position, transaction).
    divergent: Vec<(Position, u64)>,
    /// The position before `entries[0]` (a snapshot's, or zero).
    base: (u64, u64),
    epochs: Vec<(u64, u64)>,
}

struct Member {
    id: u64,
    machine: Consensus,
    disk: Disk,
    up: bool,
    /// Ticks are handed over every `tick_every_ms` (a clock jump changes it).
    tick_every_ms: u64,
    next_tick_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending { deadline_ms: u64 },
    Acked,
    Failed,
    Unknown,
}

#[derive(Debug, Clone)]
struct Write {
    txn: u64,
    durability: Durability,
    at: Position,
    member: u64,
    outcome: Outcome,
}

struct Msg {
    at_ms: u64,
    from: u64,
    to: u64,
    bytes: Vec<u8>,
}

struct Sim {
    rng: ChaCha8Rng,
    trace: bool,
    now: u64,
    members: Vec<Member>,
    net: Vec<Msg>,
    /// (from, to) pairs whose messages vanish, until the given time.
    blocked: BTreeMap<(u64, u64), u64>,
    loss: f64,
    max_delay_ms: u64,
    writes: Vec<Write>,
    /// tag → index in `writes`.
    tags: BTreeMap<u64, usize>,
    /// Transaction → the member that executed it.
    origin: BTreeMap<u64, u64>,
    next_txn: u64,
    /// Transactions clients saw in reads.
    read_seen: BTreeSet<u64>,
    /// Epoch → the member that acknowledged writes in it.
    acked_by: BTreeMap<u64, u64>,
    last_leader: Option<u64>,
    /// Members to crash after their current commands (and restart at the given time).
    crash_soon: Vec<u64>,
    restart_at: BTreeMap<u64, u64>,
    report: ClusterReport,
}

fn config(id: u64) -> ConsensusConfig {
    ConsensusConfig {
        election_ticks: 10,
        // A fixed timeout: raft-rs would draw it from the thread's generator, which does not
        // replay. Elections are staggered by the seeded clocks instead.
        election_ticks_max: 11,
        heartbeat_ticks: 2,
        tail_entries: 64,
        ..ConsensusConfig::new(id)
    }
}

fn txn_of(e: &LogEntry) -> Option<u64> {
    (e.kind == EntryKind::Normal && e.data.len() == 8)
        .then(|| u64::from_be_bytes(e.data[..8].try_into().expect("8 bytes")))
}

impl Sim {
    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("{:>7} ms  {}", self.now, what());
        }
    }

    fn idx(&self, id: u64) -> usize {
        (id - 1) as usize
    }

    fn leader(&self) -> Option<u64> {
        self.members
            .iter()
            .filter(|m| m.up && m.machine.role() == Role::Leader)
            .map(|m| m.id)
            .max_by_key(|&id| self.members[self.idx(id)].machine.epoch())
    }

    /// Performs a member's commands in order, as the node does.
    fn perform(&mut self, id: u64, commands: Vec<ConsensusCommand>) -> anyhow::Result<()> {
        let i = self.idx(id);
        for c in commands {
            match c {
                ConsensusCommand::Send { to, bytes } => {
                    self.report.messages += 1;
                    let blocked = self.blocked.get(&(id, to)).is_some_and(|&u| u > self.now);
                    if blocked || self.rng.random_bool(self.loss) {
                        self.report.lost += 1;
                        continue;
                    }
                    let delay = self.rng.random_range(1..=self.max_delay_ms);
                    let dup = self.rng.random_bool(0.01);
                    for k in 0..1 + u64::from(dup) {
                        self.net.push(Msg {
                            at_ms: self.now + delay + k * 7,
                            from: id,
                            to,
                            bytes: bytes.clone(),
                        });
                    }
                }
                ConsensusCommand::Truncate { from, discarded } => {
                    let disk = &mut self.members[i].disk;
                    disk.entries.retain(|e| e.lsn < from);
                    // The member that executed a transaction saves it aside when its log
                    // drops it (the others drop copies of someone else's).
                    for e in &discarded {
                        if let Some(txn) = txn_of(e) {
                            if self.origin.get(&txn) == Some(&id) {
                                disk.divergent.push((e.position(), txn));
                            }
                        }
                    }
                    // The database holds what the log no longer does: cut it back (the WAL
                    // truncation of a deposed leader).
                    if disk.db.len() as u64 >= from.0 {
                        disk.db.truncate((from.0 - 1) as usize);
                        self.report.reverts += 1;
                    }
                    let n = discarded.len();
                    let what: Vec<String> = discarded
                        .iter()
                        .map(|e| format!("{}:{:?}", e.position(), txn_of(e)))
                        .collect();
                    self.log(|| {
                        format!(
                            "m{id} truncates its log from {from} ({n} entries: {})",
                            what.join(" ")
                        )
                    });
                }
                ConsensusCommand::Persist {
                    entries,
                    hard_state,
                    epochs,
                } => {
                    if let Some(epochs) = epochs {
                        self.members[i].disk.epochs = epochs;
                    }
                    let disk = &mut self.members[i].disk;
                    if let Some(first) = entries.first() {
                        ensure!(
                            disk.entries.last().map_or(disk.base.0, |e| e.lsn.0) + 1 == first.lsn.0,
                            "m{id}: persisting {} after {:?} leaves a gap",
                            first.lsn,
                            disk.entries.last().map(|e| e.lsn)
                        );
                    }
                    if self.trace && !entries.is_empty() {
                        let what: Vec<String> =
                            entries.iter().map(|e| e.position().to_string()).collect();
                        println!("{:>7} ms  m{id} persists {}", self.now, what.join(" "));
                    }
                    let disk = &mut self.members[i].disk;
                    disk.entries.extend(entries);
                    if let Some(hs) = hard_state {
                        // A power loss just after a vote was made durable (the restart comes
                        // soon, while that election's messages are still in flight).
                        let voted = hs.1 != 0 && hs.1 != disk.hard_state.1 && hs.1 != id;
                        disk.hard_state = hs;
                        if voted && self.rng.random_bool(0.2) {
                            self.crash_soon.push(id);
                        }
                        if FORGET_VOTE.load(Ordering::Relaxed) {
                            // The vote is not kept: after a crash the member may vote twice in
                            // one epoch.
                            disk.hard_state.1 = 0;
                        }
                    }
                }
                ConsensusCommand::Apply(entries) => {
                    let Some(last) = entries.last().map(|e| e.lsn) else {
                        continue;
                    };
                    let disk = &mut self.members[i].disk;
                    // A transaction saved aside that the history commits after all (another
                    // member still held it and led) is no longer divergent.
                    disk.divergent.retain(|(p, t)| {
                        !entries
                            .iter()
                            .any(|e| e.position() == *p && txn_of(e) == Some(*t))
                    });
                    for e in &entries {
                        let slot = (e.lsn.0 - 1) as usize;
                        if slot < disk.db.len() {
                            // Executed here already (this member led): it must be the same.
                            ensure!(
                                disk.db[slot] == txn_of(e),
                                "m{id}: the database holds {:?} at {} but the committed entry is {:?}",
                                disk.db[slot],
                                e.lsn,
                                txn_of(e)
                            );
                        } else {
                            ensure!(
                                slot == disk.db.len(),
                                "m{id}: applying {} onto a database at {}",
                                e.lsn,
                                disk.db.len()
                            );
                            disk.db.push(txn_of(e));
                        }
                    }
                    let more = self.members[i]
                        .machine
                        .handle(ConsensusEvent::Applied(last));
                    self.perform(id, more)?;
                }
                ConsensusCommand::InstallSnapshot { at, .. } => {
                    self.log(|| format!("m{id} installs a snapshot at {at}"));
                    // A copy of the database of a member that holds `at` committed.
                    let source = self
                        .members
                        .iter()
                        .filter(|m| {
                            m.machine.commit() >= at.lsn && m.disk.db.len() as u64 >= at.lsn.0
                        })
                        .map(|m| m.disk.db[..at.lsn.0 as usize].to_vec())
                        .next();
                    let Some(db) = source else {
                        bail!("m{id}: no member holds a snapshot at {at}");
                    };
                    let disk = &mut self.members[i].disk;
                    disk.db = db;
                    disk.entries.clear();
                    disk.base = (at.lsn.0, at.epoch.0);
                }
                ConsensusCommand::Membership { voters, .. } => {
                    self.members[i].disk.voters = voters;
                }
                ConsensusCommand::RoleChanged {
                    role,
                    epoch,
                    leader,
                } => {
                    self.log(|| {
                        format!(
                            "m{id} is {} in epoch {epoch} (leader {leader:?})",
                            role.as_str()
                        )
                    });
                }
                ConsensusCommand::Acked(tags) => {
                    for tag in tags {
                        self.acked(id, tag)?;
                    }
                }
                ConsensusCommand::Abandoned { tags, reason } => {
                    for tag in tags {
                        let w = &mut self.writes[self.tags[&tag]];
                        if matches!(w.outcome, Outcome::Pending { .. }) {
                            w.outcome = Outcome::Unknown;
                        }
                    }
                    self.log(|| format!("m{id} abandons writes: {reason}"));
                }
                ConsensusCommand::ReadReady { .. } | ConsensusCommand::ReadFailed { .. } => {}
                ConsensusCommand::Refused { reason } => bail!("m{id} refused a message: {reason}"),
            }
        }
        Ok(())
    }

    fn acked(&mut self, id: u64, tag: u64) -> anyhow::Result<()> {
        let w = &mut self.writes[self.tags[&tag]];
        ensure!(
            w.member == id,
            "m{id} acknowledged a write proposed on m{}",
            w.member
        );
        if let Outcome::Pending { .. } = w.outcome {
            w.outcome = Outcome::Acked;
            self.report.acked += 1;
        }
        let epoch = w.at.epoch.0;
        if let Some(&other) = self.acked_by.get(&epoch) {
            ensure!(
                other == id,
                "two members acknowledged writes in epoch {epoch}: m{other} and m{id}"
            );
        }
        self.acked_by.insert(epoch, id);
        Ok(())
    }

    /// A client write to `id`: executed there if it leads and its epoch's first entry is
    /// applied (everything before it is in its database), then proposed.
    fn client_write(&mut self, id: u64) -> anyhow::Result<()> {
        let i = self.idx(id);
        self.report.writes += 1;
        let durability = match self.rng.random_range(0..3) {
            0 => Durability::Async,
            1 => Durability::SemiSync,
            _ => Durability::Quorum,
        };
        let txn = self.next_txn;
        self.next_txn += 1;
        let m = &mut self.members[i];
        let at = m.machine.next_position();
        let ready = m.up
            && m.machine.role() == Role::Leader
            && m.machine.applied() >= m.machine.commit()
            && m.disk.db.len() as u64 + 1 == at.lsn.0
            && m.disk
                .entries
                .iter()
                .any(|e| e.epoch == at.epoch && e.lsn <= m.machine.applied());
        let mut write = Write {
            txn,
            durability,
            at,
            member: id,
            outcome: Outcome::Failed,
        };
        if !ready {
            self.report.failed += 1;
            self.writes.push(write);
            return Ok(());
        }
        // Executed first (the database holds it), then proposed.
        m.disk.db.push(Some(txn));
        self.origin.insert(txn, id);
        let mut out = Vec::new();
        let tag = txn;
        let asked = if ACK_QUORUM_ON_PERSIST.load(Ordering::Relaxed) {
            Durability::Async
        } else {
            durability
        };
        if let Err(e) = m.machine.propose(
            at,
            Bytes::from(txn.to_be_bytes().to_vec()),
            &[(tag, asked)],
            &mut out,
        ) {
            bail!("m{id}: a proposal at the position it gave was refused: {e}");
        }
        write.outcome = Outcome::Pending {
            deadline_ms: self.now + OP_TIMEOUT_MS,
        };
        self.tags.insert(tag, self.writes.len());
        self.writes.push(write);
        self.log(|| format!("m{id} executes txn {txn} at {at} ({durability})"));
        self.perform(id, out)
    }

    /// A client read on `id`: what its database shows, gated at the committed position.
    fn client_read(&mut self, id: u64) {
        let m = &self.members[self.idx(id)];
        if !m.up {
            return;
        }
        self.report.reads += 1;
        let gate = if READ_PAST_COMMIT.load(Ordering::Relaxed) {
            m.disk.db.len() as u64
        } else {
            m.machine.commit().0.min(m.disk.db.len() as u64)
        };
        let seen: Vec<u64> = m.disk.db[..gate as usize]
            .iter()
            .flatten()
            .copied()
            .collect();
        self.read_seen.extend(seen);
    }

    fn crash(&mut self, id: u64) {
        let i = self.idx(id);
        self.report.crashes += 1;
        let m = &mut self.members[i];
        m.up = false;
        // Transactions executed but never persisted in the log were never acknowledged: the
        // restarted member cuts its database back to its log.
        let logged = m.disk.entries.last().map_or(0, |e| e.lsn.0);
        let base = m.machine.applied().0.min(m.disk.db.len() as u64);
        let keep = logged.max(base).min(m.disk.db.len() as u64);
        m.disk.db.truncate(keep as usize);
        for w in &mut self.writes {
            if w.member == id && matches!(w.outcome, Outcome::Pending { .. }) {
                w.outcome = Outcome::Unknown;
            }
        }
        self.log(|| format!("m{id} crashes"));
    }

    fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let i = self.idx(id);
        let disk = self.members[i].disk.clone();
        let state = Recovered {
            term: disk.hard_state.0,
            vote: disk.hard_state.1,
            commit: disk.hard_state.2,
            voters: disk.voters.clone(),
            learners: Vec::new(),
            base: disk.base,
            entries: disk.entries.clone(),
            applied: (disk.db.len() as u64).min(disk.hard_state.2),
            epochs: disk.epochs.clone(),
        };
        self.members[i].machine = Consensus::new(config(id), "sim", state)?;
        self.members[i].up = true;
        self.log(|| format!("m{id} restarts"));
        Ok(())
    }

    fn step(&mut self) -> anyhow::Result<()> {
        // Deliver what is due.
        let due: Vec<Msg> = {
            let (due, later): (Vec<Msg>, Vec<Msg>) = std::mem::take(&mut self.net)
                .into_iter()
                .partition(|m| m.at_ms <= self.now);
            self.net = later;
            due
        };
        for m in due {
            let i = self.idx(m.to);
            let blocked = self
                .blocked
                .get(&(m.from, m.to))
                .is_some_and(|&u| u > self.now);
            if !self.members[i].up || blocked {
                continue;
            }
            let out = self.members[i]
                .machine
                .handle(ConsensusEvent::Received(m.bytes));
            self.perform(m.to, out)?;
        }
        // Ticks.
        for i in 0..self.members.len() {
            let id = self.members[i].id;
            if self.members[i].up && self.now >= self.members[i].next_tick_ms {
                // Timers jitter (as real ones do): with raft's election timeout fixed for
                // replay, this is what keeps elections from splitting for ever.
                let every = self.members[i].tick_every_ms;
                self.members[i].next_tick_ms =
                    self.now + every + self.rng.random_range(0..=every / 2);
                let out = self.members[i].machine.handle(ConsensusEvent::Tick);
                self.perform(id, out)?;
            }
        }
        for id in std::mem::take(&mut self.crash_soon) {
            if self.members[self.idx(id)].up {
                self.crash(id);
                let at = self.now + self.rng.random_range(1..20);
                self.restart_at.insert(id, at);
            }
        }
        let due: Vec<u64> = self
            .restart_at
            .iter()
            .filter(|(_, &at)| at <= self.now)
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            self.restart_at.remove(&id);
            if !self.members[self.idx(id)].up {
                self.restart(id)?;
            }
        }
        // Timeouts of pending writes.
        for w in &mut self.writes {
            if let Outcome::Pending { deadline_ms } = w.outcome {
                if self.now > deadline_ms {
                    w.outcome = Outcome::Unknown;
                }
            }
        }
        let leader = self.leader();
        if leader.is_some() && leader != self.last_leader {
            self.report.elections += 1;
            self.last_leader = leader;
        }
        Ok(())
    }

    fn faults(&mut self) -> anyhow::Result<()> {
        let n = self.members.len() as u64;
        let r = self.rng.random_range(0..1000);
        match r {
            0..=2 => {
                // Crash a member (the leader more often), and restart it later.
                let id = match self.leader() {
                    Some(l) if self.rng.random_bool(0.5) => l,
                    _ => self.rng.random_range(1..=n),
                };
                if self.members[self.idx(id)].up {
                    self.crash(id);
                }
            }
            3..=12 => {
                let down: Vec<u64> = self
                    .members
                    .iter()
                    .filter(|m| !m.up)
                    .map(|m| m.id)
                    .collect();
                if let Some(&id) = down.first() {
                    self.restart(id)?;
                }
            }
            13..=14 => {
                // A partition: the leader (or anyone) from some or all others, both ways or
                // one way, for a while.
                self.report.partitions += 1;
                let a = match self.leader() {
                    Some(l) if self.rng.random_bool(0.6) => l,
                    _ => self.rng.random_range(1..=n),
                };
                let until = self.now + self.rng.random_range(500..8_000);
                let one_way = self.rng.random_bool(0.3);
                for b in 1..=n {
                    if b == a || self.rng.random_bool(0.3) {
                        continue;
                    }
                    self.blocked.insert((a, b), until);
                    if !one_way {
                        self.blocked.insert((b, a), until);
                    }
                }
                self.log(|| format!("partition around m{a} until {until} ms (one way: {one_way})"));
            }
            15 => {
                // A member's clock jumps: its timer runs fast or slow for a while.
                self.report.clock_jumps += 1;
                let id = self.rng.random_range(1..=n);
                let i = self.idx(id);
                self.members[i].tick_every_ms =
                    [TICK_MS / 5, TICK_MS, TICK_MS * 4][self.rng.random_range(0..3)];
            }
            _ => {}
        }
        Ok(())
    }

    fn check(&self) -> anyhow::Result<()> {
        // The history: the longest committed log; every member's database is a prefix of it.
        let history: Vec<Option<u64>> = self
            .members
            .iter()
            .map(|m| m.disk.db.clone())
            .max_by_key(|d| d.len())
            .unwrap_or_default();
        for m in &self.members {
            ensure!(
                history[..m.disk.db.len()] == m.disk.db[..],
                "m{}'s database is not a prefix of the history",
                m.id
            );
            ensure!(
                m.disk.db.len() == history.len(),
                "m{} did not converge: {} of {} entries",
                m.id,
                m.disk.db.len(),
                history.len()
            );
        }
        let position: BTreeMap<u64, u64> = history
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (t, i as u64 + 1)))
            .collect();
        let divergent: BTreeSet<u64> = self
            .members
            .iter()
            .flat_map(|m| m.disk.divergent.iter().map(|d| d.1))
            .collect();
        for w in &self.writes {
            let kept = position.get(&w.txn);
            if let Some(&lsn) = kept {
                ensure!(
                    lsn == w.at.lsn.0,
                    "txn {} is at {lsn}, executed at {}",
                    w.txn,
                    w.at
                );
                ensure!(
                    !divergent.contains(&w.txn),
                    "txn {} is in the history and reported divergent",
                    w.txn
                );
            }
            if w.outcome != Outcome::Acked {
                continue;
            }
            match w.durability {
                Durability::Async => ensure!(
                    kept.is_some() || divergent.contains(&w.txn),
                    "async txn {} acknowledged at {} is neither in the history nor reported divergent",
                    w.txn,
                    w.at
                ),
                _ => ensure!(
                    kept.is_some(),
                    "{} txn {} acknowledged at {} is lost",
                    w.durability,
                    w.txn,
                    w.at
                ),
            }
        }
        for t in &self.read_seen {
            ensure!(
                position.contains_key(t),
                "a client read txn {t}, which the history does not hold"
            );
        }
        Ok(())
    }
}

/// Runs one seed; a panic (in raft-rs or the machine) is a failure of the seed, reported.
pub fn run_cluster_seed(seed: u64, trace: bool) -> anyhow::Result<ClusterReport> {
    match std::panic::catch_unwind(|| run(seed, trace)) {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            bail!("panicked: {what}")
        }
    }
}

fn run(seed: u64, trace: bool) -> anyhow::Result<ClusterReport> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xC1u64 << 56);
    let n: u64 = if rng.random_bool(0.3) { 5 } else { 3 };
    let voters: Vec<u64> = (1..=n).collect();
    let mut members = Vec::new();
    for id in 1..=n {
        members.push(Member {
            id,
            machine: Consensus::new(config(id), "sim", Recovered::fresh(voters.clone()))?,
            disk: Disk {
                voters: voters.clone(),
                ..Default::default()
            },
            up: true,
            tick_every_ms: TICK_MS,
            next_tick_ms: rng.random_range(0..TICK_MS * 10),
        });
    }
    let loss = [0.0, 0.01, 0.05, 0.15][rng.random_range(0..4)];
    let max_delay_ms = [2, 10, 40][rng.random_range(0..3)];
    let mut sim = Sim {
        rng,
        trace,
        now: 0,
        members,
        net: Vec::new(),
        blocked: BTreeMap::new(),
        loss,
        max_delay_ms,
        writes: Vec::new(),
        tags: BTreeMap::new(),
        origin: BTreeMap::new(),
        next_txn: 1,
        read_seen: BTreeSet::new(),
        acked_by: BTreeMap::new(),
        last_leader: None,
        crash_soon: Vec::new(),
        restart_at: BTreeMap::new(),
        report: ClusterReport {
            seed,
            members: n,
            ..Default::default()
        },
    };
    // Faults and clients, then quiet: everyone up, no partition, no loss, normal clocks.
    while sim.now < RUN_MS {
        sim.now += 5;
        sim.step()?;
        sim.faults()?;
        if sim.rng.random_bool(0.2) {
            let id = match sim.leader() {
                Some(l) if sim.rng.random_bool(0.9) => l,
                _ => sim.rng.random_range(1..=n),
            };
            sim.client_write(id)?;
        }
        if sim.rng.random_bool(0.1) {
            let id = sim.rng.random_range(1..=n);
            sim.client_read(id);
        }
    }
    sim.blocked.clear();
    sim.loss = 0.0;
    for id in 1..=n {
        let i = sim.idx(id);
        sim.members[i].tick_every_ms = TICK_MS;
        if !sim.members[i].up {
            sim.restart(id)?;
        }
    }
    let end = sim.now + HEAL_MS;
    let mut wrote_final = false;
    while sim.now < end {
        sim.now += 5;
        sim.step()?;
        // One write in the healed cluster commits everything before it.
        if !wrote_final {
            if let Some(l) = sim.leader() {
                let before = sim.writes.len();
                sim.client_write(l)?;
                wrote_final = sim.writes[before].outcome != Outcome::Failed;
            }
        }
    }
    let unsettled = sim
        .writes
        .iter()
        .filter(|w| matches!(w.outcome, Outcome::Pending { .. }))
        .count();
    ensure!(
        wrote_final,
        "no leader took a write after the cluster healed"
    );
    ensure!(
        unsettled == 0,
        "{unsettled} writes still pending after healing"
    );
    sim.check()?;
    sim.report.failed = sim
        .writes
        .iter()
        .filter(|w| w.outcome == Outcome::Failed)
        .count() as u64;
    sim.report.unknown = sim
        .writes
        .iter()
        .filter(|w| w.outcome == Outcome::Unknown)
        .count() as u64;
    sim.report.divergent = sim
        .members
        .iter()
        .map(|m| m.disk.divergent.len() as u64)
        .sum();
    Ok(sim.report)
}
