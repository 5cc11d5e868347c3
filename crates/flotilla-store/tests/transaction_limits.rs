//! A transaction whose log record would exceed the size limit is refused before it commits,
//! whatever makes it large (one huge value, many rows, pages rewritten by an update); the
//! leader keeps committing; a group of requests that together exceed the limit is split; a
//! runaway statement is cancelled at its time limit.

mod common;

use common::req;
use flotilla_store::*;
use flotilla_types::{Epoch, Lsn, NodeId};
use std::path::Path;

const LIMIT: u64 = 4 << 20;

fn open_leader(path: &Path) -> LeaderDb {
    let settings = DbSettings {
        max_transaction_bytes: LIMIT,
        ..DbSettings::default()
    };
    let (mut db, _) = LeaderDb::open(path, &settings, || "ab".repeat(16)).unwrap();
    db.uncaptured(Lsn(0), &NodeId::new("l").unwrap()).unwrap();
    db
}

fn commit_all(db: &mut LeaderDb, requests: &[TxnRequest]) -> CommitOutcome {
    db.commit_batch(requests, Epoch(1), &NodeId::new("l").unwrap(), 1)
        .unwrap()
}

fn commit_one(db: &mut LeaderDb, sql: &str) -> (RequestOutcome, Option<usize>) {
    let out = commit_all(db, &[req(&[(sql, vec![])])]);
    let size = out
        .record
        .as_ref()
        .map(|r| flotilla_wire::encode_record_with_rows(r, Some(&out.encoded_rows)).len());
    (out.outcomes.into_iter().next().unwrap(), size)
}

fn count(path: &Path, sql: &str) -> i64 {
    open_reader(path)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

fn assert_too_large(outcome: &RequestOutcome, what: &str) {
    match outcome {
        RequestOutcome::Failed { message, kind, .. } => {
            assert_eq!(*kind, FailureKind::TooLarge, "{what}: {message}");
            assert!(
                message.contains("4 MiB") && message.contains("max-transaction-mib"),
                "{what}: {message}"
            );
        }
        other => panic!("{what}: expected a refusal as too large, got {other:?}"),
    }
}

#[test]
fn transactions_too_large_for_the_log_are_refused_before_they_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leader.db");
    let mut db = open_leader(&path);
    for setup in [
        "CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB)",
        "CREATE TABLE wide(id INTEGER PRIMARY KEY, a, b, c, d)",
        "CREATE INDEX wide_a ON wide(a)",
        "CREATE INDEX wide_b ON wide(b)",
        "CREATE INDEX wide_c ON wide(c)",
    ] {
        let (outcome, _) = commit_one(&mut db, setup);
        assert!(
            matches!(outcome, RequestOutcome::Committed(_)),
            "{setup}: {outcome:?}"
        );
    }
    // 30,000 rows of 200-byte values, in transactions that fit.
    for i in 0..6 {
        let sql = format!(
            "INSERT INTO wide WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s \
             WHERE i < 5000) SELECT {i} * 5000 + i, i, -i, i * 7 % 1000, randomblob(200) FROM s"
        );
        let (outcome, _) = commit_one(&mut db, &sql);
        assert!(
            matches!(outcome, RequestOutcome::Committed(_)),
            "{outcome:?}"
        );
    }
    let position = db.meta().position;
    let cases = [
        // One value larger than the limit (the finding: 600 MB of zeroes).
        (
            "one huge value",
            "INSERT INTO blobs(b) VALUES (zeroblob(600000000))",
        ),
        (
            "one value just over",
            "INSERT INTO blobs(b) VALUES (zeroblob(4194400))",
        ),
        (
            "one huge text",
            "INSERT INTO blobs(b) VALUES (printf('%.*c', 5000000, 'x'))",
        ),
        // Many rows, each small: the row changes and pages grow together.
        (
            "many rows",
            "INSERT INTO blobs(b) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s \
             WHERE i < 4000) SELECT randomblob(1000) FROM s",
        ),
        // A never-ending INSERT ... SELECT is stopped by size, not left to fill the disk.
        (
            "an endless insert",
            "INSERT INTO blobs(b) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s) \
             SELECT randomblob(100) FROM s",
        ),
        // Every row of a table and its indexes rewritten.
        ("an update of every row", "UPDATE wide SET a = a + 1"),
        ("a delete of every row", "DELETE FROM wide"),
        // A schema change ships no rows (followers replay it) but writes pages.
        ("an index over every row", "CREATE INDEX wide_d ON wide(d)"),
        (
            "a copy of every row",
            "CREATE TABLE copy AS SELECT * FROM wide",
        ),
    ];
    for (what, sql) in cases {
        let (outcome, _) = commit_one(&mut db, sql);
        assert_too_large(&outcome, what);
        assert_eq!(db.meta().position, position, "{what}: nothing committed");
    }
    assert_eq!(count(&path, "SELECT count(*) FROM blobs"), 0);
    assert_eq!(count(&path, "SELECT count(*) FROM wide"), 30_000);
    // The leader keeps committing, and a transaction under the limit fits in its record.
    let (outcome, size) = commit_one(
        &mut db,
        "INSERT INTO blobs(b) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s \
         WHERE i < 1000) SELECT randomblob(1000) FROM s",
    );
    assert!(
        matches!(outcome, RequestOutcome::Committed(_)),
        "{outcome:?}"
    );
    let size = size.expect("a record") as u64;
    assert!(
        size < LIMIT,
        "a {size}-byte record passed a {LIMIT}-byte limit"
    );
    // A refusal earlier in a group does not count against the next request of the group.
    let out = commit_all(
        &mut db,
        &[
            req(&[("INSERT INTO blobs(b) VALUES (zeroblob(600000000))", vec![])]),
            req(&[("INSERT INTO blobs(b) VALUES (zeroblob(1000))", vec![])]),
        ],
    );
    assert_eq!(out.outcomes.len(), 2);
    assert_too_large(&out.outcomes[0], "first of a group");
    assert!(
        matches!(out.outcomes[1], RequestOutcome::Committed(_)),
        "{:?}",
        out.outcomes[1]
    );
}

#[test]
fn a_group_that_would_exceed_the_limit_is_split() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leader.db");
    let mut db = open_leader(&path);
    commit_one(
        &mut db,
        "CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB)",
    );
    // Each request alone is about 3 MiB of record (1.4 MiB of row changes and as much of
    // pages): two do not fit into one 4 MiB record.
    let one = || req(&[("INSERT INTO blobs(b) VALUES (randomblob(1400000))", vec![])]);
    let mut pending = vec![one(), one(), one()];
    let mut records = Vec::new();
    while !pending.is_empty() {
        let out = commit_all(&mut db, &pending);
        assert_eq!(out.outcomes.len(), pending.len());
        assert!(matches!(out.outcomes[0], RequestOutcome::Committed(_)));
        assert!(
            out.outcomes[1..]
                .iter()
                .all(|o| matches!(o, RequestOutcome::Retry)),
            "only one request fits each record: {:?}",
            out.outcomes
        );
        let record = out.record.expect("committed");
        let size = flotilla_wire::encode_record_with_rows(&record, Some(&out.encoded_rows)).len();
        assert!((size as u64) < LIMIT, "record of {size} bytes");
        records.push(record.lsn);
        pending.remove(0);
    }
    assert_eq!(records.len(), 3);
    assert_eq!(count(&path, "SELECT count(*) FROM blobs"), 3);
}

#[test]
fn a_runaway_statement_is_cancelled_at_its_time_limit_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leader.db");
    let mut db = open_leader(&path);
    commit_one(&mut db, "CREATE TABLE t(x)");
    let runaway = TxnRequest {
        timeout_ms: 100,
        ..req(&[
            ("INSERT INTO t VALUES (1)", vec![]),
            (
                "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 \
                 FROM c) SELECT x FROM c)",
                vec![],
            ),
        ])
    };
    let started = std::time::Instant::now();
    let out = commit_all(
        &mut db,
        &[runaway, req(&[("INSERT INTO t VALUES (2)", vec![])])],
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    match &out.outcomes[0] {
        RequestOutcome::Failed {
            statement,
            message,
            kind,
        } => {
            assert_eq!(*kind, FailureKind::TimedOut, "{message}");
            assert_eq!(*statement, 1);
            assert!(message.contains("100 ms"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(out.outcomes[1], RequestOutcome::Committed(_)));
    assert_eq!(count(&path, "SELECT sum(x) FROM t"), 2);
}

/// SQLite rolls back the whole transaction when a write is interrupted: the requests grouped
/// before it are undone too, and come back to be run again, not answered as committed.
#[test]
fn an_interrupted_write_sends_its_group_back_to_be_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leader.db");
    let mut db = open_leader(&path);
    commit_one(&mut db, "CREATE TABLE t(x)");
    let position = db.meta().position;
    let endless = TxnRequest {
        timeout_ms: 100,
        ..req(&[(
            "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
             WHERE x < 3) SELECT x FROM c, (WITH RECURSIVE d(y) AS (SELECT 1 UNION ALL \
             SELECT y + 1 FROM d) SELECT y FROM d WHERE y < 0)",
            vec![],
        )])
    };
    let out = commit_all(
        &mut db,
        &[
            req(&[("INSERT INTO t VALUES (10)", vec![])]),
            endless,
            req(&[("INSERT INTO t VALUES (20)", vec![])]),
        ],
    );
    assert!(
        matches!(out.outcomes[0], RequestOutcome::Retry),
        "{:?}",
        out.outcomes
    );
    assert!(
        matches!(
            out.outcomes[1],
            RequestOutcome::Failed {
                kind: FailureKind::TimedOut,
                ..
            }
        ),
        "{:?}",
        out.outcomes
    );
    assert!(
        matches!(out.outcomes[2], RequestOutcome::Retry),
        "{:?}",
        out.outcomes
    );
    assert!(out.record.is_none());
    assert_eq!(db.meta().position, position);
    // Run again, they commit.
    let again = commit_all(
        &mut db,
        &[
            req(&[("INSERT INTO t VALUES (10)", vec![])]),
            req(&[("INSERT INTO t VALUES (20)", vec![])]),
        ],
    );
    assert!(again
        .outcomes
        .iter()
        .all(|o| matches!(o, RequestOutcome::Committed(_))));
    assert_eq!(count(&path, "SELECT sum(x) FROM t"), 30);
}

/// Reads and writes that change little are never refused for the size of the page cache, even
/// with a limit below it (found by an outside probe: with a 1 MiB limit, a long `SELECT` in an
/// execute request was refused as too large).
#[test]
fn statements_that_write_little_fit_a_limit_smaller_than_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leader.db");
    let settings = DbSettings {
        max_transaction_bytes: 1 << 20,
        ..DbSettings::default()
    };
    let (mut db, _) = LeaderDb::open(&path, &settings, || "ab".repeat(16)).unwrap();
    db.uncaptured(Lsn(0), &NodeId::new("l").unwrap()).unwrap();
    commit_one(&mut db, "CREATE TABLE big(id INTEGER PRIMARY KEY, v TEXT)");
    for _ in 0..4 {
        let (outcome, _) = commit_one(
            &mut db,
            "INSERT INTO big(v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s \
             WHERE i < 1000) SELECT printf('%.100c', 'x') FROM s",
        );
        assert!(
            matches!(outcome, RequestOutcome::Committed(_)),
            "{outcome:?}"
        );
    }
    for sql in [
        "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
         WHERE x < 300000) SELECT x FROM c)",
        "DELETE FROM big WHERE length(v) = 7",
        "UPDATE big SET v = v WHERE id < 0",
    ] {
        let (outcome, _) = commit_one(&mut db, sql);
        assert!(
            matches!(outcome, RequestOutcome::Committed(_)),
            "{sql}: {outcome:?}"
        );
    }
}
