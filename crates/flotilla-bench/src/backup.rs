//! `flotilla bench backup [--compare postgres]`: backup and restore of a database of about
//! 1 GiB (16 MiB with --quick) — Flotilla's SQLite file and SQL dump beside SQLite's own online
//! backup (what `sqlite3 .backup` runs) and PostgreSQL's `pg_dump` / `pg_restore` of the same
//! rows — and the shell's start-up time beside `psql`'s, all in the same run.

use super::versus::Pair;
use super::{fill, leader_with_schema, Figure};
use flotilla_client::Client;
use flotilla_testkit::cluster::LocalNode;
use flotilla_testkit::postgres::{find_or_install_bin, pg_root, PgServer};
use futures_util::StreamExt;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const MIB: f64 = (1 << 20) as f64;

/// Shell start-ups measured per run (their median is the run's figure).
const STARTS: usize = 15;

fn pair(name: &str, unit: &'static str, compare: bool, pg_name: &str) -> Pair {
    Pair {
        flotilla: Figure::new(&format!("Flotilla {name}"), unit),
        postgres: compare.then(|| Figure::new(pg_name, unit)),
    }
}

pub async fn run(
    exe: &Path,
    root: &Path,
    mib: u64,
    runs: usize,
    compare: bool,
    progress: &dyn Fn(&str),
) -> anyhow::Result<(Vec<Pair>, Vec<Figure>)> {
    let mut pairs = vec![
        pair(
            &format!("backup of a {mib} MiB database (SQLite file)"),
            "MiB/s",
            compare,
            "PostgreSQL pg_dump -Fc -Z0",
        ),
        pair(
            &format!("restore of a {mib} MiB database (SQLite file)"),
            "MiB/s",
            compare,
            "PostgreSQL pg_restore",
        ),
        pair("shell start-up and one query", "ms", compare, "psql -c"),
    ];
    let mut own = vec![
        Figure::new("Flotilla backup as a SQL dump", "MiB/s"),
        Figure::new("Flotilla restore of that SQL dump", "MiB/s"),
        Figure::new("SQLite online backup API (sqlite3 .backup)", "MiB/s"),
        Figure::new("Flotilla backup / SQLite backup API", "ratio"),
    ];
    for run in 0..runs {
        let dir = root.join(format!("backup{run}"));
        std::fs::create_dir_all(&dir)?;
        progress(&format!(
            "run {}/{runs}: filling a {mib} MiB Flotilla database",
            run + 1
        ));
        let (leader, lc) = leader_with_schema(exe, &dir, "leader").await?;
        // About 1 MiB per transaction of 10,000 100-byte rows.
        fill(&lc, mib, 10_000, 2).await?;
        let db_bytes = database_bytes(&lc).await?;

        progress(&format!("run {}/{runs}: Flotilla backups", run + 1));
        let file = dir.join("backup.db");
        let (bytes, secs) = download(&lc, "sqlite", &file).await?;
        pairs[0].flotilla.values.push(bytes as f64 / MIB / secs);
        let dump = dir.join("backup.sql");
        let (_, secs) = download(&lc, "sql", &dump).await?;
        own[0].values.push(db_bytes / MIB / secs);
        let copy = dir.join("api-copy.db");
        let api = sqlite_backup_api(&file, &copy)?;
        own[2].values.push(api);
        own[3].values.push(pairs[0].flotilla.values[run] / api);
        let _ = std::fs::remove_file(&copy);

        progress(&format!("run {}/{runs}: Flotilla restores", run + 1));
        let target = LocalNode::start(exe, &dir, "restored", None, &[]).await?;
        let tc = Client::new(&target.url);
        let secs = upload(&tc, &file, false).await?;
        pairs[1].flotilla.values.push(bytes as f64 / MIB / secs);
        let secs = upload(&tc, &dump, true).await?;
        own[1].values.push(db_bytes / MIB / secs);
        drop(target);

        progress(&format!("run {}/{runs}: shell start-ups", run + 1));
        pairs[2]
            .flotilla
            .values
            .push(shell_startup_ms(exe, &leader.url)?);
        drop(leader);
        let _ = std::fs::remove_dir_all(&dir);

        if compare {
            progress(&format!(
                "run {}/{runs}: PostgreSQL pg_dump / pg_restore",
                run + 1
            ));
            let (dump_rate, restore_rate, psql_ms) = postgres(mib).await?;
            pairs[0]
                .postgres
                .as_mut()
                .expect("compare")
                .values
                .push(dump_rate);
            pairs[1]
                .postgres
                .as_mut()
                .expect("compare")
                .values
                .push(restore_rate);
            pairs[2]
                .postgres
                .as_mut()
                .expect("compare")
                .values
                .push(psql_ms);
        }
    }
    Ok((pairs, own))
}

/// `flotilla bench backup`: runs it, prints or writes the figures.
pub async fn run_scenario(a: super::BenchArgs) -> anyhow::Result<()> {
    let (mib, runs) = if a.quick {
        (16, a.runs.unwrap_or(1))
    } else {
        (1024, a.runs.unwrap_or(1))
    };
    let exe = flotilla_testkit::cluster::this_exe()?;
    let tmp = super::scratch_dir()?;
    let progress = |msg: &str| super::say(&a, msg);
    let (pairs, own) = run(&exe, tmp.path(), mib, runs, a.compare.is_some(), &progress).await?;
    super::done_saying();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&super::versus::json("backup", &pairs, &own))?
        );
    } else {
        super::versus::print(
            &format!("flotilla bench backup, {runs} run(s) each (median [min..max])"),
            &pairs,
            &own,
        );
        println!(
            "(for the start-up time in ms, lower is better: a ratio below 1 favours Flotilla)"
        );
    }
    if let Some(dir) = &a.report {
        let written = super::report::write_versus(dir, "backup", &pairs, &own)?;
        if !a.json {
            for p in written {
                println!("wrote {}", p.display());
            }
        }
    }
    Ok(())
}

async fn database_bytes(c: &Client) -> anyhow::Result<f64> {
    let size = c
        .post(
            "/v1/query",
            &serde_json::json!({ "sql": "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()" }),
        )
        .await?;
    size["rows"][0][0]
        .as_f64()
        .ok_or_else(|| anyhow::anyhow!("no database size in {size}"))
}

/// `GET /v1/backup` into `file`: (bytes, seconds).
async fn download(c: &Client, format: &str, file: &Path) -> anyhow::Result<(u64, f64)> {
    let c = c.unlimited();
    let t = Instant::now();
    let resp = c
        .send(c.request(reqwest::Method::GET, &format!("/v1/backup?format={format}")))
        .await?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    let mut stream = resp.bytes_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        n += chunk.len() as u64;
        out.write_all(&chunk)?;
    }
    out.into_inner()?.sync_all()?;
    Ok((n, t.elapsed().as_secs_f64()))
}

/// `POST /v1/restore` of `file`: seconds until the restored database is in place.
async fn upload(c: &Client, file: &Path, replace: bool) -> anyhow::Result<f64> {
    let c = c.unlimited();
    let body = tokio::fs::read(file).await?;
    let t = Instant::now();
    c.send(
        c.request(
            reqwest::Method::POST,
            &format!("/v1/restore?replace={replace}"),
        )
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(body),
    )
    .await?;
    Ok(t.elapsed().as_secs_f64())
}

/// SQLite's online backup of `from` into `to`, made durable: MiB/s.
fn sqlite_backup_api(from: &Path, to: &Path) -> anyhow::Result<f64> {
    let src =
        rusqlite::Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut dst = rusqlite::Connection::open(to)?;
    let t = Instant::now();
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst)?;
        // Large steps, no pause between them: as fast as the API copies.
        backup.run_to_completion(1 << 16, std::time::Duration::ZERO, None)?;
    }
    drop(dst);
    std::fs::File::open(to)?.sync_all()?;
    let secs = t.elapsed().as_secs_f64();
    Ok(std::fs::metadata(to)?.len() as f64 / MIB / secs)
}

/// Median wall time of `flotilla shell` answering one query from standard input, process
/// start to exit.
fn shell_startup_ms(exe: &Path, url: &str) -> anyhow::Result<f64> {
    let mut samples = Vec::with_capacity(STARTS);
    for _ in 0..STARTS {
        let t = Instant::now();
        let mut child = Command::new(exe)
            .args(["shell", "--node", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(b"SELECT count(*) FROM t WHERE id = 1;\n")?;
        anyhow::ensure!(child.wait()?.success(), "flotilla shell failed");
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok(super::percentile(&samples, 0.5))
}

/// The same rows in PostgreSQL: (pg_dump MiB/s, pg_restore MiB/s, psql start-up ms), each
/// MiB of the database's size.
async fn postgres(mib: u64) -> anyhow::Result<(f64, f64, f64)> {
    let root = pg_root()?;
    let pg = PgServer::primary(&find_or_install_bin()?, &root.path().join("primary"), &[])?;
    pg.connect()
        .await?
        .batch_execute("CREATE TABLE t(id bigserial PRIMARY KEY, k bigint, v text)")
        .await?;
    super::postgres_side::fill(&pg, mib, 10_000, 2).await?;
    let bytes: i64 = pg
        .connect()
        .await?
        .query_one("SELECT pg_database_size('postgres')", &[])
        .await?
        .get(0);
    let db_mib = bytes as f64 / MIB;
    let port = pg.port().to_string();
    let dump = root.path().join("dump.pgc");
    let conn = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
    let t = Instant::now();
    let out = pg
        .tool("pg_dump")
        .args(conn)
        .args(["-Fc", "-Z0", "-f"])
        .arg(&dump)
        .arg("postgres")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::File::open(&dump)?.sync_all()?;
    let dump_rate = db_mib / t.elapsed().as_secs_f64();
    pg.connect()
        .await?
        .batch_execute("CREATE DATABASE restored")
        .await?;
    let t = Instant::now();
    let out = pg
        .tool("pg_restore")
        .args(conn)
        .args(["-d", "restored"])
        .arg(&dump)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // As durable as Flotilla's restore, which answers after an fsync.
    pg.connect().await?.batch_execute("CHECKPOINT").await?;
    let restore_rate = db_mib / t.elapsed().as_secs_f64();
    let mut samples = Vec::with_capacity(STARTS);
    for _ in 0..STARTS {
        let t = Instant::now();
        let out = pg
            .tool("psql")
            .args(conn)
            .args([
                "-X",
                "-q",
                "-c",
                "SELECT count(*) FROM t WHERE id = 1",
                "postgres",
            ])
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(out.success(), "psql failed");
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok((dump_rate, restore_rate, super::percentile(&samples, 0.5)))
}
