//! PostgreSQL's side of `flotilla bench catchup | bootstrap | logical --compare postgres`: the
//! same workloads (rows of the same shape, in transactions of the same size) against servers
//! started here from PostgreSQL's installed programs.

use flotilla_testkit::postgres::{find_or_install_bin, pg_root, PgServer};
use std::time::{Duration, Instant};

const TABLE: &str = "CREATE TABLE t(id bigserial PRIMARY KEY, k bigint, v text)";

/// `txns` transactions of `rows` rows of about 100 bytes each, from `clients` connections.
pub(crate) async fn fill(pg: &PgServer, txns: u64, rows: u64, clients: u64) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for w in 0..clients {
        let c = pg.connect().await?;
        tasks.push(tokio::spawn(async move {
            let stmt = c
                .prepare(
                    "INSERT INTO t(k, v) SELECT $1::bigint * $2::bigint + i, md5(random()::text) || md5(random()::text) || md5(random()::text) \
                     FROM generate_series(1, $2::bigint) AS i",
                )
                .await?;
            let mut i = w;
            while i < txns {
                c.execute(&stmt, &[&(i as i64), &(rows as i64)]).await?;
                i += clients;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn wait_until(
    what: &str,
    limit: Duration,
    mut f: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let t = Instant::now();
    while !f().await? {
        anyhow::ensure!(
            t.elapsed() < limit,
            "PostgreSQL: {what} did not happen in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn bin() -> anyhow::Result<std::path::PathBuf> {
    find_or_install_bin()
}

/// A standby stopped while the primary commits `txns` × `rows`, then started: (rows/s, txn/s)
/// until it has replayed everything (process start included, as for Flotilla's follower).
pub async fn catchup(txns: u64, rows: u64) -> anyhow::Result<(f64, f64)> {
    let root = pg_root()?;
    let primary = PgServer::primary(
        &bin()?,
        &root.path().join("primary"),
        &[("synchronous_commit", "on"), ("wal_keep_size", "'4GB'")],
    )?;
    primary.connect().await?.batch_execute(TABLE).await?;
    let mut standby = primary.standby(&root.path().join("standby"), &[])?;
    standby.stop();
    fill(&primary, txns, rows, 4).await?;
    let target: String = primary
        .connect()
        .await?
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let t = Instant::now();
    standby.start_again()?;
    let c = standby.connect().await?;
    wait_until("standby catch-up", Duration::from_secs(1800), async || {
        let caught: Option<bool> = c
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), $1::text::pg_lsn) >= 0",
                &[&target],
            )
            .await?
            .get(0);
        Ok(caught == Some(true))
    })
    .await?;
    let secs = t.elapsed().as_secs_f64();
    Ok(((txns * rows) as f64 / secs, txns as f64 / secs))
}

/// A new streaming standby of a database of about `mib` MiB (pg_basebackup, then started):
/// MiB/s of the database's size.
pub async fn bootstrap(mib: u64) -> anyhow::Result<f64> {
    let root = pg_root()?;
    let primary = PgServer::primary(&bin()?, &root.path().join("primary"), &[])?;
    primary.connect().await?.batch_execute(TABLE).await?;
    // About 1 MiB per transaction of 10,000 rows (as Flotilla's side).
    fill(&primary, mib, 10_000, 2).await?;
    let bytes: i64 = primary
        .connect()
        .await?
        .query_one("SELECT pg_database_size('postgres')", &[])
        .await?
        .get(0);
    let t = Instant::now();
    let standby = primary.standby(&root.path().join("standby"), &[])?;
    let secs = t.elapsed().as_secs_f64();
    drop(standby);
    Ok(bytes as f64 / (1 << 20) as f64 / secs)
}

/// Logical replication: a subscription enabled after the publisher committed `txns` × `rows`:
/// rows/s until the subscriber holds them all.
pub async fn logical_catchup(txns: u64, rows: u64) -> anyhow::Result<f64> {
    let root = pg_root()?;
    let publisher = PgServer::primary(
        &bin()?,
        &root.path().join("publisher"),
        &[("wal_level", "logical"), ("synchronous_commit", "on")],
    )?;
    let subscriber = PgServer::primary(&bin()?, &root.path().join("subscriber"), &[])?;
    let p = publisher.connect().await?;
    p.batch_execute(&format!("{TABLE}; CREATE PUBLICATION bench FOR TABLE t"))
        .await?;
    let s = subscriber.connect().await?;
    s.batch_execute(TABLE).await?;
    // Alone: CREATE SUBSCRIPTION cannot run inside a (multi-statement, implicit) transaction.
    s.batch_execute(&format!(
        "CREATE SUBSCRIPTION bench CONNECTION 'host=127.0.0.1 port={} user=postgres dbname=postgres' \
         PUBLICATION bench WITH (copy_data = false, enabled = false)",
        publisher.port
    ))
    .await?;
    fill(&publisher, txns, rows, 4).await?;
    let want = (txns * rows) as i64;
    let t = Instant::now();
    s.batch_execute("ALTER SUBSCRIPTION bench ENABLE").await?;
    wait_until(
        "subscriber catch-up",
        Duration::from_secs(1800),
        async || {
            let n: i64 = s.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
            Ok(n >= want)
        },
    )
    .await?;
    Ok(want as f64 / t.elapsed().as_secs_f64())
}
