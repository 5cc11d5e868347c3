//! `flotilla bench commit [--compare postgres]`: leader commit throughput and latency at 1, 4
//! and 16 clients with 0, 1 and 2 followers; with `--compare postgres`, the same workload
//! against a PostgreSQL primary with 0, 1 and 2 asynchronous streaming standbys, in the same
//! run, with the ratio. Same row shape, same concurrency, same durability meaning: a Flotilla
//! commit is answered once flushed locally (its log fsynced; followers asynchronous), a
//! PostgreSQL one with `synchronous_commit = on` and asynchronous standbys.

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

/// One cell of the matrix, over the runs.
pub(crate) struct Cell {
    pub followers: usize,
    pub clients: usize,
    pub tps: Figure,
    pub p50_ms: Figure,
    pub p99_ms: Figure,
}

impl Cell {
    fn new(system: &str, followers: usize, clients: usize) -> Cell {
        let name =
            |what: &str| format!("{system} {what}, {clients} clients, {followers} followers");
        Cell {
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
        for clients in CLIENTS {
            let client = Arc::new(Client::new(&leader.url));
            let res = drive_inserts(client, clients, secs).await;
            cell(cells, followers, clients).record(res);
        }
    }
    Ok(())
}

/// `clients` tasks inserting one 100-byte row per transaction through `client` for `secs`:
/// (transactions/s, latencies in µs).
pub(crate) async fn drive_inserts(
    client: Arc<Client>,
    clients: usize,
    secs: f64,
) -> (f64, Vec<f64>) {
    let v = "v".repeat(100);
    drive(clients, secs, move |c, i| {
        let (client, v) = (client.clone(), v.clone());
        async move {
            let k = ((c as i64) << 40) + i as i64;
            let body = json!({ "statements": [{ "sql": "INSERT INTO t(k, v) VALUES (?1, ?2)", "params": [k, v] }] });
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
        let primary = PgServer::primary(
            &bin,
            &root.path().join("primary"),
            &[("synchronous_commit", "on"), ("max_connections", "100")],
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
        for clients in CLIENTS {
            let mut conns = Vec::new();
            for _ in 0..clients {
                let c = primary.connect().await?;
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
            cell(cells, followers, clients).record(res);
        }
        drop(standbys);
    }
    Ok(())
}

fn cell(cells: &mut [Cell], followers: usize, clients: usize) -> &mut Cell {
    cells
        .iter_mut()
        .find(|c| c.followers == followers && c.clients == clients)
        .expect("a cell for every combination")
}

fn matrix(system: &str) -> Vec<Cell> {
    FOLLOWERS
        .iter()
        .flat_map(|f| CLIENTS.iter().map(move |c| (*f, *c)))
        .map(|(f, c)| Cell::new(system, f, c))
        .collect()
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
        flotilla: matrix("Flotilla"),
        postgres: compare_postgres.then(|| Ok(matrix("PostgreSQL"))),
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
                    json!({ "followers": c.followers, "clients": c.clients,
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
        print!("  {:>9} {:>7}  {:>30}", "followers", "clients", "Flotilla");
        if pg.is_some() {
            print!("  {:>30}  {:>6}", "PostgreSQL", "ratio");
        }
        println!();
        for (i, c) in self.flotilla.iter().enumerate() {
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
            print!("  {:>9} {:>7}  {:>30}", c.followers, c.clients, show(c));
            if let Some(pg) = pg {
                let p = &pg[i];
                print!(
                    "  {:>30}  {:>6.2}",
                    show(p),
                    c.tps.median() / p.tps.median()
                );
            }
            println!();
        }
        match &self.postgres {
            Some(Err(e)) => println!("\nPostgreSQL: not measured: {e}"),
            Some(Ok(_)) => println!(
                "\nratio = Flotilla / PostgreSQL (synchronous_commit=on, asynchronous standbys), same run, same machine."
            ),
            None => {}
        }
    }
}
