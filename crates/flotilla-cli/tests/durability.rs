//! Per-request durability on real nodes: a `semi-sync` write is acknowledged only once a
//! physical follower holds it durably; too few followers mean a wait or, as configured, a clear
//! `not_replicated` error — never a silent downgrade to `async`.

mod common;

use common::*;
use flotilla_client::Client;
use flotilla_testkit::cluster::LocalNode;
use serde_json::{json, Value};
use std::time::Duration;

fn write(sql: &str, key: &str, durability: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "statements": [{ "sql": sql }],
        "idempotency_key": key,
        "durability": durability,
    }))
    .unwrap()
}

async fn post(url: &str, body: Vec<u8>) -> (u16, Value) {
    raw(url, "POST", "/v1/execute", Some("application/json"), body).await
}

async fn start_with(
    root: &std::path::Path,
    id: &str,
    follow: Option<&str>,
    extra: &[&str],
) -> LocalNode {
    LocalNode::start(&exe(), root, id, follow, extra)
        .await
        .unwrap_or_else(|e| panic!("starting {id}: {e:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn semi_sync_waits_for_a_physical_copy_and_says_when_there_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("leader.toml");
    std::fs::write(
        &config,
        "[durability]\ntoo-few-replicas = \"error\"\ntimeout-ms = 400\n",
    )
    .unwrap();
    let leader = start_with(
        dir.path(),
        "leader",
        None,
        &["--config", config.to_str().unwrap()],
    )
    .await;
    let c = Client::new(&leader.url);
    commit_one(&c, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").await;

    // Names the leader does not know, and quorum without voters, are refused before anything
    // runs.
    let (code, body) = post(
        &leader.url,
        write("INSERT INTO t(v) VALUES ('x')", "k0", "sync"),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown durability \"sync\""),
        "{body}"
    );
    let (code, body) = post(
        &leader.url,
        write("INSERT INTO t(v) VALUES ('x')", "k0", "quorum"),
    )
    .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("durability_unavailable")),
        "{body}"
    );
    assert_eq!(rows(&c, "SELECT count(*) FROM t").await, json!([[0]]));

    // A logical follower is no complete copy: it does not count.
    let logical = start_with(
        dir.path(),
        "logical",
        Some(&leader.url),
        &["--log", "logical"],
    )
    .await;
    wait_status(&c, "the logical follower to stream", |s| {
        s["followers"]
            .as_array()
            .is_some_and(|f| f.len() == 1 && f[0]["state"] == "streaming")
    })
    .await;
    let (code, body) = post(
        &leader.url,
        write("INSERT INTO t(v) VALUES ('a')", "k1", "semi-sync"),
    )
    .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (503, Some("not_replicated")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("only 0 of the 1 physical followers"),
        "{message}"
    );
    let committed_at = body["error"]["position"].as_str().unwrap().to_string();
    // Committed on the leader all the same (the message says so), and shown to readers there.
    assert_eq!(rows(&c, "SELECT v FROM t").await, json!([["a"]]));

    // A physical follower arrives; the same request, retried with its key, is acknowledged at
    // the position it first committed at, not run again.
    let mut physical = start(dir.path(), "physical", Some(&leader.url)).await;
    let (code, body) = post(
        &leader.url,
        write("INSERT INTO t(v) VALUES ('a')", "k1", "semi-sync"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["position"].as_str(), Some(committed_at.as_str()));
    assert_eq!(body["durability"], "semi-sync");
    assert_eq!(rows(&c, "SELECT count(*) FROM t").await, json!([[1]]));

    // An acknowledged semi-sync write is on the follower's disk: it survives a SIGKILL of the
    // follower straight after the answer.
    let (code, body) = post(
        &leader.url,
        write("INSERT INTO t(v) VALUES ('b')", "k2", "semi-sync"),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let pos = body["position"].as_str().unwrap().to_string();
    physical.kill().await;
    let copy = rusqlite::Connection::open(physical.db_path()).unwrap();
    let held: i64 = copy
        .query_row("SELECT count(*) FROM t WHERE v = 'b'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(held, 1, "the follower did not hold {pos} after the ack");
    drop(copy);

    // Status shows the settings and how far the semi-sync copies reach; metrics count the
    // waits and the timeout.
    let s = status(&c).await;
    assert_eq!(s["durability"]["default"], "async");
    assert_eq!(s["durability"]["too_few_replicas"], "error");
    assert_eq!(
        s["durability"]["semi_sync_position"].as_str(),
        Some(pos.as_str())
    );
    let metrics = reqwest::get(format!("{}/metrics", leader.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("flotilla_semi_sync_timeouts_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flotilla_semi_sync_waits_total 3"),
        "{metrics}"
    );
    drop(logical);
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_a_semi_sync_write_waits_until_a_follower_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start_with(dir.path(), "leader", None, &["--durability", "semi-sync"]).await;
    let url = leader.url.clone();
    // The leader's default applies to a request that names none.
    let body = serde_json::to_vec(&json!({"statements": [{"sql": "CREATE TABLE t(x)"}]})).unwrap();
    let pending = tokio::spawn(async move { post(&url, body).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!pending.is_finished(), "answered without a follower");
    let follower = start(dir.path(), "follower", Some(&leader.url)).await;
    let (code, body) = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("answered once the follower holds it")
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["durability"], "semi-sync");
    let s = status(&Client::new(&follower.url)).await;
    let durable: flotilla_types::Position =
        s["durable_position"].as_str().unwrap().parse().unwrap();
    let acked: flotilla_types::Position = body["position"].as_str().unwrap().parse().unwrap();
    assert!(
        durable >= acked,
        "follower durable at {durable}, write acked at {acked}"
    );
    // An async write on the same leader is answered without waiting for anyone.
    let (code, body) = post(
        &leader.url,
        write("INSERT INTO t VALUES (1)", "a1", "async"),
    )
    .await;
    assert_eq!(
        (code, body["durability"].as_str()),
        (200, Some("async")),
        "{body}"
    );
}
