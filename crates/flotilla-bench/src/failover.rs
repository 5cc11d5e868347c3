//! `flotilla bench failover`: a three-member cluster (`serve --cluster`) on this machine.
//!
//! - Commit throughput and latency at 1, 4 and 16 clients for `async`, `semi-sync` and `quorum`
//!   writes on the leader.
//! - Failover time, over `--runs` rounds (default 20): four writers send `quorum` inserts with
//!   idempotency keys to whoever leads; the leader is SIGKILLed; the time from the kill to the
//!   first write a new leader acknowledges. Then the killed member comes back and catches up
//!   before the next round.
//! - Throughput over time across the first failover (acknowledged writes per 100 ms), plotted
//!   with `--report DIR`.

use super::{percentile, say, scratch_dir, BenchArgs, Figure};
use crate::commit::{drive, drive_inserts};
use anyhow::Context;
use flotilla_client::Client;
use flotilla_testkit::cluster::{start_voters, this_exe, LocalNode};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENTS: [usize; 3] = [1, 4, 16];
const DURABILITIES: [&str; 3] = ["async", "semi-sync", "quorum"];
const BUCKET_MS: u64 = 100;
/// Clients of the read matrix.
const READ_CLIENTS: usize = 4;
/// The reads measured on the same cluster: (where, label, extra request fields).
const READS: [(&str, &str, &str); 5] = [
    ("leader", "local", "{}"),
    (
        "leader",
        "linearizable",
        r#"{"consistency": "linearizable"}"#,
    ),
    ("follower", "local", "{}"),
    ("follower", "max_lag_ms 1000", r#"{"max_lag_ms": 1000}"#),
    (
        "follower",
        "linearizable",
        r#"{"consistency": "linearizable"}"#,
    ),
];

struct Cluster {
    members: Vec<LocalNode>,
    urls: Vec<String>,
}

impl Cluster {
    async fn start(exe: &Path, root: &Path, election_timeout_ms: u64) -> anyhow::Result<Cluster> {
        let timeout = election_timeout_ms.to_string();
        let members = start_voters(exe, root, 3, &["--election-timeout-ms", &timeout]).await?;
        let urls = members.iter().map(|m| m.url.clone()).collect();
        Ok(Cluster { members, urls })
    }

    /// The member all running members agree leads (bounded wait).
    async fn leader(&self, up: &[usize]) -> anyhow::Result<usize> {
        let started = Instant::now();
        loop {
            let mut views = Vec::new();
            for &i in up {
                let v = Client::new(&self.urls[i]).get("/v1/cluster").await.ok();
                views.push(v.and_then(|v| v["leader_url"].as_str().map(str::to_string)));
            }
            if let Some(Some(l)) = views.first() {
                if views.iter().all(|v| v.as_deref() == Some(l.as_str())) {
                    if let Some(i) = self.urls.iter().position(|u| u == l) {
                        // Agreed, and the leader's database is open for writes.
                        let status = Client::new(&self.urls[i]).get("/v1/status").await;
                        if status.is_ok_and(|s| s["role"] == "leader") {
                            return Ok(i);
                        }
                    }
                }
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "the members did not agree on a leader within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An acknowledged write: when, and by which member.
type Ack = (Instant, String);

/// Writers sending quorum inserts to whoever leads until `stop`; each acknowledgement is noted.
fn writers(
    urls: Vec<String>,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    seq: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|_| {
            let (urls, stop, acks, seq) = (urls.clone(), stop.clone(), acks.clone(), seq.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(3))
                    .build()
                    .expect("client");
                let mut target = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let k = seq.fetch_add(1, Ordering::Relaxed);
                    let body = json!({
                        "statements": [{"sql": "INSERT INTO t(k, v) VALUES (?1, 'x')", "params": [k]}],
                        "idempotency_key": format!("f{k}"),
                        "durability": "quorum",
                    });
                    // Retried with its key until acknowledged or stopped.
                    while !stop.load(Ordering::Relaxed) {
                        let url = urls[target % urls.len()].clone();
                        match http.post(format!("{url}/v1/execute")).json(&body).send().await {
                            Ok(r) if r.status().is_success() => {
                                acks.lock().unwrap_or_else(|p| p.into_inner()).push((Instant::now(), url));
                                break;
                            }
                            Ok(r) if r.status().as_u16() == 421 => {
                                let v: Value = r.json().await.unwrap_or(Value::Null);
                                match v["error"]["leader"].as_str().and_then(|l| urls.iter().position(|u| u == l)) {
                                    Some(i) => target = i,
                                    None => {
                                        target += 1;
                                        tokio::time::sleep(Duration::from_millis(20)).await;
                                    }
                                }
                            }
                            _ => {
                                target += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

/// The shortest election timeout docs/failover.md calls safe on one machine or a LAN.
pub const SHORT_TIMEOUT_MS: u64 = 300;

pub struct FailoverResults {
    commit: Vec<(&'static str, usize, Figure, Figure, Figure)>,
    /// Point reads by guarantee: (where, label, reads/s, p50 ms, p99 ms).
    reads: Vec<(&'static str, &'static str, f64, f64, f64)>,
    failover_ms: Vec<f64>,
    /// The same with `--election-timeout-ms` [`SHORT_TIMEOUT_MS`].
    short_failover_ms: Vec<f64>,
    /// (ms from the kill, acknowledged writes in that 100 ms) of the first round.
    timeline: Vec<(f64, f64)>,
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

pub async fn run_scenario(a: BenchArgs) -> anyhow::Result<()> {
    let (runs, secs) = if a.quick {
        (a.runs.unwrap_or(3), 1.0)
    } else {
        (a.runs.unwrap_or(20), 3.0)
    };
    let tmp = scratch_dir()?;
    let exe = this_exe()?;
    say(&a, "starting a cluster of three members");
    let mut c = Cluster::start(&exe, &tmp.path().join("default"), 1000).await?;
    let l = c.leader(&[0, 1, 2]).await?;
    Client::new(&c.urls[l])
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT)"}],
                    "durability": "quorum"}),
        )
        .await
        .context("creating the table")?;
    let mut commit = Vec::new();
    for d in DURABILITIES {
        for clients in CLIENTS {
            say(&a, &format!("commits: {d}, {clients} clients"));
            let name = |what: &str| format!("cluster {d} {what}, {clients} clients");
            let (mut tps, mut p50, mut p99) = (
                Figure::new(&name("commits"), "txn/s"),
                Figure::new(&name("latency p50"), "ms"),
                Figure::new(&name("latency p99"), "ms"),
            );
            let (t, mut lat) =
                drive_inserts(Arc::new(Client::new(&c.urls[l])), clients, secs, d).await;
            lat.sort_by(|a, b| a.total_cmp(b));
            tps.values.push(t);
            p50.values.push(percentile(&lat, 0.5) / 1000.0);
            p99.values.push(percentile(&lat, 0.99) / 1000.0);
            commit.push((d, clients, tps, p50, p99));
        }
    }
    say(&a, "reads by guarantee");
    let follower = (l + 1) % 3;
    let mut reads = Vec::new();
    for (at, label, extra) in READS {
        let url = if at == "leader" {
            &c.urls[l]
        } else {
            &c.urls[follower]
        };
        let client = Arc::new(Client::new(url));
        let extra: Value = serde_json::from_str(extra).expect("valid JSON");
        let (qps, mut lat) = drive(READ_CLIENTS, secs, move |_, i| {
            let (client, mut body) = (client.clone(), extra.clone());
            async move {
                body["sql"] = json!("SELECT k FROM t WHERE id = ?1");
                body["params"] = json!([1 + i % 1000]);
                client.post("/v1/query", &body).await.is_ok()
            }
        })
        .await;
        lat.sort_by(|a, b| a.total_cmp(b));
        reads.push((
            at,
            label,
            qps,
            percentile(&lat, 0.5) / 1000.0,
            percentile(&lat, 0.99) / 1000.0,
        ));
    }
    let (failover_ms, timeline) = failovers(&a, &mut c, runs, "").await?;
    drop(c);
    say(
        &a,
        &format!("a cluster with --election-timeout-ms {SHORT_TIMEOUT_MS}"),
    );
    let mut short = Cluster::start(&exe, &tmp.path().join("short"), SHORT_TIMEOUT_MS).await?;
    let l = short.leader(&[0, 1, 2]).await?;
    Client::new(&short.urls[l])
        .post(
            "/v1/execute",
            &json!({"statements": [{"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT)"}],
                    "durability": "quorum"}),
        )
        .await
        .context("creating the table")?;
    let (short_failover_ms, _) = failovers(&a, &mut short, runs, " (short timeout)").await?;
    super::done_saying();
    let r = FailoverResults {
        commit,
        reads,
        failover_ms,
        short_failover_ms,
        timeline,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r.json())?);
    } else {
        r.print();
    }
    if let Some(dir) = &a.report {
        for p in r.write_report(dir)? {
            if !a.json {
                println!("wrote {}", p.display());
            }
        }
    }
    Ok(())
}

/// `runs` rounds: writers on, the leader SIGKILLed, the time to the first write a new leader
/// acknowledges; the first round's throughput over time.
async fn failovers(
    a: &BenchArgs,
    c: &mut Cluster,
    runs: usize,
    what: &str,
) -> anyhow::Result<(Vec<f64>, Vec<(f64, f64)>)> {
    let mut failover_ms = Vec::new();
    let mut timeline = Vec::new();
    let seq = Arc::new(AtomicU64::new(1_000_000));
    for run in 0..runs {
        say(a, &format!("failover {}/{runs}{what}", run + 1));
        let all = [0usize, 1, 2];
        let leader = c.leader(&all).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let tasks = writers(c.urls.clone(), stop.clone(), acks.clone(), seq.clone());
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let killed_url = c.urls[leader].clone();
        let killed_at = Instant::now();
        c.members[leader].kill().await;
        // The first write a new leader acknowledges.
        let first = loop {
            let found = acks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(t, url)| *t > killed_at && *url != killed_url)
                .map(|(t, _)| *t)
                .min();
            if let Some(t) = found {
                break t;
            }
            anyhow::ensure!(
                killed_at.elapsed() < Duration::from_secs(60),
                "no write was acknowledged within 60 s of killing the leader"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        failover_ms.push((first - killed_at).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        if run == 0 {
            let acks = acks.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let start = killed_at - Duration::from_millis(1000);
            let buckets = (2500 + 1000) / BUCKET_MS as usize;
            let mut counts = vec![0f64; buckets];
            for (t, _) in acks.iter().filter(|(t, _)| *t >= start) {
                let i = ((*t - start).as_millis() as u64 / BUCKET_MS) as usize;
                if i < buckets {
                    counts[i] += 1.0;
                }
            }
            timeline = counts
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    (
                        (i as f64 * BUCKET_MS as f64) - 1000.0,
                        n * (1000.0 / BUCKET_MS as f64),
                    )
                })
                .collect();
        }
        c.members[leader].restart().await?;
        c.leader(&all).await?;
    }
    Ok((failover_ms, timeline))
}

impl FailoverResults {
    fn sorted(&self) -> Vec<f64> {
        sorted(&self.failover_ms)
    }

    pub fn json(&self) -> Value {
        let v = self.sorted();
        json!({
            "scenario": "failover",
            "commit": self.commit.iter().map(|(d, c, tps, p50, p99)| json!({
                "durability": d, "clients": c, "tps": tps.json(), "p50_ms": p50.json(), "p99_ms": p99.json(),
            })).collect::<Vec<_>>(),
            "reads": self.reads.iter().map(|(at, label, qps, p50, p99)| json!({
                "at": at, "guarantee": label, "clients": READ_CLIENTS, "reads_per_s": qps,
                "p50_ms": p50, "p99_ms": p99,
            })).collect::<Vec<_>>(),
            "failover_ms": {"runs": self.failover_ms, "p50": percentile(&v, 0.5), "p99": percentile(&v, 0.99),
                            "max": v.last().copied().unwrap_or(f64::NAN)},
            "short_timeout_ms": SHORT_TIMEOUT_MS,
            "short_failover_ms": {"runs": self.short_failover_ms,
                                  "p50": percentile(&sorted(&self.short_failover_ms), 0.5),
                                  "p99": percentile(&sorted(&self.short_failover_ms), 0.99)},
            "timeline": self.timeline.iter().map(|(t, n)| json!([t, n])).collect::<Vec<_>>(),
        })
    }

    fn print(&self) {
        println!("\nA cluster of three members on this machine (flotilla serve --cluster).\n");
        println!("Commit throughput on the leader, one row per transaction (txn/s; latency p50/p99 ms):\n");
        println!(
            "  {:>10} {:>7}  {:>10}  {:>14}",
            "durability", "clients", "txn/s", "p50/p99 ms"
        );
        for (d, c, tps, p50, p99) in &self.commit {
            println!(
                "  {:>10} {:>7}  {:>10.0}  {:>6.2}/{:<6.2}",
                d,
                c,
                tps.median(),
                p50.median(),
                p99.median()
            );
        }
        println!(
            "\nPoint reads, {READ_CLIENTS} clients (reads/s; latency p50/p99 ms; x = of a local \
             read on the same node):\n"
        );
        for (at, label, qps, p50, p99) in &self.reads {
            let base = self
                .reads
                .iter()
                .find(|r| r.0 == *at && r.1 == "local")
                .map_or(f64::NAN, |r| r.2);
            println!(
                "  {at:>8} {label:>16}  {qps:>8.0}  {p50:>6.2}/{p99:<6.2}  {:.2}x",
                qps / base
            );
        }
        for (label, runs) in [
            (
                "election timeout 1000 ms (default)".to_string(),
                &self.failover_ms,
            ),
            (
                format!("election timeout {SHORT_TIMEOUT_MS} ms"),
                &self.short_failover_ms,
            ),
        ] {
            let v = sorted(runs);
            println!(
                "\nFailover (leader SIGKILLed -> first write acknowledged by the new leader), \
                 {label}, {} runs: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                v.len(),
                percentile(&v, 0.5),
                percentile(&v, 0.99),
                v.last().copied().unwrap_or(f64::NAN)
            );
        }
    }

    fn write_report(&self, dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
        use std::fmt::Write as _;
        std::fs::create_dir_all(dir)?;
        let png = dir.join("failover-throughput.png");
        crate::report::throughput_over_time(
            &png,
            "Quorum writes acknowledged across a failover (leader SIGKILLed at 0 ms)",
            &self.timeline,
        )?;
        let v = self.sorted();
        let mut md = String::from("# Flotilla benchmark: failover\n\n");
        let _ = writeln!(
            md,
            "Three members of a cluster on this machine (`flotilla serve --cluster`).\n\n\
             ## Commit throughput on the leader\n\n| durability | clients | txn/s | p50 / p99 ms |\n| --- | --- | --- | --- |"
        );
        for (d, c, tps, p50, p99) in &self.commit {
            let _ = writeln!(
                md,
                "| {d} | {c} | {:.0} | {:.2} / {:.2} |",
                tps.median(),
                p50.median(),
                p99.median()
            );
        }
        let _ = writeln!(
            md,
            "\n## Point reads by guarantee ({READ_CLIENTS} clients)\n\n| node | guarantee | reads/s | \
             p50 / p99 ms |\n| --- | --- | --- | --- |"
        );
        for (at, label, qps, p50, p99) in &self.reads {
            let _ = writeln!(md, "| {at} | {label} | {qps:.0} | {p50:.2} / {p99:.2} |");
        }
        let _ =
            writeln!(
            md,
            "\n## Failover\n\nFour writers send `quorum` inserts with idempotency keys to whoever \
             leads; the leader is SIGKILLed; the time until a new leader acknowledges a write. \
             {} runs: **p50 {:.0} ms, p99 {:.0} ms**, max {:.0} ms (runs: {:?}). With \
             `--election-timeout-ms {SHORT_TIMEOUT_MS}`: p50 {:.0} ms, p99 {:.0} ms (runs: {:?}).\n\n\
             ![throughput over time](failover-throughput.png)",
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            v.last().copied().unwrap_or(f64::NAN),
            self.failover_ms.iter().map(|x| x.round() as u64).collect::<Vec<_>>(),
            percentile(&sorted(&self.short_failover_ms), 0.5),
            percentile(&sorted(&self.short_failover_ms), 0.99),
            self.short_failover_ms.iter().map(|x| x.round() as u64).collect::<Vec<_>>()
        );
        let md_path = dir.join("report.md");
        std::fs::write(&md_path, md)?;
        Ok(vec![md_path, png])
    }
}
