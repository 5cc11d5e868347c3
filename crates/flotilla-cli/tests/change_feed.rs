//! The change feed against a real leader process: replayed from the start into an empty
//! database it rebuilds the leader's tables; it resumes after a position, filters tables,
//! and refuses positions it cannot serve with a clear error.

mod common;

use base64::Engine;
use common::*;
use flotilla_client::Client;
use rusqlite::types::Value as Sql;
use serde_json::{json, Value};

/// A feed value as SQLite's, and the placeholder that binds it (text that is not UTF-8 comes
/// as `{"text_base64": …}`: bound as its bytes, cast to TEXT).
fn sql_value(v: &Value) -> (Sql, bool) {
    let b64 = |s: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(s.as_str().unwrap())
            .unwrap()
    };
    match v {
        Value::Null => (Sql::Null, false),
        Value::Number(n) => (
            n.as_i64()
                .map(Sql::Integer)
                .unwrap_or_else(|| Sql::Real(n.as_f64().unwrap())),
            false,
        ),
        Value::String(s) => (Sql::Text(s.clone()), false),
        Value::Object(o) if o.contains_key("text_base64") => {
            (Sql::Blob(b64(&o["text_base64"])), true)
        }
        Value::Object(o) => (Sql::Blob(b64(&o["base64"])), false),
        other => panic!("unexpected value {other}"),
    }
}

fn placeholder(i: usize, text_bytes: bool) -> String {
    if text_bytes {
        format!("CAST(?{i} AS TEXT)")
    } else {
        format!("?{i}")
    }
}

fn where_key(key: &serde_json::Map<String, Value>, first: usize) -> (String, Vec<Sql>) {
    let mut args = Vec::new();
    let clause = key
        .iter()
        .enumerate()
        .map(|(i, (k, v))| {
            let (value, text_bytes) = sql_value(v);
            args.push(value);
            format!("\"{k}\" IS {}", placeholder(first + i, text_bytes))
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    (clause, args)
}

/// Applies one feed line to `db`, in the transaction's own order.
fn replay(db: &rusqlite::Connection, line: &Value) {
    let tx = db.unchecked_transaction().unwrap();
    let ddl = line["ddl"].as_array().unwrap();
    let changes = line["changes"].as_array().unwrap();
    let mut d = 0;
    for i in 0..=changes.len() {
        while d < ddl.len() && ddl[d]["before_change"].as_u64().unwrap() as usize == i {
            if ddl[d]["kind"] != "create_trigger" {
                tx.execute_batch(ddl[d]["sql"].as_str().unwrap()).unwrap();
            }
            d += 1;
        }
        let Some(c) = changes.get(i) else { break };
        let table = c["table"].as_str().unwrap();
        let key = c["key"].as_object().unwrap();
        match c["op"].as_str().unwrap() {
            "insert" | "update" => {
                if c["op"] == "update" {
                    let (w, args) = where_key(key, 1);
                    tx.execute(
                        &format!("DELETE FROM \"{table}\" WHERE {w}"),
                        rusqlite::params_from_iter(args),
                    )
                    .unwrap();
                }
                let after = c["after"].as_object().unwrap();
                let mut cols: Vec<String> = after.keys().map(|k| format!("\"{k}\"")).collect();
                let (mut args, mut params): (Vec<Sql>, Vec<String>) = after
                    .values()
                    .enumerate()
                    .map(|(i, v)| {
                        let (value, text_bytes) = sql_value(v);
                        (value, placeholder(i + 1, text_bytes))
                    })
                    .unzip();
                if let Some(r) = after_rowid(c) {
                    cols.push("rowid".into());
                    args.push(Sql::Integer(r));
                    params.push(format!("?{}", args.len()));
                }
                tx.execute(
                    &format!(
                        "INSERT INTO \"{table}\"({}) VALUES ({})",
                        cols.join(","),
                        params.join(",")
                    ),
                    rusqlite::params_from_iter(args),
                )
                .unwrap();
            }
            "delete" => {
                let (w, args) = where_key(key, 1);
                assert_eq!(
                    tx.execute(
                        &format!("DELETE FROM \"{table}\" WHERE {w}"),
                        rusqlite::params_from_iter(args)
                    )
                    .unwrap(),
                    1,
                    "{c}"
                );
            }
            other => panic!("op {other}"),
        }
    }
    tx.commit().unwrap();
}

/// For a rowid-keyed table, the rowid after an insert or update: the key of an insert; for an
/// update the new key if it moved the row, else the key.
fn after_rowid(c: &Value) -> Option<i64> {
    c.get("new_key")
        .unwrap_or(&c["key"])
        .get("rowid")
        .and_then(|r| r.as_i64())
}

async fn feed(url: &str, query: &str) -> (u16, Vec<Value>) {
    let resp = reqwest::get(format!("{url}/v1/changes?{query}"))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    (status, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_replayed_into_an_empty_database_rebuilds_the_leaders_tables() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let lc = Client::new(&leader.url);
    exec(&lc, json!([
        { "sql": "CREATE TABLE acct(id INTEGER PRIMARY KEY, owner TEXT, balance REAL, pic BLOB)" },
        { "sql": "CREATE TABLE pairs(a TEXT, b INTEGER, v, PRIMARY KEY (a, b)) WITHOUT ROWID" },
        { "sql": "CREATE TABLE events(msg TEXT)" },
        { "sql": "CREATE TABLE raw(k TEXT PRIMARY KEY, v)" },
    ])).await;
    // Keys that are not UTF-8, and one that is U+FFFD itself: three rows, three keys.
    exec(&lc, json!([
        { "sql": "INSERT INTO raw VALUES (CAST(x'80' AS TEXT), 1), (CAST(x'81' AS TEXT), 2), (?1, 3)", "params": ["\u{fffd}"] },
    ])).await;
    exec(
        &lc,
        json!([
            { "sql": "UPDATE raw SET v = v * 10 WHERE k = CAST(x'81' AS TEXT)" },
            { "sql": "DELETE FROM raw WHERE k = CAST(x'80' AS TEXT)" },
        ]),
    )
    .await;
    let mut rng = Rng::new(99);
    for i in 0..200i64 {
        let id = rng.below(40) as i64;
        let stmts = match rng.below(8) {
            0 => json!([{ "sql": "DELETE FROM acct WHERE id = ?1", "params": [id] }]),
            1 => {
                json!([{ "sql": "UPDATE OR REPLACE acct SET balance = balance * 1.5, id = (id + 1000) % 1100 WHERE id = ?1", "params": [id] }])
            }
            2 => {
                json!([{ "sql": "INSERT OR REPLACE INTO pairs VALUES (?1, ?2, ?3)", "params": [format!("a{}", id % 5), id % 3, i] }])
            }
            3 => json!([{ "sql": "DELETE FROM pairs WHERE b = ?1", "params": [id % 3] }]),
            4 => {
                json!([{ "sql": "INSERT INTO events VALUES (?1)", "params": [format!("e{i}")] }, { "sql": "DELETE FROM events WHERE rowid % 4 = 0" }])
            }
            // Rows of a table without a primary key moved to new rowids.
            5 => {
                json!([{ "sql": "UPDATE events SET rowid = rowid + 1000, msg = msg || '+' WHERE rowid % 3 = 1" }])
            }
            _ => json!([{
                "sql": "INSERT OR REPLACE INTO acct(id, owner, balance, pic) VALUES (?1, ?2, ?3, ?4)",
                "params": [id, format!("o{i}"), i as f64 / 3.0, { "base64": base64::engine::general_purpose::STANDARD.encode([i as u8; 5]) }]
            }]),
        };
        exec(&lc, stmts).await;
        if i == 100 {
            exec(
                &lc,
                json!([
                    { "sql": "INSERT INTO events VALUES ('before alter')" },
                    { "sql": "ALTER TABLE acct ADD COLUMN note TEXT" },
                    { "sql": "UPDATE acct SET note = 'n' || id" },
                ]),
            )
            .await;
        }
    }
    let (status, lines) = feed(&leader.url, "follow=false").await;
    assert_eq!(status, 200);
    // Requests that changed nothing (a DELETE of a missing row) took no position: fewer
    // transactions than requests.
    assert!(lines.len() > 100, "{}", lines.len());
    let db = rusqlite::Connection::open_in_memory().unwrap();
    for l in &lines {
        replay(&db, l);
    }
    for q in [
        "SELECT * FROM acct ORDER BY id",
        "SELECT * FROM pairs ORDER BY a, b",
        "SELECT rowid, * FROM events ORDER BY rowid",
        "SELECT hex(k), typeof(k), v FROM raw ORDER BY k",
    ] {
        let mut stmt = db.prepare(q).unwrap();
        let n = stmt.column_count();
        let mine: Vec<Vec<Value>> = stmt
            .query_map([], |r| {
                Ok((0..n)
                    .map(|i| match r.get::<_, Sql>(i).unwrap() {
                        Sql::Null => Value::Null,
                        Sql::Integer(v) => json!(v),
                        Sql::Real(v) => json!(v),
                        Sql::Text(v) => json!(v),
                        Sql::Blob(v) => {
                            json!({ "base64": base64::engine::general_purpose::STANDARD.encode(v) })
                        }
                    })
                    .collect())
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(json!(mine), rows(&lc, q).await, "{q}");
    }
    // Internal tables never appear.
    assert!(!serde_json::to_string(&lines)
        .unwrap()
        .contains("_flotilla_"));

    // Resuming after a position starts with the next transaction.
    let mid = lines[80]["position"].as_str().unwrap();
    let (_, rest) = feed(&leader.url, &format!("from={mid}&follow=false")).await;
    assert_eq!(rest[0]["position"], lines[81]["position"]);
    assert_eq!(rest.len(), lines.len() - 81);
    // A table filter keeps only that table's changes.
    let (_, only) = feed(&leader.url, "tables=pairs&follow=false").await;
    assert!(!only.is_empty());
    for l in &only {
        for c in l["changes"].as_array().unwrap() {
            assert_eq!(c["table"], "pairs");
        }
    }
    // Following: a new commit arrives on an open feed.
    let head = position(&lc).await;
    let mut resp = reqwest::get(format!("{}/v1/changes?from={head}", leader.url))
        .await
        .unwrap();
    exec(
        &lc,
        json!([{ "sql": "INSERT INTO events VALUES ('live')" }]),
    )
    .await;
    let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), resp.chunk())
        .await
        .expect("a live line within 10 s")
        .unwrap()
        .unwrap();
    let live: Value = serde_json::from_slice(&chunk).unwrap();
    assert_eq!(live["changes"][0]["after"]["msg"], "live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_the_feed_cannot_serve_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let (status, body) = raw(&leader.url, "GET", "/v1/changes?from=1/999", None, vec![]).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "position_in_future");
    let (status, body) = raw(&leader.url, "GET", "/v1/changes?from=banana", None, vec![]).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_position");
    let (status, body) = raw(&leader.url, "GET", "/v1/changes?frm=1/1", None, vec![]).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("frm"),
        "{body}"
    );
    let f = start(dir.path(), "f", Some(&leader.url)).await;
    let (status, body) = raw(&f.url, "GET", "/v1/changes", None, vec![]).await;
    assert_eq!(status, 421);
    assert_eq!(body["error"]["leader"], leader.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_older_than_the_retained_log_gets_410_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments, so that retention removes whole segments quickly.
    let config = dir.path().join("small.toml");
    std::fs::write(&config, "[log]\nsegment-mib = 1\n").unwrap();
    let leader = flotilla_testkit::cluster::LocalNode::start(
        &exe(),
        dir.path(),
        "leader",
        None,
        &["--config", config.to_str().unwrap()],
    )
    .await
    .unwrap();
    let lc = Client::new(&leader.url);
    exec(
        &lc,
        json!([{ "sql": "CREATE TABLE b(id INTEGER PRIMARY KEY, x BLOB)" }]),
    )
    .await;
    let blob = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 200_000]);
    for _ in 0..20 {
        exec(
            &lc,
            json!([{ "sql": "INSERT INTO b(x) VALUES (?1)", "params": [{ "base64": blob }] }]),
        )
        .await;
    }
    // No follower needs the old segments: retention (every 5 s) removes them.
    wait_status(&lc, "retention to remove old segments", |s| {
        s["log"]["first_lsn"].as_u64().unwrap_or(0) > 2
    })
    .await;
    let (status, body) = raw(&leader.url, "GET", "/v1/changes?from=1/1", None, vec![]).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"]["code"], "position_not_retained");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/snapshot"),
        "{body}"
    );
}
