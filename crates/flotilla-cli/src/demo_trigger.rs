//! `flotilla demo trigger`: trigger-based replication from a Flotilla leader into a local
//! PostgreSQL that the demo starts itself (when its programs are installed; otherwise into an
//! NDJSON file), through a pipeline that filters, drops a column, renames and computes.

use anyhow::bail;
use flotilla_client::Client;
use flotilla_testkit::cluster::LocalNode;
use flotilla_testkit::postgres::{find_or_install_bin, pg_root, PgServer};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn backlog_empty(c: &Client) -> anyhow::Result<Value> {
    for _ in 0..600 {
        let p = c.get("/v1/pipelines/big-orders").await?;
        if p["backlog_rows"] == json!(0) && p["state"] == "idle" {
            return Ok(p);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the pipeline did not catch up in 30 s")
}

pub async fn run(quick: bool, keep: bool) -> anyhow::Result<()> {
    let secs = if quick { 2.0 } else { 10.0 };
    let tmp = tempfile::Builder::new()
        .prefix("flotilla-demo-")
        .tempdir()?;
    let root = tmp.path().to_path_buf();
    let exe = flotilla_testkit::cluster::this_exe()?;
    println!(
        "Flotilla trigger-based replication demo in {}",
        root.display()
    );

    println!("\n1. A leader with an orders table (card numbers included)");
    let leader = LocalNode::start(&exe, &root, "leader", None, &[]).await?;
    let lc = Client::new(&leader.url);
    lc.post(
        "/v1/execute",
        &json!({ "statements": [
            { "sql": "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, total INTEGER, card TEXT)" },
            { "sql": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200) \
                      INSERT INTO orders SELECT i, 'customer' || (i % 17), (i * 37) % 250, '4111-' || i FROM n" }
        ] }),
    )
    .await?;
    println!("   leader {}: 200 orders", leader.url);

    let pg_dir = pg_root()?;
    let (pg, target) = match find_or_install_bin() {
        Ok(bin) => {
            println!("\n2. Starting a PostgreSQL server (initdb + pg_ctl, port chosen here)");
            let pg = PgServer::primary(&bin, &pg_dir.path().join("pg"), &[])?;
            pg.connect()
                .await?
                .batch_execute(
                    "CREATE TABLE big_orders (id bigint PRIMARY KEY, customer text, \
                     amount numeric, with_tax numeric)",
                )
                .await?;
            let url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
            println!("   {url} with an empty table big_orders");
            (Some(pg), url)
        }
        Err(e) => {
            println!("\n2. PostgreSQL's server programs are not installed; delivering into an NDJSON file");
            println!("   ({e:#})");
            (
                None,
                format!("file:{}", root.join("big_orders.ndjson").display()),
            )
        }
    };

    println!("\n3. Adding a pipeline: orders over 100, without the card number, total renamed to amount, with tax computed");
    let spec = json!({
        "name": "big-orders", "source": "orders", "columns": ["customer", "total"],
        "where": "total > 100", "renames": [{ "from": "total", "to": "amount" }],
        "computed": [{ "name": "with_tax", "expr": "total * 12 / 10" }],
        "into": "big_orders", "target": target,
    });
    lc.post("/v1/pipelines", &spec).await?;
    println!(
        "   flotilla pipeline add --node {} big-orders --source orders --columns customer,total \\\n     \
         --where \"total > 100\" --rename total=amount --compute \"with_tax=total * 12 / 10\" \\\n     \
         --into big_orders --target {}",
        leader.url,
        flotilla_types::PipelineTarget::redacted(&target)
    );
    let p = backlog_empty(&lc).await?;
    println!(
        "   the initial copy is delivered: {} orders over 100",
        p["delivered_rows"]
    );

    println!("\n4. Writes for {secs} s: new orders, price changes (rows enter and leave the range), deletes");
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        n += 1;
        let id = (n * 7919) % 400;
        let stmts = match n % 4 {
            0 => {
                json!([{ "sql": "INSERT OR REPLACE INTO orders VALUES (?1, 'new', ?2, '5500-0')", "params": [id, (n * 13) % 250] }])
            }
            1 => {
                json!([{ "sql": "UPDATE orders SET total = ?2 WHERE id = ?1", "params": [id, (n * 31) % 250] }])
            }
            2 => json!([{ "sql": "DELETE FROM orders WHERE id = ?1", "params": [id] }]),
            _ => {
                json!([{ "sql": "UPDATE orders SET customer = customer || '*' WHERE id = ?1", "params": [id] }])
            }
        };
        lc.post("/v1/execute", &json!({ "statements": stmts }))
            .await?;
    }
    let p = backlog_empty(&lc).await?;
    println!(
        "   {n} transactions; the pipeline delivered {} changes, backlog {}, last lag {} ms",
        p["delivered_rows"], p["backlog_rows"], p["last_lag_ms"]
    );

    println!("\n5. Checking the target against the same projection run on the leader");
    let expected = lc
        .post(
            "/v1/query",
            &json!({ "sql": "SELECT id, customer, total, total * 12 / 10 FROM orders WHERE total > 100 ORDER BY id" }),
        )
        .await?["rows"]
        .clone();
    let expected: Vec<Vec<String>> = expected
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            r.as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect()
        })
        .collect();
    match &pg {
        Some(pg) => {
            let c = pg.connect().await?;
            let got: Vec<Vec<String>> = c
                .query(
                    "SELECT id::text, customer, amount::text, with_tax::text FROM big_orders ORDER BY big_orders.id",
                    &[],
                )
                .await?
                .iter()
                .map(|r| (0..4).map(|i| r.get::<_, String>(i)).collect())
                .collect();
            for r in got.iter().take(3) {
                println!("   big_orders: {}", r.join(" | "));
            }
            if got != expected {
                bail!(
                    "PostgreSQL holds {} rows, the projection {}: they differ",
                    got.len(),
                    expected.len()
                );
            }
            println!(
                "   PostgreSQL holds exactly the {} orders over 100 — and no card numbers.",
                got.len()
            );
        }
        None => {
            let lines = std::fs::read_to_string(root.join("big_orders.ndjson"))?
                .lines()
                .count();
            println!(
                "   {lines} change lines in big_orders.ndjson (one per change, resumable by seq)"
            );
        }
    }

    println!("\nPoint a pipeline at your own PostgreSQL with --target postgres://USER:PASSWORD@HOST:5432/DB");
    println!("(create the target table first, with a PRIMARY KEY on the source's key columns); see docs/trigger-pipelines.md.");
    if keep {
        let kept = tmp.keep();
        println!("Kept {}", kept.display());
    }
    drop(leader);
    drop(pg);
    Ok(())
}
