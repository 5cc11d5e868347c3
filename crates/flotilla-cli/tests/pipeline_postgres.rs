//! Trigger-based replication into a real PostgreSQL server (started by the test with initdb and
//! pg_ctl): random writes through a filtered, reshaped pipeline, the leader SIGKILLed during
//! delivery, and the PostgreSQL table ends exactly equal to the projection computed on the
//! source; pause/resume and the backlog; an apply statement per change; bad inputs refused at
//! `add` naming what is wrong. Needs PostgreSQL's server programs: installed (apt-get) when missing.

mod common;

use common::*;
use flotilla_client::Client;
use flotilla_testkit::postgres::{find_or_install_bin, pg_root, PgServer};
use serde_json::{json, Value};
use std::time::Duration;

fn pg_url(pg: &PgServer) -> String {
    format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port)
}

async fn add(leader: &str, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new(exe())
        .args(["pipeline", "add", "--node", leader])
        .args(args)
        .output()
        .await
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn pipeline(c: &Client, name: &str) -> Value {
    c.get(&format!("/v1/pipelines/{name}")).await.unwrap()
}

/// The PostgreSQL table's rows as JSON arrays of text (NULL as null).
async fn pg_rows(pg: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    pg.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect()
}

fn as_text(rows: &Value) -> Vec<Vec<Option<String>>> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| match v {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_reshaped_pipeline_into_postgres_survives_kills_exactly_once() {
    let bin = find_or_install_bin().unwrap();
    let root = pg_root().unwrap();
    let pg = PgServer::primary(&bin, &root.path().join("pg"), &[]).unwrap();
    let pgc = pg.connect().await.unwrap();
    pgc.batch_execute(
        "CREATE TABLE big_orders (id bigint PRIMARY KEY, customer text, amount numeric, \
         with_tax numeric, note bytea);
         CREATE TABLE audit (op text, id bigint, amount numeric);",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut leader = start(dir.path(), "leader", None).await;
    let lc = Client::new(&leader.url);
    exec(
        &lc,
        json!([{ "sql": "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, total INTEGER, note BLOB, secret TEXT)" }]),
    )
    .await;
    for i in 0..30 {
        exec(
            &lc,
            json!([{ "sql": "INSERT INTO orders VALUES (?1, ?2, ?3, NULL, 'x')", "params": [i, format!("c{}", i % 5), i * 7 % 200] }]),
        )
        .await;
    }
    let url = pg_url(&pg);
    let out = add(
        &leader.url,
        &[
            "big",
            "--source",
            "orders",
            "--columns",
            "customer,total,note",
            "--where",
            "total > 100",
            "--rename",
            "total=amount",
            "--compute",
            "with_tax=total * 12 / 10",
            "--into",
            "big_orders",
            "--target",
            &url,
            "--apply-sql",
            "INSERT INTO audit VALUES ($1, $2::bigint, $4::numeric)",
        ],
    )
    .await
    .unwrap();
    assert!(out.contains("pipeline big added"), "{out}");

    let mut rng = Rng::new(7);
    let mut kills = 0;
    for round in 0..8 {
        for i in 0..60u64 {
            let id = rng.below(60) as i64;
            let total = rng.below(250) as i64;
            let stmts = match rng.below(6) {
                0 => {
                    json!([{ "sql": "INSERT OR REPLACE INTO orders VALUES (?1, 'r', ?2, NULL, 's')", "params": [id, total] }])
                }
                1 => {
                    json!([{ "sql": "UPDATE orders SET total = ?2 WHERE id = ?1", "params": [id, total] }])
                }
                2 => json!([{ "sql": "DELETE FROM orders WHERE id = ?1", "params": [id] }]),
                3 => {
                    json!([{ "sql": "UPDATE OR IGNORE orders SET id = ?2 WHERE id = ?1", "params": [id, 60 + (i as i64 % 30)] }])
                }
                4 => {
                    json!([{ "sql": "UPDATE orders SET note = ?2, secret = 'y' WHERE id = ?1", "params": [id, {"base64": "AP8B"}] }])
                }
                _ => json!([
                    { "sql": "INSERT INTO orders VALUES (?1, 'u', ?2, NULL, 'z') ON CONFLICT(id) DO UPDATE SET total = excluded.total", "params": [id, total] },
                    { "sql": "UPDATE orders SET customer = customer || '+' WHERE total % 3 = 0" }
                ]),
            };
            exec(&lc, stmts).await;
        }
        if round % 2 == 1 {
            // A large transaction, then SIGKILL while it is being delivered; the restarted
            // leader's worker reads PostgreSQL's cursor and continues after it.
            exec(
                &lc,
                json!([{ "sql": "WITH RECURSIVE n(i) AS (SELECT 1000 UNION ALL SELECT i + 1 FROM n WHERE i < 2999) \
                    INSERT OR REPLACE INTO orders SELECT i, 'bulk', 100 + (i * ?1) % 100, NULL, 'b' FROM n", "params": [round] }]),
            )
            .await;
            leader.kill().await;
            kills += 1;
            leader.restart().await.unwrap();
        }
    }
    let lc = Client::new(&leader.url);
    let p = pipeline_drained(&lc, "big").await;
    assert_eq!(p["last_error"], Value::Null, "{p}");
    assert!(kills >= 4);
    let expected = as_text(
        &rows(
            &lc,
            "SELECT CAST(id AS TEXT), customer, CAST(total AS TEXT), CAST(total * 12 / 10 AS TEXT), \
             CASE WHEN note IS NULL THEN NULL ELSE '\\x' || lower(hex(note)) END \
             FROM orders WHERE total > 100 ORDER BY id",
        )
        .await,
    );
    let got = pg_rows(
        &pgc,
        "SELECT id::text, customer, amount::text, with_tax::text, note::text FROM big_orders ORDER BY big_orders.id",
    )
    .await;
    assert!(!expected.is_empty());
    assert_eq!(got, expected);
    // The apply statement ran once per delivered change, never twice (exactly-once across the
    // kills): the audit has as many rows as the pipeline delivered changes.
    let audited: i64 = pgc
        .query_one("SELECT count(*) FROM audit", &[])
        .await
        .unwrap()
        .get(0);
    let cursor: i64 = pgc
        .query_one(
            "SELECT seq FROM flotilla_pipeline_cursors WHERE pipeline = 'big'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        audited, cursor,
        "one audit row per change, seq counts changes"
    );

    // Pause: changes wait in the backlog; resume delivers them.
    let pause = tokio::process::Command::new(exe())
        .args(["pipeline", "pause", "--node", &leader.url, "big"])
        .output()
        .await
        .unwrap();
    assert!(pause.status.success());
    exec(
        &lc,
        json!([{ "sql": "INSERT INTO orders VALUES (500, 'p', 200, NULL, 'x')" }]),
    )
    .await;
    exec(
        &lc,
        json!([{ "sql": "INSERT INTO orders VALUES (501, 'p', 5, NULL, 'x')" }]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = pipeline(&lc, "big").await;
    assert_eq!(p["state"], "paused");
    assert_eq!(
        p["backlog_rows"],
        json!(1),
        "the filtered-out row never reached it: {p}"
    );
    assert!(pgc
        .query_opt("SELECT 1 FROM big_orders WHERE id = 500", &[])
        .await
        .unwrap()
        .is_none());
    Client::new(&leader.url)
        .post("/v1/pipelines/big/resume", &Value::Null)
        .await
        .unwrap();
    pipeline_drained(&lc, "big").await;
    assert!(pgc
        .query_opt("SELECT 1 FROM big_orders WHERE id = 500", &[])
        .await
        .unwrap()
        .is_some());

    // A target that is down: the backlog grows and the error shows; delivery resumes by itself.
    drop(pgc);
    let mut pg = pg;
    pg.stop();
    exec(
        &lc,
        json!([{ "sql": "INSERT INTO orders VALUES (502, 'd', 300, NULL, 'x')" }]),
    )
    .await;
    let seen_error = poll_pipeline(&lc, "big", |p| p["last_error"].is_string()).await;
    assert!(
        seen_error["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("PostgreSQL"),
        "{seen_error}"
    );
    assert_eq!(seen_error["backlog_rows"], json!(1));
    pg.start_again().unwrap();
    pipeline_drained(&lc, "big").await;
    let pgc = pg.connect().await.unwrap();
    assert!(pgc
        .query_opt("SELECT 1 FROM big_orders WHERE id = 502", &[])
        .await
        .unwrap()
        .is_some());

    // Remove: its triggers go; writes are no longer captured.
    Client::new(&leader.url)
        .delete("/v1/pipelines/big")
        .await
        .unwrap();
    let triggers = rows(
        &lc,
        "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'",
    )
    .await;
    assert_eq!(triggers, json!([[0]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pipelines_are_refused_at_add_naming_what_is_wrong() {
    let bin = find_or_install_bin().unwrap();
    let root = pg_root().unwrap();
    let pg = PgServer::primary(&bin, &root.path().join("pg"), &[]).unwrap();
    let pgc = pg.connect().await.unwrap();
    pgc.batch_execute(
        "CREATE TABLE t_ok (id bigint PRIMARY KEY, a text);
         CREATE TABLE t_nokey (id bigint, a text);
         CREATE TABLE t_short (id bigint PRIMARY KEY);",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let leader = start(dir.path(), "leader", None).await;
    let lc = Client::new(&leader.url);
    exec(
        &lc,
        json!([{ "sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT)" }]),
    )
    .await;
    let url = pg_url(&pg);
    let wrong_port = format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["p", "--source", "t", "--into", "missing", "--target", &url],
            "PostgreSQL has no table missing",
        ),
        (
            vec!["p", "--source", "t", "--into", "t_short", "--target", &url],
            "has no column a",
        ),
        (
            vec!["p", "--source", "t", "--into", "t_nokey", "--target", &url],
            "needs a PRIMARY KEY or UNIQUE constraint on (id)",
        ),
        (
            vec![
                "p",
                "--source",
                "t",
                "--into",
                "t_ok",
                "--target",
                &wrong_port,
            ],
            "cannot connect to PostgreSQL",
        ),
        (
            vec![
                "p", "--source", "t", "--into", "t_ok", "--where", "a >", "--target", &url,
            ],
            "the row predicate \"a >\" does not work on table t: near \")\": syntax error (the expression ends too early)",
        ),
        (
            vec!["p", "--source", "nope", "--target", &url],
            "source table nope does not exist",
        ),
        (
            vec!["p", "--source", "t", "--rename", "a", "--target", &url],
            "--rename \"a\": use OLD=NEW",
        ),
        (
            vec!["p", "--source", "t", "--target", "ftp://x"],
            "is not postgres://",
        ),
        (
            vec![
                "p",
                "--source",
                "t",
                "--into",
                "t_ok",
                "--target",
                &url,
                "--apply-sql",
                "INSERT INTO nowhere VALUES ($1)",
            ],
            "apply statement does not prepare",
        ),
    ];
    for (args, want) in cases {
        let err = add(&leader.url, &args).await.unwrap_err();
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // Nothing was installed by the refused adds.
    let list = lc.get("/v1/pipelines").await.unwrap();
    assert_eq!(list["pipelines"], json!([]));

    // What can only be known at delivery — a value PostgreSQL's column type rejects — stops
    // delivery with the error in status; nothing is dropped, and fixing the row lets it go on.
    pgc.batch_execute("CREATE TABLE typed (id bigint PRIMARY KEY, a integer)")
        .await
        .unwrap();
    assert!(add(
        &leader.url,
        &["typed", "--source", "t", "--into", "typed", "--target", &url]
    )
    .await
    .is_ok());
    exec(
        &lc,
        json!([{ "sql": "INSERT INTO t VALUES (1, '12'), (2, 'not a number')" }]),
    )
    .await;
    let st = poll_pipeline(&lc, "typed", |p| p["last_error"].is_string()).await;
    assert!(
        st["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("invalid input syntax for type integer"),
        "{st}"
    );
    assert_eq!(st["backlog_rows"], json!(2), "{st}");
    assert!(pgc
        .query_opt("SELECT 1 FROM typed", &[])
        .await
        .unwrap()
        .is_none());
    // Fixed at the source, the retried batch (each key's final state) goes through whole.
    exec(
        &lc,
        json!([{ "sql": "UPDATE t SET a = '34' WHERE id = 2" }]),
    )
    .await;
    let st = poll_pipeline(&lc, "typed", |p| p["backlog_rows"] == json!(0)).await;
    assert_eq!(st["backlog_rows"], json!(0), "{st}");
    let typed: Vec<(i64, i32)> = pgc
        .query("SELECT id, a FROM typed ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(typed, [(1, 12), (2, 34)]);
    Client::new(&leader.url)
        .delete("/v1/pipelines/typed")
        .await
        .unwrap();
    assert!(add(
        &leader.url,
        &["p", "--source", "t", "--into", "t_ok", "--target", &url]
    )
    .await
    .is_ok());
    let dup = add(
        &leader.url,
        &["p", "--source", "t", "--into", "t_ok", "--target", &url],
    )
    .await
    .unwrap_err();
    assert!(dup.contains("exists already"), "{dup}");
}
