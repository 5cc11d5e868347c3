//! A follower whose disk fills up pauses replication with a clear status and resumes when space
//! returns; a cluster voter whose disk fills up stops (it cannot make its log durable), the
//! others go on, and it catches up once space returns. Needs root (it mounts a small tmpfs as
//! the node's data directory).

mod common;

use common::*;
use flotilla_client::Client;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_pauses_replication_until_space_returns() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let lc = Client::new(&leader.url);
    exec(
        &lc,
        json!([{ "sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)" }]),
    )
    .await;
    let disk = Tmpfs::mount(&dir.path().join("f"), "2m");
    let f = start(dir.path(), "f", Some(&leader.url)).await;
    let fc = Client::new(&f.url);
    wait_for(&fc, &position(&lc).await).await;
    // About 6 MiB of rows: more than the follower's disk holds.
    for i in 0..60 {
        let stmts: Vec<Value> = (0..25)
            .map(|j| json!({ "sql": "INSERT INTO t(v) VALUES (?1)", "params": [format!("{i}-{j}-{}", "d".repeat(4000))] }))
            .collect();
        exec(&lc, Value::Array(stmts)).await;
    }
    let s = wait_status(&fc, "disk_full", |s| s["state"] == "disk_full").await;
    let err = s["error"].as_str().unwrap();
    assert!(err.contains("disk is full"), "{err}");
    // Nothing half-applied: the follower still answers reads at a consistent position.
    let at = rows(&fc, "SELECT count(*) FROM t").await;
    assert!(at[0][0].as_i64().unwrap() < 1500);
    disk.resize("64m");
    wait_for(&fc, &position(&lc).await).await;
    let s = wait_status(&fc, "streaming again", |s| s["state"] == "streaming").await;
    assert_eq!(s["error"], Value::Null);
    assert_identical(&leader, &f).await;
    drop(f);
}

/// A keyed quorum write of row `k` (about 40 KB) through whoever leads, following 421s and
/// retrying while the outcome is unknown (bounded): whether it was acknowledged.
async fn cluster_write(urls: &[String], k: u64) -> bool {
    let body = json!({
        "statements": [{"sql": "INSERT INTO t(k, v) VALUES (?1, ?2)",
                        "params": [k, "d".repeat(40_000)]}],
        "idempotency_key": format!("w{k}"),
        "durability": "quorum",
        "timeout_ms": 2000,
    });
    for attempt in 0..60 {
        let url = &urls[attempt % urls.len()];
        let resp = reqwest::Client::new()
            .post(format!("{url}/v1/execute"))
            .json(&body)
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await;
        if let Ok(r) = resp {
            if r.status().as_u16() == 200 {
                return true;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// A cluster voter whose disk fills up: the cluster goes on with the other two (through a
/// failover if the full one led), no acknowledged write is lost, and once space returns the
/// voter is back (restarted if it stopped) and holds every acknowledged write.
#[tokio::test(flavor = "multi_thread")]
async fn a_voter_with_a_full_disk_loses_nothing_and_catches_up() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("n2"), "3m");
    let mut members = flotilla_testkit::cluster::start_voters(&exe(), dir.path(), 3, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let urls: Vec<String> = members.iter().map(|m| m.url.clone()).collect();
    let started = std::time::Instant::now();
    loop {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/execute", urls[0]))
            .json(&json!({"statements": [{"sql": "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT)"}],
                          "durability": "quorum"}))
            .send()
            .await;
        if r.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        // Not the leader yet, or not elected: ask the next.
        let mut done = false;
        for url in &urls[1..] {
            let r = reqwest::Client::new()
                .post(format!("{url}/v1/execute"))
                .json(&json!({"statements": [{"sql": "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT)"}],
                              "durability": "quorum"}))
                .send()
                .await;
            if r.is_ok_and(|r| r.status().is_success()) {
                done = true;
                break;
            }
        }
        if done {
            break;
        }
        assert!(started.elapsed().as_secs() < 30, "no leader took the table");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // About 6 MB: twice what n2's disk holds.
    let mut acked = Vec::new();
    for k in 1..=150u64 {
        if cluster_write(&urls, k).await {
            acked.push(k);
        }
    }
    assert!(
        acked.len() > 100,
        "the cluster stopped taking writes: {acked:?}"
    );
    // The disk did fill: a member that cannot make its log durable stops, saying why.
    let log = std::fs::read_to_string(dir.path().join("n2.log")).unwrap_or_default();
    assert!(log.contains("No space left on device"), "{log}");
    disk.resize("256m");
    if Client::new(&urls[1]).get("/livez").await.is_err() {
        members[1].restart().await.unwrap();
    }
    assert!(
        cluster_write(&urls, 1_000).await,
        "no write after space returned"
    );
    let v = Client::new(&urls[0]).get("/v1/cluster").await.unwrap();
    let leader_url = v["leader_url"].as_str().unwrap().to_string();
    let pos = Client::new(&leader_url).get("/v1/status").await.unwrap()["position"]
        .as_str()
        .unwrap()
        .to_string();
    for url in &urls {
        let v = Client::new(url)
            .post(
                "/v1/query",
                &json!({"sql": "SELECT k FROM t ORDER BY k", "min_position": pos, "timeout_ms": 60_000}),
            )
            .await
            .unwrap_or_else(|e| panic!("{url}: {e:#}"));
        let held: Vec<u64> = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[0].as_u64().unwrap())
            .collect();
        for k in &acked {
            assert!(held.contains(k), "{url} lost acknowledged write {k}");
        }
    }
}
