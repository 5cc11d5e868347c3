//! Test harness: real `flotilla serve` processes on OS-chosen loopback ports.
#![allow(dead_code)]

pub mod devices;

use flotilla_client::Client;
use flotilla_testkit::cluster::{page_digest, LocalNode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flotilla"))
}

/// Runs `flotilla ARGS` to its end: (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(exe())
        .args(args)
        .output()
        .expect("run flotilla");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `flotilla ARGS` expected to end by itself (a `serve` that must be refused): as
/// [`cli`], but one still running after `limit` is killed and reported as such, so that a
/// refusal that regressed fails the test instead of hanging it.
pub fn cli_bounded(args: &[&str], limit: Duration) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = std::process::Command::new(exe())
        .args(args)
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("run flotilla");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let mut err = read(&err_path);
    if status.is_none() {
        err.push_str(&format!("\n(still running after {limit:?}: killed)"));
    }
    (status.is_some_and(|s| s.success()), read(&out_path), err)
}

pub async fn start(root: &Path, id: &str, follow: Option<&str>) -> LocalNode {
    LocalNode::start(&exe(), root, id, follow, &[])
        .await
        .unwrap_or_else(|e| panic!("starting {id}: {e:#}"))
}

pub async fn exec(c: &Client, statements: Value) -> Value {
    c.post("/v1/execute", &json!({ "statements": statements }))
        .await
        .unwrap_or_else(|e| panic!("execute failed: {e:#}"))
}

/// Commits one statement; the position it committed at.
pub async fn commit_one(c: &Client, sql: &str) -> String {
    exec(c, json!([{ "sql": sql }])).await["position"]
        .as_str()
        .expect("a committed request has a position")
        .to_string()
}

pub async fn status(c: &Client) -> Value {
    c.get("/v1/status").await.expect("status")
}

pub async fn position(c: &Client) -> String {
    status(c).await["position"].as_str().unwrap().to_string()
}

/// Waits (bounded) until the node has applied `pos`.
pub async fn wait_for(c: &Client, pos: &str) {
    let body = json!({ "sql": "SELECT 1", "min_position": pos, "timeout_ms": 30_000 });
    c.post("/v1/query", &body)
        .await
        .unwrap_or_else(|e| panic!("did not reach {pos}: {e:#}"));
}

/// Polls `/v1/status` (bounded) until `pred` holds; returns the last status.
pub async fn wait_status(c: &Client, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        if let Ok(s) = c.get("/v1/status").await {
            if pred(&s) {
                return s;
            }
            last = s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}; last status: {last}");
}

pub async fn rows(c: &Client, sql: &str) -> Value {
    c.post("/v1/query", &json!({ "sql": sql }))
        .await
        .unwrap_or_else(|e| panic!("query failed: {e:#}"))["rows"]
        .clone()
}

/// Follower and leader hold the same data, page for page.
pub async fn assert_identical(leader: &LocalNode, follower: &LocalNode) {
    let lc = Client::new(&leader.url);
    let fc = Client::new(&follower.url);
    let pos = position(&lc).await;
    wait_for(&fc, &pos).await;
    let check = "SELECT name, sql FROM sqlite_schema ORDER BY name";
    assert_eq!(rows(&lc, check).await, rows(&fc, check).await);
    assert_eq!(
        page_digest(&leader.db_path()).unwrap(),
        page_digest(&follower.db_path()).unwrap(),
        "{} differs from the leader at {pos}",
        follower.id
    );
}

/// A raw request, for bad-input tests: (status, JSON body).
pub async fn raw(
    url: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method.parse().unwrap(), format!("{url}{path}"))
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, v)
}

/// The tests' one deterministic generator (ChaCha8, as in the simulator): tests replay exactly.
pub struct Rng(rand_chacha::ChaCha8Rng);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }
    pub fn next(&mut self) -> u64 {
        rand::RngCore::next_u64(&mut self.0)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        rand::Rng::random_range(&mut self.0, 0..n)
    }
}

/// Prints the node's log (for failures).
pub fn dump_log(node: &LocalNode) {
    if let Ok(text) = std::fs::read_to_string(node.dir.with_extension("log")) {
        eprintln!(
            "--- log of {} ---\n{}",
            node.id,
            text.lines()
                .rev()
                .take(80)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Polls pipeline `name`'s status (bounded: about 30 s) until `pred` holds; returns the last
/// status seen, for the caller to assert on.
pub async fn poll_pipeline(c: &Client, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        if let Ok(p) = c.get(&format!("/v1/pipelines/{name}")).await {
            if pred(&p) {
                return p;
            }
            last = p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

/// Waits (bounded) until pipeline `name` has delivered everything committed; its status then.
pub async fn pipeline_drained(c: &Client, name: &str) -> Value {
    let drained = |p: &Value| p["backlog_rows"] == json!(0) && p["state"] == "idle";
    let p = poll_pipeline(c, name, drained).await;
    assert!(
        drained(&p),
        "pipeline {name} did not drain; last status: {p}"
    );
    p
}

/// Whether the peer closes `ws` within 10 s (a close frame, an error or the end of the stream);
/// whatever else it sends meanwhile is read and dropped.
pub async fn ws_closed<S>(ws: &mut S) -> bool
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    for _ in 0..50 {
        match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
            _ => {}
        }
    }
    false
}
