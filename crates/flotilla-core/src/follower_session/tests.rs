use super::*;
use flotilla_types::{Epoch, Lsn};

use crate::test_records::record as rec;

/// A follower at `lsn` that follows leader incarnation `inc-1`.
fn session_at(lsn: u64) -> FollowerSession {
    new_session_at(lsn).with_leader_incarnation(Some("inc-1".into()))
}

fn new_session_at(lsn: u64) -> FollowerSession {
    FollowerSession::new(
        FollowerConfig::new("f1", "http://f1"),
        Some((Position::new(1, lsn), Chain(lsn))),
        Some("c".into()),
    )
}

/// A session at `lsn` that has connected and been welcomed (times 0..=2 used).
fn streaming_at(lsn: u64) -> FollowerSession {
    let mut s = session_at(lsn);
    s.start(0);
    s.handle(1, 0, FollowerEvent::Connected);
    s.handle(2, 0, welcome(lsn));
    assert_eq!(s.phase(), FollowerPhase::Streaming);
    s
}

fn welcome(after: u64) -> FollowerEvent {
    welcome_from("inc-1", after)
}

fn welcome_from(incarnation: &str, after: u64) -> FollowerEvent {
    FollowerEvent::Received(LeaderMessage::Welcome {
        cluster_id: "c".into(),
        leader_id: "l".into(),
        incarnation: incarnation.into(),
        epoch: Epoch(1),
        start_after: Lsn(after),
        head: Position::new(1, 10),
    })
}

/// An apply that keeps failing (a conflict, a schema change that cannot run here) keeps
/// its reason shown across reconnects and backs off, rather than flapping to a clean
/// "streaming" and retrying every 100 ms (found by an outside probe).
#[test]
fn an_apply_that_keeps_failing_backs_off_and_stays_reported() {
    let mut s = streaming_at(5);
    let mut now = 10;
    let mut delays = Vec::new();
    for _ in 0..5 {
        let cmds = s.handle(
            now,
            1000,
            FollowerEvent::Received(LeaderMessage::Records(vec![rec(6, Chain(5))])),
        );
        assert!(cmds.iter().any(|c| matches!(c, FollowerCommand::Apply(_))));
        let failed_at = now + 1;
        s.handle(
            failed_at,
            1000,
            FollowerEvent::ApplyFailed {
                reason: "conflict".into(),
                disk_full: false,
            },
        );
        assert_eq!(s.phase(), FollowerPhase::WaitingToRetry);
        // Reconnects at the retry time, not before.
        now = failed_at;
        while !s
            .handle(now, 1000, FollowerEvent::Tick)
            .contains(&FollowerCommand::Connect)
        {
            now += 10;
            assert!(now < failed_at + 60_000, "never reconnected");
        }
        delays.push(now - failed_at);
        s.handle(now + 1, 1000, FollowerEvent::Connected);
        s.handle(now + 2, 1000, welcome(5));
        assert_eq!(s.phase(), FollowerPhase::Streaming);
        let err = s.last_error().expect("the failure stays shown");
        assert!(err.contains("conflict"), "{err}");
        now += 3;
    }
    assert!(
        delays.windows(2).all(|w| w[1] >= w[0]) && delays[4] >= 4 * delays[0],
        "{delays:?}"
    );
    // Once an apply succeeds, the error is gone.
    s.handle(
        now,
        1000,
        FollowerEvent::Received(LeaderMessage::Records(vec![rec(6, Chain(5))])),
    );
    s.handle(
        now + 1,
        1000,
        FollowerEvent::Applied {
            position: Position::new(1, 6),
            chain: rec(6, Chain(5)).chain,
        },
    );
    assert_eq!(s.last_error(), None);
}

/// A copy of a follower's directory started as a leader has the cluster's id and a history
/// that links: only its incarnation tells it apart, and it is refused.
#[test]
fn a_leader_of_another_incarnation_is_refused_and_a_bootstrap_adopts_the_next() {
    let mut s = new_session_at(5);
    s.start(0);
    s.handle(1, 0, FollowerEvent::Connected);
    let cmds = s.handle(2, 0, welcome_from("inc-1", 5));
    assert_eq!(
        cmds,
        vec![FollowerCommand::RememberLeader {
            incarnation: "inc-1".into()
        }]
    );
    s.handle(3, 0, FollowerEvent::ConnectionLost { reason: "x".into() });
    let retry_at = 100_000;
    s.handle(retry_at, 0, FollowerEvent::Tick);
    s.handle(retry_at + 1, 0, FollowerEvent::Connected);
    let cmds = s.handle(retry_at + 2, 0, welcome_from("impostor", 5));
    assert_eq!(cmds, vec![FollowerCommand::Disconnect]);
    assert_ne!(s.phase(), FollowerPhase::Streaming);
    let err = s.last_error().unwrap();
    assert!(err.contains("impostor") && err.contains("inc-1"), "{err}");
    // Records from it are never taken.
    assert!(s
        .handle(
            retry_at + 3,
            0,
            FollowerEvent::Received(LeaderMessage::Records(vec![rec(6, Chain(5))]))
        )
        .iter()
        .all(|c| !matches!(c, FollowerCommand::Apply(_))));
    // The remembered incarnation survives a restart of the follower.
    let mut restarted = session_at(5).with_leader_incarnation(Some("inc-1".into()));
    restarted.start(0);
    restarted.handle(1, 0, FollowerEvent::Connected);
    assert_eq!(
        restarted.handle(2, 0, welcome_from("impostor", 5)),
        vec![FollowerCommand::Disconnect]
    );
    // After a bootstrap the database is the new leader's copy: its incarnation is adopted.
    let mut rebuilt = session_at(5).with_leader_incarnation(Some("inc-1".into()));
    rebuilt.start(0);
    rebuilt.handle(
        1,
        0,
        FollowerEvent::BootstrapFinished {
            position: Position::new(1, 8),
            chain: Chain(8),
            cluster_id: "c".into(),
        },
    );
    rebuilt.handle(2, 0, FollowerEvent::Connected);
    assert_eq!(
        rebuilt.handle(3, 0, welcome_from("impostor", 8)),
        vec![FollowerCommand::RememberLeader {
            incarnation: "impostor".into()
        }]
    );
    assert_eq!(rebuilt.phase(), FollowerPhase::Streaming);
}

/// An operator removed the follower: it stops replicating instead of coming back.
#[test]
fn a_removed_follower_stops_until_restarted() {
    let mut s = streaming_at(5);
    let cmds = s.handle(
        3,
        0,
        FollowerEvent::Received(LeaderMessage::Refuse {
            code: RefusalCode::Removed,
            message: "removed by an operator".into(),
        }),
    );
    assert_eq!(cmds, vec![FollowerCommand::Disconnect]);
    assert_eq!(s.phase(), FollowerPhase::Removed);
    assert!(s.last_error().unwrap().contains("after a restart"));
    for t in 1..100u64 {
        assert!(s.handle(t * 10_000, 0, FollowerEvent::Tick).is_empty());
    }
}

#[test]
fn without_a_database_it_bootstraps_first() {
    let mut s = FollowerSession::new(FollowerConfig::new("f", "u"), None, None);
    assert_eq!(s.start(0), vec![FollowerCommand::Bootstrap]);
    let cmds = s.handle(
        5,
        0,
        FollowerEvent::BootstrapFinished {
            position: Position::new(1, 4),
            chain: Chain(4),
            cluster_id: "c".into(),
        },
    );
    assert_eq!(cmds, vec![FollowerCommand::Connect]);
    assert_eq!(s.applied(), Some(Position::new(1, 4)));
}

#[test]
fn hello_states_the_local_position_then_records_are_applied_and_acked() {
    let mut s = session_at(3);
    assert_eq!(s.start(0), vec![FollowerCommand::Connect]);
    let cmds = s.handle(1, 0, FollowerEvent::Connected);
    assert!(matches!(
        &cmds[..],
        [FollowerCommand::Send(FollowerMessage::Hello { position, chain, .. })]
            if *position == Position::new(1, 3) && *chain == Chain(3)
    ));
    assert!(s.handle(2, 0, welcome(3)).is_empty());
    let r4 = rec(4, Chain(3));
    let r5 = rec(5, r4.chain);
    let cmds = s.handle(
        3,
        0,
        FollowerEvent::Received(LeaderMessage::Records(vec![r4.clone()])),
    );
    assert_eq!(cmds, vec![FollowerCommand::Apply(vec![r4.clone()])]);
    // While applying, more records queue up without a second concurrent apply.
    let cmds = s.handle(
        4,
        0,
        FollowerEvent::Received(LeaderMessage::Records(vec![r5.clone()])),
    );
    assert!(cmds.is_empty());
    let cmds = s.handle(
        5,
        0,
        FollowerEvent::Applied {
            position: r4.position(),
            chain: r4.chain,
        },
    );
    assert_eq!(cmds.len(), 3);
    // Applied, not yet durable: the flush runs beside the next apply.
    assert!(matches!(
        &cmds[0],
        FollowerCommand::Send(FollowerMessage::Ack { applied, received, durable, .. })
            if *applied == r4.position() && *received == r5.position()
                && *durable == Position::new(1, 3)
    ));
    assert_eq!(
        cmds[1],
        FollowerCommand::Flush {
            seq: 1,
            through: r4.position()
        }
    );
    assert_eq!(cmds[2], FollowerCommand::Apply(vec![r5.clone()]));
    // r5 applies before the flush returns: no second flush while one is in flight.
    let cmds = s.handle(
        6,
        0,
        FollowerEvent::Applied {
            position: r5.position(),
            chain: r5.chain,
        },
    );
    assert!(matches!(
        &cmds[..],
        [FollowerCommand::Send(FollowerMessage::Ack { applied, durable, .. })]
            if *applied == r5.position() && *durable == Position::new(1, 3)
    ));
    // The flush's answer makes r4 durable and starts the flush of r5.
    let cmds = s.handle(7, 0, FollowerEvent::Flushed { seq: 1 });
    assert!(matches!(
        &cmds[..],
        [
            FollowerCommand::Send(FollowerMessage::Ack { applied, durable, .. }),
            FollowerCommand::Flush { seq: 2, through },
        ] if *applied == r5.position() && *durable == r4.position() && *through == r5.position()
    ));
    assert_eq!(s.durable(), r4.position());
    let cmds = s.handle(8, 0, FollowerEvent::Flushed { seq: 2 });
    assert!(matches!(
        &cmds[..],
        [FollowerCommand::Send(FollowerMessage::Ack { durable, .. })] if *durable == r5.position()
    ));
    // A repeated answer changes nothing.
    assert!(s.handle(9, 0, FollowerEvent::Flushed { seq: 2 }).is_empty());
}

#[test]
fn the_answer_of_a_flush_from_before_a_bootstrap_is_ignored() {
    let mut s = streaming_at(3);
    let r4 = rec(4, Chain(3));
    s.handle(
        3,
        0,
        FollowerEvent::Received(LeaderMessage::Records(vec![r4.clone()])),
    );
    let cmds = s.handle(
        4,
        0,
        FollowerEvent::Applied {
            position: r4.position(),
            chain: r4.chain,
        },
    );
    assert!(cmds.contains(&FollowerCommand::Flush {
        seq: 1,
        through: r4.position()
    }));
    let cmds = s.handle(
        5,
        0,
        FollowerEvent::Received(LeaderMessage::Refuse {
            code: RefusalCode::Diverged,
            message: "another history".into(),
        }),
    );
    assert!(cmds.contains(&FollowerCommand::Bootstrap));
    // The new database holds less than the old one did.
    s.handle(
        6,
        0,
        FollowerEvent::BootstrapFinished {
            position: Position::new(2, 2),
            chain: Chain(9),
            cluster_id: "c".into(),
        },
    );
    assert_eq!(s.durable(), Position::new(2, 2));
    assert!(s.handle(7, 0, FollowerEvent::Flushed { seq: 1 }).is_empty());
    assert_eq!(
        s.durable(),
        Position::new(2, 2),
        "the old flush covered the old database"
    );
}

/// A gap in LSNs is Raft's own entries (a cluster's), which followers are not sent: the session
/// takes the record and the apply checks its chain. A record that goes back is an error.
#[test]
fn a_record_that_does_not_move_forward_is_a_protocol_error_and_reconnects_later() {
    let mut gap = streaming_at(3);
    let cmds = gap.handle(
        3,
        1000,
        FollowerEvent::Received(LeaderMessage::Records(vec![rec(6, Chain(0))])),
    );
    assert!(
        cmds.iter()
            .any(|c| matches!(c, FollowerCommand::Apply { .. })),
        "{cmds:?}"
    );
    let mut s = streaming_at(3);
    let cmds = s.handle(
        3,
        1000,
        FollowerEvent::Received(LeaderMessage::Records(vec![rec(3, Chain(0))])),
    );
    assert_eq!(cmds, vec![FollowerCommand::Disconnect]);
    assert_eq!(s.phase(), FollowerPhase::WaitingToRetry);
    assert!(s.last_error().unwrap().contains("does not follow"));
    assert!(
        s.handle(50, 0, FollowerEvent::Tick).is_empty(),
        "backoff not yet over"
    );
    assert_eq!(
        s.handle(200, 0, FollowerEvent::Tick),
        vec![FollowerCommand::Connect]
    );
}

/// What a dropped connection's transport still reports never reaches the session: records of
/// the old connection would otherwise be applied after the new session's handshake.
#[test]
fn events_of_an_earlier_connection_are_ignored() {
    let mut s = streaming_at(3);
    let old = s.connection();
    assert_eq!(old, 1);
    s.handle_connection_event(
        3,
        0,
        old,
        FollowerEvent::ConnectionLost {
            reason: "reset".into(),
        },
    );
    assert_eq!(s.phase(), FollowerPhase::WaitingToRetry);
    assert_eq!(
        s.handle(500, 0, FollowerEvent::Tick),
        vec![FollowerCommand::Connect]
    );
    assert_eq!(s.connection(), 2);
    // The old transport's last words arrive late: all ignored.
    for ev in [
        FollowerEvent::Connected,
        FollowerEvent::Received(LeaderMessage::Records(vec![rec(4, Chain(3))])),
        FollowerEvent::ConnectionLost {
            reason: "late".into(),
        },
    ] {
        assert!(s.handle_connection_event(501, 0, old, ev).is_empty());
    }
    assert_eq!(s.stale_events(), 3);
    assert_eq!(s.phase(), FollowerPhase::Connecting);
    // The new connection's events are taken.
    let cmds = s.handle_connection_event(502, 0, 2, FollowerEvent::Connected);
    assert!(matches!(
        cmds[..],
        [FollowerCommand::Send(FollowerMessage::Hello { .. })]
    ));
}

/// A leader that ignores its flow-control window is cut off before the queue of records
/// waiting to be applied outgrows the follower's bound; records it applied free room.
#[test]
fn records_beyond_the_pending_bound_are_a_protocol_error() {
    let mut s = streaming_at(3);
    s.config.max_pending_records = 3;
    let mut chain = Chain(3);
    let mut recs = |from: u64, to: u64| {
        (from..=to)
            .map(|l| {
                let r = rec(l, chain);
                chain = r.chain;
                r
            })
            .collect::<Vec<_>>()
    };
    let first = recs(4, 5);
    let cmds = s.handle(3, 0, FollowerEvent::Received(LeaderMessage::Records(first)));
    assert!(matches!(cmds[..], [FollowerCommand::Apply(ref b)] if b.len() == 2));
    assert_eq!(s.pending_records(), 2);
    // Applied: they leave the queue (the host no longer says how many).
    s.handle(
        4,
        0,
        FollowerEvent::Applied {
            position: Position::new(1, 5),
            chain: Chain(5),
        },
    );
    assert_eq!(s.pending_records(), 0);
    let cmds = s.handle(
        5,
        0,
        FollowerEvent::Received(LeaderMessage::Records(recs(6, 8))),
    );
    assert!(!cmds.contains(&FollowerCommand::Disconnect));
    assert_eq!(s.pending_records(), 3);
    let cmds = s.handle(
        6,
        0,
        FollowerEvent::Received(LeaderMessage::Records(recs(9, 9))),
    );
    assert!(cmds.contains(&FollowerCommand::Disconnect), "{cmds:?}");
    assert!(s.last_error().unwrap().contains("flow-control window"));
    assert_eq!(s.pending_records(), 0);
}

#[test]
fn need_snapshot_and_diverged_bootstrap_other_refusals_retry() {
    for (code, expect_bootstrap) in [
        (RefusalCode::NeedSnapshot, true),
        (RefusalCode::Diverged, true),
        (RefusalCode::WrongCluster, false),
        (RefusalCode::NotLeader, false),
    ] {
        let mut s = session_at(3);
        s.start(0);
        s.handle(1, 0, FollowerEvent::Connected);
        let cmds = s.handle(
            2,
            0,
            FollowerEvent::Received(LeaderMessage::Refuse {
                code,
                message: "m".into(),
            }),
        );
        assert_eq!(cmds[0], FollowerCommand::Disconnect);
        assert_eq!(
            cmds.contains(&FollowerCommand::Bootstrap),
            expect_bootstrap,
            "{code:?}"
        );
        assert!(s.last_error().unwrap().contains(code.as_str()));
    }
}

#[test]
fn disk_full_pauses_and_retries_the_same_batch() {
    let mut s = streaming_at(3);
    let r4 = rec(4, Chain(3));
    s.handle(
        3,
        0,
        FollowerEvent::Received(LeaderMessage::Records(vec![r4.clone()])),
    );
    let cmds = s.handle(
        4,
        0,
        FollowerEvent::ApplyFailed {
            reason: "full".into(),
            disk_full: true,
        },
    );
    assert!(cmds.is_empty());
    assert_eq!(s.phase(), FollowerPhase::DiskFull);
    assert!(s.last_error().unwrap().contains("disk is full"));
    assert!(s.handle(500, 0, FollowerEvent::Tick).is_empty());
    assert_eq!(
        s.handle(1005, 0, FollowerEvent::Tick),
        vec![FollowerCommand::Apply(vec![r4.clone()])]
    );
    s.handle(
        1006,
        0,
        FollowerEvent::Applied {
            position: r4.position(),
            chain: r4.chain,
        },
    );
    assert_eq!(s.phase(), FollowerPhase::Streaming);
    assert_eq!(s.last_error(), None);
}

/// Found by the simulator (seed 13, once applies took time): the connection broke while a
/// batch was applying, then the apply met a full disk. The session paused to retry a batch
/// that the lost session had already dropped, and never reconnected.
#[test]
fn a_full_disk_after_the_session_was_lost_does_not_stop_reconnecting() {
    let mut s = streaming_at(3);
    let r4 = rec(4, Chain(3));
    s.handle(
        3,
        0,
        FollowerEvent::Received(LeaderMessage::Records(vec![r4.clone()])),
    );
    s.handle(
        4,
        0,
        FollowerEvent::ConnectionLost {
            reason: "broke".into(),
        },
    );
    let cmds = s.handle(
        5,
        0,
        FollowerEvent::ApplyFailed {
            reason: "full".into(),
            disk_full: true,
        },
    );
    assert!(cmds.is_empty());
    assert_eq!(s.phase(), FollowerPhase::WaitingToRetry);
    assert!(s.last_error().unwrap().contains("disk is full"));
    assert_eq!(
        s.handle(2_000, 0, FollowerEvent::Tick),
        vec![FollowerCommand::Connect]
    );
    let cmds = s.handle(2_001, 0, FollowerEvent::Connected);
    assert!(matches!(
        &cmds[..],
        [FollowerCommand::Send(FollowerMessage::Hello { position, .. })]
            if *position == Position::new(1, 3)
    ));
}

#[test]
fn a_heartbeat_beyond_what_arrived_means_lost_records() {
    let mut s = streaming_at(3);
    let ok = FollowerEvent::Received(LeaderMessage::Heartbeat {
        head: Position::new(1, 3),
        now_ms: 0,
    });
    assert!(matches!(
        &s.handle(3, 0, ok)[..],
        [FollowerCommand::Send(FollowerMessage::Ack { .. })]
    ));
    let ahead = FollowerEvent::Received(LeaderMessage::Heartbeat {
        head: Position::new(1, 5),
        now_ms: 0,
    });
    assert_eq!(s.handle(4, 0, ahead), vec![FollowerCommand::Disconnect]);
    assert!(
        s.last_error().unwrap().contains("only 1/3 arrived"),
        "{:?}",
        s.last_error()
    );
}

#[test]
fn a_heartbeat_before_welcome_means_the_welcome_was_lost() {
    let mut s = session_at(3);
    s.start(0);
    s.handle(1, 0, FollowerEvent::Connected);
    let hb = FollowerEvent::Received(LeaderMessage::Heartbeat {
        head: Position::new(1, 9),
        now_ms: 0,
    });
    assert_eq!(s.handle(2, 0, hb), vec![FollowerCommand::Disconnect]);
    assert_eq!(s.phase(), FollowerPhase::WaitingToRetry);
    assert!(s.last_error().unwrap().contains("heartbeat before welcome"));
}

#[test]
fn a_silent_leader_is_dropped() {
    let mut s = streaming_at(3);
    assert!(s.handle(5_000, 0, FollowerEvent::Tick).is_empty());
    assert_eq!(
        s.handle(10_003, 0, FollowerEvent::Tick),
        vec![FollowerCommand::Disconnect]
    );
    assert_eq!(s.phase(), FollowerPhase::WaitingToRetry);
}

#[test]
fn hello_waits_for_an_apply_in_flight() {
    let mut s = streaming_at(3);
    let r4 = rec(4, Chain(3));
    s.handle(
        3,
        0,
        FollowerEvent::Received(LeaderMessage::Records(vec![r4.clone()])),
    );
    s.handle(4, 0, FollowerEvent::ConnectionLost { reason: "x".into() });
    s.handle(200, 1000, FollowerEvent::Tick);
    assert!(
        s.handle(201, 0, FollowerEvent::Connected).is_empty(),
        "apply still in flight"
    );
    let cmds = s.handle(
        202,
        0,
        FollowerEvent::Applied {
            position: r4.position(),
            chain: r4.chain,
        },
    );
    // Applied, not yet durable: the hello waits for the flush (the leader keeps its log for
    // this follower from the position a hello states).
    assert_eq!(
        cmds,
        vec![FollowerCommand::Flush {
            seq: 1,
            through: r4.position()
        }]
    );
    let cmds = s.handle(203, 0, FollowerEvent::Flushed { seq: 1 });
    assert!(matches!(
        &cmds[..],
        [FollowerCommand::Send(FollowerMessage::Hello { position, .. })] if *position == r4.position()
    ));
}

/// A heartbeat is answered while a batch applies and while the disk is full (with what is
/// applied): a leader ends a session that acknowledges nothing for long.
#[test]
fn heartbeats_are_answered_while_applying_and_while_the_disk_is_full() {
    let mut s = streaming_at(3);
    let cmds = s.handle(
        3,
        0,
        FollowerEvent::Received(LeaderMessage::Records(vec![rec(4, Chain(3))])),
    );
    assert!(matches!(cmds[..], [FollowerCommand::Apply(_)]));
    let hb = |lsn| {
        FollowerEvent::Received(LeaderMessage::Heartbeat {
            head: Position::new(1, lsn),
            now_ms: 0,
        })
    };
    let acked_at = |cmds: &[FollowerCommand]| {
        cmds.iter().find_map(|c| match c {
            FollowerCommand::Send(FollowerMessage::Ack { applied, .. }) => Some(applied.lsn.0),
            _ => None,
        })
    };
    assert_eq!(acked_at(&s.handle(4, 0, hb(4))), Some(3), "while applying");
    s.handle(
        5,
        0,
        FollowerEvent::ApplyFailed {
            reason: "full".into(),
            disk_full: true,
        },
    );
    assert_eq!(s.phase(), FollowerPhase::DiskFull);
    assert_eq!(
        acked_at(&s.handle(6, 0, hb(4))),
        Some(3),
        "while the disk is full"
    );
}

/// A record larger than the pending bound still moves: one record beyond the bound is taken,
/// as the leader's window lets one record beyond it go.
#[test]
fn one_record_beyond_the_byte_bound_is_taken() {
    let mut s = streaming_at(3);
    s.config.max_pending_bytes = 1_000;
    let small = rec(4, Chain(3));
    let mut big = rec(5, small.chain);
    big.pages.as_mut().unwrap().pages[0].data = vec![9; 100_000];
    let cmds = s.handle(
        3,
        0,
        FollowerEvent::Received(LeaderMessage::Records(vec![small, big])),
    );
    assert!(!cmds.contains(&FollowerCommand::Disconnect), "{cmds:?}");
    assert_eq!(s.pending_records(), 2);
}

/// A session with `config` at lsn 0 that has connected and been welcomed (times 0..=2 used).
fn welcomed_empty(config: FollowerConfig) -> FollowerSession {
    let mut s = FollowerSession::new(
        config,
        Some((Position::new(1, 0), Chain(0))),
        Some("c".into()),
    )
    .with_leader_incarnation(Some("inc-1".into()));
    s.start(0);
    s.handle(1, 0, FollowerEvent::Connected);
    s.handle(2, 0, welcome(0));
    s
}

/// Records 1..=n of one history (each linking to the one before).
fn history(n: u64) -> Vec<LogRecord> {
    let mut chain = Chain(0);
    (1..=n)
        .map(|lsn| {
            let r = rec(lsn, chain);
            chain = r.chain;
            r
        })
        .collect()
}

/// A records message is one unit (a physical follower's may lack page images that a later
/// record of it rewrites): an apply batch never ends inside one, whatever the batch bounds.
#[test]
fn an_apply_batch_never_splits_a_message() {
    let mut config = FollowerConfig::new("f1", "http://f1");
    config.max_batch_records = 2;
    let mut s = welcomed_empty(config);
    let records = history(7);
    let batch_lsns = |cmds: &[FollowerCommand]| -> Vec<Vec<u64>> {
        cmds.iter()
            .filter_map(|c| match c {
                FollowerCommand::Apply(b) => Some(b.iter().map(|r| r.lsn.0).collect()),
                _ => None,
            })
            .collect()
    };
    // Three records in one message: applied together though a batch holds two.
    let cmds = s.handle(
        3,
        0,
        FollowerEvent::Received(LeaderMessage::Records(records[..3].to_vec())),
    );
    assert_eq!(batch_lsns(&cmds), vec![vec![1, 2, 3]]);
    // While that applies, two messages arrive: [4] and [5, 6, 7]. The next batch reaches its
    // bound after 4 and 5, but 5 starts a unit: it takes the whole of it.
    s.handle(
        4,
        0,
        FollowerEvent::Received(LeaderMessage::Records(records[3..4].to_vec())),
    );
    s.handle(
        5,
        0,
        FollowerEvent::Received(LeaderMessage::Records(records[4..].to_vec())),
    );
    let cmds = s.handle(
        6,
        0,
        FollowerEvent::Applied {
            position: records[2].position(),
            chain: records[2].chain,
        },
    );
    assert_eq!(batch_lsns(&cmds), vec![vec![4, 5, 6, 7]]);
}

/// A logical follower's records are whole (no page images left out): its batches keep their
/// bounds, so its local writes do not wait behind a whole message.
#[test]
fn a_logical_follower_batch_keeps_its_bound() {
    let mut config = FollowerConfig::new("f1", "http://f1");
    config.max_batch_records = 2;
    config.log_kind = LogKind::Logical;
    let mut s = welcomed_empty(config);
    let records = history(3);
    let cmds = s.handle(
        3,
        0,
        FollowerEvent::Received(LeaderMessage::Records(records)),
    );
    let batches: Vec<usize> = cmds
        .iter()
        .filter_map(|c| match c {
            FollowerCommand::Apply(b) => Some(b.len()),
            _ => None,
        })
        .collect();
    assert_eq!(batches, vec![2]);
}

#[test]
fn a_welcome_from_another_cluster_is_refused() {
    let mut s = session_at(3);
    s.start(0);
    s.handle(1, 0, FollowerEvent::Connected);
    let cmds = s.handle(
        2,
        0,
        FollowerEvent::Received(LeaderMessage::Welcome {
            cluster_id: "other".into(),
            leader_id: "l".into(),
            incarnation: "inc-1".into(),
            epoch: Epoch(1),
            start_after: Lsn(3),
            head: Position::new(1, 10),
        }),
    );
    assert_eq!(cmds, vec![FollowerCommand::Disconnect]);
    assert_eq!(s.phase(), FollowerPhase::WaitingToRetry);
    let e = s.last_error().unwrap();
    assert!(
        e.contains("cluster other") && e.contains("cluster c"),
        "{e}"
    );
    assert_eq!(s.cluster_id(), Some("c"), "kept its own cluster");
}
