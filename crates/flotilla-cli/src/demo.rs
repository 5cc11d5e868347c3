//! `flotilla demo`: a leader and followers on this machine, a write workload with live lag, a
//! follower killed and caught up, a follower added by snapshot, and a check that every database
//! is identical to the leader's.

use anyhow::{bail, Context};
use clap::Args;
use flotilla_client::Client;
use flotilla_testkit::cluster::{page_digest, LocalNode};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
#[command(after_help = "Examples:
  flotilla demo                 # a leader and three followers, checked identical
  flotilla demo failover        # a cluster of three voters: SIGKILL the leader, nothing lost
  flotilla demo trigger         # a pipeline into a PostgreSQL it starts
  flotilla demo multi-dc        # three data centres, conflicts, a partition, convergence")]
pub struct DemoArgs {
    /// `cluster` (a leader, physical and logical followers, the change feed), `failover` (three
    /// voters; the leader SIGKILLed, then cut off), `trigger` (a pipeline into a PostgreSQL the
    /// demo starts) or `multi-dc` (three data centres' leaders exchanging and merging).
    #[arg(default_value = "cluster", value_parser = ["cluster", "failover", "trigger", "multi-dc"])]
    kind: String,
    /// A shortened run (a few seconds per step), as the test suite uses.
    #[arg(long)]
    quick: bool,
    /// Keep the temporary directory (its path is printed).
    #[arg(long)]
    keep: bool,
}

struct Workload {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn start_workload(leader: &str, clients: usize) -> Workload {
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks = (0..clients)
        .map(|c| {
            let (stop, commits, errors) = (stop.clone(), commits.clone(), errors.clone());
            let client = Client::new(leader);
            tokio::spawn(async move {
                let mut i: i64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let k = (c as i64) * 1_000_000_000 + i;
                    let statements = if i % 10 == 0 {
                        json!([{ "sql": "UPDATE t SET v = ?1 WHERE k % 97 = ?2", "params": ["u".repeat(100), i % 97] }])
                    } else if i % 25 == 0 {
                        json!([{ "sql": "DELETE FROM t WHERE k % 101 = ?1", "params": [i % 101] }])
                    } else {
                        json!([{ "sql": "INSERT INTO t(k, v) VALUES (?1, ?2)", "params": [k, "v".repeat(100)] }])
                    };
                    match client.post("/v1/execute", &json!({ "statements": statements })).await {
                        Ok(_) => commits.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    Workload {
        stop,
        commits,
        errors,
        tasks,
    }
}

impl Workload {
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (
            self.commits.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// Prints the followers' lag every half second for `secs`.
async fn show_lag(leader: &Client, w: &Workload, secs: f64) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = (Instant::now(), w.commits.load(Ordering::Relaxed));
    while start.elapsed().as_secs_f64() < secs {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = leader.get("/v1/status").await?;
        let now = (Instant::now(), w.commits.load(Ordering::Relaxed));
        let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64();
        last = now;
        let lags: Vec<String> = s["followers"]
            .as_array()
            .map(|fs| {
                fs.iter()
                    .map(|f| {
                        format!(
                            "{} {} lag {} txns / {} ms",
                            f["id"].as_str().unwrap_or("?"),
                            f["state"].as_str().unwrap_or("?"),
                            f["lag_transactions"],
                            f["lag_ms"]
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "  leader at {:>8}  {:>7.0} commits/s  | {}",
            s["position"].as_str().unwrap_or("?"),
            rate,
            lags.join("  |  ")
        );
    }
    Ok(())
}

async fn position_of(c: &Client) -> anyhow::Result<String> {
    Ok(c.get("/v1/status").await?["position"]
        .as_str()
        .unwrap_or("")
        .to_string())
}

async fn wait_for(c: &Client, position: &str, timeout: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let body = json!({ "sql": "SELECT 1", "min_position": position, "timeout_ms": timeout.as_millis() as u64 });
    c.post("/v1/query", &body)
        .await
        .with_context(|| format!("{} did not reach {position}", c.url()))?;
    Ok(start.elapsed())
}

pub async fn run(a: DemoArgs) -> anyhow::Result<()> {
    tokio::select! {
        r = async {
            if a.kind == "trigger" {
                crate::demo_trigger::run(a.quick, a.keep).await
            } else if a.kind == "failover" {
                crate::demo_failover::run(a.quick, a.keep).await
            } else if a.kind == "multi-dc" {
                crate::demo_multi_dc::run(a.quick, a.keep).await
            } else {
                demo(a).await
            }
        } => r,
        _ = tokio::signal::ctrl_c() => {
            // Dropping the demo future kills every node process and removes the directory.
            bail!("interrupted: stopped every node and removed the demo directory")
        }
    }
}

async fn demo(a: DemoArgs) -> anyhow::Result<()> {
    let step = if a.quick { 2.0 } else { 12.0 };
    let tmp = tempfile::Builder::new()
        .prefix("flotilla-demo-")
        .tempdir()?;
    let root = tmp.path().to_path_buf();
    let exe = flotilla_testkit::cluster::this_exe()?;
    println!("Flotilla demo in {}", root.display());

    println!("\n1. Starting a leader and two followers (physical WAL shipping) on loopback ports");
    let leader = LocalNode::start(&exe, &root, "leader", None, &[]).await?;
    let lc = Client::new(&leader.url);
    lc.post(
        "/v1/execute",
        &json!({ "statements": [{ "sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT)" }, { "sql": "CREATE INDEX t_k ON t(k)" }] }),
    )
    .await?;
    let f1 = LocalNode::start(&exe, &root, "follower1", Some(&leader.url), &[]).await?;
    let mut f2 = LocalNode::start(&exe, &root, "follower2", Some(&leader.url), &[]).await?;
    println!(
        "   leader {}  follower1 {}  follower2 {}",
        leader.url, f1.url, f2.url
    );

    println!("\n2. Write workload: 4 clients inserting, updating and deleting rows");
    let w = start_workload(&leader.url, 4);
    show_lag(&lc, &w, step).await?;

    println!("\n3. Killing follower2 (SIGKILL) while writes continue");
    f2.kill().await;
    show_lag(&lc, &w, step / 2.0).await?;
    let behind_at = position_of(&lc).await?;
    println!("   restarting follower2; the leader is at {behind_at}");
    let restart = Instant::now();
    f2.restart().await?;
    let f2c = Client::new(&f2.url);
    wait_for(&f2c, &behind_at, Duration::from_secs(60)).await?;
    println!(
        "   follower2 caught up to {behind_at} in {:.0} ms",
        restart.elapsed().as_secs_f64() * 1000.0
    );

    println!("\n4. Adding follower3 from a snapshot while writes continue");
    let added = Instant::now();
    let f3 = LocalNode::start(&exe, &root, "follower3", Some(&leader.url), &[]).await?;
    let f3c = Client::new(&f3.url);
    let target = position_of(&lc).await?;
    wait_for(&f3c, &target, Duration::from_secs(60)).await?;
    println!(
        "   follower3 bootstrapped and reached {target} in {:.0} ms",
        added.elapsed().as_secs_f64() * 1000.0
    );
    show_lag(&lc, &w, step / 2.0).await?;

    println!("\n5. Adding a logical follower that keeps only rows with id % 10 = 0");
    let predicate = "id % 10 = 0";
    let fl = LocalNode::start(
        &exe,
        &root,
        "logical",
        Some(&leader.url),
        &["--log", "logical", "--where", &format!("t: {predicate}")],
    )
    .await?;
    let flc = Client::new(&fl.url);
    let target = position_of(&lc).await?;
    wait_for(&flc, &target, Duration::from_secs(60)).await?;
    println!("   logical follower {} reached {target}", fl.url);
    show_lag(&lc, &w, step / 2.0).await?;

    println!("\n6. Stopping writes and checking every follower against the leader");
    let (commits, errors) = w.stop().await;
    let final_pos = position_of(&lc).await?;
    let check_sql = "SELECT count(*), coalesce(sum(k), 0), coalesce(sum(length(v)), 0) FROM t";
    let leader_rows = lc.post("/v1/query", &json!({ "sql": check_sql })).await?["rows"].clone();
    let leader_digest = page_digest(&leader.db_path())?;
    let mut diverged = Vec::new();
    println!(
        "   (each node: row count, sum of k, total length of v, then its page count and a digest \
         of every page)"
    );
    for f in [&f1, &f2, &f3] {
        let c = Client::new(&f.url);
        wait_for(&c, &final_pos, Duration::from_secs(60)).await?;
        let rows: Value = c
            .post(
                "/v1/query",
                &json!({ "sql": check_sql, "min_position": final_pos }),
            )
            .await?["rows"]
            .clone();
        let digest = page_digest(&f.db_path())?;
        let same = rows == leader_rows && digest == leader_digest;
        let r = &rows[0];
        println!(
            "   {:<10} at {final_pos}: {} rows, sum(k) {}, length(v) {}  pages {} digest {:016x}  {}",
            f.id,
            r[0],
            r[1],
            r[2],
            digest.0,
            digest.1,
            if same { "identical" } else { "DIFFERENT" }
        );
        if !same {
            diverged.push(f.id.clone());
        }
    }
    // The logical follower holds exactly the filtered rows (another page layout: no digest).
    wait_for(&flc, &final_pos, Duration::from_secs(60)).await?;
    let filtered_sql = format!("SELECT count(*), coalesce(sum(k), 0) FROM t WHERE {predicate}");
    let expected = lc
        .post("/v1/query", &json!({ "sql": filtered_sql }))
        .await?["rows"]
        .clone();
    let got = flc
        .post(
            "/v1/query",
            &json!({ "sql": "SELECT count(*), coalesce(sum(k), 0) FROM t" }),
        )
        .await?["rows"]
        .clone();
    println!(
        "   {:<10} at {final_pos}: {} rows, sum(k) {}; the leader's rows WHERE {predicate}: {} \
         rows, sum(k) {}  {}",
        fl.id,
        got[0][0],
        got[0][1],
        expected[0][0],
        expected[0][1],
        if got == expected {
            "identical"
        } else {
            "DIFFERENT"
        }
    );
    if got != expected {
        diverged.push(fl.id.clone());
    }

    println!("\n7. The change feed: the last two transactions as a consumer sees them");
    let pos: flotilla_types::Position = final_pos.parse()?;
    let from = format!("{}/{}", pos.epoch.0, pos.lsn.0.saturating_sub(2));
    let text = Client::new(&leader.url)
        .request(
            reqwest::Method::GET,
            &format!("/v1/changes?from={from}&follow=false"),
        )
        .send()
        .await?
        .text()
        .await?;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)?;
        let changes = v["changes"].as_array().cloned().unwrap_or_default();
        println!(
            "   {{\"position\": {}, \"commit_time_ms\": {}, {} changes, first: {}}}",
            v["position"],
            v["commit_time_ms"],
            changes.len(),
            changes
                .first()
                .map(|c| format!("{} {} key {}", c["op"], c["table"], c["key"]))
                .unwrap_or_else(|| "-".into())
        );
    }
    println!("   (flotilla changes --node {} tails it live)", leader.url);

    println!(
        "\nSummary: {commits} transactions committed ({errors} failed requests), leader at {final_pos}, \
         leader pages {} digest {:016x}",
        leader_digest.0, leader_digest.1
    );
    if a.keep {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    if !diverged.is_empty() {
        bail!("followers differ from the leader: {}", diverged.join(", "));
    }
    if commits == 0 {
        bail!("the workload committed nothing");
    }
    println!("All 3 physical followers are identical to the leader, and the logical follower holds exactly its filtered rows.");
    Ok(())
}
