//! Two data-centre leaders in one process exchange their transactions through the merge
//! commit: both converge, conflicts are recorded on both sides under the same id, counters
//! add up, a delete racing an update follows the table's rule, schema changes travel.

mod common;

use common::data_centre::Dc;
use flotilla_store::*;
use flotilla_types::{Epoch, ExchangeStamp, Lsn, NodeId, OriginName, Position, RowPayload};

#[test]
fn two_data_centres_converge_and_record_their_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = Dc::open(dir.path(), "eu");
    let mut us = Dc::open(dir.path(), "us");

    eu.sql(&[
        "CREATE TABLE items (id TEXT PRIMARY KEY, name TEXT, qty INTEGER NOT NULL DEFAULT 0)",
    ]);
    let node = eu.node.clone();
    let out = eu
        .db
        .set_policy(
            "items",
            Some("qty"),
            "counter",
            None,
            Epoch(1),
            &node,
            1_500_000,
        )
        .unwrap();
    eu.keep(&out);
    eu.sql(&["INSERT INTO items VALUES ('a', 'apple', 10), ('b', 'pear', 1)"]);
    assert_eq!(us.pull(&eu), 0);
    assert_eq!(
        eu.read("SELECT * FROM items ORDER BY id"),
        us.read("SELECT * FROM items ORDER BY id")
    );

    // Concurrently: both rename `a` and add to its quantity; eu deletes `b` while us renames it.
    eu.sql(&[
        "UPDATE items SET name = 'green apple', qty = qty + 5 WHERE id = 'a'",
        "DELETE FROM items WHERE id = 'b'",
    ]);
    us.sql(&[
        "UPDATE items SET name = 'red apple', qty = qty + 2 WHERE id = 'a'",
        "UPDATE items SET name = 'nashi' WHERE id = 'b'",
    ]);
    us.sql(&["INSERT INTO items VALUES ('c', 'cherry', 3)"]);
    let at_us = us.pull(&eu);
    let at_eu = eu.pull(&us);
    assert!(
        at_us >= 3 && at_eu >= 3,
        "name, qty and the row of b: {at_us} {at_eu}"
    );
    // What the merges count is what the tables hold (the metric of merged conflicts).
    for (dc, n) in [(&eu, at_eu), (&us, at_us)] {
        assert_eq!(
            dc.read("SELECT count(*) FROM flotilla_conflicts"),
            [format!("Integer({n})")]
        );
    }

    let items = "SELECT id, name, qty FROM items ORDER BY id";
    assert_eq!(eu.read(items), us.read(items), "converged");
    let rows = eu.read(items);
    // us wrote later (its clock is ahead by its extra commit), so its name wins; 10 + 5 + 2.
    assert_eq!(
        rows[0], "Text(\"a\")|Text(\"red apple\")|Integer(17)",
        "{rows:?}"
    );
    assert!(
        !rows.iter().any(|r| r.contains("\"b\"")),
        "delete wins by default: {rows:?}"
    );
    assert!(rows.iter().any(|r| r.contains("cherry")));

    // Every conflict is a row, with the same id on both sides.
    let q = "SELECT id, tbl, row_key, coalesce(col, '(row)'), policy, resolved FROM flotilla_conflicts ORDER BY id";
    let (ce, cu) = (eu.read(q), us.read(q));
    assert_eq!(ce, cu, "the same conflicts under the same ids");
    assert!(ce.iter().any(|r| r.contains("\"counter\"")), "{ce:?}");
    assert!(
        ce.iter()
            .any(|r| r.contains("\"(row)\"") && r.contains("delete-wins")),
        "{ce:?}"
    );

    // Pruning: no conflict is older than the clocks' first second; every resolved one is older
    // than the end of time. Open ones stay (a keep-both conflict on the name of `c`).
    let node = eu.node.clone();
    let out = eu
        .db
        .set_policy(
            "items",
            Some("name"),
            "keep-both",
            None,
            Epoch(1),
            &node,
            9_000_000,
        )
        .unwrap();
    eu.keep(&out);
    us.pull(&eu);
    eu.sql(&["UPDATE items SET name = 'eu' WHERE id = 'c'"]);
    us.sql(&["UPDATE items SET name = 'us' WHERE id = 'c'"]);
    eu.pull(&us);
    let count = |dc: &Dc, resolved: i64| {
        dc.read(&format!(
            "SELECT count(*) FROM flotilla_conflicts WHERE resolved = {resolved}"
        ))[0]
            .clone()
    };
    let (resolved, open) = (count(&eu, 1), count(&eu, 0));
    assert_eq!(open, "Integer(1)", "the keep-both conflict is open");
    assert!(eu
        .db
        .prune_conflicts(1_000, Epoch(1), &node, 10_000_000)
        .unwrap()
        .is_none());
    assert_eq!(count(&eu, 1), resolved);
    let (n, out) = eu
        .db
        .prune_conflicts(u64::MAX, Epoch(1), &node, 10_000_000)
        .unwrap()
        .expect("resolved conflicts to prune");
    assert_eq!(format!("Integer({n})"), resolved);
    assert!(out.record.is_some(), "a commit of its own");
    assert_eq!(count(&eu, 1), "Integer(0)");
    assert_eq!(count(&eu, 0), open, "open conflicts stay");
    us.pull(&eu);

    // A merged transaction is not merged twice.
    assert_eq!(us.pull(&eu), 0);
    let before = us.read(items);
    let (lsn, stamp, rows, chain) = eu.out.last().cloned().unwrap();
    let now = us.tick();
    let at = (
        Position {
            epoch: Epoch(1),
            lsn,
        },
        chain,
    );
    assert!(matches!(
        us.db
            .commit_merge(&stamp, &rows, &eu.name, at, Epoch(1), &us.node, now)
            .unwrap(),
        MergeOutcome::Duplicate
    ));
    assert_eq!(us.read(items), before);

    // A crash between the commit and its log append: the commit is re-created from the
    // database with its stamp, so other data centres still get it.
    let path = us.path.clone();
    let last = us.db.meta().position.lsn;
    // A crash: the writer's connection is never closed (closing would checkpoint the WAL).
    std::mem::forget(us);
    let (mut db, _) = LeaderDb::open(&path, &DbSettings::default(), || unreachable!()).unwrap();
    let records = db
        .uncaptured(Lsn(last.0 - 1), &NodeId::new("us-1").unwrap())
        .unwrap();
    let rec = &records.last().expect("re-created").0;
    assert_eq!(rec.lsn, last);
    let stamp = rec
        .exchange
        .as_ref()
        .expect("the re-created commit keeps its stamp");
    assert_eq!(
        stamp.origin,
        OriginName::new("eu").unwrap(),
        "the last commit merged eu's"
    );
    assert!(stamp.original.is_some());
}

/// The statement fails alone (its request), refused with `why`.
fn refused(dc: &mut Dc, sql: &str, why: &str) {
    let req = common::req(&[(sql, vec![])]);
    let node = dc.node.clone();
    let out = dc
        .db
        .commit_batch(&[req], Epoch(1), &node, 9_000_000)
        .unwrap();
    match &out.outcomes[0] {
        RequestOutcome::Failed { message, kind, .. } => {
            assert!(message.contains(why), "{sql}: {message}");
            assert_eq!(*kind, FailureKind::Refused, "{sql}");
        }
        _ => panic!("{sql} was taken"),
    }
}

#[test]
fn policies_are_checked_when_given() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = Dc::open(dir.path(), "eu");
    eu.sql(&["CREATE TABLE t (id TEXT PRIMARY KEY, name TEXT, n INTEGER, r REAL)"]);
    let node = eu.node.clone();
    let mut set = |col: Option<&str>, policy: &str, expr: Option<&str>| {
        eu.db
            .set_policy("t", col, policy, expr, Epoch(1), &node, 3_000_000)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    for (col, policy, expr, why) in [
        (
            Some("nope"),
            "lww",
            None,
            "has no column nope (its columns: id, name, n, r)",
        ),
        (Some("name"), "counter", None, "counter adds numbers"),
        (Some("id"), "max", None, "primary key"),
        (Some("name"), "newest", None, "unknown policy"),
        (Some("name"), "custom", None, "needs an expression"),
        (Some("name"), "custom", Some("local +"), "does not compile"),
        (
            Some("name"),
            "custom",
            Some("(SELECT hash FROM _flotilla_tokens)"),
            "does not compile",
        ),
        (None, "lww", None, "delete rule"),
    ] {
        let err = set(col, policy, expr).unwrap_err();
        assert!(err.contains(why), "{col:?} {policy}: {err}");
    }
    set(Some("N"), "counter", None).unwrap();
    set(Some("r"), "max", None).unwrap();
    set(Some("name"), "custom", Some("local || '+' || remote")).unwrap();
    set(None, "update-wins", None).unwrap();
    assert_eq!(
        eu.read("SELECT col, policy FROM flotilla_policies ORDER BY col"),
        vec![
            "Text(\"\")|Text(\"update-wins\")",
            "Text(\"n\")|Text(\"counter\")",
            "Text(\"name\")|Text(\"custom\")",
            "Text(\"r\")|Text(\"max\")",
        ]
    );
    // Clients cannot write the policies (or the conflicts) with SQL.
    refused(
        &mut eu,
        "INSERT INTO flotilla_policies VALUES ('t', 'name', 'lww', NULL)",
        "flotilla conflicts policy",
    );
    refused(&mut eu, "DELETE FROM flotilla_conflicts", "bookkeeping");
}

#[test]
fn schema_changes_travel_and_unfit_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = Dc::open(dir.path(), "eu");
    let mut us = Dc::open(dir.path(), "us");
    eu.sql(&["CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)"]);
    eu.sql(&["INSERT INTO notes VALUES ('n1', 'hello')"]);
    us.pull(&eu);
    eu.sql(&["ALTER TABLE notes ADD COLUMN stars INTEGER NOT NULL DEFAULT 0"]);
    eu.sql(&["UPDATE notes SET stars = 3"]);
    us.pull(&eu);
    assert_eq!(
        us.read("SELECT id, body, stars FROM notes"),
        vec!["Text(\"n1\")|Text(\"hello\")|Integer(3)"]
    );

    // A table without a primary key, or with an INTEGER one (the rowid, counted up alike in
    // every data centre), cannot be made on a multi-leader node; a composite or WITHOUT ROWID
    // one can.
    for (sql, why) in [
        ("CREATE TABLE loose (x)", "no PRIMARY KEY"),
        (
            "CREATE TABLE counted (id INTEGER PRIMARY KEY, x)",
            "INTEGER PRIMARY KEY",
        ),
        (
            "CREATE TABLE counted2 (id integer primary key autoincrement, x)",
            "INTEGER PRIMARY KEY",
        ),
        // 'Key' and 'KEY' are one row to SQLite, two to the merge state (a probe found data
        // centres ending with different rows).
        (
            "CREATE TABLE nocase (id TEXT PRIMARY KEY COLLATE NOCASE, v)",
            "COLLATE NOCASE",
        ),
        (
            "CREATE TABLE rtrim (a TEXT, b TEXT COLLATE RTRIM, v, PRIMARY KEY (a, b)) WITHOUT ROWID",
            "COLLATE RTRIM",
        ),
        (
            "CREATE TABLE nocase2 (id TEXT, v, PRIMARY KEY (id COLLATE nocase))",
            "key column id",
        ),
    ] {
        refused(&mut eu, sql, why);
    }
    for (sql, why) in [
        (
            "CREATE TABLE c1 (id TEXT PRIMARY KEY, v INTEGER CHECK (v >= 0))",
            "CHECK constraint",
        ),
        (
            "CREATE TABLE c2 (id TEXT PRIMARY KEY, v INTEGER, CHECK(v > 0))",
            "CHECK constraint",
        ),
        (
            "CREATE TABLE f1 (id TEXT PRIMARY KEY, n TEXT REFERENCES notes(id))",
            "foreign key",
        ),
        (
            "CREATE TABLE g1 (id TEXT PRIMARY KEY, a INTEGER, b AS (a + 1) VIRTUAL)",
            "VIRTUAL generated",
        ),
        ("ALTER TABLE notes RENAME TO notes2", "cannot be renamed"),
        ("DROP TABLE notes", "cannot be dropped"),
        (
            "ALTER TABLE notes RENAME COLUMN body TO text",
            "only ADD COLUMN",
        ),
        ("ALTER TABLE notes DROP COLUMN stars", "only ADD COLUMN"),
        (
            "CREATE TRIGGER t AFTER INSERT ON notes BEGIN SELECT 1; END",
            "triggers",
        ),
    ] {
        refused(&mut eu, sql, why);
    }
    eu.sql(&["CREATE TABLE pairs (dc TEXT, n INTEGER, PRIMARY KEY (dc, n))"]);
    eu.sql(&[
        "CREATE TABLE binary_key (id TEXT PRIMARY KEY COLLATE BINARY, v TEXT COLLATE NOCASE)",
    ]);
    eu.sql(&["CREATE TABLE quoted (id TEXT PRIMARY KEY, \"check (x)\" TEXT DEFAULT 'check(1)')"]);
    eu.sql(&["CREATE TABLE g2 (id TEXT PRIMARY KEY, a INTEGER, b AS (a + 1) STORED)"]);
    // ANALYZE writes SQLite's own statistics: each node's own, taken, not exchanged.
    let node = eu.node.clone();
    let out = eu
        .db
        .commit_batch(
            &[common::req(&[("ANALYZE", vec![])])],
            Epoch(1),
            &node,
            8_000_000,
        )
        .unwrap();
    assert!(matches!(out.outcomes[0], RequestOutcome::Committed(_)));
    assert!(out.record.as_ref().is_none_or(|r| r.exchange.is_none()));
    eu.sql(&["CREATE TABLE w (id INTEGER PRIMARY KEY, x) WITHOUT ROWID"]);
    eu.sql(&["CREATE TABLE bigints (id BIGINT PRIMARY KEY, x)"]);

    // Reopening as another data centre is refused.
    drop(us);
    let (mut db, _) = LeaderDb::open(
        &dir.path().join("us.db"),
        &DbSettings::default(),
        || unreachable!(),
    )
    .unwrap();
    let node = NodeId::new("x").unwrap();
    db.uncaptured(Lsn(0), &node).ok();
    let err = db
        .enable_multi_leader(
            &OriginName::new("asia").unwrap(),
            "test",
            1000,
            Epoch(1),
            &node,
            1,
        )
        .unwrap_err();
    assert!(err.to_string().contains("data centre us"), "{err}");
}

#[test]
fn a_unique_value_two_data_centres_gave_two_rows_goes_to_the_first_insert() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = Dc::open(dir.path(), "eu");
    let mut us = Dc::open(dir.path(), "us");
    eu.sql(&["CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT UNIQUE, name TEXT)"]);
    us.pull(&eu);
    // Concurrently: eu's ann first (its clock is behind us's), then us's ann2 with the same email.
    eu.sql(&["INSERT INTO users VALUES ('u1', 'ann@example.com', 'Ann (eu)')"]);
    us.now_us = eu.now_us + 10_000;
    us.sql(&["INSERT INTO users VALUES ('u2', 'ann@example.com', 'Ann (us)')"]);
    us.pull(&eu);
    eu.pull(&us);
    let q = "SELECT id, email, name FROM users ORDER BY id";
    assert_eq!(eu.read(q), us.read(q));
    assert_eq!(
        eu.read(q),
        vec!["Text(\"u1\")|Text(\"ann@example.com\")|Text(\"Ann (eu)\")"]
    );
    let c = "SELECT id, col, winner FROM flotilla_conflicts WHERE col LIKE 'unique%'";
    assert_eq!(eu.read(c).len(), 1, "{:?}", eu.read(c));
    let ids = |d: &Dc| d.read("SELECT id FROM flotilla_conflicts WHERE col LIKE 'unique%'");
    assert_eq!(ids(&eu), ids(&us), "the same conflict id on both sides");

    // The winner lets the email go: the shadowed row comes back, on both sides.
    eu.sql(&["UPDATE users SET email = 'ann@new.example' WHERE id = 'u1'"]);
    us.pull(&eu);
    assert_eq!(eu.read(q), us.read(q));
    assert_eq!(eu.read(q).len(), 2, "{:?}", eu.read(q));
    // Both rows take the same new email at once: the first-inserted row keeps it again.
    eu.sql(&["UPDATE users SET email = 'x@example.com' WHERE id = 'u1'"]);
    us.sql(&["UPDATE users SET email = 'x@example.com' WHERE id = 'u2'"]);
    eu.pull(&us);
    us.pull(&eu);
    assert_eq!(eu.read(q), us.read(q));
    assert_eq!(
        eu.read(q),
        vec!["Text(\"u1\")|Text(\"x@example.com\")|Text(\"Ann (eu)\")"]
    );
    // The winner is deleted: the hidden row takes the value back, on both sides (a hidden row
    // is not in its table, so nobody can change it meanwhile).
    eu.sql(&["DELETE FROM users WHERE id = 'u1'"]);
    us.pull(&eu);
    assert_eq!(eu.read(q), us.read(q));
    assert_eq!(
        eu.read(q),
        vec!["Text(\"u2\")|Text(\"x@example.com\")|Text(\"Ann (us)\")"]
    );
}

#[test]
fn a_clock_far_ahead_and_an_impostor_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = Dc::open(dir.path(), "eu");
    let mut us = Dc::open(dir.path(), "us");
    eu.sql(&["CREATE TABLE t (id TEXT PRIMARY KEY, v INTEGER)"]);
    us.pull(&eu);
    // eu's clock runs two minutes ahead of us's bound (60 s).
    eu.now_us += 120_000_000;
    eu.sql(&["INSERT INTO t VALUES ('a', 1)"]);
    let (lsn, stamp, rows, chain) = eu.out.last().cloned().unwrap();
    let at = (
        Position {
            epoch: Epoch(1),
            lsn,
        },
        chain,
    );
    let node = us.node.clone();
    let err = us
        .db
        .commit_merge(&stamp, &rows, &eu.name, at, Epoch(1), &node, us.now_us)
        .unwrap_err();
    assert!(matches!(err, MergeApplyError::Drift { .. }), "{err}");
    assert!(
        err.to_string().contains("ahead of this node's clock"),
        "{err}"
    );
    // Nothing of it was applied.
    assert!(us.read("SELECT * FROM t").is_empty());
    // Once the clocks agree it merges.
    us.now_us = eu.now_us;
    us.pull(&eu);
    assert_eq!(us.read("SELECT id FROM t").len(), 1);

    // Another node calling itself us: its transaction comes to us and is refused.
    let mut fake = Dc::open(dir.path(), "us-fake");
    let mut forged = fake_stamp(&mut fake, "us");
    forged.0.origin_lsn = Lsn(999);
    let node = us.node.clone();
    let err = us
        .db
        .commit_merge(
            &forged.0,
            &forged.1,
            &eu.name,
            at,
            Epoch(1),
            &node,
            us.now_us,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("another node calls itself us"),
        "{err}"
    );
}

/// A transaction of `dc`'s, stamped as if made by data centre `as_dc`.
fn fake_stamp(dc: &mut Dc, as_dc: &str) -> (ExchangeStamp, RowPayload) {
    dc.sql(&["CREATE TABLE t (id TEXT PRIMARY KEY, v INTEGER)"]);
    let (_, mut stamp, rows, _) = dc.out.last().cloned().unwrap();
    stamp.origin = OriginName::new(as_dc).unwrap();
    (stamp, rows)
}

#[test]
fn a_column_added_in_one_data_centre_while_another_writes_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = Dc::open(dir.path(), "eu");
    let mut us = Dc::open(dir.path(), "us");
    eu.sql(&[
        "CREATE TABLE k (id TEXT PRIMARY KEY, note TEXT, n INTEGER)",
        "INSERT INTO k VALUES ('r', 'start', 0)",
    ]);
    us.pull(&eu);
    // Apart: eu adds a column and fills it; us changes the row and adds one, the old way.
    eu.sql(&[
        "ALTER TABLE k ADD COLUMN extra TEXT DEFAULT 'dflt'",
        "UPDATE k SET extra = 'eu-extra'",
    ]);
    us.sql(&[
        "UPDATE k SET note = 'us-note'",
        "INSERT INTO k (id, note, n) VALUES ('s', 'us row', 1)",
    ]);
    eu.pull(&us);
    us.pull(&eu);
    let q = "SELECT id, note, n, extra FROM k ORDER BY id";
    assert_eq!(eu.read(q), us.read(q));
    assert_eq!(
        eu.read(q),
        vec![
            "Text(\"r\")|Text(\"us-note\")|Integer(0)|Text(\"eu-extra\")",
            "Text(\"s\")|Text(\"us row\")|Integer(1)|Text(\"dflt\")",
        ]
    );
}

#[test]
fn an_index_made_in_two_forms_at_once_keeps_each_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = Dc::open(dir.path(), "eu");
    let mut us = Dc::open(dir.path(), "us");
    eu.sql(&["CREATE TABLE k (id TEXT PRIMARY KEY, note TEXT)"]);
    us.pull(&eu);
    eu.sql(&[
        "CREATE INDEX k_note ON k(note)",
        "INSERT INTO k VALUES ('a', 'x')",
    ]);
    us.sql(&[
        "CREATE INDEX k_note ON k(note DESC)",
        "INSERT INTO k VALUES ('b', 'y')",
    ]);
    us.pull(&eu);
    eu.pull(&us);
    let q = "SELECT id, note FROM k ORDER BY id";
    assert_eq!(eu.read(q), us.read(q));
    assert_eq!(eu.read(q).len(), 2);
    let c = "SELECT id, policy FROM flotilla_conflicts WHERE col = 'index k_note'";
    assert_eq!(eu.read(c).len(), 1);
    assert_eq!(eu.read(c), us.read(c));
}

/// An update that changes a row's key moves the row: the other data centres delete it under
/// its old key and make it under the new one (a composite key and a WITHOUT ROWID table too),
/// also while another data centre updates the row under its old key at the same time.
#[test]
fn an_update_of_the_key_moves_the_row_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = Dc::open(dir.path(), "eu");
    let mut us = Dc::open(dir.path(), "us");
    eu.sql(&[
        "CREATE TABLE p (id TEXT PRIMARY KEY, v TEXT)",
        "CREATE TABLE w (a TEXT, b INTEGER, v TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID",
    ]);
    eu.sql(&[
        "INSERT INTO p VALUES ('old', 'v'), ('keep', 'k')",
        "INSERT INTO w VALUES ('a', 1, 'x'), ('a', 2, 'y')",
    ]);
    us.pull(&eu);
    eu.sql(&[
        "UPDATE p SET id = 'new' WHERE id = 'old'",
        "UPDATE w SET b = b + 10 WHERE a = 'a'",
    ]);
    us.pull(&eu);
    for q in [
        "SELECT * FROM p ORDER BY id",
        "SELECT * FROM w ORDER BY a, b",
    ] {
        assert_eq!(eu.read(q), us.read(q), "{q}");
    }
    assert_eq!(us.read("SELECT id FROM p ORDER BY id").len(), 2);
    assert_eq!(
        us.read("SELECT b FROM w ORDER BY b"),
        ["Integer(11)", "Integer(12)"]
    );

    // Concurrently: eu moves `keep` to `moved`, us updates `keep` where it was.
    eu.sql(&["UPDATE p SET id = 'moved' WHERE id = 'keep'"]);
    us.sql(&["UPDATE p SET v = 'us' WHERE id = 'keep'"]);
    us.pull(&eu);
    eu.pull(&us);
    let q = "SELECT * FROM p ORDER BY id";
    assert_eq!(eu.read(q), us.read(q), "converged");
    let rows = eu.read(q);
    assert!(rows.iter().any(|r| r.contains("moved")), "{rows:?}");
    assert!(
        !rows.iter().any(|r| r.contains("\"keep\"")),
        "the move deletes the old key, and a delete wins by default: {rows:?}"
    );
}

/// A key column that declares a collation of its own, under a key index that compares bytes:
/// merges find rows by the bytes of the key ('ABC' is not 'abc'), as the merge state does (an
/// outside probe found a merged key move deleting every case variant).
#[test]
fn keys_compare_as_bytes_whatever_the_column_collation() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = Dc::open(dir.path(), "eu");
    let mut us = Dc::open(dir.path(), "us");
    eu.sql(&[
        "CREATE TABLE w (k TEXT COLLATE NOCASE, v, PRIMARY KEY (k COLLATE BINARY)) WITHOUT ROWID",
        "CREATE TABLE r (k TEXT COLLATE NOCASE, v, PRIMARY KEY (k COLLATE BINARY))",
    ]);
    eu.sql(&[
        "INSERT INTO w VALUES ('abc', 'e'), ('ABC', 'e'), ('Abc', 'e')",
        "INSERT INTO r VALUES ('Key', 'e'), ('KEY', 'e')",
    ]);
    us.pull(&eu);
    us.sql(&[
        "UPDATE w SET k = 'zzz' WHERE k = 'ABC' COLLATE BINARY",
        "UPDATE w SET v = 'u' WHERE k = 'abc' COLLATE BINARY",
        "DELETE FROM r WHERE k = 'KEY' COLLATE BINARY",
    ]);
    eu.pull(&us);
    for q in [
        "SELECT k, v FROM w ORDER BY k COLLATE BINARY",
        "SELECT k, v FROM r ORDER BY k COLLATE BINARY",
    ] {
        assert_eq!(eu.read(q), us.read(q), "{q}");
    }
    assert_eq!(
        eu.read("SELECT k FROM w ORDER BY k COLLATE BINARY").len(),
        3
    );
    assert_eq!(eu.read("SELECT k FROM r"), ["Text(\"Key\")"]);
}

/// Two data centres each add a column at once: the columns stand in another order in each,
/// and the changes of each still merge in the other, column by name.
#[test]
fn columns_added_in_two_data_centres_at_once_merge_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = Dc::open(dir.path(), "eu");
    let mut us = Dc::open(dir.path(), "us");
    eu.sql(&["CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT)"]);
    eu.sql(&["INSERT INTO t VALUES ('old', 'o')"]);
    us.pull(&eu);
    eu.sql(&["ALTER TABLE t ADD COLUMN a TEXT DEFAULT 'a0'"]);
    eu.sql(&["INSERT INTO t (id, v, a) VALUES ('eu', 'e', 'a1')"]);
    us.sql(&["ALTER TABLE t ADD COLUMN b INTEGER DEFAULT 7"]);
    us.sql(&["INSERT INTO t (id, v, b) VALUES ('us', 'u', 8)"]);
    us.sql(&["UPDATE t SET b = 9 WHERE id = 'old'"]);
    us.pull(&eu);
    eu.pull(&us);
    let q = "SELECT id, v, a, b FROM t ORDER BY id";
    assert_eq!(eu.read(q), us.read(q), "converged");
    assert_eq!(
        eu.read(q),
        [
            "Text(\"eu\")|Text(\"e\")|Text(\"a1\")|Integer(7)",
            "Text(\"old\")|Text(\"o\")|Text(\"a0\")|Integer(9)",
            "Text(\"us\")|Text(\"u\")|Text(\"a0\")|Integer(8)",
        ]
    );
    // And later changes go on flowing both ways.
    eu.sql(&["UPDATE t SET a = 'a2', b = 10 WHERE id = 'us'"]);
    us.pull(&eu);
    assert_eq!(eu.read(q), us.read(q));
}

/// The same column added in two data centres at once: alike, nothing happens; in two forms
/// (another default), the merge is refused with both forms named — the rows that predate the
/// column would hold a different value in each.
#[test]
fn the_same_column_added_in_two_forms_at_once_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = Dc::open(dir.path(), "eu");
    let mut us = Dc::open(dir.path(), "us");
    eu.sql(&["CREATE TABLE t (id TEXT PRIMARY KEY)"]);
    eu.sql(&["INSERT INTO t VALUES ('old')"]);
    us.pull(&eu);
    eu.sql(&["ALTER TABLE t ADD COLUMN same INTEGER DEFAULT 1"]);
    us.sql(&["ALTER TABLE t ADD COLUMN same integer default 1"]);
    us.pull(&eu);
    eu.sql(&["ALTER TABLE t ADD COLUMN q INTEGER DEFAULT 1"]);
    us.sql(&["ALTER TABLE t ADD COLUMN q INTEGER DEFAULT 2"]);
    let (lsn, stamp, rows, chain) = eu.out.last().cloned().unwrap();
    let now = us.tick();
    let at = (
        Position {
            epoch: Epoch(1),
            lsn,
        },
        chain,
    );
    let err = us
        .db
        .commit_merge(&stamp, &rows, &eu.name, at, Epoch(1), &us.node, now)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("added in two forms")
            && err.contains("DEFAULT 2")
            && err.contains("DEFAULT 1"),
        "{err}"
    );
    assert_eq!(
        us.read("SELECT q FROM t"),
        ["Integer(2)"],
        "nothing applied"
    );
}

/// A custom expression that fails on the values it meets (an error, not a result) leaves the
/// latest write, as lww would, in every data centre: the merge completes instead of holding
/// back everything after it.
#[test]
fn a_custom_expression_that_fails_on_the_values_leaves_the_latest_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = Dc::open(dir.path(), "eu");
    let mut us = Dc::open(dir.path(), "us");
    eu.sql(&["CREATE TABLE p (id TEXT PRIMARY KEY, cu TEXT)"]);
    let node = eu.node.clone();
    let out = eu
        .db
        .set_policy(
            "p",
            Some("cu"),
            "custom",
            Some("json(local) || json(remote)"),
            Epoch(1),
            &node,
            1_500_000,
        )
        .unwrap();
    eu.keep(&out);
    eu.sql(&["INSERT INTO p VALUES ('r', '1')"]);
    us.pull(&eu);
    eu.sql(&["UPDATE p SET cu = 'not json eu' WHERE id = 'r'"]);
    us.sql(&["UPDATE p SET cu = 'not json us' WHERE id = 'r'"]);
    us.pull(&eu);
    eu.pull(&us);
    let q = "SELECT cu FROM p";
    assert_eq!(eu.read(q), us.read(q), "converged");
    assert_eq!(eu.read(q), ["Text(\"not json us\")"], "the later write");
    // Values the expression takes still combine.
    eu.sql(&["UPDATE p SET cu = '[1]' WHERE id = 'r'"]);
    us.sql(&["UPDATE p SET cu = '[2]' WHERE id = 'r'"]);
    us.pull(&eu);
    eu.pull(&us);
    assert_eq!(eu.read(q), us.read(q));
    assert_eq!(eu.read(q), ["Text(\"[1][2]\")"]);
}

/// Two data centres writing the same value at once (both left a column NULL, say) is no
/// conflict: nothing to choose, nothing recorded (under keep-both, nothing left open).
#[test]
fn the_same_value_written_at_once_is_no_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let mut eu = Dc::open(dir.path(), "eu");
    let mut us = Dc::open(dir.path(), "us");
    eu.sql(&["CREATE TABLE t (id TEXT PRIMARY KEY, a TEXT, b TEXT)"]);
    let node = eu.node.clone();
    let out = eu
        .db
        .set_policy(
            "t",
            Some("a"),
            "keep-both",
            None,
            Epoch(1),
            &node,
            1_500_000,
        )
        .unwrap();
    eu.keep(&out);
    us.pull(&eu);
    eu.sql(&["INSERT INTO t (id, b) VALUES ('k', 'eu')"]);
    us.sql(&["INSERT INTO t (id, b) VALUES ('k', 'us')"]);
    us.pull(&eu);
    eu.pull(&us);
    let q = "SELECT coalesce(col, '(row)') FROM flotilla_conflicts";
    assert_eq!(eu.read(q), ["Text(\"b\")"], "only b differs");
    assert_eq!(us.read(q), eu.read(q));
}

/// A data centre's transaction may be half the record limit: merged in another data centre,
/// its record carries its row changes twice — and then it fits there, under the same limit.
#[test]
fn a_data_centres_transaction_is_held_to_what_its_merge_elsewhere_can_hold() {
    let dir = tempfile::tempdir().unwrap();
    let settings = DbSettings {
        max_transaction_bytes: 2 << 20,
        ..DbSettings::default()
    };
    let mut eu = Dc::open_with(dir.path(), "eu", &settings);
    let mut us = Dc::open_with(dir.path(), "us", &settings);
    eu.sql(&["CREATE TABLE t (id TEXT PRIMARY KEY, pad TEXT)"]);
    let insert = |n: usize| {
        format!(
            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) \
             INSERT INTO t SELECT 'r' || i || '-' || {n}, hex(randomblob(200)) FROM s"
        )
    };
    // About 1.5 MiB of records: under the limit, over half of it.
    let req = common::req(&[(insert(2500).as_str(), vec![])]);
    let now = eu.tick();
    let out = eu.db.commit_batch(&[req], Epoch(1), &eu.node, now).unwrap();
    match &out.outcomes[0] {
        RequestOutcome::Failed { message, .. } => {
            assert!(message.contains("too large for a data centre"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // Just under half: taken, and merged in us under the same limit.
    eu.sql(&[&insert(800)]);
    us.pull(&eu);
    assert_eq!(us.read("SELECT count(*) FROM t"), ["Integer(800)"]);
}
