//! Trigger-based replication at the store level: the triggers a pipeline installs, fed by
//! random writes, produce a changelog that — applied in order to a target by key — leaves the
//! target equal to the pipeline's projection computed as a query on the source.

mod common;

use common::{req, Rng};

use flotilla_store::changelog::{backlog, read_changes, ChangeOp};
use flotilla_store::*;
use flotilla_types::{Computed, Epoch, Lsn, NodeId, PipelineSpec, Rename};
use rusqlite::types::Value;
use rusqlite::Connection;
use std::path::Path;

fn origin() -> NodeId {
    NodeId::new("l").unwrap()
}

fn open_leader(path: &Path) -> LeaderDb {
    let (mut db, _) = LeaderDb::open(path, &DbSettings::default(), || "ab".repeat(16)).unwrap();
    db.uncaptured(Lsn(0), &origin()).unwrap();
    db
}

fn commit(db: &mut LeaderDb, stmts: &[(&str, Vec<Value>)]) -> Vec<RequestOutcome> {
    db.commit_batch(&[req(stmts)], Epoch(1), &origin(), 1)
        .unwrap()
        .outcomes
}

fn spec(name: &str, source: &str) -> PipelineSpec {
    PipelineSpec {
        name: name.into(),
        source: source.into(),
        columns: vec![],
        predicate: None,
        renames: vec![],
        computed: vec![],
        into: None,
        target: "file:/dev/null".into(),
        apply_sql: None,
        backlog_warn_rows: None,
    }
}

fn add(db: &mut LeaderDb, s: &PipelineSpec) -> Result<i64, PipelineError> {
    db.add_pipeline(s, Epoch(1), &origin(), 1).map(|(id, _)| id)
}

/// Applies every changelog row of pipeline `id` to `target` (a table keyed by `key`), as a
/// delivery would; returns how many were applied.
fn deliver(leader: &Path, id: i64, target: &Connection, table: &str, key: &str) -> usize {
    let reader = open_reader(leader).unwrap();
    let rows = read_changes(&reader, id, 0, u64::MAX, 1_000_000).unwrap();
    for r in &rows {
        let data: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&r.data).unwrap();
        let to_sql = |v: &serde_json::Value| -> Value {
            match v {
                serde_json::Value::Null => Value::Null,
                serde_json::Value::Number(n) if n.is_i64() => Value::Integer(n.as_i64().unwrap()),
                serde_json::Value::Number(n) => Value::Real(n.as_f64().unwrap()),
                serde_json::Value::String(s) => Value::Text(s.clone()),
                serde_json::Value::Object(o) => {
                    Value::Text(format!("hex:{}", o["$hex"].as_str().unwrap()))
                }
                other => panic!("unexpected {other}"),
            }
        };
        match r.op {
            ChangeOp::Upsert => {
                let cols: Vec<&String> = data.keys().collect();
                let sql = format!(
                    "INSERT OR REPLACE INTO {table} ({}) VALUES ({})",
                    cols.iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    vec!["?"; cols.len()].join(", ")
                );
                let vals: Vec<Value> = data.values().map(to_sql).collect();
                target
                    .execute(&sql, rusqlite::params_from_iter(vals))
                    .unwrap();
            }
            ChangeOp::Delete => {
                assert_eq!(data.len(), 1, "a delete carries the key only: {}", r.data);
                target
                    .execute(
                        &format!("DELETE FROM {table} WHERE {key} = ?1"),
                        [to_sql(&data[key])],
                    )
                    .unwrap();
            }
        }
    }
    rows.len()
}

fn dump(conn: &Connection, sql: &str) -> Vec<Vec<Value>> {
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_filtered_reshaped_pipeline_delivers_exactly_its_projection() {
    for seed in [3u64, 17, 2024] {
        let dir = tempfile::tempdir().unwrap();
        let lp = dir.path().join("leader.db");
        let mut db = open_leader(&lp);
        commit(
            &mut db,
            &[(
                "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, total REAL, note BLOB)",
                vec![],
            )],
        );
        // Rows before the pipeline exists reach the target through its initial copy.
        for i in 0..20 {
            commit(
                &mut db,
                &[(
                    "INSERT INTO orders VALUES (?1, ?2, ?3, NULL)",
                    vec![
                        Value::Integer(i),
                        Value::Text(format!("c{}", i % 4)),
                        Value::Real((i * 13 % 200) as f64),
                    ],
                )],
            );
        }
        let mut s = spec("big", "orders");
        s.columns = vec!["total".into(), "note".into()];
        s.predicate = Some("total > 100".into());
        s.renames = vec![Rename {
            from: "total".into(),
            to: "amount".into(),
        }];
        s.computed = vec![Computed {
            name: "with_tax".into(),
            expr: "round(total * 1.2, 2)".into(),
        }];
        s.into = Some("big_orders".into());
        let id = add(&mut db, &s).unwrap();
        let mut rng = Rng::new(seed);
        for i in 0..400u64 {
            let id_a = rng.below(40) as i64;
            let total = rng.below(250) as f64;
            let stmts: Vec<(&str, Vec<Value>)> = match rng.below(6) {
                0 => vec![(
                    "INSERT OR REPLACE INTO orders VALUES (?1, 'x', ?2, NULL)",
                    vec![Value::Integer(id_a), Value::Real(total)],
                )],
                1 => vec![(
                    "UPDATE orders SET total = ?2 WHERE id = ?1",
                    vec![Value::Integer(id_a), Value::Real(total)],
                )],
                2 => vec![("DELETE FROM orders WHERE id = ?1", vec![Value::Integer(id_a)])],
                // A key change: the old key must be deleted at the target.
                3 => vec![(
                    "UPDATE OR IGNORE orders SET id = ?2 WHERE id = ?1",
                    vec![Value::Integer(id_a), Value::Integer(40 + (i as i64 % 40))],
                )],
                4 => vec![(
                    "UPDATE orders SET note = ?2 WHERE id = ?1",
                    vec![Value::Integer(id_a), Value::Blob(vec![i as u8, 0, 255])],
                )],
                _ => vec![
                    (
                        "INSERT INTO orders VALUES (?1, 'y', ?2, NULL) ON CONFLICT(id) DO UPDATE SET total = excluded.total",
                        vec![Value::Integer(id_a), Value::Real(total)],
                    ),
                    // A failing statement rolls its request back, changelog rows included.
                    ("INSERT INTO orders(id) VALUES (?1)", vec![Value::Integer(if i % 7 == 0 { id_a } else { 1000 + i as i64 })]),
                ],
            };
            commit(&mut db, &stmts);
        }
        let target = Connection::open_in_memory().unwrap();
        target
            .execute_batch(
                "CREATE TABLE big_orders(id INTEGER PRIMARY KEY, amount REAL, note TEXT, with_tax REAL)",
            )
            .unwrap();
        let n = deliver(&lp, id, &target, "big_orders", "id");
        assert!(n > 20, "seed {seed}: only {n} changes");
        let src = open_reader(&lp).unwrap();
        let expected = dump(
            &src,
            "SELECT id, total, CASE WHEN typeof(note) = 'blob' THEN 'hex:' || hex(note) END, \
             round(total * 1.2, 2) FROM orders WHERE total > 100 ORDER BY id",
        );
        let got = dump(
            &target,
            "SELECT id, amount, note, with_tax FROM big_orders ORDER BY id",
        );
        assert_eq!(got, expected, "seed {seed}");
        assert!(!expected.is_empty());
    }
}

#[test]
fn bad_pipelines_are_refused_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let lp = dir.path().join("leader.db");
    let mut db = open_leader(&lp);
    commit(
        &mut db,
        &[
            (
                "CREATE TABLE t(id INTEGER PRIMARY KEY, a INT, b TEXT)",
                vec![],
            ),
            ("CREATE TABLE nokey(a, b)", vec![]),
        ],
    );
    let cases: Vec<(PipelineSpec, &str)> = vec![
        (spec("x", "missing"), "source table missing does not exist"),
        (spec("x", "nokey"), "has no PRIMARY KEY"),
        (
            PipelineSpec {
                columns: vec!["zz".into()],
                ..spec("x", "t")
            },
            "table t has no column zz",
        ),
        (
            PipelineSpec {
                predicate: Some("a >".into()),
                ..spec("x", "t")
            },
            "the row predicate \"a >\" does not work on table t: near \")\": syntax error (the expression ends too early)",
        ),
        (
            PipelineSpec {
                predicate: Some("nosuch > 1".into()),
                ..spec("x", "t")
            },
            "no such column: nosuch",
        ),
        (
            PipelineSpec {
                predicate: Some("1); DELETE FROM t; SELECT (1".into()),
                ..spec("x", "t")
            },
            "it is not one SQL expression",
        ),
        (
            PipelineSpec {
                computed: vec![Computed {
                    name: "c".into(),
                    expr: "nofunc(a)".into(),
                }],
                ..spec("x", "t")
            },
            "computed column c = nofunc(a) does not work on table t: no such function: nofunc (at character 1 of the expression)",
        ),
        (
            PipelineSpec {
                renames: vec![Rename {
                    from: "q".into(),
                    to: "r".into(),
                }],
                ..spec("x", "t")
            },
            "q is not a delivered column",
        ),
        (
            PipelineSpec {
                renames: vec![Rename {
                    from: "a".into(),
                    to: "b".into(),
                }],
                ..spec("x", "t")
            },
            "two delivered columns are named b",
        ),
        (spec("x", "_flotilla_meta"), "internal table"),
        (
            PipelineSpec {
                target: "mysql://h".into(),
                ..spec("x", "t")
            },
            "is not postgres://",
        ),
        (spec("bad name", "t"), "pipeline name"),
    ];
    for (s, want) in cases {
        let e = add(&mut db, &s).unwrap_err().to_string();
        assert!(e.contains(want), "{s:?}: {e}");
    }
    // Nothing of a refused pipeline remains: the next add of the same name works.
    add(&mut db, &spec("x", "t")).unwrap();
    let e = add(&mut db, &spec("x", "t")).unwrap_err().to_string();
    assert!(e.contains("exists already"), "{e}");
    // Clients cannot touch a pipeline's triggers or its changelog.
    for sql in [
        "DROP TRIGGER _flotilla_p1_insert",
        "DELETE FROM _flotilla_changelog",
        "CREATE TRIGGER _flotilla_mine AFTER INSERT ON t BEGIN SELECT 1; END",
    ] {
        let out = commit(&mut db, &[(sql, vec![])]);
        assert!(
            matches!(
                &out[0],
                RequestOutcome::Failed {
                    kind: FailureKind::Refused,
                    ..
                }
            ),
            "{sql}: {out:?}"
        );
    }
}

#[test]
fn schema_changes_keep_the_triggers_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let lp = dir.path().join("leader.db");
    let mut db = open_leader(&lp);
    commit(
        &mut db,
        &[(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, a INT, b TEXT)",
            vec![],
        )],
    );
    let all = add(&mut db, &spec("all", "t")).unwrap();
    let mut only_b = spec("only-b", "t");
    only_b.columns = vec!["b".into()];
    let only_b = add(&mut db, &only_b).unwrap();
    // A new column is delivered by the all-columns pipeline from the ALTER on.
    commit(&mut db, &[("ALTER TABLE t ADD COLUMN c TEXT", vec![])]);
    commit(
        &mut db,
        &[("INSERT INTO t VALUES (1, 2, 'b', 'c')", vec![])],
    );
    // Dropping a column an all-columns pipeline delivers works (its triggers are rewritten).
    commit(&mut db, &[("ALTER TABLE t DROP COLUMN a", vec![])]);
    commit(&mut db, &[("INSERT INTO t VALUES (2, 'b2', 'c2')", vec![])]);
    // Dropping one that a pipeline names fails, naming the pipeline.
    let out = commit(&mut db, &[("ALTER TABLE t DROP COLUMN b", vec![])]);
    match &out[0] {
        RequestOutcome::Failed { message, .. } => {
            assert!(
                message.contains("pipeline only-b cannot follow"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    commit(&mut db, &[("UPDATE t SET b = 'b3' WHERE id = 2", vec![])]);
    let reader = open_reader(&lp).unwrap();
    let all_rows: Vec<String> = read_changes(&reader, all, 0, u64::MAX, 100)
        .unwrap()
        .into_iter()
        .map(|r| r.data)
        .collect();
    assert_eq!(
        all_rows,
        [
            r#"{"id":1,"a":2,"b":"b","c":"c"}"#,
            r#"{"id":2,"b":"b2","c":"c2"}"#,
            r#"{"id":2,"b":"b3","c":"c2"}"#
        ]
    );
    let b_rows: Vec<String> = read_changes(&reader, only_b, 0, u64::MAX, 100)
        .unwrap()
        .into_iter()
        .map(|r| r.data)
        .collect();
    assert_eq!(
        b_rows,
        [
            r#"{"id":1,"b":"b"}"#,
            r#"{"id":2,"b":"b2"}"#,
            r#"{"id":2,"b":"b3"}"#
        ]
    );
    // Dropping the source leaves the pipeline without triggers; re-creating it resumes capture.
    let out = commit(&mut db, &[("DROP TABLE t", vec![])]);
    assert!(matches!(out[0], RequestOutcome::Committed(_)), "{out:?}");
    let out = commit(
        &mut db,
        &[
            ("CREATE TABLE t(id INTEGER PRIMARY KEY, b TEXT)", vec![]),
            ("INSERT INTO t VALUES (9, 'again')", vec![]),
        ],
    );
    assert!(matches!(out[0], RequestOutcome::Committed(_)), "{out:?}");
    let last = read_changes(&reader, only_b, 0, u64::MAX, 100).unwrap();
    assert_eq!(last.last().unwrap().data, r#"{"id":9,"b":"again"}"#);
}

#[test]
fn delivery_reads_whole_transactions_and_trims_from_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let lp = dir.path().join("leader.db");
    let mut db = open_leader(&lp);
    commit(
        &mut db,
        &[("CREATE TABLE t(id INTEGER PRIMARY KEY)", vec![])],
    );
    let id = add(&mut db, &spec("p", "t")).unwrap();
    // Three transactions of 1, 5 and 2 rows.
    let o = commit(&mut db, &[("INSERT INTO t VALUES (1)", vec![])]);
    assert!(matches!(o[0], RequestOutcome::Committed(_)), "{o:?}");
    commit(
        &mut db,
        &[("INSERT INTO t VALUES (10), (11), (12), (13), (14)", vec![])],
    );
    commit(&mut db, &[("INSERT INTO t VALUES (20), (21)", vec![])]);
    let reader = open_reader(&lp).unwrap();
    let lsns = |rows: &[flotilla_store::changelog::ChangelogEntry]| -> Vec<u64> {
        rows.iter().map(|r| r.lsn).collect()
    };
    let first = read_changes(&reader, id, 0, u64::MAX, 3).unwrap();
    assert_eq!(
        first.len(),
        1,
        "the 5-row transaction does not fit after the first"
    );
    let second = read_changes(&reader, id, first[0].seq, u64::MAX, 3).unwrap();
    assert_eq!(
        second.len(),
        5,
        "a transaction larger than the limit comes whole"
    );
    assert!(lsns(&second).windows(2).all(|w| w[0] == w[1]));
    // Commits not yet durable in the log are not read.
    let durable = second[0].lsn;
    let third = read_changes(&reader, id, second[4].seq, durable, 10).unwrap();
    assert!(third.is_empty());
    let third = read_changes(&reader, id, second[4].seq, u64::MAX, 10).unwrap();
    assert_eq!(third.len(), 2);
    assert_eq!(backlog(&reader, id, 0).unwrap().rows, 8);
    // Trimming happens inside the next commit; the newest row always stays.
    db.queue_changelog_trim(id, third[1].seq);
    commit(&mut db, &[("CREATE TABLE other(x)", vec![])]);
    let left: i64 = reader
        .query_row("SELECT count(*) FROM _flotilla_changelog", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 1);
    assert_eq!(db.pipelines()[0].trimmed_to, third[1].seq);
    // So the next row's seq continues after it.
    commit(&mut db, &[("INSERT INTO t VALUES (30)", vec![])]);
    let next = read_changes(&reader, id, third[1].seq, u64::MAX, 10).unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].seq, third[1].seq + 1);
    // Removing the pipeline drops its triggers and rows.
    db.remove_pipeline("p", Epoch(1), &origin(), 1).unwrap();
    commit(&mut db, &[("INSERT INTO t VALUES (31)", vec![])]);
    let triggers: i64 = reader
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(triggers, 0);
    assert!(db.pipelines().is_empty());
}

/// A delivered backlog is deleted a bounded slice per commit: no client commit carries the
/// deletion of a whole backlog.
#[test]
fn trims_are_spread_over_commits() {
    let dir = tempfile::tempdir().unwrap();
    let lp = dir.path().join("leader.db");
    let mut db = open_leader(&lp);
    commit(
        &mut db,
        &[("CREATE TABLE t(id INTEGER PRIMARY KEY)", vec![])],
    );
    let id = add(&mut db, &spec("p", "t")).unwrap();
    commit(
        &mut db,
        &[(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 12000) \
             INSERT INTO t SELECT i FROM n",
            vec![],
        )],
    );
    let reader = open_reader(&lp).unwrap();
    let all = read_changes(&reader, id, 0, u64::MAX, 100_000).unwrap();
    assert_eq!(all.len(), 12_000);
    db.queue_changelog_trim(id, all.last().unwrap().seq);
    let count = |r: &Connection| -> i64 {
        r.query_row("SELECT count(*) FROM _flotilla_changelog", [], |x| x.get(0))
            .unwrap()
    };
    let mut left = Vec::new();
    for i in 0..4 {
        commit(&mut db, &[(&format!("CREATE TABLE x{i}(a)"), vec![])]);
        left.push(count(&reader));
    }
    assert_eq!(left, [7_000, 2_000, 1, 1]);
}

/// The finding: insert into `notes`, add a pipeline `p3` on it, remove it, add `p4` on `orders`:
/// p4's first change was a `notes` row. Nothing a removed pipeline captured may reach another,
/// however large its backlog (removed over several commits).
#[test]
fn a_removed_pipelines_changes_never_reach_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leader.db");
    let mut db = open_leader(&path);
    commit(
        &mut db,
        &[
            (
                "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)",
                vec![],
            ),
            (
                "CREATE TABLE orders(id INTEGER PRIMARY KEY, total REAL)",
                vec![],
            ),
            ("INSERT INTO notes VALUES (4, 'zz')", vec![]),
        ],
    );
    for small_backlog in [true, false] {
        if !small_backlog {
            // A backlog larger than one commit deletes.
            commit(
                &mut db,
                &[(
                    "INSERT INTO notes(body) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL \
                     SELECT i + 1 FROM s WHERE i < 12000) SELECT 'n' || i FROM s",
                    vec![],
                )],
            );
        }
        let p3 = add(&mut db, &spec("p3", "notes")).unwrap();
        commit(
            &mut db,
            &[("UPDATE notes SET body = 'changed' WHERE id = 4", vec![])],
        );
        db.remove_pipeline("p3", Epoch(1), &origin(), 1).unwrap();
        let p4 = add(&mut db, &spec("p4", "orders")).unwrap();
        assert_ne!(p4, p3, "a removed pipeline's id was given to another");
        commit(&mut db, &[("INSERT INTO orders VALUES (1, 9.5)", vec![])]);
        // Later commits carry the rest of the removal.
        for _ in 0..5 {
            commit(&mut db, &[("INSERT INTO orders(total) VALUES (1)", vec![])]);
        }
        let reader = open_reader(&path).unwrap();
        let p4_changes = read_changes(&reader, p4, 0, u64::MAX, 1_000_000).unwrap();
        assert!(!p4_changes.is_empty());
        for c in &p4_changes {
            assert!(
                c.data.contains("total") && !c.data.contains("body"),
                "p4 got a change it never captured: {}",
                c.data
            );
        }
        let left: i64 = reader
            .query_row(
                "SELECT count(*) FROM _flotilla_changelog WHERE pipeline = ?1",
                [p3],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0, "rows of the removed pipeline remain");
        db.remove_pipeline("p4", Epoch(1), &origin(), 1).unwrap();
    }
    // Reopened, the leader still deletes what removed pipelines left: at most the newest
    // changelog row stays (it keeps seq from restarting), emptied.
    let position = db.meta().position;
    drop(db);
    let (mut db, _) = LeaderDb::open(&path, &DbSettings::default(), || unreachable!()).unwrap();
    db.uncaptured(position.lsn, &origin()).unwrap();
    for _ in 0..3 {
        commit(&mut db, &[("INSERT INTO orders(total) VALUES (2)", vec![])]);
    }
    let reader = open_reader(&path).unwrap();
    let left: Vec<(String, String)> = reader
        .prepare("SELECT op, data FROM _flotilla_changelog")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(left, vec![("removed".to_string(), "{}".to_string())]);
}
