use super::*;

/// Three members in one loop; messages go through a queue the test controls.
struct Trio {
    members: Vec<Consensus>,
    /// (to, bytes) in flight.
    net: Vec<(u64, Vec<u8>)>,
    /// Members cut off: their messages in and out vanish.
    cut: Vec<u64>,
    /// What each member persisted, applied, and was told.
    log: Vec<Vec<LogEntry>>,
    applied: Vec<Vec<LogEntry>>,
    acked: Vec<u64>,
    abandoned: Vec<u64>,
    discarded: Vec<LogEntry>,
}

fn config(id: u64) -> ConsensusConfig {
    ConsensusConfig {
        election_ticks: 10,
        election_ticks_max: 11,
        ..ConsensusConfig::new(id)
    }
}

impl Trio {
    fn new() -> Trio {
        let members = (1..=3)
            .map(|id| Consensus::new(config(id), "c", Recovered::fresh(vec![1, 2, 3])).unwrap())
            .collect();
        Trio {
            members,
            net: Vec::new(),
            cut: Vec::new(),
            log: vec![Vec::new(); 3],
            applied: vec![Vec::new(); 3],
            acked: Vec::new(),
            abandoned: Vec::new(),
            discarded: Vec::new(),
        }
    }

    fn take(&mut self, from: u64, commands: Vec<ConsensusCommand>) {
        let i = (from - 1) as usize;
        for c in commands {
            match c {
                ConsensusCommand::Send { to, bytes }
                    if !self.cut.contains(&from) && !self.cut.contains(&to) =>
                {
                    self.net.push((to, bytes));
                }
                ConsensusCommand::Truncate { from, discarded } => {
                    self.log[i].retain(|e| e.lsn < from);
                    self.discarded.extend(discarded);
                }
                ConsensusCommand::Persist { entries, .. } => self.log[i].extend(entries),
                ConsensusCommand::Apply(entries) => {
                    let last = entries.last().map(|e| e.lsn);
                    self.applied[i].extend(entries);
                    if let Some(lsn) = last {
                        let more = self.members[i].handle(ConsensusEvent::Applied(lsn));
                        self.take(from, more);
                    }
                }
                ConsensusCommand::Acked(tags) => self.acked.extend(tags),
                ConsensusCommand::Abandoned { tags, .. } => self.abandoned.extend(tags),
                _ => {}
            }
        }
    }

    /// Delivers everything in flight (and what that causes), then ticks everyone `ticks` times.
    fn run(&mut self, ticks: usize) {
        for _ in 0..=ticks {
            self.deliver();
            for id in 1..=3u64 {
                let out = self.members[(id - 1) as usize].handle(ConsensusEvent::Tick);
                self.take(id, out);
            }
        }
    }

    fn leader(&self) -> Option<u64> {
        self.members
            .iter()
            .filter(|m| !self.cut.contains(&m.id()))
            .find(|m| m.role() == Role::Leader)
            .map(|m| m.id())
    }

    /// Ticks the members that are not cut off, unevenly (a fixed pseudo-random pattern: with
    /// fixed election timeouts, even ticking would split every vote), until one of them leads.
    fn elect(&mut self) -> u64 {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..500 {
            for id in 1..=3u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if self.cut.contains(&id) || x.is_multiple_of(3) {
                    continue;
                }
                let out = self.members[(id - 1) as usize].handle(ConsensusEvent::Tick);
                self.take(id, out);
                self.deliver();
            }
            if let Some(l) = self.leader() {
                return l;
            }
        }
        panic!("no leader was elected: {:?}", self.members);
    }

    fn deliver(&mut self) {
        let mut rounds = 0;
        while !self.net.is_empty() && rounds < 10_000 {
            rounds += 1;
            let (to, bytes) = self.net.remove(0);
            if self.cut.contains(&to) {
                continue;
            }
            let out = self.members[(to - 1) as usize].handle(ConsensusEvent::Received(bytes));
            self.take(to, out);
        }
    }

    fn propose(&mut self, on: u64, tag: u64, durability: Durability) -> Position {
        let m = &mut self.members[(on - 1) as usize];
        let at = m.next_position();
        let mut out = Vec::new();
        m.propose(
            at,
            Bytes::from(format!("txn{tag}")),
            &[(tag, durability)],
            &mut out,
        )
        .unwrap();
        self.take(on, out);
        at
    }
}

#[test]
fn a_leader_is_elected_and_entries_apply_everywhere_in_order() {
    let mut t = Trio::new();
    let l = t.elect();
    let epoch = t.members[(l - 1) as usize].epoch();
    assert!(epoch.0 >= 1);
    for tag in 1..=5 {
        t.propose(l, tag, Durability::Quorum);
    }
    t.run(2);
    assert_eq!(t.acked, vec![1, 2, 3, 4, 5]);
    let data = |m: usize| -> Vec<Bytes> {
        t.applied[m]
            .iter()
            .filter(|e| !e.data.is_empty())
            .map(|e| e.data.clone())
            .collect()
    };
    assert_eq!(data(0).len(), 5);
    assert_eq!(data(0), data(1));
    assert_eq!(data(0), data(2));
    // The term's empty entry comes first; LSNs are consecutive, and every entry carries its epoch.
    let lsns: Vec<u64> = t.applied[1].iter().map(|e| e.lsn.0).collect();
    assert_eq!(lsns, (1..=6).collect::<Vec<_>>());
    assert!(t.applied[1].iter().all(|e| e.epoch == epoch));
}

#[test]
fn durability_decides_when_a_request_is_acknowledged() {
    let mut t = Trio::new();
    let l = t.elect();
    let others: Vec<u64> = (1..=3).filter(|&i| i != l).collect();
    // Both followers cut off: async is acknowledged on the leader's persist alone; quorum and
    // semi-sync wait.
    t.cut = others.clone();
    t.propose(l, 10, Durability::Async);
    t.propose(l, 11, Durability::Quorum);
    t.propose(l, 12, Durability::SemiSync);
    t.run(1);
    assert_eq!(t.acked, vec![10]);
    // One follower back: a quorum, and one copy for semi-sync.
    t.cut = vec![others[1]];
    t.run(3);
    assert_eq!(t.acked, vec![10, 11, 12]);
}

#[test]
fn a_deposed_leaders_unreplicated_entries_are_discarded_and_its_waiters_abandoned() {
    let mut t = Trio::new();
    let old = t.elect();
    let o = (old - 1) as usize;
    t.propose(old, 1, Durability::Quorum);
    t.run(2);
    assert_eq!(t.acked, vec![1]);
    // The leader is cut off and takes two writes nobody else sees.
    t.cut = vec![old];
    let lost_async = t.propose(old, 2, Durability::Async);
    t.propose(old, 3, Durability::Quorum);
    assert_eq!(
        t.acked,
        vec![1, 2],
        "async is acknowledged on the leader's own fsync"
    );
    // The others elect a new leader, which commits writes of its own.
    let new = t.elect();
    let n = (new - 1) as usize;
    assert_ne!(new, old);
    assert!(t.members[n].epoch() > t.members[o].epoch());
    t.propose(new, 4, Durability::Quorum);
    t.run(2);
    assert!(t.acked.contains(&4));
    // The old leader rejoins: it learns the new epoch, abandons what waited, and its two
    // entries are replaced by the new leader's.
    t.cut.clear();
    t.run(25);
    assert_eq!(t.members[o].role(), Role::Follower);
    assert_eq!(t.members[o].leader(), Some(new));
    assert_eq!(t.abandoned, vec![3]);
    let discarded: Vec<Position> = t.discarded.iter().map(|e| e.position()).collect();
    assert!(discarded.contains(&lost_async), "{discarded:?}");
    assert_eq!(
        t.log[o], t.log[n],
        "the old leader's log is the new leader's"
    );
    assert!(!t.applied[o].iter().any(|e| e.data == "txn2"));
}

#[test]
fn proposals_must_land_where_the_writer_executed_them() {
    let mut t = Trio::new();
    let mut out = Vec::new();
    let follower = &mut t.members[1];
    let at = follower.next_position();
    assert!(matches!(
        follower.propose(at, Bytes::from("x"), &[], &mut out),
        Err(ProposeError::NotLeader { .. })
    ));
    let l = t.elect();
    let m = &mut t.members[(l - 1) as usize];
    let next = m.next_position();
    let wrong = Position {
        epoch: next.epoch,
        lsn: Lsn(next.lsn.0 + 1),
    };
    assert_eq!(
        m.propose(wrong, Bytes::from("x"), &[], &mut out),
        Err(ProposeError::WrongPosition { asked: wrong, next })
    );
    let stale = Position {
        epoch: Epoch(next.epoch.0 - 1),
        lsn: next.lsn,
    };
    assert!(m.propose(stale, Bytes::from("x"), &[], &mut out).is_err());
}

#[test]
fn messages_of_another_cluster_are_refused() {
    let mut a = Consensus::new(config(1), "a", Recovered::fresh(vec![1, 2])).unwrap();
    let mut b = Consensus::new(config(2), "b", Recovered::fresh(vec![1, 2])).unwrap();
    let out = a.handle(ConsensusEvent::Campaign);
    let sent: Vec<Vec<u8>> = out
        .into_iter()
        .filter_map(|c| match c {
            ConsensusCommand::Send { bytes, .. } => Some(bytes),
            _ => None,
        })
        .collect();
    assert!(!sent.is_empty());
    for bytes in sent {
        let out = b.handle(ConsensusEvent::Received(bytes));
        assert!(
            matches!(&out[..], [ConsensusCommand::Refused { reason }] if reason.contains("cluster")),
            "{out:?}"
        );
    }
    assert_eq!(b.epoch(), Epoch(0), "a stranger's term is not taken");
}

#[test]
fn a_member_restarts_from_what_it_persisted() {
    let mut t = Trio::new();
    let l = t.elect();
    for tag in 1..=3 {
        t.propose(l, tag, Durability::Quorum);
    }
    t.run(2);
    // A follower restarts from its persisted log and hard state.
    let f = if l == 3 { 2 } else { 3 };
    let m = &t.members[(f - 1) as usize];
    let state = Recovered {
        term: m.epoch().0,
        vote: l,
        commit: m.commit().0,
        voters: vec![1, 2, 3],
        learners: vec![],
        base: (0, 0),
        entries: t.log[2].clone(),
        applied: m.applied().0,
        epochs: Vec::new(),
    };
    let (fi, li) = ((f - 1) as usize, (l - 1) as usize);
    let restarted = Consensus::new(config(f), "c", state).unwrap();
    assert_eq!(restarted.last(), t.members[li].last());
    assert_eq!(restarted.commit(), t.members[fi].commit());
    t.members[fi] = restarted;
    t.propose(l, 4, Durability::Quorum);
    t.run(3);
    assert_eq!(t.acked, vec![1, 2, 3, 4]);
    assert_eq!(t.members[fi].last(), t.members[li].last());
}
