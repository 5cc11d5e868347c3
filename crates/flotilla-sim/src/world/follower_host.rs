//! What the tokio node's follower driver does, for the simulated followers: performing the
//! session's commands (connect, send, apply in simulated time, bootstrap), crashes, and reads
//! with a position token.

use super::disk_image::{read_files, write_files};
use super::*;

impl World {
    pub(super) fn execute(&mut self, f: usize, cmd: FollowerCommand) -> anyhow::Result<()> {
        match cmd {
            FollowerCommand::Connect => {
                let fl = &self.followers[f];
                let tag = fl.session.connection();
                if self.now < fl.partitioned_until.max(fl.deaf_until) {
                    self.events.push_back((
                        f,
                        tag,
                        FollowerEvent::ConnectionLost {
                            reason: "partitioned".into(),
                        },
                    ));
                    return Ok(());
                }
                let conn = self.next_conn;
                self.next_conn += 1;
                self.accept_conn(conn, f, tag);
                self.followers[f].conn = Some(conn);
                self.events.push_back((f, tag, FollowerEvent::Connected));
            }
            FollowerCommand::RememberLeader { incarnation } => {
                self.followers[f].leader_incarnation = Some(incarnation);
            }
            FollowerCommand::Send(msg) => {
                if let Some(conn) = self.followers[f].conn {
                    if self.send(conn, Dir::ToLeader, msg.encode()) == Sent::ConnectionBroke {
                        self.close_conn(conn, "the connection broke")?;
                    }
                }
            }
            FollowerCommand::Disconnect => {
                if let Some(conn) = self.followers[f].conn.take() {
                    self.close_conn(conn, "follower disconnected")?;
                }
            }
            FollowerCommand::Apply(records) => {
                if records.len() > self.apply_batch.0 {
                    // Past the apply-batch bound: a physical follower finishing a message.
                    self.report.batches_extended += 1;
                }
                let done_at = self.now + self.rng.random_range(0..=self.apply_ms_max);
                self.followers[f].apply_in_flight = Some((done_at, records));
            }
            FollowerCommand::Flush { seq, .. } => {
                // The node's flush thread runs beside the apply thread: it makes durable what
                // was committed when it started.
                let files = read_files(&self.followers[f].path)?;
                let done_at = self.now + self.rng.random_range(0..=self.apply_ms_max);
                self.followers[f].flush_in_flight = Some((done_at, seq, files));
            }
            FollowerCommand::Bootstrap => {
                // The node's apply thread runs jobs in order: an apply in flight finishes first.
                if let Some((_, records)) = self.followers[f].apply_in_flight.take() {
                    self.perform_apply(f, records)?;
                }
                if self.now
                    < self.followers[f]
                        .partitioned_until
                        .max(self.followers[f].deaf_until)
                {
                    self.events.push_back((
                        f,
                        LOCAL,
                        FollowerEvent::BootstrapFailed {
                            reason: "partitioned".into(),
                        },
                    ));
                    return Ok(());
                }
                self.report.bootstraps += 1;
                let fl = &mut self.followers[f];
                if let Some(db) = fl.db.take() {
                    drop(db);
                }
                // The installed snapshot is flushed: a flush from before it is moot.
                fl.flush_in_flight = None;
                let reader = open_reader(&self.leader.path)?;
                // As the node does: received into the replica's snapshot target, then installed
                // (a logical replica is built from it).
                let settings = ReplicaSettings::new(fl.kind);
                let mut rx = SnapshotReceiver::new(&snapshot_target(fl.kind, &fl.path))?;
                stream(&reader, 1 << 16, |chunk| rx.feed(&chunk))??;
                let h = install_snapshot(rx, &fl.path, &settings)?;
                let same = match fl.kind {
                    LogKind::Physical => {
                        Some(digest_of(&fl.path)?)
                            == self.leader.history.get(&h.position.lsn.0).copied()
                    }
                    LogKind::Logical => {
                        Some(content_digest(&fl.path)?)
                            == self.leader.content.get(&h.position.lsn.0).copied()
                    }
                };
                ensure!(
                    same,
                    "{} bootstrapped at {} differs from the leader's history",
                    fl.id,
                    h.position
                );
                fl.db = Some(Replica::open(&fl.path, &settings)?.context("installed")?);
                fl.durable_image = Some(read_files(&fl.path)?);
                self.events.push_back((
                    f,
                    LOCAL,
                    FollowerEvent::BootstrapFinished {
                        position: h.position,
                        chain: h.chain,
                        cluster_id: h.cluster_id,
                    },
                ));
            }
        }
        Ok(())
    }

    /// Finishes the applies whose time has come.
    pub(super) fn finish_applies(&mut self) -> anyhow::Result<()> {
        for f in 0..self.followers.len() {
            if self.followers[f]
                .apply_in_flight
                .as_ref()
                .is_some_and(|(at, _)| *at <= self.now)
            {
                let (_, records) = self.followers[f].apply_in_flight.take().expect("checked");
                self.perform_apply(f, records)?;
            }
        }
        Ok(())
    }

    /// Finishes the flushes whose time has come: what they covered is now what a power loss
    /// leaves.
    pub(super) fn finish_flushes(&mut self) -> anyhow::Result<()> {
        for f in 0..self.followers.len() {
            let fl = &mut self.followers[f];
            if fl
                .flush_in_flight
                .as_ref()
                .is_some_and(|(at, ..)| *at <= self.now)
            {
                let (_, seq, files) = fl.flush_in_flight.take().expect("checked");
                fl.durable_image = Some(files);
                self.report.flushes += 1;
                self.events
                    .push_back((f, LOCAL, FollowerEvent::Flushed { seq }));
            }
        }
        Ok(())
    }

    /// Applies a batch in one local transaction (committed without an fsync, as the node does:
    /// durable after the next flush) and checks the result against the leader's history.
    pub(super) fn perform_apply(
        &mut self,
        f: usize,
        records: Vec<LogRecord>,
    ) -> anyhow::Result<()> {
        if self.now < self.followers[f].disk_full_until {
            self.events.push_back((
                f,
                LOCAL,
                FollowerEvent::ApplyFailed {
                    reason: "database or disk is full (simulated)".into(),
                    disk_full: true,
                },
            ));
            return Ok(());
        }
        let fl = &mut self.followers[f];
        let db = fl.db.as_mut().context("apply without a database")?;
        match db.apply(&records) {
            Ok(meta) => {
                let (position, chain) = (meta.position, meta.chain);
                self.report.applies += 1;
                let same = match fl.kind {
                    LogKind::Physical => {
                        Some(digest_of(&fl.path)?)
                            == self.leader.history.get(&position.lsn.0).copied()
                    }
                    LogKind::Logical => {
                        Some(content_digest(&fl.path)?)
                            == self.leader.content.get(&position.lsn.0).copied()
                    }
                };
                ensure!(
                    same,
                    "{} at {position} differs from the leader's state at that lsn",
                    fl.id
                );
                self.events
                    .push_back((f, LOCAL, FollowerEvent::Applied { position, chain }));
            }
            Err(e) => {
                let reason = e.to_string();
                self.events.push_back((
                    f,
                    LOCAL,
                    FollowerEvent::ApplyFailed {
                        reason,
                        disk_full: false,
                    },
                ));
            }
        }
        Ok(())
    }

    /// A client that wrote and got the acknowledged position as its token reads on follower `f`
    /// with it (read-your-writes). The node answers only once it has applied the token (until
    /// then the read waits); the answer comes from one read snapshot, which must hold at least
    /// the token's position and equal the leader's state at the position it reports.
    pub(super) fn read_with_token(&mut self, f: usize) -> anyhow::Result<()> {
        let token = self.rng.random_range(1..=self.leader.acked);
        let fl = &self.followers[f];
        if fl.db.is_none() {
            return Ok(());
        }
        self.report.token_reads += 1;
        if fl.session.applied().is_none_or(|p| p.lsn.0 < token) {
            self.report.token_reads_waiting += 1;
            return Ok(());
        }
        // Nothing writes while this runs (the simulation is one thread), so the statements
        // below read one state, as the node's single read transaction does.
        let conn = open_reader(&fl.path)?;
        let at = flotilla_store::read_meta(&conn)?
            .context("a replica without its position")?
            .position
            .lsn
            .0;
        ensure!(
            at >= token,
            "{} answered a read with token lsn {token} from a snapshot at lsn {at}",
            fl.id
        );
        let same = match fl.kind {
            LogKind::Physical => Some(page_digest(&conn)?) == self.leader.history.get(&at).copied(),
            LogKind::Logical => {
                Some(content_digest_of(&conn)?) == self.leader.content.get(&at).copied()
            }
        };
        ensure!(
            same,
            "a read on {} at lsn {at} saw a state the leader never had",
            fl.id
        );
        Ok(())
    }

    /// The follower's clock (it may run ahead of the simulation's).
    pub(super) fn follower_now(&self, f: usize) -> u64 {
        self.now + self.followers[f].clock_skew_ms
    }

    /// Follower `f`'s process dies; with `power_loss` its machine too, and its database goes
    /// back to what its last flush made durable.
    pub(super) fn crash_follower(&mut self, f: usize, power_loss: bool) -> anyhow::Result<()> {
        self.report.follower_crashes += 1;
        // The leader sees the connection close (the OS closes a killed process's sockets).
        if let Some(conn) = self.followers[f].conn.take() {
            self.close_conn(conn, "the follower crashed")?;
        }
        self.events.retain(|(g, _, _)| *g != f);
        // Nothing still in flight to the old process reaches the new one.
        self.closed_conns.retain(|_, (g, _)| *g != f);
        let fl = &mut self.followers[f];
        if fl.apply_in_flight.take().is_some() {
            self.report.lost_applies += 1;
        }
        if let Some(db) = fl.db.take() {
            self.graveyard.push(Box::new(db));
        }
        fl.flush_in_flight = None;
        if power_loss {
            if let Some(files) = &fl.durable_image {
                self.report.follower_power_losses += 1;
                fl.generation += 1;
                let name = format!("{}-{}.sqlite", fl.id, fl.generation);
                fl.path = fl.path.with_file_name(name);
                write_files(&fl.path, files)?;
            }
        }
        // Opening flushes: from here on what it holds is durable.
        let db = Replica::open(&fl.path, &ReplicaSettings::new(fl.kind))?;
        fl.durable_image = Some(read_files(&fl.path)?);
        let local = db.as_ref().map(|d| (d.meta().position, d.meta().chain));
        let held = local.map_or(0, |l| l.0.lsn.0);
        ensure!(
            held >= fl.acked_durable,
            "{} acknowledged lsn {} as durable but holds only lsn {held} after a crash",
            fl.id,
            fl.acked_durable
        );
        let cluster = db.as_ref().map(|d| d.meta().cluster_id.clone());
        fl.db = db;
        self.report.stale_events += fl.session.stale_events();
        fl.session = FollowerSession::new(
            follower_config(&fl.id, fl.kind, self.apply_batch),
            local,
            cluster,
        )
        .with_leader_incarnation(fl.leader_incarnation.clone());
        let now = self.follower_now(f);
        let cmds = self.followers[f].session.start(now);
        for c in cmds {
            self.execute(f, c)?;
        }
        Ok(())
    }
}
