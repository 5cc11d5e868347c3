//! Process-level chaos: real `flotilla serve` processes, followers connected through a
//! fault-injecting TCP proxy, random SIGKILLs and restarts of every node, links cut and
//! partitioned, under a write load with idempotency keys. Then a history check over what the
//! clients saw: every acknowledged write is present exactly once, and every follower converges
//! page for page.
//!
//! The test runs 6 s of chaos; `FLOTILLA_CHAOS_SECS=600 cargo test --release -p flotilla-cli
//! --test chaos -- --nocapture` runs a long campaign (`FLOTILLA_CHAOS_SEED` picks the seed).

mod common;

use common::*;
use flotilla_client::Client;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_testkit::proxy::Proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_keeps_every_acknowledged_write_and_converges() {
    let secs: u64 = std::env::var("FLOTILLA_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let seed: u64 = std::env::var("FLOTILLA_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11);
    eprintln!("chaos: {secs} s, seed {seed}");
    let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let dir = tempfile::tempdir().unwrap();
    let mut leader = start(dir.path(), "leader", None).await;
    let lc = Client::new(&leader.url);
    exec(
        &lc,
        json!([{ "sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT UNIQUE, v TEXT)" }]),
    )
    .await;
    let target = leader.url.trim_start_matches("http://").to_string();
    let proxies = [
        Proxy::start(target.clone()).await.unwrap(),
        Proxy::start(target).await.unwrap(),
    ];
    let mut followers = vec![
        start(dir.path(), "f0", Some(&proxies[0].url)).await,
        start(dir.path(), "f1", Some(&proxies[1].url)).await,
    ];

    // Writers: each key is retried with the same idempotency key until acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (stop, acked, c) = (stop.clone(), acked.clone(), Client::new(&leader.url));
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("w{w}-{i}");
                    let body = json!({
                        "statements": [{ "sql": "INSERT INTO t(k, v) VALUES (?1, 'x')", "params": [key] }],
                        "idempotency_key": key,
                    });
                    for _ in 0..200 {
                        if c.post("/v1/execute", &body).await.is_ok() {
                            acked.lock().unwrap().insert(key.clone());
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                }
            })
        })
        .collect();

    let started = Instant::now();
    let mut actions = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(150 + rng.below(400))).await;
        match rng.below(6) {
            0 => {
                let f = rng.below(2) as usize;
                followers[f].kill().await;
                tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
                followers[f].restart().await.unwrap();
                actions.push(format!("kill f{f}"));
            }
            1 => {
                leader.kill().await;
                tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
                if let Err(e) = leader.restart().await {
                    dump_log(&leader);
                    panic!("leader restart: {e:#}");
                }
                actions.push("kill leader".into());
            }
            2 | 3 => {
                let p = rng.below(2) as usize;
                proxies[p].cut_all();
                actions.push(format!("cut link {p}"));
            }
            _ => {
                let p = rng.below(2) as usize;
                proxies[p].block(true);
                proxies[p].cut_all();
                tokio::time::sleep(Duration::from_millis(200 + rng.below(1500))).await;
                proxies[p].block(false);
                actions.push(format!("partition link {p}"));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    eprintln!("chaos actions: {actions:?}");

    // History check: every acknowledged key is present exactly once (UNIQUE(k) and the count).
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the load made progress: {} writes",
        acked.len()
    );
    let present: BTreeSet<String> = rows(&lc, "SELECT k FROM t")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let pos = position(&lc).await;
    for f in &followers {
        // A follower that does not catch up leaves its log and the leader's behind, so the
        // failure says why (the last run's logs are in the failure output).
        let body = json!({ "sql": "SELECT 1", "min_position": pos, "timeout_ms": 30_000 });
        if let Err(e) = Client::new(&f.url).post("/v1/query", &body).await {
            dump_log(f);
            dump_log(&leader);
            let seen = Client::new(&f.url).get("/v1/status").await;
            panic!("{} did not reach {pos}: {e:#}; its status: {seen:?}", f.id);
        }
        assert_identical(&leader, f).await;
    }
    eprintln!(
        "{} acknowledged writes, {} rows, {} actions",
        acked.len(),
        present.len(),
        actions.len()
    );
}
