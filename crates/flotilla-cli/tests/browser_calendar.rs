//! The calendar in real browsers: the page the node serves at /calendar/, its data in each
//! browser's own SQLite (sqlite-wasm in OPFS), synced by the TypeScript device client
//! (web/device) over /v1/sync. Debian's Chromium driven by playwright-core
//! (web/device/test/calendar.test.mjs): two browser contexts — a laptop and a phone of one
//! user — the phone taken offline, edits on both, back online; both converge and show the
//! conflict; a reload with the server cut off still shows the meetings. This test starts the
//! server (a real `flotilla serve --dc home --auth` process), registers the two devices,
//! installs what the browser side needs when it is missing (Chromium, Node.js, the npm
//! packages), runs the script, and checks what the pages showed against the server's rows.

mod common;

use common::devices::*;
use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// The calendar's table, as `examples/calendar` makes it.
const SCHEMA: &str = "CREATE TABLE events (
    id TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(8)))),
    owner TEXT NOT NULL,
    title TEXT NOT NULL,
    starts TEXT NOT NULL,
    minutes INTEGER NOT NULL DEFAULT 30
)";

fn web_device_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web/device")
}

/// Chromium and Node.js (installed when missing) and web/device's npm packages.
fn tools() -> (PathBuf, PathBuf) {
    blocking(|| {
        let chromium = flotilla_testkit::browser::chromium().expect("Chromium");
        let node = flotilla_testkit::browser::node().expect("Node.js");
        flotilla_testkit::browser::npm_ci(&web_device_dir(), "playwright-core/package.json")
            .expect("the npm packages of web/device");
        (chromium, node)
    })
}

/// A data centre with the calendar's table and shape, and two devices of ana (laptop, phone).
async fn calendar_server(root: &std::path::Path) -> (Server, String, String) {
    let s = server(root, &[]).await;
    exec(&s.admin, json!([{ "sql": SCHEMA }])).await;
    set_shape(&s, json!({ "table": "events", "where": "owner = :user" })).await;
    let laptop = add_device(&s, "laptop", "ana").await;
    let phone = add_device(&s, "phone", "ana").await;
    (s, laptop, phone)
}

/// Runs a script of web/device against the server; its last line of output, as JSON.
async fn run_script(
    script: &str,
    (chromium, node): &(PathBuf, PathBuf),
    s: &Server,
    laptop: &str,
    phone: &str,
    extra: &[(&str, &str)],
) -> (Value, String) {
    let mut cmd = tokio::process::Command::new(node);
    cmd.arg(script)
        .current_dir(web_device_dir())
        .env("FLOTILLA_URL", &s.node.url)
        .env("LAPTOP_TOKEN", laptop)
        .env("PHONE_TOKEN", phone)
        .env("CAL_USER", "ana")
        .env("CHROMIUM", chromium)
        .envs(extra.iter().copied())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
        .await
        .expect("the browser script finished within 10 minutes")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{script} failed:\n{stderr}\n{stdout}");
    // What the script said it did (shown with --nocapture).
    eprintln!("{stderr}");
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{script}'s summary ({e}): {stdout}"));
    (last, stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_edit_offline_converge_and_show_the_conflict() {
    let tools = tools();
    let node = &tools.1;
    assert_assets_built(
        node,
        "device",
        "calendar",
        &[
            "index.html",
            "app.js",
            "device-worker.js",
            "sw.js",
            "sqlite3.wasm",
        ],
    );
    let root = tempfile::tempdir().unwrap();
    let (s, laptop, phone) = calendar_server(root.path()).await;
    // Values of every type, to see them cross unchanged.
    exec(
        &s.admin,
        json!([{ "sql": "CREATE TABLE kinds (id TEXT PRIMARY KEY, owner TEXT NOT NULL, i INTEGER, r, b BLOB, t TEXT)" }]),
    )
    .await;
    set_shape(&s, json!({ "table": "kinds", "where": "owner = :user" })).await;
    // REALs beyond what a 64-bit integer holds, made on the server (sqlite-wasm would bind
    // them as integers and wrap them).
    exec(
        &s.admin,
        json!([{ "sql": "INSERT INTO kinds (id, owner, r) VALUES ('s1', 'ana', 1e19), ('s2', 'ana', -3.5e300)" }]),
    )
    .await;
    // Another user's meeting: never on ana's pages.
    exec(
        &s.admin,
        json!([{ "sql": "INSERT INTO events (owner, title, starts) VALUES ('bob', 'Bob only', '2026-12-01T09:00:00')" }]),
    )
    .await;

    let (shown, stdout) =
        run_script("test/calendar.test.mjs", &tools, &s, &laptop, &phone, &[]).await;

    // What both pages show is what the server holds for ana.
    let on_server: Vec<String> = rows(
        &s.admin,
        "SELECT title FROM events WHERE owner = 'ana' ORDER BY starts, id",
    )
    .await
    .as_array()
    .unwrap()
    .iter()
    .map(|r| r[0].as_str().unwrap().to_string())
    .collect();
    assert_eq!(on_server, ["Dentist (laptop)", "Flight"]);
    assert_eq!(shown["laptop"], json!(on_server));
    assert_eq!(shown["phone"], json!(on_server));
    // The conflict the pages showed is the server's, on the title, with both sides.
    let conflicts = rows(
        &s.admin,
        "SELECT col, local_value, remote_value, value FROM flotilla_conflicts WHERE tbl = 'events'",
    )
    .await;
    let conflicts = conflicts.as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let c = &conflicts[0];
    assert_eq!(c[0], "title");
    assert_eq!(c[3], "Dentist (laptop)");
    let sides = [c[1].as_str().unwrap(), c[2].as_str().unwrap()];
    assert!(
        sides.contains(&"Dentist (phone)") && sides.contains(&"Dentist (laptop)"),
        "{c:?}"
    );
    let shown_conflict = shown["conflict"].as_str().unwrap();
    assert!(
        shown_conflict.contains("Dentist (phone)") && shown_conflict.contains("Dentist (laptop)")
    );
    assert!(!stdout.contains("Bob only"));
    // The values as the server holds them: what the laptop wrote and the phone read.
    let kinds = rows(
        &s.admin,
        "SELECT id, typeof(i), CAST(i AS TEXT), typeof(r), CAST(r AS TEXT), typeof(b), hex(b), \
         typeof(t), t FROM kinds ORDER BY id",
    )
    .await;
    let shown_kinds: Vec<Value> = shown["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            json!([k["id"], k["ti"], k["i"], k["tr"], k["r"], k["tb"], k["b"], k["tt"], k["t"]])
        })
        .collect();
    assert_eq!(kinds, json!(shown_kinds));
    assert_eq!(kinds[0][2], "4611686018427387905");
    assert_eq!(kinds[1][2], "-9223372036854775808");
    assert_eq!(kinds[1][4], "Inf");
    // A whole REAL in a column of no type stays a REAL (JSON.parse would make it 1).
    assert_eq!(
        (&kinds[0][3], &kinds[0][4]),
        (&json!("real"), &json!("1.0"))
    );
    assert_eq!(kinds[0][8], "żółw 🐢");
    let real_of = |id: &str| {
        kinds
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k[0] == id)
            .map(|k| k[4].clone())
    };
    assert_eq!(real_of("s1"), Some(json!("1.0e+19")));
    assert_eq!(real_of("s2"), Some(json!("-3.5e+300")));
    // Bound from JavaScript as a number: a REAL, not a wrapped integer.
    assert_eq!(real_of("k4"), Some(json!("1.0e+19")));
    // The row outside the shape never reached the server.
    assert_eq!(
        rows(&s.admin, "SELECT count(*) FROM events WHERE id = 'sneaky'").await,
        json!([[0]])
    );
}

/// The browser device client's figures (not a check: `--ignored --nocapture` prints them;
/// CHANGES=N to change the 10,000 changes). See docs/performance.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --ignored --nocapture"]
async fn browser_device_figures() {
    let tools = tools();
    let root = tempfile::tempdir().unwrap();
    let (s, laptop, phone) = calendar_server(root.path()).await;
    let changes = std::env::var("CHANGES").unwrap_or_else(|_| "10000".into());
    let (figures, _) = run_script(
        "test/bench.mjs",
        &tools,
        &s,
        &laptop,
        &phone,
        &[("CHANGES", &changes)],
    )
    .await;
    println!("browser device figures: {figures}");
}
