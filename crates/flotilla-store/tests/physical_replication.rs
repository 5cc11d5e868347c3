//! The leader's capture and a follower's apply, on real SQLite files: followers end page-identical.

mod common;

use common::{req, Rng};

use flotilla_store::snapshot::{stream, SnapshotReceiver};
use flotilla_store::*;
use flotilla_types::{Epoch, LogRecord, Lsn, NodeId};
use rusqlite::types::Value;
use std::path::Path;

fn open_leader(path: &Path) -> LeaderDb {
    let (mut db, _) = LeaderDb::open(path, &DbSettings::default(), || "ab".repeat(16)).unwrap();
    assert!(db
        .uncaptured(Lsn(0), &NodeId::new("l").unwrap())
        .unwrap()
        .is_empty());
    db
}

fn commit(db: &mut LeaderDb, r: TxnRequest) -> (Vec<RequestOutcome>, Option<LogRecord>) {
    let out = db
        .commit_batch(&[r], Epoch(1), &NodeId::new("l").unwrap(), 1)
        .unwrap();
    let record = out.record.map(|mut r| {
        r.rows = Some(flotilla_wire::decode_rows(&out.encoded_rows).unwrap());
        r
    });
    (out.outcomes, record)
}

fn bootstrap(leader_path: &Path, target: &Path) -> FollowerDb {
    let reader = open_reader(leader_path).unwrap();
    let mut rx = SnapshotReceiver::new(target).unwrap();
    stream(&reader, 1 << 16, |chunk| rx.feed(&chunk))
        .unwrap()
        .unwrap();
    rx.install().unwrap();
    FollowerDb::open(target, &DbSettings::default())
        .unwrap()
        .expect("installed")
}

fn random_txn(rng: &mut Rng, i: u64) -> TxnRequest {
    match rng.below(10) {
        0 => req(&[(
            "INSERT INTO big(b) VALUES (?1)",
            vec![Value::Blob(vec![
                (i % 251) as u8;
                (rng.below(40_000) + 5000) as usize
            ])],
        )]),
        1 => req(&[(
            "DELETE FROM t WHERE id % 7 = ?1",
            vec![Value::Integer((i % 7) as i64)],
        )]),
        2 => req(&[(
            "UPDATE t SET v = v || 'x' WHERE id % 5 = ?1",
            vec![Value::Integer((i % 5) as i64)],
        )]),
        3 if i % 50 == 3 => req(&[(
            &format!(
                "CREATE TABLE IF NOT EXISTS extra{} (a INTEGER PRIMARY KEY, b TEXT)",
                i % 4
            ),
            vec![],
        )]),
        4 if i % 60 == 4 => req(&[("DELETE FROM big", vec![])]),
        _ => req(&[
            (
                "INSERT INTO t(k, v) VALUES (?1, ?2)",
                vec![Value::Integer(i as i64), Value::Text("v".repeat(100))],
            ),
            (
                "INSERT INTO t(k, v) VALUES (?1, ?2)",
                vec![
                    Value::Integer(-(i as i64)),
                    Value::Text("w".repeat(rng.below(3000) as usize)),
                ],
            ),
        ]),
    }
}

#[test]
fn followers_end_page_identical_under_random_transactions() {
    for seed in 1..=4u64 {
        let dir = tempfile::tempdir().unwrap();
        let lp = dir.path().join("leader.db");
        let mut leader = open_leader(&lp);
        commit(
            &mut leader,
            req(&[
                (
                    "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT)",
                    vec![],
                ),
                ("CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB)", vec![]),
            ]),
        );
        // Bootstrapped early: everything after this comes through the log.
        let mut follower = bootstrap(&lp, &dir.path().join("f.db"));
        let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut pending = Vec::new();
        for i in 0..300 {
            let (_, rec) = commit(&mut leader, random_txn(&mut rng, i));
            let rec = rec.expect("committed");
            // Every record survives its encoding.
            let rec = flotilla_wire::decode_record(&flotilla_wire::encode_record(&rec)).unwrap();
            pending.push(rec);
            // Apply in batches of random size, as catch-up does.
            if rng.below(4) == 0 {
                follower.apply(&pending).unwrap();
                pending.clear();
            }
        }
        follower.apply(&pending).unwrap();
        assert_eq!(follower.meta(), leader.meta());
        let reader = open_reader(&lp).unwrap();
        assert_eq!(
            page_digest(&reader).unwrap(),
            page_digest(follower.connection()).unwrap(),
            "seed {seed}"
        );
    }
}

#[test]
fn capture_survives_checkpoints_and_wal_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let lp = dir.path().join("leader.db");
    let mut leader = open_leader(&lp);
    commit(
        &mut leader,
        req(&[("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)", vec![])]),
    );
    let mut follower = bootstrap(&lp, &dir.path().join("f.db"));
    let writer2 = rusqlite::Connection::open(&lp).unwrap();
    for i in 0..60 {
        let (_, rec) = commit(
            &mut leader,
            req(&[(
                "INSERT INTO t(v) VALUES (?1)",
                vec![Value::Blob(vec![i as u8; 3000])],
            )]),
        );
        if i % 10 == 9 {
            // A full checkpoint from another connection: the next commit restarts the WAL.
            writer2
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
        }
        follower.apply(&[rec.unwrap()]).unwrap();
    }
    let reader = open_reader(&lp).unwrap();
    assert_eq!(
        page_digest(&reader).unwrap(),
        page_digest(follower.connection()).unwrap()
    );
}

#[test]
fn capture_ignores_stale_frames_after_a_wal_restart_without_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let lp = dir.path().join("leader.db");
    let mut leader = open_leader(&lp);
    commit(
        &mut leader,
        req(&[("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)", vec![])]),
    );
    let mut follower = bootstrap(&lp, &dir.path().join("f.db"));
    let other = rusqlite::Connection::open(&lp).unwrap();
    for round in 0..4u8 {
        // A long WAL of many pages, then a passive checkpoint: the next commit restarts the
        // WAL from the start and the old frames stay in the file behind it.
        for i in 0..30u8 {
            let blob = vec![round.wrapping_mul(31).wrapping_add(i); 20_000];
            let (_, rec) = commit(
                &mut leader,
                req(&[("INSERT INTO t(v) VALUES (?1)", vec![Value::Blob(blob)])]),
            );
            follower.apply(&[rec.unwrap()]).unwrap();
        }
        other
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .unwrap();
        let (_, rec) = commit(
            &mut leader,
            req(&[(
                "UPDATE t SET v = x'00' WHERE id = ?1",
                vec![Value::Integer(round as i64 + 1)],
            )]),
        );
        follower.apply(&[rec.unwrap()]).unwrap();
    }
    let reader = open_reader(&lp).unwrap();
    assert_eq!(
        page_digest(&reader).unwrap(),
        page_digest(follower.connection()).unwrap()
    );
}

#[test]
fn a_record_that_does_not_follow_is_refused_and_nothing_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let lp = dir.path().join("leader.db");
    let mut leader = open_leader(&lp);
    commit(
        &mut leader,
        req(&[("CREATE TABLE t(id INTEGER PRIMARY KEY)", vec![])]),
    );
    let mut follower = bootstrap(&lp, &dir.path().join("f.db"));
    let (_, r1) = commit(&mut leader, req(&[("INSERT INTO t VALUES (1)", vec![])]));
    let (_, r2) = commit(&mut leader, req(&[("INSERT INTO t VALUES (2)", vec![])]));
    let before = follower.meta().clone();
    // A gap.
    assert!(follower.apply(&[r2.clone().unwrap()]).is_err());
    // A record of another history (a different chain).
    let mut forged = r1.clone().unwrap();
    forged.chain = flotilla_types::Chain(12345);
    let err = follower.apply(&[forged]).unwrap_err();
    assert!(err.to_string().contains("checksum chain"), "{err}");
    assert_eq!(follower.meta(), &before);
    follower.apply(&[r1.unwrap(), r2.unwrap()]).unwrap();
    assert_eq!(follower.meta(), leader.meta());
}

#[test]
fn failed_request_rolls_back_alone_and_refusals_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let lp = dir.path().join("leader.db");
    let mut leader = open_leader(&lp);
    commit(
        &mut leader,
        req(&[("CREATE TABLE t(id INTEGER PRIMARY KEY)", vec![])]),
    );
    let out = leader
        .commit_batch(
            &[
                req(&[
                    ("INSERT INTO t VALUES (1)", vec![]),
                    ("INSERT INTO nope VALUES (1)", vec![]),
                ]),
                req(&[("INSERT INTO t VALUES (2)", vec![])]),
                req(&[("BEGIN", vec![])]),
            ],
            Epoch(1),
            &NodeId::new("l").unwrap(),
            5,
        )
        .unwrap();
    match &out.outcomes[0] {
        RequestOutcome::Failed {
            statement,
            message,
            kind,
        } => {
            assert_eq!(*statement, 1);
            assert!(message.contains("no such table: nope"), "{message}");
            assert_eq!(*kind, FailureKind::Sql);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(out.outcomes[1], RequestOutcome::Committed(_)));
    assert!(
        matches!(&out.outcomes[2], RequestOutcome::Failed { kind: FailureKind::Refused, message, .. } if message.contains("transaction control"))
    );
    let reader = open_reader(&lp).unwrap();
    let ids: Vec<i64> = reader
        .prepare("SELECT id FROM t")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(ids, vec![2]);
}

#[test]
fn idempotency_key_returns_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let lp = dir.path().join("leader.db");
    let mut leader = open_leader(&lp);
    commit(
        &mut leader,
        req(&[(
            "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, x)",
            vec![],
        )]),
    );
    let mut r = req(&[("INSERT INTO t(x) VALUES (1)", vec![])]);
    r.idempotency_key = Some("k1".into());
    let (first, rec) = commit(&mut leader, r.clone());
    let pos = rec.unwrap().position();
    let (second, rec2) = commit(&mut leader, r);
    assert!(rec2.is_none(), "nothing new committed");
    let RequestOutcome::Committed(results) = &first[0] else {
        panic!()
    };
    assert_eq!(
        second[0],
        RequestOutcome::Duplicate {
            position: pos,
            results: results.clone()
        }
    );
}

#[test]
fn a_commit_missing_from_the_log_is_recaptured_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let lp = dir.path().join("leader.db");
    let origin = NodeId::new("l").unwrap();
    let mut leader = open_leader(&lp);
    let (_, r1) = commit(&mut leader, req(&[("CREATE TABLE t(x)", vec![])]));
    let (_, r2) = commit(&mut leader, req(&[("INSERT INTO t VALUES (1)", vec![])]));
    // Simulates a crash after the SQLite commit of lsn 2, before its log append.
    std::mem::forget(leader);
    let (mut leader, created) =
        LeaderDb::open(&lp, &DbSettings::default(), || unreachable!()).unwrap();
    let recaptured: Vec<LogRecord> = leader
        .uncaptured(Lsn(1), &origin)
        .unwrap()
        .into_iter()
        .map(|(mut r, rows)| {
            r.rows = Some(flotilla_wire::decode_rows(&rows).unwrap());
            r
        })
        .collect();
    assert!(!created);
    assert_eq!(recaptured.len(), 1);
    // The re-created record carries the insert's row change too.
    assert_eq!(recaptured[0].rows.as_ref().unwrap().items.len(), 1);
    assert_eq!(recaptured[0], r2.unwrap());
    assert!(recaptured[0].links_to(r1.unwrap().chain));
    assert_eq!(leader.meta().position.lsn, Lsn(2));
    // Capture continues after the recovered commit.
    let (_, r3) = commit(&mut leader, req(&[("INSERT INTO t VALUES (2)", vec![])]));
    assert!(r3.unwrap().links_to(recaptured[0].chain));
}

/// A power loss took the leader's newest commits, which created tables; they are completed from
/// the log's page images. Found by the simulator: completed through the leader's own connection,
/// the pages changed under SQLite's cached parse of the schema page, and the next CREATE TABLE
/// wrote a schema without the completed tables (a corrupt database).
#[test]
fn a_leader_completed_from_the_log_keeps_the_tables_the_lost_commits_created() {
    let dir = tempfile::tempdir().unwrap();
    let lp = dir.path().join("leader.db");
    let mut leader = open_leader(&lp);
    commit(&mut leader, req(&[("CREATE TABLE t(x)", vec![])]));
    commit(&mut leader, req(&[("INSERT INTO t VALUES (1)", vec![])]));
    // The files as a power loss leaves them: the commits below never reached the disk.
    let lost = dir.path().join("lost");
    std::fs::create_dir(&lost).unwrap();
    let restored = lost.join("leader.db");
    for suffix in ["", "-wal"] {
        let from = format!("{}{suffix}", lp.display());
        if Path::new(&from).exists() {
            std::fs::copy(&from, format!("{}{suffix}", restored.display())).unwrap();
        }
    }
    let mut log = Vec::new();
    for (i, sql) in [
        "CREATE TABLE a(x)",
        "CREATE TABLE b(x)",
        "INSERT INTO a VALUES (7)",
    ]
    .iter()
    .enumerate()
    {
        let (_, r) = commit(&mut leader, req(&[(sql, vec![])]));
        let r = r.unwrap();
        assert_eq!(r.lsn, Lsn(3 + i as u64));
        log.push(r);
    }
    drop(leader);

    let (mut back, _) =
        LeaderDb::open(&restored, &DbSettings::default(), || unreachable!()).unwrap();
    assert_eq!(back.meta().position.lsn, Lsn(2));
    back.complete_from_log(&log).unwrap();
    assert_eq!(back.meta().position.lsn, Lsn(5));
    // The same connection goes on writing: it must see a and b.
    let (out, _) = commit(
        &mut back,
        req(&[
            ("CREATE TABLE IF NOT EXISTS a(x)", vec![]),
            ("CREATE TABLE c(x)", vec![]),
            ("INSERT INTO b VALUES (8)", vec![]),
        ]),
    );
    assert!(matches!(out[..], [RequestOutcome::Committed(_)]), "{out:?}");
    let r = open_reader(&restored).unwrap();
    let check: String = r
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let tables: Vec<String> = r
        .prepare("SELECT name FROM sqlite_schema WHERE name IN ('a','b','c','t') ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(tables, ["a", "b", "c", "t"]);
    let sum: i64 = r
        .query_row("SELECT (SELECT x FROM a) + (SELECT x FROM b)", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(sum, 15);
}

/// Found by the pipeline tests: a schema that outgrows page 1 (here many tables with long
/// definitions) turns page 1 into an interior page. Applied through sqlite_dbpage, the
/// follower's own connection kept its parse of page 1 as a leaf and read the schema as
/// "malformed". Each record is applied alone so that every step reads the schema back.
#[test]
fn a_follower_applies_a_schema_that_outgrows_its_first_page() {
    let dir = tempfile::tempdir().unwrap();
    let lp = dir.path().join("leader.db");
    let mut leader = open_leader(&lp);
    let fp = dir.path().join("follower.db");
    let mut follower = bootstrap(&lp, &fp);
    for i in 0..40 {
        let cols: Vec<String> = (0..20)
            .map(|c| format!("column_with_a_rather_long_name_{c} TEXT DEFAULT 'x'"))
            .collect();
        let sql = format!(
            "CREATE TABLE t{i} (id INTEGER PRIMARY KEY, {})",
            cols.join(", ")
        );
        let (_, r) = commit(&mut leader, req(&[(&sql, vec![])]));
        follower.apply(&[r.unwrap()]).unwrap();
        let (_, r) = commit(
            &mut leader,
            req(&[(&format!("INSERT INTO t{i} (id) VALUES ({i})"), vec![])]),
        );
        follower.apply(&[r.unwrap()]).unwrap();
    }
    assert_eq!(follower.meta().position, leader.meta().position);
    assert_eq!(
        page_digest(&open_reader(&lp).unwrap()).unwrap(),
        page_digest(&open_reader(&fp).unwrap()).unwrap()
    );
    let check: String = open_reader(&fp)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
