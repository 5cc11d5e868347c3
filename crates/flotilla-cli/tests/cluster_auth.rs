//! Authentication on a cluster: the members share a secret (`--cluster-secret`) that they
//! present to each other and that opens nothing else; the first leader makes the first admin
//! token, which replicates like every token, so it works on whichever member leads after a
//! failover; a learner follows the cluster with a replicate token; a node with another secret,
//! or without `--auth`, cannot join.

mod common;

use common::*;
use flotilla_client::Client;
use flotilla_testkit::cluster::{start_voters, LocalNode};
use serde_json::json;
use std::time::{Duration, Instant};

const SECRET: &str = "test-cluster-secret-0123456789abcdef";

/// The member that says it leads, asked with the members' secret (bounded wait); skips `down`.
async fn leader(urls: &[String], down: Option<usize>) -> usize {
    let started = Instant::now();
    loop {
        for (i, url) in urls.iter().enumerate() {
            if Some(i) == down {
                continue;
            }
            if let Ok(v) = Client::with_token(url, SECRET).get("/v1/cluster").await {
                if v["role"] == "leader" {
                    return i;
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no leader in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A write with a token, retried while the new leader opens its database.
async fn write(url: &str, token: &str, sql: &str) -> String {
    let started = Instant::now();
    loop {
        let r = Client::with_token(url, token)
            .post(
                "/v1/execute",
                &json!({"statements": [{"sql": sql}], "durability": "quorum"}),
            )
            .await;
        match r {
            Ok(v) => return v["position"].as_str().unwrap().to_string(),
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("write on {url}: {e:#}; again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("write on {url}: {e:#}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_with_authentication_keeps_its_tokens_across_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = start_voters(
        &exe(),
        dir.path(),
        3,
        &["--auth", "--cluster-secret", SECRET],
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let urls: Vec<String> = members.iter().map(|m| m.url.clone()).collect();
    let l = leader(&urls, None).await;
    let token_file = members[l].dir.join("admin.token");
    let started = Instant::now();
    while !token_file.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no admin.token on the leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();

    // No token, or the members' secret: no entry to the API.
    let body = serde_json::to_vec(&json!({"statements": [{"sql": "SELECT 1"}]})).unwrap();
    let (status, v) = raw(
        &urls[l],
        "POST",
        "/v1/execute",
        Some("application/json"),
        body.clone(),
    )
    .await;
    assert_eq!(status, 401, "{v}");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/execute", urls[l]))
        .bearer_auth(SECRET)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        401,
        "the members' secret opened the API"
    );

    // The secret lets a node join as a learner, not make voters.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/cluster/members", urls[l]))
        .bearer_auth(SECRET)
        .json(&json!({"member": "n2", "voter": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "the members' secret made a voter");
    write(&urls[l], &admin, "CREATE TABLE t(x)").await;
    write(&urls[l], &admin, "INSERT INTO t VALUES (1)").await;
    let replicate = Client::with_token(&urls[l], &admin)
        .post(
            "/v1/tokens",
            &json!({"role": "replicate", "name": "learner"}),
        )
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let via = (l + 1) % 3;
    let learner = LocalNode::start(
        &exe(),
        dir.path(),
        "p1",
        Some(&urls[via]),
        &["--auth", "--replication-token", &replicate],
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));

    // A member restarted without --auth is refused: it would serve the data to anyone.
    let other = (l + 2) % 3;
    members[other].kill().await;
    let listen = urls[other].trim_start_matches("http://").to_string();
    let open = LocalNode::start_on(
        &exe(),
        dir.path(),
        &format!("n{}", other + 1),
        &listen,
        &["--cluster-secret", SECRET],
    )
    .await;
    assert!(open.is_err(), "a member restarted without --auth");
    let log = std::fs::read_to_string(dir.path().join(format!("n{}.log", other + 1))).unwrap();
    assert!(log.contains("requires API tokens"), "{log}");
    members[other].restart().await.unwrap();

    // The leader is killed: the admin token works on the next one.
    members[l].kill().await;
    let next = leader(&urls, Some(l)).await;
    assert_ne!(next, l);
    let pos = write(&urls[next], &admin, "INSERT INTO t VALUES (2)").await;
    for url in [&urls[next], &learner.url] {
        let v = Client::with_token(url, &admin)
            .post(
                "/v1/query",
                &json!({"sql": "SELECT count(*) FROM t", "min_position": pos, "timeout_ms": 30000}),
            )
            .await
            .unwrap_or_else(|e| panic!("{url}: {e:#}"));
        assert_eq!(v["rows"][0][0], 2, "{url}: {v}");
    }

    // A node with another secret cannot join: its request is refused, and it says so.
    let wrong = LocalNode::start(
        &exe(),
        dir.path(),
        "n4",
        None,
        &[
            "--auth",
            "--join",
            &urls[next],
            "--cluster-secret",
            "another-secret-0123456789abcdef-xx",
        ],
    )
    .await;
    assert!(wrong.is_err(), "a node with another secret joined");
    let log = std::fs::read_to_string(dir.path().join("n4.log")).unwrap();
    assert!(log.contains("refused this node's cluster secret"), "{log}");
    // The right secret, without --auth: it would serve the data to anyone, so it is refused.
    let open = LocalNode::start(
        &exe(),
        dir.path(),
        "n5",
        None,
        &["--join", &urls[next], "--cluster-secret", SECRET],
    )
    .await;
    assert!(
        open.is_err(),
        "a node without --auth joined a cluster with authentication"
    );
    let log = std::fs::read_to_string(dir.path().join("n5.log")).unwrap();
    assert!(log.contains("requires API tokens"), "{log}");
}
