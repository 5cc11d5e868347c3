//! The leader's row capture and a logical replica's apply, on real SQLite files: a replica
//! without a filter ends with the leader's rows; a filtered one with exactly the filtered
//! projection, computed by running the filter as a query on the leader.

mod common;

use common::{req, Rng};

use flotilla_store::*;
use flotilla_types::{Epoch, LogRecord, Lsn, NodeId, RowItem, RowOp};
use rusqlite::types::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

fn open_leader(path: &Path) -> LeaderDb {
    let (mut db, _) = LeaderDb::open(path, &DbSettings::default(), || "ab".repeat(16)).unwrap();
    db.uncaptured(Lsn(0), &NodeId::new("l").unwrap()).unwrap();
    db
}

/// Commits one request; the record with its decoded rows (as a logical follower gets it).
fn commit(db: &mut LeaderDb, r: TxnRequest) -> Option<LogRecord> {
    let out = db
        .commit_batch(&[r], Epoch(1), &NodeId::new("l").unwrap(), 1)
        .unwrap();
    let rows = out.encoded_rows;
    out.record.map(|mut rec| {
        let bytes = flotilla_wire::encode_record_with_rows(&rec, Some(&rows));
        let shipped =
            flotilla_wire::project_record(&bytes, flotilla_types::LogKind::Logical).unwrap();
        rec = flotilla_wire::decode_record(&shipped).unwrap();
        rec
    })
}

/// The leader's database, a snapshot of it, and a replica, in `dir`.
fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("leader.db"),
        dir.join("snap.db"),
        dir.join("replica.db"),
    )
}

fn replica(snapshot: &Path, path: &Path, filter: &RowFilter) -> RowReplica {
    common::logical_replica(snapshot, path, filter)
}

fn rows(conn: &rusqlite::Connection, sql: &str) -> Vec<Vec<Value>> {
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

const SETUP: &[&str] = &[
    "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER)",
    "CREATE TABLE norow(a, b)",
    "CREATE TABLE wr(k TEXT PRIMARY KEY, x, y) WITHOUT ROWID",
    "CREATE TABLE audit(id INTEGER PRIMARY KEY, what TEXT)",
    "CREATE TRIGGER t_audit AFTER INSERT ON t BEGIN INSERT INTO audit(what) VALUES ('t ' || NEW.id); END",
];

fn random_request(rng: &mut Rng, i: u64) -> TxnRequest {
    let id = Value::Integer(rng.below(60) as i64);
    let n = Value::Integer(rng.below(100) as i64);
    let k = Value::Text(format!("k{}", rng.below(40)));
    match rng.below(14) {
        0..=3 => req(&[(
            "INSERT OR REPLACE INTO t(id, v, n) VALUES (?1, ?2, ?3)",
            vec![id, Value::Text(format!("v{i}")), n],
        )]),
        4 => req(&[("UPDATE t SET n = ?1, v = v || '!' WHERE id % 7 = ?2", vec![n, Value::Integer(rng.below(7) as i64)])]),
        5 => req(&[("DELETE FROM t WHERE id = ?1", vec![id])]),
        6 => req(&[(
            "INSERT INTO norow VALUES (?1, ?2)",
            vec![n, Value::Blob(vec![i as u8; (rng.below(50)) as usize])],
        )]),
        7 => req(&[("UPDATE norow SET b = NULL, rowid = rowid + 1000 WHERE a = ?1", vec![n])]),
        8 => req(&[(
            "INSERT INTO wr VALUES (?1, ?2, ?3) ON CONFLICT(k) DO UPDATE SET x = excluded.x, y = y + 1",
            vec![k, Value::Real(rng.below(1000) as f64 / 7.0), Value::Integer(1)],
        )]),
        9 => req(&[("DELETE FROM wr WHERE k = ?1", vec![k])]),
        // A request that fails half-way: nothing of it may reach the replica.
        10 => req(&[
            ("INSERT INTO t(id, v, n) VALUES (1000 + ?1, 'doomed', 0)", vec![Value::Integer(i as i64)]),
            ("INSERT INTO nope VALUES (1)", vec![]),
        ]),
        11 => req(&[("UPDATE t SET id = id + 100 WHERE id = ?1", vec![id])]),
        12 => req(&[
            ("UPDATE wr SET k = k || 'x' WHERE k = ?1", vec![k]),
            ("INSERT INTO t(v, n) VALUES ('auto', ?1)", vec![n]),
        ]),
        _ => req(&[("DELETE FROM norow", vec![])]),
    }
}

/// Runs the workload: setup, snapshot, then random transactions with schema changes half-way.
/// Returns the records after the snapshot.
fn workload(leader: &mut LeaderDb, lp: &Path, snap: &Path, seed: u64, n: u64) -> Vec<LogRecord> {
    for s in SETUP {
        commit(leader, req(&[(s, vec![])])).unwrap();
    }
    for i in 0..20 {
        commit(leader, random_request(&mut Rng::new(seed + i), i));
    }
    common::snapshot(lp, snap);
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for i in 0..n {
        let r = if i == n / 3 {
            req(&[
                ("ALTER TABLE t ADD COLUMN extra TEXT DEFAULT 'd'", vec![]),
                ("UPDATE t SET extra = 'e' || id WHERE id % 2 = 0", vec![]),
                ("CREATE INDEX t_n ON t(n)", vec![]),
            ])
        } else if i == n / 2 {
            req(&[
                ("CREATE TABLE later(id INTEGER PRIMARY KEY, s TEXT)", vec![]),
                ("INSERT INTO later(s) VALUES ('one'), ('two')", vec![]),
                ("ALTER TABLE norow RENAME COLUMN b TO bee", vec![]),
            ])
        } else if i == 2 * n / 3 {
            req(&[("DROP TABLE later", vec![])])
        } else {
            random_request(&mut rng, i)
        };
        out.extend(commit(leader, r));
    }
    out
}

const COMPARE: &[&str] = &[
    "SELECT * FROM t ORDER BY id",
    "SELECT rowid, * FROM norow ORDER BY rowid",
    "SELECT * FROM wr ORDER BY k",
    "SELECT * FROM audit ORDER BY id",
];

#[test]
fn an_unfiltered_replica_ends_with_the_leaders_rows() {
    for seed in [1u64, 7, 99] {
        let dir = tempfile::tempdir().unwrap();
        let (lp, sp, rp) = paths(dir.path());
        let mut leader = open_leader(&lp);
        let records = workload(&mut leader, &lp, &sp, seed * 1_000_003, 300);
        let mut replica = replica(&sp, &rp, &RowFilter::default());
        // In batches of varying size, as a catching-up follower applies them.
        for chunk in records.chunks(1 + (seed as usize % 5)) {
            replica.apply(chunk).unwrap();
        }
        assert_eq!(replica.meta().position, leader.meta().position);
        let l = open_reader(&lp).unwrap();
        for q in COMPARE {
            assert_eq!(
                rows(&l, q),
                rows(replica.connection(), q),
                "seed {seed}: {q}"
            );
        }
        // The trigger is not on the replica: its effects arrived as rows (checked above).
        let triggers = rows(
            replica.connection(),
            "SELECT name FROM sqlite_schema WHERE type = 'trigger'",
        );
        assert!(triggers.is_empty());
        // Schema changes reached it in order.
        assert_eq!(
            rows(
                replica.connection(),
                "SELECT count(*) FROM pragma_table_info('t') WHERE name = 'extra'"
            ),
            vec![vec![Value::Integer(1)]]
        );
    }
}

#[test]
fn a_filtered_replica_ends_with_exactly_the_filtered_projection() {
    let filter = RowFilter::parse(
        &["t,wr".to_string()],
        &["wr:k,x".to_string()],
        &["t: n % 3 = 0".to_string()],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (lp, sp, rp) = paths(dir.path());
    let mut leader = open_leader(&lp);
    let records = workload(&mut leader, &lp, &sp, 5, 400);
    let mut replica = replica(&sp, &rp, &filter);
    for chunk in records.chunks(3) {
        replica.apply(chunk).unwrap();
    }
    let l = open_reader(&lp).unwrap();
    let r = replica.connection();
    assert_eq!(
        rows(&l, "SELECT * FROM t WHERE n % 3 = 0 ORDER BY id"),
        rows(r, "SELECT * FROM t ORDER BY id")
    );
    assert_eq!(
        rows(&l, "SELECT k, x FROM wr ORDER BY k"),
        rows(r, "SELECT * FROM wr ORDER BY k")
    );
    let tables = rows(
        r,
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_flotilla%' ESCAPE '\\' ORDER BY name",
    );
    assert_eq!(
        tables,
        vec![
            vec![Value::Text("t".into())],
            vec![Value::Text("wr".into())]
        ]
    );
    // Restarting with another filter is refused, naming both.
    let other = RowFilter::parse(&["t".to_string()], &[], &[]).unwrap();
    drop(replica);
    let err = RowReplica::open(
        &rp,
        &DbSettings::default(),
        &other,
        ConflictPolicy::Stop,
        Arc::new(AtomicU64::new(0)),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("built with the filter"), "{err}");
}

#[test]
fn a_filter_naming_what_the_leader_lacks_is_refused_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let (lp, sp) = (dir.path().join("leader.db"), dir.path().join("snap.db"));
    let mut leader = open_leader(&lp);
    commit(&mut leader, req(&[(SETUP[0], vec![])]));
    common::snapshot(&lp, &sp);
    for (t, c, w, needle) in [
        (
            vec!["nope"],
            vec![],
            vec![],
            "table \"nope\" does not exist",
        ),
        (vec![], vec!["t:id,zz"], vec![], "has no column \"zz\""),
        (
            vec![],
            vec!["t:v"],
            vec![],
            "must include its primary key column \"id\"",
        ),
        (
            vec![],
            vec![],
            vec!["t: no_such_col > 1"],
            "the predicate \"no_such_col > 1\" does not work on table t: no such column: no_such_col (at character 1 of the expression); the columns are id, v, n",
        ),
    ] {
        let s = |v: Vec<&str>| v.into_iter().map(String::from).collect::<Vec<_>>();
        let f = RowFilter::parse(&s(t), &s(c), &s(w)).unwrap();
        let err = RowReplica::build(
            &sp,
            &dir.path().join("r.db"),
            &DbSettings::default(),
            &f,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
}

#[test]
fn capture_records_before_and_after_and_drops_rolled_back_requests() {
    let dir = tempfile::tempdir().unwrap();
    let lp = dir.path().join("leader.db");
    let mut leader = open_leader(&lp);
    commit(&mut leader, req(&[(SETUP[0], vec![])]));
    let out = leader
        .commit_batch(
            &[
                req(&[("INSERT INTO t VALUES (1, 'a', 10)", vec![])]),
                req(&[
                    ("INSERT INTO t VALUES (2, 'b', 20)", vec![]),
                    ("INSERT INTO t VALUES (1, 'dup', 0)", vec![]),
                ]),
                req(&[("UPDATE t SET v = 'z' WHERE id = 1", vec![])]),
            ],
            Epoch(1),
            &NodeId::new("l").unwrap(),
            1,
        )
        .unwrap();
    assert!(matches!(out.outcomes[1], RequestOutcome::Failed { .. }));
    let p = flotilla_wire::decode_rows(&out.encoded_rows).unwrap();
    let changes: Vec<_> = p
        .items
        .iter()
        .map(|i| match i {
            RowItem::Change(c) => c.clone(),
            RowItem::Schema(_) => panic!("no schema change here"),
        })
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0].op, RowOp::Insert);
    assert_eq!(changes[1].op, RowOp::Update);
    let shape = p.shape(&changes[1]);
    assert_eq!(shape.columns, vec!["id", "v", "n"]);
    assert_eq!(shape.key, vec![0]);
    use flotilla_types::SqlValue as V;
    assert_eq!(
        changes[1].before.as_ref().unwrap(),
        &vec![V::Integer(1), V::Text("a".into()), V::Integer(10)]
    );
    assert_eq!(
        changes[1].after.as_ref().unwrap(),
        &vec![V::Integer(1), V::Text("z".into()), V::Integer(10)]
    );
    assert_eq!(leader.last_rows().unwrap().unwrap(), p);
}

#[test]
fn vacuum_is_refused_so_rowids_never_renumber() {
    let dir = tempfile::tempdir().unwrap();
    let lp = dir.path().join("leader.db");
    let mut leader = open_leader(&lp);
    commit(&mut leader, req(&[(SETUP[1], vec![])]));
    let out = leader
        .commit_batch(
            &[req(&[("VACUUM", vec![])])],
            Epoch(1),
            &NodeId::new("l").unwrap(),
            1,
        )
        .unwrap();
    match &out.outcomes[0] {
        RequestOutcome::Failed { message, .. } => {
            assert!(message.contains("VACUUM"), "{message}")
        }
        other => panic!("VACUUM was not refused: {other:?}"),
    }
}

#[test]
fn a_logical_follower_takes_writes_to_its_own_tables_only_and_keeps_them_across_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let (lp, sp, rp) = paths(dir.path());
    let mut leader = open_leader(&lp);
    commit(&mut leader, req(&[(SETUP[0], vec![])]));
    commit(
        &mut leader,
        req(&[("INSERT INTO t VALUES (1, 'a', 1)", vec![])]),
    );
    common::snapshot(&lp, &sp);
    let mut replica = replica(&sp, &rp, &RowFilter::default());
    let s = |v: &[&str]| -> Vec<(String, flotilla_store::Params)> {
        v.iter().map(|x| (x.to_string(), vec![].into())).collect()
    };
    let out = replica
        .execute_local(
            &s(&[
                "CREATE TABLE mine(id INTEGER PRIMARY KEY, note TEXT)",
                "INSERT INTO mine(note) SELECT v FROM t",
                "CREATE INDEX t_local ON t(n)",
            ]),
            0,
        )
        .unwrap();
    assert!(
        matches!(out, LocalOutcome::Committed(ref r) if r[1].rows_affected == 1),
        "{out:?}"
    );
    for sql in [
        "INSERT INTO t VALUES (2, 'b', 2)",
        "DROP TABLE t",
        "ALTER TABLE t ADD COLUMN z",
        "PRAGMA user_version = 5",
        "PRAGMA main.application_id = 7",
    ] {
        match replica.execute_local(&s(&[sql]), 0).unwrap() {
            LocalOutcome::Failed {
                misdirected,
                message,
                ..
            } => {
                assert!(misdirected, "{sql}: {message}");
                assert!(message.contains("replicated from the leader"), "{message}");
            }
            other => panic!("{sql} was accepted: {other:?}"),
        }
    }
    // A unique index of its own on a replicated table could refuse the leader's rows; one on
    // an expression or with a WHERE clause could fail to evaluate on them.
    for (sql, needle) in [
        ("CREATE UNIQUE INDEX ux ON t(n)", "unique index on t"),
        (
            "create  unique index if not exists ux2 on t(v) where n > 0",
            "unique index on t",
        ),
        (
            "/* x */ CREATE UNIQUE INDEX ux3 ON t(n, v)",
            "unique index on t",
        ),
        ("CREATE INDEX jx ON t(lower(v))", "expression of t"),
        ("CREATE INDEX ex ON t(n, abs(n))", "expression of t"),
        (
            "CREATE INDEX px ON t(n) WHERE json_valid(v)",
            "WHERE clause on t",
        ),
    ] {
        match replica.execute_local(&s(&[sql]), 0).unwrap() {
            LocalOutcome::Failed { message, kind, .. } => {
                assert_eq!(kind, FailureKind::Refused, "{sql}: {message}");
                assert!(message.contains(needle), "{sql}: {message}");
            }
            other => panic!("{sql} was accepted: {other:?}"),
        }
    }
    // A plain index of its own is fine.
    assert!(matches!(
        replica
            .execute_local(&s(&["CREATE INDEX plain_v ON t(v, n)"]), 0)
            .unwrap(),
        LocalOutcome::Committed(_)
    ));
    assert!(matches!(
        replica
            .execute_local(&s(&["CREATE UNIQUE INDEX mine_note ON mine(note)"]), 0)
            .unwrap(),
        LocalOutcome::Committed(_)
    ));
    // A local table renamed stays local (writable) under its new name, and can be dropped
    // (found by an outside probe: the old name stayed in the local set).
    for sql in [
        "CREATE TABLE ren(x)",
        "ALTER TABLE ren RENAME TO ren2",
        "INSERT INTO ren2 VALUES (1)",
        "DROP TABLE ren2",
    ] {
        let out = replica.execute_local(&s(&[sql]), 0).unwrap();
        assert!(matches!(out, LocalOutcome::Committed(_)), "{sql}: {out:?}");
    }
    // A failed request leaves nothing, and its new table is not writable afterwards.
    let out = replica
        .execute_local(
            &s(&["CREATE TABLE gone(x)", "INSERT INTO nope VALUES (1)"]),
            0,
        )
        .unwrap();
    assert!(matches!(
        out,
        LocalOutcome::Failed {
            statement: 1,
            misdirected: false,
            ..
        }
    ));
    assert!(matches!(
        replica
            .execute_local(&s(&["INSERT INTO gone VALUES (1)"]), 0)
            .unwrap(),
        LocalOutcome::Failed { .. }
    ));
    // Replication continues around the local table and index.
    let rec = commit(
        &mut leader,
        req(&[("INSERT INTO t VALUES (3, 'c', 3)", vec![])]),
    )
    .unwrap();
    replica.apply(&[rec]).unwrap();
    // A rebuild (re-bootstrap) keeps the follower's own table.
    drop(replica);
    common::snapshot(&lp, &sp);
    let replica = replica_of(&sp, &rp);
    assert_eq!(
        rows(replica.connection(), "SELECT note FROM mine"),
        vec![vec![Value::Text("a".into())]]
    );
    assert_eq!(
        rows(replica.connection(), "SELECT count(*) FROM t"),
        vec![vec![Value::Integer(2)]]
    );
    // The leader creating a table of the same name stops apply with the reason.
    drop(replica);
    let mut replica = replica_of(&sp, &rp);
    let rec = commit(&mut leader, req(&[("CREATE TABLE mine(x)", vec![])])).unwrap();
    let err = replica.apply(&[rec]).unwrap_err().to_string();
    assert!(err.contains("table mine already exists"), "{err}");
}

fn replica_of(snapshot: &Path, path: &Path) -> RowReplica {
    replica(snapshot, path, &RowFilter::default())
}

#[test]
fn a_large_commit_missing_from_the_log_is_recaptured_with_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let lp = dir.path().join("leader.db");
    let origin = NodeId::new("l").unwrap();
    let mut leader = open_leader(&lp);
    commit(&mut leader, req(&[(SETUP[0], vec![])]));
    // Large enough that its rows wait in the side file rather than the meta row.
    let big = commit(
        &mut leader,
        req(&[(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300) \
             INSERT INTO t(id, v, n) SELECT i, hex(randomblob(20)), i FROM s",
            vec![],
        )]),
    )
    .unwrap();
    assert!(
        flotilla_wire::encode_rows(big.rows.as_ref().unwrap()).len() > 2048,
        "the payload should be large"
    );
    std::mem::forget(leader);
    let (mut leader, _) = LeaderDb::open(&lp, &DbSettings::default(), || unreachable!()).unwrap();
    let recaptured = leader.uncaptured(Lsn(1), &origin).unwrap();
    assert_eq!(recaptured.len(), 1);
    let rows = flotilla_wire::decode_rows(&recaptured[0].1).unwrap();
    assert_eq!(Some(rows), big.rows);
    // Small commits keep theirs inline again; the side file no longer matches the newest lsn.
    let small = commit(
        &mut leader,
        req(&[("INSERT INTO t VALUES (1000, 'x', 1)", vec![])]),
    )
    .unwrap();
    assert_eq!(leader.last_rows().unwrap(), small.rows);
}

#[test]
fn a_logical_replica_may_have_another_page_size() {
    let dir = tempfile::tempdir().unwrap();
    let (lp, sp, rp) = paths(dir.path());
    let mut leader = open_leader(&lp);
    let records = workload(&mut leader, &lp, &sp, 3, 60);
    RowReplica::build(
        &sp,
        &rp,
        &DbSettings::default(),
        &RowFilter::default(),
        Some(16384),
    )
    .unwrap();
    let mut replica = RowReplica::open(
        &rp,
        &DbSettings::default(),
        &RowFilter::default(),
        ConflictPolicy::Stop,
        Arc::new(AtomicU64::new(0)),
    )
    .unwrap()
    .unwrap();
    replica.apply(&records).unwrap();
    let page = |c: &rusqlite::Connection| rows(c, "PRAGMA page_size");
    assert_eq!(
        page(replica.connection()),
        vec![vec![Value::Integer(16384)]]
    );
    let l = open_reader(&lp).unwrap();
    assert_eq!(page(&l), vec![vec![Value::Integer(4096)]]);
    for q in COMPARE {
        assert_eq!(rows(&l, q), rows(replica.connection(), q), "{q}");
    }
}

#[test]
fn generated_columns_are_computed_by_the_replica_not_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let (lp, sp, rp) = paths(dir.path());
    let mut leader = open_leader(&lp);
    commit(
        &mut leader,
        req(&[(
            "CREATE TABLE g(id INTEGER PRIMARY KEY, a INT, v INT GENERATED ALWAYS AS (a * 2) STORED, \
             c TEXT, s INT GENERATED ALWAYS AS (length(c)) STORED)",
            vec![],
        )]),
    );
    common::snapshot(&lp, &sp);
    let mut records = Vec::new();
    for (sql, params) in [
        (
            "INSERT INTO g(id, a, c) VALUES (1, 10, 'x'), (2, 20, 'yy'), (3, 30, 'zzz')",
            vec![],
        ),
        ("UPDATE g SET a = a + 1, c = c || '!' WHERE id >= 2", vec![]),
        ("DELETE FROM g WHERE id = 1", vec![]),
    ] {
        let out = leader
            .commit_batch(
                &[req(&[(sql, params)])],
                Epoch(1),
                &NodeId::new("l").unwrap(),
                1,
            )
            .unwrap();
        assert!(
            matches!(out.outcomes[0], RequestOutcome::Committed(_)),
            "{sql}: {:?}",
            out.outcomes[0]
        );
        let mut rec = out.record.unwrap();
        rec.rows = Some(flotilla_wire::decode_rows(&out.encoded_rows).unwrap());
        let rows = rec.rows.as_ref().unwrap();
        // The shape leaves the generated columns out.
        assert_eq!(rows.tables[0].columns, vec!["id", "a", "c"]);
        records.push(rec);
    }
    let mut replica = replica(&sp, &rp, &RowFilter::default());
    replica.apply(&records).unwrap();
    let l = open_reader(&lp).unwrap();
    let q = "SELECT id, a, v, c, s FROM g ORDER BY id";
    assert_eq!(rows(&l, q), rows(replica.connection(), q));
    assert_eq!(rows(&l, q).len(), 2);
}

#[test]
fn virtual_generated_columns_are_refused_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = open_leader(&dir.path().join("leader.db"));
    commit(
        &mut leader,
        req(&[(
            "CREATE TABLE g(id INTEGER PRIMARY KEY, a INT, v INT GENERATED ALWAYS AS (a * 2) VIRTUAL, c TEXT)",
            vec![],
        )]),
    );
    let out = leader
        .commit_batch(
            &[req(&[(
                "INSERT INTO g(id, a, c) VALUES (1, 2, 'x')",
                vec![],
            )])],
            Epoch(1),
            &NodeId::new("l").unwrap(),
            1,
        )
        .unwrap();
    match &out.outcomes[0] {
        RequestOutcome::Failed { message, .. } => {
            assert!(
                message.contains("VIRTUAL") && message.contains("STORED"),
                "{message}"
            )
        }
        other => panic!("accepted: {other:?}"),
    }
    assert!(out.record.is_none(), "nothing committed");
}

#[test]
fn conflicts_stop_apply_or_are_overwritten_and_are_counted() {
    for policy in [ConflictPolicy::Stop, ConflictPolicy::Overwrite] {
        let dir = tempfile::tempdir().unwrap();
        let (lp, sp, rp) = paths(dir.path());
        let mut leader = open_leader(&lp);
        commit(&mut leader, req(&[(SETUP[0], vec![])]));
        commit(
            &mut leader,
            req(&[("INSERT INTO t VALUES (1, 'a', 1), (2, 'b', 2)", vec![])]),
        );
        common::snapshot(&lp, &sp);
        RowReplica::build(
            &sp,
            &rp,
            &DbSettings::default(),
            &RowFilter::default(),
            None,
        )
        .unwrap();
        // Someone removes a row behind the follower's back.
        rusqlite::Connection::open(&rp)
            .unwrap()
            .execute("DELETE FROM t WHERE id = 1", [])
            .unwrap();
        let conflicts = Arc::new(AtomicU64::new(0));
        let mut replica = RowReplica::open(
            &rp,
            &DbSettings::default(),
            &RowFilter::default(),
            policy,
            conflicts.clone(),
        )
        .unwrap()
        .unwrap();
        let rec = commit(
            &mut leader,
            req(&[("UPDATE t SET v = 'z' WHERE id = 1", vec![])]),
        )
        .unwrap();
        let res = replica.apply(&[rec]);
        match policy {
            ConflictPolicy::Stop => {
                let err = res.unwrap_err().to_string();
                assert!(
                    err.contains("conflict: the row of t to update is missing"),
                    "{err}"
                );
                // Nothing of the batch applied: the position did not move.
                assert_eq!(replica.meta().position.lsn, Lsn(2));
            }
            ConflictPolicy::Overwrite => {
                res.unwrap();
                assert_eq!(
                    rows(replica.connection(), "SELECT v FROM t WHERE id = 1"),
                    vec![vec![Value::Text("z".into())]]
                );
                assert_eq!(conflicts.load(std::sync::atomic::Ordering::Relaxed), 1);
            }
        }
    }
}

/// A filter names tables as they were at bootstrap: renaming a filtered table on the leader
/// stops the follower with an error naming it, and the rename is not applied (found by an
/// outside probe: the follower silently lost the table's rows, and a predicate's table renamed
/// would have been kept whole).
#[test]
fn renaming_a_filtered_table_stops_the_follower_saying_why() {
    let by_table = RowFilter::parse(&["t".to_string()], &[], &[]).unwrap();
    let by_rows = RowFilter::parse(&[], &[], &["t: v = 'a'".to_string()]).unwrap();
    for filter in [by_table, by_rows] {
        let dir = tempfile::tempdir().unwrap();
        let (lp, sp, rp) = paths(dir.path());
        let mut leader = open_leader(&lp);
        commit(
            &mut leader,
            req(&[
                ("CREATE TABLE t(id INTEGER PRIMARY KEY, v)", vec![]),
                ("INSERT INTO t VALUES (1, 'a')", vec![]),
            ]),
        );
        common::snapshot(&lp, &sp);
        let mut r = replica(&sp, &rp, &filter);
        let rename = commit(&mut leader, req(&[("ALTER TABLE t RENAME TO u", vec![])])).unwrap();
        let write = commit(
            &mut leader,
            req(&[("INSERT INTO u VALUES (2, 'b')", vec![])]),
        )
        .unwrap();
        let err = match r.apply(&[rename]) {
            Err(e) => e,
            Ok(_) => r
                .apply(&[write])
                .map(|_| ())
                .expect_err("the follower went on without the table its filter names"),
        };
        assert!(err.to_string().contains("renamed table \"t\""), "{err}");
        assert_eq!(
            rows(r.connection(), "SELECT id, v FROM t"),
            vec![vec![Value::Integer(1), Value::Text("a".into())]]
        );
    }
}

/// A predicate names columns as they were at bootstrap: renaming one (or swapping two names in
/// one request) on the leader stops the follower before the change (found by an outside probe:
/// the follower went on filtering by the other column).
#[test]
fn renaming_a_column_a_predicate_uses_stops_the_follower() {
    let filter = RowFilter::parse(&[], &[], &["sw: keep = 'yes'".to_string()]).unwrap();
    for (renames, stops) in [
        (
            vec![
                "ALTER TABLE sw RENAME COLUMN keep TO tmp",
                "ALTER TABLE sw RENAME COLUMN other TO keep",
                "ALTER TABLE sw RENAME COLUMN tmp TO other",
            ],
            true,
        ),
        (vec!["ALTER TABLE sw DROP COLUMN keep"], true),
        // A column the predicate does not use may change.
        (vec!["ALTER TABLE sw RENAME COLUMN note TO remark"], false),
        (vec!["ALTER TABLE sw ADD COLUMN extra"], false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (lp, sp, rp) = paths(dir.path());
        let mut leader = open_leader(&lp);
        commit(
            &mut leader,
            req(&[
                (
                    "CREATE TABLE sw(id INTEGER PRIMARY KEY, keep, other, note)",
                    vec![],
                ),
                ("INSERT INTO sw VALUES (1, 'yes', 'no', 'a')", vec![]),
            ]),
        );
        common::snapshot(&lp, &sp);
        let mut r = replica(&sp, &rp, &filter);
        let stmts: Vec<(&str, Vec<Value>)> = renames.iter().map(|s| (*s, vec![])).collect();
        let record = commit(&mut leader, req(&stmts)).unwrap();
        let applied = r.apply(&[record]).map(|_| ());
        match (stops, applied) {
            (true, Err(e)) => {
                assert!(e.to_string().contains("column \"keep\""), "{e}");
                assert_eq!(rows(r.connection(), "SELECT keep FROM sw").len(), 1);
            }
            (false, Ok(())) => {}
            (stops, got) => panic!("{renames:?}: stops {stops}, got {got:?}"),
        }
    }
}

/// A key column that declares a collation other than its key index's: the replica finds rows
/// as the key index tells them apart ('ABC' is not 'abc' under `PRIMARY KEY (k COLLATE
/// BINARY)`), not by the column's collation, which matched every case variant and deleted or
/// changed rows the leader kept (an outside probe found the same in multi-leader merges).
#[test]
fn keys_are_matched_by_the_key_index_collation() {
    let dir = tempfile::tempdir().unwrap();
    let (lp, sp, rp) = paths(dir.path());
    let mut leader = open_leader(&lp);
    for s in [
        "CREATE TABLE w (k TEXT COLLATE NOCASE, v, PRIMARY KEY (k COLLATE BINARY)) WITHOUT ROWID",
        "CREATE TABLE r (k TEXT COLLATE NOCASE, v, PRIMARY KEY (k COLLATE BINARY))",
        "CREATE TABLE n (k TEXT PRIMARY KEY COLLATE NOCASE, v)",
    ] {
        commit(&mut leader, req(&[(s, vec![])])).unwrap();
    }
    common::snapshot(&lp, &sp);
    let mut records = Vec::new();
    for s in [
        "INSERT INTO w VALUES ('abc', 1), ('ABC', 2), ('Abc', 3)",
        "INSERT INTO r VALUES ('Key', 1), ('KEY', 2)",
        "INSERT INTO n VALUES ('Mail', 1)",
        "UPDATE w SET k = 'zzz' WHERE k = 'ABC' COLLATE BINARY",
        "UPDATE w SET v = 10 WHERE k = 'abc' COLLATE BINARY",
        "DELETE FROM r WHERE k = 'KEY' COLLATE BINARY",
        "UPDATE n SET v = 2 WHERE k = 'mail'",
    ] {
        records.extend(commit(&mut leader, req(&[(s, vec![])])));
    }
    let mut replica = replica(&sp, &rp, &RowFilter::default());
    replica.apply(&records).unwrap();
    let l = open_reader(&lp).unwrap();
    for q in [
        "SELECT k, v FROM w ORDER BY k COLLATE BINARY",
        "SELECT k, v FROM r ORDER BY k COLLATE BINARY",
        "SELECT k, v FROM n",
    ] {
        assert_eq!(rows(&l, q), rows(replica.connection(), q), "{q}");
    }
    assert_eq!(rows(replica.connection(), "SELECT k FROM w").len(), 3);
}
