//! Everyday API conveniences on real nodes: rows from RETURNING, named parameters, rows as
//! objects, requests that change nothing, write forwarding from a follower, and the probes.

mod common;

use common::*;
use flotilla_client::Client;
use serde_json::{json, Value};
use std::time::Duration;

fn last_lsn(status: &Value) -> u64 {
    status["log"]["last_lsn"].as_u64().expect("a leader's log")
}

#[tokio::test(flavor = "multi_thread")]
async fn returning_rows_named_parameters_and_rows_as_objects() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let c = Client::new(&leader.url);
    commit_one(&c, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n REAL)").await;

    // RETURNING rows come back, with each kind of named parameter.
    let answer = exec(
        &c,
        json!([
            {"sql": "INSERT INTO t(v, n) VALUES (:v, @n) RETURNING id, v, n",
             "params": {"v": "a", "@n": 1.5}},
            {"sql": "INSERT INTO t(v) VALUES ($v) RETURNING *", "params": {"$v": "NULL"}},
            {"sql": "UPDATE t SET n = 2 WHERE id = 99 RETURNING id"},
        ]),
    )
    .await;
    let r = &answer["results"];
    assert_eq!(r[0]["columns"], json!(["id", "v", "n"]));
    assert_eq!(r[0]["rows"], json!([[1, "a", 1.5]]));
    assert_eq!(r[1]["rows"], json!([[2, "NULL", null]]));
    assert_eq!(
        (r[2]["rows"].clone(), r[2]["rows_affected"].clone()),
        (json!([]), json!(0))
    );

    // Rows as objects, on execute and on query.
    let body = json!({
        "statements": [{"sql": "UPDATE t SET n = n + 1 WHERE id = :id RETURNING id, n",
                        "params": {"id": 1}}],
        "associative": true,
        "idempotency_key": "bump-1",
    });
    let first = c.post("/v1/execute", &body).await.unwrap();
    assert_eq!(first["results"][0]["rows"], json!([{"id": 1, "n": 2.5}]));
    // A retry with the key gets the same rows, without running again.
    let again = c.post("/v1/execute", &body).await.unwrap();
    assert_eq!(again, first);
    let q = c
        .post(
            "/v1/query",
            &json!({"sql": "SELECT id, n FROM t WHERE v = :v", "params": {"v": "a"},
                    "associative": true}),
        )
        .await
        .unwrap();
    assert_eq!(q["rows"], json!([{"id": 1, "n": 2.5}]));

    // Parameters that do not fit are named.
    for (params, expected) in [
        (json!({"v": "a"}), "no value was given for parameter :w"),
        (
            json!({"v": "a", "w": 1, "x": 2}),
            "no parameter named \"x\"",
        ),
        (json!(["a", 1]), "no value"),
    ] {
        let sql = if params.is_array() {
            "SELECT :v, :w, :nope"
        } else {
            "SELECT :v, :w"
        };
        let e = c
            .post("/v1/query", &json!({"sql": sql, "params": params}))
            .await
            .unwrap_err()
            .to_string();
        let expected = if params.is_array() {
            "3 parameters but 2 values"
        } else {
            expected
        };
        assert!(e.contains("sql_error") && e.contains(expected), "{e}");
    }
    let e = c
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "INSERT INTO t(v) VALUES (?)", "params": {"v": 1}}]}),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("plain ?"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_changes_nothing_takes_no_position() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let c = Client::new(&leader.url);
    commit_one(&c, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT UNIQUE)").await;
    let p0 = commit_one(&c, "INSERT INTO t(v) VALUES ('a')").await;
    let lsn0 = last_lsn(&status(&c).await);
    for sql in [
        "SELECT * FROM t",
        "UPDATE t SET v = 'b' WHERE id = 42",
        "DELETE FROM t WHERE v = 'zzz'",
        "INSERT OR IGNORE INTO t(v) VALUES ('a')",
        "INSERT INTO t(v) VALUES ('a') ON CONFLICT DO NOTHING",
        "  -- a comment first\n  UPDATE t SET v = v WHERE 0",
        "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT UNIQUE)",
        "DROP TABLE IF EXISTS never_made",
        "DROP INDEX IF EXISTS never_made_either",
    ] {
        let answer = exec(&c, json!([{ "sql": sql }])).await;
        assert_eq!(answer["position"], json!(p0), "{sql}");
    }
    assert_eq!(last_lsn(&status(&c).await), lsn0, "no record was written");

    // Statements that change pages without counting rows do take a position.
    let p1 = commit_one(&c, "REINDEX t").await;
    assert_ne!(p1, p0);
    // A schema statement that does something takes one too, IF NOT EXISTS or not.
    let p2 = commit_one(&c, "CREATE INDEX IF NOT EXISTS t_v2 ON t(v)").await;
    assert_ne!(p2, p1);
    let again = commit_one(&c, "CREATE INDEX IF NOT EXISTS t_v2 ON t(v)").await;
    assert_eq!(again, p2, "nothing to do the second time");
    let p1 = commit_one(&c, "DROP INDEX IF EXISTS t_v2").await;
    assert_ne!(p1, p2);
    // So does a request with an idempotency key: the key is kept.
    let keyed = c
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "SELECT 1"}], "idempotency_key": "k"}),
        )
        .await
        .unwrap();
    assert_ne!(keyed["position"], json!(p1));
    // And a change among no-ops.
    let mixed = exec(
        &c,
        json!([{"sql": "SELECT 1"}, {"sql": "UPDATE t SET v = 'c' WHERE id = 1"}]),
    )
    .await;
    assert_ne!(mixed["position"], keyed["position"]);
    assert_eq!(rows(&c, "SELECT v FROM t").await, json!([["c"]]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_forwards_writes_when_asked_and_reads_them_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = start(dir.path(), "leader", None).await;
    let lc = Client::new(&leader.url);
    commit_one(&lc, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)").await;
    let follower = start(dir.path(), "f1", Some(&leader.url)).await;
    let forwarding = flotilla_testkit::cluster::LocalNode::start(
        &exe(),
        dir.path(),
        "f2",
        Some(&leader.url),
        &["--forward-writes"],
    )
    .await
    .unwrap();
    let fc = Client::new(&follower.url);
    let insert =
        |v: &str| json!([{ "sql": "INSERT INTO t(v) VALUES (?) RETURNING id", "params": [v] }]);

    // Not asked: 421 as before.
    let e = fc
        .post("/v1/execute", &json!({ "statements": insert("x") }))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("421") && e.contains("not_leader"), "{e}");

    // Asked: forwarded, applied here before the answer, readable at once.
    for i in 0..5 {
        let answer = fc
            .post(
                "/v1/execute",
                &json!({ "statements": insert(&format!("v{i}")), "forward": true }),
            )
            .await
            .unwrap();
        assert_eq!(answer["forwarded_to"], json!(leader.url));
        assert_eq!(answer["applied_here"], json!(true));
        let id = answer["results"][0]["rows"][0][0].clone();
        let seen = rows(&fc, &format!("SELECT v FROM t WHERE id = {id}")).await;
        assert_eq!(
            seen,
            json!([[format!("v{i}")]]),
            "read-your-writes on the follower"
        );
    }
    // The leader's own errors come back as it gave them.
    let e = fc
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "INSERT INTO nope VALUES (1)"}], "forward": true}),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("400") && e.contains("no such table: nope"),
        "{e}"
    );

    // A node set to forward does so by default; a request can refuse it.
    let f2 = Client::new(&forwarding.url);
    let answer = f2
        .post(
            "/v1/execute",
            &json!({ "statements": insert("by-default") }),
        )
        .await
        .unwrap();
    assert_eq!(answer["applied_here"], json!(true));
    let e = f2
        .post(
            "/v1/execute",
            &json!({ "statements": insert("no"), "forward": false }),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not_leader"), "{e}");

    // A leader that is gone: nothing was sent, and the error says so.
    leader.kill().await;
    let e = f2
        .post("/v1/execute", &json!({ "statements": insert("lost") }))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("503") && e.contains("leader_unreachable"), "{e}");
}

async fn probe(url: &str, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{url}{path}")).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn livez_and_readyz_follow_the_node_and_its_lag() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("f.toml");
    std::fs::write(&config, "[api]\nready-max-lag-ms = 300\n").unwrap();
    let mut leader = start(dir.path(), "leader", None).await;
    let follower = flotilla_testkit::cluster::LocalNode::start(
        &exe(),
        dir.path(),
        "f1",
        Some(&leader.url),
        &["--config", config.to_str().unwrap()],
    )
    .await
    .unwrap();
    let lc = Client::new(&leader.url);
    let pos = commit_one(&lc, "CREATE TABLE t(x)").await;
    wait_for(&Client::new(&follower.url), &pos).await;
    assert_eq!(
        probe(&leader.url, "/livez").await,
        (200, json!({"live": true}))
    );
    assert_eq!(probe(&leader.url, "/readyz").await.0, 200);
    let mut ready = (0, Value::Null);
    for _ in 0..100 {
        ready = probe(&follower.url, "/readyz").await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert_eq!(ready.1["role"], json!("follower"));

    // Without its leader for longer than the allowed lag, the follower is live, not ready.
    leader.kill().await;
    let mut last = (0, Value::Null);
    for _ in 0..200 {
        last = probe(&follower.url, "/readyz").await;
        if last.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last.0, 503, "{}", last.1);
    let reason = last.1["reason"].as_str().unwrap();
    assert!(reason.contains("api.ready-max-lag-ms (300)"), "{reason}");
    assert_eq!(probe(&follower.url, "/livez").await.0, 200);
}
