//! The consensus task: the one owner of a member's `Consensus` machine. It hands the machine
//! timer ticks, messages from peers and reports, and performs the commands it answers with, in
//! order: sends go to the peer links, entries and truncations to the Flotilla log (fsynced
//! before anything after them), the hard state to `cluster.json` (fsynced when the epoch or the
//! vote changed; the commit index alone is written lazily — a member that restarts with an
//! older one learns the newer from its leader).
//!
//! Not built yet (see docs/architecture.md): applying committed transactions to the database,
//! the leader's writer proposing through here, divergent transactions saved aside.

use super::state::ClusterFile;
use super::transport::{spawn_link, Link};
use crate::follower::transport::Credentials;
use bytes::Bytes;
use flotilla_core::consensus::log_records::{entry_of_record, record_of_entry};
use flotilla_core::consensus::{
    Consensus, ConsensusCommand, ConsensusConfig, ConsensusEvent, LogEntry, MemberChange,
    MemberProgress, Recovered, Role,
};
use flotilla_log::Log;
use flotilla_types::{Chain, Epoch, Lsn};
use flotilla_types::{Durability, Position};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Ticks per election timeout: the consensus timer ticks ten times per election timeout (so
/// elections start after 10 to 20 ticks without a leader), heartbeats every 2 ticks.
pub const TICKS_PER_ELECTION: usize = 10;
const INBOUND_QUEUE: usize = 4096;

/// What the member's status shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    pub role: Role,
    pub epoch: Epoch,
    pub leader: Option<u64>,
    pub commit: Lsn,
    pub last: Lsn,
    pub applied: Lsn,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// On the leader: each other member's durable position.
    pub progress: Vec<MemberProgress>,
    /// Messages refused (another cluster, garbage), with the last reason.
    pub refused: u64,
    pub last_refusal: Option<String>,
    /// Since when (monotonic ms) this member has not known itself current: it knew no leader,
    /// or had not applied everything its leader said was committed. `None` while it is (and
    /// always on the leader). A member that lost its leader notices within an election
    /// timeout, when it stops expecting the leader's heartbeats.
    pub behind_since_ms: Option<u64>,
}

/// A transaction the leader's writer executed at `at`, to replicate; each waiter is answered
/// once the durability it asked for holds, or told why it will not be.
pub struct Proposal {
    pub at: Position,
    /// `None`: nothing to propose; the waiters wait for the entry at `at` (a retried request
    /// whose transaction was proposed before).
    pub record: Option<Bytes>,
    /// A membership change at `at` instead of a transaction (`record` is then `None`).
    pub membership: Option<MembershipProposal>,
    pub waiters: Vec<(
        Durability,
        tokio::sync::oneshot::Sender<Result<(), Unacknowledged>>,
    )>,
}

/// Why a proposal's request was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unacknowledged {
    /// Refused before anything was replicated (this member does not lead, or the position was
    /// not the next one): the transaction is not part of the history.
    #[error("not proposed: {0}")]
    NotProposed(String),
    /// This member stopped leading before the durability held: the transaction may or may not
    /// survive (the new leader decides).
    #[error("the leader changed before the write was replicated: {0}")]
    LeadershipLost(String),
}

/// What the consensus task tells the member's database host, in order.
#[derive(Debug)]
pub enum MemberEvent {
    /// Committed entries to apply; report the last with `ClusterHandle::applied`.
    Apply(Vec<LogEntry>),
    /// This member's role, its epoch and the leader it knows of.
    Role {
        role: Role,
        epoch: Epoch,
        leader: Option<u64>,
    },
    /// Replace the database with a copy of the leader's at or after this position.
    InstallSnapshot(Position),
    /// Entries the log dropped (the new leader's replace them).
    Discarded(Vec<LogEntry>),
    /// A transaction the writer executed was not proposed (a leadership transfer under way,
    /// or the leadership lost): the database holds what the log does not.
    NotProposed,
}

/// What an operator (or the member itself) asks of the consensus.
#[derive(Debug)]
pub enum Control {
    /// Hand the leadership to this member once it holds everything (raft's leadership
    /// transfer: the leader stops taking proposals, the target catches up, then campaigns).
    Transfer(u64),
    /// A linearizable read: answered with the LSN this member must apply through before it
    /// reads (the leader's commit index once a majority confirmed it still leads), or why not.
    ReadIndex(tokio::sync::oneshot::Sender<Result<Lsn, String>>),
}

/// A membership change the leader's writer proposes at the position it counts for it (the
/// change takes an LSN, as a transaction does): answered once proposed, with its LSN (it
/// takes effect once committed), or why not.
pub struct MembershipProposal {
    pub change: MemberChange,
    pub member: MemberContext,
    pub proposed: tokio::sync::oneshot::Sender<Result<Lsn, String>>,
}

/// The member a membership change concerns, as its entry carries it (JSON): every member
/// learns the name and URL of a member added, from the log itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberContext {
    pub member_id: u64,
    pub name: String,
    pub url: String,
}

/// The handle the rest of the node holds.
pub struct ClusterHandle {
    pub cluster_id: String,
    pub member_id: u64,
    /// Members as last persisted (names and URLs).
    pub file: Mutex<ClusterFile>,
    /// Envelopes from peers.
    pub inbound: mpsc::Sender<Vec<u8>>,
    /// Transactions from the leader's writer.
    pub proposals: mpsc::Sender<Proposal>,
    /// The database host's reports: applied through this LSN.
    pub applied: mpsc::UnboundedSender<Lsn>,
    pub control: mpsc::UnboundedSender<Control>,
    pub status: watch::Receiver<ClusterStatus>,
}

impl ClusterHandle {
    pub fn file(&self) -> ClusterFile {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the cluster's log: {0}")]
    Log(#[from] flotilla_log::LogError),
    #[error("the cluster's log holds a damaged entry: {0}")]
    Entry(#[from] flotilla_core::consensus::log_records::EntryRecordError),
    #[error(transparent)]
    Consensus(#[from] flotilla_core::consensus::StartError),
}

/// Rebuilds the member's Raft state from `cluster.json` and its log.
fn recover(file: &ClusterFile, log: &Log) -> Result<(Recovered, Chain), StartError> {
    let last = log.stats().last_lsn;
    let mut entries = Vec::new();
    let mut chain = Chain(0);
    let mut next = file.base_lsn + 1;
    while next <= last {
        let batch = log.read(next, 10_000, 64 << 20)?;
        if batch.is_empty() {
            break;
        }
        for raw in &batch {
            let (entry, after) = entry_of_record(raw)?;
            chain = after;
            entries.push(entry);
        }
        next += batch.len() as u64;
    }
    let recovered = Recovered {
        term: file.term,
        vote: file.vote,
        commit: file.commit,
        voters: file.voters.clone(),
        learners: file.learners.clone(),
        base: (file.base_lsn, file.base_epoch),
        entries,
        // The database is not driven from here yet: what is committed counts as applied.
        applied: file.commit,
        epochs: file.epochs.clone(),
    };
    Ok((recovered, chain))
}

pub struct DriverParts {
    pub dir: PathBuf,
    pub file: ClusterFile,
    pub log: Arc<Log>,
    pub credentials: Credentials,
    pub config: ConsensusConfig,
    /// The election timeout (ms): a follower that hears no leader for this long (to twice as
    /// long, at random) starts an election.
    pub election_timeout_ms: u64,
    pub shutdown: CancellationToken,
    pub fatal: crate::fatal::FatalSender,
    /// The member's database host; `None`: entries count as applied once committed (the
    /// consensus alone, in tests).
    pub events: Option<mpsc::UnboundedSender<MemberEvent>>,
    /// What the database holds (its last transaction's LSN): entries up to it count as applied.
    pub db_lsn: u64,
}

/// Starts the consensus task.
pub fn start(parts: DriverParts) -> Result<Arc<ClusterHandle>, StartError> {
    let (mut recovered, last_chain) = recover(&parts.file, &parts.log)?;
    if parts.events.is_some() {
        recovered.applied = parts.db_lsn.min(recovered.commit).max(parts.file.base_lsn);
    }
    let machine = Consensus::new(parts.config.clone(), &parts.file.cluster_id, recovered)?;
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let (proposals_tx, proposals_rx) = mpsc::channel(1024);
    let (applied_tx, applied_rx) = mpsc::unbounded_channel();
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (unreachable_tx, unreachable_rx) = mpsc::channel(256);
    let links: BTreeMap<u64, Link> = parts
        .file
        .members
        .iter()
        .filter(|(id, _)| **id != parts.file.member_id)
        .map(|(id, m)| {
            let link = spawn_link(
                *id,
                &m.url,
                parts.credentials.clone(),
                unreachable_tx.clone(),
                parts.shutdown.clone(),
            );
            (*id, link)
        })
        .collect();
    let (status_tx, status_rx) = watch::channel(status_of(&machine, 0, None));
    let handle = Arc::new(ClusterHandle {
        cluster_id: parts.file.cluster_id.clone(),
        member_id: parts.file.member_id,
        file: Mutex::new(parts.file.clone()),
        inbound: inbound_tx,
        proposals: proposals_tx,
        applied: applied_tx,
        control: control_tx,
        status: status_rx,
    });
    let driver = Driver {
        machine,
        dir: parts.dir,
        file: parts.file,
        dirty: false,
        log: parts.log,
        links,
        last_chain,
        status: status_tx,
        handle: handle.clone(),
        refused: 0,
        last_refusal: None,
        fatal: parts.fatal,
        waiting: HashMap::new(),
        reads: HashMap::new(),
        next_tag: 0,
        events: parts.events,
        tail_entries: parts.config.tail_entries,
        link_parts: (
            parts.credentials.clone(),
            unreachable_tx.clone(),
            parts.shutdown.clone(),
        ),
    };
    let tick =
        Duration::from_millis((parts.election_timeout_ms / TICKS_PER_ELECTION as u64).max(1));
    let inputs = Inputs {
        inbound: inbound_rx,
        proposals: proposals_rx,
        unreachable: unreachable_rx,
        applied: applied_rx,
        control: control_rx,
    };
    let fatal = driver.fatal.clone();
    let task = tokio::spawn(driver.run(tick, inputs, parts.shutdown));
    // A panic in the consensus (raft refuses a state it cannot be in) stops the node, rather
    // than leaving it up without a consensus.
    tokio::spawn(async move {
        if let Err(e) = task.await {
            if e.is_panic() {
                let what = e
                    .into_panic()
                    .downcast::<String>()
                    .map(|s| *s)
                    .unwrap_or_else(|p| {
                        p.downcast::<&str>()
                            .map(|s| s.to_string())
                            .unwrap_or_else(|_| "(no message)".into())
                    });
                let hint = if what.contains("out of range") {
                    " — this member's log is shorter than what the cluster says it holds: its \
                     data directory was lost or replaced. Remove it (flotilla cluster remove) \
                     and let it join again with an empty data directory"
                } else {
                    ""
                };
                fatal.report(crate::fatal::Fatal::Consensus(format!(
                    "the consensus task failed: {what}{hint}"
                )));
            }
        }
    });
    Ok(handle)
}

fn status_of(m: &Consensus, refused: u64, last_refusal: Option<String>) -> ClusterStatus {
    ClusterStatus {
        role: m.role(),
        epoch: m.epoch(),
        leader: m.leader(),
        commit: m.commit(),
        last: m.last().lsn,
        applied: m.applied(),
        voters: m.voters(),
        learners: m.learners(),
        progress: m.progress(),
        refused,
        last_refusal,
        behind_since_ms: None,
    }
}

/// What the consensus task listens to, besides its timer.
struct Inputs {
    inbound: mpsc::Receiver<Vec<u8>>,
    proposals: mpsc::Receiver<Proposal>,
    unreachable: mpsc::Receiver<u64>,
    applied: mpsc::UnboundedReceiver<Lsn>,
    control: mpsc::UnboundedReceiver<Control>,
}

struct Driver {
    machine: Consensus,
    dir: PathBuf,
    file: ClusterFile,
    /// `file` holds a newer commit index than `cluster.json`.
    dirty: bool,
    log: Arc<Log>,
    links: BTreeMap<u64, Link>,
    /// The chain of the last transaction in the log.
    last_chain: Chain,
    status: watch::Sender<ClusterStatus>,
    handle: Arc<ClusterHandle>,
    refused: u64,
    last_refusal: Option<String>,
    fatal: crate::fatal::FatalSender,
    /// Requests waiting for their durability, by tag.
    waiting: HashMap<u64, tokio::sync::oneshot::Sender<Result<(), Unacknowledged>>>,
    /// Linearizable reads waiting for their read index, by tag (from the same counter).
    reads: HashMap<u64, tokio::sync::oneshot::Sender<Result<Lsn, String>>>,
    next_tag: u64,
    events: Option<mpsc::UnboundedSender<MemberEvent>>,
    /// Applied entries the log keeps (as the machine keeps them in memory).
    tail_entries: u64,
    /// What a link to a member added later needs.
    link_parts: (Credentials, mpsc::Sender<u64>, CancellationToken),
}

impl Driver {
    async fn run(mut self, tick_every: Duration, inputs: Inputs, shutdown: CancellationToken) {
        let Inputs {
            mut inbound,
            mut proposals,
            mut unreachable,
            mut applied,
            mut control,
        } = inputs;
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lazy_save = tokio::time::interval(Duration::from_secs(1));
        loop {
            let event = tokio::select! {
                Some(p) = proposals.recv() => {
                    // Everything the writer queued meanwhile goes in the same ready: one fsync.
                    let mut batch = vec![p];
                    while batch.len() < 256 {
                        match proposals.try_recv() {
                            Ok(p) => batch.push(p),
                            Err(_) => break,
                        }
                    }
                    let commands = self.propose(batch);
                    if let Err(e) = self.perform(commands) {
                        self.fatal.report(crate::fatal::Fatal::Consensus(e));
                        return;
                    }
                    self.publish_status();
                    continue;
                }
                _ = tick.tick() => ConsensusEvent::Tick,
                Some(bytes) = inbound.recv() => ConsensusEvent::Received(bytes),
                Some(id) = unreachable.recv() => ConsensusEvent::Unreachable(id),
                Some(lsn) = applied.recv() => ConsensusEvent::Applied(lsn),
                Some(c) = control.recv() => match c {
                    Control::Transfer(id) => ConsensusEvent::TransferLeadership(id),
                    Control::ReadIndex(reply) => {
                        // Reads whose asker gave up are forgotten (a confirmation the
                        // machine dropped, say a message to the leader lost, never comes).
                        self.reads.retain(|_, r| !r.is_closed());
                        self.next_tag += 1;
                        self.reads.insert(self.next_tag, reply);
                        ConsensusEvent::ReadIndex { tag: self.next_tag }
                    }
                },
                _ = lazy_save.tick() => {
                    if self.dirty {
                        self.save();
                    }
                    if let Err(e) = self.retain() {
                        tracing::warn!("log retention: {e}");
                    }
                    continue;
                }
                _ = shutdown.cancelled() => {
                    if self.dirty {
                        self.save();
                    }
                    return;
                }
            };
            let commands = self.machine.handle(event);
            if let Err(e) = self.perform(commands) {
                self.fatal.report(crate::fatal::Fatal::Consensus(e));
                return;
            }
            self.publish_status();
        }
    }

    fn publish_status(&mut self) {
        let mut status = status_of(&self.machine, self.refused, self.last_refusal.clone());
        // A member removed from the cluster hears from no leader any more (it may not know).
        let me = self.file.member_id;
        let member = status.voters.contains(&me) || status.learners.contains(&me);
        let current = member
            && (status.role == Role::Leader
                || (status.leader.is_some() && status.applied >= status.commit));
        status.behind_since_ms = match (current, self.status.borrow().behind_since_ms) {
            (true, _) => None,
            (false, since) => Some(since.unwrap_or_else(crate::time::mono_ms)),
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }

    /// Hands proposals to the machine, in order: transactions together, a membership change
    /// at its place among them.
    fn propose(&mut self, batch: Vec<Proposal>) -> Vec<ConsensusCommand> {
        let mut out = Vec::new();
        let mut records = Vec::with_capacity(batch.len());
        for mut p in batch {
            match p.membership.take() {
                Some(m) => {
                    self.propose_records(std::mem::take(&mut records), &mut out);
                    self.propose_membership(p.at, m, &mut out);
                }
                None => records.push(p),
            }
        }
        self.propose_records(records, &mut out);
        out
    }

    /// A membership change, proposed only at the position the writer counted for it (so that
    /// its transactions after it keep their positions).
    fn propose_membership(
        &mut self,
        at: Position,
        m: MembershipProposal,
        out: &mut Vec<ConsensusCommand>,
    ) {
        let next = self.machine.next_position();
        let result = if next != at {
            Err(format!(
                "the change is for {at} but the next position is {next} (the leadership changed)"
            ))
        } else {
            let context =
                Bytes::from(serde_json::to_vec(&m.member).expect("a member context is JSON"));
            self.machine
                .change_membership(&m.change, context, out)
                .map_err(|e| e.to_string())
        };
        let _ = m.proposed.send(result);
    }

    /// Hands transactions to the machine together; their waiters wait under fresh tags.
    fn propose_records(&mut self, batch: Vec<Proposal>, out: &mut Vec<ConsensusCommand>) {
        if batch.is_empty() {
            return;
        }
        let mut proposals = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for p in batch {
            let Some(record) = p.record else {
                for (durability, reply) in p.waiters {
                    self.next_tag += 1;
                    match self.machine.watch(self.next_tag, p.at.lsn, durability, out) {
                        Ok(()) => {
                            self.waiting.insert(self.next_tag, reply);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(Unacknowledged::LeadershipLost(e.to_string())));
                        }
                    }
                }
                continue;
            };
            let mut tags = Vec::with_capacity(p.waiters.len());
            let mut mine = Vec::with_capacity(p.waiters.len());
            for (durability, reply) in p.waiters {
                self.next_tag += 1;
                tags.push((self.next_tag, durability));
                mine.push((self.next_tag, reply));
            }
            proposals.push((p.at, record, tags));
            replies.push(mine);
        }
        let results = self.machine.propose_batch(proposals, out);
        let mut refused = false;
        for (result, mine) in results.into_iter().zip(replies) {
            match result {
                Ok(()) => self.waiting.extend(mine),
                Err(e) => {
                    refused = true;
                    for (_, reply) in mine {
                        let _ = reply.send(Err(Unacknowledged::NotProposed(e.to_string())));
                    }
                }
            }
        }
        if refused {
            if let Some(events) = &self.events {
                let _ = events.send(MemberEvent::NotProposed);
            }
        }
    }

    /// Deletes the log segments that only hold entries the database has applied and that the
    /// consensus keeps in memory no longer (a peer that needs them gets a snapshot). The new
    /// base is saved in `cluster.json` before any file goes, so a restart never looks for a
    /// deleted entry.
    fn retain(&mut self) -> Result<(), String> {
        let applied = self.machine.applied().0;
        let keep_from = applied.saturating_sub(self.tail_entries) + 1;
        let segments = self.log.segments();
        // Whole segments before `keep_from`, never the active one.
        let removable = segments
            .iter()
            .take(segments.len().saturating_sub(1))
            .take_while(|s| s.last_lsn < keep_from)
            .count();
        if removable == 0 {
            return Ok(());
        }
        let new_first = segments[removable].first_lsn;
        let base = new_first - 1;
        if base <= self.file.base_lsn {
            return Ok(());
        }
        self.file.base_lsn = base;
        self.file.base_epoch = self.machine.epoch_history().epoch_at(base);
        tokio::task::block_in_place(|| self.file.save(&self.dir))
            .map_err(|e| format!("saving the log's new base: {e}"))?;
        self.dirty = false;
        *self.handle.file.lock().unwrap_or_else(|p| p.into_inner()) = self.file.clone();
        let removed = tokio::task::block_in_place(|| self.log.remove_before(new_first))
            .map_err(|e| e.to_string())?;
        tracing::debug!("log retention removed {removed} segments before lsn {new_first}");
        Ok(())
    }

    /// A committed membership change: a member added gets its entry in the member list (name
    /// and URL, from the change's context) and a link; a member removed loses both.
    fn membership_changed(&mut self, change: MemberChange, context: &[u8]) {
        match change {
            MemberChange::AddVoter(id) | MemberChange::AddLearner(id) => {
                let member: Option<MemberContext> = serde_json::from_slice(context).ok();
                let Some(member) = member.filter(|m| m.member_id == id) else {
                    if !self.file.members.contains_key(&id) {
                        tracing::warn!("member {id} was added without a name and URL: unreachable");
                    }
                    return;
                };
                tracing::info!(
                    "membership: {} ({}) is a {}",
                    member.name,
                    member.url,
                    if matches!(change, MemberChange::AddVoter(_)) {
                        "voter"
                    } else {
                        "learner"
                    }
                );
                self.file.highest_member_id = self.file.highest_member_id.max(id);
                let url_changed = self
                    .file
                    .members
                    .get(&id)
                    .is_none_or(|m| m.url != member.url);
                self.file.members.insert(
                    id,
                    super::state::Member {
                        name: member.name,
                        url: member.url.clone(),
                    },
                );
                if id != self.file.member_id && url_changed {
                    let (credentials, unreachable, shutdown) = self.link_parts.clone();
                    let link = spawn_link(id, &member.url, credentials, unreachable, shutdown);
                    self.links.insert(id, link);
                }
            }
            MemberChange::Remove(id) => {
                let name = self.file.members.remove(&id).map(|m| m.name);
                self.links.remove(&id);
                if id == self.file.member_id {
                    tracing::warn!(
                        "this member was removed from the cluster: it takes no part in it any \
                         more (its data directory can be deleted, or started afresh elsewhere)"
                    );
                } else {
                    tracing::info!("membership: {} left", name.unwrap_or(id.to_string()));
                }
            }
        }
    }

    fn save(&mut self) {
        match self.file.save(&self.dir) {
            Ok(()) => {
                self.dirty = false;
                *self.handle.file.lock().unwrap_or_else(|p| p.into_inner()) = self.file.clone();
            }
            Err(e) => {
                // The commit index only: the next save tries again.
                tracing::warn!("{e}");
            }
        }
    }

    /// Performs commands in order. `Err`: a failure after which this member cannot go on
    /// safely (its log or hard state is not what it told its peers); the node stops.
    fn perform(&mut self, commands: Vec<ConsensusCommand>) -> Result<(), String> {
        let mut queue: std::collections::VecDeque<ConsensusCommand> = commands.into();
        while let Some(c) = queue.pop_front() {
            match c {
                ConsensusCommand::Send { to, bytes } => {
                    if let Some(link) = self.links.get(&to) {
                        link.send(bytes);
                    }
                }
                ConsensusCommand::Truncate { from, discarded } => {
                    if !discarded.is_empty() {
                        tracing::warn!(
                            "{} entries from lsn {from} on were replaced by the leader's",
                            discarded.len()
                        );
                    }
                    if let Some(events) = &self.events {
                        let _ = events.send(MemberEvent::Discarded(discarded));
                    }
                    tokio::task::block_in_place(|| self.log.truncate_from(from.0))
                        .map_err(|e| format!("cutting the log at {from}: {e}"))?;
                    self.last_chain = self.chain_before(from)?;
                }
                ConsensusCommand::Persist {
                    entries,
                    hard_state,
                    epochs,
                } => self.persist(&entries, hard_state, epochs)?,
                ConsensusCommand::InstallSnapshot { at, .. } => {
                    tokio::task::block_in_place(|| self.log.reset(at.lsn.0))
                        .map_err(|e| format!("restarting the log after {at}: {e}"))?;
                    self.file.base_lsn = at.lsn.0;
                    self.file.base_epoch = at.epoch.0;
                    self.file.commit = self.file.commit.max(at.lsn.0);
                    self.dirty = true;
                    if let Some(events) = &self.events {
                        let _ = events.send(MemberEvent::InstallSnapshot(at));
                    }
                }
                ConsensusCommand::Apply(entries) => match &self.events {
                    Some(events) => {
                        let _ = events.send(MemberEvent::Apply(entries));
                    }
                    // No database: committed entries count as applied.
                    None => {
                        if let Some(last) = entries.last() {
                            queue.extend(self.machine.handle(ConsensusEvent::Applied(last.lsn)));
                        }
                    }
                },
                ConsensusCommand::Membership {
                    voters,
                    learners,
                    change,
                    context,
                } => {
                    self.file.voters = voters;
                    self.file.learners = learners;
                    self.membership_changed(change, &context);
                    self.file
                        .save(&self.dir)
                        .map_err(|e| format!("saving the membership: {e}"))?;
                    self.dirty = false;
                    *self.handle.file.lock().unwrap_or_else(|p| p.into_inner()) = self.file.clone();
                }
                ConsensusCommand::RoleChanged {
                    role,
                    epoch,
                    leader,
                } => {
                    tracing::info!(
                        "consensus: {} in epoch {epoch}; the leader is {}",
                        role.as_str(),
                        leader.map_or("unknown".into(), |l| format!("member {l}"))
                    );
                    if let Some(events) = &self.events {
                        let _ = events.send(MemberEvent::Role {
                            role,
                            epoch,
                            leader,
                        });
                    }
                }
                ConsensusCommand::Refused { reason } => {
                    self.refused += 1;
                    if self.last_refusal.as_deref() != Some(reason.as_str()) {
                        tracing::warn!("consensus message refused: {reason}");
                    }
                    self.last_refusal = Some(reason);
                }
                ConsensusCommand::Acked(tags) => {
                    for tag in tags {
                        if let Some(reply) = self.waiting.remove(&tag) {
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
                ConsensusCommand::Abandoned { tags, reason } => {
                    for tag in tags {
                        if let Some(reply) = self.waiting.remove(&tag) {
                            let _ = reply.send(Err(Unacknowledged::LeadershipLost(reason.clone())));
                        }
                    }
                }
                ConsensusCommand::ReadReady { tag, lsn } => {
                    if let Some(reply) = self.reads.remove(&tag) {
                        let _ = reply.send(Ok(lsn));
                    }
                }
                ConsensusCommand::ReadFailed { tag, reason } => {
                    if let Some(reply) = self.reads.remove(&tag) {
                        let _ = reply.send(Err(reason));
                    }
                }
            }
        }
        Ok(())
    }

    fn persist(
        &mut self,
        entries: &[LogEntry],
        hard_state: Option<(u64, u64, u64)>,
        epochs: Option<Vec<(u64, u64)>>,
    ) -> Result<(), String> {
        if !entries.is_empty() {
            let mut chain = self.last_chain;
            let log = self.log.clone();
            let mut records = Vec::with_capacity(entries.len());
            for e in entries {
                let (record, after) =
                    record_of_entry(e, chain).map_err(|e| format!("an entry to persist: {e}"))?;
                chain = after;
                records.push(record);
            }
            tokio::task::block_in_place(|| {
                for r in &records {
                    log.append(r)?;
                }
                log.sync()
            })
            .map_err(|e| format!("persisting entries: {e}"))?;
            self.last_chain = chain;
        }
        let mut must_sync = false;
        if let Some((term, vote, commit)) = hard_state {
            must_sync |= (term, vote) != (self.file.term, self.file.vote);
            self.file.term = term;
            self.file.vote = vote;
            self.file.commit = self.file.commit.max(commit);
            self.dirty = true;
        }
        if let Some(epochs) = epochs {
            must_sync |= epochs != self.file.epochs;
            self.file.epochs = epochs;
            self.dirty = true;
        }
        if must_sync {
            tokio::task::block_in_place(|| self.file.save(&self.dir))
                .map_err(|e| format!("saving the hard state: {e}"))?;
            self.dirty = false;
            *self.handle.file.lock().unwrap_or_else(|p| p.into_inner()) = self.file.clone();
        }
        Ok(())
    }

    /// The chain of the last transaction before `lsn` (after a truncation): every record
    /// carries the chain as of itself (a consensus record, its transaction's before it).
    fn chain_before(&self, lsn: Lsn) -> Result<Chain, String> {
        if lsn.0 <= self.file.base_lsn + 1 {
            // The base's chain is its database's; until the database is driven from here,
            // entries carry no transactions and the chain stays at zero.
            return Ok(Chain(0));
        }
        let at = lsn.0 - 1;
        let raw = self
            .log
            .read(at, 1, usize::MAX)
            .map_err(|e| format!("reading lsn {at}: {e}"))?;
        match raw.first() {
            Some(raw) => entry_of_record(raw)
                .map(|(_, chain)| chain)
                .map_err(|e| e.to_string()),
            None => Ok(Chain(0)),
        }
    }
}
