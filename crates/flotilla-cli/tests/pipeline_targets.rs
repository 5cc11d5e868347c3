//! Trigger-based replication into another Flotilla cluster (over its API) and into an NDJSON
//! file: exactly once across SIGKILLs of the source leader (and a torn last line in the file);
//! the pipeline's triggers and changelog never reach a logical follower or the change feed,
//! while a physical follower carries them byte for byte.

mod common;

use common::*;
use flotilla_client::Client;
use flotilla_testkit::cluster::LocalNode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

async fn writes(c: &Client, rng: &mut Rng, n: usize) {
    for _ in 0..n {
        let id = rng.below(50) as i64;
        let v = rng.below(1000) as i64;
        let stmts = match rng.below(4) {
            0 => {
                json!([{ "sql": "INSERT OR REPLACE INTO t VALUES (?1, ?2, 'r')", "params": [id, v] }])
            }
            1 => json!([{ "sql": "UPDATE t SET v = ?2 WHERE id = ?1", "params": [id, v] }]),
            2 => json!([{ "sql": "DELETE FROM t WHERE id = ?1", "params": [id] }]),
            _ => json!([
                { "sql": "INSERT INTO t VALUES (?1, ?2, 'u') ON CONFLICT(id) DO UPDATE SET v = excluded.v", "params": [id, v] },
                { "sql": "INSERT OR IGNORE INTO t VALUES (?1 + 100, ?2, 'i')", "params": [id, v] }
            ]),
        };
        exec(c, stmts).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_into_flotilla_and_a_file_are_exactly_once_and_stay_internal() {
    let dir = tempfile::tempdir().unwrap();
    // Pipelines may write files only where the config allows.
    let config = dir.path().join("leader.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline-targets]\nallow = [\"file:{}\", \"loopback\"]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut leader = LocalNode::start(
        &exe(),
        dir.path(),
        "leader",
        None,
        &["--config", config.to_str().unwrap()],
    )
    .await
    .unwrap();
    let lc = Client::new(&leader.url);
    let physical = start(dir.path(), "physical", Some(&leader.url)).await;
    let logical = LocalNode::start(
        &exe(),
        dir.path(),
        "logical",
        Some(&leader.url),
        &["--log", "logical"],
    )
    .await
    .unwrap();
    // The target: another cluster.
    let other = start(dir.path(), "other", None).await;
    let oc = Client::new(&other.url);
    exec(
        &oc,
        json!([{ "sql": "CREATE TABLE copy(id INTEGER PRIMARY KEY, v INTEGER, tag TEXT)" }]),
    )
    .await;
    exec(
        &lc,
        json!([{ "sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER, tag TEXT)" }]),
    )
    .await;
    let mut rng = Rng::new(11);
    writes(&lc, &mut rng, 40).await;
    let file = dir.path().join("changes.ndjson");
    for body in [
        json!({ "name": "to-other", "source": "t", "into": "copy", "target": other.url }),
        json!({ "name": "to-file", "source": "t", "where": "v % 2 = 0",
                "target": format!("file:{}", file.display()) }),
    ] {
        lc.post("/v1/pipelines", &body).await.unwrap();
    }
    for round in 0..4 {
        writes(&lc, &mut rng, 50).await;
        leader.kill().await;
        if round == 1 {
            // A write torn by a crash: the target cuts it off and continues.
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap();
            f.write_all(b"{\"pipeline\":\"to-file\",\"seq\":99")
                .unwrap();
        }
        leader.restart().await.unwrap();
    }
    let lc = Client::new(&leader.url);
    writes(&lc, &mut rng, 30).await;
    pipeline_drained(&lc, "to-other").await;
    pipeline_drained(&lc, "to-file").await;

    // Another Flotilla: equal to the source.
    let q = "SELECT id, v, tag FROM t ORDER BY id";
    let expected = rows(&lc, q).await;
    assert!(expected.as_array().unwrap().len() > 10);
    assert_eq!(
        rows(&oc, "SELECT id, v, tag FROM copy ORDER BY id").await,
        expected
    );

    // The file: every line once, in order; replayed, it is the filtered projection.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.ends_with('\n'));
    let mut replay: BTreeMap<i64, Value> = BTreeMap::new();
    let mut last_seq = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let seq = v["seq"].as_i64().unwrap();
        assert!(
            seq > last_seq,
            "seq {seq} after {last_seq}: delivered twice"
        );
        last_seq = seq;
        let id = v["row"]["id"].as_i64().unwrap();
        match v["op"].as_str().unwrap() {
            "upsert" => {
                replay.insert(id, json!([id, v["row"]["v"], v["row"]["tag"]]));
            }
            "delete" => {
                replay.remove(&id);
            }
            other => panic!("op {other}"),
        }
    }
    let filtered = rows(&lc, "SELECT id, v, tag FROM t WHERE v % 2 = 0 ORDER BY id").await;
    assert_eq!(Value::Array(replay.into_values().collect()), filtered);

    // Internal on replicas: a physical follower carries the triggers (byte for byte); a
    // logical follower and the change feed never see them.
    let pos = position(&lc).await;
    assert_identical(&leader, &physical).await;
    let logc = Client::new(&logical.url);
    wait_for(&logc, &pos).await;
    let internal =
        "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' OR name LIKE '%changelog%'";
    assert_eq!(rows(&logc, internal).await, json!([[0]]));
    assert_eq!(rows(&logc, q).await, expected);
    let feed = reqwest::get(format!("{}/v1/changes?from=1/0&follow=false", leader.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(feed.contains("\"table\":\"t\""));
    assert!(
        !feed.contains("_flotilla"),
        "the feed shows Flotilla's own tables"
    );
    assert!(!feed.contains("CREATE TRIGGER"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_declared_in_the_config_is_installed_once_its_source_exists() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("declared.ndjson");
    let config = dir.path().join("leader.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline-targets]\nallow = [\"file:{}\"]\n\
             [[pipeline]]\nname = \"declared\"\nsource = \"items\"\ncolumns = [\"name\"]\n\
             where = \"name <> 'hidden'\"\ntarget = \"file:{}\"\nbacklog-warn-rows = 1000\n",
            dir.path().display(),
            out.display()
        ),
    )
    .unwrap();
    let leader = LocalNode::start(
        &exe(),
        dir.path(),
        "leader",
        None,
        &["--config", config.to_str().unwrap()],
    )
    .await
    .unwrap();
    let lc = Client::new(&leader.url);
    // No source table yet: listed as not installed, with the reason.
    let mut listed = Value::Null;
    for _ in 0..100 {
        listed = lc.get("/v1/pipelines").await.unwrap();
        if listed["pipelines"][0]["state"] == "not_installed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        listed["pipelines"][0]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("source table items does not exist"),
        "{listed}"
    );
    exec(
        &lc,
        json!([
            { "sql": "CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, secret TEXT)" },
            { "sql": "INSERT INTO items VALUES (1, 'a', 's'), (2, 'hidden', 's')" }
        ]),
    )
    .await;
    let mut installed = false;
    for _ in 0..100 {
        if lc.get("/v1/pipelines/declared").await.is_ok() {
            installed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(installed, "the declared pipeline was not installed");
    exec(
        &lc,
        json!([{ "sql": "INSERT INTO items VALUES (3, 'b', 's')" }]),
    )
    .await;
    pipeline_drained(&lc, "declared").await;
    let text = std::fs::read_to_string(&out).unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["row"].clone())
        .collect();
    assert_eq!(
        rows,
        [json!({"id": 1, "name": "a"}), json!({"id": 3, "name": "b"})]
    );
}
