//! `flotilla bench multi-leader`: data centres' leaders (`serve --dc`) on this machine, their
//! links through TCP proxies the bench can cut.
//!
//! - Merge rate: `us` merges a backlog of `eu`'s row changes (transactions of 1,000 inserted
//!   rows) once its link comes up — with no conflicts, and with 10% of the rows written in `us`
//!   too beforehand (each a conflict). Row changes merged per second, from the link coming up
//!   to `us` holding everything.
//! - Exchange lag under load: writers in both data centres (about 500 transactions a second
//!   each); probes written in `eu` and polled for in `us`: from `eu`'s answer to the row
//!   visible in `us`, p50 and p99.
//! - Leader throughput with two peer data centres reading its log ÷ alone (4 clients).
//! - Convergence after a partition: `eu` and `us` cut apart, N conflicting updates on each
//!   side, healed: the time until both hold the same rows.

use super::{percentile, say, scratch_dir, BenchArgs, Figure};
use crate::commit::drive;
use anyhow::{bail, Context};
use flotilla_client::Client;
use flotilla_testkit::cluster::this_exe;
use flotilla_testkit::data_centres::DataCentres;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Sizes {
    runs: usize,
    secs: f64,
    backlog_rows: u64,
    partition_updates: u64,
}

/// Data centres with proxies in between (see `flotilla_testkit::data_centres`).
struct Dcs(DataCentres);

impl Dcs {
    async fn start(exe: &Path, root: &Path, names: &[&str]) -> anyhow::Result<Dcs> {
        Ok(Dcs(DataCentres::start(exe, root, names, &[]).await?))
    }

    fn client(&self, i: usize) -> Client {
        Client::new(&self.0.leaders[i].url)
    }

    fn link(&self, from: usize, to: usize, up: bool) {
        self.0.link(from, to, up)
    }
}

async fn exec(c: &Client, statements: Value) -> anyhow::Result<Value> {
    c.post("/v1/execute", &json!({ "statements": statements }))
        .await
}

/// The version vector entry of `origin` on a node.
async fn vv(c: &Client, origin: &str) -> anyhow::Result<u64> {
    Ok(
        c.get("/v1/status").await?["multi_leader"]["version_vector"][origin]
            .as_u64()
            .unwrap_or(0),
    )
}

/// Waits until `c` has merged `origin` up to `target` (bounded).
async fn caught_up(
    c: &Client,
    origin: &str,
    target: u64,
    within: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while vv(c, origin).await? < target {
        if started.elapsed() > within {
            bail!(
                "{} did not merge {origin} up to {target} within {within:?}",
                c.url()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(started.elapsed())
}

const TABLE: &str = "CREATE TABLE t (id TEXT PRIMARY KEY, v INTEGER NOT NULL, s TEXT)";

/// One merge-rate run: `eu` writes the backlog while `us` is cut off; then the link comes up.
async fn merge_rate(
    exe: &Path,
    root: &Path,
    rows: u64,
    conflict_share: f64,
) -> anyhow::Result<f64> {
    let d = Dcs::start(exe, root, &["eu", "us"]).await?;
    let (eu, us) = (d.client(0), d.client(1));
    exec(&eu, json!([{ "sql": TABLE }])).await?;
    caught_up(&us, "eu", vv(&eu, "eu").await?, Duration::from_secs(30)).await?;
    d.link(1, 0, false);
    let per_txn = 1000u64;
    let s = "x".repeat(50);
    for t in 0..rows / per_txn {
        let values: Vec<String> = (0..per_txn)
            .map(|i| format!("('k{}', {}, '{s}')", t * per_txn + i, i))
            .collect();
        exec(
            &eu,
            json!([{ "sql": format!("INSERT INTO t (id, v, s) VALUES {}", values.join(", ")) }]),
        )
        .await?;
    }
    // The conflicting share, written in `us` meanwhile: the same keys, other values.
    let conflicting = (rows as f64 * conflict_share) as u64;
    let mut k = 0;
    while k < conflicting {
        let n = per_txn.min(conflicting - k);
        let values: Vec<String> = (0..n)
            .map(|i| format!("('k{}', -1, 'us')", (k + i) * 10))
            .collect();
        exec(
            &us,
            json!([{ "sql": format!("INSERT INTO t (id, v, s) VALUES {}", values.join(", ")) }]),
        )
        .await?;
        k += n;
    }
    let target = vv(&eu, "eu").await?;
    let before = vv(&us, "eu").await?;
    d.link(1, 0, true);
    // The clock starts at the first merged transaction (the link reconnects after a back-off
    // of up to a second first), and counts the rows of those merged after it.
    let first = loop {
        let now = vv(&us, "eu").await?;
        if now > before {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let started = Instant::now();
    caught_up(&us, "eu", target, Duration::from_secs(600)).await?;
    let secs = started.elapsed().as_secs_f64();
    // One transaction of `per_txn` rows per position of eu's log after the table's.
    let merged = (target - first) as f64 * per_txn as f64;
    Ok(merged / secs)
}

/// Exchange lag under load: probes written in `eu`, polled for in `us`.
async fn exchange_lag(exe: &Path, root: &Path, secs: f64) -> anyhow::Result<Vec<f64>> {
    let d = Dcs::start(exe, root, &["eu", "us"]).await?;
    let (eu, us) = (Arc::new(d.client(0)), Arc::new(d.client(1)));
    exec(&eu, json!([{ "sql": TABLE }])).await?;
    caught_up(&us, "eu", vv(&eu, "eu").await?, Duration::from_secs(30)).await?;
    // Background load: two writers in each data centre, each about 250 transactions a
    // second (a steady load, well under what the machine can commit: lag at saturation would
    // measure the queue, not the exchange).
    let load = {
        let (eu, us) = (eu.clone(), us.clone());
        tokio::spawn(async move {
            drive(4, secs, move |c, i| {
                let target = if c % 2 == 0 { eu.clone() } else { us.clone() };
                async move {
                    let body = json!([{ "sql": "INSERT INTO t (id, v) VALUES (?1, ?2)", "params": [format!("load-{c}-{i}"), i] }]);
                    let ok = exec(&target, body).await.is_ok();
                    tokio::time::sleep(Duration::from_millis(4)).await;
                    ok
                }
            })
            .await
        })
    };
    let mut lags = Vec::new();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed().as_secs_f64() < secs {
        n += 1;
        let key = format!("probe-{n}");
        exec(
            &eu,
            json!([{ "sql": "INSERT INTO t (id, v) VALUES (?1, 0)", "params": [key] }]),
        )
        .await?;
        let acked = Instant::now();
        loop {
            let r = us
                .post(
                    "/v1/query",
                    &json!({ "sql": "SELECT 1 FROM t WHERE id = ?1", "params": [key] }),
                )
                .await?;
            if r["rows"].as_array().is_some_and(|r| !r.is_empty()) {
                break;
            }
            if acked.elapsed() > Duration::from_secs(10) {
                bail!("probe {key} did not reach us within 10 s");
            }
        }
        lags.push(acked.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = load.await;
    lags.sort_by(|a, b| a.total_cmp(b));
    Ok(lags)
}

/// Commit throughput at `eu` (4 clients): alone, and with two peer data centres reading it.
async fn throughput(exe: &Path, root: &Path, secs: f64, peers: bool) -> anyhow::Result<f64> {
    let names: &[&str] = if peers {
        &["eu", "us", "asia"]
    } else {
        &["eu"]
    };
    let d = Dcs::start(exe, root, names).await?;
    let eu = Arc::new(d.client(0));
    exec(&eu, json!([{ "sql": TABLE }])).await?;
    let (tps, _) = drive(4, secs, move |c, i| {
        let eu = eu.clone();
        async move {
            let body = json!([{ "sql": "INSERT INTO t (id, v) VALUES (?1, ?2)", "params": [format!("{c}-{i}"), i] }]);
            exec(&eu, body).await.is_ok()
        }
    })
    .await;
    Ok(tps)
}

/// A curve: (ms since the heal, % merged), per data centre.
type Curves = Vec<(String, Vec<(f64, f64)>)>;

/// Convergence after a partition with `n` conflicting updates on each side: the time, and the
/// share of the other side's transactions each has merged over time.
async fn convergence(exe: &Path, root: &Path, n: u64) -> anyhow::Result<(f64, Curves)> {
    let d = Dcs::start(exe, root, &["eu", "us"]).await?;
    let (eu, us) = (d.client(0), d.client(1));
    exec(&eu, json!([{ "sql": TABLE }])).await?;
    let values: Vec<String> = (0..n).map(|i| format!("('c{i}', 0, '')")).collect();
    exec(
        &eu,
        json!([{ "sql": format!("INSERT INTO t (id, v, s) VALUES {}", values.join(", ")) }]),
    )
    .await?;
    caught_up(&us, "eu", vv(&eu, "eu").await?, Duration::from_secs(60)).await?;
    for (a, b) in [(0, 1), (1, 0)] {
        d.link(a, b, false);
    }
    for i in 0..n {
        for (c, who) in [(&eu, "eu"), (&us, "us")] {
            exec(c, json!([{ "sql": "UPDATE t SET s = ?1, v = v + 1 WHERE id = ?2", "params": [format!("{who}-{i}"), format!("c{i}")] }])).await?;
        }
    }
    let (te, tu) = (vv(&eu, "eu").await?, vv(&us, "us").await?);
    let (se, su) = (vv(&us, "eu").await?, vv(&eu, "us").await?);
    let started = Instant::now();
    for (a, b) in [(0, 1), (1, 0)] {
        d.link(a, b, true);
    }
    let (mut at_us, mut at_eu) = (Vec::new(), Vec::new());
    let share = |now: u64, from: u64, to: u64| {
        100.0 * (now.saturating_sub(from)) as f64 / (to.saturating_sub(from)).max(1) as f64
    };
    loop {
        let (u, e) = (vv(&us, "eu").await?, vv(&eu, "us").await?);
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        at_us.push((ms, share(u, se, te)));
        at_eu.push((ms, share(e, su, tu)));
        if u >= te && e >= tu {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("eu and us did not converge within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed().as_secs_f64() * 1000.0;
    let q = "SELECT id, v, s FROM t ORDER BY id";
    let (a, b) = (
        eu.post("/v1/query", &json!({ "sql": q })).await?["rows"].clone(),
        us.post("/v1/query", &json!({ "sql": q })).await?["rows"].clone(),
    );
    if a != b {
        bail!("eu and us differ after the partition healed");
    }
    Ok((
        took,
        vec![
            ("us merging eu's".into(), at_us),
            ("eu merging us's".into(), at_eu),
        ],
    ))
}

pub async fn run_scenario(a: BenchArgs) -> anyhow::Result<()> {
    // PostgreSQL 16's two-way logical replication (`origin = none`) is what this compares
    // with best; Debian 12 installs PostgreSQL 15, so the comparison is its one-way logical
    // apply of the same rows (a subscription catching up), which a two-way set-up would run
    // on each side too.
    let compare = a.compare.is_some();
    let s = if a.quick {
        Sizes {
            runs: a.runs.unwrap_or(1),
            secs: 1.0,
            backlog_rows: 20_000,
            partition_updates: 100,
        }
    } else {
        Sizes {
            runs: a.runs.unwrap_or(3),
            secs: 5.0,
            backlog_rows: 200_000,
            partition_updates: 1_000,
        }
    };
    let tmp = scratch_dir()?;
    let exe = this_exe()?;
    let mut figures = Vec::new();
    let mut fig = |name: &str, unit: &'static str| {
        figures.push(Figure::new(name, unit));
        figures.len() - 1
    };
    let mut curves: Curves = Vec::new();
    let mut pg_apply = Figure::new("PostgreSQL 15 logical apply, same rows (one-way)", "rows/s");
    let (m0, m10, lag50, lag99, alone, with, ratio, conv) = (
        fig("merge rate, no conflicts", "rows/s"),
        fig("merge rate, 10% conflicting", "rows/s"),
        fig("exchange lag under load p50", "ms"),
        fig("exchange lag under load p99", "ms"),
        fig("leader commits, alone (4 clients)", "txn/s"),
        fig("leader commits, two peers reading", "txn/s"),
        fig("with two peers / alone", "x"),
        fig(
            &format!(
                "converge after a partition, {} conflicting updates a side",
                s.partition_updates
            ),
            "ms",
        ),
    );
    for run in 0..s.runs {
        let dir = |what: &str| tmp.path().join(format!("{what}-{run}"));
        say(
            &a,
            &format!("run {}/{}: merge rate, no conflicts", run + 1, s.runs),
        );
        figures[m0].values.push(
            merge_rate(&exe, &dir("m0"), s.backlog_rows, 0.0)
                .await
                .context("merge rate")?,
        );
        if compare {
            say(
                &a,
                &format!(
                    "run {}/{}: PostgreSQL's logical apply of the same rows",
                    run + 1,
                    s.runs
                ),
            );
            pg_apply.values.push(
                crate::postgres_side::logical_catchup(s.backlog_rows / 1000, 1000)
                    .await
                    .context("PostgreSQL's logical apply")?,
            );
        }
        say(
            &a,
            &format!("run {}/{}: merge rate, 10% conflicting", run + 1, s.runs),
        );
        figures[m10].values.push(
            merge_rate(&exe, &dir("m10"), s.backlog_rows, 0.1)
                .await
                .context("merge rate with conflicts")?,
        );
        say(
            &a,
            &format!("run {}/{}: exchange lag under load", run + 1, s.runs),
        );
        let lags = exchange_lag(&exe, &dir("lag"), s.secs)
            .await
            .context("exchange lag")?;
        figures[lag50].values.push(percentile(&lags, 0.5));
        figures[lag99].values.push(percentile(&lags, 0.99));
        say(
            &a,
            &format!("run {}/{}: leader throughput", run + 1, s.runs),
        );
        let t_alone = throughput(&exe, &dir("alone"), s.secs, false).await?;
        let t_with = throughput(&exe, &dir("with"), s.secs, true).await?;
        figures[alone].values.push(t_alone);
        figures[with].values.push(t_with);
        figures[ratio].values.push(t_with / t_alone);
        say(
            &a,
            &format!("run {}/{}: convergence after a partition", run + 1, s.runs),
        );
        let (took, c) = convergence(&exe, &dir("conv"), s.partition_updates)
            .await
            .context("convergence")?;
        figures[conv].values.push(took);
        if curves.is_empty() {
            curves = c;
        }
    }
    super::done_saying();
    if compare {
        let ratio = figures[m0].median() / pg_apply.median();
        let mut r = Figure::new(
            "merge rate (no conflicts) / PostgreSQL's logical apply",
            "x",
        );
        r.values.push(ratio);
        figures.push(pg_apply);
        figures.push(r);
    }
    if a.json {
        let out: Vec<Value> = figures.iter().map(Figure::json).collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        super::print_figures("multi-leader (median of runs [min..max])", &figures);
    }
    if let Some(dir) = &a.report {
        std::fs::create_dir_all(dir)?;
        let png = dir.join("multi-leader-convergence.png");
        crate::report::convergence(
            &png,
            &format!(
                "Converging after a partition: {} conflicting updates on each side",
                s.partition_updates
            ),
            &curves,
        )?;
        let mut md = String::from(
            "# flotilla bench multi-leader\n\n| figure | median | min | max |\n| --- | --- | --- | --- |\n",
        );
        for f in &figures {
            md.push_str(&f.markdown_row());
        }
        md.push_str("\n![convergence](multi-leader-convergence.png)\n");
        let report = dir.join("report.md");
        std::fs::write(&report, md)?;
        if !a.json {
            println!("wrote {}\nwrote {}", report.display(), png.display());
        }
    }
    Ok(())
}
