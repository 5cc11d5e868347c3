//! Findings of the adversarial probe, end to end on real processes: each was a way to lose
//! acknowledged writes, to take a node down for good, or to starve it.

mod common;

use common::*;
use flotilla_client::Client;
use flotilla_testkit::cluster::LocalNode;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

const JSON: Option<&str> = Some("application/json");

async fn post(url: &str, path: &str, body: Value) -> (u16, Value) {
    raw(url, "POST", path, JSON, body.to_string().into_bytes()).await
}

/// A node with the given `[limits]` (and other sections) from a config file.
async fn start_with(root: &Path, id: &str, follow: Option<&str>, config: &str) -> LocalNode {
    let path = root.join(format!("{id}.toml"));
    std::fs::write(&path, config).unwrap();
    LocalNode::start(
        &exe(),
        root,
        id,
        follow,
        &["--config", path.to_str().unwrap()],
    )
    .await
    .unwrap_or_else(|e| panic!("starting {id}: {e:#}"))
}

/// `CREATE TABLE temp.notes` once shadowed the real table on the writer connection: later
/// inserts answered 200, were never replicated, vanished at restart, and their idempotency keys
/// still answered "committed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temp_table_cannot_shadow_a_replicated_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = start(dir.path(), "leader", None).await;
    let follower = start(dir.path(), "f1", Some(&leader.url)).await;
    let lc = Client::new(&leader.url);
    exec(
        &lc,
        json!([{"sql": "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)"}]),
    )
    .await;
    for sql in [
        "CREATE TABLE temp.notes(id INTEGER PRIMARY KEY, body TEXT)",
        "CREATE TABLE \"temp\".notes(id INTEGER PRIMARY KEY, body TEXT)",
        "CREATE VIEW temp.v AS SELECT 1",
        "CREATE TRIGGER temp.t AFTER INSERT ON main.notes BEGIN DELETE FROM main.notes; END",
    ] {
        let (status, v) = post(
            &leader.url,
            "/v1/execute",
            json!({"statements": [{"sql": sql}]}),
        )
        .await;
        assert_eq!(status, 400, "{sql}: {v}");
        assert_eq!(v["error"]["code"], "statement_refused", "{sql}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("schema"),
            "{v}"
        );
    }
    let body = json!({
        "statements": [{"sql": "INSERT INTO notes(body) VALUES ('kept')"}],
        "idempotency_key": "k1",
    });
    let (status, v) = post(&leader.url, "/v1/execute", body.clone()).await;
    assert_eq!(status, 200, "{v}");
    let pos = v["position"].as_str().unwrap().to_string();
    let fc = Client::new(&follower.url);
    wait_for(&fc, &pos).await;
    assert_eq!(rows(&fc, "SELECT body FROM notes").await, json!([["kept"]]));
    leader.restart().await.unwrap();
    assert_eq!(rows(&lc, "SELECT body FROM notes").await, json!([["kept"]]));
    // The key answers with the same position, and the row is there to back it.
    let (status, again) = post(&leader.url, "/v1/execute", body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["position"], v["position"]);
}

/// `zeroblob(600000000)` made a 1.2 GB record over the log's 1 GiB limit: the node stopped and
/// never started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_too_large_for_the_log_is_refused_and_the_leader_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = start_with(
        dir.path(),
        "leader",
        None,
        "[limits]\nmax-transaction-mib = 16\n",
    )
    .await;
    let follower = start(dir.path(), "f1", Some(&leader.url)).await;
    let lc = Client::new(&leader.url);
    exec(
        &lc,
        json!([{"sql": "CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB)"}]),
    )
    .await;
    for sql in [
        "INSERT INTO blobs(b) VALUES (zeroblob(600000000))",
        "INSERT INTO blobs(b) SELECT zeroblob(1000000) FROM \
         (WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 40) SELECT i FROM s)",
    ] {
        let (status, v) = post(
            &leader.url,
            "/v1/execute",
            json!({"statements": [{"sql": sql}], "idempotency_key": sql}),
        )
        .await;
        assert_eq!(status, 413, "{sql}: {v}");
        assert_eq!(v["error"]["code"], "transaction_too_large", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("16 MiB") && msg.contains("max-transaction-mib"), "{msg}");
    }
    assert_eq!(status(&lc).await["state"], "leading");
    let v = exec(
        &lc,
        json!([{"sql": "INSERT INTO blobs(b) VALUES (zeroblob(1000))"}]),
    )
    .await;
    let pos = v["position"].as_str().unwrap().to_string();
    leader.restart().await.unwrap();
    assert_eq!(rows(&lc, "SELECT count(*) FROM blobs").await, json!([[1]]));
    wait_for(&Client::new(&follower.url), &pos).await;
    assert_identical(&leader, &follower).await;
}

/// A never-ending statement held the single writer forever while status said `leading`; four
/// never-ending reads or four stalled snapshot downloads made every query answer 504 `busy`;
/// SIGTERM then did not stop the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_statements_are_cancelled_and_stalled_downloads_starve_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = start_with(
        dir.path(),
        "leader",
        None,
        "[limits]\nwrite-timeout-ms = 1000\nquery-timeout-ms = 1000\n\
         snapshot-stall-timeout-ms = 1500\n",
    )
    .await;
    let lc = Client::new(&leader.url);
    exec(&lc, json!([{"sql": "CREATE TABLE t(x)"}])).await;
    const ENDLESS: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                           SELECT count(*) FROM c";
    // A write that never ends is cancelled at the node's limit; the writer goes on.
    let started = Instant::now();
    let (status_code, v) = post(
        &leader.url,
        "/v1/execute",
        json!({"statements": [{"sql": format!("INSERT INTO t {ENDLESS}")}]}),
    )
    .await;
    assert_eq!(status_code, 400, "{v}");
    assert_eq!(v["error"]["code"], "statement_timeout", "{v}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // A request may ask for less.
    let (_, v) = post(
        &leader.url,
        "/v1/execute",
        json!({"statements": [{"sql": format!("INSERT INTO t {ENDLESS}")}], "timeout_ms": 50}),
    )
    .await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("50 ms"),
        "{v}"
    );
    exec(&lc, json!([{"sql": "INSERT INTO t VALUES (1)"}])).await;
    // Eight never-ending reads at once: each is cancelled, and queries are served meanwhile.
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let url = leader.url.clone();
            tokio::spawn(async move { post(&url, "/v1/query", json!({"sql": ENDLESS})).await })
        })
        .collect();
    for r in readers {
        let (code, v) = r.await.unwrap();
        assert_eq!(code, 400, "{v}");
        assert_eq!(v["error"]["code"], "statement_timeout", "{v}");
    }
    assert_eq!(rows(&lc, "SELECT count(*) FROM t").await, json!([[1]]));
    // Snapshot downloads whose clients read nothing: at most two run, queries never wait
    // for them, and they end after the stall timeout.
    for _ in 0..24 {
        exec(
            &lc,
            json!([{"sql": "INSERT INTO t VALUES (randomblob(1000000))"}]),
        )
        .await;
    }
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let stream = tokio::net::TcpStream::connect(leader.url.trim_start_matches("http://"))
            .await
            .unwrap();
        let req = "GET /v1/snapshot HTTP/1.1\r\nHost: x\r\n\r\n";
        stream.writable().await.unwrap();
        stream.try_write(req.as_bytes()).unwrap();
        stalled.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, v) = raw(&leader.url, "GET", "/v1/snapshot", None, vec![]).await;
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["error"]["code"], "busy", "{v}");
    let started = Instant::now();
    assert_eq!(rows(&lc, "SELECT count(*) FROM t").await, json!([[25]]));
    assert!(started.elapsed() < Duration::from_secs(2));
    // After the stall timeout the stalled streams are gone: a new download is served.
    let mut served = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let resp = reqwest::get(format!("{}/v1/snapshot", leader.url))
            .await
            .unwrap();
        if resp.status() == 200 {
            assert!(resp.bytes().await.unwrap().len() > 24_000_000);
            served = true;
            break;
        }
    }
    assert!(served, "stalled snapshot streams were never ended");
    drop(stalled);
    leader.kill().await;
    // SIGTERM stops a node promptly even while a never-ending read runs.
    let mut patient = start_with(
        dir.path(),
        "patient",
        None,
        "[limits]\nquery-timeout-ms = 600000\n",
    )
    .await;
    let url = patient.url.clone();
    let reading = tokio::spawn(async move {
        post(
            &url,
            "/v1/query",
            json!({"sql": ENDLESS, "timeout_ms": 600_000}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = patient.terminate(Duration::from_secs(30)).await;
    let took = took.expect("the node did not stop within 30 s of SIGTERM");
    assert!(took < Duration::from_secs(8), "stopping took {took:?}");
    reading.abort();
}

/// `flotilla serve` with the given data directory, expected to fail at start: its stderr.
fn serve_fails(id: &str, data: &Path, extra: &[&str]) -> String {
    let out = std::process::Command::new(exe())
        .args(["serve", "--id", id, "--data"])
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the node started");
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn flotilla(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(exe())
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Two processes on one data directory both accepted writes and handed out the same
/// positions; a copy of a follower's directory started as a leader was followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_per_directory_and_followers_keep_to_their_leader() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let err = serve_fails("leader", &leader.dir, &[]);
    assert!(
        err.contains("in use by another process") && err.contains("node leader"),
        "{err}"
    );
    let err = serve_fails("leader", &leader.dir, &["--follow", &leader.url]);
    assert!(err.contains("in use by another process"), "{err}");
    // The log cannot be repaired under a running node either.
    let (ok, text) = flotilla(&[
        "log",
        "repair",
        "--yes",
        "--data",
        leader.dir.to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("in use by another process"), "{text}");

    let lc = Client::new(&leader.url);
    exec(
        &lc,
        json!([{"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"}]),
    )
    .await;
    let mut f1 = start(dir.path(), "f1", Some(&leader.url)).await;
    let pos = commit_one(&lc, "INSERT INTO t(v) VALUES ('from the leader')").await;
    wait_for(&Client::new(&f1.url), &pos).await;
    // A copy of f1's directory, started as a leader: same cluster, same history so far.
    f1.kill().await;
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(&f1.dir)
        .arg(elsewhere.join("f1"))
        .status()
        .unwrap();
    assert!(status.success());
    let impostor = LocalNode::start(&exe(), &elsewhere, "f1", None, &[]).await;
    let impostor = impostor.unwrap_or_else(|e| panic!("{e:#}"));
    let ic = Client::new(&impostor.url);
    exec(&ic, json!([{"sql": "INSERT INTO t(v) VALUES ('forked')"}])).await;
    // f1, pointed at it, refuses it and keeps the leader's data.
    let f1_again = LocalNode::start(&exe(), dir.path(), "f1", Some(&impostor.url), &[]).await;
    let f1_again = f1_again.unwrap_or_else(|e| panic!("{e:#}"));
    let fc = Client::new(&f1_again.url);
    let s = wait_status(&fc, "the impostor to be refused", |s| {
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("another leader incarnation"))
    })
    .await;
    assert_ne!(s["state"], "streaming", "{s}");
    assert_eq!(
        rows(&fc, "SELECT v FROM t ORDER BY id").await,
        json!([["from the leader"]])
    );
    // A follower from an empty directory follows it, as the error says.
    let fresh = start(dir.path(), "fresh", Some(&impostor.url)).await;
    let p = position(&ic).await;
    wait_for(&Client::new(&fresh.url), &p).await;
    assert_eq!(
        rows(&Client::new(&fresh.url), "SELECT v FROM t ORDER BY id").await,
        json!([["from the leader"], ["forked"]])
    );
}

/// A removed follower that was still connected kept streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_connected_follower_ends_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let lc = Client::new(&leader.url);
    exec(&lc, json!([{"sql": "CREATE TABLE t(x)"}])).await;
    let f1 = start(dir.path(), "f1", Some(&leader.url)).await;
    let fc = Client::new(&f1.url);
    wait_status(&lc, "f1 to stream", |s| {
        s["followers"][0]["state"] == "streaming"
    })
    .await;
    lc.delete("/v1/followers/f1").await.unwrap();
    let s = wait_status(&fc, "f1 to be told", |s| s["state"] == "removed").await;
    assert!(s["error"].as_str().unwrap().contains("removed"), "{s}");
    let pos = commit_one(&lc, "INSERT INTO t VALUES (1)").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = status(&lc).await;
    assert_eq!(s["followers"], json!([]), "{s}");
    assert_eq!(rows(&fc, "SELECT count(*) FROM t").await, json!([[0]]));
    assert_ne!(position(&fc).await, pos);
}

/// One byte flipped in the middle of the active segment: the records after it were cut as a
/// "torn tail" with only a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_stops_the_node_until_an_operator_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut leader = start(dir.path(), "leader", None).await;
    let lc = Client::new(&leader.url);
    exec(
        &lc,
        json!([{"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"}]),
    )
    .await;
    for i in 0..200 {
        exec(
            &lc,
            json!([{"sql": "INSERT INTO t(v) VALUES (?)", "params": [format!("row {i}")]}]),
        )
        .await;
    }
    leader.kill().await;
    let log_dir = leader.dir.join("log");
    let segment = std::fs::read_dir(&log_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();
    let data = leader.dir.to_str().unwrap().to_string();
    let err = serve_fails("leader", &leader.dir, &[]);
    assert!(
        err.contains("corruption")
            && err.contains("flotilla log repair")
            && err.contains("damaged at byte"),
        "{err}"
    );
    // Nothing was cut by the failed start.
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);
    let (ok, text) = flotilla(&["log", "check", "--data", &data]);
    assert!(!ok && text.contains("This is corruption"), "{text}");
    let (ok, text) = flotilla(&["log", "repair", "--data", &data]);
    assert!(ok && text.contains("--yes"), "{text}");
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "repair without --yes changed the log"
    );
    let (ok, text) = flotilla(&["log", "repair", "--yes", "--data", &data]);
    assert!(ok && text.contains("Cut the log after lsn"), "{text}");
    let (ok, text) = flotilla(&["log", "check", "--data", &data]);
    assert!(ok && text.contains("intact"), "{text}");
    // The database kept every commit; a new follower bootstraps and matches.
    leader.restart().await.unwrap();
    assert_eq!(rows(&lc, "SELECT count(*) FROM t").await, json!([[200]]));
    let f1 = start(dir.path(), "f1", Some(&leader.url)).await;
    exec(&lc, json!([{"sql": "INSERT INTO t(v) VALUES ('after')"}])).await;
    assert_identical(&leader, &f1).await;
}

/// Query results were bounded in rows only: 40 values of 25 MB took a leader from 20 MB to
/// 3.9 GB of memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_results_are_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start_with(
        dir.path(),
        "leader",
        None,
        "[limits]\nmax-result-mib = 8\nmax-transaction-mib = 16\n",
    )
    .await;
    for sql in [
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 40) \
         SELECT zeroblob(1000000) FROM c",
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 200000) \
         SELECT printf('%.100c', 'x') FROM c",
    ] {
        let (status, v) = post(&leader.url, "/v1/query", json!({ "sql": sql })).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["code"], "result_too_large", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("8 MiB"),
            "{v}"
        );
    }
    // One value larger than anything the node keeps is refused as SQLite makes it.
    let (status, v) = post(
        &leader.url,
        "/v1/query",
        json!({ "sql": "SELECT length(zeroblob(600000000) || x'00')" }),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("too big"),
        "{v}"
    );
    let (status, _) = post(&leader.url, "/v1/query", json!({ "sql": "SELECT 1" })).await;
    assert_eq!(status, 200);
}

/// A copy of a follower's directory started as a leader ran the pipelines it had copied: its
/// own changes reached a target the real leader delivers to, and the real leader's next changes
/// were skipped (acknowledged rows missing from the target, no error anywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_leader_cannot_deliver_into_the_real_leaders_targets() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let config = format!(
        "[pipeline-targets]\nallow = [\"file:{}\"]\n",
        shared.display()
    );
    let leader = start_with(dir.path(), "leader", None, &config).await;
    let lc = Client::new(&leader.url);
    exec(
        &lc,
        json!([{"sql": "CREATE TABLE orders(id INTEGER PRIMARY KEY, total REAL)"}]),
    )
    .await;
    let out = shared.join("orders.ndjson");
    lc.post(
        "/v1/pipelines",
        &json!({"name": "p1", "source": "orders", "target": format!("file:{}", out.display())}),
    )
    .await
    .unwrap();
    let f1 = start(dir.path(), "f1", Some(&leader.url)).await;
    let pos = commit_one(&lc, "INSERT INTO orders VALUES (1, 10)").await;
    wait_for(&Client::new(&f1.url), &pos).await;
    pipeline_drained(&lc, "p1").await;
    // The copy, started as a leader with the same allow-list.
    drop(f1);
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(dir.path().join("f1"))
        .arg(elsewhere.join("f1"))
        .status()
        .unwrap();
    assert!(ok.success());
    let copy = start_with(&elsewhere, "f1", None, &config).await;
    let cc = Client::new(&copy.url);
    exec(
        &cc,
        json!([{"sql": "INSERT INTO orders VALUES (50, 5000)"}]),
    )
    .await;
    let refused = poll_pipeline(&cc, "p1", |p| {
        p["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("leader incarnation"))
    })
    .await;
    assert!(
        refused["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("leader incarnation")),
        "the copy delivered: {refused}"
    );
    // The real leader goes on delivering every change it acknowledges.
    for id in [4, 5, 6] {
        exec(
            &lc,
            json!([{"sql": "INSERT INTO orders VALUES (?, 1)", "params": [id]}]),
        )
        .await;
    }
    pipeline_drained(&lc, "p1").await;
    let ids: Vec<i64> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["row"]["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, vec![1, 4, 5, 6]);
}

/// Found by the outside probe: a peer opening the replication endpoint could send one 1 GiB
/// frame before its hello, and the leader buffered it (two such connections took it past
/// 4 GB). A follower's messages are small; a larger frame ends the connection before its
/// payload is buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_from_a_peer_is_refused_before_it_is_buffered() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let pid = leader.pid().unwrap();
    let peak_before = flotilla_testkit::cluster::proc_mib(pid, "VmHWM:").unwrap();
    let ws_url = format!(
        "ws://{}/v1/replication",
        leader.url.trim_start_matches("http://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .unwrap();
    // Sent as it is written: the leader closes before all of it arrived.
    let big = vec![0u8; 256 << 20];
    let _ = ws.send(Message::Binary(big.into())).await;
    let closed = ws_closed(&mut ws).await;
    assert!(
        closed,
        "the leader kept a connection that sent an oversized frame"
    );
    let grew = flotilla_testkit::cluster::proc_mib(pid, "VmHWM:").unwrap() - peak_before;
    assert!(
        grew < 64.0,
        "the leader's peak memory grew {grew:.0} MiB for a refused frame"
    );
    // The leader goes on serving.
    let s = status(&Client::new(&leader.url)).await;
    assert_eq!(s["role"], "leader");
}
