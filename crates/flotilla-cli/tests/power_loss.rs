//! A leader whose database lost its newest commits — what a power loss does to SQLite with
//! `synchronous=NORMAL`, where the WAL is flushed only at checkpoints — is completed from the
//! replication log (flushed before every answer) when it starts: no acknowledged write is lost.
//! The loss is reproduced by putting back the database files as they were several commits
//! earlier, beside the newer log.

mod common;

use common::*;
use flotilla_client::Client;
use flotilla_testkit::cluster::LocalNode;
use serde_json::json;

fn copy_db(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in ["db.sqlite", "db.sqlite-wal"] {
        let src = from.join(name);
        if src.exists() {
            std::fs::copy(&src, to.join(name)).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_lost_its_newest_commits_is_completed_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = LocalNode::start(
        &exe(),
        dir.path(),
        "leader",
        None,
        &["--synchronous", "normal"],
    )
    .await
    .unwrap();
    let lc = Client::new(&leader.url);
    exec(
        &lc,
        json!([{ "sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)" }]),
    )
    .await;
    for i in 0..40 {
        exec(
            &lc,
            json!([{ "sql": "INSERT INTO t VALUES (?1, ?2)", "params": [i, format!("a{i}")] }]),
        )
        .await;
    }
    let early = position(&lc).await;
    leader.kill().await;
    let saved = dir.path().join("saved");
    copy_db(&leader.dir, &saved);

    leader.restart().await.unwrap();
    let lc = Client::new(&leader.url);
    for i in 40..100 {
        exec(
            &lc,
            json!([{ "sql": "INSERT INTO t VALUES (?1, ?2)", "params": [i, format!("b{i}")] }]),
        )
        .await;
    }
    exec(
        &lc,
        json!([{ "sql": "UPDATE t SET v = 'changed' WHERE id < 10" }]),
    )
    .await;
    let acknowledged = position(&lc).await;
    let expected = rows(&lc, "SELECT * FROM t ORDER BY id").await;
    leader.kill().await;

    // The database files go back to their state at `early`; the log keeps everything after.
    let _ = std::fs::remove_file(leader.dir.join("db.sqlite-shm"));
    let _ = std::fs::remove_file(leader.dir.join("db.sqlite-wal"));
    copy_db(&saved, &leader.dir);
    assert_ne!(early, acknowledged);

    leader.restart().await.unwrap();
    let lc = Client::new(&leader.url);
    assert_eq!(
        position(&lc).await,
        acknowledged,
        "every acknowledged commit is back"
    );
    assert_eq!(rows(&lc, "SELECT * FROM t ORDER BY id").await, expected);
    // Writes continue, and a new follower ends identical.
    exec(
        &lc,
        json!([{ "sql": "INSERT INTO t VALUES (1000, 'after')" }]),
    )
    .await;
    let f = start(dir.path(), "f", Some(&leader.url)).await;
    assert_identical(&leader, &f).await;
}
