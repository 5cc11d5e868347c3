//! Backup and restore on real nodes through the CLI: a backup SQLite opens, a SQL dump that
//! loads, restores into a fresh cluster whose followers then match the leader page for page,
//! restore to a position, and the refusals.

mod common;

use common::*;
use flotilla_client::Client;
use serde_json::{json, Value};
use std::path::Path;

async fn insert_rows(c: &Client, from: u64, to: u64) -> String {
    let mut pos = String::new();
    for chunk in (from..to).collect::<Vec<_>>().chunks(250) {
        let statements: Vec<Value> = chunk
            .iter()
            .map(|i| {
                json!({"sql": "INSERT INTO t(id, v, b) VALUES (?, ?, ?)",
                       "params": [i, format!("row {i}"), {"base64": "AAEC"}]})
            })
            .collect();
        pos = exec(c, json!(statements)).await["position"]
            .as_str()
            .unwrap()
            .to_string();
    }
    pos
}

fn count(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_open_in_sqlite_and_restore_into_a_fresh_cluster_page_for_page() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), "a", None).await;
    let ac = Client::new(&a.url);
    commit_one(
        &ac,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB)",
    )
    .await;
    commit_one(&ac, "CREATE INDEX t_v ON t(v)").await;
    commit_one(&ac, "CREATE VIEW odd AS SELECT * FROM t WHERE id % 2 = 1").await;
    insert_rows(&ac, 0, 1000).await;

    // A SQLite file: sqlite's own checks pass, it holds the rows, and it is not in WAL mode
    // (so it opens anywhere, read-only too).
    let file = dir.path().join("a.db");
    let (ok, out, err) = cli(&[
        "backup",
        "--node",
        &a.url,
        "--quiet",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("at position 1/"), "{out}");
    {
        let conn = rusqlite::Connection::open_with_flags(
            &file,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_ne!(mode, "wal");
        let n: i64 = conn
            .query_row("SELECT count(*) FROM odd", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 500);
    }
    assert_eq!(count(&file), 1000);

    // A SQL dump loads into a plain SQLite with the same rows.
    let dump = dir.path().join("a.sql");
    let (ok, _, err) = cli(&[
        "backup",
        "--node",
        &a.url,
        "--quiet",
        "--format",
        "sql",
        dump.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&dump).unwrap();
    assert!(
        !text.contains("_flotilla"),
        "Flotilla's own tables stay out of a dump"
    );
    let loaded = rusqlite::Connection::open_in_memory().unwrap();
    loaded.execute_batch(&text).unwrap();
    let sum = |c: &rusqlite::Connection| -> (i64, String) {
        c.query_row(
            "SELECT count(*), group_concat(v, ',') FROM (SELECT v FROM t ORDER BY id)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    assert_eq!(
        sum(&loaded),
        sum(&rusqlite::Connection::open(&file).unwrap())
    );

    // Restore into a fresh cluster that has a follower already: it follows the restore.
    let b = start(dir.path(), "b", None).await;
    let bf = start(dir.path(), "bf", Some(&b.url)).await;
    let bc = Client::new(&b.url);
    let (ok, out, err) = cli(&[
        "restore",
        "--node",
        &b.url,
        "--quiet",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("continues at position"), "{out}");
    assert_eq!(rows(&bc, "SELECT count(*) FROM t").await, json!([[1000]]));
    assert_identical(&b, &bf).await;
    // Writes go on after it, and reach the follower.
    insert_rows(&bc, 1000, 1010).await;
    assert_identical(&b, &bf).await;

    // Not empty now: refused without --replace, with the reason.
    let (ok, _, err) = cli(&[
        "restore",
        "--node",
        &b.url,
        "--quiet",
        dump.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("restore_refused") && err.contains("--replace"),
        "{err}"
    );
    assert_eq!(rows(&bc, "SELECT count(*) FROM t").await, json!([[1010]]));
    // The dump replaces it.
    let (ok, _, err) = cli(&[
        "restore",
        "--node",
        &b.url,
        "--quiet",
        "--replace",
        dump.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(rows(&bc, "SELECT count(*) FROM t").await, json!([[1000]]));
    assert_eq!(rows(&bc, "SELECT count(*) FROM odd").await, json!([[500]]));
    assert_identical(&b, &bf).await;

    // A follower does not take restores.
    let (ok, _, err) = cli(&[
        "restore",
        "--node",
        &bf.url,
        "--quiet",
        file.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("not_leader"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_rolls_forward_through_the_log_to_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), "a", None).await;
    let af = start(dir.path(), "af", Some(&a.url)).await;
    let ac = Client::new(&a.url);
    commit_one(
        &ac,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB)",
    )
    .await;
    insert_rows(&ac, 0, 500).await;
    let file = dir.path().join("a.db");
    let (ok, _, err) = cli(&[
        "backup",
        "--node",
        &a.url,
        "--quiet",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let middle = insert_rows(&ac, 500, 750).await;
    insert_rows(&ac, 750, 1000).await;
    commit_one(&ac, "DROP TABLE t").await;

    // Back to the moment after row 749, before the table was dropped.
    let (ok, out, err) = cli(&[
        "restore",
        "--node",
        &a.url,
        "--quiet",
        "--replace",
        "--to",
        &middle,
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("rolled forward to {middle}")),
        "{out}"
    );
    assert_eq!(
        rows(&ac, "SELECT count(*), max(id) FROM t").await,
        json!([[750, 749]])
    );
    assert_identical(&a, &af).await;

    // Beyond the newest commit, or with a dump: refused, nothing changed.
    let (ok, _, err) = cli(&[
        "restore",
        "--node",
        &a.url,
        "--quiet",
        "--replace",
        "--to",
        "1/999999",
        file.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("bad_position"), "{err}");
    let dump = dir.path().join("a.sql");
    assert!(
        cli(&[
            "backup",
            "--node",
            &a.url,
            "--quiet",
            "--format",
            "sql",
            dump.to_str().unwrap()
        ])
        .0
    );
    let (ok, _, err) = cli(&[
        "restore",
        "--node",
        &a.url,
        "--quiet",
        "--replace",
        "--to",
        &middle,
        dump.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("needs a Flotilla backup"), "{err}");
    assert_eq!(rows(&ac, "SELECT count(*) FROM t").await, json!([[750]]));
}

#[tokio::test(flavor = "multi_thread")]
async fn what_is_not_a_backup_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), "a", None).await;
    let ac = Client::new(&a.url);
    commit_one(&ac, "CREATE TABLE t(x)").await;
    let before = position(&ac).await;
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "do not read").unwrap();
    for (body, expected) in [
        (Vec::new(), "the body is empty"),
        (vec![0xff, 0xfe, 0x00, 0x80], "neither a SQLite database"),
        (b"CREATE TABLE (".to_vec(), "does not load"),
        (
            format!(
                "ATTACH '{}' AS s; CREATE TABLE x AS SELECT 1;",
                secret.display()
            )
            .into_bytes(),
            "does not load",
        ),
        (
            format!("VACUUM INTO '{}';", dir.path().join("copy.db").display()).into_bytes(),
            "does not load",
        ),
        (b"PRAGMA journal_mode = OFF;".to_vec(), "does not load"),
        (
            b"SQLite format 3\0 but then nothing".to_vec(),
            "not an intact SQLite database",
        ),
    ] {
        let (status, answer) = raw(
            &a.url,
            "POST",
            "/v1/restore?replace=true",
            Some("application/octet-stream"),
            body,
        )
        .await;
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{answer}");
        assert!(message.contains(expected), "{expected}: {message}");
    }
    assert!(!dir.path().join("copy.db").exists());
    assert_eq!(position(&ac).await, before, "nothing was restored");
    assert_eq!(rows(&ac, "SELECT count(*) FROM t").await, json!([[0]]));
    let (status, answer) = raw(&a.url, "POST", "/v1/restore?into=x", None, b"x".to_vec()).await;
    assert_eq!(status, 400, "{answer}");
    let (status, _) = raw(&a.url, "GET", "/v1/backup?format=tar", None, Vec::new()).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn what_replicas_could_not_reproduce_is_refused_at_restore() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), "a", None).await;
    let ac = Client::new(&a.url);
    let before = position(&ac).await;
    for (dump, expected) in [
        (
            "CREATE TABLE np(k TEXT PRIMARY KEY, v); INSERT INTO np VALUES (NULL, 1), ('a', 2);",
            "table \"np\" has 1 row(s) whose primary key holds NULL",
        ),
        (
            "CREATE TABLE d(a INTEGER PRIMARY KEY DESC, b); INSERT INTO d VALUES (NULL, 1);",
            "table \"d\" has 1 row(s) whose primary key holds NULL",
        ),
        (
            "CREATE TABLE rc(rowid, oid, _rowid_); INSERT INTO rc VALUES (1, 2, 3);",
            "columns named rowid, oid and _rowid_",
        ),
        (
            "CREATE TABLE ok(x);\nINSERT INTO ok VALUES (1);\nINSERT INTO missing VALUES (2);",
            "line 3 (INSERT INTO missing VALUES (2)): no such table: missing",
        ),
        (
            "ATTACH 'x.db' AS x;",
            "line 1 (ATTACH 'x.db' AS x): not allowed in a restore",
        ),
    ] {
        let (status, answer) = raw(
            &a.url,
            "POST",
            "/v1/restore",
            None,
            dump.as_bytes().to_vec(),
        )
        .await;
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{answer}");
        assert!(message.contains(expected), "{expected}: {message}");
    }
    // A UTF-16 database file.
    let utf16 = dir.path().join("utf16.db");
    {
        let c = rusqlite::Connection::open(&utf16).unwrap();
        c.execute_batch(
            "PRAGMA encoding = 'UTF-16le'; CREATE TABLE t(x); INSERT INTO t VALUES ('é');",
        )
        .unwrap();
    }
    let (status, answer) = raw(
        &a.url,
        "POST",
        "/v1/restore",
        None,
        std::fs::read(&utf16).unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("UTF-16le"),
        "{answer}"
    );
    assert_eq!(position(&ac).await, before, "nothing was restored");

    // A sqlite3-style dump in one transaction, and rows with rowids of their own, load.
    let dump = "PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\nCREATE TABLE p(x, y);\n\
                INSERT INTO p(rowid, x, y) VALUES(7, 'a;b', NULL);\nCOMMIT;\n";
    let (status, answer) = raw(
        &a.url,
        "POST",
        "/v1/restore",
        None,
        dump.as_bytes().to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        rows(&ac, "SELECT rowid, x, y FROM p").await,
        json!([[7, "a;b", null]])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn leftovers_of_an_interrupted_restore_never_reach_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), "a", None).await;
    let ac = Client::new(&a.url);
    // A hot rollback journal of some other database, as a restore killed mid-build leaves.
    let other = dir.path().join("other.db");
    let journal = {
        let c = rusqlite::Connection::open(&other).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode = DELETE; CREATE TABLE big(x); \
             INSERT INTO big WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 200) SELECT zeroblob(1000) FROM s;",
        )
        .unwrap();
        c.execute_batch("BEGIN; DELETE FROM big; UPDATE big SET x = 1;")
            .unwrap();
        let copy = std::fs::read(format!("{}-journal", other.display())).unwrap();
        c.execute_batch("ROLLBACK").unwrap();
        copy
    };
    assert!(journal.len() > 1000);
    let restore_dir = a.dir.join("restore");
    std::fs::create_dir_all(&restore_dir).unwrap();
    std::fs::write(restore_dir.join("build.sqlite-journal"), &journal).unwrap();
    std::fs::write(restore_dir.join("upload"), b"stale").unwrap();

    let good = dir.path().join("good.db");
    {
        let c = rusqlite::Connection::open(&good).unwrap();
        c.execute_batch("CREATE TABLE z(id INTEGER PRIMARY KEY, v); INSERT INTO z(v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 500) SELECT i FROM s;")
            .unwrap();
    }
    let (status, answer) = raw(
        &a.url,
        "POST",
        "/v1/restore",
        None,
        std::fs::read(&good).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(rows(&ac, "SELECT count(*) FROM z").await, json!([[500]]));
    assert!(!restore_dir.join("build.sqlite-journal").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_logical_followers_backup_is_not_rolled_forward() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), "a", None).await;
    let ac = Client::new(&a.url);
    commit_one(
        &ac,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB)",
    )
    .await;
    insert_rows(&ac, 0, 100).await;
    let lf = flotilla_testkit::cluster::LocalNode::start(
        &exe(),
        dir.path(),
        "lf",
        Some(&a.url),
        &["--log", "logical"],
    )
    .await
    .unwrap();
    wait_for(&Client::new(&lf.url), &position(&ac).await).await;
    let file = dir.path().join("lf.db");
    let (ok, _, err) = cli(&[
        "backup",
        "--node",
        &lf.url,
        "--quiet",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let to = insert_rows(&ac, 100, 200).await;
    let (ok, _, err) = cli(&[
        "restore",
        "--node",
        &a.url,
        "--quiet",
        "--replace",
        "--to",
        &to,
        file.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("taken from a logical follower"),
        "{err}"
    );
    assert_eq!(rows(&ac, "SELECT count(*) FROM t").await, json!([[200]]));
}
