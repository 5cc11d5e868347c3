//! `flotilla demo multi-dc`: three data centres (eu, us, asia) on this machine, each a leader
//! with a follower, exchanging through TCP proxies that stand for the links between data
//! centres. Concurrent conflicting writes; asia cut off and writing on its own; healing;
//! every leader and follower checked to hold the same rows, counters summed exactly, and the
//! conflicts table shown.

use anyhow::{bail, Context};
use flotilla_client::Client;
use flotilla_testkit::cluster::LocalNode;
use flotilla_testkit::data_centres::DataCentres;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const DCS: [&str; 3] = ["eu", "us", "asia"];

async fn exec(c: &Client, sql: &str) -> anyhow::Result<Value> {
    c.post("/v1/execute", &json!({ "statements": [{ "sql": sql }] }))
        .await
        .with_context(|| format!("{sql} on {}", c.url()))
}

async fn rows(c: &Client, sql: &str) -> anyhow::Result<Value> {
    Ok(c.post("/v1/query", &json!({ "sql": sql })).await?["rows"].clone())
}

/// Waits until every node answers `sql` alike and every leader's links have read everything.
async fn converge(
    leaders: &[Client],
    followers: &[Client],
    sql: &str,
    within: Duration,
) -> anyhow::Result<(Value, Duration)> {
    let started = Instant::now();
    loop {
        let mut answers = Vec::new();
        for c in leaders.iter().chain(followers) {
            answers.push(rows(c, sql).await.unwrap_or(Value::Null));
        }
        let mut caught_up = true;
        for c in leaders {
            let s = c.get("/v1/status").await?;
            for p in s["multi_leader"]["peers"].as_array().into_iter().flatten() {
                caught_up &= p["lag_transactions"] == 0 && p["link"] == "up";
            }
        }
        if caught_up && answers.windows(2).all(|w| w[0] == w[1]) {
            return Ok((answers.remove(0), started.elapsed()));
        }
        if started.elapsed() > within {
            bail!("the data centres did not converge within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn show(rows: &Value) {
    for r in rows.as_array().into_iter().flatten() {
        let cells: Vec<String> = r
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        println!("     {}", cells.join(" | "));
    }
}

pub async fn run(quick: bool, keep: bool) -> anyhow::Result<()> {
    let step = if quick { 1.5 } else { 5.0 };
    let tmp = tempfile::Builder::new()
        .prefix("flotilla-demo-multi-dc-")
        .tempdir()?;
    let root = tmp.path().to_path_buf();
    let exe = flotilla_testkit::cluster::this_exe()?;
    println!("Flotilla multi-leader demo in {}", root.display());

    println!(
        "\n1. Three data centres, each a leader (flotilla serve --dc) and a follower; the links"
    );
    println!("   between data centres go through proxies the demo can cut");
    let links = DataCentres::start(&exe, &root, &DCS, &[]).await?;
    for (i, dc) in DCS.iter().enumerate() {
        println!(
            "   {dc:<5} leader   {}  --dc {dc} {}",
            links.leaders[i].url,
            links.peer_args(&DCS, i).join(" ")
        );
    }
    let nodes = &links.leaders;
    let mut followers = Vec::new();
    for (i, dc) in DCS.iter().enumerate() {
        let f = LocalNode::start(
            &exe,
            &root,
            &format!("{dc}-follower"),
            Some(&nodes[i].url),
            &[],
        )
        .await?;
        println!("   {dc:<5} follower {}  --follow {}", f.url, nodes[i].url);
        followers.push(f);
    }
    let leaders: Vec<Client> = nodes.iter().map(|n| Client::new(&n.url)).collect();
    let fcs: Vec<Client> = followers.iter().map(|n| Client::new(&n.url)).collect();
    let (eu, us, asia) = (&leaders[0], &leaders[1], &leaders[2]);

    println!("\n2. A table and its conflict policies, made in eu (they travel to the others)");
    exec(eu, "CREATE TABLE items (id TEXT PRIMARY KEY DEFAULT (lower(hex(randomblob(8)))), name TEXT, stock INTEGER NOT NULL DEFAULT 0, note TEXT)").await?;
    for (column, policy) in [("stock", "counter"), ("note", "keep-both")] {
        eu.put(
            "/v1/conflicts/policies",
            &json!({ "table": "items", "column": column, "policy": policy }),
        )
        .await?;
        println!("   flotilla conflicts policy --table items --column {column} --policy {policy}");
    }
    exec(
        eu,
        "INSERT INTO items (id, name, stock) VALUES ('tea', 'Green tea', 100), ('mug', 'Mug', 10)",
    )
    .await?;
    converge(
        &leaders,
        &fcs,
        "SELECT id, name, stock FROM items ORDER BY id",
        Duration::from_secs(30),
    )
    .await?;

    println!(
        "\n3. The same rows written in all three data centres at once (the links down meanwhile,"
    );
    println!("   so none sees the others' writes first)");
    links.cut(None, true);
    let mut expected_stock = 100i64;
    for (i, c) in leaders.iter().enumerate() {
        let dc = DCS[i];
        let add = (i as i64 + 1) * 5;
        expected_stock += add;
        exec(c, &format!("UPDATE items SET name = 'Tea ({dc})', stock = stock + {add}, note = '{dc} says hi' WHERE id = 'tea'")).await?;
        println!("   {dc:<5} renamed tea, stock + {add}, wrote a note");
    }
    exec(eu, "DELETE FROM items WHERE id = 'mug'").await?;
    exec(us, "UPDATE items SET stock = 11 WHERE id = 'mug'").await?;
    println!("   eu    deleted mug while us changed its stock");
    links.cut(None, false);
    let (agreed, took) = converge(
        &leaders,
        &fcs,
        "SELECT id, name, stock, note FROM items ORDER BY id",
        Duration::from_secs(30),
    )
    .await?;
    println!(
        "   links back: every leader and follower agrees after {} ms:",
        took.as_millis()
    );
    show(&agreed);
    let stock = agreed[0][2].as_i64().unwrap_or(-1);
    if stock != expected_stock {
        bail!("tea's stock is {stock}, not the {expected_stock} its increments add up to");
    }
    println!(
        "   [check] stock is {stock}: 100 + 5 + 10 + 15, every increment counted once (counter)"
    );
    if agreed
        .as_array()
        .is_some_and(|a| a.iter().any(|r| r[0] == "mug"))
    {
        bail!("mug is back, but its delete should win");
    }
    println!("   [check] mug stays deleted (a delete racing an update: delete-wins)");

    println!(
        "\n4. asia cut off from eu and us for {step} s; every data centre keeps taking writes"
    );
    links.cut(Some(2), true);
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs_f64(step) {
        for (i, c) in leaders.iter().enumerate() {
            n += 1;
            exec(
                c,
                &format!(
                    "INSERT INTO items (name, stock) VALUES ('order {n} in {}', 1)",
                    DCS[i]
                ),
            )
            .await?;
            exec(c, "UPDATE items SET stock = stock + 1 WHERE id = 'tea'").await?;
            expected_stock += 1;
        }
    }
    let s = asia.get("/v1/status").await?;
    let down = s["multi_leader"]["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["link"] == "down")
        .count();
    println!("   {n} inserts and as many increments; asia's status shows {down} of 2 links down");
    links.cut(Some(2), false);
    let (agreed, took) = converge(
        &leaders,
        &fcs,
        "SELECT count(*), sum(stock) FROM items",
        Duration::from_secs(60),
    )
    .await?;
    println!(
        "   healed: converged in {} ms: {} rows, total stock {}",
        took.as_millis(),
        agreed[0][0],
        agreed[0][1]
    );
    let tea = rows(eu, "SELECT stock FROM items WHERE id = 'tea'").await?;
    if tea[0][0].as_i64() != Some(expected_stock) {
        bail!("tea's stock is {}, not {expected_stock}", tea[0][0]);
    }
    println!("   [check] all 3 leaders and 3 followers hold the same rows; tea's stock is {expected_stock}, exactly");

    println!("\n5. Every conflict is a row of flotilla_conflicts; eu's, by column:");
    let summary = rows(eu, "SELECT tbl, coalesce(col, '(row)'), policy, count(*), sum(resolved = 0) FROM flotilla_conflicts GROUP BY 1, 2, 3 ORDER BY 1, 2").await?;
    println!("     table | column | policy | conflicts | open");
    show(&summary);
    println!("   and those that are not concurrent increments (which simply add up):");
    let conflicts = rows(eu, "SELECT substr(id, 1, 8), row_key, coalesce(col, '(row)'), local_value, local_origin, remote_value, remote_origin, policy, winner, value, CASE resolved WHEN 1 THEN 'resolved' ELSE 'open' END FROM flotilla_conflicts WHERE policy <> 'counter' ORDER BY rowid").await?;
    println!(
        "     id | key | column | local | from | remote | from | policy | winner | value | state"
    );
    show(&conflicts);
    let open = rows(
        eu,
        "SELECT id FROM flotilla_conflicts WHERE resolved = 0 ORDER BY id LIMIT 1",
    )
    .await?;
    if let Some(id) = open[0][0].as_str() {
        println!("   the keep-both note stays open until someone picks: flotilla conflicts resolve {} --keep remote", &id[..8]);
    }
    let ids = |c: &Client| {
        let c = c.clone();
        async move {
            rows(
                &c,
                "SELECT id FROM flotilla_conflicts WHERE col IS NULL OR col <> 'note' ORDER BY id",
            )
            .await
        }
    };
    let (a, b) = (ids(eu).await?, ids(us).await?);
    let shared = a
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| b.as_array().is_some_and(|b| b.contains(x)))
        .count();
    println!("   [check] eu and us recorded {shared} of the same conflicts under the same ids");
    println!("\nAll 3 data centres and their followers converged, with every conflict recorded.");
    if keep {
        let kept = tmp.keep();
        println!("(kept {})", kept.display());
    }
    Ok(())
}
