use super::*;

/// Records 1..=n of a history whose chain starts at `Chain(0)`, encoded as the log holds them.
fn history(n: u64) -> Vec<(Chain, Bytes)> {
    let mut chain = Chain(0);
    (1..=n)
        .map(|lsn| {
            let r = crate::test_records::record(lsn, chain);
            chain = r.chain;
            (chain, Bytes::from(flotilla_wire::encode_record(&r)))
        })
        .collect()
}

/// A leader whose log holds records 1..=head (all retained).
struct Leader {
    tracker: FollowerTracker,
    log: Vec<(Chain, Bytes)>,
    head: u64,
    first_retained: u64,
    now_ms: u64,
}

impl Leader {
    fn new(head: u64) -> Leader {
        Leader {
            tracker: FollowerTracker::default(),
            log: history(head),
            head,
            first_retained: 1,
            now_ms: 0,
        }
    }

    fn chain_at(&self, lsn: u64) -> Chain {
        if lsn == 0 {
            Chain(0)
        } else {
            self.log[lsn as usize - 1].0
        }
    }

    fn handle(&mut self, s: &mut LeaderSession, ev: LeaderEvent) -> Vec<LeaderCommand> {
        let mut ctx = LeaderContext {
            tracker: &mut self.tracker,
            head: Position::new(1, self.head),
            head_chain: self
                .log
                .get(self.head as usize - 1)
                .map_or(Chain(0), |l| l.0),
            first_retained: Lsn(self.first_retained),
            now_ms: self.now_ms,
            wall_ms: 1_000_000 + self.now_ms,
        };
        s.handle(&mut ctx, ev)
    }

    /// Performs a `ReadLog` as a host would.
    fn read(&self, from: Lsn, max_records: usize, max_bytes: usize) -> LeaderEvent {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (_, r) in self.log.iter().skip(from.0 as usize - 1).take(max_records) {
            if from.0 > self.head {
                break;
            }
            bytes += r.len();
            out.push(r.clone());
            if bytes >= max_bytes {
                break;
            }
        }
        LeaderEvent::LogRead {
            from,
            result: Ok(out),
        }
    }
}

fn identity() -> LeaderIdentity {
    LeaderIdentity {
        cluster_id: "c".into(),
        leader_id: "l".into(),
        incarnation: "inc-1".into(),
        epoch: Epoch(1),
    }
}

fn hello_from(id: &str, kind: LogKind, lsn: u64, chain: Chain) -> LeaderEvent {
    LeaderEvent::Received(
        FollowerMessage::Hello {
            cluster_id: Some("c".into()),
            follower_id: id.into(),
            follower_url: format!("http://{id}"),
            log_kind: kind,
            position: Position::new(1, lsn),
            chain,
        }
        .encode(),
    )
}

fn ack(lsn: u64) -> LeaderEvent {
    let p = Position::new(1, lsn);
    LeaderEvent::Received(
        FollowerMessage::Ack {
            received: p,
            durable: p,
            applied: p,
            now_ms: 0,
        }
        .encode(),
    )
}

fn sent(cmds: &[LeaderCommand]) -> Vec<LeaderMessage> {
    cmds.iter()
        .filter_map(|c| match c {
            LeaderCommand::Send(b) => Some(LeaderMessage::decode(b).expect("decodable")),
            _ => None,
        })
        .collect()
}

fn refusal(cmds: &[LeaderCommand]) -> Option<RefusalCode> {
    sent(cmds).into_iter().find_map(|m| match m {
        LeaderMessage::Refuse { code, .. } => Some(code),
        _ => None,
    })
}

fn closes(cmds: &[LeaderCommand]) -> bool {
    matches!(cmds.last(), Some(LeaderCommand::Close { .. }))
}

fn read_of(cmds: &[LeaderCommand]) -> Option<(Lsn, usize, usize)> {
    cmds.iter().find_map(|c| match c {
        LeaderCommand::ReadLog {
            from,
            max_records,
            max_bytes,
        } => Some((*from, *max_records, *max_bytes)),
        _ => None,
    })
}

/// Performs every `ReadLog` until none is asked for; returns the LSN ranges shipped.
fn pump(l: &mut Leader, s: &mut LeaderSession, mut cmds: Vec<LeaderCommand>) -> Vec<(u64, u64)> {
    let mut shipped = Vec::new();
    for _ in 0..1000 {
        for m in sent(&cmds) {
            if let LeaderMessage::Records(r) = m {
                shipped.push((r[0].lsn.0, r.last().unwrap().lsn.0));
            }
        }
        let Some((from, n, b)) = read_of(&cmds) else {
            return shipped;
        };
        let ev = l.read(from, n, b);
        cmds = l.handle(s, ev);
    }
    panic!("reads never ended");
}

/// A session of follower `id` at `lsn` (on `l`'s history), welcomed; returns it and the
/// commands of the welcome.
fn welcomed(
    l: &mut Leader,
    config: ShippingConfig,
    id: &str,
    lsn: u64,
) -> (LeaderSession, Vec<LeaderCommand>) {
    let mut s = LeaderSession::new(config, identity(), l.now_ms);
    let mut cmds = l.handle(
        &mut s,
        hello_from(id, LogKind::Physical, lsn, l.chain_at(lsn)),
    );
    if let Some((from, n, b)) = read_of(&cmds) {
        assert_eq!(
            (from, n, b),
            (Lsn(lsn + 1), 1, 1),
            "the link check reads one record"
        );
        let ev = l.read(from, n, b);
        cmds = l.handle(&mut s, ev);
    }
    assert!(
        matches!(sent(&cmds).first(), Some(LeaderMessage::Welcome { start_after, .. }) if start_after.0 == lsn),
        "{cmds:?}"
    );
    assert!(cmds.contains(&LeaderCommand::SaveFollowers));
    (s, cmds)
}

#[test]
fn a_follower_behind_is_checked_welcomed_registered_and_caught_up() {
    let mut l = Leader::new(10);
    let (mut s, cmds) = welcomed(&mut l, ShippingConfig::default(), "f1", 4);
    assert_eq!(l.tracker.get("f1").unwrap().durable, Position::new(1, 4));
    assert_eq!(s.follower_id(), Some("f1"));
    assert_eq!(pump(&mut l, &mut s, cmds), vec![(5, 10)]);
    // Nothing more to read until the head moves.
    assert_eq!(l.handle(&mut s, LeaderEvent::HeadMoved), vec![]);
    l.log = history(12);
    l.head = 12;
    let cmds = l.handle(&mut s, LeaderEvent::HeadMoved);
    assert_eq!(pump(&mut l, &mut s, cmds), vec![(11, 12)]);
}

#[test]
fn a_follower_at_the_head_is_welcomed_without_a_read() {
    let mut l = Leader::new(10);
    let mut s = LeaderSession::new(ShippingConfig::default(), identity(), 0);
    let ch = l.chain_at(10);
    let cmds = l.handle(&mut s, hello_from("f1", LogKind::Physical, 10, ch));
    assert!(read_of(&cmds).is_none());
    assert!(matches!(sent(&cmds)[..], [LeaderMessage::Welcome { .. }]));
}

#[test]
fn refusals_say_why_and_close() {
    let cases: Vec<(&str, LeaderEvent, RefusalCode)> = vec![
        (
            "no database",
            LeaderEvent::Received(
                FollowerMessage::Hello {
                    cluster_id: None,
                    follower_id: "f1".into(),
                    follower_url: "u".into(),
                    log_kind: LogKind::Physical,
                    position: Position::default(),
                    chain: Chain(0),
                }
                .encode(),
            ),
            RefusalCode::NeedSnapshot,
        ),
        (
            "bad id",
            hello_from("no spaces allowed", LogKind::Physical, 10, Chain(0)),
            RefusalCode::Protocol,
        ),
        (
            "a URL that would forge a status line",
            LeaderEvent::Received(
                FollowerMessage::Hello {
                    cluster_id: Some("c".into()),
                    follower_id: "f1".into(),
                    follower_url: "http://x\n\u{1b}[31mf2 http://y streaming".into(),
                    log_kind: LogKind::Physical,
                    position: Position::new(1, 10),
                    chain: Chain(0),
                }
                .encode(),
            ),
            RefusalCode::Protocol,
        ),
        (
            "ahead",
            hello_from("f1", LogKind::Physical, 11, Chain(0)),
            RefusalCode::FollowerAhead,
        ),
        (
            "forked at the head",
            hello_from("f1", LogKind::Physical, 10, Chain(99)),
            RefusalCode::Diverged,
        ),
        ("ack first", ack(3), RefusalCode::Protocol),
        (
            "garbage",
            LeaderEvent::Received(vec![1, 2, 3]),
            RefusalCode::Protocol,
        ),
        (
            "text frame",
            LeaderEvent::Unexpected("a text frame".into()),
            RefusalCode::Protocol,
        ),
    ];
    for (what, ev, code) in cases {
        let mut l = Leader::new(10);
        let mut s = LeaderSession::new(ShippingConfig::default(), identity(), 0);
        let cmds = l.handle(&mut s, ev);
        assert_eq!(refusal(&cmds), Some(code), "{what}: {cmds:?}");
        assert!(closes(&cmds), "{what}");
        assert!(s.is_closed());
        assert!(l.tracker.get("f1").is_none(), "{what}: not registered");
        // Nothing happens after the close.
        assert_eq!(l.handle(&mut s, LeaderEvent::Tick), vec![], "{what}");
    }
}

#[test]
fn the_link_check_refuses_a_fork_and_a_trimmed_record() {
    for (result, code) in [
        (
            Ok(vec![history(10)[5].1.clone()]),
            Some(RefusalCode::Diverged),
        ),
        (
            Err(ReadFailure::Unavailable("trimmed".into())),
            Some(RefusalCode::NeedSnapshot),
        ),
        (Ok(vec![]), Some(RefusalCode::NeedSnapshot)),
    ] {
        let mut l = Leader::new(10);
        let mut s = LeaderSession::new(ShippingConfig::default(), identity(), 0);
        // Claims lsn 4 with a chain that is not the leader's.
        let cmds = l.handle(&mut s, hello_from("f1", LogKind::Physical, 4, Chain(77)));
        assert_eq!(read_of(&cmds), Some((Lsn(5), 1, 1)));
        let cmds = l.handle(
            &mut s,
            LeaderEvent::LogRead {
                from: Lsn(5),
                result,
            },
        );
        assert_eq!(refusal(&cmds), code, "{cmds:?}");
        assert!(closes(&cmds));
    }
}

#[test]
fn a_second_session_of_the_same_follower_is_refused() {
    let mut l = Leader::new(10);
    let (_first, _) = welcomed(&mut l, ShippingConfig::default(), "f1", 10);
    let mut second = LeaderSession::new(ShippingConfig::default(), identity(), 0);
    let ch = l.chain_at(10);
    let cmds = l.handle(&mut second, hello_from("f1", LogKind::Physical, 10, ch));
    assert_eq!(refusal(&cmds), Some(RefusalCode::Duplicate));
    assert!(
        sent(&cmds)
            .iter()
            .all(|m| !matches!(m, LeaderMessage::Welcome { .. })),
        "refused before any welcome"
    );
}

#[test]
fn the_window_bounds_what_is_in_flight_and_acks_open_it() {
    let mut l = Leader::new(100);
    let config = ShippingConfig {
        batch_records: 3,
        window_records: 7,
        ..ShippingConfig::default()
    };
    let (mut s, cmds) = welcomed(&mut l, config, "f1", 0);
    // Batches of 3, 3 and the window's last 1.
    assert_eq!(pump(&mut l, &mut s, cmds), vec![(1, 3), (4, 6), (7, 7)]);
    assert_eq!(s.in_flight().0, 7);
    assert_eq!(l.handle(&mut s, LeaderEvent::HeadMoved), vec![]);
    // Applying part of a batch frees nothing; applying whole batches frees them.
    assert!(read_of(&l.handle(&mut s, ack(2))).is_none());
    let cmds = l.handle(&mut s, ack(6));
    assert_eq!(s.in_flight().0, 1);
    assert_eq!(pump(&mut l, &mut s, cmds), vec![(8, 10), (11, 13)]);
    assert_eq!(s.in_flight().0, 7);
}

#[test]
fn the_byte_window_holds_at_least_one_record() {
    let mut l = Leader::new(10);
    let config = ShippingConfig {
        window_bytes: 10,
        ..ShippingConfig::default()
    };
    let (mut s, cmds) = welcomed(&mut l, config, "f1", 0);
    // Each record is larger than the window: one at a time.
    assert_eq!(pump(&mut l, &mut s, cmds), vec![(1, 1)]);
    let cmds = l.handle(&mut s, ack(1));
    assert_eq!(pump(&mut l, &mut s, cmds), vec![(2, 2)]);
}

#[test]
fn heartbeats_state_the_last_record_sent_after_an_idle_second() {
    let mut l = Leader::new(5);
    let (mut s, cmds) = welcomed(&mut l, ShippingConfig::default(), "f1", 2);
    pump(&mut l, &mut s, cmds);
    l.now_ms = 999;
    assert_eq!(l.handle(&mut s, LeaderEvent::Tick), vec![]);
    l.now_ms = 1000;
    let cmds = l.handle(&mut s, LeaderEvent::Tick);
    assert_eq!(
        sent(&cmds),
        vec![LeaderMessage::Heartbeat {
            head: Position::new(1, 5),
            now_ms: 1_001_000
        }]
    );
    l.now_ms = 1500;
    assert_eq!(
        l.handle(&mut s, LeaderEvent::Tick),
        vec![],
        "not again so soon"
    );
}

#[test]
fn a_forged_ack_ends_the_session_and_frees_the_follower_id() {
    let mut l = Leader::new(10);
    let (mut s, cmds) = welcomed(&mut l, ShippingConfig::default(), "f1", 2);
    pump(&mut l, &mut s, cmds);
    let cmds = l.handle(&mut s, ack(1_000_000));
    assert_eq!(refusal(&cmds), Some(RefusalCode::Protocol));
    assert!(cmds.contains(&LeaderCommand::SaveFollowers));
    assert!(closes(&cmds));
    assert!(!l.tracker.has_session("f1"));
    assert_eq!(
        l.tracker.get("f1").unwrap().durable,
        Position::new(1, 2),
        "the forged progress was not taken"
    );
}

#[test]
fn a_silent_follower_times_out() {
    let mut l = Leader::new(10);
    let (mut s, cmds) = welcomed(&mut l, ShippingConfig::default(), "f1", 10);
    pump(&mut l, &mut s, cmds);
    l.now_ms = 20_000;
    l.handle(&mut s, ack(10));
    l.now_ms = 50_000;
    assert!(!closes(&l.handle(&mut s, LeaderEvent::Tick)));
    l.now_ms = 50_001;
    let cmds = l.handle(&mut s, LeaderEvent::Tick);
    assert!(closes(&cmds), "{cmds:?}");
    assert!(!l.tracker.has_session("f1"));
}

#[test]
fn a_connection_without_hello_times_out() {
    let mut l = Leader::new(10);
    let mut s = LeaderSession::new(ShippingConfig::default(), identity(), 0);
    l.now_ms = 10_000;
    assert_eq!(l.handle(&mut s, LeaderEvent::Tick), vec![]);
    l.now_ms = 10_001;
    assert!(closes(&l.handle(&mut s, LeaderEvent::Tick)));
}

#[test]
fn removal_revocation_and_trimming_end_the_session_with_a_reason() {
    type Cause = fn(&mut Leader, &mut LeaderSession) -> Vec<LeaderCommand>;
    let cases: [(&str, Cause, RefusalCode); 4] = [
        (
            "removed",
            |l, s| {
                l.tracker.remove("f1");
                l.handle(s, LeaderEvent::Tick)
            },
            RefusalCode::Removed,
        ),
        (
            "replaced",
            |l, s| {
                l.tracker
                    .session_opened("f1", "u", LogKind::Physical, Position::new(1, 2), 0);
                l.handle(s, LeaderEvent::Tick)
            },
            RefusalCode::Duplicate,
        ),
        (
            "revoked",
            |l, s| {
                l.handle(
                    s,
                    LeaderEvent::Revoked {
                        reason: "token revoked".into(),
                    },
                )
            },
            RefusalCode::Unauthorized,
        ),
        (
            "trimmed",
            |l, s| {
                l.log = history(20);
                l.head = 20;
                let cmds = l.handle(s, LeaderEvent::HeadMoved);
                let (from, _, _) = read_of(&cmds).expect("a read");
                l.handle(
                    s,
                    LeaderEvent::LogRead {
                        from,
                        result: Err(ReadFailure::Unavailable("trimmed".into())),
                    },
                )
            },
            RefusalCode::NeedSnapshot,
        ),
    ];
    for (what, cause, code) in cases {
        let mut l = Leader::new(10);
        let (mut s, cmds) = welcomed(&mut l, ShippingConfig::default(), "f1", 10);
        pump(&mut l, &mut s, cmds);
        let cmds = cause(&mut l, &mut s);
        assert_eq!(refusal(&cmds), Some(code), "{what}: {cmds:?}");
        assert!(closes(&cmds), "{what}");
    }
}

#[test]
fn a_closed_connection_leaves_the_follower_known_but_disconnected() {
    let mut l = Leader::new(10);
    let (mut s, cmds) = welcomed(&mut l, ShippingConfig::default(), "f1", 3);
    pump(&mut l, &mut s, cmds);
    l.handle(&mut s, ack(10));
    let cmds = l.handle(
        &mut s,
        LeaderEvent::Closed {
            reason: "peer went away".into(),
        },
    );
    assert_eq!(
        cmds,
        vec![
            LeaderCommand::SaveFollowers,
            LeaderCommand::Close {
                reason: "peer went away".into()
            }
        ]
    );
    let f = l.tracker.get("f1").unwrap();
    assert_eq!(f.state, crate::SessionState::Disconnected);
    assert_eq!(f.durable, Position::new(1, 10));
    assert_eq!(l.tracker.needed_from(), Some(11), "it still holds the log");
}

#[test]
fn a_logical_follower_gets_records_without_pages() {
    let mut l = Leader::new(3);
    let mut s = LeaderSession::new(ShippingConfig::default(), identity(), 0);
    let cmds = l.handle(&mut s, hello_from("f1", LogKind::Logical, 0, Chain(0)));
    let (from, n, b) = read_of(&cmds).unwrap();
    let ev = l.read(from, n, b);
    let cmds = l.handle(&mut s, ev);
    let (from, n, b) = read_of(&cmds).unwrap();
    let ev = l.read(from, n, b);
    let cmds = l.handle(&mut s, ev);
    let Some(LeaderMessage::Records(r)) = sent(&cmds).into_iter().next() else {
        panic!("{cmds:?}")
    };
    assert_eq!(r.len(), 3);
    assert!(r.iter().all(|r| r.pages.is_none()));
}

/// Every test record rewrites page 1: a physical follower gets each batch as one unit in which
/// only the last record still carries it, and no row changes.
#[test]
fn a_physical_follower_gets_a_unit_without_superseded_pages() {
    let mut l = Leader::new(3);
    let (mut s, cmds) = welcomed(&mut l, ShippingConfig::default(), "f1", 0);
    let (from, n, b) = read_of(&cmds).unwrap();
    let cmds = l.handle(&mut s, l.read(from, n, b));
    let Some(LeaderMessage::Records(r)) = sent(&cmds).into_iter().next() else {
        panic!("{cmds:?}")
    };
    let pages: Vec<usize> = r
        .iter()
        .map(|r| r.pages.as_ref().unwrap().pages.len())
        .collect();
    assert_eq!(pages, vec![0, 0, 1]);
    assert_eq!(r[2].pages.as_ref().unwrap().pages[0].data, vec![3u8; 512]);
    assert!(r.iter().all(|r| r.rows.is_none()));
}

/// The node ships only up to the head it checked the follower's credential against, while its
/// log may already hold newer records: a read never asks past that head.
#[test]
fn reads_stop_at_the_head_the_host_vouches_for() {
    let mut l = Leader::new(10);
    l.head = 6;
    let (mut s, cmds) = welcomed(&mut l, ShippingConfig::default(), "f1", 2);
    assert_eq!(read_of(&cmds), Some((Lsn(3), 4, 8 << 20)));
    assert_eq!(pump(&mut l, &mut s, cmds), vec![(3, 6)]);
}

/// An IO error while checking the link ends the session (the follower comes back); only a
/// record that is gone or damaged sends it to a snapshot.
#[test]
fn a_failed_read_during_the_link_check_is_not_a_snapshot() {
    let mut l = Leader::new(10);
    let mut s = LeaderSession::new(ShippingConfig::default(), identity(), 0);
    let ch = l.chain_at(4);
    l.handle(&mut s, hello_from("f1", LogKind::Physical, 4, ch));
    let cmds = l.handle(
        &mut s,
        LeaderEvent::LogRead {
            from: Lsn(5),
            result: Err(ReadFailure::Failed("EIO".into())),
        },
    );
    assert_eq!(refusal(&cmds), None, "{cmds:?}");
    assert!(closes(&cmds));
}

/// A log that returns nothing for a record the head says is durable ends the session instead
/// of being read again for ever.
#[test]
fn an_empty_read_below_the_head_ends_the_session() {
    let mut l = Leader::new(10);
    let (mut s, cmds) = welcomed(&mut l, ShippingConfig::default(), "f1", 2);
    let (from, _, _) = read_of(&cmds).unwrap();
    let cmds = l.handle(
        &mut s,
        LeaderEvent::LogRead {
            from,
            result: Ok(vec![]),
        },
    );
    assert!(closes(&cmds), "{cmds:?}");
    assert!(!l.tracker.has_session("f1"));
}

/// A history in which Raft's own entries sit at LSNs 5 and 6 (an epoch start and a membership
/// change), as a cluster member's log holds them: transactions 1..=4 and 7..=n.
fn history_with_consensus(n: u64) -> Vec<(Chain, Bytes)> {
    let mut chain = Chain(0);
    (1..=n)
        .map(|lsn| {
            if lsn == 5 || lsn == 6 {
                let c = flotilla_wire::ConsensusRecord {
                    epoch: Epoch(1),
                    lsn: Lsn(lsn),
                    chain,
                    kind: if lsn == 5 {
                        flotilla_wire::ConsensusKind::EpochStart
                    } else {
                        flotilla_wire::ConsensusKind::Membership
                    },
                    data: vec![],
                    context: vec![],
                };
                return (
                    chain,
                    Bytes::from(flotilla_wire::encode_consensus_record(&c)),
                );
            }
            let r = crate::test_records::record(lsn, chain);
            chain = r.chain;
            (chain, Bytes::from(flotilla_wire::encode_record(&r)))
        })
        .collect()
}

/// Raft's own entries are read and not shipped: the follower gets the transactions around them
/// (linked by the chain across the gap), heartbeats name the last record shipped, the window is
/// released by acks of that record, and a follower right before such an entry is checked
/// against the chain it carries.
#[test]
fn raft_entries_in_the_log_are_skipped_and_the_gap_is_linked() {
    for kind in [LogKind::Physical, LogKind::Logical] {
        let mut l = Leader::new(10);
        l.log = history_with_consensus(10);
        let mut s = LeaderSession::new(ShippingConfig::default(), identity(), 0);
        let mut cmds = l.handle(&mut s, hello_from("f1", kind, 4, l.chain_at(4)));
        let (from, n, b) = read_of(&cmds).expect("a link check");
        assert_eq!(from, Lsn(5));
        cmds = l.handle(&mut s, l.read(from, n, b));
        assert!(
            matches!(sent(&cmds).first(), Some(LeaderMessage::Welcome { .. })),
            "{cmds:?}"
        );
        let mut shipped: Vec<u64> = Vec::new();
        for _ in 0..10 {
            for m in sent(&cmds) {
                if let LeaderMessage::Records(r) = m {
                    shipped.extend(r.iter().map(|r| r.lsn.0));
                }
            }
            let Some((from, n, b)) = read_of(&cmds) else {
                break;
            };
            cmds = l.handle(&mut s, l.read(from, n, b));
        }
        assert_eq!(shipped, vec![7, 8, 9, 10], "{kind}");
        // Heartbeats name the last record shipped; an ack of it empties the window.
        assert_eq!(s.in_flight().0, 4);
        l.now_ms += 5_000;
        let cmds = l.handle(&mut s, LeaderEvent::Tick);
        assert!(
            sent(&cmds)
                .iter()
                .any(|m| matches!(m, LeaderMessage::Heartbeat { head, .. } if head.lsn == Lsn(10))),
            "{cmds:?}"
        );
        l.handle(&mut s, ack(10));
        assert_eq!(s.in_flight(), (0, 0));
    }
    // A follower whose history differs right before a Raft entry is refused.
    let mut l = Leader::new(10);
    l.log = history_with_consensus(10);
    let mut s = LeaderSession::new(ShippingConfig::default(), identity(), 0);
    let cmds = l.handle(&mut s, hello_from("f2", LogKind::Physical, 4, Chain(12345)));
    let (from, n, b) = read_of(&cmds).unwrap();
    let cmds = l.handle(&mut s, l.read(from, n, b));
    assert_eq!(refusal(&cmds), Some(RefusalCode::Diverged));
}
