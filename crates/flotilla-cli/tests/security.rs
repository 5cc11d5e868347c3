//! Nobody uninvited gets in: tokens and roles on every endpoint, followers that must present a
//! replicate token, a rogue follower's forged progress report, revocation on every node, TLS
//! end to end, and authentication on by default off loopback.

mod common;

use common::*;
use flotilla_client::{Client, Credentials};
use flotilla_testkit::cluster::LocalNode;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

async fn start_auth(root: &Path, id: &str, follow: Option<&str>, extra: &[&str]) -> LocalNode {
    let mut args = vec!["--auth"];
    args.extend_from_slice(extra);
    LocalNode::start(&exe(), root, id, follow, &args)
        .await
        .unwrap_or_else(|e| panic!("starting {id}: {e:#}"))
}

fn admin_token(node: &LocalNode) -> String {
    std::fs::read_to_string(node.dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

/// A leader with authentication on and a table `t(x)`: its admin client, a read token and a
/// replicate token.
async fn leader_with_tokens(root: &Path) -> (LocalNode, Client, String, String) {
    let leader = start_auth(root, "leader", None, &[]).await;
    let ac = Client::with_token(&leader.url, &admin_token(&leader));
    ac.post(
        "/v1/execute",
        &json!({"statements": [{"sql": "CREATE TABLE t(x)"}]}),
    )
    .await
    .unwrap();
    let read = make_token(&ac, "read").await;
    let replicate = make_token(&ac, "replicate").await;
    (leader, ac, read, replicate)
}

async fn make_token(admin: &Client, role: &str) -> String {
    let v = admin
        .post(
            "/v1/tokens",
            &json!({ "role": role, "name": format!("test {role}") }),
        )
        .await
        .unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// (status, body) of a JSON POST with a token.
async fn raw_with_token(url: &str, path: &str, body: &Value, token: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// (status, error code) of a request with an optional Authorization header value.
async fn call(
    url: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    auth: Option<&str>,
) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), format!("{url}{path}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_checks_the_token_and_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start_auth(dir.path(), "leader", None, &[]).await;
    let file = leader.dir.join("admin.token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The data directory (database, log, secrets) is its owner's alone.
    assert_eq!(
        std::fs::metadata(&leader.dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let admin = admin_token(&leader);
    let ac = Client::with_token(&leader.url, &admin);
    let read = make_token(&ac, "read").await;
    let write = make_token(&ac, "write").await;
    let replicate = make_token(&ac, "replicate").await;
    let revoked = make_token(&ac, "admin").await;
    let revoked_id = revoked.split('_').nth(1).unwrap().to_string();
    ac.delete(&format!("/v1/tokens/{revoked_id}"))
        .await
        .unwrap();
    let listed = ac.get("/v1/tokens").await.unwrap();
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 5, "{listed}");
    assert!(
        !listed.to_string().contains(&read),
        "a listing shows a secret"
    );

    let endpoints: Vec<(&str, &str, Option<Value>, &str)> = vec![
        (
            "POST",
            "/v1/execute",
            Some(json!({"statements": [{"sql": "SELECT 1"}]})),
            "write",
        ),
        (
            "POST",
            "/v1/query",
            Some(json!({"sql": "SELECT 1"})),
            "read",
        ),
        ("GET", "/v1/status", None, "read"),
        ("GET", "/metrics", None, "read"),
        ("GET", "/v1/changes?follow=false", None, "read"),
        ("GET", "/v1/snapshot", None, "replicate"),
        ("GET", "/v1/replication", None, "replicate"),
        ("DELETE", "/v1/followers/nobody", None, "admin"),
        ("GET", "/v1/tokens", None, "admin"),
        ("POST", "/v1/tokens", Some(json!({"role": "read"})), "admin"),
        ("DELETE", "/v1/tokens/000000000000", None, "admin"),
        ("GET", "/v1/pipelines", None, "read"),
        ("POST", "/v1/pipelines", Some(json!({})), "admin"),
        ("DELETE", "/v1/pipelines/nope", None, "admin"),
        ("POST", "/v1/pipelines/nope/pause", None, "admin"),
        ("GET", "/v1/no-such-endpoint", None, "read"),
    ];
    let bearer = |t: &str| format!("Bearer {t}");
    let allows = |role: &str, needed: &str| match role {
        "admin" => true,
        "write" => needed == "read" || needed == "write",
        other => other == needed,
    };
    let tokens = [
        ("read", &read),
        ("write", &write),
        ("admin", &admin),
        ("replicate", &replicate),
    ];
    for (method, path, body, needed) in &endpoints {
        for bad in [
            None,
            Some("garbage".to_string()),
            Some(bearer("flt_000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")),
            Some(bearer(&revoked)),
            Some(bearer(&format!("{}x", &read[..read.len() - 1]))),
        ] {
            let (status, code) =
                call(&leader.url, method, path, body.clone(), bad.as_deref()).await;
            assert_eq!(
                (status, code.as_str()),
                (401, "unauthorized"),
                "{method} {path} with {bad:?}"
            );
        }
        for (role, token) in tokens {
            let (status, code) = call(
                &leader.url,
                method,
                path,
                body.clone(),
                Some(&bearer(token)),
            )
            .await;
            if allows(role, needed) {
                assert!(
                    status != 401 && status != 403,
                    "{method} {path} as {role}: {status} {code}"
                );
            } else {
                assert_eq!(
                    (status, code.as_str()),
                    (403, "forbidden"),
                    "{method} {path} as {role}"
                );
            }
        }
    }
    // Writes go through with a write token, and the CLI takes the token from the environment.
    let out = std::process::Command::new(exe())
        .args(["sql", "--node", &leader.url, "CREATE TABLE t(x)"])
        .env("FLOTILLA_TOKEN", &write)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(exe())
        .args(["sql", "--node", &leader.url, "INSERT INTO t VALUES (1)"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("requires a token"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_must_present_a_replicate_token_and_tokens_work_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let (leader, ac, read, replicate) = leader_with_tokens(dir.path()).await;
    // Without a token, and with a token of another role: refused, saying why.
    let anonymous = start_auth(dir.path(), "anonymous", Some(&leader.url), &[]).await;
    let wrong = start_auth(
        dir.path(),
        "wrong",
        Some(&leader.url),
        &["--replication-token", &read],
    )
    .await;
    for (node, needle) in [
        (&anonymous, "requires a token"),
        (&wrong, "lacks the replicate role"),
    ] {
        let c = Client::with_token(&node.url, &read);
        let s = c.get("/v1/status").await;
        // A follower that never bootstrapped has no tokens yet either: it answers 401.
        assert!(s.is_err(), "{s:?}");
        let log = std::fs::read_to_string(node.dir.with_extension("log")).unwrap_or_default();
        let mut seen = log.contains(needle);
        for _ in 0..100 {
            if seen {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let log = std::fs::read_to_string(node.dir.with_extension("log")).unwrap_or_default();
            seen = log.contains(needle);
        }
        assert!(seen, "{} never said {needle:?}", node.id);
    }
    // With a replicate token: physical and logical followers replicate, and the leader's tokens
    // authenticate on them.
    let f1 = start_auth(
        dir.path(),
        "f1",
        Some(&leader.url),
        &["--replication-token", &replicate],
    )
    .await;
    let f2 = start_auth(
        dir.path(),
        "f2",
        Some(&leader.url),
        &[
            "--replication-token",
            &replicate,
            "--log",
            "logical",
            "--tables",
            "t",
        ],
    )
    .await;
    let pos = commit_one(&ac, "INSERT INTO t VALUES (7)").await;
    for f in [&f1, &f2] {
        let c = Client::with_token(&f.url, &read);
        served(&c, &pos).await;
        assert_eq!(rows(&c, "SELECT x FROM t").await, json!([[7]]), "{}", f.id);
        assert_eq!(call(&f.url, "GET", "/v1/status", None, None).await.0, 401);
    }
    // A token revoked on the leader stops working everywhere.
    let id = read.split('_').nth(1).unwrap().to_string();
    ac.delete(&format!("/v1/tokens/{id}")).await.unwrap();
    assert_eq!(
        call(
            &leader.url,
            "GET",
            "/v1/status",
            None,
            Some(&format!("Bearer {read}"))
        )
        .await
        .0,
        401
    );
    for f in [&f1, &f2] {
        let mut refused = false;
        for _ in 0..100 {
            if call(
                &f.url,
                "GET",
                "/v1/status",
                None,
                Some(&format!("Bearer {read}")),
            )
            .await
            .0 == 401
            {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(refused, "{} still takes a revoked token", f.id);
    }
}

/// A rogue client with the cluster id (public in `/v1/status`) received every record and then
/// reported `1/1000000000000`, which the leader saved and used to drop log it still needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_progress_report_is_refused_and_a_reader_cannot_replicate() {
    let dir = tempfile::tempdir().unwrap();
    let (leader, ac, read, replicate) = leader_with_tokens(dir.path()).await;
    // A real follower gives the rogue a state to claim.
    let mut f1 = start_auth(
        dir.path(),
        "f1",
        Some(&leader.url),
        &["--replication-token", &replicate],
    )
    .await;
    let pos = commit_one(&ac, "INSERT INTO t VALUES (1)").await;
    served(&Client::with_token(&f1.url, &read), &pos).await;
    f1.kill().await;
    let conn = rusqlite::Connection::open(f1.db_path()).unwrap();
    let meta = flotilla_store::read_meta(&conn).unwrap().unwrap();
    let ws_url = format!(
        "ws://{}/v1/replication",
        leader.url.trim_start_matches("http://")
    );
    let hello = flotilla_wire::FollowerMessage::Hello {
        cluster_id: Some(meta.cluster_id.clone()),
        follower_id: "rogue".into(),
        follower_url: String::new(),
        log_kind: flotilla_types::LogKind::Physical,
        position: meta.position,
        chain: meta.chain,
    };
    // A read token cannot even open the session.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        ws_url.as_str(),
    )
    .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {read}").parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!(
            "a read token opened a replication session: {:?}",
            other.map(|_| ())
        ),
    }
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        ws_url.as_str(),
    )
    .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {replicate}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::Binary(hello.encode().into()))
        .await
        .unwrap();
    let welcome = ws.next().await.unwrap().unwrap();
    let Message::Binary(b) = welcome else {
        panic!("{welcome:?}")
    };
    assert!(matches!(
        flotilla_wire::LeaderMessage::decode(&b).unwrap(),
        flotilla_wire::LeaderMessage::Welcome { .. }
    ));
    let forged = flotilla_types::Position::new(1, 1_000_000_000_000);
    let ack = flotilla_wire::FollowerMessage::Ack {
        received: forged,
        durable: forged,
        applied: forged,
        now_ms: 0,
    };
    ws.send(Message::Binary(ack.encode().into())).await.unwrap();
    // The leader ends the session, and its view of the rogue never moved.
    let closed = ws_closed(&mut ws).await;
    assert!(closed, "the leader kept a session that forged its progress");
    let s = ac.get("/v1/status").await.unwrap();
    let rogue = s["followers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "rogue")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        rogue["applied_position"],
        json!(meta.position.to_string()),
        "{s}"
    );
    assert!(!s.to_string().contains("1000000000000"), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_end_to_end_and_the_wrong_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let other = dir.path().join("other-ca");
    for out in [&certs, &other] {
        let o = std::process::Command::new(exe())
            .args(["cert", "init", "--out"])
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let p = |f: &str| certs.join(f).to_str().unwrap().to_string();
    let tls = [
        "--tls-cert".to_string(),
        p("node.pem"),
        "--tls-key".to_string(),
        p("node.key"),
        "--tls-ca".to_string(),
        p("ca.pem"),
    ];
    let tls_args: Vec<&str> = tls.iter().map(String::as_str).collect();
    let leader = start_auth(dir.path(), "leader", None, &tls_args).await;
    assert!(leader.url.starts_with("https://"), "{}", leader.url);
    let ca_pem = std::fs::read(certs.join("ca.pem")).unwrap();
    let creds = |token: &str| Credentials {
        token: Some(token.to_string()),
        ca_pem: Some(ca_pem.clone()),
    };
    let ac = Client::with(&leader.url, creds(&admin_token(&leader)));
    ac.post("/v1/execute", &json!({"statements": [{"sql": "CREATE TABLE t(x)"}, {"sql": "INSERT INTO t VALUES (42)"}]}))
        .await
        .unwrap();
    let replicate = ac
        .post("/v1/tokens", &json!({"role": "replicate"}))
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut args = tls_args.clone();
    args.extend_from_slice(&["--replication-token", &replicate]);
    let f1 = start_auth(dir.path(), "f1", Some(&leader.url), &args).await;
    let pos = position(&ac).await;
    served(&Client::with(&f1.url, creds(&admin_token(&leader))), &pos).await;
    assert_identical_with(&leader, &f1, &creds(&admin_token(&leader))).await;
    // The CLI over TLS, with the CA.
    let out = std::process::Command::new(exe())
        .args([
            "sql",
            "--node",
            &leader.url,
            "--tls-ca",
            &p("ca.pem"),
            "SELECT x FROM t",
        ])
        .env("FLOTILLA_TOKEN", admin_token(&leader))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("42"),
        "{out:?}"
    );
    // Another CA: the client refuses the node's certificate.
    let out = std::process::Command::new(exe())
        .args(["sql", "--node", &leader.url, "SELECT 1"])
        .arg("--tls-ca")
        .arg(other.join("ca.pem"))
        .env("FLOTILLA_TOKEN", admin_token(&leader))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot connect to") && err.contains("securely"),
        "{err}"
    );
    // A follower with the wrong CA never gets a byte.
    let wrong_ca = other.join("ca.pem");
    let mut args = tls_args.clone();
    args[5] = wrong_ca.to_str().unwrap();
    args.extend_from_slice(&["--replication-token", &replicate]);
    let f2 = start_auth(dir.path(), "f2", Some(&leader.url), &args).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !f2.db_path().exists(),
        "a follower that cannot verify the leader got its data"
    );
    // Plain HTTP to the TLS port gets nothing.
    let plain = leader.url.replace("https://", "http://");
    assert!(
        reqwest::get(format!("{plain}/v1/status")).await.is_err()
            || reqwest::get(format!("{plain}/v1/status"))
                .await
                .unwrap()
                .status()
                != 200
    );
}

/// Waits (bounded) until a follower, possibly still bootstrapping, serves position `pos`.
async fn served(c: &Client, pos: &str) {
    let body = json!({"sql": "SELECT 1", "min_position": pos, "timeout_ms": 500});
    let mut last = String::new();
    for _ in 0..60 {
        match c.post("/v1/query", &body).await {
            Ok(_) => return,
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{} never served {pos}: {last}", c.url());
}

async fn assert_identical_with(leader: &LocalNode, follower: &LocalNode, creds: &Credentials) {
    let lc = Client::with(&leader.url, creds.clone());
    let fc = Client::with(&follower.url, creds.clone());
    let q = json!({"sql": "SELECT * FROM t ORDER BY x"});
    assert_eq!(
        lc.post("/v1/query", &q).await.unwrap()["rows"],
        fc.post("/v1/query", &q).await.unwrap()["rows"]
    );
    assert_eq!(
        flotilla_testkit::cluster::page_digest(&leader.db_path()).unwrap(),
        flotilla_testkit::cluster::page_digest(&follower.db_path()).unwrap()
    );
}

/// A node listening beyond loopback requires tokens without being told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_is_on_by_default_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("n");
    let mut child = tokio::process::Command::new(exe())
        .args(["serve", "--id", "n", "--listen", "0.0.0.0:0", "--data"])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut url = String::new();
    for _ in 0..300 {
        if let Ok(u) = std::fs::read_to_string(data.join("http.addr")) {
            if !u.is_empty() && data.join("admin.token").exists() {
                url = u.replace("0.0.0.0", "127.0.0.1");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !url.is_empty(),
        "the node did not start with an admin token"
    );
    assert_eq!(
        call(&url, "GET", "/v1/status", None, None).await,
        (401, "unauthorized".into())
    );
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let (status, _) = call(
        &url,
        "GET",
        "/v1/status",
        None,
        Some(&format!("Bearer {}", admin.trim())),
    )
    .await;
    assert_eq!(status, 200);
    child.kill().await.unwrap();
}

/// Pipelines once POSTed to any URL given (an SSRF and port-scanning tool) and wrote a file
/// anywhere; their definitions showed passwords.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_deliver_only_where_allowed_and_their_secrets_stay_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start_auth(dir.path(), "leader", None, &[]).await;
    let target = start_auth(dir.path(), "target", None, &[]).await;
    let ac = Client::with_token(&leader.url, &admin_token(&leader));
    ac.post(
        "/v1/execute",
        &json!({"statements": [
        {"sql": "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT)"},
        {"sql": "INSERT INTO items VALUES (1, 'a')"}]}),
    )
    .await
    .unwrap();
    let add = |name: &str, target: &str| json!({"name": name, "source": "items", "target": target});
    for (bad, what) in [
        (
            "http://169.254.169.254/latest/meta-data",
            "a cloud metadata address",
        ),
        (
            "postgres://u:p@10.255.255.1:5432/x",
            "a private network host",
        ),
        ("file:/etc/cron.d/flotilla", "a system directory"),
        (
            &format!("file:{}/exports/../../escape.ndjson", leader.dir.display()),
            "a path escaping exports",
        ),
    ] {
        let err = ac
            .post("/v1/pipelines", &add("p", bad))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid_target") && err.contains("not allowed")
                || err.contains("without `..`"),
            "{what}: {err}"
        );
        assert!(!err.contains(":p@"), "{err}");
    }
    // Into <data>/exports/ and into another Flotilla (on this machine) by default; the target's
    // token, given as the URL's password, never shows.
    std::fs::create_dir_all(leader.dir.join("exports")).unwrap();
    let out = leader.dir.join("exports/items.ndjson");
    ac.post(
        "/v1/pipelines",
        &add("to-file", &format!("file:{}", out.display())),
    )
    .await
    .unwrap();
    let secret = admin_token(&target);
    Client::with_token(&target.url, &secret)
        .post(
            "/v1/execute",
            &json!({"statements": [
            {"sql": "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT)"}]}),
        )
        .await
        .unwrap();
    let to_flotilla = target
        .url
        .replacen("http://", &format!("http://token:{secret}@"), 1);
    ac.post("/v1/pipelines", &add("to-flotilla", &to_flotilla))
        .await
        .unwrap();
    let tc = Client::with_token(&target.url, &secret);
    let mut delivered = false;
    for _ in 0..100 {
        if let Ok(v) = tc
            .post("/v1/query", &json!({"sql": "SELECT name FROM items"}))
            .await
        {
            if v["rows"] == json!([["a"]]) {
                delivered = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        delivered,
        "the pipeline into the other Flotilla delivered nothing"
    );
    let secret_part = secret.splitn(3, '_').nth(2).unwrap();
    // Not through SQL either, however it is spelled, nor through a view.
    let reader = make_token(&ac, "read").await;
    let writer = make_token(&ac, "write").await;
    Client::with_token(&leader.url, &writer)
        .post(
            "/v1/execute",
            &json!({"statements": [
            {"sql": "CREATE VIEW specs AS SELECT spec FROM _flotilla_pipelines"}]}),
        )
        .await
        .unwrap_or_default();
    Client::with_token(&leader.url, &writer)
        .post(
            "/v1/execute",
            &json!({"statements": [
            {"sql": "CREATE VIEW pages AS SELECT data FROM sqlite_dbpage"}]}),
        )
        .await
        .unwrap_or_default();
    for sql in [
        "SELECT spec FROM _flotilla_pipelines",
        "SELECT * FROM main._FLOTILLA_PIPELINES",
        "SELECT (SELECT group_concat(spec) FROM _flotilla_pipelines)",
        "WITH p AS (SELECT * FROM _flotilla_pipelines) SELECT * FROM p",
        "SELECT hash FROM _flotilla_tokens",
        "SELECT * FROM specs",
        // Nor as raw pages (found by an outside probe).
        "SELECT data FROM sqlite_dbpage",
        "SELECT hex(data) FROM main.SQLITE_DBPAGE WHERE pgno > 1",
        "SELECT data FROM sqlite_dbpage('main')",
        "SELECT * FROM pages",
        // Nor in the newest commit's row changes, kept with it (found by an outside probe).
        "SELECT rows FROM _flotilla_meta",
        "SELECT * FROM main._FLOTILLA_META",
        "SELECT hex(\"ROWS\") FROM _flotilla_meta",
    ] {
        let (status, body) =
            raw_with_token(&leader.url, "/v1/query", &json!({ "sql": sql }), &reader).await;
        assert!(
            status == 400 && !body.contains(secret_part),
            "{sql}: {status} {body}"
        );
    }
    for path in [
        "/v1/pipelines",
        "/v1/pipelines/to-flotilla",
        "/v1/status",
        "/metrics",
    ] {
        let text = ac
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.contains(secret_part), "{path} shows a secret: {text}");
    }
}

/// Revoking a token once left an open replication session (and a followed change feed)
/// running; a second process with a replicate token took over a streaming follower's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_open_sessions_and_a_follower_id_has_one_session() {
    let dir = tempfile::tempdir().unwrap();
    let (leader, ac, read, replicate) = leader_with_tokens(dir.path()).await;
    let f1 = start_auth(
        dir.path(),
        "f1",
        Some(&leader.url),
        &["--replication-token", &replicate],
    )
    .await;
    let fc = Client::with_token(&f1.url, &read);
    let pos = commit_one(&ac, "INSERT INTO t VALUES (1)").await;
    served(&fc, &pos).await;
    // Another process claiming to be f1 is refused while f1 streams.
    let impostor_root = dir.path().join("impostor");
    std::fs::create_dir_all(&impostor_root).unwrap();
    let impostor = start_auth(
        &impostor_root,
        "f1",
        Some(&leader.url),
        &["--replication-token", &replicate],
    )
    .await;
    let ic = Client::with_token(&impostor.url, &admin_token(&leader));
    let mut refused = false;
    for _ in 0..150 {
        if let Ok(s) = ic.get("/v1/status").await {
            if s["error"]
                .as_str()
                .is_some_and(|e| e.contains("another session of follower f1 is streaming"))
            {
                refused = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the second f1 was not refused");
    let s = ac.get("/v1/status").await.unwrap();
    assert_eq!(s["followers"][0]["state"], "streaming", "{s}");
    drop(impostor);
    // A followed change feed with the read token.
    let mut feed = reqwest::Client::new()
        .get(format!("{}/v1/changes?follow=true", leader.url))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    // Revoke both tokens: the session and the feed end, later writes never reach f1.
    for t in [&replicate, &read] {
        let id = t.split('_').nth(1).unwrap().to_string();
        ac.delete(&format!("/v1/tokens/{id}")).await.unwrap();
    }
    // An unknown token is a 404 with its own code (typed through the writer, not a message).
    let unknown = ac
        .delete("/v1/tokens/000000000000")
        .await
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("no_such_token"), "{unknown}");
    assert!(unknown.contains("404"), "{unknown}");
    let mut feed_text = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(chunk)) = feed.chunk().await {
            feed_text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the feed went on after its token was revoked"
    );
    assert!(
        feed_text.contains("the feed ends") && feed_text.contains("revoked"),
        "{feed_text}"
    );
    let later = commit_one(&ac, "INSERT INTO t VALUES (2)").await;
    let admin_on_f1 = Client::with_token(&f1.url, &admin_token(&leader));
    let mut told = false;
    for _ in 0..100 {
        let s = admin_on_f1.get("/v1/status").await.unwrap();
        if s["error"]
            .as_str()
            .is_some_and(|e| e.contains("revoked") || e.contains("requires a token"))
        {
            told = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(told, "f1 was not told its token is revoked");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = admin_on_f1
        .post("/v1/query", &json!({"sql": "SELECT count(*) FROM t"}))
        .await
        .unwrap();
    assert_eq!(
        rows["rows"],
        json!([[1]]),
        "f1 received {later} after its token was revoked"
    );
}

/// A pipeline into its own cluster captured its own deliveries for ever, and a target's
/// redirect was followed past the allow-list (found by an outside probe): both are refused,
/// with the reason in the pipeline's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_refuse_their_own_cluster_and_redirects() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start_auth(dir.path(), "leader", None, &[]).await;
    let admin = admin_token(&leader);
    let ac = Client::with_token(&leader.url, &admin);
    ac.post(
        "/v1/execute",
        &json!({"statements": [
        {"sql": "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT)"},
        {"sql": "INSERT INTO items VALUES (1, 'a')"}]}),
    )
    .await
    .unwrap();
    // A server on loopback (allowed) that redirects every request elsewhere.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirecting = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for _ in 0..1000 {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://169.254.169.254/x\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let add = |name: &str, target: &str| json!({"name": name, "source": "items", "target": target});
    let own = leader
        .url
        .replacen("http://", &format!("http://token:{admin}@"), 1);
    for (name, target, needle) in [
        ("to-self", own.as_str(), "is this cluster"),
        ("to-redirect", redirecting.as_str(), "redirect"),
    ] {
        // Refused when added (the target is tried then), or later in the pipeline's status.
        if let Err(e) = ac.post("/v1/pipelines", &add(name, target)).await {
            let e = e.to_string();
            assert!(e.contains(needle), "{name}: {e}");
            assert!(!e.contains(&admin), "{name}: {e}");
            continue;
        }
        let mut last = Value::Null;
        for _ in 0..100 {
            last = ac.get(&format!("/v1/pipelines/{name}")).await.unwrap();
            if last["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(needle))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            last["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(needle)),
            "{name}: {last}"
        );
        assert_eq!(last["delivered_rows"], 0, "{name}: {last}");
    }
    // The pipeline into its own cluster wrote nothing there.
    let tables = ac
        .post(
            "/v1/query",
            &json!({"sql": "SELECT count(*) FROM sqlite_schema WHERE name = 'flotilla_pipeline_cursors'"}),
        )
        .await
        .unwrap();
    assert_eq!(tables["rows"], json!([[0]]));
    server.abort();
}

#[tokio::test]
async fn a_revoked_token_ends_the_document_connections_it_opened() {
    use flotilla_testkit::yjs_client::YjsClient;
    let dir = tempfile::tempdir().unwrap();
    let (leader, ac, read, _) = leader_with_tokens(dir.path()).await;
    ac.post(
        "/v1/execute",
        &json!({"statements": [
            {"sql": "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)"},
            {"sql": "INSERT INTO notes VALUES (1, 'hi')"},
        ]}),
    )
    .await
    .unwrap();
    ac.post(
        "/v1/collab/columns",
        &json!({ "table": "notes", "column": "body" }),
    )
    .await
    .unwrap();
    let write = make_token(&ac, "write").await;
    let ws = |t: &str| {
        format!(
            "{}/v1/collab/notes/1/body?token={t}",
            leader.url.replace("http://", "ws://")
        )
    };
    let mut editor = YjsClient::connect(&ws(&write)).await.unwrap();
    let mut viewer = YjsClient::connect(&ws(&read)).await.unwrap();
    let wait = Duration::from_secs(20);
    editor.wait_text(wait, |t| t == "hi").await.unwrap();
    editor.insert(2, "!");
    viewer.wait_text(wait, |t| t == "hi!").await.unwrap();
    // Revoking the editor's token ends its connection (with the reason); the viewer's token
    // still holds.
    let id = write.split('_').nth(1).unwrap().to_string();
    ac.delete(&format!("/v1/tokens/{id}")).await.unwrap();
    let closed = editor
        .wait_closed(wait)
        .await
        .expect("the editor stays connected");
    assert_eq!(closed.code, Some(1008), "{closed:?}");
    assert!(closed.reason.contains("revoked"), "{closed:?}");
    assert!(viewer.closed().is_none(), "{:?}", viewer.closed());
    // And the viewer's, in turn.
    let id = read.split('_').nth(1).unwrap().to_string();
    ac.delete(&format!("/v1/tokens/{id}")).await.unwrap();
    let closed = viewer
        .wait_closed(wait)
        .await
        .expect("the viewer stays connected");
    assert!(closed.reason.contains("revoked"), "{closed:?}");
}
