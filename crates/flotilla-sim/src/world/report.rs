//! What a seed did: the counts a campaign adds up and prints.

/// What one seed did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub seed: u64,
    pub commits: u64,
    pub sim_ms: u64,
    pub messages: u64,
    pub dropped: u64,
    pub flipped: u64,
    /// Messages held up to 1.5 s (what followed them waited).
    pub stalled: u64,
    pub follower_crashes: u64,
    pub leader_crashes: u64,
    pub bootstraps: u64,
    pub applies: u64,
    pub log_damage: u64,
    /// Messages lost in one-way partitions.
    pub blackholed: u64,
    /// Leader power losses: the database lost its newest commits and was completed from the log.
    pub power_losses: u64,
    /// Leader crashes in the middle of a log append, leaving a torn record.
    pub torn_appends: u64,
    /// Follower applies lost in flight by a crash (not committed yet).
    pub lost_applies: u64,
    /// Follower crashes that were power losses: the database went back to its last flush.
    pub follower_power_losses: u64,
    /// Flushes that made a follower's applied batches durable.
    pub flushes: u64,
    pub disk_full: u64,
    pub clock_jumps: u64,
    /// Reads on followers with a position token (read-your-writes), and how many of them would
    /// have waited for the follower to reach the token.
    pub token_reads: u64,
    pub token_reads_waiting: u64,
    /// Requests committed in a group with others (group commit).
    pub grouped_requests: u64,
    /// Log segments deleted by retention.
    pub segments_removed: u64,
    /// Raft entries (a cluster's epoch starts) in the leader's log, which followers skip.
    pub consensus_records: u64,
    /// The most records a follower held waiting to be applied (bounded by the window).
    pub peak_pending: u64,
    /// Events of earlier connections that follower sessions ignored.
    pub stale_events: u64,
    /// Apply batches that went past the follower's batch bound to end where a message ended.
    pub batches_extended: u64,
}

impl Report {
    /// Adds another seed's counts to these totals.
    pub fn add(&mut self, r: &Report) {
        self.commits += r.commits;
        self.sim_ms += r.sim_ms;
        self.messages += r.messages;
        self.dropped += r.dropped;
        self.flipped += r.flipped;
        self.stalled += r.stalled;
        self.follower_crashes += r.follower_crashes;
        self.leader_crashes += r.leader_crashes;
        self.bootstraps += r.bootstraps;
        self.applies += r.applies;
        self.log_damage += r.log_damage;
        self.blackholed += r.blackholed;
        self.power_losses += r.power_losses;
        self.torn_appends += r.torn_appends;
        self.lost_applies += r.lost_applies;
        self.follower_power_losses += r.follower_power_losses;
        self.flushes += r.flushes;
        self.disk_full += r.disk_full;
        self.clock_jumps += r.clock_jumps;
        self.token_reads += r.token_reads;
        self.token_reads_waiting += r.token_reads_waiting;
        self.grouped_requests += r.grouped_requests;
        self.segments_removed += r.segments_removed;
        self.consensus_records += r.consensus_records;
        self.peak_pending = self.peak_pending.max(r.peak_pending);
        self.stale_events += r.stale_events;
        self.batches_extended += r.batches_extended;
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} commits, {} applies, {} messages ({} broke their connection, {} bit-flipped, \
             {} stalled, {} lost in one-way partitions), {} follower crashes ({} applies lost in flight, {} power losses), \
             {} leader crashes ({} power losses, {} torn appends), {} log records damaged at \
             rest, {} disk-full episodes, {} clock jumps, {} bootstraps, {} reads with a position \
             token ({} waiting), {} requests in group commits, {} log segments removed by \
             retention, {} Raft entries skipped in the log, at most {} records pending on a follower, {} stale connection events ignored, {} \
             apply batches extended to the end of their message, {} follower flushes, {:.0} \
             simulated s",
            self.commits,
            self.applies,
            self.messages,
            self.dropped,
            self.flipped,
            self.stalled,
            self.blackholed,
            self.follower_crashes,
            self.lost_applies,
            self.follower_power_losses,
            self.leader_crashes,
            self.power_losses,
            self.torn_appends,
            self.log_damage,
            self.disk_full,
            self.clock_jumps,
            self.bootstraps,
            self.token_reads,
            self.token_reads_waiting,
            self.grouped_requests,
            self.segments_removed,
            self.consensus_records,
            self.peak_pending,
            self.stale_events,
            self.batches_extended,
            self.flushes,
            self.sim_ms as f64 / 1000.0
        )
    }
}
