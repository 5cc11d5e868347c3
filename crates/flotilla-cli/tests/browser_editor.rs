//! The collaborative editor in real browsers: the page the node serves at
//! /edit/TABLE/KEY/COLUMN (CodeMirror 6 bound to the document by y-codemirror.next over a
//! stock y-websocket provider, built from web/collab), Debian's Chromium driven by
//! playwright-core (web/collab/test/editor.test.mjs), and a stock Yjs client from npm in Node.
//! Two pages type at once and converge, one goes offline and merges when back, a reader's page
//! follows read-only, and a page on a follower shows the text live. This test starts a real `flotilla serve --auth`, installs what the
//! browser side needs when missing (Chromium, Node.js, the npm packages), runs the script and
//! checks the row's text in SQL against what the clients ended with.

mod common;

use common::devices::{assert_assets_built, blocking};
use common::*;
use flotilla_client::Client;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

fn web_collab_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web/collab")
}

async fn make_token(admin: &Client, role: &str) -> String {
    admin
        .post(
            "/v1/tokens",
            &json!({ "role": role, "name": format!("editor test {role}") }),
        )
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_type_at_once_go_offline_and_converge_with_a_stock_yjs_client() {
    let (chromium, node) = blocking(|| {
        let chromium = flotilla_testkit::browser::chromium().expect("Chromium");
        let node = flotilla_testkit::browser::node().expect("Node.js");
        flotilla_testkit::browser::npm_ci(&web_collab_dir(), "playwright-core/package.json")
            .expect("the npm packages of web/collab");
        (chromium, node)
    });
    assert_assets_built(&node, "collab", "edit", &["index.html", "app.js"]);

    let root = tempfile::tempdir().unwrap();
    let leader = flotilla_testkit::cluster::LocalNode::start(
        &exe(),
        root.path(),
        "leader",
        None,
        &["--auth"],
    )
    .await
    .unwrap();
    let admin_token = std::fs::read_to_string(leader.dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let admin = Client::with_token(&leader.url, &admin_token);
    exec(
        &admin,
        json!([
            { "sql": "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)" },
            { "sql": "INSERT INTO notes VALUES (1, 'hello')" }
        ]),
    )
    .await;
    admin
        .post(
            "/v1/collab/columns",
            &json!({ "table": "notes", "column": "body" }),
        )
        .await
        .unwrap();
    let write = make_token(&admin, "write").await;
    let read = make_token(&admin, "read").await;
    let replicate = make_token(&admin, "replicate").await;
    let follower = flotilla_testkit::cluster::LocalNode::start(
        &exe(),
        root.path(),
        "follower",
        Some(&leader.url),
        &["--auth", "--replication-token", &replicate],
    )
    .await
    .unwrap();

    let mut cmd = tokio::process::Command::new(&node);
    cmd.arg("test/editor.test.mjs")
        .current_dir(web_collab_dir())
        .env("FLOTILLA_URL", &leader.url)
        .env("FOLLOWER_URL", &follower.url)
        .env("DOC", "notes/1/body")
        .env("TOKEN", &write)
        .env("READ_TOKEN", &read)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("the browser script finished within 3 minutes")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the editor script failed:\n{stderr}\n{stdout}"
    );
    eprintln!("{stderr}");
    let shown: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the script's summary ({e}): {stdout}"));
    let text = shown["text"].as_str().unwrap().to_string();
    for part in [
        "[stock] ",
        "ben says ",
        "hello",
        " from ana",
        " +offline",
        "online+ ",
    ] {
        assert!(text.contains(part), "{part:?} is missing from {text:?}");
    }
    // Plain SQL reads what the clients ended with (once the group commit is in).
    let mut in_sql = String::new();
    for _ in 0..200 {
        in_sql = rows(&admin, "SELECT body FROM notes WHERE id = 1").await[0][0]
            .as_str()
            .unwrap_or("")
            .to_string();
        if in_sql == text {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(in_sql, text);
}
