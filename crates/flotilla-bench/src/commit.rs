//! `flotilla bench commit [--compare postgres]`: leader commit throughput and latency at 1, 4
//! and 16 clients with 0, 1 and 2 followers, for each durability; with `--compare postgres`,
//! the same workload against a PostgreSQL primary with 0, 1 and 2 streaming standbys, in the
//! same run, with the ratio. Same row shape, same concurrency, same durability meaning:
//! - `async`: a Flotilla commit is answered once flushed locally (its log fsynced; followers
//!   asynchronous), a PostgreSQL one with `synchronous_commit = local` (= `on` without
//!   synchronous standbys);
//! - `semi-sync`: Flotilla waits until one physical follower applied and flushed it;
//!   PostgreSQL runs `synchronous_standby_names = '*'` with `synchronous_commit = on` (one
//!   standby flushed it) and, in a column of its own, `remote_apply` (one standby applied it,
//!   which is what a Flotilla follower has done before it reports).

use super::{bare_sqlite_tps, fsync_probe_us, leader_with_schema, Figure};
use crate::floors::loopback_rtt_us;
use anyhow::Context;
use flotilla_client::Client;
use flotilla_testkit::cluster::{this_exe, LocalNode};
use flotilla_testkit::postgres::{find_or_install_bin, pg_root, PgServer};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CLIENTS: [usize; 3] = [1, 4, 16];
pub const FOLLOWERS: [usize; 3] = [0, 1, 2];
/// Durabilities measured (with followers only, for all but `async`); PostgreSQL's
/// `remote_apply` is measured beside its `semi-sync` (`synchronous_commit = on`).
pub const ASYNC: &str = "async";
pub const SEMI_SYNC: &str = "semi-sync";
pub const REMOTE_APPLY: &str = "remote-apply";

/// One cell of the matrix, over the runs.
pub(crate) struct Cell {
    pub durability: &'static str,
    pub followers: usize,
    pub clients: usize,
    pub tps: Figure,
    pub p50_ms: Figure,
    pub p99_ms: Figure,
}

impl Cell {
    fn new(system: &str, durability: &'static str, followers: usize, clients: usize) -> Cell {
        let name = |what: &str| {
            format!("{system} {durability} {what}, {clients} clients, {followers} followers")
        };
        Cell {
            durability,
            followers,
            clients,
            tps: Figure::new(&name("commits"), "txn/s"),
            p50_ms: Figure::new(&name("commit latency p50"), "ms"),
            p99_ms: Figure::new(&name("commit latency p99"), "ms"),
        }
    }

    fn record(&mut self, (tps, mut lat_us): (f64, Vec<f64>)) {
        lat_us.sort_by(|a, b| a.total_cmp(b));
        self.tps.values.push(tps);
        self.p50_ms
            .values
            .push(super::percentile(&lat_us, 0.5) / 1000.0);
        self.p99_ms
            .values
            .push(super::percentile(&lat_us, 0.99) / 1000.0);
    }
}

pub(crate) struct CommitResults {
    pub fsync_us: Figure,
    pub bare_sqlite: Figure,
    pub loopback_us: Figure,
    pub flotilla: Vec<Cell>,
    /// `None` without `--compare postgres`; `Err` with why PostgreSQL could not run.
    pub postgres: Option<Result<Vec<Cell>, String>>,
}

/// Runs `clients` tasks calling `op` back to back for `secs`: (transactions/s, latencies in µs).
pub(crate) async fn drive<F, Fut>(clients: usize, secs: f64, op: F) -> (f64, Vec<f64>)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let op = Arc::new(op);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, lat, op) = (stop.clone(), lat.clone(), op.clone());
            tokio::spawn(async move {
                let mut mine = Vec::with_capacity(4096);
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let t = Instant::now();
                    if op(c, i).await {
                        mine.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                }
                lat.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
            })
        })
        .collect();
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let lat = std::mem::take(&mut *lat.lock().unwrap_or_else(|p| p.into_inner()));
    (lat.len() as f64 / elapsed, lat)
}

async fn flotilla_matrix(
    dir: &Path,
    secs: f64,
    cells: &mut [Cell],
    progress: &dyn Fn(&str),
) -> anyhow::Result<()> {
    let exe = this_exe()?;
    for followers in FOLLOWERS {
        progress(&format!("Flotilla, leader with {followers} followers"));
        let root = dir.join(format!("flotilla-{followers}"));
        let (leader, lc) = leader_with_schema(&exe, &root, "leader").await?;
        let mut fs = Vec::new();
        for f in 0..followers {
            fs.push(LocalNode::start(&exe, &root, &format!("f{f}"), Some(&leader.url), &[]).await?);
        }
        for f in &fs {
            super::wait_for(&Client::new(&f.url), &super::position(&lc).await?).await?;
        }
        for durability in durabilities(followers, false) {
            for clients in CLIENTS {
                let client = Arc::new(Client::new(&leader.url));
                let res = drive_inserts(client, clients, secs, durability).await;
                cell(cells, durability, followers, clients).record(res);
            }
        }
    }
    Ok(())
}

/// What is measured with `followers` followers (PostgreSQL: also `remote_apply`).
fn durabilities(followers: usize, postgres: bool) -> Vec<&'static str> {
    match (followers, postgres) {
        (0, _) => vec![ASYNC],
        (_, false) => vec![ASYNC, SEMI_SYNC],
        (_, true) => vec![ASYNC, SEMI_SYNC, REMOTE_APPLY],
    }
}

/// `clients` tasks inserting one 100-byte row per transaction through `client` for `secs`:
/// (transactions/s, latencies in µs).
pub(crate) async fn drive_inserts(
    client: Arc<Client>,
    clients: usize,
    secs: f64,
    durability: &'static str,
) -> (f64, Vec<f64>) {
    let v = "v".repeat(100);
    drive(clients, secs, move |c, i| {
        let (client, v) = (client.clone(), v.clone());
        async move {
            let k = ((c as i64) << 40) + i as i64;
            let body = json!({ "statements": [{ "sql": "INSERT INTO t(k, v) VALUES (?1, ?2)", "params": [k, v] }],
                               "durability": durability });
            client.post("/v1/execute", &body).await.is_ok()
        }
    })
    .await
}

async fn postgres_matrix(
    secs: f64,
    cells: &mut [Cell],
    progress: &dyn Fn(&str),
) -> anyhow::Result<()> {
    let bin = find_or_install_bin()?;
    for followers in FOLLOWERS {
        progress(&format!("PostgreSQL, primary with {followers} standbys"));
        let root = pg_root()?;
        // With standbys, one of them is synchronous; each connection then says how long its
        // commits wait (`local` is asynchronous, as `on` is without synchronous standbys).
        let sync_names = if followers > 0 { "'*'" } else { "''" };
        let primary = PgServer::primary(
            &bin,
            &root.path().join("primary"),
            &[
                ("synchronous_commit", "on"),
                ("synchronous_standby_names", sync_names),
                ("max_connections", "100"),
            ],
        )?;
        let mut standbys = Vec::new();
        for f in 0..followers {
            standbys.push(primary.standby(&root.path().join(format!("standby{f}")), &[])?);
        }
        primary
            .connect()
            .await?
            .batch_execute("CREATE TABLE t(id bigserial PRIMARY KEY, k bigint, v text)")
            .await?;
        for (durability, clients) in durabilities(followers, true)
            .into_iter()
            .flat_map(|d| CLIENTS.map(|c| (d, c)))
        {
            let setting = match durability {
                ASYNC => "local",
                SEMI_SYNC => "on",
                _ => "remote_apply",
            };
            let mut conns = Vec::new();
            for _ in 0..clients {
                let c = primary.connect().await?;
                c.batch_execute(&format!("SET synchronous_commit = {setting}"))
                    .await?;
                let stmt = c.prepare("INSERT INTO t(k, v) VALUES ($1, $2)").await?;
                conns.push(Arc::new((c, stmt)));
            }
            let conns = Arc::new(conns);
            let v = "v".repeat(100);
            let res = drive(clients, secs, move |c, i| {
                let (conns, v) = (conns.clone(), v.clone());
                async move {
                    let (client, stmt) = &*conns[c];
                    let k = ((c as i64) << 40) + i as i64;
                    client.execute(stmt, &[&k, &v]).await.is_ok()
                }
            })
            .await;
            cell(cells, durability, followers, clients).record(res);
        }
        drop(standbys);
    }
    Ok(())
}

fn cell<'a>(
    cells: &'a mut [Cell],
    durability: &str,
    followers: usize,
    clients: usize,
) -> &'a mut Cell {
    cells
        .iter_mut()
        .find(|c| c.durability == durability && c.followers == followers && c.clients == clients)
        .expect("a cell for every combination")
}

/// The cells measured, in the order they are shown: by durability, then followers, then clients.
fn matrix(system: &str, postgres: bool) -> Vec<Cell> {
    let mut cells = Vec::new();
    for d in [ASYNC, SEMI_SYNC, REMOTE_APPLY] {
        for f in FOLLOWERS {
            if durabilities(f, postgres).contains(&d) {
                cells.extend(CLIENTS.map(|c| Cell::new(system, d, f, c)));
            }
        }
    }
    cells
}

/// The cell of `cells` measured like `c` (same durability, followers, clients).
pub(crate) fn same<'a>(cells: &'a [Cell], c: &Cell, durability: &str) -> Option<&'a Cell> {
    cells.iter().find(|x| {
        x.durability == durability && x.followers == c.followers && x.clients == c.clients
    })
}

pub async fn run(
    dir: &Path,
    runs: usize,
    secs: f64,
    compare_postgres: bool,
    progress: &dyn Fn(&str),
) -> anyhow::Result<CommitResults> {
    let mut r = CommitResults {
        fsync_us: Figure::new("fsync 4 KiB p50 (disk regime)", "µs"),
        bare_sqlite: Figure::new(
            "bare SQLite commits, WAL, synchronous=FULL, 1 thread",
            "txn/s",
        ),
        loopback_us: Figure::new("TCP loopback round trip, 64 B, p50", "µs"),
        flotilla: matrix("Flotilla", false),
        postgres: compare_postgres.then(|| Ok(matrix("PostgreSQL", true))),
    };
    for run in 0..runs {
        progress(&format!("run {}/{runs}: floors", run + 1));
        let d = dir.join(format!("run{run}"));
        std::fs::create_dir_all(&d)?;
        r.fsync_us.values.push(fsync_probe_us(&d)?);
        r.bare_sqlite.values.push(bare_sqlite_tps(&d, secs)?);
        r.loopback_us.values.push(loopback_rtt_us()?);
        flotilla_matrix(&d, secs, &mut r.flotilla, progress)
            .await
            .with_context(|| format!("run {}: Flotilla", run + 1))?;
        if let Some(Ok(cells)) = &mut r.postgres {
            if let Err(e) = postgres_matrix(secs, cells, progress).await {
                // The rest of the figures stand; PostgreSQL's are reported as missing, with why.
                r.postgres = Some(Err(format!("{e:#}")));
            }
        }
        let _ = std::fs::remove_dir_all(&d);
    }
    Ok(r)
}

impl CommitResults {
    pub fn json(&self) -> Value {
        let cells = |cs: &[Cell]| -> Vec<Value> {
            cs.iter()
                .map(|c| {
                    json!({ "durability": c.durability, "followers": c.followers, "clients": c.clients,
                            "tps": c.tps.json(), "p50_ms": c.p50_ms.json(), "p99_ms": c.p99_ms.json() })
                })
                .collect()
        };
        json!({
            "scenario": "commit",
            "floors": [self.fsync_us.json(), self.bare_sqlite.json(), self.loopback_us.json()],
            "flotilla": cells(&self.flotilla),
            "postgres": match &self.postgres {
                None => Value::Null,
                Some(Ok(c)) => json!(cells(c)),
                Some(Err(e)) => json!({ "error": e }),
            },
        })
    }

    /// The terminal table.
    pub fn print(&self) {
        println!("\nFloors of this machine, same run (median [min..max]):");
        for f in [&self.fsync_us, &self.bare_sqlite, &self.loopback_us] {
            println!(
                "  {:<52} {:>10.1} {:<6} [{:.1}..{:.1}]",
                f.name,
                f.median(),
                f.unit,
                f.min(),
                f.max()
            );
        }
        let regime = if self.fsync_us.median() > 1000.0 {
            "slow (throttled)"
        } else {
            "fast"
        };
        println!("  disk regime: {regime}");
        println!("\nCommit throughput, one 100-byte row per transaction (txn/s, median [min..max]; latency p50/p99 ms):\n");
        let pg = match &self.postgres {
            Some(Ok(c)) => Some(c),
            _ => None,
        };
        print!(
            "  {:>10} {:>9} {:>7}  {:>30}",
            "durability", "followers", "clients", "Flotilla"
        );
        if pg.is_some() {
            print!("  {:>30}  {:>6}", "PostgreSQL", "ratio");
            print!("  {:>30}  {:>6}", "PostgreSQL remote_apply", "ratio");
        }
        println!();
        for c in &self.flotilla {
            let show = |c: &Cell| {
                format!(
                    "{:>7.0} [{:.0}..{:.0}] {:.2}/{:.2}",
                    c.tps.median(),
                    c.tps.min(),
                    c.tps.max(),
                    c.p50_ms.median(),
                    c.p99_ms.median()
                )
            };
            print!(
                "  {:>10} {:>9} {:>7}  {:>30}",
                c.durability,
                c.followers,
                c.clients,
                show(c)
            );
            if let Some(pg) = pg {
                for d in [c.durability, REMOTE_APPLY] {
                    if let Some(p) =
                        same(pg, c, d).filter(|_| d != REMOTE_APPLY || c.durability == SEMI_SYNC)
                    {
                        print!(
                            "  {:>30}  {:>6.2}",
                            show(p),
                            c.tps.median() / p.tps.median()
                        );
                    }
                }
            }
            println!();
        }
        match &self.postgres {
            Some(Err(e)) => println!("\nPostgreSQL: not measured: {e}"),
            Some(Ok(_)) => println!(
                "\nratio = Flotilla / PostgreSQL, same run, same machine. async: synchronous_commit=local \
                 (asynchronous standbys); semi-sync: one synchronous standby (synchronous_standby_names='*'), \
                 synchronous_commit=on, and beside it remote_apply."
            ),
            None => {}
        }
    }
}

/// `flotilla bench commit`: runs, prints, and writes the report.
pub(crate) async fn run_scenario(a: super::BenchArgs) -> anyhow::Result<()> {
    let (runs, secs) = if a.quick {
        (a.runs.unwrap_or(1), 1.0)
    } else {
        (a.runs.unwrap_or(3), 5.0)
    };
    let tmp = super::scratch_dir()?;
    let bar = (!a.json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let steps =
            runs as u64 * (1 + FOLLOWERS.len() as u64 * if a.compare.is_some() { 2 } else { 1 });
        let b = indicatif::ProgressBar::new(steps);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                .expect("template"),
        );
        b
    });
    let progress = |msg: &str| {
        if let Some(b) = &bar {
            b.inc(1);
            b.set_message(msg.to_string());
        } else if !a.json {
            eprintln!("  … {msg}");
        }
    };
    let results = run(tmp.path(), runs, secs, a.compare.is_some(), &progress).await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results.json())?);
    } else {
        results.print();
    }
    if let Some(dir) = &a.report {
        let written = super::report::write_commit(dir, &results)?;
        if !a.json {
            println!();
            for p in written {
                println!("wrote {}", p.display());
            }
        }
    }
    Ok(())
}
