//! Consensus among a cluster's voters, sans IO: raft-rs's `RawNode` with its log tail in memory,
//! driven by events and answering with commands, like every other machine of this crate. The
//! node and the simulator host the same machine.
//!
//! Vocabulary: the Raft term is Flotilla's **epoch**; the Raft index is the **LSN**. Each entry
//! is one log record: a transaction (its encoded record is the entry's data), an empty entry
//! (Raft's own, at the start of each term) or a membership change.
//!
//! Contracts for the host:
//! - Commands are performed **in order**. `Persist` must be durable (fsynced) before the host
//!   performs any later command: the `Send`s after it may tell peers that this node holds what
//!   it persisted, and `Acked` tells clients so.
//! - `Truncate { from }` comes before the `Persist` that replaces those entries: the host drops
//!   its entries from `from` on (saving aside the transactions among `discarded`, which this
//!   cluster's history no longer holds).
//! - `Apply` hands over committed entries, in order, once. The host reports what it applied
//!   with `Applied`; the machine keeps `tail_entries` applied entries in memory for peers that
//!   are behind, and sends a peer further behind an `InstallSnapshot` instead.
//! - `Propose` is only for the leader's writer, which executed the transaction already and
//!   built its record for the next position (`(epoch, lsn)` it asked [`Consensus::next_position`]
//!   for). A proposal that would not land there is refused, never renumbered.
//!
//! Durability: a proposal names the client requests (`tags`) it answers and the durability
//! each asked for. A tag is `Acked` once its durability holds — `async`: persisted here;
//! `semi-sync`: committed by a quorum and held by at least `semi_sync_replicas` other members;
//! `quorum`: committed — or `Abandoned` when this node stops being the leader of that epoch
//! first (its outcome is then unknown to this node).

pub mod envelope;
mod epochs;
pub mod log_records;

pub use epochs::EpochHistory;

use bytes::Bytes;
use flotilla_types::{Durability, Epoch, Lsn, Position};
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState,
    Message, Snapshot,
};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole, Storage};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// raft-rs's in-memory storage, plus the epoch history that snapshots carry.
struct Store {
    mem: MemStorage,
    epochs: Mutex<EpochHistory>,
}

impl Store {
    fn epochs(&self) -> std::sync::MutexGuard<'_, EpochHistory> {
        self.epochs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Storage for Store {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        self.mem.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mut snap = self.mem.snapshot(request_index, to)?;
        let last = Lsn(self.mem.last_index()?);
        snap.data = self.epochs().encode(last).into();
        Ok(snap)
    }
}

/// Timers (in ticks of the host) and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsensusConfig {
    /// This member's id (1 and up), unique in the cluster.
    pub id: u64,
    /// A follower that hears nothing from a leader for this many ticks starts an election.
    pub election_ticks: usize,
    /// Election timeouts are drawn from `[election_ticks, election_ticks_max)`. The simulator
    /// sets `election_ticks + 1` (a fixed timeout: raft-rs draws from the thread's random
    /// generator, which would not replay) and staggers elections by how it ticks each member.
    pub election_ticks_max: usize,
    /// A leader sends heartbeats every this many ticks.
    pub heartbeat_ticks: usize,
    pub max_bytes_per_message: u64,
    pub max_inflight_messages: usize,
    /// Applied entries kept in memory for peers that are behind.
    pub tail_entries: u64,
    /// Members (besides the leader) that must hold a `semi-sync` write.
    pub semi_sync_replicas: usize,
}

impl ConsensusConfig {
    pub fn new(id: u64) -> ConsensusConfig {
        ConsensusConfig {
            id,
            election_ticks: 10,
            election_ticks_max: 20,
            heartbeat_ticks: 2,
            max_bytes_per_message: 4 << 20,
            max_inflight_messages: 256,
            tail_entries: 10_000,
            semi_sync_replicas: 1,
        }
    }
}

/// What a member persisted: its hard state, its membership, the entry before its oldest kept
/// one (a snapshot base: `(0, 0)` for a new cluster), and its entries from there on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub base: (u64, u64),
    pub entries: Vec<LogEntry>,
    /// The last entry the state machine (the database) holds.
    pub applied: u64,
    /// The epoch history as last persisted (`Persist { epochs }`); empty: derived from
    /// `entries` (enough for a log that was never cut by a snapshot).
    pub epochs: Vec<(u64, u64)>,
}

impl Recovered {
    /// A new cluster of these voters, nothing written yet.
    pub fn fresh(voters: Vec<u64>) -> Recovered {
        Recovered {
            voters,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A transaction's record, or (empty data) Raft's entry at the start of a term.
    Normal,
    /// A membership change (`data`: raft's encoded `ConfChangeV2`; `context`: the host's
    /// description of the members concerned).
    Membership,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub epoch: Epoch,
    pub lsn: Lsn,
    pub kind: EntryKind,
    pub data: Bytes,
    pub context: Bytes,
}

impl LogEntry {
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            lsn: self.lsn,
        }
    }

    fn from_raft(e: &Entry) -> LogEntry {
        LogEntry {
            epoch: Epoch(e.term),
            lsn: Lsn(e.index),
            kind: match e.get_entry_type() {
                EntryType::EntryNormal => EntryKind::Normal,
                _ => EntryKind::Membership,
            },
            data: e.data.clone(),
            context: e.context.clone(),
        }
    }

    fn to_raft(&self) -> Entry {
        let mut e = Entry {
            term: self.epoch.0,
            index: self.lsn.0,
            ..Default::default()
        };
        e.set_entry_type(match self.kind {
            EntryKind::Normal => EntryType::EntryNormal,
            EntryKind::Membership => EntryType::EntryConfChangeV2,
        });
        e.data = self.data.clone();
        e.context = self.context.clone();
        e
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }

    fn from_raft(r: StateRole) -> Role {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// A membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    AddVoter(u64),
    AddLearner(u64),
    Remove(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsensusEvent {
    /// The host's timer (every tick).
    Tick,
    /// An envelope from a peer.
    Received(Vec<u8>),
    /// The host applied every entry through this LSN to its database.
    Applied(Lsn),
    /// A peer could not be reached (its connection failed): raft probes it gently.
    Unreachable(u64),
    /// Hand leadership to this member once it holds everything (switchover).
    TransferLeadership(u64),
    /// Start an election now (an operator's choice when no leader exists).
    Campaign,
    /// A linearizable read: answered with `ReadReady` once the leader confirmed it still
    /// leads; the host serves the read once it applied that far.
    ReadIndex { tag: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsensusCommand {
    /// Send this envelope to member `to`.
    Send { to: u64, bytes: Vec<u8> },
    /// Drop the entries from `from` on; `discarded` is what they held.
    Truncate { from: Lsn, discarded: Vec<LogEntry> },
    /// Make these entries and this hard state durable (entries are new or replace what
    /// `Truncate` just dropped).
    Persist {
        entries: Vec<LogEntry>,
        hard_state: Option<(u64, u64, u64)>,
        /// The epoch history, when it changed (`(epoch, first lsn)`).
        epochs: Option<Vec<(u64, u64)>>,
    },
    /// Replace the database with a copy of a member's at exactly `at` (committed there), before
    /// performing any later command; the log restarts after it. Counts as applied.
    InstallSnapshot {
        at: Position,
        voters: Vec<u64>,
        learners: Vec<u64>,
    },
    /// Committed entries to apply, in order.
    Apply(Vec<LogEntry>),
    /// The membership after a committed change: persist it with the hard state. `change` is
    /// the change applied, with the context its proposer gave (the host's description of the
    /// member concerned).
    Membership {
        voters: Vec<u64>,
        learners: Vec<u64>,
        change: MemberChange,
        context: Bytes,
    },
    /// This member's role or its view of the leader changed.
    RoleChanged {
        role: Role,
        epoch: Epoch,
        leader: Option<u64>,
    },
    /// These client requests have the durability they asked for.
    Acked(Vec<u64>),
    /// These client requests will not be acknowledged by this node (it lost the leadership
    /// of their epoch first): their outcome is unknown here.
    Abandoned { tags: Vec<u64>, reason: String },
    /// A linearizable read may be served once the host applied through `lsn`.
    ReadReady { tag: u64, lsn: Lsn },
    /// A linearizable read cannot be confirmed here (no leader known, or leadership lost).
    ReadFailed { tag: u64, reason: String },
    /// A message could not be taken (another cluster, a format from the future, garbage).
    Refused { reason: String },
}

/// A transaction to propose: its position, its record, and the requests (tag, durability) it
/// answers.
pub type Proposed = (Position, Bytes, Vec<(u64, Durability)>);

/// Why a proposal was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("this node is not the leader (the leader is {leader:?})")]
    NotLeader { leader: Option<u64> },
    #[error("the proposal is for {asked} but the next position is {next}")]
    WrongPosition { asked: Position, next: Position },
    #[error("raft refused the proposal: {0}")]
    Refused(String),
}

#[derive(Debug, Clone, Copy)]
struct Waiting {
    tag: u64,
    epoch: Epoch,
    lsn: Lsn,
    durability: Durability,
    persisted: bool,
}

/// One member's progress as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberProgress {
    pub id: u64,
    pub voter: bool,
    /// The highest LSN the member holds durably (its log matches the leader's through it).
    pub matched: Lsn,
    /// The leader heard from it within the last election timeout.
    pub active: bool,
}

pub struct Consensus {
    config: ConsensusConfig,
    cluster_id: String,
    raw: RawNode<Store>,
    role: Role,
    leader: u64,
    epoch: u64,
    applied: u64,
    waiting: Vec<Waiting>,
    /// Reads waiting for the leader's confirmation, by tag.
    reads: BTreeMap<u64, ()>,
    /// Members sent a snapshot since the last ready. A snapshot message is only metadata (the
    /// receiver copies the database itself), so it counts as delivered once sent: raft then
    /// probes that member again instead of waiting for ever on a lost message.
    snapshots_sent: Vec<u64>,
}

impl std::fmt::Debug for Consensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consensus")
            .field("id", &self.config.id)
            .field("role", &self.role)
            .field("epoch", &self.epoch)
            .field("leader", &self.leader)
            .field("commit", &self.commit())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start consensus: {0}")]
pub struct StartError(String);

impl Consensus {
    pub fn new(
        config: ConsensusConfig,
        cluster_id: &str,
        state: Recovered,
    ) -> Result<Consensus, StartError> {
        let storage = MemStorage::new();
        let mut epochs = EpochHistory::from_starts(state.epochs.clone());
        for e in &state.entries {
            epochs.note(e.epoch.0, e.lsn.0);
        }
        {
            let mut core = storage.wl();
            let conf = ConfState::from((state.voters.clone(), state.learners.clone()));
            if state.base.0 == 0 {
                core.set_conf_state(conf);
            } else {
                let mut snap = Snapshot::default();
                let meta = snap.mut_metadata();
                meta.index = state.base.0;
                meta.term = state.base.1;
                meta.set_conf_state(conf);
                core.apply_snapshot(snap)
                    .map_err(|e| StartError(format!("base: {e}")))?;
            }
            let entries: Vec<Entry> = state.entries.iter().map(LogEntry::to_raft).collect();
            if let Some(first) = entries.first() {
                if first.index != state.base.0 + 1 {
                    return Err(StartError(format!(
                        "the entries start at {} but the base is {}",
                        first.index, state.base.0
                    )));
                }
            }
            core.append(&entries)
                .map_err(|e| StartError(format!("entries: {e}")))?;
            let last = state.base.0 + entries.len() as u64;
            core.set_hardstate(HardState {
                term: state.term.max(state.base.1),
                vote: state.vote,
                commit: state.commit.clamp(state.base.0, last),
                ..Default::default()
            });
        }
        let applied = state
            .applied
            .clamp(state.base.0, state.commit.max(state.base.0));
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            min_election_tick: config.election_ticks,
            max_election_tick: config.election_ticks_max.max(config.election_ticks + 1),
            heartbeat_tick: config.heartbeat_ticks,
            applied,
            max_size_per_msg: config.max_bytes_per_message,
            max_inflight_msgs: config.max_inflight_messages,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_config
            .validate()
            .map_err(|e| StartError(e.to_string()))?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let store = Store {
            mem: storage,
            epochs: Mutex::new(epochs),
        };
        let raw =
            RawNode::new(&raft_config, store, &logger).map_err(|e| StartError(e.to_string()))?;
        let epoch = raw.raft.term;
        Ok(Consensus {
            config,
            cluster_id: cluster_id.to_string(),
            raw,
            role: Role::Follower,
            leader: 0,
            epoch,
            applied,
            waiting: Vec::new(),
            reads: BTreeMap::new(),
            snapshots_sent: Vec::new(),
        })
    }

    pub fn id(&self) -> u64 {
        self.config.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch)
    }

    /// The leader this member knows of.
    pub fn leader(&self) -> Option<u64> {
        (self.leader != 0).then_some(self.leader)
    }

    /// The newest LSN committed by a quorum (as far as this member knows).
    pub fn commit(&self) -> Lsn {
        Lsn(self.raw.raft.raft_log.committed)
    }

    /// The newest entry in this member's log.
    pub fn last(&self) -> Position {
        let last = self.raw.raft.raft_log.last_index();
        Position {
            epoch: Epoch(self.raw.raft.raft_log.term(last).unwrap_or(0)),
            lsn: Lsn(last),
        }
    }

    pub fn applied(&self) -> Lsn {
        Lsn(self.applied)
    }

    pub fn voters(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.raw.raft.prs().conf().voters().ids().iter().collect();
        v.sort_unstable();
        v
    }

    pub fn learners(&self) -> Vec<u64> {
        let mut v = self.raw.raft.prs().conf().to_conf_state().learners;
        v.sort_unstable();
        v
    }

    /// On the leader: each other member's progress.
    pub fn progress(&self) -> Vec<MemberProgress> {
        if self.role != Role::Leader {
            return Vec::new();
        }
        let voters = self.raw.raft.prs().conf().voters().ids();
        let mut out: Vec<MemberProgress> = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != self.config.id)
            .map(|(id, p)| MemberProgress {
                id: *id,
                voter: voters.contains(*id),
                matched: Lsn(p.matched),
                active: p.recent_active,
            })
            .collect();
        out.sort_unstable_by_key(|p| p.id);
        out
    }

    /// The position the leader's next transaction must take.
    pub fn next_position(&self) -> Position {
        Position {
            epoch: Epoch(self.raw.raft.term),
            lsn: Lsn(self.raw.raft.raft_log.last_index() + 1),
        }
    }

    /// The leader's writer proposes a transaction it executed at `at` (from
    /// [`Consensus::next_position`]); `tags` are the client requests it answers, with the
    /// durability each asked for.
    pub fn propose(
        &mut self,
        at: Position,
        record: Bytes,
        tags: &[(u64, Durability)],
        out: &mut Vec<ConsensusCommand>,
    ) -> Result<(), ProposeError> {
        let r = self.propose_one(at, record, tags);
        self.drain(out);
        r
    }

    /// Several proposals, in order, handed out together: one `Persist` (one fsync) and one
    /// round of messages for all of them. Each proposal's result, in order.
    pub fn propose_batch(
        &mut self,
        proposals: Vec<Proposed>,
        out: &mut Vec<ConsensusCommand>,
    ) -> Vec<Result<(), ProposeError>> {
        let results = proposals
            .into_iter()
            .map(|(at, record, tags)| self.propose_one(at, record, &tags))
            .collect();
        self.drain(out);
        results
    }

    fn propose_one(
        &mut self,
        at: Position,
        record: Bytes,
        tags: &[(u64, Durability)],
    ) -> Result<(), ProposeError> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        let next = self.next_position();
        if at != next || record.is_empty() {
            return Err(ProposeError::WrongPosition { asked: at, next });
        }
        self.raw
            .propose(Vec::new(), record.to_vec())
            .map_err(|e| ProposeError::Refused(e.to_string()))?;
        // raft appends a proposal at the next index of the current term, or not at all.
        if self.raw.raft.raft_log.last_index() != at.lsn.0 {
            return Err(ProposeError::Refused(
                "the proposal was dropped (a leadership transfer is under way)".into(),
            ));
        }
        self.waiting
            .extend(tags.iter().map(|&(tag, durability)| Waiting {
                tag,
                epoch: at.epoch,
                lsn: at.lsn,
                durability,
                persisted: false,
            }));
        Ok(())
    }

    /// On the leader: answers `tag` (with `Acked`) once the entry at `lsn`, already proposed,
    /// has `durability` — a retried request whose transaction committed earlier waits for the
    /// copies it asked for like the first time.
    pub fn watch(
        &mut self,
        tag: u64,
        lsn: Lsn,
        durability: Durability,
        out: &mut Vec<ConsensusCommand>,
    ) -> Result<(), ProposeError> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        self.waiting.push(Waiting {
            tag,
            epoch: Epoch(self.raw.raft.term),
            lsn,
            durability,
            persisted: lsn.0 <= self.raw.raft.raft_log.persisted,
        });
        self.ack(out);
        Ok(())
    }

    /// Proposes a membership change (on the leader); `context` describes the member (the
    /// host's: its name and URL), kept with the entry.
    pub fn change_membership(
        &mut self,
        change: &MemberChange,
        context: Bytes,
        out: &mut Vec<ConsensusCommand>,
    ) -> Result<Lsn, ProposeError> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        let (change_type, id) = match *change {
            MemberChange::AddVoter(id) => (ConfChangeType::AddNode, id),
            MemberChange::AddLearner(id) => (ConfChangeType::AddLearnerNode, id),
            MemberChange::Remove(id) => (ConfChangeType::RemoveNode, id),
        };
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = id;
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        self.raw
            .propose_conf_change(context.to_vec(), cc)
            .map_err(|e| ProposeError::Refused(e.to_string()))?;
        let at = Lsn(self.raw.raft.raft_log.last_index());
        self.drain(out);
        Ok(at)
    }

    pub fn handle(&mut self, event: ConsensusEvent) -> Vec<ConsensusCommand> {
        let mut out = Vec::new();
        match event {
            ConsensusEvent::Tick => {
                self.raw.tick();
            }
            ConsensusEvent::Received(bytes) => match envelope::decode(&self.cluster_id, &bytes) {
                Ok(m) => self.step(m, &mut out),
                Err(e) => out.push(ConsensusCommand::Refused {
                    reason: e.to_string(),
                }),
            },
            ConsensusEvent::Applied(lsn) => {
                let lsn = lsn.0.min(self.raw.raft.raft_log.committed);
                if lsn > self.applied {
                    self.applied = lsn;
                    self.raw.advance_apply_to(lsn);
                    self.compact();
                }
            }
            ConsensusEvent::Unreachable(id) => self.raw.report_unreachable(id),
            ConsensusEvent::TransferLeadership(id) => self.raw.transfer_leader(id),
            ConsensusEvent::Campaign => {
                let _ = self.raw.campaign();
            }
            ConsensusEvent::ReadIndex { tag } => {
                if self.leader == 0 {
                    out.push(ConsensusCommand::ReadFailed {
                        tag,
                        reason: "no leader is known".into(),
                    });
                } else {
                    self.reads.insert(tag, ());
                    self.raw.read_index(tag.to_be_bytes().to_vec());
                }
            }
        }
        self.drain(&mut out);
        out
    }

    fn step(&mut self, m: Message, out: &mut Vec<ConsensusCommand>) {
        // Messages from a member removed from the cluster, or addressed elsewhere, are dropped
        // by raft itself; only a local message type would be an error here.
        if m.to != self.config.id {
            out.push(ConsensusCommand::Refused {
                reason: format!("a message for member {}, not {}", m.to, self.config.id),
            });
            return;
        }
        // A member with an empty log does not vote for a candidate whose log holds entries:
        // it cannot tell a new member from one that lost its data directory, and a voter that
        // forgot what it acknowledged could elect a leader without an acknowledged write. It
        // votes again once a leader gave it the log (a new cluster's first election, between
        // empty logs, is unaffected).
        use raft::eraftpb::MessageType::{MsgRequestPreVote, MsgRequestVote};
        let asks_vote = matches!(m.get_msg_type(), MsgRequestVote | MsgRequestPreVote);
        let empty = self.raw.raft.raft_log.last_index() == 0;
        if asks_vote && empty && (m.index > 0 || m.log_term > 0) {
            // Not a refusal of a bad message: a vote not granted (the candidate asks again).
            return;
        }
        if let Err(e) = self.raw.step(m) {
            out.push(ConsensusCommand::Refused {
                reason: e.to_string(),
            });
        }
    }

    /// Keeps `tail_entries` applied entries for peers that are behind.
    fn compact(&mut self) {
        let keep_from = self.applied.saturating_sub(self.config.tail_entries) + 1;
        let store = &self.raw.store().mem;
        let first = store.first_index().unwrap_or(0);
        if keep_from > first {
            let _ = store.wl().compact(keep_from);
        }
    }

    /// Hands over everything raft has ready, as commands, in the order the host performs them.
    fn drain(&mut self, out: &mut Vec<ConsensusCommand>) {
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            if let Some(ss) = rd.ss() {
                let role = Role::from_raft(ss.raft_state);
                let (leader, changed) = (
                    ss.leader_id,
                    role != self.role || ss.leader_id != self.leader,
                );
                if self.role == Role::Leader && role != Role::Leader {
                    self.abandon("this node stopped being the leader", out);
                }
                self.role = role;
                self.leader = leader;
                if changed {
                    // The epoch is set below from the hard state; announce with the newest.
                    out.push(ConsensusCommand::RoleChanged {
                        role,
                        epoch: Epoch(self.raw.raft.term),
                        leader: (leader != 0).then_some(leader),
                    });
                }
            }
            if let Some(hs) = rd.hs() {
                if hs.term != self.epoch {
                    self.epoch = hs.term;
                    // A term that moved on under a waiting leader: its requests cannot be
                    // acknowledged in their epoch any more.
                    self.abandon("a newer epoch began", out);
                }
            }
            // A leader's appends may leave before its own fsync (raft thesis 10.2.1).
            self.send(rd.take_messages(), out);
            let mut snapshot_at = None;
            let mut epochs_changed = false;
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                snapshot_at = Some(snap.get_metadata().index);
                self.replaced_by_snapshot(&snap, out);
                epochs_changed = true;
                let meta = snap.get_metadata();
                let cs = meta.get_conf_state();
                out.push(ConsensusCommand::InstallSnapshot {
                    at: Position::new(meta.term, meta.index),
                    voters: cs.voters.clone(),
                    learners: cs.learners.clone(),
                });
                let _ = self.raw.mut_store().mem.wl().apply_snapshot(snap);
            }
            self.apply(rd.take_committed_entries(), out);
            let entries = rd.take_entries();
            if let Some(first) = entries.first() {
                let store = self.raw.store();
                let last = store.mem.last_index().unwrap_or(0);
                if first.index <= last {
                    let lo = first.index;
                    let discarded: Vec<LogEntry> = store
                        .mem
                        .entries(lo, last + 1, None, raft::GetEntriesContext::empty(false))
                        .map(|es| es.iter().map(LogEntry::from_raft).collect())
                        .unwrap_or_default();
                    out.push(ConsensusCommand::Truncate {
                        from: Lsn(lo),
                        discarded,
                    });
                    store.epochs().truncate_from(lo);
                }
                let _ = store.mem.wl().append(&entries);
                let mut epochs = store.epochs();
                let before = epochs.starts().len();
                for e in &entries {
                    epochs.note(e.term, e.index);
                }
                epochs_changed |= epochs.starts().len() != before || first.index <= last;
            }
            let hard_state = rd.hs().map(|hs| (hs.term, hs.vote, hs.commit));
            if let Some(hs) = rd.hs() {
                self.raw.mut_store().mem.wl().set_hardstate(hs.clone());
            }
            if !entries.is_empty() || hard_state.is_some() || epochs_changed {
                out.push(ConsensusCommand::Persist {
                    entries: entries.iter().map(LogEntry::from_raft).collect(),
                    hard_state,
                    epochs: epochs_changed.then(|| self.raw.store().epochs().starts().to_vec()),
                });
            }
            if let Some(last) = entries.last() {
                let (term, index) = (last.term, last.index);
                for w in &mut self.waiting {
                    if w.epoch.0 == term && w.lsn.0 <= index {
                        w.persisted = true;
                    }
                }
            }
            self.send(rd.take_persisted_messages(), out);
            for rs in rd.take_read_states() {
                if let Ok(bytes) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) {
                    let tag = u64::from_be_bytes(bytes);
                    if self.reads.remove(&tag).is_some() {
                        out.push(ConsensusCommand::ReadReady {
                            tag,
                            lsn: Lsn(rs.index),
                        });
                    }
                }
            }
            let mut light = self.raw.advance_append(rd);
            if let Some(index) = snapshot_at {
                // The host installs the snapshot before anything later: it is applied.
                self.raw.advance_apply_to(index);
                self.applied = self.applied.max(index);
            }
            if let Some(commit) = light.commit_index() {
                self.raw.mut_store().mem.wl().mut_hard_state().commit = commit;
                out.push(ConsensusCommand::Persist {
                    entries: Vec::new(),
                    hard_state: Some((self.raw.raft.term, self.raw.raft.vote, commit)),
                    epochs: None,
                });
            }
            self.send(light.take_messages(), out);
            self.apply(light.take_committed_entries(), out);
            for to in std::mem::take(&mut self.snapshots_sent) {
                self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
            }
        }
        self.ack(out);
        if self.role != Role::Leader && !self.reads.is_empty() && self.leader == 0 {
            for (tag, ()) in std::mem::take(&mut self.reads) {
                out.push(ConsensusCommand::ReadFailed {
                    tag,
                    reason: "the leader was lost before the read was confirmed".into(),
                });
            }
        }
    }

    /// A snapshot replaces this member's log: the entries it held beyond its commit that the
    /// sender's history does not hold were divergent; they are handed over (`Truncate`) to be
    /// saved aside. The member takes the sender's epoch history up to the snapshot.
    fn replaced_by_snapshot(&mut self, snap: &Snapshot, out: &mut Vec<ConsensusCommand>) {
        let index = snap.get_metadata().index;
        let theirs = EpochHistory::decode(&snap.data);
        let store = self.raw.store();
        // raft already took the snapshot's index as committed; what this member knew committed
        // is what it persisted last.
        let commit = store.mem.rl().hard_state().commit;
        let last = store.mem.last_index().unwrap_or(0);
        let first = store.mem.first_index().unwrap_or(1).max(commit + 1);
        if first <= last {
            let held: Vec<LogEntry> = store
                .mem
                .entries(first, last + 1, None, raft::GetEntriesContext::empty(false))
                .map(|es| es.iter().map(LogEntry::from_raft).collect())
                .unwrap_or_default();
            let discarded = held
                .into_iter()
                .filter(|e| match &theirs {
                    Some((h, their_last)) => !h.holds(e.position(), *their_last),
                    // No history from the sender (a peer's garbage): keep everything reported.
                    None => true,
                })
                .collect();
            out.push(ConsensusCommand::Truncate {
                from: Lsn(first),
                discarded,
            });
        }
        let mut mine = match theirs {
            Some((h, _)) => h,
            None => EpochHistory::default(),
        };
        mine.truncate_from(index + 1);
        mine.note(snap.get_metadata().term, index);
        *store.epochs() = mine;
    }

    /// The epoch history of this member's log.
    pub fn epoch_history(&self) -> EpochHistory {
        self.raw.store().epochs().clone()
    }

    fn send(&mut self, messages: Vec<Message>, out: &mut Vec<ConsensusCommand>) {
        for m in messages {
            if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                self.snapshots_sent.push(m.to);
            }
            out.push(ConsensusCommand::Send {
                to: m.to,
                bytes: envelope::encode(&self.cluster_id, &m),
            });
        }
    }

    /// Hands committed entries to the host; membership changes take effect here.
    fn apply(&mut self, entries: Vec<Entry>, out: &mut Vec<ConsensusCommand>) {
        if entries.is_empty() {
            return;
        }
        let mut batch = Vec::with_capacity(entries.len());
        for e in &entries {
            batch.push(LogEntry::from_raft(e));
            if e.get_entry_type() == EntryType::EntryConfChangeV2 {
                use protobuf::Message as _;
                let Ok(cc) = ConfChangeV2::parse_from_bytes(&e.data) else {
                    continue;
                };
                let change = cc.changes.first().map(|c| match c.get_change_type() {
                    ConfChangeType::AddNode => MemberChange::AddVoter(c.node_id),
                    ConfChangeType::AddLearnerNode => MemberChange::AddLearner(c.node_id),
                    ConfChangeType::RemoveNode => MemberChange::Remove(c.node_id),
                });
                if let (Ok(cs), Some(change)) = (self.raw.apply_conf_change(&cc), change) {
                    self.raw.mut_store().mem.wl().set_conf_state(cs.clone());
                    out.push(ConsensusCommand::Apply(std::mem::take(&mut batch)));
                    out.push(ConsensusCommand::Membership {
                        voters: cs.voters.clone(),
                        learners: cs.learners.clone(),
                        change,
                        context: e.context.clone(),
                    });
                }
            }
        }
        if !batch.is_empty() {
            out.push(ConsensusCommand::Apply(batch));
        }
    }

    /// Acknowledges the waiting requests whose durability now holds.
    fn ack(&mut self, out: &mut Vec<ConsensusCommand>) {
        if self.waiting.is_empty() {
            return;
        }
        let commit = self.raw.raft.raft_log.committed;
        let progress = self.progress();
        let copies = |lsn: u64| progress.iter().filter(|p| p.matched.0 >= lsn).count();
        let wanted = self.config.semi_sync_replicas;
        let mut acked = Vec::new();
        self.waiting.retain(|w| {
            let done = w.persisted
                && match w.durability {
                    Durability::Async => true,
                    Durability::Quorum => commit >= w.lsn.0,
                    Durability::SemiSync => commit >= w.lsn.0 && copies(w.lsn.0) >= wanted,
                };
            if done {
                acked.push(w.tag);
            }
            !done
        });
        if !acked.is_empty() {
            out.push(ConsensusCommand::Acked(acked));
        }
    }

    fn abandon(&mut self, reason: &str, out: &mut Vec<ConsensusCommand>) {
        // Requests already persisted in `async` mode were acknowledged on persist; what is
        // left is waiting for replication that this node can no longer vouch for.
        let tags: Vec<u64> = self.waiting.drain(..).map(|w| w.tag).collect();
        if !tags.is_empty() {
            out.push(ConsensusCommand::Abandoned {
                tags,
                reason: reason.to_string(),
            });
        }
    }
}

#[cfg(test)]
mod tests;
