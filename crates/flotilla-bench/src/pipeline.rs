//! `flotilla bench pipeline`: what trigger-based replication costs the leader and how fast it
//! delivers into PostgreSQL (started here; without PostgreSQL's programs, into an NDJSON file).
//!
//! - leader commits (4 clients, one row each) without a pipeline, with one whose delivery is
//!   paused (the triggers' cost alone), and with one delivering flat out;
//! - backlog delivery: N changes captured while paused, then delivered: rows/s;
//! - steady-state delivery lag (source commit → target commit, per change) at half load.

use super::{fill, lag_of, leader_with_schema, position, solo_throughput, throughput, Figure};
use flotilla_client::Client;
use flotilla_testkit::postgres::{find_or_install_bin, pg_root, PgServer};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

pub struct PipelineSizes {
    pub runs: usize,
    pub secs: f64,
    /// Changes in the backlog (in transactions of 1,000 rows).
    pub backlog_rows: u64,
}

pub struct Results {
    pub target: String,
    pub figures: Vec<Figure>,
}

/// Waits (bounded by `limit`) until the pipeline's backlog is empty.
async fn drained(c: &Client, name: &str, limit: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let p = c.get(&format!("/v1/pipelines/{name}")).await?;
        if p["backlog_rows"] == json!(0) {
            return Ok(());
        }
        if t.elapsed() > limit {
            anyhow::bail!("pipeline {name} did not drain in {limit:?}: {p}");
        }
        // Status counts the backlog: polled gently, so as not to slow delivery down.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn set_paused(c: &Client, name: &str, paused: bool) -> anyhow::Result<Value> {
    let verb = if paused { "pause" } else { "resume" };
    c.post(&format!("/v1/pipelines/{name}/{verb}"), &Value::Null)
        .await
}

pub async fn run(
    exe: &Path,
    root: &Path,
    s: &PipelineSizes,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Results> {
    let pg_bin = match find_or_install_bin() {
        Ok(bin) => Some(bin),
        Err(e) => {
            eprintln!("{e:#}\n(delivering into an NDJSON file instead)");
            None
        }
    };
    let pg_root = pg_root()?;
    let mut figures = vec![
        Figure::new("leader commits, 4 clients, no pipeline", "txn/s"),
        Figure::new(
            "leader commits, pipeline installed, delivery paused",
            "txn/s",
        ),
        Figure::new("leader commits, pipeline delivering", "txn/s"),
        Figure::new("with pipeline (paused) / without", "ratio"),
        Figure::new("with pipeline (delivering) / without", "ratio"),
        Figure::new(
            &format!("backlog delivery, {} changes", s.backlog_rows),
            "rows/s",
        ),
        Figure::new("delivery lag at half load, p50", "ms"),
        Figure::new("delivery lag at half load, p99", "ms"),
    ];
    let mut target_kind = String::new();
    for run in 0..s.runs {
        let dir = root.join(format!("pipeline-run{run}"));
        std::fs::create_dir_all(&dir)?;
        // A fresh target each run.
        let pg = match &pg_bin {
            Some(bin) => Some(PgServer::primary(
                bin,
                &pg_root.path().join(format!("pg{run}")),
                &[("synchronous_commit", "on")],
            )?),
            None => None,
        };
        let target = match &pg {
            Some(pg) => {
                let c = pg.connect().await?;
                c.batch_execute("CREATE TABLE t (id bigint PRIMARY KEY, k bigint, v text)")
                    .await?;
                target_kind = "PostgreSQL (synchronous_commit=on)".into();
                format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port)
            }
            None => {
                target_kind = "NDJSON file".into();
                format!("file:{}", dir.join("changes.ndjson").display())
            }
        };

        progress(&format!(
            "run {}/{}: leader without a pipeline",
            run + 1,
            s.runs
        ));
        let tp0 = solo_throughput(exe, &dir, "plain", s.secs).await?;

        let (leader, lc) = leader_with_schema(exe, &dir, "leader").await?;
        lc.post(
            "/v1/pipelines",
            &json!({ "name": "bench", "source": "t", "target": target }),
        )
        .await?;
        progress("leader with a pipeline, delivery paused");
        set_paused(&lc, "bench", true).await?;
        let tp_paused = throughput(&leader.url, 4, s.secs).await;
        set_paused(&lc, "bench", false).await?;
        drained(&lc, "bench", Duration::from_secs(600)).await?;

        progress("leader with a pipeline delivering");
        let tp_live = throughput(&leader.url, 4, s.secs).await;
        drained(&lc, "bench", Duration::from_secs(600)).await?;

        progress("delivery lag at half load");
        let (p50, p99, _) = lag_of(
            &leader.url,
            &leader.url,
            "flotilla_pipeline_delivery_lag_seconds",
            tp_live / 2.0,
            s.secs,
        )
        .await?;
        drained(&lc, "bench", Duration::from_secs(600)).await?;

        progress("backlog delivery");
        set_paused(&lc, "bench", true).await?;
        fill(&lc, s.backlog_rows / 1000, 1000, 2).await?;
        let head = position(&lc).await?;
        let waiting = lc.get("/v1/pipelines/bench").await?["backlog_rows"]
            .as_u64()
            .unwrap_or(0);
        anyhow::ensure!(
            waiting >= s.backlog_rows,
            "the backlog holds {waiting} changes, expected {}",
            s.backlog_rows
        );
        let t = Instant::now();
        set_paused(&lc, "bench", false).await?;
        drained(&lc, "bench", Duration::from_secs(1800)).await?;
        let rate = waiting as f64 / t.elapsed().as_secs_f64();
        let _ = head;
        drop(leader);
        drop(pg);
        let _ = std::fs::remove_dir_all(&dir);

        figures[0].values.push(tp0);
        figures[1].values.push(tp_paused);
        figures[2].values.push(tp_live);
        figures[3].values.push(tp_paused / tp0);
        figures[4].values.push(tp_live / tp0);
        figures[5].values.push(rate);
        figures[6].values.push(p50);
        figures[7].values.push(p99);
    }
    Ok(Results {
        target: target_kind,
        figures,
    })
}
