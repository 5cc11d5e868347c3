//! Logical replication between real processes: one leader serving a physical follower, an
//! unfiltered logical follower and a filtered one at the same time, through random
//! transactions with schema changes and a follower SIGKILL.

mod common;

use common::*;
use flotilla_client::Client;
use flotilla_testkit::cluster::LocalNode;
use serde_json::{json, Value};

fn random_statements(rng: &mut Rng, i: u64) -> Value {
    let id = rng.below(80) as i64;
    match rng.below(10) {
        0 => json!([{ "sql": "DELETE FROM orders WHERE id = ?1", "params": [id] }]),
        1 => {
            json!([{ "sql": "UPDATE orders SET total = total + 50, note = note || '+' WHERE id % 6 = ?1", "params": [i % 6] }])
        }
        2 => {
            json!([{ "sql": "INSERT INTO notes(a, b) VALUES (?1, ?2)", "params": [i as i64, "n".repeat(rng.below(50) as usize)] }])
        }
        3 => json!([{ "sql": "DELETE FROM notes WHERE a % 3 = ?1", "params": [i % 3] }]),
        _ => {
            let n = 1 + rng.below(5);
            let stmts: Vec<Value> = (0..n)
                .map(|j| {
                    json!({
                        "sql": "INSERT OR REPLACE INTO orders(id, total, note) VALUES (?1, ?2, ?3)",
                        "params": [(id + j as i64) % 80, rng.below(200) as i64, format!("o{i}")]
                    })
                })
                .collect();
            Value::Array(stmts)
        }
    }
}

async fn logical(dir: &std::path::Path, id: &str, leader: &str, extra: &[&str]) -> LocalNode {
    let mut args = vec!["--log", "logical"];
    args.extend_from_slice(extra);
    LocalNode::start(&exe(), dir, id, Some(leader), &args)
        .await
        .unwrap_or_else(|e| panic!("starting {id}: {e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn physical_and_logical_followers_of_one_leader_end_with_the_right_rows() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let lc = Client::new(&leader.url);
    exec(
        &lc,
        json!([
            { "sql": "CREATE TABLE orders(id INTEGER PRIMARY KEY, total INTEGER, note TEXT)" },
            { "sql": "CREATE TABLE notes(a, b)" },
            { "sql": "INSERT INTO orders VALUES (1, 500, 'first'), (2, 5, 'small')" }
        ]),
    )
    .await;
    let physical = start(dir.path(), "phys", Some(&leader.url)).await;
    let all = logical(dir.path(), "all", &leader.url, &["--page-size", "8192"]).await;
    // The flag reaches the replica's own file (its header says its page size), once the
    // follower has bootstrapped (it listens before its first copy is in).
    wait_status(
        &Client::new(&all.url),
        "the logical follower streams",
        |s| s["state"] == "streaming",
    )
    .await;
    let header = std::fs::read(all.dir.join("db.sqlite")).unwrap();
    assert_eq!(u16::from_be_bytes([header[16], header[17]]), 8192);
    let mut big = logical(
        dir.path(),
        "big",
        &leader.url,
        &[
            "--tables",
            "orders",
            "--columns",
            "orders:id,total",
            "--where",
            "orders: total > 100",
        ],
    )
    .await;
    let (ac, bc) = (Client::new(&all.url), Client::new(&big.url));
    // The unfiltered logical follower keeps a table of its own, beside the replicated ones.
    let out = exec(
        &ac,
        json!([
            { "sql": "CREATE TABLE seen(id INTEGER PRIMARY KEY, at TEXT)" },
            { "sql": "INSERT INTO seen(at) VALUES ('here')" },
            { "sql": "CREATE INDEX orders_note ON orders(note)" }
        ]),
    )
    .await;
    assert_eq!(out["local"], true);
    let (code, body) = raw(
        &all.url,
        "POST",
        "/v1/execute",
        Some("application/json"),
        serde_json::to_vec(
            &json!({ "statements": [{ "sql": "INSERT INTO orders VALUES (99, 1, 'x')" }] }),
        )
        .unwrap(),
    )
    .await;
    assert_eq!(code, 421, "{body}");
    assert_eq!(body["error"]["leader"], leader.url);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("replicated from the leader"));
    let mut rng = Rng::new(0x5eed);
    for i in 0..150 {
        if i == 50 {
            exec(
                &lc,
                json!([{ "sql": "ALTER TABLE notes ADD COLUMN c DEFAULT 7" }, { "sql": "CREATE INDEX orders_total ON orders(total)" }]),
            )
            .await;
        }
        if i == 80 {
            big.kill().await;
        }
        if i == 100 {
            big.restart().await.unwrap();
        }
        exec(&lc, random_statements(&mut rng, i)).await;
    }
    let pos = position(&lc).await;
    for c in [&ac, &bc] {
        wait_for(c, &pos).await;
    }
    assert_identical(&leader, &physical).await;
    for q in [
        "SELECT * FROM orders ORDER BY id",
        "SELECT rowid, * FROM notes ORDER BY rowid",
    ] {
        assert_eq!(rows(&lc, q).await, rows(&ac, q).await, "{q}");
    }
    let expected = rows(
        &lc,
        "SELECT id, total FROM orders WHERE total > 100 ORDER BY id",
    )
    .await;
    assert!(expected.as_array().unwrap().len() > 5);
    assert_eq!(
        expected,
        rows(&bc, "SELECT * FROM orders ORDER BY id").await
    );
    assert_eq!(
        rows(
            &bc,
            "SELECT count(*) FROM sqlite_schema WHERE name = 'notes'"
        )
        .await,
        json!([[0]])
    );
    let s = status(&bc).await;
    assert_eq!(s["log"], "logical");
    assert_eq!(s["conflicts"], 0);
    assert!(s["filter"].as_str().unwrap().contains("total > 100"), "{s}");
    // The leader sees all three followers with their log kinds.
    let ls = status(&lc).await;
    let mut kinds: Vec<String> = ls["followers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["log"].as_str().unwrap().to_string())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["logical", "logical", "physical"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_does_not_fit_the_leader_stops_the_follower_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    exec(
        &Client::new(&leader.url),
        json!([{ "sql": "CREATE TABLE orders(id INTEGER PRIMARY KEY, total INTEGER)" }]),
    )
    .await;
    let out = std::process::Command::new(exe())
        .args([
            "serve",
            "--id",
            "f",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "logical",
        ])
        .arg("--data")
        .arg(dir.path().join("f"))
        .args(["--follow", &leader.url, "--columns", "orders:total"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("must include its primary key column \"id\""),
        "{err}"
    );
}
