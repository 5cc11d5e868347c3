//! Cluster members over real loopback sockets and real files: the consensus task, its peer
//! links and `/v1/raft`, `cluster.json` and the log. Three members elect a leader; when the
//! leader stops, the others elect a new one in a newer epoch; the old leader, restarted from its
//! data directory, rejoins as a follower of the new epoch; a member of another cluster is
//! refused.

use flotilla_core::consensus::{ConsensusConfig, Role};
use flotilla_log::{Log, LogConfig};
use flotilla_node::cluster::driver::{self, ClusterHandle, ClusterStatus, DriverParts};
use flotilla_node::cluster::state::{ClusterFile, Member, CLUSTER_FORMAT_VERSION};
use flotilla_node::cluster::transport::bare_router;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Running {
    handle: Arc<ClusterHandle>,
    log: Arc<Log>,
    stop: CancellationToken,
    _fatal: tokio::sync::mpsc::Receiver<flotilla_node::fatal::Fatal>,
}

fn file(cluster: &str, me: u64, urls: &[String]) -> ClusterFile {
    let members: BTreeMap<u64, Member> = urls
        .iter()
        .enumerate()
        .map(|(i, u)| {
            (
                i as u64 + 1,
                Member {
                    name: format!("n{}", i + 1),
                    url: u.clone(),
                },
            )
        })
        .collect();
    ClusterFile {
        format_version: CLUSTER_FORMAT_VERSION,
        cluster_id: cluster.into(),
        member_id: me,
        voters: members.keys().copied().collect(),
        members,
        learners: vec![],
        term: 0,
        vote: 0,
        commit: 0,
        epochs: vec![],
        base_lsn: 0,
        base_epoch: 0,
        highest_member_id: 0,
        auth: false,
        dc: None,
    }
}

/// Starts member `me` from `dir` (its `cluster.json` if there is one, else `fresh`), serving on
/// `listener`.
async fn start(dir: &Path, fresh: ClusterFile, listener: std::net::TcpListener) -> Running {
    let f = ClusterFile::load(dir).unwrap().unwrap_or(fresh);
    f.save(dir).unwrap();
    let log = Arc::new(Log::open(&dir.join("log"), LogConfig::default(), 0).unwrap());
    let stop = CancellationToken::new();
    let (fatal_tx, fatal_rx) = flotilla_node::fatal::channel();
    let handle = driver::start(DriverParts {
        dir: dir.to_path_buf(),
        config: ConsensusConfig::new(f.member_id),
        election_timeout_ms: 1000,
        file: f,
        log: log.clone(),
        credentials: flotilla_node::follower::Credentials {
            tls: None,
            token: None,
        },
        shutdown: stop.clone(),
        fatal: fatal_tx,
        events: None,
        db_lsn: 0,
    })
    .unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let app = bare_router(handle.inbound.clone());
    let s = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await
    });
    Running {
        handle,
        log,
        stop,
        _fatal: fatal_rx,
    }
}

fn status(r: &Running) -> ClusterStatus {
    r.handle.status.borrow().clone()
}

/// Waits (bounded) until exactly one of `members` leads and every one of them follows it in
/// its epoch; returns (leader's member id, epoch).
async fn agreed_leader(members: &[&Running]) -> (u64, u64) {
    let started = Instant::now();
    loop {
        let s: Vec<ClusterStatus> = members.iter().map(|r| status(r)).collect();
        let leaders: Vec<&ClusterStatus> = s.iter().filter(|s| s.role == Role::Leader).collect();
        if let [l] = leaders[..] {
            let id = members
                .iter()
                .zip(&s)
                .find(|(_, s)| s.role == Role::Leader)
                .map(|(r, _)| r.handle.member_id)
                .unwrap();
            if s.iter().all(|x| x.leader == Some(id) && x.epoch == l.epoch) {
                return (id, l.epoch.0);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no agreed leader in 30 s: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn members_elect_fail_over_rejoin_and_refuse_strangers() {
    let root = tempfile::tempdir().unwrap();
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| format!("http://{}", l.local_addr().unwrap()))
        .collect();
    let dirs: Vec<PathBuf> = (1..=3).map(|i| root.path().join(format!("n{i}"))).collect();
    let mut running: Vec<Option<Running>> = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        std::fs::create_dir_all(&dirs[i]).unwrap();
        running.push(Some(
            start(&dirs[i], file("c-test", i as u64 + 1, &urls), l).await,
        ));
    }
    let all: Vec<&Running> = running.iter().flatten().collect();
    let (first, epoch1) = agreed_leader(&all).await;
    assert!(epoch1 >= 1);

    // The leader stops. The other two elect one of themselves, in a newer epoch.
    let old = running[first as usize - 1].take().unwrap();
    old.stop.cancel();
    let rest: Vec<&Running> = running.iter().flatten().collect();
    let (second, epoch2) = agreed_leader(&rest).await;
    assert_ne!(second, first);
    assert!(epoch2 > epoch1, "epoch {epoch2} after {epoch1}");
    // Its epoch and vote reached cluster.json before it said anything that depends on them.
    let saved = ClusterFile::load(&dirs[second as usize - 1])
        .unwrap()
        .unwrap();
    assert!(saved.term >= epoch2, "{saved:?}");

    // The old leader comes back from its data directory: it follows the new leader, in the
    // new epoch, and no election is needed for that.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let listener =
        std::net::TcpListener::bind(urls[first as usize - 1].trim_start_matches("http://"))
            .unwrap();
    running[first as usize - 1] = Some(
        start(
            &dirs[first as usize - 1],
            file("c-test", first, &urls),
            listener,
        )
        .await,
    );
    let all: Vec<&Running> = running.iter().flatten().collect();
    let (third, epoch3) = agreed_leader(&all).await;
    assert_eq!((third, epoch3), (second, epoch2));

    // A member of another cluster, naming one of ours among its peers: its messages are
    // refused and change nothing here.
    let stranger_dir = root.path().join("stranger");
    std::fs::create_dir_all(&stranger_dir).unwrap();
    let sl = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut stranger_urls = vec![format!("http://{}", sl.local_addr().unwrap())];
    stranger_urls.push(urls[second as usize - 1].clone());
    let stranger = start(&stranger_dir, file("c-other", 1, &stranger_urls), sl).await;
    let target = running[second as usize - 1].as_ref().unwrap();
    let started = Instant::now();
    while status(target).refused == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reason = status(target).last_refusal.unwrap();
    assert!(reason.contains("c-other"), "{reason}");
    let all: Vec<&Running> = running.iter().flatten().collect();
    assert_eq!(agreed_leader(&all).await, (second, epoch2));
    stranger.stop.cancel();
    for r in running.iter().flatten() {
        r.stop.cancel();
    }
}

fn record(at: flotilla_types::Position, n: u64) -> bytes::Bytes {
    use flotilla_types::*;
    bytes::Bytes::from(flotilla_wire::encode_record(&LogRecord {
        epoch: at.epoch,
        lsn: at.lsn,
        chain: Chain(n),
        digest: ContentDigest(n),
        commit_time_us: n,
        origin: NodeId::new("n1").unwrap(),
        pages: None,
        rows: Some(Default::default()),
        exchange: None,
    }))
}

async fn propose(
    r: &Running,
    at: flotilla_types::Position,
    bytes: bytes::Bytes,
    durability: flotilla_types::Durability,
) -> Result<(), driver::Unacknowledged> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    r.handle
        .proposals
        .send(driver::Proposal {
            at,
            record: Some(bytes),
            membership: None,
            waiters: vec![(durability, tx)],
        })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("an answer")
        .unwrap()
}

/// Transactions proposed on the leader are acknowledged per durability, land in every member's
/// log at their position, byte for byte, and are in the log of the leader elected after.
#[tokio::test(flavor = "multi_thread")]
async fn proposals_are_acknowledged_and_replicated_to_every_log() {
    use flotilla_types::{Durability, Epoch, Lsn, Position};
    let root = tempfile::tempdir().unwrap();
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| format!("http://{}", l.local_addr().unwrap()))
        .collect();
    let mut running: Vec<Option<Running>> = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let dir = root.path().join(format!("n{}", i + 1));
        std::fs::create_dir_all(&dir).unwrap();
        running.push(Some(start(&dir, file("c-p", i as u64 + 1, &urls), l).await));
    }
    let all: Vec<&Running> = running.iter().flatten().collect();
    let (leader, epoch) = agreed_leader(&all).await;
    let l = running[leader as usize - 1].as_ref().unwrap();
    let follower = running
        .iter()
        .flatten()
        .find(|r| r.handle.member_id != leader)
        .unwrap();

    // Not on a follower, and only at the next position.
    let next = |r: &Running| {
        let s = status(r);
        Position {
            epoch: Epoch(epoch),
            lsn: Lsn(s.last.0 + 1),
        }
    };
    let at = next(follower);
    let e = propose(follower, at, record(at, 0), Durability::Async)
        .await
        .unwrap_err();
    assert!(matches!(e, driver::Unacknowledged::NotProposed(_)), "{e}");
    let at = next(l);
    let skipped = Position {
        epoch: at.epoch,
        lsn: Lsn(at.lsn.0 + 1),
    };
    let e = propose(l, skipped, record(skipped, 0), Durability::Async)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("next position"), "{e}");

    // The writer counts positions itself (the status is published after the answers).
    let mut at = next(l);
    let mut written = Vec::new();
    for n in 1..=30u64 {
        if n > 1 {
            at.lsn = at.lsn.next();
        }
        let bytes = record(at, n);
        let durability =
            [Durability::Async, Durability::SemiSync, Durability::Quorum][n as usize % 3];
        propose(l, at, bytes.clone(), durability).await.unwrap();
        written.push((at, bytes));
    }
    // Every member's log holds them, byte for byte (async ones arrive a moment later).
    for r in running.iter().flatten() {
        let started = Instant::now();
        loop {
            let last = written.last().unwrap().0.lsn.0;
            if r.log.stats().durable_lsn >= last {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "member {} behind",
                r.handle.member_id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (at, bytes) in &written {
            let got = r.log.read(at.lsn.0, 1, usize::MAX).unwrap();
            assert_eq!(got[0], *bytes, "member {} at {at}", r.handle.member_id);
        }
    }
    // The leader stops; the next one holds every acknowledged transaction.
    running[leader as usize - 1].take().unwrap().stop.cancel();
    let rest: Vec<&Running> = running.iter().flatten().collect();
    let (second, epoch2) = agreed_leader(&rest).await;
    assert!(epoch2 > epoch);
    let s = running[second as usize - 1].as_ref().unwrap();
    for (at, bytes) in &written {
        assert_eq!(s.log.read(at.lsn.0, 1, usize::MAX).unwrap()[0], *bytes);
    }
    for r in running.iter().flatten() {
        r.stop.cancel();
    }
}

/// Members delete the log segments their databases applied and the consensus no longer keeps
/// in memory, saving the new base first; a member restarted from such a directory recovers
/// from its base and goes on taking part.
#[tokio::test(flavor = "multi_thread")]
async fn applied_log_segments_are_deleted_and_a_restart_starts_from_the_base() {
    use flotilla_types::{Durability, Epoch, Lsn, Position};
    let root = tempfile::tempdir().unwrap();
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| format!("http://{}", l.local_addr().unwrap()))
        .collect();
    let small = |dir: &Path, fresh: ClusterFile, listener: std::net::TcpListener| {
        let dir = dir.to_path_buf();
        async move {
            let f = ClusterFile::load(&dir).unwrap().unwrap_or(fresh);
            f.save(&dir).unwrap();
            let log = Arc::new(
                Log::open(
                    &dir.join("log"),
                    LogConfig {
                        segment_bytes: 4096,
                        ..LogConfig::default()
                    },
                    f.base_lsn,
                )
                .unwrap(),
            );
            let stop = CancellationToken::new();
            let (fatal_tx, fatal_rx) = flotilla_node::fatal::channel();
            let handle = driver::start(DriverParts {
                dir: dir.clone(),
                config: ConsensusConfig {
                    tail_entries: 20,
                    ..ConsensusConfig::new(f.member_id)
                },
                election_timeout_ms: 1000,
                file: f,
                log: log.clone(),
                credentials: flotilla_node::follower::Credentials {
                    tls: None,
                    token: None,
                },
                shutdown: stop.clone(),
                fatal: fatal_tx,
                events: None,
                db_lsn: 0,
            })
            .unwrap();
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = bare_router(handle.inbound.clone());
            let s = stop.clone();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { s.cancelled().await })
                    .await
            });
            Running {
                handle,
                log,
                stop,
                _fatal: fatal_rx,
            }
        }
    };
    let dirs: Vec<PathBuf> = (1..=3).map(|i| root.path().join(format!("n{i}"))).collect();
    let mut running: Vec<Option<Running>> = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        std::fs::create_dir_all(&dirs[i]).unwrap();
        running.push(Some(
            small(&dirs[i], file("c-r", i as u64 + 1, &urls), l).await,
        ));
    }
    let all: Vec<&Running> = running.iter().flatten().collect();
    let (leader, epoch) = agreed_leader(&all).await;
    let l = running[leader as usize - 1].as_ref().unwrap();
    let mut at = Position {
        epoch: Epoch(epoch),
        lsn: Lsn(status(l).last.0 + 1),
    };
    for n in 1..=200u64 {
        propose(l, at, record(at, n), Durability::Quorum)
            .await
            .unwrap();
        at.lsn = at.lsn.next();
    }
    // Retention runs every second: segments go, the base moves, on every member.
    let started = Instant::now();
    loop {
        let moved = dirs.iter().all(|d| {
            ClusterFile::load(d)
                .unwrap()
                .is_some_and(|f| f.base_lsn > 100)
        });
        if moved {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no member deleted its applied log"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in running.iter().flatten() {
        let base = ClusterFile::load(&dirs[r.handle.member_id as usize - 1])
            .unwrap()
            .unwrap()
            .base_lsn;
        assert!(
            r.log.first_lsn() > 1 && r.log.first_lsn() <= base + 1,
            "member {}",
            r.handle.member_id
        );
    }
    // A follower restarts from its base and takes part again.
    let f = (1..=3u64).find(|&i| i != leader).unwrap();
    let fi = f as usize - 1;
    running[fi].take().unwrap().stop.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listener = std::net::TcpListener::bind(urls[fi].trim_start_matches("http://")).unwrap();
    running[fi] = Some(small(&dirs[fi], file("c-r", f, &urls), listener).await);
    let l = running[leader as usize - 1].as_ref().unwrap();
    for n in 201..=220u64 {
        propose(l, at, record(at, n), Durability::Quorum)
            .await
            .unwrap();
        at.lsn = at.lsn.next();
    }
    let back = running[fi].as_ref().unwrap();
    let started = Instant::now();
    while back.log.stats().durable_lsn < at.lsn.0 - 1 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the restarted member did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in running.iter().flatten() {
        r.stop.cancel();
    }
}
