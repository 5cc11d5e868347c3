//! The PostgreSQL harness the benchmarks compare against: a primary and a streaming standby
//! started from scratch on free loopback ports, a row committed on the primary visible on the
//! standby, and both stopped when dropped. Needs PostgreSQL's server programs: installed here
//! (Debian's `postgresql`, through apt-get) when missing.

use flotilla_testkit::postgres::{find_or_install_bin, pg_root, PgServer};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_and_a_streaming_standby_replicate_and_stop_when_dropped() {
    let bin = find_or_install_bin().unwrap();
    let root = pg_root().unwrap();
    let primary = PgServer::primary(&bin, &root.path().join("primary"), &[]).unwrap();
    let standby = primary.standby(&root.path().join("standby"), &[]).unwrap();
    let p = primary.connect().await.unwrap();
    p.batch_execute("CREATE TABLE t(id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'x')")
        .await
        .unwrap();
    let s = standby.connect().await.unwrap();
    let mut seen = None;
    for _ in 0..200 {
        if let Ok(rows) = s.query("SELECT v FROM t WHERE id = 1", &[]).await {
            if let Some(r) = rows.first() {
                seen = Some(r.get::<_, String>(0));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.as_deref(), Some("x"));
    let in_recovery: bool = s
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "the standby is a standby");
    let port = primary.port;
    drop((p, s, standby, primary));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the primary still listens after drop"
    );
}
