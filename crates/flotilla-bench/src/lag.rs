//! `flotilla bench lag [--compare postgres]`: how stale a follower (a streaming standby) is at a
//! fixed fraction of the leader's (primary's) maximum load, measured the same way for both
//! systems, from the outside: writers commit rows with increasing keys at a steady rate and note
//! when each commit is acknowledged; a reader polls the follower for the highest key it holds.
//! Lag = visible − acknowledged (0 when the follower had it before the writer's answer arrived):
//! the gap a client reading its own write on a follower would see.
//!
//! When a key became visible is estimated from the polls around it: each poll reads at about
//! the middle of its round trip, so the key appeared between the middle of the last poll that
//! missed it and the middle of the first that saw it; the estimate is the middle of that
//! interval (an error of at most half a poll period either way, zero on average). The raw
//! figure — when the answer that first showed the key reached the reader — is reported beside
//! it: it adds half a poll period and the answer's way back on average, a bias as large as the
//! probe's own query latency (the poll period, also reported), which differs between the
//! systems.

use super::{percentile, Figure, SCHEMA};
use anyhow::Context;
use flotilla_client::Client;
use flotilla_testkit::cluster::{this_exe, LocalNode};
use flotilla_testkit::postgres::{find_or_install_bin, pg_root, PgServer};
use serde_json::json;
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Load as a fraction of the maximum measured first.
pub const LOAD_FRACTION: f64 = 0.5;
const WRITERS: usize = 4;

type Op = Arc<dyn Fn(i64) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;
type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<i64>> + Send>> + Send + Sync>;

pub struct SystemLag {
    pub max_tps: Figure,
    pub p50_ms: Figure,
    pub p99_ms: Figure,
    pub max_ms: Figure,
    /// The raw figures: when the answer that first showed a key arrived.
    pub seen_p50_ms: Figure,
    pub seen_p99_ms: Figure,
    pub poll_us: Figure,
    /// Every lag sample of the last run (ms), sorted: the CDF.
    pub samples: Vec<f64>,
}

impl SystemLag {
    fn new(system: &str) -> SystemLag {
        SystemLag {
            max_tps: Figure::new(&format!("{system} max commits, {WRITERS} clients"), "txn/s"),
            p50_ms: Figure::new(&format!("{system} lag p50"), "ms"),
            p99_ms: Figure::new(&format!("{system} lag p99"), "ms"),
            max_ms: Figure::new(&format!("{system} lag max"), "ms"),
            seen_p50_ms: Figure::new(&format!("{system} lag p50, seen by the reader"), "ms"),
            seen_p99_ms: Figure::new(&format!("{system} lag p99, seen by the reader"), "ms"),
            poll_us: Figure::new(&format!("{system} follower poll period"), "µs"),
            samples: Vec::new(),
        }
    }
}

pub struct LagResults {
    pub flotilla: SystemLag,
    pub postgres: Option<Result<SystemLag, String>>,
}

/// Back-to-back commits for `secs`: transactions/s.
async fn max_rate(op: &Op, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicI64::new(1 << 40));
    let done = Arc::new(AtomicI64::new(0));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (stop, next, done, op) = (stop.clone(), next.clone(), done.clone(), op.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if op(next.fetch_add(1, Ordering::Relaxed)).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let secs = t.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / secs
}

/// What [`measure`] found: lag samples in ms (sorted), estimated and as seen by the reader, and
/// the mean poll period in µs.
struct Measured {
    estimated: Vec<f64>,
    seen: Vec<f64>,
    poll_us: f64,
}

/// A poll that showed a higher key than any before it.
struct Sighting {
    max: i64,
    /// The middle of the poll before it (which did not show `max`), if any.
    before_mid: Option<Instant>,
    mid: Instant,
    answered: Instant,
}

/// Steady load at `rate` for `secs` with the follower polled.
async fn measure(op: Op, probe: Probe, rate: f64, secs: f64) -> anyhow::Result<Measured> {
    let acked: Arc<Mutex<HashMap<i64, Instant>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicI64::new(1));
    let per_writer = Duration::from_secs_f64(WRITERS as f64 / rate.max(1.0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (stop, next, acked, op) = (stop.clone(), next.clone(), acked.clone(), op.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(per_writer);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if op(k).await {
                        acked
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(k, Instant::now());
                    }
                }
            })
        })
        .collect();
    let seen: Arc<Mutex<Vec<Sighting>>> = Default::default();
    let poll_stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (seen, poll_stop, probe) = (seen.clone(), poll_stop.clone(), probe.clone());
        tokio::spawn(async move {
            let mut polls = 0u64;
            let t = Instant::now();
            let mut high = 0;
            let mut last_mid: Option<Instant> = None;
            while !poll_stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let answer = probe().await;
                let answered = Instant::now();
                let mid = sent + (answered - sent) / 2;
                if let Some(max) = answer {
                    if max > high {
                        high = max;
                        seen.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Sighting {
                                max,
                                before_mid: last_mid,
                                mid,
                                answered,
                            });
                    }
                    last_mid = Some(mid);
                }
                polls += 1;
            }
            t.elapsed().as_secs_f64() * 1e6 / polls.max(1) as f64
        })
    };
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let last = next.load(Ordering::Relaxed) - 1;
    // Let the follower show the last keys.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let high = seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .map_or(0, |s| s.max);
        if high >= last {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    poll_stop.store(true, Ordering::Relaxed);
    let poll_us = poller.await?;
    let acked = std::mem::take(&mut *acked.lock().unwrap_or_else(|p| p.into_inner()));
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    let (mut estimated, mut seen_lag) = (Vec::new(), Vec::new());
    let ms = |later: Instant, earlier: Instant| -> f64 {
        later.saturating_duration_since(earlier).as_secs_f64() * 1e3
    };
    for (k, at) in &acked {
        // The first poll that showed a key at or above k.
        let i = seen.partition_point(|s| s.max < *k);
        let Some(s) = seen.get(i) else {
            anyhow::bail!("key {k} was acknowledged but never became visible on the follower");
        };
        let visible = match s.before_mid {
            Some(before) => before + (s.mid - before) / 2,
            None => s.mid,
        };
        estimated.push(ms(visible, *at));
        seen_lag.push(ms(s.answered, *at));
    }
    anyhow::ensure!(!estimated.is_empty(), "no commits were acknowledged");
    estimated.sort_by(|a, b| a.total_cmp(b));
    seen_lag.sort_by(|a, b| a.total_cmp(b));
    Ok(Measured {
        estimated,
        seen: seen_lag,
        poll_us,
    })
}

fn record(s: &mut SystemLag, max_tps: f64, m: Measured) {
    s.seen_p50_ms.values.push(percentile(&m.seen, 0.5));
    s.seen_p99_ms.values.push(percentile(&m.seen, 0.99));
    let (samples, poll_us) = (m.estimated, m.poll_us);
    s.max_tps.values.push(max_tps);
    s.p50_ms.values.push(percentile(&samples, 0.5));
    s.p99_ms.values.push(percentile(&samples, 0.99));
    s.max_ms.values.push(*samples.last().expect("not empty"));
    s.poll_us.values.push(poll_us);
    s.samples = samples;
}

async fn flotilla_run(dir: &Path, secs: f64, out: &mut SystemLag) -> anyhow::Result<()> {
    let exe = this_exe()?;
    let leader = LocalNode::start(&exe, dir, "leader", None, &[]).await?;
    let lc = Client::new(&leader.url);
    lc.post(
        "/v1/execute",
        &json!({ "statements": [{ "sql": SCHEMA }, { "sql": "CREATE INDEX t_k ON t(k)" }] }),
    )
    .await?;
    let follower = LocalNode::start(&exe, dir, "follower", Some(&leader.url), &[]).await?;
    super::wait_for(&Client::new(&follower.url), &super::position(&lc).await?).await?;
    let url = leader.url.clone();
    let op: Op = Arc::new(move |k| {
        let c = Client::new(&url);
        Box::pin(async move { c.post("/v1/execute", &super::insert_one(k)).await.is_ok() })
    });
    let max = max_rate(&op, secs.min(2.0)).await;
    let fc = Arc::new(Client::new(&follower.url));
    let probe: Probe = Arc::new(move || {
        let fc = fc.clone();
        Box::pin(async move {
            let v = fc
                .post(
                    "/v1/query",
                    &json!({ "sql": "SELECT max(k) FROM t WHERE k < 1099511627776" }),
                )
                .await
                .ok()?;
            v["rows"][0][0].as_i64()
        })
    });
    let r = measure(op, probe, max * LOAD_FRACTION, secs).await?;
    record(out, max, r);
    Ok(())
}

async fn postgres_run(secs: f64, out: &mut SystemLag) -> anyhow::Result<()> {
    let bin = find_or_install_bin()?;
    let root = pg_root()?;
    let primary = PgServer::primary(
        &bin,
        &root.path().join("primary"),
        &[("synchronous_commit", "on")],
    )?;
    let standby = primary.standby(&root.path().join("standby"), &[])?;
    primary
        .connect()
        .await?
        .batch_execute(
            "CREATE TABLE t(id bigserial PRIMARY KEY, k bigint, v text); CREATE INDEX t_k ON t(k)",
        )
        .await?;
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let c = primary.connect().await?;
        let stmt = c.prepare("INSERT INTO t(k, v) VALUES ($1, $2)").await?;
        writers.push(Arc::new((c, stmt)));
    }
    let writers = Arc::new(writers);
    let turn = Arc::new(AtomicI64::new(0));
    let v = "v".repeat(100);
    let op: Op = Arc::new(move |k| {
        let (writers, v) = (writers.clone(), v.clone());
        // Each call takes the next connection (a connection runs one statement at a time).
        let i = turn.fetch_add(1, Ordering::Relaxed) as usize % WRITERS;
        Box::pin(async move {
            let (c, stmt) = &*writers[i];
            c.execute(stmt, &[&k, &v]).await.is_ok()
        })
    });
    let max = max_rate(&op, secs.min(2.0)).await;
    let sc = Arc::new(standby.connect().await?);
    let stmt = sc
        .prepare("SELECT max(k) FROM t WHERE k < 1099511627776")
        .await?;
    let probe: Probe = Arc::new(move || {
        let (sc, stmt) = (sc.clone(), stmt.clone());
        Box::pin(async move {
            sc.query_one(&stmt, &[])
                .await
                .ok()?
                .get::<_, Option<i64>>(0)
        })
    });
    // Truncate the max-rate rows so the probe sees only this run's keys.
    primary.connect().await?.batch_execute("TRUNCATE t").await?;
    let r = measure(op, probe, max * LOAD_FRACTION, secs).await?;
    record(out, max, r);
    drop(standby);
    Ok(())
}

pub async fn run(
    dir: &Path,
    runs: usize,
    secs: f64,
    compare_postgres: bool,
    progress: &dyn Fn(&str),
) -> anyhow::Result<LagResults> {
    let mut r = LagResults {
        flotilla: SystemLag::new("Flotilla"),
        postgres: compare_postgres.then(|| Ok(SystemLag::new("PostgreSQL"))),
    };
    for run in 0..runs {
        progress(&format!(
            "run {}/{runs}: Flotilla, leader and one follower",
            run + 1
        ));
        let d = dir.join(format!("lag{run}"));
        std::fs::create_dir_all(&d)?;
        flotilla_run(&d, secs, &mut r.flotilla)
            .await
            .with_context(|| format!("run {}: Flotilla", run + 1))?;
        let _ = std::fs::remove_dir_all(&d);
        if let Some(Ok(pg)) = &mut r.postgres {
            progress(&format!(
                "run {}/{runs}: PostgreSQL, primary and one standby",
                run + 1
            ));
            if let Err(e) = postgres_run(secs, pg).await {
                r.postgres = Some(Err(format!("{e:#}")));
            }
        }
    }
    Ok(r)
}

impl LagResults {
    pub fn figures(&self) -> Vec<&Figure> {
        fn of(s: &SystemLag) -> [&Figure; 7] {
            [
                &s.max_tps,
                &s.p50_ms,
                &s.p99_ms,
                &s.max_ms,
                &s.seen_p50_ms,
                &s.seen_p99_ms,
                &s.poll_us,
            ]
        }
        let mut v: Vec<&Figure> = of(&self.flotilla).to_vec();
        if let Some(Ok(pg)) = &self.postgres {
            v.extend(of(pg));
        }
        v
    }
}
