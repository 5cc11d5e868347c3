//! Physical replication between real processes: followers end page-identical to the leader
//! through random transactions, SIGKILLs, leader restarts and bootstraps under load.

mod common;

use base64::Engine;
use common::*;
use flotilla_client::Client;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT)";

fn random_statements(rng: &mut Rng, i: u64) -> Value {
    match rng.below(12) {
        0 => {
            // A blob spanning many pages (overflow chains).
            let blob = vec![(i % 251) as u8; 20_000 + rng.below(120_000) as usize];
            let b64 = base64::engine::general_purpose::STANDARD.encode(blob);
            json!([{ "sql": "INSERT INTO blobs(b) VALUES (?1)", "params": [{ "base64": b64 }] }])
        }
        1 => json!([{ "sql": "DELETE FROM t WHERE k % 7 = ?1", "params": [i % 7] }]),
        2 => json!([{ "sql": "UPDATE t SET v = v || 'x' WHERE k % 5 = ?1", "params": [i % 5] }]),
        3 => {
            json!([{ "sql": format!("CREATE TABLE IF NOT EXISTS extra{} (a INTEGER PRIMARY KEY, b TEXT)", i % 5) }])
        }
        4 => json!([{ "sql": format!("DROP TABLE IF EXISTS extra{}", (i + 2) % 5) }]),
        5 => json!([{ "sql": "DELETE FROM blobs WHERE id % 2 = ?1", "params": [i % 2] }]),
        6 => json!([{ "sql": "CREATE INDEX IF NOT EXISTS t_k ON t(k)" }]),
        _ => {
            let n = 1 + rng.below(20);
            let stmts: Vec<Value> = (0..n)
                .map(|j| json!({ "sql": "INSERT INTO t(k, v) VALUES (?1, ?2)", "params": [(i * 100 + j) as i64, "v".repeat(rng.below(400) as usize)] }))
                .collect();
            Value::Array(stmts)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_end_page_identical_under_random_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let lc = Client::new(&leader.url);
    exec(
        &lc,
        json!([{ "sql": SCHEMA }, { "sql": "CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB)" }]),
    )
    .await;
    let f1 = start(dir.path(), "f1", Some(&leader.url)).await;
    let f2 = start(dir.path(), "f2", Some(&leader.url)).await;
    for seed in [1u64, 7, 42] {
        let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for i in 0..60 {
            exec(&lc, random_statements(&mut rng, seed * 1000 + i)).await;
        }
        assert_identical(&leader, &f1).await;
        assert_identical(&leader, &f2).await;
    }
    // The blobs survived byte for byte.
    let q = "SELECT count(*), sum(length(b)) FROM blobs";
    assert_eq!(rows(&lc, q).await, rows(&Client::new(&f1.url), q).await);
}

/// A background writer; returns the number of acknowledged commits when stopped.
fn writer(url: &str) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<i64>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let c = Client::new(url);
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut k = 0i64;
        while !s.load(Ordering::Relaxed) {
            k += 1;
            let body = json!({ "statements": [{ "sql": "INSERT INTO t(k, v) VALUES (?1, 'w')", "params": [k] }] });
            if c.post("/v1/execute", &body).await.is_ok() {
                acked.push(k);
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        acked
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_follower_restarts_consistent_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let lc = Client::new(&leader.url);
    exec(&lc, json!([{ "sql": SCHEMA }])).await;
    let mut f = start(dir.path(), "f", Some(&leader.url)).await;
    let (stop, task) = writer(&leader.url);
    let mut rng = Rng::new(99);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(50 + rng.below(250))).await;
        f.kill().await;
        tokio::time::sleep(Duration::from_millis(rng.below(200))).await;
        f.restart().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = task.await.unwrap();
    assert!(acked.len() > 10, "the workload made progress");
    assert_identical(&leader, &f).await;
    // Applied batches are shown before they are flushed; the flush follows, and both the
    // follower and the leader then say all of it is durable.
    let head = position(&lc).await;
    let fc = Client::new(&f.url);
    wait_status(
        &fc,
        "the follower's durable position reaches the head",
        |s| s["durable_position"] == head.as_str(),
    )
    .await;
    wait_status(
        &lc,
        "the leader sees the follower durable at the head",
        |s| s["followers"][0]["durable_position"] == head.as_str(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_and_restart_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = start(dir.path(), "leader", None).await;
    let lc = Client::new(&leader.url);
    exec(&lc, json!([{ "sql": SCHEMA }])).await;
    let f = start(dir.path(), "f", Some(&leader.url)).await;
    let (stop, task) = writer(&leader.url);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        leader.kill().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Err(e) = leader.restart().await {
            dump_log(&leader);
            panic!("restart: {e:#}");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = task.await.unwrap();
    let present: Vec<i64> = rows(&lc, "SELECT k FROM t ORDER BY k")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_i64().unwrap())
        .collect();
    for k in &acked {
        assert!(
            present.binary_search(k).is_ok(),
            "acknowledged write {k} was lost"
        );
    }
    // The follower reconnected to the restarted leader and holds the same pages.
    let s = wait_status(&Client::new(&f.url), "follower streaming", |s| {
        s["state"] == "streaming"
    })
    .await;
    assert_eq!(s["leader"], json!(leader.url));
    assert_identical(&leader, &f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_added_by_snapshot_while_writes_continue() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let lc = Client::new(&leader.url);
    exec(&lc, json!([{ "sql": SCHEMA }])).await;
    // Enough data that the snapshot takes more than a moment.
    for i in 0..20 {
        let stmts: Vec<Value> = (0..200)
            .map(|j| json!({ "sql": "INSERT INTO t(k, v) VALUES (?1, ?2)", "params": [i * 1000 + j, "z".repeat(500)] }))
            .collect();
        exec(&lc, Value::Array(stmts)).await;
    }
    let (stop, task) = writer(&leader.url);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let f = start(dir.path(), "late", Some(&leader.url)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    assert_identical(&leader, &f).await;
    let s = status(&lc).await;
    let late = s["followers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "late")
        .unwrap();
    assert_eq!(late["applied_position"], s["position"]);
    assert_eq!(late["lag_transactions"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_follower_no_longer_listed() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let lc = Client::new(&leader.url);
    let mut f = start(dir.path(), "gone", Some(&leader.url)).await;
    wait_status(&lc, "follower known", |s| {
        s["followers"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    f.kill().await;
    wait_status(&lc, "follower disconnected", |s| {
        s["followers"][0]["state"] == "disconnected"
    })
    .await;
    lc.delete("/v1/followers/gone").await.unwrap();
    assert_eq!(status(&lc).await["followers"], json!([]));
    let err = lc
        .delete("/v1/followers/gone")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown_follower"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_beyond_the_retained_log_bootstraps_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tight.toml");
    std::fs::write(&cfg, "[log]\nsegment-mib = 1\nretention-max-mib = 1\n").unwrap();
    let leader = flotilla_testkit::cluster::LocalNode::start(
        &exe(),
        dir.path(),
        "leader",
        None,
        &["--config", cfg.to_str().unwrap()],
    )
    .await
    .unwrap();
    let lc = Client::new(&leader.url);
    exec(&lc, json!([{ "sql": SCHEMA }])).await;
    let mut f = start(dir.path(), "f", Some(&leader.url)).await;
    wait_for(&Client::new(&f.url), &position(&lc).await).await;
    f.kill().await;
    // About 4 MiB of log while the follower is away: more than the 1 MiB cap.
    for i in 0..40 {
        let stmts: Vec<Value> = (0..50)
            .map(|j| json!({ "sql": "INSERT INTO t(k, v) VALUES (?1, ?2)", "params": [i * 100 + j, "r".repeat(2000)] }))
            .collect();
        exec(&lc, Value::Array(stmts)).await;
    }
    // Retention runs every few seconds and drops the segments the follower would need.
    wait_status(&lc, "log trimmed", |s| {
        s["log"]["first_lsn"].as_u64().unwrap_or(0) > 2
    })
    .await;
    f.restart().await.unwrap();
    let fc = Client::new(&f.url);
    wait_for(&fc, &position(&lc).await).await;
    let metrics = reqwest::get(format!("{}/metrics", f.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("flotilla_bootstraps_total 1"),
        "the restarted follower bootstrapped from a snapshot:\n{metrics}"
    );
    assert_identical(&leader, &f).await;
}
