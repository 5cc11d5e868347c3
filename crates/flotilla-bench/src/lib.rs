//! `flotilla bench`: replication benchmarks on real node processes, with the machine's floors
//! (fsync latency, bare SQLite commit rate) measured in the same run. Figures are medians over
//! repeated runs with [min..max]; compare ratios, not absolute numbers (shared machines are noisy).

mod backup;
mod collab;
mod commit;
mod devices;
mod failover;
mod floors;
mod lag;
mod memory;
mod multi_leader;
mod pipeline;
mod postgres_side;
mod report;
mod security;
mod versus;

use anyhow::Context;
use clap::Args;
use flotilla_client::Client;
use flotilla_testkit::cluster::{this_exe, LocalNode};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
#[command(after_help = "Examples:
  flotilla bench commit --compare postgres --report docs/bench/commit
  flotilla bench lag --runs 3
  flotilla bench backup --compare postgres      # backup and restore MiB/s")]
pub struct BenchArgs {
    /// What to measure: `all` (throughput, lag, catch-up, bootstrap, logical), `commit`
    /// (throughput and latency at 1, 4 and 16 clients with 0, 1 and 2 followers) or `pipeline`
    /// (trigger-based replication into PostgreSQL: leader cost, backlog rate, delivery lag).
    /// `lag` measures follower staleness at half load from the outside (with --compare
    /// postgres, a streaming standby's too).
    /// `catchup`, `bootstrap` and `logical` run those parts of `all` alone (each with
    /// --compare postgres: a streaming standby, pg_basebackup, publication/subscription).
    /// `security` measures what authentication and TLS cost commits (1, 4 and 16 clients, open
    /// vs tokens vs tokens over TLS).
    /// `memory` measures peak resident memory: a follower catching up a 2 GiB backlog, and a
    /// leader committing while a follower has stopped reading.
    /// `backup` measures backup and restore of a 1 GiB database (with --compare postgres,
    /// pg_dump and pg_restore of the same rows) and the shell's start-up (psql's).
    /// `failover` runs a three-member cluster: commits per durability, failover time over
    /// --runs SIGKILLs of the leader, and throughput across a failover.
    /// `multi-leader` runs data centres' leaders: merge rate (with and without conflicts),
    /// exchange lag under load, leader throughput with two peers, convergence after a partition
    /// (with --compare postgres: PostgreSQL 15's logical apply of the same rows).
    /// `devices` runs offline devices against a data centre: offline changes to a second
    /// device end to end, a no-op sync, an initial sync, many devices at once.
    /// `collab` sends the automerge-paper editing trace keystroke by keystroke through a
    /// collaborative document to a second client, measures keystroke latency and 1,000 editors
    /// across 100 documents (with --compare yjs: y-websocket's stock server on Node).
    #[arg(default_value = "all", value_parser = ["all", "commit", "lag", "catchup", "bootstrap", "logical", "pipeline", "security", "memory", "backup", "failover", "multi-leader", "devices", "collab"])]
    scenario: String,
    /// Run the same workload against PostgreSQL (started here, from its installed programs) and
    /// print its figures beside Flotilla's, with the ratio (every scenario but `all` and
    /// `pipeline`, which always delivers into PostgreSQL).
    #[arg(long, value_name = "SYSTEM", value_parser = ["postgres", "yjs"])]
    compare: Option<String>,
    /// Also write a Markdown report into this directory, with PNG plots for `commit` (throughput
    /// and p99 vs clients) and `lag` (CDF); every scenario but `all` and `pipeline`.
    #[arg(long, value_name = "DIR")]
    report: Option<std::path::PathBuf>,
    /// Small sizes and one short run each (seconds, not minutes).
    #[arg(long)]
    quick: bool,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Runs per figure (median, min and max are reported).
    #[arg(long)]
    runs: Option<usize>,
}

pub(crate) struct Sizes {
    pub runs: usize,
    pub secs: f64,
    pub big_txns: u64,
    pub big_rows: u64,
    pub small_txns: u64,
    pub snapshot_mib: u64,
}

impl Sizes {
    /// The sizes of `all`, `catchup`, `bootstrap` and `logical`: small with --quick.
    fn of(a: &BenchArgs) -> Sizes {
        if a.quick {
            Sizes {
                runs: a.runs.unwrap_or(1),
                secs: 1.0,
                big_txns: 50,
                big_rows: 1000,
                small_txns: 2_000,
                snapshot_mib: 16,
            }
        } else {
            Sizes {
                runs: a.runs.unwrap_or(3),
                secs: 5.0,
                big_txns: 1000,
                big_rows: 1000,
                small_txns: 100_000,
                snapshot_mib: 256,
            }
        }
    }
}

/// A figure over repeated runs.
#[derive(Clone)]
pub(crate) struct Figure {
    name: String,
    unit: &'static str,
    values: Vec<f64>,
}

impl Figure {
    pub(crate) fn new(name: &str, unit: &'static str) -> Figure {
        Figure {
            name: name.into(),
            unit,
            values: Vec::new(),
        }
    }

    /// The middle value; with an even number of runs, the mean of the two middle ones.
    pub(crate) fn median(&self) -> f64 {
        let mut v = self.values.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        if n.is_multiple_of(2) && n > 0 {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        } else {
            v[n / 2]
        }
    }
    pub(crate) fn min(&self) -> f64 {
        self.values.iter().cloned().fold(f64::INFINITY, f64::min)
    }
    pub(crate) fn max(&self) -> f64 {
        self.values
            .iter()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max)
    }
    /// `| name | median unit | min | max |`
    pub(crate) fn markdown_row(&self) -> String {
        format!(
            "| {} | {:.2} {} | {:.2} | {:.2} |\n",
            self.name,
            self.median(),
            self.unit,
            self.min(),
            self.max()
        )
    }

    pub(crate) fn json(&self) -> Value {
        json!({ "name": self.name, "unit": self.unit, "median": self.median(),
                "min": self.min(), "max": self.max(), "runs": self.values })
    }
}

/// The benchmark's temporary directory (removed when dropped, also on Ctrl-C).
fn scratch_dir() -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("flotilla-bench-")
        .tempdir()?)
}

/// Progress on stderr while a scenario runs: a spinner with the elapsed time and the current
/// step on a terminal, a line per step otherwise, nothing with --json.
fn say(a: &BenchArgs, msg: &str) {
    if a.json {
        return;
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!("  … {msg}");
        return;
    }
    let bar = SPINNER.get_or_init(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .expect("template"),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    bar.set_message(msg.to_string());
}

static SPINNER: std::sync::OnceLock<indicatif::ProgressBar> = std::sync::OnceLock::new();

/// Clears the spinner before the results are printed.
fn done_saying() {
    if let Some(b) = SPINNER.get() {
        b.finish_and_clear();
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// 4 KiB overwrite + fdatasync, p50 in microseconds: which disk regime this run saw.
pub(crate) fn fsync_probe_us(dir: &Path) -> anyhow::Result<f64> {
    use std::io::{Seek, Write};
    let path = dir.join("fsync.probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let block = vec![7u8; 4096];
    let mut samples = Vec::new();
    for _ in 0..200 {
        f.seek(std::io::SeekFrom::Start(0))?;
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let _ = std::fs::remove_file(&path);
    Ok(percentile(&samples, 0.5))
}

/// Plain SQLite, WAL, synchronous=FULL, one 100-byte row per transaction, one thread.
pub(crate) fn bare_sqlite_tps(dir: &Path, secs: f64) -> anyhow::Result<f64> {
    let path = dir.join("bare.sqlite");
    let conn = rusqlite::Connection::open(&path)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT);",
    )?;
    let v = "v".repeat(100);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        conn.execute(
            "INSERT INTO t(k, v) VALUES (?1, ?2)",
            rusqlite::params![n as i64, v],
        )?;
        n += 1;
    }
    let tps = n as f64 / start.elapsed().as_secs_f64();
    drop(conn);
    for s in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{s}", path.display()));
    }
    Ok(tps)
}

pub(crate) const SCHEMA: &str = "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT)";

/// A new leader `id` in `root` holding the benchmark's table, and a client of it.
pub(crate) async fn leader_with_schema(
    exe: &Path,
    root: &Path,
    id: &str,
) -> anyhow::Result<(LocalNode, Client)> {
    let leader = LocalNode::start(exe, root, id, None, &[]).await?;
    let lc = Client::new(&leader.url);
    leader_with_schema_as(&lc, SCHEMA).await?;
    Ok((leader, lc))
}

/// Creates the bench table through `client`.
pub(crate) async fn leader_with_schema_as(client: &Client, schema: &str) -> anyhow::Result<()> {
    client
        .post("/v1/execute", &json!({ "statements": [{ "sql": schema }] }))
        .await?;
    Ok(())
}

/// Commit throughput (4 clients, one row each) of a leader `id` without followers, which is
/// stopped afterwards: the baseline every "with … / without" ratio divides by.
pub(crate) async fn solo_throughput(
    exe: &Path,
    root: &Path,
    id: &str,
    secs: f64,
) -> anyhow::Result<f64> {
    let (leader, _) = leader_with_schema(exe, root, id).await?;
    Ok(throughput(&leader.url, 4, secs).await)
}

pub(crate) fn insert_one(k: i64) -> Value {
    json!({ "statements": [{ "sql": "INSERT INTO t(k, v) VALUES (?1, ?2)", "params": [k, "v".repeat(100)] }] })
}

/// `clients` tasks inserting one row per transaction for `secs`; returns transactions/s.
pub(crate) async fn throughput(url: &str, clients: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, done, client) = (stop.clone(), done.clone(), Client::new(url));
            tokio::spawn(async move {
                let mut k = (c as i64) << 40;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    if client.post("/v1/execute", &insert_one(k)).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / elapsed
}

/// A lag histogram of `node`'s metrics (`flotilla_apply_lag_seconds` on a follower,
/// `flotilla_pipeline_delivery_lag_seconds` on a leader with pipelines): (upper bound in ms,
/// cumulative count).
async fn lag_histogram(node: &str, metric: &str) -> anyhow::Result<Vec<(f64, u64)>> {
    let text = Client::new(node)
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await?
        .text()
        .await?;
    let mut out = Vec::new();
    let prefix = format!("{metric}_bucket{{le=\"");
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(prefix.as_str()) else {
            continue;
        };
        let (le, count) = rest.split_once("\"} ").context("histogram line")?;
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse::<f64>()? * 1e3
        };
        out.push((bound, count.trim().parse()?));
    }
    anyhow::ensure!(!out.is_empty(), "{node} exports no {metric} histogram");
    Ok(out)
}

/// Commit-to-visible lag on `follower` while about `rate` transactions/s go to the leader, as
/// the follower measures it (leader commit time in the record → its own apply commit; both on
/// this machine's clock). Returns (p50, p99, max) in ms — bucket upper bounds, ±12%.
async fn lag(
    leader: &str,
    follower: &str,
    rate: f64,
    secs: f64,
) -> anyhow::Result<(f64, f64, f64)> {
    lag_of(leader, follower, "flotilla_apply_lag_seconds", rate, secs).await
}

/// [`lag`], read from any node's lag histogram `metric`.
pub(crate) async fn lag_of(
    leader: &str,
    node: &str,
    metric: &str,
    rate: f64,
    secs: f64,
) -> anyhow::Result<(f64, f64, f64)> {
    let before = lag_histogram(node, metric).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = 4usize;
    let per_client = Duration::from_secs_f64(clients as f64 / rate.max(1.0));
    let load: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, client) = (stop.clone(), Client::new(leader));
            tokio::spawn(async move {
                let mut k = ((c + 10) as i64) << 40;
                let mut tick = tokio::time::interval(per_client);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    k += 1;
                    let _ = client.post("/v1/execute", &insert_one(k)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = lag_histogram(node, metric).await?;
    // Per-bucket counts of this window.
    let counts: Vec<(f64, u64)> = after
        .iter()
        .zip(&before)
        .scan(0u64, |prev, ((b, a), (_, c))| {
            let cum = a - c;
            let n = cum - *prev;
            *prev = cum;
            Some((*b, n))
        })
        .collect();
    let total: u64 = counts.iter().map(|c| c.1).sum();
    anyhow::ensure!(
        total > 0,
        "no transactions were applied during the lag measurement"
    );
    let quantile = |q: f64| {
        let target = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (b, n) in &counts {
            seen += n;
            if seen >= target.max(1) {
                return *b;
            }
        }
        f64::INFINITY
    };
    Ok((quantile(0.5), quantile(0.99), quantile(1.0)))
}

pub(crate) async fn position(c: &Client) -> anyhow::Result<String> {
    Ok(c.get("/v1/status").await?["position"]
        .as_str()
        .unwrap_or("")
        .to_string())
}

pub(crate) async fn wait_for(c: &Client, pos: &str) -> anyhow::Result<()> {
    let q = json!({ "sql": "SELECT 1", "min_position": pos, "timeout_ms": 600_000 });
    c.post("/v1/query", &q).await.map(|_| ())
}

/// Fills the leader with `txns` transactions of `rows` rows (100-byte values) each.
pub(crate) async fn fill(c: &Client, txns: u64, rows: u64, clients: u64) -> anyhow::Result<()> {
    let tasks: Vec<_> = (0..clients)
        .map(|w| {
            let c = Client::new(c.url());
            tokio::spawn(async move {
                let mut i = w;
                while i < txns {
                    let body = if rows == 1 {
                        insert_one(i as i64)
                    } else {
                        json!({ "statements": [{ "sql": format!(
                            "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows}) \
                             INSERT INTO t(k, v) SELECT ?1 * {rows} + i, hex(randomblob(50)) FROM s"),
                            "params": [i as i64] }] })
                    };
                    c.post("/v1/execute", &body).await?;
                    i += clients;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Catch-up rates: (rows/s, txn/s).
type CatchUp = (f64, f64);

/// A physical and a logical follower stopped while the leader commits `txns` × `rows`, then
/// restarted one after the other: their catch-up rates, and the change feed's rate over the
/// same transactions (txn/s, read to the end with follow=false).
pub(crate) async fn catchup(
    exe: &Path,
    root: &Path,
    txns: u64,
    rows: u64,
) -> anyhow::Result<(CatchUp, CatchUp, f64)> {
    let (leader, lc) = leader_with_schema(exe, root, "leader").await?;
    let start = position(&lc).await?;
    let mut fp = LocalNode::start(exe, root, "physical", Some(&leader.url), &[]).await?;
    let mut fl = LocalNode::start(
        exe,
        root,
        "logical",
        Some(&leader.url),
        &["--log", "logical"],
    )
    .await?;
    for f in [&fp, &fl] {
        wait_for(&Client::new(&f.url), &start).await?;
    }
    fp.kill().await;
    fl.kill().await;
    fill(&lc, txns, rows, 4).await?;
    let head = position(&lc).await?;
    // The feed first, while the stopped followers still hold the log back.
    let t = Instant::now();
    let mut resp = Client::new(&leader.url)
        .request(
            reqwest::Method::GET,
            &format!("/v1/changes?from={start}&follow=false"),
        )
        .send()
        .await?;
    let mut lines = 0u64;
    while let Some(chunk) = resp.chunk().await? {
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
    }
    // Rates are in client transactions, like the catch-up figures; group commit may have made
    // fewer log records of them, one feed line each.
    let feed = txns as f64 / t.elapsed().as_secs_f64();
    let lsn = |p: &str| {
        p.rsplit('/')
            .next()
            .and_then(|l| l.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let records = lsn(&head) - lsn(&start);
    anyhow::ensure!(
        lines == records,
        "the change feed returned {lines} of {records} transactions"
    );
    let mut rates = Vec::new();
    for f in [&mut fp, &mut fl] {
        let t = Instant::now();
        f.restart().await?;
        wait_for(&Client::new(&f.url), &head).await?;
        let secs = t.elapsed().as_secs_f64();
        rates.push(((txns * rows) as f64 / secs, txns as f64 / secs));
    }
    Ok((rates[0], rates[1], feed))
}

/// A new follower of a database of about `mib` MiB: bootstrap rate in MiB/s (process start
/// included).
pub(crate) async fn bootstrap(exe: &Path, root: &Path, mib: u64) -> anyhow::Result<f64> {
    let (leader, lc) = leader_with_schema(exe, root, "leader").await?;
    // About 1 MiB per transaction of 10,000 100-byte rows.
    fill(&lc, mib, 10_000, 2).await?;
    let bytes = std::fs::metadata(leader.db_path())?.len()
        + std::fs::metadata(leader.dir.join("db.sqlite-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    let head = position(&lc).await?;
    let size: Value = lc
        .post("/v1/query", &json!({ "sql": "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()" }))
        .await?;
    let db_bytes = size["rows"][0][0].as_f64().unwrap_or(bytes as f64);
    let t = Instant::now();
    let f = LocalNode::start(exe, root, "new", Some(&leader.url), &[]).await?;
    wait_for(&Client::new(&f.url), &head).await?;
    Ok(db_bytes / (1 << 20) as f64 / t.elapsed().as_secs_f64())
}

/// Runs the benchmark; Ctrl-C drops it, which stops every node and PostgreSQL server it started
/// and removes their directories.
pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    tokio::select! {
        r = bench(a) => r,
        _ = tokio::signal::ctrl_c() => {
            anyhow::bail!("interrupted: stopped every process the benchmark started and removed its directories")
        }
    }
}

async fn bench(a: BenchArgs) -> anyhow::Result<()> {
    if a.compare.is_some() && (a.scenario == "all" || a.scenario == "pipeline") {
        anyhow::bail!(
            "--compare postgres runs with one scenario at a time: commit, lag, catchup, \
             bootstrap or logical (pipeline always delivers into PostgreSQL)"
        );
    }
    if matches!(a.scenario.as_str(), "catchup" | "bootstrap" | "logical") {
        return run_versus(a).await;
    }
    if a.scenario == "backup" {
        return backup::run_scenario(a).await;
    }
    if a.scenario == "multi-leader" {
        return multi_leader::run_scenario(a).await;
    }
    if a.scenario == "collab" {
        if a.compare.as_deref().is_some_and(|c| c != "yjs") {
            anyhow::bail!("bench collab compares with a stock Yjs server: --compare yjs");
        }
        return collab::run_scenario(a).await;
    }
    if a.compare.as_deref() == Some("yjs") {
        anyhow::bail!("--compare yjs is for bench collab");
    }
    if a.scenario == "devices" {
        if a.compare.is_some() {
            anyhow::bail!("bench devices has no --compare: its figures stand beside PowerSync's published ones");
        }
        return devices::run_scenario(a).await;
    }
    if a.scenario == "failover" {
        if a.compare.is_some() {
            anyhow::bail!("bench failover has no --compare yet");
        }
        return failover::run_scenario(a).await;
    }
    if a.scenario == "lag" {
        return run_lag(a).await;
    }
    if a.scenario == "commit" {
        return commit::run_scenario(a).await;
    }
    if a.scenario == "pipeline" {
        return run_pipeline(a).await;
    }
    if a.scenario == "security" {
        return run_security(a).await;
    }
    if a.scenario == "memory" {
        return run_memory(a).await;
    }
    if a.report.is_some() {
        anyhow::bail!("--report is available for the commit scenario so far: flotilla bench commit --report DIR");
    }
    let s = Sizes::of(&a);
    let exe = this_exe()?;
    let tmp = scratch_dir()?;
    let progress = |msg: &str| say(&a, msg);
    let mut figures: Vec<Figure> = Vec::new();
    let mut fig = |name: &str, unit: &'static str| -> usize {
        figures.push(Figure {
            name: name.into(),
            unit,
            values: Vec::new(),
        });
        figures.len() - 1
    };
    let (
        f_fsync,
        f_bare,
        f_tp0,
        f_tp2,
        f_ratio,
        f_p50,
        f_p99,
        f_max,
        f_cu_rows,
        f_cu_small,
        f_boot,
        f_tpl,
        f_lratio,
        f_lp50,
        f_lp99,
        f_lcu_rows,
        f_lcu_small,
        f_feed,
    ) = (
        fig("fsync 4 KiB p50 (disk regime)", "µs"),
        fig(
            "bare SQLite commits, WAL, synchronous=FULL, 1 thread",
            "txn/s",
        ),
        fig("leader commits, 4 clients, 0 followers", "txn/s"),
        fig("leader commits, 4 clients, 2 followers", "txn/s"),
        fig("throughput with 2 followers / without", "ratio"),
        fig("commit-to-visible lag at half load, p50", "ms"),
        fig("commit-to-visible lag at half load, p99", "ms"),
        fig("commit-to-visible lag at half load, max", "ms"),
        fig(
            &format!("catch-up {} txns × {} rows", s.big_txns, s.big_rows),
            "rows/s",
        ),
        fig(
            &format!("catch-up {} single-row txns", s.small_txns),
            "txn/s",
        ),
        fig(
            &format!("snapshot bootstrap, {} MiB", s.snapshot_mib),
            "MiB/s",
        ),
        fig(
            "logical: leader commits, 4 clients, 1 logical follower",
            "txn/s",
        ),
        fig(
            "logical: throughput with 1 logical follower / without",
            "ratio",
        ),
        fig("logical: commit-to-visible lag at half load, p50", "ms"),
        fig("logical: commit-to-visible lag at half load, p99", "ms"),
        fig(
            &format!(
                "logical: catch-up {} txns × {} rows",
                s.big_txns, s.big_rows
            ),
            "rows/s",
        ),
        fig(
            &format!("logical: catch-up {} single-row txns", s.small_txns),
            "txn/s",
        ),
        fig(
            &format!("logical: change feed over {} single-row txns", s.small_txns),
            "txn/s",
        ),
    );
    for run in 0..s.runs {
        let dir = tmp.path().join(format!("run{run}"));
        std::fs::create_dir_all(&dir)?;
        progress(&format!("run {}/{}: floors", run + 1, s.runs));
        figures[f_fsync].values.push(fsync_probe_us(&dir)?);
        figures[f_bare].values.push(bare_sqlite_tps(&dir, s.secs)?);

        progress("commit throughput without followers");
        let tp0 = solo_throughput(&exe, &dir, "solo", s.secs).await?;

        progress("commit throughput with 2 followers");
        let (leader, lc) = leader_with_schema(&exe, &dir, "leader").await?;
        let f1 = LocalNode::start(&exe, &dir, "f1", Some(&leader.url), &[]).await?;
        let f2 = LocalNode::start(&exe, &dir, "f2", Some(&leader.url), &[]).await?;
        wait_for(&Client::new(&f2.url), &position(&lc).await?).await?;
        let tp2 = throughput(&leader.url, 4, s.secs).await;
        figures[f_tp0].values.push(tp0);
        figures[f_tp2].values.push(tp2);
        figures[f_ratio].values.push(tp2 / tp0);

        progress("commit-to-visible lag at half load");
        let (p50, p99, max) = lag(&leader.url, &f1.url, tp2 / 2.0, s.secs).await?;
        figures[f_p50].values.push(p50);
        figures[f_p99].values.push(p99);
        figures[f_max].values.push(max);
        drop((leader, f1, f2));

        progress("commit throughput and lag with 1 logical follower");
        let (leader, lc) = leader_with_schema(&exe, &dir, "lleader").await?;
        let fl =
            LocalNode::start(&exe, &dir, "lf", Some(&leader.url), &["--log", "logical"]).await?;
        wait_for(&Client::new(&fl.url), &position(&lc).await?).await?;
        let tpl = throughput(&leader.url, 4, s.secs).await;
        figures[f_tpl].values.push(tpl);
        figures[f_lratio].values.push(tpl / tp0);
        let (p50, p99, _) = lag(&leader.url, &fl.url, tpl / 2.0, s.secs).await?;
        figures[f_lp50].values.push(p50);
        figures[f_lp99].values.push(p99);
        drop((leader, fl));

        progress("catch-up (physical and logical) and change feed, large transactions");
        let d = dir.join("catchup-big");
        let ((rows_s, _), (lrows_s, _), _) = catchup(&exe, &d, s.big_txns, s.big_rows)
            .await
            .context("catch-up (large)")?;
        figures[f_cu_rows].values.push(rows_s);
        figures[f_lcu_rows].values.push(lrows_s);
        progress("catch-up (physical and logical) and change feed, single-row transactions");
        let d = dir.join("catchup-small");
        let ((_, txn_s), (_, ltxn_s), feed) = catchup(&exe, &d, s.small_txns, 1)
            .await
            .context("catch-up (small)")?;
        figures[f_cu_small].values.push(txn_s);
        figures[f_lcu_small].values.push(ltxn_s);
        figures[f_feed].values.push(feed);

        progress("snapshot bootstrap");
        let d = dir.join("bootstrap");
        figures[f_boot].values.push(
            bootstrap(&exe, &d, s.snapshot_mib)
                .await
                .context("bootstrap")?,
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    done_saying();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "figures": figures.iter().map(Figure::json).collect::<Vec<_>>() })
            )?
        );
        return Ok(());
    }
    print_figures(
        &format!(
            "Flotilla replication (physical and logical), {} run(s) each (median [min..max])",
            s.runs
        ),
        &figures,
    );
    let regime = if figures[f_fsync].median() > 1000.0 {
        "slow (throttled)"
    } else {
        "fast"
    };
    println!("\nDisk regime: {regime}. Ratios to compare: leader/bare SQLite = {:.2}, 2 followers/0 = {:.2}.",
        figures[f_tp0].median() / figures[f_bare].median(), figures[f_ratio].median());
    Ok(())
}

pub(crate) fn print_figures(title: &str, figures: &[Figure]) {
    println!("\n{title}\n");
    let w = figures.iter().map(|f| f.name.len()).max().unwrap_or(10);
    for f in figures {
        println!(
            "{:<w$}  {:>12.2} {:<6} [{:.2}..{:.2}]",
            f.name,
            f.median(),
            f.unit,
            f.min(),
            f.max()
        );
    }
}

async fn run_pipeline(a: BenchArgs) -> anyhow::Result<()> {
    if a.report.is_some() {
        anyhow::bail!("--report is available for the commit scenario so far");
    }
    let sizes = if a.quick {
        pipeline::PipelineSizes {
            runs: a.runs.unwrap_or(1),
            secs: 1.0,
            backlog_rows: 20_000,
        }
    } else {
        pipeline::PipelineSizes {
            runs: a.runs.unwrap_or(3),
            secs: 5.0,
            backlog_rows: 1_000_000,
        }
    };
    let exe = this_exe()?;
    let tmp = scratch_dir()?;
    let progress = |msg: &str| say(&a, msg);
    let fsync = fsync_probe_us(tmp.path())?;
    let r = pipeline::run(&exe, tmp.path(), &sizes, &progress).await?;
    done_saying();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "target": r.target, "fsync_p50_us": fsync,
                "figures": r.figures.iter().map(Figure::json).collect::<Vec<_>>() }))?
        );
        return Ok(());
    }
    print_figures(
        &format!(
            "Trigger-based replication into {}, {} run(s) each (median [min..max]); fsync p50 {fsync:.0} µs",
            r.target, sizes.runs
        ),
        &r.figures,
    );
    println!(
        "\nPostgreSQL's own logical replication catches up at about 103k rows/s on this machine \
         (docs/performance.md): backlog delivery / that = {:.2}.",
        r.figures[5].median() / 103_000.0
    );
    Ok(())
}

async fn run_versus(a: BenchArgs) -> anyhow::Result<()> {
    let s = Sizes::of(&a);
    let exe = this_exe()?;
    let tmp = scratch_dir()?;
    let progress = |msg: &str| say(&a, msg);
    let (pairs, own) = versus::run(
        &a.scenario,
        &exe,
        tmp.path(),
        &s,
        a.compare.is_some(),
        &progress,
    )
    .await?;
    done_saying();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&versus::json(&a.scenario, &pairs, &own))?
        );
    } else {
        versus::print(
            &format!(
                "flotilla bench {}, {} run(s) each (median [min..max])",
                a.scenario, s.runs
            ),
            &pairs,
            &own,
        );
    }
    if let Some(dir) = &a.report {
        let written = report::write_versus(dir, &a.scenario, &pairs, &own)?;
        if !a.json {
            for p in written {
                println!("wrote {}", p.display());
            }
        }
    }
    Ok(())
}

async fn run_lag(a: BenchArgs) -> anyhow::Result<()> {
    let (runs, secs) = if a.quick {
        (a.runs.unwrap_or(1), 1.0)
    } else {
        (a.runs.unwrap_or(3), 5.0)
    };
    let tmp = scratch_dir()?;
    let progress = |msg: &str| say(&a, msg);
    let r = lag::run(tmp.path(), runs, secs, a.compare.is_some(), &progress).await?;
    done_saying();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "scenario": "lag",
                "figures": r.figures().iter().map(|f| f.json()).collect::<Vec<_>>(),
                "postgres_error": match &r.postgres { Some(Err(e)) => json!(e), _ => Value::Null },
            }))?
        );
    } else {
        let figures: Vec<Figure> = r.figures().into_iter().cloned().collect();
        print_figures(
            &format!(
                "Follower lag at {:.0}% of the maximum load, measured from the outside; {runs} run(s) (median [min..max])",
                lag::LOAD_FRACTION * 100.0
            ),
            &figures,
        );
        match &r.postgres {
            Some(Ok(p)) => println!(
                "\nFlotilla / PostgreSQL (lower is better): p50 {:.2}, p99 {:.2}",
                r.flotilla.p50_ms.median() / p.p50_ms.median(),
                r.flotilla.p99_ms.median() / p.p99_ms.median()
            ),
            Some(Err(e)) => println!("\nPostgreSQL: not measured: {e}"),
            None => {}
        }
    }
    if let Some(dir) = &a.report {
        let written = report::write_lag(dir, &r)?;
        if !a.json {
            for p in written {
                println!("wrote {}", p.display());
            }
        }
    }
    Ok(())
}

async fn run_security(a: BenchArgs) -> anyhow::Result<()> {
    if a.compare.is_some() || a.report.is_some() {
        anyhow::bail!(
            "the security scenario compares Flotilla with itself: no --compare or --report"
        );
    }
    let (runs, secs) = if a.quick {
        (a.runs.unwrap_or(1), 0.5)
    } else {
        (a.runs.unwrap_or(3), 5.0)
    };
    let tmp = scratch_dir()?;
    let progress = |msg: &str| say(&a, msg);
    let results = security::run(tmp.path(), runs, secs, &progress).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results.json())?);
    } else {
        results.print();
    }
    Ok(())
}

async fn run_memory(a: BenchArgs) -> anyhow::Result<()> {
    if a.compare.is_some() || a.report.is_some() {
        anyhow::bail!("the memory scenario measures Flotilla alone: no --compare or --report");
    }
    let (runs, backlog_mib, stalled_mib) = if a.quick {
        (a.runs.unwrap_or(1), 48, 48)
    } else {
        (a.runs.unwrap_or(1), 2048, 1024)
    };
    let tmp = scratch_dir()?;
    let progress = |msg: &str| say(&a, msg);
    let results = memory::run(tmp.path(), runs, backlog_mib, stalled_mib, &progress).await?;
    done_saying();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results.json())?);
    } else {
        results.print();
    }
    Ok(())
}
