//! A cluster member's database host: it applies what the consensus commits, and switches the
//! node between following and leading as elections go.
//!
//! - **Following**: the database is a physical replica (the follower's apply thread owns its
//!   write connection). Committed transactions are applied page for page; Raft's own entries
//!   and what the database already holds are stepped over. A member without a database, or
//!   whose database holds a transaction the history dropped, installs the leader's snapshot.
//! - **Leading**: once the entry that starts its epoch is committed and applied (every earlier
//!   entry is then committed and in the database), the member opens the database as a
//!   `LeaderDb` and starts the writer, which proposes each transaction to the consensus task.
//!   Committed entries then move the head that learners, change feeds and readers see.
//! - **Stepping down**: the writer stops (requests waiting for their durability are answered
//!   as of unknown outcome), the database reopens as a replica, and the member follows.
//!
//! Transactions this member executed as leader that the new leader's history dropped are saved
//! to `divergent.ndjson` in the data directory (see docs/failover.md).

use super::driver::{ClusterHandle, MemberEvent};
use crate::fatal::{Fatal, FatalSender};
use crate::follower::apply::{self, ApplyJob, SharedReplica};
use crate::follower::{FollowerHost, FollowerShared};
use crate::leader::{self, Head, LeaderState, RecentRecords, WriteJob};
use crate::node::{Node, Role};
use flotilla_core::consensus::{EntryKind, LogEntry, Role as ConsensusRole};
use flotilla_core::FollowerTracker;
use flotilla_log::Log;
use flotilla_store::{DbSettings, LeaderDb};
use flotilla_types::{Epoch, Lsn, Position};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};

pub struct MemberHost {
    pub node: Arc<Node>,
    pub follower: Arc<FollowerHost>,
    pub shared: Arc<FollowerShared>,
    pub handle: Arc<ClusterHandle>,
    pub log: Arc<Log>,
    pub settings: DbSettings,
    pub fatal: FatalSender,
    pub dir: PathBuf,
}

struct Leading {
    state: Arc<LeaderState>,
    writer: std::thread::JoinHandle<()>,
    /// Stops the pipelines' delivery workers and the links to peer data centres when this
    /// member steps down (the next leader runs them, from the cursors their targets keep and
    /// the link positions the database keeps).
    pipelines_stop: tokio_util::sync::CancellationToken,
}

struct Member {
    host: MemberHost,
    replica: SharedReplica,
    apply_tx: std::sync::mpsc::Sender<ApplyJob>,
    /// The last transaction the database holds.
    db_position: Position,
    leading: Option<Leading>,
    /// This member leads in this epoch and waits for the epoch's first entry to be applied.
    pending_epoch: Option<Epoch>,
    leader: Option<u64>,
    /// The database holds a transaction the history dropped: it is replaced by a snapshot.
    diverged: bool,
}

pub async fn run(host: MemberHost, mut events: mpsc::UnboundedReceiver<MemberEvent>) {
    let initial = host
        .shared
        .initial_db
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let db_position = initial
        .as_ref()
        .map(|d| d.meta().position)
        .unwrap_or_default();
    let replica: SharedReplica = Arc::new(Mutex::new(initial));
    let apply_tx = apply::spawn(
        host.follower.db_path.clone(),
        host.follower.replica.clone(),
        replica.clone(),
    );
    let mut m = Member {
        host,
        replica,
        apply_tx,
        db_position,
        leading: None,
        pending_epoch: None,
        leader: None,
        diverged: false,
    };
    m.host.shared.update(|s| s.phase = "electing");
    let mut check = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let event = tokio::select! {
            Some(e) = events.recv() => e,
            _ = check.tick() => {
                // Elected, but not leading with its database (it must copy someone's): the
                // hand-over is asked again until another member leads.
                let status = m.host.handle.status.borrow().clone();
                if status.role == ConsensusRole::Leader && m.leading.is_none() && m.pending_epoch.is_none() {
                    m.hand_over();
                }
                continue;
            }
            _ = m.host.node.shutdown.cancelled() => {
                m.stop_leading().await;
                return;
            }
        };
        if let Err(e) = m.handle(event).await {
            m.host.fatal.report(Fatal::Consensus(e));
            return;
        }
    }
}

impl Member {
    fn leader_url(&self) -> Option<String> {
        let id = self.leader?;
        self.host
            .handle
            .file()
            .members
            .get(&id)
            .map(|m| m.url.clone())
    }

    async fn handle(&mut self, event: MemberEvent) -> Result<(), String> {
        match event {
            MemberEvent::Role {
                role,
                epoch,
                leader,
            } => {
                self.leader = leader;
                if role == ConsensusRole::Leader {
                    self.pending_epoch = Some(epoch);
                    if self.leading.is_none() {
                        self.show_follower();
                    }
                } else {
                    self.pending_epoch = None;
                    if self.leading.is_some() {
                        tracing::warn!("this member no longer leads (epoch {epoch})");
                        self.stop_leading().await;
                    }
                    self.show_follower();
                }
            }
            MemberEvent::Apply(entries) => {
                let Some(last) = entries.last().map(|e| e.lsn) else {
                    return Ok(());
                };
                if let Some(l) = &self.leading {
                    advance_head(l, &self.host.node, &entries);
                } else {
                    self.apply(&entries).await;
                }
                let _ = self.host.handle.applied.send(last);
                if let Some(epoch) = self.pending_epoch {
                    let started = entries.iter().find(|e| {
                        e.epoch == epoch && e.kind == EntryKind::Normal && e.data.is_empty()
                    });
                    if let Some(start) = started {
                        self.pending_epoch = None;
                        self.start_leading(epoch, start.lsn.next()).await?;
                    }
                }
            }
            MemberEvent::NotProposed => {
                if self.leading.is_some() {
                    // The database holds a transaction the log does not: this member cannot go
                    // on leading with it. It stops, hands the leadership on, and copies the
                    // new leader's database.
                    tracing::warn!(
                        "a transaction executed here was not replicated (the leadership is \
                         moving): this member stops leading and copies the new leader's database"
                    );
                    self.stop_leading().await;
                    self.diverged = true;
                    self.hand_over();
                }
            }
            MemberEvent::InstallSnapshot(at) => {
                tracing::info!("the leader sends a snapshot at {at}: installing its database");
                self.bootstrap().await;
            }
            MemberEvent::Discarded(entries) => {
                self.save_divergent(&entries);
                if entries.iter().any(|e| e.lsn <= self.db_position.lsn) {
                    // Transactions this database holds are not in the history: it is
                    // replaced by the leader's.
                    self.diverged = true;
                }
            }
        }
        Ok(())
    }

    fn show_follower(&self) {
        // While this member still leads the consensus but not the database (handing over), it
        // names no leader: clients wait ("retry shortly") instead of being sent back here.
        let url = if self.leader == Some(self.host.handle.member_id) {
            String::new()
        } else {
            self.leader_url().unwrap_or_default()
        };
        let current = self.host.node.role();
        if let Role::Follower { leader_url, .. } = &*current {
            if *leader_url == url {
                return;
            }
        }
        self.host.node.role.store(Arc::new(Role::Follower {
            leader_url: url,
            state: self.host.shared.clone(),
        }));
    }

    /// Applies committed transactions to the replica; the database's position then counts as
    /// committed (readers see it) once the committed entries reach it.
    async fn apply(&mut self, entries: &[LogEntry]) {
        self.apply_committed(entries).await;
        let committed = entries.last().map_or(Lsn(0), |e| e.lsn);
        if !self.diverged && committed >= self.db_position.lsn {
            self.host.node.position.send_if_modified(|p| {
                let moved = *p < self.db_position;
                if moved {
                    *p = self.db_position;
                }
                moved
            });
        }
    }

    async fn apply_committed(&mut self, entries: &[LogEntry]) {
        // The entry at the database's own position must be the transaction it holds: a member
        // that executed a transaction as leader and crashed before its log held it has one the
        // history may not (then the history has something else, or nothing, there).
        if let Some(e) = entries.iter().find(|e| e.lsn == self.db_position.lsn) {
            let holds = e.kind == EntryKind::Normal
                && !e.data.is_empty()
                && e.epoch == self.db_position.epoch
                && record_chain(&e.data) == Some(self.db_chain());
            if !holds && self.db_position.lsn.0 > 0 {
                tracing::warn!(
                    "this database holds a transaction at {} that the cluster's history does not: \
                     it is replaced by the leader's",
                    self.db_position
                );
                self.diverged = true;
            }
        }
        let transactions = entries.iter().any(|e| {
            e.kind == EntryKind::Normal && !e.data.is_empty() && e.lsn > self.db_position.lsn
        });
        // A new cluster commits its first epoch's start before any database exists.
        if !transactions && !self.diverged {
            return;
        }
        if self.diverged || self.replica_missing() {
            self.bootstrap().await;
            if self.diverged || self.replica_missing() {
                // No leader to copy from yet (this member still leads the consensus while it
                // hands over): the next batch tries again.
                return;
            }
        }
        let mut records = Vec::new();
        for e in entries {
            if e.kind != EntryKind::Normal || e.data.is_empty() || e.lsn <= self.db_position.lsn {
                continue;
            }
            match flotilla_wire::decode_record(&e.data) {
                Ok(r) => records.push(r),
                Err(err) => {
                    tracing::error!("committed entry {} is damaged: {err}", e.lsn);
                    self.diverged = true;
                    return;
                }
            }
        }
        if records.is_empty() {
            return;
        }
        tracing::debug!(
            "applying {:?} on a database at {}",
            records
                .iter()
                .map(|r| (
                    r.position().to_string(),
                    r.pages
                        .as_ref()
                        .map(|p| p.pages.iter().map(|p| p.pgno).collect::<Vec<_>>())
                ))
                .collect::<Vec<_>>(),
            self.db_position
        );
        let replica = self.replica.clone();
        match tokio::task::block_in_place(|| apply::apply(&replica, &records)) {
            Ok((position, _)) => {
                self.db_position = position;
                self.host.node.position.send_replace(position);
                let counters = &self.host.node.counters;
                crate::metrics::Counters::add(&counters.applied_transactions, records.len() as u64);
                crate::metrics::Counters::add(&counters.apply_batches, 1);
                self.host.shared.update(|s| {
                    s.phase = "streaming";
                    s.received = position;
                    s.durable = position;
                    s.leader_head = s.leader_head.max(position);
                    s.behind_since_ms = None;
                });
            }
            Err(e) => {
                tracing::warn!("applying committed transactions failed: {e}; the database is replaced by the leader's");
                self.diverged = true;
            }
        }
    }

    /// The chain the database's meta row holds.
    fn db_chain(&self) -> flotilla_types::Chain {
        self.replica
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|d| d.meta().chain)
            .unwrap_or_default()
    }

    fn replica_missing(&self) -> bool {
        self.replica
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// Replaces the database with a snapshot of the leader's (bounded tries; the next apply
    /// tries again).
    async fn bootstrap(&mut self) {
        if self.leader == Some(self.host.handle.member_id) {
            return;
        }
        let Some(url) = self.leader_url() else {
            return;
        };
        self.host.shared.update(|s| s.phase = "bootstrapping");
        for attempt in 1..=5u64 {
            match crate::follower::bootstrap::bootstrap(
                self.host.follower.clone(),
                self.host.shared.clone(),
                url.clone(),
                self.apply_tx.clone(),
            )
            .await
            {
                Ok((position, _, _)) => {
                    self.db_position = position;
                    self.diverged = false;
                    self.host.node.position.send_replace(position);
                    self.host.shared.update(|s| s.phase = "streaming");
                    return;
                }
                Err(e) => {
                    tracing::warn!("bootstrap from {url} failed (try {attempt}): {e}");
                    self.host
                        .shared
                        .update(|s| s.last_error = Some(e.to_string()));
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                }
            }
        }
    }

    /// Whether the cluster's history holds a transaction (or a snapshot, which stands for
    /// some): then a database can only be copied, never made anew. Called when this member
    /// starts leading, so every entry in its log is committed.
    fn history_has_transactions(&self) -> Result<bool, String> {
        if self.host.handle.file().base_lsn > 0 {
            return Ok(true);
        }
        let stats = self.host.log.stats();
        let mut from = stats.first_lsn.max(1);
        while from <= stats.last_lsn {
            let batch = self
                .host
                .log
                .read(from, 1_000, 16 << 20)
                .map_err(|e| format!("reading the log: {e}"))?;
            if batch.is_empty() {
                break;
            }
            if batch.iter().any(|r| !flotilla_wire::is_consensus_record(r)) {
                return Ok(true);
            }
            from += batch.len() as u64;
        }
        Ok(false)
    }

    async fn start_leading(&mut self, epoch: Epoch, next: Lsn) -> Result<(), String> {
        // A database is made anew only for a cluster whose history holds no transaction yet:
        // a member elected without one (killed before its first copy) must not start an empty
        // history over the committed one — it hands over and copies instead.
        let new_cluster = self.replica_missing()
            && self.db_position == Position::ZERO
            && !self.host.follower.db_path.exists()
            && !tokio::task::block_in_place(|| self.history_has_transactions())?;
        if (self.diverged || self.replica_missing()) && !new_cluster {
            // Its log is complete, but its database must first be copied from someone else's:
            // it hands the leadership to the member that holds the most, and follows.
            tracing::warn!(
                "elected in epoch {epoch} with a database that does not hold the history: \
                 handing the leadership on"
            );
            self.hand_over();
            return Ok(());
        }
        // The replica lets go of the file; the writer opens it.
        let (tx, rx) = oneshot::channel();
        let _ = self.apply_tx.send(ApplyJob::Close(tx));
        let _ = rx.await;
        let node = self.host.node.clone();
        let cluster_id = self.host.handle.cluster_id.clone();
        let (db, created) = tokio::task::block_in_place(|| {
            LeaderDb::open(&node.db_path, &self.host.settings, || cluster_id.clone())
        })
        .map_err(|e| format!("opening the database to lead: {e}"))?;
        if created {
            tracing::info!(cluster_id = %self.host.handle.cluster_id, "created the cluster's database");
            let _ = node.identity.adopt_cluster(&self.host.handle.cluster_id);
            node.readers.reopen();
        }
        let mut db = db;
        tokio::task::block_in_place(|| db.capture_from_here())
            .map_err(|e| format!("reading the database's WAL to lead: {e}"))?;
        if node.config.multi_leader.is_none() {
            // (Members are checked when they start: this holds even so.)
            if let Some(dc) = tokio::task::block_in_place(|| db.data_centre())
                .map_err(|e| format!("reading the database's data centre: {e}"))?
            {
                return Err(format!(
                    "this cluster's database is data centre {dc}'s: a member started without \
                     --dc {dc} cannot lead it (its writes would never reach the other data \
                     centres)"
                ));
            }
        }
        let multi_leader = match &node.config.multi_leader {
            Some(ml) => {
                let known = tokio::task::block_in_place(|| db.data_centre())
                    .map_err(|e| format!("reading the database's data centre: {e}"))?;
                let holds_transactions = db.meta().position.lsn.0 > 0;
                Some(
                    self.data_centre_parts(known, holds_transactions, ml)
                        .await?,
                )
            }
            None => None,
        };
        let meta = db.meta().clone();
        let head = Head {
            position: meta.position,
            chain: meta.chain,
            commit_time_us: meta.commit_time_us,
        };
        let (head_tx, _) = watch::channel(head);
        let (jobs_tx, jobs_rx) = mpsc::channel::<WriteJob>(4096);
        let interrupt = Arc::new(Mutex::new(db.interrupt_handle()));
        let recent = Arc::new(RecentRecords::default());
        let followers_file = self.host.dir.join("followers.json");
        let state = Arc::new(LeaderState {
            writer: jobs_tx,
            log: self.host.log.clone(),
            head: head_tx.clone(),
            recent: recent.clone(),
            tracker: Mutex::new(FollowerTracker::new(leader::load_followers(
                &followers_file,
            ))),
            cluster_id: meta.cluster_id.clone(),
            // One incarnation per cluster, not per epoch: its leaders ship only committed
            // transactions, so learners follow each of them without a new bootstrap.
            incarnation: format!("cluster-{}", self.host.handle.cluster_id),
            epoch,
            followers_file,
            followers_saving: Mutex::new(()),
            feed_pins: Default::default(),
            trims: Default::default(),
            writer_interrupt: interrupt.clone(),
            replicated: Default::default(),
            gate: Default::default(),
        });
        let writer = leader::spawn_writer(
            leader::WriterParts {
                db,
                log: self.host.log.clone(),
                head: head_tx,
                recent,
                epoch,
                origin: node.config.id.clone(),
                counters: node.counters.clone(),
                fatal: self.host.fatal.clone(),
                trims: state.trims.clone(),
                settings: self.host.settings.clone(),
                interrupt,
                cluster: Some(leader::ClusterWriter {
                    proposals: self.host.handle.proposals.clone(),
                    next,
                    runtime: tokio::runtime::Handle::current(),
                }),
                gate: state.gate.clone(),
                multi_leader,
                collab: node.collab.clone(),
            },
            jobs_rx,
        );
        node.position.send_replace(meta.position);
        let pipelines: Arc<crate::pipeline::Pipelines> = Default::default();
        node.role.store(Arc::new(Role::Leader {
            state: state.clone(),
            pipelines: pipelines.clone(),
        }));
        let pipelines_stop = node.shutdown.child_token();
        tokio::spawn(crate::pipeline::manage(crate::pipeline::PipelineHost {
            leader: state.clone(),
            pipelines,
            readers: node.readers.clone(),
            counters: node.counters.clone(),
            declared: Arc::new(node.config.pipelines.clone()),
            allow: Arc::new(node.config.pipeline_allow.clone()),
            http: node.peers.http.clone(),
            shutdown: pipelines_stop.clone(),
        }));
        // A data centre's leader exchanges with its peers; the links stop when it steps down.
        if let Some(ml) = &node.config.multi_leader {
            for link in &node.exchange.links {
                tokio::spawn(crate::exchange::drive(
                    node.clone(),
                    link.clone(),
                    ml.dc.clone(),
                    ml.topology.forwards(),
                    pipelines_stop.clone(),
                ));
            }
        }
        tracing::info!("this member leads epoch {epoch}; writes start at lsn {next}");
        // With authentication on, a new cluster's first leader makes the first admin token
        // (it replicates to every member, as all tokens do).
        let n = node.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::auth::first_admin_token(&n).await {
                tracing::warn!("{e:#}");
            }
        });
        self.leading = Some(Leading {
            state,
            writer,
            pipelines_stop,
        });
        Ok(())
    }

    /// What the writer of a data centre's leader needs: its data centre and, the first time
    /// (no multi-leader tables yet), the deployment it joins — its peers', or a new one.
    async fn data_centre_parts(
        &self,
        known: Option<String>,
        holds_transactions: bool,
        ml: &crate::config::MultiLeaderConfig,
    ) -> Result<leader::DataCentreParts, String> {
        let deployment = match known {
            Some(dc) if dc != ml.dc.as_str() => {
                return Err(format!(
                    "this cluster's database is data centre {dc}'s, not {}'s: start its members \
                     with --dc {dc}",
                    ml.dc
                ))
            }
            // Kept in the database: the id given here is not used.
            Some(_) => String::new(),
            None if holds_transactions => {
                return Err(format!(
                    "this cluster's database was not a data centre's: --dc {} needs a new \
                     cluster (a database that already holds transactions cannot become a data \
                     centre: the others would never get what it holds)",
                    ml.dc
                ))
            }
            None => match crate::exchange::peers_deployment(&self.host.node.peers, ml).await {
                Some(d) => d,
                None => crate::exchange::new_deployment(),
            },
        };
        Ok(leader::DataCentreParts {
            dc: ml.dc.clone(),
            deployment,
            max_clock_drift_ms: ml.max_clock_drift_ms,
        })
    }

    /// Asks the consensus to hand the leadership to the voter that holds the most (when this
    /// member still leads it).
    fn hand_over(&self) {
        let status = self.host.handle.status.borrow().clone();
        if status.role != ConsensusRole::Leader {
            return;
        }
        let to = status
            .progress
            .iter()
            .filter(|p| p.voter && p.active)
            .max_by_key(|p| p.matched)
            .map(|p| p.id);
        if let Some(to) = to {
            let _ = self
                .host
                .handle
                .control
                .send(super::driver::Control::Transfer(to));
        }
    }

    async fn stop_leading(&mut self) {
        let Some(l) = self.leading.take() else {
            return;
        };
        self.show_follower();
        // Requests still queued are not executed: they were never part of any history.
        l.state.gate.close();
        l.pipelines_stop.cancel();
        l.state
            .writer_interrupt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .interrupt();
        let _ = l.state.writer.send(WriteJob::Stop).await;
        let _ = tokio::task::spawn_blocking(move || l.writer.join()).await;
        // The database goes back to the replica; what it holds beyond the commit index stays
        // until the history drops it (then it is replaced) or commits it.
        let (tx, rx) = oneshot::channel();
        let _ = self.apply_tx.send(ApplyJob::Open(tx));
        if let Ok(Ok(Some((position, _, _)))) = rx.await {
            self.db_position = position;
        }
    }

    /// Appends the transactions this member executed that the history dropped to
    /// `divergent.ndjson`: one line each, with its position and row changes.
    fn save_divergent(&self, entries: &[LogEntry]) {
        use std::io::Write;
        let me = self.host.node.config.id.as_str();
        let mut out = Vec::new();
        for e in entries {
            if e.kind != EntryKind::Normal || e.data.is_empty() {
                continue;
            }
            let Ok(r) = flotilla_wire::decode_record_rows(&e.data) else {
                continue;
            };
            if r.origin.as_str() != me {
                continue;
            }
            crate::api::changes::write_transaction(&mut out, &r, None);
        }
        if out.is_empty() {
            return;
        }
        let path = self.host.dir.join("divergent.ndjson");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&out).and_then(|_| f.sync_all()));
        match written {
            Ok(()) => tracing::warn!(
                "transactions this node committed as leader are not in the cluster's history: \
                 saved to {} (see docs/failover.md)",
                path.display()
            ),
            Err(e) => tracing::error!(
                "cannot save divergent transactions to {}: {e}",
                path.display()
            ),
        }
    }
}

/// The chain in an encoded transaction record's header.
fn record_chain(data: &[u8]) -> Option<flotilla_types::Chain> {
    data.get(18..26)
        .and_then(|b| b.try_into().ok())
        .map(|b| flotilla_types::Chain(u64::from_le_bytes(b)))
}

/// On the leader: committed entries move the head (learners, change feeds and readers see up
/// to it).
fn advance_head(l: &Leading, node: &Node, entries: &[LogEntry]) {
    let last_txn = entries
        .iter()
        .rev()
        .find(|e| e.kind == EntryKind::Normal && !e.data.is_empty());
    let Some(e) = last_txn else { return };
    let header = |at: usize| {
        e.data
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0)
    };
    let head = Head {
        position: e.position(),
        chain: flotilla_types::Chain(header(18)),
        commit_time_us: header(34),
    };
    l.state.head.send_replace(head);
    node.position.send_replace(head.position);
}
