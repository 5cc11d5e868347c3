//! What a statement answers: `last_insert_rowid` is the rowid the statement inserted, also
//! when it equals the connection's previous one (an insert into another table; found by an
//! outside probe: it answered 0), 0 when it inserted nothing, and a statement's own
//! `last_insert_rowid()` still reads the one before it.

mod common;

use flotilla_store::*;
use flotilla_types::{Epoch, Lsn, NodeId};
use rusqlite::types::Value;

fn origin() -> NodeId {
    NodeId::new("leader").unwrap()
}

/// Runs `stmts` as one request; the `last_insert_rowid` of each.
fn rowids(db: &mut LeaderDb, stmts: &[(&str, Vec<Value>)]) -> Vec<i64> {
    let out = db
        .commit_batch(&[common::req(stmts)], Epoch(1), &origin(), 1)
        .unwrap();
    match &out.outcomes[0] {
        RequestOutcome::Committed(results) => results.iter().map(|r| r.last_insert_rowid).collect(),
        other => panic!("{stmts:?}: {other:?}"),
    }
}

#[test]
fn last_insert_rowid_is_what_the_statement_inserted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, _) = LeaderDb::open(&dir.path().join("l.db"), &DbSettings::default(), || {
        "ab".repeat(16)
    })
    .unwrap();
    db.uncaptured(Lsn(0), &origin()).unwrap();
    rowids(
        &mut db,
        &[
            ("CREATE TABLE u(id INTEGER PRIMARY KEY, v)", vec![]),
            ("CREATE TABLE w(k INTEGER PRIMARY KEY, v)", vec![]),
        ],
    );
    assert_eq!(
        rowids(&mut db, &[("INSERT INTO u(v) VALUES ('a')", vec![])]),
        [1]
    );
    assert_eq!(
        rowids(&mut db, &[("INSERT INTO u(v) VALUES ('b')", vec![])]),
        [2]
    );
    // The same rowid as the last insert, into another table: still an insert of rowid 2.
    assert_eq!(
        rowids(&mut db, &[("INSERT INTO w(k, v) VALUES (2, 'a')", vec![])]),
        [2]
    );
    // An update, a delete, an insert that inserts nothing: 0.
    assert_eq!(
        rowids(&mut db, &[("UPDATE u SET v = 'c' WHERE id = 1", vec![])]),
        [0]
    );
    assert_eq!(
        rowids(
            &mut db,
            &[("INSERT OR IGNORE INTO w(k, v) VALUES (2, 'x')", vec![])]
        ),
        [0]
    );
    // Within one request, `last_insert_rowid()` reads the previous insert, also after a
    // statement that inserted nothing.
    let r = db
        .commit_batch(
            &[common::req(&[
                ("INSERT INTO u(v) VALUES ('d')", vec![]),
                ("UPDATE u SET v = 'e' WHERE id = 1", vec![]),
                (
                    "INSERT INTO w(k, v) VALUES (last_insert_rowid() + 100, 'f')",
                    vec![],
                ),
            ])],
            Epoch(1),
            &origin(),
            1,
        )
        .unwrap();
    let RequestOutcome::Committed(results) = &r.outcomes[0] else {
        panic!("{:?}", r.outcomes[0]);
    };
    assert_eq!(results[0].last_insert_rowid, 3);
    assert_eq!(results[1].last_insert_rowid, 0);
    assert_eq!(results[2].last_insert_rowid, 103);
}
