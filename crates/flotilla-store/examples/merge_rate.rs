//! The merge commit's own rate, in one process and one thread (no network, no log): two data
//! centres' databases, `eu` commits transactions of 1,000 rows, `us` merges them, with a share
//! of the rows written in `us` beforehand (conflicts). Prints rows merged per second of the
//! merging thread's CPU time, so that a busy machine changes it less than wall time.
//!
//! `cargo run --release -p flotilla-store --example merge_rate -- [ROWS] [CONFLICT_SHARE]`

use flotilla_store::*;
use flotilla_types::{ContentDigest, Epoch, Lsn, NodeId, OriginName, Position};

fn req(sql: String) -> TxnRequest {
    TxnRequest {
        digest: ContentDigest::of(sql.as_bytes()),
        statements: vec![(sql, Vec::<rusqlite::types::Value>::new().into())],
        idempotency_key: None,
        timeout_ms: 0,
    }
}

fn open(dir: &std::path::Path, name: &str) -> (LeaderDb, NodeId, OriginName) {
    let (mut db, _) = LeaderDb::open(
        &dir.join(format!("{name}.db")),
        &DbSettings::default(),
        || "ab".repeat(16),
    )
    .unwrap();
    let node = NodeId::new(&format!("{name}-1")).unwrap();
    db.uncaptured(Lsn(0), &node).unwrap();
    let dc = OriginName::new(name).unwrap();
    db.enable_multi_leader(&dc, "bench", 60_000, Epoch(1), &node, 1_000_000)
        .unwrap();
    (db, node, dc)
}

/// The CPU time this thread has used, in seconds.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec the call fills.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rows: u64 = args.next().map_or(200_000, |a| a.parse().unwrap());
    let share: f64 = args.next().map_or(0.0, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (mut eu, eu_node, eu_dc) = open(dir.path(), "eu");
    let (mut us, us_node, _) = open(dir.path(), "us");
    let table = "CREATE TABLE t (id TEXT PRIMARY KEY, v INTEGER, s TEXT)".to_string();
    let mut now = 2_000_000u64;
    let mut out = Vec::new();
    let mut commit = |db: &mut LeaderDb, node: &NodeId, sql: String| {
        now += 1000;
        let o = db.commit_batch(&[req(sql)], Epoch(1), node, now).unwrap();
        let rec = o.record.as_ref().unwrap();
        let stamp = rec.exchange.clone().unwrap();
        let rows = stamp
            .original
            .clone()
            .unwrap_or_else(|| flotilla_wire::decode_rows(&o.encoded_rows).unwrap());
        (rec.lsn, stamp, rows, rec.chain)
    };
    let first = commit(&mut eu, &eu_node, table);
    let s = "x".repeat(50);
    for t in 0..rows / 1000 {
        let values: Vec<String> = (0..1000)
            .map(|i| format!("('k{}', {}, '{s}')", t * 1000 + i, i))
            .collect();
        out.push(commit(
            &mut eu,
            &eu_node,
            format!("INSERT INTO t (id, v, s) VALUES {}", values.join(", ")),
        ));
    }
    // us gets the table first, then writes the conflicting share.
    let (lsn, stamp, rs, chain) = first;
    let at = |lsn| Position {
        epoch: Epoch(1),
        lsn,
    };
    us.commit_merge(
        &stamp,
        &rs,
        &eu_dc,
        (at(lsn), chain),
        Epoch(1),
        &us_node,
        3_000_000,
    )
    .unwrap();
    let conflicting = (rows as f64 * share) as u64;
    let mut k = 0;
    while k < conflicting {
        let n = 1000.min(conflicting - k);
        let values: Vec<String> = (0..n)
            .map(|i| format!("('k{}', -1, 'us')", (k + i) * 10))
            .collect();
        commit(
            &mut us,
            &us_node,
            format!("INSERT INTO t (id, v, s) VALUES {}", values.join(", ")),
        );
        k += n;
    }
    let started = thread_cpu_s();
    let wall = std::time::Instant::now();
    let mut conflicts = 0;
    for (lsn, stamp, rs, chain) in &out {
        match us
            .commit_merge(
                stamp,
                rs,
                &eu_dc,
                (at(*lsn), *chain),
                Epoch(1),
                &us_node,
                4_000_000,
            )
            .unwrap()
        {
            MergeOutcome::Committed { conflicts: c, .. } => conflicts += c,
            MergeOutcome::Duplicate => panic!("duplicate"),
        }
        us.maybe_checkpoint().unwrap();
    }
    let cpu = thread_cpu_s() - started;
    println!(
        "{rows} rows merged ({conflicts} conflicts): {:.0} rows/s of CPU, {:.0} rows/s wall",
        rows as f64 / cpu,
        rows as f64 / wall.elapsed().as_secs_f64()
    );
}
