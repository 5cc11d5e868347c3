//! Read guarantees with a single leader and a follower: `max_lag_ms` refuses a follower that
//! has been cut off from its leader for longer (naming the leader), while a plain read is still
//! served; a linearizable read is the leader's (a follower answers 421 with its URL); the Rust
//! client's session carries its newest position from replica to replica.
//! (Linearizable reads on a cluster's members are tested in `failover.rs`.)

mod common;

use common::*;
use flotilla_client::Client;
use serde_json::{json, Value};
use std::time::Duration;

async fn query(url: &str, extra: Value) -> (u16, Value) {
    let mut body = json!({"sql": "SELECT count(*) FROM t"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/query"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_too_far_behind_refuses_a_bounded_staleness_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = start(dir.path(), "l", None).await;
    let follower = start(dir.path(), "f", Some(&leader.url)).await;
    let lc = Client::new(&leader.url);
    commit_one(&lc, "CREATE TABLE t(x)").await;
    let pos = commit_one(&lc, "INSERT INTO t VALUES (1)").await;
    wait_for(&Client::new(&follower.url), &pos).await;

    let (status, v) = query(&follower.url, json!({"max_lag_ms": 2000})).await;
    assert_eq!((status, &v["rows"][0][0]), (200, &json!(1)), "{v}");
    let (status, v) = query(&leader.url, json!({"consistency": "linearizable"})).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = query(&follower.url, json!({"consistency": "linearizable"})).await;
    assert_eq!(status, 421, "{v}");
    assert_eq!(v["error"]["leader"], leader.url.as_str(), "{v}");
    let (status, v) = query(&follower.url, json!({"consistency": "eventual"})).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("bad_request")),
        "{v}"
    );

    // A leader that falls silent (frozen: its connection stays open) counts as lag once it
    // is silent beyond its heartbeat interval, long before the session gives up on it.
    signal(&leader, libc::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, v) = query(&follower.url, json!({"max_lag_ms": 500})).await;
    signal(&leader, libc::SIGCONT);
    assert_eq!(
        status, 503,
        "a follower of a frozen leader claimed to be current: {v}"
    );
    assert_eq!(v["error"]["code"], "too_stale", "{v}");
    let started = std::time::Instant::now();
    loop {
        let (status, _) = query(&follower.url, json!({"max_lag_ms": 500})).await;
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still too stale after SIGCONT"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    leader.kill().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, v) = query(&follower.url, json!({"max_lag_ms": 500})).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "too_stale", "{v}");
    assert_eq!(v["error"]["leader"], leader.url.as_str(), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_lag_ms (500)"),
        "{v}"
    );
    // Without a bound, the follower serves what it has.
    let (status, v) = query(&follower.url, json!({})).await;
    assert_eq!((status, &v["rows"][0][0]), (200, &json!(1)), "{v}");
}

fn signal(node: &flotilla_testkit::cluster::LocalNode, sig: libc::c_int) {
    let pid = node.pid().expect("running") as libc::pid_t;
    // SAFETY: kill(2) on a child process this test started and still owns.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The Rust client's session: writes sent to a follower reach the leader (421 followed), and
/// each read waits for the newest position the session has seen, so a read on another
/// follower that was frozen while the writes happened still shows them (read-your-writes and
/// monotonic reads).
#[tokio::test(flavor = "multi_thread")]
async fn a_client_session_reads_its_writes_and_never_goes_back_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "l", None).await;
    let f1 = start(dir.path(), "f1", Some(&leader.url)).await;
    let f2 = start(dir.path(), "f2", Some(&leader.url)).await;
    let lc = Client::new(&leader.url);
    let pos = commit_one(&lc, "CREATE TABLE t(x)").await;
    wait_for(&Client::new(&f2.url), &pos).await;

    signal(&f2, libc::SIGSTOP);
    let mut s = flotilla_client::Session::new(Client::new(&f1.url));
    for i in 0..5 {
        let w = s
            .execute(json!([{"sql": "INSERT INTO t VALUES (?1)", "params": [i]}]))
            .await
            .unwrap();
        assert_eq!(
            s.position().unwrap().to_string(),
            w["position"].as_str().unwrap()
        );
        // Read-your-writes on the follower it reads from.
        let r = s
            .query(json!({"sql": "SELECT count(*) FROM t"}))
            .await
            .unwrap();
        assert_eq!(r["rows"][0][0], i + 1, "{r}");
    }
    let seen = s.position().unwrap();
    // The frozen follower, back: a plain read may show the old state; the session's read
    // waits for what the session has seen.
    signal(&f2, libc::SIGCONT);
    let mut on_f2 = flotilla_client::Session::new(Client::new(&f2.url));
    on_f2.observe(seen);
    let r = on_f2
        .query(json!({"sql": "SELECT count(*) FROM t"}))
        .await
        .unwrap();
    assert_eq!(r["rows"][0][0], 5, "{r}");
    assert!(on_f2.position().unwrap() >= seen);
}
