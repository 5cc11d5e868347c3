//! `flotilla bench devices`: offline devices against a data centre's leader (`serve --dc
//! --auth`) on this machine, over loopback HTTP.
//!
//! - End to end: N changes made offline on one device (N one-row transactions) reach a second
//!   device of the same user: the first device's sync (push, the server's merge of each
//!   transaction, the answer) and then the second's (pull). Time, and bytes on the wire per
//!   change (both devices, both ways).
//! - A no-op sync of an up-to-date device: p50 and p99.
//! - Initial sync of a large shape: a fresh device pulls R rows (rows per second; PowerSync
//!   publishes this figure for its clients).
//! - Many devices at once: D devices of D users, each with its own rows, sync at the same time
//!   (first sync, push one transaction, sync again) — the time until all are done, and the
//!   server's peak memory.

use super::{percentile, say, scratch_dir, BenchArgs, Figure};
use anyhow::{ensure, Context};
use flotilla_client::Client;
use flotilla_device::Device;
use flotilla_testkit::cluster::{proc_mib, this_exe, LocalNode};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

struct Sizes {
    runs: usize,
    changes: u64,
    noops: usize,
    initial_rows: u64,
    devices: usize,
}

struct Server {
    node: LocalNode,
    admin: Client,
}

const SCHEMA: &str =
    "CREATE TABLE events (id TEXT PRIMARY KEY, owner TEXT NOT NULL, title TEXT, n INTEGER)";

async fn server(exe: &Path, root: &Path) -> anyhow::Result<Server> {
    let node = LocalNode::start(exe, root, "home", None, &["--dc", "home", "--auth"]).await?;
    let token = std::fs::read_to_string(node.dir.join("admin.token"))?
        .trim()
        .to_string();
    let admin = Client::with_token(&node.url, &token);
    admin
        .post("/v1/execute", &json!({ "statements": [{ "sql": SCHEMA }] }))
        .await?;
    admin
        .put(
            "/v1/shapes",
            &json!({ "table": "events", "where": "owner = :user" }),
        )
        .await?;
    Ok(Server { node, admin })
}

async fn add_device(s: &Server, name: &str, user: &str) -> anyhow::Result<String> {
    let v = s
        .admin
        .post("/v1/devices", &json!({ "name": name, "user": user }))
        .await?;
    Ok(v["token"].as_str().unwrap_or_default().to_string())
}

/// Runs blocking device work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// What the end-to-end run measured.
struct EndToEnd {
    /// The server's CPU time during the first device's sync, in seconds.
    push_server_cpu: f64,
    /// The first device's sync (push and merge) and the second's (pull), in seconds.
    push_secs: f64,
    pull_secs: f64,
    bytes_per_change: f64,
    /// No-op sync latencies, in ms, sorted.
    noop_ms: Vec<f64>,
}

async fn end_to_end(
    exe: &Path,
    root: &Path,
    changes: u64,
    noops: usize,
) -> anyhow::Result<EndToEnd> {
    let s = server(exe, root).await?;
    let (ta, tb) = (
        add_device(&s, "phone", "ana").await?,
        add_device(&s, "laptop", "ana").await?,
    );
    let url = s.node.url.clone();
    let dir = root.to_path_buf();
    let pid = s.node.pid().context("the server's pid")?;
    let server_cpu = move || -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let rest = stat[stat.rfind(')')? + 2..].to_string();
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
            })
            .unwrap_or(0.0)
    };
    blocking(move || {
        let mut a = Device::open(dir.join("a.db"), &url, &ta)?;
        let mut b = Device::open(dir.join("b.db"), &url, &tb)?;
        a.sync()?;
        b.sync()?;
        a.set_offline(true)?;
        for i in 0..changes {
            a.execute(
                "INSERT INTO events VALUES (?1, 'ana', ?2, ?3)",
                rusqlite::params![format!("e{i:06}"), format!("meeting {i}"), i as i64],
            )?;
        }
        a.set_offline(false)?;
        let t = Instant::now();
        let cpu0 = server_cpu();
        let ra = a.sync()?;
        let push_secs = t.elapsed().as_secs_f64();
        let push_server_cpu = server_cpu() - cpu0;
        let t = Instant::now();
        let rb = b.sync()?;
        let pull_secs = t.elapsed().as_secs_f64();
        ensure!(
            ra.pushed as u64 == changes,
            "pushed {} of {changes}",
            ra.pushed
        );
        let held: i64 = b
            .connection()
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
        ensure!(
            held as u64 == changes,
            "the second device holds {held} of {changes}"
        );
        let bytes = ra.bytes_sent + ra.bytes_received + rb.bytes_sent + rb.bytes_received;
        let mut lat = Vec::with_capacity(noops);
        for _ in 0..noops {
            let t = Instant::now();
            let r = b.sync()?;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            ensure!(r.pulled == 0 && r.pushed == 0, "a no-op sync moved {r:?}");
        }
        lat.sort_by(|x, y| x.total_cmp(y));
        Ok(EndToEnd {
            push_server_cpu,
            push_secs,
            pull_secs,
            bytes_per_change: bytes as f64 / changes as f64,
            noop_ms: lat,
        })
    })
    .await
}

/// Rows per second of a fresh device's first sync of `rows` rows.
async fn initial_sync(exe: &Path, root: &Path, rows: u64) -> anyhow::Result<f64> {
    let s = server(exe, root).await?;
    let batch = 10_000u64;
    let mut done = 0;
    while done < rows {
        let n = batch.min(rows - done);
        s.admin
            .post(
                "/v1/execute",
                &json!({ "statements": [{
                    "sql": "WITH RECURSIVE c(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM c WHERE i < ?2) \
                            INSERT INTO events SELECT 'r' || i, 'ana', 'row ' || i, i FROM c",
                    "params": [done, done + n - 1],
                }] }),
            )
            .await?;
        done += n;
    }
    let token = add_device(&s, "fresh", "ana").await?;
    let url = s.node.url.clone();
    let dir = root.to_path_buf();
    blocking(move || {
        let mut d = Device::open(dir.join("fresh.db"), &url, &token)?;
        let t = Instant::now();
        d.sync()?;
        let secs = t.elapsed().as_secs_f64();
        let held: i64 = d
            .connection()
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
        ensure!(held as u64 == rows, "the device holds {held} of {rows}");
        Ok(rows as f64 / secs)
    })
    .await
}

/// One device's round over raw HTTP: first sync, push one transaction, sync again.
async fn device_round(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    user: &str,
) -> anyhow::Result<()> {
    let post = |body: Value| {
        http.post(format!("{url}/v1/sync"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let first: Value = post(json!({ "protocol": 1, "pull": {} }))
        .await?
        .error_for_status()?
        .json()
        .await?;
    let origin = first["origin"].as_str().context("no origin")?.to_string();
    let cursor = first["pull"]["cursor"].clone();
    let shapes = first["pull"]["shapes"].clone();
    let vv = first["pull"]["vv"].clone();
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let second: Value = post(json!({
        "protocol": 1, "origin": origin, "deps": { "0": vv },
        "push": [{ "seq": 1, "hlc": wall << 16, "deps": "0", "changes": [
            { "table": "events", "op": "insert",
              "after": { "id": format!("{user}-new"), "owner": user, "title": "from the device", "n": 0 } }
        ] }],
        "pull": { "cursor": cursor, "shapes": shapes },
    }))
    .await?
    .error_for_status()?
    .json()
    .await?;
    ensure!(second["acknowledged"] == 1, "not acknowledged: {second}");
    Ok(())
}

/// (seconds until every device is done, the server's peak resident memory in MiB).
async fn many_devices(exe: &Path, root: &Path, devices: usize) -> anyhow::Result<(f64, f64)> {
    let s = server(exe, root).await?;
    // Each user owns 10 rows.
    s.admin
        .post(
            "/v1/execute",
            &json!({ "statements": [{
                "sql": "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < ?1) \
                        INSERT INTO events SELECT 'u' || (i / 10) || '-' || (i % 10), 'u' || (i / 10), 'row', i FROM c",
                "params": [devices * 10 - 1],
            }] }),
        )
        .await?;
    let mut tokens = Vec::with_capacity(devices);
    for i in 0..devices {
        tokens.push(add_device(&s, &format!("d{i}"), &format!("u{i}")).await?);
    }
    let pid = s.node.pid().context("the server's pid")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(120))
        .build()?;
    let url = s.node.url.clone();
    let t = Instant::now();
    let mut tasks = Vec::with_capacity(devices);
    for (i, token) in tokens.into_iter().enumerate() {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            device_round(&http, &url, &token, &format!("u{i}")).await
        }));
    }
    for task in tasks {
        task.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    let peak = proc_mib(pid, "VmHWM")?;
    let n = s
        .admin
        .post(
            "/v1/query",
            &json!({ "sql": "SELECT count(*) FROM events WHERE id LIKE '%-new'" }),
        )
        .await?["rows"][0][0]
        .as_u64()
        .unwrap_or(0);
    ensure!(
        n as usize == devices,
        "{n} of {devices} devices' rows arrived"
    );
    Ok((secs, peak))
}

pub async fn run_scenario(a: BenchArgs) -> anyhow::Result<()> {
    let s = if a.quick {
        Sizes {
            runs: a.runs.unwrap_or(1),
            changes: 1_000,
            noops: 50,
            initial_rows: 10_000,
            devices: 100,
        }
    } else {
        Sizes {
            runs: a.runs.unwrap_or(3),
            changes: 10_000,
            noops: 300,
            initial_rows: 100_000,
            devices: 1_000,
        }
    };
    let tmp = scratch_dir()?;
    let exe = this_exe()?;
    let mut e2e = Figure::new(
        &format!("{} offline changes to a second device", s.changes),
        "ms",
    );
    let mut push = Figure::new("  of which the first device's sync (push, merge)", "ms");
    let mut pull = Figure::new("  of which the second device's sync (pull)", "ms");
    let mut push_cpu = Figure::new("  server CPU during the first device's sync", "ms");
    let mut per_change = Figure::new("bytes on the wire per change", "B");
    let mut noop50 = Figure::new("no-op sync p50", "ms");
    let mut noop99 = Figure::new("no-op sync p99", "ms");
    let mut initial = Figure::new(
        &format!("initial sync of {} rows", s.initial_rows),
        "rows/s",
    );
    let mut many = Figure::new(&format!("{} devices syncing at once", s.devices), "ms");
    let mut memory = Figure::new(
        &format!("server peak memory, {} devices at once", s.devices),
        "MiB",
    );
    for run in 0..s.runs {
        let dir = |what: &str| tmp.path().join(format!("{what}-{run}"));
        say(&a, &format!("run {}/{}: end to end", run + 1, s.runs));
        let r = end_to_end(&exe, &dir("e2e"), s.changes, s.noops)
            .await
            .context("end to end")?;
        e2e.values.push((r.push_secs + r.pull_secs) * 1000.0);
        push.values.push(r.push_secs * 1000.0);
        push_cpu.values.push(r.push_server_cpu * 1000.0);
        pull.values.push(r.pull_secs * 1000.0);
        per_change.values.push(r.bytes_per_change);
        noop50.values.push(percentile(&r.noop_ms, 0.5));
        noop99.values.push(percentile(&r.noop_ms, 0.99));
        say(&a, &format!("run {}/{}: initial sync", run + 1, s.runs));
        initial.values.push(
            initial_sync(&exe, &dir("initial"), s.initial_rows)
                .await
                .context("initial sync")?,
        );
        say(
            &a,
            &format!("run {}/{}: {} devices at once", run + 1, s.runs, s.devices),
        );
        let (secs, peak) = many_devices(&exe, &dir("many"), s.devices)
            .await
            .context("many devices")?;
        many.values.push(secs * 1000.0);
        memory.values.push(peak);
    }
    super::done_saying();
    // PowerSync's Flutter SDK, initial sync on a desktop against a local server: up to 27.6k
    // rows/s (powersync.com/blog/how-fast-is-powersync-performance-benchmarks-for-flutter).
    let mut vs = Figure::new(
        "initial sync / PowerSync's published 27.6k rows/s (desktop)",
        "x",
    );
    vs.values.push(initial.median() / 27_600.0);
    let figures = vec![
        e2e, push, push_cpu, pull, per_change, noop50, noop99, initial, vs, many, memory,
    ];
    if a.json {
        let out: Vec<Value> = figures.iter().map(Figure::json).collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        super::print_figures("devices (median of runs [min..max])", &figures);
    }
    if let Some(dir) = &a.report {
        std::fs::create_dir_all(dir)?;
        let mut md = String::from(
            "# flotilla bench devices\n\n| figure | median | min | max |\n| --- | --- | --- | --- |\n",
        );
        for f in &figures {
            md.push_str(&f.markdown_row());
        }
        std::fs::write(dir.join("report.md"), md)?;
    }
    Ok(())
}
