//! Every bad input gets a clear error naming what is wrong, and nothing is half-applied.

mod common;

use common::*;
use flotilla_client::Client;
use flotilla_testkit::cluster::LocalNode;
use serde_json::json;

const JSON: Option<&str> = Some("application/json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_400_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let n = start(dir.path(), "leader", None).await;
    let u = &n.url;
    let cases: Vec<(&str, Option<&str>, &str, &str, &str)> = vec![
        (
            "/v1/execute",
            JSON,
            "{\"statements\": [",
            "bad_request",
            "malformed JSON",
        ),
        (
            "/v1/execute",
            JSON,
            "{\"statements\": \"x\"}",
            "bad_request",
            "invalid type",
        ),
        (
            "/v1/execute",
            JSON,
            "{\"statements\": [{\"sql\": \"SELECT 1\", \"extra\": 1}]}",
            "bad_request",
            "unknown field `extra`",
        ),
        (
            "/v1/execute",
            JSON,
            "{}",
            "bad_request",
            "missing field `statements`",
        ),
        (
            "/v1/execute",
            JSON,
            "{\"statements\": []}",
            "bad_request",
            "is empty",
        ),
        (
            "/v1/execute",
            None,
            "{\"statements\": []}",
            "bad_content_type",
            "missing Content-Type",
        ),
        (
            "/v1/execute",
            Some("text/plain"),
            "{}",
            "bad_content_type",
            "text/plain",
        ),
        (
            "/v1/execute",
            JSON,
            "{\"statements\": [{\"sql\": \"SELECT ?\", \"params\": [[1]]}]}",
            "bad_request",
            "not a SQLite value",
        ),
        (
            "/v1/execute",
            JSON,
            "{\"statements\": [{\"sql\": \"SELECT ?\", \"params\": [99999999999999999999]}]}",
            "bad_request",
            "does not fit SQLite's 64-bit",
        ),
        (
            "/v1/execute",
            JSON,
            "{\"statements\": [{\"sql\": \"SELECT ?\", \"params\": [-9223372036854775809]}]}",
            "bad_request",
            "parameter 0: integer -9223372036854775809",
        ),
        (
            "/v1/query",
            JSON,
            "{\"sql\": \"SELECT ?\", \"params\": [18446744073709551616]}",
            "bad_request",
            "64-bit",
        ),
        (
            "/v1/query",
            JSON,
            "{\"sql\": 5}",
            "bad_request",
            "invalid type",
        ),
        (
            "/v1/query",
            JSON,
            "{\"sql\": \"SELECT 1\", \"min_position\": \"x\"}",
            "bad_request",
            "EPOCH/LSN",
        ),
        (
            "/v1/query",
            JSON,
            "{\"sql\": \"SELEC 1\"}",
            "sql_error",
            "syntax error",
        ),
        (
            "/v1/query",
            JSON,
            "{\"sql\": \"CREATE TABLE x(a)\"}",
            "not_read_only",
            "/v1/execute",
        ),
        (
            "/v1/query",
            JSON,
            "{\"sql\": \"SELECT ?1\"}",
            "sql_error",
            "1 parameters but 0",
        ),
    ];
    for (path, ct, body, code, needle) in cases {
        let (status, v) = raw(u, "POST", path, ct, body.as_bytes().to_vec()).await;
        assert_eq!(status, 400, "{path} {body}: {v}");
        assert_eq!(v["error"]["code"], code, "{path} {body}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{path} {body}: {msg:?} lacks {needle:?}"
        );
    }
    let (status, v) = raw(u, "GET", "/v1/nope", None, vec![]).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    // The WebSocket endpoints, asked without an upgrade, answer the API's JSON error too.
    for path in ["/v1/replication", "/v1/raft"] {
        let (status, v) = raw(u, "GET", path, None, vec![]).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("WebSocket endpoint"),
            "{path}: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("small.toml");
    std::fs::write(&cfg, "[api]\nmax-body-kib = 1\n").unwrap();
    let n = LocalNode::start(
        &exe(),
        dir.path(),
        "leader",
        None,
        &["--config", cfg.to_str().unwrap()],
    )
    .await
    .unwrap();
    let body = format!(
        "{{\"statements\": [{{\"sql\": \"SELECT '{}'\"}}]}}",
        "x".repeat(4096)
    );
    let (status, v) = raw(&n.url, "POST", "/v1/execute", JSON, body.into_bytes()).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "body_too_large");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("1024 bytes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_errors_roll_back_the_whole_transaction_and_refusals_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let n = start(dir.path(), "leader", None).await;
    let c = Client::new(&n.url);
    exec(
        &c,
        json!([{ "sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, v)" }]),
    )
    .await;
    let body = json!({ "statements": [
        { "sql": "INSERT INTO t VALUES (1, 'a')" },
        { "sql": "INSERT INTO missing VALUES (1)" },
    ]});
    let (status, v) = raw(
        &n.url,
        "POST",
        "/v1/execute",
        JSON,
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "sql_error");
    assert_eq!(v["error"]["statement"], 1);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no such table: missing"));
    assert_eq!(rows(&c, "SELECT count(*) FROM t").await, json!([[0]]));

    for (sql, needle) in [
        ("BEGIN", "transaction control"),
        ("SAVEPOINT s", "transaction control"),
        ("ATTACH 'other.db' AS o", "ATTACH"),
        ("PRAGMA journal_mode=DELETE", "journal_mode"),
        ("PRAGMA synchronous=OFF", "synchronous"),
        ("SELECT load_extension('x')", "extensions"),
        ("DELETE FROM _flotilla_meta", "internal"),
    ] {
        let body = json!({ "statements": [{ "sql": sql }] });
        let (status, v) = raw(
            &n.url,
            "POST",
            "/v1/execute",
            JSON,
            body.to_string().into_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{sql}: {v}");
        assert_eq!(v["error"]["code"], "statement_refused", "{sql}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{sql}: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_idempotency_and_read_your_writes() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let c = Client::new(&leader.url);
    exec(&c, json!([{ "sql": "CREATE TABLE v(a, b, c, d, e)" }])).await;
    let body = json!({
        "statements": [{ "sql": "INSERT INTO v VALUES (?1, ?2, ?3, ?4, ?5)",
                         "params": [42, 1.5, "text", null, { "base64": "AAEC/w==" }] }],
        "idempotency_key": "insert-once"
    });
    let first = c.post("/v1/execute", &body).await.unwrap();
    let again = c.post("/v1/execute", &body).await.unwrap();
    assert_eq!(first, again, "a retry returns the first answer");
    assert_eq!(first["results"][0]["rows_affected"], 1);
    let f = start(dir.path(), "f", Some(&leader.url)).await;
    let fc = Client::new(&f.url);
    let q = json!({ "sql": "SELECT * FROM v", "min_position": first["position"] });
    let got = fc.post("/v1/query", &q).await.unwrap();
    assert_eq!(
        got["rows"],
        json!([[42, 1.5, "text", null, { "base64": "AAEC/w==" }]]),
        "applied once"
    );
    assert_eq!(got["columns"], json!(["a", "b", "c", "d", "e"]));

    // A position the follower will not reach in time: 504.
    let q = json!({ "sql": "SELECT 1", "min_position": "1/999999", "timeout_ms": 200 });
    let (status, v) = raw(
        &f.url,
        "POST",
        "/v1/query",
        JSON,
        q.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 504);
    assert_eq!(v["error"]["code"], "position_not_reached");
    // On the leader, which was never at that position: refused at once.
    let (status, v) = raw(
        &leader.url,
        "POST",
        "/v1/query",
        JSON,
        q.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "position_in_future");
    assert_eq!(v["error"]["position"], first["position"]);

    // Writes to a follower: 421 naming the leader.
    let (status, v) = raw(
        &f.url,
        "POST",
        "/v1/execute",
        JSON,
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 421);
    assert_eq!(v["error"]["code"], "not_leader");
    assert_eq!(v["error"]["leader"], json!(leader.url));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_pointed_at_the_wrong_place_say_so_and_keep_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let other = start(dir.path(), "other-leader", None).await;
    let mut f = start(dir.path(), "f", Some(&leader.url)).await;
    let fc = Client::new(&f.url);
    wait_status(&fc, "streaming", |s| s["state"] == "streaming").await;

    // A follower of a follower.
    let ff = start(dir.path(), "ff", Some(&f.url)).await;
    let s = wait_status(&Client::new(&ff.url), "not_leader error", |s| {
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("not_leader"))
    })
    .await;
    assert!(
        s["error"].as_str().unwrap().contains(&leader.url),
        "names the real leader: {s}"
    );

    // A leader of another cluster.
    f.kill().await;
    let mut moved = LocalNode::start(&exe(), dir.path(), "f", Some(&other.url), &[])
        .await
        .unwrap();
    let s = wait_status(&Client::new(&moved.url), "wrong_cluster error", |s| {
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("wrong_cluster"))
    })
    .await;
    assert_eq!(s["position"].as_str().unwrap().split('/').count(), 2);
    moved.kill().await;

    // Nothing at all: connection refused, visible in status, retried with backoff.
    let nowhere = LocalNode::start(
        &exe(),
        dir.path(),
        "lonely",
        Some("http://127.0.0.1:9"),
        &[],
    )
    .await
    .unwrap();
    let s = wait_status(&Client::new(&nowhere.url), "unreachable error", |s| {
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach"))
    })
    .await;
    assert_eq!(s["state"], "waiting_to_retry");
    let (status, v) = raw(
        &nowhere.url,
        "POST",
        "/v1/query",
        JSON,
        b"{\"sql\": \"SELECT 1\"}".to_vec(),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (503, Some("bootstrapping"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_configuration_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(exe())
            .arg("serve")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let data = dir.path().join("d");
    let data = data.to_str().unwrap();
    let (ok, err) = run(&["--id", "bad id", "--data", data]);
    assert!(!ok && err.contains("invalid setting id"), "{err}");
    let (ok, err) = run(&["--id", "a", "--data", data, "--listen", "nowhere"]);
    assert!(!ok && err.contains("listen"), "{err}");
    let (ok, err) = run(&["--id", "a", "--data", data, "--follow", "ftp://x"]);
    assert!(!ok && err.contains("http://"), "{err}");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "id = \"a\"\ndatta = \"x\"\n").unwrap();
    let (ok, err) = run(&["--config", cfg.to_str().unwrap()]);
    assert!(!ok && err.contains("unknown field `datta`"), "{err}");
    // A data directory keeps its node id.
    let mut n = LocalNode::start(&exe(), dir.path(), "first", None, &[])
        .await
        .unwrap();
    n.kill().await;
    let (ok, err) = run(&[
        "--id",
        "second",
        "--data",
        dir.path().join("first").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!ok && err.contains("belongs to node \"first\""), "{err}");
}
